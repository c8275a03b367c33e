//! A node's pins on bpffs: the maps under `<dir>/maps/` and the cgroup links under
//! `<dir>/links/`, so a restarted node finds its datapath still attached and still holding
//! its entries. A link is replaced by pinning the new one beside it and renaming it over the
//! old one: the old link goes when its pin does, and the hooks are never unattached.

use std::{
    io,
    path::{Path, PathBuf},
};

use aya::{
    maps::{MapInfo, MapType},
    programs::links::{FdLink, PinnedLink},
};
use nix::{
    mount::MsFlags,
    sys::statfs::{BPF_FS_MAGIC, statfs},
};
use skiff_ebpf_common::{
    AffinityKey, AffinityValue, Backend, BackendKey, Config, Counters, CtKey, CtValue, FrontendKey,
    FrontendValue, SockRevNatKey, SockRevNatValue, Uplink,
    nat::{CT_MAP, MAX_CT, MAX_UPLINKS, UPLINKS_MAP},
    service::{
        AFFINITY_MAP, BACKENDS_MAP, CONFIG_MAP, COUNTERS_MAP, FRONTENDS_MAP, MAX_AFFINITY,
        MAX_BACKENDS, MAX_FRONTENDS, MAX_GROUPS, NO_PREALLOC,
    },
    socket::{MAX_SOCK_REV_NAT, SOCK_REV_NAT_MAP},
};

/// Where bpffs is mounted on a usual host.
pub const BPFFS: &str = "/sys/fs/bpf";

/// Failures preparing, using or removing the pin directory.
#[derive(Debug, thiserror::Error)]
pub enum PinError {
    /// The directory is not on a bpffs, and is not under the usual mount point either.
    #[error("{0} is not on a bpf filesystem (mount one with `mount -t bpf bpf DIR`)")]
    NotBpffs(PathBuf),
    /// Mounting bpffs at the usual place failed.
    #[error("mounting bpffs at {BPFFS} (kernel option CONFIG_BPF_SYSCALL)")]
    Mount(#[source] nix::Error),
    /// A file or directory operation failed.
    #[error("{path}")]
    Io {
        /// The path.
        path: PathBuf,
        /// What failed.
        #[source]
        source: io::Error,
    },
    /// The kernel refused to pin or open a pinned object.
    #[error("pinning {path}")]
    Pin {
        /// The path.
        path: PathBuf,
        /// What failed.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> PinError + '_ {
    move |source| PinError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What a pinned map must look like to be reused by this version.
#[derive(Debug, Clone, Copy)]
struct Shape {
    name: &'static str,
    map_type: MapType,
    key_size: usize,
    value_size: usize,
    max_entries: u32,
    flags: u32,
}

const SHAPES: [Shape; 8] = [
    Shape {
        name: FRONTENDS_MAP,
        map_type: MapType::Hash,
        key_size: size_of::<FrontendKey>(),
        value_size: size_of::<FrontendValue>(),
        max_entries: MAX_FRONTENDS,
        flags: NO_PREALLOC,
    },
    Shape {
        name: BACKENDS_MAP,
        map_type: MapType::Hash,
        key_size: size_of::<BackendKey>(),
        value_size: size_of::<Backend>(),
        max_entries: MAX_BACKENDS,
        flags: NO_PREALLOC,
    },
    Shape {
        name: AFFINITY_MAP,
        map_type: MapType::LruHash,
        key_size: size_of::<AffinityKey>(),
        value_size: size_of::<AffinityValue>(),
        max_entries: MAX_AFFINITY,
        flags: 0,
    },
    Shape {
        name: COUNTERS_MAP,
        map_type: MapType::PerCpuHash,
        key_size: size_of::<u32>(),
        value_size: size_of::<Counters>(),
        max_entries: MAX_GROUPS,
        flags: NO_PREALLOC,
    },
    Shape {
        name: CONFIG_MAP,
        map_type: MapType::Array,
        key_size: size_of::<u32>(),
        value_size: size_of::<Config>(),
        max_entries: 1,
        flags: 0,
    },
    Shape {
        name: SOCK_REV_NAT_MAP,
        map_type: MapType::LruHash,
        key_size: size_of::<SockRevNatKey>(),
        value_size: size_of::<SockRevNatValue>(),
        max_entries: MAX_SOCK_REV_NAT,
        flags: 0,
    },
    Shape {
        name: UPLINKS_MAP,
        map_type: MapType::Hash,
        key_size: size_of::<u32>(),
        value_size: size_of::<Uplink>(),
        max_entries: MAX_UPLINKS,
        flags: 0,
    },
    Shape {
        name: CT_MAP,
        map_type: MapType::LruHash,
        key_size: size_of::<CtKey>(),
        value_size: size_of::<CtValue>(),
        max_entries: MAX_CT,
        flags: 0,
    },
];

/// The names of the maps this version pins.
pub fn map_names() -> impl Iterator<Item = &'static str> {
    SHAPES.iter().map(|s| s.name)
}

fn matches(shape: &Shape, info: &MapInfo) -> bool {
    info.map_type().is_ok_and(|t| t == shape.map_type)
        && info.key_size() as usize == shape.key_size
        && info.value_size() as usize == shape.value_size
        && info.max_entries() == shape.max_entries
        && info.map_flags() == shape.flags
}

/// A node's pin directory on bpffs.
#[derive(Debug, Clone)]
pub struct PinDir {
    root: PathBuf,
}

impl PinDir {
    /// Makes `root` (and `maps/`, `links/` in it) on bpffs, mounting bpffs at
    /// [`BPFFS`] first when `root` is below it and nothing is mounted there.
    ///
    /// # Errors
    /// When `root` is not on a bpffs or cannot be made.
    pub fn prepare(root: &Path) -> Result<Self, PinError> {
        if !on_bpffs(root) {
            if root.starts_with(BPFFS) && !on_bpffs(Path::new(BPFFS)) {
                std::fs::create_dir_all(BPFFS).map_err(io_err(Path::new(BPFFS)))?;
                nix::mount::mount(
                    Some("bpf"),
                    BPFFS,
                    Some("bpf"),
                    MsFlags::empty(),
                    None::<&str>,
                )
                .map_err(PinError::Mount)?;
                tracing::info!(path = BPFFS, "mounted bpffs");
            }
            if !on_bpffs(root) {
                return Err(PinError::NotBpffs(root.to_path_buf()));
            }
        }
        let dir = Self {
            root: root.to_path_buf(),
        };
        for sub in [dir.root.join("maps"), dir.root.join("links")] {
            std::fs::create_dir_all(&sub).map_err(io_err(&sub))?;
        }
        Ok(dir)
    }

    /// The directory.
    #[must_use]
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where map `name` is pinned.
    #[must_use]
    pub fn map(&self, name: &str) -> PathBuf {
        self.root.join("maps").join(name)
    }

    /// Where the link of program `name` is pinned.
    #[must_use]
    pub fn link(&self, name: &str) -> PathBuf {
        self.root.join("links").join(name)
    }

    /// Whether any map is pinned already (a restart, not a first start).
    #[must_use]
    pub fn has_maps(&self) -> bool {
        map_names().any(|name| self.map(name).exists())
    }

    /// Unpins maps whose shape this version does not write (another version pinned them):
    /// their entries cannot be read, so the maps start over. Returns their names.
    ///
    /// # Errors
    /// When a stale pin cannot be removed.
    pub fn drop_incompatible_maps(&self) -> Result<Vec<&'static str>, PinError> {
        let mut dropped = Vec::new();
        for shape in &SHAPES {
            let path = self.map(shape.name);
            if !path.exists() {
                continue;
            }
            let fits = MapInfo::from_pin(&path).is_ok_and(|info| matches(shape, &info));
            if !fits {
                std::fs::remove_file(&path).map_err(io_err(&path))?;
                dropped.push(shape.name);
            }
        }
        Ok(dropped)
    }

    /// Pins `link` as program `name`'s link, replacing (and so detaching) the link pinned
    /// there before, without a moment where neither is attached.
    ///
    /// # Errors
    /// When the kernel refuses the pin or the rename fails.
    pub fn replace_link(&self, name: &str, link: FdLink) -> Result<(), PinError> {
        let path = self.link(name);
        // bpffs refuses names with a dot.
        let fresh = self.root.join("links").join(format!("{name}_new"));
        let _ = std::fs::remove_file(&fresh);
        let pinned = link.pin(&fresh).map_err(|source| PinError::Pin {
            path: fresh.clone(),
            source: Box::new(source),
        })?;
        std::fs::rename(&fresh, &path).map_err(io_err(&path))?;
        // The pin holds the link now; our descriptor is not needed.
        drop(pinned);
        Ok(())
    }

    /// Unpins every link (which detaches the programs) and every map, then removes the
    /// directory, and its parent too when that is left empty (`/sys/fs/bpf/skiff`).
    ///
    /// # Errors
    /// When a pin cannot be removed.
    pub fn remove(self) -> Result<(), PinError> {
        let links = self.root.join("links");
        if let Ok(entries) = std::fs::read_dir(&links) {
            for entry in entries.flatten() {
                let path = entry.path();
                match PinnedLink::from_pin(&path) {
                    Ok(link) => {
                        let _ = link.unpin().map_err(io_err(&path))?;
                    }
                    Err(_) => std::fs::remove_file(&path).map_err(io_err(&path))?,
                }
            }
        }
        let maps = self.root.join("maps");
        if let Ok(entries) = std::fs::read_dir(&maps) {
            for entry in entries.flatten() {
                let path = entry.path();
                std::fs::remove_file(&path).map_err(io_err(&path))?;
            }
        }
        for dir in [&links, &maps, &self.root] {
            match std::fs::remove_dir(dir) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(io_err(dir)(e)),
                _ => {}
            }
        }
        if let Some(parent) = self.root.parent()
            && parent != Path::new(BPFFS)
        {
            let _ = std::fs::remove_dir(parent);
        }
        Ok(())
    }
}

/// Whether `path`, or the nearest part of it that exists, is on a bpffs.
fn on_bpffs(path: &Path) -> bool {
    let mut at = Some(path);
    while let Some(p) = at {
        if p.exists() {
            return statfs(p).is_ok_and(|fs| fs.filesystem_type() == BPF_FS_MAGIC);
        }
        at = p.parent();
    }
    false
}
