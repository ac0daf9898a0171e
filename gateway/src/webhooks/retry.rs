//! The retry schedule: exponential backoff from a base, capped, with "equal jitter" (half the
//! delay fixed, half drawn), bounded in attempts. Pure, so it is tested without a clock.

use std::time::Duration;

use super::clock::SharedJitter;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The delay after the first failed attempt (before jitter).
    pub base: Duration,
    /// No delay exceeds this.
    pub cap: Duration,
    /// After this many failed attempts a delivery is `failed` and never tried again.
    pub max_attempts: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            base: Duration::from_secs(5),
            cap: Duration::from_secs(3600),
            max_attempts: 12,
        }
    }
}

/// What follows a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterFailure {
    RetryIn(Duration),
    GiveUp,
}

impl RetryPolicy {
    /// The backoff before jitter after `failed_attempts` failures (1 = the first failure):
    /// `min(cap, base * 2^(failed_attempts - 1))`.
    pub fn backoff(&self, failed_attempts: u32) -> Duration {
        let exponent = failed_attempts.saturating_sub(1).min(62);
        let factor = 1u64 << exponent;
        let base_ms = u64::try_from(self.base.as_millis()).unwrap_or(u64::MAX);
        let cap_ms = u64::try_from(self.cap.as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(base_ms.saturating_mul(factor).min(cap_ms))
    }

    /// After `failed_attempts` failures: give up, or wait `backoff/2 + jitter(0..=backoff/2)`.
    pub fn after_failure(&self, failed_attempts: u32, jitter: &SharedJitter) -> AfterFailure {
        if failed_attempts >= self.max_attempts {
            return AfterFailure::GiveUp;
        }
        let backoff_ms = u64::try_from(self.backoff(failed_attempts).as_millis()).unwrap_or(u64::MAX);
        let half = backoff_ms / 2;
        let drawn = jitter.below((backoff_ms - half).saturating_add(1));
        AfterFailure::RetryIn(Duration::from_millis(half + drawn))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::webhooks::clock::SeededJitter;

    #[test]
    fn backoff_doubles_up_to_the_cap_and_attempts_are_bounded() {
        let policy = RetryPolicy {
            base: Duration::from_secs(1),
            cap: Duration::from_secs(10),
            max_attempts: 6,
        };
        let backoffs: Vec<u64> = (1..=6).map(|n| policy.backoff(n).as_secs()).collect();
        assert_eq!(backoffs, vec![1, 2, 4, 8, 10, 10]);
        assert_eq!(policy.backoff(1000), Duration::from_secs(10));

        let jitter = SharedJitter::new(SeededJitter::new(7));
        let replay = SharedJitter::new(SeededJitter::new(7));
        for failed in 1..6 {
            let AfterFailure::RetryIn(delay) = policy.after_failure(failed, &jitter) else {
                panic!("attempt {failed} must be retried");
            };
            let backoff = policy.backoff(failed);
            assert!(
                delay >= backoff / 2 && delay <= backoff,
                "{delay:?} outside [{:?}, {backoff:?}]",
                backoff / 2
            );
            assert_eq!(
                policy.after_failure(failed, &replay),
                AfterFailure::RetryIn(delay),
                "same seed, same schedule"
            );
        }
        assert_eq!(policy.after_failure(6, &jitter), AfterFailure::GiveUp);
    }
}
