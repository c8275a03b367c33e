//! GET of one object and LIST with selectors, paging (`limit`/`continue`) and tables.

use std::{collections::BTreeMap, sync::Arc, time::SystemTime};

use base64::Engine;
use bytes::Bytes;
use http::{HeaderMap, Response, StatusCode};
use serde_json::{Value, json};
use skiff_machinery::{
    selector::{FieldSelector, LabelSelector},
    status::StatusError,
};
use skiff_resources::{ResourceInfo, table, wire};
use skiff_store::ListOptions;

use crate::{
    cache::{Cached, Read, Snapshot},
    ctx::Ctx,
    http::{self as h, Body, Format, Query},
    objects,
    route::ResourceRoute,
};

pub async fn get(
    ctx: &Ctx,
    route: &ResourceRoute,
    query: &Query,
    headers: &HeaderMap,
) -> Result<Response<Body>, StatusError> {
    let format = h::format(headers);
    if let Some(cached) = get_cached(ctx, route, query).await {
        let obj = cached.ok_or_else(|| {
            let info = route.info;
            StatusError::not_found(info.group, info.plural, route.name.as_deref().unwrap_or(""))
        })?;
        if format == Format::Object {
            let mut bytes = Vec::with_capacity(obj.json.len() + 1);
            bytes.extend_from_slice(&obj.json);
            bytes.push(b'\n');
            return Ok(h::json_bytes(StatusCode::OK, bytes));
        }
    }
    let obj = fetch(ctx, route).await?.0;
    Ok(match format {
        Format::Table => {
            let mut t = table::table(route.info, std::slice::from_ref(&obj), SystemTime::now());
            t["metadata"]["resourceVersion"] = obj["metadata"]["resourceVersion"].clone();
            h::json(StatusCode::OK, &t)
        }
        Format::Object => h::json(StatusCode::OK, &obj),
    })
}

/// The object named by the route from the watch cache: `None` when the store must answer,
/// `Some(None)` when it does not exist.
async fn get_cached(
    ctx: &Ctx,
    route: &ResourceRoute,
    query: &Query,
) -> Option<Option<Arc<Cached>>> {
    let cache = ctx.cache.cache(route.info)?;
    if !fresh_enough(ctx, query).await? {
        return None;
    }
    let key = objects::key(
        route.info,
        route.namespace.as_deref(),
        route.name.as_deref().unwrap_or(""),
    );
    cache.get(&key)
}

/// Whether the cache, once it has what the request's `resourceVersion` asks for, may serve
/// it: `Some(false)` for an exact revision, `None` when it could not catch up in time.
async fn fresh_enough(ctx: &Ctx, query: &Query) -> Option<bool> {
    if query.get("resourceVersionMatch") == Some("Exact") {
        return Some(false);
    }
    match query.get("resourceVersion").unwrap_or("") {
        // Consistent: at least the store's current revision.
        "" => ctx.cache.consistent_revision().await.map(|_| true),
        // Any revision.
        "0" => Some(true),
        rv => match rv.parse() {
            Ok(rv) => ctx.cache.delivered(rv).await.then_some(true),
            Err(_) => Some(false),
        },
    }
}

/// The object under `key` as the watch cache holds it now, with its revision: `None` when
/// the cache does not hold it (still loading, or no such object).
pub fn cached_object(ctx: &Ctx, info: &'static ResourceInfo, key: &str) -> Option<(Value, i64)> {
    let obj = cached_entry(ctx, info, key)?.value();
    let revision = objects::resource_version(&obj).ok().flatten()?;
    Some((obj, revision))
}

/// The watch cache's entry under `key`, when the cache has loaded and holds it.
fn cached_entry(ctx: &Ctx, info: &'static ResourceInfo, key: &str) -> Option<Arc<Cached>> {
    ctx.cache.cache(info)?.get(key).flatten()
}

/// The revision the watch cache has delivered, when that is every revision the store has
/// committed; `None` when the cache is behind. Does not wait. The store's revision is read
/// first, so whatever the cache holds afterwards is at least as fresh as a store read made
/// at this moment.
async fn caught_up(ctx: &Ctx) -> Option<i64> {
    let current = ctx.store.current_revision().await.unwrap_or(i64::MAX);
    let seen = ctx.cache.seen_now();
    (seen >= current).then_some(seen)
}

/// Another object an admission step reads (a namespace, a service account): from the watch
/// cache when the cache has delivered every committed revision, else from the store, so the
/// answer is as fresh as a store read (a namespace deleted a moment ago refuses new objects
/// at once). The check does not wait; on the embedded store it costs no read transaction. A
/// miss (a cache still loading, or no such object) asks the store, so a 404 is always the
/// store's answer.
///
/// The object is shared, not copied: a cached object is decoded once for all its readers
/// and the decoded form kept beside it ([`Cached::shared`]), so only small kinds are read
/// here.
pub async fn fetch_recent(
    ctx: &Ctx,
    info: &'static ResourceInfo,
    namespace: Option<&str>,
    name: &str,
) -> Result<(Arc<Value>, i64), StatusError> {
    if caught_up(ctx).await.is_some()
        && let Some(found) = cached_entry(ctx, info, &objects::key(info, namespace, name))
    {
        let obj = found.shared();
        if let Ok(Some(revision)) = objects::resource_version(&obj) {
            return Ok((obj, revision));
        }
    }
    let (obj, revision) = objects::fetch(ctx.store.as_ref(), info, namespace, name).await?;
    Ok((Arc::new(obj), revision))
}

/// All of a namespace's objects of one kind, for an admission check, as fresh as a store
/// read without waiting, as [`fetch_recent`] is: from the watch cache when it has delivered
/// every committed revision, else from the store. A consistent list would wait for the
/// cache's feed, adding up to a commit's delay to every create it checks.
pub async fn list_recent(
    ctx: &Ctx,
    info: &'static ResourceInfo,
    namespace: Option<&str>,
) -> Result<Vec<Value>, StatusError> {
    let prefix = objects::prefix(info, namespace);
    if let Some(seen) = caught_up(ctx).await
        && let Some(cache) = ctx.cache.cache(info)
    {
        let read = Read {
            prefix: &prefix,
            start_after: None,
            limit: 0,
            matches: &|_| true,
        };
        if let Some(snapshot) = cache.list(&read, seen) {
            return Ok(snapshot.items.iter().map(|c| c.value()).collect());
        }
    }
    let everything = Selectors::parse(&Query::default())?;
    Ok(
        list_from_store(ctx, info, namespace, &Query::default(), &everything, 0)
            .await?
            .items,
    )
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
        self.labels.matches(&labels)
            && self
                .fields
                .matches(&|field| objects::field_value(obj, field))
    }

    /// Whether a cached object is selected: read from the labels and fields the cache keeps,
    /// the object decoded (once) only for a field it does not keep.
    pub fn matches_cached(&self, cached: &Cached) -> bool {
        if self.labels.is_empty() && self.fields.is_empty() {
            return true;
        }
        if !self.labels.is_empty() && !self.labels.matches(&cached.labels()) {
            return false;
        }
        let decoded = std::cell::OnceCell::new();
        self.fields.matches(&|field| {
            cached.field(field).unwrap_or_else(|| {
                objects::field_value(decoded.get_or_init(|| cached.value()), field)
            })
        })
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
    info: &'static ResourceInfo,
    namespace: Option<&str>,
    query: &Query,
) -> Result<Page, StatusError> {
    match list_page(ctx, info, namespace, query).await? {
        Listed::Store(page) => Ok(page),
        Listed::Cache(snapshot) => Ok(page_of(&snapshot)),
    }
}

/// A page of the cache's objects, as values (copied from the cache).
fn page_of(snapshot: &Snapshot) -> Page {
    Page {
        continue_token: snapshot
            .more_after
            .as_deref()
            .map(|key| encode_continue(snapshot.revision, key)),
        revision: snapshot.revision,
        items: snapshot.items.iter().map(|c| c.value()).collect(),
    }
}

/// A list page as read: from the store (decoded) or from the cache (shared, encoded).
pub(super) enum Listed {
    Store(Page),
    Cache(Snapshot),
}

pub(super) async fn list_page(
    ctx: &Ctx,
    info: &'static ResourceInfo,
    namespace: Option<&str>,
    query: &Query,
) -> Result<Listed, StatusError> {
    let selectors = Selectors::parse(query)?;
    let limit: usize = query.get("limit").and_then(|l| l.parse().ok()).unwrap_or(0);
    if let Some(snapshot) = list_cached(ctx, info, namespace, query, &selectors, limit).await? {
        return Ok(Listed::Cache(snapshot));
    }
    list_from_store(ctx, info, namespace, query, &selectors, limit)
        .await
        .map(Listed::Store)
}

/// The page from the watch cache, or `None` when the store must serve it.
async fn list_cached(
    ctx: &Ctx,
    info: &'static ResourceInfo,
    namespace: Option<&str>,
    query: &Query,
    selectors: &Selectors,
    limit: usize,
) -> Result<Option<Snapshot>, StatusError> {
    let Some(cache) = ctx.cache.cache(info) else {
        return Ok(None);
    };
    let prefix = objects::prefix(info, namespace);
    let matches = |obj: &Cached| selectors.matches_cached(obj);
    if let Some(token) = query.get("continue").filter(|c| !c.is_empty()) {
        let (revision, start) = decode_continue(token)?;
        let read = Read {
            prefix: &prefix,
            start_after: Some(&start),
            limit,
            matches: &matches,
        };
        // Only while the resource is unchanged since the first page; else the store's
        // history serves the pinned revision.
        return Ok(cache.list_at(&read, revision, ctx.cache.seen_now()));
    }
    if fresh_enough(ctx, query).await != Some(true) {
        return Ok(None);
    }
    let read = Read {
        prefix: &prefix,
        start_after: None,
        limit,
        matches: &matches,
    };
    Ok(cache.list(&read, ctx.cache.seen_now()))
}

async fn list_from_store(
    ctx: &Ctx,
    info: &ResourceInfo,
    namespace: Option<&str>,
    query: &Query,
    selectors: &Selectors,
    limit: usize,
) -> Result<Page, StatusError> {
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
    let format = h::format(headers);
    let page = match list_page(ctx, info, route.namespace.as_deref(), query).await? {
        Listed::Cache(snapshot) if format == Format::Object => {
            return Ok(h::json_body(StatusCode::OK, encode_list(info, snapshot)));
        }
        Listed::Cache(snapshot) => page_of(&snapshot),
        Listed::Store(page) => page,
    };
    let mut metadata = json!({"resourceVersion": page.revision.to_string()});
    if let Some(token) = &page.continue_token {
        metadata["continue"] = json!(token);
    }
    Ok(match format {
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

/// The list of `snapshot`'s objects as the Go apiserver writes it, from each object's
/// encoding kept in the cache: the list without items, then the items spliced in, streamed
/// (see [`ListBody`]).
fn encode_list(info: &ResourceInfo, snapshot: Snapshot) -> Body {
    let mut metadata = json!({"resourceVersion": snapshot.revision.to_string()});
    if let Some(key) = &snapshot.more_after {
        metadata["continue"] = json!(encode_continue(snapshot.revision, key));
    }
    let empty = wire::encode(&json!({
        "kind": info.list_kind,
        "apiVersion": info.api_version,
        "metadata": metadata,
        "items": [],
    }));
    let Some(head) = empty.strip_suffix(b"]}\n") else {
        // Not the shape expected: encode it whole.
        let items: Vec<Value> = snapshot.items.iter().map(|c| c.value()).collect();
        return h::full(wire::encode(&json!({
            "kind": info.list_kind,
            "apiVersion": info.api_version,
            "metadata": metadata,
            "items": items,
        })));
    };
    http_body_util::BodyExt::boxed_unsync(ListBody::new(
        Bytes::copy_from_slice(head),
        snapshot.items,
    ))
}

/// Bytes of encoded items per frame of a [`ListBody`].
const LIST_FRAME: usize = 64 * 1024;

/// A list answer that copies the cached items into frames of [`LIST_FRAME`] bytes as the
/// connection takes them. Copying a list of 10,000 pods (17 MB) into one buffer before
/// sending a byte held the whole answer back by the copy and its page faults, and cost a
/// buffer the size of the list per concurrent reader. The length is known up front, so the
/// answer still carries a `Content-Length`.
struct ListBody {
    /// The list up to and including `[`, until sent.
    head: Option<Bytes>,
    items: std::vec::IntoIter<Arc<Cached>>,
    /// No item sent yet (the next one needs no comma).
    first: bool,
    /// The closing `]}` and newline are sent.
    done: bool,
    /// Bytes not yet handed out.
    remaining: u64,
}

impl ListBody {
    /// `head` is the list up to and including `[`; the items, commas between them and
    /// the closing `]}` and newline follow.
    fn new(head: Bytes, items: Vec<Arc<Cached>>) -> Self {
        let items_len: usize =
            items.iter().map(|c| c.json.len()).sum::<usize>() + items.len().saturating_sub(1);
        Self {
            remaining: (head.len() + items_len + 3) as u64,
            head: Some(head),
            items: items.into_iter(),
            first: true,
            done: false,
        }
    }
}

impl hyper::body::Body for ListBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        let chunk = if let Some(head) = this.head.take() {
            head
        } else if this.done {
            return std::task::Poll::Ready(None);
        } else {
            let mut chunk = Vec::with_capacity(LIST_FRAME + 4 * 1024);
            while chunk.len() < LIST_FRAME {
                let Some(item) = this.items.next() else {
                    chunk.extend_from_slice(b"]}\n");
                    this.done = true;
                    break;
                };
                if !std::mem::take(&mut this.first) {
                    chunk.push(b',');
                }
                chunk.extend_from_slice(&item.json);
            }
            chunk.into()
        };
        this.remaining = this.remaining.saturating_sub(chunk.len() as u64);
        std::task::Poll::Ready(Some(Ok(hyper::body::Frame::data(chunk))))
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.head.is_none()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        hyper::body::SizeHint::with_exact(self.remaining)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::Seen;

    #[test]
    fn a_cached_object_is_selected_as_its_decoded_value_is() {
        let obj = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web", "namespace": "default", "labels": {"app": "web"}},
            "spec": {"nodeName": "n1", "priority": 5},
            "status": {"phase": "Running"}});
        let cached = Cached::of(&obj, Seen::Modified);
        for selector in [
            "labelSelector=app%3Dweb",
            "labelSelector=app%3Ddb",
            "labelSelector=tier",
            "fieldSelector=spec.nodeName%3Dn1",
            "fieldSelector=spec.nodeName%3Dn2",
            "fieldSelector=spec.nodeName%3D",
            "fieldSelector=status.nominatedNodeName%3D",
            "fieldSelector=spec.priority%3D5",
            "fieldSelector=spec.priority%21%3D5",
            "fieldSelector=metadata.name%3Dweb,status.phase%21%3DPending",
            "labelSelector=app%3Dweb&fieldSelector=spec.nodeName%3Dn2",
        ] {
            let selectors = Selectors::parse(&Query::parse(Some(selector))).unwrap();
            assert_eq!(
                selectors.matches_cached(&cached),
                selectors.matches(&obj),
                "{selector}"
            );
        }
    }

    #[test]
    fn a_list_streamed_from_cached_items_is_the_list_encoded_whole() {
        let info = skiff_resources::by_kind("v1", "ConfigMap").unwrap();
        // None, two, and enough for several frames.
        for count in [0, 2, 300] {
            let items: Vec<Arc<Cached>> = (0..count)
                .map(|i| {
                    let obj = json!({"apiVersion": "v1", "kind": "ConfigMap",
                        "metadata": {"name": format!("cm-{i}"), "namespace": "default",
                                     "resourceVersion": "4"},
                        "data": {"k": "<&>".repeat(300)}});
                    Arc::new(Cached::of(&obj, Seen::Added))
                })
                .collect();
            let values: Vec<Value> = items.iter().map(|c| c.value()).collect();
            let snapshot = Snapshot {
                items,
                revision: 7,
                more_after: Some("/registry/core/configmaps/default/b".into()),
            };
            let whole = wire::encode(&json!({
                "kind": "ConfigMapList",
                "apiVersion": "v1",
                "metadata": {"resourceVersion": "7",
                    "continue": encode_continue(7, "/registry/core/configmaps/default/b")},
                "items": values,
            }));
            let body = encode_list(info, snapshot);
            assert_eq!(
                hyper::body::Body::size_hint(&body).exact(),
                Some(whole.len() as u64),
                "the length is announced up front ({count} items)"
            );
            let streamed = futures::executor::block_on(http_body_util::BodyExt::collect(body))
                .unwrap()
                .to_bytes();
            assert_eq!(
                String::from_utf8(streamed.to_vec()).unwrap(),
                String::from_utf8(whole).unwrap(),
                "{count} items"
            );
        }
    }

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
