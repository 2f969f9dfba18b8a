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
//! retries ran out, a wrong version after activation) is
//! [`ChildError::Rejected`] with the profile's IoTDA code and description;
//! a request that went unanswered to the end is [`ChildError::Unreachable`];
//! the port and the package file are [`ChildError::Io`].

pub mod drive;
pub mod image;

use std::ops::ControlFlow;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use otabridge_codecs::framed::engine::{Failure, StartError};
use otabridge_codecs::framed::{Engine, Event, ImageInfo, Outcome, Profile, Upgrade};
use otabridge_codecs::iotda::ResultCode;
use tracing::{debug, info, warn};

use self::drive::{drive, DriveError, Ended};
use self::image::{ImageError, ImageReader};
use super::serial::drive::Clock;
use super::serial::port::{LineSettings, SharedPort};
use super::{BoxFuture, Child, ChildError, Package, Progress};
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

    async fn image_info(&self, package: &Package) -> Result<ImageInfo, ChildError> {
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
        let info = image::digest(package).await.map_err(image_error)?;
        *self.digest.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((package.sha256.clone(), info.clone()));
        Ok(info)
    }

    fn engine(
        &self,
        image: ImageInfo,
        skip_if_current: bool,
        clock: Clock,
    ) -> Result<Engine, ChildError> {
        let upgrade = Upgrade {
            image,
            skip_if_current,
            seed: self.seed(),
        };
        Engine::new(Arc::clone(&self.profile), upgrade, clock.now()).map_err(start_error)
    }

    fn drive_error(&self, e: DriveError) -> ChildError {
        match e {
            DriveError::Port(p) => p.into_child_error(&self.device_id),
            DriveError::Image(i) => image_error(i),
            DriveError::Data(_) | DriveError::NoImage | DriveError::Idle => {
                ChildError::Protocol(format!("{}: {e}", self.device_id))
            }
        }
    }

    /// The engine's verdict as the trait's error.
    fn failed(&self, f: Failure, silent: bool) -> ChildError {
        warn!(
            child = %self.device_id,
            profile = %self.profile.name,
            step = %f.step,
            result_code = f.result_code.get(),
            detail = %f.detail,
            "{}", f.description
        );
        failure_error(f, silent)
    }
}

/// A failure the child caused is its verdict; one that came of silence may
/// pass (the child was rebooting, the bus was busy), so the job retries.
fn failure_error(f: Failure, silent: bool) -> ChildError {
    if silent {
        ChildError::Unreachable(format!("{}: {} ({})", f.step, f.detail, f.description))
    } else {
        ChildError::Rejected {
            result_code: f.result_code,
            description: f.description,
        }
    }
}

fn image_error(e: ImageError) -> ChildError {
    ChildError::Io(e.to_string())
}

/// An image the profile cannot carry, in IoTDA's terms: too large for its
/// size fields is "insufficient storage" (5); a version it cannot carry or an
/// empty image is an "unsupported package type" (8).
fn start_error(e: StartError) -> ChildError {
    let code = match e {
        StartError::ImageTooLarge { .. } => ResultCode::LOW_SPACE,
        StartError::VersionTooLong { .. } | StartError::EmptyImage => ResultCode::UNKNOWN_TYPE,
    };
    ChildError::Rejected {
        result_code: code,
        description: format!("{}: {e}", code.description()),
    }
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
            let mut link = self
                .port
                .lock()
                .await
                .map_err(|e| e.into_child_error(&self.device_id))?;
            let clock = Clock::start();
            let mut engine =
                Engine::read_version(Arc::clone(&self.profile), self.seed(), clock.now());
            let ended = drive(&mut link, clock, &mut engine, None, |_| {
                ControlFlow::Continue(())
            })
            .await;
            self.count_retries(&engine);
            let ended = ended.map_err(|e| self.drive_error(e))?;
            match ended {
                Ended::Finished {
                    outcome: Outcome::Version { version },
                    ..
                } => Ok(version),
                Ended::Finished {
                    outcome: Outcome::Failed(f),
                    silent,
                } => Err(self.failed(f, silent)),
                other => Err(ChildError::Protocol(format!(
                    "version read ended with {other:?}"
                ))),
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
            let info = self.image_info(package).await?;
            let mut reader = ImageReader::open(&package.path)
                .await
                .map_err(image_error)?;
            let mut link = self
                .port
                .lock()
                .await
                .map_err(|e| e.into_child_error(&self.device_id))?;
            let clock = Clock::start();
            let mut engine = self.engine(info, false, clock)?;
            let id = &self.device_id;
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
                        progress(u64::from(*offset));
                    }
                    Event::Progress { offset, .. } => progress(u64::from(*offset)),
                    // The child holds and has checked the whole image; the
                    // `activate` queued with this event is not sent.
                    Event::Verified => return ControlFlow::Break(()),
                    other => debug!(child = %id, "delivery: {other}"),
                }
                ControlFlow::Continue(())
            })
            .await;
            self.count_retries(&engine);
            let ended = ended.map_err(|e| self.drive_error(e))?;
            match ended {
                Ended::Stopped => {
                    info!(child = %id, size = package.size, "delivered and verified");
                    Ok(())
                }
                Ended::Finished {
                    outcome: Outcome::Failed(f),
                    silent,
                } => Err(self.failed(f, silent)),
                Ended::Finished { outcome, .. } => Err(ChildError::Protocol(format!(
                    "delivery ended with {outcome:?} before verify"
                ))),
            }
        })
    }

    fn activate<'a>(&'a self, package: &'a Package) -> BoxFuture<'a, Result<(), ChildError>> {
        Box::pin(async move {
            let info = self.image_info(package).await?;
            let mut reader = ImageReader::open(&package.path)
                .await
                .map_err(image_error)?;
            let mut link = self
                .port
                .lock()
                .await
                .map_err(|e| e.into_child_error(&self.device_id))?;
            let clock = Clock::start();
            let mut engine = self.engine(info, true, clock)?;
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
            let ended = ended.map_err(|e| self.drive_error(e))?;
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
                } => Err(self.failed(f, silent)),
                other => Err(ChildError::Protocol(format!(
                    "activation ended with {other:?}"
                ))),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use otabridge_codecs::framed::MessageKind;

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
        let e = failure_error(failure(ResultCode::LOW_SPACE, "Not enough storage"), false);
        assert_eq!(
            e,
            ChildError::Rejected {
                result_code: ResultCode::LOW_SPACE,
                description: "Not enough storage".into()
            }
        );
        let e = failure_error(
            failure(ResultCode::DOWNLOAD_TIMEOUT, "Connection lost"),
            true,
        );
        assert!(
            matches!(&e, ChildError::Unreachable(m) if m.starts_with("begin: ")),
            "{e}"
        );
        assert!(e.is_transient());
        let e = start_error(StartError::ImageTooLarge {
            message: MessageKind::Begin,
            field: "size".into(),
            size: 70_000,
        });
        assert!(
            matches!(
                e,
                ChildError::Rejected {
                    result_code: ResultCode::LOW_SPACE,
                    ..
                }
            ),
            "{e}"
        );
        let e = start_error(StartError::EmptyImage);
        assert!(
            matches!(
                e,
                ChildError::Rejected {
                    result_code: ResultCode::UNKNOWN_TYPE,
                    ..
                }
            ),
            "{e}"
        );
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
