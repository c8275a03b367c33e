//! Destroying stale connected UDP sockets, for real: sockets the test opens in a network
//! namespace it made, listed and destroyed through `NETLINK_SOCK_DIAG` from outside that
//! namespace, and their owner's next call failing.

use std::{io::ErrorKind, net::UdpSocket as StdUdp, time::Duration};

use anyhow::{Context, Result, ensure};
use skiff_node_proxy::{
    UdpSocket,
    ebpf::{SockDiag, cookie::current_netns_cookie},
};
use skiff_tests::{
    netns::{Netns, in_netns},
    require_root,
};

/// A server socket and two clients connected to it, all on loopback inside `netns`.
fn connected_pair(netns: &Netns) -> Result<(StdUdp, StdUdp, StdUdp)> {
    in_netns(&netns.path(), || -> Result<_> {
        let server = StdUdp::bind("127.0.0.1:0")?;
        let to = server.local_addr()?;
        let doomed = StdUdp::bind("127.0.0.1:0")?;
        doomed.connect(to)?;
        let kept = StdUdp::bind("127.0.0.1:0")?;
        kept.connect(to)?;
        Ok((server, doomed, kept))
    })?
}

#[test]
fn a_destroyed_connected_udp_socket_fails_its_next_receive_with_econnaborted() -> Result<()> {
    if !require_root("a_destroyed_connected_udp_socket_fails_its_next_receive") {
        return Ok(());
    }
    let netns = Netns::new("skiff-reap")?;
    let (server, doomed, kept) = connected_pair(&netns)?;
    for s in [&doomed, &kept] {
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
    }

    let diag = SockDiag::in_netns(&netns.path())?;
    ensure!(
        diag.netns() != current_netns_cookie()?,
        "the listing must speak for the test's namespace, not the caller's"
    );
    let sockets = diag.connected_udp()?;
    let doomed_addr = doomed.local_addr()?;
    let kept_addr = kept.local_addr()?;
    let server_addr = server.local_addr()?;
    // Both clients are listed with their peer; the unconnected server is not.
    let find = |addr: std::net::SocketAddr| {
        sockets
            .iter()
            .find(|s| std::net::SocketAddr::V4(s.local) == addr)
            .copied()
    };
    let target = find(doomed_addr).context("the doomed client is listed")?;
    ensure!(std::net::SocketAddr::V4(target.peer) == server_addr);
    ensure!(find(kept_addr).is_some(), "the other client is listed");
    ensure!(find(server_addr).is_none(), "an unconnected socket is not");
    ensure!(target.cookie != 0);

    // The kernel checks the cookie (as the reverse-translation map keys it): another
    // socket's cookie destroys nothing.
    let impostor = UdpSocket {
        cookie: target.cookie ^ 1,
        ..target
    };
    diag.destroy(&impostor)?;
    ensure!(
        diag.connected_udp()?.contains(&target),
        "a wrong cookie must not destroy the socket"
    );

    diag.destroy(&target)?;
    let mut buf = [0u8; 16];
    let err = doomed
        .recv(&mut buf)
        .expect_err("a destroyed socket cannot receive");
    ensure!(
        err.raw_os_error() == Some(nix::libc::ECONNABORTED),
        "expected ECONNABORTED, got {err}"
    );
    // The socket is no longer connected: it must connect again to send.
    let err = doomed.send(b"x").expect_err("no peer any more");
    ensure!(
        err.raw_os_error() == Some(nix::libc::EDESTADDRREQ),
        "expected EDESTADDRREQ, got {err}"
    );
    ensure!(
        diag.connected_udp()?
            .iter()
            .all(|s| std::net::SocketAddr::V4(s.local) != doomed_addr),
        "the destroyed socket is no longer connected"
    );

    // The other client is untouched: it still talks to the server.
    kept.send(b"ping")?;
    let (n, from) = server.recv_from(&mut buf)?;
    server.send_to(&buf[..n], from)?;
    let n = kept.recv(&mut buf)?;
    ensure!(&buf[..n] == b"ping");

    // Destroying what is already gone is fine.
    diag.destroy(&target)?;
    Ok(())
}

#[test]
fn a_missing_namespace_file_is_a_namespace_error() {
    let err = SockDiag::in_netns(std::path::Path::new("/run/netns/skiff-no-such-namespace"))
        .expect_err("no such namespace");
    assert!(
        matches!(err, skiff_node_proxy::reap::ReapError::Namespace { ref source, .. }
            if source.kind() == ErrorKind::NotFound),
        "{err:?}"
    );
}
