//! What the binder does for one claim or one volume, decided from the caches alone: which
//! volume a claim binds to, the writes that bind both sides in Kubernetes' order (volume
//! `claimRef`, volume phase, claim `volumeName`, claim phase), provisioning requests, and
//! the phase of a volume whose claim is gone.

use std::{collections::BTreeMap, sync::Arc};

use k8s_openapi::api::{
    core::v1::{
        Node, ObjectReference, PersistentVolume, PersistentVolumeClaim,
        PersistentVolumeClaimStatus, PersistentVolumeStatus,
    },
    storage::v1::StorageClass,
};
use kube::ResourceExt;
use skiff_control_runtime::volumes::{
    best_match, claim_class, claim_volume, provisions, refers_to, waits_for_consumer,
};
use skiff_types::storage::{
    BETA_STORAGE_PROVISIONER, BIND_COMPLETED, BOUND_BY_CONTROLLER, LOCAL_PATH_PROVISIONER,
    PROVISIONED_BY, SELECTED_NODE, STORAGE_PROVISIONER,
};

/// What a claim's plan is made from.
#[derive(Debug)]
pub struct ClaimObserved<'a> {
    /// The claim.
    pub claim: &'a PersistentVolumeClaim,
    /// Every volume.
    pub volumes: &'a [Arc<PersistentVolume>],
    /// Every `StorageClass`.
    pub classes: &'a [Arc<StorageClass>],
    /// Every node (for the node a delayed claim's first pod was scheduled to).
    pub nodes: &'a [Arc<Node>],
}

/// An Event about the object the plan is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// `Warning` rather than `Normal`.
    pub warning: bool,
    /// The reason, as Kubernetes' binder words it.
    pub reason: &'static str,
    /// The message.
    pub message: String,
}

impl Note {
    fn normal(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            warning: false,
            reason,
            message: message.into(),
        }
    }

    fn warning(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            warning: true,
            reason,
            message: message.into(),
        }
    }
}

/// One write, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Replace the volume (its `claimRef` and annotations changed).
    UpdateVolume(Box<PersistentVolume>),
    /// Write a volume's status.
    VolumeStatus {
        /// The volume.
        name: String,
        /// Its status before.
        before: Option<PersistentVolumeStatus>,
        /// The status to write.
        after: PersistentVolumeStatus,
    },
    /// Replace the claim (its `volumeName` and annotations changed).
    UpdateClaim(Box<PersistentVolumeClaim>),
    /// Write the claim's status.
    ClaimStatus(PersistentVolumeClaimStatus),
}

/// The writes and the Event of one pass.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Plan {
    /// In order; a failed write stops the rest.
    pub steps: Vec<Step>,
    /// An Event about the object, once the writes are done.
    pub note: Option<Note>,
}

fn phase_status(
    phase: &str,
    reason: Option<&str>,
    message: Option<String>,
) -> PersistentVolumeStatus {
    PersistentVolumeStatus {
        phase: Some(phase.to_owned()),
        reason: reason.map(str::to_owned),
        message,
        ..PersistentVolumeStatus::default()
    }
}

/// The status step that moves `volume` to `phase`, when it is elsewhere.
fn volume_phase(volume: &PersistentVolume, after: PersistentVolumeStatus) -> Option<Step> {
    let before = volume.status.clone();
    let same = before.as_ref().is_some_and(|b| {
        b.phase == after.phase && b.reason == after.reason && b.message == after.message
    });
    (!same).then(|| Step::VolumeStatus {
        name: volume.name_any(),
        before,
        after: PersistentVolumeStatus {
            last_phase_transition_time: None,
            ..after
        },
    })
}

fn claim_ref(claim: &PersistentVolumeClaim) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".to_owned()),
        kind: Some("PersistentVolumeClaim".to_owned()),
        name: claim.metadata.name.clone(),
        namespace: claim.metadata.namespace.clone(),
        uid: claim.metadata.uid.clone(),
        resource_version: claim.metadata.resource_version.clone(),
        ..ObjectReference::default()
    }
}

fn annotate(meta: &mut k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta, key: &str) {
    meta.annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(key.to_owned(), "yes".to_owned());
}

fn has_annotation(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    key: &str,
) -> bool {
    meta.annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(key))
}

/// The writes that bind `claim` and `volume` to each other, skipping those already done:
/// the volume's `claimRef` (with the claim's uid), the volume `Bound`, the claim's
/// `volumeName` with `bind-completed`, the claim `Bound` with the volume's capacity and
/// access modes.
#[must_use]
pub fn bind(volume: &PersistentVolume, claim: &PersistentVolumeClaim) -> Vec<Step> {
    let mut steps = Vec::new();
    let current = volume.spec.as_ref().and_then(|s| s.claim_ref.as_ref());
    let uid_set = current.is_some_and(|r| r.uid.is_some() && r.uid == claim.metadata.uid);
    if !uid_set {
        let mut updated = volume.clone();
        if current.is_none() {
            annotate(&mut updated.metadata, BOUND_BY_CONTROLLER);
        }
        updated.spec.get_or_insert_with(Default::default).claim_ref = Some(claim_ref(claim));
        updated.status = None;
        steps.push(Step::UpdateVolume(Box::new(updated)));
    }
    steps.extend(volume_phase(volume, phase_status("Bound", None, None)));
    let name = volume.name_any();
    let bound_here = claim_volume(claim) == name;
    if !bound_here || !has_annotation(&claim.metadata, BIND_COMPLETED) {
        let mut updated = claim.clone();
        if !bound_here {
            annotate(&mut updated.metadata, BOUND_BY_CONTROLLER);
        }
        annotate(&mut updated.metadata, BIND_COMPLETED);
        updated
            .spec
            .get_or_insert_with(Default::default)
            .volume_name = Some(name);
        updated.status = None;
        steps.push(Step::UpdateClaim(Box::new(updated)));
    }
    let spec = volume.spec.clone().unwrap_or_default();
    let after = PersistentVolumeClaimStatus {
        phase: Some("Bound".to_owned()),
        access_modes: spec.access_modes,
        capacity: spec.capacity,
        ..claim.status.clone().unwrap_or_default()
    };
    if claim.status.as_ref() != Some(&after) {
        steps.push(Step::ClaimStatus(after));
    }
    steps
}

fn claim_phase(claim: &PersistentVolumeClaim, phase: &str) -> Option<Step> {
    let current = claim.status.as_ref().and_then(|s| s.phase.as_deref());
    (current != Some(phase)).then(|| {
        Step::ClaimStatus(PersistentVolumeClaimStatus {
            phase: Some(phase.to_owned()),
            ..claim.status.clone().unwrap_or_default()
        })
    })
}

/// One pass of the binder over a claim.
#[must_use]
pub fn plan_claim(o: &ClaimObserved<'_>) -> Plan {
    let claim = o.claim;
    if claim.metadata.deletion_timestamp.is_some() {
        return Plan::default();
    }
    let class_name = claim_class(claim);
    let class = o
        .classes
        .iter()
        .find(|c| c.name_any() == class_name)
        .map(AsRef::as_ref);
    let wanted = claim_volume(claim);
    if !wanted.is_empty() {
        return plan_prebound(claim, wanted, o.volumes);
    }
    let delay = waits_for_consumer(class);
    let selected = claim.annotations().get(SELECTED_NODE);
    let chosen = selected.and_then(|n| o.nodes.iter().find(|x| &x.name_any() == n));
    if let Some(volume) = best_match(
        claim,
        o.volumes.iter().map(AsRef::as_ref),
        chosen.map(AsRef::as_ref),
        delay,
    ) {
        return Plan {
            steps: bind(volume, claim),
            note: None,
        };
    }
    let mut steps: Vec<Step> = claim_phase(claim, "Pending").into_iter().collect();
    let note = if delay && selected.is_none() {
        Note::normal(
            "WaitForFirstConsumer",
            "waiting for first consumer to be created before binding",
        )
    } else if provisions(class) {
        let provisioner = class.map(|c| c.provisioner.clone()).unwrap_or_default();
        if claim.annotations().get(STORAGE_PROVISIONER) != Some(&provisioner) {
            let mut updated = claim.clone();
            let annotations = updated
                .metadata
                .annotations
                .get_or_insert_with(BTreeMap::new);
            annotations.insert(STORAGE_PROVISIONER.to_owned(), provisioner.clone());
            annotations.insert(BETA_STORAGE_PROVISIONER.to_owned(), provisioner.clone());
            updated.status = None;
            steps.insert(0, Step::UpdateClaim(Box::new(updated)));
        }
        Note::normal(
            "ExternalProvisioning",
            format!(
                "Waiting for a volume to be created either by the external provisioner '{provisioner}' or manually by the system administrator. If volume creation is delayed, please verify that the provisioner is running and correctly registered."
            ),
        )
    } else if !class_name.is_empty() && class.is_none() {
        Note::warning(
            "ProvisioningFailed",
            format!("storageclass.storage.k8s.io \"{class_name}\" not found"),
        )
    } else {
        Note::normal(
            "FailedBinding",
            "no persistent volumes available for this claim and no storage class is set",
        )
    };
    Plan {
        steps,
        note: Some(note),
    }
}

/// A claim that names its volume (the user pre-bound it, or a bind is half done).
fn plan_prebound(
    claim: &PersistentVolumeClaim,
    wanted: &str,
    volumes: &[Arc<PersistentVolume>],
) -> Plan {
    let completed = has_annotation(&claim.metadata, BIND_COMPLETED);
    let lost = |message: &str| Plan {
        steps: claim_phase(claim, "Lost").into_iter().collect(),
        note: Some(Note::warning("ClaimLost", message)),
    };
    let Some(volume) = volumes.iter().find(|v| v.name_any() == wanted) else {
        if completed {
            return lost("Bound claim has lost its PersistentVolume. Data on the volume is lost!");
        }
        return Plan {
            steps: claim_phase(claim, "Pending").into_iter().collect(),
            note: Some(Note::normal(
                "FailedBinding",
                format!("volume \"{wanted}\" not found"),
            )),
        };
    };
    let free = volume
        .spec
        .as_ref()
        .and_then(|s| s.claim_ref.as_ref())
        .is_none();
    if free || refers_to(volume, claim) {
        return Plan {
            steps: bind(volume, claim),
            note: None,
        };
    }
    if completed {
        return lost("Two claims are bound to the same volume, this one is bound incorrectly");
    }
    Plan {
        steps: claim_phase(claim, "Pending").into_iter().collect(),
        note: Some(Note::warning(
            "FailedBinding",
            format!("volume \"{wanted}\" already bound to a different claim."),
        )),
    }
}

/// One pass of the binder over a volume, given every claim: `Available` when free (a
/// volume bound by the binder to a claim that went to another volume is freed), `Bound`
/// when its claim names it, `Released` once its claim is gone; a released volume whose
/// policy is `Delete` and that no provisioner here deletes is `Failed`.
#[must_use]
pub fn plan_volume(volume: &PersistentVolume, claims: &[Arc<PersistentVolumeClaim>]) -> Plan {
    if volume.metadata.deletion_timestamp.is_some() {
        return Plan::default();
    }
    let name = volume.name_any();
    let spec = volume.spec.clone().unwrap_or_default();
    let Some(r) = spec.claim_ref.as_ref() else {
        return Plan {
            steps: volume_phase(volume, phase_status("Available", None, None))
                .into_iter()
                .collect(),
            note: None,
        };
    };
    let uid = r.uid.clone().unwrap_or_default();
    let claim = claims.iter().find(|c| {
        c.metadata.name == r.name
            && c.metadata.namespace == r.namespace
            && (uid.is_empty() || c.metadata.uid.as_deref() == Some(uid.as_str()))
    });
    match claim {
        // Pre-bound to a claim that does not exist yet, or whose bind is under way.
        None if uid.is_empty() => Plan {
            steps: volume_phase(volume, phase_status("Available", None, None))
                .into_iter()
                .collect(),
            note: None,
        },
        Some(c) if claim_volume(c) == name => Plan {
            steps: volume_phase(volume, phase_status("Bound", None, None))
                .into_iter()
                .collect(),
            note: None,
        },
        Some(c) if claim_volume(c).is_empty() => Plan::default(),
        Some(_) => {
            if has_annotation(&volume.metadata, BOUND_BY_CONTROLLER) {
                let mut updated = volume.clone();
                if let Some(s) = updated.spec.as_mut() {
                    s.claim_ref = None;
                }
                if let Some(a) = updated.metadata.annotations.as_mut() {
                    a.remove(BOUND_BY_CONTROLLER);
                }
                updated.status = None;
                let mut steps = vec![Step::UpdateVolume(Box::new(updated))];
                steps.extend(volume_phase(volume, phase_status("Available", None, None)));
                Plan { steps, note: None }
            } else {
                Plan::default()
            }
        }
        None => released(
            volume,
            &name,
            spec.persistent_volume_reclaim_policy.as_deref(),
        ),
    }
}

fn released(volume: &PersistentVolume, name: &str, policy: Option<&str>) -> Plan {
    let provisioned_here = volume.annotations().get(PROVISIONED_BY).map(String::as_str)
        == Some(LOCAL_PATH_PROVISIONER);
    match policy {
        Some("Delete") if !provisioned_here => {
            let message = format!(
                "error getting deleter volume plugin for volume \"{name}\": no deletable volume plugin matched"
            );
            Plan {
                steps: volume_phase(
                    volume,
                    phase_status("Failed", Some("VolumeFailedDelete"), Some(message.clone())),
                )
                .into_iter()
                .collect(),
                note: Some(Note::warning("VolumeFailedDelete", message)),
            }
        }
        Some("Recycle") => {
            let message = format!("no volume plugin matched name: recycle for volume \"{name}\"");
            Plan {
                steps: volume_phase(
                    volume,
                    phase_status("Failed", Some("VolumeFailedRecycle"), Some(message.clone())),
                )
                .into_iter()
                .collect(),
                note: Some(Note::warning("VolumeFailedRecycle", message)),
            }
        }
        _ => Plan {
            steps: volume_phase(volume, phase_status("Released", None, None))
                .into_iter()
                .collect(),
            note: None,
        },
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::{
        api::core::v1::{
            PersistentVolumeClaimSpec, PersistentVolumeSpec, VolumeResourceRequirements,
        },
        apimachinery::pkg::{api::resource::Quantity, apis::meta::v1::ObjectMeta},
    };

    use super::*;

    fn claim(class: Option<&str>) -> PersistentVolumeClaim {
        PersistentVolumeClaim {
            metadata: ObjectMeta {
                name: Some("data".into()),
                namespace: Some("default".into()),
                uid: Some("uid-data".into()),
                resource_version: Some("7".into()),
                ..ObjectMeta::default()
            },
            spec: Some(PersistentVolumeClaimSpec {
                access_modes: Some(vec!["ReadWriteOnce".into()]),
                storage_class_name: class.map(str::to_owned),
                resources: Some(VolumeResourceRequirements {
                    requests: Some(BTreeMap::from([("storage".into(), Quantity("1Gi".into()))])),
                    ..VolumeResourceRequirements::default()
                }),
                ..PersistentVolumeClaimSpec::default()
            }),
            status: Some(PersistentVolumeClaimStatus {
                phase: Some("Pending".into()),
                ..PersistentVolumeClaimStatus::default()
            }),
        }
    }

    fn volume(name: &str, class: &str) -> PersistentVolume {
        PersistentVolume {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..ObjectMeta::default()
            },
            spec: Some(PersistentVolumeSpec {
                access_modes: Some(vec!["ReadWriteOnce".into()]),
                capacity: Some(BTreeMap::from([("storage".into(), Quantity("2Gi".into()))])),
                storage_class_name: Some(class.into()),
                persistent_volume_reclaim_policy: Some("Retain".into()),
                ..PersistentVolumeSpec::default()
            }),
            status: Some(PersistentVolumeStatus {
                phase: Some("Available".into()),
                ..PersistentVolumeStatus::default()
            }),
        }
    }

    fn class(name: &str, mode: &str) -> StorageClass {
        StorageClass {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..ObjectMeta::default()
            },
            provisioner: LOCAL_PATH_PROVISIONER.into(),
            volume_binding_mode: Some(mode.into()),
            ..StorageClass::default()
        }
    }

    fn run(
        c: &PersistentVolumeClaim,
        volumes: &[PersistentVolume],
        classes: &[StorageClass],
    ) -> Plan {
        let volumes: Vec<_> = volumes.iter().cloned().map(Arc::new).collect();
        let classes: Vec<_> = classes.iter().cloned().map(Arc::new).collect();
        plan_claim(&ClaimObserved {
            claim: c,
            volumes: &volumes,
            classes: &classes,
            nodes: &[],
        })
    }

    #[test]
    fn a_claim_binds_to_a_precreated_volume_both_sides_as_kubernetes_writes_them() {
        let plan = run(&claim(Some("")), &[volume("pv1", "")], &[]);
        let [
            Step::UpdateVolume(pv),
            Step::VolumeStatus { after, .. },
            Step::UpdateClaim(pvc),
            Step::ClaimStatus(status),
        ] = plan.steps.as_slice()
        else {
            panic!("unexpected steps {:?}", plan.steps);
        };
        let r = pv.spec.as_ref().unwrap().claim_ref.as_ref().unwrap();
        assert_eq!(
            (r.name.as_deref(), r.uid.as_deref(), r.kind.as_deref()),
            (
                Some("data"),
                Some("uid-data"),
                Some("PersistentVolumeClaim")
            )
        );
        assert_eq!(pv.annotations()[BOUND_BY_CONTROLLER], "yes");
        assert_eq!(after.phase.as_deref(), Some("Bound"));
        assert_eq!(
            pvc.spec.as_ref().unwrap().volume_name.as_deref(),
            Some("pv1")
        );
        assert_eq!(pvc.annotations()[BIND_COMPLETED], "yes");
        assert_eq!(status.phase.as_deref(), Some("Bound"));
        assert_eq!(status.capacity.as_ref().unwrap()["storage"].0, "2Gi");
        assert!(plan.note.is_none());
    }

    #[test]
    fn a_bound_pair_needs_nothing_more() {
        let c = claim(Some(""));
        let pv = volume("pv1", "");
        let mut plan = run(&c, std::slice::from_ref(&pv), &[]);
        let mut pv = pv;
        let mut c = c;
        for step in plan.steps.drain(..) {
            match step {
                Step::UpdateVolume(v) => pv.spec = v.spec,
                Step::VolumeStatus { after, .. } => pv.status = Some(after),
                Step::UpdateClaim(u) => {
                    c.spec = u.spec;
                    c.metadata.annotations = u.metadata.annotations;
                }
                Step::ClaimStatus(s) => c.status = Some(s),
            }
        }
        assert_eq!(run(&c, &[pv.clone()], &[]), Plan::default());
        assert_eq!(plan_volume(&pv, &[Arc::new(c)]), Plan::default());
    }

    #[test]
    fn a_wait_for_first_consumer_claim_waits_then_asks_its_provisioner() {
        let classes = [class("local-path", "WaitForFirstConsumer")];
        let mut c = claim(Some("local-path"));
        let plan = run(&c, &[], &classes);
        assert!(plan.steps.is_empty());
        assert_eq!(plan.note.unwrap().reason, "WaitForFirstConsumer");

        c.metadata.annotations = Some(BTreeMap::from([(SELECTED_NODE.into(), "n1".into())]));
        let plan = run(&c, &[], &classes);
        let [Step::UpdateClaim(asked)] = plan.steps.as_slice() else {
            panic!("unexpected steps {:?}", plan.steps);
        };
        assert_eq!(
            asked.annotations()[STORAGE_PROVISIONER],
            LOCAL_PATH_PROVISIONER
        );
        assert_eq!(plan.note.unwrap().reason, "ExternalProvisioning");
    }

    #[test]
    fn a_claim_of_an_unknown_class_or_none_says_why_it_waits() {
        let plan = run(&claim(Some("fast")), &[], &[]);
        assert_eq!(plan.note.unwrap().reason, "ProvisioningFailed");
        let plan = run(&claim(Some("")), &[], &[]);
        assert_eq!(plan.note.unwrap().reason, "FailedBinding");
    }

    #[test]
    fn a_volume_whose_claim_is_gone_is_released_or_failed_by_policy() {
        let mut pv = volume("pv1", "");
        pv.spec.as_mut().unwrap().claim_ref = Some(claim_ref(&claim(None)));
        pv.status.as_mut().unwrap().phase = Some("Bound".into());
        let plan = plan_volume(&pv, &[]);
        let [Step::VolumeStatus { after, .. }] = plan.steps.as_slice() else {
            panic!("unexpected steps {:?}", plan.steps);
        };
        assert_eq!(after.phase.as_deref(), Some("Released"));

        pv.spec.as_mut().unwrap().persistent_volume_reclaim_policy = Some("Delete".into());
        let plan = plan_volume(&pv, &[]);
        assert_eq!(plan.note.unwrap().reason, "VolumeFailedDelete");

        // The local-path provisioner deletes what it made: the binder only releases it.
        pv.metadata.annotations = Some(BTreeMap::from([(
            PROVISIONED_BY.into(),
            LOCAL_PATH_PROVISIONER.into(),
        )]));
        let plan = plan_volume(&pv, &[]);
        assert!(plan.note.is_none());

        // A claim of the same name but another uid is not the claim it was bound to.
        let mut other = claim(None);
        other.metadata.uid = Some("uid-new".into());
        let plan = plan_volume(&pv, &[Arc::new(other)]);
        assert!(
            matches!(plan.steps.as_slice(), [Step::VolumeStatus { after, .. }] if after.phase.as_deref() == Some("Released"))
        );
    }

    #[test]
    fn a_free_volume_is_available_and_a_lost_volume_makes_its_claim_lost() {
        let mut pv = volume("pv1", "");
        pv.status = None;
        let plan = plan_volume(&pv, &[]);
        assert!(
            matches!(plan.steps.as_slice(), [Step::VolumeStatus { after, .. }] if after.phase.as_deref() == Some("Available"))
        );

        let mut c = claim(Some(""));
        c.spec.as_mut().unwrap().volume_name = Some("gone".into());
        c.metadata.annotations = Some(BTreeMap::from([(BIND_COMPLETED.into(), "yes".into())]));
        let plan = run(&c, &[], &[]);
        assert!(
            matches!(plan.steps.as_slice(), [Step::ClaimStatus(s)] if s.phase.as_deref() == Some("Lost"))
        );
    }
}
