//! Loads the embedded eBPF object, attaches its socket hooks to a cgroup v2 subtree and its
//! TC programs to the node's uplinks ([`tc`]) through `bpf_link`s, and hands out its maps:
//! [`EbpfMaps`] for the table, [`MapStats`] for `/metrics`. With a pin directory the links
//! and maps outlive the process (a restarted node finds them, [`DatapathHandle::remove`]
//! takes them away); without one everything is detached when the handle drops.

pub mod cookie;
pub mod maps;
pub mod pins;
pub mod probe;
pub mod reaper;
pub mod tc;

use std::{
    fs::File,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, Map, MapData, PerCpuHashMap},
    programs::{CgroupAttachMode, CgroupSockAddr, links::FdLink},
};
use skiff_ebpf_common::{
    Config,
    nat::CT_MAP,
    service::{AFFINITY_MAP, BACKENDS_MAP, CONFIG_MAP, COUNTERS_MAP, FRONTENDS_MAP},
    socket::SOCK_REV_NAT_MAP,
};

pub use self::{
    maps::{DatapathStats, EbpfMaps, Fill, MapStats},
    pins::{PinDir, PinError},
    probe::{Features, ProbeError},
    reaper::{NetlinkReaper, SockDiag},
    tc::{TcError, Uplink},
};

/// The object `cargo xtask build-ebpf` produced, embedded at build time.
static OBJECT: &[u8] = aya::include_bytes_aligned!(env!("SKIFF_EBPF_OBJECT"));

/// The embedded object, for tools and tests that load its programs themselves (for
/// `BPF_PROG_TEST_RUN`).
#[must_use]
pub fn object() -> &'static [u8] {
    OBJECT
}

/// The socket hooks, in the order they are attached.
pub const SOCKET_PROGRAMS: [&str; 4] = ["connect4", "sendmsg4", "recvmsg4", "getpeername4"];

/// Failures loading or attaching the datapath.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The cgroup directory could not be opened or resolved.
    #[error("cgroup {path}")]
    Cgroup {
        /// The directory given.
        path: PathBuf,
        /// The I/O failure.
        #[source]
        source: std::io::Error,
    },
    /// The directory is the root of a cgroup hierarchy, which hooks every process on the
    /// host, and the operator did not name it explicitly.
    #[error(
        "refusing to attach to the cgroup root {0}: it hooks every process on this host; name \
         it explicitly to confirm, or give the node's own subtree"
    )]
    CgroupRoot(PathBuf),
    /// The pin directory is unusable.
    #[error(transparent)]
    Pins(#[from] PinError),
    /// The kernel or aya refused the object.
    #[error("loading the eBPF object")]
    Object(#[source] aya::EbpfError),
    /// A program is missing from the object.
    #[error("program {0} is missing from the eBPF object")]
    MissingProgram(&'static str),
    /// A map is missing from the object.
    #[error("map {0} is missing from the eBPF object")]
    MissingMap(&'static str),
    /// The verifier or the attach call refused a program.
    #[error("program {name} (cgroup sock_addr programs need CONFIG_CGROUP_BPF and Linux 5.7+)")]
    Program {
        /// Which program.
        name: &'static str,
        /// What went wrong.
        #[source]
        source: aya::programs::ProgramError,
    },
    /// A link could not be taken over from aya.
    #[error("link of program {name}")]
    Link {
        /// Which program.
        name: &'static str,
        /// What went wrong.
        #[source]
        source: aya::programs::links::LinkError,
    },
    /// The TC programs could not be attached to the uplinks.
    #[error(transparent)]
    Tc(#[from] TcError),
    /// A map has another type than expected, or could not be opened or written.
    #[error("map {name}")]
    Map {
        /// Which map.
        name: &'static str,
        /// What went wrong.
        #[source]
        source: aya::maps::MapError,
    },
}

/// Where and how to attach.
#[derive(Debug, Clone)]
pub struct AttachConfig {
    /// The cgroup v2 directory whose processes get the socket hooks.
    pub cgroup: PathBuf,
    /// Accept a hierarchy root (only when the operator named it explicitly).
    pub allow_cgroup_root: bool,
    /// Where links and maps are pinned; `None` pins nothing.
    pub pin_dir: Option<PathBuf>,
    /// The node's own network namespace cookie (host-only frontends).
    pub host_netns: u64,
}

/// What keeps the datapath attached, and takes it away.
#[derive(Debug)]
pub struct DatapathHandle {
    pins: Option<PinDir>,
    /// Unpinned links: dropping them detaches the programs.
    links: Vec<FdLink>,
    restarted: bool,
}

impl DatapathHandle {
    /// Whether the maps were found pinned by an earlier run (their entries are adopted).
    #[must_use]
    pub fn restarted(&self) -> bool {
        self.restarted
    }

    /// The pin directory, if any.
    #[must_use]
    pub fn pin_dir(&self) -> Option<&Path> {
        self.pins.as_ref().map(PinDir::root)
    }

    /// Detaches the programs and removes the pins (`--cleanup-on-exit`).
    ///
    /// # Errors
    /// When a pin cannot be removed.
    pub fn remove(self) -> Result<(), PinError> {
        drop(self.links);
        match self.pins {
            Some(pins) => pins.remove(),
            None => Ok(()),
        }
    }
}

/// The attached datapath: the maps the table writes, the readers `/metrics` uses, and the
/// handle that keeps it attached.
#[derive(Debug)]
pub struct Datapath {
    /// The frontend, backend and counter maps.
    pub maps: EbpfMaps,
    /// Counters and LRU fill, read on handles of their own.
    pub stats: MapStats,
    /// Destroys connected UDP sockets pinned to backends that are gone.
    pub reaper: NetlinkReaper,
    /// Keeps it attached; removes it.
    pub handle: DatapathHandle,
}

impl Datapath {
    /// Loads the programs (reusing pinned maps), attaches them to `config.cgroup`, and
    /// pins the links in place of an earlier run's.
    ///
    /// # Errors
    /// When the cgroup or pin directory is unusable or the kernel refuses the object.
    pub fn attach(config: &AttachConfig) -> Result<Self, LoadError> {
        Self::attach_with_uplinks(config, &[])
    }

    /// [`Datapath::attach`], and the TC programs on `uplinks` (in this thread's network
    /// namespace) for traffic from outside the node; TC links of interfaces an earlier run
    /// pinned and `uplinks` no longer names are removed.
    ///
    /// # Errors
    /// As [`Datapath::attach`], and when an uplink is missing or refuses the programs.
    pub fn attach_with_uplinks(
        config: &AttachConfig,
        uplinks: &[Uplink],
    ) -> Result<Self, LoadError> {
        let cgroup_err = |source| LoadError::Cgroup {
            path: config.cgroup.clone(),
            source,
        };
        let dir = config.cgroup.canonicalize().map_err(cgroup_err)?;
        if is_hierarchy_root(&dir) && !config.allow_cgroup_root {
            return Err(LoadError::CgroupRoot(dir));
        }
        let cgroup = File::open(&dir).map_err(cgroup_err)?;
        let pins = config.pin_dir.as_deref().map(PinDir::prepare).transpose()?;
        let mut restarted = false;
        let mut loader = EbpfLoader::new();
        if let Some(pins) = &pins {
            restarted = pins.has_maps();
            let dropped = pins.drop_incompatible_maps()?;
            if !dropped.is_empty() {
                tracing::warn!(
                    ?dropped,
                    "pinned maps of another layout removed; they start empty"
                );
            }
            for name in pins::map_names() {
                loader.map_pin_path(name, pins.map(name));
            }
        }
        let mut ebpf = loader.load(OBJECT).map_err(LoadError::Object)?;
        let mut links = Vec::new();
        for name in SOCKET_PROGRAMS {
            let link = attach_program(&mut ebpf, name, &cgroup)?;
            match &pins {
                Some(pins) => pins.replace_link(name, link)?,
                None => links.push(link),
            }
        }
        links.extend(tc::attach(&mut ebpf, pins.as_ref(), uplinks)?);
        let mut config_map: Array<&mut MapData, Config> = ebpf
            .map_mut(CONFIG_MAP)
            .ok_or(LoadError::MissingMap(CONFIG_MAP))?
            .try_into()
            .map_err(map_err(CONFIG_MAP))?;
        config_map
            .set(
                0,
                Config {
                    host_netns: config.host_netns,
                },
                0,
            )
            .map_err(map_err(CONFIG_MAP))?;
        let counters = ebpf
            .take_map(COUNTERS_MAP)
            .ok_or(LoadError::MissingMap(COUNTERS_MAP))?;
        // The metrics reader gets a descriptor of its own on the same map.
        let counters_id = match &counters {
            Map::PerCpuHashMap(data) => data.info().map_err(map_err(COUNTERS_MAP))?.id(),
            _ => return Err(LoadError::MissingMap(COUNTERS_MAP)),
        };
        let counters_again = MapData::from_id(counters_id).map_err(map_err(COUNTERS_MAP))?;
        let maps = EbpfMaps {
            frontends: take_map(&mut ebpf, FRONTENDS_MAP)?,
            backends: take_map(&mut ebpf, BACKENDS_MAP)?,
            counters: PerCpuHashMap::try_from(counters).map_err(map_err(COUNTERS_MAP))?,
        };
        let rev_nat = ebpf
            .take_map(SOCK_REV_NAT_MAP)
            .ok_or(LoadError::MissingMap(SOCK_REV_NAT_MAP))?;
        // The socket reaper gets a descriptor of its own on the same map.
        let rev_nat_again = match &rev_nat {
            Map::LruHashMap(data) => {
                let id = data.info().map_err(map_err(SOCK_REV_NAT_MAP))?.id();
                MapData::from_id(id).map_err(map_err(SOCK_REV_NAT_MAP))?
            }
            _ => return Err(LoadError::MissingMap(SOCK_REV_NAT_MAP)),
        };
        let stats = MapStats {
            counters: PerCpuHashMap::try_from(Map::PerCpuHashMap(counters_again))
                .map_err(map_err(COUNTERS_MAP))?,
            affinity: take_map(&mut ebpf, AFFINITY_MAP)?,
            rev_nat: HashMap::try_from(rev_nat).map_err(map_err(SOCK_REV_NAT_MAP))?,
            ct: take_map(&mut ebpf, CT_MAP)?,
        };
        let reaper = NetlinkReaper::new(
            HashMap::try_from(Map::LruHashMap(rev_nat_again)).map_err(map_err(SOCK_REV_NAT_MAP))?,
        );
        tracing::info!(
            cgroup = %dir.display(),
            pins = ?pins.as_ref().map(PinDir::root),
            restarted,
            uplinks = ?uplinks.iter().map(|u| &u.interface).collect::<Vec<_>>(),
            "socket load balancer attached"
        );
        Ok(Self {
            maps,
            stats,
            reaper,
            handle: DatapathHandle {
                pins,
                links,
                restarted,
            },
        })
    }
}

fn map_err(name: &'static str) -> impl FnOnce(aya::maps::MapError) -> LoadError {
    move |source| LoadError::Map { name, source }
}

fn attach_program(ebpf: &mut Ebpf, name: &'static str, cgroup: &File) -> Result<FdLink, LoadError> {
    let program_err = |source| LoadError::Program { name, source };
    let program: &mut CgroupSockAddr = ebpf
        .program_mut(name)
        .ok_or(LoadError::MissingProgram(name))?
        .try_into()
        .map_err(program_err)?;
    program.load().map_err(program_err)?;
    // Through bpf_link the kernel takes no multi flag (EINVAL) yet lets other links on the
    // same cgroup run beside ours: an earlier run's, until its pin is replaced.
    let id = program
        .attach(cgroup, CgroupAttachMode::Single)
        .map_err(program_err)?;
    let link = program.take_link(id).map_err(program_err)?;
    FdLink::try_from(link).map_err(|source| LoadError::Link { name, source })
}

fn take_map<M>(ebpf: &mut Ebpf, name: &'static str) -> Result<M, LoadError>
where
    M: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf.take_map(name).ok_or(LoadError::MissingMap(name))?;
    M::try_from(map).map_err(map_err(name))
}

/// Whether `dir` is a mount point of a cgroup hierarchy.
fn is_hierarchy_root(dir: &Path) -> bool {
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") else {
        return false;
    };
    mounts.lines().any(|line| {
        let mut fields = line.split_whitespace();
        let (Some(_), Some(mount), Some(fstype)) = (fields.next(), fields.next(), fields.next())
        else {
            return false;
        };
        fstype.starts_with("cgroup") && Path::new(mount) == dir
    })
}
