//! A command (kubectl attach -it, kubectl run -it) under a pseudo-terminal the test types
//! into, reads and resizes, as a user's terminal would.

use std::{
    io::{Read, Write},
    os::{
        fd::{AsRawFd, OwnedFd},
        unix::process::CommandExt,
    },
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

/// A child process whose controlling terminal is a pty this side holds the master of.
pub struct Terminal {
    master: std::fs::File,
    child: Child,
    seen: Arc<Mutex<Vec<u8>>>,
}

impl std::fmt::Debug for Terminal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Terminal")
            .field("pid", &self.child.id())
            .finish_non_exhaustive()
    }
}

fn winsize(columns: u16, rows: u16) -> libc::winsize {
    libc::winsize {
        ws_row: rows,
        ws_col: columns,
        ws_xpixel: 0,
        ws_ypixel: 0,
    }
}

impl Terminal {
    /// Starts `command` in a new session whose controlling terminal is a fresh pty of
    /// `columns` x `rows`.
    ///
    /// # Errors
    /// If the pty or the process cannot be made.
    pub fn spawn(mut command: Command, columns: u16, rows: u16) -> Result<Self> {
        let size = winsize(columns, rows);
        let pty = nix::pty::openpty(Some(&size), None).context("openpty")?;
        let slave: OwnedFd = pty.slave;
        command
            .stdin(Stdio::from(slave.try_clone()?))
            .stdout(Stdio::from(slave.try_clone()?))
            .stderr(Stdio::from(slave));
        // SAFETY: between fork and exec the child only calls setsid and ioctl, both
        // async-signal-safe, on its own standard input.
        unsafe {
            command.pre_exec(|| {
                if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn().context("starting the command")?;
        drop(command);
        let master = std::fs::File::from(pty.master);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let mut reader = master.try_clone()?;
        let into = Arc::clone(&seen);
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            // EIO once the child and everything it started closed the slave.
            while let Ok(n @ 1..) = reader.read(&mut buf) {
                into.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .extend_from_slice(&buf[..n]);
            }
        });
        Ok(Self {
            master,
            child,
            seen,
        })
    }

    /// Types `text`.
    ///
    /// # Errors
    /// If the write fails.
    pub fn send(&mut self, text: &str) -> Result<()> {
        self.master.write_all(text.as_bytes())?;
        Ok(())
    }

    /// Everything the terminal showed so far.
    #[must_use]
    pub fn screen(&self) -> String {
        String::from_utf8_lossy(&self.seen.lock().unwrap_or_else(PoisonError::into_inner))
            .into_owned()
    }

    /// Waits until the terminal showed `needle`.
    ///
    /// # Errors
    /// If it did not within `timeout`.
    pub fn wait_for(&self, needle: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        while !self.screen().contains(needle) {
            if Instant::now() > deadline {
                bail!("the terminal never showed {needle:?}:\n{}", self.screen());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// Sets the terminal's size; the child's foreground process group gets `SIGWINCH`.
    ///
    /// # Errors
    /// If the ioctl fails.
    pub fn resize(&self, columns: u16, rows: u16) -> Result<()> {
        let size = winsize(columns, rows);
        // SAFETY: the master is open and TIOCSWINSZ reads one winsize from the pointer.
        let rc = unsafe { libc::ioctl(self.master.as_raw_fd(), libc::TIOCSWINSZ, &raw const size) };
        if rc < 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        Ok(())
    }

    /// Waits for the child to exit.
    ///
    /// # Errors
    /// If it did not within `timeout` (it is then killed).
    pub fn wait(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!("the command did not exit:\n{}", self.screen());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
