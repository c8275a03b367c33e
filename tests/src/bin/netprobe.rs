//! A tiny TCP/UDP server and client the end-to-end tests run as separate processes, so each
//! can join a test's network namespace and cgroup on its own without touching the test.

use std::{
    io::{BufRead, BufReader, Write},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    path::PathBuf,
    time::Duration,
};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
struct Cli {
    /// Join this named network namespace (/run/netns/NAME) first.
    #[arg(long, global = true)]
    netns: Option<String>,
    /// Join this cgroup (a cgroup v2 directory) first, before any socket exists.
    #[arg(long, global = true)]
    cgroup: Option<PathBuf>,
    /// Use UDP instead of TCP.
    #[arg(long, global = true)]
    udp: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Answer every TCP connection (or UDP datagram) with TOKEN; print `ready` once bound.
    Serve {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long)]
        token: String,
    },
    /// Dial ADDR once; print `reply=<what the server said> peer=<address the socket reports>`.
    Connect {
        #[arg(long)]
        to: SocketAddr,
    },
    /// Connect a UDP socket to ADDR (as a resolver does), ask once and print
    /// `reply=<answer> peer=<address the socket reports>`; then for each line on stdin ask
    /// again on the same socket and print `reply=<answer>`, or `error=<errno>` when the
    /// socket has an error or fails, and then connect it again and print `again=<answer>`.
    Hold {
        #[arg(long)]
        to: SocketAddr,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    // The cgroup first: the mount namespace is still the host's, and sockets are tagged
    // with their creator's cgroup.
    if let Some(cgroup) = &cli.cgroup {
        std::fs::write(cgroup.join("cgroup.procs"), std::process::id().to_string())
            .with_context(|| format!("joining cgroup {}", cgroup.display()))?;
    }
    if let Some(netns) = &cli.netns {
        let ns = std::fs::File::open(format!("/run/netns/{netns}"))
            .with_context(|| format!("opening netns {netns}"))?;
        nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET)
            .with_context(|| format!("joining netns {netns}"))?;
    }
    match cli.command {
        Command::Serve { listen, token } if cli.udp => serve_udp(listen, &token),
        Command::Serve { listen, token } => serve_tcp(listen, &token),
        Command::Connect { to } if cli.udp => connect_udp(to),
        Command::Connect { to } => connect_tcp(to),
        Command::Hold { to } => hold_udp(to),
    }
}

fn serve_tcp(listen: SocketAddr, token: &str) -> Result<()> {
    let listener = TcpListener::bind(listen).with_context(|| format!("binding {listen}"))?;
    println!("ready");
    for stream in listener.incoming() {
        let mut stream = stream.context("accepting")?;
        let _ = writeln!(stream, "{token}");
    }
    Ok(())
}

fn serve_udp(listen: SocketAddr, token: &str) -> Result<()> {
    let socket = UdpSocket::bind(listen).with_context(|| format!("binding {listen}"))?;
    println!("ready");
    let mut buf = [0u8; 512];
    loop {
        let (_, from) = socket.recv_from(&mut buf).context("receiving")?;
        socket
            .send_to(token.as_bytes(), from)
            .context("answering")?;
    }
}

fn connect_tcp(to: SocketAddr) -> Result<()> {
    let stream = TcpStream::connect_timeout(&to, Duration::from_secs(3))
        .with_context(|| format!("connecting to {to}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(3)))?;
    let peer = stream.peer_addr().context("getpeername")?;
    let mut line = String::new();
    BufReader::new(&stream)
        .read_line(&mut line)
        .context("reading the reply")?;
    println!("reply={} peer={peer}", line.trim());
    Ok(())
}

fn connect_udp(to: SocketAddr) -> Result<()> {
    let socket = UdpSocket::bind("0.0.0.0:0").context("binding a client socket")?;
    socket.set_read_timeout(Some(Duration::from_secs(3)))?;
    socket
        .send_to(b"ping", to)
        .with_context(|| format!("sending to {to}"))?;
    let mut buf = [0u8; 512];
    let (n, from) = socket.recv_from(&mut buf).context("receiving the reply")?;
    let reply = String::from_utf8_lossy(&buf[..n]);
    println!("reply={reply} peer={from}");
    Ok(())
}

fn ask(socket: &UdpSocket) -> std::io::Result<String> {
    socket.send(b"ping")?;
    let mut buf = [0u8; 512];
    let n = socket.recv(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

fn hold_udp(to: SocketAddr) -> Result<()> {
    let socket = UdpSocket::bind("0.0.0.0:0").context("binding a client socket")?;
    socket.set_read_timeout(Some(Duration::from_secs(3)))?;
    socket
        .connect(to)
        .with_context(|| format!("connecting to {to}"))?;
    let reply = ask(&socket).context("asking")?;
    let peer = socket.peer_addr().context("getpeername")?;
    println!("reply={reply} peer={peer}");
    for line in std::io::stdin().lock().lines() {
        line.context("reading stdin")?;
        // An error the kernel left on the socket (SO_ERROR) comes first, as a resolver
        // blocked in recv would see it.
        let answer = match socket.take_error() {
            Ok(Some(err)) | Err(err) => Err(err),
            Ok(None) => ask(&socket),
        };
        match answer {
            Ok(reply) => println!("reply={reply}"),
            Err(err) => {
                println!("error={}", err.raw_os_error().unwrap_or(0));
                socket
                    .connect(to)
                    .with_context(|| format!("connecting to {to} again"))?;
                println!("again={}", ask(&socket).context("asking again")?);
            }
        }
    }
    Ok(())
}
