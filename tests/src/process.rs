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
