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
