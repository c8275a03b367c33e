//! `kubectl logs`, `kubectl exec` and `kubectl port-forward` through the real `control`
//! binary to a node endpoint served in-process over a fake backend: the API server finds
//! the pod's node by its Node object and relays the log stream, the exec WebSocket (exit
//! code included) and the port-forward tunnel. Unprivileged: everything runs on loopback.

use std::{
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::Stdio,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    time::Duration,
};

use anyhow::{Context, Result, bail};
use async_trait::async_trait;
use serde_json::{Value, json};
use skiff_api::kubelet_client::KubeletClient;
use skiff_node_server::{
    BackendError, ContainerRef, ImageSummary, LogSource, NodeBackend, NodeServer, PortConnection,
    Security, Session, StreamOptions, Summary,
    auth::{ApiReviewer, CachingReviewer},
};
use skiff_tests::{control::ControlPlane, process::ChildGuard, require_program};
use tokio::io::AsyncWriteExt;

/// A node with one pod `default/web`, container `app`: a log file the test writes, and an
/// exec that echoes its standard input and exits 3.
struct FakeNode {
    log: PathBuf,
    running: Arc<AtomicBool>,
    /// Where the pod's port 80 is served (an echo server); other ports refuse.
    echo: std::net::SocketAddr,
}

impl FakeNode {
    fn check(target: &ContainerRef) -> Result<(), BackendError> {
        if (target.namespace.as_str(), target.pod.as_str()) != ("default", "web") {
            return Err(BackendError::pod_not_found(&target.namespace, &target.pod));
        }
        if target.container != "app" {
            return Err(BackendError::container_not_found(
                &target.pod,
                &target.container,
            ));
        }
        Ok(())
    }
}

#[async_trait]
impl NodeBackend for FakeNode {
    async fn log_source(
        &self,
        target: &ContainerRef,
        previous: bool,
    ) -> Result<LogSource, BackendError> {
        Self::check(target)?;
        if previous {
            return Err(BackendError::BadRequest(format!(
                "previous terminated container {:?} in pod {:?} not found",
                target.container, target.pod
            )));
        }
        let running = Arc::clone(&self.running);
        Ok(LogSource {
            path: self.log.clone(),
            running: Arc::new(move || running.load(Ordering::SeqCst)),
        })
    }

    async fn exec(
        &self,
        target: &ContainerRef,
        opts: &StreamOptions,
    ) -> Result<Session, BackendError> {
        Self::check(target)?;
        if opts.command != ["cat"] {
            return Err(BackendError::Internal(format!(
                "executable file not found: {:?}",
                opts.command
            )));
        }
        let (stdin, mut stdin_reader) = tokio::io::duplex(64 * 1024);
        let (mut stdout_writer, stdout) = tokio::io::duplex(64 * 1024);
        let (done, exited) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let _ = tokio::io::copy(&mut stdin_reader, &mut stdout_writer).await;
            let _ = stdout_writer.shutdown().await;
            let _ = done.send(());
        });
        Ok(Session {
            stdin: opts.stdin.then(|| Box::pin(stdin) as _),
            stdout: Some(Box::pin(stdout)),
            stderr: None,
            resize: None,
            exit: Box::pin(async move {
                let _ = exited.await;
                Ok(Some(3))
            }),
        })
    }

    async fn attach(
        &self,
        target: &ContainerRef,
        opts: &StreamOptions,
    ) -> Result<Session, BackendError> {
        Self::check(target)?;
        if opts.stdin {
            return Err(BackendError::BadRequest(
                "container app does not take stdin".into(),
            ));
        }
        let (mut writer, stdout) = tokio::io::duplex(1024);
        let (done, ended) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let _ = writer.write_all(b"attached\n").await;
            let _ = writer.shutdown().await;
            let _ = done.send(());
        });
        Ok(Session {
            stdin: None,
            stdout: opts.stdout.then(|| Box::pin(stdout) as _),
            stderr: None,
            resize: None,
            exit: Box::pin(async move {
                let _ = ended.await;
                // The main process runs on; attach learns no exit code.
                Ok(None)
            }),
        })
    }

    async fn stats(&self) -> Result<Summary, BackendError> {
        Ok(Summary::default())
    }

    async fn import_image(&self, _tarball: &Path) -> Result<Vec<String>, BackendError> {
        Err(BackendError::BadRequest("import is not faked".into()))
    }

    async fn list_images(&self) -> Result<Vec<ImageSummary>, BackendError> {
        Ok(Vec::new())
    }

    async fn remove_image(&self, reference: &str) -> Result<String, BackendError> {
        Err(BackendError::NotFound(format!(
            "image {reference:?} not found"
        )))
    }

    async fn port_forward(
        &self,
        namespace: &str,
        pod: &str,
        port: u16,
    ) -> Result<PortConnection, BackendError> {
        if (namespace, pod) != ("default", "web") {
            return Err(BackendError::pod_not_found(namespace, pod));
        }
        if port != 80 {
            return Err(BackendError::Internal(format!(
                "connecting to localhost:{port}: connection refused"
            )));
        }
        let conn = tokio::net::TcpStream::connect(self.echo)
            .await
            .map_err(|e| BackendError::Internal(e.to_string()))?;
        Ok(Box::pin(conn))
    }

    async fn pull_image(&self, _reference: &str) -> Result<ImageSummary, BackendError> {
        Err(BackendError::BadRequest("pull is not faked".into()))
    }
}

fn append(path: &Path, text: &str) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    f.write_all(text.as_bytes())?;
    Ok(())
}

fn send(cp: &ControlPlane, method: &str, path: &str, body: &Value) -> Result<()> {
    let (code, text) = cp.http(
        method,
        path,
        "application/json",
        body.to_string().as_bytes(),
    )?;
    if !(200..300).contains(&code) {
        bail!("{method} {path}: {code}: {text}");
    }
    Ok(())
}

/// Runs kubectl off the async runtime, which serves the node endpoint meanwhile.
async fn kubectl(
    cp: &Arc<ControlPlane>,
    args: &[&str],
    stdin: Option<&str>,
) -> Result<std::process::Output> {
    let cp = Arc::clone(cp);
    let args: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
    let stdin = stdin.map(str::to_owned);
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        cp.run(&args, stdin.as_deref())
    })
    .await?
}

/// What the node daemon secures its endpoint with: a self-signed serving certificate,
/// client certificates of the cluster CA, and `SubjectAccessReview`s posted to the API
/// server (here as the admin; a node posts them as itself).
async fn security(cp: &ControlPlane) -> Result<Security> {
    let creds = cp.admin_credentials()?;
    let cas = skiff_node_server::tls::certs(&creds.ca_pem, "cluster CA")?;
    let serving = skiff_pki::ca::self_signed_server("skt-node", &["127.0.0.1".into()])?;
    let tls = skiff_node_server::tls::server_config(&cas, &serving.cert_pem, &serving.key_pem)?;
    let reviewer = ApiReviewer::new(cp.kube_client().await?, "skt-node".into());
    Ok(Security {
        tls,
        reviewer: Arc::new(CachingReviewer::new(Arc::new(reviewer))),
    })
}

/// One GET to the node endpoint as `client`; the status code and the whole answer.
async fn node_get(client: &KubeletClient, port: u16, path: &str) -> Result<(u16, String)> {
    let text = skiff_tests::tls::node_get(client, &format!("127.0.0.1:{port}"), path).await?;
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("no status in {text:?}"))?;
    Ok((code, text))
}

/// The node answers a caller without a certificate 401, and one whose user RBAC does not
/// give `nodes/proxy` 403 in the kubelet's words; the cluster's admin is served.
async fn node_refuses_strangers(cp: &ControlPlane, port: u16) -> Result<()> {
    let (code, text) = node_get(
        &KubeletClient::default(),
        port,
        "/containerLogs/default/web/app",
    )
    .await?;
    assert_eq!(code, 401, "{text}");
    let creds = cp.admin_credentials()?;
    let ca = skiff_pki::Ca::from_pem(
        &creds.ca_pem,
        &std::fs::read_to_string(cp.data_dir().join("pki/ca.key"))?,
    )?;
    let nobody = ca.issue_client("nobody", &[])?;
    let nobody = KubeletClient::with_identity(&nobody.cert_pem, &nobody.key_pem)?;
    let (code, text) = node_get(&nobody, port, "/containerLogs/default/web/app").await?;
    assert_eq!(code, 403, "{text}");
    assert!(
        text.contains("Forbidden (user=nobody, verb=get, resource=nodes, subresource=proxy)"),
        "{text}"
    );
    let admin = KubeletClient::with_identity(&creds.cert_pem, &creds.key_pem)?;
    let (code, text) = node_get(&admin, port, "/containerLogs/default/web/app").await?;
    assert_eq!(code, 200, "{text}");
    Ok(())
}

/// A user bound to `view` reads the pod but RBAC refuses its `exec` at the API server.
async fn viewers_cannot_exec(cp: &Arc<ControlPlane>) -> Result<()> {
    let bound = kubectl(
        cp,
        &[
            "create",
            "rolebinding",
            "viewer",
            "--clusterrole=view",
            "--user=viewer",
        ],
        None,
    )
    .await?;
    assert!(
        bound.status.success(),
        "{}",
        String::from_utf8_lossy(&bound.stderr)
    );
    let get = kubectl(cp, &["--as=viewer", "get", "pod", "web"], None).await?;
    assert!(
        get.status.success(),
        "{}",
        String::from_utf8_lossy(&get.stderr)
    );
    let exec = kubectl(cp, &["--as=viewer", "exec", "web", "--", "ls"], None).await?;
    assert!(!exec.status.success());
    let stderr = String::from_utf8_lossy(&exec.stderr);
    assert!(
        stderr.contains("resource \"pods/exec\" in API group \"\" in the namespace \"default\""),
        "{stderr}"
    );
    Ok(())
}

/// A Node whose endpoint is the in-process server, and a pod bound to it.
fn node_and_pod(cp: &ControlPlane, port: u16) -> Result<()> {
    send(
        cp,
        "POST",
        "/api/v1/nodes",
        &json!({
            "metadata": {"name": "skt-node"},
            "status": {
                "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
                "daemonEndpoints": {"kubeletEndpoint": {"Port": port}},
                "conditions": [{"type": "Ready", "status": "True"}],
            },
        }),
    )?;
    send(
        cp,
        "POST",
        "/api/v1/namespaces/default/pods",
        &json!({
            "metadata": {"name": "web"},
            "spec": {"nodeName": "skt-node", "containers": [{"name": "app", "image": "busybox"}]},
        }),
    )?;
    // kubectl port-forward wants a running pod.
    let (code, text) = cp.http(
        "PATCH",
        "/api/v1/namespaces/default/pods/web/status",
        "application/merge-patch+json",
        br#"{"status": {"phase": "Running"}}"#,
    )?;
    if code != 200 {
        bail!("marking the pod running: {code}: {text}");
    }
    Ok(())
}

/// `kubectl exec` (stdin echoed, exit code 3 passed on, a failed start, an invalid
/// container) and `kubectl attach`.
async fn exec_and_attach(cp: &Arc<ControlPlane>) -> Result<()> {
    let exec = kubectl(
        cp,
        &["exec", "-i", "web", "--", "cat"],
        Some("hello\nworld\n"),
    )
    .await?;
    assert_eq!(
        String::from_utf8_lossy(&exec.stdout),
        "hello\nworld\n",
        "stderr: {}",
        String::from_utf8_lossy(&exec.stderr)
    );
    assert_eq!(
        exec.status.code(),
        Some(3),
        "stderr: {}",
        String::from_utf8_lossy(&exec.stderr)
    );

    let failed = kubectl(cp, &["exec", "web", "--", "nope"], None).await?;
    assert!(!failed.status.success());
    assert!(
        String::from_utf8_lossy(&failed.stderr).contains("executable file not found"),
        "{}",
        String::from_utf8_lossy(&failed.stderr)
    );

    let attach = kubectl(cp, &["attach", "web"], None).await?;
    assert!(
        attach.status.success(),
        "{}",
        String::from_utf8_lossy(&attach.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&attach.stdout), "attached\n");

    let wrong = kubectl(cp, &["exec", "web", "-c", "nope", "--", "cat"], None).await?;
    assert!(!wrong.status.success());
    assert!(
        String::from_utf8_lossy(&wrong.stderr).contains("container nope is not valid for pod web"),
        "{}",
        String::from_utf8_lossy(&wrong.stderr)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_logs_and_exec_reach_the_node_through_the_api_server() -> Result<()> {
    if !require_program("node_proxy", "kubectl") {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let log = dir.path().join("0.log");
    append(
        &log,
        "2026-01-01T00:00:01.000000001Z stdout F one\n\
         2026-01-01T00:00:02Z stderr F two\n\
         2026-01-01T00:00:03Z stdout P thr\n\
         2026-01-01T00:00:03Z stdout F ee\n",
    )?;
    let running = Arc::new(AtomicBool::new(true));
    let echo = echo_server().await?;
    let backend = Arc::new(FakeNode {
        log: log.clone(),
        running: Arc::clone(&running),
        echo,
    });
    let server = NodeServer::bind(([127, 0, 0, 1], 0).into(), backend).await?;
    let port = server.local_addr()?.port();
    let cp = {
        let path = dir.path().to_owned();
        Arc::new(tokio::task::spawn_blocking(move || ControlPlane::start(&path)).await??)
    };
    let server = server.secured(security(&cp).await?);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.serve(async {
        let _ = stopped.await;
    }));
    node_and_pod(&cp, port)?;
    node_refuses_strangers(&cp, port).await?;

    let out = kubectl(&cp, &["logs", "web", "--tail=2", "--timestamps"], None).await?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "2026-01-01T00:00:02Z two\n2026-01-01T00:00:03Z three\n"
    );

    let missing = kubectl(&cp, &["logs", "web", "-c", "nope"], None).await?;
    assert!(!missing.status.success());
    assert!(
        String::from_utf8_lossy(&missing.stderr)
            .contains("container nope is not valid for pod web"),
        "{}",
        String::from_utf8_lossy(&missing.stderr)
    );

    follow(&cp, &log, &running).await?;

    exec_and_attach(&cp).await?;
    port_forward(&cp, true).await?;
    port_forward(&cp, false).await?;
    viewers_cannot_exec(&cp).await?;

    let _ = stop.send(());
    serving.await?;
    Ok(())
}

/// `kubectl logs -f` prints the tail, then a line appended later, and exits once the
/// container has stopped.
async fn follow(cp: &Arc<ControlPlane>, log: &Path, running: &AtomicBool) -> Result<()> {
    let mut cmd = cp.kubectl();
    cmd.args(["logs", "-f", "web", "--tail=1"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = ChildGuard::spawn(&mut cmd)?;
    let stdout = child.child_mut().stdout.take().context("kubectl stdout")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let next = |what: &str| {
        rx.recv_timeout(Duration::from_secs(15))
            .with_context(|| format!("waiting for {what} from kubectl logs -f"))
    };
    assert_eq!(next("the tail")?, "three");
    append(log, "2026-01-01T00:00:04Z stdout F four\n")?;
    assert_eq!(next("the appended line")?, "four");
    running.store(false, Ordering::SeqCst);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = child.child_mut().try_wait()? {
            break status;
        }
        if tokio::time::Instant::now() > deadline {
            bail!("kubectl logs -f did not end after the container stopped");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success());
    Ok(())
}

/// An echo server on loopback: what a connection sends comes back, and its end ends it.
async fn echo_server() -> Result<std::net::SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = conn.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    Ok(addr)
}

/// `kubectl port-forward` through the API server, over the WebSocket tunnel or (as kubectl
/// falls back to, and older ones speak) a raw SPDY upgrade: two connections at once echo
/// what they send (several frames' worth each) and end when the client ends; a refused
/// port is reported by kubectl.
async fn port_forward(cp: &Arc<ControlPlane>, websockets: bool) -> Result<()> {
    let cp = Arc::clone(cp);
    tokio::task::spawn_blocking(move || -> Result<()> {
        let mut child = ChildGuard::spawn(
            cp.kubectl()
                .env("KUBECTL_PORT_FORWARD_WEBSOCKETS", websockets.to_string())
                .args([
                    "port-forward",
                    "--address",
                    "127.0.0.1",
                    "pod/web",
                    ":80",
                    ":81",
                ])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped()),
        )?;
        let stdout = child.child_mut().stdout.take().context("stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let mut ports = Vec::new();
        while ports.len() < 2 {
            let line = lines.next().context("kubectl port-forward ended")??;
            if let Some(rest) = line.strip_prefix("Forwarding from 127.0.0.1:") {
                let port: u16 = rest.split_whitespace().next().unwrap_or_default().parse()?;
                ports.push(port);
            }
        }
        let connect = |port: u16| -> Result<std::net::TcpStream> {
            let s = std::net::TcpStream::connect(("127.0.0.1", port))?;
            s.set_read_timeout(Some(Duration::from_secs(20)))?;
            Ok(s)
        };
        let payload = |tag: &str| -> Vec<u8> {
            (0..30_000)
                .flat_map(|i| format!("{tag}{i};").into_bytes())
                .collect()
        };
        let (a_sent, b_sent) = (payload("a"), payload("b"));
        let mut a = connect(ports[0])?;
        let mut b = connect(ports[0])?;
        let writer = {
            let (mut a, mut b) = (a.try_clone()?, b.try_clone()?);
            let (a_sent, b_sent) = (a_sent.clone(), b_sent.clone());
            std::thread::spawn(move || -> std::io::Result<()> {
                a.write_all(&a_sent)?;
                b.write_all(&b_sent)?;
                a.shutdown(std::net::Shutdown::Write)?;
                b.shutdown(std::net::Shutdown::Write)
            })
        };
        let (mut a_got, mut b_got) = (Vec::new(), Vec::new());
        std::io::Read::read_to_end(&mut b, &mut b_got)?;
        std::io::Read::read_to_end(&mut a, &mut a_got)?;
        writer
            .join()
            .map_err(|_| anyhow::anyhow!("writer panicked"))??;
        assert!(
            a_got == a_sent,
            "connection a echoed {} of {} bytes",
            a_got.len(),
            a_sent.len()
        );
        assert!(
            b_got == b_sent,
            "connection b echoed {} of {} bytes",
            b_got.len(),
            b_sent.len()
        );

        // Port 81 refuses: the connection closes and kubectl reports it.
        let mut refused = connect(ports[1])?;
        let mut got = Vec::new();
        let _ = std::io::Read::read_to_end(&mut refused, &mut got);
        assert!(got.is_empty(), "a refused port sent {got:?}");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < deadline && child.child_mut().try_wait()?.is_none() {
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = child.child_mut().kill();
        let mut stderr = String::new();
        std::io::Read::read_to_string(
            &mut child.child_mut().stderr.take().context("stderr")?,
            &mut stderr,
        )?;
        assert!(
            stderr.contains("error forwarding port 81 to pod default/web"),
            "kubectl stderr: {stderr}"
        );
        Ok(())
    })
    .await?
}
