//! The real node end to end: `control` and `node` inside a network namespace the test
//! creates, images pulled from a real registry, pods run through libcontainer.

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;
use skiff_tests::{
    control::ControlPlane,
    image::busybox_oci_layout,
    netns::Netns,
    node::{NodeDaemon, leftover_cgroups, mounts_under},
    registry::Registry,
    terminal::Terminal,
};

/// A cluster of one real node in its own network namespace, with a registry holding
/// `busybox:1`.
struct Cluster {
    // Dropped in this order: node (removes its containers), registry, control, netns.
    node: NodeDaemon,
    _registry: Registry,
    cp: ControlPlane,
    image: String,
    _ns: Netns,
    dir: tempfile::TempDir,
    _serial: std::sync::MutexGuard<'static, ()>,
}

/// One real cluster at a time: each runs a control plane, a node and a registry, which is a
/// lot for the 2-core machines CI uses.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A test host of its own: the one-cluster-at-a-time turn, a network namespace this thread
/// has entered, and a directory.
fn isolated() -> Result<(std::sync::MutexGuard<'static, ()>, Netns, tempfile::TempDir)> {
    let serial = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let ns = Netns::new("skt-node")?;
    ns.enter()?;
    Ok((serial, ns, tempfile::tempdir()?))
}

impl Cluster {
    fn start(test: &str) -> Result<Self> {
        Self::start_on(test, None)
    }

    /// A cluster whose `control` listens on `api` (when given), an address of the test
    /// host's loopback that pods reach through the node's bridge, so the `kubernetes`
    /// Service leads them to it.
    fn start_on(test: &str, api: Option<std::net::Ipv4Addr>) -> Result<Self> {
        let (serial, ns, dir) = isolated()?;
        if let Some(ip) = api {
            ns.ip(&["addr", "add", &format!("{ip}/32"), "dev", "lo"])?;
        }
        let registry = Registry::start()?;
        let tar = busybox_oci_layout(dir.path(), "busybox:1")?;
        registry.push(&tar, "busybox:1")?;
        let image = format!("{}/busybox:1", registry.host());
        // Docker Hub's `nginx:1.15.4` comes from this registry as its mirror, and only from
        // it: the node never reaches Docker Hub.
        registry.push(&tar, "library/nginx:1.15.4")?;
        let registries = dir.path().join("registries.yaml");
        std::fs::write(
            &registries,
            format!(
                "mirrors:\n  docker.io:\n    endpoint: [\"http://{}\"]\n",
                registry.host()
            ),
        )?;
        let cp = ControlPlane::start_on(
            &dir.path().join("control"),
            api.unwrap_or(std::net::Ipv4Addr::LOCALHOST),
            &["--cluster-cidr", "10.244.0.0/16"],
        )?;
        let node = NodeDaemon::start(
            &cp,
            &dir.path().join("node"),
            &format!("skt-{test}"),
            &[
                "--insecure-registry",
                &registry.host(),
                "--registry-config",
                &registries.to_string_lossy(),
                "--disable-default-registry-endpoint",
            ],
        )?;
        Ok(Self {
            node,
            _registry: registry,
            cp,
            image,
            _ns: ns,
            dir,
            _serial: serial,
        })
    }

    fn apply(&self, yaml: &str) -> Result<()> {
        let yaml = yaml
            .replace("IMAGE", &self.image)
            .replace("NODE", self.node.name());
        self.cp.ok(&["apply", "-f", "-"], Some(&yaml)).map(drop)
    }

    fn pod(&self, name: &str) -> Result<Value> {
        let body = self
            .cp
            .http_get(&format!("/api/v1/namespaces/default/pods/{name}"))?;
        Ok(serde_json::from_str(&body)?)
    }

    /// Waits until `check` on the pod returns `Some`.
    fn wait_pod<T>(
        &self,
        name: &str,
        timeout: Duration,
        what: &str,
        check: impl Fn(&Value) -> Option<T>,
    ) -> Result<T> {
        let deadline = Instant::now() + timeout;
        let mut last = Value::Null;
        while Instant::now() < deadline {
            if let Ok(pod) = self.pod(name) {
                if let Some(v) = check(&pod) {
                    return Ok(v);
                }
                last = pod;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        bail!(
            "pod {name}: {what} did not happen in {} s; last status: {}\nnode log tail:\n{}",
            timeout.as_secs(),
            serde_json::to_string_pretty(&last["status"]).unwrap_or_default(),
            tail(&self.node.log(), 40)
        )
    }

    fn running(&self, name: &str) -> Result<Value> {
        self.wait_pod(name, Duration::from_mins(1), "Running", |p| {
            (p["status"]["phase"] == "Running").then(|| p.clone())
        })
    }

    fn logs(&self, args: &[&str]) -> Result<String> {
        let mut all = vec!["logs"];
        all.extend_from_slice(args);
        self.cp.ok(&all, None)
    }

    fn delete_all(&self) -> Result<()> {
        self.cp
            .ok(
                &["delete", "pods", "--all", "--wait=true", "--timeout=90s"],
                None,
            )
            .map(drop)
    }

    /// Nothing of the node's pods is left: containers, cgroups, mounts, veths, netns files.
    /// The node's spare sandboxes (recorded under `network/spares`) are not a pod's; a
    /// refill may be finishing one, so this waits a little for the pool to settle.
    fn assert_clean(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match self.check_clean() {
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(200));
                }
                done => return done,
            }
        }
    }

    fn check_clean(&self) -> Result<()> {
        let state = self.node.state_dir();
        let spares_dir = state.join("network/spares");
        let spares: Vec<Value> = std::fs::read_dir(&spares_dir)
            .map(|d| {
                d.flatten()
                    .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
                    .filter_map(|e| serde_json::from_slice(&std::fs::read(e.path()).ok()?).ok())
                    .collect()
            })
            .unwrap_or_default();
        let spare_dirs: Vec<PathBuf> = spares
            .iter()
            .filter_map(|s| Some(PathBuf::from(s["netns"].as_str()?).parent()?.to_owned()))
            .collect();
        let spare_veths: Vec<&str> = spares
            .iter()
            .filter_map(|s| s["host_veth"].as_str())
            .collect();
        let containers: Vec<_> = std::fs::read_dir(state.join("containers"))
            .map(|d| d.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        let cgroups = leftover_cgroups(&self.node.cgroup_parent());
        let mounts: Vec<PathBuf> = mounts_under(&state)
            .into_iter()
            .filter(|m| !spare_dirs.iter().any(|d| m.starts_with(d)))
            .collect();
        let veths = std::process::Command::new("ip")
            .args(["-o", "link", "show", "type", "veth"])
            .output()?;
        let veths: String = String::from_utf8_lossy(&veths.stdout)
            .lines()
            .filter(|l| !spare_veths.iter().any(|v| l.contains(&format!(": {v}@"))))
            .collect::<Vec<_>>()
            .join("\n");
        let netns: Vec<_> = std::fs::read_dir(state.join("network/netns"))
            .map(|d| d.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        if !containers.is_empty()
            || !cgroups.is_empty()
            || !mounts.is_empty()
            || !veths.trim().is_empty()
            || !netns.is_empty()
        {
            bail!(
                "left behind: containers {containers:?}, cgroups {cgroups:?}, mounts {mounts:?}, \
                 veths {veths:?}, netns {netns:?}"
            );
        }
        Ok(())
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn container_status<'a>(pod: &'a Value, name: &str) -> &'a Value {
    pod["status"]["containerStatuses"]
        .as_array()
        .and_then(|a| a.iter().find(|c| c["name"] == name))
        .unwrap_or(&Value::Null)
}

fn ready(pod: &Value) -> Option<bool> {
    pod["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Ready")
        .map(|c| c["status"] == "True")
}

fn skip(test: &str) -> bool {
    !skiff_tests::require_root(test)
        || !skiff_tests::require_program(test, "docker-registry")
        || !skiff_tests::require_program(test, "skopeo")
}

#[test]
fn a_node_without_a_pod_cidr_says_what_it_waits_for_and_goes_on_once_it_has_one() -> Result<()> {
    const WAITING: &str = "waiting for spec.podCIDR from node IPAM; pass --pod-cidr or start control with --cluster-cidr";
    if skip("a_node_without_a_pod_cidr_says_what_it_waits_for_and_goes_on_once_it_has_one") {
        return Ok(());
    }
    let (_serial, _ns, dir) = isolated()?;
    // No controllers, so no node IPAM hands out pod CIDRs.
    let cp = ControlPlane::start_with(&dir.path().join("control"), &["--no-controllers"])?;
    let name = "skt-nocidr";
    let mut node = NodeDaemon::spawn(&cp, &dir.path().join("node"), name, &[])?;
    let ready = |cp: &ControlPlane| -> Result<Value> {
        let node: Value = serde_json::from_str(&cp.http_get(&format!("/api/v1/nodes/{name}"))?)?;
        Ok(node["status"]["conditions"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["type"] == "Ready").cloned())
            .unwrap_or_default())
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let condition = loop {
        let condition = ready(&cp).unwrap_or_default();
        if condition["message"] == WAITING {
            break condition;
        }
        if Instant::now() > deadline {
            bail!(
                "Ready says {condition}\nnode log:\n{}",
                tail(&node.log(), 40)
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(condition["status"], "False", "{condition}");
    assert_eq!(condition["reason"], "KubeletNotReady", "{condition}");
    // The log line may trail the status write that carries the same words.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !node.log().contains(WAITING) {
        assert!(Instant::now() < deadline, "{}", tail(&node.log(), 40));
        std::thread::sleep(Duration::from_millis(100));
    }
    // Its Lease is renewed meanwhile, so nothing marks it Unknown over its message. The
    // lease loop runs beside the status loop, so its first write may come a moment later.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let lease = cp
            .http_get(&format!(
                "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{name}"
            ))
            .unwrap_or_else(|e| e.to_string());
        if lease.contains("renewTime") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{lease}\n{}",
            tail(&node.log(), 40)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Node IPAM's part, by hand: the node sets its network up and becomes Ready.
    let (code, body) = cp.http(
        "PATCH",
        &format!("/api/v1/nodes/{name}"),
        "application/merge-patch+json",
        br#"{"spec": {"podCIDR": "10.244.9.0/24", "podCIDRs": ["10.244.9.0/24"]}}"#,
    )?;
    assert_eq!(code, 200, "{body}");
    node.wait_ready(&cp)?;
    node.stop();
    Ok(())
}

#[test]
fn pods_share_volumes_and_localhost_reach_each_other_by_ip_and_clean_up() -> Result<()> {
    if skip("pods_share_volumes_and_localhost_reach_each_other_by_ip_and_clean_up") {
        return Ok(());
    }
    let c = Cluster::start("share")?;
    c.apply(
        r"
apiVersion: v1
kind: Pod
metadata: {name: web}
spec:
  nodeName: NODE
  volumes: [{name: shared, emptyDir: {}}]
  containers:
  - name: server
    image: IMAGE
    command: [sh, -c, 'echo hello-from-server > /www/index.html; exec httpd -f -p 8080 -h /www']
    volumeMounts: [{name: shared, mountPath: /www}]
  - name: client
    image: IMAGE
    command: [sh, -c, 'until wget -qO- http://127.0.0.1:8080/index.html; do sleep 0.2; done; cat /data/index.html; exec sleep 3600']
    volumeMounts: [{name: shared, mountPath: /data}]
",
    )?;
    let web = c.running("web")?;
    let ip = web["status"]["podIP"].as_str().context("podIP")?.to_owned();
    assert!(
        ip.starts_with("10.244."),
        "pod IP {ip} from the node's podCIDR"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let logs = c.logs(&["web", "-c", "client"]).unwrap_or_default();
        if logs.matches("hello-from-server").count() >= 2 {
            break;
        }
        if Instant::now() > deadline {
            bail!("client never saw the server over localhost and the volume: {logs:?}");
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    c.apply(&format!(
        r"
apiVersion: v1
kind: Pod
metadata: {{name: caller}}
spec:
  nodeName: NODE
  restartPolicy: Never
  containers:
  - name: wget
    image: IMAGE
    command: [wget, -qO-, 'http://{ip}:8080/index.html']
"
    ))?;
    c.wait_pod("caller", Duration::from_mins(1), "Succeeded", |p| {
        (p["status"]["phase"] == "Succeeded").then_some(())
    })?;
    assert_eq!(c.logs(&["caller"])?.trim(), "hello-from-server");
    let caller = c.pod("caller")?;
    let term = &container_status(&caller, "wget")["state"]["terminated"];
    assert_eq!(
        (term["exitCode"].as_i64(), term["reason"].as_str()),
        (Some(0), Some("Completed"))
    );
    exec_and_follow_logs(&c)?;
    attach_reaches_the_main_process(&c)?;
    attach_with_a_terminal(&c)?;
    c.delete_all()?;
    c.assert_clean()?;
    Ok(())
}

/// `kubectl exec` (output, exit code, stdin, a terminal) and `kubectl logs -f`, unchanged.
fn exec_and_follow_logs(c: &Cluster) -> Result<()> {
    let out = c.cp.run(
        &[
            "exec",
            "web",
            "-c",
            "server",
            "--",
            "sh",
            "-c",
            "echo from-exec; hostname; exit 3",
        ],
        None,
    )?;
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "from-exec\nweb\n");
    let echoed = c.cp.ok(
        &["exec", "-i", "web", "-c", "server", "--", "cat"],
        Some("ping\n"),
    )?;
    assert_eq!(echoed, "ping\n");
    // A terminal: kubectl wants its own stdin to be one, so it runs under `script`.
    let tty = in_a_terminal(
        std::process::Command::new("script")
            .args([
                "-qec",
                "kubectl exec -it web -c server -- sh -c '[ -t 0 ] && [ -t 1 ] && echo on-a-terminal; echo ok'",
                "/dev/null",
            ])
            .env("KUBECONFIG", c.cp.kubeconfig())
            .env("HOME", c.dir.path()),
    )?;
    let text = String::from_utf8_lossy(&tty.stdout);
    assert!(tty.status.success(), "{tty:?}");
    assert!(
        text.contains("on-a-terminal\r\nok"),
        "{text:?} ({tty:?})\nnode log tail:\n{}",
        tail(&c.node.log(), 30)
    );
    c.apply(
        r"
apiVersion: v1
kind: Pod
metadata: {name: ticker}
spec:
  nodeName: NODE
  containers:
  - {name: app, image: IMAGE, command: [sh, -c, 'i=0; while true; do echo tick-$i; i=$((i+1)); sleep 1; done']}
",
    )?;
    c.running("ticker")?;
    let mut follow =
        c.cp.kubectl()
            .args(["logs", "-f", "ticker"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()?;
    let stdout = follow.stdout.take().context("kubectl stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead as _;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    // Lines keep arriving while the container runs: three in a row, counting up.
    let lines: Vec<String> = (0..3)
        .map(|_| rx.recv_timeout(Duration::from_secs(15)))
        .collect::<Result<_, _>>()
        .context("kubectl logs -f stopped delivering lines")?;
    let _ = follow.kill();
    let _ = follow.wait();
    let numbers: Vec<u32> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("tick-")?.parse().ok())
        .collect();
    assert_eq!(numbers.len(), 3, "{lines:?}");
    assert!(numbers.windows(2).all(|w| w[1] == w[0] + 1), "{lines:?}");
    // The node's endpoint reports per-container usage from cgroups.
    let summary = http_get_text(&c.cp, c.node.port(), "/stats/summary")?;
    let summary: Value = serde_json::from_str(&summary).context("stats summary")?;
    let web = summary["pods"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["podRef"]["name"] == "web"))
        .context("web in /stats/summary")?;
    let server = web["containers"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == "server"))
        .context("server container stats")?;
    assert!(
        server["memory"]["workingSetBytes"].as_u64() > Some(0),
        "{server}"
    );
    assert!(
        server["cpu"]["usageCoreNanoSeconds"].as_u64() > Some(0),
        "{server}"
    );
    Ok(())
}

/// Runs `script` with a standard input that stays open until it exits. With `/dev/null`
/// there, `script` writes an end-of-file to its terminal at once; when that lands before
/// kubectl switches the terminal to raw mode, the terminal hands kubectl the end-of-file
/// marker as a NUL byte, which kubectl sends as input and the container's terminal echoes
/// (`^@`), now and then between two lines of the command's output.
fn in_a_terminal(script: &mut std::process::Command) -> Result<std::process::Output> {
    use std::io::Read as _;
    let mut child = script
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("starting script")?;
    let stdin = child.stdin.take();
    let mut stderr = child.stderr.take().context("script stderr")?;
    let errors = std::thread::spawn(move || {
        let mut text = Vec::new();
        let _ = stderr.read_to_end(&mut text);
        text
    });
    let mut stdout = Vec::new();
    child
        .stdout
        .take()
        .context("script stdout")?
        .read_to_end(&mut stdout)?;
    let status = child.wait()?;
    drop(stdin);
    Ok(std::process::Output {
        status,
        stdout,
        stderr: errors.join().unwrap_or_default(),
    })
}

/// `kubectl attach -i`: input reaches the container's own process, its output comes back.
fn attach_reaches_the_main_process(c: &Cluster) -> Result<()> {
    c.apply(
        r"
apiVersion: v1
kind: Pod
metadata: {name: talker}
spec:
  nodeName: NODE
  restartPolicy: Never
  containers:
  - {name: app, image: IMAGE, stdin: true, command: [sh, -c, 'echo ready; read line; echo got-$line; sleep 1']}
",
    )?;
    c.running("talker")?;
    let out = c.cp.run(&["attach", "-i", "talker"], Some("hello\n"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("got-hello"), "{out:?}");
    Ok(())
}

/// A pod whose one container is an interactive shell under a terminal (`kubectl run -it`).
fn shell_pod(name: &str) -> String {
    format!(
        r"
apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  nodeName: NODE
  restartPolicy: Never
  containers:
  - {{name: sh, image: IMAGE, stdin: true, tty: true, command: [sh], env: [{{name: MARK, value: mark-{name}}}]}}
"
    )
}

/// `kubectl attach -it` under a terminal, typing into the container's shell until it answers
/// `echo`; returns the session.
fn attach_terminal(c: &Cluster, pod: &str) -> Result<Terminal> {
    let mut attach = c.cp.kubectl();
    attach.args(["attach", "-it", pod, "-c", "sh"]);
    answered(Terminal::spawn(attach, 80, 24)?, &format!("mark-{pod}"))
}

/// Types into `term`'s shell until it answers `echo` with its `$MARK`, `mark`.
fn answered(mut term: Terminal, mark: &str) -> Result<Terminal> {
    // Typed before kubectl's stream is up, input waits in the terminal; it is typed again
    // until the shell answers, so a line lost to the attach's start does not matter.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        // The shell's answer differs from the echo of what was typed.
        term.send("echo ans-$((6*7))-$MARK\r")?;
        if term
            .wait_for(&format!("ans-42-{mark}"), Duration::from_secs(2))
            .is_ok()
        {
            return Ok(term);
        }
        if Instant::now() > deadline {
            bail!("the shell never answered:\n{}", term.screen());
        }
    }
}

/// `kubectl attach -it` to a `tty: true` shell: what is typed is echoed and run, the answer
/// comes back, a resize of the client's terminal reaches the container's, `exit` ends the
/// container and the session; the terminal's output is the container's log.
fn attach_with_a_terminal(c: &Cluster) -> Result<()> {
    c.apply(&shell_pod("shell"))?;
    c.running("shell")?;
    let mut term = attach_terminal(c, "shell")?;
    // kubectl sent its terminal's size on attaching.
    term.send("stty size\r")?;
    term.wait_for("24 80", Duration::from_secs(10))?;
    python_attach_with_a_terminal(c, &term)?;
    term.resize(123, 41)?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while term.send("stty size\r").is_ok()
        && term.wait_for("41 123", Duration::from_secs(1)).is_err()
    {
        if Instant::now() > deadline {
            bail!("the resize never reached the container:\n{}", term.screen());
        }
    }
    // The shell sees a terminal on its standard input.
    term.send("tty && echo is-a-$((1+1))-tty\r")?;
    term.wait_for("is-a-2-tty", Duration::from_secs(10))?;
    debug_with_a_terminal(c)?;
    term.send("exit\r")?;
    let status = term.wait(Duration::from_secs(30))?;
    assert!(
        status.success(),
        "kubectl attach: {status}\n{}",
        term.screen()
    );
    let pod = c.wait_pod("shell", Duration::from_mins(1), "Succeeded", |p| {
        (p["status"]["phase"] == "Succeeded").then_some(())
    });
    pod.with_context(|| term.screen())?;
    let logs = c.logs(&["shell"])?;
    assert!(logs.contains("ans-42-mark-shell"), "{logs:?}");
    assert!(logs.contains("41 123"), "{logs:?}");
    run_with_a_terminal(c)
}

/// The Python client's `stream(connect_get_namespaced_pod_attach, tty=True)` beside the
/// kubectl session `term` on the same shell: its input is run, the answer reaches both
/// clients, and its resize (channel 4) reaches the container's terminal.
fn python_attach_with_a_terminal(c: &Cluster, term: &Terminal) -> Result<()> {
    let script = r"
import json, sys, time
from kubernetes import client, config
from kubernetes.stream import stream
config.load_kube_config()
api = client.CoreV1Api()
s = stream(api.connect_get_namespaced_pod_attach, 'shell', 'default', container='sh',
           stdin=True, stdout=True, stderr=False, tty=True, _preload_content=False)
seen = ''
def until(text, command):
    global seen
    deadline = time.time() + 30
    while text not in seen:
        if time.time() > deadline:
            sys.exit('never saw ' + text + ' in ' + repr(seen) + ', open: ' + str(s.is_open())
                     + ', error channel: ' + repr(s.read_channel(3)))
        s.write_stdin(command)
        end = time.time() + 1
        while time.time() < end and text not in seen:
            s.update(timeout=0.2)
            seen += s.read_stdout() if s.peek_stdout() else ''
until('py-42', 'echo py-$((6*7))\n')
s.write_channel(4, json.dumps({'Width': 90, 'Height': 20}))
until('20 90', 'stty size\n')
s.close()
print('python-attach-ok')
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
        eprintln!("skipped: the Python attach: needs `pip install kubernetes`");
        return Ok(());
    }
    let out = std::process::Command::new("timeout")
        .args(["60", "python3", "-c", script])
        .env("KUBECONFIG", c.cp.kubeconfig())
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success() && stdout.contains("python-attach-ok"),
        "python attach: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Output goes to every attached client.
    term.wait_for("py-42", Duration::from_secs(10))
}

/// The node's log file of the first run of `container` in the default namespace's `pod`.
fn first_log(c: &Cluster, pod: &str, container: &str) -> Result<String> {
    let prefix = format!("default_{pod}_");
    let path = std::fs::read_dir(c.node.state_dir().join("logs"))?
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .with_context(|| format!("{pod}'s log directory"))?
        .path()
        .join(container)
        .join("0.log");
    Ok(std::fs::read_to_string(&path)?)
}

/// After a daemon restart, the terminal of the tty container `kept` outlived the daemon:
/// its shell was not hung up, and the new daemon attaches to it.
fn terminal_outlived_the_daemon(c: &Cluster) -> Result<()> {
    let mut term = attach_terminal(c, "kept")?;
    term.send("exit\r")?;
    term.wait(Duration::from_secs(30))?;
    assert_eq!(container_status(&c.pod("kept")?, "sh")["restartCount"], 0);
    Ok(())
}

/// `kubectl debug -it`: an ephemeral shell with a terminal beside the pod's own; its `exit`
/// ends the session and leaves the pod running.
fn debug_with_a_terminal(c: &Cluster) -> Result<()> {
    let mut debug = c.cp.kubectl();
    debug.args([
        "debug",
        "-it",
        "shell",
        "--image",
        &c.image,
        "-c",
        "dbg",
        "--",
        "sh",
        "-c",
        "MARK=mark-dbg exec sh",
    ]);
    let mut term = answered(Terminal::spawn(debug, 80, 24)?, "mark-dbg")?;
    term.send("exit\r")?;
    let status = term.wait(Duration::from_mins(1))?;
    assert!(
        status.success(),
        "kubectl debug: {status}\n{}",
        term.screen()
    );
    Ok(())
}

/// `kubectl run -it --rm ... -- sh`: kubectl makes a stdin and tty pod, attaches to its
/// shell, and deletes the pod once the shell exits.
fn run_with_a_terminal(c: &Cluster) -> Result<()> {
    let overrides = format!(r#"{{"spec":{{"nodeName":"{}"}}}}"#, c.node.name());
    let mut run = c.cp.kubectl();
    run.args([
        "run",
        "-it",
        "--rm",
        "--restart=Never",
        "--image",
        &c.image,
        "--env=MARK=mark-oneoff",
        "--overrides",
        &overrides,
        "oneoff",
        "--",
        "sh",
    ]);
    let mut term = answered(Terminal::spawn(run, 80, 24)?, "mark-oneoff")?;
    term.send("exit\r")?;
    let status = term.wait(Duration::from_mins(1))?;
    assert!(status.success(), "kubectl run: {status}\n{}", term.screen());
    let gone = c.cp.run(&["get", "pod", "oneoff"], None)?;
    assert!(!gone.status.success(), "--rm left the pod: {gone:?}");
    Ok(())
}

/// A GET to the node endpoint over TLS, as the cluster's admin (the node asks the API
/// server whether that user may; its serving certificate is self-signed, so not verified).
fn http_get_text(cp: &ControlPlane, port: u16, path: &str) -> Result<String> {
    let creds = cp.admin_credentials()?;
    let client =
        skiff_api::kubelet_client::KubeletClient::with_identity(&creds.cert_pem, &creds.key_pem)?;
    let text = skiff_tests::tls::node_get_blocking(&client, &format!("127.0.0.1:{port}"), path)?;
    let (head, body) = text.split_once("\r\n\r\n").context("an HTTP reply")?;
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        // One or more chunks: keep only the data lines.
        let mut out = String::new();
        let mut rest = body;
        while let Some((size, tail)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if n == 0 {
                break;
            }
            out.push_str(&tail[..n.min(tail.len())]);
            rest = tail.get(n + 2..).unwrap_or("");
        }
        return Ok(out);
    }
    Ok(body.to_owned())
}

/// A tag the registry does not have: `ErrImagePull` with its reason, then back-off.
fn pull_failures_are_reported(c: &Cluster) -> Result<()> {
    c.apply(
        r"
apiVersion: v1
kind: Pod
metadata: {name: missing}
spec:
  nodeName: NODE
  containers:
  - {name: app, image: IMAGE-nope, command: ['true']}
",
    )?;
    let waiting = c.wait_pod(
        "missing",
        Duration::from_secs(30),
        "ImagePullBackOff",
        |p| {
            let w = &container_status(p, "app")["state"]["waiting"];
            (w["reason"] == "ImagePullBackOff").then(|| w.clone())
        },
    )?;
    let events = c.cp.ok(
        &[
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=missing",
        ],
        None,
    )?;
    assert!(
        events.contains("manifest unknown")
            || waiting["message"]
                .as_str()
                .is_some_and(|m| m.contains("manifest unknown")),
        "{waiting} {events}"
    );
    Ok(())
}

#[test]
fn containers_restart_with_back_off_probes_and_oom_are_reported() -> Result<()> {
    if skip("containers_restart_with_back_off_probes_and_oom_are_reported") {
        return Ok(());
    }
    let c = Cluster::start("life")?;
    c.apply(
        r"
apiVersion: v1
kind: Pod
metadata: {name: crash}
spec:
  nodeName: NODE
  containers:
  - {name: app, image: IMAGE, command: [sh, -c, 'echo crashing; exit 3']}
---
apiVersion: v1
kind: Pod
metadata: {name: live}
spec:
  nodeName: NODE
  terminationGracePeriodSeconds: 1
  containers:
  - name: app
    image: IMAGE
    command: [sh, -c, 'mkdir -p /www; echo ok > /www/healthz; httpd -p 8080 -h /www; sleep 4; rm /www/healthz; exec sleep 3600']
    livenessProbe: {httpGet: {path: /healthz, port: 8080}, periodSeconds: 1, failureThreshold: 2}
---
apiVersion: v1
kind: Pod
metadata: {name: ready}
spec:
  nodeName: NODE
  containers:
  - name: app
    image: IMAGE
    command: [sh, -c, 'mkdir -p /www; httpd -p 8080 -h /www; while true; do touch /www/ready; sleep 4; rm /www/ready; sleep 4; done']
    readinessProbe: {httpGet: {path: /ready, port: 8080}, periodSeconds: 1, failureThreshold: 1}
---
apiVersion: v1
kind: Pod
metadata: {name: oom}
spec:
  nodeName: NODE
  restartPolicy: Never
  containers:
  - name: app
    image: IMAGE
    command: [sh, -c, 'x=aaaaaaaaaaaaaaaa; while true; do x=$x$x; done']
    resources: {limits: {memory: 24Mi}}
",
    )?;
    pull_failures_are_reported(&c)?;
    // Readiness flips the Ready condition both ways while the container keeps running.
    c.wait_pod("ready", Duration::from_mins(1), "Ready=True", |p| {
        (ready(p) == Some(true)).then_some(())
    })?;
    c.wait_pod("ready", Duration::from_secs(20), "Ready=False", |p| {
        (ready(p) == Some(false)).then_some(())
    })?;
    c.wait_pod("ready", Duration::from_secs(20), "Ready=True again", |p| {
        (ready(p) == Some(true)).then_some(())
    })?;
    assert_eq!(container_status(&c.pod("ready")?, "app")["restartCount"], 0);
    // The OOM killer's victim is reported as OOMKilled.
    let reason = c.wait_pod("oom", Duration::from_mins(1), "terminated", |p| {
        container_status(p, "app")["state"]["terminated"]["reason"]
            .as_str()
            .map(str::to_owned)
    })?;
    assert_eq!(reason, "OOMKilled");
    assert_eq!(c.pod("oom")?["status"]["phase"], "Failed");
    // A failing liveness probe restarts the container.
    c.wait_pod("live", Duration::from_mins(1), "a liveness restart", |p| {
        (container_status(p, "app")["restartCount"].as_i64() >= Some(1)).then_some(())
    })?;
    // A crashing container backs off: 10 s, then 20 s between runs.
    let crash = c.wait_pod("crash", Duration::from_secs(90), "two restarts", |p| {
        let cs = container_status(p, "app");
        (cs["restartCount"].as_i64() >= Some(2)
            && cs["state"]["waiting"]["reason"] == "CrashLoopBackOff")
            .then(|| p.clone())
    })?;
    let cs = container_status(&crash, "app");
    assert_eq!(cs["lastState"]["terminated"]["exitCode"], 3);
    assert_eq!(cs["lastState"]["terminated"]["reason"], "Error");
    assert!(
        cs["state"]["waiting"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("back-off 20s") || m.contains("back-off 40s")),
        "{cs}"
    );
    assert_eq!(c.logs(&["crash", "--previous"])?.trim(), "crashing");
    c.delete_all()?;
    c.assert_clean()?;
    Ok(())
}

/// An image loaded with `ctl image import` runs with `imagePullPolicy: Never`; then the
/// other `ctl image` verbs.
fn imported_image_runs(c: &Cluster) -> Result<()> {
    let tar = busybox_oci_layout(c.dir.path(), "example.org/tools/busybox:imported")?;
    let out = std::process::Command::new(skiff_tests::bin("ctl"))
        .arg("--kubeconfig")
        .arg(c.cp.kubeconfig())
        .args(["image", "import"])
        .arg(&tar)
        .output()?;
    assert!(out.status.success(), "ctl image import: {out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!(
            "example.org/tools/busybox:imported imported on node {}",
            c.node.name()
        )
    );
    c.apply(
        r"
apiVersion: v1
kind: Pod
metadata: {name: imported}
spec:
  nodeName: NODE
  restartPolicy: Never
  containers:
  - {name: app, image: 'example.org/tools/busybox:imported', imagePullPolicy: Never, command: [echo, from-an-imported-image]}
",
    )?;
    c.wait_pod("imported", Duration::from_mins(1), "Succeeded", |p| {
        (p["status"]["phase"] == "Succeeded").then_some(())
    })?;
    assert_eq!(c.logs(&["imported"])?.trim(), "from-an-imported-image");
    node_images_are_listed_pulled_and_removed(c)
}

fn ctl(c: &Cluster, args: &[&str]) -> Result<std::process::Output> {
    Ok(std::process::Command::new(skiff_tests::bin("ctl"))
        .arg("--kubeconfig")
        .arg(c.cp.kubeconfig())
        .args(args)
        .output()?)
}

/// `ctl image ls|rm|pull` on the node: an image a pod uses is listed as in use and not
/// removed; once its pod is gone it is, and the other pods' images (sharing its layer) keep
/// running; a pull goes through the node's registry settings.
fn node_images_are_listed_pulled_and_removed(c: &Cluster) -> Result<()> {
    let imported = "example.org/tools/busybox:imported";
    let out = ctl(c, &["image", "ls"])?;
    ensure!(out.status.success(), "ctl image ls: {out:?}");
    let listing = String::from_utf8_lossy(&out.stdout).into_owned();
    let line = |name: &str, listing: &str| {
        listing
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .map(str::to_owned)
    };
    ensure!(listing.starts_with("IMAGE"), "{listing}");
    let row = line(imported, &listing).with_context(|| listing.clone())?;
    ensure!(row.trim_end().ends_with("yes"), "{row}");
    let out = ctl(c, &["image", "rm", imported])?;
    ensure!(!out.status.success(), "removed an image in use: {out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(err.contains("used by pod default/imported"), "{err}");
    c.cp.ok(&["delete", "pod", "imported", "--wait=true"], None)?;
    // The node forgets the pod moments after the API does.
    let deadline = Instant::now() + Duration::from_secs(20);
    let out = loop {
        let out = ctl(c, &["image", "rm", imported])?;
        if out.status.success() || Instant::now() > deadline {
            break out;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    ensure!(out.status.success(), "ctl image rm: {out:?}");
    ensure!(
        String::from_utf8_lossy(&out.stdout).starts_with("Deleted: sha256:"),
        "{out:?}"
    );
    let listing = String::from_utf8_lossy(&ctl(c, &["image", "ls"])?.stdout).into_owned();
    ensure!(line(imported, &listing).is_none(), "{listing}");
    ensure!(line(&c.image, &listing).is_some(), "{listing}");
    let out = ctl(c, &["image", "rm", "example.org/nothing:1"])?;
    ensure!(!out.status.success(), "{out:?}");
    ensure!(
        String::from_utf8_lossy(&out.stderr).contains("not found"),
        "{out:?}"
    );
    // A Deployment of a Docker Hub image pulls through the mirror.
    c.apply(
        r"
apiVersion: apps/v1
kind: Deployment
metadata: {name: hub}
spec:
  replicas: 1
  selector: {matchLabels: {app: hub}}
  template:
    metadata: {labels: {app: hub}}
    spec:
      nodeName: NODE
      containers:
      - {name: web, image: 'nginx:1.15.4', command: [sh, -c, 'echo pulled-through-the-mirror; sleep 3600']}
",
    )?;
    let deadline = Instant::now() + Duration::from_mins(1);
    let listing = loop {
        let listing = String::from_utf8_lossy(&ctl(c, &["image", "ls"])?.stdout).into_owned();
        if line("docker.io/library/nginx:1.15.4", &listing).is_some_and(|l| l.ends_with("yes")) {
            break listing;
        }
        ensure!(
            Instant::now() < deadline,
            "nginx:1.15.4 never ran: {listing}"
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    ensure!(listing.contains("nginx"), "{listing}");
    c.cp.ok(&["delete", "deployment", "hub", "--wait=true"], None)?;
    let out = ctl(c, &["image", "pull", &c.image])?;
    ensure!(out.status.success(), "ctl image pull: {out:?}");
    let said = String::from_utf8_lossy(&out.stdout);
    ensure!(
        said.starts_with(&format!("Image is up to date for {} (sha256:", c.image)),
        "{said}"
    );
    Ok(())
}

/// Fails unless the cluster's node asked for a certificate exactly once (with the bootstrap
/// token): after a restart it must reuse the one it kept.
fn joined_once(cp: &ControlPlane) -> Result<()> {
    let names = cp.ok(&["get", "csr", "-o", "name"], None)?;
    ensure!(
        names.lines().count() == 1,
        "the node asked for a certificate again: {names}"
    );
    Ok(())
}

#[test]
fn config_maps_update_in_place_deletion_is_graceful_and_a_killed_daemon_adopts() -> Result<()> {
    if skip("config_maps_update_in_place_deletion_is_graceful_and_a_killed_daemon_adopts") {
        return Ok(());
    }
    let mut c = Cluster::start("adopt")?;
    c.apply(
        r#"
apiVersion: v1
kind: ConfigMap
metadata: {name: settings}
data: {greeting: first}
---
apiVersion: v1
kind: Pod
metadata: {name: reader}
spec:
  nodeName: NODE
  volumes: [{name: cfg, configMap: {name: settings}}]
  containers:
  - name: app
    image: IMAGE
    command: [sh, -c, 'while true; do cat /cfg/greeting; echo; sleep 1; done']
    volumeMounts: [{name: cfg, mountPath: /cfg}]
---
apiVersion: v1
kind: Pod
metadata: {name: stubborn}
spec:
  nodeName: NODE
  containers:
  - name: app
    image: IMAGE
    command: [sh, -c, 'trap "echo got-TERM" TERM; while true; do sleep 1; done']
"#,
    )?;
    c.apply(&shell_pod("kept"))?;
    imported_image_runs(&c)?;
    let before = c.running("reader")?;
    c.running("stubborn")?;
    c.running("kept")?;
    let id = container_status(&before, "app")["containerID"].clone();
    // The daemon dies without warning; a new one adopts the running containers.
    c.node.kill();
    c.node.restart(&c.cp)?;
    std::thread::sleep(Duration::from_secs(3));
    joined_once(&c.cp)?;
    let after = c.running("reader")?;
    assert_eq!(container_status(&after, "app")["containerID"], id);
    assert_eq!(container_status(&after, "app")["restartCount"], 0);
    terminal_outlived_the_daemon(&c)?;
    // A configMap change reaches the mounted file without a restart.
    c.cp.ok(
        &[
            "patch",
            "configmap",
            "settings",
            "-p",
            r#"{"data":{"greeting":"second"}}"#,
        ],
        None,
    )?;
    let deadline = Instant::now() + Duration::from_secs(40);
    while !c.logs(&["reader", "--tail", "2"])?.contains("second") {
        if Instant::now() > deadline {
            bail!(
                "the configMap update never reached the volume\n{}",
                tail(&c.node.log(), 30)
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(
        container_status(&c.pod("reader")?, "app")["restartCount"],
        0
    );
    // Deletion with a grace period: SIGTERM (trapped), then SIGKILL after 3 s.
    let asked = Instant::now();
    c.cp.ok(
        &[
            "delete",
            "pod",
            "stubborn",
            "--grace-period=3",
            "--wait=true",
        ],
        None,
    )?;
    let took = asked.elapsed();
    assert!(
        took >= Duration::from_secs(3),
        "deleted after {took:?}, before the grace period"
    );
    assert!(took < Duration::from_secs(20), "deleted after {took:?}");
    let text = first_log(&c, "stubborn", "app")?;
    assert!(text.contains("stdout F got-TERM"), "{text}");
    c.delete_all()?;
    c.assert_clean()?;
    Ok(())
}

/// The host's Python prefix holding the `kubernetes` client, if it has one.
fn python_with_client() -> Option<String> {
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import sys, kubernetes; assert kubernetes.__file__.startswith(sys.base_prefix); print(sys.base_prefix)",
        ])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// The payload of a JWT.
fn jwt_claims(token: &str) -> Result<Value> {
    use base64::Engine as _;
    let parts: Vec<&str> = token.trim().split('.').collect();
    ensure!(parts.len() == 3, "not a JWT: {token}");
    let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(parts[1])?;
    Ok(serde_json::from_slice(&payload)?)
}

#[test]
fn an_in_cluster_python_client_lists_pods_through_the_kubernetes_service_once_rbac_allows()
-> Result<()> {
    let test =
        "an_in_cluster_python_client_lists_pods_through_the_kubernetes_service_once_rbac_allows";
    if skip(test) {
        return Ok(());
    }
    let Some(prefix) = python_with_client() else {
        eprintln!("skipping {test}: no python3 with the kubernetes client");
        return Ok(());
    };
    let c = Cluster::start_on("incluster", Some(std::net::Ipv4Addr::new(10, 250, 0, 1)))?;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/incluster_list.py");
    c.cp.ok(
        &[
            "create",
            "configmap",
            "incluster-script",
            "--from-file",
            script,
        ],
        None,
    )?;
    c.cp.ok(&["create", "serviceaccount", "lister"], None)?;
    c.apply(&incluster_pod(&prefix))?;
    let pod = c.running("incluster")?;
    let uid = pod["metadata"]["uid"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let wait_log = |what: &str, timeout: Duration| -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let logs = c.logs(&["incluster"]).unwrap_or_default();
            if let Some(line) = logs.lines().find(|l| l.contains(what)) {
                return Ok(line.to_owned());
            }
            if Instant::now() > deadline {
                bail!(
                    "no {what:?} in the client's log:\n{logs}\nnode log:\n{}",
                    tail(&c.node.log(), 30)
                );
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    };
    let host = wait_log("host ", Duration::from_mins(1))?;
    assert_eq!(host, "host https://10.96.0.1:443");
    let denied = wait_log("status ", Duration::from_mins(1))?;
    assert_eq!(
        denied,
        "status 403 pods is forbidden: User \"system:serviceaccount:default:lister\" cannot list resource \"pods\" in API group \"\" in the namespace \"default\""
    );
    c.cp.ok(
        &[
            "create",
            "rolebinding",
            "lister-view",
            "--clusterrole=view",
            "--serviceaccount=default:lister",
        ],
        None,
    )?;
    let listed = wait_log("listed ", Duration::from_secs(30))?;
    assert_eq!(listed, "listed incluster");

    the_token_and_service_variables(&c, &uid)?;
    c.delete_all()?;
    c.assert_clean()
}

/// The token the node wrote is a JWT for the API server bound to the pod (mode 0644, the
/// volume's), and the container has the `kubernetes` Service's variables.
fn the_token_and_service_variables(c: &Cluster, uid: &str) -> Result<()> {
    let dir = "/var/run/secrets/kubernetes.io/serviceaccount";
    let token = c.cp.ok(
        &["exec", "incluster", "--", "cat", &format!("{dir}/token")],
        None,
    )?;
    let claims = jwt_claims(&token)?;
    assert_eq!(
        claims["kubernetes.io"]["pod"]["name"], "incluster",
        "{claims}"
    );
    assert_eq!(claims["kubernetes.io"]["pod"]["uid"], uid, "{claims}");
    assert_eq!(
        claims["sub"], "system:serviceaccount:default:lister",
        "{claims}"
    );
    assert_eq!(
        claims["aud"][0],
        "https://kubernetes.default.svc.cluster.local"
    );
    assert_eq!(
        claims["exp"].as_i64().unwrap_or_default() - claims["iat"].as_i64().unwrap_or_default(),
        3607
    );
    let listing = c.cp.ok(
        &[
            "exec",
            "incluster",
            "--",
            "ls",
            "-lL",
            &format!("{dir}/token"),
        ],
        None,
    )?;
    assert!(listing.starts_with("-rw-r--r--"), "{listing}");
    let env = c.cp.ok(
        &[
            "exec",
            "incluster",
            "--",
            "sh",
            "-c",
            "echo $KUBERNETES_SERVICE_HOST $KUBERNETES_SERVICE_PORT $KUBERNETES_PORT",
        ],
        None,
    )?;
    assert_eq!(
        env.split_whitespace().collect::<Vec<_>>(),
        ["10.96.0.1", "443", "tcp://10.96.0.1:443"]
    );
    Ok(())
}

/// The client's pod: the host's Python, its libraries and the client, read-only in a
/// busybox container, running the script from a ConfigMap as ServiceAccount `lister`.
fn incluster_pod(prefix: &str) -> String {
    r#"
apiVersion: v1
kind: Pod
metadata: {name: incluster}
spec:
  nodeName: NODE
  serviceAccountName: lister
  volumes:
  - {name: python, hostPath: {path: PREFIX, type: Directory}}
  - {name: usrlib, hostPath: {path: /usr/lib, type: Directory}}
  - {name: lib64, hostPath: {path: /usr/lib64, type: Directory}}
  - {name: script, configMap: {name: incluster-script}}
  containers:
  - name: client
    image: IMAGE
    command: [PREFIX/bin/python3, /script/incluster_list.py]
    env: [{name: LD_LIBRARY_PATH, value: "PREFIX/lib:/usr/lib/x86_64-linux-gnu"}]
    volumeMounts:
    - {name: python, mountPath: PREFIX, readOnly: true}
    - {name: usrlib, mountPath: /usr/lib, readOnly: true}
    - {name: usrlib, mountPath: /lib, readOnly: true}
    - {name: lib64, mountPath: /lib64, readOnly: true}
    - {name: script, mountPath: /script}
"#
    .replace("PREFIX", prefix)
}
