//! skiff-machinery is the part of the Kubernetes API machinery that needs no I/O: the patch
//! formats kubectl sends (JSON merge, strategic merge, JSON patch), label and field
//! selectors, name and label validation, resource quantities and quota usage, and
//! `metav1.Status` errors. The API server calls
//! it; everything here is a pure function with fast unit tests.

#![forbid(unsafe_code)]

pub mod apply;
pub mod patch;
pub mod quantity;
pub mod quota;
pub mod selector;
pub mod status;
pub mod validation;
