//! Whether a client may hold another connection: the count of connections per client
//! address and `--max-connections-per-ip`.
//!
//! It is a room of its own, below both the connection table (which counts a connection
//! under its socket's address when it is let in) and the connection (which counts it under
//! the address its PROXY header names, known only when the header arrives), so that neither
//! has to reach into the other.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use crate::accept::{suppressed_note, RateLimit};

/// Connections per client address, and the limit on them (`--max-connections-per-ip`).
pub(crate) struct AddressLimit {
    counts: HashMap<IpAddr, usize>,
    limit: usize,
    warning: RateLimit,
}

impl AddressLimit {
    pub fn new(limit: usize) -> Self {
        AddressLimit {
            counts: HashMap::new(),
            limit,
            warning: RateLimit::default(),
        }
    }

    pub fn count(&self, ip: IpAddr) -> usize {
        self.counts.get(&ip).copied().unwrap_or(0)
    }

    pub fn add(&mut self, ip: IpAddr) -> usize {
        let count = self.counts.entry(ip).or_insert(0);
        *count += 1;
        *count
    }

    pub fn remove(&mut self, ip: IpAddr) {
        if let Some(count) = self.counts.get_mut(&ip) {
            *count -= 1;
            if *count == 0 {
                self.counts.remove(&ip);
            }
        }
    }

    /// Counts a connection under `peer`'s address, known only now (from a PROXY header);
    /// false, with a rate-limited warning, if that takes the address over its limit. The
    /// connection is counted either way: closing it uncounts it.
    pub fn admit(&mut self, peer: SocketAddr) -> bool {
        if self.add(peer.ip()) <= self.limit {
            return true;
        }
        if let Some(suppressed) = self.warning.allow(Instant::now()) {
            log::warn!(
                "{} already holds {} connections (--max-connections-per-ip); closing the new \
                 one from {peer}{}",
                peer.ip(),
                self.limit,
                suppressed_note(suppressed)
            );
        }
        false
    }
}
