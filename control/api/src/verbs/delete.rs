//! DELETE of one object (deferred while finalizers remain, graceful or finalizing where the
//! kind says so, with the propagation policy recorded for the garbage collector) and of
//! collections. The read-modify-write is retried on a fresh read when another writer got in
//! between, so only the client's own preconditions can conflict.

use http::{Response, StatusCode};
use serde_json::{Value, json};
use skiff_machinery::status::{self as st, StatusError};
use skiff_resources::Deletion;

use super::{
    read,
    update::{self, Failed},
};
use crate::{
    ctx::Ctx,
    http::{self as h, Body, Query},
    objects,
    route::ResourceRoute,
};

/// `DeleteOptions` from the body and the query.
#[derive(Debug, Default)]
pub struct Options {
    propagation: Option<String>,
    grace: Option<i64>,
    uid: Option<String>,
    resource_version: Option<String>,
}

pub fn options(query: &Query, body: &[u8]) -> Result<Options, StatusError> {
    let body: Value = if body.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        serde_json::from_slice(body)
            .map_err(|e| StatusError::bad_request(format!("error decoding DeleteOptions: {e}")))?
    };
    let text = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_owned);
    Ok(Options {
        propagation: text(body.get("propagationPolicy"))
            .or_else(|| query.get("propagationPolicy").map(str::to_owned)),
        grace: body
            .get("gracePeriodSeconds")
            .and_then(Value::as_i64)
            .or_else(|| query.get("gracePeriodSeconds").and_then(|g| g.parse().ok())),
        uid: text(body.pointer("/preconditions/uid")),
        resource_version: text(body.pointer("/preconditions/resourceVersion")),
    })
}

pub async fn delete(
    ctx: &Ctx,
    route: &ResourceRoute,
    query: &Query,
    body: &[u8],
) -> Result<Response<Body>, StatusError> {
    let opts = options(query, body)?;
    let (obj, code) = delete_one(ctx, route, query, &opts).await?;
    Ok(h::json(code, &obj))
}

/// The finalizer a propagation policy leaves for the garbage collector.
fn propagation_finalizer(opts: &Options) -> Result<Option<&'static str>, StatusError> {
    match opts.propagation.as_deref() {
        Some("Foreground") => Ok(Some("foregroundDeletion")),
        Some("Orphan") => Ok(Some("orphan")),
        Some("Background") | None => Ok(None),
        Some(other) => Err(StatusError::bad_request(format!(
            "unsupported propagationPolicy {other:?}"
        ))),
    }
}

/// Deletes (or marks for deletion) the object the route names; the status code says which.
pub async fn delete_one(
    ctx: &Ctx,
    route: &ResourceRoute,
    query: &Query,
    opts: &Options,
) -> Result<(Value, StatusCode), StatusError> {
    let info = route.info;
    let strategy = info.strategy;
    let name = route.name.as_deref().unwrap_or("");
    let key = objects::key(info, route.namespace.as_deref(), name);
    let marker = propagation_finalizer(opts)?;
    let key = &key;
    update::guaranteed(ctx, route, |mut obj, rev| async move {
        let precondition =
            |what: &str| update::stale(route, &format!("Precondition failed: {what}"));
        if let Some(uid) = &opts.uid
            && obj.pointer("/metadata/uid").and_then(Value::as_str) != Some(uid)
        {
            return Err(precondition(
                "UID in precondition does not match the object",
            ));
        }
        if let Some(rv) = &opts.resource_version
            && obj
                .pointer("/metadata/resourceVersion")
                .and_then(Value::as_str)
                != Some(rv)
        {
            return Err(precondition(
                "ResourceVersion in precondition does not match the object",
            ));
        }
        strategy.check_delete(&obj).map_err(|why| {
            StatusError::forbidden(format!("{} {name:?} is forbidden: {why}", info.plural))
        })?;
        let mut finalizers: Vec<Value> = obj
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        if let Some(marker) = marker
            && !finalizers.iter().any(|f| f == marker)
        {
            finalizers.push(json!(marker));
        }
        let deletion = strategy.deletion(&mut obj, opts.grace);
        if !finalizers.is_empty() || deletion != Deletion::Immediate {
            if obj.pointer("/metadata/deletionTimestamp").is_none() {
                let grace = match deletion {
                    Deletion::Graceful(grace) => grace,
                    Deletion::Immediate | Deletion::Finalizing => 0,
                };
                obj["metadata"]["deletionTimestamp"] = json!(objects::now());
                obj["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
            }
            obj["metadata"]["finalizers"] = Value::Array(finalizers);
            if query.dry_run() {
                return Ok((obj, StatusCode::OK));
            }
            let kv = ctx
                .store
                .update(key, objects::encode(info, &obj), rev)
                .await
                .map_err(|e| update::store_failed(e, route))?;
            objects::set_resource_version(&mut obj, kv.mod_revision);
            return Ok((obj, StatusCode::ACCEPTED));
        }
        if query.dry_run() {
            return Ok((obj, StatusCode::OK));
        }
        let gone = ctx
            .store
            .delete(key, Some(rev))
            .await
            .map_err(|e| update::store_failed(e, route))?;
        strategy.release(&obj, &ctx.pools);
        objects::set_resource_version(&mut obj, gone.mod_revision);
        Ok::<_, Failed>((obj, StatusCode::OK))
    })
    .await
}

pub async fn delete_collection(
    ctx: &Ctx,
    route: &ResourceRoute,
    query: &Query,
) -> Result<Response<Body>, StatusError> {
    if !route.info.strategy.delete_collection() {
        return Err(StatusError::method_not_allowed(format!(
            "the server does not allow this method on the requested resource (DELETE {})",
            route.info.plural
        )));
    }
    let page = read::list_objects(ctx, route.info, route.namespace.as_deref(), query).await?;
    let opts = options(query, b"")?;
    for obj in page.items {
        let one = ResourceRoute {
            name: Some(objects::name_of(&obj).to_owned()),
            namespace: objects::namespace_of(&obj).map(str::to_owned),
            ..route.clone()
        };
        match delete_one(ctx, &one, query, &opts).await {
            Ok(_) => {}
            Err(e) if e.code == 404 => {}
            Err(e) => return Err(e),
        }
    }
    Ok(h::json(StatusCode::OK, &st::success()))
}
