//! Small test images built from Debian's static busybox, as an OCI image layout tarball or a
//! docker-archive, without docker: one layer with `/bin/busybox`, its applet links,
//! `/etc/passwd` (root and nobody) and `/tmp`.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use serde_json::json;
use sha2::{Digest as _, Sha256};

/// Where Debian's busybox-static puts the binary.
pub const BUSYBOX: &str = "/bin/busybox";

/// The applets linked to busybox in the test image's `/bin` (also the image `xtask up`
/// imports, so the everyday ones a user types in `kubectl exec` are there too).
pub const APPLETS: &[&str] = &[
    "sh",
    "echo",
    "cat",
    "sleep",
    "httpd",
    "wget",
    "ls",
    "mkdir",
    "env",
    "id",
    "hostname",
    "ip",
    "ifconfig",
    "nc",
    "true",
    "false",
    "head",
    "tail",
    "printf",
    "kill",
    "date",
    "ping",
    "ps",
    "grep",
    "sed",
    "wc",
    "netstat",
    "nslookup",
    "traceroute",
    "rm",
    "cp",
    "mv",
    "touch",
    "uname",
    "tar",
    "chmod",
];

const PATH_ENV: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
const PASSWD: &str =
    "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n";
const GROUP: &str = "root:x:0:\nnogroup:x:65534:\n";
/// A fixed mtime so the same inputs give the same digests.
const MTIME: u64 = 1_700_000_000;

/// `sha256:<hex>` of `bytes`, as OCI names content.
#[must_use]
pub fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex(&Sha256::digest(bytes)))
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(kind);
    header.set_mode(mode);
    header.set_size(size);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(MTIME);
    header
}

/// The uncompressed root filesystem layer.
///
/// # Errors
/// If `/bin/busybox` cannot be read.
pub fn busybox_layer() -> Result<Vec<u8>> {
    let busybox = std::fs::read(BUSYBOX)
        .with_context(|| format!("reading {BUSYBOX} (Debian package busybox-static)"))?;
    let mut b = tar::Builder::new(Vec::new());
    for (dir, mode) in [
        ("bin/", 0o755),
        ("etc/", 0o755),
        ("root/", 0o700),
        ("tmp/", 0o1777),
    ] {
        b.append_data(
            &mut header(tar::EntryType::Directory, mode, 0),
            dir,
            std::io::empty(),
        )?;
    }
    let size = busybox.len() as u64;
    b.append_data(
        &mut header(tar::EntryType::Regular, 0o755, size),
        "bin/busybox",
        &busybox[..],
    )?;
    for applet in APPLETS {
        let mut link = header(tar::EntryType::Symlink, 0o777, 0);
        b.append_link(&mut link, format!("bin/{applet}"), "busybox")?;
    }
    for (path, text) in [("etc/passwd", PASSWD), ("etc/group", GROUP)] {
        let mut h = header(tar::EntryType::Regular, 0o644, text.len() as u64);
        b.append_data(&mut h, path, text.as_bytes())?;
    }
    Ok(b.into_inner()?)
}

fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// The image config for a layer with `diff_id`: `Cmd ["sh"]`, `Env [PATH=...]`.
fn config(diff_id: &str) -> Result<Vec<u8>> {
    Ok(serde_json::to_vec(&json!({
        "created": "2023-11-14T22:13:20Z",
        "architecture": go_arch(),
        "os": "linux",
        "config": {"Cmd": ["sh"], "Env": [PATH_ENV]},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created": "2023-11-14T22:13:20Z", "created_by": "skiff-tests busybox"}]
    }))?)
}

fn gzip(bytes: &[u8]) -> Result<Vec<u8>> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(bytes)?;
    Ok(gz.finish()?)
}

/// Adds a regular file owned by root, mode 0644, to a tarball being built.
///
/// # Errors
/// If the tarball cannot be written.
pub fn add_file<W: std::io::Write>(b: &mut tar::Builder<W>, path: &str, data: &[u8]) -> Result<()> {
    let mut h = header(tar::EntryType::Regular, 0o644, data.len() as u64);
    b.append_data(&mut h, path, data)?;
    Ok(())
}

fn file_name(name_tag: &str, suffix: &str) -> String {
    let safe: String = name_tag
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{safe}{suffix}")
}

/// Writes an OCI image layout tarball of the busybox image into `dir`, named `name_tag`
/// (e.g. `127.0.0.1:5000/busybox:1`) in the `org.opencontainers.image.ref.name`
/// annotation, and returns its path. The layer is gzip-compressed.
///
/// # Errors
/// If `/bin/busybox` cannot be read or the tarball cannot be written.
pub fn busybox_oci_layout(dir: &Path, name_tag: &str) -> Result<PathBuf> {
    let layer = busybox_layer()?;
    let layer_gz = gzip(&layer)?;
    let config = config(&digest(&layer))?;
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": digest(&config), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": digest(&layer_gz), "size": layer_gz.len()}]
    }))?;
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "digest": digest(&manifest), "size": manifest.len(),
                       "annotations": {"org.opencontainers.image.ref.name": name_tag}}]
    }))?;
    let path = dir.join(file_name(name_tag, ".oci.tar"));
    let file =
        std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
    let mut b = tar::Builder::new(file);
    add_file(&mut b, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    add_file(&mut b, "index.json", &index)?;
    for blob in [&config, &manifest, &layer_gz] {
        let name = format!("blobs/sha256/{}", &digest(blob)["sha256:".len()..]);
        add_file(&mut b, &name, blob)?;
    }
    b.into_inner()?.sync_all()?;
    Ok(path)
}

/// Writes the busybox image as a docker-archive (`docker save` format, uncompressed layer)
/// tagged `name_tag` into `dir` and returns its path.
///
/// # Errors
/// If `/bin/busybox` cannot be read or the tarball cannot be written.
pub fn busybox_docker_archive(dir: &Path, name_tag: &str) -> Result<PathBuf> {
    let layer = busybox_layer()?;
    let layer_hex = digest(&layer)["sha256:".len()..].to_owned();
    let config = config(&digest(&layer))?;
    let config_name = format!("{}.json", &digest(&config)["sha256:".len()..]);
    let layer_name = format!("{layer_hex}/layer.tar");
    let manifest = serde_json::to_vec(&json!([{
        "Config": config_name, "RepoTags": [name_tag], "Layers": [layer_name]
    }]))?;
    let path = dir.join(file_name(name_tag, ".docker.tar"));
    let file =
        std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
    let mut b = tar::Builder::new(file);
    add_file(&mut b, "manifest.json", &manifest)?;
    add_file(&mut b, &config_name, &config)?;
    add_file(&mut b, &layer_name, &layer)?;
    b.into_inner()?.sync_all()?;
    Ok(path)
}
