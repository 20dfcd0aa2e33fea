//! `kv_udp_load`: drives a UDP echo server and checks every datagram it echoes.
//!
//! Each sender is a thread with its own socket, from its own loopback address, keeping
//! `--depth` datagrams in flight, sent and received in batches (`sendmmsg`, `recvmmsg`) so
//! that it costs less per datagram than the server it measures: every echo that comes back is checked (its sequence
//! number is one still in flight, its filler intact) and replaced by a new datagram. A
//! datagram not back within 100 ms counts as lost and the window is refilled. Reports
//! echoes per second and, given the server's pid, the server's CPU time per echo.
//! An example, not an installed binary: `cargo build --release --example kv_udp_load`.

use std::collections::VecDeque;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use kv_testkit::proc;

/// Drives a UDP echo server and checks every datagram it echoes
#[derive(Debug, Parser)]
#[command(name = "kv_udp_load", version)]
struct Args {
    /// Server address
    #[arg(long, default_value = "127.0.0.1:4040")]
    addr: SocketAddr,
    /// Sending threads, each with its own socket and source address
    #[arg(short = 's', long, default_value_t = 4)]
    senders: usize,
    /// Datagrams in flight per sender
    #[arg(short = 'd', long, default_value_t = 32)]
    depth: usize,
    /// Bytes per datagram (at least 8: a sequence number, then filler)
    #[arg(short = 'b', long, default_value_t = 64)]
    bytes: usize,
    /// Seconds to run
    #[arg(short = 't', long, default_value_t = 5.0)]
    seconds: f64,
    /// The server's pid: report its CPU time per echo
    #[arg(long)]
    server_pid: Option<u32>,
}

#[derive(Debug, Default)]
struct Tally {
    echoed: AtomicU64,
    lost: AtomicU64,
    wrong: AtomicU64,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.bytes < 8 || args.bytes > 65_507 {
        eprintln!("kv_udp_load: --bytes must be 8 to 65507");
        return ExitCode::FAILURE;
    }
    match run(&args) {
        Ok(0) => ExitCode::SUCCESS,
        Ok(wrong) => {
            eprintln!("kv_udp_load: {wrong} datagrams came back wrong");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("kv_udp_load: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> io::Result<u64> {
    let tally = Tally::default();
    let done = AtomicBool::new(false);
    let cpu_before = args.server_pid.map(proc::cpu_ns).transpose()?;
    let started = Instant::now();
    std::thread::scope(|scope| -> io::Result<()> {
        let mut senders = Vec::new();
        for n in 0..args.senders {
            let (tally, done) = (&tally, &done);
            senders.push(scope.spawn(move || sender(args, n, tally, done)));
        }
        std::thread::sleep(Duration::from_secs_f64(args.seconds));
        done.store(true, Ordering::SeqCst);
        for sender in senders {
            sender.join().expect("a sender")?;
        }
        Ok(())
    })?;
    let elapsed = started.elapsed().as_secs_f64();
    let echoed = tally.echoed.load(Ordering::SeqCst);
    let lost = tally.lost.load(Ordering::SeqCst);
    let wrong = tally.wrong.load(Ordering::SeqCst);
    println!(
        "datagrams {echoed} | datagrams/s {:.0} | MB/s {:.1} (echoed payload, each way) | lost {lost} | wrong {wrong}",
        echoed as f64 / elapsed,
        (echoed * args.bytes as u64) as f64 / elapsed / 1e6
    );
    if let (Some(pid), Some(before)) = (args.server_pid, cpu_before) {
        let cpu = proc::cpu_ns(pid)? - before;
        println!(
            "server CPU {:.2} us/datagram",
            cpu as f64 / 1000.0 / echoed.max(1) as f64
        );
    }
    Ok(wrong)
}

/// The datagram with sequence number `seq`: the number, then filler derived from it.
fn datagram(seq: u64, bytes: usize, into: &mut Vec<u8>) {
    into.clear();
    into.extend_from_slice(&seq.to_be_bytes());
    into.extend((8..bytes).map(|i| (seq as usize).wrapping_mul(31).wrapping_add(i) as u8));
}

fn sender(args: &Args, n: usize, tally: &Tally, done: &AtomicBool) -> io::Result<()> {
    let source = IpAddr::V4(Ipv4Addr::new(127, 0, 4, 1 + n as u8));
    let socket = UdpSocket::bind(SocketAddr::new(source, 0))?;
    socket.connect(args.addr)?;
    socket.set_read_timeout(Some(Duration::from_millis(100)))?;
    let fd = socket.as_raw_fd();
    let mut in_flight = VecDeque::with_capacity(args.depth);
    let mut next_seq = 0u64;
    let mut outgoing: Vec<Vec<u8>> = (0..BATCH).map(|_| Vec::with_capacity(args.bytes)).collect();
    let mut incoming: Vec<Vec<u8>> = vec![vec![0u8; args.bytes + 1]; BATCH];
    let mut expected = Vec::with_capacity(args.bytes);
    while !done.load(Ordering::Relaxed) {
        // Refill the window, a batch per system call.
        while in_flight.len() < args.depth {
            let count = (args.depth - in_flight.len()).min(BATCH);
            for datagram_out in outgoing.iter_mut().take(count) {
                datagram(next_seq, args.bytes, datagram_out);
                in_flight.push_back(next_seq);
                next_seq += 1;
            }
            send_many(fd, &outgoing[..count])?;
        }
        match receive_many(fd, &mut incoming) {
            Ok(lengths) => {
                for (back, &len) in incoming.iter().zip(&lengths) {
                    let seq = u64::from_be_bytes(back[..8].try_into().unwrap_or([0; 8]));
                    datagram(seq, args.bytes, &mut expected);
                    // Echoes come back in order on loopback; one that skips ahead means
                    // the ones before it were lost.
                    match in_flight.iter().position(|&s| s == seq) {
                        Some(at) if len == args.bytes && back[..len] == expected[..] => {
                            tally.lost.fetch_add(at as u64, Ordering::Relaxed);
                            in_flight.drain(..=at);
                            tally.echoed.fetch_add(1, Ordering::Relaxed);
                        }
                        _ => {
                            tally.wrong.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                tally
                    .lost
                    .fetch_add(in_flight.len() as u64, Ordering::Relaxed);
                in_flight.clear();
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Datagrams per system call, both ways: the load generator must cost less per datagram
/// than the server, or it measures itself.
const BATCH: usize = 64;

/// One message header for each of `iovecs`, with no address (the socket is connected).
/// The headers point into `iovecs`, which must outlive their use.
fn message_headers(iovecs: &mut [libc::iovec]) -> Vec<libc::mmsghdr> {
    iovecs
        .iter_mut()
        .map(|iovec| {
            // SAFETY: mmsghdr is plain data, valid all zero.
            let mut header: libc::mmsghdr = unsafe { std::mem::zeroed() };
            header.msg_hdr.msg_iov = iovec;
            header.msg_hdr.msg_iovlen = 1;
            header
        })
        .collect()
}

/// Sends every datagram with `sendmmsg` on the connected socket `fd`.
fn send_many(fd: RawFd, datagrams: &[Vec<u8>]) -> io::Result<()> {
    let mut iovecs: Vec<libc::iovec> = datagrams
        .iter()
        .map(|d| libc::iovec {
            iov_base: d.as_ptr() as *mut libc::c_void,
            iov_len: d.len(),
        })
        .collect();
    // The kernel only reads through these pointers, into `datagrams`.
    let mut headers = message_headers(&mut iovecs);
    let mut start = 0;
    while start < headers.len() {
        // SAFETY: headers[start..] are set up above.
        let sent = unsafe {
            libc::sendmmsg(
                fd,
                headers[start..].as_mut_ptr(),
                (headers.len() - start) as libc::c_uint,
                0,
            )
        };
        if sent < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        start += sent as usize;
    }
    Ok(())
}

/// Waits for at least one datagram, then takes as many as are there (up to the buffers'
/// count) with one `recvmmsg`: their lengths.
fn receive_many(fd: RawFd, buffers: &mut [Vec<u8>]) -> io::Result<Vec<usize>> {
    let mut iovecs: Vec<libc::iovec> = buffers
        .iter_mut()
        .map(|b| libc::iovec {
            iov_base: b.as_mut_ptr().cast(),
            iov_len: b.len(),
        })
        .collect();
    let mut headers = message_headers(&mut iovecs);
    // SAFETY: the headers describe the buffers, which outlive the call.
    let received = unsafe {
        libc::recvmmsg(
            fd,
            headers.as_mut_ptr(),
            headers.len() as libc::c_uint,
            libc::MSG_WAITFORONE,
            std::ptr::null_mut(),
        )
    };
    if received < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(headers[..received as usize]
        .iter()
        .map(|h| h.msg_len as usize)
        .collect())
}
