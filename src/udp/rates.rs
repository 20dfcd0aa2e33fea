//! Rates of answers: a token bucket per source address (`--udp-rate-per-source`), kept in a
//! bounded table, and one for the whole server (`--udp-rate`), so that neither one sender
//! nor any mix of forged senders can make the server spend more than a set share of a core
//! sending.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// A token bucket per source address: `rate` datagrams a second, and bursts of as many.
/// The table is bounded: when it is full, sources idle long enough to have a full bucket
/// (which is what a new entry would hold) are forgotten; if none is, new sources share one
/// bucket until some are, so that forged sources can slow newcomers down but never make
/// the server send more than the rate allows for each tracked source and once more for all
/// the others together.
pub(crate) struct SourceRates {
    rate: u32,
    capacity: usize,
    buckets: HashMap<IpAddr, Bucket>,
    overflow: Bucket,
    /// When a full table was last searched for idle sources: at most once a second.
    last_sweep: Option<Instant>,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Bucket {
    tokens: f64,
    updated: Instant,
}

impl Bucket {
    pub fn full(rate: u32, now: Instant) -> Bucket {
        Bucket {
            tokens: f64::from(rate),
            updated: now,
        }
    }

    fn refill(&mut self, rate: u32, now: Instant) {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * f64::from(rate)).min(f64::from(rate));
        self.updated = now;
    }

    pub fn take(&mut self, rate: u32, now: Instant) -> bool {
        self.refill(rate, now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Idle long enough that its bucket is full again.
    fn is_refilled(&self, rate: u32, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens + elapsed * f64::from(rate) >= f64::from(rate)
    }
}

impl SourceRates {
    pub fn new(rate: u32, capacity: usize) -> SourceRates {
        let now = Instant::now();
        SourceRates {
            rate,
            capacity,
            buckets: HashMap::new(),
            overflow: Bucket::full(rate, now),
            last_sweep: None,
        }
    }

    /// Whether one more datagram from `source` is within its rate; takes it if so. An IPv4
    /// source has one bucket however its address is written (`::ffff:a.b.c.d` on an IPv6
    /// socket).
    pub fn admit(&mut self, source: IpAddr, now: Instant) -> bool {
        let source = source.to_canonical();
        let rate = self.rate;
        if let Some(bucket) = self.buckets.get_mut(&source) {
            return bucket.take(rate, now);
        }
        if self.buckets.len() >= self.capacity {
            self.sweep(now);
        }
        if self.buckets.len() >= self.capacity {
            return self.overflow.take(rate, now);
        }
        let mut bucket = Bucket::full(rate, now);
        let admitted = bucket.take(rate, now);
        self.buckets.insert(source, bucket);
        admitted
    }

    /// Forgets sources whose buckets are full again, at most once a second.
    fn sweep(&mut self, now: Instant) {
        if self
            .last_sweep
            .is_some_and(|last| now.saturating_duration_since(last) < Duration::from_secs(1))
        {
            return;
        }
        self.last_sweep = Some(now);
        let rate = self.rate;
        self.buckets
            .retain(|_, bucket| !bucket.is_refilled(rate, now));
        if self.buckets.is_empty() {
            self.buckets.shrink_to_fit();
        }
    }

    /// Sources tracked now.
    pub fn tracked(&self) -> usize {
        self.buckets.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(n: u32) -> IpAddr {
        IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + n))
    }

    #[test]
    fn a_source_gets_its_rate_in_bursts_and_over_time() {
        let start = Instant::now();
        let mut rates = SourceRates::new(10, 100);
        let admitted = (0..25).filter(|_| rates.admit(ip(1), start)).count();
        assert_eq!(admitted, 10, "a burst of one second's worth");
        // Others are not slowed by it.
        assert!(rates.admit(ip(2), start));
        // Half a second later, five more.
        let later = start + Duration::from_millis(500);
        let admitted = (0..25).filter(|_| rates.admit(ip(1), later)).count();
        assert_eq!(admitted, 5);
    }

    #[test]
    fn a_full_table_forgets_refilled_sources_and_shares_one_rate_otherwise() {
        let start = Instant::now();
        let mut rates = SourceRates::new(10, 4);
        for n in 0..4 {
            assert!(rates.admit(ip(n), start));
        }
        // Full of sources that are not refilled: newcomers share the overflow bucket.
        let admitted = (100..120).filter(|&n| rates.admit(ip(n), start)).count();
        assert_eq!(admitted, 10);
        assert_eq!(rates.tracked(), 4);
        // A second later all are refilled: the table makes room.
        let later = start + Duration::from_secs(2);
        assert!(rates.admit(ip(200), later));
        assert_eq!(rates.tracked(), 1);
    }

    #[test]
    fn a_mapped_source_shares_its_ipv4_bucket() {
        let now = Instant::now();
        let mut rates = SourceRates::new(2, 100);
        assert!(rates.admit("10.0.0.1".parse().unwrap(), now));
        assert!(rates.admit("::ffff:10.0.0.1".parse().unwrap(), now));
        assert!(!rates.admit("::ffff:10.0.0.1".parse().unwrap(), now));
        assert_eq!(rates.tracked(), 1);
    }
}
