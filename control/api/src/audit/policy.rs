//! The audit policy (audit.k8s.io/v1 `Policy`): the first rule matching a request decides
//! its level and the stages left out, as kube-apiserver's policy checker does.

use std::path::Path;

use serde::Deserialize;
use skiff_machinery::user::UserInfo;

use crate::authz::attributes::Attributes;

/// How much of a request is recorded, in increasing order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
pub enum Level {
    /// Not at all.
    None,
    /// Who did what to which object, and the answer's code.
    Metadata,
    /// Also the request's object.
    Request,
    /// Also the response's object.
    RequestResponse,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "None",
            Self::Metadata => "Metadata",
            Self::Request => "Request",
            Self::RequestResponse => "RequestResponse",
        }
    }
}

/// A stage of a request's life at which an event is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Stage {
    /// As soon as the request is received.
    RequestReceived,
    /// When the response headers are sent (long-running requests).
    ResponseStarted,
    /// When the response is complete.
    ResponseComplete,
    /// When the server panicked.
    Panic,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RequestReceived => "RequestReceived",
            Self::ResponseStarted => "ResponseStarted",
            Self::ResponseComplete => "ResponseComplete",
            Self::Panic => "Panic",
        }
    }
}

/// Why a policy file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The failure.
        #[source]
        source: std::io::Error,
    },
    /// Not a valid `Policy`.
    #[error("parsing the audit policy: {0}")]
    Parse(#[from] serde_yaml::Error),
    /// Another kind than `Policy` of audit.k8s.io/v1.
    #[error("expected kind Policy of audit.k8s.io/v1, got {0}")]
    Kind(String),
}

/// An audit policy.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Policy {
    #[serde(default)]
    api_version: String,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    rules: Vec<Rule>,
    #[serde(default)]
    omit_stages: Vec<Stage>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Rule {
    level: Level,
    #[serde(default)]
    users: Vec<String>,
    #[serde(default)]
    user_groups: Vec<String>,
    #[serde(default)]
    verbs: Vec<String>,
    #[serde(default)]
    resources: Vec<GroupResources>,
    #[serde(default)]
    namespaces: Vec<String>,
    #[serde(default, rename = "nonResourceURLs")]
    non_resource_urls: Vec<String>,
    omit_stages: Option<Vec<Stage>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct GroupResources {
    #[serde(default)]
    group: String,
    #[serde(default)]
    resources: Vec<String>,
    #[serde(default)]
    resource_names: Vec<String>,
}

/// What the policy decides for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// How much to record.
    pub level: Level,
    /// Stages not to write.
    pub omit_stages: Vec<Stage>,
}

impl Policy {
    /// Everything at `Metadata`: what `control` audits without a policy file.
    #[must_use]
    pub fn metadata() -> Self {
        Self {
            api_version: "audit.k8s.io/v1".into(),
            kind: "Policy".into(),
            rules: vec![Rule {
                level: Level::Metadata,
                users: Vec::new(),
                user_groups: Vec::new(),
                verbs: Vec::new(),
                resources: Vec::new(),
                namespaces: Vec::new(),
                non_resource_urls: Vec::new(),
                omit_stages: None,
            }],
            omit_stages: Vec::new(),
        }
    }

    /// Reads a policy file.
    ///
    /// # Errors
    /// When it cannot be read or is not a `Policy`.
    pub fn load(path: &Path) -> Result<Self, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text)
    }

    /// Parses a policy (YAML or JSON).
    ///
    /// # Errors
    /// When it is not a `Policy` of audit.k8s.io/v1.
    pub fn parse(text: &str) -> Result<Self, PolicyError> {
        let policy: Self = serde_yaml::from_str(text)?;
        if policy.kind != "Policy" || policy.api_version != "audit.k8s.io/v1" {
            return Err(PolicyError::Kind(format!(
                "{} {}",
                policy.api_version, policy.kind
            )));
        }
        Ok(policy)
    }

    /// The level of the first matching rule (None when no rule matches), and the stages
    /// omitted by that rule or else by the policy.
    #[must_use]
    pub fn decide(&self, attrs: &Attributes) -> Decision {
        self.rules.iter().find(|rule| rule.matches(attrs)).map_or(
            Decision {
                level: Level::None,
                omit_stages: Vec::new(),
            },
            |rule| Decision {
                level: rule.level,
                omit_stages: rule
                    .omit_stages
                    .clone()
                    .unwrap_or_else(|| self.omit_stages.clone()),
            },
        )
    }
}

impl Rule {
    fn matches(&self, attrs: &Attributes) -> bool {
        let user: &UserInfo = &attrs.user;
        if !self.users.is_empty() && !self.users.contains(&user.name) {
            return false;
        }
        if !self.user_groups.is_empty() && !user.groups.iter().any(|g| self.user_groups.contains(g))
        {
            return false;
        }
        if !self.verbs.is_empty() && !self.verbs.contains(&attrs.verb) {
            return false;
        }
        let Some(r) = &attrs.resource else {
            if !self.resources.is_empty() || !self.namespaces.is_empty() {
                return false;
            }
            return self.non_resource_urls.is_empty()
                || self
                    .non_resource_urls
                    .iter()
                    .any(|u| url_matches(u, &attrs.path));
        };
        if !self.non_resource_urls.is_empty() {
            return false;
        }
        if !self.namespaces.is_empty() && !self.namespaces.contains(&r.namespace) {
            return false;
        }
        self.resources.is_empty() || self.resources.iter().any(|g| g.matches(r))
    }
}

impl GroupResources {
    /// kube's forms: `pods`, `pods/status`, `pods/*`, `*/status`, `*`.
    fn matches(&self, r: &crate::authz::attributes::ResourceAttributes) -> bool {
        if self.group != r.group && self.group != "*" {
            return false;
        }
        let names_ok = self.resource_names.is_empty() || self.resource_names.contains(&r.name);
        let resources_ok = self.resources.is_empty()
            || self.resources.iter().any(|pattern| {
                let full = if r.subresource.is_empty() {
                    r.resource.clone()
                } else {
                    format!("{}/{}", r.resource, r.subresource)
                };
                pattern == "*"
                    || *pattern == full
                    || pattern.strip_suffix("/*") == Some(r.resource.as_str())
                        && !r.subresource.is_empty()
                    || pattern.strip_prefix("*/") == Some(r.subresource.as_str())
            });
        names_ok && resources_ok
    }
}

/// Exact, or a prefix ending in `*`.
fn url_matches(pattern: &str, path: &str) -> bool {
    pattern == "*"
        || pattern == path
        || pattern
            .strip_suffix('*')
            .is_some_and(|prefix| path.starts_with(prefix))
}
