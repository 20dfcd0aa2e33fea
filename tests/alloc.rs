//! Zero heap allocations per request in steady state, counted by a global allocator.
//!
//! The server runs in-process so the counting allocator sees its allocations; the client
//! uses only fixed buffers, so any allocation counted during the measured requests is the
//! server's.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};

use common::TestServer;

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        System.alloc_zeroed(layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        System.realloc(ptr, layout, new_size)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Runs `rounds` rounds of one request per client and returns the allocations counted.
fn allocations_during(clients: &mut [std::net::TcpStream], line: &[u8], rounds: usize) -> u64 {
    let mut back = [0u8; 4096];
    let back = &mut back[..line.len()];
    let before = ALLOCATIONS.load(Ordering::SeqCst);
    for _ in 0..rounds {
        for client in clients.iter_mut() {
            client.write_all(line).unwrap();
        }
        for client in clients.iter_mut() {
            client.read_exact(back).unwrap();
            assert_eq!(&*back, line);
        }
    }
    ALLOCATIONS.load(Ordering::SeqCst) - before
}

/// Runs `rounds` requests on one client, each answered with `reply`, and returns the
/// allocations counted.
fn allocations_answering(
    client: &mut std::net::TcpStream,
    request: &mut dyn FnMut(usize) -> Vec<u8>,
    reply: &[u8],
    rounds: usize,
) -> u64 {
    let requests: Vec<Vec<u8>> = (0..rounds).map(&mut *request).collect();
    let mut back = [0u8; 4096];
    let back = &mut back[..reply.len()];
    let before = ALLOCATIONS.load(Ordering::SeqCst);
    for request in &requests {
        client.write_all(request).unwrap();
        client.read_exact(back).unwrap();
        assert_eq!(&*back, reply);
    }
    ALLOCATIONS.load(Ordering::SeqCst) - before
}

// One test function: the counter is process-wide, so measurements must not overlap.
#[test]
fn steady_state_requests_allocate_nothing() {
    let server = TestServer::start();
    let mut line = common::pattern(127, 5);
    line.push(b'\n');

    let mut one = vec![server.connect()];
    allocations_during(&mut one, &line, 1_000);
    let counted = allocations_during(&mut one, &line, 10_000);
    assert_eq!(
        counted, 0,
        "{counted} allocations over 10,000 request/responses"
    );

    // Several connections with requests in flight together: events arrive in batches.
    let mut many: Vec<_> = (0..20).map(|_| server.connect()).collect();
    allocations_during(&mut many, &line, 200);
    let counted = allocations_during(&mut many, &line, 1_000);
    assert_eq!(
        counted, 0,
        "{counted} allocations over 20,000 requests on 20 connections"
    );

    // Pipelined: 32 lines of 16 bytes per write, answered with one write per read.
    let mut pipelined_line = Vec::new();
    for i in 0..32u8 {
        pipelined_line.extend_from_slice(&[b'a' + (i % 26); 15]);
        pipelined_line.push(b'\n');
    }
    allocations_during(&mut many, &pipelined_line, 200);
    let counted = allocations_during(&mut many, &pipelined_line, 1_000);
    assert_eq!(
        counted, 0,
        "{counted} allocations over 640,000 pipelined lines"
    );
    drop(server);

    // --kv: a GET allocates nothing, a PUT only what it stores.
    let config = kv_server::Config {
        kv: true,
        ..kv_server::Config::default()
    };
    let server = TestServer::start_with(config, Box::new(kv_server::Echo));
    let mut client = server.connect();
    let mut setup = |line: &[u8]| {
        client.write_all(line).unwrap();
        let mut ok = [0u8; 4];
        client.read_exact(&mut ok).unwrap();
        assert_eq!(&ok, b"OK\r\n");
    };
    setup(b"CREATE shopping\n");
    setup(b"PUT shopping eggs 0123456789\n");
    let get = &mut |_| b"GET shopping eggs\r\n".to_vec();
    allocations_answering(&mut client, get, b"0123456789\r\nOK\r\n", 500);
    let counted = allocations_answering(&mut client, get, b"0123456789\r\nOK\r\n", 3_000);
    assert_eq!(counted, 0, "{counted} allocations over 3,000 GETs");
    // A value as long as the one it replaces is written over it.
    let same_length = &mut |round: usize| format!("PUT shopping eggs {round:010}\n").into_bytes();
    let counted = allocations_answering(&mut client, same_length, b"OK\r\n", 3_000);
    assert_eq!(counted, 0, "{counted} allocations over 3,000 PUTs in place");
    // A new key: its key and its value, and the map's growth now and then.
    let new_keys = &mut |round: usize| format!("PUT shopping k{round} v\n").into_bytes();
    let counted = allocations_answering(&mut client, new_keys, b"OK\r\n", 3_000);
    assert!(
        (6_000..6_050).contains(&counted),
        "{counted} allocations for 3,000 new keys"
    );
}
