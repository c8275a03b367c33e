//! skiff-machinery is the part of the Kubernetes API machinery that needs no I/O: the patch
//! formats kubectl sends (JSON merge, strategic merge, JSON patch), label and field
//! selectors, name and label validation, resource quantities and quota usage,
//! `metav1.Status` errors, Go's `omitempty` zero values, and the pieces of HTTP both the
//! API server and the node's endpoint speak (the exec/attach channel protocol, typed
//! answers). The API server, the controllers and the node call it; everything here is a pure
//! function with fast unit tests.

#![forbid(unsafe_code)]

pub mod apply;
pub mod channel;
pub mod omitempty;
pub mod patch;
pub mod portforward;
pub mod quantity;
pub mod quota;
pub mod response;
pub mod selector;
pub mod spdy;
pub mod status;
pub mod user;
pub mod validation;
