//! The serial driver for MCUmgr/SMP children (Zephyr, MCUboot): it runs the
//! `otabridge-codecs` SMP engines, each in a
//! [`otabridge_codecs::smp::serial::Console`], on the shared serial link
//! ([`super::link`]: the port, the package reads and the driver loop).
//!
//! Delivery relies on SMP's own resume (docs/protocols/children.md §4.2):
//! every transfer starts with the off-0 chunk carrying the same `len` and
//! `sha`; a device that kept the session answers the offset it holds and
//! the transfer continues there, so `resume_from` is only compared with
//! what the device says. Up to `window` upload requests are on the line at
//! once (`codecs/src/smp/upload.rs`, docs/serial.md "Pipelining"); every
//! request sent again is counted for [`Child::chunk_retries`]. Activation
//! runs the activation engine: test, reset, wait through the reboot, read
//! the state back (success only when the active version equals the
//! target). It does not confirm: [`Child::confirm`] does, as a journaled
//! step of the job after the verification, so that a gateway killed
//! between the reset and the confirm still confirms after its restart
//! (docs/protocols/children.md §4.3: MCUboot reverts an unconfirmed test
//! image at the next boot). A version read is one image state read
//! ([`otabridge_codecs::smp::state`]).
//!
//! Failures: the device's errors and the engines' verdicts are refusals
//! with the cause [`otabridge_codecs::smp::result`]'s table classifies the
//! SMP error into, and the device's `rc` as what it said; silence is
//! [`ErrorKind::Unreachable`]; answers that do not decode are
//! [`ErrorKind::Garbled`]; the port and the package file follow
//! [`super::link::port::PortError::into_child_error`].

use std::ops::ControlFlow;
use std::path::Path;
use std::sync::Arc;

use otabridge_codecs::iotda::ResultCode;
use otabridge_codecs::smp::activate::{Activate, ActivateConfig, ActivateError, ActivateEvent};
use otabridge_codecs::smp::health::{
    Probe, ProbeConfig, ProbeEvent, Revert, RevertConfig, RevertError, RevertEvent,
};
use otabridge_codecs::smp::message::SmpErr;
use otabridge_codecs::smp::result;
use otabridge_codecs::smp::serial::Console;
use otabridge_codecs::smp::slot_info::{SlotInfoConfig, SlotInfoEvent, SlotInfoRead};
use otabridge_codecs::smp::state::{
    active_version, StateRead, StateReadConfig, StateReadError, StateReadEvent,
};
use otabridge_codecs::smp::upload::{Upload, UploadConfig, UploadError, UploadEvent};
use otabridge_codecs::version::Policy;
use tracing::{debug, info, warn};

use super::link::drive::LineStats;
use super::link::port::{PortSettings, SharedPort};
use super::link::ChildLine;
use super::{BoxFuture, Cause, Child, ChildError, ErrorKind, Package, Progress, Step};
use crate::config::SerialOptions;

/// What one delivery did on the line, for logs and benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeliveryReport {
    /// Image bytes the device acknowledged.
    pub acked: u64,
    /// Where the device continued an earlier session, if it did.
    pub resumed_at: Option<u64>,
    /// The buffer size the chunks were sized for.
    pub buf_size: usize,
    /// Times the device restarted the upload (`off: 0` mid-transfer).
    pub restarts: u32,
    /// Where the upload fell back to one request at a time, if it did.
    pub fallback_at: Option<u64>,
    /// Bytes on the line.
    pub line: LineStats,
}

/// An SMP child on a serial port.
#[derive(Debug)]
pub struct SerialChild {
    line: ChildLine,
    options: SerialOptions,
    version_policy: Policy,
}

impl SerialChild {
    /// A driver for `device_id` alone on the port at `path`.
    pub fn new(device_id: &str, path: &Path, baud: u32, options: SerialOptions) -> SerialChild {
        let settings = PortSettings::for_child(baud, &options);
        SerialChild::on_port(device_id, SharedPort::new(path, settings), options)
    }

    /// A driver for `device_id` on `port`, which children on one bus share
    /// ([`super::link::port::Ports`]): their operations take turns.
    pub fn on_port(device_id: &str, port: Arc<SharedPort>, options: SerialOptions) -> SerialChild {
        SerialChild {
            line: ChildLine::new(device_id, port),
            options,
            version_policy: Policy::default(),
        }
    }

    /// Compares versions by `policy` (the child's `version_match`; the
    /// default is [`Policy::Normalised`]).
    pub fn with_version_policy(mut self, policy: Policy) -> Self {
        self.version_policy = policy;
        self
    }

    /// The port this child shares.
    pub fn port(&self) -> &Arc<SharedPort> {
        self.line.port()
    }

    fn upload_config(&self, first_seq: u8) -> UploadConfig {
        let o = &self.options;
        let mut c = UploadConfig {
            timeout: o.timeout,
            first_timeout: o.first_timeout,
            params_timeout: o.timeout,
            retries: o.retries,
            first_seq,
            window: o.window,
            ..UploadConfig::default()
        };
        if let Some(b) = o.buf_size {
            c.read_params = false;
            c.default_buf_size = b;
        }
        c
    }

    fn activate_config(&self, first_seq: u8) -> ActivateConfig {
        let o = &self.options;
        let d = ActivateConfig::default();
        // State reads after the reset: one per reboot_timeout slice of the
        // engine's per-read wait, at least one.
        let per_read = d.reboot_timeout.min(o.reboot_timeout);
        let reads = (o.reboot_timeout.as_millis() / per_read.as_millis().max(1)).max(1);
        ActivateConfig {
            timeout: o.timeout,
            retries: o.retries,
            reboot_wait: o.reboot_wait,
            reboot_timeout: per_read,
            reboot_retries: u32::try_from(reads - 1).unwrap_or(u32::MAX),
            version_policy: self.version_policy,
            // The job confirms, as a step of its own (`Child::confirm`).
            confirm: false,
            first_seq,
            ..d
        }
    }

    /// The health probe's engine settings: each request waits `timeout_ms`
    /// and is retried at most so often that the state read and the command
    /// both fit in `health_probe_timeout_secs`, so that the driver's own
    /// verdict (which request went unanswered) comes before the job's
    /// timer.
    fn probe_config(&self, first_seq: u8) -> ProbeConfig {
        let o = &self.options;
        let budget = o.health.as_ref().map_or(o.timeout, |h| h.probe_timeout / 2);
        let per = o.timeout.as_millis().max(1);
        let fit = u32::try_from(budget.as_millis() / per).unwrap_or(u32::MAX);
        ProbeConfig {
            timeout: o.timeout,
            retries: fit.saturating_sub(1).min(o.retries),
            version_policy: self.version_policy,
            command: o.health.as_ref().and_then(|h| h.command.clone()),
            first_seq,
            ..ProbeConfig::default()
        }
    }

    /// The revert's engine settings: the activation's waits.
    fn revert_config(&self, first_seq: u8) -> RevertConfig {
        let a = self.activate_config(first_seq);
        RevertConfig {
            timeout: a.timeout,
            retries: a.retries,
            reboot_wait: a.reboot_wait,
            reboot_timeout: a.reboot_timeout,
            reboot_retries: a.reboot_retries,
            version_policy: self.version_policy,
            first_seq,
            ..RevertConfig::default()
        }
    }

    /// Runs an activation-engine instance made by `make` on the line;
    /// its `Done` version, or its failure.
    async fn run_activation(
        &self,
        step: Step,
        make: impl FnMut(u8, otabridge_codecs::time::Instant) -> Result<Console<Activate>, ChildError>,
    ) -> Result<String, ChildError> {
        let mut outcome = None;
        self.line
            .run(step, make, None, |ev| {
                match ev {
                    ActivateEvent::Done { version } => outcome = Some(Ok(version)),
                    ActivateEvent::Failed(e) => outcome = Some(Err(e)),
                    other => debug!(child = %self.id(), "{}: {other:?}", step.name()),
                }
                ControlFlow::Continue(())
            })
            .await?;
        match outcome {
            Some(Ok(version)) => Ok(version),
            // Everything the confirm engine says is the confirm's.
            Some(Err(e)) if step == Step::Confirm => Err(activate_error(e).in_step(step)),
            Some(Err(e)) => Err(activate_error(e)),
            None => Err(ChildError::io(
                step,
                format!("{} ended without a verdict", step.name()),
            )),
        }
    }

    /// [`Child::deliver`] with a report of what happened on the line.
    pub async fn deliver_with_report(
        &self,
        package: &Package,
        resume_from: u64,
        progress: Progress<'_>,
    ) -> Result<DeliveryReport, ChildError> {
        let step = Step::Deliver {
            offset: resume_from,
        };
        let sha = parse_sha(&package.sha256, step)?;
        let mut image = self.line.image(&package.path, step).await?;
        self.check_slot(package.size, step).await?;
        let mut report = DeliveryReport::default();
        let mut outcome = None;
        let run = self
            .line
            .run(
                step,
                |seq, now| {
                    let config = self.upload_config(seq);
                    Ok(Console::new(Upload::new(config, package.size, sha, now)))
                },
                Some(&mut image),
                |ev| {
                    if let Some(verdict) = self.upload_event(ev, &mut report, resume_from, progress)
                    {
                        outcome = Some(verdict);
                    }
                    ControlFlow::Continue(())
                },
            )
            .await?;
        report.line = LineStats {
            bad_packets: run.engine.bad_packets(),
            ..run.line
        };
        if resume_from > 0 && report.resumed_at.is_none() {
            // Not an error: the device lost the session (a power cycle), so
            // SMP starts over; the job's offset follows the device.
            warn!(child = %self.id(), resume_from, "device kept no session; sent from 0");
        }
        let step = Step::Deliver {
            offset: report.acked,
        };
        match outcome {
            Some(Ok(())) => Ok(report),
            Some(Err(e)) => Err(upload_error(e, step)),
            None => Err(ChildError::io(step, "upload ended without a verdict")),
        }
    }

    /// Pre-flight (issue 14, docs/images.md): the device's upload slot from
    /// slot info (group 1, command 6); an image that does not fit is refused
    /// as [`Cause::NoStorage`] (result 5) before a byte of it is sent. A
    /// device without slot info (ENOTSUP, or silent after one timeout, or an
    /// answer that does not decode) is not held up: the gateway's image
    /// check already applied a configured `image.slot_size`.
    async fn check_slot(&self, size: u64, step: Step) -> Result<(), ChildError> {
        let mut outcome = None;
        let make = |first_seq, now| {
            let config = SlotInfoConfig {
                timeout: self.options.timeout,
                retries: 0,
                first_seq,
                ..SlotInfoConfig::default()
            };
            Ok(Console::new(SlotInfoRead::new(config, now)))
        };
        self.line
            .run(step, make, None, |ev| {
                outcome = Some(ev);
                ControlFlow::Continue(())
            })
            .await?;
        let list = match outcome {
            Some(SlotInfoEvent::Answer(list)) => list,
            Some(SlotInfoEvent::Failed(e)) => {
                debug!(child = %self.id(), "no slot info: {e}");
                return Ok(());
            }
            None => return Ok(()),
        };
        let limit = list
            .iter()
            .find(|i| i.image == 0)
            .and_then(|i| i.upload_limit());
        match limit {
            Some(slot) if size > slot => Err(ChildError::refused(
                Cause::NoStorage,
                step,
                format!(
                    "image check failed: size: the image is {size} bytes, \
                     the child's slot holds {slot} (slot info)"
                ),
            )
            .with_said(format!("slot info: upload slot {slot} bytes"), None)),
            _ => Ok(()),
        }
    }

    /// Logs and records one upload event; the verdict once there is one.
    fn upload_event(
        &self,
        ev: UploadEvent,
        report: &mut DeliveryReport,
        resume_from: u64,
        progress: Progress<'_>,
    ) -> Option<Result<(), UploadError>> {
        let id = self.id();
        match ev {
            UploadEvent::BufSize {
                buf_size,
                from_device,
            } => {
                debug!(child = %id, buf_size, from_device, "smp buffer size");
                report.buf_size = buf_size;
            }
            UploadEvent::Resumed { off } => {
                info!(child = %id, off, resume_from, "device continues its upload");
                report.resumed_at = Some(off);
                progress(off);
            }
            UploadEvent::Restarted => {
                warn!(child = %id, "device restarted the upload (off 0)");
                report.restarts += 1;
            }
            UploadEvent::WindowFallback { off } => {
                info!(child = %id, off, "a request was lost; one at a time from here");
                report.fallback_at = Some(off);
            }
            UploadEvent::Progress { acked, .. } => {
                report.acked = acked;
                progress(acked);
            }
            UploadEvent::Done { matched } => {
                debug!(child = %id, ?matched, "upload done");
                return Some(Ok(()));
            }
            UploadEvent::Failed(e) => return Some(Err(e)),
        }
        None
    }

    fn id(&self) -> &str {
        self.line.device_id()
    }
}

/// `Package::sha256` (hex) as the 32 bytes SMP's `sha` carries.
fn parse_sha(hex_sha: &str, step: Step) -> Result<[u8; 32], ChildError> {
    let mut sha = [0u8; 32];
    hex::decode_to_slice(hex_sha, &mut sha)
        .map_err(|e| ChildError::io(step, format!("package sha256 '{hex_sha}'")).with_source(e))?;
    Ok(sha)
}

/// The cause of an SMP error, as the table in
/// [`otabridge_codecs::smp::result`] classifies it (each row gives its
/// reason: the Zephyr `IMG_MGMT_ERR_*` or `MGMT_ERR_*` meaning).
fn smp_cause(err: &SmpErr) -> Cause {
    match result::for_smp(err).code {
        ResultCode::LOW_SPACE => Cause::NoStorage,
        ResultCode::LOW_MEMORY => Cause::NoMemory,
        ResultCode::CHECK_FAIL => Cause::Integrity,
        ResultCode::UNKNOWN_TYPE => Cause::UnsupportedPackage,
        ResultCode::INSTALL_FAIL => Cause::InstallFailed,
        _ => Cause::Unclassified,
    }
}

/// The device refused with `err`.
fn device_error(err: &SmpErr, step: Step, detail: String) -> ChildError {
    ChildError::refused(smp_cause(err), step, detail).with_said(err.to_string(), None)
}

/// Silence is unreachable (a retry later may work); an unreadable answer is
/// garbled; everything else is the device's or the engine's verdict.
fn upload_error(e: UploadError, step: Step) -> ChildError {
    let kind = match &e {
        UploadError::Device(err) => return device_error(err, step, e.to_string()),
        UploadError::Timeout { .. } => ErrorKind::Unreachable,
        UploadError::Malformed(_) => ErrorKind::Garbled,
        // The device's `off` stopped moving: the transfer broke off.
        UploadError::Stalled { .. } | UploadError::TooManyRestarts(_) => {
            ErrorKind::Refused(Cause::ConnectionLost)
        }
        UploadError::Mismatch => {
            return ChildError::refused(Cause::Integrity, step, e.to_string())
                .with_said("match: false", None)
        }
        UploadError::OffsetBeyondEnd { .. } => ErrorKind::Refused(Cause::Unclassified),
        UploadError::EmptyImage | UploadError::BufferTooSmall { .. } => ErrorKind::Io,
    };
    ChildError::new(kind, step, e.to_string())
}

/// As [`upload_error`], for the activation; a failure after the reset is
/// the verification's.
fn activate_error(e: ActivateError) -> ChildError {
    let (kind, step) = match &e {
        ActivateError::Device { err, .. } => {
            return device_error(err, Step::Activate, e.to_string())
        }
        ActivateError::Timeout { .. } => (ErrorKind::Unreachable, Step::Activate),
        ActivateError::NoAnswerAfterReset { .. } => (ErrorKind::Unreachable, Step::Verify),
        ActivateError::Malformed { .. } => (ErrorKind::Garbled, Step::Activate),
        ActivateError::NoCandidate
        | ActivateError::CandidateVersion { .. }
        | ActivateError::NotPending => (ErrorKind::Refused(Cause::InstallFailed), Step::Activate),
        ActivateError::NoActiveImage
        | ActivateError::VersionMismatch { .. }
        | ActivateError::NotConfirmed => (ErrorKind::Refused(Cause::InstallFailed), Step::Verify),
    };
    ChildError::new(kind, step, e.to_string())
}

/// As [`upload_error`], for a version read.
fn state_read_error(e: StateReadError) -> ChildError {
    let step = Step::ReadVersion;
    match &e {
        StateReadError::Timeout { .. } => ChildError::unreachable(step, e.to_string()),
        StateReadError::Malformed { .. } => ChildError::garbled(step, e.to_string()),
        StateReadError::Device(err) => device_error(err, step, e.to_string()),
    }
}

impl Child for SerialChild {
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
            let o = &self.options;
            let mut outcome = None;
            let make = |first_seq, now| {
                let config = StateReadConfig {
                    timeout: o.timeout,
                    retries: o.retries,
                    first_seq,
                    ..StateReadConfig::default()
                };
                Ok(Console::new(StateRead::new(config, now)))
            };
            let step = Step::ReadVersion;
            self.line
                .run(step, make, None, |ev| {
                    outcome = Some(ev);
                    ControlFlow::Continue(())
                })
                .await?;
            match outcome {
                Some(StateReadEvent::Answer(list)) => active_version(&list, 0)
                    .map(str::to_owned)
                    .ok_or_else(|| ChildError::garbled(step, "no active image in the state list")),
                Some(StateReadEvent::Failed(e)) => Err(state_read_error(e)),
                None => Err(ChildError::io(step, "state read ended without a verdict")),
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
            self.deliver_with_report(package, resume_from, progress)
                .await
                .map(|_| ())
        })
    }

    fn activate<'a>(&'a self, package: &'a Package) -> BoxFuture<'a, Result<(), ChildError>> {
        Box::pin(async move {
            // No expected hash: the state list's `hash` is MCUboot's
            // IMAGE_TLV_SHA256, not the package file's SHA-256
            // (docs/protocols/children.md §4.3); the engine picks the
            // non-active slot and checks its version.
            let make = |seq, now| {
                let config = self.activate_config(seq);
                Ok(Console::new(Activate::new(
                    config,
                    &package.version,
                    None,
                    now,
                )))
            };
            let version = self.run_activation(Step::Activate, make).await?;
            info!(child = %self.id(), %version, "running the new image (not confirmed yet)");
            Ok(())
        })
    }

    fn health(&self) -> Option<&crate::config::health::HealthCheck> {
        self.options.health.as_deref()
    }

    fn probe<'a>(&'a self, target: &'a str) -> BoxFuture<'a, Result<(), ChildError>> {
        Box::pin(async move {
            let step = Step::Probe;
            let make = |seq, now| {
                Ok(Console::new(Probe::new(
                    self.probe_config(seq),
                    target,
                    now,
                )))
            };
            let mut outcome = None;
            self.line
                .run(step, make, None, |ev| {
                    outcome = Some(ev);
                    ControlFlow::Continue(())
                })
                .await?;
            match outcome {
                Some(ProbeEvent::Passed { version }) => {
                    debug!(child = %self.id(), %version, "health probe passed");
                    Ok(())
                }
                // Every failed probe is a failed health check: the kind
                // only says what it was (the job retries none of them).
                Some(ProbeEvent::Failed(e)) => Err(ChildError::refused(
                    Cause::InstallFailed,
                    step,
                    e.to_string(),
                )),
                None => Err(ChildError::io(step, "probe ended without a verdict")),
            }
        })
    }

    fn revert<'a>(&'a self, target: &'a str) -> BoxFuture<'a, Result<(String, bool), ChildError>> {
        Box::pin(async move {
            let step = Step::Revert;
            let make = |seq, now| {
                Ok(Console::new(Revert::new(
                    self.revert_config(seq),
                    target,
                    now,
                )))
            };
            let mut outcome = None;
            self.line
                .run(step, make, None, |ev| {
                    match ev {
                        RevertEvent::ResetSent { acknowledged } => {
                            info!(child = %self.id(), acknowledged, "reset sent to revert the test image");
                        }
                        other => outcome = Some(other),
                    }
                    ControlFlow::Continue(())
                })
                .await?;
            match outcome {
                Some(RevertEvent::Done {
                    version,
                    target: false,
                    ..
                }) => {
                    info!(child = %self.id(), %version, "reverted: the confirmed image runs again");
                    Ok((version, true))
                }
                Some(RevertEvent::Done {
                    version,
                    confirmed: true,
                    ..
                }) => Ok((version, false)),
                Some(RevertEvent::Done { version, .. }) => Err(ChildError::unreachable(
                    step,
                    format!("the child still runs the unconfirmed {version} after the reset"),
                )),
                Some(RevertEvent::Failed(e)) => Err(match &e {
                    RevertError::Device { err, .. } => device_error(err, step, e.to_string()),
                    RevertError::NoAnswerAfterReset { .. } => {
                        ChildError::unreachable(step, e.to_string())
                    }
                    RevertError::Malformed { .. } | RevertError::NoActiveImage => {
                        ChildError::garbled(step, e.to_string())
                    }
                }),
                Some(RevertEvent::ResetSent { .. }) | None => {
                    Err(ChildError::io(step, "revert ended without a verdict"))
                }
            }
        })
    }

    fn confirm<'a>(&'a self, target: &'a str) -> BoxFuture<'a, Result<(), ChildError>> {
        Box::pin(async move {
            let make = |seq, now| {
                let config = self.activate_config(seq);
                Ok(Console::new(Activate::confirm_running(config, target, now)))
            };
            let version = self.run_activation(Step::Confirm, make).await?;
            info!(child = %self.id(), %version, "new image confirmed");
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::child::link::port::Ports;

    #[test]
    fn errors_map_to_child_errors() {
        let step = Step::Deliver { offset: 0 };
        let t = upload_error(
            UploadError::Timeout {
                off: 0,
                attempts: 5,
            },
            step,
        );
        assert_eq!(t.kind(), ErrorKind::Unreachable, "{t}");
        let img = |rc| UploadError::Device(SmpErr::Group { group: 1, rc });
        let e = upload_error(img(23), step);
        assert_eq!(e.cause(), Some(Cause::UnsupportedPackage), "{e}");
        assert_eq!(
            e.said().unwrap().code,
            "SMP image group rc 23 (INVALID_IMAGE_HEADER_MAGIC)"
        );
        // No platform wording: the engine's own message.
        let e = upload_error(img(28), step);
        assert_eq!(e.cause(), Some(Cause::Unclassified), "{e}");
        assert!(e.detail().contains("device error"), "{e}");
        let a = activate_error(ActivateError::NoAnswerAfterReset { attempts: 3 });
        assert_eq!(
            (a.kind(), a.step()),
            (ErrorKind::Unreachable, Step::Verify),
            "{a}"
        );
        let v = activate_error(ActivateError::VersionMismatch {
            target: "2.0.0".into(),
            reported: "1.0.0".into(),
        });
        assert_eq!(v.cause(), Some(Cause::InstallFailed), "{v}");
        assert!(parse_sha("zz", step).is_err());
    }

    fn on(ports: &mut Ports, id: &str, path: &Path, o: &SerialOptions) -> SerialChild {
        let settings = PortSettings::new(9600, o.framing);
        SerialChild::on_port(id, ports.get(path, settings), o.clone())
    }

    #[test]
    fn children_on_one_path_share_the_port() {
        let o = SerialOptions::default();
        let mut ports = Ports::default();
        let a = on(&mut ports, "a", Path::new("/dev/otabridge-test-bus"), &o);
        let b = on(&mut ports, "b", Path::new("/dev/otabridge-test-bus"), &o);
        let c = on(&mut ports, "c", Path::new("/dev/otabridge-test-other"), &o);
        assert!(Arc::ptr_eq(a.port(), b.port()));
        assert!(!Arc::ptr_eq(a.port(), c.port()));
        // When every driver of a path is gone, the next one opens afresh.
        let weak = Arc::downgrade(a.port());
        drop((a, b));
        assert!(weak.upgrade().is_none());
    }

    #[test]
    fn two_names_of_one_device_share_the_port() {
        let dir = tempfile::tempdir().unwrap();
        let node = dir.path().join("ttyUSB9");
        std::fs::write(&node, b"").unwrap();
        let link = dir.path().join("by-id-usb-acme");
        std::os::unix::fs::symlink(&node, &link).unwrap();
        let o = SerialOptions::default();
        let mut ports = Ports::default();
        let a = on(&mut ports, "a", &node, &o);
        let b = on(&mut ports, "b", &link, &o);
        assert!(Arc::ptr_eq(a.port(), b.port()));
    }

    #[test]
    fn activation_budget_follows_the_reboot_timeout() {
        let o = SerialOptions {
            reboot_timeout: std::time::Duration::from_secs(60),
            ..SerialOptions::default()
        };
        let c = SerialChild::new("x", Path::new("/dev/otabridge-test-cfg"), 9600, o);
        let a = c.activate_config(9);
        assert_eq!(a.reboot_timeout, std::time::Duration::from_secs(2));
        assert_eq!(a.reboot_retries, 29);
        assert_eq!(a.first_seq, 9);
        let o = SerialOptions {
            reboot_timeout: std::time::Duration::from_millis(500),
            ..SerialOptions::default()
        };
        let c = SerialChild::new("y", Path::new("/dev/otabridge-test-cfg2"), 9600, o);
        assert_eq!(
            c.activate_config(0).reboot_timeout,
            std::time::Duration::from_millis(500)
        );
        assert_eq!(c.activate_config(0).reboot_retries, 0);
    }
}
