//! `otabridge download --config FILE URL [--token T] [--sha256 HEX] [--size N]
//! [--output PATH]`: the gateway's own download path from the command line,
//! so that an operator can check reachability, TLS settings and speed from
//! the box.
//!
//! It uses the package store in `state.dir/packages` like the daemon: an
//! interrupted run resumes when run again. After a successful check the
//! package is released: with `--output` it is moved there first (like
//! `curl -o`), otherwise it is removed (the command verifies, it does not
//! stock packages).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{db, DownloadError, DownloadState, PackageRequest, PackageStore, StoreError};
use crate::config::{Config, Secret};
use crate::journal::SharedJournal;

/// The claim `otabridge download` holds while it runs (and keeps after an
/// interruption, so that the next run resumes).
pub const JOB: &str = "cli:download";

/// What `otabridge download` was asked.
#[derive(Debug, Clone)]
pub struct DownloadArgs {
    /// The package URL.
    pub url: String,
    /// Bearer token (v1 URLs).
    pub token: Option<String>,
    /// Expected SHA-256 (64 hex).
    pub sha256: Option<String>,
    /// Expected size in bytes.
    pub size: Option<u64>,
    /// Print progress to stderr about this often.
    pub progress_every: Duration,
    /// Keep the verified package here (moved out of the state directory,
    /// or copied when it is on another file system); otherwise it is
    /// removed once verified.
    pub output: Option<PathBuf>,
}

/// The outcome of a successful run.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// Package size.
    pub size: u64,
    /// Its SHA-256.
    pub sha256: String,
    /// Bytes already on disk from an earlier run.
    pub resumed_from: u64,
    /// Time this run took.
    pub elapsed: Duration,
    /// Where the package was kept (`--output`).
    pub output: Option<PathBuf>,
}

impl Summary {
    /// Bytes per second fetched by this run.
    pub fn throughput(&self) -> f64 {
        (self.size - self.resumed_from) as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Why `otabridge download` failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The arguments or the configuration cannot be used (exit 2).
    #[error("{0}")]
    Usage(String),
    /// The download failed (exit 1); `main` adds the report a job would
    /// send (`ota::verdict`).
    #[error("{error}")]
    Download {
        /// Why.
        error: DownloadError,
    },
    /// The state directory could not be used (exit 1).
    #[error("{0}")]
    State(String),
}

impl CliError {
    /// The process exit code: 2 for bad usage or configuration, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) => 2,
            CliError::Download { .. } | CliError::State(_) => 1,
        }
    }
}

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

/// Prints the download's progress to stderr every `every`, until it ends.
async fn print_progress(
    mut rx: tokio::sync::watch::Receiver<DownloadState>,
    resumed_from: u64,
    every: std::time::Duration,
) {
    let mut last = Instant::now();
    let mut last_bytes = Some(resumed_from);
    while rx.changed().await.is_ok() {
        let state = rx.borrow_and_update().clone();
        let DownloadState::Downloading {
            received,
            durable,
            size,
        } = state
        else {
            break;
        };
        if last.elapsed() < every {
            continue;
        }
        let rate = last_bytes
            .map(|b: u64| received.saturating_sub(b) as f64 / last.elapsed().as_secs_f64())
            .unwrap_or(0.0);
        let of = size
            .map(|s| {
                format!(
                    " of {:.1} MiB ({:.0}%)",
                    mib(s),
                    received as f64 * 100.0 / s.max(1) as f64
                )
            })
            .unwrap_or_default();
        eprintln!(
            "{:.1} MiB{of}, {:.1} MiB on disk, {:.1} MiB/s",
            mib(received),
            mib(durable),
            rate / (1024.0 * 1024.0)
        );
        let _ = std::io::stderr().flush();
        last = Instant::now();
        last_bytes = Some(received);
    }
}

/// Refuses an `--output` whose directory does not exist, before anything
/// is downloaded.
fn check_output(out: &Path) -> Result<(), CliError> {
    let dir = match out.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if out.is_dir() {
        return Err(CliError::Usage(format!(
            "--output {}: is a directory (name the file)",
            out.display()
        )));
    }
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(CliError::Usage(format!(
            "--output {}: {} is not a directory",
            out.display(),
            dir.display()
        ))),
        Err(e) => Err(CliError::Usage(format!(
            "--output {}: {}: {e}",
            out.display(),
            dir.display()
        ))),
    }
}

/// Moves the verified package to `out` (a copy across file systems), and
/// makes that durable: the copy's data, then the directory entry.
async fn keep(from: &Path, out: &Path) -> Result<(), CliError> {
    let (from, out) = (from.to_owned(), out.to_owned());
    tokio::task::spawn_blocking(move || {
        let fail = |what: &str, e: std::io::Error| {
            CliError::State(format!("--output {}: cannot {what}: {e}", out.display()))
        };
        match std::fs::rename(&from, &out) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(nix::libc::EXDEV) => {
                std::fs::copy(&from, &out).map_err(|e| fail("copy the package", e))?;
                std::fs::File::open(&out)
                    .and_then(|f| f.sync_all())
                    .map_err(|e| fail("fsync", e))?;
            }
            Err(e) => return Err(fail("move the package there", e)),
        }
        let dir = match out.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| fail("fsync its directory", e))
    })
    .await
    .map_err(|e| CliError::State(e.to_string()))?
}

/// Runs the download, printing progress to stderr.
pub async fn download(cfg: &Config, args: DownloadArgs) -> Result<Summary, CliError> {
    let req = PackageRequest {
        url: args.url.clone(),
        token: args.token.clone().map(Secret::new),
        size: args.size,
        sha256: args.sha256.clone(),
        version: String::new(),
        deadline: crate::clock::now_system() + super::DEFAULT_VALIDITY,
    };
    let key = req
        .key()
        .map_err(|e| CliError::Usage(format!("--sha256: {e}")))?;
    super::http::parse_url(&req.url, cfg.download.allow_http)
        .map_err(|e| CliError::Usage(e.to_string()))?;
    if let Some(out) = &args.output {
        check_output(out)?;
    }
    let journal =
        SharedJournal::open(&cfg.state.dir).map_err(|e| CliError::State(e.to_string()))?;
    let store = PackageStore::open(
        &cfg.state.dir.join(super::DIR_NAME),
        journal.clone(),
        &cfg.download,
    )
    .await
    .map_err(|e| match e {
        StoreError::Setup(DownloadError::Tls(m)) => CliError::Usage(format!(
            "config {}: download.ca_file: {m}",
            cfg.file.display()
        )),
        e => CliError::State(e.to_string()),
    })?;
    let k = key.clone();
    let resumed_from = journal
        .run(move |j| db::get(j, &k))
        .await
        .map_err(|e| CliError::State(e.to_string()))?
        .filter(|r| !r.verified)
        .map_or(0, |r| r.durable_len);
    if resumed_from > 0 {
        eprintln!(
            "resuming at byte {resumed_from} ({:.1} MiB)",
            mib(resumed_from)
        );
    }
    let started = Instant::now();
    let wait = store.acquire(JOB, &req).await;
    let printer = tokio::spawn(print_progress(
        wait.progress(),
        resumed_from,
        args.progress_every,
    ));
    let r = wait.ready().await;
    printer.abort();
    match r {
        Ok(p) => {
            if let Some(out) = &args.output {
                // A package that cannot be put there stays in the store,
                // claimed: the next run finds it verified and only moves it.
                keep(&p.path, out).await?;
            }
            store.release(JOB, &key).await;
            Ok(Summary {
                size: p.size,
                sha256: p.sha256,
                resumed_from,
                elapsed: started.elapsed(),
                output: args.output,
            })
        }
        Err(error @ DownloadError::Store(_)) => {
            // The disk or the journal failed, or another process holds the
            // `.part` file: keep the claim (and that process's file).
            Err(CliError::Download { error })
        }
        Err(error) => {
            // A failed download left nothing behind; forget the claim too.
            store.release(JOB, &key).await;
            Err(CliError::Download { error })
        }
    }
}
