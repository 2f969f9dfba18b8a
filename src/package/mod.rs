//! Packages: resumable HTTPS downloads into a shared, verified store.
//!
//! When IoTDA sends `firmware_upgrade` / `software_upgrade` (package in
//! IoTDA, `Authorization: Bearer <access_token>`) or the `_v2` variants
//! (pre-signed OBS URL, no header) for a child, the gateway downloads the
//! package itself (docs/protocols/iotda.md §4.4, §4.5, §4.7).
//!
//! - [`PackageStore`]: `state.dir/packages/`, content-addressed by the
//!   event's `sign`. `<sha256>.part` while downloading, `<sha256>` once
//!   verified. One download per package at a time, shared by every job that
//!   needs it; removed when the last job releases it. File names never come
//!   from the URL or `file_name`.
//! - `download`: the resumable download itself (Range / If-Range, durable
//!   checkpoints in the journal, backoff until the deadline, size and SHA-256
//!   checks).
//! - `http`: one GET over hyper + tokio-rustls (ring).
//! - [`cli`]: `otabridge download`, the same code path from the command line.
//! - [`DownloadError`]: every way it fails, with the IoTDA result code and the
//!   failure description to report (docs/protocols/iotda.md §9).
//!
//! # Using it from the OTA engine
//! ```no_run
//! # async fn f(store: otabridge::package::PackageStore,
//! #            up: otabridge_codecs::iotda::event::Upgrade) {
//! use otabridge::package::PackageRequest;
//! let req = PackageRequest::from_upgrade(&up, false, std::time::SystemTime::now());
//! let wait = store.acquire("job-42", &req).await; // the claim is durable now
//! let mut progress = wait.progress();          // watch: bytes received / durable / size
//! match wait.ready().await {
//!     Ok(package) => { /* deliver package.path to the child */ }
//!     Err(e) => { /* ota::verdict turns e into the report */ }
//! }
//! store.release("job-42", &req.key().unwrap()).await; // the file goes when no job needs it
//! # let _ = progress.changed();
//! # }
//! ```

pub mod cli;
mod db;
mod download;
mod error;
mod http;
mod part;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use otabridge_codecs::iotda::event::Upgrade;
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tracing::{info, warn};

pub use self::error::DownloadError;
pub use self::http::redact_url;
use crate::config::{DownloadConfig, Secret};
use crate::journal::SharedJournal;

/// The directory of the store inside `state.dir`.
pub const DIR_NAME: &str = "packages";

/// The token's validity when the event gives none: 24 h (docs/protocols/iotda.md §4.1,
/// "The token is valid for 24 hours"; download plus report within 24 h).
pub const DEFAULT_VALIDITY: Duration = Duration::from_secs(24 * 3600);

/// One package to fetch: what an upgrade event says about it.
#[derive(Clone)]
pub struct PackageRequest {
    /// The download URL (`https://`; `http://` only with `download.allow_http`).
    pub url: String,
    /// v1 only: sent as `Authorization: Bearer <token>` (docs/protocols/iotda.md §4.7).
    pub token: Option<Secret>,
    /// `file_size`; `None` learns it from the server (command line only).
    pub size: Option<u64>,
    /// `sign`: SHA-256, 64 hex characters, any case. `None` (tolerated for
    /// v2, docs/protocols/iotda.md §4.5) skips the integrity check; the store then names the
    /// package after the SHA-256 of the URL without its query.
    pub sha256: Option<String>,
    /// The version the package carries (copied into [`Package::version`]).
    pub version: String,
    /// Give up (result 6) when this passes: 24 h after the event, or earlier
    /// when the token's `expires` says so.
    pub deadline: SystemTime,
}

impl std::fmt::Debug for PackageRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackageRequest")
            .field("url", &redact_url(&self.url))
            .field("token", &self.token)
            .field("size", &self.size)
            .field("sha256", &self.sha256)
            .field("version", &self.version)
            .field("deadline", &self.deadline)
            .finish()
    }
}

impl PackageRequest {
    /// The request for an upgrade event received at `received`. `v2`: the URL
    /// is pre-signed and no token is sent even if one is present.
    pub fn from_upgrade(up: &Upgrade, v2: bool, received: SystemTime) -> PackageRequest {
        let validity = up
            .expires
            .map(|s| Duration::from_secs(s).min(DEFAULT_VALIDITY))
            .unwrap_or(DEFAULT_VALIDITY);
        PackageRequest {
            url: up.url.clone(),
            token: if v2 {
                None
            } else {
                up.access_token.clone().map(Secret::new)
            },
            size: Some(up.file_size),
            sha256: up.sign.clone(),
            version: up.version.clone(),
            deadline: received + validity,
        }
    }

    /// The package's name in the store: the lower-case `sign`, or for an
    /// unsigned package the SHA-256 of its URL without the query.
    pub fn key(&self) -> Result<String, DownloadError> {
        match &self.sha256 {
            Some(s) => normalize_sha256(s),
            None => {
                let base = self.url.split('?').next().unwrap_or_default();
                Ok(hex::encode(Sha256::digest(format!(
                    "otabridge-unsigned:{base}"
                ))))
            }
        }
    }
}

/// Lower-cases a `sign` after checking it is 64 hex characters (docs/protocols/iotda.md
/// §4.7: the C SDK requires exactly that and compares lower-case hex).
pub fn normalize_sha256(s: &str) -> Result<String, DownloadError> {
    let t = s.trim();
    if t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(t.to_ascii_lowercase())
    } else {
        Err(DownloadError::InvalidSign(s.to_owned()))
    }
}

/// Tuning of the downloader. The defaults suit a gateway; tests shorten the
/// timeouts.
#[derive(Debug, Clone)]
pub struct DownloadOptions {
    /// TCP connect + TLS handshake + response head (default 30 s).
    pub connect_timeout: Duration,
    /// A body that delivers nothing for this long is stalled: the connection
    /// is dropped and the download resumes (default 60 s).
    pub read_timeout: Duration,
    /// Retries: until the deadline, backing off from 1 s to 5 min, the
    /// jitter seeded by the process id (defaults).
    pub retry: crate::retry::RetryPolicy,
    /// 401/403 answers in a row before the token counts as dead (default 3).
    pub auth_attempts: u32,
    /// Checkpoint (fsync + journal) at least every this many bytes
    /// (16 MiB: at a fast link, a crash costs at most a fraction of a second
    /// of download; at a slow one the interval below comes first).
    pub checkpoint_bytes: u64,
    /// ... and at least this often while bytes arrive (2 s).
    pub checkpoint_interval: Duration,
    /// Disk space kept free beyond the package (default 16 MiB).
    pub free_space_margin: u64,
    /// Write the package with direct I/O where the file system takes it
    /// (default true; `part.rs`). False: through the page cache throughout.
    pub direct_io: bool,
    /// Where the bytes received and the resumes are counted.
    pub metrics: crate::metrics::Metrics,
}

impl Default for DownloadOptions {
    fn default() -> Self {
        DownloadOptions {
            connect_timeout: Duration::from_secs(30),
            read_timeout: Duration::from_secs(60),
            retry: crate::retry::RetryPolicy::until_deadline(
                Duration::from_secs(1),
                Duration::from_secs(300),
            )
            .seeded(std::process::id() as u64),
            auth_attempts: 3,
            checkpoint_bytes: 16 * 1024 * 1024,
            checkpoint_interval: Duration::from_secs(2),
            free_space_margin: 16 * 1024 * 1024,
            direct_io: true,
            metrics: crate::metrics::Metrics::default(),
        }
    }
}

/// A verified package, ready to deliver to a child.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Package {
    /// The verified file (`packages/<sha256>`).
    pub path: PathBuf,
    /// Its size in bytes.
    pub size: u64,
    /// Its SHA-256, lower-case hex.
    pub sha256: String,
    /// The version it carries (the upgrade's target version).
    pub version: String,
}

/// Where a package is, as seen through [`PackageWait::progress`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DownloadState {
    /// Bytes are arriving.
    Downloading {
        /// Bytes in the `.part` file.
        received: u64,
        /// Bytes known to be on disk (journaled).
        durable: u64,
        /// The package size, when known.
        size: Option<u64>,
    },
    /// Verified and in place.
    Ready(Package),
    /// Failed for good.
    Failed(DownloadError),
}

/// The store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// `packages/` could not be created or listed.
    #[error("package store {dir}: {source}")]
    Dir {
        /// The directory.
        dir: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The TLS configuration or the journal could not be used.
    #[error(transparent)]
    Setup(#[from] DownloadError),
}

#[derive(Debug)]
struct Active {
    state: watch::Sender<DownloadState>,
    task: tokio::task::AbortHandle,
}

#[derive(Debug)]
struct Inner {
    dir: PathBuf,
    journal: SharedJournal,
    cfg: DownloadConfig,
    opts: DownloadOptions,
    client: http::HttpClient,
    active: Mutex<HashMap<String, Active>>,
}

/// The package store: `state.dir/packages/`.
///
/// TLS verification is always on: the system roots plus `download.ca_file`.
/// IoTDA's v1 package URLs name a bare IP address that the server
/// certificate does not carry (docs/protocols/iotda.md §4.7); `download.verify_hostname =
/// false` accepts any server name but still verifies the chain, signatures
/// and validity dates. It is off by default (names are checked).
///
/// Cheap to clone; every clone is the same store.
#[derive(Debug, Clone)]
pub struct PackageStore {
    inner: Arc<Inner>,
}

impl PackageStore {
    /// Opens the store in `dir` (normally `state.dir/packages`), creating it.
    /// Packages no job claims (their job finished while the gateway was
    /// down) are removed, with their journal rows.
    pub async fn open(
        dir: &Path,
        journal: SharedJournal,
        cfg: &DownloadConfig,
    ) -> Result<PackageStore, StoreError> {
        Self::with_options(dir, journal, cfg, DownloadOptions::default()).await
    }

    /// As [`PackageStore::open`], with non-default tuning.
    pub async fn with_options(
        dir: &Path,
        journal: SharedJournal,
        cfg: &DownloadConfig,
        opts: DownloadOptions,
    ) -> Result<PackageStore, StoreError> {
        let dir_err = |source| StoreError::Dir {
            dir: dir.to_owned(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(dir_err)?;
        let client = http::HttpClient::new(cfg, opts.connect_timeout)?;
        let (unclaimed, claims) = journal
            .run(|j| Ok::<_, DownloadError>((db::delete_unclaimed(j)?, db::claims(j)?)))
            .await?;
        for key in unclaimed {
            remove_files(dir, &key);
        }
        let claimed: std::collections::HashSet<String> =
            claims.into_iter().map(|(k, _)| k).collect();
        for entry in std::fs::read_dir(dir).map_err(dir_err)? {
            let name = entry.map_err(dir_err)?.file_name();
            let name = name.to_string_lossy();
            let key = name.strip_suffix(".part").unwrap_or(&name);
            let ours = key.len() == 64 && key.bytes().all(|b| b.is_ascii_hexdigit());
            if ours && !claimed.contains(key) {
                info!(file = %name, "removing a package no job needs");
                let _ = std::fs::remove_file(dir.join(name.as_ref()));
            }
        }
        Ok(PackageStore {
            inner: Arc::new(Inner {
                dir: dir.to_owned(),
                journal,
                cfg: cfg.clone(),
                opts,
                client,
                active: Mutex::default(),
            }),
        })
    }

    /// Every (package key, job) claim in the journal, for the OTA engine to
    /// match against its jobs after a restart.
    pub async fn claims(&self) -> Result<Vec<(String, String)>, DownloadError> {
        self.inner.journal.run(db::claims).await
    }

    /// Records that `job` needs the package and returns a wait on it. The
    /// first request for a package starts its download; later ones (any job)
    /// share it. The claim is durable: after a restart the same call resumes
    /// the download instead of starting over (the claim is durable when
    /// this returns).
    pub async fn acquire(&self, job: &str, req: &PackageRequest) -> PackageWait {
        let key = match req.key() {
            Ok(k) => k,
            Err(e) => return PackageWait::failed(e),
        };
        let (k, j) = (key.clone(), job.to_owned());
        let claimed = self
            .inner
            .journal
            .run(move |journal| db::claim(journal, &k, &j))
            .await;
        if let Err(e) = claimed {
            return PackageWait::failed(e);
        }
        let mut active = self.inner.active.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(a) = active.get(&key) {
            // A running or finished download is shared; a failed one (say,
            // its token expired) starts again with this request.
            let reuse = match &*a.state.borrow() {
                DownloadState::Ready(_) => true,
                DownloadState::Failed(_) => false,
                DownloadState::Downloading { .. } => !a.task.is_finished(),
            };
            if reuse {
                return PackageWait {
                    key,
                    rx: a.state.subscribe(),
                };
            }
        }
        let (tx, rx) = watch::channel(DownloadState::Downloading {
            received: 0,
            durable: 0,
            size: req.size,
        });
        let inner = self.inner.clone();
        let job = download::Job {
            key: key.clone(),
            dir: inner.dir.clone(),
            req: req.clone(),
            journal: inner.journal.clone(),
            cfg: inner.cfg.clone(),
            opts: inner.opts.clone(),
            client: inner.client.clone(),
            progress: tx.clone(),
        };
        let task = tokio::spawn(async move {
            let r = download::run(&job).await;
            let state = match r {
                Ok(v) => DownloadState::Ready(Package {
                    path: v.path,
                    size: v.size,
                    sha256: v.sha256,
                    version: job.req.version.clone(),
                }),
                Err(e) => DownloadState::Failed(e),
            };
            job.progress.send_replace(state);
        });
        active.insert(
            key.clone(),
            Active {
                state: tx,
                task: task.abort_handle(),
            },
        );
        PackageWait { key, rx }
    }

    /// `job` no longer needs the package `key`. When no job does, its
    /// download stops and its files and journal row are removed.
    pub async fn release(&self, job: &str, key: &str) {
        let (k, j) = (key.to_owned(), job.to_owned());
        let left = self
            .inner
            .journal
            .run(move |journal| db::unclaim(journal, &k, &j))
            .await;
        let left = match left {
            Ok(n) => n,
            Err(e) => {
                warn!(%key, %job, "cannot release the package: {e}");
                return;
            }
        };
        if left > 0 {
            return;
        }
        let removed = self
            .inner
            .active
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
        if let Some(a) = removed {
            a.task.abort();
        }
        let k = key.to_owned();
        if let Err(e) = self
            .inner
            .journal
            .run(move |journal| db::delete(journal, &k))
            .await
        {
            warn!(%key, "cannot forget the package: {e}");
        }
        remove_files(&self.inner.dir, key);
        info!(%key, "package removed: no job needs it any more");
    }
}

fn remove_files(dir: &Path, key: &str) {
    let _ = std::fs::remove_file(dir.join(key));
    let _ = std::fs::remove_file(dir.join(format!("{key}.part")));
}

/// A job's wait on a package: progress while it downloads, then the
/// verified package or the error every waiting job reports.
#[derive(Debug, Clone)]
pub struct PackageWait {
    key: String,
    rx: watch::Receiver<DownloadState>,
}

impl PackageWait {
    fn failed(e: DownloadError) -> PackageWait {
        let (_tx, rx) = watch::channel(DownloadState::Failed(e));
        PackageWait {
            key: String::new(),
            rx,
        }
    }

    /// The package's key in the store (empty when the request was invalid).
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Progress: bytes received, bytes durable, size; then the outcome.
    pub fn progress(&self) -> watch::Receiver<DownloadState> {
        self.rx.clone()
    }

    /// Waits for the download to end.
    pub async fn ready(mut self) -> Result<Package, DownloadError> {
        loop {
            match &*self.rx.borrow_and_update() {
                DownloadState::Ready(p) => return Ok(p.clone()),
                DownloadState::Failed(e) => return Err(e.clone()),
                DownloadState::Downloading { .. } => {}
            }
            if self.rx.changed().await.is_err() {
                // The sender went away without an outcome: the download was
                // aborted by `release`.
                return match &*self.rx.borrow() {
                    DownloadState::Ready(p) => Ok(p.clone()),
                    DownloadState::Failed(e) => Err(e.clone()),
                    DownloadState::Downloading { .. } => Err(DownloadError::Cancelled),
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upgrade(expires: Option<u64>) -> Upgrade {
        Upgrade {
            version: "v1.2".into(),
            url: "https://100.93.28.202:8943/iodm/dev/v2.0/upgradefile/x?sig=secret".into(),
            file_size: 81362928,
            file_name: "../../etc/passwd".into(),
            access_token: Some("595124473f866b033dfa1f".into()),
            expires,
            sign: Some("595124473F866B033DFA1F7E831C8C99A12F6143F392DFA996A819010842C99D".into()),
            custom_info: None,
            task_id: None,
            sub_device_count: None,
            task_ext_info: None,
        }
    }

    #[test]
    fn requests_from_events() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let r = PackageRequest::from_upgrade(&upgrade(Some(3600)), false, t0);
        assert_eq!(r.deadline, t0 + Duration::from_secs(3600));
        assert_eq!(
            r.token.as_ref().map(Secret::expose),
            Some("595124473f866b033dfa1f")
        );
        assert_eq!(r.size, Some(81362928));
        // The store's name is the sign, lower case; never the file name.
        assert_eq!(r.key().unwrap(), upgrade(None).sign.unwrap().to_lowercase());
        // At most 24 h, and 24 h when the event says nothing.
        let r = PackageRequest::from_upgrade(&upgrade(Some(10 * 86400)), false, t0);
        assert_eq!(r.deadline, t0 + DEFAULT_VALIDITY);
        let r = PackageRequest::from_upgrade(&upgrade(None), true, t0);
        assert_eq!(r.deadline, t0 + DEFAULT_VALIDITY);
        assert!(r.token.is_none(), "v2 URLs are pre-signed: no header");
        let dbg = format!("{r:?}");
        assert!(
            !dbg.contains("sig=secret") && !dbg.contains("595124473f866b033dfa1f\""),
            "{dbg}"
        );
    }

    #[test]
    fn signs_are_checked_and_unsigned_packages_get_a_url_key() {
        assert!(matches!(
            normalize_sha256("abc"),
            Err(DownloadError::InvalidSign(_))
        ));
        assert!(normalize_sha256(&"g".repeat(64)).is_err());
        assert_eq!(normalize_sha256(&"AB".repeat(32)).unwrap(), "ab".repeat(32));
        let mut r = PackageRequest::from_upgrade(&upgrade(None), true, SystemTime::UNIX_EPOCH);
        r.sha256 = None;
        let k = r.key().unwrap();
        assert_eq!(k.len(), 64);
        r.url = r.url.replace("sig=secret", "sig=other");
        assert_eq!(
            r.key().unwrap(),
            k,
            "the query (signature) does not change the key"
        );
    }
}
