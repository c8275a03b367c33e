//! The nftables mode: the same planned entries as the eBPF maps, written into an nftables
//! table of the node's own (`ip skiff-proxy-<node>`) in kube-proxy's nftables layout, one
//! transaction per sync (see [`rules`] for the layout, [`table`] for the bookkeeping).

pub mod conntrack;
pub mod counters;
pub mod kernel;
pub mod rules;
pub mod table;

pub use kernel::{Nft, NftCli, NftError};
pub use table::NftTable;

/// The table of node `node`: its own, so nodes sharing a network namespace (and anything
/// else using nftables) never touch each other's.
#[must_use]
pub fn table_name(node: &str) -> String {
    format!("skiff-proxy-{node}")
}
