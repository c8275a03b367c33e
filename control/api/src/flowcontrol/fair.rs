//! Fair queuing of one pool's seats among flows (users), as API Priority and Fairness
//! shares a priority level's concurrency: a request runs at once while a seat is free,
//! waits in its own flow's bounded queue when none is, and a freed seat goes to the
//! waiting flow that holds the fewest seats (then the one served least), so a user who
//! floods fills only their own queue and is refused while others are still served.

use std::collections::{HashMap, VecDeque};

/// What happened to an arriving request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// It holds a seat now.
    Run,
    /// It waits in its flow's queue under this ticket.
    Queued(u64),
    /// Its flow's queue is full: 429.
    Rejected,
}

struct Flow<W> {
    running: usize,
    /// Requests started since the flow last went idle (the tie-break among waiting flows).
    served: u64,
    queue: VecDeque<(u64, W)>,
}

impl<W> Default for Flow<W> {
    fn default() -> Self {
        Self {
            running: 0,
            served: 0,
            queue: VecDeque::new(),
        }
    }
}

/// The seats of one pool and who waits for them; `W` is what wakes a waiter.
pub struct FairQueues<W> {
    /// Seats; zero means no limit (kube's `--max-requests-inflight=0`).
    seats: usize,
    /// Requests one flow may have waiting.
    queue_limit: usize,
    running: usize,
    queued: usize,
    next_ticket: u64,
    flows: HashMap<String, Flow<W>>,
}

impl<W> FairQueues<W> {
    /// A pool of `seats` where each flow may queue `queue_limit` requests.
    #[must_use]
    pub fn new(seats: usize, queue_limit: usize) -> Self {
        Self {
            seats,
            queue_limit,
            running: 0,
            queued: 0,
            next_ticket: 0,
            flows: HashMap::new(),
        }
    }

    /// Requests holding a seat.
    #[must_use]
    pub fn running(&self) -> usize {
        self.running
    }

    /// Requests waiting for one.
    #[must_use]
    pub fn queued(&self) -> usize {
        self.queued
    }

    /// A request of `flow` arrives; `waiter` is kept when it has to wait.
    pub fn arrive(&mut self, flow: &str, waiter: W) -> Arrival {
        if self.seats == 0 || self.running < self.seats {
            let f = self.flows.entry(flow.to_owned()).or_default();
            f.running += 1;
            f.served += 1;
            self.running += 1;
            return Arrival::Run;
        }
        let f = self.flows.entry(flow.to_owned()).or_default();
        if f.queue.len() >= self.queue_limit {
            self.forget_if_idle(flow);
            return Arrival::Rejected;
        }
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        f.queue.push_back((ticket, waiter));
        self.queued += 1;
        Arrival::Queued(ticket)
    }

    /// A request of `flow` gives its seat back; the seat goes to the next waiter, returned
    /// with its flow (it now holds the seat, whether or not it can still be woken).
    pub fn finish(&mut self, flow: &str) -> Option<(String, W)> {
        if let Some(f) = self.flows.get_mut(flow) {
            f.running = f.running.saturating_sub(1);
            self.running = self.running.saturating_sub(1);
        }
        self.forget_if_idle(flow);
        if self.seats != 0 && self.running >= self.seats {
            return None;
        }
        let (next, f) = self
            .flows
            .iter_mut()
            .filter(|(_, f)| !f.queue.is_empty())
            .min_by_key(|(_, f)| (f.running, f.served, f.queue.front().map(|(t, _)| *t)))?;
        let (_, waiter) = f.queue.pop_front()?;
        f.running += 1;
        f.served += 1;
        self.running += 1;
        self.queued -= 1;
        Some((next.clone(), waiter))
    }

    /// A waiting request of `flow` gives up. True when it was still waiting; false when a
    /// seat had already been handed to it (it must then [`Self::finish`]).
    pub fn cancel(&mut self, flow: &str, ticket: u64) -> bool {
        let Some(f) = self.flows.get_mut(flow) else {
            return false;
        };
        let Some(at) = f.queue.iter().position(|(t, _)| *t == ticket) else {
            return false;
        };
        f.queue.remove(at);
        self.queued -= 1;
        self.forget_if_idle(flow);
        true
    }

    /// Idle flows are dropped, so memory follows the users active now and a returning user
    /// starts with a clean slate.
    fn forget_if_idle(&mut self, flow: &str) {
        if self
            .flows
            .get(flow)
            .is_some_and(|f| f.running == 0 && f.queue.is_empty())
        {
            self.flows.remove(flow);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_run_while_seats_are_free_then_queue_then_are_refused() {
        let mut q = FairQueues::new(2, 1);
        assert_eq!(q.arrive("a", 1), Arrival::Run);
        assert_eq!(q.arrive("a", 2), Arrival::Run);
        assert_eq!(q.arrive("a", 3), Arrival::Queued(0));
        assert_eq!(q.arrive("a", 4), Arrival::Rejected);
        assert_eq!((q.running(), q.queued()), (2, 1));
        // Another user's queue is their own: not refused because "a" floods.
        assert_eq!(q.arrive("b", 5), Arrival::Queued(1));
        assert_eq!(q.arrive("b", 6), Arrival::Rejected);
    }

    #[test]
    fn a_freed_seat_goes_to_the_flow_holding_the_fewest() {
        let mut q = FairQueues::new(2, 10);
        q.arrive("a", 0);
        q.arrive("a", 0);
        for w in 1..=3 {
            q.arrive("a", w);
        }
        q.arrive("b", 10);
        // "a" queued first, but holds both seats: "b" is served first.
        assert_eq!(q.finish("a"), Some(("b".to_owned(), 10)));
        // Now each holds one; "a" waits alone.
        assert_eq!(q.finish("b"), Some(("a".to_owned(), 1)));
        assert_eq!((q.running(), q.queued()), (2, 2));
    }

    #[test]
    fn among_flows_holding_as_many_the_one_served_least_goes_first() {
        let mut q = FairQueues::new(1, 10);
        q.arrive("a", 0);
        q.arrive("a", 1);
        q.arrive("b", 2);
        // Both hold no seat once "a" finishes; "a" has been served once, "b" never.
        assert_eq!(q.finish("a"), Some(("b".to_owned(), 2)));
        assert_eq!(q.finish("b"), Some(("a".to_owned(), 1)));
        assert_eq!(q.finish("a"), None);
        assert_eq!((q.running(), q.queued()), (0, 0));
        assert!(q.flows.is_empty(), "idle flows are forgotten");
    }

    #[test]
    fn a_flood_leaves_the_other_users_share_once_seats_turn_over() {
        // "a" keeps three seats' worth of requests coming; "b" sends one at a time.
        let mut q = FairQueues::new(3, 100);
        for _ in 0..3 {
            q.arrive("a", "a");
        }
        for _ in 0..50 {
            q.arrive("a", "a");
        }
        let mut b_served = 0;
        for _ in 0..30 {
            assert!(matches!(q.arrive("b", "b"), Arrival::Queued(_)));
            // One of "a"'s requests ends; the seat goes to "b", whose request ends next.
            assert_eq!(q.finish("a").map(|(f, _)| f), Some("b".to_owned()));
            b_served += 1;
            assert_eq!(q.finish("b").map(|(f, _)| f), Some("a".to_owned()));
        }
        assert_eq!(b_served, 30);
    }

    #[test]
    fn a_cancelled_waiter_leaves_the_queue_and_one_already_served_must_finish() {
        let mut q = FairQueues::new(1, 10);
        q.arrive("a", 0);
        let Arrival::Queued(first) = q.arrive("b", 1) else {
            panic!("b should wait");
        };
        let Arrival::Queued(second) = q.arrive("b", 2) else {
            panic!("b should wait");
        };
        assert!(q.cancel("b", first));
        assert_eq!(q.queued(), 1);
        assert_eq!(q.finish("a"), Some(("b".to_owned(), 2)));
        assert!(!q.cancel("b", second), "it holds the seat now");
        assert_eq!(q.finish("b"), None);
        assert_eq!(q.running(), 0);
    }

    #[test]
    fn zero_seats_means_no_limit() {
        let mut q = FairQueues::new(0, 0);
        for w in 0..1000 {
            assert_eq!(q.arrive("a", w), Arrival::Run);
        }
        assert_eq!(q.running(), 1000);
    }
}
