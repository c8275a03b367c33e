//! `VolumeBinding`: a pod goes only where the volumes of its claims can be: a bound claim's
//! volume must admit the node (node affinity); an unbound `WaitForFirstConsumer` claim
//! needs a free matching volume reachable from the node, or a class that provisions; an
//! unbound claim of any other class must be bound first; a missing claim keeps the pod off
//! every node. Once a node is picked, the unbound delayed claims are the ones the
//! scheduler marks with the node ([`claims_to_select`]).

use std::sync::Arc;

use k8s_openapi::api::{
    core::v1::{PersistentVolume, PersistentVolumeClaim},
    storage::v1::StorageClass,
};
use skiff_control_runtime::volumes::{
    admits_node, best_match, claim_class, claim_volume, pod_claims, provisions, waits_for_consumer,
};
use skiff_types::storage::SELECTED_NODE;

use crate::{
    cache::{Cache, NodeInfo},
    framework::{CycleState, FilterPlugin, Rejection, Stage, Unfit},
    pod_info::PodInfo,
    storage::Storage,
};

/// The `VolumeBinding` filter.
#[derive(Debug)]
pub struct VolumeBinding;

/// What the pod's claims need of a node.
#[derive(Clone, Debug, Default)]
struct Needs {
    /// Volumes of bound claims (their node affinity must admit the node).
    bound: Vec<Arc<PersistentVolume>>,
    /// Unbound delayed claims, with their class and the free volumes that might serve them.
    delayed: Vec<(Arc<PersistentVolumeClaim>, Option<Arc<StorageClass>>)>,
    /// Volumes that might serve a delayed claim.
    candidates: Vec<Arc<PersistentVolume>>,
}

/// The claim names of the pod's `persistentVolumeClaim` volumes.
fn claim_names(pod: &PodInfo) -> Vec<&str> {
    pod_claims(&pod.pod).collect()
}

fn needs(pod: &PodInfo, storage: &Storage) -> Result<Needs, String> {
    let mut needs = Needs::default();
    let mut unbound_immediate = false;
    let mut lost_volume = false;
    for name in claim_names(pod) {
        let Some(claim) = storage.claim(&pod.namespace, name) else {
            return Err(format!("persistentvolumeclaim \"{name}\" not found"));
        };
        if claim.metadata.deletion_timestamp.is_some() {
            return Err(format!("persistentvolumeclaim \"{name}\" is being deleted"));
        }
        let volume = claim_volume(claim);
        if !volume.is_empty() {
            match storage.volumes.get(volume) {
                Some(v) => needs.bound.push(v.clone()),
                None => lost_volume = true,
            }
            continue;
        }
        let class = storage.classes.get(claim_class(claim)).cloned();
        if waits_for_consumer(class.as_deref()) {
            needs.delayed.push((claim.clone(), class));
        } else {
            unbound_immediate = true;
        }
    }
    if unbound_immediate {
        return Err("pod has unbound immediate PersistentVolumeClaims".to_owned());
    }
    if lost_volume {
        return Err("pvc(s) bound to non-existent pv(s)".to_owned());
    }
    if !needs.delayed.is_empty() {
        needs.candidates = storage.volumes.values().cloned().collect();
    }
    Ok(needs)
}

impl FilterPlugin for VolumeBinding {
    fn name(&self) -> &'static str {
        "VolumeBinding"
    }

    fn pre_filter(&self, pod: &PodInfo, cache: &Cache, state: &mut CycleState) -> Stage {
        if claim_names(pod).is_empty() {
            return Stage::Skip;
        }
        match needs(pod, &cache.storage) {
            Ok(n) => {
                state.write(n);
                Stage::Run
            }
            Err(reason) => {
                state.write(Rejection(reason));
                Stage::Skip
            }
        }
    }

    fn filter(&self, _pod: &PodInfo, node: &NodeInfo, state: &CycleState) -> Result<(), Unfit> {
        let Some(needs) = state.read::<Needs>() else {
            return Ok(());
        };
        if needs.bound.iter().any(|v| !admits_node(v, &node.node)) {
            return Err(Unfit::unresolvable(
                "node(s) had volume node affinity conflict",
            ));
        }
        for (claim, class) in &needs.delayed {
            let found = best_match(
                claim,
                needs.candidates.iter().map(AsRef::as_ref),
                Some(&node.node),
                true,
            )
            .is_some();
            if !found && !provisions(class.as_deref()) {
                return Err(Unfit::unresolvable(
                    "node(s) didn't find available persistent volumes to bind",
                ));
            }
        }
        Ok(())
    }
}

/// The pod's unbound `WaitForFirstConsumer` claims not yet marked with `node`: the ones to
/// mark with the chosen node before the pod is bound (the binder then binds or provisions
/// them there).
#[must_use]
pub fn claims_to_select(pod: &PodInfo, storage: &Storage, node: &str) -> Vec<String> {
    claim_names(pod)
        .into_iter()
        .filter(|name| {
            storage.claim(&pod.namespace, name).is_some_and(|c| {
                claim_volume(c).is_empty()
                    && c.metadata
                        .annotations
                        .as_ref()
                        .and_then(|a| a.get(SELECTED_NODE))
                        .is_none_or(|n| n != node)
                    && waits_for_consumer(storage.classes.get(claim_class(c)).map(AsRef::as_ref))
            })
        })
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{PersistentVolumeClaimVolumeSource, Volume};
    use kube::runtime::watcher::Event;
    use serde_json::json;

    use super::*;
    use crate::{
        framework::{Cursor, Framework},
        plugins::testing::{cache, info, node, pod},
    };

    fn with_claim(name: &str) -> PodInfo {
        let mut p = pod("p", "100m", &[]);
        p.spec.as_mut().unwrap().volumes = Some(vec![Volume {
            name: "data".into(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: name.into(),
                read_only: None,
            }),
            ..Volume::default()
        }]);
        info(p)
    }

    fn claim(class: &str, volume: Option<&str>) -> Arc<PersistentVolumeClaim> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": "data", "namespace": "default"},
                "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": class,
                         "volumeName": volume, "resources": {"requests": {"storage": "1Gi"}}},
            }))
            .unwrap(),
        )
    }

    fn class(name: &str, mode: &str, provisioner: &str) -> Arc<StorageClass> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name}, "provisioner": provisioner, "volumeBindingMode": mode,
            }))
            .unwrap(),
        )
    }

    fn local_volume(name: &str, class: &str, on: &str) -> Arc<PersistentVolume> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name},
                "spec": {"accessModes": ["ReadWriteOnce"], "capacity": {"storage": "1Gi"},
                         "storageClassName": class, "local": {"path": "/data"},
                         "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                             {"key": "kubernetes.io/hostname", "operator": "In", "values": [on]}]}]}}},
            }))
            .unwrap(),
        )
    }

    fn cluster() -> Cache {
        cache(vec![
            node("a", "4", "8Gi", &[("kubernetes.io/hostname", "a")]),
            node("b", "4", "8Gi", &[("kubernetes.io/hostname", "b")]),
        ])
    }

    fn framework() -> Framework {
        Framework::new(vec![Arc::new(VolumeBinding)], vec![])
    }

    #[test]
    fn a_pod_whose_claim_does_not_exist_fits_nowhere_with_kube_schedulers_words() {
        let err = framework()
            .schedule(&with_claim("data"), &cluster(), &mut Cursor::default(), 100)
            .unwrap_err();
        assert_eq!(
            err.message(),
            "0/2 nodes are available: persistentvolumeclaim \"data\" not found."
        );
    }

    #[test]
    fn a_bound_local_volume_pins_the_pod_to_its_node() {
        let mut c = cluster();
        c.storage
            .claims
            .apply(Event::Apply(claim("", Some("pv-b"))));
        c.storage
            .volumes
            .apply(Event::Apply(local_volume("pv-b", "", "b")));
        for _ in 0..4 {
            let got = framework()
                .schedule(&with_claim("data"), &c, &mut Cursor::default(), 100)
                .unwrap();
            assert_eq!(got, "b");
        }
    }

    #[test]
    fn an_unbound_immediate_claim_keeps_the_pod_waiting() {
        let mut c = cluster();
        c.storage.claims.apply(Event::Apply(claim("", None)));
        let err = framework()
            .schedule(&with_claim("data"), &c, &mut Cursor::default(), 100)
            .unwrap_err();
        assert!(
            err.message()
                .contains("pod has unbound immediate PersistentVolumeClaims")
        );
    }

    #[test]
    fn a_delayed_claim_goes_where_a_volume_can_be_found_or_made_and_is_marked() {
        let mut c = cluster();
        c.storage.claims.apply(Event::Apply(claim("manual", None)));
        c.storage.classes.apply(Event::Apply(class(
            "manual",
            "WaitForFirstConsumer",
            "kubernetes.io/no-provisioner",
        )));
        c.storage
            .volumes
            .apply(Event::Apply(local_volume("pv-a", "manual", "a")));
        let pod = with_claim("data");
        let got = framework()
            .schedule(&pod, &c, &mut Cursor::default(), 100)
            .unwrap();
        assert_eq!(got, "a", "only node a has a volume for it");
        assert_eq!(
            claims_to_select(&pod, &c.storage, "a"),
            vec!["data".to_owned()]
        );

        // A provisioning class serves every node.
        let mut c = cluster();
        c.storage
            .claims
            .apply(Event::Apply(claim("local-path", None)));
        c.storage.classes.apply(Event::Apply(class(
            "local-path",
            "WaitForFirstConsumer",
            "rancher.io/local-path",
        )));
        let state = framework().pre_filter(&pod, &c);
        for n in c.nodes() {
            assert!(VolumeBinding.filter(&pod, n, &state).is_ok());
        }
    }
}
