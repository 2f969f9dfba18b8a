//! Runs upgrade jobs: one task per child job, driving [`Machine`] through
//! the package store and the child's driver, persisting every transition.
//!
//! - IoTDA semantics (docs/protocols/iotda.md §4): a child already at the target version
//!   succeeds without a download; a repeated event for the running job (same
//!   version and sign: an MQTT redelivery) changes nothing; a different one
//!   is answered with result 1 "Task Conflict"; all children of a batch
//!   share one download (the store is keyed by SHA-256).
//! - Scheduling: at most `ota.max_concurrent_jobs` jobs run at once, FIFO
//!   (tokio's semaphore is fair); drivers serialise their own buses (one
//!   transfer per serial port, a cap per CoAP network). One child's failure
//!   never touches another's task.
//! - Crash safety: on start, every job the journal holds as active resumes
//!   from its phase: the download from its durable length (the store), the
//!   delivery from its checkpointed offset, an activation by reading the
//!   version first.
//! - Every job ends with a terminal report before its deadline (24 h after
//!   the event or the token's expiry, less a margin to publish the report).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use otabridge_codecs::iotda::event::ProgressReport;
use otabridge_codecs::iotda::{result, Event, ResultCode, Upgrade, UpgradeKind};
use otabridge_codecs::version::Mode;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tracing::{info, warn};

use super::job::{Effects, Input, Limits, Machine, Phase, Work};
use super::jobs_db::{self, JobRow};
use crate::backoff::Backoff;
use crate::child::{Child, ChildError, Package};
use crate::config::OtaConfig;
use crate::journal;
use crate::metrics::{Metrics, Resume};
use crate::package::{PackageRequest, PackageStore};
use crate::platform::{now_unix, Platform};

/// Time kept before the deadline to publish the terminal report.
const DEADLINE_MARGIN: Duration = Duration::from_secs(120);

/// Phase timeouts and retry pacing.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// Reading a version.
    pub version_read: Duration,
    /// Until the first delivery progress of an attempt (flash erase).
    pub first_chunk: Duration,
    /// Between two delivery progress updates.
    pub chunk: Duration,
    /// Activation, including the reboot.
    pub activation: Duration,
    /// Backoff between retries: first step.
    pub retry_min: Duration,
    /// Backoff between retries: cap.
    pub retry_max: Duration,
}

impl Timeouts {
    /// From the `[ota]` section.
    pub fn from_config(c: &OtaConfig) -> Self {
        Timeouts {
            version_read: Duration::from_secs(c.version_read_timeout_secs),
            first_chunk: Duration::from_secs(c.first_chunk_timeout_secs),
            chunk: Duration::from_secs(c.chunk_timeout_secs),
            activation: Duration::from_secs(c.activation_timeout_secs),
            retry_min: Duration::from_millis(c.retry_min_ms),
            retry_max: Duration::from_millis(c.retry_max_ms),
        }
    }
}

#[derive(Debug)]
struct Inner {
    platform: Platform,
    store: PackageStore,
    children: HashMap<String, Arc<dyn Child>>,
    limits: Limits,
    timeouts: Timeouts,
    mode: Mode,
    metrics: Metrics,
    slots: Semaphore,
    /// Each child on a shared bus ([`Child::bus`]) and its bus's turn: one
    /// operation at a time, FIFO. Children have one bus for life.
    buses: HashMap<String, (String, Arc<Semaphore>)>,
    /// Jobs running in this process, by child.
    running: Mutex<HashMap<String, i64>>,
    /// Their tasks, so that a stop ends them (they resume from the journal).
    tasks: Mutex<Vec<tokio::task::AbortHandle>>,
    /// Checks of a package before a byte goes to the child (issue 14).
    gate: std::sync::OnceLock<Arc<crate::image::Gate>>,
}

/// The upgrade engine. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

fn unix_to_system(t: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(t.max(0) as u64)
}

impl Engine {
    /// An engine reporting through `platform`, fetching through `store`,
    /// counting into `metrics`.
    pub fn new(
        platform: Platform,
        store: PackageStore,
        children: &[Arc<dyn Child>],
        cfg: &OtaConfig,
        metrics: Metrics,
    ) -> Self {
        let mut by_bus: HashMap<String, Arc<Semaphore>> = HashMap::new();
        let buses = children
            .iter()
            .filter_map(|c| {
                let bus = c.bus()?;
                let turn = by_bus
                    .entry(bus.clone())
                    .or_insert_with(|| Arc::new(Semaphore::new(1)))
                    .clone();
                Some((c.device_id().to_owned(), (bus, turn)))
            })
            .collect();
        let limits = Limits {
            max_retries: cfg.max_retries,
            ..Limits::default()
        };
        Engine {
            inner: Arc::new(Inner {
                platform,
                store,
                children: children
                    .iter()
                    .map(|c| (c.device_id().to_owned(), c.clone()))
                    .collect(),
                limits,
                timeouts: Timeouts::from_config(cfg),
                mode: if cfg.exact_versions {
                    Mode::Exact
                } else {
                    Mode::Normalised
                },
                metrics,
                slots: Semaphore::new(cfg.max_concurrent_jobs),
                buses,
                running: Mutex::default(),
                tasks: Mutex::default(),
                gate: std::sync::OnceLock::new(),
            }),
        }
    }

    /// Checks each package with `gate` between the download and the
    /// delivery (src/image). Set once, before jobs run; later calls are
    /// ignored.
    pub fn set_image_gate(&self, gate: crate::image::Gate) {
        let _ = self.inner.gate.set(Arc::new(gate));
    }

    /// Resumes every job the journal holds as active (after a restart).
    pub fn resume(&self) {
        let rows = {
            let mut j = journal::lock(self.inner.platform.journal());
            jobs_db::active(&mut j, self.inner.limits, self.inner.mode)
        };
        match rows {
            Ok(rows) => {
                for row in rows {
                    info!(
                        child = %row.device_id, job = row.id, phase = row.machine.phase.as_str(),
                        offset = row.machine.offset, "resuming job from the journal"
                    );
                    self.inner.metrics.resumed(Resume::Job);
                    self.spawn(row);
                }
            }
            Err(e) => warn!("cannot read jobs from the journal: {e}"),
        }
    }

    fn report(&self, device_id: &str, r: ProgressReport) {
        if let Err(e) = self
            .inner
            .platform
            .report(Some(device_id), &Event::ProgressReport(r))
        {
            warn!(
                child = device_id,
                "cannot queue upgrade_progress_report: {e}"
            );
        }
    }

    /// Takes an upgrade event for child `device_id`.
    pub fn submit(&self, device_id: &str, kind: UpgradeKind, v2: bool, upgrade: Upgrade) {
        let now = now_unix();
        let mut j = journal::lock(self.inner.platform.journal());
        let latest = match jobs_db::latest(&mut j, device_id, self.inner.limits, self.inner.mode) {
            Ok(l) => l,
            Err(e) => {
                warn!(child = device_id, "journal: {e}");
                return;
            }
        };
        if let Some(active) = latest.filter(|r| !r.machine.phase.is_terminal()) {
            let same_sign = match (&active.upgrade.sign, &upgrade.sign) {
                (Some(a), Some(b)) => a.eq_ignore_ascii_case(b),
                (None, None) => active.upgrade.url == upgrade.url,
                _ => false,
            };
            drop(j);
            if active.upgrade.version == upgrade.version && same_sign {
                info!(
                    child = device_id,
                    job = active.id,
                    "repeated upgrade event for the running job; ignored"
                );
            } else {
                warn!(
                    child = device_id,
                    job = active.id,
                    "upgrade to {} refused: an upgrade to {} is in progress",
                    upgrade.version,
                    active.upgrade.version
                );
                self.report(
                    device_id,
                    ProgressReport {
                        result_code: ResultCode::BUSY,
                        progress: None,
                        version: active.machine.current_version.clone().unwrap_or_default(),
                        description: Some(format!(
                            "{}: an upgrade to {} is in progress",
                            result::DESC_TASK_CONFLICT,
                            active.upgrade.version
                        )),
                    },
                );
            }
            return;
        }
        // The package store's rule (24 h, or less when `expires` says so)
        // is the job's deadline too.
        let deadline = PackageRequest::from_upgrade(&upgrade, v2, unix_to_system(now))
            .deadline
            .duration_since(UNIX_EPOCH)
            .map_or(now, |d| d.as_secs() as i64);
        let id = match jobs_db::insert(&mut j, device_id, kind, v2, &upgrade, now, deadline) {
            Ok(id) => id,
            Err(e) => {
                warn!(child = device_id, "journal: {e}");
                return;
            }
        };
        drop(j);
        info!(child = device_id, job = id, target = %upgrade.version, "upgrade job accepted");
        let machine = Machine::new(
            &upgrade.version,
            upgrade.file_size,
            self.inner.mode,
            self.inner.limits,
        );
        self.spawn(JobRow {
            id,
            device_id: device_id.to_owned(),
            kind,
            v2,
            upgrade,
            received_unix: now,
            deadline_unix: deadline,
            machine,
            activations: 0,
        });
    }

    fn spawn(&self, row: JobRow) {
        {
            let mut running = self.inner.running.lock().unwrap_or_else(|p| p.into_inner());
            if running.get(&row.device_id) == Some(&row.id) {
                return;
            }
            running.insert(row.device_id.clone(), row.id);
        }
        let me = self.clone();
        let task = tokio::spawn(async move {
            let device = row.device_id.clone();
            let id = row.id;
            me.run(row).await;
            let mut running = me.inner.running.lock().unwrap_or_else(|p| p.into_inner());
            if running.get(&device) == Some(&id) {
                running.remove(&device);
            }
        });
        let mut tasks = self.inner.tasks.lock().unwrap_or_else(|p| p.into_inner());
        tasks.retain(|t| !t.is_finished());
        tasks.push(task.abort_handle());
    }

    /// Child jobs running in this process (waiting for a slot included): the
    /// gateway's own install waits until there are none (src/gateway).
    pub fn active_jobs(&self) -> usize {
        self.inner
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    /// Stops every job where it is, as a power cut would: each one resumes
    /// from the journal on the next start.
    pub fn shutdown(&self) {
        let tasks =
            std::mem::take(&mut *self.inner.tasks.lock().unwrap_or_else(|p| p.into_inner()));
        for t in tasks {
            t.abort();
        }
        let stopped =
            std::mem::take(&mut *self.inner.running.lock().unwrap_or_else(|p| p.into_inner()));
        for job in stopped.values() {
            self.inner.metrics.job_stopped(*job);
        }
    }

    /// Applies effects: persist, report, and back off when asked.
    async fn apply(&self, row: &JobRow, e: Effects, backoff: &mut Backoff) {
        if e.persist {
            let mut j = journal::lock(self.inner.platform.journal());
            if let Err(err) =
                jobs_db::save(&mut j, row.id, &row.machine, row.activations, now_unix())
            {
                warn!(child = %row.device_id, "journal: {err}");
            }
        }
        if let Some(r) = e.report {
            self.report(&row.device_id, r);
        }
        if e.persist {
            // Every phase change is persisted; progress alone is not.
            self.inner.metrics.job_phase(row.id, row.machine.phase);
        }
        if e.backoff {
            self.inner.metrics.job_retry(&row.device_id);
            tokio::time::sleep(backoff.next_delay()).await;
        }
    }

    async fn run(&self, mut row: JobRow) {
        self.inner.metrics.job_phase(row.id, row.machine.phase);
        let _slot = self
            .inner
            .slots
            .acquire()
            .await
            .expect("the job semaphore is never closed");
        let Some(child) = self.inner.children.get(&row.device_id).cloned() else {
            let e = row.machine.handle(
                Input::Rejected {
                    code: ResultCode::INNER_ERROR,
                    description: format!("child {} is no longer configured", row.device_id),
                },
                now_unix(),
            );
            let mut b = Backoff::new(Duration::ZERO, Duration::ZERO, 0);
            self.apply(&row, e, &mut b).await;
            self.inner
                .metrics
                .job_finished(row.id, ResultCode::INNER_ERROR);
            return;
        };
        let job_key = format!("job-{}", row.id);
        let mut req =
            PackageRequest::from_upgrade(&row.upgrade, row.v2, unix_to_system(row.received_unix));
        req.deadline = unix_to_system(row.deadline_unix);
        let until_deadline = Duration::from_secs((row.deadline_unix - now_unix()).max(0) as u64)
            .saturating_sub(DEADLINE_MARGIN);
        let deadline = tokio::time::Instant::now() + until_deadline;
        let mut backoff = Backoff::new(
            self.inner.timeouts.retry_min,
            self.inner.timeouts.retry_max,
            row.id as u64,
        );
        let mut package: Option<Package> = None;
        loop {
            let work = row.machine.work();
            if work == Work::Done {
                break;
            }
            let step = self.perform(
                &mut row,
                &child,
                work,
                &job_key,
                &req,
                &mut package,
                &mut backoff,
            );
            let outcome = tokio::select! {
                o = step => o,
                _ = tokio::time::sleep_until(deadline) => Some(Input::DeadlinePassed),
            };
            if let Some(input) = outcome {
                let e = row.machine.handle(input, now_unix());
                self.apply(&row, e, &mut backoff).await;
            }
        }
        // The store keys the package by the request, fetched or not.
        if let Ok(key) = req.key() {
            self.inner.store.release(&job_key, &key);
        }
        let (code, desc) = row
            .machine
            .result
            .clone()
            .unwrap_or((ResultCode::INNER_ERROR, String::new()));
        self.inner.metrics.job_finished(row.id, code);
        info!(child = %row.device_id, job = row.id, code = code.get(), "job ended: {desc}");
    }

    /// Does one piece of work; returns the input to feed, or `None` when the
    /// inputs were already fed (delivery progress).
    #[allow(clippy::too_many_arguments)]
    async fn perform(
        &self,
        row: &mut JobRow,
        child: &Arc<dyn Child>,
        work: Work,
        job_key: &str,
        req: &PackageRequest,
        package: &mut Option<Package>,
        backoff: &mut Backoff,
    ) -> Option<Input> {
        let t = self.inner.timeouts;
        match work {
            Work::ReadVersion => {
                let _bus = self.bus_turn(child).await;
                Some(read_version(child, t.version_read).await)
            }
            Work::Download => match self.fetch(job_key, req, package).await {
                Ok(()) => Some(Input::Downloaded),
                Err(input) => Some(input),
            },
            Work::Deliver { from } => {
                if package.is_none() {
                    if let Err(input) = self.fetch(job_key, req, package).await {
                        return Some(input);
                    }
                }
                let pkg = package.clone().expect("fetched above");
                if let Some(gate) = self.inner.gate.get() {
                    let target = &row.machine.target;
                    if let Err(r) = gate.check_package(&row.device_id, &pkg.path, target).await {
                        warn!(child = %row.device_id, job = row.id, "{}", r.description);
                        return Some(Input::Rejected {
                            code: r.code,
                            description: r.description,
                        });
                    }
                }
                let _bus = self.bus_turn(child).await;
                if from > 0 {
                    self.inner.metrics.resumed(Resume::Delivery);
                }
                // Bytes acknowledged so far in this attempt, for the
                // delivered-bytes counter (a driver that restarts from 0
                // counts the bytes it sends again).
                let mut acked = from;
                let (tx, mut rx) = mpsc::unbounded_channel::<u64>();
                let cb = move |n: u64| {
                    let _ = tx.send(n);
                };
                let fut = child.deliver(&pkg, from, &cb);
                tokio::pin!(fut);
                let mut seen_progress = false;
                let result = loop {
                    let wait = if seen_progress {
                        t.chunk
                    } else {
                        t.first_chunk
                    };
                    tokio::select! {
                        r = &mut fut => break r,
                        Some(n) = rx.recv() => {
                            seen_progress = true;
                            self.inner.metrics.delivered(&row.device_id, n.saturating_sub(acked));
                            acked = n;
                            let e = row.machine.handle(Input::Progress(n), now_unix());
                            self.apply(row, e, backoff).await;
                        }
                        _ = tokio::time::sleep(wait) => {
                            break Err(ChildError::Unreachable(format!(
                                "no delivery progress for {} s", wait.as_secs()
                            )));
                        }
                    }
                };
                while let Ok(n) = rx.try_recv() {
                    self.inner
                        .metrics
                        .delivered(&row.device_id, n.saturating_sub(acked));
                    acked = n;
                    let e = row.machine.handle(Input::Progress(n), now_unix());
                    self.apply(row, e, backoff).await;
                }
                Some(match result {
                    Ok(()) => Input::Delivered,
                    Err(e) => child_input(e),
                })
            }
            Work::Activate => {
                // The bus for the whole read-activate sequence.
                let _bus = self.bus_turn(child).await;
                // Never activate blindly: a job resumed after a crash may have
                // activated already.
                match read_version(child, t.version_read).await {
                    Input::Version(v) if row.machine.phase == Phase::Activating => {
                        let e = row.machine.handle(Input::Version(v), now_unix());
                        self.apply(row, e, backoff).await;
                        if row.machine.phase != Phase::Activating {
                            return None;
                        }
                    }
                    other => return Some(other),
                }
                if package.is_none() {
                    if let Err(input) = self.fetch(job_key, req, package).await {
                        return Some(input);
                    }
                }
                let pkg = package.clone().expect("fetched above");
                row.activations += 1;
                {
                    // Count the activation before sending it.
                    let mut j = journal::lock(self.inner.platform.journal());
                    if let Err(e) =
                        jobs_db::save(&mut j, row.id, &row.machine, row.activations, now_unix())
                    {
                        warn!(child = %row.device_id, "journal: {e}");
                    }
                }
                info!(child = %row.device_id, job = row.id, "activating {}", pkg.version);
                Some(
                    match tokio::time::timeout(t.activation, child.activate(&pkg)).await {
                        Ok(Ok(())) => Input::Activated,
                        Ok(Err(e)) => child_input(e),
                        Err(_) => Input::Transient(format!(
                            "activation did not finish within {} s",
                            t.activation.as_secs()
                        )),
                    },
                )
            }
            Work::Done => None,
        }
    }

    /// Waits for `child`'s bus (when it shares one) and holds it until the
    /// permit is dropped. Phase timeouts start after this returns.
    async fn bus_turn(&self, child: &Arc<dyn Child>) -> Option<OwnedSemaphorePermit> {
        let (bus, turn) = self.inner.buses.get(child.device_id())?;
        if let Ok(p) = turn.clone().try_acquire_owned() {
            return Some(p);
        }
        info!(child = child.device_id(), %bus, "waiting for the bus: another child's operation holds it");
        turn.clone().acquire_owned().await.ok()
    }

    async fn fetch(
        &self,
        job_key: &str,
        req: &PackageRequest,
        package: &mut Option<Package>,
    ) -> Result<(), Input> {
        match self.inner.store.acquire(job_key, req).ready().await {
            Ok(p) => {
                *package = Some(p);
                Ok(())
            }
            Err(e) => Err(Input::DownloadFailed {
                code: e.result_code(),
                description: e.description(),
            }),
        }
    }
}

async fn read_version(child: &Arc<dyn Child>, within: Duration) -> Input {
    match tokio::time::timeout(within, child.read_version()).await {
        Ok(Ok(v)) => Input::Version(v),
        Ok(Err(e)) => child_input(e),
        Err(_) => Input::Transient(format!("no version within {} s", within.as_secs())),
    }
}

fn child_input(e: ChildError) -> Input {
    match e {
        ChildError::Rejected {
            result_code,
            description,
        } => Input::Rejected {
            code: result_code,
            description,
        },
        ChildError::Io(why) => Input::Rejected {
            code: ResultCode::INNER_ERROR,
            description: format!("gateway I/O error: {why}"),
        },
        other => Input::Transient(other.to_string()),
    }
}
