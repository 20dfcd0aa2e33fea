//! Loop protection: what keeps two echo servers (or this one and itself) from answering
//! each other for ever once a forged datagram sets them off (the "Loop DoS" of
//! CVE-2024-2169).
//!
//! Three rules, each ending loops the others cannot:
//! - **Ports.** Datagrams from source ports 0 to 1023 are never answered: the services that
//!   answer anything live there (echo 7, Active Users 11, daytime 13, QOTD 17, chargen
//!   19, time 37, DNS 53, TFTP 69, NTP 123...), and no ordinary client sends from
//!   them. Nor are datagrams from this server's own port, whatever the address: itself, its
//!   `--reuse-port` siblings, or the same service on another host.
//! - **Repeats.** An echo is byte-exact, so a loop carries the same bytes between the same
//!   two addresses again and again, however long each trip takes. The same bytes from the
//!   same address and port are answered at most [`REPEATS`] times while they keep coming
//!   back within [`REPEAT_WINDOW`] of each other: a loop dies after that many trips, with
//!   two servers or more and at any hop delay under the window (one trip a minute, at
//!   most, is what a slower loop costs). A client that sends the very same datagram more
//!   often than that from one port is taken for a loop too; varying its bytes (a sequence
//!   number) or its port is enough.
//! - A cap for the whole server, `--udp-rate` (in [`super::rates`]), so that no mix of
//!   forged sources can make it spend a core sending.
//!
//! The memory of repeats is a fixed table of [`SLOTS`] entries, indexed by a keyed hash of
//! the sender and the datagram's bytes (the key is random per process, so that nobody can
//! aim datagrams at one entry); an entry taken by another datagram forgets the old one,
//! which then starts counting again. Its pages are touched only as entries fill.

use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;
use std::time::Instant;

/// Highest source port of the services that answer anything (the well-known ports).
pub const HIGHEST_SERVICE_PORT: u16 = 1023;
/// Times the same bytes from the same sender are answered while they keep coming back.
pub const REPEATS: u32 = 16;
/// A repeat further apart than this from the one before starts the count again.
pub const REPEAT_WINDOW_MS: u32 = 60_000;
/// Entries in the memory of repeats: 16 bytes each, 1 MiB in all at most.
const SLOTS: usize = 1 << 16;
/// Bytes of a datagram's beginning and end that its fingerprint covers (with its length):
/// a loop repeats every byte, so a fingerprint need not read 64 KB to recognise one.
const FINGERPRINT_EDGE: usize = 256;

/// Whether `source` is a port no answer goes to: a service's, or this server's own.
pub fn is_loop_port(source: SocketAddr, own_port: u16) -> bool {
    source.port() <= HIGHEST_SERVICE_PORT || source.port() == own_port
}

/// The memory of recent echoes: for each (sender, bytes) seen lately, how many times in a
/// row it was answered and when it was last seen.
pub struct RepeatMemory {
    /// Per entry: the fingerprint (0 for none), then when it was last seen (milliseconds
    /// since `started`) in the high half and the count in the low half.
    slots: Box<[[u64; 2]]>,
    hasher: std::hash::RandomState,
    started: Instant,
}

impl RepeatMemory {
    pub fn new() -> RepeatMemory {
        RepeatMemory {
            // Zeroed, so allocated untouched: only the entries used become resident.
            slots: vec![[0u64; 2]; SLOTS].into_boxed_slice(),
            hasher: std::hash::RandomState::new(),
            started: Instant::now(),
        }
    }

    /// Whether `datagram` from `source` may be answered once more; counts it either way.
    pub fn admit(&mut self, source: SocketAddr, datagram: &[u8], now: Instant) -> bool {
        let fingerprint = self.fingerprint(source, datagram);
        let now_ms = now.saturating_duration_since(self.started).as_millis() as u32;
        let slot = &mut self.slots[fingerprint as usize % SLOTS];
        let (last_ms, count) = ((slot[1] >> 32) as u32, slot[1] as u32);
        let count = if slot[0] == fingerprint && now_ms.wrapping_sub(last_ms) <= REPEAT_WINDOW_MS {
            count.saturating_add(1)
        } else {
            1
        };
        *slot = [fingerprint, (u64::from(now_ms) << 32) | u64::from(count)];
        count <= REPEATS
    }

    /// A keyed hash of the sender and the datagram (its length, its first and last bytes),
    /// never 0.
    fn fingerprint(&self, source: SocketAddr, datagram: &[u8]) -> u64 {
        let mut hasher = self.hasher.build_hasher();
        hasher.write(&match source.ip().to_canonical() {
            std::net::IpAddr::V4(ip) => ip.to_ipv6_mapped().octets(),
            std::net::IpAddr::V6(ip) => ip.octets(),
        });
        hasher.write_u16(source.port());
        hasher.write_usize(datagram.len());
        if datagram.len() <= 2 * FINGERPRINT_EDGE {
            hasher.write(datagram);
        } else {
            hasher.write(&datagram[..FINGERPRINT_EDGE]);
            hasher.write(&datagram[datagram.len() - FINGERPRINT_EDGE..]);
        }
        hasher.finish().max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    #[test]
    fn service_ports_and_the_servers_own_are_loop_ports() {
        for port in [0, 7, 11, 17, 19, 53, 123, 1023] {
            assert!(
                is_loop_port(addr(&format!("10.0.0.1:{port}")), 4040),
                "{port}"
            );
        }
        assert!(is_loop_port(addr("10.0.0.1:4040"), 4040));
        assert!(is_loop_port(addr("[::1]:4040"), 4040));
        assert!(!is_loop_port(addr("10.0.0.1:1024"), 4040));
        assert!(!is_loop_port(addr("10.0.0.1:40400"), 4040));
    }

    #[test]
    fn the_same_bytes_from_one_sender_are_answered_a_bounded_number_of_times() {
        let mut memory = RepeatMemory::new();
        let start = Instant::now();
        let peer = addr("10.0.0.1:5000");
        let answered = (0..100)
            // A trip every 40 ms, as over a 20 ms hop: the loop never pauses a window.
            .map(|n| start + Duration::from_millis(40 * n))
            .filter(|&now| memory.admit(peer, b"loop", now))
            .count();
        assert_eq!(answered, REPEATS as usize);
        // Other bytes, or the same bytes from another port or address, are their own.
        let later = start + Duration::from_secs(4);
        assert!(memory.admit(peer, b"loop!", later));
        assert!(memory.admit(addr("10.0.0.1:5001"), b"loop", later));
        assert!(memory.admit(addr("10.0.0.2:5000"), b"loop", later));
        // A pause longer than the window starts the count again.
        let much_later = later + Duration::from_millis(u64::from(REPEAT_WINDOW_MS) + 1);
        assert!(memory.admit(peer, b"loop", much_later));
    }

    #[test]
    fn a_mapped_sender_is_its_ipv4_self_and_long_datagrams_are_told_apart() {
        let mut memory = RepeatMemory::new();
        let now = Instant::now();
        for _ in 0..REPEATS {
            assert!(memory.admit(addr("10.0.0.1:5000"), b"x", now));
        }
        assert!(!memory.admit(addr("[::ffff:10.0.0.1]:5000"), b"x", now));
        // Datagrams differing only in their middle share a fingerprint; differing at either
        // end or in length, they do not.
        let long = vec![7u8; 9_000];
        let mut end = long.clone();
        *end.last_mut().unwrap() = 8;
        let peer = addr("10.0.0.3:6000");
        assert_ne!(
            memory.fingerprint(peer, &long),
            memory.fingerprint(peer, &end)
        );
        assert_ne!(
            memory.fingerprint(peer, &long),
            memory.fingerprint(peer, &long[1..])
        );
    }
}
