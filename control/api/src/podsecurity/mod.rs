//! Pod Security Admission's policy, pure: the levels namespaces choose by label, and the
//! Pod Security Standards' checks a pod spec is held to, worded as Kubernetes words them.

mod checks;
#[cfg(test)]
mod tests;

use std::{collections::BTreeMap, fmt};

pub use checks::check;

/// The label prefix of the three modes.
const LABEL_PREFIX: &str = "pod-security.kubernetes.io/";

/// A Pod Security Standards level, least to most restrictive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Anything goes.
    Privileged,
    /// Known privilege escalations are refused.
    Baseline,
    /// Current pod hardening practice is required.
    Restricted,
}

impl Level {
    fn parse(value: &str) -> Option<Self> {
        match value {
            "privileged" => Some(Self::Privileged),
            "baseline" => Some(Self::Baseline),
            "restricted" => Some(Self::Restricted),
            _ => None,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::Privileged => "privileged",
            Self::Baseline => "baseline",
            Self::Restricted => "restricted",
        }
    }
}

/// A level with the version of the standards a namespace asked for. Every version is
/// checked as the latest; the version is only echoed in messages, as the label has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LevelVersion {
    pub level: Level,
    pub version: String,
}

impl fmt::Display for LevelVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.level.as_str(), self.version)
    }
}

/// What a namespace's labels ask for in each mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Violations refuse pods.
    pub enforce: LevelVersion,
    /// Violations are recorded for the audit log.
    pub audit: LevelVersion,
    /// Violations are returned as warnings.
    pub warn: LevelVersion,
}

impl Policy {
    /// Reads the `pod-security.kubernetes.io/<mode>[-version]` labels. A missing level is
    /// privileged; a level that does not parse is restricted, as Kubernetes falls back to
    /// the strictest level rather than letting a typo open a namespace.
    pub fn from_labels(labels: &BTreeMap<String, String>) -> Self {
        let mode = |name: &str| {
            let level = labels
                .get(&format!("{LABEL_PREFIX}{name}"))
                .map_or(Level::Privileged, |v| {
                    Level::parse(v).unwrap_or(Level::Restricted)
                });
            let version = labels
                .get(&format!("{LABEL_PREFIX}{name}-version"))
                .filter(|v| is_version(v))
                .cloned()
                .unwrap_or_else(|| "latest".to_owned());
            LevelVersion { level, version }
        };
        Self {
            enforce: mode("enforce"),
            audit: mode("audit"),
            warn: mode("warn"),
        }
    }

    /// Whether every mode is privileged, so nothing needs checking.
    pub fn is_privileged(&self) -> bool {
        [&self.enforce, &self.audit, &self.warn]
            .iter()
            .all(|m| m.level == Level::Privileged)
    }
}

/// `v1.<minor>`, the form a `-version` label takes besides `latest`.
fn is_version(v: &str) -> bool {
    v.strip_prefix("v1.").is_some_and(|minor| {
        !minor.is_empty()
            && minor.bytes().all(|b| b.is_ascii_digit())
            && (minor == "0" || !minor.starts_with('0'))
    })
}

/// The `pod-security.kubernetes.io` labels that do not parse, as (label, value, why):
/// Kubernetes refuses a namespace carrying them.
pub fn label_errors(labels: &BTreeMap<String, String>) -> Vec<(String, String, &'static str)> {
    let mut errors = Vec::new();
    for mode in ["enforce", "audit", "warn"] {
        let key = format!("{LABEL_PREFIX}{mode}");
        if let Some(v) = labels.get(&key)
            && Level::parse(v).is_none()
        {
            errors.push((
                key,
                v.clone(),
                "must be one of privileged, baseline, restricted",
            ));
        }
        let key = format!("{LABEL_PREFIX}{mode}-version");
        if let Some(v) = labels.get(&key)
            && v != "latest"
            && !is_version(v)
        {
            errors.push((key, v.clone(), "must be \"latest\" or \"v1.x\""));
        }
    }
    errors
}

/// One failed check: the short reason and what in the pod fails it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub reason: String,
    pub detail: String,
}

/// `"restricted:latest": reason (detail), reason (detail)`, the tail of Kubernetes'
/// refusal and warning messages.
pub fn describe(level: &LevelVersion, violations: &[Violation]) -> String {
    let parts: Vec<String> = violations
        .iter()
        .map(|v| {
            if v.detail.is_empty() {
                v.reason.clone()
            } else {
                format!("{} ({})", v.reason, v.detail)
            }
        })
        .collect();
    format!("\"{level}\": {}", parts.join(", "))
}

/// The warnings for a namespace whose enforce level becomes `level`, given its pods' names
/// and violations: a header, then one line per distinct set of reasons naming its first
/// pod and how many others share it, as `kubectl label` shows them from Kubernetes.
pub fn existing_pod_warnings(
    namespace: &str,
    level: &LevelVersion,
    pods: &[(String, Vec<Violation>)],
) -> Vec<String> {
    let mut groups: Vec<(String, &str, usize)> = Vec::new();
    for (name, violations) in pods {
        if violations.is_empty() {
            continue;
        }
        let reasons = violations
            .iter()
            .map(|v| v.reason.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        match groups.iter_mut().find(|(r, _, _)| *r == reasons) {
            Some(group) => group.2 += 1,
            None => groups.push((reasons, name, 0)),
        }
    }
    if groups.is_empty() {
        return Vec::new();
    }
    let mut warnings = vec![format!(
        "existing pods in namespace {namespace:?} violate the new PodSecurity enforce level \"{level}\""
    )];
    warnings.extend(
        groups
            .into_iter()
            .map(|(reasons, first, others)| match others {
                0 => format!("{first}: {reasons}"),
                1 => format!("{first} (and 1 other pod): {reasons}"),
                n => format!("{first} (and {n} other pods): {reasons}"),
            }),
    );
    warnings
}
