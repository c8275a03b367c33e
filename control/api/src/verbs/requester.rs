//! A `CertificateSigningRequest` records who asked for it (`spec.username`, `uid`, `groups`,
//! `extra`), set by the server from the authenticated caller and never taken from the client,
//! so the approver can trust it.

use serde_json::{Value, json};
use skiff_machinery::user::UserInfo;
use skiff_resources::ResourceInfo;

/// Overwrites a new `CertificateSigningRequest`'s requester with `user`; other kinds are left
/// alone.
pub fn record(info: &ResourceInfo, obj: &mut Value, user: Option<&UserInfo>) {
    if info.group != "certificates.k8s.io" || info.kind != "CertificateSigningRequest" {
        return;
    }
    let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    for field in ["username", "uid", "groups", "extra"] {
        spec.remove(field);
    }
    if let Some(user) = user {
        spec.insert("username".into(), json!(user.name));
        if !user.uid.is_empty() {
            spec.insert("uid".into(), json!(user.uid));
        }
        spec.insert("groups".into(), json!(user.groups));
        if !user.extra.is_empty() {
            spec.insert("extra".into(), json!(user.extra));
        }
    }
}
