//! kubectl's streams through the API server to the node: port-forward to a pod, a Deployment
//! and a Service (and from the Python client), and `kubectl cp` both ways.

use std::{
    fmt::Write as _,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::TcpStream,
    process::Stdio,
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use skiff_tests::{
    cluster::{Cluster, wait_for},
    process::ChildGuard,
};

use super::IMAGE;

/// The Deployment and Service port-forward and cp reach.
const APP: &str = "streams";
/// How long a forwarded exchange may take.
const EXCHANGE: Duration = Duration::from_secs(20);

/// One pod serving a page on port 80 (with a CGI that echoes a POST body) and another on
/// 8081, behind a Service whose port 8080 targets the named port `http`.
fn deploy(c: &Cluster) -> Result<String> {
    let manifest = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: streams}
spec:
  replicas: 1
  selector: {matchLabels: {app: streams}}
  template:
    metadata: {labels: {app: streams}}
    spec:
      containers:
      - name: web
        image: 'IMAGE'
        imagePullPolicy: Never
        ports: [{name: http, containerPort: 80}, {name: alt, containerPort: 8081}]
        command:
        - sh
        - -c
        - |
          mkdir -p /www/cgi-bin /alt
          echo pod-page > /www/index.html
          echo alt-page > /alt/index.html
          printf '#!/bin/sh\necho Content-Type: text/plain\necho\nprintf got:\nhead -c "$CONTENT_LENGTH"\n' > /www/cgi-bin/echo
          chmod +x /www/cgi-bin/echo
          httpd -p 80 -h /www
          exec httpd -f -p 8081 -h /alt
---
apiVersion: v1
kind: Service
metadata: {name: streams}
spec:
  selector: {app: streams}
  ports: [{name: web, port: 8080, targetPort: http}]
"#
    .replace("IMAGE", IMAGE);
    c.kubectl(&["apply", "-f", "-"], Some(&manifest))?;
    wait_for("a running streams pod", Duration::from_mins(2), || {
        let list = c.get_json(&format!(
            "/api/v1/namespaces/default/pods?labelSelector=app%3D{APP}"
        ))?;
        Ok(list["items"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| {
                p["status"]["phase"] == "Running" && p["metadata"]["deletionTimestamp"].is_null()
            })
            .and_then(|p| p["metadata"]["name"].as_str().map(str::to_owned)))
    })
}

/// A running `kubectl port-forward` in the control host and the local ports it listens on.
struct PortForward {
    child: ChildGuard,
    ports: Vec<u16>,
}

impl PortForward {
    /// Starts `kubectl port-forward target :remote...` and waits for its listeners.
    fn start(c: &Cluster, target: &str, remotes: &[u16]) -> Result<Self> {
        let mut args = vec![
            "port-forward".to_owned(),
            "--address".to_owned(),
            "127.0.0.1".to_owned(),
            target.to_owned(),
        ];
        args.extend(remotes.iter().map(|p| format!(":{p}")));
        let mut child = c.control_host().run(|| {
            ChildGuard::spawn(
                c.control()
                    .kubectl()
                    .args(&args)
                    .stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped()),
            )
        })?;
        let stdout = child.child_mut().stdout.take().context("stdout")?;
        let (tx, rx) = mpsc::channel();
        // Reads to the end: kubectl writes a line per connection, and a closed pipe would
        // kill it (SIGPIPE).
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                let _ = tx.send(line);
            }
        });
        let mut ports = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while ports.len() < remotes.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(line) = rx.recv_timeout(left) else {
                let mut err = String::new();
                let _ = child.child_mut().kill();
                if let Some(mut e) = child.child_mut().stderr.take() {
                    let _ = e.read_to_string(&mut err);
                }
                bail!("kubectl port-forward {target} did not listen: {err}");
            };
            // "Forwarding from 127.0.0.1:41234 -> 80"
            if let Some(rest) = line.strip_prefix("Forwarding from 127.0.0.1:") {
                let local = rest.split_whitespace().next().unwrap_or_default();
                ports.push(local.parse().with_context(|| line.clone())?);
            }
        }
        Ok(Self { child, ports })
    }

    /// Waits for kubectl to exit on its own (or kills it after `within`); its stderr.
    fn stderr_after(mut self, within: Duration) -> String {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if matches!(self.child.child_mut().try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.child_mut().kill();
        let mut err = String::new();
        if let Some(mut e) = self.child.child_mut().stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        err
    }
}

/// `count` zero-padded numbers, each followed by `sep`.
fn numbered(count: u32, sep: &str) -> String {
    let mut out = String::new();
    for i in 0..count {
        let _ = write!(out, "{i:05}{sep}");
    }
    out
}

fn connect(port: u16) -> Result<TcpStream> {
    let s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(EXCHANGE))?;
    s.set_write_timeout(Some(EXCHANGE))?;
    Ok(s)
}

/// The whole answer to `request` (HTTP/1.0: the server closes after it).
fn read_answer(mut s: TcpStream) -> Result<String> {
    let mut answer = Vec::new();
    s.read_to_end(&mut answer)
        .context("reading the forwarded answer")?;
    Ok(String::from_utf8_lossy(&answer).into_owned())
}

fn get(port: u16, path: &str) -> Result<String> {
    let mut s = connect(port)?;
    write!(s, "GET {path} HTTP/1.0\r\n\r\n")?;
    read_answer(s)
}

/// Two connections at once on `port`: the first sends half its request, the second makes a
/// whole exchange, then the first finishes; and a POST whose body comes back.
fn two_at_once_and_a_body_both_ways(port: u16) -> Result<()> {
    let mut first = connect(port)?;
    first.write_all(b"GET /index.html HTTP/1.0\r\n")?;
    let second = get(port, "/index.html").context("the second connection")?;
    ensure!(second.contains("pod-page"), "second connection: {second:?}");
    first.write_all(b"\r\n")?;
    let first = read_answer(first).context("the first connection")?;
    ensure!(first.contains("pod-page"), "first connection: {first:?}");
    let body = numbered(4000, "");
    let mut posting = connect(port)?;
    write!(
        posting,
        "POST /cgi-bin/echo HTTP/1.0\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let echoed = read_answer(posting).context("the POST")?;
    ensure!(
        echoed.contains(&format!("got:{body}")),
        "the CGI's answer ({} bytes) does not carry the {} bytes posted: {:?}",
        echoed.len(),
        body.len(),
        echoed.get(..300)
    );
    Ok(())
}

/// `kubectl port-forward` to a pod (two ports), a Deployment and a Service carries HTTP both
/// ways over concurrent connections; a port nobody listens on is reported; the Python
/// client forwards over the channel protocol.
pub fn port_forward_reaches_pods_deployments_and_services(c: &Cluster) -> Result<()> {
    let pod = deploy(c)?;
    let pf = PortForward::start(c, &format!("pod/{pod}"), &[80, 8081])?;
    let (web, alt) = (pf.ports[0], pf.ports[1]);
    let exchanged = c.control_host().run(|| -> Result<()> {
        let page = get(web, "/index.html").context("a first single GET")?;
        ensure!(page.contains("pod-page"), "port 80: {page:?}");
        two_at_once_and_a_body_both_ways(web)?;
        let page = get(alt, "/index.html")?;
        ensure!(page.contains("alt-page"), "port 8081: {page:?}");
        Ok(())
    });
    if let Err(err) = exchanged {
        bail!(
            "{err:#}\nkubectl: {}",
            pf.stderr_after(Duration::from_secs(1))
        );
    }
    drop(pf);

    // kubectl resolves the Service's port 8080 to the pod's port named http (80).
    let pf = PortForward::start(c, &format!("service/{APP}"), &[8080])?;
    c.control_host()
        .run(|| two_at_once_and_a_body_both_ways(pf.ports[0]))
        .context("through the Service")?;
    drop(pf);
    let pf = PortForward::start(c, &format!("deployment/{APP}"), &[8081])?;
    let page = c.control_host().run(|| get(pf.ports[0], "/index.html"))?;
    ensure!(
        page.contains("alt-page"),
        "through the Deployment: {page:?}"
    );
    drop(pf);

    // Nothing listens on 9: the connection closes and kubectl says why.
    let pf = PortForward::start(c, &format!("pod/{pod}"), &[9])?;
    let answer = c.control_host().run(|| get(pf.ports[0], "/"))?;
    ensure!(answer.is_empty(), "a refused port answered {answer:?}");
    let stderr = pf.stderr_after(Duration::from_secs(10));
    ensure!(
        stderr.contains("error forwarding port 9"),
        "kubectl did not report the refused port: {stderr}"
    );

    python_port_forward(c, &pod)
}

/// The Python client's `portforward` (the channel protocol) to both ports at once.
fn python_port_forward(c: &Cluster, pod: &str) -> Result<()> {
    let script = r"
import sys
from kubernetes import client, config
from kubernetes.stream import portforward
config.load_kube_config()
api = client.CoreV1Api()
pf = portforward(api.connect_get_namespaced_pod_portforward, sys.argv[1], 'default', ports='80,8081')
socks = [pf.socket(p) for p in (80, 8081)]
for s in socks:
    s.setblocking(True)
    s.sendall(b'GET /index.html HTTP/1.0\r\n\r\n')
for p, s in zip((80, 8081), socks):
    data = b''
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    print(p, data.decode().splitlines()[-1], pf.error(p))
";
    let has_client = std::process::Command::new("python3")
        .args(["-c", "import kubernetes"])
        .status()?
        .success();
    if !has_client {
        ensure!(
            std::env::var("CI").as_deref() != Ok("true"),
            "the Python kubernetes client is missing; cargo xtask test installs it"
        );
        eprintln!("skipped: the Python port-forward: needs `pip install kubernetes`");
        return Ok(());
    }
    let out = c.control_host().run(|| {
        std::process::Command::new("timeout")
            .args(["60", "python3", "-c", script, pod])
            .env("KUBECONFIG", c.control().kubeconfig())
            .output()
    })?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success()
            && stdout.contains("80 pod-page None")
            && stdout.contains("8081 alt-page None"),
        "python port-forward: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// `kubectl cp` into the pod and back out (tar through exec) returns the same bytes.
pub fn kubectl_cp_round_trips_a_file_both_ways(c: &Cluster) -> Result<()> {
    let pod = deploy(c)?;
    let dir = tempfile::tempdir()?;
    let sent = dir.path().join("sent.txt");
    let content = numbered(20_000, "\n");
    std::fs::write(&sent, &content)?;
    let sent_arg = sent.display().to_string();
    c.kubectl(&["cp", &sent_arg, &format!("{pod}:/tmp/copied.txt")], None)?;
    let inside = c.kubectl(&["exec", &pod, "--", "wc", "-c", "/tmp/copied.txt"], None)?;
    ensure!(
        inside.trim_start().starts_with(&content.len().to_string()),
        "in the pod: {inside}"
    );
    let back = dir.path().join("back.txt");
    c.kubectl(
        &[
            "cp",
            &format!("{pod}:/tmp/copied.txt"),
            &back.display().to_string(),
        ],
        None,
    )?;
    let returned = std::fs::read_to_string(&back).context("the file copied back")?;
    ensure!(
        returned == content,
        "copied back {} bytes, sent {}",
        returned.len(),
        content.len()
    );
    // The later trials kill and delete nodes: leave them no pods of ours.
    c.kubectl(&["delete", "deployment,service", APP], None)?;
    Ok(())
}
