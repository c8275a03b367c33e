//! Per-Service translations and refusals in the nftables mode, from the counters of the
//! group chains (one packet per new connection or UDP flow: NAT chains see only a flow's
//! first packet) and of the reject chains, as the table lists them.

use std::collections::BTreeMap;

use serde_json::Value;
use skiff_ebpf_common::Counters;

use super::rules::counted_chain;
use crate::entries::ServiceRef;

/// Each Service's translations and refusals.
pub type PerService = BTreeMap<ServiceRef, Counters>;

/// Each Service's counters in a listing of the table (`nft -j list table`'s objects).
#[must_use]
pub fn per_service(objects: &[Value]) -> PerService {
    let mut out: BTreeMap<ServiceRef, Counters> = BTreeMap::new();
    for rule in objects.iter().filter_map(|o| o.get("rule")) {
        let Some((service, rejects)) = rule["chain"].as_str().and_then(counted_chain) else {
            continue;
        };
        let packets: u64 = rule["expr"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s.get("counter")?.get("packets")?.as_u64())
            .sum();
        let sum = out.entry(service).or_default();
        if rejects {
            sum.refusals += packets;
        } else {
            sum.translations += packets;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn group_and_reject_chain_counters_add_up_per_service() {
        let rule = |chain: &str, packets: u64| json!({"rule": {"chain": chain, "expr": [{"counter": {"packets": packets, "bytes": 60}}]}});
        let listing = vec![
            rule("svc/default/web/tcp/80", 3),
            rule("svc/default/web/udp/53", 2),
            rule("rej/default/web/tcp/80/local", 1),
            rule("ep/default/web/tcp/80/10.244.1.5/8080", 9),
            rule("services", 9),
        ];
        let counts = per_service(&listing);
        let web = counts[&ServiceRef::new("default", "web")];
        assert_eq!((web.translations, web.refusals), (5, 1));
        assert_eq!(counts.len(), 1);
    }
}
