//! `--websocket`: the opening (the upgrade, the page, refusals), messages echoed whole
//! however they are cut, control frames, every way RFC 6455 says a client can be wrong and
//! the code it gets, the opening's deadline, wss://, the Unix socket and PROXY, the close
//! at shutdown, and the metrics. Frames are made by hand (`common::websocket`), so that
//! hostile ones can be.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::tls::{self, Pki};
use common::websocket::{self as ws, BINARY, CLOSE, PING, PONG, TEXT};
use common::{scrape, TestServer};
use kv_server::{Config, Echo};

fn websocket_server(configure: impl FnOnce(&mut Config)) -> TestServer {
    let mut config = Config {
        websocket: true,
        metrics: Some("127.0.0.1:0".parse().unwrap()),
        ..Config::default()
    };
    configure(&mut config);
    TestServer::start_with(config, Box::new(Echo))
}

fn upgraded(server: &TestServer) -> TcpStream {
    let mut stream = server.connect();
    ws::upgrade(&mut stream);
    stream
}

/// A run of messages and control frames, and what must come back for them, in order.
fn conversation() -> (Vec<u8>, Vec<(u8, Vec<u8>)>) {
    let text = "κόσμε: a line of UTF-8, cut inside its characters".as_bytes();
    let large: Vec<u8> = (0..200_000u32).map(|n| (n * 7 % 251) as u8).collect();
    let mut sent = Vec::new();
    let mut expected = Vec::new();
    for length in [0usize, 1, 125, 126, 65_535, 65_536, 200_000] {
        sent.extend(ws::frame(BINARY, &large[..length]));
        expected.push((BINARY, large[..length].to_vec()));
    }
    sent.extend(ws::frame(TEXT, b"hello"));
    expected.push((TEXT, b"hello".to_vec()));
    // Fragments of one character's bytes each, with a ping among them: the pong comes
    // first, the message whole after its last fragment.
    let fragments = ws::fragments(TEXT, text, 3);
    let cut = fragments.len() / 2;
    sent.extend(&fragments[..cut]);
    sent.extend(ws::frame(PING, b"are you there"));
    sent.extend(&fragments[cut..]);
    expected.push((PONG, b"are you there".to_vec()));
    expected.push((TEXT, text.to_vec()));
    sent.extend(ws::fragments(BINARY, &large[..100_000], 7_000));
    expected.push((BINARY, large[..100_000].to_vec()));
    sent.extend(ws::frame(PONG, b"unasked: no answer"));
    (sent, expected)
}

#[test]
fn messages_come_back_whole_however_they_are_cut() {
    let server = websocket_server(|_| {});
    let (sent, expected) = conversation();
    // In one write, then cut into pieces of every few sizes, one byte among them.
    for piece in [sent.len(), 1, 2, 3, 5, 13, 1000, 4096] {
        let mut stream = upgraded(&server);
        let writer = {
            let mut stream = stream.try_clone().unwrap();
            let sent = sent.clone();
            let limit = if piece == 1 { 3000 } else { sent.len() };
            std::thread::spawn(move || {
                for chunk in sent[..limit].chunks(piece) {
                    stream.write_all(chunk).unwrap();
                }
                stream.write_all(&sent[limit..]).unwrap();
            })
        };
        for (opcode, payload) in &expected {
            ws::expect_frame(&mut stream, *opcode, payload);
        }
        writer.join().unwrap();
        stream
            .write_all(&ws::frame(CLOSE, &1000u16.to_be_bytes()))
            .unwrap();
        ws::expect_close(&mut stream, 1000);
    }
    let metrics = scrape(server.metrics.unwrap());
    let per_run = 7 + 1 + 1 + 1;
    let runs = 8.0;
    for direction in ["received", "sent"] {
        let key = format!(r#"kv_server_websocket_messages_total{{direction="{direction}"}}"#);
        assert_eq!(metrics[&key], runs * per_run as f64, "{key}");
    }
    assert_eq!(
        metrics[r#"kv_server_websocket_openings_total{result="upgraded"}"#],
        runs
    );
    assert_eq!(
        metrics[r#"kv_server_websocket_closes_sent_total{code="1000"}"#],
        runs
    );
}

#[test]
fn closes_are_answered_with_their_own_code() {
    let server = websocket_server(|_| {});
    for code in [1000u16, 1001, 1003, 1011, 3000, 4999] {
        let mut stream = upgraded(&server);
        ws::expect_echo(&mut stream, TEXT, b"before");
        let mut payload = code.to_be_bytes().to_vec();
        payload.extend_from_slice("a reason, in UTF-8: ✓".as_bytes());
        stream.write_all(&ws::frame(CLOSE, &payload)).unwrap();
        ws::expect_close(&mut stream, code);
    }
    let mut stream = upgraded(&server);
    stream.write_all(&ws::frame(CLOSE, b"")).unwrap();
    let (first, payload) = ws::read_frame(&mut stream);
    assert_eq!(
        (first, payload.len()),
        (0x80 | CLOSE, 0),
        "a close without a code"
    );
    let metrics = scrape(server.metrics.unwrap());
    assert_eq!(
        metrics[r#"kv_server_websocket_closes_sent_total{code="other"}"#],
        2.0
    );
    assert_eq!(
        metrics[r#"kv_server_websocket_closes_sent_total{code="none"}"#],
        1.0
    );
}

/// What RFC 6455 forbids a client, each after a message that is echoed: the message comes
/// back, then a close with the code, then the end.
#[test]
fn hostile_frames_are_refused_with_their_code_and_nothing_else_is_lost() {
    let server = websocket_server(|config| config.websocket_max_message = 64 * 1024);
    let long_length = |length: u64| {
        let mut frame = vec![0x80 | BINARY, 0x80 | 127];
        frame.extend_from_slice(&length.to_be_bytes());
        frame.extend_from_slice(&[1, 2, 3, 4]);
        frame
    };
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        (
            "an unmasked frame",
            ws::frame_with(0x80 | TEXT, b"hi", false),
            1002,
        ),
        (
            "a reserved bit",
            ws::frame_with(0x80 | 0x40 | TEXT, b"hi", true),
            1002,
        ),
        (
            "an unknown opcode",
            ws::frame_with(0x80 | 0x3, b"hi", true),
            1002,
        ),
        ("a fragmented ping", ws::frame_with(PING, b"hi", true), 1002),
        ("a ping of 126 bytes", ws::frame(PING, &[7; 126]), 1002),
        (
            "a continuation of nothing",
            ws::frame_with(0x80, b"hi", true),
            1002,
        ),
        (
            "a message inside a message",
            [ws::frame_with(TEXT, b"a", true), ws::frame(TEXT, b"b")].concat(),
            1002,
        ),
        ("a length of 2^63", long_length(1 << 63), 1002),
        ("a length of 2^62", long_length(1 << 62), 1009),
        (
            "a message over the limit",
            ws::frame(BINARY, &[0; 64 * 1024 + 1]),
            1009,
        ),
        (
            "fragments over the limit",
            ws::fragments(BINARY, &[0; 64 * 1024 + 1], 10_000),
            1009,
        ),
        ("text that is not UTF-8", ws::frame(TEXT, b"caf\xe9"), 1007),
        (
            "text ending mid-character",
            ws::frame(TEXT, b"\xce\xba\xcf"),
            1007,
        ),
        (
            "a close code of 1005",
            ws::frame(CLOSE, &1005u16.to_be_bytes()),
            1002,
        ),
        (
            "a close code of 999",
            ws::frame(CLOSE, &999u16.to_be_bytes()),
            1002,
        ),
        ("a close of one byte", ws::frame(CLOSE, &[3]), 1002),
        (
            "a close reason not UTF-8",
            ws::frame(CLOSE, b"\x03\xe8\xff"),
            1007,
        ),
    ];
    for (name, bytes, code) in &cases {
        let mut stream = upgraded(&server);
        let mut sent = ws::frame(BINARY, name.as_bytes());
        sent.extend_from_slice(bytes);
        // The server may close before taking all of it: a failed write is no failure.
        let _ = stream.write_all(&sent);
        let (first, payload) = ws::read_frame(&mut stream);
        assert_eq!(
            (first, payload.as_slice()),
            (0x80 | BINARY, name.as_bytes()),
            "{name}"
        );
        let (first, payload) = ws::read_frame(&mut stream);
        assert_eq!(first, 0x80 | CLOSE, "{name}: a close frame");
        assert_eq!(payload, code.to_be_bytes(), "{name}: its code");
    }
    let metrics = scrape(server.metrics.unwrap());
    let count = |code: u16| cases.iter().filter(|case| case.2 == code).count() as f64;
    for code in [1002, 1007, 1009] {
        let key = format!(r#"kv_server_websocket_closes_sent_total{{code="{code}"}}"#);
        assert_eq!(metrics[&key], count(code), "{key}");
    }
}

/// A binary message in one frame is echoed as it arrives: half of a megabyte's frame
/// comes back before the other half is sent, and the rest follows in the same frame.
#[test]
fn a_large_binary_message_is_echoed_as_it_arrives() {
    let server = websocket_server(|_| {});
    let mut stream = upgraded(&server);
    let payload: Vec<u8> = (0..1u32 << 20).map(|n| (n % 251) as u8).collect();
    let frame = ws::frame(BINARY, &payload);
    let half = frame.len() / 2;
    stream.write_all(&frame[..half]).unwrap();
    let mut head = [0u8; 10];
    stream.read_exact(&mut head).unwrap();
    assert_eq!(head[..2], [0x80 | BINARY, 127], "one final binary frame");
    assert_eq!(u64::from_be_bytes(head[2..].try_into().unwrap()), 1 << 20);
    // The payload before the cut comes back while the rest is still to be sent.
    let before_cut = half - 14;
    let mut echoed = vec![0u8; before_cut];
    stream.read_exact(&mut echoed).unwrap();
    assert!(echoed == payload[..before_cut]);
    stream.write_all(&frame[half..]).unwrap();
    let mut rest = vec![0u8; payload.len() - before_cut];
    stream.read_exact(&mut rest).unwrap();
    assert!(rest == payload[before_cut..]);
    ws::expect_echo(&mut stream, TEXT, b"and the next message after it");
}

/// Text that cannot become UTF-8 is refused at its first wrong byte, while the rest of a
/// large message is still to come, not after all of it.
#[test]
fn invalid_text_is_refused_before_the_message_ends() {
    let server = websocket_server(|_| {});
    let mut stream = upgraded(&server);
    let mut payload = vec![b'a'; 1 << 20];
    payload[10] = 0xff;
    let frame = ws::frame(TEXT, &payload);
    stream.write_all(&frame[..1000]).unwrap();
    let (first, code) = ws::read_frame(&mut stream);
    assert_eq!(
        (first, code),
        (0x80 | CLOSE, 1007u16.to_be_bytes().to_vec())
    );
}

#[test]
fn the_opening_answers_people_and_refuses_the_rest() {
    let server = websocket_server(|_| {});
    let page = common::http(server.addr, b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n");
    let (head, body) = page.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(
        head.contains("Content-Type: text/html; charset=utf-8"),
        "{head}"
    );
    assert!(
        head.contains(&format!("Content-Length: {}\r\n", body.len())),
        "{head}"
    );
    assert!(
        body.contains("new WebSocket("),
        "the page opens a WebSocket"
    );
    assert!(
        !body.contains("http://") && !body.contains("https://") && !body.contains("src="),
        "the page fetches nothing from anywhere"
    );
    let head_only = common::http(server.addr, b"HEAD /?from=curl HTTP/1.1\r\nHost: a\r\n\r\n");
    assert!(head_only.starts_with("HTTP/1.1 200 OK") && head_only.ends_with("\r\n\r\n"));
    for (request, status) in [
        (&b"GET /favicon.ico HTTP/1.1\r\nHost: a\r\n\r\n"[..], "404"),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
            "405",
        ),
        (
            b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\r\n",
            "426",
        ),
        (
            b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Key: short\r\nSec-WebSocket-Version: 13\r\n\r\n",
            "400",
        ),
    ] {
        let answer = common::http(server.addr, request);
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status} ")),
            "{answer}"
        );
    }
    // Not HTTP: closed without a word.
    assert_eq!(common::http(server.addr, b"hello\r\n"), "");
    // A header of a megabyte: refused at 8 KiB.
    let mut stream = server.connect();
    let writer = {
        let mut stream = stream.try_clone().unwrap();
        std::thread::spawn(move || {
            let mut request = b"GET / HTTP/1.1\r\nX-Big: ".to_vec();
            request.resize(1 << 20, b'a');
            let _ = stream.write_all(&request);
        })
    };
    let head = ws::read_head(&mut stream);
    assert!(head.starts_with("HTTP/1.1 431 "), "{head}");
    writer.join().unwrap();
    let metrics = scrape(server.metrics.unwrap());
    let opening = |result: &str| {
        metrics[&format!(r#"kv_server_websocket_openings_total{{result="{result}"}}"#)]
    };
    assert_eq!(opening("page"), 2.0);
    assert_eq!(opening("not_found"), 1.0);
    assert_eq!(opening("refused"), 4.0);
    assert_eq!(opening("not_http"), 1.0);
    assert_eq!(opening("upgraded"), 0.0);
}

/// A request sent a byte at a time is closed at the opening's deadline, counted, while a
/// client beside it is served.
#[test]
fn a_slow_opening_is_closed_at_its_deadline() {
    let server = websocket_server(|config| {
        config.websocket_handshake_timeout = Duration::from_millis(500);
    });
    let mut slow = server.connect();
    let started = Instant::now();
    let request = ws::request("/");
    let mut closed = false;
    for byte in request.as_bytes() {
        if slow.write_all(&[*byte]).is_err() {
            closed = true;
            break;
        }
        let mut polite = upgraded(&server);
        ws::expect_echo(&mut polite, TEXT, b"served meanwhile");
        std::thread::sleep(Duration::from_millis(100));
        if started.elapsed() > Duration::from_secs(10) {
            break;
        }
    }
    let mut rest = Vec::new();
    if !closed {
        // The end, or a reset: either way, nothing was answered.
        let _ = slow.read_to_end(&mut rest);
    }
    assert!(rest.is_empty(), "closed without an answer: {rest:?}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "closed in time"
    );
    let metrics = scrape(server.metrics.unwrap());
    assert_eq!(
        metrics[r#"kv_server_connections_closed_total{reason="websocket_handshake"}"#],
        1.0
    );
}

#[test]
fn shutdown_sends_going_away_after_the_last_echo() {
    let server = websocket_server(|_| {});
    let mut stream = upgraded(&server);
    ws::expect_echo(&mut stream, TEXT, b"last words");
    let stopping = std::thread::spawn(move || server.stop());
    ws::expect_close(&mut stream, 1001);
    drop(stream);
    stopping.join().unwrap();
}

/// wss:// (TLS with the upgrade inside), the Unix socket, and a PROXY header before the
/// HTTP request: each upgrades and echoes, and a close comes back through TLS before its
/// close_notify.
#[test]
fn wss_the_unix_socket_and_proxy_headers_speak_websocket_too() {
    let pki = Pki::new("websocket");
    let path = pki.dir.join("ws.sock");
    let server = websocket_server(|config| {
        config.tls = Some(pki.write_server(1));
        config.unix = Some(path.clone());
    });
    let client = tls::client_config(pki.ca_der(), None, None);
    let mut secure = tls::connect(server.addr, &client).unwrap();
    ws::upgrade(&mut secure);
    ws::expect_echo(&mut secure, TEXT, "over wss ✓".as_bytes());
    ws::expect_echo(&mut secure, BINARY, &[0xff; 100_000]);
    secure
        .write_all(&ws::frame(CLOSE, &1000u16.to_be_bytes()))
        .unwrap();
    secure.flush().unwrap();
    ws::expect_close(&mut secure, 1000);

    let unix = std::os::unix::net::UnixStream::connect(&path).unwrap();
    unix.set_read_timeout(Some(common::TIMEOUT)).unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let session = rustls::ClientConnection::new(client, name).unwrap();
    let mut unix = rustls::StreamOwned::new(session, unix);
    ws::upgrade(&mut unix);
    ws::expect_echo(&mut unix, TEXT, b"over the Unix socket");
    drop(server);

    let server = websocket_server(|config| config.proxy_protocol = true);
    let mut proxied = server.connect();
    proxied
        .write_all(b"PROXY TCP4 192.0.2.7 198.51.100.1 1000 4040\r\n")
        .unwrap();
    ws::upgrade(&mut proxied);
    ws::expect_echo(&mut proxied, TEXT, b"from behind a balancer");
}
