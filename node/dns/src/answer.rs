//! A query answered from the [`Zone`]: the reply message, or the word that the name is
//! somebody else's (forward it) or ends at an alias outside the cluster (chase it).

use std::net::Ipv4Addr;

use hickory_proto::{
    op::{Edns, Message, OpCode, Query, ResponseCode},
    rr::{
        Name, RData, Record, RecordType,
        rdata::{A, CNAME, PTR, SOA, SRV},
    },
};

use crate::zone::{Data, Found, Kind, Zone, normalize};

/// Seconds clients may keep an answer: the default of `CoreDNS`'s `kubernetes` plugin, so a moved
/// Service is seen within seconds.
pub const TTL: u32 = 5;

/// Aliases followed inside the cluster before giving up (a loop of `ExternalName` Services).
const MAX_ALIASES: usize = 8;

/// The largest UDP reply offered to EDNS clients (the DNS flag day's size).
pub const EDNS_PAYLOAD: u16 = 1232;

/// What to do with a query.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// The complete reply.
    Reply(Message),
    /// Not the cluster's name: the query goes upstream as it came.
    Forward,
    /// The reply so far ends at an alias outside the cluster: ask upstream for `target`
    /// and append its answers (and its response code).
    Chase {
        /// The reply with the aliases.
        reply: Message,
        /// The name the last alias points at.
        target: Name,
        /// The type asked for.
        query_type: RecordType,
    },
}

fn kind_of(query_type: RecordType) -> Kind {
    match query_type {
        RecordType::A => Kind::A,
        RecordType::CNAME => Kind::Cname,
        RecordType::SRV => Kind::Srv,
        RecordType::PTR => Kind::Ptr,
        RecordType::ANY => Kind::Any,
        _ => Kind::Other,
    }
}

fn fqdn(name: &str) -> Option<Name> {
    Name::from_ascii(format!("{name}.")).ok()
}

/// One record of the zone in hickory's form.
fn record(owner: &str, data: &Data) -> Option<Record> {
    let rdata = match data {
        Data::A(ip) => RData::A(A(*ip)),
        Data::Cname(target) => RData::CNAME(CNAME(fqdn(target)?)),
        Data::Ptr(target) => RData::PTR(PTR(fqdn(target)?)),
        // CoreDNS's weights: one record per target, equal shares.
        Data::Srv { port, target } => RData::SRV(SRV::new(0, 100, *port, fqdn(target)?)),
    };
    Some(Record::from_rdata(fqdn(owner)?, TTL, rdata))
}

/// The zone's SOA, for the authority section of negative answers (its minimum is the
/// negative-caching TTL).
fn soa(apex: &str, domain: &str) -> Option<Record> {
    let rdata = SOA::new(
        fqdn(&format!("ns.dns.{domain}"))?,
        fqdn(&format!("hostmaster.{domain}"))?,
        1,
        7200,
        1800,
        86400,
        TTL,
    );
    Some(Record::from_rdata(fqdn(apex)?, TTL, RData::SOA(rdata)))
}

/// The apex a negative answer for `name` names in its SOA.
fn apex_of<'a>(zone: &'a Zone, name: &str) -> &'a str {
    if zone.is_cluster_name(name) {
        zone.domain()
    } else {
        "in-addr.arpa"
    }
}

/// An empty reply to `request`, with its question and EDNS echoed.
#[must_use]
pub fn reply_to(request: &Message, code: ResponseCode) -> Message {
    let mut reply = Message::error_msg(request.metadata.id, request.metadata.op_code, code);
    reply.metadata.recursion_desired = request.metadata.recursion_desired;
    reply.metadata.recursion_available = true;
    reply.add_queries(request.queries.iter().cloned());
    if request.edns.is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(EDNS_PAYLOAD);
        reply.set_edns(edns);
    }
    reply
}

/// Answers `request` from `zone`.
#[must_use]
pub fn answer(zone: &Zone, request: &Message) -> Outcome {
    if request.metadata.op_code != OpCode::Query {
        return Outcome::Reply(reply_to(request, ResponseCode::NotImp));
    }
    let [query] = request.queries.as_slice() else {
        return Outcome::Reply(reply_to(request, ResponseCode::FormErr));
    };
    let query_type = query.query_type();
    let kind = kind_of(query_type);
    let mut name = normalize(&query.name().to_ascii());
    let mut reply = reply_to(request, ResponseCode::NoError);
    if name == zone.domain() && matches!(query_type, RecordType::SOA | RecordType::ANY) {
        reply.metadata.authoritative = true;
        reply.add_answers(soa(zone.domain(), zone.domain()));
        return Outcome::Reply(reply);
    }
    for hop in 0..MAX_ALIASES {
        match zone.lookup(&name, kind) {
            Found::NotOurs if hop == 0 => return Outcome::Forward,
            Found::NotOurs => {
                let Some(target) = fqdn(&name) else {
                    break;
                };
                return Outcome::Chase {
                    reply,
                    target,
                    query_type,
                };
            }
            Found::NoData => {
                reply.metadata.authoritative = true;
                reply.add_authorities(soa(apex_of(zone, &name), zone.domain()));
                return Outcome::Reply(reply);
            }
            Found::NxDomain => {
                reply.metadata.authoritative = true;
                reply.metadata.response_code = ResponseCode::NXDomain;
                reply.add_authorities(soa(apex_of(zone, &name), zone.domain()));
                return Outcome::Reply(reply);
            }
            Found::Records(records) => {
                reply.metadata.authoritative = true;
                reply.add_answers(records.iter().filter_map(|(o, d)| record(o, d)));
                let alias = match records.as_slice() {
                    [(_, Data::Cname(target))] if kind != Kind::Cname && kind != Kind::Any => {
                        target.clone()
                    }
                    _ => {
                        add_srv_addresses(zone, &records, &mut reply);
                        return Outcome::Reply(reply);
                    }
                };
                name = alias;
            }
        }
    }
    Outcome::Reply(reply_to(request, ResponseCode::ServFail))
}

/// The addresses of SRV targets, in the additional section as `CoreDNS` gives them.
fn add_srv_addresses(zone: &Zone, records: &[(String, Data)], reply: &mut Message) {
    let mut targets: Vec<&str> = records
        .iter()
        .filter_map(|(_, d)| match d {
            Data::Srv { target, .. } => Some(target.as_str()),
            _ => None,
        })
        .collect();
    targets.sort_unstable();
    targets.dedup();
    for target in targets {
        if let Found::Records(addresses) = zone.lookup(target, Kind::A) {
            reply.add_additionals(addresses.iter().filter_map(|(o, d)| record(o, d)));
        }
    }
}

/// A query for `name` and `query_type`, with recursion desired, for upstream.
#[must_use]
pub fn query(id: u16, name: Name, query_type: RecordType) -> Message {
    let mut message = Message::new(id, hickory_proto::op::MessageType::Query, OpCode::Query);
    message.metadata.recursion_desired = true;
    message.add_query(Query::query(name, query_type));
    message
}

/// The IPv4 addresses in a reply's answers.
#[must_use]
pub fn addresses(reply: &Message) -> Vec<Ipv4Addr> {
    reply
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(A(ip)) => Some(*ip),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use k8s_openapi::{
        api::core::v1::{Service, ServicePort, ServiceSpec},
        apimachinery::pkg::apis::meta::v1::ObjectMeta,
    };

    use super::*;
    use crate::zone::Source;

    fn zone() -> Zone {
        let mut zone = Zone::new("cluster.local");
        for (name, ip, external) in [
            ("api", "10.96.0.20", None),
            ("ext", "", Some("example.com")),
            ("alias", "", Some("api.prod.svc.cluster.local")),
        ] {
            let svc = Service {
                metadata: ObjectMeta {
                    namespace: Some("prod".to_owned()),
                    name: Some(name.to_owned()),
                    ..ObjectMeta::default()
                },
                spec: Some(ServiceSpec {
                    cluster_ip: Some(ip.to_owned()),
                    type_: external.map(|_| "ExternalName".to_owned()),
                    external_name: external.map(str::to_owned),
                    ports: Some(vec![ServicePort {
                        name: Some("http".to_owned()),
                        port: 80,
                        ..ServicePort::default()
                    }]),
                    ..ServiceSpec::default()
                }),
                status: None,
            };
            let records = zone.service_records(&svc, &[]);
            zone.replace(
                &Source::Service {
                    namespace: "prod".to_owned(),
                    name: name.to_owned(),
                },
                records,
            );
        }
        zone
    }

    fn ask(name: &str, query_type: RecordType) -> Outcome {
        let request = query(7, Name::from_ascii(name).unwrap(), query_type);
        answer(&zone(), &request)
    }

    fn reply(outcome: Outcome) -> Message {
        match outcome {
            Outcome::Reply(m) => m,
            other => panic!("expected a reply, got {other:?}"),
        }
    }

    #[test]
    fn an_a_query_gets_the_address_with_a_short_ttl() {
        let m = reply(ask("api.prod.svc.cluster.local.", RecordType::A));
        assert_eq!(m.metadata.id, 7);
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert!(m.metadata.authoritative && m.metadata.recursion_available);
        assert_eq!(addresses(&m), ["10.96.0.20".parse::<Ipv4Addr>().unwrap()]);
        assert_eq!(m.answers[0].ttl, TTL);
    }

    #[test]
    fn nodata_and_nxdomain_carry_the_zones_soa() {
        let m = reply(ask("api.prod.svc.cluster.local.", RecordType::AAAA));
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert!(m.answers.is_empty());
        assert_eq!(m.authorities[0].record_type(), RecordType::SOA);
        let m = reply(ask("nope.prod.svc.cluster.local.", RecordType::A));
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
        assert_eq!(m.authorities[0].name.to_ascii(), "cluster.local.");
    }

    #[test]
    fn srv_answers_carry_their_targets_addresses() {
        let m = reply(ask(
            "_http._tcp.api.prod.svc.cluster.local.",
            RecordType::SRV,
        ));
        assert_eq!(m.answers.len(), 1);
        let mut extra = m.clone();
        extra.answers = m.additionals.clone();
        assert_eq!(
            addresses(&extra),
            ["10.96.0.20".parse::<Ipv4Addr>().unwrap()]
        );
    }

    #[test]
    fn other_names_are_forwarded_and_outside_aliases_chased() {
        assert!(matches!(
            ask("example.com.", RecordType::A),
            Outcome::Forward
        ));
        match ask("ext.prod.svc.cluster.local.", RecordType::A) {
            Outcome::Chase {
                reply,
                target,
                query_type,
            } => {
                assert_eq!(target.to_ascii(), "example.com.");
                assert_eq!(query_type, RecordType::A);
                assert_eq!(reply.answers[0].record_type(), RecordType::CNAME);
            }
            other => panic!("expected a chase, got {other:?}"),
        }
    }

    #[test]
    fn an_alias_inside_the_cluster_is_followed_here() {
        let m = reply(ask("alias.prod.svc.cluster.local.", RecordType::A));
        assert_eq!(m.answers.len(), 2);
        assert_eq!(m.answers[0].record_type(), RecordType::CNAME);
        assert_eq!(addresses(&m), ["10.96.0.20".parse::<Ipv4Addr>().unwrap()]);
    }
}
