//! The daemon's one clock.
//!
//! Timers and intervals use tokio's [`Instant`] (so `tokio::time::pause()`
//! moves them); wall-clock time, which the journal, the reports' event
//! times, the jobs' deadlines and the package tokens' expiry need, comes
//! from [`now_unix`] and [`now_system`]. Nothing else in the daemon's
//! orchestration (platform, package, child, ota) reads `SystemTime::now()`
//! or `std::time::Instant::now()`; `tests/layering.rs` checks it.
//!
//! The wall-clock source is injected once per process with [`install`]:
//! - [`Source::System`] (the default, the daemon): the system clock, so a
//!   gateway that boots without a real-time clock and is set by NTP later
//!   still stamps its journal and reports with the true time.
//! - [`Source::Tokio`] (tests, simulations): wall-clock time follows tokio's
//!   clock from the moment of installation, so a test that pauses tokio's
//!   time and advances it by an hour sees every orchestration clock (job
//!   machine, download deadlines, timers) an hour later, and nothing else.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use tokio::time::Instant;

/// Where wall-clock time comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The system clock.
    System,
    /// The system clock at installation plus the time tokio's clock moved
    /// since (which `tokio::time::pause()` and `advance()` control).
    Tokio,
}

static FOLLOW_TOKIO: AtomicBool = AtomicBool::new(false);

/// The wall-clock time and tokio's instant at one moment, for
/// [`Source::Tokio`]. Tokio's instants are `std` instants underneath, so one
/// anchor serves every runtime in the process, paused or not.
fn anchor() -> &'static (SystemTime, std::time::Instant) {
    static ANCHOR: OnceLock<(SystemTime, std::time::Instant)> = OnceLock::new();
    ANCHOR.get_or_init(|| (SystemTime::now(), std::time::Instant::now()))
}

/// Sets the wall-clock source for the whole process.
pub fn install(source: Source) {
    if source == Source::Tokio {
        anchor();
    }
    FOLLOW_TOKIO.store(source == Source::Tokio, Ordering::Relaxed);
}

/// The installed source.
pub fn source() -> Source {
    if FOLLOW_TOKIO.load(Ordering::Relaxed) {
        Source::Tokio
    } else {
        Source::System
    }
}

/// Now, on tokio's clock: for timers, timeouts and intervals.
pub fn now() -> Instant {
    Instant::now()
}

/// Now, as wall-clock time from the installed [`Source`].
pub fn now_system() -> SystemTime {
    match source() {
        Source::System => SystemTime::now(),
        Source::Tokio => {
            let (wall, at) = *anchor();
            // A paused runtime's clock may stand before the anchor.
            let now = Instant::now().into_std();
            match now.checked_duration_since(at) {
                Some(after) => wall + after,
                None => wall - at.duration_since(now),
            }
        }
    }
}

/// Now, in whole seconds since the Unix epoch (0 before it).
pub fn now_unix() -> i64 {
    to_unix(now_system())
}

/// `t` in whole seconds since the Unix epoch (0 before it).
pub fn to_unix(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Unix seconds `t` as a `SystemTime` (the epoch for negative values).
pub fn from_unix(t: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(u64::try_from(t).unwrap_or(0))
}

/// How long from now until wall-clock time `t` (zero once it passed).
pub fn until(t: SystemTime) -> Duration {
    t.duration_since(now_system()).unwrap_or(Duration::ZERO)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn tokio_source_follows_paused_time() {
        install(Source::Tokio);
        let (t0, u0) = (now(), now_system());
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert_eq!(now() - t0, Duration::from_secs(3600));
        assert_eq!(
            now_system().duration_since(u0).unwrap(),
            Duration::from_secs(3600)
        );
        assert_eq!(
            until(u0 + Duration::from_secs(7200)),
            Duration::from_secs(3600)
        );
        assert_eq!(until(u0), Duration::ZERO);
    }

    #[test]
    fn unix_round_trips() {
        assert_eq!(to_unix(from_unix(1_700_000_000)), 1_700_000_000);
        assert_eq!(from_unix(-5), UNIX_EPOCH);
    }
}
