//! skiff-api is the API server: it serves the Kubernetes REST API (discovery, OpenAPI,
//! create/read/update/patch/delete, watch, tables, subresources) over hyper on top of a
//! [`skiff_store::Store`], so kubectl and every other Kubernetes client work against skiff
//! unchanged.

#![forbid(unsafe_code)]

mod allocator;
mod bootstrap;
mod discovery;
mod http;
mod metrics;
mod objects;
mod protobuf;
mod route;
mod server;
mod verbs;

pub use server::{Config, Server, ServerError};
