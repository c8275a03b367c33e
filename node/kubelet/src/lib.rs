//! skiff-kubelet is the kubelet's logic, free of any particular runtime: one worker per pod
//! (sandbox, volumes, init containers and native sidecars, app containers, restarts with
//! back-off, probes, hooks, graceful termination, the pod's status), and the Node object
//! (registration, conditions, capacity, the Lease). It drives the node's machinery through
//! [`pod::backend::PodBackend`]: the real node implements it over libcontainer, the pod
//! network and the image store; simulated nodes implement it with timers.

#![forbid(unsafe_code)]

pub mod api;
pub mod node;
pub mod pod;
