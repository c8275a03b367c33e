//! Request limits end to end against the real `control` binary, with small limits so every
//! outcome is decided by counts, never by timing: a user holding the only mutating seat
//! and flooding gets 429 (`TooManyRequests`, `Retry-After`) once their own queue is full,
//! while the admin is served at once and another user is served before the flooder's
//! queued requests; a user's second watch is refused past the cap; an oversize body is 413.

use std::{
    io::{ErrorKind, Read, Write},
    net::{IpAddr, TcpStream},
    sync::{Arc, mpsc},
    time::Duration,
};

use anyhow::{Context, Result};
use rustls::{ClientConfig, ClientConnection, StreamOwned};
use rustls_pki_types::ServerName;
use serde_json::{Value, json};
use skiff_tests::control::ControlPlane;

const ALICE: &str = "a11ce0000000000000000000000000a1";
const BOB: &str = "b0b0000000000000000000000000000b";
const CMS: &str = "/api/v1/namespaces/default/configmaps";
/// Requests one user may have queued (`--max-queued-requests-per-user`).
const QUEUE: usize = 2;

type Tls = StreamOwned<ClientConnection, TcpStream>;

fn start(dir: &std::path::Path) -> Result<ControlPlane> {
    let tokens = dir.join("tokens.csv");
    std::fs::write(
        &tokens,
        format!("{ALICE},alice,2001,\"users\"\n{BOB},bob,2002,\"users\"\n"),
    )?;
    let queue = QUEUE.to_string();
    let cp = ControlPlane::start_with(
        &dir.join("cp"),
        &[
            "--no-scheduler",
            "--no-controllers",
            "--token-auth-file",
            tokens.to_str().context("path")?,
            "--max-requests-inflight",
            "1",
            "--max-mutating-requests-inflight",
            "1",
            "--max-queued-requests-per-user",
            &queue,
            "--max-watches-per-user",
            "1",
            "--max-request-body-bytes",
            "65536",
        ],
    )?;
    cp.ok(
        &[
            "create",
            "clusterrole",
            "cm-user",
            "--verb=get,list,watch,create",
            "--resource=configmaps",
        ],
        None,
    )?;
    cp.ok(
        &[
            "create",
            "clusterrolebinding",
            "cm-users",
            "--clusterrole=cm-user",
            "--group=users",
        ],
        None,
    )?;
    let tls = tls(&cp)?;
    skiff_tests::sim::wait_for("the users to be allowed", Duration::from_secs(30), || {
        let mut s = open(&cp, &tls)?;
        s.write_all(request("GET", CMS, BOB, b"").as_bytes())?;
        Ok((answer(&mut s)?.0 == 200).then_some(()))
    })?;
    Ok(cp)
}

/// Trusts the cluster CA and presents no certificate: the bearer token says who calls.
fn tls(cp: &ControlPlane) -> Result<Arc<ClientConfig>> {
    cp.admin_credentials()?.anonymous_config()
}

fn open(cp: &ControlPlane, tls: &Arc<ClientConfig>) -> Result<Tls> {
    let tcp = TcpStream::connect((cp.address(), cp.port()))?;
    tcp.set_read_timeout(Some(Duration::from_mins(2)))?;
    let name = ServerName::IpAddress(IpAddr::V4(cp.address()).into());
    let mut s = StreamOwned::new(ClientConnection::new(Arc::clone(tls), name)?, tcp);
    while s.conn.is_handshaking() {
        s.conn.complete_io(&mut s.sock)?;
    }
    Ok(s)
}

/// A request's head (and body) as `token`'s; a body shorter than `Content-Length` says
/// that more is to come.
fn request(method: &str, path: &str, token: &str, body: &[u8]) -> String {
    format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{}",
        body.len(),
        String::from_utf8_lossy(body)
    )
}

/// The status code, head and body of the answer, read to the end.
fn answer(s: &mut Tls) -> Result<(u16, String, String)> {
    let mut raw = Vec::new();
    match s.read_to_end(&mut raw) {
        Ok(_) => {}
        Err(err) if err.kind() == ErrorKind::UnexpectedEof && !raw.is_empty() => {}
        Err(err) => return Err(err.into()),
    }
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = raw.split_once("\r\n\r\n").context("no answer head")?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("no status line")?;
    Ok((code, head.to_owned(), body.to_owned()))
}

/// The head of a streamed answer, leaving the stream open.
fn head(s: &mut Tls) -> Result<(u16, String)> {
    let mut raw = Vec::new();
    let mut byte = [0u8; 1];
    while !raw.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte)?;
        raw.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&raw).into_owned();
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("no status line")?;
    Ok((code, head))
}

fn configmap(name: &str) -> Vec<u8> {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}})
        .to_string()
        .into_bytes()
}

/// The value of gauge `metric` for `kind` in the admin's `/metrics`.
fn gauge(cp: &ControlPlane, metric: &str, kind: &str) -> Result<u64> {
    let text = cp.http_get("/metrics")?;
    let prefix = format!("{metric}{{request_kind=\"{kind}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .context("no such gauge")?
        .trim()
        .parse()
        .context("gauge value")
}

fn wait_gauge(cp: &ControlPlane, metric: &str, want: u64) -> Result<()> {
    skiff_tests::sim::wait_for(
        &format!("{metric} to reach {want}"),
        Duration::from_mins(1),
        || Ok((gauge(cp, metric, "mutating")? == want).then_some(())),
    )
}

fn resource_version(body: &str) -> Result<u64> {
    let v: Value = serde_json::from_str(body.trim())?;
    v["metadata"]["resourceVersion"]
        .as_str()
        .context("no resourceVersion")?
        .parse()
        .context("resourceVersion")
}

#[test]
fn a_flooding_user_gets_429_while_the_admin_and_another_user_are_served() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let cp = start(dir.path())?;
    let tls = tls(&cp)?;
    // Alice takes the only mutating seat with a request whose body is still coming.
    let whole = request("POST", CMS, ALICE, &configmap("held")).into_bytes();
    let (sent, rest) = whole.split_at(whole.len() - 10);
    let mut holder = open(&cp, &tls)?;
    holder.write_all(sent)?;
    holder.flush()?;
    wait_gauge(&cp, "apiserver_current_inflight_requests", 1)?;

    // Her flood: her queue takes QUEUE, the rest are refused at once.
    let flood = QUEUE + 3;
    let (done_tx, done) = mpsc::channel();
    let mut senders = Vec::new();
    for i in 0..flood {
        let (cp_tls, tx) = (Arc::clone(&tls), done_tx.clone());
        let mut s = open(&cp, &cp_tls)?;
        senders.push(std::thread::spawn(move || -> Result<()> {
            s.write_all(request("POST", CMS, ALICE, &configmap(&format!("flood-{i}"))).as_bytes())?;
            let _ = tx.send(("alice", answer(&mut s)?));
            Ok(())
        }));
    }
    for _ in 0..flood - QUEUE {
        let (who, (code, head, body)) = done.recv_timeout(Duration::from_mins(2))?;
        assert_eq!((who, code), ("alice", 429), "{head}\n{body}");
        assert!(
            head.to_ascii_lowercase().contains("retry-after: 1"),
            "{head}"
        );
        let status: Value = serde_json::from_str(body.trim())?;
        assert_eq!(status["kind"], "Status");
        assert_eq!(status["reason"], "TooManyRequests");
    }
    wait_gauge(&cp, "apiserver_current_inqueue_requests", QUEUE as u64)?;

    // The admin (system:masters) is exempt: served while every seat is taken.
    let (code, body) = cp.http("POST", CMS, "application/json", &configmap("admin"))?;
    assert_eq!(code, 201, "{body}");

    // Bob queues behind the seat; when alice's held request ends, the seat is his before
    // her queued ones.
    let mut bob = open(&cp, &tls)?;
    bob.write_all(request("POST", CMS, BOB, &configmap("bob")).as_bytes())?;
    wait_gauge(&cp, "apiserver_current_inqueue_requests", QUEUE as u64 + 1)?;
    holder.write_all(rest)?;
    holder.flush()?;
    let (code, _, body) = answer(&mut holder)?;
    assert_eq!(code, 201, "{body}");
    let (code, _, body) = answer(&mut bob)?;
    assert_eq!(code, 201, "{body}");
    let bob_rv = resource_version(&body)?;
    for _ in 0..QUEUE {
        let (_, (code, _, body)) = done.recv_timeout(Duration::from_mins(2))?;
        assert_eq!(code, 201, "{body}");
        assert!(
            resource_version(&body)? > bob_rv,
            "a queued request of the flooder was served before bob"
        );
    }
    for sender in senders {
        sender
            .join()
            .map_err(|_| anyhow::anyhow!("sender panicked"))??;
    }
    Ok(())
}

#[test]
fn a_second_watch_past_the_cap_is_refused_and_an_oversize_body_is_413() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let cp = start(dir.path())?;
    let tls = tls(&cp)?;
    let watch = |token: &str| -> Result<(Tls, u16, String)> {
        let mut s = open(&cp, &tls)?;
        s.write_all(request("GET", &format!("{CMS}?watch=1"), token, b"").as_bytes())?;
        let (code, head) = head(&mut s)?;
        Ok((s, code, head))
    };
    let (_alice_first, code, head) = watch(ALICE)?;
    assert_eq!(code, 200, "{head}");
    let (mut refused, code, head) = watch(ALICE)?;
    assert_eq!(code, 429, "{head}");
    let mut body = String::new();
    let _ = refused.read_to_string(&mut body);
    assert!(body.contains("TooManyRequests"), "{body}");
    // The cap is per user.
    let (_bob, code, head) = watch(BOB)?;
    assert_eq!(code, 200, "{head}");

    let mut big = configmap("big");
    big.truncate(big.len() - 1);
    big.extend_from_slice(format!(",\"data\":{{\"k\":\"{}\"}}}}", "x".repeat(70_000)).as_bytes());
    let (code, body) = cp.http("POST", CMS, "application/json", &big)?;
    assert_eq!(code, 413, "{body}");
    let status: Value = serde_json::from_str(body.trim())?;
    assert_eq!(status["reason"], "RequestEntityTooLarge");
    assert_eq!(
        status["message"],
        "Request entity too large: limit is 65536"
    );
    // Just under the limit is fine.
    let mut fits = configmap("fits");
    fits.truncate(fits.len() - 1);
    fits.extend_from_slice(format!(",\"data\":{{\"k\":\"{}\"}}}}", "x".repeat(60_000)).as_bytes());
    let (code, body) = cp.http("POST", CMS, "application/json", &fits)?;
    assert_eq!(code, 201, "{body}");
    Ok(())
}
