//! Serving one connection's turn: what its readiness says, reading and answering within its
//! share under `catch_unwind` (a panic ends that connection alone), flushing, and where the
//! schedule puts it afterwards.

use super::*;

impl Server {
    /// Handles readiness on one connection within its share of the turn, queues it for
    /// another turn if work is left, and drops it if it finished or failed. A panic anywhere
    /// in here ends this connection alone. Returns the work it did, as the schedule counts it:
    /// bytes read and written, and telnet commands decoded.
    pub(super) fn serve(&mut self, key: usize, readiness: Readiness, now: Instant) -> usize {
        let Some(TurnParts {
            connection,
            rules,
            addresses,
            held,
            others_buffered,
            buffer_budget,
            budget_epoch,
        }) = self.connections.turn_parts(key)
        else {
            return 0; // A stale event for a connection closed earlier in this turn.
        };
        let work_before = schedule::work_done(&self.traffic);
        let mut readiness = readiness;
        let mut held_back = false;
        let handler: &mut dyn LineHandler = match self.kv.as_mut() {
            None => &mut *self.handler,
            Some(kv) => {
                let client = Client {
                    key,
                    serial: connection.serial(),
                };
                held_back = kv.serve(client);
                // Its changes' pushes are still being delivered: it is written to but not
                // read, and comes back when they are.
                readiness.readable &= !held_back;
                kv
            }
        };
        let unix = connection.peer().transport() == Transport::Unix;
        let tls = connection.is_tls();
        let bytes_before = (self.traffic.bytes_received, self.traffic.bytes_sent);
        let mut turn = Turn {
            read_buffer: &mut self.read_buffer,
            scratch: &mut self.scratch,
            gathered: &mut self.gathered,
            tls_plaintext: &mut self.tls_plaintext,
            tls_records: &mut self.tls_records,
            handler,
            max_line_bytes: self.config.max_line_bytes,
            output_high_water: self.config.output_high_water,
            output_low_water: self.config.output_low_water,
            traffic: &mut self.traffic,
            others_buffered,
            buffer_budget,
            budget_epoch,
            rules,
            addresses,
        };
        let result = catch_unwind(AssertUnwindSafe(|| {
            serve_connection(connection, &mut turn, readiness)
        }));
        let outcome = match result {
            Ok(outcome) => outcome,
            Err(payload) => Err(Fault::Panicked {
                in_handler: false,
                message: panic_message(payload.as_ref()),
            }),
        };
        let finished = connection.is_finished();
        let ended = if connection.was_drained() {
            CloseReason::Drained
        } else {
            CloseReason::ClientClosed
        };
        let over_budget = matches!(outcome, Ok(ReadOutcome::OverBudget));
        let work_left = matches!(outcome, Ok(ReadOutcome::ShareSpent))
            || connection.has_output_to_flush()
            || held_back;
        // Waiting with no echoes unsent: only room in the budget lets it go on.
        let room_wanted = over_budget && connection.waits_for_room();
        // Accounted while the connection is still in the table: closing it settles the rest.
        let after = connection.buffered_capacity();
        self.connections.account(key, held, after, over_budget);
        let registry = self.poll.registry();
        match outcome {
            Err(fault) => self.connections.close(registry, key, Ending::Fault(fault)),
            Ok(_) if finished => self.connections.close(registry, key, Ending::Quiet(ended)),
            Ok(_) => {
                if work_left {
                    self.schedule.requeue(key);
                }
                self.connections.touch(key, now);
            }
        }
        self.connections
            .enforce_budget(registry, key, room_wanted, now);
        if unix {
            // Counted apart by the service, not by each read: TCP's path pays nothing.
            self.traffic.unix_bytes_received += self.traffic.bytes_received - bytes_before.0;
            self.traffic.unix_bytes_sent += self.traffic.bytes_sent - bytes_before.1;
        }
        if tls {
            self.traffic.tls_bytes_received += self.traffic.bytes_received - bytes_before.0;
            self.traffic.tls_bytes_sent += self.traffic.bytes_sent - bytes_before.1;
        }
        if self.kv.as_ref().is_some_and(Kv::has_work) {
            // The pushes a change owes go out in the turn it was made, as far as the
            // turn's share of them goes.
            self.deliver_pushes(now);
        }
        (schedule::work_done(&self.traffic) - work_before) as usize
    }
}

/// What a readiness event (or the reactor itself) says about a connection's socket.
#[derive(Debug, Clone, Copy)]
pub(super) struct Readiness {
    pub readable: bool,
    /// Read until `WouldBlock`: a short read proves nothing, because the event already
    /// reported the client's FIN or an error, or edges may have gone unanswered.
    pub until_would_block: bool,
    pub writable: bool,
}

impl Readiness {
    /// A service owed without an event in hand (queued, resumed, or draining): events that
    /// came meanwhile were folded into it, and edges may have gone unanswered, so it reads
    /// until `WouldBlock` (within its share) and writes.
    pub const OWED: Readiness = Readiness {
        readable: true,
        until_would_block: true,
        writable: true,
    };
}

fn serve_connection(
    connection: &mut Connection,
    turn: &mut Turn<'_>,
    readiness: Readiness,
) -> Result<ReadOutcome, Fault> {
    let mut read = readiness.readable;
    let mut until_would_block = readiness.until_would_block;
    if readiness.writable && connection.pending_output() > 0 && connection.flush(turn)? {
        // Reading resumes after a pause, during which readable edges went unanswered.
        read = true;
        until_would_block = true;
    }
    let outcome = if read {
        connection.read(turn, until_would_block)?
    } else {
        ReadOutcome::Stopped
    };
    connection.half_close_when_done(turn)?;
    Ok(outcome)
}
