//! `LoadBalancer` addresses (`MetalLB`'s IPAM, k3s `ServiceLB`): every `type: LoadBalancer`
//! Service of no other `loadBalancerClass` gets one address from `--loadbalancer-ip-range`
//! in `status.loadBalancer.ingress`, never one another Service holds; without a range, the
//! addresses of the nodes that serve load-balancer traffic.

pub mod nodes;

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    future::Future,
    net::Ipv4Addr,
    str::FromStr,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use k8s_openapi::api::core::v1::{Node, Service};
use kube::{
    Api, ResourceExt,
    api::{Patch, PatchParams},
    runtime::{
        Controller,
        controller::{Action, Config as ControllerConfig},
        reflector::{ObjectRef, Store},
    },
};
use skiff_control_runtime::{Clock, Context, Informers};
use skiff_types::Ipv4Cidr;

use crate::Error;

const COMPONENT: &str = "service-lb-controller";

/// How often a Service waiting for a free (or its requested) address looks again: a
/// deleted Service frees its address without an event on the waiting one.
const RETRY: Duration = Duration::from_secs(5);

/// A contiguous range of IPv4 addresses, both ends included.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpRange {
    first: Ipv4Addr,
    last: Ipv4Addr,
}

/// Why a range did not parse.
#[derive(Debug, thiserror::Error)]
pub enum RangeError {
    /// Neither `a.b.c.d/len` (host bits clear) nor `a.b.c.d-e.f.g.h`.
    #[error("{0:?} is neither a CIDR (192.168.1.240/28) nor a range (192.168.1.240-192.168.1.250)")]
    Syntax(String),
    /// The range ends before it starts.
    #[error("range {0} ends before it starts")]
    Backwards(String),
}

impl IpRange {
    /// Every address from `first` to `last`.
    ///
    /// # Errors
    /// [`RangeError::Backwards`] when `last` comes before `first`.
    pub fn new(first: Ipv4Addr, last: Ipv4Addr) -> Result<Self, RangeError> {
        if last < first {
            return Err(RangeError::Backwards(format!("{first}-{last}")));
        }
        Ok(Self { first, last })
    }

    /// Whether `addr` is in the range.
    #[must_use]
    pub fn contains(self, addr: Ipv4Addr) -> bool {
        (self.first..=self.last).contains(&addr)
    }

    /// How many addresses the range holds.
    #[must_use]
    pub fn size(self) -> u64 {
        u64::from(u32::from(self.last) - u32::from(self.first)) + 1
    }

    fn addresses(self) -> impl Iterator<Item = Ipv4Addr> + use<> {
        (u32::from(self.first)..=u32::from(self.last)).map(Ipv4Addr::from)
    }
}

impl FromStr for IpRange {
    type Err = RangeError;

    /// A CIDR (every address in it, network and broadcast too, as `MetalLB`: the pool is
    /// not the link's subnet; host bits must be clear) or `first-last`.
    fn from_str(text: &str) -> Result<Self, RangeError> {
        let text = text.trim();
        let syntax = || RangeError::Syntax(text.to_owned());
        if let Some((first, last)) = text.split_once('-') {
            let first = first.trim().parse().map_err(|_| syntax())?;
            let last = last.trim().parse().map_err(|_| syntax())?;
            return Self::new(first, last);
        }
        let cidr: Ipv4Cidr = text.parse().map_err(|_| syntax())?;
        Self::new(cidr.network(), cidr.last())
    }
}

impl fmt::Display for IpRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

/// What to do for one Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Nothing to write: another class's Service, or not a `LoadBalancer` and nothing to
    /// clear.
    Nothing,
    /// The Service holds this address and no other Service contests it.
    Holds(Ipv4Addr),
    /// Write this address as the Service's only ingress.
    Assign(Ipv4Addr),
    /// Without a range: write these node addresses as the Service's ingress.
    Nodes(Vec<Ipv4Addr>),
    /// The Service is no `LoadBalancer` (any more): clear its ingress, freeing the address.
    Clear,
    /// No address can be given; the Event says why.
    Pending {
        /// The Event's reason.
        reason: &'static str,
        /// The Event's message.
        message: String,
    },
}

/// An address this controller wrote, or is writing, to a Service whose cached copy does
/// not show it yet.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Known {
    uid: String,
    ip: Ipv4Addr,
}

/// The range and the addresses known held beyond the cache.
#[derive(Debug)]
pub struct Allocator {
    range: Option<IpRange>,
    /// By `namespace/name`. An entry stays until the cache shows that Service holding it,
    /// or shows it gone (deleted, re-created under another uid, or no `LoadBalancer`).
    known: BTreeMap<String, Known>,
}

fn key(svc: &Service) -> String {
    format!("{}/{}", svc.namespace().unwrap_or_default(), svc.name_any())
}

fn uid(svc: &Service) -> String {
    svc.metadata.uid.clone().unwrap_or_default()
}

fn is_load_balancer(svc: &Service) -> bool {
    svc.spec.as_ref().and_then(|s| s.type_.as_deref()) == Some("LoadBalancer")
}

/// Whether this controller serves the Service: a `LoadBalancer` of no other class.
fn is_ours(svc: &Service) -> bool {
    is_load_balancer(svc)
        && svc
            .spec
            .as_ref()
            .and_then(|s| s.load_balancer_class.as_deref())
            .is_none()
}

/// The IPv4 addresses in the Service's `status.loadBalancer.ingress`.
fn ingress(svc: &Service) -> Vec<Ipv4Addr> {
    svc.status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|i| i.ip.as_deref()?.parse().ok())
        .collect()
}

fn has_ingress(svc: &Service) -> bool {
    svc.status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .is_some_and(|i| !i.is_empty())
}

/// The address the Service asks for in the deprecated but still honoured
/// `spec.loadBalancerIP`, if any.
fn requested(svc: &Service) -> Option<Result<Ipv4Addr, String>> {
    let text = svc.spec.as_ref()?.load_balancer_ip.as_deref()?.trim();
    (!text.is_empty()).then(|| text.parse().map_err(|_| text.to_owned()))
}

/// Which of two Services holding the same address keeps it: the older one (then the
/// smaller uid), so every controller process decides the same.
fn seniority(svc: &Service) -> (Option<jiff::Timestamp>, String) {
    (
        svc.metadata.creation_timestamp.as_ref().map(|t| t.0),
        uid(svc),
    )
}

impl Allocator {
    /// Hands out addresses from `range`; without one, the serving nodes' addresses.
    #[must_use]
    pub fn new(range: Option<IpRange>) -> Self {
        Self {
            range,
            known: BTreeMap::new(),
        }
    }

    /// What to do for `svc` given every cached Service (`svc` among them, possibly older
    /// than what the API server holds) and Node (used without a range). Every address in the range another Service of
    /// ours holds, or is known to hold, is taken; of two Services showing the same
    /// address the senior keeps it and the other is given a new one. An assignment is
    /// remembered at once; [`Self::failed`] forgets it when its write fails.
    pub fn plan(&mut self, svc: &Service, services: &[Arc<Service>], nodes: &[Arc<Node>]) -> Plan {
        self.forget_shown(services);
        let me = key(svc);
        if !is_load_balancer(svc) {
            self.known.remove(&me);
            return if has_ingress(svc) {
                Plan::Clear
            } else {
                Plan::Nothing
            };
        }
        if !is_ours(svc) {
            return Plan::Nothing;
        }
        let Some(range) = self.range else {
            return nodes::plan(svc, services, nodes);
        };
        let (my_uid, my_seniority) = (uid(svc), seniority(svc));
        // Addresses others hold: a cached holder junior to this Service yields to it.
        let mut taken = BTreeSet::new();
        let mut contested = BTreeSet::new();
        for other in services.iter().filter(|o| uid(o) != my_uid && is_ours(o)) {
            for ip in ingress(other).into_iter().filter(|ip| range.contains(*ip)) {
                if seniority(other) < my_seniority {
                    contested.insert(ip);
                }
                taken.insert(ip);
            }
        }
        for (_, known) in self.known.iter().filter(|(k, _)| **k != me) {
            taken.insert(known.ip);
            contested.insert(known.ip);
        }
        let current = ingress(svc);
        let mine = |ip: Ipv4Addr| current == [ip] && !contested.contains(&ip);
        let choice = match requested(svc) {
            Some(Err(text)) => {
                return Plan::Pending {
                    reason: "InvalidLoadBalancerIP",
                    message: format!("spec.loadBalancerIP {text:?} is no IPv4 address"),
                };
            }
            Some(Ok(ip)) if !range.contains(ip) => {
                return Plan::Pending {
                    reason: "LoadBalancerIPNotInRange",
                    message: format!(
                        "spec.loadBalancerIP {ip} is outside --loadbalancer-ip-range {range}"
                    ),
                };
            }
            Some(Ok(ip)) if mine(ip) => return Plan::Holds(ip),
            Some(Ok(ip)) if taken.contains(&ip) => {
                return Plan::Pending {
                    reason: "LoadBalancerIPInUse",
                    message: format!("spec.loadBalancerIP {ip} is held by another Service"),
                };
            }
            Some(Ok(ip)) => ip,
            None => {
                if let Some(ip) = current
                    .first()
                    .copied()
                    .filter(|ip| range.contains(*ip) && mine(*ip))
                {
                    return Plan::Holds(ip);
                }
                let pending = self
                    .known
                    .get(&me)
                    .filter(|k| k.uid == my_uid && !taken.contains(&k.ip))
                    .map(|k| k.ip);
                match pending.or_else(|| range.addresses().find(|ip| !taken.contains(ip))) {
                    Some(ip) => ip,
                    None => {
                        return Plan::Pending {
                            reason: "AllocationFailed",
                            message: format!(
                                "every address of --loadbalancer-ip-range {range} is taken"
                            ),
                        };
                    }
                }
            }
        };
        self.known.insert(
            me,
            Known {
                uid: my_uid,
                ip: choice,
            },
        );
        Plan::Assign(choice)
    }

    /// The write of `svc`'s address failed: it holds nothing beyond what the cache shows.
    pub fn failed(&mut self, svc: &Service) {
        self.known.remove(&key(svc));
    }

    /// Drops what the cache shows by now: Services holding the address written, and
    /// Services gone.
    fn forget_shown(&mut self, services: &[Arc<Service>]) {
        let by_key: BTreeMap<String, &Arc<Service>> =
            services.iter().map(|s| (key(s), s)).collect();
        self.known.retain(|k, known| {
            by_key.get(k).is_some_and(|s| {
                uid(s) == known.uid && is_ours(s) && !ingress(s).contains(&known.ip)
            })
        });
    }
}

/// The controller's own caches and bookkeeping.
#[derive(Debug)]
pub struct State {
    services: Store<Service>,
    nodes: Store<Node>,
    allocator: Mutex<Allocator>,
}

/// The controller's context.
pub type Ctx = Context<State>;

/// The controller over the process's informers, giving addresses from `range` (none: the
/// serving nodes' addresses); runs until dropped.
pub fn start(
    informers: &Informers,
    range: Option<IpRange>,
    clock: Arc<dyn Clock>,
) -> impl Future<Output = ()> + Send + use<> {
    let services = informers.get::<Service>();
    let node_informer = informers.get::<Node>();
    let ctx = Context::new(
        informers,
        COMPONENT,
        clock,
        State {
            services: services.store(),
            nodes: node_informer.store(),
            allocator: Mutex::new(Allocator::new(range)),
        },
    );
    let (changes, node_changes) = (services.changes(), node_informer.changes());
    async move {
        if let Some(range) = range {
            tracing::info!(
                loadbalancer_ip_range = %range,
                addresses = range.size(),
                "LoadBalancer Services get addresses from the range"
            );
        } else {
            tracing::info!(
                "no --loadbalancer-ip-range: LoadBalancer Services get the addresses of the \
                 Ready nodes"
            );
        }
        let store = ctx.state.services.clone();
        // The first plan must count every address handed out before this process started.
        let _ = store.wait_until_ready().await;
        let _ = ctx.state.nodes.wait_until_ready().await;
        let all = store.clone();
        let controller = Controller::for_shared_stream(changes, store)
            .with_config(ControllerConfig::default().concurrency(1))
            // Without a range a node turning Ready or not changes every Service's addresses.
            .watches_shared_stream(node_changes, move |_node: Arc<Node>| {
                if range.is_some() {
                    return Vec::new();
                }
                all.state()
                    .iter()
                    .filter(|s| is_ours(s))
                    .map(|s| ObjectRef::from_obj(s.as_ref()))
                    .collect::<Vec<_>>()
            });
        skiff_control_runtime::controller::run(controller, reconcile, ctx).await;
    }
}

impl State {
    fn allocator(&self) -> std::sync::MutexGuard<'_, Allocator> {
        self.allocator
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// Gives a `LoadBalancer` Service its address, clears the ingress of one that is no
/// `LoadBalancer` any more, and says on one that cannot get an address why.
///
/// # Errors
/// When the API server refuses the status write.
pub async fn reconcile(svc: Arc<Service>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let plan = {
        let services = ctx.state.services.state();
        let nodes = ctx.state.nodes.state();
        ctx.state.allocator().plan(&svc, &services, &nodes)
    };
    let name = svc.name_any();
    let api: Api<Service> =
        Api::namespaced(ctx.client.clone(), &svc.namespace().unwrap_or_default());
    let patch = match &plan {
        Plan::Nothing | Plan::Holds(_) => return Ok(Action::await_change()),
        Plan::Pending { reason, message } => {
            ctx.recorder.warning(svc.as_ref(), reason, message).await;
            return Ok(Action::requeue(RETRY));
        }
        Plan::Assign(ip) => serde_json::json!({
            "status": {"loadBalancer": {"ingress": [{"ip": ip.to_string(), "ipMode": "VIP"}]}},
        }),
        Plan::Nodes(ips) => {
            let ingress: Vec<_> = ips
                .iter()
                .map(|ip| serde_json::json!({"ip": ip.to_string(), "ipMode": "VIP"}))
                .collect();
            serde_json::json!({"status": {"loadBalancer": {"ingress": ingress}}})
        }
        Plan::Clear => serde_json::json!({"status": {"loadBalancer": {"ingress": null}}}),
    };
    if let Err(err) = api
        .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        ctx.state.allocator().failed(&svc);
        return match err {
            kube::Error::Api(status) if status.code == 404 => Ok(Action::await_change()),
            err => Err(err.into()),
        };
    }
    match plan {
        Plan::Assign(ip) => {
            tracing::info!(service = %key(&svc), %ip, "allocated a LoadBalancer address");
            ctx.recorder
                .normal(
                    svc.as_ref(),
                    "IPAllocated",
                    &format!("Assigned IP {ip} from --loadbalancer-ip-range"),
                )
                .await;
        }
        Plan::Nodes(ips) => {
            let list = ips
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ");
            tracing::info!(service = %key(&svc), addresses = %list, "LoadBalancer on the node addresses");
            ctx.recorder
                .normal(
                    svc.as_ref(),
                    "UpdatedLoadBalancer",
                    &format!("Node addresses {list} (no --loadbalancer-ip-range)"),
                )
                .await;
        }
        _ => tracing::info!(service = %key(&svc), "cleared the LoadBalancer address"),
    }
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use k8s_openapi::{
        api::core::v1::{
            DaemonEndpoint, LoadBalancerIngress, LoadBalancerStatus, NodeAddress,
            NodeDaemonEndpoints, ServicePort, ServiceStatus,
        },
        apimachinery::pkg::apis::meta::v1::Time,
    };

    use super::*;
    use crate::fixtures::{at, node, service};

    fn range() -> IpRange {
        "10.0.0.10-10.0.0.12".parse().unwrap()
    }

    fn lb(name: &str, created: i64) -> Service {
        let mut svc = service();
        svc.metadata.name = Some(name.into());
        svc.metadata.uid = Some(format!("uid-{name}"));
        svc.metadata.creation_timestamp = Some(Time(at(created)));
        svc.spec.as_mut().unwrap().type_ = Some("LoadBalancer".into());
        svc
    }

    fn holding(mut svc: Service, ip: &str) -> Service {
        svc.status = Some(ServiceStatus {
            load_balancer: Some(LoadBalancerStatus {
                ingress: Some(vec![LoadBalancerIngress {
                    ip: Some(ip.into()),
                    ip_mode: Some("VIP".into()),
                    ..LoadBalancerIngress::default()
                }]),
            }),
            ..ServiceStatus::default()
        });
        svc
    }

    fn ip(text: &str) -> Ipv4Addr {
        text.parse().unwrap()
    }

    #[test]
    fn a_range_is_a_cidr_or_first_dash_last() {
        let cidr: IpRange = "192.168.1.240/28".parse().unwrap();
        assert_eq!(cidr.to_string(), "192.168.1.240-192.168.1.255");
        assert_eq!(cidr.size(), 16);
        assert_eq!(range().size(), 3);
        assert!("10.0.0.12-10.0.0.10".parse::<IpRange>().is_err());
        assert!("10.0.0.1".parse::<IpRange>().is_err());
        assert!("10.0.0.1/28".parse::<IpRange>().is_err());
    }

    #[test]
    fn a_load_balancer_gets_the_first_free_address_and_no_two_get_the_same() {
        let mut alloc = Allocator::new(Some(range()));
        let held = Arc::new(holding(lb("a", 0), "10.0.0.10"));
        let (b, c) = (Arc::new(lb("b", 1)), Arc::new(lb("c", 2)));
        let all = [held.clone(), b.clone(), c.clone()];
        assert_eq!(alloc.plan(&held, &all, &[]), Plan::Holds(ip("10.0.0.10")));
        assert_eq!(alloc.plan(&b, &all, &[]), Plan::Assign(ip("10.0.0.11")));
        // The cache does not show b's address yet: c still gets another one.
        assert_eq!(alloc.plan(&c, &all, &[]), Plan::Assign(ip("10.0.0.12")));
        // Planned again before the cache caught up, b is given the same address again.
        assert_eq!(alloc.plan(&b, &all, &[]), Plan::Assign(ip("10.0.0.11")));
        let d = Arc::new(lb("d", 3));
        let all = [held, b, c, d.clone()];
        assert!(matches!(
            alloc.plan(&d, &all, &[]),
            Plan::Pending {
                reason: "AllocationFailed",
                ..
            }
        ));
    }

    #[test]
    fn a_restarted_allocator_counts_the_addresses_services_hold() {
        let mut fresh = Allocator::new(Some(range()));
        let all = [
            Arc::new(holding(lb("a", 0), "10.0.0.11")),
            Arc::new(holding(lb("b", 1), "10.0.0.10")),
            Arc::new(lb("c", 2)),
        ];
        assert_eq!(
            fresh.plan(&all[2], &all, &[]),
            Plan::Assign(ip("10.0.0.12"))
        );
    }

    #[test]
    fn a_deleted_service_or_one_turned_cluster_ip_frees_its_address() {
        let mut alloc = Allocator::new(Some(range()));
        let a = Arc::new(lb("a", 0));
        assert_eq!(
            alloc.plan(&a, std::slice::from_ref(&a), &[]),
            Plan::Assign(ip("10.0.0.10"))
        );
        let b = Arc::new(lb("b", 1));
        // a is gone from the cache: its address is free again.
        assert_eq!(
            alloc.plan(&b, std::slice::from_ref(&b), &[]),
            Plan::Assign(ip("10.0.0.10"))
        );

        let mut turned = holding(lb("c", 2), "10.0.0.11");
        turned.spec.as_mut().unwrap().type_ = Some("ClusterIP".into());
        let turned = Arc::new(turned);
        assert_eq!(
            alloc.plan(&turned, &[b.clone(), turned.clone()], &[]),
            Plan::Clear
        );
        let cleared = Arc::new(lb("c", 2));
        let mut clusterip = (*cleared).clone();
        clusterip.spec.as_mut().unwrap().type_ = Some("ClusterIP".into());
        assert_eq!(alloc.plan(&clusterip, &[b], &[]), Plan::Nothing);
    }

    #[test]
    fn a_requested_address_is_given_when_free_and_refused_with_a_reason_otherwise() {
        let mut alloc = Allocator::new(Some(range()));
        let ask = |name: &str, created: i64, want: &str| {
            let mut svc = lb(name, created);
            svc.spec.as_mut().unwrap().load_balancer_ip = Some(want.into());
            Arc::new(svc)
        };
        let a = Arc::new(holding(lb("a", 0), "10.0.0.10"));
        let b = ask("b", 1, "10.0.0.12");
        assert_eq!(
            alloc.plan(&b, &[a.clone(), b.clone()], &[]),
            Plan::Assign(ip("10.0.0.12"))
        );
        let c = ask("c", 2, "10.0.0.10");
        assert!(matches!(
            alloc.plan(&c, &[a.clone(), c.clone()], &[]),
            Plan::Pending {
                reason: "LoadBalancerIPInUse",
                ..
            }
        ));
        let d = ask("d", 3, "10.0.1.1");
        assert!(matches!(
            alloc.plan(&d, std::slice::from_ref(&d), &[]),
            Plan::Pending {
                reason: "LoadBalancerIPNotInRange",
                ..
            }
        ));
    }

    #[test]
    fn of_two_services_showing_one_address_the_older_keeps_it() {
        let mut alloc = Allocator::new(Some(range()));
        let old = Arc::new(holding(lb("old", 0), "10.0.0.10"));
        let young = Arc::new(holding(lb("young", 5), "10.0.0.10"));
        let all = [old.clone(), young.clone()];
        assert_eq!(alloc.plan(&young, &all, &[]), Plan::Assign(ip("10.0.0.11")));
        assert_eq!(alloc.plan(&old, &all, &[]), Plan::Holds(ip("10.0.0.10")));
    }

    #[test]
    fn another_class_is_left_alone() {
        let mut alloc = Allocator::new(Some(range()));
        let mut other = lb("a", 0);
        other.spec.as_mut().unwrap().load_balancer_class = Some("example.com/lb".into());
        let other = Arc::new(other);
        assert_eq!(
            alloc.plan(&other, std::slice::from_ref(&other), &[]),
            Plan::Nothing
        );
    }

    /// A Ready node `name` at `ip`, with its node endpoint on `port`.
    fn at_address(name: &str, ip: &str, port: i32) -> Arc<Node> {
        let mut node = (*node(name, &[])).clone();
        let status = node.status.get_or_insert_with(Default::default);
        status.addresses = Some(vec![NodeAddress {
            type_: "InternalIP".into(),
            address: ip.into(),
        }]);
        status.daemon_endpoints = Some(NodeDaemonEndpoints {
            kubelet_endpoint: Some(DaemonEndpoint { port }),
        });
        Arc::new(node)
    }

    fn on_port(mut svc: Service, port: i32, protocol: &str) -> Service {
        svc.spec.as_mut().unwrap().ports = Some(vec![ServicePort {
            port,
            protocol: Some(protocol.into()),
            ..ServicePort::default()
        }]);
        svc
    }

    #[test]
    fn without_a_range_a_load_balancer_gets_every_serving_nodes_address() {
        let mut alloc = Allocator::new(None);
        let mut gone = (*at_address("n3", "192.168.1.3", 10250)).clone();
        gone.status.as_mut().unwrap().conditions.as_mut().unwrap()[0].status = "False".into();
        let mut excluded = (*at_address("n4", "192.168.1.4", 10250)).clone();
        excluded
            .metadata
            .labels
            .get_or_insert_with(Default::default)
            .insert(nodes::EXCLUDE_LABEL.into(), String::new());
        let mut external = (*at_address("n5", "192.168.1.5", 10250)).clone();
        external
            .status
            .as_mut()
            .unwrap()
            .addresses
            .as_mut()
            .unwrap()
            .push(NodeAddress {
                type_: "ExternalIP".into(),
                address: "203.0.113.5".into(),
            });
        let all_nodes = [
            at_address("n2", "192.168.1.2", 10250),
            at_address("n1", "192.168.1.1", 10250),
            Arc::new(gone),
            Arc::new(excluded),
            Arc::new(external),
        ];
        let a = Arc::new(lb("a", 0));
        let wanted = vec![ip("192.168.1.1"), ip("192.168.1.2"), ip("203.0.113.5")];
        assert_eq!(
            alloc.plan(&a, std::slice::from_ref(&a), &all_nodes),
            Plan::Nodes(wanted)
        );
        // Written in another order, the same addresses are left alone.
        let mut held = holding(lb("a", 0), "203.0.113.5");
        held.status
            .as_mut()
            .unwrap()
            .load_balancer
            .as_mut()
            .unwrap()
            .ingress
            .as_mut()
            .unwrap()
            .extend(
                ["192.168.1.2", "192.168.1.1"].map(|ip| LoadBalancerIngress {
                    ip: Some(ip.into()),
                    ..LoadBalancerIngress::default()
                }),
            );
        let held = Arc::new(held);
        assert_eq!(
            alloc.plan(&held, std::slice::from_ref(&held), &all_nodes),
            Plan::Nothing
        );
        // Once n1 is gone, it is dropped from the list.
        assert_eq!(
            alloc.plan(&held, std::slice::from_ref(&held), &all_nodes[..1]),
            Plan::Nodes(vec![ip("192.168.1.2")])
        );
        // With no serving node at all, a Service with no address is told why.
        assert!(matches!(
            alloc.plan(&a, std::slice::from_ref(&a), &all_nodes[2..4]),
            Plan::Pending {
                reason: "NoServingNodes",
                ..
            }
        ));
    }

    #[test]
    fn without_a_range_a_port_taken_on_the_node_addresses_is_refused() {
        let mut alloc = Allocator::new(None);
        let nodes = [at_address("n1", "192.168.1.1", 10250)];
        let old = Arc::new(on_port(lb("old", 0), 80, "TCP"));
        let young = Arc::new(on_port(lb("young", 5), 80, "TCP"));
        let udp = Arc::new(on_port(lb("udp", 6), 80, "UDP"));
        let all = [old.clone(), young.clone(), udp.clone()];
        assert_eq!(
            alloc.plan(&old, &all, &nodes),
            Plan::Nodes(vec![ip("192.168.1.1")])
        );
        assert!(matches!(
            alloc.plan(&young, &all, &nodes),
            Plan::Pending { reason: "PortInUse", message } if message.contains("default/old")
        ));
        assert_eq!(
            alloc.plan(&udp, &all, &nodes),
            Plan::Nodes(vec![ip("192.168.1.1")])
        );
        // A younger Service that somehow holds the addresses gives them up.
        let young_holding = Arc::new(holding(on_port(lb("young", 5), 80, "TCP"), "192.168.1.1"));
        assert_eq!(
            alloc.plan(&young_holding, &[old, young_holding.clone()], &nodes),
            Plan::Clear
        );
        // The node endpoint's port, as the node reports it, is never opened.
        let kubelet = Arc::new(on_port(lb("k", 7), 10255, "TCP"));
        assert!(matches!(
            alloc.plan(&kubelet, std::slice::from_ref(&kubelet), &[at_address("n1", "192.168.1.1", 10255)]),
            Plan::Pending { reason: "PortInUse", message } if message.contains("node endpoint")
        ));
    }
}
