//! Where a connection comes from and whether it is let in: the listening socket, accepting
//! from it within a per-turn budget, the connection limit, and the pauses after the process
//! or the system ran out of descriptors or memory, with their rate-limited warnings.
//!
//! This plays the Elixir original's `:permanent` acceptor: nothing here ends the loop. The
//! reactor owns the connections; the acceptor only hands it sockets it may keep.

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Registry, Token};

use crate::config::Config;

/// Accepts per turn before the reactor serves its connections again, so that a flood of
/// connection attempts cannot starve the clients already connected.
const ACCEPTS_PER_TURN: usize = 256;
/// How long accepting pauses after the process or system ran out of a resource.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);
/// Repeated warnings of one kind are logged at most this often.
const WARNING_INTERVAL: Duration = Duration::from_secs(1);
/// The listen backlog asked for; the kernel caps it at `net.core.somaxconn`. The Elixir
/// original's backlog of 5 made one connect in seven wait for a SYN retransmit.
const LISTEN_BACKLOG: libc::c_int = 4096;

/// The listening socket and the rules for letting connections in.
pub(crate) struct Acceptor {
    /// `None` once shutdown has begun: the listener is closed first.
    listener: Option<TcpListener>,
    local_addr: SocketAddr,
    max_connections: usize,
    /// Accepting is paused until then, after running out of descriptors or memory.
    paused_until: Option<Instant>,
    /// The listener may still have connections waiting (the accept budget ran out, or a
    /// pause ended): no readiness edge will announce them.
    more_waiting: bool,
    /// Accepts left in this turn.
    budget_left: usize,
    resource_warning: RateLimit,
    limit_warning: RateLimit,
}

impl Acceptor {
    /// Binds the configured address (with `SO_REUSEADDR`, so a restart binds at once) and
    /// registers the listener under `token`.
    pub fn bind(config: &Config, registry: &Registry, token: Token) -> io::Result<Acceptor> {
        let mut listener = TcpListener::bind(config.listen)?;
        deepen_backlog(&listener)?;
        let local_addr = listener.local_addr()?;
        registry.register(&mut listener, token, Interest::READABLE)?;
        Ok(Acceptor {
            listener: Some(listener),
            local_addr,
            max_connections: config.effective_max_connections(),
            paused_until: None,
            more_waiting: false,
            budget_left: ACCEPTS_PER_TURN,
            resource_warning: RateLimit::default(),
            limit_warning: RateLimit::default(),
        })
    }

    /// The address listened on, with the real port when port 0 was asked for.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn max_connections(&self) -> usize {
        self.max_connections
    }

    /// There is accepting left to do without waiting for an event.
    pub fn has_work(&self) -> bool {
        self.more_waiting
    }

    /// When a pause ends, if accepting is paused.
    pub fn paused_until(&self) -> Option<Instant> {
        self.paused_until
    }

    /// The next connection that may stay, while the listener has one, the turn's budget
    /// lasts and no resource has run out. `open` is the number of connections being served.
    /// Connections over the limit are closed here; nothing here ends the loop.
    pub fn next_connection(
        &mut self,
        now: Instant,
        open: usize,
    ) -> Option<(TcpStream, SocketAddr)> {
        if self.paused_until.is_some() {
            return None;
        }
        let listener = self.listener.as_ref()?;
        loop {
            if self.budget_left == 0 {
                // Connections may still be waiting, and no edge will say so.
                self.budget_left = ACCEPTS_PER_TURN;
                self.more_waiting = true;
                return None;
            }
            self.budget_left -= 1;
            let (socket, peer) = match listener.accept() {
                Ok(accepted) => accepted,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.budget_left = ACCEPTS_PER_TURN;
                    self.more_waiting = false;
                    return None;
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
                    self.budget_left = ACCEPTS_PER_TURN;
                    self.more_waiting = false;
                    return None;
                }
            };
            if open >= self.max_connections {
                if let Some(suppressed) = self.limit_warning.allow(now) {
                    log::warn!(
                        "Connection limit of {} reached; closing the connection from {peer}{}",
                        self.max_connections,
                        suppressed_note(suppressed)
                    );
                }
                continue; // Dropping the socket closes it.
            }
            // Echoes are small and latency-bound: never hold them back for coalescing.
            if let Err(e) = socket.set_nodelay(true) {
                log::debug!("{peer}: cannot set TCP_NODELAY: {e}");
            }
            return Some((socket, peer));
        }
    }

    /// Ends a pause that is over. The listener is edge-triggered: connections that queued
    /// up during the pause bring no new edge, so they are looked for at once.
    pub fn resume_if_due(&mut self, now: Instant) {
        if self.paused_until.is_some_and(|until| now >= until) {
            self.paused_until = None;
            self.more_waiting = true;
        }
    }

    /// Stops accepting for good: the listener is deregistered and closed.
    pub fn close(&mut self, registry: &Registry) {
        if let Some(mut listener) = self.listener.take() {
            let _ = registry.deregister(&mut listener);
        }
        self.paused_until = None;
        self.more_waiting = false;
    }
}

/// Raises the listen backlog above mio's default: calling `listen` again on a listening
/// socket updates its backlog.
fn deepen_backlog(listener: &TcpListener) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: the descriptor belongs to `listener`, which outlives the call.
    if unsafe { libc::listen(listener.as_raw_fd(), LISTEN_BACKLOG) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Accept failures that concern one connection attempt only (see accept(2)): skip it.
fn is_transient_accept_error(error: &io::Error) -> bool {
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

fn suppressed_note(suppressed: u64) -> String {
    if suppressed == 0 {
        String::new()
    } else {
        format!("; {suppressed} similar warnings suppressed")
    }
}

/// Lets one warning of a kind through per interval and counts the ones held back, so that
/// a flood of failures cannot flood the log.
#[derive(Debug, Default)]
struct RateLimit {
    last: Option<Instant>,
    suppressed: u64,
}

impl RateLimit {
    /// `Some(number held back since the last one)` when a warning may be logged now.
    fn allow(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(last) if now.duration_since(last) < WARNING_INTERVAL => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}
