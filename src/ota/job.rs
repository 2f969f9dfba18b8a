//! One child's upgrade job as a pure state machine: no I/O, no clock.
//!
//! ```text
//! queued ──version read──► downloading ──► delivering(offset) ──► activating ──► verifying ──┬──────────────► confirming ──► succeeded
//!   │ already at target ──────────────────────────────────────────────────────────────────────│─────────────────────────────► succeeded
//!   │                                       activating, read first: the target already runs ─┤
//!   │                                                               with a health check:      └► probing ─┬─ healthy ─► confirming
//!   │                                                                                                    └─ unhealthy, deadline ─► reverting ─► failed(10)
//!   └─ any phase: a rejection, retries exhausted, or the deadline ──────────────────────────────────────────────────────────────► failed(code)
//! ```
//!
//! Probing (issue 15 item 2, the health-gated confirm; a child whose
//! driver has a health check, [`crate::child::Child::health`]): the child
//! must pass its probes for the configured time before the confirm. Its
//! start is the phase's journal write (`updated_unix`): nothing saves the
//! job while it probes, so a restarted gateway resumes the period where it
//! was. Any failed probe (or the job's deadline) is judged at once, never
//! retried: the job goes to reverting, journaled with what failed as its
//! cause, where the driver makes the bootloader revert
//! ([`crate::child::Child::revert`]) and the version it runs afterwards is
//! read back; the job fails with 10, "reverted: health check failed: …".
//! A probed image is never confirmed and no job ends with it unconfirmed
//! but one whose revert could not be read back (said so in its report).
//!
//! Confirming makes the new image permanent ([`crate::child::Child::confirm`]:
//! MCUboot reverts an unconfirmed test image at the next boot; a no-op for
//! transports without a confirm). It is a phase of its own, journaled
//! before it runs and idempotent, so that a job resumed after a crash at
//! any point after the reset (activating, verifying or confirming) confirms
//! before it reports success: a version read alone never ends a job that
//! activated (issue 15's health-gated confirm waits in this phase).
//!
//! The driver (`super::engine`) asks [`Machine::work`] what to do next,
//! does it, and feeds the result back with [`Machine::handle`], which returns
//! whether to persist the job and the report to queue, if any. Progress is
//! reported at most once per 10 percentage points or per 30 s; a terminal
//! report is always sent, with the version read back from the child on
//! success (docs/protocols/iotda.md §4.6) and, on failure, the code and
//! description [`super::verdict`] chose (docs/protocols/iotda.md §9). Every
//! report carries the version the child runs, written as the platform's
//! target string when the child's [`Policy`] says the two are equal
//! ([`Policy::as_reported`]): a child reading `v2.0.0` for target `2.0.0`
//! reports `2.0.0`.

use otabridge_codecs::iotda::event::ProgressReport;
use otabridge_codecs::iotda::ResultCode;
use otabridge_codecs::version::Policy;

use super::verdict::{verdict, Failure, FailureCause, Verdict};

/// Where a job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Accepted; the child's version is read first.
    Queued,
    /// Waiting for the shared package download.
    Downloading,
    /// Sending the package to the child from `offset`.
    Delivering,
    /// The child holds the image; make it the running one.
    Activating,
    /// Reading the version back after the reboot.
    Verifying,
    /// The target runs unconfirmed; the child must pass its health probes
    /// for the configured time before the confirm (issue 15 item 2).
    Probing,
    /// A health probe failed: make the bootloader revert to the confirmed
    /// image and read its version back.
    Reverting,
    /// The target runs; make it permanent ([`crate::child::Child::confirm`]).
    Confirming,
    /// Done: the child runs the target version.
    Succeeded,
    /// Done: reported with a result code.
    Failed,
}

impl Phase {
    /// The name stored in the journal and shown by `otabridge status`.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Queued => "queued",
            Phase::Downloading => "downloading",
            Phase::Delivering => "delivering",
            Phase::Activating => "activating",
            Phase::Verifying => "verifying",
            Phase::Probing => "probing",
            Phase::Reverting => "reverting",
            Phase::Confirming => "confirming",
            Phase::Succeeded => "succeeded",
            Phase::Failed => "failed",
        }
    }

    /// Parses a journal value.
    pub fn parse(s: &str) -> Option<Phase> {
        Some(match s {
            "queued" => Phase::Queued,
            "downloading" => Phase::Downloading,
            "delivering" => Phase::Delivering,
            "activating" => Phase::Activating,
            "verifying" => Phase::Verifying,
            "probing" => Phase::Probing,
            "reverting" => Phase::Reverting,
            "confirming" => Phase::Confirming,
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

/// What the driver must do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Work {
    /// Read the child's running version.
    ReadVersion,
    /// Wait for the package (shared download).
    Download,
    /// Deliver the package from this offset.
    Deliver {
        /// Resume offset (the last checkpoint).
        from: u64,
    },
    /// Read the version, and activate only if it is not the target yet: a
    /// job resumed after a crash never activates twice blindly.
    Activate,
    /// Probe the child's health until the period ends or a probe fails.
    Probe,
    /// Make the bootloader revert the unconfirmed image; read back.
    Revert,
    /// Confirm the running target image (idempotent).
    Confirm,
    /// Nothing: the job is over.
    Done,
}

/// What happened, fed back into the machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// The child reported this running version.
    Version(String),
    /// The package is downloaded and verified.
    Downloaded,
    /// The child acknowledged bytes up to this offset.
    Progress(u64),
    /// The child holds the whole image.
    Delivered,
    /// The activation command was accepted (the child rebooted).
    Activated,
    /// The child confirmed the running target image.
    Confirmed,
    /// The child passed its health probes for the whole period.
    Healthy,
    /// A health probe failed: what failed, in the gateway's words.
    Unhealthy(String),
    /// The revert is done: the version the child runs now, and whether it
    /// is no longer the target (the bootloader reverted).
    Reverted {
        /// The version read back.
        version: String,
        /// Whether the target no longer runs.
        reverted: bool,
    },
    /// A step failed ([`super::verdict`] says whether to retry it and
    /// what to report if the job ends on it).
    Failed(Verdict),
    /// The job's deadline passed.
    DeadlinePassed,
}

/// What the driver must do after an input.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Effects {
    /// Write the job to the journal now.
    pub persist: bool,
    /// Queue this report upstream.
    pub report: Option<ProgressReport>,
    /// Back off before the next [`Machine::work`] (a transient failure).
    pub backoff: bool,
}

/// Limits of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Transient failures tolerated per phase before the job fails.
    pub max_retries: u32,
    /// Checkpoint the delivery offset at least every this many bytes...
    pub checkpoint_bytes: u64,
    /// ...or this many seconds.
    pub checkpoint_secs: i64,
    /// Report progress when it grew by this many points...
    pub report_points: u8,
    /// ...or this many seconds passed.
    pub report_secs: i64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_retries: 5,
            checkpoint_bytes: 64 * 1024,
            checkpoint_secs: 2,
            report_points: 10,
            report_secs: 30,
        }
    }
}

/// The job's state; everything here is persisted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Machine {
    /// Current phase.
    pub phase: Phase,
    /// The version to reach.
    pub target: String,
    /// Package size.
    pub size: u64,
    /// Delivery offset at the last checkpoint.
    pub offset: u64,
    /// Transient failures in the current phase.
    pub retries: u32,
    /// The version the child ran when the job started (or last read).
    pub current_version: Option<String>,
    /// Result once terminal: code and description.
    pub result: Option<(ResultCode, String)>,
    /// Where the last failure happened and what the device said (kept
    /// while retrying, and with the result).
    pub cause: Option<FailureCause>,
    /// How the child's versions are compared with the target (the child's
    /// `version_match`).
    pub policy: Policy,
    /// The last progress reported and when (Unix seconds).
    pub last_report: Option<(u8, i64)>,
    /// When the offset was last checkpointed (Unix seconds).
    pub last_checkpoint: i64,
    /// Limits.
    pub limits: Limits,
    /// Whether the child's confirm waits for health probes (its driver's
    /// [`crate::child::Child::health`]; set by the engine, not journaled).
    pub health: bool,
}

impl Machine {
    /// A new job towards `target` for a package of `size` bytes.
    pub fn new(target: &str, size: u64, policy: Policy, limits: Limits) -> Self {
        Machine {
            phase: Phase::Queued,
            target: target.to_owned(),
            size,
            offset: 0,
            retries: 0,
            current_version: None,
            result: None,
            cause: None,
            policy,
            last_report: None,
            last_checkpoint: 0,
            limits,
            health: false,
        }
    }

    /// What to do next.
    pub fn work(&self) -> Work {
        match self.phase {
            Phase::Queued | Phase::Verifying => Work::ReadVersion,
            Phase::Downloading => Work::Download,
            Phase::Delivering => Work::Deliver { from: self.offset },
            Phase::Activating => Work::Activate,
            Phase::Probing => Work::Probe,
            Phase::Reverting => Work::Revert,
            Phase::Confirming => Work::Confirm,
            Phase::Succeeded | Phase::Failed => Work::Done,
        }
    }

    /// Overall progress, 0–99 while running: the download is the first
    /// fifth, delivery up to 95, activation and read-back the rest.
    pub fn progress(&self) -> u8 {
        match self.phase {
            Phase::Queued => 0,
            Phase::Downloading => 0,
            Phase::Delivering => {
                let frac = if self.size == 0 {
                    1.0
                } else {
                    self.offset as f64 / self.size as f64
                };
                (20.0 + 75.0 * frac.min(1.0)) as u8
            }
            Phase::Activating => 96,
            Phase::Verifying | Phase::Probing | Phase::Reverting => 98,
            Phase::Confirming => 99,
            Phase::Succeeded => 100,
            Phase::Failed => self.last_report.map_or(0, |(p, _)| p),
        }
    }

    fn is_target(&self, v: &str) -> bool {
        self.policy.same(&self.target, v)
    }

    fn version_for_report(&self) -> String {
        self.current_version.clone().unwrap_or_default()
    }

    fn enter(&mut self, phase: Phase) {
        self.phase = phase;
        self.retries = 0;
    }

    fn succeed(&mut self, version: String, description: &str, now: i64) -> Effects {
        self.enter(Phase::Succeeded);
        self.current_version = Some(version.clone());
        self.result = Some((ResultCode::SUCCESS, description.to_owned()));
        self.cause = None;
        self.last_report = Some((100, now));
        Effects {
            persist: true,
            report: Some(ProgressReport {
                result_code: ResultCode::SUCCESS,
                progress: Some(100),
                version,
                description: Some(description.to_owned()),
            }),
            backoff: false,
        }
    }

    fn fail(&mut self, v: Verdict) -> Effects {
        let progress = self.progress();
        self.enter(Phase::Failed);
        self.result = Some((v.code, v.description.clone()));
        self.cause = Some(v.cause);
        Effects {
            persist: true,
            report: Some(ProgressReport {
                result_code: v.code,
                progress: Some(progress),
                version: self.version_for_report(),
                description: Some(v.description),
            }),
            backoff: false,
        }
    }

    /// A failure the step may get past: back off and try again, unless the
    /// retries ran out (`cap` of them).
    fn retry_or_fail(&mut self, v: Verdict, cap: u32) -> Effects {
        self.retries += 1;
        if !v.retry || self.retries > cap {
            return self.fail(v);
        }
        self.cause = Some(v.cause);
        Effects {
            persist: true,
            report: None,
            backoff: true,
        }
    }

    /// A progress report, if enough changed since the last one.
    fn maybe_report(&mut self, now: i64, force: bool) -> Option<ProgressReport> {
        let p = self.progress();
        let due = match self.last_report {
            None => true,
            Some((last, at)) => {
                force
                    || p >= last.saturating_add(self.limits.report_points)
                    || (p != last && now - at >= self.limits.report_secs)
            }
        };
        if !due {
            return None;
        }
        self.last_report = Some((p, now));
        Some(ProgressReport {
            result_code: ResultCode::SUCCESS,
            progress: Some(p),
            version: self.version_for_report(),
            description: Some(self.phase.as_str().to_owned()),
        })
    }

    fn transition(&mut self, phase: Phase, now: i64) -> Effects {
        self.enter(phase);
        // Checkpoint intervals count from the start of the phase.
        self.last_checkpoint = now;
        Effects {
            persist: true,
            report: self.maybe_report(now, false),
            backoff: false,
        }
    }

    /// A version read from the child, already in its reported form
    /// ([`Policy::as_reported`]).
    fn version_read(&mut self, v: String, now: i64) -> Effects {
        match self.phase {
            Phase::Queued => {
                if self.is_target(&v) {
                    self.succeed(v, "already at the target version", now)
                } else {
                    self.current_version = Some(v);
                    self.transition(Phase::Downloading, now)
                }
            }
            Phase::Activating => {
                // Read before activating: the image is already running
                // (a restart after the activation took effect), but it
                // may not be confirmed yet.
                if self.is_target(&v) {
                    self.current_version = Some(v);
                    self.transition(self.after_verify(), now)
                } else {
                    self.current_version = Some(v);
                    Effects::default()
                }
            }
            Phase::Verifying => {
                if self.is_target(&v) {
                    self.current_version = Some(v);
                    self.transition(self.after_verify(), now)
                } else {
                    // The child answers with another version after the
                    // reboot: MCUboot reverted or the image did not take.
                    let reverted = verdict(Failure::Reverted {
                        running: &v,
                        target: &self.target,
                    });
                    self.current_version = Some(v);
                    self.retry_or_fail(reverted, self.limits.max_retries.min(2))
                }
            }
            _ => Effects::default(),
        }
    }

    /// Where a verified target goes: the health probes, or the confirm.
    fn after_verify(&self) -> Phase {
        if self.health {
            Phase::Probing
        } else {
            Phase::Confirming
        }
    }

    /// What the failed probe was, kept in the cause while reverting.
    fn unhealthy_what(&self) -> String {
        self.cause
            .as_ref()
            .filter(|c| c.kind == FailureCause::UNHEALTHY)
            .map_or_else(|| "a health probe failed".to_owned(), |c| c.detail.clone())
    }

    /// A probe failed (or the deadline came while probing): revert.
    fn unhealthy(&mut self, what: String, now: i64) -> Effects {
        let e = self.transition(Phase::Reverting, now);
        self.cause = Some(FailureCause::unhealthy(&what));
        e
    }

    /// Inputs of the health-gated confirm's two phases.
    fn health_input(&mut self, input: Input, now: i64) -> Effects {
        let what = self.unhealthy_what();
        match (self.phase, input) {
            (Phase::Probing, Input::Healthy) => self.transition(Phase::Confirming, now),
            (Phase::Probing, Input::Unhealthy(what)) => self.unhealthy(what, now),
            (Phase::Probing, Input::DeadlinePassed) => self.unhealthy(
                "the job's deadline came before the health check ended".into(),
                now,
            ),
            (Phase::Reverting, Input::Reverted { version, reverted }) => {
                let v = verdict(Failure::Unhealthy {
                    what: &what,
                    running: &version,
                    reverted,
                    not_read_back: None,
                });
                self.current_version = Some(self.policy.as_reported(&self.target, &version));
                self.fail(v)
            }
            (Phase::Reverting, Input::Failed(failed)) => {
                let mut v = verdict(Failure::Unhealthy {
                    what: &what,
                    running: "",
                    reverted: false,
                    not_read_back: Some(&failed.cause.detail),
                });
                v.retry = failed.retry;
                let e = self.retry_or_fail(v, self.limits.max_retries);
                if !self.phase.is_terminal() {
                    // Keep what failed for the report once the revert is read back.
                    self.cause = Some(FailureCause::unhealthy(&what));
                }
                e
            }
            (Phase::Reverting, Input::DeadlinePassed) => self.fail(verdict(Failure::Unhealthy {
                what: &what,
                running: "",
                reverted: false,
                not_read_back: Some("the job's deadline passed"),
            })),
            _ => Effects::default(),
        }
    }

    /// Feeds one input at Unix time `now`.
    pub fn handle(&mut self, input: Input, now: i64) -> Effects {
        if self.phase.is_terminal() {
            return Effects::default();
        }
        if matches!(self.phase, Phase::Probing | Phase::Reverting) {
            return self.health_input(input, now);
        }
        match input {
            Input::DeadlinePassed => self.fail(verdict(Failure::Deadline(self.phase))),
            Input::Failed(v) => self.retry_or_fail(v, self.limits.max_retries),
            Input::Healthy | Input::Unhealthy(_) | Input::Reverted { .. } => Effects::default(),
            Input::Version(v) => {
                let v = self.policy.as_reported(&self.target, &v);
                self.version_read(v, now)
            }
            Input::Downloaded => match self.phase {
                Phase::Downloading => self.transition(Phase::Delivering, now),
                _ => Effects::default(),
            },
            Input::Progress(off) => {
                if self.phase != Phase::Delivering {
                    return Effects::default();
                }
                let off = off.min(self.size);
                let grew = off.saturating_sub(self.offset);
                let persist = grew >= self.limits.checkpoint_bytes
                    || (grew > 0 && now - self.last_checkpoint >= self.limits.checkpoint_secs)
                    || off < self.offset;
                if persist {
                    self.offset = off;
                    self.last_checkpoint = now;
                    // Progress is being made: earlier failures are forgiven.
                    self.retries = 0;
                }
                let report = if persist {
                    self.maybe_report(now, false)
                } else {
                    None
                };
                Effects {
                    persist,
                    report,
                    backoff: false,
                }
            }
            Input::Delivered => match self.phase {
                Phase::Delivering => {
                    self.offset = self.size;
                    self.last_checkpoint = now;
                    self.transition(Phase::Activating, now)
                }
                _ => Effects::default(),
            },
            Input::Activated => match self.phase {
                Phase::Activating => self.transition(Phase::Verifying, now),
                _ => Effects::default(),
            },
            Input::Confirmed => match self.phase {
                Phase::Confirming => {
                    let v = self
                        .current_version
                        .clone()
                        .unwrap_or_else(|| self.target.clone());
                    self.succeed(v, "upgrade success", now)
                }
                _ => Effects::default(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::child::{Cause, ChildError, Step};
    use crate::package::DownloadError;
    use otabridge_codecs::iotda::result;

    fn m() -> Machine {
        Machine::new("V2.0.0", 1_000_000, Policy::Normalised, Limits::default())
    }

    fn code(e: &Effects) -> Option<u8> {
        e.report.as_ref().map(|r| r.result_code.get())
    }

    /// A child failure as the engine feeds it.
    fn failed(e: ChildError) -> Input {
        Input::Failed(verdict(Failure::Child(&e)))
    }

    /// The step ota attributes a failure to in `phase`.
    fn step_of(phase: Phase) -> Step {
        match phase {
            Phase::Queued | Phase::Downloading => Step::ReadVersion,
            Phase::Delivering => Step::Deliver { offset: 0 },
            Phase::Activating => Step::Activate,
            Phase::Confirming => Step::Confirm,
            _ => Step::Verify,
        }
    }

    #[test]
    fn happy_path_reports_and_checkpoints() {
        let mut j = m();
        assert_eq!(j.work(), Work::ReadVersion);
        let e = j.handle(Input::Version("1.0.0".into()), 0);
        assert_eq!((j.phase, e.persist), (Phase::Downloading, true));
        assert_eq!(e.report.unwrap().progress, Some(0));
        assert_eq!(j.work(), Work::Download);
        j.handle(Input::Downloaded, 1);
        assert_eq!(j.work(), Work::Deliver { from: 0 });
        // Small steps within 2 s are neither persisted nor reported.
        let e = j.handle(Input::Progress(1000), 1);
        assert_eq!(e, Effects::default());
        // 64 KiB: a checkpoint.
        let e = j.handle(Input::Progress(70_000), 1);
        assert!(e.persist);
        assert_eq!(j.offset, 70_000);
        // Two seconds later any growth is a checkpoint.
        let e = j.handle(Input::Progress(70_001), 3);
        assert!(e.persist);
        // Reports at most every 10 points.
        let mut reported = vec![];
        for off in (0..=1_000_000).step_by(50_000) {
            if let Some(r) = j.handle(Input::Progress(off), 3).report {
                reported.push(r.progress.unwrap());
            }
        }
        for w in reported.windows(2) {
            assert!(w[1] >= w[0] + 10, "{reported:?}");
        }
        assert!(reported.iter().all(|p| *p < 100));
        j.handle(Input::Delivered, 4);
        assert_eq!(j.work(), Work::Activate);
        j.handle(Input::Version("1.0.0".into()), 4); // read before activating
        assert_eq!(j.phase, Phase::Activating);
        j.handle(Input::Activated, 5);
        assert_eq!(j.work(), Work::ReadVersion);
        // The target runs: not a success until it is confirmed.
        let e = j.handle(Input::Version("v2.0".into()), 6);
        assert_eq!(
            (j.phase, j.work(), e.persist),
            (Phase::Confirming, Work::Confirm, true)
        );
        assert!(e.report.is_none_or(|r| r.progress != Some(100)));
        let e = j.handle(Input::Confirmed, 6);
        assert_eq!(j.phase, Phase::Succeeded);
        let r = e.report.unwrap();
        // The child writes it "v2.0"; the report writes the target's "V2.0.0".
        assert_eq!(
            (r.result_code.get(), r.progress, r.version.as_str()),
            (0, Some(100), "V2.0.0")
        );
        assert_eq!(j.current_version.as_deref(), Some("V2.0.0"));
        assert_eq!(j.work(), Work::Done);
        // Terminal: nothing more happens.
        assert_eq!(j.handle(Input::DeadlinePassed, 7), Effects::default());
    }

    #[test]
    fn already_at_target_succeeds_without_download() {
        let mut j = m();
        let e = j.handle(Input::Version("2.0".into()), 0);
        assert_eq!(j.phase, Phase::Succeeded);
        let r = e.report.unwrap();
        assert_eq!(
            (r.result_code.get(), r.progress, r.version.as_str()),
            (0, Some(100), "V2.0.0")
        );
    }

    /// Under the exact policy `v2.0.0` is not target `2.0.0`: the job fails
    /// with 10 and reports the version the child runs, as it writes it.
    #[test]
    fn the_exact_policy_reports_what_the_child_runs() {
        let mut j = Machine::new("2.0.0", 1_000, Policy::Exact, Limits::default());
        let e = j.handle(Input::Version("v1.0.0".into()), 0);
        assert_eq!(e.report.unwrap().version, "v1.0.0");
        j.phase = Phase::Verifying;
        let mut last = Effects::default();
        for t in 1..=3 {
            last = j.handle(Input::Version("v2.0.0".into()), t);
        }
        let r = last.report.unwrap();
        assert_eq!(
            (r.result_code, r.version.as_str()),
            (ResultCode::INSTALL_FAIL, "v2.0.0")
        );
        // Normalised, the same reads succeed and report the target string.
        let mut j = Machine::new("2.0.0", 1_000, Policy::Normalised, Limits::default());
        j.phase = Phase::Verifying;
        j.handle(Input::Version("v2.0.0".into()), 1);
        let r = j.handle(Input::Confirmed, 1).report.unwrap();
        assert_eq!(
            (r.result_code, r.version.as_str()),
            (ResultCode::SUCCESS, "2.0.0")
        );
    }

    /// A job resumed in activating reads first; when the target already
    /// runs (the gateway died after the reset), it confirms before it
    /// reports success: never success on a version read alone.
    #[test]
    fn a_resumed_activation_reads_first_and_confirms() {
        for phase in [Phase::Activating, Phase::Verifying] {
            let mut j = m();
            j.phase = phase;
            let e = j.handle(Input::Version("2.0.0".into()), 0);
            assert_eq!(j.phase, Phase::Confirming, "{phase:?}");
            assert!(e.persist, "the phase is journaled before the confirm");
            assert!(e.report.is_none_or(|r| r.progress != Some(100)));
            assert_eq!(j.work(), Work::Confirm);
            // Versions read meanwhile change nothing.
            assert_eq!(
                j.handle(Input::Version("2.0.0".into()), 0),
                Effects::default()
            );
            let e = j.handle(Input::Confirmed, 1);
            assert_eq!((j.phase, code(&e)), (Phase::Succeeded, Some(0)));
            assert_eq!(e.report.unwrap().version, "V2.0.0");
        }
        // A confirm that cannot be had fails the update (10) once retries run out.
        let mut j = m();
        j.phase = Phase::Confirming;
        let refused = ChildError::refused(Cause::InstallFailed, Step::Confirm, "reverted");
        let e = j.handle(failed(refused), 0);
        assert_eq!((j.phase, code(&e)), (Phase::Failed, Some(10)));
        assert_eq!(j.cause.unwrap().step, "confirm");
    }

    /// Issue 15 item 2: with a health check the verified target is probed
    /// before its confirm; a failed probe reverts and fails with 10.
    #[test]
    fn a_health_check_gates_the_confirm_and_a_failure_reverts() {
        let mut j = m();
        j.health = true;
        j.phase = Phase::Verifying;
        let e = j.handle(Input::Version("2.0.0".into()), 10);
        assert_eq!(
            (j.phase, j.work(), e.persist),
            (Phase::Probing, Work::Probe, true)
        );
        assert_eq!(j.last_checkpoint, 10, "the period counts from here");
        // Nothing but the probes' verdict moves it.
        assert_eq!(j.handle(Input::Confirmed, 11), Effects::default());
        j.handle(Input::Healthy, 20);
        assert_eq!(j.phase, Phase::Confirming);
        assert_eq!(
            j.handle(Input::Confirmed, 21)
                .report
                .unwrap()
                .result_code
                .get(),
            0
        );

        // A failed probe: reverting, with what failed kept for the report.
        let mut j = m();
        j.health = true;
        j.phase = Phase::Activating; // a restart after the reset reads first
        j.handle(Input::Version("2.0.0".into()), 0);
        assert_eq!(j.phase, Phase::Probing);
        let e = j.handle(
            Input::Unhealthy("no answer to the image state read".into()),
            5,
        );
        assert!(e.persist);
        assert_eq!((j.phase, j.work()), (Phase::Reverting, Work::Revert));
        assert_eq!(j.cause.as_ref().unwrap().kind, FailureCause::UNHEALTHY);
        // A revert that fails is retried, keeping the health cause.
        let silent = failed(ChildError::unreachable(
            Step::Revert,
            "no answer after the reset",
        ));
        let e = j.handle(silent, 6);
        assert!(e.backoff && e.report.is_none());
        assert_eq!(j.cause.as_ref().unwrap().kind, FailureCause::UNHEALTHY);
        let e = j.handle(
            Input::Reverted {
                version: "1.0.0".into(),
                reverted: true,
            },
            7,
        );
        let r = e.report.unwrap();
        assert_eq!((r.result_code.get(), r.version.as_str()), (10, "1.0.0"));
        let d = r.description.unwrap();
        assert!(
            d.contains("reverted: health check failed: no answer to the image state read")
                && d.contains("runs 1.0.0 again"),
            "{d}"
        );
        assert_eq!(j.phase, Phase::Failed);

        // The deadline while probing reverts too; while reverting it ends the job.
        let mut j = m();
        j.health = true;
        j.phase = Phase::Probing;
        j.handle(Input::DeadlinePassed, 0);
        assert_eq!(j.phase, Phase::Reverting);
        let r = j.handle(Input::DeadlinePassed, 1).report.unwrap();
        assert_eq!(r.result_code.get(), 10);
        let d = r.description.unwrap();
        assert!(d.contains("health check failed: the job's deadline"), "{d}");
        assert!(d.contains("not read back"), "{d}");

        // A child that confirmed itself cannot be reverted: said so.
        let mut j = m();
        j.phase = Phase::Reverting;
        j.cause = Some(FailureCause::unhealthy("echo answered EUNKNOWN"));
        let r = j
            .handle(
                Input::Reverted {
                    version: "2.0.0".into(),
                    reverted: false,
                },
                1,
            )
            .report
            .unwrap();
        assert_eq!(r.version, "V2.0.0");
        assert!(r.description.unwrap().contains("not reverted"));

        // Without a health check the verified target goes to the confirm.
        let mut j = m();
        j.phase = Phase::Verifying;
        j.handle(Input::Version("2.0.0".into()), 0);
        assert_eq!(j.phase, Phase::Confirming);
    }

    #[test]
    fn failures_by_phase() {
        // (phase, input, expected code)
        let integrity = DownloadError::Integrity {
            expected: "a".into(),
            actual: "b".into(),
        };
        let table: Vec<(Phase, Input, u8)> = vec![
            (
                Phase::Downloading,
                Input::Failed(verdict(Failure::Download(&integrity))),
                7,
            ),
            (
                Phase::Delivering,
                failed(ChildError::refused(
                    Cause::NoStorage,
                    Step::Deliver { offset: 0 },
                    "x",
                )),
                5,
            ),
            (Phase::Queued, Input::DeadlinePassed, 6),
            (Phase::Delivering, Input::DeadlinePassed, 6),
            (Phase::Activating, Input::DeadlinePassed, 10),
            (Phase::Verifying, Input::DeadlinePassed, 10),
            (Phase::Confirming, Input::DeadlinePassed, 10),
            (
                Phase::Activating,
                failed(ChildError::refused(
                    Cause::InstallFailed,
                    Step::Activate,
                    "y",
                )),
                10,
            ),
        ];
        for (phase, input, want) in table {
            let mut j = m();
            j.phase = phase;
            j.current_version = Some("1.0".into());
            let e = j.handle(input.clone(), 0);
            assert_eq!(j.phase, Phase::Failed, "{phase:?} {input:?}");
            let r = e.report.unwrap();
            assert_eq!(r.result_code.get(), want, "{phase:?} {input:?}");
            assert_eq!(r.version, "1.0");
            assert!(r.description.is_some());
            assert!(j.cause.is_some(), "{phase:?} {input:?}");
        }
    }

    #[test]
    fn transient_failures_retry_up_to_the_cap() {
        for (phase, want) in [
            (Phase::Queued, 6),
            (Phase::Delivering, 6),
            (Phase::Verifying, 10),
            (Phase::Confirming, 10),
        ] {
            let mut j = m();
            j.phase = phase;
            let timeout = || failed(ChildError::unreachable(step_of(phase), "timeout"));
            for i in 0..5 {
                let e = j.handle(timeout(), i);
                assert!(e.backoff && e.report.is_none(), "{phase:?} try {i}");
                assert_eq!(j.phase, phase);
                assert!(j.cause.is_some(), "the last failure is kept while retrying");
            }
            let e = j.handle(timeout(), 9);
            assert_eq!(
                (j.phase, code(&e)),
                (Phase::Failed, Some(want)),
                "{phase:?}"
            );
            assert!(e.report.unwrap().description.unwrap().contains("timeout"));
        }
    }

    #[test]
    fn progress_forgives_earlier_failures() {
        let mut j = m();
        j.phase = Phase::Delivering;
        let lost = || failed(ChildError::unreachable(Step::Deliver { offset: 0 }, "lost"));
        for _ in 0..5 {
            j.handle(lost(), 0);
        }
        j.handle(Input::Progress(100_000), 1);
        assert_eq!(j.retries, 0);
        let e = j.handle(lost(), 2);
        assert!(e.backoff);
        assert_eq!(j.phase, Phase::Delivering);
    }

    #[test]
    fn a_reverted_image_fails_with_the_running_version() {
        let mut j = m();
        j.phase = Phase::Verifying;
        j.handle(Input::Version("1.0".into()), 0);
        j.handle(Input::Version("1.0".into()), 1);
        let e = j.handle(Input::Version("1.0".into()), 2);
        let r = e.report.unwrap();
        assert_eq!((r.result_code.get(), r.version.as_str()), (10, "1.0"));
        assert!(r
            .description
            .unwrap()
            .starts_with(result::DESC_UPDATE_FAILED));
    }

    #[test]
    fn slow_progress_is_reported_every_30_seconds() {
        let mut j = m();
        j.phase = Phase::Delivering;
        j.last_report = Some((20, 0));
        let e = j.handle(Input::Progress(70_000), 10);
        assert!(e.persist && e.report.is_none());
        let e = j.handle(Input::Progress(140_000), 31);
        assert_eq!(e.report.unwrap().progress, Some(30));
    }

    #[test]
    fn phases_round_trip_their_names() {
        for p in [
            Phase::Queued,
            Phase::Downloading,
            Phase::Delivering,
            Phase::Activating,
            Phase::Verifying,
            Phase::Probing,
            Phase::Reverting,
            Phase::Confirming,
            Phase::Succeeded,
            Phase::Failed,
        ] {
            assert_eq!(Phase::parse(p.as_str()), Some(p));
        }
        assert_eq!(Phase::parse("bogus"), None);
    }
}
