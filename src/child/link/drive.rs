//! The one loop that runs any [`Engine`] on a serial line (SMP through
//! [`otabridge_codecs::smp::serial::Console`], framed profiles directly), in
//! the call order `codecs/src/engine.rs` fixes: serve its image reads, hand
//! its events out, write what it transmits, then wait for the line or its
//! timer. Like quinn's `ConnectionDriver` it decides nothing: retries,
//! timeouts and verdicts are the engine's.

use std::ops::ControlFlow;

use otabridge_codecs::engine::{DataError, Engine};
use otabridge_codecs::time::Instant;

use super::image::{ImageError, ImageFile};
use super::port::{Link, PortError};

/// Why the loop stopped without the engine's verdict.
#[derive(Debug, thiserror::Error)]
pub enum DriveError {
    /// The line failed.
    #[error(transparent)]
    Port(#[from] PortError),
    /// The package could not be read.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// The engine refused the bytes it asked for (a driver bug).
    #[error("image data: {0}")]
    Data(#[from] DataError),
    /// The engine asked for image data, but this operation has no image.
    #[error("the engine asked for image data outside a delivery")]
    NoImage,
    /// The engine neither finished nor armed a timer: it would wait forever.
    #[error("engine idle without a timer")]
    Idle,
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The caller stopped at an event.
    Stopped,
    /// The engine finished.
    Finished {
        /// It finished on a timer (a request went unanswered to the end),
        /// not on something the child said.
        silent: bool,
    },
}

/// The engines' clock: milliseconds since the loop's origin on tokio's
/// clock (so tests may pause it).
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    origin: tokio::time::Instant,
}

impl Clock {
    /// A clock starting now.
    pub fn start() -> Clock {
        Clock {
            origin: tokio::time::Instant::now(),
        }
    }

    /// Now, for the engine.
    pub fn now(&self) -> Instant {
        let ms = self.origin.elapsed().as_millis();
        Instant::from_millis(u64::try_from(ms).unwrap_or(u64::MAX))
    }

    /// The runtime instant of engine time `t`.
    pub fn at(&self, t: Instant) -> tokio::time::Instant {
        self.origin + std::time::Duration::from_millis(t.as_millis())
    }
}

/// Line bytes and packets seen by one run, for logs and benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LineStats {
    /// Bytes written to the line.
    pub written: u64,
    /// Bytes read from the line.
    pub read: u64,
    /// Packets the framing dropped (SMP: bad CRC, base64, length).
    pub bad_packets: u64,
    /// Requests the engine sent again (timeouts, rewinds, restarts).
    pub resent: u64,
}

/// Runs `engine` until it finishes or `on_event` breaks; `on_event` sees
/// every event in order, before the frames queued with it are written.
pub async fn drive<E: Engine>(
    link: &mut Link<'_>,
    clock: Clock,
    engine: &mut E,
    image: Option<&mut ImageFile>,
    stats: &mut LineStats,
    on_event: impl FnMut(E::Event) -> ControlFlow<()>,
) -> Result<Ended, DriveError> {
    let r = run(link, clock, engine, image, stats, on_event).await;
    stats.resent = engine.retries();
    r
}

async fn run<E: Engine>(
    link: &mut Link<'_>,
    clock: Clock,
    engine: &mut E,
    mut image: Option<&mut ImageFile>,
    stats: &mut LineStats,
    mut on_event: impl FnMut(E::Event) -> ControlFlow<()>,
) -> Result<Ended, DriveError> {
    let mut buf = vec![0u8; 4096];
    let mut silent = false;
    loop {
        // A chunk must be read before it can be sent.
        while let Some(req) = engine.poll_read() {
            let img = image.as_deref_mut().ok_or(DriveError::NoImage)?;
            let data = img.read(req).await?;
            engine.handle_data(req.offset, data, clock.now())?;
        }
        while let Some(ev) = engine.poll_event() {
            if on_event(ev).is_break() {
                return Ok(Ended::Stopped);
            }
        }
        if engine.is_finished() {
            return Ok(Ended::Finished { silent });
        }
        while let Some(bytes) = engine.poll_transmit() {
            link.write(&bytes).await?;
            stats.written += bytes.len() as u64;
        }
        if let Some(seq) = engine.next_seq() {
            link.set_next_seq(seq);
        }
        // Between writes the engine always waits on an answer, a backoff or
        // a reboot; without a deadline nothing would ever wake it.
        let Some(deadline) = engine.poll_timeout() else {
            return Err(DriveError::Idle);
        };
        tokio::select! {
            r = link.read(&mut buf) => {
                let n = r?;
                stats.read += n as u64;
                engine.handle_input(&buf[..n], clock.now());
            }
            _ = tokio::time::sleep_until(clock.at(deadline)) => {
                engine.handle_timeout(clock.now());
                silent = engine.is_finished();
            }
        }
    }
}
