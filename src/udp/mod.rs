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
//! Datagrams are taken in batches with `recvmmsg` and their echoes sent with `sendmmsg`
//! (`batch.rs`): two system calls for up to [`BATCH`] datagrams. Here: the socket, the
//! turn's share, and what decides which datagrams are answered (`loops.rs`, `rates.rs`).

mod batch;
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
use batch::{is_transient, receive_batch, send_batch, socket_addr, UNSPECIFIED};
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
