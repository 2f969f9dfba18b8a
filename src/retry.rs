//! Retrying: one [`RetryPolicy`] (how many failures, the backoff between
//! attempts, its jitter seed) for every retry loop of the gateway: the
//! package download, the steps of an upgrade job (`[ota] max_retries`,
//! `retry_min_ms`, `retry_max_ms`), the pre-flight, `version_query`, the
//! MQTT reconnect. Who retries what, and what each layer leaves to the one
//! below, is the table in the [`crate::child::Child`] documentation.

use std::time::Duration;

use rand::{Rng, SeedableRng};

/// How a retry loop retries: at most `attempts` failures in a row are
/// tolerated (`u32::MAX`: until the caller's deadline), each followed by a
/// delay from a [`Backoff`] between `backoff_min` and `backoff_max`, its
/// jitter seeded by `seed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Failures tolerated in a row before giving up.
    pub attempts: u32,
    /// First delay.
    pub backoff_min: Duration,
    /// Largest delay.
    pub backoff_max: Duration,
    /// Seed of the jitter (a job id, a process id): loops that fail
    /// together do not retry in lock step.
    pub seed: u64,
}

impl RetryPolicy {
    /// Up to `attempts` failures, delays from `min` doubling to `max`, seed 0.
    pub fn new(attempts: u32, min: Duration, max: Duration) -> Self {
        RetryPolicy {
            attempts,
            backoff_min: min,
            backoff_max: max,
            seed: 0,
        }
    }

    /// Retries until the caller's deadline, with these delays.
    pub fn until_deadline(min: Duration, max: Duration) -> Self {
        RetryPolicy::new(u32::MAX, min, max)
    }

    /// The same policy with its jitter seeded by `seed`.
    pub fn seeded(self, seed: u64) -> Self {
        RetryPolicy { seed, ..self }
    }

    /// Whether `failures` failures in a row are more than it tolerates.
    pub fn exhausted(&self, failures: u32) -> bool {
        failures > self.attempts
    }

    /// A fresh backoff for one retry loop.
    pub fn backoff(&self) -> Backoff {
        Backoff::new(self.backoff_min, self.backoff_max, self.seed)
    }
}

/// Exponential backoff from `min` doubling to `max`, with "equal jitter": each
/// delay is drawn uniformly from the upper half of the current step, so that
/// gateways that lost the same uplink do not come back in lock step, yet none
/// retries sooner than `min`.
#[derive(Debug)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    attempt: u32,
    rng: rand::rngs::SmallRng,
}

impl Backoff {
    /// A backoff between `min` and `max`, its jitter seeded by `seed`.
    pub fn new(min: Duration, max: Duration, seed: u64) -> Self {
        Backoff {
            min,
            max,
            attempt: 0,
            rng: rand::rngs::SmallRng::seed_from_u64(seed),
        }
    }

    /// The delay before the next attempt; each call doubles the step.
    pub fn next_delay(&mut self) -> Duration {
        let step = self
            .min
            .saturating_mul(1u32 << self.attempt.min(20))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        self.jitter(step)
    }

    /// The delay at the slowest step (for failures a retry will not fix
    /// soon, such as refused credentials).
    pub fn slowest(&mut self) -> Duration {
        self.jitter(self.max)
    }

    fn jitter(&mut self, step: Duration) -> Duration {
        let half = step / 2;
        let extra = self.rng.random_range(0..=half.as_millis() as u64);
        (half + Duration::from_millis(extra)).max(self.min)
    }

    /// Starts again from `min` (after a success).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_policy_counts_failures_and_seeds_its_backoff() {
        let p = RetryPolicy::new(2, Duration::from_secs(1), Duration::from_secs(4)).seeded(9);
        assert!(!p.exhausted(2) && p.exhausted(3));
        assert!(!RetryPolicy::until_deadline(p.backoff_min, p.backoff_max).exhausted(u32::MAX));
        let (mut a, mut b) = (p.backoff(), p.backoff());
        let da: Vec<_> = (0..5).map(|_| a.next_delay()).collect();
        let db: Vec<_> = (0..5).map(|_| b.next_delay()).collect();
        assert_eq!(da, db, "the same seed, the same delays");
        assert!(da
            .iter()
            .all(|d| *d >= p.backoff_min && *d <= p.backoff_max));
    }

    #[test]
    fn grows_to_the_cap_and_resets() {
        let (min, max) = (Duration::from_secs(1), Duration::from_secs(30));
        let mut b = Backoff::new(min, max, 7);
        let delays: Vec<_> = (0..10).map(|_| b.next_delay()).collect();
        for (i, d) in delays.iter().enumerate() {
            let step = min.saturating_mul(1 << i).min(max);
            assert!(*d >= (step / 2).max(min) && *d <= step, "{i}: {d:?}");
        }
        assert!(delays[9] >= Duration::from_secs(15));
        b.reset();
        assert!(b.next_delay() <= Duration::from_secs(1));
        let s = b.slowest();
        assert!(s >= Duration::from_secs(15) && s <= max);
    }
}
