//! Service load balancing on the node: the slot bookkeeping above the BPF maps, and the aya
//! loader that puts the socket-level programs on the node's cgroup subtree.

pub mod ebpf;
pub mod maps;
pub mod table;

pub use ebpf::{EbpfLoadBalancer, LoadError};
pub use maps::{MapsError, ServiceMaps};
pub use table::{Frontend, Protocol, ServiceTable};
