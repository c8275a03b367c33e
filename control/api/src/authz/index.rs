//! The RBAC objects (and what the Node authorizer needs of pods) held in memory, so that
//! authorizing a request reads no store: which rules apply to a user in a namespace, with
//! `ClusterRole` aggregation resolved from the held roles' labels.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use k8s_openapi::api::rbac::v1::{
    ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject,
};
use serde_json::Value;
use skiff_machinery::{
    selector::LabelSelector,
    user::{SERVICE_ACCOUNT_PREFIX, UserInfo},
};

/// A kind the index holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Held {
    /// `ClusterRole`.
    ClusterRole,
    /// `ClusterRoleBinding`.
    ClusterRoleBinding,
    /// `Role`.
    Role,
    /// `RoleBinding`.
    RoleBinding,
    /// `Pod` (node and referenced Secrets, ConfigMaps, claims).
    Pod,
}

impl Held {
    /// Every held kind with its `apiVersion` and `kind`.
    pub const ALL: [(Self, &'static str, &'static str); 5] = [
        (
            Self::ClusterRole,
            "rbac.authorization.k8s.io/v1",
            "ClusterRole",
        ),
        (
            Self::ClusterRoleBinding,
            "rbac.authorization.k8s.io/v1",
            "ClusterRoleBinding",
        ),
        (Self::Role, "rbac.authorization.k8s.io/v1", "Role"),
        (
            Self::RoleBinding,
            "rbac.authorization.k8s.io/v1",
            "RoleBinding",
        ),
        (Self::Pod, "v1", "Pod"),
    ];
}

/// What a pod tells the Node authorizer: where it runs and what it reads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodRefs {
    /// `spec.nodeName`.
    pub node: String,
    /// Secrets of volumes, env, envFrom and image pull secrets.
    pub secrets: BTreeSet<String>,
    /// ConfigMaps of volumes, env and envFrom.
    pub config_maps: BTreeSet<String>,
    /// `PersistentVolumeClaims` of volumes.
    pub claims: BTreeSet<String>,
    /// `spec.serviceAccountName` (`default` when unset), whose tokens the node may request.
    pub service_account: String,
}

impl PodRefs {
    /// Reads them from a pod's JSON.
    #[must_use]
    pub fn of(pod: &Value) -> Self {
        let mut refs = Self {
            node: pod
                .pointer("/spec/nodeName")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned(),
            service_account: pod
                .pointer("/spec/serviceAccountName")
                .and_then(Value::as_str)
                .filter(|n| !n.is_empty())
                .unwrap_or("default")
                .to_owned(),
            ..Self::default()
        };
        let s = |v: &Value, p: &str| v.pointer(p).and_then(Value::as_str).map(str::to_owned);
        for volume in items(pod, "/spec/volumes") {
            refs.secrets.extend(s(volume, "/secret/secretName"));
            refs.config_maps.extend(s(volume, "/configMap/name"));
            refs.claims
                .extend(s(volume, "/persistentVolumeClaim/claimName"));
            for source in items(volume, "/projected/sources") {
                refs.secrets.extend(s(source, "/secret/name"));
                refs.config_maps.extend(s(source, "/configMap/name"));
            }
        }
        for secret in items(pod, "/spec/imagePullSecrets") {
            refs.secrets.extend(s(secret, "/name"));
        }
        for list in ["initContainers", "containers", "ephemeralContainers"] {
            for c in items(pod, &format!("/spec/{list}")) {
                for env in items(c, "/env") {
                    refs.secrets.extend(s(env, "/valueFrom/secretKeyRef/name"));
                    refs.config_maps
                        .extend(s(env, "/valueFrom/configMapKeyRef/name"));
                }
                for from in items(c, "/envFrom") {
                    refs.secrets.extend(s(from, "/secretRef/name"));
                    refs.config_maps.extend(s(from, "/configMapRef/name"));
                }
            }
        }
        refs
    }
}

/// The array at `p` under `v`, borrowed: every pod event passes through [`PodRefs::of`], and
/// its containers are most of the pod.
fn items<'v>(v: &'v Value, p: &str) -> &'v [Value] {
    v.pointer(p)
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

/// The held objects.
#[derive(Debug, Default)]
pub struct Index {
    cluster_roles: HashMap<String, ClusterRole>,
    /// Every `ClusterRole`'s rules with aggregation resolved, recomputed when a `ClusterRole`
    /// changes so that a check only reads.
    effective: HashMap<String, Vec<PolicyRule>>,
    cluster_role_bindings: HashMap<String, ClusterRoleBinding>,
    roles: HashMap<(String, String), Role>,
    /// Namespace, then name.
    role_bindings: HashMap<String, HashMap<String, RoleBinding>>,
    /// (namespace, name) of every pod.
    pods: HashMap<(String, String), PodRefs>,
}

fn decode<T: serde::de::DeserializeOwned>(obj: &Value) -> Option<T> {
    match serde_json::from_value(obj.clone()) {
        Ok(t) => Some(t),
        Err(err) => {
            tracing::warn!(%err, "an RBAC object the authorizer cannot read");
            None
        }
    }
}

impl Index {
    /// Puts (`Some`) or removes (`None`) one object.
    pub fn apply(&mut self, kind: Held, namespace: &str, name: &str, obj: Option<&Value>) {
        let ns = namespace.to_owned();
        let n = name.to_owned();
        match kind {
            Held::ClusterRole => {
                match obj.and_then(decode) {
                    Some(o) => self.cluster_roles.insert(n, o),
                    None => self.cluster_roles.remove(name),
                };
                self.reaggregate();
            }
            Held::ClusterRoleBinding => {
                match obj.and_then(decode) {
                    Some(o) => self.cluster_role_bindings.insert(n, o),
                    None => self.cluster_role_bindings.remove(name),
                };
            }
            Held::Role => {
                match obj.and_then(decode) {
                    Some(o) => self.roles.insert((ns, n), o),
                    None => self.roles.remove(&(ns, n)),
                };
            }
            Held::RoleBinding => {
                let in_ns = self.role_bindings.entry(ns).or_default();
                match obj.and_then(decode) {
                    Some(o) => in_ns.insert(n, o),
                    None => in_ns.remove(name),
                };
            }
            Held::Pod => {
                match obj {
                    Some(o) => self.pods.insert((ns, n), PodRefs::of(o)),
                    None => self.pods.remove(&(ns, n)),
                };
            }
        }
    }

    /// Forgets every object of `kind` (before a fresh list).
    pub fn clear(&mut self, kind: Held) {
        match kind {
            Held::ClusterRole => {
                self.cluster_roles.clear();
                self.effective.clear();
            }
            Held::ClusterRoleBinding => self.cluster_role_bindings.clear(),
            Held::Role => self.roles.clear(),
            Held::RoleBinding => self.role_bindings.clear(),
            Held::Pod => self.pods.clear(),
        }
    }

    /// A `ClusterRole`'s rules, with an `aggregationRule` resolved to the rules of every
    /// `ClusterRole` its selectors match (transitively), as the clusterrole-aggregation
    /// controller writes them.
    #[must_use]
    pub fn cluster_role_rules(&self, name: &str) -> Vec<PolicyRule> {
        self.effective.get(name).cloned().unwrap_or_default()
    }

    fn reaggregate(&mut self) {
        let effective = self
            .cluster_roles
            .keys()
            .map(|name| {
                let mut seen = HashSet::new();
                let mut out = Vec::new();
                self.collect(name, &mut seen, &mut out);
                (name.clone(), out)
            })
            .collect();
        self.effective = effective;
    }

    fn collect(&self, name: &str, seen: &mut HashSet<String>, out: &mut Vec<PolicyRule>) {
        if !seen.insert(name.to_owned()) {
            return;
        }
        let Some(role) = self.cluster_roles.get(name) else {
            return;
        };
        let Some(agg) = &role.aggregation_rule else {
            out.extend(role.rules.iter().flatten().cloned());
            return;
        };
        let selectors: Vec<LabelSelector> = agg
            .cluster_role_selectors
            .iter()
            .flatten()
            .filter_map(|s| LabelSelector::from_k8s(&serde_json::to_value(s).ok()?).ok())
            .collect();
        let mut names: Vec<&String> = self
            .cluster_roles
            .iter()
            .filter(|(n, r)| {
                *n != name && {
                    let labels: BTreeMap<String, String> =
                        r.metadata.labels.clone().unwrap_or_default();
                    selectors
                        .iter()
                        .any(|s| !s.is_empty() && s.matches(&labels))
                }
            })
            .map(|(n, _)| n)
            .collect();
        names.sort();
        for n in names {
            self.collect(n, seen, out);
        }
    }

    /// The names of the `ClusterRoles` with an `aggregationRule`.
    #[must_use]
    pub fn aggregated(&self) -> Vec<String> {
        self.cluster_roles
            .iter()
            .filter(|(_, r)| r.aggregation_rule.is_some())
            .map(|(n, _)| n.clone())
            .collect()
    }

    fn role_ref_rules(&self, namespace: &str, role_ref: &RoleRef) -> &[PolicyRule] {
        match role_ref.kind.as_str() {
            "ClusterRole" => self
                .effective
                .get(&role_ref.name)
                .map_or(&[], Vec::as_slice),
            "Role" => self
                .roles
                .get(&(namespace.to_owned(), role_ref.name.clone()))
                .and_then(|r| r.rules.as_deref())
                .unwrap_or(&[]),
            _ => &[],
        }
    }

    /// The rules of a role reference as a binding in `namespace` (empty: cluster) sees it.
    #[must_use]
    pub fn rules_of_ref(&self, namespace: &str, role_ref: &RoleRef) -> Vec<PolicyRule> {
        self.role_ref_rules(namespace, role_ref).to_vec()
    }

    /// Visits the rules that apply to `user` in `namespace` (cluster-wide bindings first)
    /// until `visit` returns true; returns whether one did.
    pub fn any_rule(
        &self,
        user: &UserInfo,
        namespace: &str,
        visit: &mut dyn FnMut(&PolicyRule) -> bool,
    ) -> bool {
        for b in self.cluster_role_bindings.values() {
            if applies(b.subjects.as_deref(), user, "")
                && self.role_ref_rules("", &b.role_ref).iter().any(&mut *visit)
            {
                return true;
            }
        }
        if namespace.is_empty() {
            return false;
        }
        for b in self
            .role_bindings
            .get(namespace)
            .into_iter()
            .flat_map(HashMap::values)
        {
            if applies(b.subjects.as_deref(), user, namespace)
                && self
                    .role_ref_rules(namespace, &b.role_ref)
                    .iter()
                    .any(&mut *visit)
            {
                return true;
            }
        }
        false
    }

    /// Every rule that applies to `user` in `namespace`.
    #[must_use]
    pub fn rules_for(&self, user: &UserInfo, namespace: &str) -> Vec<PolicyRule> {
        let mut out = Vec::new();
        self.any_rule(user, namespace, &mut |r| {
            out.push(r.clone());
            false
        });
        out
    }

    /// Whether a pod bound to `node` references `kind`'s object `namespace/name`.
    #[must_use]
    pub fn node_references(&self, node: &str, kind: &str, namespace: &str, name: &str) -> bool {
        self.pods.iter().any(|((ns, _), p)| {
            ns == namespace
                && p.node == node
                && match kind {
                    "secrets" => p.secrets.contains(name),
                    "configmaps" => p.config_maps.contains(name),
                    "persistentvolumeclaims" => p.claims.contains(name),
                    "serviceaccounts" => p.service_account == name,
                    _ => false,
                }
        })
    }

    /// The node a pod is bound to, if the pod exists.
    #[must_use]
    pub fn pod_node(&self, namespace: &str, name: &str) -> Option<&str> {
        self.pods
            .get(&(namespace.to_owned(), name.to_owned()))
            .map(|p| p.node.as_str())
    }
}

/// Whether a binding's subjects include `user`; `ServiceAccounts` without a namespace take the
/// binding's.
fn applies(subjects: Option<&[Subject]>, user: &UserInfo, namespace: &str) -> bool {
    subjects
        .into_iter()
        .flatten()
        .any(|s| match s.kind.as_str() {
            "User" => s.name == user.name,
            "Group" => user.in_group(&s.name),
            "ServiceAccount" => {
                let ns = s
                    .namespace
                    .as_deref()
                    .filter(|n| !n.is_empty())
                    .unwrap_or(namespace);
                user.name == format!("{SERVICE_ACCOUNT_PREFIX}{ns}:{}", s.name)
            }
            _ => false,
        })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn index(objects: &[(Held, &str, Value)]) -> Index {
        let mut ix = Index::default();
        for (kind, ns, obj) in objects {
            let name = obj
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or("");
            ix.apply(*kind, ns, name, Some(obj));
        }
        ix
    }

    fn names(rules: &[PolicyRule]) -> Vec<String> {
        rules
            .iter()
            .flat_map(|r| r.resources.clone().unwrap_or_default())
            .collect()
    }

    #[test]
    fn aggregated_roles_take_the_rules_of_matching_roles_transitively() {
        let ix = index(&[
            (
                Held::ClusterRole,
                "",
                json!({"metadata": {"name": "top"}, "aggregationRule": {"clusterRoleSelectors": [{"matchLabels": {"to-top": "true"}}]}}),
            ),
            (
                Held::ClusterRole,
                "",
                json!({"metadata": {"name": "mid", "labels": {"to-top": "true"}}, "aggregationRule": {"clusterRoleSelectors": [{"matchLabels": {"to-mid": "true"}}]}}),
            ),
            (
                Held::ClusterRole,
                "",
                json!({"metadata": {"name": "a", "labels": {"to-mid": "true"}}, "rules": [{"verbs": ["get"], "apiGroups": [""], "resources": ["pods"]}]}),
            ),
            (
                Held::ClusterRole,
                "",
                json!({"metadata": {"name": "b", "labels": {"to-top": "true"}}, "rules": [{"verbs": ["get"], "apiGroups": [""], "resources": ["secrets"]}]}),
            ),
            (
                Held::ClusterRole,
                "",
                json!({"metadata": {"name": "c"}, "rules": [{"verbs": ["get"], "apiGroups": [""], "resources": ["nodes"]}]}),
            ),
        ]);
        let mut top = names(&ix.cluster_role_rules("top"));
        top.sort();
        assert_eq!(top, ["pods", "secrets"]);
        assert_eq!(names(&ix.cluster_role_rules("mid")), ["pods"]);
    }

    #[test]
    fn bindings_apply_to_users_groups_and_service_accounts() {
        let ix = index(&[
            (
                Held::ClusterRole,
                "",
                json!({"metadata": {"name": "view"}, "rules": [{"verbs": ["get"], "apiGroups": [""], "resources": ["pods"]}]}),
            ),
            (
                Held::Role,
                "d",
                json!({"metadata": {"name": "cm", "namespace": "d"}, "rules": [{"verbs": ["get"], "apiGroups": [""], "resources": ["configmaps"]}]}),
            ),
            (
                Held::RoleBinding,
                "d",
                json!({"metadata": {"name": "v", "namespace": "d"}, "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"}, "subjects": [{"kind": "Group", "apiGroup": "rbac.authorization.k8s.io", "name": "dev"}]}),
            ),
            (
                Held::RoleBinding,
                "d",
                json!({"metadata": {"name": "c", "namespace": "d"}, "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "cm"}, "subjects": [{"kind": "ServiceAccount", "name": "app"}]}),
            ),
            (
                Held::ClusterRoleBinding,
                "",
                json!({"metadata": {"name": "alice"}, "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"}, "subjects": [{"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": "alice"}]}),
            ),
        ]);
        let dev = UserInfo::new("bob", ["dev"]);
        assert_eq!(names(&ix.rules_for(&dev, "d")), ["pods"]);
        assert!(ix.rules_for(&dev, "other").is_empty());
        let sa = UserInfo::new("system:serviceaccount:d:app", Vec::<String>::new());
        assert_eq!(names(&ix.rules_for(&sa, "d")), ["configmaps"]);
        let alice = UserInfo::new("alice", Vec::<String>::new());
        assert_eq!(names(&ix.rules_for(&alice, "")), ["pods"]);
        assert_eq!(names(&ix.rules_for(&alice, "x")), ["pods"]);
        let mut ix = ix;
        ix.apply(Held::ClusterRoleBinding, "", "alice", None);
        assert!(ix.rules_for(&alice, "x").is_empty());
    }

    #[test]
    fn pods_record_their_node_and_what_they_read() {
        let pod = json!({"spec": {
            "nodeName": "n1",
            "imagePullSecrets": [{"name": "pull"}],
            "volumes": [
                {"name": "a", "secret": {"secretName": "vol"}},
                {"name": "b", "projected": {"sources": [{"configMap": {"name": "proj"}}]}},
                {"name": "c", "persistentVolumeClaim": {"claimName": "data"}},
            ],
            "containers": [{"name": "x", "env": [{"name": "E", "valueFrom": {"secretKeyRef": {"name": "env", "key": "k"}}}],
                "envFrom": [{"configMapRef": {"name": "from"}}]}],
        }});
        let refs = PodRefs::of(&pod);
        assert_eq!(refs.node, "n1");
        assert_eq!(
            refs.secrets.iter().map(String::as_str).collect::<Vec<_>>(),
            ["env", "pull", "vol"]
        );
        assert_eq!(refs.config_maps.len(), 2);
        let mut ix = Index::default();
        ix.apply(Held::Pod, "d", "p", Some(&pod));
        assert!(ix.node_references("n1", "secrets", "d", "vol"));
        assert!(!ix.node_references("n2", "secrets", "d", "vol"));
        assert!(ix.node_references("n1", "serviceaccounts", "d", "default"));
        assert!(!ix.node_references("n1", "serviceaccounts", "d", "builder"));
        assert!(!ix.node_references("n1", "secrets", "other", "vol"));
        assert!(ix.node_references("n1", "persistentvolumeclaims", "d", "data"));
    }
}
