//! API semantics over raw HTTP against the real `control` binary: error codes and Status
//! bodies (byte for byte as the Go apiserver writes them), generateName, dryRun, paging,
//! selectors, optimistic concurrency (and no conflict for writes that sent no
//! precondition), finalizers, and watches from a compacted revision.

use anyhow::Result;
use serde_json::{Value, json};
use skiff_tests::control::ControlPlane;

const JSON: &str = "application/json";

fn call(
    cp: &ControlPlane,
    method: &str,
    path: &str,
    ct: &str,
    body: &Value,
) -> Result<(u16, Value)> {
    let raw = if body.is_null() {
        Vec::new()
    } else {
        serde_json::to_vec(body)?
    };
    let (code, text) = cp.http(method, path, ct, &raw)?;
    let value = serde_json::from_str(text.trim()).unwrap_or(Value::String(text));
    Ok((code, value))
}

fn cm(name: &str, labels: &Value) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "labels": labels}, "data": {"k": "v"}})
}

const CMS: &str = "/api/v1/namespaces/default/configmaps";

#[test]
fn bad_requests_get_the_status_codes_kubectl_expects() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let cp = ControlPlane::start(dir.path())?;
    let (code, body) = call(
        &cp,
        "GET",
        "/api/v1/namespaces/default/configmaps/nope",
        JSON,
        &Value::Null,
    )?;
    assert_eq!((code, body["reason"].as_str()), (404, Some("NotFound")));
    assert_eq!(body["message"], r#"configmaps "nope" not found"#);
    let (code, _) = cp.http("POST", CMS, JSON, b"{not json")?;
    assert_eq!(code, 400);
    let (code, body) = call(&cp, "POST", CMS, "text/csv", &cm("x", &json!({})))?;
    assert_eq!(
        (code, body["reason"].as_str()),
        (415, Some("UnsupportedMediaType"))
    );
    let huge = vec![b' '; 3 * 1024 * 1024 + 10];
    let (code, _) = cp.http("POST", CMS, JSON, &huge)?;
    assert_eq!(code, 413);
    let mut wrong = cm("x", &json!({}));
    wrong["apiVersion"] = json!("apps/v1");
    let (code, _) = call(&cp, "POST", CMS, JSON, &wrong)?;
    assert_eq!(code, 400);
    let (code, body) = call(&cp, "POST", CMS, JSON, &cm(&"a".repeat(254), &json!({})))?;
    assert_eq!((code, body["reason"].as_str()), (422, Some("Invalid")));
    assert_eq!(body["details"]["causes"][0]["field"], "metadata.name");
    let (code, _) = call(&cp, "GET", "/api/v1/widgets", JSON, &Value::Null)?;
    assert_eq!(code, 404);
    let (code, body) = call(&cp, "POST", CMS, JSON, &cm("dup", &json!({})))?;
    assert_eq!(code, 201, "{body}");
    let (code, body) = call(&cp, "POST", CMS, JSON, &cm("dup", &json!({})))?;
    assert_eq!(
        (code, body["reason"].as_str()),
        (409, Some("AlreadyExists"))
    );
    // Nothing from the failed requests was stored.
    let (_, list) = call(&cp, "GET", CMS, JSON, &Value::Null)?;
    let names: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["metadata"]["name"].as_str().unwrap())
        // Every namespace gets the cluster CA's ConfigMap, published by a controller.
        .filter(|n| *n != "kube-root-ca.crt")
        .collect();
    assert_eq!(names, ["dup"]);
    Ok(())
}

#[test]
fn generate_name_dry_run_and_stale_updates_behave_like_kubernetes() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let cp = ControlPlane::start(dir.path())?;
    let mut generated = cm("", &json!({}));
    generated["metadata"] = json!({"generateName": "job-"});
    let (code, made) = call(&cp, "POST", CMS, JSON, &generated)?;
    assert_eq!(code, 201);
    let name = made["metadata"]["name"].as_str().unwrap();
    assert!(name.starts_with("job-") && name.len() == 9, "{name}");
    assert!(
        made["metadata"]["uid"].is_string() && made["metadata"]["creationTimestamp"].is_string()
    );

    let (code, dry) = call(
        &cp,
        "POST",
        &format!("{CMS}?dryRun=All"),
        JSON,
        &cm("dry", &json!({})),
    )?;
    assert_eq!(code, 201);
    assert_eq!(dry["metadata"]["name"], "dry");
    let (code, _) = call(&cp, "GET", &format!("{CMS}/dry"), JSON, &Value::Null)?;
    assert_eq!(code, 404, "a dry run stores nothing");

    let path = format!("{CMS}/{name}");
    let mut stale = made.clone();
    stale["data"]["k"] = json!("first");
    let (code, updated) = call(&cp, "PUT", &path, JSON, &stale)?;
    assert_eq!(code, 200);
    assert_ne!(
        updated["metadata"]["resourceVersion"],
        made["metadata"]["resourceVersion"]
    );
    stale["data"]["k"] = json!("second");
    let (code, body) = call(&cp, "PUT", &path, JSON, &stale)?;
    assert_eq!((code, body["reason"].as_str()), (409, Some("Conflict")));

    let deploy = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
        "spec": {"selector": {"matchLabels": {"a": "b"}}, "template": {"metadata": {"labels": {"a": "b"}},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]}}}});
    let deploys = "/apis/apps/v1/namespaces/default/deployments";
    let (_, d) = call(&cp, "POST", deploys, JSON, &deploy)?;
    assert_eq!(d["metadata"]["generation"], 1);
    let (_, d) = call(
        &cp,
        "PATCH",
        &format!("{deploys}/d"),
        "application/merge-patch+json",
        &json!({"metadata": {"labels": {"x": "y"}}}),
    )?;
    assert_eq!(
        d["metadata"]["generation"], 1,
        "metadata changes keep the generation"
    );
    let (_, d) = call(
        &cp,
        "PATCH",
        &format!("{deploys}/d"),
        "application/merge-patch+json",
        &json!({"spec": {"replicas": 4}}),
    )?;
    assert_eq!(d["metadata"]["generation"], 2, "spec changes bump it");
    let (_, d) = call(
        &cp,
        "PATCH",
        &format!("{deploys}/d/status"),
        "application/merge-patch+json",
        &json!({"status": {"replicas": 4}, "spec": {"replicas": 9}}),
    )?;
    assert_eq!(
        (
            d["status"]["replicas"].as_i64(),
            d["spec"]["replicas"].as_i64()
        ),
        (Some(4), Some(4)),
        "status writes touch only status"
    );
    Ok(())
}

#[test]
fn lists_page_with_continue_and_filter_by_selectors() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let cp = ControlPlane::start(dir.path())?;
    for i in 0..7 {
        let tier = if i % 2 == 0 { "web" } else { "db" };
        call(
            &cp,
            "POST",
            CMS,
            JSON,
            &cm(&format!("c{i}"), &json!({"tier": tier})),
        )?;
    }
    let mut names = Vec::new();
    let mut token = String::new();
    loop {
        let (_, page) = call(
            &cp,
            "GET",
            &format!("{CMS}?limit=3&continue={token}"),
            JSON,
            &Value::Null,
        )?;
        assert!(page["items"].as_array().unwrap().len() <= 3);
        names.extend(
            page["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i["metadata"]["name"].as_str().unwrap().to_owned()),
        );
        match page["metadata"]["continue"].as_str() {
            Some(t) if !t.is_empty() => token = t.to_owned(),
            _ => break,
        }
    }
    // Every namespace also holds the root CA publisher's ConfigMap, as in Kubernetes.
    names.retain(|n| n != "kube-root-ca.crt");
    assert_eq!(names, ["c0", "c1", "c2", "c3", "c4", "c5", "c6"]);
    let (_, web) = call(
        &cp,
        "GET",
        &format!("{CMS}?labelSelector=tier%20in%20(web)"),
        JSON,
        &Value::Null,
    )?;
    assert_eq!(web["items"].as_array().unwrap().len(), 4);
    let (_, one) = call(
        &cp,
        "GET",
        &format!("{CMS}?fieldSelector=metadata.name%3Dc3"),
        JSON,
        &Value::Null,
    )?;
    assert_eq!(one["items"][0]["metadata"]["name"], "c3");
    assert_eq!(one["items"].as_array().unwrap().len(), 1);
    Ok(())
}

#[test]
fn finalizers_hold_an_object_until_they_are_cleared() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let cp = ControlPlane::start(dir.path())?;
    let mut held = cm("held", &json!({}));
    held["metadata"]["finalizers"] = json!(["example.com/hold"]);
    call(&cp, "POST", CMS, JSON, &held)?;
    let path = format!("{CMS}/held");
    let (code, marked) = call(&cp, "DELETE", &path, JSON, &Value::Null)?;
    assert_eq!(code, 202);
    assert!(marked["metadata"]["deletionTimestamp"].is_string());
    let (code, _) = call(&cp, "GET", &path, JSON, &Value::Null)?;
    assert_eq!(code, 200, "still there while a finalizer remains");
    let (code, _) = call(
        &cp,
        "PATCH",
        &path,
        "application/merge-patch+json",
        &json!({"metadata": {"finalizers": null}}),
    )?;
    assert_eq!(code, 200);
    let (code, _) = call(&cp, "GET", &path, JSON, &Value::Null)?;
    assert_eq!(code, 404, "gone once the finalizers are cleared");

    call(&cp, "POST", CMS, JSON, &cm("fg", &json!({})))?;
    let (_, fg) = call(
        &cp,
        "DELETE",
        &format!("{CMS}/fg"),
        JSON,
        &json!({"propagationPolicy": "Foreground"}),
    )?;
    assert_eq!(
        fg["metadata"]["finalizers"],
        json!(["foregroundDeletion"]),
        "recorded for the garbage collector"
    );
    Ok(())
}

#[test]
fn a_watch_from_a_compacted_revision_gets_410_expired() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut cp = ControlPlane::start_with(
        dir.path(),
        &[
            "--compaction-interval-seconds",
            "1",
            "--compaction-keep-revisions",
            "2",
        ],
    )?;
    let (_, first) = call(&cp, "POST", CMS, JSON, &cm("old", &json!({})))?;
    let old_rv = first["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_owned();
    for i in 0..10 {
        call(&cp, "POST", CMS, JSON, &cm(&format!("n{i}"), &json!({})))?;
    }
    std::thread::sleep(std::time::Duration::from_millis(2500));
    let (code, text) = cp.http(
        "GET",
        &format!("{CMS}?watch=true&resourceVersion={old_rv}&timeoutSeconds=1"),
        JSON,
        b"",
    )?;
    assert_eq!(code, 200);
    assert!(
        text.contains(r#""type":"ERROR""#) && text.contains(r#""code":410"#),
        "{text}"
    );
    cp.kill();
    Ok(())
}

#[test]
fn bodies_are_written_byte_for_byte_as_the_go_apiserver_writes_them() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let cp = ControlPlane::start_with(dir.path(), &["--no-controllers", "--no-scheduler"])?;
    let (code, body) = cp.http("GET", &format!("{CMS}/nope"), JSON, b"")?;
    assert_eq!(code, 404);
    assert_eq!(
        body,
        "{\"kind\":\"Status\",\"apiVersion\":\"v1\",\"metadata\":{},\"status\":\"Failure\",\
         \"message\":\"configmaps \\\"nope\\\" not found\",\"reason\":\"NotFound\",\
         \"details\":{\"name\":\"nope\",\"kind\":\"configmaps\"},\"code\":404}\n"
    );
    let svc = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]}});
    let (code, body) = cp.http(
        "POST",
        "/api/v1/namespaces/default/services",
        JSON,
        &serde_json::to_vec(&svc)?,
    )?;
    assert_eq!(code, 201);
    assert!(
        body.starts_with(
            r#"{"kind":"Service","apiVersion":"v1","metadata":{"name":"web","namespace":"default","uid":""#
        ),
        "{body}"
    );
    assert!(
        body.ends_with(concat!(
            r#""type":"ClusterIP","sessionAffinity":"None","ipFamilies":["IPv4"],"#,
            r#""ipFamilyPolicy":"SingleStack","internalTrafficPolicy":"Cluster"},"#,
            r#""status":{"loadBalancer":{}}}"#,
            "\n"
        )),
        "{body}"
    );
    assert!(body.ends_with("}\n"), "a trailing newline: {body:?}");
    let (_, deploy) = call(
        &cp,
        "POST",
        "/apis/apps/v1/namespaces/default/deployments",
        JSON,
        &json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
            "spec": {"selector": {"matchLabels": {"a": "b"}}, "template": {"metadata": {"labels": {"a": "b"}},
                "spec": {"containers": [{"name": "c", "image": "busybox"}]}}}}),
    )?;
    assert_eq!(deploy["status"], json!({}));
    assert_eq!(
        deploy["spec"]["template"]["metadata"],
        json!({"creationTimestamp": null, "labels": {"a": "b"}})
    );
    Ok(())
}

#[test]
fn a_delete_while_a_controller_writes_status_does_not_conflict() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let cp = ControlPlane::start(dir.path())?;
    let deploys = "/apis/apps/v1/namespaces/default/deployments";
    for round in 0..10 {
        let name = format!("d{round}");
        let deploy = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
            "spec": {"replicas": 0, "selector": {"matchLabels": {"a": name}}, "template": {"metadata": {"labels": {"a": name}},
                "spec": {"containers": [{"name": "c", "image": "busybox"}]}}}});
        let (code, _) = call(&cp, "POST", deploys, JSON, &deploy)?;
        assert_eq!(code, 201);
        let status_path = format!("{deploys}/{name}/status");
        let (deleted, writes) = std::thread::scope(|s| {
            let writer = s.spawn(|| -> Result<Vec<u16>> {
                let mut codes = Vec::new();
                for i in 0..40 {
                    let (code, _) = call(
                        &cp,
                        "PATCH",
                        &status_path,
                        "application/merge-patch+json",
                        &json!({"status": {"observedGeneration": i}}),
                    )?;
                    codes.push(code);
                    if code == 404 {
                        break;
                    }
                }
                Ok(codes)
            });
            std::thread::sleep(std::time::Duration::from_millis(5));
            let deleted = call(
                &cp,
                "DELETE",
                &format!("{deploys}/{name}"),
                JSON,
                &Value::Null,
            );
            (deleted, writer.join().expect("the status writer"))
        });
        let (code, body) = deleted?;
        assert!(code == 200 || code == 202, "{code}: {body}");
        let writes = writes?;
        assert!(
            writes.iter().all(|c| *c == 200 || *c == 404),
            "status writes without a precondition never conflict: {writes:?}"
        );
    }
    Ok(())
}
