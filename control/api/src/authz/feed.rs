//! Keeps the authorizer's index in step with the store: one list at start, then a store
//! watch per held kind from the listed revision (re-listing when the watch is lost), as an
//! informer inside the API server.

use std::{sync::Arc, time::Duration};

use futures::StreamExt;
use skiff_machinery::status::StatusError;
use skiff_resources::ResourceInfo;

use super::index::Held;
use crate::{ctx::Ctx, http::Query, objects, verbs::list_objects};

fn info(api_version: &str, kind: &str) -> Result<&'static ResourceInfo, StatusError> {
    skiff_resources::by_kind(api_version, kind)
        .ok_or_else(|| StatusError::internal(format!("{kind} is not served")))
}

/// Replaces what the index holds of `held` with the store's objects; returns the revision
/// listed at.
async fn relist(ctx: &Ctx, held: Held, info: &ResourceInfo) -> Result<i64, StatusError> {
    let page = list_objects(ctx, info, None, &Query::default()).await?;
    ctx.authz.update(|ix| {
        ix.clear(held);
        for obj in &page.items {
            ix.apply(
                held,
                objects::namespace_of(obj).unwrap_or(""),
                objects::name_of(obj),
                Some(obj),
            );
        }
    });
    Ok(page.revision)
}

/// Lists every held kind once, so the index is complete before the first request, and
/// returns the revisions to watch from.
///
/// # Errors
/// When the store cannot be listed.
pub async fn load(ctx: &Ctx) -> Result<Vec<i64>, StatusError> {
    let mut revisions = Vec::new();
    for (held, api_version, kind) in Held::ALL {
        revisions.push(relist(ctx, held, info(api_version, kind)?).await?);
    }
    Ok(revisions)
}

/// Follows every held kind from the revisions [`load`] returned, until aborted.
pub async fn follow(ctx: Arc<Ctx>, revisions: Vec<i64>) {
    let tasks = Held::ALL
        .into_iter()
        .zip(revisions)
        .map(|((held, api_version, kind), from)| {
            let ctx = Arc::clone(&ctx);
            async move {
                if let Ok(info) = info(api_version, kind) {
                    follow_one(&ctx, held, info, from).await;
                }
            }
        });
    futures::future::join_all(tasks).await;
}

async fn follow_one(ctx: &Ctx, held: Held, info: &'static ResourceInfo, mut from: i64) {
    let prefix = objects::prefix(info, None);
    loop {
        match ctx.store.watch(&prefix, from).await {
            Ok(mut events) => {
                while let Some(event) = events.next().await {
                    let Ok(event) = event else { break };
                    from = event.kv.mod_revision;
                    let Ok(obj) = objects::decode(info, &event.kv) else {
                        continue;
                    };
                    let deleted = event.kind == skiff_store::EventKind::Delete;
                    ctx.authz.update(|ix| {
                        ix.apply(
                            held,
                            objects::namespace_of(&obj).unwrap_or(""),
                            objects::name_of(&obj),
                            (!deleted).then_some(&obj),
                        );
                    });
                }
            }
            Err(err) => tracing::warn!(kind = info.kind, ?err, "authorizer watch failed"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        match relist(ctx, held, info).await {
            Ok(revision) => from = revision,
            Err(err) => {
                tracing::warn!(kind = info.kind, err = %err.message, "authorizer relist failed");
            }
        }
    }
}
