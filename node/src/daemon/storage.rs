//! The built-in local-path provisioner (k3s' `rancher.io/local-path`): a claim whose first
//! pod was scheduled to this node gets a directory under the node's storage directory and a
//! `PersistentVolume` pinned to the node and pre-bound to the claim; a released volume of
//! this node whose reclaim policy is `Delete` loses its directory, then the volume object.

use std::{
    collections::BTreeMap,
    io,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use futures::{StreamExt as _, stream};
use k8s_openapi::{
    api::{
        core::v1::{
            Event, EventSource, HostPathVolumeSource, NodeSelector, NodeSelectorRequirement,
            NodeSelectorTerm, ObjectReference, PersistentVolume, PersistentVolumeClaim,
            PersistentVolumeSpec, VolumeNodeAffinity,
        },
        storage::v1::StorageClass,
    },
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time},
    jiff::Timestamp,
};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, PostParams},
    runtime::{WatchStreamExt as _, reflector, watcher},
};
use skiff_types::storage::{
    HOSTNAME_LABEL, LOCAL_PATH_PROVISIONER, PROVISIONED_BY, SELECTED_NODE, STORAGE_PROVISIONER,
};

/// On a volume this provisioner made: the node whose directory it is.
pub const VOLUME_NODE: &str = "local.path.provisioner/selected-node";

/// A full pass even without events, so a failed step is tried again.
const RESYNC: Duration = Duration::from_secs(10);

/// One thing the provisioner does.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Make the directory, then the volume for the claim.
    Provision {
        /// The claim's `namespace/name`, for logs and the Event.
        claim: Arc<PersistentVolumeClaim>,
        /// The directory.
        dir: PathBuf,
        /// The volume to create.
        volume: Box<PersistentVolume>,
    },
    /// Remove the directory, then the volume.
    Delete {
        /// The volume's name.
        volume: String,
        /// Its directory.
        dir: PathBuf,
    },
}

/// What the provisioner sees.
#[derive(Debug)]
pub struct Observed<'a> {
    /// This node's name.
    pub node: &'a str,
    /// The directory volumes are made in.
    pub root: &'a Path,
    /// Every claim.
    pub claims: &'a [Arc<PersistentVolumeClaim>],
    /// Every volume.
    pub volumes: &'a [Arc<PersistentVolume>],
    /// Every `StorageClass`.
    pub classes: &'a [Arc<StorageClass>],
}

/// The volume name for a claim, as Kubernetes' external provisioners name them.
fn volume_name(claim: &PersistentVolumeClaim) -> String {
    format!("pvc-{}", claim.uid().unwrap_or_default())
}

/// `<root>/pvc-<uid>_<namespace>_<name>`, local-path's directory name.
fn directory(root: &Path, claim: &PersistentVolumeClaim) -> PathBuf {
    root.join(format!(
        "{}_{}_{}",
        volume_name(claim),
        claim.namespace().unwrap_or_default(),
        claim.name_any()
    ))
}

fn annotation<'a>(meta: &'a ObjectMeta, key: &str) -> Option<&'a str> {
    meta.annotations
        .as_ref()
        .and_then(|a| a.get(key))
        .map(String::as_str)
}

/// The volume for `claim`, in `dir`, on `node`.
fn volume_for(
    claim: &PersistentVolumeClaim,
    class: Option<&StorageClass>,
    node: &str,
    dir: &Path,
) -> PersistentVolume {
    let spec = claim.spec.clone().unwrap_or_default();
    let capacity = spec
        .resources
        .as_ref()
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage"))
        .cloned()
        .map(|q| BTreeMap::from([("storage".to_owned(), q)]));
    PersistentVolume {
        metadata: ObjectMeta {
            name: Some(volume_name(claim)),
            annotations: Some(BTreeMap::from([
                (PROVISIONED_BY.to_owned(), LOCAL_PATH_PROVISIONER.to_owned()),
                (VOLUME_NODE.to_owned(), node.to_owned()),
            ])),
            ..ObjectMeta::default()
        },
        spec: Some(PersistentVolumeSpec {
            access_modes: spec.access_modes,
            capacity,
            claim_ref: Some(ObjectReference {
                api_version: Some("v1".to_owned()),
                kind: Some("PersistentVolumeClaim".to_owned()),
                name: claim.metadata.name.clone(),
                namespace: claim.metadata.namespace.clone(),
                uid: claim.metadata.uid.clone(),
                resource_version: claim.metadata.resource_version.clone(),
                ..ObjectReference::default()
            }),
            host_path: Some(HostPathVolumeSource {
                path: dir.to_string_lossy().into_owned(),
                type_: Some("DirectoryOrCreate".to_owned()),
            }),
            node_affinity: Some(VolumeNodeAffinity {
                required: Some(NodeSelector {
                    node_selector_terms: vec![NodeSelectorTerm {
                        match_expressions: Some(vec![NodeSelectorRequirement {
                            key: HOSTNAME_LABEL.to_owned(),
                            operator: "In".to_owned(),
                            values: Some(vec![node.to_owned()]),
                        }]),
                        match_fields: None,
                    }],
                }),
            }),
            persistent_volume_reclaim_policy: Some(
                class
                    .and_then(|c| c.reclaim_policy.clone())
                    .unwrap_or_else(|| "Delete".to_owned()),
            ),
            storage_class_name: spec.storage_class_name,
            volume_mode: Some("Filesystem".to_owned()),
            ..PersistentVolumeSpec::default()
        }),
        status: None,
    }
}

/// The directories to make and volumes to create for claims waiting on this node, and the
/// released volumes of this node to delete.
#[must_use]
pub fn plan(o: &Observed<'_>) -> Vec<Step> {
    let mut steps = Vec::new();
    for claim in o.claims {
        let meta = &claim.metadata;
        let unbound = claim
            .spec
            .as_ref()
            .and_then(|s| s.volume_name.as_deref())
            .is_none_or(str::is_empty);
        if !unbound
            || meta.deletion_timestamp.is_some()
            || annotation(meta, STORAGE_PROVISIONER) != Some(LOCAL_PATH_PROVISIONER)
            || annotation(meta, SELECTED_NODE) != Some(o.node)
        {
            continue;
        }
        let name = volume_name(claim);
        if o.volumes.iter().any(|v| v.name_any() == name) {
            continue;
        }
        let class_name = claim
            .spec
            .as_ref()
            .and_then(|s| s.storage_class_name.as_deref())
            .unwrap_or_default();
        let class = o.classes.iter().find(|c| c.name_any() == class_name);
        let dir = directory(o.root, claim);
        steps.push(Step::Provision {
            volume: Box::new(volume_for(claim, class.map(AsRef::as_ref), o.node, &dir)),
            claim: claim.clone(),
            dir,
        });
    }
    for volume in o.volumes {
        let meta = &volume.metadata;
        let spec = volume.spec.as_ref();
        let released = volume.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Released");
        let delete =
            spec.and_then(|s| s.persistent_volume_reclaim_policy.as_deref()) == Some("Delete");
        if !released
            || !delete
            || meta.deletion_timestamp.is_some()
            || annotation(meta, PROVISIONED_BY) != Some(LOCAL_PATH_PROVISIONER)
            || annotation(meta, VOLUME_NODE) != Some(o.node)
        {
            continue;
        }
        let Some(path) = spec
            .and_then(|s| s.host_path.as_ref())
            .map(|h| PathBuf::from(&h.path))
        else {
            continue;
        };
        // Only ever a directory of our own root, one level down.
        if path.parent() != Some(o.root) {
            tracing::warn!(volume = %volume.name_any(), path = %path.display(), "not deleting a volume outside the storage directory");
            continue;
        }
        steps.push(Step::Delete {
            volume: volume.name_any(),
            dir: path,
        });
    }
    steps
}

fn make_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o777)
        .create(dir)
}

fn remove_dir(dir: &Path) -> io::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// The `ProvisioningSucceeded` Event on the claim.
fn provisioned_event(claim: &PersistentVolumeClaim, volume: &str, node: &str) -> Event {
    let now = Time(Timestamp::now());
    Event {
        metadata: ObjectMeta {
            generate_name: Some(format!("{}.", claim.name_any())),
            namespace: claim.namespace(),
            ..ObjectMeta::default()
        },
        involved_object: ObjectReference {
            api_version: Some("v1".to_owned()),
            kind: Some("PersistentVolumeClaim".to_owned()),
            name: claim.metadata.name.clone(),
            namespace: claim.namespace(),
            uid: claim.metadata.uid.clone(),
            ..ObjectReference::default()
        },
        reason: Some("ProvisioningSucceeded".to_owned()),
        message: Some(format!("Successfully provisioned volume {volume}")),
        type_: Some("Normal".to_owned()),
        count: Some(1),
        first_timestamp: Some(now.clone()),
        last_timestamp: Some(now),
        source: Some(EventSource {
            component: Some(format!("{LOCAL_PATH_PROVISIONER}_{node}")),
            host: None,
        }),
        ..Event::default()
    }
}

async fn carry_out(client: &Client, node: &str, step: Step) {
    let volumes: Api<PersistentVolume> = Api::all(client.clone());
    match step {
        Step::Provision { claim, dir, volume } => {
            let name = volume.name_any();
            if let Err(err) = make_dir(&dir) {
                tracing::warn!(volume = %name, dir = %dir.display(), %err, "volume directory not made");
                return;
            }
            match volumes.create(&PostParams::default(), &volume).await {
                Ok(_) => {
                    tracing::info!(volume = %name, dir = %dir.display(), claim = %claim.name_any(), "volume provisioned");
                    let events: Api<Event> =
                        Api::namespaced(client.clone(), &claim.namespace().unwrap_or_default());
                    let event = provisioned_event(&claim, &name, node);
                    if let Err(err) = events.create(&PostParams::default(), &event).await {
                        tracing::debug!(?err, "event not recorded");
                    }
                }
                Err(kube::Error::Api(s)) if s.code == 409 => {}
                Err(err) => tracing::warn!(volume = %name, ?err, "volume not created"),
            }
        }
        Step::Delete { volume, dir } => {
            if let Err(err) = remove_dir(&dir) {
                tracing::warn!(volume = %volume, dir = %dir.display(), %err, "volume directory not removed");
                return;
            }
            match volumes.delete(&volume, &DeleteParams::default()).await {
                Ok(_) => tracing::info!(volume = %volume, dir = %dir.display(), "volume deleted"),
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(err) => tracing::warn!(volume = %volume, ?err, "volume not deleted"),
            }
        }
    }
}

/// Provisions and deletes this node's local-path volumes under `root` until dropped.
pub async fn run(client: Client, node: String, root: PathBuf) {
    if let Err(err) = make_dir(&root) {
        tracing::warn!(root = %root.display(), %err, "no storage directory: local-path volumes are not provisioned on this node");
        return;
    }
    let config = watcher::Config::default;
    let (claims, claims_w) = reflector::store::<PersistentVolumeClaim>();
    let (volumes, volumes_w) = reflector::store::<PersistentVolume>();
    let (classes, classes_w) = reflector::store::<StorageClass>();
    let changes = stream::select_all([
        reflector(claims_w, watcher(Api::all(client.clone()), config()))
            .default_backoff()
            .map(|_| ())
            .boxed(),
        reflector(volumes_w, watcher(Api::all(client.clone()), config()))
            .default_backoff()
            .map(|_| ())
            .boxed(),
        reflector(classes_w, watcher(Api::all(client.clone()), config()))
            .default_backoff()
            .map(|_| ())
            .boxed(),
    ]);
    let mut changes = std::pin::pin!(changes.ready_chunks(256));
    let ready = async {
        let _ = claims.wait_until_ready().await;
        let _ = volumes.wait_until_ready().await;
        let _ = classes.wait_until_ready().await;
    };
    tokio::select! {
        () = ready => {}
        () = async { while changes.next().await.is_some() {} } => return,
    }
    loop {
        let (claim_list, volume_list, class_list) =
            (claims.state(), volumes.state(), classes.state());
        let steps = plan(&Observed {
            node: &node,
            root: &root,
            claims: &claim_list,
            volumes: &volume_list,
            classes: &class_list,
        });
        for step in steps {
            carry_out(&client, &node, step).await;
        }
        tokio::select! {
            next = changes.next() => if next.is_none() { return },
            () = tokio::time::sleep(RESYNC) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(selected: Option<&str>, volume: Option<&str>) -> Arc<PersistentVolumeClaim> {
        let mut annotations = serde_json::json!({STORAGE_PROVISIONER: LOCAL_PATH_PROVISIONER});
        if let Some(n) = selected {
            annotations[SELECTED_NODE] = n.into();
        }
        Arc::new(
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "data-db-0", "namespace": "default", "uid": "u1",
                             "annotations": annotations},
                "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "local-path",
                         "volumeName": volume, "resources": {"requests": {"storage": "1Gi"}}},
            }))
            .unwrap(),
        )
    }

    fn run(claims: &[Arc<PersistentVolumeClaim>], volumes: &[Arc<PersistentVolume>]) -> Vec<Step> {
        plan(&Observed {
            node: "n1",
            root: Path::new("/var/lib/skiff/storage"),
            claims,
            volumes,
            classes: &[],
        })
    }

    #[test]
    fn a_claim_selected_for_this_node_gets_a_directory_and_a_volume_pinned_here() {
        let steps = run(&[claim(Some("n1"), None)], &[]);
        let [Step::Provision { dir, volume, .. }] = steps.as_slice() else {
            panic!("unexpected steps {steps:?}");
        };
        assert_eq!(
            dir,
            Path::new("/var/lib/skiff/storage/pvc-u1_default_data-db-0")
        );
        assert_eq!(volume.name_any(), "pvc-u1");
        let spec = volume.spec.as_ref().unwrap();
        assert_eq!(spec.claim_ref.as_ref().unwrap().uid.as_deref(), Some("u1"));
        assert_eq!(spec.host_path.as_ref().unwrap().path, dir.to_str().unwrap());
        assert_eq!(
            spec.persistent_volume_reclaim_policy.as_deref(),
            Some("Delete")
        );
        assert_eq!(spec.capacity.as_ref().unwrap()["storage"].0, "1Gi");
        let term = &spec
            .node_affinity
            .as_ref()
            .unwrap()
            .required
            .as_ref()
            .unwrap()
            .node_selector_terms[0];
        assert_eq!(
            term.match_expressions.as_ref().unwrap()[0]
                .values
                .as_deref(),
            Some(&["n1".to_owned()][..])
        );

        // Made already, for another node, or bound: nothing to do.
        let made = Arc::new((**volume).clone());
        assert!(run(&[claim(Some("n1"), None)], &[made]).is_empty());
        assert!(run(&[claim(Some("n2"), None)], &[]).is_empty());
        assert!(run(&[claim(None, None)], &[]).is_empty());
        assert!(run(&[claim(Some("n1"), Some("pv"))], &[]).is_empty());
    }

    #[test]
    fn only_released_delete_volumes_of_this_node_in_the_storage_dir_are_deleted() {
        let steps = run(&[claim(Some("n1"), None)], &[]);
        let [Step::Provision { volume, .. }] = steps.as_slice() else {
            panic!("unexpected steps {steps:?}");
        };
        let mut pv = (**volume).clone();
        assert!(
            run(&[], &[Arc::new(pv.clone())]).is_empty(),
            "not released yet"
        );
        pv.status = Some(k8s_openapi::api::core::v1::PersistentVolumeStatus {
            phase: Some("Released".into()),
            ..Default::default()
        });
        let steps = run(&[], &[Arc::new(pv.clone())]);
        assert!(matches!(steps.as_slice(), [Step::Delete { volume, .. }] if volume == "pvc-u1"));

        let mut retained = pv.clone();
        retained
            .spec
            .as_mut()
            .unwrap()
            .persistent_volume_reclaim_policy = Some("Retain".into());
        assert!(run(&[], &[Arc::new(retained)]).is_empty());

        let mut elsewhere = pv.clone();
        elsewhere
            .spec
            .as_mut()
            .unwrap()
            .host_path
            .as_mut()
            .unwrap()
            .path = "/etc".into();
        assert!(run(&[], &[Arc::new(elsewhere)]).is_empty());

        let mut other_node = pv;
        other_node
            .metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(VOLUME_NODE.into(), "n2".into());
        assert!(run(&[], &[Arc::new(other_node)]).is_empty());
    }
}
