use std::{collections::BTreeMap, net::SocketAddr};

use serde_json::Value;
use skiff_machinery::user::UserInfo;

use super::{Auditor, Level, Policy, RequestMeta, Stage};
use crate::authz::attributes::{self, Attributes};

const POLICY: &str = r#"
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
- level: None
  users: ["system:kube-proxy"]
- level: None
  nonResourceURLs: ["/healthz*", /version]
- level: RequestResponse
  resources:
  - group: ""
    resources: [configmaps]
    resourceNames: [audited]
- level: Request
  verbs: [create]
  namespaces: [prod]
- level: Metadata
  userGroups: [devs]
  resources:
  - group: apps
    resources: ["deployments/*"]
- level: None
  resources:
  - group: apps
"#;

fn attrs(user: &str, groups: &[&str], method: &str, path: &str) -> Attributes {
    attributes::from_request(
        UserInfo::new(user, groups.iter().copied()),
        method,
        path,
        &|_| None,
    )
}

fn level(policy: &Policy, a: &Attributes) -> Level {
    policy.decide(a).level
}

#[test]
fn the_first_matching_rule_decides_the_level() {
    let p = Policy::parse(POLICY).expect("policy");
    let alice = |method, path| attrs("alice", &["devs"], method, path);
    assert_eq!(
        level(&p, &attrs("system:kube-proxy", &[], "GET", "/api/v1/pods")),
        Level::None
    );
    assert_eq!(level(&p, &alice("GET", "/healthz/ready")), Level::None);
    assert_eq!(level(&p, &alice("GET", "/version")), Level::None);
    assert_eq!(
        level(
            &p,
            &alice("GET", "/api/v1/namespaces/default/configmaps/audited")
        ),
        Level::RequestResponse
    );
    assert_eq!(
        level(
            &p,
            &alice("GET", "/api/v1/namespaces/default/configmaps/other")
        ),
        Level::None,
        "no rule matches"
    );
    assert_eq!(
        level(&p, &alice("POST", "/api/v1/namespaces/prod/configmaps")),
        Level::Request
    );
    assert_eq!(
        level(&p, &alice("POST", "/api/v1/namespaces/dev/configmaps")),
        Level::None
    );
    assert_eq!(
        level(
            &p,
            &alice("PUT", "/apis/apps/v1/namespaces/a/deployments/web/scale")
        ),
        Level::Metadata
    );
    assert_eq!(
        level(
            &p,
            &alice("GET", "/apis/apps/v1/namespaces/a/deployments/web")
        ),
        Level::None,
        "deployments/* is for subresources only"
    );
    assert_eq!(
        level(
            &p,
            &attrs(
                "bob",
                &[],
                "PUT",
                "/apis/apps/v1/namespaces/a/deployments/web/scale"
            )
        ),
        Level::None,
        "not in the user groups"
    );
    assert_eq!(
        p.decide(&alice("GET", "/version")).omit_stages,
        vec![Stage::RequestReceived]
    );
}

#[test]
fn the_default_policy_logs_everything_at_metadata() {
    let p = Policy::metadata();
    assert_eq!(
        level(&p, &attrs("x", &[], "GET", "/livez")),
        Level::Metadata
    );
    assert_eq!(
        level(&p, &attrs("x", &[], "DELETE", "/api/v1/nodes/n")),
        Level::Metadata
    );
}

#[test]
fn another_kind_is_refused() {
    assert!(Policy::parse("apiVersion: v1\nkind: ConfigMap\n").is_err());
    assert!(
        Policy::parse("apiVersion: audit.k8s.io/v1\nkind: Policy\nrules: [{level: Loud}]\n")
            .is_err()
    );
}

#[tokio::test]
async fn events_are_written_as_json_lines_with_the_users_and_the_object() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("audit.log");
    let auditor = Auditor::start(&path, Policy::parse(POLICY).expect("policy")).expect("start");
    let caller = UserInfo::new("alice", ["system:authenticated"]);
    let mut as_bob = attrs(
        "bob",
        &["devs"],
        "GET",
        "/api/v1/namespaces/default/configmaps/audited",
    );
    as_bob.user.extra = BTreeMap::new();
    let uri: http::Uri = "/api/v1/namespaces/default/configmaps/audited?x=1"
        .parse()
        .expect("uri");
    let mut headers = http::HeaderMap::new();
    headers.insert(
        http::header::USER_AGENT,
        "kubectl/v1.33".parse().expect("agent"),
    );
    let meta = RequestMeta::new(&uri, &headers, SocketAddr::from(([127, 0, 0, 1], 4000)));
    let mut entry = auditor.begin(&as_bob, &caller, &meta).expect("audited");
    entry
        .run(async {
            super::keep_request_body(
                &http::HeaderMap::new(),
                &bytes::Bytes::from_static(b"{\"kind\":\"ConfigMap\"}"),
            );
        })
        .await;
    let response = crate::http::json(
        http::StatusCode::OK,
        &serde_json::json!({"kind": "ConfigMap", "data": {"k": "v"}}),
    );
    let response = entry.finish(&auditor, response).await;
    assert_eq!(response.status(), 200);
    let none = auditor.begin(&attrs("bob", &[], "GET", "/version"), &caller, &meta);
    assert!(none.is_none());
    drop(auditor);
    let mut lines = String::new();
    for _ in 0..100 {
        lines = std::fs::read_to_string(&path).unwrap_or_default();
        if !lines.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let events: Vec<Value> = lines
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    assert_eq!(events.len(), 1, "RequestReceived omitted: {lines}");
    let e = &events[0];
    assert_eq!(e["apiVersion"], "audit.k8s.io/v1");
    assert_eq!(e["stage"], "ResponseComplete");
    assert_eq!(e["level"], "RequestResponse");
    assert_eq!(e["verb"], "get");
    assert_eq!(
        e["requestURI"],
        "/api/v1/namespaces/default/configmaps/audited?x=1"
    );
    assert_eq!(e["user"]["username"], "alice");
    assert_eq!(e["impersonatedUser"]["username"], "bob");
    assert_eq!(e["sourceIPs"][0], "127.0.0.1");
    assert_eq!(e["userAgent"], "kubectl/v1.33");
    assert_eq!(e["objectRef"]["resource"], "configmaps");
    assert_eq!(e["objectRef"]["name"], "audited");
    assert_eq!(e["objectRef"]["apiVersion"], "v1");
    assert_eq!(e["responseStatus"]["code"], 200);
    assert_eq!(e["requestObject"]["kind"], "ConfigMap");
    assert_eq!(e["responseObject"]["data"]["k"], "v");
    let received = e["requestReceivedTimestamp"].as_str().expect("timestamp");
    assert_eq!(
        received.len(),
        "2026-01-01T00:00:00.000000Z".len(),
        "{received}"
    );
    assert!(e["auditID"].as_str().is_some_and(|id| id.len() == 36));
}
