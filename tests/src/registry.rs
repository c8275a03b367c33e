//! A real OCI registry for pull tests: Debian's `docker-registry` on a loopback port with
//! its storage in a temporary directory, optionally behind htpasswd basic auth, filled with
//! `skopeo copy`; killed and removed on drop.

use std::{
    fmt::Write as _,
    net::TcpStream,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::{etcd::free_port, process::ChildGuard};

/// Debian's registry binary (package docker-registry).
pub const DOCKER_REGISTRY: &str = "/usr/bin/docker-registry";

/// A running registry on `127.0.0.1:<port>`.
#[derive(Debug)]
pub struct Registry {
    // Declared first so the process ends before its directory goes.
    _process: ChildGuard,
    dir: tempfile::TempDir,
    port: u16,
    credentials: Option<(String, String)>,
}

/// A bcrypt hash of `password` for htpasswd (the registry accepts bcrypt only): `htpasswd`
/// if installed, else Python's `crypt` module.
///
/// # Errors
/// If neither tool can make one.
pub fn bcrypt(password: &str) -> Result<String> {
    if let Ok(out) = Command::new("htpasswd")
        .args(["-nbBC", "4", "u", password])
        .output()
        && out.status.success()
    {
        let line = String::from_utf8(out.stdout)?;
        if let Some((_, hash)) = line.trim().split_once(':') {
            return Ok(hash.to_owned());
        }
    }
    let out = Command::new("/usr/bin/python3")
        .args([
            "-W",
            "ignore",
            "-c",
            "import crypt,sys; print(crypt.crypt(sys.argv[1], crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=16)))",
            password,
        ])
        .output()
        .context("running python3 for a bcrypt hash")?;
    let hash = String::from_utf8(out.stdout)?.trim().to_owned();
    if !out.status.success() || !hash.starts_with("$2") {
        bail!(
            "no bcrypt hash from htpasswd or python3 crypt: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(hash)
}

impl Registry {
    /// Starts an open registry.
    ///
    /// # Errors
    /// If the binary is missing or does not listen within 20 s.
    pub fn start() -> Result<Self> {
        Self::launch(None)
    }

    /// Starts a registry that wants HTTP basic auth as `user`/`password`.
    ///
    /// # Errors
    /// If no bcrypt hash can be made, the binary is missing or does not listen within 20 s.
    pub fn start_with_auth(user: &str, password: &str) -> Result<Self> {
        Self::launch(Some((user.to_owned(), password.to_owned())))
    }

    fn launch(credentials: Option<(String, String)>) -> Result<Self> {
        let dir = tempfile::tempdir().context("registry temp dir")?;
        let port = free_port()?;
        let mut config = format!(
            "version: 0.1\n\
             log:\n  level: warn\n\
             storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
             http:\n  addr: 127.0.0.1:{port}\n",
            dir.path().join("storage").display()
        );
        if let Some((user, password)) = &credentials {
            let htpasswd = dir.path().join("htpasswd");
            std::fs::write(&htpasswd, format!("{user}:{}\n", bcrypt(password)?))?;
            let _ = write!(
                config,
                "auth:\n  htpasswd:\n    realm: skiff-test\n    path: {}\n",
                htpasswd.display()
            );
        }
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config)?;
        let log = std::fs::File::create(dir.path().join("registry.log"))?;
        let process = ChildGuard::spawn(
            Command::new(DOCKER_REGISTRY)
                .arg("serve")
                .arg(&config_path)
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log),
        )?;
        let registry = Self {
            _process: process,
            dir,
            port,
            credentials,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                bail!(
                    "docker-registry did not listen on {} within 20 s:\n{}",
                    registry.host(),
                    registry.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(registry)
    }

    /// `127.0.0.1:<port>`, the registry part of image references.
    #[must_use]
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The registry's log so far.
    #[must_use]
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// Pushes an OCI layout tarball (one image) as `<host>/<repo_tag>` with `skopeo copy`.
    ///
    /// # Errors
    /// If skopeo fails.
    pub fn push(&self, oci_tar: &Path, repo_tag: &str) -> Result<()> {
        // skopeo's oci-archive transport chowns what it untars to the archive's owners,
        // which fails unprivileged; an unpacked layout (oci: transport) needs no chown.
        let layout = tempfile::tempdir().context("OCI layout temp dir")?;
        let file = std::fs::File::open(oci_tar)
            .with_context(|| format!("opening {}", oci_tar.display()))?;
        tar::Archive::new(file)
            .unpack(layout.path())
            .with_context(|| format!("unpacking {}", oci_tar.display()))?;
        let mut cmd = Command::new("skopeo");
        cmd.args([
            "--insecure-policy",
            "copy",
            "--quiet",
            "--dest-tls-verify=false",
        ]);
        if let Some((user, password)) = &self.credentials {
            cmd.arg(format!("--dest-creds={user}:{password}"));
        }
        let out = cmd
            .arg(format!("oci:{}", layout.path().display()))
            .arg(format!("docker://{}/{repo_tag}", self.host()))
            .output()
            .context("running skopeo")?;
        if !out.status.success() {
            bail!(
                "skopeo copy to {}/{repo_tag} failed: {}\nregistry log:\n{}",
                self.host(),
                String::from_utf8_lossy(&out.stderr),
                self.log()
            );
        }
        Ok(())
    }

    /// How many manifest GETs (pulls) the registry has logged, from its access log.
    #[must_use]
    pub fn manifest_gets(&self) -> usize {
        self.log()
            .lines()
            .filter(|l| l.contains("\"GET /v2/") && l.contains("/manifests/"))
            .count()
    }
}
