//! projected volumes: configMaps, secrets and downward API fields merged into one directory,
//! written and refreshed by the atomic writer like each of them alone.

use std::path::Path;

use k8s_openapi::api::core::v1::{Pod, ProjectedVolumeSource};

use super::{
    Payload, VolumeError, atomic_writer,
    config_map::{DEFAULT_MODE, mode_bits, project_keys},
    downward_api, ensure_dir,
};
use crate::pod::command::{NodeLimits, Sources};

/// The kubelet's plugin directory name.
pub const PLUGIN: &str = "kubernetes.io~projected";

/// The merged payload of every source; a later source wins a path both write.
/// `serviceAccountToken` and `clusterTrustBundle` sources write nothing yet.
///
/// # Errors
/// A missing non-optional configMap, secret or key; an unsupported downward API reference.
pub async fn payload(
    volume: &str,
    pod: &Pod,
    source: &ProjectedVolumeSource,
    sources: &dyn Sources,
    node: NodeLimits,
) -> Result<Payload, VolumeError> {
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
        if let Some(token) = &projection.service_account_token {
            tracing::debug!(volume, path = %token.path, "serviceAccountToken projection not supported yet: nothing written");
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

/// Writes (or refreshes) the volume in `dir`.
///
/// # Errors
/// As [`payload`], or a write failure.
pub async fn setup(
    dir: &Path,
    volume: &str,
    pod: &Pod,
    source: &ProjectedVolumeSource,
    sources: &dyn Sources,
    node: NodeLimits,
) -> Result<(), VolumeError> {
    let payload = payload(volume, pod, source, sources, node).await?;
    ensure_dir(dir)?;
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
    use crate::pod::volume::testing::FakeSources;

    fn pod() -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("p".to_owned()),
                namespace: Some("ns".to_owned()),
                ..Default::default()
            },
            ..Default::default()
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

    #[tokio::test]
    async fn sources_merge_into_one_payload_with_the_volume_mode() {
        let sources = FakeSources::default();
        sources.set_config_map("ns", "cfg", &[("a", "1"), ("b", "2")]);
        sources.set_secret("ns", "sec", &[("pw", "x")]);
        let p = payload(
            "all",
            &pod(),
            &all_sources(false),
            &sources,
            NodeLimits::default(),
        )
        .await
        .unwrap();
        let keys: Vec<&str> = p.keys().map(String::as_str).collect();
        assert_eq!(keys, ["conf/a", "name", "pw"]);
        assert_eq!(p["pw"].mode, 0o440);
        assert_eq!(p["name"].data, b"p");
    }

    #[tokio::test]
    async fn missing_source_fails_unless_optional() {
        let sources = FakeSources::default();
        sources.set_config_map("ns", "cfg", &[("a", "1")]);
        let err = payload(
            "all",
            &pod(),
            &all_sources(false),
            &sources,
            NodeLimits::default(),
        )
        .await
        .unwrap_err();
        assert_eq!(err.to_string(), "secret \"sec\" not found");
        let p = payload(
            "all",
            &pod(),
            &all_sources(true),
            &sources,
            NodeLimits::default(),
        )
        .await
        .unwrap();
        assert!(!p.contains_key("pw"));
    }
}
