//! `--kv`, the guide's key-value store, over real sockets: the guide's own sequence, a
//! model (a `HashMap`) against the server under generated command sequences over TCP and
//! TLS, SUBSCRIBE's pushes and what happens to a subscriber that does not read them, the
//! budget, and bad input that must lose nothing and close nobody else.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Instant;

use common::tls::{self, Pki};
use common::{scrape, TestServer, TIMEOUT};
use kv_server::{Config, Echo};
use proptest::prelude::*;

fn kv_config() -> Config {
    Config {
        kv: true,
        ..Config::default()
    }
}

fn kv_server() -> TestServer {
    TestServer::start_with(kv_config(), Box::new(Echo))
}

/// A client that sends a command and reads reply lines, as the guide's `send_and_recv`.
struct Client<S: Read + Write> {
    reader: BufReader<S>,
}

impl<S: Read + Write> Client<S> {
    fn new(stream: S) -> Self {
        Client {
            reader: BufReader::new(stream),
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.reader.get_mut().write_all(bytes).unwrap();
        self.reader.get_mut().flush().unwrap();
    }

    fn line(&mut self) -> Vec<u8> {
        let mut line = Vec::new();
        self.reader.read_until(b'\n', &mut line).unwrap();
        assert!(line.ends_with(b"\n"), "the connection ended: {line:?}");
        line
    }

    fn send_and_recv(&mut self, command: &[u8]) -> String {
        if !command.is_empty() {
            self.send(command);
        }
        String::from_utf8_lossy(&self.line()).into_owned()
    }
}

fn client(server: &TestServer) -> Client<TcpStream> {
    Client::new(server.connect())
}

#[test]
fn the_guides_integration_test() {
    let server = kv_server();
    let mut socket = client(&server);
    assert_eq!(
        socket.send_and_recv(b"UNKNOWN shopping\r\n"),
        "UNKNOWN COMMAND\r\n"
    );
    assert_eq!(
        socket.send_and_recv(b"GET shopping eggs\r\n"),
        "NOT FOUND\r\n"
    );
    assert_eq!(socket.send_and_recv(b"CREATE shopping\r\n"), "OK\r\n");
    assert_eq!(socket.send_and_recv(b"PUT shopping eggs 3\r\n"), "OK\r\n");
    assert_eq!(socket.send_and_recv(b"GET shopping eggs\r\n"), "3\r\n");
    assert_eq!(socket.send_and_recv(b""), "OK\r\n");
    assert_eq!(socket.send_and_recv(b"DELETE shopping eggs\r\n"), "OK\r\n");
    assert_eq!(socket.send_and_recv(b"GET shopping eggs\r\n"), "\r\n");
    assert_eq!(socket.send_and_recv(b""), "OK\r\n");
}

#[test]
fn a_get_answers_in_one_write() {
    let server = kv_server();
    let mut socket = server.connect();
    socket.write_all(b"CREATE b\nPUT b k value\n").unwrap();
    let mut replies = [0u8; 8];
    socket.read_exact(&mut replies).unwrap();
    assert_eq!(&replies, b"OK\r\nOK\r\n");
    socket.write_all(b"GET b k\n").unwrap();
    // One read takes the whole reply: it went out in one segment.
    let mut reply = [0u8; 64];
    let read = socket.read(&mut reply).unwrap();
    assert_eq!(&reply[..read], b"value\r\nOK\r\n");
}

#[test]
fn words_are_split_as_elixir_splits_them_and_matched_exactly() {
    let server = kv_server();
    let mut socket = client(&server);
    assert_eq!(socket.send_and_recv(b"  CREATE \t b  \n"), "OK\r\n");
    assert_eq!(
        socket.send_and_recv("PUT\u{3000}b k\u{85}v\r\n".as_bytes()),
        "OK\r\n"
    );
    assert_eq!(socket.send_and_recv(b"GET b k\r\n"), "v\r\n");
    assert_eq!(socket.send_and_recv(b""), "OK\r\n");
    // Non-breaking space is part of a word.
    assert_eq!(
        socket.send_and_recv("GET b\u{a0}k\n".as_bytes()),
        "UNKNOWN COMMAND\r\n"
    );
    for line in [
        &b"get b k\n"[..],
        b"GET b\n",
        b"GET b k extra\n",
        b"\n",
        b"\r\n",
        b"   \t\n",
        b"CREATE\n",
        b"PUT b k\n",
    ] {
        assert_eq!(
            socket.send_and_recv(line),
            "UNKNOWN COMMAND\r\n",
            "{line:?}"
        );
    }
    assert_eq!(
        socket.send_and_recv(b"CREATE b\n"),
        "OK\r\n",
        "again: still OK"
    );
    assert_eq!(socket.send_and_recv(b"DELETE b missing\n"), "OK\r\n");
    assert_eq!(
        socket.send_and_recv(b"DELETE nobucket k\n"),
        "NOT FOUND\r\n"
    );
    assert_eq!(socket.send_and_recv(b"PUT nobucket k v\n"), "NOT FOUND\r\n");
}

#[test]
fn binary_bytes_are_keys_and_values_byte_exact() {
    let server = kv_server();
    let mut socket = client(&server);
    assert_eq!(socket.send_and_recv(b"CREATE \x00\xff\n"), "OK\r\n");
    socket.send(b"PUT \x00\xff \x01\xfe \xc3\x28\x80\nGET \x00\xff \x01\xfe\n");
    assert_eq!(socket.line(), b"OK\r\n");
    assert_eq!(socket.line(), b"\xc3\x28\x80\r\n");
    assert_eq!(socket.line(), b"OK\r\n");
}

#[test]
fn a_last_line_without_its_line_end_is_run() {
    let server = kv_server();
    let mut socket = server.connect();
    socket.write_all(b"CREATE b\nGET b k").unwrap();
    socket.shutdown(std::net::Shutdown::Write).unwrap();
    let mut replies = Vec::new();
    socket.read_to_end(&mut replies).unwrap();
    assert_eq!(replies, b"OK\r\n\r\nOK\r\n");
}

#[test]
fn a_line_over_the_limit_is_refused_once_and_the_next_runs() {
    let config = Config {
        max_line_bytes: 1024,
        ..kv_config()
    };
    let server = TestServer::start_with(config, Box::new(Echo));
    let mut socket = client(&server);
    assert_eq!(socket.send_and_recv(b"CREATE b\n"), "OK\r\n");
    // 64 KiB keys, sent in uneven writes: one ERROR for the whole line.
    let mut long = b"PUT b ".to_vec();
    long.extend(std::iter::repeat_n(b'k', 64 * 1024));
    long.extend(b" v\nGET b k\n");
    for piece in long.chunks(1000) {
        socket.send(piece);
    }
    assert_eq!(socket.line(), b"ERROR\r\n");
    assert_eq!(socket.line(), b"\r\n", "the long PUT changed nothing");
    assert_eq!(socket.line(), b"OK\r\n");
    // A line of exactly the limit's length, its line end included, is run.
    let mut fits = b"PUT b k ".to_vec();
    fits.resize(1023, b'v');
    fits.push(b'\n');
    assert_eq!(socket.send_and_recv(&fits), "OK\r\n");
    // A long line ended by the end of the stream is refused, and nothing else is said.
    let mut tail = vec![b'x'; 5000];
    tail.splice(0..0, b"GET b k\n".iter().copied());
    socket.send(&tail);
    socket
        .reader
        .get_mut()
        .shutdown(std::net::Shutdown::Write)
        .unwrap();
    let mut rest = Vec::new();
    socket.reader.read_to_end(&mut rest).unwrap();
    let mut expected = fits[8..1023].to_vec();
    expected.extend(b"\r\nOK\r\nERROR\r\n");
    assert_eq!(rest, expected);
}

#[test]
fn what_would_pass_the_budget_is_refused_and_nothing_else_is_lost() {
    let config = Config {
        kv_max_bytes: 4096,
        ..kv_config()
    };
    let server = TestServer::start_with(config, Box::new(Echo));
    let mut socket = client(&server);
    assert_eq!(socket.send_and_recv(b"CREATE b\n"), "OK\r\n");
    let big = format!("PUT b big {}\n", "v".repeat(5000));
    assert_eq!(socket.send_and_recv(big.as_bytes()), "ERROR\r\n");
    let mut stored = 0;
    loop {
        let reply = socket.send_and_recv(format!("PUT b k{stored} 0123456789\n").as_bytes());
        if reply == "ERROR\r\n" {
            break;
        }
        assert_eq!(reply, "OK\r\n");
        stored += 1;
    }
    assert!(stored > 20, "{stored} keys fit in 4 KiB");
    for key in 0..stored {
        assert_eq!(
            socket.send_and_recv(format!("GET b k{key}\n").as_bytes()),
            "0123456789\r\n"
        );
        assert_eq!(socket.line(), b"OK\r\n");
    }
    assert_eq!(socket.send_and_recv(b"CREATE another\n"), "ERROR\r\n");
    // Deleting makes room again.
    assert_eq!(socket.send_and_recv(b"DELETE b k0\n"), "OK\r\n");
    assert_eq!(socket.send_and_recv(b"PUT b k0 0123456789\n"), "OK\r\n");
}

#[test]
fn a_million_buckets_are_bounded_and_others_are_served_meanwhile() {
    let config = Config {
        kv_max_bytes: 16 * 1024 * 1024,
        metrics: Some("127.0.0.1:0".parse().unwrap()),
        ..kv_config()
    };
    let server = TestServer::start_with(config, Box::new(Echo));
    let mut flood = server.connect();
    let mut reader = flood.try_clone().unwrap();
    let count = 1_000_000;
    let counter = std::thread::spawn(move || {
        let mut replies = BufReader::new(&mut reader);
        let (mut ok, mut error) = (0, 0);
        let mut line = Vec::new();
        for _ in 0..count {
            line.clear();
            replies.read_until(b'\n', &mut line).unwrap();
            match &line[..] {
                b"OK\r\n" => ok += 1,
                b"ERROR\r\n" => error += 1,
                other => panic!("{other:?}"),
            }
        }
        (ok, error)
    });
    let mut polite = client(&server);
    assert_eq!(polite.send_and_recv(b"CREATE mine\n"), "OK\r\n");
    let mut batch = Vec::new();
    for bucket in 0..count {
        writeln!(batch, "CREATE bucket-{bucket:07}").unwrap();
        if batch.len() > 60_000 {
            flood.write_all(&batch).unwrap();
            batch.clear();
        }
    }
    flood.write_all(&batch).unwrap();
    let (ok, error) = counter.join().unwrap();
    // Each bucket counts its name twice and 160 bytes: about 89,000 fit in 16 MiB.
    assert_eq!(ok + error, count);
    assert!((85_000..95_000).contains(&ok), "{ok} buckets made");
    assert_eq!(polite.send_and_recv(b"PUT mine k v\n"), "OK\r\n");
    let metrics = scrape(server.metrics.unwrap());
    assert_eq!(metrics["kv_server_kv_buckets"], (ok + 1) as f64);
    assert!(metrics["kv_server_kv_stored_bytes"] <= 16.0 * 1024.0 * 1024.0);
    let refused = r#"kv_server_kv_commands_total{command="create",result="error"}"#;
    assert_eq!(metrics[refused], error as f64);
}

#[test]
fn subscribers_get_every_change_from_any_connection() {
    let server = kv_server();
    let mut socket = client(&server);
    assert_eq!(socket.send_and_recv(b"CREATE shopping\r\n"), "OK\r\n");
    socket.send(b"SUBSCRIBE shopping\r\n");
    let mut other = client(&server);
    assert_eq!(other.send_and_recv(b"PUT shopping milk 3\r\n"), "OK\r\n");
    assert_eq!(socket.line(), b"milk SET TO 3\r\n");
    assert_eq!(other.send_and_recv(b"DELETE shopping milk\r\n"), "OK\r\n");
    assert_eq!(socket.line(), b"milk DELETED\r\n");
    // A subscriber's own commands keep working, and its own changes reach it too.
    assert_eq!(socket.send_and_recv(b"PUT shopping eggs 12\r\n"), "OK\r\n");
    assert_eq!(socket.line(), b"eggs SET TO 12\r\n");
    assert_eq!(socket.send_and_recv(b"GET shopping eggs\r\n"), "12\r\n");
    assert_eq!(socket.line(), b"OK\r\n");
    // Subscribing twice changes nothing: one push per change.
    socket.send(b"SUBSCRIBE shopping\r\n");
    assert_eq!(other.send_and_recv(b"DELETE shopping eggs\r\n"), "OK\r\n");
    assert_eq!(socket.line(), b"eggs DELETED\r\n");
    assert_eq!(
        socket.send_and_recv(b"SUBSCRIBE nothing\r\n"),
        "NOT FOUND\r\n"
    );
    // Another bucket's changes are not pushed.
    assert_eq!(other.send_and_recv(b"CREATE other\r\n"), "OK\r\n");
    assert_eq!(other.send_and_recv(b"PUT other k v\r\n"), "OK\r\n");
    assert_eq!(other.send_and_recv(b"PUT shopping last 1\r\n"), "OK\r\n");
    assert_eq!(socket.line(), b"last SET TO 1\r\n");
}

#[test]
fn pushes_reach_thousands_of_subscribers_in_order_and_the_gone_are_forgotten() {
    common::raise_fd_limit();
    let config = Config {
        metrics: Some("127.0.0.1:0".parse().unwrap()),
        ..kv_config()
    };
    let server = TestServer::start_with(config, Box::new(Echo));
    let mut writer = client(&server);
    assert_eq!(writer.send_and_recv(b"CREATE news\n"), "OK\r\n");
    let subscribers: Vec<_> = (0..2000)
        .map(|_| {
            let mut stream = server.connect();
            stream.write_all(b"SUBSCRIBE news\n").unwrap();
            stream
        })
        .collect();
    // Subscriptions and commands of one client are answered in order: a GET after the
    // SUBSCRIBE answered means it was taken.
    for stream in &subscribers {
        let mut last = Client::new(stream);
        assert_eq!(last.send_and_recv(b"GET news x\n"), "\r\n");
        assert_eq!(last.line(), b"OK\r\n");
    }
    for round in 0..5 {
        assert_eq!(
            writer.send_and_recv(format!("PUT news k {round}\n").as_bytes()),
            "OK\r\n"
        );
    }
    for stream in &subscribers {
        let mut reader = BufReader::new(stream);
        for round in 0..5 {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            assert_eq!(line, format!("k SET TO {round}\r\n"));
        }
    }
    drop(subscribers);
    // Those gone are forgotten once the list has doubled since it was last compacted.
    let mut again: Vec<_> = (0..4100).map(|_| client(&server)).collect();
    for subscriber in &mut again {
        subscriber.send(b"SUBSCRIBE news\nGET news x\n");
    }
    for subscriber in &mut again {
        assert_eq!(subscriber.line(), b"\r\n");
        assert_eq!(subscriber.line(), b"OK\r\n");
    }
    let metrics = scrape(server.metrics.unwrap());
    let listed = metrics["kv_server_kv_subscriptions"];
    assert!(
        (4100.0..6100.0).contains(&listed),
        "{listed} subscriptions listed"
    );
    assert_eq!(
        metrics[r#"kv_server_kv_pushes_total{result="sent"}"#],
        10_000.0
    );
}

#[test]
fn a_subscriber_that_does_not_read_is_closed_and_slows_nobody() {
    let config = Config {
        metrics: Some("127.0.0.1:0".parse().unwrap()),
        ..kv_config()
    };
    let server = TestServer::start_with(config, Box::new(Echo));
    let mut writer = client(&server);
    assert_eq!(writer.send_and_recv(b"CREATE b\n"), "OK\r\n");
    let mut stalled = server.connect();
    stalled.write_all(b"SUBSCRIBE b\nGET b x\n").unwrap();
    let mut reply = [0u8; 6];
    stalled.read_exact(&mut reply).unwrap();
    let mut reader = client(&server);
    reader.send(b"SUBSCRIBE b\n");
    // 64 MiB of pushes: the stalled subscriber's socket buffers fill, its unsent output
    // passes the high-water mark (256 KiB) and it is closed; the writer and the reading
    // subscriber carry on throughout.
    let value = "v".repeat(60_000);
    let started = Instant::now();
    let mut pipeline = Vec::new();
    for round in 0..1100 {
        pipeline.extend(format!("PUT b k{round} {value}\n").bytes());
    }
    let mut sender = writer.reader.get_ref().try_clone().unwrap();
    let send = std::thread::spawn(move || sender.write_all(&pipeline).unwrap());
    for round in 0..1100 {
        assert_eq!(writer.line(), b"OK\r\n");
        let push = reader.line();
        assert!(push.starts_with(format!("k{round} SET TO v").as_bytes()));
    }
    send.join().unwrap();
    assert!(started.elapsed() < TIMEOUT);
    let metrics = scrape(server.metrics.unwrap());
    assert_eq!(
        metrics[r#"kv_server_connections_closed_total{reason="subscriber_behind"}"#],
        1.0
    );
    assert!(metrics[r#"kv_server_kv_pushes_total{result="dropped"}"#] >= 1.0);
    // It was closed: what it was sent before is still in its socket, the pushes in order,
    // then the end (or a reset, since what it never read was dropped).
    let mut rest = Vec::new();
    match stalled.read_to_end(&mut rest) {
        Ok(_) => {}
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
    }
    assert!(rest.starts_with(b"k0 SET TO v"), "{:?}", &rest[..20]);
}

/// One command the model knows, and how it is written.
#[derive(Debug, Clone)]
enum Step {
    Create(&'static str),
    Put(&'static str, &'static str, Vec<u8>),
    Get(&'static str, &'static str),
    Delete(&'static str, &'static str),
    Garbage(Vec<u8>),
}

fn step() -> impl Strategy<Value = Step> {
    let bucket = prop::sample::select(vec!["a", "b", "c"]);
    let key = prop::sample::select(vec!["x", "y", "z\u{e9}"]);
    // Values without whitespace or line ends; any other byte.
    let value = prop::collection::vec(
        any::<u8>().prop_filter("no ASCII whitespace", |b| {
            !matches!(
                b,
                b'\t' | b'\n' | 0x0b | 0x0c | b'\r' | b' ' | 0x85 | 0xc2 | 0xe1 | 0xe2 | 0xe3
            )
        }),
        1..12,
    );
    prop_oneof![
        bucket.clone().prop_map(Step::Create),
        (bucket.clone(), key.clone(), value).prop_map(|(b, k, v)| Step::Put(b, k, v)),
        (bucket.clone(), key.clone()).prop_map(|(b, k)| Step::Get(b, k)),
        (bucket, key).prop_map(|(b, k)| Step::Delete(b, k)),
        "[A-Z ]{0,12}".prop_map(|words| Step::Garbage(words.into_bytes())),
    ]
}

/// The line for a step and the replies the model expects, the model updated.
fn model_step(
    step: &Step,
    model: &mut HashMap<&'static str, HashMap<&'static str, Vec<u8>>>,
) -> (Vec<u8>, Vec<u8>) {
    let not_found = b"NOT FOUND\r\n".to_vec();
    match step {
        Step::Create(bucket) => {
            model.entry(bucket).or_default();
            (
                format!("CREATE {bucket}\r\n").into_bytes(),
                b"OK\r\n".to_vec(),
            )
        }
        Step::Put(bucket, key, value) => {
            let mut line = format!("PUT {bucket} {key} ").into_bytes();
            line.extend(value);
            line.extend(b"\n");
            match model.get_mut(bucket) {
                Some(entries) => {
                    entries.insert(key, value.clone());
                    (line, b"OK\r\n".to_vec())
                }
                None => (line, not_found),
            }
        }
        Step::Get(bucket, key) => {
            let line = format!("GET {bucket} {key}\r\n").into_bytes();
            match model.get(bucket) {
                Some(entries) => {
                    let mut reply = entries.get(key).cloned().unwrap_or_default();
                    reply.extend(b"\r\nOK\r\n");
                    (line, reply)
                }
                None => (line, not_found),
            }
        }
        Step::Delete(bucket, key) => {
            let line = format!("DELETE {bucket} {key}\n").into_bytes();
            match model.get_mut(bucket) {
                Some(entries) => {
                    entries.remove(key);
                    (line, b"OK\r\n".to_vec())
                }
                None => (line, not_found),
            }
        }
        Step::Garbage(words) => {
            let mut line = words.clone();
            line.push(b'\n');
            let known = grammar_matches(words);
            assert!(!known, "the generator makes no valid command");
            (line, b"UNKNOWN COMMAND\r\n".to_vec())
        }
    }
}

/// Whether upper-case words could form a command the generator meant as garbage.
fn grammar_matches(words: &[u8]) -> bool {
    let words: Vec<&[u8]> = words
        .split(|b| *b == b' ')
        .filter(|w| !w.is_empty())
        .collect();
    matches!(
        (words.first().copied(), words.len()),
        (Some(b"CREATE" | b"SUBSCRIBE"), 2) | (Some(b"GET" | b"DELETE"), 3) | (Some(b"PUT"), 4)
    )
}

/// Sends every step's line in writes cut at `cuts`, then reads and checks every reply.
fn run_against_model<S: Read + Write>(
    stream: S,
    steps: &[Step],
    cuts: &[usize],
) -> Result<(), TestCaseError> {
    let mut model = HashMap::new();
    let mut wire = Vec::new();
    let mut expected = Vec::new();
    for step in steps {
        let (line, reply) = model_step(step, &mut model);
        wire.extend(line);
        expected.extend(reply);
    }
    let mut client = Client::new(stream);
    let mut from = 0;
    for &cut in cuts {
        let to = (from + cut).min(wire.len());
        client.send(&wire[from..to]);
        from = to;
    }
    client.send(&wire[from..]);
    let mut got = vec![0; expected.len()];
    client.reader.read_exact(&mut got).unwrap();
    prop_assert_eq!(
        String::from_utf8_lossy(&got),
        String::from_utf8_lossy(&expected)
    );
    Ok(())
}

fn is_garbage_command(step: &Step) -> bool {
    matches!(step, Step::Garbage(words) if grammar_matches(words))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Over TCP, pipelined in writes cut anywhere: every reply is the model's.
    #[test]
    fn the_server_agrees_with_a_model_over_tcp(
        steps in prop::collection::vec(step(), 1..120).prop_filter("garbage only", |s| !s.iter().any(is_garbage_command)),
        cuts in prop::collection::vec(1usize..200, 0..20),
    ) {
        let server = kv_server();
        run_against_model(server.connect(), &steps, &cuts)?;
    }

    /// Over TLS, the same.
    #[test]
    fn the_server_agrees_with_a_model_over_tls(
        steps in prop::collection::vec(step(), 1..120).prop_filter("garbage only", |s| !s.iter().any(is_garbage_command)),
        cuts in prop::collection::vec(1usize..200, 0..8),
    ) {
        let pki = Pki::new("kv_model");
        let config = Config { tls: Some(pki.write_server(1)), ..kv_config() };
        let server = TestServer::start_with(config, Box::new(Echo));
        let client_config = tls::client_config(pki.ca_der(), None, None);
        let stream = tls::connect(server.addr, &client_config).unwrap();
        run_against_model(stream, &steps, &cuts)?;
    }
}

/// Every transport takes commands: the Unix socket, telnet (whose offer comes first and
/// whose 0xFF in a value is escaped), and a connection behind a PROXY header.
#[test]
fn every_transport_takes_commands() {
    let path = std::env::temp_dir().join(format!("kv_store_{}.sock", std::process::id()));
    let config = Config {
        unix: Some(path.clone()),
        proxy_from: vec!["127.0.0.2/32".parse().unwrap()],
        ..kv_config()
    };
    let server = TestServer::start_with(config, Box::new(Echo));
    let mut unix = Client::new(std::os::unix::net::UnixStream::connect(&path).unwrap());
    assert_eq!(unix.send_and_recv(b"CREATE shared\n"), "OK\r\n");
    assert_eq!(unix.send_and_recv(b"PUT shared k \xffv\n"), "OK\r\n");
    drop(unix);
    // From the balancer's address, a PROXY header first.
    let from = "127.0.0.2".parse().unwrap();
    let mut behind = Client::new(common::crowd::connect_from(from, server.addr, false));
    behind.send(b"PROXY TCP4 192.0.2.7 198.51.100.1 56324 4040\r\n");
    assert_eq!(behind.send_and_recv(b"GET shared k\r\n"), "\u{fffd}v\r\n");
    drop(behind);
    drop(server);

    let config = Config {
        telnet: true,
        ..kv_config()
    };
    let server = TestServer::start_with(config, Box::new(Echo));
    let mut stream = server.connect();
    let mut offer = [0u8; 3];
    stream.read_exact(&mut offer).unwrap();
    assert_eq!(offer, [255, 253, 0], "IAC DO BINARY");
    stream.write_all(&[255, 251, 0]).unwrap();
    let mut telnet = Client::new(stream);
    assert_eq!(telnet.send_and_recv(b"CREATE b\r\n"), "OK\r\n");
    telnet.send(b"SUBSCRIBE b\r\nPUT b k \xff\xffv\r\nGET b k\r\n");
    assert_eq!(telnet.line(), b"OK\r\n");
    assert_eq!(telnet.line(), b"k SET TO \xff\xffv\r\n", "0xFF escaped");
    assert_eq!(telnet.line(), b"\xff\xffv\r\n");
    assert_eq!(telnet.line(), b"OK\r\n");
}

/// The metrics count each command by kind and result, and show what the store holds.
#[test]
fn the_metrics_count_commands_and_what_the_store_holds() {
    let config = Config {
        kv_max_bytes: 1000,
        metrics: Some("127.0.0.1:0".parse().unwrap()),
        ..kv_config()
    };
    let server = TestServer::start_with(config, Box::new(Echo));
    let mut socket = client(&server);
    socket.send(b"CREATE b\nCREATE b\nPUT b k v\nPUT nob k v\nGET b k\nGET b none\nGET nob k\n");
    socket.send(b"DELETE b none\nSUBSCRIBE b\nPUT b k2 v2\nHELLO\n\n");
    let mut long = vec![b'x'; 70_000];
    long.push(b'\n');
    socket.send(&long);
    socket.send(format!("PUT b big {}\nGET b k\n", "v".repeat(900)).as_bytes());
    let mut replies = Vec::new();
    while !replies.ends_with(b"v\r\nOK\r\n") || replies.len() < 100 {
        replies.extend(socket.line());
    }
    let metrics = scrape(server.metrics.unwrap());
    let count = |command: &str, result: &str| {
        metrics[&format!(r#"kv_server_kv_commands_total{{command="{command}",result="{result}"}}"#)]
    };
    assert_eq!(count("create", "ok"), 2.0);
    assert_eq!(count("put", "ok"), 2.0);
    assert_eq!(count("put", "not_found"), 1.0);
    assert_eq!(count("put", "error"), 1.0);
    assert_eq!(count("get", "ok"), 3.0);
    assert_eq!(count("get", "not_found"), 1.0);
    assert_eq!(count("delete", "ok"), 1.0);
    assert_eq!(count("subscribe", "ok"), 1.0);
    assert_eq!(count("unknown", "unknown_command"), 2.0);
    assert_eq!(count("too_long", "error"), 1.0);
    assert_eq!(metrics["kv_server_kv_buckets"], 1.0);
    assert_eq!(metrics["kv_server_kv_keys"], 2.0);
    // The bucket (160 and its name twice), two entries (64 and their bytes), a subscription.
    assert_eq!(
        metrics["kv_server_kv_stored_bytes"],
        (162 + 66 + 68 + 48) as f64
    );
    assert_eq!(metrics["kv_server_kv_max_stored_bytes"], 1000.0);
    assert_eq!(metrics["kv_server_kv_subscriptions"], 1.0);
    assert_eq!(metrics[r#"kv_server_kv_pushes_total{result="sent"}"#], 1.0);
    assert_eq!(metrics["kv_server_kv_pushes_owed"], 0.0);
}

/// Over TLS, pushes are sealed like replies: a subscriber gets another client's changes.
#[test]
fn pushes_reach_a_subscriber_over_tls() {
    let pki = Pki::new("kv_push");
    let config = Config {
        tls: Some(pki.write_server(1)),
        ..kv_config()
    };
    let server = TestServer::start_with(config, Box::new(Echo));
    let client_config = tls::client_config(pki.ca_der(), None, None);
    let mut subscriber = Client::new(tls::connect(server.addr, &client_config).unwrap());
    assert_eq!(subscriber.send_and_recv(b"CREATE b\r\n"), "OK\r\n");
    subscriber.send(b"SUBSCRIBE b\r\n");
    assert_eq!(subscriber.send_and_recv(b"GET b k\r\n"), "\r\n");
    assert_eq!(subscriber.line(), b"OK\r\n");
    let mut writer = Client::new(tls::connect(server.addr, &client_config).unwrap());
    for n in 0..20 {
        assert_eq!(
            writer.send_and_recv(format!("PUT b k {n}\r\n").as_bytes()),
            "OK\r\n"
        );
    }
    assert_eq!(writer.send_and_recv(b"DELETE b k\r\n"), "OK\r\n");
    for n in 0..20 {
        assert_eq!(subscriber.line(), format!("k SET TO {n}\r\n").as_bytes());
    }
    assert_eq!(subscriber.line(), b"k DELETED\r\n");
}
