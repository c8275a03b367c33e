//! The create-only review kinds, answered from the authorizer and never stored:
//! `SelfSubjectAccessReview`, `SubjectAccessReview`, `LocalSubjectAccessReview` and
//! `SelfSubjectRulesReview` (authorization.k8s.io/v1, for `kubectl auth can-i [--list]`),
//! and `SelfSubjectReview` (authentication.k8s.io/v1, for `kubectl auth whoami`).

use std::collections::BTreeMap;

use serde_json::{Value, json};
use skiff_machinery::{status::StatusError, user::UserInfo};

use super::{
    Authorizer,
    attributes::{Attributes, ResourceAttributes},
};

/// A review kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Review {
    /// `SelfSubjectAccessReview`.
    SelfAccess,
    /// `SubjectAccessReview`.
    Access,
    /// `LocalSubjectAccessReview`.
    LocalAccess,
    /// `SelfSubjectRulesReview`.
    SelfRules,
    /// `SelfSubjectReview`.
    SelfSubject,
}

impl Review {
    /// `apiVersion` and `kind`.
    #[must_use]
    pub fn type_meta(self) -> (&'static str, &'static str) {
        match self {
            Self::SelfAccess => ("authorization.k8s.io/v1", "SelfSubjectAccessReview"),
            Self::Access => ("authorization.k8s.io/v1", "SubjectAccessReview"),
            Self::LocalAccess => ("authorization.k8s.io/v1", "LocalSubjectAccessReview"),
            Self::SelfRules => ("authorization.k8s.io/v1", "SelfSubjectRulesReview"),
            Self::SelfSubject => ("authentication.k8s.io/v1", "SelfSubjectReview"),
        }
    }

    /// The plural resource name.
    #[must_use]
    pub fn plural(self) -> &'static str {
        match self {
            Self::SelfAccess => "selfsubjectaccessreviews",
            Self::Access => "subjectaccessreviews",
            Self::LocalAccess => "localsubjectaccessreviews",
            Self::SelfRules => "selfsubjectrulesreviews",
            Self::SelfSubject => "selfsubjectreviews",
        }
    }

    /// Every review kind with its group.
    pub const ALL: [(&'static str, Self); 5] = [
        ("authorization.k8s.io", Self::SelfAccess),
        ("authorization.k8s.io", Self::Access),
        ("authorization.k8s.io", Self::LocalAccess),
        ("authorization.k8s.io", Self::SelfRules),
        ("authentication.k8s.io", Self::SelfSubject),
    ];
}

/// The review a path names, and the namespace of a local review.
#[must_use]
pub fn at(path: &str) -> Option<(Review, Option<String>)> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    match parts.as_slice() {
        [
            "apis",
            "authorization.k8s.io",
            "v1",
            "namespaces",
            ns,
            "localsubjectaccessreviews",
        ] => Some((Review::LocalAccess, Some((*ns).to_owned()))),
        ["apis", group, "v1", plural] => Review::ALL
            .iter()
            .find(|(g, r)| g == group && r.plural() == *plural && *r != Review::LocalAccess)
            .map(|(_, r)| (*r, None)),
        _ => None,
    }
}

fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

fn text(v: &Value, pointer: &str) -> String {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned()
}

/// The request a review's `spec` asks about.
fn asked(user: UserInfo, spec: &Value) -> Result<Attributes, StatusError> {
    if let Some(r) = spec.get("resourceAttributes").filter(|r| r.is_object()) {
        return Ok(Attributes {
            user,
            verb: text(r, "/verb"),
            resource: Some(ResourceAttributes {
                group: text(r, "/group"),
                version: text(r, "/version"),
                resource: text(r, "/resource"),
                subresource: text(r, "/subresource"),
                namespace: text(r, "/namespace"),
                name: text(r, "/name"),
            }),
            path: String::new(),
        });
    }
    if let Some(n) = spec.get("nonResourceAttributes").filter(|r| r.is_object()) {
        return Ok(Attributes {
            user,
            verb: text(n, "/verb"),
            resource: None,
            path: text(n, "/path"),
        });
    }
    Err(StatusError::invalid(
        "authorization.k8s.io",
        "SubjectAccessReview",
        "",
        vec![skiff_machinery::status::Cause::required(
            "spec.resourceAttributes",
        )],
    ))
}

fn user_json(user: &UserInfo) -> Value {
    let mut u = json!({"username": user.name, "groups": user.groups});
    if !user.uid.is_empty() {
        u["uid"] = json!(user.uid);
    }
    if !user.extra.is_empty() {
        u["extra"] = json!(user.extra);
    }
    u
}

/// Answers a review posted by `caller`.
///
/// # Errors
/// 400 when a local review's namespace does not match its URL; 422 on a spec without
/// attributes.
pub fn answer(
    authz: &Authorizer,
    caller: &UserInfo,
    review: Review,
    url_namespace: Option<&str>,
    mut obj: Value,
) -> Result<Value, StatusError> {
    let (api_version, kind) = review.type_meta();
    obj["apiVersion"] = json!(api_version);
    obj["kind"] = json!(kind);
    if !obj.get("metadata").is_some_and(Value::is_object) {
        obj["metadata"] = json!({});
    }
    obj["metadata"]["creationTimestamp"] = Value::Null;
    let spec = obj.get("spec").cloned().unwrap_or_else(|| json!({}));
    let status = match review {
        Review::SelfSubject => json!({"userInfo": user_json(caller)}),
        Review::SelfRules => {
            let ns = text(&spec, "/namespace");
            rules_status(&authz.rules_for(caller, &ns))
        }
        Review::SelfAccess | Review::Access | Review::LocalAccess => {
            let user = if review == Review::SelfAccess {
                caller.clone()
            } else {
                let extra: BTreeMap<String, Vec<String>> = spec
                    .get("extra")
                    .and_then(|e| serde_json::from_value(e.clone()).ok())
                    .unwrap_or_default();
                UserInfo {
                    name: text(&spec, "/user"),
                    uid: text(&spec, "/uid"),
                    groups: strings(spec.get("groups")),
                    extra,
                }
            };
            let attrs = asked(user, &spec)?;
            if let Some(ns) = url_namespace
                && attrs.resource.as_ref().is_none_or(|r| r.namespace != ns)
            {
                return Err(StatusError::bad_request(format!(
                    "spec.resourceAttributes.namespace must match namespace: {ns}"
                )));
            }
            match authz.authorize(&attrs) {
                Ok(()) => json!({"allowed": true}),
                Err(reason) if reason.is_empty() => json!({"allowed": false}),
                Err(reason) => json!({"allowed": false, "reason": reason}),
            }
        }
    };
    obj["status"] = status;
    Ok(obj)
}

fn rules_status(rules: &[k8s_openapi::api::rbac::v1::PolicyRule]) -> Value {
    let mut resource_rules = Vec::new();
    let mut non_resource_rules = Vec::new();
    for r in rules {
        if r.non_resource_urls.as_ref().is_some_and(|u| !u.is_empty()) {
            non_resource_rules
                .push(json!({"verbs": r.verbs, "nonResourceURLs": r.non_resource_urls}));
        } else {
            let mut rule =
                json!({"verbs": r.verbs, "apiGroups": r.api_groups, "resources": r.resources});
            if let Some(names) = r.resource_names.as_ref().filter(|n| !n.is_empty()) {
                rule["resourceNames"] = json!(names);
            }
            resource_rules.push(rule);
        }
    }
    json!({
        "resourceRules": resource_rules,
        "nonResourceRules": non_resource_rules,
        "incomplete": false,
    })
}

#[cfg(test)]
mod tests {
    use skiff_machinery::user;

    use super::*;
    use crate::authz::index::Held;

    fn authz() -> Authorizer {
        let authz = Authorizer::default();
        authz.update(|ix| {
            ix.apply(Held::ClusterRole, "", "pods", Some(&json!({"metadata": {"name": "pods"},
                "rules": [{"verbs": ["get"], "apiGroups": [""], "resources": ["pods"]}]})));
            ix.apply(Held::RoleBinding, "d", "b", Some(&json!({"metadata": {"name": "b", "namespace": "d"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "pods"},
                "subjects": [{"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": "alice"}]})));
        });
        authz
    }

    fn allowed(v: &Value) -> bool {
        v.pointer("/status/allowed") == Some(&json!(true))
    }

    #[test]
    fn access_reviews_answer_for_the_caller_or_the_named_subject() {
        let authz = authz();
        let alice = UserInfo::new("alice", Vec::<String>::new());
        let admin = UserInfo::new("root", [user::MASTERS]);
        let ask = |ns: &str| json!({"spec": {"resourceAttributes": {"namespace": ns, "verb": "get", "resource": "pods"}}});
        let own = answer(&authz, &alice, Review::SelfAccess, None, ask("d")).unwrap();
        assert!(allowed(&own));
        assert_eq!(own["kind"], "SelfSubjectAccessReview");
        assert!(!allowed(
            &answer(&authz, &alice, Review::SelfAccess, None, ask("e")).unwrap()
        ));
        let mut about_alice = ask("d");
        about_alice["spec"]["user"] = json!("alice");
        assert!(allowed(
            &answer(&authz, &admin, Review::Access, None, about_alice.clone()).unwrap()
        ));
        about_alice["spec"]["user"] = json!("bob");
        assert!(!allowed(
            &answer(&authz, &admin, Review::Access, None, about_alice).unwrap()
        ));
        let err = answer(&authz, &admin, Review::LocalAccess, Some("x"), ask("d")).unwrap_err();
        assert_eq!(err.code, 400);
        let urls = json!({"spec": {"nonResourceAttributes": {"path": "/healthz", "verb": "get"}}});
        assert!(!allowed(
            &answer(&authz, &alice, Review::SelfAccess, None, urls).unwrap()
        ));
    }

    #[test]
    fn rules_and_self_subject_reviews_describe_the_caller() {
        let authz = authz();
        let alice = UserInfo::new("alice", ["dev"]);
        let rules = answer(
            &authz,
            &alice,
            Review::SelfRules,
            None,
            json!({"spec": {"namespace": "d"}}),
        )
        .unwrap();
        assert_eq!(
            rules["status"]["resourceRules"],
            json!([{"verbs": ["get"], "apiGroups": [""], "resources": ["pods"]}])
        );
        assert_eq!(rules["status"]["incomplete"], false);
        let me = answer(&authz, &alice, Review::SelfSubject, None, json!({})).unwrap();
        assert_eq!(
            me["status"]["userInfo"],
            json!({"username": "alice", "groups": ["dev", user::AUTHENTICATED]})
        );
        assert_eq!(me["apiVersion"], "authentication.k8s.io/v1");
        assert_eq!(
            at("/apis/authorization.k8s.io/v1/namespaces/d/localsubjectaccessreviews"),
            Some((Review::LocalAccess, Some("d".to_owned())))
        );
        assert_eq!(
            at("/apis/authorization.k8s.io/v1/localsubjectaccessreviews"),
            None
        );
    }
}
