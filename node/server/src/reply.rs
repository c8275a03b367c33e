//! Responses every route builds: the body type, `metav1.Status` errors the API server passes
//! on to clients, and query parsing with repeated keys (`command=a&command=b`).

use std::convert::Infallible;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Full, combinators::UnsyncBoxBody};
use serde_json::Value;
use skiff_machinery::{response, status::StatusError};

use super::BackendError;

/// A response body: whole or streamed.
pub type Body = UnsyncBoxBody<Bytes, Infallible>;

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed_unsync()
}

pub fn json(code: StatusCode, value: &Value) -> Response<Body> {
    response::typed(
        code,
        response::JSON,
        full(serde_json::to_vec(value).unwrap_or_default()),
    )
}

pub fn text(code: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    response::typed(code, response::TEXT, full(body))
}

pub fn error(code: u16, reason: &str, message: &str) -> Response<Body> {
    let err = StatusError::new(code, reason, message);
    json(err.http_status(), &err.to_json())
}

pub fn bad_request(message: &str) -> Response<Body> {
    error(400, "BadRequest", message)
}

pub fn backend_error(err: &BackendError) -> Response<Body> {
    let (code, reason) = err.status();
    error(code, reason, &err.to_string())
}

/// Query parameters in order, repeated keys kept.
#[derive(Debug, Default)]
pub struct Params(Vec<(String, String)>);

impl Params {
    pub fn parse(query: Option<&str>) -> Self {
        Self(
            form_urlencoded::parse(query.unwrap_or("").as_bytes())
                .into_owned()
                .collect(),
        )
    }

    /// The last value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of `key`, in order.
    pub fn all(&self, key: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// A boolean the way the kubelet reads one: present and `true`/`1`; `false` and `0` off.
    pub fn flag(&self, key: &str) -> Result<bool, String> {
        match self.get(key) {
            None | Some("false" | "0" | "") => Ok(false),
            Some("true" | "1") => Ok(true),
            Some(other) => Err(format!("invalid boolean value {other:?} for {key}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_query_keys_keep_every_value_in_order() {
        let p = Params::parse(Some("command=sh&command=-c&command=echo%20hi&tty=1"));
        assert_eq!(p.all("command"), ["sh", "-c", "echo hi"]);
        assert_eq!(p.flag("tty"), Ok(true));
        assert_eq!(p.flag("stdin"), Ok(false));
        assert!(Params::parse(Some("stdin=maybe")).flag("stdin").is_err());
    }
}
