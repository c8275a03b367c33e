//! Cluster IPs and node ports for Services: taken on create, given back on delete.

use std::net::Ipv4Addr;

use serde_json::{Value, json};
use skiff_machinery::status::{Cause, StatusError};

use crate::server::Ctx;

fn invalid(obj: &Value, field: &str, value: &Value, detail: &str) -> StatusError {
    StatusError::invalid(
        "",
        "Service",
        crate::objects::name_of(obj),
        vec![Cause::invalid(field, value, detail)],
    )
}

/// Gives a new Service its cluster IP and node ports; on failure nothing stays taken.
pub fn allocate(ctx: &Ctx, obj: &mut Value) -> Result<(), StatusError> {
    let kind = obj
        .pointer("/spec/type")
        .and_then(Value::as_str)
        .unwrap_or("ClusterIP")
        .to_owned();
    if kind == "ExternalName" {
        return Ok(());
    }
    let requested = obj
        .pointer("/spec/clusterIP")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    let ip = if requested == "None" {
        None
    } else {
        let wanted = if requested.is_empty() {
            None
        } else {
            Some(requested.parse::<Ipv4Addr>().map_err(|_| {
                invalid(
                    obj,
                    "spec.clusterIPs",
                    &json!(requested),
                    "must be a valid IP address",
                )
            })?)
        };
        let ip = ctx
            .cluster_ips
            .allocate(wanted)
            .map_err(|e| invalid(obj, "spec.clusterIPs", &json!([requested]), &e.to_string()))?;
        obj["spec"]["clusterIP"] = json!(ip.to_string());
        obj["spec"]["clusterIPs"] = json!([ip.to_string()]);
        Some(ip)
    };
    if kind == "NodePort" || kind == "LoadBalancer" {
        let count = obj
            .pointer("/spec/ports")
            .and_then(Value::as_array)
            .map_or(0, Vec::len);
        let mut taken = Vec::new();
        for i in 0..count {
            let wanted = obj["spec"]["ports"][i]
                .get("nodePort")
                .and_then(Value::as_u64)
                .and_then(|p| u16::try_from(p).ok());
            match ctx.node_ports.allocate(wanted) {
                Ok(port) => {
                    obj["spec"]["ports"][i]["nodePort"] = json!(port);
                    taken.push(port);
                }
                Err(e) => {
                    for p in taken {
                        ctx.node_ports.release(p);
                    }
                    if let Some(ip) = ip {
                        ctx.cluster_ips.release(ip);
                    }
                    return Err(invalid(
                        obj,
                        &format!("spec.ports[{i}].nodePort"),
                        &json!(wanted),
                        &e.to_string(),
                    ));
                }
            }
        }
    }
    Ok(())
}

/// The cluster IP a stored Service holds, if any.
fn cluster_ip(obj: &Value) -> Option<Ipv4Addr> {
    obj.pointer("/spec/clusterIP")
        .and_then(Value::as_str)
        .and_then(|s| s.parse().ok())
}

/// The node ports a stored Service holds.
fn node_ports(obj: &Value) -> impl Iterator<Item = u16> + '_ {
    obj.pointer("/spec/ports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|p| p.get("nodePort").and_then(Value::as_u64))
        .filter_map(|p| u16::try_from(p).ok())
}

/// Gives back what a Service held.
pub fn release(ctx: &Ctx, obj: &Value) {
    if let Some(ip) = cluster_ip(obj) {
        ctx.cluster_ips.release(ip);
    }
    for port in node_ports(obj) {
        ctx.node_ports.release(port);
    }
}

/// Marks what stored Services hold as taken, at start.
pub fn reserve(ctx: &Ctx, obj: &Value) {
    // A stored Service already passed allocation; a clash here would mean duplicates in
    // the store, which the allocator cannot repair, so it is only logged.
    if let Some(ip) = cluster_ip(obj)
        && let Err(err) = ctx.cluster_ips.allocate(Some(ip))
    {
        tracing::warn!(%ip, %err, "stored Service IP could not be reserved");
    }
    for port in node_ports(obj) {
        if let Err(err) = ctx.node_ports.allocate(Some(port)) {
            tracing::warn!(port, %err, "stored node port could not be reserved");
        }
    }
}
