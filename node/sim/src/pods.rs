//! One pod watch for every simulated node of the process: each event goes to the pod
//! dispatch of the node the pod is bound to; the start and end of a (re)list go to all of
//! them, so each tells which of its pods were deleted while the watch was down.

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api,
    runtime::{WatchStreamExt, watcher},
};

use crate::{Sim, SimError};

/// The node a pod is bound to, if it is one of this process's live nodes.
fn node_of(sim: &Sim, pod: &Pod) -> Option<Arc<crate::nodes::NodeState>> {
    let name = pod.spec.as_ref()?.node_name.as_deref()?;
    sim.node(sim.naming.index_of(name)?)
}

/// Routes the events of the watch of every bound pod until it ends.
pub(crate) async fn route(sim: Arc<Sim>) -> Result<(), SimError> {
    let api: Api<Pod> = Api::all(sim.client.clone());
    // Only bound pods: the ones still waiting for the scheduler are nobody's yet.
    let bound = watcher::Config::default()
        .any_semantic()
        .fields("spec.nodeName!=");
    let mut events = std::pin::pin!(watcher(api, bound).default_backoff());
    while let Some(event) = events.next().await {
        match event {
            Ok(event @ (watcher::Event::Init | watcher::Event::InitDone)) => {
                for node in sim.live() {
                    node.send(event.clone());
                }
            }
            Ok(watcher::Event::Apply(pod)) => {
                if let Some(node) = node_of(&sim, &pod) {
                    node.send(watcher::Event::Apply(pod));
                }
            }
            Ok(watcher::Event::InitApply(pod)) => {
                if let Some(node) = node_of(&sim, &pod) {
                    node.send(watcher::Event::InitApply(pod));
                }
            }
            Ok(watcher::Event::Delete(pod)) => {
                if let Some(node) = node_of(&sim, &pod) {
                    node.send(watcher::Event::Delete(pod));
                }
            }
            Err(err) => tracing::warn!(?err, "pod watch failed, retrying"),
        }
    }
    Err(SimError::WatchEnded("pod"))
}
