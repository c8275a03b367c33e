//! Service cluster IPs and node ports, handed out without duplicates and taken back when a
//! Service goes, rebuilt from the stored Services at start: the API server's side of the
//! [`Pools`] the Service kind allocates from.

use std::{collections::BTreeSet, net::Ipv4Addr, ops::RangeInclusive, sync::Mutex};

use skiff_resources::{AllocError, Pools};
use skiff_types::Ipv4Cidr;

/// Why a range cannot be allocated from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RangeError {
    /// The Service range is outside /8 to /30 (too large to track, or without room).
    #[error("service cluster IP range {0} must have a prefix between /8 and /30")]
    ServiceRange(Ipv4Cidr),
    /// The node port range is empty.
    #[error("node port range {first}-{last} is empty")]
    NodePorts {
        /// The first port.
        first: u16,
        /// The last port.
        last: u16,
    },
}

/// A range of integers (IPv4 addresses as u32, or ports) with a used set.
#[derive(Debug)]
struct Range {
    first: u32,
    last: u32,
    used: Mutex<BTreeSet<u32>>,
}

impl Range {
    fn new(first: u32, last: u32) -> Self {
        Self {
            first,
            last,
            used: Mutex::new(BTreeSet::new()),
        }
    }

    fn take(&self, wanted: Option<u32>) -> Result<u32, AllocError> {
        let mut used = self
            .used
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(v) = wanted {
            return if used.insert(v) {
                Ok(v)
            } else {
                Err(AllocError::Taken(String::new()))
            };
        }
        // Random start so concurrent creators rarely collide, like the Go allocator.
        let span = self.last - self.first + 1;
        let start = u32::try_from(uuid::Uuid::new_v4().as_u128() % u128::from(span)).unwrap_or(0);
        (0..span)
            .map(|i| self.first + (start + i) % span)
            .find(|v| used.insert(*v))
            .ok_or(AllocError::Full)
    }

    fn release(&self, v: u32) {
        self.used
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&v);
    }
}

/// Cluster IPs from a CIDR (network, first and broadcast addresses never given out).
#[derive(Debug)]
pub struct ClusterIps {
    cidr: Ipv4Cidr,
    range: Range,
}

impl ClusterIps {
    /// Cluster IPs from `cidr`.
    ///
    /// # Errors
    /// When the prefix is outside /8 to /30.
    pub fn new(cidr: Ipv4Cidr) -> Result<Self, RangeError> {
        if !(8..=30).contains(&cidr.prefix()) {
            return Err(RangeError::ServiceRange(cidr));
        }
        let network = u32::from(cidr.network());
        Ok(Self {
            cidr,
            // .1 is reserved for the `kubernetes` Service, which asks for it by name.
            range: Range::new(network + 2, u32::from(cidr.last()) - 1),
        })
    }

    /// The first usable address, for the `kubernetes` Service.
    pub fn first(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.cidr.network()) + 1)
    }

    /// The tenth address, for the `kube-system/kube-dns` Service (kubeadm's choice:
    /// 10.96.0.10 in the default range); `None` in a range too small to hold it.
    pub fn dns(&self) -> Option<Ipv4Addr> {
        let ip = Ipv4Addr::from(u32::from(self.cidr.network()) + 10);
        (self.cidr.contains(ip) && ip != self.cidr.last()).then_some(ip)
    }

    /// Takes `wanted`, or any free address.
    ///
    /// # Errors
    /// When `wanted` is taken or outside the range, or the range is full.
    pub fn allocate(&self, wanted: Option<Ipv4Addr>) -> Result<Ipv4Addr, AllocError> {
        if let Some(w) = wanted
            && (!self.cidr.contains(w) || w == self.cidr.network() || w == self.cidr.last())
        {
            return Err(AllocError::OutOfRange {
                what: "IP",
                range: self.cidr.to_string(),
            });
        }
        self.range
            .take(wanted.map(u32::from))
            .map(Ipv4Addr::from)
            .map_err(|e| match (e, wanted) {
                (AllocError::Taken(_), Some(w)) => AllocError::Taken(format!("IP {w}")),
                (e, _) => e,
            })
    }

    /// Gives an address back.
    pub fn release(&self, ip: Ipv4Addr) {
        self.range.release(u32::from(ip));
    }
}

/// Node ports (30000-32767 by default).
#[derive(Debug)]
pub struct NodePorts {
    range: Range,
}

impl NodePorts {
    /// Node ports from `ports`.
    ///
    /// # Errors
    /// When the range is empty.
    pub fn new(ports: RangeInclusive<u16>) -> Result<Self, RangeError> {
        let (first, last) = (*ports.start(), *ports.end());
        if first > last {
            return Err(RangeError::NodePorts { first, last });
        }
        Ok(Self {
            range: Range::new(u32::from(first), u32::from(last)),
        })
    }

    /// Takes `wanted`, or any free port.
    ///
    /// # Errors
    /// When `wanted` is taken or outside the range, or the range is full.
    pub fn allocate(&self, wanted: Option<u16>) -> Result<u16, AllocError> {
        let w = wanted.map(u32::from);
        if let Some(w) = w
            && !(self.range.first..=self.range.last).contains(&w)
        {
            return Err(AllocError::OutOfRange {
                what: "port",
                range: format!("{}-{}", self.range.first, self.range.last),
            });
        }
        self.range
            .take(w)
            .map(|p| u16::try_from(p).unwrap_or(u16::MAX))
            .map_err(|e| match (e, wanted) {
                (AllocError::Taken(_), Some(p)) => AllocError::Taken(format!("port {p}")),
                (e, _) => e,
            })
    }

    /// Gives a port back.
    pub fn release(&self, port: u16) {
        self.range.release(u32::from(port));
    }
}

/// Both pools, as the Service kind's allocation hooks see them.
#[derive(Debug)]
pub struct ServicePools {
    /// Cluster IPs.
    pub cluster_ips: ClusterIps,
    /// Node ports.
    pub node_ports: NodePorts,
}

impl ServicePools {
    /// Pools over `service_cidr` and `node_ports`.
    ///
    /// # Errors
    /// When either range is unusable.
    pub fn new(
        service_cidr: Ipv4Cidr,
        node_ports: RangeInclusive<u16>,
    ) -> Result<Self, RangeError> {
        Ok(Self {
            cluster_ips: ClusterIps::new(service_cidr)?,
            node_ports: NodePorts::new(node_ports)?,
        })
    }
}

impl Pools for ServicePools {
    fn take_cluster_ip(&self, wanted: Option<Ipv4Addr>) -> Result<Ipv4Addr, AllocError> {
        self.cluster_ips.allocate(wanted)
    }

    fn release_cluster_ip(&self, ip: Ipv4Addr) {
        self.cluster_ips.release(ip);
    }

    fn take_node_port(&self, wanted: Option<u16>) -> Result<u16, AllocError> {
        self.node_ports.allocate(wanted)
    }

    fn release_node_port(&self, port: u16) {
        self.node_ports.release(port);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(text: &str) -> Ipv4Cidr {
        Ipv4Cidr::parse_masked(text).unwrap()
    }

    #[test]
    fn cluster_ips_are_unique_and_inside_the_range() {
        let ips = ClusterIps::new(cidr("10.96.0.0/28")).unwrap();
        let mut seen = BTreeSet::new();
        for _ in 0..13 {
            let ip = ips.allocate(None).unwrap();
            assert!(ip.octets()[3] >= 2 && ip.octets()[3] <= 14, "{ip}");
            assert!(seen.insert(ip));
        }
        assert_eq!(ips.allocate(None), Err(AllocError::Full));
        let one = *seen.iter().next().unwrap();
        ips.release(one);
        assert_eq!(ips.allocate(None).unwrap(), one);
    }

    #[test]
    fn a_requested_ip_that_is_taken_or_outside_is_refused() {
        let ips = ClusterIps::new(cidr("10.96.0.0/12")).unwrap();
        let wanted = "10.96.0.10".parse().unwrap();
        assert_eq!(ips.allocate(Some(wanted)).unwrap(), wanted);
        assert_eq!(
            ips.allocate(Some(wanted)).unwrap_err().to_string(),
            "provided IP 10.96.0.10 is already allocated"
        );
        assert!(matches!(
            ips.allocate(Some("192.168.0.1".parse().unwrap())),
            Err(AllocError::OutOfRange { .. })
        ));
        assert!(matches!(
            ips.allocate(Some("10.111.255.255".parse().unwrap())),
            Err(AllocError::OutOfRange { .. })
        ));
        assert_eq!(ips.first(), "10.96.0.1".parse::<Ipv4Addr>().unwrap());
        assert_eq!(ips.dns(), Some("10.96.0.10".parse::<Ipv4Addr>().unwrap()));
        assert_eq!(ClusterIps::new(cidr("10.96.0.0/29")).unwrap().dns(), None);
    }

    #[test]
    fn ranges_too_large_or_too_small_are_refused() {
        assert!(ClusterIps::new(cidr("10.0.0.0/7")).is_err());
        assert!(ClusterIps::new(cidr("10.0.0.0/31")).is_err());
        let (first, last) = (30001, 30000);
        assert!(NodePorts::new(first..=last).is_err());
    }

    #[test]
    fn node_ports_stay_in_range() {
        let ports = NodePorts::new(30000..=30001).unwrap();
        let a = ports.allocate(None).unwrap();
        let b = ports.allocate(None).unwrap();
        assert_ne!(a, b);
        assert_eq!(ports.allocate(None), Err(AllocError::Full));
        assert!(ports.allocate(Some(80)).is_err());
    }
}
