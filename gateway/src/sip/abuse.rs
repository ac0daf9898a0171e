//! Brute-force protection: too many failed authentications from one source address within a
//! sliding window block that address for a while. Memory is bounded, so a flood of addresses
//! cannot grow the table without limit.

use chrono::{DateTime, Duration, Utc};
use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;

/// How strict the guard is; every value comes from configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AbuseConfig {
    /// This many failures within `window` block the address.
    pub max_failures: usize,
    pub window: Duration,
    pub block_for: Duration,
    /// The most addresses tracked at once.
    pub max_tracked_sources: usize,
}

impl Default for AbuseConfig {
    fn default() -> Self {
        AbuseConfig {
            max_failures: 10,
            window: Duration::minutes(5),
            block_for: Duration::minutes(15),
            max_tracked_sources: 100_000,
        }
    }
}

#[derive(Debug, Default)]
struct Source {
    /// Failure times within the window, oldest first; never longer than `max_failures`.
    failures: VecDeque<DateTime<Utc>>,
    blocked_until: Option<DateTime<Utc>>,
}

impl Source {
    fn is_blocked(&self, now: DateTime<Utc>) -> bool {
        self.blocked_until.is_some_and(|until| now < until)
    }

    /// Whether the entry still carries information at `now`.
    fn is_live(&self, now: DateTime<Utc>, window: Duration) -> bool {
        self.is_blocked(now) || self.failures.back().is_some_and(|last| now - *last < window)
    }
}

/// Failure counts and blocks per source address.
#[derive(Debug)]
pub struct AbuseGuard {
    config: AbuseConfig,
    sources: HashMap<IpAddr, Source>,
}

impl AbuseGuard {
    pub fn new(config: AbuseConfig) -> AbuseGuard {
        AbuseGuard {
            config,
            sources: HashMap::new(),
        }
    }

    /// Whether requests from `ip` are to be dropped at `now`.
    pub fn is_blocked(&self, ip: IpAddr, now: DateTime<Utc>) -> bool {
        self.sources.get(&ip).is_some_and(|source| source.is_blocked(now))
    }

    /// Counts a failed authentication; returns whether `ip` is now blocked.
    pub fn record_failure(&mut self, ip: IpAddr, now: DateTime<Utc>) -> bool {
        if !self.sources.contains_key(&ip) {
            self.make_room(now);
        }
        let config = &self.config;
        let source = self.sources.entry(ip).or_default();
        if source.is_blocked(now) {
            return true;
        }
        while source
            .failures
            .front()
            .is_some_and(|first| now - *first >= config.window)
        {
            source.failures.pop_front();
        }
        source.failures.push_back(now);
        if source.failures.len() >= config.max_failures.max(1) {
            source.failures.clear();
            source.blocked_until = Some(now + config.block_for);
            return true;
        }
        false
    }

    /// How many addresses are tracked (for metrics and tests).
    pub fn tracked(&self) -> usize {
        self.sources.len()
    }

    /// Forgets entries that no longer matter; when still full, forgets the unblocked entry
    /// with the oldest failure, or failing that the block that ends soonest.
    fn make_room(&mut self, now: DateTime<Utc>) {
        let capacity = self.config.max_tracked_sources.max(1);
        if self.sources.len() < capacity {
            return;
        }
        let window = self.config.window;
        self.sources.retain(|_, source| source.is_live(now, window));
        if self.sources.len() < capacity {
            return;
        }
        let victim = self
            .sources
            .iter()
            .min_by_key(|(_, source)| {
                (
                    source.is_blocked(now),
                    source.blocked_until,
                    source.failures.back().copied(),
                )
            })
            .map(|(ip, _)| *ip);
        if let Some(ip) = victim {
            self.sources.remove(&ip);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_700_000_000 + secs, 0).single().unwrap()
    }

    fn config() -> AbuseConfig {
        AbuseConfig {
            max_failures: 3,
            window: Duration::seconds(60),
            block_for: Duration::seconds(600),
            max_tracked_sources: 4,
        }
    }

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([192, 0, 2, n])
    }

    #[test]
    fn n_failures_in_the_window_block_for_the_configured_time() {
        let mut guard = AbuseGuard::new(config());
        assert!(!guard.record_failure(ip(1), at(0)));
        assert!(!guard.record_failure(ip(1), at(10)));
        assert!(guard.record_failure(ip(1), at(20)));
        assert!(guard.is_blocked(ip(1), at(619)));
        assert!(!guard.is_blocked(ip(1), at(620)));
        assert!(!guard.is_blocked(ip(2), at(30)), "other addresses are not affected");
    }

    #[test]
    fn failures_outside_the_window_do_not_count() {
        let mut guard = AbuseGuard::new(config());
        guard.record_failure(ip(1), at(0));
        guard.record_failure(ip(1), at(30));
        // The first failure has left the 60 s window by now.
        assert!(!guard.record_failure(ip(1), at(61)));
        assert!(guard.record_failure(ip(1), at(62)));
    }

    #[test]
    fn memory_is_bounded_and_blocks_survive_eviction_of_quiet_sources() {
        let mut guard = AbuseGuard::new(config());
        for _ in 0..3 {
            guard.record_failure(ip(1), at(0));
        }
        for n in 2..50 {
            guard.record_failure(ip(n), at(1));
        }
        assert!(guard.tracked() <= 4);
        assert!(guard.is_blocked(ip(1), at(2)));
    }
}
