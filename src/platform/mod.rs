//! The link to IoTDA: one MQTT session as the gateway device, and the durable
//! outbox every upstream report goes through.
//!
//! - [`Platform`] is the handle the rest of the daemon uses: `report()` writes
//!   an event to the journal's outbox and wakes the session. It never blocks
//!   on the network and never loses a report to a disconnect or a crash.
//! - [`Session`] owns the connection: connect (TLS, credentials), subscribe,
//!   publish the outbox in order at QoS 1, delete each row when its PUBACK
//!   arrives, hand inbound publishes to the daemon, and reconnect with backoff.
//!
//! Each connection gets a fresh rumqttc `EventLoop` with a clean session, so
//! no state leaks between connections: after a reconnect or a restart the
//! outbox is simply sent again from its oldest row (at-least-once, as QoS 1).

mod session;

pub use session::{Inbound, Session};

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use otabridge_codecs::iotda::{event, topic, Event, EventTime};
use tokio::sync::{watch, Notify};

use crate::clock::now_unix;
use crate::journal::{Journal, JournalError, SharedJournal};
use tracing::{info, warn};

/// Whether the session is connected, as the daemon and `status` see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    /// Not connected (starting, backing off, or refused).
    Down,
    /// CONNACK received.
    Up,
}

#[derive(Debug)]
struct Inner {
    device_id: String,
    journal: SharedJournal,
    wake: Notify,
    link: watch::Sender<LinkState>,
    /// Reports the journal could not take because its disk was full, oldest
    /// first; every later report waits behind them, so that the order per
    /// child holds. Touched only inside journal operations (which run one
    /// at a time), so that moving them to the outbox and queueing a new
    /// report never interleave.
    held: Mutex<VecDeque<Prepared>>,
    /// Its length, for async readers: the lock is held across journal
    /// writes (fsync), which no async worker may wait for.
    held_len: AtomicUsize,
}

impl Inner {
    /// The held reports; the guard keeps `held_len` up to date on drop.
    fn held(&self) -> HeldGuard<'_> {
        HeldGuard {
            queue: self.held.lock().unwrap_or_else(|p| p.into_inner()),
            len: &self.held_len,
        }
    }
}

/// [`Inner::held`]'s guard.
struct HeldGuard<'a> {
    queue: MutexGuard<'a, VecDeque<Prepared>>,
    len: &'a AtomicUsize,
}

impl std::ops::Deref for HeldGuard<'_> {
    type Target = VecDeque<Prepared>;
    fn deref(&self) -> &Self::Target {
        &self.queue
    }
}

impl std::ops::DerefMut for HeldGuard<'_> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.queue
    }
}

impl Drop for HeldGuard<'_> {
    fn drop(&mut self) {
        self.len.store(self.queue.len(), Ordering::Release);
    }
}

/// The daemon's handle on the platform link. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Platform {
    inner: Arc<Inner>,
}

impl Platform {
    /// A handle for gateway `device_id`, queueing into `journal`.
    pub fn new(device_id: &str, journal: SharedJournal) -> Self {
        Platform {
            inner: Arc::new(Inner {
                device_id: device_id.to_owned(),
                journal,
                wake: Notify::new(),
                link: watch::Sender::new(LinkState::Down),
                held: Mutex::default(),
                held_len: AtomicUsize::new(0),
            }),
        }
    }

    /// The gateway's device id.
    pub fn gateway_id(&self) -> &str {
        &self.inner.device_id
    }

    /// Queues an event for the platform: durable when this returns (the
    /// outbox row is committed, off the async workers), unless the
    /// journal's disk is full: then the report is held in memory, behind
    /// any held before it, and moved to the outbox once the journal can
    /// grow ([`Platform::flush_held`], which the session calls while held
    /// reports remain). A held report is lost only if the process ends
    /// before space returns.
    /// `object_device_id` is the child's id, or `None` for the gateway itself.
    pub async fn report(
        &self,
        object_device_id: Option<&str>,
        ev: &Event,
    ) -> Result<(), JournalError> {
        self.queue(self.prepare(object_device_id, ev)).await
    }

    /// [`Platform::report`] with an `event_id`, for a request whose
    /// response the platform matches to it (`add_sub_device_request`,
    /// docs/protocols/iotda.md §3 "`event_id`", §5.5).
    pub async fn report_with_id(
        &self,
        object_device_id: Option<&str>,
        ev: &Event,
        event_id: &str,
    ) -> Result<(), JournalError> {
        let now = now_unix();
        let r = Prepared {
            topic: topic::events_up(&self.inner.device_id),
            payload: event::encode(
                object_device_id,
                ev,
                EventTime::from_unix(now),
                Some(event_id),
            ),
            now,
        };
        self.queue(r).await
    }

    /// Queues a prepared report (see [`Platform::report`]).
    async fn queue(&self, r: Prepared) -> Result<(), JournalError> {
        let inner = self.inner.clone();
        let held = self
            .inner
            .journal
            .run(move |j| {
                let mut held = inner.held();
                if held.is_empty() {
                    match r.push(j) {
                        Ok(()) => return Ok(None),
                        Err(e) if e.is_disk_full() => {
                            held.push_back(r);
                            return Ok(Some(e));
                        }
                        Err(e) => return Err(e),
                    }
                }
                held.push_back(r);
                let _ = Self::move_held(j, &mut held);
                Ok(None)
            })
            .await?;
        if let Some(e) = held {
            warn!(
                "the journal cannot grow ({e}): reports wait in memory until the disk of \
                 state.dir has room"
            );
        }
        self.queued();
        Ok(())
    }

    /// Reports held in memory because the journal's disk was full (does
    /// not wait for a journal write in progress).
    pub fn held(&self) -> usize {
        self.inner.held_len.load(Ordering::Acquire)
    }

    /// Moves the reports held in memory to the outbox, oldest first, as far
    /// as the journal takes them; returns how many are still held.
    pub async fn flush_held(&self) -> usize {
        if self.held() == 0 {
            return 0;
        }
        let inner = self.inner.clone();
        let (moved, left) = self
            .inner
            .journal
            .run(move |j| {
                let mut held = inner.held();
                let before = held.len();
                let _ = Self::move_held(j, &mut held);
                (before - held.len(), held.len())
            })
            .await;
        if moved > 0 {
            info!(
                moved,
                left, "the journal has room again: held reports queued"
            );
            self.queued();
        }
        left
    }

    /// Pushes `held` to the outbox of `j` from the oldest, each in its own
    /// write, until one fails.
    fn move_held(j: &mut Journal, held: &mut VecDeque<Prepared>) -> Result<(), JournalError> {
        while let Some(r) = held.front() {
            r.push(j)?;
            held.pop_front();
        }
        Ok(())
    }

    /// Runs `write` and queues `report` in one journal transaction (a job's
    /// end and its report: a kill between two operations lost the report,
    /// issue 17 item 1), behind the reports held in memory, which the same
    /// transaction moves to the outbox first. Nothing is written when it
    /// fails ([`JournalError::is_disk_full`]: the caller tries again later).
    pub async fn commit_with_report<F>(
        &self,
        report: Prepared,
        write: F,
    ) -> Result<(), JournalError>
    where
        F: FnOnce(&mut Journal) -> Result<(), JournalError> + Send + 'static,
    {
        let inner = self.inner.clone();
        self.inner
            .journal
            .run(move |j| {
                let mut held = inner.held();
                let sql = |j: &mut Journal, sql: &str| {
                    j.connection().execute_batch(sql).map_err(|e| j.err(e))
                };
                sql(j, "BEGIN IMMEDIATE")?;
                let r = held
                    .iter()
                    .try_for_each(|h| h.push(j))
                    .and_then(|()| write(j))
                    .and_then(|()| report.push(j))
                    .and_then(|()| sql(j, "COMMIT"));
                match r {
                    Ok(()) => {
                        held.clear();
                        Ok(())
                    }
                    Err(e) => {
                        // A failed COMMIT may leave the transaction open.
                        if !j.connection().is_autocommit() {
                            let _ = sql(j, "ROLLBACK");
                        }
                        Err(e)
                    }
                }
            })
            .await?;
        self.queued();
        Ok(())
    }

    /// A report encoded now, for [`Platform::commit_with_report`], or for
    /// [`Prepared::push`] inside another journal transaction (then call
    /// [`Platform::queued`] once it commits; such a push does not wait
    /// behind reports held in memory on a full disk).
    pub fn prepare(&self, object_device_id: Option<&str>, ev: &Event) -> Prepared {
        let now = now_unix();
        Prepared {
            topic: topic::events_up(&self.inner.device_id),
            payload: event::encode(object_device_id, ev, EventTime::from_unix(now), None),
            now,
        }
    }

    /// Wakes the session after [`Prepared::push`] committed.
    pub fn queued(&self) {
        self.inner.wake.notify_one();
    }

    /// Reports queued and not yet acknowledged by the broker.
    pub async fn outbox_len(&self) -> Result<u64, JournalError> {
        self.inner.journal.run(|j| j.outbox_len()).await
    }

    /// The outbox's journal, for the session.
    fn journal(&self) -> &SharedJournal {
        &self.inner.journal
    }

    /// Follows the link state.
    pub fn link_state(&self) -> watch::Receiver<LinkState> {
        self.inner.link.subscribe()
    }

    fn set_link(&self, s: LinkState) {
        self.inner.link.send_replace(s);
    }

    async fn woken(&self) {
        self.inner.wake.notified().await
    }
}

/// A report encoded for the outbox ([`Platform::prepare`]).
#[derive(Debug, Clone)]
pub struct Prepared {
    topic: String,
    payload: Vec<u8>,
    now: i64,
}

impl Prepared {
    /// Writes the report to the outbox of `j`: durable once the journal
    /// operation (and the transaction it is in, if any) commits.
    pub fn push(&self, j: &mut crate::journal::Journal) -> Result<(), JournalError> {
        j.outbox_push(&self.topic, &self.payload, self.now)
            .map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use otabridge_codecs::iotda::event::ProgressReport;
    use otabridge_codecs::iotda::ResultCode;

    fn progress(pct: u8, description: &str) -> Event {
        Event::ProgressReport(ProgressReport {
            result_code: ResultCode::SUCCESS,
            progress: Some(pct),
            version: "1.0".into(),
            description: Some(description.into()),
        })
    }

    /// Caps the journal at the pages it has (SQLite's `max_page_count`):
    /// a write that needs a new page fails with SQLITE_FULL, as on a full
    /// disk; `None` lifts the cap.
    async fn cap(j: &SharedJournal, on: bool) {
        j.run(move |j| {
            let c = j.connection();
            let pages: i64 = c.query_row("PRAGMA page_count", [], |r| r.get(0))?;
            let max = if on { pages } else { 1 << 30 };
            c.query_row(&format!("PRAGMA max_page_count = {max}"), [], |_| Ok(()))
        })
        .await
        .unwrap();
    }

    fn outbox(j: &mut Journal) -> Vec<u8> {
        j.outbox_after(0, 100)
            .unwrap()
            .iter()
            .map(|e| {
                let v: serde_json::Value = serde_json::from_slice(&e.payload).unwrap();
                v["services"][0]["paras"]["progress"].as_u64().unwrap() as u8
            })
            .collect()
    }

    #[tokio::test]
    async fn reports_wait_in_memory_in_order_while_the_journal_cannot_grow() {
        let dir = tempfile::tempdir().unwrap();
        let j = SharedJournal::open(dir.path()).unwrap();
        let p = Platform::new("gw", j.clone());
        p.report(Some("c"), &progress(5, "fits")).await.unwrap();
        cap(&j, true).await;
        // Larger than a page: it needs a new one, which the journal refuses.
        let big = "x".repeat(16 * 1024);
        p.report(Some("c"), &progress(10, &big)).await.unwrap();
        assert_eq!(p.held(), 1);
        // A small one waits behind it (order per child), though it may fit.
        p.report(Some("c"), &progress(20, "small")).await.unwrap();
        assert_eq!(p.held(), 2);
        assert_eq!(p.flush_held().await, 2, "still no room");
        // A job's end and its report: nothing is written while held
        // reports cannot go first.
        let end = p.prepare(Some("c"), &progress(100, "end"));
        let e = p
            .commit_with_report(end.clone(), |_| Ok(()))
            .await
            .unwrap_err();
        assert!(e.is_disk_full(), "{e}");
        assert_eq!(j.run(outbox).await, [5]);
        // Room again: the end's transaction moves the held reports first.
        cap(&j, false).await;
        p.commit_with_report(end, |_| Ok(())).await.unwrap();
        assert_eq!(p.held(), 0);
        assert_eq!(j.run(outbox).await, [5, 10, 20, 100]);
        // And the session's flush moves them too.
        cap(&j, true).await;
        p.report(Some("c"), &progress(100, &big)).await.unwrap();
        assert_eq!(p.held(), 1);
        cap(&j, false).await;
        assert_eq!(p.flush_held().await, 0);
        assert_eq!(j.run(outbox).await, [5, 10, 20, 100, 100]);
    }
}
