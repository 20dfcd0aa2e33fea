//! The metrics as text: the Prometheus text format (version 0.0.4, what `promtool check
//! metrics` reads and what a scraper gets by default) and OpenMetrics 1.0 (when the
//! scraper's `Accept` asks for it), written from one description so the two cannot
//! disagree.
//!
//! The formats differ in three ways that matter here: OpenMetrics names a counter's family
//! without its `_total` suffix, calls a build-info metric an `info`, and ends with `# EOF`.

use std::fmt::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use super::process::ProcessStats;
use super::Snapshot;
use crate::counters::{CloseReason, TURN_BUCKETS};
use crate::stream::Transport;

/// Which text format a scraper gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    Prometheus,
    OpenMetrics,
}

impl Format {
    /// OpenMetrics when `accept` (an `Accept` header) names it, the classic format otherwise.
    pub fn negotiate(accept: Option<&[u8]>) -> Format {
        let names_openmetrics = accept.is_some_and(|value| {
            value
                .windows(b"application/openmetrics-text".len())
                .any(|window| window.eq_ignore_ascii_case(b"application/openmetrics-text"))
        });
        if names_openmetrics {
            Format::OpenMetrics
        } else {
            Format::Prometheus
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Prometheus => "text/plain; version=0.0.4; charset=utf-8",
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

/// Writes metric families in one format.
pub(super) struct Encoder {
    out: String,
    format: Format,
}

impl Encoder {
    /// A counter family `name` (given without `_total`), one sample per label set.
    pub(super) fn counter(
        &mut self,
        name: &str,
        help: &str,
        samples: &[(Option<(&str, &str)>, f64)],
    ) {
        let family = match self.format {
            Format::Prometheus => format!("{name}_total"),
            Format::OpenMetrics => name.to_owned(),
        };
        self.header(&family, help, "counter");
        for (label, value) in samples {
            self.sample(&format!("{name}_total"), *label, *value);
        }
    }

    pub(super) fn gauge(&mut self, name: &str, help: &str, value: f64) {
        self.header(name, help, "gauge");
        self.sample(name, None, value);
    }

    pub(super) fn labelled_gauge(
        &mut self,
        name: &str,
        help: &str,
        samples: &[(Option<(&str, &str)>, f64)],
    ) {
        self.header(name, help, "gauge");
        for (label, value) in samples {
            self.sample(name, *label, *value);
        }
    }

    /// An info metric `name` (given without `_info`): labels that describe the process.
    fn info(&mut self, name: &str, help: &str, label: (&str, &str)) {
        let (family, kind) = match self.format {
            Format::Prometheus => (format!("{name}_info"), "gauge"),
            Format::OpenMetrics => (name.to_owned(), "info"),
        };
        self.header(&family, help, kind);
        self.sample(&format!("{name}_info"), Some(label), 1.0);
    }

    /// A histogram from per-bucket counts (the last one above every bound), its sum and
    /// its count.
    fn histogram(&mut self, name: &str, help: &str, bounds: &[f64], counts: &[u64], sum: f64) {
        self.header(name, help, "histogram");
        let bucket = format!("{name}_bucket");
        let mut cumulative = 0;
        for (bound, count) in bounds.iter().zip(counts) {
            cumulative += count;
            self.sample(&bucket, Some(("le", &bound.to_string())), cumulative as f64);
        }
        let total: u64 = counts.iter().sum();
        self.sample(&bucket, Some(("le", "+Inf")), total as f64);
        self.sample(&format!("{name}_sum"), None, sum);
        self.sample(&format!("{name}_count"), None, total as f64);
    }

    /// A counter family `name` (given without `_total`) whose samples carry two labels.
    pub(super) fn counter_by_two(
        &mut self,
        name: &str,
        help: &str,
        labels: (&str, &str),
        samples: &[((&str, &str), f64)],
    ) {
        let family = match self.format {
            Format::Prometheus => format!("{name}_total"),
            Format::OpenMetrics => name.to_owned(),
        };
        self.header(&family, help, "counter");
        for ((first, second), value) in samples {
            // Label values here are this program's own names: nothing to escape.
            let _ = writeln!(
                self.out,
                "{name}_total{{{}=\"{first}\",{}=\"{second}\"}} {value}",
                labels.0, labels.1
            );
        }
    }

    fn header(&mut self, family: &str, help: &str, kind: &str) {
        let _ = writeln!(self.out, "# HELP {family} {help}");
        let _ = writeln!(self.out, "# TYPE {family} {kind}");
    }

    fn sample(&mut self, name: &str, label: Option<(&str, &str)>, value: f64) {
        self.out.push_str(name);
        if let Some((key, text)) = label {
            let escaped = text
                .replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n");
            let _ = write!(self.out, "{{{key}=\"{escaped}\"}}");
        }
        let _ = writeln!(self.out, " {value}");
    }

    fn finish(mut self) -> String {
        if self.format == Format::OpenMetrics {
            self.out.push_str("# EOF\n");
        }
        self.out
    }
}

fn seconds_since_epoch(time: SystemTime) -> f64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0.0, |since| since.as_secs_f64())
}

/// The whole exposition: the server's metrics, then the process's.
pub(crate) fn render(snapshot: &Snapshot, process: &ProcessStats, format: Format) -> String {
    let mut e = Encoder {
        out: String::with_capacity(4096),
        format,
    };
    let closed = snapshot.all_closed();
    let closed_samples: Vec<(Option<(&str, &str)>, f64)> = CloseReason::ALL
        .iter()
        .map(|&reason| (Some(("reason", reason.label())), closed.get(reason) as f64))
        .collect();
    let traffic = &snapshot.traffic;
    let by_transport = |values: &[u64]| -> Vec<(Option<(&str, &str)>, f64)> {
        Transport::ALL
            .iter()
            .map(|&t| (Some(("transport", t.label())), values[t as usize] as f64))
            .collect()
    };
    e.counter(
        "kv_server_connections_accepted",
        "Connections accepted, including those closed at once for the connection limit, by \
         transport (tcp, or unix with --unix).",
        &by_transport(&snapshot.accepts.accepted),
    );
    let open = snapshot.open.map(|count| count as u64);
    e.labelled_gauge(
        "kv_server_connections_open",
        "Connections being served, by transport.",
        &by_transport(&open),
    );
    e.counter(
        "kv_server_connections_closed",
        "Connections closed, by reason.",
        &closed_samples,
    );
    e.counter(
        "kv_server_bytes_received",
        "Bytes read from clients, by transport.",
        &by_transport(&[
            traffic.bytes_received - traffic.unix_bytes_received,
            traffic.unix_bytes_received,
        ]),
    );
    e.counter(
        "kv_server_bytes_sent",
        "Bytes written to clients, by transport.",
        &by_transport(&[
            traffic.bytes_sent - traffic.unix_bytes_sent,
            traffic.unix_bytes_sent,
        ]),
    );
    e.counter(
        "kv_server_long_lines",
        "Lines longer than --max-line-bytes, echoed in pieces.",
        &[(None, traffic.long_lines as f64)],
    );
    if let Some(udp) = &snapshot.udp {
        e.counter(
            "kv_server_udp_datagrams_received",
            "Datagrams received (with --udp).",
            &[(None, udp.received as f64)],
        );
        e.counter(
            "kv_server_udp_datagrams_sent",
            "Datagrams echoed (with --udp).",
            &[(None, udp.sent as f64)],
        );
        e.counter(
            "kv_server_udp_bytes_received",
            "Datagram payload bytes received (with --udp).",
            &[(None, udp.bytes_received as f64)],
        );
        e.counter(
            "kv_server_udp_bytes_sent",
            "Datagram payload bytes echoed (with --udp).",
            &[(None, udp.bytes_sent as f64)],
        );
        let dropped: Vec<_> = crate::counters::UdpDrop::ALL
            .iter()
            .map(|&reason| {
                (
                    Some(("reason", reason.label())),
                    udp.dropped[reason as usize] as f64,
                )
            })
            .collect();
        e.counter(
            "kv_server_udp_datagrams_dropped",
            "Datagrams not answered, by reason: from a well-known port or the server's own \
             (loop_port), the same bytes from one sender answered too often in a row \
             (repeated), over --udp-rate-per-source (rate_limit) or --udp-rate \
             (server_rate), refused by --allow/--deny (access_denied), no room in the send \
             buffer (send_buffer_full), or a send error.",
            &dropped,
        );
    }
    if let Some(tls) = &snapshot.tls {
        e.counter(
            "kv_server_tls_handshakes",
            "TLS handshakes completed (with --tls-cert).",
            &[(None, traffic.tls_handshakes as f64)],
        );
        let failures: Vec<_> = crate::counters::TlsFailure::ALL
            .iter()
            .map(|&failure| {
                (
                    Some(("reason", failure.label())),
                    tls.failures[failure as usize] as f64,
                )
            })
            .collect();
        e.counter(
            "kv_server_tls_handshake_failures",
            "TLS handshakes that failed, by reason: not TLS or malformed (protocol), nothing \
             in common (incompatible), no client certificate or one that failed verification \
             (with --tls-client-ca), refused by the client with an alert (alert_received), not \
             complete within --tls-handshake-timeout (timeout), or other.",
            &failures,
        );
        e.counter(
            "kv_server_tls_bytes_received",
            "Bytes read from TLS connections, as records on the wire.",
            &[(None, traffic.tls_bytes_received as f64)],
        );
        e.counter(
            "kv_server_tls_bytes_sent",
            "Bytes written to TLS connections, as records on the wire.",
            &[(None, traffic.tls_bytes_sent as f64)],
        );
        e.counter(
            "kv_server_tls_reloads",
            "Reloads of the TLS files on SIGHUP, by result: in force (ok), or failed and \
             changing nothing (failed).",
            &[
                (Some(("result", "ok")), tls.reloads as f64),
                (Some(("result", "failed")), tls.failed_reloads as f64),
            ],
        );
    }
    if let Some(kv) = &snapshot.kv {
        super::store::encode(&mut e, kv);
    }
    if let Some(websocket) = &snapshot.websocket {
        super::websocket::encode(&mut e, websocket);
    }
    e.counter(
        "kv_server_telnet_commands",
        "Telnet commands and negotiations taken out of clients' input (with --telnet).",
        &[(None, traffic.telnet_commands as f64)],
    );
    let buffers = &snapshot.buffers;
    e.gauge(
        "kv_server_reads_paused",
        "Connections not being read until their unsent echoes drain (backpressure).",
        buffers.reads_paused as f64,
    );
    e.gauge(
        "kv_server_reads_waiting_for_budget",
        "Connections not being read until the buffer budget has room.",
        buffers.waiting_for_budget as f64,
    );
    e.gauge(
        "kv_server_buffered_bytes",
        "Bytes held in connection buffers: unfinished lines plus unsent output.",
        buffers.buffered_bytes as f64,
    );
    e.gauge(
        "kv_server_buffer_budget_used_bytes",
        "Memory allocated for connection buffers, as --max-buffered-bytes counts it.",
        buffers.budget_used as f64,
    );
    e.gauge(
        "kv_server_buffer_budget_bytes",
        "The budget for all connection buffers together (--max-buffered-bytes).",
        buffers.budget as f64,
    );
    let turns = &snapshot.turns;
    e.histogram(
        "kv_server_turn_duration_seconds",
        "Time each turn of the event loop took, from the end of one wait for events to the \
         start of the next: the work a fresh event can wait behind.",
        &TURN_BUCKETS,
        &turns.counts,
        turns.total.as_secs_f64(),
    );
    e.gauge(
        "kv_server_turn_duration_max_seconds",
        "The longest turn of the event loop since the server started.",
        turns.longest.as_secs_f64(),
    );
    e.counter(
        "kv_server_accept_pauses",
        "Times accepting paused because descriptors or memory ran out.",
        &[(None, snapshot.accepts.pauses as f64)],
    );
    e.info(
        "kv_server_build",
        "The running build.",
        ("version", env!("CARGO_PKG_VERSION")),
    );
    e.gauge(
        "kv_server_start_time_seconds",
        "When the server started, in seconds since the Unix epoch.",
        seconds_since_epoch(snapshot.start_time),
    );
    process.encode(&mut |name, help, kind, value| match kind {
        "counter" => e.counter(name, help, &[(None, value)]),
        _ => e.gauge(name, help, value),
    });
    e.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{AcceptCounts, BufferGauges, ClosedCounts, Traffic, TurnTimes};

    fn snapshot() -> Snapshot {
        let mut closed = ClosedCounts::default();
        closed.add(CloseReason::ClientClosed, 3);
        Snapshot {
            accepts: AcceptCounts {
                accepted: [5, 0],
                over_limit: 1,
                over_address_limit: 0,
                denied: 0,
                pauses: 0,
            },
            open: [1, 0],
            closed,
            traffic: Traffic {
                bytes_received: 10,
                bytes_sent: 10,
                long_lines: 0,
                telnet_commands: 0,
                unix_bytes_received: 0,
                unix_bytes_sent: 0,
                tls_handshakes: 0,
                tls_handshake_steps: 0,
                tls_bytes_received: 0,
                tls_bytes_sent: 0,
                websocket: Default::default(),
            },
            buffers: BufferGauges::default(),
            turns: {
                let mut turns = TurnTimes::default();
                turns.record(std::time::Duration::from_micros(80));
                turns.record(std::time::Duration::from_millis(3));
                turns.record(std::time::Duration::from_secs(2));
                turns
            },
            start_time: UNIX_EPOCH + std::time::Duration::from_millis(1_500),
            udp: None,
            tls: None,
            kv: None,
            websocket: None,
        }
    }

    #[test]
    fn the_two_formats_name_counters_as_each_expects() {
        let process = ProcessStats::default();
        let text = render(&snapshot(), &process, Format::Prometheus);
        assert!(text.contains("# TYPE kv_server_connections_accepted_total counter\n"));
        assert!(text.contains("kv_server_connections_accepted_total{transport=\"tcp\"} 5\n"));
        assert!(text.contains("kv_server_connections_closed_total{reason=\"client_closed\"} 3\n"));
        assert!(
            text.contains("kv_server_connections_closed_total{reason=\"connection_limit\"} 1\n")
        );
        assert!(text.contains("# TYPE kv_server_build_info gauge\n"));
        assert!(text.contains("kv_server_start_time_seconds 1.5\n"));
        assert!(!text.contains("# EOF"));
        // The turn histogram: cumulative buckets, one turn past every bound.
        assert!(text.contains("# TYPE kv_server_turn_duration_seconds histogram\n"));
        assert!(text.contains("kv_server_turn_duration_seconds_bucket{le=\"0.0001\"} 1\n"));
        assert!(text.contains("kv_server_turn_duration_seconds_bucket{le=\"0.005\"} 2\n"));
        assert!(text.contains("kv_server_turn_duration_seconds_bucket{le=\"1\"} 2\n"));
        assert!(text.contains("kv_server_turn_duration_seconds_bucket{le=\"+Inf\"} 3\n"));
        assert!(text.contains("kv_server_turn_duration_seconds_count 3\n"));
        assert!(text.contains("kv_server_turn_duration_max_seconds 2\n"));

        let open = render(&snapshot(), &process, Format::OpenMetrics);
        assert!(open.contains("# TYPE kv_server_connections_accepted counter\n"));
        assert!(open.contains("kv_server_connections_accepted_total{transport=\"tcp\"} 5\n"));
        assert!(open.contains("# TYPE kv_server_build info\n"));
        assert!(open.ends_with("# EOF\n"));
    }

    #[test]
    fn accept_header_picks_the_format() {
        assert_eq!(Format::negotiate(None), Format::Prometheus);
        assert_eq!(Format::negotiate(Some(b"text/plain")), Format::Prometheus);
        let prometheus_scraper: &[u8] =
            b"application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(
            Format::negotiate(Some(prometheus_scraper)),
            Format::OpenMetrics
        );
    }
}
