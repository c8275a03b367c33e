//! Maps a request path onto what it names: a discovery document or a resource (kind,
//! namespace, name, subresource), all from the resource catalog.

use skiff_resources::{ResourceInfo, by_plural};

/// What a path names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Version,
    Api,
    Apis,
    ApiGroup(String),
    GroupVersion { group: String, version: String },
    OpenApiRoot,
    OpenApiDocument { group: String, version: String },
    Health,
    Metrics,
    Backup,
    Resource(ResourceRoute),
    NotFound,
}

/// A resource path.
#[derive(Debug, Clone)]
pub struct ResourceRoute {
    pub info: &'static ResourceInfo,
    /// Set for namespaced paths; `None` on a namespaced kind means all namespaces.
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub subresource: Option<String>,
    /// The legacy `/watch/` path form.
    pub watch: bool,
}

impl PartialEq for ResourceRoute {
    fn eq(&self, other: &Self) -> bool {
        // Catalog entries are unique statics: the same kind is the same address.
        std::ptr::eq(self.info, other.info)
            && self.namespace == other.namespace
            && self.name == other.name
            && self.subresource == other.subresource
            && self.watch == other.watch
    }
}

impl Eq for ResourceRoute {}

pub fn route(path: &str) -> Route {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match segments.as_slice() {
        ["version"] => Route::Version,
        ["healthz" | "readyz" | "livez", ..] => Route::Health,
        ["metrics"] => Route::Metrics,
        ["skiff", "v1", "backup"] => Route::Backup,
        ["openapi", "v3"] => Route::OpenApiRoot,
        ["openapi", "v3", "api", version] => Route::OpenApiDocument {
            group: String::new(),
            version: (*version).to_owned(),
        },
        ["openapi", "v3", "apis", group, version] => Route::OpenApiDocument {
            group: (*group).to_owned(),
            version: (*version).to_owned(),
        },
        ["api"] => Route::Api,
        ["apis"] => Route::Apis,
        ["apis", group] => Route::ApiGroup((*group).to_owned()),
        ["api", version] => Route::GroupVersion {
            group: String::new(),
            version: (*version).to_owned(),
        },
        ["apis", group, version] => Route::GroupVersion {
            group: (*group).to_owned(),
            version: (*version).to_owned(),
        },
        ["api", version, rest @ ..] => resource("", version, rest),
        ["apis", group, version, rest @ ..] => resource(group, version, rest),
        _ => Route::NotFound,
    }
}

fn resource(group: &str, version: &str, rest: &[&str]) -> Route {
    let (watch, rest) = match rest {
        ["watch", rest @ ..] => (true, rest),
        _ => (false, rest),
    };
    let owned = |s: Option<&&str>| s.map(|s| (*s).to_owned());
    if let ["namespaces", namespace, plural, tail @ ..] = rest
        && let Some(info) = by_plural(group, version, plural).filter(|i| i.namespaced)
    {
        if tail.len() > 2 {
            return Route::NotFound;
        }
        return Route::Resource(ResourceRoute {
            info,
            namespace: Some((*namespace).to_owned()),
            name: owned(tail.first()),
            subresource: owned(tail.get(1)),
            watch,
        });
    }
    let [plural, tail @ ..] = rest else {
        return Route::NotFound;
    };
    if tail.len() > 2 {
        return Route::NotFound;
    }
    let Some(info) = by_plural(group, version, plural) else {
        return Route::NotFound;
    };
    // A namespaced kind outside /namespaces/{ns} is only a cross-namespace list or watch.
    if info.namespaced && !tail.is_empty() {
        return Route::NotFound;
    }
    Route::Resource(ResourceRoute {
        info,
        namespace: None,
        name: owned(tail.first()),
        subresource: owned(tail.get(1)),
        watch,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(path: &str) -> ResourceRoute {
        match route(path) {
            Route::Resource(r) => r,
            other => panic!("{path}: {other:?}"),
        }
    }

    #[test]
    fn namespaced_item_paths_carry_namespace_name_and_subresource() {
        let r = res("/apis/apps/v1/namespaces/default/deployments/web/scale");
        assert_eq!(r.info.kind, "Deployment");
        assert_eq!(r.namespace.as_deref(), Some("default"));
        assert_eq!(r.name.as_deref(), Some("web"));
        assert_eq!(r.subresource.as_deref(), Some("scale"));
    }

    #[test]
    fn a_namespace_object_is_not_mistaken_for_a_namespaced_path() {
        let r = res("/api/v1/namespaces/kube-system");
        assert_eq!(r.info.kind, "Namespace");
        assert_eq!(r.name.as_deref(), Some("kube-system"));
        let s = res("/api/v1/namespaces/kube-system/status");
        assert_eq!(
            (s.info.kind, s.subresource.as_deref()),
            ("Namespace", Some("status"))
        );
    }

    #[test]
    fn cross_namespace_lists_and_legacy_watch_paths_parse() {
        let r = res("/api/v1/pods");
        assert!(r.namespace.is_none() && r.name.is_none());
        let w = res("/api/v1/watch/namespaces/default/pods");
        assert!(w.watch);
        assert_eq!(route("/api/v1/pods/x"), Route::NotFound);
        assert_eq!(route("/api/v1/widgets"), Route::NotFound);
        assert_eq!(route("/apis/apps/v2/deployments"), Route::NotFound);
    }
}
