//! A logger that keeps every record of the test process, so that tests of an in-process
//! server can check what it logged. Installed once per test binary, on first use.

use std::sync::{Mutex, OnceLock};

pub struct CapturedLog(Mutex<Vec<(log::Level, String)>>);

impl log::Log for CapturedLog {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, record: &log::Record<'_>) {
        self.0
            .lock()
            .unwrap()
            .push((record.level(), record.args().to_string()));
    }
    fn flush(&self) {}
}

impl CapturedLog {
    /// The messages logged at `level` so far.
    pub fn at(&self, level: log::Level) -> Vec<String> {
        let records = self.0.lock().unwrap();
        records
            .iter()
            .filter(|(at, _)| *at == level)
            .map(|(_, message)| message.clone())
            .collect()
    }

    /// Whether any message so far contains `needle`.
    pub fn contains(&self, needle: &str) -> bool {
        let records = self.0.lock().unwrap();
        records.iter().any(|(_, message)| message.contains(needle))
    }
}

/// The process's capturing logger, installed (at debug level) on first use.
pub fn captured_log() -> &'static CapturedLog {
    static LOG: OnceLock<&'static CapturedLog> = OnceLock::new();
    LOG.get_or_init(|| {
        let logger: &'static CapturedLog = Box::leak(Box::new(CapturedLog(Mutex::new(Vec::new()))));
        log::set_logger(logger).unwrap();
        log::set_max_level(log::LevelFilter::Debug);
        logger
    })
}
