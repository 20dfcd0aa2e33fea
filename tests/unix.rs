//! `--unix PATH`: the same echo over a Unix stream socket, beside TCP; the socket file's
//! life (a stale one replaced, a live one or a non-socket refused with the path named, the
//! file removed at a clean exit, its mode), and the rules that do and do not apply.

mod common;

use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{binary, ServerProcess, TestServer};
use kv_server::{Config, Echo};

/// A fresh directory for this test's socket file, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "kv_server_unix_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn socket(&self) -> PathBuf {
        self.0.join("kv.sock")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn unix_server(path: &std::path::Path, config: Config) -> TestServer {
    let config = Config {
        unix: Some(path.to_owned()),
        metrics: Some("127.0.0.1:0".parse().unwrap()),
        ..config
    };
    TestServer::start_with(config, Box::new(Echo))
}

fn connect(path: &std::path::Path) -> UnixStream {
    let stream = UnixStream::connect(path).unwrap();
    stream.set_read_timeout(Some(common::TIMEOUT)).unwrap();
    stream
}

fn assert_echo(stream: &mut UnixStream, bytes: &[u8]) {
    stream.write_all(bytes).unwrap();
    let mut back = vec![0u8; bytes.len()];
    stream.read_exact(&mut back).unwrap();
    assert_eq!(back, bytes);
}

#[test]
fn lines_and_a_half_closed_tail_come_back_byte_exact_beside_tcp() {
    let dir = TempDir::new();
    let server = unix_server(&dir.socket(), Config::default());
    let mut stream = connect(&dir.socket());
    assert_echo(&mut stream, b"over a unix socket\r\n");
    assert_echo(&mut stream, b"\xff\x00 bytes as they are\n");
    stream.write_all(b"a tail without newline").unwrap();
    stream.shutdown(std::net::Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).unwrap();
    assert_eq!(rest, b"a tail without newline");
    common::assert_echo(&mut server.connect(), b"and TCP still\n");
    let metrics = common::scrape(server.metrics.unwrap());
    assert_eq!(
        metrics["kv_server_connections_accepted_total{transport=\"unix\"}"],
        1.0
    );
    assert_eq!(
        metrics["kv_server_connections_accepted_total{transport=\"tcp\"}"],
        1.0
    );
    // Over the Unix socket: two lines (20 and 21 bytes) and a 22-byte tail, each way.
    let unix_bytes = 63.0;
    assert_eq!(
        metrics["kv_server_bytes_received_total{transport=\"unix\"}"],
        unix_bytes
    );
    assert_eq!(
        metrics["kv_server_bytes_sent_total{transport=\"unix\"}"],
        unix_bytes
    );
    assert_eq!(
        metrics["kv_server_bytes_received_total{transport=\"tcp\"}"],
        14.0
    );
}

#[test]
fn twenty_megabytes_stream_through_whole() {
    let dir = TempDir::new();
    let _server = unix_server(&dir.socket(), Config::default());
    let stream = connect(&dir.socket());
    let mut sent = kv_testkit::pattern(20_000_000, 3);
    for at in (0..sent.len()).step_by(1000).skip(1) {
        sent[at] = b'\n';
    }
    let mut writer = stream.try_clone().unwrap();
    let to_send = sent.clone();
    let sending = std::thread::spawn(move || {
        writer.write_all(&to_send).unwrap();
        writer.shutdown(std::net::Shutdown::Write).unwrap();
    });
    let mut back = Vec::with_capacity(sent.len());
    let mut reader = stream;
    reader.read_to_end(&mut back).unwrap();
    sending.join().unwrap();
    assert!(
        back == sent,
        "{} of {} bytes came back",
        back.len(),
        sent.len()
    );
}

/// Per-address limits are about IP clients: a Unix socket's are not counted under any.
#[test]
fn per_address_limits_do_not_apply() {
    let dir = TempDir::new();
    let config = Config {
        max_connections_per_ip: Some(1),
        ..Config::default()
    };
    let _server = unix_server(&dir.socket(), config);
    let mut streams: Vec<UnixStream> = (0..3).map(|_| connect(&dir.socket())).collect();
    for (n, stream) in streams.iter_mut().enumerate() {
        assert_echo(stream, format!("client {n}\n").as_bytes());
    }
}

/// A socket file left by a server that did not stop cleanly, with nobody listening, is
/// replaced.
#[test]
fn a_stale_socket_file_is_replaced() {
    let dir = TempDir::new();
    drop(UnixListener::bind(dir.socket()).unwrap());
    assert!(std::fs::metadata(dir.socket())
        .unwrap()
        .file_type()
        .is_socket());
    let _server = unix_server(&dir.socket(), Config::default());
    assert_echo(&mut connect(&dir.socket()), b"served at the old path\n");
}

/// Runs the binary with `--unix path`, expecting it to refuse to start: its stderr.
fn refused_at(path: &std::path::Path) -> String {
    let output = binary()
        .args(["--port", "0", "--unix"])
        .arg(path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    stderr
}

#[test]
fn a_live_socket_or_a_regular_file_is_refused_naming_the_path() {
    let dir = TempDir::new();
    let path = dir.socket();
    let live = UnixListener::bind(&path).unwrap();
    let stderr = refused_at(&path);
    assert!(
        stderr.contains(&*path.to_string_lossy()) && stderr.contains("listening there"),
        "{stderr}"
    );
    // The other listener's file is untouched.
    drop(live);
    std::fs::remove_file(&path).unwrap();
    std::fs::write(&path, b"someone's data").unwrap();
    let stderr = refused_at(&path);
    assert!(stderr.contains("a regular file, not a socket"), "{stderr}");
    assert_eq!(std::fs::read(&path).unwrap(), b"someone's data");
}

/// The binary: the mode asked for, the start-up line naming the path, and no file left
/// after SIGTERM.
#[test]
fn the_binary_sets_the_mode_logs_the_path_and_removes_the_file_on_sigterm() {
    let dir = TempDir::new();
    let path = dir.socket();
    let shown = path.to_string_lossy().into_owned();
    let mut server = ServerProcess::start(&["--unix", &shown, "--unix-mode", "660"]);
    server.wait_log(&format!("Accepting connections on Unix socket {shown}"));
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o660);
    assert_echo(&mut connect(&path), b"from the binary\n");
    server.signal(libc::SIGTERM);
    assert!(server.wait_exit(Duration::from_secs(10)).success());
    assert!(!path.exists(), "the socket file outlived the server");
}

#[test]
fn a_bad_mode_is_a_clear_error() {
    let output = binary()
        .args(["--unix", "/tmp/x.sock", "--unix-mode", "rw-"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("not a file mode in octal"), "{stderr}");
}

/// With a umask that would leave it open to all (000) and `--unix-mode 600`, the socket
/// file is never seen at its path with any other mode: a watcher looking as fast as it
/// can, across 30 starts, from before the server binds until it is serving. (Before, the
/// mode was set by chmod after bind, and a racer running as another user got in on about
/// half the starts.)
#[test]
fn the_socket_file_never_exists_with_a_wider_mode_than_asked() {
    use std::os::unix::process::CommandExt;
    let dir = TempDir::new();
    let path = dir.socket();
    let shown = path.to_string_lossy().into_owned();
    let mut seen = std::collections::BTreeMap::new();
    for _ in 0..30 {
        let watching = std::sync::atomic::AtomicBool::new(true);
        let modes = std::thread::scope(|scope| {
            let watcher = scope.spawn(|| {
                let mut modes = Vec::new();
                while watching.load(Ordering::Relaxed) {
                    if let Ok(metadata) = std::fs::symlink_metadata(&path) {
                        modes.push(metadata.permissions().mode() & 0o7777);
                    }
                }
                modes
            });
            let mut command = binary();
            command
                .args(["--bind", "127.0.0.1", "--port", "0", "--unix", &shown])
                .args(["--unix-mode", "600"]);
            // SAFETY: umask is async-signal-safe, as code between fork and exec must be.
            unsafe {
                command.pre_exec(|| {
                    libc::umask(0);
                    Ok(())
                });
            }
            let mut server = ServerProcess::spawn(command);
            server.wait_log("Accepting connections on Unix socket");
            watching.store(false, Ordering::Relaxed);
            server.signal(libc::SIGTERM);
            assert!(server.wait_exit(Duration::from_secs(10)).success());
            watcher.join().unwrap()
        });
        for mode in modes {
            *seen.entry(mode).or_insert(0) += 1;
        }
    }
    let seen: Vec<String> = seen
        .iter()
        .map(|(mode, times)| format!("{mode:o} {times} times"))
        .collect();
    assert!(
        seen.len() == 1 && seen[0].starts_with("600 "),
        "modes seen at the path: {seen:?}"
    );
}

/// At shutdown a server removes its socket file only if it is still the one it made:
/// another server's socket put at the path meanwhile stays (and keeps serving), and so does
/// a regular file.
#[test]
fn shutdown_leaves_a_file_that_is_not_the_one_it_made() {
    let dir = TempDir::new();
    let path = dir.socket();
    let shown = path.to_string_lossy().into_owned();
    let start = || {
        let server = ServerProcess::start(&["--unix", &shown]);
        server.wait_log("Accepting connections on Unix socket");
        server
    };
    let mut first = start();
    // Its file goes (an operator's mistake, or a clean-up), and a second server takes the
    // path.
    std::fs::remove_file(&path).unwrap();
    let mut second = start();
    first.signal(libc::SIGTERM);
    assert!(first.wait_exit(Duration::from_secs(10)).success());
    first.wait_log("Leaving");
    assert_echo(&mut connect(&path), b"the second server still answers\n");

    // A regular file put in place of the second's socket outlives it too.
    std::fs::remove_file(&path).unwrap();
    std::fs::write(&path, b"someone's data").unwrap();
    second.signal(libc::SIGTERM);
    assert!(second.wait_exit(Duration::from_secs(10)).success());
    assert_eq!(std::fs::read(&path).unwrap(), b"someone's data");
}

/// The TCP and Unix listeners take turns: with a hundred TCP connections queued (the
/// server stopped while they came) and one Unix client behind them, the Unix client is
/// let in second, not after every TCP one (before, each turn accepted TCP until its queue
/// was empty, and a connect storm starved Unix clients for up to a second).
#[test]
fn a_tcp_backlog_does_not_hold_back_unix_clients() {
    let dir = TempDir::new();
    let path = dir.socket();
    let shown = path.to_string_lossy().into_owned();
    let server = ServerProcess::start(&["--unix", &shown, "--log-level", "debug"]);
    server.wait_log("Accepting connections on Unix socket");
    server.signal(libc::SIGSTOP);
    let tcp: Vec<_> = (0..100).map(|_| common::connect(server.addr())).collect();
    let unix = connect(&path);
    server.signal(libc::SIGCONT);
    let before = server.log_until(&shown);
    let tcp_first = before
        .iter()
        .filter(|line| line.contains("127.0.0.1:"))
        .count();
    assert!(
        tcp_first <= 1,
        "{tcp_first} TCP connections let in before the Unix client"
    );
    drop((tcp, unix));
}
