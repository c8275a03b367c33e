//! The real node daemon: Node registration, Lease renewal, the pod watch and the state
//! directory that lets a restarted daemon adopt what still runs.

pub mod backend;
pub mod capacity;
pub mod conditions;
pub mod endpoint;
pub mod host;
pub mod lease;
pub mod register;
pub mod run;
