//! skiff-control wires the control plane together: the `control` binary runs the API server
//! on a store (and, as they arrive, the scheduler and controllers), and `ctl` is the
//! command-line client that talks to it like kubectl does.

pub mod ctl;
