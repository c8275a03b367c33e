//! RBAC rule evaluation, as Kubernetes' `rbac.RuleAllows` and `validation.Covers`: whether
//! a policy rule allows a request, and whether a set of rules holds every permission of
//! another (escalation prevention).

use k8s_openapi::api::rbac::v1::PolicyRule;

use super::attributes::Attributes;

fn has(list: &[String], wanted: &str) -> bool {
    list.iter().any(|v| v == "*" || v == wanted)
}

fn opt(list: Option<&Vec<String>>) -> &[String] {
    list.map_or(&[], Vec::as_slice)
}

/// Whether `rule` lists `resource` (`pods`, `pods/log`): `*`, the exact name, or
/// `*/sub` for any resource's subresource `sub`.
fn resource_matches(rule: &PolicyRule, resource: &str, subresource: &str) -> bool {
    opt(rule.resources.as_ref()).iter().any(|r| {
        r == "*"
            || r == resource
            || (!subresource.is_empty()
                && r.strip_prefix("*/").is_some_and(|sub| sub == subresource))
    })
}

/// Whether `pattern` (`/healthz`, `/apis/*`, `*`) matches `path`.
fn url_matches(pattern: &str, path: &str) -> bool {
    pattern == "*"
        || pattern == path
        || pattern
            .strip_suffix('*')
            .is_some_and(|prefix| path.starts_with(prefix))
}

/// Kubernetes' `RuleAllows`.
#[must_use]
pub fn allows(rule: &PolicyRule, attrs: &Attributes) -> bool {
    if !has(&rule.verbs, &attrs.verb) {
        return false;
    }
    match &attrs.resource {
        Some(r) => {
            let combined = if r.subresource.is_empty() {
                r.resource.clone()
            } else {
                format!("{}/{}", r.resource, r.subresource)
            };
            let names = opt(rule.resource_names.as_ref());
            has(opt(rule.api_groups.as_ref()), &r.group)
                && resource_matches(rule, &combined, &r.subresource)
                && (names.is_empty() || names.contains(&r.name))
        }
        None => opt(rule.non_resource_urls.as_ref())
            .iter()
            .any(|u| url_matches(u, &attrs.path)),
    }
}

/// Whether `owner` holds every permission of `wanted`: each (verb, group, resource, name)
/// or (verb, URL) of `wanted` is covered by one owner rule. Returns what is not covered.
#[must_use]
pub fn uncovered(owner: &[PolicyRule], wanted: &[PolicyRule]) -> Vec<PolicyRule> {
    let mut missing = Vec::new();
    for rule in wanted {
        for simple in break_down(rule) {
            if !owner.iter().any(|o| covers(o, &simple)) {
                missing.push(simple);
            }
        }
    }
    missing
}

/// Splits a rule into rules of one verb and one group/resource/name or one URL each.
fn break_down(rule: &PolicyRule) -> Vec<PolicyRule> {
    let mut out = Vec::new();
    let one = |v: &str| Some(vec![v.to_owned()]);
    for verb in &rule.verbs {
        for group in opt(rule.api_groups.as_ref()) {
            for resource in opt(rule.resources.as_ref()) {
                let names = opt(rule.resource_names.as_ref());
                if names.is_empty() {
                    out.push(PolicyRule {
                        verbs: vec![verb.clone()],
                        api_groups: one(group),
                        resources: one(resource),
                        ..PolicyRule::default()
                    });
                }
                for name in names {
                    out.push(PolicyRule {
                        verbs: vec![verb.clone()],
                        api_groups: one(group),
                        resources: one(resource),
                        resource_names: one(name),
                        ..PolicyRule::default()
                    });
                }
            }
        }
        for url in opt(rule.non_resource_urls.as_ref()) {
            out.push(PolicyRule {
                verbs: vec![verb.clone()],
                non_resource_urls: one(url),
                ..PolicyRule::default()
            });
        }
    }
    out
}

/// Whether `owner` covers the simple rule `wanted` (one verb, one resource or URL).
fn covers(owner: &PolicyRule, wanted: &PolicyRule) -> bool {
    if !wanted.verbs.iter().all(|v| has(&owner.verbs, v)) {
        return false;
    }
    if let Some(url) = opt(wanted.non_resource_urls.as_ref()).first() {
        return opt(owner.non_resource_urls.as_ref())
            .iter()
            .any(|o| url_matches(o, url) && (!url.ends_with('*') || o.ends_with('*')));
    }
    let groups = opt(wanted.api_groups.as_ref());
    let resources = opt(wanted.resources.as_ref());
    let owner_resources = opt(owner.resources.as_ref());
    let owner_names = opt(owner.resource_names.as_ref());
    groups
        .iter()
        .all(|g| has(opt(owner.api_groups.as_ref()), g))
        && resources.iter().all(|r| {
            owner_resources.iter().any(|o| {
                o == "*"
                    || o == r
                    || r.split_once('/')
                        .is_some_and(|(_, sub)| o.strip_prefix("*/").is_some_and(|s| s == sub))
            })
        })
        && (owner_names.is_empty()
            || opt(wanted.resource_names.as_ref())
                .first()
                .is_some_and(|n| owner_names.contains(n)))
}

#[cfg(test)]
pub(crate) fn rule(verbs: &[&str], groups: &[&str], resources: &[&str]) -> PolicyRule {
    let v = |s: &[&str]| s.iter().map(|x| (*x).to_owned()).collect::<Vec<_>>();
    PolicyRule {
        verbs: v(verbs),
        api_groups: Some(v(groups)),
        resources: Some(v(resources)),
        ..PolicyRule::default()
    }
}

#[cfg(test)]
mod tests {
    use skiff_machinery::user::UserInfo;

    use super::*;
    use crate::authz::attributes::ResourceAttributes;

    fn req(verb: &str, group: &str, resource: &str, sub: &str, name: &str) -> Attributes {
        Attributes {
            user: UserInfo::new("u", Vec::<String>::new()),
            verb: verb.into(),
            resource: Some(ResourceAttributes {
                group: group.into(),
                resource: resource.into(),
                subresource: sub.into(),
                namespace: "d".into(),
                name: name.into(),
                ..ResourceAttributes::default()
            }),
            path: String::new(),
        }
    }

    fn url(verb: &str, path: &str) -> Attributes {
        Attributes {
            user: UserInfo::new("u", Vec::<String>::new()),
            verb: verb.into(),
            resource: None,
            path: path.into(),
        }
    }

    #[test]
    fn verbs_groups_and_resources_must_all_match() {
        let r = rule(&["get", "list"], &[""], &["pods"]);
        assert!(allows(&r, &req("get", "", "pods", "", "p")));
        assert!(!allows(&r, &req("create", "", "pods", "", "")));
        assert!(!allows(&r, &req("get", "apps", "pods", "", "p")));
        assert!(!allows(&r, &req("get", "", "pods", "log", "p")));
        let all = rule(&["*"], &["*"], &["*"]);
        assert!(allows(
            &all,
            &req("deletecollection", "apps", "deployments", "", "")
        ));
        assert!(allows(&all, &req("get", "", "pods", "log", "p")));
    }

    #[test]
    fn subresources_match_by_name_or_star_slash() {
        let r = rule(&["get"], &[""], &["pods/log"]);
        assert!(allows(&r, &req("get", "", "pods", "log", "p")));
        assert!(!allows(&r, &req("get", "", "pods", "", "p")));
        let any = rule(&["patch"], &["*"], &["*/status"]);
        assert!(allows(
            &any,
            &req("patch", "apps", "deployments", "status", "w")
        ));
        assert!(!allows(
            &any,
            &req("patch", "apps", "deployments", "scale", "w")
        ));
    }

    #[test]
    fn resource_names_restrict_to_named_objects() {
        let mut r = rule(&["get", "update"], &[""], &["configmaps"]);
        r.resource_names = Some(vec!["cfg".into()]);
        assert!(allows(&r, &req("get", "", "configmaps", "", "cfg")));
        assert!(!allows(&r, &req("get", "", "configmaps", "", "other")));
        assert!(!allows(&r, &req("list", "", "configmaps", "", "")));
    }

    #[test]
    fn non_resource_urls_match_exactly_or_by_trailing_star() {
        let r = PolicyRule {
            verbs: vec!["get".into()],
            non_resource_urls: Some(vec!["/healthz".into(), "/apis/*".into()]),
            ..PolicyRule::default()
        };
        assert!(allows(&r, &url("get", "/healthz")));
        assert!(!allows(&r, &url("get", "/healthz/etcd")));
        assert!(allows(&r, &url("get", "/apis/apps/v1")));
        assert!(!allows(&r, &url("post", "/apis/apps/v1")));
        assert!(!allows(&r, &req("get", "", "healthz", "", "")));
    }

    #[test]
    fn covering_needs_every_verb_resource_and_name() {
        let edit = [rule(
            &["get", "create"],
            &["", "apps"],
            &["pods", "deployments"],
        )];
        assert!(uncovered(&edit, &[rule(&["get"], &[""], &["pods"])]).is_empty());
        let missing = uncovered(&edit, &[rule(&["get", "delete"], &[""], &["pods"])]);
        assert_eq!(missing.len(), 1);
        assert_eq!(missing[0].verbs, ["delete"]);
        assert_eq!(
            uncovered(&edit, &[rule(&["*"], &["*"], &["*"])]).len(),
            1,
            "a wildcard is covered only by a wildcard"
        );
        let mut named = rule(&["get"], &[""], &["secrets"]);
        named.resource_names = Some(vec!["s".into()]);
        assert!(uncovered(&[named.clone()], &[named.clone()]).is_empty());
        assert_eq!(
            uncovered(&[named], &[rule(&["get"], &[""], &["secrets"])]).len(),
            1
        );
        let star_status = [rule(&["patch"], &["apps"], &["*/status"])];
        assert!(
            uncovered(
                &star_status,
                &[rule(&["patch"], &["apps"], &["deployments/status"])]
            )
            .is_empty()
        );
    }
}
