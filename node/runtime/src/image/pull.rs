//! Pulls images from registries with `oci-client`: from each mirror the registries config
//! names, then the registry itself, the manifest (this platform's, from an index), then
//! each config and layer blob not already stored, digests verified, one pull per reference
//! at a time.

use std::{
    sync::{Arc, PoisonError},
    time::Duration,
};

use oci_client::{
    Client, Reference,
    client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol},
    errors::OciDistributionError,
    secrets::RegistryAuth as OciAuth,
};
use serde::Deserialize;

use super::{
    Endpoint, Image, ImageError, ImageStore, PullPolicy, RegistryAuth,
    manifest::{self, Index, Manifest, from_json},
    reference::{self, normalize},
    store::digest_of,
};

/// Why an image could not be had.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    /// The image is not stored and the pull policy forbids pulling it.
    #[error("container image {0:?} is not present with pull policy of Never")]
    NotPresent(String),
    /// The registry refused or failed the pull; the message is the registry's reason.
    #[error("{0}")]
    Registry(String),
    /// The image arrived but could not be stored or unpacked, or its reference is invalid.
    #[error(transparent)]
    Store(#[from] ImageError),
}

pub(super) async fn ensure(
    images: &ImageStore,
    reference: &str,
    policy: PullPolicy,
    auths: &[RegistryAuth],
) -> Result<Image, PullError> {
    let parsed = reference::parse(reference)?;
    let name = normalize(reference)?;
    match policy {
        PullPolicy::Never => {
            return images
                .lookup(&name)
                .ok_or_else(|| PullError::NotPresent(reference.to_owned()));
        }
        PullPolicy::IfNotPresent => {
            if let Some(image) = images.lookup(&name) {
                return Ok(image);
            }
        }
        PullPolicy::Always => {}
    }
    let lock = {
        let mut pulls = images
            .inner
            .pulls
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        Arc::clone(pulls.entry(name.clone()).or_default())
    };
    let _pulling = lock.lock().await;
    // Whoever held the lock before may just have pulled it.
    if policy == PullPolicy::IfNotPresent
        && let Some(image) = images.lookup(&name)
    {
        return Ok(image);
    }
    pull(images, &parsed, &name, auths).await
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Versioned {
    media_type: Option<String>,
    manifests: Option<serde_json::Value>,
}

async fn pull(
    images: &ImageStore,
    parsed: &Reference,
    name: &str,
    auths: &[RegistryAuth],
) -> Result<Image, PullError> {
    let endpoints = images.inner.registries.endpoints(parsed.registry());
    let mut failures = Vec::new();
    for endpoint in &endpoints {
        match pull_from(images, parsed, name, auths, endpoint).await {
            Ok(image) => return Ok(image),
            // The store failing is no reason to try elsewhere.
            Err(err @ PullError::Store(_)) => return Err(err),
            Err(err) => {
                if endpoints.len() > 1 {
                    tracing::info!(image = name, endpoint = %endpoint.host, %err, "pull failed, trying the next endpoint");
                }
                failures.push((endpoint.host.clone(), err));
            }
        }
    }
    Err(match failures.len() {
        0 | 1 => failures.pop().map_or_else(
            || PullError::Registry("no endpoint to pull from".into()),
            |(_, e)| e,
        ),
        _ => PullError::Registry(
            failures
                .iter()
                .map(|(host, err)| format!("{host}: {err}"))
                .collect::<Vec<_>>()
                .join("; "),
        ),
    })
}

/// The reference `parsed` names, on `host` instead of its own registry.
fn on_endpoint(parsed: &Reference, host: &str) -> Reference {
    let (registry, repository) = (host.to_owned(), parsed.repository().to_owned());
    match (parsed.tag(), parsed.digest()) {
        (Some(tag), Some(digest)) => {
            Reference::with_tag_and_digest(registry, repository, tag.to_owned(), digest.to_owned())
        }
        (None, Some(digest)) => Reference::with_digest(registry, repository, digest.to_owned()),
        (tag, None) => {
            Reference::with_tag(registry, repository, tag.unwrap_or("latest").to_owned())
        }
    }
}

/// A client for `endpoint` as the registries config says to reach it.
fn client_for(images: &ImageStore, endpoint: &Endpoint) -> Result<Client, PullError> {
    let config = images.inner.registries.config(&endpoint.host);
    let mut extra_root_certificates = Vec::new();
    for pem in &config.ca_pem {
        extra_root_certificates.push(Certificate {
            encoding: CertificateEncoding::Pem,
            data: pem.clone(),
        });
    }
    let client_config = ClientConfig {
        protocol: ClientProtocol::HttpsExcept(images.inner.registries.plain_http_hosts()),
        accept_invalid_certificates: config.insecure_skip_verify,
        extra_root_certificates,
        // A registry that stops answering must fail the pull (ErrImagePull, retried with
        // back-off) rather than hold the container in ContainerCreating forever.
        connect_timeout: Some(Duration::from_secs(10)),
        read_timeout: Some(Duration::from_mins(1)),
        ..ClientConfig::default()
    };
    Client::try_from(client_config).map_err(registry_error)
}

async fn pull_from(
    images: &ImageStore,
    original: &Reference,
    name: &str,
    auths: &[RegistryAuth],
    endpoint: &Endpoint,
) -> Result<Image, PullError> {
    let store = &images.inner.store;
    let _busy = store.begin();
    let client = client_for(images, endpoint)?;
    let parsed = &on_endpoint(original, &endpoint.host);
    // The registries config's credentials for the endpoint, else a pull secret for it.
    let auth = match images.inner.registries.config(&endpoint.host).credentials {
        Some((user, password)) => OciAuth::Basic(user, password),
        None => auths
            .iter()
            .find(|a| a.matches(&endpoint.host))
            .map_or(OciAuth::Anonymous, |a| {
                OciAuth::Basic(a.username.clone(), a.password.clone())
            }),
    };
    let accepted = [
        manifest::OCI_MANIFEST,
        manifest::DOCKER_MANIFEST,
        manifest::OCI_INDEX,
        manifest::DOCKER_LIST,
    ];
    tracing::info!(image = name, endpoint = %endpoint.host, "pulling image");
    let (mut bytes, _) = client
        .pull_manifest_raw(parsed, &auth, &accepted)
        .await
        .map_err(registry_error)?;
    let versioned: Versioned = from_json(&bytes, &format!("manifest of {name}"))?;
    if versioned
        .media_type
        .as_deref()
        .is_some_and(manifest::is_index)
        || (versioned.media_type.is_none() && versioned.manifests.is_some())
    {
        let index: Index = from_json(&bytes, &format!("index of {name}"))?;
        let entry = manifest::pick_platform(&index).ok_or_else(|| {
            PullError::Registry(format!(
                "no manifest for linux/{} in {name}",
                std::env::consts::ARCH
            ))
        })?;
        let by_digest = parsed.clone_with_digest(entry.digest.clone());
        bytes = client
            .pull_manifest_raw(&by_digest, &auth, &accepted)
            .await
            .map_err(registry_error)?
            .0;
    }
    let manifest_digest = digest_of(&bytes);
    let parsed_manifest: Manifest = from_json(&bytes, &format!("manifest {manifest_digest}"))?;
    store.write_blob(&bytes)?;

    let wanted = std::iter::once(&parsed_manifest.config)
        .chain(&parsed_manifest.layers)
        .filter(|d| !store.has_blob(&d.digest));
    let fetches = wanted.map(|descriptor| fetch_blob(images, &client, parsed, &descriptor.digest));
    futures::future::try_join_all(fetches).await?;

    let repo_digest = format!("{}@{manifest_digest}", reference::repository(original));
    let owned = images.clone();
    let names = [name.to_owned()];
    let image = tokio::task::spawn_blocking(move || {
        owned.install(&manifest_digest, &names, Some(&repo_digest))
    })
    .await
    .map_err(|e| ImageError::Malformed(format!("unpack task ended: {e}")))??;
    tracing::info!(image = name, id = %image.id, "pulled image");
    Ok(image)
}

async fn fetch_blob(
    images: &ImageStore,
    client: &Client,
    reference: &Reference,
    digest: &str,
) -> Result<(), PullError> {
    let store = &images.inner.store;
    let tmp_dir = store.tmp_dir();
    let tmp = tempfile::NamedTempFile::new_in(&tmp_dir)
        .map_err(ImageError::io("create temporary file in", &tmp_dir))?
        .into_temp_path();
    let file = tokio::fs::File::create(&tmp)
        .await
        .map_err(ImageError::io("create", &tmp))?;
    // pull_blob checks the content against `digest` before returning Ok.
    client
        .pull_blob(reference, digest, file)
        .await
        .map_err(registry_error)?;
    store.commit_blob(&tmp, digest)?;
    tracing::debug!(digest, "fetched blob");
    Ok(())
}

/// The registry's own words for a failure, as the kubelet shows them in `ErrImagePull`.
fn registry_error(error: OciDistributionError) -> PullError {
    let reason = match error {
        OciDistributionError::RegistryError { envelope, .. } => envelope
            .errors
            .iter()
            .map(|e| {
                if e.message.is_empty() {
                    format!("{:?}", e.code).to_lowercase()
                } else {
                    e.message.clone()
                }
            })
            .collect::<Vec<_>>()
            .join("; "),
        OciDistributionError::UnauthorizedError { url } => {
            format!("unauthorized: authentication required ({url})")
        }
        OciDistributionError::AuthenticationFailure(reason) => {
            format!("authentication failed: {reason}")
        }
        OciDistributionError::ServerError { code, message, .. } => {
            format!("registry answered {code}: {}", message.trim())
        }
        OciDistributionError::DigestError(e) => format!("digest mismatch: {e}"),
        other => {
            // reqwest's Display omits the cause ("connection refused"); walk the chain.
            let mut text = other.to_string();
            let mut source = std::error::Error::source(&other);
            while let Some(cause) = source {
                text.push_str(": ");
                text.push_str(&cause.to_string());
                source = cause.source();
            }
            text
        }
    };
    PullError::Registry(reason)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::{
        super::{OverlayMounter, unpack::tests::RecordingWhiteouts},
        *,
    };

    #[tokio::test]
    async fn never_policy_on_a_missing_image_is_not_present() {
        let dir = tempfile::tempdir().unwrap();
        let images = ImageStore::open_with(
            dir.path(),
            Vec::new(),
            Arc::new(OverlayMounter),
            Arc::new(RecordingWhiteouts::default()),
        )
        .unwrap();
        let err = images
            .ensure("busybox:1", PullPolicy::Never, &[])
            .await
            .unwrap_err();
        assert!(matches!(err, PullError::NotPresent(_)), "{err}");
        assert!(err.to_string().contains("busybox:1"));
    }

    #[tokio::test]
    async fn unreachable_registry_names_the_cause() {
        let dir = tempfile::tempdir().unwrap();
        // A port nothing listens on: bind, note it, close.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let registry = format!("127.0.0.1:{port}");
        let images = ImageStore::open(dir.path(), vec![registry.clone()]).unwrap();
        let err = images
            .ensure(
                &format!("{registry}/busybox:1"),
                PullPolicy::IfNotPresent,
                &[],
            )
            .await
            .unwrap_err();
        assert!(matches!(err, PullError::Registry(_)), "{err}");
        assert!(err.to_string().to_lowercase().contains("connect"), "{err}");
    }
}
