//! Time as the engines see it: milliseconds on a clock the driver chooses.
//!
//! Engines never read a clock; drivers pass `now` in. A test builds any
//! instant with [`Instant::from_millis`], so fixtures replay without sleeping.

use std::ops::{Add, Sub};
use std::time::Duration;

/// A moment on the driver's monotonic clock, in milliseconds from its origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Instant {
    millis: u64,
}

impl Instant {
    /// The driver's origin.
    pub const ZERO: Instant = Instant { millis: 0 };

    /// The instant `millis` milliseconds after the origin.
    pub const fn from_millis(millis: u64) -> Self {
        Instant { millis }
    }

    /// Milliseconds since the origin.
    pub const fn as_millis(self) -> u64 {
        self.millis
    }

    /// Time from `earlier` to `self`, zero if `earlier` is later.
    pub fn saturating_duration_since(self, earlier: Instant) -> Duration {
        Duration::from_millis(self.millis.saturating_sub(earlier.millis))
    }
}

impl Add<Duration> for Instant {
    type Output = Instant;
    fn add(self, d: Duration) -> Instant {
        let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        Instant {
            millis: self.millis.saturating_add(ms),
        }
    }
}

impl Sub<Duration> for Instant {
    type Output = Instant;
    fn sub(self, d: Duration) -> Instant {
        let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        Instant {
            millis: self.millis.saturating_sub(ms),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_saturates() {
        let t = Instant::from_millis(1500);
        assert_eq!((t + Duration::from_secs(2)).as_millis(), 3500);
        assert_eq!((t - Duration::from_secs(2)).as_millis(), 0);
        assert_eq!(
            t.saturating_duration_since(Instant::from_millis(2000)),
            Duration::ZERO
        );
        assert_eq!(
            t.saturating_duration_since(Instant::ZERO),
            Duration::from_millis(1500)
        );
    }
}
