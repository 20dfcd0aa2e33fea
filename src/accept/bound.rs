//! A listening TCP socket bound here: its options set before `bind` (`SO_REUSEADDR`,
//! `SO_REUSEPORT` when asked), a deep backlog, and TCP keepalive, which accepted sockets
//! inherit.

use super::*;

/// The listen backlog asked for; the kernel caps it at `net.core.somaxconn`. The Elixir
/// original's backlog of 5 made one connect in seven wait for a SYN retransmit.
pub(super) const LISTEN_BACKLOG: libc::c_int = 4096;

/// Keepalive for `--tcp-keepalive TIME` on `listener`, which the connections it accepts
/// inherit (Linux copies these options to each accepted socket): the first probe after
/// TIME of silence, three more a third of TIME apart (at least a second), and a user
/// time-out at twice TIME, so that a peer that stops acknowledging what was sent is given
/// up on in bounded time too.
pub(super) fn set_keepalive(listener: &std::net::TcpListener, time: Duration) -> io::Result<()> {
    let interval = (time / 3).max(Duration::from_secs(1));
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(time)
        .with_interval(interval)
        .with_retries(3);
    let socket = socket2::SockRef::from(listener);
    socket.set_tcp_keepalive(&keepalive)?;
    socket.set_tcp_user_timeout(Some(time * 2))
}

/// A non-blocking listening socket on `addr`, its options set before `bind`.
pub(super) fn bind_listener(
    addr: SocketAddr,
    reuse_port: bool,
) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_cloexec(true)?;
    socket.set_nonblocking(true)?;
    socket.set_reuse_address(true)?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket.into())
}
