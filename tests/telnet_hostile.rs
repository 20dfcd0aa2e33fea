//! Hostile telnet clients cost what any client costs: commands that produce no echo, or
//! answers nobody reads, hold no memory outside the buffer budget, measured on the binary's
//! RSS (VmHWM: the peak), and answers left unread count in the budget like unread echoes.

mod common;

use std::io::Write;
use std::net::Shutdown;
use std::time::Instant;

use common::crowd::{connect_from, source_address};
use common::{assert_echo, ServerProcess};

const IAC: u8 = 255;
const DO: u8 = 253;
const EC: u8 = 247;
const AYT: u8 = 246;
const ECHO: u8 = 1;

/// The budget the server runs with here, in KiB.
const BUDGET_KIB: u64 = 8 * 1024;
/// What one connection may cost beyond the budget, in KiB (as in tests/crowd.rs: its slab
/// entry, allocator headers and holes).
const PER_CONNECTION_KIB: u64 = 8;

fn telnet_server() -> ServerProcess {
    let budget = (BUDGET_KIB * 1024).to_string();
    ServerProcess::start(&[
        "--telnet",
        "--max-buffered-bytes",
        &budget,
        "--metrics",
        "127.0.0.1:0",
    ])
}

/// Waits until the server's metric `name` reaches `at_least`.
fn wait_for_metric(server: &ServerProcess, name: &str, at_least: f64) -> f64 {
    let deadline = Instant::now() + common::TIMEOUT;
    loop {
        let value = common::scrape(server.metrics_addr())
            .get(name)
            .copied()
            .unwrap_or(0.0);
        if value >= at_least || Instant::now() > deadline {
            return value;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// A connection that has taken the server's offer, with its receive buffer small if asked.
fn telnet_client(server: &ServerProcess, n: usize, small_receive: bool) -> std::net::TcpStream {
    let mut stream = connect_from(source_address(n), server.addr(), small_receive);
    stream.set_read_timeout(Some(common::TIMEOUT)).unwrap();
    let mut offer = [0u8; 3];
    std::io::Read::read_exact(&mut stream, &mut offer).unwrap();
    stream
}

/// 300 clients each send one 64 KiB write of Erase Character or Are You There and read
/// nothing: every byte is read and decoded, and the server's peak stays within idle + the
/// budget + a constant per connection (before, the decoder's per-read lists made each
/// connection hold up to 766 KB, outside the budget).
#[test]
fn three_hundred_command_floods_stay_within_the_budget() {
    common::raise_fd_limit();
    let server = telnet_server();
    let mut probe = telnet_client(&server, 0, false);
    assert_echo(&mut probe, b"warm up\r\n");
    let idle = server.status_kib("VmRSS");
    const CLIENTS: usize = 300;
    let mut flood = Vec::with_capacity(CLIENTS);
    for n in 1..=CLIENTS {
        let command = if n % 2 == 0 { [IAC, EC] } else { [IAC, AYT] };
        let mut client = telnet_client(&server, n, true);
        client.write_all(&command.repeat(32 * 1024)).unwrap();
        flood.push(client);
    }
    let sent = (CLIENTS * 64 * 1024) as f64;
    let received = wait_for_metric(
        &server,
        "kv_server_bytes_received_total{transport=\"tcp\"}",
        sent,
    );
    assert!(
        received >= sent,
        "the server read {received} of {sent} bytes"
    );
    let commands = wait_for_metric(&server, "kv_server_telnet_commands_total", sent / 2.0);
    assert!(commands >= sent / 2.0, "{commands} commands counted");
    assert_echo(&mut probe, b"still served\r\n");
    let peak = server.status_kib("VmHWM");
    let bound = idle + BUDGET_KIB + CLIENTS as u64 * PER_CONNECTION_KIB;
    eprintln!("{CLIENTS} floods: peak {peak} KiB, idle {idle} KiB, bound {bound} KiB");
    assert!(peak <= bound, "peak {peak} KiB over {bound} KiB");
}

/// Negotiation answers a client does not read pile up like unread echoes: counted in the
/// budget, and reading pauses at the high-water mark.
#[test]
fn unread_negotiation_answers_count_in_the_budget() {
    let server = telnet_server();
    let client = telnet_client(&server, 0, true);
    let mut writer = client.try_clone().unwrap();
    // DO ECHO, refused with WONT ECHO each time: 3 bytes out for 3 in.
    let requests = [IAC, DO, ECHO].repeat(4_000_000);
    let flooding = std::thread::spawn(move || {
        let _ = writer.write_all(&requests);
    });
    let paused = wait_for_metric(&server, "kv_server_reads_paused", 1.0);
    assert_eq!(paused, 1.0, "reading never paused for the unread answers");
    let held = wait_for_metric(&server, "kv_server_buffer_budget_used_bytes", 64.0 * 1024.0);
    assert!(held >= 64.0 * 1024.0, "{held} bytes counted in the budget");
    client.shutdown(Shutdown::Both).unwrap();
    flooding.join().unwrap();
}
