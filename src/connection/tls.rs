//! The TLS layer (`--tls-cert`): rustls driven by the connection's readiness, owning no
//! socket. Records that came from below are fed to rustls from the reactor's shared read
//! buffer; the plaintext they hold is taken out into a buffer of the turn and handed up;
//! answers are sealed as they are made, and the records rustls makes (answers, handshake
//! flights, alerts, `close_notify`) are taken out at once, to go down with the rest of the
//! connection's output. rustls so never holds more than one read's worth of anything, and
//! everything queued for the wire sits in the one output buffer the budget counts.
//!
//! A failure is a [`Fault::Tls`], with a reason from a short list (counted by reason in the
//! metrics) and rustls' own words; the alert rustls makes for it is sent before the close.

use std::io::{self, Read, Write};
use std::sync::Arc;
use std::time::Instant;

use rustls::{ServerConfig, ServerConnection};

use super::Fault;

/// Why a TLS connection failed, as counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    /// Not TLS at all (plaintext, say), or records rustls could not make sense of.
    Protocol,
    /// No protocol version or cipher suite in common.
    Incompatible,
    /// With `--tls-client-ca`, the client presented no certificate.
    NoClientCertificate,
    /// With `--tls-client-ca`, the client's certificate failed verification.
    BadClientCertificate,
    /// The client refused the handshake with an alert (it did not trust our certificate,
    /// say).
    AlertReceived,
    /// The handshake was not complete within `--tls-handshake-timeout`.
    Timeout,
    /// Anything else rustls reported.
    Other,
}

impl Failure {
    pub const ALL: [Failure; 7] = [
        Failure::Protocol,
        Failure::Incompatible,
        Failure::NoClientCertificate,
        Failure::BadClientCertificate,
        Failure::AlertReceived,
        Failure::Timeout,
        Failure::Other,
    ];

    /// The `reason` label's value.
    pub fn label(self) -> &'static str {
        match self {
            Failure::Protocol => "protocol",
            Failure::Incompatible => "incompatible",
            Failure::NoClientCertificate => "no_client_certificate",
            Failure::BadClientCertificate => "bad_client_certificate",
            Failure::AlertReceived => "alert_received",
            Failure::Timeout => "timeout",
            Failure::Other => "other",
        }
    }

    fn of(error: &rustls::Error) -> Failure {
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
        let before = arrived.len();
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
        match self.session.process_new_packets() {
            Ok(state) => self.peer_closed = state.peer_has_closed(),
            Err(error) => return Err(tls_fault(&error, handshaking)),
        }
        let established = handshaking && !self.session.is_handshaking();
        if established {
            self.handshake_deadline = None;
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
        self.session.reader().read(into).unwrap_or_default()
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
        failure: Failure::of(error),
        in_handshake,
        message: error.to_string(),
    }
}
