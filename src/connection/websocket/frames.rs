//! Frames in: the decoding of a client's frames as they arrive, cut anywhere by reads:
//! headers put together and checked against what RFC 6455 allows a client, payloads
//! unmasked into the message under way or the control frame, text checked as UTF-8 as it
//! comes. What a completed frame or message is answered with is `messages.rs`.

use super::messages::{frame_header, unmask};
use super::*;

impl WebSocketLayer {
    pub(super) fn take_frames(
        &mut self,
        input: &[u8],
        out: &mut Vec<u8>,
        counts: &mut WebSocketCounts,
    ) -> Step {
        let mut at = 0;
        while at < input.len() {
            let frame = match self.frame {
                Some(frame) => frame,
                None => {
                    if self.header_length == 0 {
                        if let Some(taken) = self.whole_message(&input[at..], out, counts) {
                            at += taken;
                            continue;
                        }
                    }
                    match self.take_header(&input[at..], out, counts) {
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
            if let Err(code) = self.take_payload(&input[at..at + step], out) {
                return self.fail(code, out, counts);
            }
            at += step;
            let Some(frame) = self.frame.filter(|frame| frame.seen == frame.length) else {
                continue;
            };
            self.frame = None;
            match self.finish_frame(frame, out, counts) {
                Ok(Step::Going) => {}
                Ok(Step::Ending) => return Step::Ending,
                Err(code) => return self.fail(code, out, counts),
            }
        }
        Step::Going
    }

    /// Takes header bytes; returns how many it took and the frame once its header is
    /// whole, or the close code for a header RFC 6455 forbids (checked as soon as its
    /// first two bytes are in).
    pub(super) fn take_header(
        &mut self,
        input: &[u8],
        out: &mut Vec<u8>,
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
            if frame.opcode == BINARY && frame.fin {
                // A whole binary message: echoed as it comes.
                self.streaming = true;
                frame_header(BINARY, length as usize, out);
                counts.messages_received += 1;
            } else if frame.opcode != CONTINUATION {
                self.message_opcode = Some(frame.opcode);
                counts.messages_received += 1;
            }
        }
        self.frame = Some(frame);
        Ok((taken, Some(frame)))
    }

    /// What the first two bytes of a frame header must be.
    pub(super) fn check_start(&self, first: u8, second: u8) -> Result<(), u16> {
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

    /// Unmasks a piece of the current frame's payload into where it belongs: the control
    /// frame's buffer, the output (a streamed message), or the message under way.
    pub(super) fn take_payload(&mut self, piece: &[u8], out: &mut Vec<u8>) -> Result<(), u16> {
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
        if self.streaming {
            let start = out.len();
            out.extend_from_slice(piece);
            unmask(&mut out[start..], mask, offset);
            return Ok(());
        }
        if piece.is_empty() {
            return Ok(());
        }
        let start = self.message.len();
        let needed = start + piece.len();
        if needed > self.message.capacity() {
            // Twice what has come, so that a message of many small fragments is not copied
            // once per fragment, but never past the largest message: a header alone does
            // not take memory, and the budget, which counts capacity, sees no more than
            // twice what was received. A large message's buffer is then past the
            // allocator's mmap threshold from its first read on, and goes back to the
            // system as soon as it is freed.
            let target = needed.max((2 * needed).min(self.max_message));
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
    pub(super) fn check_text(&mut self, finished: bool) -> Result<(), u16> {
        match std::str::from_utf8(&self.message[self.checked..]) {
            Ok(_) => self.checked = self.message.len(),
            Err(e) if e.error_len().is_none() && !finished => self.checked += e.valid_up_to(),
            Err(_) => return Err(INVALID_PAYLOAD),
        }
        Ok(())
    }
}

/// The length of a client's frame header, from its second byte.
pub(super) fn header_length(second: u8) -> usize {
    let extended = match second & 0x7F {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    2 + extended + 4
}
