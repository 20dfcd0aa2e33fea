//! Criterion benches: kv_server against tokio echo baselines, in the same run.
//!
//! Every group measures three servers on loopback with the same client: kv_server (in
//! process, on its own thread), a raw tokio echo (no framing: the floor) and a
//! line-at-a-time tokio echo (the Elixir original's shape). At the end the ratio of each
//! server's throughput to kv_server's is printed per group. Client and servers share this
//! machine's cores, so the figures are for comparison within one run, not absolute.

mod baselines;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use baselines::Baseline;
use criterion::{BenchmarkGroup, Criterion, Throughput};
use kv_server::{Config, Server};

fn start_kv_server() -> SocketAddr {
    let server = Server::bind(Config::listening_on("127.0.0.1:0".parse().unwrap())).unwrap();
    let addr = server.local_addr();
    thread::spawn(move || server.run());
    addr
}

fn start_baseline(baseline: Baseline) -> SocketAddr {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        baselines::serve(
            baseline,
            "127.0.0.1:0".parse().unwrap(),
            None,
            move |addr| tx.send(addr).unwrap(),
        )
    });
    rx.recv().unwrap()
}

fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).unwrap();
    stream.set_nodelay(true).unwrap();
    stream
}

fn lines(count: usize, len: usize, seed: u8) -> Vec<u8> {
    let mut line: Vec<u8> = (0..len - 1).map(|i| b'a' + (i as u8 + seed) % 26).collect();
    line.push(b'\n');
    line.repeat(count)
}

/// One connection, one 128-byte line in flight: request/response latency.
fn round_trip(
    group: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    addr: SocketAddr,
) {
    let mut client = connect(addr);
    let line = lines(1, 128, 0);
    let mut back = vec![0u8; line.len()];
    group.throughput(Throughput::Elements(1));
    group.bench_function(name, |b| {
        b.iter(|| {
            client.write_all(&line).unwrap();
            client.read_exact(&mut back).unwrap();
        })
    });
    assert_eq!(back, line);
}

/// 50 connections, each with 32 lines of 16 bytes written at once, then read back.
fn pipelined(
    group: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    addr: SocketAddr,
) {
    const CONNECTIONS: usize = 50;
    const DEPTH: usize = 32;
    let mut clients: Vec<TcpStream> = (0..CONNECTIONS).map(|_| connect(addr)).collect();
    let batch = lines(DEPTH, 16, 3);
    let mut back = vec![0u8; batch.len()];
    group.throughput(Throughput::Elements((CONNECTIONS * DEPTH) as u64));
    group.bench_function(name, |b| {
        b.iter(|| {
            for client in &mut clients {
                client.write_all(&batch).unwrap();
            }
            for client in &mut clients {
                client.read_exact(&mut back).unwrap();
            }
        })
    });
    assert_eq!(back, batch);
}

/// One connection streaming 64 KiB lines, a writer thread keeping the pipeline full.
fn bulk(
    group: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    addr: SocketAddr,
) {
    const LINES_PER_ITER: usize = 16;
    let chunk = lines(LINES_PER_ITER, 64 * 1024, 7);
    group.throughput(Throughput::Bytes(chunk.len() as u64));
    group.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let mut reader = connect(addr);
            let mut writer = reader.try_clone().unwrap();
            let to_send = chunk.clone();
            let started = Instant::now();
            let sender = thread::spawn(move || {
                for _ in 0..iters {
                    writer.write_all(&to_send).unwrap();
                }
            });
            let mut left = chunk.len() as u64 * iters;
            let mut buffer = vec![0u8; 256 * 1024];
            while left > 0 {
                let n = reader.read(&mut buffer).unwrap();
                assert!(n > 0, "server closed early");
                left -= n as u64;
            }
            let elapsed = started.elapsed();
            sender.join().unwrap();
            elapsed
        })
    });
}

/// 1,000 connections, each with one 128-byte line in flight per round.
fn many_connections(
    group: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    addr: SocketAddr,
) {
    const CONNECTIONS: usize = 1_000;
    let mut clients: Vec<TcpStream> = (0..CONNECTIONS).map(|_| connect(addr)).collect();
    let line = lines(1, 128, 11);
    let mut back = vec![0u8; line.len()];
    group.throughput(Throughput::Elements(CONNECTIONS as u64));
    group.bench_function(name, |b| {
        b.iter(|| {
            for client in &mut clients {
                client.write_all(&line).unwrap();
            }
            for client in &mut clients {
                client.read_exact(&mut back).unwrap();
            }
        })
    });
    assert_eq!(back, line);
}

type Scenario = fn(&mut BenchmarkGroup<'_, criterion::measurement::WallTime>, &str, SocketAddr);

fn main() {
    kv_server::config::raise_open_file_limit().unwrap();
    let servers = [
        ("kv_server", start_kv_server()),
        (Baseline::Raw.name(), start_baseline(Baseline::Raw)),
        (Baseline::Line.name(), start_baseline(Baseline::Line)),
    ];
    let scenarios: [(&str, Scenario); 4] = [
        ("round_trip", round_trip),
        ("pipelined", pipelined),
        ("bulk", bulk),
        ("many_connections", many_connections),
    ];
    let mut criterion = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    for (scenario, run) in scenarios {
        let mut group = criterion.benchmark_group(scenario);
        for (name, addr) in servers {
            run(&mut group, name, addr);
        }
        group.finish();
    }
    criterion.final_summary();
    print_ratios(
        &scenarios.map(|(name, _)| name),
        &servers.map(|(name, _)| name),
    );
}

/// Prints, per group, each server's throughput relative to kv_server's, read back from the
/// estimates criterion just wrote (mean time per iteration; lower is faster).
fn print_ratios(groups: &[&str], servers: &[&str]) {
    let root = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into());
    println!("\nthroughput relative to kv_server (same run; >1 means faster than kv_server):");
    for group in groups {
        let mean = |server: &str| -> Option<f64> {
            let path = format!("{root}/criterion/{group}/{server}/new/estimates.json");
            let text = std::fs::read_to_string(path).ok()?;
            let after_mean = &text[text.find("\"mean\"")?..];
            let value = &after_mean[after_mean.find("\"point_estimate\":")? + 17..];
            let end = value.find([',', '}'])?;
            value[..end].trim().parse().ok()
        };
        let Some(ours) = mean("kv_server") else {
            continue;
        };
        let cells: Vec<String> = servers
            .iter()
            .filter_map(|server| mean(server).map(|t| format!("{server} {:.2}", ours / t)))
            .collect();
        println!("  {group:<17} {}", cells.join(" | "));
    }
}
