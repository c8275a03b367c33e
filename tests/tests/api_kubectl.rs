//! The real `control` binary driven by the unmodified kubectl 1.32, with its default strict
//! validation: apply, re-apply, change, get columns, watch, scale, delete, invalid
//! manifests, a SIGKILL restart, and Pod Security Admission's refusals and warnings.

use std::{
    io::{BufRead, BufReader},
    process::Stdio,
    sync::mpsc,
    time::Duration,
};

use anyhow::{Context, Result};
use skiff_tests::{control::ControlPlane, process::ChildGuard, require_program};

const MANIFEST: &str = r#"
apiVersion: v1
kind: Namespace
metadata:
  name: demo
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: demo
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: app
        image: busybox:1.36
        command: ["httpd", "-f", "-p", "8080"]
        env:
        - {name: A, value: "1"}
        - {name: B, value: "2"}
        ports:
        - containerPort: 8080
---
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: demo
spec:
  selector: {app: web}
  ports:
  - port: 80
    targetPort: 8080
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: cfg
  namespace: demo
data:
  k: v
---
apiVersion: v1
kind: Secret
metadata:
  name: sec
  namespace: demo
stringData:
  password: hunter2
"#;

fn kubectl_present(test: &str) -> bool {
    require_program(test, "kubectl")
}

fn lines(s: &str) -> Vec<&str> {
    s.lines().map(str::trim).filter(|l| !l.is_empty()).collect()
}

#[test]
fn apply_creates_then_reports_unchanged_then_configured() -> Result<()> {
    if !kubectl_present("apply_creates_then_reports_unchanged_then_configured") {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let cp = ControlPlane::start(dir.path())?;
    let created = cp.ok(&["apply", "-f", "-"], Some(MANIFEST))?;
    assert_eq!(
        lines(&created),
        [
            "namespace/demo created",
            "deployment.apps/web created",
            "service/web created",
            "configmap/cfg created",
            "secret/sec created"
        ]
    );
    let again = cp.ok(&["apply", "-f", "-"], Some(MANIFEST))?;
    // A Secret's write-only stringData never shows on the server, so kubectl re-sends it
    // and says "configured", exactly as against Kubernetes.
    assert!(
        lines(&again)
            .iter()
            .filter(|l| !l.starts_with("secret/"))
            .all(|l| l.ends_with(" unchanged")),
        "{again}"
    );

    // Scale up and drop env var B: only the Deployment changes.
    let changed = MANIFEST
        .replace("replicas: 2", "replicas: 3")
        .replace("        - {name: B, value: \"2\"}\n", "");
    let configured = cp.ok(&["apply", "-f", "-"], Some(&changed))?;
    assert!(
        configured.contains("deployment.apps/web configured"),
        "{configured}"
    );
    assert!(configured.contains("service/web unchanged"), "{configured}");
    let spec = cp.ok(
        &[
            "get", "deployment", "web", "-n", "demo", "-o",
            "jsonpath={.spec.replicas} {.spec.template.spec.containers[0].env[*].name} {.metadata.generation}",
        ],
        None,
    )?;
    assert_eq!(
        spec, "3 A 2",
        "replicas 3, env B removed on the server, generation bumped"
    );

    // The Secret's stringData was folded into data, as Kubernetes does.
    let secret = cp.ok(
        &[
            "get",
            "secret",
            "sec",
            "-n",
            "demo",
            "-o",
            "jsonpath={.data.password}",
        ],
        None,
    )?;
    assert_eq!(secret, "aHVudGVyMg==");
    Ok(())
}

#[test]
fn get_prints_the_usual_columns() -> Result<()> {
    if !kubectl_present("get_prints_the_usual_columns") {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let cp = ControlPlane::start(dir.path())?;
    cp.ok(&["apply", "-f", "-"], Some(MANIFEST))?;
    let header = |args: &[&str]| -> Result<Vec<String>> {
        let out = cp.ok(args, None)?;
        Ok(out
            .lines()
            .next()
            .unwrap_or("")
            .split_whitespace()
            .map(str::to_owned)
            .collect())
    };
    assert_eq!(
        header(&["get", "deploy", "-n", "demo"])?,
        ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"]
    );
    assert_eq!(
        header(&["get", "svc", "-n", "demo"])?,
        [
            "NAME",
            "TYPE",
            "CLUSTER-IP",
            "EXTERNAL-IP",
            "PORT(S)",
            "AGE"
        ]
    );
    assert_eq!(header(&["get", "ns"])?, ["NAME", "STATUS", "AGE"]);
    assert_eq!(
        header(&["get", "cm", "-n", "demo"])?,
        ["NAME", "DATA", "AGE"]
    );
    let svc = cp.ok(&["get", "svc", "web", "-n", "demo", "--no-headers"], None)?;
    let cells: Vec<&str> = svc.split_whitespace().collect();
    assert_eq!(cells[1], "ClusterIP");
    assert!(
        cells[2].starts_with("10."),
        "a cluster IP from 10.96.0.0/12: {svc}"
    );
    assert_eq!(cells[4], "80/TCP");
    let wide = header(&["get", "deploy", "-n", "demo", "-o", "wide"])?;
    assert!(
        wide.contains(&"IMAGES".to_owned()) && wide.contains(&"SELECTOR".to_owned()),
        "{wide:?}"
    );
    let ns = cp.ok(
        &[
            "get",
            "ns",
            "--no-headers",
            "-o",
            "custom-columns=N:.metadata.name",
        ],
        None,
    )?;
    for default in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        assert!(ns.contains(default), "{default} missing from {ns}");
    }
    Ok(())
}

#[test]
fn get_watch_streams_a_change_made_by_another_client() -> Result<()> {
    if !kubectl_present("get_watch_streams_a_change_made_by_another_client") {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let cp = ControlPlane::start(dir.path())?;
    let mut watch = ChildGuard::spawn(
        cp.kubectl()
            .args([
                "get",
                "configmaps",
                "-n",
                "default",
                "-w",
                "--output-watch-events",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null()),
    )?;
    let stdout = watch.child_mut().stdout.take().context("watch stdout")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // Give the watch a moment to be established, then change things from another client.
    std::thread::sleep(Duration::from_millis(800));
    cp.ok(
        &["create", "-f", "-"],
        Some("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: watched}\ndata: {a: b}\n"),
    )?;
    cp.ok(
        &[
            "patch",
            "configmap",
            "watched",
            "-p",
            r#"{"data":{"c":"d"}}"#,
        ],
        None,
    )?;
    let mut seen = Vec::new();
    while !(seen
        .iter()
        .any(|l: &String| l.starts_with("ADDED") && l.contains("watched"))
        && seen
            .iter()
            .any(|l: &String| l.starts_with("MODIFIED") && l.contains("watched")))
    {
        let line = rx
            .recv_timeout(Duration::from_secs(10))
            .with_context(|| format!("watch output so far: {seen:?}"))?;
        seen.push(line);
    }
    Ok(())
}

#[test]
fn scale_goes_through_the_scale_subresource() -> Result<()> {
    if !kubectl_present("scale_goes_through_the_scale_subresource") {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let cp = ControlPlane::start(dir.path())?;
    cp.ok(&["apply", "-f", "-"], Some(MANIFEST))?;
    let out = cp.ok(
        &["scale", "deployment", "web", "-n", "demo", "--replicas=5"],
        None,
    )?;
    assert_eq!(out.trim(), "deployment.apps/web scaled");
    let replicas = cp.ok(
        &[
            "get",
            "deploy",
            "web",
            "-n",
            "demo",
            "-o",
            "jsonpath={.spec.replicas}",
        ],
        None,
    )?;
    assert_eq!(replicas, "5");
    let scale = cp.http_get("/apis/apps/v1/namespaces/demo/deployments/web/scale")?;
    assert!(
        scale.contains(r#""kind":"Scale""#) && scale.contains(r#""replicas":5"#),
        "{scale}"
    );
    Ok(())
}

#[test]
fn delete_returns_once_the_object_is_gone() -> Result<()> {
    if !kubectl_present("delete_returns_once_the_object_is_gone") {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let cp = ControlPlane::start(dir.path())?;
    cp.ok(&["apply", "-f", "-"], Some(MANIFEST))?;
    let out = cp.ok(&["delete", "configmap", "cfg", "-n", "demo"], None)?;
    assert_eq!(out.trim(), r#"configmap "cfg" deleted"#);
    let gone = cp.run(&["get", "configmap", "cfg", "-n", "demo"], None)?;
    assert!(!gone.status.success());
    assert!(String::from_utf8_lossy(&gone.stderr).contains("NotFound"));
    // A namespace takes its contents with it.
    cp.ok(&["delete", "namespace", "demo"], None)?;
    let left = cp.ok(
        &["get", "deploy,svc,secret", "-n", "demo", "--no-headers"],
        None,
    )?;
    assert!(left.trim().is_empty(), "left behind: {left}");
    Ok(())
}

#[test]
fn invalid_manifests_are_rejected_and_nothing_is_stored() -> Result<()> {
    if !kubectl_present("invalid_manifests_are_rejected_and_nothing_is_stored") {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let cp = ControlPlane::start(dir.path())?;
    let mismatched = MANIFEST
        .split("---")
        .nth(1)
        .expect("the deployment")
        .replace("labels: {app: web}", "labels: {app: other}")
        .replace("namespace: demo", "namespace: default");
    let out = cp.run(&["apply", "-f", "-"], Some(&mismatched))?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(r#"The Deployment "web" is invalid"#), "{err}");
    assert!(
        err.contains("`selector` does not match template `labels`"),
        "{err}"
    );

    let unknown = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: typo}\ndatta: {a: b}\n";
    let out = cp.run(&["apply", "-f", "-"], Some(unknown))?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(r#"unknown field "datta""#), "{err}");

    let long = format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {}}}\n",
        "a".repeat(254)
    );
    let out = cp.run(&["apply", "-f", "-"], Some(&long))?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is invalid"));

    let stored = cp.ok(&["get", "deploy,cm", "-n", "default", "--no-headers"], None)?;
    assert!(
        !stored.contains("web") && !stored.contains("typo"),
        "{stored}"
    );
    Ok(())
}

#[test]
fn a_killed_server_restarts_with_every_object_at_the_same_resource_version() -> Result<()> {
    if !kubectl_present("a_killed_server_restarts_with_every_object_at_the_same_resource_version") {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let mut cp = ControlPlane::start(dir.path())?;
    cp.ok(&["apply", "-f", "-"], Some(MANIFEST))?;
    cp.ok(
        &["scale", "deployment", "web", "-n", "demo", "--replicas=4"],
        None,
    )?;
    let query = [
        "get",
        "ns,deploy,svc,cm,secret",
        "-A",
        "-o",
        "jsonpath={range .items[*]}{.kind}/{.metadata.name}@{.metadata.resourceVersion} {end}",
    ];
    // The deployment and ReplicaSet controllers keep writing status until the scale-up has
    // settled; a snapshot taken before that would race their writes, not the restart.
    let before = settled(&cp, &query)?;
    assert!(before.contains("Deployment/web@"), "{before}");
    cp.kill();
    cp.restart()?;
    let after = cp.ok(&query, None)?;
    assert_eq!(before, after);
    let replicas = cp.ok(
        &[
            "get",
            "deploy",
            "web",
            "-n",
            "demo",
            "-o",
            "jsonpath={.spec.replicas}",
        ],
        None,
    )?;
    assert_eq!(replicas, "4");
    // New writes continue above the old revisions.
    cp.ok(&["label", "cm", "cfg", "-n", "demo", "x=y"], None)?;
    let rv: i64 = cp
        .ok(
            &[
                "get",
                "cm",
                "cfg",
                "-n",
                "demo",
                "-o",
                "jsonpath={.metadata.resourceVersion}",
            ],
            None,
        )?
        .parse()?;
    let max_before = before
        .split_whitespace()
        .filter_map(|e| e.rsplit('@').next()?.parse::<i64>().ok())
        .max()
        .unwrap_or(0);
    assert!(rv > max_before);
    Ok(())
}

#[test]
fn the_api_server_works_the_same_on_a_real_etcd() -> Result<()> {
    let test = "the_api_server_works_the_same_on_a_real_etcd";
    if !kubectl_present(test) || !require_program(test, "etcd") {
        return Ok(());
    }
    let etcd = skiff_tests::etcd::Etcd::start()?;
    let dir = tempfile::tempdir()?;
    let mut cp = ControlPlane::start_with(dir.path(), &["--etcd", etcd.url()])?;
    let created = cp.ok(&["apply", "-f", "-"], Some(MANIFEST))?;
    assert_eq!(lines(&created).len(), 5, "{created}");
    let query = [
        "get",
        "deploy,svc,cm",
        "-n",
        "demo",
        "-o",
        "jsonpath={range .items[*]}{.kind}/{.metadata.name}@{.metadata.resourceVersion} {end}",
    ];
    let before = cp.ok(&query, None)?;
    cp.kill();
    cp.restart()?;
    assert_eq!(cp.ok(&query, None)?, before);
    let again = cp.ok(&["apply", "-f", "-"], Some(MANIFEST))?;
    assert!(again.contains("deployment.apps/web unchanged"), "{again}");
    Ok(())
}

#[test]
fn kubectl_generators_that_send_protobuf_work() -> Result<()> {
    if !kubectl_present("kubectl_generators_that_send_protobuf_work") {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let cp = ControlPlane::start(dir.path())?;
    // Typed kubectl commands send application/vnd.kubernetes.protobuf bodies.
    let steps = [
        "create namespace gen",
        "create configmap c1 -n gen --from-literal=a=b",
        "create secret generic s1 -n gen --from-literal=p=hunter2",
        "create deployment d1 -n gen --image=busybox:1.36 --replicas=2 --port=80",
        "create service clusterip svc1 -n gen --tcp=80:8080",
        "run p1 -n gen --image=busybox:1.36 --env=A=1 -- sleep 10",
        "create job j1 -n gen --image=busybox:1.36 -- echo hi",
        "expose deployment d1 -n gen --name=svc2 --port=81 --target-port=80",
    ];
    for step in steps {
        cp.ok(&step.split_whitespace().collect::<Vec<_>>(), None)?;
    }
    let expected = [
        ("cm/c1", "{.data.a}", "b"),
        ("secret/s1", "{.data.p}", "aHVudGVyMg=="),
        ("deploy/d1", "{.spec.replicas}", "2"),
        (
            "deploy/d1",
            "{.spec.template.spec.containers[0].image}",
            "busybox:1.36",
        ),
        (
            "deploy/d1",
            "{.spec.template.spec.containers[0].ports[0].containerPort}",
            "80",
        ),
        ("svc/svc1", "{.spec.ports[0].targetPort}", "8080"),
        ("pod/p1", "{.spec.containers[0].args}", r#"["sleep","10"]"#),
        ("pod/p1", "{.spec.containers[0].env[0].value}", "1"),
        ("job/j1", "{.spec.template.spec.restartPolicy}", "Never"),
        ("svc/svc2", "{.spec.selector.app}", "d1"),
    ];
    for (object, path, want) in expected {
        let jsonpath = format!("jsonpath={path}");
        let got = cp.ok(&["get", object, "-n", "gen", "-o", &jsonpath], None)?;
        assert_eq!(got, want, "{object} {path}");
    }
    Ok(())
}

#[test]
fn kubectl_explain_reads_the_served_schemas() -> Result<()> {
    if !kubectl_present("kubectl_explain_reads_the_served_schemas") {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let cp = ControlPlane::start(dir.path())?;
    let field = cp.ok(&["explain", "deployment.spec.replicas"], None)?;
    assert!(field.contains("KIND:       Deployment"), "{field}");
    assert!(field.contains("Number of desired pods"), "{field}");
    let pods = cp.ok(&["explain", "pods.spec.containers"], None)?;
    assert!(pods.contains("image\t<string>"), "{pods}");
    Ok(())
}

#[test]
fn replication_controllers_are_served_with_columns_scale_and_short_name() -> Result<()> {
    if !kubectl_present("replication_controllers_are_served_with_columns_scale_and_short_name") {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let cp = ControlPlane::start_with(dir.path(), &["--no-controllers", "--no-scheduler"])?;
    let rc = "apiVersion: v1
kind: ReplicationController
metadata: {name: legacy, namespace: default}
spec:
  replicas: 2
  template:
    metadata: {labels: {app: legacy}}
    spec:
      containers: [{name: app, image: busybox:1.36}]
";
    let out = cp.ok(&["create", "-f", "-"], Some(rc))?;
    assert_eq!(out.trim(), "replicationcontroller/legacy created");
    let table = cp.ok(&["get", "rc"], None)?;
    let header: Vec<&str> = table
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    assert_eq!(header, ["NAME", "DESIRED", "CURRENT", "READY", "AGE"]);
    let row: Vec<&str> = table
        .lines()
        .nth(1)
        .unwrap_or("")
        .split_whitespace()
        .collect();
    assert_eq!(row[..4], ["legacy", "2", "0", "0"]);
    let selector = cp.ok(
        &["get", "rc", "legacy", "-o", "jsonpath={.spec.selector.app}"],
        None,
    )?;
    assert_eq!(selector, "legacy", "defaulted from the template's labels");
    let all = cp.ok(&["get", "all", "--no-headers", "-o", "name"], None)?;
    assert!(all.contains("replicationcontroller/legacy"), "{all}");
    let out = cp.ok(&["scale", "rc", "legacy", "--replicas=4"], None)?;
    assert_eq!(out.trim(), "replicationcontroller/legacy scaled");
    let replicas = cp.ok(
        &["get", "rc", "legacy", "-o", "jsonpath={.spec.replicas}"],
        None,
    )?;
    assert_eq!(replicas, "4");
    let bad = cp.run(
        &["create", "-f", "-"],
        Some(
            &rc.replace("legacy, namespace", "broken, namespace")
                .replace("replicas: 2", "replicas: 2\n  selector: {app: other}"),
        ),
    )?;
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("`selector` does not match template `labels`"),
        "{err}"
    );
    Ok(())
}

/// The output of `query` once the scaled deployment's status has caught up and two reads
/// half a second apart agree.
fn settled(cp: &ControlPlane, query: &[&str]) -> Result<String> {
    let status = [
        "get",
        "deploy",
        "web",
        "-n",
        "demo",
        "-o",
        "jsonpath={.metadata.generation}/{.status.observedGeneration}/{.status.replicas}",
    ];
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut last = String::new();
    loop {
        let generation = cp.ok(&status, None)?;
        let current = cp.ok(query, None)?;
        let parts: Vec<&str> = generation.split('/').collect();
        let caught_up = matches!(parts.as_slice(), [g, o, "4"] if g == o);
        if caught_up && current == last {
            return Ok(current);
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "the deployment never settled: {generation}, {current}"
        );
        last = current;
        std::thread::sleep(Duration::from_millis(500));
    }
}

const PSA_MANIFEST: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  name: hardened
  namespace: strict
spec:
  securityContext:
    runAsNonRoot: true
    runAsUser: 1000
    seccompProfile: {type: RuntimeDefault}
  containers:
  - name: app
    image: busybox:1.36
    command: ["sleep", "3600"]
    securityContext:
      allowPrivilegeEscalation: false
      capabilities: {drop: ["ALL"]}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: strict
spec:
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: app
        image: busybox:1.36
---
apiVersion: v1
kind: Namespace
metadata:
  name: loose
  labels:
    pod-security.kubernetes.io/warn: baseline
---
apiVersion: v1
kind: Pod
metadata:
  name: priv
  namespace: loose
spec:
  containers:
  - name: app
    image: busybox:1.36
    securityContext: {privileged: true}
"#;

#[test]
fn pod_security_levels_refuse_and_warn_in_kubectls_words() -> Result<()> {
    if !kubectl_present("pod_security_levels_refuse_and_warn_in_kubectls_words") {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let cp = ControlPlane::start(dir.path())?;
    cp.ok(&["create", "namespace", "strict"], None)?;
    cp.ok(
        &[
            "label",
            "namespace",
            "strict",
            "pod-security.kubernetes.io/enforce=restricted",
        ],
        None,
    )?;
    let out = cp.run(
        &["run", "plain", "-n", "strict", "--image=busybox:1.36"],
        None,
    )?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        err.trim(),
        r#"Error from server (Forbidden): pods "plain" is forbidden: violates PodSecurity "restricted:latest": allowPrivilegeEscalation != false (container "plain" must set securityContext.allowPrivilegeEscalation=false), unrestricted capabilities (container "plain" must set securityContext.capabilities.drop=["ALL"]), runAsNonRoot != true (pod or container "plain" must set securityContext.runAsNonRoot=true), seccompProfile (pod or container "plain" must set securityContext.seccompProfile.type to "RuntimeDefault" or "Localhost")"#
    );

    let out = cp.run(&["apply", "-f", "-"], Some(PSA_MANIFEST))?;
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stderr}");
    assert_eq!(
        lines(&stdout),
        [
            "pod/hardened created",
            "deployment.apps/web created",
            "namespace/loose created",
            "pod/priv created"
        ]
    );
    // A workload is not refused for its template; its pods will be.
    assert!(
        stderr.contains(r#"Warning: would violate PodSecurity "restricted:latest": allowPrivilegeEscalation != false (container "app" must set securityContext.allowPrivilegeEscalation=false)"#),
        "{stderr}"
    );
    assert!(
        stderr.contains(r#"Warning: would violate PodSecurity "baseline:latest": privileged (container "app" must not set securityContext.privileged=true)"#),
        "{stderr}"
    );

    let out = cp.run(
        &[
            "label",
            "namespace",
            "loose",
            "pod-security.kubernetes.io/enforce=baseline",
        ],
        None,
    )?;
    assert!(out.status.success());
    assert_eq!(
        lines(&String::from_utf8_lossy(&out.stderr)),
        [
            r#"Warning: existing pods in namespace "loose" violate the new PodSecurity enforce level "baseline:latest""#,
            "Warning: priv: privileged",
        ]
    );
    Ok(())
}
