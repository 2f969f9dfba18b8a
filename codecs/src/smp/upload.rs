//! The image upload engine: group 1 command 1, driven by the device's `off`.
//!
//! Sources: zephyr `smp_groups/smp_group_1.rst` ("Image upload"), the
//! server in `subsys/mgmt/mcumgr/grp/img_mgmt/src/img_mgmt.c` and
//! `zephyr_img_mgmt.c` (`img_mgmt_upload_inspect`); client behaviour from
//! smpclient, mcumgr-toolkit, vouch mcumgr-client and Go newtmgr
//! (children.md §4.2, §4.5, §4.6).
//!
//! The rules it follows:
//! - MCUmgr params (group 0 id 6) give `buf_size`; when the device answers
//!   with an error, or not at all, [`UploadConfig::default_buf_size`] (384,
//!   `CONFIG_MCUMGR_TRANSPORT_NETBUF_SIZE`'s default) is used.
//! - Each upload message (header + CBOR) is at most `buf_size - overhead`
//!   (4 on serial: length field and CRC share the netbuf), computed exactly.
//! - The chunk at `off` 0 carries `image`, `len`, `sha` (and `upgrade` if
//!   configured) and must hold at least 32 bytes, the MCUboot header Zephyr
//!   inspects.
//! - The device's answer `off` picks the next chunk. `off: 0` means "send
//!   the off-0 fields again". An `off` that does not advance is resent up
//!   to `retries` times, then the upload fails.
//! - Resume after a gateway restart: a new engine sends `off` 0 with the
//!   same `len` and `sha`; Zephyr recognises the session and answers the
//!   offset it holds, from which the upload continues.
//! - `match: false` in the final answer is a verification failure.
//!
//! The engine never holds the image: it asks for one chunk at a time with
//! [`Upload::poll_read`] and keeps only the message in flight.
//!
//! # Call order
//! 1. [`Upload::new`] with `now`: the first request is queued.
//! 2. Loop: drain [`Upload::poll_transmit`] (write each message framed),
//!    answer [`Upload::poll_read`] with [`Upload::handle_data`], drain
//!    [`Upload::poll_event`]; then wait for a message from the device
//!    ([`Upload::handle_message`]) or until [`Upload::poll_timeout`]
//!    ([`Upload::handle_timeout`]).
//! 3. Stop after [`UploadEvent::Done`] or [`UploadEvent::Failed`].

use super::exchange::{Exchange, Timeout};
use super::header::{command, group, Op, SmpVersion, HEADER_LEN};
use super::message::{self, SmpErr, UploadRequest};
use super::serial::{MAX_MESSAGE, PACKET_OVERHEAD};
use super::BodyError;
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
        }
    }
}

/// Bytes of the image the engine needs next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadRequest {
    /// Offset in the image.
    pub offset: u64,
    /// Number of bytes; always available (the engine never reads past `len`).
    pub len: usize,
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
    /// The driver answered a read with other bytes than asked for.
    #[error("driver gave {got} bytes at {offset}, {want} were asked for")]
    BadData {
        /// Offset given.
        offset: u64,
        /// Bytes asked for.
        want: usize,
        /// Bytes given.
        got: usize,
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
    AwaitData { off: u64, len: usize },
    Sending { off: u64, len: usize },
    Finished,
}

/// The upload engine; see the module doc for the call order.
#[derive(Debug)]
pub struct Upload {
    config: UploadConfig,
    len: u64,
    sha: [u8; 32],
    exchange: Exchange,
    phase: Phase,
    buf_size: usize,
    read: Option<ReadRequest>,
    acked: Option<u64>,
    stalls: u32,
    restarts: u32,
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
            read: None,
            acked: None,
            stalls: 0,
            restarts: 0,
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

    /// Whether the upload ended (done or failed).
    pub fn is_finished(&self) -> bool {
        self.phase == Phase::Finished
    }

    /// A message from the device (header + CBOR, already unframed).
    /// Messages that do not answer the request in flight are ignored.
    pub fn handle_message(&mut self, msg: &[u8], _now: Instant) {
        let Some(body) = self.exchange.handle_message(msg) else {
            return;
        };
        match self.phase {
            Phase::Params => {
                match message::params_response(body) {
                    Ok(Ok(p)) => {
                        let size = usize::try_from(p.buf_size).unwrap_or(usize::MAX);
                        self.use_buf_size(size.min(self.config.max_buf_size), true);
                    }
                    // Unsupported (ENOTSUP) or unreadable: the Zephyr default.
                    _ => self.use_buf_size(self.config.default_buf_size, false),
                }
            }
            Phase::Sending { off, len } => self.on_upload_answer(off, len, body),
            Phase::AwaitData { .. } | Phase::Finished => {}
        }
    }

    /// The bytes asked for by the last [`ReadRequest`].
    pub fn handle_data(&mut self, offset: u64, data: &[u8], now: Instant) {
        let Phase::AwaitData { off, len } = self.phase else {
            return;
        };
        if offset != off || data.len() != len {
            self.fail(UploadError::BadData {
                offset,
                want: len,
                got: data.len(),
            });
            return;
        }
        let first = off == 0;
        let req = self.request_at(off, data);
        let timeout = if first {
            self.config.first_timeout
        } else {
            self.config.timeout
        };
        let retries = self.config.retries;
        self.exchange.request(
            Op::Write,
            group::IMAGE,
            command::IMAGE_UPLOAD,
            &req.encode(),
            timeout,
            retries,
            now,
        );
        self.phase = Phase::Sending { off, len };
    }

    /// Call when `now` reaches [`Upload::poll_timeout`].
    pub fn handle_timeout(&mut self, now: Instant) {
        match self.exchange.handle_timeout(now) {
            Timeout::NotDue | Timeout::Retried => {}
            Timeout::Exhausted { attempts } => match self.phase {
                Phase::Params => self.use_buf_size(self.config.default_buf_size, false),
                Phase::Sending { off, .. } => self.fail(UploadError::Timeout { off, attempts }),
                Phase::AwaitData { .. } | Phase::Finished => {}
            },
        }
    }

    /// The next message to write to the device.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.exchange.poll_transmit()
    }

    /// The image bytes the engine needs before it can send again.
    #[must_use]
    pub fn poll_read(&mut self) -> Option<ReadRequest> {
        self.read.take()
    }

    /// When to call [`Upload::handle_timeout`].
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.exchange.poll_timeout()
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
        self.next_chunk(0);
    }

    fn next_chunk(&mut self, off: u64) {
        let max_body = self
            .buf_size
            .saturating_sub(self.config.transport_overhead)
            .min(MAX_MESSAGE)
            .saturating_sub(HEADER_LEN);
        let room = message::max_data_len(&self.request_at(off, &[]), max_body).unwrap_or(0);
        let remaining = usize::try_from(self.len - off).unwrap_or(usize::MAX);
        let need = if off == 0 {
            MIN_FIRST_CHUNK.min(remaining)
        } else {
            1
        };
        if room < need {
            self.fail(UploadError::BufferTooSmall {
                buf_size: self.buf_size,
                room,
            });
            return;
        }
        let len = room.min(remaining);
        self.read = Some(ReadRequest { offset: off, len });
        self.phase = Phase::AwaitData { off, len };
    }

    fn on_upload_answer(&mut self, sent_off: u64, sent_len: usize, body: &[u8]) {
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
            self.events.push_back(UploadEvent::Progress {
                acked: r.off,
                len: self.len,
            });
            self.events
                .push_back(UploadEvent::Done { matched: r.matched });
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
            return self.next_chunk(0);
        }
        let advanced = self.acked.is_none_or(|a| r.off > a);
        if advanced {
            self.stalls = 0;
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
        self.next_chunk(r.off);
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
        self.read = None;
        self.phase = Phase::Finished;
        self.events.push_back(UploadEvent::Failed(e));
    }
}
