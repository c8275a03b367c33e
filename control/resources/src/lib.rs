//! skiff-resources is the catalog of the kinds the API server serves. Each kind is one entry
//! in [`catalog`], built from its `k8s-openapi` type, so adding a resource is one line; the
//! API server routes, discovers and stores by this catalog alone.

mod catalog;

pub use catalog::{ResourceInfo, Subresource, all, by_kind, by_plural};
