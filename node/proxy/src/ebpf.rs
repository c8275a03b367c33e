//! Loads the embedded socket-level load balancer, attaches it to the node's own cgroup v2
//! subtree, and exposes its maps as [`ServiceMaps`]; dropping it detaches everything.

use std::{
    fs::File,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf,
    maps::{HashMap, MapData},
    programs::{CgroupAttachMode, CgroupSockAddr},
};
use skiff_ebpf_common::{
    BACKENDS_MAP, Backend, BackendKey, SERVICES_MAP, ServiceKey, ServiceValue,
};

use super::maps::{MapsError, ServiceMaps};

/// The object `cargo xtask build-ebpf` produced, embedded at build time.
static OBJECT: &[u8] = aya::include_bytes_aligned!(env!("SKIFF_EBPF_OBJECT"));

/// The socket hooks, in the order they are attached.
const PROGRAMS: [&str; 4] = ["connect4", "sendmsg4", "recvmsg4", "getpeername4"];

/// Failures loading or attaching the programs.
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
    /// The directory is the root of a cgroup hierarchy, which would hook every process.
    #[error("refusing to attach to the cgroup root {0}: give the node's own subtree")]
    CgroupRoot(PathBuf),
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
    #[error("program {name}")]
    Program {
        /// Which program.
        name: &'static str,
        /// What went wrong.
        #[source]
        source: aya::programs::ProgramError,
    },
    /// A map has another type than expected.
    #[error("map {name}")]
    Map {
        /// Which map.
        name: &'static str,
        /// What went wrong.
        #[source]
        source: aya::maps::MapError,
    },
}

/// The load balancer attached to one cgroup subtree.
#[derive(Debug)]
pub struct EbpfLoadBalancer {
    services: HashMap<MapData, ServiceKey, ServiceValue>,
    backends: HashMap<MapData, BackendKey, Backend>,
    // Owns the programs and their links; dropping it detaches them.
    _ebpf: Ebpf,
}

impl EbpfLoadBalancer {
    /// Loads the programs and attaches them to `cgroup` (a cgroup v2 directory that is not
    /// a hierarchy root).
    ///
    /// # Errors
    /// When the cgroup is unusable or the kernel refuses the object.
    pub fn attach(cgroup: &Path) -> Result<Self, LoadError> {
        let cgroup_err = |source| LoadError::Cgroup {
            path: cgroup.to_path_buf(),
            source,
        };
        let dir = cgroup.canonicalize().map_err(cgroup_err)?;
        if is_hierarchy_root(&dir) {
            return Err(LoadError::CgroupRoot(dir));
        }
        let fd = File::open(&dir).map_err(cgroup_err)?;
        let mut ebpf = Ebpf::load(OBJECT).map_err(LoadError::Object)?;
        for name in PROGRAMS {
            let program: &mut CgroupSockAddr = ebpf
                .program_mut(name)
                .ok_or(LoadError::MissingProgram(name))?
                .try_into()
                .map_err(|source| LoadError::Program { name, source })?;
            program
                .load()
                .map_err(|source| LoadError::Program { name, source })?;
            // Through bpf_link the kernel takes no multi flag (EINVAL) yet still lets other
            // links on the same cgroup run beside ours.
            program
                .attach(&fd, CgroupAttachMode::Single)
                .map_err(|source| LoadError::Program { name, source })?;
        }
        let services = take_map(&mut ebpf, SERVICES_MAP)?;
        let backends = take_map(&mut ebpf, BACKENDS_MAP)?;
        tracing::info!(cgroup = %dir.display(), "service load balancer attached");
        Ok(Self {
            services,
            backends,
            _ebpf: ebpf,
        })
    }
}

fn take_map<K: aya::Pod, V: aya::Pod>(
    ebpf: &mut Ebpf,
    name: &'static str,
) -> Result<HashMap<MapData, K, V>, LoadError> {
    let map = ebpf.take_map(name).ok_or(LoadError::MissingMap(name))?;
    HashMap::try_from(map).map_err(|source| LoadError::Map { name, source })
}

/// Whether `dir` is a mount point of a cgroup hierarchy (its parent is another filesystem).
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

impl ServiceMaps for EbpfLoadBalancer {
    fn set_service(&mut self, key: ServiceKey, value: ServiceValue) -> Result<(), MapsError> {
        self.services
            .insert(key, value, 0)
            .map_err(|source| MapsError::Map {
                map: SERVICES_MAP,
                operation: "update",
                source,
            })
    }

    fn delete_service(&mut self, key: ServiceKey) -> Result<(), MapsError> {
        ignore_missing(self.services.remove(&key)).map_err(|source| MapsError::Map {
            map: SERVICES_MAP,
            operation: "delete",
            source,
        })
    }

    fn set_backend(&mut self, key: BackendKey, backend: Backend) -> Result<(), MapsError> {
        self.backends
            .insert(key, backend, 0)
            .map_err(|source| MapsError::Map {
                map: BACKENDS_MAP,
                operation: "update",
                source,
            })
    }

    fn delete_backend(&mut self, key: BackendKey) -> Result<(), MapsError> {
        ignore_missing(self.backends.remove(&key)).map_err(|source| MapsError::Map {
            map: BACKENDS_MAP,
            operation: "delete",
            source,
        })
    }
}

/// Deleting what is already gone is success: the caller's intent holds.
fn ignore_missing(result: Result<(), aya::maps::MapError>) -> Result<(), aya::maps::MapError> {
    match result {
        Err(aya::maps::MapError::KeyNotFound) => Ok(()),
        other => other,
    }
}
