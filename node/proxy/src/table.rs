//! Which backend sits in which slot of which group, and which frontend points at which
//! group, changed with the fewest map writes: one Service change touches only that
//! Service's own entries, and a reader of the maps never finds a slot missing.
//!
//! A Service's writes go in this order: its groups' new slots (holes refilled, new backends
//! appended, survivors moved down into holes), then its frontends (internal twins before the
//! external entries that point readers at them), then the frontends it no longer has, then
//! the slots past each group's new count and the groups it no longer has.
//!
//! After a restart the table adopts what the maps hold ([`ServiceTable::adopt`]): a
//! Service's first apply takes over its old frontends and groups and rewrites only what
//! changed, and [`ServiceTable::finish_adoption`] removes what no Service claimed.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    net::{Ipv4Addr, SocketAddrV4},
};

use skiff_ebpf_common::{Backend, BackendKey, FrontendValue};

use super::{
    entries::{
        Endpoint, Frontend, FrontendEntry, GroupKey, Protocol, Scope, ServiceEntries, ServiceRef,
    },
    maps::{MapsError, ServiceMaps},
};

/// A group's slots as the backend map holds them.
#[derive(Debug, Clone)]
struct Group {
    id: u32,
    /// Every slot present in the map, in slot order; `live` of them are counted.
    slots: Vec<Backend>,
    /// How many slots the frontends count once this Service's change is done.
    live: usize,
}

/// What one Service owns in the maps.
#[derive(Debug, Default)]
struct Owned {
    groups: BTreeMap<GroupKey, Group>,
    frontends: BTreeMap<Frontend, FrontendValue>,
}

impl Owned {
    fn is_empty(&self) -> bool {
        self.groups.is_empty() && self.frontends.is_empty()
    }

    /// Its entries, counted as [`Occupancy`] counts them (no Service).
    fn size(&self) -> Occupancy {
        Occupancy {
            services: 0,
            frontends: self.frontends.len(),
            groups: self.groups.len(),
            backends: self.groups.values().map(|g| g.slots.len()).sum(),
        }
    }
}

/// What the maps held at start that no Service has claimed yet.
#[derive(Debug, Default)]
struct Adopted {
    frontends: BTreeMap<Frontend, FrontendValue>,
    groups: HashMap<u32, Group>,
    /// Frontend keys this version cannot read (written by another version).
    foreign: Vec<skiff_ebpf_common::FrontendKey>,
    /// Groups with counters and no slots.
    counted: BTreeSet<u32>,
}

/// Group ids: dense, reused, so counters can be keyed by them.
#[derive(Debug, Default)]
struct Ids {
    next: u32,
    free: Vec<u32>,
}

impl Ids {
    fn take(&mut self) -> u32 {
        self.free.pop().unwrap_or_else(|| {
            self.next += 1;
            self.next - 1
        })
    }

    fn give_back(&mut self, id: u32) {
        self.free.push(id);
    }
}

/// What one change did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Applied {
    /// Map writes and deletions made.
    pub writes: usize,
    /// Frontends the Service wants that another Service owns (left alone).
    pub conflicts: Vec<(Frontend, ServiceRef)>,
    /// Frontends the Service gave up, which a Service in conflict may now take.
    pub released: Vec<Frontend>,
}

/// How full the table is.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Occupancy {
    /// Services with entries.
    pub services: usize,
    /// Frontend entries (both scopes).
    pub frontends: usize,
    /// Backend slot groups.
    pub groups: usize,
    /// Backend slots.
    pub backends: usize,
}

impl Occupancy {
    /// Adds `other` in.
    pub(crate) fn add(&mut self, other: Self) {
        self.services += other.services;
        self.frontends += other.frontends;
        self.groups += other.groups;
        self.backends += other.backends;
    }

    /// Takes `other` out (it was added before).
    pub(crate) fn sub(&mut self, other: Self) {
        self.services -= other.services;
        self.frontends -= other.frontends;
        self.groups -= other.groups;
        self.backends -= other.backends;
    }
}

/// The node's Services mirrored into [`ServiceMaps`].
#[derive(Debug)]
pub struct ServiceTable<M> {
    maps: M,
    services: HashMap<ServiceRef, Owned>,
    owners: HashMap<Frontend, ServiceRef>,
    ids: Ids,
    adopted: Adopted,
    /// Backends that left a UDP group since [`ServiceTable::take_removed_udp`]: connected
    /// sockets pinned to them are stale.
    removed_udp: BTreeSet<SocketAddrV4>,
    /// Groups given to a Service or freed since [`ServiceTable::take_owner_changes`], in
    /// order: what `/metrics` names counters with follows a change in O(its groups).
    owner_changes: Vec<(u32, Option<ServiceRef>)>,
    /// The entries of every Service in `services`, kept as each change is applied so that
    /// reading it costs nothing per Service.
    owned_size: Occupancy,
}

impl<M: ServiceMaps> ServiceTable<M> {
    /// A table over maps that hold nothing of interest (nothing is read back).
    pub fn new(maps: M) -> Self {
        Self {
            maps,
            services: HashMap::new(),
            owners: HashMap::new(),
            ids: Ids::default(),
            adopted: Adopted::default(),
            removed_udp: BTreeSet::new(),
            owner_changes: Vec::new(),
            owned_size: Occupancy::default(),
        }
    }

    /// A table over maps a previous run filled: their entries stay in place and are taken
    /// over by the Services that still want them.
    ///
    /// # Errors
    /// When the maps cannot be read.
    pub fn adopt(maps: M) -> Result<Self, MapsError> {
        let dump = maps.dump()?;
        let mut adopted = Adopted::default();
        for (key, value) in dump.frontends {
            match Frontend::from_key(key) {
                Some(f) => {
                    adopted.frontends.insert(f, value);
                }
                None => adopted.foreign.push(key),
            }
        }
        let mut slots: HashMap<u32, BTreeMap<u32, Backend>> = HashMap::new();
        for (key, backend) in dump.backends {
            slots
                .entry(key.group)
                .or_default()
                .insert(key.slot, backend);
        }
        for (id, by_slot) in slots {
            let len = by_slot
                .keys()
                .next_back()
                .map_or(0, |last| *last as usize + 1);
            // A slot missing below the last one reads as no backend at all: a hole that
            // the first apply refills or trims.
            let mut group_slots = vec![
                Backend {
                    address: 0,
                    port: 0,
                    flags: 0,
                    pad: 0,
                };
                len
            ];
            for (slot, backend) in by_slot {
                group_slots[slot as usize] = backend;
            }
            adopted.groups.insert(
                id,
                Group {
                    id,
                    slots: group_slots,
                    live: len,
                },
            );
        }
        // Groups whose frontends point at them but hold no slot (Services without
        // endpoints) are groups too.
        for value in adopted.frontends.values() {
            adopted.groups.entry(value.group).or_insert(Group {
                id: value.group,
                slots: Vec::new(),
                live: 0,
            });
        }
        adopted.counted = dump
            .counted_groups
            .into_iter()
            .filter(|id| !adopted.groups.contains_key(id))
            .collect();
        let in_use: BTreeSet<u32> = adopted
            .groups
            .keys()
            .chain(adopted.counted.iter())
            .copied()
            .collect();
        let next = in_use.last().map_or(0, |last| last + 1);
        let free = (0..next).rev().filter(|id| !in_use.contains(id)).collect();
        Ok(Self {
            maps,
            services: HashMap::new(),
            owners: HashMap::new(),
            ids: Ids { next, free },
            adopted,
            removed_udp: BTreeSet::new(),
            owner_changes: Vec::new(),
            owned_size: Occupancy::default(),
        })
    }

    /// The maps underneath.
    pub fn maps(&self) -> &M {
        &self.maps
    }

    /// How many entries the table holds.
    #[must_use]
    pub fn occupancy(&self) -> Occupancy {
        let mut o = Occupancy {
            services: self.services.len(),
            ..self.owned_size
        };
        o.frontends += self.adopted.frontends.len();
        o.groups += self.adopted.groups.len();
        o.backends += self
            .adopted
            .groups
            .values()
            .map(|g| g.slots.len())
            .sum::<usize>();
        o
    }

    /// Which Service each group belongs to (for per-Service counters).
    #[must_use]
    pub fn group_owners(&self) -> HashMap<u32, ServiceRef> {
        self.services
            .iter()
            .flat_map(|(svc, owned)| owned.groups.values().map(move |g| (g.id, svc.clone())))
            .collect()
    }

    /// The groups given to a Service (`Some`) or freed (`None`) since the last call, in the
    /// order it happened: replayed over the previous [`Self::group_owners`] they give the
    /// current one.
    pub fn take_owner_changes(&mut self) -> Vec<(u32, Option<ServiceRef>)> {
        std::mem::take(&mut self.owner_changes)
    }

    /// The Service that owns `frontend`.
    #[must_use]
    pub fn owner(&self, frontend: &Frontend) -> Option<&ServiceRef> {
        self.owners.get(frontend)
    }

    /// The backends that left a UDP group since the last call (the Service lost the
    /// endpoint, the port or went away), whatever other groups still hold them.
    pub fn take_removed_udp(&mut self) -> BTreeSet<SocketAddrV4> {
        std::mem::take(&mut self.removed_udp)
    }

    /// Whether a backend left a UDP group since the last [`Self::take_removed_udp`].
    #[must_use]
    pub fn has_removed_udp(&self) -> bool {
        !self.removed_udp.is_empty()
    }

    /// The backends a socket on this node that dialled `address:port` over UDP may be
    /// given now: the internal view of the frontend where it has two, as the socket hooks
    /// look it up; `None` when no Service has that frontend.
    #[must_use]
    pub fn udp_backends_of(&self, address: SocketAddrV4) -> Option<Vec<SocketAddrV4>> {
        let frontend = |scope| Frontend {
            address: *address.ip(),
            port: address.port(),
            protocol: Protocol::Udp,
            scope,
        };
        let backends = self
            .backends(&frontend(Scope::Internal))
            .or_else(|| self.backends(&frontend(Scope::External)))?;
        Some(backends.into_iter().map(backend_address).collect())
    }

    /// The backends a frontend currently counts, in slot order.
    #[must_use]
    pub fn backends(&self, frontend: &Frontend) -> Option<Vec<Backend>> {
        let owned = self.services.get(self.owners.get(frontend)?)?;
        let value = owned.frontends.get(frontend)?;
        let group = owned.groups.values().find(|g| g.id == value.group)?;
        Some(group.slots[..value.count as usize].to_vec())
    }

    /// Makes the maps hold exactly `entries` for `service`, writing only what differs from
    /// what they hold for it now. Frontends another Service owns are left to it and
    /// reported in [`Applied::conflicts`].
    ///
    /// # Errors
    /// When a map write fails; the table then describes exactly the writes that were made,
    /// so applying the Service again finishes the change.
    pub fn apply(
        &mut self,
        service: &ServiceRef,
        entries: &ServiceEntries,
    ) -> Result<Applied, MapsError> {
        let mut owned = self.services.remove(service).unwrap_or_default();
        self.owned_size.sub(owned.size());
        let mut applied = Applied::default();
        let before = udp_backends(&owned);
        let result = self.apply_owned(service, &mut owned, entries, &mut applied);
        self.owned_size.add(owned.size());
        // Counted whether or not every write went through: what was written is what
        // clients see.
        self.removed_udp
            .extend(gone_udp(before, &udp_backends(&owned)));
        if !owned.is_empty() {
            self.services.insert(service.clone(), owned);
        }
        result.map(|()| applied)
    }

    /// Removes everything `service` has in the maps. Unknown Services are ignored.
    ///
    /// # Errors
    /// When a map deletion fails (the table keeps what was not deleted).
    pub fn remove(&mut self, service: &ServiceRef) -> Result<Applied, MapsError> {
        self.apply(service, &ServiceEntries::default())
    }

    /// Removes what the maps held at start that no Service claimed since. Call once every
    /// Service the API has was applied.
    ///
    /// # Errors
    /// When a map deletion fails (call again to finish).
    pub fn finish_adoption(&mut self) -> Result<usize, MapsError> {
        let mut writes = 0;
        let stale: Vec<(Frontend, FrontendValue)> = order_for_removal(&self.adopted.frontends);
        for (frontend, _) in stale {
            self.maps.delete_frontend(frontend.key())?;
            self.adopted.frontends.remove(&frontend);
            writes += 1;
        }
        while let Some(key) = self.adopted.foreign.pop() {
            if let Err(err) = self.maps.delete_frontend(key) {
                self.adopted.foreign.push(key);
                return Err(err);
            }
            writes += 1;
        }
        let ids: Vec<u32> = self.adopted.groups.keys().copied().collect();
        for id in ids {
            if let Some(mut group) = self.adopted.groups.remove(&id) {
                group.live = 0;
                let result = self.drop_group(&mut group, &mut writes);
                if result.is_err() {
                    self.adopted.groups.insert(id, group);
                }
                result?;
            }
        }
        while let Some(id) = self.adopted.counted.pop_first() {
            if let Err(err) = self.maps.remove_group(id) {
                self.adopted.counted.insert(id);
                return Err(err);
            }
            self.ids.give_back(id);
            writes += 1;
        }
        Ok(writes)
    }

    fn apply_owned(
        &mut self,
        service: &ServiceRef,
        owned: &mut Owned,
        entries: &ServiceEntries,
        applied: &mut Applied,
    ) -> Result<(), MapsError> {
        // The frontends this Service may have: not another Service's.
        let mut wanted = BTreeMap::new();
        for (frontend, entry) in &entries.frontends {
            match self.owners.get(frontend) {
                Some(holder) if holder != service => {
                    applied.conflicts.push((*frontend, holder.clone()));
                }
                _ => {
                    wanted.insert(*frontend, *entry);
                    if let Some(old) = self.adopted.frontends.remove(frontend) {
                        owned.frontends.insert(*frontend, old);
                        self.owners.insert(*frontend, service.clone());
                    }
                }
            }
        }
        let needed: BTreeSet<GroupKey> = wanted.values().map(|e| e.group).collect();

        // 1. Slots: new groups whole, changed groups up to their new count.
        for key in &needed {
            let endpoints = entries.groups.get(key).map_or(&[][..], Vec::as_slice);
            if !owned.groups.contains_key(key) {
                let group = self.take_over_group(owned, *key, &wanted, &mut applied.writes)?;
                self.owner_changes.push((group.id, Some(service.clone())));
                owned.groups.insert(*key, group);
            }
            let group = owned.groups.get_mut(key).expect("inserted above");
            update_slots(&mut self.maps, group, endpoints, &mut applied.writes)?;
        }

        // 2. Frontends, internal twins first.
        for scope in [Scope::Internal, Scope::External] {
            for (frontend, entry) in wanted.iter().filter(|(f, _)| f.scope == scope) {
                let group = &owned.groups[&entry.group];
                let value = FrontendValue {
                    group: group.id,
                    count: u32::try_from(group.live).expect("slot counts fit u32"),
                    affinity_timeout: entry.affinity_timeout,
                    flags: entry.flags,
                    kind: entry.kind.number(),
                    pad: 0,
                };
                if owned.frontends.get(frontend) != Some(&value) {
                    self.maps.set_frontend(frontend.key(), value)?;
                    applied.writes += 1;
                    owned.frontends.insert(*frontend, value);
                    self.owners.insert(*frontend, service.clone());
                }
            }
        }

        // 3. Frontends it no longer has, external entries before their twins.
        let gone: BTreeMap<Frontend, FrontendValue> = owned
            .frontends
            .iter()
            .filter(|(f, _)| !wanted.contains_key(f))
            .map(|(f, v)| (*f, *v))
            .collect();
        for (frontend, _) in order_for_removal(&gone) {
            self.maps.delete_frontend(frontend.key())?;
            applied.writes += 1;
            owned.frontends.remove(&frontend);
            self.owners.remove(&frontend);
            applied.released.push(frontend);
        }

        // 4. Slots past the new counts, and groups it no longer has.
        let keys: Vec<GroupKey> = owned.groups.keys().copied().collect();
        for key in keys {
            let group = owned.groups.get_mut(&key).expect("listed above");
            if needed.contains(&key) {
                trim(&mut self.maps, group, &mut applied.writes)?;
            } else {
                group.live = 0;
                let mut group = owned.groups.remove(&key).expect("listed above");
                let result = self.drop_group(&mut group, &mut applied.writes);
                if result.is_err() {
                    owned.groups.insert(key, group);
                }
                result?;
            }
        }
        Ok(())
    }

    /// A group for `key`: the adopted group one of its frontends pointed at before a
    /// restart, or a new one.
    fn take_over_group(
        &mut self,
        owned: &Owned,
        key: GroupKey,
        wanted: &BTreeMap<Frontend, FrontendEntry>,
        writes: &mut usize,
    ) -> Result<Group, MapsError> {
        let adopted = wanted
            .iter()
            .filter(|(_, e)| e.group == key)
            .filter_map(|(f, _)| owned.frontends.get(f))
            .find_map(|old| self.adopted.groups.remove(&old.group));
        if let Some(group) = adopted {
            return Ok(group);
        }
        let id = self.ids.take();
        if let Err(err) = self.maps.add_group(id) {
            self.ids.give_back(id);
            return Err(err);
        }
        *writes += 1;
        Ok(Group {
            id,
            slots: Vec::new(),
            live: 0,
        })
    }

    /// Deletes every slot of a group no frontend points at any more, its counters, and
    /// frees its id.
    fn drop_group(&mut self, group: &mut Group, writes: &mut usize) -> Result<(), MapsError> {
        trim(&mut self.maps, group, writes)?;
        self.maps.remove_group(group.id)?;
        *writes += 1;
        self.ids.give_back(group.id);
        self.owner_changes.push((group.id, None));
        Ok(())
    }
}

/// External entries before internal ones: a reader that finds no external entry never
/// looks for the twin.
fn order_for_removal(
    frontends: &BTreeMap<Frontend, FrontendValue>,
) -> Vec<(Frontend, FrontendValue)> {
    let mut out: Vec<(Frontend, FrontendValue)> = frontends.iter().map(|(f, v)| (*f, *v)).collect();
    out.sort_by_key(|(f, _)| f.scope != Scope::External);
    out
}

/// A backend slot's address and port.
fn backend_address(b: Backend) -> SocketAddrV4 {
    SocketAddrV4::new(
        Ipv4Addr::from(b.address.to_ne_bytes()),
        u16::from_be(b.port),
    )
}

/// The backends of each UDP group in `before` that the same group in `after` no longer
/// has (a group gone from `after` lost all of them); both tables count these for the
/// stale-UDP sweep.
pub(crate) fn gone_udp(
    before: BTreeMap<GroupKey, BTreeSet<SocketAddrV4>>,
    after: &BTreeMap<GroupKey, BTreeSet<SocketAddrV4>>,
) -> impl Iterator<Item = SocketAddrV4> + use<'_> {
    before.into_iter().flat_map(move |(key, backends)| {
        let kept = after.get(&key);
        backends
            .into_iter()
            .filter(move |b| kept.is_none_or(|k| !k.contains(b)))
    })
}

/// The counted backends of each UDP group a Service owns.
fn udp_backends(owned: &Owned) -> BTreeMap<GroupKey, BTreeSet<SocketAddrV4>> {
    owned
        .groups
        .iter()
        .filter(|(key, _)| key.protocol == Protocol::Udp)
        .map(|(key, group)| {
            let live = &group.slots[..group.live.min(group.slots.len())];
            (*key, live.iter().copied().map(backend_address).collect())
        })
        .collect()
}

fn same_endpoint(a: Backend, b: Backend) -> bool {
    a.address == b.address && a.port == b.port
}

/// Makes slots `0..endpoints.len()` of `group` hold exactly `endpoints` (in any order),
/// leaving stale slots past that for [`trim`].
fn update_slots(
    maps: &mut impl ServiceMaps,
    group: &mut Group,
    endpoints: &[Endpoint],
    writes: &mut usize,
) -> Result<(), MapsError> {
    let mut wanted: Vec<Backend> = Vec::with_capacity(endpoints.len());
    for e in endpoints {
        let value = e.value();
        if !wanted.iter().any(|w| same_endpoint(*w, value)) {
            wanted.push(value);
        }
    }
    let n = wanted.len();
    let mut placed: HashSet<(u32, u16)> = HashSet::new();
    let mut holes = Vec::new();
    for i in 0..group.slots.len() {
        let current = group.slots[i];
        let key = (current.address, current.port);
        match wanted.iter().find(|w| same_endpoint(**w, current)) {
            Some(w) if placed.insert(key) => {
                if *w != current {
                    // Same endpoint, new flags (it started terminating, say): in place.
                    set_slot(maps, group, i, *w, writes)?;
                }
            }
            _ => holes.push(i),
        }
    }
    let mut additions = wanted
        .iter()
        .filter(|w| !placed.contains(&(w.address, w.port)))
        .copied();
    let mut unfilled = Vec::new();
    for hole in holes {
        match additions.next() {
            Some(b) => set_slot(maps, group, hole, b, writes)?,
            None => unfilled.push(hole),
        }
    }
    for b in additions {
        let slot = group.slots.len();
        maps.set_backend(slot_key(group.id, slot), b)?;
        *writes += 1;
        group.slots.push(b);
    }
    // Fewer additions than removals: move survivors from above the new count down into
    // the holes below it. Each hole below n has one survivor above n to fill it.
    let unfilled_set: HashSet<usize> = unfilled.iter().copied().collect();
    let survivors: Vec<usize> = (n..group.slots.len())
        .filter(|i| !unfilled_set.contains(i))
        .collect();
    for (hole, from) in unfilled.iter().filter(|&&h| h < n).zip(survivors) {
        let b = group.slots[from];
        set_slot(maps, group, *hole, b, writes)?;
    }
    group.live = n;
    Ok(())
}

fn set_slot(
    maps: &mut impl ServiceMaps,
    group: &mut Group,
    slot: usize,
    backend: Backend,
    writes: &mut usize,
) -> Result<(), MapsError> {
    maps.set_backend(slot_key(group.id, slot), backend)?;
    *writes += 1;
    group.slots[slot] = backend;
    Ok(())
}

/// Deletes the slots past the group's count, last first.
fn trim(
    maps: &mut impl ServiceMaps,
    group: &mut Group,
    writes: &mut usize,
) -> Result<(), MapsError> {
    while group.slots.len() > group.live {
        let last = group.slots.len() - 1;
        maps.delete_backend(slot_key(group.id, last))?;
        *writes += 1;
        group.slots.pop();
    }
    Ok(())
}

fn slot_key(group: u32, slot: usize) -> BackendKey {
    BackendKey {
        group,
        slot: u32::try_from(slot).expect("slot indices fit the map's u32 slots"),
    }
}

#[cfg(test)]
mod tests;
