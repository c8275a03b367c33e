//! What the garbage collector does about one object, decided from the graph and what is
//! known of its owners: carry out Foreground or Orphan propagation for an owner being
//! deleted, collect a dependent whose owners are all gone, drop references to owners that
//! are gone while others remain.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::PropagationPolicy;

use super::graph::Item;

/// The finalizer of an owner deleted with Foreground propagation.
pub const FOREGROUND: &str = "foregroundDeletion";
/// The finalizer of an owner deleted with Orphan propagation.
pub const ORPHAN: &str = "orphan";

/// One write.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Delete an object with this propagation.
    Delete(Item, PropagationPolicy),
    /// Set an object's finalizers.
    SetFinalizers(Item, Vec<String>),
    /// Set an object's owner references.
    SetOwners(Item, Vec<OwnerReference>),
}

/// What is known of one owner of a dependent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    /// It does not exist (any more, or with that uid).
    Gone,
    /// It exists; `foreground` when it is being deleted in the foreground.
    Alive {
        /// Being deleted with Foreground propagation.
        foreground: bool,
    },
}

/// Steps for `item` (with `uid`) when it is an owner being deleted with Foreground or
/// Orphan propagation; `None` when it is not.
#[must_use]
pub fn owner_steps(uid: &str, item: &Item, dependents: &[Item]) -> Option<Vec<Step>> {
    if !item.deleting {
        return None;
    }
    let without = |finalizer: &str| -> Vec<String> {
        item.finalizers
            .iter()
            .filter(|f| *f != finalizer)
            .cloned()
            .collect()
    };
    if item.has_finalizer(FOREGROUND) {
        // Dependents first; the owner goes once none blocks it.
        let mut steps: Vec<Step> = dependents
            .iter()
            .filter(|d| !d.deleting)
            .map(|d| Step::Delete(d.clone(), PropagationPolicy::Foreground))
            .collect();
        let blocking = dependents.iter().any(|d| {
            d.owners
                .iter()
                .any(|o| o.uid == uid && o.block_owner_deletion == Some(true))
        });
        if !blocking {
            steps.push(Step::SetFinalizers(item.clone(), without(FOREGROUND)));
        }
        return Some(steps);
    }
    if item.has_finalizer(ORPHAN) {
        // Release the dependents, then let the owner go.
        let mut steps: Vec<Step> = dependents
            .iter()
            .map(|d| {
                let owners = d.owners.iter().filter(|o| o.uid != uid).cloned().collect();
                Step::SetOwners(d.clone(), owners)
            })
            .collect();
        steps.push(Step::SetFinalizers(item.clone(), without(ORPHAN)));
        return Some(steps);
    }
    None
}

/// Whether `item` is a dependent whose owners must be looked up.
#[must_use]
pub fn is_live_dependent(item: &Item) -> bool {
    !item.owners.is_empty() && !item.deleting
}

/// The step for a live dependent given what is known of each of its owners (in the order
/// of its references).
#[must_use]
pub fn dependent_step(item: &Item, owners: &[Owner]) -> Option<Step> {
    let alive: Vec<OwnerReference> = item
        .owners
        .iter()
        .zip(owners)
        .filter(|(_, o)| matches!(o, Owner::Alive { .. }))
        .map(|(r, _)| r.clone())
        .collect();
    let foreground_owner = owners
        .iter()
        .any(|o| matches!(o, Owner::Alive { foreground: true }));
    if alive.is_empty() {
        Some(Step::Delete(item.clone(), PropagationPolicy::Background))
    } else if alive.len() < item.owners.len() {
        Some(Step::SetOwners(item.clone(), alive))
    } else if foreground_owner {
        Some(Step::Delete(item.clone(), PropagationPolicy::Foreground))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(uid: &str, blocks: bool) -> OwnerReference {
        OwnerReference {
            uid: uid.into(),
            name: format!("name-{uid}"),
            block_owner_deletion: blocks.then_some(true),
            ..OwnerReference::default()
        }
    }

    fn item(name: &str, owners: Vec<OwnerReference>, deleting: bool, finalizers: &[&str]) -> Item {
        Item {
            kind: 0,
            namespace: Some("default".into()),
            name: name.into(),
            owners,
            deleting,
            finalizers: finalizers.iter().map(|f| (*f).to_owned()).collect(),
        }
    }

    #[test]
    fn foreground_deletes_dependents_first_and_waits_for_blocking_ones() {
        let owner = item("web", Vec::new(), true, &[FOREGROUND, "other"]);
        let pod = item("web-1", vec![reference("u", true)], false, &[]);
        let going = item("web-2", vec![reference("u", true)], true, &[]);
        let steps = owner_steps("u", &owner, &[pod.clone(), going]).unwrap();
        assert_eq!(steps, [Step::Delete(pod, PropagationPolicy::Foreground)]);
        // Nothing blocks any more: the owner loses its finalizer.
        let loose = item("web-3", vec![reference("u", false)], false, &[]);
        let steps = owner_steps("u", &owner, std::slice::from_ref(&loose)).unwrap();
        assert_eq!(
            steps,
            [
                Step::Delete(loose, PropagationPolicy::Foreground),
                Step::SetFinalizers(owner.clone(), vec!["other".into()])
            ]
        );
    }

    #[test]
    fn orphan_releases_the_dependents_then_the_owner() {
        let owner = item("web", Vec::new(), true, &[ORPHAN]);
        let pod = item(
            "web-1",
            vec![reference("u", true), reference("v", false)],
            false,
            &[],
        );
        let steps = owner_steps("u", &owner, std::slice::from_ref(&pod)).unwrap();
        assert_eq!(
            steps,
            [
                Step::SetOwners(pod, vec![reference("v", false)]),
                Step::SetFinalizers(owner, Vec::new())
            ]
        );
    }

    #[test]
    fn owners_not_being_deleted_with_propagation_are_not_owner_work() {
        assert_eq!(
            owner_steps("u", &item("a", Vec::new(), false, &[FOREGROUND]), &[]),
            None
        );
        assert_eq!(
            owner_steps("u", &item("a", Vec::new(), true, &[]), &[]),
            None
        );
    }

    #[test]
    fn a_dependent_goes_when_every_owner_is_gone_and_loses_only_gone_ones_otherwise() {
        let pod = item(
            "p",
            vec![reference("a", true), reference("b", false)],
            false,
            &[],
        );
        assert!(is_live_dependent(&pod));
        assert_eq!(
            dependent_step(&pod, &[Owner::Gone, Owner::Gone]),
            Some(Step::Delete(pod.clone(), PropagationPolicy::Background))
        );
        assert_eq!(
            dependent_step(&pod, &[Owner::Gone, Owner::Alive { foreground: false }]),
            Some(Step::SetOwners(pod.clone(), vec![reference("b", false)]))
        );
        assert_eq!(
            dependent_step(&pod, &[Owner::Alive { foreground: false }; 2]),
            None
        );
        assert_eq!(
            dependent_step(
                &pod,
                &[
                    Owner::Alive { foreground: false },
                    Owner::Alive { foreground: true }
                ]
            ),
            Some(Step::Delete(pod, PropagationPolicy::Foreground))
        );
    }
}
