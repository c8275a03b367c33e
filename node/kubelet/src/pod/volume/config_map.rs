//! configMap volumes: each key of a configMap (or the `items` chosen) as a file, written by
//! the atomic writer so updates of the configMap reach running containers.

use std::{collections::BTreeMap, path::Path};

use k8s_openapi::api::core::v1::{ConfigMapVolumeSource, KeyToPath};

use super::{FileProjection, Payload, VolumeError, atomic_writer, ensure_dir};
use crate::pod::command::{ConfigError, Sources};

/// The kubelet's plugin directory name.
pub const PLUGIN: &str = "kubernetes.io~configmap";

/// Kubernetes' default file mode for configMap, secret, downward API and projected files.
pub const DEFAULT_MODE: u32 = 0o644;

/// A `mode`/`defaultMode` field as permission bits, `default` when unset or out of range.
#[must_use]
pub fn mode_bits(mode: Option<i32>, default: u32) -> u32 {
    mode.and_then(|m| u32::try_from(m).ok())
        .map_or(default, |m| m & 0o777)
}

/// Turns a configMap's or secret's data into files: every key under its own name, or only
/// the `items` listed, each at its path with its mode. A missing object is an empty payload
/// when `optional`, an error naming it otherwise; so is a listed key that is missing.
///
/// # Errors
/// [`ConfigError::Missing`] or [`VolumeError::MissingKey`] when not `optional`.
pub fn project_keys(
    kind: &'static str,
    name: &str,
    data: Option<&BTreeMap<String, Vec<u8>>>,
    items: Option<&[KeyToPath]>,
    default_mode: u32,
    optional: bool,
) -> Result<Payload, VolumeError> {
    let Some(data) = data else {
        if optional {
            return Ok(Payload::new());
        }
        return Err(ConfigError::Missing {
            kind,
            name: name.to_owned(),
        }
        .into());
    };
    let mut payload = Payload::new();
    match items {
        Some(items) if !items.is_empty() => {
            for item in items {
                let Some(value) = data.get(&item.key) else {
                    if optional {
                        continue;
                    }
                    return Err(VolumeError::MissingKey {
                        kind,
                        name: name.to_owned(),
                        key: item.key.clone(),
                    });
                };
                payload.insert(
                    item.path.clone(),
                    FileProjection {
                        data: value.clone(),
                        mode: mode_bits(item.mode, default_mode),
                    },
                );
            }
        }
        _ => {
            for (key, value) in data {
                payload.insert(
                    key.clone(),
                    FileProjection {
                        data: value.clone(),
                        mode: default_mode,
                    },
                );
            }
        }
    }
    Ok(payload)
}

/// Writes (or refreshes) the volume in `dir`.
///
/// # Errors
/// A missing non-optional configMap or key, the API unreachable, a write failure.
pub async fn setup(
    dir: &Path,
    source: &ConfigMapVolumeSource,
    sources: &dyn Sources,
    namespace: &str,
) -> Result<(), VolumeError> {
    let data = sources.config_map(namespace, &source.name).await?;
    let payload = project_keys(
        "configmap",
        &source.name,
        data.as_ref(),
        source.items.as_deref(),
        mode_bits(source.default_mode, DEFAULT_MODE),
        source.optional.unwrap_or(false),
    )?;
    ensure_dir(dir)?;
    if atomic_writer::write(dir, &payload)? {
        tracing::info!(configmap = %source.name, namespace, dir = %dir.display(), "configMap volume updated");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::{fs, os::unix::fs::PermissionsExt as _};

    use super::*;
    use crate::pod::volume::testing::FakeSources;

    fn item(key: &str, path: &str, mode: Option<i32>) -> KeyToPath {
        KeyToPath {
            key: key.to_owned(),
            path: path.to_owned(),
            mode,
        }
    }

    fn mode_of(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[tokio::test]
    async fn every_key_becomes_a_file_with_default_mode() {
        let tmp = tempfile::tempdir().unwrap();
        let sources = FakeSources::default();
        sources.set_config_map("ns", "cfg", &[("a", "1"), ("b", "2")]);
        let src = ConfigMapVolumeSource {
            name: "cfg".to_owned(),
            ..Default::default()
        };
        setup(tmp.path(), &src, &sources, "ns").await.unwrap();
        assert_eq!(fs::read_to_string(tmp.path().join("a")).unwrap(), "1");
        assert_eq!(fs::read_to_string(tmp.path().join("b")).unwrap(), "2");
        assert_eq!(mode_of(&tmp.path().join("a")), 0o644);
    }

    #[tokio::test]
    async fn items_choose_keys_paths_and_modes() {
        let tmp = tempfile::tempdir().unwrap();
        let sources = FakeSources::default();
        sources.set_config_map("ns", "cfg", &[("a", "1"), ("b", "2")]);
        let src = ConfigMapVolumeSource {
            name: "cfg".to_owned(),
            default_mode: Some(0o600),
            items: Some(vec![
                item("a", "dir/renamed", Some(0o400)),
                item("b", "b", None),
            ]),
            ..Default::default()
        };
        setup(tmp.path(), &src, &sources, "ns").await.unwrap();
        let renamed = tmp.path().join("dir/renamed");
        assert_eq!(fs::read_to_string(&renamed).unwrap(), "1");
        assert_eq!(mode_of(&renamed), 0o400);
        assert_eq!(mode_of(&tmp.path().join("b")), 0o600);
        assert!(fs::symlink_metadata(tmp.path().join("a")).is_err());
    }

    #[tokio::test]
    async fn missing_config_map_is_an_error_naming_it_unless_optional() {
        let tmp = tempfile::tempdir().unwrap();
        let sources = FakeSources::default();
        let mut src = ConfigMapVolumeSource {
            name: "x".to_owned(),
            ..Default::default()
        };
        let err = setup(&tmp.path().join("v"), &src, &sources, "ns")
            .await
            .unwrap_err();
        assert_eq!(err.to_string(), "configmap \"x\" not found");
        assert!(!tmp.path().join("v").exists());

        src.optional = Some(true);
        setup(&tmp.path().join("v"), &src, &sources, "ns")
            .await
            .unwrap();
        assert!(tmp.path().join("v/..data").exists());
    }

    #[test]
    fn missing_item_key_is_an_error_unless_optional() {
        let data = BTreeMap::from([("a".to_owned(), b"1".to_vec())]);
        let items = [item("nope", "p", None)];
        let err =
            project_keys("configmap", "cfg", Some(&data), Some(&items), 0o644, false).unwrap_err();
        assert_eq!(
            err.to_string(),
            "configmap \"cfg\" references non-existent key: nope"
        );
        let payload =
            project_keys("configmap", "cfg", Some(&data), Some(&items), 0o644, true).unwrap();
        assert!(payload.is_empty());
    }

    #[test]
    fn out_of_range_modes_fall_back_to_the_default() {
        assert_eq!(mode_bits(None, 0o644), 0o644);
        assert_eq!(mode_bits(Some(-1), 0o644), 0o644);
        assert_eq!(mode_bits(Some(0o400), 0o644), 0o400);
        assert_eq!(mode_bits(Some(0o1777), 0o644), 0o777);
    }
}
