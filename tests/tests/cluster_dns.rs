//! Cluster DNS end to end: one multi-host cluster (two real nodes on one switch) shared by
//! every trial. Pods resolve with busybox `nslookup` through their own `/etc/resolv.conf`
//! (`kubectl exec`), so each answer crossed the kubelet's resolver file, the socket load
//! balancer's `kube-dns` Service (each node's own endpoint) and the node-local server.
//! Names outside the cluster go to a stand-in resolver in the test's client namespace; the
//! machine's resolver is never asked. Trials run one at a time in order; the cluster is
//! removed after the last one, and a final check fails the run if any test packet left
//! through the machine's uplink.

use std::{
    collections::HashMap,
    net::{Ipv4Addr, UdpSocket},
    process::ExitCode,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::{Context, Result, ensure};
use libtest_mimic::{Arguments, Failed, Trial};
use skiff_tests::{
    cluster::{Cluster, ClusterConfig, Subnet, wait_for},
    dns::Upstream,
};

/// The busybox image every node gets by `ctl image import`.
const IMAGE: &str = "example.org/skiff/busybox:cluster-dns";
/// The trials' namespace.
const NS: &str = "dnstest";
/// The name only the stand-in upstream knows, and its address (TEST-NET-1, never routed).
const OUTSIDE: &str = "outside.example.";
const OUTSIDE_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 44);

/// The client pods' main process: runs every `/tmp/q/N.sh` dropped in and leaves its
/// output in `/tmp/q/N.done`. Lookups run as the pod's own processes (children of its
/// init, in its cgroup, where the node's socket hooks are); `kubectl exec` only drops the
/// script and reads the answer.
const RUNNER: &str = "busybox mkdir -p /tmp/q; while true; do for f in /tmp/q/*.sh; do \
    [ -e \"$f\" ] || continue; n=${f%.sh}; sh \"$f\" > $n.out 2>&1; \
    busybox mv $n.out $n.done; busybox rm -f \"$f\"; done; sleep 0.1; done";

/// Numbers the lookups' scripts.
static LOOKUPS: AtomicU64 = AtomicU64::new(0);

/// The cluster, its upstream, and the objects every trial reads.
struct Fixture {
    cluster: Cluster,
    upstream: Upstream,
    api_ip: String,
    db_ip: String,
}

struct Shared(OnceLock<Result<Fixture, String>>);

impl Shared {
    fn get(&self) -> Result<&Fixture, Failed> {
        self.0
            .get_or_init(|| start().map_err(|err| format!("{err:#}")))
            .as_ref()
            .map_err(|err| Failed::from(format!("the test cluster did not start: {err}")))
    }
}

fn manifest() -> String {
    let pod = |name: &str, node: &str| {
        format!(
            r"
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: {NS}, labels: {{app: client}}}}
spec:
  nodeName: {node}
  containers:
  - name: c
    image: '{IMAGE}'
    imagePullPolicy: Never
    command: [sh, -c, {RUNNER:?}]
"
        )
    };
    format!(
        r"
apiVersion: v1
kind: Namespace
metadata: {{name: {NS}}}
---
apiVersion: v1
kind: Service
metadata: {{name: api, namespace: {NS}}}
spec:
  selector: {{app: api}}
  ports: [{{name: http, port: 80, targetPort: 8080, protocol: TCP}}]
---
apiVersion: v1
kind: Service
metadata: {{name: db, namespace: {NS}}}
spec:
  clusterIP: None
  selector: {{app: db}}
  ports: [{{name: pg, port: 5432, targetPort: 5432, protocol: TCP}}]
---
apiVersion: v1
kind: Service
metadata: {{name: ext, namespace: {NS}}}
spec: {{type: ExternalName, externalName: outside.example}}
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {{name: db, namespace: {NS}}}
spec:
  serviceName: db
  replicas: 1
  selector: {{matchLabels: {{app: db}}}}
  template:
    metadata: {{labels: {{app: db}}}}
    spec:
      containers:
      - name: db
        image: '{IMAGE}'
        imagePullPolicy: Never
        command: [httpd, -f, -p, '5432', -h, /etc]
---
{}
---
{}
",
        pod("client-0", "node-0"),
        pod("client-1", "node-1")
    )
}

fn start() -> Result<Fixture> {
    let mut config = ClusterConfig::one_switch(2);
    let client = Subnet::A.host(100);
    config.node_args = vec!["--dns-upstream".into(), format!("{client}:53")];
    let cluster = Cluster::start(&config)?;
    cluster.import_busybox(IMAGE)?;
    let socket = cluster
        .client()
        .run(|| UdpSocket::bind((client, 53)))
        .context("binding the stand-in upstream")?;
    let upstream = Upstream::serve(socket, HashMap::from([(OUTSIDE.to_owned(), OUTSIDE_IP)]))?;
    cluster.kubectl(&["apply", "-f", "-"], Some(&manifest()))?;
    let running = |name: &str| -> Result<Option<String>> {
        let pod = cluster.get_json(&format!("/api/v1/namespaces/{NS}/pods/{name}"))?;
        Ok((pod["status"]["phase"] == "Running")
            .then(|| pod["status"]["podIP"].as_str().map(str::to_owned))
            .flatten())
    };
    let db_ip = wait_for(
        "db-0, client-0 and client-1 running",
        Duration::from_mins(2),
        || {
            Ok(
                match (running("db-0")?, running("client-0")?, running("client-1")?) {
                    (Some(db), Some(_), Some(_)) => Some(db),
                    _ => None,
                },
            )
        },
    )?;
    let api = cluster.get_json(&format!("/api/v1/namespaces/{NS}/services/api"))?;
    let api_ip = api["spec"]["clusterIP"]
        .as_str()
        .context("api has no cluster IP")?
        .to_owned();
    let fixture = Fixture {
        cluster,
        upstream,
        api_ip,
        db_ip,
    };
    // Every node's kube-dns endpoint is published and its Service path programmed.
    for (pod, node) in [("client-0", 20), ("client-1", 21)] {
        let mut last = String::new();
        let resolved = wait_for(
            &format!("{pod} resolving api"),
            Duration::from_mins(1),
            || {
                last = lookup(&fixture, pod, &["api"]).unwrap_or_else(|err| format!("{err:#}"));
                Ok(last.contains(&fixture.api_ip).then_some(()))
            },
        );
        if let Err(err) = resolved {
            // The pod's own node's server, without the Service in between.
            let node = Subnet::A.host(node);
            let direct = lookup(
                &fixture,
                pod,
                &["api.dnstest.svc.cluster.local.", &node.to_string()],
            )
            .unwrap_or_else(|err| format!("{err:#}"));
            last = format!("{last}\ndirect to {node}:\n{direct}");
            let slices = fixture
                .cluster
                .kubectl(
                    &["get", "endpointslices", "-n", "kube-system", "-o", "yaml"],
                    None,
                )
                .unwrap_or_default();
            let dns_lines = fixture
                .cluster
                .logs()
                .lines()
                .filter(|l| l.contains("dns") || l.contains("DNS") || l.starts_with("---"))
                .collect::<Vec<_>>()
                .join("\n");
            return Err(err.context(format!(
                "last answer:\n{last}\nkube-system slices:\n{slices}\nlogs:\n{dns_lines}"
            )));
        }
    }
    Ok(fixture)
}

/// `nslookup ARGS` run by `pod`'s own process, with its output whatever the exit status.
/// (busybox's nslookup applies the search path only to names without a dot.)
fn lookup(f: &Fixture, pod: &str, args: &[&str]) -> Result<String> {
    // This busybox's nslookup now and then exits printing nothing at all (no answer, no
    // error); a silent run says nothing about the server, so it is asked again.
    let command = format!("busybox nslookup {}", args.join(" "));
    let mut out = String::new();
    for _ in 0..3 {
        out = run_in(f, pod, &command)?;
        if !out.trim().is_empty() {
            break;
        }
    }
    Ok(out)
}

/// The address `name` resolves to through the C library's resolver (busybox `ping`, whose
/// first line names it), which applies the search path and `ndots` as applications see
/// them.
fn libc_resolves(f: &Fixture, pod: &str, name: &str) -> Result<String> {
    run_in(f, pod, &format!("busybox ping -c 1 -W 1 {name}"))
}

/// `command` run by `pod`'s own process; its output whatever the exit status.
fn run_in(f: &Fixture, pod: &str, command: &str) -> Result<String> {
    let n = LOOKUPS.fetch_add(1, Ordering::Relaxed);
    let drop_script =
        format!("echo '{command}' > /tmp/q/{n}.tmp && busybox mv /tmp/q/{n}.tmp /tmp/q/{n}.sh");
    // kubectl's exec stream now and then ends with "Unknown stream id" under load (an exec
    // relay flake not yet understood, see the closing note); dropping the script twice
    // is harmless.
    let mut dropped = Err(anyhow::anyhow!("not tried"));
    for _ in 0..3 {
        dropped = f.cluster.kubectl(
            &["exec", "-n", NS, pod, "--", "sh", "-c", &drop_script],
            None,
        );
        if dropped.is_ok() {
            break;
        }
    }
    dropped?;
    let read = format!("cat /tmp/q/{n}.done 2>/dev/null || echo PENDING");
    wait_for(
        &format!("{command:?} in {pod}"),
        Duration::from_secs(30),
        || {
            // A flaky exec stream (see above) reads again on the next round.
            let Ok(out) = f
                .cluster
                .kubectl(&["exec", "-n", NS, pod, "--", "sh", "-c", &read], None)
            else {
                return Ok(None);
            };
            Ok((out.trim() != "PENDING").then_some(out))
        },
    )
}

fn resolv_conf_names_the_cluster_dns(f: &Fixture) -> Result<()> {
    let text = f.cluster.kubectl(
        &[
            "exec",
            "-n",
            NS,
            "client-0",
            "--",
            "cat",
            "/etc/resolv.conf",
        ],
        None,
    )?;
    ensure!(
        text.lines().next()
            == Some("search dnstest.svc.cluster.local svc.cluster.local cluster.local")
            && text.contains("nameserver 10.96.0.10\n")
            && text.contains("options ndots:5"),
        "resolv.conf:\n{text}"
    );
    Ok(())
}

fn service_resolves_by_every_name(f: &Fixture) -> Result<()> {
    for pod in ["client-0", "client-1"] {
        for name in ["api", "api.dnstest.svc.cluster.local"] {
            let out = lookup(f, pod, &[name])?;
            ensure!(
                out.contains("Name:\tapi.dnstest.svc.cluster.local")
                    && out.contains(&format!("Address: {}", f.api_ip)),
                "{pod}: nslookup {name}:\n{out}"
            );
        }
        for name in [
            "api",
            "api.dnstest",
            "api.dnstest.svc",
            "api.dnstest.svc.cluster.local",
        ] {
            let out = libc_resolves(f, pod, name)?;
            ensure!(
                out.contains(&format!("PING {name} ({})", f.api_ip)),
                "{pod}: the C library resolving {name}:\n{out}"
            );
        }
    }
    Ok(())
}

fn statefulset_pod_resolves_by_hostname(f: &Fixture) -> Result<()> {
    let out = libc_resolves(f, "client-1", "db-0.db")?;
    ensure!(
        out.contains(&format!("PING db-0.db ({})", f.db_ip)),
        "the C library resolving db-0.db:\n{out}"
    );
    let out = lookup(f, "client-1", &["db-0.db.dnstest.svc.cluster.local."])?;
    ensure!(
        out.contains(&format!("Address: {}", f.db_ip)),
        "nslookup db-0.db.dnstest.svc.cluster.local:\n{out}"
    );
    let out = lookup(f, "client-0", &["db"])?;
    ensure!(
        out.contains(&format!("Address: {}", f.db_ip)),
        "the headless Service answers its endpoint:\n{out}"
    );
    Ok(())
}

fn srv_and_ptr_answer(f: &Fixture) -> Result<()> {
    let out = lookup(
        f,
        "client-0",
        &["-type=srv", "_http._tcp.api.dnstest.svc.cluster.local."],
    )?;
    ensure!(
        out.contains("0 100 80 api.dnstest.svc.cluster.local"),
        "SRV:\n{out}"
    );
    let out = lookup(
        f,
        "client-0",
        &["-type=srv", "_pg._tcp.db.dnstest.svc.cluster.local."],
    )?;
    ensure!(
        out.contains("0 100 5432 db-0.db.dnstest.svc.cluster.local"),
        "headless SRV:\n{out}"
    );
    let out = lookup(f, "client-1", &[&f.api_ip])?;
    ensure!(
        out.contains("name = api.dnstest.svc.cluster.local"),
        "PTR of the Service's address:\n{out}"
    );
    let dashed = f.db_ip.replace('.', "-");
    let out = lookup(f, "client-1", &[&f.db_ip])?;
    ensure!(
        out.contains("name = db-0.db.dnstest.svc.cluster.local")
            && out.contains(&format!("name = {dashed}.dnstest.pod.cluster.local")),
        "PTR of the pod's address:\n{out}"
    );
    let out = lookup(
        f,
        "client-1",
        &[&format!("{dashed}.dnstest.pod.cluster.local.")],
    )?;
    ensure!(
        out.contains(&format!("Address: {}", f.db_ip)),
        "pod record:\n{out}"
    );
    Ok(())
}

fn unknown_name_is_nxdomain(f: &Fixture) -> Result<()> {
    let asked = f.upstream.queries();
    let out = lookup(f, "client-0", &["nothing.dnstest.svc.cluster.local."])?;
    ensure!(out.contains("NXDOMAIN"), "unknown name:\n{out}");
    ensure!(
        f.upstream.queries() == asked,
        "a cluster name went upstream"
    );
    Ok(())
}

fn outside_names_are_forwarded(f: &Fixture) -> Result<()> {
    let asked = f.upstream.queries();
    let out = lookup(f, "client-1", &[OUTSIDE])?;
    ensure!(
        out.contains(&format!("Address: {OUTSIDE_IP}")),
        "nslookup {OUTSIDE}:\n{out}"
    );
    ensure!(f.upstream.queries() > asked, "the upstream was not asked");
    let out = lookup(f, "client-0", &["ext"])?;
    ensure!(
        out.contains("canonical name = outside.example")
            && out.contains(&format!("Address: {OUTSIDE_IP}")),
        "ExternalName alias:\n{out}"
    );
    Ok(())
}

fn main() -> ExitCode {
    let mut args = Arguments::from_args();
    if !args.list && !skiff_tests::require_root("cluster_dns") {
        return ExitCode::SUCCESS;
    }
    args.test_threads = Some(1);
    let shared = Arc::new(Shared(OnceLock::new()));
    let trial = |name: &str, body: fn(&Fixture) -> Result<()>| {
        let shared = shared.clone();
        Trial::test(name, move || {
            let f = shared.get()?;
            body(f).map_err(|err| Failed::from(format!("{err:#}\n{}", f.cluster.logs())))
        })
    };
    let trials = vec![
        trial(
            "a_pods_resolv_conf_names_the_cluster_dns_and_its_namespace_search_path",
            resolv_conf_names_the_cluster_dns,
        ),
        trial(
            "a_service_resolves_by_short_namespaced_and_full_name_on_every_node",
            service_resolves_by_every_name,
        ),
        trial(
            "a_headless_statefulset_pod_resolves_by_hostname_and_subdomain",
            statefulset_pod_resolves_by_hostname,
        ),
        trial("srv_ptr_and_pod_records_answer", srv_and_ptr_answer),
        trial(
            "an_unknown_cluster_name_is_nxdomain_without_asking_upstream",
            unknown_name_is_nxdomain,
        ),
        trial(
            "outside_names_and_external_name_aliases_are_answered_by_the_upstream",
            outside_names_are_forwarded,
        ),
    ];
    let conclusion = libtest_mimic::run(&args, trials);
    let mut code = conclusion.exit_code();
    if let Some(Ok(f)) = Arc::try_unwrap(shared).ok().and_then(|s| s.0.into_inner())
        && let Err(err) = f.cluster.check_nothing_escaped()
    {
        eprintln!("{err:#}");
        code = ExitCode::FAILURE;
    }
    code
}
