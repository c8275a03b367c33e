//! Placeholder, filled by the eBPF work.
#![no_std]
