//! Where a connection comes from and whether it is let in: the listening socket (bound here,
//! with `SO_REUSEPORT` if asked, or inherited from a service manager through `LISTEN_FDS`),
//! accepting from it within a per-turn share, `--allow`/`--deny` on the socket's peer, the
//! per-address and connection limits, and the pauses after the process or the system ran
//! out of descriptors or memory, with their rate-limited warnings.
//!
//! This plays the Elixir original's `:permanent` acceptor: nothing here ends the loop. The
//! reactor owns the connections; the acceptor only hands it sockets it may keep.

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

/// Accepts per turn of the loop, so that a storm of connection attempts cannot hold back
/// the clients already connected (Redis: `max-new-connections-per-cycle`, 10). When nothing
/// else is waiting, turns follow each other at once and the queue drains at full speed.
pub(crate) const ACCEPTS_PER_TURN: usize = 16;
/// How long accepting pauses after the process or system ran out of a resource.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);
/// The listen backlog asked for; the kernel caps it at `net.core.somaxconn`. The Elixir
/// original's backlog of 5 made one connect in seven wait for a SYN retransmit.
const LISTEN_BACKLOG: libc::c_int = 4096;

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

/// A file's device and inode: what tells the socket file this server made from another
/// put at the same path since (another server's, or anything else).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileIdentity {
    device: u64,
    inode: u64,
}

impl FileIdentity {
    fn of(path: &Path) -> io::Result<FileIdentity> {
        use std::os::unix::fs::MetadataExt;
        let metadata = std::fs::symlink_metadata(path)?;
        Ok(FileIdentity {
            device: metadata.dev(),
            inode: metadata.ino(),
        })
    }
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

    /// The next connection that may stay, while the listener has one, the turn's budget
    /// lasts and no resource has run out. `open` is the number of connections being served.
    /// Connections over the limit are closed here; nothing here ends the loop.
    pub fn next_connection(
        &mut self,
        now: Instant,
        open: usize,
        from_address: &dyn Fn(IpAddr) -> usize,
    ) -> Option<Arrival> {
        if self.paused_until.is_some() {
            return None;
        }
        let listener = self.listener.as_ref()?;
        loop {
            if self.tcp_drained && self.unix_drained {
                self.more_waiting = false;
                return None;
            }
            if self.share_left == 0 {
                // Connections may still be waiting, and no edge will say so.
                self.more_waiting = true;
                return None;
            }
            self.share_left -= 1;
            let from_unix = self.tcp_drained || (self.unix_next && !self.unix_drained);
            self.unix_next = !from_unix;
            let accepted = match self.unix.as_ref().filter(|_| from_unix) {
                Some(unix) => unix.listener.accept().map(|(socket, _)| {
                    let pid = peer_pid(&socket);
                    let peer = Peer::Unix {
                        path: unix.path.clone(),
                        pid,
                    };
                    (Stream::Unix(socket), peer)
                }),
                None => listener
                    .accept()
                    .map(|(socket, peer)| (Stream::Tcp(socket), Peer::Ip(peer))),
            };
            let (socket, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // That listener is empty for now: the other may not be.
                    if from_unix {
                        self.unix_drained = true;
                    } else {
                        self.tcp_drained = true;
                    }
                    self.share_left += 1;
                    continue;
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
                    self.counts.pauses += 1;
                    self.more_waiting = false;
                    return None;
                }
            };
            self.counts.accepted[peer.transport() as usize] += 1;
            // The access lists, the per-address limit and TCP's options are about IP
            // clients; a Unix socket's are whoever its file's permissions let in.
            if let (Stream::Tcp(tcp), Peer::Ip(addr)) = (&socket, &peer) {
                let addr = *addr;
                if !self.rules.is_open() && !self.rules.admits(addr.ip()) {
                    self.counts.denied += 1;
                    warn_refused(&mut self.access_warning, &addr, "its own address", now);
                    continue; // Dropping the socket closes it, nothing read.
                }
                if let Some(limit) = self.max_per_address {
                    // A balancer's connections are counted under the clients its headers
                    // name.
                    if !self.proxy.expects_header(addr.ip()) && from_address(addr.ip()) >= limit {
                        let (counts, warning) = (&mut self.counts, &mut self.address_warning);
                        report_address_limit(counts, warning, addr, limit, now);
                        continue; // Dropping the socket closes it.
                    }
                }
                // Echoes are small and latency-bound: never hold them back for coalescing.
                if let Err(e) = tcp.set_nodelay(true) {
                    log::debug!("{addr}: cannot set TCP_NODELAY: {e}");
                }
            }

            if open >= self.max_connections {
                return Some(Arrival::Full(socket, peer));
            }
            return Some(Arrival::Admit(socket, peer));
        }
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

fn report_address_limit(
    counts: &mut AcceptCounts,
    warning: &mut RateLimit,
    peer: SocketAddr,
    limit: usize,
    now: Instant,
) {
    counts.over_address_limit += 1;
    if let Some(suppressed) = warning.allow(now) {
        log::warn!(
            "{} already holds {limit} connections (--max-connections-per-ip); closing the new \
             one from {peer}{}",
            peer.ip(),
            suppressed_note(suppressed)
        );
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

/// The client process's id on a Unix socket (`SO_PEERCRED`), if the kernel says.
fn peer_pid(socket: &mio::net::UnixStream) -> Option<u32> {
    use std::os::fd::AsRawFd;
    // SAFETY: ucred is plain data; getsockopt writes at most `len` bytes into it.
    unsafe {
        let mut credentials: libc::ucred = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
        let result = libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut credentials as *mut libc::ucred).cast(),
            &mut len,
        );
        (result == 0 && credentials.pid > 0).then_some(credentials.pid as u32)
    }
}

/// Removes the socket file at `path` if it is still the one this server made: another
/// server may have replaced it since (taking it for stale after this one stopped
/// answering), or anyone may have put another file there, and neither is this server's to
/// remove.
fn remove_socket_file(path: &Path, made: FileIdentity) {
    match FileIdentity::of(path) {
        Ok(found) if found == made => {
            if let Err(e) = std::fs::remove_file(path) {
                log::warn!("Cannot remove the socket file {}: {e}", path.display());
            }
        }
        Ok(_) => log::info!(
            "Leaving {} in place: it is no longer the socket file this server made",
            path.display()
        ),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => log::warn!("Cannot check the socket file {}: {e}", path.display()),
    }
}

/// A Unix stream socket listening at `path`, with file mode `mode` if given (else as the
/// umask makes it). A socket file at `path` that nobody listens on is left from a server
/// that did not stop cleanly: it is replaced. A live one, or anything that is not a socket,
/// is an error naming the path.
pub(crate) fn bind_unix(
    path: &Path,
    mode: Option<u32>,
) -> Result<std::os::unix::net::UnixListener, String> {
    use std::os::unix::fs::FileTypeExt;
    let shown = path.display();
    match std::fs::symlink_metadata(path) {
        Ok(metadata) if metadata.file_type().is_socket() => {
            match std::os::unix::net::UnixStream::connect(path) {
                Ok(_) => {
                    return Err(format!(
                        "cannot listen on {shown}: another process is listening there"
                    ))
                }
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    log::info!("Replacing the stale socket file {shown} (nobody listens on it)");
                    std::fs::remove_file(path)
                        .map_err(|e| format!("cannot remove the stale socket file {shown}: {e}"))?;
                }
                Err(e) => return Err(format!("cannot listen on {shown}: {e}")),
            }
        }
        Ok(metadata) => {
            let what = if metadata.is_dir() {
                "a directory"
            } else if metadata.is_file() {
                "a regular file"
            } else {
                "not a socket"
            };
            return Err(format!(
                "cannot listen on {shown}: it exists and is {what}, not a socket; remove it \
                 or choose another path"
            ));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("cannot listen on {shown}: {e}")),
    }
    match mode {
        None => std::os::unix::net::UnixListener::bind(path)
            .map_err(|e| format!("cannot listen on {shown}: {e}")),
        Some(mode) => bind_unix_with_mode(path, mode),
    }
}

/// Binds `path` with file mode `mode` without the socket ever being reachable under a
/// wider one: `bind` creates the file as the umask makes it, so it is made in a private
/// directory (mode 700, beside `path`), given its mode there, and only then linked in at
/// `path` (which, unlike a rename, never replaces a file that appeared there meanwhile).
/// The umask itself is left alone: it is the whole process's, other threads' files too.
fn bind_unix_with_mode(path: &Path, mode: u32) -> Result<std::os::unix::net::UnixListener, String> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    static MADE: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let shown = path.display();
    let parent = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let made = MADE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let private = parent.join(format!(".kv_server.{}.{made}", std::process::id()));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&private)
        .map_err(|e| {
            format!(
                "cannot listen on {shown}: cannot make {}: {e}",
                private.display()
            )
        })?;
    let staged = private.join("s");
    let result = std::os::unix::net::UnixListener::bind(&staged)
        .map_err(|e| format!("cannot listen on {shown}: {e}"))
        .and_then(|listener| {
            std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(mode))
                .map_err(|e| format!("cannot set the mode of {shown} to {mode:o}: {e}"))?;
            std::fs::hard_link(&staged, path).map_err(|e| match e.kind() {
                io::ErrorKind::AlreadyExists => {
                    format!("cannot listen on {shown}: another process took the path meanwhile")
                }
                _ => format!("cannot listen on {shown}: {e}"),
            })?;
            Ok(listener)
        });
    let _ = std::fs::remove_file(&staged);
    let _ = std::fs::remove_dir(&private);
    result
}

/// Keepalive for `--tcp-keepalive TIME` on `listener`, which the connections it accepts
/// inherit (Linux copies these options to each accepted socket): the first probe after
/// TIME of silence, three more a third of TIME apart (at least a second), and a user
/// time-out at twice TIME, so that a peer that stops acknowledging what was sent is given
/// up on in bounded time too.
fn set_keepalive(listener: &std::net::TcpListener, time: Duration) -> io::Result<()> {
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
fn bind_listener(addr: SocketAddr, reuse_port: bool) -> io::Result<std::net::TcpListener> {
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

/// The sockets a service manager handed over with systemd's socket-activation protocol
/// (`LISTEN_PID`, `LISTEN_FDS`, descriptors from 3, `LISTEN_FDNAMES`), also spoken by
/// `systemd-socket-activate` and `systemfd`: one listening TCP socket, and at most one UDP
/// socket and one listening Unix stream socket beside it, each served as if given by its
/// flag (`--udp`, `--unix`).
#[derive(Debug)]
pub struct ServiceSockets {
    pub tcp: std::net::TcpListener,
    pub udp: Option<std::net::UdpSocket>,
    pub unix: Option<std::os::unix::net::UnixListener>,
}

/// The sockets a service manager passed to this process, sorted by kind; `Ok(None)` when
/// there are none for it (no variables, or `LISTEN_PID` names another process). Anything
/// else than the sockets [`ServiceSockets`] holds is an error that names the descriptor
/// (and its name from `LISTEN_FDNAMES`) and what it is.
pub fn sockets_from_service_manager() -> Result<Option<ServiceSockets>, String> {
    let fds = sd_notify::listen_fds().map_err(|e| {
        let value = |name| std::env::var(name).unwrap_or_default();
        let reason = if e.raw_os_error() == Some(libc::EBADF) {
            "it names descriptors that are not open".to_owned()
        } else {
            e.to_string()
        };
        format!(
            "cannot use the sockets passed by the service manager (LISTEN_PID='{}', \
             LISTEN_FDS='{}'): {reason}",
            value("LISTEN_PID"),
            value("LISTEN_FDS")
        )
    })?;
    let fds: Vec<RawFd> = fds.collect();
    if fds.is_empty() {
        return Ok(None);
    }
    let names: Vec<String> = std::env::var("LISTEN_FDNAMES")
        .map(|names| names.split(':').map(str::to_owned).collect())
        .unwrap_or_default();
    let describe = |index: usize, fd: RawFd| match names.get(index) {
        Some(name) if !name.is_empty() => format!("descriptor {fd} (\"{name}\")"),
        _ => format!("descriptor {fd}"),
    };
    let all = || {
        fds.iter()
            .map(|fd| fd.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let (mut tcp, mut udp, mut unix) = (Vec::new(), Vec::new(), Vec::new());
    for (index, &fd) in fds.iter().enumerate() {
        match passed_socket(fd).map_err(|what| {
            format!(
                "{} from LISTEN_FDS is {what}; kv_server takes a listening TCP socket, and \
                 a UDP socket and a listening Unix stream socket beside it",
                describe(index, fd)
            )
        })? {
            Passed::Tcp(listener) => tcp.push((describe(index, fd), listener)),
            Passed::Udp(socket) => udp.push((describe(index, fd), socket)),
            Passed::Unix(listener) => unix.push((describe(index, fd), listener)),
        }
    }
    for (count, kind) in [
        (tcp.len(), "listening TCP sockets"),
        (udp.len(), "UDP sockets"),
        (unix.len(), "listening Unix stream sockets"),
    ] {
        if count > 1 {
            return Err(format!(
                "LISTEN_FDS passes {} descriptors ({}) with {count} {kind} among them; \
                 kv_server serves one of each kind",
                fds.len(),
                all()
            ));
        }
    }
    let Some((_, tcp)) = tcp.pop() else {
        let passed = udp
            .first()
            .map(|(described, _)| format!("a UDP socket ({described})"))
            .or_else(|| {
                unix.first()
                    .map(|(described, _)| format!("a listening Unix stream socket ({described})"))
            })
            .unwrap_or_default();
        return Err(format!(
            "LISTEN_FDS passes {passed} but no listening TCP socket; kv_server needs one"
        ));
    };
    Ok(Some(ServiceSockets {
        tcp,
        udp: udp.pop().map(|(_, socket)| socket),
        unix: unix.pop().map(|(_, listener)| listener),
    }))
}

/// A socket passed by a service manager, by kind.
enum Passed {
    Tcp(std::net::TcpListener),
    Udp(std::net::UdpSocket),
    Unix(std::os::unix::net::UnixListener),
}

/// Takes descriptor `fd` as one of the sockets kv_server serves, or says what it is.
fn passed_socket(fd: RawFd) -> Result<Passed, String> {
    if !is_socket(fd) {
        return Err(describe_non_socket(fd));
    }
    // SAFETY: LISTEN_FDS hands descriptors from 3 on to this process alone; nothing else
    // in it owns this one, and it is a socket.
    let socket = unsafe { Socket::from_raw_fd(fd) };
    let inspect = |e: io::Error| format!("a socket that cannot be inspected ({e})");
    let domain = socket.domain().map_err(inspect)?;
    let kind = socket.r#type().map_err(inspect)?;
    match (domain, kind) {
        (Domain::IPV4 | Domain::IPV6, Type::DGRAM) => Ok(Passed::Udp(socket.into())),
        (Domain::IPV4 | Domain::IPV6, Type::STREAM) => {
            if socket.is_listener().map_err(inspect)? {
                return Ok(Passed::Tcp(socket.into()));
            }
            Err(match socket.peer_addr().ok().and_then(|a| a.as_socket()) {
                Some(peer) => format!("a TCP socket connected to {peer}"),
                None => "a TCP socket that is not listening".to_owned(),
            })
        }
        (Domain::IPV4 | Domain::IPV6, _) => {
            Err("an IP socket that is neither TCP nor UDP".to_owned())
        }
        (Domain::UNIX, Type::STREAM) => {
            if socket.is_listener().map_err(inspect)? {
                return Ok(Passed::Unix(socket.into()));
            }
            Err("a Unix stream socket that is not listening".to_owned())
        }
        (Domain::UNIX, Type::DGRAM) => Err("a Unix datagram socket".to_owned()),
        (Domain::UNIX, _) => Err("a Unix socket".to_owned()),
        _ => Err("a non-IP socket".to_owned()),
    }
}

fn is_socket(fd: RawFd) -> bool {
    file_type(fd) == Some(libc::S_IFSOCK)
}

/// The `S_IFMT` bits of what `fd` refers to, if it is open.
fn file_type(fd: RawFd) -> Option<libc::mode_t> {
    // SAFETY: fstat only writes into the struct we own; a bad descriptor is an error.
    let mut stat: libc::stat = unsafe { std::mem::zeroed() };
    (unsafe { libc::fstat(fd, &mut stat) } == 0).then_some(stat.st_mode & libc::S_IFMT)
}

fn describe_non_socket(fd: RawFd) -> String {
    match file_type(fd) {
        None => "not open".to_owned(),
        Some(libc::S_IFREG) => "a regular file".to_owned(),
        Some(libc::S_IFDIR) => "a directory".to_owned(),
        Some(libc::S_IFIFO) => "a pipe".to_owned(),
        Some(libc::S_IFCHR) => "a character device".to_owned(),
        Some(libc::S_IFBLK) => "a block device".to_owned(),
        Some(_) => "not a socket".to_owned(),
    }
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
