//! `kv_load`: the load generator behind the README's figures.
//!
//! It opens N connections to a line echo server, keeps D lines of L bytes in flight on each
//! for a set time (or a set number of lines), checks every echoed byte against what was sent,
//! and prints lines/s, MB/s, latency percentiles and the error count. Given the server's pid
//! it also reports the server's CPU time per line and its memory per connection, read from
//! /proc, so that a run measures the server and not the client. `--depth 0` holds the
//! connections idle, for memory measurements.
//!
//! Single-threaded on mio, like the server, so that 10,000 connections cost no threads and
//! the generator fits on one core while the server has the other.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

/// Drives a line echo server and verifies every byte it echoes.
#[derive(Debug, Parser)]
#[command(name = "kv_load", version, about)]
struct Args {
    /// Server address
    #[arg(long, default_value = "127.0.0.1:4040")]
    addr: SocketAddr,
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
}

/// Latency histogram: 1 us buckets below 100 ms, 100 us buckets up to 10 s, then one
/// overflow bucket. Exact enough for percentiles, and a fixed 1.6 MB however long the run.
struct Histogram {
    buckets: Vec<u64>,
    overflow: u64,
    max_us: u64,
    count: u64,
}

impl Histogram {
    const FINE_US: u64 = 100_000;
    const COARSE_STEP_US: u64 = 100;
    const LIMIT_US: u64 = 10_000_000;

    fn new() -> Self {
        let buckets = Self::FINE_US + (Self::LIMIT_US - Self::FINE_US) / Self::COARSE_STEP_US;
        Histogram {
            buckets: vec![0; buckets as usize],
            overflow: 0,
            max_us: 0,
            count: 0,
        }
    }

    fn record(&mut self, latency: Duration) {
        let us = latency.as_micros() as u64;
        self.max_us = self.max_us.max(us);
        self.count += 1;
        let index = if us < Self::FINE_US {
            us
        } else {
            Self::FINE_US + (us - Self::FINE_US) / Self::COARSE_STEP_US
        };
        match self.buckets.get_mut(index as usize) {
            Some(bucket) => *bucket += 1,
            None => self.overflow += 1,
        }
    }

    /// The latency below which `quantile` of the samples fall, in microseconds.
    fn percentile(&self, quantile: f64) -> u64 {
        let rank = ((self.count as f64) * quantile).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (index, &n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                let index = index as u64;
                return if index < Self::FINE_US {
                    index
                } else {
                    Self::FINE_US + (index - Self::FINE_US) * Self::COARSE_STEP_US
                };
            }
        }
        self.max_us
    }
}

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
}

struct Client {
    stream: TcpStream,
    template: Vec<u8>,
    connected: bool,
    closed: bool,
    /// Lines written so far (queued counts as written).
    sent: u64,
    /// Lines echoed back and verified.
    received: u64,
    /// Bytes of the line being received that have been checked.
    line_pos: usize,
    /// The line being received already differs from what was sent.
    line_differs: bool,
    /// The line expected next, regenerated as each one completes.
    expected: Vec<u8>,
    output: Vec<u8>,
    output_sent: usize,
    send_times: VecDeque<Instant>,
}

/// The bytes every line of connection `id` carries: a per-connection pattern of bytes other
/// than `\n`, ending in the newline. Made once per connection; lines differ by the sequence
/// number stamped at the front.
fn line_template(id: u64, len: usize) -> Vec<u8> {
    let mut state = id.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut line: Vec<u8> = (0..len - 1)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            match (state >> 32) as u8 {
                b'\n' => b' ',
                byte => byte,
            }
        })
        .collect();
    line.push(b'\n');
    line
}

/// Writes line `seq` of a connection, from its template, into `into`.
fn make_line(template: &[u8], seq: u64, into: &mut Vec<u8>) {
    into.clear();
    into.extend_from_slice(template);
    stamp(seq, &mut into[..template.len() - 1]);
}

/// Writes `seq` in hex, then a colon, over the front of `line` (as much as fits).
fn stamp(mut seq: u64, line: &mut [u8]) {
    let mut digits = [0u8; 17];
    let mut start = 16;
    digits[16] = b':';
    loop {
        start -= 1;
        digits[start] = b"0123456789abcdef"[(seq & 15) as usize];
        seq >>= 4;
        if seq == 0 {
            break;
        }
    }
    let digits = &digits[start..];
    let n = digits.len().min(line.len());
    line[..n].copy_from_slice(&digits[..n]);
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
    let line_len = args.line_bytes as usize;
    let mut poll = Poll::new()?;
    let mut events = Events::with_capacity(4096);
    let mut errors = Errors::default();
    let rss_before = args.server_pid.map(rss_kib).transpose()?;

    // Connect, a batch at a time, so that the server's backlog is not what is measured.
    let mut clients: Vec<Client> = Vec::with_capacity(args.connections);
    let mut connecting = 0usize;
    let mut next_id = 0usize;
    let connect_deadline = Instant::now() + Duration::from_secs(60);
    while next_id < args.connections || connecting > 0 {
        while next_id < args.connections && connecting < args.connect_batch {
            match TcpStream::connect(args.addr) {
                Ok(mut stream) => {
                    poll.registry().register(
                        &mut stream,
                        Token(clients.len()),
                        Interest::READABLE | Interest::WRITABLE,
                    )?;
                    let template = line_template(next_id as u64, line_len);
                    let mut expected = Vec::with_capacity(line_len);
                    make_line(&template, 0, &mut expected);
                    clients.push(Client {
                        stream,
                        template,
                        connected: false,
                        closed: false,
                        sent: 0,
                        received: 0,
                        line_pos: 0,
                        line_differs: false,
                        expected,
                        output: Vec::new(),
                        output_sent: 0,
                        send_times: VecDeque::with_capacity(args.depth),
                    });
                    connecting += 1;
                }
                Err(e) => {
                    eprintln!("kv_load: connect: {e}");
                    errors.connect += 1;
                }
            }
            next_id += 1;
        }
        if Instant::now() > connect_deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "connections still pending after 60 s",
            ));
        }
        poll.poll(&mut events, Some(Duration::from_millis(100)))?;
        for event in events.iter() {
            let client = &mut clients[event.token().0];
            if client.connected || client.closed {
                continue;
            }
            if event.is_error() || event.is_write_closed() {
                let reason = client.stream.take_error().ok().flatten();
                eprintln!("kv_load: connect failed: {reason:?}");
                errors.connect += 1;
                client.closed = true;
                connecting -= 1;
            } else if event.is_writable() {
                match client.stream.peer_addr() {
                    Ok(_) => {
                        client.connected = true;
                        let _ = client.stream.set_nodelay(true);
                        connecting -= 1;
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotConnected => {}
                    Err(e) => {
                        eprintln!("kv_load: connect failed: {e}");
                        errors.connect += 1;
                        client.closed = true;
                        connecting -= 1;
                    }
                }
            }
        }
    }
    let open = clients.iter().filter(|c| c.connected).count();
    let rss_connected = args.server_pid.map(rss_kib).transpose()?;

    // Measure.
    let cpu_before = args.server_pid.map(server_cpu_ns).transpose()?;
    let ticks_before = args.server_pid.map(server_user_system_ticks).transpose()?;
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(args.duration);
    let quota = args.lines.unwrap_or(u64::MAX);
    let mut histogram = Histogram::new();
    let mut read_buffer = vec![0u8; 256 * 1024];
    let mut scratch = Vec::with_capacity(line_len);
    if args.depth > 0 {
        for (key, client) in clients.iter_mut().enumerate() {
            if client.connected {
                let lines = (args.depth as u64).min(quota);
                send_lines(client, lines, &mut scratch);
                if let Err(e) = flush(client) {
                    fail(client, key, &e, &mut errors);
                }
            }
        }
    }
    let mut stopping = false;
    loop {
        let now = Instant::now();
        if !stopping && (now >= deadline && args.lines.is_none()) {
            stopping = true;
        }
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
        if stopping && now >= deadline + Duration::from_secs(30) {
            eprintln!("kv_load: {outstanding} connections still owe echoes 30 s after the end");
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
                if let Err(e) = flush(client) {
                    fail(client, key, &e, &mut errors);
                    continue;
                }
            }
            if event.is_readable() || event.is_read_closed() || event.is_error() {
                match receive(client, &mut read_buffer, &mut histogram, now, line_len) {
                    Ok(completed) => {
                        if completed.mismatched > 0 {
                            errors.mismatched_lines += completed.mismatched;
                        }
                        if completed.eof {
                            if client.received < client.sent || args.depth == 0 {
                                eprintln!("kv_load: connection {key} closed by the server");
                                errors.disconnects += 1;
                            }
                            client.closed = true;
                            continue;
                        }
                        let more = if stopping || (args.lines.is_none() && now >= deadline) {
                            0
                        } else {
                            completed.lines.min(quota - client.sent)
                        };
                        if more > 0 {
                            send_lines(client, more, &mut scratch);
                            if let Err(e) = flush(client) {
                                fail(client, key, &e, &mut errors);
                            }
                        }
                    }
                    Err(e) => fail(client, key, &e, &mut errors),
                }
            }
        }
    }
    let elapsed = started.elapsed();
    let cpu_after = args.server_pid.map(server_cpu_ns).transpose()?;
    let ticks_after = args.server_pid.map(server_user_system_ticks).transpose()?;
    let kernel_share = match (ticks_before, ticks_after) {
        (Some((user0, system0)), Some((user1, system1))) => {
            let (user, system) = (user1 - user0, system1 - system0);
            format!(
                " | {:.0}% of it in the kernel",
                system as f64 * 100.0 / (user + system).max(1) as f64
            )
        }
        _ => String::new(),
    };

    let lines: u64 = clients.iter().map(|c| c.received).sum();
    let seconds = elapsed.as_secs_f64();
    println!(
        "connections {open} open of {} asked | line {line_len} B | depth {} | {:.2} s",
        args.connections, args.depth, seconds
    );
    if args.depth > 0 {
        println!(
            "lines {lines} | lines/s {:.0} | MB/s {:.1} (echoed payload, each way)",
            lines as f64 / seconds,
            (lines * line_len as u64) as f64 / seconds / 1e6
        );
        println!(
            "latency us: p50 {} | p99 {} | p99.9 {} | max {}",
            histogram.percentile(0.50),
            histogram.percentile(0.99),
            histogram.percentile(0.999),
            histogram.max_us
        );
    }
    if let (Some(before), Some(after)) = (cpu_before, cpu_after) {
        let cpu = (after - before) as f64;
        if lines > 0 {
            println!(
                "server cpu: {:.2} us per line | {:.0}% of one core | {:.0} ms in all{kernel_share}",
                cpu / 1e3 / lines as f64,
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
    if let (Some(before), Some(connected)) = (rss_before, rss_connected) {
        let now_rss = rss_kib(args.server_pid.unwrap())?;
        println!(
            "server rss KiB: {before} before connecting | {connected} with {open} connected \
             | {now_rss} at the end | {:.0} bytes per connection",
            (connected.saturating_sub(before) * 1024) as f64 / open.max(1) as f64
        );
    }
    println!(
        "errors {} (connect {}, mismatched lines {}, disconnects {})",
        errors.total(),
        errors.connect,
        errors.mismatched_lines,
        errors.disconnects
    );
    Ok(errors.total())
}

fn fail(client: &mut Client, key: usize, error: &io::Error, errors: &mut Errors) {
    eprintln!("kv_load: connection {key}: {error}");
    errors.disconnects += 1;
    client.closed = true;
}

fn send_lines(client: &mut Client, lines: u64, scratch: &mut Vec<u8>) {
    let now = Instant::now();
    for _ in 0..lines {
        make_line(&client.template, client.sent, scratch);
        client.output.extend_from_slice(scratch);
        client.sent += 1;
        client.send_times.push_back(now);
    }
}

fn flush(client: &mut Client) -> io::Result<()> {
    while client.output_sent < client.output.len() {
        match client.stream.write(&client.output[client.output_sent..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => client.output_sent += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    client.output.clear();
    client.output_sent = 0;
    Ok(())
}

struct Received {
    lines: u64,
    mismatched: u64,
    eof: bool,
}

fn receive(
    client: &mut Client,
    buffer: &mut [u8],
    histogram: &mut Histogram,
    now: Instant,
    line_len: usize,
) -> io::Result<Received> {
    let mut result = Received {
        lines: 0,
        mismatched: 0,
        eof: false,
    };
    loop {
        let n = match client.stream.read(buffer) {
            Ok(0) => {
                result.eof = true;
                return Ok(result);
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(result),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let mut data = &buffer[..n];
        while !data.is_empty() {
            let take = (line_len - client.line_pos).min(data.len());
            let (chunk, rest) = data.split_at(take);
            client.line_differs |=
                chunk != &client.expected[client.line_pos..client.line_pos + take];
            client.line_pos += take;
            data = rest;
            if client.line_pos == line_len {
                if std::mem::take(&mut client.line_differs) {
                    result.mismatched += 1;
                }
                client.line_pos = 0;
                client.received += 1;
                result.lines += 1;
                if let Some(sent_at) = client.send_times.pop_front() {
                    histogram.record(now.saturating_duration_since(sent_at));
                }
                make_line(&client.template, client.received, &mut client.expected);
            }
        }
    }
}

/// Time the process has spent on a CPU, in nanoseconds (/proc/PID/schedstat).
fn server_cpu_ns(pid: u32) -> io::Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/schedstat"))?;
    text.split_whitespace()
        .next()
        .and_then(|field| field.parse().ok())
        .ok_or_else(|| io::Error::other("unreadable /proc/PID/schedstat"))
}

/// User and system CPU time of the process so far, in clock ticks (/proc/PID/stat).
fn server_user_system_ticks(pid: u32) -> io::Result<(u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let after_name = text
        .rfind(')')
        .map(|end| &text[end + 2..])
        .ok_or_else(|| io::Error::other("unreadable /proc/PID/stat"))?;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let field = |index: usize| -> io::Result<u64> {
        fields
            .get(index)
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| io::Error::other("unreadable /proc/PID/stat"))
    };
    Ok((field(11)?, field(12)?))
}

fn rss_kib(pid: u32) -> io::Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    text.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| io::Error::other("no VmRSS in /proc/PID/status"))
}
