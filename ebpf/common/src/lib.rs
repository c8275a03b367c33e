//! skiff-ebpf-common holds the map keys and values that skiff's eBPF programs and the node's
//! loader share. Both sides compile these same `#[repr(C)]` definitions, so a layout change
//! can never split them; every padding byte is an explicit field so hash-map keys compare
//! equal byte for byte.
//!
//! - [`service`]: what every Service datapath reads (frontends, backend slot groups,
//!   session affinity, counters, the node's configuration);
//! - [`socket`]: the socket hooks' reverse translation.
//!
//! The TC path's connection tracking and NAT maps get a module of their own beside these.
#![no_std]

pub mod service;
pub mod socket;

pub use service::{
    AffinityKey, AffinityValue, Backend, BackendKey, Config, Counters, FrontendKey, FrontendValue,
};
pub use socket::{SockRevNatKey, SockRevNatValue};
