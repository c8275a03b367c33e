//! skiff-pki is the cluster's certificate authority: it creates (or loads) the CA that
//! `control` keeps in its data directory, issues serving certificates and client
//! certificates whose subject is an identity (`CN` = user, `O` = groups, as Kubernetes reads
//! them), reads that identity back from a verified certificate, and writes kubeconfigs that
//! carry a client certificate, and signs and verifies ServiceAccount tokens. Both halves use it: `control` for its own identities and the
//! admin kubeconfig, the tests and `xtask up` for node kubeconfigs.

#![forbid(unsafe_code)]

pub mod ca;
pub mod identity;
pub mod kubeconfig;
pub mod satoken;

pub use ca::{Ca, CaError, Issued};
pub use identity::{IdentityError, Subject};
