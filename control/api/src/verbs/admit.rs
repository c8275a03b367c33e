//! What every write passes through: kind and namespace checks, unknown fields
//! (`fieldValidation`), the kind's defaults and validation, and the update rules on
//! metadata.

use serde_json::{Value, json};
use skiff_machinery::{
    status::{Cause, StatusError},
    validation::object_meta,
};
use skiff_resources::{ResourceInfo, fields};

use crate::{http::Query, objects};

/// Fills or checks `apiVersion` and `kind` against the URL's kind.
pub fn check_kind(info: &ResourceInfo, obj: &mut Value) -> Result<(), StatusError> {
    let api_version = obj.get("apiVersion").and_then(Value::as_str).unwrap_or("");
    let kind = obj.get("kind").and_then(Value::as_str).unwrap_or("");
    if (!api_version.is_empty() && api_version != info.api_version)
        || (!kind.is_empty() && kind != info.kind)
    {
        return Err(StatusError::bad_request(format!(
            "the API version in the data ({api_version}) does not match the expected API version ({})",
            info.api_version
        ))
        .with_kind_message(kind, info.kind));
    }
    obj["apiVersion"] = json!(info.api_version);
    obj["kind"] = json!(info.kind);
    if !obj.get("metadata").is_some_and(Value::is_object) {
        obj["metadata"] = json!({});
    }
    Ok(())
}

trait KindMessage {
    fn with_kind_message(self, sent: &str, expected: &str) -> Self;
}

impl KindMessage for StatusError {
    fn with_kind_message(mut self, sent: &str, expected: &str) -> Self {
        if !sent.is_empty() && sent != expected {
            self.message = format!(
                "the kind in the data ({sent}) does not match the expected kind ({expected})"
            );
        }
        self
    }
}

/// Puts the URL's namespace on the object, refusing a different one in the body.
pub fn check_namespace(
    info: &ResourceInfo,
    obj: &mut Value,
    url_namespace: Option<&str>,
) -> Result<(), StatusError> {
    if !info.namespaced {
        return Ok(());
    }
    let url = url_namespace.unwrap_or("");
    match objects::namespace_of(obj) {
        Some(ns) if !ns.is_empty() && ns != url => Err(StatusError::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        )),
        _ => {
            obj["metadata"]["namespace"] = json!(url);
            Ok(())
        }
    }
}

/// Applies `fieldValidation`: Strict refuses unknown fields, Warn (the default) reports them,
/// Ignore drops them silently. Wrongly typed fields are always refused.
pub fn unknown_fields(
    info: &ResourceInfo,
    obj: &Value,
    query: &Query,
) -> Result<Vec<String>, StatusError> {
    let unknown = fields::unknown(info, obj)
        .map_err(|e| StatusError::bad_request(format!("{} in body: {e}", info.kind)))?;
    if unknown.is_empty() {
        return Ok(Vec::new());
    }
    let rendered: Vec<String> = unknown
        .iter()
        .map(|f| format!("unknown field {f:?}"))
        .collect();
    match query.get("fieldValidation").unwrap_or("Warn") {
        "Strict" => Err(StatusError::bad_request(format!(
            "strict decoding error: {}",
            rendered.join(", ")
        ))),
        "Ignore" => Ok(Vec::new()),
        _ => Ok(rendered),
    }
}

fn invalid(info: &ResourceInfo, obj: &Value, causes: Vec<Cause>) -> StatusError {
    StatusError::invalid(info.group, info.kind, objects::name_of(obj), causes)
}

/// Defaults and validates a new object.
pub fn admit_create(info: &ResourceInfo, obj: &mut Value) -> Result<(), StatusError> {
    let strategy = info.strategy;
    strategy.default(obj);
    let mut causes = object_meta(&obj["metadata"], info.namespaced, strategy.name_rule());
    causes.extend(strategy.validate(obj));
    if causes.is_empty() {
        Ok(())
    } else {
        Err(invalid(info, obj, causes))
    }
}

/// Carries over what an update may not change, bumps `generation` on spec changes, then
/// defaults and validates.
pub fn admit_update(info: &ResourceInfo, old: &Value, new: &mut Value) -> Result<(), StatusError> {
    for field in [
        "uid",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "namespace",
        "generation",
    ] {
        match old["metadata"].get(field) {
            Some(v) => new["metadata"][field] = v.clone(),
            None => {
                if let Some(m) = new["metadata"].as_object_mut() {
                    m.remove(field);
                }
            }
        }
    }
    let strategy = info.strategy;
    strategy.default(new);
    strategy.prepare_for_update(old, new);
    if objects::spec_part(old) != objects::spec_part(new)
        && let Some(generation) = old.pointer("/metadata/generation").and_then(Value::as_i64)
    {
        new["metadata"]["generation"] = json!(generation + 1);
    }
    let mut causes = object_meta(&new["metadata"], info.namespaced, strategy.name_rule());
    causes.extend(strategy.validate_update(old, new));
    if causes.is_empty() {
        Ok(())
    } else {
        Err(invalid(info, new, causes))
    }
}
