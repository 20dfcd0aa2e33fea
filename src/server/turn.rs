//! The loop itself, as Redis's `ae.c` keeps it: wait for events (no longer than the nearest
//! timer), serve what the schedule owes first, dispatch each event, serve the backlog's
//! share and the datagrams, then one step before sleeping again.

use super::*;

impl Server {
    /// Serves clients until shutdown. Only a failure of the poll instance itself ends it with
    /// an error; accept errors and client faults never do.
    pub fn run(mut self) -> io::Result<Stopped> {
        let port = self.local_addr().port();
        log::info!("Accepting connections on port {port}");
        if let Some(path) = self.unix_path() {
            log::info!("Accepting connections on Unix socket {}", path.display());
        }
        if let Some(addr) = self.udp_addr() {
            log::info!("Echoing datagrams on UDP port {}", addr.port());
        }
        if self.kv.is_some() {
            log::info!(
                "Answering the guide's KV commands (--kv): CREATE, PUT, GET, DELETE, \
                 SUBSCRIBE; buckets held in this process, up to {} bytes",
                self.config.kv_max_bytes
            );
        }
        self.shutdown.announce_ready(Instant::now(), port);
        let mut events = Events::with_capacity(1024);
        loop {
            let timeout = self.poll_timeout(Instant::now());
            match self.poll.poll(&mut events, timeout) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            let now = Instant::now();
            self.schedule.begin_turn();
            self.acceptor.begin_turn();
            if let Some(kv) = self.kv.as_mut() {
                kv.begin_turn();
            }
            if let Some(metrics) = self.metrics.as_mut() {
                metrics.begin_turn();
            }
            // Light connections first, owed then new: an interactive client never waits for
            // a crowd's reads. Heavy connections' new events are kept for after the owed.
            self.serve_owed(Schedule::next_light, Schedule::charge_fresh, now);
            self.heavy_events.clear();
            for event in events.iter() {
                self.dispatch(event, now);
            }
            self.serve_owed(Schedule::next_heavy, Schedule::charge_fresh, now);
            let heavy_events = std::mem::take(&mut self.heavy_events);
            for &(key, readiness) in &heavy_events {
                self.serve_event(key, readiness, now);
            }
            self.heavy_events = heavy_events;
            self.serve_owed(Schedule::next_backlog, Schedule::charge_backlog, now);
            self.deliver_pushes(now);
            self.serve_owed_scrapers(now);
            let stopped = match self.shutdown.forced() {
                Some(stopped) => Some(stopped),
                None => self.before_sleep(now),
            };
            self.turns.record(now.elapsed());
            if let Some(stopped) = stopped {
                if !matches!(stopped, Stopped::Drained) {
                    self.connections.abandon_all();
                }
                log::info!("{}", self.snapshot().summary());
                return Ok(stopped);
            }
        }
    }

    pub(super) fn dispatch(&mut self, event: &mio::event::Event, now: Instant) {
        match event.token() {
            LISTENER | UNIX_LISTENER => self.accept(now),
            WAKER => {}
            SIGNALS => {
                if self.shutdown.take_signals() {
                    self.reload_tls();
                }
            }
            UDP => self.serve_datagrams(now),
            METRICS => {
                if let Some(metrics) = self.metrics.as_mut() {
                    metrics.accept(self.poll.registry(), now);
                }
            }
            token if MetricsEndpoint::owns(token) => self.serve_scraper(token, now),
            Token(key) => {
                // Errors and hang-ups surface through the read that follows.
                let readiness = Readiness {
                    readable: event.is_readable() || event.is_read_closed() || event.is_error(),
                    until_would_block: event.is_read_closed() || event.is_error(),
                    writable: event.is_writable() || event.is_write_closed(),
                };
                if self.schedule.is_heavy(key) {
                    self.heavy_events.push((key, readiness));
                } else {
                    self.serve_event(key, readiness, now);
                }
            }
        }
    }

    /// Serves the connections one queue of the schedule owes a service, while its share of
    /// the turn lasts, charging each to it.
    pub(super) fn serve_owed(
        &mut self,
        next: fn(&mut Schedule) -> Option<usize>,
        charge: fn(&mut Schedule, usize, usize),
        now: Instant,
    ) {
        while let Some(key) = next(&mut self.schedule) {
            let moved = self.serve(key, Readiness::OWED, now);
            charge(&mut self.schedule, key, moved);
            self.schedule.check_turn_time(moved, now);
        }
    }

    /// Serves a connection's readiness event now, unless the schedule says it waits.
    pub(super) fn serve_event(&mut self, key: usize, readiness: Readiness, now: Instant) {
        if self.schedule.on_event(key) {
            let moved = self.serve(key, readiness, now);
            self.schedule.charge_fresh(key, moved);
            self.schedule.check_turn_time(moved, now);
        }
    }

    /// Echoes the datagrams waiting, within a share of the turn. A failure of the socket
    /// itself ends the datagram echo, never the loop.
    pub(super) fn serve_datagrams(&mut self, now: Instant) {
        let Some(udp) = self.udp.as_mut() else {
            return;
        };
        if let Err(e) = udp.serve_turn(now) {
            log::error!("UDP socket failed: {e}; no longer echoing datagrams");
            udp.close(self.poll.registry());
        }
    }

    /// The work of a turn that no event announces, as Redis's `beforesleep`: room for
    /// connections waiting on the buffer budget (they join the backlog), accepting after a
    /// pause or a spent share, idle expiry, and the shutdown. Returns how the loop ends,
    /// once it does.
    pub(super) fn before_sleep(&mut self, now: Instant) -> Option<Stopped> {
        self.connections
            .look_again_for_room(self.poll.registry(), now);
        for key in self.connections.resume_budget_waiters() {
            self.schedule.requeue(key);
        }
        self.acceptor.resume_if_due(now);
        if self.acceptor.has_work() {
            self.accept(now);
        }
        if self.udp.as_ref().is_some_and(UdpEcho::has_work) {
            self.serve_datagrams(now);
        }
        self.connections.expire_idle(self.poll.registry(), now);
        self.connections.return_freed_memory(now);
        if self.connections.len() == 0 {
            self.schedule.shrink_when_idle(SCHEDULE_KEYS_KEPT);
        }
        self.connections.expire_openings(self.poll.registry(), now);
        if let Some(metrics) = self.metrics.as_mut() {
            metrics.expire(self.poll.registry(), now);
        }
        if self.shutdown.should_begin() {
            self.begin_shutdown(now);
        }
        self.shutdown.before_sleep(now, self.connections.len());
        self.shutdown.finished(now, self.connections.len())
    }

    /// How long the next poll may wait: until the nearest timer, or not at all when work
    /// is left over from the last turn.
    pub(super) fn poll_timeout(&self, now: Instant) -> Option<Duration> {
        let scrapers_owed = self.metrics.as_ref().is_some_and(MetricsEndpoint::has_work);
        let datagrams_owed = self.udp.as_ref().is_some_and(UdpEcho::has_work);
        let pushes_owed = self.kv.as_ref().is_some_and(Kv::has_work);
        if self.schedule.has_work()
            || self.acceptor.has_work()
            || scrapers_owed
            || datagrams_owed
            || pushes_owed
        {
            return Some(Duration::ZERO);
        }
        [
            self.acceptor.paused_until(),
            self.connections.next_idle_deadline(),
            self.connections.next_opening_deadline(),
            self.connections.next_room_look(now),
            self.connections.next_memory_return(),
            self.metrics
                .as_ref()
                .and_then(MetricsEndpoint::next_deadline),
            self.shutdown.next_deadline(),
        ]
        .into_iter()
        .flatten()
        .min()
        .map(|deadline| deadline.saturating_duration_since(now))
    }
}
