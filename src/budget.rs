//! The buffer budget: one limit on the heap memory held in all connections' buffers
//! together (unfinished lines and unsent output, counted as allocated capacity), so that no
//! crowd of clients can push the process past its idle size + the budget + a small constant
//! per connection.
//!
//! It keeps the running total (adjusted around each connection's turn from two reads of its
//! buffers' capacity, so requests pay no bookkeeping per byte), the connections waiting for
//! room to read, and the choice of whom to close when the total must come down: the
//! connections holding the most whose output has not moved since the last look.

use std::time::{Duration, Instant};

use slab::Slab;

use crate::connection::Connection;

/// Once over the budget, evictions go on until the total is this fraction of it, so that
/// one look at the table buys room for many more reads.
const LOW_MARK_EIGHTHS: usize = 7;
/// After a look made only to find room (the total within the budget) that could not bring
/// the total under the low mark, the holders all making progress, the next such look waits
/// this long: a look costs a pass over every connection, and it must not come with every
/// request. A look for a total over the budget never falls short, so it never repeats so.
const RESCAN_DELAY: Duration = Duration::from_millis(5);

pub(crate) struct BufferBudget {
    limit: usize,
    /// Capacity of every connection's buffers, summed.
    total: usize,
    /// Connections that stopped reading for want of room; read again once it is back.
    waiting: Vec<usize>,
    /// No look at the table before then: the last one fell short.
    quiet_until: Option<Instant>,
}

impl BufferBudget {
    pub fn new(limit: usize) -> Self {
        BufferBudget {
            limit,
            total: 0,
            waiting: Vec::new(),
            quiet_until: None,
        }
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Capacity held by all connections but one that holds `own`.
    pub fn others(&self, own: usize) -> usize {
        self.total - own
    }

    /// A connection's buffers went from `before` to `after` bytes of capacity.
    pub fn adjust(&mut self, before: usize, after: usize) {
        self.total = self.total + after - before;
    }

    pub fn is_over(&self) -> bool {
        self.total > self.limit
    }

    /// Where evictions stop, and where waiting connections may read again.
    fn low_mark(&self) -> usize {
        self.limit / 8 * LOW_MARK_EIGHTHS
    }

    /// Remembers a connection that stopped reading for want of room (it also resumes on
    /// its own once its output drains).
    pub fn wait(&mut self, key: usize) {
        if !self.waiting.contains(&key) {
            self.waiting.push(key);
        }
    }

    /// The connections that may read again now that the total is below the low mark.
    pub fn take_resumable(&mut self) -> Vec<usize> {
        if self.waiting.is_empty() || self.total > self.low_mark() {
            return Vec::new();
        }
        std::mem::take(&mut self.waiting)
    }

    /// Whether to look for connections to close now: always when the total is over the
    /// budget; when only a connection that holds no unsent output waits for room (it would
    /// read if there were any), not again right after a look that fell short.
    pub fn should_look(&self, room_wanted: bool, now: Instant) -> bool {
        self.is_over() || (room_wanted && self.quiet_until.is_none_or(|until| now >= until))
    }

    /// The connections to close to bring the total under the low mark: those holding the
    /// most whose output has not moved since the last look (every connection's progress
    /// mark is reset here), never `spared`. When the total is over the budget and those are
    /// not enough, the largest holders follow regardless of progress: the bound comes
    /// first. Returns them with the capacity each frees.
    pub fn choose_evictions(
        &mut self,
        connections: &mut Slab<Connection>,
        spared: usize,
        now: Instant,
    ) -> Vec<(usize, usize)> {
        let strict = self.is_over();
        // (key, held, progressed): the idle ones first, then by size.
        let mut candidates: Vec<(usize, usize, bool)> = connections
            .iter_mut()
            .filter_map(|(key, connection)| {
                let progressed = connection.take_progress();
                let held = connection.buffered_capacity();
                (key != spared && held > 0 && (strict || !progressed))
                    .then_some((key, held, progressed))
            })
            .collect();
        candidates
            .sort_unstable_by_key(|&(_, held, progressed)| (progressed, std::cmp::Reverse(held)));
        let mut total = self.total;
        let target = self.low_mark();
        let chosen: Vec<(usize, usize)> = candidates
            .into_iter()
            .take_while(|&(_, held, _)| {
                let needed = total > target;
                if needed {
                    total -= held;
                }
                needed
            })
            .map(|(key, held, _)| (key, held))
            .collect();
        self.quiet_until = (total > target).then_some(now + RESCAN_DELAY);
        chosen
    }
}
