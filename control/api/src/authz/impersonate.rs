//! Impersonation (`Impersonate-User`, `-Group`, `-Uid`, `-Extra-*` headers): the caller
//! acts as another user once allowed the `impersonate` verb on each requested users,
//! serviceaccounts, groups, uids and userextras, as kube-apiserver's `WithImpersonation`.

use std::collections::BTreeMap;

use http::HeaderMap;
use skiff_machinery::{
    status::StatusError,
    user::{self, UserInfo},
};

use super::{
    Authorizer,
    attributes::{Attributes, ResourceAttributes, forbidden},
};

const USER: &str = "impersonate-user";
const GROUP: &str = "impersonate-group";
const UID: &str = "impersonate-uid";
const EXTRA: &str = "impersonate-extra-";

fn values<'a>(headers: &'a HeaderMap, name: &str) -> Vec<&'a str> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect()
}

/// The user the request acts as: `caller` itself without impersonation headers.
///
/// # Errors
/// 403 in kube's wording when the caller may not impersonate what it asks; 400 for groups,
/// uid or extras without a user.
pub fn impersonate(
    authz: &Authorizer,
    caller: UserInfo,
    headers: &HeaderMap,
) -> Result<UserInfo, StatusError> {
    let name = values(headers, USER).first().map(|s| (*s).to_owned());
    let groups: Vec<String> = values(headers, GROUP)
        .into_iter()
        .map(str::to_owned)
        .collect();
    let uid = values(headers, UID).first().map(|s| (*s).to_owned());
    let mut extra: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (key, value) in headers {
        if let Some(k) = key.as_str().strip_prefix(EXTRA)
            && let Ok(v) = value.to_str()
        {
            let k = percent_decode(k);
            extra.entry(k).or_default().push(v.to_owned());
        }
    }
    let Some(name) = name else {
        if groups.is_empty() && uid.is_none() && extra.is_empty() {
            return Ok(caller);
        }
        return Err(StatusError::bad_request(
            "requested impersonation of groups, uid or extra without impersonating a user",
        ));
    };
    let check = |group: &str, resource: &str, namespace: &str, object: &str, sub: &str| {
        let attrs = Attributes {
            user: caller.clone(),
            verb: "impersonate".into(),
            resource: Some(ResourceAttributes {
                group: group.into(),
                resource: resource.into(),
                subresource: sub.into(),
                namespace: namespace.into(),
                name: object.into(),
                ..ResourceAttributes::default()
            }),
            path: String::new(),
        };
        authz
            .authorize(&attrs)
            .map_err(|reason| forbidden(&attrs, &reason))
    };
    let mut groups_out = groups.clone();
    if let Some(sa) = name.strip_prefix(user::SERVICE_ACCOUNT_PREFIX) {
        let (ns, sa_name) = sa.split_once(':').unwrap_or(("", sa));
        check("", "serviceaccounts", ns, sa_name, "")?;
        if groups.is_empty() {
            groups_out = vec![
                user::SERVICE_ACCOUNTS.to_owned(),
                format!("{}:{ns}", user::SERVICE_ACCOUNTS),
            ];
        }
    } else {
        check("", "users", "", &name, "")?;
    }
    for g in &groups {
        check("", "groups", "", g, "")?;
    }
    if let Some(uid) = &uid {
        check("authentication.k8s.io", "uids", "", uid, "")?;
    }
    for (key, vals) in &extra {
        for v in vals {
            check("authentication.k8s.io", "userextras", "", v, key)?;
        }
    }
    if name != "system:anonymous" && !groups_out.iter().any(|g| g == user::AUTHENTICATED) {
        groups_out.push(user::AUTHENTICATED.to_owned());
    }
    Ok(UserInfo {
        name,
        uid: uid.unwrap_or_default(),
        groups: groups_out,
        extra,
    })
}

/// Header names carry extra keys percent-encoded (`Impersonate-Extra-scopes%2Fx`).
fn percent_decode(s: &str) -> String {
    form_urlencoded::parse(format!("k={s}").as_bytes())
        .next()
        .map_or_else(|| s.to_owned(), |(_, v)| v.into_owned())
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;
    use serde_json::json;

    use super::*;
    use crate::authz::index::Held;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn impersonation_needs_the_impersonate_verb_on_each_part() {
        let authz = Authorizer::default();
        let admin = UserInfo::new("root", [user::MASTERS]);
        let as_alice = headers(&[("impersonate-user", "alice"), ("impersonate-group", "dev")]);
        let alice = impersonate(&authz, admin, &as_alice).unwrap();
        assert_eq!(alice.name, "alice");
        assert_eq!(alice.groups, ["dev", user::AUTHENTICATED]);

        let bob = UserInfo::new("bob", Vec::<String>::new());
        let err = impersonate(&authz, bob.clone(), &as_alice).unwrap_err();
        assert_eq!(
            err.message,
            r#"users "alice" is forbidden: User "bob" cannot impersonate resource "users" in API group "" at the cluster scope"#
        );
        authz.update(|ix| {
            ix.apply(Held::ClusterRole, "", "imp", Some(&json!({"metadata": {"name": "imp"}, "rules": [
                {"verbs": ["impersonate"], "apiGroups": [""], "resources": ["users"], "resourceNames": ["alice"]}]})));
            ix.apply(Held::ClusterRoleBinding, "", "imp", Some(&json!({"metadata": {"name": "imp"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "imp"},
                "subjects": [{"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": "bob"}]})));
        });
        let only_user = headers(&[("impersonate-user", "alice")]);
        assert_eq!(
            impersonate(&authz, bob.clone(), &only_user).unwrap().name,
            "alice"
        );
        let err = impersonate(&authz, bob.clone(), &as_alice).unwrap_err();
        assert!(
            err.message.starts_with(r#"groups "dev" is forbidden"#),
            "{}",
            err.message
        );
        assert_eq!(
            impersonate(&authz, bob.clone(), &HeaderMap::new()).unwrap(),
            bob
        );
        assert_eq!(
            impersonate(&authz, bob, &headers(&[("impersonate-group", "x")]))
                .unwrap_err()
                .code,
            400
        );
    }
}
