//! The buffer budget: one limit on the heap memory held in all connections' buffers
//! together (unfinished lines and unsent output, counted as allocated capacity), so that no
//! crowd of clients can push the process past its idle size + the budget + a small constant
//! per connection.
//!
//! It keeps the running total (adjusted around each connection's turn from two reads of its
//! buffers' capacity, so requests pay no bookkeeping per byte), an index of the holders by
//! size, the connections waiting for room to read, and the choice of whom to close when the
//! total must come down: among the largest holders, those whose output has not moved since
//! the last look, the ones whose peer has stopped reading (its receive window closed, as
//! `TCP_INFO` tells) before those whose bytes are only slow to be acknowledged (a lossy
//! link). A look examines a fixed number of the largest holders, not every connection. Once a
//! connection has asked for room, looks go on (one at the end of a turn, after the pause
//! that follows a look that fell short) until the total is down to the low mark and the
//! waiting are let go: a look can fall short because holders only seemed to make progress
//! (their mark may date from long before), and the room a look made can be taken again by
//! others before the turn ends; nothing else would wake a client waiting for its echo.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// Once over the budget, evictions go on until the total is this fraction of it, so that
/// one look at the table buys room for many more reads (and at least one: see
/// [`BufferBudget::low_mark`]).
const LOW_MARK_EIGHTHS: usize = 7;
/// After a look made only to find room (the total within the budget) that could not bring
/// the total under the low mark, the holders all making progress, the next such look waits
/// this long: a look costs a pass over every connection, and it must not come with every
/// request. The look is then made again, for as long as a connection still waits for room.
const RESCAN_DELAY: Duration = Duration::from_millis(5);
/// Holders a look examines, the largest first, when it may spare those making progress; a
/// look over the budget goes further only to close the largest regardless, each one it
/// examines then being one it closes. So a look costs O(log n) in the number of
/// connections, plus O(log n) per connection it closes.
const LOOK_DEPTH: usize = 64;

/// What a look needs to know of one holder, from whoever owns the connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Holder {
    /// The look epoch in which its queued output last moved (see [`BufferBudget::epoch`]).
    pub progress_epoch: u64,
    /// Its peer's receive window is open: the output is not moving because the network is
    /// slow to acknowledge it (loss, retransmission), not because the peer stopped reading.
    pub peer_window_open: bool,
}

pub(crate) struct BufferBudget {
    limit: usize,
    /// The most one read adds to a connection's unfinished line or output.
    read_len: usize,
    /// Capacity of every connection's buffers, summed.
    total: usize,
    /// Every connection holding buffers, as (capacity, key): the largest last.
    holders: BTreeSet<(usize, usize)>,
    /// Counts looks, from 1: a holder whose output moved in the current epoch made progress
    /// since the last look. Connections note the epoch when their output moves, so a look
    /// resets nobody's mark.
    epoch: u64,
    /// Connections that stopped reading for want of room; read again once it is back.
    waiting: Vec<usize>,
    /// No look at the table before then: the last one fell short.
    quiet_until: Option<Instant>,
    /// A connection asked for room, and the waiting have not been let go since: look again
    /// at the end of a turn (once the pause is over) while the total is above the low mark.
    room_wanted: bool,
    /// The most held since memory was last given back to the system, and when that was.
    peak_since_return: usize,
    last_return: Option<Instant>,
}

/// How much the buffers' total must have fallen from its peak before freed memory is given
/// back to the system.
const RETURN_AFTER_FALL: usize = 1024 * 1024;
/// Giving memory back walks the allocator's heap (about a millisecond for tens of
/// megabytes): at most this often.
const RETURN_INTERVAL: Duration = Duration::from_secs(2);

impl BufferBudget {
    pub fn new(limit: usize, read_len: usize) -> Self {
        BufferBudget {
            limit,
            read_len,
            total: 0,
            holders: BTreeSet::new(),
            epoch: 1,
            waiting: Vec::new(),
            quiet_until: None,
            room_wanted: false,
            peak_since_return: 0,
            last_return: None,
        }
    }

    /// When memory freed since the last return will be due to go back, if any is: the
    /// reactor wakes for it even when no event comes.
    pub fn next_return(&self) -> Option<Instant> {
        let peak = self.peak_since_return.max(self.total);
        if peak - self.total < RETURN_AFTER_FALL {
            return None;
        }
        Some(
            self.last_return
                .map_or_else(Instant::now, |last| last + RETURN_INTERVAL),
        )
    }

    /// After a crowd's buffers are freed, gives the memory back to the system. Buffers
    /// under the allocator's mmap threshold (128 KiB, set by the binary) come from its
    /// heap, and a heap's free pages below the top are kept for reuse: 300 connections that
    /// each held a 30 KB unfinished line left 7.6 MB resident after they closed. When the
    /// total has fallen by [`RETURN_AFTER_FALL`] from its peak, `malloc_trim` returns the
    /// free pages (glibc; elsewhere nothing is done). True when it did.
    pub fn return_freed_memory(&mut self, now: Instant) -> bool {
        self.peak_since_return = self.peak_since_return.max(self.total);
        let fallen = self.peak_since_return - self.total >= RETURN_AFTER_FALL;
        let due = self
            .last_return
            .is_none_or(|last| now.saturating_duration_since(last) >= RETURN_INTERVAL);
        if !fallen || !due {
            return false;
        }
        self.last_return = Some(now);
        self.peak_since_return = self.total;
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: malloc_trim only releases free memory of the allocator's own heaps.
        unsafe {
            libc::malloc_trim(0);
        }
        true
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Capacity held by all connections.
    pub fn used(&self) -> usize {
        self.total
    }

    /// Capacity held by all connections but one that holds `own`.
    pub fn others(&self, own: usize) -> usize {
        self.total - own
    }

    /// The current look epoch: a connection whose queued output moves notes it.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Connection `key`'s buffers went from `before` to `after` bytes of capacity.
    pub fn adjust(&mut self, key: usize, before: usize, after: usize) {
        self.total = self.total + after - before;
        if before != after {
            if before > 0 {
                self.holders.remove(&(before, key));
            }
            if after > 0 {
                self.holders.insert((after, key));
            }
        }
    }

    pub fn is_over(&self) -> bool {
        self.total > self.limit
    }

    /// Where evictions stop, and where waiting connections may read again.
    ///
    /// With a budget of fewer than eight reads, an eighth of it would not hold one read: a
    /// connection let go at the low mark would find no room for its read and ask again, for
    /// ever. The low mark is then as high as leaves room for one read.
    fn low_mark(&self) -> usize {
        (self.limit / 8 * LOW_MARK_EIGHTHS).min(self.limit.saturating_sub(self.read_len))
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
        self.room_wanted = false;
        std::mem::take(&mut self.waiting)
    }

    /// The connections that stopped reading for want of room, some perhaps closed since.
    pub fn waiting(&self) -> &[usize] {
        &self.waiting
    }

    /// Whether to look for connections to close now: always when the total is over the
    /// budget; when a connection that holds no unsent output waits for room (it would read
    /// if there were any), unless a look just fell short. Either way, looks for room go on
    /// at the end of turns until the waiting are let go.
    pub fn should_look(&mut self, room_wanted: bool, now: Instant) -> bool {
        self.room_wanted |= room_wanted;
        self.is_over() || (room_wanted && self.quiet_until.is_none_or(|until| now >= until))
    }

    /// When to look again for the room a connection asked for: not while the total is at
    /// the low mark or below (the waiting are let go instead), nor during the pause after a
    /// look that fell short; otherwise `now`.
    pub fn next_look(&self, now: Instant) -> Option<Instant> {
        if !self.room_wanted || self.total <= self.low_mark() {
            return None;
        }
        Some(self.quiet_until.map_or(now, |until| until.max(now)))
    }

    /// Nobody waits for room any more: no look is due on their account.
    pub fn cancel_next_look(&mut self) {
        self.room_wanted = false;
    }

    /// The connections to close to bring the total under the low mark, never `spared`:
    /// among the [`LOOK_DEPTH`] largest holders, those whose output has not moved since the
    /// last look, the ones whose peer stopped reading first, each group largest first. When
    /// the total is over the budget and those are not enough, the largest holders follow
    /// regardless of progress: the bound comes first. `holder` tells about a key. Returns
    /// them with the capacity each frees, and starts a new epoch.
    pub fn choose_evictions(
        &mut self,
        spared: Option<usize>,
        now: Instant,
        holder: &mut dyn FnMut(usize) -> Holder,
    ) -> Vec<(usize, usize)> {
        let strict = self.is_over();
        let epoch = self.epoch;
        // (key, held, progressed, peer reading): stalled before slow, then by size.
        let mut candidates: Vec<(usize, usize, bool, bool)> = self
            .holders
            .iter()
            .rev()
            .filter(|&&(_, key)| Some(key) != spared)
            .take(LOOK_DEPTH)
            .map(|&(held, key)| {
                let state = holder(key);
                (
                    key,
                    held,
                    state.progress_epoch == epoch,
                    state.peer_window_open,
                )
            })
            .filter(|&(_, _, progressed, _)| !progressed)
            .collect();
        candidates.sort_by_key(|&(_, held, _, reading)| (reading, std::cmp::Reverse(held)));
        let mut total = self.total;
        let target = self.low_mark();
        let mut chosen: Vec<(usize, usize)> = Vec::new();
        for (key, held, _, _) in candidates {
            if total <= target {
                break;
            }
            total -= held;
            chosen.push((key, held));
        }
        if strict && total > target {
            for &(held, key) in self.holders.iter().rev() {
                if total <= target {
                    break;
                }
                if Some(key) != spared && !chosen.iter().any(|&(k, _)| k == key) {
                    total -= held;
                    chosen.push((key, held));
                }
            }
        }
        self.quiet_until = (total > target).then_some(now + RESCAN_DELAY);
        self.epoch += 1;
        chosen
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const READ: usize = 64 * 1024;

    #[test]
    fn the_low_mark_leaves_room_for_one_read() {
        let large = BufferBudget::new(64 * 1024 * 1024, READ);
        assert_eq!(large.low_mark(), 56 * 1024 * 1024);
        // 7/8 of the smallest budget (two reads) would leave a quarter of a read free.
        let smallest = BufferBudget::new(2 * READ, READ);
        assert_eq!(smallest.low_mark(), READ);
    }

    #[test]
    fn a_look_that_falls_short_is_made_again_until_room_is_back() {
        let mut budget = BufferBudget::new(8 * READ, READ);
        let now = Instant::now();
        budget.adjust(3, 0, 7 * READ + 1);
        budget.wait(3);
        assert!(budget.should_look(true, now));
        assert!(budget
            .choose_evictions(Some(3), now, &mut |_| unreachable!("only the spared holds"))
            .is_empty());
        assert_eq!(budget.next_look(now), Some(now + RESCAN_DELAY));
        // Asked again during the pause: no look, but the one due afterwards stands.
        assert!(!budget.should_look(true, now + RESCAN_DELAY / 2));
        assert_eq!(budget.next_look(now), Some(now + RESCAN_DELAY));
        assert!(budget.take_resumable().is_empty());
        // Once the total is down to the low mark, the waiting go on and no look is due.
        budget.adjust(3, 7 * READ + 1, 7 * READ);
        assert_eq!(budget.next_look(now), None);
        assert_eq!(budget.take_resumable(), vec![3]);
        budget.adjust(3, 7 * READ, 7 * READ + 1);
        assert_eq!(budget.next_look(now), None);
    }

    #[test]
    fn room_taken_again_before_the_waiting_go_on_is_looked_for_at_once() {
        let mut budget = BufferBudget::new(8 * READ, READ);
        let now = Instant::now();
        budget.adjust(3, 0, 7 * READ);
        budget.wait(3);
        assert!(budget.should_look(true, now));
        assert!(budget
            .choose_evictions(Some(3), now, &mut |_| unreachable!("only the spared holds"))
            .is_empty());
        // The look needed to close nobody, but others read before the turn ended.
        budget.adjust(4, 0, 1);
        assert!(budget.take_resumable().is_empty());
        assert_eq!(budget.next_look(now), Some(now));
    }

    /// Holders for the look tests: key -> (held, made progress, peer's window open).
    fn budget_with(holders: &[(usize, usize, bool, bool)], limit: usize) -> BufferBudget {
        let mut budget = BufferBudget::new(limit, READ);
        for &(key, held, _, _) in holders {
            budget.adjust(key, 0, held);
        }
        budget
    }

    fn describe(
        holders: &[(usize, usize, bool, bool)],
        epoch: u64,
    ) -> impl FnMut(usize) -> Holder + '_ {
        move |key| {
            let &(_, _, progressed, open) = holders.iter().find(|h| h.0 == key).unwrap();
            Holder {
                progress_epoch: if progressed { epoch } else { epoch - 1 },
                peer_window_open: open,
            }
        }
    }

    #[test]
    fn a_look_for_room_closes_stalled_holders_before_slow_ones_and_spares_progress() {
        // 40 reads' worth against a budget of 40: the low mark (35) needs 5 reads closed.
        let holders = [
            (1, 10 * READ, true, false),  // the largest, but its output moves: spared
            (2, 8 * READ, false, true),   // no progress, window open: a lossy link
            (3, 6 * READ, false, false),  // no progress, window closed: stalled
            (4, 4 * READ, false, false),  // stalled
            (5, 12 * READ, false, false), // stalled, but the one being served
        ];
        let mut budget = budget_with(&holders, 40 * READ);
        let epoch = budget.epoch();
        let chosen =
            budget.choose_evictions(Some(5), Instant::now(), &mut describe(&holders, epoch));
        // The stalled ones first, largest first; the lossy one was not needed.
        assert_eq!(chosen, vec![(3, 6 * READ)]);
        assert_eq!(budget.epoch(), epoch + 1);

        // Wanting more: the lossy one goes only after every stalled one.
        let mut budget = budget_with(&holders, 30 * READ);
        let epoch = budget.epoch();
        let chosen =
            budget.choose_evictions(Some(5), Instant::now(), &mut describe(&holders, epoch));
        assert_eq!(chosen, vec![(3, 6 * READ), (4, 4 * READ), (2, 8 * READ)]);
    }

    #[test]
    fn over_the_budget_the_largest_go_regardless_of_progress() {
        let holders = [
            (1, 10 * READ, true, false),
            (2, 9 * READ, true, false),
            (3, READ, false, false),
        ];
        // 20 reads held against a budget of 16: down to 14 needs 6 reads freed.
        let mut budget = budget_with(&holders, 16 * READ);
        assert!(budget.is_over());
        let epoch = budget.epoch();
        let chosen = budget.choose_evictions(None, Instant::now(), &mut describe(&holders, epoch));
        assert_eq!(chosen, vec![(3, READ), (1, 10 * READ)]);
    }

    #[test]
    fn a_look_examines_a_fixed_number_of_the_largest_holders() {
        let holders: Vec<(usize, usize, bool, bool)> = (0..10_000)
            .map(|key| (key, READ + key, true, false))
            .collect();
        let limit = holders.iter().map(|h| h.1).sum::<usize>() + READ;
        let mut budget = budget_with(&holders, limit);
        let epoch = budget.epoch();
        let mut asked = 0;
        let mut counting = |key| {
            asked += 1;
            describe(&holders, epoch)(key)
        };
        // Within the budget, every holder making progress: nobody to close, and only the
        // largest were looked at.
        assert!(budget
            .choose_evictions(None, Instant::now(), &mut counting)
            .is_empty());
        assert_eq!(asked, LOOK_DEPTH);
        // Their marks are from the last epoch now: the next look finds them stalled.
        let chosen = budget.choose_evictions(None, Instant::now(), &mut |_| Holder {
            progress_epoch: epoch,
            peer_window_open: false,
        });
        assert_eq!(chosen.first().map(|c| c.0), Some(9_999));
    }
}
