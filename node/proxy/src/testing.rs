//! Maps in memory for unit tests: they record every write and check, after each one, that a
//! reader of the real maps would never find a counted slot missing.

use std::collections::{HashMap, HashSet};

use skiff_ebpf_common::{Backend, BackendKey, FrontendKey, FrontendValue};

use crate::maps::{Dump, MapsError, ServiceMaps};

/// The maps, a log of writes, and an optional failure.
#[derive(Debug, Default)]
pub struct FakeMaps {
    pub frontends: HashMap<FrontendKey, FrontendValue>,
    pub backends: HashMap<BackendKey, Backend>,
    pub counters: HashSet<u32>,
    /// One line per write, `operation key value`.
    pub log: Vec<String>,
    /// Fail the write with this index in `log`.
    pub fail_at: Option<usize>,
}

impl FakeMaps {
    /// The backends a frontend counts, as the kernel program would pick from.
    pub fn reachable(&self, key: FrontendKey) -> Vec<Backend> {
        let Some(value) = self.frontends.get(&key) else {
            return Vec::new();
        };
        (0..value.count)
            .map(|slot| {
                self.backends[&BackendKey {
                    group: value.group,
                    slot,
                }]
            })
            .collect()
    }

    fn write(&mut self, line: String) -> Result<(), MapsError> {
        if self.fail_at == Some(self.log.len()) {
            self.fail_at = None;
            return Err(MapsError::Map {
                map: "fake",
                operation: "update",
                source: aya::maps::MapError::KeyNotFound,
            });
        }
        self.log.push(line);
        Ok(())
    }

    /// What a reader could see now: every counted slot exists, every group counted.
    fn check(&self) {
        for (key, value) in &self.frontends {
            assert!(
                self.counters.contains(&value.group),
                "frontend {key:?} points at group {} without counters",
                value.group
            );
            for slot in 0..value.count {
                assert!(
                    self.backends.contains_key(&BackendKey {
                        group: value.group,
                        slot
                    }),
                    "frontend {key:?} counts slot {slot} of group {}, which is missing",
                    value.group
                );
            }
        }
    }
}

impl ServiceMaps for FakeMaps {
    fn set_frontend(&mut self, key: FrontendKey, value: FrontendValue) -> Result<(), MapsError> {
        self.write(format!("set_frontend {key:?} {value:?}"))?;
        self.frontends.insert(key, value);
        self.check();
        Ok(())
    }

    fn delete_frontend(&mut self, key: FrontendKey) -> Result<(), MapsError> {
        self.write(format!("delete_frontend {key:?}"))?;
        self.frontends.remove(&key);
        self.check();
        Ok(())
    }

    fn set_backend(&mut self, key: BackendKey, backend: Backend) -> Result<(), MapsError> {
        self.write(format!("set_backend {key:?} {backend:?}"))?;
        self.backends.insert(key, backend);
        self.check();
        Ok(())
    }

    fn delete_backend(&mut self, key: BackendKey) -> Result<(), MapsError> {
        self.write(format!("delete_backend {key:?}"))?;
        self.backends.remove(&key);
        self.check();
        Ok(())
    }

    fn add_group(&mut self, group: u32) -> Result<(), MapsError> {
        self.write(format!("add_group {group}"))?;
        self.counters.insert(group);
        Ok(())
    }

    fn remove_group(&mut self, group: u32) -> Result<(), MapsError> {
        self.write(format!("remove_group {group}"))?;
        self.counters.remove(&group);
        self.check();
        Ok(())
    }

    fn dump(&self) -> Result<Dump, MapsError> {
        Ok(Dump {
            frontends: self.frontends.iter().map(|(k, v)| (*k, *v)).collect(),
            backends: self.backends.iter().map(|(k, v)| (*k, *v)).collect(),
            counted_groups: self.counters.iter().copied().collect(),
        })
    }
}
