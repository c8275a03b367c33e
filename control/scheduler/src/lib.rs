//! skiff-scheduler places pods on nodes: it watches unscheduled pods, runs them through
//! filter and score plugins against a snapshot of nodes and bound pods, and binds each to
//! the best node through `pods/binding`, like kube-scheduler.
