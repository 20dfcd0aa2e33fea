//! kv_server: the echo server of the Elixir guide's "Task and gen_tcp" chapter (`KVServer`),
//! as a single-threaded mio reactor.
//!
//! The public API is what the binary, the tests and the benches need: a [`Config`], a
//! [`Server`] that binds (port 0 allowed), tells its real address and runs, a
//! [`ShutdownHandle`] to stop it from another thread, and the [`LineHandler`] trait that
//! decides what each line is answered with ([`Echo`] by default).
//!
//! ```no_run
//! use kv_server::{Config, Server};
//!
//! let server = Server::bind(Config::listening_on("127.0.0.1:0".parse().unwrap())).unwrap();
//! let addr = server.local_addr();
//! let handle = server.shutdown_handle();
//! let thread = std::thread::spawn(move || server.run());
//! // ... talk to `addr` ...
//! handle.shutdown().unwrap();
//! thread.join().unwrap().unwrap();
//! ```

// Where each capability lives (docs/design.md has the whole layout):
/// Where a connection comes from: listeners bound, inherited, Unix; accepting per turn.
mod accept;
/// Whether it is let in: --allow/--deny, --proxy-from, connections per address.
mod access;
/// The one buffer budget: the total held for all clients, who waits, who is closed.
mod budget;
/// The TLS files: read at start-up and on SIGHUP, all or nothing.
mod certificates;
/// Options, defaults, validation, the open-file limit.
pub mod config;
/// One client's state machine, and the stack of byte layers under its framing:
/// PROXY header, TLS, telnet.
mod connection;
/// The counters lower rooms bump and the reasons they count by (metrics reads them).
mod counters;
/// The properties the fuzz targets check, replayed by `cargo test`.
#[doc(hidden)]
pub mod fuzzing;
/// The LineHandler trait and Echo.
mod handler;
/// The idle list: --idle-timeout and idle eviction.
mod idle;
/// Log lines as journald reads them, under systemd.
#[doc(hidden)]
pub mod journal;
/// The guide's key-value store of --kv: grammar, buckets, fan-out to subscribers.
mod kv;
/// Line framing: pure functions over bytes.
pub mod line;
/// The snapshot a scrape sees, its text formats and the scrape endpoint.
mod metrics;
/// Fair turns: each service's share of a turn, the queues of work owed.
mod schedule;
/// The reactor: one file per step of its life (building, the loop, admission, serving,
/// scrapers, reload and shutdown).
mod server;
/// Signals, the shutdown handle, the drain, and the service manager's notifications.
mod shutdown;
/// A client's socket (TCP or Unix) and who is at the other end.
#[doc(hidden)]
pub mod stream;
/// The connection table: the slab, letting in, closing, timers, the budget's side.
mod table;
/// The datagram echo of --udp: batches, loop protection, rates.
mod udp;
/// Lines a client can cause, limited; other crates' lines too.
mod warning;

pub use warning::LimitedLog;

pub use accept::{sockets_from_service_manager, ServiceSockets};
pub use certificates::{LoadError, TlsFiles};
pub use config::{Config, ConfigError};
pub use handler::{Echo, LineHandler};
pub use server::Server;
pub use shutdown::{ServiceManager, ShutdownHandle, Stopped};
