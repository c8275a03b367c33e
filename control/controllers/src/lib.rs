//! skiff-controllers keeps every object at its declared state: one level-triggered,
//! idempotent reconciler per concern (ReplicaSet, Deployment, StatefulSet, DaemonSet, Job,
//! CronJob, Endpoints, nodes, namespaces, garbage collection, quotas), each talking to the
//! API server through the `kube` crate like any client.
pub mod events;
