//! Datagram echo (RFC 862) with `--udp`: each datagram goes back to its sender whole, from
//! the same loop as the TCP connections and within a share of each turn like them.
//!
//! An echo that answers anyone is a reflector: a datagram with a forged source makes the
//! server send to the forged address, and if that address is another echo (or this one),
//! the two answer each other. So loops are ended ([`loops`]: no answer to the well-known
//! ports or to this server's own port, and the same bytes from one sender answered a
//! bounded number of times in a row); `--allow`/`--deny` apply to each datagram's source;
//! and answers are rated ([`rates`]), per source address (`--udp-rate-per-source`) and for
//! the whole server (`--udp-rate`): over either, datagrams are dropped, never queued.
//! Every drop is counted by reason. Nothing is ever queued for sending either: a datagram
//! the socket's send buffer has no room for is dropped, as the network would.
//!
//! Datagrams are taken in batches with `recvmmsg` and their echoes sent with `sendmmsg`:
//! two system calls for up to [`BATCH`] datagrams, where one at a time takes two for each.
//! A run of equal-sized echoes to one sender goes as one segmented send (UDP GSO), which
//! the kernel cuts into the datagrams: one pass through the stack for the run. On loopback
//! that took the server's CPU per datagram from 2.6 to 2.0 us (docs/performance.md has the runs).
//! Each slot of the batch holds the largest datagram; the slots' pages are touched only as
//! far as datagrams fill them.

mod loops;
mod rates;

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::time::Instant;

use mio::net::UdpSocket;
use mio::{Interest, Registry, Token};

use crate::access::AccessRules;
use crate::config::Config;
use crate::counters::{UdpCounts, UdpDrop as Drop};
use crate::schedule::{SERVICE_COST, TURN_SHARE};
use rates::Bucket;

pub(crate) use loops::{RepeatMemory, REPEATS, REPEAT_WINDOW_MS};
pub(crate) use rates::SourceRates;

/// Datagrams taken and answered per pair of system calls.
pub(crate) const BATCH: usize = 32;
/// One slot of the batch: more than the largest UDP payload (65,507 bytes over IPv4, 65,527
/// over IPv6), so that no datagram is ever cut.
const SLOT: usize = 65_536;
/// Most sources whose rate is tracked at once; beyond, sources share one rate.
pub(crate) const MAX_TRACKED_SOURCES: usize = 16_384;

/// What decides whether a datagram is answered: everything but the socket.
struct Rules {
    own_port: u16,
    access: AccessRules,
    sources: Option<SourceRates>,
    repeats: RepeatMemory,
    /// `--udp-rate`, and its bucket; `None` with no cap.
    server: Option<(u32, Bucket)>,
}

impl Rules {
    fn new(config: &Config, own_port: u16) -> Rules {
        Rules {
            own_port,
            access: AccessRules::new(config),
            sources: (config.udp_rate_per_source > 0)
                .then(|| SourceRates::new(config.udp_rate_per_source, MAX_TRACKED_SOURCES)),
            repeats: RepeatMemory::new(),
            server: (config.udp_rate > 0).then(|| {
                (
                    config.udp_rate,
                    Bucket::full(config.udp_rate, Instant::now()),
                )
            }),
        }
    }

    /// Why `datagram` from `source` is not answered, if it is not. The cheap tests first;
    /// the rates are taken from only by datagrams that pass everything else.
    fn refusal(&mut self, source: SocketAddr, datagram: &[u8], now: Instant) -> Option<Drop> {
        if loops::is_loop_port(source, self.own_port) {
            return Some(Drop::LoopPort);
        }
        if !self.access.admits(source.ip()) {
            return Some(Drop::AccessDenied);
        }
        if !self.repeats.admit(source, datagram, now) {
            return Some(Drop::Repeated);
        }
        if let Some(sources) = self.sources.as_mut() {
            if !sources.admit(source.ip(), now) {
                return Some(Drop::RateLimit);
            }
        }
        let over = self
            .server
            .as_mut()
            .is_some_and(|(rate, bucket)| !bucket.take(*rate, now));
        over.then_some(Drop::ServerRate)
    }
}

/// The UDP socket, and what decides which datagrams are answered.
pub(crate) struct UdpEcho {
    /// `None` once closed, at shutdown or after the socket failed; the counts stay.
    socket: Option<UdpSocket>,
    local_addr: SocketAddr,
    /// [`BATCH`] slots of [`SLOT`] bytes, and each one's sender.
    slots: Box<[u8]>,
    senders: Box<[libc::sockaddr_storage]>,
    rules: Rules,
    /// The socket may hold datagrams no readiness edge will announce: the turn's share
    /// ran out before it was empty.
    more_waiting: bool,
    /// Runs of answers to one sender go out as one segmented send (UDP GSO), until the
    /// kernel says it cannot.
    segmentation: bool,
    counts: UdpCounts,
}

impl UdpEcho {
    /// Binds `addr` for datagrams and registers the socket under `token`.
    pub fn bind(
        addr: SocketAddr,
        config: &Config,
        registry: &Registry,
        token: Token,
    ) -> io::Result<UdpEcho> {
        let bind = || -> io::Result<std::net::UdpSocket> {
            let socket = socket2::Socket::new(
                socket2::Domain::for_address(addr),
                socket2::Type::DGRAM,
                None,
            )?;
            // With `--reuse-port`, the instances sharing the TCP port share this one too.
            socket.set_reuse_port(config.reuse_port)?;
            socket.bind(&addr.into())?;
            Ok(socket.into())
        };
        let socket = bind().map_err(|e| {
            io::Error::new(e.kind(), format!("cannot receive datagrams on {addr}: {e}"))
        })?;
        UdpEcho::serve(socket, config, registry, token)
    }

    /// Serves a bound UDP socket handed over by the caller (a service manager's).
    pub fn serve(
        socket: std::net::UdpSocket,
        config: &Config,
        registry: &Registry,
        token: Token,
    ) -> io::Result<UdpEcho> {
        socket.set_nonblocking(true)?;
        let mut socket = UdpSocket::from_std(socket);
        let local_addr = socket.local_addr()?;
        registry.register(&mut socket, token, Interest::READABLE)?;
        Ok(UdpEcho {
            socket: Some(socket),
            local_addr,
            // Zeroed, so allocated untouched: only the pages datagrams fill become resident.
            slots: vec![0; BATCH * SLOT].into_boxed_slice(),
            // SAFETY: sockaddr_storage is plain data, valid all zero.
            senders: vec![unsafe { std::mem::zeroed::<libc::sockaddr_storage>() }; BATCH]
                .into_boxed_slice(),
            rules: Rules::new(config, local_addr.port()),
            more_waiting: false,
            segmentation: true,
            counts: UdpCounts::default(),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Datagrams may be waiting with no edge to announce them.
    pub fn has_work(&self) -> bool {
        self.more_waiting && self.socket.is_some()
    }

    pub fn counts(&self) -> UdpCounts {
        self.counts
    }

    /// Stops echoing: the socket is closed, the counts kept.
    pub fn close(&mut self, registry: &Registry) {
        if let Some(mut socket) = self.socket.take() {
            let _ = registry.deregister(&mut socket);
        }
        self.more_waiting = false;
    }

    /// Answers what the socket holds, until it is empty or this turn's share is spent. An
    /// error is the socket's own: the caller closes it.
    pub fn serve_turn(&mut self, now: Instant) -> io::Result<()> {
        self.more_waiting = false;
        let Some(socket) = self.socket.as_ref() else {
            return Ok(());
        };
        let fd = socket.as_raw_fd();
        let mut spent = 0;
        while spent < TURN_SHARE {
            let (count, received) = match receive_batch(fd, &mut self.slots, &mut self.senders) {
                Ok(received) => received,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // An ICMP error queued for an earlier send: it concerns that datagram only.
                Err(e) if is_transient(&e) => continue,
                Err(e) => return Err(e),
            };
            let mut answers = [(0usize, 0usize, UNSPECIFIED); BATCH];
            let mut kept = 0;
            for (slot, &(len, name_len)) in received[..count].iter().enumerate() {
                self.counts.received += 1;
                self.counts.bytes_received += len as u64;
                spent += 2 * len + SERVICE_COST;
                let Some(source) = socket_addr(&self.senders[slot], name_len) else {
                    continue;
                };
                let datagram = &self.slots[slot * SLOT..slot * SLOT + len];
                match self.rules.refusal(source, datagram, now) {
                    Some(reason) => self.counts.dropped[reason as usize] += 1,
                    None => {
                        answers[kept] = (slot, len, source);
                        kept += 1;
                    }
                }
            }
            let outcome = send_batch(
                fd,
                &self.slots,
                &self.senders,
                &answers[..kept],
                &mut self.segmentation,
            );
            self.counts.sent += outcome.sent as u64;
            self.counts.bytes_sent += outcome.bytes as u64;
            self.counts.dropped[Drop::SendBufferFull as usize] += outcome.no_room as u64;
            self.counts.dropped[Drop::SendError as usize] += outcome.failed as u64;
            if count < BATCH {
                // The socket had no more: the next datagram brings a fresh edge.
                return Ok(());
            }
        }
        self.more_waiting = true;
        Ok(())
    }
}

/// Each received datagram's length, and the length of its sender's address.
type Received = [(usize, libc::socklen_t); BATCH];

/// Takes up to [`BATCH`] datagrams into the slots with one `recvmmsg`: how many came, and
/// for each its length and the length of its sender's address (no allocation per batch).
fn receive_batch(
    fd: std::os::fd::RawFd,
    slots: &mut [u8],
    senders: &mut [libc::sockaddr_storage],
) -> io::Result<(usize, Received)> {
    // SAFETY: iovec and mmsghdr are plain data; every pointer set below points into
    // `slots` and `senders`, which outlive the call, with the lengths they have.
    let mut iovecs: [libc::iovec; BATCH] = unsafe { std::mem::zeroed() };
    let mut headers: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
    for (i, (slot, sender)) in slots
        .chunks_exact_mut(SLOT)
        .zip(senders.iter_mut())
        .enumerate()
    {
        iovecs[i] = libc::iovec {
            iov_base: slot.as_mut_ptr().cast(),
            iov_len: SLOT,
        };
        headers[i].msg_hdr.msg_name = (sender as *mut libc::sockaddr_storage).cast();
        headers[i].msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as _;
        headers[i].msg_hdr.msg_iov = &mut iovecs[i];
        headers[i].msg_hdr.msg_iovlen = 1;
    }
    // SAFETY: `headers` describes BATCH valid buffers, as set up above.
    let received = unsafe {
        libc::recvmmsg(
            fd,
            headers.as_mut_ptr(),
            BATCH as libc::c_uint,
            libc::MSG_DONTWAIT,
            std::ptr::null_mut(),
        )
    };
    if received < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut lengths = [(0, 0); BATCH];
    for (length, header) in lengths.iter_mut().zip(&headers[..received as usize]) {
        *length = (header.msg_len as usize, header.msg_hdr.msg_namelen);
    }
    Ok((received as usize, lengths))
}

/// What one batch of answers came to.
#[derive(Debug, Default)]
struct Sent {
    sent: usize,
    bytes: usize,
    /// Dropped: the socket's send buffer was full.
    no_room: usize,
    /// Dropped: the send failed otherwise (the destination unreachable, say).
    failed: usize,
}

const UNSPECIFIED: SocketAddr = SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 0);
/// `UDP_SEGMENT` (Linux 4.18): the segment size of a send that the kernel cuts into
/// datagrams of that size (the last may be shorter). Not in the libc crate for glibc yet.
const UDP_SEGMENT: libc::c_int = 103;
/// Answers to one sender sent as one segmented send, at most.
const MAX_SEGMENTS: usize = 32;
/// Only datagrams this small are sent segmented: a segment must fit the path's MTU
/// (1,500 bytes on most links, less IPv6's 48 bytes of headers).
const MAX_SEGMENT_BYTES: usize = 1_400;

/// Sends each answer (a slot, its length and its sender) back to its sender, with as few
/// `sendmmsg` calls as errors allow. With `segmentation`, a run of equal-sized answers to
/// one sender (the last may be shorter) goes as one message the kernel cuts into
/// datagrams (UDP GSO): one pass through the stack for the run. A kernel without it turns
/// `segmentation` off for good.
fn send_batch(
    fd: std::os::fd::RawFd,
    slots: &[u8],
    senders: &[libc::sockaddr_storage],
    answers: &[(usize, usize, SocketAddr)],
    segmentation: &mut bool,
) -> Sent {
    let mut outcome = Sent::default();
    // Runs of answers: (first, count, segment size).
    let mut runs = [(0usize, 0usize, 0usize); BATCH];
    let mut run_count = 0;
    let mut first = 0;
    while first < answers.len() {
        let (_, size, sender) = answers[first];
        let mut count = 1;
        if *segmentation && size <= MAX_SEGMENT_BYTES {
            while first + count < answers.len() && count < MAX_SEGMENTS {
                let (_, next_size, next_sender) = answers[first + count];
                if next_sender != sender || next_size > size || next_size == 0 {
                    break;
                }
                count += 1;
                if next_size < size {
                    break; // A shorter datagram can only be the last segment.
                }
            }
        }
        runs[run_count] = (first, count, size);
        run_count += 1;
        first += count;
    }
    // SAFETY: as in receive_batch; the kernel only reads through these pointers, which
    // point into `slots`, `senders` and the arrays here, all alive across the calls.
    let mut iovecs: [libc::iovec; BATCH] = unsafe { std::mem::zeroed() };
    let mut headers: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
    let mut controls = [[0u64; 4]; BATCH];
    for (i, &(slot, len, _)) in answers.iter().enumerate() {
        iovecs[i] = libc::iovec {
            iov_base: slots[slot * SLOT..].as_ptr() as *mut libc::c_void,
            iov_len: len,
        };
    }
    for (r, &(first, count, size)) in runs[..run_count].iter().enumerate() {
        let sender = &senders[answers[first].0];
        let header = &mut headers[r].msg_hdr;
        header.msg_name = (sender as *const libc::sockaddr_storage) as *mut _;
        header.msg_namelen = match i32::from(sender.ss_family) {
            libc::AF_INET6 => std::mem::size_of::<libc::sockaddr_in6>(),
            _ => std::mem::size_of::<libc::sockaddr_in>(),
        } as libc::socklen_t;
        header.msg_iov = &mut iovecs[first];
        header.msg_iovlen = count;
        if count > 1 {
            header.msg_control = controls[r].as_mut_ptr().cast();
            // SAFETY: CMSG_SPACE of a u16 fits the 32 bytes of `controls[r]`; the
            // header pointer is the buffer's start, aligned for cmsghdr.
            unsafe {
                header.msg_controllen = libc::CMSG_SPACE(2) as usize;
                let cmsg = libc::CMSG_FIRSTHDR(header);
                (*cmsg).cmsg_level = libc::SOL_UDP;
                (*cmsg).cmsg_type = UDP_SEGMENT;
                (*cmsg).cmsg_len = libc::CMSG_LEN(2) as usize;
                std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<u16>(), size as u16);
            }
        }
    }
    let run_bytes = |&(first, count, _): &(usize, usize, usize)| -> usize {
        answers[first..first + count].iter().map(|a| a.1).sum()
    };
    let mut start = 0;
    while start < run_count {
        // SAFETY: headers[start..run_count] are set up above.
        let sent = unsafe {
            libc::sendmmsg(
                fd,
                headers[start..].as_mut_ptr(),
                (run_count - start) as libc::c_uint,
                libc::MSG_DONTWAIT,
            )
        };
        if sent > 0 {
            for run in &runs[start..start + sent as usize] {
                outcome.sent += run.1;
                outcome.bytes += run_bytes(run);
            }
            start += sent as usize;
            continue;
        }
        let (first, count, _) = runs[start];
        match io::Error::last_os_error() {
            e if e.kind() == io::ErrorKind::Interrupted => {}
            e if e.kind() == io::ErrorKind::WouldBlock => {
                outcome.no_room += runs[start..run_count].iter().map(|r| r.1).sum::<usize>();
                break;
            }
            // A segmented send the kernel or the route refuses: its answers go one by
            // one, and a kernel without segmentation is not asked again.
            e if count > 1 => {
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ENOPROTOOPT | libc::EOPNOTSUPP | libc::EINVAL)
                ) {
                    *segmentation = false;
                }
                let single = send_batch(
                    fd,
                    slots,
                    senders,
                    &answers[first..first + count],
                    &mut false,
                );
                outcome.sent += single.sent;
                outcome.bytes += single.bytes;
                outcome.no_room += single.no_room;
                outcome.failed += single.failed;
                start += 1;
            }
            // This answer failed: the others may not.
            _ => {
                outcome.failed += 1;
                start += 1;
            }
        }
    }
    outcome
}

/// A sender's address as the kernel wrote it.
fn socket_addr(storage: &libc::sockaddr_storage, len: libc::socklen_t) -> Option<SocketAddr> {
    let len = len as usize;
    match i32::from(storage.ss_family) {
        libc::AF_INET if len >= std::mem::size_of::<libc::sockaddr_in>() => {
            // SAFETY: the kernel wrote a sockaddr_in, which sockaddr_storage is laid out to
            // hold.
            let v4 =
                unsafe { &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::new(
                IpAddr::from(u32::from_be(v4.sin_addr.s_addr).to_be_bytes()),
                u16::from_be(v4.sin_port),
            ))
        }
        libc::AF_INET6 if len >= std::mem::size_of::<libc::sockaddr_in6>() => {
            // SAFETY: as above, a sockaddr_in6.
            let v6 = unsafe {
                &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>()
            };
            Some(SocketAddr::V6(std::net::SocketAddrV6::new(
                v6.sin6_addr.s6_addr.into(),
                u16::from_be(v6.sin6_port),
                v6.sin6_flowinfo,
                v6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// Errors a receive reports for an earlier datagram's fate, not for the socket.
fn is_transient(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(
            libc::ECONNREFUSED
                | libc::EHOSTUNREACH
                | libc::ENETUNREACH
                | libc::EHOSTDOWN
                | libc::ECONNRESET
        )
    )
}
