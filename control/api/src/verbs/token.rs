//! `TokenRequest` (`POST serviceaccounts/<name>/token`): a signed token for the account,
//! for the requested audiences and lifetime, bound to a pod when asked.

use http::{HeaderMap, Response, StatusCode};
use serde_json::{Value, json};
use skiff_machinery::status::{Cause, StatusError};
use skiff_pki::satoken::{Claims, ObjectRef};

use crate::{
    ctx::Ctx,
    http::{self as h, Body},
    objects,
    route::ResourceRoute,
};

/// The shortest lifetime a token may be asked for (kube's ten minutes).
pub const MIN_SECONDS: i64 = 600;
/// The lifetime of a token whose request names none.
pub const DEFAULT_SECONDS: i64 = 3600;
/// The longest lifetime handed out.
const MAX_SECONDS: i64 = 1 << 32;
const GROUP: &str = "authentication.k8s.io";

/// Issues the token a `TokenRequest` asks for.
///
/// # Errors
/// 404 when the account (or bound pod) does not exist or tokens are not configured, 422 for
/// an invalid request, 409 when the bound pod's uid differs.
pub async fn create(
    ctx: &Ctx,
    route: &ResourceRoute,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response<Body>, StatusError> {
    let name = route.name.as_deref().unwrap_or("");
    let namespace = route.namespace.as_deref().unwrap_or("");
    let tokens = ctx
        .service_accounts
        .as_ref()
        .ok_or_else(|| StatusError::not_found(route.info.group, "serviceaccounts/token", name))?;
    let request = h::decode_object(headers, body)?;
    let spec = request.get("spec").cloned().unwrap_or_else(|| json!({}));
    let seconds = match spec.get("expirationSeconds") {
        None | Some(Value::Null) => DEFAULT_SECONDS,
        Some(v) => v
            .as_i64()
            .ok_or_else(|| invalid(name, "spec.expirationSeconds", v, "must be an integer"))?,
    };
    if seconds < MIN_SECONDS {
        return Err(invalid(
            name,
            "spec.expirationSeconds",
            &json!(seconds),
            "may not specify a duration less than 10 minutes",
        ));
    }
    let seconds = seconds.min(MAX_SECONDS);
    let mut audiences: Vec<String> = spec
        .get("audiences")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    if audiences.is_empty() {
        audiences = tokens.audiences().to_vec();
    }
    let (account, _) =
        objects::fetch(ctx.store.as_ref(), route.info, Some(namespace), name).await?;
    let account = ObjectRef {
        name: name.to_owned(),
        uid: uid_of(&account),
    };
    let bound = spec.get("boundObjectRef").filter(|b| !b.is_null());
    let pod = match bound {
        Some(reference) => Some(bound_pod(ctx, namespace, name, reference).await?),
        None => None,
    };
    let now = jiff::Timestamp::now().as_second();
    let claims = Claims::new(namespace, account, pod, audiences.clone(), now, seconds);
    let token = tokens
        .sign(&claims)
        .map_err(|e| StatusError::internal(format!("failed to sign the token: {e}")))?;
    let expires = jiff::Timestamp::from_second(claims.exp)
        .map_err(|e| StatusError::internal(e.to_string()))?
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let mut spec = json!({"audiences": audiences, "expirationSeconds": seconds});
    if let Some(b) = bound {
        spec["boundObjectRef"] = b.clone();
    }
    Ok(h::json(
        StatusCode::CREATED,
        &json!({
            "kind": "TokenRequest",
            "apiVersion": format!("{GROUP}/v1"),
            "metadata": {"name": name, "namespace": namespace, "creationTimestamp": null},
            "spec": spec,
            "status": {"token": token, "expirationTimestamp": expires},
        }),
    ))
}

/// The pod a token is to be bound to: it must exist (with the uid the request names, if
/// any) and run as `account`.
async fn bound_pod(
    ctx: &Ctx,
    namespace: &str,
    account: &str,
    reference: &Value,
) -> Result<ObjectRef, StatusError> {
    let field = |k: &str| reference.get(k).and_then(Value::as_str).unwrap_or("");
    let kind = field("kind");
    if kind != "Pod" {
        return Err(StatusError::bad_request(format!(
            "cannot bind token for serviceaccount {account:?} to object of kind {kind:?}: only Pod is supported"
        )));
    }
    let info = skiff_resources::by_plural("", "v1", "pods")
        .ok_or_else(|| StatusError::internal("pods are not served"))?;
    let (pod, _) = objects::fetch(ctx.store.as_ref(), info, Some(namespace), field("name")).await?;
    let uid = uid_of(&pod);
    let wanted = field("uid");
    if !wanted.is_empty() && wanted != uid {
        return Err(StatusError::conflict(
            "",
            "pods",
            field("name"),
            &format!(
                "the UID in the bound object reference ({wanted}) does not match the UID in record. The object might have been deleted and then recreated"
            ),
        ));
    }
    let runs_as = pod
        .pointer("/spec/serviceAccountName")
        .and_then(Value::as_str)
        .unwrap_or("default");
    if runs_as != account {
        return Err(StatusError::bad_request(format!(
            "cannot bind token for serviceaccount {account:?} to pod running with different serviceaccount name."
        )));
    }
    Ok(ObjectRef {
        name: field("name").to_owned(),
        uid,
    })
}

fn uid_of(obj: &Value) -> String {
    obj.pointer("/metadata/uid")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned()
}

fn invalid(name: &str, field: &str, value: &Value, detail: &str) -> StatusError {
    StatusError::invalid(
        GROUP,
        "TokenRequest",
        name,
        vec![Cause::invalid(field, value, detail)],
    )
}
