//! The verbs driven directly (no socket) against a real embedded store in a temp dir.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use async_trait::async_trait;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, header};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use skiff_store::{
    KeyValue, ListOptions, ListResult, RedbStore, Revision, Store, StoreError, WatchStream,
};
use skiff_types::Ipv4Cidr;

use crate::{
    bootstrap,
    ctx::Ctx,
    http::Query,
    route::{Route, route},
};

const JSON: &str = "application/json";
const MERGE: &str = "application/merge-patch+json";
const CMS: &str = "/api/v1/namespaces/default/configmaps";
const DEPLOYS: &str = "/apis/apps/v1/namespaces/default/deployments";

/// A store that lets another writer in before some compare-and-swap writes: before each of
/// the next `races` conditional writes it rewrites the key (as a controller writing status
/// would), so that the write finds a newer revision than the one it read.
struct RacingStore {
    inner: RedbStore,
    races: AtomicUsize,
    raced: AtomicUsize,
}

impl RacingStore {
    async fn interfere(&self, key: &str) {
        let take = self
            .races
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        if take.is_err() {
            return;
        }
        if let Ok(Some(kv)) = self.inner.get(key, 0).await {
            let mut obj: Value = serde_json::from_slice(&kv.value).unwrap();
            let seen = obj
                .pointer("/status/observedGeneration")
                .and_then(Value::as_i64);
            obj["status"]["observedGeneration"] = json!(seen.unwrap_or(0) + 1);
            let bytes = serde_json::to_vec(&obj).unwrap();
            self.inner
                .update(key, bytes, kv.mod_revision)
                .await
                .unwrap();
            self.raced.fetch_add(1, Ordering::SeqCst);
        }
    }
}

#[async_trait]
impl Store for RacingStore {
    async fn current_revision(&self) -> Result<Revision, StoreError> {
        self.inner.current_revision().await
    }
    async fn get(&self, key: &str, revision: Revision) -> Result<Option<KeyValue>, StoreError> {
        self.inner.get(key, revision).await
    }
    async fn list(&self, prefix: &str, opts: ListOptions) -> Result<ListResult, StoreError> {
        self.inner.list(prefix, opts).await
    }
    async fn create(&self, key: &str, value: Vec<u8>) -> Result<KeyValue, StoreError> {
        self.inner.create(key, value).await
    }
    async fn update(
        &self,
        key: &str,
        value: Vec<u8>,
        expected: Revision,
    ) -> Result<KeyValue, StoreError> {
        self.interfere(key).await;
        self.inner.update(key, value, expected).await
    }
    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<KeyValue, StoreError> {
        if expected.is_some() {
            self.interfere(key).await;
        }
        self.inner.delete(key, expected).await
    }
    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream, StoreError> {
        self.inner.watch(prefix, after).await
    }
    async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        self.inner.compact(revision).await
    }
    async fn compacted_revision(&self) -> Result<Revision, StoreError> {
        self.inner.compacted_revision().await
    }
}

/// An API server without a socket on a fresh store.
struct Api {
    ctx: Arc<Ctx>,
    racing: Option<Arc<RacingStore>>,
    _dir: tempfile::TempDir,
}

/// An answer: status code and body.
struct Answer {
    code: u16,
    bytes: Bytes,
    /// The `Warning` headers, as sent.
    warnings: Vec<String>,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.bytes)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.bytes)))
    }
}

impl Api {
    async fn start() -> Self {
        Self::on(false).await
    }

    async fn racing() -> Self {
        Self::on(true).await
    }

    async fn on(racing: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let redb = RedbStore::open(dir.path()).unwrap();
        let (store, racing): (Arc<dyn Store>, _) = if racing {
            let r = Arc::new(RacingStore {
                inner: redb,
                races: AtomicUsize::new(0),
                raced: AtomicUsize::new(0),
            });
            (r.clone(), Some(r))
        } else {
            (Arc::new(redb), None)
        };
        let cidr = Ipv4Cidr::parse_masked("10.96.0.0/24").unwrap();
        let ctx = Ctx::new(store, cidr, 30000..=30009, "127.0.0.1:6443".into()).unwrap();
        bootstrap::run(&ctx, None).await.unwrap();
        Self {
            ctx: Arc::new(ctx),
            racing,
            _dir: dir,
        }
    }

    /// Lets another writer in before each of the next `n` compare-and-swap writes.
    fn race(&self, n: usize) {
        self.racing
            .as_ref()
            .expect("a racing store")
            .races
            .store(n, Ordering::SeqCst);
    }

    fn raced(&self) -> usize {
        self.racing.as_ref().unwrap().raced.load(Ordering::SeqCst)
    }

    async fn send(&self, method: Method, uri: &str, content_type: &str, body: &[u8]) -> Answer {
        self.send_with(method, uri, content_type, body, None).await
    }

    async fn send_with(
        &self,
        method: Method,
        uri: &str,
        content_type: &str,
        body: &[u8],
        accept: Option<&str>,
    ) -> Answer {
        let (path, query) = uri.split_once('?').unwrap_or((uri, ""));
        let Route::Resource(r) = route(path) else {
            panic!("{path} is not a resource")
        };
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_str(content_type).unwrap(),
        );
        if let Some(accept) = accept {
            headers.insert(header::ACCEPT, HeaderValue::from_str(accept).unwrap());
        }
        let query = Query::parse(Some(query)).with_agent("unit-test/1.0");
        let resp = super::dispatch(
            &self.ctx,
            &method,
            &r,
            &query,
            &headers,
            Bytes::copy_from_slice(body),
        )
        .await
        .unwrap_or_else(|err| crate::http::error(&err));
        let code = resp.status().as_u16();
        let warnings = resp
            .headers()
            .get_all(header::WARNING)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        Answer {
            code,
            bytes,
            warnings,
        }
    }

    async fn call(&self, method: Method, uri: &str, content_type: &str, body: &Value) -> Answer {
        let raw = if body.is_null() {
            Vec::new()
        } else {
            serde_json::to_vec(body).unwrap()
        };
        self.send(method, uri, content_type, &raw).await
    }

    async fn get(&self, uri: &str) -> Answer {
        self.call(Method::GET, uri, JSON, &Value::Null).await
    }

    async fn post(&self, uri: &str, body: &Value) -> Answer {
        self.call(Method::POST, uri, JSON, body).await
    }

    async fn delete(&self, uri: &str, options: &Value) -> Answer {
        self.call(Method::DELETE, uri, JSON, options).await
    }

    async fn merge(&self, uri: &str, patch: &Value) -> Answer {
        self.call(Method::PATCH, uri, MERGE, patch).await
    }
}

fn cm(name: &str, labels: &Value) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "labels": labels}, "data": {"k": "v"}})
}

fn deployment(name: &str) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
        "spec": {"selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "app", "image": "busybox:1.36"}]}}}})
}

/// `spec.replicas` and `status.replicas`.
fn replicas(obj: &Value) -> (Option<i64>, Option<i64>) {
    (
        obj.pointer("/spec/replicas").and_then(Value::as_i64),
        obj.pointer("/status/replicas").and_then(Value::as_i64),
    )
}

fn names(list: &Value) -> Vec<String> {
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["metadata"]["name"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn create_generates_names_defaults_and_resets_status() {
    let api = Api::start().await;
    let mut d = deployment("");
    d["metadata"] = json!({"generateName": "web-"});
    d["status"] = json!({"replicas": 7});
    let made = api.post(DEPLOYS, &d).await;
    assert_eq!(made.code, 201);
    let made = made.json();
    let name = made["metadata"]["name"].as_str().unwrap();
    assert!(name.starts_with("web-") && name.len() == 9, "{name}");
    assert_eq!(made["metadata"]["generation"], 1);
    assert!(
        made["metadata"]["uid"].is_string() && made["metadata"]["creationTimestamp"].is_string()
    );
    assert_eq!(made["spec"]["replicas"], 1, "defaulted");
    assert_eq!(
        made["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"],
        "IfNotPresent"
    );
    assert_eq!(made["status"], json!({}), "a client may not set the status");
    assert_eq!(
        made["metadata"]["managedFields"][0]["manager"], "unit-test",
        "the User-Agent's product manages what it created"
    );
    let got = api.get(&format!("{DEPLOYS}/{name}")).await;
    assert_eq!(got.code, 200);
    assert_eq!(got.json()["metadata"]["uid"], made["metadata"]["uid"]);
}

#[tokio::test]
async fn get_of_a_missing_object_is_a_404_status_written_as_go_writes_it() {
    let api = Api::start().await;
    let missing = api.get(&format!("{CMS}/nope")).await;
    assert_eq!(missing.code, 404);
    assert_eq!(
        std::str::from_utf8(&missing.bytes).unwrap(),
        "{\"kind\":\"Status\",\"apiVersion\":\"v1\",\"metadata\":{},\"status\":\"Failure\",\
         \"message\":\"configmaps \\\"nope\\\" not found\",\"reason\":\"NotFound\",\
         \"details\":{\"name\":\"nope\",\"kind\":\"configmaps\"},\"code\":404}\n"
    );
}

#[tokio::test]
async fn a_created_service_is_written_with_the_structs_go_always_writes() {
    let api = Api::start().await;
    let svc = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]}});
    let made = api.post("/api/v1/namespaces/default/services", &svc).await;
    assert_eq!(made.code, 201);
    let text = std::str::from_utf8(&made.bytes).unwrap();
    assert!(text.starts_with(r#"{"kind":"Service","apiVersion":"v1","metadata":{"name":"web","namespace":"default","uid":"#), "{text}");
    assert!(
        text.ends_with(",\"status\":{\"loadBalancer\":{}}}\n"),
        "{text}"
    );
    let ip: std::net::Ipv4Addr = made.json()["spec"]["clusterIP"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(Ipv4Cidr::parse_masked("10.96.0.0/24").unwrap().contains(ip));
}

#[tokio::test]
async fn lists_select_by_labels_and_fields_and_page_with_continue() {
    let api = Api::start().await;
    for i in 0..5 {
        let tier = if i % 2 == 0 { "web" } else { "db" };
        assert_eq!(
            api.post(CMS, &cm(&format!("c{i}"), &json!({"tier": tier})))
                .await
                .code,
            201
        );
    }
    let web = api
        .get(&format!("{CMS}?labelSelector=tier%3Dweb"))
        .await
        .json();
    assert_eq!(names(&web), ["c0", "c2", "c4"]);
    assert_eq!(web["kind"], "ConfigMapList");
    let one = api
        .get(&format!("{CMS}?fieldSelector=metadata.name%3Dc3"))
        .await
        .json();
    assert_eq!(names(&one), ["c3"]);
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = api
            .get(&format!("{CMS}?limit=2&continue={token}"))
            .await
            .json();
        assert!(names(&page).len() <= 2);
        seen.extend(names(&page));
        match page["metadata"]["continue"].as_str() {
            Some(t) if !t.is_empty() => t.clone_into(&mut token),
            _ => break,
        }
    }
    assert_eq!(seen, ["c0", "c1", "c2", "c3", "c4"]);
}

#[tokio::test]
async fn an_update_with_a_stale_resource_version_conflicts() {
    let api = Api::start().await;
    let made = api.post(CMS, &cm("c", &json!({}))).await.json();
    let mut first = made.clone();
    first["data"]["k"] = json!("first");
    let updated = api
        .call(Method::PUT, &format!("{CMS}/c"), JSON, &first)
        .await;
    assert_eq!(updated.code, 200);
    let mut stale = made.clone();
    stale["data"]["k"] = json!("second");
    let refused = api
        .call(Method::PUT, &format!("{CMS}/c"), JSON, &stale)
        .await;
    assert_eq!(refused.code, 409);
    assert_eq!(refused.json()["reason"], "Conflict");
    let mut unconditional = made;
    unconditional["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("resourceVersion");
    unconditional["data"]["k"] = json!("third");
    let forced = api
        .call(Method::PUT, &format!("{CMS}/c"), JSON, &unconditional)
        .await;
    assert_eq!(forced.code, 200, "no resourceVersion: no precondition");
    assert_eq!(forced.json()["data"]["k"], "third");
}

#[tokio::test]
async fn every_patch_format_applies() {
    let api = Api::start().await;
    api.post(DEPLOYS, &deployment("d")).await;
    let path = format!("{DEPLOYS}/d");
    let merged = api
        .merge(&path, &json!({"spec": {"replicas": 3}}))
        .await
        .json();
    assert_eq!(
        (
            merged["spec"]["replicas"].as_i64(),
            merged["metadata"]["generation"].as_i64()
        ),
        (Some(3), Some(2))
    );
    let json_patch = api
        .call(
            Method::PATCH,
            &path,
            "application/json-patch+json",
            &json!([{"op": "replace", "path": "/spec/replicas", "value": 4}]),
        )
        .await
        .json();
    assert_eq!(json_patch["spec"]["replicas"], 4);
    let strategic = api
        .call(
            Method::PATCH,
            &path,
            "application/strategic-merge-patch+json",
            &json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "image": "busybox:1.37"}]}}}}),
        )
        .await
        .json();
    let containers = &strategic["spec"]["template"]["spec"]["containers"];
    assert_eq!(containers.as_array().unwrap().len(), 1, "merged by name");
    assert_eq!(containers[0]["image"], "busybox:1.37");
    assert_eq!(containers[0]["imagePullPolicy"], "IfNotPresent", "kept");
    let bad = api
        .call(Method::PATCH, &path, "text/plain", &json!({}))
        .await;
    assert_eq!(bad.code, 415);
}

#[tokio::test]
async fn server_side_apply_creates_then_shares_fields_set_to_the_same_value() {
    let api = Api::start().await;
    let yaml = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: applied}\ndata: {k: v}\n";
    let path = format!("{CMS}/applied?fieldManager=tool");
    let created = api
        .send(
            Method::PATCH,
            &path,
            "application/apply-patch+yaml",
            yaml.as_bytes(),
        )
        .await;
    assert_eq!(created.code, 201);
    // Another manager created this one with a POST; applying the same values is no conflict.
    api.post(DEPLOYS, &deployment("posted")).await;
    let manifest = serde_json::to_vec(&deployment("posted")).unwrap();
    let applied = api
        .send(
            Method::PATCH,
            &format!("{DEPLOYS}/posted?fieldManager=kubectl"),
            "application/apply-patch+yaml",
            &manifest,
        )
        .await;
    assert_eq!(
        applied.code,
        200,
        "{}",
        String::from_utf8_lossy(&applied.bytes)
    );
    let mut changed = deployment("posted");
    changed["spec"]["replicas"] = json!(5);
    let conflict = api
        .send(
            Method::PATCH,
            &format!("{DEPLOYS}/posted?fieldManager=kubectl"),
            "application/apply-patch+yaml",
            &serde_json::to_vec(&changed).unwrap(),
        )
        .await;
    assert_eq!(conflict.code, 409);
    assert_eq!(
        conflict.json()["details"]["causes"][0]["field"],
        ".spec.replicas"
    );
}

#[tokio::test]
async fn delete_checks_preconditions_and_waits_for_finalizers() {
    let api = Api::start().await;
    let made = api.post(CMS, &cm("c", &json!({}))).await.json();
    let path = format!("{CMS}/c");
    let wrong_uid = api
        .delete(&path, &json!({"preconditions": {"uid": "other"}}))
        .await;
    assert_eq!(wrong_uid.code, 409);
    assert!(
        wrong_uid.json()["message"]
            .as_str()
            .unwrap()
            .contains("Precondition failed: UID")
    );
    let stale_rv = api
        .delete(&path, &json!({"preconditions": {"resourceVersion": "1"}}))
        .await;
    assert_eq!(stale_rv.code, 409);
    let ok = api
        .delete(&path, &json!({"preconditions": {"uid": made["metadata"]["uid"], "resourceVersion": made["metadata"]["resourceVersion"]}}))
        .await;
    assert_eq!(ok.code, 200);
    assert_eq!(api.get(&path).await.code, 404);

    let mut held = cm("held", &json!({}));
    held["metadata"]["finalizers"] = json!(["example.com/hold"]);
    api.post(CMS, &held).await;
    let marked = api
        .delete(
            &format!("{CMS}/held"),
            &json!({"propagationPolicy": "Foreground"}),
        )
        .await;
    assert_eq!(marked.code, 202);
    let marked = marked.json();
    assert!(marked["metadata"]["deletionTimestamp"].is_string());
    assert_eq!(
        marked["metadata"]["finalizers"],
        json!(["example.com/hold", "foregroundDeletion"])
    );
    api.merge(
        &format!("{CMS}/held"),
        &json!({"metadata": {"finalizers": null}}),
    )
    .await;
    assert_eq!(
        api.get(&format!("{CMS}/held")).await.code,
        404,
        "gone with its finalizers"
    );
}

#[tokio::test]
async fn kinds_keep_their_own_deletion_rules() {
    let api = Api::start().await;
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
        "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "busybox"}]}});
    api.post("/api/v1/namespaces/default/pods", &pod).await;
    let graceful = api
        .delete("/api/v1/namespaces/default/pods/p", &Value::Null)
        .await;
    assert_eq!(graceful.code, 202, "a bound pod waits for its node");
    assert_eq!(
        graceful.json()["metadata"]["deletionGracePeriodSeconds"],
        30
    );
    let now = api
        .delete(
            "/api/v1/namespaces/default/pods/p?gracePeriodSeconds=0",
            &Value::Null,
        )
        .await;
    assert_eq!(now.code, 200);

    let forbidden = api
        .delete("/api/v1/namespaces/kube-system", &Value::Null)
        .await;
    assert_eq!(forbidden.code, 403);
    assert_eq!(
        forbidden.json()["message"],
        r#"namespaces "kube-system" is forbidden: this namespace may not be deleted"#
    );
    api.post("/api/v1/namespaces", &json!({"metadata": {"name": "team"}}))
        .await;
    let terminating = api.delete("/api/v1/namespaces/team", &Value::Null).await;
    assert_eq!(terminating.code, 202);
    assert_eq!(terminating.json()["status"]["phase"], "Terminating");
    let refused = api
        .post("/api/v1/namespaces/team/configmaps", &cm("x", &json!({})))
        .await;
    assert_eq!(
        refused.code, 403,
        "no new objects in a terminating namespace"
    );
    assert_eq!(
        api.delete("/api/v1/namespaces", &Value::Null).await.code,
        405,
        "namespaces have no deletecollection"
    );
}

#[tokio::test]
async fn services_take_addresses_and_ports_and_give_them_back() {
    let api = Api::start().await;
    let svc = |name: &str, ip: &str| {
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
            "spec": {"type": "NodePort", "clusterIP": ip, "ports": [{"port": 80}]}})
    };
    let services = "/api/v1/namespaces/default/services";
    let made = api.post(services, &svc("a", "10.96.0.50")).await.json();
    assert_eq!(made["spec"]["clusterIP"], "10.96.0.50");
    let port = made["spec"]["ports"][0]["nodePort"].as_u64().unwrap();
    assert!((30000..=30009).contains(&port));
    let taken = api.post(services, &svc("b", "10.96.0.50")).await;
    assert_eq!(taken.code, 422);
    assert!(
        taken.json()["message"]
            .as_str()
            .unwrap()
            .contains("already allocated")
    );
    api.delete(&format!("{services}/a"), &Value::Null).await;
    assert_eq!(
        api.post(services, &svc("b", "10.96.0.50")).await.code,
        201,
        "given back"
    );
}

#[tokio::test]
async fn a_service_changing_type_takes_and_gives_back_its_addresses_and_ports() {
    let api = Api::start().await;
    let services = "/api/v1/namespaces/default/services";
    let morph = &format!("{services}/morph");
    let made = api
        .post(
            services,
            &json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "morph"},
                "spec": {"ports": [{"name": "http", "port": 80}]}}),
        )
        .await
        .json();
    let ip = made["spec"]["clusterIP"].as_str().unwrap().to_owned();
    let set_type = |kind: &str| json!({"spec": {"type": kind}});

    let node_port = api.merge(morph, &set_type("NodePort")).await.json();
    assert_eq!(node_port["spec"]["clusterIP"], ip.as_str());
    let port = node_port["spec"]["ports"][0]["nodePort"].as_u64().unwrap();
    assert!((30000..=30009).contains(&port), "{node_port}");

    let lb = api.merge(morph, &set_type("LoadBalancer")).await.json();
    assert_eq!(lb["spec"]["ports"][0]["nodePort"], port, "{lb}");
    let status = json!({"status": {"loadBalancer": {"ingress": [{"ip": "192.168.1.240"}]}}});
    assert_eq!(
        api.merge(&format!("{morph}/status"), &status).await.code,
        200
    );

    let external = api
        .merge(
            morph,
            &json!({"spec": {"type": "ExternalName", "externalName": "web.example.org"}}),
        )
        .await;
    assert_eq!(external.code, 200, "{}", external.json());
    let external = external.json();
    assert!(
        external["spec"].get("clusterIP").is_none()
            && external["spec"]["ports"][0].get("nodePort").is_none(),
        "{external}"
    );
    assert_eq!(external["status"]["loadBalancer"], json!({}));
    // Both were given back.
    let claim = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "taker"},
        "spec": {"type": "NodePort", "clusterIP": ip, "ports": [{"port": 80, "nodePort": port}]}});
    let taken = api.post(services, &claim).await;
    assert_eq!(taken.code, 201, "{}", taken.json());

    let back = api
        .merge(
            morph,
            &json!({"spec": {"type": "ClusterIP", "externalName": null}}),
        )
        .await;
    assert_eq!(back.code, 200, "{}", back.json());
    let back = back.json();
    let again = back["spec"]["clusterIP"].as_str().unwrap();
    assert!(
        again.parse::<std::net::Ipv4Addr>().is_ok() && again != ip,
        "{back}"
    );
    assert!(back["spec"]["ports"][0].get("nodePort").is_none(), "{back}");

    // A PUT of the user's own manifest (no allocated values) keeps what the Service holds.
    let mut put = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "taker"},
        "spec": {"type": "NodePort", "ports": [{"port": 80}]}});
    put["metadata"]["resourceVersion"] = json!(null);
    let kept = api
        .call(Method::PUT, &format!("{services}/taker"), JSON, &put)
        .await;
    assert_eq!(kept.code, 200, "{}", kept.json());
    let kept = kept.json();
    assert_eq!(kept["spec"]["clusterIP"], ip.as_str());
    assert_eq!(kept["spec"]["ports"][0]["nodePort"], port);
}

#[tokio::test]
async fn the_status_subresource_writes_only_status() {
    let api = Api::start().await;
    api.post(DEPLOYS, &deployment("d")).await;
    let status = api
        .merge(
            &format!("{DEPLOYS}/d/status"),
            &json!({"status": {"replicas": 4}, "spec": {"replicas": 9}}),
        )
        .await
        .json();
    assert_eq!(replicas(&status), (Some(1), Some(4)));
    let mut main = status.clone();
    main["status"]["replicas"] = json!(0);
    main["spec"]["replicas"] = json!(2);
    let updated = api
        .call(Method::PUT, &format!("{DEPLOYS}/d"), JSON, &main)
        .await
        .json();
    assert_eq!(replicas(&updated), (Some(2), Some(4)));
    let mut put_status = updated.clone();
    put_status["status"]["replicas"] = json!(2);
    let put = api
        .call(
            Method::PUT,
            &format!("{DEPLOYS}/d/status"),
            JSON,
            &put_status,
        )
        .await;
    assert_eq!(put.code, 200);
    assert_eq!(put.json()["status"]["replicas"], 2);
}

#[tokio::test]
async fn a_node_pod_cidr_is_set_once_and_then_refused_as_invalid() {
    let api = Api::start().await;
    let nodes = "/api/v1/nodes";
    let made = api
        .post(
            nodes,
            &json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n0"}}),
        )
        .await;
    assert_eq!(made.code, 201);
    let rv = made.json()["metadata"]["resourceVersion"].clone();
    let set = |cidr: &str, rv: &Value| json!({"metadata": {"resourceVersion": rv}, "spec": {"podCIDR": cidr, "podCIDRs": [cidr]}});
    // Two allocators racing from the same read: the first wins, the second is told its
    // copy is stale.
    let first = api
        .merge("/api/v1/nodes/n0", &set("10.244.0.0/24", &rv))
        .await;
    assert_eq!(first.code, 200);
    assert_eq!(first.json()["spec"]["podCIDRs"], json!(["10.244.0.0/24"]));
    let second = api
        .merge("/api/v1/nodes/n0", &set("10.244.1.0/24", &rv))
        .await;
    assert_eq!(second.code, 409);
    // Without a precondition the change itself is refused, in every write verb.
    let changed = api
        .merge(
            "/api/v1/nodes/n0",
            &json!({"spec": {"podCIDR": "10.244.1.0/24", "podCIDRs": ["10.244.1.0/24"]}}),
        )
        .await;
    assert_eq!(changed.code, 422);
    let status = changed.json();
    assert_eq!(status["reason"], "Invalid");
    assert_eq!(status["details"]["causes"][0]["field"], "spec.podCIDRs");
    assert!(
        status["message"]
            .as_str()
            .unwrap()
            .contains("may not change podCIDR"),
        "{status}"
    );
    let single = api
        .merge(
            "/api/v1/nodes/n0",
            &json!({"spec": {"podCIDR": "10.244.1.0/24"}}),
        )
        .await;
    assert_eq!(single.code, 422);
    let mut put = api.get("/api/v1/nodes/n0").await.json();
    put["spec"] = json!({});
    let cleared = api.call(Method::PUT, "/api/v1/nodes/n0", JSON, &put).await;
    assert_eq!(cleared.code, 422, "{}", cleared.json());
    // Writing what it holds, or leaving it alone, is fine.
    let same = api
        .merge(
            "/api/v1/nodes/n0",
            &json!({"spec": {"podCIDR": "10.244.0.0/24"}}),
        )
        .await;
    assert_eq!(same.code, 200);
    let labelled = api
        .merge(
            "/api/v1/nodes/n0",
            &json!({"metadata": {"labels": {"a": "b"}}}),
        )
        .await;
    assert_eq!(labelled.code, 200);
    let stored = api.get("/api/v1/nodes/n0").await.json();
    assert_eq!(stored["spec"]["podCIDR"], "10.244.0.0/24");
    assert_eq!(stored["spec"]["podCIDRs"], json!(["10.244.0.0/24"]));
}

#[tokio::test]
async fn a_watch_from_a_revision_sees_what_happened_after_it() {
    let api = Api::start().await;
    let first = api.post(CMS, &cm("before", &json!({}))).await.json();
    let rv = first["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_owned();
    api.post(CMS, &cm("after", &json!({}))).await;
    api.merge(&format!("{CMS}/before"), &json!({"data": {"k": "w"}}))
        .await;
    api.delete(&format!("{CMS}/after"), &Value::Null).await;
    let (path, query) = (CMS, format!("watch=true&resourceVersion={rv}"));
    let Route::Resource(r) = route(path) else {
        unreachable!()
    };
    let resp = super::dispatch(
        &api.ctx,
        &Method::GET,
        &r,
        &Query::parse(Some(&query)),
        &HeaderMap::new(),
        Bytes::new(),
    )
    .await
    .unwrap();
    let mut body = resp.into_body();
    let mut lines = Vec::new();
    while lines.len() < 3 {
        let frame = tokio::time::timeout(Duration::from_secs(5), body.frame())
            .await
            .expect("watch events arrive")
            .unwrap()
            .unwrap();
        let data = frame.into_data().unwrap();
        assert!(data.ends_with(b"\n"));
        let event: Value = serde_json::from_slice(&data).unwrap();
        lines.push((
            event["type"].as_str().unwrap().to_owned(),
            event["object"]["metadata"]["name"]
                .as_str()
                .unwrap()
                .to_owned(),
        ));
    }
    let expected: Vec<(String, String)> = [
        ("ADDED", "after"),
        ("MODIFIED", "before"),
        ("DELETED", "after"),
    ]
    .iter()
    .map(|(t, n)| ((*t).to_owned(), (*n).to_owned()))
    .collect();
    assert_eq!(lines, expected);
}

#[tokio::test]
async fn tables_use_the_kinds_own_columns() {
    let api = Api::start().await;
    let rc = json!({"apiVersion": "v1", "kind": "ReplicationController", "metadata": {"name": "rc"},
        "spec": {"replicas": 2, "template": {"metadata": {"labels": {"app": "rc"}},
            "spec": {"containers": [{"name": "app", "image": "busybox"}]}}}});
    let rcs = "/api/v1/namespaces/default/replicationcontrollers";
    let made = api.post(rcs, &rc).await;
    assert_eq!(made.code, 201, "{}", String::from_utf8_lossy(&made.bytes));
    assert_eq!(
        made.json()["spec"]["selector"],
        json!({"app": "rc"}),
        "from the template"
    );
    assert_eq!(made.json()["status"], json!({"replicas": 0}));
    let table = api
        .send_with(
            Method::GET,
            rcs,
            JSON,
            b"",
            Some("application/json;as=Table;v=v1;g=meta.k8s.io"),
        )
        .await
        .json();
    let columns: Vec<&str> = table["columnDefinitions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["priority"] == 0)
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(columns, ["Name", "Desired", "Current", "Ready", "Age"]);
    assert_eq!(table["rows"][0]["cells"][1], 2);
    let scale = api.get(&format!("{rcs}/rc/scale")).await.json();
    assert_eq!(
        (
            scale["spec"]["replicas"].as_i64(),
            scale["status"]["selector"].as_str()
        ),
        (Some(2), Some("app=rc"))
    );
    let scaled = api
        .merge(
            &format!("{rcs}/rc/scale"),
            &json!({"spec": {"replicas": 5}}),
        )
        .await
        .json();
    assert_eq!(scaled["spec"]["replicas"], 5);
}

#[tokio::test]
async fn a_delete_without_preconditions_retries_when_a_controller_writes_meanwhile() {
    let api = Api::racing().await;
    api.post(DEPLOYS, &deployment("d")).await;
    api.race(3);
    let deleted = api.delete(&format!("{DEPLOYS}/d"), &Value::Null).await;
    assert_eq!(
        deleted.code,
        200,
        "{}",
        String::from_utf8_lossy(&deleted.bytes)
    );
    assert_eq!(api.raced(), 3, "every attempt but the last lost its race");
    assert_eq!(api.get(&format!("{DEPLOYS}/d")).await.code, 404);

    // A precondition the client sent still conflicts once the object moved on.
    let made = api.post(DEPLOYS, &deployment("e")).await.json();
    api.race(1);
    let stale = api
        .delete(
            &format!("{DEPLOYS}/e"),
            &json!({"preconditions": {"resourceVersion": made["metadata"]["resourceVersion"]}}),
        )
        .await;
    assert_eq!(stale.code, 409);
}

#[tokio::test]
async fn every_internal_read_modify_write_retries_a_lost_race() {
    let api = Api::racing().await;
    let mut held = cm("held", &json!({}));
    held["metadata"]["finalizers"] = json!(["example.com/hold"]);
    api.post(CMS, &held).await;
    let path = format!("{CMS}/held");
    api.race(2);
    assert_eq!(api.delete(&path, &Value::Null).await.code, 202);
    api.race(2);
    let patched = api
        .merge(&path, &json!({"metadata": {"finalizers": null}}))
        .await;
    assert_eq!(patched.code, 200);
    assert_eq!(
        api.get(&path).await.code,
        404,
        "finalized despite the races"
    );

    let made = api.post(CMS, &cm("c", &json!({}))).await.json();
    let mut unconditional = made.clone();
    unconditional["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("resourceVersion");
    api.race(2);
    assert_eq!(
        api.call(Method::PUT, &format!("{CMS}/c"), JSON, &unconditional)
            .await
            .code,
        200
    );

    api.post(DEPLOYS, &deployment("d")).await;
    api.race(2);
    let scaled = api
        .merge(
            &format!("{DEPLOYS}/d/scale"),
            &json!({"spec": {"replicas": 3}}),
        )
        .await;
    assert_eq!(scaled.code, 200);

    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]}});
    api.post("/api/v1/namespaces/default/pods", &pod).await;
    api.race(2);
    let bound = api
        .post(
            "/api/v1/namespaces/default/pods/p/binding",
            &json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "p"}, "target": {"name": "n1"}}),
        )
        .await;
    assert_eq!(bound.code, 201);
    assert_eq!(
        api.get("/api/v1/namespaces/default/pods/p").await.json()["spec"]["nodeName"],
        "n1"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_races_a_real_concurrent_status_writer_without_conflict() {
    let api = Arc::new(Api::start().await);
    let codes = Arc::new(Mutex::new(HashMap::<u16, usize>::new()));
    for round in 0..5 {
        let name = format!("d{round}");
        api.post(DEPLOYS, &deployment(&name)).await;
        let helper = Arc::clone(&api);
        let status_path = format!("{DEPLOYS}/{name}/status");
        let counts = Arc::clone(&codes);
        let writer = tokio::spawn(async move {
            for i in 0..50 {
                let code = helper
                    .merge(&status_path, &json!({"status": {"observedGeneration": i}}))
                    .await
                    .code;
                *counts.lock().unwrap().entry(code).or_default() += 1;
                if code == 404 {
                    break;
                }
                tokio::task::yield_now().await;
            }
        });
        tokio::task::yield_now().await;
        let deleted = api.delete(&format!("{DEPLOYS}/{name}"), &Value::Null).await;
        assert_eq!(
            deleted.code,
            200,
            "{}",
            String::from_utf8_lossy(&deleted.bytes)
        );
        writer.await.unwrap();
    }
    assert!(
        codes
            .lock()
            .unwrap()
            .keys()
            .all(|code| [200, 404].contains(code)),
        "status writes never conflict either: {codes:?}"
    );
}

#[tokio::test]
async fn an_autoscaler_written_in_v1_is_read_patched_and_listed_in_both_versions() {
    const V1: &str = "/apis/autoscaling/v1/namespaces/default/horizontalpodautoscalers";
    const V2: &str = "/apis/autoscaling/v2/namespaces/default/horizontalpodautoscalers";
    let api = Api::start().await;
    let hpa = json!({
        "apiVersion": "autoscaling/v1",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "web"},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
            "maxReplicas": 3,
            "targetCPUUtilizationPercentage": 50,
        },
    });
    let made = api.post(V1, &hpa).await;
    assert_eq!(made.code, 201, "{}", made.json());
    let made = made.json();
    assert_eq!(made["apiVersion"], "autoscaling/v1");
    assert_eq!(made["spec"]["minReplicas"], 1);
    let v2 = api.get(&format!("{V2}/web")).await.json();
    assert_eq!(v2["apiVersion"], "autoscaling/v2");
    assert_eq!(
        v2["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"],
        50
    );
    // A v2 behavior survives being read and written back through v1.
    let patched = api
        .merge(
            &format!("{V2}/web"),
            &json!({"spec": {"behavior": {"scaleDown": {"stabilizationWindowSeconds": 5}}}}),
        )
        .await;
    assert_eq!(patched.code, 200, "{}", patched.json());
    let through_v1 = api
        .merge(&format!("{V1}/web"), &json!({"spec": {"maxReplicas": 4}}))
        .await
        .json();
    assert_eq!(through_v1["spec"]["maxReplicas"], 4);
    assert!(through_v1["spec"].get("behavior").is_none());
    let v2 = api.get(&format!("{V2}/web")).await.json();
    assert_eq!(v2["spec"]["maxReplicas"], 4);
    assert_eq!(
        v2["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"],
        5
    );
    assert!(v2["metadata"].get("annotations").is_none());
    let listed = api.get(V1).await.json();
    assert_eq!(
        listed["items"][0]["spec"]["targetCPUUtilizationPercentage"],
        50
    );
}

#[tokio::test]
async fn ephemeral_containers_are_only_added_through_their_subresource() {
    const POD: &str = "/api/v1/namespaces/default/pods/web";
    let api = Api::start().await;
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web"},
        "spec": {"containers": [{"name": "app", "image": "busybox:1.36"}]}});
    assert_eq!(
        api.post("/api/v1/namespaces/default/pods", &pod).await.code,
        201
    );
    let debugger = json!({"name": "debugger", "image": "busybox:1.36", "command": ["sh"]});
    // kubectl debug's patch.
    let added = api
        .call(
            Method::PATCH,
            &format!("{POD}/ephemeralcontainers"),
            "application/strategic-merge-patch+json",
            &json!({"spec": {"ephemeralContainers": [debugger]}}),
        )
        .await;
    assert_eq!(added.code, 200, "{}", added.json());
    let added = added.json();
    assert_eq!(added["spec"]["ephemeralContainers"][0]["name"], "debugger");
    assert_eq!(
        added["spec"]["ephemeralContainers"][0]["imagePullPolicy"],
        "IfNotPresent"
    );
    // A change to an existing one, or a name taken by another container, is refused.
    let changed = api
        .merge(
            &format!("{POD}/ephemeralcontainers"),
            &json!({"spec": {"ephemeralContainers": [{"name": "debugger", "image": "busybox:1.37"}]}}),
        )
        .await;
    assert_eq!(changed.code, 422, "{}", changed.json());
    let mut clash = added.clone();
    clash["spec"]["ephemeralContainers"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "app", "image": "busybox:1.36"}));
    let put = api
        .call(
            Method::PUT,
            &format!("{POD}/ephemeralcontainers"),
            JSON,
            &clash,
        )
        .await;
    assert_eq!(put.code, 422, "{}", put.json());
    // The main resource keeps them as they are.
    let main = api
        .merge(POD, &json!({"spec": {"ephemeralContainers": null}}))
        .await
        .json();
    assert_eq!(main["spec"]["ephemeralContainers"][0]["name"], "debugger");
}

fn labelled_namespace(name: &str, labels: &Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}})
}

fn pod(name: &str, spec: &Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec})
}

#[tokio::test]
async fn pod_security_enforce_refuses_warn_warns_and_workloads_only_warn() {
    let api = Api::start().await;
    for (name, labels) in [
        (
            "strict",
            json!({"pod-security.kubernetes.io/enforce": "restricted"}),
        ),
        (
            "loose",
            json!({"pod-security.kubernetes.io/warn": "baseline"}),
        ),
    ] {
        let made = api
            .post("/api/v1/namespaces", &labelled_namespace(name, &labels))
            .await;
        assert_eq!(made.code, 201);
    }
    let plain = json!({"containers": [{"name": "c", "image": "busybox"}]});
    let refused = api
        .post("/api/v1/namespaces/strict/pods", &pod("p", &plain))
        .await;
    assert_eq!(refused.code, 403);
    assert_eq!(
        refused.json()["message"],
        "pods \"p\" is forbidden: violates PodSecurity \"restricted:latest\": allowPrivilegeEscalation != false (container \"c\" must set securityContext.allowPrivilegeEscalation=false), unrestricted capabilities (container \"c\" must set securityContext.capabilities.drop=[\"ALL\"]), runAsNonRoot != true (pod or container \"c\" must set securityContext.runAsNonRoot=true), seccompProfile (pod or container \"c\" must set securityContext.seccompProfile.type to \"RuntimeDefault\" or \"Localhost\")"
    );
    let hardened = json!({
        "securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [{"name": "c", "image": "busybox", "securityContext": {
            "allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}}}]
    });
    let admitted = api
        .post("/api/v1/namespaces/strict/pods", &pod("q", &hardened))
        .await;
    assert_eq!(admitted.code, 201, "{:?}", admitted.json());
    assert!(admitted.warnings.is_empty(), "{:?}", admitted.warnings);

    let mut d = deployment("web");
    d["metadata"]["namespace"] = json!("strict");
    let workload = api
        .post("/apis/apps/v1/namespaces/strict/deployments", &d)
        .await;
    assert_eq!(workload.code, 201);
    assert_eq!(workload.warnings.len(), 1, "{:?}", workload.warnings);
    assert!(
        workload.warnings[0]
            .starts_with("299 - \"would violate PodSecurity \\\"restricted:latest\\\": allowPrivilegeEscalation != false"),
        "{:?}",
        workload.warnings
    );

    let privileged = json!({"containers": [{"name": "c", "image": "busybox",
        "securityContext": {"privileged": true}}]});
    let warned = api
        .post("/api/v1/namespaces/loose/pods", &pod("r", &privileged))
        .await;
    assert_eq!(warned.code, 201);
    assert_eq!(
        warned.warnings,
        vec![
            "299 - \"would violate PodSecurity \\\"baseline:latest\\\": privileged (container \\\"c\\\" must not set securityContext.privileged=true)\""
        ]
    );

    let tightened = api
        .merge(
            "/api/v1/namespaces/loose",
            &json!({"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "baseline"}}}),
        )
        .await;
    assert_eq!(tightened.code, 200);
    assert_eq!(
        tightened.warnings,
        vec![
            "299 - \"existing pods in namespace \\\"loose\\\" violate the new PodSecurity enforce level \\\"baseline:latest\\\"\"",
            "299 - \"r: privileged\"",
        ]
    );
    // A pod admitted before the namespace tightened still takes status and label writes.
    let status = api
        .merge(
            "/api/v1/namespaces/loose/pods/r/status",
            &json!({"status": {"phase": "Running"}}),
        )
        .await;
    assert_eq!(status.code, 200, "{:?}", status.json());
    let relabelled = api
        .merge(
            "/api/v1/namespaces/loose/pods/r",
            &json!({"metadata": {"labels": {"x": "y"}}}),
        )
        .await;
    assert_eq!(relabelled.code, 200, "{:?}", relabelled.json());
    let reimaged = api
        .call(
            Method::PATCH,
            "/api/v1/namespaces/loose/pods/r",
            "application/json-patch+json",
            &json!([{"op": "replace", "path": "/spec/containers/0/image", "value": "busybox:1.37"}]),
        )
        .await;
    assert_eq!(reimaged.code, 200, "{:?}", reimaged.json());
}

#[tokio::test]
async fn malformed_pod_security_labels_refuse_the_namespace() {
    let api = Api::start().await;
    let typo = api
        .post(
            "/api/v1/namespaces",
            &labelled_namespace(
                "typo",
                &json!({"pod-security.kubernetes.io/enforce": "strict"}),
            ),
        )
        .await;
    assert_eq!(typo.code, 422);
    assert_eq!(
        typo.json()["message"],
        "Namespace \"typo\" is invalid: metadata.labels[pod-security.kubernetes.io/enforce]: Invalid value: \"strict\": must be one of privileged, baseline, restricted"
    );
}

#[tokio::test]
async fn the_kubernetes_service_gets_the_advertised_address_as_endpoints_kept_current() {
    let api = Api::start().await;
    let first: std::net::SocketAddr = "192.0.2.10:6443".parse().unwrap();
    crate::bootstrap::run(&api.ctx, Some(first)).await.unwrap();
    let moved: std::net::SocketAddr = "192.0.2.11:7443".parse().unwrap();
    crate::bootstrap::run(&api.ctx, Some(moved)).await.unwrap();
    let eps = api
        .get("/api/v1/namespaces/default/endpoints/kubernetes")
        .await
        .json();
    assert_eq!(eps["subsets"][0]["addresses"][0]["ip"], "192.0.2.11");
    assert_eq!(eps["subsets"][0]["ports"][0]["port"], 7443);
    let slice = api
        .get("/apis/discovery.k8s.io/v1/namespaces/default/endpointslices/kubernetes")
        .await
        .json();
    assert_eq!(
        slice["metadata"]["labels"]["kubernetes.io/service-name"],
        "kubernetes"
    );
    assert_eq!(slice["endpoints"][0]["addresses"][0], "192.0.2.11");
    assert_eq!(slice["ports"][0]["name"], "https");
    assert_eq!(slice["ports"][0]["port"], 7443);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binding_from_a_watch_cache_copy_that_is_behind_keeps_the_newer_write() {
    const PODS: &str = "/api/v1/namespaces/default/pods";
    let api = Api::racing().await;
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]}});
    assert_eq!(api.post(PODS, &pod).await.code, 201);
    // Reads until the pods' watch cache serves, so the binding starts from its copy.
    let info = skiff_resources::by_kind("v1", "Pod").unwrap();
    let key = crate::objects::key(info, Some("default"), "p");
    for _ in 0..200 {
        api.get(PODS).await;
        if api
            .ctx
            .cache
            .cache(info)
            .is_some_and(|c| c.get(&key).flatten().is_some())
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        api.ctx.cache.cache(info).is_some(),
        "the pods' watch cache never served"
    );
    // Another writer gets in between the read of the copy and the binding's write.
    api.race(1);
    let bound = api
        .post(
            &format!("{PODS}/p/binding"),
            &json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "p"}, "target": {"name": "n1"}}),
        )
        .await;
    assert_eq!(bound.code, 201, "{}", String::from_utf8_lossy(&bound.bytes));
    assert_eq!(api.raced(), 1);
    let now = api.get(&format!("{PODS}/p")).await.json();
    assert_eq!(now["spec"]["nodeName"], "n1");
    assert_eq!(now["status"]["observedGeneration"], 1, "{now}");
    let scheduled: Vec<&Value> = now["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["type"] == "PodScheduled")
        .collect();
    assert_eq!(scheduled.len(), 1);
    assert_eq!(scheduled[0]["status"], "True");

    // A second binding is refused, whichever copy it starts from.
    let again = api
        .post(
            &format!("{PODS}/p/binding"),
            &json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "p"}, "target": {"name": "n2"}}),
        )
        .await;
    assert_eq!(again.code, 409);
}
