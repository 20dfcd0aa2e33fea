//! The connection's side of the TLS layer (`tls.rs`): records fed in, the plaintext they
//! open answered and sealed, the records this makes sent down with the rest of the
//! output, and `close_notify` after the last echo.

use super::*;

impl Connection {
    /// Takes what arrived through the TLS layer: records are fed to it, the plaintext they
    /// hold answered and the answers sealed, and the records this makes (answers, handshake
    /// messages, an alert) go out in one write, after a failure too.
    pub(super) fn receive_tls(&mut self, arrived: &[u8], turn: &mut Turn<'_>) -> Result<(), Fault> {
        let Some(mut tls) = self.tls.take() else {
            return Ok(());
        };
        let plaintext = std::mem::take(&mut turn.tls_plaintext);
        let received = self.open_records(&mut tls, arrived, plaintext, turn);
        turn.tls_plaintext = plaintext;
        self.layers_held = tls.held() + self.websocket().map_or(0, WebSocketLayer::held);
        if received.is_ok() && tls.peer_closed() && !self.read_closed {
            // The client's close_notify is its end of stream: the unfinished line is
            // answered and ours follows it.
            self.read_closed = true;
            self.tls = Some(tls);
            self.answer_tail(turn)?;
            self.close_tls(turn)?;
            return received;
        }
        if self.read_closed {
            // The WebSocket ended: our close_notify follows its last frame.
            tls.close();
        }
        let sent = send_records(&mut tls, &mut self.socket, &mut self.output, turn);
        turn.release_large_buffers();
        self.tls = Some(tls);
        received?;
        Ok(sent?)
    }

    pub(super) fn open_records(
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
                if self.speaks_telnet() {
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
    pub(super) fn close_tls(&mut self, turn: &mut Turn<'_>) -> Result<(), Fault> {
        let Some(tls) = self.tls.as_mut() else {
            return Ok(());
        };
        tls.close();
        Ok(send_records(tls, &mut self.socket, &mut self.output, turn)?)
    }
}

/// Takes every record the TLS layer has made and sends them in one write, counted.
pub(super) fn send_records(
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
