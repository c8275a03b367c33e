//! RBAC kinds (`rbac.authorization.k8s.io/v1`): `Role` and `ClusterRole` rules, `RoleBinding`
//! and `ClusterRoleBinding` references, validated as kube-apiserver does, with kubectl's columns.

use serde_json::{Value, json};
use skiff_machinery::{status::Cause, validation::NameRule};

use crate::{
    Strategy,
    table::{self, AGE, Column, NAME, col},
};

/// The API group of RBAC kinds (and of `User`/`Group` subjects and role references).
pub const RBAC_GROUP: &str = "rbac.authorization.k8s.io";

const CREATED_AT: Column = col(
    "Created At",
    "date",
    0,
    "CreationTimestamp is a timestamp representing the server time when this object was created.",
);

fn strings(v: Option<&Value>) -> Vec<&str> {
    v.and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// Kubernetes' `ValidatePolicyRule`.
fn rule(r: &Value, field: &str, namespaced: bool, causes: &mut Vec<Cause>) {
    let verbs = strings(r.get("verbs"));
    if verbs.is_empty() {
        causes.push(Cause::required(&format!("{field}.verbs")));
    }
    let urls = strings(r.get("nonResourceURLs"));
    let groups = r.get("apiGroups").and_then(Value::as_array);
    let resources = strings(r.get("resources"));
    if !urls.is_empty() {
        if namespaced {
            causes.push(Cause::invalid(
                &format!("{field}.nonResourceURLs"),
                &json!(urls),
                "namespaced rules cannot apply to non-resource URLs",
            ));
        }
        if groups.is_some_and(|g| !g.is_empty())
            || !resources.is_empty()
            || !strings(r.get("resourceNames")).is_empty()
        {
            causes.push(Cause::invalid(
                &format!("{field}.nonResourceURLs"),
                &json!(urls),
                "rules cannot apply to both regular resources and non-resource URLs",
            ));
        }
        return;
    }
    if groups.is_none_or(Vec::is_empty) {
        causes.push(Cause::required(&format!("{field}.apiGroups")));
    }
    if resources.is_empty() {
        causes.push(Cause::required(&format!("{field}.resources")));
    }
}

/// `Role` (namespaced) and `ClusterRole` (with `aggregationRule`).
#[derive(Debug)]
pub struct Role {
    /// Whether this is the namespaced `Role`.
    pub namespaced: bool,
}

impl Strategy for Role {
    fn name_rule(&self) -> NameRule {
        NameRule::PathSegment
    }

    fn validate(&self, obj: &Value) -> Vec<Cause> {
        let mut causes = Vec::new();
        for (i, r) in obj
            .get("rules")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            rule(r, &format!("rules[{i}]"), self.namespaced, &mut causes);
        }
        if let Some(agg) = obj.get("aggregationRule").filter(|a| !a.is_null())
            && agg
                .get("clusterRoleSelectors")
                .and_then(Value::as_array)
                .is_none_or(Vec::is_empty)
        {
            causes.push(Cause::required("aggregationRule.clusterRoleSelectors"));
        }
        causes
    }

    fn columns(&self) -> &'static [Column] {
        &[NAME, CREATED_AT]
    }

    fn row(&self, o: &Value, _now: jiff::Timestamp) -> Vec<Value> {
        vec![
            table::name(o),
            json!(table::text(o, "/metadata/creationTimestamp")),
        ]
    }
}

/// `RoleBinding` and `ClusterRoleBinding`.
#[derive(Debug)]
pub struct Binding {
    /// Whether this is the namespaced `RoleBinding` (which may reference a `Role`).
    pub namespaced: bool,
}

const ROLE: Column = col("Role", "string", 0, "Role.");
const USERS: Column = col("Users", "string", 1, "Users in the binding.");
const GROUPS: Column = col("Groups", "string", 1, "Groups in the binding.");
const SERVICE_ACCOUNTS: Column = col(
    "ServiceAccounts",
    "string",
    1,
    "ServiceAccounts in the binding.",
);

impl Strategy for Binding {
    fn name_rule(&self) -> NameRule {
        NameRule::PathSegment
    }

    fn validate(&self, obj: &Value) -> Vec<Cause> {
        let mut causes = Vec::new();
        let role_ref = obj.get("roleRef").unwrap_or(&Value::Null);
        if role_ref.get("apiGroup").and_then(Value::as_str) != Some(RBAC_GROUP) {
            causes.push(Cause::not_supported(
                "roleRef.apiGroup",
                role_ref.get("apiGroup").unwrap_or(&Value::Null),
                &[RBAC_GROUP],
            ));
        }
        let kinds: &[&str] = if self.namespaced {
            &["Role", "ClusterRole"]
        } else {
            &["ClusterRole"]
        };
        let kind = role_ref.get("kind").and_then(Value::as_str).unwrap_or("");
        if !kinds.contains(&kind) {
            causes.push(Cause::not_supported("roleRef.kind", &json!(kind), kinds));
        }
        if role_ref
            .get("name")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            causes.push(Cause::required("roleRef.name"));
        }
        for (i, s) in obj
            .get("subjects")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            subject(s, &format!("subjects[{i}]"), self.namespaced, &mut causes);
        }
        causes
    }

    fn validate_update(&self, old: &Value, new: &Value) -> Vec<Cause> {
        let mut causes = self.validate(new);
        if old.get("roleRef") != new.get("roleRef") {
            causes.push(Cause::invalid(
                "roleRef",
                new.get("roleRef").unwrap_or(&Value::Null),
                "cannot change roleRef",
            ));
        }
        causes
    }

    fn columns(&self) -> &'static [Column] {
        &[NAME, ROLE, AGE, USERS, GROUPS, SERVICE_ACCOUNTS]
    }

    fn row(&self, o: &Value, now: jiff::Timestamp) -> Vec<Value> {
        let subjects = |kind: &str| {
            let names: Vec<String> = o
                .get("subjects")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter(|s| s.get("kind").and_then(Value::as_str) == Some(kind))
                .map(|s| {
                    let name = table::text(s, "/name");
                    match s.get("namespace").and_then(Value::as_str) {
                        Some(ns) if kind == "ServiceAccount" => format!("{ns}/{name}"),
                        _ => name.to_owned(),
                    }
                })
                .collect();
            json!(names.join(", "))
        };
        vec![
            table::name(o),
            json!(format!(
                "{}/{}",
                table::text(o, "/roleRef/kind"),
                table::text(o, "/roleRef/name")
            )),
            table::age(o, now),
            subjects("User"),
            subjects("Group"),
            subjects("ServiceAccount"),
        ]
    }
}

/// Kubernetes' `ValidateRoleBindingSubject`.
fn subject(s: &Value, field: &str, namespaced: bool, causes: &mut Vec<Cause>) {
    let name = s.get("name").and_then(Value::as_str).unwrap_or("");
    if name.is_empty() {
        causes.push(Cause::required(&format!("{field}.name")));
    }
    let group = s.get("apiGroup").and_then(Value::as_str).unwrap_or("");
    match s.get("kind").and_then(Value::as_str).unwrap_or("") {
        "ServiceAccount" => {
            if !group.is_empty() {
                causes.push(Cause::not_supported(
                    &format!("{field}.apiGroup"),
                    &json!(group),
                    &[""],
                ));
            }
            if !namespaced
                && s.get("namespace")
                    .and_then(Value::as_str)
                    .is_none_or(str::is_empty)
            {
                causes.push(Cause::required(&format!("{field}.namespace")));
            }
        }
        "User" | "Group" => {
            if group != RBAC_GROUP {
                causes.push(Cause::not_supported(
                    &format!("{field}.apiGroup"),
                    &json!(group),
                    &[RBAC_GROUP],
                ));
            }
        }
        other => causes.push(Cause::not_supported(
            &format!("{field}.kind"),
            &json!(other),
            &["ServiceAccount", "User", "Group"],
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(causes: &[Cause]) -> Vec<&str> {
        causes.iter().map(|c| c.field.as_str()).collect()
    }

    #[test]
    fn rules_need_verbs_and_either_resources_or_urls() {
        let role = Role { namespaced: false };
        let ok = json!({"rules": [
            {"verbs": ["get"], "apiGroups": [""], "resources": ["pods"]},
            {"verbs": ["get"], "nonResourceURLs": ["/healthz"]},
        ]});
        assert!(role.validate(&ok).is_empty());
        let bad = json!({"rules": [
            {"apiGroups": [""], "resources": ["pods"]},
            {"verbs": ["get"], "resources": ["pods"]},
            {"verbs": ["get"], "nonResourceURLs": ["/x"], "resources": ["pods"]},
        ]});
        assert_eq!(
            fields(&role.validate(&bad)),
            [
                "rules[0].verbs",
                "rules[1].apiGroups",
                "rules[2].nonResourceURLs"
            ]
        );
        let ns = Role { namespaced: true };
        let urls = json!({"rules": [{"verbs": ["get"], "nonResourceURLs": ["/x"]}]});
        assert_eq!(fields(&ns.validate(&urls)), ["rules[0].nonResourceURLs"]);
    }

    #[test]
    fn bindings_check_the_role_ref_and_subjects_and_keep_the_role_ref() {
        let crb = Binding { namespaced: false };
        let b = json!({
            "roleRef": {"apiGroup": RBAC_GROUP, "kind": "Role", "name": "x"},
            "subjects": [
                {"kind": "User", "apiGroup": RBAC_GROUP, "name": "alice"},
                {"kind": "ServiceAccount", "name": "default"},
                {"kind": "Robot", "name": "r"},
            ],
        });
        assert_eq!(
            fields(&crb.validate(&b)),
            ["roleRef.kind", "subjects[1].namespace", "subjects[2].kind"]
        );
        let rb = Binding { namespaced: true };
        let old =
            json!({"roleRef": {"apiGroup": RBAC_GROUP, "kind": "ClusterRole", "name": "view"}});
        let new =
            json!({"roleRef": {"apiGroup": RBAC_GROUP, "kind": "ClusterRole", "name": "edit"}});
        assert!(rb.validate(&old).is_empty());
        assert_eq!(fields(&rb.validate_update(&old, &new)), ["roleRef"]);
    }

    #[test]
    fn binding_rows_show_the_role_and_subjects() {
        let b = json!({
            "metadata": {"name": "v"},
            "roleRef": {"apiGroup": RBAC_GROUP, "kind": "ClusterRole", "name": "view"},
            "subjects": [
                {"kind": "User", "apiGroup": RBAC_GROUP, "name": "alice"},
                {"kind": "ServiceAccount", "name": "sa", "namespace": "d"},
            ],
        });
        let row = Binding { namespaced: true }.row(&b, jiff::Timestamp::UNIX_EPOCH);
        assert_eq!(row[1], json!("ClusterRole/view"));
        assert_eq!((&row[3], &row[5]), (&json!("alice"), &json!("d/sa")));
    }
}
