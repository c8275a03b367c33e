//! Pod networking: the node's bridge, per-pod namespaces and veths, IPAM over the node's
//! pod CIDR, and egress masquerade.
