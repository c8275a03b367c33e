//! skiff-api is the API server: it serves the Kubernetes REST API (discovery, OpenAPI,
//! create/read/update/patch/delete, watch, tables, subresources) over HTTPS (hyper on rustls, every request authenticated) on top of a
//! [`skiff_store::Store`], so kubectl and every other Kubernetes client work against skiff
//! unchanged. The verbs are generic over kinds (what differs lives with each kind's
//! strategy in `skiff-resources`); the node proxy (`log`, `exec`, `attach`) sits beside
//! them, relaying streams from the pod's node.

#![forbid(unsafe_code)]

mod allocator;
mod audit;
pub mod authn;
mod authz;
mod bootstrap;
mod cache;
mod ctx;
mod discovery;
pub mod encryption;
pub mod flowcontrol;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
mod http;
pub mod kubelet_client;
mod metrics;
mod metrics_api;
mod node_proxy;
mod objects;
mod podsecurity;
mod protobuf;
mod route;
mod server;
pub mod tls;
mod verbs;

pub use audit::{AuditError, Auditor, Policy as AuditPolicy, PolicyError as AuditPolicyError};
pub use server::{Config, Security, Server, ServerError};
