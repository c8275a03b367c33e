//! Child processes a test started, ended by PID on drop.

use std::process::{Child, Command};

use anyhow::{Context, Result};

/// A child process that is killed (SIGKILL) and reaped when dropped.
#[derive(Debug)]
pub struct ChildGuard {
    child: Child,
}

impl ChildGuard {
    /// Spawns the command.
    ///
    /// # Errors
    /// If it cannot be started.
    pub fn spawn(cmd: &mut Command) -> Result<Self> {
        let child = cmd
            .spawn()
            .with_context(|| format!("spawning {}", cmd.get_program().display()))?;
        Ok(Self { child })
    }

    /// The child's PID.
    #[must_use]
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The underlying child, e.g. to take its pipes.
    pub fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// CPU seconds (user + system) a process has used.
///
/// # Errors
/// If its `/proc/<pid>/stat` cannot be read or parsed.
pub fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
    let rest = stat.rsplit_once(')').context("malformed stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    #[expect(clippy::cast_precision_loss, reason = "clock ticks per second")]
    Ok(ticks / hz as f64)
}

/// A process's resident memory (`VmRSS`) in MiB.
///
/// # Errors
/// If its `/proc/<pid>/status` cannot be read or holds no `VmRSS`.
pub fn rss_mib(pid: u32) -> Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .context("no VmRSS")?
        .parse()?;
    Ok(kb / 1024.0)
}
