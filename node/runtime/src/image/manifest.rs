//! The few fields of OCI and docker v2 manifests and image configs the store reads, and the
//! image a stored manifest describes.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{Image, ImageConfig, ImageError, store::Store};

/// OCI image manifest media type.
pub(super) const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// Docker v2 schema 2 manifest media type.
pub(super) const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// OCI image index media type.
pub(super) const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Docker manifest list media type.
pub(super) const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker image config media type.
pub(super) const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
/// Docker uncompressed layer media type.
pub(super) const DOCKER_LAYER_TAR: &str = "application/vnd.docker.image.rootfs.diff.tar";
/// Docker gzip layer media type.
pub(super) const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// A content descriptor.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: String,
    #[serde(default)]
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

/// An image manifest (OCI or docker v2 schema 2).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Manifest {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub config: Descriptor,
    #[serde(default)]
    pub layers: Vec<Descriptor>,
}

/// An image index or manifest list.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Index {
    #[serde(default)]
    pub manifests: Vec<IndexEntry>,
}

/// One manifest in an index.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct IndexEntry {
    #[serde(default)]
    pub media_type: String,
    pub digest: String,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    #[serde(default)]
    pub platform: Option<Platform>,
}

/// The platform an index entry is for.
#[derive(Clone, Debug, Deserialize)]
pub(super) struct Platform {
    pub architecture: String,
    pub os: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ContainerConfig {
    entrypoint: Option<Vec<String>>,
    cmd: Option<Vec<String>>,
    env: Option<Vec<String>>,
    working_dir: Option<String>,
    user: Option<String>,
}

#[derive(Debug, Deserialize)]
struct RootFs {
    #[serde(default)]
    diff_ids: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct ConfigFile {
    #[serde(default)]
    config: Option<ContainerConfig>,
    rootfs: RootFs,
}

/// Whether a media type names an index rather than an image manifest.
pub(super) fn is_index(media_type: &str) -> bool {
    media_type == OCI_INDEX || media_type == DOCKER_LIST
}

/// The manifest of this machine's platform in an index (`linux` and the Go name of the
/// architecture this node was built for).
pub(super) fn pick_platform(index: &Index) -> Option<&IndexEntry> {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        other => other,
    };
    index.manifests.iter().find(|entry| {
        entry
            .platform
            .as_ref()
            .is_some_and(|p| p.os == "linux" && p.architecture == arch)
    })
}

/// Parses JSON, naming the document in the error.
pub(super) fn from_json<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
    what: &str,
) -> Result<T, ImageError> {
    serde_json::from_slice(bytes).map_err(|source| ImageError::Json {
        what: what.to_owned(),
        source,
    })
}

/// A stored manifest with what its config says.
#[derive(Debug)]
pub(super) struct Parsed {
    pub manifest: Manifest,
    /// `sha256:<config digest>`.
    pub id: String,
    /// One per layer, bottom first.
    pub diff_ids: Vec<String>,
    pub config: ImageConfig,
}

impl Parsed {
    /// Reads the manifest stored under `digest` and its config blob.
    pub fn read(store: &Store, digest: &str) -> Result<Self, ImageError> {
        let manifest: Manifest =
            from_json(&store.read_blob(digest)?, &format!("manifest {digest}"))?;
        let config_digest = manifest.config.digest.clone();
        let config_bytes = store.read_blob(&config_digest)?;
        let file: ConfigFile = from_json(&config_bytes, &format!("config {config_digest}"))?;
        if file.rootfs.diff_ids.len() != manifest.layers.len() {
            return Err(ImageError::Malformed(format!(
                "manifest {digest} has {} layers but its config {} diff ids",
                manifest.layers.len(),
                file.rootfs.diff_ids.len()
            )));
        }
        let c = file.config.unwrap_or_default();
        let non_empty = |s: Option<String>| s.filter(|s| !s.is_empty());
        Ok(Self {
            id: config_digest,
            diff_ids: file.rootfs.diff_ids,
            config: ImageConfig {
                entrypoint: c.entrypoint.unwrap_or_default(),
                cmd: c.cmd.unwrap_or_default(),
                env: c.env.unwrap_or_default(),
                working_dir: non_empty(c.working_dir),
                user: non_empty(c.user),
            },
            manifest,
        })
    }

    /// The image under `reference`, its layers in `store`.
    pub fn image(
        &self,
        store: &Store,
        reference: &str,
        repo_digest: Option<String>,
    ) -> Result<Image, ImageError> {
        let layers = self
            .diff_ids
            .iter()
            .map(|d| store.layer_dir(d))
            .collect::<Result<Vec<_>, _>>()?;
        let size =
            self.manifest.config.size + self.manifest.layers.iter().map(|l| l.size).sum::<u64>();
        Ok(Image {
            reference: reference.to_owned(),
            id: self.id.clone(),
            repo_digest,
            config: self.config.clone(),
            layers,
            size,
        })
    }

    /// Every blob this image needs: manifest, config and layers.
    pub fn blobs<'a>(&'a self, manifest_digest: &'a str) -> impl Iterator<Item = &'a str> {
        std::iter::once(manifest_digest)
            .chain(std::iter::once(self.manifest.config.digest.as_str()))
            .chain(self.manifest.layers.iter().map(|l| l.digest.as_str()))
    }
}
