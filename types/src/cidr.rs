//! IPv4 networks in CIDR notation: one parser for pod CIDRs, the cluster CIDR and the
//! Service range.

use std::{fmt, net::Ipv4Addr, str::FromStr};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a text is not an IPv4 CIDR.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    /// Not `address/prefix`, the address is not IPv4, or the prefix is over 32.
    #[error("invalid CIDR {0:?}: want an IPv4 network such as 10.244.0.0/16")]
    Malformed(String),
    /// Bits below the prefix are set (`10.244.1.5/24`) where a network address is needed.
    #[error("invalid CIDR {0:?}: host bits are set (the network address is {1})")]
    HostBits(String, Ipv4Cidr),
}

/// An IPv4 network: a network address with its host bits clear and a prefix length.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ipv4Cidr {
    network: u32,
    prefix: u8,
}

impl Ipv4Cidr {
    /// The network of `prefix` bits that holds `addr` (host bits cleared).
    ///
    /// # Errors
    /// When `prefix` is over 32.
    pub fn containing(addr: Ipv4Addr, prefix: u8) -> Result<Self, CidrError> {
        if prefix > 32 {
            return Err(CidrError::Malformed(format!("{addr}/{prefix}")));
        }
        Ok(Self {
            network: u32::from(addr) & mask(prefix),
            prefix,
        })
    }

    /// Parses `a.b.c.d/n` and clears the host bits, as Go's `net.ParseCIDR` does for
    /// flags such as `--cluster-cidr` (`10.244.7.9/16` is `10.244.0.0/16`).
    ///
    /// # Errors
    /// When the text is not an IPv4 CIDR.
    pub fn parse_masked(text: &str) -> Result<Self, CidrError> {
        let malformed = || CidrError::Malformed(text.to_owned());
        let (addr, prefix) = text.trim().split_once('/').ok_or_else(malformed)?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| malformed())?;
        // `u8::from_str` takes a leading `+`; a prefix is digits only.
        if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_digit()) {
            return Err(malformed());
        }
        let prefix: u8 = prefix.parse().map_err(|_| malformed())?;
        Self::containing(addr, prefix).map_err(|_| malformed())
    }

    /// The network address.
    #[must_use]
    pub fn network(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.network)
    }

    /// The prefix length.
    #[must_use]
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// The netmask as a number (`255.255.255.0` is `0xffff_ff00`).
    #[must_use]
    pub fn mask(&self) -> u32 {
        mask(self.prefix)
    }

    /// The last address (the broadcast address of the network).
    #[must_use]
    pub fn last(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.network | !self.mask())
    }

    /// How many addresses the network spans, network and broadcast included.
    #[must_use]
    pub fn size(&self) -> u64 {
        1_u64 << (32 - u32::from(self.prefix))
    }

    /// Whether `addr` is inside the network.
    #[must_use]
    pub fn contains(&self, addr: Ipv4Addr) -> bool {
        u32::from(addr) & self.mask() == self.network
    }

    /// Whether `other` lies entirely inside this network.
    #[must_use]
    pub fn covers(&self, other: &Self) -> bool {
        other.prefix >= self.prefix && self.contains(other.network())
    }

    /// Whether the two networks share any address.
    #[must_use]
    pub fn overlaps(&self, other: &Self) -> bool {
        self.covers(other) || other.covers(self)
    }

    /// The address `offset` places after the network address, if still inside.
    #[must_use]
    pub fn nth(&self, offset: u64) -> Option<Ipv4Addr> {
        (offset < self.size())
            .then(|| u32::try_from(u64::from(self.network) + offset).ok())
            .flatten()
            .map(Ipv4Addr::from)
    }

    /// How far `addr` is from the network address, if inside.
    #[must_use]
    pub fn offset_of(&self, addr: Ipv4Addr) -> Option<u64> {
        self.contains(addr)
            .then(|| u64::from(u32::from(addr) - self.network))
    }

    /// The `index`-th subnet of `prefix` bits inside this network (node IPAM's split of the
    /// cluster CIDR into per-node pod CIDRs).
    #[must_use]
    pub fn subnet(&self, prefix: u8, index: u64) -> Option<Self> {
        if prefix < self.prefix || prefix > 32 {
            return None;
        }
        if index >= 1_u64 << (prefix - self.prefix) {
            return None;
        }
        let base = u64::from(self.network) + index * (1_u64 << (32 - u32::from(prefix)));
        Some(Self {
            network: u32::try_from(base).ok()?,
            prefix,
        })
    }

    /// How many subnets of `prefix` bits fit in this network (0 when `prefix` is shorter).
    #[must_use]
    pub fn subnet_count(&self, prefix: u8) -> u64 {
        if prefix < self.prefix || prefix > 32 {
            0
        } else {
            1_u64 << (prefix - self.prefix)
        }
    }
}

fn mask(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix))
    }
}

/// Parses `a.b.c.d/n` strictly: the host bits must be clear, as the API requires of
/// `spec.podCIDR`.
impl FromStr for Ipv4Cidr {
    type Err = CidrError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let masked = Self::parse_masked(text)?;
        let (addr, _) = text.trim().split_once('/').unwrap_or_default();
        if addr.parse::<Ipv4Addr>().ok() == Some(masked.network()) {
            Ok(masked)
        } else {
            Err(CidrError::HostBits(text.to_owned(), masked))
        }
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network(), self.prefix)
    }
}

impl fmt::Debug for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Serialize for Ipv4Cidr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Ipv4Cidr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(text: &str) -> Ipv4Cidr {
        text.parse().expect("a CIDR")
    }

    #[test]
    fn strict_parse_reads_network_and_prefix() {
        let c = cidr("10.244.1.0/24");
        assert_eq!(c.network(), Ipv4Addr::new(10, 244, 1, 0));
        assert_eq!(c.prefix(), 24);
        assert_eq!(c.size(), 256);
        assert_eq!(c.last(), Ipv4Addr::new(10, 244, 1, 255));
        assert_eq!(c.to_string(), "10.244.1.0/24");
        assert_eq!(cidr("0.0.0.0/0").size(), 1 << 32);
        assert_eq!(cidr("10.0.0.7/32").size(), 1);
    }

    #[test]
    fn strict_parse_refuses_host_bits_and_names_the_network() {
        let err = "10.244.1.5/24".parse::<Ipv4Cidr>().unwrap_err();
        assert_eq!(
            err,
            CidrError::HostBits("10.244.1.5/24".into(), cidr("10.244.1.0/24"))
        );
        assert!(err.to_string().contains("10.244.1.0/24"));
    }

    #[test]
    fn malformed_text_is_refused() {
        for bad in [
            "",
            "10.0.0.0",
            "10.0.0.0/",
            "10.0.0.0/33",
            "10.0.0/8",
            "fd00::/8",
            "10.0.0.0/+8",
            "10.0.0.0/ 8",
            "x/8",
        ] {
            assert!(
                matches!(Ipv4Cidr::parse_masked(bad), Err(CidrError::Malformed(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn masked_parse_clears_host_bits() {
        assert_eq!(
            Ipv4Cidr::parse_masked("10.244.7.9/16").unwrap(),
            cidr("10.244.0.0/16")
        );
        assert_eq!(
            Ipv4Cidr::parse_masked(" 10.96.0.0/12 ").unwrap(),
            cidr("10.96.0.0/12")
        );
    }

    #[test]
    fn membership_and_offsets() {
        let c = cidr("10.96.0.0/12");
        assert!(c.contains(Ipv4Addr::new(10, 111, 255, 255)));
        assert!(!c.contains(Ipv4Addr::new(10, 112, 0, 0)));
        assert_eq!(c.nth(10), Some(Ipv4Addr::new(10, 96, 0, 10)));
        assert_eq!(c.nth(c.size()), None);
        assert_eq!(c.offset_of(Ipv4Addr::new(10, 96, 1, 1)), Some(257));
        assert_eq!(c.offset_of(Ipv4Addr::new(11, 0, 0, 0)), None);
        assert!(c.covers(&cidr("10.100.0.0/16")));
        assert!(!cidr("10.100.0.0/16").covers(&c));
        assert!(cidr("10.100.0.0/16").overlaps(&c));
        assert!(!cidr("10.244.0.0/16").overlaps(&c));
    }

    #[test]
    fn subnets_split_the_network_in_order() {
        let c = cidr("10.244.0.0/16");
        assert_eq!(c.subnet_count(24), 256);
        assert_eq!(c.subnet(24, 0), Some(cidr("10.244.0.0/24")));
        assert_eq!(c.subnet(24, 7), Some(cidr("10.244.7.0/24")));
        assert_eq!(c.subnet(24, 256), None);
        assert_eq!(c.subnet(8, 0), None);
        assert_eq!(c.subnet_count(8), 0);
        assert_eq!(
            cidr("255.255.255.0/24").subnet(32, 255),
            Some(cidr("255.255.255.255/32"))
        );
    }

    #[test]
    fn serde_uses_the_text_form() {
        let c = cidr("10.42.0.0/16");
        assert_eq!(serde_json::to_string(&c).unwrap(), "\"10.42.0.0/16\"");
        assert_eq!(
            serde_json::from_str::<Ipv4Cidr>("\"10.42.0.0/16\"").unwrap(),
            c
        );
        assert!(serde_json::from_str::<Ipv4Cidr>("\"10.42.0.1/16\"").is_err());
    }
}
