//! How a connection ends: its slab entry dropped (deregistered, closed), its counts and its
//! budget share returned, the reason counted, and one log line (limited) for a fault; the
//! slab and the heap given back after a burst.

use super::*;

impl ConnectionTable {
    /// Drops a connection: deregistered, closed, forgotten by the idle list, and counted.
    pub fn close(&mut self, registry: &Registry, key: usize, ending: Ending) {
        if let Some(idle) = self.idle.as_mut() {
            idle.remove(&mut self.slab, key);
        }
        let mut connection = self.slab.remove(key);
        if connection.peer().transport() == Transport::Unix {
            self.open_unix -= 1;
        }
        self.closed.add(ending.reason(), 1);
        self.budget.adjust(key, connection.buffered_capacity(), 0);
        // A connection still awaiting its PROXY header was never counted under an address.
        if let (Some(limit), None) = (self.per_address.as_mut(), connection.header_deadline()) {
            if let Some(ip) = connection.peer().ip() {
                limit.remove(ip);
            }
        }
        // Logged while the socket is still open: whoever sees the close can find the line.
        match ending {
            Ending::Quiet(_) => log::debug!("{}: connection closed", connection.peer()),
            Ending::Fault(Fault::AccessDenied) => warn_refused(
                &mut self.refusals,
                connection.peer(),
                "the client address its PROXY header named",
                Instant::now(),
            ),
            Ending::Fault(Fault::Tls {
                failure,
                in_handshake: true,
                message,
            }) => {
                self.tls_failures[failure as usize] += 1;
                if let Some(suppressed) = self.tls_failure_logs.allow(Instant::now()) {
                    log::info!(
                        "{}: TLS handshake failed ({}): {message}; closed{}",
                        connection.peer(),
                        failure.label(),
                        suppressed_note(suppressed)
                    );
                }
            }
            Ending::Fault(fault) => log_fault(connection.peer(), fault),
        }
        let _ = registry.deregister(connection.socket_mut());
        drop(connection);
        if self.slab.is_empty() && self.slab.capacity() > SLAB_CAPACITY_KEPT {
            // A burst of clients is over: give its slots back rather than keep them forever.
            self.slab = Slab::new();
            release_freed_memory();
        }
    }
}

/// How a connection ends: as expected, or through a fault.
pub(crate) enum Ending {
    Quiet(CloseReason),
    Fault(Fault),
}

impl Ending {
    fn reason(&self) -> CloseReason {
        match self {
            Ending::Quiet(reason) => *reason,
            Ending::Fault(Fault::Io(e)) if e.kind() == io::ErrorKind::TimedOut => {
                CloseReason::PeerTimeout
            }
            Ending::Fault(Fault::Io(e)) if is_reset(e) => CloseReason::ClientReset,
            Ending::Fault(Fault::Io(_)) => CloseReason::Error,
            Ending::Fault(Fault::ProxyHeader(_)) => CloseReason::ProxyHeader,
            Ending::Fault(Fault::WebSocketOpening(_)) => CloseReason::WebSocketHandshake,
            Ending::Fault(Fault::Tls {
                in_handshake: true, ..
            }) => CloseReason::TlsHandshake,
            Ending::Fault(Fault::Tls { .. }) => CloseReason::Error,
            Ending::Fault(Fault::AddressLimit) => CloseReason::AddressLimit,
            Ending::Fault(Fault::AccessDenied) => CloseReason::AccessDenied,
            Ending::Fault(Fault::Panicked {
                in_handler: true, ..
            }) => CloseReason::HandlerPanic,
            Ending::Fault(Fault::Panicked { .. }) => CloseReason::ServerPanic,
        }
    }
}

pub(super) fn log_fault(peer: &Peer, fault: Fault) {
    match fault {
        Fault::ProxyHeader(reason) => {
            log::debug!("{peer}: {reason}; closing without echoing anything")
        }
        Fault::WebSocketOpening(reason) => log::debug!("{peer}: {reason}; closed"),
        Fault::AddressLimit => log::debug!("{peer}: over --max-connections-per-ip; closed"),
        Fault::AccessDenied => log::debug!("{peer}: refused by --allow/--deny; closed"),
        // Failures in the handshake are logged where they are counted.
        Fault::Tls { message, .. } => {
            client_caused!(log::Level::Info, "{peer}: TLS failed: {message}; closed")
        }
        Fault::Io(e) if is_ordinary_disconnect(&e) => {
            log::debug!("{peer}: connection closed by the client: {e}")
        }
        Fault::Io(e) => client_caused!(log::Level::Warn, "{peer}: connection failed: {e}"),
        Fault::Panicked {
            in_handler,
            message,
        } => {
            let place = if in_handler {
                "the line handler"
            } else {
                "serving the connection"
            };
            client_caused!(
                log::Level::Error,
                "{peer}: panic in {place} ({message}); connection closed"
            )
        }
    }
}

/// Returns freed heap memory to the system. glibc keeps it by default, so after a burst
/// of connections an idle server would go on holding the burst's peak.
pub(super) fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory of the allocator's own arenas.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Errors that are just a client going away: not worth more than a debug line.
/// Whether the client ended the connection with a reset (or what a reset turns a later
/// write into).
fn is_reset(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionAborted
    )
}

pub(super) fn is_ordinary_disconnect(error: &io::Error) -> bool {
    is_reset(error)
        || matches!(
            error.kind(),
            io::ErrorKind::TimedOut | io::ErrorKind::NotConnected
        )
}
