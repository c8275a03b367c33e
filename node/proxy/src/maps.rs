//! The privileged boundary of the data plane: single-entry writes to the Service maps, and
//! reading them back after a restart, so the bookkeeping above can be unit-tested without a
//! kernel.

use skiff_ebpf_common::{Backend, BackendKey, FrontendKey, FrontendValue};

/// Failures reading or writing the data-plane maps.
#[derive(Debug, thiserror::Error)]
pub enum MapsError {
    /// The kernel refused to read, update or delete a map entry.
    #[error("bpf map {map}: {operation} failed")]
    Map {
        /// Which map.
        map: &'static str,
        /// `update`, `delete` or `read`.
        operation: &'static str,
        /// The kernel's answer.
        #[source]
        source: aya::maps::MapError,
    },
    /// Per-CPU values need the number of possible CPUs, which could not be read.
    #[error("counting the possible CPUs")]
    Cpus(#[source] std::io::Error),
}

/// What the frontend, backend and counter maps hold, read back after a restart.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dump {
    /// Every frontend entry.
    pub frontends: Vec<(FrontendKey, FrontendValue)>,
    /// Every backend slot.
    pub backends: Vec<(BackendKey, Backend)>,
    /// Every group that has counters.
    pub counted_groups: Vec<u32>,
}

/// One-entry operations on the frontend, backend and counter maps.
pub trait ServiceMaps {
    /// Inserts or replaces a frontend.
    ///
    /// # Errors
    /// When the map refuses the write.
    fn set_frontend(&mut self, key: FrontendKey, value: FrontendValue) -> Result<(), MapsError>;

    /// Removes a frontend (absent is fine).
    ///
    /// # Errors
    /// When the map refuses the deletion.
    fn delete_frontend(&mut self, key: FrontendKey) -> Result<(), MapsError>;

    /// Inserts or replaces one backend slot.
    ///
    /// # Errors
    /// When the map refuses the write.
    fn set_backend(&mut self, key: BackendKey, backend: Backend) -> Result<(), MapsError>;

    /// Removes one backend slot (absent is fine).
    ///
    /// # Errors
    /// When the map refuses the deletion.
    fn delete_backend(&mut self, key: BackendKey) -> Result<(), MapsError>;

    /// Starts a group's counters at zero.
    ///
    /// # Errors
    /// When the map refuses the write.
    fn add_group(&mut self, group: u32) -> Result<(), MapsError>;

    /// Removes a group's counters (absent is fine).
    ///
    /// # Errors
    /// When the map refuses the deletion.
    fn remove_group(&mut self, group: u32) -> Result<(), MapsError>;

    /// Everything the maps hold, for a restarted node to adopt.
    ///
    /// # Errors
    /// When a map cannot be read.
    fn dump(&self) -> Result<Dump, MapsError>;
}
