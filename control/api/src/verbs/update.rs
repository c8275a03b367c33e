//! PUT, the compare-and-swap write every update path (PUT, PATCH, status, scale) ends in,
//! and the retry loop around read-modify-writes (the Go apiserver's `GuaranteedUpdate`):
//! a write that loses a race with another writer is redone on a fresh read, so only a
//! precondition the client itself sent can end in 409 Conflict.

use http::{HeaderMap, Response, StatusCode};
use serde_json::Value;
use skiff_machinery::status::StatusError;
use skiff_store::StoreError;

use super::admit;
use crate::{
    ctx::Ctx,
    http::{self as h, Body, Query},
    objects,
    route::ResourceRoute,
};

/// How many fresh reads a read-modify-write gets before it gives up with 409; a racing
/// writer would have to win this many times in a row.
const ATTEMPTS: usize = 64;

/// The message of a 409 for a stale `resourceVersion`.
pub const MODIFIED: &str =
    "the object has been modified; please apply your changes to the latest version and try again";

/// Which part of the object a write may change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// Everything but `.status` (for kinds with a status subresource).
    Main,
    /// Only `.status`.
    Status,
    /// Only a pod's `spec.ephemeralContainers`, and only additions.
    EphemeralContainers,
}

/// The outcome of an update: the object as stored (or deleted) and warnings.
pub struct Written {
    pub object: Value,
    pub warnings: Vec<String>,
}

/// Why one attempt of a read-modify-write did not write.
#[derive(Debug)]
pub enum Failed {
    /// Another write changed the object after it was read: read again and retry.
    Raced,
    /// The request is refused; no retry changes that.
    Refused(StatusError),
}

impl From<StatusError> for Failed {
    fn from(err: StatusError) -> Self {
        Self::Refused(err)
    }
}

/// A store failure of a compare-and-swap write: a lost race, or a refusal.
pub fn store_failed(err: StoreError, route: &ResourceRoute) -> Failed {
    match err {
        StoreError::Conflict { .. } => Failed::Raced,
        other => Failed::Refused(objects::store_error(
            other,
            route.info,
            route.name.as_deref().unwrap_or(""),
        )),
    }
}

/// The 409 for a `resourceVersion` (or other precondition) the client sent that no longer
/// holds.
pub fn stale(route: &ResourceRoute, detail: &str) -> Failed {
    Failed::Refused(StatusError::conflict(
        route.info.group,
        route.info.plural,
        route.name.as_deref().unwrap_or(""),
        detail,
    ))
}

/// Reads the object the route names and hands it with its revision to `attempt`, which
/// writes compare-and-swap on that revision; when the write lost a race, reads again and
/// retries, as the Go apiserver's `GuaranteedUpdate` does.
///
/// `attempt` returns a future that owns what it needs (or borrows from outside the
/// closure), so one attempt can be made after another.
pub async fn guaranteed<T, F, Fut>(
    ctx: &Ctx,
    route: &ResourceRoute,
    mut attempt: F,
) -> Result<T, StatusError>
where
    F: FnMut(Value, i64) -> Fut,
    Fut: Future<Output = Result<T, Failed>>,
{
    let name = route.name.as_deref().unwrap_or("");
    for _ in 0..ATTEMPTS {
        let (current, revision) = objects::fetch(
            ctx.store.as_ref(),
            route.info,
            route.namespace.as_deref(),
            name,
        )
        .await?;
        match attempt(current, revision).await {
            Ok(done) => return Ok(done),
            Err(Failed::Raced) => {
                tracing::debug!(
                    kind = route.info.kind,
                    name,
                    "write raced another; retrying"
                );
            }
            Err(Failed::Refused(err)) => return Err(err),
        }
    }
    Err(StatusError::conflict(
        route.info.group,
        route.info.plural,
        name,
        MODIFIED,
    ))
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
) -> Result<Written, Failed> {
    let info = route.info;
    let name = route.name.as_deref().unwrap_or("");
    admit::check_kind(info, &mut new)?;
    if objects::name_of(&new) != name {
        return Err(StatusError::bad_request(format!(
            "the name of the object ({}) does not match the name on the URL ({name})",
            objects::name_of(&new)
        ))
        .into());
    }
    admit::check_namespace(info, &mut new, route.namespace.as_deref())?;
    let mut warnings = admit::unknown_fields(info, &new, query)?;
    let has_status = info.has(skiff_resources::Subresource::Status);
    let has_ephemeral = info.has(skiff_resources::Subresource::EphemeralContainers);
    match part {
        Part::Main => {
            if has_status {
                keep(old, &mut new, "/status");
            }
            // Ephemeral containers are added through their subresource only.
            if has_ephemeral {
                keep(old, &mut new, "/spec/ephemeralContainers");
            }
        }
        Part::Status => {
            let mut only = old.clone();
            keep(&new, &mut only, "/status");
            new = only;
        }
        Part::EphemeralContainers => {
            let mut only = old.clone();
            keep(&new, &mut only, "/spec/ephemeralContainers");
            new = only;
            let causes = skiff_resources::ephemeral_container_changes(old, &new);
            if !causes.is_empty() {
                return Err(StatusError::invalid(
                    info.group,
                    info.kind,
                    objects::name_of(&new),
                    causes,
                )
                .into());
            }
        }
    }
    admit::admit_update(info, old, &mut new)?;
    crate::authz::admission::admit(&ctx.authz, info, Some(old), &new)?;
    warnings.extend(super::podsecurity::admit(ctx, info, Some(old), &new).await?);
    info.strategy
        .allocate_update(old, &mut new, &ctx.pools)
        .map_err(|cause| {
            StatusError::invalid(info.group, info.kind, objects::name_of(&new), vec![cause])
        })?;
    let stored = store(ctx, route, query, old, old_rev, &mut new, applied).await;
    let strategy = info.strategy;
    match &stored {
        // What the old version held and the new one dropped goes back.
        Ok(Stored::Updated) => strategy.release_update(old, &new, &ctx.pools),
        // What the new version took beyond the old one was never stored.
        Ok(Stored::DryRun) | Err(_) => strategy.release_update(&new, old, &ctx.pools),
        Ok(Stored::Deleted) => {
            strategy.release(old, &ctx.pools);
            strategy.release_update(&new, old, &ctx.pools);
        }
    }
    stored.map(|_| Written {
        object: new,
        warnings,
    })
}

/// Sets the field at `pointer` (`/a` or `/a/b`) of `to` to its value in `from`, or removes it
/// from `to` when `from` has none.
fn keep(from: &Value, to: &mut Value, pointer: &str) {
    let (parent, field) = pointer.rsplit_once('/').unwrap_or(("", pointer));
    let value = from.pointer(pointer).cloned();
    let Some(parent) = (if parent.is_empty() {
        Some(&mut *to)
    } else {
        to.pointer_mut(parent)
    })
    .and_then(Value::as_object_mut) else {
        return;
    };
    match value {
        Some(v) => {
            parent.insert(field.to_owned(), v);
        }
        None => {
            parent.remove(field);
        }
    }
}

/// What [`store`] did with an admitted update.
enum Stored {
    /// Written over the old version.
    Updated,
    /// Marked for deletion with no finalizer left: deleted.
    Deleted,
    /// Nothing: a dry run.
    DryRun,
}

/// Records ownership and writes `new` over `old` compare-and-swap, or deletes it when it
/// is finalized; `new` gets the resulting resourceVersion.
async fn store(
    ctx: &Ctx,
    route: &ResourceRoute,
    query: &Query,
    old: &Value,
    old_rev: i64,
    new: &mut Value,
    applied: bool,
) -> Result<Stored, Failed> {
    let info = route.info;
    let name = route.name.as_deref().unwrap_or("");
    // Server-side apply has already recorded its own ownership.
    if !applied {
        skiff_machinery::apply::record_update(Some(old), new, query.manager(), &objects::now());
    }
    let key = objects::key(info, route.namespace.as_deref(), name);
    let finalized = new.pointer("/metadata/deletionTimestamp").is_some()
        && new
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .is_none_or(Vec::is_empty)
        && !info.strategy.finalizing(new);
    if query.dry_run() {
        objects::set_resource_version(new, old_rev);
        return Ok(Stored::DryRun);
    }
    if finalized {
        let gone = ctx
            .store
            .delete(&key, Some(old_rev))
            .await
            .map_err(|e| store_failed(e, route))?;
        objects::set_resource_version(new, gone.mod_revision);
        return Ok(Stored::Deleted);
    }
    let kv = ctx
        .store
        .update(&key, objects::encode(info, new), old_rev)
        .await
        .map_err(|e| store_failed(e, route))?;
    objects::set_resource_version(new, kv.mod_revision);
    Ok(Stored::Updated)
}

pub async fn update(
    ctx: &Ctx,
    route: &ResourceRoute,
    query: &Query,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response<Body>, StatusError> {
    let new = h::decode_object(headers, body)?;
    let written = put(ctx, route, query, new, Part::Main).await?;
    Ok(h::with_warnings(
        h::json(StatusCode::OK, &written.object),
        &written.warnings,
    ))
}

/// A full replacement: conditional on the body's resourceVersion when it has one, retried
/// on a fresh read when it has none.
pub async fn put(
    ctx: &Ctx,
    route: &ResourceRoute,
    query: &Query,
    new: Value,
    part: Part,
) -> Result<Written, StatusError> {
    let sent = objects::resource_version(&new)?;
    let new = &new;
    guaranteed(ctx, route, |old, old_rev| async move {
        if sent.is_some_and(|rv| rv != old_rev) {
            return Err(stale(route, MODIFIED));
        }
        write(ctx, route, query, &old, old_rev, new.clone(), part, false).await
    })
    .await
}
