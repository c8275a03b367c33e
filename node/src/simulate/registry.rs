//! Node objects: registration (create, or adopt after a restart), and the kubelet's
//! periodic status report that keeps `Ready=True` and heartbeats fresh.

use std::{
    collections::BTreeMap,
    sync::{Arc, PoisonError},
    time::{Duration, Instant},
};

use futures::{StreamExt, stream};
use k8s_openapi::{
    api::core::v1::{
        Node, NodeAddress, NodeCondition, NodeSpec, NodeStatus, NodeSystemInfo, Taint,
    },
    apimachinery::pkg::{
        api::resource::Quantity,
        apis::meta::v1::{ObjectMeta, Time},
    },
    jiff::Timestamp,
};
use kube::{
    Api, ResourceExt,
    api::{Patch, PatchParams, PostParams},
    runtime::{WatchStreamExt, watcher},
};

use super::{Sim, SimError};

/// How often the full status is reported even when nothing changed (the kubelet's
/// `nodeStatusReportFrequency`).
const REPORT_EVERY: Duration = Duration::from_mins(5);
/// How often the report loop looks for nodes whose status drifted.
const CHECK_EVERY: Duration = Duration::from_secs(10);

/// The name of simulated node `index`.
#[must_use]
pub fn node_name(prefix: &str, index: usize) -> String {
    format!("{prefix}{index}")
}

/// A node's address, unique per index (text only: no traffic goes there).
pub(super) fn node_ip(index: usize) -> String {
    let i = u32::try_from(index).unwrap_or(0);
    std::net::Ipv4Addr::from(0x7f_40_00_00_u32 + i).to_string()
}

fn conditions(now: Timestamp) -> Vec<NodeCondition> {
    let cond = |type_: &str, status: &str, reason: &str, message: &str| NodeCondition {
        type_: type_.to_owned(),
        status: status.to_owned(),
        reason: Some(reason.to_owned()),
        message: Some(message.to_owned()),
        last_heartbeat_time: Some(Time(now)),
        last_transition_time: Some(Time(now)),
    };
    vec![
        cond(
            "MemoryPressure",
            "False",
            "KubeletHasSufficientMemory",
            "kubelet has sufficient memory available",
        ),
        cond(
            "DiskPressure",
            "False",
            "KubeletHasNoDiskPressure",
            "kubelet has no disk pressure",
        ),
        cond(
            "PIDPressure",
            "False",
            "KubeletHasSufficientPID",
            "kubelet has sufficient PID available",
        ),
        cond(
            "Ready",
            "True",
            "KubeletReady",
            "kubelet is posting ready status",
        ),
    ]
}

fn status(sim: &Sim, index: usize, now: Timestamp) -> NodeStatus {
    let capacity: BTreeMap<String, Quantity> = sim
        .config
        .capacity
        .iter()
        .map(|(k, v)| (k.clone(), Quantity(v.clone())))
        .collect();
    let name = node_name(&sim.config.prefix, index);
    NodeStatus {
        allocatable: Some(capacity.clone()),
        capacity: Some(capacity),
        conditions: Some(conditions(now)),
        addresses: Some(vec![
            NodeAddress {
                type_: "InternalIP".to_owned(),
                address: node_ip(index),
            },
            NodeAddress {
                type_: "Hostname".to_owned(),
                address: name,
            },
        ]),
        node_info: Some(NodeSystemInfo {
            architecture: "amd64".to_owned(),
            boot_id: format!("sim-{index}"),
            container_runtime_version: "skiff-sim://0.1.0".to_owned(),
            kernel_version: "simulated".to_owned(),
            kube_proxy_version: String::new(),
            kubelet_version: "v1.33.0-skiff-sim".to_owned(),
            machine_id: format!("sim-{index}"),
            operating_system: "linux".to_owned(),
            os_image: "skiff simulated node".to_owned(),
            system_uuid: format!("sim-{index}"),
            ..NodeSystemInfo::default()
        }),
        ..NodeStatus::default()
    }
}

fn node(sim: &Sim, index: usize, now: Timestamp) -> Node {
    let name = node_name(&sim.config.prefix, index);
    let mut labels = BTreeMap::from([
        ("kubernetes.io/hostname".to_owned(), name.clone()),
        ("kubernetes.io/os".to_owned(), "linux".to_owned()),
        ("kubernetes.io/arch".to_owned(), "amd64".to_owned()),
        ("type".to_owned(), "simulated".to_owned()),
        (
            "topology.kubernetes.io/zone".to_owned(),
            format!("zone-{}", index % sim.config.zones.max(1)),
        ),
    ]);
    labels.extend(sim.config.labels.clone());
    let taints: Vec<Taint> = sim
        .config
        .taints
        .iter()
        .map(|(key, value, effect)| Taint {
            key: key.clone(),
            value: (!value.is_empty()).then(|| value.clone()),
            effect: effect.clone(),
            time_added: None,
        })
        .collect();
    Node {
        metadata: ObjectMeta {
            name: Some(name),
            labels: Some(labels),
            annotations: Some(BTreeMap::from([(
                "kwok.x-k8s.io/node".to_owned(),
                "fake".to_owned(),
            )])),
            ..ObjectMeta::default()
        },
        spec: Some(NodeSpec {
            taints: (!taints.is_empty()).then_some(taints),
            ..NodeSpec::default()
        }),
        status: Some(status(sim, index, now)),
    }
}

async fn register(sim: &Sim, index: usize) -> Result<(), SimError> {
    let _permit = sim.limit.acquire().await;
    let api: Api<Node> = Api::all(sim.client.clone());
    let now = Timestamp::now();
    let wanted = node(sim, index, now);
    let name = wanted.name_any();
    let failed = |source| SimError::Register {
        node: name.clone(),
        source,
    };
    match api.create(&PostParams::default(), &wanted).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {
            // Registered before (this process restarted): report fresh status.
            let patch = serde_json::json!({ "status": status(sim, index, now) });
            api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map_err(failed)?;
        }
        Err(err) => return Err(failed(err)),
    }
    sim.nodes
        .write()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(name, index);
    Ok(())
}

/// Registers every node, several at a time.
pub(super) async fn register_all(sim: &Arc<Sim>) -> Result<(), SimError> {
    let results: Vec<Result<(), SimError>> = stream::iter(0..sim.config.count)
        .map(|i| register(sim, i))
        .buffer_unordered(sim.config.concurrency.max(1))
        .collect()
        .await;
    results.into_iter().collect()
}

/// Reports status like the kubelet: at once when a node's Ready condition is not True
/// (the node controller marked it Unknown while the Lease lapsed), otherwise every five
/// minutes. Nodes deleted from the API stop being simulated.
pub(super) async fn heartbeat_forever(sim: Arc<Sim>) {
    let api: Api<Node> = Api::all(sim.client.clone());
    let (store, writer) = kube::runtime::reflector::store();
    let watch = watcher(api.clone(), watcher::Config::default().any_semantic())
        .default_backoff()
        .reflect(writer)
        .for_each(|event| {
            if let Ok(watcher::Event::Delete(node)) = event {
                sim.nodes
                    .write()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(&node.name_any());
            }
            futures::future::ready(())
        });
    let report = async {
        let mut last_full = Instant::now();
        loop {
            tokio::time::sleep(CHECK_EVERY).await;
            let full = last_full.elapsed() >= REPORT_EVERY;
            if full {
                last_full = Instant::now();
            }
            let nodes: Vec<(String, usize)> = sim
                .nodes
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .iter()
                .map(|(n, i)| (n.clone(), *i))
                .collect();
            let due: Vec<(String, usize)> = nodes
                .into_iter()
                .filter(|(name, _)| {
                    full || store
                        .get(&kube::runtime::reflector::ObjectRef::new(name))
                        .is_some_and(|n| !is_ready(&n))
                })
                .collect();
            stream::iter(due)
                .for_each_concurrent(sim.config.concurrency.max(1), |(name, index)| {
                    let api = api.clone();
                    let sim = sim.clone();
                    async move {
                        let patch = serde_json::json!({ "status": { "conditions": conditions(Timestamp::now()) } });
                        if let Err(err) = api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch)).await {
                            tracing::debug!(node = %name, index, ?err, "status report failed");
                        }
                        drop(sim);
                    }
                })
                .await;
        }
    };
    tokio::join!(watch, report);
}

fn is_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
        .is_some_and(|c| c.status == "True")
}
