//! Clients that keep opening short connections and sending lines while servers restart
//! under them, and the tally of what became of every line.
//!
//! A line is either echoed, or was sent on a connection that the server had already ended
//! cleanly (end of stream before any of its echo: a drain half-closes only after answering
//! everything it received), or is lost: reset, cut short, or never answered.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::TIMEOUT;

/// What became of the connections and lines of a run.
#[derive(Debug, Default, Clone, Copy)]
pub struct Tally {
    pub connections: u64,
    /// Connection attempts refused (nothing listening).
    pub refused: u64,
    /// Connections reset by the server, at any point (during the handshake included).
    pub resets: u64,
    pub echoed: u64,
    /// Lines sent after the server had ended the connection cleanly; the client reconnects
    /// and would resend them.
    pub ended_before_sent: u64,
    /// Lines that got neither their echo nor a clean end of stream (includes reset ones).
    pub lost: u64,
}

impl Tally {
    fn add(&mut self, other: Tally) {
        self.connections += other.connections;
        self.refused += other.refused;
        self.resets += other.resets;
        self.echoed += other.echoed;
        self.ended_before_sent += other.ended_before_sent;
        self.lost += other.lost;
    }
}

pub struct Churn {
    stop: Arc<AtomicBool>,
    progress: Arc<(Mutex<u64>, Condvar)>,
    clients: Vec<JoinHandle<Tally>>,
}

impl Churn {
    /// `clients` threads, each opening connections to `addr` one after another and sending
    /// `lines` lines on each, waiting for every echo, until [`Churn::stop`].
    pub fn start(addr: SocketAddr, clients: usize, lines: usize) -> Churn {
        let stop = Arc::new(AtomicBool::new(false));
        let progress = Arc::new((Mutex::new(0u64), Condvar::new()));
        let clients = (0..clients)
            .map(|client| {
                let stop = Arc::clone(&stop);
                let progress = Arc::clone(&progress);
                thread::spawn(move || run_client(addr, client, lines, &stop, &progress))
            })
            .collect();
        Churn {
            stop,
            progress,
            clients,
        }
    }

    /// Waits until `lines` more lines have been echoed, across all clients.
    pub fn wait_for_echoes(&self, lines: u64) {
        let (count, changed) = &*self.progress;
        let start = *count.lock().unwrap();
        let deadline = Instant::now() + TIMEOUT;
        let mut now = count.lock().unwrap();
        while *now < start + lines {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "clients made no progress for {TIMEOUT:?}");
            now = changed.wait_timeout(now, left).unwrap().0;
        }
    }

    pub fn stop(self) -> Tally {
        self.stop.store(true, Ordering::SeqCst);
        let mut total = Tally::default();
        for client in self.clients {
            total.add(client.join().expect("client thread panicked"));
        }
        total
    }
}

fn run_client(
    addr: SocketAddr,
    client: usize,
    lines: usize,
    stop: &AtomicBool,
    progress: &(Mutex<u64>, Condvar),
) -> Tally {
    let mut tally = Tally::default();
    let mut connection = 0u64;
    while !stop.load(Ordering::SeqCst) {
        let mut stream = match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
            Ok(stream) => stream,
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
                tally.refused += 1;
                thread::sleep(Duration::from_millis(1)); // no hot loop while nothing listens
                continue;
            }
            Err(e) if e.kind() == ErrorKind::ConnectionReset => {
                // The handshake completed on a listener that closed before accepting it.
                tally.resets += 1;
                continue;
            }
            Err(e) => panic!("connect: {e}"),
        };
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        stream.set_nodelay(true).unwrap();
        tally.connections += 1;
        connection += 1;
        for index in 0..lines {
            let line = format!("client {client} connection {connection} line {index}\n");
            match exchange(&mut stream, line.as_bytes()) {
                Exchange::Echoed => {
                    tally.echoed += 1;
                    let (count, changed) = progress;
                    *count.lock().unwrap() += 1;
                    changed.notify_all();
                }
                Exchange::EndedBefore => {
                    tally.ended_before_sent += 1;
                    break;
                }
                Exchange::Reset => {
                    tally.resets += 1;
                    tally.lost += 1;
                    break;
                }
                Exchange::Lost(why) => {
                    eprintln!("client {client}: line lost: {why}");
                    tally.lost += 1;
                    break;
                }
            }
        }
    }
    tally
}

enum Exchange {
    Echoed,
    EndedBefore,
    Reset,
    Lost(String),
}

fn exchange(stream: &mut TcpStream, line: &[u8]) -> Exchange {
    let is_reset = |e: &std::io::Error| {
        matches!(
            e.kind(),
            ErrorKind::ConnectionReset | ErrorKind::BrokenPipe | ErrorKind::ConnectionAborted
        )
    };
    if let Err(e) = stream.write_all(line) {
        return if is_reset(&e) {
            Exchange::Reset
        } else {
            Exchange::Lost(format!("write: {e}"))
        };
    }
    let mut back = vec![0u8; line.len()];
    let mut got = 0;
    while got < back.len() {
        match stream.read(&mut back[got..]) {
            Ok(0) if got == 0 => return Exchange::EndedBefore,
            Ok(0) => return Exchange::Lost(format!("end of stream after {got} bytes of echo")),
            Ok(n) => got += n,
            Err(e) if is_reset(&e) => return Exchange::Reset,
            Err(e) => return Exchange::Lost(format!("read: {e}")),
        }
    }
    if back == line {
        Exchange::Echoed
    } else {
        Exchange::Lost("echo differs from the line".to_owned())
    }
}
