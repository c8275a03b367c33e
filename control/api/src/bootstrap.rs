//! What exists from the first start: the four default namespaces and the `kubernetes`
//! Service, plus the Service addresses already taken in the store.

use serde_json::{Value, json};
use skiff_machinery::status::StatusError;

use crate::{
    http::Query,
    objects,
    route::ResourceRoute,
    server::Ctx,
    verbs::{create_object, list_objects, reserve_service},
};

const NAMESPACES: [&str; 4] = ["default", "kube-system", "kube-public", "kube-node-lease"];

fn route(
    api_version: &str,
    kind: &str,
    namespace: Option<&str>,
) -> Result<ResourceRoute, StatusError> {
    let info = skiff_resources::by_kind(api_version, kind)
        .ok_or_else(|| StatusError::internal(format!("{kind} is not served")))?;
    Ok(ResourceRoute {
        info,
        namespace: namespace.map(str::to_owned),
        name: None,
        subresource: None,
        watch: false,
    })
}

async fn ensure(ctx: &Ctx, route: &ResourceRoute, obj: Value) -> Result<(), StatusError> {
    let name = objects::name_of(&obj).to_owned();
    let key = objects::key(route.info, route.namespace.as_deref(), &name);
    let exists = ctx
        .store
        .get(&key, 0)
        .await
        .map_err(|e| objects::store_error(e, route.info, &name))?
        .is_some();
    if !exists {
        match create_object(ctx, route, &Query::default(), obj).await {
            Ok(_) => tracing::info!(kind = route.info.kind, name = %name, "created at bootstrap"),
            Err(e) if e.code == 409 => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

pub async fn run(ctx: &Ctx) -> Result<(), StatusError> {
    let services = route("v1", "Service", None)?;
    for svc in list_objects(ctx, services.info, None, &Query::default())
        .await?
        .items
    {
        reserve_service(ctx, &svc);
    }
    let namespaces = route("v1", "Namespace", None)?;
    for ns in NAMESPACES {
        ensure(ctx, &namespaces, json!({"metadata": {"name": ns}})).await?;
    }
    let first = ctx.cluster_ips.first().to_string();
    ensure(
        ctx,
        &route("v1", "Service", Some("default"))?,
        json!({
            "metadata": {"name": "kubernetes", "labels": {"component": "apiserver", "provider": "kubernetes"}},
            "spec": {"clusterIP": first, "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": 6443}]},
        }),
    )
    .await
}
