//! Unknown-field detection for `fieldValidation=Strict|Warn`, by comparing what the client
//! sent with what the kind's typed struct keeps of it.

use serde_json::Value;

use crate::ResourceInfo;

/// Why an object does not decode as its kind.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    /// A field has the wrong JSON type (e.g. a string where a number belongs).
    #[error("{0}")]
    Type(String),
}

/// Checks the object decodes as `info`'s kind, and returns the paths of fields the kind
/// does not have, e.g. `spec.replicass` or `spec.template.spec.containers[0].imagee`.
///
/// # Errors
/// When a field has the wrong type.
pub fn unknown(info: &ResourceInfo, obj: &Value) -> Result<Vec<String>, DecodeError> {
    let kept = (info.roundtrip)(obj).map_err(DecodeError::Type)?;
    let mut out = Vec::new();
    diff(obj, &kept, "", &mut out);
    Ok(out)
}

fn diff(sent: &Value, kept: &Value, path: &str, out: &mut Vec<String>) {
    match (sent, kept) {
        (Value::Object(sent), Value::Object(kept)) => {
            for (key, value) in sent {
                let child = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                match kept.get(key) {
                    Some(k) => diff(value, k, &child, out),
                    // A null is "unset": the typed struct drops it too.
                    None if value.is_null() => {}
                    None => out.push(child),
                }
            }
        }
        (Value::Array(sent), Value::Array(kept)) => {
            for (i, (s, k)) in sent.iter().zip(kept).enumerate() {
                diff(s, k, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::by_kind;

    #[test]
    fn misspelled_fields_are_reported_with_their_path() {
        let info = by_kind("apps/v1", "Deployment").unwrap();
        let obj = json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "creationTimestamp": null},
            "spec": {"replicass": 2, "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "a", "imagee": "x"}]}}}
        });
        assert_eq!(
            unknown(info, &obj).unwrap(),
            ["spec.replicass", "spec.template.spec.containers[0].imagee"]
        );
    }

    #[test]
    fn a_correct_object_has_no_unknown_fields() {
        let info = by_kind("v1", "ConfigMap").unwrap();
        let obj = json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "c", "labels": {"a": "b"}}, "data": {"k": "v"}});
        assert!(unknown(info, &obj).unwrap().is_empty());
    }

    #[test]
    fn a_wrongly_typed_field_is_a_decode_error() {
        let info = by_kind("apps/v1", "Deployment").unwrap();
        let obj = json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web"}, "spec": {"replicas": "two"}});
        assert!(unknown(info, &obj).is_err());
    }
}
