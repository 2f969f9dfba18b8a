//! The resumable download of one package into `packages/<key>.part`, renamed
//! to `packages/<key>` once its size and SHA-256 are verified.
//!
//! Every HTTP decision (where to resume, what a status or a `Content-Range`
//! means, when to checkpoint, when to give up) is the download plan's
//! (`otabridge_codecs::download`, with the RFC 9110 references); this file
//! moves bytes and carries the plan's decisions out.
//!
//! # Durability
//! Bytes go to the `.part` file as they arrive, through a bounded queue to a
//! writer thread that hashes and writes them (`part.rs`), so memory does not
//! grow with the package and TLS, SHA-256 and writes overlap. At least every
//! [`DownloadOptions::checkpoint_bytes`] or [`DownloadOptions::checkpoint_interval`]
//! a checkpoint fsyncs the file and *then* records its length in the journal,
//! on a thread of its own while the download goes on. The journaled
//! length is therefore always on disk: after a crash, the file is truncated
//! to it and the download resumes from there. Within one process a resume
//! starts at the last byte written (the page cache still holds it).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::header::{
    HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_LENGTH, CONTENT_RANGE, ETAG, HOST, IF_RANGE,
    LAST_MODIFIED, LOCATION, RANGE, USER_AGENT,
};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use nix::fcntl::{Flock, FlockArg};
use otabridge_codecs::download::{
    Config as PlanConfig, End, Head, Interruption, Journaled, Next, Plan, Request, Start, Then,
    MAX_REDIRECTS,
};
use otabridge_codecs::time as codecs_time;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::http::{FetchError, HttpClient, Target};
use super::part::{io_err, Part};
use super::{db, DownloadError, DownloadOptions, DownloadState, PackageRequest};
use crate::config::DownloadConfig;
use crate::journal::SharedJournal;

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
    let key = job.key.clone();
    if let Some(row) = job.journal.run(move |j| db::get(j, &key)).await? {
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
                    let key = job.key.clone();
                    job.journal.run(move |j| db::delete(j, &key)).await?;
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
        // Replaced once the journal and the file were read.
        plan: Plan::new(
            plan_config(job),
            Start::resume(None, None, 0),
            codecs_time::Instant::ZERO,
        ),
        origin: Instant::now(),
        published: 0,
    };
    let r = ctx.download(file).await;
    if let Err(e) = &r {
        warn!(key = %job.key, "download failed: {e}");
        let _ = std::fs::remove_file(&ctx.part_path);
        let key = job.key.clone();
        let _ = job.journal.run(move |j| db::delete(j, &key)).await;
    }
    r
}

struct Ctx<'a> {
    job: &'a Job,
    target: Target,
    expected_sha: Option<String>,
    fin: PathBuf,
    part_path: PathBuf,
    plan: Plan,
    /// The origin of the plan's clock.
    origin: Instant,
    /// Bytes received when progress was last published.
    published: u64,
}

impl Ctx<'_> {
    fn now(&self) -> codecs_time::Instant {
        codecs_time::Instant::from_millis(self.origin.elapsed().as_millis() as u64)
    }

    async fn download(&mut self, file: Flock<File>) -> Result<Verified, DownloadError> {
        let job = self.job;
        let key = job.key.clone();
        let row = job
            .journal
            .run(move |j| db::get(j, &key))
            .await?
            .filter(|r| !r.verified);
        let file_len = file
            .metadata()
            .map_err(|e| io_err("cannot stat", &self.part_path, e))?
            .len();
        let journaled = row.as_ref().map(|r| Journaled {
            size: r.size,
            durable_len: r.durable_len,
            validator: r.validator.as_deref(),
        });
        let start = Start::resume(job.req.size, journaled, file_len);
        if let Some(size) = start.size {
            check_limits(job, size, start.offset)?;
        }
        let (key, journal) = (job.key.clone(), job.journal.clone());
        let path = self.part_path.clone();
        let mut part = Part::open(file, path, key, journal, &start, job.opts.direct_io).await?;
        if start.offset > 0 {
            info!(key = %job.key, offset = start.offset, "resuming from the journaled length");
        }
        self.plan = Plan::new(plan_config(job), start, self.now());
        self.published = self.plan.received();
        self.publish();

        let left = job
            .req
            .deadline
            .duration_since(crate::clock::now_system())
            .unwrap_or(Duration::ZERO);
        let r = tokio::time::timeout(left, self.attempts(&mut part)).await;
        let r = r.unwrap_or_else(|_| Err(self.timeout("still downloading at the deadline")));
        // Let a checkpoint in flight finish, so it cannot write a journal row
        // after the failure cleanup removed it.
        part.quiesce().await;
        r?;
        self.verify(part).await
    }

    fn timeout(&self, otherwise: &str) -> DownloadError {
        DownloadError::Timeout {
            attempts: self.plan.attempts(),
            last: self
                .plan
                .last_failure()
                .map_or_else(|| otherwise.to_owned(), ToString::to_string),
        }
    }

    fn publish(&self) {
        self.job.progress.send_replace(DownloadState::Downloading {
            received: self.plan.received(),
            durable: self.plan.durable(),
            size: self.plan.size(),
        });
    }

    /// Starts a checkpoint when the plan says one is due.
    async fn maybe_checkpoint(&mut self, part: &mut Part) -> Result<(), DownloadError> {
        match self.plan.poll_checkpoint(self.now()) {
            Some(cp) => part.checkpoint(cp).await,
            None => Ok(()),
        }
    }

    /// After an attempt: waits for the checkpoint in flight and makes the
    /// rest durable, so that what arrived survives a crash during the
    /// backoff.
    async fn settle(&mut self, part: &mut Part) -> Result<(), DownloadError> {
        loop {
            if self.plan.checkpoint_in_flight() {
                let (epoch, len) = part.durable().await?;
                self.plan.handle_durable(epoch, len);
            } else if let Some(cp) = self.plan.poll_final_checkpoint(self.now()) {
                part.checkpoint(cp).await?;
            } else {
                break;
            }
        }
        self.publish();
        Ok(())
    }

    /// Attempts until every byte is here, the plan gives up, or the retry
    /// policy's next delay would end after the deadline.
    async fn attempts(&mut self, part: &mut Part) -> Result<(), DownloadError> {
        let opts = &self.job.opts;
        let mut backoff = opts.retry.backoff();
        while let Some(req) = self.plan.start_attempt() {
            if req.range.is_some() {
                opts.metrics.resumed(crate::metrics::Resume::Download);
            }
            let end = self.attempt(&req, part).await?;
            // Whatever happened, what arrived is made durable before waiting.
            self.settle(part).await?;
            let progressed = match self.plan.handle_end(end)? {
                Next::Complete => return Ok(()),
                Next::Retry { progressed } => progressed,
            };
            if progressed {
                backoff.reset();
            }
            let delay = backoff.next_delay();
            let why = self.plan.last_failure().map(ToString::to_string);
            warn!(
                key = %self.job.key,
                attempt = self.plan.attempts(),
                at = self.plan.received(),
                "download interrupted: {}; retrying in {delay:?}",
                why.unwrap_or_default()
            );
            if crate::clock::now_system() + delay >= self.job.req.deadline {
                return Err(self.timeout("still downloading at the deadline"));
            }
            tokio::time::sleep(delay).await;
        }
        Ok(())
    }

    /// The request headers for `target`; the token only goes to the
    /// package URL's own origin.
    fn headers(&self, req: &Request, target: &Target, with_token: bool) -> HeaderMap {
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
        let value = |v: &Option<String>| v.as_deref().and_then(|v| HeaderValue::from_str(v).ok());
        if let Some(v) = value(&req.range) {
            h.insert(RANGE, v);
        }
        if let Some(v) = value(&req.if_range) {
            h.insert(IF_RANGE, v);
        }
        h
    }

    /// One GET, redirects included: from the request to the end of the body
    /// or the first failure. Every decision is the plan's.
    async fn attempt(&mut self, req: &Request, part: &mut Part) -> Result<End, DownloadError> {
        let job = self.job;
        // Every attempt starts at the package URL: a redirect target (a
        // CDN's pre-signed URL) may have expired by the next attempt.
        let (mut target, mut with_token) = (self.target.clone(), true);
        let mut exchange = loop {
            debug!(?target, from = self.plan.received(), "GET");
            let x = match job
                .client
                .get(&target, self.headers(req, &target, with_token))
                .await
            {
                Ok(x) => x,
                Err(FetchError::Transient(why)) => {
                    return Ok(End::Interrupted(Interruption::Transport(why)))
                }
                Err(FetchError::Certificate(why)) => return Err(DownloadError::Certificate(why)),
            };
            let status = x.response.status().as_u16();
            let action = self.plan.handle_head(self.now(), &head(&x.response))?;
            if action.restart {
                info!(key = %job.key, status, "starting again from byte 0");
                part.restart(self.plan.size(), self.plan.validator())
                    .await?;
                self.published = 0;
                self.publish();
            }
            if let Some(size) = action.learnt_size {
                check_limits(job, size, self.plan.received())?;
            }
            match action.then {
                Then::ReadBody => break x,
                Then::End(end) => return Ok(end),
                Then::Redirect(location) => {
                    let next = target
                        .resolve(&location, job.cfg.allow_http)
                        .map_err(|e| DownloadError::Redirect(format!("HTTP {status} to {e}")))?;
                    // Like curl and browsers: the token is not sent to another origin.
                    with_token &= next.same_origin(&self.target);
                    info!(key = %job.key, status, from = ?target, to = ?next, "package URL redirected");
                    target = next;
                }
            }
        };
        self.body(exchange.response.body_mut(), part).await
    }

    /// Reads the body into the file, checkpointing as the plan says.
    async fn body(&mut self, body: &mut Incoming, part: &mut Part) -> Result<End, DownloadError> {
        let read_timeout = self.job.opts.read_timeout;
        loop {
            let wake = self.plan.poll_timeout().map(|t| self.instant(t));
            let frame = tokio::select! {
                f = tokio::time::timeout(read_timeout, body.frame()) => f,
                r = part.durable() => {
                    let (epoch, len) = r?;
                    self.plan.handle_durable(epoch, len);
                    self.publish();
                    continue;
                }
                _ = sleep_until_opt(wake) => {
                    self.maybe_checkpoint(part).await?;
                    continue;
                }
            };
            let data = match frame {
                Err(_) => return Ok(End::Interrupted(Interruption::Stalled(read_timeout))),
                Ok(None) => return Ok(self.plan.handle_body_end()),
                Ok(Some(Err(e))) => {
                    let at = self.plan.received();
                    let detail = e.to_string();
                    return Ok(End::Interrupted(Interruption::ConnectionLost {
                        at,
                        detail,
                    }));
                }
                Ok(Some(Ok(f))) => match f.into_data() {
                    Ok(data) => data,
                    Err(_) => continue,
                },
            };
            let len = data.len() as u64;
            self.plan.handle_data(self.now(), len)?;
            // Copied into a chunk of the writer's and dropped here, so hyper
            // reads the next frame into the same buffer (part.rs).
            part.append(&data).await?;
            drop(data);
            self.job.opts.metrics.downloaded(len);
            if self.plan.received() - self.published >= PROGRESS_STEP {
                self.published = self.plan.received();
                self.publish();
            }
            self.maybe_checkpoint(part).await?;
        }
    }

    /// The tokio instant of a plan instant.
    fn instant(&self, t: codecs_time::Instant) -> Instant {
        self.origin + Duration::from_millis(t.as_millis())
    }

    /// Checks the SHA-256 and renames the file into place.
    async fn verify(&mut self, part: Part) -> Result<Verified, DownloadError> {
        let job = self.job;
        let size = self.plan.received();
        let done = part.finish().await?;
        debug!(key = %job.key, direct = done.written.direct, buffered = done.written.buffered, "package written");
        let (file, actual) = (done.file, done.sha256);
        if let Some(expected) = &self.expected_sha {
            if *expected != actual {
                return Err(DownloadError::Integrity {
                    expected: expected.clone(),
                    actual,
                });
            }
        }
        let (part_path, fin, dir) = (self.part_path.clone(), self.fin.clone(), job.dir.clone());
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
        let (key, sha) = (job.key.clone(), actual.clone());
        job.journal
            .run(move |j| db::put_verified(j, &key, size, &sha))
            .await?;
        info!(key = %job.key, size, "package verified");
        Ok(Verified {
            path: self.fin.clone(),
            size,
            sha256: actual,
        })
    }
}

async fn sleep_until_opt(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// The plan's settings from the job's.
fn plan_config(job: &Job) -> PlanConfig {
    PlanConfig {
        checkpoint_bytes: job.opts.checkpoint_bytes,
        checkpoint_interval: job.opts.checkpoint_interval,
        auth_attempts: job.opts.auth_attempts,
        max_redirects: MAX_REDIRECTS,
        max_bytes: job.cfg.max_package_bytes,
    }
}

/// The head fields the plan reads.
fn head(r: &http::Response<Incoming>) -> Head<'_> {
    let h = r.headers();
    let text = |name| h.get(name).and_then(|v: &HeaderValue| v.to_str().ok());
    Head {
        status: r.status().as_u16(),
        content_length: text(CONTENT_LENGTH),
        content_range: text(CONTENT_RANGE),
        etag: text(ETAG),
        last_modified: text(LAST_MODIFIED),
        location: text(LOCATION),
    }
}
