//! What exists from the first start: the system namespaces, the `kubernetes` Service (with
//! this server's advertised address as its Endpoints and EndpointSlice, rewritten at every
//! start), the default `local-path` `StorageClass`, the default RBAC roles and bindings (re-added
//! or completed at every start unless their autoupdate annotation is `false`),
//! plus what stored objects already hold from the pools (Service addresses and ports).

use std::net::SocketAddr;

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

/// The Service in `default` that stands for the API server.
const API_SERVICE: &str = "kubernetes";

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
    write_back(ctx, route, &name, &current, revision).await
}

/// Stores `current` over the revision it was read at; losing the race to another API
/// server on the same store, which wrote the same, is fine.
async fn write_back(
    ctx: &Ctx,
    route: &ResourceRoute,
    name: &str,
    current: &Value,
    revision: i64,
) -> Result<(), StatusError> {
    let info = route.info;
    let key = objects::key(info, route.namespace.as_deref(), name);
    match ctx
        .store
        .update(&key, objects::encode(info, current), revision)
        .await
        .map_err(|e| objects::store_error(e, info, name))
    {
        Ok(_) => tracing::info!(kind = info.kind, %name, "updated at bootstrap"),
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

/// Makes the `kubernetes` Service's Endpoints and EndpointSlice name `advertise`, as
/// kube-apiserver's endpoint reconciler does for a single server: in-cluster clients reach
/// the API through the Service, and only an address pods can reach is any use there.
async fn api_endpoints(ctx: &Ctx, advertise: SocketAddr) -> Result<(), StatusError> {
    let (ip, port) = (advertise.ip().to_string(), advertise.port());
    let family = if advertise.is_ipv4() { "IPv4" } else { "IPv6" };
    let endpoints = json!({
        "metadata": {
            "name": API_SERVICE,
            // The mirroring controller leaves it alone, as kube labels it.
            "labels": {"endpointslice.kubernetes.io/skip-mirror": "true"},
        },
        "subsets": [{
            "addresses": [{"ip": ip}],
            "ports": [{"name": "https", "port": port, "protocol": "TCP"}],
        }],
    });
    replace(
        ctx,
        &route("v1", "Endpoints", Some(namespace::DEFAULT))?,
        endpoints,
        &["subsets"],
    )
    .await?;
    let slice = json!({
        "metadata": {"name": API_SERVICE, "labels": {"kubernetes.io/service-name": API_SERVICE}},
        "addressType": family,
        "endpoints": [{"addresses": [ip], "conditions": {"ready": true}}],
        "ports": [{"name": "https", "port": port, "protocol": "TCP"}],
    });
    replace(
        ctx,
        &route(
            "discovery.k8s.io/v1",
            "EndpointSlice",
            Some(namespace::DEFAULT),
        )?,
        slice,
        &["addressType", "endpoints", "ports"],
    )
    .await
}

/// Creates `wanted`, or sets the stored object's `fields` to `wanted`'s where they differ.
async fn replace(
    ctx: &Ctx,
    route: &ResourceRoute,
    wanted: Value,
    fields: &[&str],
) -> Result<(), StatusError> {
    let info = route.info;
    let name = objects::name_of(&wanted).to_owned();
    let ns = route.namespace.as_deref();
    let (mut current, revision) = match objects::fetch(ctx.store.as_ref(), info, ns, &name).await {
        Err(e) if e.code == 404 => return ensure(ctx, route, wanted).await,
        other => other?,
    };
    if fields.iter().all(|f| current.get(*f) == wanted.get(*f)) {
        return Ok(());
    }
    for f in fields {
        current[*f] = wanted.get(*f).cloned().unwrap_or(Value::Null);
    }
    write_back(ctx, route, &name, &current, revision).await
}

/// Creates (or completes) what exists from the first start; `advertise` is where pods reach
/// this server, when it has such an address.
///
/// # Errors
/// A store failure.
pub async fn run(ctx: &Ctx, advertise: Option<SocketAddr>) -> Result<(), StatusError> {
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
            "metadata": {"name": API_SERVICE, "labels": {"component": "apiserver", "provider": "kubernetes"}},
            "spec": {"clusterIP": first, "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": advertise.map_or(6443, |a| a.port())}]},
        }),
    )
    .await?;
    if let Some(address) = advertise {
        api_endpoints(ctx, address).await?;
    } else {
        tracing::warn!(
            "no address pods can reach this server at (it listens on loopback or a wildcard; see --advertise-address): the kubernetes Service gets no endpoints"
        );
    }
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
