//! GET of one object and LIST with selectors, paging (`limit`/`continue`) and tables.

use std::{collections::BTreeMap, time::SystemTime};

use base64::Engine;
use http::{HeaderMap, Response, StatusCode};
use serde_json::{Value, json};
use skiff_machinery::{
    selector::{FieldSelector, LabelSelector},
    status::StatusError,
};
use skiff_resources::{ResourceInfo, table};
use skiff_store::ListOptions;

use crate::{
    ctx::Ctx,
    http::{self as h, Body, Format, Query},
    objects,
    route::ResourceRoute,
};

pub async fn get(
    ctx: &Ctx,
    route: &ResourceRoute,
    headers: &HeaderMap,
) -> Result<Response<Body>, StatusError> {
    let obj = fetch(ctx, route).await?.0;
    Ok(match h::format(headers) {
        Format::Table => {
            let mut t = table::table(route.info, std::slice::from_ref(&obj), SystemTime::now());
            t["metadata"]["resourceVersion"] = obj["metadata"]["resourceVersion"].clone();
            h::json(StatusCode::OK, &t)
        }
        Format::Object => h::json(StatusCode::OK, &obj),
    })
}

/// The current object named by the route and its mod revision, or 404.
pub async fn fetch(ctx: &Ctx, route: &ResourceRoute) -> Result<(Value, i64), StatusError> {
    objects::fetch(
        ctx.store.as_ref(),
        route.info,
        route.namespace.as_deref(),
        route.name.as_deref().unwrap_or(""),
    )
    .await
}

/// Selectors of a list or watch request.
pub struct Selectors {
    labels: LabelSelector,
    fields: FieldSelector,
}

impl Selectors {
    pub fn parse(query: &Query) -> Result<Self, StatusError> {
        let labels = LabelSelector::parse(query.get("labelSelector").unwrap_or(""))
            .map_err(|e| StatusError::bad_request(format!("unable to parse requirement: {e}")))?;
        let fields = FieldSelector::parse(query.get("fieldSelector").unwrap_or(""))
            .map_err(|e| StatusError::bad_request(e.to_string()))?;
        Ok(Self { labels, fields })
    }

    pub fn matches(&self, obj: &Value) -> bool {
        // Most lists and watches select everything: skip building the label map.
        if self.labels.is_empty() && self.fields.is_empty() {
            return true;
        }
        let labels: BTreeMap<String, String> = obj
            .pointer("/metadata/labels")
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_owned()))
                    .collect()
            })
            .unwrap_or_default();
        self.labels.matches(&labels) && self.fields.matches(&|field| field_value(obj, field))
    }
}

/// The value at a dotted field path (`spec.nodeName`), as text.
fn field_value(obj: &Value, field: &str) -> Option<String> {
    let pointer = format!("/{}", field.replace('.', "/"));
    match obj.pointer(&pointer)? {
        Value::String(s) => Some(s.clone()),
        Value::Null => None,
        other => Some(other.to_string()),
    }
}

/// A continue token: the revision the list is pinned to and the last key returned.
fn encode_continue(revision: i64, last_key: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(json!({"rv": revision, "start": last_key}).to_string())
}

fn decode_continue(token: &str) -> Result<(i64, String), StatusError> {
    let bad = || StatusError::bad_request("continue key is not valid");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| bad())?;
    let v: Value = serde_json::from_slice(&bytes).map_err(|_| bad())?;
    Ok((
        v.get("rv").and_then(Value::as_i64).ok_or_else(bad)?,
        v.get("start")
            .and_then(Value::as_str)
            .ok_or_else(bad)?
            .to_owned(),
    ))
}

/// One page of matching objects and what the list metadata needs.
pub struct Page {
    pub items: Vec<Value>,
    pub revision: i64,
    pub continue_token: Option<String>,
}

pub async fn list_objects(
    ctx: &Ctx,
    info: &ResourceInfo,
    namespace: Option<&str>,
    query: &Query,
) -> Result<Page, StatusError> {
    let selectors = Selectors::parse(query)?;
    let limit: usize = query.get("limit").and_then(|l| l.parse().ok()).unwrap_or(0);
    let (mut revision, mut start_after) = match query.get("continue").filter(|c| !c.is_empty()) {
        Some(token) => {
            let (rv, start) = decode_continue(token)?;
            (rv, Some(start))
        }
        None => (
            match (
                query.get("resourceVersion"),
                query.get("resourceVersionMatch"),
            ) {
                (Some(rv), Some("Exact")) => rv.parse().map_err(|_| {
                    StatusError::bad_request(format!("invalid resourceVersion {rv:?}"))
                })?,
                _ => 0,
            },
            None,
        ),
    };
    let prefix = objects::prefix(info, namespace);
    let mut items = Vec::new();
    let batch = if limit == 0 { 0 } else { limit.max(100) };
    loop {
        let page = ctx
            .store
            .list(
                &prefix,
                ListOptions {
                    revision,
                    start_after: start_after.clone(),
                    limit: batch,
                },
            )
            .await
            .map_err(|e| objects::store_error(e, info, ""))?;
        revision = page.revision;
        for kv in &page.items {
            let mut obj = objects::decode(info, kv)?;
            start_after = Some(kv.key.clone());
            if !selectors.matches(&obj) {
                continue;
            }
            obj["apiVersion"] = json!(info.api_version);
            obj["kind"] = json!(info.kind);
            items.push(obj);
            if limit > 0 && items.len() == limit {
                let more = page.more || page.items.last().is_some_and(|l| l.key != kv.key);
                let token = more.then(|| encode_continue(revision, &kv.key));
                return Ok(Page {
                    items,
                    revision,
                    continue_token: token,
                });
            }
        }
        if !page.more {
            return Ok(Page {
                items,
                revision,
                continue_token: None,
            });
        }
    }
}

pub async fn list(
    ctx: &Ctx,
    route: &ResourceRoute,
    query: &Query,
    headers: &HeaderMap,
) -> Result<Response<Body>, StatusError> {
    let info = route.info;
    let page = list_objects(ctx, info, route.namespace.as_deref(), query).await?;
    let mut metadata = json!({"resourceVersion": page.revision.to_string()});
    if let Some(token) = &page.continue_token {
        metadata["continue"] = json!(token);
    }
    Ok(match h::format(headers) {
        Format::Table => {
            let mut t = table::table(info, &page.items, SystemTime::now());
            t["metadata"] = metadata;
            h::json(StatusCode::OK, &t)
        }
        Format::Object => h::json(
            StatusCode::OK,
            &json!({
                "kind": info.list_kind,
                "apiVersion": info.api_version,
                "metadata": metadata,
                "items": page.items,
            }),
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continue_tokens_round_trip_and_garbage_is_refused() {
        let t = encode_continue(42, "/registry/core/pods/default/a");
        assert_eq!(
            decode_continue(&t).unwrap(),
            (42, "/registry/core/pods/default/a".into())
        );
        assert!(decode_continue("not a token").is_err());
    }

    #[test]
    fn field_selectors_read_any_dotted_path() {
        let pod = json!({"metadata": {"name": "a"}, "spec": {"nodeName": "n1"}, "status": {"phase": "Running"}});
        let q = Query::parse(Some(
            "fieldSelector=spec.nodeName%3Dn1,status.phase!%3DPending&labelSelector=",
        ));
        assert!(Selectors::parse(&q).unwrap().matches(&pod));
        let q = Query::parse(Some("fieldSelector=spec.nodeName%3Dn2"));
        assert!(!Selectors::parse(&q).unwrap().matches(&pod));
    }
}
