//! Log lines as journald reads them. Under systemd, stderr is a stream to the journal
//! (`JOURNAL_STREAM` names its device and inode), which stamps each line with its own time
//! and takes a `<N>` prefix as the line's syslog priority (sd-daemon's convention): so
//! there each line goes out without a timestamp and with its priority, and
//! `journalctl -p warning` shows exactly the warnings. Anywhere else the usual format, with
//! timestamps, stays.

use std::io::Write;
use std::os::fd::AsRawFd;

/// Whether stderr is the journal stream `JOURNAL_STREAM` names: set, and naming the
/// device and inode stderr has now (a variable inherited by a process whose stderr was
/// redirected elsewhere does not count).
pub fn stderr_is_journal() -> bool {
    let Some(named) = std::env::var("JOURNAL_STREAM")
        .ok()
        .filter(|value| !value.is_empty())
    else {
        return false;
    };
    let Some((device, inode)) = named.split_once(':') else {
        return false;
    };
    // SAFETY: fstat fills a stat struct this function owns, for descriptor 2.
    let mut stat: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(std::io::stderr().as_raw_fd(), &mut stat) } != 0 {
        return false;
    }
    device.parse() == Ok(stat.st_dev) && inode.parse() == Ok(stat.st_ino)
}

/// Writes each record to stderr as `<N>[target] message`, N its syslog priority.
pub struct JournalLog {
    level: log::LevelFilter,
}

impl JournalLog {
    pub fn new(level: log::LevelFilter) -> JournalLog {
        JournalLog { level }
    }
}

/// The syslog priority of a level: err 3, warning 4, info 6, debug 7.
fn priority(level: log::Level) -> u8 {
    match level {
        log::Level::Error => 3,
        log::Level::Warn => 4,
        log::Level::Info => 6,
        log::Level::Debug | log::Level::Trace => 7,
    }
}

impl log::Log for JournalLog {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= self.level
    }

    fn log(&self, record: &log::Record) {
        if self.enabled(record.metadata()) {
            // One write per line, so that lines from a crash never interleave.
            let line = format!(
                "<{}>[{}] {}\n",
                priority(record.level()),
                record.target(),
                record.args()
            );
            let _ = std::io::stderr().lock().write_all(line.as_bytes());
        }
    }

    fn flush(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_map_to_syslog_priorities() {
        assert_eq!(priority(log::Level::Error), 3);
        assert_eq!(priority(log::Level::Warn), 4);
        assert_eq!(priority(log::Level::Info), 6);
        assert_eq!(priority(log::Level::Debug), 7);
    }
}
