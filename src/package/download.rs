//! The resumable download of one package into `packages/<key>.part`, renamed
//! to `packages/<key>` once its size and SHA-256 are verified.
//!
//! # Durability
//! Bytes are written to the `.part` file as they arrive (through a small
//! buffer, so memory does not grow with the package). At least every
//! [`DownloadOptions::checkpoint_bytes`] or [`DownloadOptions::checkpoint_interval`]
//! a checkpoint fsyncs the file and *then* records its length in the journal,
//! on a blocking thread while the download goes on. The journaled length is
//! therefore always on disk: after a crash, the file is truncated to it and
//! the download resumes from there. Within one process a resume starts at
//! the last byte written (the page cache still holds it).
//!
//! # Resume (RFC 9110 §14)
//! A resume sends `Range: bytes=N-`, plus `If-Range` with the strong ETag or
//! the Last-Modified date the server gave for the partial content. A `206`
//! must carry `Content-Range: bytes N-.../size`; a `200` means the server
//! ignored the range (or the content changed): the file starts again from 0
//! with that response's body. A `416` with every byte already here means the
//! download is complete; otherwise it starts again from 0. IoTDA's v1 endpoint
//! may not honour `Range` at all (docs/protocols/iotda.md §4.7), which costs a re-download
//! after each cut but still completes.

use std::fs::File;
use std::future::Future as _;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::header::{
    HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_LENGTH, CONTENT_RANGE, ETAG, HOST, IF_RANGE,
    LAST_MODIFIED, RANGE, USER_AGENT,
};
use http_body_util::BodyExt;
use nix::fcntl::{Flock, FlockArg};
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::http::{FetchError, HttpClient, Target};
use super::{db, DownloadError, DownloadOptions, DownloadState, PackageRequest};
use crate::backoff::Backoff;
use crate::config::DownloadConfig;
use crate::journal::SharedJournal;

/// Write buffer in front of the `.part` file: few syscalls, bounded memory.
const WRITE_BUFFER: usize = 256 * 1024;
/// Progress is published at most once per this many bytes.
const PROGRESS_STEP: u64 = 1024 * 1024;

/// A verified package on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Verified {
    pub(crate) path: PathBuf,
    pub(crate) size: u64,
    pub(crate) sha256: String,
}

/// Everything one download needs.
#[derive(Debug)]
pub(crate) struct Job {
    pub(crate) key: String,
    pub(crate) dir: PathBuf,
    pub(crate) req: PackageRequest,
    pub(crate) journal: SharedJournal,
    pub(crate) cfg: DownloadConfig,
    pub(crate) opts: DownloadOptions,
    pub(crate) client: HttpClient,
    pub(crate) progress: watch::Sender<DownloadState>,
}

/// Free space for unprivileged writers on the file system holding `dir`.
pub(crate) fn free_space(dir: &Path) -> Result<u64, DownloadError> {
    let s = nix::sys::statvfs::statvfs(dir)
        .map_err(|e| DownloadError::Store(format!("statvfs {}: {e}", dir.display())))?;
    Ok((s.blocks_available() as u64).saturating_mul(s.fragment_size() as u64))
}

/// Refuses a package that is too large for the configuration or the disk,
/// before any byte of it is fetched.
fn check_limits(job: &Job, size: u64, have: u64) -> Result<(), DownloadError> {
    if size > job.cfg.max_package_bytes {
        return Err(DownloadError::TooLargeForConfig {
            size,
            max: job.cfg.max_package_bytes,
        });
    }
    let needed = size.saturating_sub(have);
    let available = free_space(&job.dir)?;
    let margin = job.opts.free_space_margin;
    if needed.saturating_add(margin) > available {
        return Err(DownloadError::NoSpace {
            needed,
            available,
            margin,
        });
    }
    Ok(())
}

fn io_err(what: &str, path: &Path, e: std::io::Error) -> DownloadError {
    DownloadError::Store(format!("{what} {}: {e}", path.display()))
}

/// Runs the download to the end: verified, or failed for good. On a failure
/// after the `.part` file was opened, the file and its journal row are
/// removed, so nothing half-written remains.
pub(crate) async fn run(job: &Job) -> Result<Verified, DownloadError> {
    let target = super::http::parse_url(&job.req.url, job.cfg.allow_http)?;
    let expected_sha = match &job.req.sha256 {
        Some(s) => Some(super::normalize_sha256(s)?),
        None => None,
    };
    if let Some(size) = job.req.size {
        if size > job.cfg.max_package_bytes {
            return Err(DownloadError::TooLargeForConfig {
                size,
                max: job.cfg.max_package_bytes,
            });
        }
    }
    let fin = job.dir.join(&job.key);
    let part_path = job.dir.join(format!("{}.part", job.key));

    // Already here and verified (another job, or before a restart)?
    if let Some(row) = db::get(&job.journal, &job.key)? {
        if let (true, Some(size), Some(sha)) = (row.verified, row.size, row.sha256.clone()) {
            match std::fs::metadata(&fin) {
                Ok(m) if m.len() == size => {
                    return Ok(Verified {
                        path: fin,
                        size,
                        sha256: sha,
                    });
                }
                _ => {
                    warn!(key = %job.key, "journal says verified but the file is missing or short; downloading again");
                    db::delete(&job.journal, &job.key)?;
                }
            }
        }
    }

    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&part_path)
        .map_err(|e| io_err("cannot open", &part_path, e))?;
    // Another process (`otabridge download` beside the daemon) may be
    // writing the same package: two writers would interleave.
    let file = Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|(_, errno)| {
        DownloadError::Store(format!(
            "{} is locked by another otabridge process ({errno})",
            part_path.display()
        ))
    })?;

    let mut ctx = Ctx {
        job,
        target,
        expected_sha,
        fin,
        part_path,
        stats: Stats::default(),
    };
    let r = ctx.download(file).await;
    if let Err(e) = &r {
        warn!(key = %job.key, "download failed: {e}");
        let _ = std::fs::remove_file(&ctx.part_path);
        let _ = db::delete(&job.journal, &job.key);
    }
    r
}

#[derive(Debug, Default)]
struct Stats {
    attempts: u32,
    last_failure: String,
}

struct Ctx<'a> {
    job: &'a Job,
    target: Target,
    expected_sha: Option<String>,
    fin: PathBuf,
    part_path: PathBuf,
    stats: Stats,
}

/// The `.part` file being written, the SHA-256 of its content so far, and
/// the checkpoint in flight.
struct Part {
    file: Flock<File>,
    buf: Vec<u8>,
    /// Bytes written (file plus buffer): where the next byte goes.
    written: u64,
    hasher: Sha256,
    /// Announced or learnt size.
    size: Option<u64>,
    /// ETag / Last-Modified of the content in the file.
    validator: Option<String>,
    /// Journaled length (on disk for sure).
    durable: u64,
    /// Length covered by the last checkpoint started.
    checkpointed: u64,
    checkpoint_at: Instant,
    inflight: Option<JoinHandle<Result<u64, DownloadError>>>,
    published: u64,
}

impl Part {
    fn append(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.hasher.update(data);
        if self.buf.len() + data.len() > WRITE_BUFFER {
            self.flush()?;
        }
        if data.len() >= WRITE_BUFFER {
            (&*self.file).write_all(data)?;
        } else {
            self.buf.extend_from_slice(data);
        }
        self.written += data.len() as u64;
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if !self.buf.is_empty() {
            (&*self.file).write_all(&self.buf)?;
            self.buf.clear();
        }
        Ok(())
    }
}

/// Redirects followed in one attempt before giving up (curl's default is 50,
/// browsers about 20; a package URL needs one or two).
const MAX_REDIRECTS: u32 = 5;

/// How one attempt ended.
enum End {
    /// Every byte is here.
    Complete,
    /// Try again after a backoff (connection lost, stall, 5xx, bad 206).
    Retry(String),
    /// 401 or 403.
    Auth(u16),
}

impl Ctx<'_> {
    async fn download(&mut self, file: Flock<File>) -> Result<Verified, DownloadError> {
        let job = self.job;
        let row = db::get(&job.journal, &job.key)?;
        let file_len = file
            .metadata()
            .map_err(|e| io_err("cannot stat", &self.part_path, e))?
            .len();
        let (mut offset, mut validator, mut size) = (0, None, job.req.size);
        if let Some(row) = row {
            let same_size = match (row.size, job.req.size) {
                (Some(a), Some(b)) => a == b,
                _ => true,
            };
            if same_size && !row.verified {
                // The journaled length was fsynced before it was recorded, so
                // the file holds at least that much; anything beyond it may be
                // garbage from before the crash.
                offset = row.durable_len.min(file_len);
                validator = row.validator;
                size = size.or(row.size);
            }
        }
        if let Some(size) = size {
            if offset > size {
                offset = 0;
            }
            check_limits(job, size, offset)?;
        }
        file.set_len(offset)
            .map_err(|e| io_err("cannot truncate", &self.part_path, e))?;
        let hasher = hash_prefix(&file, offset, &self.part_path).await?;
        (&*file)
            .seek(SeekFrom::Start(offset))
            .map_err(|e| io_err("cannot seek", &self.part_path, e))?;
        db::put_progress(&job.journal, &job.key, size, offset, validator.as_deref())?;
        if offset > 0 {
            info!(key = %job.key, offset, "resuming from the journaled length");
        }
        let mut part = Part {
            file,
            buf: Vec::with_capacity(WRITE_BUFFER),
            written: offset,
            hasher,
            size,
            validator,
            durable: offset,
            checkpointed: offset,
            checkpoint_at: Instant::now(),
            inflight: None,
            published: offset,
        };
        self.publish(&part);

        let left = job
            .req
            .deadline
            .duration_since(crate::clock::now_system())
            .unwrap_or(Duration::ZERO);
        let r = tokio::time::timeout(left, self.attempts(&mut part)).await;
        let r = match r {
            Ok(r) => r,
            Err(_) => Err(DownloadError::Timeout {
                attempts: self.stats.attempts,
                last: if self.stats.last_failure.is_empty() {
                    "still downloading at the deadline".into()
                } else {
                    self.stats.last_failure.clone()
                },
            }),
        };
        // Let a checkpoint in flight finish, so it cannot write a journal row
        // after the failure cleanup removed it.
        if let Some(h) = part.inflight.take() {
            let _ = h.await;
        }
        r?;
        self.verify(part).await
    }

    fn publish(&self, part: &Part) {
        self.job.progress.send_replace(DownloadState::Downloading {
            received: part.written,
            durable: part.durable,
            size: part.size,
        });
    }

    /// Starts a checkpoint when one is due and none is in flight.
    fn maybe_checkpoint(&mut self, part: &mut Part, force: bool) -> Result<(), DownloadError> {
        if let Some(h) = &part.inflight {
            if !h.is_finished() {
                return Ok(());
            }
        }
        self.collect_checkpoint(part)?;
        let pending = part.written - part.checkpointed;
        let due = pending >= self.job.opts.checkpoint_bytes
            || (pending > 0
                && (force || part.checkpoint_at.elapsed() >= self.job.opts.checkpoint_interval));
        if !due {
            return Ok(());
        }
        part.flush()
            .map_err(|e| io_err("cannot write", &self.part_path, e))?;
        let clone = part
            .file
            .try_clone()
            .map_err(|e| io_err("cannot dup", &self.part_path, e))?;
        let (journal, key, len, size, validator) = (
            self.job.journal.clone(),
            self.job.key.clone(),
            part.written,
            part.size,
            part.validator.clone(),
        );
        let path = self.part_path.clone();
        part.checkpointed = len;
        part.checkpoint_at = Instant::now();
        part.inflight = Some(tokio::task::spawn_blocking(move || {
            clone
                .sync_data()
                .map_err(|e| io_err("cannot fsync", &path, e))?;
            db::update_progress(&journal, &key, size, len, validator.as_deref())?;
            Ok(len)
        }));
        Ok(())
    }

    /// Takes the result of a finished checkpoint.
    fn collect_checkpoint(&mut self, part: &mut Part) -> Result<(), DownloadError> {
        if part.inflight.as_ref().is_some_and(|h| h.is_finished()) {
            let h = part.inflight.take().expect("checked above");
            let len = futures_now(h)?;
            part.durable = part.durable.max(len);
            self.publish(part);
        }
        Ok(())
    }

    /// Waits for the checkpoint in flight, then checkpoints what is left.
    async fn settle(&mut self, part: &mut Part) -> Result<(), DownloadError> {
        for _ in 0..2 {
            if let Some(h) = part.inflight.take() {
                let len = h.await.map_err(|e| DownloadError::Store(e.to_string()))??;
                part.durable = part.durable.max(len);
            }
            self.maybe_checkpoint(part, true)?;
        }
        if let Some(h) = part.inflight.take() {
            let len = h.await.map_err(|e| DownloadError::Store(e.to_string()))??;
            part.durable = part.durable.max(len);
        }
        self.publish(part);
        Ok(())
    }

    /// Empties the file: the server sent the whole body again.
    async fn restart(&mut self, part: &mut Part, why: &str) -> Result<(), DownloadError> {
        info!(key = %self.job.key, from = part.written, "starting again from byte 0: {why}");
        if let Some(h) = part.inflight.take() {
            let _ = h.await;
        }
        part.buf.clear();
        part.file
            .set_len(0)
            .map_err(|e| io_err("cannot truncate", &self.part_path, e))?;
        (&*part.file)
            .seek(SeekFrom::Start(0))
            .map_err(|e| io_err("cannot seek", &self.part_path, e))?;
        part.hasher = Sha256::new();
        part.written = 0;
        part.durable = 0;
        part.checkpointed = 0;
        part.published = 0;
        db::put_progress(
            &self.job.journal,
            &self.job.key,
            part.size,
            0,
            part.validator.as_deref(),
        )?;
        self.publish(part);
        Ok(())
    }

    async fn attempts(&mut self, part: &mut Part) -> Result<(), DownloadError> {
        let opts = &self.job.opts;
        let mut backoff = Backoff::new(opts.backoff_min, opts.backoff_max, opts.seed);
        let mut auth_refusals = 0u32;
        loop {
            if part.size == Some(part.written) && part.written > 0 && self.stats.attempts > 0 {
                return Ok(());
            }
            self.stats.attempts += 1;
            let before = part.written;
            let end = self.attempt(part).await?;
            // Whatever happened, what arrived is made durable before waiting.
            self.settle(part).await?;
            let why = match end {
                End::Complete => return Ok(()),
                End::Auth(status) => {
                    auth_refusals += 1;
                    if auth_refusals >= opts.auth_attempts {
                        return Err(DownloadError::TokenRejected {
                            status,
                            attempts: auth_refusals,
                        });
                    }
                    format!("HTTP {status}: the token was refused")
                }
                End::Retry(why) => {
                    auth_refusals = 0;
                    why
                }
            };
            if part.written > before {
                backoff.reset();
            }
            let delay = backoff.next_delay();
            warn!(
                key = %self.job.key,
                attempt = self.stats.attempts,
                at = part.written,
                "download interrupted: {why}; retrying in {delay:?}"
            );
            self.stats.last_failure = why;
            if crate::clock::now_system() + delay >= self.job.req.deadline {
                return Err(DownloadError::Timeout {
                    attempts: self.stats.attempts,
                    last: self.stats.last_failure.clone(),
                });
            }
            tokio::time::sleep(delay).await;
        }
    }

    /// The request headers for `target`; the token only goes to the
    /// package URL's own origin.
    fn headers(&self, part: &Part, target: &Target, with_token: bool) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Ok(v) = HeaderValue::from_str(&target.authority) {
            h.insert(HOST, v);
        }
        h.insert(
            USER_AGENT,
            HeaderValue::from_static(concat!("otabridge/", env!("CARGO_PKG_VERSION"))),
        );
        if let Some(t) = self.job.req.token.as_ref().filter(|_| with_token) {
            // docs/protocols/iotda.md §4.7: v1 packages need `Authorization: Bearer <access_token>`.
            if let Ok(mut v) = HeaderValue::from_str(&format!("Bearer {}", t.expose())) {
                v.set_sensitive(true);
                h.insert(AUTHORIZATION, v);
            }
        }
        if part.written > 0 {
            if let Ok(v) = HeaderValue::from_str(&format!("bytes={}-", part.written)) {
                h.insert(RANGE, v);
            }
            if let Some(val) = part
                .validator
                .as_deref()
                .and_then(|v| HeaderValue::from_str(v).ok())
            {
                h.insert(IF_RANGE, val);
            }
        }
        h
    }

    /// One GET: from the response head to the end of the body or the first
    /// failure.
    async fn attempt(&mut self, part: &mut Part) -> Result<End, DownloadError> {
        let job = self.job;
        if part.written > 0 {
            job.opts.metrics.resumed(crate::metrics::Resume::Download);
        }
        // Every attempt starts at the package URL: a redirect target (a
        // CDN's pre-signed URL) may have expired by the next attempt.
        let mut target = self.target.clone();
        let mut with_token = true;
        let mut hops = 0;
        let mut exchange = loop {
            let headers = self.headers(part, &target, with_token);
            debug!(?target, from = part.written, "GET");
            let x = match job.client.get(&target, headers).await {
                Ok(x) => x,
                Err(FetchError::Transient(why)) => return Ok(End::Retry(why)),
                Err(FetchError::Certificate(why)) => return Err(DownloadError::Certificate(why)),
            };
            let status = x.response.status().as_u16();
            if !matches!(status, 301 | 302 | 303 | 307 | 308) {
                break x;
            }
            hops += 1;
            if hops > MAX_REDIRECTS {
                return Err(DownloadError::Redirect(format!(
                    "more than {MAX_REDIRECTS} redirects"
                )));
            }
            let location = x
                .response
                .headers()
                .get(http::header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| {
                    DownloadError::Redirect(format!("HTTP {status} without a Location"))
                })?;
            let next = target
                .resolve(location, job.cfg.allow_http)
                .map_err(|e| DownloadError::Redirect(format!("HTTP {status} to {e}")))?;
            // Like curl and browsers: the token is not sent to another origin.
            with_token &= next.same_origin(&self.target);
            info!(key = %job.key, status, from = ?target, to = ?next, "package URL redirected");
            target = next;
        };
        let response = &mut exchange.response;
        let status = response.status().as_u16();
        let h = response.headers();
        let content_length = header_u64(h, CONTENT_LENGTH);
        match status {
            200 => {
                if part.written > 0 {
                    self.restart(part, "the server answered 200 to a range request")
                        .await?;
                }
                let h = response.headers();
                part.validator = validator(h);
                if let Some(cl) = content_length {
                    self.learn_size(part, cl, "Content-Length")?;
                }
            }
            206 => {
                let Some((start, end, total)) = h
                    .get(CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(parse_content_range)
                else {
                    return Ok(End::Retry("206 without a usable Content-Range".into()));
                };
                if let Some(total) = total {
                    self.learn_size(part, total, "Content-Range total")?;
                }
                if start != part.written {
                    // Not where we asked: the bytes cannot be placed. Start
                    // over with a plain GET rather than trust this server.
                    part.validator = None;
                    self.restart(
                        part,
                        &format!("206 starts at {start}, asked {}", part.written),
                    )
                    .await?;
                    return Ok(End::Retry(format!("206 started at byte {start}")));
                }
                if let Some(size) = part.size {
                    if end >= size {
                        return Err(DownloadError::LengthMismatch {
                            expected: size,
                            detail: format!("Content-Range ends at byte {end}"),
                        });
                    }
                }
                if let Some(cl) = content_length {
                    if cl != end - start + 1 {
                        return Err(DownloadError::LengthMismatch {
                            expected: part.size.unwrap_or(end + 1),
                            detail: format!(
                                "Content-Length {cl} disagrees with Content-Range {start}-{end}"
                            ),
                        });
                    }
                }
                if let Some(v) = validator(h) {
                    part.validator = Some(v);
                }
            }
            416 => {
                if part.size == Some(part.written) {
                    return Ok(End::Complete);
                }
                part.validator = None;
                self.restart(part, "416 Range Not Satisfiable").await?;
                return Ok(End::Retry("416 Range Not Satisfiable".into()));
            }
            401 | 403 => return Ok(End::Auth(status)),
            408 | 429 | 500..=599 => return Ok(End::Retry(format!("HTTP {status}"))),
            _ => return Err(DownloadError::HttpStatus { status }),
        }

        let body = response.body_mut();
        loop {
            let wake = part.checkpoint_at + job.opts.checkpoint_interval;
            let dirty = part.written > part.checkpointed;
            let frame = tokio::select! {
                f = tokio::time::timeout(job.opts.read_timeout, body.frame()) => f,
                _ = tokio::time::sleep_until(wake), if dirty => {
                    self.maybe_checkpoint(part, false)?;
                    continue;
                }
            };
            let frame = match frame {
                Err(_) => {
                    return Ok(End::Retry(format!(
                        "no data for {:?} (stalled)",
                        job.opts.read_timeout
                    )))
                }
                Ok(None) => break,
                Ok(Some(Err(e))) => {
                    return Ok(End::Retry(format!(
                        "connection lost after byte {}: {e}",
                        part.written
                    )))
                }
                Ok(Some(Ok(f))) => f,
            };
            let Ok(data) = frame.into_data() else {
                continue;
            };
            let after = part.written + data.len() as u64;
            match part.size {
                Some(size) if after > size => {
                    return Err(DownloadError::LengthMismatch {
                        expected: size,
                        detail: format!("the server sent more than {size} bytes"),
                    });
                }
                None if after > job.cfg.max_package_bytes => {
                    return Err(DownloadError::TooLargeForConfig {
                        size: after,
                        max: job.cfg.max_package_bytes,
                    });
                }
                _ => {}
            }
            part.append(&data)
                .map_err(|e| io_err("cannot write", &self.part_path, e))?;
            job.opts.metrics.downloaded(data.len() as u64);
            if part.written - part.published >= PROGRESS_STEP {
                part.published = part.written;
                self.publish(part);
            }
            self.maybe_checkpoint(part, false)?;
        }
        match part.size {
            Some(size) if part.written == size => Ok(End::Complete),
            Some(size) => Ok(End::Retry(format!(
                "the body ended after byte {} of {size}",
                part.written
            ))),
            None => {
                part.size = Some(part.written);
                Ok(End::Complete)
            }
        }
    }

    /// Records the size the server states; refuses one that disagrees with
    /// the event's `file_size`, or that does not fit.
    fn learn_size(&self, part: &mut Part, stated: u64, what: &str) -> Result<(), DownloadError> {
        match part.size {
            Some(size) if size != stated => Err(DownloadError::LengthMismatch {
                expected: size,
                detail: format!("{what} says {stated} bytes"),
            }),
            Some(_) => Ok(()),
            None => {
                check_limits(self.job, stated, part.written)?;
                part.size = Some(stated);
                Ok(())
            }
        }
    }

    /// Checks the SHA-256 and renames the file into place.
    async fn verify(&mut self, mut part: Part) -> Result<Verified, DownloadError> {
        let job = self.job;
        part.flush()
            .map_err(|e| io_err("cannot write", &self.part_path, e))?;
        let size = part.written;
        let actual = hex::encode(part.hasher.finalize_reset());
        if let Some(expected) = &self.expected_sha {
            if *expected != actual {
                return Err(DownloadError::Integrity {
                    expected: expected.clone(),
                    actual,
                });
            }
        }
        let (part_path, fin, dir) = (self.part_path.clone(), self.fin.clone(), job.dir.clone());
        let file = part.file;
        tokio::task::spawn_blocking(move || {
            file.sync_all()
                .map_err(|e| io_err("cannot fsync", &part_path, e))?;
            std::fs::rename(&part_path, &fin)
                .map_err(|e| io_err("cannot rename", &part_path, e))?;
            // The rename is durable only once the directory is.
            File::open(&dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| io_err("cannot fsync", &dir, e))?;
            drop(file);
            Ok::<_, DownloadError>(())
        })
        .await
        .map_err(|e| DownloadError::Store(e.to_string()))??;
        db::put_verified(&job.journal, &job.key, size, &actual)?;
        info!(key = %job.key, size, "package verified");
        Ok(Verified {
            path: self.fin.clone(),
            size,
            sha256: actual,
        })
    }
}

/// The result of a task known to be finished.
fn futures_now(h: JoinHandle<Result<u64, DownloadError>>) -> Result<u64, DownloadError> {
    // `is_finished` was true: polling once with a no-op waker completes it.
    let mut h = std::pin::pin!(h);
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    match h.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(r) => r.map_err(|e| DownloadError::Store(e.to_string()))?,
        std::task::Poll::Pending => Err(DownloadError::Store("checkpoint not finished".into())),
    }
}

/// The SHA-256 state after the first `len` bytes of the file (after a
/// restart, the hash of the part already on disk).
async fn hash_prefix(file: &File, len: u64, path: &Path) -> Result<Sha256, DownloadError> {
    if len == 0 {
        return Ok(Sha256::new());
    }
    let mut f = file
        .try_clone()
        .map_err(|e| io_err("cannot dup", path, e))?;
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || {
        f.seek(SeekFrom::Start(0))
            .map_err(|e| io_err("cannot seek", &path, e))?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 256 * 1024];
        let mut left = len;
        while left > 0 {
            let n = (left as usize).min(buf.len());
            f.read_exact(&mut buf[..n])
                .map_err(|e| io_err("cannot read", &path, e))?;
            hasher.update(&buf[..n]);
            left -= n as u64;
        }
        Ok(hasher)
    })
    .await
    .map_err(|e| DownloadError::Store(e.to_string()))?
}

fn header_u64(h: &HeaderMap, name: http::header::HeaderName) -> Option<u64> {
    h.get(name)?.to_str().ok()?.trim().parse().ok()
}

/// The validator for `If-Range`: a strong ETag, else Last-Modified (RFC 9110
/// §13.1.5: a weak ETag must not be used).
fn validator(h: &HeaderMap) -> Option<String> {
    let etag = h
        .get(ETAG)
        .and_then(|v| v.to_str().ok())
        .filter(|e| !e.starts_with("W/"));
    etag.or_else(|| h.get(LAST_MODIFIED).and_then(|v| v.to_str().ok()))
        .map(str::to_owned)
}

/// `bytes START-END/TOTAL` or `bytes START-END/*` (RFC 9110 §14.4).
pub(crate) fn parse_content_range(v: &str) -> Option<(u64, u64, Option<u64>)> {
    let rest = v.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (a, b) = range.split_once('-')?;
    let (start, end) = (a.trim().parse::<u64>().ok()?, b.trim().parse::<u64>().ok()?);
    if end < start {
        return None;
    }
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse::<u64>().ok()?),
    };
    Some((start, end, total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range_forms() {
        assert_eq!(
            parse_content_range("bytes 10-19/100"),
            Some((10, 19, Some(100)))
        );
        assert_eq!(parse_content_range("bytes 0-0/*"), Some((0, 0, None)));
        assert_eq!(parse_content_range("bytes 5-4/100"), None);
        assert_eq!(parse_content_range("bytes */100"), None);
        assert_eq!(parse_content_range("items 0-1/2"), None);
    }

    #[test]
    fn weak_etags_are_not_validators() {
        let mut h = HeaderMap::new();
        h.insert(ETAG, HeaderValue::from_static("W/\"x\""));
        assert_eq!(validator(&h), None);
        h.insert(
            LAST_MODIFIED,
            HeaderValue::from_static("Tue, 15 Nov 1994 12:45:26 GMT"),
        );
        assert_eq!(
            validator(&h).as_deref(),
            Some("Tue, 15 Nov 1994 12:45:26 GMT")
        );
        h.insert(ETAG, HeaderValue::from_static("\"abc\""));
        assert_eq!(validator(&h).as_deref(), Some("\"abc\""));
    }
}
