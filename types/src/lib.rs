//! skiff-types holds the small value types that both the control plane and the node use
//! where the Kubernetes API carries a string: IPv4 CIDRs, restart policies, event types,
//! the runtime's container IDs, the well-known namespace names and storage annotations; and, for the node's
//! parts, the kernel's mount table. Each is parsed once, here, so the users cannot drift
//! apart on what a value means.

#![forbid(unsafe_code)]

pub mod cidr;
pub mod container_id;
pub mod event_type;
pub mod mountinfo;
pub mod namespace;
pub mod restart_policy;
pub mod storage;

pub use cidr::{CidrError, Ipv4Cidr};
pub use container_id::{ContainerId, ContainerIdError};
pub use event_type::EventType;
pub use restart_policy::{ContainerRestartPolicy, RestartPolicy};
