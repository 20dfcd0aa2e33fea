//! The idle list: every connection ordered from least to most recently active, so that the
//! idle timeout costs O(1) per event and per expiry, whatever the number of connections.
//!
//! The list is intrusive: its links live in each connection's slab entry, so noting activity
//! moves a connection to the back without allocating or searching, and the connection at the
//! front is always the next one to time out.

use std::time::{Duration, Instant};

use slab::Slab;

use crate::connection::Connection;

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

    /// Appends a connection just inserted into the slab as the most recently active.
    pub fn push_back(&mut self, connections: &mut Slab<Connection>, key: usize, now: Instant) {
        let links = &mut connections[key].idle;
        links.prev = self.back;
        links.next = None;
        links.last_active = now;
        match self.back {
            Some(back) => connections[back].idle.next = Some(key),
            None => self.front = Some(key),
        }
        self.back = Some(key);
    }

    /// Unlinks a connection about to be removed from the slab.
    pub fn remove(&mut self, connections: &mut Slab<Connection>, key: usize) {
        let links = connections[key].idle;
        match links.prev {
            Some(prev) => connections[prev].idle.next = links.next,
            None => self.front = links.next,
        }
        match links.next {
            Some(next) => connections[next].idle.prev = links.prev,
            None => self.back = links.prev,
        }
        let links = &mut connections[key].idle;
        links.prev = None;
        links.next = None;
    }

    /// Notes traffic on a connection: it moves to the back of the list.
    pub fn touch(&mut self, connections: &mut Slab<Connection>, key: usize, now: Instant) {
        if self.back == Some(key) {
            connections[key].idle.last_active = now;
            return;
        }
        self.remove(connections, key);
        self.push_back(connections, key, now);
    }

    /// The least recently active connection, if its idle time has run out at `now`.
    pub fn expired(&self, connections: &Slab<Connection>, now: Instant) -> Option<usize> {
        let front = self.front?;
        (connections[front].idle.last_active + self.timeout <= now).then_some(front)
    }

    /// When the least recently active connection will time out, if there is one.
    pub fn next_deadline(&self, connections: &Slab<Connection>) -> Option<Instant> {
        self.front
            .map(|front| connections[front].idle.last_active + self.timeout)
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A slab of `count` connections over real loopback sockets.
    fn connections(count: usize) -> (std::net::TcpListener, Slab<Connection>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let mut slab = Slab::new();
        for _ in 0..count {
            let stream = std::net::TcpStream::connect(addr).unwrap();
            let peer = stream.local_addr().unwrap();
            let stream = mio::net::TcpStream::from_std(stream);
            slab.insert(Connection::new(stream, peer, Instant::now()));
        }
        (listener, slab)
    }

    /// Keys from front (least recently active) to back.
    fn order(list: &IdleList, slab: &Slab<Connection>) -> Vec<usize> {
        let mut keys = Vec::new();
        let mut next = list.front;
        while let Some(key) = next {
            keys.push(key);
            next = slab[key].idle.next;
        }
        let mut backwards = Vec::new();
        let mut prev = list.back;
        while let Some(key) = prev {
            backwards.push(key);
            prev = slab[key].idle.prev;
        }
        backwards.reverse();
        assert_eq!(keys, backwards, "the links agree in both directions");
        keys
    }

    #[test]
    fn activity_moves_a_connection_to_the_back_and_the_front_expires_first() {
        let (_listener, mut slab) = connections(4);
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
