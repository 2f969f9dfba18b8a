//! The serial driver for MCUmgr/SMP children (Zephyr, MCUboot): it runs the
//! `otabridge-codecs` SMP engines on a tokio-serial port.
//!
//! - [`port`]: one open port per device path, with an async mutex so two
//!   children on one RS-485 bus never interleave, and the SMP sequence
//!   number kept per line.
//! - [`drive`]: the thin loop (transmit, read image chunks, events, wait for
//!   the line or the engine's timer).
//!
//! Delivery relies on SMP's own resume (docs/protocols/children.md §4.2): every transfer
//! starts with the off-0 chunk carrying the same `len` and `sha`; a device
//! that kept the session answers the offset it holds and the transfer
//! continues there, so `resume_from` is only compared with what the device
//! says. Up to `window` upload requests are on the line at once
//! (`codecs/src/smp/upload.rs`, docs/serial.md "Pipelining"); every request
//! sent again is counted for [`Child::chunk_retries`]. Activation runs the activation engine: test, reset, wait through
//! the reboot, read the state back (success only when the active version
//! equals the target), confirm.
//!
//! Failures: the device's errors and the engines' verdicts map to
//! [`ChildError::Rejected`] with the IoTDA code from
//! [`otabridge_codecs::smp::result`]; silence maps to
//! [`ChildError::Unreachable`]; answers that do not decode to
//! [`ChildError::Protocol`]; the port and the package file to
//! [`ChildError::Io`].

pub mod drive;
pub mod port;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use otabridge_codecs::smp::activate::{Activate, ActivateConfig, ActivateError, ActivateEvent};
use otabridge_codecs::smp::result::{self, IotdaResult};
use otabridge_codecs::smp::state::{
    active_version, StateRead, StateReadConfig, StateReadError, StateReadEvent,
};
use otabridge_codecs::smp::slot_info::{SlotInfoConfig, SlotInfoEvent, SlotInfoRead};
use otabridge_codecs::smp::upload::{Upload, UploadConfig, UploadError, UploadEvent};
use tracing::{debug, info, warn};

use self::drive::{drive, Clock, DriveError, ImageFile, LineStats};
use self::port::{LineSettings, Link, SharedPort};
use super::{BoxFuture, Child, ChildError, Package, Progress};
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
    device_id: String,
    port: Arc<SharedPort>,
    options: SerialOptions,
    /// Requests sent again, over every operation ([`Child::chunk_retries`]).
    retries: AtomicU64,
}

impl SerialChild {
    /// A driver for `device_id` on `path`; children given the same path
    /// share the line and take turns.
    pub fn new(device_id: &str, path: &Path, baud: u32, options: SerialOptions) -> SerialChild {
        let line = LineSettings {
            baud,
            framing: options.framing,
        };
        SerialChild {
            device_id: device_id.to_owned(),
            port: SharedPort::get(path, line),
            options,
            retries: AtomicU64::new(0),
        }
    }

    /// The port this child shares.
    pub fn port(&self) -> &Arc<SharedPort> {
        &self.port
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
            version_mode: o.version_compare,
            first_seq,
            ..d
        }
    }

    /// [`Child::deliver`] with a report of what happened on the line.
    pub async fn deliver_with_report(
        &self,
        package: &Package,
        resume_from: u64,
        progress: Progress<'_>,
    ) -> Result<DeliveryReport, ChildError> {
        let sha = parse_sha(&package.sha256)?;
        let mut image = ImageFile::open(&package.path)
            .await
            .map_err(|e| self.drive_error(e))?;
        let mut link = self
            .port
            .lock()
            .await
            .map_err(|e| e.into_child_error(&self.device_id))?;
        self.check_slot(&mut link, package.size).await?;
        let clock = Clock::start();
        let mut engine = Upload::new(
            self.upload_config(link.next_seq()),
            package.size,
            sha,
            clock.now(),
        );
        let mut report = DeliveryReport::default();
        let mut line = LineStats::default();
        let mut outcome = None;
        let r = drive(
            &mut link,
            clock,
            &mut engine,
            Some(&mut image),
            &mut line,
            |ev| match ev {
                UploadEvent::BufSize {
                    buf_size,
                    from_device,
                } => {
                    debug!(child = %self.device_id, buf_size, from_device, "smp buffer size");
                    report.buf_size = buf_size;
                }
                UploadEvent::Resumed { off } => {
                    info!(child = %self.device_id, off, resume_from, "device continues its upload");
                    report.resumed_at = Some(off);
                    progress(off);
                }
                UploadEvent::Restarted => {
                    warn!(child = %self.device_id, "device restarted the upload (off 0)");
                    report.restarts += 1;
                }
                UploadEvent::WindowFallback { off } => {
                    info!(child = %self.device_id, off, "a request was lost; one at a time from here");
                    report.fallback_at = Some(off);
                }
                UploadEvent::Progress { acked, .. } => {
                    report.acked = acked;
                    progress(acked);
                }
                UploadEvent::Done { matched } => {
                    debug!(child = %self.device_id, ?matched, "upload done");
                    outcome = Some(Ok(()));
                }
                UploadEvent::Failed(e) => outcome = Some(Err(e)),
            },
        )
        .await;
        self.retries.fetch_add(line.resent, Ordering::Relaxed);
        report.line = line;
        r.map_err(|e| self.drive_error(e))?;
        if resume_from > 0 && report.resumed_at.is_none() {
            // Not an error: the device lost the session (a power cycle), so
            // SMP starts over; the job's offset follows the device.
            warn!(child = %self.device_id, resume_from, "device kept no session; sent from 0");
        }
        match outcome {
            Some(Ok(())) => Ok(report),
            Some(Err(e)) => Err(upload_error(e)),
            None => Err(ChildError::Protocol(
                "upload ended without a verdict".into(),
            )),
        }
    }

    /// Pre-flight (issue 14, docs/images.md): the device's upload slot from
    /// slot info (group 1, command 6); an image that does not fit is refused
    /// with result 5 before a byte of it is sent. A device without slot info
    /// (ENOTSUP) or silent to it is not held up (one attempt): the gateway's
    /// image check already applied a configured `image.slot_size`.
    async fn check_slot(&self, link: &mut Link<'_>, size: u64) -> Result<(), ChildError> {
        let clock = Clock::start();
        let config = SlotInfoConfig {
            timeout: self.options.timeout,
            retries: 0,
            first_seq: link.next_seq(),
            ..SlotInfoConfig::default()
        };
        let mut engine = SlotInfoRead::new(config, clock.now());
        let mut outcome = None;
        let mut stats = LineStats::default();
        let r = drive(link, clock, &mut engine, None, &mut stats, |ev| {
            outcome = Some(ev)
        })
        .await;
        r.map_err(|e| self.drive_error(e))?;
        let list = match outcome {
            Some(SlotInfoEvent::Slots(list)) => list,
            Some(SlotInfoEvent::Failed(e)) => {
                debug!(child = %self.device_id, "no slot info: {e}");
                return Ok(());
            }
            None => return Ok(()),
        };
        let limit = list.iter().find(|i| i.image == 0).and_then(|i| i.upload_limit());
        match limit {
            Some(slot) if size > slot => Err(ChildError::Rejected {
                result_code: otabridge_codecs::iotda::ResultCode::LOW_SPACE,
                description: format!(
                    "image check failed: size: the image is {size} bytes, the child's slot holds {slot} (slot info)"
                ),
            }),
            _ => Ok(()),
        }
    }

    fn drive_error(&self, e: DriveError) -> ChildError {
        match e {
            DriveError::Port(p) => p.into_child_error(&self.device_id),
            DriveError::Image { .. } => ChildError::Io(e.to_string()),
            DriveError::Idle => ChildError::Protocol(e.to_string()),
        }
    }
}

/// `Package::sha256` (hex) as the 32 bytes SMP's `sha` carries.
fn parse_sha(hex_sha: &str) -> Result<[u8; 32], ChildError> {
    let mut sha = [0u8; 32];
    hex::decode_to_slice(hex_sha, &mut sha)
        .map_err(|e| ChildError::Io(format!("package sha256 '{hex_sha}': {e}")))?;
    Ok(sha)
}

fn rejected(r: IotdaResult, why: &dyn std::fmt::Display) -> ChildError {
    ChildError::Rejected {
        result_code: r.code,
        description: r.description.map_or_else(|| why.to_string(), str::to_owned),
    }
}

/// Silence is [`ChildError::Unreachable`] (a retry later may work); an
/// unreadable answer is [`ChildError::Protocol`]; everything else is the
/// device's or the engine's verdict with its IoTDA code.
fn upload_error(e: UploadError) -> ChildError {
    match &e {
        UploadError::Timeout { .. } => ChildError::Unreachable(e.to_string()),
        UploadError::Malformed(_) => ChildError::Protocol(e.to_string()),
        _ => rejected(result::for_upload(&e), &e),
    }
}

/// As [`upload_error`], for the activation.
fn activate_error(e: ActivateError) -> ChildError {
    match &e {
        ActivateError::Timeout { .. } | ActivateError::NoAnswerAfterReset { .. } => {
            ChildError::Unreachable(e.to_string())
        }
        ActivateError::Malformed { .. } => ChildError::Protocol(e.to_string()),
        _ => rejected(result::for_activate(&e), &e),
    }
}

impl Child for SerialChild {
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
            let o = &self.options;
            let config = StateReadConfig {
                timeout: o.timeout,
                retries: o.retries,
                first_seq: link.next_seq(),
                ..StateReadConfig::default()
            };
            let mut engine = StateRead::new(config, clock.now());
            let mut outcome = None;
            let mut stats = LineStats::default();
            let r = drive(&mut link, clock, &mut engine, None, &mut stats, |ev| {
                outcome = Some(ev)
            })
            .await;
            self.retries.fetch_add(stats.resent, Ordering::Relaxed);
            r.map_err(|e| self.drive_error(e))?;
            match outcome {
                Some(StateReadEvent::Images(list)) => {
                    active_version(&list, 0).map(str::to_owned).ok_or_else(|| {
                        ChildError::Protocol("no active image in the state list".into())
                    })
                }
                Some(StateReadEvent::Failed(e @ StateReadError::Timeout { .. })) => {
                    Err(ChildError::Unreachable(e.to_string()))
                }
                Some(StateReadEvent::Failed(e @ StateReadError::Malformed(_))) => {
                    Err(ChildError::Protocol(e.to_string()))
                }
                Some(StateReadEvent::Failed(StateReadError::Device(err))) => {
                    Err(rejected(result::for_smp(&err), &err))
                }
                None => Err(ChildError::Protocol(
                    "state read ended without a verdict".into(),
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
            self.deliver_with_report(package, resume_from, progress)
                .await
                .map(|_| ())
        })
    }

    fn activate<'a>(&'a self, package: &'a Package) -> BoxFuture<'a, Result<(), ChildError>> {
        Box::pin(async move {
            let mut link = self
                .port
                .lock()
                .await
                .map_err(|e| e.into_child_error(&self.device_id))?;
            let clock = Clock::start();
            // No expected hash: the state list's `hash` is MCUboot's
            // IMAGE_TLV_SHA256, not the package file's SHA-256 (docs/protocols/children.md
            // §4.3); the engine picks the non-active slot and checks its version.
            let mut engine = Activate::new(
                self.activate_config(link.next_seq()),
                &package.version,
                None,
                clock.now(),
            );
            let mut outcome = None;
            let mut stats = LineStats::default();
            let r = drive(
                &mut link,
                clock,
                &mut engine,
                None,
                &mut stats,
                |ev| match ev {
                    ActivateEvent::Done { version } => outcome = Some(Ok(version)),
                    ActivateEvent::Failed(e) => outcome = Some(Err(e)),
                    other => debug!(child = %self.device_id, "activation: {other:?}"),
                },
            )
            .await;
            self.retries.fetch_add(stats.resent, Ordering::Relaxed);
            r.map_err(|e| self.drive_error(e))?;
            match outcome {
                Some(Ok(version)) => {
                    info!(child = %self.device_id, %version, "running the new image");
                    Ok(())
                }
                Some(Err(e)) => Err(activate_error(e)),
                None => Err(ChildError::Protocol(
                    "activation ended without a verdict".into(),
                )),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use otabridge_codecs::smp::message::SmpErr;

    #[test]
    fn errors_map_to_child_errors() {
        let t = upload_error(UploadError::Timeout {
            off: 0,
            attempts: 5,
        });
        assert!(matches!(t, ChildError::Unreachable(_)), "{t}");
        let img = |rc| UploadError::Device(SmpErr::Group { group: 1, rc });
        assert_eq!(
            upload_error(img(23)),
            ChildError::Rejected {
                result_code: otabridge_codecs::iotda::ResultCode::UNKNOWN_TYPE,
                description: otabridge_codecs::iotda::result::DESC_UNSUPPORTED_TYPE.into()
            }
        );
        // No platform wording: the engine's own message.
        match upload_error(img(28)) {
            ChildError::Rejected {
                result_code: otabridge_codecs::iotda::ResultCode::INNER_ERROR,
                description,
            } => {
                assert!(description.contains("device error"), "{description}")
            }
            e => panic!("{e}"),
        }
        let a = activate_error(ActivateError::NoAnswerAfterReset { attempts: 3 });
        assert!(a.is_transient(), "{a}");
        let v = activate_error(ActivateError::VersionMismatch {
            target: "2.0.0".into(),
            reported: "1.0.0".into(),
        });
        assert!(
            matches!(
                v,
                ChildError::Rejected {
                    result_code: otabridge_codecs::iotda::ResultCode::INSTALL_FAIL,
                    ..
                }
            ),
            "{v}"
        );
        assert!(parse_sha("zz").is_err());
    }

    #[test]
    fn children_on_one_path_share_the_port() {
        let o = SerialOptions::default();
        let a = SerialChild::new("a", Path::new("/dev/otabridge-test-bus"), 9600, o.clone());
        let b = SerialChild::new("b", Path::new("/dev/otabridge-test-bus"), 9600, o.clone());
        let c = SerialChild::new("c", Path::new("/dev/otabridge-test-other"), 9600, o);
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
        let a = SerialChild::new("a", &node, 9600, o.clone());
        let b = SerialChild::new("b", &link, 9600, o);
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
