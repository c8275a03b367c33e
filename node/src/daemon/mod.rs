//! The real node daemon: the kubelet's backend over the runtime, the pod network and the
//! image store, the endpoint's backend, and the main loop with its state directory that
//! lets a restarted daemon adopt what still runs.

pub mod announce;
pub mod backend;
pub mod cgroups;
pub mod dns;
pub mod endpoint;
pub mod health;
pub mod informer;
pub mod nft_counters;
pub mod oci;
pub mod peers;
pub mod run;
pub mod services;
pub mod sources;
pub mod storage;
