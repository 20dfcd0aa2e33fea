//! Letting connections in: taking what the listeners have within the acceptor's rules, and
//! at the connection limit, evicting the least recently active idle connection or turning
//! the newcomer away.

use super::*;

impl Server {
    /// Takes in what the listener has, within the acceptor's rules. At the connection limit
    /// a newcomer takes the place of a connection idle for `--evict-idle-after`, if any.
    pub(super) fn accept(&mut self, now: Instant) {
        loop {
            let open = self.connections.len();
            let from_address = |ip| self.connections.connections_at(ip);
            let arrival = self.acceptor.next_connection(now, open, &from_address);
            match arrival {
                None => return,
                Some(Arrival::Admit(socket, peer)) => self.admit(socket, peer, now),
                Some(Arrival::Full(socket, peer)) => {
                    let evicted = self.config.evict_idle_after.is_some_and(|after| {
                        self.connections
                            .evict_idle(self.poll.registry(), now, after)
                    });
                    if evicted {
                        self.admit(socket, peer, now);
                    } else {
                        self.acceptor.turn_away(&peer, now);
                    }
                }
            }
        }
    }

    /// Lets an accepted socket in; during a drain it starts out draining too.
    pub(super) fn admit(&mut self, socket: Stream, peer: Peer, now: Instant) {
        let registry = self.poll.registry();
        let Some(key) = self.connections.insert(registry, socket, peer, now) else {
            return;
        };
        self.schedule.admit(key);
        let Some(connection) = self.connections.get_mut(key) else {
            return;
        };
        if self.shutdown.is_draining() {
            connection.begin_drain();
        }
        if self.config.telnet {
            let sent_before = self.traffic.bytes_sent;
            let unix = connection.peer().transport() == Transport::Unix;
            let spoken = connection.speak_telnet(&mut self.traffic);
            if unix {
                self.traffic.unix_bytes_sent += self.traffic.bytes_sent - sent_before;
            }
            if let Err(e) = spoken {
                self.connections
                    .close(self.poll.registry(), key, Ending::Fault(Fault::Io(e)));
            }
        }
    }
}
