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
        let mut reading = self.start_reading_back();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(reading.shortfall());
            }
            self.stream.set_read_timeout(Some(left)).unwrap();
            if let Some(outcome) = self.read_some(&mut reading)? {
                return Ok(outcome);
            }
        }
    }

    /// Ends the sending: what comes back from now on is read and checked by
    /// [`Hog::read_some`]. A stream without newlines is half-closed, since the server keeps
    /// its unfinished tail until the end of stream.
    pub fn start_reading_back(&mut self) -> ReadingBack {
        let expected = if self.lines {
            self.sent - self.sent % 1024
        } else {
            let _ = self.stream.shutdown(std::net::Shutdown::Write);
            self.sent
        };
        ReadingBack {
            got: 0,
            expected,
            buffer: vec![0u8; 64 * 1024],
            wanted: Vec::with_capacity(64 * 1024),
        }
    }

    /// One read of what comes back, checked: `Ok(Some(true))` once all of it came back,
    /// `Ok(Some(false))` if the server had closed the connection first, `Ok(None)` while
    /// more is to come (a non-blocking socket with nothing to read for now included).
    pub fn read_some(&mut self, reading: &mut ReadingBack) -> Result<Option<bool>, String> {
        if reading.got >= reading.expected {
            return Ok(Some(true));
        }
        let n = match self.stream.read(&mut reading.buffer) {
            Ok(0) => return Ok(Some(false)),
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return Ok(Some(false)),
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(None),
            Err(e) if e.kind() == ErrorKind::TimedOut => return Ok(None),
            Err(e) => return Err(format!("read after {} bytes: {e}", reading.got)),
        };
        self.fill(reading.got, n, &mut reading.wanted);
        if reading.buffer[..n] != reading.wanted[..] {
            return Err(format!("bytes {}..{} differ", reading.got, reading.got + n));
        }
        reading.got += n;
        Ok((reading.got >= reading.expected).then_some(true))
    }
}

/// Where a hog's reading back stands.
pub struct ReadingBack {
    got: usize,
    expected: usize,
    buffer: Vec<u8>,
    wanted: Vec<u8>,
}

impl ReadingBack {
    fn shortfall(&self) -> String {
        format!(
            "{} of {} bytes back before the deadline",
            self.got, self.expected
        )
    }
}

/// Every hog reads back what it sent, all at once (so that one slow connection, say one
/// waiting for a retransmission, does not hold up the others): how many got all of it, how
/// many had been closed, and what went wrong for the others (a wrong byte, or bytes still
/// missing at the deadline).
pub fn read_back_all(hogs: &mut [Hog], deadline: Instant) -> (usize, usize, Vec<String>) {
    let mut readings: Vec<Option<ReadingBack>> = hogs
        .iter_mut()
        .map(|hog| Some(hog.start_reading_back()))
        .collect();
    let (mut intact, mut closed, mut wrong) = (0, 0, Vec::new());
    let mut left = hogs.len();
    while left > 0 {
        if Instant::now() > deadline {
            wrong.extend(readings.iter().flatten().map(ReadingBack::shortfall));
            break;
        }
        let mut progressed = false;
        for (hog, slot) in hogs.iter_mut().zip(readings.iter_mut()) {
            let Some(reading) = slot.as_mut() else {
                continue;
            };
            let before = reading.got;
            let outcome = hog.read_some(reading);
            progressed |= reading.got > before;
            match outcome {
                Ok(None) => continue,
                Ok(Some(true)) => intact += 1,
                Ok(Some(false)) => closed += 1,
                Err(e) => wrong.push(e),
            }
            *slot = None;
            left -= 1;
            progressed = true;
        }
        if !progressed {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    (intact, closed, wrong)
}

const PATTERN_LEN: usize = 1 << 20;

/// One MiB of bytes other than `\n`, shared by every hog.
fn pattern() -> &'static [u8] {
    static PATTERN: OnceLock<Vec<u8>> = OnceLock::new();
    PATTERN.get_or_init(|| crate::pattern(PATTERN_LEN, 7))
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
