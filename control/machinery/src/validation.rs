//! Name, label and metadata rules, with the messages Kubernetes gives for breaking them.

use serde_json::Value;

use crate::status::Cause;

const DNS1123_LABEL_MAX: usize = 63;
const DNS1123_SUBDOMAIN_MAX: usize = 253;
const ANNOTATIONS_MAX: usize = 256 * 1024;

fn is_alnum(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

fn label_shaped(s: &str) -> bool {
    !s.is_empty()
        && s.starts_with(is_alnum)
        && s.ends_with(is_alnum)
        && s.chars().all(|c| is_alnum(c) || c == '-')
}

/// Errors for an RFC 1123 label (`[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most 63); empty = valid.
#[must_use]
pub fn dns1123_label(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if value.len() > DNS1123_LABEL_MAX {
        errs.push(format!(
            "must be no more than {DNS1123_LABEL_MAX} characters"
        ));
    }
    if !label_shaped(value) {
        errs.push("a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')".to_owned());
    }
    errs
}

/// Errors for an RFC 1123 subdomain (dot-separated labels, at most 253); empty = valid.
#[must_use]
pub fn dns1123_subdomain(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if value.len() > DNS1123_SUBDOMAIN_MAX {
        errs.push(format!(
            "must be no more than {DNS1123_SUBDOMAIN_MAX} characters"
        ));
    }
    if !value.split('.').all(label_shaped) {
        errs.push("a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')".to_owned());
    }
    errs
}

fn name_part_ok(s: &str) -> bool {
    let ok = |c: char| c.is_ascii_alphanumeric();
    !s.is_empty()
        && s.len() <= 63
        && s.starts_with(ok)
        && s.ends_with(ok)
        && s.chars().all(|c| ok(c) || matches!(c, '-' | '_' | '.'))
}

/// Errors for a label or annotation key (`[prefix/]name`); empty = valid.
#[must_use]
pub fn qualified_name(value: &str) -> Vec<String> {
    let (prefix, name) = match value.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, value),
    };
    let mut errs = Vec::new();
    if let Some(prefix) = prefix {
        if prefix.is_empty() {
            errs.push("prefix part must be non-empty".to_owned());
        } else {
            errs.extend(
                dns1123_subdomain(prefix)
                    .into_iter()
                    .map(|e| format!("prefix part {e}")),
            );
        }
    }
    if !name_part_ok(name) {
        errs.push("name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')".to_owned());
    }
    errs
}

/// Errors for a label value (empty, or a name part of at most 63); empty = valid.
#[must_use]
pub fn label_value(value: &str) -> Vec<String> {
    if value.is_empty() || name_part_ok(value) {
        Vec::new()
    } else {
        vec!["a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')".to_owned()]
    }
}

/// What a kind's object names must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameRule {
    /// A DNS-1123 subdomain (most kinds).
    Subdomain,
    /// A DNS-1123 label (Namespaces, Services).
    Label,
    /// Anything that fits in one URL path segment (RBAC kinds: `system:node`).
    PathSegment,
}

/// Kubernetes' `path.IsValidPathSegmentName`: not `.` or `..`, no `/` or `%`.
#[must_use]
pub fn path_segment_name(value: &str) -> Vec<String> {
    if value == "." || value == ".." {
        return vec![format!("may not be '{value}'")];
    }
    ["/", "%"]
        .iter()
        .filter(|bad| value.contains(**bad))
        .map(|bad| format!("may not contain '{bad}'"))
        .collect()
}

/// Validates an object's `metadata` for create or update.
#[must_use]
pub fn object_meta(meta: &Value, namespaced: bool, names: NameRule) -> Vec<Cause> {
    let mut causes = Vec::new();
    let name = meta.get("name").and_then(Value::as_str).unwrap_or("");
    let generate = meta
        .get("generateName")
        .and_then(Value::as_str)
        .unwrap_or("");
    if name.is_empty() && generate.is_empty() {
        causes.push(Cause {
            reason: "FieldValueRequired".into(),
            message: "Required value: name or generateName is required".into(),
            field: "metadata.name".into(),
        });
    } else if !name.is_empty() {
        let errs = match names {
            NameRule::Label => dns1123_label(name),
            NameRule::Subdomain => dns1123_subdomain(name),
            NameRule::PathSegment => path_segment_name(name),
        };
        for e in errs {
            causes.push(Cause::invalid("metadata.name", &Value::from(name), &e));
        }
    }
    let namespace = meta.get("namespace").and_then(Value::as_str).unwrap_or("");
    if namespaced && namespace.is_empty() {
        causes.push(Cause::required("metadata.namespace"));
    }
    if !namespaced && !namespace.is_empty() {
        causes.push(Cause::forbidden(
            "metadata.namespace",
            "not allowed on this type",
        ));
    }
    if let Some(labels) = meta.get("labels").and_then(Value::as_object) {
        for (k, v) in labels {
            for e in qualified_name(k) {
                causes.push(Cause::invalid(
                    "metadata.labels",
                    &Value::from(k.as_str()),
                    &e,
                ));
            }
            let v = v.as_str().unwrap_or_default();
            for e in label_value(v) {
                causes.push(Cause::invalid("metadata.labels", &Value::from(v), &e));
            }
        }
    }
    if let Some(annotations) = meta.get("annotations").and_then(Value::as_object) {
        let mut total = 0;
        for (k, v) in annotations {
            for e in qualified_name(k) {
                causes.push(Cause::invalid(
                    "metadata.annotations",
                    &Value::from(k.as_str()),
                    &e,
                ));
            }
            total += k.len() + v.as_str().map_or(0, str::len);
        }
        if total > ANNOTATIONS_MAX {
            causes.push(Cause::too_long("metadata.annotations", ANNOTATIONS_MAX));
        }
    }
    causes
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn subdomains_allow_dots_and_labels_do_not() {
        assert!(dns1123_subdomain("web.example-1").is_empty());
        assert!(!dns1123_label("web.example").is_empty());
        assert!(!dns1123_subdomain("Web").is_empty());
        assert!(!dns1123_subdomain("-web").is_empty());
        assert!(!dns1123_subdomain(&"a".repeat(254)).is_empty());
        assert!(!dns1123_label(&"a".repeat(64)).is_empty());
    }

    #[test]
    fn label_keys_may_have_a_dns_prefix() {
        assert!(qualified_name("app.kubernetes.io/name").is_empty());
        assert!(!qualified_name("/name").is_empty());
        assert!(!qualified_name("bad key").is_empty());
        assert!(label_value("").is_empty());
        assert!(!label_value("-x").is_empty());
    }

    #[test]
    fn metadata_needs_a_name_and_a_namespace_when_namespaced() {
        let causes = object_meta(&json!({}), true, NameRule::Subdomain);
        let fields: Vec<&str> = causes.iter().map(|c| c.field.as_str()).collect();
        assert_eq!(fields, ["metadata.name", "metadata.namespace"]);
        assert!(
            object_meta(
                &json!({"generateName": "x-", "namespace": "d"}),
                true,
                NameRule::Subdomain
            )
            .is_empty()
        );
        let causes = object_meta(
            &json!({"name": "n", "namespace": "d"}),
            false,
            NameRule::Subdomain,
        );
        assert_eq!(causes[0].reason, "FieldValueForbidden");
        let causes = object_meta(
            &json!({"name": "ok", "namespace": "d", "labels": {"a": "-bad"}}),
            true,
            NameRule::Subdomain,
        );
        assert_eq!(causes[0].field, "metadata.labels");
    }

    #[test]
    fn rbac_names_may_hold_colons_but_not_slashes() {
        let meta = |name: &str| json!({"name": name});
        assert!(object_meta(&meta("system:node"), false, NameRule::PathSegment).is_empty());
        assert!(!object_meta(&meta("system:node"), false, NameRule::Subdomain).is_empty());
        assert!(!object_meta(&meta("a/b"), false, NameRule::PathSegment).is_empty());
        assert!(!object_meta(&meta(".."), false, NameRule::PathSegment).is_empty());
    }
}
