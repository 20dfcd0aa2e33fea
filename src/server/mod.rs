//! The reactor: one mio `Poll` that owns the listening socket (through the acceptor) and a
//! `Slab` of connections (through the connection table). This is the only module that knows
//! about `Poll`. A faulty connection is isolated by dropping its entry in the table, as the
//! Elixir original's temporary tasks are. The reactor also owns what every connection
//! shares because the loop is single-threaded: the read buffer, the handler and its scratch
//! buffer.
//!
//! One file per step of the reactor's life: building it from sockets (here), the loop
//! (`turn.rs`: wait, dispatch, before sleep), letting connections in (`admission.rs`),
//! serving a connection's turn (`serving.rs`), the metrics scrapers and the snapshot they
//! read (`scrapers.rs`), and what changes its course from outside: a TLS reload and the
//! start of a shutdown (`lifecycle.rs`). The fair shares of each turn are `schedule.rs`'s.

mod admission;
mod lifecycle;
mod pushes;
mod scrapers;
mod serving;
mod turn;

use serving::Readiness;

use std::io;
use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

use mio::{Events, Poll, Registry, Token};

use crate::accept::{self, Acceptor, Arrival, ServiceSockets};
use crate::certificates;
use crate::config::Config;
use crate::connection::{panic_message, Connection, Fault, ReadOutcome, Turn};
use crate::counters::{CloseReason, TlsCounts, Traffic, TurnTimes};
use crate::handler::{Echo, LineHandler};
use crate::kv::{Client, Kv};
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
    /// With `--kv`: the store, which answers every line in the handler's place.
    kv: Option<Kv>,
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
        if config.kv && config.reuse_port {
            log::warn!(
                "--kv with --reuse-port: each instance keeps its own buckets, and the kernel \
                 spreads connections over the instances, so a client may not find a bucket \
                 it created"
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
        if let Some(tls) = tls_config(&config, acceptor.local_addr())? {
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
            kv: config
                .kv
                .then(|| Kv::new(config.kv_max_bytes, config.max_line_bytes)),
            read_buffer: vec![0; config.read_buffer_bytes].into_boxed_slice(),
            scratch: Vec::new(),
            gathered: Vec::new(),
            tls_plaintext: if config.speaks_tls() {
                vec![0; TLS_PLAINTEXT_BYTES].into_boxed_slice()
            } else {
                Box::default()
            },
            tls_records: Vec::new(),
            traffic: Traffic::default(),
            turns: TurnTimes::default(),
            metrics,
            udp,
            tls_reloads: config.speaks_tls().then(TlsCounts::default),
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
        let reload = self.config.speaks_tls();
        self.shutdown.handle_signals(self.poll.registry(), reload)
    }

    /// Tells `manager` when the server is ready, what it is doing and when it stops, and
    /// keeps its watchdog fed from the event loop.
    pub fn notify_service_manager(&mut self, manager: ServiceManager) {
        self.shutdown.notify_service_manager(manager);
    }
}

/// The TLS configuration new connections start from: from the files, or a certificate made
/// now for the names asked for (by default localhost and the address bound).
fn tls_config(
    config: &Config,
    bound: SocketAddr,
) -> io::Result<Option<std::sync::Arc<rustls::ServerConfig>>> {
    let invalid = |e| io::Error::new(io::ErrorKind::InvalidInput, e);
    if !config.speaks_tls() {
        return Ok(None);
    }
    let shared = certificates::Shared::new(&config.tls_alpn).map_err(invalid)?;
    if let Some(files) = &config.tls {
        return certificates::load(files, &shared)
            .map(Some)
            .map_err(invalid);
    }
    let mut names = config.tls_names.clone();
    if names.is_empty() {
        names.push("localhost".to_owned());
        if bound.ip().is_unspecified() {
            names.extend(["127.0.0.1".to_owned(), "::1".to_owned()]);
        } else {
            names.push(bound.ip().to_string());
        }
    }
    let (tls, fingerprint) = certificates::self_signed(&names, &shared).map_err(invalid)?;
    log::info!(
        "TLS with a self-signed certificate made now for {}; its SHA-256 fingerprint, for \
         clients to pin: {fingerprint}",
        names.join(", ")
    );
    Ok(Some(tls))
}
