//! The echo server as a client sees it, against an in-process server on a free port.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown;
use std::thread;
use std::time::Duration;

use common::{assert_echo, pattern, read_to_end, TestServer};

#[test]
fn crlf_lines_come_back_with_their_carriage_returns() {
    let server = TestServer::start();
    let mut client = server.connect();
    assert_echo(&mut client, b"hello\r\n");
    assert_echo(&mut client, b"\r\n");
    assert_echo(&mut client, b"mixed\r\nendings\n\r\r\n");
}

#[test]
fn any_byte_value_is_opaque() {
    let server = TestServer::start();
    let mut client = server.connect();
    let mut line: Vec<u8> = (0..=255u8).filter(|&b| b != b'\n').collect();
    line.extend_from_slice(b"\xff\xfe\x00\xc3\x28 not utf-8\n");
    assert_echo(&mut client, &line);
    assert_echo(&mut client, b"\0\0\0\n");
}

#[test]
fn many_lines_in_one_write_all_come_back() {
    let server = TestServer::start();
    let mut client = server.connect();
    let lines: Vec<u8> = (0..5_000)
        .flat_map(|i| format!("line number {i}\n").into_bytes())
        .collect();
    assert_echo(&mut client, &lines);
}

#[test]
fn a_line_sent_byte_by_byte_comes_back_once_complete() {
    let server = TestServer::start();
    let mut client = server.connect();
    for &byte in b"slowly" {
        client.write_all(&[byte]).unwrap();
    }
    // Nothing may come back before the newline: an echo of a partial line would be wrong.
    client
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut early = [0u8; 16];
    match client.read(&mut early) {
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
        other => panic!("expected no echo before the newline, got {other:?}"),
    }
    client.set_read_timeout(Some(common::TIMEOUT)).unwrap();
    client.write_all(b"\r").unwrap();
    client.write_all(b"\n").unwrap();
    let mut back = [0u8; 8];
    client.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"slowly\r\n");
}

#[test]
fn half_close_echoes_the_unfinished_tail_then_closes() {
    let server = TestServer::start();
    let mut client = server.connect();
    client.write_all(b"first\nsecond\nunfinished tail").unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    assert_eq!(
        read_to_end(&mut client).unwrap(),
        b"first\nsecond\nunfinished tail"
    );
}

#[test]
fn half_close_right_after_connecting_closes_cleanly() {
    let server = TestServer::start();
    let mut client = server.connect();
    client.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_to_end(&mut client).unwrap(), b"");
}

#[test]
fn a_reset_client_affects_nobody_else() {
    let server = TestServer::start();
    let mut bystander = server.connect();
    assert_echo(&mut bystander, b"before\n");
    for _ in 0..20 {
        let mut doomed = server.connect();
        doomed.write_all(b"a line and half of ano").unwrap();
        common::reset(doomed);
    }
    assert_echo(&mut bystander, b"after\n");
    let mut newcomer = server.connect();
    assert_echo(&mut newcomer, b"still accepting\n");
}

#[test]
fn an_idle_client_does_not_delay_another() {
    let server = TestServer::start();
    // The guide's first version served one client at a time: a silent first client
    // (a telnet session nobody types in) blocked the second forever.
    let _silent = server.connect();
    let mut half_line = server.connect();
    half_line.write_all(b"no newline yet").unwrap();
    let mut second = server.connect();
    assert_echo(&mut second, b"not waiting on anyone\n");
}

#[test]
fn interleaved_clients_each_get_their_own_lines() {
    let server = TestServer::start();
    let mut a = server.connect();
    let mut b = server.connect();
    a.write_all(b"alpha part one, ").unwrap();
    b.write_all(b"bravo part one, ").unwrap();
    b.write_all(b"bravo done\r\n").unwrap();
    expect(&mut b, b"bravo part one, bravo done\r\n");
    a.write_all(b"alpha done\n").unwrap();
    expect(&mut a, b"alpha part one, alpha done\n");
    assert_echo(&mut b, b"more from bravo\n");
    assert_echo(&mut a, b"more from alpha\n");
}

fn expect(stream: &mut std::net::TcpStream, expected: &[u8]) {
    let mut back = vec![0; expected.len()];
    stream.read_exact(&mut back).unwrap();
    assert_eq!(back, expected);
}

#[test]
fn a_thousand_concurrent_clients_each_get_every_byte_back() {
    common::raise_fd_limit();
    const CLIENTS: usize = 1_000;
    const LINES: usize = 100;
    const THREADS: usize = 8;
    let server = TestServer::start();
    let addr = server.addr;
    let workers: Vec<_> = (0..THREADS)
        .map(|worker| {
            thread::spawn(move || {
                let ids: Vec<usize> = (worker..CLIENTS).step_by(THREADS).collect();
                // Every client connects before any sends: all of them are open at once.
                let mut clients: Vec<_> = ids.iter().map(|_| common::connect(addr)).collect();
                let mut checked = 0usize;
                for line in 0..LINES {
                    let sent: Vec<Vec<u8>> = ids.iter().map(|&id| client_line(id, line)).collect();
                    for (client, bytes) in clients.iter_mut().zip(&sent) {
                        client.write_all(bytes).unwrap();
                    }
                    for (client, bytes) in clients.iter_mut().zip(&sent) {
                        let mut back = vec![0; bytes.len()];
                        client.read_exact(&mut back).unwrap();
                        assert_eq!(&back, bytes);
                        checked += back.len();
                    }
                }
                checked
            })
        })
        .collect();
    let checked: usize = workers.into_iter().map(|w| w.join().unwrap()).sum();
    let expected: usize = (0..CLIENTS)
        .flat_map(|id| (0..LINES).map(move |line| client_line(id, line).len()))
        .sum();
    assert_eq!(checked, expected);
}

/// A line unique to one client and one position, with varied length and bytes.
fn client_line(client: usize, line: usize) -> Vec<u8> {
    let mut bytes = format!("client {client} line {line} ").into_bytes();
    bytes.extend(pattern(
        (client * 7 + line * 13) % 200,
        (client * LINE_SEED + line) as u64,
    ));
    bytes.extend_from_slice(b"\r\n");
    bytes
}
const LINE_SEED: usize = 1_000_003;

#[test]
fn shutdown_handle_stops_the_server_and_it_drains() {
    let server = TestServer::start();
    let mut client = server.connect();
    assert_echo(&mut client, b"before shutdown\n");
    let addr = server.addr;
    let closer = thread::spawn(move || {
        // The client sees the server's FIN once shutdown begins, and closes in turn.
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).unwrap();
        rest
    });
    assert_eq!(server.stop(), kv_server::Stopped::Drained);
    assert_eq!(closer.join().unwrap(), b"");
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "the listener is closed after shutdown"
    );
}
