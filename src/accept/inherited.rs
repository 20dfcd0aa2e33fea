//! Sockets inherited from a service manager: systemd's socket-activation protocol
//! (`LISTEN_PID`, `LISTEN_FDS`, descriptors from 3, `LISTEN_FDNAMES`), also spoken by
//! `systemd-socket-activate` and `systemfd`, sorted by kind, and anything else named in a
//! clear error.

use super::*;

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
pub(super) enum Passed {
    Tcp(std::net::TcpListener),
    Udp(std::net::UdpSocket),
    Unix(std::os::unix::net::UnixListener),
}

/// Takes descriptor `fd` as one of the sockets kv_server serves, or says what it is.
pub(super) fn passed_socket(fd: RawFd) -> Result<Passed, String> {
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

pub(super) fn is_socket(fd: RawFd) -> bool {
    file_type(fd) == Some(libc::S_IFSOCK)
}

/// The `S_IFMT` bits of what `fd` refers to, if it is open.
pub(super) fn file_type(fd: RawFd) -> Option<libc::mode_t> {
    // SAFETY: fstat only writes into the struct we own; a bad descriptor is an error.
    let mut stat: libc::stat = unsafe { std::mem::zeroed() };
    (unsafe { libc::fstat(fd, &mut stat) } == 0).then_some(stat.st_mode & libc::S_IFMT)
}

pub(super) fn describe_non_socket(fd: RawFd) -> String {
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
