//! The journal: one SQLite file (`state.dir/journal.sqlite`) that holds
//! everything the gateway must not forget across a power loss.
//!
//! - `outbox`: every upstream report, written before it is published and
//!   deleted only after the broker's PUBACK.
//! - `children`: what the gateway last learnt of each child (version, online),
//!   for `otabridge status`.
//! - `meta`: small key/value facts (the child-list version from the platform).
//! - `gateway_jobs`: the gateway's own upgrades (src/gateway).
//! - `coap_registrations`: LwM2M clients registered with the gateway
//!   (src/child/coap/registrations.rs).
//! - `coap_onboarded`: LwM2M clients the gateway added to the platform as
//!   sub-devices (onboarding; same file).
//!
//! The database runs in WAL mode with `synchronous = FULL`: a committed
//! transaction survives a power cut, and `otabridge status` can read while the
//! daemon writes. Modules that keep their own tables (the package store,
//! the jobs) add them through [`MIGRATIONS`].
//!
//! The daemon's tasks share one [`SharedJournal`]: every operation runs on
//! tokio's blocking pool ([`SharedJournal::run`]), never on an async worker,
//! so an fsync never stalls the reactor; the handle's lock is FIFO, so one
//! caller's operations run in the order it issued them. Code that is not
//! async (a thread of its own, the CLI) uses [`SharedJournal::blocking`],
//! which refuses to run on an async worker.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rusqlite::{params, Connection, OpenFlags, OptionalExtension};

/// The journal's file name inside `state.dir`.
pub const FILE_NAME: &str = "journal.sqlite";

/// A journal operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// The state directory could not be created.
    #[error("cannot create state directory {dir}: {source}")]
    CreateDir {
        /// The directory.
        dir: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// SQLite failed (open, schema, or a statement).
    #[error("journal {file}: {source}")]
    Sqlite {
        /// The journal file.
        file: PathBuf,
        /// What SQLite said.
        #[source]
        source: rusqlite::Error,
    },
    /// The journal was written by a newer otabridge.
    #[error("journal {file} has schema version {found}; this otabridge knows up to {known}")]
    TooNew {
        /// The journal file.
        file: PathBuf,
        /// Its schema version.
        found: i64,
        /// Ours.
        known: i64,
    },
}

impl JournalError {
    /// The journal could not grow: SQLite's `SQLITE_FULL` (the disk of
    /// `state.dir` is full). The operation wrote nothing; the same one
    /// succeeds once space returns (callers keep what they could not write,
    /// docs/operations.md "What otabridge survives").
    pub fn is_disk_full(&self) -> bool {
        matches!(self, JournalError::Sqlite { source, .. }
            if source.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull))
    }
}

/// Schema migrations, applied in order; `PRAGMA user_version` counts them.
const MIGRATIONS: &[&str] = &[
    // 1: outbox, children, meta.
    "CREATE TABLE outbox (
         id INTEGER PRIMARY KEY AUTOINCREMENT,
         topic TEXT NOT NULL,
         payload BLOB NOT NULL,
         created_unix INTEGER NOT NULL
     );
     CREATE TABLE children (
         device_id TEXT PRIMARY KEY,
         transport TEXT NOT NULL,
         version TEXT,
         online INTEGER NOT NULL DEFAULT 0,
         last_seen_unix INTEGER,
         last_error TEXT
     );
     CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);",
    // 2: the package store (src/package): one row per package in
    // `state.dir/packages/`, with the length of its `.part` file known to be
    // on disk, and the jobs that need it.
    "CREATE TABLE packages (
         key TEXT PRIMARY KEY,
         size INTEGER,
         durable_len INTEGER NOT NULL DEFAULT 0,
         validator TEXT,
         verified INTEGER NOT NULL DEFAULT 0,
         sha256 TEXT,
         updated_unix INTEGER NOT NULL
     );
     CREATE TABLE package_claims (
         key TEXT NOT NULL,
         job TEXT NOT NULL,
         PRIMARY KEY (key, job)
     );",
    // 3: upgrade jobs (src/ota): one row per child upgrade, the state machine
    // persisted at every transition and delivery checkpoint. `event` keeps the
    // upgrade paras (JSON) so a restarted gateway can fetch the package again.
    "CREATE TABLE jobs (
         id INTEGER PRIMARY KEY AUTOINCREMENT,
         device_id TEXT NOT NULL,
         kind TEXT NOT NULL,
         v2 INTEGER NOT NULL,
         event TEXT NOT NULL,
         received_unix INTEGER NOT NULL,
         deadline_unix INTEGER NOT NULL,
         target TEXT NOT NULL,
         sign TEXT,
         size INTEGER NOT NULL,
         phase TEXT NOT NULL,
         acked_offset INTEGER NOT NULL DEFAULT 0,
         retries INTEGER NOT NULL DEFAULT 0,
         current_version TEXT,
         result_code INTEGER,
         description TEXT,
         last_report_pct INTEGER,
         last_report_unix INTEGER,
         activations INTEGER NOT NULL DEFAULT 0,
         updated_unix INTEGER NOT NULL
     );
     CREATE INDEX jobs_by_device ON jobs (device_id, id);",
    // 4: where a job's last failure happened and what the device said
    // (`ota::verdict::FailureCause` as JSON), for `otabridge status`.
    "ALTER TABLE jobs ADD COLUMN cause TEXT;",
    // 5: the gateway's own upgrades (src/gateway): one row per firmware or
    // software upgrade of the gateway itself, its phase written before each
    // step a reboot or a power loss may cut (the reboot itself included).
    "CREATE TABLE gateway_jobs (
         id INTEGER PRIMARY KEY AUTOINCREMENT,
         kind TEXT NOT NULL,
         v2 INTEGER NOT NULL,
         event TEXT NOT NULL,
         received_unix INTEGER NOT NULL,
         deadline_unix INTEGER NOT NULL,
         target TEXT NOT NULL,
         sign TEXT,
         from_version TEXT,
         phase TEXT NOT NULL,
         boot_id TEXT,
         reboots INTEGER NOT NULL DEFAULT 0,
         last_pct INTEGER,
         result_code INTEGER,
         description TEXT,
         updated_unix INTEGER NOT NULL
     );",
    // 6: LwM2M registrations of CoAP children that register with the
    // gateway (src/child/coap/registrations.rs): one row per endpoint, its
    // address, lifetime and links, when it last registered or updated, and
    // the firmware version it last reported.
    "CREATE TABLE coap_registrations (
         endpoint TEXT PRIMARY KEY,
         id TEXT NOT NULL,
         address TEXT NOT NULL,
         lifetime_s INTEGER NOT NULL,
         lwm2m TEXT NOT NULL,
         binding TEXT NOT NULL,
         queue INTEGER NOT NULL,
         sms TEXT,
         links TEXT NOT NULL,
         renewed_unix INTEGER NOT NULL,
         firmware TEXT
     );",
    // 7: operators' and policies' control of jobs (issue 15, src/ota/control.rs):
    // `control` is an operator's pending request ('pause' or 'cancel'),
    // `held` why a policy holds the job before it starts (halt on
    // failures), `retry_of` the failed job an operator's retry repeats.
    "ALTER TABLE jobs ADD COLUMN control TEXT;
     ALTER TABLE jobs ADD COLUMN held TEXT;
     ALTER TABLE jobs ADD COLUMN retry_of INTEGER;",
    // 8: LwM2M clients onboarded as IoTDA sub-devices (issue 13 item 3,
    // src/child/coap/registrations.rs): the endpoint, the device id the
    // platform gave it, the product it was added under.
    "CREATE TABLE coap_onboarded (
         endpoint TEXT PRIMARY KEY,
         device_id TEXT NOT NULL UNIQUE,
         product_id TEXT NOT NULL,
         adopted_unix INTEGER NOT NULL
     );",
];

/// One queued upstream report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEntry {
    /// Its position in the queue: reports are sent in id order.
    pub id: i64,
    /// MQTT topic.
    pub topic: String,
    /// MQTT payload (JSON).
    pub payload: Vec<u8>,
}

/// What the journal knows of one child.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildRow {
    /// Its IoTDA device id.
    pub device_id: String,
    /// `coap`, `serial` or `sim`.
    pub transport: String,
    /// Last version read from it.
    pub version: Option<String>,
    /// Last health check passed.
    pub online: bool,
    /// When it last answered.
    pub last_seen_unix: Option<i64>,
    /// Why it last failed to answer.
    pub last_error: Option<String>,
}

/// The open journal.
#[derive(Debug)]
pub struct Journal {
    conn: Connection,
    file: PathBuf,
}

/// The journal shared by the daemon's tasks. Cheap to clone; every clone
/// is the same connection.
///
/// - [`SharedJournal::run`] runs an operation on tokio's blocking pool and
///   returns when it returned: a write that returns is committed (fsynced,
///   `synchronous = FULL`). Operations run one at a time, in the order their
///   callers reached the handle's lock (tokio's mutex is FIFO), so one
///   caller's writes are applied in its order. A blocking-pool task also
///   keeps paused tokio time (tests) from jumping while the disk works.
/// - [`SharedJournal::blocking`] locks it on a thread that is not an async
///   worker (a thread of its own, a `spawn_blocking` closure, the CLI
///   outside a runtime); on an async worker it panics instead of blocking
///   the reactor.
#[derive(Debug, Clone)]
pub struct SharedJournal {
    inner: Arc<tokio::sync::Mutex<Journal>>,
    file: Arc<Path>,
}

impl SharedJournal {
    /// Shares `journal`.
    pub fn new(journal: Journal) -> Self {
        SharedJournal {
            file: journal.file.clone().into(),
            inner: Arc::new(tokio::sync::Mutex::new(journal)),
        }
    }

    /// Opens (creating if needed) the journal in `state_dir`, for sharing.
    pub fn open(state_dir: &Path) -> Result<Self, JournalError> {
        Journal::open(state_dir).map(SharedJournal::new)
    }

    /// The journal file.
    pub fn file(&self) -> &Path {
        &self.file
    }

    /// Runs `f` on the journal on a blocking-pool thread, after the
    /// operations that reached the handle before it; returns what `f`
    /// returned, once it has (a committed write is durable by then).
    ///
    /// Dropping the returned future before it completes (a task aborted at
    /// shutdown) does not stop an `f` that started: it runs to its end, as
    /// a write cut by a power loss would either be there or not.
    pub async fn run<R, F>(&self, f: F) -> R
    where
        F: FnOnce(&mut Journal) -> R + Send + 'static,
        R: Send + 'static,
    {
        let mut guard = self.inner.clone().lock_owned().await;
        match tokio::task::spawn_blocking(move || f(&mut guard)).await {
            Ok(r) => r,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            // The runtime is shutting down and dropped the operation before
            // it started: nothing was written, and nothing will poll this
            // task again.
            Err(_) => std::future::pending().await,
        }
    }

    /// Locks the journal from a thread that may block: a thread of its
    /// own, a `spawn_blocking` closure, or code outside any runtime.
    ///
    /// # Panics
    /// On an async worker (inside a task or `block_on`): journal I/O there
    /// would stall every task of that worker; use [`SharedJournal::run`].
    pub fn blocking(&self) -> tokio::sync::MutexGuard<'_, Journal> {
        self.inner.blocking_lock()
    }
}

impl Journal {
    /// Opens (creating if needed) the journal in `state_dir`.
    pub fn open(state_dir: &Path) -> Result<Journal, JournalError> {
        std::fs::create_dir_all(state_dir).map_err(|source| JournalError::CreateDir {
            dir: state_dir.to_owned(),
            source,
        })?;
        let file = state_dir.join(FILE_NAME);
        let err = |source| JournalError::Sqlite {
            file: file.clone(),
            source,
        };
        let conn = Connection::open(&file).map_err(err)?;
        conn.busy_timeout(Duration::from_secs(5)).map_err(err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(err)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(err)?;
        let mut j = Journal { conn, file };
        j.migrate()?;
        Ok(j)
    }

    /// Opens an existing journal read-only (for `otabridge status`, while the
    /// daemon runs).
    pub fn open_read_only(state_dir: &Path) -> Result<Journal, JournalError> {
        let file = state_dir.join(FILE_NAME);
        let err = |source| JournalError::Sqlite {
            file: file.clone(),
            source,
        };
        let conn = Connection::open_with_flags(
            &file,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(err)?;
        conn.busy_timeout(Duration::from_secs(5)).map_err(err)?;
        Ok(Journal { conn, file })
    }

    /// `source` as this journal's error (names the file).
    pub(crate) fn err(&self, source: rusqlite::Error) -> JournalError {
        JournalError::Sqlite {
            file: self.file.clone(),
            source,
        }
    }

    fn migrate(&mut self) -> Result<(), JournalError> {
        let version: i64 = self
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(|e| self.err(e))?;
        let known = MIGRATIONS.len() as i64;
        if version > known {
            return Err(JournalError::TooNew {
                file: self.file.clone(),
                found: version,
                known,
            });
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            let tx = self.conn.transaction().map_err(|e| JournalError::Sqlite {
                file: self.file.clone(),
                source: e,
            })?;
            tx.execute_batch(sql)
                .and_then(|_| tx.pragma_update(None, "user_version", (i + 1) as i64))
                .and_then(|_| tx.commit())
                .map_err(|source| JournalError::Sqlite {
                    file: self.file.clone(),
                    source,
                })?;
        }
        Ok(())
    }

    /// The journal file.
    pub fn file(&self) -> &Path {
        &self.file
    }

    /// Appends a report to the outbox (durable when this returns).
    pub fn outbox_push(
        &mut self,
        topic: &str,
        payload: &[u8],
        now_unix: i64,
    ) -> Result<i64, JournalError> {
        self.conn
            .execute(
                "INSERT INTO outbox (topic, payload, created_unix) VALUES (?1, ?2, ?3)",
                params![topic, payload, now_unix],
            )
            .map_err(|e| self.err(e))?;
        Ok(self.conn.last_insert_rowid())
    }

    /// Up to `limit` queued reports with an id above `after`, oldest first.
    pub fn outbox_after(&self, after: i64, limit: usize) -> Result<Vec<OutboxEntry>, JournalError> {
        let mut st = self
            .conn
            .prepare_cached(
                "SELECT id, topic, payload FROM outbox WHERE id > ?1 ORDER BY id LIMIT ?2",
            )
            .map_err(|e| self.err(e))?;
        let rows = st
            .query_map(params![after, limit as i64], |r| {
                Ok(OutboxEntry {
                    id: r.get(0)?,
                    topic: r.get(1)?,
                    payload: r.get(2)?,
                })
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(|e| self.err(e))
    }

    /// Removes a report the broker acknowledged.
    pub fn outbox_delete(&mut self, id: i64) -> Result<(), JournalError> {
        self.conn
            .execute("DELETE FROM outbox WHERE id = ?1", [id])
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Reports still waiting for a PUBACK.
    pub fn outbox_len(&self) -> Result<u64, JournalError> {
        self.conn
            .query_row("SELECT COUNT(*) FROM outbox", [], |r| r.get::<_, i64>(0))
            .map(|n| n as u64)
            .map_err(|e| self.err(e))
    }

    /// Records a child's health check (and the version read, when one was).
    pub fn child_seen(
        &mut self,
        device_id: &str,
        transport: &str,
        version: Option<&str>,
        online: bool,
        error: Option<&str>,
        now_unix: i64,
    ) -> Result<(), JournalError> {
        self.conn
            .execute(
                "INSERT INTO children (device_id, transport, version, online, last_seen_unix, last_error)
                 VALUES (?1, ?2, ?3, ?4, CASE WHEN ?4 THEN ?5 END, ?6)
                 ON CONFLICT(device_id) DO UPDATE SET
                   transport = excluded.transport,
                   version = COALESCE(excluded.version, children.version),
                   online = excluded.online,
                   last_seen_unix = COALESCE(excluded.last_seen_unix, children.last_seen_unix),
                   last_error = excluded.last_error",
                params![device_id, transport, version, online, now_unix, error],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Every child the journal knows, by device id.
    pub fn children(&self) -> Result<Vec<ChildRow>, JournalError> {
        let mut st = self
            .conn
            .prepare_cached(
                "SELECT device_id, transport, version, online, last_seen_unix, last_error
                 FROM children ORDER BY device_id",
            )
            .map_err(|e| self.err(e))?;
        let rows = st
            .query_map([], |r| {
                Ok(ChildRow {
                    device_id: r.get(0)?,
                    transport: r.get(1)?,
                    version: r.get(2)?,
                    online: r.get(3)?,
                    last_seen_unix: r.get(4)?,
                    last_error: r.get(5)?,
                })
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(|e| self.err(e))
    }

    /// Reads a `meta` value.
    pub fn meta_get(&self, key: &str) -> Result<Option<String>, JournalError> {
        self.conn
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()
            .map_err(|e| self.err(e))
    }

    /// Writes a `meta` value.
    pub fn meta_set(&mut self, key: &str, value: &str) -> Result<(), JournalError> {
        self.conn
            .execute(
                "INSERT INTO meta (key, value) VALUES (?1, ?2)
                 ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                params![key, value],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// The connection, for modules that keep their own tables.
    pub fn connection(&mut self) -> &mut Connection {
        &mut self.conn
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outbox_survives_reopen_in_order() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut j = Journal::open(dir.path()).unwrap();
            for i in 0..5 {
                j.outbox_push("t", format!("m{i}").as_bytes(), 0).unwrap();
            }
            j.outbox_delete(2).unwrap();
        }
        let j = Journal::open(dir.path()).unwrap();
        let all = j.outbox_after(0, 100).unwrap();
        let names: Vec<_> = all
            .iter()
            .map(|e| String::from_utf8(e.payload.clone()).unwrap())
            .collect();
        assert_eq!(names, ["m0", "m2", "m3", "m4"]);
        assert_eq!(j.outbox_after(3, 1).unwrap()[0].id, 4);
        assert_eq!(j.outbox_len().unwrap(), 4);
    }

    #[test]
    fn children_keep_last_known_version() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::open(dir.path()).unwrap();
        j.child_seen("c1", "sim", Some("1.0"), true, None, 100)
            .unwrap();
        j.child_seen("c1", "sim", None, false, Some("timeout"), 200)
            .unwrap();
        let rows = j.children().unwrap();
        assert_eq!(rows[0].version.as_deref(), Some("1.0"));
        assert!(!rows[0].online);
        assert_eq!(rows[0].last_seen_unix, Some(100));
        assert_eq!(rows[0].last_error.as_deref(), Some("timeout"));
        let ro = Journal::open_read_only(dir.path()).unwrap();
        assert_eq!(ro.children().unwrap().len(), 1);
    }

    /// A connection of its own that holds the journal's write lock until
    /// `release` says, so that a write through the shared handle waits.
    fn hold_write_lock(
        dir: &Path,
        release: std::sync::mpsc::Receiver<()>,
    ) -> std::thread::JoinHandle<()> {
        let (locked_tx, locked) = std::sync::mpsc::channel();
        let file = dir.join(FILE_NAME);
        let holder = std::thread::spawn(move || {
            let mut c = Connection::open(&file).unwrap();
            let tx = c
                .transaction_with_behavior(rusqlite::TransactionBehavior::Exclusive)
                .unwrap();
            locked_tx.send(()).unwrap();
            release.recv().unwrap();
            tx.commit().unwrap();
        });
        locked.recv().unwrap();
        holder
    }

    /// On a current-thread runtime every task shares one thread: a write
    /// that waits for SQLite's lock must leave the other tasks running (the
    /// one that lets the lock go, here). Run on the async worker, the write
    /// would hold that thread until its busy timeout ran out, and fail.
    #[test]
    fn a_write_waits_off_the_async_worker() {
        let dir = tempfile::tempdir().unwrap();
        let shared = SharedJournal::open(dir.path()).unwrap();
        let (release, released) = std::sync::mpsc::channel();
        let holder = hold_write_lock(dir.path(), released);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let j = shared.clone();
            let write = tokio::spawn(async move { j.run(|j| j.meta_set("k", "v")).await });
            // The write starts, and waits for the lock.
            for _ in 0..10 {
                tokio::task::yield_now().await;
            }
            assert!(
                !write.is_finished(),
                "the write ended while another connection held the lock: {:?}",
                write.await
            );
            release.send(()).unwrap();
            write.await.unwrap().unwrap();
        });
        holder.join().unwrap();
        assert_eq!(
            shared.blocking().meta_get("k").unwrap().as_deref(),
            Some("v")
        );
    }

    /// Paused tokio time does not jump while a write waits for the disk: a
    /// timer racing the write does not fire early.
    #[tokio::test(start_paused = true)]
    async fn paused_time_stands_while_a_write_runs() {
        let dir = tempfile::tempdir().unwrap();
        let shared = SharedJournal::open(dir.path()).unwrap();
        let (release, released) = std::sync::mpsc::channel();
        let holder = hold_write_lock(dir.path(), released);
        let letgo = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            release.send(()).unwrap();
        });
        let start = tokio::time::Instant::now();
        let w = tokio::time::timeout(Duration::from_secs(1), shared.run(|j| j.meta_set("k", "v")))
            .await;
        assert!(matches!(w, Ok(Ok(()))), "{w:?}");
        assert_eq!(tokio::time::Instant::now(), start);
        letgo.join().unwrap();
        holder.join().unwrap();
    }

    /// One caller's operations are applied in the order it issued them,
    /// whatever other callers do meanwhile.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn each_callers_writes_keep_their_order() {
        let dir = tempfile::tempdir().unwrap();
        let shared = SharedJournal::open(dir.path()).unwrap();
        let mut tasks = Vec::new();
        for c in 0..4 {
            let j = shared.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..25 {
                    let p = format!("{c}:{i}");
                    j.run(move |j| j.outbox_push("t", p.as_bytes(), 0))
                        .await
                        .unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let rows = shared.run(|j| j.outbox_after(0, 1000)).await.unwrap();
        assert_eq!(rows.len(), 100);
        for c in 0..4 {
            let mine: Vec<String> = rows
                .iter()
                .map(|r| String::from_utf8(r.payload.clone()).unwrap())
                .filter(|p| p.starts_with(&format!("{c}:")))
                .collect();
            let want: Vec<String> = (0..25).map(|i| format!("{c}:{i}")).collect();
            assert_eq!(mine, want);
        }
    }

    #[tokio::test]
    #[should_panic(expected = "Cannot block the current thread")]
    async fn blocking_access_is_refused_on_an_async_worker() {
        let dir = tempfile::tempdir().unwrap();
        let shared = SharedJournal::open(dir.path()).unwrap();
        let _ = shared.blocking().outbox_len();
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let j = Journal::open(dir.path()).unwrap();
            j.conn.pragma_update(None, "user_version", 99).unwrap();
        }
        let e = Journal::open(dir.path()).unwrap_err();
        assert!(matches!(e, JournalError::TooNew { found: 99, .. }), "{e}");
    }
}
