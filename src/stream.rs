//! A client's socket and who is at the other end of it, over TCP or a Unix stream socket
//! (`--unix`). The connection, the table and the acceptor handle both alike through these
//! two types; only what differs (addresses, TCP options) asks which one it is. The load
//! generator (`examples/kv_load`) connects through [`Stream`] too; nothing else outside
//! the crate uses this module.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr};
use std::path::Path;
use std::sync::Arc;

use mio::event::Source;
use mio::net::{TcpStream, UnixStream};
use mio::{Interest, Registry, Token};

/// A connected stream socket.
#[derive(Debug)]
pub enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    pub fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        match self {
            Stream::Tcp(socket) => socket.shutdown(how),
            Stream::Unix(socket) => socket.shutdown(how),
        }
    }

    /// The pending error of a socket whose connection attempt may have failed.
    pub fn take_error(&self) -> io::Result<Option<io::Error>> {
        match self {
            Stream::Tcp(socket) => socket.take_error(),
            Stream::Unix(socket) => socket.take_error(),
        }
    }

    /// Whether a connection attempt has completed: the peer's address is known.
    pub fn is_connected(&self) -> io::Result<bool> {
        let connected = match self {
            Stream::Tcp(socket) => socket.peer_addr().map(|_| ()),
            Stream::Unix(socket) => socket.peer_addr().map(|_| ()),
        };
        match connected {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The TCP socket, if this is one.
    pub fn as_tcp(&self) -> Option<&TcpStream> {
        match self {
            Stream::Tcp(socket) => Some(socket),
            Stream::Unix(_) => None,
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(socket) => socket.read(buffer),
            Stream::Unix(socket) => socket.read(buffer),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(socket) => socket.write(bytes),
            Stream::Unix(socket) => socket.write(bytes),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Source for Stream {
    fn register(
        &mut self,
        registry: &Registry,
        token: Token,
        interest: Interest,
    ) -> io::Result<()> {
        match self {
            Stream::Tcp(socket) => socket.register(registry, token, interest),
            Stream::Unix(socket) => socket.register(registry, token, interest),
        }
    }

    fn reregister(
        &mut self,
        registry: &Registry,
        token: Token,
        interest: Interest,
    ) -> io::Result<()> {
        match self {
            Stream::Tcp(socket) => socket.reregister(registry, token, interest),
            Stream::Unix(socket) => socket.reregister(registry, token, interest),
        }
    }

    fn deregister(&mut self, registry: &Registry) -> io::Result<()> {
        match self {
            Stream::Tcp(socket) => socket.deregister(registry),
            Stream::Unix(socket) => socket.deregister(registry),
        }
    }
}

/// Who a connection's client is: an IP address and port (its own, or the one its PROXY
/// header named), or a process on this host connected to the Unix socket at `path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Peer {
    Ip(SocketAddr),
    Unix {
        path: Arc<Path>,
        /// The client's process, as the kernel tells it (`SO_PEERCRED`).
        pid: Option<u32>,
    },
}

impl Peer {
    /// The client's address, which access lists and per-address limits are about; a Unix
    /// socket's clients have none.
    pub fn ip(&self) -> Option<IpAddr> {
        match self {
            Peer::Ip(addr) => Some(addr.ip()),
            Peer::Unix { .. } => None,
        }
    }

    /// Which transport the client came over, as the metrics label it.
    pub fn transport(&self) -> Transport {
        match self {
            Peer::Ip(_) => Transport::Tcp,
            Peer::Unix { .. } => Transport::Unix,
        }
    }
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Peer::Ip(addr) => addr.fmt(f),
            Peer::Unix {
                path,
                pid: Some(pid),
            } => write!(f, "{} (pid {pid})", path.display()),
            Peer::Unix { path, pid: None } => path.display().fmt(f),
        }
    }
}

/// The stream transports, as the metrics label connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transport {
    Tcp,
    Unix,
}

impl Transport {
    pub const ALL: [Transport; 2] = [Transport::Tcp, Transport::Unix];

    pub fn label(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Unix => "unix",
        }
    }
}
