//! Subresources: `status` (only `.status` changes), `scale` (an autoscaling/v1 Scale view of
//! replicas), `binding` (the scheduler's bind of a pod) and `ephemeralcontainers` (only
//! additions to a pod's `spec.ephemeralContainers`), `token` (a ServiceAccount's
//! `TokenRequest`). The node-proxied `log`, `exec`
//! and `attach` are routed to the node proxy before they reach here.

use http::{HeaderMap, Method, Response, StatusCode};
use serde_json::{Value, json};
use skiff_machinery::{patch as p, status::StatusError};
use skiff_resources::{ResourceInfo, Subresource};

use super::{
    patch, read,
    update::{self, Failed, MODIFIED, Part},
};
use crate::{
    ctx::Ctx,
    http::{self as h, Body, PatchType, Query},
    objects,
    route::ResourceRoute,
};

pub async fn dispatch(
    ctx: &Ctx,
    method: &Method,
    route: &ResourceRoute,
    sub: &str,
    query: &Query,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response<Body>, StatusError> {
    let info = route.info;
    let served = info.subresources.iter().find(|s| s.name() == sub);
    let Some(served) = served else {
        return Err(StatusError::not_found(
            info.group,
            &format!("{}/{sub}", info.plural),
            route.name.as_deref().unwrap_or(""),
        ));
    };
    let not_allowed = || {
        StatusError::method_not_allowed(format!(
            "the server does not allow this method on the requested resource ({method} {}/{sub})",
            info.plural
        ))
    };
    match (served, method) {
        (Subresource::Status | Subresource::EphemeralContainers, &Method::GET) => {
            Ok(h::json(StatusCode::OK, &read::fetch(ctx, route).await?.0))
        }
        (Subresource::Status | Subresource::EphemeralContainers, &Method::PUT) => {
            let new = h::decode_object(headers, body)?;
            let written = update::put(ctx, route, query, new, part_of(*served)).await?;
            Ok(h::json(StatusCode::OK, &written.object))
        }
        (Subresource::Status | Subresource::EphemeralContainers, &Method::PATCH) => {
            let kind = h::patch_type(headers)?;
            let (code, written) =
                patch::patch_object(ctx, route, query, kind, body, part_of(*served)).await?;
            Ok(h::json(code, &written.object))
        }
        (Subresource::Scale, &Method::GET) => {
            let (obj, _) = read::fetch(ctx, route).await?;
            Ok(h::json(StatusCode::OK, &scale_of(info, &obj)))
        }
        (Subresource::Scale, &Method::PUT | &Method::PATCH) => {
            let kind = if method == Method::PUT {
                None
            } else {
                Some(h::patch_type(headers)?)
            };
            scale(ctx, route, query, headers, kind, body).await
        }
        (Subresource::Token, &Method::POST) => {
            super::token::create(ctx, route, headers, body).await
        }
        (Subresource::Binding, &Method::POST) => {
            let binding = h::decode_object(headers, body)?;
            bind(ctx, route, query, &binding).await
        }
        (
            Subresource::Log | Subresource::Exec | Subresource::Attach | Subresource::PortForward,
            _,
        ) => Err(StatusError::internal(format!(
            "{}/{sub} is served by the node proxy and should not reach here",
            info.plural
        ))),
        _ => Err(not_allowed()),
    }
}

/// The part of the object a subresource writes.
fn part_of(sub: Subresource) -> Part {
    if sub == Subresource::EphemeralContainers {
        Part::EphemeralContainers
    } else {
        Part::Status
    }
}

/// The autoscaling/v1 Scale view of an object with replicas.
fn scale_of(info: &ResourceInfo, obj: &Value) -> Value {
    let meta = &obj["metadata"];
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": meta["name"],
            "namespace": meta["namespace"],
            "uid": meta["uid"],
            "resourceVersion": meta["resourceVersion"],
            "creationTimestamp": meta["creationTimestamp"],
        },
        "spec": {"replicas": obj.pointer("/spec/replicas").cloned().unwrap_or(json!(0))},
        "status": {
            "replicas": obj.pointer("/status/replicas").cloned().unwrap_or(json!(0)),
            "selector": info.strategy.scale_selector(obj),
        },
    })
}

async fn scale(
    ctx: &Ctx,
    route: &ResourceRoute,
    query: &Query,
    headers: &HeaderMap,
    patch_kind: Option<PatchType>,
    body: &[u8],
) -> Result<Response<Body>, StatusError> {
    let sent = match patch_kind {
        None => h::decode_object(headers, body)?,
        Some(_) => serde_json::from_slice(body)
            .map_err(|e| StatusError::bad_request(format!("error decoding patch: {e}")))?,
    };
    let sent = &sent;
    let written = update::guaranteed(ctx, route, |obj, rev| async move {
        let current = scale_of(route.info, &obj);
        let wanted = match patch_kind {
            None => sent.clone(),
            Some(PatchType::Json) => patch::json_patch(ctx, &current, sent, |e| {
                StatusError::bad_request(e.to_string())
            })?,
            Some(PatchType::Merge | PatchType::Strategic | PatchType::Apply) => {
                p::merge(&current, sent)
            }
        };
        if objects::resource_version(&wanted)?.is_some_and(|rv| rv != rev) {
            return Err(update::stale(route, MODIFIED));
        }
        let replicas = wanted
            .pointer("/spec/replicas")
            .and_then(Value::as_i64)
            .ok_or_else(|| StatusError::bad_request("Scale.spec.replicas must be an integer"))?;
        let mut new = obj.clone();
        new["spec"]["replicas"] = json!(replicas);
        update::write(ctx, route, query, &obj, rev, new, Part::Main, false).await
    })
    .await?;
    Ok(h::json(
        StatusCode::OK,
        &scale_of(route.info, &written.object),
    ))
}

/// Binds a pod to a node, once: the scheduler's write.
///
/// The first attempt starts from the watch cache's copy of the pod, as the Go apiserver's
/// `GuaranteedUpdate` starts from its cached object: no store read on the scheduler's hot
/// path, one decode of the cached encoding. A copy that is behind loses the
/// compare-and-swap, and a refusal may come from a copy that is behind too; both go on from
/// the store's copy.
async fn bind(
    ctx: &Ctx,
    route: &ResourceRoute,
    query: &Query,
    binding: &Value,
) -> Result<Response<Body>, StatusError> {
    let node = binding
        .pointer("/target/name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| StatusError::bad_request("Binding.target.name is required"))?;
    let name = route.name.as_deref().unwrap_or("");
    let key = objects::key(route.info, route.namespace.as_deref(), name);
    let key = &key;
    let from_cache = match super::read::cached_object(ctx, route.info, key) {
        Some((obj, rev)) => assign(ctx, route, query, key, node, obj, rev).await,
        None => Err(Failed::Raced),
    };
    if from_cache.is_err() {
        update::guaranteed(ctx, route, |obj, rev| {
            assign(ctx, route, query, key, node, obj, rev)
        })
        .await?;
    }
    Ok(h::json(
        StatusCode::CREATED,
        &skiff_machinery::status::success(),
    ))
}

/// One attempt at binding: `obj` (stored at `rev`) gets `spec.nodeName` and the
/// `PodScheduled=True` condition, written compare-and-swap.
async fn assign(
    ctx: &Ctx,
    route: &ResourceRoute,
    query: &Query,
    key: &str,
    node: &str,
    obj: Value,
    rev: i64,
) -> Result<(), Failed> {
    let name = route.name.as_deref().unwrap_or("");
    if let Some(bound) = obj
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
    {
        return Err(update::stale(
            route,
            &format!("pod {name} is already assigned to node {bound:?}"),
        ));
    }
    if obj.pointer("/metadata/deletionTimestamp").is_some() {
        return Err(update::stale(
            route,
            "pod is being deleted, cannot be assigned to a host",
        ));
    }
    let mut new = obj;
    new["spec"]["nodeName"] = json!(node);
    let mut conditions: Vec<Value> = new
        .pointer_mut("/status/conditions")
        .map(Value::take)
        .and_then(|c| match c {
            Value::Array(items) => Some(items),
            _ => None,
        })
        .unwrap_or_default();
    conditions.retain(|c| c.get("type").and_then(Value::as_str) != Some("PodScheduled"));
    conditions.push(json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": objects::now()}));
    new["status"]["conditions"] = Value::Array(conditions);
    // Binding sets a spec field and a status condition in one write, as the Go
    // apiserver does.
    if !query.dry_run() {
        ctx.store
            .update(key, objects::encode(route.info, &new), rev)
            .await
            .map_err(|e| update::store_failed(e, route))?;
    }
    Ok(())
}
