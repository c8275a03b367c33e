//! What exists from the first start: the system namespaces, the `kubernetes` Service,
//! the default `local-path` `StorageClass`, the default RBAC roles and bindings (re-added
//! or completed at every start unless their autoupdate annotation is `false`),
//! plus what stored objects already hold from the pools (Service addresses and ports).

use serde_json::{Value, json};
use skiff_machinery::status::StatusError;
use skiff_types::{namespace, storage};

use crate::{
    authz::policy,
    ctx::Ctx,
    http::Query,
    objects,
    route::ResourceRoute,
    verbs::{create_object, list_objects},
};

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

/// Marks what stored objects hold from the pools as taken.
async fn reserve_allocations(ctx: &Ctx) -> Result<(), StatusError> {
    for info in skiff_resources::all()
        .iter()
        .filter(|i| i.strategy.holds_allocations())
    {
        for obj in list_objects(ctx, info, None, &Query::default())
            .await?
            .items
        {
            info.strategy.reserve(&obj, &ctx.pools);
        }
    }
    Ok(())
}

/// Creates a default RBAC object, or adds to a stored one (autoupdate `true`) the entries
/// of `field` it lacks, as kube-apiserver's policy reconciliation does.
async fn reconcile(
    ctx: &Ctx,
    route: &ResourceRoute,
    wanted: Value,
    field: &str,
) -> Result<(), StatusError> {
    let info = route.info;
    let name = objects::name_of(&wanted).to_owned();
    let (mut current, revision) = match objects::fetch(ctx.store.as_ref(), info, None, &name).await
    {
        Err(e) if e.code == 404 => return ensure(ctx, route, wanted).await,
        other => other?,
    };
    let autoupdate = current
        .pointer("/metadata/annotations")
        .and_then(|a| a.get(policy::AUTOUPDATE))
        .and_then(Value::as_str);
    if autoupdate == Some("false") {
        return Ok(());
    }
    let mut entries = current
        .get(field)
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let missing: Vec<Value> = wanted
        .get(field)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|e| !entries.contains(e))
        .cloned()
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    entries.extend(missing);
    current[field] = Value::Array(entries);
    let key = objects::key(info, None, &name);
    match ctx
        .store
        .update(&key, objects::encode(info, &current), revision)
        .await
        .map_err(|e| objects::store_error(e, info, &name))
    {
        Ok(_) => tracing::info!(kind = info.kind, %name, "default RBAC object reconciled"),
        // Another API server on the same store reconciled it first.
        Err(e) if e.code == 409 => {}
        Err(e) => return Err(e),
    }
    Ok(())
}

async fn rbac_defaults(ctx: &Ctx) -> Result<(), StatusError> {
    let roles = route("rbac.authorization.k8s.io/v1", "ClusterRole", None)?;
    for role in policy::cluster_roles() {
        reconcile(ctx, &roles, role, "rules").await?;
    }
    let bindings = route("rbac.authorization.k8s.io/v1", "ClusterRoleBinding", None)?;
    for binding in policy::cluster_role_bindings() {
        reconcile(ctx, &bindings, binding, "subjects").await?;
    }
    Ok(())
}

pub async fn run(ctx: &Ctx) -> Result<(), StatusError> {
    reserve_allocations(ctx).await?;
    rbac_defaults(ctx).await?;
    let namespaces = route("v1", "Namespace", None)?;
    for ns in namespace::SYSTEM {
        ensure(ctx, &namespaces, json!({"metadata": {"name": ns}})).await?;
    }
    let first = ctx.pools.cluster_ips.first().to_string();
    ensure(
        ctx,
        &route("v1", "Service", Some(namespace::DEFAULT))?,
        json!({
            "metadata": {"name": "kubernetes", "labels": {"component": "apiserver", "provider": "kubernetes"}},
            "spec": {"clusterIP": first, "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": 6443}]},
        }),
    )
    .await?;
    ensure(
        ctx,
        &route("storage.k8s.io/v1", "StorageClass", None)?,
        local_path(),
    )
    .await?;
    if let Some(dns) = ctx.pools.cluster_ips.dns() {
        // A cluster that gave the address to another Service still starts; its pods resolve
        // through whatever `--cluster-dns` the nodes are told.
        if let Err(err) = ensure(
            ctx,
            &route("v1", "Service", Some(namespace::KUBE_SYSTEM))?,
            kube_dns(dns),
        )
        .await
        {
            tracing::warn!(%dns, err = %err.message, "kube-dns Service not created");
        }
    }
    Ok(())
}

/// The default `StorageClass`: volumes the node daemons make as directories, bound where
/// their first pod is scheduled, removed with their claim (k3s' `local-path`).
fn local_path() -> Value {
    json!({
        "metadata": {
            "name": storage::LOCAL_PATH_CLASS,
            "annotations": {skiff_resources::IS_DEFAULT_CLASS: "true"},
        },
        "provisioner": storage::LOCAL_PATH_PROVISIONER,
        "reclaimPolicy": "Delete",
        "volumeBindingMode": "WaitForFirstConsumer",
    })
}

/// The `kube-system/kube-dns` Service. It has no selector: every node daemon serves DNS
/// itself and publishes its own EndpointSlice, and `internalTrafficPolicy: Local` makes each
/// node's Service path pick its own server, so DNS traffic never leaves the node.
fn kube_dns(ip: std::net::Ipv4Addr) -> Value {
    json!({
        "metadata": {
            "name": "kube-dns",
            "labels": {"k8s-app": "kube-dns", "kubernetes.io/name": "CoreDNS", "kubernetes.io/cluster-service": "true"},
        },
        "spec": {
            "clusterIP": ip.to_string(),
            "internalTrafficPolicy": "Local",
            "ports": [
                {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
                {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53},
            ],
        },
    })
}
