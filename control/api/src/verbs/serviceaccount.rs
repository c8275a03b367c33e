//! ServiceAccount admission on pod create: the account defaults to `default`, must exist,
//! and unless automounting is off (pod or account) the pod gets the projected
//! `kube-api-access-*` volume (token, `kube-root-ca.crt`, namespace) in every container.

use serde_json::{Value, json};
use skiff_machinery::status::StatusError;
use skiff_resources::ResourceInfo;

use crate::{ctx::Ctx, objects};

/// Where the volume is mounted in every container.
pub const MOUNT_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// The prefix of the volume's name.
pub const VOLUME_PREFIX: &str = "kube-api-access-";
/// The lifetime of the projected token kube asks for (an hour and seven seconds, which
/// kube-apiserver recognises and extends).
const TOKEN_SECONDS: i64 = 3607;
const DEFAULT: &str = "default";

/// Applies ServiceAccount admission to a new pod.
///
/// # Errors
/// 403 when the named account does not exist.
pub async fn admit(ctx: &Ctx, info: &ResourceInfo, obj: &mut Value) -> Result<(), StatusError> {
    if !(info.group.is_empty() && info.kind == "Pod") || is_mirror(obj) {
        return Ok(());
    }
    let account = obj
        .pointer("/spec/serviceAccountName")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .unwrap_or(DEFAULT)
        .to_owned();
    obj["spec"]["serviceAccountName"] = json!(account);
    let namespace = objects::namespace_of(obj).unwrap_or("").to_owned();
    let sa_info = skiff_resources::by_plural("", "v1", "serviceaccounts")
        .ok_or_else(|| StatusError::internal("serviceaccounts are not served"))?;
    let sa = match super::read::fetch_recent(ctx, sa_info, Some(&namespace), &account).await {
        Ok((sa, _)) => sa,
        // Without the controllers nobody makes `default`: such pods are let through without
        // a token volume rather than refused.
        Err(err) if err.http_status().as_u16() == 404 && account == DEFAULT => return Ok(()),
        Err(err) if err.http_status().as_u16() == 404 => {
            return Err(StatusError::forbidden_on(
                "",
                "pods",
                objects::name_of(obj),
                &format!(
                    "error looking up service account {namespace}/{account}: serviceaccount \"{account}\" not found"
                ),
            ));
        }
        Err(err) => return Err(err),
    };
    let automount = obj
        .pointer("/spec/automountServiceAccountToken")
        .or_else(|| sa.get("automountServiceAccountToken"))
        .and_then(Value::as_bool)
        .unwrap_or(true);
    if automount {
        mount_token(obj, &super::create::random_suffix());
    }
    Ok(())
}

fn is_mirror(pod: &Value) -> bool {
    pod.pointer("/metadata/annotations/kubernetes.io~1config.mirror")
        .is_some()
}

/// Adds the `kube-api-access-<suffix>` projected volume and mounts it read-only in every
/// container, unless a container already mounts something at [`MOUNT_PATH`] (then the pod
/// is left as it is, as kube does).
pub fn mount_token(pod: &mut Value, suffix: &str) {
    let containers = ["/spec/initContainers", "/spec/containers"];
    let already = containers.iter().any(|p| {
        pod.pointer(p).and_then(Value::as_array).is_some_and(|cs| {
            cs.iter().any(|c| {
                c["volumeMounts"]
                    .as_array()
                    .is_some_and(|ms| ms.iter().any(|m| m["mountPath"] == MOUNT_PATH))
            })
        })
    });
    if already {
        return;
    }
    let name = format!("{VOLUME_PREFIX}{suffix}");
    let volume = json!({
        "name": name,
        "projected": {
            "defaultMode": 420,
            "sources": [
                {"serviceAccountToken": {"expirationSeconds": TOKEN_SECONDS, "path": "token"}},
                {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
            ],
        },
    });
    match pod["spec"]["volumes"].as_array_mut() {
        Some(volumes) => volumes.push(volume),
        None => pod["spec"]["volumes"] = json!([volume]),
    }
    let mount = json!({"name": name, "readOnly": true, "mountPath": MOUNT_PATH});
    for p in containers {
        if let Some(cs) = pod.pointer_mut(p).and_then(Value::as_array_mut) {
            for c in cs {
                match c["volumeMounts"].as_array_mut() {
                    Some(ms) => ms.push(mount.clone()),
                    None => c["volumeMounts"] = json!([mount.clone()]),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_container_mounts_the_projected_token_volume_read_only() {
        let mut pod = json!({"spec": {
            "initContainers": [{"name": "i"}],
            "containers": [{"name": "a", "volumeMounts": [{"name": "d", "mountPath": "/d"}]}, {"name": "b"}],
            "volumes": [{"name": "d", "emptyDir": {}}]}});
        mount_token(&mut pod, "abcde");
        let volumes = pod["spec"]["volumes"].as_array().unwrap();
        assert_eq!(volumes.len(), 2);
        assert_eq!(volumes[1]["name"], "kube-api-access-abcde");
        let sources = &volumes[1]["projected"]["sources"];
        assert_eq!(sources[0]["serviceAccountToken"]["expirationSeconds"], 3607);
        assert_eq!(sources[1]["configMap"]["name"], "kube-root-ca.crt");
        assert_eq!(
            sources[2]["downwardAPI"]["items"][0]["fieldRef"]["fieldPath"],
            "metadata.namespace"
        );
        for p in [
            "/spec/initContainers/0",
            "/spec/containers/0",
            "/spec/containers/1",
        ] {
            let mounts = pod.pointer(p).unwrap()["volumeMounts"].as_array().unwrap();
            let m = mounts.last().unwrap();
            assert_eq!(
                (
                    m["name"].as_str(),
                    m["mountPath"].as_str(),
                    m["readOnly"].as_bool()
                ),
                (Some("kube-api-access-abcde"), Some(MOUNT_PATH), Some(true)),
                "{p}"
            );
        }
    }

    #[test]
    fn a_pod_mounting_its_own_credentials_there_is_left_alone() {
        let mut pod = json!({"spec": {"containers": [{"name": "a",
            "volumeMounts": [{"name": "mine", "mountPath": MOUNT_PATH}]}]}});
        let before = pod.clone();
        mount_token(&mut pod, "abcde");
        assert_eq!(pod, before);
    }
}
