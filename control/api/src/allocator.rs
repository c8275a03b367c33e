//! Service cluster IPs and node ports, handed out without duplicates and taken back when a
//! Service goes, rebuilt from the stored Services at start.

use std::{collections::BTreeSet, net::Ipv4Addr, sync::Mutex};

use thiserror::Error;

/// Why an address or port could not be given.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum AllocError {
    /// The requested one is in use.
    #[error("provided {0} is already allocated")]
    Taken(String),
    /// The requested one is outside the range.
    #[error("provided {what} is not in the valid range. The range of valid {what}s is {range}")]
    OutOfRange {
        /// `IP` or `port`.
        what: &'static str,
        /// The configured range.
        range: String,
    },
    /// Nothing is left.
    #[error("range is full")]
    Full,
    /// The range flag does not parse.
    #[error("invalid range {0:?}")]
    BadRange(String),
}

/// A range of integers (IPv4 addresses as u32, or ports) with a used set.
#[derive(Debug)]
struct Range {
    first: u32,
    last: u32,
    used: Mutex<BTreeSet<u32>>,
}

impl Range {
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
    cidr: String,
    network: u32,
    mask: u32,
    range: Range,
}

impl ClusterIps {
    pub fn new(cidr: &str) -> Result<Self, AllocError> {
        let bad = || AllocError::BadRange(cidr.to_owned());
        let (ip, bits) = cidr.split_once('/').ok_or_else(bad)?;
        let ip: Ipv4Addr = ip.parse().map_err(|_| bad())?;
        let bits: u32 = bits.parse().map_err(|_| bad())?;
        if !(8..=30).contains(&bits) {
            return Err(bad());
        }
        let mask = u32::MAX << (32 - bits);
        let network = u32::from(ip) & mask;
        Ok(Self {
            cidr: cidr.to_owned(),
            network,
            mask,
            // .1 is reserved for the `kubernetes` Service, which asks for it by name.
            range: Range {
                first: network + 2,
                last: (network | !mask) - 1,
                used: Mutex::new(BTreeSet::new()),
            },
        })
    }

    /// The first usable address, for the `kubernetes` Service.
    pub fn first(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.network + 1)
    }

    pub fn allocate(&self, wanted: Option<Ipv4Addr>) -> Result<Ipv4Addr, AllocError> {
        let wanted = wanted.map(u32::from);
        if let Some(w) = wanted
            && (w & self.mask != self.network
                || w == self.network
                || w == self.network | !self.mask)
        {
            return Err(AllocError::OutOfRange {
                what: "IP",
                range: self.cidr.clone(),
            });
        }
        self.range
            .take(wanted)
            .map(Ipv4Addr::from)
            .map_err(|e| match (e, wanted) {
                (AllocError::Taken(_), Some(w)) => {
                    AllocError::Taken(format!("IP {}", Ipv4Addr::from(w)))
                }
                (e, _) => e,
            })
    }

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
    pub fn new(first: u16, last: u16) -> Self {
        Self {
            range: Range {
                first: u32::from(first),
                last: u32::from(last),
                used: Mutex::new(BTreeSet::new()),
            },
        }
    }

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

    pub fn release(&self, port: u16) {
        self.range.release(u32::from(port));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_ips_are_unique_and_inside_the_range() {
        let ips = ClusterIps::new("10.96.0.0/28").unwrap();
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
        let ips = ClusterIps::new("10.96.0.0/12").unwrap();
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
        assert_eq!(ips.first(), "10.96.0.1".parse::<Ipv4Addr>().unwrap());
    }

    #[test]
    fn node_ports_stay_in_range() {
        let ports = NodePorts::new(30000, 30001);
        let a = ports.allocate(None).unwrap();
        let b = ports.allocate(None).unwrap();
        assert_ne!(a, b);
        assert_eq!(ports.allocate(None), Err(AllocError::Full));
        assert!(ports.allocate(Some(80)).is_err());
    }
}
