//! Pods on a real node: turning a bound pod into sandbox, volumes and containers, and
//! keeping its status.

pub mod backoff;
pub mod status;
