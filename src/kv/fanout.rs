//! Fan-out: the pushes that PUT and DELETE owe a bucket's subscribers, queued in the order
//! the changes were made and delivered a bounded number per turn of the loop.
//!
//! One change is one queued message, whatever the number of subscribers: it walks the
//! bucket's list by index, over as many turns as it takes, so that a PUT to a bucket with
//! ten thousand subscribers never makes a turn long. The queue is bounded as a
//! connection's output is: past [`HELD_SOFT_LIMIT`] the connections whose changes are still
//! being delivered are not read (TCP backpressure on the writers), past [`HELD_HARD_LIMIT`]
//! no connection is, until delivery has caught up.
//!
//! This room knows keys and bucket numbers, not connections: the reactor delivers.

use std::collections::{HashMap, VecDeque};

use super::store::{Client, Store};

/// What the queue counts for a push beyond its message.
const PUSH_COST: usize = 64;
/// Past this much held in queued pushes, a connection whose own changes wait to be
/// delivered is not read until they are.
pub(crate) const HELD_SOFT_LIMIT: usize = 4 * 1024 * 1024;
/// Past this much, no connection is read until delivery catches up: the soft limit plus
/// what one read of every other writer may add is bounded by it.
pub(crate) const HELD_HARD_LIMIT: usize = 16 * 1024 * 1024;

/// A change to deliver: its message, to the bucket's subscribers `next..end` (those
/// subscribed when it was made).
#[derive(Debug)]
pub(crate) struct Push {
    pub bucket: u32,
    /// The connection that made the change: if subscribed, it had the message with its
    /// reply, in order, and is skipped.
    pub origin: Client,
    pub message: Box<[u8]>,
    pub next: usize,
    pub end: usize,
}

/// The pushes owed, oldest first.
#[derive(Debug, Default)]
pub(crate) struct Fanout {
    queue: VecDeque<Push>,
    /// Bytes held by the queue: messages and their bookkeeping.
    held: usize,
    /// Deliveries still owed by all queued pushes.
    owed: usize,
    /// Queued pushes by the key of the connection that made them.
    origins: HashMap<usize, u32>,
    /// Deliveries made in this turn of the loop.
    this_turn: usize,
}

impl Fanout {
    /// Queues `message` for every connection subscribed to `bucket` now, unless none is.
    pub fn queue(&mut self, store: &mut Store, bucket: u32, origin: Client, message: Vec<u8>) {
        let subscribed = store.bucket(bucket).subscribers.len();
        if subscribed == 0 {
            return;
        }
        store.bucket_mut(bucket).fanouts += 1;
        let message = message.into_boxed_slice();
        self.held += message.len() + PUSH_COST;
        self.owed += subscribed;
        *self.origins.entry(origin.key).or_default() += 1;
        self.queue.push_back(Push {
            bucket,
            origin,
            message,
            next: 0,
            end: subscribed,
        });
    }

    /// The message of the push queued last.
    pub fn newest_message(&self) -> &[u8] {
        self.queue.back().map_or(&[], |push| &push.message)
    }

    /// The push to deliver next, if any.
    pub fn front(&self) -> Option<&Push> {
        self.queue.front()
    }

    /// Notes that `count` more subscribers of the front push were served; a push served
    /// to all of them leaves the queue.
    pub fn advance(&mut self, store: &mut Store, count: usize) {
        let Some(push) = self.queue.front_mut() else {
            return;
        };
        push.next += count;
        self.owed -= count;
        self.this_turn += count;
        if push.next < push.end {
            return;
        }
        let push = self.queue.pop_front().expect("the front push");
        store.bucket_mut(push.bucket).fanouts -= 1;
        self.held -= push.message.len() + PUSH_COST;
        if let Some(queued) = self.origins.get_mut(&push.origin.key) {
            *queued -= 1;
            if *queued == 0 {
                self.origins.remove(&push.origin.key);
            }
        }
        if self.queue.is_empty() {
            // After a burst, the queue's memory goes back.
            *self = Fanout {
                this_turn: self.this_turn,
                ..Fanout::default()
            };
        }
    }

    /// Whether reading the connection under `key` waits for delivery to catch up.
    #[inline]
    pub fn holds_back(&self, key: usize) -> bool {
        self.held > HELD_SOFT_LIMIT
            && (self.held > HELD_HARD_LIMIT || self.origins.contains_key(&key))
    }

    /// A new turn of the loop: its share of deliveries is whole again.
    pub fn begin_turn(&mut self) {
        self.this_turn = 0;
    }

    /// Deliveries this turn may still make, of `share`.
    pub fn turn_left(&self, share: usize) -> usize {
        share.saturating_sub(self.this_turn)
    }

    pub fn has_work(&self) -> bool {
        !self.queue.is_empty()
    }

    /// Deliveries owed.
    pub fn owed(&self) -> usize {
        self.owed
    }

    /// Bytes held by the queue.
    pub fn held(&self) -> usize {
        self.held
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_push_walks_the_subscribers_of_its_time_and_then_leaves() {
        let mut store = Store::new(1 << 20);
        let bucket = store.create(b"b").unwrap();
        let writer = Client { key: 9, serial: 9 };
        let mut fanout = Fanout::default();
        fanout.queue(&mut store, bucket, writer, b"k SET TO v\r\n".to_vec());
        assert!(!fanout.has_work(), "nobody subscribed: nothing queued");
        for key in 0..3 {
            store.subscribe(bucket, Client { key, serial: 1 }).unwrap();
        }
        fanout.queue(&mut store, bucket, writer, b"k SET TO v\r\n".to_vec());
        // A newcomer after the change is not owed it.
        store
            .subscribe(bucket, Client { key: 3, serial: 1 })
            .unwrap();
        assert_eq!(fanout.owed(), 3);
        assert_eq!(fanout.front().unwrap().end, 3);
        assert_eq!(store.bucket(bucket).fanouts, 1);
        fanout.advance(&mut store, 2);
        assert_eq!(fanout.front().unwrap().next, 2);
        fanout.advance(&mut store, 1);
        assert!(!fanout.has_work());
        assert_eq!((fanout.owed(), fanout.held()), (0, 0));
        assert_eq!(store.bucket(bucket).fanouts, 0);
    }

    #[test]
    fn writers_wait_past_the_soft_limit_and_everyone_past_the_hard_one() {
        let mut store = Store::new(64 << 20);
        let bucket = store.create(b"b").unwrap();
        store
            .subscribe(bucket, Client { key: 0, serial: 1 })
            .unwrap();
        let writer = Client { key: 7, serial: 1 };
        let mut fanout = Fanout::default();
        let message = vec![b'x'; 1 << 20];
        for _ in 0..3 {
            fanout.queue(&mut store, bucket, writer, message.clone());
        }
        assert!(!fanout.holds_back(7));
        fanout.queue(&mut store, bucket, writer, message.clone());
        assert!(fanout.holds_back(7));
        assert!(!fanout.holds_back(8));
        for _ in 0..12 {
            fanout.queue(&mut store, bucket, writer, message.clone());
        }
        assert!(fanout.holds_back(8));
    }
}
