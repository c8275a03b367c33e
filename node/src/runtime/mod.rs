//! Container runtime: images, OCI bundles and the libcontainer lifecycle, container logs,
//! exec and per-container usage.

pub mod container_exec;
pub mod image;
