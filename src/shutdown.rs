//! How the server lives and ends under a supervisor: signal intake, the [`ShutdownHandle`],
//! the drain deadline, the rule that a second signal stops it at once, and what the service
//! manager is told along the way (readiness, status, stopping, the watchdog).
//!
//! The Elixir original stops with its application; here a graceful stop has three parts that
//! the reactor asks about once per turn: has a stop been asked for (a signal or the handle),
//! has the drain that follows finished or run out of time, and was it cut short by a second
//! signal. What a drain does to each connection stays with the reactor and the connections.

use std::io;
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::{Interest, Registry, Token, Waker};
use sd_notify::NotifyState;
use signal_hook_mio::v1_0::Signals;

/// During a drain the status line is refreshed at most this often.
const STATUS_INTERVAL: Duration = Duration::from_secs(1);

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
    /// Present when a service manager listens for notifications.
    manager: Option<ServiceManager>,
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
            manager: None,
        })
    }

    pub fn handle(&self) -> ShutdownHandle {
        ShutdownHandle {
            requested: Arc::clone(&self.requested),
            waker: Arc::clone(&self.waker),
        }
    }

    /// Takes over SIGINT and SIGTERM process-wide: the first asks for a graceful stop, a
    /// second one during the drain stops at once. With `reload`, SIGHUP too, which
    /// [`Shutdown::take_signals`] reports; without, it keeps its default (it ends the
    /// process, as a closed terminal expects).
    pub fn handle_signals(&mut self, registry: &Registry, reload: bool) -> io::Result<()> {
        let mut wanted = vec![signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM];
        if reload {
            wanted.push(signal_hook::consts::SIGHUP);
        }
        let mut signals = Signals::new(wanted)?;
        registry.register(&mut signals, self.signals_token, Interest::READABLE)?;
        self.signals = Some(signals);
        Ok(())
    }

    /// Reads the signals that arrived (on their token's readiness); true when a reload
    /// (SIGHUP) was asked for.
    pub fn take_signals(&mut self) -> bool {
        let Some(signals) = self.signals.as_mut() else {
            return false;
        };
        let mut reload = false;
        for signal in signals.pending() {
            if signal == signal_hook::consts::SIGHUP {
                reload = true;
            } else if self.requested.swap(true, Ordering::SeqCst) {
                self.forced_by = Some(signal);
            } else {
                log::info!("Received {}; shutting down gracefully", signal_name(signal));
            }
        }
        reload
    }

    pub fn notify_service_manager(&mut self, manager: ServiceManager) {
        self.manager = Some(manager);
    }

    /// Tells the service manager the server is accepting connections.
    pub fn announce_ready(&mut self, now: Instant, port: u16) {
        if let Some(manager) = self.manager.as_mut() {
            let status = format!("Accepting connections on port {port}");
            manager.send(&[NotifyState::Ready, NotifyState::Status(&status)]);
            manager.schedule_watchdog(now);
        }
    }

    /// The step of every turn that no event announces: the watchdog, and during the drain
    /// the count of connections left.
    pub fn before_sleep(&mut self, now: Instant, open: usize) {
        let Some(manager) = self.manager.as_mut() else {
            return;
        };
        if manager.next_watchdog.is_some_and(|due| now >= due) {
            manager.send(&[NotifyState::Watchdog]);
            manager.schedule_watchdog(now);
        }
        if self.deadline.is_some()
            && manager.last_open != Some(open)
            && manager
                .last_status
                .is_none_or(|at| now >= at + STATUS_INTERVAL)
        {
            manager.draining(now, open);
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
        if let Some(manager) = self.manager.as_mut() {
            manager.send(&[NotifyState::Stopping]);
            manager.draining(now, open);
        }
    }

    pub fn is_draining(&self) -> bool {
        self.deadline.is_some()
    }

    /// The nearest moment this part needs the loop awake: the drain's end, the next
    /// watchdog notification.
    pub fn next_deadline(&self) -> Option<Instant> {
        let watchdog = self.manager.as_ref().and_then(|m| m.next_watchdog);
        self.deadline.into_iter().chain(watchdog).min()
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

/// The service manager's notification socket (`NOTIFY_SOCKET`, systemd's `sd_notify`
/// protocol) and its watchdog interval.
///
/// `WATCHDOG=1` is sent by the event loop itself at half the interval, so that a loop stuck
/// inside one connection misses it and the service manager restarts the process.
pub struct ServiceManager {
    socket: UnixDatagram,
    watchdog: Option<Duration>,
    next_watchdog: Option<Instant>,
    last_status: Option<Instant>,
    last_open: Option<usize>,
    /// Failed sends are logged once, not on every watchdog tick.
    send_failed: bool,
}

impl ServiceManager {
    /// The service manager named by `NOTIFY_SOCKET` (a path, or `@name` for Linux's abstract
    /// namespace), with the watchdog of `WATCHDOG_USEC` when `WATCHDOG_PID` is unset or names
    /// this process. `Ok(None)` without `NOTIFY_SOCKET`: nothing is then sent, and nothing
    /// costs.
    pub fn from_environment() -> io::Result<Option<ServiceManager>> {
        let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
            return Ok(None);
        };
        let watchdog = sd_notify::watchdog_enabled().filter(|interval| !interval.is_zero());
        ServiceManager::connect(std::path::Path::new(&path), watchdog).map(Some)
    }

    /// Notifications to the datagram socket at `path`, with a watchdog notification due
    /// every `watchdog` (sent at half that interval).
    pub fn connect(path: &std::path::Path, watchdog: Option<Duration>) -> io::Result<Self> {
        let socket = UnixDatagram::unbound()?;
        match path.as_os_str().as_encoded_bytes() {
            [b'@', name @ ..] => {
                use std::os::linux::net::SocketAddrExt;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
                socket.connect_addr(&addr)?;
            }
            _ => socket.connect(path)?,
        }
        socket.set_nonblocking(true)?;
        Ok(ServiceManager {
            socket,
            watchdog,
            next_watchdog: None,
            last_status: None,
            last_open: None,
            send_failed: false,
        })
    }

    /// The watchdog interval the service manager asked for.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog
    }

    fn schedule_watchdog(&mut self, now: Instant) {
        self.next_watchdog = self.watchdog.map(|interval| now + interval / 2);
    }

    fn draining(&mut self, now: Instant, open: usize) {
        let status = format!("Shutting down: draining {open} connections");
        self.send(&[NotifyState::Status(&status)]);
        self.last_status = Some(now);
        self.last_open = Some(open);
    }

    fn send(&mut self, states: &[NotifyState<'_>]) {
        let message: String = states.iter().map(|state| format!("{state}\n")).collect();
        if let Err(e) = self.socket.send(message.as_bytes()) {
            if !std::mem::replace(&mut self.send_failed, true) {
                log::warn!("Cannot notify the service manager: {e}");
            }
        }
    }
}

fn signal_name(signal: i32) -> String {
    signal_hook::low_level::signal_name(signal)
        .map_or_else(|| format!("signal {signal}"), str::to_owned)
}
