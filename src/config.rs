//! Server options: their defaults, their validation, and the open-file limit they depend on.
//!
//! Both front ends build a [`Config`]: the command line in `main.rs` and the library API that
//! tests and benches use. Keeping defaults and checks here means the two cannot disagree.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

pub use ipnet::IpNet;

/// The port the Elixir guide's `KVServer` listens on.
pub const DEFAULT_PORT: u16 = 4040;
/// Longest line handed to the handler in one piece; longer lines are echoed in pieces.
pub const DEFAULT_MAX_LINE_BYTES: usize = 64 * 1024;
/// How long a graceful shutdown waits for connections to drain.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);
/// Unsent output above which a connection stops being read (TCP backpressure).
pub const DEFAULT_OUTPUT_HIGH_WATER: usize = 256 * 1024;
/// Unsent output below which a paused connection is read again.
pub const DEFAULT_OUTPUT_LOW_WATER: usize = 64 * 1024;
/// Size of the one read buffer the whole reactor shares.
pub const DEFAULT_READ_BUFFER_BYTES: usize = 64 * 1024;
/// How long a metrics scraper may take to send a request or to take its answer.
pub const DEFAULT_METRICS_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a connection may take to send its PROXY protocol header.
pub const DEFAULT_PROXY_HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// As long as a PROXY header may take: a client that has not finished its handshake by then
/// is stalled or not speaking TLS.
pub const DEFAULT_TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// The budget for the bytes held in all connections' buffers together.
pub const DEFAULT_MAX_BUFFERED_BYTES: usize = 64 * 1024 * 1024;
/// Silence on a connection after which TCP keepalive probes begin (Redis: `tcp-keepalive
/// 300`); a peer that answers none of three is gone.
pub const DEFAULT_TCP_KEEPALIVE: Duration = Duration::from_secs(300);
/// With `--udp`: datagrams a second answered per source address. Plenty for a person or a
/// latency probe; a forged source cannot turn the server into a flood toward anyone. Load
/// tests from one address raise it, or turn it off with 0.
pub const DEFAULT_UDP_RATE_PER_SOURCE: u32 = 1000;
/// With `--udp`: datagrams a second answered by the whole server, whatever their sources:
/// about a fifth of a core's sending here (2 us per datagram), so that no mix of forged
/// sources can make the echo spend a core.
pub const DEFAULT_UDP_RATE: u32 = 100_000;
/// With `--kv`: the bytes the buckets may hold, names, keys, values and bookkeeping counted.
pub const DEFAULT_KV_MAX_BYTES: usize = 64 * 1024 * 1024;
/// With `--websocket`: the largest message (Autobahn|Testsuite's largest is 16 MiB).
pub const DEFAULT_WEBSOCKET_MAX_MESSAGE: usize = 16 * 1024 * 1024;
/// With `--websocket`: how long the HTTP request may take.
pub const DEFAULT_WEBSOCKET_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the least recently active connection must have been idle before a new client,
/// arriving when the connection limit is reached, takes its place.
pub const DEFAULT_EVICT_IDLE_AFTER: Duration = Duration::from_secs(60);

/// Everything a [`crate::Server`] needs to know before it binds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Address and port to listen on; port 0 picks a free port. Unused when the server is
    /// given a listening socket.
    pub listen: SocketAddr,
    /// Set `SO_REUSEPORT` on the listener, so that several instances share one port (the
    /// kernel spreads connections over them) and a new one can start before the old stops.
    pub reuse_port: bool,
    /// Longest piece of a line handed to the handler; must be at least 1.
    pub max_line_bytes: usize,
    /// Most connections served at once; `None` derives it from the open-file limit.
    pub max_connections: Option<usize>,
    /// Most connections from one client address; `None` sets no limit.
    pub max_connections_per_ip: Option<usize>,
    /// At the connection limit, a new client replaces the least recently active connection
    /// if that one has been idle this long; `None` never evicts.
    pub evict_idle_after: Option<Duration>,
    /// The budget for the bytes held in all connections' buffers together (unfinished lines
    /// and unsent output, counted as allocated capacity).
    pub max_buffered_bytes: usize,
    /// Close a connection after this long without traffic; `None` never does.
    pub idle_timeout: Option<Duration>,
    /// TCP keepalive on every accepted connection: the first probe after this long without
    /// traffic, then three more a third of it apart, and `TCP_USER_TIMEOUT` at twice it, so
    /// that a peer that vanished (its reset lost, its host gone) is found and its connection
    /// closed; `None` sends no probes.
    pub tcp_keepalive: Option<Duration>,
    /// How long a graceful shutdown waits for connections to flush and close.
    pub shutdown_timeout: Duration,
    /// Most unsent echo output held for one connection: reading from it pauses while one
    /// more read could take it past this.
    pub output_high_water: usize,
    /// Unsent output at which a paused connection is read again; below the high-water mark.
    pub output_low_water: usize,
    /// Size of the shared read buffer.
    pub read_buffer_bytes: usize,
    /// Only clients from these blocks are served (`--allow`); empty: everyone not denied.
    pub allow: Vec<IpNet>,
    /// Clients from these blocks are refused (`--deny`), allowed or not.
    pub deny: Vec<IpNet>,
    /// Every connection begins with a PROXY protocol header (v1 or v2) from a load
    /// balancer, naming the client; connections without a valid one are closed. With
    /// `proxy_from`, only connections from those sources do.
    pub proxy_protocol: bool,
    /// Connections from these sources (load balancers) must begin with a PROXY header,
    /// whose client address is then believed; all others are direct clients, never parsed
    /// for one.
    pub proxy_from: Vec<IpNet>,
    /// How long a connection may take to send its PROXY protocol header.
    pub proxy_header_timeout: Duration,
    /// Every connection speaks the telnet protocol: commands are taken out of its input,
    /// options negotiated, every line end echoed as CR LF, 0xFF escaped in its echoes.
    pub telnet: bool,
    /// Also accept connections on a Unix stream socket at this path, with the same echo and
    /// rules (per-address ones aside). A stale socket file there is replaced; the file is
    /// removed when the server stops.
    pub unix: Option<std::path::PathBuf>,
    /// The Unix socket file's mode; `None` leaves it to the umask.
    pub unix_mode: Option<u32>,
    /// Also echo datagrams (RFC 862) on the same address and port, UDP.
    pub udp: bool,
    /// With `udp`: datagrams a second answered per source address (and bursts of as many);
    /// 0 answers every one.
    pub udp_rate_per_source: u32,
    /// With `udp`: datagrams a second answered by the whole server (and bursts of as
    /// many); 0 sets no cap.
    pub udp_rate: u32,
    /// Every TCP and Unix connection speaks TLS, with these files; `None` is plaintext.
    pub tls: Option<crate::certificates::TlsFiles>,
    /// Every TCP and Unix connection speaks TLS with a certificate made at start-up for
    /// `tls_names` (and logged by its SHA-256 fingerprint); instead of `tls`.
    pub tls_self_signed: bool,
    /// With `tls_self_signed`: the names the certificate is for (DNS names or IP
    /// addresses); empty: localhost and the address bound.
    pub tls_names: Vec<String>,
    /// With TLS: the ALPN protocols offered, in the server's order; a client that offers
    /// protocols, none of them these, is refused (RFC 7301). Empty: no ALPN.
    pub tls_alpn: Vec<String>,
    /// How long a TLS connection may take to complete its handshake (after its PROXY
    /// header, if any, within the same time).
    pub tls_handshake_timeout: Duration,
    /// Where to serve `GET /metrics` (Prometheus); `None` serves no metrics.
    pub metrics: Option<SocketAddr>,
    /// How long a metrics scraper may take to send a request or to take its answer.
    pub metrics_timeout: Duration,
    /// Every line is a command of the guide's key-value store (CREATE, PUT, GET, DELETE,
    /// SUBSCRIBE) instead of being echoed; the handler the server was given is not used.
    pub kv: bool,
    /// With `kv`: the bytes the buckets may hold (names, keys, values, and a fixed amount
    /// for each bucket, entry and subscription); a change past it is refused with `ERROR`.
    pub kv_max_bytes: usize,
    /// Every connection is a WebSocket (RFC 6455) after an HTTP/1.1 upgrade, its messages
    /// echoed whole; a GET of `/` without an upgrade gets a page for trying it.
    pub websocket: bool,
    /// With `websocket`: the largest message, put together from its fragments; a larger
    /// one is refused with close 1009.
    pub websocket_max_message: usize,
    /// With `websocket`: how long the HTTP request may take to arrive (after the PROXY
    /// header and the TLS handshake, if any, within the same time).
    pub websocket_handshake_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), DEFAULT_PORT),
            reuse_port: false,
            max_line_bytes: DEFAULT_MAX_LINE_BYTES,
            max_connections: None,
            max_connections_per_ip: None,
            evict_idle_after: Some(DEFAULT_EVICT_IDLE_AFTER),
            max_buffered_bytes: DEFAULT_MAX_BUFFERED_BYTES,
            idle_timeout: None,
            tcp_keepalive: Some(DEFAULT_TCP_KEEPALIVE),
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
            output_high_water: DEFAULT_OUTPUT_HIGH_WATER,
            output_low_water: DEFAULT_OUTPUT_LOW_WATER,
            read_buffer_bytes: DEFAULT_READ_BUFFER_BYTES,
            allow: Vec::new(),
            deny: Vec::new(),
            proxy_protocol: false,
            proxy_from: Vec::new(),
            telnet: false,
            udp: false,
            unix: None,
            unix_mode: None,
            udp_rate_per_source: DEFAULT_UDP_RATE_PER_SOURCE,
            udp_rate: DEFAULT_UDP_RATE,
            proxy_header_timeout: DEFAULT_PROXY_HEADER_TIMEOUT,
            tls: None,
            tls_self_signed: false,
            tls_names: Vec::new(),
            tls_alpn: Vec::new(),
            tls_handshake_timeout: DEFAULT_TLS_HANDSHAKE_TIMEOUT,
            metrics: None,
            metrics_timeout: DEFAULT_METRICS_TIMEOUT,
            kv: false,
            kv_max_bytes: DEFAULT_KV_MAX_BYTES,
            websocket: false,
            websocket_max_message: DEFAULT_WEBSOCKET_MAX_MESSAGE,
            websocket_handshake_timeout: DEFAULT_WEBSOCKET_HANDSHAKE_TIMEOUT,
        }
    }
}

impl Config {
    /// A configuration listening on `addr`, everything else at its default.
    pub fn listening_on(addr: SocketAddr) -> Self {
        Config {
            listen: addr,
            ..Config::default()
        }
    }

    /// Checks the options against each other; the server refuses to start on an error.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_line_bytes == 0 {
            return Err(ConfigError("--max-line-bytes must be at least 1".into()));
        }
        if self.max_connections == Some(0) {
            return Err(ConfigError("--max-connections must be at least 1".into()));
        }
        if self.read_buffer_bytes == 0 {
            return Err(ConfigError(
                "the read buffer must hold at least 1 byte".into(),
            ));
        }
        if self.max_connections_per_ip == Some(0) {
            return Err(ConfigError(
                "--max-connections-per-ip must be at least 1 (or unset)".into(),
            ));
        }
        // A connection alone must always be able to read: its unfinished line (at most
        // --max-line-bytes) and one read fit, and so do two reads.
        let smallest_budget =
            (2 * self.read_buffer_bytes).max(self.max_line_bytes + self.read_buffer_bytes);
        if self.max_buffered_bytes < smallest_budget {
            return Err(ConfigError(format!(
                "--max-buffered-bytes must be at least {smallest_budget}: one read ({} \
                 bytes) beside the longest unfinished line (--max-line-bytes {}), and at \
                 least two reads",
                self.read_buffer_bytes, self.max_line_bytes
            )));
        }
        if self
            .tcp_keepalive
            .is_some_and(|time| time < Duration::from_secs(1))
        {
            return Err(ConfigError(
                "--tcp-keepalive must be at least 1 second (or 0 for none)".into(),
            ));
        }
        if self.tls_self_signed && self.tls.is_some() {
            return Err(ConfigError(
                "--tls-self-signed makes the certificate that --tls-cert would name: give \
                 one or the other"
                    .into(),
            ));
        }
        if !self.speaks_tls() && !self.tls_alpn.is_empty() {
            return Err(ConfigError(
                "--tls-alpn needs TLS: --tls-cert or --tls-self-signed".into(),
            ));
        }
        if let Some(bad) = self.tls_alpn.iter().find(|p| p.is_empty() || p.len() > 255) {
            return Err(ConfigError(format!(
                "--tls-alpn: '{bad}' is not a protocol name (1 to 255 bytes)"
            )));
        }
        if self.kv && self.udp {
            return Err(ConfigError(
                "--kv answers commands on connections and --udp echoes datagrams: they \
                 cannot be combined"
                    .into(),
            ));
        }
        if self.websocket && (self.kv || self.telnet) {
            let other = if self.kv { "--kv" } else { "--telnet" };
            return Err(ConfigError(format!(
                "--websocket echoes messages and {other} speaks lines: they cannot be combined"
            )));
        }
        if self.websocket && self.websocket_max_message > self.max_buffered_bytes / 2 {
            return Err(ConfigError(format!(
                "--websocket-max-message ({}) must be at most half of --max-buffered-bytes \
                 ({}): a message is held whole, and its echo beside it",
                self.websocket_max_message, self.max_buffered_bytes
            )));
        }
        if self.output_low_water >= self.output_high_water {
            return Err(ConfigError(format!(
                "the output low-water mark ({}) must be below the high-water mark ({})",
                self.output_low_water, self.output_high_water
            )));
        }
        Ok(())
    }

    /// Connections speak TLS: with certificate files or a certificate made at start-up.
    pub fn speaks_tls(&self) -> bool {
        self.tls.is_some() || self.tls_self_signed
    }

    /// The connection limit in force: the configured one, or what the open-file limit allows.
    pub fn effective_max_connections(&self) -> usize {
        self.max_connections
            .unwrap_or_else(|| connections_allowed_by(open_file_limit()))
    }
}

/// An option value the server cannot run with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

/// Connections that fit in `limit` open files, leaving room for the descriptors the process
/// itself holds (standard streams, the poll instance, listener, waker, signal pipe) and a
/// margin so that a full table is met as a connection limit, not as failing `accept` calls.
pub fn connections_allowed_by(limit: u64) -> usize {
    let headroom = (limit / 8).clamp(16, 64);
    usize::try_from(limit.saturating_sub(headroom))
        .unwrap_or(usize::MAX)
        .max(1)
}

/// The soft open-file limit of this process.
pub fn open_file_limit() -> u64 {
    file_limits().map_or(1024, |limit| limit.rlim_cur)
}

/// Raises the soft open-file limit to the hard limit, as servers that hold one descriptor per
/// client do at start-up, and returns the limit now in force.
pub fn raise_open_file_limit() -> std::io::Result<u64> {
    let limit = file_limits()?;
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit only reads the struct we own.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(limit.rlim_max)
}

/// The soft and hard open-file limits.
fn file_limits() -> std::io::Result<libc::rlimit> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own and reads nothing else.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(limit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate() {
        assert_eq!(Config::default().validate(), Ok(()));
        assert_eq!(Config::default().listen.port(), 4040);
    }

    #[test]
    fn rejects_values_it_cannot_run_with() {
        let zero_line = Config {
            max_line_bytes: 0,
            ..Config::default()
        };
        assert!(zero_line
            .validate()
            .unwrap_err()
            .0
            .contains("--max-line-bytes"));
        let zero_connections = Config {
            max_connections: Some(0),
            ..Config::default()
        };
        assert!(zero_connections.validate().is_err());
        let inverted_marks = Config {
            output_low_water: 10,
            output_high_water: 10,
            ..Config::default()
        };
        assert!(inverted_marks.validate().is_err());
    }

    #[test]
    fn connection_limit_leaves_headroom() {
        assert_eq!(connections_allowed_by(64), 48);
        assert_eq!(connections_allowed_by(1024), 960);
        assert_eq!(connections_allowed_by(20_000), 19_936);
        assert_eq!(connections_allowed_by(3), 1);
    }
}
