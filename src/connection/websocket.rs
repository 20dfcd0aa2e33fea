//! The WebSocket layer (`--websocket`, RFC 6455): the HTTP opening (`handshake.rs`), then
//! frames in and messages echoed out. Pure, like `telnet.rs`: given the bytes that came
//! from below, it appends what goes down (the 101, the page, echoed messages, pongs, close
//! frames) to the turn's output, and says whether the connection goes on.
//!
//! Every message comes back whole, as one frame of its kind (text or binary) however many
//! fragments it came in. A message that arrives in one read with nothing before it is
//! unmasked straight into the output: no copy of its own, no allocation. Fragments, and
//! frames cut by reads, are put together in the layer's message buffer, which the budget
//! counts and which is released when the message has gone out: an idle WebSocket holds no
//! heap memory but this layer. A message over `--websocket-max-message` is refused with
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

mod handshake;

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
    /// While opening: when the request must be complete.
    deadline: Option<Instant>,
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
    /// A control frame's payload as it arrives.
    control: [u8; MAX_CONTROL_PAYLOAD],
}

impl WebSocketLayer {
    pub fn new(deadline: Instant, max_message: usize) -> Self {
        WebSocketLayer {
            phase: Phase::Opening,
            deadline: Some(deadline),
            request: Vec::new(),
            max_message,
            header: [0; MAX_HEADER],
            header_length: 0,
            frame: None,
            message_opcode: None,
            message: Vec::new(),
            checked: 0,
            control: [0; MAX_CONTROL_PAYLOAD],
        }
    }

    /// While the HTTP request is awaited: when it must be complete.
    pub fn opening_deadline(&self) -> Option<Instant> {
        self.deadline
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
    pub fn close(&mut self, code: u16, out: &mut Vec<u8>, counts: &mut WebSocketCounts) {
        if self.phase == Phase::Open {
            self.phase = Phase::Closed;
            close_frame(Some(code), out, counts);
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
        self.deadline = None;
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

    fn take_frames(
        &mut self,
        input: &[u8],
        out: &mut Vec<u8>,
        counts: &mut WebSocketCounts,
    ) -> Step {
        let mut at = 0;
        while at < input.len() || self.frame.is_some_and(|frame| frame.seen == frame.length) {
            let frame = match self.frame {
                Some(frame) => frame,
                None => {
                    if self.header_length == 0 {
                        if let Some(taken) = self.whole_message(&input[at..], out, counts) {
                            at += taken;
                            continue;
                        }
                    }
                    match self.take_header(&input[at..], counts) {
                        Ok((taken, frame)) => {
                            at += taken;
                            match frame {
                                Some(frame) => frame,
                                None => continue,
                            }
                        }
                        Err(code) => return self.fail(code, out, counts),
                    }
                }
            };
            let step = (frame.length - frame.seen).min((input.len() - at) as u64) as usize;
            if let Err(code) = self.take_payload(&input[at..at + step]) {
                return self.fail(code, out, counts);
            }
            at += step;
            let Some(frame) = self.frame else { continue };
            if frame.seen < frame.length {
                continue;
            }
            self.frame = None;
            match self.finish_frame(frame, out, counts) {
                Ok(Step::Going) => {}
                Ok(Step::Ending) => return Step::Ending,
                Err(code) => return self.fail(code, out, counts),
            }
        }
        Step::Going
    }

    /// The usual case, done without copies: a whole unfragmented message, header and
    /// payload, at the start of `input`, with no message under way. Unmasked straight into
    /// the output behind its echo's header. Returns the bytes it took, or None when this is
    /// not that case (and the general path decides).
    fn whole_message(
        &mut self,
        input: &[u8],
        out: &mut Vec<u8>,
        counts: &mut WebSocketCounts,
    ) -> Option<usize> {
        let (&first, &second) = (input.first()?, input.get(1)?);
        let opcode = first & 0x0F;
        let plain = first & 0x70 == 0 && second & 0x80 != 0 && first & 0x80 != 0;
        if !plain || !(opcode == TEXT || opcode == BINARY) || self.message_opcode.is_some() {
            return None;
        }
        let (length, header) = match second & 0x7F {
            126 => (
                usize::from(u16::from_be_bytes([*input.get(2)?, *input.get(3)?])),
                8,
            ),
            127 => return None,
            short => (usize::from(short), 6),
        };
        let end = header + length;
        if end > input.len() || length > self.max_message {
            return None;
        }
        let mask = [
            input[header - 4],
            input[header - 3],
            input[header - 2],
            input[header - 1],
        ];
        let start = out.len();
        frame_header(opcode, length, out);
        let payload_at = out.len();
        out.extend_from_slice(&input[header..end]);
        unmask(&mut out[payload_at..], mask, 0);
        if opcode == TEXT && std::str::from_utf8(&out[payload_at..]).is_err() {
            out.truncate(start);
            // The general path refuses it where the first wrong byte is.
            return None;
        }
        counts.messages_received += 1;
        counts.messages_sent += 1;
        counts.bytes_received += length as u64;
        counts.bytes_sent += length as u64;
        Some(end)
    }

    /// Takes header bytes; returns how many it took and the frame once its header is
    /// whole, or the close code for a header RFC 6455 forbids (checked as soon as its
    /// first two bytes are in).
    fn take_header(
        &mut self,
        input: &[u8],
        counts: &mut WebSocketCounts,
    ) -> Result<(usize, Option<Frame>), u16> {
        let mut taken = 0;
        loop {
            let have = usize::from(self.header_length);
            let need = if have < 2 {
                2
            } else {
                header_length(self.header[1])
            };
            if have == need {
                break;
            }
            let Some(&byte) = input.get(taken) else {
                return Ok((taken, None));
            };
            self.header[have] = byte;
            self.header_length += 1;
            taken += 1;
            if have + 1 == 2 {
                self.check_start(self.header[0], self.header[1])?;
            }
        }
        let header = &self.header[..usize::from(self.header_length)];
        let length = match header[1] & 0x7F {
            126 => u64::from(u16::from_be_bytes([header[2], header[3]])),
            127 => u64::from_be_bytes(header[2..10].try_into().unwrap_or_default()),
            short => u64::from(short),
        };
        let mask_at = header.len() - 4;
        let frame = Frame {
            opcode: header[0] & 0x0F,
            fin: header[0] & 0x80 != 0,
            mask: header[mask_at..].try_into().unwrap_or_default(),
            length,
            seen: 0,
        };
        self.header_length = 0;
        if length >> 63 != 0 {
            return Err(PROTOCOL_ERROR);
        }
        if frame.opcode < CLOSE {
            let total = (self.message.len() as u64).saturating_add(length);
            if total > self.max_message as u64 {
                return Err(TOO_BIG);
            }
            if frame.opcode != CONTINUATION {
                self.message_opcode = Some(frame.opcode);
                counts.messages_received += 1;
            }
        }
        self.frame = Some(frame);
        Ok((taken, Some(frame)))
    }

    /// What the first two bytes of a frame header must be.
    fn check_start(&self, first: u8, second: u8) -> Result<(), u16> {
        let opcode = first & 0x0F;
        let fin = first & 0x80 != 0;
        let control = opcode >= CLOSE;
        let known = matches!(opcode, CONTINUATION | TEXT | BINARY | CLOSE | PING | PONG);
        let allowed = first & 0x70 == 0
            && second & 0x80 != 0
            && known
            && (!control || (fin && usize::from(second & 0x7F) <= MAX_CONTROL_PAYLOAD))
            && match opcode {
                CONTINUATION => self.message_opcode.is_some(),
                TEXT | BINARY => self.message_opcode.is_none(),
                _ => true,
            };
        if allowed {
            Ok(())
        } else {
            Err(PROTOCOL_ERROR)
        }
    }

    /// Unmasks a piece of the current frame's payload into where it belongs.
    fn take_payload(&mut self, piece: &[u8]) -> Result<(), u16> {
        let Some(frame) = self.frame.as_mut() else {
            return Ok(());
        };
        let offset = frame.seen;
        frame.seen += piece.len() as u64;
        let (mask, opcode) = (frame.mask, frame.opcode);
        if opcode >= CLOSE {
            let at = offset as usize;
            let into = &mut self.control[at..at + piece.len()];
            into.copy_from_slice(piece);
            unmask(into, mask, offset);
            return Ok(());
        }
        if piece.is_empty() {
            return Ok(());
        }
        let start = self.message.len();
        let needed = start + piece.len();
        if needed > self.message.capacity() {
            // Doubled, so that a message of many small fragments is not copied once per
            // fragment, but never past the largest message, nor ahead of what has come
            // by more than what has come: a header alone does not take memory, and the
            // budget, which counts capacity, sees no more than twice what was received.
            let target = needed.max((2 * start).min(self.max_message));
            self.message.reserve_exact(target - start);
        }
        self.message.extend_from_slice(piece);
        unmask(&mut self.message[start..], mask, offset);
        if self.message_opcode == Some(TEXT) {
            self.check_text(false)?;
        }
        Ok(())
    }

    /// Checks the message's text from where it was last known good. An unfinished
    /// character at the end is awaited unless the message is `finished`.
    fn check_text(&mut self, finished: bool) -> Result<(), u16> {
        match std::str::from_utf8(&self.message[self.checked..]) {
            Ok(_) => self.checked = self.message.len(),
            Err(e) if e.error_len().is_none() && !finished => self.checked += e.valid_up_to(),
            Err(_) => return Err(INVALID_PAYLOAD),
        }
        Ok(())
    }

    /// A frame's payload is complete: a control frame is answered, the last fragment of a
    /// message echoes the message.
    fn finish_frame(
        &mut self,
        frame: Frame,
        out: &mut Vec<u8>,
        counts: &mut WebSocketCounts,
    ) -> Result<Step, u16> {
        let payload = &self.control[..frame.length.min(MAX_CONTROL_PAYLOAD as u64) as usize];
        match frame.opcode {
            PING => {
                frame_header(PONG, payload.len(), out);
                out.extend_from_slice(payload);
                Ok(Step::Going)
            }
            PONG => Ok(Step::Going),
            CLOSE => {
                let code = close_code(payload)?;
                self.phase = Phase::Closed;
                close_frame(code, out, counts);
                Ok(Step::Ending)
            }
            _ if !frame.fin => Ok(Step::Going),
            _ => {
                let opcode = self.message_opcode.take().unwrap_or(BINARY);
                if opcode == TEXT {
                    self.check_text(true)?;
                }
                frame_header(opcode, self.message.len(), out);
                out.extend_from_slice(&self.message);
                counts.messages_sent += 1;
                counts.bytes_received += self.message.len() as u64;
                counts.bytes_sent += self.message.len() as u64;
                // Released: an idle WebSocket holds no message buffer.
                self.message = Vec::new();
                self.checked = 0;
                Ok(Step::Going)
            }
        }
    }

    /// Refuses what the client sent with `code`, and ends.
    #[cold]
    fn fail(&mut self, code: u16, out: &mut Vec<u8>, counts: &mut WebSocketCounts) -> Step {
        self.phase = Phase::Closed;
        self.message = Vec::new();
        close_frame(Some(code), out, counts);
        Step::Ending
    }
}

/// The length of a client's frame header, from its second byte.
fn header_length(second: u8) -> usize {
    let extended = match second & 0x7F {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    2 + extended + 4
}

/// The code to answer a close frame's `payload` with: its own (none for none), or the
/// reason it is refused.
fn close_code(payload: &[u8]) -> Result<Option<u16>, u16> {
    match payload {
        [] => Ok(None),
        [_] => Err(PROTOCOL_ERROR),
        [high, low, reason @ ..] => {
            let code = u16::from_be_bytes([*high, *low]);
            // Those an endpoint may send (RFC 6455 7.4 and the IANA registry): 1004 to
            // 1006 and 1015 are reserved, below 1000 and 1016 to 2999 unassigned.
            let valid = matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999);
            if !valid {
                return Err(PROTOCOL_ERROR);
            }
            if std::str::from_utf8(reason).is_err() {
                return Err(INVALID_PAYLOAD);
            }
            Ok(Some(code))
        }
    }
}

/// Appends a close frame (unmasked: the server's) with `code`, or with no payload.
fn close_frame(code: Option<u16>, out: &mut Vec<u8>, counts: &mut WebSocketCounts) {
    counts.close_sent(code);
    match code {
        Some(code) => {
            frame_header(CLOSE, 2, out);
            out.extend_from_slice(&code.to_be_bytes());
        }
        None => frame_header(CLOSE, 0, out),
    }
}

/// Appends the header of a final, unmasked frame carrying `length` bytes.
fn frame_header(opcode: u8, length: usize, out: &mut Vec<u8>) {
    out.push(0x80 | opcode);
    if length < 126 {
        out.push(length as u8);
    } else if let Ok(short) = u16::try_from(length) {
        out.push(126);
        out.extend_from_slice(&short.to_be_bytes());
    } else {
        out.push(127);
        out.extend_from_slice(&(length as u64).to_be_bytes());
    }
}

/// XORs `bytes`, which start `offset` bytes into a payload, with the frame's mask: eight
/// bytes at a time.
fn unmask(bytes: &mut [u8], mask: [u8; 4], offset: u64) {
    let turn = (offset % 4) as usize;
    let mask = [0, 1, 2, 3].map(|at| mask[(at + turn) % 4]);
    let wide = u64::from_ne_bytes([
        mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3],
    ]);
    let mut chunks = bytes.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let word = u64::from_ne_bytes((&*chunk).try_into().unwrap_or_default()) ^ wide;
        chunk.copy_from_slice(&word.to_ne_bytes());
    }
    for (at, byte) in chunks.into_remainder().iter_mut().enumerate() {
        *byte ^= mask[at % 4];
    }
}
