//! skiff-node is the root-run node daemon: it runs the pods bound to its node in-process
//! with youki's libcontainer and load-balances Services with eBPF programs attached to the
//! node's own cgroup subtree, with an nftables path beside them.

pub mod daemon;
pub mod network;
pub mod pod;
pub mod proxy;
pub mod runtime;
pub mod server;
pub mod simulate;
