//! The table's side of the buffer budget (`budget.rs`): each connection's holdings
//! accounted after its turn, the look for room that closes stalled holders, the clients
//! waiting for room resumed, and the gauges a scrape reads.

use super::*;

impl ConnectionTable {
    /// After a connection's turn: its buffers' capacity went from `before` to `after`. A
    /// connection that stopped for want of room waits for it.
    pub fn account(&mut self, key: usize, before: usize, after: usize, over_budget: bool) {
        self.budget.adjust(key, before, after);
        if over_budget {
            self.budget.wait(key);
        }
    }

    /// Brings the total back under the budget, or makes room for a connection waiting to
    /// read (`room_wanted`), by closing the connections holding the most without progress,
    /// sparing `spared` (the one just served).
    pub fn enforce_budget(
        &mut self,
        registry: &Registry,
        spared: usize,
        room_wanted: bool,
        now: Instant,
    ) {
        if self.budget.should_look(room_wanted, now) {
            self.evict_for_budget(registry, Some(spared), now);
        }
    }

    /// Looks again for the room a connection asked for, at the end of a turn in which the
    /// waiting could not be let go (after the pause, if a look just fell short); nobody is
    /// spared this time, the one waiting included (if it alone holds too much, it is the one
    /// to go). Without this, a connection that asked for room while the holders still
    /// seemed to make progress, or whose room others took before the turn ended, would wait
    /// for ever: its client waits for the echo, so no event comes for it.
    pub fn look_again_for_room(&mut self, registry: &Registry, now: Instant) {
        if self.budget.next_look(now).is_none_or(|at| now < at) {
            return;
        }
        let slab = &self.slab;
        let still_wanted = self
            .budget
            .waiting()
            .iter()
            .any(|&key| slab.get(key).is_some_and(Connection::waits_for_room));
        if still_wanted {
            self.evict_for_budget(registry, None, now);
        } else {
            self.budget.cancel_next_look();
        }
    }

    /// When a connection waiting for room is to be looked for again.
    pub fn next_room_look(&self, now: Instant) -> Option<Instant> {
        self.budget.next_look(now)
    }

    pub(super) fn evict_for_budget(
        &mut self,
        registry: &Registry,
        spared: Option<usize>,
        now: Instant,
    ) {
        let slab = &self.slab;
        let evictions = self
            .budget
            .choose_evictions(spared, now, &mut |key| slab[key].as_holder());
        for (key, held) in evictions {
            client_caused!(
                log::Level::Warn,
                "{}: holds {held} buffered bytes, the most, while all connections' buffers \
                 are over --max-buffered-bytes ({}); closing it",
                self.slab[key].peer(),
                self.budget.limit()
            );
            self.close(registry, key, Ending::Quiet(CloseReason::BufferBudget));
        }
    }

    /// The connections that stopped for want of room, once there is room again: they are
    /// to be read without waiting for an event.
    pub fn resume_budget_waiters(&mut self) -> Vec<usize> {
        let mut keys = self.budget.take_resumable();
        keys.retain(|&key| self.slab.contains(key));
        keys
    }

    /// What the connections hold in their buffers, and why reading waits.
    pub fn buffer_gauges(&self) -> BufferGauges {
        let start = BufferGauges {
            budget_used: self.budget.used(),
            budget: self.budget.limit(),
            ..BufferGauges::default()
        };
        self.slab.iter().fold(start, |gauges, (_, c)| BufferGauges {
            reads_paused: gauges.reads_paused + usize::from(c.is_read_paused()),
            waiting_for_budget: gauges.waiting_for_budget + usize::from(c.is_budget_paused()),
            buffered_bytes: gauges.buffered_bytes + c.buffered_bytes(),
            ..gauges
        })
    }
}
