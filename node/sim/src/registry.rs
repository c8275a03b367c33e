//! Node objects: registration (create, or adopt what a previous run left), one Node watch
//! for every node of the process, and the kubelet's status reports: at once when a node's
//! `Ready` is not `True` (the node lifecycle controller marked it while Leases lapsed),
//! otherwise a heartbeat every five minutes per node, spread over those five minutes.

use std::{
    collections::{BTreeMap, HashSet},
    sync::Arc,
    time::Duration,
};

use futures::{StreamExt, stream, stream::FuturesUnordered};
use k8s_openapi::{
    api::core::v1::{
        DaemonEndpoint, Node, NodeAddress, NodeCondition, NodeDaemonEndpoints, NodeSpec,
        NodeStatus, NodeSystemInfo, Taint,
    },
    apimachinery::pkg::{
        api::resource::Quantity,
        apis::meta::v1::{ObjectMeta, Time},
    },
    jiff::Timestamp,
};
use kube::{
    Api, ResourceExt,
    api::{ListParams, Patch, PatchParams, PostParams},
    runtime::{WatchStreamExt, watcher},
};
use serde_json::json;
use tokio::time::Instant;

use super::{LiveNode, Sim, SimError, addresses::node_ip, api_code, lease, pace::Pacer, retry};

/// The kubelet's `nodeStatusReportFrequency`: an unchanged status is still reported this
/// often, which refreshes the conditions' `lastHeartbeatTime`.
const REPORT_EVERY: Duration = Duration::from_mins(5);
/// The kubelet's `nodeStatusUpdateFrequency`: how often it looks for a status that drifted
/// from what it would report.
const CHECK_EVERY: Duration = Duration::from_secs(10);

/// The kubelet version every simulated node reports.
pub const KUBELET_VERSION: &str = "v1.33.0-skiff-sim";

/// The four conditions a healthy kubelet reports, as (type, status, reason, message).
const CONDITIONS: [(&str, &str, &str, &str); 4] = [
    (
        "MemoryPressure",
        "False",
        "KubeletHasSufficientMemory",
        "kubelet has sufficient memory available",
    ),
    (
        "DiskPressure",
        "False",
        "KubeletHasNoDiskPressure",
        "kubelet has no disk pressure",
    ),
    (
        "PIDPressure",
        "False",
        "KubeletHasSufficientPID",
        "kubelet has sufficient PID available",
    ),
    (
        "Ready",
        "True",
        "KubeletReady",
        "kubelet is posting ready status",
    ),
];

/// The healthy conditions, heartbeat `now`. A condition whose status `existing` already
/// shows keeps its transition time (omitted: strategic merge keeps the stored one).
fn conditions(now: Timestamp, existing: Option<&[NodeCondition]>) -> Vec<NodeCondition> {
    CONDITIONS
        .iter()
        .map(|(type_, status, reason, message)| {
            let unchanged = existing
                .and_then(|conds| conds.iter().find(|c| c.type_ == *type_))
                .is_some_and(|c| c.status == *status);
            NodeCondition {
                type_: (*type_).to_owned(),
                status: (*status).to_owned(),
                reason: Some((*reason).to_owned()),
                message: Some((*message).to_owned()),
                last_heartbeat_time: Some(Time(now)),
                last_transition_time: (!unchanged).then_some(Time(now)),
            }
        })
        .collect()
}

fn status(sim: &Sim, index: usize, now: Timestamp, existing: Option<&Node>) -> NodeStatus {
    let capacity: BTreeMap<String, Quantity> = sim
        .config
        .capacity
        .iter()
        .map(|(k, v)| (k.clone(), Quantity(v.clone())))
        .collect();
    let name = sim.name(index);
    let existing_conditions = existing
        .and_then(|n| n.status.as_ref())
        .and_then(|s| s.conditions.as_deref());
    NodeStatus {
        allocatable: Some(capacity.clone()),
        capacity: Some(capacity),
        conditions: Some(conditions(now, existing_conditions)),
        addresses: Some(vec![
            NodeAddress {
                type_: "InternalIP".to_owned(),
                address: node_ip(sim.config.node_ip_base, index).to_string(),
            },
            NodeAddress {
                type_: "Hostname".to_owned(),
                address: name.clone(),
            },
        ]),
        daemon_endpoints: Some(NodeDaemonEndpoints {
            kubelet_endpoint: Some(DaemonEndpoint { port: 10250 }),
        }),
        node_info: Some(NodeSystemInfo {
            architecture: "amd64".to_owned(),
            boot_id: format!("skiff-sim-boot-{name}"),
            container_runtime_version: "skiff-sim://0.1.0".to_owned(),
            kernel_version: "simulated".to_owned(),
            kube_proxy_version: String::new(),
            kubelet_version: KUBELET_VERSION.to_owned(),
            machine_id: format!("skiff-sim-machine-{name}"),
            operating_system: "linux".to_owned(),
            os_image: "skiff simulated node".to_owned(),
            system_uuid: format!("skiff-sim-{name}"),
            ..NodeSystemInfo::default()
        }),
        ..NodeStatus::default()
    }
}

/// The labels node `index` carries: the kubelet's defaults, `type=simulated`, its zone,
/// then the configured ones.
fn labels(sim: &Sim, index: usize) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::from([
        ("kubernetes.io/hostname".to_owned(), sim.name(index)),
        ("kubernetes.io/os".to_owned(), "linux".to_owned()),
        ("kubernetes.io/arch".to_owned(), "amd64".to_owned()),
        ("type".to_owned(), "simulated".to_owned()),
        (
            "topology.kubernetes.io/zone".to_owned(),
            format!("zone-{}", index % sim.config.zones.max(1)),
        ),
    ]);
    labels.extend(sim.config.labels.clone());
    labels
}

fn node(sim: &Sim, index: usize, now: Timestamp) -> Node {
    let name = sim.name(index);
    let taints: Vec<Taint> = sim
        .config
        .taints
        .iter()
        .map(|t| Taint {
            key: t.key.clone(),
            value: (!t.value.is_empty()).then(|| t.value.clone()),
            effect: t.effect.clone(),
            time_added: None,
        })
        .collect();
    Node {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            labels: Some(labels(sim, index)),
            annotations: Some(BTreeMap::from([(
                "kwok.x-k8s.io/node".to_owned(),
                "fake".to_owned(),
            )])),
            ..ObjectMeta::default()
        },
        spec: Some(NodeSpec {
            provider_id: Some(format!("skiff-sim://{name}")),
            taints: (!taints.is_empty()).then_some(taints),
            ..NodeSpec::default()
        }),
        status: Some(status(sim, index, now, None)),
    }
}

fn pod_cidr(node: &Node) -> Option<String> {
    node.spec.as_ref().and_then(|s| s.pod_cidr.clone())
}

/// Every existing Node that is one of this process's, by index.
async fn existing(sim: &Sim) -> Result<Vec<Option<Node>>, SimError> {
    let api: Api<Node> = Api::all(sim.client.clone());
    let mut found = vec![None; sim.config.count];
    let mut params = ListParams::default().limit(500);
    loop {
        let page = retry("list nodes", || api.list(&params))
            .await
            .map_err(SimError::ListNodes)?;
        for node in page.items {
            if let Some(index) = sim.index_of(&node.name_any()) {
                found[index] = Some(node);
            }
        }
        match page.metadata.continue_ {
            Some(token) if !token.is_empty() => params = params.continue_token(&token),
            _ => return Ok(found),
        }
    }
}

/// Reports full status for a Node that exists already, and puts back default labels it
/// lost, as a restarted kubelet does. Taints are left as they are.
async fn adopt(sim: &Sim, index: usize, existing: &Node) -> Result<(), kube::Error> {
    let api: Api<Node> = Api::all(sim.client.clone());
    let name = sim.name(index);
    let wanted = labels(sim, index);
    let missing: BTreeMap<&String, &String> = wanted
        .iter()
        .filter(|(k, v)| existing.labels().get(*k) != Some(*v))
        .collect();
    let _permit = sim.permit().await;
    if !missing.is_empty() {
        let patch = json!({"metadata": {"labels": missing}});
        api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
    }
    let patch = json!({"status": status(sim, index, Timestamp::now(), Some(existing))});
    api.patch_status(&name, &PatchParams::default(), &Patch::Strategic(&patch))
        .await?;
    Ok(())
}

/// Creates node `index`, or adopts it; then makes sure its Lease exists.
async fn register(sim: &Sim, index: usize, existing: Option<Node>) -> Result<(), kube::Error> {
    let api: Api<Node> = Api::all(sim.client.clone());
    let name = sim.name(index);
    let node = if let Some(existing) = existing {
        adopt(sim, index, &existing).await?;
        existing
    } else {
        let created = {
            let _permit = sim.permit().await;
            api.create(&PostParams::default(), &node(sim, index, Timestamp::now()))
                .await
        };
        match created {
            Ok(created) => {
                let reported = created
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| !c.is_empty());
                // A server that drops status on create gets it through `nodes/status`.
                if !reported {
                    adopt(sim, index, &created).await?;
                }
                created
            }
            Err(err) if api_code(&err) == Some(409) => {
                let existing = {
                    let _permit = sim.permit().await;
                    api.get(&name).await?
                };
                adopt(sim, index, &existing).await?;
                existing
            }
            Err(err) => return Err(err),
        }
    };
    let uid = node.uid().unwrap_or_default();
    lease::ensure(sim, index, &uid).await?;
    sim.update_node(index, |slot| {
        *slot = Some(LiveNode {
            uid,
            pod_cidr: pod_cidr(&node),
        });
    });
    Ok(())
}

/// Registers every node, `concurrency` at a time.
pub(super) async fn register_all(sim: &Arc<Sim>) -> Result<(), SimError> {
    let existing = existing(sim).await?;
    let adopted = existing.iter().filter(|n| n.is_some()).count();
    if adopted > 0 {
        tracing::info!(adopted, "adopting nodes registered by an earlier run");
    }
    let mut results = stream::iter(existing.into_iter().enumerate())
        .map(|(index, node)| async move {
            retry("register node", || register(sim, index, node.clone()))
                .await
                .map_err(|source| SimError::Register {
                    node: sim.name(index),
                    source,
                })
        })
        .buffer_unordered(sim.config.concurrency.max(1));
    while let Some(result) = results.next().await {
        result?;
    }
    Ok(())
}

fn is_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
        .is_some_and(|c| c.status == "True")
}

/// Which kind of status report a node is due.
#[derive(Clone, Copy, Debug)]
enum Report {
    /// Nothing changed: refresh the heartbeat times only.
    Heartbeat,
    /// Someone else changed the conditions: report them all, with new transition times.
    Repair,
}

async fn report(sim: &Sim, index: usize, kind: Report) -> Result<(), kube::Error> {
    let api: Api<Node> = Api::all(sim.client.clone());
    let now = Timestamp::now();
    let mut conditions = conditions(now, None);
    if matches!(kind, Report::Heartbeat) {
        for c in &mut conditions {
            c.last_transition_time = None;
        }
    }
    let patch = json!({"status": {"conditions": conditions}});
    let _permit = sim.permit().await;
    api.patch_status(
        &sim.name(index),
        &PatchParams::default(),
        &Patch::Strategic(&patch),
    )
    .await
    .map(drop)
}

/// A report for a live node that has none in flight.
fn send(
    sim: &Arc<Sim>,
    index: usize,
    kind: Report,
    busy: &mut HashSet<usize>,
) -> Option<impl Future<Output = (usize, Report, Result<(), kube::Error>)> + use<>> {
    (sim.is_live(index) && busy.insert(index)).then(|| {
        let sim = sim.clone();
        async move { (index, kind, report(&sim, index, kind).await) }
    })
}

/// Stops simulating node `index`: it was deleted from the API.
fn forget(sim: &Sim, index: usize) {
    let mut was_live = false;
    sim.update_node(index, |slot| was_live = slot.take().is_some());
    if was_live {
        tracing::info!(node = %sim.name(index), "node deleted from the API, no longer simulated");
    }
}

/// Follows the process's Nodes and reports their status, until the Node watch ends.
pub(super) async fn report_forever(sim: Arc<Sim>) -> Result<(), SimError> {
    let api: Api<Node> = Api::all(sim.client.clone());
    let mut events =
        std::pin::pin!(watcher(api, watcher::Config::default().any_semantic()).default_backoff());
    let mut heartbeats = Pacer::new(
        sim.config.count,
        REPORT_EVERY,
        Instant::now() + REPORT_EVERY,
    );
    let mut check = tokio::time::interval_at(Instant::now() + CHECK_EVERY, CHECK_EVERY);
    // Nodes whose conditions someone else changed, repaired at the next check.
    let mut drifted = HashSet::new();
    // Nodes seen in a re-list; the others were deleted while the watch was down.
    let mut relisted: Option<HashSet<usize>> = None;
    let mut in_flight = FuturesUnordered::new();
    let mut busy = HashSet::new();
    loop {
        tokio::select! {
            event = events.next() => {
                let Some(event) = event else { return Err(SimError::WatchEnded("node")) };
                match event {
                    Ok(watcher::Event::Apply(node) | watcher::Event::InitApply(node)) => {
                        let Some((index, _)) = sim.live(&node.name_any()) else { continue };
                        if let Some(seen) = relisted.as_mut() {
                            seen.insert(index);
                        }
                        let cidr = pod_cidr(&node);
                        sim.update_node(index, |slot| {
                            if let Some(live) = slot {
                                live.pod_cidr = cidr;
                            }
                        });
                        if !is_ready(&node) {
                            drifted.insert(index);
                        }
                    }
                    Ok(watcher::Event::Delete(node)) => {
                        if let Some((index, _)) = sim.live(&node.name_any()) {
                            forget(&sim, index);
                        }
                    }
                    Ok(watcher::Event::Init) => relisted = Some(HashSet::new()),
                    Ok(watcher::Event::InitDone) => {
                        if let Some(seen) = relisted.take() {
                            for index in (0..sim.config.count).filter(|i| !seen.contains(i)) {
                                forget(&sim, index);
                            }
                        }
                    }
                    Err(err) => tracing::warn!(?err, "node watch failed, retrying"),
                }
            }
            _ = check.tick() => {
                for index in std::mem::take(&mut drifted) {
                    in_flight.extend(send(&sim, index, Report::Repair, &mut busy));
                }
            }
            due = heartbeats.due() => {
                for index in due {
                    in_flight.extend(send(&sim, index, Report::Heartbeat, &mut busy));
                }
            }
            Some((index, kind, result)) = in_flight.next(), if !in_flight.is_empty() => {
                busy.remove(&index);
                if let Err(err) = result {
                    tracing::warn!(node = %sim.name(index), ?kind, ?err, "node status report failed");
                    if api_code(&err) != Some(404) {
                        drifted.insert(index);
                    }
                }
            }
        }
    }
}
