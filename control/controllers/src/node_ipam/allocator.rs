//! Which pod CIDR a node gets: every node's CIDR, from a cache that may lag this
//! controller's own writes, plus what this controller wrote that the cache does not show
//! yet, so a node is never given a second CIDR and no two nodes share one.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use k8s_openapi::api::core::v1::Node;
use kube::ResourceExt;
use skiff_types::Ipv4Cidr;

use crate::Error;

/// The pod CIDR a node holds, if any (`spec.podCIDR`, else the first of `spec.podCIDRs`).
#[must_use]
pub fn pod_cidr(node: &Node) -> Option<Ipv4Cidr> {
    let spec = node.spec.as_ref()?;
    let text = spec
        .pod_cidr
        .as_deref()
        .filter(|s| !s.is_empty())
        .or_else(|| spec.pod_cidrs.as_ref()?.first().map(String::as_str))?;
    Ipv4Cidr::parse_masked(text).ok()
}

/// What to do for one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// The node holds this CIDR: nothing to write.
    Holds(Ipv4Cidr),
    /// Write this CIDR to the node, on condition that it has not changed since it was read
    /// (it is either new or the one this controller already chose for the node).
    Assign(Ipv4Cidr),
}

/// A CIDR this controller wrote, or is writing, to a node whose cached copy does not show
/// it yet.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Known {
    uid: String,
    cidr: Ipv4Cidr,
}

/// The range and the CIDRs known held beyond the cache.
#[derive(Debug)]
pub struct Allocator {
    cluster: Ipv4Cidr,
    mask: u8,
    /// By node name. An entry stays until the cache shows that node with a CIDR, or shows
    /// it gone (deleted, or re-created under another uid).
    known: BTreeMap<String, Known>,
}

impl Allocator {
    /// Splits `cluster` into CIDRs of `mask` bits.
    #[must_use]
    pub fn new(cluster: Ipv4Cidr, mask: u8) -> Self {
        Self {
            cluster,
            mask,
            known: BTreeMap::new(),
        }
    }

    /// What to do for `node` given every cached node (`node` among them, possibly older
    /// than what the API server holds). Every CIDR a node holds in `nodes` or is known to
    /// hold counts as taken before anything is allocated; a node already known to hold one
    /// gets that one again, never a second. An allocation is remembered at once: if its
    /// write fails, [`Self::observed`] with the node as read afresh corrects it.
    ///
    /// # Errors
    /// [`Error::Invalid`] when every CIDR is taken.
    pub fn plan(&mut self, node: &Node, nodes: &[Arc<Node>]) -> Result<Plan, Error> {
        self.forget_shown(nodes);
        let name = node.name_any();
        if let Some(cidr) = pod_cidr(node) {
            return Ok(Plan::Holds(cidr));
        }
        let uid = node.uid().unwrap_or_default();
        if let Some(known) = self.known.get(&name)
            && known.uid == uid
        {
            return Ok(Plan::Assign(known.cidr));
        }
        let taken: BTreeSet<Ipv4Cidr> = nodes
            .iter()
            .filter_map(|n| pod_cidr(n))
            .chain(self.known.values().map(|k| k.cidr))
            .collect();
        let free = (0..self.cluster.subnet_count(self.mask))
            .filter_map(|i| self.cluster.subnet(self.mask, i))
            .find(|c| !taken.iter().any(|t| t.overlaps(c)))
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "no /{} pod CIDR left in {} for node {name}",
                    self.mask, self.cluster
                ))
            })?;
        self.known.insert(name, Known { uid, cidr: free });
        Ok(Plan::Assign(free))
    }

    /// Takes in `node` as the API server returned it (after a write, or read afresh after
    /// a refused one): the CIDR it holds is the one it keeps, and a different one this
    /// controller had chosen for it is free again.
    pub fn observed(&mut self, node: &Node) {
        // Without a CIDR the write was refused for another reason (a stale copy): the
        // choice stands for the retry.
        if let Some(cidr) = pod_cidr(node) {
            let uid = node.uid().unwrap_or_default();
            self.known.insert(node.name_any(), Known { uid, cidr });
        }
    }

    /// Forgets the node `name`, which the API server no longer has.
    pub fn gone(&mut self, name: &str) {
        self.known.remove(name);
    }

    /// Drops what the cache now shows: nodes it holds with a CIDR (the cache is the record
    /// from then on) and nodes it no longer holds.
    fn forget_shown(&mut self, nodes: &[Arc<Node>]) {
        let cached: BTreeMap<String, (String, bool)> = nodes
            .iter()
            .map(|n| {
                (
                    n.name_any(),
                    (n.uid().unwrap_or_default(), pod_cidr(n).is_some()),
                )
            })
            .collect();
        self.known.retain(|name, known| {
            cached
                .get(name)
                .is_some_and(|(uid, has)| *uid == known.uid && !has)
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::node;

    fn cidr(text: &str) -> Ipv4Cidr {
        text.parse().unwrap()
    }

    fn holding(name: &str, pod_cidr: &str) -> Arc<Node> {
        let mut n = (*node(name, &[])).clone();
        n.spec.as_mut().unwrap().pod_cidr = Some(pod_cidr.into());
        Arc::new(n)
    }

    fn allocator() -> Allocator {
        Allocator::new(cidr("10.42.0.0/16"), 24)
    }

    #[test]
    fn every_cidr_in_the_cache_is_taken_before_the_first_allocation() {
        let mut a = allocator();
        let nodes = [
            holding("a", "10.42.0.0/24"),
            holding("b", "10.42.2.0/24"),
            node("c", &[]),
            node("d", &[]),
        ];
        assert_eq!(
            a.plan(&nodes[2], &nodes).unwrap(),
            Plan::Assign(cidr("10.42.1.0/24"))
        );
        assert_eq!(
            a.plan(&nodes[3], &nodes).unwrap(),
            Plan::Assign(cidr("10.42.3.0/24"))
        );
        assert_eq!(
            a.plan(&nodes[0], &nodes).unwrap(),
            Plan::Holds(cidr("10.42.0.0/24"))
        );
    }

    #[test]
    fn a_node_whose_cached_copy_lags_the_write_gets_the_same_cidr_not_a_second() {
        let mut a = allocator();
        let stale = [node("n0", &[]), node("n1", &[])];
        assert_eq!(
            a.plan(&stale[0], &stale).unwrap(),
            Plan::Assign(cidr("10.42.0.0/24"))
        );
        // Another event for n0 arrives before the cache shows the write.
        assert_eq!(
            a.plan(&stale[0], &stale).unwrap(),
            Plan::Assign(cidr("10.42.0.0/24"))
        );
        assert_eq!(
            a.plan(&stale[1], &stale).unwrap(),
            Plan::Assign(cidr("10.42.1.0/24"))
        );
    }

    #[test]
    fn a_cidr_stays_taken_once_the_cache_shows_it() {
        let mut a = allocator();
        let before = [node("n0", &[])];
        assert_eq!(
            a.plan(&before[0], &before).unwrap(),
            Plan::Assign(cidr("10.42.0.0/24"))
        );
        let after = [holding("n0", "10.42.0.0/24"), node("n1", &[])];
        assert_eq!(
            a.plan(&after[1], &after).unwrap(),
            Plan::Assign(cidr("10.42.1.0/24"))
        );
        assert_eq!(
            a.plan(&after[0], &after).unwrap(),
            Plan::Holds(cidr("10.42.0.0/24"))
        );
    }

    #[test]
    fn a_refused_write_keeps_the_cidr_the_fresh_node_holds_and_frees_the_chosen_one() {
        let mut a = allocator();
        let stale = [node("n0", &[]), node("n1", &[]), node("n2", &[])];
        assert_eq!(
            a.plan(&stale[0], &stale).unwrap(),
            Plan::Assign(cidr("10.42.0.0/24"))
        );
        // The write was refused: the API server's n0 holds 10.42.1.0/24 already.
        let fresh = holding("n0", "10.42.1.0/24");
        a.observed(&fresh);
        assert_eq!(
            a.plan(&fresh, &stale).unwrap(),
            Plan::Holds(cidr("10.42.1.0/24"))
        );
        // The chosen one is free; n0's real one is taken though the cache does not show it.
        assert_eq!(
            a.plan(&stale[1], &stale).unwrap(),
            Plan::Assign(cidr("10.42.0.0/24"))
        );
        assert_eq!(
            a.plan(&stale[2], &stale).unwrap(),
            Plan::Assign(cidr("10.42.2.0/24"))
        );
    }

    #[test]
    fn a_write_refused_for_a_stale_copy_is_retried_with_the_same_cidr() {
        let mut a = allocator();
        let stale = [node("n0", &[])];
        let first = a.plan(&stale[0], &stale).unwrap();
        // Read afresh: someone else changed n0 (its status), no CIDR yet.
        let fresh = node("n0", &[("changed", "yes")]);
        a.observed(&fresh);
        assert_eq!(a.plan(&fresh, &stale).unwrap(), first);
    }

    #[test]
    fn a_deleted_or_recreated_node_frees_what_it_was_given() {
        let mut a = allocator();
        let nodes = [node("n0", &[])];
        assert_eq!(
            a.plan(&nodes[0], &nodes).unwrap(),
            Plan::Assign(cidr("10.42.0.0/24"))
        );
        let mut again = (*node("n0", &[])).clone();
        again.metadata.uid = Some("uid-n0-again".into());
        let again = Arc::new(again);
        let nodes = [again.clone()];
        assert_eq!(
            a.plan(&again, &nodes).unwrap(),
            Plan::Assign(cidr("10.42.0.0/24")),
            "the old n0 is gone from the cache, so its CIDR is free"
        );
        a.gone("n0");
        let nodes = [node("n1", &[])];
        assert_eq!(
            a.plan(&nodes[0], &nodes).unwrap(),
            Plan::Assign(cidr("10.42.0.0/24"))
        );
    }

    #[test]
    fn the_first_of_pod_cidrs_counts_when_pod_cidr_is_unset() {
        let mut n = (*node("n0", &[])).clone();
        n.spec.as_mut().unwrap().pod_cidrs = Some(vec!["10.42.7.0/24".into()]);
        assert_eq!(pod_cidr(&n), Some(cidr("10.42.7.0/24")));
    }

    #[test]
    fn an_exhausted_range_is_an_error_naming_it() {
        let mut a = Allocator::new(cidr("10.42.0.0/23"), 24);
        let nodes = [
            holding("a", "10.42.0.0/24"),
            holding("b", "10.42.1.0/24"),
            node("c", &[]),
        ];
        let err = a.plan(&nodes[2], &nodes).unwrap_err();
        assert!(err.to_string().contains("10.42.0.0/23"), "{err}");
    }
}
