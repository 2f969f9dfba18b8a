//! The gateway's own upgrade job: its phases and the decisions the driver
//! (`super::run`) asks for, without I/O or a clock.
//!
//! ```text
//! downloading ──► waiting (for child jobs) ──► installing ──┬─► rebooting ──(restart)──► verify ─► succeeded
//!                                                           ├─► restarting ─(restart)──► verify ─┘
//!                                                           └─► verify (after = "none")   └─────► failed(10)
//! any phase: a download failure, an installer failure or the deadline ─────────────────────────► failed(code)
//! ```
//!
//! The phase is journaled before each step that a reboot or a power loss
//! may cut: a restarted daemon continues from [`resume`]. Progress maps the
//! download to 0–40 %, the installer's own progress to 40–90 %, the wait
//! for the reboot or restart to 95 %; 100 % only with the version read back
//! (docs/protocols/iotda.md §4.6).

use otabridge_codecs::iotda::{result, ResultCode};
use otabridge_codecs::version::Policy;

/// Where a gateway job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Fetching the package into the store.
    Downloading,
    /// The package is here; the install waits until no child job runs.
    Waiting,
    /// The installer runs (or ran when the daemon stopped).
    Installing,
    /// The installer succeeded; the box is to reboot into the new version.
    Rebooting,
    /// The installer succeeded; otabridge restarts on its new binary.
    Restarting,
    /// Reported: the new version runs.
    Succeeded,
    /// Reported with a failure code.
    Failed,
}

impl Phase {
    /// The journal's and `otabridge status`'s name.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Downloading => "downloading",
            Phase::Waiting => "waiting",
            Phase::Installing => "installing",
            Phase::Rebooting => "rebooting",
            Phase::Restarting => "restarting",
            Phase::Succeeded => "succeeded",
            Phase::Failed => "failed",
        }
    }

    /// Parses a journal value.
    pub fn parse(s: &str) -> Option<Phase> {
        Some(match s {
            "downloading" => Phase::Downloading,
            "waiting" => Phase::Waiting,
            "installing" => Phase::Installing,
            "rebooting" => Phase::Rebooting,
            "restarting" => Phase::Restarting,
            "succeeded" => Phase::Succeeded,
            "failed" => Phase::Failed,
            _ => return None,
        })
    }

    /// Succeeded or failed.
    pub fn is_terminal(self) -> bool {
        matches!(self, Phase::Succeeded | Phase::Failed)
    }
}

/// The download's share of the progress.
pub const DOWNLOADED_PCT: u8 = 40;
/// Progress once the installer succeeded.
pub const INSTALLED_PCT: u8 = 90;
/// Progress while waiting for the reboot or restart.
pub const REBOOT_PCT: u8 = 95;
/// Reboot commands sent in one boot before the job fails.
pub const MAX_REBOOTS: u32 = 3;

/// Overall progress for `received` of `size` bytes downloaded.
pub fn download_pct(received: u64, size: u64) -> u8 {
    if size == 0 {
        return 0;
    }
    (u64::from(DOWNLOADED_PCT) * received.min(size) / size) as u8
}

/// Overall progress for the installer's own `pct`.
pub fn install_pct(pct: u8) -> u8 {
    DOWNLOADED_PCT
        + (u16::from(INSTALLED_PCT - DOWNLOADED_PCT) * u16::from(pct.min(100)) / 100) as u8
}

/// Progress reports at least 5 points apart, never backwards; the end of
/// each phase (40, 90, 95) is always reported.
#[derive(Debug, Clone, Default)]
pub struct Throttle {
    last: Option<u8>,
}

impl Throttle {
    /// A throttle that last reported `last` (a resumed job).
    pub fn after(last: Option<u8>) -> Self {
        Throttle { last }
    }

    /// Whether `pct` is worth a report; remembers it when it is.
    pub fn take(&mut self, pct: u8) -> bool {
        let go = match self.last {
            None => true,
            Some(l) => {
                pct >= l.saturating_add(5)
                    || (pct > l && matches!(pct, DOWNLOADED_PCT | INSTALLED_PCT | REBOOT_PCT))
            }
        };
        if go {
            self.last = Some(pct);
        }
        go
    }
}

/// Why the version is read back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// The box rebooted after the install.
    AfterReboot,
    /// otabridge restarted after installing its own package.
    AfterRestart,
    /// The installer exited 0 and nothing else is needed (`after = "none"`).
    AfterInstall,
    /// The daemon stopped while the installer ran: the outcome is unknown.
    Interrupted,
}

/// A failure: result code and description.
pub type Failure = (ResultCode, String);

fn failed(why: String) -> Failure {
    (
        ResultCode::INSTALL_FAIL,
        format!("{}: {why}", result::DESC_UPDATE_FAILED),
    )
}

/// Whether `running` is the target; if not, the failure to report. Never a
/// success unless the version read back equals the target under `mode`.
pub fn verdict(
    check: Check,
    running: &str,
    target: &str,
    from: Option<&str>,
    mode: Policy,
) -> Result<(), Failure> {
    if mode.same(target, running) {
        return Ok(());
    }
    let unchanged = from.is_some_and(|f| mode.same(f, running));
    Err(failed(match check {
        Check::AfterReboot if unchanged => format!(
            "version {running} unchanged after the reboot: the update was rolled back \
             (the box booted the previous version), expected {target}"
        ),
        Check::AfterReboot => format!("running {running} after the reboot, expected {target}"),
        Check::AfterRestart => {
            format!("running {running} after otabridge restarted, expected {target}")
        }
        Check::AfterInstall => {
            format!("the installer succeeded but the version is {running}, expected {target}")
        }
        Check::Interrupted => format!(
            "the install was interrupted (otabridge stopped while the installer ran); \
             the version is {running}, expected {target}"
        ),
    }))
}

/// What a restarted daemon does with a job it finds active.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resume {
    /// Continue the download.
    Download,
    /// Continue waiting for child jobs, then install.
    Wait,
    /// Read the version back and decide.
    Verify(Check),
    /// The box has not rebooted yet: send the reboot command again.
    RebootAgain,
    /// Report this failure.
    Fail(Failure),
}

/// The decision for a job found in `phase` at start. `rebooted`: whether
/// the boot id changed since the reboot was asked for (`None`: unknown, a
/// reboot is assumed); `now` and `deadline` in Unix seconds.
pub fn resume(
    phase: Phase,
    rebooted: Option<bool>,
    reboots: u32,
    now: i64,
    deadline: i64,
) -> Resume {
    let late = now >= deadline;
    match phase {
        Phase::Downloading if late => Resume::Fail((
            ResultCode::DOWNLOAD_TIMEOUT,
            format!(
                "{}: the deadline passed before the package was downloaded \
                 (otabridge was not running)",
                result::DESC_CONNECTION_LOST
            ),
        )),
        Phase::Downloading => Resume::Download,
        Phase::Waiting if late => Resume::Fail(busy_past_deadline()),
        Phase::Waiting => Resume::Wait,
        Phase::Installing => Resume::Verify(Check::Interrupted),
        Phase::Rebooting => match rebooted {
            Some(false) if late => Resume::Fail(failed(
                "the gateway did not reboot before the deadline".into(),
            )),
            Some(false) if reboots >= MAX_REBOOTS => Resume::Fail(failed(format!(
                "the gateway did not reboot although the reboot command ran {reboots} times"
            ))),
            Some(false) => Resume::RebootAgain,
            Some(true) | None => Resume::Verify(Check::AfterReboot),
        },
        Phase::Restarting => Resume::Verify(Check::AfterRestart),
        // Not active; nothing to do. The caller never passes these.
        Phase::Succeeded | Phase::Failed => Resume::Verify(Check::AfterInstall),
    }
}

/// The failure when the deadline passes while child jobs hold the install.
pub fn busy_past_deadline() -> Failure {
    (
        ResultCode::BUSY,
        "device in use: child upgrades were still running when the deadline passed \
         (gateway.install_while_children_busy = false)"
            .into(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_round_trip() {
        for p in [
            Phase::Downloading,
            Phase::Waiting,
            Phase::Installing,
            Phase::Rebooting,
            Phase::Restarting,
            Phase::Succeeded,
            Phase::Failed,
        ] {
            assert_eq!(Phase::parse(p.as_str()), Some(p));
        }
        assert_eq!(Phase::parse("queued"), None);
    }

    #[test]
    fn progress_maps_and_throttles() {
        assert_eq!(download_pct(0, 100), 0);
        assert_eq!(download_pct(50, 100), 20);
        assert_eq!(download_pct(200, 100), 40);
        assert_eq!(install_pct(0), 40);
        assert_eq!(install_pct(50), 65);
        assert_eq!(install_pct(100), 90);
        let mut t = Throttle::default();
        let sent: Vec<u8> = [0, 2, 5, 9, 10, 37, 40, 41, 88, 90, 90, 95]
            .into_iter()
            .filter(|p| t.take(*p))
            .collect();
        assert_eq!(sent, [0, 5, 10, 37, 40, 88, 90, 95]);
        assert!(!Throttle::after(Some(95)).take(40), "never backwards");
    }

    #[test]
    fn success_only_on_the_target() {
        let m = Policy::Normalised;
        assert!(verdict(Check::AfterReboot, "v2.0.0", "2.0", Some("1.0"), m).is_ok());
        let (code, d) =
            verdict(Check::AfterReboot, "1.0.0", "2.0.0", Some("1.0.0"), m).unwrap_err();
        assert_eq!(code, ResultCode::INSTALL_FAIL);
        assert!(
            d.contains("unchanged after the reboot") && d.contains("rolled back"),
            "{d}"
        );
        let (_, d) = verdict(Check::AfterReboot, "1.5", "2.0", Some("1.0"), m).unwrap_err();
        assert_eq!(
            d,
            "Firmware update failed: running 1.5 after the reboot, expected 2.0"
        );
        assert!(verdict(Check::AfterRestart, "2.0.0", "v2.0", None, Policy::Exact).is_err());
        let (_, d) = verdict(Check::Interrupted, "1.0", "2.0", Some("1.0"), m).unwrap_err();
        assert!(d.contains("interrupted"), "{d}");
    }

    #[test]
    fn resuming_after_a_restart() {
        let (now, later) = (1000, 2000);
        assert_eq!(
            resume(Phase::Downloading, None, 0, now, later),
            Resume::Download
        );
        assert!(matches!(
            resume(Phase::Downloading, None, 0, later, later),
            Resume::Fail((ResultCode::DOWNLOAD_TIMEOUT, _))
        ));
        assert_eq!(resume(Phase::Waiting, None, 0, now, later), Resume::Wait);
        assert!(matches!(
            resume(Phase::Waiting, None, 0, later, later),
            Resume::Fail((ResultCode::BUSY, _))
        ));
        assert_eq!(
            resume(Phase::Installing, Some(true), 0, later, later),
            Resume::Verify(Check::Interrupted)
        );
        // A reboot happened: read the version, late or not (the truth).
        assert_eq!(
            resume(Phase::Rebooting, Some(true), 1, later + 1, later),
            Resume::Verify(Check::AfterReboot)
        );
        assert_eq!(
            resume(Phase::Rebooting, None, 1, now, later),
            Resume::Verify(Check::AfterReboot)
        );
        // Only the daemon restarted: ask for the reboot again, a bounded
        // number of times and only before the deadline.
        assert_eq!(
            resume(Phase::Rebooting, Some(false), 1, now, later),
            Resume::RebootAgain
        );
        assert!(matches!(
            resume(Phase::Rebooting, Some(false), MAX_REBOOTS, now, later),
            Resume::Fail((ResultCode::INSTALL_FAIL, _))
        ));
        assert!(matches!(
            resume(Phase::Rebooting, Some(false), 1, later, later),
            Resume::Fail((ResultCode::INSTALL_FAIL, _))
        ));
        assert_eq!(
            resume(Phase::Restarting, Some(false), 0, now, later),
            Resume::Verify(Check::AfterRestart)
        );
    }
}
