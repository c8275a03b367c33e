//! Subresources: `status` (only `.status` changes), `scale` (an autoscaling/v1 Scale view of
//! replicas) and `pods/binding` (the scheduler's bind). The node-proxied `log`, `exec` and
//! `attach` are routed to `node_proxy` before they reach here.

use http::{HeaderMap, Method, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::{Value, json};
use skiff_machinery::{patch as p, status::StatusError};
use skiff_resources::Subresource;

use super::{
    patch, read,
    update::{self, Part},
};
use crate::{
    http::{self as h, Body, PatchType, Query},
    objects,
    route::ResourceRoute,
    server::Ctx,
};

pub async fn dispatch(
    ctx: &Ctx,
    method: &Method,
    route: &ResourceRoute,
    sub: &str,
    query: &Query,
    headers: &HeaderMap,
    body: Incoming,
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
        (Subresource::Status, &Method::GET) => {
            Ok(h::json(StatusCode::OK, &read::fetch(ctx, route).await?.0))
        }
        (Subresource::Status, &Method::PUT) => {
            let body = h::read_body(headers, body).await?;
            let new = h::decode_object(headers, &body)?;
            let written = update::put(ctx, route, query, new, Part::Status).await?;
            Ok(h::json(StatusCode::OK, &written.object))
        }
        (Subresource::Status, &Method::PATCH) => {
            let kind = h::patch_type(headers)?;
            let body = h::read_body(headers, body).await?;
            let (code, written) =
                patch::patch_object(ctx, route, query, kind, &body, Part::Status).await?;
            Ok(h::json(code, &written.object))
        }
        (Subresource::Scale, &Method::GET) => {
            let (obj, _) = read::fetch(ctx, route).await?;
            Ok(h::json(StatusCode::OK, &scale_of(&obj)))
        }
        (Subresource::Scale, &Method::PUT | &Method::PATCH) => {
            let kind = if method == Method::PUT {
                None
            } else {
                Some(h::patch_type(headers)?)
            };
            let body = h::read_body(headers, body).await?;
            scale(ctx, route, query, headers, kind, &body).await
        }
        (Subresource::Binding, &Method::POST) => {
            let body = h::read_body(headers, body).await?;
            let binding = h::decode_object(headers, &body)?;
            bind(ctx, route, query, &binding).await
        }
        (Subresource::Log | Subresource::Exec | Subresource::Attach, _) => {
            Err(StatusError::internal(format!(
                "pods/{sub} is served by the node proxy and should not reach here"
            )))
        }
        _ => Err(not_allowed()),
    }
}

/// The autoscaling/v1 Scale view of a Deployment, ReplicaSet or StatefulSet.
fn scale_of(obj: &Value) -> Value {
    let selector = obj
        .pointer("/spec/selector/matchLabels")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default();
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
            "selector": selector,
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
    let (obj, rev) = read::fetch(ctx, route).await?;
    let current = scale_of(&obj);
    let wanted = match patch_kind {
        None => h::decode_object(headers, body)?,
        Some(kind) => {
            let patch: Value = serde_json::from_slice(body)
                .map_err(|e| StatusError::bad_request(format!("error decoding patch: {e}")))?;
            match kind {
                PatchType::Json => p::json(&current, &patch)
                    .map_err(|e| StatusError::bad_request(e.to_string()))?,
                PatchType::Merge | PatchType::Strategic | PatchType::Apply => {
                    p::merge(&current, &patch)
                }
            }
        }
    };
    if let Some(rv) = objects::resource_version(&wanted)?
        && rv != rev
    {
        return Err(StatusError::conflict(
            route.info.group,
            route.info.plural,
            route.name.as_deref().unwrap_or(""),
            "the object has been modified; please apply your changes to the latest version and try again",
        ));
    }
    let replicas = wanted
        .pointer("/spec/replicas")
        .and_then(Value::as_i64)
        .ok_or_else(|| StatusError::bad_request("Scale.spec.replicas must be an integer"))?;
    let mut new = obj.clone();
    new["spec"]["replicas"] = json!(replicas);
    let written = update::write(ctx, route, query, &obj, rev, new, Part::Main, false).await?;
    Ok(h::json(StatusCode::OK, &scale_of(&written.object)))
}

/// Binds a pod to a node, once: the scheduler's write.
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
    let (obj, rev) = read::fetch(ctx, route).await?;
    if obj
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .is_some_and(|n| !n.is_empty())
    {
        return Err(StatusError::conflict(
            "",
            "pods",
            name,
            &format!(
                "pod {name} is already assigned to node {:?}",
                obj["spec"]["nodeName"].as_str().unwrap_or("")
            ),
        ));
    }
    if obj.pointer("/metadata/deletionTimestamp").is_some() {
        return Err(StatusError::conflict(
            "",
            "pods",
            name,
            "pod is being deleted, cannot be assigned to a host",
        ));
    }
    let mut new = obj.clone();
    new["spec"]["nodeName"] = json!(node);
    let mut conditions: Vec<Value> = obj
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    conditions.retain(|c| c.get("type").and_then(Value::as_str) != Some("PodScheduled"));
    conditions.push(json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": objects::now()}));
    new["status"]["conditions"] = Value::Array(conditions);
    // Binding sets a spec field and a status condition in one write, as the Go apiserver does.
    let key = objects::key(route.info, route.namespace.as_deref(), name);
    if !query.dry_run() {
        ctx.store
            .update(&key, objects::encode(&new), rev)
            .await
            .map_err(|e| objects::store_error(e, route.info, name))?;
    }
    Ok(h::json(
        StatusCode::CREATED,
        &skiff_machinery::status::success(),
    ))
}
