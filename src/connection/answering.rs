//! From bytes to answers: complete lines framed (`line.rs`) and handed to the handler, the
//! answers written straight from the shared read buffer where the echo allows, and the
//! unfinished tail kept, or answered at the end of stream.

use super::*;

impl Connection {
    /// Answers what came up from below the telnet layer: decoded first when the connection
    /// speaks telnet. Without layers, each answer goes straight to the socket; with them,
    /// one read's answers and replies are gathered, and go out in one write, or, when
    /// `sealed`, stay gathered for TLS to seal.
    pub(super) fn answer_input(
        &mut self,
        arrived: &[u8],
        turn: &mut Turn<'_>,
        sealed: bool,
    ) -> Result<(), Fault> {
        let Some(mut upper) = self.upper.take() else {
            if !sealed {
                return self.answer(arrived, turn, Delivery::Socket);
            }
            turn.gathered.clear();
            return self.answer(arrived, turn, Delivery::Gathered);
        };
        turn.gathered.clear();
        let answered = match &mut *upper {
            UpperLayer::Telnet(layer) => self.answer_telnet(layer, arrived, turn),
            UpperLayer::WebSocket(layer) => {
                let step = layer.receive(arrived, turn.gathered, &mut turn.traffic.websocket);
                // With TLS, what TLS holds is added when its read is done.
                self.layers_held = layer.held();
                if step == websocket::Step::Ending {
                    // Closed, refused or answered: what is gathered is the last output.
                    self.read_closed = true;
                }
                Ok(())
            }
        };
        self.upper = Some(upper);
        answered?;
        if !sealed && !turn.gathered.is_empty() {
            turn.traffic.bytes_sent += self.output.send(&mut self.socket, turn.gathered)? as u64;
            turn.release_large_buffers();
        }
        Ok(())
    }

    /// Decodes what came up as telnet, answering its data and gathering its replies.
    fn answer_telnet(
        &mut self,
        layer: &mut TelnetLayer,
        arrived: &[u8],
        turn: &mut Turn<'_>,
    ) -> Result<(), Fault> {
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
        turn.traffic.telnet_commands += decoded? as u64;
        Ok(())
    }

    /// Frames `data` after the unfinished line and answers each run of complete lines.
    pub(super) fn answer(
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
    pub(super) fn answer_tail(&mut self, turn: &mut Turn<'_>) -> Result<(), Fault> {
        if self.partial.is_empty() {
            return Ok(());
        }
        let escapes_iac = self.speaks_telnet();
        let (socket, output) = (&mut self.socket, &mut self.output);
        let continued = self.in_long_line;
        if self.upper.is_none() && self.tls.is_none() {
            return line::finish(&mut self.partial, &mut |piece| {
                let answer = respond(&mut *turn.handler, piece, turn.scratch, continued)?;
                turn.traffic.bytes_sent += output.send(socket, answer)? as u64;
                Ok(())
            });
        }
        // With layers, the tail's answers go down in one piece, as a read's do.
        turn.gathered.clear();
        line::finish(&mut self.partial, &mut |piece| {
            let answer = respond(&mut *turn.handler, piece, turn.scratch, continued)?;
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

impl Connection {
    /// Sends `message`, a push this connection is owed as a subscriber (`--kv`), down
    /// through its layers as its answers go, behind any output still queued. Nothing is
    /// sent once the server has half-closed it. Returns whether it was sent.
    pub fn push(&mut self, message: &[u8], turn: &mut Turn<'_>) -> Result<bool, Fault> {
        if self.write_shut {
            return Ok(false);
        }
        // Escaped in the turn's scratch buffer, lent out while the turn is in use.
        let escaped = self.speaks_telnet().then(|| {
            let mut escaped = std::mem::take(turn.scratch);
            escaped.clear();
            telnet::escape_into(message, &mut escaped);
            escaped
        });
        let bytes = escaped.as_deref().unwrap_or(message);
        let sent = self.send_down(bytes, turn);
        if let Some(escaped) = escaped {
            *turn.scratch = escaped;
        }
        sent?;
        Ok(true)
    }

    /// With `--websocket`, at shutdown: a close frame (1001, going away) after the last
    /// echo, if the connection is still open as a WebSocket.
    #[cold]
    pub(super) fn close_websocket(&mut self, turn: &mut Turn<'_>) -> Result<(), Fault> {
        let Some(UpperLayer::WebSocket(layer)) = self.upper.as_deref_mut() else {
            return Ok(());
        };
        if !layer.is_open() {
            return Ok(());
        }
        let mut frame = std::mem::take(turn.scratch);
        frame.clear();
        layer.close(
            websocket::GOING_AWAY,
            &mut frame,
            &mut turn.traffic.websocket,
        );
        let sent = self.send_down(&frame, turn);
        *turn.scratch = frame;
        Ok(sent?)
    }

    /// Sends bytes of the connection's own (not answers to a read) down through TLS, if
    /// it speaks it, behind any output still queued.
    fn send_down(&mut self, bytes: &[u8], turn: &mut Turn<'_>) -> io::Result<()> {
        let (socket, output) = (&mut self.socket, &mut self.output);
        match self.tls.as_mut() {
            Some(tls) => tls
                .seal(bytes)
                .and_then(|()| send_records(tls, socket, output, turn)),
            None => output
                .send(socket, bytes)
                .map(|sent| turn.traffic.bytes_sent += sent as u64),
        }
    }
}

/// Where a connection's answers go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Delivery {
    /// To the socket, each as it is made.
    Socket,
    /// Escaped as telnet data into the turn's gathered output.
    Escaped,
    /// Into the turn's gathered output as they are, for TLS to seal.
    Gathered,
}

/// Frames `data` after the unfinished line `partial`, asks the handler for the answer to
/// each run of complete lines and hands it to `deliver`, counting long lines as they start.
pub(super) fn frame_answers(
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
        let continued = *in_long_line;
        if cut && !continued {
            turn.traffic.long_lines += 1;
        }
        *in_long_line = cut;
        let answer = respond(&mut *turn.handler, piece, turn.scratch, continued)?;
        deliver(answer, turn.traffic, turn.gathered)
    })
}

/// Telnet's Erase Character: the last character of the unfinished line goes, all of its
/// bytes when it is UTF-8.
pub(super) fn erase_character(partial: &mut Vec<u8>) {
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
pub(super) fn respond<'a>(
    handler: &mut dyn LineHandler,
    lines: &'a [u8],
    scratch: &'a mut Vec<u8>,
    continued: bool,
) -> Result<&'a [u8], Fault> {
    scratch.clear();
    catch_unwind(AssertUnwindSafe(move || {
        // Moving the borrow in makes the closure FnOnce, so the answer outlives the call.
        let scratch = scratch;
        if continued {
            handler.respond_continued(lines, scratch)
        } else {
            handler.respond(lines, scratch)
        }
    }))
    .map_err(|payload| Fault::Panicked {
        in_handler: true,
        message: panic_message(payload.as_ref()),
    })
}
