//! A real etcd (Debian's etcd-server) on loopback ports in a temporary directory, for tests
//! that need the etcd backend; stopped by PID and removed on drop.

use std::{
    net::{TcpListener, TcpStream},
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::process::ChildGuard;

/// Where Debian installs etcd.
pub const ETCD: &str = "/usr/bin/etcd";

/// A running single-member etcd cluster listening on 127.0.0.1 only.
#[derive(Debug)]
pub struct Etcd {
    // Declared first so the process ends before its directory goes.
    _process: ChildGuard,
    dir: tempfile::TempDir,
    client_url: String,
}

impl Etcd {
    /// Starts etcd and waits until it accepts connections.
    ///
    /// # Errors
    /// If etcd is missing, fails to start, or does not listen within 20 s.
    pub fn start() -> Result<Self> {
        let dir = tempfile::tempdir().context("etcd temp dir")?;
        let client = free_port()?;
        let peer = free_port()?;
        let client_url = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let log = std::fs::File::create(dir.path().join("etcd.log"))?;
        let process = ChildGuard::spawn(
            Command::new(ETCD)
                .args(["--name", "skiff-test"])
                .arg("--data-dir")
                .arg(dir.path().join("data"))
                .args(["--listen-client-urls", &client_url])
                .args(["--advertise-client-urls", &client_url])
                .args(["--listen-peer-urls", &peer_url])
                .args(["--initial-advertise-peer-urls", &peer_url])
                .args(["--initial-cluster", &format!("skiff-test={peer_url}")])
                .stdout(Stdio::null())
                .stderr(log),
        )?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", client)).is_err() {
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(dir.path().join("etcd.log")).unwrap_or_default();
                bail!("etcd did not listen on {client_url} within 20 s:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Self {
            _process: process,
            dir,
            client_url,
        })
    }

    /// The client URL, e.g. `http://127.0.0.1:34567`.
    #[must_use]
    pub fn url(&self) -> &str {
        &self.client_url
    }

    /// The data directory.
    #[must_use]
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }
}

/// A loopback port nobody listens on right now.
///
/// # Errors
/// If no port can be bound.
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}
