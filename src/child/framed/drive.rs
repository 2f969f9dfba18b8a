//! The thin loop that runs a framed engine on a serial line, in the call
//! order `Engine`'s documentation fixes: image bytes it asks for, its
//! events, its frames, then wait for the line or its timer.
//!
//! Events are handed out *before* the frames queued with them are written,
//! so a caller can stop at an event and the frame that follows it never
//! reaches the child (`deliver` stops at `Verified`, before `activate`).

use std::ops::ControlFlow;

use otabridge_codecs::framed::engine::{DataError, Event, Outcome};
use otabridge_codecs::framed::Engine;

use super::image::{ImageError, ImageReader};
use crate::child::serial::drive::Clock;
use crate::child::serial::port::{Link, PortError};

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
    /// The engine asked for image bytes, but this operation has no image.
    #[error("the engine asked for image data outside a delivery")]
    NoImage,
    /// The engine neither finished nor armed a timer: it would wait forever.
    #[error("engine idle without a timer")]
    Idle,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// The caller stopped at an event.
    Stopped,
    /// The engine finished.
    Finished {
        /// Its verdict.
        outcome: Outcome,
        /// It finished on a timer (a request went unanswered to the end),
        /// not on something the child said.
        silent: bool,
    },
}

/// Runs `engine` until it finishes or `on_event` breaks.
pub async fn drive(
    link: &mut Link<'_>,
    clock: Clock,
    engine: &mut Engine,
    mut image: Option<&mut ImageReader>,
    mut on_event: impl FnMut(&Event) -> ControlFlow<()>,
) -> Result<Ended, DriveError> {
    let mut buf = vec![0u8; 4096];
    let mut silent = false;
    loop {
        // A chunk request must be served before the chunk can go out.
        while let Some(req) = engine.poll_data_request() {
            let img = image.as_deref_mut().ok_or(DriveError::NoImage)?;
            let data = img.read(req.offset, req.len).await?;
            engine.handle_data(req.offset, data, clock.now())?;
        }
        while let Some(ev) = engine.poll_event() {
            if let Event::Finished(outcome) = ev {
                return Ok(Ended::Finished { outcome, silent });
            }
            if on_event(&ev).is_break() {
                return Ok(Ended::Stopped);
            }
        }
        while let Some(frame) = engine.poll_transmit() {
            link.write(&frame).await?;
        }
        // Between frames the engine always waits on a reply, a backoff or a
        // settle time; without a deadline nothing would wake it.
        let Some(deadline) = engine.poll_timeout() else {
            return Err(DriveError::Idle);
        };
        tokio::select! {
            r = link.read(&mut buf) => {
                let n = r?;
                engine.handle_input(&buf[..n], clock.now());
            }
            _ = tokio::time::sleep_until(clock.at(deadline)) => {
                engine.handle_timeout(clock.now());
                silent = engine.is_finished();
            }
        }
    }
}
