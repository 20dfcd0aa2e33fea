//! The tokio echo servers kv_server is measured against, in the same run.
//!
//! - `raw`: read whatever arrived, write it back (no framing), the floor a line server aims
//!   for; tokio's own echo example does this.
//! - `line`: the line-at-a-time shape of the Elixir original (`read_line |> write_line`),
//!   `read_until(b'\n')` then `write_all`, one write per line.
//!
//! - `udp`: a tokio `UdpSocket` echo, `recv_from` then `send_to`: what a Rust user would
//!   write for datagrams.
//!
//! All run on a current-thread runtime: one core, like kv_server's single reactor.

use std::net::SocketAddr;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Baseline {
    Raw,
    Line,
    Udp,
}

impl Baseline {
    pub fn name(self) -> &'static str {
        match self {
            Baseline::Raw => "tokio_raw",
            Baseline::Line => "tokio_line",
            Baseline::Udp => "tokio_udp",
        }
    }
}

/// Binds `addr` and serves forever on a current-thread runtime; reports the bound address
/// through `bound` once listening.
pub fn serve(baseline: Baseline, addr: SocketAddr, bound: impl FnOnce(SocketAddr)) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async move {
        if baseline == Baseline::Udp {
            let socket = tokio::net::UdpSocket::bind(addr).await.expect("bind");
            bound(socket.local_addr().expect("local address"));
            let _ = udp_echo(socket).await;
            return;
        }
        let listener = TcpListener::bind(addr).await.expect("bind");
        bound(listener.local_addr().expect("local address"));
        loop {
            let Ok((socket, _)) = listener.accept().await else {
                continue;
            };
            let _ = socket.set_nodelay(true);
            tokio::spawn(async move {
                let _ = match baseline {
                    Baseline::Raw => raw_echo(socket).await,
                    Baseline::Line | Baseline::Udp => line_echo(socket).await,
                };
            });
        }
    });
}

async fn udp_echo(socket: tokio::net::UdpSocket) -> std::io::Result<()> {
    let mut buffer = vec![0u8; 65_536];
    loop {
        let (n, peer) = socket.recv_from(&mut buffer).await?;
        socket.send_to(&buffer[..n], peer).await?;
    }
}

async fn raw_echo(mut socket: TcpStream) -> std::io::Result<()> {
    // 8 KiB, the same as the BufReader of the line baseline (tokio's default capacity).
    let mut buffer = vec![0u8; 8 * 1024];
    loop {
        let n = socket.read(&mut buffer).await?;
        if n == 0 {
            return Ok(());
        }
        socket.write_all(&buffer[..n]).await?;
    }
}

async fn line_echo(socket: TcpStream) -> std::io::Result<()> {
    let (reader, mut writer) = socket.into_split();
    let mut reader = BufReader::new(reader);
    let mut line = Vec::new();
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line).await? == 0 {
            return Ok(());
        }
        writer.write_all(&line).await?;
    }
}
