//! skiff-resources is the catalog of the kinds the API server serves. Each kind is one entry
//! in [`catalog`], built from its `k8s-openapi` type and tied to the kind's [`Strategy`] in
//! `kinds/` (defaults, validation, allocation, deletion rules, table columns), so the API
//! server routes, discovers, defaults, validates, describes (OpenAPI), prints (tables) and
//! writes (the Go wire format, [`wire`]) every kind by this catalog alone.

#![forbid(unsafe_code)]

mod catalog;
pub mod fields;
mod kinds;
pub mod openapi;
mod strategy;
pub mod table;
pub mod wire;

pub use catalog::{Conversion, ResourceInfo, Subresource, all, by_kind, by_plural};
pub use kinds::{IS_DEFAULT_CLASS, RBAC_GROUP, ephemeral_container_changes, is_default_class};
pub use strategy::{AllocError, Deletion, Pools, Strategy};
