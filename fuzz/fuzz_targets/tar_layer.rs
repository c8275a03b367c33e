//! Layer tars as the node unpacks them into its image store: whatever the entries say
//! (`..`, absolute paths, symlinks and hard links pointing out, whiteouts through them),
//! nothing outside the layer's directory is created or changed.
//!
//! The tar is built from the fuzz input so every input reaches the unpacker with headers
//! that parse. The layer directory sits 16 levels deep in a sandbox filled with files to
//! overwrite; inputs carry at most 16 `..` in all, and absolute link targets point into
//! the sandbox or at a canary path, so even an unpacker that followed every link could only
//! write where this target looks.
#![no_main]

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    io::{self, Read},
    os::unix::fs::{MetadataExt, symlink},
    path::{Path, PathBuf},
    sync::OnceLock,
};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use skiff_node_runtime::image::{Whiteouts, fuzzing};

const DEPTH: usize = 16;
/// Where an absolute link out of the sandbox points; it must never come to exist.
const CANARY: &str = "/skiff-fuzz-tar-layer-canary";
const NAMES: [&str; 9] = [
    "a", "b", "etc", "secret", "rootfs", "d15", "d14", "link", "x",
];

#[derive(Debug, Arbitrary)]
enum Part {
    Up,
    Cur,
    Empty,
    Name(u8),
    Whiteout(u8),
    Opaque,
}

#[derive(Debug, Arbitrary)]
enum Target {
    /// Relative to the link.
    Relative(Vec<Part>),
    /// An absolute path into the sandbox, outside the layer.
    Sandbox(Vec<Part>),
    /// An absolute path outside the sandbox.
    Canary(Vec<Part>),
}

#[derive(Debug, Arbitrary)]
enum Kind {
    File(Vec<u8>),
    Dir,
    Symlink(Target),
    HardLink(Target),
}

#[derive(Debug, Arbitrary)]
struct Entry {
    absolute: bool,
    trailing_slash: bool,
    path: Vec<Part>,
    kind: Kind,
    mode: u16,
}

struct Sandbox {
    _dir: tempfile::TempDir,
    root: PathBuf,
    layer: PathBuf,
    before: BTreeMap<PathBuf, String>,
    outside_inodes: BTreeSet<(u64, u64)>,
}

fn sandbox() -> &'static Sandbox {
    static SANDBOX: OnceLock<Sandbox> = OnceLock::new();
    SANDBOX.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temporary directory");
        let root = dir.path().canonicalize().expect("canonical sandbox");
        let mut level = root.clone();
        for depth in 0..DEPTH {
            fs::write(level.join("secret"), format!("secret {depth}")).expect("secret");
            fs::create_dir(level.join("etc")).expect("etc");
            fs::write(level.join("etc/passwd"), "root:x:0:0").expect("passwd");
            level = level.join(format!("d{depth}"));
            fs::create_dir(&level).expect("level");
        }
        symlink("secret", level.join("link")).ok();
        let layer = level.join("rootfs");
        let before = snapshot(&root, &layer);
        let outside_inodes = inodes(&root).into_iter().map(|(_, i)| i).collect();
        Sandbox {
            outside_inodes,
            _dir: dir,
            root,
            layer,
            before,
        }
    })
}

/// Everything under `root` but `skip`: type, mode, owner, size, content and link target.
fn snapshot(root: &Path, skip: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).expect("read sandbox") {
            let path = entry.expect("sandbox entry").path();
            if path == skip {
                continue;
            }
            let meta = fs::symlink_metadata(&path).expect("sandbox metadata");
            let mut what = format!(
                "{:?} {:o} {}:{}",
                meta.file_type(),
                meta.mode(),
                meta.uid(),
                meta.gid()
            );
            if meta.is_dir() {
                stack.push(path.clone());
            } else if meta.is_symlink() {
                what += &format!(" -> {:?}", fs::read_link(&path).ok());
            } else if meta.is_file() {
                let mut content = Vec::new();
                fs::File::open(&path)
                    .and_then(|mut f| f.read_to_end(&mut content))
                    .expect("read sandbox file");
                what += &format!(" {} {:?}", meta.mtime(), content);
            }
            out.insert(path, what);
        }
    }
    out
}

/// The (device, inode) of every regular file under `root`.
fn inodes(root: &Path) -> Vec<(PathBuf, (u64, u64))> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.filter_map(Result::ok) {
            let path = entry.path();
            let Ok(meta) = fs::symlink_metadata(&path) else {
                continue;
            };
            if meta.is_dir() {
                stack.push(path);
            } else if meta.is_file() {
                out.push((path, (meta.dev(), meta.ino())));
            }
        }
    }
    out
}

/// Whiteouts as marker files, and opaque directories checked to lie in the layer.
#[derive(Debug)]
struct Checked {
    layer: PathBuf,
}

impl Whiteouts for Checked {
    fn whiteout(&self, path: &Path) -> io::Result<()> {
        fs::write(path, b"whiteout")
    }

    fn opaque(&self, dir: &Path) -> io::Result<()> {
        let real = dir.canonicalize()?;
        assert!(
            real.starts_with(&self.layer),
            "opaque marker on {} outside the layer",
            real.display()
        );
        Ok(())
    }
}

/// Spells `parts`, spending from `ups` (the `..` still allowed) and dropping the rest.
fn spell(parts: &[Part], ups: &mut usize) -> String {
    let words: Vec<String> = parts
        .iter()
        .take(6)
        .map(|part| match part {
            Part::Up if *ups > 0 => {
                *ups -= 1;
                "..".to_owned()
            }
            Part::Up | Part::Cur => ".".to_owned(),
            Part::Empty => String::new(),
            Part::Name(i) => NAMES[usize::from(*i) % NAMES.len()].to_owned(),
            Part::Whiteout(i) => format!(".wh.{}", NAMES[usize::from(*i) % NAMES.len()]),
            Part::Opaque => ".wh..wh..opq".to_owned(),
        })
        .collect();
    words.join("/")
}

fn target(target: &Target, root: &Path, ups: &mut usize) -> String {
    match target {
        Target::Relative(parts) => spell(parts, ups),
        Target::Sandbox(parts) => format!("{}/{}", root.display(), spell(parts, ups)),
        Target::Canary(parts) => format!("{CANARY}/{}", spell(parts, ups)),
    }
}

/// A tar of `entries` with names written straight into the headers, so nothing between
/// the fuzzer and the unpacker cleans them.
fn tar_of(entries: &[Entry], root: &Path) -> Vec<u8> {
    let mut ups = DEPTH;
    let mut builder = tar::Builder::new(Vec::new());
    for entry in entries.iter().take(12) {
        let mut path = spell(&entry.path, &mut ups);
        if entry.absolute {
            path.insert(0, '/');
        }
        if entry.trailing_slash {
            path.push('/');
        }
        let mut header = tar::Header::new_gnu();
        let name = path.as_bytes();
        let old = header.as_old_mut();
        if name.len() > old.name.len() {
            continue;
        }
        old.name[..name.len()].copy_from_slice(name);
        header.set_mode(u32::from(entry.mode & 0o7777));
        header.set_uid(u64::from(entry.mode % 3));
        header.set_gid(0);
        header.set_mtime(1_700_000_000);
        let data: &[u8] = match &entry.kind {
            Kind::File(data) => {
                header.set_entry_type(tar::EntryType::Regular);
                &data[..data.len().min(64)]
            }
            Kind::Dir => {
                header.set_entry_type(tar::EntryType::Directory);
                &[]
            }
            Kind::Symlink(to) | Kind::HardLink(to) => {
                let link = target(to, root, &mut ups);
                let field = &mut header.as_old_mut().linkname;
                if link.len() > field.len() {
                    continue;
                }
                field[..link.len()].copy_from_slice(link.as_bytes());
                header.set_entry_type(if matches!(entry.kind, Kind::Symlink(_)) {
                    tar::EntryType::Symlink
                } else {
                    tar::EntryType::Link
                });
                &[]
            }
        };
        header.set_size(data.len() as u64);
        header.set_cksum();
        builder.append(&header, data).expect("tar in memory");
    }
    builder.into_inner().expect("tar in memory")
}

fuzz_target!(|entries: Vec<Entry>| {
    let sandbox = sandbox();
    let _ = fs::remove_dir_all(&sandbox.layer);
    fs::create_dir_all(&sandbox.layer).expect("layer directory");
    let tar = tar_of(&entries, &sandbox.root);
    let whiteouts = Checked {
        layer: sandbox.layer.clone(),
    };
    let _ = fuzzing::unpack_layer(&tar, &sandbox.layer, &whiteouts);
    assert!(
        !Path::new(CANARY).exists(),
        "the layer created {CANARY} outside the sandbox"
    );
    let after = snapshot(&sandbox.root, &sandbox.layer);
    if after != sandbox.before {
        let changed: Vec<_> = after
            .iter()
            .filter(|(p, v)| sandbox.before.get(*p) != Some(*v))
            .map(|(p, _)| p)
            .chain(sandbox.before.keys().filter(|p| !after.contains_key(*p)))
            .collect();
        panic!("unpacking changed outside the layer: {changed:?}");
    }
    // A hard link to a file outside would hand the container the node's file.
    for (path, inode) in inodes(&sandbox.layer) {
        assert!(
            !sandbox.outside_inodes.contains(&inode),
            "{} is a hard link to a file outside the layer",
            path.display()
        );
    }
});
