//! The privileged boundary of the data plane: single-entry writes to the Service maps, so the
//! bookkeeping above can be unit-tested without a kernel.

use skiff_ebpf_common::{Backend, BackendKey, ServiceKey, ServiceValue};

/// Failures writing the data-plane maps.
#[derive(Debug, thiserror::Error)]
pub enum MapsError {
    /// The kernel refused to update or delete a map entry.
    #[error("bpf map {map}: {operation} failed")]
    Map {
        /// Which map.
        map: &'static str,
        /// `update` or `delete`.
        operation: &'static str,
        /// The kernel's answer.
        #[source]
        source: aya::maps::MapError,
    },
}

/// One-entry operations on the Service and backend maps.
pub trait ServiceMaps {
    /// Inserts or replaces a Service frontend.
    ///
    /// # Errors
    /// When the map refuses the write.
    fn set_service(&mut self, key: ServiceKey, value: ServiceValue) -> Result<(), MapsError>;

    /// Removes a Service frontend.
    ///
    /// # Errors
    /// When the map refuses the deletion.
    fn delete_service(&mut self, key: ServiceKey) -> Result<(), MapsError>;

    /// Inserts or replaces one backend slot.
    ///
    /// # Errors
    /// When the map refuses the write.
    fn set_backend(&mut self, key: BackendKey, backend: Backend) -> Result<(), MapsError>;

    /// Removes one backend slot.
    ///
    /// # Errors
    /// When the map refuses the deletion.
    fn delete_backend(&mut self, key: BackendKey) -> Result<(), MapsError>;
}
