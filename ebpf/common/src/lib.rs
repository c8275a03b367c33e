//! skiff-ebpf-common holds the map keys and values that skiff's eBPF programs and the node's
//! loader share. Both sides compile these same `#[repr(C)]` definitions, so a layout change
//! can never split them; every padding byte is an explicit field so hash-map keys compare
//! equal byte for byte.
//!
//! - [`service`]: what every Service datapath reads (frontends, backend slot groups,
//!   session affinity, counters, the node's configuration);
//! - [`socket`]: the socket hooks' reverse translation;
//! - [`nat`]: the TC path's uplinks, connection tracking and packet arithmetic.
#![no_std]

pub mod nat;
pub mod service;
pub mod socket;

pub use nat::{CtKey, CtValue, Uplink};
pub use service::{
    AffinityKey, AffinityValue, Backend, BackendKey, Config, Counters, FrontendKey, FrontendValue,
};
pub use socket::{SockRevNatKey, SockRevNatValue};
