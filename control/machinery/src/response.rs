//! HTTP answers both skiff servers (the API server and the node) build, whatever their body
//! type: a body with its content type.

use http::{HeaderValue, Response, StatusCode, header};

/// `Content-Type` of JSON answers.
pub const JSON: &str = "application/json";
/// `Content-Type` of plain-text answers.
pub const TEXT: &str = "text/plain; charset=utf-8";

/// An answer with `code` whose `body` is of `content_type`.
#[must_use]
pub fn typed<B>(code: StatusCode, content_type: &'static str, body: B) -> Response<B> {
    let mut resp = Response::new(body);
    *resp.status_mut() = code;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_carries_its_code_and_content_type() {
        let resp = typed(StatusCode::NOT_FOUND, JSON, "{}");
        assert_eq!(resp.status(), StatusCode::NOT_FOUND);
        assert_eq!(resp.headers()[header::CONTENT_TYPE], JSON);
        assert_eq!(*resp.body(), "{}");
    }
}
