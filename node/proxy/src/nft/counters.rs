//! Per-Service translations and refusals in the nftables mode, from the counters of the
//! verdict maps' elements (one packet per new connection or UDP flow: the NAT maps see only
//! a flow's first packet, the no-endpoint maps only new connections), each commented with
//! its Service, as the table lists them.

use std::collections::BTreeMap;

use serde_json::Value;
use skiff_ebpf_common::Counters;

use super::rules::MapName;
use crate::entries::ServiceRef;

/// Each Service's translations and refusals.
pub type PerService = BTreeMap<ServiceRef, Counters>;

/// Each Service's counters in a listing of the table or of its verdict maps (`nft -j list
/// ...`'s objects).
#[must_use]
pub fn per_service(objects: &[Value]) -> PerService {
    let mut out: BTreeMap<ServiceRef, Counters> = BTreeMap::new();
    for map in objects.iter().filter_map(|o| o.get("map")) {
        let rejects = match map["name"].as_str().and_then(MapName::from_name) {
            Some(MapName::ServiceIps | MapName::NodePorts | MapName::Internal) => false,
            Some(MapName::NoEndpoints | MapName::InternalNoEndpoints) => true,
            _ => continue,
        };
        for elem in map["elem"].as_array().into_iter().flatten() {
            let Some(wrapped) = elem.get(0).and_then(|key| key.get("elem")) else {
                continue;
            };
            // `return` elements (an internal twin with endpoints) carry no comment.
            let Some((namespace, name)) =
                wrapped["comment"].as_str().and_then(|c| c.split_once('/'))
            else {
                continue;
            };
            let packets = wrapped["counter"]["packets"].as_u64().unwrap_or(0);
            let sum = out.entry(ServiceRef::new(namespace, name)).or_default();
            if rejects {
                sum.refusals += packets;
            } else {
                sum.translations += packets;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn element_counters_add_up_per_service_by_their_comment() {
        let elem = |comment: &str, packets: u64| json!([{"elem": {"val": {"concat": ["10.96.0.1", "tcp", 80]}, "comment": comment, "counter": {"packets": packets, "bytes": 60}}}, {"goto": {"target": "pick/ext/tcp/2"}}]);
        let map = |name: &str, elems: Vec<Value>| json!({"map": {"name": name, "elem": elems}});
        let listing = vec![
            map(
                "service-ips",
                vec![elem("default/web", 3), elem("default/db", 4)],
            ),
            map("service-nodeports", vec![elem("default/web", 2)]),
            map("no-endpoint-services", vec![elem("default/web", 1)]),
            map(
                "internal-no-endpoints",
                vec![
                    json!([{"elem": {"val": {"concat": ["10.96.0.1", "tcp", 80]}, "counter": {"packets": 9, "bytes": 1}}}, {"return": null}]),
                ],
            ),
            map("slot-ext-0-addr", vec![elem("default/web", 9)]),
        ];
        let counts = per_service(&listing);
        let web = counts[&ServiceRef::new("default", "web")];
        assert_eq!((web.translations, web.refusals), (5, 1));
        assert_eq!(counts[&ServiceRef::new("default", "db")].translations, 4);
        assert_eq!(counts.len(), 2);
    }
}
