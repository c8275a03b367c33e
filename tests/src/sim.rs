//! Simulated nodes (`node --simulate`) for a test's control plane, and polling helpers
//! for the states controllers converge to.

use std::{
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
}

impl SimNodes {
    /// Starts `count` simulated nodes named `<prefix><i>` against `cp` (extra flags such
    /// as `--cpu 2` or `--taints k=v:NoSchedule`) and waits until all are Ready.
    ///
    /// # Errors
    /// If the nodes are not Ready within 30 s.
    pub fn start(cp: &ControlPlane, count: usize, prefix: &str, extra: &[&str]) -> Result<Self> {
        let log = std::fs::File::create(
            std::env::temp_dir().join(format!("skiff-sim-{prefix}{}.log", std::process::id())),
        )?;
        let process = ChildGuard::spawn(
            Command::new(crate::bin("node"))
                .args([
                    "--simulate",
                    &count.to_string(),
                    "--name-prefix",
                    prefix,
                    "--server",
                    &cp.url(),
                ])
                .args(["--lease-renew-interval-seconds", "1"])
                .args(extra)
                .env("RUST_LOG", "info")
                .stdout(Stdio::null())
                .stderr(log),
        )?;
        let nodes = Self {
            process: Some(process),
            prefix: prefix.to_owned(),
            count,
        };
        wait_for(
            &format!("{count} Ready nodes {prefix}*"),
            Duration::from_secs(30),
            || {
                let list = get_json(cp, "/api/v1/nodes")?;
                let ready = items(&list)
                    .iter()
                    .filter(|n| {
                        name(n).starts_with(prefix) && condition(n, "Ready") == Some("True")
                    })
                    .count();
                Ok((ready == count).then_some(()))
            },
        )?;
        Ok(nodes)
    }

    /// Kills the process at once (its nodes stop renewing their Leases).
    pub fn kill(&mut self) {
        self.process = None;
    }

    /// The node names.
    #[must_use]
    pub fn names(&self) -> Vec<String> {
        (0..self.count)
            .map(|i| format!("{}{i}", self.prefix))
            .collect()
    }
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

/// GETs `path` from the API server as JSON.
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
