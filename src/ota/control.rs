//! Operators and policies in control of upgrade jobs (issue 15): pause,
//! resume, cancel and retry a job, release a task held by the failure
//! policy. The HTTP side is `crate::control`; this is what a request does
//! to a job, and the rules that refuse it.
//!
//! - Every request is journaled before it is answered (the `control` and
//!   `held` columns of `jobs`, journal migration 7), so it survives a
//!   restart: a job resumed from the journal honours it at once.
//! - A job honours a request at a **safe point** ([`JobControl::gate`]):
//!   between two steps, or by dropping a step that may be dropped (a
//!   version read, the download, a delivery, the wait for a bus turn). It
//!   never drops an activation once it was sent: [`JobControl::commit`]
//!   marks the point of no return right before the activation (SMP test +
//!   reset, LwM2M Execute, a profile's activate message), and from then on
//!   pause and cancel are refused with 409. A cancelled job therefore never
//!   activated: the child runs the image it ran (for MCUboot: its confirmed
//!   image).
//! - A cancel ends the job with one terminal report (255, "cancelled by the
//!   gateway's operator ...", [`super::verdict::Failure::Cancelled`]). A
//!   pause keeps the delivery offset (the child's last acknowledgement is
//!   checkpointed) and frees the job's concurrency slot; resume continues
//!   from that offset. The deadline still counts while a job is paused or
//!   held: it ends with an honest failure report before it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rusqlite::{params, OptionalExtension};
use serde::Serialize;
use tokio::sync::watch;

use tracing::info;

use super::engine::Engine;
use super::job::Phase;
use super::jobs_db::{self, JobRow};
use super::verdict::FailureCause;
use crate::clock::now_unix;
use crate::journal::{Journal, JournalError};

/// What an operator asks of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// End it at the next safe point, with a failure report.
    Cancel,
    /// Stop it at the next safe point, keeping its offset.
    Pause,
    /// Continue a paused job from its offset.
    Resume,
    /// Start a failed job again (a new job with the same event).
    Retry,
}

impl Action {
    /// Its name in URLs and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Cancel => "cancel",
            Action::Pause => "pause",
            Action::Resume => "resume",
            Action::Retry => "retry",
        }
    }

    /// Parses a name.
    pub fn parse(s: &str) -> Option<Action> {
        Some(match s {
            "cancel" => Action::Cancel,
            "pause" => Action::Pause,
            "resume" => Action::Resume,
            "retry" => Action::Retry,
            _ => return None,
        })
    }
}

/// Which job a request is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobRef {
    /// By its journal id.
    Id(i64),
    /// A child's latest job.
    Child(String),
}

impl std::fmt::Display for JobRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JobRef::Id(id) => write!(f, "job {id}"),
            JobRef::Child(c) => write!(f, "child {c}"),
        }
    }
}

/// Why a control request changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// No job has this id.
    #[error("no job {0} in the journal")]
    UnknownJob(i64),
    /// No child has this device id in the configuration.
    #[error("no child {0} is configured")]
    UnknownChild(String),
    /// The child never had an upgrade job.
    #[error("child {0} has no upgrade job")]
    NoJob(String),
    /// No job belongs to this task.
    #[error("no job of task {0} in the journal")]
    UnknownTask(String),
    /// The action is not possible in the job's state; says why.
    #[error("{0}")]
    NotAllowed(String),
    /// The journal could not be read or written.
    #[error(transparent)]
    Journal(#[from] JournalError),
}

impl ControlError {
    /// The HTTP status the control API answers with.
    pub fn http_status(&self) -> u16 {
        match self {
            ControlError::UnknownJob(_)
            | ControlError::UnknownChild(_)
            | ControlError::NoJob(_)
            | ControlError::UnknownTask(_) => 404,
            ControlError::NotAllowed(_) => 409,
            ControlError::Journal(_) => 500,
        }
    }
}

/// A job's durable requests: the journal's `control` and `held` columns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Requests {
    /// An operator paused it.
    pub paused: bool,
    /// An operator cancelled it (kept after it ended, to show it).
    pub cancel: bool,
    /// Why the failure policy holds it, until its task is released.
    pub held: Option<String>,
}

impl Requests {
    fn column(&self) -> Option<&'static str> {
        if self.cancel {
            Some("cancel")
        } else if self.paused {
            Some("pause")
        } else {
            None
        }
    }

    /// Whether they keep the job from going on.
    fn stop(&self) -> bool {
        self.cancel || self.paused || self.held.is_some()
    }

    /// Job `id`'s requests and the job it retries, from the journal.
    pub fn load(j: &mut Journal, id: i64) -> Result<(Requests, Option<i64>), JournalError> {
        let r = j
            .connection()
            .query_row(
                "SELECT control, held, retry_of FROM jobs WHERE id = ?1",
                [id],
                |r| {
                    let control: Option<String> = r.get(0)?;
                    Ok((
                        Requests {
                            paused: control.as_deref() == Some("pause"),
                            cancel: control.as_deref() == Some("cancel"),
                            held: r.get(1)?,
                        },
                        r.get(2)?,
                    ))
                },
            )
            .optional();
        match r {
            Ok(v) => Ok(v.unwrap_or_default()),
            Err(e) => Err(j.err(e)),
        }
    }

    /// Writes them for job `id`.
    pub fn save(&self, j: &mut Journal, id: i64) -> Result<(), JournalError> {
        let r = j.connection().execute(
            "UPDATE jobs SET control = ?2, held = ?3 WHERE id = ?1",
            params![id, self.column(), self.held],
        );
        r.map(|_| ()).map_err(|e| j.err(e))
    }
}

/// Marks job `id` as the retry of job `of`.
pub fn set_retry_of(j: &mut Journal, id: i64, of: i64) -> Result<(), JournalError> {
    let r = j.connection().execute(
        "UPDATE jobs SET retry_of = ?2 WHERE id = ?1",
        params![id, of],
    );
    r.map(|_| ()).map_err(|e| j.err(e))
}

/// Whether a job in `phase` that sent `activations` activation commands
/// is past the point of no return (after a restart: the journal's view).
pub fn committed(phase: Phase, activations: u32) -> bool {
    match phase {
        Phase::Queued | Phase::Downloading | Phase::Delivering => false,
        Phase::Activating => activations > 0,
        Phase::Verifying
        | Phase::Probing
        | Phase::Reverting
        | Phase::Confirming
        | Phase::Succeeded
        | Phase::Failed => true,
    }
}

/// What `action` makes of a job's `req` in `phase`, or why it is refused.
/// `committed`: the job sent its activation. Pure: the rules in one place.
pub fn decide(
    id: i64,
    action: Action,
    phase: Phase,
    committed: bool,
    req: &Requests,
) -> Result<Requests, ControlError> {
    let no = |why: String| Err(ControlError::NotAllowed(format!("job {id}: {why}")));
    if phase.is_terminal() {
        return no(format!(
            "it already {}; nothing to {}",
            phase.as_str(),
            action.as_str()
        ));
    }
    let mut next = req.clone();
    match action {
        Action::Retry => {
            return no(format!(
                "it is {}, not failed: only a failed job can be retried",
                phase.as_str()
            ))
        }
        Action::Cancel | Action::Pause if committed => {
            return no(format!(
                "the new image is being activated (phase {}): it can no longer be {}; the \
                 job ends on its own",
                phase.as_str(),
                if action == Action::Cancel {
                    "cancelled"
                } else {
                    "paused"
                }
            ))
        }
        Action::Cancel => next.cancel = true,
        Action::Pause if req.cancel => return no("it is being cancelled".into()),
        Action::Pause if req.paused => return no("it is already paused".into()),
        Action::Pause => next.paused = true,
        Action::Resume if req.cancel => return no("it is being cancelled".into()),
        Action::Resume if !req.paused => {
            return match &req.held {
                Some(why) => no(format!(
                    "it is not paused but held ({why}); release its task instead"
                )),
                None => no("it is not paused".into()),
            }
        }
        Action::Resume => next.paused = false,
    }
    Ok(next)
}

/// What a job does at a safe point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// Go on with the next step.
    Go,
    /// End with the cancel's report.
    Cancel,
    /// Wait (paused or held) until a request changes.
    Wait,
}

#[derive(Debug)]
struct State {
    req: Requests,
    committed: bool,
    /// Requests applied so far (a counter).
    requested: u64,
}

/// The control of one running job, shared by its task and the control
/// API: its requests and whether it passed the point of no return. A
/// request (decided, journaled, applied) and the commit take turns on one
/// lock, so that they cannot cross.
#[derive(Debug)]
pub struct JobControl {
    state: Mutex<State>,
    /// Requests, the commit and the load from the journal, one at a time.
    order: tokio::sync::Mutex<()>,
    changed: watch::Sender<()>,
    /// The last request the job carried out (the counter), at a safe
    /// point: the control API answers once it did.
    honoured: watch::Sender<u64>,
}

impl JobControl {
    /// A job's control: no requests until [`JobControl::load`].
    pub fn new(req: Requests, committed: bool) -> Arc<JobControl> {
        Arc::new(JobControl {
            state: Mutex::new(State {
                req,
                committed,
                requested: 0,
            }),
            order: tokio::sync::Mutex::new(()),
            changed: watch::Sender::new(()),
            honoured: watch::Sender::new(0),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Follows changes of the requests.
    pub fn subscribe(&self) -> watch::Receiver<()> {
        self.changed.subscribe()
    }

    /// The requests now.
    pub fn requests(&self) -> Requests {
        self.state().req.clone()
    }

    /// Whether the job passed its point of no return.
    pub fn is_committed(&self) -> bool {
        self.state().committed
    }

    /// Takes the requests the journal holds (`load`, when the job starts:
    /// a request journaled before a restart is honoured at once).
    pub async fn load(
        &self,
        load: impl std::future::Future<Output = Result<Requests, JournalError>>,
    ) -> Result<(), JournalError> {
        let _turn = self.order.lock().await;
        let req = load.await?;
        self.state().req = req;
        self.changed.send_replace(());
        Ok(())
    }

    /// What to do at a safe point, and the request counter it answers
    /// (for [`JobControl::honoured`] once it is done).
    pub fn gate_at(&self) -> (Gate, u64) {
        let n = self.state().requested;
        (self.gate(), n)
    }

    /// The job carried out the requests up to counter `n`.
    pub fn honoured(&self, n: u64) {
        self.honoured.send_if_modified(|h| {
            let newer = n > *h;
            *h = (*h).max(n);
            newer
        });
    }

    /// Waits (at most `within`) until the job carried out every request
    /// made so far; whether it did.
    pub async fn settled(&self, within: std::time::Duration) -> bool {
        let n = self.state().requested;
        let mut rx = self.honoured.subscribe();
        tokio::time::timeout(within, rx.wait_for(|h| *h >= n))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// What to do at a safe point.
    pub fn gate(&self) -> Gate {
        let s = self.state();
        if s.committed {
            Gate::Go
        } else if s.req.cancel {
            Gate::Cancel
        } else if s.req.stop() {
            Gate::Wait
        } else {
            Gate::Go
        }
    }

    /// Right before the activation is sent: passes the point of no return,
    /// unless a request came first (then `false`: go back to the safe
    /// point, which honours it).
    pub async fn commit(&self) -> bool {
        let _turn = self.order.lock().await;
        let mut s = self.state();
        if !s.committed && s.req.stop() {
            return false;
        }
        s.committed = true;
        true
    }

    /// Resolves when a request asks the running step to stop (pending
    /// forever once the job is committed: nothing stops an activation).
    pub async fn stop_requested(&self, rx: &mut watch::Receiver<()>) {
        loop {
            if rx.changed().await.is_err() {
                return std::future::pending().await;
            }
            if self.gate() != Gate::Go {
                return;
            }
        }
    }

    /// Applies `action` in `phase`: decides, writes the result with `save`
    /// (the journal; nothing changes when it fails), and wakes the job.
    pub async fn request<F, Fut>(
        &self,
        id: i64,
        action: Action,
        phase: Phase,
        save: F,
    ) -> Result<(), ControlError>
    where
        F: FnOnce(Requests) -> Fut,
        Fut: std::future::Future<Output = Result<(), JournalError>>,
    {
        let _turn = self.order.lock().await;
        let (now, next) = {
            let s = self.state();
            (
                s.req.clone(),
                decide(id, action, phase, s.committed, &s.req)?,
            )
        };
        if next != now {
            save(next.clone()).await?;
            let mut s = self.state();
            s.req = next;
            s.requested += 1;
            drop(s);
            self.changed.send_replace(());
        }
        Ok(())
    }

    /// Sets or clears the policy's hold (journaled by the caller), and
    /// wakes the job. In turn with the load from the journal: a release
    /// while the job starts is not undone by what it read before.
    pub async fn set_held(&self, held: Option<String>) {
        let _turn = self.order.lock().await;
        self.state().req.held = held;
        self.changed.send_replace(());
    }
}

/// The controls of the jobs running in this process, by job id.
#[derive(Debug, Default)]
pub struct Registry(Mutex<HashMap<i64, Arc<JobControl>>>);

impl Registry {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<i64, Arc<JobControl>>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Job `id`'s control (a new one from `req` if it has none yet).
    pub fn register(&self, id: i64, req: Requests, committed: bool) -> Arc<JobControl> {
        self.map()
            .entry(id)
            .or_insert_with(|| JobControl::new(req, committed))
            .clone()
    }

    /// Job `id`'s control, while it runs.
    pub fn get(&self, id: i64) -> Option<Arc<JobControl>> {
        self.map().get(&id).cloned()
    }

    /// Forgets job `id` (it ended).
    pub fn remove(&self, id: i64) {
        self.map().remove(&id);
    }
}

/// A job as the control API and `otabridge jobs` show it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct JobView {
    /// Journal id.
    pub id: i64,
    /// The child.
    pub device_id: String,
    /// The platform's task, when the event named one.
    pub task_id: Option<String>,
    /// Target version.
    pub target: String,
    /// queued, downloading, delivering, activating, verifying, probing,
    /// reverting, confirming, succeeded, failed.
    pub phase: String,
    /// `running`, `waiting_window` (delivered, waiting for its activation
    /// window), `paused`, `held`, `cancelling`, or once ended `succeeded`,
    /// `failed`, `cancelled`.
    pub state: String,
    /// Why the failure policy holds it.
    pub held: Option<String>,
    /// What it waits for (its activation window and when it opens; the
    /// child's pre-flight refusal), while it waits.
    pub waiting: Option<String>,
    /// Bytes the child acknowledged (last checkpoint).
    pub offset: u64,
    /// Package size.
    pub size: u64,
    /// Progress as reported, 0–100.
    pub progress: u8,
    /// Transient failures in the current phase.
    pub retries: u32,
    /// Result code once ended.
    pub result_code: Option<u8>,
    /// Result description once ended.
    pub description: Option<String>,
    /// Where the last failure happened and what the device said.
    pub cause: Option<FailureCause>,
    /// When the event arrived (Unix seconds).
    pub received_unix: i64,
    /// When the job must have ended (Unix seconds).
    pub deadline_unix: i64,
    /// The failed job this one retries.
    pub retry_of: Option<i64>,
}

impl JobView {
    /// The view of `row` with its requests.
    pub fn new(row: &JobRow, req: &Requests, retry_of: Option<i64>) -> JobView {
        let m = &row.machine;
        let state = match m.phase {
            Phase::Succeeded => "succeeded",
            Phase::Failed if req.cancel => "cancelled",
            Phase::Failed => "failed",
            _ if req.cancel => "cancelling",
            _ if req.paused => "paused",
            _ if req.held.is_some() => "held",
            _ if m.cause.as_ref().is_some_and(|c| c.is_window()) => "waiting_window",
            _ => "running",
        };
        JobView {
            id: row.id,
            device_id: row.device_id.clone(),
            task_id: row.upgrade.task_id.clone(),
            target: row.upgrade.version.clone(),
            phase: m.phase.as_str().to_owned(),
            state: state.to_owned(),
            held: req.held.clone(),
            waiting: m
                .cause
                .as_ref()
                .filter(|c| c.is_waiting() && m.result.is_none())
                .map(|c| c.detail.clone()),
            offset: m.offset,
            size: m.size,
            progress: m.progress(),
            retries: m.retries,
            result_code: m.result.as_ref().map(|(c, _)| c.get()),
            description: m.result.as_ref().map(|(_, d)| d.clone()),
            cause: m.cause.clone(),
            received_unix: row.received_unix,
            deadline_unix: row.deadline_unix,
            retry_of,
        }
    }
}

fn view_in(j: &mut Journal, row: &JobRow) -> Result<JobView, ControlError> {
    let (req, retry_of) = Requests::load(j, row.id)?;
    Ok(JobView::new(row, &req, retry_of))
}

/// Reads jobs and applies requests for the control API; every journal
/// operation runs on the engine's own handle, off the async workers.
impl Engine {
    fn row_in(&self, j: &mut Journal, r: &JobRef) -> Result<JobRow, ControlError> {
        let policy = |id: &str| self.version_policy(id);
        match r {
            JobRef::Id(id) => {
                jobs_db::by_id(j, *id, self.limits(), &policy)?.ok_or(ControlError::UnknownJob(*id))
            }
            JobRef::Child(c) => {
                if !self.configured(c) {
                    return Err(ControlError::UnknownChild(c.clone()));
                }
                jobs_db::latest(j, c, self.limits(), &policy)?
                    .ok_or_else(|| ControlError::NoJob(c.clone()))
            }
        }
    }

    /// Every job not ended yet and the latest job of every child.
    pub async fn jobs(&self) -> Result<Vec<JobView>, ControlError> {
        let me = self.clone();
        self.journal()
            .run(move |j| {
                let rows = jobs_db::current(j, me.limits(), &|id| me.version_policy(id))?;
                rows.iter().map(|r| view_in(j, r)).collect()
            })
            .await
    }

    /// One job.
    pub async fn job(&self, r: &JobRef) -> Result<JobView, ControlError> {
        let (me, r) = (self.clone(), r.clone());
        self.journal()
            .run(move |j| {
                let row = me.row_in(j, &r)?;
                view_in(j, &row)
            })
            .await
    }

    /// Applies an operator's `action` to the job `r` names, journaled
    /// before it returns; the job's view afterwards (for a retry: the new
    /// job's).
    pub async fn control(&self, r: &JobRef, action: Action) -> Result<JobView, ControlError> {
        if action == Action::Retry {
            return self.retry(r).await;
        }
        let row = {
            let (me, r) = (self.clone(), r.clone());
            self.journal().run(move |j| me.row_in(j, &r)).await?
        };
        let (id, phase, activations) = (row.id, row.machine.phase, row.activations);
        let journal = self.journal().clone();
        match self.controls().get(id) {
            Some(ctl) => {
                let save =
                    |req: Requests| async move { journal.run(move |j| req.save(j, id)).await };
                ctl.request(id, action, phase, save).await?;
                // Answer with what the job made of it (its offset
                // checkpointed, its report queued): within 2 s, the time
                // a job takes to reach a safe point.
                if !ctl.settled(SETTLE).await {
                    info!(
                        job = id,
                        "the job has not reached a safe point yet; answering"
                    );
                }
            }
            // Not running in this process (it ended meanwhile, or it has
            // not been resumed yet): the journal decides, and a job that
            // starts later reads the request from there.
            None => {
                journal
                    .run(move |j| {
                        let (req, _) = Requests::load(j, id)?;
                        let next = decide(id, action, phase, committed(phase, activations), &req)?;
                        if next != req {
                            next.save(j, id)?;
                        }
                        Ok::<_, ControlError>(())
                    })
                    .await?
            }
        }
        info!(child = %row.device_id, job = id, "operator: {}", action.as_str());
        self.job(&JobRef::Id(id)).await
    }

    /// A failed job again, as a new job with the same event, from the
    /// start (the package store keeps a package only while a job needs
    /// it; the child resumes a delivery it kept by itself).
    async fn retry(&self, r: &JobRef) -> Result<JobView, ControlError> {
        let (me, r) = (self.clone(), r.clone());
        let (old, new) = self.journal().run(move |j| me.retry_in(j, &r)).await?;
        info!(child = %new.device_id, job = new.id, "operator: retry of job {old}");
        let id = new.id;
        self.spawn(new);
        self.job(&JobRef::Id(id)).await
    }

    /// The retry's checks and its new job, in one journal operation.
    fn retry_in(&self, j: &mut Journal, r: &JobRef) -> Result<(i64, JobRow), ControlError> {
        let row = self.row_in(j, r)?;
        let no = |why: String| Err(ControlError::NotAllowed(format!("job {}: {why}", row.id)));
        if row.machine.phase != Phase::Failed {
            return no(format!(
                "it is {}, not failed: only a failed job can be retried",
                row.machine.phase.as_str()
            ));
        }
        if !self.configured(&row.device_id) {
            return no(format!("child {} is no longer configured", row.device_id));
        }
        let policy = |id: &str| self.version_policy(id);
        if let Some(newer) = jobs_db::latest(j, &row.device_id, self.limits(), &policy)? {
            if newer.id != row.id {
                return no(format!(
                    "child {} has a newer job, {}",
                    row.device_id, newer.id
                ));
            }
        }
        let left = row.deadline_unix - now_unix();
        if left <= RETRY_MARGIN_SECS {
            return no(format!(
                "its deadline is {} s away or past: the platform needs a new upgrade task",
                left.max(0)
            ));
        }
        let id = jobs_db::insert(
            j,
            &row.device_id,
            row.kind,
            row.v2,
            &row.upgrade,
            row.received_unix,
            row.deadline_unix,
        )?;
        set_retry_of(j, id, row.id)?;
        let new =
            jobs_db::by_id(j, id, self.limits(), &policy)?.ok_or(ControlError::UnknownJob(id))?;
        Ok((row.id, new))
    }
}

impl Engine {
    /// Releases task `task` held by the failure policy (issue 15 item 3):
    /// its held jobs go on, and the policy no longer holds any of its
    /// children. The released jobs' views.
    pub async fn release(&self, task: &str) -> Result<Vec<JobView>, ControlError> {
        let t = task.to_owned();
        let held = self
            .journal()
            .run(move |j| {
                let jobs = super::halt::task_jobs(j, &t)?;
                if jobs.all == 0 {
                    return Err(ControlError::UnknownTask(t));
                }
                if jobs.held.is_empty() {
                    let before = if jobs.released {
                        " (it was released before)"
                    } else {
                        ""
                    };
                    return Err(ControlError::NotAllowed(format!(
                        "no job of task {t} is held{before}"
                    )));
                }
                super::halt::release(j, &t)?;
                for id in &jobs.held {
                    let (mut req, _) = Requests::load(j, *id)?;
                    req.held = None;
                    req.save(j, *id)?;
                }
                Ok(jobs.held)
            })
            .await?;
        for id in &held {
            if let Some(ctl) = self.controls().get(*id) {
                ctl.set_held(None).await;
            }
        }
        self.tasks_changed();
        info!(task, jobs = held.len(), "operator: task released");
        let mut out = Vec::with_capacity(held.len());
        for id in held {
            out.push(self.job(&JobRef::Id(id)).await?);
        }
        Ok(out)
    }
}

/// How long the control API waits for a job to carry a request out
/// before it answers (issue 15: a cancel takes effect within 2 s).
const SETTLE: std::time::Duration = std::time::Duration::from_secs(2);

/// A retry needs at least this long before the deadline (the job's own
/// margin for its terminal report and some time to work).
const RETRY_MARGIN_SECS: i64 = 300;

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(action: Action, phase: Phase, committed: bool, req: &Requests) -> Requests {
        decide(1, action, phase, committed, req).unwrap()
    }

    fn refused(action: Action, phase: Phase, committed: bool, req: &Requests) -> String {
        match decide(1, action, phase, committed, req) {
            Err(e @ ControlError::NotAllowed(_)) => {
                assert_eq!(e.http_status(), 409);
                e.to_string()
            }
            other => panic!("{action:?} in {phase:?}: {other:?}"),
        }
    }

    #[test]
    fn requests_before_the_activation_are_taken() {
        let none = Requests::default();
        for phase in [
            Phase::Queued,
            Phase::Downloading,
            Phase::Delivering,
            Phase::Activating,
        ] {
            assert!(ok(Action::Cancel, phase, false, &none).cancel);
            let paused = ok(Action::Pause, phase, false, &none);
            assert!(paused.paused);
            assert_eq!(ok(Action::Resume, phase, false, &paused), none);
            // A paused job can be cancelled; a cancel twice is no change.
            let c = ok(Action::Cancel, phase, false, &paused);
            assert!(c.cancel);
            assert_eq!(ok(Action::Cancel, phase, false, &c), c);
        }
    }

    #[test]
    fn requests_the_job_cannot_honour_say_why() {
        let none = Requests::default();
        let e = refused(Action::Cancel, Phase::Activating, true, &none);
        assert!(e.contains("being activated"), "{e}");
        let e = refused(Action::Pause, Phase::Confirming, true, &none);
        assert!(e.contains("can no longer be paused"), "{e}");
        let e = refused(Action::Cancel, Phase::Succeeded, true, &none);
        assert!(e.contains("already succeeded"), "{e}");
        let e = refused(Action::Resume, Phase::Delivering, false, &none);
        assert!(e.contains("not paused"), "{e}");
        let held = Requests {
            held: Some("2 of 3 failed".into()),
            ..Requests::default()
        };
        let e = refused(Action::Resume, Phase::Queued, false, &held);
        assert!(e.contains("release its task"), "{e}");
        let paused = ok(Action::Pause, Phase::Delivering, false, &none);
        let e = refused(Action::Pause, Phase::Delivering, false, &paused);
        assert!(e.contains("already paused"), "{e}");
        let cancelled = ok(Action::Cancel, Phase::Delivering, false, &none);
        let e = refused(Action::Resume, Phase::Delivering, false, &cancelled);
        assert!(e.contains("being cancelled"), "{e}");
        let e = refused(Action::Retry, Phase::Delivering, false, &none);
        assert!(e.contains("only a failed job"), "{e}");
    }

    #[tokio::test]
    async fn the_commit_and_a_request_cannot_cross() {
        let c = JobControl::new(Requests::default(), false);
        let mut rx = c.subscribe();
        rx.borrow_and_update();
        let ok = |_| async { Ok(()) };
        c.request(1, Action::Pause, Phase::Activating, ok)
            .await
            .unwrap();
        assert!(rx.has_changed().unwrap());
        assert_eq!(c.gate(), Gate::Wait);
        // The activation does not go out while a request stands.
        assert!(!c.commit().await);
        c.request(1, Action::Resume, Phase::Activating, ok)
            .await
            .unwrap();
        assert_eq!(c.gate(), Gate::Go);
        assert!(c.commit().await);
        assert!(c.is_committed());
        // Once committed, nothing stops it.
        let e = c
            .request(1, Action::Cancel, Phase::Activating, |_| async {
                panic!("a refused request is not journaled")
            })
            .await
            .unwrap_err();
        assert_eq!(e.http_status(), 409);
        assert_eq!(c.gate(), Gate::Go);
    }

    #[tokio::test]
    async fn a_journal_failure_changes_nothing() {
        let c = JobControl::new(Requests::default(), false);
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path()).unwrap();
        let e = c
            .request(1, Action::Cancel, Phase::Queued, |_| async {
                Err(j.err(rusqlite::Error::InvalidQuery))
            })
            .await
            .unwrap_err();
        assert_eq!(e.http_status(), 500);
        assert_eq!(c.requests(), Requests::default());
        // What the journal holds is taken when the job starts.
        let held = Requests {
            paused: true,
            ..Requests::default()
        };
        c.load(async { Ok(held.clone()) }).await.unwrap();
        assert_eq!((c.requests(), c.gate()), (held, Gate::Wait));
    }

    #[test]
    fn committed_follows_the_phase_and_the_activations() {
        assert!(!committed(Phase::Delivering, 0));
        assert!(!committed(Phase::Activating, 0));
        assert!(committed(Phase::Activating, 1));
        assert!(committed(Phase::Verifying, 1));
    }
}
