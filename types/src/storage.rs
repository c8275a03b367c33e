//! The names persistent storage is coordinated by: the built-in local-path class and
//! provisioner, and the annotations the binder, the scheduler and the provisioner write on
//! claims and volumes (Kubernetes' own keys, so its tools read them).

/// The default `StorageClass` every cluster gets (k3s' name for it).
pub const LOCAL_PATH_CLASS: &str = "local-path";

/// The provisioner of the local-path class, as k3s names it, so manifests written for k3s
/// select it.
pub const LOCAL_PATH_PROVISIONER: &str = "rancher.io/local-path";

/// On a claim: the node the scheduler picked for its first consumer
/// (`WaitForFirstConsumer`).
pub const SELECTED_NODE: &str = "volume.kubernetes.io/selected-node";

/// On a claim: the provisioner asked to make its volume.
pub const STORAGE_PROVISIONER: &str = "volume.kubernetes.io/storage-provisioner";

/// On a claim: the older key of [`STORAGE_PROVISIONER`], still written by Kubernetes.
pub const BETA_STORAGE_PROVISIONER: &str = "volume.beta.kubernetes.io/storage-provisioner";

/// On a claim: the binder finished binding it (`"yes"`).
pub const BIND_COMPLETED: &str = "pv.kubernetes.io/bind-completed";

/// On a claim or volume: the binder, not the user, bound it (`"yes"`).
pub const BOUND_BY_CONTROLLER: &str = "pv.kubernetes.io/bound-by-controller";

/// On a volume: the provisioner that made it.
pub const PROVISIONED_BY: &str = "pv.kubernetes.io/provisioned-by";

/// The node label volumes' node affinity names (the node's name).
pub const HOSTNAME_LABEL: &str = "kubernetes.io/hostname";

/// The finalizer that keeps a claim while a pod uses it.
pub const PVC_PROTECTION: &str = "kubernetes.io/pvc-protection";

/// The finalizer that keeps a volume while a claim is bound to it.
pub const PV_PROTECTION: &str = "kubernetes.io/pv-protection";
