//! ResourceQuota admission: a create that would take a namespace past one of its quotas is
//! refused with 403 Forbidden naming the quota, as Kubernetes' quota admission does.

use serde_json::Value;
use skiff_machinery::{quota, status::StatusError};
use skiff_resources::ResourceInfo;

use crate::{ctx::Ctx, objects, verbs::read};

/// A resource over its limit: (name, requested, used, limit), milli-units.
type Excess = (String, i64, i64, i64);

fn find(group: &str, plural: &str) -> Option<&'static ResourceInfo> {
    skiff_resources::all()
        .iter()
        .find(|i| i.group == group && i.plural == plural)
}

/// Refuses `obj` (about to be created in `namespace`) if it would exceed a quota.
///
/// Checked against a fresh count of the namespace's objects, read without waiting for the
/// watch cache ([`read::list_recent`]); two creates racing for the last unit can both pass
/// (Kubernetes serializes them through the quota's status).
pub async fn admit(
    ctx: &Ctx,
    info: &'static ResourceInfo,
    namespace: &str,
    obj: &Value,
) -> Result<(), StatusError> {
    let Some(quota_info) = find("", "resourcequotas") else {
        return Ok(());
    };
    let quotas = read::list_recent(ctx, quota_info, Some(namespace)).await?;
    // The namespace's objects of this kind, listed once for every quota and resource that
    // counts them, and only if one does.
    let mut existing: Option<Vec<Value>> = None;
    for q in &quotas {
        let Some(hard) = q.pointer("/spec/hard").and_then(Value::as_object) else {
            continue;
        };
        let mut exceeded: Vec<Excess> = Vec::new();
        for (resource, limit) in hard {
            let Some((group, plural)) = quota::counted_kind(resource) else {
                continue;
            };
            if group != info.group || plural != info.plural {
                continue;
            }
            let requested = quota::usage(resource, obj);
            if requested == 0 {
                continue;
            }
            let Some(limit) = limit
                .as_str()
                .and_then(skiff_machinery::quantity::parse_milli)
            else {
                continue;
            };
            if existing.is_none() {
                existing = Some(read::list_recent(ctx, info, Some(namespace)).await?);
            }
            let used: i64 = existing
                .iter()
                .flatten()
                .map(|o| quota::usage(resource, o))
                .sum();
            if used + requested > limit {
                exceeded.push((resource.clone(), requested, used, limit));
            }
        }
        if !exceeded.is_empty() {
            let part = |f: &dyn Fn(&Excess) -> String| {
                exceeded.iter().map(f).collect::<Vec<_>>().join(",")
            };
            let message = format!(
                "{} \"{}\" is forbidden: exceeded quota: {}, requested: {}, used: {}, limited: {}",
                info.plural,
                objects::name_of(obj),
                objects::name_of(q),
                part(&|(r, req, _, _)| format!("{r}={}", quota::format_for(r, *req))),
                part(&|(r, _, used, _)| format!("{r}={}", quota::format_for(r, *used))),
                part(&|(r, _, _, lim)| format!("{r}={}", quota::format_for(r, *lim))),
            );
            return Err(StatusError::forbidden(message));
        }
    }
    Ok(())
}
