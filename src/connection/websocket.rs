//! The WebSocket layer (`--websocket`, RFC 6455): the HTTP opening (`handshake.rs`), then
//! frames in and messages echoed out. Pure, like `telnet.rs`: given the bytes that came
//! from below, it appends what goes down (the 101, the page, echoed messages, pongs, close
//! frames) to the turn's output, and says whether the connection goes on.
//!
//! Every message comes back whole, as one frame of its kind (text or binary) however many
//! fragments it came in. A message that arrives in one read with nothing before it is
//! unmasked straight into the output: no copy of its own, no allocation. A binary message
//! in one frame that is longer than what has come is echoed as it arrives: its echo's
//! header goes out with the first piece, and each piece is unmasked into the output, so it
//! is never held whole (binary needs no check, and nothing may come between the pieces of
//! one frame). Fragments, and text cut by reads, are put together in the layer's message
//! buffer, which the budget counts and which is released when the message has gone out:
//! an idle WebSocket holds no heap memory but this layer. A message over `--websocket-max-message` is refused with
//! close 1009 as soon as a frame header says it will be.
//!
//! Text is checked as UTF-8 as it arrives, so that a message that cannot become valid is
//! refused (1007) at its first wrong byte, not at its end. Anything RFC 6455 forbids of a
//! client (an unmasked frame, reserved bits, an unknown opcode, a fragmented or long control
//! frame, a continuation of nothing, a 64-bit length with its top bit set, a bad close
//! code) is refused with 1002. A close is answered with the same code, after which nothing
//! more is read. No extension is offered: permessage-deflate is not spoken.

use std::time::Instant;

use crate::counters::{WebSocketCounts, WebSocketOpening};

mod frames;
mod handshake;
mod messages;

use messages::close_frame;

pub(crate) use handshake::{MAX_REQUEST_BYTES, PAGE};

const CONTINUATION: u8 = 0x0;
const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;

const PROTOCOL_ERROR: u16 = 1002;
const INVALID_PAYLOAD: u16 = 1007;
const TOO_BIG: u16 = 1009;
/// What the server sends at shutdown.
pub(crate) const GOING_AWAY: u16 = 1001;

/// The longest frame header a client sends: 2 bytes, 8 of length, 4 of mask.
const MAX_HEADER: usize = 14;
const MAX_CONTROL_PAYLOAD: usize = 125;

/// Whether the connection goes on after what was received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    Going,
    /// Everything to send is in the output: after it the connection ends, and nothing more
    /// is read.
    Ending,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Reading the HTTP request, until the deadline.
    Opening,
    Open,
    /// A close was sent: nothing more is read or sent.
    Closed,
}

/// A frame whose header has come and whose payload is arriving.
#[derive(Debug, Clone, Copy)]
struct Frame {
    opcode: u8,
    fin: bool,
    mask: [u8; 4],
    length: u64,
    seen: u64,
}

/// One connection's WebSocket state: a few hundred bytes and, while a message is under
/// way, its buffer.
pub(crate) struct WebSocketLayer {
    phase: Phase,
    /// When the request must be complete (while opening).
    deadline: Instant,
    /// The request as it arrives (opening only).
    request: Vec<u8>,
    max_message: usize,
    /// A frame header that came in pieces.
    header: [u8; MAX_HEADER],
    header_length: u8,
    frame: Option<Frame>,
    /// The data message under way: its opcode, its payload so far (unmasked), and how far
    /// that is known to be UTF-8.
    message_opcode: Option<u8>,
    message: Vec<u8>,
    checked: usize,
    /// The frame under way is a whole binary message, echoed as it arrives: its echo's
    /// header is out, its payload follows piece by piece, and no other frame may be
    /// written until it is done.
    streaming: bool,
    /// A control frame's payload as it arrives.
    control: [u8; MAX_CONTROL_PAYLOAD],
}

impl WebSocketLayer {
    pub fn new(deadline: Instant, max_message: usize) -> Self {
        WebSocketLayer {
            phase: Phase::Opening,
            deadline,
            request: Vec::new(),
            max_message,
            header: [0; MAX_HEADER],
            header_length: 0,
            frame: None,
            message_opcode: None,
            message: Vec::new(),
            checked: 0,
            streaming: false,
            control: [0; MAX_CONTROL_PAYLOAD],
        }
    }

    /// While the HTTP request is awaited: when it must be complete.
    pub fn opening_deadline(&self) -> Option<Instant> {
        (self.phase == Phase::Opening).then_some(self.deadline)
    }

    /// Heap memory the layer holds for the client: the request or the message under way.
    pub fn held(&self) -> usize {
        self.request.capacity() + self.message.capacity()
    }

    /// Upgraded and not closed: a close frame may still be sent.
    pub fn is_open(&self) -> bool {
        self.phase == Phase::Open
    }

    /// Takes what came from below, appending what goes down to `out`.
    pub fn receive(
        &mut self,
        input: &[u8],
        out: &mut Vec<u8>,
        counts: &mut WebSocketCounts,
    ) -> Step {
        match self.phase {
            Phase::Opening => self.take_request(input, out, counts),
            Phase::Open => self.take_frames(input, out, counts),
            Phase::Closed => Step::Ending,
        }
    }

    /// Sends a close frame with `code` (at shutdown: 1001), if one may still be sent.
    /// Halfway through a streamed message none can be sent: the FIN alone ends it.
    pub fn close(&mut self, code: u16, out: &mut Vec<u8>, counts: &mut WebSocketCounts) {
        if self.phase == Phase::Open {
            self.phase = Phase::Closed;
            if !self.streaming {
                close_frame(Some(code), out, counts);
            }
        }
    }

    fn take_request(
        &mut self,
        input: &[u8],
        out: &mut Vec<u8>,
        counts: &mut WebSocketCounts,
    ) -> Step {
        // Bytes past the bound are not kept: the request is refused at the bound.
        let room = MAX_REQUEST_BYTES - self.request.len();
        let kept = input.len().min(room);
        crate::line::reserve_within(&mut self.request, kept, MAX_REQUEST_BYTES);
        self.request.extend_from_slice(&input[..kept]);
        let request = std::mem::take(&mut self.request);
        let (outcome, length) = match handshake::open(&request, out) {
            handshake::Opening::Incomplete => {
                self.request = request;
                return Step::Going;
            }
            handshake::Opening::Answered { outcome, length } => (outcome, length),
        };
        counts.openings[outcome as usize] += 1;
        if outcome != WebSocketOpening::Upgraded {
            self.phase = Phase::Closed;
            return Step::Ending;
        }
        self.phase = Phase::Open;
        // Frames sent right behind the request: from the copy, then from the input.
        let in_copy = &request[length..];
        let step = self.take_frames(in_copy, out, counts);
        if step == Step::Ending {
            return step;
        }
        self.take_frames(&input[kept..], out, counts)
    }
}
