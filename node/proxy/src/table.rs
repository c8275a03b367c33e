//! Which backend sits in which slot of which Service, changed with the fewest map writes so
//! one Service change touches only its own entries and no reader sees a removed backend
//! once the change is done.

use std::{
    collections::{BTreeMap, HashMap},
    net::{Ipv4Addr, SocketAddrV4},
};

use skiff_ebpf_common::{Backend, BackendKey, ServiceKey, ServiceValue};

use super::maps::{MapsError, ServiceMaps};

/// Transport protocol of a Service port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    /// TCP (IP protocol 6).
    Tcp,
    /// UDP (IP protocol 17).
    Udp,
}

impl Protocol {
    fn number(self) -> u8 {
        match self {
            Self::Tcp => 6,
            Self::Udp => 17,
        }
    }
}

/// A Service frontend: VIP, port, protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Frontend {
    /// The Service's virtual IP.
    pub vip: Ipv4Addr,
    /// The Service port.
    pub port: u16,
    /// The port's protocol.
    pub protocol: Protocol,
}

impl Frontend {
    fn key(self) -> ServiceKey {
        ServiceKey {
            vip: u32::from_ne_bytes(self.vip.octets()),
            port: self.port.to_be(),
            protocol: self.protocol.number(),
            pad: 0,
        }
    }
}

fn backend_value(addr: SocketAddrV4) -> Backend {
    Backend {
        ip: u32::from_ne_bytes(addr.ip().octets()),
        port: addr.port().to_be(),
        pad: 0,
    }
}

#[derive(Debug)]
struct Entry {
    id: u32,
    slots: Vec<SocketAddrV4>,
}

/// The node's Services and their backend slots, mirrored into [`ServiceMaps`].
#[derive(Debug)]
pub struct ServiceTable<M> {
    maps: M,
    services: BTreeMap<Frontend, Entry>,
    free_ids: Vec<u32>,
    next_id: u32,
}

impl<M: ServiceMaps> ServiceTable<M> {
    /// A table with no Services over (empty) maps.
    pub fn new(maps: M) -> Self {
        Self {
            maps,
            services: BTreeMap::new(),
            free_ids: Vec::new(),
            next_id: 0,
        }
    }

    /// The maps underneath.
    pub fn maps(&self) -> &M {
        &self.maps
    }

    /// The backends of a Service in slot order.
    pub fn backends(&self, frontend: Frontend) -> Option<&[SocketAddrV4]> {
        self.services.get(&frontend).map(|e| e.slots.as_slice())
    }

    /// Makes `frontend` balance over exactly `backends` (duplicates ignored). An empty list
    /// keeps the Service and makes connections to it fail, as kube-proxy does.
    ///
    /// # Errors
    /// When a map write fails; the table then still describes what the maps hold up to
    /// the failed write only for this Service, so callers retry the whole Service.
    ///
    /// # Panics
    /// Never in practice: only if a Service had more than `u32::MAX` backends.
    pub fn set_backends(
        &mut self,
        frontend: Frontend,
        backends: &[SocketAddrV4],
    ) -> Result<(), MapsError> {
        let mut wanted: Vec<SocketAddrV4> = Vec::with_capacity(backends.len());
        for b in backends {
            if !wanted.contains(b) {
                wanted.push(*b);
            }
        }
        let key = frontend.key();
        let Some(entry) = self.services.get_mut(&frontend) else {
            let id = self.free_ids.pop().unwrap_or_else(|| {
                self.next_id += 1;
                self.next_id - 1
            });
            // Slots first, then the frontend: a reader never finds a slot missing.
            for (slot, addr) in wanted.iter().enumerate() {
                self.maps
                    .set_backend(slot_key(id, slot), backend_value(*addr))?;
            }
            self.maps
                .set_service(key, service_value(id, wanted.len()))?;
            self.services.insert(frontend, Entry { id, slots: wanted });
            return Ok(());
        };
        let id = entry.id;
        let old_len = entry.slots.len();
        let new_len = wanted.len();
        let position: HashMap<SocketAddrV4, usize> = entry
            .slots
            .iter()
            .enumerate()
            .map(|(i, a)| (*a, i))
            .collect();
        let mut additions = wanted.iter().filter(|a| !position.contains_key(a)).copied();
        let mut slots = entry.slots.clone();
        // Holes: slots whose backend is gone. Refill them with additions first.
        let holes: Vec<usize> = (0..old_len)
            .filter(|&i| !wanted.contains(&entry.slots[i]))
            .collect();
        let mut unfilled = Vec::new();
        for hole in holes {
            if let Some(addr) = additions.next() {
                self.maps
                    .set_backend(slot_key(id, hole), backend_value(addr))?;
                slots[hole] = addr;
            } else {
                unfilled.push(hole);
            }
        }
        // More additions than holes: append behind the live slots.
        for addr in additions {
            self.maps
                .set_backend(slot_key(id, slots.len()), backend_value(addr))?;
            slots.push(addr);
        }
        // More removals than additions: move kept backends from the tail into the holes
        // below the new length, then shrink.
        let below: Vec<usize> = unfilled.iter().copied().filter(|&h| h < new_len).collect();
        let mut tail_kept = (new_len..slots.len()).filter(|&i| !unfilled.contains(&i));
        for hole in below {
            let from = tail_kept
                .next()
                .expect("a kept backend sits above every hole below the new length");
            let addr = slots[from];
            self.maps
                .set_backend(slot_key(id, hole), backend_value(addr))?;
            slots[hole] = addr;
        }
        slots.truncate(new_len);
        if new_len != old_len {
            self.maps.set_service(key, service_value(id, new_len))?;
        }
        for slot in new_len..old_len {
            self.maps.delete_backend(slot_key(id, slot))?;
        }
        entry.slots = slots;
        Ok(())
    }

    /// Removes a Service and its slots. Unknown Services are ignored.
    ///
    /// # Errors
    /// When a map deletion fails.
    pub fn remove(&mut self, frontend: Frontend) -> Result<(), MapsError> {
        let Some(entry) = self.services.remove(&frontend) else {
            return Ok(());
        };
        // Frontend first, so no reader looks up a slot that is about to vanish.
        self.maps.delete_service(frontend.key())?;
        for slot in 0..entry.slots.len() {
            self.maps.delete_backend(slot_key(entry.id, slot))?;
        }
        self.free_ids.push(entry.id);
        Ok(())
    }
}

fn slot_key(service_id: u32, slot: usize) -> BackendKey {
    BackendKey {
        service_id,
        slot: u32::try_from(slot).expect("slot count fits the map's u32 slots"),
    }
}

fn service_value(id: u32, count: usize) -> ServiceValue {
    ServiceValue {
        id,
        count: u32::try_from(count).expect("backend count fits u32"),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    /// Maps in memory that count every write, to check the table's incremental promise.
    #[derive(Default, Debug)]
    struct FakeMaps {
        services: HashMap<ServiceKey, ServiceValue>,
        backends: HashMap<BackendKey, Backend>,
        writes: usize,
    }

    impl ServiceMaps for FakeMaps {
        fn set_service(&mut self, key: ServiceKey, value: ServiceValue) -> Result<(), MapsError> {
            self.writes += 1;
            self.services.insert(key, value);
            Ok(())
        }
        fn delete_service(&mut self, key: ServiceKey) -> Result<(), MapsError> {
            self.writes += 1;
            self.services.remove(&key);
            Ok(())
        }
        fn set_backend(&mut self, key: BackendKey, backend: Backend) -> Result<(), MapsError> {
            self.writes += 1;
            self.backends.insert(key, backend);
            Ok(())
        }
        fn delete_backend(&mut self, key: BackendKey) -> Result<(), MapsError> {
            self.writes += 1;
            self.backends.remove(&key);
            Ok(())
        }
    }

    impl FakeMaps {
        /// What the kernel program would pick from: the backends of a frontend's slots.
        fn reachable(&self, frontend: Frontend) -> Vec<SocketAddrV4> {
            let Some(svc) = self.services.get(&frontend.key()) else {
                return Vec::new();
            };
            let mut out: Vec<SocketAddrV4> = (0..svc.count)
                .map(|slot| {
                    let b = self.backends[&BackendKey {
                        service_id: svc.id,
                        slot,
                    }];
                    SocketAddrV4::new(Ipv4Addr::from(b.ip.to_ne_bytes()), u16::from_be(b.port))
                })
                .collect();
            out.sort();
            out
        }
    }

    fn web() -> Frontend {
        Frontend {
            vip: Ipv4Addr::new(10, 96, 0, 10),
            port: 80,
            protocol: Protocol::Tcp,
        }
    }

    fn pod(n: u8) -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::new(10, 244, 0, n), 8080)
    }

    fn sorted(mut v: Vec<SocketAddrV4>) -> Vec<SocketAddrV4> {
        v.sort();
        v
    }

    #[test]
    fn new_service_writes_each_slot_then_the_frontend() {
        let mut t = ServiceTable::new(FakeMaps::default());
        t.set_backends(web(), &[pod(1), pod(2), pod(3)]).unwrap();
        assert_eq!(t.maps().writes, 4);
        assert_eq!(t.maps().reachable(web()), vec![pod(1), pod(2), pod(3)]);
    }

    #[test]
    fn keys_are_in_network_byte_order() {
        let mut t = ServiceTable::new(FakeMaps::default());
        t.set_backends(web(), &[pod(1)]).unwrap();
        let key = *t.maps().services.keys().next().unwrap();
        assert_eq!(key.vip.to_ne_bytes(), [10, 96, 0, 10]);
        assert_eq!(key.port.to_ne_bytes(), [0, 80]);
        assert_eq!(key.protocol, 6);
    }

    #[test]
    fn adding_one_backend_costs_one_slot_and_the_count() {
        let mut t = ServiceTable::new(FakeMaps::default());
        t.set_backends(web(), &[pod(1), pod(2)]).unwrap();
        let before = t.maps().writes;
        t.set_backends(web(), &[pod(1), pod(2), pod(3)]).unwrap();
        assert_eq!(t.maps().writes - before, 2);
        assert_eq!(t.maps().reachable(web()), vec![pod(1), pod(2), pod(3)]);
    }

    #[test]
    fn replacing_a_backend_reuses_its_slot_without_touching_the_frontend() {
        let mut t = ServiceTable::new(FakeMaps::default());
        t.set_backends(web(), &[pod(1), pod(2), pod(3)]).unwrap();
        let before = t.maps().writes;
        t.set_backends(web(), &[pod(1), pod(4), pod(3)]).unwrap();
        assert_eq!(t.maps().writes - before, 1);
        assert_eq!(t.maps().reachable(web()), vec![pod(1), pod(3), pod(4)]);
    }

    #[test]
    fn removing_backends_compacts_slots_and_deletes_the_tail() {
        let mut t = ServiceTable::new(FakeMaps::default());
        t.set_backends(web(), &[pod(1), pod(2), pod(3), pod(4), pod(5)])
            .unwrap();
        t.set_backends(web(), &[pod(4), pod(5)]).unwrap();
        assert_eq!(t.maps().reachable(web()), vec![pod(4), pod(5)]);
        assert_eq!(t.maps().backends.len(), 2, "tail slots are deleted");
        assert_eq!(
            sorted(t.backends(web()).unwrap().to_vec()),
            vec![pod(4), pod(5)]
        );
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
        ];
        for step in steps {
            let wanted: Vec<SocketAddrV4> = step.iter().map(|&n| pod(n)).collect();
            t.set_backends(web(), &wanted).unwrap();
            assert_eq!(
                t.maps().reachable(web()),
                sorted(wanted.clone()),
                "{step:?}"
            );
            assert_eq!(t.maps().backends.len(), wanted.len(), "{step:?}");
        }
    }

    #[test]
    fn a_service_without_backends_stays_so_connections_are_refused() {
        let mut t = ServiceTable::new(FakeMaps::default());
        t.set_backends(web(), &[]).unwrap();
        let svc = t.maps().services[&web().key()];
        assert_eq!(svc.count, 0);
    }

    #[test]
    fn removing_a_service_deletes_its_entries_and_recycles_its_id() {
        let mut t = ServiceTable::new(FakeMaps::default());
        t.set_backends(web(), &[pod(1), pod(2)]).unwrap();
        t.remove(web()).unwrap();
        assert!(t.maps().services.is_empty());
        assert!(t.maps().backends.is_empty());
        let other = Frontend { port: 443, ..web() };
        t.set_backends(other, &[pod(1)]).unwrap();
        assert_eq!(t.maps().services[&other.key()].id, 0);
    }

    #[test]
    fn other_services_are_untouched_by_a_change() {
        let mut t = ServiceTable::new(FakeMaps::default());
        let dns = Frontend {
            vip: Ipv4Addr::new(10, 96, 0, 53),
            port: 53,
            protocol: Protocol::Udp,
        };
        t.set_backends(dns, &[pod(9)]).unwrap();
        t.set_backends(web(), &[pod(1)]).unwrap();
        t.set_backends(web(), &[pod(2)]).unwrap();
        t.remove(web()).unwrap();
        assert_eq!(t.maps().reachable(dns), vec![pod(9)]);
    }
}
