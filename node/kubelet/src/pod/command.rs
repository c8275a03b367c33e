//! A container's command line and environment by Kubernetes' rules: `command`/`args` over
//! the image's entrypoint/cmd, `$(VAR)` expansion, and `env`/`envFrom` with every
//! `valueFrom` source.

use std::{
    collections::{BTreeMap, HashMap},
    hash::BuildHasher,
};

use async_trait::async_trait;
use k8s_openapi::api::{
    authentication::v1::TokenRequest,
    core::v1::{
        Container, EnvVar, ObjectFieldSelector, PersistentVolume, PersistentVolumeClaim, Pod,
        ResourceFieldSelector, Service,
    },
};

use super::service_env;

/// Errors resolving a container's environment (`CreateContainerConfigError`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A referenced configMap or secret does not exist.
    #[error("{kind} \"{name}\" not found")]
    Missing {
        /// `configmap` or `secret`.
        kind: &'static str,
        /// Its name.
        name: String,
    },
    /// A referenced key is not in its configMap or secret.
    #[error("couldn't find key {key} in {kind} {namespace}/{name}")]
    MissingKey {
        /// `ConfigMap` or `Secret`.
        kind: &'static str,
        /// The namespace.
        namespace: String,
        /// The object.
        name: String,
        /// The key.
        key: String,
    },
    /// A field or resource reference names something the node does not provide.
    #[error("unsupported {what}: {path}")]
    Unsupported {
        /// `fieldRef` or `resourceFieldRef`.
        what: &'static str,
        /// The path or resource.
        path: String,
    },
    /// The API server could not be asked.
    #[error("{0}")]
    Api(String),
}

/// Where configMap and secret data, claims' volumes and ServiceAccount tokens come from.
#[async_trait]
pub trait Sources: Send + Sync {
    /// A configMap's data (binary data as bytes too), `None` when it does not exist.
    async fn config_map(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<BTreeMap<String, Vec<u8>>>, ConfigError>;
    /// A secret's data, `None` when it does not exist.
    async fn secret(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<BTreeMap<String, Vec<u8>>>, ConfigError>;
    /// A `PersistentVolumeClaim` with the volume it is bound to (when it names one that
    /// exists), `None` when the claim does not exist. Sources that know no claims (the
    /// default) say none exists.
    async fn claim(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<(PersistentVolumeClaim, Option<PersistentVolume>)>, ConfigError> {
        let _ = (namespace, name);
        Ok(None)
    }
    /// The Services of `namespace`, for containers' Service variables. Sources that know no
    /// Services (the default) say there are none.
    async fn services(&self, namespace: &str) -> Result<Vec<Service>, ConfigError> {
        let _ = namespace;
        Ok(Vec::new())
    }
    /// A token for `account` as `request` asks (`TokenRequest`), with its status filled in.
    /// Sources without an API server (the default) have none to give.
    async fn service_account_token(
        &self,
        namespace: &str,
        account: &str,
        request: &TokenRequest,
    ) -> Result<TokenRequest, ConfigError> {
        let _ = (namespace, request);
        Err(ConfigError::Api(format!(
            "no token for service account {account:?}: these sources reach no API server"
        )))
    }
}

/// Expands `$(NAME)` from `vars`; `$$(NAME)` stays literal, unknown names stay as written.
#[must_use]
pub fn expand<S: BuildHasher>(text: &str, vars: &HashMap<String, String, S>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(tail) = after.strip_prefix('(')
            && let Some(end) = tail.find(')')
        {
            let name = &tail[..end];
            if let Some(v) = vars.get(name) {
                out.push_str(v);
            } else {
                out.push_str("$(");
                out.push_str(name);
                out.push(')');
            }
            rest = &tail[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// The process's argv: `command` replaces the entrypoint, `args` replaces cmd.
#[must_use]
pub fn argv<S: BuildHasher>(
    container: &Container,
    entrypoint: &[String],
    cmd: &[String],
    env: &HashMap<String, String, S>,
) -> Vec<String> {
    let expanded = |v: &Vec<String>| v.iter().map(|a| expand(a, env)).collect::<Vec<_>>();
    match (&container.command, &container.args) {
        (Some(command), Some(args)) => [expanded(command), expanded(args)].concat(),
        (Some(command), None) => expanded(command),
        (None, Some(args)) => [entrypoint.to_vec(), expanded(args)].concat(),
        (None, None) => [entrypoint, cmd].concat(),
    }
}

/// The `fieldRef` paths every downward API user resolves the same way: one label or
/// annotation (`metadata.labels['key']`, empty when absent), and the pod's name, namespace
/// and UID. `None` for any other path.
pub(crate) fn metadata_field(pod: &Pod, path: &str) -> Option<String> {
    let meta = &pod.metadata;
    let keyed = |prefix: &str, map: Option<&BTreeMap<String, String>>| {
        path.strip_prefix(prefix)
            .and_then(|k| k.strip_suffix("']"))
            .map(|k| map.and_then(|m| m.get(k)).cloned().unwrap_or_default())
    };
    keyed("metadata.labels['", meta.labels.as_ref())
        .or_else(|| keyed("metadata.annotations['", meta.annotations.as_ref()))
        .or_else(|| match path {
            "metadata.name" => Some(meta.name.clone().unwrap_or_default()),
            "metadata.namespace" => Some(meta.namespace.clone().unwrap_or_default()),
            "metadata.uid" => Some(meta.uid.clone().unwrap_or_default()),
            _ => None,
        })
}

/// A `fieldRef` as an environment variable allows it: metadata, the node, the service
/// account and the pod's and host's addresses.
fn field(pod: &Pod, selector: &ObjectFieldSelector) -> Result<String, ConfigError> {
    let path = selector.field_path.as_str();
    if let Some(v) = metadata_field(pod, path) {
        return Ok(v);
    }
    let status = pod.status.as_ref();
    let spec = pod.spec.as_ref();
    Ok(match path {
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        "spec.serviceAccountName" => spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_else(|| skiff_types::namespace::DEFAULT.to_owned()),
        "status.hostIP" | "status.hostIPs" => {
            status.and_then(|s| s.host_ip.clone()).unwrap_or_default()
        }
        "status.podIP" | "status.podIPs" => {
            status.and_then(|s| s.pod_ip.clone()).unwrap_or_default()
        }
        _ => {
            return Err(ConfigError::Unsupported {
                what: "fieldRef",
                path: path.to_owned(),
            });
        }
    })
}

/// The node's allocatable, used for limits a container does not set.
#[derive(Debug, Clone, Copy, Default)]
pub struct NodeLimits {
    /// Allocatable CPU in millicores.
    pub cpu_milli: i64,
    /// Allocatable memory in bytes.
    pub memory_bytes: i64,
    /// Allocatable ephemeral storage in bytes.
    pub ephemeral_bytes: i64,
}

/// Reads a container's resource as `resourceFieldRef` does (CPU rounded up to the divisor).
///
/// # Errors
/// An unknown resource or a malformed divisor.
pub fn resource(
    container: &Container,
    selector: &ResourceFieldSelector,
    node: NodeLimits,
) -> Result<String, ConfigError> {
    let unsupported = || ConfigError::Unsupported {
        what: "resourceFieldRef",
        path: selector.resource.clone(),
    };
    let (kind, name) = selector.resource.split_once('.').ok_or_else(unsupported)?;
    let resources = container.resources.as_ref();
    let set = match kind {
        "limits" => resources.and_then(|r| r.limits.as_ref()),
        "requests" => resources.and_then(|r| r.requests.as_ref()),
        _ => return Err(unsupported()),
    };
    let milli = set
        .and_then(|m| m.get(name))
        .and_then(|q| skiff_machinery::quantity::parse_milli(&q.0));
    let milli = match (milli, kind, name) {
        (Some(v), ..) => v,
        (None, "limits", "cpu") => node.cpu_milli,
        (None, "limits", "memory") => node.memory_bytes * 1000,
        (None, "limits", "ephemeral-storage") => node.ephemeral_bytes * 1000,
        (None, "requests", "cpu" | "memory" | "ephemeral-storage") => 0,
        _ => return Err(unsupported()),
    };
    let divisor = selector
        .divisor
        .as_ref()
        .and_then(|d| skiff_machinery::quantity::parse_milli(&d.0))
        .filter(|d| *d > 0)
        .unwrap_or(1000);
    let value = if name == "cpu" {
        // The kubelet rounds CPU up: 250m with divisor 1 is 1.
        (milli + divisor - 1) / divisor
    } else {
        milli / divisor
    };
    Ok(value.to_string())
}

async fn key_of(
    sources: &dyn Sources,
    namespace: &str,
    kind: &'static str,
    name: &str,
    key: &str,
    optional: bool,
) -> Result<Option<String>, ConfigError> {
    let data = if kind == "ConfigMap" {
        sources.config_map(namespace, name).await?
    } else {
        sources.secret(namespace, name).await?
    };
    let Some(data) = data else {
        return if optional {
            Ok(None)
        } else {
            Err(ConfigError::Missing {
                kind: if kind == "ConfigMap" {
                    "configmap"
                } else {
                    "secret"
                },
                name: name.to_owned(),
            })
        };
    };
    match data.get(key) {
        Some(v) => Ok(Some(String::from_utf8_lossy(v).into_owned())),
        None if optional => Ok(None),
        None => Err(ConfigError::MissingKey {
            kind,
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            key: key.to_owned(),
        }),
    }
}

/// The container's environment, `K=V`, in Kubernetes' order: the image's, then the Service
/// variables (see [`service_env`]), then `envFrom`, then `env` (each `$(VAR)` expanded
/// against what came before).
///
/// # Errors
/// A missing non-optional source or key, an unsupported reference, the API unreachable.
pub async fn environment(
    pod: &Pod,
    container: &Container,
    image_env: &[String],
    sources: &dyn Sources,
    node: NodeLimits,
) -> Result<Vec<(String, String)>, ConfigError> {
    let namespace = pod
        .metadata
        .namespace
        .as_deref()
        .unwrap_or(skiff_types::namespace::DEFAULT);
    let mut order: Vec<String> = Vec::new();
    let mut vars: HashMap<String, String> = HashMap::new();
    let set =
        |order: &mut Vec<String>, vars: &mut HashMap<String, String>, k: String, v: String| {
            if vars.insert(k.clone(), v).is_none() {
                order.push(k);
            }
        };
    for kv in image_env {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        set(&mut order, &mut vars, k.to_owned(), v.to_owned());
    }
    let links = service_env::links_enabled(pod);
    let mut services = sources.services(skiff_types::namespace::DEFAULT).await?;
    if links && namespace != skiff_types::namespace::DEFAULT {
        services.extend(sources.services(namespace).await?);
    }
    for (k, v) in service_env::variables(namespace, links, &services) {
        set(&mut order, &mut vars, k, v);
    }
    for from in container.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        let (data, optional, kind, name) = if let Some(c) = &from.config_map_ref {
            (
                sources.config_map(namespace, &c.name).await?,
                c.optional.unwrap_or(false),
                "configmap",
                c.name.clone(),
            )
        } else if let Some(s) = &from.secret_ref {
            (
                sources.secret(namespace, &s.name).await?,
                s.optional.unwrap_or(false),
                "secret",
                s.name.clone(),
            )
        } else {
            continue;
        };
        match data {
            Some(data) => {
                for (k, v) in data {
                    set(
                        &mut order,
                        &mut vars,
                        format!("{prefix}{k}"),
                        String::from_utf8_lossy(&v).into_owned(),
                    );
                }
            }
            None if optional => {}
            None => return Err(ConfigError::Missing { kind, name }),
        }
    }
    for EnvVar {
        name,
        value,
        value_from,
    } in container.env.iter().flatten()
    {
        let value = if let Some(from) = value_from {
            let found = if let Some(r) = &from.config_map_key_ref {
                let optional = r.optional.unwrap_or(false);
                key_of(sources, namespace, "ConfigMap", &r.name, &r.key, optional).await?
            } else if let Some(r) = &from.secret_key_ref {
                let optional = r.optional.unwrap_or(false);
                key_of(sources, namespace, "Secret", &r.name, &r.key, optional).await?
            } else if let Some(f) = &from.field_ref {
                Some(field(pod, f)?)
            } else if let Some(r) = &from.resource_field_ref {
                Some(resource(container, r, node)?)
            } else {
                None
            };
            match found {
                Some(v) => v,
                None => continue,
            }
        } else {
            expand(value.as_deref().unwrap_or_default(), &vars)
        };
        set(&mut order, &mut vars, name.clone(), value);
    }
    Ok(order
        .into_iter()
        .map(|k| {
            let v = vars.remove(&k).unwrap_or_default();
            (k, v)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use k8s_openapi::{
        api::core::v1::{
            ConfigMapEnvSource, ConfigMapKeySelector, EnvFromSource, EnvVarSource,
            ResourceRequirements, SecretKeySelector,
        },
        apimachinery::pkg::{api::resource::Quantity, apis::meta::v1::ObjectMeta},
    };

    use super::*;

    #[derive(Default)]
    struct Objects {
        config_maps: Mutex<HashMap<String, BTreeMap<String, Vec<u8>>>>,
        secrets: Mutex<HashMap<String, BTreeMap<String, Vec<u8>>>>,
        services: Vec<Service>,
    }

    #[async_trait]
    impl Sources for Objects {
        async fn config_map(
            &self,
            _: &str,
            name: &str,
        ) -> Result<Option<BTreeMap<String, Vec<u8>>>, ConfigError> {
            Ok(self.config_maps.lock().unwrap().get(name).cloned())
        }
        async fn secret(
            &self,
            _: &str,
            name: &str,
        ) -> Result<Option<BTreeMap<String, Vec<u8>>>, ConfigError> {
            Ok(self.secrets.lock().unwrap().get(name).cloned())
        }
        async fn services(&self, namespace: &str) -> Result<Vec<Service>, ConfigError> {
            Ok(self
                .services
                .iter()
                .filter(|s| s.metadata.namespace.as_deref() == Some(namespace))
                .cloned()
                .collect())
        }
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn command_and_args_override_entrypoint_and_cmd_as_kubernetes_does() {
        let ep = strings(&["/entry"]);
        let cmd = strings(&["default"]);
        let env = HashMap::from([("WHO".to_owned(), "world".to_owned())]);
        let mut c = Container::default();
        assert_eq!(argv(&c, &ep, &cmd, &env), ["/entry", "default"]);
        c.args = Some(strings(&["hello $(WHO)", "$$(WHO)", "$(NOPE)"]));
        assert_eq!(
            argv(&c, &ep, &cmd, &env),
            ["/entry", "hello world", "$(WHO)", "$(NOPE)"]
        );
        c.command = Some(strings(&["sh", "-c"]));
        assert_eq!(
            argv(&c, &ep, &cmd, &env),
            ["sh", "-c", "hello world", "$(WHO)", "$(NOPE)"]
        );
        c.args = None;
        assert_eq!(argv(&c, &ep, &cmd, &env), ["sh", "-c"]);
    }

    #[test]
    fn metadata_fields_resolve_keys_and_leave_other_paths_to_the_caller() {
        let mut pod = Pod::default();
        pod.metadata.name = Some("web".into());
        pod.metadata.labels = Some(BTreeMap::from([("app".into(), "shop".into())]));
        assert_eq!(
            metadata_field(&pod, "metadata.labels['app']").as_deref(),
            Some("shop")
        );
        assert_eq!(
            metadata_field(&pod, "metadata.annotations['none']").as_deref(),
            Some("")
        );
        assert_eq!(
            metadata_field(&pod, "metadata.name").as_deref(),
            Some("web")
        );
        assert_eq!(metadata_field(&pod, "metadata.labels"), None);
        assert_eq!(metadata_field(&pod, "spec.nodeName"), None);
    }

    #[tokio::test]
    #[expect(
        clippy::too_many_lines,
        reason = "one pod spec with every source reads best whole"
    )]
    async fn environment_resolves_every_source_in_order() {
        let objects = Objects::default();
        objects.config_maps.lock().unwrap().insert(
            "cfg".into(),
            BTreeMap::from([
                ("mode".into(), b"fast".to_vec()),
                ("level".into(), b"3".to_vec()),
            ]),
        );
        objects.secrets.lock().unwrap().insert(
            "s".into(),
            BTreeMap::from([("pw".into(), b"hunter2".to_vec())]),
        );
        let pod = Pod {
            metadata: ObjectMeta {
                name: Some("web".into()),
                namespace: Some("prod".into()),
                labels: Some(BTreeMap::from([("app".into(), "web".into())])),
                ..ObjectMeta::default()
            },
            ..Pod::default()
        };
        let env = |name: &str, from: EnvVarSource| EnvVar {
            name: name.into(),
            value_from: Some(from),
            value: None,
        };
        let container = Container {
            env_from: Some(vec![EnvFromSource {
                config_map_ref: Some(ConfigMapEnvSource {
                    name: "cfg".into(),
                    optional: None,
                }),
                prefix: Some("CFG_".into()),
                secret_ref: None,
            }]),
            env: Some(vec![
                EnvVar {
                    name: "GREETING".into(),
                    value: Some("mode=$(CFG_mode) path=$(PATH)".into()),
                    value_from: None,
                },
                env(
                    "MODE",
                    EnvVarSource {
                        config_map_key_ref: Some(ConfigMapKeySelector {
                            name: "cfg".into(),
                            key: "mode".into(),
                            optional: None,
                        }),
                        ..EnvVarSource::default()
                    },
                ),
                env(
                    "PASSWORD",
                    EnvVarSource {
                        secret_key_ref: Some(SecretKeySelector {
                            name: "s".into(),
                            key: "pw".into(),
                            optional: None,
                        }),
                        ..EnvVarSource::default()
                    },
                ),
                env(
                    "APP",
                    EnvVarSource {
                        field_ref: Some(ObjectFieldSelector {
                            field_path: "metadata.labels['app']".into(),
                            api_version: None,
                        }),
                        ..EnvVarSource::default()
                    },
                ),
                env(
                    "CPU",
                    EnvVarSource {
                        resource_field_ref: Some(ResourceFieldSelector {
                            resource: "limits.cpu".into(),
                            divisor: None,
                            container_name: None,
                        }),
                        ..EnvVarSource::default()
                    },
                ),
                env(
                    "MEM_MI",
                    EnvVarSource {
                        resource_field_ref: Some(ResourceFieldSelector {
                            resource: "limits.memory".into(),
                            divisor: Some(Quantity("1Mi".into())),
                            container_name: None,
                        }),
                        ..EnvVarSource::default()
                    },
                ),
            ]),
            resources: Some(ResourceRequirements {
                limits: Some(BTreeMap::from([
                    ("cpu".into(), Quantity("250m".into())),
                    ("memory".into(), Quantity("64Mi".into())),
                ])),
                ..ResourceRequirements::default()
            }),
            ..Container::default()
        };
        let got = environment(
            &pod,
            &container,
            &strings(&["PATH=/bin"]),
            &objects,
            NodeLimits::default(),
        )
        .await
        .unwrap();
        let got: Vec<String> = got.into_iter().map(|(k, v)| format!("{k}={v}")).collect();
        assert_eq!(
            got,
            [
                "PATH=/bin",
                "CFG_level=3",
                "CFG_mode=fast",
                "GREETING=mode=fast path=/bin",
                "MODE=fast",
                "PASSWORD=hunter2",
                "APP=web",
                "CPU=1",
                "MEM_MI=64",
            ]
        );
    }

    #[tokio::test]
    async fn a_missing_key_is_a_config_error_unless_optional() {
        let objects = Objects::default();
        objects
            .config_maps
            .lock()
            .unwrap()
            .insert("cfg".into(), BTreeMap::new());
        let mut selector = ConfigMapKeySelector {
            name: "cfg".into(),
            key: "k".into(),
            optional: None,
        };
        let container = |selector: &ConfigMapKeySelector| Container {
            env: Some(vec![EnvVar {
                name: "K".into(),
                value: None,
                value_from: Some(EnvVarSource {
                    config_map_key_ref: Some(selector.clone()),
                    ..EnvVarSource::default()
                }),
            }]),
            ..Container::default()
        };
        let err = environment(
            &Pod::default(),
            &container(&selector),
            &[],
            &objects,
            NodeLimits::default(),
        )
        .await
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "couldn't find key k in ConfigMap default/cfg"
        );
        selector.optional = Some(true);
        let ok = environment(
            &Pod::default(),
            &container(&selector),
            &[],
            &objects,
            NodeLimits::default(),
        )
        .await
        .unwrap();
        assert!(ok.is_empty());
    }

    fn service(ns: &str, name: &str, ip: &str, port: i32) -> Service {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": ns},
            "spec": {"clusterIP": ip, "ports": [{"port": port, "protocol": "TCP"}]},
        }))
        .unwrap()
    }

    #[tokio::test]
    async fn service_variables_come_before_the_containers_own_which_may_use_or_override_them() {
        let objects = Objects {
            services: vec![
                service("default", "kubernetes", "10.96.0.1", 443),
                service("prod", "db", "10.96.0.9", 5432),
            ],
            ..Objects::default()
        };
        let mut pod = Pod {
            metadata: ObjectMeta {
                namespace: Some("prod".into()),
                ..ObjectMeta::default()
            },
            ..Pod::default()
        };
        let container = Container {
            env: Some(vec![
                EnvVar {
                    name: "API".into(),
                    value: Some("https://$(KUBERNETES_SERVICE_HOST)".into()),
                    value_from: None,
                },
                EnvVar {
                    name: "DB_SERVICE_PORT".into(),
                    value: Some("6543".into()),
                    value_from: None,
                },
            ]),
            ..Container::default()
        };
        let env = environment(&pod, &container, &[], &objects, NodeLimits::default())
            .await
            .unwrap();
        let get = |env: &[(String, String)], k: &str| {
            env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
        };
        assert_eq!(
            get(&env, "KUBERNETES_SERVICE_HOST").as_deref(),
            Some("10.96.0.1")
        );
        assert_eq!(get(&env, "API").as_deref(), Some("https://10.96.0.1"));
        assert_eq!(get(&env, "DB_SERVICE_HOST").as_deref(), Some("10.96.0.9"));
        assert_eq!(get(&env, "DB_SERVICE_PORT").as_deref(), Some("6543"));
        pod.spec = Some(k8s_openapi::api::core::v1::PodSpec {
            enable_service_links: Some(false),
            ..Default::default()
        });
        let env = environment(&pod, &container, &[], &objects, NodeLimits::default())
            .await
            .unwrap();
        assert_eq!(get(&env, "KUBERNETES_SERVICE_PORT").as_deref(), Some("443"));
        assert_eq!(get(&env, "DB_SERVICE_HOST"), None);
    }
}
