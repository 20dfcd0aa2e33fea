//! The metrics endpoint's scrapers, served from the loop like any client, and the snapshot
//! of the server's counters and gauges they are answered from.

use super::*;

use crate::counters::{AcceptCounts, BufferGauges, ClosedCounts};

impl Server {
    /// Answers a metrics scraper from a snapshot taken when its request is complete.
    pub(super) fn serve_scraper(&mut self, token: Token, now: Instant) {
        self.with_scrapers(|metrics, registry, snapshot| {
            metrics.serve(registry, token, now, snapshot);
        });
    }

    /// Serves the scrapers whose share of an earlier turn ran out.
    pub(super) fn serve_owed_scrapers(&mut self, now: Instant) {
        if self.metrics.as_ref().is_some_and(MetricsEndpoint::has_work) {
            self.with_scrapers(|metrics, registry, snapshot| {
                metrics.serve_owed(registry, now, snapshot);
            });
        }
    }

    /// Lends the metrics endpoint what serving a scraper needs: the registry, and a way to
    /// take a snapshot of the counters when a request is complete.
    pub(super) fn with_scrapers(
        &mut self,
        serve: impl FnOnce(&mut MetricsEndpoint, &Registry, &mut dyn FnMut() -> Snapshot),
    ) {
        let counted = self.counted();
        let Some(metrics) = self.metrics.as_mut() else {
            return;
        };
        let (acceptor, connections) = (&self.acceptor, &self.connections);
        let mut snapshot = || take_snapshot(acceptor, connections, counted);
        serve(metrics, self.poll.registry(), &mut snapshot);
    }

    pub(super) fn snapshot(&self) -> Snapshot {
        take_snapshot(&self.acceptor, &self.connections, self.counted())
    }

    /// What the server counts beside the acceptor and the connection table; the rest of
    /// the snapshot is theirs (see [`take_snapshot`]).
    fn counted(&self) -> Snapshot {
        Snapshot {
            accepts: AcceptCounts::default(),
            open: [0; Transport::ALL.len()],
            closed: ClosedCounts::default(),
            traffic: self.traffic,
            buffers: BufferGauges::default(),
            turns: self.turns,
            start_time: self.started,
            udp: self.udp.as_ref().map(UdpEcho::counts),
            tls: self.tls_reloads,
            kv: self.kv.as_ref().map(Kv::counts),
            websocket: self.config.websocket.then_some(self.traffic.websocket),
        }
    }
}

/// `counted` completed with what the acceptor and the connection table know now.
pub(super) fn take_snapshot(
    acceptor: &Acceptor,
    connections: &ConnectionTable,
    counted: Snapshot,
) -> Snapshot {
    Snapshot {
        accepts: acceptor.counts(),
        open: connections.open_by_transport(),
        closed: connections.closed(),
        buffers: connections.buffer_gauges(),
        tls: counted.tls.map(|counts| TlsCounts {
            failures: connections.tls_failures(),
            ..counts
        }),
        ..counted
    }
}
