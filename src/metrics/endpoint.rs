//! The scrape endpoint: a second listening socket (`--metrics ADDR`) whose connections are
//! served by the same event loop as the echo clients, with HTTP/1.0 and 1.1 parsed by
//! `httparse`.
//!
//! A scraper is bounded like any client: at most a few at once, a request size cap, no
//! reading while its answer is unsent, and a time-out for each request to arrive and each
//! answer to leave. None of it touches the echo connections, which live in their own table.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Registry, Token};
use slab::Slab;

use super::exposition::{self, Format};
use super::process::ProcessStats;
use super::Snapshot;

/// Scrapers served at once; one more is accepted and closed.
const MAX_SCRAPERS: usize = 16;
/// Longest request (request line and headers) read before answering 400.
const MAX_REQUEST_BYTES: usize = 8 * 1024;
const MAX_HEADERS: usize = 64;
/// Unsent answers above which no further pipelined request is answered until they drain:
/// a scraper that never reads holds at most this (plus one answer) of the server's memory.
const MAX_OUTPUT_BYTES: usize = 64 * 1024;
/// Tokens of scraper connections start here, far above any echo connection's slab key.
pub(crate) const FIRST_SCRAPER_TOKEN: usize = usize::MAX / 2;

pub(crate) struct MetricsEndpoint {
    listener: TcpListener,
    local_addr: SocketAddr,
    scrapers: Slab<Scraper>,
    /// How long a scraper may take to send a request, or to take its answer.
    timeout: Duration,
}

struct Scraper {
    socket: TcpStream,
    peer: SocketAddr,
    /// What has arrived of the requests not yet answered.
    input: Vec<u8>,
    /// Answers not yet taken by the socket; `output[sent..]` is still to go.
    output: Vec<u8>,
    sent: usize,
    /// Closed once `deadline` passes without a complete request or any output taken.
    deadline: Instant,
    /// The last answer closes the connection: no more requests are read.
    closing: bool,
    /// The answer is out and our side is shut; waiting for the scraper's end of stream.
    write_shut: bool,
    /// The scraper has sent its end of stream: answer what is here, then close.
    read_closed: bool,
}

/// What one request gets.
struct Answer {
    status: &'static str,
    content_type: &'static str,
    body: String,
    /// `HEAD`: the headers of the answer without its body.
    head_only: bool,
    close: bool,
    minor_version: u8,
    allow: bool,
}

impl MetricsEndpoint {
    pub fn bind(
        addr: SocketAddr,
        timeout: Duration,
        registry: &Registry,
        token: Token,
    ) -> io::Result<MetricsEndpoint> {
        let mut listener = TcpListener::bind(addr)?;
        let local_addr = listener.local_addr()?;
        registry.register(&mut listener, token, Interest::READABLE)?;
        Ok(MetricsEndpoint {
            listener,
            local_addr,
            scrapers: Slab::new(),
            timeout,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Whether `token` belongs to one of this endpoint's scrapers.
    pub fn owns(token: Token) -> bool {
        token.0 >= FIRST_SCRAPER_TOKEN
    }

    /// Accepts every waiting scraper, closing those beyond the limit.
    pub fn accept(&mut self, registry: &Registry, now: Instant) {
        loop {
            let (mut socket, peer) = match self.listener.accept() {
                Ok(accepted) => accepted,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // Resource errors pause the echo listener; here a scrape can simply
                    // wait for the scraper's retry.
                    log::debug!("Cannot accept a metrics connection: {e}");
                    return;
                }
            };
            if self.scrapers.len() >= MAX_SCRAPERS {
                log::debug!("{peer}: metrics scraper over the limit of {MAX_SCRAPERS}; closed");
                continue;
            }
            let entry = self.scrapers.vacant_entry();
            let token = Token(FIRST_SCRAPER_TOKEN + entry.key());
            let interest = Interest::READABLE | Interest::WRITABLE;
            if let Err(e) = registry.register(&mut socket, token, interest) {
                log::debug!("{peer}: cannot register the metrics connection: {e}");
                continue;
            }
            entry.insert(Scraper {
                socket,
                peer,
                input: Vec::new(),
                output: Vec::new(),
                sent: 0,
                deadline: now + self.timeout,
                closing: false,
                write_shut: false,
                read_closed: false,
            });
        }
    }

    /// Serves readiness on a scraper: answers complete requests from `snapshot`, sends what
    /// the socket takes, and drops the scraper when it is done or has failed.
    pub fn serve(
        &mut self,
        registry: &Registry,
        token: Token,
        now: Instant,
        snapshot: &mut dyn FnMut() -> Snapshot,
    ) {
        let key = token.0 - FIRST_SCRAPER_TOKEN;
        let Some(scraper) = self.scrapers.get_mut(key) else {
            return;
        };
        match scraper.serve(now, self.timeout, snapshot) {
            Ok(true) => {}
            Ok(false) => self.close(registry, key, None),
            Err(e) => self.close(registry, key, Some(e)),
        }
    }

    /// Closes the scrapers whose time is up.
    pub fn expire(&mut self, registry: &Registry, now: Instant) {
        if self.scrapers.is_empty() {
            return;
        }
        let expired: Vec<usize> = self
            .scrapers
            .iter()
            .filter(|(_, scraper)| scraper.deadline <= now)
            .map(|(key, _)| key)
            .collect();
        for key in expired {
            let timeout = io::Error::new(io::ErrorKind::TimedOut, "no request or progress in time");
            self.close(registry, key, Some(timeout));
        }
    }

    /// When the next scraper times out, if any is connected.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.scrapers.iter().map(|(_, s)| s.deadline).min()
    }

    fn close(&mut self, registry: &Registry, key: usize, error: Option<io::Error>) {
        let mut scraper = self.scrapers.remove(key);
        match error {
            None => log::trace!("{}: metrics connection closed", scraper.peer),
            Some(e) => log::debug!("{}: metrics connection closed: {e}", scraper.peer),
        }
        let _ = registry.deregister(&mut scraper.socket);
    }
}

impl Scraper {
    /// One turn: send what is pending, answer complete requests (while the unsent output
    /// stays under its cap), read more. `Ok(false)` when the connection is over.
    fn serve(
        &mut self,
        now: Instant,
        timeout: Duration,
        snapshot: &mut dyn FnMut() -> Snapshot,
    ) -> io::Result<bool> {
        loop {
            if !self.flush(now, timeout)? {
                return Ok(true); // The socket is full: its writable edge brings us back.
            }
            if self.write_shut {
                return self.discard_until_end();
            }
            if self.closing {
                // The last answer is out: end our side, then wait for the scraper's, so that
                // unread request bytes cannot turn the close into a reset that destroys it.
                self.socket.shutdown(Shutdown::Write)?;
                self.write_shut = true;
                continue;
            }
            if self.answer_requests(now, timeout, snapshot) {
                continue;
            }
            if self.read_closed {
                return Ok(false); // Everything it asked for is answered and sent.
            }
            if !self.read()? {
                return Ok(true); // Nothing new: its next bytes bring a readable edge.
            }
        }
    }

    /// Sends pending output; true once none is left.
    fn flush(&mut self, now: Instant, timeout: Duration) -> io::Result<bool> {
        while self.sent < self.output.len() {
            match self.socket.write(&self.output[self.sent..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.sent += n;
                    self.deadline = now + timeout;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if self.output.capacity() > 0 {
            self.output = Vec::new();
            self.sent = 0;
        }
        Ok(true)
    }

    /// Reads what has arrived, up to the request cap and one read more. True if anything
    /// new came in, the end of stream included.
    fn read(&mut self) -> io::Result<bool> {
        let mut chunk = [0u8; 4096];
        let mut got = false;
        while self.input.len() <= MAX_REQUEST_BYTES {
            match self.socket.read(&mut chunk) {
                Ok(0) => {
                    self.read_closed = true;
                    return Ok(true);
                }
                Ok(n) => {
                    self.input.extend_from_slice(&chunk[..n]);
                    got = true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(got)
    }

    /// After our FIN: read and drop until the scraper closes too.
    fn discard_until_end(&mut self) -> io::Result<bool> {
        let mut chunk = [0u8; 4096];
        loop {
            match self.socket.read(&mut chunk) {
                Ok(0) => return Ok(false),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(true),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Answers complete requests in `input`, in order, until none is left, the unsent
    /// output reaches its cap, or an answer closes the connection. True if it answered any.
    fn answer_requests(
        &mut self,
        now: Instant,
        timeout: Duration,
        snapshot: &mut dyn FnMut() -> Snapshot,
    ) -> bool {
        let mut answered = false;
        while !self.input.is_empty() && !self.closing && self.output.len() < MAX_OUTPUT_BYTES {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut request = httparse::Request::new(&mut headers);
            let (answer, used) = match request.parse(&self.input) {
                Ok(httparse::Status::Complete(used)) => (respond(&request, snapshot), used),
                Ok(httparse::Status::Partial)
                    if self.input.len() <= MAX_REQUEST_BYTES && !self.read_closed =>
                {
                    break;
                }
                Ok(httparse::Status::Partial) if self.read_closed => (
                    Answer::error("400 Bad Request", "incomplete request\n"),
                    self.input.len(),
                ),
                Ok(httparse::Status::Partial) => (
                    Answer::error("400 Bad Request", "request too large\n"),
                    self.input.len(),
                ),
                Err(e) => (
                    Answer::error("400 Bad Request", &format!("malformed request: {e}\n")),
                    self.input.len(),
                ),
            };
            self.input.drain(..used);
            self.closing = answer.close;
            self.deadline = now + timeout;
            answer.write_to(&mut self.output);
            answered = true;
        }
        if self.input.is_empty() && self.input.capacity() > 0 {
            self.input = Vec::new();
        }
        answered
    }
}

fn header<'a>(request: &'a httparse::Request<'_, '_>, name: &str) -> Option<&'a [u8]> {
    request
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .map(|h| h.value)
}

fn has_token(value: Option<&[u8]>, token: &str) -> bool {
    value.is_some_and(|v| {
        v.split(|&b| b == b',')
            .any(|part| part.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    })
}

/// The answer to one complete request.
fn respond(request: &httparse::Request<'_, '_>, snapshot: &mut dyn FnMut() -> Snapshot) -> Answer {
    let minor_version = request.version.unwrap_or(1);
    let connection = header(request, "Connection");
    // HTTP/1.1 keeps the connection unless told otherwise; 1.0 closes unless asked not to.
    let keep_alive = if minor_version >= 1 {
        !has_token(connection, "close")
    } else {
        has_token(connection, "keep-alive")
    };
    let has_body = header(request, "Transfer-Encoding").is_some()
        || header(request, "Content-Length").is_some_and(|v| v.trim_ascii() != b"0");
    let method = request.method.unwrap_or("");
    let path = request.path.unwrap_or("");
    let path = path.split('?').next().unwrap_or(path);
    let mut answer = if method != "GET" && method != "HEAD" {
        let mut answer = Answer::error("405 Method Not Allowed", "only GET and HEAD\n");
        answer.allow = true;
        answer
    } else if has_body {
        Answer::error("400 Bad Request", "a GET has no body\n")
    } else if path != "/metrics" {
        Answer {
            close: !keep_alive,
            ..Answer::error("404 Not Found", "the metrics are at /metrics\n")
        }
    } else {
        let format = Format::negotiate(header(request, "Accept"));
        Answer {
            status: "200 OK",
            content_type: format.content_type(),
            body: exposition::render(&snapshot(), &ProcessStats::read(), format),
            head_only: method == "HEAD",
            close: !keep_alive,
            minor_version: 1,
            allow: false,
        }
    };
    answer.head_only = method == "HEAD";
    answer.minor_version = minor_version;
    answer
}

impl Answer {
    /// An error answer; errors close the connection unless said otherwise.
    fn error(status: &'static str, body: &str) -> Answer {
        Answer {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.to_owned(),
            head_only: false,
            close: true,
            minor_version: 1,
            allow: false,
        }
    }

    fn write_to(&self, out: &mut Vec<u8>) {
        use std::io::Write as _;
        let _ = write!(
            out,
            "HTTP/1.{} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n",
            self.minor_version,
            self.status,
            self.content_type,
            self.body.len()
        );
        if self.allow {
            out.extend_from_slice(b"Allow: GET, HEAD\r\n");
        }
        if self.close {
            out.extend_from_slice(b"Connection: close\r\n");
        } else if self.minor_version == 0 {
            out.extend_from_slice(b"Connection: keep-alive\r\n");
        }
        out.extend_from_slice(b"\r\n");
        if !self.head_only {
            out.extend_from_slice(self.body.as_bytes());
        }
    }
}
