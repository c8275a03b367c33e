//! Addresses the simulated nodes and their pods report. They are text in status only: no
//! interface has them and no traffic is ever sent to them.

use std::{
    collections::{BTreeSet, HashMap},
    net::Ipv4Addr,
};

use skiff_types::Ipv4Cidr;

/// The `InternalIP` of node `index`: the base address plus the index.
pub(super) fn node_ip(base: Ipv4Addr, index: usize) -> Ipv4Addr {
    let offset = u32::try_from(index).unwrap_or(u32::MAX);
    Ipv4Addr::from(u32::from(base).wrapping_add(offset))
}

/// A node's pod range: its `spec.podCIDR` when node IPAM gave one, otherwise the /24 at
/// `10.244.<index>.0`, continuing through `10.0.0.0/8` for indexes past 255 so every node
/// of one process has a range of its own.
fn node_range(index: usize, pod_cidr: Option<&str>) -> (u32, u32) {
    if let Some(range) = pod_cidr.and_then(parse_v4_cidr) {
        return range;
    }
    let block = (0xF4_00_u32.wrapping_add(u32::try_from(index).unwrap_or(0))) & 0xFFFF;
    ((10 << 24) | (block << 8), 256)
}

/// An IPv4 CIDR as (first address, size); `None` for IPv6 or ranges too small for pods.
fn parse_v4_cidr(cidr: &str) -> Option<(u32, u32)> {
    let cidr = Ipv4Cidr::parse_masked(cidr).ok()?;
    if !(8..=29).contains(&cidr.prefix()) {
        return None;
    }
    Some((u32::from(cidr.network()), u32::try_from(cidr.size()).ok()?))
}

/// One node's pod range and the addresses handed out from it.
#[derive(Debug)]
struct NodeRange {
    first: u32,
    size: u32,
    used: BTreeSet<u32>,
    /// Where the next search starts, so a freed address is not reused at once.
    cursor: u32,
}

impl NodeRange {
    fn contains(&self, ip: u32) -> bool {
        ip.wrapping_sub(self.first) < self.size
    }

    fn allocate(&mut self) -> Option<Ipv4Addr> {
        // Offsets 0 (network), 1 (the gateway a CNI would take) and size-1 (broadcast)
        // are never handed out.
        let usable = self.size.checked_sub(3)?;
        for step in 0..usable {
            let offset = 2 + (self.cursor + step) % usable;
            let ip = self.first + offset;
            if self.used.insert(ip) {
                self.cursor = (self.cursor + step + 1) % usable;
                return Some(Ipv4Addr::from(ip));
            }
        }
        None
    }
}

/// Pod addresses per node, unique within each node's range.
#[derive(Debug, Default)]
pub(super) struct PodIps {
    nodes: HashMap<usize, NodeRange>,
}

impl PodIps {
    fn range(&mut self, index: usize, pod_cidr: Option<&str>) -> &mut NodeRange {
        let (first, size) = node_range(index, pod_cidr);
        let range = self.nodes.entry(index).or_insert_with(|| NodeRange {
            first,
            size,
            used: BTreeSet::new(),
            cursor: 0,
        });
        // The node got a podCIDR since: hand out addresses from it from now on.
        if (range.first, range.size) != (first, size) {
            *range = NodeRange {
                first,
                size,
                used: BTreeSet::new(),
                cursor: 0,
            };
        }
        range
    }

    /// A free address of node `index`, or `None` when its range is full.
    pub(super) fn allocate(&mut self, index: usize, pod_cidr: Option<&str>) -> Option<Ipv4Addr> {
        self.range(index, pod_cidr).allocate()
    }

    /// Marks an address a pod already has (found after a restart) as taken.
    pub(super) fn reserve(&mut self, index: usize, pod_cidr: Option<&str>, ip: Ipv4Addr) {
        let range = self.range(index, pod_cidr);
        if range.contains(u32::from(ip)) {
            range.used.insert(u32::from(ip));
        }
    }

    /// Gives an address back.
    pub(super) fn release(&mut self, index: usize, ip: Ipv4Addr) {
        if let Some(range) = self.nodes.get_mut(&index) {
            range.used.remove(&u32::from(ip));
        }
    }

    /// Forgets a node that is no longer simulated.
    pub(super) fn forget(&mut self, index: usize) {
        self.nodes.remove(&index);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_addresses_count_up_from_the_base() {
        let base = Ipv4Addr::new(127, 64, 0, 1);
        assert_eq!(node_ip(base, 0), Ipv4Addr::new(127, 64, 0, 1));
        assert_eq!(node_ip(base, 300), Ipv4Addr::new(127, 64, 1, 45));
    }

    #[test]
    fn pods_without_a_pod_cidr_get_10_244_node_x() {
        let mut ips = PodIps::default();
        assert_eq!(ips.allocate(3, None), Some(Ipv4Addr::new(10, 244, 3, 2)));
        assert_eq!(ips.allocate(3, None), Some(Ipv4Addr::new(10, 244, 3, 3)));
        assert_eq!(ips.allocate(4, None), Some(Ipv4Addr::new(10, 244, 4, 2)));
    }

    #[test]
    fn every_node_of_five_thousand_has_its_own_range() {
        let mut seen = BTreeSet::new();
        for index in 0..5000 {
            assert!(seen.insert(node_range(index, None).0), "node {index}");
        }
    }

    #[test]
    fn a_node_pod_cidr_is_used_when_there_is_one() {
        let mut ips = PodIps::default();
        let ip = ips.allocate(0, Some("10.9.8.0/24"));
        assert_eq!(ip, Some(Ipv4Addr::new(10, 9, 8, 2)));
        assert_eq!(
            ips.allocate(0, Some("fd00::/64")),
            Some(Ipv4Addr::new(10, 244, 0, 2))
        );
    }

    #[test]
    fn addresses_are_unique_until_released_and_a_full_range_says_so() {
        let mut ips = PodIps::default();
        let cidr = Some("10.1.0.0/29");
        let got: Vec<_> = (0..5).filter_map(|_| ips.allocate(0, cidr)).collect();
        assert_eq!(got.len(), 5, "a /29 has five pod addresses: {got:?}");
        assert_eq!(ips.allocate(0, cidr), None);
        ips.release(0, got[2]);
        assert_eq!(ips.allocate(0, cidr), Some(got[2]));
    }

    #[test]
    fn reserved_addresses_are_not_handed_out_again() {
        let mut ips = PodIps::default();
        ips.reserve(1, None, Ipv4Addr::new(10, 244, 1, 2));
        assert_eq!(ips.allocate(1, None), Some(Ipv4Addr::new(10, 244, 1, 3)));
    }
}
