//! The latency histogram: fixed buckets, so that recording costs no allocation and the
//! percentiles are exact enough whatever the length of the run.

use std::time::Duration;

/// 1 us buckets below 100 ms, 100 us buckets up to 10 s, then one overflow bucket: a fixed
/// 1.6 MB however long the run.
pub struct Histogram {
    buckets: Vec<u64>,
    overflow: u64,
    max_us: u64,
    count: u64,
}

impl Histogram {
    const FINE_US: u64 = 100_000;
    const COARSE_STEP_US: u64 = 100;
    const LIMIT_US: u64 = 10_000_000;

    pub fn new() -> Self {
        let buckets = Self::FINE_US + (Self::LIMIT_US - Self::FINE_US) / Self::COARSE_STEP_US;
        Histogram {
            buckets: vec![0; buckets as usize],
            overflow: 0,
            max_us: 0,
            count: 0,
        }
    }

    pub fn record(&mut self, latency: Duration) {
        let us = latency.as_micros() as u64;
        self.max_us = self.max_us.max(us);
        self.count += 1;
        let index = if us < Self::FINE_US {
            us
        } else {
            Self::FINE_US + (us - Self::FINE_US) / Self::COARSE_STEP_US
        };
        match self.buckets.get_mut(index as usize) {
            Some(bucket) => *bucket += 1,
            None => self.overflow += 1,
        }
    }

    /// The latency below which `quantile` of the samples fall, in microseconds.
    pub fn percentile(&self, quantile: f64) -> u64 {
        let rank = ((self.count as f64) * quantile).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (index, &n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                let index = index as u64;
                return if index < Self::FINE_US {
                    index
                } else {
                    Self::FINE_US + (index - Self::FINE_US) * Self::COARSE_STEP_US
                };
            }
        }
        self.max_us
    }

    pub fn max_us(&self) -> u64 {
        self.max_us
    }
}
