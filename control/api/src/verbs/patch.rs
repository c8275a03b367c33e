//! PATCH in all four formats kubectl and clients send: JSON patch, JSON merge patch,
//! strategic merge patch, and server-side apply; re-applied on a fresh read when the write
//! loses a race.

use http::{HeaderMap, Response, StatusCode};
use serde_json::Value;
use skiff_machinery::{
    apply, patch as p,
    status::{Cause, StatusError},
};

use super::{
    create,
    update::{self, MODIFIED, Part, Written},
};
use crate::{
    ctx::Ctx,
    http::{self as h, Body, PatchType, Query},
    objects,
    route::ResourceRoute,
};

pub async fn patch(
    ctx: &Ctx,
    route: &ResourceRoute,
    query: &Query,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response<Body>, StatusError> {
    let kind = h::patch_type(headers)?;
    let (code, written) = patch_object(ctx, route, query, kind, body, Part::Main).await?;
    Ok(h::with_warnings(
        h::json(code, &written.object),
        &written.warnings,
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

/// A JSON patch applied within the server's limits (copies up to the body limit, as kube's
/// `JSONPatchMaxCopyBytes`); too many operations is kube's 413, other failures `invalid`'s.
pub(super) fn json_patch(
    ctx: &Ctx,
    old: &Value,
    patch: &Value,
    invalid: impl Fn(p::PatchError) -> StatusError,
) -> Result<Value, StatusError> {
    p::json(old, patch, ctx.max_body).map_err(|e| match e {
        p::PatchError::TooManyOperations { .. } => {
            StatusError::too_large(format!("Request entity too large: {e}"))
        }
        e => invalid(e),
    })
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
    // A resourceVersion in the patch is a precondition, as in the Go apiserver.
    let precondition = objects::resource_version(&patch)?;
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
    let (patch_ref, invalid) = (&patch, &invalid);
    let patched = update::guaranteed(ctx, route, |old, old_rev| async move {
        let patch = patch_ref;
        let new = match kind {
            PatchType::Json => json_patch(ctx, &old, patch, invalid)?,
            PatchType::Merge => p::merge(&old, patch),
            PatchType::Strategic => {
                p::strategic(&old, patch, info.api_version, info.kind).map_err(invalid)?
            }
            PatchType::Apply => apply::apply(Some(&old), patch, manager, force, &objects::now())
                .map_err(|e| apply_error(route, &e))?,
        };
        if precondition.is_some_and(|rv| rv != old_rev) {
            return Err(update::stale(route, MODIFIED));
        }
        let applied = kind == PatchType::Apply;
        update::write(ctx, route, query, &old, old_rev, new, part, applied).await
    })
    .await;
    match patched {
        Ok(written) => Ok((StatusCode::OK, written)),
        Err(err) if err.code == 404 && kind == PatchType::Apply && part == Part::Main => {
            let obj = apply::apply(None, &patch, manager, force, &objects::now())
                .map_err(|e| apply_error(route, &e))?;
            let (created, warnings) = create::create_object(ctx, route, query, obj).await?;
            Ok((
                StatusCode::CREATED,
                Written {
                    object: created,
                    warnings,
                },
            ))
        }
        Err(err) => Err(err),
    }
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
