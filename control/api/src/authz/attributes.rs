//! What a request asks to do, as kube-apiserver's `RequestInfoFactory` reads it from the
//! method, path and query: a verb on a resource (group, resource, subresource, namespace,
//! name) or on a non-resource URL, and the 403 wording for a refusal.

use skiff_machinery::{status::StatusError, user::UserInfo};

/// The part of a request that names a resource.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ResourceAttributes {
    /// API group, empty for the core group.
    pub group: String,
    /// API version.
    pub version: String,
    /// Plural resource name (`pods`).
    pub resource: String,
    /// Subresource (`status`), empty for the main resource.
    pub subresource: String,
    /// Namespace, empty for cluster-scoped requests.
    pub namespace: String,
    /// Object name, empty for collections.
    pub name: String,
}

/// One request to authorize.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attributes {
    /// Who asks.
    pub user: UserInfo,
    /// `get`, `list`, `watch`, `create`, `update`, `patch`, `delete`, `deletecollection`,
    /// or a special verb (`impersonate`, `bind`, `escalate`); lower-case method for
    /// non-resource requests.
    pub verb: String,
    /// The resource, or `None` for a non-resource URL.
    pub resource: Option<ResourceAttributes>,
    /// The URL path.
    pub path: String,
}

/// Kubernetes' `RequestInfoFactory.NewRequestInfo`: `query` answers a query parameter.
pub fn from_request(
    user: UserInfo,
    method: &str,
    path: &str,
    query: &dyn Fn(&str) -> Option<String>,
) -> Attributes {
    let non_resource = |user| Attributes {
        user,
        verb: method.to_ascii_lowercase(),
        resource: None,
        path: path.to_owned(),
    };
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    if parts.len() < 3 || !matches!(parts[0], "api" | "apis") {
        return non_resource(user);
    }
    let mut rest = &parts[1..];
    let mut r = ResourceAttributes::default();
    if parts[0] == "apis" {
        if rest.len() < 3 {
            return non_resource(user);
        }
        rest[0].clone_into(&mut r.group);
        rest = &rest[1..];
    }
    rest[0].clone_into(&mut r.version);
    rest = &rest[1..];
    let mut verb = match method {
        "POST" => "create",
        "GET" | "HEAD" => "get",
        "PUT" => "update",
        "PATCH" => "patch",
        "DELETE" => "delete",
        _ => "",
    }
    .to_owned();
    if matches!(rest.first(), Some(&("watch" | "proxy"))) && rest.len() >= 2 {
        rest[0].clone_into(&mut verb);
        rest = &rest[1..];
    }
    if rest.first() == Some(&"namespaces") && rest.len() > 1 {
        rest[1].clone_into(&mut r.namespace);
        if rest.len() > 2 && !matches!(rest[2], "status" | "finalize") {
            rest = &rest[2..];
        }
    }
    if let Some(resource) = rest.first() {
        (*resource).clone_into(&mut r.resource);
    }
    if let Some(name) = rest.get(1) {
        (*name).clone_into(&mut r.name);
    }
    if let Some(sub) = rest.get(2)
        && verb != "proxy"
    {
        (*sub).clone_into(&mut r.subresource);
    }
    if r.name.is_empty() && verb == "get" {
        let watch = query("watch").is_some_and(|w| w == "true" || w == "1");
        if watch { "watch" } else { "list" }.clone_into(&mut verb);
    }
    if r.name.is_empty()
        && matches!(verb.as_str(), "list" | "watch")
        && let Some(name) = query("fieldSelector").as_deref().and_then(exact_name)
    {
        r.name = name;
    }
    if r.name.is_empty() && verb == "delete" {
        "deletecollection".clone_into(&mut verb);
    }
    Attributes {
        user,
        verb,
        resource: Some(r),
        path: path.to_owned(),
    }
}

/// The name a field selector pins with `metadata.name=x` (a list or watch of one object).
fn exact_name(selector: &str) -> Option<String> {
    let [one] = selector.split(',').collect::<Vec<_>>()[..] else {
        return None;
    };
    let name = one
        .strip_prefix("metadata.name==")
        .or_else(|| one.strip_prefix("metadata.name="))?;
    (!name.is_empty() && !name.contains(['/', '%'])).then(|| name.to_owned())
}

/// kube-apiserver's `forbiddenMessage` wrapped as `NewForbidden` does:
/// `pods is forbidden: User "x" cannot list resource "pods" in API group "" in the
/// namespace "y"`, with `reason` appended when there is one.
pub fn forbidden(attrs: &Attributes, reason: &str) -> StatusError {
    let user = &attrs.user.name;
    let verb = &attrs.verb;
    let Some(r) = &attrs.resource else {
        let mut message = format!(
            "forbidden: User {user:?} cannot {verb} path {:?}",
            attrs.path
        );
        if !reason.is_empty() {
            message = format!("{message}: {reason}");
        }
        return StatusError::forbidden(message);
    };
    let resource = if r.subresource.is_empty() {
        r.resource.clone()
    } else {
        format!("{}/{}", r.resource, r.subresource)
    };
    let mut detail = if r.namespace.is_empty() {
        format!(
            "User {user:?} cannot {verb} resource {resource:?} in API group {:?} at the cluster scope",
            r.group
        )
    } else {
        format!(
            "User {user:?} cannot {verb} resource {resource:?} in API group {:?} in the namespace {:?}",
            r.group, r.namespace
        )
    };
    if !reason.is_empty() {
        detail = format!("{detail}: {reason}");
    }
    StatusError::forbidden_on(&r.group, &r.resource, &r.name, &detail)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(method: &str, path: &str, query: &[(&str, &str)]) -> Attributes {
        let q: Vec<(String, String)> = query
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        from_request(UserInfo::new("u", ["g"]), method, path, &|k| {
            q.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone())
        })
    }

    fn res(a: &Attributes) -> (&str, &str, &str, &str, &str, &str) {
        let r = a.resource.as_ref().expect("a resource request");
        (
            a.verb.as_str(),
            r.group.as_str(),
            r.resource.as_str(),
            r.subresource.as_str(),
            r.namespace.as_str(),
            r.name.as_str(),
        )
    }

    #[test]
    fn verbs_follow_method_name_and_query() {
        let a = attrs("GET", "/api/v1/namespaces/d/pods", &[]);
        assert_eq!(res(&a), ("list", "", "pods", "", "d", ""));
        let a = attrs("GET", "/api/v1/pods", &[("watch", "true")]);
        assert_eq!(res(&a), ("watch", "", "pods", "", "", ""));
        let a = attrs("GET", "/api/v1/watch/namespaces/d/pods", &[]);
        assert_eq!(res(&a), ("watch", "", "pods", "", "d", ""));
        let a = attrs("DELETE", "/apis/apps/v1/namespaces/d/deployments", &[]);
        assert_eq!(
            res(&a),
            ("deletecollection", "apps", "deployments", "", "d", "")
        );
        let a = attrs(
            "PATCH",
            "/apis/apps/v1/namespaces/d/deployments/w/scale",
            &[],
        );
        assert_eq!(res(&a), ("patch", "apps", "deployments", "scale", "d", "w"));
        let a = attrs(
            "GET",
            "/api/v1/namespaces/d/secrets",
            &[("fieldSelector", "metadata.name=s")],
        );
        assert_eq!(res(&a), ("list", "", "secrets", "", "d", "s"));
    }

    #[test]
    fn a_namespace_is_its_own_namespace_and_discovery_is_not_a_resource() {
        let a = attrs("GET", "/api/v1/namespaces/kube-system", &[]);
        assert_eq!(
            res(&a),
            ("get", "", "namespaces", "", "kube-system", "kube-system")
        );
        let a = attrs("PUT", "/api/v1/namespaces/x/finalize", &[]);
        assert_eq!(res(&a), ("update", "", "namespaces", "finalize", "x", "x"));
        for path in [
            "/api",
            "/api/v1",
            "/apis/apps/v1",
            "/healthz",
            "/openapi/v3",
        ] {
            let a = attrs("GET", path, &[]);
            assert!(a.resource.is_none(), "{path}");
            assert_eq!(a.verb, "get");
        }
    }

    #[test]
    fn refusals_use_kubes_wording() {
        let a = attrs("GET", "/api/v1/namespaces/y/pods", &[]);
        let e = forbidden(&a, "");
        assert_eq!(e.code, 403);
        assert_eq!(
            e.message,
            r#"pods is forbidden: User "u" cannot list resource "pods" in API group "" in the namespace "y""#
        );
        let a = attrs(
            "POST",
            "/apis/rbac.authorization.k8s.io/v1/clusterroles",
            &[],
        );
        assert_eq!(
            forbidden(&a, "").message,
            r#"clusterroles.rbac.authorization.k8s.io is forbidden: User "u" cannot create resource "clusterroles" in API group "rbac.authorization.k8s.io" at the cluster scope"#
        );
        let a = attrs("GET", "/api/v1/namespaces/y/pods/p/log", &[]);
        assert_eq!(
            forbidden(&a, "").message,
            r#"pods "p" is forbidden: User "u" cannot get resource "pods/log" in API group "" in the namespace "y""#
        );
        let a = attrs("GET", "/metrics", &[]);
        assert_eq!(
            forbidden(&a, "").message,
            r#"forbidden: User "u" cannot get path "/metrics""#
        );
    }
}
