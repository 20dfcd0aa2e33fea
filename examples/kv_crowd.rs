//! `kv_crowd`: how long a polite client waits while others load the server.
//!
//! One polite client makes back-to-back round trips of a 16-byte line for the whole run and
//! reports its latency percentiles and its worst wait, while the rest of the run loads the
//! server in one of three ways:
//!
//! - `crowd`: hogs from as many loopback addresses, each sending up to `--quota` bytes
//!   (1 KiB lines, or no newline at all with `--no-newlines`) without reading; afterwards
//!   every hog reads back what it sent, and each byte is checked.
//! - `storm`: a storm of new connections, each sending one line, reading its echo and
//!   closing, from as many threads as `--storm-threads`.
//! - `scrapers`: metrics scrapers (`--metrics ADDR`) pipelining requests and reading the
//!   answers as fast as they come.
//! - `telnet`: hostile telnet clients against a server run with `--telnet`, none of them
//!   reading: `--flappers` write `DO BINARY`/`DONT BINARY` pairs 64 KiB at a time, `--ayts`
//!   write Are You There as fast. The polite client speaks telnet too.
//!
//! - `subscribers`: against a server run with `--kv`, `--subscribers` connections
//!   subscribed to one bucket and a writer changing it `--puts-per-second` times a second,
//!   every change fanned out to all of them. The polite client GETs a key of that bucket;
//!   afterwards every subscriber's pushes are read and counted.
//!
//! - `websockets`: against a server run with `--websocket`, `--hogs` WebSocket clients, each
//!   from its own loopback address, sending 1 KiB binary messages (up to `--quota` bytes)
//!   without reading. The polite client speaks WebSocket too: 16-byte messages.
//!
//! Given the server's pid it reports the server's peak RSS. `benches/crowd.sh` runs it
//! against kv_server and the tokio echoes side by side. An example, not an installed binary:
//! `cargo build --release --example kv_crowd`.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use kv_testkit::crowd::{connect_from, push_all, read_back_all, source_address, Hog};
use kv_testkit::proc;

/// Measures a polite client's round trips while a crowd, a connect storm or metrics
/// scrapers load a line echo server.
#[derive(Debug, Parser)]
#[command(name = "kv_crowd", version)]
struct Args {
    /// Server address
    #[arg(long, default_value = "127.0.0.1:4040")]
    addr: SocketAddr,
    /// What loads the server beside the polite client
    #[arg(long, value_enum, default_value_t = Scenario::Crowd)]
    scenario: Scenario,
    /// Seconds the polite client runs (and the load with it)
    #[arg(short = 't', long, default_value_t = 10.0)]
    seconds: f64,
    /// crowd: clients sending without reading, each from its own loopback address
    #[arg(long, default_value_t = 2000)]
    hogs: usize,
    /// crowd: bytes each hog sends at most. What the hogs send and do not read stays in
    /// kernel buffers; 2,000 x 600 KB stays under the TCP memory pressure mark of a machine
    /// with 24 GiB (`net.ipv4.tcp_mem`), past which the kernel drops segments
    #[arg(long, default_value_t = 600_000)]
    quota: usize,
    /// crowd: hogs never end a line
    #[arg(long)]
    no_newlines: bool,
    /// crowd: hogs take a 4 KiB receive buffer, so that the echoes they do not read pile
    /// up in the server (and its buffer budget) rather than in their own kernel buffers
    #[arg(long)]
    small_receive: bool,
    /// storm: threads opening connections one after another
    #[arg(long, default_value_t = 8)]
    storm_threads: usize,
    /// The server's metrics address: scraped by the scrapers, and at the end of any run
    /// for the server's own account of its turns
    #[arg(long)]
    metrics: Option<SocketAddr>,
    /// scrapers: how many
    #[arg(long, default_value_t = 16)]
    scrapers: usize,
    /// telnet: connections flapping BINARY
    #[arg(long, default_value_t = 10)]
    flappers: usize,
    /// telnet: connections sending Are You There
    #[arg(long, default_value_t = 50)]
    ayts: usize,
    /// The server's pid: report its peak RSS
    #[arg(long)]
    server_pid: Option<u32>,
    /// subscribers: connections subscribed to the bucket
    #[arg(long, default_value_t = 10_000)]
    subscribers: usize,
    /// subscribers: changes to the bucket a second, each pushed to every subscriber
    #[arg(long, default_value_t = 10.0)]
    puts_per_second: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    Crowd,
    Storm,
    Scrapers,
    Telnet,
    Subscribers,
    Websockets,
}

/// How long read-back and connects may take before the run counts a failure.
const PATIENCE: Duration = Duration::from_secs(120);

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(0) => ExitCode::SUCCESS,
        Ok(errors) => {
            eprintln!("kv_crowd: {errors} errors");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("kv_crowd: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> io::Result<u64> {
    let idle = args.server_pid.map(proc::rss_kib).transpose()?;
    let kernel_before = KernelTcp::read()?;
    let duration = Duration::from_secs_f64(args.seconds);
    let done = AtomicBool::new(false);
    let mut errors = 0;
    let (latencies, report) = std::thread::scope(|scope| -> io::Result<_> {
        // The load is in place before the polite client starts timing.
        let mut hogs = match args.scenario {
            Scenario::Crowd => (0..args.hogs)
                .map(|n| {
                    let stream = connect_from(source_address(n), args.addr, args.small_receive);
                    Hog::new(stream, n as u64, args.quota, !args.no_newlines)
                })
                .collect(),
            _ => Vec::new(),
        };
        let telnet = args.scenario == Scenario::Telnet;
        let kv = args.scenario == Scenario::Subscribers;
        let websocket = args.scenario == Scenario::Websockets;
        let mut websocket_hogs = if websocket {
            (0..args.hogs)
                .map(|n| {
                    let mut stream = connect_from(source_address(n), args.addr, args.small_receive);
                    upgrade(&mut stream)?;
                    stream.set_nonblocking(true)?;
                    Ok((stream, 0usize))
                })
                .collect::<io::Result<Vec<_>>>()?
        } else {
            Vec::new()
        };
        let subscribers = if kv {
            subscribe(args.addr, args.subscribers)?
        } else {
            Vec::new()
        };
        let done_ref = &done;
        let polite = scope.spawn(move || polite_client(args.addr, telnet, kv, websocket, done_ref));
        let report = match args.scenario {
            Scenario::Crowd => {
                push_all(&mut hogs, duration, duration);
                done.store(true, Ordering::SeqCst);
                let pushed: usize = hogs.iter().map(|hog| hog.sent).sum();
                let (intact, closed, wrong) = read_back_all(&mut hogs, Instant::now() + PATIENCE);
                for e in wrong.iter().take(5) {
                    eprintln!("kv_crowd: a hog's echo went wrong: {e}");
                }
                errors += wrong.len() as u64;
                format!(
                    "hogs: {} MB pushed, intact {intact}, closed {closed}, wrong {}",
                    pushed / 1_000_000,
                    wrong.len()
                )
            }
            Scenario::Storm => {
                let (opened, failed) = (AtomicU64::new(0), AtomicU64::new(0));
                std::thread::scope(|storm| {
                    for thread in 0..args.storm_threads {
                        let (opened, failed, done) = (&opened, &failed, &done);
                        storm.spawn(move || storm_client(args.addr, thread, opened, failed, done));
                    }
                    std::thread::sleep(duration);
                    done.store(true, Ordering::SeqCst);
                });
                let (opened, failed) = (opened.into_inner(), failed.into_inner());
                errors += failed;
                format!(
                    "storm: {opened} connections, {:.0}/s, failed {failed}",
                    opened as f64 / args.seconds
                )
            }
            Scenario::Scrapers => {
                let metrics = args.metrics.ok_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::InvalidInput,
                        "--scenario scrapers needs --metrics",
                    )
                })?;
                let answered = AtomicU64::new(0);
                std::thread::scope(|scrapers| {
                    for _ in 0..args.scrapers {
                        let (answered, done) = (&answered, &done);
                        scrapers.spawn(move || scraper(metrics, answered, done));
                    }
                    std::thread::sleep(duration);
                    done.store(true, Ordering::SeqCst);
                });
                format!("scrapes: {} answered", answered.into_inner())
            }
            Scenario::Telnet => {
                let sent = AtomicU64::new(0);
                let pair = [255, 253, 0, 255, 254, 0];
                let ayt = [255, 246];
                std::thread::scope(|hostile| {
                    for n in 0..args.flappers + args.ayts {
                        let command: &[u8] = if n < args.flappers { &pair } else { &ayt };
                        let (sent, done) = (&sent, &done);
                        hostile.spawn(move || hostile_telnet(args.addr, n, command, sent, done));
                    }
                    std::thread::sleep(duration);
                    done.store(true, Ordering::SeqCst);
                });
                format!(
                    "telnet: {} flappers and {} AYT senders wrote {} MB of commands",
                    args.flappers,
                    args.ayts,
                    sent.into_inner() / 1_000_000
                )
            }
            Scenario::Websockets => {
                let pushed = push_messages(&mut websocket_hogs, args.quota, duration);
                done.store(true, Ordering::SeqCst);
                format!(
                    "websocket hogs: {} MB of messages pushed by {}, none read",
                    pushed / 1_000_000,
                    websocket_hogs.len()
                )
            }
            Scenario::Subscribers => {
                let puts = change_the_bucket(args.addr, args.puts_per_second, duration)?;
                done.store(true, Ordering::SeqCst);
                let (complete, short) = count_pushes(subscribers, puts);
                errors += short as u64;
                format!(
                    "subscribers: {} got all {puts} pushes, {short} did not ({} pushes in all)",
                    complete,
                    puts * args.subscribers
                )
            }
        };
        let latencies = polite.join().expect("the polite client")?;
        Ok((latencies, report))
    })?;
    print_latencies(&latencies);
    println!("{report}");
    let kernel = KernelTcp::read()?.since(kernel_before);
    println!(
        "kernel: TCP memory pressure entered {} times, {} segments dropped for want of \
         receive memory, {} packets dropped for a full backlog, {} segments retransmitted",
        kernel.memory_pressures,
        kernel.receive_queue_drops,
        kernel.backlog_drops,
        kernel.retransmissions
    );
    if let Some(metrics) = args.metrics {
        print_turns(metrics)?;
    }
    if let (Some(pid), Some(idle)) = (args.server_pid, idle) {
        let peak = proc::status_kib(pid, "VmHWM")?;
        println!("server: peak RSS {peak} KiB (before the run {idle} KiB)");
    }
    Ok(errors)
}

/// The kernel's own counters that say whether a run was measuring the server or the
/// kernel: past `net.ipv4.tcp_mem`'s pressure mark the kernel drops segments, and so it
/// does when a CPU's backlog of packets to process passes `net.core.netdev_max_backlog`
/// (loopback traffic goes through it); the clients of any server then wait for
/// retransmissions (a loss probe, or a 200 ms time-out and more), whatever the server does.
#[derive(Debug, Clone, Copy)]
struct KernelTcp {
    memory_pressures: u64,
    receive_queue_drops: u64,
    backlog_drops: u64,
    retransmissions: u64,
}

impl KernelTcp {
    fn read() -> io::Result<KernelTcp> {
        let netstat = std::fs::read_to_string("/proc/net/netstat")?;
        let mut lines = netstat.lines().filter(|line| line.starts_with("TcpExt:"));
        let (names, values) = (lines.next().unwrap_or(""), lines.next().unwrap_or(""));
        let field = |wanted: &str| {
            names
                .split_whitespace()
                .zip(values.split_whitespace())
                .find(|(name, _)| *name == wanted)
                .and_then(|(_, value)| value.parse().ok())
                .unwrap_or(0)
        };
        let snmp = std::fs::read_to_string("/proc/net/snmp")?;
        let mut tcp = snmp.lines().filter(|line| line.starts_with("Tcp:"));
        let (tcp_names, tcp_values) = (tcp.next().unwrap_or(""), tcp.next().unwrap_or(""));
        let retransmissions = tcp_names
            .split_whitespace()
            .zip(tcp_values.split_whitespace())
            .find(|(name, _)| *name == "RetransSegs")
            .and_then(|(_, value)| value.parse().ok())
            .unwrap_or(0);
        // One line per CPU; the second column counts packets dropped for a full backlog.
        let backlog_drops = std::fs::read_to_string("/proc/net/softnet_stat")?
            .lines()
            .filter_map(|line| line.split_whitespace().nth(1))
            .filter_map(|hex| u64::from_str_radix(hex, 16).ok())
            .sum();
        Ok(KernelTcp {
            memory_pressures: field("TCPMemoryPressures"),
            receive_queue_drops: field("TCPRcvQDrop"),
            backlog_drops,
            retransmissions,
        })
    }

    fn since(self, before: KernelTcp) -> KernelTcp {
        KernelTcp {
            memory_pressures: self.memory_pressures - before.memory_pressures,
            receive_queue_drops: self.receive_queue_drops - before.receive_queue_drops,
            backlog_drops: self.backlog_drops - before.backlog_drops,
            retransmissions: self.retransmissions - before.retransmissions,
        }
    }
}

/// The server's account of its turns, from its metrics: the longest, and how many took
/// longer than 1 ms and than 20 ms.
fn print_turns(metrics: SocketAddr) -> io::Result<()> {
    let mut stream = TcpStream::connect(metrics)?;
    stream.write_all(b"GET /metrics HTTP/1.0\r\n\r\n")?;
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    let value = |name: &str| {
        text.lines().find_map(|line| {
            line.strip_prefix(name)?
                .strip_prefix(' ')?
                .parse::<f64>()
                .ok()
        })
    };
    let Some(longest) = value("kv_server_turn_duration_max_seconds") else {
        return Ok(()); // A server that does not tell.
    };
    let count = value("kv_server_turn_duration_seconds_count").unwrap_or(0.0);
    let within = |le: &str| {
        value(&format!(
            "kv_server_turn_duration_seconds_bucket{{le=\"{le}\"}}"
        ))
        .unwrap_or(0.0)
    };
    println!(
        "turns: {count} turns, longest {} us, {} over 1 ms, {} over 25 ms",
        (longest * 1e6).round(),
        count - within("0.001"),
        count - within("0.025")
    );
    Ok(())
}

/// Round trips of a 16-byte line until `done`: each one's latency. As a telnet client it
/// first takes the server's offer, and ends its lines with CR LF.
/// With `--kv`: makes the bucket and the polite client's key, then `count` connections
/// subscribed to it, each known to be subscribed (a GET after its SUBSCRIBE answered).
fn subscribe(addr: SocketAddr, count: usize) -> io::Result<Vec<TcpStream>> {
    let mut setup = TcpStream::connect(addr)?;
    setup.write_all(b"CREATE fanout\nPUT fanout polite 1\n")?;
    let mut replies = [0u8; 8];
    setup.read_exact(&mut replies)?;
    let mut subscribers = Vec::with_capacity(count);
    for _ in 0..count {
        let mut stream = TcpStream::connect(addr)?;
        stream.write_all(b"SUBSCRIBE fanout\nGET fanout polite\n")?;
        subscribers.push(stream);
    }
    for stream in &mut subscribers {
        let mut answer = [0u8; 7];
        stream.set_read_timeout(Some(PATIENCE))?;
        stream.read_exact(&mut answer)?;
        if &answer != b"1\r\nOK\r\n" {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "subscribing failed",
            ));
        }
    }
    Ok(subscribers)
}

/// Changes the bucket `per_second` times a second for `duration`; returns how often.
fn change_the_bucket(addr: SocketAddr, per_second: f64, duration: Duration) -> io::Result<usize> {
    let mut writer = TcpStream::connect(addr)?;
    writer.set_nodelay(true)?;
    let started = Instant::now();
    let interval = Duration::from_secs_f64(1.0 / per_second);
    let mut puts = 0;
    while started.elapsed() < duration {
        writer.write_all(format!("PUT fanout k {puts:08}\n").as_bytes())?;
        let mut ok = [0u8; 4];
        writer.read_exact(&mut ok)?;
        puts += 1;
        let next = interval * puts as u32;
        if let Some(wait) = next.checked_sub(started.elapsed()) {
            std::thread::sleep(wait);
        }
    }
    Ok(puts)
}

/// Reads every subscriber's pushes: how many got all `puts` of them, in order, and how
/// many did not.
fn count_pushes(subscribers: Vec<TcpStream>, puts: usize) -> (usize, usize) {
    let expected: Vec<u8> = (0..puts)
        .flat_map(|n| format!("k SET TO {n:08}\r\n").into_bytes())
        .collect();
    let (mut complete, mut short) = (0, 0);
    for mut stream in subscribers {
        let mut got = vec![0u8; expected.len()];
        match stream.read_exact(&mut got) {
            Ok(()) if got == expected => complete += 1,
            _ => short += 1,
        }
    }
    (complete, short)
}

fn polite_client(
    addr: SocketAddr,
    telnet: bool,
    kv: bool,
    websocket: bool,
    done: &AtomicBool,
) -> io::Result<Vec<Duration>> {
    // The load shares this core: at nice -10 the polite thread runs as soon as its echo
    // arrives, so that its wait is the server's, not the load generator's (as root only).
    // SAFETY: setpriority on this thread's own id changes nothing else.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, -10);
    }
    let mut stream = connect_from(source_address(60_000), addr, false);
    stream.set_read_timeout(Some(PATIENCE))?;
    if telnet {
        // The server's offers come first, whatever they are: a first line's echo comes
        // after them.
        stream.write_all(b"warm up\r\n")?;
        let mut opening = Vec::new();
        while !opening.ends_with(b"warm up\r\n") {
            let mut byte = [0u8; 1];
            stream.read_exact(&mut byte)?;
            opening.push(byte[0]);
        }
    }
    let mut latencies = Vec::with_capacity(1 << 20);
    if websocket {
        upgrade(&mut stream)?;
        let mut back = [0u8; 18];
        let mut round = 0u64;
        while !done.load(Ordering::Relaxed) {
            let payload = format!("polite {:08}\n", round % 100_000_000);
            let message = masked_frame(payload.as_bytes());
            let started = Instant::now();
            stream.write_all(&message)?;
            stream.read_exact(&mut back)?;
            latencies.push(started.elapsed());
            if back[..2] != [0x82, 16] || &back[2..] != payload.as_bytes() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("polite message {round} came back as {back:?}"),
                ));
            }
            round += 1;
        }
        return Ok(latencies);
    }
    if kv {
        // A GET of its own key, beside the fan-out: the same 7 bytes back every time.
        let mut back = [0u8; 7];
        while !done.load(Ordering::Relaxed) {
            let started = Instant::now();
            stream.write_all(b"GET fanout polite\n")?;
            stream.read_exact(&mut back)?;
            latencies.push(started.elapsed());
            if &back != b"1\r\nOK\r\n" {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "a GET went wrong",
                ));
            }
        }
        return Ok(latencies);
    }
    let mut back = [0u8; 16];
    let mut round = 0u64;
    while !done.load(Ordering::Relaxed) {
        let line = if telnet {
            format!("polite {:07}\r\n", round % 10_000_000)
        } else {
            format!("polite {:08}\n", round % 100_000_000)
        };
        let started = Instant::now();
        stream.write_all(line.as_bytes())?;
        stream.read_exact(&mut back)?;
        latencies.push(started.elapsed());
        if back != line.as_bytes() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("polite round {round} came back as {back:?}"),
            ));
        }
        round += 1;
    }
    // Its own connection's retransmissions: a wait the kernel's timers made, not the server.
    if let Some(info) = tcp_info(&stream) {
        println!(
            "polite connection: {} segments retransmitted, {} of them after time-outs or \
             probes, {} bytes",
            info.tcpi_total_retrans, info.tcpi_retransmits, info.tcpi_bytes_retrans
        );
    }
    Ok(latencies)
}

/// Sends a WebSocket upgrade request and reads the answer's head, which must be a 101.
fn upgrade(stream: &mut TcpStream) -> io::Result<()> {
    stream.write_all(kv_testkit::websocket::UPGRADE_REQUEST)?;
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        stream.read_exact(&mut byte)?;
        head.push(byte[0]);
    }
    if !head.starts_with(b"HTTP/1.1 101 ") {
        return Err(io::Error::other("the WebSocket upgrade was refused"));
    }
    Ok(())
}

/// A masked binary message.
fn masked_frame(payload: &[u8]) -> Vec<u8> {
    kv_testkit::websocket::frame(0x82, payload, Some([0x12, 0x34, 0x56, 0x78]))
}

/// Writes 1 KiB binary messages on every hog's connection, never reading, until each has
/// sent `quota` bytes or `duration` is over; returns the bytes sent.
fn push_messages(hogs: &mut [(TcpStream, usize)], quota: usize, duration: Duration) -> usize {
    let block: Vec<u8> = (0..64)
        .flat_map(|n| masked_frame(&[b'a' + n as u8 % 26; 1024]))
        .collect();
    let deadline = Instant::now() + duration;
    let mut busy = true;
    while busy && Instant::now() < deadline {
        busy = false;
        for (stream, sent) in hogs.iter_mut() {
            if *sent >= quota {
                continue;
            }
            let at = *sent % block.len();
            match stream.write(&block[at..]) {
                Ok(n) if n > 0 => {
                    *sent += n;
                    busy = true;
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => *sent = quota,
            }
        }
        if !busy {
            // Every socket is full: the server has stopped reading them, as it should.
            std::thread::sleep(Duration::from_millis(10));
            busy = Instant::now() < deadline;
        }
    }
    hogs.iter().map(|(_, sent)| (*sent).min(quota)).sum()
}

/// Writes `command` over and over, 64 KiB at a time, never reading, until `done`.
fn hostile_telnet(addr: SocketAddr, n: usize, command: &[u8], sent: &AtomicU64, done: &AtomicBool) {
    let mut stream = connect_from(source_address(50_000 + n), addr, false);
    // A short write time-out: once the server stops reading it, the thread still sees
    // `done`.
    let _ = stream.set_write_timeout(Some(Duration::from_millis(100)));
    let burst = command.repeat(64 * 1024 / command.len());
    while !done.load(Ordering::Relaxed) {
        match stream.write(&burst) {
            Ok(n) => {
                sent.fetch_add(n as u64, Ordering::Relaxed);
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return,
        }
    }
}

fn tcp_info(stream: &TcpStream) -> Option<libc::tcp_info> {
    use std::os::fd::AsRawFd;
    // SAFETY: tcp_info is plain data; getsockopt writes at most `len` bytes into it.
    unsafe {
        let mut info: libc::tcp_info = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        let result = libc::getsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        );
        (result == 0).then_some(info)
    }
}

fn print_latencies(latencies: &[Duration]) {
    let mut sorted = latencies.to_vec();
    sorted.sort_unstable();
    let at = |q: f64| {
        let index = ((sorted.len() as f64 * q) as usize).min(sorted.len().saturating_sub(1));
        sorted.get(index).map_or(0, |d| d.as_micros())
    };
    println!(
        "polite: {} round trips, p50 {} us, p99 {} us, p99.9 {} us, max {} us",
        sorted.len(),
        at(0.5),
        at(0.99),
        at(0.999),
        sorted.last().map_or(0, |d| d.as_micros())
    );
}

/// Opens connections one after another until `done`: each sends a line, reads its echo and
/// closes. Source addresses rotate so that closed connections' ports are not what runs out.
fn storm_client(
    addr: SocketAddr,
    thread: usize,
    opened: &AtomicU64,
    failed: &AtomicU64,
    done: &AtomicBool,
) {
    let line = b"storm connection\n";
    let mut back = [0u8; 17];
    let mut n = 0usize;
    while !done.load(Ordering::Relaxed) {
        let source = source_address(2_000 + (thread * 1_000 + n % 1_000));
        n += 1;
        let result = (|| -> io::Result<()> {
            let mut stream = connect_from(source, addr, false);
            stream.set_read_timeout(Some(PATIENCE))?;
            stream.write_all(line)?;
            stream.read_exact(&mut back)?;
            if &back != line {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "wrong echo"));
            }
            Ok(())
        })();
        match result {
            Ok(()) => opened.fetch_add(1, Ordering::Relaxed),
            Err(e) => {
                eprintln!("kv_crowd: storm connection: {e}");
                failed.fetch_add(1, Ordering::Relaxed)
            }
        };
    }
}

/// A scraper that keeps 64 requests in flight, pipelined, and reads the answers as fast as
/// they come, until `done`.
fn scraper(metrics: SocketAddr, answered: &AtomicU64, done: &AtomicBool) {
    const IN_FLIGHT: usize = 64;
    let request = b"GET /metrics HTTP/1.1\r\nHost: kv_crowd\r\n\r\n".repeat(IN_FLIGHT);
    let Ok(mut stream) = TcpStream::connect(metrics) else {
        eprintln!("kv_crowd: cannot connect to the metrics endpoint");
        return;
    };
    let _ = stream.set_read_timeout(Some(PATIENCE));
    let mut input = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    while !done.load(Ordering::Relaxed) {
        if stream.write_all(&request).is_err() {
            return;
        }
        let mut answers = 0;
        while answers < IN_FLIGHT {
            match stream.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => input.extend_from_slice(&chunk[..n]),
            }
            while let Some(len) = complete_answer(&input) {
                input.drain(..len);
                answers += 1;
                answered.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// The length of the first complete HTTP answer in `input`, if it is all there.
fn complete_answer(input: &[u8]) -> Option<usize> {
    let head_end = memchr::memmem::find(input, b"\r\n\r\n")? + 4;
    let head = std::str::from_utf8(&input[..head_end]).ok()?;
    let body: usize = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .unwrap_or(0);
    (input.len() >= head_end + body).then_some(head_end + body)
}
