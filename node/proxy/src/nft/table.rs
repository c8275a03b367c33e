//! What the proxy table holds, Service by Service, and the commands that bring one
//! Service's part of it to what it wants: gathered into one transaction per sync, with the
//! chains a Service stopped using emptied at once and deleted a transaction later (when
//! nothing can reference them any more), as kube-proxy does.
//!
//! Set members (hairpin and masquerade decisions) may be shared between Services: each is
//! counted, added with its first claim and deleted with its last. The shared pick chains and
//! endpoint maps are made when first needed and kept.
//!
//! On start the table is read back: the skeleton (and the pick chains found) is refilled in
//! place, each Service's first apply takes over what it finds (elements and members
//! rewritten only when they differ, chains only when the fingerprint their first rule's
//! comment carries differs, then refilled in the same transaction), and
//! [`NftTable::finish_adoption`] empties what none claimed. The table is never flushed, so
//! Services keep working across a restart, and a restart with nothing changed writes nothing
//! but the skeleton. A table of an earlier layout (a chain per group and endpoint) is
//! replaced: deleted and made again in the opening transaction.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    net::{Ipv4Addr, SocketAddrV4},
};

use serde_json::{Value, json};

use super::{
    kernel::{Nft, NftError},
    rules::{
        self, BASE_CHAINS, Data, ElementKey, MEMBER_SETS, MapName, Member, Objects, Outside, Pick,
        Rule, Verdict, command,
    },
};
use crate::{
    entries::{Frontend, GroupKey, Protocol, Scope, ServiceEntries, ServiceRef},
    sync::ProxyTable,
    table::{Applied, Occupancy},
};

/// What one Service holds.
#[derive(Debug, Default)]
struct Owned {
    objects: Objects,
    entries: ServiceEntries,
}

/// The entries of `entries`, as [`Occupancy`] counts them (no Service).
fn size(entries: &ServiceEntries) -> Occupancy {
    Occupancy {
        services: 0,
        frontends: entries.frontends.len(),
        groups: entries.groups.len(),
        backends: entries.groups.values().map(Vec::len).sum(),
    }
}

/// The node's Services mirrored into its nftables table.
#[derive(Debug)]
pub struct NftTable<N> {
    nft: N,
    name: String,
    uplink: Option<String>,
    services: HashMap<ServiceRef, Owned>,
    owners: HashMap<Frontend, ServiceRef>,
    /// The chains the kernel holds with their rules (`None`: read back, rules unknown).
    chains: HashMap<String, Option<Vec<Rule>>>,
    /// The fingerprints of read-back chains' rules.
    fingerprints: HashMap<String, u64>,
    /// The elements the kernel holds.
    elements: HashMap<ElementKey, Data>,
    /// The maps the kernel holds.
    maps: HashSet<MapName>,
    /// The pick chains the kernel holds.
    picks: HashSet<Pick>,
    /// The set members the kernel holds.
    members: HashSet<Member>,
    /// How many Services claim each member.
    claims: HashMap<Member, usize>,
    /// The sets the kernel holds.
    sets: HashSet<String>,
    /// The commands of the transaction being gathered, elements and members aside.
    pending: Vec<Value>,
    /// The elements the transaction being gathered changes, with what the kernel held
    /// before it: written at commit as one command per map and verb, since nft spends
    /// most of a large transaction on per-command overhead (162,000 one-element commands
    /// for 10,000 Services took 11 s, the same elements in 34 commands 2.7 s).
    batch_elements: BTreeMap<ElementKey, Option<Data>>,
    /// The members the transaction being gathered changes, with whether the kernel held
    /// each before it.
    batch_members: BTreeMap<Member, bool>,
    /// Chains and sets emptied in the transaction being gathered.
    emptied: BTreeSet<Stale>,
    /// Chains and sets emptied by an earlier transaction: deleted by the next one.
    due: BTreeSet<Stale>,
    removed_udp: BTreeSet<SocketAddrV4>,
    /// The table was there at start (an earlier run's, adopted).
    found: bool,
    /// The entries of every Service in `services`, kept as each change is applied.
    owned_size: Occupancy,
}

/// A chain or set no Service uses any more.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Stale {
    Chain(String),
    Set(String),
}

impl<N: Nft> NftTable<N> {
    /// Opens the table `name` through `nft`: creates it, or adopts what a previous run
    /// left, bringing its skeleton back in place in one transaction. `uplink` is the
    /// interface traffic from outside the node comes in through.
    ///
    /// # Errors
    /// When the table cannot be read or the skeleton is refused.
    pub fn open(nft: N, name: &str, uplink: Option<&str>) -> Result<Self, NftError> {
        let mut table = Self {
            nft,
            name: name.to_owned(),
            uplink: uplink.map(str::to_owned),
            services: HashMap::new(),
            owners: HashMap::new(),
            chains: HashMap::new(),
            fingerprints: HashMap::new(),
            elements: HashMap::new(),
            maps: HashSet::new(),
            picks: HashSet::new(),
            members: HashSet::new(),
            claims: HashMap::new(),
            sets: HashSet::new(),
            pending: Vec::new(),
            batch_elements: BTreeMap::new(),
            batch_members: BTreeMap::new(),
            emptied: BTreeSet::new(),
            due: BTreeSet::new(),
            removed_udp: BTreeSet::new(),
            found: false,
            owned_size: Occupancy::default(),
        };
        let mut commands = Vec::new();
        table.found = match table.read_back()? {
            Found::Nothing => false,
            Found::Current => true,
            Found::Earlier => {
                tracing::info!(table = name, "nftables table of an earlier layout replaced");
                commands.push(command(
                    "add",
                    "table",
                    json!({"family": "ip", "name": name}),
                ));
                commands.push(command(
                    "delete",
                    "table",
                    json!({"family": "ip", "name": name}),
                ));
                table.forget();
                false
            }
        };
        commands.extend(rules::skeleton(name, table.outside()));
        let mut picks: Vec<Pick> = table.picks.iter().copied().collect();
        picks.sort_unstable();
        for pick in picks {
            commands.extend(rules::pick_chain(name, pick, true));
        }
        table.maps.extend(rules::VERDICT_MAPS);
        table.nft.apply(&commands)?;
        Ok(table)
    }

    /// The table's name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The kernel side.
    pub fn nft(&self) -> &N {
        &self.nft
    }

    fn outside(&self) -> Outside<'_> {
        Outside {
            uplink: self.uplink.as_deref(),
        }
    }

    /// Whether an earlier run's table was found at start (and adopted).
    #[must_use]
    pub fn found(&self) -> bool {
        self.found
    }

    /// Empties the picture of the kernel; nothing is owned afterwards.
    fn forget(&mut self) {
        self.services.clear();
        self.owned_size = Occupancy::default();
        self.owners.clear();
        self.chains.clear();
        self.fingerprints.clear();
        self.elements.clear();
        self.maps.clear();
        self.picks.clear();
        self.members.clear();
        self.claims.clear();
        self.sets.clear();
        self.pending.clear();
        self.batch_elements.clear();
        self.batch_members.clear();
        self.emptied.clear();
        self.due.clear();
    }

    /// Replaces the picture of the kernel with what it holds; nothing is owned afterwards.
    /// Returns what was found.
    fn read_back(&mut self) -> Result<Found, NftError> {
        self.forget();
        let Some(objects) = self.nft.list()? else {
            return Ok(Found::Nothing);
        };
        let mut found = Found::Current;
        for object in &objects {
            if let Some(chain) = object.get("chain") {
                let Some(name) = chain["name"].as_str() else {
                    continue;
                };
                if let Some(pick) = Pick::from_chain(name) {
                    self.picks.insert(pick);
                } else if EARLIER_LAYOUT.iter().any(|p| name.starts_with(p)) {
                    found = Found::Earlier;
                } else if !BASE_CHAINS.contains(&name) {
                    self.chains.insert(name.to_owned(), None);
                }
            } else if let Some(rule) = object.get("rule") {
                if let (Some(chain), Some(print)) =
                    (rule["chain"].as_str(), rules::listed_fingerprint(rule))
                {
                    self.fingerprints.entry(chain.to_owned()).or_insert(print);
                }
            } else if let Some(set) = object.get("set") {
                let Some(name) = set["name"].as_str() else {
                    continue;
                };
                if MEMBER_SETS.iter().any(|(fixed, _)| *fixed == name) {
                    for elem in set["elem"].as_array().into_iter().flatten() {
                        if let Some(member) = Member::from_listed(name, elem) {
                            self.members.insert(member);
                        }
                    }
                } else {
                    self.sets.insert(name.to_owned());
                }
            } else if let Some(map) = object.get("map") {
                let Some(map_name) = map["name"].as_str().and_then(MapName::from_name) else {
                    continue;
                };
                // The earlier layout's verdict maps counted nothing.
                if map_name.is_verdict() && map.get("stmt").is_none() {
                    found = Found::Earlier;
                }
                self.maps.insert(map_name);
                for elem in map["elem"].as_array().into_iter().flatten() {
                    if let Some((key, data)) = read_element(map_name, elem) {
                        self.elements.insert(key, data);
                    }
                }
            }
        }
        Ok(found)
    }

    fn table_json(&self, name: &str) -> Value {
        json!({"family": "ip", "table": self.name, "name": name})
    }

    /// One command of `verb` for the elements `elem` of the map or set `name`.
    fn element_command(&self, verb: &str, name: &str, elem: &[Value]) -> Value {
        command(
            verb,
            "element",
            json!({"family": "ip", "table": self.name, "name": name, "elem": elem}),
        )
    }

    /// Sets element `key` to `data` (`None`: removes it) in the transaction being gathered.
    /// Returns whether that changes anything.
    fn set_element(&mut self, key: ElementKey, data: Option<&Data>) -> bool {
        let held = self.elements.get(&key);
        if held == data {
            return false;
        }
        self.batch_elements
            .entry(key)
            .or_insert_with(|| held.cloned());
        match data {
            Some(data) => self.elements.insert(key, data.clone()),
            None => self.elements.remove(&key),
        };
        true
    }

    /// Adds (`held`) or removes `member` in the transaction being gathered.
    fn set_member(&mut self, member: Member, held: bool) {
        let changed = if held {
            self.members.insert(member)
        } else {
            self.members.remove(&member)
        };
        if changed {
            self.batch_members.entry(member).or_insert(!held);
        }
    }

    /// Queues what the first claim of `member` needs.
    fn claim(&mut self, member: Member) {
        let count = self.claims.entry(member).or_default();
        *count += 1;
        if *count == 1 {
            self.set_member(member, true);
        }
    }

    /// Queues what the last release of `member` needs.
    fn release(&mut self, member: Member) {
        if let Some(count) = self.claims.get_mut(&member) {
            *count = count.saturating_sub(1);
            if *count > 0 {
                return;
            }
            self.claims.remove(&member);
        }
        self.set_member(member, false);
    }

    /// The element and member commands of the transaction being gathered, from the net
    /// change of each element and member: the deletions (to go before everything else the
    /// transaction holds) and the additions (to go after the maps and chains they name).
    fn take_batch(&mut self) -> (Vec<Value>, Vec<Value>) {
        let mut deletes: BTreeMap<String, Vec<Value>> = BTreeMap::new();
        let mut adds: BTreeMap<String, Vec<Value>> = BTreeMap::new();
        for (key, before) in std::mem::take(&mut self.batch_elements) {
            let after = self.elements.get(&key);
            if before.as_ref() == after {
                continue;
            }
            if before.is_some() {
                deletes.entry(key.map.name()).or_default().push(key.json());
            }
            if let Some(data) = after {
                adds.entry(key.map.name())
                    .or_default()
                    .push(data.element(&key));
            }
        }
        for (member, before) in std::mem::take(&mut self.batch_members) {
            let after = self.members.contains(&member);
            if before == after {
                continue;
            }
            let group = if after { &mut adds } else { &mut deletes };
            group
                .entry(member.set().to_owned())
                .or_default()
                .push(member.json());
        }
        let commands = |verb: &str, groups: BTreeMap<String, Vec<Value>>| -> Vec<Value> {
            groups
                .into_iter()
                .map(|(name, elem)| self.element_command(verb, &name, &elem))
                .collect()
        };
        (commands("delete", deletes), commands("add", adds))
    }

    /// Queues the commands that turn `old` into `new` (the kernel picture follows).
    fn change(&mut self, old: &Objects, new: &Objects) -> usize {
        let before = self.pending.len();
        for (set, timeout) in &new.sets {
            self.emptied.remove(&Stale::Set(set.clone()));
            self.due.remove(&Stale::Set(set.clone()));
            if self.sets.insert(set.clone()) {
                let mut object = self.table_json(set);
                object["type"] = json!("ipv4_addr");
                // `nft` adds `dynamic` itself for a set a rule updates.
                object["flags"] = json!(["timeout"]);
                object["timeout"] = json!(timeout);
                self.pending.push(command("add", "set", object));
            }
        }
        // Every map and chain exists before a rule or element refers to it.
        for pick in &new.picks {
            for map in pick.maps() {
                if self.maps.insert(map) {
                    self.pending.push(rules::add_map(&self.name, map));
                }
            }
            if self.picks.insert(*pick) {
                let chain = rules::pick_chain(&self.name, *pick, false);
                self.pending.extend(chain);
            }
        }
        for name in new.chains.keys() {
            self.emptied.remove(&Stale::Chain(name.clone()));
            self.due.remove(&Stale::Chain(name.clone()));
            if !self.chains.contains_key(name) {
                self.pending
                    .push(command("add", "chain", self.table_json(name)));
                self.chains.insert(name.clone(), Some(Vec::new()));
            }
        }
        for (name, rules) in &new.chains {
            let held = match self.chains.get(name) {
                Some(Some(held)) if held == rules => continue,
                Some(Some(held)) => !held.is_empty(),
                // Read back: its rules are known by their fingerprint only.
                Some(None) => {
                    if self.fingerprints.remove(name) == Some(rules::fingerprint(rules)) {
                        self.chains.insert(name.clone(), Some(rules.clone()));
                        continue;
                    }
                    true
                }
                None => false,
            };
            if held {
                self.pending
                    .push(command("flush", "chain", self.table_json(name)));
            }
            let fill = rules::chain_rules(&self.name, name, rules);
            self.pending.extend(fill);
            self.chains.insert(name.clone(), Some(rules.clone()));
        }
        let mut writes = 0;
        for key in old.elements.keys() {
            if !new.elements.contains_key(key) && self.set_element(*key, None) {
                writes += 1;
            }
        }
        for (key, data) in &new.elements {
            if self.set_element(*key, Some(data)) {
                writes += 1;
            }
        }
        for member in new.members.difference(&old.members) {
            writes += 1;
            self.claim(*member);
        }
        for member in old.members.difference(&new.members) {
            writes += 1;
            self.release(*member);
        }
        for name in old.chains.keys() {
            if !new.chains.contains_key(name) {
                self.empty_chain(name);
            }
        }
        for set in old.sets.keys() {
            if !new.sets.contains_key(set) {
                self.emptied.insert(Stale::Set(set.clone()));
            }
        }
        self.pending.len() - before + writes
    }

    /// Flushes a chain no one uses now; it is deleted a transaction later.
    fn empty_chain(&mut self, name: &str) {
        if let Some(rules) = self.chains.get_mut(name) {
            if rules.as_ref().is_none_or(|r| !r.is_empty()) {
                *rules = Some(Vec::new());
                let flush = command("flush", "chain", self.table_json(name));
                self.pending.push(flush);
            }
            self.emptied.insert(Stale::Chain(name.to_owned()));
        }
    }

    /// The commands gathered since the last commit (for tests and the benchmark).
    #[must_use]
    pub fn pending(&self) -> &[Value] {
        &self.pending
    }

    /// Removes the table from the kernel (`--cleanup-on-exit`).
    ///
    /// # Errors
    /// When the kernel refuses.
    pub fn delete(mut self) -> Result<(), NftError> {
        self.nft.delete_table()
    }
}

/// The prefixes of the chains of the earlier layout (a chain per group and endpoint).
const EARLIER_LAYOUT: [&str; 5] = ["svc/", "ep/", "rej/", "ext/", "lo/"];

/// What [`NftTable::open`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Found {
    /// No table.
    Nothing,
    /// A table of this layout.
    Current,
    /// A table of the earlier layout.
    Earlier,
}

/// An element of a listed map: `[key, data]`, the key `{"concat": [address, protocol,
/// port]}` or, with a comment or counter, `{"elem": {"val": key, "comment": ...}}`.
fn read_element(map: MapName, elem: &Value) -> Option<(ElementKey, Data)> {
    let pair = elem.as_array()?;
    let first = pair.first()?;
    let (key, comment) = match first.get("elem") {
        Some(wrapped) => (&wrapped["val"], wrapped["comment"].as_str()),
        None => (first, None),
    };
    let parts = key.get("concat")?.as_array()?;
    let address: Ipv4Addr = parts.first()?.as_str()?.parse().ok()?;
    let protocol = rules::listed_protocol(parts.get(1)?)?;
    let port = u16::try_from(parts.get(2)?.as_u64()?).ok()?;
    let value = pair.get(1)?;
    let data = match map {
        MapName::Slot {
            part: rules::Part::Address,
            ..
        } => Data::Address(value.as_str()?.parse().ok()?),
        MapName::Slot {
            part: rules::Part::Port,
            ..
        } => Data::Port(u16::try_from(value.as_u64()?).ok()?),
        _ => {
            let verdict = if let Some(target) = value.get("goto").and_then(|g| g["target"].as_str())
            {
                Verdict::Goto(target.to_owned())
            } else if value.get("return").is_some() {
                Verdict::Return
            } else {
                return None;
            };
            Data::Verdict {
                verdict,
                comment: comment.map(str::to_owned),
            }
        }
    };
    Some((
        ElementKey {
            map,
            address,
            protocol,
            port,
        },
        data,
    ))
}

fn udp_backends(entries: &ServiceEntries) -> BTreeMap<GroupKey, BTreeSet<SocketAddrV4>> {
    entries
        .groups
        .iter()
        .filter(|(k, _)| k.protocol == Protocol::Udp)
        .map(|(k, eps)| (*k, eps.iter().map(|e| e.address).collect()))
        .collect()
}

impl<N: Nft> ProxyTable for NftTable<N> {
    type Error = NftError;

    fn apply(
        &mut self,
        service: &ServiceRef,
        entries: &ServiceEntries,
    ) -> Result<Applied, NftError> {
        let old = self.services.remove(service).unwrap_or_default();
        self.owned_size.sub(size(&old.entries));
        let mut applied = Applied::default();
        // Frontends another Service holds stay with it.
        let mut mine = ServiceEntries {
            groups: entries.groups.clone(),
            frontends: BTreeMap::new(),
        };
        for (frontend, entry) in &entries.frontends {
            match self.owners.get(frontend) {
                Some(holder) if holder != service => {
                    applied.conflicts.push((*frontend, holder.clone()));
                }
                _ => {
                    mine.frontends.insert(*frontend, *entry);
                }
            }
        }
        for frontend in old.entries.frontends.keys() {
            if !mine.frontends.contains_key(frontend) {
                self.owners.remove(frontend);
                applied.released.push(*frontend);
            }
        }
        for frontend in mine.frontends.keys() {
            self.owners.insert(*frontend, service.clone());
        }
        let objects = rules::service_objects(service, &mine, self.outside());
        applied.writes = self.change(&old.objects, &objects);
        let after = udp_backends(&mine);
        self.removed_udp
            .extend(crate::table::gone_udp(udp_backends(&old.entries), &after));
        if !mine.frontends.is_empty() {
            self.owned_size.add(size(&mine));
            self.services.insert(
                service.clone(),
                Owned {
                    objects,
                    entries: mine,
                },
            );
        }
        Ok(applied)
    }

    fn commit(&mut self) -> Result<usize, NftError> {
        let mut commands = Vec::new();
        for stale in std::mem::take(&mut self.due) {
            match stale {
                Stale::Chain(name) => {
                    if self.chains.remove(&name).is_some() {
                        commands.push(command("delete", "chain", self.table_json(&name)));
                    }
                }
                Stale::Set(name) => {
                    if self.sets.remove(&name) {
                        commands.push(command("delete", "set", self.table_json(&name)));
                    }
                }
            }
        }
        let (deletes, adds) = self.take_batch();
        commands.extend(deletes);
        commands.append(&mut self.pending);
        commands.extend(adds);
        let due = std::mem::take(&mut self.emptied);
        if commands.is_empty() {
            self.due = due;
            return Ok(0);
        }
        match self.nft.apply(&commands) {
            Ok(()) => {
                self.due = due;
                Ok(commands.len())
            }
            Err(err) => {
                // Nothing went in: start again from what the kernel holds.
                if let Err(read) = self.read_back() {
                    tracing::warn!(%read, "nftables table not read back");
                }
                Err(err)
            }
        }
    }

    fn has_deferred(&self) -> bool {
        !self.due.is_empty() || !self.emptied.is_empty()
    }

    fn occupancy(&self) -> Occupancy {
        Occupancy {
            services: self.services.len(),
            ..self.owned_size
        }
    }

    fn take_removed_udp(&mut self) -> BTreeSet<SocketAddrV4> {
        std::mem::take(&mut self.removed_udp)
    }

    fn has_removed_udp(&self) -> bool {
        !self.removed_udp.is_empty()
    }

    fn udp_backends_of(&self, address: SocketAddrV4) -> Option<Vec<SocketAddrV4>> {
        let frontend = |scope| Frontend {
            address: *address.ip(),
            port: address.port(),
            protocol: Protocol::Udp,
            scope,
        };
        let find = |f: Frontend| {
            let owned = self.services.get(self.owners.get(&f)?)?;
            let entry = owned.entries.frontends.get(&f)?;
            let group = owned.entries.groups.get(&entry.group)?;
            Some(group.iter().map(|e| e.address).collect())
        };
        find(frontend(Scope::Internal)).or_else(|| find(frontend(Scope::External)))
    }

    fn finish_adoption(&mut self) -> Result<usize, NftError> {
        let mut wanted_chains: HashSet<&String> = HashSet::new();
        let mut wanted_elements: HashSet<&ElementKey> = HashSet::new();
        let mut wanted_sets: HashSet<&String> = HashSet::new();
        for owned in self.services.values() {
            wanted_chains.extend(owned.objects.chains.keys());
            wanted_elements.extend(owned.objects.elements.keys());
            wanted_sets.extend(owned.objects.sets.keys());
        }
        let elements: Vec<ElementKey> = self
            .elements
            .keys()
            .filter(|k| !wanted_elements.contains(k))
            .copied()
            .collect();
        let chains: Vec<String> = self
            .chains
            .keys()
            .filter(|c| !wanted_chains.contains(c))
            .cloned()
            .collect();
        let sets: Vec<String> = self
            .sets
            .iter()
            .filter(|s| !wanted_sets.contains(s))
            .cloned()
            .collect();
        for key in elements {
            self.set_element(key, None);
        }
        for chain in chains {
            self.empty_chain(&chain);
        }
        for set in sets {
            self.emptied.insert(Stale::Set(set));
        }
        let members: Vec<Member> = self
            .members
            .iter()
            .filter(|m| !self.claims.contains_key(m))
            .copied()
            .collect();
        for member in members {
            self.release(member);
        }
        self.commit()
    }

    fn owner(&self, frontend: &Frontend) -> Option<&ServiceRef> {
        self.owners.get(frontend)
    }
}

#[cfg(test)]
mod tests;
