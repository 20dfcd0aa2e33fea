//! The idle list: every connection ordered from least to most recently active, so that the
//! idle timeout costs O(1) per event and per expiry, whatever the number of connections.
//!
//! The list is intrusive: its links live in each slab entry, so noting activity moves an
//! entry to the back without allocating or searching, and the entry at the front is always
//! the next one to time out. It works on any slab whose entries carry [`IdleLinks`], which
//! keeps it testable without sockets.

use std::time::{Duration, Instant};

use slab::Slab;

/// One entry's place in the idle list, kept inside the entry itself.
#[derive(Debug, Clone, Copy)]
pub(crate) struct IdleLinks {
    prev: Option<usize>,
    next: Option<usize>,
    last_active: Instant,
}

impl IdleLinks {
    /// Links of an entry not yet in the list.
    pub fn new(now: Instant) -> Self {
        IdleLinks {
            prev: None,
            next: None,
            last_active: now,
        }
    }
}

/// What the idle list needs of a slab entry: its links.
pub(crate) trait Linked {
    fn links(&self) -> &IdleLinks;
    fn links_mut(&mut self) -> &mut IdleLinks;
}

#[derive(Debug)]
pub(crate) struct IdleList {
    timeout: Duration,
    front: Option<usize>,
    back: Option<usize>,
}

impl IdleList {
    pub fn new(timeout: Duration) -> Self {
        IdleList {
            timeout,
            front: None,
            back: None,
        }
    }

    /// Appends an entry just inserted into the slab as the most recently active.
    pub fn push_back<T: Linked>(&mut self, entries: &mut Slab<T>, key: usize, now: Instant) {
        let links = entries[key].links_mut();
        links.prev = self.back;
        links.next = None;
        links.last_active = now;
        match self.back {
            Some(back) => entries[back].links_mut().next = Some(key),
            None => self.front = Some(key),
        }
        self.back = Some(key);
    }

    /// Unlinks an entry about to be removed from the slab.
    pub fn remove<T: Linked>(&mut self, entries: &mut Slab<T>, key: usize) {
        let links = *entries[key].links();
        match links.prev {
            Some(prev) => entries[prev].links_mut().next = links.next,
            None => self.front = links.next,
        }
        match links.next {
            Some(next) => entries[next].links_mut().prev = links.prev,
            None => self.back = links.prev,
        }
        let links = entries[key].links_mut();
        links.prev = None;
        links.next = None;
    }

    /// Notes traffic on an entry: it moves to the back of the list.
    pub fn touch<T: Linked>(&mut self, entries: &mut Slab<T>, key: usize, now: Instant) {
        if self.back == Some(key) {
            entries[key].links_mut().last_active = now;
            return;
        }
        self.remove(entries, key);
        self.push_back(entries, key, now);
    }

    /// The least recently active entry, if its idle time has run out at `now`.
    pub fn expired<T: Linked>(&self, entries: &Slab<T>, now: Instant) -> Option<usize> {
        let front = self.front?;
        (entries[front].links().last_active + self.timeout <= now).then_some(front)
    }

    /// When the least recently active entry will time out, if there is one.
    pub fn next_deadline<T: Linked>(&self, entries: &Slab<T>) -> Option<Instant> {
        self.front
            .map(|front| entries[front].links().last_active + self.timeout)
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Linked for IdleLinks {
        fn links(&self) -> &IdleLinks {
            self
        }
        fn links_mut(&mut self) -> &mut IdleLinks {
            self
        }
    }

    fn entries(count: usize) -> Slab<IdleLinks> {
        let mut slab = Slab::new();
        for _ in 0..count {
            slab.insert(IdleLinks::new(Instant::now()));
        }
        slab
    }

    /// Keys from front (least recently active) to back.
    fn order(list: &IdleList, slab: &Slab<IdleLinks>) -> Vec<usize> {
        let mut keys = Vec::new();
        let mut next = list.front;
        while let Some(key) = next {
            keys.push(key);
            next = slab[key].next;
        }
        let mut backwards = Vec::new();
        let mut prev = list.back;
        while let Some(key) = prev {
            backwards.push(key);
            prev = slab[key].prev;
        }
        backwards.reverse();
        assert_eq!(keys, backwards, "the links agree in both directions");
        keys
    }

    #[test]
    fn activity_moves_an_entry_to_the_back_and_the_front_expires_first() {
        let mut slab = entries(4);
        let timeout = Duration::from_secs(10);
        let mut list = IdleList::new(timeout);
        let start = Instant::now();
        for key in 0..4 {
            list.push_back(&mut slab, key, start + Duration::from_secs(key as u64));
        }
        assert_eq!(order(&list, &slab), vec![0, 1, 2, 3]);

        list.touch(&mut slab, 1, start + Duration::from_secs(5));
        list.touch(&mut slab, 0, start + Duration::from_secs(6));
        list.touch(&mut slab, 0, start + Duration::from_secs(7)); // already at the back
        assert_eq!(order(&list, &slab), vec![2, 3, 1, 0]);
        assert_eq!(
            list.next_deadline(&slab),
            Some(start + Duration::from_secs(2) + timeout)
        );

        assert_eq!(list.expired(&slab, start + Duration::from_secs(11)), None);
        assert_eq!(
            list.expired(&slab, start + Duration::from_secs(12)),
            Some(2)
        );

        list.remove(&mut slab, 3); // from the middle
        list.remove(&mut slab, 2); // the front
        assert_eq!(order(&list, &slab), vec![1, 0]);
        list.remove(&mut slab, 0); // the back
        list.remove(&mut slab, 1); // the last one
        assert_eq!(order(&list, &slab), Vec::<usize>::new());
        assert_eq!(list.next_deadline(&slab), None);
    }
}
