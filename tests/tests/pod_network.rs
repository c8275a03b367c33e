//! Pod networking for real: a bridge, two pod sandboxes that reach each other by pod IP,
//! namespaces that survive a daemon restart, and teardown; all inside a network namespace
//! the test made as its "test host", so nothing touches the machine's own network.

use std::{hash::BuildHasher as _, net::Ipv4Addr, path::Path, process::Command};

use anyhow::{Context as _, Result, bail, ensure};
use nix::mount::{MntFlags, umount2};
use skiff_node_net::{
    BridgeNetwork, NetworkConfig, NetworkError, PodNetwork as _, Sandbox, SandboxRequest,
};
use skiff_tests::{netns::Netns, node::mounts_under, require_program, require_root};

const TEST: &str = "pod_network";
const POD_CIDR: &str = "10.244.7.0/24";

/// The state directory, with every namespace file still mounted in it unmounted on drop
/// (before the directory itself goes), so a failed test leaves no mount behind.
struct State {
    dir: tempfile::TempDir,
}

impl Drop for State {
    fn drop(&mut self) {
        for mount in mounts_under(self.dir.path()) {
            let _ = umount2(&mount, MntFlags::MNT_DETACH);
        }
    }
}

/// Runs a command and returns its stdout, or fails with its stderr.
fn run(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `args` inside the network namespace at `netns`.
fn in_netns(netns: &Path, args: &[&str]) -> Result<String> {
    let net = format!("--net={}", netns.display());
    let mut all = vec![net.as_str()];
    all.extend_from_slice(args);
    run("nsenter", &all)
}

/// Pings `to` from inside `from`'s network namespace, allowing for the first ARP exchange.
fn ping(from: &Sandbox, to: Ipv4Addr) -> Result<()> {
    let to = to.to_string();
    let mut last = None;
    for _ in 0..5 {
        match in_netns(&from.netns, &["busybox", "ping", "-c", "1", "-W", "1", &to]) {
            Ok(_) => return Ok(()),
            Err(e) => last = Some(e),
        }
    }
    Err(last.expect("tried at least once")).with_context(|| format!("ping {} -> {to}", from.ip))
}

fn check_pod_side(sandbox: &Sandbox, prefix: u8) -> Result<()> {
    let addr = in_netns(
        &sandbox.netns,
        &["ip", "-o", "-4", "addr", "show", "dev", "eth0"],
    )?;
    ensure!(
        addr.contains(&format!("inet {}/{prefix}", sandbox.ip)),
        "eth0 of {} lacks its address: {addr}",
        sandbox.uid
    );
    let lo = in_netns(&sandbox.netns, &["ip", "-o", "link", "show", "dev", "lo"])?;
    ensure!(
        lo.contains("UP"),
        "loopback of {} is down: {lo}",
        sandbox.uid
    );
    let route = in_netns(&sandbox.netns, &["ip", "-4", "route", "show", "default"])?;
    ensure!(
        route.contains(&format!("default via {} dev eth0", sandbox.gateway)),
        "default route of {}: {route}",
        sandbox.uid
    );
    Ok(())
}

/// The MAC address of link `name`.
fn link_mac(name: &str) -> Result<String> {
    let show = run("ip", &["-o", "link", "show", "dev", name])?;
    show.split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .map(str::to_owned)
        .with_context(|| format!("no MAC in {show}"))
}

fn link_exists(name: &str) -> bool {
    run("ip", &["link", "show", "dev", name]).is_ok()
}

fn table_exists(table: &str) -> bool {
    run("nft", &["list", "table", "ip", table]).is_ok()
}

fn random_hex() -> String {
    let n = std::collections::hash_map::RandomState::new().hash_one(std::time::SystemTime::now());
    format!("{n:016x}")
}

#[test]
fn pods_get_addresses_reach_each_other_and_survive_a_restart() -> Result<()> {
    if !require_root(TEST) || !require_program(TEST, "nsenter") || !require_program(TEST, "busybox")
    {
        return Ok(());
    }
    let host = Netns::new("skt-host")?;
    let outside = Netns::new("skt-out")?;
    connect_outside(&host, &outside)?;
    let state = State {
        dir: tempfile::Builder::new().prefix("skt-state-").tempdir()?,
    };
    let bridge = format!("skt{}", &random_hex()[..8]);
    let config = NetworkConfig {
        bridge: bridge.clone(),
        pod_cidr: POD_CIDR.parse()?,
        state_dir: state.dir.path().to_owned(),
        masquerade: true,
        mtu: Some(1400),
    };
    let result = host.block_on(move || scenario(config));
    drop(state);
    drop(outside);
    drop(host);
    result
}

const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 244, 7, 1);

fn request(uid: &str, hostname: &str) -> SandboxRequest {
    SandboxRequest {
        uid: uid.into(),
        hostname: hostname.into(),
    }
}

/// An address beyond the test host, in a namespace that has no route back to the pods:
/// pods reach it only if their traffic is masqueraded.
const OUTSIDE: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);

/// Links the test host (192.0.2.1) to `outside` (192.0.2.2) with a veth pair that goes
/// away with `outside`.
fn connect_outside(host: &Netns, outside: &Netns) -> Result<()> {
    host.veth_to("sktout0", outside, "eth0")?;
    host.ip(&["addr", "add", "192.0.2.1/24", "dev", "sktout0"])?;
    host.ip(&["link", "set", "sktout0", "up"])?;
    outside.ip(&["addr", "add", "192.0.2.2/24", "dev", "eth0"])?;
    outside.ip(&["link", "set", "eth0", "up"])?;
    Ok(())
}

async fn scenario(config: NetworkConfig) -> Result<()> {
    let early = BridgeNetwork::new(config.clone());
    let refused = early.create_sandbox(&request("pod-a-uid", "pod-a")).await;
    ensure!(
        matches!(refused, Err(NetworkError::NoBridge(_))),
        "a sandbox before setup: {refused:?}"
    );
    ensure!(early.list_sandboxes().await?.is_empty());
    ensure!(!config.state_dir.join("netns").join("pod-a-uid").exists());
    drop(early);

    let net = BridgeNetwork::new(config.clone());
    net.setup().await?;
    net.setup().await.context("setup is idempotent")?;
    check_node_side(&config)?;
    let b = two_pods(&net, &config).await?;
    drop(net);
    after_restart(config, b).await
}

/// Bridge with the gateway address and MTU, forwarding on, the masquerade rule.
fn check_node_side(config: &NetworkConfig) -> Result<()> {
    let bridge = &config.bridge;
    let prefix = config.pod_cidr.prefix();
    let addr = run("ip", &["-o", "-4", "addr", "show", "dev", bridge])?;
    ensure!(
        addr.contains(&format!("inet {GATEWAY}/{prefix}")),
        "bridge address: {addr}"
    );
    ensure!(run("ip", &["-o", "link", "show", "dev", bridge])?.contains("mtu 1400"));
    ensure!(std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward")?.trim() == "1");
    let rules = run("nft", &["list", "table", "ip", &format!("skiff-{bridge}")])?;
    ensure!(
        rules.contains(&format!(
            "ip saddr {POD_CIDR} ip daddr != @pod-networks oifname != \"{bridge}\" masquerade"
        )) && rules.contains(&format!("elements = {{ {POD_CIDR} }}")),
        "masquerade rule: {rules}"
    );
    Ok(())
}

/// Two pods that reach each other; the first is removed again. Returns the second.
async fn two_pods(net: &BridgeNetwork, config: &NetworkConfig) -> Result<Sandbox> {
    let prefix = config.pod_cidr.prefix();
    let bridge_mac = link_mac(&config.bridge)?;
    let a = net.create_sandbox(&request("pod-a-uid", "pod-a")).await?;
    let b = net.create_sandbox(&request("pod-b-uid", "pod-b")).await?;
    ensure!(a.ip == Ipv4Addr::new(10, 244, 7, 2) && b.ip == Ipv4Addr::new(10, 244, 7, 3));
    ensure!(a.gateway == GATEWAY);
    for sandbox in [&a, &b] {
        check_pod_side(sandbox, prefix)?;
        let veth = run("ip", &["-o", "link", "show", "dev", &sandbox.host_veth])?;
        ensure!(
            veth.contains(&format!("master {}", config.bridge)),
            "{veth}"
        );
    }
    ensure!(
        link_mac(&config.bridge)? == bridge_mac,
        "the gateway's MAC must not change when ports join"
    );
    let again = net.create_sandbox(&request("pod-a-uid", "pod-a")).await?;
    ensure!(
        again == a,
        "create_sandbox is idempotent: {again:?} != {a:?}"
    );

    ping(&a, b.ip)?;
    ping(&b, a.ip)?;
    ping(&a, GATEWAY)?;
    ping(&a, OUTSIDE).context("egress is masqueraded")?;
    for (sandbox, hostname) in [(&a, "pod-a"), (&b, "pod-b")] {
        let uts = format!("--uts={}", sandbox.utsns.display());
        ensure!(run("nsenter", &[&uts, "hostname"])?.trim() == hostname);
    }
    let listed = net.list_sandboxes().await?;
    ensure!(listed == vec![a.clone(), b.clone()], "listed: {listed:?}");

    net.remove_sandbox(&a.uid).await?;
    ensure!(
        !link_exists(&a.host_veth),
        "veth {} left behind",
        a.host_veth
    );
    for path in [&a.netns, &a.ipcns, &a.utsns] {
        ensure!(!path.exists(), "{} left behind", path.display());
    }
    let ipam_entry = config.state_dir.join("ipam").join(a.ip.to_string());
    ensure!(!ipam_entry.exists(), "ipam entry left behind");
    net.remove_sandbox(&a.uid)
        .await
        .context("remove_sandbox is idempotent")?;
    ensure!(net.list_sandboxes().await? == vec![b.clone()]);
    Ok(b)
}

/// A restarted daemon (new instance, same state directory) finds `b`, rebuilds it around
/// its address when its veth vanished, never hands that address out again, and tears down.
async fn after_restart(config: NetworkConfig, b: Sandbox) -> Result<()> {
    let net = BridgeNetwork::new(config.clone());
    net.setup().await?;
    let adopted = net.create_sandbox(&request(&b.uid, "pod-b")).await?;
    ensure!(
        adopted == b,
        "existing sandbox returned as is after restart"
    );
    run("ip", &["link", "del", "dev", &b.host_veth])?;
    let rebuilt = net.create_sandbox(&request(&b.uid, "pod-b")).await?;
    ensure!(rebuilt.ip == b.ip, "rebuilt sandbox keeps its address");
    check_pod_side(&rebuilt, config.pod_cidr.prefix())?;
    let c = net.create_sandbox(&request("pod-c-uid", "pod-c")).await?;
    ensure!(c.ip != b.ip, "no address handed out twice");
    ping(&c, b.ip)?;

    net.teardown().await?;
    ensure!(!link_exists(&config.bridge), "bridge left behind");
    let table = format!("skiff-{}", config.bridge);
    ensure!(!table_exists(&table), "nft table left behind");
    net.teardown().await.context("teardown is idempotent")?;
    net.remove_sandbox(&b.uid).await?;
    net.remove_sandbox(&c.uid).await?;
    ensure!(net.list_sandboxes().await?.is_empty());
    Ok(())
}

const POOL_CIDR: &str = "10.244.8.0/24";

#[test]
fn pods_take_spare_sandboxes_the_pool_refills_and_restarts_leave_nothing_behind() -> Result<()> {
    const NAME: &str = "pod_network sandbox pool";
    if !require_root(NAME) || !require_program(NAME, "nsenter") || !require_program(NAME, "busybox")
    {
        return Ok(());
    }
    let host = Netns::new("skt-pool")?;
    let state = State {
        dir: tempfile::Builder::new().prefix("skt-pool-").tempdir()?,
    };
    let config = NetworkConfig {
        bridge: format!("skt{}", &random_hex()[..8]),
        pod_cidr: POOL_CIDR.parse()?,
        state_dir: state.dir.path().to_owned(),
        masquerade: false,
        mtu: None,
    };
    let result = host.block_on(move || pool_scenario(config));
    drop(state);
    drop(host);
    result
}

/// The finished spare records in the state directory.
fn spare_records(config: &NetworkConfig) -> Result<Vec<Sandbox>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(config.state_dir.join("spares"))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "json") {
            out.push(serde_json::from_slice(&std::fs::read(&path)?)?);
        }
    }
    Ok(out)
}

/// Who holds each address: `(address, holder)` from the IPAM directory.
fn holders(config: &NetworkConfig) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(config.state_dir.join("ipam"))? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.parse::<Ipv4Addr>().is_ok() {
            out.push((name, std::fs::read_to_string(entry.path())?));
        }
    }
    out.sort();
    Ok(out)
}

/// The veths of the test host, by name.
fn veths() -> Result<Vec<String>> {
    let out = run("ip", &["-o", "link", "show", "type", "veth"])?;
    let mut names: Vec<String> = out
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_owned())
        .collect();
    names.sort();
    Ok(names)
}

#[expect(
    clippy::too_many_lines,
    reason = "one scenario, step by step: claim, refill, restart, interrupted claim, cleanup"
)]
async fn pool_scenario(config: NetworkConfig) -> Result<()> {
    let spares_dir = config.state_dir.join("spares");
    let net = BridgeNetwork::new(config.clone()).with_sandbox_pool(2);
    net.setup().await?;
    net.sandbox_pool_filled().await;
    ensure!(net.spare_sandboxes() == 2, "the pool fills at setup");
    ensure!(spare_records(&config)?.len() == 2);
    ensure!(veths()?.len() == 2, "a veth per spare: {:?}", veths()?);

    // A pod takes a spare: a complete sandbox under the spare's names, the pod's hostname,
    // the address now the pod's.
    let a = net.create_sandbox(&request("pool-a-uid", "pool-a")).await?;
    ensure!(a.netns.starts_with(&spares_dir), "not from the pool: {a:?}");
    ensure!(POOL_CIDR.parse::<skiff_types::Ipv4Cidr>()?.contains(a.ip));
    check_pod_side(&a, 24)?;
    let veth = run("ip", &["-o", "link", "show", "dev", &a.host_veth])?;
    ensure!(
        veth.contains(&format!("master {}", config.bridge)),
        "{veth}"
    );
    let uts = format!("--uts={}", a.utsns.display());
    ensure!(run("nsenter", &[&uts, "hostname"])?.trim() == "pool-a");
    ensure!(holders(&config)?.contains(&(a.ip.to_string(), a.uid.clone())));
    ensure!(net.list_sandboxes().await? == vec![a.clone()]);
    ensure!(
        net.create_sandbox(&request("pool-a-uid", "pool-a")).await? == a,
        "a claimed sandbox is returned as is"
    );

    // The pool refills; the next pod takes a spare too and reaches the first.
    net.sandbox_pool_filled().await;
    ensure!(
        spare_records(&config)?.len() == 2,
        "refilled after the claim"
    );
    let b = net.create_sandbox(&request("pool-b-uid", "pool-b")).await?;
    ensure!(b.netns.starts_with(&spares_dir) && b.ip != a.ip);
    ping(&a, b.ip)?;

    // Removing a pooled sandbox leaves nothing of it.
    net.remove_sandbox(&a.uid).await?;
    ensure!(
        !link_exists(&a.host_veth),
        "veth {} left behind",
        a.host_veth
    );
    let dir = a.netns.parent().context("spare directory")?;
    ensure!(!dir.exists(), "{} left behind", dir.display());
    ensure!(
        !holders(&config)?
            .iter()
            .any(|(ip, _)| *ip == a.ip.to_string()),
        "address of a still held"
    );
    net.sandbox_pool_filled().await;
    drop(net);

    // A restart with a smaller pool adopts one spare, removes the other, keeps b.
    let net = BridgeNetwork::new(config.clone()).with_sandbox_pool(1);
    net.setup().await?;
    ensure!(
        net.spare_sandboxes() == 1,
        "one spare adopted, none rebuilt"
    );
    let kept = spare_records(&config)?;
    ensure!(kept.len() == 1, "spares on disk: {kept:?}");
    ensure!(net.create_sandbox(&request(&b.uid, "pool-b")).await? == b);
    ensure!(
        veths()?.len() == 2,
        "b's veth and one spare's: {:?}",
        veths()?
    );

    // A crash inside a claim, after the pod's record and before the address moved: the
    // next start finishes the claim. A restart without a pool keeps no spare.
    let spare = kept.into_iter().next().context("a spare")?;
    let c = Sandbox {
        uid: "pool-c-uid".into(),
        ..spare.clone()
    };
    std::fs::write(
        config.state_dir.join("sandboxes").join("pool-c-uid.json"),
        serde_json::to_vec(&c)?,
    )?;
    drop(net);
    let net = BridgeNetwork::new(config.clone());
    net.setup().await?;
    ensure!(net.spare_sandboxes() == 0);
    ensure!(spare_records(&config)?.is_empty(), "spare records left");
    ensure!(
        holders(&config)? == {
            let mut want = vec![
                (b.ip.to_string(), b.uid.clone()),
                (c.ip.to_string(), c.uid.clone()),
            ];
            want.sort();
            want
        },
        "addresses: {:?}",
        holders(&config)?
    );
    ensure!(net.create_sandbox(&request(&c.uid, "pool-c")).await? == c);
    ensure!(net.list_sandboxes().await?.len() == 2);

    net.remove_sandbox(&b.uid).await?;
    net.remove_sandbox(&c.uid).await?;
    net.teardown().await?;
    ensure!(veths()?.is_empty(), "veths left: {:?}", veths()?);
    let mounts = mounts_under(&config.state_dir);
    ensure!(mounts.is_empty(), "mounts left: {mounts:?}");
    ensure!(
        holders(&config)?.is_empty(),
        "addresses left: {:?}",
        holders(&config)?
    );
    let left: Vec<_> = std::fs::read_dir(&spares_dir)?
        .flatten()
        .map(|e| e.path())
        .collect();
    ensure!(left.is_empty(), "spare files left: {left:?}");
    Ok(())
}
