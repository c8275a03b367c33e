//! The Node object: registration (create, or adopt the one an earlier run left) and the
//! status reports that follow, sent when something changed and at least every five minutes.

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
    Api, Client,
    api::{Patch, PatchParams, PostParams},
};
use serde_json::json;
use skiff_types::Ipv4Cidr;

use super::{
    capacity::{Reservations, resources},
    conditions::{conditions, same},
    host::{Host, HostError, MachineInfo},
};

/// The version the node reports as its kubelet's.
pub const KUBELET_VERSION: &str = "v1.33.0-skiff";
/// The runtime the node reports.
pub const RUNTIME_VERSION: &str = "skiff://0.1.0 (libcontainer 0.7)";
/// The kubelet's `nodeStatusReportFrequency`.
pub const REPORT_EVERY: Duration = Duration::from_mins(5);

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

/// Who the node is and what it reports about itself.
#[derive(Clone, Debug)]
pub struct Identity {
    /// The Node's name.
    pub name: String,
    /// Its `InternalIP`.
    pub address: Ipv4Addr,
    /// The port of its HTTP endpoint (`daemonEndpoints.kubeletEndpoint`).
    pub port: u16,
    /// Labels on top of the kubelet's defaults.
    pub labels: BTreeMap<String, String>,
    /// Taints set at registration.
    pub taints: Vec<Taint>,
    /// `spec.podCIDR` to set when the Node has none (no node IPAM running).
    pub pod_cidr: Option<Ipv4Cidr>,
    /// What is kept back from pods.
    pub reserved: Reservations,
}

fn labels(id: &Identity) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::from([
        ("kubernetes.io/hostname".to_owned(), id.name.clone()),
        ("kubernetes.io/os".to_owned(), "linux".to_owned()),
        (
            "kubernetes.io/arch".to_owned(),
            std::env::consts::ARCH.replace("x86_64", "amd64"),
        ),
        ("beta.kubernetes.io/os".to_owned(), "linux".to_owned()),
        (
            "beta.kubernetes.io/arch".to_owned(),
            std::env::consts::ARCH.replace("x86_64", "amd64"),
        ),
    ]);
    labels.extend(id.labels.clone());
    labels
}

/// The status the node reports now.
fn status(
    id: &Identity,
    machine: &MachineInfo,
    host: &dyn Host,
    ready: Result<(), String>,
    previous: &[NodeCondition],
) -> Result<NodeStatus, HostError> {
    let reading = host.read()?;
    let r = resources(&reading, &id.reserved);
    Ok(NodeStatus {
        capacity: Some(r.capacity),
        allocatable: Some(r.allocatable),
        conditions: Some(conditions(
            &reading,
            &id.reserved,
            ready,
            previous,
            Timestamp::now(),
        )),
        addresses: Some(vec![
            NodeAddress {
                type_: "InternalIP".to_owned(),
                address: id.address.to_string(),
            },
            NodeAddress {
                type_: "Hostname".to_owned(),
                address: id.name.clone(),
            },
        ]),
        daemon_endpoints: Some(NodeDaemonEndpoints {
            kubelet_endpoint: Some(DaemonEndpoint {
                port: i32::from(id.port),
            }),
        }),
        node_info: Some(NodeSystemInfo {
            architecture: std::env::consts::ARCH.replace("x86_64", "amd64"),
            boot_id: machine.boot_id.clone(),
            container_runtime_version: RUNTIME_VERSION.to_owned(),
            kernel_version: machine.kernel_version.clone(),
            kube_proxy_version: String::new(),
            kubelet_version: KUBELET_VERSION.to_owned(),
            machine_id: machine.machine_id.clone(),
            operating_system: "linux".to_owned(),
            os_image: machine.os_image.clone(),
            system_uuid: machine.system_uuid.clone(),
            ..NodeSystemInfo::default()
        }),
        ..NodeStatus::default()
    })
}

/// Registers the Node and keeps its status current.
pub struct Registration {
    api: Api<Node>,
    id: Identity,
    host: Box<dyn Host>,
    machine: MachineInfo,
    reported: Vec<NodeCondition>,
    last_report: Option<tokio::time::Instant>,
}

impl std::fmt::Debug for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registration")
            .field("node", &self.id.name)
            .finish_non_exhaustive()
    }
}

impl Registration {
    /// A registration for `id` on the host `host`.
    #[must_use]
    pub fn new(client: Client, id: Identity, host: Box<dyn Host>) -> Self {
        let machine = host.machine();
        Self {
            api: Api::all(client),
            id,
            host,
            machine,
            reported: Vec::new(),
            last_report: None,
        }
    }

    fn error(&self, action: &'static str) -> impl FnOnce(kube::Error) -> RegisterError + '_ {
        move |source| RegisterError::Api {
            node: self.id.name.clone(),
            action,
            source,
        }
    }

    /// Creates the Node or adopts an existing one (labels restored, podCIDR set if it has
    /// none and one was configured), then reports its status. Returns the Node.
    ///
    /// # Errors
    /// When the API server refuses or the host cannot be read.
    pub async fn register(&mut self, ready: Result<(), String>) -> Result<Node, RegisterError> {
        let node = Node {
            metadata: ObjectMeta {
                name: Some(self.id.name.clone()),
                labels: Some(labels(&self.id)),
                ..ObjectMeta::default()
            },
            spec: Some(NodeSpec {
                pod_cidr: self.id.pod_cidr.map(|c| c.to_string()),
                pod_cidrs: self.id.pod_cidr.map(|c| vec![c.to_string()]),
                taints: (!self.id.taints.is_empty()).then(|| self.id.taints.clone()),
                ..NodeSpec::default()
            }),
            status: None,
        };
        match self.api.create(&PostParams::default(), &node).await {
            Ok(_) => tracing::info!(node = %self.id.name, "registered"),
            Err(kube::Error::Api(status)) if status.code == 409 => {
                let existing = self
                    .api
                    .get(&self.id.name)
                    .await
                    .map_err(self.error("get"))?;
                let has_cidr = existing
                    .spec
                    .as_ref()
                    .and_then(|s| s.pod_cidr.as_ref())
                    .is_some();
                let mut patch = json!({"metadata": {"labels": labels(&self.id)}});
                if !has_cidr && let Some(cidr) = self.id.pod_cidr {
                    let cidr = cidr.to_string();
                    patch["spec"] = json!({"podCIDR": cidr, "podCIDRs": [cidr]});
                }
                self.api
                    .patch(
                        &self.id.name,
                        &PatchParams::default(),
                        &Patch::Merge(&patch),
                    )
                    .await
                    .map_err(self.error("adopt"))?;
                tracing::info!(node = %self.id.name, "adopted the existing Node");
            }
            Err(err) => return Err(self.error("create")(err)),
        }
        self.report(ready, true).await
    }

    /// Sends the status when it changed, when `force`, or when the last report is older
    /// than [`REPORT_EVERY`]. Returns the Node as stored.
    ///
    /// # Errors
    /// When the API server refuses or the host cannot be read.
    pub async fn report(
        &mut self,
        ready: Result<(), String>,
        force: bool,
    ) -> Result<Node, RegisterError> {
        let status = status(
            &self.id,
            &self.machine,
            self.host.as_ref(),
            ready,
            &self.reported,
        )?;
        let now_conditions = status.conditions.clone().unwrap_or_default();
        let due = self.last_report.is_none_or(|t| t.elapsed() >= REPORT_EVERY);
        if !force && !due && same(&now_conditions, &self.reported) {
            return self.api.get(&self.id.name).await.map_err(self.error("get"));
        }
        let node = self
            .api
            .patch_status(
                &self.id.name,
                &PatchParams::default(),
                &Patch::Merge(&json!({"status": status})),
            )
            .await
            .map_err(self.error("report status"))?;
        self.reported = now_conditions;
        self.last_report = Some(tokio::time::Instant::now());
        Ok(node)
    }

    /// The Node's name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.id.name
    }
}
