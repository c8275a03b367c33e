//! POST: a new object, named or generated, defaulted, validated and stored.

use http::{HeaderMap, Response, StatusCode};
use serde_json::{Value, json};
use skiff_machinery::status::StatusError;

use super::admit;
use crate::{
    ctx::Ctx,
    http::{self as h, Body, Query},
    objects,
    route::ResourceRoute,
};

/// Lower-case consonants and digits, as the Go apiserver's generateName suffix uses.
const SUFFIX_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

pub(super) fn random_suffix() -> String {
    let bits = uuid::Uuid::new_v4().as_u128();
    (0..5)
        .map(|i| {
            let idx =
                usize::try_from((bits >> (i * 8)) & 0xff).unwrap_or(0) % SUFFIX_ALPHABET.len();
            char::from(SUFFIX_ALPHABET[idx])
        })
        .collect()
}

pub async fn create(
    ctx: &Ctx,
    route: &ResourceRoute,
    query: &Query,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response<Body>, StatusError> {
    let obj = h::decode_object(headers, body)?;
    let (created, warnings) = create_object(ctx, route, query, obj).await?;
    Ok(h::with_warnings(
        h::json(StatusCode::CREATED, &created),
        &warnings,
    ))
}

/// The create path shared with server-side apply of a new object.
pub async fn create_object(
    ctx: &Ctx,
    route: &ResourceRoute,
    query: &Query,
    mut obj: Value,
) -> Result<(Value, Vec<String>), StatusError> {
    let info = route.info;
    admit::check_kind(info, &mut obj)?;
    admit::check_namespace(info, &mut obj, route.namespace.as_deref())?;
    let mut warnings = admit::unknown_fields(info, &obj, query)?;
    if let Some(ref wanted) = route.name
        && objects::name_of(&obj) != wanted
    {
        return Err(StatusError::bad_request(
            "the name of the object does not match the name on the URL",
        ));
    }
    if objects::name_of(&obj).is_empty()
        && let Some(prefix) = obj
            .pointer("/metadata/generateName")
            .and_then(Value::as_str)
    {
        let name = format!("{prefix}{}", random_suffix());
        obj["metadata"]["name"] = json!(name);
    }
    admit::admit_create(info, &mut obj)?;
    super::requester::record(info, &mut obj, query.user());
    crate::authz::admission::admit(&ctx.authz, info, None, &obj)?;
    if info.namespaced {
        let namespace = objects::namespace_of(&obj).unwrap_or("").to_owned();
        ensure_namespace_open(ctx, &namespace).await?;
        super::default_class::admit(ctx, info, &mut obj).await?;
        super::serviceaccount::admit(ctx, info, &mut obj).await?;
        super::quota::admit(ctx, info, &namespace, &obj).await?;
    }
    warnings.extend(super::podsecurity::admit(ctx, info, None, &obj).await?);
    let meta = obj["metadata"]
        .as_object_mut()
        .ok_or_else(|| StatusError::bad_request("metadata must be an object"))?;
    meta.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
    meta.insert("creationTimestamp".into(), json!(objects::now()));
    meta.remove("deletionTimestamp");
    meta.remove("deletionGracePeriodSeconds");
    meta.remove("resourceVersion");
    if obj.get("spec").is_some() {
        obj["metadata"]["generation"] = json!(1);
    }
    let strategy = info.strategy;
    strategy.prepare_for_create(&mut obj);
    if obj.pointer("/metadata/managedFields").is_none() {
        skiff_machinery::apply::record_update(None, &mut obj, query.manager(), &objects::now());
    }
    strategy.allocate(&mut obj, &ctx.pools).map_err(|cause| {
        StatusError::invalid(info.group, info.kind, objects::name_of(&obj), vec![cause])
    })?;
    if query.dry_run() {
        strategy.release(&obj, &ctx.pools);
        return Ok((obj, warnings));
    }
    let name = objects::name_of(&obj).to_owned();
    let key = objects::key(info, objects::namespace_of(&obj), &name);
    match ctx.store.create(&key, objects::encode(info, &obj)).await {
        Ok(kv) => {
            objects::set_resource_version(&mut obj, kv.mod_revision);
            tracing::debug!(kind = info.kind, name = %name, rv = kv.mod_revision, "created");
            Ok((obj, warnings))
        }
        Err(err) => {
            strategy.release(&obj, &ctx.pools);
            Err(objects::store_error(err, info, &name))
        }
    }
}

/// Refuses new objects in a missing or terminating namespace (Kubernetes' `NamespaceLifecycle`).
async fn ensure_namespace_open(ctx: &Ctx, namespace: &str) -> Result<(), StatusError> {
    let ns_info = skiff_resources::by_kind("v1", "Namespace")
        .ok_or_else(|| StatusError::internal("namespaces are not served"))?;
    let (ns, _) = super::read::fetch_recent(ctx, ns_info, None, namespace).await?;
    if ns.pointer("/metadata/deletionTimestamp").is_some() {
        return Err(StatusError::forbidden(format!(
            "unable to create new content in namespace {namespace} because it is being terminated"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_suffixes_are_five_safe_characters() {
        for _ in 0..50 {
            let s = random_suffix();
            assert_eq!(s.len(), 5);
            assert!(s.bytes().all(|b| SUFFIX_ALPHABET.contains(&b)), "{s}");
        }
    }
}
