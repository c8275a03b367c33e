//! skiff-node-proxy is the Service data plane on a node: the slot bookkeeping above the BPF
//! maps, and the aya loader that puts the socket-level programs on the node's cgroup
//! subtree. (The nftables mode will sit beside it.)

#![forbid(unsafe_code)]

pub mod ebpf;
pub mod maps;
pub mod table;

pub use ebpf::{EbpfLoadBalancer, LoadError};
pub use maps::{MapsError, ServiceMaps};
pub use table::{Frontend, Protocol, ServiceTable};
