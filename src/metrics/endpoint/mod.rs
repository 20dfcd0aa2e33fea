//! The scrape endpoint: a second listening socket (`--metrics ADDR`) whose connections are
//! served by the same event loop as the echo clients, with HTTP/1.0 and 1.1 parsed by
//! `httparse`.
//!
//! A scraper is bounded like any client: at most a few at once, a request size cap however
//! the bytes arrive, no reading while its answer is unsent, a time-out for each request to
//! arrive and each answer to leave, and a share of each turn of the loop: a scraper that
//! pipelines requests gets a few answers, then waits for its next turn like everyone else.
//! None of it touches the echo connections, which live in their own table.

mod requests;

use std::collections::VecDeque;

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Registry, Token};
use slab::Slab;

use super::exposition::{self, Format};
use super::process::ProcessStats;
use super::Snapshot;

pub(crate) use requests::Requests;

/// Scrapers served at once. One more takes the place of the one that has been connected
/// longest without sending a byte, if any has; otherwise it is accepted and closed. So
/// idle connections held on the port cannot keep every scrape out.
const MAX_SCRAPERS: usize = 16;
/// Answers per turn of the loop, all scrapers together; a pipelining scraper then waits for
/// its next turn, so that scrapes never delay the echo for long. Each answer is rendered
/// from a fresh snapshot and the process's figures from /proc: about 3 KiB of text and
/// some 50 us here.
const ANSWERS_PER_TURN: usize = 4;
/// How long the process's figures read from /proc serve answers before they are read again.
/// One read takes tens of microseconds, but now and then several milliseconds (seen up to
/// 9 ms here): once a second at most keeps that out of nearly every turn.
const PROCESS_STATS_MAX_AGE: Duration = Duration::from_secs(1);
/// Reads of what follows a scraper's last request (after the server closed its side) per
/// turn: a scraper that keeps sending after that must not keep the loop to itself.
const DISCARDS_PER_TURN: usize = 4;
/// Tokens of scraper connections start here, far above any echo connection's slab key.
pub(crate) const FIRST_SCRAPER_TOKEN: usize = usize::MAX / 2;

pub(crate) struct MetricsEndpoint {
    listener: TcpListener,
    local_addr: SocketAddr,
    scrapers: Slab<Scraper>,
    /// Scrapers whose share of a turn ran out with work left, which no edge will announce.
    owed: VecDeque<usize>,
    /// Answers this turn may still give.
    answers_left: usize,
    /// The process's figures, and when they were read.
    process: Option<(Instant, ProcessStats)>,
    /// How long a scraper may take to send a request, or to take its answer.
    timeout: Duration,
}

struct Scraper {
    socket: TcpStream,
    peer: SocketAddr,
    /// When it connected, while it has sent nothing: it gives way to a new scraper when
    /// every place is taken.
    silent_since: Option<Instant>,
    /// What has arrived of the requests not yet answered.
    requests: Requests,
    /// Answers not yet taken by the socket; `output[sent..]` is still to go.
    output: Vec<u8>,
    sent: usize,
    /// Closed once `deadline` passes without a complete request or any output taken.
    deadline: Instant,
    /// The last answer closes the connection: no more requests are read.
    closing: bool,
    /// The answer is out and our side is shut; waiting for the scraper's end of stream.
    write_shut: bool,
    /// Waits in the endpoint's queue of scrapers owed a turn.
    owed: bool,
}

/// What an answer is rendered from, taken when its request is complete: the server's
/// snapshot and the process's figures.
pub(crate) type Figures<'a> = dyn FnMut() -> (Snapshot, ProcessStats) + 'a;

/// Where a scraper's turn left it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Progress {
    /// Its next bytes, or room in its socket, bring an edge.
    Waiting,
    /// Its share of the turn ran out with work left.
    ShareSpent,
    /// Everything it asked for is answered and sent: the connection is over.
    Done,
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
            owed: VecDeque::new(),
            answers_left: ANSWERS_PER_TURN,
            process: None,
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
            if self.scrapers.len() >= MAX_SCRAPERS && !self.make_room(registry) {
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
                silent_since: Some(now),
                requests: Requests::default(),
                output: Vec::new(),
                sent: 0,
                deadline: now + self.timeout,
                closing: false,
                write_shut: false,
                owed: false,
            });
        }
    }

    /// Closes the scraper connected longest without sending anything, if one has not:
    /// true if it made room.
    fn make_room(&mut self, registry: &Registry) -> bool {
        let silent = self
            .scrapers
            .iter()
            .filter_map(|(key, scraper)| Some((scraper.silent_since?, key)))
            .min();
        let Some((_, key)) = silent else {
            return false;
        };
        let reason = "it had sent nothing, and a new scraper needed its place";
        self.close(registry, key, Some(io::Error::other(reason)));
        true
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
        if scraper.owed {
            return; // Its turn in the queue covers this event too.
        }
        self.serve_one(registry, key, now, snapshot);
    }

    /// Serves, once each, the scrapers whose share of an earlier turn ran out.
    pub fn serve_owed(
        &mut self,
        registry: &Registry,
        now: Instant,
        snapshot: &mut dyn FnMut() -> Snapshot,
    ) {
        for _ in 0..self.owed.len() {
            let Some(key) = self.owed.pop_front() else {
                return;
            };
            match self.scrapers.get_mut(key) {
                Some(scraper) if scraper.owed => scraper.owed = false,
                _ => continue, // Closed since.
            }
            self.serve_one(registry, key, now, snapshot);
        }
    }

    /// Starts a turn of the loop: its share of answers is whole again.
    pub fn begin_turn(&mut self) {
        self.answers_left = ANSWERS_PER_TURN;
    }

    /// Work is owed that no event will announce.
    pub fn has_work(&self) -> bool {
        !self.owed.is_empty()
    }

    fn serve_one(
        &mut self,
        registry: &Registry,
        key: usize,
        now: Instant,
        snapshot: &mut dyn FnMut() -> Snapshot,
    ) {
        let scraper = &mut self.scrapers[key];
        let process = &mut self.process;
        let mut figures = || {
            let fresh = process.filter(|&(read, _)| now < read + PROCESS_STATS_MAX_AGE);
            let (_, stats) = fresh.unwrap_or_else(|| (now, ProcessStats::read()));
            *process = Some((now, stats));
            (snapshot(), stats)
        };
        match scraper.serve(now, self.timeout, &mut self.answers_left, &mut figures) {
            Ok(Progress::Waiting) => {}
            Ok(Progress::ShareSpent) => {
                scraper.owed = true;
                self.owed.push_back(key);
            }
            Ok(Progress::Done) => self.close(registry, key, None),
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
    /// One turn: send what is pending, answer complete requests one at a time (each sent
    /// before the next is answered, so unsent output is at most one answer), read more,
    /// while the turn's share of answers lasts.
    fn serve(
        &mut self,
        now: Instant,
        timeout: Duration,
        answers_left: &mut usize,
        figures: &mut Figures<'_>,
    ) -> io::Result<Progress> {
        loop {
            if !self.flush(now, timeout)? {
                return Ok(Progress::Waiting); // The socket is full: its writable edge.
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
            if *answers_left == 0 {
                return Ok(Progress::ShareSpent);
            }
            if self.answer_one(now, timeout, figures) {
                *answers_left -= 1;
                continue;
            }
            if self.requests.read_closed {
                return Ok(Progress::Done); // Everything it asked for is answered and sent.
            }
            if !self.read()? {
                return Ok(Progress::Waiting); // Nothing new: its next bytes bring an edge.
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

    /// Reads once, at most as much as takes the unanswered input one byte past the request
    /// cap (which is then answered 400, whatever the split). True if anything new came in,
    /// the end of stream included.
    fn read(&mut self) -> io::Result<bool> {
        let mut chunk = [0u8; 4096];
        let want = self.requests.room().clamp(1, chunk.len());
        loop {
            return match self.socket.read(&mut chunk[..want]) {
                Ok(0) => {
                    self.requests.read_closed = true;
                    Ok(true)
                }
                Ok(n) => {
                    self.requests.input.extend_from_slice(&chunk[..n]);
                    self.silent_since = None;
                    Ok(true)
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => Err(e),
            };
        }
    }

    /// After our FIN: read and drop until the scraper closes too, a few reads a turn.
    fn discard_until_end(&mut self) -> io::Result<Progress> {
        let mut chunk = [0u8; 4096];
        for _ in 0..DISCARDS_PER_TURN {
            match self.socket.read(&mut chunk) {
                Ok(0) => return Ok(Progress::Done),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Progress::Waiting),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(Progress::ShareSpent)
    }

    /// Answers the first request that has arrived, if it is complete (or can never be).
    /// True if it answered.
    fn answer_one(&mut self, now: Instant, timeout: Duration, figures: &mut Figures<'_>) -> bool {
        let Some(answer) = self.requests.next_answer(figures) else {
            return false;
        };
        self.closing = answer.close;
        self.deadline = now + timeout;
        answer.write_to(&mut self.output);
        true
    }
}
