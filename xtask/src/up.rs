//! `cargo xtask up`: a single-node cluster on this host: `control` on the embedded store and
//! one real `node`, a kubeconfig for `ctl` and `kubectl`, a busybox image to import, and a
//! clean stop on Ctrl-C.

use std::{
    io::{Read, Write},
    net::TcpStream,
    os::unix::process::CommandExt as _,
    path::Path,
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::{build_ebpf, prereq, shell};

const API: &str = "127.0.0.1:6443";
const NODE: &str = "skiff-node";
const CLUSTER_CIDR: &str = "10.244.0.0/16";

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

fn http_get(path: &str) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&API.parse().ok()?, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {API}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    body.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())
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

fn node_ready() -> bool {
    http_get(&format!("/api/v1/nodes/{NODE}")).is_some_and(|b| {
        let b = b.replace(' ', "");
        b.contains("\"type\":\"Ready\",\"status\":\"True\"")
            || b.contains("\"status\":\"True\",\"type\":\"Ready\"")
    })
}

fn print_next_steps(dir: &Path, kubeconfig: &Path, image: &Path) {
    let kc = kubeconfig.display();
    let img = image.display();
    println!(
        "\nskiff is up: one node ({NODE}) on the API server http://{API}.\n\n\
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

fn write_kubeconfig(dir: &Path) -> Result<std::path::PathBuf> {
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- cluster: {{server: \"http://{API}\"}}\n  name: skiff\ncontexts:\n- context: {{cluster: skiff, user: admin}}\n  name: skiff\ncurrent-context: skiff\nusers:\n- name: admin\n  user: {{}}\n"
        ),
    )?;
    Ok(kubeconfig)
}

/// Starts the cluster and runs until Ctrl-C.
pub fn run(root: &Path) -> Result<()> {
    if !shell::is_root() {
        bail!("`cargo xtask up` runs a real node (containers, a bridge, cgroups): run it as root");
    }
    eprintln!("xtask: checking Debian packages, the eBPF object and building release binaries");
    prereq::debian_packages()?;
    build_ebpf::run(root)?;
    shell::run(
        Command::new("cargo")
            .current_dir(root)
            .args(["build", "--release", "--bins"]),
    )?;
    let bin = root.join("target/release");
    let dir = root.join("target/skiff-up");
    std::fs::create_dir_all(&dir)?;
    let kubeconfig = write_kubeconfig(&dir)?;
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
    eprintln!(
        "xtask: starting control on {API} (data in {})",
        dir.join("control").display()
    );
    let mut control = spawn(
        Command::new(bin.join("control"))
            .args(["--listen", API, "--cluster-cidr", CLUSTER_CIDR])
            .arg("--data-dir")
            .arg(dir.join("control")),
        &dir.join("control.log"),
    )?;
    if let Err(err) = wait_for(
        "the API server",
        Duration::from_secs(30),
        &mut [&mut control],
        || http_get("/healthz").is_some_and(|b| b.trim() == "ok"),
    ) {
        stop(&mut control, "control", Duration::from_secs(10));
        return Err(err.context(format!("see {}", dir.join("control.log").display())));
    }
    eprintln!(
        "xtask: starting node {NODE} (state in {})",
        dir.join("node").display()
    );
    let mut node = spawn(
        Command::new(bin.join("node"))
            .args(["--server", &format!("http://{API}"), "--name", NODE])
            .arg("--state-dir")
            .arg(dir.join("node"))
            .args(["--cleanup-on-exit", "--insecure-registry", "127.0.0.1:5000"])
            .env("RUST_LOG", "info"),
        &dir.join("node.log"),
    )?;
    let ready = wait_for(
        "the node to be Ready",
        Duration::from_secs(90),
        &mut [&mut control, &mut node],
        node_ready,
    );
    if let Err(err) = ready {
        stop(&mut node, "node", Duration::from_mins(1));
        stop(&mut control, "control", Duration::from_secs(10));
        return Err(err.context(format!("see {}", dir.join("node.log").display())));
    }
    print_next_steps(&dir, &kubeconfig, &image);
    while !STOP.load(Ordering::SeqCst) {
        if let Some(status) = node.try_wait()? {
            eprintln!(
                "xtask: the node exited ({status}); see {}",
                dir.join("node.log").display()
            );
            break;
        }
        if let Some(status) = control.try_wait()? {
            eprintln!(
                "xtask: control exited ({status}); see {}",
                dir.join("control.log").display()
            );
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!("xtask: stopping (the node removes its containers, sandboxes and bridge)");
    stop(&mut node, "node", Duration::from_secs(90));
    stop(&mut control, "control", Duration::from_secs(15));
    Ok(())
}
