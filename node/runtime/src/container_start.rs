//! `start`: writes the bundle (OCI `config.json`, stdio FIFOs, skiff's metadata), creates
//! and starts the container with libcontainer, then hands it to the exit watcher and the
//! log pump. A failed start removes everything it made.

use std::{
    fs::{self, OpenOptions},
    os::{fd::OwnedFd, unix::fs::OpenOptionsExt},
    path::{Path, PathBuf},
    time::SystemTime,
};

use libcontainer::{
    container::{Container, builder::ContainerBuilder},
    syscall::syscall::SyscallType,
};
use nix::sys::stat::Mode;
use serde::{Deserialize, Serialize};
use tokio::net::unix::pipe;

use super::{
    ContainerConfig, RuntimeError, Started,
    executor::EnvExecutor,
    forkserver::ForkserverError,
    libcontainer::{
        BundleMeta, Libcontainer, META_FILE, STDERR_FIFO, STDIN_FIFO, STDOUT_FIFO, blocking,
    },
    spec::build_spec,
    terminal::ConsoleSocket,
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

        let attempt = Attempt {
            id: id.clone(),
            state_root: self.state_root.clone(),
            bundle: bundle.clone(),
            cgroup_root: self.cgroup_root.clone(),
            cgroups_path: config.cgroups_path.clone(),
            cgroup_v2: config.cgroup_v2_path.clone(),
            stdin,
            tty: config.tty,
        };
        let created = blocking(&id, move || attempt.create_and_start()).await;
        let (pid, master) = match created {
            Ok(created) => created,
            Err(err) => {
                drop(readers);
                if let Err(e) = fs::remove_dir_all(&bundle) {
                    tracing::warn!(id, error = %e, "removing bundle after failed start");
                }
                return Err(err);
            }
        };

        let started_at = SystemTime::now();
        self.supervise(meta, pid, readers, true, master)
            .map_err(|err| {
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

/// One create-and-start of a container, with what its cleanup needs after a failure.
struct Attempt {
    id: String,
    state_root: PathBuf,
    bundle: PathBuf,
    cgroup_root: PathBuf,
    cgroups_path: String,
    cgroup_v2: Option<PathBuf>,
    stdin: bool,
    tty: bool,
}

/// How long a new container's init may take to send its terminal's master.
const CONSOLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

impl Attempt {
    /// The init's pid and, for a `tty: true` container, its terminal's master.
    fn create_and_start(&self) -> Result<(i32, Option<OwnedFd>), RuntimeError> {
        let id = self.id.as_str();
        fs::create_dir_all(&self.state_root).map_err(|e| {
            RuntimeError::io(id, format!("creating {}", self.state_root.display()), e)
        })?;
        // A state directory from before is another container's (or one a later daemon
        // adopts); only what this attempt makes is removed when it fails.
        if self.state_dir().exists() {
            return Err(RuntimeError::AlreadyExists { id: id.to_owned() });
        }
        let created = self.create();
        let (pid, master) = match created {
            Ok(created) => created,
            Err(err) => {
                self.remove_leftovers();
                return Err(err);
            }
        };

        let mut loaded = None;
        let start_lock = super::start_guard();
        let started = (|| {
            let container = loaded.insert(
                Container::load(self.state_dir()).map_err(|e| RuntimeError::lc(id, "load", &e))?,
            );
            if let Some(dir) = &self.cgroup_v2 {
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
            if let Some(Err(e)) = loaded.as_mut().map(|c| c.delete(true)) {
                tracing::warn!(id, error = %e, "deleting container after failed start");
            }
            // Whatever libcontainer managed, the init is ended by its pid and reaped: it is
            // our child (re-parented to us, the subreaper), and must not stay a zombie.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
            let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
            self.remove_leftovers();
        }
        let pid = started?;
        if let Some(master) = &master {
            self.keep_terminal(master, pid);
        }
        Ok((pid, master))
    }

    /// Leaves a keeper holding the terminal for a later daemon (see `terminal`); without
    /// one the container runs all the same, and loses its terminal when this daemon ends.
    fn keep_terminal(&self, master: &OwnedFd, pid: i32) {
        let kept = super::terminal::spawn_keeper(master, pid).and_then(|keeper| {
            fs::write(
                super::terminal::keeper_file(&self.bundle),
                keeper.to_string(),
            )
        });
        if let Err(err) = kept {
            tracing::warn!(id = self.id, %err, "no keeper for the terminal: it ends with this daemon");
        }
    }

    /// Creates the container in a forked copy (see `forked`); the init waits for `start`.
    /// A `tty: true` container's init sends its terminal's master to a console socket in the
    /// bundle before the create returns.
    fn create(&self) -> Result<(i32, Option<OwnedFd>), RuntimeError> {
        let id = self.id.as_str();
        let open_stdio = |name: &str| {
            open_fifo(&self.bundle.join(name))
                .map_err(|e| RuntimeError::io(id, format!("opening {name}"), e))
        };
        let stdout = open_stdio(STDOUT_FIFO)?;
        let stderr = open_stdio(STDERR_FIFO)?;
        let stdin_fd: OwnedFd = if self.stdin {
            open_stdio(STDIN_FIFO)?
        } else {
            OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_CLOEXEC)
                .open("/dev/null")
                .map_err(|e| RuntimeError::io(id, "opening /dev/null", e))?
                .into()
        };

        let console = if self.tty {
            Some(
                ConsoleSocket::bind(&self.bundle)
                    .map_err(|e| RuntimeError::io(id, "binding the console socket", e))?,
            )
        } else {
            None
        };
        let request = CreateRequest {
            id: id.to_owned(),
            state_root: self.state_root.clone(),
            bundle: self.bundle.clone(),
            console_socket: console.as_ref().map(|c| c.path().to_owned()),
        };
        let fds = [stdin_fd, stdout, stderr];
        // The copy has ended and reaped the processes of a failed build before it returns.
        let pid = create_in_fresh_copy(&request, fds)
            .map_err(|e| RuntimeError::io(id, "forking to create", e))?
            .map_err(|message| RuntimeError::Libcontainer {
                id: id.to_owned(),
                op: "create",
                message,
            })?;
        let Some(console) = console else {
            return Ok((pid, None));
        };
        match console.receive(CONSOLE_TIMEOUT) {
            Ok(master) => Ok((pid, Some(master))),
            Err(err) => {
                // The init waits for a start that will not come: it is ended and reaped
                // here, the caller removes the rest.
                let init = nix::unistd::Pid::from_raw(pid);
                let _ = nix::sys::signal::kill(init, nix::sys::signal::Signal::SIGKILL);
                let _ = nix::sys::wait::waitpid(init, None);
                Err(RuntimeError::io(id, "receiving the terminal", err))
            }
        }
    }

    fn state_dir(&self) -> PathBuf {
        self.state_root.join(&self.id)
    }

    /// Removes what a failed attempt may have left once its processes are gone: its
    /// libcontainer state (libcontainer's own cleanup gives up before removing it when it
    /// cannot read the cgroup setup, and every retry would then find the container
    /// "already exists") and the container's cgroup in every hierarchy and in v2.
    fn remove_leftovers(&self) {
        let state = self.state_dir();
        match fs::remove_dir_all(&state) {
            Ok(()) => tracing::debug!(id = self.id, "removed the state of a failed create"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(id = self.id, dir = %state.display(), error = %e, "removing state of a failed create");
            }
        }
        for dir in container_cgroup_dirs(&self.cgroup_root, &self.cgroups_path)
            .into_iter()
            .chain(self.cgroup_v2.clone())
        {
            if dir.exists() {
                remove_cgroup_dir(&dir);
            }
        }
    }
}

/// What a forked copy needs to create a container, besides its stdio descriptors.
#[derive(Debug, Serialize, Deserialize)]
struct CreateRequest {
    id: String,
    state_root: PathBuf,
    bundle: PathBuf,
    /// Where a `tty: true` container's init sends its terminal's master.
    console_socket: Option<PathBuf>,
}

/// Runs the create in a fresh copy: one forked by the node's forkserver when it runs (a
/// copy of a small process), else one forked from this process.
fn create_in_fresh_copy(
    request: &CreateRequest,
    fds: [OwnedFd; 3],
) -> std::io::Result<Result<i32, String>> {
    if let Some(server) = super::forkserver::installed() {
        let payload = serde_json::to_vec(request).map_err(std::io::Error::other)?;
        match server.run(&payload, &fds) {
            Ok(created) => return Ok(created),
            Err(ForkserverError::Unavailable(err)) => {
                tracing::warn!(id = request.id, %err, "forkserver gone: forking the daemon to create");
            }
            Err(err @ ForkserverError::Reply(_)) => return Err(std::io::Error::other(err)),
        }
    }
    super::forked::in_forked_copy(|| build(request, fds))
}

/// The forkserver's handler: a [`CreateRequest`] with stdin, stdout and stderr.
pub(super) fn create_in_copy(payload: &[u8], fds: Vec<OwnedFd>) -> Result<i32, String> {
    let request: CreateRequest =
        serde_json::from_slice(payload).map_err(|e| format!("create request: {e}"))?;
    let fds: [OwnedFd; 3] = fds.try_into().map_err(|fds: Vec<OwnedFd>| {
        format!("create request with {} descriptors, not 3", fds.len())
    })?;
    build(&request, fds)
}

/// libcontainer's create, in a forked copy: the init it leaves waits for `start`.
fn build(request: &CreateRequest, [stdin, stdout, stderr]: [OwnedFd; 3]) -> Result<i32, String> {
    let container = ContainerBuilder::new(request.id.clone(), SyscallType::default())
        .with_root_path(&request.state_root)
        .map_err(|e| format!("root path: {e}"))?
        .with_console_socket(request.console_socket.as_deref())
        .with_stdin(stdin)
        .with_stdout(stdout)
        .with_stderr(stderr)
        .with_executor(EnvExecutor::default())
        .validate_id()
        .map_err(|e| format!("validate id: {e}"))?
        .as_init(&request.bundle)
        .with_systemd(false)
        .with_detach(true)
        .build()
        .map_err(|e| e.to_string())?;
    container
        .pid()
        .map(i32::from)
        .ok_or_else(|| "no init pid in state".to_owned())
}

/// The container's directory in every cgroup hierarchy mounted under `cgroup_root` (v1
/// controllers, the hybrid `unified` mount, or the root itself on a pure v2 host).
pub(super) fn container_cgroup_dirs(cgroup_root: &Path, cgroups_path: &str) -> Vec<PathBuf> {
    let relative = cgroups_path.trim_start_matches('/');
    if relative.is_empty() {
        return Vec::new();
    }
    let mut dirs = vec![cgroup_root.join(relative)];
    if let Ok(entries) = fs::read_dir(cgroup_root) {
        dirs.extend(
            entries
                .flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.path().join(relative)),
        );
    }
    dirs
}

/// Moves `pid` into the cgroup v2 directory `dir` (created if missing), so cgroup-attached
/// BPF programs of the node see the container on hybrid hosts.
pub(super) fn join_v2_cgroup(dir: &Path, pid: i32) -> std::io::Result<()> {
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
