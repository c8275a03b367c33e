//! The Node object: registration (create it with its status, or adopt the one an earlier
//! run left) and the status reports that follow: when something changed, when someone else
//! changed the conditions (the node lifecycle controller, while Leases lapsed), and at
//! least every five minutes.

use std::{collections::BTreeMap, net::Ipv4Addr, time::Duration};

use k8s_openapi::{
    api::core::v1::{
        DaemonEndpoint, Node, NodeAddress, NodeCondition, NodeDaemonEndpoints, NodeSpec,
        NodeStatus, NodeSystemInfo, Taint,
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
    jiff::Timestamp,
};
use kube::{
    Api, Client, ResourceExt,
    api::{Patch, PatchParams, PostParams},
};
use serde_json::json;
use skiff_types::Ipv4Cidr;

use super::{
    conditions::{conditions, same},
    host::{Host, HostError, MachineInfo},
};
use crate::api::Inflight;

/// The kubelet's `nodeStatusReportFrequency`: an unchanged status is still sent this often.
pub const REPORT_EVERY: Duration = Duration::from_mins(5);
/// The kubelet's `nodeStatusUpdateFrequency`: how often the status is worked out and sent
/// when it changed.
pub const CHECK_EVERY: Duration = Duration::from_secs(10);

/// Errors registering or reporting the Node.
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    /// The API server refused or could not be reached.
    #[error("node {node}: {action}")]
    Api {
        /// The node.
        node: String,
        /// What was being done.
        action: &'static str,
        /// Why.
        #[source]
        source: kube::Error,
    },
    /// The host could not be read.
    #[error("read the host")]
    Host(#[from] HostError),
}

impl RegisterError {
    /// The API server's status code, when it answered.
    #[must_use]
    pub fn code(&self) -> Option<u16> {
        match self {
            Self::Api {
                source: kube::Error::Api(status),
                ..
            } => Some(status.code),
            _ => None,
        }
    }
}

/// Who the node is and what it reports about itself.
#[derive(Clone, Debug)]
pub struct Identity {
    /// The Node's name.
    pub name: String,
    /// Its `InternalIP`.
    pub address: Ipv4Addr,
    /// The port of its HTTP endpoint (`daemonEndpoints.kubeletEndpoint`).
    pub port: u16,
    /// Labels on top of the kubelet's defaults (they win over them).
    pub labels: BTreeMap<String, String>,
    /// Annotations set at registration.
    pub annotations: BTreeMap<String, String>,
    /// Taints set at registration.
    pub taints: Vec<Taint>,
    /// `spec.podCIDR` to set when the Node has none (no node IPAM running).
    pub pod_cidr: Option<Ipv4Cidr>,
    /// `spec.providerID`.
    pub provider_id: Option<String>,
}

fn labels(id: &Identity, machine: &MachineInfo) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::from([
        ("kubernetes.io/hostname".to_owned(), id.name.clone()),
        ("kubernetes.io/os".to_owned(), "linux".to_owned()),
        (
            "kubernetes.io/arch".to_owned(),
            machine.architecture.clone(),
        ),
        ("beta.kubernetes.io/os".to_owned(), "linux".to_owned()),
        (
            "beta.kubernetes.io/arch".to_owned(),
            machine.architecture.clone(),
        ),
    ]);
    labels.extend(id.labels.clone());
    labels
}

/// Registers the Node and keeps its status current.
pub struct Registration {
    api: Api<Node>,
    id: Identity,
    host: Box<dyn Host>,
    machine: MachineInfo,
    inflight: Inflight,
    /// The conditions last sent.
    reported: Vec<NodeCondition>,
    last_report: Option<tokio::time::Instant>,
    /// The stored conditions differ from the ones sent: someone else wrote them.
    drifted: bool,
    uid: Option<String>,
}

impl std::fmt::Debug for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registration")
            .field("node", &self.id.name)
            .finish_non_exhaustive()
    }
}

impl Registration {
    /// A registration for `id` whose facts come from `host`, sending `inflight` at a time.
    #[must_use]
    pub fn new(client: Client, id: Identity, host: Box<dyn Host>, inflight: Inflight) -> Self {
        let machine = host.machine();
        Self {
            api: Api::all(client),
            id,
            host,
            machine,
            inflight,
            reported: Vec::new(),
            last_report: None,
            drifted: false,
            uid: None,
        }
    }

    /// The Node's name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.id.name
    }

    /// The Node's UID, once registered.
    #[must_use]
    pub fn uid(&self) -> Option<&str> {
        self.uid.as_deref()
    }

    fn error(&self, action: &'static str) -> impl FnOnce(kube::Error) -> RegisterError + '_ {
        move |source| RegisterError::Api {
            node: self.id.name.clone(),
            action,
            source,
        }
    }

    /// The status the node reports now; `previous` keeps unchanged transition times.
    fn status(
        &self,
        ready: Result<(), String>,
        previous: &[NodeCondition],
    ) -> Result<NodeStatus, HostError> {
        let observed = self.host.observe()?;
        let machine = &self.machine;
        Ok(NodeStatus {
            capacity: Some(observed.resources.capacity),
            allocatable: Some(observed.resources.allocatable),
            conditions: Some(conditions(
                &observed.pressure,
                ready,
                previous,
                Timestamp::now(),
            )),
            addresses: Some(vec![
                NodeAddress {
                    type_: "InternalIP".to_owned(),
                    address: self.id.address.to_string(),
                },
                NodeAddress {
                    type_: "Hostname".to_owned(),
                    address: self.id.name.clone(),
                },
            ]),
            daemon_endpoints: Some(NodeDaemonEndpoints {
                kubelet_endpoint: Some(DaemonEndpoint {
                    port: i32::from(self.id.port),
                }),
            }),
            node_info: Some(NodeSystemInfo {
                architecture: machine.architecture.clone(),
                boot_id: machine.boot_id.clone(),
                container_runtime_version: machine.runtime_version.clone(),
                kernel_version: machine.kernel_version.clone(),
                kube_proxy_version: String::new(),
                kubelet_version: machine.kubelet_version.clone(),
                machine_id: machine.machine_id.clone(),
                operating_system: "linux".to_owned(),
                os_image: machine.os_image.clone(),
                system_uuid: machine.system_uuid.clone(),
                ..NodeSystemInfo::default()
            }),
            ..NodeStatus::default()
        })
    }

    fn reported_now(&mut self, conditions: Vec<NodeCondition>) {
        self.reported = conditions;
        self.last_report = Some(tokio::time::Instant::now());
        self.drifted = false;
    }

    /// Creates the Node with its status, or adopts the one that exists. Returns the Node.
    ///
    /// # Errors
    /// When the API server refuses or the host cannot be read.
    pub async fn register(&mut self, ready: Result<(), String>) -> Result<Node, RegisterError> {
        let status = self.status(ready.clone(), &[])?;
        let node = Node {
            metadata: ObjectMeta {
                name: Some(self.id.name.clone()),
                labels: Some(labels(&self.id, &self.machine)),
                annotations: (!self.id.annotations.is_empty()).then(|| self.id.annotations.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(NodeSpec {
                pod_cidr: self.id.pod_cidr.map(|c| c.to_string()),
                pod_cidrs: self.id.pod_cidr.map(|c| vec![c.to_string()]),
                provider_id: self.id.provider_id.clone(),
                taints: (!self.id.taints.is_empty()).then(|| self.id.taints.clone()),
                ..NodeSpec::default()
            }),
            status: Some(status),
        };
        let created = {
            let _permit = self.inflight.permit().await;
            self.api.create(&PostParams::default(), &node).await
        };
        match created {
            Ok(created) => {
                tracing::info!(node = %self.id.name, "registered");
                self.uid = created.uid();
                let stored = created
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.clone())
                    .unwrap_or_default();
                if stored.is_empty() {
                    // A server that drops status on create gets it through `nodes/status`.
                    self.report(ready, true).await?;
                } else {
                    self.reported_now(stored);
                }
                Ok(created)
            }
            Err(kube::Error::Api(status)) if status.code == 409 => {
                let existing = {
                    let _permit = self.inflight.permit().await;
                    self.api.get(&self.id.name).await
                }
                .map_err(self.error("get"))?;
                self.adopt(existing, ready).await
            }
            Err(err) => Err(self.error("create")(err)),
        }
    }

    /// Takes over a Node an earlier run registered: puts back default labels it lost (and
    /// the configured podCIDR when it has none), as a restarted kubelet does, then reports
    /// the full status. Taints are left as they are. Returns the Node.
    ///
    /// # Errors
    /// When the API server refuses or the host cannot be read.
    pub async fn adopt(
        &mut self,
        mut existing: Node,
        ready: Result<(), String>,
    ) -> Result<Node, RegisterError> {
        self.uid = existing.uid();
        let wanted = labels(&self.id, &self.machine);
        let missing: BTreeMap<&String, &String> = wanted
            .iter()
            .filter(|(k, v)| existing.labels().get(*k) != Some(*v))
            .collect();
        let mut patch = json!({});
        if !missing.is_empty() {
            patch["metadata"] = json!({"labels": missing});
        }
        let has_cidr = existing
            .spec
            .as_ref()
            .and_then(|s| s.pod_cidr.as_ref())
            .is_some();
        if !has_cidr && let Some(cidr) = self.id.pod_cidr {
            let cidr = cidr.to_string();
            patch["spec"] = json!({"podCIDR": cidr, "podCIDRs": [cidr]});
        }
        if patch != json!({}) {
            let _permit = self.inflight.permit().await;
            existing = self
                .api
                .patch(
                    &self.id.name,
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await
                .map_err(self.error("adopt"))?;
        }
        self.reported = existing
            .status
            .as_ref()
            .and_then(|s| s.conditions.clone())
            .unwrap_or_default();
        tracing::info!(node = %self.id.name, "adopted the existing Node");
        self.report(ready, true).await?;
        Ok(existing)
    }

    /// Compares a stored version of the Node with what was reported: conditions someone
    /// else changed are reported again at the next [`Registration::report`].
    pub fn observe(&mut self, node: &Node) {
        let stored = node.status.as_ref().and_then(|s| s.conditions.as_deref());
        let stored = stored.unwrap_or_default();
        let differs = self.reported.iter().any(|ours| {
            !stored
                .iter()
                .any(|c| c.type_ == ours.type_ && c.status == ours.status)
        });
        if differs && !self.reported.is_empty() {
            self.drifted = true;
        }
    }

    /// Sends the status when it changed, when someone else changed it, when `force`, or
    /// when the last report is older than [`REPORT_EVERY`]. Returns whether it sent one.
    ///
    /// # Errors
    /// When the API server refuses or the host cannot be read.
    pub async fn report(
        &mut self,
        ready: Result<(), String>,
        force: bool,
    ) -> Result<bool, RegisterError> {
        let status = self.status(ready, &self.reported)?;
        let now_conditions = status.conditions.clone().unwrap_or_default();
        let due = self.last_report.is_none_or(|t| t.elapsed() >= REPORT_EVERY);
        if !force && !due && !self.drifted && same(&now_conditions, &self.reported) {
            return Ok(false);
        }
        {
            let _permit = self.inflight.permit().await;
            self.api
                .patch_status(
                    &self.id.name,
                    &PatchParams::default(),
                    &Patch::Merge(&json!({"status": status})),
                )
                .await
                .map_err(self.error("report status"))?;
        }
        self.reported_now(now_conditions);
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::NodeStatus;

    use super::*;
    use crate::node::{capacity::Resources, conditions::Pressure, host::Observed};

    struct Fixed;

    impl Host for Fixed {
        fn observe(&self) -> Result<Observed, HostError> {
            Ok(Observed {
                resources: Resources {
                    capacity: BTreeMap::new(),
                    allocatable: BTreeMap::new(),
                },
                pressure: Pressure::default(),
            })
        }

        fn machine(&self) -> MachineInfo {
            MachineInfo {
                architecture: "arm64".into(),
                kubelet_version: "v1.33.0-test".into(),
                ..MachineInfo::default()
            }
        }
    }

    fn registration() -> Registration {
        // Never contacted: these tests stop short of any request.
        let client = Client::try_from(kube::Config::new(
            "http://127.0.0.1:1".parse().expect("a URL"),
        ))
        .expect("a client");
        let id = Identity {
            name: "n1".into(),
            address: Ipv4Addr::new(192, 0, 2, 7),
            port: 10250,
            labels: BTreeMap::from([("type".into(), "simulated".into())]),
            annotations: BTreeMap::new(),
            taints: Vec::new(),
            pod_cidr: None,
            provider_id: None,
        };
        Registration::new(client, id, Box::new(Fixed), Inflight::unbounded())
    }

    fn stored(conditions: Vec<NodeCondition>) -> Node {
        Node {
            status: Some(NodeStatus {
                conditions: Some(conditions),
                ..NodeStatus::default()
            }),
            ..Node::default()
        }
    }

    #[tokio::test]
    async fn conditions_someone_else_wrote_are_reported_again() {
        let mut r = registration();
        let status = r.status(Ok(()), &[]).unwrap();
        let ours = status.conditions.unwrap();
        r.reported_now(ours.clone());
        // The echo of our own report is no drift.
        r.observe(&stored(ours.clone()));
        assert!(!r.drifted);
        // The node lifecycle controller marked the node while its Lease lapsed.
        let mut marked = ours;
        let ready = marked.iter_mut().find(|c| c.type_ == "Ready").unwrap();
        ready.status = "Unknown".into();
        r.observe(&stored(marked));
        assert!(r.drifted);
    }

    #[tokio::test]
    async fn the_status_says_who_the_node_is() {
        let r = registration();
        let status = r.status(Err("waiting".into()), &[]).unwrap();
        let info = status.node_info.unwrap();
        assert_eq!(
            (info.architecture.as_str(), info.kubelet_version.as_str()),
            ("arm64", "v1.33.0-test")
        );
        let ready = status
            .conditions
            .unwrap()
            .into_iter()
            .find(|c| c.type_ == "Ready")
            .unwrap();
        assert_eq!(
            (ready.status.as_str(), ready.message.as_deref()),
            ("False", Some("waiting"))
        );
        let addresses = status.addresses.unwrap();
        assert_eq!(addresses[0].address, "192.0.2.7");
        let labels = labels(&r.id, &r.machine);
        assert_eq!(labels["kubernetes.io/arch"], "arm64");
        assert_eq!(labels["type"], "simulated");
        assert_eq!(labels["kubernetes.io/hostname"], "n1");
    }
}
