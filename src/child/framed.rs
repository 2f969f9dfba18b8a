//! The serial driver for children speaking their manufacturer's own framed
//! protocol (`protocol = "framed:<profile>"`): it runs
//! [`otabridge_codecs::framed::Engine`] on the serial link the child shares
//! ([`super::link`]: the port, the package reads and the driver loop);
//! [`image`] computes the package's digests.
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

pub mod image;

use std::ops::ControlFlow;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use otabridge_codecs::framed::engine::{Failure, StartError};
use otabridge_codecs::framed::{Engine, Event, ImageInfo, Outcome, Profile, Upgrade};
use otabridge_codecs::iotda::ResultCode;
use otabridge_codecs::time::Instant;
use tracing::{debug, info, warn};

use self::image::ImageError;
use super::link::drive::Ended;
use super::link::image::ImageFile;
use super::link::port::{LineSettings, SharedPort};
use super::link::ChildLine;
use super::{BoxFuture, Child, ChildError, Package, Progress};
use crate::config::Framing;

/// A child speaking a framed profile on a serial port.
#[derive(Debug)]
pub struct FramedChild {
    line: ChildLine,
    profile: Arc<Profile>,
    /// Seeds engines: each operation gets its own first sequence number and
    /// jitter, so a late reply to an abandoned operation does not match.
    runs: AtomicU64,
    /// The last package's digests, so `activate` does not read the whole
    /// file again after `deliver` did.
    digest: std::sync::Mutex<Option<(String, ImageInfo)>>,
}

/// How a framed operation ended, failures aside.
#[derive(Debug)]
enum Verdict {
    /// The caller stopped at an event.
    Stopped,
    /// The engine's outcome (never [`Outcome::Failed`]).
    Finished(Outcome),
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
        let port = SharedPort::get(path, LineSettings { baud, framing });
        FramedChild {
            line: ChildLine::new(device_id, port),
            profile,
            runs: AtomicU64::new(id_hash),
            digest: std::sync::Mutex::new(None),
        }
    }

    /// The port this child shares.
    pub fn port(&self) -> &Arc<SharedPort> {
        self.line.port()
    }

    /// The profile it speaks.
    pub fn profile(&self) -> &Arc<Profile> {
        &self.profile
    }

    fn id(&self) -> &str {
        self.line.device_id()
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
        now: Instant,
    ) -> Result<Engine, ChildError> {
        let upgrade = Upgrade {
            image,
            skip_if_current,
            seed: self.seed(),
        };
        Engine::new(Arc::clone(&self.profile), upgrade, now).map_err(start_error)
    }

    /// One operation on the line: the engine `make` builds runs until it
    /// finishes or `on_event` breaks; a failure is the trait's error.
    async fn run(
        &self,
        make: impl FnOnce(Instant) -> Result<Engine, ChildError>,
        image: Option<&mut ImageFile>,
        mut on_event: impl FnMut(&Event) -> ControlFlow<()>,
    ) -> Result<Verdict, ChildError> {
        let mut outcome = None;
        let run = self
            .line
            .run(
                |_, now| make(now),
                image,
                |ev| match ev {
                    Event::Finished(o) => {
                        outcome = Some(o);
                        ControlFlow::Continue(())
                    }
                    other => on_event(&other),
                },
            )
            .await?;
        match (run.ended, outcome) {
            (Ended::Stopped, _) => Ok(Verdict::Stopped),
            (Ended::Finished { silent }, Some(Outcome::Failed(f))) => Err(self.failed(f, silent)),
            (Ended::Finished { .. }, Some(o)) => Ok(Verdict::Finished(o)),
            (Ended::Finished { .. }, None) => Err(ChildError::Protocol(format!(
                "{}: the engine finished without an outcome",
                self.id()
            ))),
        }
    }

    /// The engine's verdict as the trait's error.
    fn failed(&self, f: Failure, silent: bool) -> ChildError {
        warn!(
            child = %self.id(),
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
        self.id()
    }

    fn transport(&self) -> &'static str {
        "serial"
    }

    fn bus(&self) -> Option<String> {
        Some(self.line.port().bus())
    }

    fn chunk_retries(&self) -> u64 {
        self.line.retries()
    }

    fn read_version(&self) -> BoxFuture<'_, Result<String, ChildError>> {
        Box::pin(async move {
            let make = |now| {
                Ok(Engine::read_version(
                    Arc::clone(&self.profile),
                    self.seed(),
                    now,
                ))
            };
            match self.run(make, None, |_| ControlFlow::Continue(())).await? {
                Verdict::Finished(Outcome::Version { version }) => Ok(version),
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
            let mut image = self.line.image(&package.path).await?;
            let id = self.id();
            let make = |now| self.engine(info, false, now);
            let verdict = self
                .run(make, Some(&mut image), |ev| {
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
                .await?;
            match verdict {
                Verdict::Stopped => {
                    info!(child = %id, size = package.size, "delivered and verified");
                    Ok(())
                }
                Verdict::Finished(outcome) => Err(ChildError::Protocol(format!(
                    "delivery ended with {outcome:?} before verify"
                ))),
            }
        })
    }

    fn activate<'a>(&'a self, package: &'a Package) -> BoxFuture<'a, Result<(), ChildError>> {
        Box::pin(async move {
            let info = self.image_info(package).await?;
            let mut image = self.line.image(&package.path).await?;
            let id = self.id();
            let mut resent = false;
            let make = |now| self.engine(info, true, now);
            let verdict = self
                .run(make, Some(&mut image), |ev| {
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
                .await?;
            match verdict {
                Verdict::Finished(Outcome::Upgraded { version }) => {
                    info!(child = %id, %version, "running the new image");
                    Ok(())
                }
                Verdict::Finished(Outcome::AlreadyCurrent { version }) => {
                    info!(child = %id, %version, "already runs the target");
                    Ok(())
                }
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
