//! DELETE of one object (graceful for bound pods, deferred while finalizers remain, with
//! the propagation policy recorded for the garbage collector) and of collections.

use http::{HeaderMap, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::{Value, json};
use skiff_machinery::status::{self as st, StatusError};

use super::{read, service};
use crate::{
    http::{self as h, Body, Query},
    objects,
    route::ResourceRoute,
    server::Ctx,
};

/// `DeleteOptions` from the body and the query.
#[derive(Debug, Default)]
struct Options {
    propagation: Option<String>,
    grace: Option<i64>,
    uid: Option<String>,
    resource_version: Option<String>,
}

fn options(query: &Query, body: &[u8]) -> Result<Options, StatusError> {
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
    headers: &HeaderMap,
    body: Incoming,
) -> Result<Response<Body>, StatusError> {
    let body = h::read_body(headers, body).await?;
    let opts = options(query, &body)?;
    let (obj, code) = delete_one(ctx, route, query, &opts).await?;
    Ok(h::json(code, &obj))
}

#[expect(
    clippy::too_many_lines,
    reason = "preconditions, finalizers and grace read best in order"
)]
async fn delete_one(
    ctx: &Ctx,
    route: &ResourceRoute,
    query: &Query,
    opts: &Options,
) -> Result<(Value, StatusCode), StatusError> {
    let info = route.info;
    let name = route.name.as_deref().unwrap_or("");
    let (mut obj, rev) = read::fetch(ctx, route).await?;
    let conflict = |what: &str| {
        StatusError::conflict(
            info.group,
            info.plural,
            name,
            &format!("Precondition failed: {what}"),
        )
    };
    if let Some(uid) = &opts.uid
        && obj.pointer("/metadata/uid").and_then(Value::as_str) != Some(uid)
    {
        return Err(conflict("UID in precondition does not match the object"));
    }
    if let Some(rv) = &opts.resource_version
        && obj
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            != Some(rv)
    {
        return Err(conflict(
            "ResourceVersion in precondition does not match the object",
        ));
    }
    let mut finalizers: Vec<Value> = obj
        .pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let marker = match opts.propagation.as_deref() {
        Some("Foreground") => Some("foregroundDeletion"),
        Some("Orphan") => Some("orphan"),
        Some("Background") | None => None,
        Some(other) => {
            return Err(StatusError::bad_request(format!(
                "unsupported propagationPolicy {other:?}"
            )));
        }
    };
    if let Some(marker) = marker
        && !finalizers.iter().any(|f| f == marker)
    {
        finalizers.push(json!(marker));
    }
    let bound_pod = info.kind == "Pod"
        && info.group.is_empty()
        && obj
            .pointer("/spec/nodeName")
            .and_then(Value::as_str)
            .is_some_and(|n| !n.is_empty());
    let grace = opts.grace.unwrap_or_else(|| {
        obj.pointer("/spec/terminationGracePeriodSeconds")
            .and_then(Value::as_i64)
            .unwrap_or(30)
    });
    // A bound pod is stopped by its node, which deletes it with grace 0 when done.
    let graceful = bound_pod && grace > 0;
    // A namespace is emptied by the namespace controller, which then drops its
    // `spec.finalizers`; until then it is Terminating.
    let namespace_finalizing = info.group.is_empty()
        && info.kind == "Namespace"
        && obj
            .pointer("/spec/finalizers")
            .and_then(Value::as_array)
            .is_some_and(|f| !f.is_empty());
    if namespace_finalizing {
        obj["status"]["phase"] = json!("Terminating");
    }
    if !finalizers.is_empty() || graceful || namespace_finalizing {
        if obj.pointer("/metadata/deletionTimestamp").is_none() {
            obj["metadata"]["deletionTimestamp"] = json!(objects::now());
            obj["metadata"]["deletionGracePeriodSeconds"] = json!(if graceful { grace } else { 0 });
        }
        obj["metadata"]["finalizers"] = Value::Array(finalizers);
        if query.dry_run() {
            return Ok((obj, StatusCode::OK));
        }
        let key = objects::key(info, route.namespace.as_deref(), name);
        let kv = ctx
            .store
            .update(&key, objects::encode(&obj), rev)
            .await
            .map_err(|e| objects::store_error(e, info, name))?;
        objects::set_resource_version(&mut obj, kv.mod_revision);
        return Ok((obj, StatusCode::ACCEPTED));
    }
    if query.dry_run() {
        return Ok((obj, StatusCode::OK));
    }
    let key = objects::key(info, route.namespace.as_deref(), name);
    let gone = ctx
        .store
        .delete(&key, Some(rev))
        .await
        .map_err(|e| objects::store_error(e, info, name))?;
    if info.group.is_empty() && info.kind == "Service" {
        service::release(ctx, &obj);
    }
    objects::set_resource_version(&mut obj, gone.mod_revision);
    Ok((obj, StatusCode::OK))
}

pub async fn delete_collection(
    ctx: &Ctx,
    route: &ResourceRoute,
    query: &Query,
    _headers: &HeaderMap,
) -> Result<Response<Body>, StatusError> {
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
