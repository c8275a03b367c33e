//! Encryption at rest: kube-apiserver's `EncryptionConfiguration` applied as a store
//! wrapper, the one seam every object passes through on its way to and from the store.

mod config;
mod provider;
mod store;
#[cfg(test)]
mod tests;

pub use config::{EncryptionConfig, EncryptionError};
pub use store::EncryptedStore;
