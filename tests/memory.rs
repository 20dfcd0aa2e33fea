//! Memory per idle connection, measured on the binary's RSS: a connection holding nothing
//! pending owns no heap buffers, so thousands of idle clients cost little more than their
//! slab slots.
//!
//! What is measured is the process's anonymous memory (`RssAnon`: heap, stacks), which is
//! what it allocates. The rest of its RSS is the binary's own pages, read in as code runs:
//! in this unoptimised build some 5.5 MiB, varying by a few hundred KiB with what ran.

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
    let idle_rss = server.status_kib("RssAnon");
    // The whole idle process is measured on the release binary (docs/performance.md);
    // here, what it allocated: 0.7 MiB, most of it the 64 KiB read buffer, the logger
    // and the loop's event list.
    assert!(idle_rss < 2 * 1024, "idle server RssAnon {idle_rss} KiB");

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
    let loaded_rss = server.status_kib("RssAnon");
    let per_connection = (loaded_rss.saturating_sub(idle_rss) * 1024) / IDLE_CLIENTS as u64;
    eprintln!(
        "RssAnon {idle_rss} KiB idle, {loaded_rss} KiB with {IDLE_CLIENTS} idle connections: \
         {per_connection} bytes each"
    );
    assert!(
        per_connection <= 1024,
        "{per_connection} bytes of RSS per idle connection"
    );

    // When the burst is over, the server gives its memory back: it releases the slab and
    // trims the heap once the last connection has closed, which is waited for.
    drop(clients);
    drop(probe);
    let deadline = std::time::Instant::now() + common::TIMEOUT;
    let mut after_rss = server.status_kib("RssAnon");
    while after_rss > idle_rss + 256 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
        after_rss = server.status_kib("RssAnon");
    }
    assert!(
        after_rss <= idle_rss + 256,
        "RssAnon {after_rss} KiB {:?} after the clients left, {idle_rss} KiB before they came",
        common::TIMEOUT
    );
}
