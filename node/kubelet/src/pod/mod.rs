//! Pods on a node: turning a bound pod into sandbox, volumes and containers, and keeping
//! its status.

pub mod backend;
pub mod backoff;
pub mod command;
pub mod dispatch;
pub mod probe;
pub mod records;
pub mod service_env;
pub mod status;
pub mod volume;
pub mod worker;
