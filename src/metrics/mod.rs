//! What the server counts and how a scrape sees it: the close reasons, the traffic counters
//! that connections bump as they go, the snapshot a scrape is answered from, and the
//! endpoint that answers it (`--metrics`), served by the same event loop.
//!
//! Counting costs plain integer additions in the room that sees each event (the acceptor,
//! the connection table, a connection's turn): no atomics, no allocation. Gauges that would
//! need bookkeeping on every request (reads paused, bytes buffered) are computed when a
//! scrape asks, by walking the connection table.

pub(crate) mod endpoint;
mod exposition;
mod process;
mod store;
mod websocket;

use std::time::SystemTime;

use crate::counters::{
    AcceptCounts, BufferGauges, CloseReason, ClosedCounts, KvCounts, TlsCounts, Traffic, TurnTimes,
    UdpCounts, WebSocketCounts,
};
use crate::stream::Transport;

/// Everything a scrape shows of the echo server, taken at one moment.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Snapshot {
    pub accepts: AcceptCounts,
    /// Connections being served, by [`Transport`].
    pub open: [usize; Transport::ALL.len()],
    pub closed: ClosedCounts,
    pub traffic: Traffic,
    pub buffers: BufferGauges,
    pub turns: TurnTimes,
    pub start_time: SystemTime,
    /// With `--udp`.
    pub udp: Option<UdpCounts>,
    /// With `--tls-cert`.
    pub tls: Option<TlsCounts>,
    /// With `--kv`.
    pub kv: Option<KvCounts>,
    /// With `--websocket`.
    pub websocket: Option<WebSocketCounts>,
}

impl Snapshot {
    /// Closes by reason, with the acceptor's over-limit closes among them.
    pub fn all_closed(&self) -> ClosedCounts {
        let mut closed = self.closed;
        closed.add(CloseReason::ConnectionLimit, self.accepts.over_limit);
        closed.add(CloseReason::AddressLimit, self.accepts.over_address_limit);
        closed.add(CloseReason::AccessDenied, self.accepts.denied);
        closed
    }

    /// The run in one line, for the log at shutdown.
    pub fn summary(&self) -> String {
        let closed = self.all_closed();
        let endings: Vec<String> = CloseReason::ALL
            .iter()
            .filter(|&&reason| closed.get(reason) > 0)
            .map(|&reason| format!("{} {}", reason.label(), closed.get(reason)))
            .collect();
        let endings = if endings.is_empty() {
            "none".to_owned()
        } else {
            endings.join(", ")
        };
        let datagrams = match &self.udp {
            Some(udp) => format!(
                "; {} datagrams in, {} echoed, {} dropped",
                udp.received,
                udp.sent,
                udp.dropped.iter().sum::<u64>()
            ),
            None => String::new(),
        };
        format!(
            "Served {}; {} bytes in, {} bytes out; {}; ended: {endings}{datagrams}",
            counted(self.accepts.accepted.iter().sum::<u64>(), "connection"),
            self.traffic.bytes_received,
            self.traffic.bytes_sent,
            counted(self.traffic.long_lines, "long line")
        )
    }
}

/// "1 connection", "2 connections": a count and its noun, in the number it takes.
fn counted(count: u64, noun: &str) -> String {
    if count == 1 {
        format!("1 {noun}")
    } else {
        format!("{count} {noun}s")
    }
}
