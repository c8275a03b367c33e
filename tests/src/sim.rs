//! Simulated nodes (`node --simulate`) for a test's control plane, and polling helpers
//! for the states controllers converge to.

use std::{
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::{control::ControlPlane, process::ChildGuard};

/// A `node --simulate` process; killed (SIGKILL) on drop, which stops its Leases.
#[derive(Debug)]
pub struct SimNodes {
    process: Option<ChildGuard>,
    prefix: String,
    count: usize,
    log: PathBuf,
}

impl SimNodes {
    /// Starts `count` simulated nodes named `<prefix><i>` against `server` (extra flags
    /// such as `--cpu 2` or `--taints k=v:NoSchedule`; a later flag wins over an earlier
    /// one) and waits until all are Ready and have their Lease through the API (a node is
    /// created Ready, its Lease a moment later). Leases are renewed every second unless
    /// `extra` says otherwise.
    ///
    /// # Errors
    /// If the process exits, or the nodes are not Ready in time (30 s plus 20 ms a node).
    pub fn start(cp: &ControlPlane, count: usize, prefix: &str, extra: &[&str]) -> Result<Self> {
        let log = std::env::temp_dir().join(format!("{}.log", crate::unique_name("skiff-sim")));
        let process = ChildGuard::spawn(
            Command::new(crate::bin("node"))
                .args(["--simulate", &count.to_string(), "--name-prefix", prefix])
                .arg("--kubeconfig")
                .arg(cp.kubeconfig())
                .args(["--lease-renew-interval-seconds", "1"])
                .args(extra)
                .env("RUST_LOG", "info")
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log)?),
        )?;
        let mut nodes = Self {
            process: Some(process),
            prefix: prefix.to_owned(),
            count,
            log,
        };
        let timeout = Duration::from_secs(30) + Duration::from_millis(20) * u32::try_from(count)?;
        // Listing thousands of nodes is not free: poll large fleets less often.
        let every =
            Duration::from_millis(100).max(Duration::from_micros(200) * u32::try_from(count)?);
        let start = Instant::now();
        loop {
            if let Some(status) = nodes.exited()? {
                bail!("node --simulate exited ({status}):\n{}", nodes.log());
            }
            let ready = ready_nodes(cp, prefix);
            if let Ok(n) = &ready
                && *n == count
                && leases(cp, prefix).is_ok_and(|n| n == count)
            {
                return Ok(nodes);
            }
            if start.elapsed() > timeout {
                bail!(
                    "{count} simulated nodes {prefix}* not Ready within {timeout:?} ({ready:?}):\n{}",
                    nodes.log()
                );
            }
            std::thread::sleep(every);
        }
    }

    fn exited(&mut self) -> Result<Option<std::process::ExitStatus>> {
        match self.process.as_mut() {
            Some(p) => Ok(p.child_mut().try_wait()?),
            None => Ok(None),
        }
    }

    /// Kills the process at once (its nodes stop renewing their Leases).
    pub fn kill(&mut self) {
        self.process = None;
    }

    /// The process's PID while it runs.
    #[must_use]
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(ChildGuard::id)
    }

    /// What the process logged so far.
    #[must_use]
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The node names.
    #[must_use]
    pub fn names(&self) -> Vec<String> {
        (0..self.count)
            .map(|i| format!("{}{i}", self.prefix))
            .collect()
    }
}

impl Drop for SimNodes {
    fn drop(&mut self) {
        self.process = None;
        let _ = std::fs::remove_file(&self.log);
    }
}

/// Whether `name` is `<prefix><digits>`.
fn named(name: &str, prefix: &str) -> bool {
    name.strip_prefix(prefix)
        .is_some_and(|rest| !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit()))
}

/// The `items` of the list at `path`.
fn list(cp: &ControlPlane, path: &str) -> Result<Vec<Value>> {
    let (code, body) = http_get(cp, path)?;
    if code != 200 {
        bail!("listing {path} answered {code}");
    }
    let list: Value = serde_json::from_slice(&body).context("a list")?;
    Ok(items(&list))
}

/// How many Nodes named `<prefix><digits>` are Ready.
fn ready_nodes(cp: &ControlPlane, prefix: &str) -> Result<usize> {
    Ok(list(cp, "/api/v1/nodes")?
        .iter()
        .filter(|n| named(name(n), prefix) && condition(n, "Ready") == Some("True"))
        .count())
}

/// How many node Leases named `<prefix><digits>` exist.
fn leases(cp: &ControlPlane, prefix: &str) -> Result<usize> {
    let path = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases";
    Ok(list(cp, path)?
        .iter()
        .filter(|l| named(name(l), prefix))
        .count())
}

/// A GET of `path` as the admin, as HTTP/1.0 so the answer is never chunked; returns the
/// status code and the body.
fn http_get(cp: &ControlPlane, path: &str) -> Result<(u16, Vec<u8>)> {
    let request =
        format!("GET {path} HTTP/1.0\r\nHost: localhost\r\nAccept: application/json\r\n\r\n");
    let response = cp.exchange(request.as_bytes(), Duration::from_secs(30))?;
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no end of HTTP headers")?;
    let head = String::from_utf8_lossy(&response[..split]);
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("no HTTP status line")?;
    Ok((code, response[split + 4..].to_vec()))
}

/// Polls `check` every 100 ms until it yields a value.
///
/// # Errors
/// If `timeout` passes first (with the last error, if any).
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let start = Instant::now();
    let mut last_err = None;
    loop {
        match check() {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last_err = Some(e),
        }
        if start.elapsed() > timeout {
            match last_err {
                Some(e) => bail!("timed out waiting for {what}: {e:#}"),
                None => bail!("timed out waiting for {what}"),
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// GETs `path` from the API server as JSON (`null` for 404).
///
/// # Errors
/// On connection failure or a non-JSON body.
pub fn get_json(cp: &ControlPlane, path: &str) -> Result<Value> {
    let (code, body) = cp.http("GET", path, "application/json", b"")?;
    if code == 404 {
        return Ok(Value::Null);
    }
    serde_json::from_str(&body).with_context(|| format!("GET {path} answered {code}: {body}"))
}

/// The `items` of a list.
#[must_use]
pub fn items(list: &Value) -> Vec<Value> {
    list.get("items")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

/// `metadata.name`.
#[must_use]
pub fn name(obj: &Value) -> &str {
    obj.pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
}

/// The status of condition `type_`.
#[must_use]
pub fn condition<'a>(obj: &'a Value, type_: &str) -> Option<&'a str> {
    obj.pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c.get("type").and_then(Value::as_str) == Some(type_))?
        .get("status")?
        .as_str()
}

/// Pods of `namespace` that are Ready and not being deleted, with their nodes.
///
/// # Errors
/// If the list cannot be read.
pub fn ready_pods(
    cp: &ControlPlane,
    namespace: &str,
    selector: &str,
) -> Result<Vec<(String, String)>> {
    let list = get_json(
        cp,
        &format!("/api/v1/namespaces/{namespace}/pods?labelSelector={selector}"),
    )?;
    Ok(items(&list)
        .iter()
        .filter(|p| {
            p.pointer("/metadata/deletionTimestamp").is_none()
                && condition(p, "Ready") == Some("True")
        })
        .map(|p| {
            (
                name(p).to_owned(),
                p.pointer("/spec/nodeName")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
            )
        })
        .collect())
}
