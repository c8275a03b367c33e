//! Who a request comes from, as authentication finds it and authorization reads it.

use std::collections::BTreeMap;

/// The group every authenticated caller is in.
pub const AUTHENTICATED: &str = "system:authenticated";
/// The group of callers that may do anything (the admin kubeconfig's certificate).
pub const MASTERS: &str = "system:masters";
/// The group of callers without credentials (allowed only on health and version paths).
pub const UNAUTHENTICATED: &str = "system:unauthenticated";
/// The group of every node's identity (`system:node:<name>`).
pub const NODES: &str = "system:nodes";
/// The group of callers holding a bootstrap token (a node that has not joined yet).
pub const BOOTSTRAPPERS: &str = "system:bootstrappers";
/// The group of every ServiceAccount; `system:serviceaccounts:<namespace>` is the group of
/// a namespace's accounts.
pub const SERVICE_ACCOUNTS: &str = "system:serviceaccounts";
/// The prefix of ServiceAccount user names (`system:serviceaccount:<namespace>:<name>`).
pub const SERVICE_ACCOUNT_PREFIX: &str = "system:serviceaccount:";

/// A caller's identity, as Kubernetes' `user.Info`: what authentication produced from a
/// client certificate, a bearer token or a ServiceAccount token, and what RBAC and the
/// Node authorizer decide on.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UserInfo {
    /// The user name (`CN` of a certificate, `system:serviceaccount:ns:name`, ...).
    pub name: String,
    /// A unique id when the authenticator has one (tokens do, certificates do not).
    pub uid: String,
    /// Groups (`O` of a certificate, `system:serviceaccounts:ns`, ...), including
    /// [`AUTHENTICATED`] for every authenticated caller.
    pub groups: Vec<String>,
    /// Authenticator-specific attributes (a bound token's pod name, ...).
    pub extra: BTreeMap<String, Vec<String>>,
}

impl UserInfo {
    /// A user with a name and groups; [`AUTHENTICATED`] is added when missing.
    #[must_use]
    pub fn new(
        name: impl Into<String>,
        groups: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        let mut groups: Vec<String> = groups.into_iter().map(Into::into).collect();
        if !groups.iter().any(|g| g == AUTHENTICATED) {
            groups.push(AUTHENTICATED.to_owned());
        }
        Self {
            name: name.into(),
            groups,
            ..Self::default()
        }
    }

    /// Whether the caller is in `group`.
    #[must_use]
    pub fn in_group(&self, group: &str) -> bool {
        self.groups.iter().any(|g| g == group)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_user_is_always_in_the_authenticated_group_once() {
        let u = UserInfo::new("alice", ["dev", AUTHENTICATED]);
        assert_eq!(u.groups, ["dev", AUTHENTICATED]);
        let v = UserInfo::new("bob", Vec::<String>::new());
        assert!(v.in_group(AUTHENTICATED) && !v.in_group(MASTERS));
    }
}
