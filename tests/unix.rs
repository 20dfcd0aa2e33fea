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
