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

mod accept;
mod access;
mod budget;
mod certificates;
pub mod config;
mod connection;
mod counters;
#[doc(hidden)]
pub mod fuzzing;
mod handler;
mod idle;
pub mod line;
mod metrics;
mod schedule;
mod server;
mod shutdown;
#[doc(hidden)]
pub mod stream;
mod table;
mod udp;
mod warning;

pub use warning::LimitedLog;

pub use accept::{sockets_from_service_manager, ServiceSockets};
pub use certificates::{LoadError, TlsFiles};
pub use config::{Config, ConfigError};
pub use handler::{Echo, LineHandler};
pub use server::Server;
pub use shutdown::{ServiceManager, ShutdownHandle, Stopped};
