//! The connection table: every connection being served, in a `Slab` whose keys are the mio
//! tokens, with the idle list that orders them by activity and the queue of connections to
//! read again without waiting for an event.
//!
//! It exists so that letting a connection in and dropping it are each one function: a
//! connection enters registered for both directions and linked into the idle list, and
//! leaves deregistered, unlinked and closed, with one log line naming the peer. Dropping a
//! slab entry is how a faulty connection is isolated.

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Interest, Registry, Token};
use slab::Slab;

use crate::connection::{Connection, Fault};
use crate::idle::IdleList;
use crate::metrics::{CloseReason, ClosedCounts};

/// Slab slots kept once every connection has closed; a larger slab is released.
const SLAB_CAPACITY_KEPT: usize = 1024;

pub(crate) struct ConnectionTable {
    slab: Slab<Connection>,
    /// Present when connections time out after a quiet spell.
    idle: Option<IdleList>,
    /// Connections whose read budget ran out while data may still be waiting.
    read_again: Vec<usize>,
    closed: ClosedCounts,
}

impl ConnectionTable {
    pub fn new(idle_timeout: Option<Duration>) -> Self {
        ConnectionTable {
            slab: Slab::new(),
            idle: idle_timeout.map(IdleList::new),
            read_again: Vec::new(),
            closed: ClosedCounts::default(),
        }
    }

    pub fn closed(&self) -> ClosedCounts {
        self.closed
    }

    /// Connections whose reading is paused by backpressure, and the bytes all connections
    /// hold in their buffers: walked at scrape time, so requests pay nothing for them.
    pub fn buffer_gauges(&self) -> (usize, usize) {
        self.slab.iter().fold((0, 0), |(paused, bytes), (_, c)| {
            (
                paused + usize::from(c.is_read_paused()),
                bytes + c.buffered_bytes(),
            )
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
        mut socket: TcpStream,
        peer: SocketAddr,
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
        entry.insert(Connection::new(socket, peer, now));
        if let Some(idle) = self.idle.as_mut() {
            idle.push_back(&mut self.slab, key, now);
        }
        log::debug!("{peer}: connected");
        Some(key)
    }

    /// Notes traffic on a connection.
    pub fn touch(&mut self, key: usize, now: Instant) {
        if let Some(idle) = self.idle.as_mut() {
            idle.touch(&mut self.slab, key, now);
        }
    }

    /// Remembers to read this connection again before the next wait.
    pub fn queue_read(&mut self, key: usize) {
        let connection = &mut self.slab[key];
        if !connection.read_queued {
            connection.read_queued = true;
            self.read_again.push(key);
        }
    }

    /// The connections queued to be read again, emptying the queue; hand the list back with
    /// [`ConnectionTable::reuse_read_queue`] to keep its allocation.
    pub fn take_read_queue(&mut self) -> Vec<usize> {
        let keys = std::mem::take(&mut self.read_again);
        for &key in &keys {
            if let Some(connection) = self.slab.get_mut(key) {
                connection.read_queued = false;
            }
        }
        keys
    }

    pub fn reuse_read_queue(&mut self, mut keys: Vec<usize>) {
        if self.read_again.is_empty() {
            keys.clear();
            self.read_again = keys;
        }
    }

    pub fn has_reads_queued(&self) -> bool {
        !self.read_again.is_empty()
    }

    /// When the least recently active connection times out, if connections time out.
    pub fn next_idle_deadline(&self) -> Option<Instant> {
        self.idle.as_ref()?.next_deadline(&self.slab)
    }

    /// Closes every connection that has been quiet for the idle timeout at `now`.
    pub fn expire_idle(&mut self, registry: &Registry, now: Instant) {
        let Some(timeout) = self.idle.as_ref().map(IdleList::timeout) else {
            return;
        };
        while let Some(key) = self
            .idle
            .as_ref()
            .and_then(|idle| idle.expired(&self.slab, now))
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
        self.closed.add(ending.reason(), 1);
        // Logged while the socket is still open: whoever sees the close can find the line.
        match ending {
            Ending::Quiet(_) => log::debug!("{}: connection closed", connection.peer()),
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
            Ending::Fault(Fault::Io(_)) => CloseReason::Error,
            Ending::Fault(Fault::Panicked {
                in_handler: true, ..
            }) => CloseReason::HandlerPanic,
            Ending::Fault(Fault::Panicked { .. }) => CloseReason::ServerPanic,
        }
    }
}

fn log_fault(peer: SocketAddr, fault: Fault) {
    match fault {
        Fault::Io(e) if is_ordinary_disconnect(&e) => {
            log::debug!("{peer}: connection closed by the client: {e}")
        }
        Fault::Io(e) => log::warn!("{peer}: connection failed: {e}"),
        Fault::Panicked {
            in_handler,
            message,
        } => {
            let place = if in_handler {
                "the line handler"
            } else {
                "serving the connection"
            };
            log::error!("{peer}: panic in {place} ({message}); connection closed")
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
