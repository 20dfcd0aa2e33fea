//! The counters that the rooms which see each event bump as they go (the acceptor, the
//! connection table, a connection's turn, the datagram echo) and the reasons they count
//! by. They live below every room that bumps them and below `metrics`, which only reads
//! them to answer a scrape: arrows point down, and no counting room imports `metrics`.
//!
//! Counting costs plain integer additions: no atomics, no allocation.

use std::time::Duration;

use crate::stream::Transport;

/// Why a connection ended. Each reason is counted as `connections_closed_total{reason}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CloseReason {
    /// The client closed its side and everything it sent was answered.
    ClientClosed,
    /// A socket error other than the client's reset.
    Error,
    /// The client reset the connection (as load balancers' health checks and impatient
    /// clients close): an ordinary end, not a failure.
    ClientReset,
    /// No traffic for `--idle-timeout`.
    IdleTimeout,
    /// Accepted over `--max-connections` and closed at once.
    ConnectionLimit,
    /// Accepted over `--max-connections-per-ip` and closed at once.
    AddressLimit,
    /// Idle for `--evict-idle-after` when a new client needed its place.
    IdleEvicted,
    /// Held the most buffered bytes without progress when the buffer budget ran out.
    BufferBudget,
    /// With `--proxy-protocol`, no valid header, or none complete in time.
    ProxyHeader,
    /// With `--tls-cert`, the TLS handshake failed or was not complete in time.
    TlsHandshake,
    /// Refused by `--allow`/`--deny`: at accept, or once a PROXY header named the client.
    AccessDenied,
    /// The peer vanished: keepalive probes or sent bytes went unanswered (`ETIMEDOUT`).
    PeerTimeout,
    /// The line handler panicked.
    HandlerPanic,
    /// Serving the connection panicked outside the handler.
    ServerPanic,
    /// Half-closed by the server's shutdown drain, then closed by the client.
    Drained,
    /// Still open when `--shutdown-timeout` ran out.
    ShutdownTimeout,
    /// With `--kv`: a subscriber whose unsent output passed the high-water mark (it does
    /// not read them).
    SubscriberBehind,
    /// With `--websocket`, no complete HTTP request within the opening time.
    WebSocketHandshake,
}

impl CloseReason {
    pub const ALL: [CloseReason; 18] = [
        CloseReason::ClientClosed,
        CloseReason::Error,
        CloseReason::ClientReset,
        CloseReason::IdleTimeout,
        CloseReason::ConnectionLimit,
        CloseReason::AddressLimit,
        CloseReason::IdleEvicted,
        CloseReason::BufferBudget,
        CloseReason::ProxyHeader,
        CloseReason::TlsHandshake,
        CloseReason::AccessDenied,
        CloseReason::PeerTimeout,
        CloseReason::HandlerPanic,
        CloseReason::ServerPanic,
        CloseReason::Drained,
        CloseReason::ShutdownTimeout,
        CloseReason::SubscriberBehind,
        CloseReason::WebSocketHandshake,
    ];

    /// The `reason` label's value.
    pub fn label(self) -> &'static str {
        match self {
            CloseReason::ClientClosed => "client_closed",
            CloseReason::Error => "error",
            CloseReason::ClientReset => "client_reset",
            CloseReason::IdleTimeout => "idle_timeout",
            CloseReason::ConnectionLimit => "connection_limit",
            CloseReason::AddressLimit => "address_limit",
            CloseReason::IdleEvicted => "idle_evicted",
            CloseReason::BufferBudget => "buffer_budget",
            CloseReason::ProxyHeader => "proxy_header",
            CloseReason::TlsHandshake => "tls_handshake",
            CloseReason::AccessDenied => "access_denied",
            CloseReason::PeerTimeout => "peer_timeout",
            CloseReason::HandlerPanic => "handler_panic",
            CloseReason::ServerPanic => "server_panic",
            CloseReason::Drained => "shutdown_drained",
            CloseReason::ShutdownTimeout => "shutdown_timeout",
            CloseReason::SubscriberBehind => "subscriber_behind",
            CloseReason::WebSocketHandshake => "websocket_handshake",
        }
    }
}

/// Connections closed, by reason.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct ClosedCounts([u64; CloseReason::ALL.len()]);

impl ClosedCounts {
    pub fn add(&mut self, reason: CloseReason, count: u64) {
        self.0[reason as usize] += count;
    }

    pub fn get(&self, reason: CloseReason) -> u64 {
        self.0[reason as usize]
    }
}

/// Bytes and over-long lines, counted by connections as they go.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Traffic {
    pub bytes_received: u64,
    pub bytes_sent: u64,
    /// Lines cut into pieces by the line limit (one per line, however many pieces).
    pub long_lines: u64,
    /// Telnet commands and negotiations taken out of clients' input.
    pub telnet_commands: u64,
    /// Of `bytes_received` and `bytes_sent`, those of connections over a Unix socket:
    /// the rest are TCP's.
    pub unix_bytes_received: u64,
    pub unix_bytes_sent: u64,
    /// TLS handshakes completed.
    pub tls_handshakes: u64,
    /// Handshake flights processed: the schedule's measure of handshake work.
    pub tls_handshake_steps: u64,
    /// Of `bytes_received` and `bytes_sent`, those of TLS connections (records on the wire).
    pub tls_bytes_received: u64,
    pub tls_bytes_sent: u64,
    /// With `--websocket`.
    pub websocket: WebSocketCounts,
}

/// What `--websocket` counts: how each opening ended, messages and their payload bytes
/// each way, and the close frames the server sent, by code.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct WebSocketCounts {
    pub openings: [u64; WebSocketOpening::ALL.len()],
    pub messages_received: u64,
    pub messages_sent: u64,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    pub closes_sent: [u64; CLOSE_CODES.len() + 2],
}

/// The close codes counted apart: those of RFC 6455 and its registry that a server may
/// send. The others the server echoes (the applications' 3000 to 4999, 1012 to 1014) are
/// counted as "other", and a close without a code as "none".
pub(crate) const CLOSE_CODES: [u16; 9] = [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011];

impl WebSocketCounts {
    /// Counts a close frame sent: with `code`, or without one.
    pub fn close_sent(&mut self, code: Option<u16>) {
        let at = match code {
            None => CLOSE_CODES.len() + 1,
            Some(code) => CLOSE_CODES
                .iter()
                .position(|&known| known == code)
                .unwrap_or(CLOSE_CODES.len()),
        };
        self.closes_sent[at] += 1;
    }

    /// The label of `closes_sent[at]`.
    pub fn close_label(at: usize) -> String {
        match CLOSE_CODES.get(at) {
            Some(code) => code.to_string(),
            None if at == CLOSE_CODES.len() => "other".to_owned(),
            None => "none".to_owned(),
        }
    }
}

/// How a WebSocket connection's opening ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WebSocketOpening {
    /// Upgraded (101): a WebSocket from then on.
    Upgraded,
    /// A GET of `/` without Upgrade: the page for people.
    Page,
    /// Another path without Upgrade (404).
    NotFound,
    /// An HTTP request refused: a bad or unsupported upgrade (400, 426), a method other
    /// than GET or HEAD (405), a request over 8 KiB (431).
    Refused,
    /// Bytes that are not an HTTP request: closed without an answer.
    NotHttp,
}

impl WebSocketOpening {
    pub const ALL: [WebSocketOpening; 5] = [
        WebSocketOpening::Upgraded,
        WebSocketOpening::Page,
        WebSocketOpening::NotFound,
        WebSocketOpening::Refused,
        WebSocketOpening::NotHttp,
    ];

    pub fn label(self) -> &'static str {
        match self {
            WebSocketOpening::Upgraded => "upgraded",
            WebSocketOpening::Page => "page",
            WebSocketOpening::NotFound => "not_found",
            WebSocketOpening::Refused => "refused",
            WebSocketOpening::NotHttp => "not_http",
        }
    }
}

/// Datagrams with `--udp`, counted by the datagram echo.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct UdpCounts {
    pub received: u64,
    pub sent: u64,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    /// Datagrams not answered, by [`UdpDrop`] reason.
    pub dropped: [u64; UdpDrop::ALL.len()],
}

/// Connections let in, and how often accepting paused; counted by the acceptor.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct AcceptCounts {
    /// Every accepted socket, including those closed at once for the connection limit, by
    /// [`Transport`].
    pub accepted: [u64; Transport::ALL.len()],
    pub over_limit: u64,
    pub over_address_limit: u64,
    /// Refused by `--allow`/`--deny` at accept.
    pub denied: u64,
    pub pauses: u64,
}

/// Upper bounds of the turn-duration histogram's buckets, in seconds.
pub(crate) const TURN_BUCKETS: [f64; 12] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

/// How long the turns of the loop take, from the end of one wait for events to the start
/// of the next: the other work a fresh event can wait behind, which the schedule bounds.
/// Recording one costs a clock read and a short scan, once per turn.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct TurnTimes {
    /// Turns per bucket of [`TURN_BUCKETS`], the last for longer ones.
    pub counts: [u64; TURN_BUCKETS.len() + 1],
    pub total: Duration,
    pub longest: Duration,
}

impl TurnTimes {
    pub fn record(&mut self, turn: Duration) {
        let seconds = turn.as_secs_f64();
        let bucket = TURN_BUCKETS
            .iter()
            .position(|&bound| seconds <= bound)
            .unwrap_or(TURN_BUCKETS.len());
        self.counts[bucket] += 1;
        self.total += turn;
        self.longest = self.longest.max(turn);
    }
}

/// TLS beyond what [`Traffic`] counts, with `--tls-cert`.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct TlsCounts {
    /// Handshakes that failed, by [`TlsFailure`] reason.
    pub failures: [u64; TlsFailure::ALL.len()],
    /// Reloads on SIGHUP that took effect, and those that failed and changed nothing.
    pub reloads: u64,
    pub failed_reloads: u64,
}

/// What the connections hold in their buffers, walked at scrape time so that requests pay
/// nothing for it.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct BufferGauges {
    /// Connections not read until their unsent echoes drain (backpressure).
    pub reads_paused: usize,
    /// Connections not read until the buffer budget has room.
    pub waiting_for_budget: usize,
    /// Unfinished lines plus unsent output, in bytes.
    pub buffered_bytes: usize,
    /// The buffers' allocated capacity, which the budget counts.
    pub budget_used: usize,
    /// `--max-buffered-bytes`.
    pub budget: usize,
}

/// Why a datagram was not answered (with `--udp`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum UdpDrop {
    /// From a well-known port (0 to 1023) or this server's own port.
    LoopPort,
    /// Its source is over `--udp-rate-per-source`.
    RateLimit,
    /// `--allow`/`--deny` refuse its source.
    AccessDenied,
    /// The socket's send buffer was full.
    SendBufferFull,
    /// Sending failed otherwise.
    SendError,
    /// The same bytes from the same sender, answered 16 times in a row already: a
    /// loop.
    Repeated,
    /// The whole server is over `--udp-rate`.
    ServerRate,
}

impl UdpDrop {
    pub const ALL: [UdpDrop; 7] = [
        UdpDrop::LoopPort,
        UdpDrop::RateLimit,
        UdpDrop::AccessDenied,
        UdpDrop::SendBufferFull,
        UdpDrop::SendError,
        UdpDrop::Repeated,
        UdpDrop::ServerRate,
    ];

    pub fn label(self) -> &'static str {
        match self {
            UdpDrop::LoopPort => "loop_port",
            UdpDrop::RateLimit => "rate_limit",
            UdpDrop::AccessDenied => "access_denied",
            UdpDrop::SendBufferFull => "send_buffer_full",
            UdpDrop::SendError => "send_error",
            UdpDrop::Repeated => "repeated",
            UdpDrop::ServerRate => "server_rate",
        }
    }
}

/// Why a TLS connection failed (with `--tls-cert`), as counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TlsFailure {
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

impl TlsFailure {
    pub const ALL: [TlsFailure; 7] = [
        TlsFailure::Protocol,
        TlsFailure::Incompatible,
        TlsFailure::NoClientCertificate,
        TlsFailure::BadClientCertificate,
        TlsFailure::AlertReceived,
        TlsFailure::Timeout,
        TlsFailure::Other,
    ];

    /// The `reason` label's value.
    pub fn label(self) -> &'static str {
        match self {
            TlsFailure::Protocol => "protocol",
            TlsFailure::Incompatible => "incompatible",
            TlsFailure::NoClientCertificate => "no_client_certificate",
            TlsFailure::BadClientCertificate => "bad_client_certificate",
            TlsFailure::AlertReceived => "alert_received",
            TlsFailure::Timeout => "timeout",
            TlsFailure::Other => "other",
        }
    }
}

/// A kind of command, as `--kv` counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KvCommand {
    Create,
    Put,
    Get,
    Delete,
    Subscribe,
    /// Not one of the five, a wrong number of words, or an empty line.
    Unknown,
    /// A line longer than `--max-line-bytes`, refused unread.
    TooLong,
}

impl KvCommand {
    pub const ALL: [KvCommand; 7] = [
        KvCommand::Create,
        KvCommand::Put,
        KvCommand::Get,
        KvCommand::Delete,
        KvCommand::Subscribe,
        KvCommand::Unknown,
        KvCommand::TooLong,
    ];

    pub fn label(self) -> &'static str {
        match self {
            KvCommand::Create => "create",
            KvCommand::Put => "put",
            KvCommand::Get => "get",
            KvCommand::Delete => "delete",
            KvCommand::Subscribe => "subscribe",
            KvCommand::Unknown => "unknown",
            KvCommand::TooLong => "too_long",
        }
    }
}

/// How a command ended, as `--kv` counts it: its reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KvOutcome {
    /// Done (`OK`, a GET's value, or a SUBSCRIBE's silence).
    Ok,
    /// The bucket does not exist (`NOT FOUND`).
    NotFound,
    /// Refused: over `--kv-max-bytes`, or a line over `--max-line-bytes` (`ERROR`).
    Error,
    /// `UNKNOWN COMMAND`.
    UnknownCommand,
}

impl KvOutcome {
    pub const ALL: [KvOutcome; 4] = [
        KvOutcome::Ok,
        KvOutcome::NotFound,
        KvOutcome::Error,
        KvOutcome::UnknownCommand,
    ];

    pub fn label(self) -> &'static str {
        match self {
            KvOutcome::Ok => "ok",
            KvOutcome::NotFound => "not_found",
            KvOutcome::Error => "error",
            KvOutcome::UnknownCommand => "unknown_command",
        }
    }
}

/// What the store (`--kv`) has done and holds.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct KvCounts {
    /// Commands by [`KvCommand`] and [`KvOutcome`].
    pub commands: [[u64; KvOutcome::ALL.len()]; KvCommand::ALL.len()],
    /// Pushes written to subscribers (or queued behind their unsent output).
    pub pushes_sent: u64,
    /// Pushes not delivered: the subscriber had fallen behind (and was closed) or was
    /// closing.
    pub pushes_dropped: u64,
    pub buckets: u64,
    pub keys: u64,
    /// Bytes counted against `--kv-max-bytes`, and that budget.
    pub bytes: u64,
    pub max_bytes: u64,
    /// Subscriptions listed (those of connections gone, until compacted, included).
    pub subscriptions: u64,
    /// Deliveries owed by the fan-out queue, and the bytes it holds.
    pub pushes_owed: u64,
    pub pushes_held_bytes: u64,
}
