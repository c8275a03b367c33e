//! The kernel's maps behind [`ServiceMaps`], and a second set of handles that reads the
//! counters and the LRU maps' fill for `/metrics` without holding up the writer.

use std::collections::HashMap as StdHashMap;

use aya::maps::{HashMap, MapData, MapError, PerCpuHashMap, PerCpuValues};
use skiff_ebpf_common::{
    AffinityKey, AffinityValue, Backend, BackendKey, Counters, CtKey, CtValue, FrontendKey,
    FrontendValue, SockRevNatKey, SockRevNatValue,
    nat::{CT_MAP, MAX_CT},
    service::{AFFINITY_MAP, BACKENDS_MAP, COUNTERS_MAP, FRONTENDS_MAP, MAX_AFFINITY},
    socket::{MAX_SOCK_REV_NAT, SOCK_REV_NAT_MAP},
};

use crate::maps::{Dump, MapsError, ServiceMaps};

fn failed(map: &'static str, operation: &'static str) -> impl FnOnce(MapError) -> MapsError {
    move |source| MapsError::Map {
        map,
        operation,
        source,
    }
}

/// Deleting what is already gone is success: the caller's intent holds.
fn ignore_missing(result: Result<(), MapError>) -> Result<(), MapError> {
    match result {
        Err(MapError::KeyNotFound) => Ok(()),
        other => other,
    }
}

/// The frontend, backend and counter maps the table writes.
pub struct EbpfMaps {
    pub(super) frontends: HashMap<MapData, FrontendKey, FrontendValue>,
    pub(super) backends: HashMap<MapData, BackendKey, Backend>,
    pub(super) counters: PerCpuHashMap<MapData, u32, Counters>,
}

impl std::fmt::Debug for EbpfMaps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EbpfMaps").finish_non_exhaustive()
    }
}

impl std::fmt::Debug for MapStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MapStats").finish_non_exhaustive()
    }
}

impl ServiceMaps for EbpfMaps {
    fn set_frontend(&mut self, key: FrontendKey, value: FrontendValue) -> Result<(), MapsError> {
        self.frontends
            .insert(key, value, 0)
            .map_err(failed(FRONTENDS_MAP, "update"))
    }

    fn delete_frontend(&mut self, key: FrontendKey) -> Result<(), MapsError> {
        ignore_missing(self.frontends.remove(&key)).map_err(failed(FRONTENDS_MAP, "delete"))
    }

    fn set_backend(&mut self, key: BackendKey, backend: Backend) -> Result<(), MapsError> {
        self.backends
            .insert(key, backend, 0)
            .map_err(failed(BACKENDS_MAP, "update"))
    }

    fn delete_backend(&mut self, key: BackendKey) -> Result<(), MapsError> {
        ignore_missing(self.backends.remove(&key)).map_err(failed(BACKENDS_MAP, "delete"))
    }

    fn add_group(&mut self, group: u32) -> Result<(), MapsError> {
        let cpus = aya::util::nr_cpus().map_err(|(_, err)| MapsError::Cpus(err))?;
        let zeros =
            PerCpuValues::try_from(vec![Counters::default(); cpus]).map_err(MapsError::Cpus)?;
        self.counters
            .insert(group, zeros, 0)
            .map_err(failed(COUNTERS_MAP, "update"))
    }

    fn remove_group(&mut self, group: u32) -> Result<(), MapsError> {
        ignore_missing(self.counters.remove(&group)).map_err(failed(COUNTERS_MAP, "delete"))
    }

    fn dump(&self) -> Result<Dump, MapsError> {
        let frontends = self
            .frontends
            .iter()
            .collect::<Result<_, _>>()
            .map_err(failed(FRONTENDS_MAP, "read"))?;
        let backends = self
            .backends
            .iter()
            .collect::<Result<_, _>>()
            .map_err(failed(BACKENDS_MAP, "read"))?;
        let counted_groups = self
            .counters
            .keys()
            .collect::<Result<_, _>>()
            .map_err(failed(COUNTERS_MAP, "read"))?;
        Ok(Dump {
            frontends,
            backends,
            counted_groups,
        })
    }
}

/// How full an LRU map is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fill {
    /// The map's name.
    pub map: &'static str,
    /// Entries in it now.
    pub entries: usize,
    /// Its capacity.
    pub capacity: u32,
}

/// What `/metrics` reads from the kernel: counters and LRU fill.
pub trait DatapathStats: Send + Sync {
    /// Each group's counters, summed over CPUs.
    ///
    /// # Errors
    /// When the map cannot be read.
    fn counters(&self) -> Result<StdHashMap<u32, Counters>, MapsError>;

    /// The fill of the LRU maps (affinity, reverse translation, connection tracking).
    ///
    /// # Errors
    /// When a map cannot be read.
    fn fill(&self) -> Result<Vec<Fill>, MapsError>;
}

/// Read-only handles of their own on the counters and LRU maps.
pub struct MapStats {
    pub(super) counters: PerCpuHashMap<MapData, u32, Counters>,
    pub(super) affinity: HashMap<MapData, AffinityKey, AffinityValue>,
    pub(super) rev_nat: HashMap<MapData, SockRevNatKey, SockRevNatValue>,
    pub(super) ct: HashMap<MapData, CtKey, CtValue>,
}

impl DatapathStats for MapStats {
    fn counters(&self) -> Result<StdHashMap<u32, Counters>, MapsError> {
        let mut out = StdHashMap::new();
        for entry in &self.counters {
            let (group, per_cpu) = entry.map_err(failed(COUNTERS_MAP, "read"))?;
            let mut sum = Counters::default();
            for c in per_cpu.iter() {
                sum.translations += c.translations;
                sum.refusals += c.refusals;
            }
            out.insert(group, sum);
        }
        Ok(out)
    }

    fn fill(&self) -> Result<Vec<Fill>, MapsError> {
        Ok(vec![
            Fill {
                map: AFFINITY_MAP,
                entries: self.affinity.keys().flatten().count(),
                capacity: MAX_AFFINITY,
            },
            Fill {
                map: SOCK_REV_NAT_MAP,
                entries: self.rev_nat.keys().flatten().count(),
                capacity: MAX_SOCK_REV_NAT,
            },
            Fill {
                map: CT_MAP,
                entries: self.ct.keys().flatten().count(),
                capacity: MAX_CT,
            },
        ])
    }
}
