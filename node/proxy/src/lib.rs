//! skiff-node-proxy is the Service data plane on a node: from Services and EndpointSlices to
//! the eBPF maps. A pure planner turns one Service and its slices into frontends and backend
//! groups; the table writes one Service's change into the maps with the fewest writes; the
//! aya loader pins the programs and maps per node and attaches the socket hooks to the
//! node's cgroup subtree and the TC programs to its uplinks. The nftables mode ([`nft`]) takes
//! the same planned entries into an nftables table instead, for kernels without the eBPF
//! features.

// One syscall has no safe wrapper: ebpf::cookie allows it for itself.
#![deny(unsafe_code)]

pub mod arp;
pub mod ebpf;
pub mod entries;
pub mod health;
pub mod maps;
pub mod metrics;
pub mod nft;
pub mod plan;
pub mod reap;
pub mod sync;
pub mod table;
#[cfg(test)]
mod testing;

pub use ebpf::{AttachConfig, Datapath, DatapathHandle, LoadError, Uplink};
pub use entries::{
    Endpoint, Frontend, FrontendEntry, GroupKey, Kind, Protocol, Scope, ServiceEntries, ServiceRef,
};
pub use health::HealthCheck;
pub use maps::{Dump, MapsError, ServiceMaps};
pub use plan::{NodeView, Plan, Warning, plan};
pub use reap::{Reaped, SocketReaper, UdpSocket};
pub use sync::{Mirror, ProxyTable, Synced};
pub use table::{Applied, Occupancy, ServiceTable};
