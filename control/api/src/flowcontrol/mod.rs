//! Keeps one client from exhausting the API server, as kube-apiserver's max-in-flight and
//! Priority and Fairness filters do: short requests share `--max-requests-inflight`
//! (read-only) and `--max-mutating-requests-inflight` seats fairly among users, long-running
//! ones (watch, exec, attach, port-forward, proxy, logs) take no seat, a user holds at most
//! `--max-watches-per-user` watches, and whoever is refused gets 429 with `Retry-After`.

mod fair;
mod watches;

use std::{
    fmt::Write as _,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use fair::{Arrival, FairQueues};
use http::{HeaderValue, Response, header};
use http_body_util::BodyExt as _;
use skiff_machinery::{status::StatusError, user};
use tokio::sync::oneshot;
pub use watches::WatchSlot;
use watches::Watches;

use crate::{
    authz::attributes::Attributes,
    http::{self as h, Body},
};

/// The limits, with kube-apiserver's defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Seats for read-only requests (`--max-requests-inflight`, 0: no limit).
    pub max_requests_inflight: usize,
    /// Seats for mutating requests (`--max-mutating-requests-inflight`, 0: no limit).
    pub max_mutating_requests_inflight: usize,
    /// Requests one user may have waiting per pool (APF's `queueLengthLimit`).
    pub queue_length_limit: usize,
    /// How long a request waits for a seat before 429 (APF waits a quarter of the 60 s
    /// request timeout).
    pub queue_wait: Duration,
    /// Watches one user may hold open (0: no limit).
    pub max_watches_per_user: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_requests_inflight: 400,
            max_mutating_requests_inflight: 200,
            queue_length_limit: 50,
            queue_wait: Duration::from_secs(15),
            max_watches_per_user: 200,
        }
    }
}

/// What the limits let through, held for as long as the response is being served.
#[derive(Debug)]
pub enum Permit {
    /// Not counted: exempt callers and long-running requests other than watches.
    Free,
    /// A seat in a pool.
    Seat(Seat),
    /// One of the caller's watches.
    Watch(WatchSlot),
}

/// Seats shared by every request of one kind.
struct Pool {
    kind: &'static str,
    queues: Mutex<FairQueues<oneshot::Sender<()>>>,
    wait: Duration,
}

impl Pool {
    fn new(kind: &'static str, seats: usize, limits: &Limits) -> Arc<Self> {
        Arc::new(Self {
            kind,
            queues: Mutex::new(FairQueues::new(seats, limits.queue_length_limit)),
            wait: limits.queue_wait,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FairQueues<oneshot::Sender<()>>> {
        self.queues.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Gives `user`'s seat back and wakes whoever it goes to. A waiter that went away
    /// finds the seat handed to it when it cancels, and gives it back then.
    fn release(&self, user: &str) {
        if let Some((_, waiter)) = self.lock().finish(user) {
            let _ = waiter.send(());
        }
    }

    async fn acquire(self: &Arc<Self>, user: &str) -> Option<Seat> {
        let (tx, rx) = oneshot::channel();
        let arrival = self.lock().arrive(user, tx);
        match arrival {
            Arrival::Run => Some(Seat {
                pool: Arc::clone(self),
                user: user.to_owned(),
            }),
            Arrival::Rejected => None,
            Arrival::Queued(ticket) => {
                let mut waiting = Waiting {
                    pool: Arc::clone(self),
                    user: user.to_owned(),
                    ticket,
                    settled: false,
                };
                // Woken or not, the seat is ours unless the request is still queued.
                let _ = tokio::time::timeout(self.wait, rx).await;
                waiting.settle()
            }
        }
    }
}

/// A queued request. Dropped before it settles (its client went away), it leaves the queue
/// or gives back the seat it was handed meanwhile.
struct Waiting {
    pool: Arc<Pool>,
    user: String,
    ticket: u64,
    settled: bool,
}

impl Waiting {
    /// Leaves the queue (none) unless a seat was handed over already (that seat).
    fn settle(&mut self) -> Option<Seat> {
        self.settled = true;
        let still_queued = self.pool.lock().cancel(&self.user, self.ticket);
        (!still_queued).then(|| Seat {
            pool: Arc::clone(&self.pool),
            user: self.user.clone(),
        })
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        if !self.settled {
            drop(self.settle());
        }
    }
}

/// A seat held by one request.
#[derive(Debug)]
pub struct Seat {
    pool: Arc<Pool>,
    user: String,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

impl Drop for Seat {
    fn drop(&mut self) {
        self.pool.release(&self.user);
    }
}

/// The API server's request limits.
#[derive(Debug)]
pub struct FlowControl {
    read_only: Arc<Pool>,
    mutating: Arc<Pool>,
    watches: Arc<Watches>,
}

impl Default for FlowControl {
    fn default() -> Self {
        Self::new(&Limits::default())
    }
}

/// What a request is to the limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Exempt,
    Watch,
    LongRunning,
    ReadOnly,
    Mutating,
}

/// kube-apiserver's `BasicLongRunningRequestCheck`: these subresources stream for as long
/// as the client wants.
const LONG_RUNNING_SUBRESOURCES: [&str; 5] = ["attach", "exec", "proxy", "log", "portforward"];

/// Control-plane identities whose watches are not capped: they are trusted components that
/// watch every kind they reconcile (APF gives them priority levels of their own).
const UNCAPPED_USERS: [&str; 2] = [
    crate::authz::policy::SCHEDULER,
    crate::authz::policy::CONTROLLER_MANAGER,
];

fn classify(attrs: &Attributes) -> Class {
    let u = &attrs.user;
    // APF's exempt FlowSchemas: system:masters and health probes.
    let probe = attrs.resource.is_none()
        && ["/healthz", "/livez", "/readyz"]
            .iter()
            .any(|p| attrs.path == *p || attrs.path.starts_with(&format!("{p}/")));
    if u.in_group(user::MASTERS) || probe {
        return Class::Exempt;
    }
    let sub = attrs
        .resource
        .as_ref()
        .map_or("", |r| r.subresource.as_str());
    match attrs.verb.as_str() {
        "watch" => Class::Watch,
        "proxy" => Class::LongRunning,
        _ if LONG_RUNNING_SUBRESOURCES.contains(&sub) => Class::LongRunning,
        "get" | "list" | "head" => Class::ReadOnly,
        _ => Class::Mutating,
    }
}

impl FlowControl {
    /// Limits as given.
    #[must_use]
    pub fn new(limits: &Limits) -> Self {
        Self {
            read_only: Pool::new("readOnly", limits.max_requests_inflight, limits),
            mutating: Pool::new("mutating", limits.max_mutating_requests_inflight, limits),
            watches: Arc::new(Watches::new(limits.max_watches_per_user)),
        }
    }

    /// Lets the request through (perhaps after waiting for a seat), or refuses it with 429.
    ///
    /// # Errors
    /// 429 `TooManyRequests` when the caller's queue is full, its wait ran out, or it holds
    /// as many watches as allowed.
    pub async fn admit(&self, attrs: &Attributes) -> Result<Permit, StatusError> {
        let user = &attrs.user.name;
        let pool = match classify(attrs) {
            Class::Exempt | Class::LongRunning => return Ok(Permit::Free),
            Class::Watch => {
                let u = &attrs.user;
                if UNCAPPED_USERS.contains(&u.name.as_str()) || u.in_group(user::NODES) {
                    return Ok(Permit::Free);
                }
                return Watches::acquire(&self.watches, user)
                    .map(Permit::Watch)
                    .ok_or_else(too_many_requests);
            }
            Class::ReadOnly => &self.read_only,
            Class::Mutating => &self.mutating,
        };
        pool.acquire(user)
            .await
            .map(Permit::Seat)
            .ok_or_else(too_many_requests)
    }

    /// kube's gauges: `apiserver_current_inflight_requests` and
    /// `apiserver_current_inqueue_requests` by request kind.
    #[must_use]
    pub fn render(&self) -> String {
        let mut out = String::new();
        let pools = [&self.read_only, &self.mutating];
        let counts: Vec<_> = pools
            .iter()
            .map(|p| {
                let q = p.lock();
                (p.kind, q.running(), q.queued())
            })
            .collect();
        out.push_str("# HELP apiserver_current_inflight_requests Maximal number of currently used inflight request limit of this apiserver per request kind in last second.\n# TYPE apiserver_current_inflight_requests gauge\n");
        for (kind, running, _) in &counts {
            let _ = writeln!(
                out,
                "apiserver_current_inflight_requests{{request_kind=\"{kind}\"}} {running}"
            );
        }
        out.push_str("# HELP apiserver_current_inqueue_requests Maximal number of queued requests in this apiserver per request kind in last second.\n# TYPE apiserver_current_inqueue_requests gauge\n");
        for (kind, _, queued) in &counts {
            let _ = writeln!(
                out,
                "apiserver_current_inqueue_requests{{request_kind=\"{kind}\"}} {queued}"
            );
        }
        out
    }
}

/// The refusal, as kube's `NewTooManyRequests`: a Status with reason `TooManyRequests`.
#[must_use]
pub fn too_many_requests() -> StatusError {
    StatusError::new(
        429,
        "TooManyRequests",
        "Too many requests, please try again later.",
    )
}

/// The 429 response with the `Retry-After` kube sends.
#[must_use]
pub fn refusal(err: &StatusError) -> Response<Body> {
    let mut resp = h::error(err);
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    resp
}

/// `resp` with `permit` held until its body has been sent (a watch's, for as long as it
/// streams).
#[must_use]
pub fn hold(resp: Response<Body>, permit: Permit) -> Response<Body> {
    if matches!(permit, Permit::Free) {
        return resp;
    }
    resp.map(|body| {
        Held {
            body,
            _permit: permit,
        }
        .boxed_unsync()
    })
}

/// A response body that keeps a [`Permit`] alive.
struct Held {
    body: Body,
    _permit: Permit,
}

impl hyper::body::Body for Held {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use skiff_machinery::user::UserInfo;

    use super::*;
    use crate::authz::attributes;

    fn attrs(user: &str, groups: &[&str], method: &str, path: &str, watch: bool) -> Attributes {
        attributes::from_request(
            UserInfo::new(user, groups.iter().copied()),
            method,
            path,
            &|k| (k == "watch" && watch).then(|| "true".to_owned()),
        )
    }

    #[test]
    fn requests_are_classed_as_kube_does() {
        fn c(method: &str, path: &str, watch: bool) -> Class {
            classify(&attrs("u", &[], method, path, watch))
        }
        assert_eq!(c("GET", "/api/v1/pods", false), Class::ReadOnly);
        assert_eq!(c("GET", "/api/v1/pods", true), Class::Watch);
        assert_eq!(
            c("POST", "/api/v1/namespaces/d/pods", false),
            Class::Mutating
        );
        assert_eq!(
            c("DELETE", "/api/v1/namespaces/d/pods/p", false),
            Class::Mutating
        );
        for sub in ["log", "exec", "attach", "portforward", "proxy"] {
            assert_eq!(
                c("GET", &format!("/api/v1/namespaces/d/pods/p/{sub}"), false),
                Class::LongRunning,
                "{sub}"
            );
        }
        assert_eq!(c("GET", "/healthz", false), Class::Exempt);
        assert_eq!(c("GET", "/version", false), Class::ReadOnly);
        assert_eq!(
            classify(&attrs(
                "admin",
                &["system:masters"],
                "POST",
                "/api/v1/namespaces",
                false
            )),
            Class::Exempt
        );
    }

    #[tokio::test]
    async fn a_user_over_the_limits_is_refused_429_while_another_is_served() {
        let fc = FlowControl::new(&Limits {
            max_requests_inflight: 1,
            max_mutating_requests_inflight: 1,
            queue_length_limit: 0,
            queue_wait: Duration::from_mins(1),
            max_watches_per_user: 1,
        });
        let list = |u| attrs(u, &[], "GET", "/api/v1/pods", false);
        let held = fc.admit(&list("alice")).await.unwrap();
        let refused = fc.admit(&list("alice")).await.unwrap_err();
        assert_eq!(
            (refused.code, refused.reason.as_str()),
            (429, "TooManyRequests")
        );
        // The mutating pool is separate; exempt and long-running requests take no seat.
        let create = attrs(
            "alice",
            &[],
            "POST",
            "/api/v1/namespaces/d/configmaps",
            false,
        );
        let write = fc.admit(&create).await.unwrap();
        assert!(fc.admit(&create).await.is_err());
        let admin = attrs("admin", &["system:masters"], "GET", "/api/v1/pods", false);
        assert!(matches!(fc.admit(&admin).await, Ok(Permit::Free)));
        let logs = attrs(
            "alice",
            &[],
            "GET",
            "/api/v1/namespaces/d/pods/p/log",
            false,
        );
        assert!(matches!(fc.admit(&logs).await, Ok(Permit::Free)));
        assert!(
            fc.render()
                .contains("apiserver_current_inflight_requests{request_kind=\"readOnly\"} 1")
        );
        drop((held, write));
        // Seats given back are taken again.
        let bob = fc.admit(&list("bob")).await.unwrap();
        assert!(matches!(bob, Permit::Seat(_)));
        // One watch per user: alice's second is refused, bob's first is not.
        let watch = |u| attrs(u, &[], "GET", "/api/v1/pods", true);
        let w = fc.admit(&watch("alice")).await.unwrap();
        assert_eq!(fc.admit(&watch("alice")).await.unwrap_err().code, 429);
        assert!(fc.admit(&watch("bob")).await.is_ok());
        drop(w);
        assert!(fc.admit(&watch("alice")).await.is_ok());
    }

    #[tokio::test]
    async fn a_queued_request_gets_the_seat_before_the_flooding_users_next() {
        let fc = Arc::new(FlowControl::new(&Limits {
            max_requests_inflight: 1,
            queue_length_limit: 5,
            queue_wait: Duration::from_mins(10),
            ..Limits::default()
        }));
        let list = |u: &str| attrs(u, &[], "GET", "/api/v1/pods", false);
        let held = fc.admit(&list("alice")).await.unwrap();
        let (order_tx, mut order) = tokio::sync::mpsc::unbounded_channel();
        let spawn = |u: &'static str| {
            let fc = Arc::clone(&fc);
            let tx = order_tx.clone();
            let a = list(u);
            tokio::spawn(async move {
                let permit = fc.admit(&a).await.unwrap();
                tx.send(u).unwrap();
                drop(permit);
            })
        };
        let alice_more = spawn("alice");
        // Let alice's second request queue before bob's arrives.
        while fc.read_only.lock().queued() < 1 {
            tokio::task::yield_now().await;
        }
        let bob = spawn("bob");
        while fc.read_only.lock().queued() < 2 {
            tokio::task::yield_now().await;
        }
        drop(held);
        assert_eq!(order.recv().await, Some("bob"));
        assert_eq!(order.recv().await, Some("alice"));
        bob.await.unwrap();
        alice_more.await.unwrap();
        assert_eq!(fc.read_only.lock().running(), 0);
    }

    #[tokio::test]
    async fn a_waiter_that_times_out_or_goes_away_leaves_no_seat_taken() {
        let limits = Limits {
            max_requests_inflight: 1,
            queue_length_limit: 5,
            ..Limits::default()
        };
        let list = attrs("alice", &[], "GET", "/api/v1/pods", false);
        let impatient = FlowControl::new(&Limits {
            queue_wait: Duration::ZERO,
            ..limits
        });
        let held = impatient.admit(&list).await.unwrap();
        assert_eq!(impatient.admit(&list).await.unwrap_err().code, 429);
        drop(held);
        assert_eq!(impatient.read_only.lock().running(), 0);

        let fc = Arc::new(FlowControl::new(&Limits {
            queue_wait: Duration::from_mins(10),
            ..limits
        }));
        let held = fc.admit(&list).await.unwrap();
        let waiting = {
            let fc = Arc::clone(&fc);
            let list = list.clone();
            tokio::spawn(async move {
                let _ = fc.admit(&list).await;
            })
        };
        while fc.read_only.lock().queued() < 1 {
            tokio::task::yield_now().await;
        }
        // Its client went away: the request leaves the queue.
        waiting.abort();
        let _ = waiting.await;
        assert_eq!(fc.read_only.lock().queued(), 0);
        drop(held);
        assert_eq!(fc.read_only.lock().running(), 0);
    }
}
