//! Kinds with no rules of their own (ServiceAccount, Lease, EndpointSlice, PriorityClass,
//! ControllerRevision): every hook keeps its default.

use crate::Strategy;

/// A kind without particular behaviour.
#[derive(Debug)]
pub struct Plain;

impl Strategy for Plain {}
