//! The node's image store: blobs kept by content digest, layers unpacked once and shared by
//! every image and container, references mapped to manifests, pulls from registries,
//! tarball imports and the overlayfs root filesystem each container runs in.

mod auth;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
mod gc;
mod import;
mod manifest;
mod pull;
mod reference;
mod registries;
mod rootfs;
mod store;
mod unpack;

use std::{
    collections::{HashMap, HashSet},
    fmt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

pub use auth::RegistryAuth;
pub use pull::PullError;
pub use reference::{PullPolicy, normalize};
pub use registries::{Endpoint, HostConfig, Registries, RegistriesError};
pub use rootfs::{Mounter, OverlayMounter};
pub use unpack::{OverlayWhiteouts, Whiteouts};

/// Errors of the image store.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// A file or directory of the store or of a tarball could not be used.
    #[error("{op} {path}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The image reference does not parse.
    #[error("invalid image reference {reference:?}: {reason}")]
    InvalidReference {
        /// The reference as given.
        reference: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A manifest, config, index or refs file is not the JSON it should be.
    #[error("parse {what}")]
    Json {
        /// Which document.
        what: String,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// Content does not hash to the digest that names it.
    #[error("digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch {
        /// The digest content was announced with.
        expected: String,
        /// The digest of what arrived.
        actual: String,
    },
    /// A tarball, manifest or layer is structured in a way the store cannot use.
    #[error("malformed image: {0}")]
    Malformed(String),
    /// A blob, layer or image is not in the store.
    #[error("not in the image store: {0}")]
    NotFound(String),
    /// Mounting or unmounting a root filesystem failed.
    #[error("{op} {target}")]
    Mount {
        /// `mount` or `umount`.
        op: &'static str,
        /// The mount point.
        target: String,
        /// Why.
        #[source]
        source: nix::Error,
    },
    /// A `.dockerconfigjson` pull secret cannot be read.
    #[error("docker config json: {0}")]
    DockerConfig(String),
}

impl ImageError {
    pub(crate) fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.display().to_string();
        move |source| Self::Io { op, path, source }
    }
}

/// The parts of an image's config a container starts from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImageConfig {
    /// `Entrypoint`.
    pub entrypoint: Vec<String>,
    /// `Cmd`.
    pub cmd: Vec<String>,
    /// `Env`, as `NAME=value`.
    pub env: Vec<String>,
    /// `WorkingDir`, if not empty.
    pub working_dir: Option<String>,
    /// `User`, if not empty.
    pub user: Option<String>,
}

/// An image in the store, with its layers unpacked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Image {
    /// The normalized reference, e.g. `docker.io/library/busybox:latest` or
    /// `127.0.0.1:5000/busybox:1`; the id for images imported without a name.
    pub reference: String,
    /// `sha256:<config digest>`.
    pub id: String,
    /// `<repo>@sha256:<manifest digest>` for pulled images.
    pub repo_digest: Option<String>,
    /// What a container of this image runs by default.
    pub config: ImageConfig,
    /// Unpacked layer directories, bottom first.
    pub layers: Vec<PathBuf>,
    /// Config plus (compressed) layer bytes, as the manifest states them.
    pub size: u64,
}

/// The node's image store under `<state-dir>/images`.
#[derive(Clone)]
pub struct ImageStore {
    inner: Arc<Inner>,
}

struct Inner {
    store: store::Store,
    registries: Registries,
    mounter: Arc<dyn Mounter>,
    whiteouts: Arc<dyn Whiteouts>,
    /// One lock per normalized reference, so concurrent `ensure` calls pull once.
    pulls: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl fmt::Debug for ImageStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ImageStore")
            .field("root", &self.inner.store.root())
            .field("registries", &self.inner.registries)
            .finish_non_exhaustive()
    }
}

impl ImageStore {
    /// Opens (creating if needed) the store under `root`, pulling as `registries` say
    /// (a `Vec` of `host:port` names reached over plain HTTP is the simplest).
    ///
    /// # Errors
    /// If the directories cannot be made or `refs.json` cannot be read.
    pub fn open(root: &Path, registries: impl Into<Registries>) -> Result<Self, ImageError> {
        Self::open_with(
            root,
            registries,
            Arc::new(OverlayMounter),
            Arc::new(OverlayWhiteouts),
        )
    }

    /// Like [`ImageStore::open`], with the privileged parts (mounts, whiteout device nodes)
    /// supplied by the caller.
    ///
    /// # Errors
    /// If the directories cannot be made or `refs.json` cannot be read.
    pub fn open_with(
        root: &Path,
        registries: impl Into<Registries>,
        mounter: Arc<dyn Mounter>,
        whiteouts: Arc<dyn Whiteouts>,
    ) -> Result<Self, ImageError> {
        let store = store::Store::open(root)?;
        Ok(Self {
            inner: Arc::new(Inner {
                store,
                registries: registries.into(),
                mounter,
                whiteouts,
                pulls: Mutex::default(),
            }),
        })
    }

    /// The image a reference (normalized here) or an image id names, if stored.
    #[must_use]
    pub fn lookup(&self, reference: &str) -> Option<Image> {
        let store = &self.inner.store;
        if let Some(image) = store.image(reference) {
            return Some(image);
        }
        if let Ok(normalized) = normalize(reference)
            && let Some(image) = store.image(&normalized)
        {
            return Some(image);
        }
        let id = if reference.starts_with("sha256:") {
            reference.to_owned()
        } else {
            format!("sha256:{reference}")
        };
        store.images().into_iter().find(|image| image.id == id)
    }

    /// Returns the image, pulling it first when `policy` asks for it.
    ///
    /// # Errors
    /// [`PullError::NotPresent`] if it is missing and `policy` is `Never`; otherwise the
    /// registry's reason or a store error.
    pub async fn ensure(
        &self,
        reference: &str,
        policy: PullPolicy,
        auths: &[RegistryAuth],
    ) -> Result<Image, PullError> {
        pull::ensure(self, reference, policy, auths).await
    }

    /// Imports every image of an OCI image layout tarball or a docker-archive tarball
    /// (either may be gzip-compressed). Blocking: call it from `spawn_blocking` in async code.
    ///
    /// # Errors
    /// If the tarball cannot be read, is neither format, or a digest does not match.
    pub fn import(&self, tarball: &Path) -> Result<Vec<Image>, ImageError> {
        import::import(self, tarball)
    }

    /// Mounts the image's root filesystem at `<container_dir>/rootfs` (overlayfs with the
    /// writable layer in the container's directory) and returns that path.
    ///
    /// # Errors
    /// If the directories cannot be made or the mount fails.
    pub fn mount_rootfs(&self, image: &Image, container_dir: &Path) -> Result<PathBuf, ImageError> {
        rootfs::mount(
            self.inner.mounter.as_ref(),
            &image.layers,
            &self.inner.store.empty_layer()?,
            container_dir,
        )
    }

    /// Unmounts the container's root filesystem and removes its writable layer.
    ///
    /// # Errors
    /// If the unmount fails or the directories cannot be removed.
    pub fn unmount_rootfs(&self, container_dir: &Path) -> Result<(), ImageError> {
        rootfs::unmount(self.inner.mounter.as_ref(), container_dir)
    }

    /// Every image in the store, one per reference.
    #[must_use]
    pub fn list(&self) -> Vec<Image> {
        self.inner.store.images()
    }

    /// Removes the references of images whose ids are not in `in_use`, then the blobs and
    /// layers no remaining image needs; returns the removed image ids. `in_use` must hold
    /// the image of every container with a mounted root filesystem: their layers are the
    /// overlay's lower directories. Blobs and layers are left for the next run while a pull
    /// or import is in flight.
    ///
    /// # Errors
    /// If `refs.json` cannot be written or a blob or layer cannot be removed.
    pub fn gc(&self, in_use: &HashSet<String>) -> Result<Vec<String>, ImageError> {
        gc::gc(&self.inner.store, in_use)
    }

    /// Removes the image `reference` names (a name, or an id: then every name of it) and the
    /// blobs and layers no other image needs; returns what was removed. The caller checks
    /// that no container uses it.
    ///
    /// # Errors
    /// [`ImageError::NotFound`] for an unknown image; a store error otherwise.
    pub fn remove(&self, reference: &str) -> Result<Image, ImageError> {
        let image = self
            .lookup(reference)
            .ok_or_else(|| ImageError::NotFound(reference.to_owned()))?;
        let by_id = image.id == reference || image.id == format!("sha256:{reference}");
        let names: Vec<String> = if by_id {
            self.list()
                .into_iter()
                .filter(|i| i.id == image.id)
                .map(|i| i.reference)
                .collect()
        } else {
            vec![image.reference.clone()]
        };
        for name in names {
            gc::remove(&self.inner.store, &name)?;
        }
        Ok(image)
    }

    /// Records `names` for the manifest stored under `manifest_digest`, unpacking the
    /// layers it needs.
    fn install(
        &self,
        manifest_digest: &str,
        names: &[String],
        repo_digest: Option<&str>,
    ) -> Result<Image, ImageError> {
        let store = &self.inner.store;
        let parsed = manifest::Parsed::read(store, manifest_digest)?;
        for (layer, diff_id) in parsed.manifest.layers.iter().zip(&parsed.diff_ids) {
            let dir = store.layer_dir(diff_id)?;
            if dir.exists() {
                continue;
            }
            unpack::unpack_layer(
                &store.blob_path(&layer.digest)?,
                diff_id,
                &dir,
                &store.tmp_dir(),
                self.inner.whiteouts.as_ref(),
            )?;
        }
        let fallback = [parsed.id.clone()];
        let names = if names.is_empty() {
            &fallback[..]
        } else {
            names
        };
        let mut image = None;
        for name in names {
            let entry = store::RefEntry {
                manifest: manifest_digest.to_owned(),
                repo_digest: repo_digest.map(str::to_owned),
            };
            image = Some(store.set_ref(name, &entry, &parsed)?);
        }
        image.ok_or_else(|| ImageError::Malformed("image without a name".into()))
    }
}
