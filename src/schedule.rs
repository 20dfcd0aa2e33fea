//! Fair turns: how much work each connection may do per turn of the loop, which connections
//! are served next, and how much work one turn does in total.
//!
//! mio is edge-triggered: a connection whose share of a turn ran out with bytes still
//! waiting gets no new edge for them, so it must be remembered. What is owed waits in
//! queues:
//!
//! - **light** and **heavy**: connections that had a readiness event which this turn had no
//!   room left to serve, by kind (see below). They are served first in the next turn,
//!   oldest first, ahead of the new events of their kind.
//! - **backlog**: connections that used their whole share and may have more waiting. They are
//!   served round-robin, after the fresh events, up to a share of their own per turn, so
//!   that the busy ones advance every turn and can never fill a turn alone.
//!
//! A connection is light when its last service that moved anything moved a few KiB at
//! most, as an interactive client's does; a new connection is heavy until then. Each turn
//! serves, in order: the light connections' events owed from earlier turns, the new events
//! of light connections (and of the listener, signals and scrapers), the heavy connections'
//! events owed, their new events, then the backlog's share. Light and heavy events each
//! have a share of the turn, so that a light connection never waits behind the heavy ones:
//! under a crowd of busy clients, the heavy ones' events would otherwise form a queue as
//! long as the crowd, and a polite client's round trip would wait for all of it (measured:
//! 100-300 ms behind 2,000 hogs). A service is charged to the share it was served from,
//! whatever it turned out to move, so that each share bounds the turn.
//!
//! A connection that is queued gets no second entry: the events that come for it meanwhile
//! are folded into the one service it is owed (a queued service reads and writes as if told
//! everything). Work is counted in bytes moved (read plus written) and a fixed cost per
//! service, so that many small services count as well as a few large ones.
//!
//! This room knows keys, not connections: the reactor serves a key and reports back.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::counters::Traffic;

/// The most one connection reads in one service: one read with the default 64 KiB read
/// buffer. Redis reads 16 KiB per event; measured here, 64 KiB keeps bulk throughput and
/// bounds the polite client's wait as well (see docs/design.md).
pub(crate) const READ_SHARE: usize = 64 * 1024;
/// The most one connection's queued output is written in one service (Redis:
/// `NET_MAX_WRITES_PER_EVENT`, 64 KiB). Echoes of a read go out with the read, whatever
/// this says: they are never more than the read itself.
pub(crate) const WRITE_SHARE: usize = 64 * 1024;
/// The work of light connections' events in one turn, of heavy ones', and of the backlog,
/// each: past it, events wait for the next turn (first in line), and the backlog's
/// round-robin goes on there. Reads and writes both count, so 1 MiB is 512 KiB of echo,
/// about 0.3 ms here.
pub(crate) const TURN_SHARE: usize = 1024 * 1024;
/// How long the heavy connections' and the backlog's shares may take, from the start of the
/// turn. Bytes bound a share well while the kernel moves them at its usual pace, but under a
/// crowd that fills the machine's socket buffers a byte costs it ten times as much
/// (measured: shares of 1 MiB taking 2-6 ms, turns of 8 ms), so time bounds them too. The
/// clock is read only after services that moved more than a light one does: an interactive
/// client's round trip never pays for it. Half a millisecond, measured beside 2,000 hogs:
/// with 1 ms, turns past 1 ms came by the thousand when the kernel dropped nothing and
/// slowed no hog, and a polite client's p99 rose to 1.2 ms; with 0.5 ms it stayed under
/// 0.35 ms. A bulk client is served in one turn per read either way.
pub(crate) const TURN_TIME: Duration = Duration::from_micros(500);
/// What one service counts for beyond its bytes: two system calls and the bookkeeping
/// around them, as much time as moving about 2 KiB.
pub(crate) const SERVICE_COST: usize = 2 * 1024;
/// What one telnet command counts for: decoding one takes about 6 ns here, as long as
/// moving some 20 bytes of echo. Counted in, a client sending nothing but commands (Are You
/// There, say, which it need not read the answer of) gets its share of a turn in time, not
/// ten times that.
pub(crate) const TELNET_COMMAND_COST: usize = 24;

/// What one flight of a TLS handshake counts for. A full handshake costs the server 0.15 ms
/// (ECDSA) to 0.4 ms (RSA-2048) of CPU, nearly all of it in the flight that answers the
/// ClientHello; a handshake is two flights, so each counts as half of a 0.3 ms share
/// (see [`TURN_SHARE`]). A turn so takes one or two handshakes from the heavy share (new
/// connections are heavy), and a flood of them waits its turn like a crowd of hogs, never
/// in front of the light share.
pub(crate) const TLS_HANDSHAKE_STEP_COST: usize = 512 * 1024;

/// All the work `traffic` counts, in bytes moved: what a service is charged is the
/// difference across it.
pub(crate) fn work_done(traffic: &Traffic) -> u64 {
    traffic.bytes_received
        + traffic.bytes_sent
        + traffic.telnet_commands * TELNET_COMMAND_COST as u64
        + traffic.tls_handshake_steps * TLS_HANDSHAKE_STEP_COST as u64
}
/// A connection whose last service moved at most this much is light: its next event is
/// served from the light share.
const LIGHT_BYTES: usize = 4 * 1024;

/// What the schedule remembers of a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Mark {
    /// It already waits in a queue.
    queued: bool,
    /// Its last service that moved anything moved more than [`LIGHT_BYTES`].
    heavy: bool,
}

/// The queues of work owed and the work done in the current turn.
#[derive(Debug, Default)]
pub(crate) struct Schedule {
    /// Light and heavy connections' events this turn had no room left to serve.
    light: VecDeque<usize>,
    heavy: VecDeque<usize>,
    /// Connections that used their whole share with work left.
    backlog: VecDeque<usize>,
    /// By key. A key closed while queued keeps its entry; a new connection under the same
    /// key is then served once for nothing.
    marks: Vec<Mark>,
    heavy_spent: usize,
    light_spent: usize,
    backlog_spent: usize,
    /// Backlog entries this turn may still serve: each is served at most once a turn.
    backlog_left: usize,
}

impl Schedule {
    /// Starts a turn: its shares are whole again.
    pub fn begin_turn(&mut self) {
        self.heavy_spent = 0;
        self.light_spent = 0;
        self.backlog_spent = 0;
        self.backlog_left = self.backlog.len();
    }

    /// A new connection under `key`: heavy until a service shows otherwise. Were new
    /// connections light, a crowd arriving at once would fill the light queue with their
    /// first events, and an interactive client would wait behind all of them (measured:
    /// 60 ms as 2,000 hogs began).
    pub fn admit(&mut self, key: usize) {
        self.mark_mut(key).heavy = true;
    }

    /// A readiness event for `key`: true if it is to be served now. It is not when it
    /// already waits in a queue (the service it is owed covers this event too), or when the
    /// turn's share for its kind of event is spent (it waits, first in line, for the next
    /// turn).
    #[inline]
    pub fn on_event(&mut self, key: usize) -> bool {
        let mark = self.mark(key);
        if mark.queued {
            return false;
        }
        let (spent, queue) = if mark.heavy {
            (self.heavy_spent, &mut self.heavy)
        } else {
            (self.light_spent, &mut self.light)
        };
        if spent < TURN_SHARE && queue.is_empty() {
            return true;
        }
        queue.push_back(key);
        self.mark_mut(key).queued = true;
        false
    }

    /// The next light connection's event owed from an earlier turn, while this turn's light
    /// share lasts.
    pub fn next_light(&mut self) -> Option<usize> {
        if self.light_spent >= TURN_SHARE {
            return None;
        }
        let key = self.light.pop_front()?;
        self.mark_mut(key).queued = false;
        Some(key)
    }

    /// The next heavy connection's event owed from an earlier turn, while this turn's share
    /// for them lasts.
    pub fn next_heavy(&mut self) -> Option<usize> {
        if self.heavy_spent >= TURN_SHARE {
            return None;
        }
        let key = self.heavy.pop_front()?;
        self.mark_mut(key).queued = false;
        Some(key)
    }

    /// Whether `key`'s last service that moved anything moved more than a few KiB: its
    /// events are served after the light ones'.
    pub fn is_heavy(&self, key: usize) -> bool {
        self.mark(key).heavy
    }

    /// The next connection of the backlog, while this turn's backlog share lasts; each is
    /// served at most once a turn.
    pub fn next_backlog(&mut self) -> Option<usize> {
        if self.backlog_spent >= TURN_SHARE || self.backlog_left == 0 {
            return None;
        }
        self.backlog_left -= 1;
        let key = self.backlog.pop_front()?;
        self.mark_mut(key).queued = false;
        Some(key)
    }

    /// A service of `key` for a fresh event (new, or owed from an earlier turn) moved
    /// `bytes`: charged to the share it was served from.
    #[inline]
    pub fn charge_fresh(&mut self, key: usize, bytes: usize) {
        let cost = bytes + SERVICE_COST;
        if self.mark(key).heavy {
            self.heavy_spent += cost;
        } else {
            self.light_spent += cost;
        }
        self.note(key, bytes);
    }

    /// A service of `key` from the backlog moved `bytes`.
    pub fn charge_backlog(&mut self, key: usize, bytes: usize) {
        self.note(key, bytes);
        self.backlog_spent += bytes + SERVICE_COST;
    }

    /// After a service that moved `bytes`, in a turn that began at `turn_start`: once the
    /// turn has taken [`TURN_TIME`], the heavy connections' and the backlog's shares are
    /// spent, whatever their bytes say, and what they owe waits for the next turn.
    #[inline]
    pub fn check_turn_time(&mut self, bytes: usize, turn_start: Instant) {
        if bytes > LIGHT_BYTES && turn_start.elapsed() >= TURN_TIME {
            self.heavy_spent = self.heavy_spent.max(TURN_SHARE);
            self.backlog_spent = self.backlog_spent.max(TURN_SHARE);
        }
    }

    /// `key` has work left that no edge will announce: it goes to the back of the backlog.
    pub fn requeue(&mut self, key: usize) {
        let mark = self.mark_mut(key);
        if !mark.queued {
            mark.queued = true;
            self.backlog.push_back(key);
        }
    }

    /// Work is owed that no event will announce: the next poll must not wait.
    pub fn has_work(&self) -> bool {
        !self.light.is_empty() || !self.heavy.is_empty() || !self.backlog.is_empty()
    }

    /// Forgets the queues' memory once nothing is queued and many keys were seen: after a
    /// burst of connections, as the table gives back its slab.
    pub fn shrink_when_idle(&mut self, keys_kept: usize) {
        if !self.has_work() && self.marks.len() > keys_kept {
            *self = Schedule::default();
        }
    }

    /// Notes how much `key`'s service moved. One that moved nothing (a paused connection's
    /// flush that found the socket full, an event with nothing behind it) says nothing of
    /// its kind: a busy connection waiting for its client stays heavy.
    fn note(&mut self, key: usize, bytes: usize) {
        if bytes == 0 {
            return;
        }
        let heavy = bytes > LIGHT_BYTES;
        if heavy || key < self.marks.len() {
            self.mark_mut(key).heavy = heavy;
        }
    }

    fn mark(&self, key: usize) -> Mark {
        self.marks.get(key).copied().unwrap_or_default()
    }

    fn mark_mut(&mut self, key: usize) -> &mut Mark {
        if key >= self.marks.len() {
            self.marks.resize(key + 1, Mark::default());
        }
        &mut self.marks[key]
    }

    /// Connections queued, both kinds.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.light.len() + self.heavy.len() + self.backlog.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_events_are_served_until_the_turn_share_is_spent_then_wait_first_in_line() {
        let mut schedule = Schedule::default();
        schedule.begin_turn();
        for key in 1..=3 {
            // Each moved 64 KiB last time: heavy.
            schedule.charge_backlog(key, READ_SHARE);
        }
        schedule.charge_backlog(4, READ_SHARE);
        assert!(schedule.on_event(1));
        schedule.charge_fresh(1, TURN_SHARE);
        // The share is spent: these wait, in order.
        assert!(!schedule.on_event(2));
        assert!(!schedule.on_event(3));
        // A second event for a waiting key adds no entry.
        assert!(!schedule.on_event(2));
        assert_eq!(schedule.len(), 2);
        assert!(schedule.has_work());
        assert_eq!(schedule.next_heavy(), None);

        schedule.begin_turn();
        // A new event while older ones wait goes behind them.
        assert!(!schedule.on_event(4));
        assert_eq!(schedule.next_heavy(), Some(2));
        assert_eq!(schedule.next_heavy(), Some(3));
        assert_eq!(schedule.next_heavy(), Some(4));
        assert_eq!(schedule.next_heavy(), None);
        assert!(!schedule.has_work());
        assert!(schedule.on_event(2));
    }

    #[test]
    fn a_turn_past_its_time_ends_the_heavy_shares_but_not_the_light_one() {
        let mut schedule = Schedule::default();
        schedule.charge_backlog(1, READ_SHARE); // heavy from now on
        schedule.requeue(2);
        schedule.begin_turn();
        let long_ago = Instant::now() - 2 * TURN_TIME;
        // A light service never reads the clock, nor ends anything.
        schedule.check_turn_time(LIGHT_BYTES, long_ago);
        assert!(schedule.on_event(1));
        // A heavy one in a turn past its time ends the heavy share and the backlog's.
        schedule.check_turn_time(LIGHT_BYTES + 1, long_ago);
        assert!(!schedule.on_event(1), "heavy events wait for the next turn");
        assert_eq!(schedule.next_backlog(), None);
        assert!(
            schedule.on_event(3),
            "a light connection's event is still served"
        );
        // Within its time, nothing ends.
        schedule.begin_turn();
        schedule.check_turn_time(READ_SHARE, Instant::now());
        assert_eq!(schedule.next_heavy(), Some(1));
        assert_eq!(schedule.next_backlog(), Some(2));
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
            schedule.charge_backlog(key, READ_SHARE);
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
            schedule.charge_backlog(key, READ_SHARE + WRITE_SHARE);
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

    #[test]
    fn a_light_connection_is_served_at_once_however_many_heavy_events_wait() {
        let mut schedule = Schedule::default();
        let polite = 0;
        schedule.begin_turn();
        assert!(schedule.on_event(polite));
        schedule.charge_fresh(polite, 16);
        // 2,000 heavy connections with events: they fill the share, then wait in order.
        let mut served_heavy = 0;
        for key in 1..=2_000 {
            schedule.charge_backlog(key, READ_SHARE);
            if schedule.on_event(key) {
                schedule.charge_fresh(key, 2 * READ_SHARE);
                served_heavy += 1;
            }
        }
        assert!(served_heavy < 10);
        // The polite client's next event, in this turn or the next, is served at once.
        assert!(schedule.on_event(polite));
        schedule.charge_fresh(polite, 16);
        schedule.begin_turn();
        assert!(schedule.on_event(polite));
        // Had it moved 64 KiB, it would have waited behind the heavy ones.
        schedule.charge_fresh(polite, READ_SHARE);
        assert!(!schedule.on_event(polite));
        // A new connection starts heavy, even under the key of a light one: its first event
        // waits behind the heavy ones, and once it has shown itself light it goes first.
        schedule.admit(polite);
        assert!(schedule.is_heavy(polite));
        // Its event waits (it was queued behind the heavy ones above); served, it moves
        // 16 bytes like everyone in the queue this time, and is light from then on.
        loop {
            schedule.begin_turn();
            let mut served = false;
            while let Some(key) = schedule.next_heavy() {
                schedule.charge_fresh(key, 16);
                served = true;
            }
            if !served {
                break;
            }
        }
        assert!(!schedule.is_heavy(polite));
        assert!(schedule.on_event(polite));
    }

    #[test]
    fn each_share_pays_for_what_its_services_moved_and_light_waits_go_first() {
        let mut schedule = Schedule::default();
        schedule.begin_turn();
        // Keys never admitted are light; these turn out to move 64 KiB each, charged to the
        // light share all the same, until it is spent.
        let mut key = 0;
        while schedule.on_event(key) {
            schedule.charge_fresh(key, 2 * READ_SHARE);
            key += 1;
        }
        assert_eq!(key, TURN_SHARE.div_ceil(2 * READ_SHARE + SERVICE_COST));
        // Never served: still light, waiting in the light queue.
        let deferred_light = key;
        // A heavy connection's event is served from the heavy share, untouched so far...
        let heavy = 100;
        schedule.charge_backlog(heavy, READ_SHARE);
        assert!(schedule.on_event(heavy));
        schedule.charge_fresh(heavy, TURN_SHARE);
        // ...which it spent: the next heavy event waits, in the queue of its kind.
        schedule.charge_backlog(heavy + 2, READ_SHARE);
        assert!(!schedule.on_event(heavy + 2));
        assert_eq!(schedule.len(), 2);
        // Next turn: the waiting light event comes first, then the heavy one.
        schedule.begin_turn();
        assert_eq!(schedule.next_light(), Some(deferred_light));
        assert_eq!(schedule.next_light(), None);
        assert!(schedule.is_heavy(heavy + 2));
        assert_eq!(schedule.next_heavy(), Some(heavy + 2));
        // A heavy connection whose service moved nothing (its client not reading) stays
        // heavy; one that moved a little becomes light.
        schedule.charge_fresh(heavy, 0);
        assert!(schedule.mark(heavy).heavy);
        schedule.charge_fresh(heavy, 32);
        assert!(!schedule.mark(heavy).heavy);
    }
}
