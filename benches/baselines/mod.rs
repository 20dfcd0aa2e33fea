//! The tokio echo servers kv_server is measured against, in the same run.
//!
//! - `raw`: read whatever arrived, write it back (no framing), the floor a line server aims
//!   for; tokio's own echo example does this.
//! - `line`: the line-at-a-time shape of the Elixir original (`read_line |> write_line`),
//!   `read_until(b'\n')` then `write_all`, one write per line.
//!
//! - `udp`: a tokio `UdpSocket` echo, `recv_from` then `send_to`: what a Rust user would
//!   write for datagrams.
//! - `tls`: the raw echo over tokio-rustls, with the same crypto provider (aws-lc-rs) and
//!   protocol versions as kv_server: what a Rust user would write for a TLS echo.
//! - `websocket`: tokio-tungstenite's `echo-server` example: `accept_async`, then every
//!   text and binary message forwarded back, with tungstenite's default configuration.
//!
//! All run on a current-thread runtime: one core, like kv_server's single reactor.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Baseline {
    Raw,
    Line,
    Udp,
    Tls,
    WebSocket,
}

impl Baseline {
    pub fn name(self) -> &'static str {
        match self {
            Baseline::Raw => "tokio_raw",
            Baseline::Line => "tokio_line",
            Baseline::Udp => "tokio_udp",
            Baseline::Tls => "tokio_rustls",
            Baseline::WebSocket => "tokio_tungstenite",
        }
    }
}

/// Binds `addr` and serves forever on a current-thread runtime; reports the bound address
/// through `bound` once listening.
/// `tls` is the certificate and key files, for [`Baseline::Tls`].
pub fn serve(
    baseline: Baseline,
    addr: SocketAddr,
    tls: Option<(PathBuf, PathBuf)>,
    bound: impl FnOnce(SocketAddr),
) {
    let acceptor = tls
        .filter(|_| baseline == Baseline::Tls)
        .map(|(cert, key)| tls_acceptor(&cert, &key));
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
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let _ = match (baseline, acceptor) {
                    (Baseline::Tls, Some(acceptor)) => match acceptor.accept(socket).await {
                        Ok(stream) => raw_echo(stream).await,
                        Err(e) => Err(e),
                    },
                    (Baseline::Raw, _) => raw_echo(socket).await,
                    _ if baseline == Baseline::WebSocket => websocket_echo(socket).await,
                    _ => line_echo(socket).await,
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

fn tls_acceptor(cert: &std::path::Path, key: &std::path::Path) -> tokio_rustls::TlsAcceptor {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_file_iter(cert)
        .expect("certificate file")
        .collect::<Result<Vec<_>, _>>()
        .expect("certificates");
    let key = PrivateKeyDer::from_pem_file(key).expect("key file");
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("certificate and key");
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

async fn raw_echo<S: AsyncReadExt + AsyncWriteExt + Unpin>(mut socket: S) -> std::io::Result<()> {
    // 8 KiB, the same as the BufReader of the line baseline (tokio's default capacity).
    let mut buffer = vec![0u8; 8 * 1024];
    loop {
        let n = socket.read(&mut buffer).await?;
        if n == 0 {
            return Ok(());
        }
        socket.write_all(&buffer[..n]).await?;
        // tokio-rustls holds sealed records until flushed; a plain socket's flush is free.
        socket.flush().await?;
    }
}

async fn websocket_echo(socket: TcpStream) -> std::io::Result<()> {
    use futures_util::{StreamExt, TryStreamExt};
    let stream = tokio_tungstenite::accept_async(socket)
        .await
        .map_err(std::io::Error::other)?;
    let (write, read) = stream.split();
    read.try_filter(|message| std::future::ready(message.is_text() || message.is_binary()))
        .forward(write)
        .await
        .map_err(std::io::Error::other)
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
