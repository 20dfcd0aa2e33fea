//! `kv_load`: the load generator behind docs/performance.md's figures.
//!
//! It opens N connections to a line echo server, keeps D lines of L bytes in flight on each
//! for a set time (or a set number of lines), checks every echoed byte against what was sent,
//! and prints lines/s, MB/s, latency percentiles and the error count. Given the server's pid
//! it also reports the server's CPU time per line and its memory per connection, read from
//! /proc, so that a run measures the server and not the client. `--depth 0` holds the
//! connections idle, for memory measurements.
//!
//! Single-threaded on mio, like the server, so that 10,000 connections cost no threads and
//! the generator fits on one core while the server has the other. It is an example, not an
//! installed binary: `cargo build --release --example kv_load`.

mod client;
mod histogram;

use std::io;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use client::Client;
use histogram::Histogram;
use kv_server::stream::Stream;
use kv_testkit::proc;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

/// Drives a line echo server and verifies every byte it echoes.
#[derive(Debug, Parser)]
#[command(name = "kv_load", version)]
struct Args {
    /// Server address
    #[arg(long, default_value = "127.0.0.1:4040")]
    addr: SocketAddr,
    /// Connect to the server's Unix stream socket at this path instead of --addr
    #[arg(long, value_name = "PATH")]
    unix: Option<std::path::PathBuf>,
    /// Connections to open
    #[arg(short, long, default_value_t = 50)]
    connections: usize,
    /// Bytes per line, newline included (at least 2)
    #[arg(short, long, default_value_t = 128, value_parser = clap::value_parser!(u64).range(2..))]
    line_bytes: u64,
    /// Lines in flight per connection; 0 holds the connections idle
    #[arg(short, long, default_value_t = 1)]
    depth: usize,
    /// Seconds to run
    #[arg(short = 't', long, default_value_t = 10.0)]
    duration: f64,
    /// Stop after this many lines per connection instead of after --duration
    #[arg(long)]
    lines: Option<u64>,
    /// The server's pid: report its CPU time per line and its memory per connection
    #[arg(long)]
    server_pid: Option<u32>,
    /// Connection attempts in progress at once while connecting
    #[arg(long, default_value_t = 256)]
    connect_batch: usize,
    /// Speak TLS (rustls, its ring provider), trusting the CA certificates in this PEM file
    /// for the name localhost; a connection counts once its handshake is complete
    #[arg(long, value_name = "PATH")]
    tls_ca: Option<std::path::PathBuf>,
    /// Send this request on every line instead of an echo line (\r and \n written as
    /// escapes: "GET b k\r\n"); --line-bytes is then unused
    #[arg(long, requires = "reply", value_parser = unescape)]
    request: Option<String>,
    /// The reply every --request must get, byte for byte ("v\r\nOK\r\n")
    #[arg(long, requires = "request", value_parser = unescape)]
    reply: Option<String>,
    /// Speak WebSocket: upgrade each connection, then send every line as a masked binary
    /// message of --line-bytes bytes, which must come back as one unmasked message
    #[arg(long, conflicts_with = "request")]
    websocket: bool,
}

/// A request or reply given on the command line, with \r, \n and \\ written as escapes.
fn unescape(text: &str) -> Result<String, String> {
    let unescaped = text
        .replace("\\r", "\r")
        .replace("\\n", "\n")
        .replace("\\\\", "\\");
    if unescaped.is_empty() {
        return Err("must not be empty".into());
    }
    Ok(unescaped)
}

/// How long connecting may take before the run gives up.
const CONNECT_LIMIT: Duration = Duration::from_secs(60);
/// How long after the end of the run echoes still owed are waited for.
const DRAIN_LIMIT: Duration = Duration::from_secs(30);

#[derive(Debug, Default)]
struct Errors {
    connect: u64,
    mismatched_lines: u64,
    disconnects: u64,
}

impl Errors {
    fn total(&self) -> u64 {
        self.connect + self.mismatched_lines + self.disconnects
    }

    /// A connection failed mid-run: it is counted and left alone from then on.
    fn fail(&mut self, client: &mut Client, key: usize, error: &io::Error) {
        eprintln!("kv_load: connection {key}: {error}");
        self.disconnects += 1;
        client.closed = true;
    }
}

/// The server's CPU counters at one moment.
#[derive(Debug, Clone, Copy)]
struct ServerCpu {
    ns: u64,
    user_ticks: u64,
    system_ticks: u64,
}

impl ServerCpu {
    fn read(pid: u32) -> io::Result<ServerCpu> {
        let (user_ticks, system_ticks) = proc::user_system_ticks(pid)?;
        Ok(ServerCpu {
            ns: proc::cpu_ns(pid)?,
            user_ticks,
            system_ticks,
        })
    }
}

/// What a run measured, for the report.
struct Measured {
    open: usize,
    elapsed: Duration,
    histogram: Histogram,
    lines: u64,
    cpu: Option<(ServerCpu, ServerCpu)>,
    rss_kib: Option<(u64, u64)>,
}

fn main() -> ExitCode {
    // A report piped into `head` should end the tool quietly, as it does any Unix filter,
    // rather than panic on a failed print.
    // SAFETY: restoring the default disposition of SIGPIPE before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let args = Args::parse();
    match run(&args) {
        Ok(0) => ExitCode::SUCCESS,
        Ok(errors) => {
            eprintln!("kv_load: {errors} errors");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("kv_load: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> io::Result<u64> {
    let mut poll = Poll::new()?;
    let mut errors = Errors::default();
    let rss_before = args.server_pid.map(proc::rss_kib).transpose()?;
    let mut clients = connect(args, &mut poll, &mut errors)?;
    let rss_connected = args.server_pid.map(proc::rss_kib).transpose()?;
    let cpu_before = args.server_pid.map(ServerCpu::read).transpose()?;
    let started = Instant::now();
    let histogram = drive(args, &mut poll, &mut clients, &mut errors)?;
    let elapsed = started.elapsed();
    let cpu_after = args.server_pid.map(ServerCpu::read).transpose()?;
    let measured = Measured {
        open: clients.iter().filter(|c| c.connected).count(),
        elapsed,
        histogram,
        lines: clients.iter().map(|c| c.received).sum(),
        cpu: cpu_before.zip(cpu_after),
        rss_kib: rss_before.zip(rss_connected),
    };
    report(args, &measured, &errors)?;
    Ok(errors.total())
}

/// Opens the connections, a batch at a time, so that the server's backlog is not what is
/// measured.
fn connect(args: &Args, poll: &mut Poll, errors: &mut Errors) -> io::Result<Vec<Client>> {
    let mut events = Events::with_capacity(4096);
    let mut clients: Vec<Client> = Vec::with_capacity(args.connections);
    let tls = args.tls_ca.as_deref().map(tls_config).transpose()?;
    let exchange = args.request.clone().zip(args.reply.clone());
    let exchange = exchange.map(|(request, reply)| client::Exchange {
        request: request.into_bytes(),
        reply: reply.into_bytes(),
        upgrade: None,
    });
    let exchange = exchange.or_else(|| args.websocket.then(|| websocket(args.line_bytes as usize)));
    let mut connecting = 0usize;
    let mut next_id = 0usize;
    let deadline = Instant::now() + CONNECT_LIMIT;
    while next_id < args.connections || connecting > 0 {
        while next_id < args.connections && connecting < args.connect_batch {
            let stream = match &args.unix {
                Some(path) => mio::net::UnixStream::connect(path).map(Stream::Unix),
                None => TcpStream::connect(args.addr).map(Stream::Tcp),
            };
            match stream {
                Ok(mut stream) => {
                    poll.registry().register(
                        &mut stream,
                        Token(clients.len()),
                        Interest::READABLE | Interest::WRITABLE,
                    )?;
                    let line_len = args.line_bytes as usize;
                    let id = next_id as u64;
                    clients.push(Client::new(
                        stream,
                        tls.as_ref(),
                        id,
                        line_len,
                        args.depth,
                        exchange.as_ref(),
                    ));
                    connecting += 1;
                }
                Err(e) => {
                    eprintln!("kv_load: connect: {e}");
                    errors.connect += 1;
                }
            }
            next_id += 1;
        }
        if Instant::now() > deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("connections still pending after {CONNECT_LIMIT:?}"),
            ));
        }
        poll.poll(&mut events, Some(Duration::from_millis(100)))?;
        for event in events.iter() {
            let client = &mut clients[event.token().0];
            if client.connected || client.closed {
                continue;
            }
            let failure = if event.is_error() || event.is_write_closed() {
                Some(format!("{:?}", client.stream.take_error().ok().flatten()))
            } else if event.is_writable() || event.is_readable() {
                match client.stream.is_connected() {
                    Ok(true) => {
                        if let Some(tcp) = client.stream.as_tcp() {
                            let _ = tcp.set_nodelay(true);
                        }
                        // With TLS, connected means the handshake is complete.
                        match client.handshake() {
                            Err(e) => Some(format!("TLS handshake: {e}")),
                            Ok(()) if client.handshaking() => None,
                            Ok(()) => {
                                client.connected = true;
                                connecting -= 1;
                                None
                            }
                        }
                    }
                    Ok(false) => None,
                    Err(e) => Some(e.to_string()),
                }
            } else {
                None
            };
            if let Some(reason) = failure {
                eprintln!("kv_load: connect failed: {reason}");
                errors.connect += 1;
                client.closed = true;
                connecting -= 1;
            }
        }
    }
    Ok(clients)
}

/// With `--websocket`: the upgrade, a masked binary message of `length` bytes, and the
/// server's frame that echoes it.
fn websocket(length: usize) -> client::Exchange {
    use kv_testkit::websocket::{frame, UPGRADE_REQUEST};
    let payload = kv_testkit::pattern(length, 7);
    client::Exchange {
        request: frame(0x82, &payload, Some([0x37, 0xfa, 0x21, 0x3d])),
        reply: frame(0x82, &payload, None),
        upgrade: Some(UPGRADE_REQUEST.to_vec()),
    }
}

/// A client configuration trusting the CA certificates in `path`.
fn tls_config(path: &std::path::Path) -> io::Result<std::sync::Arc<rustls::ClientConfig>> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for certificate in rustls::pki_types::CertificateDer::pem_file_iter(path)
        .map_err(|e| io::Error::other(format!("{}: {e}", path.display())))?
    {
        let certificate =
            certificate.map_err(|e| io::Error::other(format!("{}: {e}", path.display())))?;
        roots.add(certificate).map_err(io::Error::other)?;
    }
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(io::Error::other)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(std::sync::Arc::new(config))
}

/// Keeps `--depth` lines in flight on every connection until the time or the line quota is
/// up, then waits for the echoes still owed. Returns the latencies.
fn drive(
    args: &Args,
    poll: &mut Poll,
    clients: &mut [Client],
    errors: &mut Errors,
) -> io::Result<Histogram> {
    let mut events = Events::with_capacity(4096);
    let deadline = Instant::now() + Duration::from_secs_f64(args.duration);
    let quota = args.lines.unwrap_or(u64::MAX);
    let mut histogram = Histogram::new();
    let mut read_buffer = vec![0u8; 256 * 1024];
    let mut scratch = Vec::with_capacity(args.line_bytes as usize);
    if args.depth > 0 {
        for (key, client) in clients.iter_mut().enumerate() {
            if client.connected {
                client.send_lines((args.depth as u64).min(quota), &mut scratch);
                if let Err(e) = client.flush() {
                    errors.fail(client, key, &e);
                }
            }
        }
    }
    loop {
        let now = Instant::now();
        // A timed run stops sending at the deadline; a counted one when the quota is met.
        let stopping = args.lines.is_none() && now >= deadline;
        let outstanding = clients
            .iter()
            .filter(|c| c.connected && !c.closed && c.received < c.sent)
            .count();
        let all_done = args.depth == 0
            || clients
                .iter()
                .all(|c| !c.connected || c.closed || c.received >= quota);
        if (stopping && outstanding == 0) || (args.lines.is_some() && all_done) {
            break;
        }
        if args.depth == 0 && now >= deadline {
            break;
        }
        if stopping && now >= deadline + DRAIN_LIMIT {
            eprintln!(
                "kv_load: {outstanding} connections still owe echoes {DRAIN_LIMIT:?} after the end"
            );
            errors.disconnects += outstanding as u64;
            break;
        }
        let wait = if stopping {
            Duration::from_millis(100)
        } else {
            deadline
                .saturating_duration_since(now)
                .min(Duration::from_millis(100))
        };
        poll.poll(&mut events, Some(wait))?;
        let now = Instant::now();
        for event in events.iter() {
            let key = event.token().0;
            let client = &mut clients[key];
            if client.closed || !client.connected {
                continue;
            }
            if event.is_writable() {
                if let Err(e) = client.flush() {
                    errors.fail(client, key, &e);
                    continue;
                }
            }
            if !(event.is_readable() || event.is_read_closed() || event.is_error()) {
                continue;
            }
            let received = match client.receive(&mut read_buffer, &mut histogram, now) {
                Ok(received) => received,
                Err(e) => {
                    errors.fail(client, key, &e);
                    continue;
                }
            };
            errors.mismatched_lines += received.mismatched;
            if received.eof {
                if client.received < client.sent || args.depth == 0 {
                    eprintln!("kv_load: connection {key} closed by the server");
                    errors.disconnects += 1;
                }
                client.closed = true;
                continue;
            }
            let more = if args.lines.is_none() && now >= deadline {
                0
            } else {
                received.lines.min(quota - client.sent)
            };
            if more > 0 {
                client.send_lines(more, &mut scratch);
                if let Err(e) = client.flush() {
                    errors.fail(client, key, &e);
                }
            }
        }
    }
    Ok(histogram)
}

fn report(args: &Args, measured: &Measured, errors: &Errors) -> io::Result<()> {
    let Measured {
        open,
        lines,
        histogram,
        ..
    } = measured;
    let line_len = match &args.request {
        Some(request) => request.len() as u64,
        None => args.line_bytes,
    };
    let seconds = measured.elapsed.as_secs_f64();
    println!(
        "connections {open} open of {} asked | line {line_len} B | depth {} | {:.2} s",
        args.connections, args.depth, seconds
    );
    if args.depth > 0 {
        println!(
            "lines {lines} | lines/s {:.0} | MB/s {:.1} (echoed payload, each way)",
            *lines as f64 / seconds,
            (lines * line_len) as f64 / seconds / 1e6
        );
        println!(
            "latency us: p50 {} | p99 {} | p99.9 {} | max {}",
            histogram.percentile(0.50),
            histogram.percentile(0.99),
            histogram.percentile(0.999),
            histogram.max_us()
        );
    }
    if let Some((before, after)) = measured.cpu {
        let cpu = (after.ns - before.ns) as f64;
        let (user, system) = (
            after.user_ticks - before.user_ticks,
            after.system_ticks - before.system_ticks,
        );
        let kernel_share = system as f64 * 100.0 / (user + system).max(1) as f64;
        if *lines > 0 {
            println!(
                "server cpu: {:.2} us per line | {:.0}% of one core | {:.0} ms in all \
                 | {kernel_share:.0}% of it in the kernel",
                cpu / 1e3 / *lines as f64,
                cpu / 1e9 / seconds * 100.0,
                cpu / 1e6
            );
        } else {
            println!(
                "server cpu: {:.0}% of one core",
                cpu / 1e9 / seconds * 100.0
            );
        }
    }
    if let (Some((before, connected)), Some(pid)) = (measured.rss_kib, args.server_pid) {
        let now_rss = proc::rss_kib(pid)?;
        println!(
            "server rss KiB: {before} before connecting | {connected} with {open} connected \
             | {now_rss} at the end | {:.0} bytes per connection",
            (connected.saturating_sub(before) * 1024) as f64 / (*open).max(1) as f64
        );
    }
    println!(
        "errors {} (connect {}, mismatched lines {}, disconnects {})",
        errors.total(),
        errors.connect,
        errors.mismatched_lines,
        errors.disconnects
    );
    Ok(())
}
