//! The namespaces every cluster has, named once.

/// Where objects without a namespace go.
pub const DEFAULT: &str = "default";
/// The control plane's own objects (leader Lease, `kube-dns`).
pub const KUBE_SYSTEM: &str = "kube-system";
/// Objects readable by everyone.
pub const KUBE_PUBLIC: &str = "kube-public";
/// Node heartbeats (one Lease per node).
pub const KUBE_NODE_LEASE: &str = "kube-node-lease";

/// The namespaces the API server creates at first start and never lets go.
pub const SYSTEM: [&str; 4] = [DEFAULT, KUBE_SYSTEM, KUBE_PUBLIC, KUBE_NODE_LEASE];
