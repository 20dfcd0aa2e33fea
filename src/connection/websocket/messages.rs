//! Messages out: the usual whole message echoed without a copy, a completed message or
//! control frame answered, a client refused with its close code, and the server's frames
//! as RFC 6455 makes them (final, unmasked).

use super::*;

impl WebSocketLayer {
    /// The usual case, done without copies: a whole unfragmented message, header and
    /// payload, at the start of `input`, with no message under way. Unmasked straight into
    /// the output behind its echo's header. Returns the bytes it took, or None when this is
    /// not that case (and the general path decides).
    pub(super) fn whole_message(
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

    /// A frame's payload is complete: a control frame is answered, the last fragment of a
    /// message echoes the message.
    pub(super) fn finish_frame(
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
            _ if self.streaming => {
                self.streaming = false;
                counts.messages_sent += 1;
                counts.bytes_received += frame.length;
                counts.bytes_sent += frame.length;
                Ok(Step::Going)
            }
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
    pub(super) fn fail(
        &mut self,
        code: u16,
        out: &mut Vec<u8>,
        counts: &mut WebSocketCounts,
    ) -> Step {
        self.phase = Phase::Closed;
        self.message = Vec::new();
        // Never halfway through a streamed message: its frame ends before any header or
        // check that could fail. Were it so, a close could not be sent in its middle.
        if !self.streaming {
            close_frame(Some(code), out, counts);
        }
        Step::Ending
    }
}

/// The code to answer a close frame's `payload` with: its own (none for none), or the
/// reason it is refused.
pub(super) fn close_code(payload: &[u8]) -> Result<Option<u16>, u16> {
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
pub(super) fn close_frame(code: Option<u16>, out: &mut Vec<u8>, counts: &mut WebSocketCounts) {
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
pub(super) fn frame_header(opcode: u8, length: usize, out: &mut Vec<u8>) {
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
pub(super) fn unmask(bytes: &mut [u8], mask: [u8; 4], offset: u64) {
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
