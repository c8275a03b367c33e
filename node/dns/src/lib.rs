//! skiff-node-dns is the cluster DNS every node daemon serves to its own pods, as
//! the node-local DNS cache and the `kubernetes` plugin of `CoreDNS` together do: [`zone`] turns
//! Services, EndpointSlices and Pods into records (pure, no sockets), [`answer`] answers a
//! query from them with hickory-proto messages (NXDOMAIN and NODATA told apart, 5 s TTLs),
//! and [`server`] serves UDP and TCP and forwards every other name to the node's upstream
//! resolvers ([`upstream`]).

#![forbid(unsafe_code)]

pub mod answer;
pub mod server;
pub mod upstream;
pub mod zone;

pub use answer::{Outcome, TTL, answer};
pub use server::{DnsServer, ServerError, SharedZone};
pub use zone::{Data, Source, Zone};
