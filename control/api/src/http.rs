//! Request parsing and response building shared by every handler: query parameters, body
//! limits and formats, content negotiation, and `metav1.Status` errors.

use std::{collections::HashMap, convert::Infallible};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited, combinators::UnsyncBoxBody};
use hyper::body::Incoming;
use serde_json::Value;
use skiff_machinery::{response, status::StatusError};
use skiff_resources::wire;

/// The response body every handler returns: whole or streamed.
pub type Body = UnsyncBoxBody<Bytes, Infallible>;

/// Bodies above this are refused with 413: kube-apiserver's `--max-request-body-bytes`
/// default.
pub const MAX_BODY: usize = 3 * 1024 * 1024;

/// Query parameters (last value wins) and who is asking.
#[derive(Debug, Default, Clone)]
pub struct Query {
    params: HashMap<String, String>,
    /// The User-Agent's product, e.g. `kubectl`, the default field manager.
    agent: String,
    /// Who is asking, as authentication found (recorded where Kubernetes records it, as a
    /// `CertificateSigningRequest`'s requester).
    user: Option<skiff_machinery::user::UserInfo>,
}

impl Query {
    pub fn parse(query: Option<&str>) -> Self {
        Self {
            params: form_urlencoded::parse(query.unwrap_or("").as_bytes())
                .into_owned()
                .collect(),
            agent: String::new(),
            user: None,
        }
    }

    /// Records who is asking.
    #[must_use]
    pub fn with_user(mut self, user: skiff_machinery::user::UserInfo) -> Self {
        self.user = Some(user);
        self
    }

    /// Who is asking (`None` only for requests built without authentication, in tests).
    pub fn user(&self) -> Option<&skiff_machinery::user::UserInfo> {
        self.user.as_ref()
    }

    /// Records the caller's User-Agent, whose product name is the default field manager.
    #[must_use]
    pub fn with_agent(mut self, user_agent: &str) -> Self {
        user_agent
            .split('/')
            .next()
            .unwrap_or("")
            .trim()
            .clone_into(&mut self.agent);
        self
    }

    /// The field manager of a write: `fieldManager`, else the User-Agent product.
    pub fn manager(&self) -> &str {
        match self.get("fieldManager") {
            Some(m) if !m.is_empty() => m,
            _ if !self.agent.is_empty() => &self.agent,
            _ => "unknown",
        }
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.params.get(key).map(String::as_str)
    }

    pub fn flag(&self, key: &str) -> bool {
        matches!(self.get(key), Some("true" | "1"))
    }

    pub fn remove(&mut self, key: &str) {
        self.params.remove(key);
    }

    pub fn dry_run(&self) -> bool {
        self.get("dryRun") == Some("All")
    }
}

/// How the client wants objects back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// The objects themselves.
    Object,
    /// A `meta.k8s.io/v1` Table (kubectl get).
    Table,
}

pub fn format(headers: &HeaderMap) -> Format {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if accept.contains("as=Table") {
        Format::Table
    } else {
        Format::Object
    }
}

/// Reads the body, refusing more than `limit` bytes (the server's
/// `--max-request-body-bytes`).
pub async fn read_body(
    headers: &HeaderMap,
    body: Incoming,
    limit: usize,
) -> Result<Bytes, StatusError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large(limit));
    }
    match Limited::new(body, limit).collect().await {
        Ok(collected) => {
            let body = collected.to_bytes();
            crate::audit::keep_request_body(headers, &body);
            Ok(body)
        }
        Err(err) if err.is::<http_body_util::LengthLimitError>() => Err(too_large(limit)),
        Err(err) => Err(StatusError::bad_request(format!(
            "reading the request body: {err}"
        ))),
    }
}

/// kube's `NewRequestEntityTooLargeError` from its `limitedReadBody`.
fn too_large(limit: usize) -> StatusError {
    StatusError::too_large(format!("Request entity too large: limit is {limit}"))
}

fn content_type(headers: &HeaderMap) -> String {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// Decodes an object body sent as JSON or YAML.
pub fn decode_object(headers: &HeaderMap, body: &[u8]) -> Result<Value, StatusError> {
    let kind = content_type(headers);
    let value: Value = match kind.as_str() {
        "application/json" | "" | "*/*" => serde_json::from_slice(body)
            .map_err(|e| StatusError::bad_request(format!("error decoding the JSON body: {e}")))?,
        "application/yaml" | "application/x-yaml" | "text/yaml" => serde_yaml::from_slice(body)
            .map_err(|e| StatusError::bad_request(format!("error decoding the YAML body: {e}")))?,
        "application/vnd.kubernetes.protobuf" => {
            crate::protobuf::decode(body).map_err(|e| match e {
                crate::protobuf::ProtobufError::Kind(_)
                | crate::protobuf::ProtobufError::Field { .. } => {
                    StatusError::unsupported_media_type(&format!("{kind} ({e})"))
                }
                other => StatusError::bad_request(other.to_string()),
            })?
        }
        other => return Err(StatusError::unsupported_media_type(other)),
    };
    if !value.is_object() {
        return Err(StatusError::bad_request(
            "the request body must be a JSON object",
        ));
    }
    Ok(value)
}

/// The patch type named by the Content-Type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchType {
    Json,
    Merge,
    Strategic,
    Apply,
}

pub fn patch_type(headers: &HeaderMap) -> Result<PatchType, StatusError> {
    match content_type(headers).as_str() {
        "application/json-patch+json" => Ok(PatchType::Json),
        "application/merge-patch+json" => Ok(PatchType::Merge),
        "application/strategic-merge-patch+json" => Ok(PatchType::Strategic),
        "application/apply-patch+yaml" | "application/apply-patch+json" => Ok(PatchType::Apply),
        other => Err(StatusError::unsupported_media_type(other)),
    }
}

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed_unsync()
}

/// A JSON answer, written as the Go apiserver writes it ([`skiff_resources::wire`]).
pub fn json(code: StatusCode, value: &Value) -> Response<Body> {
    json_bytes(code, wire::encode(value))
}

/// A JSON answer already encoded.
pub fn json_bytes(code: StatusCode, bytes: Vec<u8>) -> Response<Body> {
    json_body(code, full(bytes))
}

/// A JSON answer as a body (streamed, or already encoded).
pub fn json_body(code: StatusCode, body: Body) -> Response<Body> {
    response::typed(code, response::JSON, body)
}

pub fn text(code: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    response::typed(code, response::TEXT, full(body))
}

pub fn error(err: &StatusError) -> Response<Body> {
    json(err.http_status(), &err.to_json())
}

/// Adds `Warning: 299 - "..."` headers, as the Go apiserver reports unknown fields.
pub fn with_warnings(mut resp: Response<Body>, warnings: &[String]) -> Response<Body> {
    for w in warnings {
        let escaped = w.replace('\\', "\\\\").replace('"', "\\\"");
        if let Ok(v) = HeaderValue::from_str(&format!("299 - \"{escaped}\"")) {
            resp.headers_mut().append(header::WARNING, v);
        }
    }
    resp
}
