//! The Block1 push engine: the gateway PUTs an image of known length to a
//! child, one block in flight (NSTART = 1, RFC 7252 §4.7), reading the bytes
//! by offset so memory does not grow with the image.
//!
//! This is the block layer only. The message layer (message ids, tokens,
//! retransmission) is the driver's [`super::Exchanges`], shared with every
//! other request to the same child so message ids never collide.
//!
//! # Call order
//! The push is driven by [`super::Peers`], which keeps NSTART per peer and
//! interleaves other requests to the same child between blocks; drivers
//! start pushes there ([`super::Peers::start_push`]) rather than running
//! this engine themselves. Inside, the calls are:
//! 1. [`Block1Push::poll_request`] gives the next request when none is in
//!    flight; it goes to [`super::Exchanges::start_request`].
//! 2. When the exchange engine reports the response for that request,
//!    [`Block1Push::handle_response`]; for `GaveUp`, `TimedOut` or
//!    `Reset`, [`Block1Push::handle_failure`]. Both take `now`, which
//!    becomes the time of the acknowledgement in [`PushEvent::Progress`].
//! 3. [`Block1Push::poll_event`] is drained (progress to journal, report
//!    and liveness, the final code or the failure), then back to 1 until
//!    [`Block1Push::is_finished`].
//!
//! # Protocol rules (RFC 7959)
//! - Every request carries Block1 (descriptive, §2.3) and Size1 = the image
//!   length (§4), so a child can refuse an oversized image up front.
//! - The child's SZX in a 2.31 is its preferred size: later blocks use the
//!   smaller of ours and its, and continue at NUM = bytes acknowledged / new
//!   size (§2.3; libcoap PR obgm/libcoap#56 derives NUM the same way and
//!   ignores the NUM Erbium echoes).
//! - 4.08 Request Entity Incomplete (§2.9.2): the child lost the earlier
//!   blocks, restart at block 0. This is also how a resume from a stored
//!   offset falls back to 0 when the child forgot the transfer (docs/protocols/children.md
//!   §2.4).
//! - 4.13 Request Entity Too Large (§2.9.3, RFC 7252 §5.9.2.9): with a
//!   Size1 below the image length no retry can succeed, fail as "too large";
//!   with a Block1 of a smaller SZX, restart at block 0 with that size.

use std::collections::VecDeque;

use coap_lite::{CoapOption, Packet};

use super::block::{szx_to_size, BlockOpt, MAX_NUM, MAX_SZX};
use super::msg::{self, Code, OptionError};
use super::source::{ReadAt, ReadError};
use crate::iotda::ResultCode;
use crate::lwm2m::UpdateResult;
use crate::time::Instant;

/// What to push and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushConfig {
    /// Uri-Path segments of the target, `["5", "0", "0"]` for the LwM2M
    /// Package resource (docs/protocols/children.md §3).
    pub path: Vec<String>,
    /// Image length in bytes, sent as Size1 on every request.
    pub total_len: u32,
    /// The first block size exponent, 0..=6; the child may lower it.
    pub szx: u8,
    /// Content-Format option, `Some(42)` (application/octet-stream) for
    /// LwM2M /5/0/0 (docs/protocols/children.md §3, step 3).
    pub content_format: Option<u32>,
    /// Request-Tag (RFC 9175 §3.2) on every request, as libcoap sends it.
    pub request_tag: Option<Vec<u8>>,
    /// Bytes the child acknowledged before a gateway restart; the push
    /// continues there (rounded down to a block boundary).
    pub resume_offset: u32,
    /// Restarts from block 0 (after 4.08 or 4.13) allowed before failing.
    pub max_restarts: u32,
}

impl PushConfig {
    /// Pushing `total_len` bytes to LwM2M /5/0/0 with 1024-byte blocks,
    /// Content-Format 42 (docs/protocols/children.md §3, step 3).
    pub fn lwm2m_package(total_len: u32) -> Self {
        PushConfig {
            path: vec!["5".into(), "0".into(), "0".into()],
            total_len,
            szx: MAX_SZX,
            content_format: Some(msg::OCTET_STREAM),
            request_tag: None,
            resume_offset: 0,
            max_restarts: 3,
        }
    }
}

/// A [`PushConfig`] that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PushConfigError {
    /// SZX 7 is reserved (RFC 7959 §2.2).
    #[error("szx {0} is above 6")]
    Szx(u8),
    /// An empty image is not firmware.
    #[error("image length is zero")]
    Empty,
    /// The resume offset lies past the end of the image.
    #[error("resume offset {offset} is past the image length {total}")]
    ResumePastEnd {
        /// The offset given.
        offset: u32,
        /// The image length.
        total: u32,
    },
    /// Request-Tag is 0 to 8 bytes (RFC 9175 §3.2).
    #[error("request tag of {0} bytes, at most 8")]
    RequestTag(usize),
}

/// Why a restart from block 0 happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartReason {
    /// The child answered 4.08: it does not hold the earlier blocks.
    Incomplete,
    /// The child answered 4.13 with a smaller Block1 size.
    SmallerBlocks,
}

/// Why a push failed for good.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PushFailure {
    /// The child cannot take an image this large (4.13 with Size1, or 4.13
    /// without a usable smaller block size). IoTDA result 5.
    #[error("child accepts at most {max:?} bytes")]
    TooLarge {
        /// The Size1 of the 4.13, the child's limit, when given.
        max: Option<u32>,
    },
    /// The child answered with an error code the push cannot recover from.
    #[error("child answered {0}")]
    Rejected(Code),
    /// Restarted from block 0 more often than `max_restarts` allows.
    #[error("restarted {0} times")]
    TooManyRestarts(u32),
    /// The image needs a block number above 2^20 - 1 at the negotiated size
    /// (RFC 7959 §2.2).
    #[error("block number above {MAX_NUM}")]
    TooManyBlocks,
    /// A response broke RFC 7959: 2.31 to the final block, a bad Block1.
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// No ACK after every retransmission (RFC 7252 §4.2).
    #[error("child did not answer")]
    Unreachable,
    /// ACKed, but the separate response never came.
    #[error("child acknowledged but never responded")]
    NoResponse,
    /// The child rejected our message with RST (RFC 7252 §4.2).
    #[error("child reset the exchange")]
    Reset,
    /// A block could not be read from the image (the driver's file).
    #[error("reading the image: {0}")]
    Read(ReadError),
}

impl PushFailure {
    /// The IoTDA `result_code` and `description` for this failure
    /// (docs/protocols/iotda.md §9): "too large" is result 5 (insufficient storage), a lost
    /// child is 6 (download timeout), anything else 255 (internal
    /// exception) (inferred: IoTDA has no code for protocol errors).
    pub fn to_iotda(&self) -> (ResultCode, &'static str) {
        match self {
            PushFailure::TooLarge { .. } => UpdateResult::NotEnoughStorage.to_iotda(),
            PushFailure::Unreachable | PushFailure::NoResponse | PushFailure::Reset => {
                UpdateResult::ConnectionLost.to_iotda()
            }
            _ => (ResultCode::INNER_ERROR, "internal exception"),
        }
    }
}

/// How the exchange for the in-flight request ended without a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportFailure {
    /// `ExchangeEvent::GaveUp`.
    GaveUp,
    /// `ExchangeEvent::TimedOut`.
    TimedOut,
    /// `ExchangeEvent::Reset`.
    Reset,
}

/// What the push engine reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushEvent {
    /// The child acknowledged bytes `0..acked` at `at`: journal `acked` to
    /// resume; `at` is the liveness signal (one per block).
    Progress {
        /// Bytes acknowledged.
        acked: u32,
        /// Image length.
        total: u32,
        /// When the acknowledgement was handled (the `now` of
        /// [`Block1Push::handle_response`]).
        at: Instant,
    },
    /// The child asked for smaller blocks (RFC 7959 §2.3).
    BlockSize {
        /// The new size exponent.
        szx: u8,
    },
    /// The transfer starts again at block 0.
    Restarted {
        /// Why.
        reason: RestartReason,
        /// The block size exponent from now on.
        szx: u8,
    },
    /// The child took the whole image; its final response code (2.04, 2.01).
    Done(Code),
    /// The push failed for good.
    Failed(PushFailure),
}

#[derive(Debug, Clone, Copy)]
struct InFlight {
    offset: u32,
    len: u32,
    szx: u8,
    last: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Running,
    Done,
    Failed,
}

/// The Block1 push state machine (see the module doc for the call order).
#[derive(Debug)]
pub struct Block1Push {
    cfg: PushConfig,
    szx: u8,
    acked: u32,
    in_flight: Option<InFlight>,
    restarts: u32,
    phase: Phase,
    /// When the child last acknowledged a block.
    last_ack: Option<Instant>,
    events: VecDeque<PushEvent>,
}

impl Block1Push {
    /// A push that starts at `cfg.resume_offset`.
    pub fn new(cfg: PushConfig) -> Result<Self, PushConfigError> {
        if cfg.szx > MAX_SZX {
            return Err(PushConfigError::Szx(cfg.szx));
        }
        if cfg.total_len == 0 {
            return Err(PushConfigError::Empty);
        }
        if cfg.resume_offset > cfg.total_len {
            return Err(PushConfigError::ResumePastEnd {
                offset: cfg.resume_offset,
                total: cfg.total_len,
            });
        }
        if let Some(tag) = &cfg.request_tag {
            if tag.len() > 8 {
                return Err(PushConfigError::RequestTag(tag.len()));
            }
        }
        let size = szx_to_size(cfg.szx);
        // A resume offset inside a block restarts at that block's start:
        // re-sending bytes the child has is harmless, skipping some is not.
        let mut acked = cfg.resume_offset / size * size;
        if acked == cfg.total_len {
            // Everything was acknowledged but the final response was not
            // seen: send the last block again to get it.
            acked = (cfg.total_len - 1) / size * size;
        }
        Ok(Block1Push {
            szx: cfg.szx,
            acked,
            in_flight: None,
            restarts: 0,
            phase: Phase::Running,
            last_ack: None,
            events: VecDeque::new(),
            cfg,
        })
    }

    /// Bytes the child acknowledged so far: the offset to journal.
    pub fn acked(&self) -> u32 {
        self.acked
    }

    /// When the child last acknowledged a block (`None` before the first):
    /// with [`Block1Push::acked`], "bytes acknowledged at t".
    pub fn last_ack(&self) -> Option<Instant> {
        self.last_ack
    }

    /// The image length.
    pub fn total_len(&self) -> u32 {
        self.cfg.total_len
    }

    /// Done or failed: nothing more will be sent.
    pub fn is_finished(&self) -> bool {
        self.phase != Phase::Running
    }

    /// The next request to send, when none is in flight and the push is not
    /// finished. Reads exactly one block from `image`. A read error leaves
    /// the engine as it was, so the driver may retry.
    #[must_use = "the request must be sent"]
    pub fn poll_request<R: ReadAt + ?Sized>(
        &mut self,
        image: &mut R,
    ) -> Result<Option<Packet>, ReadError> {
        if self.phase != Phase::Running || self.in_flight.is_some() {
            return Ok(None);
        }
        let size = szx_to_size(self.szx);
        let offset = self.acked / size * size;
        let num = offset / size;
        if num > MAX_NUM {
            self.fail(PushFailure::TooManyBlocks);
            return Ok(None);
        }
        let len = size.min(self.cfg.total_len - offset);
        let last = offset + len == self.cfg.total_len;
        // Read straight into the payload: a read error leaves the engine as
        // it was (nothing below has run yet).
        let mut payload = vec![0u8; len as usize];
        image.read_at(u64::from(offset), &mut payload)?;

        let mut p = msg::request(Code::PUT, &self.cfg.path);
        if let Some(cf) = self.cfg.content_format {
            msg::set_uint(&mut p, CoapOption::ContentFormat, cf);
        }
        msg::set_block1(
            &mut p,
            BlockOpt {
                num,
                more: !last,
                szx: self.szx,
            },
        );
        // RFC 7959 §4: Size1 in a request gives the total body size.
        msg::set_uint(&mut p, CoapOption::Size1, self.cfg.total_len);
        if let Some(tag) = &self.cfg.request_tag {
            p.add_option(CoapOption::Unknown(msg::REQUEST_TAG), tag.clone());
        }
        p.payload = payload;
        self.in_flight = Some(InFlight {
            offset,
            len,
            szx: self.szx,
            last,
        });
        Ok(Some(p))
    }

    /// The response to the request in flight, handled at `now`.
    pub fn handle_response(&mut self, response: &Packet, now: Instant) {
        let Some(f) = self.in_flight.take() else {
            return; // nothing asked: a stray response is not ours to judge
        };
        let code = msg::code(response);
        let b1 = match msg::block1(response) {
            Ok(b) => b,
            Err(e) => return self.fail(protocol(e)),
        };
        if code.is_success() && code != Code::CONTINUE && !f.last && b1.is_none() {
            // RFC 7959 §2.3: a server doing block-wise answers a non-final
            // block with Block1. A success without it comes from a server
            // that ignored the (critical) option and took this one block
            // as the whole payload: going on would deliver a torn image.
            return self.fail(PushFailure::Protocol(format!(
                "{code} without Block1 to a non-final block: the child does not take block-wise transfers"
            )));
        }
        if code == Code::CONTINUE || (code.is_success() && !f.last) {
            if f.last {
                // RFC 7959 §2.3: 2.31 answers non-final blocks only.
                return self.fail(PushFailure::Protocol(
                    "2.31 Continue to the final block".into(),
                ));
            }
            self.acked = f.offset + f.len;
            self.last_ack = Some(now);
            self.events.push_back(PushEvent::Progress {
                acked: self.acked,
                total: self.cfg.total_len,
                at: now,
            });
            if let Some(b) = b1 {
                // RFC 7959 §2.3: heed the server's preferred (smaller) size.
                if b.szx < self.szx {
                    self.szx = b.szx;
                    self.events.push_back(PushEvent::BlockSize { szx: b.szx });
                }
            }
        } else if code.is_success() {
            self.acked = self.cfg.total_len;
            self.last_ack = Some(now);
            self.events.push_back(PushEvent::Progress {
                acked: self.acked,
                total: self.cfg.total_len,
                at: now,
            });
            self.phase = Phase::Done;
            self.events.push_back(PushEvent::Done(code));
        } else if code == Code::REQUEST_ENTITY_INCOMPLETE {
            if f.offset == 0 {
                // Block 0 cannot be out of sequence: the child refuses.
                return self.fail(PushFailure::Rejected(code));
            }
            self.restart(RestartReason::Incomplete);
        } else if code == Code::REQUEST_ENTITY_TOO_LARGE {
            let size1 = match msg::size1(response) {
                Ok(s) => s,
                Err(e) => return self.fail(protocol(e)),
            };
            match (size1, b1) {
                (Some(max), _) if max < self.cfg.total_len => {
                    self.fail(PushFailure::TooLarge { max: Some(max) })
                }
                (_, Some(b)) if b.szx < f.szx => {
                    self.szx = b.szx;
                    self.restart(RestartReason::SmallerBlocks);
                }
                (max, _) => self.fail(PushFailure::TooLarge { max }),
            }
        } else {
            self.fail(PushFailure::Rejected(code));
        }
    }

    /// The exchange for the request in flight ended without a response (at
    /// `now`; a failure is final, so the time is not kept).
    pub fn handle_failure(&mut self, why: TransportFailure, _now: Instant) {
        if self.in_flight.take().is_none() {
            return;
        }
        self.fail(match why {
            TransportFailure::GaveUp => PushFailure::Unreachable,
            TransportFailure::TimedOut => PushFailure::NoResponse,
            TransportFailure::Reset => PushFailure::Reset,
        });
    }

    /// The next event.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<PushEvent> {
        self.events.pop_front()
    }

    fn restart(&mut self, reason: RestartReason) {
        self.restarts += 1;
        if self.restarts > self.cfg.max_restarts {
            return self.fail(PushFailure::TooManyRestarts(self.restarts - 1));
        }
        self.acked = 0;
        self.events.push_back(PushEvent::Restarted {
            reason,
            szx: self.szx,
        });
    }

    /// Ends the push with `failure` (a read error in the driver, a
    /// cancelled transfer): nothing more is sent.
    pub fn abort(&mut self, failure: PushFailure) {
        if self.phase == Phase::Running {
            self.fail(failure);
        }
    }

    fn fail(&mut self, failure: PushFailure) {
        self.phase = Phase::Failed;
        self.in_flight = None;
        self.events.push_back(PushEvent::Failed(failure));
    }
}

fn protocol(e: OptionError) -> PushFailure {
    PushFailure::Protocol(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coap::msg::{block1, size1, uri_path};
    use proptest::prelude::*;

    const T0: Instant = Instant::ZERO;

    fn image(len: usize) -> Vec<u8> {
        (0..len).map(|i| i as u8).collect()
    }

    fn cfg(total: u32, szx: u8) -> PushConfig {
        PushConfig {
            max_restarts: 2,
            szx,
            ..PushConfig::lwm2m_package(total)
        }
    }

    fn resp(code: Code, b1: Option<BlockOpt>, size1: Option<u32>) -> Packet {
        let mut p = Packet::new();
        msg::set_code(&mut p, code);
        if let Some(b) = b1 {
            msg::set_block1(&mut p, b);
        }
        if let Some(s) = size1 {
            msg::set_uint(&mut p, CoapOption::Size1, s);
        }
        p
    }

    fn cont(num: u32, szx: u8) -> Packet {
        resp(
            Code::CONTINUE,
            Some(BlockOpt {
                num,
                more: true,
                szx,
            }),
            None,
        )
    }

    fn events(p: &mut Block1Push) -> Vec<PushEvent> {
        std::iter::from_fn(|| p.poll_event()).collect()
    }

    /// (NUM, M, SZX, payload offset, payload len) of the next request.
    fn next(p: &mut Block1Push, img: &mut Vec<u8>) -> (u32, bool, u8, usize) {
        let req = p.poll_request(img).unwrap().expect("a request");
        assert_eq!(p.poll_request(img).unwrap(), None, "one block in flight");
        let b = block1(&req).unwrap().unwrap();
        assert_eq!(
            size1(&req).unwrap(),
            Some(img.len() as u32),
            "Size1 on every request"
        );
        assert_eq!(uri_path(&req).unwrap(), vec!["5", "0", "0"]);
        let off = b.offset() as usize;
        assert_eq!(req.payload, img[off..off + req.payload.len()]);
        (b.num, b.more, b.szx, req.payload.len())
    }

    #[test]
    fn plain_push_ends_with_the_final_code() {
        let mut img = image(100);
        let mut p = Block1Push::new(cfg(100, 2)).unwrap();
        assert_eq!(next(&mut p, &mut img), (0, true, 2, 64));
        p.handle_response(&cont(0, 2), T0);
        assert_eq!(next(&mut p, &mut img), (1, false, 2, 36));
        p.handle_response(
            &resp(
                Code::CHANGED,
                Some(BlockOpt {
                    num: 1,
                    more: false,
                    szx: 2,
                }),
                None,
            ),
            T0,
        );
        assert_eq!(
            events(&mut p),
            vec![
                PushEvent::Progress {
                    acked: 64,
                    total: 100,
                    at: T0
                },
                PushEvent::Progress {
                    acked: 100,
                    total: 100,
                    at: T0
                },
                PushEvent::Done(Code::CHANGED),
            ]
        );
        assert!(p.is_finished());
        assert_eq!(p.poll_request(&mut img).unwrap(), None);
    }

    #[test]
    fn smaller_size_in_continue_continues_at_bytes_sent() {
        // docs/protocols/children.md §2.2: 0/M/1024 answered 2.31 0/M/256 → next is 4/M/256.
        let mut img = image(5000);
        let mut p = Block1Push::new(cfg(5000, 6)).unwrap();
        assert_eq!(next(&mut p, &mut img), (0, true, 6, 1024));
        p.handle_response(&cont(0, 4), T0);
        assert_eq!(next(&mut p, &mut img), (4, true, 4, 256));
        assert!(events(&mut p).contains(&PushEvent::BlockSize { szx: 4 }));
        // A larger SZX later is not taken (RFC 7959 §2.3: preferred or smaller).
        p.handle_response(&cont(4, 6), T0);
        assert_eq!(next(&mut p, &mut img), (5, true, 4, 256));
    }

    #[test]
    fn incomplete_restarts_from_zero_and_is_bounded() {
        let mut img = image(100);
        let mut p = Block1Push::new(cfg(100, 0)).unwrap();
        assert_eq!(next(&mut p, &mut img).0, 0);
        p.handle_response(&cont(0, 0), T0);
        assert_eq!(next(&mut p, &mut img).0, 1);
        p.handle_response(&resp(Code::REQUEST_ENTITY_INCOMPLETE, None, None), T0);
        assert_eq!(
            events(&mut p).last(),
            Some(&PushEvent::Restarted {
                reason: RestartReason::Incomplete,
                szx: 0
            })
        );
        assert_eq!(p.acked(), 0);
        for _ in 0..2 {
            assert_eq!(next(&mut p, &mut img).0, 0);
            p.handle_response(&cont(0, 0), T0);
            next(&mut p, &mut img);
            p.handle_response(&resp(Code::REQUEST_ENTITY_INCOMPLETE, None, None), T0);
        }
        assert_eq!(
            events(&mut p).last(),
            Some(&PushEvent::Failed(PushFailure::TooManyRestarts(2)))
        );
    }

    #[test]
    fn success_without_block1_to_a_non_final_block_ends_the_push() {
        // A child that ignores Block1 answers each block 2.04 on its own.
        let mut img = image(100);
        let mut p = Block1Push::new(cfg(100, 0)).unwrap();
        let (_, more, _, _) = next(&mut p, &mut img);
        assert!(more);
        p.handle_response(&resp(Code::CHANGED, None, None), T0);
        let ev = events(&mut p);
        assert!(
            matches!(ev.as_slice(), [PushEvent::Failed(PushFailure::Protocol(m))] if m.contains("without Block1")),
            "{ev:?}"
        );
        // With Block1 echoed the same code goes on (non-atomic server).
        let mut p = Block1Push::new(cfg(100, 0)).unwrap();
        let _ = next(&mut p, &mut img);
        let b = BlockOpt {
            num: 0,
            more: true,
            szx: 0,
        };
        p.handle_response(&resp(Code::CHANGED, Some(b), None), T0);
        assert!(matches!(
            events(&mut p).as_slice(),
            [PushEvent::Progress { acked: 16, .. }]
        ));
    }

    #[test]
    fn incomplete_on_block_zero_is_a_rejection() {
        let mut img = image(100);
        let mut p = Block1Push::new(cfg(100, 0)).unwrap();
        let _ = next(&mut p, &mut img);
        p.handle_response(&resp(Code::REQUEST_ENTITY_INCOMPLETE, None, None), T0);
        assert_eq!(
            events(&mut p),
            vec![PushEvent::Failed(PushFailure::Rejected(
                Code::REQUEST_ENTITY_INCOMPLETE
            ))]
        );
    }

    #[test]
    fn resume_continues_at_the_stored_offset_and_falls_back_on_4_08() {
        let mut img = image(1000);
        let mut p = Block1Push::new(PushConfig {
            resume_offset: 300,
            ..cfg(1000, 2)
        })
        .unwrap();
        // 300 rounds down to the block at 256 (NUM 4 of 64 bytes).
        assert_eq!(next(&mut p, &mut img), (4, true, 2, 64));
        p.handle_response(&resp(Code::REQUEST_ENTITY_INCOMPLETE, None, None), T0);
        assert_eq!(next(&mut p, &mut img), (0, true, 2, 64));
        // Resume with everything acknowledged re-sends the last block.
        let mut q = Block1Push::new(PushConfig {
            resume_offset: 1000,
            ..cfg(1000, 2)
        })
        .unwrap();
        assert_eq!(next(&mut q, &mut img), (15, false, 2, 40));
    }

    #[test]
    fn too_large_with_size1_fails_for_good() {
        let mut img = image(5000);
        let mut p = Block1Push::new(cfg(5000, 6)).unwrap();
        let _ = next(&mut p, &mut img);
        p.handle_response(&resp(Code::REQUEST_ENTITY_TOO_LARGE, None, Some(4096)), T0);
        let failure = PushFailure::TooLarge { max: Some(4096) };
        assert_eq!(events(&mut p), vec![PushEvent::Failed(failure.clone())]);
        assert_eq!(
            failure.to_iotda(),
            (
                ResultCode::LOW_SPACE,
                "Not enough storage for the new firmware package"
            )
        );
    }

    #[test]
    fn too_large_with_smaller_block1_restarts_at_that_size() {
        let mut img = image(5000);
        let mut p = Block1Push::new(cfg(5000, 6)).unwrap();
        let _ = next(&mut p, &mut img);
        p.handle_response(
            &resp(
                Code::REQUEST_ENTITY_TOO_LARGE,
                Some(BlockOpt {
                    num: 0,
                    more: false,
                    szx: 2,
                }),
                Some(100_000),
            ),
            T0,
        );
        assert_eq!(
            events(&mut p),
            vec![PushEvent::Restarted {
                reason: RestartReason::SmallerBlocks,
                szx: 2
            }]
        );
        assert_eq!(next(&mut p, &mut img), (0, true, 2, 64));
        // 4.13 with no usable hint at all is "too large" without a limit.
        p.handle_response(&resp(Code::REQUEST_ENTITY_TOO_LARGE, None, None), T0);
        assert_eq!(
            events(&mut p),
            vec![PushEvent::Failed(PushFailure::TooLarge { max: None })]
        );
    }

    #[test]
    fn errors_and_transport_failures_end_the_push() {
        let mut img = image(100);
        let mut p = Block1Push::new(cfg(100, 0)).unwrap();
        let _ = next(&mut p, &mut img);
        p.handle_response(&resp(Code::NOT_FOUND, None, None), T0);
        assert_eq!(
            events(&mut p),
            vec![PushEvent::Failed(PushFailure::Rejected(Code::NOT_FOUND))]
        );

        let mut p = Block1Push::new(cfg(100, 0)).unwrap();
        let _ = next(&mut p, &mut img);
        p.handle_failure(TransportFailure::GaveUp, T0);
        assert_eq!(
            events(&mut p),
            vec![PushEvent::Failed(PushFailure::Unreachable)]
        );
        assert_eq!(PushFailure::Unreachable.to_iotda().0.get(), 6);

        let mut img = image(16);
        let mut p = Block1Push::new(cfg(16, 0)).unwrap();
        let _ = next(&mut p, &mut img);
        p.handle_response(&cont(0, 0), T0);
        assert!(matches!(
            events(&mut p)[..],
            [PushEvent::Failed(PushFailure::Protocol(_))]
        ));
    }

    #[test]
    fn past_block_4095_uses_three_byte_options() {
        let total = 4097 * 16 + 5;
        let mut img = image(total as usize);
        let mut p = Block1Push::new(PushConfig {
            resume_offset: 4095 * 16,
            ..cfg(total, 0)
        })
        .unwrap();
        let req = p.poll_request(&mut img).unwrap().unwrap();
        assert_eq!(
            req.get_first_option(CoapOption::Block1).unwrap(),
            &vec![0xff, 0xf8]
        );
        p.handle_response(&cont(4095, 0), T0);
        let req = p.poll_request(&mut img).unwrap().unwrap();
        assert_eq!(
            req.get_first_option(CoapOption::Block1).unwrap(),
            &vec![0x01, 0x00, 0x08]
        );
        p.handle_response(&cont(4096, 0), T0);
        assert_eq!(next(&mut p, &mut img), (4097, false, 0, 5));
    }

    #[test]
    fn config_errors() {
        assert_eq!(
            Block1Push::new(cfg(0, 0)).unwrap_err(),
            PushConfigError::Empty
        );
        assert_eq!(
            Block1Push::new(cfg(10, 7)).unwrap_err(),
            PushConfigError::Szx(7)
        );
        assert!(matches!(
            Block1Push::new(PushConfig {
                resume_offset: 11,
                ..cfg(10, 0)
            }),
            Err(PushConfigError::ResumePastEnd { .. })
        ));
    }

    #[test]
    fn read_errors_leave_the_engine_retryable() {
        let mut short = image(10);
        let mut p = Block1Push::new(cfg(100, 0)).unwrap();
        assert!(p.poll_request(&mut short).is_err());
        let mut img = image(100);
        assert_eq!(next(&mut p, &mut img).0, 0);
    }

    /// A child that reassembles Block1 like aiocoap/libcoap: it answers
    /// 2.31 with its preferred size, 4.08 to a block that does not follow
    /// what it holds, and can forget everything (state expiry).
    struct Reassembler {
        got: Vec<u8>,
        done: bool,
    }

    impl Reassembler {
        fn answer(&mut self, req: &Packet, pref_szx: u8, forget: bool) -> Packet {
            if forget {
                self.got.clear();
            }
            let b = block1(req).unwrap().unwrap();
            let offset = b.offset() as usize;
            if offset == 0 {
                self.got.clear();
            } else if offset != self.got.len() {
                return resp(Code::REQUEST_ENTITY_INCOMPLETE, None, None);
            }
            self.got.extend_from_slice(&req.payload);
            if b.more {
                let szx = pref_szx.min(b.szx);
                cont(b.num, szx)
            } else {
                self.done = true;
                resp(
                    Code::CHANGED,
                    Some(BlockOpt {
                        num: b.num,
                        more: false,
                        szx: b.szx,
                    }),
                    None,
                )
            }
        }
    }

    proptest! {
        /// Against a reassembling child that lowers its block size and
        /// forgets its state at random, the child ends up with exactly the
        /// image, or the push fails by running out of restarts.
        #[test]
        fn reassembled_image_is_exact(
            total in 1u32..4000,
            szx in 0u8..=6,
            resume in 0u32..4000,
            prefs in proptest::collection::vec(0u8..=6, 1..64),
            forgets in proptest::collection::vec(proptest::bool::weighted(0.05), 1..64),
        ) {
            let mut img: Vec<u8> = (0..total).map(|i| (i * 7 + 3) as u8).collect();
            let cfg = PushConfig { resume_offset: resume.min(total), max_restarts: 50, ..cfg(total, szx) };
            let mut p = Block1Push::new(cfg).unwrap();
            let mut child = Reassembler { got: Vec::new(), done: false };
            let mut last_acked = p.acked();
            for step in 0..20_000usize {
                let Some(req) = p.poll_request(&mut img).unwrap() else { break };
                let r = child.answer(&req, prefs[step % prefs.len()], forgets[step % forgets.len()]);
                p.handle_response(&r, T0);
                for e in events(&mut p) {
                    match e {
                        PushEvent::Progress { acked, .. } => {
                            prop_assert!(acked > last_acked || acked == total);
                            last_acked = acked;
                        }
                        PushEvent::Restarted { .. } => last_acked = 0,
                        PushEvent::Failed(f) => {
                            prop_assert_eq!(f, PushFailure::TooManyRestarts(50));
                        }
                        _ => {}
                    }
                }
            }
            prop_assert!(p.is_finished(), "the push must end");
            if child.done {
                // A resumed push leaves the child's first bytes unsent, so
                // compare what it received from where it started.
                let start = img.len() - child.got.len();
                prop_assert!(start == 0 || resume > 0);
                prop_assert_eq!(&child.got[..], &img[start..]);
            }
        }

        /// Whatever the child answers, the engine never panics, never sends
        /// past the image and finishes within a bounded number of steps.
        #[test]
        fn arbitrary_responses_never_panic(
            answers in proptest::collection::vec((any::<u8>(), proptest::option::of(any::<[u8; 3]>()), proptest::option::of(any::<u32>())), 1..40),
            total in 1u32..3000,
            szx in 0u8..=6,
        ) {
            let mut img = image(total as usize);
            let mut p = Block1Push::new(PushConfig { szx, ..cfg(total, szx) }).unwrap();
            for (code, b1, s1) in answers {
                let Some(req) = p.poll_request(&mut img).unwrap() else { break };
                let b = block1(&req).unwrap().unwrap();
                prop_assert!(b.offset() + req.payload.len() as u64 <= u64::from(total));
                let mut r = Packet::new();
                msg::set_code(&mut r, Code(code));
                if let Some(v) = b1 { r.add_option(CoapOption::Block1, v.to_vec()); }
                if let Some(s) = s1 { msg::set_uint(&mut r, CoapOption::Size1, s); }
                p.handle_response(&r, T0);
                let _ = events(&mut p);
            }
        }
    }
}
