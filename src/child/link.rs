//! The serial link every serial child uses, whatever its protocol (SMP,
//! framed profiles): the shared port, the package read by range, and the one
//! loop that runs a codecs engine on the line.
//!
//! - [`port`]: one open port per device, with an async mutex so two
//!   children on one RS-485 bus never interleave; the per-line sequence
//!   number.
//! - [`image`]: the package file, read a bounded window at a time.
//! - [`drive`]: the loop between an [`Engine`] and the line.
//! - [`ChildLine`]: one child's use of its port; [`ChildLine::run`] is the
//!   whole of one operation (wait for the line, build the engine, drive it,
//!   count its retries, map what went wrong), so a protocol driver only
//!   builds engines and reads their verdicts.

pub mod drive;
pub mod image;
pub mod port;

use std::ops::ControlFlow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use otabridge_codecs::engine::Engine;
use otabridge_codecs::time::Instant;

use self::drive::{drive, Clock, DriveError, Ended, LineStats};
use self::image::{ImageError, ImageFile};
use self::port::SharedPort;
use super::{ChildError, Step};

/// What one operation did: the engine (for its final state), how the run
/// ended, and what crossed the line.
#[derive(Debug)]
pub struct Run<E> {
    /// The engine, finished unless the caller stopped at an event.
    pub engine: E,
    /// How the run ended.
    pub ended: Ended,
    /// Bytes and packets on the line.
    pub line: LineStats,
}

/// One child's use of a port it may share with others.
#[derive(Debug)]
pub struct ChildLine {
    device_id: String,
    port: Arc<SharedPort>,
    /// Requests sent again, over every operation (`Child::chunk_retries`).
    retries: AtomicU64,
}

impl ChildLine {
    /// Child `device_id` on `port`.
    pub fn new(device_id: &str, port: Arc<SharedPort>) -> ChildLine {
        ChildLine {
            device_id: device_id.to_owned(),
            port,
            retries: AtomicU64::new(0),
        }
    }

    /// The child's IoTDA device id.
    pub fn device_id(&self) -> &str {
        &self.device_id
    }

    /// The port this child shares.
    pub fn port(&self) -> &Arc<SharedPort> {
        &self.port
    }

    /// Requests sent again over every operation so far.
    pub fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }

    /// Opens the package for an operation that sends it; before the line is
    /// taken, so a missing file does not hold the bus. A failure is `step`'s.
    pub async fn image(&self, path: &std::path::Path, step: Step) -> Result<ImageFile, ChildError> {
        ImageFile::open(path)
            .await
            .map_err(|e| image_error(e, step))
    }

    /// One operation: waits for the line (the engine's timeouts start once
    /// it is ours), builds the engine with the line's next sequence number
    /// and the start time, drives it with `image` until it finishes or
    /// `on_event` breaks, and adds its retries to the child's count. A
    /// failure of the line or the loop is `step`'s.
    pub async fn run<E: Engine>(
        &self,
        step: Step,
        make: impl FnOnce(u8, Instant) -> Result<E, ChildError>,
        image: Option<&mut ImageFile>,
        on_event: impl FnMut(E::Event) -> ControlFlow<()>,
    ) -> Result<Run<E>, ChildError> {
        let mut link = self
            .port
            .lock()
            .await
            .map_err(|e| e.into_child_error(step))?;
        let clock = Clock::start();
        let mut engine = make(link.next_seq(), clock.now())?;
        let mut line = LineStats::default();
        let r = drive(&mut link, clock, &mut engine, image, &mut line, on_event).await;
        self.retries.fetch_add(line.resent, Ordering::Relaxed);
        let ended = r.map_err(|e| drive_error(e, step))?;
        Ok(Run {
            engine,
            ended,
            line,
        })
    }
}

/// A failure of the drive loop in `step`: the line's, the package's, or
/// the loop's own (an engine that asks for what it cannot have).
fn drive_error(e: DriveError, step: Step) -> ChildError {
    match e {
        DriveError::Port(p) => p.into_child_error(step),
        DriveError::Image(i) => image_error(i, step),
        DriveError::Data(_) | DriveError::NoImage | DriveError::Idle => {
            ChildError::io(step, "serial engine").with_source(e)
        }
    }
}

fn image_error(e: ImageError, step: Step) -> ChildError {
    ChildError::io(step, "package").with_source(e)
}
