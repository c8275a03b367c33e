//! persistentVolumeClaim: the directory of the `PersistentVolume` bound to the claim
//! (`hostPath` or `local`), bound into the container as it is; the pod waits (`FailedMount`)
//! while the claim is missing or unbound.

use std::path::PathBuf;

use k8s_openapi::api::core::v1::{
    HostPathVolumeSource, PersistentVolume, PersistentVolumeClaim,
    PersistentVolumeClaimVolumeSource,
};

use super::{VolumeError, host_path};
use crate::pod::command::Sources;

/// The kubelet's plugin directory name for local volumes (claims have no directory of their
/// own under the pod).
pub const PLUGIN: &str = "kubernetes.io~local-volume";

/// Why a claim's volume is not there yet, or cannot be used here.
fn claim_error(namespace: &str, claim: &str, detail: impl Into<String>) -> VolumeError {
    VolumeError::Claim {
        claim: format!("{namespace}/{claim}"),
        detail: detail.into(),
    }
}

/// The host directory of the volume `source` names, checked (a `hostPath` volume of type
/// `DirectoryOrCreate` is created).
///
/// # Errors
/// The claim is missing, not bound, bound to a missing volume or to a volume type this node
/// does not serve; the directory check failed.
pub async fn setup(
    source: &PersistentVolumeClaimVolumeSource,
    sources: &dyn Sources,
    namespace: &str,
) -> Result<PathBuf, VolumeError> {
    let name = source.claim_name.as_str();
    let Some((claim, volume)) = sources.claim(namespace, name).await? else {
        return Err(claim_error(
            namespace,
            name,
            format!("persistentvolumeclaim \"{name}\" not found"),
        ));
    };
    let volume = bound_volume(namespace, name, &claim, volume)?;
    path_of(namespace, name, &volume)
}

fn bound_volume(
    namespace: &str,
    name: &str,
    claim: &PersistentVolumeClaim,
    volume: Option<PersistentVolume>,
) -> Result<PersistentVolume, VolumeError> {
    let volume_name = claim
        .spec
        .as_ref()
        .and_then(|s| s.volume_name.as_deref())
        .unwrap_or_default();
    let phase = claim.status.as_ref().and_then(|s| s.phase.as_deref());
    if volume_name.is_empty() || phase != Some("Bound") {
        return Err(claim_error(namespace, name, "PVC is not bound"));
    }
    volume.ok_or_else(|| {
        claim_error(
            namespace,
            name,
            format!("persistentvolumes \"{volume_name}\" not found"),
        )
    })
}

fn path_of(namespace: &str, name: &str, volume: &PersistentVolume) -> Result<PathBuf, VolumeError> {
    let spec = volume.spec.as_ref();
    if let Some(hp) = spec.and_then(|s| s.host_path.as_ref()) {
        return host_path::check(hp);
    }
    if let Some(local) = spec.and_then(|s| s.local.as_ref()) {
        // A local volume is a path that must exist: it was made before the volume was.
        return host_path::check(&HostPathVolumeSource {
            path: local.path.clone(),
            type_: Some("Directory".to_owned()),
        });
    }
    Err(claim_error(
        namespace,
        name,
        format!(
            "persistentvolume \"{}\" has a volume type this node does not mount",
            volume.metadata.name.as_deref().unwrap_or_default()
        ),
    ))
}
