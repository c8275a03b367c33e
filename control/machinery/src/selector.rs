//! Label and field selectors as `?labelSelector=` and `?fieldSelector=` spell them.

use std::collections::BTreeMap;

use serde_json::Value;

/// Why a selector did not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SelectorError {
    /// The text is not a selector.
    #[error("unable to parse requirement: {0}")]
    Syntax(String),
    /// A `metav1.LabelSelector` object is malformed.
    #[error("invalid label selector: {0}")]
    Object(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Op {
    Equals(String),
    NotEquals(String),
    In(Vec<String>),
    NotIn(Vec<String>),
    Exists,
    DoesNotExist,
}

/// A parsed label selector: every requirement must hold (AND).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LabelSelector {
    requirements: Vec<(String, Op)>,
}

/// Splits on commas that are not inside parentheses.
fn split_top_level(s: &str) -> Vec<&str> {
    let (mut depth, mut start, mut out) = (0i32, 0, Vec::new());
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

fn set_values(rest: &str, whole: &str) -> Result<Vec<String>, SelectorError> {
    let inner = rest
        .trim()
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| SelectorError::Syntax(format!("{whole}: expected a (value, ...) set")))?;
    Ok(inner
        .split(',')
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
        .collect())
}

impl LabelSelector {
    /// Parses `a=b,c!=d,e in (f,g),h notin (i),j,!k`.
    ///
    /// # Errors
    /// On malformed requirements.
    pub fn parse(s: &str) -> Result<Self, SelectorError> {
        let mut requirements = Vec::new();
        if s.trim().is_empty() {
            return Ok(Self::default());
        }
        for part in split_top_level(s) {
            let part = part.trim();
            if part.is_empty() {
                return Err(SelectorError::Syntax(format!("{s}: empty requirement")));
            }
            let requirement = if let Some(key) = part.strip_prefix('!') {
                (key.trim().to_owned(), Op::DoesNotExist)
            } else if let Some((key, value)) = part.split_once("!=") {
                (
                    key.trim().to_owned(),
                    Op::NotEquals(value.trim().to_owned()),
                )
            } else if let Some((key, value)) = part.split_once("==") {
                (key.trim().to_owned(), Op::Equals(value.trim().to_owned()))
            } else if let Some((key, value)) = part.split_once('=') {
                (key.trim().to_owned(), Op::Equals(value.trim().to_owned()))
            } else if let Some((key, rest)) = part.split_once(" notin ") {
                (key.trim().to_owned(), Op::NotIn(set_values(rest, part)?))
            } else if let Some((key, rest)) = part.split_once(" in ") {
                (key.trim().to_owned(), Op::In(set_values(rest, part)?))
            } else if part.contains(char::is_whitespace) || part.contains(['(', ')']) {
                return Err(SelectorError::Syntax(part.to_owned()));
            } else {
                (part.to_owned(), Op::Exists)
            };
            if requirement.0.is_empty() {
                return Err(SelectorError::Syntax(format!("{part}: empty key")));
            }
            requirements.push(requirement);
        }
        Ok(Self { requirements })
    }

    /// Builds one from a `metav1.LabelSelector` JSON object.
    ///
    /// # Errors
    /// On unknown operators or malformed fields.
    pub fn from_k8s(selector: &Value) -> Result<Self, SelectorError> {
        let mut requirements = Vec::new();
        if let Some(labels) = selector.get("matchLabels").and_then(Value::as_object) {
            for (k, v) in labels {
                let v = v.as_str().ok_or_else(|| {
                    SelectorError::Object(format!("matchLabels.{k} is not a string"))
                })?;
                requirements.push((k.clone(), Op::Equals(v.to_owned())));
            }
        }
        for expr in selector
            .get("matchExpressions")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let key = expr
                .get("key")
                .and_then(Value::as_str)
                .ok_or_else(|| SelectorError::Object("matchExpressions[].key missing".into()))?
                .to_owned();
            let values: Vec<String> = expr
                .get("values")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect();
            let op = match expr.get("operator").and_then(Value::as_str) {
                Some("In") => Op::In(values),
                Some("NotIn") => Op::NotIn(values),
                Some("Exists") => Op::Exists,
                Some("DoesNotExist") => Op::DoesNotExist,
                other => {
                    return Err(SelectorError::Object(format!("unknown operator {other:?}")));
                }
            };
            requirements.push((key, op));
        }
        Ok(Self { requirements })
    }

    /// Whether `labels` satisfy every requirement.
    #[must_use]
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements.iter().all(|(key, op)| {
            let value = labels.get(key);
            match op {
                Op::Equals(v) => value == Some(v),
                Op::NotEquals(v) => value != Some(v),
                Op::In(vs) => value.is_some_and(|x| vs.contains(x)),
                Op::NotIn(vs) => value.is_none_or(|x| !vs.contains(x)),
                Op::Exists => value.is_some(),
                Op::DoesNotExist => value.is_none(),
            }
        })
    }

    /// Whether it selects everything.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }
}

/// A parsed field selector: `metadata.name=x,spec.nodeName!=y`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FieldSelector {
    requirements: Vec<(String, bool, String)>,
}

impl FieldSelector {
    /// Parses `a=b`, `a==b`, `a!=b`, comma-separated; `\,` `\=` `\\` escape.
    ///
    /// # Errors
    /// On a requirement without an operator.
    pub fn parse(s: &str) -> Result<Self, SelectorError> {
        let mut requirements = Vec::new();
        if s.trim().is_empty() {
            return Ok(Self::default());
        }
        let mut parts = Vec::new();
        let mut current = String::new();
        let mut chars = s.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => current.extend(chars.next()),
                ',' => parts.push(std::mem::take(&mut current)),
                c => current.push(c),
            }
        }
        parts.push(current);
        for part in parts {
            let (field, equal, value) = if let Some((f, v)) = part.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = part.split_once("==") {
                (f, true, v)
            } else if let Some((f, v)) = part.split_once('=') {
                (f, true, v)
            } else {
                return Err(SelectorError::Syntax(format!(
                    "invalid field selector: {part:?}"
                )));
            };
            requirements.push((field.trim().to_owned(), equal, value.trim().to_owned()));
        }
        Ok(Self { requirements })
    }

    /// Whether the object (seen through `get(field)`) satisfies every requirement.
    #[must_use]
    pub fn matches(&self, get: &dyn Fn(&str) -> Option<String>) -> bool {
        self.requirements.iter().all(|(field, equal, value)| {
            let actual = get(field).unwrap_or_default();
            (actual == *value) == *equal
        })
    }

    /// The fields used, so the server can refuse ones it does not index.
    #[must_use]
    pub fn fields(&self) -> Vec<&str> {
        self.requirements
            .iter()
            .map(|(f, _, _)| f.as_str())
            .collect()
    }

    /// The value of an `=` requirement on `field`, for index lookups.
    #[must_use]
    pub fn exact(&self, field: &str) -> Option<&str> {
        self.requirements
            .iter()
            .find(|(f, equal, _)| f == field && *equal)
            .map(|(_, _, v)| v.as_str())
    }

    /// Whether it selects everything.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn equality_and_set_requirements_all_must_hold() {
        let sel =
            LabelSelector::parse("app=web, tier in (front, edge),env notin (prod),team,!legacy")
                .unwrap();
        assert!(sel.matches(&labels(&[("app", "web"), ("tier", "edge"), ("team", "a")])));
        assert!(!sel.matches(&labels(&[("app", "web"), ("tier", "db"), ("team", "a")])));
        assert!(!sel.matches(&labels(&[
            ("app", "web"),
            ("tier", "edge"),
            ("team", "a"),
            ("env", "prod")
        ])));
        assert!(!sel.matches(&labels(&[("app", "web"), ("tier", "edge")])));
        assert!(!sel.matches(&labels(&[
            ("app", "web"),
            ("tier", "edge"),
            ("team", "a"),
            ("legacy", "y")
        ])));
    }

    #[test]
    fn not_equals_matches_absent_labels() {
        let sel = LabelSelector::parse("app!=web").unwrap();
        assert!(sel.matches(&labels(&[])));
        assert!(!sel.matches(&labels(&[("app", "web")])));
        assert!(
            LabelSelector::parse("app==web")
                .unwrap()
                .matches(&labels(&[("app", "web")]))
        );
    }

    #[test]
    fn malformed_selectors_are_refused() {
        assert!(LabelSelector::parse("app in web").is_err());
        assert!(LabelSelector::parse("a,,b").is_err());
        assert!(LabelSelector::parse("=x").is_err());
        assert!(LabelSelector::parse("").unwrap().is_empty());
    }

    #[test]
    fn a_k8s_label_selector_object_converts() {
        let sel = LabelSelector::from_k8s(&json!({
            "matchLabels": {"app": "web"},
            "matchExpressions": [{"key": "tier", "operator": "In", "values": ["a", "b"]}]
        }))
        .unwrap();
        assert!(sel.matches(&labels(&[("app", "web"), ("tier", "b")])));
        assert!(!sel.matches(&labels(&[("app", "web"), ("tier", "c")])));
        assert!(
            LabelSelector::from_k8s(
                &json!({"matchExpressions": [{"key": "a", "operator": "Near"}]})
            )
            .is_err()
        );
    }

    #[test]
    fn field_selectors_compare_with_escapes() {
        let sel = FieldSelector::parse(r"metadata.name=a\,b,spec.nodeName!=n1").unwrap();
        assert_eq!(sel.exact("metadata.name"), Some("a,b"));
        assert_eq!(sel.fields(), ["metadata.name", "spec.nodeName"]);
        let get = |f: &str| match f {
            "metadata.name" => Some("a,b".to_owned()),
            "spec.nodeName" => Some("n2".to_owned()),
            _ => None,
        };
        assert!(sel.matches(&get));
        assert!(FieldSelector::parse("nonsense").is_err());
    }
}
