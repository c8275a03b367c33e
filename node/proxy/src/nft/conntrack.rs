//! Stale UDP flows in the nftables mode: conntrack keeps sending a UDP flow to the backend
//! it was translated to, so when a backend leaves its Service its entries are deleted, as
//! kube-proxy does, with the `conntrack` tool when it is installed (no maintained crate
//! speaks conntrack netlink); without it, the entries expire on their own (30 s for an
//! unanswered flow, 120 s for an answered one).

use std::{collections::BTreeSet, net::SocketAddrV4, path::PathBuf, process::Command};

/// Failures deleting conntrack entries.
#[derive(Debug, thiserror::Error)]
pub enum ConntrackError {
    /// The tool could not be run.
    #[error("running {tool}")]
    Run {
        /// The tool's path.
        tool: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// The `conntrack` tool, when it is on `PATH`.
#[must_use]
pub fn tool() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("conntrack"))
        .find(|p| p.is_file())
}

/// Deletes the UDP conntrack entries whose reply comes from one of `backends` (the flows
/// translated to them); returns how many backends were handled.
///
/// # Errors
/// When the tool cannot be run (its exit status is 1 when nothing matched, which is fine).
pub fn forget_udp(
    tool: &std::path::Path,
    backends: &BTreeSet<SocketAddrV4>,
) -> Result<usize, ConntrackError> {
    for backend in backends {
        Command::new(tool)
            .args(["-D", "-p", "udp", "--reply-src"])
            .arg(backend.ip().to_string())
            .arg("--reply-port-src")
            .arg(backend.port().to_string())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .map_err(|source| ConntrackError::Run {
                tool: tool.to_owned(),
                source,
            })?;
    }
    Ok(backends.len())
}
