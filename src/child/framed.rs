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
//! retries ran out, a wrong version after activation) is a refusal with the
//! profile's declared IoTDA code ([`Cause::Declared`]) and its words as what
//! the child said; a request that went unanswered to the end is
//! [`ErrorKind::Unreachable`](super::ErrorKind::Unreachable); the port and
//! the package file follow
//! [`PortError::into_child_error`](super::link::port::PortError::into_child_error).

pub mod image;

use std::ops::ControlFlow;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use otabridge_codecs::framed::engine::{Failure, StartError};
use otabridge_codecs::framed::{Engine, Event, ImageInfo, Outcome, Profile, Upgrade};
use otabridge_codecs::time::Instant;
use otabridge_codecs::version::Policy;
use tracing::{debug, info, warn};

use self::image::ImageError;
use super::link::drive::Ended;
use super::link::image::ImageFile;
use super::link::port::{PortSettings, SharedPort};
use super::link::ChildLine;
use super::{BoxFuture, Cause, Child, ChildError, Package, Progress, Step};
use crate::config::Framing;

/// A child speaking a framed profile on a serial port.
#[derive(Debug)]
pub struct FramedChild {
    line: ChildLine,
    profile: Arc<Profile>,
    version_policy: Policy,
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
    /// A driver for `device_id` alone on the port at `path`, speaking
    /// `profile`.
    pub fn new(
        device_id: &str,
        path: &Path,
        baud: u32,
        framing: Framing,
        profile: Arc<Profile>,
    ) -> FramedChild {
        let port = SharedPort::new(path, PortSettings::new(baud, framing));
        FramedChild::on_port(device_id, port, profile)
    }

    /// A driver for `device_id` on `port`, which children on one bus share
    /// ([`super::link::port::Ports`]): their operations take turns.
    pub fn on_port(device_id: &str, port: Arc<SharedPort>, profile: Arc<Profile>) -> FramedChild {
        // FNV-1a of the id: children on one bus start at different seeds.
        let id_hash = device_id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        FramedChild {
            line: ChildLine::new(device_id, port),
            profile,
            version_policy: Policy::default(),
            runs: AtomicU64::new(id_hash),
            digest: std::sync::Mutex::new(None),
        }
    }

    /// The port this child shares.
    pub fn port(&self) -> &Arc<SharedPort> {
        self.line.port()
    }

    /// Compares versions by `policy` (the child's `version_match`; the
    /// default is [`Policy::Normalised`]).
    pub fn with_version_policy(mut self, policy: Policy) -> Self {
        self.version_policy = policy;
        self
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
        now: Instant,
        step: Step,
    ) -> Result<Engine, ChildError> {
        let upgrade = Upgrade {
            image,
            skip_if_current,
            version_policy: self.version_policy,
            seed: self.seed(),
        };
        Engine::new(Arc::clone(&self.profile), upgrade, now).map_err(|e| start_error(e, step))
    }

    /// One operation on the line: the engine `make` builds runs until it
    /// finishes or `on_event` breaks; a failure is the trait's error, in
    /// `step`.
    async fn run(
        &self,
        step: Step,
        make: impl FnOnce(Instant) -> Result<Engine, ChildError>,
        image: Option<&mut ImageFile>,
        mut on_event: impl FnMut(&Event) -> ControlFlow<()>,
    ) -> Result<Verdict, ChildError> {
        let mut outcome = None;
        let run = self
            .line
            .run(
                step,
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
            (Ended::Finished { silent }, Some(Outcome::Failed(f))) => {
                Err(self.failed(f, silent, step))
            }
            (Ended::Finished { .. }, Some(o)) => Ok(Verdict::Finished(o)),
            (Ended::Finished { .. }, None) => Err(ChildError::io(
                step,
                "the engine finished without an outcome",
            )),
        }
    }

    /// The engine's verdict as the trait's error.
    fn failed(&self, f: Failure, silent: bool, step: Step) -> ChildError {
        warn!(
            child = %self.id(),
            profile = %self.profile.name,
            step = %f.step,
            result_code = f.result_code.get(),
            detail = %f.detail,
            "{}", f.description
        );
        failure_error(f, silent, step)
    }
}

/// A failure the child caused is its verdict, with the code its profile
/// declares and the profile's words; one that came of silence may pass (the
/// child was rebooting, the bus was busy), so the job retries. A failure of
/// an activation whose version was read back is the verification's.
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
    fn version_policy(&self) -> Policy {
        self.version_policy
    }

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
            let step = Step::ReadVersion;
            match self
                .run(step, make, None, |_| ControlFlow::Continue(()))
                .await?
            {
                Verdict::Finished(Outcome::Version { version }) => Ok(version),
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
            let mut image = self.line.image(&package.path, step).await?;
            let id = self.id();
            let make = |now| self.engine(info, false, now, step);
            let verdict = self
                .run(step, make, Some(&mut image), |ev| {
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
                Verdict::Finished(outcome) => Err(ChildError::io(
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
            let mut image = self.line.image(&package.path, step).await?;
            let id = self.id();
            let mut resent = false;
            let make = |now| self.engine(info, true, now, step);
            let verdict = self
                .run(step, make, Some(&mut image), |ev| {
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
        let mut ports = crate::child::link::port::Ports::default();
        let settings = PortSettings::new(9600, Framing::EIGHT_N_ONE);
        let a = FramedChild::on_port("a", ports.get(path, settings), Arc::clone(&p));
        let b = FramedChild::on_port("b", ports.get(path, settings), p);
        assert!(Arc::ptr_eq(a.port(), b.port()), "one bus, one port");
        let (a1, a2, b1) = (a.seed(), a.seed(), b.seed());
        assert_ne!(a1, a2);
        assert_ne!(a1, b1);
    }
}
