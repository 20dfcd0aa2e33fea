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

mod output;
pub(crate) mod proxy;
pub(crate) mod telnet;
pub(crate) mod tls;

use output::OutputBuffer;
use proxy::HeaderLayer;
use telnet::{SubnegotiationTooLong, TelnetLayer, Up};
use tls::TlsLayer;

/// Room kept beyond a read's echo for what TLS adds to it: record headers and tags, a
/// handshake flight with its certificate chain.
const TLS_OUTPUT_ROOM: usize = 16 * 1024;

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
    /// What the TLS layer holds of the input (see [`TlsLayer::held`]), as of its last
    /// read: kept here so that the budget's check on every read of a plain connection
    /// reads a field, not the layer.
    tls_held: usize,
    /// With `--telnet`: the protocol layer between the socket (or TLS) and the framing.
    telnet: Option<Box<TelnetLayer>>,
    /// The client's first bytes have arrived (after its PROXY header, if any).
    first_bytes_seen: bool,
    /// The last flush stopped at its share with output left and the socket perhaps able
    /// to take it: no writable edge will come, so the reactor must come back.
    flush_cut: bool,
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
    pub fn new(socket: Stream, peer: Peer, now: Instant) -> Self {
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
            tls_held: 0,
            telnet: None,
            first_bytes_seen: false,
            flush_cut: false,
            idle: IdleLinks::new(now),
        }
    }

    pub fn peer(&self) -> &Peer {
        &self.peer
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
        self.telnet = Some(Box::new(TelnetLayer::new(offers_owed)));
        if !offers_owed {
            traffic.bytes_sent += self.output.send(&mut self.socket, telnet::OFFERS)? as u64;
        }
        Ok(())
    }

    /// When its PROXY header must be complete, while it is still awaited.
    pub fn header_deadline(&self) -> Option<Instant> {
        self.awaiting_header
            .as_ref()
            .map(|awaiting| awaiting.deadline)
    }

    /// When its opening (the PROXY header, then the TLS handshake) must be complete, while
    /// one of them is under way.
    pub fn opening_deadline(&self) -> Option<Instant> {
        self.header_deadline()
            .or_else(|| self.tls.as_ref().and_then(|tls| tls.handshake_deadline()))
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
        self.partial.len() + self.output.pending() + self.tls_held
    }

    /// Heap memory held in this connection's buffers and by rustls for it (beyond rustls'
    /// read buffer of a few KiB), what the buffer budget counts.
    pub fn buffered_capacity(&self) -> usize {
        self.partial.capacity() + self.output.capacity() + self.tls_held
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

    /// Reads what the socket holds, answering every complete line, until the socket is
    /// drained, its share of the turn is spent, or unsent output passes the high-water mark.
    ///
    /// Normally a read shorter than the buffer ends the turn: the socket is empty and the
    /// next byte brings a fresh edge. `until_would_block` says a short read proves nothing
    /// this time, because an edge was already spent: the event reported the client's FIN
    /// (the end of stream is still to be read and nothing will announce it again), or
    /// edges went unanswered while reading was paused or its budget ran out.
    pub fn read(
        &mut self,
        turn: &mut Turn<'_>,
        until_would_block: bool,
    ) -> Result<ReadOutcome, Fault> {
        // The read buffer steps out of the turn while it is read into and answered from,
        // since answering needs the rest of the turn.
        let buffer = std::mem::take(&mut turn.read_buffer);
        let outcome = self.read_into(buffer, turn, until_would_block);
        turn.read_buffer = buffer;
        outcome
    }

    fn read_into(
        &mut self,
        buffer: &mut [u8],
        turn: &mut Turn<'_>,
        until_would_block: bool,
    ) -> Result<ReadOutcome, Fault> {
        if self.read_closed || self.read_paused {
            return Ok(ReadOutcome::Stopped);
        }
        // The most output one read can produce: its echo, or with telnet twice that (every
        // line end may grow to CR LF) and a few replies.
        let mut answer_reach = if self.telnet.is_some() {
            2 * buffer.len()
        } else {
            buffer.len()
        };
        if self.tls.is_some() {
            answer_reach += TLS_OUTPUT_ROOM;
        }
        self.read_drained = false;
        let mut read = 0;
        while read < READ_SHARE {
            // A connection holding nothing is always read, so clients that read their echoes
            // are never starved; one that holds buffers waits while a read could take all
            // buffers past the budget, until its output drains or the total falls.
            let held = self.buffered_capacity();
            if held > 0 && turn.others_buffered + held + answer_reach > turn.buffer_budget {
                self.budget_paused = true;
                return Ok(ReadOutcome::OverBudget);
            }
            self.budget_paused = false;
            let received = match self.socket.read(buffer) {
                Ok(0) => {
                    self.read_closed = true;
                    if !self.write_shut {
                        self.answer_tail(turn)?;
                        self.close_tls(turn)?;
                    }
                    return Ok(ReadOutcome::Stopped);
                }
                Ok(received) => {
                    read += received;
                    received
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.read_drained = true;
                    return Ok(ReadOutcome::Drained);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Fault::Io(e)),
            };
            turn.traffic.bytes_received += received as u64;
            let start = match self.awaiting_header.as_mut() {
                None => 0,
                Some(header) => {
                    let addresses = turn.addresses.as_deref_mut();
                    match header.take(&buffer[..received], &mut self.peer, turn.rules, addresses)? {
                        Some(start) => {
                            self.awaiting_header = None;
                            start
                        }
                        // More of the header is to come: nothing to answer yet.
                        None => received,
                    }
                }
            };
            let arrived = &buffer[start..received];
            if !arrived.is_empty() && !self.first_bytes_seen && self.tls.is_none() {
                self.first_bytes_seen = true;
                if self.telnet.is_none() && telnet::opens_negotiation(arrived) {
                    crate::warning::client_caused!(
                        log::Level::Info,
                        "{}: this looks like a telnet client (it opened with telnet \
                         negotiation); its bytes are echoed as they are, and --telnet would \
                         serve it as telnet",
                        self.peer
                    );
                }
            }
            if !self.write_shut && self.awaiting_header.is_none() {
                if self.tls.is_some() {
                    self.receive_tls(arrived, turn)?;
                    if self.read_closed {
                        // The client's close_notify: nothing more will be read.
                        return Ok(ReadOutcome::Stopped);
                    }
                } else if self.telnet.is_some() {
                    // Even with nothing arrived, when the header has just ended: the offers
                    // owed go out then.
                    self.answer_input(arrived, turn, false)?;
                } else if !arrived.is_empty() {
                    self.answer(arrived, turn, Delivery::Socket)?;
                }
            }
            // Pausing one read early keeps unsent echo output within the high-water mark
            // itself, since the next read could add up to a buffer's worth.
            if self.pending_output() + answer_reach > turn.output_high_water {
                self.read_paused = true;
                return Ok(ReadOutcome::Stopped);
            }
            // A read shorter than the buffer emptied the socket: asking again would only
            // return WouldBlock, and the next byte to arrive brings a fresh edge.
            if received < buffer.len() && !until_would_block {
                self.read_drained = true;
                return Ok(ReadOutcome::Drained);
            }
        }
        Ok(ReadOutcome::ShareSpent)
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

    /// Answers what came up from below the telnet layer: decoded first when the connection
    /// speaks telnet. Without layers, each answer goes straight to the socket; with them,
    /// one read's answers and replies are gathered, and go out in one write, or, when
    /// `sealed`, stay gathered for TLS to seal.
    fn answer_input(
        &mut self,
        arrived: &[u8],
        turn: &mut Turn<'_>,
        sealed: bool,
    ) -> Result<(), Fault> {
        let Some(mut layer) = self.telnet.take() else {
            if !sealed {
                return self.answer(arrived, turn, Delivery::Socket);
            }
            turn.gathered.clear();
            return self.answer(arrived, turn, Delivery::Gathered);
        };
        turn.gathered.clear();
        let decoded = layer.receive::<Fault>(arrived, &mut |up| {
            match up {
                Up::Data(data) => self.answer(data, turn, Delivery::Escaped)?,
                Up::Reply(bytes) => turn.gathered.extend_from_slice(bytes),
                Up::EraseLine => {
                    self.partial = Vec::new();
                    self.in_long_line = false;
                }
                Up::EraseCharacter => erase_character(&mut self.partial),
            }
            Ok(())
        });
        self.telnet = Some(layer);
        turn.traffic.telnet_commands += decoded? as u64;
        if !sealed && !turn.gathered.is_empty() {
            turn.traffic.bytes_sent += self.output.send(&mut self.socket, turn.gathered)? as u64;
        }
        Ok(())
    }

    /// Takes what arrived through the TLS layer: records are fed to it, the plaintext they
    /// hold answered and the answers sealed, and the records this makes (answers, handshake
    /// messages, an alert) go out in one write, after a failure too.
    fn receive_tls(&mut self, arrived: &[u8], turn: &mut Turn<'_>) -> Result<(), Fault> {
        let Some(mut tls) = self.tls.take() else {
            return Ok(());
        };
        let plaintext = std::mem::take(&mut turn.tls_plaintext);
        let received = self.open_records(&mut tls, arrived, plaintext, turn);
        turn.tls_plaintext = plaintext;
        self.tls_held = tls.held();
        if received.is_ok() && tls.peer_closed() && !self.read_closed {
            // The client's close_notify is its end of stream: the unfinished line is
            // answered and ours follows it.
            self.read_closed = true;
            self.tls = Some(tls);
            self.answer_tail(turn)?;
            self.close_tls(turn)?;
            return received;
        }
        let sent = send_records(&mut tls, &mut self.socket, &mut self.output, turn);
        self.tls = Some(tls);
        received?;
        Ok(sent?)
    }

    fn open_records(
        &mut self,
        tls: &mut TlsLayer,
        arrived: &[u8],
        plaintext: &mut [u8],
        turn: &mut Turn<'_>,
    ) -> Result<(), Fault> {
        let mut rest = arrived;
        loop {
            loop {
                let taken = tls.take_plaintext(plaintext);
                if taken == 0 {
                    break;
                }
                self.answer_input(&plaintext[..taken], turn, true)?;
                tls.seal(turn.gathered)?;
            }
            if rest.is_empty() {
                return Ok(());
            }
            let fed = tls.feed(rest)?;
            if fed.handshake_step {
                turn.traffic.tls_handshake_steps += 1;
            }
            if fed.established {
                turn.traffic.tls_handshakes += 1;
                log::debug!("{}: TLS handshake complete ({})", self.peer, tls.agreed());
                if self.telnet.is_some() {
                    // The telnet offers owed go out first thing.
                    self.answer_input(&[], turn, true)?;
                    tls.seal(turn.gathered)?;
                }
            }
            if fed.taken == 0 {
                // Past the client's close_notify: nothing more is read.
                return Ok(());
            }
            rest = &rest[fed.taken..];
        }
    }

    /// With TLS, makes and sends our `close_notify` (once): after the last answer, before
    /// the FIN.
    #[cold]
    fn close_tls(&mut self, turn: &mut Turn<'_>) -> Result<(), Fault> {
        let Some(tls) = self.tls.as_mut() else {
            return Ok(());
        };
        tls.close();
        Ok(send_records(tls, &mut self.socket, &mut self.output, turn)?)
    }

    /// Frames `data` after the unfinished line and answers each run of complete lines.
    fn answer(
        &mut self,
        data: &[u8],
        turn: &mut Turn<'_>,
        delivery: Delivery,
    ) -> Result<(), Fault> {
        let long_lines_before = turn.traffic.long_lines;
        let (socket, output) = (&mut self.socket, &mut self.output);
        let (partial, in_long_line) = (&mut self.partial, &mut self.in_long_line);
        // One framing loop per kind of delivery, each with its own sink: the plain echo's
        // is as small as it was before any layer existed.
        let result = match delivery {
            Delivery::Socket => {
                frame_answers(partial, in_long_line, data, turn, |answer, traffic, _| {
                    traffic.bytes_sent += output.send(socket, answer)? as u64;
                    Ok(())
                })
            }
            Delivery::Escaped => {
                frame_answers(partial, in_long_line, data, turn, |answer, _, gathered| {
                    telnet::escape_into(answer, gathered);
                    Ok(())
                })
            }
            Delivery::Gathered => {
                frame_answers(partial, in_long_line, data, turn, |answer, _, gathered| {
                    gathered.extend_from_slice(answer);
                    Ok(())
                })
            }
        };
        if turn.traffic.long_lines > long_lines_before && !self.long_line_logged {
            self.long_line_logged = true;
            log::debug!(
                "{}: line longer than {} bytes, echoing it in pieces",
                self.peer,
                turn.max_line_bytes
            );
        }
        result
    }

    /// Answers the unfinished last line when no more input will follow it.
    // Once per connection at most: kept out of the read loop it ends.
    #[cold]
    fn answer_tail(&mut self, turn: &mut Turn<'_>) -> Result<(), Fault> {
        if self.partial.is_empty() {
            return Ok(());
        }
        let (socket, output) = (&mut self.socket, &mut self.output);
        if self.telnet.is_none() && self.tls.is_none() {
            return line::finish(&mut self.partial, &mut |piece| {
                let answer = respond(&mut *turn.handler, piece, turn.scratch)?;
                turn.traffic.bytes_sent += output.send(socket, answer)? as u64;
                Ok(())
            });
        }
        // With layers, the tail's answers go down in one piece, as a read's do.
        let escapes_iac = self.telnet.is_some();
        turn.gathered.clear();
        line::finish(&mut self.partial, &mut |piece| {
            let answer = respond(&mut *turn.handler, piece, turn.scratch)?;
            if escapes_iac {
                telnet::escape_into(answer, turn.gathered);
            } else {
                turn.gathered.extend_from_slice(answer);
            }
            Ok::<(), Fault>(())
        })?;
        match self.tls.as_mut() {
            Some(tls) => {
                tls.seal(turn.gathered)?;
                send_records(tls, socket, output, turn)?;
            }
            None => turn.traffic.bytes_sent += output.send(socket, turn.gathered)? as u64,
        }
        Ok(())
    }
}

/// Takes every record the TLS layer has made and sends them in one write, counted.
fn send_records(
    tls: &mut TlsLayer,
    socket: &mut Stream,
    output: &mut OutputBuffer,
    turn: &mut Turn<'_>,
) -> io::Result<()> {
    turn.tls_records.clear();
    tls.take_records(turn.tls_records);
    turn.traffic.bytes_sent += output.send(socket, turn.tls_records)? as u64;
    Ok(())
}

/// Where a connection's answers go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Delivery {
    /// To the socket, each as it is made.
    Socket,
    /// Escaped as telnet data into the turn's gathered output.
    Escaped,
    /// Into the turn's gathered output as they are, for TLS to seal.
    Gathered,
}

/// Frames `data` after the unfinished line `partial`, asks the handler for the answer to
/// each run of complete lines and hands it to `deliver`, counting long lines as they start.
fn frame_answers(
    partial: &mut Vec<u8>,
    in_long_line: &mut bool,
    data: &[u8],
    turn: &mut Turn<'_>,
    mut deliver: impl FnMut(&[u8], &mut Traffic, &mut Vec<u8>) -> Result<(), Fault>,
) -> Result<(), Fault> {
    line::frame(partial, data, turn.max_line_bytes, &mut |piece| {
        // Runs of complete lines end in a newline; only a cut piece of a long line does
        // not, and the first such piece of a line marks a new long line.
        let cut = !piece.ends_with(b"\n");
        if cut && !*in_long_line {
            turn.traffic.long_lines += 1;
        }
        *in_long_line = cut;
        let answer = respond(&mut *turn.handler, piece, turn.scratch)?;
        deliver(answer, turn.traffic, turn.gathered)
    })
}

/// Telnet's Erase Character: the last character of the unfinished line goes, all of its
/// bytes when it is UTF-8.
fn erase_character(partial: &mut Vec<u8>) {
    while let Some(byte) = partial.pop() {
        // A UTF-8 continuation byte (10xxxxxx) is part of the character before it.
        if byte & 0b1100_0000 != 0b1000_0000 {
            break;
        }
    }
    if partial.is_empty() {
        *partial = Vec::new();
    }
}

/// Asks the handler for its answer to `lines`; a panic in the handler becomes a fault of this
/// connection alone.
fn respond<'a>(
    handler: &mut dyn LineHandler,
    lines: &'a [u8],
    scratch: &'a mut Vec<u8>,
) -> Result<&'a [u8], Fault> {
    scratch.clear();
    catch_unwind(AssertUnwindSafe(move || {
        // Moving the borrow in makes the closure FnOnce, so the answer outlives the call.
        let scratch = scratch;
        handler.respond(lines, scratch)
    }))
    .map_err(|payload| Fault::Panicked {
        in_handler: true,
        message: panic_message(payload.as_ref()),
    })
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
