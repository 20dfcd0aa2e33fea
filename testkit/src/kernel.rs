//! What the kernel's TCP stack does while a crowd runs: how much memory its sockets hold
//! against the pressure mark (`net.ipv4.tcp_mem`), and the counters that say it pruned or
//! dropped segments. Past the pressure mark the kernel drops what it cannot queue, and a
//! dropped segment waits for a retransmission whose timer doubles each time: a test
//! whose clients wait seconds for an echo may be seeing the kernel, not the server. The
//! crowds size themselves from these figures and report them when they fail.
//!
//! Crowds also take turns across processes ([`crowd_turn`]): two test binaries (or two
//! `cargo test` runs) each staying under the mark would pass it together.

use std::collections::BTreeMap;
use std::fs::File;
use std::sync::{Mutex, MutexGuard};

/// Counters of `/proc/net/netstat` and `/proc/net/snmp` that tell a kernel drop from a
/// server stall.
const DROP_COUNTERS: [&str; 8] = [
    "TcpExtTCPMemoryPressures",
    "TcpExtPruneCalled",
    "TcpExtRcvPruned",
    "TcpExtOfoPruned",
    "TcpExtTCPRcvQDrop",
    "TcpExtTCPOFODrop",
    "TcpExtTCPTimeouts",
    "TcpRetransSegs",
];

/// A share of the pressure mark a crowd may fill: the rest is for everything else the
/// machine runs at once (other tests' connections, another build's).
const CROWD_SHARE_OF_PRESSURE: u64 = 4;

/// The kernel counts tcp_mem in pages: 4 KiB on every machine these tests run on.
const PAGE_BYTES: u64 = 4096;

/// The TCP memory pressure mark in bytes (the middle figure of `net.ipv4.tcp_mem`).
pub fn tcp_pressure_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_mem").ok()?;
    let pages: u64 = text.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * PAGE_BYTES)
}

/// Bytes the machine's TCP sockets hold now (`/proc/net/sockstat`, `TCP: ... mem N`).
pub fn tcp_memory_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/net/sockstat").ok()?;
    let line = text.lines().find(|line| line.starts_with("TCP:"))?;
    let mut words = line.split_whitespace();
    words.find(|&word| word == "mem")?;
    let pages: u64 = words.next()?.parse().ok()?;
    Some(pages * PAGE_BYTES)
}

/// The smallest socket buffer the kernel takes (`SOCK_MIN_SNDBUF`, rounded up).
const MIN_SOCKET_BUFFER: usize = 4608;
/// The largest a crowd's socket buffers need be: as much as one read or write moves.
const MAX_SOCKET_BUFFER: usize = 256 * 1024;

/// The size to give each socket buffer of a crowd of `connections`, each with
/// `buffers_each` buffers (client and server, send and receive) that may fill, so that
/// together they stay within a quarter of the room left under the pressure mark. The
/// kernel doubles what it is asked for (for its bookkeeping), and counts that double.
pub fn socket_buffer_for(connections: usize, buffers_each: usize) -> usize {
    let Some(pressure) = tcp_pressure_bytes() else {
        return MAX_SOCKET_BUFFER;
    };
    let room = pressure.saturating_sub(tcp_memory_bytes().unwrap_or(0)) / CROWD_SHARE_OF_PRESSURE;
    let each = room / (2 * connections.max(1) * buffers_each.max(1)) as u64;
    (each as usize).clamp(MIN_SOCKET_BUFFER, MAX_SOCKET_BUFFER)
}

/// The TCP memory figures now, in words.
pub fn memory() -> String {
    let known = |bytes: Option<u64>| bytes.map_or("unknown".into(), |b| b.to_string());
    format!(
        "TCP sockets hold {} bytes of a pressure mark of {}",
        known(tcp_memory_bytes()),
        known(tcp_pressure_bytes())
    )
}

/// The drop counters at one moment.
#[derive(Debug, Clone, Default)]
pub struct Counters(BTreeMap<&'static str, u64>);

impl Counters {
    /// Reads the counters now (absent ones, on a kernel without them, are left out).
    pub fn now() -> Counters {
        let mut counters = BTreeMap::new();
        for file in ["/proc/net/netstat", "/proc/net/snmp"] {
            let Ok(text) = std::fs::read_to_string(file) else {
                continue;
            };
            // Pairs of lines: "Prefix: Name Name ..." then "Prefix: value value ...".
            let lines: Vec<&str> = text.lines().collect();
            for pair in lines.chunks_exact(2) {
                let mut names = pair[0].split_whitespace();
                let mut values = pair[1].split_whitespace();
                let (Some(prefix), Some(_)) = (names.next(), values.next()) else {
                    continue;
                };
                let prefix = prefix.trim_end_matches(':');
                for (name, value) in names.zip(values) {
                    let full = format!("{prefix}{name}");
                    if let Some(&known) = DROP_COUNTERS.iter().find(|&&c| c == full) {
                        counters.insert(known, value.parse().unwrap_or(0));
                    }
                }
            }
        }
        Counters(counters)
    }

    /// What each counter grew by since `self`, with the memory figures now: one line.
    pub fn since(&self) -> String {
        let now = Counters::now();
        let grown: Vec<String> = now
            .0
            .iter()
            .map(|(name, &value)| {
                let before = self.0.get(name).copied().unwrap_or(0);
                format!("{name} +{}", value.saturating_sub(before))
            })
            .collect();
        format!("kernel: {}; {}", memory(), grown.join(", "))
    }
}

/// One crowd at a time on this machine: held while a crowd runs.
pub struct CrowdTurn {
    _in_process: MutexGuard<'static, ()>,
    _across_processes: Option<File>,
}

/// Waits for this machine's crowds to take turns: within this process (a mutex) and across
/// processes (an exclusive lock on a file in the temporary directory, released when the
/// turn is dropped or the process ends).
pub fn crowd_turn() -> CrowdTurn {
    static IN_PROCESS: Mutex<()> = Mutex::new(());
    let in_process = IN_PROCESS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let path = std::env::temp_dir().join("kv_server-crowds.lock");
    let across = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .ok()
        .filter(|file| file.lock().is_ok());
    CrowdTurn {
        _in_process: in_process,
        _across_processes: across,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_machines_figures() {
        let pressure = tcp_pressure_bytes().expect("tcp_mem");
        assert!(pressure > 0);
        assert!(tcp_memory_bytes().is_some());
        let small = socket_buffer_for(100_000, 4);
        assert!(
            (MIN_SOCKET_BUFFER..MAX_SOCKET_BUFFER).contains(&small),
            "{small}"
        );
        assert_eq!(socket_buffer_for(1, 1), MAX_SOCKET_BUFFER);
        let counters = Counters::now();
        assert!(counters.0.contains_key("TcpRetransSegs"), "{counters:?}");
        assert!(counters.since().contains("TcpExtPruneCalled +"));
    }

    #[test]
    fn turns_nest_across_threads() {
        let first = crowd_turn();
        let waiting = std::thread::spawn(|| {
            let _second = crowd_turn();
        });
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(!waiting.is_finished(), "the second waits for the first");
        drop(first);
        waiting.join().unwrap();
    }
}
