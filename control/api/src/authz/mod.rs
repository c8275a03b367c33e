//! Authorization: every request's attributes checked, after authentication, against the
//! Node authorizer and RBAC held in memory (`system:masters` is always allowed, as in
//! Kubernetes), then `NodeRestriction` and escalation prevention on writes.

pub mod admission;
pub mod attributes;
pub mod feed;
pub mod impersonate;
pub mod index;
pub mod policy;
pub mod review;
pub mod rules;

use std::sync::{LazyLock, PoisonError, RwLock, RwLockReadGuard};

use k8s_openapi::api::rbac::v1::PolicyRule;
use skiff_machinery::user::{self, UserInfo};

use self::{attributes::Attributes, index::Index};

tokio::task_local! {
    /// The authenticated (or impersonated) caller of the request being served, for the
    /// admission checks deep in the write path.
    pub static CALLER: UserInfo;
}

/// The node name of a node identity (`system:node:<name>` in `system:nodes`).
#[must_use]
pub fn node_name(user: &UserInfo) -> Option<&str> {
    user.name
        .strip_prefix(policy::NODE_PREFIX)
        .filter(|n| !n.is_empty() && user.in_group(policy::NODES))
}

static NODE_RULES: LazyLock<Vec<PolicyRule>> = LazyLock::new(|| {
    policy::node_rules()
        .into_iter()
        .filter_map(|r| serde_json::from_value(r).ok())
        .collect()
});

/// The authorizer: the RBAC index and the decisions made on it.
#[derive(Debug, Default)]
pub struct Authorizer {
    index: RwLock<Index>,
}

impl Authorizer {
    /// The held objects, for reading.
    pub fn index(&self) -> RwLockReadGuard<'_, Index> {
        self.index.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Changes the held objects.
    pub fn update(&self, change: impl FnOnce(&mut Index)) {
        change(&mut self.index.write().unwrap_or_else(PoisonError::into_inner));
    }

    /// Whether the request is allowed, and if not why (the reason appended to the 403).
    pub fn authorize(&self, attrs: &Attributes) -> Result<(), String> {
        if attrs.user.in_group(user::MASTERS) {
            return Ok(());
        }
        let ix = self.index();
        if let Some(node) = node_name(&attrs.user) {
            match node_decision(&ix, node, attrs) {
                NodeDecision::Allow => return Ok(()),
                NodeDecision::Deny(reason) => return Err(reason),
                NodeDecision::NoOpinion => {}
            }
        }
        let namespace = attrs.resource.as_ref().map_or("", |r| r.namespace.as_str());
        if ix.any_rule(&attrs.user, namespace, &mut |r| rules::allows(r, attrs)) {
            Ok(())
        } else {
            Err(String::new())
        }
    }

    /// The rules that apply to `user` in `namespace` (for rules reviews and escalation).
    #[must_use]
    pub fn rules_for(&self, user: &UserInfo, namespace: &str) -> Vec<PolicyRule> {
        let mut out = self.index().rules_for(user, namespace);
        if node_name(user).is_some() {
            out.extend(NODE_RULES.iter().cloned());
        }
        out
    }
}

enum NodeDecision {
    Allow,
    Deny(String),
    NoOpinion,
}

/// Kubernetes' Node authorizer: Secrets and ConfigMaps only of pods bound to the node,
/// tokens only of the accounts those pods run as,
/// deletes only of its own pods and Node; everything else by the node rules. Claims stay
/// readable by every node: skiff's node daemon is also the local-path provisioner, which
/// watches every claim.
fn node_decision(ix: &Index, node: &str, attrs: &Attributes) -> NodeDecision {
    let Some(r) = &attrs.resource else {
        return NodeDecision::NoOpinion;
    };
    let graph = r.group.is_empty()
        && r.subresource.is_empty()
        && matches!(r.resource.as_str(), "secrets" | "configmaps");
    if graph {
        if !matches!(attrs.verb.as_str(), "get" | "list" | "watch") {
            return NodeDecision::NoOpinion;
        }
        if r.name.is_empty() {
            return NodeDecision::Deny(format!(
                "can only read individual {} by name, with a metadata.name field selector",
                r.resource
            ));
        }
        return if ix.node_references(node, &r.resource, &r.namespace, &r.name) {
            NodeDecision::Allow
        } else {
            NodeDecision::Deny(format!(
                "no relationship found between node '{node}' and this object"
            ))
        };
    }
    // Tokens only of the accounts its pods run as (the bound pod itself is checked when the
    // token is issued).
    if r.group.is_empty() && r.resource == "serviceaccounts" && r.subresource == "token" {
        return if attrs.verb == "create"
            && ix.node_references(node, "serviceaccounts", &r.namespace, &r.name)
        {
            NodeDecision::Allow
        } else {
            NodeDecision::Deny(format!(
                "no relationship found between node '{node}' and this object"
            ))
        };
    }
    if r.group.is_empty() && attrs.verb == "delete" {
        let own = match r.resource.as_str() {
            "nodes" => r.name == node,
            // A pod already gone answers 404 from the verbs.
            "pods" => ix.pod_node(&r.namespace, &r.name).is_none_or(|n| n == node),
            _ => true,
        };
        if !own {
            return NodeDecision::Deny(format!(
                "node '{node}' may only delete its own Node and the pods bound to it"
            ));
        }
    }
    if r.group == "coordination.k8s.io"
        && r.resource == "leases"
        && r.namespace == skiff_types::namespace::KUBE_NODE_LEASE
        && matches!(attrs.verb.as_str(), "update" | "patch" | "delete")
        && r.name != node
    {
        return NodeDecision::Deny(format!(
            "can only access node lease with the same name as the requesting node ({node})"
        ));
    }
    if NODE_RULES.iter().any(|rule| rules::allows(rule, attrs)) {
        NodeDecision::Allow
    } else {
        NodeDecision::NoOpinion
    }
}

#[cfg(test)]
mod tests;
