//! PATCH in all four formats kubectl and clients send: JSON patch, JSON merge patch,
//! strategic merge patch, and server-side apply; retried on write conflicts.

use http::{HeaderMap, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::Value;
use skiff_machinery::{
    apply, patch as p,
    status::{Cause, StatusError},
};

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
    let name = route.name.as_deref().unwrap_or("");
    let patch = decode_patch(kind, body)?;
    let manager = query.get("fieldManager").unwrap_or("");
    if kind == PatchType::Apply && manager.is_empty() {
        return Err(StatusError::bad_request(
            "PATCH with application/apply-patch+yaml requires fieldManager",
        ));
    }
    let force = query.flag("force");
    let mut last_err = None;
    for _ in 0..ATTEMPTS {
        let (old, old_rev) = match read::fetch(ctx, route).await {
            Ok(found) => found,
            Err(err) if err.code == 404 && kind == PatchType::Apply && part == Part::Main => {
                let obj = apply::apply(None, &patch, manager, force, &objects::now())
                    .map_err(|e| apply_error(route, &e))?;
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
        let invalid = |e: p::PatchError| {
            StatusError::invalid(
                info.group,
                info.kind,
                name,
                vec![Cause {
                    reason: "FieldValueInvalid".into(),
                    message: e.to_string(),
                    field: String::new(),
                }],
            )
        };
        let new = match kind {
            PatchType::Json => p::json(&old, &patch).map_err(invalid)?,
            PatchType::Merge => p::merge(&old, &patch),
            PatchType::Strategic => {
                p::strategic(&old, &patch, info.api_version, info.kind).map_err(invalid)?
            }
            PatchType::Apply => apply::apply(Some(&old), &patch, manager, force, &objects::now())
                .map_err(|e| apply_error(route, &e))?,
        };
        // A resourceVersion in the patch is a precondition, as in the Go apiserver.
        if let Some(rv) = objects::resource_version(&patch)?
            && rv != old_rev
        {
            return Err(StatusError::conflict(
                info.group,
                info.plural,
                name,
                "the object has been modified; please apply your changes to the latest version and try again",
            ));
        }
        let applied = kind == PatchType::Apply;
        match update::write(ctx, route, query, &old, old_rev, new, part, applied).await {
            Ok(written) => return Ok((StatusCode::OK, written)),
            Err(err) if err.code == 409 && err.reason == "Conflict" => last_err = Some(err),
            Err(err) => return Err(err),
        }
    }
    Err(last_err.unwrap_or_else(|| StatusError::internal("patch retries exhausted")))
}

/// A refused apply as the 409 Conflict (with one cause per field) kubectl reports.
fn apply_error(route: &ResourceRoute, err: &apply::ApplyError) -> StatusError {
    let info = route.info;
    let name = route.name.as_deref().unwrap_or("");
    match err {
        apply::ApplyError::Conflicts(conflicts) => {
            let mut status = StatusError::conflict(info.group, info.plural, name, "");
            status.message = err.to_string();
            if let Some(details) = &mut status.details {
                details.causes = conflicts
                    .iter()
                    .map(|c| Cause {
                        reason: "FieldManagerConflict".into(),
                        message: format!("conflict with {:?}", c.manager),
                        field: c.field.clone(),
                    })
                    .collect();
            }
            status
        }
        apply::ApplyError::Merge(m) => StatusError::invalid(
            info.group,
            info.kind,
            name,
            vec![Cause {
                reason: "FieldValueInvalid".into(),
                message: m.clone(),
                field: String::new(),
            }],
        ),
    }
}
