//! Capped exponential backoff with jitter, for every retry loop.

use std::time::Duration;

use rand::{Rng, SeedableRng};

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
