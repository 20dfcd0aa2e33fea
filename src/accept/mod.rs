//! Where a connection comes from and whether it is let in: the listening socket (bound here,
//! with `SO_REUSEPORT` if asked, or inherited from a service manager through `LISTEN_FDS`),
//! accepting from it within a per-turn share, `--allow`/`--deny` on the socket's peer, the
//! per-address and connection limits, and the pauses after the process or the system ran
//! out of descriptors or memory, with their rate-limited warnings.
//!
//! This plays the Elixir original's `:permanent` acceptor: nothing here ends the loop. The
//! reactor owns the connections; the acceptor only hands it sockets it may keep.

mod bound;
mod inherited;
mod share;
mod unix;

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{FromRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, UnixListener};
use mio::{Interest, Registry, Token};
use socket2::{Domain, Socket, Type};

use crate::access::{warn_refused, AccessRules, ProxySources};
use crate::config::Config;
use crate::counters::AcceptCounts;
use crate::stream::{Peer, Stream};
use crate::warning::{suppressed_note, RateLimit};

use bound::{bind_listener, set_keepalive};
pub use inherited::{sockets_from_service_manager, ServiceSockets};
pub(crate) use unix::bind_unix;
use unix::{peer_pid, remove_socket_file, FileIdentity};

/// Accepts per turn of the loop, so that a storm of connection attempts cannot hold back
/// the clients already connected (Redis: `max-new-connections-per-cycle`, 10). When nothing
/// else is waiting, turns follow each other at once and the queue drains at full speed.
pub(crate) const ACCEPTS_PER_TURN: usize = 16;
/// How long accepting pauses after the process or system ran out of a resource.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);
/// Where the listening socket came from, which decides what happens to its accept queue
/// when this process stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// Bound by this process: closing it resets whatever waits in its queue, so shutdown
    /// takes those connections in first.
    Bound,
    /// Handed over by a service manager, which keeps it open: its queue waits for the next
    /// instance.
    Inherited,
}

/// A connection just accepted, and whether there is room for it.
pub(crate) enum Arrival {
    Admit(Stream, Peer),
    /// The connection limit is reached: it may take an idle connection's place, or must be
    /// turned away.
    Full(Stream, Peer),
}

/// The Unix stream listener of `--unix PATH`.
struct UnixSide {
    listener: UnixListener,
    path: Arc<Path>,
    /// Bound here: the socket file this server made (its device and inode), removed when
    /// the listener closes if it is still the one at the path. A service manager's is left
    /// to it.
    made: Option<FileIdentity>,
}

/// The listening socket and the rules for letting connections in.
pub(crate) struct Acceptor {
    /// `None` once shutdown has begun: the listener is closed first.
    listener: Option<TcpListener>,
    /// With `--unix`; closed with the TCP listener.
    unix: Option<UnixSide>,
    /// The TCP listener had nothing left this turn.
    tcp_drained: bool,
    /// The Unix listener (or its absence) had nothing left this turn.
    unix_drained: bool,
    /// The listeners take turns, one accept each, so that a storm on one cannot hold the
    /// other's clients back: whether the Unix listener's is next.
    unix_next: bool,
    origin: Origin,
    local_addr: SocketAddr,
    max_connections: usize,
    max_per_address: Option<usize>,
    /// `--allow` and `--deny`, checked on the socket's peer before anything is read.
    rules: AccessRules,
    /// Connections from these sources are counted under the address their PROXY header
    /// names, once it has come: not here, under the balancer's.
    proxy: ProxySources,
    /// Accepting is paused until then, after running out of descriptors or memory.
    paused_until: Option<Instant>,
    /// The listener may still have connections waiting (the accept budget ran out, or a
    /// pause ended): no readiness edge will announce them.
    more_waiting: bool,
    /// Accepts left in this turn of the loop.
    share_left: usize,
    resource_warning: RateLimit,
    limit_warning: RateLimit,
    address_warning: RateLimit,
    access_warning: RateLimit,
    counts: AcceptCounts,
}

impl Acceptor {
    /// Binds the configured address (with `SO_REUSEADDR`, so a restart binds at once, and
    /// `SO_REUSEPORT` when configured) and registers the listener under `token`.
    pub fn bind(config: &Config, registry: &Registry, token: Token) -> io::Result<Acceptor> {
        let addr = config.listen;
        let listener = bind_listener(addr, config.reuse_port)
            .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?;
        Acceptor::new(listener, Origin::Bound, config, registry, token)
    }

    /// Serves a listening socket handed over by the caller, typically by a service manager
    /// (see [`sockets_from_service_manager`]). It is made non-blocking here.
    pub fn inherit(
        listener: std::net::TcpListener,
        config: &Config,
        registry: &Registry,
        token: Token,
    ) -> io::Result<Acceptor> {
        listener.set_nonblocking(true).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot serve the listening socket handed over: {e}"),
            )
        })?;
        Acceptor::new(listener, Origin::Inherited, config, registry, token)
    }

    fn new(
        listener: std::net::TcpListener,
        origin: Origin,
        config: &Config,
        registry: &Registry,
        token: Token,
    ) -> io::Result<Acceptor> {
        if let Some(time) = config.tcp_keepalive {
            // Accepted sockets inherit these from the listener: nothing to do per accept.
            set_keepalive(&listener, time).map_err(|e| {
                io::Error::new(e.kind(), format!("cannot set --tcp-keepalive: {e}"))
            })?;
        }
        let mut listener = TcpListener::from_std(listener);
        let local_addr = listener.local_addr()?;
        registry.register(&mut listener, token, Interest::READABLE)?;
        Ok(Acceptor {
            listener: Some(listener),
            unix: None,
            tcp_drained: false,
            unix_drained: true,
            unix_next: false,
            origin,
            local_addr,
            max_connections: config.effective_max_connections(),
            max_per_address: config.max_connections_per_ip,
            rules: AccessRules::new(config),
            proxy: ProxySources::new(config),
            paused_until: None,
            more_waiting: false,
            share_left: ACCEPTS_PER_TURN,
            resource_warning: RateLimit::default(),
            limit_warning: RateLimit::default(),
            address_warning: RateLimit::default(),
            access_warning: RateLimit::default(),
            counts: AcceptCounts::default(),
        })
    }

    /// Whether connections waiting in the accept queue are this process's to serve before
    /// it stops: true unless a service manager holds the socket for the next instance.
    pub fn owns_queue(&self) -> bool {
        self.origin == Origin::Bound
    }

    /// The address listened on, with the real port when port 0 was asked for.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn max_connections(&self) -> usize {
        self.max_connections
    }

    pub fn counts(&self) -> AcceptCounts {
        self.counts
    }

    /// Starts a turn of the loop: its share of accepts is whole again.
    pub fn begin_turn(&mut self) {
        self.share_left = ACCEPTS_PER_TURN;
        self.tcp_drained = false;
        self.unix_drained = self.unix.is_none();
    }

    /// Also accepts on `listener`, a Unix stream socket at `path`: bound here (its file is
    /// removed when accepting ends) or handed over by a service manager.
    pub fn listen_unix(
        &mut self,
        listener: std::os::unix::net::UnixListener,
        path: PathBuf,
        bound_here: bool,
        registry: &Registry,
        token: Token,
    ) -> io::Result<()> {
        listener.set_nonblocking(true)?;
        let made = if bound_here {
            Some(FileIdentity::of(&path)?)
        } else {
            None
        };
        let mut listener = UnixListener::from_std(listener);
        registry.register(&mut listener, token, Interest::READABLE)?;
        self.unix_drained = false;
        self.unix = Some(UnixSide {
            listener,
            path: path.into(),
            made,
        });
        Ok(())
    }

    /// The path of the Unix socket accepted on, with `--unix`.
    pub fn unix_path(&self) -> Option<&Path> {
        self.unix.as_ref().map(|unix| &*unix.path)
    }

    /// There is accepting left to do without waiting for an event.
    pub fn has_work(&self) -> bool {
        self.more_waiting
    }

    /// When a pause ends, if accepting is paused.
    pub fn paused_until(&self) -> Option<Instant> {
        self.paused_until
    }

    /// Closes a connection that found the table full with no idle connection to replace.
    pub fn turn_away(&mut self, peer: &Peer, now: Instant) {
        self.counts.over_limit += 1;
        if let Some(suppressed) = self.limit_warning.allow(now) {
            log::warn!(
                "Connection limit of {} reached; closing the connection from {peer}{}",
                self.max_connections,
                suppressed_note(suppressed)
            );
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

    /// Stops accepting for good: the listeners are deregistered and closed, and a Unix
    /// socket file bound here is removed.
    pub fn close(&mut self, registry: &Registry) {
        if let Some(mut listener) = self.listener.take() {
            let _ = registry.deregister(&mut listener);
        }
        if let Some(mut unix) = self.unix.take() {
            let _ = registry.deregister(&mut unix.listener);
            if let Some(made) = unix.made {
                remove_socket_file(&unix.path, made);
            }
        }
        self.paused_until = None;
        self.more_waiting = false;
    }
}

impl Drop for Acceptor {
    /// A server that ends without a shutdown (an error, or never run) leaves no socket
    /// file behind either.
    fn drop(&mut self) {
        if let Some(UnixSide {
            path,
            made: Some(made),
            ..
        }) = self.unix.take()
        {
            remove_socket_file(&path, made);
        }
    }
}
