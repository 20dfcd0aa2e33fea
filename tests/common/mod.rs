//! Helpers shared by the integration tests: an in-process server on a free port, the built
//! binary as a child process, and blocking clients with generous time-outs so that a broken
//! server fails a test instead of hanging it.
#![allow(dead_code)] // Each test binary uses its own subset of these helpers.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, ChildStderr, Command, Stdio};
use std::sync::mpsc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

pub mod captured_log;
pub mod churn;
pub mod netns;
pub mod tls;
pub mod websocket;
#[allow(unused_imports)] // Each test binary uses its own subset of these helpers.
pub use kv_testkit::crowd;

use kv_server::{Config, LineHandler, Server, ShutdownHandle, Stopped};
#[allow(unused_imports)] // Each test binary uses its own subset of these helpers.
pub use kv_testkit::pattern;
use kv_testkit::proc;

/// Long enough never to fire on a working server, short enough to end a hung test.
pub const TIMEOUT: Duration = Duration::from_secs(20);

/// A server running on its own thread; shut down and joined on drop.
pub struct TestServer {
    pub addr: SocketAddr,
    /// The scrape endpoint, when the config asked for one.
    pub metrics: Option<SocketAddr>,
    /// Where datagrams are echoed, with `udp` in the config.
    pub udp: Option<SocketAddr>,
    handle: ShutdownHandle,
    thread: Option<JoinHandle<std::io::Result<Stopped>>>,
}

impl TestServer {
    pub fn start() -> TestServer {
        TestServer::start_with(Config::default(), Box::new(kv_server::Echo))
    }

    /// Starts a server with `config`, listening on a free loopback port.
    pub fn start_with(config: Config, handler: Box<dyn LineHandler>) -> TestServer {
        TestServer::run(TestServer::bind(config, handler))
    }

    /// As [`TestServer::start_with`], telling `manager` what the server is doing.
    pub fn start_notifying(
        config: Config,
        handler: Box<dyn LineHandler>,
        manager: kv_server::ServiceManager,
    ) -> TestServer {
        let mut server = TestServer::bind(config, handler);
        server.notify_service_manager(manager);
        TestServer::run(server)
    }

    /// As [`TestServer::start_with`], listening where `config.listen` says (port 0 for a
    /// free one), for tests of other addresses than 127.0.0.1 such as `[::]`.
    pub fn start_listening(config: Config, handler: Box<dyn LineHandler>) -> TestServer {
        let config = Config {
            metrics: config.metrics.map(|_| "127.0.0.1:0".parse().unwrap()),
            ..config
        };
        TestServer::run(Server::bind_with_handler(config, handler).expect("bind"))
    }

    fn bind(config: Config, handler: Box<dyn LineHandler>) -> Server {
        let config = Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            ..config
        };
        // A metrics endpoint asked for at all listens on a free loopback port too.
        let config = Config {
            metrics: config.metrics.map(|_| "127.0.0.1:0".parse().unwrap()),
            ..config
        };
        Server::bind_with_handler(config, handler).expect("bind")
    }

    fn run(server: Server) -> TestServer {
        let addr = server.local_addr();
        assert_ne!(addr.port(), 0, "the real port is known after bind");
        let metrics = server.metrics_addr();
        let udp = server.udp_addr();
        let handle = server.shutdown_handle();
        let thread = thread::spawn(move || server.run());
        TestServer {
            addr,
            metrics,
            udp,
            handle,
            thread: Some(thread),
        }
    }

    pub fn connect(&self) -> TcpStream {
        connect(self.addr)
    }

    /// Shuts the server down gracefully and returns how its loop ended.
    pub fn stop(mut self) -> Stopped {
        self.handle.shutdown().unwrap();
        let thread = self.thread.take().unwrap();
        thread
            .join()
            .expect("server thread panicked")
            .expect("server loop failed")
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(thread) = self.thread.take() {
            let _ = self.handle.shutdown();
            let _ = thread.join();
        }
    }
}

pub fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(TIMEOUT)).unwrap();
    stream.set_nodelay(true).unwrap();
    stream
}

/// Sends `bytes` and expects exactly them back.
pub fn assert_echo(stream: &mut TcpStream, bytes: &[u8]) {
    stream.write_all(bytes).unwrap();
    let mut back = vec![0; bytes.len()];
    stream.read_exact(&mut back).expect("echo");
    assert_eq!(back, bytes);
}

/// An HTTP exchange on a fresh connection: the raw answer, read until the server closes.
pub fn http(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = connect(addr);
    stream.write_all(request).unwrap();
    let mut answer = Vec::new();
    stream
        .read_to_end(&mut answer)
        .expect("the server closes after answering");
    String::from_utf8(answer).unwrap()
}

/// The samples of a scrape, by name with labels (`name{label="value"}`).
pub fn scrape(addr: SocketAddr) -> HashMap<String, f64> {
    let answer = http(addr, b"GET /metrics HTTP/1.0\r\n\r\n");
    let (head, body) = answer.split_once("\r\n\r\n").expect("headers, then a body");
    assert!(head.starts_with("HTTP/1.0 200 OK"), "{head}");
    body.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .map(|line| {
            let (name, value) = line.rsplit_once(' ').unwrap();
            (name.to_owned(), value.parse().unwrap())
        })
        .collect()
}

/// Reads until the server closes the stream, failing on a time-out.
pub fn read_to_end(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut all = Vec::new();
    stream.read_to_end(&mut all)?;
    Ok(all)
}

/// True once the server has closed (EOF or reset), false if it kept the connection open
/// for `wait`.
pub fn closed_within(stream: &mut TcpStream, wait: Duration) -> bool {
    stream.set_read_timeout(Some(wait)).unwrap();
    let mut byte = [0u8; 1];
    let closed = match stream.read(&mut byte) {
        Ok(0) => true,
        Ok(_) => panic!("unexpected data from the server"),
        Err(e) => matches!(
            e.kind(),
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionAborted
        ),
    };
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    closed
}

/// The built binary, started with `args`, its stderr piped.
pub struct ServerProcess {
    pub child: Child,
    pub port: u16,
    /// The stderr lines before the start-up line.
    pub startup_log: Vec<String>,
    /// Every stderr line after the start-up line, as it arrives.
    pub log: mpsc::Receiver<String>,
}

pub fn binary() -> Command {
    Command::new(env!("CARGO_BIN_EXE_kv_server"))
}

/// The load generator, `examples/kv_load`, which `cargo test` builds beside the server.
pub fn kv_load() -> Command {
    let server = std::path::Path::new(env!("CARGO_BIN_EXE_kv_server"));
    let path = server.with_file_name("examples").join("kv_load");
    assert!(
        path.exists(),
        "{} is missing: `cargo test` builds it; after `cargo test --test NAME` run \
         `cargo build --example kv_load` first",
        path.display()
    );
    Command::new(path)
}

impl ServerProcess {
    /// Starts the binary on a free port and waits for its "Accepting connections" line.
    pub fn start(args: &[&str]) -> ServerProcess {
        let mut command = binary();
        command.args(["--bind", "127.0.0.1"]).args(args);
        if !args.contains(&"--port") {
            command.env("PORT", "0");
        }
        ServerProcess::spawn(command)
    }

    pub fn spawn(mut command: Command) -> ServerProcess {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the binary");
        let stderr = child.stderr.take().unwrap();
        let (port, startup_log, log) = wait_for_listening(stderr);
        ServerProcess {
            child,
            port,
            startup_log,
            log,
        }
    }

    /// A child started elsewhere whose stderr is not piped: its port is not known.
    pub fn adopt(child: Child) -> ServerProcess {
        let (_, log) = mpsc::channel();
        ServerProcess {
            child,
            port: 0,
            startup_log: Vec::new(),
            log,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid.
        assert_eq!(unsafe { libc::kill(self.pid(), signal) }, 0);
    }

    /// Waits for the process to exit, failing the test if it takes longer than `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "server did not exit within {limit:?}"
            );
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// The scrape endpoint's address, from the start-up log (`--metrics` with port 0).
    pub fn metrics_addr(&self) -> SocketAddr {
        self.startup_log
            .iter()
            .find_map(|line| line.split("Serving metrics at http://").nth(1))
            .and_then(|rest| rest.strip_suffix("/metrics"))
            .expect("a line naming the metrics address")
            .parse()
            .unwrap()
    }

    /// A field of /proc/PID/status in KiB (VmRSS, VmHWM, ...).
    pub fn status_kib(&self, field: &str) -> u64 {
        proc::status_kib(self.child.id(), field).unwrap()
    }

    pub fn open_fds(&self) -> usize {
        proc::open_fds(self.child.id()).unwrap()
    }

    /// User plus system CPU time consumed so far, in clock ticks.
    pub fn cpu_ticks(&self) -> u64 {
        let (user, system) = proc::user_system_ticks(self.child.id()).unwrap();
        user + system
    }

    /// Waits for a log line containing `needle`.
    /// The first log line containing `needle`, from start-up on.
    pub fn log_line(&self, needle: &str) -> String {
        self.startup_log
            .iter()
            .find(|line| line.contains(needle))
            .cloned()
            .unwrap_or_else(|| self.wait_log(needle))
    }

    pub fn wait_log(&self, needle: &str) -> String {
        self.log_until(needle).pop().unwrap()
    }

    /// Every log line up to and including the first one containing `needle`.
    pub fn log_until(&self, needle: &str) -> Vec<String> {
        let deadline = Instant::now() + TIMEOUT;
        let mut lines = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.log.recv_timeout(left) {
                Ok(line) => {
                    let found = line.contains(needle);
                    lines.push(line);
                    if found {
                        return lines;
                    }
                }
                Err(_) => panic!("no log line containing {needle:?}; saw {lines:?}"),
            }
        }
    }

    /// The log lines that have arrived so far.
    pub fn drain_log(&self) -> Vec<String> {
        self.log.try_iter().collect()
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads stderr until the start-up line, returns the port it names, the lines before it and
/// a channel of the lines that follow (read on a thread so the pipe never fills and blocks
/// the server).
fn wait_for_listening(stderr: ChildStderr) -> (u16, Vec<String>, mpsc::Receiver<String>) {
    let (lines_tx, lines_rx) = mpsc::channel();
    let (port_tx, port_rx) = mpsc::channel();
    thread::spawn(move || {
        let mut port_tx = Some(port_tx);
        let mut before = Vec::new();
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if let Some(rest) = line.split("Accepting connections on port ").nth(1) {
                if let Some(tx) = port_tx.take() {
                    let port = rest.trim().parse::<u16>().ok();
                    let _ = tx.send((port, std::mem::take(&mut before)));
                    continue;
                }
            }
            if port_tx.is_some() {
                before.push(line);
            } else if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let (port, startup_log) = port_rx
        .recv_timeout(TIMEOUT)
        .expect("the server logs 'Accepting connections on port N'");
    let port = port.expect("the port in the start-up line is a number");
    (port, startup_log, lines_rx)
}

/// The binary started the way a service manager starts it under socket activation: `fd` as
/// descriptor 3, `LISTEN_FDS=1` (unless `env` says otherwise) and `LISTEN_PID` set to the
/// process's own pid (a shell sets it, then execs the binary, which keeps the pid).
pub fn socket_activated(fd: std::os::fd::RawFd, args: &[&str], env: &[(&str, &str)]) -> Command {
    socket_activated_as(fd, 1, args, env)
}

/// As [`socket_activated`], with `fd` passed `copies` times: as descriptors 3, 4, ...
pub fn socket_activated_as(
    fd: std::os::fd::RawFd,
    copies: i32,
    args: &[&str],
    env: &[(&str, &str)],
) -> Command {
    use std::os::unix::process::CommandExt;
    let mut command = Command::new("sh");
    command
        .args(["-c", r#"LISTEN_PID=$$ exec "$0" "$@""#])
        .arg(env!("CARGO_BIN_EXE_kv_server"))
        .args(args)
        .env("LISTEN_FDS", "1")
        .envs(env.iter().copied());
    // SAFETY: dup2 and fcntl are async-signal-safe, as code between fork and exec must be.
    unsafe {
        command.pre_exec(move || {
            for target in 3..3 + copies {
                let rc = if fd == target {
                    libc::fcntl(target, libc::F_SETFD, 0) // keep it across exec
                } else {
                    libc::dup2(fd, target) // the copy does not close on exec
                };
                if rc < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    command
}

/// The binary started under socket activation with each of `fds` passed, as descriptors
/// 3, 4, ... in order, with `LISTEN_FDS` and `LISTEN_FDNAMES` (`names`) set to match.
pub fn socket_activated_many(fds: &[std::os::fd::RawFd], names: &str, args: &[&str]) -> Command {
    use std::os::unix::process::CommandExt;
    let fds = fds.to_vec();
    let mut command = Command::new("sh");
    command
        .args(["-c", r#"LISTEN_PID=$$ exec "$0" "$@""#])
        .arg(env!("CARGO_BIN_EXE_kv_server"))
        .args(args)
        .env("LISTEN_FDS", fds.len().to_string())
        .env("LISTEN_FDNAMES", names);
    // SAFETY: dup and dup2 are async-signal-safe, as code between fork and exec must be.
    unsafe {
        command.pre_exec(move || {
            // Copies first, above the targets, so that no target overwrites a source.
            let mut copies = Vec::with_capacity(fds.len());
            for &fd in &fds {
                let copy = libc::fcntl(fd, libc::F_DUPFD, 100);
                if copy < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                copies.push(copy);
            }
            for (i, &copy) in copies.iter().enumerate() {
                if libc::dup2(copy, 3 + i as i32) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    command
}

/// Fails the test unless an outside tool from Debian's packages is installed. Tests that
/// need one are `#[ignore]`d with the reason, so that `cargo test` shows them as not run;
/// `cargo test -- --include-ignored` (CI) runs them, and a missing tool is then a failure,
/// never a silent pass.
pub fn require_tool(name: &str, package: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    assert!(found, "{name} is missing: apt-get install {package}");
}

/// The first code block of `language` in the project's document `page` (a path from the
/// project's root) that contains `marker`: what the documentation shows, to run as written.
pub fn doc_block(page: &str, language: &str, marker: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(page);
    let text = std::fs::read_to_string(&path).unwrap();
    text.split(&format!("```{language}\n"))
        .skip(1)
        .map(|block| block.split("```").next().unwrap())
        .find(|block| block.contains(marker))
        .unwrap_or_else(|| panic!("no {language} block with {marker:?} in {page}"))
        .to_owned()
}

pub fn raise_fd_limit() {
    kv_server::config::raise_open_file_limit().expect("raise the open-file limit");
}

/// Closes `stream` with a TCP reset instead of a FIN (SO_LINGER with a zero time-out).
pub fn reset(stream: TcpStream) {
    use std::os::fd::AsRawFd;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on a descriptor we own, with a correctly sized option value.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &linger as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0);
    drop(stream);
}
