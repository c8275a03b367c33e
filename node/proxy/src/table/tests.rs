//! The table against maps in memory that check, after every single write, what a reader of
//! the real maps would see.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddrV4},
};

use skiff_ebpf_common::{
    Backend, FrontendKey, FrontendValue,
    service::{FLAG_TWO_SCOPES, SCOPE_INTERNAL},
};

use super::*;
use crate::{
    entries::{FrontendEntry, Kind, Protocol},
    testing::FakeMaps,
};

fn web() -> ServiceRef {
    ServiceRef::new("default", "web")
}

fn frontend(last: u8, port: u16, scope: Scope) -> Frontend {
    Frontend {
        address: Ipv4Addr::new(10, 96, 0, last),
        port,
        protocol: Protocol::Tcp,
        scope,
    }
}

fn cluster_ip() -> Frontend {
    frontend(10, 80, Scope::External)
}

fn group(local: bool) -> GroupKey {
    GroupKey {
        port: 80,
        protocol: Protocol::Tcp,
        local,
    }
}

fn pod(n: u8) -> Endpoint {
    Endpoint {
        address: SocketAddrV4::new(Ipv4Addr::new(10, 244, 0, n), 8080),
        local: false,
        terminating: false,
    }
}

fn entry(group: GroupKey) -> FrontendEntry {
    FrontendEntry {
        group,
        kind: Kind::ClusterIp,
        flags: 0,
        affinity_timeout: 0,
    }
}

/// One ClusterIP frontend over `pods`.
fn simple(pods: &[u8]) -> ServiceEntries {
    ServiceEntries {
        groups: BTreeMap::from([(group(false), pods.iter().map(|&n| pod(n)).collect())]),
        frontends: BTreeMap::from([(cluster_ip(), entry(group(false)))]),
    }
}

fn addresses(backends: &[Backend]) -> Vec<u8> {
    let mut v: Vec<u8> = backends
        .iter()
        .map(|b| b.address.to_ne_bytes()[3])
        .collect();
    v.sort_unstable();
    v
}

#[test]
fn a_new_service_writes_its_slots_then_its_frontend() {
    let mut t = ServiceTable::new(FakeMaps::default());
    let applied = t.apply(&web(), &simple(&[1, 2, 3])).unwrap();
    // counters + 3 slots + 1 frontend
    assert_eq!(applied.writes, 5);
    assert_eq!(
        addresses(&t.maps().reachable(cluster_ip().key())),
        [1, 2, 3]
    );
    let log = &t.maps().log;
    assert!(log.last().unwrap().starts_with("set_frontend"), "{log:?}");
}

#[test]
fn applying_the_same_entries_again_writes_nothing() {
    let mut t = ServiceTable::new(FakeMaps::default());
    t.apply(&web(), &simple(&[1, 2, 3])).unwrap();
    assert_eq!(t.apply(&web(), &simple(&[3, 2, 1])).unwrap().writes, 0);
}

#[test]
fn adding_one_backend_costs_one_slot_and_the_count() {
    let mut t = ServiceTable::new(FakeMaps::default());
    t.apply(&web(), &simple(&[1, 2])).unwrap();
    let applied = t.apply(&web(), &simple(&[1, 2, 3])).unwrap();
    assert_eq!(applied.writes, 2);
    assert_eq!(
        addresses(&t.maps().reachable(cluster_ip().key())),
        [1, 2, 3]
    );
}

#[test]
fn replacing_a_backend_reuses_its_slot_without_touching_the_frontend() {
    let mut t = ServiceTable::new(FakeMaps::default());
    t.apply(&web(), &simple(&[1, 2, 3])).unwrap();
    let applied = t.apply(&web(), &simple(&[1, 4, 3])).unwrap();
    assert_eq!(applied.writes, 1);
    assert_eq!(
        addresses(&t.maps().reachable(cluster_ip().key())),
        [1, 3, 4]
    );
}

#[test]
fn removing_backends_compacts_the_slots_and_deletes_the_tail() {
    let mut t = ServiceTable::new(FakeMaps::default());
    t.apply(&web(), &simple(&[1, 2, 3, 4, 5])).unwrap();
    t.apply(&web(), &simple(&[4, 5])).unwrap();
    assert_eq!(addresses(&t.maps().reachable(cluster_ip().key())), [4, 5]);
    assert_eq!(t.maps().backends.len(), 2, "tail slots are deleted");
}

#[test]
fn an_endpoint_that_starts_terminating_is_rewritten_in_its_slot() {
    let mut t = ServiceTable::new(FakeMaps::default());
    t.apply(&web(), &simple(&[1, 2])).unwrap();
    let mut entries = simple(&[1, 2]);
    entries.groups.get_mut(&group(false)).unwrap()[1].terminating = true;
    assert_eq!(t.apply(&web(), &entries).unwrap().writes, 1);
    let flags: Vec<u8> = t
        .maps()
        .reachable(cluster_ip().key())
        .iter()
        .map(|b| b.flags)
        .collect();
    assert!(flags.contains(&skiff_ebpf_common::service::BACKEND_TERMINATING));
}

#[test]
fn any_sequence_of_changes_leaves_the_maps_equal_to_the_wanted_set() {
    let mut t = ServiceTable::new(FakeMaps::default());
    let steps: &[&[u8]] = &[
        &[1, 2, 3],
        &[3, 2, 1],
        &[5],
        &[],
        &[1, 2, 3, 4, 5, 6, 7],
        &[7, 1],
        &[2, 4, 6, 8],
        &[8, 6, 4, 2, 9, 10],
        &[10],
        &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12],
        &[12, 3, 11, 5],
        &[3],
    ];
    for step in steps {
        t.apply(&web(), &simple(step)).unwrap();
        let mut wanted = step.to_vec();
        wanted.sort_unstable();
        assert_eq!(
            addresses(&t.maps().reachable(cluster_ip().key())),
            wanted,
            "{step:?}"
        );
        assert_eq!(t.maps().backends.len(), step.len(), "{step:?}");
    }
    // FakeMaps checked after every write that no counted slot was ever missing.
}

#[test]
fn a_service_without_endpoints_keeps_its_frontend_with_no_backend() {
    let mut t = ServiceTable::new(FakeMaps::default());
    t.apply(&web(), &simple(&[])).unwrap();
    assert_eq!(t.maps().frontends[&cluster_ip().key()].count, 0);
}

#[test]
fn removing_a_service_deletes_its_entries_and_counters_and_recycles_its_group() {
    let mut t = ServiceTable::new(FakeMaps::default());
    t.apply(&web(), &simple(&[1, 2])).unwrap();
    let applied = t.remove(&web()).unwrap();
    assert_eq!(applied.released, [cluster_ip()]);
    assert!(t.maps().frontends.is_empty());
    assert!(t.maps().backends.is_empty());
    assert!(t.maps().counters.is_empty());
    let other = ServiceRef::new("default", "other");
    t.apply(&other, &simple(&[1])).unwrap();
    assert_eq!(t.maps().frontends[&cluster_ip().key()].group, 0);
    assert_eq!(t.occupancy().services, 1);
}

#[test]
fn replaying_the_owner_changes_gives_the_group_owners() {
    let mut t = ServiceTable::new(FakeMaps::default());
    let other = ServiceRef::new("default", "other");
    let mut owners: HashMap<u32, ServiceRef> = HashMap::new();
    let mut replay = |t: &mut ServiceTable<FakeMaps>| {
        for (group, owner) in t.take_owner_changes() {
            match owner {
                Some(service) => owners.insert(group, service),
                None => owners.remove(&group),
            };
        }
        assert_eq!(owners, t.group_owners());
    };
    t.apply(&web(), &simple(&[1, 2])).unwrap();
    replay(&mut t);
    // Same groups: nothing to say.
    t.apply(&web(), &simple(&[3])).unwrap();
    assert!(t.take_owner_changes().is_empty());
    // The freed id goes to the next Service within one batch.
    t.remove(&web()).unwrap();
    let dns = ServiceEntries {
        groups: BTreeMap::from([(group(false), vec![pod(9)])]),
        frontends: BTreeMap::from([(frontend(53, 53, Scope::External), entry(group(false)))]),
    };
    t.apply(&other, &dns).unwrap();
    replay(&mut t);
    assert_eq!(t.group_owners().values().collect::<Vec<_>>(), [&other]);
}

#[test]
fn the_occupancy_follows_every_change_and_equals_what_the_maps_hold() {
    let mut t = ServiceTable::new(FakeMaps::default());
    let other = ServiceRef::new("default", "other");
    let held = |t: &ServiceTable<FakeMaps>| Occupancy {
        services: t.occupancy().services,
        frontends: t.maps().frontends.len(),
        groups: t.maps().counters.len(),
        backends: t.maps().backends.len(),
    };
    t.apply(&web(), &simple(&[1, 2, 3])).unwrap();
    assert_eq!(t.occupancy(), held(&t));
    t.apply(&web(), &simple(&[4])).unwrap();
    let dns = ServiceEntries {
        groups: BTreeMap::from([(group(false), vec![pod(9), pod(8)])]),
        frontends: BTreeMap::from([(frontend(53, 53, Scope::External), entry(group(false)))]),
    };
    t.apply(&other, &dns).unwrap();
    assert_eq!(t.occupancy(), held(&t));
    assert_eq!(t.occupancy().backends, 3);
    t.remove(&web()).unwrap();
    assert_eq!(t.occupancy(), held(&t));
    assert_eq!(t.occupancy().services, 1);
}

#[test]
fn a_change_touches_only_its_own_services_entries() {
    let mut t = ServiceTable::new(FakeMaps::default());
    let dns = ServiceRef::new("kube-system", "dns");
    let dns_frontend = frontend(53, 53, Scope::External);
    let dns_entries = ServiceEntries {
        groups: BTreeMap::from([(group(false), vec![pod(9)])]),
        frontends: BTreeMap::from([(dns_frontend, entry(group(false)))]),
    };
    t.apply(&dns, &dns_entries).unwrap();
    let dns_group = t.maps().frontends[&dns_frontend.key()].group;
    t.apply(&web(), &simple(&[1])).unwrap();
    let before = t.maps().log.len();
    t.apply(&web(), &simple(&[2, 3])).unwrap();
    t.remove(&web()).unwrap();
    let dns_key = format!("{:?}", dns_frontend.key());
    for write in &t.maps().log[before..] {
        assert!(
            !write.contains(&format!("group: {dns_group},"))
                && !write.contains(&format!("group {dns_group}"))
                && !write.contains(&dns_key),
            "touched dns: {write}"
        );
    }
    assert_eq!(addresses(&t.maps().reachable(dns_frontend.key())), [9]);
}

#[test]
fn frontends_with_the_same_backends_share_one_group() {
    let mut t = ServiceTable::new(FakeMaps::default());
    let mut entries = simple(&[1, 2]);
    for last in [20, 21, 22] {
        let mut e = entry(group(false));
        e.kind = Kind::NodePort;
        entries
            .frontends
            .insert(frontend(last, 30080, Scope::External), e);
    }
    t.apply(&web(), &entries).unwrap();
    assert_eq!(t.occupancy().groups, 1);
    let mut more = entries.clone();
    more.groups
        .insert(group(false), vec![pod(1), pod(2), pod(3)]);
    let applied = t.apply(&web(), &more).unwrap();
    // one slot, four frontend counts
    assert_eq!(applied.writes, 5);
}

#[test]
fn an_internal_twin_is_written_before_the_external_entry_and_removed_after_it() {
    let mut t = ServiceTable::new(FakeMaps::default());
    let external = frontend(30, 80, Scope::External);
    let internal = frontend(30, 80, Scope::Internal);
    let mut ext = entry(group(true));
    ext.flags = FLAG_TWO_SCOPES;
    let entries = ServiceEntries {
        groups: BTreeMap::from([
            (group(true), vec![pod(1)]),
            (group(false), vec![pod(1), pod(2)]),
        ]),
        frontends: BTreeMap::from([(external, ext), (internal, entry(group(false)))]),
    };
    t.apply(&web(), &entries).unwrap();
    let log = &t.maps().log;
    let int_at = log
        .iter()
        .position(|w| {
            w.starts_with("set_frontend") && w.contains(&format!("scope: {SCOPE_INTERNAL}"))
        })
        .unwrap();
    let ext_at = log
        .iter()
        .position(|w| w.starts_with("set_frontend") && w.contains("scope: 0"))
        .unwrap();
    assert!(int_at < ext_at, "{log:?}");
    assert_eq!(addresses(&t.maps().reachable(internal.key())), [1, 2]);
    assert_eq!(addresses(&t.maps().reachable(external.key())), [1]);

    let before = t.maps().log.len();
    t.remove(&web()).unwrap();
    let log = &t.maps().log[before..];
    let ext_del = log
        .iter()
        .position(|w| w.starts_with("delete_frontend") && w.contains("scope: 0"))
        .unwrap();
    let int_del = log
        .iter()
        .position(|w| w.starts_with("delete_frontend") && w.contains("scope: 1"))
        .unwrap();
    assert!(ext_del < int_del, "{log:?}");
}

#[test]
fn a_frontend_another_service_owns_is_left_to_it_and_released_later() {
    let mut t = ServiceTable::new(FakeMaps::default());
    let other = ServiceRef::new("default", "other");
    t.apply(&web(), &simple(&[1])).unwrap();
    let applied = t.apply(&other, &simple(&[2])).unwrap();
    assert_eq!(applied.conflicts, [(cluster_ip(), web())]);
    assert_eq!(addresses(&t.maps().reachable(cluster_ip().key())), [1]);
    let released = t.remove(&web()).unwrap().released;
    assert_eq!(released, [cluster_ip()]);
    let applied = t.apply(&other, &simple(&[2])).unwrap();
    assert!(applied.conflicts.is_empty());
    assert_eq!(addresses(&t.maps().reachable(cluster_ip().key())), [2]);
    assert_eq!(t.owner(&cluster_ip()), Some(&other));
}

#[test]
fn a_failed_write_is_finished_by_applying_again() {
    for fail_at in 0..8 {
        let mut t = ServiceTable::new(FakeMaps::default());
        t.apply(&web(), &simple(&[1, 2, 3, 4])).unwrap();
        t.maps.fail_at = Some(t.maps.log.len() + fail_at);
        let _ = t.apply(&web(), &simple(&[5, 2, 6]));
        t.maps.fail_at = None;
        t.apply(&web(), &simple(&[5, 2, 6])).unwrap();
        assert_eq!(
            addresses(&t.maps().reachable(cluster_ip().key())),
            [2, 5, 6],
            "failing write {fail_at}"
        );
        assert_eq!(t.maps().backends.len(), 3, "failing write {fail_at}");
    }
}

fn restarted(maps: &FakeMaps) -> ServiceTable<FakeMaps> {
    let copy = FakeMaps {
        frontends: maps.frontends.clone(),
        backends: maps.backends.clone(),
        counters: maps.counters.clone(),
        ..FakeMaps::default()
    };
    ServiceTable::adopt(copy).unwrap()
}

#[test]
fn a_restarted_table_takes_over_its_entries_without_rewriting_them() {
    let mut t = ServiceTable::new(FakeMaps::default());
    t.apply(&web(), &simple(&[1, 2, 3])).unwrap();
    let mut again = restarted(t.maps());
    assert_eq!(again.apply(&web(), &simple(&[1, 2, 3])).unwrap().writes, 0);
    assert_eq!(again.finish_adoption().unwrap(), 0);
    assert_eq!(again.maps().frontends, t.maps().frontends);
    assert_eq!(again.maps().backends, t.maps().backends);
}

#[test]
fn a_restarted_table_changes_only_what_changed_while_it_was_down() {
    let mut t = ServiceTable::new(FakeMaps::default());
    let gone = ServiceRef::new("default", "gone");
    let gone_frontend = frontend(99, 80, Scope::External);
    t.apply(&web(), &simple(&[1, 2, 3])).unwrap();
    t.apply(
        &gone,
        &ServiceEntries {
            groups: BTreeMap::from([(group(false), vec![pod(7)])]),
            frontends: BTreeMap::from([(gone_frontend, entry(group(false)))]),
        },
    )
    .unwrap();
    let mut again = restarted(t.maps());
    let applied = again.apply(&web(), &simple(&[1, 2, 4])).unwrap();
    assert_eq!(applied.writes, 1, "one slot replaced");
    assert_eq!(
        addresses(&again.maps().reachable(gone_frontend.key())),
        [7],
        "unclaimed entries stay until the first sync is complete"
    );
    again.finish_adoption().unwrap();
    assert!(!again.maps().frontends.contains_key(&gone_frontend.key()));
    assert_eq!(again.maps().backends.len(), 3);
    assert_eq!(again.maps().counters.len(), 1);
    // A new group gets a free id, not one in use.
    let other = ServiceRef::new("default", "other");
    let mut entries = simple(&[8]);
    entries.frontends = BTreeMap::from([(frontend(11, 80, Scope::External), entry(group(false)))]);
    again.apply(&other, &entries).unwrap();
    let ids: std::collections::HashSet<u32> =
        again.maps().frontends.values().map(|v| v.group).collect();
    assert_eq!(ids.len(), 2);
}

#[test]
fn adoption_reads_back_entries_of_unknown_shape_and_removes_them() {
    let mut maps = FakeMaps::default();
    let odd = FrontendKey {
        address: 1,
        port: 1,
        protocol: 132,
        scope: 0,
    };
    maps.frontends.insert(
        odd,
        FrontendValue {
            group: 4,
            count: 0,
            affinity_timeout: 0,
            flags: 0,
            kind: 0,
            pad: 0,
        },
    );
    maps.counters.insert(9);
    let mut t = ServiceTable::adopt(maps).unwrap();
    t.finish_adoption().unwrap();
    assert!(t.maps().frontends.is_empty());
    assert!(t.maps().counters.is_empty());
}
