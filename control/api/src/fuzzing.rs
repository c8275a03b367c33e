//! The request body decoders, reachable from the fuzz targets in `fuzz/` (feature `fuzzing`).

use http::{HeaderMap, HeaderValue, header};
use serde_json::Value;

/// Decodes `body` as the API server does a create or update sent with `content_type`
/// (JSON, YAML or the protobuf envelope); `None` when it refuses it.
#[must_use]
pub fn decode_object(content_type: &str, body: &[u8]) -> Option<Value> {
    let mut headers = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(content_type) {
        headers.insert(header::CONTENT_TYPE, v);
    }
    crate::http::decode_object(&headers, body).ok()
}

/// Decodes a `k8s\0`-enveloped protobuf body; `None` when it is refused.
#[must_use]
pub fn decode_protobuf(body: &[u8]) -> Option<Value> {
    crate::protobuf::decode(body).ok()
}
