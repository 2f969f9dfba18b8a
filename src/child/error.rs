//! [`ChildError`]: why a child operation failed, as structure and not as
//! prose: what kind of failure it was, in which step, what the device said
//! in its own protocol's terms, and the underlying error.
//!
//! Drivers build these; they never pick an IoTDA result code. Where the
//! device gave a verdict on the package or the update, the driver classifies
//! it into a [`Cause`] (a framed profile that declares a `result_code` for a
//! status passes it through as [`Cause::Declared`]). The one place that turns
//! a `ChildError` into a result code, a description and a retry decision is
//! `ota::verdict` (see the table in the [`super::Child`] documentation).

use std::fmt;

use otabridge_codecs::iotda::ResultCode;

/// The step of an operation that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Reading the running version (before an upgrade, for a
    /// `version_query`, for the reconnect announcement).
    ReadVersion,
    /// Delivering the image; `offset` is the last byte count the child
    /// acknowledged when it failed.
    Deliver {
        /// Bytes acknowledged before the failure.
        offset: u64,
    },
    /// Making the delivered image the running one (the reboot included).
    Activate,
    /// Reading the version back after the activation.
    Verify,
    /// Making the verified new image permanent ([`super::Child::confirm`]:
    /// an MCUboot test image is reverted at the next boot without it).
    Confirm,
    /// A health probe of the new image before its confirm
    /// ([`super::Child::probe`], issue 15 item 2).
    Probe,
    /// Making the bootloader revert the new image after a failed health
    /// check ([`super::Child::revert`]).
    Revert,
}

impl Step {
    /// The step's name in logs, `otabridge status` and the journal.
    pub fn name(self) -> &'static str {
        match self {
            Step::ReadVersion => "read version",
            Step::Deliver { .. } => "deliver",
            Step::Activate => "activate",
            Step::Verify => "verify",
            Step::Confirm => "confirm",
            Step::Probe => "health check",
            Step::Revert => "revert",
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Deliver { offset } => write!(f, "deliver at offset {offset}"),
            other => f.write_str(other.name()),
        }
    }
}

/// What the device's verdict means, in the failure causes IoTDA documents
/// (docs/protocols/iotda.md §9; they are LwM2M's /5/0/5 results).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// Not enough storage for the image (LwM2M 2, SMP `NO_FREE_SLOT`, an
    /// image larger than the slot).
    NoStorage,
    /// Out of memory while receiving (LwM2M 3, SMP `NO_FREE_MEMORY`).
    NoMemory,
    /// The transfer broke off and the device gave up (LwM2M 4).
    ConnectionLost,
    /// The received image failed the device's integrity check (LwM2M 5,
    /// SMP `match: false`, an invalid hash or TLV area).
    Integrity,
    /// The device does not take this kind of image (LwM2M 6, a bad MCUboot
    /// header).
    UnsupportedPackage,
    /// The device cannot use the package URI we gave it (LwM2M 7).
    InvalidUri,
    /// Writing or booting the image failed, or the device runs another
    /// version after the update (LwM2M 8, flash errors).
    InstallFailed,
    /// The device postponed the update (LwM2M 11).
    Deferred,
    /// The child's battery is below the configured minimum (pre-flight,
    /// LwM2M /3/0/9; docs/images.md).
    LowBattery,
    /// The child's radio signal is below the configured minimum
    /// (pre-flight, LwM2M /4/0/2; docs/images.md).
    PoorSignal,
    /// The child's profile declares this IoTDA code for what the device
    /// answered (`codecs/profiles/README.md`, `result_code`).
    Declared(ResultCode),
    /// A refusal the protocol gives no meaning for (an SMP `rc` outside the
    /// table, LwM2M 9/10).
    Unclassified,
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cause::NoStorage => f.write_str("no storage"),
            Cause::NoMemory => f.write_str("no memory"),
            Cause::ConnectionLost => f.write_str("connection lost"),
            Cause::Integrity => f.write_str("integrity check failed"),
            Cause::UnsupportedPackage => f.write_str("unsupported package"),
            Cause::InvalidUri => f.write_str("invalid URI"),
            Cause::InstallFailed => f.write_str("install failed"),
            Cause::Deferred => f.write_str("deferred"),
            Cause::LowBattery => f.write_str("low battery"),
            Cause::PoorSignal => f.write_str("poor signal"),
            Cause::Declared(c) => write!(f, "result code {c} by profile"),
            Cause::Unclassified => f.write_str("unclassified"),
        }
    }
}

/// What kind of failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The child did not answer in time.
    Unreachable,
    /// The child answered with something this driver cannot read.
    Garbled,
    /// The child refused or failed the operation.
    Refused(Cause),
    /// The port or link is temporarily gone (a USB-CDC device that
    /// re-enumerates while the child reboots, a line that hung up).
    LinkGone,
    /// A local failure: the package file, the driver's own settings.
    Io,
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ErrorKind::Unreachable => f.write_str("no answer"),
            ErrorKind::Garbled => f.write_str("unreadable answer"),
            ErrorKind::Refused(c) => write!(f, "refused ({c})"),
            ErrorKind::LinkGone => f.write_str("link gone"),
            ErrorKind::Io => f.write_str("local I/O"),
        }
    }
}

/// What the device said, in its own protocol's terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Said {
    /// Its code: `/5/0/5 = 5`, `rc 23 (group 1)`, `status 0x10 to begin`.
    pub code: String,
    /// Its words, when the protocol (or the profile) has some.
    pub text: Option<String>,
}

impl fmt::Display for Said {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.text {
            Some(t) => write!(f, "{}: {t}", self.code),
            None => f.write_str(&self.code),
        }
    }
}

/// Why a child operation failed. See the module documentation.
#[derive(Debug)]
pub struct ChildError {
    kind: ErrorKind,
    step: Step,
    said: Option<Said>,
    detail: String,
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl ChildError {
    /// A failure of `kind` in `step`; `detail` says what happened.
    pub fn new(kind: ErrorKind, step: Step, detail: impl Into<String>) -> Self {
        ChildError {
            kind,
            step,
            said: None,
            detail: detail.into(),
            source: None,
        }
    }

    /// The child did not answer in time.
    pub fn unreachable(step: Step, detail: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unreachable, step, detail)
    }

    /// The child answered with something the driver cannot read.
    pub fn garbled(step: Step, detail: impl Into<String>) -> Self {
        Self::new(ErrorKind::Garbled, step, detail)
    }

    /// The child refused or failed, for `cause`.
    pub fn refused(cause: Cause, step: Step, detail: impl Into<String>) -> Self {
        Self::new(ErrorKind::Refused(cause), step, detail)
    }

    /// The port or link is temporarily gone.
    pub fn link_gone(step: Step, detail: impl Into<String>) -> Self {
        Self::new(ErrorKind::LinkGone, step, detail)
    }

    /// A local failure.
    pub fn io(step: Step, detail: impl Into<String>) -> Self {
        Self::new(ErrorKind::Io, step, detail)
    }

    /// With what the device said: its `code` and, when it has some, its words.
    pub fn with_said(mut self, code: impl Into<String>, text: Option<String>) -> Self {
        self.said = Some(Said {
            code: code.into(),
            text,
        });
        self
    }

    /// With the underlying error.
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }

    /// The same failure attributed to `step` (the caller knows better: a
    /// version read after an activation is the verification).
    pub fn in_step(mut self, step: Step) -> Self {
        self.step = step;
        self
    }

    /// The kind of failure.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The step that failed.
    pub fn step(&self) -> Step {
        self.step
    }

    /// The cause, when the child refused.
    pub fn cause(&self) -> Option<Cause> {
        match self.kind {
            ErrorKind::Refused(c) => Some(c),
            _ => None,
        }
    }

    /// What the device said, when it said something.
    pub fn said(&self) -> Option<&Said> {
        self.said.as_ref()
    }

    /// What happened, in the driver's words.
    pub fn detail(&self) -> &str {
        &self.detail
    }
}

impl fmt::Display for ChildError {
    /// `deliver at offset 4096: refused (integrity check failed): push
    /// failed (device said /5/0/5 = 5: integrity failure)`, with the
    /// underlying error after the detail.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", self.step, self.kind, self.detail)?;
        // The underlying error too: this line is what an operator reads.
        if let Some(e) = &self.source {
            write!(f, ": {e}")?;
        }
        if let Some(s) = &self.said {
            write!(f, " (device said {s})")?;
        }
        Ok(())
    }
}

impl std::error::Error for ChildError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_step_kind_and_what_the_device_said() {
        let e = ChildError::refused(
            Cause::Integrity,
            Step::Deliver { offset: 4096 },
            "push failed",
        )
        .with_said("/5/0/5 = 5", Some("integrity check failure".into()));
        assert_eq!(
            e.to_string(),
            "deliver at offset 4096: refused (integrity check failed): push failed \
             (device said /5/0/5 = 5: integrity check failure)"
        );
        assert_eq!(e.cause(), Some(Cause::Integrity));
        let io = std::io::Error::other("disk");
        let e = ChildError::io(Step::Activate, "package").with_source(io);
        assert_eq!(std::error::Error::source(&e).unwrap().to_string(), "disk");
        assert_eq!(e.in_step(Step::Verify).step(), Step::Verify);
    }
}
