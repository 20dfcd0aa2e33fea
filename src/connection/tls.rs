//! The TLS layer (`--tls-cert`): rustls driven by the connection's readiness, owning no
//! socket. Records that came from below are fed to rustls from the reactor's shared read
//! buffer; the plaintext they hold is taken out into a buffer of the turn and handed up;
//! answers are sealed as they are made, and the records rustls makes (answers, handshake
//! flights, alerts, `close_notify`) are taken out at once, to go down with the rest of the
//! connection's output, which the budget counts.
//!
//! What rustls keeps of the input is counted in the budget too ([`TlsLayer::held`]): an
//! unfinished record (up to 16 KiB and a bit), and a handshake message put together from
//! several records (up to 64 KiB). rustls does not say how much it holds, so the layer
//! counts what it gave rustls that has not come out as plaintext since: during the
//! handshake, everything fed (a client's flights are a few KiB); once data flows, the
//! bytes of the record under way, followed by its header. It is never less than what
//! rustls holds beyond its 4 KiB read buffer; a client that feeds records which never
//! open to data is charged for all of them, and the budget stops reading it, then closes
//! it, as it does a client that never ends its line.
//!
//! A failure is a [`Fault::Tls`], with a reason from a short list (counted by reason in the
//! metrics) and rustls' own words; the alert rustls makes for it is sent before the close.

use std::io::{self, Read, Write};
use std::sync::Arc;
use std::time::Instant;

use rustls::{ServerConfig, ServerConnection};

use super::Fault;
pub(crate) use crate::counters::TlsFailure as Failure;

/// Why a TLS handshake failed: the reason rustls' error gives.
fn failure_of(error: &rustls::Error) -> Failure {
    use rustls::Error;
    match error {
        Error::InvalidMessage(_)
        | Error::InappropriateMessage { .. }
        | Error::InappropriateHandshakeMessage { .. }
        | Error::DecryptError
        | Error::PeerMisbehaved(_) => Failure::Protocol,
        Error::PeerIncompatible(_) => Failure::Incompatible,
        Error::NoCertificatesPresented => Failure::NoClientCertificate,
        Error::InvalidCertificate(_) => Failure::BadClientCertificate,
        Error::AlertReceived(_) => Failure::AlertReceived,
        _ => Failure::Other,
    }
}

/// One connection's TLS session.
pub(crate) struct TlsLayer {
    session: ServerConnection,
    /// While the handshake is under way: when it must be complete.
    handshake_deadline: Option<Instant>,
    /// Our `close_notify` is made: nothing more is sealed.
    closed: bool,
    /// The client's `close_notify` has come.
    peer_closed: bool,
    /// Bytes given to rustls that have not come out as plaintext: what rustls may hold.
    unopened: usize,
    /// Where the input stands in its record framing.
    record: RecordCursor,
}

/// Follows the TLS record framing of the input (a 5-byte header whose last two bytes are
/// the body's length, then the body), to know how much of an unfinished record was fed.
#[derive(Debug, Default, Clone, Copy)]
struct RecordCursor {
    /// Bytes of the current record seen, header included.
    seen: usize,
    /// The current record's body length, once its header is whole.
    length: Option<usize>,
    /// The header's length bytes as they come.
    length_bytes: [u8; 2],
}

const RECORD_HEADER: usize = 5;

impl RecordCursor {
    fn advance(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            match self.length {
                None => {
                    let at = self.seen;
                    if at >= 3 {
                        self.length_bytes[at - 3] = bytes[0];
                    }
                    self.seen += 1;
                    bytes = &bytes[1..];
                    if self.seen == RECORD_HEADER {
                        self.length = Some(usize::from(u16::from_be_bytes(self.length_bytes)));
                    }
                }
                Some(length) => {
                    let left = RECORD_HEADER + length - self.seen;
                    let step = left.min(bytes.len());
                    self.seen += step;
                    bytes = &bytes[step..];
                }
            }
            if self
                .length
                .is_some_and(|length| self.seen == RECORD_HEADER + length)
            {
                *self = RecordCursor::default();
            }
        }
    }

    /// Bytes of the record under way seen so far (0 between records).
    fn unfinished(&self) -> usize {
        self.seen
    }
}

/// What feeding records to the layer brought.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Fed {
    /// Bytes of the input taken.
    pub taken: usize,
    /// Handshake messages were processed: work beyond the bytes, as the schedule counts it.
    pub handshake_step: bool,
    /// This completed the handshake.
    pub established: bool,
}

impl TlsLayer {
    pub fn new(config: Arc<ServerConfig>, handshake_deadline: Instant) -> Result<Self, Fault> {
        let mut session = ServerConnection::new(config).map_err(|e| tls_fault(&e, true))?;
        // Sealed records are taken out after every read, so rustls' queue never holds more
        // than one read's answers: its limit would only make a write come up short.
        session.set_buffer_limit(None);
        Ok(TlsLayer {
            session,
            handshake_deadline: Some(handshake_deadline),
            closed: false,
            peer_closed: false,
            unopened: 0,
            record: RecordCursor::default(),
        })
    }

    /// When the handshake must be complete, while it is under way.
    pub fn handshake_deadline(&self) -> Option<Instant> {
        self.handshake_deadline
    }

    /// Feeds records that came from below, at most one read of rustls' (a few KiB) at a
    /// time: the caller takes the plaintext out between calls. A failure leaves its alert
    /// to be taken out with [`TlsLayer::take_records`].
    pub fn feed(&mut self, mut arrived: &[u8]) -> Result<Fed, Fault> {
        let (before, before_bytes) = (arrived.len(), arrived);
        let handshaking = self.session.is_handshaking();
        match self.session.read_tls(&mut arrived) {
            Ok(_) => {}
            // The plaintext buffer is full: the caller takes it out and comes back.
            Err(e) if e.kind() == io::ErrorKind::Other => {}
            // A handshake message over rustls' 64 KiB limit.
            Err(e) => {
                return Err(Fault::Tls {
                    failure: Failure::Protocol,
                    in_handshake: handshaking,
                    message: e.to_string(),
                })
            }
        }
        let taken = before - arrived.len();
        let fed = &before_bytes[..taken];
        self.record.advance(fed);
        self.unopened += taken;
        match self.session.process_new_packets() {
            Ok(state) => self.peer_closed = state.peer_has_closed(),
            Err(error) => return Err(tls_fault(&error, handshaking)),
        }
        let established = handshaking && !self.session.is_handshaking();
        if established {
            self.handshake_deadline = None;
            // The handshake's messages are done with: rustls holds at most the record
            // under way.
            self.unopened = self.record.unfinished();
        }
        Ok(Fed {
            taken,
            handshake_step: handshaking,
            established,
        })
    }

    /// Takes decrypted plaintext into `into`; 0 when there is none for now.
    pub fn take_plaintext(&mut self, into: &mut [u8]) -> usize {
        // WouldBlock: none for now. UnexpectedEof: the socket closed without a close_notify,
        // which the read that saw the end reports.
        let taken = self.session.reader().read(into).unwrap_or_default();
        if taken > 0 {
            // Every whole record fed is opened (rustls processes all it can): what it may
            // still hold is the record under way.
            self.unopened = self.record.unfinished();
        }
        taken
    }

    /// Bytes of input rustls may hold for this connection beyond its own read buffer (an
    /// unfinished record, a handshake message being put together), for the budget.
    pub fn held(&self) -> usize {
        self.unopened
    }

    /// What was agreed, for the log: the protocol version and the cipher suite.
    pub fn agreed(&self) -> String {
        let version = self
            .session
            .protocol_version()
            .map_or_else(|| "TLS".to_owned(), |v| format!("{v:?}"));
        let suite = self
            .session
            .negotiated_cipher_suite()
            .map_or_else(String::new, |s| format!(", {:?}", s.suite()));
        format!("{version}{suite}")
    }

    /// The client sent `close_notify`: no more plaintext will come.
    pub fn peer_closed(&self) -> bool {
        self.peer_closed
    }

    /// Seals `plaintext` as records, to be taken out with [`TlsLayer::take_records`].
    pub fn seal(&mut self, plaintext: &[u8]) -> io::Result<()> {
        if self.closed || plaintext.is_empty() {
            return Ok(());
        }
        self.session.writer().write_all(plaintext)
    }

    /// Makes our `close_notify`, once: after it, nothing more is sealed.
    pub fn close(&mut self) {
        if !self.closed {
            self.closed = true;
            self.session.send_close_notify();
        }
    }

    /// Appends every record rustls has made to `into`.
    pub fn take_records(&mut self, into: &mut Vec<u8>) {
        while self.session.wants_write() {
            match self.session.write_tls(into) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    }
}

fn tls_fault(error: &rustls::Error, in_handshake: bool) -> Fault {
    Fault::Tls {
        failure: failure_of(error),
        in_handshake,
        message: error.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cursor_follows_records_split_anywhere() {
        let mut records = Vec::new();
        for length in [0usize, 1, 300, 16_640] {
            records.extend_from_slice(&[23, 3, 3]);
            records.extend_from_slice(&(length as u16).to_be_bytes());
            records.extend(std::iter::repeat_n(7u8, length));
        }
        for split in [1, 2, 3, 4, 5, 6, 299, 4096, records.len()] {
            let mut cursor = RecordCursor::default();
            for chunk in records.chunks(split) {
                cursor.advance(chunk);
            }
            assert_eq!(cursor.unfinished(), 0, "split {split}");
        }
        let mut cursor = RecordCursor::default();
        cursor.advance(&records[..records.len() - 40]);
        assert_eq!(cursor.unfinished(), RECORD_HEADER + 16_640 - 40);
        cursor.advance(&records[records.len() - 40..]);
        assert_eq!(cursor.unfinished(), 0);
    }
}
