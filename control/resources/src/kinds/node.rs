//! Node: a pod CIDR and provider ID that are set once and never changed (node IPAM and
//! every node's peers rely on it), and kubectl's STATUS / ROLES / VERSION columns.

use std::net::IpAddr;

use serde_json::{Value, json};
use skiff_machinery::status::Cause;

use super::object;
use crate::{
    Strategy,
    table::{self, AGE, Column, NAME, col},
};

/// `v1/Node`.
#[derive(Debug)]
pub struct Node;

const COLUMNS: &[Column] = &[
    NAME,
    col("Status", "string", 0, "The status of the node"),
    col("Roles", "string", 0, "The roles of the node"),
    AGE,
    col(
        "Version",
        "string",
        0,
        "Kubelet Version reported by the node.",
    ),
    col(
        "Internal-IP",
        "string",
        1,
        "List of addresses reachable to the node.",
    ),
    col(
        "External-IP",
        "string",
        1,
        "List of addresses reachable to the node.",
    ),
    col("OS-Image", "string", 1, "OS image reported by the node."),
    col(
        "Kernel-Version",
        "string",
        1,
        "Kernel version reported by the node.",
    ),
    col(
        "Container-Runtime",
        "string",
        1,
        "Container runtime and version reported by the node.",
    ),
];

/// What kube-apiserver answers a change to a set pod CIDR or provider ID with.
const SET_ONCE: &str = "node updates may not change {field} except from \"\" to valid";

/// `spec.podCIDRs`, the list the API server keeps (`spec.podCIDR` is its first entry).
fn pod_cidrs(obj: &Value) -> Vec<&str> {
    obj.pointer("/spec/podCIDRs")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect()
}

fn text<'a>(obj: &'a Value, pointer: &str) -> &'a str {
    obj.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

/// An IP network as `IsValidCIDR` takes it: an address, a slash and a prefix length that
/// fits the address family.
fn is_cidr(text: &str) -> bool {
    let Some((ip, bits)) = text.split_once('/') else {
        return false;
    };
    let Ok(ip) = ip.parse::<IpAddr>() else {
        return false;
    };
    let max = if ip.is_ipv4() { 32 } else { 128 };
    !bits.starts_with('+') && bits.parse::<u8>().is_ok_and(|b| b <= max)
}

impl Strategy for Node {
    /// Keeps `spec.podCIDR` and `spec.podCIDRs` one value, as the Go API's conversion of a
    /// v1 Node does: whichever a client set fills the other.
    fn default(&self, obj: &mut Value) {
        let Some(spec) = object(obj, &["spec"]) else {
            return;
        };
        let single = spec
            .get("podCIDR")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_owned);
        let first = spec
            .get("podCIDRs")
            .and_then(Value::as_array)
            .and_then(|l| l.first())
            .and_then(Value::as_str)
            .map(str::to_owned);
        match (single, first) {
            (Some(cidr), None) => {
                spec.insert("podCIDRs".into(), json!([cidr]));
            }
            (None, Some(cidr)) => {
                spec.insert("podCIDR".into(), json!(cidr));
            }
            _ => {}
        }
    }

    fn validate(&self, obj: &Value) -> Vec<Cause> {
        let mut causes = Vec::new();
        let cidrs = pod_cidrs(obj);
        for (i, cidr) in cidrs.iter().enumerate() {
            if !is_cidr(cidr) {
                causes.push(Cause::invalid(
                    &format!("spec.podCIDRs[{i}]"),
                    &json!(cidr),
                    "must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)",
                ));
            }
        }
        let single = text(obj, "/spec/podCIDR");
        if let Some(first) = cidrs.first()
            && !single.is_empty()
            && single != *first
        {
            causes.push(Cause::invalid(
                "spec.podCIDR",
                &json!(single),
                "must be the first of spec.podCIDRs",
            ));
        }
        causes
    }

    /// A pod CIDR (and a provider ID) may be set once, by node IPAM or the node, and is
    /// never changed: pods and peer routes already use it.
    fn validate_update(&self, old: &Value, new: &Value) -> Vec<Cause> {
        let mut causes = self.validate(new);
        let old_cidrs = pod_cidrs(old);
        let old_single = text(old, "/spec/podCIDR");
        if (!old_cidrs.is_empty() && old_cidrs != pod_cidrs(new))
            || (!old_single.is_empty() && old_single != text(new, "/spec/podCIDR"))
        {
            causes.push(Cause::forbidden(
                "spec.podCIDRs",
                &SET_ONCE.replace("{field}", "podCIDR"),
            ));
        }
        let old_provider = text(old, "/spec/providerID");
        if !old_provider.is_empty() && old_provider != text(new, "/spec/providerID") {
            causes.push(Cause::forbidden(
                "spec.providerID",
                &SET_ONCE.replace("{field}", "providerID"),
            ));
        }
        causes
    }

    fn columns(&self) -> &'static [Column] {
        COLUMNS
    }

    fn row(&self, o: &Value, now: jiff::Timestamp) -> Vec<Value> {
        let ready = o
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find(|c| table::text(c, "/type") == "Ready")
            .map(|c| table::text(c, "/status"));
        let mut status = match ready {
            Some("True") => "Ready".to_owned(),
            Some(_) => "NotReady".to_owned(),
            None => "Unknown".to_owned(),
        };
        if o.pointer("/spec/unschedulable").and_then(Value::as_bool) == Some(true) {
            status.push_str(",SchedulingDisabled");
        }
        let roles: Vec<&str> = o
            .pointer("/metadata/labels")
            .and_then(Value::as_object)
            .into_iter()
            .flat_map(|l| l.keys())
            .filter_map(|k| k.strip_prefix("node-role.kubernetes.io/"))
            .collect();
        let address = |kind: &str| {
            o.pointer("/status/addresses")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .find(|a| table::text(a, "/type") == kind)
                .map_or("<none>", |a| table::text(a, "/address"))
                .to_owned()
        };
        vec![
            table::name(o),
            json!(status),
            table::or_none((!roles.is_empty()).then(|| roles.join(","))),
            table::age(o, now),
            json!(table::text(o, "/status/nodeInfo/kubeletVersion")),
            json!(address("InternalIP")),
            json!(address("ExternalIP")),
            json!(table::text(o, "/status/nodeInfo/osImage")),
            json!(table::text(o, "/status/nodeInfo/kernelVersion")),
            json!(table::text(o, "/status/nodeInfo/containerRuntimeVersion")),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_cidr(cidr: &str) -> Value {
        let mut n = json!({"metadata": {"name": "n"}, "spec": {"podCIDR": cidr}});
        Node.default(&mut n);
        n
    }

    #[test]
    fn either_pod_cidr_field_fills_the_other() {
        assert_eq!(
            with_cidr("10.244.0.0/24")["spec"]["podCIDRs"],
            json!(["10.244.0.0/24"])
        );
        let mut n = json!({"spec": {"podCIDRs": ["10.244.3.0/24"]}});
        Node.default(&mut n);
        assert_eq!(n["spec"]["podCIDR"], "10.244.3.0/24");
    }

    #[test]
    fn a_pod_cidr_may_be_set_once_but_never_changed_or_cleared() {
        let empty = json!({"metadata": {"name": "n"}, "spec": {}});
        let first = with_cidr("10.244.0.0/24");
        assert!(Node.validate_update(&empty, &first).is_empty());
        assert!(Node.validate_update(&first, &first).is_empty());
        let second = with_cidr("10.244.1.0/24");
        let causes = Node.validate_update(&first, &second);
        assert_eq!(causes.len(), 1, "{causes:?}");
        assert_eq!(causes[0].field, "spec.podCIDRs");
        assert_eq!(causes[0].reason, "FieldValueForbidden");
        assert!(!Node.validate_update(&first, &empty).is_empty());
    }

    #[test]
    fn changing_only_the_single_field_is_refused_too() {
        let first = with_cidr("10.244.0.0/24");
        let mut changed = first.clone();
        changed["spec"]["podCIDR"] = json!("10.244.1.0/24");
        assert!(!Node.validate_update(&first, &changed).is_empty());
    }

    #[test]
    fn pod_cidrs_must_be_networks() {
        for bad in ["10.244.0.0", "10.244.0.0/33", "nonsense/24", "::1/129"] {
            assert_eq!(
                Node.validate(&with_cidr(bad)).len(),
                1,
                "{bad} should be refused"
            );
        }
        assert!(Node.validate(&with_cidr("fd00::/64")).is_empty());
    }

    #[test]
    fn a_provider_id_is_set_once() {
        let old = json!({"spec": {"providerID": "skiff://a"}});
        let new = json!({"spec": {"providerID": "skiff://b"}});
        assert_eq!(Node.validate_update(&old, &new)[0].field, "spec.providerID");
        assert!(Node.validate_update(&json!({"spec": {}}), &new).is_empty());
    }
}
