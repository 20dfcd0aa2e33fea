//! Dead peers reclaimed: a client that resets while its reset is lost leaves the server an
//! established connection with nobody behind it. `--tcp-keepalive` probes it, the probes go
//! unanswered, and the connection is closed, counted as `peer_timeout`. Without keepalive
//! the same ghosts stay, which shows that keepalive is what reclaims them.
//!
//! The test runs in a network namespace of its own, where nftables drops every TCP reset
//! (this kernel has no `netem`; nftables works inside a namespace), so it needs root and
//! `nft`: it is `#[ignore]`d with that reason, and `cargo test -- --include-ignored` as root
//! (CI) runs it.

mod common;

use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{assert_echo, netns, ServerProcess};

const GHOSTS: usize = 4;

/// Drops every TCP segment with RST set that leaves a socket in this namespace.
fn drop_resets() {
    for rule in [
        "add table inet ghosts",
        "add chain inet ghosts out { type filter hook output priority 0 ; }",
        "add rule inet ghosts out tcp flags rst drop",
    ] {
        let status = Command::new("nft").arg(rule).status().expect("run nft");
        assert!(status.success(), "nft {rule}");
    }
}

fn open_connections(server: &ServerProcess) -> f64 {
    common::scrape(server.metrics_addr())["kv_server_connections_open{transport=\"tcp\"}"]
}

/// Connects `GHOSTS` clients, makes each echo a line, then resets them all (`SO_LINGER` 0):
/// with resets dropped, the server never hears of it.
fn make_ghosts(server: &ServerProcess) {
    for n in 0..GHOSTS {
        let mut client = TcpStream::connect(server.addr()).unwrap();
        client.set_read_timeout(Some(common::TIMEOUT)).unwrap();
        assert_echo(&mut client, format!("ghost {n}\n").as_bytes());
        socket2::SockRef::from(&client)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
    }
}

fn ghosts(keepalive_secs: &str) -> Option<(ServerProcess, Instant)> {
    netns::enter();
    common::require_tool("nft", "nftables");
    drop_resets();
    let server = ServerProcess::start(&[
        "--tcp-keepalive",
        keepalive_secs,
        "--metrics",
        "127.0.0.1:0",
    ]);
    make_ghosts(&server);
    let reset_at = Instant::now();
    assert_eq!(
        open_connections(&server),
        GHOSTS as f64,
        "the resets never reached the server"
    );
    Some((server, reset_at))
}

#[test]
#[ignore = "needs root and nft (apt-get install nftables); cargo test -- --include-ignored as root"]
fn keepalive_closes_the_connections_of_vanished_peers() {
    // Run in a thread of its own: the namespace belongs to the thread that enters it.
    std::thread::spawn(|| {
        let Some((server, reset_at)) = ghosts("2") else {
            return;
        };
        // First probe after 2 s of silence, three more a second apart, user time-out 4 s:
        // the ghosts go after about 4-5 s. 20 s is a wide margin.
        while open_connections(&server) > 0.0 {
            assert!(
                reset_at.elapsed() < Duration::from_secs(20),
                "the ghosts were still open after 20 s"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        let closed = common::scrape(server.metrics_addr())
            ["kv_server_connections_closed_total{reason=\"peer_timeout\"}"];
        assert_eq!(closed, GHOSTS as f64);
        let took = reset_at.elapsed();
        println!("{GHOSTS} ghosts closed by keepalive after {took:?}");
        assert!(took >= Duration::from_secs(2), "not before the first probe");
    })
    .join()
    .unwrap();
}

#[test]
#[ignore = "needs root and nft (apt-get install nftables); cargo test -- --include-ignored as root"]
fn without_keepalive_the_ghosts_stay() {
    std::thread::spawn(|| {
        let Some((server, _)) = ghosts("0") else {
            return;
        };
        // Twice as long as keepalive needed above: still every ghost is open.
        std::thread::sleep(Duration::from_secs(10));
        assert_eq!(
            open_connections(&server),
            GHOSTS as f64,
            "without keepalive nothing reclaims them"
        );
        let closed = common::scrape(server.metrics_addr())
            ["kv_server_connections_closed_total{reason=\"peer_timeout\"}"];
        assert_eq!(closed, 0.0);
    })
    .join()
    .unwrap();
}
