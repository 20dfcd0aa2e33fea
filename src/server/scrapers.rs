//! The metrics endpoint's scrapers, served from the loop like any client, and the snapshot
//! of the server's counters and gauges they are answered from.

use super::*;

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
        let Some(metrics) = self.metrics.as_mut() else {
            return;
        };
        let (acceptor, connections) = (&self.acceptor, &self.connections);
        let (traffic, turns, started) = (self.traffic, self.turns, self.started);
        let udp = self.udp.as_ref().map(UdpEcho::counts);
        let tls = self.tls_reloads;
        let kv = self.kv.as_ref().map(Kv::counts);
        let mut snapshot =
            || take_snapshot(acceptor, connections, traffic, turns, started, udp, tls, kv);
        serve(metrics, self.poll.registry(), &mut snapshot);
    }

    pub(super) fn snapshot(&self) -> Snapshot {
        take_snapshot(
            &self.acceptor,
            &self.connections,
            self.traffic,
            self.turns,
            self.started,
            self.udp.as_ref().map(UdpEcho::counts),
            self.tls_reloads,
            self.kv.as_ref().map(Kv::counts),
        )
    }
}

#[allow(clippy::too_many_arguments)]
pub(super) fn take_snapshot(
    acceptor: &Acceptor,
    connections: &ConnectionTable,
    traffic: Traffic,
    turns: TurnTimes,
    start_time: std::time::SystemTime,
    udp: Option<UdpCounts>,
    tls: Option<TlsCounts>,
    kv: Option<KvCounts>,
) -> Snapshot {
    Snapshot {
        accepts: acceptor.counts(),
        open: connections.open_by_transport(),
        closed: connections.closed(),
        traffic,
        buffers: connections.buffer_gauges(),
        turns,
        start_time,
        udp,
        kv,
        tls: tls.map(|counts| TlsCounts {
            failures: connections.tls_failures(),
            ..counts
        }),
    }
}
