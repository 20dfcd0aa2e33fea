//! The guide's key-value store (`--kv`): the protocol of its chapter "Doctests, patterns
//! and with" (CREATE, PUT, GET, DELETE) and of "Client-server with GenServer" (SUBSCRIBE),
//! answered by the loop itself.
//!
//! It plugs in where the echo does, as the [`LineHandler`] every connection's lines go to,
//! told by the reactor which connection it is serving; the buckets are the loop's own state
//! (`store.rs`, no locks, no threads), the grammar is pure (`grammar.rs`), and the pushes a
//! change owes its bucket's subscribers wait in a queue (`fanout.rs`) that the reactor
//! delivers a bounded amount of each turn, through each subscriber's layers and under the
//! same flow control and buffer budget as its answers.
//!
//! Where the guide leaves room, this store decides:
//! - SUBSCRIBE answers nothing when the bucket exists (the guide's test reads the first
//!   push right after it), and the connection's own commands keep working afterwards (the
//!   guide's loop discards them); a second SUBSCRIBE to the same bucket changes nothing.
//! - A change is pushed to those subscribed when it was made, in the order changes were
//!   made; a DELETE is pushed whether or not the key existed, as the guide's bucket does.
//! - What would pass `--kv-max-bytes` is refused with `ERROR` and changes nothing.
//! - A line longer than `--max-line-bytes` is answered with one `ERROR` and not run.
//! - A last line without its line end, at the end of the stream, is run.

mod fanout;
mod grammar;
mod store;

use crate::counters::{KvCommand, KvCounts, KvOutcome};
use crate::handler::LineHandler;

pub(crate) use fanout::Fanout;
pub(crate) use store::{Client, Store, BUCKET_COST, ENTRY_COST, SUBSCRIPTION_COST};

use grammar::Command;

const OK: &[u8] = b"OK\r\n";
const NOT_FOUND: &[u8] = b"NOT FOUND\r\n";
const UNKNOWN_COMMAND: &[u8] = b"UNKNOWN COMMAND\r\n";
const ERROR: &[u8] = b"ERROR\r\n";

/// The store, its fan-out queue and its counts: the handler of every connection with
/// `--kv`.
pub(crate) struct Kv {
    store: Store,
    fanout: Fanout,
    /// The connection being served: set by the reactor before each of its turns.
    client: Client,
    max_line_bytes: usize,
    counts: KvCounts,
    /// Buckets whose subscriber lists have doubled since they were last compacted.
    compactions_due: Vec<u32>,
    /// The change being run owes the connection that made it a push.
    own_push: bool,
}

impl Kv {
    pub fn new(max_bytes: usize, max_line_bytes: usize) -> Self {
        Kv {
            store: Store::new(max_bytes),
            fanout: Fanout::default(),
            client: Client { key: 0, serial: 0 },
            max_line_bytes,
            counts: KvCounts {
                max_bytes: max_bytes as u64,
                ..KvCounts::default()
            },
            compactions_due: Vec::new(),
            own_push: false,
        }
    }

    /// From now on, lines come from `client`. Returns whether it is not to be read until
    /// the pushes its changes owe are delivered.
    // Out of line, as the delivery of pushes is: the reactor's `serve` is the echo's path.
    #[inline(never)]
    pub fn serve(&mut self, client: Client) -> bool {
        self.client = client;
        self.fanout.holds_back(client.key)
    }

    /// The store and its fan-out queue, for the reactor's delivery.
    pub fn parts(&mut self) -> (&mut Store, &mut Fanout, &mut KvCounts) {
        (&mut self.store, &mut self.fanout, &mut self.counts)
    }

    /// A new turn of the loop.
    pub fn begin_turn(&mut self) {
        self.fanout.begin_turn();
    }

    /// Pushes are owed, or subscriber lists are due to be compacted.
    pub fn has_work(&self) -> bool {
        self.fanout.has_work() || !self.compactions_due.is_empty()
    }

    /// Compacts the subscriber lists that are due, asking `alive` which clients are still
    /// connected.
    pub fn compact(&mut self, alive: &mut dyn FnMut(Client) -> bool) {
        for bucket in std::mem::take(&mut self.compactions_due) {
            self.store.compact_subscribers(bucket, alive);
        }
    }

    /// The counts, with the store's gauges as they are now.
    pub fn counts(&self) -> KvCounts {
        KvCounts {
            buckets: self.store.buckets() as u64,
            keys: self.store.keys() as u64,
            bytes: self.store.bytes() as u64,
            subscriptions: self.store.subscriptions() as u64,
            pushes_owed: self.fanout.owed() as u64,
            pushes_held_bytes: self.fanout.held() as u64,
            ..self.counts
        }
    }

    /// Runs one line and appends its reply.
    fn run(&mut self, line: &[u8], replies: &mut Vec<u8>) {
        let (command, outcome) = match grammar::parse(line) {
            Command::Create { bucket } => (
                KvCommand::Create,
                self.store.create(bucket).map(drop).map_err(Refusal::from),
            ),
            Command::Put { bucket, key, value } => (KvCommand::Put, self.put(bucket, key, value)),
            Command::Delete { bucket, key } => (KvCommand::Delete, self.delete(bucket, key)),
            Command::Get { bucket, key } => {
                let store = &self.store;
                let outcome = store.find(bucket).map(|bucket| {
                    replies.extend_from_slice(store.get(bucket, key).unwrap_or_default());
                    replies.extend_from_slice(b"\r\n");
                });
                (KvCommand::Get, outcome.ok_or(Refusal::NotFound))
            }
            Command::Subscribe { bucket } => (KvCommand::Subscribe, self.subscribe(bucket)),
            Command::Unknown => (KvCommand::Unknown, Err(Refusal::Unknown)),
        };
        let (outcome, reply) = match outcome {
            Ok(()) if command == KvCommand::Subscribe => (KvOutcome::Ok, &[][..]),
            Ok(()) => (KvOutcome::Ok, OK),
            Err(Refusal::NotFound) => (KvOutcome::NotFound, NOT_FOUND),
            Err(Refusal::Full) => (KvOutcome::Error, ERROR),
            Err(Refusal::Unknown) => (KvOutcome::UnknownCommand, UNKNOWN_COMMAND),
        };
        replies.extend_from_slice(reply);
        if std::mem::take(&mut self.own_push) {
            replies.extend_from_slice(self.fanout.newest_message());
            self.counts.pushes_sent += 1;
        }
        self.counts.commands[command as usize][outcome as usize] += 1;
    }

    fn put(&mut self, bucket: &[u8], key: &[u8], value: &[u8]) -> Result<(), Refusal> {
        let bucket = self.store.find(bucket).ok_or(Refusal::NotFound)?;
        self.store.put(bucket, key, value)?;
        self.notify(bucket, &[key, b" SET TO ", value, b"\r\n"]);
        Ok(())
    }

    fn delete(&mut self, bucket: &[u8], key: &[u8]) -> Result<(), Refusal> {
        let bucket = self.store.find(bucket).ok_or(Refusal::NotFound)?;
        self.store.delete(bucket, key);
        self.notify(bucket, &[key, b" DELETED\r\n"]);
        Ok(())
    }

    /// Queues the message a change owes its bucket's subscribers; without any, none is
    /// made. A subscriber that made the change itself has it at once, after its reply,
    /// so that its own changes reach it in the order of its commands.
    fn notify(&mut self, bucket: u32, message: &[&[u8]]) {
        if self.store.bucket(bucket).subscribers.is_empty() {
            return;
        }
        self.fanout
            .queue(&mut self.store, bucket, self.client, message.concat());
        self.own_push = self.store.is_subscribed(bucket, self.client);
    }

    fn subscribe(&mut self, bucket: &[u8]) -> Result<(), Refusal> {
        let bucket = self.store.find(bucket).ok_or(Refusal::NotFound)?;
        if self.store.subscribe(bucket, self.client)? && !self.compactions_due.contains(&bucket) {
            self.compactions_due.push(bucket);
        }
        Ok(())
    }

    /// Runs the complete lines of `lines`, and what ends it: a line cut at the line limit
    /// (refused once), or the stream's last line, which has no line end (run).
    fn run_lines<'a>(&mut self, mut lines: &[u8], replies: &'a mut Vec<u8>) -> &'a [u8] {
        while !lines.is_empty() {
            let (line, rest) = match memchr::memchr(b'\n', lines) {
                Some(end) => lines.split_at(end + 1),
                None if lines.len() >= self.max_line_bytes => {
                    let counts = &mut self.counts.commands[KvCommand::TooLong as usize];
                    counts[KvOutcome::Error as usize] += 1;
                    replies.extend_from_slice(ERROR);
                    break;
                }
                None => (lines, &[][..]),
            };
            self.run(line, replies);
            lines = rest;
        }
        replies
    }
}

/// Why a command changed nothing.
enum Refusal {
    NotFound,
    Full,
    Unknown,
}

impl From<store::Full> for Refusal {
    fn from(_: store::Full) -> Self {
        Refusal::Full
    }
}

impl LineHandler for Kv {
    fn respond<'a>(&mut self, lines: &'a [u8], scratch: &'a mut Vec<u8>) -> &'a [u8] {
        self.run_lines(lines, scratch)
    }

    fn respond_continued<'a>(&mut self, lines: &'a [u8], scratch: &'a mut Vec<u8>) -> &'a [u8] {
        // The rest of a line already refused: skipped, to its line end.
        match memchr::memchr(b'\n', lines) {
            Some(end) => self.run_lines(&lines[end + 1..], scratch),
            None => scratch,
        }
    }
}
