//! Probes and lifecycle hooks: exec, httpGet, tcpSocket and grpc checks against a running
//! container, and the per-probe loop with the kubelet's timing and threshold rules.

use std::{fmt::Write as _, sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use k8s_openapi::{
    api::core::v1::{
        ContainerPort, ExecAction, GRPCAction, HTTPGetAction, LifecycleHandler, Probe,
        TCPSocketAction,
    },
    apimachinery::pkg::util::intstr::IntOrString,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    sync::mpsc::UnboundedSender,
    task::JoinHandle,
};

use super::backend::PodBackend;

/// Which probe a result belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeKind {
    /// `startupProbe`: holds the others back until it passes.
    Startup,
    /// `livenessProbe`: failing restarts the container.
    Liveness,
    /// `readinessProbe`: drives the container's `ready`.
    Readiness,
}

impl ProbeKind {
    /// The word the kubelet uses in events.
    #[must_use]
    pub fn word(self) -> &'static str {
        match self {
            Self::Startup => "Startup",
            Self::Liveness => "Liveness",
            Self::Readiness => "Readiness",
        }
    }
}

/// A probe's verdict changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeResult {
    /// The container's name.
    pub container: String,
    /// The run it was probing.
    pub id: String,
    /// Which probe.
    pub kind: ProbeKind,
    /// Passing or failing.
    pub ok: bool,
    /// Why it failed.
    pub message: String,
}

/// What a check runs against.
#[derive(Debug, Clone)]
pub struct Target {
    /// The address the pod answers on (its IP, or the node's for `hostNetwork`).
    pub ip: String,
    /// The container's runtime ID (for exec).
    pub id: String,
    /// The container's ports, to resolve named ports.
    pub ports: Vec<ContainerPort>,
}

/// One check, as probes and hooks share them.
#[derive(Debug, Clone, Copy)]
pub enum Check<'a> {
    /// Run a command in the container.
    Exec(&'a ExecAction),
    /// GET a URL.
    Http(&'a HTTPGetAction),
    /// Open a TCP connection.
    Tcp(&'a TCPSocketAction),
    /// Ask the gRPC health service.
    Grpc(&'a GRPCAction),
    /// Wait (a `sleep` hook).
    Sleep(i64),
}

impl<'a> Check<'a> {
    /// The check a probe describes.
    #[must_use]
    pub fn of_probe(p: &'a Probe) -> Option<Self> {
        if let Some(e) = &p.exec {
            Some(Self::Exec(e))
        } else if let Some(h) = &p.http_get {
            Some(Self::Http(h))
        } else if let Some(t) = &p.tcp_socket {
            Some(Self::Tcp(t))
        } else {
            p.grpc.as_ref().map(Self::Grpc)
        }
    }

    /// The check a lifecycle hook describes.
    #[must_use]
    pub fn of_hook(h: &'a LifecycleHandler) -> Option<Self> {
        if let Some(e) = &h.exec {
            Some(Self::Exec(e))
        } else if let Some(g) = &h.http_get {
            Some(Self::Http(g))
        } else if let Some(t) = &h.tcp_socket {
            Some(Self::Tcp(t))
        } else {
            h.sleep.as_ref().map(|s| Self::Sleep(s.seconds))
        }
    }
}

fn port(port: &IntOrString, ports: &[ContainerPort]) -> Result<u16, String> {
    match port {
        IntOrString::Int(p) => u16::try_from(*p).map_err(|_| format!("invalid port {p}")),
        IntOrString::String(name) => ports
            .iter()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .and_then(|p| u16::try_from(p.container_port).ok())
            .ok_or_else(|| format!("port {name:?} not found in the container's ports")),
    }
}

async fn http_get(target: &Target, action: &HTTPGetAction) -> Result<(), String> {
    if action
        .scheme
        .as_deref()
        .is_some_and(|s| s.eq_ignore_ascii_case("HTTPS"))
    {
        return Err("HTTPS probes are not supported by this node".to_owned());
    }
    let host = action.host.clone().unwrap_or_else(|| target.ip.clone());
    let port = port(&action.port, &target.ports)?;
    let path = action.path.as_deref().unwrap_or("/");
    let path = if path.starts_with('/') {
        path.to_owned()
    } else {
        format!("/{path}")
    };
    let mut stream = TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| format!("Get \"http://{host}:{port}{path}\": {e}"))?;
    let mut request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: kube-probe/1.33\r\n\
         Accept: */*\r\nConnection: close\r\n"
    );
    for h in action.http_headers.iter().flatten() {
        let _ = write!(request, "{}: {}\r\n", h.name, h.value);
    }
    request.push_str("\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut head = Vec::with_capacity(64);
    let mut buf = [0_u8; 256];
    while !head.windows(2).any(|w| w == b"\r\n") {
        let n = stream.read(&mut buf).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err(format!("Get \"http://{host}:{port}{path}\": EOF"));
        }
        head.extend_from_slice(&buf[..n]);
        if head.len() > 4096 {
            break;
        }
    }
    let line = String::from_utf8_lossy(&head);
    let code: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("malformed HTTP response {:?}", line.lines().next()))?;
    if (200..400).contains(&code) {
        Ok(())
    } else {
        Err(format!("HTTP probe failed with statuscode: {code}"))
    }
}

/// `grpc.health.v1.Health/Check` over cleartext HTTP/2.
async fn grpc(target: &Target, action: &GRPCAction) -> Result<(), String> {
    let port = u16::try_from(action.port).map_err(|_| "invalid port".to_owned())?;
    let stream = TcpStream::connect((target.ip.as_str(), port))
        .await
        .map_err(|e| format!("failed to connect service \"{}:{port}\": {e}", target.ip))?;
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .map_err(|e| e.to_string())?;
    let conn = tokio::spawn(conn);
    // HealthCheckRequest { service = 1 }, length-prefixed as a gRPC message.
    let service = action.service.clone().unwrap_or_default();
    let mut message = Vec::new();
    if !service.is_empty() {
        message.push(0x0a);
        message.push(u8::try_from(service.len()).map_err(|_| "service name too long")?);
        message.extend_from_slice(service.as_bytes());
    }
    let mut body = vec![0_u8];
    body.extend_from_slice(&u32::try_from(message.len()).unwrap_or(0).to_be_bytes());
    body.extend_from_slice(&message);
    let request = http::Request::post(format!(
        "http://{}:{port}/grpc.health.v1.Health/Check",
        target.ip
    ))
    .header("content-type", "application/grpc")
    .header("te", "trailers")
    .body(Full::new(Bytes::from(body)))
    .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    let collected = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    let status = collected
        .trailers()
        .and_then(|t| t.get("grpc-status"))
        .and_then(|v| v.to_str().ok())
        .unwrap_or("0")
        .to_owned();
    let data = collected.to_bytes();
    conn.abort();
    if status != "0" {
        return Err(format!("rpc error: grpc-status {status}"));
    }
    // HealthCheckResponse { status = 1 (SERVING) } after the 5-byte prefix.
    if data.get(5..7) == Some(&[0x08, 0x01]) {
        Ok(())
    } else {
        Err("service unhealthy (responded with \"NOT_SERVING\")".to_owned())
    }
}

/// Runs one check within `timeout`.
///
/// # Errors
/// The failure's message, as the kubelet words it.
pub async fn run(
    backend: &dyn PodBackend,
    target: &Target,
    check: Check<'_>,
    timeout: Duration,
) -> Result<(), String> {
    let work = async {
        match check {
            // A node without a pod network (simulated) sends no probe packets anywhere.
            Check::Http(_) | Check::Tcp(_) | Check::Grpc(_) if !backend.network_checks() => Ok(()),
            Check::Exec(e) => {
                let command = e.command.clone().unwrap_or_default();
                match backend.exec(&target.id, &command, timeout).await {
                    Ok(0) => Ok(()),
                    Ok(code) => Err(format!("command {command:?} exited with {code}")),
                    Err(err) => Err(err.message),
                }
            }
            Check::Http(h) => http_get(target, h).await,
            Check::Tcp(t) => {
                let host = t.host.clone().unwrap_or_else(|| target.ip.clone());
                let port = port(&t.port, &target.ports)?;
                TcpStream::connect((host.as_str(), port))
                    .await
                    .map(drop)
                    .map_err(|e| format!("dial tcp {host}:{port}: {e}"))
            }
            Check::Grpc(g) => grpc(target, g).await,
            Check::Sleep(seconds) => {
                tokio::time::sleep(Duration::from_secs(seconds.try_into().unwrap_or(0))).await;
                Ok(())
            }
        }
    };
    match check {
        // A sleep hook is bounded by the grace period, not a probe timeout.
        Check::Sleep(_) => work.await,
        _ => tokio::time::timeout(timeout, work)
            .await
            .unwrap_or_else(|_| Err(format!("timeout: failed after {}s", timeout.as_secs()))),
    }
}

fn secs(v: Option<i32>, default: u64) -> Duration {
    Duration::from_secs(v.and_then(|v| u64::try_from(v).ok()).unwrap_or(default))
}

/// Probes a container until the task is aborted, sending a result whenever the verdict
/// changes (startup probes end once they pass, liveness probes once they fail).
pub fn spawn(
    backend: Arc<dyn PodBackend>,
    target: Target,
    container: String,
    kind: ProbeKind,
    probe: Probe,
    tx: UnboundedSender<ProbeResult>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let Some(check) = Check::of_probe(&probe) else {
            return;
        };
        let period = secs(probe.period_seconds, 10).max(Duration::from_secs(1));
        let timeout = secs(probe.timeout_seconds, 1).max(Duration::from_secs(1));
        let success_threshold = probe.success_threshold.unwrap_or(1).max(1);
        let failure_threshold = probe.failure_threshold.unwrap_or(3).max(1);
        tokio::time::sleep(secs(probe.initial_delay_seconds, 0)).await;
        let (mut successes, mut failures) = (0, 0);
        let mut verdict: Option<bool> = None;
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let result = run(backend.as_ref(), &target, check, timeout).await;
            let message = match result {
                Ok(()) => {
                    successes += 1;
                    failures = 0;
                    String::new()
                }
                Err(message) => {
                    failures += 1;
                    successes = 0;
                    message
                }
            };
            let now = if successes >= success_threshold {
                Some(true)
            } else if failures >= failure_threshold {
                Some(false)
            } else {
                None
            };
            if let Some(ok) = now.filter(|ok| verdict != Some(*ok)) {
                verdict = Some(ok);
                let result = ProbeResult {
                    container: container.clone(),
                    id: target.id.clone(),
                    kind,
                    ok,
                    message,
                };
                if tx.send(result).is_err() {
                    return;
                }
                match (kind, ok) {
                    (ProbeKind::Startup, true)
                    | (ProbeKind::Liveness | ProbeKind::Startup, false) => {
                        return;
                    }
                    _ => {}
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use tokio::net::TcpListener;

    use super::*;

    #[test]
    fn named_ports_resolve_from_the_container() {
        let ports = vec![ContainerPort {
            name: Some("http".into()),
            container_port: 8080,
            ..ContainerPort::default()
        }];
        assert_eq!(port(&IntOrString::String("http".into()), &ports), Ok(8080));
        assert_eq!(port(&IntOrString::Int(81), &ports), Ok(81));
        assert!(port(&IntOrString::String("grpc".into()), &ports).is_err());
    }

    async fn serve_once(status: &'static str) -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let mut buf = [0_u8; 1024];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n").as_bytes())
                    .await;
            }
        });
        port
    }

    #[tokio::test]
    async fn http_probe_passes_on_2xx_3xx_and_fails_on_others() {
        let ok = serve_once("204 No Content").await;
        let redirect = serve_once("302 Found").await;
        let bad = serve_once("503 Service Unavailable").await;
        let target = Target {
            ip: "127.0.0.1".into(),
            id: "c".into(),
            ports: vec![],
        };
        for (port, pass) in [(ok, true), (redirect, true), (bad, false)] {
            let action = HTTPGetAction {
                port: IntOrString::Int(i32::from(port)),
                path: Some("/healthz".into()),
                ..HTTPGetAction::default()
            };
            assert_eq!(
                http_get(&target, &action).await.is_ok(),
                pass,
                "port {port}"
            );
        }
        let message = http_get(
            &target,
            &HTTPGetAction {
                port: IntOrString::Int(i32::from(bad)),
                ..HTTPGetAction::default()
            },
        )
        .await
        .unwrap_err();
        assert_eq!(message, "HTTP probe failed with statuscode: 503");
    }
}
