//! Delivering what `--kv`'s changes owe their buckets' subscribers (`kv/fanout.rs`): a
//! bounded number of pushes each turn, each sent down through its subscriber's layers
//! under the same buffer budget as its answers. A subscriber that does not read is not
//! waited for: once its unsent output is past the high-water mark (256 KiB, where reading
//! a client that does not read its echoes pauses), it is closed and the
//! push counted as dropped.

use super::*;

use crate::access::AccessRules;
use crate::warning::client_caused;

/// The most pushes delivered in one turn: each is a write, some 2 us here, so a turn's
/// pushes take about as long as a share of its reads ([`schedule::TURN_TIME`] bounds them
/// too).
const PUSHES_PER_TURN: usize = 64;

/// What became of one push.
enum Delivered {
    Sent,
    /// Its subscriber was half-closed by the drain, or fell behind and was closed.
    Dropped,
    /// Its subscriber has gone.
    Gone,
}

impl Server {
    /// Delivers pushes owed, oldest first, while this turn's share of them lasts, and
    /// compacts the subscriber lists that are due.
    // Kept out of line: inlined into `serve`, it crowded the echo's path out of the
    // compiler's inlining budget (benches/instructions.sh).
    #[inline(never)]
    pub(super) fn deliver_pushes(&mut self, now: Instant) {
        let Some(kv) = self.kv.as_mut() else {
            return;
        };
        let connections = &mut self.connections;
        kv.compact(&mut |client| connections.holds(client.key, client.serial));
        let (store, fanout, counts) = kv.parts();
        let no_rules = AccessRules::default();
        let started = Instant::now();
        while fanout.turn_left(PUSHES_PER_TURN) > 0 && started.elapsed() < schedule::TURN_TIME {
            let Some(push) = fanout.front() else {
                break;
            };
            let subscribers = &store.bucket(push.bucket).subscribers[push.next..push.end];
            // A slice at a time, between looks at the clock.
            let count = subscribers
                .len()
                .min(fanout.turn_left(PUSHES_PER_TURN))
                .min(32);
            for &client in &subscribers[..count] {
                if client == push.origin {
                    continue; // It had the message with its reply.
                }
                let mut turn = Turn {
                    read_buffer: &mut [],
                    scratch: &mut self.scratch,
                    gathered: &mut self.gathered,
                    tls_plaintext: &mut self.tls_plaintext,
                    tls_records: &mut self.tls_records,
                    handler: &mut *self.handler,
                    max_line_bytes: self.config.max_line_bytes,
                    output_high_water: self.config.output_high_water,
                    output_low_water: self.config.output_low_water,
                    traffic: &mut self.traffic,
                    others_buffered: 0,
                    buffer_budget: 0,
                    budget_epoch: 0,
                    rules: &no_rules,
                    addresses: None,
                };
                let delivered = deliver(
                    connections,
                    self.poll.registry(),
                    client,
                    &push.message,
                    &mut turn,
                    now,
                );
                match delivered {
                    Delivered::Sent => counts.pushes_sent += 1,
                    Delivered::Dropped => counts.pushes_dropped += 1,
                    Delivered::Gone => {}
                }
            }
            fanout.advance(store, count);
        }
    }
}

/// Sends `message` to `client`, if it is still connected and keeping up.
fn deliver(
    connections: &mut ConnectionTable,
    registry: &Registry,
    client: Client,
    message: &[u8],
    turn: &mut Turn<'_>,
    now: Instant,
) -> Delivered {
    let parts = connections.turn_parts(client.key);
    let Some(parts) = parts.filter(|parts| parts.connection.serial() == client.serial) else {
        return Delivered::Gone;
    };
    let (connection, held) = (parts.connection, parts.held);
    let unsent = connection.pending_output();
    if unsent >= turn.output_high_water {
        client_caused!(
            log::Level::Warn,
            "{}: a subscriber with {unsent} bytes unsent, over the high-water mark ({}): it \
             does not read its pushes; closing it",
            connection.peer(),
            turn.output_high_water
        );
        let ending = Ending::Quiet(CloseReason::SubscriberBehind);
        connections.close(registry, client.key, ending);
        return Delivered::Dropped;
    }
    let pushed = catch_unwind(AssertUnwindSafe(|| connection.push(message, turn))).unwrap_or_else(
        |payload| {
            Err(Fault::Panicked {
                in_handler: false,
                message: panic_message(payload.as_ref()),
            })
        },
    );
    let after = connection.buffered_capacity();
    connections.account(client.key, held, after, false);
    let delivered = match pushed {
        Ok(true) => Delivered::Sent,
        Ok(false) => Delivered::Dropped,
        Err(fault) => {
            connections.close(registry, client.key, Ending::Fault(fault));
            return Delivered::Dropped;
        }
    };
    connections.touch(client.key, now);
    connections.enforce_budget(registry, client.key, false, now);
    delivered
}
