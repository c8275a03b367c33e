//! The Service proxy's part of the node's `/metrics`, in the Prometheus text format:
//! per-Service translations and no-endpoint refusals, map occupancy, LRU fill and the last
//! sync's duration.

use std::{collections::BTreeMap, fmt::Write as _, time::Duration};

use skiff_ebpf_common::Counters;

use super::{ebpf::Fill, entries::ServiceRef, table::Occupancy};

/// What the metrics are made of, gathered by the caller.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Each group's counters (summed over CPUs).
    pub counters: BTreeMap<u32, Counters>,
    /// Which Service each group belongs to.
    pub owners: BTreeMap<u32, ServiceRef>,
    /// The table's occupancy.
    pub occupancy: Occupancy,
    /// The LRU maps' fill.
    pub fill: Vec<Fill>,
    /// How long the last sync took.
    pub last_sync: Duration,
}

/// A label value with `\`, `"` and newlines escaped.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The metrics text.
#[must_use]
pub fn render(s: &Snapshot) -> String {
    // A Service's groups add up (one per port and traffic policy).
    let mut per_service: BTreeMap<&ServiceRef, Counters> = BTreeMap::new();
    for (group, counters) in &s.counters {
        if let Some(owner) = s.owners.get(group) {
            let sum = per_service.entry(owner).or_default();
            sum.translations += counters.translations;
            sum.refusals += counters.refusals;
        }
    }
    let mut out = String::new();
    let series = [
        (
            "skiff_proxy_translations_total",
            "Connections and datagrams sent to a backend of the Service.",
            true,
        ),
        (
            "skiff_proxy_no_endpoint_refusals_total",
            "Connections and datagrams refused because the Service had no usable endpoint.",
            false,
        ),
    ];
    for (name, help, translations) in series {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for (svc, c) in &per_service {
            let value = if translations {
                c.translations
            } else {
                c.refusals
            };
            let _ = writeln!(
                out,
                "{name}{{namespace=\"{}\",service=\"{}\"}} {value}",
                label(&svc.namespace),
                label(&svc.name)
            );
        }
    }
    let o = s.occupancy;
    let _ = writeln!(
        out,
        "# HELP skiff_proxy_entries Entries the Service maps hold.\n# TYPE skiff_proxy_entries gauge"
    );
    for (kind, n) in [
        ("services", o.services),
        ("frontends", o.frontends),
        ("groups", o.groups),
        ("backends", o.backends),
    ] {
        let _ = writeln!(out, "skiff_proxy_entries{{kind=\"{kind}\"}} {n}");
    }
    let _ = writeln!(
        out,
        "# HELP skiff_proxy_lru_entries Entries in an LRU map, beside its capacity.\n# TYPE skiff_proxy_lru_entries gauge"
    );
    for f in &s.fill {
        let _ = writeln!(
            out,
            "skiff_proxy_lru_entries{{map=\"{}\"}} {}\nskiff_proxy_lru_capacity{{map=\"{}\"}} {}",
            f.map, f.entries, f.map, f.capacity
        );
    }
    let _ = writeln!(
        out,
        "# HELP skiff_proxy_last_sync_seconds How long the last write of changed Services took.\n# TYPE skiff_proxy_last_sync_seconds gauge\nskiff_proxy_last_sync_seconds {}",
        s.last_sync.as_secs_f64()
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_services_groups_add_up_and_unowned_groups_are_left_out() {
        let web = ServiceRef::new("default", "web");
        let s = Snapshot {
            counters: BTreeMap::from([
                (
                    0,
                    Counters {
                        translations: 5,
                        refusals: 1,
                    },
                ),
                (
                    1,
                    Counters {
                        translations: 2,
                        refusals: 0,
                    },
                ),
                (
                    7,
                    Counters {
                        translations: 100,
                        refusals: 100,
                    },
                ),
            ]),
            owners: BTreeMap::from([(0, web.clone()), (1, web)]),
            occupancy: Occupancy {
                services: 1,
                frontends: 2,
                groups: 2,
                backends: 3,
            },
            fill: vec![Fill {
                map: "SKIFF_AFFINITY",
                entries: 4,
                capacity: 65_536,
            }],
            last_sync: Duration::from_millis(2),
        };
        let text = render(&s);
        assert!(
            text.contains(
                "skiff_proxy_translations_total{namespace=\"default\",service=\"web\"} 7\n"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "skiff_proxy_no_endpoint_refusals_total{namespace=\"default\",service=\"web\"} 1\n"
            ),
            "{text}"
        );
        assert!(!text.contains(" 100\n"), "group 7 has no owner: {text}");
        assert!(text.contains("skiff_proxy_entries{kind=\"backends\"} 3\n"));
        assert!(text.contains("skiff_proxy_lru_entries{map=\"SKIFF_AFFINITY\"} 4\n"));
        assert!(text.contains("skiff_proxy_last_sync_seconds 0.002\n"));
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
