//! WATCH: a chunked stream of `{"type","object"}` lines from a resourceVersion on, with
//! selectors applied as transitions (an object leaving the selection is DELETED for the
//! watcher), bookmarks, timeouts, tables, and 410 Expired for compacted history.

use std::{collections::VecDeque, convert::Infallible, pin::Pin, sync::Arc, time::Duration};

use bytes::Bytes;
use futures::StreamExt;
use http::{HeaderMap, HeaderValue, Response, header};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use serde_json::{Value, json};
use skiff_machinery::status::StatusError;
use skiff_resources::{
    ResourceInfo, table,
    wire::{self, Untyped},
};
use skiff_store::{EventKind, StoreError, WatchStream};

use super::read::{self, Selectors};
use crate::{
    cache::{CachedEvent, Gap, ResourceCache, Seen, watch_line},
    ctx::Ctx,
    http::{self as h, Body, Format, Query},
    objects,
    route::ResourceRoute,
};

const DEFAULT_TIMEOUT: Duration = Duration::from_mins(30);
const BOOKMARK_EVERY: Duration = Duration::from_secs(5);

/// Where a watch's events come from.
enum Source {
    Store(WatchStream),
    Cache(Cursor),
}

/// A watcher's place in a resource's watch cache.
struct Cursor {
    cache: Arc<ResourceCache>,
    /// The revision of the last event taken from the cache.
    last: i64,
    changed: tokio::sync::watch::Receiver<u64>,
    queue: VecDeque<Arc<CachedEvent>>,
}

impl Cursor {
    fn new(cache: Arc<ResourceCache>, from: i64) -> Self {
        Self {
            changed: cache.subscribe(),
            cache,
            last: from,
            queue: VecDeque::new(),
        }
    }

    /// The next event; `None` once the cache is dropped (the client watches again).
    async fn next(&mut self) -> Option<Result<Arc<CachedEvent>, Gap>> {
        loop {
            if let Some(event) = self.queue.pop_front() {
                return Some(Ok(event));
            }
            self.changed.borrow_and_update();
            match self.cache.events_after(self.last) {
                Ok(events) => match events.last() {
                    Some(last) => {
                        self.last = last.revision;
                        self.queue.extend(events);
                    }
                    None => self.changed.changed().await.ok()?,
                },
                Err(Gap::Closed) => return None,
                Err(gap) => return Some(Err(gap)),
            }
        }
    }
}

/// One event from either source.
enum Next {
    Store(Result<skiff_store::Event, StoreError>),
    Cache(Result<Arc<CachedEvent>, Gap>),
}

impl Source {
    async fn next(&mut self) -> Option<Next> {
        match self {
            Self::Store(events) => events.next().await.map(Next::Store),
            Self::Cache(cursor) => cursor.next().await.map(Next::Cache),
        }
    }
}

struct State {
    info: &'static ResourceInfo,
    events: Option<Source>,
    selectors: Selectors,
    format: Format,
    pending: VecDeque<Bytes>,
    /// The watch's end (`timeoutSeconds`): one timer for the whole watch, since a timer
    /// made per event would be registered and removed once per event and watcher.
    deadline: Pin<Box<tokio::time::Sleep>>,
    bookmarks: Option<tokio::time::Interval>,
    last_rv: i64,
    sent_columns: bool,
}

impl State {
    fn line(&mut self, kind: &str, mut object: Value) {
        if self.format == Format::Table && kind != "BOOKMARK" && kind != "ERROR" {
            let mut t = table::table(
                self.info,
                std::slice::from_ref(&object),
                std::time::SystemTime::now(),
            );
            if self.sent_columns {
                t["columnDefinitions"] = json!([]);
            }
            self.sent_columns = true;
            t["metadata"]["resourceVersion"] = object["metadata"]["resourceVersion"].clone();
            object = t;
        }
        let line = wire::encode_as(
            &json!({"type": kind, "object": object}),
            Untyped::WatchEvent,
        );
        self.pending.push_back(Bytes::from(line));
    }

    fn error(&mut self, err: &StatusError) {
        self.line("ERROR", err.to_json());
        self.events = None;
    }

    fn cached(&mut self, event: Result<Arc<CachedEvent>, Gap>) {
        let Ok(event) = event else {
            let err = StatusError::gone(format!("too old resource version: {}", self.last_rv));
            return self.error(&err);
        };
        self.last_rv = event.revision;
        let now = self.selectors.matches_cached(&event.obj);
        let before = event
            .prev
            .as_ref()
            .map(|p| self.selectors.matches_cached(p));
        let Some(seen) = transition(event.kind, before, now) else {
            return;
        };
        if self.format == Format::Object {
            self.pending.push_back(event.line(seen));
        } else {
            self.line(seen.name(), event.obj.value());
        }
    }

    fn event(&mut self, event: Result<skiff_store::Event, StoreError>) {
        let event = match event {
            Ok(e) => e,
            Err(StoreError::Compacted { requested, .. }) => {
                let err = StatusError::gone(format!("too old resource version: {requested}"));
                return self.error(&err);
            }
            Err(err) => return self.error(&StatusError::gone(err.to_string())),
        };
        self.last_rv = event.kv.mod_revision;
        let Ok(obj) = objects::decode(self.info, &event.kv) else {
            return;
        };
        let now = self.selectors.matches(&obj);
        let before = event
            .prev
            .as_ref()
            .and_then(|p| objects::decode(self.info, p).ok())
            .map(|p| self.selectors.matches(&p));
        let Some(seen) = transition(event.kind, before, now) else {
            return;
        };
        self.line(seen.name(), obj);
    }
}

/// What a watcher sees of a change, given whether the object was selected before (`None`:
/// it did not exist) and is now.
fn transition(kind: EventKind, before: Option<bool>, now: bool) -> Option<Seen> {
    match (kind, before, now) {
        // Deleted, or changed so that it left the selection.
        (EventKind::Delete, Some(true), _) | (EventKind::Put, Some(true), false) => {
            Some(Seen::Deleted)
        }
        (EventKind::Put, None | Some(false), true) => Some(Seen::Added),
        (EventKind::Put, Some(true), true) => Some(Seen::Modified),
        _ => None,
    }
}

pub async fn watch(
    ctx: &Ctx,
    route: &ResourceRoute,
    query: &Query,
    headers: &HeaderMap,
) -> Result<Response<Body>, StatusError> {
    let info = route.info;
    let selectors = Selectors::parse(query)?;
    let mut state = State {
        info,
        events: None,
        selectors,
        format: h::format(headers),
        pending: VecDeque::new(),
        deadline: Box::pin(tokio::time::sleep(
            query
                .get("timeoutSeconds")
                .and_then(|t| t.parse().ok())
                .map_or(DEFAULT_TIMEOUT, Duration::from_secs),
        )),
        bookmarks: query.flag("allowWatchBookmarks").then(|| {
            let mut i = tokio::time::interval(BOOKMARK_EVERY);
            i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            i
        }),
        last_rv: 0,
        sent_columns: false,
    };
    let from = if let Some(rv) = query
        .get("resourceVersion")
        .filter(|rv| !rv.is_empty() && *rv != "0")
    {
        rv.parse::<i64>()
            .map_err(|_| StatusError::bad_request(format!("invalid resourceVersion {rv:?}")))?
    } else {
        // No starting point: the current state as ADDED events, then changes.
        let mut list_query = query.clone();
        list_query.remove("limit");
        list_query.remove("continue");
        match read::list_page(ctx, info, route.namespace.as_deref(), &list_query).await? {
            read::Listed::Store(page) => {
                for obj in page.items {
                    state.line("ADDED", obj);
                }
                page.revision
            }
            read::Listed::Cache(snapshot) => {
                for obj in &snapshot.items {
                    if state.format == Format::Object {
                        state.pending.push_back(watch_line("ADDED", &obj.json));
                    } else {
                        state.line("ADDED", obj.value());
                    }
                }
                snapshot.revision
            }
        }
    };
    state.last_rv = from;
    if let Some(cache) = ctx.cache.cache(info)
        && ctx.cache.delivered(from).await
        && cache.covers(from, ctx.cache.seen_now())
    {
        state.events = Some(Source::Cache(Cursor::new(cache, from)));
        return Ok(respond(state));
    }
    let prefix = objects::prefix(info, route.namespace.as_deref());
    match ctx.store.watch(&prefix, from).await {
        Ok(events) => state.events = Some(Source::Store(events)),
        Err(StoreError::Compacted { requested, .. }) => {
            state.error(&StatusError::gone(format!(
                "too old resource version: {requested}"
            )));
        }
        Err(err) => return Err(objects::store_error(err, info, "")),
    }
    Ok(respond(state))
}

/// The chunked answer that streams `state`'s lines.
fn respond(state: State) -> Response<Body> {
    let stream = futures::stream::unfold(state, |mut state| async move {
        loop {
            if let Some(line) = state.pending.pop_front() {
                return Some((Ok::<_, Infallible>(Frame::data(line)), state));
            }
            let events = state.events.as_mut()?;
            let bookmark = async {
                match state.bookmarks.as_mut() {
                    Some(i) => {
                        i.tick().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                event = events.next() => match event {
                    Some(Next::Store(event)) => state.event(event),
                    Some(Next::Cache(event)) => state.cached(event),
                    None => return None,
                },
                () = state.deadline.as_mut() => return None,
                () = bookmark => {
                    let object = json!({
                        "kind": state.info.kind,
                        "apiVersion": state.info.api_version,
                        "metadata": {"resourceVersion": state.last_rv.to_string()},
                    });
                    state.line("BOOKMARK", object);
                }
            }
        }
    });
    let mut resp = Response::new(StreamBody::new(stream).boxed_unsync());
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}
