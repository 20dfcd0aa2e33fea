//! Warnings that a flood of clients could repeat without end (refused connections, resource
//! errors, limits reached): one of a kind per second, with a count of those held back.
//!
//! A room of its own because the acceptor, the access rules and the connection table all
//! warn this way, and none of them should have to import another for it.

use std::time::{Duration, Instant};

/// Repeated warnings of one kind are logged at most this often.
const WARNING_INTERVAL: Duration = Duration::from_secs(1);

/// "; N similar warnings suppressed", or nothing when none were.
pub(crate) fn suppressed_note(suppressed: u64) -> String {
    if suppressed == 0 {
        String::new()
    } else {
        format!("; {suppressed} similar warnings suppressed")
    }
}

/// Lets one warning of a kind through per interval and counts the ones held back, so that
/// a flood of failures cannot flood the log.
#[derive(Debug, Default)]
pub(crate) struct RateLimit {
    last: Option<Instant>,
    suppressed: u64,
}

impl RateLimit {
    /// `Some(number held back since the last one)` when a warning may be logged now.
    pub fn allow(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(last) if now.duration_since(last) < WARNING_INTERVAL => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}
