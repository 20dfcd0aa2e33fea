//! What kv_server's integration tests and its load generators (`examples/kv_load`,
//! `examples/kv_crowd`) both need: a byte pattern that makes a misplaced or repeated chunk of
//! an echo visible, readers of another process's CPU time, memory and descriptors from
//! `/proc`, crowds of clients from many loopback addresses, what the kernel's TCP stack did
//! while they ran, and a WebSocket client's upgrade and frames.
//!
//! It is a crate of its own so that the two are written once and neither is installed with
//! the server.

use std::io;

pub mod crowd;
pub mod kernel;
pub mod websocket;

/// A deterministic, incompressible-looking byte pattern covering every byte value except
/// `\n` (which becomes `\r`), so that a misplaced or repeated chunk cannot go unnoticed.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            match (state >> 24) as u8 {
                b'\n' => b'\r',
                byte => byte,
            }
        })
        .collect()
}

/// Readers of `/proc/PID/...` (Linux).
pub mod proc {
    use super::io;

    fn unreadable(what: &str) -> io::Error {
        io::Error::other(format!("unreadable {what}"))
    }

    /// A field of `/proc/PID/status` in KiB (`VmRSS`, `VmHWM`, ...).
    pub fn status_kib(pid: u32, field: &str) -> io::Result<u64> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        text.lines()
            .find(|line| {
                line.strip_prefix(field)
                    .is_some_and(|rest| rest.starts_with(':'))
            })
            .and_then(|line| line.split_whitespace().nth(1))
            .and_then(|value| value.parse().ok())
            .ok_or_else(|| unreadable(&format!("{field} in /proc/{pid}/status")))
    }

    /// Resident memory in KiB.
    pub fn rss_kib(pid: u32) -> io::Result<u64> {
        status_kib(pid, "VmRSS")
    }

    /// Time the process has spent on a CPU, in nanoseconds (`/proc/PID/schedstat`): finer
    /// than the clock ticks of `/proc/PID/stat`.
    pub fn cpu_ns(pid: u32) -> io::Result<u64> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/schedstat"))?;
        text.split_whitespace()
            .next()
            .and_then(|field| field.parse().ok())
            .ok_or_else(|| unreadable("/proc/PID/schedstat"))
    }

    /// User and system CPU time of the process so far, in clock ticks (`/proc/PID/stat`).
    pub fn user_system_ticks(pid: u32) -> io::Result<(u64, u64)> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
        // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
        let after_name = text
            .rfind(')')
            .map(|end| &text[end + 2..])
            .ok_or_else(|| unreadable("/proc/PID/stat"))?;
        let fields: Vec<&str> = after_name.split_whitespace().collect();
        let field = |index: usize| -> io::Result<u64> {
            fields
                .get(index)
                .and_then(|f| f.parse().ok())
                .ok_or_else(|| unreadable("/proc/PID/stat"))
        };
        Ok((field(11)?, field(12)?))
    }

    /// Descriptors the process holds open.
    pub fn open_fds(pid: u32) -> io::Result<usize> {
        Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))?.count())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_has_no_newline_and_depends_on_the_seed() {
        let a = pattern(100_000, 1);
        assert!(!a.contains(&b'\n'));
        assert_ne!(a, pattern(100_000, 2));
        assert_eq!(a, pattern(100_000, 1));
        let distinct: std::collections::HashSet<u8> = a.iter().copied().collect();
        assert_eq!(distinct.len(), 255, "every byte value but the newline");
    }

    #[test]
    fn reads_this_process() {
        let pid = std::process::id();
        assert!(proc::rss_kib(pid).unwrap() > 0);
        assert!(proc::cpu_ns(pid).unwrap() > 0);
        assert!(proc::open_fds(pid).unwrap() >= 3);
        proc::user_system_ticks(pid).unwrap();
        assert!(proc::status_kib(pid, "NoSuchField").is_err());
    }
}
