//! The SMP side of the health-gated confirm (issue 15 item 2): a health
//! probe and a revert, as engines.
//!
//! After the test boot (docs/protocols/children.md §4.3: test, reset, the
//! new image runs unconfirmed and MCUboot reverts it at the next boot
//! unless it is confirmed), the gateway probes the child for a while
//! before it confirms:
//!
//! - [`Probe`]: one image state read (group 1, id 0) in which the target
//!   must still be the active image of [`ProbeConfig::image`] and not
//!   confirmed. The old version active again means the child rebooted by
//!   itself and MCUboot reverted the test image (a crash loop); a confirmed
//!   image means the application confirmed itself, which leaves nothing
//!   to gate. Then, when configured, one [`HealthCommand`] (any group, id,
//!   OP and CBOR body; OS echo, smp_group_0.rst "Echo command", is the
//!   usual one) that must be answered without an error (`rc`/`err`,
//!   §4.1), and for echo with the text sent.
//! - [`Revert`]: makes MCUboot revert the test image. A state read: when
//!   the target is not active (already reverted), `Done` at once; when it
//!   is active and confirmed, `Done` without a reset (it cannot be
//!   reverted); otherwise a reset (group 0, id 5), sent once and answered
//!   or not (a hung application does not answer, its watchdog may reset it
//!   anyway), then state reads after [`RevertConfig::reboot_wait`] until
//!   the device answers. A state read that gets no answer at all is
//!   followed by the reset too: a silent child is the case the revert is
//!   for.
//!
//! # Call order
//! Like [`super::upload::Upload`]: `new`, then loop on `poll_transmit`,
//! `poll_event`, `handle_message` / `handle_timeout` at `poll_timeout`,
//! until the `Passed`/`Done` or `Failed` event.

use super::cbor::Enc;
use super::exchange::{Exchange, Timeout};
use super::header::{command, group, Op, SmpVersion};
use super::message::{self, ImageSlot, SmpErr};
use super::BodyError;
use crate::engine::Engine;
use crate::time::Instant;
use crate::version;
use std::collections::VecDeque;
use std::time::Duration;

/// A value in a configured command's CBOR body (what a TOML table can
/// hold: integers, text, booleans, arrays and nested tables).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyValue {
    /// An integer (CBOR major type 0 or 1).
    Int(i64),
    /// A text string.
    Text(String),
    /// `true` or `false`.
    Bool(bool),
    /// An array.
    Array(Vec<BodyValue>),
    /// A map with text keys.
    Map(Vec<(String, BodyValue)>),
}

/// Encodes a map with text keys as CBOR (definite lengths, shortest heads,
/// as the other request bodies: [`super::cbor`]).
pub fn encode_body(map: &[(String, BodyValue)]) -> Vec<u8> {
    fn value(e: &mut Enc, v: &BodyValue) {
        match v {
            BodyValue::Int(i) => e.int(*i),
            BodyValue::Text(s) => e.text(s),
            BodyValue::Bool(b) => e.bool(*b),
            BodyValue::Array(a) => {
                e.array(a.len());
                for v in a {
                    value(e, v);
                }
            }
            BodyValue::Map(m) => map_into(e, m),
        }
    }
    fn map_into(e: &mut Enc, m: &[(String, BodyValue)]) {
        e.map(m.len());
        for (k, v) in m {
            e.text(k);
            value(e, v);
        }
    }
    let mut e = Enc::default();
    map_into(&mut e, map);
    e.buf
}

/// The SMP command a probe sends after its state read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCommand {
    /// Read or write.
    pub op: Op,
    /// Group id.
    pub group: u16,
    /// Command id.
    pub id: u8,
    /// CBOR request body (a map).
    pub body: Vec<u8>,
    /// For OS echo: the text sent, which the answer's `r` must repeat.
    pub echo: Option<String>,
}

impl HealthCommand {
    /// OS echo (group 0, id 0, write) of `d`.
    pub fn echo(d: &str) -> Self {
        HealthCommand {
            op: Op::Write,
            group: group::OS,
            id: command::OS_ECHO,
            body: message::echo_request(d),
            echo: Some(d.to_owned()),
        }
    }

    /// How errors name it: `echo`, or `group G command C`.
    pub fn name(&self) -> String {
        if self.echo.is_some() {
            "echo".to_owned()
        } else {
            format!("group {} command {}", self.group, self.id)
        }
    }
}

/// Probe settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeConfig {
    /// Header version (v2).
    pub version: SmpVersion,
    /// Image number (0).
    pub image: u64,
    /// Wait per request: 2.5 s.
    pub timeout: Duration,
    /// Extra attempts per request: 1.
    pub retries: u32,
    /// How the active version is compared with the target.
    pub version_policy: version::Policy,
    /// The command to send after the state read, if any.
    pub command: Option<HealthCommand>,
    /// Sequence number of the first request.
    pub first_seq: u8,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        ProbeConfig {
            version: SmpVersion::V2,
            image: 0,
            timeout: Duration::from_millis(2500),
            retries: 1,
            version_policy: version::Policy::Normalised,
            command: None,
            first_seq: 0,
        }
    }
}

/// Which request of a probe or revert failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The image state read.
    ReadState,
    /// The configured health command.
    Command,
    /// The reset.
    Reset,
    /// The state read after the reset.
    ReadAfterReset,
}

impl Step {
    fn name(self) -> &'static str {
        match self {
            Step::ReadState => "image state read",
            Step::Command => "health command",
            Step::Reset => "reset",
            Step::ReadAfterReset => "image state read after the reset",
        }
    }
}

/// Why a probe failed: each is a failed health check.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProbeError {
    /// No answer after every attempt.
    #[error("no answer to the {}", .step.name())]
    Timeout {
        /// The request.
        step: Step,
    },
    /// The device answered with an error.
    #[error("the {} answered {err}", .step.name())]
    Device {
        /// The request.
        step: Step,
        /// Its error.
        err: SmpErr,
    },
    /// An answer that does not decode.
    #[error("malformed answer to the {}: {err}", .step.name())]
    Malformed {
        /// The request.
        step: Step,
        /// Why.
        err: BodyError,
    },
    /// Another image is active: the child rebooted by itself and MCUboot
    /// reverted the test image.
    #[error("the child runs {running} again: it rebooted by itself and MCUboot reverted {target}")]
    Rebooted {
        /// Target version.
        target: String,
        /// The active version.
        running: String,
    },
    /// The state list has no active image.
    #[error("the child reports no active image")]
    NoActiveImage,
    /// The application confirmed the test image itself.
    #[error("the child confirmed {version} itself: nothing left to gate")]
    ConfirmedByChild {
        /// The active version.
        version: String,
    },
    /// The echo came back with another text.
    #[error("echo answered {got:?}, sent {sent:?}")]
    EchoMismatch {
        /// Sent.
        sent: String,
        /// Received.
        got: String,
    },
}

/// What a probe reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeEvent {
    /// Every check passed.
    Passed {
        /// The active version, as the device writes it.
        version: String,
    },
    /// A check failed.
    Failed(ProbeError),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ProbePhase {
    State,
    Command,
    Finished,
}

/// One health probe; see the module doc.
#[derive(Debug)]
pub struct Probe {
    config: ProbeConfig,
    target: String,
    exchange: Exchange,
    phase: ProbePhase,
    version: String,
    events: VecDeque<ProbeEvent>,
}

impl Probe {
    /// Starts a probe for `target`: the state read is queued.
    pub fn new(config: ProbeConfig, target: &str, now: Instant) -> Probe {
        let mut exchange = Exchange::new(config.version, config.first_seq);
        exchange.request(
            Op::Read,
            group::IMAGE,
            command::IMAGE_STATE,
            &message::empty_body(),
            config.timeout,
            config.retries,
            now,
        );
        Probe {
            config,
            target: target.to_owned(),
            exchange,
            phase: ProbePhase::State,
            version: String::new(),
            events: VecDeque::new(),
        }
    }

    fn fail(&mut self, e: ProbeError) {
        self.exchange.cancel();
        self.phase = ProbePhase::Finished;
        self.events.push_back(ProbeEvent::Failed(e));
    }

    fn pass(&mut self) {
        self.phase = ProbePhase::Finished;
        let version = std::mem::take(&mut self.version);
        self.events.push_back(ProbeEvent::Passed { version });
    }

    fn on_list(&mut self, list: &[ImageSlot], now: Instant) {
        let Some(active) = list
            .iter()
            .find(|s| s.image == self.config.image && s.active)
        else {
            return self.fail(ProbeError::NoActiveImage);
        };
        if !self
            .config
            .version_policy
            .same(&self.target, &active.version)
        {
            return self.fail(ProbeError::Rebooted {
                target: self.target.clone(),
                running: active.version.clone(),
            });
        }
        if active.confirmed {
            return self.fail(ProbeError::ConfirmedByChild {
                version: active.version.clone(),
            });
        }
        self.version = active.version.clone();
        match self.config.command.clone() {
            None => self.pass(),
            Some(c) => {
                self.phase = ProbePhase::Command;
                self.exchange.request(
                    c.op,
                    c.group,
                    c.id,
                    &c.body,
                    self.config.timeout,
                    self.config.retries,
                    now,
                );
            }
        }
    }

    fn on_command(&mut self, body: &[u8]) {
        let map = match super::cbor::decode_map(body) {
            Ok(m) => m,
            Err(err) => {
                let step = Step::Command;
                return self.fail(ProbeError::Malformed { step, err });
            }
        };
        match message::status(&map) {
            Ok(Some(err)) => {
                let step = Step::Command;
                return self.fail(ProbeError::Device { step, err });
            }
            Err(err) => {
                let step = Step::Command;
                return self.fail(ProbeError::Malformed { step, err });
            }
            Ok(None) => {}
        }
        let sent = self.config.command.as_ref().and_then(|c| c.echo.clone());
        if let Some(sent) = sent {
            match message::echo_response(body) {
                Ok(Ok(got)) if got == sent => {}
                Ok(Ok(got)) => return self.fail(ProbeError::EchoMismatch { sent, got }),
                Ok(Err(err)) => {
                    let step = Step::Command;
                    return self.fail(ProbeError::Device { step, err });
                }
                Err(err) => {
                    let step = Step::Command;
                    return self.fail(ProbeError::Malformed { step, err });
                }
            }
        }
        self.pass();
    }

    /// A message from the device; anything but the awaited answer is ignored.
    pub fn handle_message(&mut self, msg: &[u8], now: Instant) {
        let Some(body) = self.exchange.handle_message(msg) else {
            return;
        };
        match self.phase {
            ProbePhase::State => match message::state_response(body) {
                Ok(Ok(list)) => self.on_list(&list, now),
                Ok(Err(err)) => self.fail(ProbeError::Device {
                    step: Step::ReadState,
                    err,
                }),
                Err(err) => self.fail(ProbeError::Malformed {
                    step: Step::ReadState,
                    err,
                }),
            },
            ProbePhase::Command => self.on_command(body),
            ProbePhase::Finished => {}
        }
    }

    /// Call when `now` reaches [`Probe::poll_timeout`].
    pub fn handle_timeout(&mut self, now: Instant) {
        if let Timeout::Exhausted { .. } = self.exchange.handle_timeout(now) {
            let step = match self.phase {
                ProbePhase::Command => Step::Command,
                _ => Step::ReadState,
            };
            self.fail(ProbeError::Timeout { step });
        }
    }
}

impl Engine for Probe {
    type Event = ProbeEvent;

    fn handle_input(&mut self, msg: &[u8], now: Instant) {
        self.handle_message(msg, now);
    }

    fn handle_timeout(&mut self, now: Instant) {
        Probe::handle_timeout(self, now);
    }

    fn poll_event(&mut self) -> Option<ProbeEvent> {
        self.events.pop_front()
    }

    fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.exchange.poll_transmit()
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.exchange.poll_timeout()
    }

    fn is_finished(&self) -> bool {
        self.phase == ProbePhase::Finished
    }

    fn retries(&self) -> u64 {
        self.exchange.retransmits()
    }

    fn next_seq(&self) -> Option<u8> {
        Some(self.exchange.next_seq())
    }
}

/// Revert settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevertConfig {
    /// Header version (v2).
    pub version: SmpVersion,
    /// Image number (0).
    pub image: u64,
    /// Wait per request before the reset: 2.5 s.
    pub timeout: Duration,
    /// Extra attempts per request before the reset: 4.
    pub retries: u32,
    /// Silence after the reset before asking: 5 s.
    pub reboot_wait: Duration,
    /// Wait per state read after the reset: 2 s.
    pub reboot_timeout: Duration,
    /// Extra state reads while the device stays silent: 30.
    pub reboot_retries: u32,
    /// How the active version is compared with the target.
    pub version_policy: version::Policy,
    /// Sequence number of the first request.
    pub first_seq: u8,
}

impl Default for RevertConfig {
    fn default() -> Self {
        RevertConfig {
            version: SmpVersion::V2,
            image: 0,
            timeout: Duration::from_millis(2500),
            retries: 4,
            reboot_wait: Duration::from_secs(5),
            reboot_timeout: Duration::from_secs(2),
            reboot_retries: 30,
            version_policy: version::Policy::Normalised,
            first_seq: 0,
        }
    }
}

/// Why a revert could not tell what the child runs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RevertError {
    /// The device answered with an error.
    #[error("the {} answered {err}", .step.name())]
    Device {
        /// The request.
        step: Step,
        /// Its error.
        err: SmpErr,
    },
    /// An answer that does not decode.
    #[error("malformed answer to the {}: {err}", .step.name())]
    Malformed {
        /// The request.
        step: Step,
        /// Why.
        err: BodyError,
    },
    /// Silent after the reset.
    #[error("no answer after the reset ({attempts} state reads)")]
    NoAnswerAfterReset {
        /// State reads made.
        attempts: u32,
    },
    /// The state list has no active image.
    #[error("the child reports no active image")]
    NoActiveImage,
}

/// What a revert reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RevertEvent {
    /// The reset was sent; `acknowledged` when the device answered it.
    ResetSent {
        /// Whether it answered.
        acknowledged: bool,
    },
    /// What the child runs now.
    Done {
        /// The active version, as the device writes it.
        version: String,
        /// Whether that is the target still.
        target: bool,
        /// Whether the active image is confirmed.
        confirmed: bool,
        /// Whether a reset was sent.
        reset: bool,
    },
    /// It stopped.
    Failed(RevertError),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RevertPhase {
    ReadState,
    Reset,
    Waiting { until: Instant },
    ReadAfter,
    Finished,
}

/// The revert; see the module doc.
#[derive(Debug)]
pub struct Revert {
    config: RevertConfig,
    target: String,
    exchange: Exchange,
    phase: RevertPhase,
    reset: bool,
    events: VecDeque<RevertEvent>,
}

impl Revert {
    /// Starts the revert of `target`: the state read is queued.
    pub fn new(config: RevertConfig, target: &str, now: Instant) -> Revert {
        let mut r = Revert {
            exchange: Exchange::new(config.version, config.first_seq),
            config,
            target: target.to_owned(),
            phase: RevertPhase::ReadState,
            reset: false,
            events: VecDeque::new(),
        };
        r.exchange.request(
            Op::Read,
            group::IMAGE,
            command::IMAGE_STATE,
            &message::empty_body(),
            r.config.timeout,
            r.config.retries,
            now,
        );
        r
    }

    fn finish(&mut self, ev: RevertEvent) {
        self.exchange.cancel();
        self.phase = RevertPhase::Finished;
        self.events.push_back(ev);
    }

    fn send_reset(&mut self, now: Instant) {
        self.phase = RevertPhase::Reset;
        self.reset = true;
        // Sent once (no retries), as the activation's: a lost answer is no
        // error, the reads after the reboot decide.
        self.exchange.request(
            Op::Write,
            group::OS,
            command::OS_RESET,
            &message::reset_request(false),
            self.config.timeout,
            0,
            now,
        );
    }

    fn after_reset(&mut self, acknowledged: bool, now: Instant) {
        self.events
            .push_back(RevertEvent::ResetSent { acknowledged });
        self.phase = RevertPhase::Waiting {
            until: now + self.config.reboot_wait,
        };
    }

    fn read_after(&mut self, now: Instant) {
        self.phase = RevertPhase::ReadAfter;
        self.exchange.request(
            Op::Read,
            group::IMAGE,
            command::IMAGE_STATE,
            &message::empty_body(),
            self.config.reboot_timeout,
            self.config.reboot_retries,
            now,
        );
    }

    fn on_list(&mut self, list: &[ImageSlot], now: Instant) {
        let Some(active) = list
            .iter()
            .find(|s| s.image == self.config.image && s.active)
        else {
            return self.finish(RevertEvent::Failed(RevertError::NoActiveImage));
        };
        let target = self
            .config
            .version_policy
            .same(&self.target, &active.version);
        if self.phase == RevertPhase::ReadState && target && !active.confirmed {
            return self.send_reset(now);
        }
        let done = RevertEvent::Done {
            version: active.version.clone(),
            target,
            confirmed: active.confirmed,
            reset: self.reset,
        };
        self.finish(done);
    }

    /// A message from the device; anything but the awaited answer is ignored.
    pub fn handle_message(&mut self, msg: &[u8], now: Instant) {
        let Some(body) = self.exchange.handle_message(msg) else {
            return;
        };
        let step = match self.phase {
            RevertPhase::ReadState => Step::ReadState,
            RevertPhase::ReadAfter => Step::ReadAfterReset,
            RevertPhase::Reset => {
                return match message::reset_response(body) {
                    Ok(Some(err)) => self.finish(RevertEvent::Failed(RevertError::Device {
                        step: Step::Reset,
                        err,
                    })),
                    _ => self.after_reset(true, now),
                }
            }
            RevertPhase::Waiting { .. } | RevertPhase::Finished => return,
        };
        match message::state_response(body) {
            Ok(Ok(list)) => self.on_list(&list, now),
            Ok(Err(err)) => self.finish(RevertEvent::Failed(RevertError::Device { step, err })),
            Err(err) => self.finish(RevertEvent::Failed(RevertError::Malformed { step, err })),
        }
    }

    /// Call when `now` reaches [`Revert::poll_timeout`].
    pub fn handle_timeout(&mut self, now: Instant) {
        if let RevertPhase::Waiting { until } = self.phase {
            if now >= until {
                self.read_after(now);
            }
            return;
        }
        if let Timeout::Exhausted { attempts } = self.exchange.handle_timeout(now) {
            match self.phase {
                // A silent child: reset it anyway.
                RevertPhase::ReadState => self.send_reset(now),
                RevertPhase::Reset => self.after_reset(false, now),
                _ => self.finish(RevertEvent::Failed(RevertError::NoAnswerAfterReset {
                    attempts,
                })),
            }
        }
    }
}

impl Engine for Revert {
    type Event = RevertEvent;

    fn handle_input(&mut self, msg: &[u8], now: Instant) {
        self.handle_message(msg, now);
    }

    fn handle_timeout(&mut self, now: Instant) {
        Revert::handle_timeout(self, now);
    }

    fn poll_event(&mut self) -> Option<RevertEvent> {
        self.events.pop_front()
    }

    fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.exchange.poll_transmit()
    }

    fn poll_timeout(&self) -> Option<Instant> {
        match self.phase {
            RevertPhase::Waiting { until } => Some(until),
            _ => self.exchange.poll_timeout(),
        }
    }

    fn is_finished(&self) -> bool {
        self.phase == RevertPhase::Finished
    }

    fn retries(&self) -> u64 {
        self.exchange.retransmits()
    }

    fn next_seq(&self) -> Option<u8> {
        Some(self.exchange.next_seq())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smp::sim::{ImageVersion, SimConfig, SimDevice};

    /// Runs `e` against `dev` in simulated time until it finishes.
    fn drive<E: Engine>(e: &mut E, dev: &mut SimDevice, mut now: Instant) -> Vec<E::Event> {
        let mut events = vec![];
        for _ in 0..10_000 {
            while let Some(ev) = e.poll_event() {
                events.push(ev);
            }
            if e.is_finished() {
                return events;
            }
            let mut sent = false;
            while let Some(msg) = e.poll_transmit() {
                dev.handle_message(&msg, now);
                sent = true;
            }
            if sent {
                while let Some(rsp) = dev.poll_transmit() {
                    e.handle_input(&rsp, now);
                }
                continue;
            }
            let next = [e.poll_timeout(), dev.poll_timeout()]
                .into_iter()
                .flatten()
                .min()
                .expect("an unfinished engine has a timeout");
            now = next.max(now);
            dev.handle_timeout(now);
            e.handle_timeout(now);
        }
        panic!("did not finish");
    }

    const V2: ImageVersion = ImageVersion {
        major: 2,
        minor: 0,
        revision: 0,
        build: 0,
    };

    /// A device that runs `2.0.0` as a test image over a confirmed `1.0.0`.
    fn test_booted() -> (SimDevice, Instant) {
        let mut dev = SimDevice::new(SimConfig::default());
        let now = Instant::from_millis(0);
        dev.test_boot(V2);
        (dev, now)
    }

    #[test]
    fn a_probe_passes_on_the_unconfirmed_target_and_the_echo() {
        let (mut dev, now) = test_booted();
        let config = ProbeConfig {
            command: Some(HealthCommand::echo("otabridge")),
            ..ProbeConfig::default()
        };
        let mut p = Probe::new(config, "v2.0.0", now);
        let ev = drive(&mut p, &mut dev, now);
        assert_eq!(
            ev,
            vec![ProbeEvent::Passed {
                version: "2.0.0".into()
            }]
        );
    }

    #[test]
    fn a_probe_fails_on_the_old_image_a_confirm_or_a_command_error() {
        // The device rebooted by itself: MCUboot reverted.
        let (mut dev, now) = test_booted();
        dev.power_cycle(now);
        let mut p = Probe::new(ProbeConfig::default(), "2.0.0", now);
        let ev = drive(&mut p, &mut dev, now);
        assert!(
            matches!(&ev[..], [ProbeEvent::Failed(ProbeError::Rebooted { running, .. })] if running == "1.0.0"),
            "{ev:?}"
        );
        // An unknown command is ENOTSUP.
        let (mut dev, now) = test_booted();
        let config = ProbeConfig {
            command: Some(HealthCommand {
                op: Op::Read,
                group: 64,
                id: 1,
                body: encode_body(&[("x".into(), BodyValue::Int(-3))]),
                echo: None,
            }),
            ..ProbeConfig::default()
        };
        let mut p = Probe::new(config, "2.0.0", now);
        let ev = drive(&mut p, &mut dev, now);
        let [ProbeEvent::Failed(e)] = &ev[..] else {
            panic!("{ev:?}")
        };
        assert!(
            e.to_string().starts_with("the health command answered"),
            "{e}"
        );
        // Silence.
        let (mut dev, now) = test_booted();
        dev.set_hung(true);
        let mut p = Probe::new(ProbeConfig::default(), "2.0.0", now);
        let ev = drive(&mut p, &mut dev, now);
        assert_eq!(
            ev,
            vec![ProbeEvent::Failed(ProbeError::Timeout {
                step: Step::ReadState
            })]
        );
    }

    #[test]
    fn a_revert_resets_once_and_reads_the_old_version_back() {
        let (mut dev, now) = test_booted();
        let mut r = Revert::new(RevertConfig::default(), "2.0.0", now);
        let ev = drive(&mut r, &mut dev, now);
        assert_eq!(
            ev,
            vec![
                RevertEvent::ResetSent { acknowledged: true },
                RevertEvent::Done {
                    version: "1.0.0".into(),
                    target: false,
                    confirmed: true,
                    reset: true
                }
            ]
        );
        // Already reverted: nothing is sent but the read.
        let mut r = Revert::new(RevertConfig::default(), "2.0.0", now);
        let ev = drive(&mut r, &mut dev, now);
        assert_eq!(
            ev,
            vec![RevertEvent::Done {
                version: "1.0.0".into(),
                target: false,
                confirmed: true,
                reset: false
            }]
        );
    }

    #[test]
    fn bodies_encode_as_cbor_maps() {
        let b = encode_body(&[
            ("d".into(), BodyValue::Text("hi".into())),
            ("n".into(), BodyValue::Int(-1)),
            (
                "a".into(),
                BodyValue::Array(vec![BodyValue::Bool(true), BodyValue::Map(vec![])]),
            ),
        ]);
        assert_eq!(
            b,
            [0xa3, 0x61, b'd', 0x62, b'h', b'i', 0x61, b'n', 0x20, 0x61, b'a', 0x82, 0xf5, 0xa0]
        );
        assert_eq!(HealthCommand::echo("x").body, message::echo_request("x"));
    }
}
