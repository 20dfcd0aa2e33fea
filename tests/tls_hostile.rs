//! What rustls holds of a client's input counts in the one buffer budget: crowds of TLS
//! clients that send most of a large handshake message, or most of a record, and stall,
//! keep the binary's peak memory within idle + the budget + a constant per connection,
//! while a polite TLS client beside them keeps being served. (Before, rustls' buffers were
//! outside the budget: 15,000 stalled ClientHellos of 65 KB took the server to 997 MB at a
//! 64 MiB budget.)

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use rustls::ClientConfig;
use std::time::{Duration, Instant};

use common::crowd::{connect_from, source_address};
use common::tls::{self, Pki};
use common::ServerProcess;
use kv_testkit::kernel;

/// What one connection may cost beyond the budget: as in tests/crowd.rs, and rustls' own
/// read buffer (4 KiB) and session state.
const PER_CONNECTION_KIB: u64 = 8;

/// The crowd: 500 hogs against a 2 MiB budget, or what `TLS_HOGS` and `TLS_BUDGET_KIB` say
/// (docs/protocols.md's runs use the release build with 15,000 and the default 64 MiB).
fn crowd() -> (usize, u64) {
    let number = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .and_then(|value| value.parse().ok())
            .unwrap_or(default)
    };
    (
        number("TLS_HOGS", 500) as usize,
        number("TLS_BUDGET_KIB", 2048),
    )
}

type Client = Arc<ClientConfig>;

fn server(pki: &Pki, budget_kib: u64) -> ServerProcess {
    let files = pki.write_server(1);
    let budget = (budget_kib * 1024).to_string();
    ServerProcess::start(&[
        "--tls-cert",
        &files.cert.to_string_lossy(),
        "--tls-key",
        &files.key.to_string_lossy(),
        "--tls-handshake-timeout",
        "60",
        "--max-buffered-bytes",
        &budget,
        "--metrics",
        "127.0.0.1:0",
    ])
}

/// Records of `content_type` carrying `body`, cut at 16 KiB as TLS cuts them.
fn records(content_type: u8, version: [u8; 2], body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for fragment in body.chunks(16 * 1024) {
        out.extend_from_slice(&[content_type, version[0], version[1]]);
        out.extend_from_slice(&(fragment.len() as u16).to_be_bytes());
        out.extend_from_slice(fragment);
    }
    out
}

/// The crowd's hogs each connect (`connect`: a TCP connection, or one that has completed
/// its handshake), then, once all are connected, send `attack` and stall, while a polite
/// TLS client makes round trips. The server's peak must stay within its memory with those
/// connections idle + the budget + a constant per connection, and the budget must have
/// come into play (what rustls holds is counted). An established TLS connection costs
/// some 7.8 KB idle (rustls' session and its 4 KiB read buffer): that is the connection's
/// own, whether it attacks or not, so the idle figure is taken with the hogs connected.
fn assert_bounded(
    what: &str,
    connect: impl Fn(&ServerProcess, &Client, usize) -> TcpStream,
    attack: &[u8],
) {
    let _turn = kernel::crowd_turn();
    common::raise_fd_limit();
    let (hogs, budget_kib) = crowd();
    let pki = Pki::new(what);
    let server = server(&pki, budget_kib);
    let config = tls::client_config(pki.ca_der(), None, None);
    let mut polite = tls::connect(server.addr(), &config).unwrap();
    tls::assert_echo(&mut polite, b"warm up\n");
    let mut hogs: Vec<TcpStream> = (0..hogs).map(|n| connect(&server, &config, n)).collect();
    let idle = server.status_kib("VmRSS");
    let done = AtomicBool::new(false);
    let round_trips = std::thread::scope(|scope| {
        let polite = scope.spawn(|| {
            let mut latencies = Vec::new();
            while !done.load(Ordering::SeqCst) {
                let started = Instant::now();
                let line = format!("polite {}\n", latencies.len());
                tls::assert_echo(&mut polite, line.as_bytes());
                latencies.push(started.elapsed());
            }
            latencies.sort();
            latencies
        });
        for hog in &mut hogs {
            let _ = hog.write_all(attack);
        }
        // The hogs have sent all they will, and the server has read what it will.
        let received = wait_until_quiet(&server);
        let metrics = common::scrape(server.metrics_addr());
        done.store(true, Ordering::SeqCst);
        let rounds = polite
            .join()
            .expect("the polite client was served throughout");
        (rounds, received, metrics)
    });
    let (latencies, received, metrics) = round_trips;
    let p99 = latencies.get(latencies.len() * 99 / 100).copied();
    let round_trips = latencies.len();
    let peak = server.status_kib("VmHWM");
    let bound = idle + budget_kib + hogs.len() as u64 * PER_CONNECTION_KIB;
    drop(hogs);
    let closed = metrics["kv_server_connections_closed_total{reason=\"buffer_budget\"}"];
    let waiting = metrics["kv_server_reads_waiting_for_budget"];
    println!(
        "{what}: {received} bytes received; peak {peak} KiB (idle {idle} KiB, bound {bound} \
         KiB); {closed} closed for the budget, {waiting} waiting for room; polite client \
         {round_trips} round trips, p99 {p99:?}"
    );
    assert!(peak <= bound, "{what}: peak {peak} KiB over {bound} KiB");
    // What rustls holds was counted: the budget stopped reading some, or closed them.
    assert!(
        closed + waiting > 0.0,
        "{what}: the budget never came into play"
    );
    assert!(round_trips > 0);
}

/// Waits until what the budget holds, and how many it closed, stop changing for half a
/// second (the hogs have sent all they will and the server has read what it will; the
/// polite client's traffic holds nothing): the bytes received by then.
fn wait_until_quiet(server: &ServerProcess) -> f64 {
    let state = || {
        let metrics = common::scrape(server.metrics_addr());
        let value = |name: &str| metrics.get(name).copied().unwrap_or(0.0);
        (
            value("kv_server_buffer_budget_used_bytes"),
            value("kv_server_connections_closed_total{reason=\"buffer_budget\"}"),
            value("kv_server_bytes_received_total{transport=\"tcp\"}"),
        )
    };
    let mut last = state();
    let deadline = Instant::now() + common::TIMEOUT;
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let now = state();
        if (now.0, now.1) == (last.0, last.1) || Instant::now() > deadline {
            return now.2;
        }
        last = now;
    }
}

/// 65,023 bytes of a ClientHello that says it is 65,000 bytes long: rustls puts the
/// message together from its four records and waits for the last byte.
#[test]
fn stalled_large_client_hellos_stay_within_the_budget() {
    let mut message = vec![1, 0, 0, 0];
    message[1..4].copy_from_slice(&65_000u32.to_be_bytes()[1..]);
    message.resize(4 + 65_000, 0x41);
    let mut flight = records(22, [3, 1], &message);
    flight.truncate(65_023);
    let connect = |server: &ServerProcess, _: &Client, n| {
        connect_from(source_address(n), server.addr(), false)
    };
    assert_bounded("client hellos", connect, &flight);
}

/// After a handshake, 16,600 bytes of a record that says it holds 16,640.
#[test]
fn stalled_unfinished_records_stay_within_the_budget() {
    // As long as a TLS 1.3 record may be (2^14 + 256), in one record.
    let mut record = vec![23, 3, 3];
    record.extend_from_slice(&16_640u16.to_be_bytes());
    record.resize(5 + 16_640, 0x42);
    let connect = |server: &ServerProcess, config: &Client, n| {
        let socket = connect_from(source_address(n), server.addr(), false);
        let mut stream = tls::handshake(socket, config).unwrap();
        tls::assert_echo(&mut stream, b"in\n");
        stream.sock
    };
    assert_bounded("unfinished records", connect, &record[..16_600]);
}
