//! Hostile clients and faults: floods, slow readers, a panicking handler, a full file
//! table, connection limits, idle clients, shutdown under load and connection churn.
//! Memory and descriptor checks run the binary as a process and read /proc.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::captured_log::captured_log;
use common::{assert_echo, pattern, ServerProcess, TestServer};
use kv_server::{Config, LineHandler};

const MIB: u64 = 1024;

/// Sends `total` bytes made of `chunk` repeated, on a thread, while this thread reads the
/// echo back and checks every byte. Returns the bytes checked.
fn stream_through(client: TcpStream, chunk: Vec<u8>, total: usize) -> usize {
    let mut writer = client.try_clone().unwrap();
    let sender_chunk = chunk.clone();
    let sender = thread::spawn(move || {
        let mut sent = 0;
        while sent < total {
            let n = sender_chunk.len().min(total - sent);
            writer.write_all(&sender_chunk[..n]).unwrap();
            sent += n;
        }
        writer.shutdown(Shutdown::Write).unwrap();
    });
    let mut reader = client;
    let mut checked = 0usize;
    let mut buffer = vec![0u8; 256 * 1024];
    loop {
        let n = reader.read(&mut buffer).unwrap();
        if n == 0 {
            break;
        }
        for (i, &byte) in buffer[..n].iter().enumerate() {
            let expected = chunk[(checked + i) % chunk.len()];
            assert_eq!(byte, expected, "byte {} differs", checked + i);
        }
        checked += n;
    }
    sender.join().unwrap();
    checked
}

#[test]
fn fifty_megabytes_without_a_newline_all_come_back_in_bounded_memory() {
    let server = ServerProcess::start(&[]);
    let baseline = server.status_kib("VmRSS");
    let client = common::connect(server.addr());
    let chunk = pattern(1 << 20, 50);
    let total = 50 << 20;
    assert_eq!(stream_through(client, chunk, total), total);
    let peak = server.status_kib("VmHWM");
    assert!(
        peak < baseline + 8 * MIB,
        "peak RSS {peak} KiB against a baseline of {baseline} KiB"
    );
}

#[test]
fn a_client_that_does_not_read_is_not_buffered_without_bound() {
    let server = ServerProcess::start(&[]);
    let baseline = server.status_kib("VmRSS");
    let client = common::connect(server.addr());
    let mut writer = client.try_clone().unwrap();
    let line = {
        let mut line = pattern(999, 200);
        line.push(b'\n');
        line
    };
    let total = 200 << 20;
    let lines = total / line.len();
    let writer_line = line.clone();
    let written = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let written_by_sender = Arc::clone(&written);
    let sender = thread::spawn(move || {
        for _ in 0..lines {
            writer.write_all(&writer_line).unwrap();
            written_by_sender.fetch_add(writer_line.len(), Ordering::Relaxed);
        }
        writer.shutdown(Shutdown::Write).unwrap();
    });
    // Wait until the sender is stuck: the server stopped reading and every buffer between
    // the two is full.
    wait_until_stalled(&written);
    let last = written.load(Ordering::SeqCst);
    assert!(
        last < total,
        "the server must push back before 200 MB are in flight"
    );
    let held = server.status_kib("VmRSS");
    assert!(
        held < baseline + 4 * MIB,
        "RSS {held} KiB with a client not reading, baseline {baseline} KiB"
    );
    // Now read everything: it all comes back, intact and in order.
    let mut reader = client;
    let mut buffer = vec![0u8; 1 << 20];
    let mut checked = 0usize;
    loop {
        let n = reader.read(&mut buffer).unwrap();
        if n == 0 {
            break;
        }
        for (i, &byte) in buffer[..n].iter().enumerate() {
            assert_eq!(
                byte,
                line[(checked + i) % line.len()],
                "byte {}",
                checked + i
            );
        }
        checked += n;
    }
    sender.join().unwrap();
    assert_eq!(checked, lines * line.len());
    let peak = server.status_kib("VmHWM");
    assert!(peak < baseline + 8 * MIB, "peak RSS {peak} KiB");
}

#[test]
fn long_lines_come_back_byte_exact_in_pieces() {
    let server = TestServer::start_with(
        Config {
            max_line_bytes: 1000,
            ..Config::default()
        },
        Box::new(kv_server::Echo),
    );
    let mut client = server.connect();
    let mut long = pattern(12_345, 9);
    long.extend_from_slice(b"\r\nshort\n");
    assert_echo(&mut client, &long);
}

/// Echoes, except that a line saying exactly "panic" makes it panic.
struct PanicsOnRequest;

impl LineHandler for PanicsOnRequest {
    fn respond<'a>(&mut self, lines: &'a [u8], _scratch: &'a mut Vec<u8>) -> &'a [u8] {
        if lines
            .split_inclusive(|&b| b == b'\n')
            .any(|l| l == b"panic\n")
        {
            panic!("asked to panic");
        }
        lines
    }
}

#[test]
fn a_panicking_handler_ends_its_connection_alone() {
    let log = captured_log();
    let server = TestServer::start_with(Config::default(), Box::new(PanicsOnRequest));
    let addr = server.addr;
    let panicked = Arc::new(AtomicBool::new(false));
    let bystanders: Vec<_> = (0..100)
        .map(|id| {
            let panicked = Arc::clone(&panicked);
            thread::spawn(move || {
                let mut client = common::connect(addr);
                let mut rounds_after = 0;
                let mut round = 0;
                // Echo before, during and after the panic.
                while rounds_after < 20 {
                    assert_echo(
                        &mut client,
                        format!("bystander {id} round {round}\n").as_bytes(),
                    );
                    if panicked.load(Ordering::SeqCst) {
                        rounds_after += 1;
                    }
                    round += 1;
                }
            })
        })
        .collect();
    let mut victim = common::connect(addr);
    let victim_addr = victim.local_addr().unwrap().to_string();
    assert_echo(&mut victim, b"fine so far\n");
    victim.write_all(b"panic\n").unwrap();
    assert!(
        common::closed_within(&mut victim, common::TIMEOUT),
        "the panicking connection is closed"
    );
    let errors = log.at(log::Level::Error);
    assert!(
        errors
            .iter()
            .any(|m| m.contains(&victim_addr) && m.contains("asked to panic")),
        "one error line names the peer and the panic: {errors:?}"
    );
    panicked.store(true, Ordering::SeqCst);
    for bystander in bystanders {
        bystander.join().expect("every bystander kept echoing");
    }
    let mut newcomer = common::connect(addr);
    assert_echo(&mut newcomer, b"the loop is alive\n");
}

#[test]
fn the_connection_limit_closes_the_one_too_many() {
    let server = ServerProcess::start(&["--max-connections", "10"]);
    let mut admitted: Vec<TcpStream> = (0..10)
        .map(|i| {
            let mut c = common::connect(server.addr());
            assert_echo(&mut c, format!("client {i}\n").as_bytes());
            c
        })
        .collect();
    let mut eleventh = common::connect(server.addr());
    let _ = eleventh.write_all(b"let me in\n");
    assert!(common::closed_within(&mut eleventh, common::TIMEOUT));
    server.wait_log("Connection limit of 10 reached");
    for (i, client) in admitted.iter_mut().enumerate() {
        assert_echo(client, format!("still served {i}\n").as_bytes());
    }
    // A slot freed is a slot available.
    let leaving = admitted.pop().unwrap();
    leaving.shutdown(Shutdown::Write).unwrap();
    let mut leaving = leaving;
    common::read_to_end(&mut leaving).unwrap();
    let mut replacement = common::connect(server.addr());
    // The server may not have processed the close yet: retry briefly until admitted.
    let deadline = Instant::now() + common::TIMEOUT;
    loop {
        if replacement.write_all(b"my turn\n").is_ok() {
            let mut back = [0u8; 8];
            if replacement.read_exact(&mut back).is_ok() {
                assert_eq!(&back, b"my turn\n");
                break;
            }
        }
        assert!(Instant::now() < deadline, "a freed slot is reused");
        replacement = common::connect(server.addr());
    }
}

#[test]
fn an_idle_client_is_closed_and_a_chatty_one_is_not() {
    let server = ServerProcess::start(&["--idle-timeout", "0.5"]);
    let mut idle = common::connect(server.addr());
    assert_echo(&mut idle, b"then silence\n");
    let mut chatty = common::connect(server.addr());
    let started = Instant::now();
    // Talk every 100 ms for three times the idle timeout.
    while started.elapsed() < Duration::from_millis(1500) {
        assert_echo(&mut chatty, b"still talking\n");
        thread::sleep(Duration::from_millis(100));
    }
    assert!(
        common::closed_within(&mut idle, Duration::from_millis(10)),
        "the idle client was closed after 0.5 s"
    );
    assert_echo(&mut chatty, b"and never closed\n");
}

#[test]
fn sigterm_echoes_everything_that_reached_the_server_then_exits_zero() {
    let mut server = ServerProcess::start(&["--shutdown-timeout", "20"]);
    let mut client = common::connect(server.addr());
    // 20 MB of lines, sent by a client that reads nothing until the signal: the server,
    // its socket buffers and the client's receive buffer fill up, megabytes in flight.
    let lines: Arc<Vec<u8>> = Arc::new(
        (0..1_000_000)
            .flat_map(|i| format!("in flight {i:07}\r\n").into_bytes())
            .collect(),
    );
    let written = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let sender = {
        let mut writer = client.try_clone().unwrap();
        let lines = Arc::clone(&lines);
        let written = Arc::clone(&written);
        thread::spawn(move || {
            let mut sent = 0;
            while sent < lines.len() {
                match writer.write(&lines[sent..(sent + 65_536).min(lines.len())]) {
                    Ok(n) => sent += n,
                    Err(_) => return, // The test closes the socket once it has its answer.
                }
                written.store(sent, Ordering::SeqCst);
            }
        })
    };
    wait_until_stalled(&written);
    // Bytes the server's kernel has acknowledged: written, less what is still in the
    // client's send queue (SIOCOUTQ counts unsent and unacknowledged bytes).
    let reached = written.load(Ordering::SeqCst) - unacknowledged(&client);
    assert!(reached > 1 << 20, "only {reached} bytes reached the server");
    server.signal(libc::SIGTERM);
    let mut received = Vec::new();
    client
        .read_to_end(&mut received)
        .expect("a clean end of stream, not a reset");
    assert!(
        received.len() >= reached,
        "{} bytes came back of {reached} that reached the server",
        received.len()
    );
    assert!(
        lines[..received.len()] == received[..],
        "in order and intact"
    );
    client.shutdown(Shutdown::Both).unwrap();
    sender.join().unwrap();
    let status = server.wait_exit(Duration::from_secs(20));
    assert!(status.success(), "exit status {status:?}");
    assert!(
        TcpStream::connect(server.addr()).is_err(),
        "listener closed"
    );
}

/// Waits until a sender's progress counter stops moving: everything between it and a
/// server that stopped reading is full. Progress is polled, as there is no event for
/// "stopped moving".
fn wait_until_stalled(progress: &std::sync::atomic::AtomicUsize) {
    let mut last = 0;
    let mut still = 0;
    while still < 5 {
        thread::sleep(Duration::from_millis(100));
        let now = progress.load(Ordering::SeqCst);
        if now == last && now > 0 {
            still += 1;
        } else {
            still = 0;
            last = now;
        }
    }
}

/// Bytes in the socket's send queue not yet acknowledged by the peer.
fn unacknowledged(stream: &TcpStream) -> usize {
    use std::os::fd::AsRawFd;
    let mut queued: libc::c_int = 0;
    // SAFETY: SIOCOUTQ (TIOCOUTQ) writes one int into `queued`.
    let rc = unsafe { libc::ioctl(stream.as_raw_fd(), libc::TIOCOUTQ, &mut queued) };
    assert_eq!(rc, 0, "SIOCOUTQ: {}", std::io::Error::last_os_error());
    queued as usize
}

#[test]
fn shutdown_gives_up_after_the_timeout_and_a_second_signal_is_immediate() {
    // A client that never closes its side keeps the drain waiting: the timeout ends it.
    let mut server = ServerProcess::start(&["--shutdown-timeout", "0.5"]);
    let mut stubborn = common::connect(server.addr());
    assert_echo(&mut stubborn, b"not leaving\n");
    let asked = Instant::now();
    server.signal(libc::SIGTERM);
    let status = server.wait_exit(Duration::from_secs(10));
    assert!(status.success());
    assert!(asked.elapsed() >= Duration::from_millis(400));
    server.wait_log("Shutdown timeout");

    let mut server = ServerProcess::start(&["--shutdown-timeout", "60"]);
    let mut stubborn = common::connect(server.addr());
    assert_echo(&mut stubborn, b"not leaving either\n");
    server.signal(libc::SIGINT);
    server.wait_log("shutting down gracefully");
    let asked = Instant::now();
    server.signal(libc::SIGINT);
    let status = server.wait_exit(Duration::from_secs(10));
    assert!(asked.elapsed() < Duration::from_secs(5));
    assert_eq!(status.code(), Some(130), "128 + SIGINT");
}

#[test]
fn churn_leaves_no_descriptors_or_memory_behind() {
    let server = ServerProcess::start(&[]);
    let warm_up = |count: usize| {
        for i in 0..count {
            let mut client = common::connect(server.addr());
            assert_echo(&mut client, format!("cycle {i}\n").as_bytes());
            if i % 2 == 0 {
                client.shutdown(Shutdown::Write).unwrap();
                common::read_to_end(&mut client).unwrap();
            } else {
                common::reset(client);
            }
        }
    };
    // Counted before any client connects: the server's own descriptors only.
    let fds_before = server.open_fds();
    warm_up(200);
    let rss_before = server.status_kib("VmRSS");
    warm_up(3_000);
    // Closes are processed asynchronously: wait for the count to settle.
    let deadline = Instant::now() + common::TIMEOUT;
    while server.open_fds() > fds_before && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        server.open_fds(),
        fds_before,
        "descriptors back to baseline"
    );
    let rss_after = server.status_kib("VmRSS");
    assert!(
        rss_after < rss_before + 512,
        "RSS grew from {rss_before} KiB to {rss_after} KiB over 3,000 connections"
    );
}

/// The binary with its open-file limit (soft and hard) set to `limit`, as `prlimit` would.
fn start_with_file_limit(limit: u64, args: &[&str]) -> ServerProcess {
    use std::os::unix::process::CommandExt;
    let mut command = common::binary();
    command
        .args(["--bind", "127.0.0.1", "--port", "0"])
        .args(args);
    // SAFETY: setrlimit is async-signal-safe, as code between fork and exec must be.
    unsafe {
        command.pre_exec(move || {
            let rlimit = libc::rlimit {
                rlim_cur: limit,
                rlim_max: limit,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &rlimit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    ServerProcess::spawn(command)
}

#[test]
fn the_default_connection_limit_follows_the_open_file_limit() {
    common::raise_fd_limit();
    let server = start_with_file_limit(64, &[]);
    let clients: Vec<TcpStream> = (0..60).map(|_| common::connect(server.addr())).collect();
    server.wait_log("Connection limit of 48 reached");
    drop(clients);
}

#[test]
fn a_full_file_table_pauses_accepting_without_spinning_and_recovers() {
    common::raise_fd_limit();
    // Ask for more connections than descriptors exist, so accept itself runs out (EMFILE).
    let server = start_with_file_limit(64, &["--max-connections", "1000"]);
    let mut clients: Vec<TcpStream> = (0..100)
        .map(|i| {
            let mut client = common::connect(server.addr());
            client
                .write_all(format!("client {i:03}\n").as_bytes())
                .unwrap();
            client
        })
        .collect();
    server.wait_log("Cannot accept connections");
    // Connections are accepted in order, so the served ones come first. The first client
    // left waiting is found by its echo not arriving within a wide margin.
    let mut served = 0;
    for (i, client) in clients.iter_mut().enumerate() {
        client
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let mut back = [0u8; 11];
        match client.read_exact(&mut back) {
            Ok(()) => {
                assert_eq!(&back, format!("client {i:03}\n").as_bytes());
                served += 1;
            }
            Err(_) => break,
        }
    }
    assert!(
        (20..64).contains(&served),
        "{served} clients served with 64 descriptors"
    );
    // While the table is full, the loop waits instead of spinning.
    let ticks_before = server.cpu_ticks();
    thread::sleep(Duration::from_secs(2));
    let ticks_used = server.cpu_ticks() - ticks_before;
    assert!(
        ticks_used < 20,
        "{ticks_used} clock ticks of CPU in 2 s while full"
    );
    // The clients it has are still served.
    for (i, client) in clients[..served].iter_mut().enumerate() {
        client.set_read_timeout(Some(common::TIMEOUT)).unwrap();
        assert_echo(client, format!("again {i:03}\n").as_bytes());
    }
    // Once some leave, the waiting ones are accepted and served, with no new connect.
    for client in clients.drain(..10) {
        client.shutdown(Shutdown::Both).unwrap();
    }
    served -= 10;
    let waiting = &mut clients[served];
    waiting.set_read_timeout(Some(common::TIMEOUT)).unwrap();
    let mut back = [0u8; 11];
    waiting
        .read_exact(&mut back)
        .expect("a waiting client is served");
    assert_eq!(&back, format!("client {:03}\n", served + 10).as_bytes());
}

#[test]
fn a_reset_in_the_middle_of_a_line_and_of_unsent_output_ends_that_connection_alone() {
    let server = ServerProcess::start(&["--log-level", "debug"]);
    let mut bystander = common::connect(server.addr());
    assert_echo(&mut bystander, b"watching\n");
    for round in 0..5 {
        let mut flood = common::connect(server.addr());
        // Megabytes of lines it never reads, so the server has output queued, then half a
        // line, then a reset: the server's next write or read on it fails.
        let mut line = pattern(4095, round);
        line.push(b'\n');
        let mut writer = flood.try_clone().unwrap();
        writer
            .set_write_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        for _ in 0..2_000 {
            if writer.write_all(&line).is_err() {
                break; // The server pushed back: buffers are full both ways.
            }
        }
        let _ = flood.write_all(b"half a li");
        common::reset(flood);
        assert_echo(
            &mut bystander,
            format!("round {round} survived\n").as_bytes(),
        );
    }
    let log = server.drain_log();
    assert!(
        !log.iter()
            .any(|l| l.contains("ERROR") || l.contains("WARN")),
        "resets are ordinary: {log:?}"
    );
    let mut newcomer = common::connect(server.addr());
    assert_echo(&mut newcomer, b"the process is alive\n");
}

#[test]
fn an_over_long_line_is_logged_once_per_connection() {
    let server = ServerProcess::start(&["--log-level", "debug", "--max-line-bytes", "100"]);
    let mut client = common::connect(server.addr());
    for i in 0..3 {
        let mut long = pattern(1_000, i);
        long.push(b'\n');
        assert_echo(&mut client, &long);
    }
    client.shutdown(Shutdown::Write).unwrap();
    common::read_to_end(&mut client).unwrap();
    let log = server.log_until("connection closed");
    let notes = log
        .iter()
        .filter(|l| l.contains("line longer than 100 bytes"))
        .count();
    assert_eq!(notes, 1, "one note for one connection: {log:?}");
    assert!(log
        .iter()
        .all(|l| !l.contains("WARN") && !l.contains("ERROR")));
}
