//! projected volumes: configMaps, secrets, downward API fields and ServiceAccount tokens
//! merged into one directory (a tmpfs, as the kubelet's, when the node can mount), written
//! and refreshed by the atomic writer like each of them alone.

use std::path::Path;

use k8s_openapi::api::core::v1::{Pod, ProjectedVolumeSource};

use super::{
    FileProjection, Mounter, Payload, VolumeError, atomic_writer,
    config_map::{DEFAULT_MODE, mode_bits, project_keys},
    downward_api, ensure_dir,
    token::TokenManager,
};
use crate::pod::command::{NodeLimits, Sources};

/// The kubelet's plugin directory name.
pub const PLUGIN: &str = "kubernetes.io~projected";

/// What the payload of a volume is made from, besides its source.
#[derive(Clone, Copy)]
pub struct Inputs<'a> {
    /// configMaps, secrets and tokens.
    pub sources: &'a dyn Sources,
    /// The node's cached tokens.
    pub tokens: &'a TokenManager,
    /// The node's allocatable resources, for `resourceFieldRef`.
    pub node: NodeLimits,
    /// Unix seconds, for token freshness.
    pub now: i64,
}

impl std::fmt::Debug for Inputs<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inputs")
            .field("node", &self.node)
            .field("now", &self.now)
            .finish_non_exhaustive()
    }
}

/// The merged payload of every source; a later source wins a path both write. A
/// `serviceAccountToken` is a token bound to the pod, written with the volume's mode (kube
/// makes it 0600 when the pod has an `fsGroup`, with the group's ownership; the node sets no
/// ownership, so the mode stays readable by the pod's user). `clusterTrustBundle` sources
/// write nothing yet.
///
/// # Errors
/// A missing non-optional configMap, secret or key; an unsupported downward API reference;
/// a token the API server did not issue.
pub async fn payload(
    volume: &str,
    pod: &Pod,
    source: &ProjectedVolumeSource,
    inputs: Inputs<'_>,
) -> Result<Payload, VolumeError> {
    let Inputs {
        sources,
        tokens,
        node,
        now,
    } = inputs;
    let namespace = pod
        .metadata
        .namespace
        .as_deref()
        .unwrap_or(skiff_types::namespace::DEFAULT);
    let default_mode = mode_bits(source.default_mode, DEFAULT_MODE);
    let mut out = Payload::new();
    for projection in source.sources.as_deref().unwrap_or_default() {
        if let Some(cm) = &projection.config_map {
            let data = sources.config_map(namespace, &cm.name).await?;
            out.extend(project_keys(
                "configmap",
                &cm.name,
                data.as_ref(),
                cm.items.as_deref(),
                default_mode,
                cm.optional.unwrap_or(false),
            )?);
        }
        if let Some(secret) = &projection.secret {
            let data = sources.secret(namespace, &secret.name).await?;
            out.extend(project_keys(
                "secret",
                &secret.name,
                data.as_ref(),
                secret.items.as_deref(),
                default_mode,
                secret.optional.unwrap_or(false),
            )?);
        }
        if let Some(api) = &projection.downward_api {
            out.extend(downward_api::payload(
                volume,
                pod,
                api.items.as_deref().unwrap_or_default(),
                default_mode,
                node,
            )?);
        }
        if let Some(projection) = &projection.service_account_token {
            let token = tokens
                .token(sources, pod, projection, now)
                .await
                .map_err(VolumeError::Token)?;
            out.insert(
                projection.path.clone(),
                FileProjection {
                    data: token.into_bytes(),
                    mode: default_mode,
                },
            );
        }
        if projection.cluster_trust_bundle.is_some() {
            tracing::debug!(
                volume,
                "clusterTrustBundle projection not supported yet: nothing written"
            );
        }
    }
    Ok(out)
}

/// Writes (or refreshes) the volume in `dir`, mounting its tmpfs the first time.
///
/// # Errors
/// As [`payload`], or a mount or write failure.
pub async fn setup(
    dir: &Path,
    volume: &str,
    pod: &Pod,
    source: &ProjectedVolumeSource,
    inputs: Inputs<'_>,
    mounter: &dyn Mounter,
) -> Result<(), VolumeError> {
    let payload = payload(volume, pod, source, inputs).await?;
    ensure_dir(dir)?;
    if mounter.can_mount() && !mounter.is_mounted(dir) {
        mounter.mount_tmpfs(dir, None)?;
    }
    if atomic_writer::write(dir, &payload)? {
        tracing::info!(volume, dir = %dir.display(), "projected volume updated");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use k8s_openapi::{
        api::core::v1::{
            ConfigMapProjection, DownwardAPIProjection, DownwardAPIVolumeFile, KeyToPath,
            ObjectFieldSelector, SecretProjection, ServiceAccountTokenProjection, VolumeProjection,
        },
        apimachinery::pkg::apis::meta::v1::ObjectMeta,
    };

    use super::*;
    use crate::pod::volume::testing::{Call, FakeMounter, FakeSources};

    const T0: i64 = 1_700_000_000;

    fn pod() -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("p".to_owned()),
                namespace: Some("ns".to_owned()),
                uid: Some("u1".to_owned()),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn inputs<'a>(sources: &'a FakeSources, tokens: &'a TokenManager) -> Inputs<'a> {
        Inputs {
            sources,
            tokens,
            node: NodeLimits::default(),
            now: T0,
        }
    }

    fn all_sources(optional_secret: bool) -> ProjectedVolumeSource {
        ProjectedVolumeSource {
            default_mode: Some(0o440),
            sources: Some(vec![
                VolumeProjection {
                    config_map: Some(ConfigMapProjection {
                        name: "cfg".to_owned(),
                        items: Some(vec![KeyToPath {
                            key: "a".to_owned(),
                            path: "conf/a".to_owned(),
                            mode: None,
                        }]),
                        optional: None,
                    }),
                    ..Default::default()
                },
                VolumeProjection {
                    secret: Some(SecretProjection {
                        name: "sec".to_owned(),
                        items: None,
                        optional: Some(optional_secret),
                    }),
                    ..Default::default()
                },
                VolumeProjection {
                    downward_api: Some(DownwardAPIProjection {
                        items: Some(vec![DownwardAPIVolumeFile {
                            path: "name".to_owned(),
                            field_ref: Some(ObjectFieldSelector {
                                field_path: "metadata.name".to_owned(),
                                ..Default::default()
                            }),
                            ..Default::default()
                        }]),
                    }),
                    ..Default::default()
                },
                VolumeProjection {
                    service_account_token: Some(ServiceAccountTokenProjection {
                        path: "token".to_owned(),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            ]),
        }
    }

    async fn merged(sources: &FakeSources, optional_secret: bool) -> Result<Payload, VolumeError> {
        let tokens = TokenManager::default();
        payload(
            "all",
            &pod(),
            &all_sources(optional_secret),
            inputs(sources, &tokens),
        )
        .await
    }

    #[tokio::test]
    async fn sources_merge_into_one_payload_with_the_volume_mode() {
        let sources = FakeSources::at(T0);
        sources.set_config_map("ns", "cfg", &[("a", "1"), ("b", "2")]);
        sources.set_secret("ns", "sec", &[("pw", "x")]);
        let p = merged(&sources, false).await.unwrap();
        let keys: Vec<&str> = p.keys().map(String::as_str).collect();
        assert_eq!(keys, ["conf/a", "name", "pw", "token"]);
        assert_eq!(p["pw"].mode, 0o440);
        assert_eq!(
            (p["token"].data.as_slice(), p["token"].mode),
            (&b"token-1"[..], 0o440)
        );
        assert_eq!(p["name"].data, b"p");
    }

    #[tokio::test]
    async fn missing_source_fails_unless_optional() {
        let sources = FakeSources::at(T0);
        sources.set_config_map("ns", "cfg", &[("a", "1")]);
        let err = merged(&sources, false).await.unwrap_err();
        assert_eq!(err.to_string(), "secret \"sec\" not found");
        let p = merged(&sources, true).await.unwrap();
        assert!(!p.contains_key("pw"));
    }

    #[tokio::test]
    async fn the_token_is_rewritten_in_place_once_refreshed_on_a_tmpfs() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("kube-api-access-x");
        let sources = FakeSources::at(T0);
        let tokens = TokenManager::default();
        let mounter = FakeMounter::default();
        let source = ProjectedVolumeSource {
            default_mode: Some(0o644),
            sources: Some(vec![VolumeProjection {
                service_account_token: Some(ServiceAccountTokenProjection {
                    path: "token".to_owned(),
                    expiration_seconds: Some(3607),
                    audience: None,
                }),
                ..Default::default()
            }]),
        };
        let mut at = inputs(&sources, &tokens);
        setup(&dir, "v", &pod(), &source, at, &mounter)
            .await
            .unwrap();
        let file = dir.join("token");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "token-1");
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&file).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o644);
        // Still fresh at 79% of its life: the same token stays.
        at.now = T0 + 2800;
        setup(&dir, "v", &pod(), &source, at, &mounter)
            .await
            .unwrap();
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "token-1");
        at.now = T0 + 2900;
        sources.set_clock(at.now);
        setup(&dir, "v", &pod(), &source, at, &mounter)
            .await
            .unwrap();
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "token-2");
        assert_eq!(mounter.calls(), [Call::Mount(dir.clone(), None)]);
    }

    #[tokio::test]
    async fn a_refused_token_fails_the_volume_with_kubes_words() {
        let sources = FakeSources::at(T0);
        sources.set_config_map("ns", "cfg", &[("a", "1")]);
        sources.fail_tokens("serviceaccounts \"builder\" not found");
        let err = merged(&sources, true).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "failed to fetch token: serviceaccounts \"builder\" not found"
        );
    }
}
