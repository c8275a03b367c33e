//! The on-disk layout: `blobs/sha256/<hex>` (manifests, configs, compressed layers),
//! `layers/<diff-id hex>/` (unpacked layers), `refs.json` (reference -> manifest) and
//! `tmp/` where everything is written before it is renamed into place.

use std::{
    collections::{BTreeMap, HashMap},
    fs,
    io::{self, Read, Write},
    path::{Path, PathBuf},
    sync::{Mutex, MutexGuard, PoisonError},
};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::{Image, ImageError, manifest::Parsed};

/// What a reference points at.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct RefEntry {
    /// `sha256:<hex>` of the manifest blob.
    pub manifest: String,
    /// `<repo>@<manifest digest>` when the image came from a registry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repo_digest: Option<String>,
}

#[derive(Default, Serialize, Deserialize)]
struct RefsFile {
    refs: BTreeMap<String, RefEntry>,
}

#[derive(Default)]
struct State {
    refs: BTreeMap<String, RefEntry>,
    images: HashMap<String, Image>,
}

/// The store's directories and its reference table.
pub(super) struct Store {
    root: PathBuf,
    state: Mutex<State>,
    /// Pulls and imports in flight; garbage collection sweeps blobs only when none is.
    busy: Mutex<u32>,
}

/// Marks a pull or import in flight until dropped.
pub(super) struct Busy<'a>(&'a Store);

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        *self.0.busy.lock().unwrap_or_else(PoisonError::into_inner) -= 1;
    }
}

/// `sha256:<hex>` of `bytes`.
pub(super) fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// The hex part of a `sha256:` digest, checked so it is safe as a file name.
pub(super) fn hex_of(digest: &str) -> Result<&str, ImageError> {
    digest
        .strip_prefix("sha256:")
        .filter(|h| {
            h.len() == 64
                && h.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        })
        .ok_or_else(|| ImageError::Malformed(format!("unsupported digest {digest:?}")))
}

/// A reader that hashes what passes through it.
pub(super) struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
}

impl<R: Read> HashingReader<R> {
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }

    /// Reads to the end, then returns `sha256:<hex>` of everything read and its length.
    pub fn finish(mut self) -> io::Result<(String, u64)> {
        io::copy(&mut self, &mut io::sink())?;
        Ok((
            format!("sha256:{}", hex::encode(self.hasher.finalize())),
            self.count,
        ))
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

impl Store {
    pub fn open(root: &Path) -> Result<Self, ImageError> {
        for dir in ["blobs/sha256", "layers", "tmp"] {
            let path = root.join(dir);
            fs::create_dir_all(&path).map_err(ImageError::io("create", &path))?;
        }
        // Whatever is in tmp/ is a pull, import or unpack a previous run did not finish.
        let tmp = root.join("tmp");
        for entry in fs::read_dir(&tmp).map_err(ImageError::io("read", &tmp))? {
            let path = entry.map_err(ImageError::io("read", &tmp))?.path();
            let removed = if path.is_dir() {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            };
            if let Err(error) = removed {
                tracing::warn!(path = %path.display(), %error, "cannot remove leftover temporary file");
            }
        }
        let store = Self {
            root: root.to_owned(),
            state: Mutex::default(),
            busy: Mutex::new(0),
        };
        let refs_path = store.refs_path();
        let refs = match fs::read(&refs_path) {
            Ok(bytes) => {
                super::manifest::from_json::<RefsFile>(&bytes, &refs_path.display().to_string())?
                    .refs
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(ImageError::io("read", &refs_path)(e)),
        };
        let mut state = State::default();
        for (name, entry) in refs {
            match Parsed::read(&store, &entry.manifest)
                .and_then(|p| p.image(&store, &name, entry.repo_digest.clone()))
            {
                Ok(image) => {
                    state.images.insert(name.clone(), image);
                    state.refs.insert(name, entry);
                }
                Err(error) => {
                    tracing::warn!(reference = %name, error = %error, "dropping unreadable image reference");
                }
            }
        }
        *store.state.lock().unwrap_or_else(PoisonError::into_inner) = state;
        Ok(store)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn refs_path(&self) -> PathBuf {
        self.root.join("refs.json")
    }

    pub fn blobs_dir(&self) -> PathBuf {
        self.root.join("blobs/sha256")
    }

    pub fn layers_dir(&self) -> PathBuf {
        self.root.join("layers")
    }

    pub fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    pub fn blob_path(&self, digest: &str) -> Result<PathBuf, ImageError> {
        Ok(self.blobs_dir().join(hex_of(digest)?))
    }

    pub fn layer_dir(&self, diff_id: &str) -> Result<PathBuf, ImageError> {
        Ok(self.layers_dir().join(hex_of(diff_id)?))
    }

    /// An empty directory, the lower layer of images that have none.
    pub fn empty_layer(&self) -> Result<PathBuf, ImageError> {
        let path = self.root.join("empty");
        fs::create_dir_all(&path).map_err(ImageError::io("create", &path))?;
        Ok(path)
    }

    pub fn has_blob(&self, digest: &str) -> bool {
        self.blob_path(digest).is_ok_and(|p| p.is_file())
    }

    pub fn read_blob(&self, digest: &str) -> Result<Vec<u8>, ImageError> {
        let path = self.blob_path(digest)?;
        fs::read(&path).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                ImageError::NotFound(format!("blob {digest}"))
            } else {
                ImageError::io("read", &path)(e)
            }
        })
    }

    /// Stores `bytes` under their digest and returns it.
    pub fn write_blob(&self, bytes: &[u8]) -> Result<String, ImageError> {
        self.write_blob_from(bytes, None).map(|(digest, _)| digest)
    }

    /// Streams a blob into the store; with `expected`, content that hashes differently is
    /// refused. Returns the digest and size.
    pub fn write_blob_from(
        &self,
        reader: impl Read,
        expected: Option<&str>,
    ) -> Result<(String, u64), ImageError> {
        let tmp_dir = self.tmp_dir();
        let mut tmp = tempfile::NamedTempFile::new_in(&tmp_dir)
            .map_err(ImageError::io("create temporary file in", &tmp_dir))?;
        let mut hashing = HashingReader::new(reader);
        io::copy(&mut hashing, tmp.as_file_mut()).map_err(ImageError::io("write", tmp.path()))?;
        tmp.as_file_mut()
            .flush()
            .map_err(ImageError::io("write", tmp.path()))?;
        let (digest, size) = hashing
            .finish()
            .map_err(ImageError::io("read blob for", tmp.path()))?;
        if let Some(expected) = expected
            && expected != digest
        {
            return Err(ImageError::DigestMismatch {
                expected: expected.to_owned(),
                actual: digest,
            });
        }
        let path = self.blob_path(&digest)?;
        if !path.exists() {
            tmp.persist(&path)
                .map_err(|e| ImageError::io("rename into", &path)(e.error))?;
        }
        Ok((digest, size))
    }

    /// Moves a file already verified as `digest` into the store.
    pub fn commit_blob(&self, tmp: &Path, digest: &str) -> Result<(), ImageError> {
        let path = self.blob_path(digest)?;
        fs::rename(tmp, &path).map_err(ImageError::io("rename into", &path))
    }

    /// Marks a pull or import in flight.
    pub fn begin(&self) -> Busy<'_> {
        *self.busy.lock().unwrap_or_else(PoisonError::into_inner) += 1;
        Busy(self)
    }

    /// Holds off new pulls and imports; the number still in flight.
    pub fn quiesce(&self) -> MutexGuard<'_, u32> {
        self.busy.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn persist(&self, refs: &BTreeMap<String, RefEntry>) -> Result<(), ImageError> {
        let path = self.refs_path();
        let bytes =
            serde_json::to_vec_pretty(&RefsFile { refs: refs.clone() }).map_err(|source| {
                ImageError::Json {
                    what: "refs".into(),
                    source,
                }
            })?;
        let tmp_dir = self.tmp_dir();
        let mut tmp = tempfile::NamedTempFile::new_in(&tmp_dir)
            .map_err(ImageError::io("create temporary file in", &tmp_dir))?;
        tmp.write_all(&bytes)
            .and_then(|()| tmp.as_file().sync_all())
            .map_err(ImageError::io("write", tmp.path()))?;
        tmp.persist(&path)
            .map_err(|e| ImageError::io("rename into", &path)(e.error))?;
        Ok(())
    }

    /// Points `name` at a manifest and returns the image it now names.
    pub fn set_ref(
        &self,
        name: &str,
        entry: &RefEntry,
        parsed: &Parsed,
    ) -> Result<Image, ImageError> {
        let image = parsed.image(self, name, entry.repo_digest.clone())?;
        let mut state = self.state();
        if state.refs.get(name) != Some(entry) {
            let mut refs = state.refs.clone();
            refs.insert(name.to_owned(), entry.clone());
            self.persist(&refs)?;
            state.refs = refs;
        }
        state.images.insert(name.to_owned(), image.clone());
        Ok(image)
    }

    /// Forgets references.
    pub fn remove_refs(&self, names: &[String]) -> Result<(), ImageError> {
        let mut state = self.state();
        let mut refs = state.refs.clone();
        for name in names {
            refs.remove(name);
        }
        self.persist(&refs)?;
        state.refs = refs;
        for name in names {
            state.images.remove(name);
        }
        Ok(())
    }

    pub fn image(&self, name: &str) -> Option<Image> {
        self.state().images.get(name).cloned()
    }

    pub fn images(&self) -> Vec<Image> {
        let state = self.state();
        state
            .refs
            .keys()
            .filter_map(|name| state.images.get(name).cloned())
            .collect()
    }

    pub fn refs(&self) -> BTreeMap<String, RefEntry> {
        self.state().refs.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blobs_are_stored_under_their_digest() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let digest = store.write_blob(b"hello").unwrap();
        assert_eq!(digest, digest_of(b"hello"));
        assert!(store.has_blob(&digest));
        assert_eq!(store.read_blob(&digest).unwrap(), b"hello");
    }

    #[test]
    fn blob_with_wrong_digest_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let wrong = digest_of(b"other");
        let err = store
            .write_blob_from(&b"hello"[..], Some(&wrong))
            .unwrap_err();
        assert!(matches!(err, ImageError::DigestMismatch { .. }));
        assert!(!store.has_blob(&digest_of(b"hello")));
    }

    #[test]
    fn digests_that_are_not_sha256_hex_are_rejected_as_paths() {
        assert!(hex_of("sha256:../../etc/passwd").is_err());
        assert!(hex_of(&format!("sha512:{}", "a".repeat(128))).is_err());
        assert!(hex_of(&format!("sha256:{}", "A".repeat(64))).is_err());
        assert!(hex_of(&format!("sha256:{}", "a".repeat(64))).is_ok());
    }

    #[test]
    fn leftover_temporary_files_are_removed_on_open() {
        let dir = tempfile::tempdir().unwrap();
        drop(Store::open(dir.path()).unwrap());
        fs::create_dir_all(dir.path().join("tmp/layer-x/bin")).unwrap();
        fs::write(dir.path().join("tmp/blob"), b"x").unwrap();
        drop(Store::open(dir.path()).unwrap());
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }
}
