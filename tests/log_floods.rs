//! Lines a client can cause are limited: however many clients fail the same way, the log
//! gets one line of a kind a second, and the next one counts what was held back. Each test
//! floods the binary with clients that each cause one such line (a telnet sub-negotiation
//! over 64 KiB, a TLS failure after the handshake, rustls' own warning about an IP address
//! sent as the server name), then, past the second, one more.

mod common;

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::ServerProcess;

/// Runs `clients` clients one after another through `client`, then one more after the
/// limit's second has passed. The lines containing `needle` must be at most one a second
/// (with a second's margin at each end), and, with the counts of those held back that
/// they carry (`; N similar warnings suppressed`), account for every client's.
fn assert_limited(server: &ServerProcess, needle: &str, clients: usize, client: impl Fn()) {
    let started = Instant::now();
    for _ in 0..clients {
        client();
    }
    let flood = started.elapsed();
    // Time is the subject: past the limit's second.
    std::thread::sleep(Duration::from_millis(1100));
    client();
    let (mut lines, mut accounted) = (Vec::new(), 0);
    let deadline = Instant::now() + common::TIMEOUT;
    while accounted < clients + 1 && Instant::now() < deadline {
        let Ok(line) = server.log.recv_timeout(Duration::from_millis(100)) else {
            continue;
        };
        if line.contains(needle) {
            accounted += 1 + held_back(&line);
            lines.push(line);
        }
    }
    let most = flood.as_secs() as usize + 3;
    println!(
        "{clients} clients in {flood:?}: {} lines; the last: {:?}",
        lines.len(),
        lines.last()
    );
    assert!(
        lines.len() <= most,
        "{} lines for {clients} clients in {flood:?}: {lines:#?}",
        lines.len()
    );
    assert!(accounted > clients, "{accounted} accounted for: {lines:#?}");
}

/// The count of lines held back that a line reports, if any.
fn held_back(line: &str) -> usize {
    line.split("; ")
        .filter_map(|part| part.strip_suffix(" similar warnings suppressed"))
        .filter_map(|count| count.parse::<usize>().ok())
        .sum()
}

/// Waits until the server closes `stream`, reading (and dropping) what it sends.
fn until_closed(stream: &mut std::net::TcpStream) {
    stream.set_read_timeout(Some(common::TIMEOUT)).unwrap();
    let mut sink = [0u8; 4096];
    while matches!(stream.read(&mut sink), Ok(n) if n > 0) {}
}

#[test]
fn telnet_sub_negotiations_over_the_limit() {
    let server = ServerProcess::start(&["--telnet"]);
    let mut overlong = vec![255, 250, 24]; // IAC SB TERMINAL-TYPE, never ended
    overlong.resize(3 + 65 * 1024, b'x');
    assert_limited(&server, "sub-negotiation longer", 300, || {
        let mut client = common::connect(server.addr());
        let _ = client.write_all(&overlong);
        until_closed(&mut client);
    });
}

#[test]
fn tls_failures_after_the_handshake() {
    let pki = common::tls::Pki::new("log_floods");
    let files = pki.write_server(1);
    let (cert, key) = (files.cert.to_string_lossy(), files.key.to_string_lossy());
    let server = ServerProcess::start(&["--tls-cert", &cert, "--tls-key", &key]);
    let config = common::tls::client_config(pki.ca_der(), None, None);
    assert_limited(&server, "TLS failed", 100, || {
        let mut stream = common::tls::connect(server.addr(), &config).unwrap();
        common::tls::assert_echo(&mut stream, b"a line first\n");
        // An application-data record no key opens.
        let _ = stream
            .sock
            .write_all(b"\x17\x03\x03\x00\x20________________________________");
        until_closed(&mut stream.sock);
    });
}

/// rustls warns of its own about a client that sends an IP address as the server's name
/// (socat and sslyze do): those lines pass through the same limit.
#[test]
#[ignore = "needs openssl (apt-get install openssl); cargo test -- --include-ignored"]
fn rustls_warnings_about_ip_addresses_as_server_names() {
    common::require_tool("openssl", "openssl");
    let pki = common::tls::Pki::new("log_floods_sni");
    let files = pki.write_server(1);
    let (cert, key) = (files.cert.to_string_lossy(), files.key.to_string_lossy());
    let server = ServerProcess::start(&["--tls-cert", &cert, "--tls-key", &key]);
    assert_limited(&server, "[rustls", 30, || {
        let status = Command::new("openssl")
            .args([
                "s_client",
                "-quiet",
                "-no_ign_eof",
                "-servername",
                "127.0.0.1",
            ])
            .arg("-connect")
            .arg(server.addr().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(status.code().is_some());
    });
}
