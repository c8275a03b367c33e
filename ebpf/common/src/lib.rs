//! skiff-ebpf-common holds the map keys and values that skiff's eBPF programs and the node's
//! loader share. Both sides compile these same `#[repr(C)]` definitions, so a layout change
//! can never split them; every padding byte is an explicit field so hash-map keys compare
//! equal byte for byte.
#![no_std]

pub mod service;

pub use service::{
    BACKENDS_MAP, Backend, BackendKey, MAX_BACKENDS, MAX_REV_NAT, MAX_SERVICES, REV_NAT_MAP,
    RevNatKey, RevNatValue, SERVICES_MAP, ServiceKey, ServiceValue,
};
