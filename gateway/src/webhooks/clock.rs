//! Time and randomness behind small traits, so the retry schedule runs on a virtual clock
//! with a seeded jitter in tests, and on the system clock in the binary.

use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use tokio::sync::watch;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What the dispatcher knows of time.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> DateTime<Utc>;
    /// Resolves once `now() >= deadline`.
    fn sleep_until(&self, deadline: DateTime<Utc>) -> BoxFuture<'_, ()>;
}

/// The real clock (the binary's).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    #[allow(clippy::disallowed_methods)] // The dispatcher's shell is where the clock is read.
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }

    fn sleep_until(&self, deadline: DateTime<Utc>) -> BoxFuture<'_, ()> {
        let wait = (deadline - self.now()).to_std().unwrap_or_default();
        Box::pin(tokio::time::sleep(wait))
    }
}

/// A virtual clock that moves only when told to: retry schedules are tested on it.
pub struct ManualClock {
    now: watch::Sender<DateTime<Utc>>,
}

impl ManualClock {
    pub fn new(start: DateTime<Utc>) -> Self {
        ManualClock {
            now: watch::Sender::new(start),
        }
    }

    pub fn advance(&self, by: chrono::Duration) {
        self.now.send_modify(|now| *now += by);
    }

    pub fn set(&self, to: DateTime<Utc>) {
        self.now.send_replace(to);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.now.borrow()
    }

    fn sleep_until(&self, deadline: DateTime<Utc>) -> BoxFuture<'_, ()> {
        let mut rx = self.now.subscribe();
        Box::pin(async move {
            // The sender lives as long as `self`, which this future borrows.
            let _ = rx.wait_for(|now| *now >= deadline).await;
        })
    }
}

/// A source of jitter: a number in `0..bound` (0 when `bound` is 0).
pub trait Jitter: Send + 'static {
    fn below(&mut self, bound: u64) -> u64;
}

/// SplitMix64: small, fast, and the same sequence from the same seed.
#[derive(Debug, Clone)]
pub struct SeededJitter {
    state: u64,
}

impl SeededJitter {
    pub fn new(seed: u64) -> Self {
        SeededJitter { state: seed }
    }
}

impl Jitter for SeededJitter {
    fn below(&mut self, bound: u64) -> u64 {
        if bound == 0 {
            return 0;
        }
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        z % bound
    }
}

/// A jitter shared between concurrent attempts.
pub struct SharedJitter(Mutex<Box<dyn Jitter>>);

impl SharedJitter {
    pub fn new(jitter: impl Jitter) -> Self {
        SharedJitter(Mutex::new(Box::new(jitter)))
    }

    pub fn below(&self, bound: u64) -> u64 {
        // A poisoned lock only means another attempt panicked mid-draw; the state is a number.
        let mut guard = self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        guard.below(bound)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_jitter_repeats_and_stays_below_its_bound() {
        let mut a = SeededJitter::new(42);
        let mut b = SeededJitter::new(42);
        for bound in [0, 1, 2, 10, 1000, u64::MAX] {
            let x = a.below(bound);
            assert_eq!(x, b.below(bound));
            assert!(bound == 0 && x == 0 || x < bound);
        }
    }

    #[tokio::test]
    async fn a_manual_clock_wakes_sleepers_only_when_moved_past_the_deadline() {
        let start = DateTime::<Utc>::from_timestamp(1_700_000_000, 0).unwrap();
        let clock = ManualClock::new(start);
        let deadline = start + chrono::Duration::seconds(10);
        let mut sleep = clock.sleep_until(deadline);
        assert!(futures::FutureExt::now_or_never(&mut sleep).is_none());
        clock.advance(chrono::Duration::seconds(9));
        assert!(futures::FutureExt::now_or_never(&mut sleep).is_none());
        clock.advance(chrono::Duration::seconds(1));
        sleep.await;
        assert_eq!(clock.now(), deadline);
    }
}
