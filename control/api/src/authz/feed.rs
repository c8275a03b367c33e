//! Keeps the authorizer's index in step with the store: one list at start, then a store
//! watch per held kind from the listed revision (re-listing when the watch is lost), as an
//! informer inside the API server; `ClusterRole` changes also re-aggregate the aggregated
//! roles' rules.

use std::{sync::Arc, time::Duration};

use futures::StreamExt;
use k8s_openapi::api::rbac::v1::PolicyRule;
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
async fn relist(ctx: &Ctx, held: Held, info: &'static ResourceInfo) -> Result<i64, StatusError> {
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

/// The clusterrole-aggregation controller: writes into each aggregated `ClusterRole` the rules
/// of the `ClusterRoles` its selectors match, so readers of the object see what it grants.
async fn aggregate(ctx: &Ctx, info: &ResourceInfo) {
    let wanted: Vec<(String, Vec<PolicyRule>)> = {
        let ix = ctx.authz.index();
        ix.aggregated()
            .into_iter()
            .map(|name| {
                let mut rules: Vec<PolicyRule> = Vec::new();
                for rule in ix.cluster_role_rules(&name) {
                    if !rules.contains(&rule) {
                        rules.push(rule);
                    }
                }
                (name, rules)
            })
            .collect()
    };
    for (name, rules) in wanted {
        let Ok((mut obj, revision)) = objects::fetch(ctx.store.as_ref(), info, None, &name).await
        else {
            continue;
        };
        let stored: Vec<PolicyRule> =
            serde_json::from_value(obj.get("rules").cloned().unwrap_or_default())
                .unwrap_or_default();
        if stored == rules {
            continue;
        }
        obj["rules"] = serde_json::to_value(&rules).unwrap_or_default();
        let key = objects::key(info, None, &name);
        match ctx
            .store
            .update(&key, objects::encode(info, &obj), revision)
            .await
        {
            Ok(_) => tracing::debug!(%name, rules = rules.len(), "aggregated ClusterRole rules"),
            // A concurrent write brings another event, and another pass.
            Err(err) => tracing::debug!(%name, ?err, "aggregating ClusterRole rules"),
        }
    }
}

async fn follow_one(ctx: &Ctx, held: Held, info: &'static ResourceInfo, mut from: i64) {
    let prefix = objects::prefix(info, None);
    if held == Held::ClusterRole {
        aggregate(ctx, info).await;
    }
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
                    if held == Held::ClusterRole {
                        aggregate(ctx, info).await;
                    }
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
