//! Objects for the controllers' plan tests: pods, nodes and owners built in a line each.

use std::{collections::BTreeMap, sync::Arc};

use k8s_openapi::{
    api::core::v1::{
        Container, ContainerPort, ContainerState, ContainerStateTerminated, ContainerStatus,
        Namespace, Node, NodeCondition, NodeSpec, NodeStatus, Pod, PodCondition, PodSpec,
        PodStatus, PodTemplateSpec, Service, ServicePort, ServiceSpec,
    },
    apimachinery::pkg::{
        apis::meta::v1::{ObjectMeta, OwnerReference, Time},
        util::intstr::IntOrString,
    },
    jiff::Timestamp,
};
use kube::Resource;

/// `seconds` after the epoch.
pub fn at(seconds: i64) -> Timestamp {
    Timestamp::from_second(seconds).expect("a timestamp in range")
}

/// Labels from pairs.
pub fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// Metadata in namespace `default` with uid `uid-<name>`, created at second 0.
pub fn meta(name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: Some("default".to_owned()),
        uid: Some(format!("uid-{name}")),
        generation: Some(1),
        creation_timestamp: Some(Time(at(0))),
        ..ObjectMeta::default()
    }
}

/// A template whose pods carry `labels` and run one container.
pub fn template(pairs: &[(&str, &str)]) -> PodTemplateSpec {
    PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(labels(pairs)),
            ..ObjectMeta::default()
        }),
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "c".to_owned(),
                image: Some("busybox".to_owned()),
                ..Default::default()
            }],
            ..PodSpec::default()
        }),
    }
}

/// The controller reference to `owner`.
pub fn owner_ref<K: Resource<DynamicType = ()>>(owner: &K) -> OwnerReference {
    skiff_control_runtime::ownership::controller_ref(owner)
}

/// A pod under construction.
#[derive(Debug, Clone)]
pub struct PodFixture(pub Pod);

/// A pending pod named `name` in `default`, created at second 0.
pub fn pod(name: &str) -> PodFixture {
    PodFixture(Pod {
        metadata: meta(name),
        spec: Some(PodSpec::default()),
        status: Some(PodStatus {
            phase: Some("Pending".to_owned()),
            ..PodStatus::default()
        }),
    })
}

impl PodFixture {
    /// With these labels.
    pub fn labels(mut self, pairs: &[(&str, &str)]) -> Self {
        self.0.metadata.labels = Some(labels(pairs));
        self
    }

    /// Controlled by `owner`.
    pub fn owned_by<K: Resource<DynamicType = ()>>(mut self, owner: &K) -> Self {
        self.0.metadata.owner_references = Some(vec![owner_ref(owner)]);
        self
    }

    /// Bound to `node`.
    pub fn on(mut self, node: &str) -> Self {
        self.0.spec.get_or_insert_with(PodSpec::default).node_name = Some(node.to_owned());
        self
    }

    /// Created at `seconds`.
    pub fn created(mut self, seconds: i64) -> Self {
        self.0.metadata.creation_timestamp = Some(Time(at(seconds)));
        self
    }

    /// In `phase`.
    pub fn phase(mut self, phase: &str) -> Self {
        self.0.status.get_or_insert_with(PodStatus::default).phase = Some(phase.to_owned());
        self
    }

    /// Running with an IP, Ready since `seconds`.
    pub fn ready_since(mut self, seconds: i64) -> Self {
        let status = self.0.status.get_or_insert_with(PodStatus::default);
        status.phase = Some("Running".to_owned());
        status.conditions = Some(vec![PodCondition {
            type_: "Ready".to_owned(),
            status: "True".to_owned(),
            last_transition_time: Some(Time(at(seconds))),
            ..PodCondition::default()
        }]);
        self
    }

    /// Running, not ready.
    pub fn running(self) -> Self {
        self.phase("Running")
    }

    /// With pod IP `ip`.
    pub fn ip(mut self, ip: &str) -> Self {
        self.0.status.get_or_insert_with(PodStatus::default).pod_ip = Some(ip.to_owned());
        self
    }

    /// Finished in `phase` (`Succeeded`/`Failed`) at `seconds`.
    pub fn finished(mut self, phase: &str, seconds: i64) -> Self {
        let status = self.0.status.get_or_insert_with(PodStatus::default);
        status.phase = Some(phase.to_owned());
        status.container_statuses = Some(vec![ContainerStatus {
            name: "c".to_owned(),
            state: Some(ContainerState {
                terminated: Some(ContainerStateTerminated {
                    finished_at: Some(Time(at(seconds))),
                    exit_code: i32::from(phase != "Succeeded"),
                    ..ContainerStateTerminated::default()
                }),
                ..ContainerState::default()
            }),
            ..ContainerStatus::default()
        }]);
        self
    }

    /// Being deleted.
    pub fn terminating(mut self) -> Self {
        self.0.metadata.deletion_timestamp = Some(Time(at(1)));
        self
    }

    /// With annotation `key: value`.
    pub fn annotated(mut self, key: &str, value: &str) -> Self {
        self.0
            .metadata
            .annotations
            .get_or_insert_with(BTreeMap::new)
            .insert(key.to_owned(), value.to_owned());
        self
    }

    /// Changes anything else.
    pub fn with(mut self, f: impl FnOnce(&mut Pod)) -> Self {
        f(&mut self.0);
        self
    }

    /// The pod, shared as the cache hands it out.
    pub fn build(self) -> Arc<Pod> {
        Arc::new(self.0)
    }
}

/// A Ready node with `labels`, cluster-scoped.
pub fn node(name: &str, pairs: &[(&str, &str)]) -> Arc<Node> {
    Arc::new(Node {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            uid: Some(format!("uid-{name}")),
            labels: Some(labels(pairs)),
            ..ObjectMeta::default()
        },
        spec: Some(NodeSpec::default()),
        status: Some(NodeStatus {
            conditions: Some(vec![NodeCondition {
                type_: "Ready".to_owned(),
                status: "True".to_owned(),
                ..NodeCondition::default()
            }]),
            ..NodeStatus::default()
        }),
    })
}

/// A Service `web` selecting `app=web`, port 80 to the pods' `http` port.
pub fn service() -> Service {
    Service {
        metadata: meta("web"),
        spec: Some(ServiceSpec {
            selector: Some(labels(&[("app", "web")])),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: 80,
                target_port: Some(IntOrString::String("http".into())),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

/// A ready `app=web` pod on `n1` with `ip`, serving `http` on `port`.
pub fn web(name: &str, ip: &str, port: i32) -> Arc<Pod> {
    pod(name)
        .labels(&[("app", "web")])
        .on("n1")
        .ready_since(0)
        .ip(ip)
        .with(|p| {
            p.spec.get_or_insert_with(PodSpec::default).containers = vec![Container {
                name: "c".into(),
                ports: Some(vec![ContainerPort {
                    name: Some("http".into()),
                    container_port: port,
                    ..ContainerPort::default()
                }]),
                ..Container::default()
            }];
        })
        .build()
}

/// Namespace `team`, being deleted or not.
pub fn namespace(deleting: bool) -> Namespace {
    let mut metadata = meta("team");
    metadata.namespace = None;
    metadata.deletion_timestamp = deleting.then(|| Time(at(5)));
    Namespace {
        metadata,
        ..Namespace::default()
    }
}
