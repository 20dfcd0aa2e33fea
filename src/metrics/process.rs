//! The usual `process_*` metrics of a Linux process, read from the kernel at scrape time:
//! CPU time, resident and virtual memory, open and allowed descriptors, start time.
//! Anything unreadable is left out of the scrape rather than reported as zero.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct ProcessStats {
    cpu_seconds: Option<f64>,
    resident_bytes: Option<u64>,
    virtual_bytes: Option<u64>,
    open_fds: Option<u64>,
    max_fds: Option<u64>,
    start_time: Option<SystemTime>,
}

impl ProcessStats {
    pub fn read() -> ProcessStats {
        let page = page_size();
        let statm = std::fs::read_to_string("/proc/self/statm").ok();
        let statm_field = |index: usize| -> Option<u64> {
            statm
                .as_deref()?
                .split_whitespace()
                .nth(index)?
                .parse::<u64>()
                .ok()
                .map(|pages| pages * page)
        };
        ProcessStats {
            cpu_seconds: cpu_seconds(),
            resident_bytes: statm_field(1),
            virtual_bytes: statm_field(0),
            open_fds: std::fs::read_dir("/proc/self/fd")
                .ok()
                .map(|dir| dir.count() as u64),
            max_fds: Some(crate::config::open_file_limit()),
            start_time: start_time(),
        }
    }

    /// Hands each readable metric to `emit(name, help, kind, value)`.
    pub fn encode(&self, emit: &mut impl FnMut(&str, &str, &str, f64)) {
        if let Some(seconds) = self.cpu_seconds {
            emit(
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds.",
                "counter",
                seconds,
            );
        }
        let gauges = [
            (
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
                self.resident_bytes.map(|b| b as f64),
            ),
            (
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes.",
                self.virtual_bytes.map(|b| b as f64),
            ),
            (
                "process_open_fds",
                "Number of open file descriptors.",
                self.open_fds.map(|n| n as f64),
            ),
            (
                "process_max_fds",
                "Maximum number of open file descriptors.",
                self.max_fds.map(|n| n as f64),
            ),
            (
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds.",
                self.start_time
                    .and_then(|t| t.duration_since(UNIX_EPOCH).ok().map(|d| d.as_secs_f64())),
            ),
        ];
        for (name, help, value) in gauges {
            if let Some(value) = value {
                emit(name, help, "gauge", value);
            }
        }
    }
}

fn page_size() -> u64 {
    // SAFETY: sysconf reads a constant of the system.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(size).unwrap_or(4096)
}

fn cpu_seconds() -> Option<f64> {
    // SAFETY: getrusage only writes into the struct we own.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return None;
    }
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Some(seconds(usage.ru_utime) + seconds(usage.ru_stime))
}

/// Boot time (`btime` of /proc/stat) plus the process's start in clock ticks after boot
/// (field 22 of /proc/self/stat).
fn start_time() -> Option<SystemTime> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let boot: u64 = stat
        .lines()
        .find_map(|line| line.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    let own = std::fs::read_to_string("/proc/self/stat").ok()?;
    let after_name = &own[own.rfind(')')? + 2..];
    let ticks: u64 = after_name.split_whitespace().nth(19)?.parse().ok()?;
    // SAFETY: sysconf reads a constant of the system.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let per_second = u64::try_from(per_second).ok().filter(|&n| n > 0)?;
    let since_boot = Duration::from_secs_f64(ticks as f64 / per_second as f64);
    Some(UNIX_EPOCH + Duration::from_secs(boot) + since_boot)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let stats = ProcessStats::read();
        assert!(stats.resident_bytes.unwrap() > 0);
        assert!(stats.open_fds.unwrap() >= 3);
        assert!(stats.cpu_seconds.is_some());
        let started = stats.start_time.unwrap();
        let age = SystemTime::now().duration_since(started).unwrap();
        assert!(age < Duration::from_secs(3600), "started {age:?} ago");
    }
}
