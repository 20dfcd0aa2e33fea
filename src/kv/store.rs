//! The buckets: each a map from key to value, and the connections subscribed to it, all
//! owned by the loop (no locks, no threads), within one byte budget (`--kv-max-bytes`).
//!
//! Buckets are never removed (the guide has no command for it), so a bucket is an index
//! into a vector as well as a name: what a subscription or a queued push refers to stays
//! valid. What the budget counts is the bytes a client chose (names, keys, values) and a
//! fixed amount for each bucket, entry and subscription, close to what the allocator
//! spends on them, so that a million empty buckets count as well as one big value.

use std::cell::Cell;
use std::collections::{HashMap, HashSet};

/// What the budget counts for a bucket beyond its name (which it holds twice, in the
/// index and in the bucket): its map, its subscriber list and its place in the index.
pub(crate) const BUCKET_COST: usize = 160;
/// What the budget counts for an entry beyond its key and value: their two allocations and
/// the map's slot.
pub(crate) const ENTRY_COST: usize = 64;
/// What the budget counts for a subscription: its place in the bucket's list and in the
/// set that keeps a connection from subscribing twice.
pub(crate) const SUBSCRIPTION_COST: usize = 48;

/// A connection, as a subscription names it: its key in the connection table and its
/// serial number, which tells it from a later connection under the same key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Client {
    pub key: usize,
    pub serial: u64,
}

/// The budget is spent: the change was not made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Full;

#[derive(Debug, Default)]
pub(crate) struct Bucket {
    name: Box<[u8]>,
    entries: HashMap<Box<[u8]>, Box<[u8]>>,
    /// In the order they subscribed; a connection that has gone stays until the list is
    /// compacted (see [`Store::compact_subscribers`]), so that a fan-out walking it by
    /// index sees neither gaps nor newcomers.
    pub subscribers: Vec<Client>,
    /// Fan-outs of this bucket's changes still under way: while there are any, the list is
    /// only appended to.
    pub fanouts: u32,
    /// The list's length when it was last compacted: it is compacted again at twice that.
    compacted_at: usize,
}

/// Every bucket, and what they hold.
#[derive(Debug)]
pub(crate) struct Store {
    by_name: HashMap<Box<[u8]>, u32>,
    buckets: Vec<Bucket>,
    /// The bucket found last: clients mostly name the same bucket again, and comparing a
    /// name costs less than hashing it.
    last_found: Cell<u32>,
    /// Every (bucket, client) subscribed, so that subscribing twice changes nothing.
    subscriptions: HashSet<(u32, Client)>,
    bytes: usize,
    max_bytes: usize,
    keys: usize,
}

impl Store {
    pub fn new(max_bytes: usize) -> Self {
        Store {
            by_name: HashMap::new(),
            buckets: Vec::new(),
            last_found: Cell::new(0),
            subscriptions: HashSet::new(),
            bytes: 0,
            max_bytes,
            keys: 0,
        }
    }

    /// The bucket named `name`, if it exists.
    #[inline]
    pub fn find(&self, name: &[u8]) -> Option<u32> {
        let last = self.last_found.get();
        if self
            .buckets
            .get(last as usize)
            .is_some_and(|b| *b.name == *name)
        {
            return Some(last);
        }
        let bucket = self.by_name.get(name).copied()?;
        self.last_found.set(bucket);
        Some(bucket)
    }

    pub fn bucket(&self, bucket: u32) -> &Bucket {
        &self.buckets[bucket as usize]
    }

    pub fn bucket_mut(&mut self, bucket: u32) -> &mut Bucket {
        &mut self.buckets[bucket as usize]
    }

    /// Makes the bucket `name` unless it exists.
    pub fn create(&mut self, name: &[u8]) -> Result<u32, Full> {
        if let Some(bucket) = self.find(name) {
            return Ok(bucket);
        }
        let cost = 2 * name.len() + BUCKET_COST;
        if self.bytes + cost > self.max_bytes || self.buckets.len() >= u32::MAX as usize {
            return Err(Full);
        }
        let bucket = self.buckets.len() as u32;
        self.buckets.push(Bucket {
            name: name.into(),
            ..Bucket::default()
        });
        self.by_name.insert(name.into(), bucket);
        self.bytes += cost;
        Ok(bucket)
    }

    #[inline]
    pub fn get(&self, bucket: u32, key: &[u8]) -> Option<&[u8]> {
        self.buckets[bucket as usize]
            .entries
            .get(key)
            .map(|value| &**value)
    }

    /// Sets `key` to `value`. A value as long as the one it replaces is written over it:
    /// only what a PUT stores is allocated.
    pub fn put(&mut self, bucket: u32, key: &[u8], value: &[u8]) -> Result<(), Full> {
        let entries = &mut self.buckets[bucket as usize].entries;
        if let Some(old) = entries.get_mut(key) {
            let bytes = self.bytes - old.len() + value.len();
            if bytes > self.max_bytes {
                return Err(Full);
            }
            if old.len() == value.len() {
                old.copy_from_slice(value);
            } else {
                *old = value.into();
            }
            self.bytes = bytes;
            return Ok(());
        }
        let cost = key.len() + value.len() + ENTRY_COST;
        if self.bytes + cost > self.max_bytes {
            return Err(Full);
        }
        entries.insert(key.into(), value.into());
        self.bytes += cost;
        self.keys += 1;
        Ok(())
    }

    /// Removes `key`; true if it was there.
    pub fn delete(&mut self, bucket: u32, key: &[u8]) -> bool {
        let entries = &mut self.buckets[bucket as usize].entries;
        let Some((key, value)) = entries.remove_entry(key) else {
            return false;
        };
        self.bytes -= key.len() + value.len() + ENTRY_COST;
        self.keys -= 1;
        if entries.is_empty() {
            // A bucket emptied of many keys gives their slots back.
            *entries = HashMap::new();
        }
        true
    }

    /// Subscribes `client` to `bucket`; a second subscription changes nothing. Returns
    /// whether the bucket's list is due to be compacted.
    pub fn subscribe(&mut self, bucket: u32, client: Client) -> Result<bool, Full> {
        if self.subscriptions.contains(&(bucket, client)) {
            return Ok(false);
        }
        if self.bytes + SUBSCRIPTION_COST > self.max_bytes {
            return Err(Full);
        }
        self.subscriptions.insert((bucket, client));
        self.bytes += SUBSCRIPTION_COST;
        let entry = &mut self.buckets[bucket as usize];
        entry.subscribers.push(client);
        Ok(entry.subscribers.len() >= 2 * entry.compacted_at.max(16))
    }

    /// Drops from `bucket`'s list the clients that `alive` says have gone, unless a
    /// fan-out is walking it. Done when the list has doubled since it was last compacted,
    /// so that a crowd subscribing and leaving costs its peak at most twice, and each
    /// subscription is looked at a bounded number of times.
    pub fn compact_subscribers(&mut self, bucket: u32, alive: &mut dyn FnMut(Client) -> bool) {
        let entry = &mut self.buckets[bucket as usize];
        if entry.fanouts > 0 {
            return;
        }
        let before = entry.subscribers.len();
        let subscriptions = &mut self.subscriptions;
        entry.subscribers.retain(|&client| {
            let keep = alive(client);
            if !keep {
                subscriptions.remove(&(bucket, client));
            }
            keep
        });
        self.bytes -= (before - entry.subscribers.len()) * SUBSCRIPTION_COST;
        entry.compacted_at = entry.subscribers.len();
        if entry.subscribers.is_empty() {
            entry.subscribers = Vec::new();
        }
    }

    /// Whether `client` is subscribed to `bucket`.
    #[inline]
    pub fn is_subscribed(&self, bucket: u32, client: Client) -> bool {
        self.subscriptions.contains(&(bucket, client))
    }

    pub fn buckets(&self) -> usize {
        self.buckets.len()
    }

    pub fn keys(&self) -> usize {
        self.keys
    }

    /// Bytes counted against the budget.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Subscriptions listed, those of connections gone and not yet compacted away included.
    pub fn subscriptions(&self) -> usize {
        self.subscriptions.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALICE: Client = Client { key: 1, serial: 1 };

    #[test]
    fn the_budget_counts_what_is_stored_and_refuses_past_it() {
        let mut store = Store::new(BUCKET_COST + 2 + ENTRY_COST + 10);
        let bucket = store.create(b"b").unwrap();
        store.put(bucket, b"k", b"123456789").unwrap();
        assert_eq!(store.bytes(), BUCKET_COST + 2 + ENTRY_COST + 10);
        assert_eq!(store.put(bucket, b"k", b"1234567890"), Err(Full));
        assert_eq!(store.put(bucket, b"x", b""), Err(Full));
        assert_eq!(store.create(b"c"), Err(Full));
        // Refused changes changed nothing.
        assert_eq!(store.get(bucket, b"k"), Some(&b"123456789"[..]));
        store.put(bucket, b"k", b"1").unwrap();
        assert!(store.delete(bucket, b"k"));
        assert!(!store.delete(bucket, b"k"));
        assert_eq!(store.bytes(), BUCKET_COST + 2);
        assert_eq!(store.keys(), 0);
        // The bucket exists still: creating it again costs nothing.
        assert_eq!(store.create(b"b"), Ok(bucket));
    }

    #[test]
    fn subscribing_twice_changes_nothing_and_compaction_forgets_the_gone() {
        let mut store = Store::new(1 << 20);
        let bucket = store.create(b"b").unwrap();
        store.subscribe(bucket, ALICE).unwrap();
        store.subscribe(bucket, ALICE).unwrap();
        assert_eq!(store.bucket(bucket).subscribers, [ALICE]);
        let mut due = false;
        for serial in 2..40 {
            due |= store.subscribe(bucket, Client { key: 2, serial }).unwrap();
        }
        assert!(due);
        store.bucket_mut(bucket).fanouts = 1;
        store.compact_subscribers(bucket, &mut |client| client == ALICE);
        assert_eq!(
            store.bucket(bucket).subscribers.len(),
            39,
            "not while a fan-out walks it"
        );
        store.bucket_mut(bucket).fanouts = 0;
        store.compact_subscribers(bucket, &mut |client| client == ALICE);
        assert_eq!(store.bucket(bucket).subscribers, [ALICE]);
        assert_eq!(store.subscriptions(), 1);
        assert_eq!(store.bytes(), BUCKET_COST + 2 + SUBSCRIPTION_COST);
    }
}
