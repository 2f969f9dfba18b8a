//! The gateway side: a sans-IO engine that upgrades one child over any valid
//! profile.
//!
//! The steps, each a request the child answers (`codecs/profiles/README.md`,
//! "The upgrade"):
//!
//! 1. `version_query`: the child's current version ([`Event::CurrentVersion`]).
//! 2. `begin`: size, digest, target version. A child that already holds a
//!    session for the same image keeps its offset.
//! 3. `offset_query` (if the profile has one): where the child is; the
//!    transfer resumes there ([`Event::Resumed`]).
//! 4. `chunk` after `chunk`: the engine asks the driver for the bytes of each
//!    chunk ([`Engine::poll_read`]), so it never holds more than one
//!    chunk. A chunk reply with an `offset` field moves the engine to the
//!    offset the child names.
//! 5. `verify`, 6. `activate`, then, after `settle_ms`, `version_query` again
//!    until the child answers with the target version or `reboot_timeout_ms`
//!    passes. Success is reported only after the new version was read back.
//!
//! Every request is sent again after its `timeout_ms`, at most `retries`
//! times. Reply statuses map through the profile's `[[status]]` table to
//! "ok", "retry" (same request after a backoff), "resync" (ask the offset),
//! "restart" (begin again) or a failure with an IoTDA result code.

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use super::codec::{self, DecodeError, Decoder, Frame, Values};
use super::profile::{
    BytesLen, FieldName, FieldType, MessageKind, Profile, StatusAction, MAX_VERSION_LEN,
};
pub use crate::engine::DataError;
use crate::engine::{self, ReadRequest};
use crate::iotda::ResultCode;
use crate::rng::Rng;
use crate::time::Instant;
use crate::version::Policy;

/// The image to deliver: its size, digests and the version it carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfo {
    /// Size in bytes.
    pub size: u32,
    /// CRC-32/ISO-HDLC of the whole image.
    pub crc32: u32,
    /// SHA-256 of the whole image.
    pub sha256: [u8; 32],
    /// The version the child must report after activation.
    pub version: String,
}

impl ImageInfo {
    /// The info for an image held in memory (tests, small images). Drivers
    /// with a file use [`super::ImageDigest`] piece by piece.
    ///
    /// # Panics
    /// If the image is 4 GiB or larger.
    pub fn of(image: &[u8], version: &str) -> Self {
        let (size, crc32, sha256) = super::ImageDigest::of(image);
        ImageInfo {
            size: u32::try_from(size).expect("image under 4 GiB"),
            crc32,
            sha256,
            version: version.to_string(),
        }
    }
}

/// What the engine is asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upgrade {
    /// The image.
    pub image: ImageInfo,
    /// Finish with [`Outcome::AlreadyCurrent`] instead of upgrading when the
    /// child already runs the target version.
    pub skip_if_current: bool,
    /// How the version the child reports is compared with the image's
    /// (docs/config.md `version_match`).
    pub version_policy: Policy,
    /// Seed for the first sequence number and backoff jitter.
    pub seed: u64,
}

/// Why an upgrade failed, in IoTDA's terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// IoTDA `result_code` (`docs/protocols/iotda.md` §4.6).
    pub result_code: ResultCode,
    /// The `description` to report: the profile's wording for the status, or
    /// the platform's wording for the code (§9).
    pub description: String,
    /// What happened, for logs.
    pub detail: String,
    /// The step that failed.
    pub step: MessageKind,
    /// The child's version if it was read (after a failed activation).
    pub version: Option<String>,
}

/// How the engine ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The child reported the target version after activation.
    Upgraded {
        /// The version read back.
        version: String,
    },
    /// The child already ran the target version (only with
    /// `skip_if_current`); nothing was sent but the version query.
    AlreadyCurrent {
        /// Its version.
        version: String,
    },
    /// The child's version, for an engine made with [`Engine::read_version`].
    Version {
        /// Its version.
        version: String,
    },
    /// The upgrade failed.
    Failed(Failure),
}

impl Outcome {
    /// The IoTDA result code to report: 0 on success, 3 for an already
    /// current child, the failure's code otherwise; `None` for a version read.
    pub fn result_code(&self) -> Option<ResultCode> {
        match self {
            Outcome::Upgraded { .. } => Some(ResultCode::SUCCESS),
            Outcome::AlreadyCurrent { .. } => Some(ResultCode::NO_NEED),
            Outcome::Version { .. } => None,
            Outcome::Failed(f) => Some(f.result_code),
        }
    }
}

/// What the engine tells its driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The child's version before the upgrade.
    CurrentVersion(String),
    /// The child accepted `begin`.
    Begun,
    /// The child said where it is; the transfer goes on from there.
    Resumed {
        /// The child's offset.
        offset: u32,
    },
    /// The child acknowledged bytes up to `offset`.
    Progress {
        /// Acknowledged bytes.
        offset: u32,
        /// Image size.
        size: u32,
    },
    /// The child accepted `verify`.
    Verified,
    /// `activate` was accepted (or sent, if it has no reply).
    Activated,
    /// The engine is done; nothing more will come out of it.
    Finished(Outcome),
}

/// Events as one line, the notation of fixture files' `expect`.
impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Event::CurrentVersion(v) => write!(f, "version {v}"),
            Event::Begun => write!(f, "begun"),
            Event::Resumed { offset } => write!(f, "resumed {offset}"),
            Event::Progress { offset, size } => write!(f, "progress {offset}/{size}"),
            Event::Verified => write!(f, "verified"),
            Event::Activated => write!(f, "activated"),
            Event::Finished(Outcome::Upgraded { version }) => write!(f, "upgraded {version}"),
            Event::Finished(Outcome::AlreadyCurrent { version }) => {
                write!(f, "already-current {version}")
            }
            Event::Finished(Outcome::Version { version }) => write!(f, "read {version}"),
            Event::Finished(Outcome::Failed(x)) => {
                write!(f, "failed {} {}: {}", x.result_code, x.step, x.description)
            }
        }
    }
}

/// An upgrade that cannot start with this profile.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StartError {
    /// The target version is longer than the profile's version fields take.
    #[error(
        "target version of {len} bytes does not fit field `{field}` of `{message}` (at most {max})"
    )]
    VersionTooLong {
        /// The message.
        message: MessageKind,
        /// The field.
        field: String,
        /// Version length.
        len: usize,
        /// Largest it takes.
        max: usize,
    },
    /// The image size does not fit a size or offset field of the profile.
    #[error("image of {size} bytes does not fit field `{field}` of `{message}`")]
    ImageTooLarge {
        /// The message.
        message: MessageKind,
        /// The field.
        field: String,
        /// Image size.
        size: u32,
    },
    /// The image is empty.
    #[error("the image is empty")]
    EmptyImage,
}

/// Counters for logs and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Frames written (first sends and retransmissions).
    pub frames_sent: u64,
    /// Retransmissions after a timeout or a busy reply.
    pub retransmissions: u64,
    /// Frames dropped for a bad CRC.
    pub crc_errors: u64,
    /// Bytes skipped while looking for a sync word.
    pub garbage_bytes: u64,
    /// Frames dropped for an impossible length.
    pub bad_lengths: u64,
    /// Valid frames that did not answer the outstanding request (wrong
    /// command or sequence number, late duplicates).
    pub unexpected_frames: u64,
    /// Replies whose payload did not match the profile.
    pub malformed_replies: u64,
    /// Resyncs and restarts.
    pub recoveries: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Upgrade,
    ReadVersion,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    VersionBefore,
    Begin,
    OffsetQuery,
    Chunk,
    Verify,
    Activate,
    /// Waiting `settle_ms` after activation.
    Settle,
    VersionAfter,
    Done,
}

/// The outstanding request.
#[derive(Debug)]
struct Pending {
    kind: MessageKind,
    frame: Vec<u8>,
    seq: Option<u8>,
    /// Sends so far.
    attempts: u32,
    /// Busy replies so far (for the backoff).
    busy: u32,
    /// Reply timeout, or the end of a busy backoff.
    deadline: Instant,
    /// `deadline` ends a backoff: send again then, ignore replies until.
    backing_off: bool,
}

/// Upgrades one child over a profile's protocol. Sans-IO: no clock, no port.
///
/// # Driver call order
/// [`crate::engine`]'s, which this engine implements with line bytes as
/// its wire unit:
/// 1. Create with [`Engine::new`] (or [`Engine::read_version`]); the first
///    request is queued at once.
/// 2. Loop until [`Engine::is_finished`]:
///    - while [`poll_read`](Self::poll_read) gives a range, read it from
///      the package and pass it to [`handle_data`](Self::handle_data);
///    - drain [`poll_event`](Self::poll_event); a driver may stop at an
///      event, before the frames queued with it are written (`deliver`
///      stops at [`Event::Verified`], before `activate` leaves);
///    - write every [`poll_transmit`](Self::poll_transmit) buffer whole
///      (`write_all`);
///    - wait for bytes from the line or until
///      [`poll_timeout`](Self::poll_timeout), then call
///      [`handle_input`](Self::handle_input) or
///      [`handle_timeout`](Self::handle_timeout) with the current time.
///
/// Memory is bounded by one chunk frame plus the decoder's buffer, whatever
/// the image size.
#[derive(Debug)]
pub struct Engine {
    profile: Arc<Profile>,
    image: ImageInfo,
    mode: Mode,
    skip_if_current: bool,
    version_policy: Policy,
    decoder: Decoder,
    rng: Rng,
    next_seq: u8,
    step: Step,
    pending: Option<Pending>,
    /// End of the settle wait.
    settle_until: Option<Instant>,
    /// After activation, give up reading the version at this time.
    reboot_deadline: Option<Instant>,
    transmit: VecDeque<Vec<u8>>,
    events: VecDeque<Event>,
    data_request: Option<ReadRequest>,
    /// Offset of the chunk being sent (or requested).
    offset: u32,
    /// The offset the child last acknowledged.
    acked: u32,
    /// Activation was not confirmed (no reply, or a refusal of a repeated
    /// activate): the failure to report if the version read back is wrong.
    doubt: Option<(ResultCode, Option<u32>, String)>,
    /// Activate requests sent.
    activate_sends: u32,
    finished: bool,
    stats: Stats,
}

impl Engine {
    /// An engine that upgrades a child with `upgrade.image`, starting `now`.
    pub fn new(profile: Arc<Profile>, upgrade: Upgrade, now: Instant) -> Result<Self, StartError> {
        check_fits(&profile, &upgrade.image)?;
        let mut e = Self::make(profile, upgrade.image, upgrade.seed, Mode::Upgrade);
        e.skip_if_current = upgrade.skip_if_current;
        e.version_policy = upgrade.version_policy;
        e.send(MessageKind::VersionQuery, now);
        Ok(e)
    }

    /// An engine that only reads the child's version; it finishes with
    /// [`Outcome::Version`].
    pub fn read_version(profile: Arc<Profile>, seed: u64, now: Instant) -> Self {
        let image = ImageInfo {
            size: 0,
            crc32: 0,
            sha256: [0; 32],
            version: String::new(),
        };
        let mut e = Self::make(profile, image, seed, Mode::ReadVersion);
        e.send(MessageKind::VersionQuery, now);
        e
    }

    fn make(profile: Arc<Profile>, image: ImageInfo, seed: u64, mode: Mode) -> Self {
        let mut rng = Rng::new(seed);
        let next_seq = rng.next_u32() as u8;
        Engine {
            decoder: Decoder::new(&profile.framing),
            profile,
            image,
            mode,
            skip_if_current: false,
            version_policy: Policy::default(),
            rng,
            next_seq,
            step: Step::VersionBefore,
            pending: None,
            settle_until: None,
            reboot_deadline: None,
            transmit: VecDeque::new(),
            events: VecDeque::new(),
            data_request: None,
            offset: 0,
            acked: 0,
            doubt: None,
            activate_sends: 0,
            finished: false,
            stats: Stats::default(),
        }
    }

    /// The next bytes to write to the line, whole.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.transmit.pop_front()
    }

    /// The image range the engine needs next; it stays outstanding until
    /// [`handle_data`](Self::handle_data) answers it.
    #[must_use]
    pub fn poll_read(&self) -> Option<ReadRequest> {
        self.data_request
    }

    /// The next event.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) is due; `None` when
    /// nothing is waiting on time (finished, or waiting for data).
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.finished {
            return None;
        }
        match (self.pending.as_ref().map(|p| p.deadline), self.settle_until) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Whether the engine finished ([`Event::Finished`] was queued).
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// Counters.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// The offset the child last acknowledged: where a later upgrade of the
    /// same image would resume.
    pub fn acknowledged(&self) -> u32 {
        self.acked
    }

    /// Bytes read from the line.
    pub fn handle_input(&mut self, mut bytes: &[u8], now: Instant) {
        while !bytes.is_empty() {
            let n = self.decoder.push(bytes);
            bytes = &bytes[n..];
            self.drain_decoder(now);
        }
    }

    fn drain_decoder(&mut self, now: Instant) {
        while let Some(r) = self.decoder.next() {
            match r {
                Ok(frame) => self.on_frame(frame, now),
                Err(DecodeError::Garbage(n)) => self.stats.garbage_bytes += n as u64,
                Err(DecodeError::BadLength(_)) => self.stats.bad_lengths += 1,
                Err(DecodeError::BadCrc { .. }) => self.stats.crc_errors += 1,
            }
        }
    }

    /// The bytes of the outstanding [`ReadRequest`]; other bytes are
    /// refused and change nothing.
    pub fn handle_data(
        &mut self,
        offset: u64,
        bytes: &[u8],
        now: Instant,
    ) -> Result<(), DataError> {
        DataError::check(self.data_request, offset, bytes.len())?;
        self.data_request = None;
        // The request was made from `self.offset`, which it equals.
        let values = Values {
            offset: Some(self.offset),
            data: Some(bytes.to_vec()),
            ..Values::default()
        };
        self.send_values(MessageKind::Chunk, &values, now);
        Ok(())
    }

    /// Time passed; call when [`poll_timeout`](Self::poll_timeout) is due
    /// (calling early does nothing).
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.finished {
            return;
        }
        if let Some(t) = self.settle_until {
            if now >= t {
                self.settle_until = None;
                self.step = Step::VersionAfter;
                self.send(MessageKind::VersionQuery, now);
            }
        }
        let Some(p) = self.pending.as_mut() else {
            return;
        };
        if now < p.deadline {
            return;
        }
        let kind = p.kind;
        if !p.backing_off {
            // A reply is overdue: maybe a false frame start is holding the
            // decoder; look past it before sending again.
            self.decoder.skip_stalled();
            self.drain_decoder(now);
            if self.finished || self.pending.as_ref().is_none_or(|p| now < p.deadline) {
                return;
            }
        }
        let Some(p) = self.pending.as_mut() else {
            return;
        };
        let msg = self.profile.message(kind).expect("pending message exists");
        let (timeout, retries) = (msg.timeout, msg.retries);
        if p.backing_off || p.attempts <= retries {
            p.backing_off = false;
            p.attempts += 1;
            p.deadline = now + timeout;
            let frame = p.frame.clone();
            self.stats.retransmissions += 1;
            self.write(frame);
            return;
        }
        if self.step == Step::VersionAfter && self.reboot_deadline.is_some_and(|d| now < d) {
            // The child is still rebooting: keep asking until the deadline.
            p.attempts = 1;
            p.deadline = now + timeout;
            let frame = p.frame.clone();
            self.stats.retransmissions += 1;
            self.write(frame);
            return;
        }
        let attempts = p.attempts;
        if self.step == Step::Activate {
            // The child may have rebooted into the new image without a
            // word: the version read back decides.
            self.pending = None;
            let detail = format!("no reply to activate after {attempts} attempts");
            self.doubt = Some((ResultCode::INSTALL_FAIL, None, detail));
            self.activated(now);
            return;
        }
        let (code, what) = match self.step {
            Step::VersionBefore => (ResultCode::INNER_ERROR, "version_query"),
            Step::VersionAfter => (ResultCode::INSTALL_FAIL, "version_query after activation"),
            _ => (ResultCode::DOWNLOAD_TIMEOUT, kind.name()),
        };
        let detail = if kind == MessageKind::Chunk {
            format!(
                "no reply to chunk at offset {} after {attempts} attempts",
                self.offset
            )
        } else {
            format!("no reply to {what} after {attempts} attempts")
        };
        self.fail(code, None, detail, None);
    }

    // -----------------------------------------------------------------------

    fn write(&mut self, frame: Vec<u8>) {
        self.stats.frames_sent += 1;
        self.transmit.push_back(frame);
    }

    fn send(&mut self, kind: MessageKind, now: Instant) {
        let img = &self.image;
        let values = Values {
            size: Some(img.size),
            crc32: Some(img.crc32),
            sha256: Some(img.sha256),
            version: Some(img.version.clone()),
            chunk_size: Some(self.profile.max_chunk as u32),
            ..Values::default()
        };
        self.send_values(kind, &values, now);
    }

    fn send_values(&mut self, kind: MessageKind, values: &Values, now: Instant) {
        self.step = match kind {
            MessageKind::VersionQuery if self.step == Step::VersionAfter => Step::VersionAfter,
            MessageKind::VersionQuery => Step::VersionBefore,
            MessageKind::Begin => Step::Begin,
            MessageKind::OffsetQuery => Step::OffsetQuery,
            MessageKind::Chunk => Step::Chunk,
            MessageKind::Verify => Step::Verify,
            MessageKind::Activate => Step::Activate,
        };
        let profile = Arc::clone(&self.profile);
        let msg = profile.message(kind).expect("sent messages exist");
        let mut payload = Vec::new();
        let mut frame = Vec::new();
        let seq = profile.framing.has_seq().then(|| {
            let s = self.next_seq;
            self.next_seq = s.wrapping_add(1);
            s
        });
        // `check_fits` at start and the profile's validation make these
        // infallible; a failure here is reported rather than panicking.
        let built = codec::encode_payload(&msg.request, values, &mut payload)
            .and_then(|()| codec::encode(&profile.framing, msg.command, seq, &payload, &mut frame));
        if let Err(e) = built {
            self.fail(
                ResultCode::INNER_ERROR,
                None,
                format!("cannot encode {kind}: {e}"),
                None,
            );
            return;
        }
        self.write(frame.clone());
        if kind == MessageKind::Activate {
            self.activate_sends += 1;
        }
        if msg.reply.is_none() {
            // An activate the child answers by rebooting.
            self.pending = None;
            self.activated(now);
            return;
        }
        self.pending = Some(Pending {
            kind,
            frame,
            seq,
            attempts: 1,
            busy: 0,
            deadline: now + msg.timeout,
            backing_off: false,
        });
    }

    // Long on purpose: the checks of an incoming frame in the order the profile defines them; splitting would scatter that order.
    fn on_frame(&mut self, frame: Frame, now: Instant) {
        if self.finished {
            return;
        }
        let Some(p) = self.pending.as_ref() else {
            self.stats.unexpected_frames += 1;
            return;
        };
        let profile = Arc::clone(&self.profile);
        let msg = profile.message(p.kind).expect("pending message exists");
        let Some(reply) = &msg.reply else {
            return;
        };
        if p.backing_off
            || frame.command != reply.command
            || (p.seq.is_some() && frame.seq != p.seq)
        {
            self.stats.unexpected_frames += 1;
            return;
        }
        let values = match codec::decode_payload(&reply.fields, &frame.payload) {
            Ok(v) => v,
            Err(_) => {
                // Treated like a lost reply: the timeout sends again.
                self.stats.malformed_replies += 1;
                return;
            }
        };
        let kind = p.kind;
        let action = match values.status {
            None => StatusAction::Ok,
            Some(s) => match profile.status(s) {
                Some(rule) => rule.action,
                None => {
                    let detail = format!("{kind} answered with status {s} (0x{s:x}), which the profile does not list");
                    self.fail(ResultCode::INNER_ERROR, None, detail, None);
                    return;
                }
            },
        };
        match action {
            StatusAction::Ok => self.on_ok(kind, values, now),
            StatusAction::Retry { result_code } => {
                let p = self.pending.as_mut().expect("checked above");
                if p.attempts > msg.retries {
                    let s = values.status.unwrap_or_default();
                    let detail = format!(
                        "{kind}: child still busy (status {s}) after {} attempts",
                        p.attempts
                    );
                    self.fail(result_code, values.status, detail, None);
                    return;
                }
                p.busy += 1;
                let r = &profile.recovery;
                let base = r.busy_backoff.as_millis() as u64;
                let exp = base.saturating_mul(1u64 << p.busy.min(16).saturating_sub(1));
                let capped = exp.min(r.max_backoff.as_millis() as u64);
                // Jitter of up to a quarter keeps children on one bus from
                // retrying in lockstep.
                let jitter = self.rng.range_inclusive(0, capped / 4);
                p.deadline = now + Duration::from_millis(capped + jitter);
                p.backing_off = true;
            }
            StatusAction::Resync | StatusAction::Restart => {
                if self.recovery_over_budget() {
                    let detail = format!(
                        "gave up after {} resyncs/restarts (last: {kind} status {})",
                        profile.recovery.max_recoveries,
                        values.status.unwrap_or_default()
                    );
                    self.fail(ResultCode::DOWNLOAD_TIMEOUT, None, detail, None);
                    return;
                }
                let has_query = profile.message(MessageKind::OffsetQuery).is_some();
                if action == StatusAction::Resync && has_query {
                    self.send(MessageKind::OffsetQuery, now);
                } else {
                    self.send(MessageKind::Begin, now);
                }
            }
            StatusAction::Fail { result_code } => {
                let s = values.status.unwrap_or_default();
                let detail = format!("{kind} answered with status {s} (0x{s:x})");
                let attempts = self.pending.as_ref().map_or(1, |p| p.attempts);
                if kind == MessageKind::Activate && attempts > 1 {
                    // The first activate may have worked and its reply been
                    // lost: a child that already rebooted refuses a second
                    // one. Only the version read back can tell.
                    self.pending = None;
                    self.doubt = Some((result_code, values.status, detail));
                    self.activated(now);
                } else {
                    self.fail(result_code, values.status, detail, None);
                }
            }
        }
    }

    // Long on purpose: one arm per message kind's answer: the engine's transitions read in one place.
    fn on_ok(&mut self, kind: MessageKind, values: Values, now: Instant) {
        self.pending = None;
        let size = self.image.size;
        match (self.step, kind) {
            (Step::VersionBefore, MessageKind::VersionQuery) => {
                let v = values.version.unwrap_or_default();
                self.events.push_back(Event::CurrentVersion(v.clone()));
                if self.mode == Mode::ReadVersion {
                    self.finish(Outcome::Version { version: v });
                } else if self.skip_if_current && self.is_target(&v) {
                    self.finish(Outcome::AlreadyCurrent { version: v });
                } else {
                    self.send(MessageKind::Begin, now);
                }
            }
            (_, MessageKind::Begin) => {
                self.events.push_back(Event::Begun);
                if self.profile.message(MessageKind::OffsetQuery).is_some() {
                    self.send(MessageKind::OffsetQuery, now);
                } else {
                    self.offset = 0;
                    self.acked = 0;
                    self.next_chunk(now);
                }
            }
            (_, MessageKind::OffsetQuery) => {
                let o = values.offset.unwrap_or_default();
                if o > size {
                    let detail = format!("child reports offset {o} beyond the image size {size}");
                    self.fail(ResultCode::INNER_ERROR, None, detail, None);
                    return;
                }
                self.events.push_back(Event::Resumed { offset: o });
                self.offset = o;
                self.acked = o;
                self.next_chunk(now);
            }
            (_, MessageKind::Chunk) => {
                let len = self.profile.max_chunk.min((size - self.offset) as usize) as u32;
                let next = values.offset.unwrap_or(self.offset + len);
                if next > size {
                    let detail =
                        format!("child acknowledges offset {next} beyond the image size {size}");
                    self.fail(ResultCode::INNER_ERROR, None, detail, None);
                    return;
                }
                if next < self.offset {
                    // The child moved back: allowed (it knows its flash),
                    // but bounded like any other recovery.
                    if self.recovery_over_budget() {
                        let detail = format!(
                            "gave up after {} recoveries (child moved back to offset {next})",
                            self.profile.recovery.max_recoveries
                        );
                        self.fail(ResultCode::DOWNLOAD_TIMEOUT, None, detail, None);
                        return;
                    }
                }
                if next > self.acked {
                    self.events
                        .push_back(Event::Progress { offset: next, size });
                }
                self.acked = next;
                self.offset = next;
                self.next_chunk(now);
            }
            (_, MessageKind::Verify) => {
                self.events.push_back(Event::Verified);
                self.send(MessageKind::Activate, now);
            }
            (_, MessageKind::Activate) => self.activated(now),
            (Step::VersionAfter, MessageKind::VersionQuery) => {
                let v = values.version.unwrap_or_default();
                let unanswered = self
                    .profile
                    .message(MessageKind::Activate)
                    .filter(|m| m.reply.is_none())
                    .map(|m| m.retries);
                if self.is_target(&v) {
                    self.finish(Outcome::Upgraded { version: v });
                } else if unanswered.is_some_and(|retries| self.activate_sends <= retries) {
                    // An activate without a reply may have been lost on the
                    // line: the child still answers, with the old version.
                    self.send(MessageKind::Activate, now);
                } else if self.reboot_deadline.is_some_and(|d| now < d) {
                    // Maybe not rebooted yet: ask again after a timeout.
                    let wait = self
                        .profile
                        .message(MessageKind::VersionQuery)
                        .map_or(Duration::from_secs(1), |m| m.timeout);
                    self.step = Step::Settle;
                    self.settle_until = Some(now + wait);
                } else {
                    let mut detail = format!(
                        "child runs {v:?} after activation, expected {:?}",
                        self.image.version
                    );
                    let (code, status) = match self.doubt.take() {
                        Some((code, status, why)) => {
                            detail = format!("{detail} ({why})");
                            (code, status)
                        }
                        None => (ResultCode::INSTALL_FAIL, None),
                    };
                    self.fail(code, status, detail, Some(v));
                }
            }
            (_, MessageKind::VersionQuery) => {}
        }
    }

    /// Whether the child's version `v` is the image's, by the policy.
    fn is_target(&self, v: &str) -> bool {
        self.version_policy.same(&self.image.version, v)
    }

    fn next_chunk(&mut self, now: Instant) {
        if self.offset >= self.image.size {
            self.send(MessageKind::Verify, now);
            return;
        }
        let len = self
            .profile
            .max_chunk
            .min((self.image.size - self.offset) as usize);
        self.step = Step::Chunk;
        self.data_request = Some(ReadRequest {
            offset: u64::from(self.offset),
            len,
        });
    }

    fn activated(&mut self, now: Instant) {
        self.events.push_back(Event::Activated);
        let a = &self.profile.activation;
        self.step = Step::Settle;
        self.settle_until = Some(now + a.settle);
        self.reboot_deadline = Some(now + a.reboot_timeout);
    }

    /// Counts one resync, restart or move back; whether that is one more
    /// than the profile allows.
    fn recovery_over_budget(&mut self) -> bool {
        self.stats.recoveries += 1;
        self.stats.recoveries > u64::from(self.profile.recovery.max_recoveries)
    }

    fn fail(
        &mut self,
        code: ResultCode,
        status: Option<u32>,
        detail: String,
        version: Option<String>,
    ) {
        let step = match self.step {
            Step::VersionBefore | Step::VersionAfter | Step::Settle | Step::Done => {
                MessageKind::VersionQuery
            }
            Step::Begin => MessageKind::Begin,
            Step::OffsetQuery => MessageKind::OffsetQuery,
            Step::Chunk => MessageKind::Chunk,
            Step::Verify => MessageKind::Verify,
            Step::Activate => MessageKind::Activate,
        };
        let description = status
            .and_then(|s| self.profile.status(s))
            .and_then(|r| r.description.clone())
            .unwrap_or_else(|| code.description().to_string());
        self.finish(Outcome::Failed(Failure {
            result_code: code,
            description,
            detail,
            step,
            version,
        }));
    }

    fn finish(&mut self, outcome: Outcome) {
        self.step = Step::Done;
        self.pending = None;
        self.settle_until = None;
        self.data_request = None;
        self.finished = true;
        self.events.push_back(Event::Finished(outcome));
    }
}

impl engine::Engine for Engine {
    type Event = Event;

    fn handle_input(&mut self, bytes: &[u8], now: Instant) {
        Engine::handle_input(self, bytes, now);
    }

    fn handle_timeout(&mut self, now: Instant) {
        Engine::handle_timeout(self, now);
    }

    fn handle_data(&mut self, offset: u64, data: &[u8], now: Instant) -> Result<(), DataError> {
        Engine::handle_data(self, offset, data, now)
    }

    fn poll_read(&self) -> Option<ReadRequest> {
        Engine::poll_read(self)
    }

    fn poll_event(&mut self) -> Option<Event> {
        Engine::poll_event(self)
    }

    fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        Engine::poll_transmit(self)
    }

    fn poll_timeout(&self) -> Option<Instant> {
        Engine::poll_timeout(self)
    }

    fn is_finished(&self) -> bool {
        Engine::is_finished(self)
    }

    /// Retransmissions after a timeout or a busy reply.
    fn retries(&self) -> u64 {
        self.stats.retransmissions
    }
}

/// Checks that the image's size and version fit every field that carries
/// them.
fn check_fits(profile: &Profile, image: &ImageInfo) -> Result<(), StartError> {
    if image.size == 0 {
        return Err(StartError::EmptyImage);
    }
    for kind in MessageKind::ALL {
        let Some(m) = profile.message(kind) else {
            continue;
        };
        let reply = m.reply.as_ref().map(|r| &r.fields[..]).unwrap_or(&[]);
        for f in m.request.iter().chain(reply) {
            match (f.name, &f.ty) {
                (FieldName::Size | FieldName::Offset, FieldType::Uint(t))
                    if image.size > t.max() =>
                {
                    return Err(StartError::ImageTooLarge {
                        message: kind,
                        field: f.label.clone(),
                        size: image.size,
                    });
                }
                (FieldName::Version, FieldType::Bytes(len)) => {
                    let max = match len {
                        BytesLen::Prefix(t) => (t.max() as usize).min(MAX_VERSION_LEN),
                        BytesLen::Fixed(n) => *n,
                        BytesLen::Rest => MAX_VERSION_LEN,
                    };
                    if image.version.len() > max {
                        return Err(StartError::VersionTooLong {
                            message: kind,
                            field: f.label.clone(),
                            len: image.version.len(),
                            max,
                        });
                    }
                }
                _ => {}
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::framed::profile::builtin;

    /// Answers every request of `e` with `reply(kind, request values)`.
    fn converse(
        e: &mut Engine,
        image: &[u8],
        mut reply: impl FnMut(MessageKind, &Values) -> Values,
    ) {
        let p = Arc::clone(&e.profile);
        let mut dec = Decoder::new(&p.framing);
        for _ in 0..1000 {
            if let Some(r) = e.poll_read() {
                let end = r.offset as usize + r.len;
                e.handle_data(r.offset, &image[r.offset as usize..end], Instant::ZERO)
                    .unwrap();
            }
            let Some(bytes) = e.poll_transmit() else {
                return;
            };
            dec.push(&bytes);
            let frame = dec.next().unwrap().unwrap();
            let m = p.message_by_request(frame.command).unwrap();
            let req = codec::decode_payload(&m.request, &frame.payload).unwrap();
            let Some(r) = &m.reply else { continue };
            let mut payload = Vec::new();
            codec::encode_payload(&r.fields, &reply(m.kind, &req), &mut payload).unwrap();
            let mut out = Vec::new();
            codec::encode(&p.framing, r.command, frame.seq, &payload, &mut out).unwrap();
            e.handle_input(&out, Instant::ZERO);
        }
        panic!("endless conversation");
    }

    #[test]
    fn a_child_that_keeps_moving_back_is_given_up_on() {
        let p = Arc::new(builtin("nordlys-uart").unwrap().unwrap());
        let image = vec![7u8; 3000];
        let upgrade = Upgrade {
            image: ImageInfo::of(&image, "2.0"),
            skip_if_current: false,
            version_policy: Default::default(),
            seed: 0,
        };
        let mut e = Engine::new(Arc::clone(&p), upgrade, Instant::ZERO).unwrap();
        let mut chunks = 0;
        converse(&mut e, &image, |kind, req| {
            if kind == MessageKind::Chunk {
                chunks += 1;
            }
            Values {
                status: Some(0),
                version: Some("1.0".into()),
                // Acknowledge each chunk, then ask for offset 0 again.
                offset: Some(match req.offset {
                    Some(0) => 1024,
                    _ => 0,
                }),
                ..Values::default()
            }
        });
        let mut last = None;
        while let Some(ev) = e.poll_event() {
            last = Some(ev);
        }
        let Some(Event::Finished(Outcome::Failed(f))) = last else {
            panic!("{last:?}")
        };
        assert_eq!(f.result_code, ResultCode::DOWNLOAD_TIMEOUT);
        assert_eq!(
            e.stats().recoveries,
            u64::from(p.recovery.max_recoveries) + 1
        );
        assert_eq!(chunks, 2 * (p.recovery.max_recoveries + 1));
    }

    #[test]
    fn a_child_naming_an_offset_beyond_the_image_is_refused() {
        let p = Arc::new(builtin("nordlys-uart").unwrap().unwrap());
        let image = vec![1u8; 100];
        let upgrade = Upgrade {
            image: ImageInfo::of(&image, "2.0"),
            skip_if_current: false,
            version_policy: Default::default(),
            seed: 0,
        };
        let mut e = Engine::new(Arc::clone(&p), upgrade, Instant::ZERO).unwrap();
        converse(&mut e, &image, |_, _| Values {
            status: Some(0),
            version: Some("1.0".into()),
            offset: Some(101),
            ..Values::default()
        });
        let events: Vec<Event> = std::iter::from_fn(|| e.poll_event()).collect();
        let Some(Event::Finished(Outcome::Failed(f))) = events.last() else {
            panic!("{events:?}")
        };
        assert_eq!(
            (f.result_code, f.step),
            (ResultCode::INNER_ERROR, MessageKind::OffsetQuery)
        );
        assert!(f.detail.contains("101"), "{}", f.detail);
    }
}
