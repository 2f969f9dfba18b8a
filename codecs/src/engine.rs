//! What every engine a driver runs over a byte link has in common, so one
//! driver loop runs any of them: the SMP upload, activation and state read
//! (through [`crate::smp::serial::Console`] on a serial line) and the framed
//! profiles' engine.
//!
//! Engines never hold an image: they ask for one range at a time
//! ([`Engine::poll_read`]) and take the bytes with [`Engine::handle_data`],
//! so the driver reads the file however suits it (a window, `pread`, a
//! slice in tests) and memory does not grow with the image. Any engine that
//! sends an image by offset can take its bytes this way (a CoAP Block1 push
//! included).
//!
//! # Driver call order
//! 1. Create the engine with `now`; its first request is queued.
//! 2. Loop:
//!    1. while [`Engine::poll_read`] gives a range, read it and pass it to
//!       [`Engine::handle_data`];
//!    2. drain [`Engine::poll_event`]. A caller may stop at an event: the
//!       frames queued with it are not written yet (a framed `deliver` stops
//!       at `Verified`, before `activate` leaves);
//!    3. stop if [`Engine::is_finished`];
//!    4. write every [`Engine::poll_transmit`] buffer whole (`write_all`);
//!    5. wait for input or until [`Engine::poll_timeout`], then call
//!       [`Engine::handle_input`] or [`Engine::handle_timeout`] with the
//!       current time. An engine that is not finished always has a timeout
//!       (it waits on an answer, a backoff or a reboot).
//!
//! What an input and an output are is the engine's unit on its wire: whole
//! SMP messages for the SMP engines (a [`crate::smp::serial::Console`]
//! turns them into serial lines and back), line bytes for the framed engine.

use crate::time::Instant;

/// Image bytes an engine needs before it can send again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadRequest {
    /// Offset in the image.
    pub offset: u64,
    /// Number of bytes; always within the image (engines never ask past
    /// its length).
    pub len: usize,
}

/// Bytes given to [`Engine::handle_data`] that were not asked for (a driver
/// bug); the engine's state is unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DataError {
    /// No read is outstanding.
    #[error("no image data was requested")]
    NotRequested,
    /// Another range was requested.
    #[error(
        "requested {} bytes at {}, got {len} at {offset}",
        requested.len,
        requested.offset
    )]
    WrongRange {
        /// The outstanding request.
        requested: ReadRequest,
        /// Given offset.
        offset: u64,
        /// Given length.
        len: usize,
    },
}

impl DataError {
    /// Checks `offset`/`len` against the outstanding request `want`.
    pub fn check(want: Option<ReadRequest>, offset: u64, len: usize) -> Result<(), DataError> {
        let requested = want.ok_or(DataError::NotRequested)?;
        if requested.offset != offset || requested.len != len {
            return Err(DataError::WrongRange {
                requested,
                offset,
                len,
            });
        }
        Ok(())
    }
}

/// A sans-IO engine; see the module doc for the call order.
pub trait Engine {
    /// What the engine reports.
    type Event;

    /// Input from the peer, in the engine's wire unit (module doc).
    fn handle_input(&mut self, input: &[u8], now: Instant);

    /// Call when `now` reaches [`Engine::poll_timeout`]; earlier does
    /// nothing.
    fn handle_timeout(&mut self, now: Instant);

    /// The bytes of the outstanding [`Engine::poll_read`] request.
    fn handle_data(&mut self, offset: u64, data: &[u8], now: Instant) -> Result<(), DataError> {
        let _ = now;
        DataError::check(None, offset, data.len())
    }

    /// The image range the engine needs before it can send again; it stays
    /// outstanding (returned again) until [`Engine::handle_data`] answers
    /// it. Engines that send no image never ask.
    #[must_use]
    fn poll_read(&self) -> Option<ReadRequest> {
        None
    }

    /// The next event.
    #[must_use]
    fn poll_event(&mut self) -> Option<Self::Event>;

    /// The next output to write, whole.
    #[must_use]
    fn poll_transmit(&mut self) -> Option<Vec<u8>>;

    /// When to call [`Engine::handle_timeout`].
    #[must_use]
    fn poll_timeout(&self) -> Option<Instant>;

    /// Whether the engine ended (done or failed); nothing more comes out.
    fn is_finished(&self) -> bool;

    /// Requests sent again so far (timeouts, rewinds, restarts, busy
    /// replies); a counter for metrics.
    fn retries(&self) -> u64 {
        0
    }

    /// For protocols that number requests per line (SMP): the number the
    /// next request on this line should carry. A driver keeps it across
    /// engines on one line, so a late answer to an abandoned engine never
    /// matches the next engine's request.
    fn next_seq(&self) -> Option<u8> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_is_checked_against_the_request() {
        let want = ReadRequest { offset: 10, len: 4 };
        assert_eq!(DataError::check(Some(want), 10, 4), Ok(()));
        assert_eq!(DataError::check(None, 10, 4), Err(DataError::NotRequested));
        let e = DataError::check(Some(want), 10, 3).unwrap_err();
        assert_eq!(e.to_string(), "requested 4 bytes at 10, got 3 at 10");
    }
}
