//! The decisions of a resumable HTTP download, without I/O: where to start,
//! what to ask for (`Range`, `If-Range`), what a response head means
//! (200/206/416/401/403/3xx/5xx, `Content-Range`, `Content-Length`), when
//! the bytes received become a checkpoint, and whether an attempt's end is
//! a success, a retry or a failure.
//!
//! The daemon's downloader (`src/package/download.rs`) moves bytes between
//! the socket, the `.part` file and the journal; every choice it makes
//! comes from a [`Plan`]. Resume follows RFC 9110 §14: a resume sends
//! `Range: bytes=N-` plus `If-Range` with the strong ETag or the
//! Last-Modified date of the partial content; a `206` must start at `N`; a
//! `200` means the server ignored the range (or the content changed), so the
//! file starts again from byte 0 with that body; a `416` with every byte
//! here means the download is complete, otherwise it starts again from 0.
//! IoTDA's v1 endpoint may not honour `Range` at all
//! (docs/protocols/iotda.md §4.7): that costs a re-download after each cut
//! but still completes.
//!
//! # Call order
//! 1. [`Start::resume`] from the journal row of an unverified `.part` file
//!    and that file's length; the driver truncates the file to
//!    [`Start::offset`] and hashes what is left. Then [`Plan::new`].
//! 2. Per attempt, [`Plan::start_attempt`]: `None` means every byte is
//!    already here (an earlier attempt failed after its last byte). Else
//!    send the GET with the [`Request`]'s headers, and give the response
//!    head to [`Plan::handle_head`]. Its [`HeadAction`] says whether to
//!    empty the file first ([`HeadAction::restart`]), whether the size was
//!    just learnt (check the disk has room), and what follows: a redirect
//!    (send [`Plan::request`] to the `Location`, which the driver resolves
//!    and checks), the body, or the attempt's [`End`].
//! 3. For each chunk of the body, [`Plan::handle_data`] before it is
//!    written (it refuses bytes beyond the size), then
//!    [`Plan::poll_checkpoint`]. While no chunk arrives, call
//!    [`Plan::poll_checkpoint`] at [`Plan::poll_timeout`]. A [`Checkpoint`]
//!    is carried out by the driver (write up to `len`, fsync, journal) and
//!    reported with [`Plan::handle_durable`]; at most one is in flight.
//!    When the body ends, [`Plan::handle_body_end`] gives the [`End`]; a
//!    transport failure is an [`End::Interrupted`] the driver builds.
//! 4. Before the next step, the driver settles: it waits for the checkpoint
//!    in flight and carries out [`Plan::poll_final_checkpoint`] (after a
//!    complete download the final fsync covers it instead).
//! 5. [`Plan::handle_end`]: complete, retry (after the driver's backoff;
//!    `progressed` says whether to reset it), or a [`PlanError`] that ends
//!    the download for good.
//!
//! Time is the driver's, passed in as [`crate::time::Instant`] to
//! [`Plan::new`], [`Plan::handle_head`], [`Plan::handle_data`] and the
//! `poll_*` methods (the other inputs carry no time); the deadline
//! (the token's validity) and the backoff between attempts belong to the
//! driver's retry policy.

mod head;

use std::time::Duration;

pub use self::head::{ContentRange, Head};
use crate::time::Instant;

/// The plan's fixed settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Checkpoint at least every this many bytes.
    pub checkpoint_bytes: u64,
    /// ... and at least this often while bytes arrive.
    pub checkpoint_interval: Duration,
    /// 401/403 answers in a row before the token counts as dead.
    pub auth_attempts: u32,
    /// Redirects followed in one attempt.
    pub max_redirects: u32,
    /// The largest package accepted when its size is not known in advance
    /// (`download.max_package_bytes`).
    pub max_bytes: u64,
}

/// Redirects followed in one attempt before giving up (curl's default is 50,
/// browsers about 20; a package URL needs one or two).
pub const MAX_REDIRECTS: u32 = 5;

/// What the journal holds for an unverified `.part` file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Journaled<'a> {
    /// The size recorded with it.
    pub size: Option<u64>,
    /// Bytes known to be on disk (fsynced before they were recorded).
    pub durable_len: u64,
    /// The ETag or Last-Modified of the partial content.
    pub validator: Option<&'a str>,
}

/// Where a download starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Start {
    /// Bytes of the `.part` file to keep; the driver truncates it to this.
    pub offset: u64,
    /// The size, when the request or the journal knows it.
    pub size: Option<u64>,
    /// The validator of the kept bytes.
    pub validator: Option<String>,
}

impl Start {
    /// The start for a request of `requested` bytes (if known), given the
    /// journal row of its unverified `.part` file (if any) and the file's
    /// length. The journaled length was fsynced before it was recorded, so
    /// the file holds at least that much; anything beyond it may be garbage
    /// from before a crash and is cut. A row for another size (a different
    /// package under the same key) is ignored.
    pub fn resume(requested: Option<u64>, row: Option<Journaled<'_>>, file_len: u64) -> Start {
        let mut start = Start {
            offset: 0,
            size: requested,
            validator: None,
        };
        if let Some(row) = row {
            let same_size = match (row.size, requested) {
                (Some(a), Some(b)) => a == b,
                _ => true,
            };
            if same_size {
                start.offset = row.durable_len.min(file_len);
                start.validator = row.validator.map(str::to_owned);
                start.size = requested.or(row.size);
            }
        }
        if start.size.is_some_and(|size| start.offset > size) {
            start.offset = 0;
        }
        start
    }
}

/// The headers of a GET (and of each redirected GET).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// `Range: bytes=N-` when bytes are already here.
    pub range: Option<String>,
    /// `If-Range` with the validator of those bytes.
    pub if_range: Option<String>,
}

/// Why an attempt ended early; the next attempt resumes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Interruption {
    /// No response head: connect, TLS or HTTP failure (the driver's words).
    #[error("{0}")]
    Transport(String),
    /// The body delivered nothing for the read timeout.
    #[error("no data for {0:?} (stalled)")]
    Stalled(Duration),
    /// The body failed mid-way.
    #[error("connection lost after byte {at}: {detail}")]
    ConnectionLost {
        /// Bytes received by then.
        at: u64,
        /// The driver's words.
        detail: String,
    },
    /// 408, 429 or 5xx.
    #[error("HTTP {0}")]
    Status(u16),
    /// A `206` without a `Content-Range` this plan can read.
    #[error("206 without a usable Content-Range")]
    NoContentRange,
    /// A `206` that does not start where the request asked: its bytes
    /// cannot be placed, so the file starts over with a plain GET.
    #[error("206 started at byte {0}")]
    RangeStart(u64),
    /// A `416` while bytes are missing: the file starts over.
    #[error("416 Range Not Satisfiable")]
    RangeNotSatisfiable,
    /// The body ended before the size.
    #[error("the body ended after byte {at} of {size}")]
    ShortBody {
        /// Bytes received.
        at: u64,
        /// The size.
        size: u64,
    },
    /// 401 or 403.
    #[error("HTTP {0}: the token was refused")]
    TokenRefused(u16),
}

/// How an attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// Every byte is here.
    Complete,
    /// Try again after a backoff.
    Interrupted(Interruption),
}

/// What follows a response head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Then {
    /// Send the request again to this `Location` (resolved against the
    /// current URL and checked by the driver).
    Redirect(String),
    /// Read the body; its first byte goes at [`Plan::received`].
    ReadBody,
    /// No body to read: the attempt is over.
    End(End),
}

/// The plan's answer to a response head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeadAction {
    /// Empty the `.part` file (and its hash) first, and record length 0 with
    /// [`Plan::size`] and [`Plan::validator`]: a checkpoint in flight must
    /// finish before, so that it cannot record a length afterwards.
    pub restart: bool,
    /// The size was learnt from this head: check that the disk has room.
    pub learnt_size: Option<u64>,
    /// What to do next.
    pub then: Then,
}

impl HeadAction {
    fn then(then: Then) -> HeadAction {
        HeadAction {
            restart: false,
            learnt_size: None,
            then,
        }
    }
}

/// A checkpoint to carry out: make the first `len` bytes durable (write,
/// fsync), then record `len`, `size` and `validator` in the journal, in that
/// order, and report it with [`Plan::handle_durable`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// Which content it belongs to (changes when the file starts over).
    pub epoch: u32,
    /// Bytes covered.
    pub len: u64,
    /// The size to record.
    pub size: Option<u64>,
    /// The validator to record.
    pub validator: Option<String>,
}

/// What follows an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Every byte is here: verify.
    Complete,
    /// Try again after a backoff; `progressed`: this attempt got further
    /// than the previous one (reset the backoff).
    Retry {
        /// Bytes beyond where the attempt started arrived.
        progressed: bool,
    },
}

/// Why a download fails for good.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// The server sent or declared a length that disagrees with the size.
    #[error("server's length disagrees with file_size {expected}: {detail}")]
    LengthMismatch {
        /// The size expected.
        expected: u64,
        /// What the server said or did.
        detail: String,
    },
    /// The package is larger than [`Config::max_bytes`].
    #[error("package of {size} bytes is above the limit of {max}")]
    TooLarge {
        /// Its size (or the bytes received so far).
        size: u64,
        /// The limit.
        max: u64,
    },
    /// An error status that retrying will not fix.
    #[error("the server answered HTTP {status}")]
    HttpStatus {
        /// The status code.
        status: u16,
    },
    /// Too many redirects, or one without a `Location`.
    #[error("redirect refused: {0}")]
    Redirect(String),
    /// 401/403 [`Config::auth_attempts`] times in a row.
    #[error("the server refused the download token with HTTP {status} {attempts} times")]
    TokenRejected {
        /// The last status.
        status: u16,
        /// Refusals in a row.
        attempts: u32,
    },
}

/// The decisions of one download; see the module doc for the call order.
#[derive(Debug, Clone)]
pub struct Plan {
    cfg: Config,
    size: Option<u64>,
    validator: Option<String>,
    /// Bytes accepted: where the next byte goes.
    received: u64,
    /// Bytes known to be on disk and journaled.
    durable: u64,
    /// Bytes covered by the last checkpoint started.
    checkpointed: u64,
    checkpoint_at: Instant,
    in_flight: bool,
    epoch: u32,
    attempts: u32,
    hops: u32,
    auth_refusals: u32,
    received_at_start: u64,
    last_failure: Option<Interruption>,
}

impl Plan {
    /// A plan starting at `start` at time `now`.
    pub fn new(cfg: Config, start: Start, now: Instant) -> Plan {
        Plan {
            cfg,
            size: start.size,
            validator: start.validator,
            received: start.offset,
            durable: start.offset,
            checkpointed: start.offset,
            checkpoint_at: now,
            in_flight: false,
            epoch: 0,
            attempts: 0,
            hops: 0,
            auth_refusals: 0,
            received_at_start: start.offset,
            last_failure: None,
        }
    }

    /// Bytes received: where the next byte goes.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Bytes known to be on disk and journaled.
    pub fn durable(&self) -> u64 {
        self.durable
    }

    /// The size, once known.
    pub fn size(&self) -> Option<u64> {
        self.size
    }

    /// The validator of the bytes received.
    pub fn validator(&self) -> Option<&str> {
        self.validator.as_deref()
    }

    /// Attempts started.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// Why the last interrupted attempt ended.
    pub fn last_failure(&self) -> Option<&Interruption> {
        self.last_failure.as_ref()
    }

    /// Whether a checkpoint is being carried out.
    pub fn checkpoint_in_flight(&self) -> bool {
        self.in_flight
    }

    /// Starts an attempt: the request to send, or `None` when every byte
    /// is already here (an earlier attempt failed after the last byte).
    /// The first attempt always asks, even for a complete file: a `416`
    /// then confirms it.
    pub fn start_attempt(&mut self) -> Option<Request> {
        if self.attempts > 0 && self.received > 0 && self.size == Some(self.received) {
            return None;
        }
        self.attempts += 1;
        self.hops = 0;
        self.received_at_start = self.received;
        Some(self.request())
    }

    /// The headers for the current position (the same for every redirect
    /// of an attempt).
    pub fn request(&self) -> Request {
        if self.received == 0 {
            return Request {
                range: None,
                if_range: None,
            };
        }
        Request {
            range: Some(format!("bytes={}-", self.received)),
            if_range: self.validator.clone(),
        }
    }

    /// Decides what a response head means (RFC 9110 §15, §14.4).
    pub fn handle_head(&mut self, now: Instant, head: &Head<'_>) -> Result<HeadAction, PlanError> {
        let status = head.status;
        match status {
            301 | 302 | 303 | 307 | 308 => {
                self.hops += 1;
                if self.hops > self.cfg.max_redirects {
                    return Err(PlanError::Redirect(format!(
                        "more than {} redirects",
                        self.cfg.max_redirects
                    )));
                }
                let location = head.location.ok_or_else(|| {
                    PlanError::Redirect(format!("HTTP {status} without a Location"))
                })?;
                Ok(HeadAction::then(Then::Redirect(location.trim().to_owned())))
            }
            200 => {
                let restart = self.received > 0;
                if restart {
                    self.restart(now);
                }
                self.validator = head.validator().map(str::to_owned);
                let learnt_size = match head.content_length() {
                    Some(cl) => self.learn_size(cl, "Content-Length")?,
                    None => None,
                };
                Ok(HeadAction {
                    restart,
                    learnt_size,
                    then: Then::ReadBody,
                })
            }
            206 => self.partial(now, head),
            416 if self.size == Some(self.received) => {
                Ok(HeadAction::then(Then::End(End::Complete)))
            }
            416 => {
                self.validator = None;
                self.restart(now);
                Ok(HeadAction {
                    restart: true,
                    learnt_size: None,
                    then: interrupted(Interruption::RangeNotSatisfiable),
                })
            }
            401 | 403 => Ok(HeadAction::then(interrupted(Interruption::TokenRefused(
                status,
            )))),
            408 | 429 | 500..=599 => {
                Ok(HeadAction::then(interrupted(Interruption::Status(status))))
            }
            _ => Err(PlanError::HttpStatus { status }),
        }
    }

    /// A `206`: it must say where its bytes go, start where the request
    /// asked, and agree with the size and with its own `Content-Length`.
    fn partial(&mut self, now: Instant, head: &Head<'_>) -> Result<HeadAction, PlanError> {
        let Some(range) = head.content_range() else {
            return Ok(HeadAction::then(interrupted(Interruption::NoContentRange)));
        };
        let learnt_size = match range.complete {
            Some(complete) => self.learn_size(complete, "Content-Range total")?,
            None => None,
        };
        if range.first != self.received {
            // Not where we asked: start over with a plain GET rather than
            // trust this server's ranges or validator.
            self.validator = None;
            self.restart(now);
            return Ok(HeadAction {
                restart: true,
                learnt_size,
                then: interrupted(Interruption::RangeStart(range.first)),
            });
        }
        if let Some(size) = self.size {
            if range.last >= size {
                return Err(PlanError::LengthMismatch {
                    expected: size,
                    detail: format!("Content-Range ends at byte {}", range.last),
                });
            }
        }
        if let Some(cl) = head.content_length() {
            if cl != range.len() {
                return Err(PlanError::LengthMismatch {
                    expected: self.size.unwrap_or(range.last + 1),
                    detail: format!(
                        "Content-Length {cl} disagrees with Content-Range {}-{}",
                        range.first, range.last
                    ),
                });
            }
        }
        if let Some(v) = head.validator() {
            self.validator = Some(v.to_owned());
        }
        Ok(HeadAction {
            restart: false,
            learnt_size,
            then: Then::ReadBody,
        })
    }

    /// Records the size the server states; refuses one that disagrees with
    /// the known size or is above the limit. `Some` when it was not known.
    fn learn_size(&mut self, stated: u64, what: &str) -> Result<Option<u64>, PlanError> {
        match self.size {
            Some(size) if size != stated => Err(PlanError::LengthMismatch {
                expected: size,
                detail: format!("{what} says {stated} bytes"),
            }),
            Some(_) => Ok(None),
            None if stated > self.cfg.max_bytes => Err(PlanError::TooLarge {
                size: stated,
                max: self.cfg.max_bytes,
            }),
            None => {
                self.size = Some(stated);
                Ok(Some(stated))
            }
        }
    }

    /// The file starts over from byte 0; a checkpoint in flight belongs to
    /// the old content, and its report will be ignored.
    fn restart(&mut self, now: Instant) {
        self.checkpoint_at = now;
        self.received = 0;
        self.durable = 0;
        self.checkpointed = 0;
        self.in_flight = false;
        self.epoch = self.epoch.wrapping_add(1);
    }

    /// `len` more body bytes arrived at `now`; refuses them when they go
    /// beyond the size (or the limit, for an unknown size). Call before
    /// writing them. The first bytes pending start the checkpoint interval.
    pub fn handle_data(&mut self, now: Instant, len: u64) -> Result<(), PlanError> {
        let after = self.received.saturating_add(len);
        match self.size {
            Some(size) if after > size => Err(PlanError::LengthMismatch {
                expected: size,
                detail: format!("the server sent more than {size} bytes"),
            }),
            None if after > self.cfg.max_bytes => Err(PlanError::TooLarge {
                size: after,
                max: self.cfg.max_bytes,
            }),
            _ => {
                if self.received == self.checkpointed && !self.in_flight {
                    self.checkpoint_at = now;
                }
                self.received = after;
                Ok(())
            }
        }
    }

    /// The body ended (the server closed it normally).
    pub fn handle_body_end(&mut self) -> End {
        match self.size {
            Some(size) if self.received == size => End::Complete,
            Some(size) => End::Interrupted(Interruption::ShortBody {
                at: self.received,
                size,
            }),
            None => {
                // No length was given: the end of the body is the end.
                self.size = Some(self.received);
                End::Complete
            }
        }
    }

    /// A checkpoint, when one is due: [`Config::checkpoint_bytes`] since the
    /// last one, or bytes pending for [`Config::checkpoint_interval`]. None
    /// while one is in flight.
    #[must_use]
    pub fn poll_checkpoint(&mut self, now: Instant) -> Option<Checkpoint> {
        let pending = self.received - self.checkpointed;
        let due = pending >= self.cfg.checkpoint_bytes
            || (pending > 0
                && now.saturating_duration_since(self.checkpoint_at)
                    >= self.cfg.checkpoint_interval);
        self.checkpoint_if(due, now)
    }

    /// A checkpoint of whatever is pending, due or not (before a backoff).
    /// None while one is in flight or when nothing is pending.
    #[must_use]
    pub fn poll_final_checkpoint(&mut self, now: Instant) -> Option<Checkpoint> {
        let pending = self.received > self.checkpointed;
        self.checkpoint_if(pending, now)
    }

    fn checkpoint_if(&mut self, due: bool, now: Instant) -> Option<Checkpoint> {
        if !due || self.in_flight {
            return None;
        }
        self.checkpointed = self.received;
        self.checkpoint_at = now;
        self.in_flight = true;
        Some(Checkpoint {
            epoch: self.epoch,
            len: self.received,
            size: self.size,
            validator: self.validator.clone(),
        })
    }

    /// When to call [`Plan::poll_checkpoint`] if no byte arrives before:
    /// bytes are pending and no checkpoint is in flight.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        (!self.in_flight && self.received > self.checkpointed)
            .then(|| self.checkpoint_at + self.cfg.checkpoint_interval)
    }

    /// The checkpoint of `epoch` covering `len` bytes is durable. A report
    /// for content the file no longer holds (an older epoch) is ignored.
    pub fn handle_durable(&mut self, epoch: u32, len: u64) {
        if epoch == self.epoch && self.in_flight {
            self.in_flight = false;
            self.durable = self.durable.max(len);
        }
    }

    /// The attempt ended: complete, retry, or fail for good (the token was
    /// refused [`Config::auth_attempts`] times in a row).
    pub fn handle_end(&mut self, end: End) -> Result<Next, PlanError> {
        let why = match end {
            End::Complete => return Ok(Next::Complete),
            End::Interrupted(why) => why,
        };
        match why {
            Interruption::TokenRefused(status) => {
                self.auth_refusals += 1;
                if self.auth_refusals >= self.cfg.auth_attempts {
                    return Err(PlanError::TokenRejected {
                        status,
                        attempts: self.auth_refusals,
                    });
                }
            }
            _ => self.auth_refusals = 0,
        }
        let progressed = self.received > self.received_at_start;
        self.last_failure = Some(why);
        Ok(Next::Retry { progressed })
    }
}

fn interrupted(why: Interruption) -> Then {
    Then::End(End::Interrupted(why))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> Config {
        Config {
            checkpoint_bytes: 100,
            checkpoint_interval: Duration::from_secs(2),
            auth_attempts: 3,
            max_redirects: MAX_REDIRECTS,
            max_bytes: 10_000,
        }
    }

    fn at(ms: u64) -> Instant {
        Instant::from_millis(ms)
    }

    #[test]
    fn resume_keeps_only_the_journaled_length_of_the_same_package() {
        let row = |size, durable_len| Journaled {
            size,
            durable_len,
            validator: Some("\"v\""),
        };
        let s = Start::resume(Some(1000), Some(row(Some(1000), 400)), 700);
        assert_eq!(
            (s.offset, s.size, s.validator.as_deref()),
            (400, Some(1000), Some("\"v\""))
        );
        // The file is shorter than the journal says (cannot happen after an
        // fsync, but a copied state dir could): keep what is there.
        assert_eq!(
            Start::resume(Some(1000), Some(row(Some(1000), 400)), 300).offset,
            300
        );
        // Another size: another package, start from 0.
        let s = Start::resume(Some(999), Some(row(Some(1000), 400)), 700);
        assert_eq!((s.offset, s.validator), (0, None));
        // The size comes from the journal when the request has none.
        let s = Start::resume(None, Some(row(Some(1000), 400)), 700);
        assert_eq!((s.offset, s.size), (400, Some(1000)));
        // Beyond the size: start again.
        assert_eq!(
            Start::resume(None, Some(row(Some(100), 400)), 700).offset,
            0
        );
        assert_eq!(Start::resume(Some(5), None, 700).offset, 0);
    }

    #[test]
    fn checkpoints_by_bytes_by_time_one_at_a_time() {
        let start = Start::resume(Some(1000), None, 0);
        let mut p = Plan::new(cfg(), start, at(0));
        assert_eq!(p.poll_timeout(), None, "nothing pending");
        p.handle_data(at(0), 60).unwrap();
        assert_eq!(p.poll_checkpoint(at(10)), None);
        assert_eq!(p.poll_timeout(), Some(at(2000)));
        let cp = p
            .poll_checkpoint(at(2000))
            .expect("pending for the interval");
        assert_eq!((cp.len, cp.epoch), (60, 0));
        assert_eq!(p.poll_timeout(), None, "one in flight");
        p.handle_data(at(0), 150).unwrap();
        assert_eq!(p.poll_checkpoint(at(2001)), None, "one in flight");
        assert_eq!(p.durable(), 0);
        p.handle_durable(0, 60);
        assert_eq!(p.durable(), 60);
        let cp = p.poll_checkpoint(at(2002)).expect("150 bytes >= 100");
        assert_eq!(cp.len, 210);
        p.handle_durable(0, 210);
        assert_eq!(p.poll_final_checkpoint(at(2003)), None, "nothing pending");
        p.handle_data(at(0), 1).unwrap();
        assert_eq!(p.poll_final_checkpoint(at(2003)).map(|c| c.len), Some(211));
    }

    #[test]
    fn a_report_from_before_a_restart_is_ignored() {
        let start = Start::resume(
            Some(1000),
            Some(Journaled {
                size: Some(1000),
                durable_len: 300,
                validator: None,
            }),
            300,
        );
        let mut p = Plan::new(cfg(), start, at(0));
        p.start_attempt().unwrap();
        let a = p
            .handle_head(
                at(0),
                &Head {
                    status: 206,
                    content_range: Some("bytes 300-999/1000"),
                    ..Head::default()
                },
            )
            .unwrap();
        assert_eq!(a.then, Then::ReadBody);
        p.handle_data(at(0), 200).unwrap();
        let old = p.poll_checkpoint(at(1)).unwrap();
        assert_eq!(old.len, 500);
        // The connection drops; the next answer ignores the range.
        assert!(p
            .handle_end(End::Interrupted(Interruption::Stalled(
                Duration::from_secs(1)
            )))
            .is_ok());
        p.start_attempt().unwrap();
        let a = p
            .handle_head(
                at(0),
                &Head {
                    status: 200,
                    content_length: Some("1000"),
                    ..Head::default()
                },
            )
            .unwrap();
        assert!(a.restart);
        assert_eq!((p.received(), p.durable()), (0, 0));
        p.handle_durable(old.epoch, old.len);
        assert_eq!(
            p.durable(),
            0,
            "the old content's checkpoint says nothing of the new"
        );
        p.handle_data(at(0), 150).unwrap();
        let cp = p
            .poll_checkpoint(at(2))
            .expect("the stale report did not block it");
        assert_eq!((cp.epoch, cp.len), (old.epoch + 1, 150));
    }

    #[test]
    fn bytes_beyond_the_size_or_the_limit_are_refused() {
        let mut p = Plan::new(cfg(), Start::resume(Some(10), None, 0), at(0));
        p.handle_data(at(0), 10).unwrap();
        assert!(matches!(
            p.handle_data(at(0), 1),
            Err(PlanError::LengthMismatch { expected: 10, .. })
        ));
        let mut p = Plan::new(cfg(), Start::resume(None, None, 0), at(0));
        p.handle_data(at(0), 10_000).unwrap();
        assert_eq!(
            p.handle_data(at(0), 1),
            Err(PlanError::TooLarge {
                size: 10_001,
                max: 10_000
            })
        );
    }

    #[test]
    fn an_unknown_size_is_learnt_at_the_end_of_the_body() {
        let mut p = Plan::new(cfg(), Start::resume(None, None, 0), at(0));
        p.start_attempt().unwrap();
        let a = p
            .handle_head(
                at(0),
                &Head {
                    status: 200,
                    ..Head::default()
                },
            )
            .unwrap();
        assert_eq!(a.learnt_size, None);
        p.handle_data(at(0), 42).unwrap();
        assert_eq!(p.handle_body_end(), End::Complete);
        assert_eq!(p.size(), Some(42));
    }

    #[test]
    fn refused_tokens_count_in_a_row() {
        let mut p = Plan::new(cfg(), Start::resume(Some(10), None, 0), at(0));
        let refused = End::Interrupted(Interruption::TokenRefused(401));
        assert!(p.handle_end(refused.clone()).is_ok());
        assert!(p.handle_end(refused.clone()).is_ok());
        // Another failure in between starts the count again.
        assert!(p
            .handle_end(End::Interrupted(Interruption::Status(503)))
            .is_ok());
        assert!(p.handle_end(refused.clone()).is_ok());
        assert!(p.handle_end(refused.clone()).is_ok());
        assert_eq!(
            p.handle_end(End::Interrupted(Interruption::TokenRefused(403))),
            Err(PlanError::TokenRejected {
                status: 403,
                attempts: 3
            })
        );
    }

    #[test]
    fn an_attempt_that_failed_after_the_last_byte_needs_no_other() {
        let mut p = Plan::new(cfg(), Start::resume(Some(10), None, 0), at(0));
        assert!(p.start_attempt().is_some());
        p.handle_head(
            at(0),
            &Head {
                status: 200,
                content_length: Some("10"),
                ..Head::default()
            },
        )
        .unwrap();
        p.handle_data(at(0), 10).unwrap();
        let lost = Interruption::ConnectionLost {
            at: 10,
            detail: "reset".into(),
        };
        assert_eq!(
            p.handle_end(End::Interrupted(lost)),
            Ok(Next::Retry { progressed: true })
        );
        assert_eq!(p.start_attempt(), None);
    }

    #[test]
    fn redirects_are_counted_per_attempt() {
        let mut p = Plan::new(cfg(), Start::resume(Some(10), None, 0), at(0));
        let moved = Head {
            status: 302,
            location: Some(" /b "),
            ..Head::default()
        };
        for _ in 0..2 {
            p.start_attempt().unwrap();
            for _ in 0..MAX_REDIRECTS {
                assert_eq!(
                    p.handle_head(at(0), &moved).unwrap().then,
                    Then::Redirect("/b".into())
                );
            }
            let _ = p.handle_end(End::Interrupted(Interruption::Status(500)));
        }
        p.start_attempt().unwrap();
        for _ in 0..MAX_REDIRECTS {
            p.handle_head(at(0), &moved).unwrap();
        }
        assert_eq!(
            p.handle_head(at(0), &moved),
            Err(PlanError::Redirect("more than 5 redirects".into()))
        );
    }
}
