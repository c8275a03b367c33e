//! `cargo xtask up [--nodes N]`: a cluster on this machine: `control` on the embedded store
//! and real `node`s (one on this host, or N each in a host network namespace of its own on
//! one switch), a kubeconfig for `ctl` and `kubectl`, a busybox image, and a clean stop on
//! Ctrl-C.

mod hosts;

use std::{
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::{release, shell};

const API: &str = "127.0.0.1:6443";
const API_PORT: u16 = 6443;
const NODE: &str = "skiff-node";

/// Options of `cargo xtask up`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// How many nodes: 1 runs one node on this host; more run each node in a network
    /// namespace of its own (a host), joined by a switch.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=200))]
    nodes: u16,
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// What `ctl --kubeconfig KUBECONFIG ARGS...` prints, if it succeeds.
fn ctl(bin: &Path, kubeconfig: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new(bin.join("ctl"))
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn wait_for(
    what: &str,
    timeout: Duration,
    children: &mut [&mut Child],
    check: impl Fn() -> bool,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while !check() {
        for c in children.iter_mut() {
            if let Some(status) = c.try_wait()? {
                bail!("a process exited ({status}) while waiting for {what}");
            }
        }
        if STOP.load(Ordering::SeqCst) {
            bail!("interrupted while waiting for {what}");
        }
        if Instant::now() > deadline {
            bail!("{what} did not happen within {} s", timeout.as_secs());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

fn spawn(cmd: &mut Command, log: &Path) -> Result<Child> {
    let file = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    // Its own process group: Ctrl-C reaches only xtask, which stops the node first so it
    // can remove its containers while the API server still answers.
    cmd.stdout(Stdio::null())
        .stderr(file)
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting {cmd:?}"))
}

fn stop(child: &mut Child, name: &str, timeout: Duration) {
    let Ok(pid) = i32::try_from(child.id()) else {
        return;
    };
    // SAFETY: signalling a child this process started and has not reaped yet.
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
    let deadline = Instant::now() + timeout;
    loop {
        if matches!(child.try_wait(), Ok(Some(_))) {
            eprintln!("xtask: {name} stopped");
            return;
        }
        if Instant::now() > deadline {
            eprintln!(
                "xtask: {name} did not stop in {} s: killing it",
                timeout.as_secs()
            );
            let _ = child.kill();
            let _ = child.wait();
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn node_ready(bin: &Path, kubeconfig: &Path, name: &str) -> bool {
    ctl(bin, kubeconfig, &["get", "node", name, "-o", "json"]).is_some_and(|b| {
        let b = b.replace([' ', '\n'], "");
        b.contains("\"type\":\"Ready\",\"status\":\"True\"")
            || b.contains("\"status\":\"True\",\"type\":\"Ready\"")
    })
}

fn print_next_steps(dir: &Path, kubeconfig: &Path, image: &Path) {
    let kc = kubeconfig.display();
    let img = image.display();
    println!(
        "\nskiff is up: one node ({NODE}) on the API server https://{API}.\n\n\
         Try:\n\
         \x20 export KUBECONFIG={kc}\n\
         \x20 kubectl get nodes\n\
         \x20 target/release/ctl image import {img}\n\
         \x20 kubectl create deployment web --image=busybox:local -- httpd -f -p 8080 -h /etc\n\
         \x20 kubectl get pods -o wide          # note the pod IP\n\
         \x20 wget -qO- http://<pod IP>:8080/hostname\n\
         \x20 kubectl logs deploy/web; kubectl exec deploy/web -- ls /\n\n\
         Logs: {}/control.log and {}/node.log. Ctrl-C stops both and removes the containers.",
        dir.display(),
        dir.display()
    );
}

/// The admin kubeconfig `control` writes into its data directory (client certificate of
/// the cluster CA).
fn admin_kubeconfig(p: &Prepared) -> PathBuf {
    p.dir.join("control").join("admin.kubeconfig")
}

/// The flags a node joins with: control's bootstrap token and cluster CA; the node gets a
/// client certificate of its own (`system:node:<name>`) through a `CertificateSigningRequest`.
fn join_flags(p: &Prepared, api: &str) -> Result<Vec<String>> {
    let control = p.dir.join("control");
    let token = std::fs::read_to_string(control.join("node-token"))
        .context("reading control's node-token")?;
    Ok(vec![
        "--server".into(),
        format!("https://{api}"),
        "--token".into(),
        token.trim().to_owned(),
        "--ca-file".into(),
        control.join("pki").join("ca.crt").display().to_string(),
    ])
}

/// What every `up` has: the build, the state directory, the image and the signal handler.
struct Prepared {
    bin: PathBuf,
    dir: PathBuf,
    image: PathBuf,
}

fn prepare(root: &Path) -> Result<Prepared> {
    if !shell::is_root() {
        bail!("`cargo xtask up` runs real nodes (containers, bridges, cgroups): run it as root");
    }
    eprintln!("xtask: checking Debian packages, the eBPF object and building release binaries");
    let bin = release::binaries(root)?;
    let dir = root.join("target/skiff-up");
    std::fs::create_dir_all(&dir)?;
    let image = dir.join("busybox.tar");
    if !image.exists() {
        eprintln!("xtask: building a busybox image from Debian's busybox-static");
        shell::run(
            Command::new(bin.join("busybox-image"))
                .arg(&image)
                .arg("busybox:local"),
        )?;
    }
    // SAFETY: installing a handler that only stores to an atomic, which is signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    Ok(Prepared { bin, dir, image })
}

/// Starts `control` listening on `api` and waits until it is healthy.
fn start_control(p: &Prepared, api: &str) -> Result<Child> {
    eprintln!(
        "xtask: starting control on {api} (data in {})",
        p.dir.join("control").display()
    );
    let mut control = spawn(
        Command::new(p.bin.join("control"))
            .args(["--listen", api])
            .arg("--data-dir")
            .arg(p.dir.join("control")),
        &p.dir.join("control.log"),
    )?;
    if let Err(err) = wait_for(
        "the API server",
        Duration::from_secs(30),
        &mut [&mut control],
        || {
            ctl(
                &p.bin,
                &admin_kubeconfig(p),
                &["get", "namespace", "default", "-o", "name"],
            )
            .is_some()
        },
    ) {
        stop(&mut control, "control", Duration::from_secs(10));
        return Err(err.context(format!("see {}", p.dir.join("control.log").display())));
    }
    Ok(control)
}

/// Waits for Ctrl-C or for any process to exit.
fn run_until_stopped(p: &Prepared, children: &mut [(&str, &mut Child)]) -> Result<()> {
    while !STOP.load(Ordering::SeqCst) {
        for (name, child) in children.iter_mut() {
            if let Some(status) = child.try_wait()? {
                eprintln!(
                    "xtask: {name} exited ({status}); see its log in {}",
                    p.dir.display()
                );
                return Ok(());
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

/// Starts the cluster and runs until Ctrl-C.
pub fn run(root: &Path, args: &Args) -> Result<()> {
    let p = prepare(root)?;
    if args.nodes == 1 {
        single(&p)
    } else {
        multi(&p, usize::from(args.nodes))
    }
}

/// The node's own cgroup v2 subtree (beside its `--cgroup-parent`), which its Service
/// socket hooks attach to: never the machine's cgroup root, which would hook every process
/// on this host.
fn socket_lb_cgroup(node: &str) -> Result<std::path::PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts")?;
    let root = mounts
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 2 && f[2] == "cgroup2").then(|| std::path::PathBuf::from(f[1]))
        })
        .ok_or_else(|| anyhow::anyhow!("no cgroup v2 hierarchy is mounted"))?;
    Ok(root.join("skiff").join(node))
}

/// One node on this host, as `up` always did.
fn single(p: &Prepared) -> Result<()> {
    let mut control = start_control(p, API)?;
    let kubeconfig = admin_kubeconfig(p);
    eprintln!(
        "xtask: starting node {NODE} (state in {})",
        p.dir.join("node").display()
    );
    let mut node = spawn(
        Command::new(p.bin.join("node"))
            .args(join_flags(p, API)?)
            .args(["--name", NODE])
            .arg("--state-dir")
            .arg(p.dir.join("node"))
            .args(["--cgroup-parent", &format!("/skiff/{NODE}")])
            .arg("--socket-lb-cgroup")
            .arg(socket_lb_cgroup(NODE)?)
            .args(["--cleanup-on-exit", "--insecure-registry", "127.0.0.1:5000"])
            .env("RUST_LOG", "info"),
        &p.dir.join("node.log"),
    )?;
    let ready = wait_for(
        "the node to be Ready",
        Duration::from_secs(90),
        &mut [&mut control, &mut node],
        || node_ready(&p.bin, &kubeconfig, NODE),
    );
    if let Err(err) = ready {
        stop(&mut node, "node", Duration::from_mins(1));
        stop(&mut control, "control", Duration::from_secs(10));
        return Err(err.context(format!("see {}", p.dir.join("node.log").display())));
    }
    print_next_steps(&p.dir, &kubeconfig, &p.image);
    let result = run_until_stopped(p, &mut [("node", &mut node), ("control", &mut control)]);
    eprintln!("xtask: stopping (the node removes its containers, sandboxes and bridge)");
    stop(&mut node, "node", Duration::from_secs(90));
    stop(&mut control, "control", Duration::from_secs(15));
    result
}

/// `count` nodes, each in a host namespace of its own on one switch; `control` on this
/// machine's end of the switch.
fn multi(p: &Prepared, count: usize) -> Result<()> {
    let hosts = hosts::Hosts::create(count)?;
    let api = format!("{}:{API_PORT}", hosts::Hosts::machine_address());
    let mut control = start_control(p, &api)?;
    let kubeconfig = admin_kubeconfig(p);
    let mut nodes: Vec<(String, Child)> = Vec::new();
    let started = (|| -> Result<()> {
        for i in 0..count {
            let name = format!("{NODE}-{i}");
            let state = p.dir.join(&name);
            eprintln!(
                "xtask: starting node {name} in host {} at {} (state in {})",
                hosts::Hosts::netns(i),
                hosts::Hosts::address(i)?,
                state.display()
            );
            let child = spawn(
                hosts::Hosts::command(i, p.bin.join("node"))
                    .args(join_flags(p, &api)?)
                    .args(["--name", &name])
                    .args(["--node-ip", &hosts::Hosts::address(i)?])
                    .arg("--state-dir")
                    .arg(&state)
                    .arg("--log-dir")
                    .arg(state.join("logs"))
                    .args(["--cgroup-parent", &format!("/skiff/{name}")])
                    .arg("--socket-lb-cgroup")
                    .arg(socket_lb_cgroup(&name)?)
                    .arg("--cleanup-on-exit")
                    .env("RUST_LOG", "info"),
                &p.dir.join(format!("{name}.log")),
            )?;
            nodes.push((name, child));
        }
        for i in 0..nodes.len() {
            let name = nodes[i].0.clone();
            let mut children: Vec<&mut Child> = nodes.iter_mut().map(|(_, c)| c).collect();
            children.push(&mut control);
            wait_for(
                &format!("node {name} to be Ready"),
                Duration::from_secs(90),
                &mut children,
                || node_ready(&p.bin, &kubeconfig, &name),
            )?;
        }
        for (name, _) in &nodes {
            eprintln!("xtask: importing busybox:local onto {name}");
            shell::run(
                Command::new(p.bin.join("ctl"))
                    .arg("--kubeconfig")
                    .arg(&kubeconfig)
                    .args(["image", "import"])
                    .arg(&p.image)
                    .args(["--node", name]),
            )?;
        }
        Ok(())
    })();
    let result = match started {
        Ok(()) => {
            print_multi_next_steps(&p.dir, &kubeconfig, &api, count);
            let mut children: Vec<(&str, &mut Child)> =
                nodes.iter_mut().map(|(n, c)| (n.as_str(), c)).collect();
            children.push(("control", &mut control));
            run_until_stopped(p, &mut children)
        }
        Err(err) => Err(err.context(format!("see the logs in {}", p.dir.display()))),
    };
    eprintln!("xtask: stopping (each node removes its containers, sandboxes and bridge)");
    for (_, child) in &mut nodes {
        signal(child, libc::SIGTERM);
    }
    for (name, child) in &mut nodes {
        stop(child, name, Duration::from_secs(90));
    }
    stop(&mut control, "control", Duration::from_secs(15));
    drop(hosts);
    result
}

fn signal(child: &Child, signal: libc::c_int) {
    if let Ok(pid) = i32::try_from(child.id()) {
        // SAFETY: signalling a child this process started and has not reaped yet.
        unsafe {
            libc::kill(pid, signal);
        }
    }
}

fn print_multi_next_steps(dir: &Path, kubeconfig: &Path, api: &str, count: usize) {
    let kc = kubeconfig.display();
    let last = count - 1;
    println!(
        "\nskiff is up: {count} nodes ({NODE}-0 .. {NODE}-{last}) on the API server https://{api}.\n\
         Each node runs in a host network namespace of its own (skiff-h0 .. skiff-h{last}) on\n\
         one switch; this machine reaches the hosts, and every host reaches every pod.\n\n\
         Try:\n\
         \x20 export KUBECONFIG={kc}\n\
         \x20 kubectl get nodes -o wide\n\
         \x20 kubectl create deployment web --image=busybox:local --replicas={count} -- httpd -f -p 8080 -h /etc\n\
         \x20 kubectl get pods -o wide          # note the pod IPs and nodes\n\
         \x20 nsenter --net=/run/netns/skiff-h0 wget -qO- http://<pod IP>:8080/hostname\n\n\
         Images: busybox:local is on every node; the hosts have no route out, so `image: busybox`\n\
         cannot be pulled. Add one with: target/release/ctl image import TAR --node NAME\n\
         A shell in a host (and so in the cluster network): nsenter --net=/run/netns/skiff-h0 bash\n\
         A shell in a pod: kubectl exec -it deploy/web -- sh\n\n\
         Logs: {}/*.log. Ctrl-C stops the nodes (they remove their containers), control, and\n\
         the host namespaces; a second `cargo xtask up --nodes {count}` resumes.",
        dir.display()
    );
}
