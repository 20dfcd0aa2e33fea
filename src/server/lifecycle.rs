//! What changes the server's course from outside the loop's routine: SIGHUP, which reloads
//! the TLS files, and the start of a graceful shutdown, which stops accepting and starts
//! draining every connection.

use super::*;

impl Server {
    /// SIGHUP: reads the TLS files again. New connections get what they say; established
    /// ones keep what they began with; a file that fails changes nothing.
    pub(super) fn reload_tls(&mut self) {
        if self.config.tls_self_signed {
            log::info!(
                "Received SIGHUP; nothing to reload: the certificate of --tls-self-signed \
                 lasts as long as the process"
            );
            return;
        }
        let (Some(files), Some(counts)) = (&self.config.tls, self.tls_reloads.as_mut()) else {
            log::info!("Received SIGHUP; nothing to reload without --tls-cert");
            return;
        };
        // The ticket keys and ALPN carry over: a ticket issued before resumes after.
        let Some(shared) = self
            .connections
            .tls()
            .map(|tls| certificates::Shared::of(tls))
        else {
            return;
        };
        match certificates::load(files, &shared) {
            Ok(config) => {
                self.connections.set_tls(config);
                counts.reloads += 1;
                log::info!(
                    "Received SIGHUP; reloaded {} and {}{}: new connections use them",
                    files.cert.display(),
                    files.key.display(),
                    files
                        .client_ca
                        .as_ref()
                        .map(|ca| format!(" and {}", ca.display()))
                        .unwrap_or_default()
                );
            }
            Err(e) => {
                counts.failed_reloads += 1;
                log::error!("Received SIGHUP; TLS files not reloaded, the old ones stay: {e}");
            }
        }
    }

    /// Stops accepting and starts draining every connection.
    pub(super) fn begin_shutdown(&mut self, now: Instant) {
        if self.acceptor.owns_queue() {
            // The kernel resets whatever is still queued when the listener closes, though
            // it acknowledged those handshakes: take them in, and they drain like the rest.
            // A queue that a service manager holds is left for the next instance.
            loop {
                self.acceptor.begin_turn();
                self.accept(now);
                if !self.acceptor.has_work() {
                    break;
                }
            }
        }
        self.acceptor.close(self.poll.registry());
        // Datagrams have nothing to drain: the socket closes with the listener.
        if let Some(udp) = self.udp.as_mut() {
            udp.close(self.poll.registry());
        }
        self.shutdown.begin(now, self.connections.len());
        for key in self.connections.keys() {
            if let Some(connection) = self.connections.get_mut(key) {
                connection.begin_drain();
            }
            // Read what already arrived (it was acknowledged) and half-close if all is out;
            // what a share of this turn leaves goes on through the backlog.
            self.serve(key, Readiness::OWED, now);
        }
    }
}
