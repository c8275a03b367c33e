//! Runs libcontainer's create or exec in a forked, single-threaded copy of this process: of
//! the forkserver for creates (see [`crate::forkserver`]), of the daemon for execs and when
//! no forkserver runs.
//!
//! libcontainer clones with the raw `clone3` syscall, so no `atfork` handler runs: a child
//! cloned straight from the multi-threaded daemon inherits every lock another thread held at
//! that moment, malloc's arena locks among them, and hung in `realloc` under a burst of pod
//! starts. glibc's `fork` takes and resets malloc's locks around the fork, so the forked copy
//! can allocate, and with a single thread its own clones are safe. The copy exits as soon as
//! the container is created; the container's init, its child, is then re-parented to the
//! daemon, a child subreaper, which reaps it as before.
//!
//! A create that fails ends and reaps, in the copy, every process it made: libcontainer
//! returns from a failed create without waiting for its intermediate and init processes,
//! and left alone they would turn into zombies of this process (one `[youki:[1:INTER]]`
//! per failed try). Only the copy's own children are touched, so a concurrent create or
//! exec keeps its processes.

use std::{
    io::Read,
    os::fd::{AsFd, OwnedFd},
    panic::AssertUnwindSafe,
};

use nix::{
    errno::Errno,
    sys::wait::{WaitPidFlag, WaitStatus, waitpid},
    unistd::{ForkResult, Pid, fork},
};

/// Makes this process the reaper of its orphaned descendants, so that containers created
/// by a forked copy become its children once the copy exits.
///
/// # Errors
/// If `prctl` fails.
pub fn become_subreaper() -> std::io::Result<()> {
    // SAFETY: PR_SET_CHILD_SUBREAPER takes an integer flag and touches no memory of ours.
    let r = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Runs `create` in a forked copy of this process and returns what it returned: the pid
/// of the process it created, or its error message. Several may run at once: each copy has
/// its own working directory and locks. The caller must be a child subreaper
/// ([`become_subreaper`]) to reap the created process. When `create` fails, every process
/// it started is killed and reaped before this returns.
///
/// # Errors
/// If the fork, the result pipe or the wait fails.
pub(crate) fn in_forked_copy(
    create: impl FnOnce() -> Result<i32, String>,
) -> std::io::Result<Result<i32, String>> {
    let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    // SAFETY: the child only runs `create` (libcontainer code that allocates, which glibc's
    // fork makes safe, and takes no lock of this daemon), writes one message and `_exit`s
    // without running destructors or atexit handlers that belong to the parent.
    match unsafe { fork() }? {
        ForkResult::Child => {
            drop(read);
            let message = run_in_copy(create);
            // One write below PIPE_BUF arrives whole; the parent reads it after our exit.
            let _ = nix::unistd::write(write.as_fd(), &message);
            // SAFETY: ends the forked copy at once, as after any fork in a threaded process.
            unsafe { libc::_exit(0) }
        }
        ForkResult::Parent { child } => {
            drop(write);
            // Wait first: the created processes hold the pipe's write end until they exec,
            // so end-of-file would not come, but the message is in the pipe once we exit.
            loop {
                match waitpid(child, None) {
                    Ok(WaitStatus::Exited(..) | WaitStatus::Signaled(..)) => break,
                    Ok(_) | Err(Errno::EINTR) => {}
                    Err(err) => return Err(err.into()),
                }
            }
            read_message(read)
        }
    }
}

/// Runs `create` in a forked copy and returns the message the copy sends back: `ok PID` or
/// `err MESSAGE`, at most 4,000 bytes (below `PIPE_BUF`, so one write arrives whole). A
/// failed or panicking create has every process it started killed and reaped first.
pub(crate) fn run_in_copy(create: impl FnOnce() -> Result<i32, String>) -> Vec<u8> {
    let outcome = std::panic::catch_unwind(AssertUnwindSafe(create))
        .unwrap_or_else(|_| Err("libcontainer panicked".to_owned()));
    if outcome.is_err() {
        end_children();
    }
    let mut message = match outcome {
        Ok(pid) => format!("ok {pid}"),
        Err(err) => format!("err {err}"),
    }
    .into_bytes();
    message.truncate(4000);
    message
}

/// Kills and reaps every child of this process, the forked copy: after a failed create
/// these are the attempt's intermediate and init processes and nothing else. Repeats until
/// none is left, so a process cloned while the previous round was killing is caught too.
fn end_children() {
    loop {
        for pid in children() {
            // ESRCH: it ended meanwhile; it is reaped below all the same.
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        }
        // __WALL: the init is cloned with CLONE_PARENT and no exit signal, which plain
        // waitpid does not wait for.
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::__WALL)) {
            Ok(_) | Err(Errno::EINTR) => {}
            // ECHILD: none left.
            Err(_) => return,
        }
    }
}

/// The children of every thread of this process, from `/proc/self/task/*/children`.
fn children() -> Vec<Pid> {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("children")).ok())
        .flat_map(|list| {
            list.split_whitespace()
                .filter_map(|pid| pid.parse().ok())
                .map(Pid::from_raw)
                .collect::<Vec<_>>()
        })
        .collect()
}

fn read_message(read: OwnedFd) -> std::io::Result<Result<i32, String>> {
    nix::fcntl::fcntl(
        read.as_fd(),
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    )?;
    let mut buf = vec![0u8; 4096];
    let n = match std::fs::File::from(read).read(&mut buf) {
        Ok(n) => n,
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => 0,
        Err(e) => return Err(e),
    };
    Ok(parse(&String::from_utf8_lossy(&buf[..n])))
}

/// The result a copy sent ([`run_in_copy`]).
pub(crate) fn parse(message: &str) -> Result<i32, String> {
    if let Some(pid) = message.strip_prefix("ok ") {
        return pid
            .trim()
            .parse()
            .map_err(|_| format!("bad pid {pid:?} from the forked copy"));
    }
    Err(message
        .strip_prefix("err ")
        .unwrap_or("the forked copy died without a result")
        .to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_copy_reports_its_result_or_its_error() {
        assert_eq!(in_forked_copy(|| Ok(42)).unwrap(), Ok(42));
        assert_eq!(
            in_forked_copy(|| Err("no such file".to_owned())).unwrap(),
            Err("no such file".to_owned())
        );
    }

    /// Whether `pid` is still around (running, or a zombie nobody reaped).
    fn exists(pid: i32) -> bool {
        std::path::Path::new(&format!("/proc/{pid}")).exists()
    }

    #[test]
    fn a_failed_create_leaves_no_process_and_no_zombie() {
        // What a failed libcontainer create leaves: a child still running (an init waiting
        // to start) and one that has already exited (the intermediate process).
        let failed = in_forked_copy(|| {
            let spawn = |exit_at_once: bool| {
                // SAFETY: the copy is single-threaded; the child only sleeps or exits.
                match unsafe { fork() } {
                    Ok(ForkResult::Child) => {
                        if !exit_at_once {
                            std::thread::sleep(std::time::Duration::from_mins(1));
                        }
                        // SAFETY: ends the child without running the copy's destructors.
                        unsafe { libc::_exit(1) }
                    }
                    Ok(ForkResult::Parent { child }) => child.as_raw(),
                    Err(_) => 0,
                }
            };
            let (running, exited) = (spawn(false), spawn(true));
            Err(format!("{running} {exited}"))
        })
        .unwrap()
        .unwrap_err();
        let pids: Vec<i32> = failed.split(' ').map(|p| p.parse().unwrap()).collect();
        assert_eq!(pids.len(), 2);
        for pid in pids {
            assert!(pid > 0);
            assert!(!exists(pid), "process {pid} of the failed create is left");
        }
    }

    #[test]
    fn a_copy_that_dies_is_an_error_not_a_hang() {
        // SAFETY: ends the forked copy at once.
        let died = in_forked_copy(|| unsafe { libc::_exit(3) }).unwrap();
        assert_eq!(
            died,
            Err("the forked copy died without a result".to_owned())
        );
    }
}
