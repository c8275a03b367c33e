//! kube-proxy's iptables mode reproduced for the bench: the `nat` table kube-proxy writes for
//! the same Services, applied with `iptables-restore` in a node namespace of its own.
//!
//! The node (`kp-node`) has a bridge with the backend "pods" (namespaces with a veth each,
//! running the same load tool server as the skiff backends), a routed veth to a client
//! pod inside the cluster CIDR, and an `eth0` to an outside client host for node ports.
//! The rules follow kube-proxy's `proxier.go` (v1.31): `KUBE-SERVICES` jumps per Service
//! port to `KUBE-SVC-*`, which marks traffic from outside the cluster CIDR with
//! `KUBE-MARK-MASQ` and picks a `KUBE-SEP-*` with `statistic mode random probability
//! 1/(n-i)`; each `KUBE-SEP-*` marks hairpin traffic and DNATs; node ports go
//! `KUBE-SERVICES` -> `KUBE-NODEPORTS` (last rule, `addrtype LOCAL`) -> `KUBE-EXT-*`
//! (masquerade) -> `KUBE-SVC-*`; `KUBE-POSTROUTING` masquerades marked packets. Chain names
//! are kube-proxy's: the first 16 base32 characters of the SHA-256 of the port name,
//! protocol (and endpoint). A full sync writes every chain (`--noflush`); a change is a
//! partial sync as kube-proxy's `MinimizeIPTablesRestore` does it: `KUBE-SERVICES` and
//! `KUBE-NODEPORTS` in full, the changed Service's chains, and `-X` for its stale endpoint
//! chain. kube-proxy's `filter` table rules (reject without endpoints, `KUBE-FORWARD`) are
//! left out: they do not see the measured packets' fate beyond one more table walk.

use std::{
    fmt::Write as _,
    io::Write as _,
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, ensure};
use sha2::{Digest as _, Sha256};
use skiff_tests::{
    many_services::{BACKEND_TCP, BACKEND_UDP, Svc, TCP_PORT, UDP_PORT, services},
    netns::Netns,
    process::ChildGuard,
};

/// The cluster CIDR of the kube-proxy node (`--cluster-cidr`).
const CLUSTER_CIDR: &str = "10.244.0.0/16";
/// The node's address toward the outside client.
pub const NODE_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 1);

/// Which `iptables-restore` the bench uses: the legacy (`x_tables`) one when installed, as
/// kube-proxy's classic iptables mode ran on it; else Debian's default (`iptables-nft`).
#[must_use]
pub fn restore_program() -> &'static str {
    let legacy = [
        "/usr/sbin/iptables-legacy-restore",
        "/sbin/iptables-legacy-restore",
    ];
    if legacy.iter().any(|p| Path::new(p).exists()) {
        "iptables-legacy-restore"
    } else {
        "iptables-restore"
    }
}

/// kube-proxy's `portProtoHash`: base32 of SHA-256, first 16 characters.
fn hash(text: &str) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let digest = Sha256::digest(text.as_bytes());
    let mut out = String::with_capacity(16);
    let (mut bits, mut acc) = (0u32, 0u32);
    for byte in digest.iter().take(10) {
        acc = (acc << 8) | u32::from(*byte);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(char::from(ALPHABET[((acc >> bits) & 31) as usize]));
        }
    }
    out
}

/// One Service port's chains.
struct Port<'a> {
    service: &'a Svc,
    /// `default/svc-N:tcp`.
    name: String,
    proto: &'static str,
    number: u16,
    target: u16,
    external: Option<u16>,
}

impl Port<'_> {
    fn svc_chain(&self) -> String {
        format!("KUBE-SVC-{}", hash(&format!("{}{}", self.name, self.proto)))
    }

    fn ext_chain(&self) -> String {
        format!("KUBE-EXT-{}", hash(&format!("{}{}", self.name, self.proto)))
    }

    fn sep_chain(&self, ep: Ipv4Addr) -> String {
        let endpoint = format!("{ep}:{}", self.target);
        format!(
            "KUBE-SEP-{}",
            hash(&format!("{}{}{endpoint}", self.name, self.proto))
        )
    }

    /// Its `KUBE-SERVICES` rule.
    fn services_rule(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "-A KUBE-SERVICES -m comment --comment \"{} cluster IP\" -m {p} -p {p} -d {}/32 --dport {} -j {}",
            self.name,
            self.service.vip,
            self.number,
            self.svc_chain(),
            p = self.proto
        );
    }

    fn node_port_rule(&self, out: &mut String) {
        if let Some(np) = self.external {
            let _ = writeln!(
                out,
                "-A KUBE-NODEPORTS -m comment --comment {} -m {p} -p {p} --dport {np} -j {}",
                self.name,
                self.ext_chain(),
                p = self.proto
            );
        }
    }

    fn declare(&self, out: &mut String) {
        let _ = writeln!(out, ":{} - [0:0]", self.svc_chain());
        if self.external.is_some() {
            let _ = writeln!(out, ":{} - [0:0]", self.ext_chain());
        }
        for ep in &self.service.endpoints {
            let _ = writeln!(out, ":{} - [0:0]", self.sep_chain(*ep));
        }
    }

    /// Its own chains' rules.
    fn chains(&self, out: &mut String) {
        let svc = self.svc_chain();
        let _ = writeln!(
            out,
            "-A {svc} -m comment --comment \"{} cluster IP\" -m {p} -p {p} -d {}/32 --dport {} ! -s {CLUSTER_CIDR} -j KUBE-MARK-MASQ",
            self.name,
            self.service.vip,
            self.number,
            p = self.proto
        );
        let n = self.service.endpoints.len();
        for (i, ep) in self.service.endpoints.iter().enumerate() {
            let sep = self.sep_chain(*ep);
            let comment = format!("\"{} -> {ep}:{}\"", self.name, self.target);
            if i + 1 < n {
                #[expect(clippy::cast_precision_loss, reason = "a handful of endpoints")]
                let probability = 1.0 / (n - i) as f64;
                let _ = writeln!(
                    out,
                    "-A {svc} -m comment --comment {comment} -m statistic --mode random --probability {probability:.10} -j {sep}"
                );
            } else {
                let _ = writeln!(out, "-A {svc} -m comment --comment {comment} -j {sep}");
            }
            let _ = writeln!(
                out,
                "-A {sep} -m comment --comment {} -s {ep}/32 -j KUBE-MARK-MASQ",
                self.name
            );
            let _ = writeln!(
                out,
                "-A {sep} -m comment --comment {} -m {p} -p {p} -j DNAT --to-destination {ep}:{}",
                self.name,
                self.target,
                p = self.proto
            );
        }
        if self.external.is_some() {
            let ext = self.ext_chain();
            let _ = writeln!(
                out,
                "-A {ext} -m comment --comment \"masquerade traffic for {} external destinations\" -j KUBE-MARK-MASQ",
                self.name
            );
            let _ = writeln!(out, "-A {ext} -j {svc}");
        }
    }
}

fn ports(svc: &Svc) -> [Port<'_>; 2] {
    let name = |p: &str| format!("default/svc-{}:{p}", svc.index);
    [
        Port {
            service: svc,
            name: name("tcp"),
            proto: "tcp",
            number: TCP_PORT,
            target: BACKEND_TCP,
            external: svc.node_ports.map(|(t, _)| t),
        },
        Port {
            service: svc,
            name: name("udp"),
            proto: "udp",
            number: UDP_PORT,
            target: BACKEND_UDP,
            external: svc.node_ports.map(|(_, u)| u),
        },
    ]
}

const NODEPORTS_JUMP: &str = "-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\n";

/// What kube-proxy sets up once: the jumps from the built-in chains and the masquerade.
const BASE: &str = "*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-NODEPORTS - [0:0]
-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES
-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES
-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING
-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000
-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000
-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully
COMMIT
";

/// A full sync: every Service chain.
#[must_use]
pub fn full_sync(services: &[Svc]) -> String {
    let mut out = String::from("*nat\n:KUBE-SERVICES - [0:0]\n:KUBE-NODEPORTS - [0:0]\n");
    for svc in services {
        for p in ports(svc) {
            p.declare(&mut out);
        }
    }
    for svc in services {
        for p in ports(svc) {
            p.services_rule(&mut out);
            p.node_port_rule(&mut out);
        }
    }
    out.push_str(NODEPORTS_JUMP);
    for svc in services {
        for p in ports(svc) {
            p.chains(&mut out);
        }
    }
    out.push_str("COMMIT\n");
    out
}

/// A partial sync after `services[changed]`'s endpoints changed from `before`.
#[must_use]
pub fn partial_sync(services: &[Svc], changed: usize, before: &[Ipv4Addr]) -> String {
    let mut out = String::from("*nat\n:KUBE-SERVICES - [0:0]\n:KUBE-NODEPORTS - [0:0]\n");
    let svc = &services[changed];
    let stale: Vec<Ipv4Addr> = before
        .iter()
        .filter(|ep| !svc.endpoints.contains(ep))
        .copied()
        .collect();
    for p in ports(svc) {
        p.declare(&mut out);
        // A stale chain is declared (so flushed) before it is deleted, as kube-proxy does.
        for ep in &stale {
            let _ = writeln!(out, ":{} - [0:0]", p.sep_chain(*ep));
        }
    }
    for s in services {
        for p in ports(s) {
            p.services_rule(&mut out);
            p.node_port_rule(&mut out);
        }
    }
    out.push_str(NODEPORTS_JUMP);
    for p in ports(svc) {
        p.chains(&mut out);
    }
    for p in ports(svc) {
        for ep in &stale {
            let _ = writeln!(out, "-X {}", p.sep_chain(*ep));
        }
    }
    out.push_str("COMMIT\n");
    out
}

/// The kube-proxy node, its backends and its two clients; removed on drop (servers first).
pub struct World {
    servers: Vec<ChildGuard>,
    backends: Vec<(Netns, Ipv4Addr)>,
    client: Netns,
    outside: Netns,
    node: Netns,
}

impl World {
    /// Builds the namespaces and starts a `load server` in every backend.
    ///
    /// # Errors
    /// If `ip` or a server fails.
    pub fn new(count: usize, load: &Path) -> Result<Self> {
        let node = Netns::new("skc")?;
        let client = Netns::new("skc")?;
        let outside = Netns::new("skc")?;
        let mut world = Self {
            servers: Vec::new(),
            backends: Vec::new(),
            client,
            outside,
            node,
        };
        let node = &world.node;
        node.ip(&["link", "add", "cbr0", "type", "bridge"])?;
        node.ip(&["addr", "add", "10.244.0.1/24", "dev", "cbr0"])?;
        node.ip(&["link", "set", "cbr0", "up"])?;
        crate::sysctl(&node.path(), "net.ipv4.ip_forward", "1")?;
        for i in 0..count {
            let ns = Netns::new("skc")?;
            let ip = Ipv4Addr::new(10, 244, 0, u8::try_from(11 + i)?);
            let port = format!("vb{i}");
            node.veth_to(&port, &ns, "eth0")?;
            node.ip(&["link", "set", &port, "master", "cbr0", "up"])?;
            ns.ip(&["addr", "add", &format!("{ip}/24"), "dev", "eth0"])?;
            ns.ip(&["link", "set", "eth0", "up"])?;
            ns.ip(&["route", "add", "default", "via", "10.244.0.1"])?;
            world.servers.push(crate::spawn_server(&ns.path(), load)?);
            world.backends.push((ns, ip));
        }
        // A routed pod: its answers come back through the node, as conntrack needs.
        let link = |ns: &Netns, local: &str, node_ip: &str, ip: &str| -> Result<()> {
            node.veth_to(local, ns, "eth0")?;
            node.ip(&["addr", "add", &format!("{node_ip}/24"), "dev", local])?;
            node.ip(&["link", "set", local, "up"])?;
            ns.ip(&["addr", "add", &format!("{ip}/24"), "dev", "eth0"])?;
            ns.ip(&["link", "set", "eth0", "up"])?;
            ns.ip(&["route", "add", "default", "via", node_ip])
        };
        link(&world.client, "vclient", "10.244.1.1", "10.244.1.2")?;
        link(&world.outside, "eth0", &NODE_IP.to_string(), "192.168.77.2")?;
        restore(&node.path(), BASE, false)?;
        Ok(world)
    }

    /// The backends' addresses.
    #[must_use]
    pub fn backend_ips(&self) -> Vec<Ipv4Addr> {
        self.backends.iter().map(|(_, ip)| *ip).collect()
    }

    /// The client pod's namespace file.
    #[must_use]
    pub fn client(&self) -> PathBuf {
        self.client.path()
    }

    /// The outside client's namespace file.
    #[must_use]
    pub fn outside(&self) -> PathBuf {
        self.outside.path()
    }

    /// The node's namespace file.
    #[must_use]
    pub fn node(&self) -> PathBuf {
        self.node.path()
    }

    /// How many rules the node's `nat` table holds, and the bytes of its dump.
    ///
    /// # Errors
    /// If the save program fails.
    pub fn rules(&self) -> Result<(usize, usize)> {
        let save = restore_program().replace("-restore", "-save");
        let out = Command::new("nsenter")
            .arg(format!("--net={}", self.node.path().display()))
            .args(["--", &save, "-t", "nat"])
            .output()
            .context("running iptables-save")?;
        ensure!(out.status.success(), "{save} failed");
        let text = String::from_utf8_lossy(&out.stdout);
        Ok((
            text.lines().filter(|l| l.starts_with("-A")).count(),
            out.stdout.len(),
        ))
    }
}

impl Drop for World {
    fn drop(&mut self) {
        self.servers.clear();
    }
}

/// A NodePort target on the kube-proxy node.
#[must_use]
pub fn node_port_target(port: u16) -> SocketAddr {
    SocketAddr::from((NODE_IP, port))
}

/// Runs the restore program in `netns` on `rules`; how long it took.
///
/// # Errors
/// If it fails.
pub fn restore(netns: &Path, rules: &str, noflush: bool) -> Result<Duration> {
    let program = restore_program();
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net={}", netns.display()))
        .args(["--", program]);
    if noflush {
        cmd.args(["--noflush", "--counters"]);
    }
    let began = Instant::now();
    let mut child = cmd
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {program}"))?;
    child
        .stdin
        .take()
        .context("restore stdin")?
        .write_all(rules.as_bytes())?;
    let out = child.wait_with_output()?;
    let took = began.elapsed();
    ensure!(
        out.status.success(),
        "{program}: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(took)
}

#[expect(
    clippy::too_many_lines,
    reason = "one mode's measurement, step by step"
)]
/// Measures mode 5: kube-proxy's rules on a node of their own, for every Service count.
///
/// # Errors
/// If the namespaces, a restore or a measurement fail.
pub fn measure(
    args: &crate::Args,
    load: &Path,
    scratch: &Path,
    results: &mut crate::Results,
) -> Result<()> {
    use crate::{Launcher, measure as measure_mode, not_interrupted, now, seen, watch_lines};

    let program = restore_program();
    eprintln!("datapath bench: iptables: kube-proxy's rules through {program} ...");
    let world = World::new(crate::BACKENDS, load)?;
    crate::tune_client(&world.client())?;
    crate::tune_client(&world.outside())?;
    let inside = Launcher {
        load: load.to_owned(),
        netns: world.client(),
        procs: None,
        scratch: scratch.to_owned(),
    };
    let outside = Launcher {
        netns: world.outside(),
        ..inside.clone()
    };
    let backends = world.backend_ips();
    let max = args.services.last().copied().unwrap_or(1);
    let mut all = services(max, &backends);
    for &n in &args.services {
        let took = restore(&world.node(), &full_sync(&all[..n]), true)?;
        results.note(
            "5 iptables",
            &format!("full sync of {n} Services ({program})"),
            format!("{:.1} ms", took.as_secs_f64() * 1000.0),
        );
        let svcs = &all[..n];
        let tcp: Vec<SocketAddr> = svcs.iter().map(|s| (s.vip, TCP_PORT).into()).collect();
        let udp: Vec<SocketAddr> = svcs.iter().map(|s| (s.vip, UDP_PORT).into()).collect();
        let np: Vec<SocketAddr> = svcs
            .iter()
            .filter_map(|s| s.node_ports.map(|(t, _)| node_port_target(t)))
            .collect();
        inside
            .all_answer(&tcp[..1], args)
            .context("iptables ClusterIP")?;
        outside
            .all_answer(&np[..1], args)
            .context("iptables NodePort")?;
        let d_tcp: Vec<SocketAddr> = backends.iter().map(|b| (*b, BACKEND_TCP).into()).collect();
        let d_udp: Vec<SocketAddr> = backends.iter().map(|b| (*b, BACKEND_UDP).into()).collect();
        for (mode, client, tcp, udp) in [
            ("kube-proxy node: direct pod IP", &inside, &d_tcp, &d_udp),
            ("5 iptables, ClusterIP", &inside, &tcp, &udp),
            ("5 iptables, NodePort", &outside, &np, &Vec::new()),
        ] {
            let f = measure_mode(mode, n, client, tcp, udp, None, args)?;
            results.figures.push(f);
        }
        // Service 0 switched between two single backends, each a partial sync.
        let mut changes = crate::Changes {
            mode: "5 iptables, ClusterIP".to_owned(),
            services: n,
            ..crate::Changes::default()
        };
        let original = all[0].endpoints.clone();
        let (a, b) = (backends[0], backends[1]);
        let mut current = original.clone();
        let mut apply = |all: &mut Vec<Svc>, to: Ipv4Addr| -> Result<Duration> {
            all[0].endpoints = vec![to];
            let rules = partial_sync(&all[..n], 0, &current);
            current = vec![to];
            restore(&world.node(), &rules, true)
        };
        apply(&mut all, a)?;
        let mut watcher = inside.watch(SocketAddr::from((all[0].vip, TCP_PORT)), args)?;
        let rx = watch_lines(&mut watcher)?;
        seen(&rx, a, 0.0)?;
        // At 10,000 Services one restore takes seconds: the changes stop after a minute
        // (at least five are timed), and the table says how many there were.
        let began = std::time::Instant::now();
        for k in 0..args.changes {
            not_interrupted()?;
            if k >= 5 && began.elapsed() > Duration::from_mins(1) {
                break;
            }
            let target = if k % 2 == 0 { b } else { a };
            let sent = now();
            let took = apply(&mut all, target)?;
            let t = seen(&rx, target, sent)?;
            changes.live_ms.push((t - sent) * 1000.0);
            changes.apply_ms.push(took.as_secs_f64() * 1000.0);
        }
        drop(watcher);
        all[0].endpoints = original;
        results.changes.push(changes);
    }
    // A new node (empty table) and a restarted kube-proxy (full sync over its rules).
    restore(&world.node(), BASE, false)?;
    let fresh = restore(&world.node(), &full_sync(&all), true)?;
    results.note(
        "5 iptables",
        &format!("program all {max} Services from nothing (one iptables-restore)"),
        format!("{:.2} s", fresh.as_secs_f64()),
    );
    let again = restore(&world.node(), &full_sync(&all), true)?;
    results.note(
        "5 iptables",
        &format!("restart: full sync of {max} Services over the rules in place"),
        format!("{:.2} s", again.as_secs_f64()),
    );
    let (rules, bytes) = world.rules()?;
    #[expect(clippy::cast_precision_loss, reason = "bytes of a dump")]
    let mib = bytes as f64 / 1_048_576.0;
    results.note(
        "5 iptables",
        &format!("nat table at {max} Services"),
        format!("{rules} rules, {mib:.1} MiB as iptables-save text"),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_names_are_kube_proxys() {
        // kube-proxy's own test vector (pkg/proxy/iptables: servicePortChainName of
        // "ns1/svc1:p80" over TCP).
        assert_eq!(hash("ns1/svc1:p80tcp"), "XPGD46QRK7WJZT7O");
    }
}
