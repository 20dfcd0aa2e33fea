//! Crowds of clients from many loopback addresses, driven from one thread with non-blocking
//! sockets: hogs that send without reading, each remembering what it sent so that it can
//! check what comes back.

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use socket2::{Domain, Socket, Type};

/// A client socket from `source` (any 127.0.0.0/8 address), connected to `server`; with
/// `small_receive`, a small kernel receive buffer, so that echoes it does not read pile up
/// at the server, not here.
pub fn connect_from(source: IpAddr, server: SocketAddr, small_receive: bool) -> TcpStream {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
    if small_receive {
        socket.set_recv_buffer_size(4096).unwrap();
    }
    socket
        .bind(&SocketAddr::new(source, 0).into())
        .expect("bind the source address");
    socket.connect(&server.into()).expect("connect");
    let stream: TcpStream = socket.into();
    stream.set_nodelay(true).unwrap();
    stream
}

/// The n-th of a spread of loopback source addresses, 127.0.1.0 and up.
pub fn source_address(n: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(
        127,
        0,
        1 + (n / 250) as u8,
        (n % 250) as u8 + 1,
    ))
}

/// A client that sends `quota` bytes of its own stream without reading.
pub struct Hog {
    pub stream: TcpStream,
    pub sent: usize,
    quota: usize,
    seed: u64,
    /// Whether its stream holds newlines (lines of 1 KiB) or never does.
    lines: bool,
}

impl Hog {
    pub fn new(stream: TcpStream, seed: u64, quota: usize, lines: bool) -> Hog {
        stream.set_nonblocking(true).unwrap();
        Hog {
            stream,
            sent: 0,
            quota,
            seed,
            lines,
        }
    }

    /// Bytes `start..start + len` of this hog's stream: a slice of one shared pattern at an
    /// offset of its own, with a newline ending every KiB when it sends lines.
    fn fill(&self, start: usize, len: usize, into: &mut Vec<u8>) {
        let pattern = pattern();
        into.clear();
        let mut at = start;
        while at < start + len {
            let from = (at + self.seed as usize * 4099) % PATTERN_LEN;
            let take = (start + len - at).min(PATTERN_LEN - from);
            into.extend_from_slice(&pattern[from..from + take]);
            at += take;
        }
        if self.lines {
            // The first position at or after `start` that ends a KiB.
            let mut newline = start + (1023 + 1024 - start % 1024) % 1024;
            while newline < start + len {
                into[newline - start] = b'\n';
                newline += 1024;
            }
        }
    }

    /// Writes what the socket takes now; false once it took nothing (or the quota is met).
    pub fn push(&mut self, chunk: &mut Vec<u8>) -> bool {
        if self.sent >= self.quota {
            return false;
        }
        let len = (self.quota - self.sent).min(64 * 1024);
        self.fill(self.sent, len, chunk);
        match self.stream.write(chunk) {
            Ok(n) => {
                self.sent += n;
                n > 0
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => false,
            Err(_) => {
                self.quota = self.sent; // closed by the server: it sends no more
                false
            }
        }
    }

    /// Reads back everything it sent, checking every byte. `Ok(true)` if all came back
    /// intact and in order; `Ok(false)` if the server had closed it (end of stream or reset
    /// before everything came back); `Err` on a wrong byte.
    pub fn read_back(&mut self, deadline: Instant) -> Result<bool, String> {
        self.stream.set_nonblocking(false).unwrap();
        let mut buffer = vec![0u8; 64 * 1024];
        let mut wanted = Vec::with_capacity(buffer.len());
        let mut got = 0usize;
        // A stream without newlines keeps its unfinished tail until the end of stream.
        let expected = if self.lines {
            self.sent - self.sent % 1024
        } else {
            self.sent
        };
        if !self.lines {
            let _ = self.stream.shutdown(std::net::Shutdown::Write);
        }
        while got < expected {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!(
                    "{got} of {expected} bytes back before the deadline"
                ));
            }
            self.stream.set_read_timeout(Some(left)).unwrap();
            let n = match self.stream.read(&mut buffer) {
                Ok(0) => return Ok(false),
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::ConnectionReset => return Ok(false),
                Err(e) => return Err(format!("read after {got} bytes: {e}")),
            };
            self.fill(got, n, &mut wanted);
            if buffer[..n] != wanted[..] {
                return Err(format!("bytes {got}..{} differ", got + n));
            }
            got += n;
        }
        Ok(true)
    }
}

const PATTERN_LEN: usize = 1 << 20;

/// One MiB of bytes other than `\n`, shared by every hog.
fn pattern() -> &'static [u8] {
    static PATTERN: OnceLock<Vec<u8>> = OnceLock::new();
    PATTERN.get_or_init(|| kv_testkit::pattern(PATTERN_LEN, 7))
}

/// Pushes every hog until each has met its quota or none has taken a byte for `stall`.
pub fn push_all(hogs: &mut [Hog], stall: Duration, limit: Duration) {
    let started = Instant::now();
    let mut chunk = Vec::with_capacity(64 * 1024);
    let mut last_progress = Instant::now();
    while started.elapsed() < limit {
        let mut progressed = false;
        for hog in hogs.iter_mut() {
            progressed |= hog.push(&mut chunk);
        }
        if progressed {
            last_progress = Instant::now();
        } else if last_progress.elapsed() > stall {
            return;
        } else {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}
