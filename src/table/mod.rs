//! The connection table: every connection being served, in a `Slab` whose keys are the mio
//! tokens, with the idle list that orders them by activity.
//!
//! It exists so that letting a connection in and dropping it are each one function: a
//! connection enters registered for both directions and linked into the idle list, and
//! leaves deregistered, unlinked and closed, with one log line naming the peer. Dropping a
//! slab entry is how a faulty connection is isolated.
//!
//! Letting in and looking up are here; how a connection ends is `closing.rs`, what time
//! ends (openings, idleness, eviction) is `timers.rs`, and the table's side of the buffer
//! budget is `room.rs`.

mod closing;
mod room;
mod timers;

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

pub(crate) use closing::Ending;

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
    /// Connections let in so far: the next one's serial number.
    let_in: u64,
    /// With `--websocket`: the largest message.
    websocket_max_message: Option<usize>,
}

/// How long a connection's opening may take, when it has one: its PROXY header, TLS
/// handshake and WebSocket request all within the longest of their times.
fn opening_timeout(config: &Config, proxy: &ProxySources) -> Option<Duration> {
    [
        config.speaks_tls().then_some(config.tls_handshake_timeout),
        proxy.any().then_some(config.proxy_header_timeout),
        config
            .websocket
            .then_some(config.websocket_handshake_timeout),
    ]
    .into_iter()
    .flatten()
    .max()
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
            opening_timeout: opening_timeout(config, &proxy),
            tls: None,
            proxy,
            refusals: RateLimit::default(),
            awaiting_openings: VecDeque::new(),
            closed: ClosedCounts::default(),
            tls_failures: [0; Failure::ALL.len()],
            tls_failure_logs: RateLimit::default(),
            let_in: 0,
            websocket_max_message: config.websocket.then_some(config.websocket_max_message),
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

    pub fn closed(&self) -> ClosedCounts {
        self.closed
    }

    /// TLS handshakes that failed, by [`Failure`] reason.
    pub fn tls_failures(&self) -> [u64; Failure::ALL.len()] {
        self.tls_failures
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

    /// Whether the connection with this serial number is still under `key`.
    pub fn holds(&self, key: usize, serial: u64) -> bool {
        self.slab.get(key).is_some_and(|c| c.serial() == serial)
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
        self.let_in += 1;
        let connection = entry.insert(Connection::new(socket, peer, self.let_in, now));
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
        if let Some(max_message) = self.websocket_max_message {
            connection.speak_websocket(deadline, max_message);
        }
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

    /// The TLS configuration new connections start from, if any.
    pub fn tls(&self) -> Option<&Arc<rustls::ServerConfig>> {
        self.tls.as_ref()
    }

    /// From now on new connections speak TLS with `config`; those already open keep theirs.
    pub fn set_tls(&mut self, config: Arc<rustls::ServerConfig>) {
        self.tls = Some(config);
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
