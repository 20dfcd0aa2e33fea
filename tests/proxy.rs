//! `--proxy-protocol`: the header a load balancer puts first on each connection is taken
//! out, never echoed, and names the client in the logs and for per-address limits.

mod common;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::Duration;

use common::captured_log::captured_log;
use common::{assert_echo, TestServer};
use kv_server::{Config, Echo};
use ppp::v2::{Builder, Command, IPv4, IPv6, Protocol, Type, Version};

fn logged(needle: &str) -> bool {
    captured_log().contains(needle)
}

fn proxied(config: Config) -> TestServer {
    captured_log();
    let config = Config {
        proxy_protocol: true,
        proxy_header_timeout: Duration::from_millis(300),
        ..config
    };
    TestServer::start_with(config, Box::new(Echo))
}

/// Valid headers of both versions, with the client each names (None: served as the
/// balancer's own).
fn headers() -> Vec<(&'static str, Vec<u8>, Option<SocketAddr>)> {
    let v2 = |command: Command, addresses: ppp::v2::Addresses| {
        Builder::with_addresses(Version::Two | command, Protocol::Stream, addresses)
    };
    vec![
        (
            "v1 tcp4",
            b"PROXY TCP4 192.0.2.7 198.51.100.1 56324 4040\r\n".to_vec(),
            Some("192.0.2.7:56324".parse().unwrap()),
        ),
        (
            "v1 tcp6",
            b"PROXY TCP6 2001:db8::7 2001:db8::1 56324 4040\r\n".to_vec(),
            Some("[2001:db8::7]:56324".parse().unwrap()),
        ),
        ("v1 unknown", b"PROXY UNKNOWN\r\n".to_vec(), None),
        (
            "v2 ipv4 with TLVs",
            v2(
                Command::Proxy,
                IPv4::new([192, 0, 2, 8], [198, 51, 100, 1], 40000, 4040).into(),
            )
            .write_tlv(Type::NoOp, &[0; 5])
            .unwrap()
            .write_tlv(Type::Authority, b"echo.example")
            .unwrap()
            .build()
            .unwrap(),
            Some("192.0.2.8:40000".parse().unwrap()),
        ),
        (
            "v2 ipv6",
            v2(
                Command::Proxy,
                IPv6::new(
                    "2001:db8::9".parse::<std::net::Ipv6Addr>().unwrap(),
                    "2001:db8::1".parse::<std::net::Ipv6Addr>().unwrap(),
                    40001,
                    4040,
                )
                .into(),
            )
            .build()
            .unwrap(),
            Some("[2001:db8::9]:40001".parse().unwrap()),
        ),
        (
            "v2 local (a health check)",
            Builder::new(Version::Two | Command::Local, 0)
                .build()
                .unwrap(),
            None,
        ),
        (
            "v2 unspecified",
            Builder::new(Version::Two | Command::Proxy, 0)
                .build()
                .unwrap(),
            None,
        ),
    ]
}

/// Sends `parts` as separate writes (the server sees them as separate reads, mostly) and
/// expects exactly `lines` back, then the end of stream after a half-close.
fn expect_only_lines(addr: SocketAddr, parts: &[&[u8]], lines: &[u8]) {
    let mut stream = common::connect(addr);
    for part in parts {
        if !part.is_empty() {
            stream.write_all(part).unwrap();
        }
    }
    let mut back = vec![0u8; lines.len()];
    stream.read_exact(&mut back).unwrap();
    assert_eq!(back, lines);
    stream.shutdown(std::net::Shutdown::Write).unwrap();
    assert_eq!(common::read_to_end(&mut stream).unwrap(), b"");
}

#[test]
fn every_header_split_anywhere_is_taken_out_and_the_lines_after_it_echoed() {
    let server = proxied(Config::default());
    let lines = b"first line\r\nsecond\n";
    for (name, header, client) in headers() {
        // All in one write: the lines come in the same read as the header.
        let mut whole = header.clone();
        whole.extend_from_slice(lines);
        expect_only_lines(server.addr, &[&whole], lines);
        for split in 1..header.len() {
            let (a, b) = header.split_at(split);
            let mut rest = b.to_vec();
            rest.extend_from_slice(lines);
            expect_only_lines(server.addr, &[a, &rest], lines);
        }
        if let Some(client) = client {
            assert!(
                logged(&format!("{client}: connected through 127.0.0.1:")),
                "{name}: the log names the client {client}"
            );
        }
    }
}

/// Sends `bytes` first and expects the connection to be closed with nothing echoed.
fn rejected(addr: SocketAddr, bytes: &[u8]) {
    let mut stream = common::connect(addr);
    let _ = stream.write_all(bytes);
    let mut back = Vec::new();
    match stream.read_to_end(&mut back) {
        Ok(_) => assert!(back.is_empty(), "nothing echoed, got {back:?}"),
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset),
    }
}

#[test]
fn anything_but_a_valid_header_is_closed_unechoed() {
    let server = proxied(Config::default());
    rejected(server.addr, b"hello without a header\n");
    rejected(server.addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut long = b"PROXY TCP4 192.0.2.7 198.51.100.1 56324 4040".to_vec();
    long.resize(200, b' ');
    long.extend_from_slice(b"\r\nline\n");
    rejected(server.addr, &long);
    let mut v2 = b"\r\n\r\n\0\r\nQUIT\n\x21\x11".to_vec();
    v2.extend_from_slice(&u16::MAX.to_be_bytes());
    v2.extend_from_slice(&[0; 64]);
    rejected(server.addr, &v2);
    rejected(
        server.addr,
        b"PROXY TCP4 not-an-address 198.51.100.1 1 2\r\nline\n",
    );
    assert!(logged(
        "not a PROXY protocol header; closing without echoing anything"
    ));
    assert!(logged("over the limit of 2048"));
    assert!(logged("longer than 107 bytes"));
    assert_echo_through(server.addr);
}

/// A proxied client with a valid header is still served.
fn assert_echo_through(addr: SocketAddr) {
    let mut stream = common::connect(addr);
    stream
        .write_all(b"PROXY TCP4 192.0.2.99 198.51.100.1 1234 4040\r\n")
        .unwrap();
    assert_echo(&mut stream, b"served\n");
}

#[test]
fn a_header_that_never_finishes_is_closed_after_the_time_out() {
    let server = proxied(Config::default());
    let mut slow = common::connect(server.addr);
    slow.write_all(b"PROXY TCP4 192.0.2.").unwrap();
    // Others are served meanwhile.
    assert_echo_through(server.addr);
    assert!(common::closed_within(&mut slow, Duration::from_secs(5)));
    assert!(logged("no complete PROXY protocol header within 300ms"));
}

#[test]
fn per_address_limits_count_the_address_in_the_header() {
    let server = proxied(Config {
        max_connections_per_ip: Some(1),
        ..Config::default()
    });
    let header = b"PROXY TCP4 192.0.2.50 198.51.100.1 1000 4040\r\n";
    let mut first = common::connect(server.addr);
    first.write_all(header).unwrap();
    assert_echo(&mut first, b"one\n");
    // The same client address again, through the same balancer: over the limit.
    let mut second = common::connect(server.addr);
    second.write_all(header).unwrap();
    second.write_all(b"two\n").unwrap();
    assert!(common::closed_within(&mut second, common::TIMEOUT));
    // Another client behind the same balancer address is served.
    assert_echo_through(server.addr);
    assert_echo(&mut first, b"still one\n");
}
