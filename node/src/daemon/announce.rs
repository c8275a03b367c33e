//! Which node answers ARP for a `LoadBalancer` address: the holder of the address's Lease
//! in kube-system, taken by a node on the address's subnet when free or expired and renewed
//! while it lives, so a dead node's addresses move to another (`MetalLB`'s L2 mode). A node
//! that is not Ready, or is labelled out of load balancers, takes no Lease and gives back
//! those it holds; a node's own address is never announced by another.

use std::{collections::BTreeSet, net::Ipv4Addr, time::Duration};

use futures::StreamExt as _;
use k8s_openapi::{
    api::{
        coordination::v1::Lease,
        core::v1::{Node, Service},
    },
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    jiff::{SignedDuration, Timestamp},
};
use kube::{
    Api, Client,
    api::{DeleteParams, PostParams, Preconditions},
    runtime::{WatchStreamExt as _, reflector, watcher},
};
use skiff_node_proxy::arp::Announce;
use skiff_types::{Ipv4Cidr, namespace::KUBE_SYSTEM};

/// How long a Lease stays valid without renewal: a dead node's addresses move after this.
const LEASE_SECONDS: i32 = 6;
/// How often the held Leases are renewed and free ones looked for.
const RENEW: Duration = Duration::from_secs(2);

/// The Lease that says which node announces `ip`.
#[must_use]
pub fn lease_name(ip: Ipv4Addr) -> String {
    let [a, b, c, d] = ip.octets();
    format!("skiff-lb-{a}-{b}-{c}-{d}")
}

/// What this node may do with an address's Lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// It holds it: renew.
    Renew,
    /// Nobody holds it (no Lease, or one expired): take it.
    Take,
    /// Another node holds it.
    Other,
}

/// What `me` may do with `lease` at `now`.
#[must_use]
pub fn claim(lease: Option<&Lease>, me: &str, now: Timestamp) -> Claim {
    let Some(spec) = lease.and_then(|l| l.spec.as_ref()) else {
        return Claim::Take;
    };
    if spec.holder_identity.as_deref() == Some(me) {
        return Claim::Renew;
    }
    let renewed = spec.renew_time.as_ref().or(spec.acquire_time.as_ref());
    let seconds = spec.lease_duration_seconds.unwrap_or(LEASE_SECONDS);
    let expired = renewed.is_none_or(|t| {
        t.0.checked_add(SignedDuration::from_secs(i64::from(seconds)))
            .is_ok_and(|until| until < now)
    });
    if spec.holder_identity.as_deref().is_none_or(str::is_empty) || expired {
        Claim::Take
    } else {
        Claim::Other
    }
}

/// The label that keeps a node out of every external load balancer (Kubernetes' own).
const EXCLUDE_LABEL: &str = "node.kubernetes.io/exclude-from-external-load-balancers";

/// Why `node` (this one) may not announce load-balancer addresses, if it may not.
#[must_use]
pub fn unfit(node: Option<&Node>) -> Option<&'static str> {
    let Some(node) = node else {
        return Some("its Node object is not there");
    };
    if node
        .metadata
        .labels
        .as_ref()
        .is_some_and(|l| l.contains_key(EXCLUDE_LABEL))
    {
        return Some("it has the node.kubernetes.io/exclude-from-external-load-balancers label");
    }
    let ready = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    (!ready).then_some("it is not Ready")
}

/// Every address of every node: a `LoadBalancer` on the node addresses (no range) needs no
/// announcement, and another node answering ARP for them would steal their traffic.
fn node_addresses(nodes: &[std::sync::Arc<Node>]) -> BTreeSet<Ipv4Addr> {
    nodes
        .iter()
        .filter_map(|n| n.status.as_ref()?.addresses.as_ref())
        .flatten()
        .filter_map(|a| a.address.parse().ok())
        .collect()
}

/// The `LoadBalancer` addresses among `services` this node may announce: those on one of
/// its uplink's `subnets`, where its ARP replies reach the askers, that are no node's.
#[must_use]
pub fn addresses(
    services: &[std::sync::Arc<Service>],
    subnets: &[Ipv4Cidr],
    nodes: &[std::sync::Arc<Node>],
) -> BTreeSet<Ipv4Addr> {
    let owned = node_addresses(nodes);
    services
        .iter()
        .filter(|s| s.spec.as_ref().and_then(|s| s.type_.as_deref()) == Some("LoadBalancer"))
        .filter_map(|s| s.status.as_ref()?.load_balancer.as_ref()?.ingress.as_ref())
        .flatten()
        .filter_map(|i| i.ip.as_deref()?.parse().ok())
        .filter(|ip| subnets.iter().any(|n| n.contains(*ip)) && !owned.contains(ip))
        .collect()
}

/// Holds or takes the Lease of `ip` for `me`; whether `me` holds it afterwards.
async fn hold(api: &Api<Lease>, ip: Ipv4Addr, me: &str) -> Result<bool, kube::Error> {
    let name = lease_name(ip);
    let now = Timestamp::now();
    let current = api.get_opt(&name).await?;
    let step = claim(current.as_ref(), me, now);
    if step == Claim::Other {
        return Ok(false);
    }
    let mut lease = current.unwrap_or_else(|| Lease {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(KUBE_SYSTEM.to_owned()),
            ..ObjectMeta::default()
        },
        ..Lease::default()
    });
    let fresh = lease.metadata.resource_version.is_none();
    let spec = lease.spec.get_or_insert_with(Default::default);
    if step == Claim::Take {
        spec.holder_identity = Some(me.to_owned());
        spec.acquire_time = Some(MicroTime(now));
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + i32::from(!fresh));
    }
    spec.lease_duration_seconds = Some(LEASE_SECONDS);
    spec.renew_time = Some(MicroTime(now));
    // The resourceVersion read makes a concurrent taker's write, or this one, fail.
    let written = if fresh {
        api.create(&PostParams::default(), &lease).await
    } else {
        api.replace(&name, &PostParams::default(), &lease).await
    };
    match written {
        Ok(_) => {
            if step == Claim::Take {
                tracing::info!(%ip, "took the LoadBalancer address");
            }
            Ok(true)
        }
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
        Err(err) => Err(err),
    }
}

/// Hands back the Lease of an address no Service holds any more, if `me` holds it.
async fn release(api: &Api<Lease>, ip: Ipv4Addr, me: &str) {
    let name = lease_name(ip);
    let Ok(Some(lease)) = api.get_opt(&name).await else {
        return;
    };
    if lease
        .spec
        .as_ref()
        .and_then(|s| s.holder_identity.as_deref())
        != Some(me)
    {
        return;
    }
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            resource_version: lease.metadata.resource_version.clone(),
            uid: lease.metadata.uid.clone(),
        }),
        ..DeleteParams::default()
    };
    if let Err(err) = api.delete(&name, &params).await {
        tracing::debug!(%ip, %err, "LoadBalancer Lease not released");
    }
}

/// Announces, through `announce`, the `LoadBalancer` addresses on `subnets` whose Lease
/// node `me` holds; runs until dropped.
pub async fn run(client: Client, me: String, subnets: Vec<Ipv4Cidr>, announce: impl Announce) {
    let (services, writer) = reflector::store::<Service>();
    let watch = reflector(
        writer,
        watcher(
            Api::<Service>::all(client.clone()),
            watcher::Config::default(),
        ),
    )
    .default_backoff()
    .for_each(|_| futures::future::ready(()));
    let (nodes, node_writer) = reflector::store::<Node>();
    let node_watch = reflector(
        node_writer,
        watcher(Api::<Node>::all(client.clone()), watcher::Config::default()),
    )
    .default_backoff()
    .for_each(|_| futures::future::ready(()));
    let leases: Api<Lease> = Api::namespaced(client, KUBE_SYSTEM);
    let announcing = async {
        let _ = services.wait_until_ready().await;
        let _ = nodes.wait_until_ready().await;
        let mut held = BTreeSet::new();
        let mut was_unfit = None;
        loop {
            let all_nodes = nodes.state();
            let mine = all_nodes
                .iter()
                .find(|n| n.metadata.name.as_deref() == Some(&me));
            let why = unfit(mine.map(AsRef::as_ref));
            if why != was_unfit {
                if let Some(reason) = why {
                    tracing::info!(
                        reason,
                        "this node announces no LoadBalancer address and gives back its Leases"
                    );
                } else {
                    tracing::info!("this node may announce LoadBalancer addresses");
                }
                was_unfit = why;
            }
            let wanted = if why.is_some() {
                BTreeSet::new()
            } else {
                addresses(&services.state(), &subnets, &all_nodes)
            };
            let mut now_held = BTreeSet::new();
            for ip in &wanted {
                match hold(&leases, *ip, &me).await {
                    Ok(true) => {
                        now_held.insert(*ip);
                    }
                    Ok(false) => {}
                    // Keep announcing what was held until the Lease would have expired
                    // anyway: the next round settles it.
                    Err(err) => {
                        tracing::debug!(%ip, %err, "LoadBalancer Lease not renewed");
                        if held.contains(ip) {
                            now_held.insert(*ip);
                        }
                    }
                }
            }
            for ip in held.difference(&wanted) {
                release(&leases, *ip, &me).await;
            }
            announce.hold(now_held.clone());
            held = now_held;
            tokio::time::sleep(RENEW).await;
        }
    };
    tokio::select! {
        () = watch => {}
        () = node_watch => {}
        () = announcing => {}
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use k8s_openapi::api::{
        coordination::v1::LeaseSpec,
        core::v1::{
            LoadBalancerIngress, LoadBalancerStatus, NodeAddress, NodeCondition, NodeStatus,
            ServiceSpec, ServiceStatus,
        },
    };
    use kube::api::ObjectMeta as Meta;

    use super::*;

    fn lease(holder: &str, renewed: Timestamp) -> Lease {
        Lease {
            spec: Some(LeaseSpec {
                holder_identity: Some(holder.into()),
                lease_duration_seconds: Some(6),
                renew_time: Some(MicroTime(renewed)),
                ..LeaseSpec::default()
            }),
            ..Lease::default()
        }
    }

    #[test]
    fn a_node_renews_its_lease_and_takes_a_free_or_expired_one_only() {
        let now = Timestamp::from_second(1_000).unwrap();
        let ago = |s: i64| Timestamp::from_second(1_000 - s).unwrap();
        assert_eq!(claim(None, "n1", now), Claim::Take);
        assert_eq!(claim(Some(&lease("n1", ago(100))), "n1", now), Claim::Renew);
        assert_eq!(claim(Some(&lease("n2", ago(3))), "n1", now), Claim::Other);
        assert_eq!(claim(Some(&lease("n2", ago(7))), "n1", now), Claim::Take);
        assert_eq!(claim(Some(&lease("", ago(1))), "n1", now), Claim::Take);
    }

    #[test]
    fn only_load_balancer_addresses_on_the_uplinks_subnets_are_announced() {
        let svc = |kind: &str, ip: &str| {
            Arc::new(Service {
                spec: Some(ServiceSpec {
                    type_: Some(kind.into()),
                    ..ServiceSpec::default()
                }),
                status: Some(ServiceStatus {
                    load_balancer: Some(LoadBalancerStatus {
                        ingress: Some(vec![LoadBalancerIngress {
                            ip: Some(ip.into()),
                            ..LoadBalancerIngress::default()
                        }]),
                    }),
                    ..ServiceStatus::default()
                }),
                ..Service::default()
            })
        };
        let services = [
            svc("LoadBalancer", "192.168.50.200"),
            svc("LoadBalancer", "10.1.2.3"),
            svc("ClusterIP", "192.168.50.201"),
            svc("LoadBalancer", "192.168.50.21"),
        ];
        let subnets = [Ipv4Cidr::parse_masked("192.168.50.0/24").unwrap()];
        let nodes = [Arc::new(node(true, &[], "192.168.50.21"))];
        assert_eq!(
            addresses(&services, &subnets, &nodes),
            BTreeSet::from([Ipv4Addr::new(192, 168, 50, 200)])
        );
    }

    fn node(ready: bool, labels: &[&str], ip: &str) -> Node {
        Node {
            metadata: Meta {
                name: Some("n1".into()),
                labels: Some(
                    labels
                        .iter()
                        .map(|l| ((*l).to_owned(), String::new()))
                        .collect(),
                ),
                ..Meta::default()
            },
            status: Some(NodeStatus {
                conditions: Some(vec![NodeCondition {
                    type_: "Ready".into(),
                    status: if ready { "True" } else { "Unknown" }.into(),
                    ..NodeCondition::default()
                }]),
                addresses: Some(vec![NodeAddress {
                    type_: "InternalIP".into(),
                    address: ip.into(),
                }]),
                ..NodeStatus::default()
            }),
            ..Node::default()
        }
    }

    #[test]
    fn a_node_that_is_not_ready_or_is_excluded_announces_nothing() {
        assert_eq!(unfit(Some(&node(true, &[], "192.168.50.21"))), None);
        assert_eq!(
            unfit(Some(&node(false, &[], "192.168.50.21"))),
            Some("it is not Ready")
        );
        assert!(unfit(Some(&node(true, &[EXCLUDE_LABEL], "192.168.50.21"))).is_some());
        assert!(unfit(None).is_some());
    }

    #[test]
    fn lease_names_are_valid_object_names() {
        assert_eq!(
            lease_name(Ipv4Addr::new(192, 168, 50, 200)),
            "skiff-lb-192-168-50-200"
        );
    }
}
