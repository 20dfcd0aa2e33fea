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
}
