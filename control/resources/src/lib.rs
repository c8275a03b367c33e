//! skiff-resources is the catalog of the kinds the API server serves. Each kind is one entry
//! in [`catalog`], built from its `k8s-openapi` type, so adding a resource is one line; the
//! API server routes, discovers, defaults, validates, describes (OpenAPI) and prints
//! (tables) by this catalog alone.

#![forbid(unsafe_code)]

mod catalog;
pub mod defaults;
pub mod fields;
pub mod openapi;
pub mod table;
pub mod validate;

pub use catalog::{ResourceInfo, Subresource, all, by_kind, by_plural};
