//! Memory per idle connection, measured on the binary's RSS: a connection holding nothing
//! pending owns no heap buffers, so thousands of idle clients cost little more than their
//! slab slots.

mod common;

use std::io::{Read, Write};

use common::ServerProcess;

const IDLE_CLIENTS: usize = 3_000;

#[test]
fn idle_connections_cost_under_a_kilobyte_each() {
    common::raise_fd_limit();
    let server = ServerProcess::start(&[]);
    let mut probe = common::connect(server.addr());
    common::assert_echo(&mut probe, b"warm up\n");
    let idle_rss = server.status_kib("VmRSS");
    // The 4 MiB target is for the release binary (see the README's figures: 3.2 MiB with
    // rustls linked in); this is the unoptimised test build, whose larger code and
    // relocated tables alone add some three mebibytes.
    assert!(idle_rss < 7 * 1024, "idle server RSS {idle_rss} KiB");

    let mut clients = Vec::with_capacity(IDLE_CLIENTS);
    for i in 0..IDLE_CLIENTS {
        let mut client = common::connect(server.addr());
        // Half a line first, so the connection allocates a tail buffer it must release.
        client.write_all(format!("client {i} ").as_bytes()).unwrap();
        clients.push(client);
    }
    for (i, client) in clients.iter_mut().enumerate() {
        client.write_all(b"done\n").unwrap();
        let expected = format!("client {i} done\n");
        let mut back = vec![0u8; expected.len()];
        client.read_exact(&mut back).unwrap();
        assert_eq!(back, expected.as_bytes());
    }
    let loaded_rss = server.status_kib("VmRSS");
    let per_connection = (loaded_rss.saturating_sub(idle_rss) * 1024) / IDLE_CLIENTS as u64;
    eprintln!(
        "RSS {idle_rss} KiB idle, {loaded_rss} KiB with {IDLE_CLIENTS} idle connections: \
         {per_connection} bytes each"
    );
    assert!(
        per_connection <= 1024,
        "{per_connection} bytes of RSS per idle connection"
    );

    // When the burst is over, the server gives its memory back.
    let fds_loaded = server.open_fds();
    drop(clients);
    drop(probe);
    let deadline = std::time::Instant::now() + common::TIMEOUT;
    while server.open_fds() > fds_loaded - IDLE_CLIENTS - 1 && std::time::Instant::now() < deadline
    {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let after_rss = server.status_kib("VmRSS");
    assert!(
        after_rss <= idle_rss + 256,
        "RSS {after_rss} KiB after the clients left, {idle_rss} KiB before they came"
    );
}
