//! The reactor: one mio `Poll` that owns the listening socket and a `Slab` of connections.
//!
//! This is the only module that knows about `Poll`. It plays the parts that supervision plays
//! in the Elixir original: the acceptor that must never die (accept errors pause accepting
//! instead of ending the loop), the temporary per-client tasks (a faulty connection is
//! isolated by dropping its slab entry), and the application shutdown (stop accepting, drain,
//! exit). It also owns what every connection shares because the loop is single-threaded: the
//! read buffer, the handler and its scratch buffer, the idle list and the timers.

use std::io;
use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token, Waker};
use slab::Slab;

use crate::config::Config;
use crate::connection::{panic_message, Connection, Fault, ReadOutcome, Turn};
use crate::handler::{Echo, LineHandler};
use crate::idle::IdleList;

const LISTENER: Token = Token(usize::MAX - 1);
const WAKER: Token = Token(usize::MAX - 2);
const SIGNALS: Token = Token(usize::MAX - 3);

/// Accepts per turn before the reactor serves its connections again, so that a flood of
/// connection attempts cannot starve the clients already connected.
const ACCEPTS_PER_TURN: usize = 256;
/// How long accepting pauses after the process or system ran out of a resource.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);
/// Slab slots kept once every connection has closed; a larger slab is released.
const SLAB_CAPACITY_KEPT: usize = 1024;
/// Repeated warnings of one kind are logged at most this often.
const WARNING_INTERVAL: Duration = Duration::from_secs(1);
/// The listen backlog asked for; the kernel caps it at `net.core.somaxconn`. The Elixir
/// original's backlog of 5 made one connect in seven wait for a SYN retransmit.
const LISTEN_BACKLOG: libc::c_int = 4096;

/// How [`Server::run`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// Shutdown was asked for and every connection drained and closed.
    Drained,
    /// Shutdown was asked for and the shutdown timeout closed this many connections early.
    TimedOut { abandoned: usize },
    /// A second shutdown signal arrived during the drain: stop at once.
    Forced { signal: i32 },
}

/// Asks a running [`Server`] to shut down gracefully, from any thread.
#[derive(Clone)]
pub struct ShutdownHandle {
    requested: Arc<AtomicBool>,
    waker: Arc<Waker>,
}

impl ShutdownHandle {
    /// Stops accepting, lets every connection drain, then makes [`Server::run`] return.
    pub fn shutdown(&self) -> io::Result<()> {
        self.requested.store(true, Ordering::SeqCst);
        self.waker.wake()
    }
}

/// A line server bound to its address, ready to [`run`](Server::run).
pub struct Server {
    poll: Poll,
    /// `None` once shutdown has begun: the listener is closed first.
    listener: Option<TcpListener>,
    local_addr: SocketAddr,
    config: Config,
    max_connections: usize,
    connections: Slab<Connection>,
    handler: Box<dyn LineHandler>,
    /// The one read buffer of the whole reactor; connections copy out only what they keep.
    read_buffer: Box<[u8]>,
    /// Where handlers write answers that are not their input; kept to avoid reallocating.
    scratch: Vec<u8>,
    idle: Option<IdleList>,
    /// Connections whose read budget ran out while data may still be waiting.
    read_again: Vec<usize>,
    /// Accepting is paused until then, after running out of descriptors or memory.
    accept_paused_until: Option<Instant>,
    /// The listener may still have connections waiting (the accept budget ran out).
    accept_again: bool,
    shutdown_requested: Arc<AtomicBool>,
    waker: Arc<Waker>,
    signals: Option<signal_hook_mio::v1_0::Signals>,
    /// Set once shutdown has begun: when the drain gives up.
    drain_deadline: Option<Instant>,
    forced_by: Option<i32>,
    resource_warning: RateLimit,
    limit_warning: RateLimit,
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
        let mut listener = TcpListener::bind(config.listen)?;
        deepen_backlog(&listener)?;
        let local_addr = listener.local_addr()?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        Ok(Server {
            poll,
            listener: Some(listener),
            local_addr,
            max_connections: config.effective_max_connections(),
            connections: Slab::new(),
            handler,
            read_buffer: vec![0; config.read_buffer_bytes].into_boxed_slice(),
            scratch: Vec::new(),
            idle: config.idle_timeout.map(IdleList::new),
            read_again: Vec::new(),
            accept_paused_until: None,
            accept_again: false,
            shutdown_requested: Arc::new(AtomicBool::new(false)),
            waker,
            signals: None,
            drain_deadline: None,
            forced_by: None,
            resource_warning: RateLimit::default(),
            limit_warning: RateLimit::default(),
            config,
        })
    }

    /// The address actually bound, with the real port when port 0 was asked for.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The connection limit in force.
    pub fn max_connections(&self) -> usize {
        self.max_connections
    }

    /// A handle that shuts the server down gracefully from another thread.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle {
            requested: Arc::clone(&self.shutdown_requested),
            waker: Arc::clone(&self.waker),
        }
    }

    /// Makes SIGINT and SIGTERM shut the server down gracefully; a second one during the
    /// drain stops it at once. Meant for the binary: it takes over those signals process-wide.
    pub fn handle_signals(&mut self) -> io::Result<()> {
        let mut signals = signal_hook_mio::v1_0::Signals::new([
            signal_hook::consts::SIGINT,
            signal_hook::consts::SIGTERM,
        ])?;
        self.poll
            .registry()
            .register(&mut signals, SIGNALS, Interest::READABLE)?;
        self.signals = Some(signals);
        Ok(())
    }

    /// Serves clients until shutdown. Only a failure of the poll instance itself ends it with
    /// an error; accept errors and client faults never do.
    pub fn run(mut self) -> io::Result<Stopped> {
        log::info!("Accepting connections on port {}", self.local_addr.port());
        let mut events = Events::with_capacity(1024);
        loop {
            let timeout = self.poll_timeout(Instant::now());
            match self.poll.poll(&mut events, timeout) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            let now = Instant::now();
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept(now),
                    WAKER => {}
                    SIGNALS => self.take_signals(),
                    Token(key) => {
                        // Errors and hang-ups surface through the read that follows.
                        let readiness = Readiness {
                            readable: event.is_readable()
                                || event.is_read_closed()
                                || event.is_error(),
                            until_would_block: event.is_read_closed() || event.is_error(),
                            writable: event.is_writable() || event.is_write_closed(),
                        };
                        self.serve(key, readiness, now);
                    }
                }
            }
            if let Some(signal) = self.forced_by {
                log::warn!(
                    "Second shutdown signal ({}): stopping at once",
                    signal_name(signal)
                );
                return Ok(Stopped::Forced { signal });
            }
            self.read_again_now(now);
            self.resume_accepting(now);
            self.expire_idle(now);
            if self.shutdown_requested.load(Ordering::SeqCst) && self.drain_deadline.is_none() {
                self.begin_shutdown(now);
            }
            if let Some(deadline) = self.drain_deadline {
                if self.connections.is_empty() {
                    log::info!("All connections closed; shut down");
                    return Ok(Stopped::Drained);
                }
                if now >= deadline {
                    let abandoned = self.connections.len();
                    log::warn!(
                        "Shutdown timeout ({:?}) passed; closing {abandoned} connections",
                        self.config.shutdown_timeout
                    );
                    return Ok(Stopped::TimedOut { abandoned });
                }
            }
        }
    }

    /// How long the next poll may wait: until the nearest timer, or not at all when work
    /// is left over from the last turn.
    fn poll_timeout(&self, now: Instant) -> Option<Duration> {
        if !self.read_again.is_empty() || self.accept_again {
            return Some(Duration::ZERO);
        }
        let idle_deadline = self
            .idle
            .as_ref()
            .and_then(|idle| idle.next_deadline(&self.connections));
        [self.accept_paused_until, idle_deadline, self.drain_deadline]
            .into_iter()
            .flatten()
            .min()
            .map(|deadline| deadline.saturating_duration_since(now))
    }

    fn take_signals(&mut self) {
        let Some(signals) = self.signals.as_mut() else {
            return;
        };
        for signal in signals.pending() {
            if self.shutdown_requested.swap(true, Ordering::SeqCst) {
                self.forced_by = Some(signal);
            } else {
                log::info!("Received {}; shutting down gracefully", signal_name(signal));
            }
        }
    }

    /// Accepts until the listener has nothing more, the turn's budget is spent, or a
    /// resource runs out. Nothing here ends the loop.
    fn accept(&mut self, now: Instant) {
        self.accept_again = false;
        if self.accept_paused_until.is_some() {
            return;
        }
        let Some(listener) = self.listener.as_ref() else {
            return;
        };
        for _ in 0..ACCEPTS_PER_TURN {
            let (mut socket, peer) = match listener.accept() {
                Ok(accepted) => accepted,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if is_transient_accept_error(&e) => continue,
                Err(e) => {
                    if let Some(suppressed) = self.resource_warning.allow(now) {
                        log::warn!(
                            "Cannot accept connections: {e}; pausing accepting for {ACCEPT_PAUSE:?} \
                             ({} connections open{})",
                            self.connections.len(),
                            suppressed_note(suppressed)
                        );
                    }
                    self.accept_paused_until = Some(now + ACCEPT_PAUSE);
                    return;
                }
            };
            if self.connections.len() >= self.max_connections {
                if let Some(suppressed) = self.limit_warning.allow(now) {
                    log::warn!(
                        "Connection limit of {} reached; closing the connection from {peer}{}",
                        self.max_connections,
                        suppressed_note(suppressed)
                    );
                }
                continue;
            }
            // Echoes are small and latency-bound: never hold them back for coalescing.
            if let Err(e) = socket.set_nodelay(true) {
                log::debug!("{peer}: cannot set TCP_NODELAY: {e}");
            }
            let entry = self.connections.vacant_entry();
            let key = entry.key();
            // Registered once for both directions: edge-triggered, so no per-request
            // reregistration is ever needed.
            if let Err(e) = self.poll.registry().register(
                &mut socket,
                Token(key),
                Interest::READABLE | Interest::WRITABLE,
            ) {
                log::warn!("{peer}: cannot register the connection: {e}");
                continue;
            }
            entry.insert(Connection::new(socket, peer, now));
            if let Some(idle) = self.idle.as_mut() {
                idle.push_back(&mut self.connections, key, now);
            }
            log::debug!("{peer}: connected");
            if self.drain_deadline.is_some() {
                self.connections[key].begin_drain();
            }
        }
        self.accept_again = true;
    }

    fn resume_accepting(&mut self, now: Instant) {
        if self.accept_paused_until.is_some_and(|until| now >= until) {
            self.accept_paused_until = None;
            // The listener is edge-triggered: connections that queued up during the pause
            // bring no new edge, so look for them now.
            self.accept_again = true;
        }
        if self.accept_again {
            self.accept(now);
        }
    }

    /// Handles readiness on one connection, and drops it if it finished or failed. A panic
    /// anywhere in here ends this connection alone.
    fn serve(&mut self, key: usize, readiness: Readiness, now: Instant) {
        let Some(connection) = self.connections.get_mut(key) else {
            return; // A stale event for a connection closed earlier in this turn.
        };
        let mut turn = Turn {
            read_buffer: &mut self.read_buffer,
            scratch: &mut self.scratch,
            handler: &mut *self.handler,
            max_line_bytes: self.config.max_line_bytes,
            output_high_water: self.config.output_high_water,
            output_low_water: self.config.output_low_water,
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
        match outcome {
            Ok(ReadOutcome::BudgetSpent) => {
                let connection = &mut self.connections[key];
                if !connection.read_queued {
                    connection.read_queued = true;
                    self.read_again.push(key);
                }
            }
            Ok(_) => {}
            Err(fault) => {
                self.close(key, Some(fault));
                return;
            }
        }
        if self.connections[key].is_finished() {
            self.close(key, None);
            return;
        }
        if let Some(idle) = self.idle.as_mut() {
            idle.touch(&mut self.connections, key, now);
        }
    }

    fn read_again_now(&mut self, now: Instant) {
        let mut keys = std::mem::take(&mut self.read_again);
        for key in keys.drain(..) {
            if let Some(connection) = self.connections.get_mut(key) {
                connection.read_queued = false;
                // Budget ran out mid-stream: no edge will say what is still waiting.
                let readiness = Readiness {
                    readable: true,
                    until_would_block: true,
                    writable: false,
                };
                self.serve(key, readiness, now);
            }
        }
        // Nothing was queued while serving these: reuse this list's allocation next turn.
        if self.read_again.is_empty() {
            self.read_again = keys;
        }
    }

    fn expire_idle(&mut self, now: Instant) {
        let Some(idle) = self.idle.as_ref() else {
            return;
        };
        let timeout = idle.timeout();
        while let Some(key) = self
            .idle
            .as_ref()
            .and_then(|idle| idle.expired(&self.connections, now))
        {
            log::debug!(
                "{}: no traffic for {timeout:?}; closing",
                self.connections[key].peer()
            );
            self.close(key, None);
        }
    }

    /// Stops accepting and starts draining every connection.
    fn begin_shutdown(&mut self, now: Instant) {
        if let Some(mut listener) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut listener);
        }
        self.accept_paused_until = None;
        self.accept_again = false;
        self.drain_deadline = Some(now + self.config.shutdown_timeout);
        log::info!(
            "Shutting down: no longer accepting; draining {} connections",
            self.connections.len()
        );
        let keys: Vec<usize> = self.connections.iter().map(|(key, _)| key).collect();
        for key in keys {
            self.connections[key].begin_drain();
            // Read what already arrived (it was acknowledged) and half-close if all is out.
            // Edges of a paused connection went unanswered, so read until WouldBlock.
            let readiness = Readiness {
                readable: true,
                until_would_block: true,
                writable: true,
            };
            self.serve(key, readiness, now);
        }
    }

    /// Drops a connection: deregistered, closed, and forgotten by the idle list.
    fn close(&mut self, key: usize, fault: Option<Fault>) {
        if let Some(idle) = self.idle.as_mut() {
            idle.remove(&mut self.connections, key);
        }
        let mut connection = self.connections.remove(key);
        let peer = connection.peer();
        let _ = self.poll.registry().deregister(connection.socket_mut());
        if self.connections.is_empty() && self.connections.capacity() > SLAB_CAPACITY_KEPT {
            // A burst of clients is over: give its slots back rather than keep them forever.
            self.connections = Slab::new();
            release_freed_memory();
        }
        match fault {
            None => log::debug!("{peer}: connection closed"),
            Some(Fault::Io(e)) if is_ordinary_disconnect(&e) => {
                log::debug!("{peer}: connection closed by the client: {e}")
            }
            Some(Fault::Io(e)) => log::warn!("{peer}: connection failed: {e}"),
            Some(Fault::Panicked {
                in_handler,
                message,
            }) => {
                let place = if in_handler {
                    "the line handler"
                } else {
                    "serving the connection"
                };
                log::error!("{peer}: panic in {place} ({message}); connection closed")
            }
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

fn signal_name(signal: i32) -> String {
    signal_hook::low_level::signal_name(signal)
        .map_or_else(|| format!("signal {signal}"), str::to_owned)
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
