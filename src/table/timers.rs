//! What time ends: openings (a PROXY header, a TLS handshake, a WebSocket request) not
//! complete by their deadline, connections idle past `--idle-timeout`, the longest idle
//! evicted for a newcomer, and freed memory returned to the system after a crowd.

use super::*;

impl ConnectionTable {
    /// Makes room for one more connection by closing the least recently active one, if it
    /// has been idle at least `after`. True if it did.
    pub fn evict_idle(&mut self, registry: &Registry, now: Instant, after: Duration) -> bool {
        let Some((key, last_active)) = self.idle.as_ref().and_then(|idle| idle.oldest(&self.slab))
        else {
            return false;
        };
        if now.saturating_duration_since(last_active) < after {
            return false;
        }
        log::debug!(
            "{}: idle for {:?}; evicted for a new client at the connection limit",
            self.slab[key].peer(),
            now.saturating_duration_since(last_active)
        );
        self.close(registry, key, Ending::Quiet(CloseReason::IdleEvicted));
        true
    }

    /// When the first connection still in its opening (PROXY header, TLS handshake) must
    /// be through it.
    pub fn next_opening_deadline(&self) -> Option<Instant> {
        self.awaiting_openings
            .front()
            .map(|&(deadline, _)| deadline)
    }

    /// Closes the connections whose PROXY header or TLS handshake is not complete by its
    /// deadline.
    pub fn expire_openings(&mut self, registry: &Registry, now: Instant) {
        while let Some(&(deadline, key)) = self.awaiting_openings.front() {
            if deadline > now {
                return;
            }
            self.awaiting_openings.pop_front();
            // The key may have been reused since, by a connection with a later deadline.
            let Some(connection) = self.slab.get(key) else {
                continue;
            };
            if connection.opening_deadline() != Some(deadline) {
                continue;
            }
            let timeout = self.opening_timeout.unwrap_or_default();
            let fault = if connection.header_deadline().is_some() {
                Fault::ProxyHeader(format!(
                    "no complete PROXY protocol header within {timeout:?}"
                ))
            } else if connection.tls_deadline().is_none() {
                Fault::WebSocketOpening(format!("no complete HTTP request within {timeout:?}"))
            } else {
                Fault::Tls {
                    failure: Failure::Timeout,
                    in_handshake: true,
                    message: format!("no complete handshake within {timeout:?}"),
                }
            };
            self.close(registry, key, Ending::Fault(fault));
        }
    }

    /// When the least recently active connection times out, if connections time out.
    pub fn next_idle_deadline(&self) -> Option<Instant> {
        let timeout = self.idle_timeout?;
        let (_, last_active) = self.idle.as_ref()?.oldest(&self.slab)?;
        Some(last_active + timeout)
    }

    /// Closes every connection that has been quiet for the idle timeout at `now`.
    /// Gives the memory of freed buffers back to the system once a crowd's are gone (see
    /// [`BufferBudget::return_freed_memory`]).
    pub fn return_freed_memory(&mut self, now: Instant) {
        if self.budget.return_freed_memory(now) {
            log::debug!(
                "Buffers fell to {} bytes: freed memory given back to the system",
                self.budget.used()
            );
        }
    }

    /// When freed memory is next due to go back to the system, if any waits.
    pub fn next_memory_return(&self) -> Option<Instant> {
        self.budget.next_return()
    }

    pub fn expire_idle(&mut self, registry: &Registry, now: Instant) {
        let Some(timeout) = self.idle_timeout else {
            return;
        };
        while let Some(key) = self
            .idle
            .as_ref()
            .and_then(|idle| idle.oldest(&self.slab))
            .and_then(|(key, last_active)| (last_active + timeout <= now).then_some(key))
        {
            log::debug!(
                "{}: no traffic for {timeout:?}; closing",
                self.slab[key].peer()
            );
            self.close(registry, key, Ending::Quiet(CloseReason::IdleTimeout));
        }
    }
}
