//! The resolvers names outside the cluster go to: the node's own (its resolv.conf), or the
//! ones the operator names.

use std::net::{IpAddr, SocketAddr};

/// The port resolvers listen on.
pub const PORT: u16 = 53;

/// The nameservers of a resolv.conf text, in order, on port 53 (unless an entry names its
/// own port, `addr:port`, as the operator's flag may).
#[must_use]
pub fn from_resolv_conf(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next() == Some("nameserver"))
                .then(|| words.next())
                .flatten()
        })
        .filter_map(parse)
        .collect()
}

/// `addr` or `addr:port`.
#[must_use]
pub fn parse(text: &str) -> Option<SocketAddr> {
    text.parse::<SocketAddr>().ok().or_else(|| {
        text.parse::<IpAddr>()
            .ok()
            .map(|ip| SocketAddr::new(ip, PORT))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nameservers_are_read_in_order_on_port_53() {
        let text = "# comment\nsearch example.org\nnameserver 192.0.2.1\nnameserver ::1\noptions ndots:2\nnameserver bogus\n";
        assert_eq!(
            from_resolv_conf(text),
            [
                "192.0.2.1:53".parse::<SocketAddr>().unwrap(),
                "[::1]:53".parse().unwrap()
            ]
        );
        assert_eq!(
            parse("10.0.0.1:5353"),
            Some("10.0.0.1:5353".parse().unwrap())
        );
    }
}
