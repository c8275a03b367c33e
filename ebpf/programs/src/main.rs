//! skiff's eBPF programs: the Service load balancer. The socket hooks ([`socket`]) rewrite a
//! Service address to a backend before a packet exists, for every connection that starts on
//! the node; the TC programs on the node's uplinks ([`tc`]) translate traffic that arrives
//! from outside. Both read the same maps ([`maps`]) and choose backends alike ([`lb`]).
#![no_std]
#![no_main]

mod lb;
mod maps;
mod socket;
mod tc;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
