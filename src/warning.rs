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

/// Logs a line a client can cause (a failed connection, a fault, an eviction) at most
/// once a second per call site and thread (one thread serves one loop), with a count of
/// those held back: a flood of such clients cannot flood the log.
macro_rules! client_caused {
    ($level:expr, $($arg:tt)+) => {{
        ::std::thread_local! {
            static LIMIT: ::std::cell::RefCell<$crate::warning::RateLimit> =
                ::std::cell::RefCell::new($crate::warning::RateLimit::default());
        }
        if ::log::log_enabled!($level) {
            let allowed = LIMIT.with(|limit| limit.borrow_mut().allow(::std::time::Instant::now()));
            if let Some(suppressed) = allowed {
                ::log::log!(
                    $level,
                    "{}{}",
                    format_args!($($arg)+),
                    $crate::warning::suppressed_note(suppressed)
                );
            }
        }
    }};
}
pub(crate) use client_caused;

/// A logger that passes what other crates log at info, warn or error (rustls' warnings, for
/// example, one per client that sends an IP address as its server name or asks to
/// renegotiate) through the same limit, once a second per crate and level, with a count of
/// what was held back. Their debug and trace lines, asked for explicitly, pass as they are;
/// this crate's own lines are limited where they are written.
pub struct LimitedLog<L> {
    inner: L,
    limits: std::sync::Mutex<std::collections::HashMap<(String, log::Level), RateLimit>>,
}

impl<L: log::Log> LimitedLog<L> {
    pub fn new(inner: L) -> LimitedLog<L> {
        LimitedLog {
            inner,
            limits: std::sync::Mutex::new(std::collections::HashMap::new()),
        }
    }
}

/// One of this crate's records, its target cut to the room that wrote it
/// (`kv_server::server`, not `kv_server::server::turn`): the names the logs have always
/// shown, whichever file of a room a line comes from.
fn in_its_room<'a>(record: &'a log::Record<'a>) -> log::Record<'a> {
    let target = record.target();
    let room = match target.match_indices("::").nth(1) {
        Some((at, _)) => &target[..at],
        None => target,
    };
    log::Record::builder()
        .args(*record.args())
        .level(record.level())
        .target(room)
        .module_path(record.module_path())
        .file(record.file())
        .line(record.line())
        .build()
}

impl<L: log::Log> log::Log for LimitedLog<L> {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        self.inner.enabled(metadata)
    }

    fn log(&self, record: &log::Record) {
        let ours = record.target().starts_with(env!("CARGO_CRATE_NAME"));
        if ours {
            return self.inner.log(&in_its_room(record));
        }
        if record.level() > log::Level::Info || !self.enabled(record.metadata()) {
            return self.inner.log(record);
        }
        let crate_name = record.target().split("::").next().unwrap_or_default();
        let allowed = self
            .limits
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .entry((crate_name.to_owned(), record.level()))
            .or_default()
            .allow(Instant::now());
        if let Some(suppressed) = allowed {
            self.inner.log(
                &log::Record::builder()
                    .args(format_args!(
                        "{}{}",
                        record.args(),
                        suppressed_note(suppressed)
                    ))
                    .metadata(record.metadata().clone())
                    .module_path(record.module_path())
                    .file(record.file())
                    .line(record.line())
                    .build(),
            );
        }
    }

    fn flush(&self) {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use log::Log;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Kept(Mutex<Vec<String>>);

    impl Log for Kept {
        fn enabled(&self, _: &log::Metadata) -> bool {
            true
        }
        fn log(&self, record: &log::Record) {
            let line = format!("{} {}", record.target(), record.args());
            self.0.lock().unwrap().push(line);
        }
        fn flush(&self) {}
    }

    fn record(target: &str, level: log::Level, log: &impl Log) {
        log.log(
            &log::Record::builder()
                .target(target)
                .level(level)
                .args(format_args!("a line"))
                .build(),
        );
    }

    #[test]
    fn other_crates_lines_are_limited_per_crate_and_level_and_ours_pass() {
        let limited = LimitedLog::new(Kept::default());
        for _ in 0..50 {
            record("rustls::msgs::handshake", log::Level::Warn, &limited);
            record("rustls::common_state", log::Level::Warn, &limited);
            record("rustls::server", log::Level::Debug, &limited);
            record("kv_server::table", log::Level::Warn, &limited);
        }
        let kept = limited.inner.0.lock().unwrap();
        let count = |prefix: &str| kept.iter().filter(|l| l.starts_with(prefix)).count();
        // Within the second these 200 took: one rustls warning, every debug line (asked
        // for), and all of ours (limited where they are written).
        assert_eq!(count("rustls::msgs"), 1);
        assert_eq!(count("rustls::common_state"), 0);
        assert_eq!(count("rustls::server"), 50);
        assert_eq!(count("kv_server"), 50);
    }

    #[test]
    fn our_lines_name_the_room_that_wrote_them() {
        let limited = LimitedLog::new(Kept::default());
        record("kv_server::server::turn", log::Level::Info, &limited);
        record("kv_server::table", log::Level::Warn, &limited);
        let kept = limited.inner.0.lock().unwrap();
        assert_eq!(
            *kept,
            ["kv_server::server a line", "kv_server::table a line"]
        );
    }
}
