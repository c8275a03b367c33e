//! Checks on writes that need the object, not only the request: `NodeRestriction` (a node
//! changes only its own Node, Lease and the pods bound to it) and RBAC escalation
//! prevention (a role or binding grants nothing its writer does not hold, unless the writer
//! may `escalate` or `bind`).

use k8s_openapi::api::rbac::v1::{PolicyRule, RoleRef};
use serde_json::Value;
use skiff_machinery::{
    status::StatusError,
    user::{self, UserInfo},
};
use skiff_resources::{RBAC_GROUP, ResourceInfo};
use skiff_types::namespace;

use super::{
    Authorizer, CALLER,
    attributes::{Attributes, ResourceAttributes},
    node_name, rules,
};
use crate::objects;

/// Admits a create (`old` is `None`) or an update of `new` by the request's caller. Writes
/// the API server makes itself (bootstrap) have no caller and are admitted.
///
/// # Errors
/// 403 when `NodeRestriction` or escalation prevention refuses the write.
pub fn admit(
    authz: &Authorizer,
    info: &ResourceInfo,
    old: Option<&Value>,
    new: &Value,
) -> Result<(), StatusError> {
    let Ok(caller) = CALLER.try_with(Clone::clone) else {
        return Ok(());
    };
    if let Some(node) = node_name(&caller) {
        node_restriction(node, info, old, new)?;
    }
    if info.group == RBAC_GROUP && !caller.in_group(user::MASTERS) {
        escalation(authz, &caller, info, new)?;
    }
    Ok(())
}

/// Kubernetes' `NodeRestriction` admission plugin.
fn node_restriction(
    node: &str,
    info: &ResourceInfo,
    old: Option<&Value>,
    new: &Value,
) -> Result<(), StatusError> {
    let name = objects::name_of(new);
    let refuse = |detail: String| {
        Err(StatusError::forbidden(format!(
            "{} {name:?} is forbidden: {detail}",
            info.plural
        )))
    };
    match (info.group, info.kind) {
        ("", "Node") if name != node => refuse(format!(
            "node {node:?} is not allowed to modify node {name:?}"
        )),
        ("", "Pod") => match old {
            None => refuse(format!(
                "pod does not have \"kubernetes.io/config.mirror\" annotation, node {node:?} can only create mirror pods"
            )),
            Some(old) if old.pointer("/spec/nodeName").and_then(Value::as_str) != Some(node) => {
                refuse(format!(
                    "node {node:?} can only update pod status for pods with spec.nodeName set to itself"
                ))
            }
            Some(_) => Ok(()),
        },
        ("coordination.k8s.io", "Lease")
            if objects::namespace_of(new) == Some(namespace::KUBE_NODE_LEASE) && name != node =>
        {
            refuse(format!(
                "can only access node lease with the same name as the requesting node ({node})"
            ))
        }
        _ => Ok(()),
    }
}

fn yes(
    authz: &Authorizer,
    caller: &UserInfo,
    verb: &str,
    resource: &str,
    ns: &str,
    name: &str,
) -> bool {
    authz
        .authorize(&Attributes {
            user: caller.clone(),
            verb: verb.to_owned(),
            resource: Some(ResourceAttributes {
                group: RBAC_GROUP.to_owned(),
                version: "v1".to_owned(),
                resource: resource.to_owned(),
                namespace: ns.to_owned(),
                name: name.to_owned(),
                ..ResourceAttributes::default()
            }),
            path: String::new(),
        })
        .is_ok()
}

/// kube's `ConfirmNoEscalation` with the `escalate` and `bind` exceptions.
fn escalation(
    authz: &Authorizer,
    caller: &UserInfo,
    info: &ResourceInfo,
    new: &Value,
) -> Result<(), StatusError> {
    let ns = objects::namespace_of(new).unwrap_or("");
    let name = objects::name_of(new);
    let wanted: Vec<PolicyRule> = match info.kind {
        "Role" | "ClusterRole" => {
            if yes(authz, caller, "escalate", info.plural, ns, name) {
                return Ok(());
            }
            serde_json::from_value(new.get("rules").cloned().unwrap_or(Value::Null))
                .unwrap_or_default()
        }
        "RoleBinding" | "ClusterRoleBinding" => {
            let Ok(role_ref) = serde_json::from_value::<RoleRef>(
                new.get("roleRef").cloned().unwrap_or(Value::Null),
            ) else {
                return Ok(());
            };
            let plural = if role_ref.kind == "Role" {
                "roles"
            } else {
                "clusterroles"
            };
            if yes(authz, caller, "bind", plural, ns, &role_ref.name) {
                return Ok(());
            }
            authz.index().rules_of_ref(ns, &role_ref)
        }
        _ => return Ok(()),
    };
    let held = authz.rules_for(caller, ns);
    let missing = rules::uncovered(&held, &wanted);
    if missing.is_empty() {
        return Ok(());
    }
    let listed: Vec<String> = missing.iter().map(describe).collect();
    Err(StatusError::forbidden_on(
        info.group,
        info.plural,
        name,
        &format!(
            "user {:?} (groups={}) is attempting to grant RBAC permissions not currently held:\n{}",
            caller.name,
            go_strings(&caller.groups),
            listed.join("\n")
        ),
    ))
}

fn go_strings(list: &[String]) -> String {
    let quoted: Vec<String> = list.iter().map(|s| format!("{s:?}")).collect();
    format!("[{}]", quoted.join(" "))
}

/// A rule as kube prints it in escalation errors: `{APIGroups:[""], Resources:["pods"], Verbs:["get"]}`.
fn describe(rule: &PolicyRule) -> String {
    let mut parts = Vec::new();
    let mut field = |label: &str, v: Option<&Vec<String>>| {
        if let Some(v) = v.filter(|v| !v.is_empty()) {
            parts.push(format!("{label}:{}", go_strings(v)));
        }
    };
    field("APIGroups", rule.api_groups.as_ref());
    field("Resources", rule.resources.as_ref());
    field("ResourceNames", rule.resource_names.as_ref());
    field("NonResourceURLs", rule.non_resource_urls.as_ref());
    field("Verbs", Some(&rule.verbs));
    format!("{{{}}}", parts.join(", "))
}
