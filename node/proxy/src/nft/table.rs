//! What the proxy table holds, Service by Service, and the commands that bring one
//! Service's part of it to what it wants: gathered into one transaction per sync, with the
//! chains a Service stopped using emptied at once and deleted a transaction later (when
//! nothing can reference them any more), as kube-proxy does.
//!
//! On start the table is read back: the skeleton is refilled in place, each Service's
//! first apply takes over what it finds (elements rewritten only when they differ, chains
//! only when the fingerprint their first rule's comment carries differs, then refilled in
//! the same transaction), and [`NftTable::finish_adoption`] empties what none claimed. The
//! table is never flushed, so Services keep working across a restart, and a restart with
//! nothing changed writes nothing but the skeleton.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    net::{Ipv4Addr, SocketAddrV4},
};

use serde_json::{Value, json};

use super::{
    kernel::{Nft, NftError},
    rules::{self, BASE_CHAINS, ElementKey, MapName, Objects, Outside, Rule, Verdict, command},
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
    elements: HashMap<ElementKey, Verdict>,
    /// The sets the kernel holds.
    sets: HashSet<String>,
    /// The commands of the transaction being gathered.
    pending: Vec<Value>,
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
            sets: HashSet::new(),
            pending: Vec::new(),
            emptied: BTreeSet::new(),
            due: BTreeSet::new(),
            removed_udp: BTreeSet::new(),
            found: false,
            owned_size: Occupancy::default(),
        };
        table.found = table.read_back()?;
        let skeleton = rules::skeleton(name, table.outside());
        table.nft.apply(&skeleton)?;
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

    /// Replaces the picture of the kernel with what it holds; nothing is owned afterwards.
    /// Returns whether the table exists.
    fn read_back(&mut self) -> Result<bool, NftError> {
        self.services.clear();
        self.owned_size = Occupancy::default();
        self.owners.clear();
        self.chains.clear();
        self.fingerprints.clear();
        self.elements.clear();
        self.sets.clear();
        self.pending.clear();
        self.emptied.clear();
        self.due.clear();
        let Some(objects) = self.nft.list()? else {
            return Ok(false);
        };
        for object in &objects {
            if let Some(chain) = object.get("chain") {
                if let Some(name) = chain["name"].as_str()
                    && !BASE_CHAINS.contains(&name)
                {
                    self.chains.insert(name.to_owned(), None);
                }
            } else if let Some(rule) = object.get("rule") {
                if let (Some(chain), Some(print)) =
                    (rule["chain"].as_str(), rules::listed_fingerprint(rule))
                {
                    self.fingerprints.entry(chain.to_owned()).or_insert(print);
                }
            } else if let Some(set) = object.get("set") {
                if let Some(name) = set["name"].as_str() {
                    self.sets.insert(name.to_owned());
                }
            } else if let Some(map) = object.get("map") {
                let Some(map_name) = map["name"].as_str().and_then(MapName::from_name) else {
                    continue;
                };
                for elem in map["elem"].as_array().into_iter().flatten() {
                    if let Some((key, verdict)) = read_element(map_name, elem) {
                        self.elements.insert(key, verdict);
                    }
                }
            }
        }
        Ok(true)
    }

    fn table_json(&self, name: &str) -> Value {
        json!({"family": "ip", "table": self.name, "name": name})
    }

    fn element_command(&self, verb: &str, key: ElementKey, verdict: Option<&Verdict>) -> Value {
        let elem = match verdict {
            Some(v) => json!([[key.json(), v.json()]]),
            None => json!([key.json()]),
        };
        command(
            verb,
            "element",
            json!({"family": "ip", "table": self.name, "name": key.map.name(), "elem": elem}),
        )
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
        // Every chain exists before a rule sends a packet to it.
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
        for key in old.elements.keys() {
            if !new.elements.contains_key(key) && self.elements.remove(key).is_some() {
                self.pending
                    .push(self.element_command("delete", *key, None));
            }
        }
        for (key, verdict) in &new.elements {
            match self.elements.get(key) {
                Some(held) if held == verdict => continue,
                Some(_) => self
                    .pending
                    .push(self.element_command("delete", *key, None)),
                None => {}
            }
            self.pending
                .push(self.element_command("add", *key, Some(verdict)));
            self.elements.insert(*key, verdict.clone());
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
        self.pending.len() - before
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

    /// The chains that count translations and refusals, with their Service.
    #[must_use]
    pub fn counted_chains(&self) -> BTreeMap<String, ServiceRef> {
        self.services
            .iter()
            .flat_map(|(svc, owned)| {
                owned
                    .objects
                    .chains
                    .keys()
                    .filter(|c| rules::counted_chain(c).is_some())
                    .map(move |c| (c.clone(), svc.clone()))
            })
            .collect()
    }
}

/// An element of a listed map: `[{"concat": [address, protocol, port]}, verdict]`.
fn read_element(map: MapName, elem: &Value) -> Option<(ElementKey, Verdict)> {
    let pair = elem.as_array()?;
    let parts = pair.first()?.get("concat")?.as_array()?;
    let address: Ipv4Addr = parts.first()?.as_str()?.parse().ok()?;
    let protocol = match parts.get(1)? {
        Value::String(s) if s == "tcp" => Protocol::Tcp,
        Value::String(s) if s == "udp" => Protocol::Udp,
        Value::Number(n) if n.as_u64() == Some(6) => Protocol::Tcp,
        Value::Number(n) if n.as_u64() == Some(17) => Protocol::Udp,
        _ => return None,
    };
    let port = u16::try_from(parts.get(2)?.as_u64()?).ok()?;
    let value = pair.get(1)?;
    let verdict = if let Some(target) = value.get("goto").and_then(|g| g["target"].as_str()) {
        Verdict::Goto(target.to_owned())
    } else if value.get("return").is_some() {
        Verdict::Return
    } else {
        return None;
    };
    Some((
        ElementKey {
            map,
            address,
            protocol,
            port,
        },
        verdict,
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
        commands.append(&mut self.pending);
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
            self.elements.remove(&key);
            let delete = self.element_command("delete", key, None);
            self.pending.push(delete);
        }
        for chain in chains {
            self.empty_chain(&chain);
        }
        for set in sets {
            self.emptied.insert(Stale::Set(set));
        }
        self.commit()
    }

    fn owner(&self, frontend: &Frontend) -> Option<&ServiceRef> {
        self.owners.get(frontend)
    }
}

#[cfg(test)]
mod tests;
