//! skiff's eBPF programs: the Service load balancer. The socket hooks ([`socket`]) rewrite a
//! Service address to a backend before a packet exists, for every connection that starts on
//! the node; the maps they read ([`maps`]) and the backend choice ([`lb`]) are shared with
//! the programs on the node's uplink.
#![no_std]
#![no_main]

mod lb;
mod maps;
mod socket;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
