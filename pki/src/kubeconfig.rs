//! A kubeconfig that reaches one API server as one identity: the CA to trust and the client
//! certificate and key, inline, so the file alone is enough (as kubeadm's admin.conf).

use base64::{Engine, engine::general_purpose::STANDARD};

use crate::ca::Issued;

/// A kubeconfig for `server` (`https://HOST:PORT`) trusting `ca_pem`, authenticating as
/// `user` with the client certificate `client`; its one context is named `context`.
#[must_use]
pub fn render(server: &str, ca_pem: &str, context: &str, user: &str, client: &Issued) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: {context}\n  cluster:\n    server: \"{server}\"\n    certificate-authority-data: {ca}\ncontexts:\n- name: {context}\n  context:\n    cluster: {context}\n    user: \"{user}\"\ncurrent-context: {context}\nusers:\n- name: \"{user}\"\n  user:\n    client-certificate-data: {cert}\n    client-key-data: {key}\n",
        ca = STANDARD.encode(ca_pem),
        cert = STANDARD.encode(&client.cert_pem),
        key = STANDARD.encode(&client.key_pem),
    )
}
