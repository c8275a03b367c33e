//! `/openapi/v3`: per group-version OpenAPI 3.0 documents listing every served operation
//! with its `x-kubernetes-group-version-kind` and query parameters, which is what kubectl
//! reads to learn that the server validates fields itself (`fieldValidation`).

use std::{
    collections::BTreeMap,
    hash::{DefaultHasher, Hash, Hasher},
    sync::LazyLock,
};

use serde_json::{Value, json};

use crate::{ResourceInfo, Subresource, all};

/// `api/v1` or `apis/{group}/{version}`.
fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

static DOCUMENTS: LazyLock<BTreeMap<String, Value>> = LazyLock::new(|| {
    let mut docs: BTreeMap<String, Value> = BTreeMap::new();
    let mut generators: BTreeMap<String, schemars::SchemaGenerator> = BTreeMap::new();
    for info in all() {
        let gv = gv_path(info.group, info.version);
        let doc = docs.entry(gv.clone()).or_insert_with(|| {
            json!({
                "openapi": "3.0.0",
                "info": {"title": "Kubernetes", "version": "v1.33.0"},
                "paths": {},
                "components": {"schemas": {}},
            })
        });
        for (path, item) in paths(info) {
            doc["paths"][path] = item;
        }
        let generator = generators
            .entry(gv)
            .or_insert_with(|| schemars::generate::SchemaSettings::openapi3().into_generator());
        (info.schema)(generator);
    }
    for (gv, mut generator) in generators {
        let doc = docs.get_mut(&gv).expect("a document per generator");
        let mut schemas = generator.take_definitions(true);
        // kubectl explain finds a kind's schema by this extension.
        for info in all().iter().filter(|i| gv_path(i.group, i.version) == gv) {
            if let Some(schema) = schemas.get_mut((info.schema_name)().as_ref()) {
                schema["x-kubernetes-group-version-kind"] =
                    json!([{"group": info.group, "version": info.version, "kind": info.kind}]);
            }
        }
        annotate_patch_strategies(&mut schemas);
        doc["components"]["schemas"] = Value::Object(schemas);
    }
    docs
});

/// Lists that strategic merge patch merges instead of replacing, as Kubernetes' types tag
/// them: (schema, property, merge key; `None` merges primitives as a set). kubectl reads
/// these to compute apply patches; the server's own merge follows the same rules
/// (`skiff_machinery::patch` strategy table).
const PATCH_STRATEGIES: &[(&str, &str, Option<&str>)] = &[
    ("io.k8s.api.core.v1.PodSpec", "containers", Some("name")),
    ("io.k8s.api.core.v1.PodSpec", "initContainers", Some("name")),
    (
        "io.k8s.api.core.v1.PodSpec",
        "ephemeralContainers",
        Some("name"),
    ),
    ("io.k8s.api.core.v1.PodSpec", "volumes", Some("name")),
    (
        "io.k8s.api.core.v1.PodSpec",
        "imagePullSecrets",
        Some("name"),
    ),
    ("io.k8s.api.core.v1.PodSpec", "hostAliases", Some("ip")),
    (
        "io.k8s.api.core.v1.PodSpec",
        "topologySpreadConstraints",
        Some("topologyKey"),
    ),
    ("io.k8s.api.core.v1.PodSpec", "resourceClaims", Some("name")),
    (
        "io.k8s.api.core.v1.PodSpec",
        "schedulingGates",
        Some("name"),
    ),
    ("io.k8s.api.core.v1.Container", "env", Some("name")),
    (
        "io.k8s.api.core.v1.Container",
        "ports",
        Some("containerPort"),
    ),
    (
        "io.k8s.api.core.v1.Container",
        "volumeMounts",
        Some("mountPath"),
    ),
    (
        "io.k8s.api.core.v1.Container",
        "volumeDevices",
        Some("devicePath"),
    ),
    (
        "io.k8s.api.core.v1.Container",
        "resizePolicy",
        Some("resourceName"),
    ),
    ("io.k8s.api.core.v1.EphemeralContainer", "env", Some("name")),
    (
        "io.k8s.api.core.v1.EphemeralContainer",
        "ports",
        Some("containerPort"),
    ),
    (
        "io.k8s.api.core.v1.EphemeralContainer",
        "volumeMounts",
        Some("mountPath"),
    ),
    ("io.k8s.api.core.v1.ServiceSpec", "ports", Some("port")),
    (
        "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta",
        "finalizers",
        None,
    ),
    (
        "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta",
        "ownerReferences",
        Some("uid"),
    ),
    ("io.k8s.api.core.v1.PodStatus", "conditions", Some("type")),
    ("io.k8s.api.core.v1.NodeStatus", "conditions", Some("type")),
    ("io.k8s.api.core.v1.NodeStatus", "addresses", Some("type")),
    (
        "io.k8s.api.core.v1.NamespaceStatus",
        "conditions",
        Some("type"),
    ),
    (
        "io.k8s.api.apps.v1.DeploymentStatus",
        "conditions",
        Some("type"),
    ),
    (
        "io.k8s.api.apps.v1.ReplicaSetStatus",
        "conditions",
        Some("type"),
    ),
    (
        "io.k8s.api.apps.v1.StatefulSetStatus",
        "conditions",
        Some("type"),
    ),
    (
        "io.k8s.api.apps.v1.DaemonSetStatus",
        "conditions",
        Some("type"),
    ),
    ("io.k8s.api.batch.v1.JobStatus", "conditions", Some("type")),
];

fn annotate_patch_strategies(schemas: &mut serde_json::Map<String, Value>) {
    for (schema, property, key) in PATCH_STRATEGIES {
        let Some(prop) = schemas
            .get_mut(*schema)
            .and_then(|s| s.get_mut("properties"))
            .and_then(|p| p.get_mut(*property))
        else {
            continue;
        };
        prop["x-kubernetes-patch-strategy"] = json!("merge");
        if let Some(key) = key {
            prop["x-kubernetes-patch-merge-key"] = json!(key);
        }
    }
}

static ROOT: LazyLock<Value> = LazyLock::new(|| {
    let mut paths = serde_json::Map::new();
    for (gv, doc) in DOCUMENTS.iter() {
        let mut h = DefaultHasher::new();
        doc.to_string().hash(&mut h);
        paths.insert(
            gv.clone(),
            json!({"serverRelativeURL": format!("/openapi/v3/{gv}?hash={:016X}", h.finish())}),
        );
    }
    json!({ "paths": paths })
});

/// The `/openapi/v3` discovery document.
#[must_use]
pub fn root() -> Value {
    ROOT.clone()
}

/// The document for one group-version, if served.
#[must_use]
pub fn document(group: &str, version: &str) -> Option<&'static Value> {
    DOCUMENTS.get(&gv_path(group, version))
}

fn param(name: &str, description: &str, kind: &str) -> Value {
    json!({"name": name, "in": "query", "description": description,
           "schema": {"type": kind, "uniqueItems": true}})
}

fn write_params(patch: bool) -> Vec<Value> {
    let mut params = vec![
        param(
            "dryRun",
            "When present, indicates that modifications should not be persisted.",
            "string",
        ),
        param(
            "fieldManager",
            "fieldManager is a name associated with the actor or entity that is making these changes.",
            "string",
        ),
        param(
            "fieldValidation",
            "fieldValidation instructs the server on how to handle objects in the request containing unknown or duplicate fields. Valid values are: Ignore, Warn, Strict.",
            "string",
        ),
    ];
    if patch {
        params.push(param(
            "force",
            "Force is going to \"force\" Apply requests.",
            "boolean",
        ));
    }
    params
}

fn operation(info: &ResourceInfo, action: &str, verb: &str, kind: &str, params: &[Value]) -> Value {
    let id = format!(
        "{verb}{}{}{}",
        capitalize(info.group.split('.').next().unwrap_or("core")),
        capitalize(info.version),
        kind
    );
    let mut op = json!({
        "operationId": id,
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": {"group": info.group, "version": info.version, "kind": info.kind},
        "parameters": params,
        "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": {"type": "object"}}}}},
    });
    if matches!(action, "post" | "put" | "patch") {
        let types: &[&str] = if action == "patch" {
            &[
                "application/json-patch+json",
                "application/merge-patch+json",
                "application/strategic-merge-patch+json",
                "application/apply-patch+yaml",
            ]
        } else {
            &["application/json", "application/yaml"]
        };
        let content: serde_json::Map<String, Value> = types
            .iter()
            .map(|t| ((*t).to_owned(), json!({"schema": {"type": "object"}})))
            .collect();
        op["requestBody"] = json!({"content": content, "required": true});
    }
    op
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().collect::<String>() + c.as_str())
        .unwrap_or_default()
}

fn paths(info: &ResourceInfo) -> Vec<(String, Value)> {
    let base = format!("/{}", gv_path(info.group, info.version));
    let collection = if info.namespaced {
        format!("{base}/namespaces/{{namespace}}/{}", info.plural)
    } else {
        format!("{base}/{}", info.plural)
    };
    let item = format!("{collection}/{{name}}");
    let mut out = vec![
        (
            collection.clone(),
            json!({
                "get": operation(info, "list", "list", info.kind, &[]),
                "post": operation(info, "post", "create", info.kind, &write_params(false)),
                "delete": operation(info, "deletecollection", "deleteCollection", info.kind, &[]),
            }),
        ),
        (
            item.clone(),
            json!({
                "get": operation(info, "get", "read", info.kind, &[]),
                "put": operation(info, "put", "replace", info.kind, &write_params(false)),
                "patch": operation(info, "patch", "patch", info.kind, &write_params(true)),
                "delete": operation(info, "delete", "delete", info.kind, &[]),
            }),
        ),
    ];
    for sub in info.subresources {
        let suffix = capitalize(sub.name());
        let path = format!("{item}/{}", sub.name());
        let ops = match sub {
            Subresource::Status | Subresource::Scale | Subresource::EphemeralContainers => json!({
                "get": operation(info, "get", "read", &format!("{}{suffix}", info.kind), &[]),
                "put": operation(info, "put", "replace", &format!("{}{suffix}", info.kind), &write_params(false)),
                "patch": operation(info, "patch", "patch", &format!("{}{suffix}", info.kind), &write_params(true)),
            }),
            Subresource::Binding => json!({
                "post": operation(info, "post", "create", "Binding", &write_params(false)),
            }),
            Subresource::Token => json!({
                "post": operation(info, "post", "create", "Token", &write_params(false)),
            }),
            Subresource::Log => json!({
                "get": operation(info, "get", "read", "Log", &[]),
            }),
            Subresource::Exec | Subresource::Attach | Subresource::PortForward => json!({
                "get": operation(info, "connect", "connectGet", &suffix, &[]),
                "post": operation(info, "connect", "connectPost", &suffix, &[]),
            }),
        };
        out.push((path, ops));
    }
    if info.namespaced {
        out.push((
            format!("{base}/{}", info.plural),
            json!({"get": operation(info, "list", "listForAllNamespaces", info.kind, &[])}),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_have_schemas_with_their_gvk_and_descriptions() {
        let doc = document("apps", "v1").unwrap();
        let deployment = &doc["components"]["schemas"]["io.k8s.api.apps.v1.Deployment"];
        assert_eq!(
            deployment["x-kubernetes-group-version-kind"][0]["kind"],
            "Deployment"
        );
        assert!(
            deployment["description"]
                .as_str()
                .unwrap()
                .contains("Deployment")
        );
        let spec_ref = deployment["properties"]["spec"]["allOf"][0]["$ref"]
            .as_str()
            .unwrap();
        assert_eq!(
            spec_ref,
            "#/components/schemas/io.k8s.api.apps.v1.DeploymentSpec"
        );
        assert!(doc["components"]["schemas"]["io.k8s.api.apps.v1.DeploymentSpec"]["properties"]["replicas"].is_object());
    }

    #[test]
    fn the_root_lists_every_group_version_with_a_hashed_url() {
        let root = root();
        let url = root["paths"]["apis/apps/v1"]["serverRelativeURL"]
            .as_str()
            .unwrap();
        assert!(url.starts_with("/openapi/v3/apis/apps/v1?hash="));
        assert!(root["paths"]["api/v1"].is_object());
    }

    #[test]
    fn patch_operations_carry_the_gvk_and_field_validation() {
        let doc = document("apps", "v1").unwrap();
        let patch =
            &doc["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"]["patch"];
        assert_eq!(
            patch["x-kubernetes-group-version-kind"]["kind"],
            "Deployment"
        );
        let names: Vec<&str> = patch["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        assert!(names.contains(&"fieldValidation"));
        assert!(document("nope", "v1").is_none());
        let ns = &document("", "v1").unwrap()["paths"]["/api/v1/namespaces/{name}"]["patch"];
        assert_eq!(ns["x-kubernetes-group-version-kind"]["kind"], "Namespace");
    }
}
