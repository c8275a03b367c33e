//! PATCH in all four formats kubectl and clients send: JSON patch, JSON merge patch,
//! strategic merge patch, and server-side apply; retried on write conflicts.

use http::{HeaderMap, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::{Value, json};
use skiff_machinery::{patch as p, status::StatusError};

use super::{
    create, read,
    update::{self, Part, Written},
};
use crate::{
    http::{self as h, Body, PatchType, Query},
    objects,
    route::ResourceRoute,
    server::Ctx,
};

/// How often a patch is re-applied on a fresh read after losing a write race.
const ATTEMPTS: usize = 5;

pub async fn patch(
    ctx: &Ctx,
    route: &ResourceRoute,
    query: &Query,
    headers: &HeaderMap,
    body: Incoming,
) -> Result<Response<Body>, StatusError> {
    let kind = h::patch_type(headers)?;
    let body = h::read_body(headers, body).await?;
    let written = patch_object(ctx, route, query, kind, &body, Part::Main).await?;
    Ok(h::with_warnings(
        h::json(written.0, &written.1.object),
        &written.1.warnings,
    ))
}

fn decode_patch(kind: PatchType, body: &[u8]) -> Result<Value, StatusError> {
    let parsed = if kind == PatchType::Apply {
        serde_yaml::from_slice::<Value>(body).map_err(|e| e.to_string())
    } else {
        serde_json::from_slice::<Value>(body).map_err(|e| e.to_string())
    };
    parsed.map_err(|e| StatusError::bad_request(format!("error decoding patch: {e}")))
}

/// Applies a patch to the live object (or creates it, for apply) and writes it.
pub async fn patch_object(
    ctx: &Ctx,
    route: &ResourceRoute,
    query: &Query,
    kind: PatchType,
    body: &[u8],
    part: Part,
) -> Result<(StatusCode, Written), StatusError> {
    let info = route.info;
    let patch = decode_patch(kind, body)?;
    let manager = query.get("fieldManager").unwrap_or("");
    if kind == PatchType::Apply && manager.is_empty() {
        return Err(StatusError::bad_request(
            "PATCH with application/apply-patch+yaml requires fieldManager",
        ));
    }
    let mut last_err = None;
    for _ in 0..ATTEMPTS {
        let (old, old_rev) = match read::fetch(ctx, route).await {
            Ok(found) => found,
            Err(err) if err.code == 404 && kind == PatchType::Apply && part == Part::Main => {
                let mut obj = patch.clone();
                record_apply(&mut obj, manager, info.api_version);
                let (created, warnings) = create::create_object(ctx, route, query, obj).await?;
                return Ok((
                    StatusCode::CREATED,
                    Written {
                        object: created,
                        warnings,
                    },
                ));
            }
            Err(err) => return Err(err),
        };
        let new = match kind {
            PatchType::Json => p::json(&old, &patch),
            PatchType::Merge => Ok(p::merge(&old, &patch)),
            PatchType::Strategic => p::strategic(&old, &patch, info.api_version, info.kind),
            PatchType::Apply => {
                p::strategic(&old, &without_nulls(&patch), info.api_version, info.kind).map(
                    |mut merged| {
                        record_apply(&mut merged, manager, info.api_version);
                        merged
                    },
                )
            }
        }
        .map_err(|e| {
            StatusError::invalid(
                info.group,
                info.kind,
                route.name.as_deref().unwrap_or(""),
                vec![skiff_machinery::status::Cause {
                    reason: "FieldValueInvalid".into(),
                    message: e.to_string(),
                    field: String::new(),
                }],
            )
        })?;
        // A resourceVersion in the patch is a precondition, as in the Go apiserver.
        if let Some(rv) = objects::resource_version(&patch)?
            && rv != old_rev
        {
            return Err(StatusError::conflict(
                info.group,
                info.plural,
                route.name.as_deref().unwrap_or(""),
                "the object has been modified; please apply your changes to the latest version and try again",
            ));
        }
        match update::write(ctx, route, query, &old, old_rev, new, part).await {
            Ok(written) => return Ok((StatusCode::OK, written)),
            Err(err) if err.code == 409 && err.reason == "Conflict" => last_err = Some(err),
            Err(err) => return Err(err),
        }
    }
    Err(last_err.unwrap_or_else(|| StatusError::internal("patch retries exhausted")))
}

/// Server-side apply sends the whole intent; nulls there mean "not mine", not "delete".
fn without_nulls(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), without_nulls(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(without_nulls).collect()),
        other => other.clone(),
    }
}

/// Records (or refreshes) the manager's Apply entry in `metadata.managedFields`.
fn record_apply(obj: &mut Value, manager: &str, api_version: &str) {
    if !obj.get("metadata").is_some_and(Value::is_object) {
        obj["metadata"] = json!({});
    }
    let mut entries: Vec<Value> = obj
        .pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    entries.retain(|e| {
        !(e.get("manager").and_then(Value::as_str) == Some(manager)
            && e.get("operation").and_then(Value::as_str) == Some("Apply"))
    });
    entries.push(json!({
        "manager": manager,
        "operation": "Apply",
        "apiVersion": api_version,
        "time": objects::now(),
    }));
    obj["metadata"]["managedFields"] = Value::Array(entries);
}
