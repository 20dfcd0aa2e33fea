//! `--reuse-port` handovers: a new instance starts on the port, then the old one gets
//! SIGTERM, while clients keep opening short connections. Nobody may be refused; resets can
//! come only from the window the kernel leaves (a handshake completing between the old
//! instance's last accept and its close), which `net.ipv4.tcp_migrate_req=1` closes.
//!
//! Each test runs in a network namespace of its own (its thread unshares one; the servers
//! and clients it starts inherit it), so that it can set that sysctl without touching the
//! machine. Namespaces need root: the tests are `#[ignore]`d with that reason, and `cargo test --
//! --include-ignored` as root (CI) runs them.

mod common;

use std::time::Duration;

use common::churn::{Churn, Tally};
use common::netns;
use common::ServerProcess;

const HANDOVERS: usize = 10;

/// Moves this thread (and every process and thread it starts from now on) into a new
/// network namespace with its loopback up and `tcp_migrate_req` set as asked.
fn private_network(migrate_req: bool) -> Result<(), String> {
    netns::enter_private_network()?;
    let value = if migrate_req { "1" } else { "0" };
    std::fs::write("/proc/sys/net/ipv4/tcp_migrate_req", value)
        .map_err(|e| format!("cannot set net.ipv4.tcp_migrate_req (Linux 5.14+): {e}"))
}

/// Enters a private network with `tcp_migrate_req` set as asked (root).
fn enter(migrate_req: bool) {
    if let Err(why) = private_network(migrate_req) {
        panic!("{why} (run as root, as CI does)");
    }
}

fn start(port: u16) -> ServerProcess {
    ServerProcess::start(&["--reuse-port", "--port", &port.to_string()])
}

/// Hands the port over from instance to instance `HANDOVERS` times under load.
fn handovers() -> Tally {
    let mut old = start(0);
    let addr = old.addr();
    let churn = Churn::start(addr, 4, 5);
    for _ in 0..HANDOVERS {
        churn.wait_for_echoes(50);
        let new = start(addr.port());
        assert_eq!(new.port, addr.port());
        old.signal(libc::SIGTERM);
        assert!(old.wait_exit(Duration::from_secs(10)).success());
        old = new;
    }
    churn.wait_for_echoes(50);
    churn.stop()
}

#[test]
#[ignore = "needs root for a network namespace; cargo test -- --include-ignored as root"]
fn reuse_port_handovers_refuse_nobody_with_migration_off() {
    enter(false);
    let tally = handovers();
    println!("{HANDOVERS} --reuse-port handovers, tcp_migrate_req=0: {tally:?}");
    assert_eq!(tally.refused, 0, "{tally:?}");
    // The kernel's window may reset a connection (at connect time, or after a line was
    // sent); nothing else may lose a line.
    assert!(tally.lost <= tally.resets, "{tally:?}");
}

#[test]
#[ignore = "needs root for a network namespace; cargo test -- --include-ignored as root"]
fn reuse_port_handovers_reset_nobody_with_migration_on() {
    enter(true);
    let tally = handovers();
    println!("{HANDOVERS} --reuse-port handovers, tcp_migrate_req=1: {tally:?}");
    assert_eq!(tally.refused, 0, "{tally:?}");
    assert_eq!(tally.resets, 0, "{tally:?}");
    assert_eq!(tally.lost, 0, "{tally:?}");
}
