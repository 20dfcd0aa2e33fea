//! Running under a service manager: socket activation (`LISTEN_FDS`), the `sd_notify`
//! protocol (`READY=1`, `STATUS=`, `STOPPING=1`, `WATCHDOG=1`), and restarts that refuse no
//! client because the listening socket outlives each instance.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, UdpSocket};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::churn::Churn;
use common::{assert_echo, socket_activated, ServerProcess, TestServer};
use kv_server::{Config, LineHandler, ServiceManager};

#[test]
fn serves_the_socket_a_service_manager_passes() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    // --port and PORT name other ports: the inherited socket wins.
    let command = socket_activated(listener.as_raw_fd(), &["--port", "1"], &[("PORT", "2")]);
    let server = ServerProcess::spawn(command);
    assert_eq!(
        server.port, port,
        "the start-up line names the inherited socket's port"
    );
    assert!(
        server
            .startup_log
            .iter()
            .any(|line| line.contains("INFO") && line.contains("passed by the service manager")),
        "one info line says the socket came from the service manager: {:?}",
        server.startup_log
    );
    let mut client = common::connect(server.addr());
    assert_echo(&mut client, b"activated\r\n");
}

/// Runs the socket-activated binary with `fd` as descriptor 3 and expects it to refuse to
/// start; returns its stderr.
fn refuses_descriptor(fd: i32, env: &[(&str, &str)]) -> String {
    refuses(socket_activated(fd, &[], env))
}

fn refuses(mut command: std::process::Command) -> String {
    let output = command
        .stdin(Stdio::null())
        .output()
        .expect("run the binary");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    stderr
}

#[test]
fn a_descriptor_that_is_not_a_listening_tcp_socket_is_a_clear_error() {
    let file = std::fs::File::open("Cargo.toml").unwrap();
    let error = refuses_descriptor(file.as_raw_fd(), &[]);
    assert!(
        error.contains("descriptor 3") && error.contains("a regular file"),
        "{error}"
    );

    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let error = refuses_descriptor(udp.as_raw_fd(), &[]);
    assert!(error.contains("a UDP socket"), "{error}");

    let unbound = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let error = refuses_descriptor(unbound.as_raw_fd(), &[]);
    assert!(
        error.contains("a TCP socket that is not listening"),
        "{error}"
    );

    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let connected = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let error = refuses_descriptor(connected.as_raw_fd(), &[]);
    assert!(
        error.contains("a TCP socket connected to 127.0.0.1:"),
        "{error}"
    );

    let unix = UnixDatagram::unbound().unwrap();
    let error = refuses_descriptor(unix.as_raw_fd(), &[]);
    assert!(error.contains("a Unix datagram socket"), "{error}");
}

#[test]
fn malformed_listen_fds_is_a_clear_error() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let env = [("LISTEN_FDS", "2")];
    let error = refuses(common::socket_activated_as(
        listener.as_raw_fd(),
        2,
        &[],
        &env,
    ));
    assert!(
        error.contains("LISTEN_FDS passes 2 descriptors (3, 4)"),
        "{error}"
    );
    let error = refuses_descriptor(listener.as_raw_fd(), &[("LISTEN_FDS", "2")]);
    assert!(
        error.contains("LISTEN_FDS='2'") && error.contains("not open"),
        "{error}"
    );
    let error = refuses_descriptor(listener.as_raw_fd(), &[("LISTEN_FDS", "three")]);
    assert!(error.contains("LISTEN_FDS='three'"), "{error}");
}

#[test]
fn listen_variables_for_another_process_are_ignored() {
    let mut command = common::binary();
    command
        .args(["--bind", "127.0.0.1"])
        .env("PORT", "0")
        .env("LISTEN_FDS", "1")
        .env("LISTEN_PID", "1"); // not us
    let server = ServerProcess::spawn(command);
    assert_ne!(server.port, 0);
    let mut client = common::connect(server.addr());
    assert_echo(&mut client, b"bound as usual\n");
}

/// A notification socket bound by the test, as a service manager binds one.
struct NotifySocket {
    path: PathBuf,
    socket: UnixDatagram,
}

impl NotifySocket {
    fn bind(name: &str) -> NotifySocket {
        let path = std::env::temp_dir().join(format!("kv-notify-{}-{name}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let socket = UnixDatagram::bind(&path).unwrap();
        socket.set_read_timeout(Some(common::TIMEOUT)).unwrap();
        NotifySocket { path, socket }
    }

    fn next(&self) -> String {
        let mut buffer = [0u8; 4096];
        let n = self.socket.recv(&mut buffer).expect("a notification");
        String::from_utf8(buffer[..n].to_vec()).unwrap()
    }

    /// Notifications until one containing `needle`.
    fn until(&self, needle: &str) -> Vec<String> {
        let mut seen = Vec::new();
        loop {
            let message = self.next();
            let found = message.contains(needle);
            seen.push(message);
            if found {
                return seen;
            }
        }
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[test]
fn readiness_comes_before_serving_and_stopping_after_sigterm() {
    let notify = NotifySocket::bind("binary");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let path = notify.path.to_str().unwrap().to_owned();
    let mut command = socket_activated(listener.as_raw_fd(), &[], &[("NOTIFY_SOCKET", &path)]);
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut server = ServerProcess::adopt(child);
    // The socket exists before the process does: connect at once, and by the time the echo
    // comes back READY=1 must already be waiting, since it is sent before any accept.
    let mut client = common::connect(addr);
    assert_echo(&mut client, b"first\n");
    notify.socket.set_nonblocking(true).unwrap();
    let ready = notify.next();
    notify.socket.set_nonblocking(false).unwrap();
    assert!(ready.contains("READY=1\n"), "{ready}");
    assert!(
        ready.contains(&format!(
            "STATUS=Accepting connections on port {}\n",
            addr.port()
        )),
        "{ready}"
    );

    server.signal(libc::SIGTERM);
    let stopping = notify.until("STOPPING=1");
    assert!(
        stopping.concat().contains("STOPPING=1"),
        "STOPPING=1 once the drain begins: {stopping:?}"
    );
    let status = notify.until("STATUS=Shutting down: draining");
    assert!(
        status.concat().contains("draining 1 connections"),
        "{status:?}"
    );
    drop(client);
    assert!(server.wait_exit(Duration::from_secs(10)).success());
}

#[test]
fn the_watchdog_is_fed_at_half_its_interval_by_the_binary() {
    let notify = NotifySocket::bind("watchdog");
    let mut command = common::binary();
    command
        .args(["--bind", "127.0.0.1"])
        .env("PORT", "0")
        .env("NOTIFY_SOCKET", &notify.path)
        .env("WATCHDOG_USEC", "200000");
    let _server = ServerProcess::spawn(command);
    notify.until("READY=1");
    let start = Instant::now();
    for _ in 0..10 {
        assert_eq!(notify.next(), "WATCHDOG=1\n");
    }
    // Ten notifications every 100 ms take about a second; wide margins either way.
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(700) && took <= Duration::from_secs(3),
        "10 watchdog notifications took {took:?}"
    );
}

/// Blocks the event loop inside its `respond` for one second on the line `block\n`.
struct Blocking;

impl LineHandler for Blocking {
    fn respond<'a>(&mut self, lines: &'a [u8], _scratch: &'a mut Vec<u8>) -> &'a [u8] {
        if lines == b"block\n" {
            std::thread::sleep(Duration::from_secs(1));
        }
        lines
    }
}

#[test]
fn a_blocked_loop_misses_the_watchdog() {
    let notify = NotifySocket::bind("blocked");
    let interval = Duration::from_millis(200);
    let manager = ServiceManager::connect(&notify.path, Some(interval)).unwrap();
    let server = TestServer::start_notifying(Config::default(), Box::new(Blocking), manager);
    notify.until("READY=1");
    assert_eq!(notify.next(), "WATCHDOG=1\n");
    let mut client = server.connect();
    let blocked = Arc::new(AtomicBool::new(false));
    let mut times = Vec::new();
    let start = Instant::now();
    std::thread::scope(|scope| {
        let blocked = Arc::clone(&blocked);
        let mut blocker = client.try_clone().unwrap();
        scope.spawn(move || {
            blocked.store(true, Ordering::SeqCst);
            assert_echo(&mut blocker, b"block\n");
        });
        // About a second of blocking plus a little after it.
        while start.elapsed() < Duration::from_millis(1500) {
            assert_eq!(notify.next(), "WATCHDOG=1\n");
            times.push(start.elapsed());
        }
    });
    assert_echo(&mut client, b"after\n");
    let longest_gap = times
        .windows(2)
        .map(|pair| pair[1] - pair[0])
        .chain(times.first().copied())
        .max()
        .unwrap();
    // Fed every 100 ms when free; the second inside the handler shows as one long gap.
    assert!(
        longest_gap >= Duration::from_millis(800),
        "no watchdog notification while the loop was blocked; gaps {times:?}"
    );
}

#[test]
fn twenty_restarts_on_a_held_socket_refuse_nobody() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let start = || ServerProcess::spawn(socket_activated(listener.as_raw_fd(), &[], &[]));
    let mut server = start();
    let churn = Churn::start(addr, 4, 5);
    for _ in 0..20 {
        churn.wait_for_echoes(50);
        // What a service manager does on restart: stop the old instance, then start the
        // new one on the socket it kept; arrivals meanwhile wait in its queue.
        server.signal(libc::SIGTERM);
        assert!(server.wait_exit(Duration::from_secs(10)).success());
        server = start();
    }
    churn.wait_for_echoes(50);
    let tally = churn.stop();
    println!("20 socket-activated restarts: {tally:?}");
    assert_eq!(tally.refused, 0, "{tally:?}");
    assert_eq!(tally.resets, 0, "{tally:?}");
    assert_eq!(tally.lost, 0, "{tally:?}");
    assert!(tally.echoed >= 1000, "{tally:?}");
}

/// A TCP listener, a UDP socket and a Unix listener passed at once: each served as if its
/// flag had asked for it.
#[test]
fn a_tcp_listener_a_udp_socket_and_a_unix_listener_are_served_together() {
    let dir = std::env::temp_dir().join(format!("kv_server_activated_{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("kv.sock");
    let _ = std::fs::remove_file(&path);
    let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
    let udp = UdpSocket::bind(tcp.local_addr().unwrap()).unwrap();
    let unix = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let command = common::socket_activated_many(
        &[tcp.as_raw_fd(), udp.as_raw_fd(), unix.as_raw_fd()],
        "kv:kv:kv",
        &[],
    );
    let server = ServerProcess::spawn(command);
    assert_eq!(server.port, tcp.local_addr().unwrap().port());
    assert!(
        server
            .startup_log
            .iter()
            .any(|line| line.contains("with a UDP socket and a Unix listener")),
        "{:?}",
        server.startup_log
    );
    assert_echo(&mut common::connect(server.addr()), b"over tcp\n");
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client.set_read_timeout(Some(common::TIMEOUT)).unwrap();
    client.send_to(b"a datagram", server.addr()).unwrap();
    let mut back = [0u8; 64];
    let (len, _) = client.recv_from(&mut back).unwrap();
    assert_eq!(&back[..len], b"a datagram");
    let mut local = std::os::unix::net::UnixStream::connect(&path).unwrap();
    local.set_read_timeout(Some(common::TIMEOUT)).unwrap();
    local.write_all(b"over unix\n").unwrap();
    let mut echoed = [0u8; 10];
    local.read_exact(&mut echoed).unwrap();
    assert_eq!(&echoed, b"over unix\n");
    drop(server);
    // The service manager's socket file is its own: left in place.
    assert!(path.exists());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn two_of_a_kind_or_no_tcp_listener_is_a_clear_error() {
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let error = refuses(common::socket_activated_many(&[udp.as_raw_fd()], "", &[]));
    assert!(
        error.contains("a UDP socket (descriptor 3) but no listening TCP socket"),
        "{error}"
    );
    let other = UdpSocket::bind("127.0.0.1:0").unwrap();
    let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
    let error = refuses(common::socket_activated_many(
        &[tcp.as_raw_fd(), udp.as_raw_fd(), other.as_raw_fd()],
        "web:echo-udp:other-udp",
        &[],
    ));
    assert!(error.contains("with 2 UDP sockets among them"), "{error}");
    let file = std::fs::File::open("Cargo.toml").unwrap();
    let error = refuses(common::socket_activated_many(
        &[tcp.as_raw_fd(), file.as_raw_fd()],
        "web:config",
        &[],
    ));
    assert!(
        error.contains("descriptor 4 (\"config\")") && error.contains("a regular file"),
        "{error}"
    );
}
