//! The Node object: registration, status reports with conditions and capacity read from
//! the host, and the Lease the node lifecycle controller watches.

pub mod capacity;
pub mod conditions;
pub mod host;
pub mod lease;
pub mod register;
