//! The connection table: every connection being served, in a `Slab` whose keys are the mio
//! tokens, with the idle list that orders them by activity.
//!
//! It exists so that letting a connection in and dropping it are each one function: a
//! connection enters registered for both directions and linked into the idle list, and
//! leaves deregistered, unlinked and closed, with one log line naming the peer. Dropping a
//! slab entry is how a faulty connection is isolated.

use std::collections::VecDeque;
use std::io;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::{Interest, Registry, Token};
use slab::Slab;

use crate::access::{warn_refused, AccessRules, AddressLimit, ProxySources};
use crate::budget::BufferBudget;
use crate::config::Config;
use crate::connection::{Connection, Fault};
use crate::counters::TlsFailure as Failure;
use crate::counters::{BufferGauges, CloseReason, ClosedCounts};
use crate::idle::IdleList;
use crate::stream::{Peer, Stream, Transport};
use crate::warning::{client_caused, suppressed_note, RateLimit};

/// Slab slots kept once every connection has closed; a larger slab is released.
const SLAB_CAPACITY_KEPT: usize = 1024;

pub(crate) struct ConnectionTable {
    slab: Slab<Connection>,
    /// Connections in the slab over a Unix socket; the rest are TCP.
    open_unix: usize,
    /// Present when connections time out after a quiet spell or may be evicted when idle.
    idle: Option<IdleList>,
    idle_timeout: Option<Duration>,
    budget: BufferBudget,
    /// Connections per client address, kept only under `--max-connections-per-ip`.
    per_address: Option<AddressLimit>,
    /// `--allow` and `--deny`, for the client a PROXY header names.
    rules: AccessRules,
    /// Whose connections begin with a PROXY header.
    proxy: ProxySources,
    /// Refusals of the clients PROXY headers named, warned of once a second.
    refusals: RateLimit,
    /// When some connections send a PROXY header or speak TLS: how long their opening (the
    /// header, then the handshake) may take, and the connections still in it in order of
    /// deadline (all wait equally long, so a queue suffices).
    opening_timeout: Option<Duration>,
    awaiting_openings: VecDeque<(Instant, usize)>,
    /// With `--tls-cert`: what new connections' TLS starts from (replaced on reload).
    tls: Option<Arc<rustls::ServerConfig>>,
    closed: ClosedCounts,
    /// TLS handshake failures by reason, and their log lines, one a second at most (a
    /// flood of plaintext clients would otherwise fill the log).
    tls_failures: [u64; Failure::ALL.len()],
    tls_failure_logs: RateLimit,
}

impl ConnectionTable {
    pub fn new(config: &Config) -> Self {
        // The idle list may lag activity by an eighth of the shortest time it serves, and by
        // a second at most: time-outs and evictions are that much late at worst.
        let shortest = [config.idle_timeout, config.evict_idle_after]
            .into_iter()
            .flatten()
            .min();
        let proxy = ProxySources::new(config);
        ConnectionTable {
            slab: Slab::new(),
            open_unix: 0,
            idle: shortest.map(|time| IdleList::new((time / 8).min(Duration::from_secs(1)))),
            idle_timeout: config.idle_timeout,
            budget: BufferBudget::new(config.max_buffered_bytes, config.read_buffer_bytes),
            per_address: config.max_connections_per_ip.map(AddressLimit::new),
            rules: AccessRules::new(config),
            opening_timeout: if config.tls.is_some() {
                Some(config.tls_handshake_timeout)
            } else {
                proxy.any().then_some(config.proxy_header_timeout)
            },
            tls: None,
            proxy,
            refusals: RateLimit::default(),
            awaiting_openings: VecDeque::new(),
            closed: ClosedCounts::default(),
            tls_failures: [0; Failure::ALL.len()],
            tls_failure_logs: RateLimit::default(),
        }
    }

    /// Connections from `ip` being served (0 when addresses are not counted).
    pub fn connections_at(&self, ip: IpAddr) -> usize {
        self.per_address.as_ref().map_or(0, |limit| limit.count(ip))
    }

    /// A connection, with what its turn needs of the table: the access lists and the
    /// per-address counts (a PROXY header names its address only then) and the buffer
    /// budget's figures.
    pub fn turn_parts(&mut self, key: usize) -> Option<TurnParts<'_>> {
        let connection = self.slab.get_mut(key)?;
        let held = connection.buffered_capacity();
        Some(TurnParts {
            held,
            others_buffered: self.budget.others(held),
            buffer_budget: self.budget.limit(),
            budget_epoch: self.budget.epoch(),
            connection,
            rules: &self.rules,
            addresses: self.per_address.as_mut(),
        })
    }

    /// After a connection's turn: its buffers' capacity went from `before` to `after`. A
    /// connection that stopped for want of room waits for it.
    pub fn account(&mut self, key: usize, before: usize, after: usize, over_budget: bool) {
        self.budget.adjust(key, before, after);
        if over_budget {
            self.budget.wait(key);
        }
    }

    /// Brings the total back under the budget, or makes room for a connection waiting to
    /// read (`room_wanted`), by closing the connections holding the most without progress,
    /// sparing `spared` (the one just served).
    pub fn enforce_budget(
        &mut self,
        registry: &Registry,
        spared: usize,
        room_wanted: bool,
        now: Instant,
    ) {
        if self.budget.should_look(room_wanted, now) {
            self.evict_for_budget(registry, Some(spared), now);
        }
    }

    /// Looks again for the room a connection asked for, at the end of a turn in which the
    /// waiting could not be let go (after the pause, if a look just fell short); nobody is
    /// spared this time, the one waiting included (if it alone holds too much, it is the one
    /// to go). Without this, a connection that asked for room while the holders still
    /// seemed to make progress, or whose room others took before the turn ended, would wait
    /// for ever: its client waits for the echo, so no event comes for it.
    pub fn look_again_for_room(&mut self, registry: &Registry, now: Instant) {
        if self.budget.next_look(now).is_none_or(|at| now < at) {
            return;
        }
        let slab = &self.slab;
        let still_wanted = self
            .budget
            .waiting()
            .iter()
            .any(|&key| slab.get(key).is_some_and(Connection::waits_for_room));
        if still_wanted {
            self.evict_for_budget(registry, None, now);
        } else {
            self.budget.cancel_next_look();
        }
    }

    /// When a connection waiting for room is to be looked for again.
    pub fn next_room_look(&self, now: Instant) -> Option<Instant> {
        self.budget.next_look(now)
    }

    fn evict_for_budget(&mut self, registry: &Registry, spared: Option<usize>, now: Instant) {
        let slab = &self.slab;
        let evictions = self
            .budget
            .choose_evictions(spared, now, &mut |key| slab[key].as_holder());
        for (key, held) in evictions {
            client_caused!(
                log::Level::Warn,
                "{}: holds {held} buffered bytes, the most, while all connections' buffers \
                 are over --max-buffered-bytes ({}); closing it",
                self.slab[key].peer(),
                self.budget.limit()
            );
            self.close(registry, key, Ending::Quiet(CloseReason::BufferBudget));
        }
    }

    /// The connections that stopped for want of room, once there is room again: they are
    /// to be read without waiting for an event.
    pub fn resume_budget_waiters(&mut self) -> Vec<usize> {
        let mut keys = self.budget.take_resumable();
        keys.retain(|&key| self.slab.contains(key));
        keys
    }

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

    pub fn closed(&self) -> ClosedCounts {
        self.closed
    }

    /// TLS handshakes that failed, by [`Failure`] reason.
    pub fn tls_failures(&self) -> [u64; Failure::ALL.len()] {
        self.tls_failures
    }

    /// What the connections hold in their buffers, and why reading waits.
    pub fn buffer_gauges(&self) -> BufferGauges {
        let start = BufferGauges {
            budget_used: self.budget.used(),
            budget: self.budget.limit(),
            ..BufferGauges::default()
        };
        self.slab.iter().fold(start, |gauges, (_, c)| BufferGauges {
            reads_paused: gauges.reads_paused + usize::from(c.is_read_paused()),
            waiting_for_budget: gauges.waiting_for_budget + usize::from(c.is_budget_paused()),
            buffered_bytes: gauges.buffered_bytes + c.buffered_bytes(),
            ..gauges
        })
    }

    /// Counts the connections still open when the shutdown timeout gave up on them.
    pub fn abandon_all(&mut self) {
        self.closed
            .add(CloseReason::ShutdownTimeout, self.slab.len() as u64);
    }

    pub fn len(&self) -> usize {
        self.slab.len()
    }

    /// Connections open, by transport.
    pub fn open_by_transport(&self) -> [usize; Transport::ALL.len()] {
        let mut open = [0; Transport::ALL.len()];
        open[Transport::Unix as usize] = self.open_unix;
        open[Transport::Tcp as usize] = self.slab.len() - self.open_unix;
        open
    }

    pub fn get_mut(&mut self, key: usize) -> Option<&mut Connection> {
        self.slab.get_mut(key)
    }

    pub fn keys(&self) -> Vec<usize> {
        self.slab.iter().map(|(key, _)| key).collect()
    }

    /// Gives an accepted socket its slab entry, registered once for both directions
    /// (edge-triggered, so no per-request reregistration is ever needed) and as the most
    /// recently active connection. Returns its key, or `None` if it could not be registered.
    pub fn insert(
        &mut self,
        registry: &Registry,
        mut socket: Stream,
        peer: Peer,
        now: Instant,
    ) -> Option<usize> {
        let entry = self.slab.vacant_entry();
        let key = entry.key();
        let interest = Interest::READABLE | Interest::WRITABLE;
        if let Err(e) = registry.register(&mut socket, Token(key), interest) {
            log::warn!("{peer}: cannot register the connection: {e}");
            self.closed.add(CloseReason::Error, 1);
            return None;
        }
        log::debug!("{peer}: connected");
        if peer.transport() == Transport::Unix {
            self.open_unix += 1;
        }
        let connection = entry.insert(Connection::new(socket, peer, now));
        let deadline = now + self.opening_timeout.unwrap_or_default();
        if self.opening_timeout.is_some() && self.proxy.expects_header_from(connection.peer()) {
            // Its address is known once its header has come: counted then.
            connection.expect_proxy_header(deadline);
        } else if let (Some(limit), Some(ip)) = (self.per_address.as_mut(), connection.peer().ip())
        {
            limit.add(ip);
        }
        let tls = self
            .tls
            .as_ref()
            .map(|config| connection.speak_tls(Arc::clone(config), deadline));
        let opening = connection.opening_deadline().is_some();
        if let Some(idle) = self.idle.as_mut() {
            idle.push_back(&mut self.slab, key, now);
        }
        if let Some(Err(fault)) = tls {
            self.close(registry, key, Ending::Fault(fault));
            return None;
        }
        if opening {
            self.awaiting_openings.push_back((deadline, key));
        }
        Some(key)
    }

    /// Notes traffic on a connection.
    pub fn touch(&mut self, key: usize, now: Instant) {
        if let Some(idle) = self.idle.as_mut() {
            idle.touch(&mut self.slab, key, now);
        }
    }

    /// From now on new connections speak TLS with `config`; those already open keep theirs.
    pub fn set_tls(&mut self, config: Arc<rustls::ServerConfig>) {
        self.tls = Some(config);
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

/// What a connection's turn borrows of the table, from one lookup.
pub(crate) struct TurnParts<'a> {
    pub connection: &'a mut Connection,
    pub rules: &'a AccessRules,
    pub addresses: Option<&'a mut AddressLimit>,
    /// The connection's buffer capacity before the turn.
    pub held: usize,
    pub others_buffered: usize,
    pub buffer_budget: usize,
    pub budget_epoch: u64,
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
            Ending::Fault(Fault::Io(_)) => CloseReason::Error,
            Ending::Fault(Fault::ProxyHeader(_)) => CloseReason::ProxyHeader,
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

fn log_fault(peer: &Peer, fault: Fault) {
    match fault {
        Fault::ProxyHeader(reason) => {
            log::debug!("{peer}: {reason}; closing without echoing anything")
        }
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
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory of the allocator's own arenas.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Errors that are just a client going away: not worth more than a debug line.
fn is_ordinary_disconnect(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::TimedOut
            | io::ErrorKind::NotConnected
    )
}
