//! The `HorizontalPodAutoscaler` controller: every sync period, reads the target's `scale`,
//! its pods and their usage from the resource metrics API (`metrics.k8s.io`), plans the
//! replica count as kube-controller-manager does (resource and container-resource metrics
//! against requests or average values, `behavior`, bounds) and writes the scale, the
//! status with its conditions, and the events.

pub mod apply;
pub mod behavior;
pub mod plan;
pub mod replicas;

use std::{
    collections::{BTreeMap, HashMap},
    future::Future,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use k8s_openapi::api::{autoscaling::v2::HorizontalPodAutoscaler, core::v1::Pod};
use kube::{
    ResourceExt,
    runtime::{Controller, controller::Action, reflector::Store},
};
use skiff_control_runtime::{Clock, Context, Informers, informers::in_namespace};
use skiff_machinery::selector::LabelSelector;

use self::{
    behavior::History,
    plan::{Observed, ScaleView},
};
use crate::Error;

const COMPONENT: &str = "horizontal-pod-autoscaler";

/// How often each autoscaler is synced when not told otherwise (kube-controller-manager's
/// `--horizontal-pod-autoscaler-sync-period`).
pub const DEFAULT_SYNC_PERIOD: Duration = Duration::from_secs(15);
/// The scale-down stabilisation window when not told otherwise
/// (`--horizontal-pod-autoscaler-downscale-stabilization`).
pub const DEFAULT_DOWNSCALE_STABILIZATION: Duration = Duration::from_mins(5);

/// The controller's settings.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// How often each autoscaler is synced.
    pub sync_period: Duration,
    /// The scale-down stabilisation window of autoscalers that set none.
    pub downscale_stabilization: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            sync_period: DEFAULT_SYNC_PERIOD,
            downscale_stabilization: DEFAULT_DOWNSCALE_STABILIZATION,
        }
    }
}

/// The controller's own caches and bookkeeping.
#[derive(Debug)]
pub struct State {
    autoscalers: Store<HorizontalPodAutoscaler>,
    pods: Store<Pod>,
    settings: Settings,
    /// Per autoscaler (`namespace/name`): recent recommendations and rescales, which the
    /// stabilisation windows and scaling policies look back on.
    histories: Mutex<HashMap<String, History>>,
    /// When each autoscaler was last synced: changes seen in between (its own status
    /// writes among them) wait for the sync period, as kube-controller-manager's fixed
    /// interval queue makes them.
    synced: Mutex<HashMap<String, Instant>>,
}

/// The controller's context.
pub type Ctx = Context<State>;

/// The controller over the process's informers; runs until dropped.
pub fn start(
    informers: &Informers,
    settings: Settings,
    clock: Arc<dyn Clock>,
) -> impl Future<Output = ()> + Send + use<> {
    let autoscalers = informers.get::<HorizontalPodAutoscaler>();
    let pods = informers.get::<Pod>();
    let state = State {
        autoscalers: autoscalers.store(),
        pods: pods.store(),
        settings,
        histories: Mutex::new(HashMap::new()),
        synced: Mutex::new(HashMap::new()),
    };
    let ctx = Context::new(informers, COMPONENT, clock, state);
    let store = autoscalers.store();
    let changes = autoscalers.changes();
    async move {
        let _ = ctx.state.pods.wait_until_ready().await;
        let controller = Controller::for_shared_stream(changes, store);
        skiff_control_runtime::controller::run(controller, reconcile, ctx).await;
    }
}

/// Syncs one autoscaler and asks to be called again after the sync period.
///
/// # Errors
/// When the API server refuses the status write; the controller retries.
pub async fn reconcile(hpa: Arc<HorizontalPodAutoscaler>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let ns = hpa.namespace().unwrap_or_default();
    let key = format!("{ns}/{}", hpa.name_any());
    let period = ctx.state.settings.sync_period;
    {
        let mut synced = ctx
            .state
            .synced
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let instant = ctx.clock.instant();
        if let Some(last) = synced.get(&key)
            && let Some(wait) = period.checked_sub(instant.duration_since(*last))
            && !wait.is_zero()
        {
            return Ok(Action::requeue(wait));
        }
        synced.insert(key.clone(), instant);
    }
    let now = ctx.clock.now();
    let scale = apply::scale(&ctx, &hpa).await;
    let all_pods = in_namespace(&ctx.state.pods, &ns);
    let (pods, usage) = match &scale {
        Ok(ScaleView { selector, .. }) if !selector.is_empty() => {
            match LabelSelector::parse(selector) {
                Ok(sel) => {
                    let pods: Vec<&Pod> = all_pods
                        .iter()
                        .map(AsRef::as_ref)
                        .filter(|p| sel.matches(&p.labels().clone()))
                        .collect();
                    (pods, apply::usage(&ctx, &ns, selector).await)
                }
                Err(err) => (Vec::new(), Err(err.to_string())),
            }
        }
        _ => (Vec::new(), Ok(BTreeMap::new())),
    };
    let observed = Observed {
        hpa: &hpa,
        scale,
        pods,
        usage,
        now,
        downscale_window: ctx.state.settings.downscale_stabilization,
    };
    let plan = {
        let mut histories = ctx
            .state
            .histories
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // Forget autoscalers that are gone.
        histories.retain(|k, _| {
            k == &key
                || ctx.state.autoscalers.state().iter().any(|h| {
                    format!("{}/{}", h.namespace().unwrap_or_default(), h.name_any()) == *k
                })
        });
        let current = observed.scale.as_ref().map_or(0, |s| s.spec_replicas);
        let history = histories
            .entry(key.clone())
            .or_insert_with(|| History::starting_at(current, now));
        plan::plan(&observed, history)
    };
    apply::apply(&ctx, &hpa, &key, plan).await?;
    Ok(Action::requeue(period))
}
