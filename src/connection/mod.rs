//! One client's state machine: its socket, the unfinished line and the unsent output it
//! holds, and the flow control between them.
//!
//! This is the only place that knows one client's buffers. The reactor tells a connection
//! that its socket is readable or writable; the connection reads into the reactor's shared
//! read buffer, hands complete lines to the handler, writes the answer straight to the socket
//! and copies into its own buffers only what the socket would not take or what is not yet a
//! whole line. Both buffers are released as soon as they are empty, so an idle connection
//! owns no heap memory.
//!
//! Between the socket and the line framing sits a stack of byte layers, each in a room of
//! its own below this one, each present only on the connections that need it (an absent
//! layer costs a test of a pointer):
//!
//! ```text
//! socket -> [PROXY header] -> [TLS open] -> [telnet decode] -> framing -> handler
//!                                                                          |
//! socket <- output <--------- [TLS seal] <- [telnet escape] <- answers <---+
//!
//! socket -> [PROXY header] -> [TLS open] -> [WebSocket: HTTP opening, frames in]
//!                                                             | messages echoed whole
//! socket <- output <--------- [TLS seal] <- [WebSocket: frames out] <-+
//! ```
//!
//! Every layer has the same shape: it is given the bytes that came from below and hands
//! what it makes of them up, in order (`take`, `receive`, `feed` then `take_plaintext`);
//! it may have bytes of its own to send (a negotiation answer, a handshake flight, an
//! alert), which go down the same way as answers. With any layer that transforms output,
//! one read's answers are gathered in a buffer of the turn and go down in one piece, so
//! that a read costs one write however many lines or commands it held. The connection owns
//! the order of the stack and the flow control around it; the layers know nothing of
//! sockets, budgets or the schedule.
//!
//! The connection's own steps each have a file: the way in (`reading.rs`), from bytes to
//! answers (`answering.rs`), its side of the TLS layer (`records.rs`) and the way down to
//! the socket (`output.rs`); here are its state, flow control and the end of its output.

use std::any::Any;
use std::io::{self, Read};
use std::net::Shutdown;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Instant;

use crate::access::{AccessRules, AddressLimit};
use crate::budget::Holder;
use crate::counters::Traffic;
use crate::handler::LineHandler;
use crate::idle::{IdleLinks, Linked};
use crate::line;
use crate::schedule::{READ_SHARE, WRITE_SHARE};
use crate::stream::{Peer, Stream};

mod answering;
mod output;
pub(crate) mod proxy;
mod reading;
mod records;
pub(crate) mod telnet;
pub(crate) mod tls;
pub(crate) mod websocket;

use answering::Delivery;
use records::send_records;

use output::OutputBuffer;
use proxy::HeaderLayer;
use telnet::{SubnegotiationTooLong, TelnetLayer, Up};
use tls::TlsLayer;
use websocket::WebSocketLayer;

/// Room kept beyond a read's echo for what TLS adds to it: record headers and tags, a
/// handshake flight with its certificate chain.
const TLS_OUTPUT_ROOM: usize = 16 * 1024;

/// The layer between TLS and the framing, for a connection that speaks more than bytes:
/// the two never go together, so they share one pointer.
// Always boxed: a telnet connection's box is the WebSocket layer's size (about 250 bytes,
// not 30), which no connection without either pays.
#[allow(clippy::large_enum_variant)]
pub(crate) enum UpperLayer {
    Telnet(TelnetLayer),
    WebSocket(WebSocketLayer),
}

/// Why a connection has to end early.
#[derive(Debug)]
pub(crate) enum Fault {
    /// The socket failed: a reset, a broken pipe, or something rarer.
    Io(io::Error),
    /// Serving the connection panicked: in the line handler (`in_handler`) or, defensively,
    /// anywhere else in its turn. The message is the panic's payload when it is text.
    Panicked { in_handler: bool, message: String },
    /// With `--proxy-protocol`, the connection did not begin with a valid header.
    ProxyHeader(String),
    /// With `--proxy-protocol`, its header named an address over `--max-connections-per-ip`.
    AddressLimit,
    /// Its PROXY header named a client that `--allow`/`--deny` refuse.
    AccessDenied,
    /// With `--tls-cert`, TLS failed: in the handshake (counted by `failure`) or after.
    Tls {
        failure: tls::Failure,
        in_handshake: bool,
        message: String,
    },
    /// With `--websocket`, no complete HTTP request within the opening time.
    WebSocketOpening(String),
}

impl From<io::Error> for Fault {
    fn from(error: io::Error) -> Self {
        Fault::Io(error)
    }
}

impl From<SubnegotiationTooLong> for Fault {
    fn from(_: SubnegotiationTooLong) -> Self {
        Fault::Io(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "telnet sub-negotiation longer than {} bytes",
                telnet::MAX_SUBNEGOTIATION_BYTES
            ),
        ))
    }
}

/// How a turn of reading ended, which tells the reactor whether to come back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReadOutcome {
    /// The socket has nothing more for now; a fresh readiness edge will come with new data.
    Drained,
    /// Its share of the turn ran out with data possibly still waiting: the reactor must
    /// come back without waiting for an edge, which may never come.
    ShareSpent,
    /// Reading is paused until unsent output drains (backpressure), or over for good.
    Stopped,
    /// Reading is paused because this connection holds buffered bytes and one more read
    /// could take all connections' buffers past the budget: the reactor resumes it when
    /// the total falls.
    OverBudget,
}

/// What the reactor lends a connection for one turn: the state that is shared because the
/// reactor is single-threaded.
pub(crate) struct Turn<'a> {
    pub read_buffer: &'a mut [u8],
    pub scratch: &'a mut Vec<u8>,
    /// With telnet or TLS, everything one read produces (echoes and replies), gathered to
    /// go down in one piece.
    pub gathered: &'a mut Vec<u8>,
    /// With TLS: decrypted input, taken out of rustls to be answered, and the records made
    /// for the wire.
    pub tls_plaintext: &'a mut [u8],
    pub tls_records: &'a mut Vec<u8>,
    pub handler: &'a mut dyn LineHandler,
    pub max_line_bytes: usize,
    pub output_high_water: usize,
    pub output_low_water: usize,
    pub traffic: &'a mut Traffic,
    /// Buffer capacity held by every other connection, and the budget for all of them.
    pub others_buffered: usize,
    pub buffer_budget: usize,
    /// The budget's look epoch, noted when queued output moves.
    pub budget_epoch: u64,
    /// The access lists and the per-address counts, where a PROXY header's address is
    /// checked and counted when it arrives.
    pub rules: &'a AccessRules,
    pub addresses: Option<&'a mut AddressLimit>,
}

/// The most a buffer of the turn keeps between reads: one read's answers are far less, and
/// a WebSocket message put together (up to `--websocket-max-message`) is far more, which
/// the budget does not count once it has gone down.
const TURN_BUFFER_KEPT: usize = 1024 * 1024;

impl Turn<'_> {
    /// Gives back the memory of a turn buffer that a large message grew.
    fn release_large_buffers(&mut self) {
        for buffer in [&mut *self.gathered, &mut *self.tls_records] {
            if buffer.capacity() > TURN_BUFFER_KEPT {
                *buffer = Vec::new();
            }
        }
    }
}

pub(crate) struct Connection {
    socket: Stream,
    /// Kept from accept time: after a reset the socket can no longer tell it.
    peer: Peer,
    /// The unfinished last line, always shorter than the line limit; empty and unallocated
    /// whenever the client's last read ended at a line end.
    partial: Vec<u8>,
    /// Answers the socket would not take yet.
    output: OutputBuffer,
    /// The client sent its FIN: nothing more will be read.
    read_closed: bool,
    /// Reading paused because one more read could take unsent output past the high-water
    /// mark; it resumes at the low-water mark.
    read_paused: bool,
    /// The last turn of reading found the socket empty.
    read_drained: bool,
    /// The server is shutting down: half-close once everything received has been answered.
    draining: bool,
    /// The server half-closed its side during shutdown; later input is discarded.
    write_shut: bool,
    /// Over-long lines are logged once per connection, not once per piece.
    long_line_logged: bool,
    /// The last piece answered was a cut piece of a long line: the next piece of that line
    /// does not count as another long line.
    in_long_line: bool,
    /// The buffer budget's look epoch in which queued output last went out: a holder that
    /// made progress since the last look is not a candidate for eviction.
    progress_epoch: u64,
    /// Reading waits for room in the buffer budget, or for this connection's own output to
    /// drain.
    budget_paused: bool,
    /// With `--proxy-protocol`, until the header has arrived: what has of it. Boxed, so
    /// that a connection without it pays one pointer.
    awaiting_header: Option<Box<HeaderLayer>>,
    /// With `--tls-cert`: the TLS session. Boxed, so that a connection without it pays one
    /// pointer.
    tls: Option<Box<TlsLayer>>,
    /// What the layers hold of the input (see [`TlsLayer::held`] and
    /// [`WebSocketLayer::held`]), as of the last read: kept here so that the budget's check
    /// on every read of a plain connection reads a field, not the layers.
    layers_held: usize,
    /// With `--telnet` or `--websocket`: the protocol layer between the socket (or TLS)
    /// and the framing.
    upper: Option<Box<UpperLayer>>,
    /// The client's first bytes have arrived (after its PROXY header, if any).
    first_bytes_seen: bool,
    /// The last flush stopped at its share with output left and the socket perhaps able
    /// to take it: no writable edge will come, so the reactor must come back.
    flush_cut: bool,
    /// Tells this connection from earlier ones under the same key: what a subscription
    /// names (with `--kv`). 48 bits, in two fields that fit in the padding the flags
    /// leave, so that no connection grows for it: at a million connections a second the
    /// number comes round again after nine years.
    serial_low: u32,
    serial_high: u16,
    idle: IdleLinks,
}

impl Linked for Connection {
    fn links(&self) -> &IdleLinks {
        &self.idle
    }
    fn links_mut(&mut self) -> &mut IdleLinks {
        &mut self.idle
    }
}

impl Connection {
    pub fn new(socket: Stream, peer: Peer, serial: u64, now: Instant) -> Self {
        Connection {
            socket,
            peer,
            partial: Vec::new(),
            output: OutputBuffer::default(),
            read_closed: false,
            read_paused: false,
            read_drained: false,
            draining: false,
            write_shut: false,
            long_line_logged: false,
            in_long_line: false,
            progress_epoch: 0,
            budget_paused: false,
            awaiting_header: None,
            tls: None,
            layers_held: 0,
            upper: None,
            first_bytes_seen: false,
            flush_cut: false,
            serial_low: serial as u32,
            serial_high: (serial >> 32) as u16,
            idle: IdleLinks::new(now),
        }
    }

    pub fn peer(&self) -> &Peer {
        &self.peer
    }

    /// Unique among the connections of this server's life (see the field).
    pub fn serial(&self) -> u64 {
        u64::from(self.serial_high) << 32 | u64::from(self.serial_low)
    }

    /// From now on the connection must begin with a PROXY protocol header, complete by
    /// `deadline`.
    pub fn expect_proxy_header(&mut self, deadline: Instant) {
        self.awaiting_header = Some(Box::new(HeaderLayer::new(deadline)));
    }

    /// From now on the connection speaks TLS (after its PROXY header, if one is awaited),
    /// with the handshake complete by `deadline`.
    pub fn speak_tls(
        &mut self,
        config: std::sync::Arc<rustls::ServerConfig>,
        deadline: Instant,
    ) -> Result<(), Fault> {
        self.tls = Some(Box::new(TlsLayer::new(config, deadline)?));
        Ok(())
    }

    /// From now on the connection speaks telnet: its input is decoded before framing and
    /// its echoes escaped. The server's offers go out at once, or, when a PROXY header or a
    /// TLS handshake comes first, with the first answers after it: the balancer is not a
    /// telnet client, and nothing but the handshake may precede it.
    pub fn speak_telnet(&mut self, traffic: &mut Traffic) -> io::Result<()> {
        let offers_owed = self.awaiting_header.is_some() || self.tls.is_some();
        self.upper = Some(Box::new(UpperLayer::Telnet(TelnetLayer::new(offers_owed))));
        if !offers_owed {
            traffic.bytes_sent += self.output.send(&mut self.socket, telnet::OFFERS)? as u64;
        }
        Ok(())
    }

    /// From now on the connection speaks WebSocket: its opening (the HTTP request, after
    /// its PROXY header and TLS handshake, if any) must be complete by `deadline`.
    pub fn speak_websocket(&mut self, deadline: Instant, max_message: usize) {
        let layer = WebSocketLayer::new(deadline, max_message);
        self.upper = Some(Box::new(UpperLayer::WebSocket(layer)));
    }

    /// It speaks telnet.
    fn speaks_telnet(&self) -> bool {
        matches!(self.upper.as_deref(), Some(UpperLayer::Telnet(_)))
    }

    /// With `--websocket`: its layer.
    fn websocket(&self) -> Option<&WebSocketLayer> {
        match self.upper.as_deref() {
            Some(UpperLayer::WebSocket(layer)) => Some(layer),
            _ => None,
        }
    }

    /// When its PROXY header must be complete, while it is still awaited.
    pub fn header_deadline(&self) -> Option<Instant> {
        self.awaiting_header
            .as_ref()
            .map(|awaiting| awaiting.deadline)
    }

    /// When its opening (the PROXY header, then the TLS handshake, then the WebSocket
    /// request) must be complete, while one of them is under way.
    pub fn opening_deadline(&self) -> Option<Instant> {
        self.header_deadline()
            .or_else(|| self.tls_deadline())
            .or_else(|| self.websocket().and_then(WebSocketLayer::opening_deadline))
    }

    /// When its TLS handshake must be complete, while it is under way.
    pub fn tls_deadline(&self) -> Option<Instant> {
        self.tls.as_ref().and_then(|tls| tls.handshake_deadline())
    }

    /// It speaks TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    pub fn socket_mut(&mut self) -> &mut Stream {
        &mut self.socket
    }

    /// Bytes answered but not yet taken by the socket.
    pub fn pending_output(&self) -> usize {
        self.output.pending()
    }

    /// Reading waits for room in the buffer budget, or for this connection's own output to
    /// drain.
    pub fn is_budget_paused(&self) -> bool {
        self.budget_paused
    }

    /// Reading stopped for want of room in the buffer budget with no output of its own left
    /// to drain: only room made elsewhere lets it go on.
    pub fn waits_for_room(&self) -> bool {
        self.budget_paused && self.pending_output() == 0
    }

    /// Reading is paused until unsent output drains.
    pub fn is_read_paused(&self) -> bool {
        self.read_paused
    }

    /// Bytes held for this client: its unfinished line, its unsent output, and what rustls
    /// holds of its input.
    pub fn buffered_bytes(&self) -> usize {
        self.partial.len() + self.output.pending() + self.layers_held
    }

    /// Heap memory held in this connection's buffers and by rustls for it (beyond rustls'
    /// read buffer of a few KiB), what the buffer budget counts.
    pub fn buffered_capacity(&self) -> usize {
        self.partial.capacity() + self.output.capacity() + self.layers_held
    }

    /// What the buffer budget's look needs to know of this connection.
    pub fn as_holder(&self) -> Holder {
        Holder {
            progress_epoch: self.progress_epoch,
            peer_window_open: peer_window_open(&self.socket),
        }
    }

    /// The server's drain half-closed this connection before the client closed it.
    pub fn was_drained(&self) -> bool {
        self.write_shut
    }

    /// Nothing more will come in and everything has gone out: the connection can be dropped.
    pub fn is_finished(&self) -> bool {
        self.read_closed && self.pending_output() == 0
    }

    /// Output is left that the socket may take now, with no edge to say so.
    pub fn has_output_to_flush(&self) -> bool {
        self.flush_cut
    }

    /// Sends what the socket would not take before, up to a share of the turn. Returns true
    /// when reading was paused and may resume: the output fell to the low-water mark, or,
    /// for a connection waiting on the buffer budget, drained.
    pub fn flush(&mut self, turn: &mut Turn<'_>) -> io::Result<bool> {
        let written = self.output.flush(&mut self.socket, WRITE_SHARE)?;
        self.flush_cut = written == WRITE_SHARE && self.pending_output() > 0;
        if written > 0 {
            self.progress_epoch = turn.budget_epoch;
        }
        turn.traffic.bytes_sent += written as u64;
        if self.read_paused && self.pending_output() <= turn.output_low_water {
            self.read_paused = false;
            return Ok(true);
        }
        if self.budget_paused && self.pending_output() == 0 {
            self.budget_paused = false;
            return Ok(true);
        }
        Ok(false)
    }

    /// Enters shutdown: from now on the connection half-closes as soon as everything it has
    /// received is answered and sent.
    pub fn begin_drain(&mut self) {
        self.draining = true;
    }

    /// During shutdown, sends the FIN once the socket is empty and all answers are out. The
    /// unfinished last line, if any, is echoed first: every byte received comes back.
    pub fn half_close_when_done(&mut self, turn: &mut Turn<'_>) -> Result<(), Fault> {
        if !self.draining || self.write_shut || self.read_closed {
            return Ok(());
        }
        if !self.read_drained || self.read_paused {
            return Ok(());
        }
        self.answer_tail(turn)?;
        self.close_websocket(turn)?;
        self.close_tls(turn)?;
        if self.pending_output() > 0 {
            return Ok(());
        }
        match self.socket.shutdown(Shutdown::Write) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotConnected => {}
            Err(e) => return Err(Fault::Io(e)),
        }
        self.write_shut = true;
        Ok(())
    }
}

/// Whether the peer's receive window is open, from `TCP_INFO`: with output unsent, a closed
/// window means the peer stopped reading, an open one that the network has yet to carry or
/// acknowledge what was sent. A kernel that does not say (before Linux 5.4) or an error
/// answers false: no preference then. So does a Unix socket, which has no window.
fn peer_window_open(socket: &Stream) -> bool {
    use std::os::fd::AsRawFd;
    let Some(socket) = socket.as_tcp() else {
        return false;
    };
    // SAFETY: tcp_info is plain data; getsockopt writes at most `len` bytes into it and
    // says how many it wrote.
    unsafe {
        let mut info: libc::tcp_info = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        let result = libc::getsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        );
        let window_end =
            std::mem::offset_of!(libc::tcp_info, tcpi_snd_wnd) + std::mem::size_of::<u32>();
        result == 0 && len as usize >= window_end && info.tcpi_snd_wnd >= info.tcpi_snd_mss.max(1)
    }
}

pub(crate) fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        (*text).to_owned()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "non-text panic payload".to_owned()
    }
}
