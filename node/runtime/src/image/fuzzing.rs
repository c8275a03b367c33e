//! What a registry or an image tarball hands the node, reachable from the fuzz targets in
//! `fuzz/` (feature `fuzzing`): index, manifest and config documents, and layer tars.

use std::{io, path::Path, sync::OnceLock};

use super::{
    ImageError,
    manifest::{self, Index, Parsed},
    store::{self, Store},
    unpack::{self, Whiteouts},
};

/// The image an index, a manifest and its config describe, read as a pull reads them:
/// the index's entry for this platform, then the manifest and config blobs from the store.
///
/// # Errors
/// Whatever the node refuses in them.
pub fn image_from_documents(
    index: &[u8],
    manifest: &[u8],
    config: &[u8],
) -> Result<super::Image, ImageError> {
    if let Ok(index) = manifest::from_json::<Index>(index, "index") {
        let _ = manifest::pick_platform(&index).map(|e| manifest::is_index(&e.media_type));
    }
    let store = scratch_store()?;
    let manifest_digest = store::digest_of(manifest);
    std::fs::write(store.blob_path(&manifest_digest)?, manifest)
        .map_err(ImageError::io("write", store.root()))?;
    // The config goes under whatever digest the manifest names, so the fuzzer need not
    // find a hash; the store does not check blobs on read.
    let named = serde_json::from_slice::<serde_json::Value>(manifest)
        .ok()
        .and_then(|m| m["config"]["digest"].as_str().map(str::to_owned));
    if let Some(digest) = named
        && let Ok(path) = store.blob_path(&digest)
    {
        std::fs::write(&path, config).map_err(ImageError::io("write", &path))?;
    }
    Parsed::read(store, &manifest_digest)?.image(store, "fuzz/image:latest", None)
}

fn scratch_store() -> Result<&'static Store, ImageError> {
    static STORE: OnceLock<Result<(tempfile::TempDir, Store), String>> = OnceLock::new();
    STORE
        .get_or_init(|| {
            let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
            let store = Store::open(dir.path()).map_err(|e| e.to_string())?;
            Ok((dir, store))
        })
        .as_ref()
        .map(|(_, store)| store)
        .map_err(|e| ImageError::Malformed(e.clone()))
}

/// Unpacks a layer tar into `dir` as a pull does, with `whiteouts` marking deletions.
///
/// # Errors
/// When the tar is malformed or an entry cannot be written.
pub fn unpack_layer(tar: &[u8], dir: &Path, whiteouts: &dyn Whiteouts) -> io::Result<()> {
    unpack::unpack_into(&mut &tar[..], dir, whiteouts)
}
