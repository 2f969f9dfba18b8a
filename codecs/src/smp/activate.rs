//! The activation engine: mark the uploaded image for test, reset, read the
//! version back after the reboot, confirm.
//!
//! Sources: zephyr `smp_groups/smp_group_1.rst` ("State of image" read and
//! write), `smp_groups/smp_group_0.rst` ("System reset": the device answers
//! before it resets), `subsys/mgmt/mcumgr/grp/img_mgmt/src/img_mgmt_state.c`;
//! MCUboot `docs/design.md` (a test image is reverted at the next boot
//! unless confirmed). Flow from mcumgr's README (docs/protocols/children.md §4.3).
//!
//! Steps:
//! 1. Image state read. If the active image already has the target version
//!    (the gateway restarted after the reset), go to 5. Otherwise pick the
//!    non-active image of [`ActivateConfig::image`] (the one whose hash is
//!    `expected_hash` when given; `hash` is MCUboot's `IMAGE_TLV_SHA256`,
//!    not the file's SHA-256). Its version must match the target.
//! 2. State write `{hash, confirm: false}` (test), unless already pending.
//! 3. Reset (group 0 id 5), sent once: a repeated reset after the device
//!    already rebooted into the test image would make MCUboot revert it. A
//!    lost answer is therefore not an error.
//! 4. Wait [`ActivateConfig::reboot_wait`], then image state read, retried
//!    while the device is silent. Success only when the active image's
//!    version is the target ([`ActivateConfig::version_policy`]).
//! 5. State write `{hash, confirm: true}` for the active image.
//!
//! [`Activate::confirm_running`] runs step 1 and step 5 only: the confirm as
//! a step of its own, which the gateway's job owns and journals (so that a
//! gateway killed between the reset and the confirm confirms after its
//! restart, and so that a later health check can sit between the two). It
//! is idempotent: an active target image already confirmed is `Done` at
//! once; an active image that is not the target is
//! [`ActivateError::VersionMismatch`] and nothing is written (confirming it
//! would make the old image permanent, which it already is).
//!
//! # Call order
//! Like [`super::upload::Upload`]: [`Activate::new`], then loop on
//! [`Activate::poll_transmit`], [`Activate::poll_event`],
//! [`Activate::handle_message`] / [`Activate::handle_timeout`] at
//! [`Activate::poll_timeout`], until [`ActivateEvent::Done`] or
//! [`ActivateEvent::Failed`].

use super::exchange::{Exchange, Timeout};
use super::header::{command, group, Op, SmpVersion};
use super::message::{self, ImageSlot, SmpErr};
use super::BodyError;
use crate::engine::Engine;
use crate::time::Instant;
use crate::version;
use std::collections::VecDeque;
use std::time::Duration;

/// Activation settings; [`Default`] gives the values documented per field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActivateConfig {
    /// Header version (v2).
    pub version: SmpVersion,
    /// Image number to activate (0).
    pub image: u64,
    /// Wait per request: 2.5 s.
    pub timeout: Duration,
    /// Extra attempts per request before the reset: 4.
    pub retries: u32,
    /// Silence after the reset before asking again: 5 s.
    pub reboot_wait: Duration,
    /// Wait per state read after the reboot: 2 s.
    pub reboot_timeout: Duration,
    /// Extra state reads while the device stays silent: 30 (about a minute
    /// with the defaults; an MCUboot swap of a large slot takes tens of seconds).
    pub reboot_retries: u32,
    /// How the versions the device reports are compared with the target
    /// (normalised; docs/config.md `version_match`).
    pub version_policy: version::Policy,
    /// Confirm the new image once its version is read back (true).
    pub confirm: bool,
    /// Sequence number of the first request.
    pub first_seq: u8,
}

impl Default for ActivateConfig {
    fn default() -> Self {
        ActivateConfig {
            version: SmpVersion::V2,
            image: 0,
            timeout: Duration::from_millis(2500),
            retries: 4,
            reboot_wait: Duration::from_secs(5),
            reboot_timeout: Duration::from_secs(2),
            reboot_retries: 30,
            version_policy: version::Policy::Normalised,
            confirm: true,
            first_seq: 0,
        }
    }
}

/// A step of the activation, named in errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Image state read before the test.
    ReadState,
    /// State write `confirm: false`.
    Test,
    /// Reset.
    Reset,
    /// Image state read after the reboot.
    ReadAfterReset,
    /// State write `confirm: true`.
    Confirm,
}

/// Why an activation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ActivateError {
    /// The device answered a step with an error.
    #[error("{step:?}: device error: {err}")]
    Device {
        /// The step.
        step: Step,
        /// The error.
        err: SmpErr,
    },
    /// No answer to a step after every attempt.
    #[error("{step:?}: no answer")]
    Timeout {
        /// The step.
        step: Step,
    },
    /// An answer that does not decode.
    #[error("{step:?}: malformed answer: {err}")]
    Malformed {
        /// The step.
        step: Step,
        /// The decoding error.
        err: BodyError,
    },
    /// No non-active image (with the expected hash) in the state list.
    #[error("no uploaded image to activate")]
    NoCandidate,
    /// The uploaded image's version is not the target.
    #[error("uploaded image has version {found:?}, target is {target:?}")]
    CandidateVersion {
        /// Target version.
        target: String,
        /// The image's version.
        found: String,
    },
    /// The test write answered a list in which the image is not pending.
    #[error("device did not mark the image pending")]
    NotPending,
    /// The device stayed silent after the reset.
    #[error("no answer after the reset ({attempts} state reads)")]
    NoAnswerAfterReset {
        /// State reads made.
        attempts: u32,
    },
    /// No active image in the state list.
    #[error("device reports no active image")]
    NoActiveImage,
    /// After the reboot the running version is not the target (MCUboot
    /// reverted or refused the image).
    #[error("device runs {reported:?} after the reboot, target is {target:?}")]
    VersionMismatch {
        /// Target version.
        target: String,
        /// Version of the active image.
        reported: String,
    },
    /// The confirm answered a list in which the active image is not confirmed.
    #[error("device did not confirm the image")]
    NotConfirmed,
}

/// What the activation reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ActivateEvent {
    /// The image to test was found.
    Candidate {
        /// Its slot.
        slot: u64,
        /// Its version.
        version: String,
    },
    /// The target version already runs; only the confirm remains.
    AlreadyActive {
        /// The running version.
        version: String,
    },
    /// The image is marked for a test boot.
    Tested,
    /// The reset was sent; `acknowledged` when the device answered it.
    ResetSent {
        /// Whether the device answered before resetting.
        acknowledged: bool,
    },
    /// The device answered after the reboot and runs the target version.
    Rebooted {
        /// The running version.
        version: String,
    },
    /// The target version runs (and is confirmed, unless confirm is off).
    Done {
        /// The running version as the device reports it.
        version: String,
    },
    /// The activation stopped.
    Failed(ActivateError),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    ReadState,
    Test,
    Reset,
    Waiting { until: Instant },
    ReadAfter,
    Confirm { version: String },
    Finished,
}

/// The activation engine; see the module doc.
#[derive(Debug)]
pub struct Activate {
    config: ActivateConfig,
    target: String,
    expected_hash: Option<Vec<u8>>,
    exchange: Exchange,
    phase: Phase,
    events: VecDeque<ActivateEvent>,
    /// Steps 1 and 5 only ([`Activate::confirm_running`]).
    confirm_only: bool,
}

impl Activate {
    /// Starts activating: the state read is queued.
    pub fn new(
        config: ActivateConfig,
        target: &str,
        expected_hash: Option<Vec<u8>>,
        now: Instant,
    ) -> Activate {
        let mut a = Activate {
            exchange: Exchange::new(config.version, config.first_seq),
            config,
            target: target.to_owned(),
            expected_hash,
            phase: Phase::ReadState,
            events: VecDeque::new(),
            confirm_only: false,
        };
        a.state_read(a.config.timeout, a.config.retries, now);
        a
    }

    /// Confirms the running image when it is `target` (steps 1 and 5 of
    /// the module doc; `config.confirm` is ignored: confirming is the
    /// point). Events: [`ActivateEvent::AlreadyActive`], then
    /// [`ActivateEvent::Done`], or [`ActivateEvent::Failed`] with
    /// [`ActivateError::VersionMismatch`] / [`ActivateError::NoActiveImage`]
    /// when the target does not run.
    pub fn confirm_running(config: ActivateConfig, target: &str, now: Instant) -> Activate {
        let mut a = Activate::new(
            ActivateConfig {
                confirm: true,
                ..config
            },
            target,
            None,
            now,
        );
        a.confirm_only = true;
        a
    }

    /// Whether the activation ended.
    pub fn is_finished(&self) -> bool {
        self.phase == Phase::Finished
    }

    /// Requests sent again after a timeout so far (state reads while the
    /// device reboots included).
    pub fn retries(&self) -> u64 {
        self.exchange.retransmits()
    }

    /// A message from the device; others than the answer awaited are ignored.
    pub fn handle_message(&mut self, msg: &[u8], now: Instant) {
        let Some(body) = self.exchange.handle_message(msg) else {
            return;
        };
        match self.phase.clone() {
            Phase::ReadState => {
                if let Some(list) = self.list(Step::ReadState, body) {
                    self.on_first_list(&list, now);
                }
            }
            Phase::Test => {
                if let Some(list) = self.list(Step::Test, body) {
                    let hash = self.expected_hash.as_deref();
                    if list
                        .iter()
                        .any(|s| Some(s.hash.as_slice()) == hash && !s.pending)
                    {
                        return self.fail(ActivateError::NotPending);
                    }
                    self.events.push_back(ActivateEvent::Tested);
                    self.reset(now);
                }
            }
            Phase::Reset => match message::reset_response(body) {
                Ok(Some(err)) => self.fail(ActivateError::Device {
                    step: Step::Reset,
                    err,
                }),
                _ => self.after_reset(true, now),
            },
            Phase::ReadAfter => {
                if let Some(list) = self.list(Step::ReadAfterReset, body) {
                    self.on_list_after_reset(&list, now);
                }
            }
            Phase::Confirm { version } => {
                if let Some(list) = self.list(Step::Confirm, body) {
                    if self.active(&list).is_some_and(|s| !s.confirmed) {
                        return self.fail(ActivateError::NotConfirmed);
                    }
                    self.events.push_back(ActivateEvent::Done { version });
                    self.phase = Phase::Finished;
                }
            }
            Phase::Waiting { .. } | Phase::Finished => {}
        }
    }

    /// Call when `now` reaches [`Activate::poll_timeout`].
    pub fn handle_timeout(&mut self, now: Instant) {
        if let Phase::Waiting { until } = self.phase {
            if now >= until {
                self.phase = Phase::ReadAfter;
                self.state_read(self.config.reboot_timeout, self.config.reboot_retries, now);
            }
            return;
        }
        let Timeout::Exhausted { attempts } = self.exchange.handle_timeout(now) else {
            return;
        };
        match self.phase {
            Phase::ReadState => self.fail(ActivateError::Timeout {
                step: Step::ReadState,
            }),
            Phase::Test => self.fail(ActivateError::Timeout { step: Step::Test }),
            // The device may have reset before its answer left the UART.
            Phase::Reset => self.after_reset(false, now),
            Phase::ReadAfter => self.fail(ActivateError::NoAnswerAfterReset { attempts }),
            Phase::Confirm { .. } => self.fail(ActivateError::Timeout {
                step: Step::Confirm,
            }),
            Phase::Waiting { .. } | Phase::Finished => {}
        }
    }

    /// The next message to write to the device.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.exchange.poll_transmit()
    }

    /// When to call [`Activate::handle_timeout`].
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.phase {
            Phase::Waiting { until } => Some(until),
            _ => self.exchange.poll_timeout(),
        }
    }

    /// The next event.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<ActivateEvent> {
        self.events.pop_front()
    }

    fn state_read(&mut self, timeout: Duration, retries: u32, now: Instant) {
        let body = message::empty_body();
        self.exchange.request(
            Op::Read,
            group::IMAGE,
            command::IMAGE_STATE,
            &body,
            timeout,
            retries,
            now,
        );
    }

    fn state_write(&mut self, hash: &[u8], confirm: bool, now: Instant) {
        let body = message::state_write_request(Some(hash), confirm);
        let (t, r) = (self.config.timeout, self.config.retries);
        self.exchange.request(
            Op::Write,
            group::IMAGE,
            command::IMAGE_STATE,
            &body,
            t,
            r,
            now,
        );
    }

    fn reset(&mut self, now: Instant) {
        self.phase = Phase::Reset;
        let body = message::reset_request(false);
        let t = self.config.timeout;
        // No retries: see step 3 in the module doc.
        self.exchange
            .request(Op::Write, group::OS, command::OS_RESET, &body, t, 0, now);
    }

    fn after_reset(&mut self, acknowledged: bool, now: Instant) {
        self.events
            .push_back(ActivateEvent::ResetSent { acknowledged });
        self.phase = Phase::Waiting {
            until: now + self.config.reboot_wait,
        };
    }

    fn list(&mut self, step: Step, body: &[u8]) -> Option<Vec<ImageSlot>> {
        match message::state_response(body) {
            Ok(Ok(list)) => Some(list),
            Ok(Err(err)) => {
                self.fail(ActivateError::Device { step, err });
                None
            }
            Err(err) => {
                self.fail(ActivateError::Malformed { step, err });
                None
            }
        }
    }

    fn active<'a>(&self, list: &'a [ImageSlot]) -> Option<&'a ImageSlot> {
        list.iter()
            .find(|s| s.image == self.config.image && s.active)
    }

    fn runs_target(&self, s: &ImageSlot) -> bool {
        self.config.version_policy.same(&self.target, &s.version)
            && self.expected_hash.as_ref().is_none_or(|h| *h == s.hash)
    }

    fn on_first_list(&mut self, list: &[ImageSlot], now: Instant) {
        if let Some(active) = self.active(list).filter(|s| self.runs_target(s)).cloned() {
            self.events.push_back(ActivateEvent::AlreadyActive {
                version: active.version.clone(),
            });
            return self.confirm_or_done(&active, now);
        }
        if self.confirm_only {
            return match self.active(list).cloned() {
                None => self.fail(ActivateError::NoActiveImage),
                Some(active) => self.fail(ActivateError::VersionMismatch {
                    target: self.target.clone(),
                    reported: active.version,
                }),
            };
        }
        let mut candidates = list
            .iter()
            .filter(|s| s.image == self.config.image && !s.active);
        let candidate = match &self.expected_hash {
            Some(h) => candidates.find(|s| s.hash == *h),
            None => {
                let all: Vec<&ImageSlot> = candidates.collect();
                all.iter().find(|s| s.slot == 1).or(all.first()).copied()
            }
        };
        let Some(c) = candidate.cloned() else {
            return self.fail(ActivateError::NoCandidate);
        };
        if !self.config.version_policy.same(&self.target, &c.version) {
            return self.fail(ActivateError::CandidateVersion {
                target: self.target.clone(),
                found: c.version,
            });
        }
        self.events.push_back(ActivateEvent::Candidate {
            slot: c.slot,
            version: c.version.clone(),
        });
        self.expected_hash = Some(c.hash.clone());
        if c.pending {
            self.events.push_back(ActivateEvent::Tested);
            self.reset(now);
        } else {
            self.phase = Phase::Test;
            self.state_write(&c.hash, false, now);
        }
    }

    fn on_list_after_reset(&mut self, list: &[ImageSlot], now: Instant) {
        let Some(active) = self.active(list).cloned() else {
            return self.fail(ActivateError::NoActiveImage);
        };
        if !self.runs_target(&active) {
            return self.fail(ActivateError::VersionMismatch {
                target: self.target.clone(),
                reported: active.version,
            });
        }
        self.events.push_back(ActivateEvent::Rebooted {
            version: active.version.clone(),
        });
        self.confirm_or_done(&active, now);
    }

    fn confirm_or_done(&mut self, active: &ImageSlot, now: Instant) {
        if self.config.confirm && !active.confirmed {
            self.phase = Phase::Confirm {
                version: active.version.clone(),
            };
            self.state_write(&active.hash, true, now);
        } else {
            self.events.push_back(ActivateEvent::Done {
                version: active.version.clone(),
            });
            self.phase = Phase::Finished;
        }
    }

    fn fail(&mut self, e: ActivateError) {
        self.exchange.cancel();
        self.phase = Phase::Finished;
        self.events.push_back(ActivateEvent::Failed(e));
    }
}
impl Engine for Activate {
    type Event = ActivateEvent;

    fn handle_input(&mut self, msg: &[u8], now: Instant) {
        self.handle_message(msg, now);
    }

    fn handle_timeout(&mut self, now: Instant) {
        Activate::handle_timeout(self, now);
    }

    fn poll_event(&mut self) -> Option<ActivateEvent> {
        Activate::poll_event(self)
    }

    fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        Activate::poll_transmit(self)
    }

    fn poll_timeout(&self) -> Option<Instant> {
        Activate::poll_timeout(self)
    }

    fn is_finished(&self) -> bool {
        Activate::is_finished(self)
    }

    fn retries(&self) -> u64 {
        Activate::retries(self)
    }

    fn next_seq(&self) -> Option<u8> {
        Some(self.exchange.next_seq())
    }
}
