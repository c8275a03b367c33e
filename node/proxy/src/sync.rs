//! The node's picture of the cluster's Services and EndpointSlices, fed by two watches, and
//! the Services it marks changed so that only their own entries are planned and written.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::SocketAddrV4,
    sync::Arc,
};

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};

use super::{
    entries::{Frontend, ServiceEntries, ServiceRef},
    health::{HealthCheck, health_check_port, health_checks},
    maps::{MapsError, ServiceMaps},
    plan::{NodeView, Warning, plan},
    reap::{Reaped, SocketReaper, reap},
    table::{Applied, Occupancy, ServiceTable},
};

/// What the mirror writes through: the eBPF maps' [`ServiceTable`] or the nftables table
/// ([`crate::nft::NftTable`]). Both take one Service's planned entries at a time; a
/// datapath that writes in transactions gathers them until [`ProxyTable::commit`].
pub trait ProxyTable {
    /// Why a write failed.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Makes the datapath hold exactly `entries` for `service` (or queues the change until
    /// [`ProxyTable::commit`]).
    ///
    /// # Errors
    /// When a write fails.
    fn apply(
        &mut self,
        service: &ServiceRef,
        entries: &ServiceEntries,
    ) -> Result<Applied, Self::Error>;

    /// Removes everything `service` has.
    ///
    /// # Errors
    /// When a write fails.
    fn remove(&mut self, service: &ServiceRef) -> Result<Applied, Self::Error> {
        self.apply(service, &ServiceEntries::default())
    }

    /// Sends what [`ProxyTable::apply`] queued as one transaction. When it fails, nothing
    /// of it was applied: every Service is to be applied again.
    ///
    /// # Errors
    /// When the transaction is refused.
    fn commit(&mut self) -> Result<usize, Self::Error> {
        Ok(0)
    }

    /// Whether work waits for a later [`ProxyTable::commit`] even with no Service changed
    /// (stale chains removed a batch after they were emptied).
    fn has_deferred(&self) -> bool {
        false
    }

    /// How much the datapath holds.
    fn occupancy(&self) -> Occupancy;

    /// Backends that left a UDP group since the last call.
    fn take_removed_udp(&mut self) -> BTreeSet<SocketAddrV4>;

    /// Whether a backend left a UDP group since the last call of
    /// [`ProxyTable::take_removed_udp`].
    fn has_removed_udp(&self) -> bool;

    /// The backends a socket on this node that dialled `address` over UDP may be given.
    fn udp_backends_of(&self, address: SocketAddrV4) -> Option<Vec<SocketAddrV4>>;

    /// Removes what a previous run left that no Service claimed.
    ///
    /// # Errors
    /// When a deletion fails.
    fn finish_adoption(&mut self) -> Result<usize, Self::Error>;

    /// The Service that holds `frontend`.
    fn owner(&self, frontend: &Frontend) -> Option<&ServiceRef>;
}

impl<M: ServiceMaps> ProxyTable for ServiceTable<M> {
    type Error = MapsError;

    fn apply(
        &mut self,
        service: &ServiceRef,
        entries: &ServiceEntries,
    ) -> Result<Applied, MapsError> {
        ServiceTable::apply(self, service, entries)
    }

    fn occupancy(&self) -> Occupancy {
        ServiceTable::occupancy(self)
    }

    fn take_removed_udp(&mut self) -> BTreeSet<SocketAddrV4> {
        ServiceTable::take_removed_udp(self)
    }

    fn has_removed_udp(&self) -> bool {
        ServiceTable::has_removed_udp(self)
    }

    fn udp_backends_of(&self, address: SocketAddrV4) -> Option<Vec<SocketAddrV4>> {
        ServiceTable::udp_backends_of(self, address)
    }

    fn finish_adoption(&mut self) -> Result<usize, MapsError> {
        ServiceTable::finish_adoption(self)
    }

    fn owner(&self, frontend: &Frontend) -> Option<&ServiceRef> {
        ServiceTable::owner(self, frontend)
    }
}

/// The label an EndpointSlice names its Service with.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// What one [`Mirror::sync`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Synced {
    /// Services planned and applied (or removed).
    pub services: usize,
    /// Map writes and deletions made.
    pub writes: usize,
    /// Warnings a Service has now that it did not have at the last sync: each one is said
    /// once, as an Event on the Service.
    pub warnings: Vec<(ServiceRef, Warning)>,
    /// Frontends a Service wants that another Service holds, with the holder.
    pub conflicts: Vec<(ServiceRef, String, ServiceRef)>,
}

/// An EndpointSlice by namespace and name.
type SliceRef = (String, String);

/// Services and EndpointSlices as the watches last showed them, over the table that mirrors
/// them into the maps.
#[derive(Debug)]
pub struct Mirror<T> {
    table: T,
    node: NodeView,
    services: HashMap<ServiceRef, Arc<Service>>,
    /// Each Service's slices, by slice name.
    slices: HashMap<ServiceRef, BTreeMap<String, Arc<EndpointSlice>>>,
    /// Which Service each slice was filed under (its label may change).
    slice_owner: HashMap<SliceRef, ServiceRef>,
    /// Services whose entries may differ from what they want.
    dirty: BTreeSet<ServiceRef>,
    /// Services that wanted a frontend another Service held: tried again when one is freed.
    conflicted: BTreeSet<ServiceRef>,
    /// The warnings each Service was last told about.
    warned: HashMap<ServiceRef, Vec<Warning>>,
    /// The Services with a health check node port: the only ones
    /// [`Mirror::health_checks`] looks at, so a sync costs nothing per other Service.
    health_checked: BTreeSet<ServiceRef>,
    /// A transaction failed: once every Service is applied again, what no Service claims
    /// is removed.
    readopt: bool,
}

fn service_ref(service: &Service) -> Option<ServiceRef> {
    Some(ServiceRef::new(
        service.metadata.namespace.as_deref()?,
        service.metadata.name.as_deref()?,
    ))
}

fn slice_ref(slice: &EndpointSlice) -> Option<SliceRef> {
    Some((
        slice.metadata.namespace.clone()?,
        slice.metadata.name.clone()?,
    ))
}

/// The Service a slice belongs to, from its label.
fn slice_service(slice: &EndpointSlice) -> Option<ServiceRef> {
    let name = slice.metadata.labels.as_ref()?.get(SERVICE_NAME_LABEL)?;
    Some(ServiceRef::new(slice.metadata.namespace.as_deref()?, name))
}

impl<T: ProxyTable> Mirror<T> {
    /// A mirror of nothing yet over `table` (new, or adopting a previous run's maps).
    pub fn new(table: T, node: NodeView) -> Self {
        Self {
            table,
            node,
            services: HashMap::new(),
            slices: HashMap::new(),
            slice_owner: HashMap::new(),
            dirty: BTreeSet::new(),
            conflicted: BTreeSet::new(),
            warned: HashMap::new(),
            health_checked: BTreeSet::new(),
            readopt: false,
        }
    }

    /// The table underneath.
    pub fn table(&self) -> &T {
        &self.table
    }

    /// The table underneath, to change.
    pub fn table_mut(&mut self) -> &mut T {
        &mut self.table
    }

    /// Whether a sync is due with no Service changed (deferred clean-up).
    #[must_use]
    pub fn has_deferred(&self) -> bool {
        self.table.has_deferred()
    }

    /// How full the maps are.
    #[must_use]
    pub fn occupancy(&self) -> Occupancy {
        self.table.occupancy()
    }

    /// Whether a change waits for [`Self::sync`].
    #[must_use]
    pub fn is_dirty(&self) -> bool {
        !self.dirty.is_empty()
    }

    /// A Service was created or changed.
    pub fn service_applied(&mut self, service: Service) {
        if let Some(key) = service_ref(&service) {
            let changed = self
                .services
                .get(&key)
                .is_none_or(|old| old.spec != service.spec || old.status != service.status);
            if changed {
                self.dirty.insert(key.clone());
            }
            self.insert_service(key, service);
        }
    }

    fn insert_service(&mut self, key: ServiceRef, service: Service) {
        if health_check_port(&service).is_some() {
            self.health_checked.insert(key.clone());
        } else {
            self.health_checked.remove(&key);
        }
        self.services.insert(key, Arc::new(service));
    }

    /// The health check node ports this node answers on, with each Service's local endpoint
    /// count.
    #[must_use]
    pub fn health_checks(&self) -> BTreeMap<u16, HealthCheck> {
        health_checks(
            self.health_checked.iter().filter_map(|key| {
                let service = self.services.get(key)?;
                let slices = self.slices.get(key).into_iter().flat_map(|s| s.values());
                Some((key.clone(), service.as_ref(), slices.map(AsRef::as_ref)))
            }),
            &self.node.name,
        )
    }

    /// A Service was deleted.
    pub fn service_deleted(&mut self, service: &Service) {
        if let Some(key) = service_ref(service) {
            self.services.remove(&key);
            self.health_checked.remove(&key);
            self.dirty.insert(key);
        }
    }

    /// A full list of Services (the watch started or restarted): it replaces what was known,
    /// so Services deleted while the watch was down go too.
    pub fn services_listed(&mut self, services: Vec<Service>) {
        let old: Vec<ServiceRef> = self.services.keys().cloned().collect();
        self.dirty.extend(old);
        self.services.clear();
        self.health_checked.clear();
        for service in services {
            if let Some(key) = service_ref(&service) {
                self.dirty.insert(key.clone());
                self.insert_service(key, service);
            }
        }
    }

    /// An EndpointSlice was created or changed.
    pub fn slice_applied(&mut self, slice: EndpointSlice) {
        let Some(id) = slice_ref(&slice) else {
            return;
        };
        let owner = slice_service(&slice);
        if self.slice_owner.get(&id) != owner.as_ref() {
            self.forget_slice(&id);
        }
        if let Some(owner) = owner {
            let changed = self
                .slices
                .get(&owner)
                .and_then(|s| s.get(&id.1))
                .is_none_or(|old| {
                    old.endpoints != slice.endpoints
                        || old.ports != slice.ports
                        || old.address_type != slice.address_type
                });
            if changed {
                self.dirty.insert(owner.clone());
            }
            self.slices
                .entry(owner.clone())
                .or_default()
                .insert(id.1.clone(), Arc::new(slice));
            self.slice_owner.insert(id, owner);
        }
    }

    /// An EndpointSlice was deleted.
    pub fn slice_deleted(&mut self, slice: &EndpointSlice) {
        if let Some(id) = slice_ref(slice) {
            self.forget_slice(&id);
        }
    }

    /// A full list of EndpointSlices, replacing what was known.
    pub fn slices_listed(&mut self, slices: Vec<EndpointSlice>) {
        let known: Vec<SliceRef> = self.slice_owner.keys().cloned().collect();
        for id in known {
            self.forget_slice(&id);
        }
        for slice in slices {
            self.slice_applied(slice);
        }
    }

    fn forget_slice(&mut self, id: &SliceRef) {
        if let Some(owner) = self.slice_owner.remove(id) {
            if let Some(slices) = self.slices.get_mut(&owner) {
                slices.remove(&id.1);
                if slices.is_empty() {
                    self.slices.remove(&owner);
                }
            }
            self.dirty.insert(owner);
        }
    }

    /// Plans and writes every changed Service; a Service whose write failed stays changed
    /// and is tried again at the next call.
    ///
    /// # Errors
    /// The first failed map write (the other changed Services were still written).
    pub fn sync(&mut self) -> Result<Synced, T::Error> {
        let mut out = Synced::default();
        let mut first_error = None;
        let mut failed = BTreeSet::new();
        while let Some(key) = self.dirty.pop_first() {
            out.services += 1;
            let result = self.apply_one(&key, &mut out.warnings);
            match result {
                Ok(applied) => {
                    out.writes += applied.writes;
                    if applied.conflicts.is_empty() {
                        self.conflicted.remove(&key);
                    } else {
                        self.conflicted.insert(key.clone());
                    }
                    for (frontend, holder) in applied.conflicts {
                        out.conflicts
                            .push((key.clone(), frontend.to_string(), holder));
                    }
                    if !applied.released.is_empty() {
                        // A freed frontend may be one a Service in conflict waits for.
                        let waiting: Vec<ServiceRef> = self
                            .conflicted
                            .iter()
                            .filter(|s| **s != key)
                            .cloned()
                            .collect();
                        self.dirty.extend(waiting);
                    }
                }
                Err(err) => {
                    // The others are still tried; this one waits for the next sync.
                    failed.insert(key);
                    first_error.get_or_insert(err);
                }
            }
        }
        self.dirty = failed;
        match self.table.commit() {
            Ok(writes) => out.writes += writes,
            Err(err) => {
                // Nothing of the batch went in: every Service is applied again, and what
                // none of them claims afterwards is removed.
                self.dirty.extend(self.services.keys().cloned());
                self.readopt = true;
                return Err(err);
            }
        }
        if let Some(err) = first_error {
            return Err(err);
        }
        if self.readopt {
            out.writes += self.table.finish_adoption()?;
            self.readopt = false;
        }
        Ok(out)
    }

    /// Plans `key` (or removes it when the Service is gone) and writes it; new warnings go
    /// to `warnings`.
    fn apply_one(
        &mut self,
        key: &ServiceRef,
        warnings: &mut Vec<(ServiceRef, Warning)>,
    ) -> Result<Applied, T::Error> {
        let Some(service) = self.services.get(key).cloned() else {
            self.warned.remove(key);
            return self.table.remove(key);
        };
        let slices = self.slices.get(key);
        let planned = plan(
            &service,
            slices
                .into_iter()
                .flat_map(|s| s.values().map(AsRef::as_ref)),
            &self.node,
        );
        let old = self.warned.remove(key).unwrap_or_default();
        for w in &planned.warnings {
            if !old.contains(w) {
                warnings.push((key.clone(), w.clone()));
            }
        }
        if !planned.warnings.is_empty() {
            self.warned.insert(key.clone(), planned.warnings);
        }
        self.table.apply(key, &planned.entries)
    }

    /// Whether a UDP backend left since the last [`Self::reap_stale_udp`].
    #[must_use]
    pub fn udp_backends_removed(&self) -> bool {
        self.table.has_removed_udp()
    }

    /// Destroys the connected UDP sockets pinned to a backend their frontend no longer
    /// offers: among the sockets connected to a backend that left a UDP group since the
    /// last call, or among every connected UDP socket when `everything` (after a restart,
    /// when backends may have gone while the node was down). Does nothing when no UDP
    /// backend left and `everything` is false.
    pub fn reap_stale_udp(&mut self, reaper: &mut impl SocketReaper, everything: bool) -> Reaped {
        let removed = self.table.take_removed_udp();
        if removed.is_empty() && !everything {
            return Reaped::default();
        }
        let peers = (!everything).then_some(&removed);
        reap(reaper, peers, |frontend| {
            self.table.udp_backends_of(frontend)
        })
    }

    /// Removes what a previous run left in the maps that no Service wants. Call after the
    /// first sync of complete lists of Services and EndpointSlices.
    ///
    /// # Errors
    /// When a map deletion fails (call again).
    pub fn finish_adoption(&mut self) -> Result<usize, T::Error> {
        self.table.finish_adoption()
    }
}

#[cfg(test)]
mod tests;
