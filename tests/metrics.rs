//! The Prometheus endpoint (`--metrics`): exact counters after a scripted workload, gauges
//! that follow the connections, HTTP as scrapers speak it, scrapers that misbehave, and the
//! output checked by real tools (curl, promtool).

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{assert_echo, http, pattern, scrape, ServerProcess, TestServer};
use kv_server::{Config, Echo};

fn with_metrics(config: Config) -> TestServer {
    let config = Config {
        metrics: Some("127.0.0.1:0".parse().unwrap()),
        metrics_timeout: Duration::from_millis(500),
        ..config
    };
    TestServer::start_with(config, Box::new(Echo))
}

/// Sends `lines` lines of `len` bytes, reads them back, half-closes and waits for the
/// server's end of stream: once that arrives, the server has counted the connection closed.
fn client_session(addr: SocketAddr, id: u64, lines: usize, len: usize) {
    let mut stream = common::connect(addr);
    let mut sent = Vec::new();
    for n in 0..lines {
        let mut line = pattern(len - 1, id * 1000 + n as u64);
        line.push(b'\n');
        sent.extend_from_slice(&line);
    }
    assert_echo(&mut stream, &sent);
    stream.shutdown(Shutdown::Write).unwrap();
    assert_eq!(
        common::read_to_end(&mut stream).unwrap(),
        b"",
        "nothing more"
    );
}

#[test]
fn counters_are_exact_after_a_scripted_workload() {
    let server = with_metrics(Config::default());
    let metrics = server.metrics.unwrap();
    let (clients, lines, len) = (8u64, 25usize, 40usize);
    std::thread::scope(|scope| {
        for id in 0..clients {
            scope.spawn(move || client_session(server.addr, id, lines, len));
        }
    });
    let m = scrape(metrics);
    let bytes = (clients as usize * lines * len) as f64;
    assert_eq!(
        m["kv_server_connections_accepted_total{transport=\"tcp\"}"],
        clients as f64
    );
    assert_eq!(
        m["kv_server_bytes_received_total{transport=\"tcp\"}"],
        bytes
    );
    assert_eq!(m["kv_server_bytes_sent_total{transport=\"tcp\"}"], bytes);
    assert_eq!(m["kv_server_bytes_received_total{transport=\"unix\"}"], 0.0);
    assert_eq!(
        m["kv_server_connections_closed_total{reason=\"client_closed\"}"],
        clients as f64
    );
    for reason in ["error", "idle_timeout", "connection_limit", "handler_panic"] {
        let name = format!("kv_server_connections_closed_total{{reason=\"{reason}\"}}");
        assert_eq!(m[&name], 0.0, "{name}");
    }
    assert_eq!(m["kv_server_connections_open{transport=\"tcp\"}"], 0.0);
    assert_eq!(m["kv_server_buffered_bytes"], 0.0);
    assert_eq!(m["kv_server_reads_paused"], 0.0);
    assert_eq!(m["kv_server_long_lines_total"], 0.0);
    assert_eq!(m["kv_server_build_info{version=\"0.1.0\"}"], 1.0);
    assert!(m["process_resident_memory_bytes"] > 0.0);
    assert!(m["process_open_fds"] > 0.0);
    assert!(m["kv_server_start_time_seconds"] > 1.7e9);
}

#[test]
fn long_lines_and_the_connection_limit_are_counted() {
    let server = with_metrics(Config {
        max_line_bytes: 100,
        max_connections: Some(1),
        ..Config::default()
    });
    let metrics = server.metrics.unwrap();
    let mut client = server.connect();
    // Three lines of 250 bytes (three pieces each) and a short one: three long lines.
    let mut long = pattern(249, 1);
    long.push(b'\n');
    let mut bytes = long.repeat(3);
    bytes.extend_from_slice(b"short\n");
    assert_echo(&mut client, &bytes);
    let mut extra = common::connect(server.addr);
    assert!(common::closed_within(&mut extra, common::TIMEOUT));
    let m = scrape(metrics);
    assert_eq!(m["kv_server_long_lines_total"], 3.0);
    assert_eq!(
        m["kv_server_connections_accepted_total{transport=\"tcp\"}"],
        2.0
    );
    assert_eq!(
        m["kv_server_connections_closed_total{reason=\"connection_limit\"}"],
        1.0
    );
    assert_eq!(m["kv_server_connections_open{transport=\"tcp\"}"], 1.0);
}

#[test]
fn gauges_follow_a_client_that_does_not_read() {
    let server = with_metrics(Config::default());
    let metrics = server.metrics.unwrap();
    let mut hog = server.connect();
    hog.set_nonblocking(true).unwrap();
    let line = [b'x'; 1023]
        .iter()
        .chain(b"\n")
        .copied()
        .collect::<Vec<u8>>();
    let mut sent = 0usize;
    // Write until the server stops reading and both socket buffers are full.
    let deadline = Instant::now() + common::TIMEOUT;
    let mut blocked_since = None;
    loop {
        // Each write continues where the last one stopped, so the stream is whole lines.
        match hog.write(&line[sent % line.len()..]) {
            Ok(n) => {
                sent += n;
                blocked_since = None;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                let since = *blocked_since.get_or_insert_with(Instant::now);
                if since.elapsed() > Duration::from_millis(200) {
                    break;
                }
                std::thread::yield_now();
            }
            Err(e) => panic!("{e}"),
        }
        assert!(Instant::now() < deadline);
    }
    let m = scrape(metrics);
    assert_eq!(m["kv_server_reads_paused"], 1.0, "{sent} bytes sent");
    assert!(m["kv_server_buffered_bytes"] > 0.0);
    // The budget counts allocated capacity: never less than the bytes held.
    assert!(m["kv_server_buffer_budget_used_bytes"] >= m["kv_server_buffered_bytes"]);
    assert_eq!(
        m["kv_server_buffer_budget_bytes"],
        kv_server::config::DEFAULT_MAX_BUFFERED_BYTES as f64
    );
    // Read everything back: reading resumes and the buffers empty. The last write may have
    // taken part of a line, which is held until its newline arrives.
    hog.set_nonblocking(false).unwrap();
    let complete = sent - sent % line.len();
    let mut back = vec![0u8; complete];
    hog.read_exact(&mut back).unwrap();
    assert!(back.chunks(line.len()).all(|chunk| chunk == line));
    if complete < sent {
        hog.write_all(&line[sent - complete..]).unwrap();
        let mut last = vec![0u8; line.len()];
        hog.read_exact(&mut last).unwrap();
        assert_eq!(last, line);
    }
    let m = scrape(metrics);
    assert_eq!(m["kv_server_reads_paused"], 0.0);
    assert_eq!(m["kv_server_buffered_bytes"], 0.0);
    assert_eq!(m["kv_server_buffer_budget_used_bytes"], 0.0);
    assert_eq!(m["kv_server_reads_waiting_for_budget"], 0.0);
}

#[test]
fn http_answers_as_scrapers_expect() {
    let server = with_metrics(Config::default());
    let metrics = server.metrics.unwrap();

    let answer = http(metrics, b"GET /other HTTP/1.1\r\nConnection: close\r\n\r\n");
    assert!(answer.starts_with("HTTP/1.1 404 Not Found\r\n"), "{answer}");
    let answer = http(
        metrics,
        b"POST /metrics HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi",
    );
    assert!(
        answer.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"),
        "{answer}"
    );
    assert!(answer.contains("Allow: GET, HEAD\r\n"), "{answer}");
    let answer = http(metrics, b"NONSENSE\r\n\r\n");
    assert!(
        answer.starts_with("HTTP/1.1 400 Bad Request\r\n"),
        "{answer}"
    );
    let huge = format!(
        "GET /metrics HTTP/1.1\r\nX-Pad: {}\r\n\r\n",
        "a".repeat(20_000)
    );
    let answer = http(metrics, huge.as_bytes());
    assert!(
        answer.starts_with("HTTP/1.1 400 Bad Request\r\n"),
        "{answer}"
    );
    let answer = http(metrics, b"HEAD /metrics HTTP/1.0\r\n\r\n");
    assert!(answer.starts_with("HTTP/1.0 200 OK\r\n"), "{answer}");
    assert!(answer.ends_with("\r\n\r\n"), "no body for HEAD: {answer}");
    let answer = http(
        metrics,
        b"GET /metrics?x=1 HTTP/1.0\r\nAccept: application/openmetrics-text; version=1.0.0\r\n\r\n",
    );
    assert!(
        answer.contains("Content-Type: application/openmetrics-text; version=1.0.0"),
        "{answer}"
    );
    assert!(answer.ends_with("# EOF\n"), "{answer}");

    // HTTP/1.1 keeps the connection: two requests, two answers, then it is still open.
    let mut stream = common::connect(metrics);
    stream
        .write_all(
            b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\nGET /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
        )
        .unwrap();
    for _ in 0..2 {
        let (status, _) = read_response(&mut stream);
        assert_eq!(status, "HTTP/1.1 200 OK");
    }
    assert_echo(&mut server.connect(), b"echo still fine\n");
}

/// Reads one response with a Content-Length; returns its status line and body.
fn read_response(stream: &mut TcpStream) -> (String, Vec<u8>) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).unwrap();
    (head.lines().next().unwrap().to_owned(), body)
}

#[test]
fn a_stalled_scraper_delays_no_echo_and_is_closed_after_the_time_out() {
    let server = with_metrics(Config::default());
    let mut stalled = common::connect(server.metrics.unwrap());
    stalled.write_all(b"GET /metr").unwrap();
    let started = Instant::now();
    let mut client = server.connect();
    for round in 0..100 {
        assert_echo(&mut client, format!("round {round}\n").as_bytes());
    }
    // The time-out is 500 ms: 100 round trips meanwhile show the loop was never held.
    assert!(started.elapsed() < Duration::from_millis(500));
    assert!(
        common::closed_within(&mut stalled, Duration::from_secs(5)),
        "the stalled scraper is closed after the time-out"
    );
    assert!(started.elapsed() >= Duration::from_millis(400));
}

/// Idle connections held on the metrics port cannot blind monitoring: with all 16 places
/// taken by connections that sent nothing, each new scraper takes the place of the one
/// silent longest, round after round as the holder re-opens them; scrapers that have asked
/// something keep their places, and a newcomer is then turned away.
#[test]
fn silent_connections_give_way_to_a_new_scraper() {
    let server = TestServer::start_with(
        Config {
            metrics: Some("127.0.0.1:0".parse().unwrap()),
            metrics_timeout: Duration::from_secs(60),
            ..Config::default()
        },
        Box::new(Echo),
    );
    let metrics = server.metrics.unwrap();
    let mut silent: std::collections::VecDeque<TcpStream> =
        (0..16).map(|_| common::connect(metrics)).collect();
    for round in 0..10 {
        let answer = http(metrics, b"GET /metrics HTTP/1.0\r\n\r\n");
        assert!(
            answer.starts_with("HTTP/1.0 200 OK"),
            "round {round}: {answer}"
        );
        let mut oldest = silent.pop_front().unwrap();
        assert!(
            common::closed_within(&mut oldest, common::TIMEOUT),
            "round {round}: the longest silent gave way"
        );
        // The holder opens another, as one blinding the monitoring would.
        silent.push_back(common::connect(metrics));
    }
    drop(silent);
    // Scrapers that asked something, and hold their connections open for more.
    let wait = Instant::now() + common::TIMEOUT;
    let mut asking: Vec<TcpStream> = Vec::new();
    while asking.len() < 16 {
        let mut stream = common::connect(metrics);
        stream.set_read_timeout(Some(common::TIMEOUT)).unwrap();
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut first = [0u8; 1];
        // A place freed by a silent one's close may not be seen yet: try again.
        if stream.peek(&mut first).is_ok_and(|n| n > 0) {
            let (status, _) = read_response(&mut stream);
            assert_eq!(status, "HTTP/1.1 200 OK");
            asking.push(stream);
        }
        assert!(Instant::now() < wait, "16 places for scrapers");
    }
    let mut newcomer = common::connect(metrics);
    assert!(
        common::closed_within(&mut newcomer, common::TIMEOUT),
        "no place: every scraper asked something"
    );
}

/// The 8 KiB cap on a request holds however its bytes arrive: the same 10,030-byte request
/// in one write or in two gets 400.
#[test]
fn the_request_cap_holds_however_the_bytes_arrive() {
    let server = with_metrics(Config::default());
    let metrics = server.metrics.unwrap();
    let request = format!(
        "GET /metrics HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\n\r\n",
        "a".repeat(9_987)
    );
    assert_eq!(request.len(), 10_030);
    let in_one_write = http(metrics, request.as_bytes());
    assert!(
        in_one_write.starts_with("HTTP/1.1 400 Bad Request\r\n"),
        "{in_one_write}"
    );
    for split in [1, 4_096, 8_192, 8_193, 10_000] {
        let mut stream = common::connect(metrics);
        stream.write_all(&request.as_bytes()[..split]).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        // The server may have answered and closed already: the rest may find it gone.
        let _ = stream.write_all(&request.as_bytes()[split..]);
        let answer = String::from_utf8_lossy(&common::read_to_end(&mut stream).unwrap_or_default())
            .into_owned();
        assert!(
            answer.starts_with("HTTP/1.1 400 Bad Request\r\n"),
            "split at {split}: {answer}"
        );
    }
    // Just under the cap is still a request.
    let fits = format!(
        "GET /metrics HTTP/1.1\r\nX-Pad: {}\r\nConnection: close\r\n\r\n",
        "a".repeat(8_100)
    );
    assert!(fits.len() <= 8 * 1024);
    let answer = http(metrics, fits.as_bytes());
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
}

/// Scrapers that pipeline requests and read the answers as fast as they come get a few
/// answers per turn of the loop, then wait their turn: an echo client is served all the
/// while. (Before, such a scraper held the loop for as long as it kept going, and the
/// echo's first round trip timed out.) The scrapers go on until the echo client has made
/// its round trips.
#[test]
fn pipelining_scrapers_take_turns_with_the_echo() {
    let server = with_metrics(Config {
        metrics_timeout: Duration::from_secs(20),
        ..Config::default()
    });
    let metrics = server.metrics.unwrap();
    let stop = AtomicBool::new(false);
    let answered = AtomicUsize::new(0);
    let request = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n";
    std::thread::scope(|scope| {
        // Whatever happens below, the scrapers stop and their threads end with the scope.
        let scrapers = StopOnDrop {
            stop: &stop,
            streams: (0..4).map(|_| common::connect(metrics)).collect(),
        };
        for stream in &scrapers.streams {
            let (mut writer, mut reader) =
                (stream.try_clone().unwrap(), stream.try_clone().unwrap());
            let (stop, answered) = (&stop, &answered);
            scope.spawn(move || {
                let burst = request.repeat(64);
                while !stop.load(Ordering::SeqCst) {
                    if writer.write_all(&burst).is_err() {
                        return;
                    }
                }
            });
            scope.spawn(move || {
                // An answer whose status line is split across two reads is not counted: the
                // count is a lower bound, which is all the test needs. memchr is built
                // optimized even here, so the reader keeps up with the server.
                let mut chunk = vec![0u8; 256 * 1024];
                loop {
                    match reader.read(&mut chunk) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            let answers =
                                memchr::memmem::find_iter(&chunk[..n], b"HTTP/1.1 200 OK").count();
                            answered.fetch_add(answers, Ordering::SeqCst);
                        }
                    }
                }
            });
        }
        let flood_started = Instant::now();
        while answered.load(Ordering::SeqCst) < 100 {
            assert!(
                flood_started.elapsed() < Duration::from_secs(20),
                "no scrape answered"
            );
            std::thread::yield_now();
        }
        let mut client = server.connect();
        client
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        for round in 0..200 {
            let line = format!("round {round}\n");
            client.write_all(line.as_bytes()).unwrap();
            let mut back = vec![0u8; line.len()];
            client
                .read_exact(&mut back)
                .unwrap_or_else(|e| panic!("echo round {round} while the scrapers go on: {e}"));
            assert_eq!(back, line.as_bytes());
        }
        let answered_meanwhile = answered.load(Ordering::SeqCst);
        drop(scrapers);
        assert!(answered_meanwhile > 100, "the scrapers were answered too");
    });
}

/// Stops the scrapers of a test when dropped, even by a failing assertion: sets `stop` for
/// their writers and shuts their sockets down (not waiting for answers to all that is
/// pipelined), which ends their readers.
struct StopOnDrop<'a> {
    stop: &'a AtomicBool,
    streams: Vec<TcpStream>,
}

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for stream in &self.streams {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

#[test]
fn a_scraper_that_never_reads_holds_bounded_memory() {
    let server = ServerProcess::start(&["--metrics", "127.0.0.1:0"]);
    let metrics = server.metrics_addr();
    let rss_before = server.status_kib("VmRSS");
    let mut greedy = common::connect(metrics);
    greedy.set_nonblocking(true).unwrap();
    let requests = b"GET /metrics HTTP/1.1\r\n\r\n".repeat(1000);
    let mut written = 0usize;
    let deadline = Instant::now() + Duration::from_secs(2);
    // Pipelined requests whose answers would be over 100 MB, never read.
    while written < 4 << 20 && Instant::now() < deadline {
        match greedy.write(&requests) {
            Ok(n) => written += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::yield_now(),
            Err(e) => panic!("{e}"),
        }
    }
    let grown = server.status_kib("VmRSS").saturating_sub(rss_before);
    assert!(
        grown < 1024,
        "{written} bytes of requests never read grew the server by {grown} KiB"
    );
    let mut client = common::connect(server.addr());
    assert_echo(&mut client, b"still serving\n");
}

/// The metrics address the binary logged before its start-up line.
#[test]
fn metrics_address_in_use_or_unparsable_is_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = taken.local_addr().unwrap().to_string();
    let output = common::binary()
        .args(["--bind", "127.0.0.1", "--port", "0", "--metrics", &taken])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot listen for metrics on {taken}"))
            && stderr.contains("in use"),
        "{stderr}"
    );
    let output = common::binary()
        .args(["--metrics", "localhost:nine"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("localhost:nine") && stderr.contains("HOST:PORT"),
        "{stderr}"
    );
}

#[test]
fn shutdown_logs_a_summary_of_the_run() {
    let mut server = ServerProcess::start(&[]);
    client_session(server.addr(), 1, 10, 20);
    server.signal(libc::SIGTERM);
    let summary = server.wait_log("Served");
    assert!(
        summary.contains("Served 1 connection; 200 bytes in, 200 bytes out")
            && summary.contains("client_closed 1"),
        "{summary}"
    );
    assert!(server.wait_exit(Duration::from_secs(10)).success());
}

#[test]
#[ignore = "needs curl and promtool (apt-get install curl prometheus); cargo test -- --include-ignored"]
fn curl_scrapes_what_promtool_accepts() {
    common::require_tool("curl", "curl");
    common::require_tool("promtool", "prometheus");
    let server = ServerProcess::start(&["--metrics", "127.0.0.1:0"]);
    let url = format!("http://{}/metrics", server.metrics_addr());
    let mut client = common::connect(server.addr());
    assert_echo(&mut client, b"something to count\n");
    let scraped = Command::new("curl").args(["-sSf", &url]).output().unwrap();
    assert!(
        scraped.status.success(),
        "{}",
        String::from_utf8_lossy(&scraped.stderr)
    );
    let text = String::from_utf8(scraped.stdout).unwrap();
    assert!(
        text.contains("kv_server_bytes_received_total{transport=\"tcp\"} 19\n"),
        "{text}"
    );
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let checked = promtool.wait_with_output().unwrap();
    assert!(
        checked.status.success() && checked.stdout.is_empty() && checked.stderr.is_empty(),
        "promtool: {}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
}

/// A client's reset is an ordinary end (HAProxy's health checks close that way): counted as
/// `client_reset`, so that an alert on `error` is not set off by every check.
#[test]
fn a_client_reset_is_counted_as_its_own_reason_not_an_error() {
    let server = with_metrics(Config::default());
    let metrics = server.metrics.unwrap();
    for n in 0..5 {
        let mut client = server.connect();
        assert_echo(&mut client, format!("check {n}\n").as_bytes());
        common::reset(client);
    }
    let name = "kv_server_connections_closed_total{reason=\"client_reset\"}";
    let deadline = Instant::now() + common::TIMEOUT;
    while scrape(metrics)[name] < 5.0 {
        assert!(Instant::now() < deadline, "resets not counted");
        std::thread::sleep(Duration::from_millis(10));
    }
    let m = scrape(metrics);
    assert_eq!(m[name], 5.0);
    assert_eq!(
        m["kv_server_connections_closed_total{reason=\"error\"}"],
        0.0
    );
}

/// The alerting rules docs/operating.md shows are rules promtool accepts.
#[test]
#[ignore = "needs promtool (apt-get install prometheus); cargo test -- --include-ignored"]
fn the_documented_alerting_rules_are_valid() {
    common::require_tool("promtool", "prometheus");
    let rules = common::doc_block("docs/operating.md", "yaml", "groups:");
    let file = std::env::temp_dir().join(format!("kv_server_rules_{}.yml", std::process::id()));
    std::fs::write(&file, rules).unwrap();
    let checked = Command::new("promtool")
        .args(["check", "rules"])
        .arg(&file)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&file);
    assert!(
        checked.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
}
