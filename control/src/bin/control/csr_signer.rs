//! Approves and signs the `CertificateSigningRequest`s of joining nodes (kube-controller-
//! manager's csrapproving and csrsigning for `kubernetes.io/kube-apiserver-client-kubelet`):
//! a request for `CN=system:node:<name>, O=system:nodes` from a bootstrap token, from that
//! node itself (renewal) or from an admin gets the cluster CA's certificate; anything else
//! is left for a person to decide.

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use kube::{
    Api,
    api::{Patch, PatchParams},
    runtime::{WatchStreamExt, watcher},
};
use serde_json::json;
use skiff_machinery::user::MASTERS;
use skiff_pki::{Ca, Subject};

/// The signer of kubelets' client certificates.
pub const KUBELET_CLIENT_SIGNER: &str = "kubernetes.io/kube-apiserver-client-kubelet";
pub use skiff_machinery::user::{BOOTSTRAPPERS, NODES};

/// Why a request is not signed automatically.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Signed: approve and issue this certificate (PEM).
    Sign(String),
    /// Not one this controller decides (another signer, already decided, not a node).
    Skip,
}

/// What to do with `csr`.
pub fn decide(ca: &Ca, csr: &CertificateSigningRequest) -> Verdict {
    let spec = &csr.spec;
    let status = csr.status.as_ref();
    let decided = status.is_some_and(|s| {
        s.certificate.is_some()
            || s.conditions
                .iter()
                .flatten()
                .any(|c| c.type_ == "Approved" || c.type_ == "Denied" || c.type_ == "Failed")
    });
    if decided || spec.signer_name != KUBELET_CLIENT_SIGNER {
        return Verdict::Skip;
    }
    let Ok(pem) = std::str::from_utf8(&spec.request.0) else {
        return Verdict::Skip;
    };
    let Ok(subject) = Subject::from_request_pem(pem) else {
        return Verdict::Skip;
    };
    if !subject.common_name.starts_with("system:node:") || subject.organizations != [NODES] {
        return Verdict::Skip;
    }
    let groups = spec.groups.as_deref().unwrap_or_default();
    let in_group = |g: &str| groups.iter().any(|x| x == g);
    let requester = spec.username.as_deref().unwrap_or_default();
    if !(in_group(BOOTSTRAPPERS) || in_group(MASTERS) || requester == subject.common_name) {
        return Verdict::Skip;
    }
    match ca.sign_client_request(pem) {
        Ok(cert) => Verdict::Sign(cert),
        Err(err) => {
            tracing::warn!(?err, "a node's certificate request could not be signed");
            Verdict::Skip
        }
    }
}

/// Watches `CertificateSigningRequest`s and signs the nodes' until the stream ends.
pub async fn run(client: kube::Client, ca: Arc<Ca>) {
    let api: Api<CertificateSigningRequest> = Api::all(client);
    let mut events = watcher(api.clone(), watcher::Config::default())
        .default_backoff()
        .applied_objects()
        .boxed();
    while let Some(event) = events.next().await {
        let csr = match event {
            Ok(csr) => csr,
            Err(err) => {
                tracing::debug!(?err, "certificate request watch");
                continue;
            }
        };
        let Verdict::Sign(cert) = decide(&ca, &csr) else {
            continue;
        };
        let name = csr.metadata.name.clone().unwrap_or_default();
        let now = jiff::Timestamp::now().to_string();
        let status = json!({"status": {
            "conditions": [{
                "type": "Approved", "status": "True", "reason": "AutoApproved",
                "message": "Auto approving kubelet client certificate after SubjectAccessReview.",
                "lastUpdateTime": now, "lastTransitionTime": now,
            }],
            "certificate": base64_of(&cert),
        }});
        match api
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(status))
            .await
        {
            Ok(_) => tracing::info!(csr = %name, "approved and signed a node's client certificate"),
            Err(err) => tracing::warn!(csr = %name, ?err, "signing a certificate request"),
        }
    }
}

fn base64_of(text: &str) -> String {
    use base64::{Engine, engine::general_purpose::STANDARD};
    STANDARD.encode(text)
}

#[cfg(test)]
mod tests {
    use k8s_openapi::{ByteString, api::certificates::v1::CertificateSigningRequestSpec};

    use super::*;

    fn csr(cn: &str, group: &str, username: &str, groups: &[&str]) -> CertificateSigningRequest {
        let (pem, _) = skiff_pki::ca::client_request(cn, group).unwrap();
        CertificateSigningRequest {
            spec: CertificateSigningRequestSpec {
                request: ByteString(pem.into_bytes()),
                signer_name: KUBELET_CLIENT_SIGNER.into(),
                username: Some(username.into()),
                groups: Some(groups.iter().map(|g| (*g).to_owned()).collect()),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn a_bootstrapper_gets_a_node_certificate_and_nobody_else_is_decided_for() {
        let ca = Ca::generate("test").unwrap();
        let joining = csr(
            "system:node:n1",
            NODES,
            "system:bootstrap:abcdef",
            &[BOOTSTRAPPERS],
        );
        let Verdict::Sign(cert) = decide(&ca, &joining) else {
            panic!("a bootstrap request was not signed");
        };
        assert_eq!(
            Subject::from_pem(&cert).unwrap().common_name,
            "system:node:n1"
        );
        let renewal = csr("system:node:n1", NODES, "system:node:n1", &[NODES]);
        assert!(matches!(decide(&ca, &renewal), Verdict::Sign(_)));
        // Another node's name, a non-node subject, a stranger: left alone.
        let other = csr("system:node:n2", NODES, "system:node:n1", &[NODES]);
        assert_eq!(decide(&ca, &other), Verdict::Skip);
        let admin_cn = csr(
            "kubernetes-admin",
            MASTERS,
            "system:bootstrap:x",
            &[BOOTSTRAPPERS],
        );
        assert_eq!(decide(&ca, &admin_cn), Verdict::Skip);
        let stranger = csr("system:node:n1", NODES, "jane", &["dev"]);
        assert_eq!(decide(&ca, &stranger), Verdict::Skip);
        let mut other_signer = joining.clone();
        other_signer.spec.signer_name = "example.com/other".into();
        assert_eq!(decide(&ca, &other_signer), Verdict::Skip);
    }
}
