//! The node-local cluster DNS: the server on the node's address, one watch each of
//! Services, EndpointSlices and Pods (all namespaces) keeping its zone current, and this
//! node's EndpointSlice of the `kube-system/kube-dns` Service, so the Service path sends
//! each node's pods to their own node's server.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::{Ipv4Addr, SocketAddr},
    sync::{Arc, PoisonError, RwLock},
    time::Duration,
};

use futures::StreamExt as _;
use k8s_openapi::{
    api::{
        core::v1::{Node, Pod, Service},
        discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice},
    },
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference},
};
use kube::{
    Api, Client, Resource as _, ResourceExt as _,
    api::{Patch, PatchParams},
    runtime::{
        WatchStreamExt as _,
        reflector::{self, Store},
        watcher,
    },
};
use skiff_node_dns::{DnsServer, ServerError, SharedZone, Source, Zone};
use skiff_types::namespace::KUBE_SYSTEM;

/// The Service every pod's resolv.conf points at.
pub const SERVICE: &str = "kube-dns";
/// Who writes the nodes' slices of `kube-dns` (the EndpointSlice controller leaves them).
const MANAGER: &str = "skiff-node";
/// Pause before this node's slice is written again after a failure.
const RETRY: Duration = Duration::from_secs(5);

/// How the node serves DNS.
#[derive(Debug, Clone)]
pub struct DnsConfig {
    /// Where the server listens (the node's address, port 53).
    pub listen: SocketAddr,
    /// The cluster domain.
    pub domain: String,
    /// Resolvers for every other name.
    pub upstreams: Vec<SocketAddr>,
}

/// The running DNS: the server, the watches and the slice writer stop when it is dropped.
#[derive(Debug)]
pub struct Dns {
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Dns {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Binds the server and starts the watches and the node's `kube-dns` slice.
///
/// # Errors
/// When the server's sockets cannot be bound.
pub async fn start(client: Client, node: String, config: DnsConfig) -> Result<Dns, ServerError> {
    let zone: SharedZone = Arc::new(RwLock::new(Zone::new(&config.domain)));
    let server = DnsServer::bind(config.listen, zone.clone(), config.upstreams.clone()).await?;
    tracing::info!(listen = %config.listen, domain = %config.domain, upstreams = ?config.upstreams, "cluster DNS serving");
    let address = match config.listen {
        SocketAddr::V4(v4) => Some(*v4.ip()),
        SocketAddr::V6(_) => None,
    };
    let mut tasks = vec![
        tokio::spawn(server.serve(std::future::pending())),
        tokio::spawn(watch(client.clone(), zone)),
    ];
    if let Some(address) = address {
        tasks.push(tokio::spawn(publish(client, node, address)));
    }
    Ok(Dns { tasks })
}

/// Which object an event touched.
enum Touched {
    Service(String, String),
    /// A slice (namespace, name) now filed under a Service, or deleted (`None`).
    Slice(String, String, Option<String>),
    Pod(String, String),
    All,
}

fn touched<K: kube::Resource>(
    event: &watcher::Event<K>,
    key: impl Fn(&K, bool) -> Touched,
) -> Option<Touched> {
    match event {
        watcher::Event::Apply(obj) => Some(key(obj, false)),
        watcher::Event::Delete(obj) => Some(key(obj, true)),
        // A (re)list is complete: objects deleted while the watch was away are gone.
        watcher::Event::InitDone => Some(Touched::All),
        watcher::Event::Init | watcher::Event::InitApply(_) => None,
    }
}

fn service_key(svc: &Service, _deleted: bool) -> Touched {
    Touched::Service(svc.namespace().unwrap_or_default(), svc.name_any())
}

/// The Service a slice is filed under, from its label.
fn slice_service(slice: &EndpointSlice) -> Option<String> {
    slice.labels().get("kubernetes.io/service-name").cloned()
}

fn slice_key(slice: &EndpointSlice, deleted: bool) -> Touched {
    Touched::Slice(
        slice.namespace().unwrap_or_default(),
        slice.name_any(),
        if deleted { None } else { slice_service(slice) },
    )
}

fn pod_key(pod: &Pod, _deleted: bool) -> Touched {
    Touched::Pod(pod.namespace().unwrap_or_default(), pod.name_any())
}

/// A (namespace, name) pair.
type Key = (String, String);

/// Which slices each Service has, so rendering one Service reads only its own slices
/// instead of scanning every slice (with 10,000 Services that scan, per event, starved the
/// node's other tasks).
#[derive(Default)]
struct SliceIndex {
    /// Slice (namespace, name) to its Service's name.
    owner: HashMap<Key, String>,
    /// Service (namespace, name) to its slices' names.
    slices: HashMap<Key, BTreeSet<String>>,
}

impl SliceIndex {
    /// Files slice `name` under `service` (or nowhere); returns the Service it was filed
    /// under before, when that differs.
    fn file(&mut self, namespace: &str, name: &str, service: Option<String>) -> Option<String> {
        let id = (namespace.to_owned(), name.to_owned());
        let before = match &service {
            Some(service) => self.owner.insert(id, service.clone()),
            None => self.owner.remove(&id),
        };
        if before == service {
            return None;
        }
        if let Some(old) = &before {
            let key = (namespace.to_owned(), old.clone());
            if let Some(set) = self.slices.get_mut(&key) {
                set.remove(name);
                if set.is_empty() {
                    self.slices.remove(&key);
                }
            }
        }
        if let Some(service) = service {
            self.slices
                .entry((namespace.to_owned(), service))
                .or_default()
                .insert(name.to_owned());
        }
        before
    }

    fn of(&self, namespace: &str, service: &str) -> impl Iterator<Item = &String> {
        self.slices
            .get(&(namespace.to_owned(), service.to_owned()))
            .into_iter()
            .flatten()
    }
}

/// The object stores the watches fill.
struct Stores {
    services: Store<Service>,
    slices: Store<EndpointSlice>,
    pods: Store<Pod>,
    index: SliceIndex,
}

impl Stores {
    fn render_service(&self, zone: &mut Zone, namespace: &str, name: &str) {
        let source = Source::Service {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        };
        let svc = self
            .services
            .get(&reflector::ObjectRef::new(name).within(namespace));
        let Some(svc) = svc else {
            zone.remove(&source);
            return;
        };
        let slices: Vec<EndpointSlice> = self
            .index
            .of(namespace, name)
            .filter_map(|slice| {
                self.slices
                    .get(&reflector::ObjectRef::new(slice).within(namespace))
            })
            .map(|s| (*s).clone())
            .collect();
        let records = zone.service_records(&svc, &slices);
        zone.replace(&source, records);
    }

    fn render_pod(&self, zone: &mut Zone, namespace: &str, name: &str) {
        let source = Source::Pod {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        };
        match self
            .pods
            .get(&reflector::ObjectRef::new(name).within(namespace))
        {
            Some(pod) => {
                let records = zone.pod_records(&pod);
                zone.replace(&source, records);
            }
            None => zone.remove(&source),
        }
    }

    fn render_all(&mut self, zone: &mut Zone) {
        // A relist: the slices are filed again from what the store holds now.
        self.index = SliceIndex::default();
        for slice in self.slices.state() {
            let namespace = slice.namespace().unwrap_or_default();
            self.index
                .file(&namespace, &slice.name_any(), slice_service(&slice));
        }
        for source in zone.sources() {
            match &source {
                Source::Service { namespace, name } => {
                    self.render_service(zone, namespace, name);
                }
                Source::Pod { namespace, name } => self.render_pod(zone, namespace, name),
            }
        }
        for svc in self.services.state() {
            self.render_service(zone, &svc.namespace().unwrap_or_default(), &svc.name_any());
        }
        for pod in self.pods.state() {
            self.render_pod(zone, &pod.namespace().unwrap_or_default(), &pod.name_any());
        }
    }
}

/// Keeps `zone` equal to the API's Services, EndpointSlices and Pods.
async fn watch(client: Client, zone: SharedZone) {
    let (services, services_writer) = reflector::store();
    let (slices, slices_writer) = reflector::store();
    let (pods, pods_writer) = reflector::store();
    let mut stores = Stores {
        services,
        slices,
        pods,
        index: SliceIndex::default(),
    };
    let config = super::informer::cached_list();
    let service_events = reflector::reflector(
        services_writer,
        watcher(Api::<Service>::all(client.clone()), config.clone()).default_backoff(),
    )
    .map(|e| e.map(|e| touched(&e, service_key)));
    let slice_events = reflector::reflector(
        slices_writer,
        watcher(Api::<EndpointSlice>::all(client.clone()), config.clone()).default_backoff(),
    )
    .map(|e| e.map(|e| touched(&e, slice_key)));
    let pod_events = reflector::reflector(
        pods_writer,
        watcher(Api::<Pod>::all(client), config).default_backoff(),
    )
    .map(|e| e.map(|e| touched(&e, pod_key)));
    let mut events = std::pin::pin!(futures::stream::select_all([
        service_events.boxed(),
        slice_events.boxed(),
        pod_events.boxed(),
    ]));
    while let Some(event) = events.next().await {
        let touched = match event {
            Ok(Some(t)) => t,
            Ok(None) => continue,
            Err(err) => {
                tracing::debug!(%err, "cluster DNS watch");
                continue;
            }
        };
        let mut zone = zone.write().unwrap_or_else(PoisonError::into_inner);
        match touched {
            Touched::Service(namespace, name) => {
                stores.render_service(&mut zone, &namespace, &name);
            }
            Touched::Slice(namespace, name, service) => {
                let before = stores.index.file(&namespace, &name, service.clone());
                for svc in before.iter().chain(service.iter()) {
                    stores.render_service(&mut zone, &namespace, svc);
                }
            }
            Touched::Pod(namespace, name) => stores.render_pod(&mut zone, &namespace, &name),
            Touched::All => stores.render_all(&mut zone),
        }
    }
}

/// This node's slice of `kube-dns`: its own address, its name, ready.
fn node_slice(node: &str, uid: Option<String>, address: Ipv4Addr) -> EndpointSlice {
    let port = |name: &str, protocol: &str| EndpointPort {
        name: Some(name.to_owned()),
        port: Some(53),
        protocol: Some(protocol.to_owned()),
        app_protocol: None,
    };
    EndpointSlice {
        metadata: ObjectMeta {
            name: Some(format!("{SERVICE}-{node}")),
            namespace: Some(KUBE_SYSTEM.to_owned()),
            labels: Some(BTreeMap::from([
                ("kubernetes.io/service-name".to_owned(), SERVICE.to_owned()),
                (
                    "endpointslice.kubernetes.io/managed-by".to_owned(),
                    MANAGER.to_owned(),
                ),
            ])),
            // Gone with the Node.
            owner_references: uid.map(|uid| {
                vec![OwnerReference {
                    api_version: "v1".to_owned(),
                    kind: "Node".to_owned(),
                    name: node.to_owned(),
                    uid,
                    ..OwnerReference::default()
                }]
            }),
            ..ObjectMeta::default()
        },
        address_type: "IPv4".to_owned(),
        endpoints: vec![Endpoint {
            addresses: vec![address.to_string()],
            conditions: Some(EndpointConditions {
                ready: Some(true),
                serving: Some(true),
                terminating: Some(false),
            }),
            node_name: Some(node.to_owned()),
            ..Endpoint::default()
        }],
        ports: Some(vec![port("dns", "UDP"), port("dns-tcp", "TCP")]),
    }
}

/// Writes this node's `kube-dns` slice until it is in.
async fn publish(client: Client, node: String, address: Ipv4Addr) {
    let nodes = Api::<Node>::all(client.clone());
    let slices = Api::<EndpointSlice>::namespaced(client, KUBE_SYSTEM);
    loop {
        let uid = nodes
            .get_opt(&node)
            .await
            .ok()
            .flatten()
            .and_then(|n| n.meta().uid.clone());
        let slice = node_slice(&node, uid, address);
        let name = slice.name_any();
        let params = PatchParams::apply(MANAGER).force();
        match slices.patch(&name, &params, &Patch::Apply(&slice)).await {
            Ok(_) => {
                tracing::info!(slice = %name, %address, "kube-dns endpoint published");
                return;
            }
            Err(err) => tracing::warn!(slice = %name, %err, "kube-dns endpoint not published yet"),
        }
        tokio::time::sleep(RETRY).await;
    }
}
