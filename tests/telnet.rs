//! `--telnet` over a real socket, byte by byte: what the server offers, what it takes out
//! of the stream, what it answers, and that without the flag every byte stays opaque.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;

use common::captured_log::captured_log;
use common::{assert_echo, TestServer};
use kv_server::{Config, Echo};

const IAC: u8 = 255;
const DONT: u8 = 254;
const DO: u8 = 253;
const WONT: u8 = 252;
const WILL: u8 = 251;
const SB: u8 = 250;
const EL: u8 = 248;
const EC: u8 = 247;
const AYT: u8 = 246;
const IP: u8 = 244;
const SE: u8 = 240;
const BINARY: u8 = 0;
const ECHO: u8 = 1;
const SGA: u8 = 3;
const TIMING_MARK: u8 = 6;

fn telnet_server() -> TestServer {
    let config = Config {
        telnet: true,
        ..Config::default()
    };
    TestServer::start_with(config, Box::new(Echo))
}

/// A connection that has read the server's offer and agreed to it.
fn negotiated(server: &TestServer) -> TcpStream {
    let mut stream = server.connect();
    expect(&mut stream, &[IAC, DO, BINARY]);
    stream.write_all(&[IAC, WILL, BINARY]).unwrap();
    stream
}

fn expect(stream: &mut TcpStream, bytes: &[u8]) {
    let mut back = vec![0u8; bytes.len()];
    stream.read_exact(&mut back).unwrap();
    assert_eq!(back, bytes);
}

#[test]
fn commands_are_taken_out_and_0xff_escaped_both_ways() {
    let server = telnet_server();
    let mut stream = negotiated(&server);
    // Data with an escaped 0xFF, commands and a sub-negotiation in the middle.
    let mut sent = b"h\xc3\xa9llo ".to_vec();
    sent.extend_from_slice(&[
        IAC, IAC, b' ', IAC, SB, 24, 0, b'x', IAC, SE, b'!', b'\r', b'\n',
    ]);
    stream.write_all(&sent).unwrap();
    expect(
        &mut stream,
        &[
            b'h', 0xc3, 0xa9, b'l', b'l', b'o', b' ', IAC, IAC, b' ', b'!', b'\r', b'\n',
        ],
    );
}

#[test]
fn ctrl_c_discards_the_line_and_the_timing_mark_is_answered_after_earlier_echoes() {
    let server = telnet_server();
    let mut stream = negotiated(&server);
    let mut sent = b"done\r\nhalf a li".to_vec();
    sent.extend_from_slice(&[IAC, IP, IAC, DO, TIMING_MARK]);
    sent.extend_from_slice(b"next\r\n");
    stream.write_all(&sent).unwrap();
    let mut wanted = b"done\r\n".to_vec();
    wanted.extend_from_slice(&[IAC, WILL, TIMING_MARK]);
    wanted.extend_from_slice(b"next\r\n");
    expect(&mut stream, &wanted);
}

#[test]
fn erase_character_and_erase_line_edit_the_unfinished_line() {
    let server = telnet_server();
    let mut stream = negotiated(&server);
    stream.write_all(b"wrong").unwrap();
    stream.write_all(&[IAC, EL]).unwrap();
    stream.write_all(b"rigth").unwrap();
    stream.write_all(&[IAC, EC, IAC, EC]).unwrap();
    stream.write_all(b"ht\r\n").unwrap();
    expect(&mut stream, b"right\r\n");
}

#[test]
fn are_you_there_is_answered_and_other_options_are_refused() {
    let server = telnet_server();
    let mut stream = negotiated(&server);
    stream.write_all(&[IAC, AYT]).unwrap();
    expect(&mut stream, b"\r\n[kv_server: yes, here]\r\n");
    stream.write_all(&[IAC, DO, ECHO, IAC, WILL, 24]).unwrap();
    expect(&mut stream, &[IAC, WONT, ECHO, IAC, DONT, 24]);
    assert_echo(&mut stream, b"still echoing\r\n");
}

/// SUPPRESS-GO-AHEAD would send PuTTY into character mode, BINARY from the server would
/// stop inetutils' telnet returning to column 0: both refused, once per request.
#[test]
fn sga_and_server_binary_are_refused() {
    let server = telnet_server();
    let mut stream = negotiated(&server);
    stream
        .write_all(&[IAC, WILL, SGA, IAC, DO, SGA, IAC, DO, BINARY])
        .unwrap();
    expect(
        &mut stream,
        &[IAC, DONT, SGA, IAC, WONT, SGA, IAC, WONT, BINARY],
    );
    assert_echo(&mut stream, b"line mode it is\r\n");
}

/// Each NVT line end, in one write or split between two, ends one line; the echo ends it
/// with CR LF.
#[test]
fn every_line_end_form_is_echoed_with_cr_lf() {
    let server = telnet_server();
    let mut stream = negotiated(&server);
    for (sent, echoed) in [
        (&b"crlf\r\n"[..], &b"crlf\r\n"[..]),
        (b"crnul\r\0", b"crnul\r\n"),
        (b"bare cr\r", b"bare cr\r\n"),
        (b"bare lf\n", b"bare lf\r\n"),
    ] {
        stream.write_all(sent).unwrap();
        expect(&mut stream, echoed);
    }
    // A CR ending one read, then its LF or NUL: the line is echoed when the CR arrives, and
    // the LF or NUL makes no empty line.
    for second in [&b"\n"[..], b"\0"] {
        stream.write_all(b"split\r").unwrap();
        expect(&mut stream, b"split\r\n");
        stream.write_all(second).unwrap();
        stream.write_all(b"next\r\n").unwrap();
        expect(&mut stream, b"next\r\n");
    }
}

/// RFC 855: a doubled 255 inside a sub-negotiation is data of it; only IAC SE ends it.
#[test]
fn a_doubled_255_in_a_subnegotiation_leaks_nothing() {
    let server = telnet_server();
    let mut stream = negotiated(&server);
    stream
        .write_all(b"\xff\xfa\x18\xff\xff\xf0leak\r\n\xff\xf0ok\r\n")
        .unwrap();
    expect(&mut stream, b"ok\r\n");
    assert_echo(&mut stream, b"and nothing else\r\n");
}

/// However many Are You There one read holds, it gets one answer: a client cannot make
/// the server write thirteen bytes for each two it sends.
#[test]
fn many_are_you_there_in_one_write_get_one_answer() {
    let server = telnet_server();
    let mut stream = negotiated(&server);
    let mut burst = [IAC, AYT].repeat(2000);
    burst.extend_from_slice(b"after\r\n");
    stream.write_all(&burst).unwrap();
    let answer = b"\r\n[kv_server: yes, here]\r\n";
    let mut got = Vec::new();
    while !got.ends_with(b"after\r\n") {
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).unwrap();
        assert!(n > 0, "closed after {got:?}");
        got.extend_from_slice(&chunk[..n]);
    }
    // The write may arrive in a few reads: one answer per server read, far fewer than 2000.
    let answers = got.windows(answer.len()).filter(|w| w == answer).count();
    assert!((1..=8).contains(&answers), "{answers} answers");
}

#[test]
fn an_endless_subnegotiation_is_cut_off() {
    let server = telnet_server();
    let mut stream = negotiated(&server);
    stream.write_all(&[IAC, SB, 24]).unwrap();
    let junk = vec![7u8; 128 * 1024];
    let _ = stream.write_all(&junk);
    assert!(common::closed_within(&mut stream, common::TIMEOUT));
    assert_echo(&mut negotiated(&server), b"others are fine\r\n");
}

/// Without `--telnet`, telnet's bytes are data like any other.
#[test]
fn without_the_flag_iac_sequences_come_back_byte_exact() {
    let server = TestServer::start();
    let mut stream = server.connect();
    let mut line = vec![IAC, IP, IAC, DO, TIMING_MARK, IAC, IAC, 0xFF, b'x'];
    line.extend_from_slice(&[IAC, SB, 24, IAC, SE, b'\n']);
    assert_echo(&mut stream, &line);
}

fn telnet_behind_a_balancer() -> TestServer {
    let config = Config {
        telnet: true,
        proxy_protocol: true,
        proxy_header_timeout: std::time::Duration::from_secs(5),
        ..Config::default()
    };
    TestServer::start_with(config, Box::new(Echo))
}

/// With a PROXY header, the balancer is not the telnet client: the offer waits for the
/// header, then goes out before anything else.
#[test]
fn negotiation_starts_after_the_proxy_header() {
    let server = telnet_behind_a_balancer();
    let mut stream = server.connect();
    stream.write_all(b"PROXY TCP4 192.0.2.7 ").unwrap();
    stream
        .set_read_timeout(Some(std::time::Duration::from_millis(200)))
        .unwrap();
    let mut early = [0u8; 16];
    match stream.read(&mut early) {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("before the header ended: {other:?}"),
    }
    stream.set_read_timeout(Some(common::TIMEOUT)).unwrap();
    stream.write_all(b"198.51.100.1 56324 4040\r\n").unwrap();
    expect(&mut stream, &[IAC, DO, BINARY]);
    // The header and the first line in one write: the offer, then the echo.
    let mut second = server.connect();
    second
        .write_all(b"PROXY TCP4 192.0.2.8 198.51.100.1 56325 4040\r\nfirst\r\n")
        .unwrap();
    expect(&mut second, b"\xff\xfd\x00first\r\n");
}

/// A connection closed for a bad header was sent nothing, no telnet offer either.
#[test]
fn a_bad_proxy_header_gets_no_telnet_offer() {
    let server = telnet_behind_a_balancer();
    let mut stream = server.connect();
    stream.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    assert_eq!(common::read_to_end(&mut stream).unwrap(), Vec::<u8>::new());
}

/// Without `--telnet`, a client that opens with negotiation gets its bytes back as they are,
/// and the log says once, naming it, that this looks like telnet and what would serve it.
#[test]
fn a_telnet_client_on_a_plain_port_is_logged_once_and_echoed_unchanged() {
    captured_log();
    let server = TestServer::start();
    let mut putty_like = server.connect();
    let peer = putty_like.local_addr().unwrap().to_string();
    let opening = [IAC, WILL, 31, IAC, DO, ECHO, b'\n'];
    assert_echo(&mut putty_like, &opening);
    assert_echo(&mut putty_like, &opening);
    assert_echo(&mut putty_like, b"typed\r\n");
    // A plain client sending the same bytes later, not first, is no telnet client.
    let mut plain = server.connect();
    let plain_peer = plain.local_addr().unwrap().to_string();
    assert_echo(&mut plain, b"first\n");
    assert_echo(&mut plain, &opening);
    let hints = |peer: &str| {
        captured_log()
            .at(log::Level::Info)
            .iter()
            .filter(|m| m.contains(peer) && m.contains("looks like a telnet client"))
            .count()
    };
    assert_eq!(hints(&peer), 1);
    assert!(captured_log()
        .at(log::Level::Info)
        .iter()
        .any(|m| m.contains(&peer) && m.contains("--telnet")));
    assert_eq!(hints(&plain_peer), 0);
}
