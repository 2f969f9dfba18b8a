//! The image upload engine: group 1 command 1, driven by the device's `off`.
//!
//! Sources: zephyr `smp_groups/smp_group_1.rst` ("Image upload"), the
//! server in `subsys/mgmt/mcumgr/grp/img_mgmt/src/img_mgmt.c` and
//! `zephyr_img_mgmt.c` (`img_mgmt_upload_inspect`); client behaviour from
//! smpclient, mcumgr-toolkit, vouch mcumgr-client and Go newtmgr
//! (docs/protocols/children.md §4.2, §4.5, §4.6).
//!
//! The rules it follows:
//! - MCUmgr params (group 0 id 6) give `buf_size`; when the device answers
//!   with an error, or not at all, [`UploadConfig::default_buf_size`] (384,
//!   `CONFIG_MCUMGR_TRANSPORT_NETBUF_SIZE`'s default) is used.
//! - Each upload message (header + CBOR) is at most `buf_size - overhead`
//!   (4 on serial: length field and CRC share the netbuf), computed exactly.
//!   With [`UploadConfig::fill_lines`] a chunk may be up to one line's worth
//!   shorter than that, when the shorter packet ends nearer the end of its
//!   last base64 line (more image bytes per byte on the wire).
//! - The chunk at `off` 0 carries `image`, `len`, `sha` (and `upgrade` if
//!   configured) and must hold at least 32 bytes, the MCUboot header Zephyr
//!   inspects.
//! - The device's answer `off` picks the next chunk. `off: 0` means "send
//!   the off-0 fields again". An `off` that does not advance is resent up
//!   to `retries` times, then the upload fails.
//! - Windowed pipelining ([`UploadConfig::window`] above 1; Go newtmgr's
//!   `nmxact/xact/image.go` grows a window from 1 to `-w` 5): after the
//!   off-0 chunk is answered, each in-order answer lets one more request
//!   onto the line, up to the window. Zephyr answers each request in order
//!   with the offset it expects next, so an answer whose `off` is not its
//!   chunk's end means a request was lost (a device with fewer receive
//!   buffers than the window, MCUboot's strictly sequential serial
//!   recovery) or was a duplicate: the engine rewinds to the device's `off`,
//!   abandons everything on the line (answers to it are ignored as stale)
//!   and sends one request at a time for the rest of the upload. A timeout
//!   does the same after resending the oldest request unchanged.
//! - Resume after a gateway restart: a new engine sends `off` 0 with the
//!   same `len` and `sha`; Zephyr recognises the session and answers the
//!   offset it holds, from which the upload continues.
//! - `match: false` in the final answer is a verification failure.
//!
//! The engine never holds the image: it asks for one chunk at a time with
//! [`Upload::poll_read`] (the image-read interface of [`crate::engine`])
//! and keeps only the messages on the line (at most the window).
//!
//! # Call order
//! 1. [`Upload::new`] with `now`: the first request is queued.
//! 2. Loop: answer [`Upload::poll_read`] with [`Upload::handle_data`],
//!    drain [`Upload::poll_event`] and [`Upload::poll_transmit`] (write each
//!    message framed); then wait for a message from the device
//!    ([`Upload::handle_message`]) or until [`Upload::poll_timeout`]
//!    ([`Upload::handle_timeout`]). This is [`crate::engine`]'s order; the
//!    engine implements [`Engine`], with SMP messages as its wire unit.
//! 3. Stop after [`UploadEvent::Done`] or [`UploadEvent::Failed`].

use super::exchange::{Exchange, Timeout};
use super::header::{build_message, command, group, split_message, Op, SmpVersion, HEADER_LEN};
use super::message::{self, SmpErr, UploadRequest};
use super::serial::{wire_len, MAX_LINE, MAX_MESSAGE, PACKET_OVERHEAD};
use super::BodyError;
pub use crate::engine::ReadRequest;
use crate::engine::{DataError, Engine};
use crate::time::Instant;
use std::collections::VecDeque;
use std::time::Duration;

/// Zephyr's `sizeof(struct image_header)`: the first chunk must hold it
/// (`img_mgmt_upload_inspect`, `IMG_MGMT_ERR_INVALID_IMAGE_HEADER`).
pub const MIN_FIRST_CHUNK: usize = 32;

/// Upload settings; [`Default`] gives the values documented per field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadConfig {
    /// Header version; v2 as smp/smpclient send.
    pub version: SmpVersion,
    /// `image` on the first chunk; `Some(0)` by default (smp sends it).
    pub image: Option<u32>,
    /// `upgrade` on the first chunk; `None` (absent) by default.
    pub upgrade: Option<bool>,
    /// Ask MCUmgr params for `buf_size` first (default true).
    pub read_params: bool,
    /// `buf_size` when params is unsupported or fails: 384.
    pub default_buf_size: usize,
    /// Upper bound on a device's `buf_size`: 4096.
    pub max_buf_size: usize,
    /// Transport bytes that share the device's netbuf: 4 on serial.
    pub transport_overhead: usize,
    /// Wait for the params answer: 2 s.
    pub params_timeout: Duration,
    /// Wait for the answer to an off-0 chunk (the device may erase the
    /// slot first): 40 s, smpclient's `first_timeout_s`.
    pub first_timeout: Duration,
    /// Wait for other answers: 2.5 s, smpclient's `timeout_s`.
    pub timeout: Duration,
    /// Extra attempts per request, and answers without progress tolerated
    /// in a row: 4, vouch mcumgr-client's `--nb_retry`.
    pub retries: u32,
    /// Times the device may answer `off: 0` mid-upload before giving up: 3.
    pub max_restarts: u32,
    /// Sequence number of the first request.
    pub first_seq: u8,
    /// Most upload requests on the line at once: 1 (lock-step, as
    /// smpclient, mcumgr-toolkit and vouch's client do). Above 1 the engine
    /// pipelines as Go newtmgr does (`-w`, default 5): one request at
    /// first, one more after each in-order answer up to this, and back to
    /// one for the rest of the upload after any timeout or any answer whose
    /// `off` is not the one expected.
    pub window: usize,
    /// Size chunks so the line carries the most image bytes per byte
    /// written, rather than filling `buf_size` (default true; see
    /// [`Upload`]'s chunk sizing). Messages stay within `buf_size - 4`.
    pub fill_lines: bool,
}

impl Default for UploadConfig {
    fn default() -> Self {
        UploadConfig {
            version: SmpVersion::V2,
            image: Some(0),
            upgrade: None,
            read_params: true,
            default_buf_size: 384,
            max_buf_size: 4096,
            transport_overhead: PACKET_OVERHEAD,
            params_timeout: Duration::from_secs(2),
            first_timeout: Duration::from_secs(40),
            timeout: Duration::from_millis(2500),
            retries: 4,
            max_restarts: 3,
            first_seq: 0,
            window: 1,
            fill_lines: true,
        }
    }
}

/// Why an upload failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UploadError {
    /// The image length is zero.
    #[error("image is empty")]
    EmptyImage,
    /// The device answered an upload request with an error.
    #[error("device error: {0}")]
    Device(SmpErr),
    /// No answer to a chunk after every attempt.
    #[error("no answer for the chunk at off {off} after {attempts} attempts")]
    Timeout {
        /// Offset of the chunk.
        off: u64,
        /// Attempts made.
        attempts: u32,
    },
    /// The device's `off` did not advance after every retry.
    #[error("device off stuck at {off}")]
    Stalled {
        /// The offset the device keeps answering.
        off: u64,
    },
    /// The device answered an `off` beyond the image.
    #[error("device answered off {off} beyond the image length {len}")]
    OffsetBeyondEnd {
        /// The device's offset.
        off: u64,
        /// Image length.
        len: u64,
    },
    /// The final answer carried `match: false`: the written image's
    /// SHA-256 differs from `sha`.
    #[error("device reports the written image does not match its sha")]
    Mismatch,
    /// The device restarted the upload (`off: 0`) too often.
    #[error("device restarted the upload {0} times")]
    TooManyRestarts(u32),
    /// `buf_size` leaves no room for a chunk (the first needs 32 bytes).
    #[error("buf_size {buf_size} leaves room for {room} data bytes in a chunk")]
    BufferTooSmall {
        /// The buffer size in use.
        buf_size: usize,
        /// Data bytes that fit.
        room: usize,
    },
    /// An answer to our request that does not decode.
    #[error("malformed upload answer: {0}")]
    Malformed(BodyError),
}

/// What the upload reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UploadEvent {
    /// The buffer size in use, from params or the fallback.
    BufSize {
        /// Bytes per device buffer.
        buf_size: usize,
        /// Whether the device reported it.
        from_device: bool,
    },
    /// The device continues an earlier session (answered the off-0 chunk
    /// with an offset it already held).
    Resumed {
        /// Where the device continues.
        off: u64,
    },
    /// The device answered `off: 0` mid-upload; the off-0 fields are sent again.
    Restarted,
    /// Something was lost with several requests on the line; from `off` on
    /// the upload sends one request at a time.
    WindowFallback {
        /// Where the upload continues.
        off: u64,
    },
    /// The device acknowledged everything below `acked`.
    Progress {
        /// Acknowledged offset.
        acked: u64,
        /// Image length.
        len: u64,
    },
    /// The whole image is written.
    Done {
        /// `match` from the final answer, when the device checks.
        matched: Option<bool>,
    },
    /// The upload stopped.
    Failed(UploadError),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Params,
    Upload,
    Finished,
}

/// An upload request on the line, waiting for its answer.
#[derive(Debug)]
struct InFlight {
    seq: u8,
    off: u64,
    len: usize,
    msg: Vec<u8>,
    deadline: Instant,
    timeout: Duration,
    attempts: u32,
}

/// The upload engine; see the module doc for the call order.
#[derive(Debug)]
pub struct Upload {
    config: UploadConfig,
    len: u64,
    sha: [u8; 32],
    /// The params request, and every request's sequence number.
    exchange: Exchange,
    phase: Phase,
    buf_size: usize,
    /// Asked for ([`Upload::poll_read`]) and not yet given to
    /// [`Upload::handle_data`].
    reading: Option<ReadRequest>,
    /// Requests on the line, oldest (lowest `off`) first.
    inflight: VecDeque<InFlight>,
    /// Offset of the next chunk to send.
    next_off: u64,
    /// End of the furthest chunk ever sent: chunks sent again below it are
    /// counted as retries.
    sent_end: u64,
    acked: Option<u64>,
    /// When `acked` last moved forward.
    acked_at: Option<Instant>,
    /// Requests allowed on the line now.
    window: usize,
    /// Whether `window` may still grow (false after a fallback).
    grow: bool,
    stalls: u32,
    restarts: u32,
    /// Upload requests sent again (timeouts, rewinds, restarts).
    retries: u64,
    transmit: VecDeque<Vec<u8>>,
    events: VecDeque<UploadEvent>,
}

impl Upload {
    /// Starts uploading an image of `len` bytes whose SHA-256 is `sha`.
    pub fn new(config: UploadConfig, len: u64, sha: [u8; 32], now: Instant) -> Upload {
        let mut up = Upload {
            exchange: Exchange::new(config.version, config.first_seq),
            buf_size: config.default_buf_size,
            config,
            len,
            sha,
            phase: Phase::Params,
            reading: None,
            inflight: VecDeque::new(),
            next_off: 0,
            sent_end: 0,
            acked: None,
            acked_at: None,
            window: 1,
            grow: true,
            stalls: 0,
            restarts: 0,
            retries: 0,
            transmit: VecDeque::new(),
            events: VecDeque::new(),
        };
        if len == 0 {
            up.fail(UploadError::EmptyImage);
        } else if up.config.read_params {
            let t = up.config.params_timeout;
            let r = up.config.retries;
            up.exchange.request(
                Op::Read,
                group::OS,
                command::OS_PARAMS,
                &message::empty_body(),
                t,
                r,
                now,
            );
        } else {
            up.use_buf_size(up.config.default_buf_size, false);
        }
        up
    }

    /// Image length.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the image is empty (such an upload fails at once).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The offset the device last acknowledged (0 before any answer).
    pub fn acked(&self) -> u64 {
        self.acked.unwrap_or(0)
    }

    /// When the device last acknowledged new bytes (an answer whose `off`
    /// moved forward): the engine's own liveness signal, for a watchdog
    /// that must not depend on how often progress is reported.
    pub fn acked_at(&self) -> Option<Instant> {
        self.acked_at
    }

    /// Whether the upload ended (done or failed).
    pub fn is_finished(&self) -> bool {
        self.phase == Phase::Finished
    }

    /// Requests allowed on the line now (1 up to [`UploadConfig::window`]).
    pub fn window(&self) -> usize {
        self.window
    }

    /// Requests sent again so far: retransmissions after timeouts, chunks
    /// sent again after a rewind or a restart, repeated params reads.
    pub fn retries(&self) -> u64 {
        self.retries + self.exchange.retransmits()
    }

    /// A message from the device (header + CBOR, already unframed).
    /// Messages that answer no request on the line are ignored: stale
    /// answers to chunks abandoned by a rewind, duplicates, other traffic.
    pub fn handle_message(&mut self, msg: &[u8], now: Instant) {
        match self.phase {
            Phase::Params => {
                let Some(body) = self.exchange.handle_message(msg) else {
                    return;
                };
                match message::params_response(body) {
                    Ok(Ok(p)) => {
                        let size = usize::try_from(p.buf_size).unwrap_or(usize::MAX);
                        self.use_buf_size(size.min(self.config.max_buf_size), true);
                    }
                    // Unsupported (ENOTSUP) or unreadable: the Zephyr default.
                    _ => self.use_buf_size(self.config.default_buf_size, false),
                }
            }
            Phase::Upload => {
                let Ok((h, body)) = split_message(msg) else {
                    return;
                };
                if (h.op, h.group, h.id) != (Op::WriteRsp, group::IMAGE, command::IMAGE_UPLOAD) {
                    return;
                }
                if let Some(i) = self.inflight.iter().position(|f| f.seq == h.seq) {
                    self.on_upload_answer(i, body, now);
                }
            }
            Phase::Finished => {}
        }
    }

    /// The bytes asked for by the outstanding [`ReadRequest`]. Other bytes
    /// are refused and change nothing (a read abandoned by a rewind is no
    /// longer outstanding).
    pub fn handle_data(&mut self, offset: u64, data: &[u8], now: Instant) -> Result<(), DataError> {
        DataError::check(self.reading, offset, data.len())?;
        self.reading = None;
        let body = self.request_at(offset, data).encode();
        let seq = self.exchange.take_seq();
        let msg = build_message(
            Op::Write,
            self.exchange.version(),
            group::IMAGE,
            seq,
            command::IMAGE_UPLOAD,
            &body,
        );
        let timeout = if offset == 0 {
            self.config.first_timeout
        } else {
            self.config.timeout
        };
        let end = offset + data.len() as u64;
        if offset < self.sent_end {
            self.retries += 1;
        }
        self.sent_end = self.sent_end.max(end);
        self.next_off = end;
        self.transmit.push_back(msg.clone());
        self.inflight.push_back(InFlight {
            seq,
            off: offset,
            len: data.len(),
            msg,
            deadline: now + timeout,
            timeout,
            attempts: 1,
        });
        self.fill();
        Ok(())
    }

    /// Call when `now` reaches [`Upload::poll_timeout`].
    pub fn handle_timeout(&mut self, now: Instant) {
        match self.phase {
            Phase::Params => match self.exchange.handle_timeout(now) {
                Timeout::NotDue | Timeout::Retried => {}
                Timeout::Exhausted { .. } => self.use_buf_size(self.config.default_buf_size, false),
            },
            Phase::Upload => {
                let Some(oldest) = self.inflight.front() else {
                    return;
                };
                if now < oldest.deadline {
                    return;
                }
                if oldest.attempts > self.config.retries {
                    let (off, attempts) = (oldest.off, oldest.attempts);
                    return self.fail(UploadError::Timeout { off, attempts });
                }
                // Something was lost: a request (a device out of receive
                // buffers) or an answer. Keep only the oldest request, send
                // it again unchanged (same sequence number, so a late answer
                // to the first attempt counts), and go on one at a time.
                let off = oldest.off;
                self.fall_back(off);
                self.inflight.truncate(1);
                let Some(f) = self.inflight.front_mut() else {
                    return;
                };
                f.attempts += 1;
                f.deadline = now + f.timeout;
                self.next_off = f.off + f.len as u64;
                self.transmit.push_back(f.msg.clone());
                self.retries += 1;
            }
            Phase::Finished => {}
        }
    }

    /// The next message to write to the device.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.exchange
            .poll_transmit()
            .or_else(|| self.transmit.pop_front())
    }

    /// The image bytes the engine needs before it can send again; asked
    /// again until [`Upload::handle_data`] gives them.
    #[must_use]
    pub fn poll_read(&self) -> Option<ReadRequest> {
        self.reading
    }

    /// When to call [`Upload::handle_timeout`].
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.phase {
            Phase::Params => self.exchange.poll_timeout(),
            // The oldest request times out first: later ones were sent
            // later with the same timeout, and nothing is sent behind the
            // off-0 chunk (the only one with the longer timeout).
            Phase::Upload => self.inflight.front().map(|f| f.deadline),
            Phase::Finished => None,
        }
    }

    /// The next event.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<UploadEvent> {
        self.events.pop_front()
    }

    fn request_at<'a>(&'a self, off: u64, data: &'a [u8]) -> UploadRequest<'a> {
        if off == 0 {
            UploadRequest {
                image: self.config.image,
                len: Some(self.len),
                off,
                sha: Some(&self.sha),
                data,
                upgrade: self.config.upgrade,
            }
        } else {
            UploadRequest {
                image: None,
                len: None,
                off,
                sha: None,
                data,
                upgrade: None,
            }
        }
    }

    fn use_buf_size(&mut self, buf_size: usize, from_device: bool) {
        self.buf_size = buf_size;
        self.events.push_back(UploadEvent::BufSize {
            buf_size,
            from_device,
        });
        self.phase = Phase::Upload;
        self.next_off = 0;
        self.fill();
    }

    /// Asks for the next chunk while the window has room. Nothing is sent
    /// behind the off-0 chunk: its answer may resume the session elsewhere
    /// or come only after an erase.
    fn fill(&mut self) {
        if self.phase != Phase::Upload
            || self.reading.is_some()
            || self.inflight.len() >= self.window
            || self.next_off >= self.len
            || self.inflight.iter().any(|f| f.off == 0)
            || (self.next_off == 0 && !self.inflight.is_empty())
        {
            return;
        }
        let off = self.next_off;
        match self.chunk_len(off) {
            Ok(len) => {
                self.reading = Some(ReadRequest { offset: off, len });
            }
            Err(e) => self.fail(e),
        }
    }

    /// Data bytes for the chunk at `off`: as many as fit `buf_size` minus
    /// the transport overhead, or, with [`UploadConfig::fill_lines`], the
    /// length among the last line's worth below that which carries the most
    /// image bytes per byte on the line (a packet that ends a few bytes
    /// into a new line pays that line's markers and newline for little).
    fn chunk_len(&self, off: u64) -> Result<usize, UploadError> {
        let max_msg = self
            .buf_size
            .saturating_sub(self.config.transport_overhead)
            .min(MAX_MESSAGE);
        let max_body = max_msg.saturating_sub(HEADER_LEN);
        let fields = self.request_at(off, &[]);
        let room = message::max_data_len(&fields, max_body).unwrap_or(0);
        let remaining = usize::try_from(self.len - off).unwrap_or(usize::MAX);
        let need = if off == 0 {
            MIN_FIRST_CHUNK.min(remaining)
        } else {
            1
        };
        if room < need {
            return Err(UploadError::BufferTooSmall {
                buf_size: self.buf_size,
                room,
            });
        }
        if remaining <= room || !self.config.fill_lines {
            return Ok(room.min(remaining));
        }
        let fixed = fields.fixed_len() + HEADER_LEN;
        let wire = |d: usize| wire_len(fixed + super::cbor::bytes_len(d), MAX_LINE);
        let lowest = room.saturating_sub(MAX_LINE).max(need);
        // d / wire(d) compared without floats: a/b > c/e ⇔ a·e > c·b.
        let best = (lowest..=room).rev().fold(room, |best, d| {
            if d * wire(best) > best * wire(d) {
                d
            } else {
                best
            }
        });
        Ok(best)
    }

    // Long on purpose: every answer case of an upload chunk (in order, rewind, window fallback) in one place.
    fn on_upload_answer(&mut self, i: usize, body: &[u8], now: Instant) {
        let (sent_off, sent_len) = (self.inflight[i].off, self.inflight[i].len);
        let r = match message::upload_response(body) {
            Err(e) => return self.fail(UploadError::Malformed(e)),
            Ok(Err(e)) => return self.fail(UploadError::Device(e)),
            Ok(Ok(r)) => r,
        };
        if r.off > self.len {
            return self.fail(UploadError::OffsetBeyondEnd {
                off: r.off,
                len: self.len,
            });
        }
        if r.off == self.len {
            if r.matched == Some(false) {
                return self.fail(UploadError::Mismatch);
            }
            self.acked = Some(r.off);
            self.acked_at = Some(now);
            self.events.push_back(UploadEvent::Progress {
                acked: r.off,
                len: self.len,
            });
            self.events
                .push_back(UploadEvent::Done { matched: r.matched });
            self.inflight.clear();
            self.transmit.clear();
            self.phase = Phase::Finished;
            return;
        }
        if r.off == 0 {
            if sent_off == 0 {
                // The off-0 chunk itself was not taken: no progress.
                if !self.stall(0) {
                    return;
                }
            } else {
                self.restarts += 1;
                if self.restarts > self.config.max_restarts {
                    return self.fail(UploadError::TooManyRestarts(self.restarts));
                }
                self.stalls = 0;
                self.events.push_back(UploadEvent::Restarted);
            }
            self.acked = Some(0);
            return self.rewind(0);
        }
        let advanced = self.acked.is_none_or(|a| r.off > a);
        if advanced {
            self.stalls = 0;
            self.acked_at = Some(now);
            if sent_off == 0 && r.off != sent_len as u64 {
                self.events.push_back(UploadEvent::Resumed { off: r.off });
            }
            self.events.push_back(UploadEvent::Progress {
                acked: r.off,
                len: self.len,
            });
        } else if !self.stall(r.off) {
            return;
        }
        self.acked = Some(r.off);
        if sent_off == 0 {
            // The first answer: nothing else is on the line; go on from
            // wherever the device is (the chunk's end, or a resumed session).
            self.inflight.clear();
            self.next_off = r.off;
        } else if r.off == sent_off + sent_len as u64 {
            // In order. Requests before this one were taken too (the device
            // moved past them) even if their answers were lost.
            self.inflight.drain(..=i);
            if self.grow && self.window < self.config.window.max(1) {
                self.window += 1;
            }
        } else {
            // The device expects another offset: a request was lost (no
            // receive buffer free, a damaged line) or is a resend of a chunk
            // it already holds. Continue from its offset, one at a time.
            return self.rewind(r.off);
        }
        self.fill();
    }

    /// Continues from `off`, which the device asked for: everything on the
    /// line is abandoned (answers to it are ignored as stale), and the
    /// window falls back to one request.
    fn rewind(&mut self, off: u64) {
        self.fall_back(off);
        self.inflight.clear();
        self.reading = None;
        self.next_off = off;
        self.fill();
    }

    /// One request at a time from now on: the device lost a request (a
    /// device with fewer receive buffers than the window, or MCUboot's
    /// strictly sequential serial recovery), or the line lost an answer.
    fn fall_back(&mut self, off: u64) {
        if self.grow && self.config.window > 1 {
            self.events.push_back(UploadEvent::WindowFallback { off });
        }
        self.grow = false;
        self.window = 1;
    }

    /// Counts an answer without progress; false (and failed) past the limit.
    fn stall(&mut self, off: u64) -> bool {
        self.stalls += 1;
        if self.stalls > self.config.retries {
            self.fail(UploadError::Stalled { off });
            return false;
        }
        true
    }

    fn fail(&mut self, e: UploadError) {
        self.exchange.cancel();
        self.inflight.clear();
        self.transmit.clear();
        self.reading = None;
        self.phase = Phase::Finished;
        self.events.push_back(UploadEvent::Failed(e));
    }
}

impl Engine for Upload {
    type Event = UploadEvent;

    fn handle_input(&mut self, msg: &[u8], now: Instant) {
        self.handle_message(msg, now);
    }

    fn handle_timeout(&mut self, now: Instant) {
        Upload::handle_timeout(self, now);
    }

    fn handle_data(&mut self, offset: u64, data: &[u8], now: Instant) -> Result<(), DataError> {
        Upload::handle_data(self, offset, data, now)
    }

    fn poll_read(&self) -> Option<ReadRequest> {
        Upload::poll_read(self)
    }

    fn poll_event(&mut self) -> Option<UploadEvent> {
        Upload::poll_event(self)
    }

    fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        Upload::poll_transmit(self)
    }

    fn poll_timeout(&self) -> Option<Instant> {
        Upload::poll_timeout(self)
    }

    fn is_finished(&self) -> bool {
        Upload::is_finished(self)
    }

    fn retries(&self) -> u64 {
        Upload::retries(self)
    }

    fn next_seq(&self) -> Option<u8> {
        Some(self.exchange.next_seq())
    }
}
