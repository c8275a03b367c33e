//! The vocabulary between the planner and the table: a Service's frontends and its backend
//! groups as plain Rust values, turned into map keys and values in one place.

use std::{
    collections::BTreeMap,
    fmt,
    net::{Ipv4Addr, SocketAddrV4},
};

use skiff_ebpf_common::{
    Backend, FrontendKey,
    service::{
        BACKEND_LOCAL, BACKEND_TERMINATING, KIND_CLUSTER_IP, KIND_EXTERNAL_IP, KIND_LOAD_BALANCER,
        KIND_NODE_PORT, PROTO_TCP, PROTO_UDP, SCOPE_EXTERNAL, SCOPE_INTERNAL,
    },
};

/// A Service by namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceRef {
    /// The namespace.
    pub namespace: String,
    /// The name.
    pub name: String,
}

impl ServiceRef {
    /// `namespace/name`.
    #[must_use]
    pub fn new(namespace: &str, name: &str) -> Self {
        Self {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        }
    }
}

impl fmt::Display for ServiceRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Transport protocol of a Service port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    /// TCP (IP protocol 6).
    Tcp,
    /// UDP (IP protocol 17).
    Udp,
}

impl Protocol {
    /// The IP protocol number.
    #[must_use]
    pub fn number(self) -> u8 {
        match self {
            Self::Tcp => PROTO_TCP,
            Self::Udp => PROTO_UDP,
        }
    }

    fn from_number(n: u8) -> Option<Self> {
        match n {
            PROTO_TCP => Some(Self::Tcp),
            PROTO_UDP => Some(Self::Udp),
            _ => None,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Tcp => "TCP",
            Self::Udp => "UDP",
        })
    }
}

/// Which view of a Service a frontend entry holds (see `skiff_ebpf_common::service`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// The external view, and the only entry when both views agree.
    External,
    /// The internal view, beside an external entry with two scopes.
    Internal,
}

/// What kind of address a frontend is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// `spec.clusterIP(s)`.
    ClusterIp,
    /// A node address with the port's `nodePort`.
    NodePort,
    /// `spec.externalIPs`.
    ExternalIp,
    /// `status.loadBalancer.ingress[].ip`.
    LoadBalancer,
}

impl Kind {
    /// The map's `KIND_*` value.
    #[must_use]
    pub fn number(self) -> u8 {
        match self {
            Self::ClusterIp => KIND_CLUSTER_IP,
            Self::NodePort => KIND_NODE_PORT,
            Self::ExternalIp => KIND_EXTERNAL_IP,
            Self::LoadBalancer => KIND_LOAD_BALANCER,
        }
    }
}

/// A frontend entry's key: address, port, protocol, scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Frontend {
    /// The address clients dial.
    pub address: Ipv4Addr,
    /// The port.
    pub port: u16,
    /// The protocol.
    pub protocol: Protocol,
    /// Which view.
    pub scope: Scope,
}

impl Frontend {
    /// The map key.
    #[must_use]
    pub fn key(self) -> FrontendKey {
        FrontendKey {
            address: u32::from_ne_bytes(self.address.octets()),
            port: self.port.to_be(),
            protocol: self.protocol.number(),
            scope: match self.scope {
                Scope::External => SCOPE_EXTERNAL,
                Scope::Internal => SCOPE_INTERNAL,
            },
        }
    }

    /// The frontend a map key stands for; `None` for a protocol or scope this version does
    /// not write.
    #[must_use]
    pub fn from_key(key: FrontendKey) -> Option<Self> {
        Some(Self {
            address: Ipv4Addr::from(key.address.to_ne_bytes()),
            port: u16::from_be(key.port),
            protocol: Protocol::from_number(key.protocol)?,
            scope: match key.scope {
                SCOPE_EXTERNAL => Scope::External,
                SCOPE_INTERNAL => Scope::Internal,
                _ => return None,
            },
        })
    }
}

impl fmt::Display for Frontend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scope = match self.scope {
            Scope::External => "",
            Scope::Internal => " (internal)",
        };
        write!(f, "{}:{}/{}{scope}", self.address, self.port, self.protocol)
    }
}

/// One group of a Service: the endpoints of one Service port under one traffic policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupKey {
    /// The Service port.
    pub port: u16,
    /// Its protocol.
    pub protocol: Protocol,
    /// Only this node's endpoints (a `Local` traffic policy).
    pub local: bool,
}

/// One endpoint in a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Endpoint {
    /// Address and (target) port.
    pub address: SocketAddrV4,
    /// Runs on this node.
    pub local: bool,
    /// Terminating (a KEP-1669 fallback).
    pub terminating: bool,
}

impl Endpoint {
    /// The map value.
    #[must_use]
    pub fn value(self) -> Backend {
        let mut flags = 0;
        if self.local {
            flags |= BACKEND_LOCAL;
        }
        if self.terminating {
            flags |= BACKEND_TERMINATING;
        }
        Backend {
            address: u32::from_ne_bytes(self.address.ip().octets()),
            port: self.address.port().to_be(),
            flags,
            pad: 0,
        }
    }
}

/// How a frontend entry picks from its group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FrontendEntry {
    /// The group in this Service's [`ServiceEntries::groups`].
    pub group: GroupKey,
    /// What the address is.
    pub kind: Kind,
    /// `FLAG_*` bits of `skiff_ebpf_common::service`.
    pub flags: u16,
    /// `sessionAffinity: ClientIP` timeout in seconds, 0 without.
    pub affinity_timeout: u32,
}

/// Everything one Service puts in the maps.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceEntries {
    /// Its groups with their endpoints (deduplicated, in a stable order).
    pub groups: BTreeMap<GroupKey, Vec<Endpoint>>,
    /// Its frontend entries.
    pub frontends: BTreeMap<Frontend, FrontendEntry>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frontend_keys_are_in_network_byte_order_and_round_trip() {
        let f = Frontend {
            address: Ipv4Addr::new(10, 96, 0, 10),
            port: 80,
            protocol: Protocol::Tcp,
            scope: Scope::Internal,
        };
        let key = f.key();
        assert_eq!(key.address.to_ne_bytes(), [10, 96, 0, 10]);
        assert_eq!(key.port.to_ne_bytes(), [0, 80]);
        assert_eq!((key.protocol, key.scope), (6, SCOPE_INTERNAL));
        assert_eq!(Frontend::from_key(key), Some(f));
    }

    #[test]
    fn endpoint_values_carry_address_port_and_flags() {
        let e = Endpoint {
            address: SocketAddrV4::new(Ipv4Addr::new(10, 244, 1, 5), 8080),
            local: true,
            terminating: true,
        };
        let v = e.value();
        assert_eq!(v.address.to_ne_bytes(), [10, 244, 1, 5]);
        assert_eq!(v.port.to_ne_bytes(), 8080u16.to_be_bytes());
        assert_eq!(v.flags, BACKEND_LOCAL | BACKEND_TERMINATING);
    }
}
