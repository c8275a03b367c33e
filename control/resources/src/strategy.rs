//! The hooks through which a kind's own behaviour reaches the API server's generic verbs, as
//! the Go apiserver's REST strategies (create, update, delete) and table convertors do, so
//! the verbs never ask which kind they are handling.

use std::net::Ipv4Addr;

use serde_json::Value;
use skiff_machinery::{status::Cause, validation::NameRule};

use crate::table::{self, Column};

/// Why a pool could not hand out an address or a port.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllocError {
    /// The requested one is in use.
    #[error("provided {0} is already allocated")]
    Taken(String),
    /// The requested one is outside the range.
    #[error("provided {what} is not in the valid range. The range of valid {what}s is {range}")]
    OutOfRange {
        /// `IP` or `port`.
        what: &'static str,
        /// The configured range.
        range: String,
    },
    /// Nothing is left.
    #[error("range is full")]
    Full,
}

/// The pools the API server keeps for the whole cluster (Service cluster IPs and node
/// ports), which allocation hooks take from on create and give back to on delete. The API
/// server implements it; a kind's hooks only see this trait.
pub trait Pools: Send + Sync {
    /// Takes `wanted`, or any free cluster IP.
    ///
    /// # Errors
    /// When `wanted` is taken or outside the range, or the range is full.
    fn take_cluster_ip(&self, wanted: Option<Ipv4Addr>) -> Result<Ipv4Addr, AllocError>;

    /// Gives a cluster IP back.
    fn release_cluster_ip(&self, ip: Ipv4Addr);

    /// Takes `wanted`, or any free node port.
    ///
    /// # Errors
    /// When `wanted` is taken or outside the range, or the range is full.
    fn take_node_port(&self, wanted: Option<u16>) -> Result<u16, AllocError>;

    /// Gives a node port back.
    fn release_node_port(&self, port: u16);
}

/// What a DELETE does to an object once the generic rules (preconditions, finalizers,
/// propagation) are accounted for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deletion {
    /// Removed at once unless finalizers remain.
    Immediate,
    /// Marked for deletion with this grace period; another party (a pod's node) removes it.
    Graceful(i64),
    /// Marked for deletion until the kind's own finalization (a namespace's
    /// `spec.finalizers`) is done.
    Finalizing,
}

/// A kind's behaviour. Every hook has the behaviour of a kind with no special rules as its
/// default, so a kind implements only what differs.
pub trait Strategy: std::fmt::Debug + Send + Sync {
    /// Normalizes and defaults an object on every write (the Go `SetDefaults_*` functions,
    /// and write-only fields such as a Secret's `stringData`).
    fn default(&self, _obj: &mut Value) {}

    /// Resets what a client may not set on create, such as the status (`PrepareForCreate`).
    fn prepare_for_create(&self, _obj: &mut Value) {}

    /// What names must be: DNS subdomains unless the kind says otherwise.
    fn name_rule(&self) -> NameRule {
        NameRule::Subdomain
    }

    /// Checks a new object.
    fn validate(&self, _obj: &Value) -> Vec<Cause> {
        Vec::new()
    }

    /// Adjusts an update before it is checked (`PrepareForUpdate`): fills in what the
    /// client left out that the old object had allocated, and clears what the new object
    /// no longer uses.
    fn prepare_for_update(&self, _old: &Value, _new: &mut Value) {}

    /// Checks an update: by default the create rules on the new object.
    fn validate_update(&self, _old: &Value, new: &Value) -> Vec<Cause> {
        self.validate(new)
    }

    /// Whether objects of this kind hold something from the [`Pools`] (so the API server
    /// reserves it for stored objects at start).
    fn holds_allocations(&self) -> bool {
        false
    }

    /// Takes what a new object needs from the pools; on failure nothing stays taken.
    ///
    /// # Errors
    /// The field that could not be allocated, as a validation cause.
    fn allocate(&self, _obj: &mut Value, _pools: &dyn Pools) -> Result<(), Cause> {
        Ok(())
    }

    /// Takes what an updated object needs from the pools beyond what its old version
    /// holds (a Service turned `NodePort` gets node ports); on failure nothing stays taken.
    /// What the old version held and the new one drops is given back once the update is
    /// written ([`Self::release_update`]).
    ///
    /// # Errors
    /// The field that could not be allocated, as a validation cause.
    fn allocate_update(
        &self,
        _old: &Value,
        _new: &mut Value,
        _pools: &dyn Pools,
    ) -> Result<(), Cause> {
        Ok(())
    }

    /// Gives back what `held` holds that `kept` does not: the old version's after an update
    /// is written, the new version's when it is not.
    fn release_update(&self, _held: &Value, _kept: &Value, _pools: &dyn Pools) {}

    /// Gives back what an object held (it was deleted, or its create failed).
    fn release(&self, _obj: &Value, _pools: &dyn Pools) {}

    /// Marks what a stored object holds as taken, at start.
    fn reserve(&self, _obj: &Value, _pools: &dyn Pools) {}

    /// Refuses the deletion of an object that may never be deleted; the message is the
    /// reason given with 403 Forbidden.
    ///
    /// # Errors
    /// Why the object may not be deleted.
    fn check_delete(&self, _obj: &Value) -> Result<(), String> {
        Ok(())
    }

    /// What a DELETE does; `grace` is the grace period the client asked for. May mark the
    /// object (a namespace turns `Terminating`).
    fn deletion(&self, _obj: &mut Value, _grace: Option<i64>) -> Deletion {
        Deletion::Immediate
    }

    /// Whether the kind's own finalization still holds a deleted object (beyond
    /// `metadata.finalizers`).
    fn finalizing(&self, _obj: &Value) -> bool {
        false
    }

    /// Whether the collection may be deleted at once (`deletecollection`).
    fn delete_collection(&self) -> bool {
        true
    }

    /// The label selector of the `scale` subresource, as text.
    fn scale_selector(&self, obj: &Value) -> String {
        table::label_selector(obj.pointer("/spec/selector")).unwrap_or_default()
    }

    /// The `kubectl get` columns.
    fn columns(&self) -> &'static [Column] {
        &[table::NAME, table::AGE]
    }

    /// One table row's cells, one per column.
    fn row(&self, obj: &Value, now: jiff::Timestamp) -> Vec<Value> {
        vec![table::name(obj), table::age(obj, now)]
    }
}
