//! The reactor: one mio `Poll` that owns the listening socket (through the acceptor) and a
//! `Slab` of connections.
//!
//! This is the only module that knows about `Poll`. Each turn of [`Server::run`] waits for
//! events, serves the connections the schedule says are owed first, dispatches each event
//! (to the acceptor, the shutdown, the metrics endpoint, or a connection, within the turn's
//! shares: see `schedule.rs`), serves the backlog's share, then takes one step before
//! sleeping again: resumed accepting, idle expiry and the drain check. A faulty connection is isolated by dropping its entry in the connection
//! table, as the Elixir original's temporary tasks are. The reactor also owns what every
//! connection shares because the loop is single-threaded: the read buffer, the handler and
//! its scratch buffer.

use std::io;
use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

use mio::{Events, Poll, Registry, Token};

use crate::accept::{self, Acceptor, Arrival, ServiceSockets};
use crate::certificates;
use crate::config::Config;
use crate::connection::{panic_message, Connection, Fault, ReadOutcome, Turn};
use crate::counters::{CloseReason, TlsCounts, Traffic, TurnTimes, UdpCounts};
use crate::handler::{Echo, LineHandler};
use crate::metrics::endpoint::MetricsEndpoint;
use crate::metrics::Snapshot;
use crate::schedule::{self, Schedule};
use crate::shutdown::{ServiceManager, Shutdown, ShutdownHandle, Stopped};
use crate::stream::{Peer, Stream, Transport};
use crate::table::{ConnectionTable, Ending, TurnParts};
use crate::udp::UdpEcho;

const LISTENER: Token = Token(usize::MAX - 1);
const WAKER: Token = Token(usize::MAX - 2);
const SIGNALS: Token = Token(usize::MAX - 3);
const METRICS: Token = Token(usize::MAX - 4);
const UDP: Token = Token(usize::MAX - 5);
const UNIX_LISTENER: Token = Token(usize::MAX - 6);
/// Decrypted input is taken out of rustls this much at a time: one record's worth.
const TLS_PLAINTEXT_BYTES: usize = 16 * 1024;
/// Keys the schedule remembers once every connection has gone; after a larger burst its
/// memory is given back, as the connection table gives back its slab.
const SCHEDULE_KEYS_KEPT: usize = 1024;

/// A line server bound to its address, ready to [`run`](Server::run).
pub struct Server {
    poll: Poll,
    acceptor: Acceptor,
    shutdown: Shutdown,
    config: Config,
    connections: ConnectionTable,
    /// Who is served next, and how much one turn does.
    schedule: Schedule,
    /// This turn's events of heavy connections, served after the light ones' (kept to
    /// reuse the allocation).
    heavy_events: Vec<(usize, Readiness)>,
    handler: Box<dyn LineHandler>,
    /// The one read buffer of the whole reactor; connections copy out only what they keep.
    read_buffer: Box<[u8]>,
    /// Where handlers write answers that are not their input; kept to avoid reallocating.
    scratch: Vec<u8>,
    /// With `--telnet` or TLS, where one read's echoes and replies are gathered to go down
    /// in one piece: one buffer for all connections, so that none of them keeps one.
    gathered: Vec<u8>,
    /// With TLS, where decrypted input is taken out to be answered, and where the records
    /// for the wire are made, shared alike.
    tls_plaintext: Box<[u8]>,
    tls_records: Vec<u8>,
    /// Bytes and long lines, counted by the connections as they go.
    traffic: Traffic,
    /// How long turns of the loop take.
    turns: TurnTimes,
    /// The scrape endpoint, with `--metrics`.
    metrics: Option<MetricsEndpoint>,
    /// The datagram echo, with `--udp`; its socket closes when shutdown begins.
    udp: Option<UdpEcho>,
    /// With `--tls-cert`: reloads done and failed (the handshake failures are the table's).
    tls_reloads: Option<TlsCounts>,
    started: std::time::SystemTime,
}

impl Server {
    /// Binds the listening socket (with `SO_REUSEADDR`, so a restart binds at once) and sets
    /// up the reactor. Port 0 picks a free port: see [`Server::local_addr`].
    pub fn bind(config: Config) -> io::Result<Server> {
        Server::bind_with_handler(config, Box::new(Echo))
    }

    /// As [`Server::bind`], answering lines with `handler` instead of echoing them.
    pub fn bind_with_handler(config: Config, handler: Box<dyn LineHandler>) -> io::Result<Server> {
        config
            .validate()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let poll = Poll::new()?;
        let acceptor = Acceptor::bind(&config, poll.registry(), LISTENER)?;
        Server::with_acceptor(poll, acceptor, None, None, config, handler)
    }

    /// Serves `listener`, a listening socket bound elsewhere, instead of binding
    /// `config.listen`. Its accept queue is left for whoever else holds the socket when
    /// this server stops.
    pub fn from_listener(
        listener: std::net::TcpListener,
        config: Config,
        handler: Box<dyn LineHandler>,
    ) -> io::Result<Server> {
        let sockets = ServiceSockets {
            tcp: listener,
            udp: None,
            unix: None,
        };
        Server::from_service_sockets(sockets, config, handler)
    }

    /// Serves the sockets a service manager handed over (see
    /// [`crate::sockets_from_service_manager`]) instead of binding: its TCP listener, and
    /// its UDP socket and Unix listener, if any, as if `--udp` and `--unix` had asked for
    /// them. `--udp` without a UDP socket among them binds one on the TCP listener's
    /// address; `--unix` beside an inherited Unix listener does not apply.
    pub fn from_service_sockets(
        sockets: ServiceSockets,
        config: Config,
        handler: Box<dyn LineHandler>,
    ) -> io::Result<Server> {
        config
            .validate()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let poll = Poll::new()?;
        let acceptor = Acceptor::inherit(sockets.tcp, &config, poll.registry(), LISTENER)?;
        Server::with_acceptor(poll, acceptor, sockets.udp, sockets.unix, config, handler)
    }

    fn with_acceptor(
        poll: Poll,
        mut acceptor: Acceptor,
        inherited_udp: Option<std::net::UdpSocket>,
        inherited_unix: Option<std::os::unix::net::UnixListener>,
        config: Config,
        handler: Box<dyn LineHandler>,
    ) -> io::Result<Server> {
        match (inherited_unix, config.unix.as_ref()) {
            (Some(listener), asked) => {
                let path = listener
                    .local_addr()?
                    .as_pathname()
                    .map(std::path::Path::to_path_buf)
                    .unwrap_or_else(|| "(unnamed Unix socket)".into());
                if asked.is_some_and(|asked| *asked != path) {
                    log::warn!(
                        "--unix does not apply: serving the Unix socket {} passed by the \
                         service manager",
                        path.display()
                    );
                }
                acceptor.listen_unix(listener, path, false, poll.registry(), UNIX_LISTENER)?;
            }
            (None, Some(path)) => {
                let listener = accept::bind_unix(path, config.unix_mode)
                    .map_err(|e| io::Error::new(io::ErrorKind::AddrInUse, e))?;
                acceptor.listen_unix(
                    listener,
                    path.clone(),
                    true,
                    poll.registry(),
                    UNIX_LISTENER,
                )?;
            }
            (None, None) => {}
        }
        let shutdown = Shutdown::new(poll.registry(), WAKER, SIGNALS, config.shutdown_timeout)?;
        if config.proxy_protocol && config.proxy_from.is_empty() {
            log::warn!(
                "--proxy-protocol: every connection must begin with a PROXY header, and any \
                 client that can reach the port can claim any address with one; name the load \
                 balancers' addresses with --proxy-from to believe only theirs"
            );
        }
        let metrics = match config.metrics {
            Some(addr) => Some(
                MetricsEndpoint::bind(addr, config.metrics_timeout, poll.registry(), METRICS)
                    .map_err(|e| {
                        io::Error::new(
                            e.kind(),
                            format!("cannot listen for metrics on {addr}: {e}"),
                        )
                    })?,
            ),
            None => None,
        };
        let udp = match (inherited_udp, config.udp) {
            (Some(socket), _) => Some(UdpEcho::serve(socket, &config, poll.registry(), UDP)?),
            // The same address and port as the listener, whose real port is known now.
            (None, true) => Some(UdpEcho::bind(
                acceptor.local_addr(),
                &config,
                poll.registry(),
                UDP,
            )?),
            (None, false) => None,
        };
        let mut connections = ConnectionTable::new(&config);
        if let Some(files) = &config.tls {
            let tls = certificates::load(files)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
            connections.set_tls(tls);
        }
        Ok(Server {
            poll,
            acceptor,
            shutdown,
            connections,
            schedule: Schedule::default(),
            heavy_events: Vec::new(),
            handler,
            read_buffer: vec![0; config.read_buffer_bytes].into_boxed_slice(),
            scratch: Vec::new(),
            gathered: Vec::new(),
            tls_plaintext: if config.tls.is_some() {
                vec![0; TLS_PLAINTEXT_BYTES].into_boxed_slice()
            } else {
                Box::default()
            },
            tls_records: Vec::new(),
            traffic: Traffic::default(),
            turns: TurnTimes::default(),
            metrics,
            udp,
            tls_reloads: config.tls.as_ref().map(|_| TlsCounts::default()),
            started: std::time::SystemTime::now(),
            config,
        })
    }

    /// The address actually bound, with the real port when port 0 was asked for.
    pub fn local_addr(&self) -> SocketAddr {
        self.acceptor.local_addr()
    }

    /// The address of the scrape endpoint, with its real port, when `--metrics` is on.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().map(MetricsEndpoint::local_addr)
    }

    /// The path of the Unix socket connections are accepted on, with `--unix`.
    pub fn unix_path(&self) -> Option<&std::path::Path> {
        self.acceptor.unix_path()
    }

    /// The address datagrams are echoed on, with `--udp`.
    pub fn udp_addr(&self) -> Option<SocketAddr> {
        self.udp.as_ref().map(UdpEcho::local_addr)
    }

    /// The connection limit in force.
    pub fn max_connections(&self) -> usize {
        self.acceptor.max_connections()
    }

    /// A handle that shuts the server down gracefully from another thread.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.shutdown.handle()
    }

    /// Makes SIGINT and SIGTERM shut the server down gracefully; a second one during the
    /// drain stops it at once. Meant for the binary: it takes over those signals process-wide.
    pub fn handle_signals(&mut self) -> io::Result<()> {
        let reload = self.config.tls.is_some();
        self.shutdown.handle_signals(self.poll.registry(), reload)
    }

    /// Tells `manager` when the server is ready, what it is doing and when it stops, and
    /// keeps its watchdog fed from the event loop.
    pub fn notify_service_manager(&mut self, manager: ServiceManager) {
        self.shutdown.notify_service_manager(manager);
    }

    /// Serves clients until shutdown. Only a failure of the poll instance itself ends it with
    /// an error; accept errors and client faults never do.
    pub fn run(mut self) -> io::Result<Stopped> {
        let port = self.local_addr().port();
        log::info!("Accepting connections on port {port}");
        if let Some(path) = self.unix_path() {
            log::info!("Accepting connections on Unix socket {}", path.display());
        }
        if let Some(addr) = self.udp_addr() {
            log::info!("Echoing datagrams on UDP port {}", addr.port());
        }
        self.shutdown.announce_ready(Instant::now(), port);
        let mut events = Events::with_capacity(1024);
        loop {
            let timeout = self.poll_timeout(Instant::now());
            match self.poll.poll(&mut events, timeout) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            let now = Instant::now();
            self.schedule.begin_turn();
            self.acceptor.begin_turn();
            if let Some(metrics) = self.metrics.as_mut() {
                metrics.begin_turn();
            }
            // Light connections first, owed then new: an interactive client never waits for
            // a crowd's reads. Heavy connections' new events are kept for after the owed.
            self.serve_owed(Schedule::next_light, Schedule::charge_fresh, now);
            self.heavy_events.clear();
            for event in events.iter() {
                self.dispatch(event, now);
            }
            self.serve_owed(Schedule::next_heavy, Schedule::charge_fresh, now);
            let heavy_events = std::mem::take(&mut self.heavy_events);
            for &(key, readiness) in &heavy_events {
                self.serve_event(key, readiness, now);
            }
            self.heavy_events = heavy_events;
            self.serve_owed(Schedule::next_backlog, Schedule::charge_backlog, now);
            self.serve_owed_scrapers(now);
            let stopped = match self.shutdown.forced() {
                Some(stopped) => Some(stopped),
                None => self.before_sleep(now),
            };
            self.turns.record(now.elapsed());
            if let Some(stopped) = stopped {
                if !matches!(stopped, Stopped::Drained) {
                    self.connections.abandon_all();
                }
                log::info!("{}", self.snapshot().summary());
                return Ok(stopped);
            }
        }
    }

    fn dispatch(&mut self, event: &mio::event::Event, now: Instant) {
        match event.token() {
            LISTENER | UNIX_LISTENER => self.accept(now),
            WAKER => {}
            SIGNALS => {
                if self.shutdown.take_signals() {
                    self.reload_tls();
                }
            }
            UDP => self.serve_datagrams(now),
            METRICS => {
                if let Some(metrics) = self.metrics.as_mut() {
                    metrics.accept(self.poll.registry(), now);
                }
            }
            token if MetricsEndpoint::owns(token) => self.serve_scraper(token, now),
            Token(key) => {
                // Errors and hang-ups surface through the read that follows.
                let readiness = Readiness {
                    readable: event.is_readable() || event.is_read_closed() || event.is_error(),
                    until_would_block: event.is_read_closed() || event.is_error(),
                    writable: event.is_writable() || event.is_write_closed(),
                };
                if self.schedule.is_heavy(key) {
                    self.heavy_events.push((key, readiness));
                } else {
                    self.serve_event(key, readiness, now);
                }
            }
        }
    }

    /// Serves the connections one queue of the schedule owes a service, while its share of
    /// the turn lasts, charging each to it.
    fn serve_owed(
        &mut self,
        next: fn(&mut Schedule) -> Option<usize>,
        charge: fn(&mut Schedule, usize, usize),
        now: Instant,
    ) {
        while let Some(key) = next(&mut self.schedule) {
            let moved = self.serve(key, Readiness::OWED, now);
            charge(&mut self.schedule, key, moved);
            self.schedule.check_turn_time(moved, now);
        }
    }

    /// Serves a connection's readiness event now, unless the schedule says it waits.
    fn serve_event(&mut self, key: usize, readiness: Readiness, now: Instant) {
        if self.schedule.on_event(key) {
            let moved = self.serve(key, readiness, now);
            self.schedule.charge_fresh(key, moved);
            self.schedule.check_turn_time(moved, now);
        }
    }

    /// Echoes the datagrams waiting, within a share of the turn. A failure of the socket
    /// itself ends the datagram echo, never the loop.
    fn serve_datagrams(&mut self, now: Instant) {
        let Some(udp) = self.udp.as_mut() else {
            return;
        };
        if let Err(e) = udp.serve_turn(now) {
            log::error!("UDP socket failed: {e}; no longer echoing datagrams");
            udp.close(self.poll.registry());
        }
    }

    /// The work of a turn that no event announces, as Redis's `beforesleep`: room for
    /// connections waiting on the buffer budget (they join the backlog), accepting after a
    /// pause or a spent share, idle expiry, and the shutdown. Returns how the loop ends,
    /// once it does.
    fn before_sleep(&mut self, now: Instant) -> Option<Stopped> {
        self.connections
            .look_again_for_room(self.poll.registry(), now);
        for key in self.connections.resume_budget_waiters() {
            self.schedule.requeue(key);
        }
        self.acceptor.resume_if_due(now);
        if self.acceptor.has_work() {
            self.accept(now);
        }
        if self.udp.as_ref().is_some_and(UdpEcho::has_work) {
            self.serve_datagrams(now);
        }
        self.connections.expire_idle(self.poll.registry(), now);
        self.connections.return_freed_memory(now);
        if self.connections.len() == 0 {
            self.schedule.shrink_when_idle(SCHEDULE_KEYS_KEPT);
        }
        self.connections.expire_openings(self.poll.registry(), now);
        if let Some(metrics) = self.metrics.as_mut() {
            metrics.expire(self.poll.registry(), now);
        }
        if self.shutdown.should_begin() {
            self.begin_shutdown(now);
        }
        self.shutdown.before_sleep(now, self.connections.len());
        self.shutdown.finished(now, self.connections.len())
    }

    /// How long the next poll may wait: until the nearest timer, or not at all when work
    /// is left over from the last turn.
    fn poll_timeout(&self, now: Instant) -> Option<Duration> {
        let scrapers_owed = self.metrics.as_ref().is_some_and(MetricsEndpoint::has_work);
        let datagrams_owed = self.udp.as_ref().is_some_and(UdpEcho::has_work);
        if self.schedule.has_work() || self.acceptor.has_work() || scrapers_owed || datagrams_owed {
            return Some(Duration::ZERO);
        }
        [
            self.acceptor.paused_until(),
            self.connections.next_idle_deadline(),
            self.connections.next_opening_deadline(),
            self.connections.next_room_look(now),
            self.connections.next_memory_return(),
            self.metrics
                .as_ref()
                .and_then(MetricsEndpoint::next_deadline),
            self.shutdown.next_deadline(),
        ]
        .into_iter()
        .flatten()
        .min()
        .map(|deadline| deadline.saturating_duration_since(now))
    }

    /// Takes in what the listener has, within the acceptor's rules. At the connection limit
    /// a newcomer takes the place of a connection idle for `--evict-idle-after`, if any.
    fn accept(&mut self, now: Instant) {
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
    fn admit(&mut self, socket: Stream, peer: Peer, now: Instant) {
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

    /// Handles readiness on one connection within its share of the turn, queues it for
    /// another turn if work is left, and drops it if it finished or failed. A panic anywhere
    /// in here ends this connection alone. Returns the work it did, as the schedule counts it:
    /// bytes read and written, and telnet commands decoded.
    fn serve(&mut self, key: usize, readiness: Readiness, now: Instant) -> usize {
        let Some(TurnParts {
            connection,
            rules,
            addresses,
            held,
            others_buffered,
            buffer_budget,
            budget_epoch,
        }) = self.connections.turn_parts(key)
        else {
            return 0; // A stale event for a connection closed earlier in this turn.
        };
        let work_before = schedule::work_done(&self.traffic);
        let unix = connection.peer().transport() == Transport::Unix;
        let tls = connection.is_tls();
        let bytes_before = (self.traffic.bytes_received, self.traffic.bytes_sent);
        let mut turn = Turn {
            read_buffer: &mut self.read_buffer,
            scratch: &mut self.scratch,
            gathered: &mut self.gathered,
            tls_plaintext: &mut self.tls_plaintext,
            tls_records: &mut self.tls_records,
            handler: &mut *self.handler,
            max_line_bytes: self.config.max_line_bytes,
            output_high_water: self.config.output_high_water,
            output_low_water: self.config.output_low_water,
            traffic: &mut self.traffic,
            others_buffered,
            buffer_budget,
            budget_epoch,
            rules,
            addresses,
        };
        let result = catch_unwind(AssertUnwindSafe(|| {
            serve_connection(connection, &mut turn, readiness)
        }));
        let outcome = match result {
            Ok(outcome) => outcome,
            Err(payload) => Err(Fault::Panicked {
                in_handler: false,
                message: panic_message(payload.as_ref()),
            }),
        };
        let finished = connection.is_finished();
        let ended = if connection.was_drained() {
            CloseReason::Drained
        } else {
            CloseReason::ClientClosed
        };
        let over_budget = matches!(outcome, Ok(ReadOutcome::OverBudget));
        let work_left =
            matches!(outcome, Ok(ReadOutcome::ShareSpent)) || connection.has_output_to_flush();
        // Waiting with no echoes unsent: only room in the budget lets it go on.
        let room_wanted = over_budget && connection.waits_for_room();
        // Accounted while the connection is still in the table: closing it settles the rest.
        let after = connection.buffered_capacity();
        self.connections.account(key, held, after, over_budget);
        let registry = self.poll.registry();
        match outcome {
            Err(fault) => self.connections.close(registry, key, Ending::Fault(fault)),
            Ok(_) if finished => self.connections.close(registry, key, Ending::Quiet(ended)),
            Ok(_) => {
                if work_left {
                    self.schedule.requeue(key);
                }
                self.connections.touch(key, now);
            }
        }
        self.connections
            .enforce_budget(registry, key, room_wanted, now);
        if unix {
            // Counted apart by the service, not by each read: TCP's path pays nothing.
            self.traffic.unix_bytes_received += self.traffic.bytes_received - bytes_before.0;
            self.traffic.unix_bytes_sent += self.traffic.bytes_sent - bytes_before.1;
        }
        if tls {
            self.traffic.tls_bytes_received += self.traffic.bytes_received - bytes_before.0;
            self.traffic.tls_bytes_sent += self.traffic.bytes_sent - bytes_before.1;
        }
        (schedule::work_done(&self.traffic) - work_before) as usize
    }

    /// Answers a metrics scraper from a snapshot taken when its request is complete.
    fn serve_scraper(&mut self, token: Token, now: Instant) {
        self.with_scrapers(|metrics, registry, snapshot| {
            metrics.serve(registry, token, now, snapshot);
        });
    }

    /// Serves the scrapers whose share of an earlier turn ran out.
    fn serve_owed_scrapers(&mut self, now: Instant) {
        if self.metrics.as_ref().is_some_and(MetricsEndpoint::has_work) {
            self.with_scrapers(|metrics, registry, snapshot| {
                metrics.serve_owed(registry, now, snapshot);
            });
        }
    }

    /// Lends the metrics endpoint what serving a scraper needs: the registry, and a way to
    /// take a snapshot of the counters when a request is complete.
    fn with_scrapers(
        &mut self,
        serve: impl FnOnce(&mut MetricsEndpoint, &Registry, &mut dyn FnMut() -> Snapshot),
    ) {
        let Some(metrics) = self.metrics.as_mut() else {
            return;
        };
        let (acceptor, connections) = (&self.acceptor, &self.connections);
        let (traffic, turns, started) = (self.traffic, self.turns, self.started);
        let udp = self.udp.as_ref().map(UdpEcho::counts);
        let tls = self.tls_reloads;
        let mut snapshot =
            || take_snapshot(acceptor, connections, traffic, turns, started, udp, tls);
        serve(metrics, self.poll.registry(), &mut snapshot);
    }

    fn snapshot(&self) -> Snapshot {
        take_snapshot(
            &self.acceptor,
            &self.connections,
            self.traffic,
            self.turns,
            self.started,
            self.udp.as_ref().map(UdpEcho::counts),
            self.tls_reloads,
        )
    }

    /// SIGHUP: reads the TLS files again. New connections get what they say; established
    /// ones keep what they began with; a file that fails changes nothing.
    fn reload_tls(&mut self) {
        let (Some(files), Some(counts)) = (&self.config.tls, self.tls_reloads.as_mut()) else {
            log::info!("Received SIGHUP; nothing to reload without --tls-cert");
            return;
        };
        match certificates::load(files) {
            Ok(config) => {
                self.connections.set_tls(config);
                counts.reloads += 1;
                log::info!(
                    "Received SIGHUP; reloaded {} and {}{}: new connections use them",
                    files.cert.display(),
                    files.key.display(),
                    files
                        .client_ca
                        .as_ref()
                        .map(|ca| format!(" and {}", ca.display()))
                        .unwrap_or_default()
                );
            }
            Err(e) => {
                counts.failed_reloads += 1;
                log::error!("Received SIGHUP; TLS files not reloaded, the old ones stay: {e}");
            }
        }
    }

    /// Stops accepting and starts draining every connection.
    fn begin_shutdown(&mut self, now: Instant) {
        if self.acceptor.owns_queue() {
            // The kernel resets whatever is still queued when the listener closes, though
            // it acknowledged those handshakes: take them in, and they drain like the rest.
            // A queue that a service manager holds is left for the next instance.
            loop {
                self.acceptor.begin_turn();
                self.accept(now);
                if !self.acceptor.has_work() {
                    break;
                }
            }
        }
        self.acceptor.close(self.poll.registry());
        // Datagrams have nothing to drain: the socket closes with the listener.
        if let Some(udp) = self.udp.as_mut() {
            udp.close(self.poll.registry());
        }
        self.shutdown.begin(now, self.connections.len());
        for key in self.connections.keys() {
            if let Some(connection) = self.connections.get_mut(key) {
                connection.begin_drain();
            }
            // Read what already arrived (it was acknowledged) and half-close if all is out;
            // what a share of this turn leaves goes on through the backlog.
            self.serve(key, Readiness::OWED, now);
        }
    }
}

/// What a readiness event (or the reactor itself) says about a connection's socket.
#[derive(Debug, Clone, Copy)]
struct Readiness {
    readable: bool,
    /// Read until `WouldBlock`: a short read proves nothing, because the event already
    /// reported the client's FIN or an error, or edges may have gone unanswered.
    until_would_block: bool,
    writable: bool,
}

impl Readiness {
    /// A service owed without an event in hand (queued, resumed, or draining): events that
    /// came meanwhile were folded into it, and edges may have gone unanswered, so it reads
    /// until `WouldBlock` (within its share) and writes.
    const OWED: Readiness = Readiness {
        readable: true,
        until_would_block: true,
        writable: true,
    };
}

fn serve_connection(
    connection: &mut Connection,
    turn: &mut Turn<'_>,
    readiness: Readiness,
) -> Result<ReadOutcome, Fault> {
    let mut read = readiness.readable;
    let mut until_would_block = readiness.until_would_block;
    if readiness.writable && connection.pending_output() > 0 && connection.flush(turn)? {
        // Reading resumes after a pause, during which readable edges went unanswered.
        read = true;
        until_would_block = true;
    }
    let outcome = if read {
        connection.read(turn, until_would_block)?
    } else {
        ReadOutcome::Stopped
    };
    connection.half_close_when_done(turn)?;
    Ok(outcome)
}

fn take_snapshot(
    acceptor: &Acceptor,
    connections: &ConnectionTable,
    traffic: Traffic,
    turns: TurnTimes,
    start_time: std::time::SystemTime,
    udp: Option<UdpCounts>,
    tls: Option<TlsCounts>,
) -> Snapshot {
    Snapshot {
        accepts: acceptor.counts(),
        open: connections.open_by_transport(),
        closed: connections.closed(),
        traffic,
        buffers: connections.buffer_gauges(),
        turns,
        start_time,
        udp,
        tls: tls.map(|counts| TlsCounts {
            failures: connections.tls_failures(),
            ..counts
        }),
    }
}
