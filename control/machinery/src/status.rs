//! `metav1.Status` failures with the codes, reasons and messages kubectl recognises.

use serde_json::{Value, json};

/// One field-level reason a request is invalid (`details.causes[]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cause {
    /// Machine reason, e.g. `FieldValueRequired`.
    pub reason: String,
    /// Human message, e.g. `Required value`.
    pub message: String,
    /// JSON path of the field, e.g. `spec.replicas`.
    pub field: String,
}

fn show(value: &Value) -> String {
    match value {
        Value::String(s) => format!("{s:?}"),
        other => other.to_string(),
    }
}

impl Cause {
    /// A required field is missing.
    #[must_use]
    pub fn required(field: &str) -> Self {
        Self {
            reason: "FieldValueRequired".into(),
            message: "Required value".into(),
            field: field.into(),
        }
    }

    /// A field has a value that breaks a rule.
    #[must_use]
    pub fn invalid(field: &str, value: &Value, detail: &str) -> Self {
        Self {
            reason: "FieldValueInvalid".into(),
            message: format!("Invalid value: {}: {detail}", show(value)),
            field: field.into(),
        }
    }

    /// A field's value is not one of the allowed ones.
    #[must_use]
    pub fn not_supported(field: &str, value: &Value, allowed: &[&str]) -> Self {
        let allowed: Vec<String> = allowed.iter().map(|a| format!("{a:?}")).collect();
        Self {
            reason: "FieldValueNotSupported".into(),
            message: format!(
                "Unsupported value: {}: supported values: {}",
                show(value),
                allowed.join(", ")
            ),
            field: field.into(),
        }
    }

    /// A field may not be set or changed.
    #[must_use]
    pub fn forbidden(field: &str, detail: &str) -> Self {
        Self {
            reason: "FieldValueForbidden".into(),
            message: format!("Forbidden: {detail}"),
            field: field.into(),
        }
    }

    /// A value appears twice where it must be unique.
    #[must_use]
    pub fn duplicate(field: &str, value: &Value) -> Self {
        Self {
            reason: "FieldValueDuplicate".into(),
            message: format!("Duplicate value: {}", show(value)),
            field: field.into(),
        }
    }

    /// A value is longer than allowed.
    #[must_use]
    pub fn too_long(field: &str, max: usize) -> Self {
        Self {
            reason: "FieldValueTooLong".into(),
            message: format!("Too long: may not be more than {max} bytes"),
            field: field.into(),
        }
    }
}

/// Extra detail about a failure (`details`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StatusDetails {
    /// The object's name.
    pub name: String,
    /// The object's API group.
    pub group: String,
    /// The kind or resource.
    pub kind: String,
    /// Field-level causes.
    pub causes: Vec<Cause>,
}

/// A request failure, rendered as `metav1.Status`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct StatusError {
    /// HTTP status code.
    pub code: u16,
    /// `metav1.StatusReason`, e.g. `NotFound`.
    pub reason: String,
    /// Human message.
    pub message: String,
    /// Optional details (boxed: errors travel in every `Result` of the API server).
    pub details: Option<Box<StatusDetails>>,
}

/// `pods` or `deployments.apps`, as the Go apiserver names a resource in messages.
fn qualified(group: &str, plural: &str) -> String {
    if group.is_empty() {
        plural.to_owned()
    } else {
        format!("{plural}.{group}")
    }
}

impl StatusError {
    /// A failure with any code and reason (the named constructors below cover the usual ones).
    #[must_use]
    pub fn new(code: u16, reason: &str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason: reason.into(),
            message: message.into(),
            details: None,
        }
    }

    fn with_details(mut self, group: &str, kind: &str, name: &str) -> Self {
        self.details = Some(Box::new(StatusDetails {
            name: name.into(),
            group: group.into(),
            kind: kind.into(),
            causes: Vec::new(),
        }));
        self
    }

    /// 400 `BadRequest`.
    #[must_use]
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    /// 404 `NotFound`: `pods "x" not found`.
    #[must_use]
    pub fn not_found(group: &str, plural: &str, name: &str) -> Self {
        Self::new(
            404,
            "NotFound",
            format!("{} {name:?} not found", qualified(group, plural)),
        )
        .with_details(group, plural, name)
    }

    /// 409 `AlreadyExists`: `pods "x" already exists`.
    #[must_use]
    pub fn already_exists(group: &str, plural: &str, name: &str) -> Self {
        Self::new(
            409,
            "AlreadyExists",
            format!("{} {name:?} already exists", qualified(group, plural)),
        )
        .with_details(group, plural, name)
    }

    /// 409 `Conflict`: `Operation cannot be fulfilled on pods "x": <detail>`.
    #[must_use]
    pub fn conflict(group: &str, plural: &str, name: &str, detail: &str) -> Self {
        Self::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} {name:?}: {detail}",
                qualified(group, plural)
            ),
        )
        .with_details(group, plural, name)
    }

    /// 422 `Invalid`, formatted like apimachinery's `NewInvalid`.
    #[must_use]
    pub fn invalid(group: &str, kind: &str, name: &str, causes: Vec<Cause>) -> Self {
        let qualified_kind = if group.is_empty() {
            kind.to_owned()
        } else {
            format!("{kind}.{group}")
        };
        let rendered: Vec<String> = causes
            .iter()
            .map(|c| {
                if c.field.is_empty() {
                    c.message.clone()
                } else {
                    format!("{}: {}", c.field, c.message)
                }
            })
            .collect();
        let list = match rendered.as_slice() {
            [one] => one.clone(),
            many => format!("[{}]", many.join(", ")),
        };
        let mut err = Self::new(
            422,
            "Invalid",
            format!("{qualified_kind} {name:?} is invalid: {list}"),
        )
        .with_details(group, kind, name);
        if let Some(details) = &mut err.details {
            details.causes = causes;
        }
        err
    }

    /// 403 `Forbidden`.
    #[must_use]
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(403, "Forbidden", message)
    }

    /// 403 `Forbidden` on a resource, as apimachinery's `NewForbidden`:
    /// `pods "x" is forbidden: <detail>` (or `pods is forbidden: ...` without a name).
    #[must_use]
    pub fn forbidden_on(group: &str, plural: &str, name: &str, detail: &str) -> Self {
        let what = qualified(group, plural);
        let message = if name.is_empty() {
            format!("{what} is forbidden: {detail}")
        } else {
            format!("{what} {name:?} is forbidden: {detail}")
        };
        Self::forbidden(message).with_details(group, plural, name)
    }

    /// 405 `MethodNotAllowed`.
    #[must_use]
    pub fn method_not_allowed(message: impl Into<String>) -> Self {
        Self::new(405, "MethodNotAllowed", message)
    }

    /// 410 `Expired`, as for a too old resource version.
    #[must_use]
    pub fn gone(message: impl Into<String>) -> Self {
        Self::new(410, "Expired", message)
    }

    /// 413 `RequestEntityTooLarge`.
    #[must_use]
    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(413, "RequestEntityTooLarge", message)
    }

    /// 415 `UnsupportedMediaType`.
    #[must_use]
    pub fn unsupported_media_type(content_type: &str) -> Self {
        Self::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml, application/merge-patch+json, application/strategic-merge-patch+json, application/json-patch+json (got {content_type:?})"
            ),
        )
    }

    /// 500 `InternalError`.
    #[must_use]
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(500, "InternalError", message)
    }

    /// 503 `ServiceUnavailable`.
    #[must_use]
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(503, "ServiceUnavailable", message)
    }

    /// 504 `Timeout`.
    #[must_use]
    pub fn timeout(message: impl Into<String>) -> Self {
        Self::new(504, "Timeout", message)
    }

    /// The HTTP status of the answer (500 for a code HTTP does not know).
    #[must_use]
    pub fn http_status(&self) -> http::StatusCode {
        http::StatusCode::from_u16(self.code).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR)
    }

    /// The `metav1.Status` JSON.
    #[must_use]
    pub fn to_json(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(d) = &self.details {
            let mut details = json!({ "name": d.name, "kind": d.kind });
            if !d.group.is_empty() {
                details["group"] = json!(d.group);
            }
            if !d.causes.is_empty() {
                details["causes"] = d
                    .causes
                    .iter()
                    .map(|c| json!({"reason": c.reason, "message": c.message, "field": c.field}))
                    .collect();
            }
            status["details"] = details;
        }
        status
    }
}

/// A `metav1.Status` success, as answered to deletes of collections.
#[must_use]
pub fn success() -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_found_names_the_group_qualified_resource() {
        let e = StatusError::not_found("apps", "deployments", "web");
        assert_eq!(e.code, 404);
        assert_eq!(e.message, r#"deployments.apps "web" not found"#);
        assert_eq!(e.to_json()["details"]["group"], "apps");
        assert_eq!(
            StatusError::not_found("", "pods", "x").message,
            r#"pods "x" not found"#
        );
    }

    #[test]
    fn invalid_joins_several_causes_in_brackets_like_apimachinery() {
        let one = StatusError::invalid(
            "apps",
            "Deployment",
            "web",
            vec![Cause::invalid(
                "spec.replicas",
                &json!(-1),
                "must be greater than or equal to 0",
            )],
        );
        assert_eq!(
            one.message,
            r#"Deployment.apps "web" is invalid: spec.replicas: Invalid value: -1: must be greater than or equal to 0"#
        );
        let two = StatusError::invalid(
            "",
            "Pod",
            "p",
            vec![
                Cause::required("spec.containers[0].image"),
                Cause::required("spec.containers[0].name"),
            ],
        );
        assert_eq!(
            two.message,
            r#"Pod "p" is invalid: [spec.containers[0].image: Required value, spec.containers[0].name: Required value]"#
        );
        assert_eq!(
            two.to_json()["details"]["causes"][1]["field"],
            "spec.containers[0].name"
        );
        assert_eq!(two.code, 422);
    }

    #[test]
    fn status_json_has_kind_status_and_failure() {
        let j = StatusError::conflict("", "pods", "a", "the object has been modified").to_json();
        assert_eq!(j["kind"], "Status");
        assert_eq!(j["status"], "Failure");
        assert_eq!(j["reason"], "Conflict");
        assert_eq!(j["code"], 409);
    }
}
