//! Unpacks a layer (plain or gzip tar) once into `layers/<diff-id>`, turning AUFS-style
//! whiteouts into overlayfs ones, and checks the unpacked stream against the diff id.

use std::{
    fmt,
    fs::{self, File},
    io::{self, BufRead, BufReader, Read},
    path::{Component, Path, PathBuf},
};

use flate2::read::GzDecoder;

use super::{ImageError, store::HashingReader};

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_MARKER: &str = ".wh..wh..opq";

/// Writes overlayfs whiteouts; the real ones need `CAP_MKNOD` and `CAP_SYS_ADMIN`.
pub trait Whiteouts: Send + Sync + fmt::Debug {
    /// Marks `path` as deleted from the layers below.
    ///
    /// # Errors
    /// If the marker cannot be made.
    fn whiteout(&self, path: &Path) -> io::Result<()>;

    /// Marks directory `dir` as hiding the contents of the same directory below.
    ///
    /// # Errors
    /// If the marker cannot be set.
    fn opaque(&self, dir: &Path) -> io::Result<()>;
}

/// The kernel's overlayfs whiteouts: a 0:0 character device, and the
/// `trusted.overlay.opaque=y` extended attribute.
#[derive(Clone, Copy, Debug, Default)]
pub struct OverlayWhiteouts;

impl Whiteouts for OverlayWhiteouts {
    fn whiteout(&self, path: &Path) -> io::Result<()> {
        use nix::sys::stat::{Mode, SFlag, makedev, mknod};
        mknod(path, SFlag::S_IFCHR, Mode::empty(), makedev(0, 0)).map_err(io::Error::from)
    }

    fn opaque(&self, dir: &Path) -> io::Result<()> {
        use std::{ffi::CString, os::unix::ffi::OsStrExt};
        let path = CString::new(dir.as_os_str().as_bytes())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let name = c"trusted.overlay.opaque";
        let value = b"y";
        // SAFETY: `path` and `name` are NUL-terminated and outlive the call; `value` is a
        // valid buffer of the length passed.
        let rc = unsafe {
            libc::lsetxattr(
                path.as_ptr(),
                name.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                0,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
}

/// What a layer entry means to the unpacker.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Kind {
    /// A file, directory or link to unpack as is.
    Plain,
    /// `dir/.wh..wh..opq`: `dir` hides what is below it.
    Opaque(PathBuf),
    /// `dir/.wh.name`: `dir/name` is deleted.
    Whiteout(PathBuf),
    /// A path that would leave the layer (`..`); skipped.
    Unsafe,
}

/// Classifies an entry by its path in the layer.
pub(super) fn classify(path: &Path) -> Kind {
    let mut clean = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => clean.push(part),
            Component::CurDir | Component::RootDir | Component::Prefix(_) => {}
            Component::ParentDir => return Kind::Unsafe,
        }
    }
    let Some(name) = clean.file_name().and_then(|n| n.to_str()) else {
        return Kind::Plain;
    };
    if name == OPAQUE_MARKER {
        return Kind::Opaque(clean.parent().map(Path::to_owned).unwrap_or_default());
    }
    if let Some(hidden) = name.strip_prefix(WHITEOUT_PREFIX) {
        if hidden.is_empty() || hidden == "." || hidden == ".." {
            return Kind::Unsafe;
        }
        return Kind::Whiteout(clean.with_file_name(hidden));
    }
    Kind::Plain
}

/// `root.join(rel)` with its parent directories made one at a time, each checked to lie
/// inside `root` before anything is made below it, so a symlink unpacked earlier can carry
/// neither a whiteout nor a directory outside the layer. `rel` holds only normal components
/// (see [`classify`]).
fn inside(root: &Path, rel: &Path) -> io::Result<PathBuf> {
    let real_root = root.canonicalize()?;
    let leaves = || {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} leaves the layer", rel.display()),
        )
    };
    let mut dir = root.to_owned();
    for part in rel.parent().unwrap_or(Path::new("")).components() {
        dir.push(part);
        match fs::symlink_metadata(&dir) {
            Ok(meta) if meta.file_type().is_symlink() => {
                dir = dir.canonicalize()?;
                if !dir.starts_with(&real_root) {
                    return Err(leaves());
                }
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => fs::create_dir(&dir)?,
            Err(e) => return Err(e),
        }
    }
    Ok(dir.join(rel.file_name().ok_or_else(leaves)?))
}

/// Opens a layer blob, decompressing it if it is gzip.
pub(super) fn open_layer(blob: &Path) -> Result<Box<dyn Read>, ImageError> {
    let file = File::open(blob).map_err(ImageError::io("open", blob))?;
    let mut reader = BufReader::new(file);
    let magic = reader.fill_buf().map_err(ImageError::io("read", blob))?;
    if magic.starts_with(&[0x1f, 0x8b]) {
        Ok(Box::new(GzDecoder::new(reader)))
    } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Err(ImageError::Malformed(format!(
            "layer {} is zstd-compressed, which this node does not unpack",
            blob.display()
        )))
    } else {
        Ok(Box::new(reader))
    }
}

/// Unpacks the layer in `blob` into `dest` (which must not exist yet) via a temporary
/// directory under `tmp_root`, refusing it if the uncompressed tar does not hash to
/// `diff_id`. Another unpack of the same layer finishing first is fine.
pub(super) fn unpack_layer(
    blob: &Path,
    diff_id: &str,
    dest: &Path,
    tmp_root: &Path,
    whiteouts: &dyn Whiteouts,
) -> Result<(), ImageError> {
    let tmp = tempfile::Builder::new()
        .prefix("layer-")
        .tempdir_in(tmp_root)
        .map_err(ImageError::io("create temporary directory in", tmp_root))?;
    let mut hashing = HashingReader::new(open_layer(blob)?);
    unpack_into(&mut hashing, tmp.path(), whiteouts)
        .map_err(ImageError::io("unpack layer", blob))?;
    let (actual, _) = hashing
        .finish()
        .map_err(ImageError::io("read layer", blob))?;
    if actual != diff_id {
        return Err(ImageError::DigestMismatch {
            expected: diff_id.to_owned(),
            actual,
        });
    }
    match fs::rename(tmp.path(), dest) {
        Ok(()) => {
            tracing::debug!(diff_id, dest = %dest.display(), "unpacked layer");
            Ok(())
        }
        // Someone else unpacked the same layer meanwhile; theirs is as good as ours.
        Err(_) if dest.is_dir() => Ok(()),
        Err(e) => Err(ImageError::io("rename into", dest)(e)),
    }
}

/// Unpacks a tar stream into `dir`, converting whiteouts.
pub(super) fn unpack_into(
    reader: &mut dyn Read,
    dir: &Path,
    whiteouts: &dyn Whiteouts,
) -> io::Result<()> {
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(true);
    archive.set_preserve_mtime(true);
    archive.set_unpack_xattrs(true);
    archive.set_overwrite(true);
    // Unprivileged (unit tests) cannot chown to the layer's owners; the node runs as root.
    archive.set_preserve_ownerships(nix::unistd::geteuid().is_root());
    let mut opaque = Vec::new();
    for entry in archive.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.into_owned();
        match classify(&path) {
            Kind::Plain => {
                if !entry.unpack_in(dir)? {
                    tracing::warn!(path = %path.display(), "skipping layer entry outside the layer");
                }
            }
            Kind::Opaque(rel) => {
                let target = inside(dir, &rel.join("x"))?;
                let parent = target.parent().unwrap_or(dir).to_owned();
                opaque.push(parent);
            }
            Kind::Whiteout(rel) => {
                let target = inside(dir, &rel)?;
                match fs::symlink_metadata(&target) {
                    Ok(meta) if meta.is_dir() => fs::remove_dir_all(&target)?,
                    Ok(_) => fs::remove_file(&target)?,
                    Err(_) => {}
                }
                whiteouts.whiteout(&target)?;
            }
            Kind::Unsafe => {
                tracing::warn!(path = %path.display(), "skipping layer entry outside the layer");
            }
        }
    }
    // Marked last: a directory's own entry, unpacked after its marker, would not clear it,
    // but the order within a layer is not fixed.
    for dir in opaque {
        whiteouts.opaque(&dir)?;
    }
    Ok(())
}

#[cfg(test)]
pub(super) mod tests {
    use std::sync::Mutex;

    use super::*;

    /// Records whiteouts as plain marker files so unpacking is testable without root.
    #[derive(Debug, Default)]
    pub struct RecordingWhiteouts {
        pub opaque: Mutex<Vec<PathBuf>>,
    }

    impl Whiteouts for RecordingWhiteouts {
        fn whiteout(&self, path: &Path) -> io::Result<()> {
            fs::write(path, b"whiteout")
        }

        fn opaque(&self, dir: &Path) -> io::Result<()> {
            self.opaque.lock().unwrap().push(dir.to_owned());
            Ok(())
        }
    }

    /// A tar of `(path, Some(contents) | None for a directory)`.
    pub fn tar_of(entries: &[(&str, Option<&[u8]>)]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (path, contents) in entries {
            let mut header = tar::Header::new_gnu();
            header.set_uid(0);
            header.set_gid(0);
            header.set_mtime(0);
            if let Some(data) = contents {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_size(data.len() as u64);
                header.set_mode(0o644);
                builder.append_data(&mut header, path, *data).unwrap();
            } else {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_size(0);
                header.set_mode(0o755);
                builder.append_data(&mut header, path, io::empty()).unwrap();
            }
        }
        builder.into_inner().unwrap()
    }

    #[test]
    fn whiteout_names_are_classified() {
        assert_eq!(classify(Path::new("etc/passwd")), Kind::Plain);
        assert_eq!(
            classify(Path::new("./etc/.wh.passwd")),
            Kind::Whiteout(PathBuf::from("etc/passwd"))
        );
        assert_eq!(
            classify(Path::new("var/cache/.wh..wh..opq")),
            Kind::Opaque(PathBuf::from("var/cache"))
        );
        assert_eq!(
            classify(Path::new(".wh..wh..opq")),
            Kind::Opaque(PathBuf::new())
        );
        assert_eq!(classify(Path::new("../etc/passwd")), Kind::Unsafe);
        assert_eq!(classify(Path::new("a/.wh...")), Kind::Unsafe);
    }

    #[test]
    fn unpack_converts_whiteouts_and_keeps_plain_files() {
        let dir = tempfile::tempdir().unwrap();
        let tar = tar_of(&[
            ("etc/", None),
            ("etc/hostname", Some(b"box\n")),
            ("etc/.wh.passwd", Some(b"")),
            ("var/cache/.wh..wh..opq", Some(b"")),
        ]);
        let whiteouts = RecordingWhiteouts::default();
        unpack_into(&mut &tar[..], dir.path(), &whiteouts).unwrap();
        assert_eq!(fs::read(dir.path().join("etc/hostname")).unwrap(), b"box\n");
        assert_eq!(
            fs::read(dir.path().join("etc/passwd")).unwrap(),
            b"whiteout"
        );
        assert!(!dir.path().join("etc/.wh.passwd").exists());
        assert!(!dir.path().join("var/cache/.wh..wh..opq").exists());
        assert_eq!(
            *whiteouts.opaque.lock().unwrap(),
            vec![dir.path().join("var/cache")]
        );
    }

    #[test]
    fn whiteouts_through_a_symlink_out_of_the_layer_are_refused_and_create_nothing_outside() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let layer = dir.path().join("layer");
        fs::create_dir(&layer).unwrap();
        std::os::unix::fs::symlink(outside.path(), layer.join("escape")).unwrap();
        for path in [
            "escape/.wh.victim",
            "escape/made/.wh.victim",
            "escape/made/.wh..wh..opq",
        ] {
            let tar = tar_of(&[(path, Some(b""))]);
            let err = unpack_into(&mut &tar[..], &layer, &RecordingWhiteouts::default());
            assert!(err.is_err(), "{path}");
            assert!(!outside.path().join("victim").exists(), "{path}");
            assert!(!outside.path().join("made").exists(), "{path}");
        }
    }

    #[test]
    fn layer_not_matching_its_diff_id_is_not_installed() {
        let dir = tempfile::tempdir().unwrap();
        let blob = dir.path().join("blob");
        fs::write(&blob, tar_of(&[("a", Some(b"1"))])).unwrap();
        let dest = dir.path().join("layer");
        let wrong = format!("sha256:{}", "0".repeat(64));
        let err = unpack_layer(
            &blob,
            &wrong,
            &dest,
            dir.path(),
            &RecordingWhiteouts::default(),
        )
        .unwrap_err();
        assert!(matches!(err, ImageError::DigestMismatch { .. }));
        assert!(!dest.exists());
    }

    #[test]
    fn gzip_layer_is_unpacked_and_checked_against_the_uncompressed_digest() {
        use std::io::Write as _;
        let dir = tempfile::tempdir().unwrap();
        let tar = tar_of(&[("bin/", None), ("bin/hello", Some(b"hi"))]);
        let diff_id = super::super::store::digest_of(&tar);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar).unwrap();
        let blob = dir.path().join("blob");
        fs::write(&blob, gz.finish().unwrap()).unwrap();
        let dest = dir.path().join("layer");
        unpack_layer(
            &blob,
            &diff_id,
            &dest,
            dir.path(),
            &RecordingWhiteouts::default(),
        )
        .unwrap();
        assert_eq!(fs::read(dest.join("bin/hello")).unwrap(), b"hi");
    }
}
