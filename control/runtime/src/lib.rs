//! skiff-control-runtime is what the scheduler and every controller share to watch and act
//! on the cluster, like client-go's informers, record and leaderelection packages plus
//! controller-runtime's helpers: one watch per kind for the whole `control` process
//! ([`informers`]), Events folded into counts ([`events`]), expectations of what a
//! controller just did ([`expectations`]), owner references and adoption ([`ownership`]),
//! typed status diffs ([`status`]), per-object exponential back-off and the loop that runs a
//! controller ([`controller`]), leader election on a Lease ([`leader`]), a clock tests can
//! move ([`clock`]), the node-selector, affinity and taint rules ([`placement`]), and how
//! claims match `PersistentVolumes` ([`volumes`]).
//!
//! It depends on no scheduler or controller; both depend on it.

#![forbid(unsafe_code)]

pub mod clock;
pub mod controller;
pub mod events;
pub mod expectations;
pub mod informers;
pub mod leader;
pub mod ownership;
pub mod placement;
pub mod status;
pub mod volumes;

pub use clock::{Clock, FakeClock, SystemClock};
pub use controller::{Backoff, Context};
pub use events::Recorder;
pub use informers::{Informer, Informers};
