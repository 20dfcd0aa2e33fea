//! One load-generating connection: the lines it sends, the output the socket has not taken
//! yet, and the byte-by-byte check of what comes back; over TLS (rustls) with `--tls-ca`.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::sync::Arc;
use std::time::Instant;

use rustls::{ClientConfig, ClientConnection};

use kv_server::stream::Stream;

use crate::histogram::Histogram;

pub struct Client {
    pub stream: Stream,
    /// With `--tls-ca`: the session over the stream.
    tls: Option<ClientConnection>,
    template: Vec<u8>,
    pub connected: bool,
    pub closed: bool,
    /// Lines written so far (queued counts as written).
    pub sent: u64,
    /// Lines echoed back and verified.
    pub received: u64,
    /// Bytes of the line being received that have been checked.
    line_pos: usize,
    /// The line being received already differs from what was sent.
    line_differs: bool,
    /// The line expected next, regenerated as each one completes.
    expected: Vec<u8>,
    output: Vec<u8>,
    output_sent: usize,
    send_times: VecDeque<Instant>,
    /// With `--request`: every line is the same request, answered with the same reply.
    exchange: bool,
    /// With `--websocket`, until the server's answer to the upgrade has come: what has of
    /// its head.
    upgrade_head: Option<Vec<u8>>,
}

/// With `--request` and `--reply`: what every request is and what answers it, instead of
/// a line and its echo.
pub struct Exchange {
    pub request: Vec<u8>,
    pub reply: Vec<u8>,
    /// With `--websocket`: the upgrade request sent first, whose answer (a 101) is read
    /// before any reply.
    pub upgrade: Option<Vec<u8>>,
}

/// What one readiness event brought back.
pub struct Received {
    pub lines: u64,
    pub mismatched: u64,
    pub eof: bool,
}

impl Client {
    /// Client number `id`, whose lines are `line_len` bytes with up to `depth` in flight.
    pub fn new(
        stream: Stream,
        tls: Option<&Arc<ClientConfig>>,
        id: u64,
        line_len: usize,
        depth: usize,
        exchange: Option<&Exchange>,
    ) -> Client {
        let tls = tls.map(|config| {
            let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
            let mut session = ClientConnection::new(Arc::clone(config), name).unwrap();
            // Lines are sealed as they are queued; what the socket does not take waits in
            // the session.
            session.set_buffer_limit(None);
            session
        });
        let (template, expected) = match exchange {
            Some(exchange) => (exchange.request.clone(), exchange.reply.clone()),
            None => {
                let template = line_template(id, line_len);
                let mut expected = Vec::with_capacity(line_len);
                make_line(&template, 0, &mut expected);
                (template, expected)
            }
        };
        let upgrade = exchange.and_then(|exchange| exchange.upgrade.clone());
        Client {
            upgrade_head: upgrade.is_some().then(Vec::new),
            output: upgrade.unwrap_or_default(),
            stream,
            tls,
            template,
            connected: false,
            closed: false,
            sent: 0,
            received: 0,
            line_pos: 0,
            line_differs: false,
            expected,
            output_sent: 0,
            send_times: VecDeque::with_capacity(depth),
            exchange: exchange.is_some(),
        }
    }

    /// Queues `lines` more lines, noting when each was sent.
    pub fn send_lines(&mut self, lines: u64, scratch: &mut Vec<u8>) {
        let now = Instant::now();
        for _ in 0..lines {
            if self.exchange {
                self.output.extend_from_slice(&self.template);
            } else {
                make_line(&self.template, self.sent, scratch);
                self.output.extend_from_slice(scratch);
            }
            self.sent += 1;
            self.send_times.push_back(now);
        }
    }

    /// With TLS, the handshake is still under way; with `--websocket`, the upgrade.
    pub fn handshaking(&self) -> bool {
        self.tls.as_ref().is_some_and(|tls| tls.is_handshaking()) || self.upgrade_head.is_some()
    }

    /// With TLS or `--websocket`, moves the opening on: sends what is queued (the upgrade
    /// request, the session's flight), reads what came.
    pub fn handshake(&mut self) -> io::Result<()> {
        self.flush()?;
        let mut histogram = Histogram::new();
        let mut buffer = [0u8; 4096];
        let received = self.receive(&mut buffer, &mut histogram, Instant::now())?;
        if received.mismatched > 0 {
            return Err(io::Error::other("the upgrade was refused"));
        }
        self.flush()
    }

    /// Writes queued lines until the socket would block.
    pub fn flush(&mut self) -> io::Result<()> {
        if let Some(tls) = self.tls.as_mut() {
            tls.writer().write_all(&self.output)?;
            self.output.clear();
            while tls.wants_write() {
                match tls.write_tls(&mut self.stream) {
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            return Ok(());
        }
        while self.output_sent < self.output.len() {
            match self.stream.write(&self.output[self.output_sent..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.output_sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.output.clear();
        self.output_sent = 0;
        Ok(())
    }

    /// Reads until the socket would block, checking every byte against the lines sent and
    /// recording each completed line's latency.
    pub fn receive(
        &mut self,
        buffer: &mut [u8],
        histogram: &mut Histogram,
        now: Instant,
    ) -> io::Result<Received> {
        let mut result = Received {
            lines: 0,
            mismatched: 0,
            eof: false,
        };
        if self.tls.is_some() {
            self.receive_tls(buffer, histogram, now, &mut result)?;
            // Whatever reading made the session answer (the handshake's last flight).
            self.flush()?;
            return Ok(result);
        }
        loop {
            let n = match self.stream.read(buffer) {
                Ok(0) => {
                    result.eof = true;
                    return Ok(result);
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(result),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            self.check(&buffer[..n], histogram, now, &mut result);
        }
    }

    fn receive_tls(
        &mut self,
        buffer: &mut [u8],
        histogram: &mut Histogram,
        now: Instant,
        result: &mut Received,
    ) -> io::Result<()> {
        let Some(mut tls) = self.tls.take() else {
            return Ok(());
        };
        let outcome = loop {
            match tls.read_tls(&mut self.stream) {
                Ok(0) => {
                    result.eof = true;
                    break Ok(());
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => break Err(e),
            }
            if let Err(e) = tls.process_new_packets() {
                break Err(io::Error::other(e));
            }
            loop {
                match tls.reader().read(buffer) {
                    Ok(0) if !buffer.is_empty() => {
                        result.eof = true;
                        break;
                    }
                    Ok(0) => break,
                    Ok(n) => self.check(&buffer[..n], histogram, now, result),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => {
                        self.tls = Some(tls);
                        return Err(e);
                    }
                }
            }
        };
        self.tls = Some(tls);
        outcome
    }

    /// Checks echoed bytes against the lines sent, recording each completed line's latency.
    fn check(
        &mut self,
        data: &[u8],
        histogram: &mut Histogram,
        now: Instant,
        result: &mut Received,
    ) {
        let mut data = data;
        if let Some(head) = self.upgrade_head.as_mut() {
            while !head.ends_with(b"\r\n\r\n") {
                let Some((&byte, rest)) = data.split_first() else {
                    return;
                };
                head.push(byte);
                data = rest;
            }
            if !head.starts_with(b"HTTP/1.1 101 ") {
                result.mismatched += 1;
            }
            self.upgrade_head = None;
        }
        let line_len = self.expected.len();
        while !data.is_empty() {
            let take = (line_len - self.line_pos).min(data.len());
            let (chunk, rest) = data.split_at(take);
            self.line_differs |= chunk != &self.expected[self.line_pos..self.line_pos + take];
            self.line_pos += take;
            data = rest;
            if self.line_pos == line_len {
                if std::mem::take(&mut self.line_differs) {
                    result.mismatched += 1;
                }
                self.line_pos = 0;
                self.received += 1;
                result.lines += 1;
                if let Some(sent_at) = self.send_times.pop_front() {
                    histogram.record(now.saturating_duration_since(sent_at));
                }
                if !self.exchange {
                    make_line(&self.template, self.received, &mut self.expected);
                }
            }
        }
    }
}

/// The bytes every line of connection `id` carries: a per-connection pattern of bytes other
/// than `\n`, ending in the newline. Made once per connection; lines differ by the sequence
/// number stamped at the front.
fn line_template(id: u64, len: usize) -> Vec<u8> {
    let mut line = kv_testkit::pattern(len - 1, id);
    line.push(b'\n');
    line
}

/// Writes line `seq` of a connection, from its template, into `into`.
fn make_line(template: &[u8], seq: u64, into: &mut Vec<u8>) {
    into.clear();
    into.extend_from_slice(template);
    stamp(seq, &mut into[..template.len() - 1]);
}

/// Writes `seq` in hex, then a colon, over the front of `line` (as much as fits).
fn stamp(mut seq: u64, line: &mut [u8]) {
    let mut digits = [0u8; 17];
    let mut start = 16;
    digits[16] = b':';
    loop {
        start -= 1;
        digits[start] = b"0123456789abcdef"[(seq & 15) as usize];
        seq >>= 4;
        if seq == 0 {
            break;
        }
    }
    let digits = &digits[start..];
    let n = digits.len().min(line.len());
    line[..n].copy_from_slice(&digits[..n]);
}
