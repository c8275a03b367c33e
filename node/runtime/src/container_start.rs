//! `start`: writes the bundle (OCI `config.json`, stdio FIFOs, skiff's metadata), creates
//! and starts the container with libcontainer, then hands it to the exit watcher and the
//! log pump. A failed start removes everything it made.

use std::{
    fs::{self, OpenOptions},
    os::{fd::OwnedFd, unix::fs::OpenOptionsExt},
    path::Path,
    time::SystemTime,
};

use libcontainer::{
    container::{Container, builder::ContainerBuilder},
    syscall::syscall::SyscallType,
};
use nix::sys::stat::Mode;
use tokio::net::unix::pipe;

use super::{
    ContainerConfig, RuntimeError, Started,
    executor::EnvExecutor,
    libcontainer::{
        BundleMeta, Libcontainer, META_FILE, STDERR_FIFO, STDIN_FIFO, STDOUT_FIFO, blocking,
    },
    spec::build_spec,
};

impl Libcontainer {
    pub(super) async fn start_container(
        &self,
        config: &ContainerConfig,
    ) -> Result<Started, RuntimeError> {
        let id = config.id.clone();
        if !valid_id(&id) {
            return Err(RuntimeError::InvalidId { id });
        }
        if self.tracked(&id).is_some() {
            return Err(RuntimeError::AlreadyExists { id });
        }
        let spec = build_spec(config).map_err(|source| RuntimeError::Spec {
            id: id.clone(),
            source,
        })?;
        let started = std::time::Instant::now();

        let bundle = config.bundle_dir.clone();
        let meta = BundleMeta::from_config(config);
        let stdin = config.stdin;
        blocking(&id, {
            let id = id.clone();
            let meta = meta.clone();
            move || write_bundle(&id, &meta, &spec, stdin)
        })
        .await?;

        let readers = match open_readers(&bundle) {
            Ok(r) => r,
            Err(err) => {
                let _ = fs::remove_dir_all(&bundle);
                return Err(RuntimeError::io(&id, "opening stdio fifos", err));
            }
        };

        let state_root = self.state_root.clone();
        let v2 = config.cgroup_v2_path.clone();
        let created = blocking(&id, {
            let id = id.clone();
            let bundle = bundle.clone();
            move || create_and_start(&id, &state_root, &bundle, v2.as_deref(), stdin)
        })
        .await;
        let pid = match created {
            Ok(pid) => pid,
            Err(err) => {
                drop(readers);
                if let Err(e) = fs::remove_dir_all(&bundle) {
                    tracing::warn!(id, error = %e, "removing bundle after failed start");
                }
                return Err(err);
            }
        };

        let started_at = SystemTime::now();
        self.supervise(meta, pid, readers, true).map_err(|err| {
            // The container runs but cannot be watched; the caller should delete it.
            tracing::error!(id, pid, error = %err, "cannot supervise started container");
            err
        })?;
        tracing::info!(
            id,
            pid,
            elapsed_ms = started.elapsed().as_secs_f64() * 1e3,
            "container started"
        );
        Ok(Started { pid, started_at })
    }
}

/// libcontainer's rule for ids: letters, digits, `_ + - .`, not `.` or `..`.
fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id != "."
        && id != ".."
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '+' | '-' | '.'))
}

fn write_bundle(
    id: &str,
    meta: &BundleMeta,
    spec: &oci_spec::runtime::Spec,
    stdin: bool,
) -> Result<(), RuntimeError> {
    let bundle = &meta.bundle_dir;
    if let Some(parent) = bundle.parent() {
        fs::create_dir_all(parent)
            .map_err(|e| RuntimeError::io(id, format!("creating {}", parent.display()), e))?;
    }
    match fs::create_dir(bundle) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(RuntimeError::AlreadyExists { id: id.to_owned() });
        }
        Err(e) => {
            return Err(RuntimeError::io(
                id,
                format!("creating {}", bundle.display()),
                e,
            ));
        }
    }
    let result = (|| {
        spec.save(bundle.join("config.json"))
            .map_err(|e| RuntimeError::io(id, "writing config.json", std::io::Error::other(e)))?;
        let json = serde_json::to_vec(meta)
            .map_err(|e| RuntimeError::io(id, "encoding metadata", std::io::Error::other(e)))?;
        fs::write(bundle.join(META_FILE), json)
            .map_err(|e| RuntimeError::io(id, "writing metadata", e))?;
        let mut fifos = vec![STDOUT_FIFO, STDERR_FIFO];
        if stdin {
            fifos.push(STDIN_FIFO);
        }
        for name in fifos {
            nix::unistd::mkfifo(&bundle.join(name), Mode::from_bits_truncate(0o600))
                .map_err(|e| RuntimeError::io(id, format!("mkfifo {name}"), e.into()))?;
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_dir_all(bundle);
    }
    result
}

/// The daemon's read ends of the stdout and stderr FIFOs.
pub(super) fn open_readers(bundle: &Path) -> std::io::Result<(pipe::Receiver, pipe::Receiver)> {
    // Read-write, so opening never waits for a writer and the pipe never reports EOF
    // while the daemon restarts.
    let mut options = pipe::OpenOptions::new();
    options.read_write(true);
    Ok((
        options.open_receiver(bundle.join(STDOUT_FIFO))?,
        options.open_receiver(bundle.join(STDERR_FIFO))?,
    ))
}

/// Opens a FIFO read-write with `O_CLOEXEC` (libcontainer `dup2`s it onto 0/1/2).
fn open_fifo(path: &Path) -> std::io::Result<OwnedFd> {
    // The container's end is read-write too: it then counts as a reader, so its writes
    // block instead of failing with EPIPE (or SIGPIPE) while no daemon reads the FIFO.
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)?;
    Ok(file.into())
}

fn create_and_start(
    id: &str,
    state_root: &Path,
    bundle: &Path,
    cgroup_v2: Option<&Path>,
    stdin: bool,
) -> Result<i32, RuntimeError> {
    fs::create_dir_all(state_root)
        .map_err(|e| RuntimeError::io(id, format!("creating {}", state_root.display()), e))?;
    let open_stdio = |name: &str| {
        open_fifo(&bundle.join(name))
            .map_err(|e| RuntimeError::io(id, format!("opening {name}"), e))
    };
    let stdout = open_stdio(STDOUT_FIFO)?;
    let stderr = open_stdio(STDERR_FIFO)?;
    let stdin_fd: OwnedFd = if stdin {
        open_stdio(STDIN_FIFO)?
    } else {
        OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_CLOEXEC)
            .open("/dev/null")
            .map_err(|e| RuntimeError::io(id, "opening /dev/null", e))?
            .into()
    };

    let build = || {
        let container = ContainerBuilder::new(id.to_owned(), SyscallType::default())
            .with_root_path(state_root)
            .map_err(|e| format!("root path: {e}"))?
            .with_stdin(stdin_fd)
            .with_stdout(stdout)
            .with_stderr(stderr)
            .with_executor(EnvExecutor::default())
            .validate_id()
            .map_err(|e| format!("validate id: {e}"))?
            .as_init(bundle)
            .with_systemd(false)
            .with_detach(true)
            .build()
            .map_err(|e| e.to_string())?;
        container
            .pid()
            .map(i32::from)
            .ok_or_else(|| "no init pid in state".to_owned())
    };
    let pid = super::forked::in_forked_copy(build)
        .map_err(|e| RuntimeError::io(id, "forking to create", e))?
        .map_err(|message| RuntimeError::Libcontainer {
            id: id.to_owned(),
            op: "create",
            message,
        })?;

    let mut loaded = None;
    let start_lock = super::start_guard();
    let started = (|| {
        let container = loaded.insert(
            Container::load(state_root.join(id)).map_err(|e| RuntimeError::lc(id, "load", &e))?,
        );
        if let Some(dir) = cgroup_v2 {
            join_v2_cgroup(dir, pid)
                .map_err(|e| RuntimeError::io(id, format!("joining {}", dir.display()), e))?;
        }
        container
            .start()
            .map_err(|e| RuntimeError::lc(id, "start", &e))?;
        Ok(pid)
    })();
    drop(start_lock);
    if started.is_err() {
        match loaded.as_mut().map(|c| c.delete(true)) {
            Some(Ok(())) => {}
            Some(Err(e)) => tracing::warn!(id, error = %e, "deleting container after failed start"),
            None => {
                // Not even its state could be read: end the waiting init by its pid.
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        // The init is our child (re-parented to us, the subreaper): do not leave a zombie.
        let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
        if let Some(dir) = cgroup_v2 {
            remove_cgroup_dir(dir);
        }
    }
    started
}

/// Moves `pid` into the cgroup v2 directory `dir` (created if missing), so cgroup-attached
/// BPF programs of the node see the container on hybrid hosts.
fn join_v2_cgroup(dir: &Path, pid: i32) -> std::io::Result<()> {
    fs::create_dir_all(dir)?;
    fs::write(dir.join("cgroup.procs"), pid.to_string())
}

/// Removes a cgroup directory, retrying while its last processes are being torn down.
pub(super) fn remove_cgroup_dir(dir: &Path) -> bool {
    for _ in 0..50 {
        match fs::remove_dir(dir) {
            Ok(()) => return true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return true,
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(20)),
        }
    }
    tracing::warn!(dir = %dir.display(), "cgroup directory still busy");
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_follow_libcontainer_rules() {
        assert!(valid_id("0f3a-web-0"));
        assert!(valid_id("a_b+c.d"));
        assert!(!valid_id(""));
        assert!(!valid_id(".."));
        assert!(!valid_id("a/b"));
        assert!(!valid_id("a b"));
    }

    #[test]
    fn bundle_holds_spec_metadata_and_fifos_and_refuses_reuse() {
        let dir = tempfile::tempdir().unwrap();
        let config = ContainerConfig {
            id: "p-c-0".into(),
            bundle_dir: dir.path().join("containers/p-c-0"),
            rootfs: "/rootfs".into(),
            args: vec!["true".into()],
            log_path: dir.path().join("log"),
            ..ContainerConfig::default()
        };
        let spec = build_spec(&config).unwrap();
        let meta = BundleMeta::from_config(&config);
        write_bundle("p-c-0", &meta, &spec, true).unwrap();
        let b = &config.bundle_dir;
        assert!(b.join("config.json").is_file());
        assert_eq!(BundleMeta::load(b), Some(meta.clone()));
        for f in [STDOUT_FIFO, STDERR_FIFO, STDIN_FIFO] {
            use std::os::unix::fs::FileTypeExt;
            assert!(
                fs::metadata(b.join(f)).unwrap().file_type().is_fifo(),
                "{f}"
            );
        }
        let again = write_bundle("p-c-0", &meta, &spec, false);
        assert!(matches!(again, Err(RuntimeError::AlreadyExists { .. })));
        assert!(b.join("config.json").is_file(), "existing bundle untouched");
    }
}
