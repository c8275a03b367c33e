//! The audit log: every request the policy selects becomes audit.k8s.io/v1 `Event` JSON
//! lines, written by a thread of its own so that a slow disk never holds a request up.

mod policy;
#[cfg(test)]
mod tests;

use std::{
    cell::RefCell,
    io::Write as _,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::mpsc::{Receiver, SyncSender, TrySendError},
};

use bytes::Bytes;
use http::{HeaderMap, Response, header};
use http_body_util::BodyExt as _;
pub use policy::{Decision, Level, Policy, PolicyError, Stage};
use serde_json::{Map, Value, json};
use skiff_machinery::user::UserInfo;

use crate::{authz::attributes::Attributes, http::Body};

/// How many events may wait for the writer before new ones are dropped (and counted).
const QUEUE: usize = 10_000;

tokio::task_local! {
    /// The request body read by the verb, kept for `Request` and `RequestResponse` levels.
    static REQUEST_BODY: RefCell<Option<(HeaderMap, Bytes)>>;
}

/// Keeps `body` as the current request's object if the audit level asks for it.
pub fn keep_request_body(headers: &HeaderMap, body: &Bytes) {
    let _ =
        REQUEST_BODY.try_with(|slot| *slot.borrow_mut() = Some((headers.clone(), body.clone())));
}

/// Why the audit log cannot start.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The log file could not be opened.
    #[error("opening the audit log {path}: {source}")]
    Open {
        /// The file.
        path: String,
        /// The failure.
        #[source]
        source: std::io::Error,
    },
    /// The writer thread could not start.
    #[error("starting the audit writer: {0}")]
    Thread(#[source] std::io::Error),
}

/// The policy and the queue to the writer thread.
#[derive(Debug)]
pub struct Auditor {
    policy: Policy,
    queue: SyncSender<Vec<u8>>,
}

impl Auditor {
    /// Starts writing to `path` (`-` for standard output), appending.
    ///
    /// # Errors
    /// When the file cannot be opened.
    pub fn start(path: &Path, policy: Policy) -> Result<Self, AuditError> {
        let out: Box<dyn std::io::Write + Send> = if path == Path::new("-") {
            Box::new(std::io::stdout())
        } else {
            Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|source| AuditError::Open {
                        path: path.display().to_string(),
                        source,
                    })?,
            )
        };
        let (queue, events) = std::sync::mpsc::sync_channel(QUEUE);
        let path: PathBuf = path.to_owned();
        std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || write_forever(&events, out, &path))
            .map_err(AuditError::Thread)?;
        Ok(Self { policy, queue })
    }

    fn send(&self, event: &Value) {
        let mut line = serde_json::to_vec(event).unwrap_or_default();
        line.push(b'\n');
        match self.queue.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                tracing::warn!("audit queue full: event dropped");
            }
            Err(TrySendError::Disconnected(_)) => {
                tracing::warn!("audit writer gone: event dropped");
            }
        }
    }

    /// Starts auditing one request: `None` when the policy says `None`. Writes the
    /// `RequestReceived` event unless omitted.
    #[must_use]
    pub fn begin(
        &self,
        attrs: &Attributes,
        authenticated: &UserInfo,
        request: &RequestMeta,
    ) -> Option<Entry> {
        let entry = self.entry(attrs, authenticated, request)?;
        entry.write(self, Stage::RequestReceived);
        Some(entry)
    }

    /// Records a request authentication refused, as kube's `WithFailedAuthenticationAudit`:
    /// one `ResponseStarted` event with an empty user, code 401 and the methods tried
    /// (`attrs` are the request's, for no one).
    pub fn failed_authentication(&self, attrs: &Attributes, request: &RequestMeta, tried: &[&str]) {
        let Some(mut entry) = self.entry(attrs, &attrs.user, request) else {
            return;
        };
        let message = if tried.is_empty() {
            "Authentication failed, no credentials provided".to_owned()
        } else {
            format!("Authentication failed, attempted: {}", tried.join(", "))
        };
        entry.event["user"] = json!({});
        entry.event["responseStatus"] = json!({"metadata": {}, "code": 401, "message": message});
        entry.write(self, Stage::ResponseStarted);
    }

    fn entry(
        &self,
        attrs: &Attributes,
        authenticated: &UserInfo,
        request: &RequestMeta,
    ) -> Option<Entry> {
        let decision = self.policy.decide(attrs);
        if decision.level == Level::None {
            return None;
        }
        let mut event = json!({
            "kind": "Event",
            "apiVersion": "audit.k8s.io/v1",
            "level": decision.level.as_str(),
            "auditID": uuid::Uuid::new_v4().to_string(),
            "requestURI": request.uri,
            "verb": attrs.verb,
            "user": user_json(authenticated),
            "sourceIPs": [request.source.ip().to_string()],
            "requestReceivedTimestamp": request.received,
        });
        if !request.agent.is_empty() {
            event["userAgent"] = json!(request.agent);
        }
        if attrs.user != *authenticated {
            event["impersonatedUser"] = user_json(&attrs.user);
        }
        if let Some(r) = &attrs.resource {
            let mut object = Map::new();
            for (field, value) in [
                ("resource", &r.resource),
                ("namespace", &r.namespace),
                ("name", &r.name),
                ("apiGroup", &r.group),
                ("apiVersion", &r.version),
                ("subresource", &r.subresource),
            ] {
                if !value.is_empty() || field == "apiGroup" && !r.resource.is_empty() {
                    object.insert(field.into(), json!(value));
                }
            }
            event["objectRef"] = Value::Object(object);
        }
        Some(Entry { event, decision })
    }
}

/// What the server knows of a request before routing it.
#[derive(Debug, Clone)]
pub struct RequestMeta {
    /// Path and query.
    pub uri: String,
    /// The peer's address.
    pub source: SocketAddr,
    /// `User-Agent`.
    pub agent: String,
    /// When it arrived, as audit timestamps are written.
    pub received: String,
}

impl RequestMeta {
    /// The request's audit facts, received now.
    #[must_use]
    pub fn new(uri: &http::Uri, headers: &HeaderMap, source: SocketAddr) -> Self {
        Self {
            uri: uri
                .path_and_query()
                .map_or_else(|| uri.path().to_owned(), ToString::to_string),
            source,
            agent: headers
                .get(header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned(),
            received: timestamp(),
        }
    }
}

/// One request being audited.
#[derive(Debug)]
pub struct Entry {
    event: Value,
    decision: Decision,
}

impl Entry {
    fn write(&self, auditor: &Auditor, stage: Stage) {
        if self.decision.omit_stages.contains(&stage) {
            return;
        }
        let mut event = self.event.clone();
        event["stage"] = json!(stage.as_str());
        event["stageTimestamp"] = json!(timestamp());
        auditor.send(&event);
    }

    /// Runs `handler` keeping the request body when the level asks for it.
    pub async fn run<T>(&mut self, handler: impl Future<Output = T>) -> T {
        if self.decision.level < Level::Request {
            return handler.await;
        }
        let (out, body) = REQUEST_BODY
            .scope(RefCell::new(None), async {
                let out = handler.await;
                (out, REQUEST_BODY.with(|slot| slot.borrow_mut().take()))
            })
            .await;
        // Objects in any encoding the server reads (kubectl's typed commands send
        // protobuf), patches as the JSON they are.
        let object = body.and_then(|(headers, body)| {
            crate::http::decode_object(&headers, &body)
                .ok()
                .or_else(|| object(&body))
        });
        if let Some(object) = object {
            self.event["requestObject"] = object;
        }
        out
    }

    /// Writes the `ResponseComplete` event for `response`: a failure's Status reason and
    /// message at every level, the object at `RequestResponse`, from complete JSON bodies
    /// only (never a watch or log stream).
    pub async fn finish(mut self, auditor: &Auditor, response: Response<Body>) -> Response<Body> {
        let code = response.status().as_u16();
        self.event["responseStatus"] = json!({"metadata": {}, "code": code});
        let is_json = response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"));
        let sized = hyper::body::Body::size_hint(response.body())
            .exact()
            .is_some();
        let wanted = self.decision.level == Level::RequestResponse || code >= 300;
        let response = if wanted && is_json && sized {
            let (parts, body) = response.into_parts();
            let bytes = body
                .collect()
                .await
                .map(http_body_util::Collected::to_bytes)
                .unwrap_or_default();
            if let Some(object) = object(&bytes) {
                self.describe_response(object);
            }
            Response::from_parts(parts, crate::http::full(bytes))
        } else {
            response
        };
        self.write(auditor, Stage::ResponseComplete);
        response
    }

    fn describe_response(&mut self, object: Value) {
        if object["kind"] == "Status" {
            for field in ["status", "reason", "message"] {
                if let Some(value) = object.get(field) {
                    self.event["responseStatus"][field] = value.clone();
                }
            }
        }
        // As kube does, a create names its object from the answer.
        if let Some(name) = object.pointer("/metadata/name")
            && self.event["objectRef"].is_object()
            && self.event["objectRef"].get("name").is_none()
            && object["kind"] != "Status"
        {
            self.event["objectRef"]["name"] = name.clone();
        }
        if self.decision.level == Level::RequestResponse {
            self.event["responseObject"] = object;
        }
    }
}

/// A body as the JSON an event carries (JSON or YAML bodies; others are left out).
fn object(body: &[u8]) -> Option<Value> {
    serde_json::from_slice(body)
        .ok()
        .or_else(|| serde_yaml::from_slice(body).ok())
        .filter(Value::is_object)
}

fn user_json(user: &UserInfo) -> Value {
    let mut out = json!({"username": user.name});
    if !user.uid.is_empty() {
        out["uid"] = json!(user.uid);
    }
    if !user.groups.is_empty() {
        out["groups"] = json!(user.groups);
    }
    if !user.extra.is_empty() {
        out["extra"] = json!(user.extra);
    }
    out
}

/// RFC 3339 with microseconds, as kube writes audit timestamps.
fn timestamp() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%S%.6fZ")
        .to_string()
}

/// Writes queued lines, flushing whenever the queue is drained; ends when the auditor is
/// dropped.
fn write_forever(events: &Receiver<Vec<u8>>, mut out: Box<dyn std::io::Write + Send>, path: &Path) {
    while let Ok(line) = events.recv() {
        let mut result = out.write_all(&line);
        while let Ok(line) = events.try_recv() {
            result = result.and_then(|()| out.write_all(&line));
        }
        if let Err(err) = result.and_then(|()| out.flush()) {
            tracing::warn!(path = %path.display(), ?err, "writing the audit log failed");
        }
    }
}
