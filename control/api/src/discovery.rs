//! Discovery documents (`/version`, `/api`, `/apis`, resource lists) built from the catalog,
//! as plain JSON: kubectl falls back from aggregated discovery by Content-Type.

use serde_json::{Value, json};
use skiff_resources::all;

use crate::authz::review::Review;

/// Group versions in catalog order, core first.
fn group_versions() -> Vec<(&'static str, &'static str)> {
    let mut out: Vec<(&str, &str)> = Vec::new();
    for r in all() {
        if !out.contains(&(r.group, r.version)) {
            out.push((r.group, r.version));
        }
    }
    out
}

pub fn version() -> Value {
    json!({
        "major": "1",
        "minor": "33",
        "gitVersion": concat!("v1.33.0-skiff.", env!("CARGO_PKG_VERSION")),
        "gitCommit": "",
        "gitTreeState": "clean",
        "buildDate": "1970-01-01T00:00:00Z",
        "goVersion": "rust",
        "compiler": "rustc",
        "platform": format!("linux/{}", std::env::consts::ARCH),
    })
}

pub fn api(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    })
}

/// The groups of the review kinds, served beside the catalog (never stored).
const REVIEW_GROUPS: [&str; 2] = ["authentication.k8s.io", "authorization.k8s.io"];

fn review_group(name: &str) -> Option<Value> {
    REVIEW_GROUPS.contains(&name).then(|| {
        let version = json!({"groupVersion": format!("{name}/v1"), "version": "v1"});
        json!({"name": name, "versions": [version], "preferredVersion": version})
    })
}

fn review_resources(group: &str) -> Option<Value> {
    review_group(group)?;
    let resources: Vec<Value> = Review::ALL
        .iter()
        .filter(|(g, _)| *g == group)
        .map(|(_, r)| {
            json!({
                "name": r.plural(),
                "singularName": r.type_meta().1.to_ascii_lowercase(),
                "namespaced": *r == Review::LocalAccess,
                "kind": r.type_meta().1,
                "verbs": ["create"],
            })
        })
        .collect();
    Some(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": format!("{group}/v1"),
        "resources": resources,
    }))
}

fn group(name: &str) -> Option<Value> {
    if let Some(g) = review_group(name) {
        return Some(g);
    }
    let versions: Vec<Value> = group_versions()
        .into_iter()
        .filter(|(g, _)| *g == name)
        .map(|(g, v)| json!({"groupVersion": format!("{g}/{v}"), "version": v}))
        .collect();
    let preferred = versions.first()?.clone();
    Some(json!({"name": name, "versions": versions, "preferredVersion": preferred}))
}

pub fn apis() -> Value {
    let mut names: Vec<&str> = Vec::new();
    for g in group_versions()
        .into_iter()
        .map(|(g, _)| g)
        .chain(REVIEW_GROUPS)
    {
        if !g.is_empty() && !names.contains(&g) {
            names.push(g);
        }
    }
    let mut groups: Vec<Value> = names.into_iter().filter_map(group).collect();
    groups.push(crate::metrics_api::group());
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

pub fn api_group(name: &str) -> Option<Value> {
    let mut g = group(name)?;
    g["kind"] = json!("APIGroup");
    g["apiVersion"] = json!("v1");
    Some(g)
}

pub fn resource_list(group: &str, version: &str) -> Option<Value> {
    if version == "v1"
        && let Some(list) = review_resources(group)
    {
        return Some(list);
    }
    let kinds: Vec<_> = all()
        .iter()
        .filter(|r| r.group == group && r.version == version)
        .collect();
    if kinds.is_empty() {
        return None;
    }
    let mut resources = Vec::new();
    for r in kinds {
        let mut entry = json!({
            "name": r.plural,
            "singularName": r.singular,
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": r.verbs(),
        });
        if !r.short_names.is_empty() {
            entry["shortNames"] = json!(r.short_names);
        }
        if !r.categories.is_empty() {
            entry["categories"] = json!(r.categories);
        }
        resources.push(entry);
        for sub in r.subresources {
            let mut e = json!({
                "name": format!("{}/{}", r.plural, sub.name()),
                "singularName": "",
                "namespaced": r.namespaced,
                "kind": sub.kind(r.kind),
                "verbs": sub.verbs(),
            });
            if sub.name() == "scale" {
                e["group"] = json!("autoscaling");
                e["version"] = json!("v1");
            }
            resources.push(e);
        }
    }
    let group_version = if group.is_empty() {
        version.to_owned()
    } else {
        format!("{group}/{version}")
    };
    Some(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": resources,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apps_v1_lists_deployments_with_scale_subresource() {
        let list = resource_list("apps", "v1").unwrap();
        let names: Vec<&str> = list["resources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap())
            .collect();
        assert!(names.contains(&"deployments"));
        assert!(names.contains(&"deployments/scale"));
        assert_eq!(list["groupVersion"], "apps/v1");
    }

    #[test]
    fn apis_lists_groups_without_the_core_group() {
        let apis = apis();
        let names: Vec<&str> = apis["groups"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| g["name"].as_str().unwrap())
            .collect();
        assert!(names.contains(&"apps") && names.contains(&"batch"));
        assert!(!names.contains(&""));
        assert_eq!(apis["groups"][0]["preferredVersion"]["version"], "v1");
    }
}
