//! The resource metrics API (`metrics.k8s.io/v1beta1`, what metrics-server serves for
//! `kubectl top` and autoscalers): `NodeMetrics` and `PodMetrics` read from every node's
//! `/stats/summary` at request time, so usage is what the cgroups report, never requests.

use std::{collections::BTreeMap, time::Duration};

use serde_json::{Value, json};
use skiff_machinery::{selector::LabelSelector, status::StatusError};
use skiff_resources::by_kind;
use skiff_store::ListOptions;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::{ctx::Ctx, http::Query, kubelet_client::KubeletClient, objects};

/// The group and version served.
pub const GROUP: &str = "metrics.k8s.io";
/// The one version.
pub const VERSION: &str = "v1beta1";
/// How long one node may take to answer.
const NODE_TIMEOUT: Duration = Duration::from_secs(3);
/// A node that has no earlier reading gives no CPU rate: ask again after this.
const RATE_WINDOW: Duration = Duration::from_secs(1);

/// The `APIGroup` document.
#[must_use]
pub fn group() -> Value {
    let version = json!({"groupVersion": format!("{GROUP}/{VERSION}"), "version": VERSION});
    json!({"name": GROUP, "versions": [version], "preferredVersion": version})
}

/// The `APIResourceList` document.
#[must_use]
pub fn resources() -> Value {
    json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": format!("{GROUP}/{VERSION}"),
        "resources": [
            {"name": "nodes", "singularName": "", "namespaced": false, "kind": "NodeMetrics", "verbs": ["get", "list"]},
            {"name": "pods", "singularName": "", "namespaced": true, "kind": "PodMetrics", "verbs": ["get", "list"]},
        ],
    })
}

/// What a request under `/apis/metrics.k8s.io/v1beta1/` asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Target {
    /// Every node, or one.
    Nodes(Option<String>),
    /// The pods of a namespace (or of all), or one.
    Pods {
        /// `None`: all namespaces.
        namespace: Option<String>,
        /// One pod.
        name: Option<String>,
    },
}

/// The target of `rest`, the path segments after the version.
#[must_use]
pub fn target(rest: &[&str]) -> Option<Target> {
    Some(match rest {
        ["nodes"] => Target::Nodes(None),
        ["nodes", name] => Target::Nodes(Some((*name).to_owned())),
        ["pods"] => Target::Pods {
            namespace: None,
            name: None,
        },
        ["namespaces", ns, "pods"] => Target::Pods {
            namespace: Some((*ns).to_owned()),
            name: None,
        },
        ["namespaces", ns, "pods", name] => Target::Pods {
            namespace: Some((*ns).to_owned()),
            name: Some((*name).to_owned()),
        },
        _ => return None,
    })
}

/// Serves one metrics read.
///
/// # Errors
/// 404 for an unknown node or pod, 400 for a bad label selector, 503 when the store
/// cannot be read.
pub async fn serve(ctx: &Ctx, target: Target, query: &Query) -> Result<Value, StatusError> {
    let selector = query
        .get("labelSelector")
        .map(LabelSelector::parse)
        .transpose()
        .map_err(|e| StatusError::bad_request(e.to_string()))?;
    let nodes = list(ctx, "Node", None).await?;
    let mut summaries = summaries(&ctx.kubelet, &nodes).await;
    // A CPU rate needs two readings; a node asked for the first time has one.
    if summaries.iter().any(lacks_rate) {
        tokio::time::sleep(RATE_WINDOW).await;
        summaries = self::summaries(&ctx.kubelet, &nodes).await;
    }
    let now = objects::now();
    match target {
        Target::Nodes(name) => {
            let mut items = Vec::new();
            for node in &nodes {
                let node_name = objects::name_of(node);
                if name.as_deref().is_some_and(|n| n != node_name)
                    || selector.as_ref().is_some_and(|s| !s.matches(&labels(node)))
                {
                    continue;
                }
                let Some(summary) = summaries
                    .iter()
                    .find(|s| s["node"]["nodeName"] == node_name)
                else {
                    continue;
                };
                items.push(node_metrics(node, summary, &now));
            }
            one_or_list(name.as_deref(), "nodes", "NodeMetrics", items)
        }
        Target::Pods { namespace, name } => {
            let pods = list(ctx, "Pod", namespace.as_deref()).await?;
            let wanted: BTreeMap<(String, String), &Value> = pods
                .iter()
                .filter(|p| selector.as_ref().is_none_or(|s| s.matches(&labels(p))))
                .filter(|p| name.as_deref().is_none_or(|n| n == objects::name_of(p)))
                .map(|p| {
                    let ns = objects::namespace_of(p).unwrap_or_default().to_owned();
                    ((ns, objects::name_of(p).to_owned()), p)
                })
                .collect();
            let mut items = Vec::new();
            for stats in summaries
                .iter()
                .flat_map(|s| s["pods"].as_array().into_iter().flatten())
            {
                let key = (
                    stats["podRef"]["namespace"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                    stats["podRef"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                );
                if let Some(pod) = wanted.get(&key) {
                    items.push(pod_metrics(pod, stats, &now));
                }
            }
            one_or_list(name.as_deref(), "pods", "PodMetrics", items)
        }
    }
}

fn one_or_list(
    name: Option<&str>,
    plural: &str,
    kind: &str,
    mut items: Vec<Value>,
) -> Result<Value, StatusError> {
    if let Some(name) = name {
        return items
            .pop()
            .ok_or_else(|| StatusError::not_found(GROUP, plural, name));
    }
    Ok(json!({
        "kind": format!("{kind}List"),
        "apiVersion": format!("{GROUP}/{VERSION}"),
        "metadata": {},
        "items": items,
    }))
}

fn labels(obj: &Value) -> BTreeMap<String, String> {
    obj.pointer("/metadata/labels")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default()
}

async fn list(ctx: &Ctx, kind: &str, namespace: Option<&str>) -> Result<Vec<Value>, StatusError> {
    let info = by_kind("v1", kind)
        .ok_or_else(|| StatusError::internal(format!("the resource catalog has no {kind}")))?;
    let result = ctx
        .store
        .list(&objects::prefix(info, namespace), ListOptions::default())
        .await
        .map_err(|e| StatusError::unavailable(e.to_string()))?;
    result
        .items
        .iter()
        .map(|kv| objects::decode(info, kv))
        .collect()
}

/// Whether a summary has a pod or container without a CPU rate.
fn lacks_rate(summary: &Value) -> bool {
    summary["pods"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|p| p["containers"].as_array().into_iter().flatten())
        .any(|c| c["cpu"]["usageNanoCores"].is_null())
}

/// Every reachable node's summary; a node that does not answer is left out, as
/// metrics-server leaves out nodes it cannot scrape.
async fn summaries(kubelet: &KubeletClient, nodes: &[Value]) -> Vec<Value> {
    let fetches = nodes
        .iter()
        .filter_map(crate::node_proxy::endpoint_of)
        .map(|addr| async move {
            match tokio::time::timeout(NODE_TIMEOUT, summary(kubelet, &addr)).await {
                Ok(Ok(s)) => Some(s),
                Ok(Err(err)) => {
                    tracing::debug!(node = %addr, %err, "no stats summary");
                    None
                }
                Err(_) => {
                    tracing::debug!(node = %addr, "stats summary timed out");
                    None
                }
            }
        });
    futures::future::join_all(fetches)
        .await
        .into_iter()
        .flatten()
        .collect()
}

async fn summary(kubelet: &KubeletClient, addr: &str) -> std::io::Result<Value> {
    let mut stream = kubelet.dial(addr).await.map_err(std::io::Error::other)?;
    stream
        .write_all(
            format!("GET /stats/summary HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await?;
    let mut reply = Vec::new();
    match stream.read_to_end(&mut reply).await {
        // A node that closes without TLS's close_notify has still sent its whole answer.
        Err(err) if err.kind() == std::io::ErrorKind::UnexpectedEof && !reply.is_empty() => {}
        other => {
            other?;
        }
    }
    let text = String::from_utf8_lossy(&reply);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    if !head.starts_with("HTTP/1.1 200") {
        return Err(std::io::Error::other(
            head.lines().next().unwrap_or("").to_owned(),
        ));
    }
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    serde_json::from_str(&body).map_err(std::io::Error::other)
}

/// The body of a chunked HTTP/1.1 message.
fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || after.len() < size {
            break;
        }
        out.push_str(&after[..size]);
        rest = after[size..].trim_start_matches("\r\n");
    }
    out
}

/// `{"cpu": "<n>n", "memory": "<k>Ki"}` from a stats block's CPU and memory.
fn usage(cpu: &Value, memory: &Value) -> Value {
    let nanos = cpu["usageNanoCores"].as_u64().unwrap_or(0);
    let bytes = memory["workingSetBytes"].as_u64().unwrap_or(0);
    json!({"cpu": format!("{nanos}n"), "memory": format!("{}Ki", bytes / 1024)})
}

fn node_metrics(node: &Value, summary: &Value, now: &str) -> Value {
    // The node reports no usage of its own yet: its pods' usage, summed.
    let pods = summary["pods"].as_array().cloned().unwrap_or_default();
    let cpu: u64 = pods
        .iter()
        .filter_map(|p| p["cpu"]["usageNanoCores"].as_u64())
        .sum();
    let memory: u64 = pods
        .iter()
        .filter_map(|p| p["memory"]["workingSetBytes"].as_u64())
        .sum();
    let (cpu, memory) = if summary["node"]["cpu"].is_null() {
        (
            json!({"usageNanoCores": cpu}),
            json!({"workingSetBytes": memory}),
        )
    } else {
        (
            summary["node"]["cpu"].clone(),
            summary["node"]["memory"].clone(),
        )
    };
    json!({
        "metadata": {
            "name": objects::name_of(node),
            "creationTimestamp": now,
            "labels": node.pointer("/metadata/labels").cloned().unwrap_or(json!({})),
        },
        "timestamp": now,
        "window": format!("{}s", RATE_WINDOW.as_secs()),
        "usage": usage(&cpu, &memory),
    })
}

fn pod_metrics(pod: &Value, stats: &Value, now: &str) -> Value {
    let containers: Vec<Value> = stats["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| json!({"name": c["name"], "usage": usage(&c["cpu"], &c["memory"])}))
        .collect();
    json!({
        "metadata": {
            "name": objects::name_of(pod),
            "namespace": objects::namespace_of(pod),
            "creationTimestamp": now,
            "labels": pod.pointer("/metadata/labels").cloned().unwrap_or(json!({})),
        },
        "timestamp": now,
        "window": format!("{}s", RATE_WINDOW.as_secs()),
        "containers": containers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_nodes_and_pods_in_one_or_all_namespaces() {
        assert_eq!(target(&["nodes"]), Some(Target::Nodes(None)));
        assert_eq!(
            target(&["nodes", "n1"]),
            Some(Target::Nodes(Some("n1".into())))
        );
        assert_eq!(
            target(&["namespaces", "a", "pods", "p"]),
            Some(Target::Pods {
                namespace: Some("a".into()),
                name: Some("p".into())
            })
        );
        assert_eq!(
            target(&["pods"]),
            Some(Target::Pods {
                namespace: None,
                name: None
            })
        );
        assert_eq!(target(&["services"]), None);
    }

    #[test]
    fn usage_is_written_in_nanocores_and_kibibytes() {
        let u = usage(
            &json!({"usageNanoCores": 250_000_000}),
            &json!({"workingSetBytes": 4_194_304}),
        );
        assert_eq!(u, json!({"cpu": "250000000n", "memory": "4096Ki"}));
    }

    #[test]
    fn a_pod_without_a_rate_yet_asks_for_a_second_reading() {
        let first = json!({"pods": [{"containers": [{"cpu": {"usageCoreNanoSeconds": 5}}]}]});
        let second = json!({"pods": [{"containers": [{"cpu": {"usageNanoCores": 5}}]}]});
        assert!(lacks_rate(&first));
        assert!(!lacks_rate(&second));
    }

    #[test]
    fn chunked_bodies_are_joined() {
        assert_eq!(dechunk("4\r\n{\"a\"\r\n3\r\n:1}\r\n0\r\n\r\n"), "{\"a\":1}");
    }
}
