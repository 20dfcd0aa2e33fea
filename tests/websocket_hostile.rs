//! What `--websocket` holds for a client counts in the one buffer budget: crowds of
//! WebSocket clients that send most of a large message, or most of an upgrade request, and
//! stall keep the binary's peak memory within its memory with them connected, plus the
//! budget, plus a constant per connection, while a polite WebSocket client beside them
//! keeps being served.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::crowd::{connect_from, source_address};
use common::websocket::{self as ws, BINARY, TEXT};
use common::ServerProcess;
use kv_testkit::kernel;

/// What one connection may cost beyond the budget: as in tests/crowd.rs, and the layer.
const PER_CONNECTION_KIB: u64 = 8;
const HOGS: usize = 500;
const BUDGET_KIB: u64 = 2048;

fn server() -> ServerProcess {
    let budget = (BUDGET_KIB * 1024).to_string();
    let max_message = (BUDGET_KIB * 1024 / 2).to_string();
    ServerProcess::start(&[
        "--websocket",
        "--websocket-max-message",
        &max_message,
        "--websocket-handshake-timeout",
        "60",
        "--max-buffered-bytes",
        &budget,
        "--metrics",
        "127.0.0.1:0",
    ])
}

/// The hogs each connect (and upgrade, when `upgraded`), then, once all are connected,
/// send `attack` and stall, while a polite client makes round trips. The server's peak
/// must stay within the bound, and the budget must have come into play.
fn assert_bounded(what: &str, upgraded: bool, attack: &[u8]) {
    let _turn = kernel::crowd_turn();
    common::raise_fd_limit();
    let server = server();
    let mut polite = common::connect(server.addr());
    ws::upgrade(&mut polite);
    ws::expect_echo(&mut polite, BINARY, b"warm up");
    let mut hogs: Vec<TcpStream> = (0..HOGS)
        .map(|n| {
            let mut hog = connect_from(source_address(n), server.addr(), false);
            if upgraded {
                ws::upgrade(&mut hog);
            }
            hog
        })
        .collect();
    let idle = server.status_kib("VmRSS");
    let done = AtomicBool::new(false);
    let (latencies, metrics) = std::thread::scope(|scope| {
        let polite = scope.spawn(|| {
            let mut latencies = Vec::new();
            while !done.load(Ordering::SeqCst) {
                let started = Instant::now();
                let message = format!("polite {}", latencies.len());
                ws::expect_echo(&mut polite, BINARY, message.as_bytes());
                latencies.push(started.elapsed());
            }
            latencies.sort();
            latencies
        });
        for hog in &mut hogs {
            let _ = hog.write_all(attack);
        }
        let metrics = wait_until_quiet(&server);
        done.store(true, Ordering::SeqCst);
        let latencies = polite
            .join()
            .expect("the polite client was served throughout");
        (latencies, metrics)
    });
    let peak = server.status_kib("VmHWM");
    let bound = idle + BUDGET_KIB + HOGS as u64 * PER_CONNECTION_KIB;
    drop(hogs);
    let closed = metrics["kv_server_connections_closed_total{reason=\"buffer_budget\"}"];
    let waiting = metrics["kv_server_reads_waiting_for_budget"];
    let p99 = latencies.get(latencies.len() * 99 / 100).copied();
    println!(
        "{what}: peak {peak} KiB (idle {idle} KiB, bound {bound} KiB); {closed} closed for \
         the budget, {waiting} waiting for room; polite client {} round trips, p99 {p99:?}",
        latencies.len()
    );
    assert!(peak <= bound, "{what}: peak {peak} KiB over {bound} KiB");
    assert!(
        closed + waiting > 0.0,
        "{what}: the budget never came into play"
    );
    assert!(!latencies.is_empty());
}

/// The metrics once what the budget holds, and how many it closed, stop changing for half
/// a second: the hogs have sent all they will and the server has read what it will.
fn wait_until_quiet(server: &ServerProcess) -> std::collections::HashMap<String, f64> {
    let state = |metrics: &std::collections::HashMap<String, f64>| {
        let value = |name: &str| metrics.get(name).copied().unwrap_or(0.0);
        (
            value("kv_server_buffer_budget_used_bytes"),
            value("kv_server_connections_closed_total{reason=\"buffer_budget\"}"),
        )
    };
    let mut last = common::scrape(server.metrics_addr());
    let deadline = Instant::now() + common::TIMEOUT;
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let now = common::scrape(server.metrics_addr());
        if state(&now) == state(&last) || Instant::now() > deadline {
            return now;
        }
        last = now;
    }
}

/// 900 KB of a text message that says it is 1 MiB long: text is held until it is whole,
/// to be checked as UTF-8. (A binary message in one frame is echoed as it arrives, and
/// held nowhere.)
#[test]
fn stalled_large_messages_stay_within_the_budget() {
    let length = BUDGET_KIB as usize * 1024 / 2;
    let mut frame = vec![0x81, 0x80 | 127];
    frame.extend_from_slice(&(length as u64).to_be_bytes());
    frame.extend_from_slice(&[9, 8, 7, 6]);
    frame.resize(frame.len() + 900_000, 0x5a);
    assert_bounded("stalled messages", true, &frame);
}

/// The same in fragments of 10,000 bytes, the last never sent.
#[test]
fn stalled_fragmented_messages_stay_within_the_budget() {
    let fragments = ws::fragments(BINARY, &[0x5a; 1_000_000], 10_000);
    let cut = fragments.len() - 10_100;
    assert_bounded("stalled fragments", true, &fragments[..cut]);
}

/// 8,000 bytes of an upgrade request that never ends.
#[test]
fn stalled_requests_stay_within_the_budget() {
    let mut request = b"GET / HTTP/1.1\r\nHost: localhost\r\nX-Padding: ".to_vec();
    request.resize(8_000, b'a');
    assert_bounded("stalled requests", false, &request);
}

/// A message of 16 MiB, put together (text) and echoed, leaves no buffer of its size behind:
/// not in the connection, not in the buffers the turn lends every connection. (Kept, the
/// turn's buffer was 16.5 MB of resident memory after two; given back, 0.1 MB here. The
/// bound is half a message: what the allocator keeps of smaller pieces varies with how the
/// reads fell, and is no buffer of the message's size.)
#[test]
fn the_memory_of_a_large_message_is_given_back() {
    // Not beside the crowds of the other tests: their clients would slow this one's reads.
    let _turn = kernel::crowd_turn();
    let server = ServerProcess::start(&["--websocket"]);
    let mut stream = common::connect(server.addr());
    ws::upgrade(&mut stream);
    ws::expect_echo(&mut stream, TEXT, b"warm up");
    let before = server.status_kib("RssAnon");
    let text = vec![b'k'; 16 << 20];
    for _ in 0..2 {
        ws::expect_echo(&mut stream, TEXT, &text);
    }
    let after = server.status_kib("RssAnon");
    println!("anonymous RSS: {before} KiB before, {after} KiB after two 16 MiB messages");
    assert!(after < before + 8192, "{after} KiB kept, from {before} KiB");
}
