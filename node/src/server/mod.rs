//! The node's HTTP endpoint: container logs, exec and attach, usage and image import,
//! reached by the API server's `pods/log`, `pods/exec` and `pods/attach`.
