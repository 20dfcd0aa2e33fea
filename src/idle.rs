//! The idle list: every connection ordered from least to most recently active, so that the
//! idle time-out and idle eviction cost O(1) per event and per expiry, whatever the number
//! of connections.
//!
//! The list is intrusive: its links live in each slab entry, so noting activity moves an
//! entry to the back without allocating or searching. It works on any slab whose entries
//! carry [`IdleLinks`], which keeps it testable without sockets.
//!
//! Moving an entry touches its neighbours' slab entries, which at ten thousand connections
//! are cold in the cache; doing it on every request would cost the echo path. So noting
//! activity always records the time in the entry itself, but moves it to the back only if
//! its last move was at least a granularity ago. The list stays ordered by move time, and
//! every entry was last active within one granularity after its move: the front is the
//! least recently active to within a granularity, and a time-out or an eviction can come
//! that much late, never early.

use std::time::{Duration, Instant};

use slab::Slab;

/// No neighbour, in a link: slab keys stay far below it.
const NONE: u32 = u32::MAX;

/// One entry's place in the idle list, kept inside the entry itself. Neighbours are slab
/// keys as `u32`, which keeps the links of an idle connection to 40 bytes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct IdleLinks {
    prev: u32,
    next: u32,
    last_active: Instant,
    /// A granularity after it was last moved to the back (what the list is ordered by):
    /// before then, traffic does not move it. Kept as the time it may move again, so that
    /// each request compares two instants instead of measuring a duration.
    moves_after: Instant,
}

impl IdleLinks {
    /// Links of an entry not yet in the list.
    pub fn new(now: Instant) -> Self {
        IdleLinks {
            prev: NONE,
            next: NONE,
            last_active: now,
            moves_after: now,
        }
    }
}

fn key_of(link: u32) -> Option<usize> {
    (link != NONE).then_some(link as usize)
}

fn link_to(key: Option<usize>) -> u32 {
    key.map_or(NONE, |key| {
        u32::try_from(key).expect("slab keys fit in u32")
    })
}

/// What the idle list needs of a slab entry: its links.
pub(crate) trait Linked {
    fn links(&self) -> &IdleLinks;
    fn links_mut(&mut self) -> &mut IdleLinks;
}

#[derive(Debug, Default)]
pub(crate) struct IdleList {
    front: Option<usize>,
    back: Option<usize>,
    /// Activity within this long of an entry's last move does not move it again.
    granularity: Duration,
}

impl IdleList {
    /// A list whose order may lag activity by up to `granularity`.
    pub fn new(granularity: Duration) -> Self {
        IdleList {
            front: None,
            back: None,
            granularity,
        }
    }

    /// Appends an entry just inserted into the slab as the most recently active.
    pub fn push_back<T: Linked>(&mut self, entries: &mut Slab<T>, key: usize, now: Instant) {
        let links = entries[key].links_mut();
        links.prev = link_to(self.back);
        links.next = NONE;
        links.last_active = now;
        links.moves_after = now + self.granularity;
        match self.back {
            Some(back) => entries[back].links_mut().next = link_to(Some(key)),
            None => self.front = Some(key),
        }
        self.back = Some(key);
    }

    /// Unlinks an entry about to be removed from the slab.
    pub fn remove<T: Linked>(&mut self, entries: &mut Slab<T>, key: usize) {
        let links = *entries[key].links();
        match key_of(links.prev) {
            Some(prev) => entries[prev].links_mut().next = links.next,
            None => self.front = key_of(links.next),
        }
        match key_of(links.next) {
            Some(next) => entries[next].links_mut().prev = links.prev,
            None => self.back = key_of(links.prev),
        }
        let links = entries[key].links_mut();
        links.prev = NONE;
        links.next = NONE;
    }

    /// Notes traffic on an entry; it moves to the back of the list unless it moved there
    /// less than a granularity ago.
    pub fn touch<T: Linked>(&mut self, entries: &mut Slab<T>, key: usize, now: Instant) {
        let links = entries[key].links_mut();
        links.last_active = now;
        if self.back == Some(key) || now < links.moves_after {
            return;
        }
        self.remove(entries, key);
        self.push_back(entries, key, now);
    }

    /// The entry at the front, the least recently active to within a granularity, and when
    /// it was last active.
    pub fn oldest<T: Linked>(&self, entries: &Slab<T>) -> Option<(usize, Instant)> {
        let front = self.front?;
        Some((front, entries[front].links().last_active))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

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
            next = key_of(slab[key].next);
        }
        let mut backwards = Vec::new();
        let mut prev = list.back;
        while let Some(key) = prev {
            backwards.push(key);
            prev = key_of(slab[key].prev);
        }
        backwards.reverse();
        assert_eq!(keys, backwards, "the links agree in both directions");
        keys
    }

    #[test]
    fn activity_moves_an_entry_to_the_back_and_the_front_expires_first() {
        let mut slab = entries(4);
        let mut list = IdleList::new(Duration::ZERO);
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
            list.oldest(&slab),
            Some((2, start + Duration::from_secs(2)))
        );

        list.remove(&mut slab, 3); // from the middle
        list.remove(&mut slab, 2); // the front
        assert_eq!(order(&list, &slab), vec![1, 0]);
        list.remove(&mut slab, 0); // the back
        list.remove(&mut slab, 1); // the last one
        assert_eq!(order(&list, &slab), Vec::<usize>::new());
        assert_eq!(list.oldest(&slab), None);
    }

    #[test]
    fn activity_within_the_granularity_is_noted_without_moving() {
        let mut slab = entries(3);
        let mut list = IdleList::new(Duration::from_secs(1));
        let start = Instant::now();
        for key in 0..3 {
            list.push_back(&mut slab, key, start);
        }
        list.touch(&mut slab, 0, start + Duration::from_millis(500));
        assert_eq!(
            order(&list, &slab),
            vec![0, 1, 2],
            "moved less than a second ago"
        );
        assert_eq!(
            list.oldest(&slab),
            Some((0, start + Duration::from_millis(500))),
            "its activity is recorded all the same"
        );
        list.touch(&mut slab, 0, start + Duration::from_millis(1000));
        assert_eq!(order(&list, &slab), vec![1, 2, 0]);
    }
}
