//! Fair turns: how much work each connection may do per turn of the loop, which connections
//! are served next, and how much work one turn does in total.
//!
//! mio is edge-triggered: a connection whose share of a turn ran out with bytes still
//! waiting gets no new edge for them, so it must be remembered. Two queues hold what is
//! owed:
//!
//! - **fresh**: connections that had a readiness event which this turn had no room left to
//!   serve. They are served first in the next turn, oldest first, ahead of the new events.
//! - **backlog**: connections that used their whole share and may have more waiting. They are
//!   served round-robin, after the fresh events, up to a share of their own per turn, so that
//!   however many connections are busy, a fresh event waits for at most about two turn
//!   shares of other work, and the busy ones still advance every turn.
//!
//! A connection that is queued gets no second entry: the events that come for it meanwhile
//! are folded into the one service it is owed (a queued service reads and writes as if told
//! everything). Work is counted in bytes moved (read plus written) and a fixed cost per
//! service, so that many small services count as well as a few large ones.
//!
//! This room knows keys, not connections: the reactor serves a key and reports back.

use std::collections::VecDeque;

/// The most one connection reads in one service: one read with the default 64 KiB read
/// buffer. Redis reads 16 KiB per event; measured here, 64 KiB keeps bulk throughput and
/// bounds the polite client's wait as well (see the README).
pub(crate) const READ_SHARE: usize = 64 * 1024;
/// The most one connection's queued output is written in one service (Redis:
/// `NET_MAX_WRITES_PER_EVENT`, 64 KiB). Echoes of a read go out with the read, whatever
/// this says: they are never more than the read itself.
pub(crate) const WRITE_SHARE: usize = 64 * 1024;
/// The work of fresh events in one turn, and separately of the backlog: past it, fresh
/// events wait for the next turn (first in line), and the backlog's round-robin goes on
/// there. Reads and writes both count, so 1 MiB is 512 KiB of echo, about 0.3 ms here.
pub(crate) const TURN_SHARE: usize = 1024 * 1024;
/// What one service counts for beyond its bytes: two system calls and the bookkeeping
/// around them, as much time as moving about 2 KiB.
const SERVICE_COST: usize = 2 * 1024;

/// Where a key stands in the schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Place {
    #[default]
    Unqueued,
    Queued,
}

/// The two queues and the work done in the current turn.
#[derive(Debug, Default)]
pub(crate) struct Schedule {
    fresh: VecDeque<usize>,
    backlog: VecDeque<usize>,
    /// By key: whether it already waits in a queue. A key closed while queued keeps its
    /// entry; a new connection under the same key is then served once for nothing.
    places: Vec<Place>,
    fresh_spent: usize,
    backlog_spent: usize,
    /// Backlog entries this turn may still serve: each is served at most once a turn.
    backlog_left: usize,
}

impl Schedule {
    /// Starts a turn: its shares are whole again.
    pub fn begin_turn(&mut self) {
        self.fresh_spent = 0;
        self.backlog_spent = 0;
        self.backlog_left = self.backlog.len();
    }

    /// A readiness event for `key`: true if it is to be served now. It is not when it
    /// already waits in a queue (the service it is owed covers this event too), or when the
    /// turn's share for fresh events is spent (it waits, first in line, for the next turn).
    pub fn on_event(&mut self, key: usize) -> bool {
        if self.is_queued(key) {
            return false;
        }
        if self.fresh_spent < TURN_SHARE && self.fresh.is_empty() {
            return true;
        }
        self.set(key, Place::Queued);
        self.fresh.push_back(key);
        false
    }

    /// The next fresh event owed from an earlier turn, while this turn's share lasts.
    pub fn next_fresh(&mut self) -> Option<usize> {
        if self.fresh_spent >= TURN_SHARE {
            return None;
        }
        let key = self.fresh.pop_front()?;
        self.set(key, Place::Unqueued);
        Some(key)
    }

    /// The next connection of the backlog, while this turn's backlog share lasts; each is
    /// served at most once a turn.
    pub fn next_backlog(&mut self) -> Option<usize> {
        if self.backlog_spent >= TURN_SHARE || self.backlog_left == 0 {
            return None;
        }
        self.backlog_left -= 1;
        let key = self.backlog.pop_front()?;
        self.set(key, Place::Unqueued);
        Some(key)
    }

    /// A service of a fresh event moved `bytes`.
    pub fn charge_fresh(&mut self, bytes: usize) {
        self.fresh_spent += bytes + SERVICE_COST;
    }

    /// A service from the backlog moved `bytes`.
    pub fn charge_backlog(&mut self, bytes: usize) {
        self.backlog_spent += bytes + SERVICE_COST;
    }

    /// `key` has work left that no edge will announce: it goes to the back of the backlog.
    pub fn requeue(&mut self, key: usize) {
        if !self.is_queued(key) {
            self.set(key, Place::Queued);
            self.backlog.push_back(key);
        }
    }

    /// Work is owed that no event will announce: the next poll must not wait.
    pub fn has_work(&self) -> bool {
        !self.fresh.is_empty() || !self.backlog.is_empty()
    }

    /// Connections queued, both kinds.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.fresh.len() + self.backlog.len()
    }

    fn is_queued(&self, key: usize) -> bool {
        self.places.get(key) == Some(&Place::Queued)
    }

    fn set(&mut self, key: usize, place: Place) {
        if key >= self.places.len() {
            if place == Place::Unqueued {
                return;
            }
            self.places.resize(key + 1, Place::Unqueued);
        }
        self.places[key] = place;
    }

    /// Forgets the queues' memory once nothing is queued and many keys were seen: after a
    /// burst of connections, as the table gives back its slab.
    pub fn shrink_when_idle(&mut self, keys_kept: usize) {
        if !self.has_work() && self.places.len() > keys_kept {
            *self = Schedule::default();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_events_are_served_until_the_turn_share_is_spent_then_wait_first_in_line() {
        let mut schedule = Schedule::default();
        schedule.begin_turn();
        assert!(schedule.on_event(1));
        schedule.charge_fresh(TURN_SHARE);
        // The share is spent: these wait, in order.
        assert!(!schedule.on_event(2));
        assert!(!schedule.on_event(3));
        // A second event for a waiting key adds no entry.
        assert!(!schedule.on_event(2));
        assert_eq!(schedule.len(), 2);
        assert!(schedule.has_work());
        assert_eq!(schedule.next_fresh(), None);

        schedule.begin_turn();
        // A new event while older ones wait goes behind them.
        assert!(!schedule.on_event(4));
        assert_eq!(schedule.next_fresh(), Some(2));
        assert_eq!(schedule.next_fresh(), Some(3));
        assert_eq!(schedule.next_fresh(), Some(4));
        assert_eq!(schedule.next_fresh(), None);
        assert!(!schedule.has_work());
        assert!(schedule.on_event(2));
    }

    #[test]
    fn the_backlog_goes_round_robin_within_its_share_each_turn() {
        let mut schedule = Schedule::default();
        for key in 0..4 {
            schedule.requeue(key);
        }
        schedule.requeue(2); // Already queued: no second entry.
        assert_eq!(schedule.len(), 4);
        schedule.begin_turn();
        let mut served = Vec::new();
        while let Some(key) = schedule.next_backlog() {
            served.push(key);
            schedule.charge_backlog(READ_SHARE);
            // Each one used its whole share: back of the queue, but not again this turn.
            schedule.requeue(key);
        }
        assert_eq!(served, vec![0, 1, 2, 3]);
        schedule.begin_turn();
        let first = schedule.next_backlog();
        assert_eq!(first, Some(0));
    }

    #[test]
    fn a_busy_backlog_cannot_take_more_than_its_share_of_a_turn() {
        let mut schedule = Schedule::default();
        let busy = 10_000;
        for key in 0..busy {
            schedule.requeue(key);
        }
        schedule.begin_turn();
        let mut served = 0;
        while let Some(key) = schedule.next_backlog() {
            schedule.charge_backlog(READ_SHARE + WRITE_SHARE);
            schedule.requeue(key);
            served += 1;
        }
        let per_service = READ_SHARE + WRITE_SHARE + SERVICE_COST;
        assert_eq!(served, TURN_SHARE.div_ceil(per_service));
        // And a fresh event in the same turn is served at once.
        assert!(schedule.on_event(busy + 1));
    }

    #[test]
    fn an_event_for_a_connection_in_the_backlog_is_folded_into_its_turn() {
        let mut schedule = Schedule::default();
        schedule.requeue(7);
        schedule.begin_turn();
        assert!(!schedule.on_event(7));
        assert_eq!(schedule.len(), 1);
        assert_eq!(schedule.next_backlog(), Some(7));
        assert!(schedule.on_event(7));
    }
}
