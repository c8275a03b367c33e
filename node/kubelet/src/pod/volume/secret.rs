//! secret volumes: like configMap volumes, on a tmpfs so secrets never reach the disk (when
//! the node can mount, i.e. runs as root; a plain directory otherwise).

use std::path::Path;

use k8s_openapi::api::core::v1::SecretVolumeSource;

use super::{
    Mounter, VolumeError, atomic_writer,
    config_map::{DEFAULT_MODE, mode_bits, project_keys},
    ensure_dir,
};
use crate::pod::command::Sources;

/// The kubelet's plugin directory name.
pub const PLUGIN: &str = "kubernetes.io~secret";

/// Writes (or refreshes) the volume in `dir`, mounting its tmpfs the first time.
///
/// # Errors
/// A missing non-optional secret or key, the API unreachable, a mount or write failure.
pub async fn setup(
    dir: &Path,
    source: &SecretVolumeSource,
    sources: &dyn Sources,
    namespace: &str,
    mounter: &dyn Mounter,
) -> Result<(), VolumeError> {
    let name = source.secret_name.as_deref().unwrap_or_default();
    let data = sources.secret(namespace, name).await?;
    let payload = project_keys(
        "secret",
        name,
        data.as_ref(),
        source.items.as_deref(),
        mode_bits(source.default_mode, DEFAULT_MODE),
        source.optional.unwrap_or(false),
    )?;
    ensure_dir(dir)?;
    if mounter.can_mount() && !mounter.is_mounted(dir) {
        mounter.mount_tmpfs(dir, None)?;
    }
    if atomic_writer::write(dir, &payload)? {
        tracing::info!(secret = name, namespace, dir = %dir.display(), "secret volume updated");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;
    use crate::pod::volume::testing::{Call, FakeMounter, FakeSources};

    fn source(name: &str) -> SecretVolumeSource {
        SecretVolumeSource {
            secret_name: Some(name.to_owned()),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn secret_dir_is_a_tmpfs_mounted_once_when_the_node_can_mount() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("s");
        let sources = FakeSources::default();
        sources.set_secret("ns", "s", &[("password", "hunter2")]);
        let mounter = FakeMounter::default();
        setup(&dir, &source("s"), &sources, "ns", &mounter)
            .await
            .unwrap();
        setup(&dir, &source("s"), &sources, "ns", &mounter)
            .await
            .unwrap();
        assert_eq!(mounter.calls(), [Call::Mount(dir.clone(), None)]);
        assert_eq!(fs::read_to_string(dir.join("password")).unwrap(), "hunter2");
    }

    #[tokio::test]
    async fn secret_dir_is_plain_when_the_node_cannot_mount() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("s");
        let sources = FakeSources::default();
        sources.set_secret("ns", "s", &[("k", "v")]);
        let mounter = FakeMounter::unprivileged();
        setup(&dir, &source("s"), &sources, "ns", &mounter)
            .await
            .unwrap();
        assert!(mounter.calls().is_empty());
        assert_eq!(fs::read_to_string(dir.join("k")).unwrap(), "v");
    }

    #[tokio::test]
    async fn missing_secret_names_it_and_mounts_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let mounter = FakeMounter::default();
        let err = setup(
            tmp.path(),
            &source("tls"),
            &FakeSources::default(),
            "ns",
            &mounter,
        )
        .await
        .unwrap_err();
        assert_eq!(err.to_string(), "secret \"tls\" not found");
        assert!(mounter.calls().is_empty());
    }
}
