//! The `kv_server` binary: command line -> [`Config`] -> logger -> [`Server`] -> run.
//!
//! Everything a user can get wrong at start-up (a bad port, an unparsable address, a port
//! already in use, a socket from a service manager that is not a listening TCP socket) ends
//! here with one line on stderr and a non-zero exit status, never a panic or a backtrace.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use kv_server::config::{self, Config, IpNet};
use kv_server::TlsFiles;
use kv_server::{Echo, Server, ServiceManager, Stopped};
use log::LevelFilter;
use simple_logger::SimpleLogger;

/// The version and the commit it was built from (`build.rs`).
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (",
    env!("KV_SERVER_COMMIT"),
    ")"
);

/// A line echo server: every line a client sends comes back byte-exact.
///
/// A port of the Elixir guide's KVServer ("Task and gen_tcp") to a single-threaded mio
/// event loop; with --kv, the key-value store of the guide's next chapters. SIGINT or SIGTERM shuts it down gracefully; a second one stops it at once.
/// With --tls-cert, SIGHUP reloads the TLS files.
///
/// Under a service manager it serves the socket passed with LISTEN_FDS (socket activation;
/// --port, PORT and --bind are then ignored), and with NOTIFY_SOCKET set it reports
/// readiness, status and stopping, and feeds the watchdog (WATCHDOG_USEC). An environment
/// variable set to nothing counts as unset.
///
/// Exit status: 0 after a graceful shutdown; 2 for a malformed command line; 1 for any
/// other start-up error (a port in use, a file that cannot be read...); 128 + the signal
/// when a second signal cuts the drain short. Every error is one line on stderr,
/// "kv_server: error: ...", naming the option or variable and the value.
#[derive(Debug, Parser)]
#[command(name = "kv_server", version = VERSION, about, long_about, max_term_width = 100)]
struct Cli {
    /// Port to listen on [default: PORT, else 4040]
    ///
    /// 0 picks a free one (the start-up line names it). Overrides the PORT environment
    /// variable.
    #[arg(long, help_heading = "Listening", value_name = "PORT", value_parser = parse_port,
          allow_negative_numbers = true)]
    port: Option<u16>,

    /// Address to listen on [default: 0.0.0.0]
    ///
    /// IPv4 or IPv6 (:: takes IPv4 clients too, as ::ffff:a.b.c.d), or localhost for
    /// 127.0.0.1.
    #[arg(long, help_heading = "Listening", value_name = "ADDR", value_parser = parse_bind,
          hide_default_value = true, default_value = "0.0.0.0")]
    bind: IpAddr,

    /// Share the port with other instances
    ///
    /// Sets SO_REUSEPORT (on the UDP socket too), so that several instances share the port,
    /// one per core, and a new one can start before the old one stops.
    #[arg(long, help_heading = "Listening")]
    reuse_port: bool,

    /// Also accept on a Unix stream socket
    ///
    /// The same echo and rules at PATH (per-address ones aside). A stale socket file there
    /// (nobody listening) is replaced; a live one, or a file that is not a socket, is an
    /// error. The file is removed when the server stops, if it is still the one it made.
    #[arg(long, help_heading = "Listening", value_name = "PATH")]
    unix: Option<std::path::PathBuf>,

    /// The Unix socket file's mode (660, 0600...)
    ///
    /// In octal. The file never exists at PATH with another mode [default: as the umask
    /// makes it].
    #[arg(long, help_heading = "Listening", value_name = "OCTAL", value_parser = parse_mode, requires = "unix")]
    unix_mode: Option<u32>,

    /// Longest line echoed whole
    ///
    /// Longer lines come back in pieces of this size, still byte-exact.
    #[arg(long, help_heading = "Limits", value_name = "BYTES", default_value_t = config::DEFAULT_MAX_LINE_BYTES,
          value_parser = parse_positive, allow_negative_numbers = true)]
    max_line_bytes: usize,

    /// Most clients served at once
    ///
    /// Later ones take the place of a connection idle for --evict-idle-after, or are
    /// accepted and closed at once [default: what the open-file limit allows].
    #[arg(long, help_heading = "Limits", value_name = "N", value_parser = parse_positive,
          allow_negative_numbers = true)]
    max_connections: Option<usize>,

    /// Most connections per address
    ///
    /// Per client address: one more is accepted and closed at once. Behind a balancer, the address its PROXY
    /// header names. 0 sets no limit.
    #[arg(
        long,
        help_heading = "Limits",
        value_name = "N",
        default_value_t = 0,
        allow_negative_numbers = true
    )]
    max_connections_per_ip: usize,

    /// Idle seconds before eviction
    ///
    /// At the connection limit, a new client replaces the least recently active connection
    /// if that one has been idle this long; 0 never evicts.
    #[arg(long, help_heading = "Limits", value_name = "SECS", default_value_t = config::DEFAULT_EVICT_IDLE_AFTER.as_secs_f64(),
          value_parser = parse_seconds, allow_negative_numbers = true)]
    evict_idle_after: f64,

    /// Budget for all buffers
    ///
    /// The bytes held in all connections' buffers together (unfinished lines, unsent
    /// echoes, what TLS holds of a client's input). A client holding buffers is not read
    /// while a read could pass it; if room is needed, the largest holders whose echoes did
    /// not move since the last look are closed: first those whose client stopped reading
    /// (receive window closed), then those slowed by the network; over the budget, the
    /// largest regardless.
    #[arg(long, help_heading = "Limits", value_name = "BYTES", default_value_t = config::DEFAULT_MAX_BUFFERED_BYTES,
          value_parser = parse_positive, allow_negative_numbers = true)]
    max_buffered_bytes: usize,

    /// Keepalive after this silence
    ///
    /// TCP keepalive probes after this many seconds of silence; then three probes a third of it apart, and a peer that acknowledges
    /// nothing for twice it is given up on, so that vanished clients are closed. 0 sends
    /// no probes.
    #[arg(long, help_heading = "Limits", value_name = "SECS", default_value_t = config::DEFAULT_TCP_KEEPALIVE.as_secs(),
          value_parser = clap::value_parser!(u64).range(0..=100_000_000), allow_negative_numbers = true)]
    tcp_keepalive: u64,

    /// Close after this idle time
    ///
    /// Seconds without traffic either way; 0 never closes.
    #[arg(long, help_heading = "Limits", value_name = "SECS", default_value_t = 0.0, value_parser = parse_seconds,
          allow_negative_numbers = true)]
    idle_timeout: f64,

    /// Time for the drain at shutdown
    ///
    /// On SIGINT/SIGTERM, how many seconds connections get to take their last echoes.
    #[arg(long, help_heading = "Limits", value_name = "SECS", default_value_t = config::DEFAULT_SHUTDOWN_TIMEOUT.as_secs_f64(),
          value_parser = parse_seconds, allow_negative_numbers = true)]
    shutdown_timeout: f64,

    /// Serve only clients from this block
    ///
    /// A CIDR block, IPv4 or IPv6 (a bare address is one host; an IPv4-mapped block such
    /// as ::ffff:10.0.0.0/104 is the IPv4 block it names); repeatable. Others are closed
    /// before anything is read; UDP senders are not answered [default: everyone].
    #[arg(long, help_heading = "Access", value_name = "CIDR", value_parser = parse_cidr)]
    allow: Vec<IpNet>,

    /// Refuse clients from this block
    ///
    /// Even if allowed; repeatable. Behind a balancer both lists see the balancer's
    /// address, then the one its PROXY header names.
    #[arg(long, help_heading = "Access", value_name = "CIDR", value_parser = parse_cidr)]
    deny: Vec<IpNet>,

    /// Believe PROXY headers from this block
    ///
    /// Connections from this block (a load balancer) begin with a PROXY protocol header,
    /// whose client address is believed; all others are direct clients, served as they
    /// are; repeatable.
    #[arg(long, help_heading = "Access", value_name = "CIDR", value_parser = parse_cidr)]
    proxy_from: Vec<IpNet>,

    /// Every connection begins with a PROXY header
    ///
    /// v1 or v2, as HAProxy's send-proxy and send-proxy-v2 send it, naming the client;
    /// others are closed. Any client that reaches the port can then claim any address:
    /// prefer --proxy-from.
    #[arg(long, help_heading = "Protocols")]
    proxy_protocol: bool,

    /// Speak telnet to telnet clients
    ///
    /// So that PuTTY, Debian's and Ubuntu's telnet and BusyBox's work as a person expects:
    /// lines at column 0, UTF-8, Ctrl-C, Are You There.
    #[arg(long, help_heading = "Protocols")]
    telnet: bool,

    /// Be the guide's key-value store
    ///
    /// Every line is a command of the Elixir guide's KV server instead of being echoed:
    /// CREATE bucket, PUT bucket key value, GET bucket key, DELETE bucket key, SUBSCRIBE
    /// bucket (docs/protocols.md). On every transport: TCP, TLS, --unix, --telnet, behind
    /// a PROXY header. Buckets live in this process alone: a restart loses them, as in the
    /// guide, and with --reuse-port or several instances a client may not find a bucket
    /// it created elsewhere. A line over --max-line-bytes is refused with ERROR.
    #[arg(long, help_heading = "Protocols", conflicts_with = "udp")]
    kv: bool,

    /// Bytes the buckets may hold
    ///
    /// With --kv: names, keys and values, and a fixed amount for each bucket (160 bytes and
    /// its name again), key (64) and subscription (48), close to what they cost in memory.
    /// A CREATE, PUT or SUBSCRIBE that would pass it is refused with ERROR and changes
    /// nothing.
    #[arg(long, help_heading = "Protocols", value_name = "BYTES", default_value_t = config::DEFAULT_KV_MAX_BYTES,
          value_parser = parse_positive, allow_negative_numbers = true, requires = "kv")]
    kv_max_bytes: usize,

    /// Be a WebSocket echo (RFC 6455)
    ///
    /// Every connection (TCP, TLS as wss://, --unix, behind a PROXY header) begins with an
    /// HTTP/1.1 upgrade, on any path; then every message comes back whole, text as text and
    /// binary as binary, pings are answered, a close is answered with its code. A GET of /
    /// without an upgrade gets a page to try it from a browser; other paths get 404, and
    /// bytes that are not HTTP are closed. permessage-deflate is not offered.
    #[arg(long, help_heading = "Protocols", conflicts_with_all = ["kv", "telnet"])]
    websocket: bool,

    /// The largest WebSocket message
    ///
    /// Put together from its fragments within the buffer budget (at most half of
    /// --max-buffered-bytes); a larger one is refused with close 1009 (message too big) as
    /// soon as a frame header says it will be.
    #[arg(long, help_heading = "Protocols", value_name = "BYTES", default_value_t = config::DEFAULT_WEBSOCKET_MAX_MESSAGE,
          value_parser = parse_positive, allow_negative_numbers = true, requires = "websocket")]
    websocket_max_message: usize,

    /// Seconds for the HTTP upgrade request
    ///
    /// After its PROXY header and TLS handshake, if any, within the longest of their
    /// times. A client that sends its request slowly, or nothing, is closed then.
    #[arg(long, help_heading = "Protocols", value_name = "SECS", default_value_t = config::DEFAULT_WEBSOCKET_HANDSHAKE_TIMEOUT.as_secs_f64(),
          value_parser = parse_seconds, allow_negative_numbers = true, requires = "websocket")]
    websocket_handshake_timeout: f64,

    /// Also echo datagrams (UDP)
    ///
    /// On the same address and port (RFC 862): each back to its sender whole. Never
    /// answered, so that no loop with another echo (or this one) can last: source ports
    /// 0-1023 (echo, chargen, QOTD, DNS, NTP...) and this server's own port; the same
    /// bytes from the same address and port once answered 16 times, each within a minute
    /// of the last; sources refused by --allow/--deny; and datagrams over
    /// --udp-rate-per-source or --udp-rate.
    #[arg(long, help_heading = "Protocols")]
    udp: bool,

    /// Datagrams a second per source
    ///
    /// With --udp: answered per source address, in bursts of up to as many; the rest are
    /// dropped and counted, never queued. 0 answers every one.
    #[arg(long, help_heading = "Protocols", value_name = "N", default_value_t = config::DEFAULT_UDP_RATE_PER_SOURCE,
          allow_negative_numbers = true)]
    udp_rate_per_source: u32,

    /// Datagrams a second in all
    ///
    /// With --udp: answered by the whole server, in bursts of up to as many, whatever
    /// their sources; the rest are dropped and counted. 0 sets no cap.
    #[arg(long, help_heading = "Protocols", value_name = "N", default_value_t = config::DEFAULT_UDP_RATE,
          allow_negative_numbers = true)]
    udp_rate: u32,

    /// Speak TLS with this certificate (PEM)
    ///
    /// TLS 1.2 and 1.3 on every TCP and Unix connection: the server's certificate first,
    /// then any intermediates. SIGHUP reads the TLS files again: new connections get the
    /// new ones, established ones carry on; a file that fails to load keeps the old ones.
    #[arg(long, help_heading = "TLS", value_name = "PATH", requires = "tls_key")]
    tls_cert: Option<std::path::PathBuf>,

    /// The certificate's private key (PEM)
    ///
    /// PKCS#8, PKCS#1 (RSA) or SEC1 (EC).
    #[arg(long, help_heading = "TLS", value_name = "PATH", requires = "tls_cert")]
    tls_key: Option<std::path::PathBuf>,

    /// Require client certificates from these CAs
    ///
    /// Mutual TLS: a client certificate that chains to one of these roots (PEM); clients
    /// without one, or with another, are refused in the handshake.
    #[arg(long, help_heading = "TLS", value_name = "PATH", requires = "tls_cert")]
    tls_client_ca: Option<std::path::PathBuf>,

    /// Staple this OCSP response (DER)
    ///
    /// Sent with the certificate in every handshake, for clients that ask (openssl s_client
    /// -status). SIGHUP reads it again with the other TLS files.
    #[arg(long, help_heading = "TLS", value_name = "PATH", requires = "tls_cert")]
    tls_ocsp: Option<std::path::PathBuf>,

    /// Make a certificate at start-up
    ///
    /// For tests and trials, as ncat's --ssl does: an ECDSA P-256 certificate for the
    /// --tls-name names, valid for a year, its SHA-256 fingerprint logged for clients to
    /// pin. Not with --tls-cert.
    #[arg(long, help_heading = "TLS", conflicts_with_all = ["tls_cert", "tls_key"])]
    tls_self_signed: bool,

    /// A name for --tls-self-signed's certificate
    ///
    /// A DNS name or an IP address (repeatable) [default: localhost and the address
    /// bound, or 127.0.0.1 and ::1 when bound to all].
    #[arg(
        long,
        help_heading = "TLS",
        value_name = "NAME",
        requires = "tls_self_signed"
    )]
    tls_name: Vec<String>,

    /// Offer these ALPN protocols
    ///
    /// Comma-separated, in the server's order of preference (h2,http/1.1). A client that
    /// offers protocols, none of them these, is refused with no_application_protocol (RFC
    /// 7301); one that offers none is served.
    #[arg(long, help_heading = "TLS", value_name = "LIST", value_delimiter = ',')]
    tls_alpn: Vec<String>,

    /// Seconds to finish a handshake
    ///
    /// A TLS client that stalls, or speaks plaintext and waits, is closed then.
    #[arg(long, help_heading = "TLS", value_name = "SECS", default_value_t = config::DEFAULT_TLS_HANDSHAKE_TIMEOUT.as_secs_f64(),
          value_parser = parse_seconds, allow_negative_numbers = true)]
    tls_handshake_timeout: f64,

    /// Serve Prometheus metrics at ADDR
    ///
    /// At http://ADDR/metrics, HOST:PORT or a port alone for all addresses, from the same
    /// event loop.
    #[arg(long, help_heading = "Observability", value_name = "ADDR", value_parser = parse_metrics_addr)]
    metrics: Option<SocketAddr>,

    /// Log level: off, error, warn, info, debug, trace
    ///
    /// [default: RUST_LOG, else info]
    #[arg(long, help_heading = "Observability", value_name = "LEVEL", ignore_case = true,
          hide_possible_values = true,
          value_parser = log_levels())]
    log_level: Option<LevelFilter>,

    /// Print a man page or completions: man, bash, zsh, fish
    ///
    /// From the same definitions as this help, so they never drift: man (roff, for
    /// /usr/share/man/man1/kv_server.1), or completions for bash, zsh or fish. Then exit.
    #[arg(long, value_name = "KIND", value_enum, hide_possible_values = true)]
    generate: Option<Generated>,
}

/// What `--generate` prints.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Generated {
    Man,
    Bash,
    Zsh,
    Fish,
}

/// Prints what `--generate` asked for on stdout.
fn generate(what: Generated) -> std::io::Result<()> {
    use clap::CommandFactory;
    let mut command = Cli::command();
    let mut out = std::io::stdout().lock();
    let shell = match what {
        Generated::Man => return clap_mangen::Man::new(command).render(&mut out),
        Generated::Bash => clap_complete::Shell::Bash,
        Generated::Zsh => clap_complete::Shell::Zsh,
        Generated::Fish => clap_complete::Shell::Fish,
    };
    clap_complete::generate(shell, &mut command, "kv_server", &mut out);
    Ok(())
}

/// A CIDR block, or a bare address as a block of one.
fn parse_cidr(text: &str) -> Result<IpNet, String> {
    if let Ok(addr) = text.parse::<IpAddr>() {
        return Ok(IpNet::from(addr));
    }
    let (addr, prefix) = text
        .split_once('/')
        .ok_or("expected an address or a CIDR block (10.0.0.0/8, 2001:db8::/32)")?;
    let addr: IpAddr = addr
        .parse()
        .map_err(|_| format!("'{addr}' is not an IPv4 or IPv6 address"))?;
    let most = if addr.is_ipv4() { 32 } else { 128 };
    let prefix: u8 = prefix
        .parse()
        .ok()
        .filter(|&p| p <= most)
        .ok_or_else(|| format!("the prefix length must be a number from 0 to {most}"))?;
    IpNet::new(addr, prefix).map_err(|e| e.to_string())
}

/// The log levels, by name: an unknown one is an error that lists them.
fn log_levels() -> impl clap::builder::TypedValueParser<Value = LevelFilter> {
    use clap::builder::TypedValueParser;
    clap::builder::PossibleValuesParser::new(["off", "error", "warn", "info", "debug", "trace"])
        .map(|level| level.parse::<LevelFilter>().unwrap_or(LevelFilter::Info))
}

fn parse_port(text: &str) -> Result<u16, String> {
    text.trim()
        .parse()
        .map_err(|_| "expected a port number from 0 to 65535".to_owned())
}

/// An IP address, or `localhost` for 127.0.0.1.
fn parse_bind(text: &str) -> Result<IpAddr, String> {
    if text.eq_ignore_ascii_case("localhost") {
        return Ok(IpAddr::V4(Ipv4Addr::LOCALHOST));
    }
    text.parse().map_err(|_| {
        "expected an IPv4 or IPv6 address (0.0.0.0, ::, 127.0.0.1) or localhost".to_owned()
    })
}

fn parse_mode(text: &str) -> Result<u32, String> {
    match u32::from_str_radix(text, 8) {
        Ok(mode) if mode <= 0o7777 => Ok(mode),
        _ => Err(format!(
            "'{text}' is not a file mode in octal, such as 660 or 0600"
        )),
    }
}

fn parse_positive(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) | Err(_) => Err("expected a whole number of at least 1".to_owned()),
        Ok(n) => Ok(n),
    }
}

fn parse_metrics_addr(text: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    match text.parse::<u16>() {
        Ok(port) => Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port)),
        Err(_) => Err("expected HOST:PORT (127.0.0.1:9100, [::1]:9100) or a port".to_owned()),
    }
}

fn parse_seconds(text: &str) -> Result<f64, String> {
    let seconds: f64 = text
        .parse()
        .map_err(|_| "expected a number of seconds".to_owned())?;
    if !seconds.is_finite() || !(0.0..=1e9).contains(&seconds) {
        return Err("expected a number of seconds between 0 and 1e9".to_owned());
    }
    Ok(seconds)
}

/// The port: `--port` wins over `PORT`, which wins over the guide's 4040. A `PORT` set to
/// nothing counts as unset, as other tools take an empty variable.
fn resolve_port(flag: Option<u16>, env: Option<String>) -> Result<u16, String> {
    if let Some(port) = flag {
        return Ok(port);
    }
    match env.filter(|text| !text.trim().is_empty()) {
        None => Ok(config::DEFAULT_PORT),
        Some(text) => parse_port(&text)
            .map_err(|reason| format!("invalid PORT environment variable '{text}': {reason}")),
    }
}

/// Why the program could not start (or run), and so its exit status.
enum Failure {
    /// A malformed command line: exit status 2, as clap and other tools use for it.
    Usage(String),
    /// Anything else: exit status 1.
    Runtime(String),
}

impl From<String> for Failure {
    fn from(message: String) -> Self {
        Failure::Runtime(message)
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e)
            if matches!(
                e.kind(),
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion
            ) =>
        {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => return fail(Failure::Usage(one_line(&e.render().to_string()))),
    };
    if let Some(what) = cli.generate {
        return match generate(what) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(Failure::Runtime(format!("cannot write to stdout: {e}"))),
        };
    }
    match serve(cli) {
        Ok(Stopped::Forced { signal }) => ExitCode::from(128u8.saturating_add(signal as u8)),
        Ok(_) => ExitCode::SUCCESS,
        Err(failure) => fail(failure),
    }
}

fn fail(failure: Failure) -> ExitCode {
    let (message, status) = match failure {
        Failure::Usage(message) => (message, 2),
        Failure::Runtime(message) => (message, 1),
    };
    eprintln!("kv_server: error: {message}");
    ExitCode::from(status)
}

/// clap's error as one line: its first paragraph (the error, and on the lines after it the
/// arguments it names or the values it takes) and any tip, without the usage and the
/// pointer to --help that follow.
fn one_line(rendered: &str) -> String {
    let mut parts = Vec::new();
    for paragraph in rendered.split("\n\n") {
        let words = paragraph.split_whitespace().collect::<Vec<_>>().join(" ");
        if words.starts_with("Usage:") || words.starts_with("For more information") {
            continue;
        }
        parts.push(words);
    }
    let joined = parts.join("; ");
    joined.strip_prefix("error: ").unwrap_or(&joined).to_owned()
}

fn serve(cli: Cli) -> Result<Stopped, Failure> {
    let port = resolve_port(cli.port, std::env::var("PORT").ok())?;
    init_logging(cli.log_level)?;
    return_large_buffers_at_once();
    let open_files = match config::raise_open_file_limit() {
        Ok(limit) => limit,
        Err(e) => {
            log::warn!("Cannot raise the open-file limit: {e}");
            config::open_file_limit()
        }
    };
    let inherited = kv_server::sockets_from_service_manager()?;
    let config = Config {
        listen: SocketAddr::new(cli.bind, port),
        reuse_port: cli.reuse_port,
        metrics: cli.metrics,
        allow: cli.allow,
        deny: cli.deny,
        proxy_protocol: cli.proxy_protocol,
        proxy_from: cli.proxy_from,
        telnet: cli.telnet,
        kv: cli.kv,
        kv_max_bytes: cli.kv_max_bytes,
        websocket: cli.websocket,
        websocket_max_message: cli.websocket_max_message,
        websocket_handshake_timeout: Duration::from_secs_f64(cli.websocket_handshake_timeout),
        tls: cli.tls_cert.zip(cli.tls_key).map(|(cert, key)| TlsFiles {
            cert,
            key,
            client_ca: cli.tls_client_ca,
            ocsp: cli.tls_ocsp,
        }),
        tls_self_signed: cli.tls_self_signed,
        tls_names: cli.tls_name,
        tls_alpn: cli.tls_alpn,
        tls_handshake_timeout: Duration::from_secs_f64(cli.tls_handshake_timeout),
        udp: cli.udp,
        unix: cli.unix,
        unix_mode: cli.unix_mode,
        udp_rate_per_source: cli.udp_rate_per_source,
        udp_rate: cli.udp_rate,
        max_line_bytes: cli.max_line_bytes,
        max_connections: cli.max_connections,
        max_connections_per_ip: (cli.max_connections_per_ip > 0)
            .then_some(cli.max_connections_per_ip),
        evict_idle_after: (cli.evict_idle_after > 0.0)
            .then(|| Duration::from_secs_f64(cli.evict_idle_after)),
        max_buffered_bytes: cli.max_buffered_bytes,
        idle_timeout: (cli.idle_timeout > 0.0).then(|| Duration::from_secs_f64(cli.idle_timeout)),
        tcp_keepalive: (cli.tcp_keepalive > 0).then(|| Duration::from_secs(cli.tcp_keepalive)),
        shutdown_timeout: Duration::from_secs_f64(cli.shutdown_timeout),
        ..Config::default()
    };
    // The options' values do not go together: the command line is at fault.
    config
        .validate()
        .map_err(|e| Failure::Usage(e.to_string()))?;
    let mut server = match inherited {
        Some(sockets) => {
            let also = match (sockets.udp.is_some(), sockets.unix.is_some()) {
                (true, true) => " with a UDP socket and a Unix listener",
                (true, false) => " with a UDP socket",
                (false, true) => " with a Unix listener",
                (false, false) => "",
            };
            log::info!(
                "Serving the listening socket passed by the service manager (LISTEN_FDS){also}; \
                 --port, PORT, --bind and --reuse-port do not apply to it"
            );
            Server::from_service_sockets(sockets, config.clone(), Box::new(Echo))
                .map_err(|e| e.to_string())?
        }
        None => Server::bind(config.clone()).map_err(|e| e.to_string())?,
    };
    if let Some(addr) = server.metrics_addr() {
        log::info!("Serving metrics at http://{addr}/metrics");
    }
    server
        .handle_signals()
        .map_err(|e| format!("cannot install signal handlers: {e}"))?;
    match ServiceManager::from_environment() {
        Ok(Some(manager)) => {
            log::debug!(
                "Notifying the service manager (watchdog every {:?})",
                manager.watchdog_interval()
            );
            server.notify_service_manager(manager);
        }
        Ok(None) => {}
        Err(e) => {
            let socket = std::env::var("NOTIFY_SOCKET").unwrap_or_default();
            return Err(Failure::Runtime(format!(
                "cannot reach the service manager at NOTIFY_SOCKET '{socket}': {e}"
            )));
        }
    }
    if let Some(asked) = config.max_connections {
        if asked as u64 >= open_files {
            log::warn!(
                "--max-connections {asked} is above the open-file limit ({open_files}); \
                 accepting will pause whenever descriptors run out"
            );
        }
    }
    log::debug!(
        "Serving at most {} connections (open-file limit {open_files})",
        server.max_connections()
    );
    Ok(server
        .run()
        .map_err(|e| format!("the event loop failed: {e}"))?)
}

/// Makes buffers of 128 KiB and more (a connection's unsent echoes under backpressure) come
/// from their own mappings, returned to the system as soon as they are freed. glibc's
/// default raises that threshold after such frees and then serves them from the heap, whose
/// freed holes stay resident: under the buffer budget, a crowd's churn of large buffers
/// would then show as memory the process no longer uses.
fn return_large_buffers_at_once() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets a parameter of the allocator, before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}

fn init_logging(flag: Option<LevelFilter>) -> Result<(), String> {
    // The flag, else RUST_LOG (set to something), else info.
    let level = flag.unwrap_or_else(|| {
        std::env::var("RUST_LOG")
            .ok()
            .and_then(|value| value.trim().parse().ok())
            .unwrap_or(LevelFilter::Info)
    });
    // What other crates log (rustls' warnings about a client's handshake) goes through
    // the same limit as the lines clients cause here.
    let logger: Box<dyn log::Log> = if kv_server::journal::stderr_is_journal() {
        Box::new(kv_server::LimitedLog::new(
            kv_server::journal::JournalLog::new(level),
        ))
    } else {
        let logger = SimpleLogger::new().with_level(level).with_utc_timestamps();
        Box::new(kv_server::LimitedLog::new(logger))
    };
    log::set_max_level(level);
    log::set_boxed_logger(logger).map_err(|e| format!("cannot start logging: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_flag_wins_over_environment() {
        assert_eq!(resolve_port(Some(5), Some("6".into())), Ok(5));
        assert_eq!(resolve_port(None, Some("6".into())), Ok(6));
        assert_eq!(resolve_port(None, None), Ok(4040));
    }

    #[test]
    fn bad_port_environment_names_value_and_reason() {
        let error = resolve_port(None, Some("70000".into())).unwrap_err();
        assert!(
            error.contains("'70000'") && error.contains("PORT"),
            "{error}"
        );
    }

    #[test]
    fn command_line_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
