//! Runs upgrade jobs: one task per child job, driving [`Machine`] through
//! the package store and the child's driver, persisting every transition.
//!
//! - IoTDA semantics (docs/protocols/iotda.md §4): a child already at the target version
//!   succeeds without a download; a repeated event for the running job (same
//!   version and sign: an MQTT redelivery) changes nothing; a different one
//!   is answered with result 1 "Task Conflict"; all children of a batch
//!   share one download (the store is keyed by SHA-256).
//! - Scheduling: at most `ota.max_concurrent_jobs` jobs run at once, FIFO
//!   (tokio's semaphore is fair); each step of a job on a shared bus takes
//!   a turn from the bus queue ([`crate::child::bus`]) that the
//!   announcement and `version_query` use too; a CoAP network caps its own
//!   transfers. One child's failure
//!   never touches another's task.
//! - Crash safety: on start, every job the journal holds as active resumes
//!   from its phase: the download from its durable length (the store), the
//!   delivery from its checkpointed offset, an activation by reading the
//!   version first; a job past the reset confirms before it succeeds.
//! - Every job ends with a terminal report before its deadline (24 h after
//!   the event or the token's expiry, less a margin to publish the report).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use otabridge_codecs::iotda::event::ProgressReport;
use otabridge_codecs::iotda::{result, Event, ResultCode, Upgrade, UpgradeKind};
use otabridge_codecs::version::Policy;
use tokio::sync::{mpsc, Semaphore};
use tracing::{info, warn};

use super::control::{self, Gate, JobControl, Registry, Requests};
use super::halt::{self, HaltPolicy};
use super::job::{Effects, Input, Limits, Machine, Phase, Work};
use super::jobs_db::{self, JobRow};
use super::verdict::{verdict, Failure, FailureCause};
use super::window::Schedule;
use crate::child::bus::{Buses, Purpose, Turn};
use crate::child::{Child, ChildError, ErrorKind, Package, Roster, Step};
use crate::clock::{self, now_unix};
use crate::config::OtaConfig;
use crate::journal::{Journal, JournalError, SharedJournal};
use crate::metrics::{Metrics, Resume, Waiting};
use crate::package::{PackageRequest, PackageStore};
use crate::platform::Platform;
use crate::retry::{Backoff, RetryPolicy};

/// Time kept before the deadline to publish the terminal report.
const DEADLINE_MARGIN: Duration = Duration::from_secs(120);

/// When a job must end, on the engine's clock: its deadline less the time
/// kept for the terminal report.
fn job_deadline(row: &JobRow) -> tokio::time::Instant {
    clock::now() + clock::until(clock::from_unix(row.deadline_unix)).saturating_sub(DEADLINE_MARGIN)
}

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
    /// How a failed step is retried: `[ota] max_retries` failures in a
    /// row, backing off from `retry_min_ms` to `retry_max_ms` (seeded per
    /// job).
    pub retry: RetryPolicy,
}

impl Timeouts {
    /// From the `[ota]` section.
    pub fn from_config(c: &OtaConfig) -> Self {
        Timeouts {
            version_read: Duration::from_secs(c.version_read_timeout_secs),
            first_chunk: Duration::from_secs(c.first_chunk_timeout_secs),
            chunk: Duration::from_secs(c.chunk_timeout_secs),
            activation: Duration::from_secs(c.activation_timeout_secs),
            retry: RetryPolicy::new(
                c.max_retries,
                Duration::from_millis(c.retry_min_ms),
                Duration::from_millis(c.retry_max_ms),
            ),
        }
    }
}

#[derive(Debug)]
struct Inner {
    platform: Platform,
    /// Ota's own handle on the journal (the jobs table).
    journal: SharedJournal,
    store: PackageStore,
    /// The children, shared with the dispatcher (onboarding adds some).
    children: Roster,
    limits: Limits,
    timeouts: Timeouts,
    metrics: Metrics,
    slots: Semaphore,
    /// The bus queues ([`Child::bus`]), shared with the announcement and
    /// `version_query`: one operation per bus at a time, FIFO.
    buses: Buses,
    /// Jobs running in this process, by child.
    running: Mutex<HashMap<String, i64>>,
    /// Their tasks, so that a stop ends them (they resume from the journal).
    tasks: Mutex<Vec<tokio::task::AbortHandle>>,
    /// Checks of a package before a byte goes to the child (issue 14).
    gate: std::sync::OnceLock<Arc<crate::image::Gate>>,
    /// Operators' and policies' requests of running jobs (issue 15).
    controls: Registry,
    /// Halt on failures ([`halt`]).
    halt: HaltPolicy,
    /// Jobs this process let through the halt gate (until they end).
    admitted: tokio::sync::Mutex<std::collections::HashSet<i64>>,
    /// Bumped whenever a job ends or a task is released: jobs waiting at
    /// the halt gate look again.
    task_events: tokio::sync::watch::Sender<()>,
    /// Each child's activation window (`super::window`), set once before jobs
    /// run; a child without one activates at any time.
    windows: std::sync::OnceLock<HashMap<String, Schedule>>,
}

/// The upgrade engine. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

impl Engine {
    /// An engine reporting through `platform`, persisting its jobs in
    /// `journal`, fetching through `store`, taking bus turns from `buses`
    /// (built from the same `children`), counting into `metrics`.
    pub fn new(
        platform: Platform,
        journal: SharedJournal,
        store: PackageStore,
        children: &[Arc<dyn Child>],
        buses: Buses,
        cfg: &OtaConfig,
        metrics: Metrics,
    ) -> Self {
        let limits = Limits {
            max_retries: cfg.max_retries,
            ..Limits::default()
        };
        Engine {
            inner: Arc::new(Inner {
                platform,
                journal,
                store,
                children: Roster::new(children),
                limits,
                timeouts: Timeouts::from_config(cfg),
                metrics,
                slots: Semaphore::new(cfg.max_concurrent_jobs),
                buses,
                running: Mutex::default(),
                tasks: Mutex::default(),
                gate: std::sync::OnceLock::new(),
                controls: Registry::default(),
                halt: HaltPolicy {
                    failures: cfg.halt_failures,
                    first: cfg.halt_first,
                },
                admitted: tokio::sync::Mutex::default(),
                task_events: tokio::sync::watch::Sender::new(()),
                windows: std::sync::OnceLock::new(),
            }),
        }
    }

    /// Checks each package with `gate` between the download and the
    /// delivery (src/image). Set once, before jobs run; later calls are
    /// ignored.
    pub fn set_image_gate(&self, gate: crate::image::Gate) {
        let _ = self.inner.gate.set(Arc::new(gate));
    }

    /// Sets each child's activation window (by device id; issue 15 item
    /// 1). Set once, before jobs run; later calls are ignored.
    pub fn set_activation_windows(&self, windows: HashMap<String, Schedule>) {
        let _ = self.inner.windows.set(windows);
    }

    /// Resumes every job the journal holds as active (after a restart).
    pub async fn resume(&self) {
        let me = self.clone();
        let rows = self
            .inner
            .journal
            .run(move |j| jobs_db::active(j, me.inner.limits, &|id| me.version_policy(id)))
            .await;
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

    async fn report(&self, device_id: &str, r: ProgressReport) {
        if let Err(e) = self
            .inner
            .platform
            .report(Some(device_id), &Event::ProgressReport(r))
            .await
        {
            warn!(
                child = device_id,
                "cannot queue upgrade_progress_report: {e}"
            );
        }
    }

    /// How child `device_id` compares versions: its driver's policy (the
    /// child's `version_match`), the default for a child no longer
    /// configured (its job fails at once anyway).
    pub(super) fn version_policy(&self, device_id: &str) -> Policy {
        self.inner
            .children
            .get(device_id)
            .map_or_else(Policy::default, |c| c.version_policy())
    }

    /// Answers an upgrade event for child `device_id` that cannot be used
    /// (src/ota `Gateway::unusable`) with a failure report: `code` and
    /// `description`, and the version the child was last seen running (its
    /// last health check's, else its latest job's, else empty). No job is
    /// created: a running job goes on and reports for itself.
    pub async fn refuse(&self, device_id: &str, code: ResultCode, description: String) {
        let (me, id) = (self.clone(), device_id.to_owned());
        let version = self
            .inner
            .journal
            .run(move |j| {
                let seen = j
                    .children()
                    .ok()
                    .and_then(|rows| rows.into_iter().find(|c| c.device_id == id)?.version);
                seen.or_else(|| {
                    jobs_db::latest(j, &id, me.inner.limits, &|d| me.version_policy(d))
                        .ok()??
                        .machine
                        .current_version
                })
            })
            .await;
        self.report(
            device_id,
            ProgressReport {
                result_code: code,
                progress: None,
                version: version.unwrap_or_default(),
                description: Some(description),
            },
        )
        .await;
    }

    /// Takes an upgrade event for child `device_id`: a new job when the
    /// child has none active, else a repeat (ignored) or a conflict
    /// (answered "Task Conflict").
    pub async fn submit(&self, device_id: &str, kind: UpgradeKind, v2: bool, upgrade: Upgrade) {
        let now = now_unix();
        // The package store's rule (24 h, or less when `expires` says so)
        // is the job's deadline too.
        let deadline = clock::to_unix(
            PackageRequest::from_upgrade(&upgrade, v2, clock::from_unix(now)).deadline,
        );
        let admitted = {
            let (me, id, up) = (self.clone(), device_id.to_owned(), upgrade.clone());
            let job = move |j: &mut Journal| me.admit(j, &id, kind, v2, &up, now, deadline);
            self.inner.journal.run(job).await
        };
        let id = match admitted {
            Ok(Admission::New(id)) => id,
            Ok(Admission::Running(active)) => {
                return self.running(device_id, &active, &upgrade).await
            }
            Err(e) => return warn!(child = device_id, "journal: {e}"),
        };
        info!(child = device_id, job = id, target = %upgrade.version, "upgrade job accepted");
        let machine = Machine::new(
            &upgrade.version,
            upgrade.file_size,
            self.version_policy(device_id),
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

    /// In one journal operation (nothing is written between the read and
    /// the insert): the child's active job, or a new queued one.
    #[allow(clippy::too_many_arguments)]
    fn admit(
        &self,
        j: &mut Journal,
        device_id: &str,
        kind: UpgradeKind,
        v2: bool,
        upgrade: &Upgrade,
        now: i64,
        deadline: i64,
    ) -> Result<Admission, JournalError> {
        let latest = jobs_db::latest(j, device_id, self.inner.limits, &|id| {
            self.version_policy(id)
        })?;
        if let Some(active) = latest.filter(|r| !r.machine.phase.is_terminal()) {
            return Ok(Admission::Running(Box::new(active)));
        }
        jobs_db::insert(j, device_id, kind, v2, upgrade, now, deadline).map(Admission::New)
    }

    /// An upgrade event for a child whose job `active` runs: a repeat of
    /// its event (an MQTT redelivery) is ignored, another is refused with
    /// "Task Conflict".
    async fn running(&self, device_id: &str, active: &JobRow, upgrade: &Upgrade) {
        let same_sign = match (&active.upgrade.sign, &upgrade.sign) {
            (Some(a), Some(b)) => a.eq_ignore_ascii_case(b),
            (None, None) => active.upgrade.url == upgrade.url,
            _ => false,
        };
        if active.upgrade.version == upgrade.version && same_sign {
            info!(
                child = device_id,
                job = active.id,
                "repeated upgrade event for the running job; ignored"
            );
            return;
        }
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
        )
        .await;
    }

    pub(super) fn spawn(&self, row: JobRow) {
        {
            let mut running = self.inner.running.lock().unwrap_or_else(|p| p.into_inner());
            if running.get(&row.device_id) == Some(&row.id) {
                return;
            }
            running.insert(row.device_id.clone(), row.id);
        }
        // The journal's requests are loaded when the job starts (`run`).
        let committed = control::committed(row.machine.phase, row.activations);
        let ctl = self
            .inner
            .controls
            .register(row.id, Requests::default(), committed);
        let me = self.clone();
        let task = tokio::spawn(async move {
            let device = row.device_id.clone();
            let id = row.id;
            me.run(row, ctl).await;
            me.inner.controls.remove(id);
            me.inner.admitted.lock().await.remove(&id);
            me.tasks_changed();
            let mut running = me.inner.running.lock().unwrap_or_else(|p| p.into_inner());
            if running.get(&device) == Some(&id) {
                running.remove(&device);
            }
        });
        let mut tasks = self.inner.tasks.lock().unwrap_or_else(|p| p.into_inner());
        tasks.retain(|t| !t.is_finished());
        tasks.push(task.abort_handle());
    }

    /// The journal (the control API's reads and writes).
    pub(super) fn journal(&self) -> &SharedJournal {
        &self.inner.journal
    }

    /// The controls of the running jobs (the control API).
    pub(super) fn controls(&self) -> &Registry {
        &self.inner.controls
    }

    /// Wakes the jobs waiting at the halt gate.
    pub(super) fn tasks_changed(&self) {
        self.inner.task_events.send_replace(());
    }

    /// The halt gate before job `run`'s delivery ([`halt`]): go (the job
    /// is admitted), wait for another job of its task, or hold.
    async fn task_gate(&self, run: &Run) -> halt::Decision {
        let row = &run.row;
        let Some(task) = row.upgrade.task_id.as_deref() else {
            return halt::Decision::Go;
        };
        let m = &row.machine;
        if !self.inner.halt.is_on() || m.offset > 0 || row.activations > 0 {
            return halt::Decision::Go;
        }
        // Deciding and admitting under one lock: two jobs of a task
        // cannot both take the last place in flight.
        let mut admitted = self.inner.admitted.lock().await;
        if admitted.contains(&row.id) {
            return halt::Decision::Go;
        }
        let t = task.to_owned();
        let jobs = match self.journal().run(move |j| halt::task_jobs(j, &t)).await {
            Ok(j) => j,
            Err(e) => {
                // Without the journal's word the policy cannot judge;
                // the job goes on rather than wait for ever.
                warn!(child = %row.device_id, "journal: {e}");
                return halt::Decision::Go;
            }
        };
        let d = halt::decide(self.inner.halt, task, &jobs, &admitted, row.id);
        if d == halt::Decision::Go {
            admitted.insert(row.id);
        }
        d
    }

    /// The activation window's gate before job `run` activates (`super::window`):
    /// go, wait until the window opens (journaled as the job's cause, shown
    /// by `status` and the control API, reported upstream once), or fail
    /// now when it opens too late for the deadline. Only a job that sent
    /// no activation yet waits: one resumed after sending it reads the
    /// version back first.
    async fn window_gate(&self, run: &mut Run) -> WindowGate {
        let row = &mut run.row;
        let waiting = row.machine.cause.as_ref().is_some_and(|c| c.is_window());
        let schedule = self.inner.windows.get().and_then(|w| w.get(&row.device_id));
        let Some(s) = schedule.filter(|_| row.activations == 0) else {
            return WindowGate::Go;
        };
        let now = now_unix();
        if s.contains(now) {
            if waiting {
                // Saved with the activation count, before it is sent.
                row.machine.cause = None;
                info!(child = %row.device_id, job = row.id, "the activation window {} is open", s.describe());
            }
            return WindowGate::Go;
        }
        let opens = s.next_open(now);
        // The activation and the read-back must fit before the deadline.
        let needs = self.inner.timeouts.activation.as_secs() as i64;
        if opens + needs > row.deadline_unix - DEADLINE_MARGIN.as_secs() as i64 {
            let why = format!(
                "the activation window {} opens at {}, too late for the deadline {} (the \
                 activation may take {needs} s); the image was delivered, the child keeps \
                 running {}",
                s.describe(),
                s.local(opens),
                s.local(row.deadline_unix),
                row.machine
                    .current_version
                    .as_deref()
                    .unwrap_or("the version it ran")
            );
            return WindowGate::Failed(verdict(Failure::Window(&why)));
        }
        if !waiting {
            let detail = format!(
                "for the activation window {}: it opens at {}",
                s.describe(),
                s.local(opens)
            );
            info!(child = %row.device_id, job = row.id, "waiting {detail}");
            row.machine.cause = Some(FailureCause::window(detail.clone()));
            let report = ProgressReport {
                result_code: ResultCode::SUCCESS,
                progress: Some(row.machine.progress()),
                version: row.machine.current_version.clone().unwrap_or_default(),
                description: Some(format!("waiting {detail}")),
            };
            let row = row.clone();
            self.save_and_report(&row, report).await;
        }
        WindowGate::Wait(clock::now() + std::time::Duration::from_secs((opens - now) as u64))
    }

    /// Holds job `run` for `why` (the halt policy): journaled, shown by
    /// the control API and `status`, reported upstream as progress with
    /// the reason as its description.
    async fn hold(&self, run: &Run, ctl: &JobControl, why: String) {
        let row = &run.row;
        let report = self.inner.platform.prepare(
            Some(&row.device_id),
            &Event::ProgressReport(ProgressReport {
                result_code: ResultCode::SUCCESS,
                progress: Some(row.machine.progress()),
                version: row.machine.current_version.clone().unwrap_or_default(),
                description: Some(format!("held: {why}")),
            }),
        );
        let task = row.upgrade.task_id.clone().unwrap_or_default();
        let (id, held) = (row.id, why.clone());
        // One transaction, in turn with `Engine::release`: a release that
        // came after the gate read the journal wins (the job goes on), and
        // the hold is journaled together with its report.
        let saved = self
            .journal()
            .run(move |j| {
                let tx = |j: &mut Journal, sql: &str| {
                    j.connection().execute_batch(sql).map_err(|e| j.err(e))
                };
                tx(j, "BEGIN IMMEDIATE")?;
                let r = (|| {
                    if halt::is_released(j, &task)? {
                        return Ok(false);
                    }
                    let (mut req, _) = Requests::load(j, id)?;
                    req.held = Some(held);
                    req.save(j, id)?;
                    report.push(j)?;
                    Ok(true)
                })();
                match r {
                    Ok(held) => tx(j, "COMMIT").map(|()| held),
                    Err(e) => {
                        let _ = tx(j, "ROLLBACK");
                        Err(e)
                    }
                }
            })
            .await;
        match saved {
            Ok(false) => return,
            Ok(true) => self.inner.platform.queued(),
            Err(e) => warn!(child = %row.device_id, "journal: {e}"),
        }
        self.inner.metrics.child_held();
        warn!(child = %row.device_id, job = row.id, "held: {why}");
        ctl.set_held(Some(why)).await;
    }

    /// The job limits (to read jobs from the journal).
    pub(super) fn limits(&self) -> Limits {
        self.inner.limits
    }

    /// The children this engine drives, shared: onboarding adds to it.
    pub fn roster(&self) -> Roster {
        self.inner.children.clone()
    }

    /// Whether child `device_id` is configured.
    pub(super) fn configured(&self, device_id: &str) -> bool {
        self.inner.children.contains(device_id)
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
    async fn apply(&self, run: &mut Run, e: Effects) {
        let row = &run.row;
        match (e.persist, e.report) {
            // One transaction: a kill between the state and its report
            // would lose the report (a job that ended is not resumed).
            (true, Some(r)) => self.save_and_report(row, r).await,
            (true, None) => self.save(row).await,
            (false, Some(r)) => self.report(&row.device_id, r).await,
            (false, None) => {}
        }
        if e.persist {
            // Every phase change is persisted; progress alone is not.
            self.inner.metrics.job_phase(row.id, row.machine.phase);
        }
        if e.backoff {
            self.inner.metrics.job_retry(&row.device_id);
            if let Some(c) = &row.machine.cause {
                info!(child = %row.device_id, job = row.id, retries = row.machine.retries, "retrying after: {c}");
            }
            // Waited for in `run`, where an operator's request ends the wait.
            run.retry_at = Some(clock::now() + run.backoff.next_delay());
        }
    }

    /// Persists the job's machine and activation count (durable when this
    /// returns).
    async fn save(&self, row: &JobRow) {
        let (id, machine, activations) = (row.id, row.machine.clone(), row.activations);
        let r = self
            .inner
            .journal
            .run(move |j| jobs_db::save(j, id, &machine, activations, now_unix()))
            .await;
        if let Err(err) = r {
            warn!(child = %row.device_id, "journal: {err}");
        }
    }

    /// [`Engine::save`] and [`Engine::report`] in one journal transaction.
    /// While the journal's disk is full the job waits here, trying again
    /// every second: it does not go on past a state and report that were
    /// not written (issue 17 item 6).
    async fn save_and_report(&self, row: &JobRow, r: ProgressReport) {
        let report = self
            .inner
            .platform
            .prepare(Some(&row.device_id), &Event::ProgressReport(r));
        let mut warned = false;
        loop {
            let (id, machine, activations) = (row.id, row.machine.clone(), row.activations);
            let write =
                move |j: &mut Journal| jobs_db::save(j, id, &machine, activations, now_unix());
            match self
                .inner
                .platform
                .commit_with_report(report.clone(), write)
                .await
            {
                Ok(()) => {
                    if warned {
                        info!(child = %row.device_id, job = row.id, "journal has room again: state and report written");
                    }
                    return;
                }
                Err(err) if err.is_disk_full() => {
                    if !warned {
                        warn!(
                            child = %row.device_id, job = row.id,
                            "journal: {err}; the job waits until the disk of state.dir has room"
                        );
                        warned = true;
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(err) => {
                    warn!(child = %row.device_id, "journal: {err}");
                    return;
                }
            }
        }
    }

    /// Feeds `input` to the job's machine and applies the effects.
    async fn feed(&self, run: &mut Run, input: Input) {
        let e = run.row.machine.handle(input, now_unix());
        self.apply(run, e).await;
    }

    async fn run(&self, row: JobRow, ctl: Arc<JobControl>) {
        self.inner.metrics.job_phase(row.id, row.machine.phase);
        let child = self.inner.children.get(&row.device_id);
        let mut run = Run::new(row, child, self.inner.timeouts);
        let Some(child) = run.child.clone() else {
            let v = verdict(Failure::Unconfigured(&run.row.device_id));
            self.feed(&mut run, Input::Failed(v)).await;
            self.finished(&run);
            return;
        };
        run.row.machine.health = child.health().is_some();
        let job_end = job_deadline(&run.row);
        let mut changed = ctl.subscribe();
        let mut tasks = self.inner.task_events.subscribe();
        // Requests journaled before a restart are honoured at once.
        let id = run.row.id;
        let loaded = ctl
            .load(async {
                let load = move |j: &mut Journal| Requests::load(j, id).map(|(r, _)| r);
                self.inner.journal.run(load).await
            })
            .await;
        if let Err(e) = loaded {
            warn!(child = %run.row.device_id, "journal: {e}");
        }
        // The concurrency slot, given back while the job waits (paused, held).
        let mut slot = None;
        loop {
            let work = run.row.machine.work();
            if work == Work::Done {
                break;
            }
            // A revert that the deadline started gets the margin kept for
            // the report, less the time to publish it.
            let deadline = match run.row.machine.phase {
                Phase::Reverting => job_end + DEADLINE_MARGIN / 2,
                _ => job_end,
            };
            // A safe point: the operator's and the failure policy's requests.
            changed.borrow_and_update();
            let (gate, n) = ctl.gate_at();
            let waits = match gate {
                Gate::Wait if ctl.requests().held.is_some() => Some(Waiting::Held),
                Gate::Wait => Some(Waiting::Paused),
                _ => None,
            };
            self.inner.metrics.job_waiting(run.row.id, waits);
            match gate {
                Gate::Go => ctl.honoured(n),
                Gate::Cancel => {
                    let m = &run.row.machine;
                    let doing = match &m.cause {
                        Some(c) if c.is_window() => "waiting for the activation window",
                        _ => m.phase.as_str(),
                    };
                    let v = verdict(Failure::Cancelled(doing));
                    info!(child = %run.row.device_id, job = run.row.id, "cancelled by the operator");
                    self.feed(&mut run, Input::Failed(v)).await;
                    ctl.honoured(n);
                    continue;
                }
                Gate::Wait => {
                    slot = None;
                    self.checkpoint(&mut run).await;
                    ctl.honoured(n);
                    tokio::select! {
                        _ = changed.changed() => {}
                        _ = tokio::time::sleep_until(deadline) => {
                            self.feed(&mut run, Input::DeadlinePassed).await;
                        }
                    }
                    continue;
                }
            }
            // The halt policy's gate before the first byte goes to the child.
            if matches!(work, Work::Deliver { .. }) {
                tasks.borrow_and_update();
                match self.task_gate(&run).await {
                    halt::Decision::Go => {}
                    halt::Decision::Hold(why) => {
                        self.hold(&run, &ctl, why).await;
                        continue;
                    }
                    halt::Decision::Wait => {
                        slot = None;
                        tokio::select! {
                            _ = tasks.changed() => {}
                            _ = ctl.stop_requested(&mut changed) => {}
                            _ = tokio::time::sleep_until(deadline) => {
                                self.feed(&mut run, Input::DeadlinePassed).await;
                            }
                        }
                        continue;
                    }
                }
            }
            if slot.is_none() {
                tokio::select! {
                    s = self.inner.slots.acquire() => {
                        slot = Some(s.expect("the job semaphore is never closed"));
                    }
                    _ = ctl.stop_requested(&mut changed) => continue,
                    _ = tokio::time::sleep_until(deadline) => {
                        self.feed(&mut run, Input::DeadlinePassed).await;
                        continue;
                    }
                }
            }
            if let Some(at) = run.retry_at.take() {
                tokio::select! {
                    _ = tokio::time::sleep_until(at) => {}
                    _ = ctl.stop_requested(&mut changed) => continue,
                    _ = tokio::time::sleep_until(deadline) => {
                        self.feed(&mut run, Input::DeadlinePassed).await;
                        continue;
                    }
                }
            }
            // The activation waits for the child's window, without its slot.
            if work == Work::Activate {
                match self.window_gate(&mut run).await {
                    WindowGate::Go => {}
                    WindowGate::Failed(v) => {
                        self.feed(&mut run, Input::Failed(v)).await;
                        continue;
                    }
                    WindowGate::Wait(at) => {
                        self.inner
                            .metrics
                            .job_waiting(run.row.id, Some(Waiting::Window));
                        slot = None;
                        tokio::select! {
                            _ = tokio::time::sleep_until(at) => {}
                            _ = ctl.stop_requested(&mut changed) => {}
                            _ = tokio::time::sleep_until(deadline) => {
                                self.feed(&mut run, Input::DeadlinePassed).await;
                            }
                        }
                        continue;
                    }
                }
            }
            // A request stops any step before the activation is sent; the
            // activation itself commits first ([`JobControl::commit`]).
            let outcome = tokio::select! {
                o = self.perform(&mut run, &child, work, &ctl) => o,
                _ = tokio::time::sleep_until(deadline) => Some(Input::DeadlinePassed),
                _ = ctl.stop_requested(&mut changed) => None,
            };
            if let Some(input) = outcome {
                self.feed(&mut run, input).await;
            }
        }
        // The store keys the package by the request, fetched or not.
        if let Ok(key) = run.req.key() {
            self.inner.store.release(&run.job_key, &key).await;
        }
        self.finished(&run);
    }

    /// Counts the job's end and logs it with its cause.
    fn finished(&self, run: &Run) {
        let m = &run.row.machine;
        let (code, desc) = m
            .result
            .clone()
            .unwrap_or((ResultCode::INNER_ERROR, String::new()));
        self.inner.metrics.job_finished(run.row.id, code);
        match &m.cause {
            Some(cause) => {
                info!(child = %run.row.device_id, job = run.row.id, %code, "job ended: {desc}; cause: {cause}")
            }
            None => info!(child = %run.row.device_id, job = run.row.id, %code, "job ended: {desc}"),
        }
    }

    /// Does one piece of work; returns the input to feed, or `None` when the
    /// inputs were already fed (delivery progress).
    async fn perform(
        &self,
        run: &mut Run,
        child: &Arc<dyn Child>,
        work: Work,
        ctl: &JobControl,
    ) -> Option<Input> {
        let t = self.inner.timeouts;
        match work {
            Work::ReadVersion => {
                // A sleeping child's version is read when it wakes (the
                // version it last reported may be stale).
                self.until_awake(run, child).await;
                let _bus = self.bus_turn(child, Purpose::ReadVersion).await;
                // After the activation, the read is the verification.
                let step = match run.row.machine.phase {
                    Phase::Verifying => Step::Verify,
                    _ => Step::ReadVersion,
                };
                Some(read_version(child, t.version_read, step).await)
            }
            Work::Download => match self.fetch(run).await {
                Ok(()) => Some(Input::Downloaded),
                Err(input) => Some(input),
            },
            Work::Deliver { from } => {
                if let Err(input) = self.fetch(run).await {
                    return Some(input);
                }
                if let Err(input) = self.check_image(run).await {
                    return Some(input);
                }
                self.until_awake(run, child).await;
                if let Err(input) = self.preflight(run, child, from).await {
                    return Some(input);
                }
                let _bus = self.bus_turn(child, Purpose::Deliver).await;
                Some(self.deliver(run, child, from).await)
            }
            Work::Activate => {
                self.until_awake(run, child).await;
                // The bus for the whole read-activate sequence.
                let _bus = self.bus_turn(child, Purpose::Activate).await;
                self.activate(run, child, ctl).await
            }
            Work::Confirm => {
                let _bus = self.bus_turn(child, Purpose::Confirm).await;
                Some(confirm(child, &run.row.machine.target, t.version_read).await)
            }
            Work::Probe => Some(self.probe(run, child).await),
            Work::Revert => {
                let _bus = self.bus_turn(child, Purpose::Revert).await;
                Some(revert(child, &run.row.machine.target, t.activation).await)
            }
            Work::Done => None,
        }
    }

    /// Delivers the package from `from`, feeding progress to the machine;
    /// the delivery fails when no progress comes for a chunk timeout.
    async fn deliver(&self, run: &mut Run, child: &Arc<dyn Child>, from: u64) -> Input {
        let t = self.inner.timeouts;
        let pkg = run.package.clone().expect("fetched before delivering");
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
        let mut alive = Liveness::new(clock::now());
        let result = loop {
            let wait = alive.wait(t);
            tokio::select! {
                r = &mut fut => break r,
                Some(n) = rx.recv() => {
                    alive.progress(clock::now());
                    self.progress(run, &mut acked, n).await;
                }
                _ = tokio::time::sleep_until(alive.last + wait) => {
                    // The driver may have seen acknowledgements it did not
                    // pass on as progress yet (a CoAP push calls `progress`
                    // about 64 times per image): those feed the watchdog too.
                    if let Some((_, at)) = child.acked_at() {
                        if alive.acked(at) {
                            continue;
                        }
                    }
                    break Err(ChildError::unreachable(
                        Step::Deliver { offset: acked },
                        format!("no delivery progress for {} s", wait.as_secs()),
                    ));
                }
            }
        };
        while let Ok(n) = rx.try_recv() {
            self.progress(run, &mut acked, n).await;
        }
        match result {
            Ok(()) => Input::Delivered,
            Err(e) => {
                // The driver names the offset it knew; this side may have
                // seen later acknowledgements.
                let e = match e.step() {
                    Step::Deliver { offset } if offset < acked => {
                        e.in_step(Step::Deliver { offset: acked })
                    }
                    _ => e,
                };
                Input::Failed(verdict(Failure::Child(&e)))
            }
        }
    }

    /// Journals the offset the child last acknowledged, so that a paused
    /// or held job resumes from it (the machine checkpoints only every
    /// 64 KiB or 2 s).
    async fn checkpoint(&self, run: &mut Run) {
        let m = &mut run.row.machine;
        if m.phase != Phase::Delivering || run.acked <= m.offset {
            return;
        }
        m.offset = run.acked.min(m.size);
        self.save(&run.row).await;
    }

    /// The child acknowledged `n` bytes (`acked` before).
    async fn progress(&self, run: &mut Run, acked: &mut u64, n: u64) {
        self.inner
            .metrics
            .delivered(&run.row.device_id, n.saturating_sub(*acked));
        *acked = n;
        run.acked = n;
        self.feed(run, Input::Progress(n)).await;
    }

    /// Reads the version, and activates only when the child does not run
    /// the target yet: a job resumed after a crash may have activated.
    async fn activate(
        &self,
        run: &mut Run,
        child: &Arc<dyn Child>,
        ctl: &JobControl,
    ) -> Option<Input> {
        let t = self.inner.timeouts;
        match read_version(child, t.version_read, Step::Activate).await {
            Input::Version(v) if run.row.machine.phase == Phase::Activating => {
                self.feed(run, Input::Version(v)).await;
                if run.row.machine.phase != Phase::Activating {
                    return None;
                }
            }
            other => return Some(other),
        }
        if let Err(input) = self.fetch(run).await {
            return Some(input);
        }
        let pkg = run.package.clone().expect("fetched above");
        // The point of no return: from here nothing stops the job, so a
        // request that came first is honoured at the safe point instead.
        if !ctl.commit().await {
            return None;
        }
        let row = &mut run.row;
        row.activations += 1;
        // Count the activation before sending it.
        self.save(row).await;
        info!(child = %row.device_id, job = row.id, "activating {}", pkg.version);
        // The activation's one timer: the driver ends by it (its engine's
        // own wait for the new version is bounded by it, not raced).
        let deadline = clock::now() + t.activation;
        let e = match child.activate_by(&pkg, deadline).await {
            Ok(()) => return Some(Input::Activated),
            Err(e) => {
                if matches!(e.kind(), ErrorKind::Refused(_)) {
                    // A refused activation may still have changed what the
                    // child runs (an LwM2M child that booted another
                    // version): read it, so that the failure report carries
                    // the version the child runs now.
                    if let Input::Version(v) =
                        read_version(child, t.version_read, Step::Activate).await
                    {
                        self.feed(run, Input::Version(v)).await;
                        if run.row.machine.phase != Phase::Activating {
                            return None;
                        }
                    }
                }
                e
            }
        };
        Some(Input::Failed(verdict(Failure::Child(&e))))
    }

    /// The health-gated confirm (issue 15 item 2): probes the child every
    /// `interval` until `period` has passed since the job entered probing
    /// (its journaled `updated_unix`: a restarted gateway resumes the
    /// period, with at least one probe), each probe within
    /// `probe_timeout` and on a bus turn of its own. The first failed
    /// probe is the verdict: nothing is retried.
    async fn probe(&self, run: &Run, child: &Arc<dyn Child>) -> Input {
        let Some(h) = child.health().cloned() else {
            return Input::Healthy;
        };
        let row = &run.row;
        let target = row.machine.target.clone();
        let since = clock::from_unix(row.machine.last_checkpoint);
        let end = clock::now() + clock::until(since + h.period);
        info!(
            child = %row.device_id, job = row.id,
            "health check: probing every {} s for {} s before the confirm",
            h.interval.as_secs(), clock::until(since + h.period).as_secs()
        );
        let mut probes = 0u32;
        loop {
            let r = {
                let _bus = self.bus_turn(child, Purpose::Probe).await;
                tokio::time::timeout(h.probe_timeout, child.probe(&target)).await
            };
            probes += 1;
            let what = match r {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e.detail().to_owned()),
                Err(_) => Some(format!(
                    "no answer to a health probe within {} s",
                    h.probe_timeout.as_secs()
                )),
            };
            if let Some(what) = what {
                warn!(child = %row.device_id, job = row.id, probes, "health check failed: {what}");
                return Input::Unhealthy(what);
            }
            let now = clock::now();
            if now >= end {
                info!(child = %row.device_id, job = row.id, probes, "health check passed");
                return Input::Healthy;
            }
            tokio::time::sleep_until((now + h.interval).min(end)).await;
        }
    }

    /// Waits for `child`'s bus (when it shares one) and holds it until the
    /// turn is dropped. Phase timeouts start after this returns.
    async fn bus_turn(&self, child: &Arc<dyn Child>, purpose: Purpose) -> Option<Turn> {
        self.inner.buses.turn(child.as_ref(), purpose).await
    }

    /// Checks the package with the image gate, when the child has one,
    /// between the download and the delivery.
    async fn check_image(&self, run: &Run) -> Result<(), Input> {
        let (Some(gate), Some(pkg)) = (self.inner.gate.get(), run.package.as_ref()) else {
            return Ok(());
        };
        let row = &run.row;
        let target = &row.machine.target;
        match gate.check_package(&row.device_id, &pkg.path, target).await {
            Ok(()) => Ok(()),
            Err(r) => {
                warn!(child = %row.device_id, job = row.id, "{}", r.description);
                Err(Input::Failed(verdict(Failure::ImageCheck(&r))))
            }
        }
    }

    /// Asks the child whether it can take the package from `from` now
    /// ([`Child::ready`]: battery, signal, free memory), again after each
    /// backoff while it says no, until the next try would fall after the
    /// job's deadline; then its last refusal is the job's result (a gated
    /// child is reported with its own code, 4, 2 or 5, not a timeout).
    ///
    /// While it waits, the job's cause in the journal is a waiting one
    /// ([`FailureCause::waiting`]), so that `otabridge status` shows why;
    /// the cause before the wait is put back when the child is ready.
    async fn preflight(
        &self,
        run: &mut Run,
        child: &Arc<dyn Child>,
        from: u64,
    ) -> Result<(), Input> {
        let Some(pkg) = run.package.as_ref() else {
            return Ok(());
        };
        let t = self.inner.timeouts;
        let deadline = job_deadline(&run.row);
        let mut backoff = t.retry.seeded(run.row.id as u64).backoff();
        let before = run.row.machine.cause.clone();
        let mut waited = false;
        loop {
            let r = {
                let _bus = self.bus_turn(child, Purpose::Preflight).await;
                child.ready(pkg, from).await
            };
            let row = &run.row;
            let e = match r {
                Ok(()) => {
                    if waited {
                        run.row.machine.cause = before;
                        self.save(&run.row).await;
                    }
                    return Ok(());
                }
                Err(e) => e,
            };
            let v = verdict(Failure::Child(&e));
            let delay = backoff.next_delay();
            // The next try is due at `next` however long the journal write
            // below takes, so that it never passes the deadline this check
            // keeps it before.
            let next = clock::now() + delay;
            if next >= deadline {
                warn!(child = %row.device_id, job = row.id, "not ready before the deadline: {e}");
                return Err(Input::Failed(v));
            }
            // Journaled before the log line: whoever reads the log can ask
            // `otabridge status` why.
            run.row.machine.cause = Some(FailureCause::waiting(&v));
            self.save(&run.row).await;
            waited = true;
            let row = &run.row;
            info!(child = %row.device_id, job = row.id, "not ready, asking again in {} s: {e}", delay.as_secs());
            tokio::time::sleep_until(next).await;
        }
    }

    /// Waits for a child that sleeps and wakes by itself
    /// ([`Child::asleep`]: an LwM2M client in queue mode) before a step
    /// that must reach it. The wait is visible: the job's cause is a
    /// waiting one meanwhile ([`FailureCause::asleep`]; `otabridge status`,
    /// the control API's job view), put back when the child wakes. The
    /// job's deadline, a pause and a cancel end the wait (the caller's
    /// `select!`).
    async fn until_awake(&self, run: &mut Run, child: &Arc<dyn Child>) {
        let Some((why, wake)) = child.asleep() else {
            return;
        };
        let before = run.row.machine.cause.clone();
        run.row.machine.cause = Some(FailureCause::asleep(&why));
        self.save(&run.row).await;
        info!(child = %run.row.device_id, job = run.row.id, "{why}");
        wake.await;
        info!(child = %run.row.device_id, job = run.row.id, "the child woke");
        run.row.machine.cause = before;
        self.save(&run.row).await;
    }

    /// The job's package, downloaded (or waited for) once per run.
    async fn fetch(&self, run: &mut Run) -> Result<(), Input> {
        if run.package.is_some() {
            return Ok(());
        }
        match self
            .inner
            .store
            .acquire(&run.job_key, &run.req)
            .await
            .ready()
            .await
        {
            Ok(p) => {
                run.package = Some(p);
                Ok(())
            }
            Err(e) => Err(Input::Failed(verdict(Failure::Download(&e)))),
        }
    }
}

/// The no-progress watchdog of a delivery: when the child last
/// acknowledged something, from the driver's progress calls and its own
/// "bytes acknowledged at t" ([`Child::acked_at`]). Not the report
/// granularity: a delivery is alive while acknowledgements come, however
/// seldom the driver reports them.
#[derive(Debug, Clone, Copy)]
struct Liveness {
    /// The delivery's start, or the last acknowledgement since.
    last: tokio::time::Instant,
    /// Whether anything was acknowledged yet (the first wait is longer: a
    /// flash erase).
    seen: bool,
}

impl Liveness {
    fn new(start: tokio::time::Instant) -> Self {
        Liveness {
            last: start,
            seen: false,
        }
    }

    /// The driver reported progress now.
    fn progress(&mut self, now: tokio::time::Instant) {
        self.last = self.last.max(now);
        self.seen = true;
    }

    /// The driver says the last acknowledgement came at `at`; whether that
    /// is newer than what the watchdog knew.
    fn acked(&mut self, at: tokio::time::Instant) -> bool {
        if at > self.last {
            self.last = at;
            self.seen = true;
            return true;
        }
        false
    }

    /// How long the delivery may go without an acknowledgement now.
    fn wait(&self, t: Timeouts) -> Duration {
        if self.seen {
            t.chunk
        } else {
            t.first_chunk
        }
    }
}

/// What [`Engine::admit`] found.
enum Admission {
    /// The child's job that is still active.
    Running(Box<JobRow>),
    /// The new job's id.
    New(i64),
}

/// One job's run: its row, its child, and what it keeps between steps.
struct Run {
    row: JobRow,
    child: Option<Arc<dyn Child>>,
    /// The job's claim on its package in the store.
    job_key: String,
    req: PackageRequest,
    package: Option<Package>,
    backoff: Backoff,
    /// What the child last acknowledged in this process's delivery.
    acked: u64,
    /// When a failed step may be tried again (after a backoff).
    retry_at: Option<tokio::time::Instant>,
}

impl Run {
    fn new(row: JobRow, child: Option<Arc<dyn Child>>, t: Timeouts) -> Self {
        let mut req =
            PackageRequest::from_upgrade(&row.upgrade, row.v2, clock::from_unix(row.received_unix));
        req.deadline = clock::from_unix(row.deadline_unix);
        Run {
            job_key: format!("job-{}", row.id),
            backoff: t.retry.seeded(row.id as u64).backoff(),
            row,
            child,
            req,
            package: None,
            acked: 0,
            retry_at: None,
        }
    }
}

/// Has `child` confirm its running `target` image within `within` (a state
/// read and at most one write; the driver retries each of them itself).
async fn confirm(child: &Arc<dyn Child>, target: &str, within: Duration) -> Input {
    let e = match tokio::time::timeout(within, child.confirm(target)).await {
        Ok(Ok(())) => return Input::Confirmed,
        Ok(Err(e)) => e.in_step(Step::Confirm),
        Err(_) => ChildError::unreachable(
            Step::Confirm,
            format!("no confirm within {} s", within.as_secs()),
        ),
    };
    Input::Failed(verdict(Failure::Child(&e)))
}

/// Has `child` revert its unconfirmed `target` image within `within` (a
/// reset and the reboot: the activation's budget); the version read back.
async fn revert(child: &Arc<dyn Child>, target: &str, within: Duration) -> Input {
    let e = match tokio::time::timeout(within, child.revert(target)).await {
        Ok(Ok((version, reverted))) => return Input::Reverted { version, reverted },
        Ok(Err(e)) => e.in_step(Step::Revert),
        Err(_) => ChildError::unreachable(
            Step::Revert,
            format!("no revert within {} s", within.as_secs()),
        ),
    };
    Input::Failed(verdict(Failure::Child(&e)))
}

/// Reads `child`'s version within `within`; a failure is `step`'s.
async fn read_version(child: &Arc<dyn Child>, within: Duration, step: Step) -> Input {
    let e = match tokio::time::timeout(within, child.read_version()).await {
        Ok(Ok(v)) => return Input::Version(v),
        Ok(Err(e)) => e.in_step(step),
        Err(_) => {
            ChildError::unreachable(step, format!("no version within {} s", within.as_secs()))
        }
    };
    Input::Failed(verdict(Failure::Child(&e)))
}

/// What [`Engine::window_gate`] decided.
enum WindowGate {
    /// Activate now.
    Go,
    /// Wait until this instant (the window opens).
    Wait(clock::Instant),
    /// The window opens too late for the deadline.
    Failed(super::verdict::Verdict),
}
