//! TLS (`--tls-cert`, `--tls-key`, `--tls-client-ca`): the echo over TLS 1.2 and 1.3,
//! end-of-stream both ways, mutual TLS, what clients that do not speak TLS get, the layers
//! around it (PROXY header below, telnet above), reload on SIGHUP and start-up errors.
//! Certificates are made in the test; the client is rustls. Tests with openssl's and socat's
//! clients are in `tls_clients.rs`.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::tls::{self as tls, Pki};
use common::{scrape, ServerProcess, TestServer, TIMEOUT};
use kv_server::{Config, Echo};

fn tls_server(pki: &Pki, configure: impl FnOnce(&mut Config)) -> TestServer {
    let mut config = Config {
        tls: Some(pki.write_server(1)),
        metrics: Some("127.0.0.1:0".parse().unwrap()),
        ..Config::default()
    };
    configure(&mut config);
    TestServer::start_with(config, Box::new(Echo))
}

/// Reads to the end of the stream, which must be a clean one: the server's close_notify,
/// then its FIN.
fn read_to_clean_end(stream: &mut tls::TlsStream) -> Vec<u8> {
    let mut all = Vec::new();
    stream
        .read_to_end(&mut all)
        .expect("a close_notify before the end of the stream");
    all
}

#[test]
fn lines_come_back_byte_exact_over_tls_1_2_and_1_3() {
    let pki = Pki::new("versions");
    let server = tls_server(&pki, |_| {});
    for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
        let config = tls::client_config(pki.ca_der(), Some(version), None);
        let mut stream = tls::connect(server.addr, &config).expect("handshake");
        assert_eq!(stream.conn.protocol_version(), Some(version.version));
        tls::assert_echo(&mut stream, b"hello over TLS\n");
        tls::assert_echo(&mut stream, b"crlf\r\nnul \0 and \xFF\xFE bytes\n");
        tls::assert_echo(&mut stream, b"a\nb\nc\n");
        // The unfinished last line comes back when the client ends its side.
        stream.write_all(b"no newline").unwrap();
        stream.conn.send_close_notify();
        stream.flush().unwrap();
        assert_eq!(read_to_clean_end(&mut stream), b"no newline");
    }
    let metrics = scrape(server.metrics.unwrap());
    assert_eq!(metrics["kv_server_tls_handshakes_total"], 2.0);
    assert!(metrics["kv_server_tls_bytes_received_total"] > 0.0);
}

#[test]
fn a_20_mb_stream_with_a_half_close_comes_back_whole() {
    use mio::{Events, Interest, Poll, Token};
    let pki = Pki::new("bulk");
    let server = tls_server(&pki, |_| {});
    let config = tls::client_config(pki.ca_der(), None, None);
    let tls::TlsStream {
        conn: mut session,
        sock,
    } = tls::connect(server.addr, &config).expect("handshake");
    // Lines of 100 bytes; the server reads no faster than the client takes its echoes, so
    // one thread writes and reads by readiness, as the server does.
    let mut sent = common::pattern(20 * 1024 * 1024, 0xC0FFEE);
    for line_end in sent.iter_mut().skip(99).step_by(100) {
        *line_end = b'\n';
    }
    sock.set_nonblocking(true).unwrap();
    let mut socket = mio::net::TcpStream::from_std(sock);
    let mut poll = Poll::new().unwrap();
    poll.registry()
        .register(
            &mut socket,
            Token(0),
            Interest::READABLE | Interest::WRITABLE,
        )
        .unwrap();
    let mut events = Events::with_capacity(4);
    let mut offered = 0;
    let mut closed_ours = false;
    let mut received = Vec::with_capacity(sent.len());
    let mut buffer = vec![0; 64 * 1024];
    let deadline = Instant::now() + 4 * TIMEOUT;
    'run: loop {
        assert!(
            Instant::now() < deadline,
            "stalled at {} bytes",
            received.len()
        );
        // Seals the next piece only when what was sealed before has gone out.
        while !session.wants_write() && !closed_ours {
            if offered < sent.len() {
                let end = (offered + 16 * 1024).min(sent.len());
                session.writer().write_all(&sent[offered..end]).unwrap();
                offered = end;
            } else {
                session.send_close_notify();
                closed_ours = true;
            }
        }
        while session.wants_write() {
            match session.write_tls(&mut socket) {
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => panic!("write: {e}"),
            }
        }
        if closed_ours && !session.wants_write() {
            let _ = socket.shutdown(std::net::Shutdown::Write);
        }
        loop {
            match session.read_tls(&mut socket) {
                Ok(0) => break 'run,
                Ok(_) => {
                    let state = session.process_new_packets().expect("valid records");
                    loop {
                        match session.reader().read(&mut buffer) {
                            Ok(0) => break,
                            Ok(n) => received.extend_from_slice(&buffer[..n]),
                            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                            Err(e) => panic!("read: {e}"),
                        }
                    }
                    if state.peer_has_closed() {
                        break 'run;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => panic!("read: {e}"),
            }
        }
        let writable_work = session.wants_write() || !closed_ours;
        if writable_work || received.len() < sent.len() {
            poll.poll(&mut events, Some(TIMEOUT)).unwrap();
        }
    }
    assert_eq!(received.len(), sent.len());
    assert!(received == sent, "the echo differs from what was sent");
}

#[test]
fn mutual_tls_serves_certified_clients_and_refuses_the_rest() {
    let pki = Pki::new("mtls");
    let strangers = Pki::new("mtls_strangers");
    let server = tls_server(&pki, |config| {
        config.tls.as_mut().unwrap().client_ca = Some(pki.ca_file());
    });
    let certified = tls::client_config(pki.ca_der(), None, Some(pki.client_identity()));
    let mut stream = tls::connect(server.addr, &certified).expect("a certified client");
    tls::assert_echo(&mut stream, b"certified\n");

    // Without a certificate. In TLS 1.3 the client learns it at its first read.
    let anonymous = tls::client_config(pki.ca_der(), None, None);
    let refused = tls::connect(server.addr, &anonymous).and_then(|mut stream| {
        stream
            .write_all(b"let me in\n")
            .map_err(|e| e.to_string())?;
        let mut back = [0; 10];
        stream.read_exact(&mut back).map_err(|e| e.to_string())
    });
    let error = refused.expect_err("a client without a certificate is refused");
    assert!(error.contains("CertificateRequired"), "{error}");

    // With one its CA did not sign.
    let stranger = tls::client_config(pki.ca_der(), None, Some(strangers.client_identity()));
    let refused = tls::connect(server.addr, &stranger).and_then(|mut stream| {
        stream
            .write_all(b"let me in\n")
            .map_err(|e| e.to_string())?;
        let mut back = [0; 10];
        stream.read_exact(&mut back).map_err(|e| e.to_string())
    });
    let error = refused.expect_err("a client with a stranger's certificate is refused");
    assert!(error.contains("UnknownCA"), "{error}");

    let metrics = scrape(server.metrics.unwrap());
    assert_eq!(
        metrics["kv_server_tls_handshake_failures_total{reason=\"no_client_certificate\"}"],
        1.0
    );
    assert_eq!(
        metrics["kv_server_tls_handshake_failures_total{reason=\"bad_client_certificate\"}"],
        1.0
    );
    assert_eq!(
        metrics["kv_server_connections_closed_total{reason=\"tls_handshake\"}"],
        2.0
    );
    // The certified client was never disturbed.
    tls::assert_echo(&mut stream, b"still here\n");
}

#[test]
fn plaintext_is_refused_at_once_and_a_stalled_handshake_in_time() {
    let pki = Pki::new("hostile");
    let server = tls_server(&pki, |config| {
        config.tls_handshake_timeout = Duration::from_millis(500);
    });
    // A plaintext client gets an alert, not its echo, and the connection closes.
    let mut plain = server.connect();
    plain.write_all(b"hello\n").unwrap();
    let answer = common::read_to_end(&mut plain).expect("closed");
    assert_eq!(answer.first(), Some(&0x15), "an alert record: {answer:x?}");
    assert!(!answer.windows(5).any(|w| w == b"hello"));

    // A ClientHello trickling in a byte every 50 ms: closed at the handshake time-out
    // however busy it keeps the connection (time is the subject here, hence the sleeps).
    let started = Instant::now();
    let mut trickling = server.connect();
    let silent = server.connect();
    let hello = [
        0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
    ];
    let mut sent = 0;
    for byte in hello.iter().cycle().take(200) {
        if trickling.write_all(&[*byte]).is_err() {
            break;
        }
        sent += 1;
        thread::sleep(Duration::from_millis(50));
        if started.elapsed() > Duration::from_secs(5) {
            break;
        }
    }
    assert!(common::closed_within(&mut trickling, TIMEOUT));
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(400) && waited < Duration::from_secs(5),
        "closed after {waited:?}, {sent} bytes sent"
    );
    let mut silent = silent;
    assert!(common::closed_within(&mut silent, TIMEOUT));

    let metrics = scrape(server.metrics.unwrap());
    assert_eq!(
        metrics["kv_server_tls_handshake_failures_total{reason=\"protocol\"}"],
        1.0
    );
    assert_eq!(
        metrics["kv_server_tls_handshake_failures_total{reason=\"timeout\"}"],
        2.0
    );
}

#[test]
fn a_proxy_header_comes_before_the_handshake() {
    let pki = Pki::new("proxy");
    let server = tls_server(&pki, |config| {
        config.proxy_from = vec!["127.0.0.0/8".parse().unwrap()];
    });
    let config = tls::client_config(pki.ca_der(), None, None);
    let mut socket = server.connect();
    socket
        .write_all(b"PROXY TCP4 192.0.2.7 127.0.0.1 56324 4040\r\n")
        .unwrap();
    let mut stream = tls::handshake(socket, &config).expect("handshake after the header");
    tls::assert_echo(&mut stream, b"through the balancer\n");
    // Without the header, the ClientHello is not a header: closed.
    let mut direct = server.connect();
    let refused = tls::handshake(direct.try_clone().unwrap(), &config);
    assert!(refused.is_err());
    assert!(common::closed_within(&mut direct, TIMEOUT));
}

#[test]
fn the_unix_socket_speaks_tls_too() {
    let pki = Pki::new("unix");
    let path = pki.dir.join("kv.sock");
    let server = tls_server(&pki, |config| config.unix = Some(path.clone()));
    let socket = std::os::unix::net::UnixStream::connect(&path).expect("the Unix socket");
    socket.set_read_timeout(Some(TIMEOUT)).unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let config = tls::client_config(pki.ca_der(), None, None);
    let session = rustls::ClientConnection::new(config, name).unwrap();
    let mut stream = rustls::StreamOwned::new(session, socket);
    stream.write_all(b"over a Unix socket\n").unwrap();
    let mut back = vec![0; b"over a Unix socket\n".len()];
    stream
        .read_exact(&mut back)
        .expect("the echo, after a handshake");
    assert_eq!(back, b"over a Unix socket\n");
    assert_eq!(
        scrape(server.metrics.unwrap())["kv_server_tls_handshakes_total"],
        1.0
    );
}

#[test]
fn telnet_runs_inside_tls() {
    let pki = Pki::new("telnet");
    let server = tls_server(&pki, |config| config.telnet = true);
    let config = tls::client_config(pki.ca_der(), None, None);
    let mut stream = tls::connect(server.addr, &config).expect("handshake");
    // The offers come first, inside TLS; then the echo, with the line end made CR LF.
    stream.write_all(b"hi\r").unwrap();
    stream.write_all(b"\0").unwrap();
    stream.flush().unwrap();
    let expected = b"\xFF\xFD\x00hi\r\n";
    let mut back = vec![0; expected.len()];
    stream.read_exact(&mut back).unwrap();
    assert_eq!(back, expected);
    tls::assert_echo(&mut stream, b"\xFF\xFF doubled\r\n");
}

#[test]
fn shutdown_ends_each_connection_with_close_notify_after_its_last_echo() {
    let pki = Pki::new("drain");
    let server = tls_server(&pki, |_| {});
    let config = tls::client_config(pki.ca_der(), None, None);
    let mut stream = tls::connect(server.addr, &config).expect("handshake");
    tls::assert_echo(&mut stream, b"before\n");
    // The unfinished line is on the server's side of loopback once written: the drain
    // reads it, echoes it, and only then sends close_notify and its FIN.
    stream.write_all(b"tail").unwrap();
    stream.flush().unwrap();
    let stopping = thread::spawn(move || server.stop());
    assert_eq!(read_to_clean_end(&mut stream), b"tail");
    drop(stream);
    stopping.join().unwrap();
}

#[test]
fn many_handshakes_beside_an_established_client_leave_it_served() {
    let pki = Pki::new("flood");
    let server = tls_server(&pki, |_| {});
    let config = tls::client_config(pki.ca_der(), None, None);
    let mut polite = tls::connect(server.addr, &config).expect("handshake");
    let addr = server.addr;
    let flooders: Vec<_> = (0..4)
        .map(|_| {
            let config = Arc::clone(&config);
            thread::spawn(move || {
                for _ in 0..100 {
                    let mut stream = tls::connect(addr, &config).expect("handshake");
                    tls::assert_echo(&mut stream, b"x\n");
                }
            })
        })
        .collect();
    let mut round_trips = 0;
    while flooders.iter().any(|f| !f.is_finished()) {
        tls::assert_echo(&mut polite, b"polite round trip\n");
        round_trips += 1;
    }
    for flooder in flooders {
        flooder.join().unwrap();
    }
    assert!(round_trips > 0);
    let metrics = scrape(server.metrics.unwrap());
    assert_eq!(metrics["kv_server_tls_handshakes_total"], 401.0);
}

#[test]
fn sighup_reloads_for_new_connections_and_a_broken_file_changes_nothing() {
    let pki = Pki::new("reload");
    let files = pki.write_server(1);
    let first = tls::certificate_in(&files.cert);
    let server = ServerProcess::start(&[
        "--tls-cert",
        files.cert.to_str().unwrap(),
        "--tls-key",
        files.key.to_str().unwrap(),
    ]);
    // Each connection with a client of its own: one that resumed a session would be shown
    // the certificate of the session it resumed (tickets outlive a reload).
    let config = || tls::client_config(pki.ca_der(), None, None);
    let mut established = tls::connect(server.addr(), &config()).expect("handshake");
    assert_eq!(tls::served_certificate(&established), first);

    // Renewed: same name, new key, new serial.
    pki.write_server(2);
    let renewed = tls::certificate_in(&files.cert);
    assert_ne!(renewed, first);
    server.signal(libc::SIGHUP);
    server.wait_log("reloaded");
    let fresh = tls::connect(server.addr(), &config()).expect("handshake");
    assert_eq!(tls::served_certificate(&fresh), renewed);
    tls::assert_echo(&mut established, b"still echoing on the old one\n");

    // A broken key: the reload fails, names the file, and the renewed pair stays.
    let good_key = tls::read(&files.key);
    std::fs::write(&files.key, "-----BEGIN PRIVATE KEY-----\nbroken\n").unwrap();
    server.signal(libc::SIGHUP);
    let line = server.wait_log("not reloaded");
    assert!(line.contains("ERROR"), "{line}");
    assert!(line.contains(files.key.to_str().unwrap()), "{line}");
    let after = tls::connect(server.addr(), &config()).expect("handshake");
    assert_eq!(tls::served_certificate(&after), renewed);
    // A certificate that no longer matches its key is refused too.
    std::fs::write(&files.key, good_key).unwrap();
    pki.write_server(3);
    std::fs::write(&files.key, key_of_another()).unwrap();
    server.signal(libc::SIGHUP);
    let line = server.wait_log("not reloaded");
    assert!(line.contains("does not match"), "{line}");
    let mut last = tls::connect(server.addr(), &config()).expect("handshake");
    assert_eq!(tls::served_certificate(&last), renewed);
    tls::assert_echo(&mut last, b"served\n");
    tls::assert_echo(&mut established, b"and the first one too\n");
}

/// A key that matches no certificate here.
fn key_of_another() -> String {
    rcgen::KeyPair::generate().unwrap().serialize_pem()
}

#[test]
fn start_up_errors_name_the_file_and_the_reason() {
    let pki = Pki::new("startup");
    let files = pki.write_server(1);
    let missing = pki.dir.join("missing.pem");
    let not_pem = pki.dir.join("not_pem.pem");
    std::fs::write(&not_pem, "this is not a certificate\n").unwrap();
    let other_key = pki.dir.join("other.key");
    std::fs::write(&other_key, key_of_another()).unwrap();
    let cases = [
        (&missing, &files.key, "missing.pem", "No such file"),
        (&not_pem, &files.key, "not_pem.pem", "no certificate"),
        (&files.cert, &not_pem, "not_pem.pem", "no private key"),
        (&files.cert, &other_key, "other.key", "does not match"),
    ];
    for (cert, key, named, reason) in cases {
        let output = common::binary()
            .args(["--port", "0", "--bind", "127.0.0.1", "--tls-cert"])
            .arg(cert)
            .arg("--tls-key")
            .arg(key)
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(1));
        let stderr = String::from_utf8_lossy(&output.stderr);
        let lines: Vec<_> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "one line: {stderr}");
        assert!(lines[0].contains(named), "{stderr}");
        assert!(lines[0].contains(reason), "{stderr}");
    }
    // --tls-cert without --tls-key is a usage error.
    let output = common::binary()
        .args(["--tls-cert"])
        .arg(&files.cert)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
}
