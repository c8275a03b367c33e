//! Imports image tarballs: an OCI image layout (`index.json`, names in the
//! `org.opencontainers.image.ref.name` annotation) or a docker-archive (`manifest.json` with
//! `RepoTags`), either possibly gzip-compressed. Files stream straight into the blob store.

use std::{
    collections::HashMap,
    fs::File,
    io::{BufRead, BufReader, Read},
    path::{Component, Path, PathBuf},
};

use flate2::read::GzDecoder;
use serde::Deserialize;

use super::{
    Image, ImageError, ImageStore,
    manifest::{self, Descriptor, Index, Manifest, from_json},
    reference::normalize,
    store::Store,
};

/// Small JSON documents an archive's structure is read from are kept in memory.
const MAX_JSON: u64 = 16 << 20;

/// What the outer tarball held.
#[derive(Default)]
struct Archive {
    /// Regular files streamed into the blob store: path -> (digest, size).
    files: HashMap<PathBuf, (String, u64)>,
    /// JSON documents and `oci-layout`: path -> contents.
    documents: HashMap<PathBuf, Vec<u8>>,
    /// Symbolic and hard links: path -> target path in the archive.
    links: HashMap<PathBuf, PathBuf>,
}

impl Archive {
    /// The stored blob of the file at `path`, following links.
    fn file(&self, path: &Path) -> Result<&(String, u64), ImageError> {
        let mut path = clean(path);
        for _ in 0..16 {
            if let Some(found) = self.files.get(&path) {
                return Ok(found);
            }
            match self.links.get(&path) {
                Some(target) => path = target.clone(),
                None => break,
            }
        }
        Err(ImageError::Malformed(format!(
            "archive lacks {}",
            path.display()
        )))
    }

    fn document(&self, path: &Path) -> Option<&[u8]> {
        self.documents.get(&clean(path)).map(Vec::as_slice)
    }
}

/// `path` without `.`, leading `/` or `..` components.
fn clean(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::ParentDir => {
                out.pop();
            }
            _ => {}
        }
    }
    out
}

fn read_archive(store: &Store, tarball: &Path) -> Result<Archive, ImageError> {
    let file = File::open(tarball).map_err(ImageError::io("open", tarball))?;
    let mut reader = BufReader::new(file);
    let gzip = reader
        .fill_buf()
        .map_err(ImageError::io("read", tarball))?
        .starts_with(&[0x1f, 0x8b]);
    let reader: Box<dyn Read> = if gzip {
        Box::new(GzDecoder::new(reader))
    } else {
        Box::new(reader)
    };
    let mut tar = tar::Archive::new(reader);
    let mut archive = Archive::default();
    for entry in tar.entries().map_err(ImageError::io("read", tarball))? {
        let mut entry = entry.map_err(ImageError::io("read", tarball))?;
        let path = clean(&entry.path().map_err(ImageError::io("read", tarball))?);
        let kind = entry.header().entry_type();
        if kind.is_symlink() || kind.is_hard_link() {
            let Some(target) = entry.link_name().map_err(ImageError::io("read", tarball))? else {
                continue;
            };
            let target = if kind.is_symlink() && !target.is_absolute() {
                path.parent().unwrap_or(Path::new("")).join(target)
            } else {
                target.into_owned()
            };
            archive.links.insert(path, clean(&target));
        } else if kind.is_file() {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            let size = entry.size();
            let json = Path::new(name)
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("json"));
            if (json || name == "oci-layout") && size <= MAX_JSON {
                let mut bytes = Vec::new();
                entry
                    .read_to_end(&mut bytes)
                    .map_err(ImageError::io("read", tarball))?;
                archive.documents.insert(path.clone(), bytes.clone());
                // A docker-archive's config is a JSON file and a blob at once.
                let digest = store.write_blob(&bytes)?;
                archive.files.insert(path, (digest, size));
            } else {
                let found = store.write_blob_from(&mut entry, None)?;
                archive.files.insert(path, found);
            }
        }
    }
    Ok(archive)
}

pub(super) fn import(images: &ImageStore, tarball: &Path) -> Result<Vec<Image>, ImageError> {
    let store = &images.inner.store;
    let _busy = store.begin();
    let archive = read_archive(store, tarball)?;
    let found = if archive.document(Path::new("manifest.json")).is_some() {
        docker_archive(images, &archive)?
    } else if archive.document(Path::new("index.json")).is_some() {
        oci_layout(images, &archive)?
    } else {
        return Err(ImageError::Malformed(format!(
            "{} has neither index.json (OCI layout) nor manifest.json (docker-archive)",
            tarball.display()
        )));
    };
    tracing::info!(tarball = %tarball.display(), images = found.len(), "imported images");
    Ok(found)
}

/// Checks that the blob at `blobs/sha256/<hex>` in the archive really hashes to its name.
fn oci_blob<'a>(archive: &'a Archive, digest: &str) -> Result<&'a (String, u64), ImageError> {
    let hex = super::store::hex_of(digest)?;
    let found = archive.file(&Path::new("blobs/sha256").join(hex))?;
    if found.0 != digest {
        return Err(ImageError::DigestMismatch {
            expected: digest.to_owned(),
            actual: found.0.clone(),
        });
    }
    Ok(found)
}

/// The names an index entry carries, normalized; a bare tag (`latest`) names nothing.
fn names_of(annotations: &std::collections::BTreeMap<String, String>) -> Vec<String> {
    let name = annotations
        .get("io.containerd.image.name")
        .or_else(|| annotations.get("org.opencontainers.image.ref.name"));
    match name {
        Some(name) if name.contains('/') || name.contains(':') => match normalize(name) {
            Ok(normalized) => vec![normalized],
            Err(error) => {
                tracing::warn!(name, %error, "ignoring an unusable image name");
                Vec::new()
            }
        },
        _ => Vec::new(),
    }
}

fn oci_layout(images: &ImageStore, archive: &Archive) -> Result<Vec<Image>, ImageError> {
    let index: Index = from_json(
        archive
            .document(Path::new("index.json"))
            .unwrap_or_default(),
        "index.json",
    )?;
    let mut out = Vec::new();
    for entry in &index.manifests {
        oci_blob(archive, &entry.digest)?;
        let names = names_of(&entry.annotations);
        let digest = if manifest::is_index(&entry.media_type) {
            // A nested index (multi-platform image): take this machine's platform.
            let nested: Index = from_json(
                &images.inner.store.read_blob(&entry.digest)?,
                &format!("index {}", entry.digest),
            )?;
            let Some(chosen) = manifest::pick_platform(&nested) else {
                tracing::warn!(index = %entry.digest, "no manifest for this platform; skipped");
                continue;
            };
            chosen.digest.clone()
        } else {
            entry.digest.clone()
        };
        oci_blob(archive, &digest)?;
        let parsed: Manifest = from_json(
            &images.inner.store.read_blob(&digest)?,
            &format!("manifest {digest}"),
        )?;
        oci_blob(archive, &parsed.config.digest)?;
        for layer in &parsed.layers {
            oci_blob(archive, &layer.digest)?;
        }
        out.push(images.install(&digest, &names, None)?);
    }
    Ok(out)
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

fn layer_media_type(store: &Store, digest: &str) -> Result<&'static str, ImageError> {
    let path = store.blob_path(digest)?;
    let mut magic = [0u8; 2];
    let mut file = File::open(&path).map_err(ImageError::io("open", &path))?;
    let n = file
        .read(&mut magic)
        .map_err(ImageError::io("read", &path))?;
    Ok(if n == 2 && magic == [0x1f, 0x8b] {
        manifest::DOCKER_LAYER_GZIP
    } else {
        manifest::DOCKER_LAYER_TAR
    })
}

fn docker_archive(images: &ImageStore, archive: &Archive) -> Result<Vec<Image>, ImageError> {
    let store = &images.inner.store;
    let entries: Vec<DockerEntry> = from_json(
        archive
            .document(Path::new("manifest.json"))
            .unwrap_or_default(),
        "manifest.json",
    )?;
    let mut out = Vec::new();
    for entry in entries {
        let (config_digest, config_size) = archive.file(Path::new(&entry.config))?.clone();
        let layers = entry
            .layers
            .iter()
            .map(|layer| -> Result<Descriptor, ImageError> {
                let (digest, size) = archive.file(Path::new(layer))?.clone();
                Ok(Descriptor {
                    media_type: layer_media_type(store, &digest)?.to_owned(),
                    digest,
                    size,
                    annotations: None,
                })
            })
            .collect::<Result<Vec<_>, ImageError>>()?;
        // docker-archive has no manifest; the store keeps images by manifest, so make one.
        let synthesized = Manifest {
            schema_version: 2,
            media_type: Some(manifest::DOCKER_MANIFEST.to_owned()),
            config: Descriptor {
                media_type: manifest::DOCKER_CONFIG.to_owned(),
                digest: config_digest,
                size: config_size,
                annotations: None,
            },
            layers,
        };
        let bytes = serde_json::to_vec(&synthesized).map_err(|source| ImageError::Json {
            what: "synthesized manifest".into(),
            source,
        })?;
        let manifest_digest = store.write_blob(&bytes)?;
        let mut names = Vec::new();
        for tag in entry.repo_tags.unwrap_or_default() {
            match normalize(&tag) {
                Ok(name) => names.push(name),
                Err(error) => tracing::warn!(tag, %error, "ignoring an unusable image name"),
            }
        }
        out.push(images.install(&manifest_digest, &names, None)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::{io::Write as _, sync::Arc};

    use serde_json::json;

    use super::{
        super::{
            OverlayMounter,
            store::digest_of,
            unpack::tests::{RecordingWhiteouts, tar_of},
        },
        *,
    };

    fn store(dir: &Path) -> ImageStore {
        ImageStore::open_with(
            &dir.join("images"),
            Vec::new(),
            Arc::new(OverlayMounter),
            Arc::new(RecordingWhiteouts::default()),
        )
        .unwrap()
    }

    fn add(builder: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8]) {
        let mut header = tar::Header::new_gnu();
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        builder.append_data(&mut header, path, data).unwrap();
    }

    fn config_json(diff_ids: &[String]) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "architecture": "amd64", "os": "linux",
            "config": {"Entrypoint": ["/bin/app"], "Cmd": ["serve"], "Env": ["PATH=/bin"],
                       "WorkingDir": "/srv", "User": ""},
            "rootfs": {"type": "layers", "diff_ids": diff_ids}
        }))
        .unwrap()
    }

    /// An OCI layout tarball with one gzip layer holding `bin/app`.
    fn oci_tar(name: &str) -> (Vec<u8>, String) {
        let layer = tar_of(&[("bin/", None), ("bin/app", Some(b"#!app"))]);
        let diff_id = digest_of(&layer);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&layer).unwrap();
        let layer_gz = gz.finish().unwrap();
        let config = config_json(std::slice::from_ref(&diff_id));
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": manifest::OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": digest_of(&config), "size": config.len()},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                        "digest": digest_of(&layer_gz), "size": layer_gz.len()}]
        }))
        .unwrap();
        let index = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "manifests": [{"mediaType": manifest::OCI_MANIFEST, "digest": digest_of(&manifest),
                           "size": manifest.len(),
                           "annotations": {"org.opencontainers.image.ref.name": name}}]
        }))
        .unwrap();
        let mut builder = tar::Builder::new(Vec::new());
        add(
            &mut builder,
            "oci-layout",
            br#"{"imageLayoutVersion":"1.0.0"}"#,
        );
        add(&mut builder, "index.json", &index);
        for blob in [&config, &manifest, &layer_gz] {
            let hex = digest_of(blob).trim_start_matches("sha256:").to_owned();
            add(&mut builder, &format!("blobs/sha256/{hex}"), blob);
        }
        (builder.into_inner().unwrap(), digest_of(&config))
    }

    #[test]
    fn oci_layout_tarball_imports_under_its_annotated_name() {
        let dir = tempfile::tempdir().unwrap();
        let (tar, config_digest) = oci_tar("example.com/team/app:1");
        let path = dir.path().join("app.tar");
        std::fs::write(&path, tar).unwrap();
        let images = store(dir.path());
        let imported = images.import(&path).unwrap();
        assert_eq!(imported.len(), 1);
        let image = images.lookup("example.com/team/app:1").unwrap();
        assert_eq!(image, imported[0]);
        assert_eq!(image.id, config_digest);
        assert_eq!(image.config.entrypoint, ["/bin/app"]);
        assert_eq!(image.config.cmd, ["serve"]);
        assert_eq!(image.config.working_dir.as_deref(), Some("/srv"));
        assert_eq!(image.config.user, None);
        assert_eq!(
            std::fs::read(image.layers[0].join("bin/app")).unwrap(),
            b"#!app"
        );
        assert_eq!(images.lookup(&config_digest), Some(image.clone()));
        // A second store on the same directory sees the image (refs.json persisted).
        drop(images);
        assert_eq!(
            store(dir.path()).lookup("example.com/team/app:1"),
            Some(image)
        );
    }

    #[test]
    fn gzip_compressed_oci_tarball_imports() {
        let dir = tempfile::tempdir().unwrap();
        let (tar, _) = oci_tar("app:2");
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar).unwrap();
        let path = dir.path().join("app.tar.gz");
        std::fs::write(&path, gz.finish().unwrap()).unwrap();
        let images = store(dir.path());
        images.import(&path).unwrap();
        assert!(images.lookup("docker.io/library/app:2").is_some());
        assert!(images.lookup("app:2").is_some());
    }

    #[test]
    fn oci_blob_not_matching_its_name_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (tar, _) = oci_tar("app:3");
        // Rewrite the tarball with the config blob's content altered.
        let mut input = tar::Archive::new(&tar[..]);
        let mut builder = tar::Builder::new(Vec::new());
        for entry in input.entries().unwrap() {
            let mut entry = entry.unwrap();
            let path = entry.path().unwrap().display().to_string();
            let mut data = Vec::new();
            entry.read_to_end(&mut data).unwrap();
            if data.starts_with(b"{\"architecture\"") {
                data = String::from_utf8(data)
                    .unwrap()
                    .replace("serve", "evil!")
                    .into_bytes();
            }
            add(&mut builder, &path, &data);
        }
        let path = dir.path().join("bad.tar");
        std::fs::write(&path, builder.into_inner().unwrap()).unwrap();
        let err = store(dir.path()).import(&path).unwrap_err();
        assert!(matches!(err, ImageError::DigestMismatch { .. }), "{err}");
    }

    #[test]
    fn docker_archive_imports_every_repo_tag() {
        let dir = tempfile::tempdir().unwrap();
        let layer = tar_of(&[("etc/", None), ("etc/motd", Some(b"hi"))]);
        // The second layer entry is a symlink to the first, as `docker save` writes
        // repeated layers; a config with two equal diff ids matches it.
        let config = config_json(&[digest_of(&layer), digest_of(&layer)]);
        let config_hex = digest_of(&config)[7..].to_owned();
        let manifest = serde_json::to_vec(&json!([{
            "Config": format!("{config_hex}.json"),
            "RepoTags": ["busybox:1", "127.0.0.1:5000/tools/busybox:1"],
            "Layers": ["abc/layer.tar", "def/layer.tar"]
        }]))
        .unwrap();
        let mut builder = tar::Builder::new(Vec::new());
        add(&mut builder, "manifest.json", &manifest);
        add(&mut builder, &format!("{config_hex}.json"), &config);
        add(&mut builder, "abc/layer.tar", &layer);
        let mut link = tar::Header::new_gnu();
        link.set_entry_type(tar::EntryType::Symlink);
        link.set_size(0);
        builder
            .append_link(&mut link, "def/layer.tar", "../abc/layer.tar")
            .unwrap();
        let path = dir.path().join("docker.tar");
        std::fs::write(&path, builder.into_inner().unwrap()).unwrap();

        let images = store(dir.path());
        let imported = images.import(&path).unwrap();
        assert_eq!(imported.len(), 1);
        let hub = images.lookup("busybox:1").unwrap();
        let local = images.lookup("127.0.0.1:5000/tools/busybox:1").unwrap();
        assert_eq!(hub.reference, "docker.io/library/busybox:1");
        assert_eq!(hub.id, local.id);
        assert_eq!(hub.id, digest_of(&config));
        assert_eq!(hub.repo_digest, None);
        assert_eq!(hub.layers.len(), 2);
        assert_eq!(
            std::fs::read(hub.layers[1].join("etc/motd")).unwrap(),
            b"hi"
        );
        assert_eq!(images.list().len(), 2);
    }

    #[test]
    fn tarball_of_neither_format_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.tar");
        std::fs::write(&path, tar_of(&[("hello", Some(b"x"))])).unwrap();
        let err = store(dir.path()).import(&path).unwrap_err();
        assert!(matches!(err, ImageError::Malformed(_)), "{err}");
    }

    #[test]
    fn gc_removes_unused_images_and_their_data() {
        let dir = tempfile::tempdir().unwrap();
        let images = store(dir.path());
        let (tar, keep_id) = oci_tar("keep:1");
        let path = dir.path().join("keep.tar");
        std::fs::write(&path, tar).unwrap();
        images.import(&path).unwrap();
        // A second image with different content.
        let layer = tar_of(&[("other", Some(b"x"))]);
        let config = config_json(&[digest_of(&layer)]);
        let config_hex = digest_of(&config)[7..].to_owned();
        let manifest = serde_json::to_vec(&json!([{
            "Config": format!("{config_hex}.json"), "RepoTags": ["drop:1"],
            "Layers": ["l/layer.tar"]
        }]))
        .unwrap();
        let mut builder = tar::Builder::new(Vec::new());
        add(&mut builder, "manifest.json", &manifest);
        add(&mut builder, &format!("{config_hex}.json"), &config);
        add(&mut builder, "l/layer.tar", &layer);
        let path = dir.path().join("drop.tar");
        std::fs::write(&path, builder.into_inner().unwrap()).unwrap();
        let dropped = images.import(&path).unwrap().remove(0);

        let removed = images.gc(&[keep_id.clone()].into()).unwrap();
        assert_eq!(removed, std::slice::from_ref(&dropped.id));
        assert!(images.lookup("drop:1").is_none());
        assert!(!dropped.layers[0].exists());
        let kept = images.lookup("keep:1").unwrap();
        assert!(kept.layers[0].join("bin/app").exists());
        // Only the kept image's manifest, config and layer blobs remain.
        let blobs = std::fs::read_dir(dir.path().join("images/blobs/sha256"))
            .unwrap()
            .count();
        assert_eq!(blobs, 3);
    }
}
