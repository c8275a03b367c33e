//! Many selector-less Services with EndpointSlices written through the API at once: the
//! datapath bench's and the Service scale test's Services.

use std::{
    net::Ipv4Addr,
    sync::atomic::{AtomicBool, AtomicUsize, Ordering},
};

use anyhow::{Result, bail, ensure};
use serde_json::{Value, json};

use crate::cluster::Cluster;

/// The Services' TCP port.
pub const TCP_PORT: u16 = 80;
/// The Services' UDP port.
pub const UDP_PORT: u16 = 53;
/// The backends' TCP port.
pub const BACKEND_TCP: u16 = 8080;
/// The backends' UDP port.
pub const BACKEND_UDP: u16 = 8053;
/// Parallel API requests when creating Services.
const WRITERS: usize = 16;
/// Services with index below this are of type `NodePort` (TCP 30000+i, UDP 31000+i): the node port
/// range holds fewer than 10,000.
pub const NODE_PORTS: usize = 1000;

/// A Service as the bench makes it: ClusterIP, node ports for the first [`NODE_PORTS`],
/// TCP 80 -> 8080 and UDP 53 -> 8053.
#[derive(Debug, Clone)]
pub struct Svc {
    /// Its number: the Service is `svc-<index>`.
    pub index: usize,
    /// Its cluster IP (`10.100.0.0` + index + 1).
    pub vip: Ipv4Addr,
    /// TCP and UDP node ports, for the first [`NODE_PORTS`].
    pub node_ports: Option<(u16, u16)>,
    /// Its endpoints' addresses.
    pub endpoints: Vec<Ipv4Addr>,
}

/// Services `0..n` over `backends`: 2, 3 or 4 endpoints each, starting at a different
/// backend.
#[must_use]
pub fn services(n: usize, backends: &[Ipv4Addr]) -> Vec<Svc> {
    (0..n)
        .map(|i| {
            let count = 2 + i % 3;
            let base = u32::from(Ipv4Addr::new(10, 100, 0, 0));
            Svc {
                index: i,
                vip: Ipv4Addr::from(base + u32::try_from(i).unwrap_or(0) + 1),
                node_ports: (i < NODE_PORTS).then(|| {
                    let i = u16::try_from(i).unwrap_or(0);
                    (30000 + i, 31000 + i)
                }),
                endpoints: (0..count)
                    .map(|k| backends[(i + k) % backends.len()])
                    .collect(),
            }
        })
        .collect()
}

fn service_json(svc: &Svc) -> Value {
    let mut tcp =
        json!({"name": "tcp", "protocol": "TCP", "port": TCP_PORT, "targetPort": BACKEND_TCP});
    let mut udp =
        json!({"name": "udp", "protocol": "UDP", "port": UDP_PORT, "targetPort": BACKEND_UDP});
    if let Some((t, u)) = svc.node_ports {
        tcp["nodePort"] = t.into();
        udp["nodePort"] = u.into();
    }
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": format!("svc-{}", svc.index)},
        "spec": {
            "type": if svc.node_ports.is_some() { "NodePort" } else { "ClusterIP" },
            "clusterIP": svc.vip.to_string(),
            "ports": [tcp, udp],
        },
    })
}

/// The node every backend runs on (the first of the cluster), which the TC path needs to
/// know: local backends are reached without SNAT.
const NODE: &str = "node-0";

fn endpoints_json(endpoints: &[Ipv4Addr]) -> Value {
    endpoints
        .iter()
        .map(|ip| json!({"addresses": [ip.to_string()], "nodeName": NODE, "conditions": {"ready": true}}))
        .collect()
}

fn slice_json(svc: &Svc) -> Value {
    let name = format!("svc-{}", svc.index);
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": name, "labels": {"kubernetes.io/service-name": name}},
        "addressType": "IPv4",
        "endpoints": endpoints_json(&svc.endpoints),
        "ports": [
            {"name": "tcp", "protocol": "TCP", "port": BACKEND_TCP},
            {"name": "udp", "protocol": "UDP", "port": BACKEND_UDP},
        ],
    })
}

const SLICES: &str = "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices";

/// One API request from the calling thread (which must be in the control host).
fn request(c: &Cluster, method: &str, path: &str, ctype: &str, body: &Value) -> Result<()> {
    let body = serde_json::to_vec(body)?;
    let (code, answer) = c.control().http(method, path, ctype, &body)?;
    ensure!(
        (200..300).contains(&code),
        "{method} {path}: {code} {answer}"
    );
    Ok(())
}

/// Creates the Services and their slices with parallel requests, stopping early once `stop`
/// is set.
///
/// # Errors
/// When a request fails or `stop` was set.
pub fn create(c: &Cluster, svcs: &[Svc], stop: &AtomicBool) -> Result<()> {
    let next = AtomicUsize::new(0);
    c.control_host().run(|| {
        std::thread::scope(|s| {
            let writers: Vec<_> = (0..WRITERS)
                .map(|_| {
                    s.spawn(|| -> Result<()> {
                        loop {
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            let Some(svc) = svcs.get(i) else {
                                return Ok(());
                            };
                            if stop.load(Ordering::SeqCst) {
                                bail!("interrupted");
                            }
                            let json = "application/json";
                            request(
                                c,
                                "POST",
                                "/api/v1/namespaces/default/services",
                                json,
                                &service_json(svc),
                            )?;
                            request(c, "POST", SLICES, json, &slice_json(svc))?;
                        }
                    })
                })
                .collect();
            for w in writers {
                w.join().unwrap_or_else(|p| std::panic::resume_unwind(p))?;
            }
            Ok(())
        })
    })
}

/// Replaces Service `index`'s endpoints (a merge patch of its slice).
///
/// # Errors
/// When the request fails.
pub fn set_endpoints(c: &Cluster, index: usize, endpoints: &[Ipv4Addr]) -> Result<()> {
    let body = json!({"endpoints": endpoints_json(endpoints)});
    c.control_host().run(|| {
        request(
            c,
            "PATCH",
            &format!("{SLICES}/svc-{index}"),
            "application/merge-patch+json",
            &body,
        )
    })
}
