//! Accepting within a turn's share: the TCP and Unix listeners taking turns, the checks
//! on each accepted socket's peer (the lists, the per-address limit) before anything is
//! read, and the pause when descriptors or memory run out.

use super::*;

impl Acceptor {
    /// The next connection that may stay, while the listener has one, the turn's budget
    /// lasts and no resource has run out. `open` is the number of connections being served.
    /// Connections over the limit are closed here; nothing here ends the loop.
    pub fn next_connection(
        &mut self,
        now: Instant,
        open: usize,
        from_address: &dyn Fn(IpAddr) -> usize,
    ) -> Option<Arrival> {
        if self.paused_until.is_some() {
            return None;
        }
        let listener = self.listener.as_ref()?;
        loop {
            if self.tcp_drained && self.unix_drained {
                self.more_waiting = false;
                return None;
            }
            if self.share_left == 0 {
                // Connections may still be waiting, and no edge will say so.
                self.more_waiting = true;
                return None;
            }
            self.share_left -= 1;
            let from_unix = self.tcp_drained || (self.unix_next && !self.unix_drained);
            self.unix_next = !from_unix;
            let accepted = match self.unix.as_ref().filter(|_| from_unix) {
                Some(unix) => unix.listener.accept().map(|(socket, _)| {
                    let pid = peer_pid(&socket);
                    let peer = Peer::Unix {
                        path: unix.path.clone(),
                        pid,
                    };
                    (Stream::Unix(socket), peer)
                }),
                None => listener
                    .accept()
                    .map(|(socket, peer)| (Stream::Tcp(socket), Peer::Ip(peer))),
            };
            let (socket, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // That listener is empty for now: the other may not be.
                    if from_unix {
                        self.unix_drained = true;
                    } else {
                        self.tcp_drained = true;
                    }
                    self.share_left += 1;
                    continue;
                }
                Err(e) if is_transient_accept_error(&e) => continue,
                Err(e) => {
                    if let Some(suppressed) = self.resource_warning.allow(now) {
                        log::warn!(
                            "Cannot accept connections: {e}; pausing accepting for {ACCEPT_PAUSE:?} \
                             ({open} connections open{})",
                            suppressed_note(suppressed)
                        );
                    }
                    self.paused_until = Some(now + ACCEPT_PAUSE);
                    self.counts.pauses += 1;
                    self.more_waiting = false;
                    return None;
                }
            };
            self.counts.accepted[peer.transport() as usize] += 1;
            // The access lists, the per-address limit and TCP's options are about IP
            // clients; a Unix socket's are whoever its file's permissions let in.
            if let (Stream::Tcp(tcp), Peer::Ip(addr)) = (&socket, &peer) {
                let addr = *addr;
                if !self.rules.is_open() && !self.rules.admits(addr.ip()) {
                    self.counts.denied += 1;
                    warn_refused(&mut self.access_warning, &addr, "its own address", now);
                    continue; // Dropping the socket closes it, nothing read.
                }
                if let Some(limit) = self.max_per_address {
                    // A balancer's connections are counted under the clients its headers
                    // name.
                    if !self.proxy.expects_header(addr.ip()) && from_address(addr.ip()) >= limit {
                        let (counts, warning) = (&mut self.counts, &mut self.address_warning);
                        report_address_limit(counts, warning, addr, limit, now);
                        continue; // Dropping the socket closes it.
                    }
                }
                // Echoes are small and latency-bound: never hold them back for coalescing.
                if let Err(e) = tcp.set_nodelay(true) {
                    log::debug!("{addr}: cannot set TCP_NODELAY: {e}");
                }
            }

            if open >= self.max_connections {
                return Some(Arrival::Full(socket, peer));
            }
            return Some(Arrival::Admit(socket, peer));
        }
    }
}

pub(super) fn report_address_limit(
    counts: &mut AcceptCounts,
    warning: &mut RateLimit,
    peer: SocketAddr,
    limit: usize,
    now: Instant,
) {
    counts.over_address_limit += 1;
    if let Some(suppressed) = warning.allow(now) {
        log::warn!(
            "{} already holds {limit} connections (--max-connections-per-ip); closing the new \
             one from {peer}{}",
            peer.ip(),
            suppressed_note(suppressed)
        );
    }
}

/// Accept failures that concern one connection attempt only (see accept(2)): skip it.
pub(super) fn is_transient_accept_error(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::TimedOut
    ) || matches!(
        error.raw_os_error(),
        Some(
            libc::EPROTO
                | libc::ENOPROTOOPT
                | libc::EHOSTDOWN
                | libc::ENONET
                | libc::EHOSTUNREACH
                | libc::EOPNOTSUPP
                | libc::ENETUNREACH
                | libc::ENETDOWN
                | libc::EPERM
        )
    )
}
