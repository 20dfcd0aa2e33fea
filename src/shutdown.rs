//! How the server ends: signal intake, the [`ShutdownHandle`], the drain deadline and the
//! rule that a second signal stops it at once.
//!
//! The Elixir original stops with its application; here a graceful stop has three parts that
//! the reactor asks about once per turn: has a stop been asked for (a signal or the handle),
//! has the drain that follows finished or run out of time, and was it cut short by a second
//! signal. What a drain does to each connection stays with the reactor and the connections.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::{Interest, Registry, Token, Waker};
use signal_hook_mio::v1_0::Signals;

/// How [`crate::Server::run`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// Shutdown was asked for and every connection drained and closed.
    Drained,
    /// Shutdown was asked for and the shutdown timeout closed this many connections early.
    TimedOut { abandoned: usize },
    /// A second shutdown signal arrived during the drain: stop at once.
    Forced { signal: i32 },
}

/// Asks a running [`crate::Server`] to shut down gracefully, from any thread.
#[derive(Clone)]
pub struct ShutdownHandle {
    requested: Arc<AtomicBool>,
    waker: Arc<Waker>,
}

impl ShutdownHandle {
    /// Stops accepting, lets every connection drain, then makes [`crate::Server::run`] return.
    pub fn shutdown(&self) -> io::Result<()> {
        self.requested.store(true, Ordering::SeqCst);
        self.waker.wake()
    }
}

/// The reactor's side of a graceful stop.
pub(crate) struct Shutdown {
    requested: Arc<AtomicBool>,
    waker: Arc<Waker>,
    signals: Option<Signals>,
    signals_token: Token,
    timeout: Duration,
    /// Set once the drain has begun: when it gives up.
    deadline: Option<Instant>,
    forced_by: Option<i32>,
}

impl Shutdown {
    /// Registers the waker that the handle uses under `waker_token`; signals, if asked for
    /// later, come in under `signals_token`.
    pub fn new(
        registry: &Registry,
        waker_token: Token,
        signals_token: Token,
        timeout: Duration,
    ) -> io::Result<Shutdown> {
        Ok(Shutdown {
            requested: Arc::new(AtomicBool::new(false)),
            waker: Arc::new(Waker::new(registry, waker_token)?),
            signals: None,
            signals_token,
            timeout,
            deadline: None,
            forced_by: None,
        })
    }

    pub fn handle(&self) -> ShutdownHandle {
        ShutdownHandle {
            requested: Arc::clone(&self.requested),
            waker: Arc::clone(&self.waker),
        }
    }

    /// Takes over SIGINT and SIGTERM process-wide: the first asks for a graceful stop, a
    /// second one during the drain stops at once.
    pub fn handle_signals(&mut self, registry: &Registry) -> io::Result<()> {
        let mut signals =
            Signals::new([signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM])?;
        registry.register(&mut signals, self.signals_token, Interest::READABLE)?;
        self.signals = Some(signals);
        Ok(())
    }

    /// Reads the signals that arrived (on their token's readiness).
    pub fn take_signals(&mut self) {
        let Some(signals) = self.signals.as_mut() else {
            return;
        };
        for signal in signals.pending() {
            if self.requested.swap(true, Ordering::SeqCst) {
                self.forced_by = Some(signal);
            } else {
                log::info!("Received {}; shutting down gracefully", signal_name(signal));
            }
        }
    }

    /// A stop was asked for and the drain has not begun yet.
    pub fn should_begin(&self) -> bool {
        self.deadline.is_none() && self.requested.load(Ordering::SeqCst)
    }

    /// Starts the drain clock.
    pub fn begin(&mut self, now: Instant, open: usize) {
        self.deadline = Some(now + self.timeout);
        log::info!("Shutting down: no longer accepting; draining {open} connections");
    }

    pub fn is_draining(&self) -> bool {
        self.deadline.is_some()
    }

    /// When the drain gives up, once it has begun.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// A second signal arrived: the loop must end before doing anything else.
    pub fn forced(&self) -> Option<Stopped> {
        let signal = self.forced_by?;
        log::warn!(
            "Second shutdown signal ({}): stopping at once",
            signal_name(signal)
        );
        Some(Stopped::Forced { signal })
    }

    /// Whether the drain is over at `now` with `open` connections left, and how it ended.
    pub fn finished(&self, now: Instant, open: usize) -> Option<Stopped> {
        let deadline = self.deadline?;
        if open == 0 {
            log::info!("All connections closed; shut down");
            return Some(Stopped::Drained);
        }
        if now >= deadline {
            log::warn!(
                "Shutdown timeout ({:?}) passed; closing {open} connections",
                self.timeout
            );
            return Some(Stopped::TimedOut { abandoned: open });
        }
        None
    }
}

fn signal_name(signal: i32) -> String {
    signal_hook::low_level::signal_name(signal)
        .map_or_else(|| format!("signal {signal}"), str::to_owned)
}
