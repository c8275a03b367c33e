//! The resource quota controller: keeps each ResourceQuota's `status.hard` and
//! `status.used` current (admission in the API server does the refusing).

use std::{collections::BTreeMap, future::Future, sync::Arc, time::Duration};

use k8s_openapi::{
    api::core::v1::{Pod, ResourceQuota, ResourceQuotaStatus},
    apimachinery::pkg::api::resource::Quantity,
};
use kube::{
    Api, ResourceExt,
    api::ListParams,
    core::DynamicObject,
    runtime::{
        Controller,
        controller::Action,
        reflector::{ObjectRef, Store},
    },
};
use serde_json::{Value, json};
use skiff_control_runtime::{Clock, Context, Informers, status};
use skiff_machinery::quota;

use crate::{Error, kinds};

const COMPONENT: &str = "resourcequota-controller";
/// Objects other than pods are not watched here: usage is recounted this often.
const RECOUNT: Duration = Duration::from_secs(10);

/// The status `q` should report, given for each resource it limits the objects (as JSON,
/// with `kind`) that count toward it; `None` when the current status says that already.
/// Resources without an entry in `counted` are left out of `used`.
#[must_use]
pub fn plan(
    q: &ResourceQuota,
    counted: &BTreeMap<String, Vec<Value>>,
) -> Option<ResourceQuotaStatus> {
    let hard = q
        .spec
        .as_ref()
        .and_then(|s| s.hard.clone())
        .unwrap_or_default();
    let used: BTreeMap<String, Quantity> = hard
        .keys()
        .filter_map(|resource| {
            let objects = counted.get(resource)?;
            let total: i64 = objects.iter().map(|o| quota::usage(resource, o)).sum();
            Some((
                resource.clone(),
                Quantity(quota::format_for(resource, total)),
            ))
        })
        .collect();
    let after = ResourceQuotaStatus {
        hard: Some(hard),
        used: Some(used),
    };
    let before = q.status.as_ref();
    status::changed(before, &after).then_some(after)
}

/// The controller's own caches and bookkeeping.
#[derive(Debug)]
pub struct State {
    pods: Store<Pod>,
}

/// The controller's context.
pub type Ctx = Context<State>;

/// The controller over the process's informers; runs until dropped.
pub fn start(
    informers: &Informers,
    clock: Arc<dyn Clock>,
) -> impl Future<Output = ()> + Send + use<> {
    let quotas = informers.get::<ResourceQuota>();
    let pods = informers.get::<Pod>();
    let ctx = Context::new(informers, COMPONENT, clock, State { pods: pods.store() });
    let store = quotas.store();
    let (changes, pod_changes) = (quotas.changes(), pods.changes());
    async move {
        let _ = ctx.state.pods.wait_until_ready().await;
        let all = store.clone();
        let controller = Controller::for_shared_stream(changes, store)
            // A pod coming or going changes the usage of its namespace's quotas.
            .watches_shared_stream(pod_changes, move |pod: Arc<Pod>| {
                let ns = pod.namespace();
                all.state()
                    .iter()
                    .filter(|q| q.namespace() == ns)
                    .map(|q| ObjectRef::from_obj(q.as_ref()))
                    .collect::<Vec<_>>()
            });
        skiff_control_runtime::controller::run(controller, reconcile, ctx).await;
    }
}

/// Recounts one quota's usage: pods from the cache, other kinds listed from the API.
///
/// # Errors
/// When the API server refuses a request.
pub async fn reconcile(q: Arc<ResourceQuota>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let ns = q.namespace().unwrap_or_default();
    let hard = q
        .spec
        .as_ref()
        .and_then(|s| s.hard.clone())
        .unwrap_or_default();
    let with_kind = |mut v: Value, kind: &str| {
        v["kind"] = json!(kind);
        v
    };
    let mut counted: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for resource in hard.keys() {
        let Some((group, plural)) = quota::counted_kind(resource) else {
            continue;
        };
        let objects: Vec<Value> = if group.is_empty() && plural == "pods" {
            ctx.state
                .pods
                .state()
                .iter()
                .filter(|p| p.metadata.namespace.as_deref() == Some(ns.as_str()))
                .filter_map(|p| serde_json::to_value(p.as_ref()).ok())
                .map(|v| with_kind(v, "Pod"))
                .collect()
        } else {
            let Some(kind) = kinds::all()
                .into_iter()
                .find(|k| k.resource.group == group && k.resource.plural == plural)
            else {
                continue;
            };
            let api: Api<DynamicObject> =
                Api::namespaced_with(ctx.client.clone(), &ns, &kind.resource);
            let items = match api.list(&ListParams::default()).await {
                Ok(list) => list.items,
                Err(kube::Error::Api(s)) if s.code == 404 => Vec::new(),
                Err(err) => return Err(err.into()),
            };
            items
                .into_iter()
                .filter_map(|o| serde_json::to_value(o).ok())
                .map(|v| with_kind(v, &kind.resource.kind))
                .collect()
        };
        counted.insert(resource.clone(), objects);
    }
    if let Some(after) = plan(&q, &counted) {
        let api: Api<ResourceQuota> = Api::namespaced(ctx.client.clone(), &ns);
        status::write(&api, &q.name_any(), q.status.as_ref(), &after).await?;
    }
    Ok(Action::requeue(RECOUNT))
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::ResourceQuotaSpec;

    use super::*;
    use crate::fixtures::meta;

    fn quota(hard: &[(&str, &str)]) -> ResourceQuota {
        ResourceQuota {
            metadata: meta("small"),
            spec: Some(ResourceQuotaSpec {
                hard: Some(
                    hard.iter()
                        .map(|(k, v)| ((*k).to_owned(), Quantity((*v).to_owned())))
                        .collect(),
                ),
                ..ResourceQuotaSpec::default()
            }),
            status: None,
        }
    }

    fn running_pod(cpu: &str) -> Value {
        json!({
            "kind": "Pod",
            "spec": {"containers": [{"name": "c", "resources": {"requests": {"cpu": cpu}}}]},
            "status": {"phase": "Running"},
        })
    }

    #[test]
    fn usage_is_counted_per_limited_resource_and_written_once() {
        let mut q = quota(&[("pods", "2"), ("requests.cpu", "1")]);
        let pods = vec![running_pod("300m"), running_pod("300m")];
        let counted = BTreeMap::from([
            ("pods".to_owned(), pods.clone()),
            ("requests.cpu".to_owned(), pods),
        ]);
        let status = plan(&q, &counted).expect("a first status");
        let used = status.used.clone().unwrap();
        assert_eq!(used["pods"], Quantity("2".into()));
        assert_eq!(used["requests.cpu"], Quantity("600m".into()));
        assert_eq!(status.hard, q.spec.as_ref().unwrap().hard);
        q.status = Some(status);
        assert_eq!(plan(&q, &counted), None);
    }

    #[test]
    fn finished_pods_use_nothing_and_uncounted_resources_are_left_out() {
        let q = quota(&[("pods", "5"), ("example.com/widgets", "3")]);
        let mut done = running_pod("1");
        done["status"]["phase"] = json!("Succeeded");
        let counted = BTreeMap::from([("pods".to_owned(), vec![done])]);
        let used = plan(&q, &counted).unwrap().used.unwrap();
        assert_eq!(used.len(), 1);
        assert_eq!(used["pods"], Quantity("0".into()));
    }
}
