//! A real `control` process on a loopback port with its own data directory, and a kubectl
//! pointed at it through the admin kubeconfig `control` wrote (client certificate, cluster
//! CA) and a discovery cache of its own.

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    sync::{Arc, OnceLock},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::{
    etcd::free_port,
    process::ChildGuard,
    tls::{self, Credentials},
};

/// A running control plane; killed (SIGKILL) on drop.
#[derive(Debug)]
pub struct ControlPlane {
    process: Option<ChildGuard>,
    /// The address it listens on and is reached at (loopback unless a test host's).
    address: std::net::Ipv4Addr,
    port: u16,
    data_dir: PathBuf,
    extra: Vec<String>,
    home: PathBuf,
    /// The admin's TLS client settings, read once from the admin kubeconfig (the CA stays
    /// across restarts, so they stay valid).
    admin_tls: OnceLock<Arc<rustls::ClientConfig>>,
}

impl ControlPlane {
    /// Starts `control` with the embedded store in `dir/data`.
    ///
    /// # Errors
    /// If it does not answer `/healthz` within 20 s.
    pub fn start(dir: &Path) -> Result<Self> {
        Self::start_with(dir, &[])
    }

    /// Starts `control` with extra flags (e.g. `--etcd URL`).
    ///
    /// # Errors
    /// If it does not answer `/healthz` within 20 s.
    pub fn start_with(dir: &Path, extra: &[&str]) -> Result<Self> {
        Self::start_on(dir, std::net::Ipv4Addr::LOCALHOST, extra)
    }

    /// Starts `control` listening on `address` (a test host's address, so nodes in other
    /// hosts reach it). Call from a thread inside the host's network namespace: the process
    /// starts there, and the health check goes to `address` from the calling thread.
    ///
    /// # Errors
    /// If it does not answer `/healthz` within 20 s.
    pub fn start_on(dir: &Path, address: std::net::Ipv4Addr, extra: &[&str]) -> Result<Self> {
        let home = dir.join("home");
        std::fs::create_dir_all(&home)?;
        let mut cp = Self {
            process: None,
            address,
            port: free_port()?,
            data_dir: dir.join("data"),
            extra: extra.iter().map(|s| (*s).to_owned()).collect(),
            home,
            admin_tls: OnceLock::new(),
        };
        cp.restart()?;
        Ok(cp)
    }

    /// The admin kubeconfig `control` writes into its data directory.
    #[must_use]
    pub fn admin_kubeconfig(&self) -> PathBuf {
        self.data_dir.join("admin.kubeconfig")
    }

    /// The cluster CA certificate (PEM file) in the data directory.
    #[must_use]
    pub fn ca_file(&self) -> PathBuf {
        self.data_dir.join("pki").join("ca.crt")
    }

    /// A `kube` client as the admin.
    ///
    /// # Errors
    /// When the admin kubeconfig cannot be read.
    pub async fn kube_client(&self) -> Result<kube::Client> {
        let kubeconfig = kube::config::Kubeconfig::read_from(self.admin_kubeconfig())?;
        let config = kube::Config::from_custom_kubeconfig(
            kubeconfig,
            &kube::config::KubeConfigOptions::default(),
        )
        .await?;
        Ok(kube::Client::try_from(config)?)
    }

    /// A kubeconfig for node `name` (`CN=system:node:<name>`, `O=system:nodes`, issued by
    /// this server's CA, as kubelet's client certificate), written into the harness's home.
    ///
    /// # Errors
    /// When the CA cannot be read or the file written.
    pub fn node_kubeconfig(&self, name: &str) -> Result<PathBuf> {
        let pki = self.data_dir.join("pki");
        let ca = skiff_pki::Ca::from_pem(
            &std::fs::read_to_string(pki.join(skiff_pki::ca::CA_CERT))?,
            &std::fs::read_to_string(pki.join(skiff_pki::ca::CA_KEY))?,
        )?;
        let user = format!("system:node:{name}");
        let issued = ca.issue_client(&user, &["system:nodes"])?;
        let path = self.home.join(format!("node-{name}.kubeconfig"));
        std::fs::write(
            &path,
            skiff_pki::kubeconfig::render(&self.url(), ca.cert_pem(), "skiff", &user, &issued),
        )?;
        Ok(path)
    }

    /// The bootstrap token nodes join with (`<data-dir>/node-token`).
    ///
    /// # Errors
    /// Before `control` wrote it.
    pub fn node_token(&self) -> Result<String> {
        Ok(std::fs::read_to_string(self.data_dir.join("node-token"))?
            .trim()
            .to_owned())
    }

    /// The data directory (`--data-dir`).
    #[must_use]
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The admin's credentials (from the admin kubeconfig).
    ///
    /// # Errors
    /// Before `control` wrote the kubeconfig.
    pub fn admin_credentials(&self) -> Result<Credentials> {
        Credentials::from_kubeconfig(&self.admin_kubeconfig())
    }

    fn admin_tls(&self) -> Result<Arc<rustls::ClientConfig>> {
        if let Some(config) = self.admin_tls.get() {
            return Ok(Arc::clone(config));
        }
        let config = self.admin_credentials()?.client_config()?;
        Ok(Arc::clone(self.admin_tls.get_or_init(|| config)))
    }

    /// Starts (again) on the same port and data directory.
    ///
    /// # Errors
    /// If it does not come up.
    pub fn restart(&mut self) -> Result<()> {
        self.process = None;
        let log = std::fs::File::create(self.home.join("control.log"))?;
        let process = ChildGuard::spawn(
            Command::new(crate::bin("control"))
                .args(["--listen", &format!("{}:{}", self.address, self.port)])
                .arg("--data-dir")
                .arg(&self.data_dir)
                .args(&self.extra)
                .env("RUST_LOG", "info")
                .stdout(Stdio::null())
                .stderr(log),
        )?;
        self.process = Some(process);
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.http_get("/healthz").map_or(true, |b| b != "ok") {
            if Instant::now() > deadline {
                bail!("control did not become healthy:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // kubectl's kubeconfig: the admin one `control` wrote (its server is this URL).
        std::fs::copy(self.admin_kubeconfig(), self.kubeconfig())
            .context("copying the admin kubeconfig")?;
        Ok(())
    }

    /// The server's PID while it runs.
    #[must_use]
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(ChildGuard::id)
    }

    /// Kills the process with SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        self.process = None;
    }

    /// The server's log so far.
    #[must_use]
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.home.join("control.log")).unwrap_or_default()
    }

    /// `https://ADDRESS:PORT` (`127.0.0.1` unless started with [`Self::start_on`]).
    #[must_use]
    pub fn url(&self) -> String {
        format!("https://{}:{}", self.address, self.port)
    }

    /// The address the server listens on.
    #[must_use]
    pub fn address(&self) -> std::net::Ipv4Addr {
        self.address
    }

    /// The port the server listens on.
    #[must_use]
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Sends a whole HTTP/1 request as the admin over TLS; returns the raw answer.
    ///
    /// # Errors
    /// On a connection or handshake failure.
    pub fn exchange(&self, request: &[u8], timeout: Duration) -> Result<Vec<u8>> {
        self.exchange_as(self.admin_tls()?, request, timeout)
    }

    /// Sends a whole HTTP/1 request over TLS with the client settings `tls` (another
    /// identity, or none); returns the raw answer.
    ///
    /// # Errors
    /// On a connection or handshake failure.
    pub fn exchange_as(
        &self,
        tls: Arc<rustls::ClientConfig>,
        request: &[u8],
        timeout: Duration,
    ) -> Result<Vec<u8>> {
        tls::exchange(tls, self.address.into(), self.port, request, timeout)
    }

    /// The kubeconfig file for this server.
    #[must_use]
    pub fn kubeconfig(&self) -> PathBuf {
        self.home.join("kubeconfig")
    }

    /// A GET as the admin, returning the body.
    ///
    /// # Errors
    /// On connection failure.
    pub fn http_get(&self, path: &str) -> Result<String> {
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        let resp = self.exchange(request.as_bytes(), Duration::from_secs(5))?;
        let resp = String::from_utf8_lossy(&resp);
        let (_, body) = resp.split_once("\r\n\r\n").context("no HTTP body")?;
        Ok(body.to_owned())
    }

    /// One HTTP request as the admin; returns the status code and the body.
    ///
    /// # Errors
    /// On connection failure or a malformed answer.
    pub fn http(
        &self,
        method: &str,
        path: &str,
        content_type: &str,
        body: &[u8],
    ) -> Result<(u16, String)> {
        let mut request = format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        request.extend_from_slice(body);
        let resp = self.exchange(&request, Duration::from_secs(10))?;
        let resp = String::from_utf8_lossy(&resp).into_owned();
        let code = resp
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .context("no HTTP status line")?;
        let body = resp
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        // Chunked bodies: keep only the JSON between the size lines.
        let body = if resp
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            body.lines()
                .filter(|l| !l.chars().all(|c| c.is_ascii_hexdigit()))
                .collect::<Vec<_>>()
                .join("\n")
        } else {
            body
        };
        Ok((code, body))
    }

    /// A kubectl command for this server (its own kubeconfig and discovery cache).
    #[must_use]
    pub fn kubectl(&self) -> Command {
        let mut c = Command::new("kubectl");
        c.env("KUBECONFIG", self.kubeconfig())
            .env("HOME", &self.home)
            .arg("--cache-dir")
            .arg(self.home.join("cache"));
        c
    }

    /// Runs kubectl with `args` (and `stdin`), returning its output.
    ///
    /// # Errors
    /// If kubectl cannot be started.
    pub fn run(&self, args: &[&str], stdin: Option<&str>) -> Result<Output> {
        let mut cmd = self.kubectl();
        cmd.args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().context("starting kubectl")?;
        if let Some(input) = stdin {
            child
                .stdin
                .take()
                .context("kubectl stdin")?
                .write_all(input.as_bytes())?;
        }
        Ok(child.wait_with_output()?)
    }

    /// Runs kubectl and returns stdout, failing with its stderr if it fails.
    ///
    /// # Errors
    /// If kubectl exits non-zero.
    pub fn ok(&self, args: &[&str], stdin: Option<&str>) -> Result<String> {
        let out = self.run(args, stdin)?;
        if !out.status.success() {
            bail!(
                "kubectl {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}
