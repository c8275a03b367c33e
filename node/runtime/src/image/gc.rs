//! Image garbage collection: forget images no container uses, then remove the blobs and
//! unpacked layers no remaining image needs.

use std::{collections::HashSet, fs, path::Path};

use super::{ImageError, manifest::Parsed, store::Store};

pub(super) fn gc(store: &Store, in_use: &HashSet<String>) -> Result<Vec<String>, ImageError> {
    // Held throughout, so no pull or import writes blobs this sweep would see as unused.
    let in_flight = store.quiesce();
    let mut removed_ids = Vec::new();
    let mut removed_refs = Vec::new();
    for image in store.images() {
        if !in_use.contains(&image.id) {
            removed_refs.push(image.reference.clone());
            if !removed_ids.contains(&image.id) {
                removed_ids.push(image.id.clone());
            }
        }
    }
    // An id still named by a kept reference is not removed.
    let kept_ids: HashSet<String> = store
        .images()
        .into_iter()
        .filter(|i| !removed_refs.contains(&i.reference))
        .map(|i| i.id)
        .collect();
    removed_ids.retain(|id| !kept_ids.contains(id));
    if !removed_refs.is_empty() {
        store.remove_refs(&removed_refs)?;
    }
    sweep_unreferenced(store, *in_flight)?;
    Ok(removed_ids)
}

/// Forgets `reference` (one name; its id stays while another name points at it), then
/// removes what no image needs any more.
pub(super) fn remove(store: &Store, reference: &str) -> Result<(), ImageError> {
    let in_flight = store.quiesce();
    store.remove_refs(&[reference.to_owned()])?;
    sweep_unreferenced(store, *in_flight)
}

/// Removes the blobs and unpacked layers no recorded image needs, unless pulls or imports
/// are in flight (their blobs are not recorded yet).
fn sweep_unreferenced(store: &Store, in_flight: u32) -> Result<(), ImageError> {
    if in_flight > 0 {
        tracing::info!(
            in_flight,
            "pulls in flight; leaving blobs and layers for the next collection"
        );
        return Ok(());
    }

    let mut blobs = HashSet::new();
    let mut layers = HashSet::new();
    for (name, entry) in store.refs() {
        let parsed = match Parsed::read(store, &entry.manifest) {
            Ok(parsed) => parsed,
            Err(error) => {
                // Keeping everything is safer than guessing what an unreadable image needs.
                tracing::warn!(reference = %name, %error, "unreadable image; skipping the sweep");
                return Ok(());
            }
        };
        blobs.extend(parsed.blobs(&entry.manifest).map(str::to_owned));
        for diff_id in &parsed.diff_ids {
            layers.insert(diff_id.clone());
        }
    }
    sweep(&store.blobs_dir(), &blobs, false)?;
    sweep(&store.layers_dir(), &layers, true)?;
    tracing::debug!("image sweep done");
    Ok(())
}

/// Removes every entry of `dir` whose `sha256:<name>` is not in `keep`.
fn sweep(dir: &Path, keep: &HashSet<String>, dirs: bool) -> Result<(), ImageError> {
    for entry in fs::read_dir(dir).map_err(ImageError::io("read", dir))? {
        let path = entry.map_err(ImageError::io("read", dir))?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if keep.contains(&format!("sha256:{name}")) {
            continue;
        }
        let result = if dirs && path.is_dir() {
            fs::remove_dir_all(&path)
        } else {
            fs::remove_file(&path)
        };
        result.map_err(ImageError::io("remove", &path))?;
        tracing::debug!(path = %path.display(), "removed unused image data");
    }
    Ok(())
}
