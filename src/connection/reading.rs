//! The way in: reading a connection's socket into the shared read buffer within its share
//! of the turn, while the budget has room and its unsent echoes are under the high-water
//! mark, and handing what arrived up through its layers (the PROXY header, TLS, telnet) to
//! the framing; the end of stream answers the unfinished tail.

use super::*;

impl Connection {
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

    pub(super) fn read_into(
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
        let mut answer_reach = match self.upper.as_deref() {
            None => buffer.len(),
            Some(UpperLayer::Telnet(_)) => 2 * buffer.len(),
            // Frames out are no longer than frames in, and the page is a few KiB; a
            // message put together earlier goes out too, but the budget counts it already.
            Some(UpperLayer::WebSocket(_)) => buffer.len() + websocket::PAGE.len() + 1024,
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
                if self.upper.is_none() && telnet::opens_negotiation(arrived) {
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
                } else if self.upper.is_some() {
                    // Even with nothing arrived, when the header has just ended: telnet's
                    // offers owed go out then.
                    self.answer_input(arrived, turn, false)?;
                    if self.read_closed {
                        // The WebSocket closed, or its opening was answered for good.
                        return Ok(ReadOutcome::Stopped);
                    }
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
}
