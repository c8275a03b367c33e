//! PUT, and the compare-and-swap write every update path (PUT, PATCH, status, scale) ends in.

use http::{HeaderMap, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::Value;
use skiff_machinery::status::StatusError;

use super::{admit, read, service};
use crate::{
    http::{self as h, Body, Query},
    objects,
    route::ResourceRoute,
    server::Ctx,
};

/// Which part of the object a write may change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// Everything but `.status` (for kinds with a status subresource).
    Main,
    /// Only `.status`.
    Status,
}

/// The outcome of an update: the object as stored (or deleted) and warnings.
pub struct Written {
    pub object: Value,
    pub warnings: Vec<String>,
}

/// Writes `new` over `old` (stored at `old_rev`) under the update rules, compare-and-swap.
/// An object marked for deletion whose finalizers are all gone is deleted instead.
/// `applied` says `new` comes from server-side apply, which records ownership itself.
#[expect(
    clippy::too_many_arguments,
    reason = "every update path passes the same request context"
)]
pub async fn write(
    ctx: &Ctx,
    route: &ResourceRoute,
    query: &Query,
    old: &Value,
    old_rev: i64,
    mut new: Value,
    part: Part,
    applied: bool,
) -> Result<Written, StatusError> {
    let info = route.info;
    let name = route.name.as_deref().unwrap_or("");
    admit::check_kind(info, &mut new)?;
    if objects::name_of(&new) != name {
        return Err(StatusError::bad_request(format!(
            "the name of the object ({}) does not match the name on the URL ({name})",
            objects::name_of(&new)
        )));
    }
    admit::check_namespace(info, &mut new, route.namespace.as_deref())?;
    let warnings = admit::unknown_fields(info, &new, query)?;
    let has_status = info.has(skiff_resources::Subresource::Status);
    match part {
        Part::Main if has_status => match old.get("status") {
            Some(s) => new["status"] = s.clone(),
            None => {
                if let Some(m) = new.as_object_mut() {
                    m.remove("status");
                }
            }
        },
        Part::Status => {
            let status = new.get("status").cloned();
            new = old.clone();
            match status {
                Some(s) => new["status"] = s,
                None => {
                    if let Some(m) = new.as_object_mut() {
                        m.remove("status");
                    }
                }
            }
        }
        Part::Main => {}
    }
    admit::admit_update(info, old, &mut new)?;
    // Server-side apply has already recorded its own ownership.
    if !applied {
        skiff_machinery::apply::record_update(
            Some(old),
            &mut new,
            query.manager(),
            &objects::now(),
        );
    }
    let key = objects::key(info, route.namespace.as_deref(), name);
    let empty = |path: &str| {
        new.pointer(path)
            .and_then(Value::as_array)
            .is_none_or(Vec::is_empty)
    };
    let namespace = info.group.is_empty() && info.kind == "Namespace";
    let finalized = new.pointer("/metadata/deletionTimestamp").is_some()
        && empty("/metadata/finalizers")
        && (!namespace || empty("/spec/finalizers"));
    if query.dry_run() {
        objects::set_resource_version(&mut new, old_rev);
        return Ok(Written {
            object: new,
            warnings,
        });
    }
    if finalized {
        let gone = ctx
            .store
            .delete(&key, Some(old_rev))
            .await
            .map_err(|e| objects::store_error(e, info, name))?;
        if info.group.is_empty() && info.kind == "Service" {
            service::release(ctx, old);
        }
        objects::set_resource_version(&mut new, gone.mod_revision);
        return Ok(Written {
            object: new,
            warnings,
        });
    }
    match ctx.store.update(&key, objects::encode(&new), old_rev).await {
        Ok(kv) => {
            objects::set_resource_version(&mut new, kv.mod_revision);
            Ok(Written {
                object: new,
                warnings,
            })
        }
        Err(err) => Err(objects::store_error(err, info, name)),
    }
}

pub async fn update(
    ctx: &Ctx,
    route: &ResourceRoute,
    query: &Query,
    headers: &HeaderMap,
    body: Incoming,
) -> Result<Response<Body>, StatusError> {
    let body = h::read_body(headers, body).await?;
    let new = h::decode_object(headers, &body)?;
    let written = put(ctx, route, query, new, Part::Main).await?;
    Ok(h::with_warnings(
        h::json(StatusCode::OK, &written.object),
        &written.warnings,
    ))
}

/// A full replacement: conditional on the body's resourceVersion when it has one.
pub async fn put(
    ctx: &Ctx,
    route: &ResourceRoute,
    query: &Query,
    new: Value,
    part: Part,
) -> Result<Written, StatusError> {
    let info = route.info;
    let name = route.name.as_deref().unwrap_or("");
    let (old, old_rev) = read::fetch(ctx, route).await?;
    let sent = objects::resource_version(&new)?;
    if sent.is_some_and(|rv| rv != old_rev) {
        return Err(StatusError::conflict(
            info.group,
            info.plural,
            name,
            "the object has been modified; please apply your changes to the latest version and try again",
        ));
    }
    write(ctx, route, query, &old, old_rev, new, part, false).await
}
