//! The serial driver for children speaking their manufacturer's own framed
//! protocol (`protocol = "framed:<profile>"`): it runs
//! [`otabridge_codecs::framed::Engine`] on the port the child shares.
//!
//! - [`image`]: the package's digests and chunk reads.
//! - [`drive`]: the thin loop between the engine and the line.
//!
//! The engine runs a whole upgrade (version, begin, offset, chunks, verify,
//! activate, version read back); the [`Child`] trait splits it in two:
//! - `deliver` runs it until the child accepted `verify` and stops there,
//!   before `activate` leaves the gateway. Resuming is the protocol's own:
//!   `begin` with the same image keeps the child's session, and
//!   `offset_query` says where it is, so `resume_from` is only compared with
//!   what the child says (the child knows its flash; our journal may be
//!   behind it).
//! - `activate` runs a fresh engine to the end. Its `begin`, `offset_query`
//!   and `verify` find the session complete and only confirm it (the child
//!   checks the image again before it boots it), then it activates and reads
//!   the version back: success only when it equals the target. A child that
//!   already runs the target (activated before a gateway restart) is done.
//!   A profile without `offset_query` cannot say where the child is, so
//!   there the transfer is repeated from 0 first, unless its chunk reply
//!   names the next offset (`codecs/profiles/README.md`).
//!
//! Failures: a failure the child reported (a `fail` status, busy until the
//! retries ran out, a wrong version after activation) is a refusal with the
//! profile's declared IoTDA code ([`Cause::Declared`]) and its words as what
//! the child said; a request that went unanswered to the end is
//! [`ErrorKind::Unreachable`]; the port and the package file follow
//! [`PortError::into_child_error`](super::serial::port::PortError::into_child_error).

pub mod drive;
pub mod image;

use std::ops::ControlFlow;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use otabridge_codecs::framed::engine::{Failure, StartError};
use otabridge_codecs::framed::{Engine, Event, ImageInfo, Outcome, Profile, Upgrade};
use tracing::{debug, info, warn};

use self::drive::{drive, DriveError, Ended};
use self::image::{ImageError, ImageReader};
use super::serial::drive::Clock;
use super::serial::port::{LineSettings, SharedPort};
use super::{BoxFuture, Cause, Child, ChildError, Package, Progress, Step};
use crate::config::Framing;

/// A child speaking a framed profile on a serial port.
#[derive(Debug)]
pub struct FramedChild {
    device_id: String,
    port: Arc<SharedPort>,
    profile: Arc<Profile>,
    /// Frames sent again over every operation ([`Child::chunk_retries`]).
    retries: AtomicU64,
    /// Seeds engines: each operation gets its own first sequence number and
    /// jitter, so a late reply to an abandoned operation does not match.
    runs: AtomicU64,
    /// The last package's digests, so `activate` does not read the whole
    /// file again after `deliver` did.
    digest: std::sync::Mutex<Option<(String, ImageInfo)>>,
}

impl FramedChild {
    /// A driver for `device_id` on `path` speaking `profile`; children on
    /// the same path share the line and take turns.
    pub fn new(
        device_id: &str,
        path: &Path,
        baud: u32,
        framing: Framing,
        profile: Arc<Profile>,
    ) -> FramedChild {
        // FNV-1a of the id: children on one bus start at different seeds.
        let id_hash = device_id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        FramedChild {
            device_id: device_id.to_owned(),
            port: SharedPort::get(path, LineSettings { baud, framing }),
            profile,
            runs: AtomicU64::new(id_hash),
            retries: AtomicU64::new(0),
            digest: std::sync::Mutex::new(None),
        }
    }

    /// The port this child shares.
    pub fn port(&self) -> &Arc<SharedPort> {
        &self.port
    }

    /// The profile it speaks.
    pub fn profile(&self) -> &Arc<Profile> {
        &self.profile
    }

    /// Adds an ended operation's retransmissions to the counter.
    fn count_retries(&self, engine: &Engine) {
        let n = engine.stats().retransmissions;
        self.retries.fetch_add(n, Ordering::Relaxed);
    }

    fn seed(&self) -> u64 {
        self.runs
            .fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed)
    }

    async fn image_info(&self, package: &Package, step: Step) -> Result<ImageInfo, ChildError> {
        let cached = self
            .digest
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .filter(|(sha, i)| *sha == package.sha256 && i.version == package.version)
            .map(|(_, i)| i.clone());
        if let Some(info) = cached {
            return Ok(info);
        }
        let info = image::digest(package)
            .await
            .map_err(|e| image_error(e, step))?;
        *self.digest.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((package.sha256.clone(), info.clone()));
        Ok(info)
    }

    fn engine(
        &self,
        image: ImageInfo,
        skip_if_current: bool,
        clock: Clock,
        step: Step,
    ) -> Result<Engine, ChildError> {
        let upgrade = Upgrade {
            image,
            skip_if_current,
            seed: self.seed(),
        };
        Engine::new(Arc::clone(&self.profile), upgrade, clock.now())
            .map_err(|e| start_error(e, step))
    }

    /// The engine's verdict as the trait's error.
    fn failed(&self, f: Failure, silent: bool, step: Step) -> ChildError {
        warn!(
            child = %self.device_id,
            profile = %self.profile.name,
            step = %f.step,
            result_code = f.result_code.get(),
            detail = %f.detail,
            "{}", f.description
        );
        failure_error(f, silent, step)
    }
}

/// A failure of the drive loop in `step`.
fn drive_error(e: DriveError, step: Step) -> ChildError {
    match e {
        DriveError::Port(p) => p.into_child_error(step),
        DriveError::Image(i) => image_error(i, step),
        DriveError::Data(_) | DriveError::NoImage | DriveError::Idle => {
            ChildError::io(step, "framed engine").with_source(e)
        }
    }
}

/// A failure the child caused is its verdict, with the code its profile
/// declares; one that came of silence may pass (the child was rebooting,
/// the bus was busy), so the job retries. A failure in the profile's
/// `activate` or after it is the verification's when the version read back
/// is known.
fn failure_error(f: Failure, silent: bool, step: Step) -> ChildError {
    let step = if f.version.is_some() && step == Step::Activate {
        Step::Verify
    } else {
        step
    };
    if silent {
        return ChildError::unreachable(
            step,
            format!("{}: {} ({})", f.step, f.detail, f.description),
        );
    }
    ChildError::refused(Cause::Declared(f.result_code), step, f.step.to_string())
        .with_said(f.detail, Some(f.description))
}

fn image_error(e: ImageError, step: Step) -> ChildError {
    ChildError::io(step, "package").with_source(e)
}

/// An image the profile cannot carry: too large for its size fields is "no
/// storage"; a version it cannot carry or an empty image is an
/// "unsupported package".
fn start_error(e: StartError, step: Step) -> ChildError {
    let cause = match e {
        StartError::ImageTooLarge { .. } => Cause::NoStorage,
        StartError::VersionTooLong { .. } | StartError::EmptyImage => Cause::UnsupportedPackage,
    };
    ChildError::refused(cause, step, e.to_string())
}

impl Child for FramedChild {
    fn device_id(&self) -> &str {
        &self.device_id
    }

    fn transport(&self) -> &'static str {
        "serial"
    }

    fn bus(&self) -> Option<String> {
        Some(self.port.bus())
    }

    fn chunk_retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }

    fn read_version(&self) -> BoxFuture<'_, Result<String, ChildError>> {
        Box::pin(async move {
            let step = Step::ReadVersion;
            let mut link = self
                .port
                .lock()
                .await
                .map_err(|e| e.into_child_error(step))?;
            let clock = Clock::start();
            let mut engine =
                Engine::read_version(Arc::clone(&self.profile), self.seed(), clock.now());
            let ended = drive(&mut link, clock, &mut engine, None, |_| {
                ControlFlow::Continue(())
            })
            .await;
            self.count_retries(&engine);
            let ended = ended.map_err(|e| drive_error(e, step))?;
            match ended {
                Ended::Finished {
                    outcome: Outcome::Version { version },
                    ..
                } => Ok(version),
                Ended::Finished {
                    outcome: Outcome::Failed(f),
                    silent,
                } => Err(self.failed(f, silent, step)),
                other => Err(ChildError::io(
                    step,
                    format!("version read ended with {other:?}"),
                )),
            }
        })
    }

    fn deliver<'a>(
        &'a self,
        package: &'a Package,
        resume_from: u64,
        progress: Progress<'a>,
    ) -> BoxFuture<'a, Result<(), ChildError>> {
        Box::pin(async move {
            let step = Step::Deliver {
                offset: resume_from,
            };
            let info = self.image_info(package, step).await?;
            let mut reader = ImageReader::open(&package.path)
                .await
                .map_err(|e| image_error(e, step))?;
            let mut link = self
                .port
                .lock()
                .await
                .map_err(|e| e.into_child_error(step))?;
            let clock = Clock::start();
            let mut engine = self.engine(info, false, clock, step)?;
            let id = &self.device_id;
            let mut acked = resume_from;
            let ended = drive(&mut link, clock, &mut engine, Some(&mut reader), |ev| {
                match ev {
                    Event::CurrentVersion(v) => {
                        debug!(child = %id, version = %v, "before delivery")
                    }
                    Event::Begun => debug!(child = %id, "begin accepted"),
                    Event::Resumed { offset } => {
                        if u64::from(*offset) != resume_from {
                            info!(child = %id, offset, resume_from, "the child's offset decides");
                        }
                        acked = u64::from(*offset);
                        progress(acked);
                    }
                    Event::Progress { offset, .. } => {
                        acked = u64::from(*offset);
                        progress(acked);
                    }
                    // The child holds and has checked the whole image; the
                    // `activate` queued with this event is not sent.
                    Event::Verified => return ControlFlow::Break(()),
                    other => debug!(child = %id, "delivery: {other}"),
                }
                ControlFlow::Continue(())
            })
            .await;
            self.count_retries(&engine);
            let step = Step::Deliver { offset: acked };
            let ended = ended.map_err(|e| drive_error(e, step))?;
            match ended {
                Ended::Stopped => {
                    info!(child = %id, size = package.size, "delivered and verified");
                    Ok(())
                }
                Ended::Finished {
                    outcome: Outcome::Failed(f),
                    silent,
                } => Err(self.failed(f, silent, step)),
                Ended::Finished { outcome, .. } => Err(ChildError::io(
                    step,
                    format!("delivery ended with {outcome:?} before verify"),
                )),
            }
        })
    }

    fn activate<'a>(&'a self, package: &'a Package) -> BoxFuture<'a, Result<(), ChildError>> {
        Box::pin(async move {
            let step = Step::Activate;
            let info = self.image_info(package, step).await?;
            let mut reader = ImageReader::open(&package.path)
                .await
                .map_err(|e| image_error(e, step))?;
            let mut link = self
                .port
                .lock()
                .await
                .map_err(|e| e.into_child_error(step))?;
            let clock = Clock::start();
            let mut engine = self.engine(info, true, clock, step)?;
            let id = &self.device_id;
            let mut resent = false;
            let ended = drive(&mut link, clock, &mut engine, Some(&mut reader), |ev| {
                match ev {
                    Event::Progress { .. } if !resent => {
                        // Only a child that lost its session (or a profile
                        // without offset_query) needs bytes here.
                        resent = true;
                        warn!(child = %id, "the child did not hold the whole image; sending it before activating");
                    }
                    Event::Activated => info!(child = %id, "activate sent"),
                    other => debug!(child = %id, "activation: {other}"),
                }
                ControlFlow::Continue(())
            })
            .await;
            self.count_retries(&engine);
            let ended = ended.map_err(|e| drive_error(e, step))?;
            match ended {
                Ended::Finished {
                    outcome: Outcome::Upgraded { version },
                    ..
                } => {
                    info!(child = %id, %version, "running the new image");
                    Ok(())
                }
                Ended::Finished {
                    outcome: Outcome::AlreadyCurrent { version },
                    ..
                } => {
                    info!(child = %id, %version, "already runs the target");
                    Ok(())
                }
                Ended::Finished {
                    outcome: Outcome::Failed(f),
                    silent,
                } => Err(self.failed(f, silent, step)),
                other => Err(ChildError::io(
                    step,
                    format!("activation ended with {other:?}"),
                )),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::child::ErrorKind;
    use otabridge_codecs::framed::MessageKind;
    use otabridge_codecs::iotda::ResultCode;

    fn failure(code: ResultCode, description: &str) -> Failure {
        Failure {
            result_code: code,
            description: description.into(),
            detail: "begin answered with status 16 (0x10)".into(),
            step: MessageKind::Begin,
            version: None,
        }
    }

    #[test]
    fn failures_map_to_child_errors() {
        let step = Step::Deliver { offset: 0 };
        let e = failure_error(
            failure(ResultCode::LOW_SPACE, "Not enough storage"),
            false,
            step,
        );
        assert_eq!(
            e.cause(),
            Some(Cause::Declared(ResultCode::LOW_SPACE)),
            "{e}"
        );
        assert_eq!(
            e.said().unwrap().text.as_deref(),
            Some("Not enough storage")
        );
        let e = failure_error(
            failure(ResultCode::DOWNLOAD_TIMEOUT, "Connection lost"),
            true,
            step,
        );
        assert_eq!(e.kind(), ErrorKind::Unreachable, "{e}");
        assert!(e.detail().starts_with("begin: "), "{e}");
        let e = start_error(
            StartError::ImageTooLarge {
                message: MessageKind::Begin,
                field: "size".into(),
                size: 70_000,
            },
            step,
        );
        assert_eq!(e.cause(), Some(Cause::NoStorage), "{e}");
        let e = start_error(StartError::EmptyImage, step);
        assert_eq!(e.cause(), Some(Cause::UnsupportedPackage), "{e}");
    }

    #[test]
    fn seeds_differ_per_run_and_per_child() {
        let p = Arc::new(
            otabridge_codecs::framed::profile::builtin("acme-rs485")
                .unwrap()
                .unwrap(),
        );
        let path = Path::new("/dev/otabridge-framed-test");
        let a = FramedChild::new("a", path, 9600, Framing::EIGHT_N_ONE, Arc::clone(&p));
        let b = FramedChild::new("b", path, 9600, Framing::EIGHT_N_ONE, p);
        assert!(Arc::ptr_eq(a.port(), b.port()), "one bus, one port");
        let (a1, a2, b1) = (a.seed(), a.seed(), b.seed());
        assert_ne!(a1, a2);
        assert_ne!(a1, b1);
    }
}
