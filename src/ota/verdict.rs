//! The one place a failure becomes an IoTDA result: [`verdict`] turns a
//! child's [`ChildError`], a download's [`DownloadError`] or one of the job's
//! own findings into a retry decision, a `result_code`, the description the
//! platform shows, and the cause an operator reads in the log line and in
//! `otabridge status`.
//!
//! Codes and wording: docs/protocols/iotda.md §4.6 (codes) and §9 (the
//! platform's failure causes, which are LwM2M's /5/0/5 results). Drivers
//! never choose codes: they say what kind of failure it was and, when the
//! device gave a verdict, classify it into a [`Cause`].

use std::fmt;

use otabridge_codecs::iotda::result::{
    DESC_CONNECTION_LOST, DESC_INTEGRITY, DESC_INVALID_URI, DESC_NO_MEMORY, DESC_NO_STORAGE,
    DESC_UNSUPPORTED_TYPE, DESC_UPDATE_FAILED,
};
use otabridge_codecs::iotda::ResultCode;
use serde::{Deserialize, Serialize};

use super::job::Phase;
use crate::child::{Cause, ChildError, ErrorKind, Step};
use crate::image::Rejection;
use crate::package::DownloadError;

/// Something that went wrong in a job.
#[derive(Debug, Clone, Copy)]
pub enum Failure<'a> {
    /// A child operation failed (or ota's own timer for it ran out).
    Child(&'a ChildError),
    /// The package could not be had.
    Download(&'a DownloadError),
    /// The image gate refused the package for this child (`crate::image`;
    /// it gives the code and the description itself).
    ImageCheck(&'a Rejection),
    /// The job's deadline passed in this phase.
    Deadline(Phase),
    /// The child's activation window opens too late for the event's
    /// deadline (issue 15 item 1, `super::window`): the image was delivered
    /// and not activated. What the job says about it.
    Window(&'a str),
    /// After the update the child runs another version than the target
    /// (MCUboot reverted, or the image did not take).
    Reverted {
        /// What it runs.
        running: &'a str,
        /// What it should run.
        target: &'a str,
    },
    /// The job's child is no longer in the configuration.
    Unconfigured(&'a str),
    /// An operator cancelled the job through the control API (issue 15,
    /// `src/ota/control.rs`), at a safe point before the activation: the
    /// child runs the image it ran before. What it was doing: its phase,
    /// or `waiting for the activation window`.
    Cancelled(&'a str),
    /// The health-gated confirm (issue 15 item 2): a probe failed (`what`)
    /// and the job reverted the child, which runs `running` afterwards
    /// (`reverted`: it is no longer the target), or the revert could not
    /// be read back (`not_read_back`: why).
    Unhealthy {
        /// What failed, in the gateway's words.
        what: &'a str,
        /// The version read back after the revert.
        running: &'a str,
        /// Whether the target no longer runs.
        reverted: bool,
        /// Why nothing could be read back, if so.
        not_read_back: Option<&'a str>,
    },
}

/// What ota does about a failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// Whether trying the step again (after a backoff, within the job's
    /// retry cap) may succeed.
    pub retry: bool,
    /// The result to report when the job ends on this failure.
    pub code: ResultCode,
    /// The report's `description`: the platform's wording for the cause
    /// (docs/protocols/iotda.md §9), or the profile's for a declared code.
    pub description: String,
    /// Where it failed and what the device said, for the log and `status`.
    pub cause: FailureCause,
}

/// Where a job failed and what the device said: what `otabridge status`
/// shows (in `--json` as this object) and the job-ended log line prints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailureCause {
    /// `read version`, `download`, `deliver`, `activate`, `verify`, or the
    /// phase a deadline passed in.
    pub step: String,
    /// Bytes the child had acknowledged, for a failed delivery.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// `no answer`, `unreadable answer`, `refused (<cause>)`, `link gone`,
    /// `local I/O`, `download failed`, `deadline passed`.
    pub kind: String,
    /// What the device said, in its protocol's terms (`/5/0/5 = 5:
    /// IntegrityFailure`, `SMP image group rc 9 (NO_FREE_SLOT)`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_said: Option<String>,
    /// What happened, in the gateway's words.
    pub detail: String,
}

impl FailureCause {
    /// `kind` of a cause a job is waiting on, not failed with: a pre-flight
    /// refusal (low battery, poor signal, too little free memory) that the
    /// job asks about again until the event's deadline.
    pub const WAITING: &'static str = "waiting";

    /// The cause of a job gated by the child's pre-flight: `v` is what the
    /// job reports should the refusal last until the deadline.
    pub fn waiting(v: &Verdict) -> Self {
        FailureCause {
            step: "pre-flight".into(),
            offset: v.cause.offset,
            kind: Self::WAITING.into(),
            device_said: v.cause.device_said.clone(),
            detail: format!(
                "{}; asked again until the deadline, then result {}",
                v.description, v.code
            ),
        }
    }

    /// The cause of a job waiting for a child that sleeps and wakes by
    /// itself ([`crate::child::Child::asleep`]: an LwM2M client in queue
    /// mode); `detail` says what it waits for.
    pub fn asleep(detail: &str) -> Self {
        own_cause("wake", Self::WAITING, detail)
    }

    /// `kind` of the cause a reverting job keeps: the failed health probe.
    pub const UNHEALTHY: &'static str = "health check failed";

    /// The cause of a job whose health probe failed with `what`.
    pub fn unhealthy(what: &str) -> Self {
        own_cause("health check", Self::UNHEALTHY, what)
    }

    /// Whether the job waits on this cause rather than failed with it.
    pub fn is_waiting(&self) -> bool {
        self.kind == Self::WAITING
    }

    /// `step` of a job's wait for its activation window (`super::window`).
    pub const WINDOW_STEP: &'static str = "activation window";

    /// The cause of a delivered job that waits for its activation window:
    /// `detail` says which window and when it opens.
    pub fn window(detail: String) -> Self {
        FailureCause {
            step: Self::WINDOW_STEP.into(),
            offset: None,
            kind: Self::WAITING.into(),
            device_said: None,
            detail,
        }
    }

    /// Whether the job waits for its activation window.
    pub fn is_window(&self) -> bool {
        self.is_waiting() && self.step == Self::WINDOW_STEP
    }
}

impl fmt::Display for FailureCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.step)?;
        if let Some(o) = self.offset {
            write!(f, " at offset {o}")?;
        }
        write!(f, ": {}: {}", self.kind, self.detail)?;
        if let Some(s) = &self.device_said {
            write!(f, " (device said {s})")?;
        }
        Ok(())
    }
}

/// The result code of a cause the device gave, and the platform's wording
/// for it (docs/protocols/iotda.md §9; 4 → 6 and 7 → 255 are inferred
/// there; Deferred → 1 "device in use" is inferred: the child postponed).
fn cause_result(c: Cause) -> (ResultCode, Option<&'static str>) {
    match c {
        Cause::NoStorage => (ResultCode::LOW_SPACE, Some(DESC_NO_STORAGE)),
        Cause::NoMemory => (ResultCode::LOW_MEMORY, Some(DESC_NO_MEMORY)),
        Cause::ConnectionLost => (ResultCode::DOWNLOAD_TIMEOUT, Some(DESC_CONNECTION_LOST)),
        Cause::Integrity => (ResultCode::CHECK_FAIL, Some(DESC_INTEGRITY)),
        Cause::UnsupportedPackage => (ResultCode::UNKNOWN_TYPE, Some(DESC_UNSUPPORTED_TYPE)),
        Cause::InvalidUri => (ResultCode::INNER_ERROR, Some(DESC_INVALID_URI)),
        Cause::InstallFailed => (ResultCode::INSTALL_FAIL, Some(DESC_UPDATE_FAILED)),
        Cause::Deferred => (ResultCode::BUSY, Some("Firmware update deferred")),
        // The pre-flight's own words (which reading, which minimum).
        Cause::LowBattery => (ResultCode::LOW_POWER, None),
        Cause::PoorSignal => (ResultCode::SIGNAL_BAD, None),
        Cause::Declared(code) => (code, None),
        Cause::Unclassified => (ResultCode::INNER_ERROR, None),
    }
}

/// Turns a failure into what ota does about it. See the module
/// documentation; the retry and timeout owners are in the `Child` trait's.
pub fn verdict(f: Failure<'_>) -> Verdict {
    match f {
        Failure::Child(e) => child(e),
        Failure::Download(e) => download(e),
        Failure::ImageCheck(r) => Verdict {
            retry: false,
            code: r.code,
            description: r.description.clone(),
            cause: own_cause("image check", "refused", &r.description),
        },
        Failure::Deadline(phase) => {
            let (code, what) = match phase {
                Phase::Queued | Phase::Downloading | Phase::Delivering => (
                    ResultCode::DOWNLOAD_TIMEOUT,
                    "the package was not delivered",
                ),
                _ => (
                    ResultCode::INSTALL_FAIL,
                    "the new version was not confirmed",
                ),
            };
            let description = format!("Deadline passed: {what} within 24 h of the event");
            Verdict {
                retry: false,
                code,
                cause: own_cause(phase.as_str(), "deadline passed", &description),
                description,
            }
        }
        Failure::Window(why) => {
            let description = format!("{DESC_UPDATE_FAILED}: not activated: {why}");
            Verdict {
                retry: false,
                code: ResultCode::INSTALL_FAIL,
                cause: own_cause(FailureCause::WINDOW_STEP, "deadline before the window", why),
                description,
            }
        }
        Failure::Reverted { running, target } => Verdict {
            retry: true,
            code: ResultCode::INSTALL_FAIL,
            description: format!(
                "{DESC_UPDATE_FAILED}: the child runs {running} after the update, not {target}"
            ),
            cause: FailureCause {
                step: Step::Verify.name().into(),
                offset: None,
                kind: "wrong version".into(),
                device_said: Some(format!("version {running}")),
                detail: format!("the target is {target}"),
            },
        },
        Failure::Cancelled(phase) => {
            // Not the child's fault nor the package's: the gateway's own
            // decision, so "internal exception" with the reason (§4.6 has
            // no code for a cancel).
            let description = format!(
                "cancelled by the gateway's operator while {phase}; the child keeps the version it ran"
            );
            Verdict {
                retry: false,
                code: ResultCode::INNER_ERROR,
                cause: own_cause(phase, "cancelled", &description),
                description,
            }
        }
        Failure::Unhealthy {
            what,
            running,
            reverted,
            not_read_back,
        } => {
            let description = match (not_read_back, reverted) {
                (Some(why), _) => format!(
                    "{DESC_UPDATE_FAILED}: health check failed: {what}; the revert was not read \
                     back ({why}): MCUboot reverts the unconfirmed image at the child's next boot"
                ),
                (None, true) => format!(
                    "{DESC_UPDATE_FAILED}: reverted: health check failed: {what}; the child runs \
                     {running} again"
                ),
                (None, false) => format!(
                    "{DESC_UPDATE_FAILED}: health check failed: {what}; not reverted: the child \
                     runs {running}, which it confirmed itself"
                ),
            };
            Verdict {
                retry: false,
                code: ResultCode::INSTALL_FAIL,
                cause: FailureCause {
                    step: "health check".into(),
                    offset: None,
                    kind: FailureCause::UNHEALTHY.into(),
                    device_said: (!running.is_empty()).then(|| format!("version {running}")),
                    detail: what.into(),
                },
                description,
            }
        }
        Failure::Unconfigured(id) => {
            let description = format!("child {id} is no longer configured");
            Verdict {
                retry: false,
                code: ResultCode::INNER_ERROR,
                cause: own_cause("queued", "not configured", &description),
                description,
            }
        }
    }
}

fn own_cause(step: &str, kind: &str, detail: &str) -> FailureCause {
    FailureCause {
        step: step.into(),
        offset: None,
        kind: kind.into(),
        device_said: None,
        detail: detail.into(),
    }
}

fn child(e: &ChildError) -> Verdict {
    let step = e.step();
    let cause = FailureCause {
        step: step.name().into(),
        offset: match step {
            Step::Deliver { offset } => Some(offset),
            _ => None,
        },
        kind: e.kind().to_string(),
        device_said: e.said().map(ToString::to_string),
        detail: match std::error::Error::source(e) {
            Some(s) => format!("{}: {s}", e.detail()),
            None => e.detail().to_owned(),
        },
    };
    let (retry, code, description) = match e.kind() {
        ErrorKind::Refused(c) => {
            let (code, wording) = cause_result(c);
            let description = match (c, e.said().and_then(|s| s.text.as_deref())) {
                // The profile's own words for its declared code.
                (Cause::Declared(_), Some(words)) => words.to_owned(),
                (Cause::Declared(code), None) => code.description().to_owned(),
                _ => wording.map_or_else(|| cause.detail.clone(), str::to_owned),
            };
            (false, code, description)
        }
        // Silence, an unreadable answer, a link that is away: the step may
        // succeed later. Should the retries run out, a child lost before
        // the activation is a lost connection (6), after it a failed
        // update (10).
        ErrorKind::Unreachable | ErrorKind::Garbled | ErrorKind::LinkGone => match step {
            Step::Activate | Step::Verify | Step::Confirm | Step::Probe | Step::Revert => (
                true,
                ResultCode::INSTALL_FAIL,
                format!("{DESC_UPDATE_FAILED}: the child did not come back after the update ({e})"),
            ),
            Step::ReadVersion | Step::Deliver { .. } => (
                true,
                ResultCode::DOWNLOAD_TIMEOUT,
                format!("{DESC_CONNECTION_LOST}: {e}"),
            ),
        },
        ErrorKind::Io => (
            false,
            ResultCode::INNER_ERROR,
            format!("gateway I/O error: {}", cause.detail),
        ),
    };
    Verdict {
        retry,
        code,
        description,
        cause,
    }
}

/// A download failure: transient ones were retried by the downloader until
/// the deadline, so every one that reaches a job is final.
fn download(e: &DownloadError) -> Verdict {
    let (code, description) = match e {
        DownloadError::TooLargeForConfig { .. } | DownloadError::NoSpace { .. } => {
            (ResultCode::LOW_SPACE, DESC_NO_STORAGE.to_owned())
        }
        // Found full while writing (issue 17, item 6): the platform's
        // wording, then what filled up.
        DownloadError::DiskFull(_) => (ResultCode::LOW_SPACE, format!("{DESC_NO_STORAGE}: {e}")),
        DownloadError::LengthMismatch { .. } | DownloadError::Integrity { .. } => {
            (ResultCode::CHECK_FAIL, DESC_INTEGRITY.to_owned())
        }
        // A refused token is not a lost connection, and only a new upgrade
        // task fixes it: say so after the platform's wording.
        DownloadError::TokenRejected { status, .. } => (
            ResultCode::DOWNLOAD_TIMEOUT,
            format!(
                "{DESC_CONNECTION_LOST}: the download token was refused (HTTP {status}); it has \
                 expired or is no longer valid, a new upgrade task is needed"
            ),
        ),
        DownloadError::HttpStatus { .. } | DownloadError::Timeout { .. } => (
            ResultCode::DOWNLOAD_TIMEOUT,
            DESC_CONNECTION_LOST.to_owned(),
        ),
        DownloadError::Certificate(_) | DownloadError::Redirect(_) => (
            ResultCode::DOWNLOAD_TIMEOUT,
            format!("{DESC_CONNECTION_LOST}: {e}"),
        ),
        DownloadError::InvalidUrl(_) | DownloadError::InvalidSign(_) => {
            (ResultCode::INNER_ERROR, DESC_INVALID_URI.to_owned())
        }
        DownloadError::Tls(_) | DownloadError::Store(_) | DownloadError::Cancelled => {
            (ResultCode::INNER_ERROR, e.to_string())
        }
    };
    Verdict {
        retry: false,
        code,
        description,
        cause: own_cause("download", "download failed", &e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(e: &ChildError) -> (bool, u8) {
        let v = verdict(Failure::Child(e));
        (v.retry, v.code.get())
    }

    #[test]
    fn causes_map_to_iotda_codes_and_wording() {
        let d = Step::Deliver { offset: 512 };
        let table = [
            (Cause::NoStorage, 5, DESC_NO_STORAGE),
            (Cause::NoMemory, 9, DESC_NO_MEMORY),
            (Cause::ConnectionLost, 6, DESC_CONNECTION_LOST),
            (Cause::Integrity, 7, DESC_INTEGRITY),
            (Cause::UnsupportedPackage, 8, DESC_UNSUPPORTED_TYPE),
            (Cause::InvalidUri, 255, DESC_INVALID_URI),
            (Cause::InstallFailed, 10, DESC_UPDATE_FAILED),
        ];
        for (cause, code, words) in table {
            let e = ChildError::refused(cause, d, "x");
            let v = verdict(Failure::Child(&e));
            assert_eq!((v.retry, v.code.get()), (false, code), "{cause}");
            assert_eq!(v.description, words, "{cause}");
            assert_eq!(v.cause.offset, Some(512));
        }
        // A profile's declared code with its words.
        let e = ChildError::refused(Cause::Declared(ResultCode::LOW_SPACE), d, "begin")
            .with_said("status 0x10", Some("Flash full".into()));
        let v = verdict(Failure::Child(&e));
        assert_eq!(
            (v.code, v.description.as_str()),
            (ResultCode::LOW_SPACE, "Flash full")
        );
        assert_eq!(
            v.cause.device_said.as_deref(),
            Some("status 0x10: Flash full")
        );
        // The pre-flight's refusals carry their own words.
        for (cause, code) in [(Cause::LowBattery, 4), (Cause::PoorSignal, 2)] {
            let e = ChildError::refused(cause, d, "/3/0/9 = 12 %, the minimum is 20 %");
            let v = verdict(Failure::Child(&e));
            assert_eq!((v.retry, v.code.get()), (false, code), "{cause}");
            assert_eq!(v.description, "/3/0/9 = 12 %, the minimum is 20 %");
        }
        // No meaning given: 255 with the driver's words.
        let e = ChildError::refused(Cause::Unclassified, d, "device error: rc 28");
        let v = verdict(Failure::Child(&e));
        assert_eq!(
            (v.code.get(), v.description.as_str()),
            (255, "device error: rc 28")
        );
    }

    #[test]
    fn silence_retries_and_names_the_phase_when_it_runs_out() {
        for (step, code) in [
            (Step::ReadVersion, 6),
            (Step::Deliver { offset: 0 }, 6),
            (Step::Activate, 10),
            (Step::Verify, 10),
            (Step::Confirm, 10),
        ] {
            for e in [
                ChildError::unreachable(step, "timeout"),
                ChildError::garbled(step, "junk"),
                ChildError::link_gone(step, "port gone"),
            ] {
                assert_eq!(of(&e), (true, code), "{e}");
            }
        }
        let e = ChildError::io(Step::Activate, "package").with_source(std::io::Error::other("x"));
        let v = verdict(Failure::Child(&e));
        assert_eq!((v.retry, v.code.get()), (false, 255));
        assert_eq!(v.description, "gateway I/O error: package: x");
    }

    #[test]
    fn download_failures_are_final() {
        let e = DownloadError::NoSpace {
            needed: 1,
            available: 0,
            margin: 0,
        };
        let v = verdict(Failure::Download(&e));
        assert_eq!(
            (v.retry, v.code.get(), v.description.as_str()),
            (false, 5, DESC_NO_STORAGE)
        );
        let e = DownloadError::Integrity {
            expected: "a".into(),
            actual: "b".into(),
        };
        let v = verdict(Failure::Download(&e));
        assert_eq!((v.code.get(), v.description.as_str()), (7, DESC_INTEGRITY));
        let e = DownloadError::LengthMismatch {
            expected: 1,
            detail: "x".into(),
        };
        assert_eq!(verdict(Failure::Download(&e)).code.get(), 7);
        let e = DownloadError::TokenRejected {
            status: 403,
            attempts: 3,
        };
        let v = verdict(Failure::Download(&e));
        assert_eq!(v.code.get(), 6);
        assert!(v.description.starts_with(DESC_CONNECTION_LOST));
        assert!(v.description.contains("token"), "{}", v.description);
        let e = DownloadError::Timeout {
            attempts: 9,
            last: "reset".into(),
        };
        let v = verdict(Failure::Download(&e));
        assert_eq!(
            (v.code.get(), v.description.as_str()),
            (6, DESC_CONNECTION_LOST)
        );
        let e = DownloadError::InvalidUrl("http://x".into());
        let v = verdict(Failure::Download(&e));
        assert_eq!(
            (v.code.get(), v.description.as_str()),
            (255, DESC_INVALID_URI)
        );
        assert_eq!(v.cause.step, "download");
    }
}
