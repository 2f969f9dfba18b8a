//! The counters the engine and the package store update: a leaf module
//! that knows no other module of the daemon (docs/design.md, "Layout").
//! Job phases, resume kinds and children are plain label values here;
//! `ota` turns its own phase type into a [`JobPhase`]. The exporter (a high
//! layer, `crate::exporter`) registers these counters with the live values
//! read at scrape time and serves them.
//!
//! The counters are `prometheus-client` metric types, so the exporter
//! encodes them as they are; every family a dashboard expects is declared
//! up front with zeros by [`Metrics::declare`]. The per-child series
//! follow the children the daemon drives now ([`Metrics::follow_children`],
//! called by the exporter before each scrape with the roster's ids): an
//! onboarded child gets its series, a deleted one loses them.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use otabridge_codecs::iotda::ResultCode;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio::time::Instant;

/// Upper bounds of the phase duration histogram, in seconds: a phase takes
/// from under a second (an in-memory child) to hours (a large image over a
/// slow serial line).
pub const DURATION_BUCKETS: [f64; 10] = [
    0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 14400.0, 86400.0,
];

/// A job phase as the counters see it: its label, and whether a job in it
/// is still running (a terminal phase is recorded by
/// [`Metrics::job_finished`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobPhase {
    /// The `phase` label (`queued`, `delivering`, ...).
    pub label: &'static str,
    /// False for a terminal phase.
    pub running: bool,
}

/// What a resume counter counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Resume {
    /// A job taken up again from the journal after a restart.
    Job,
    /// A download continued with `Range` from bytes already on disk.
    Download,
    /// A delivery started from a non-zero offset.
    Delivery,
}

impl Resume {
    const ALL: [Resume; 3] = [Resume::Job, Resume::Download, Resume::Delivery];

    fn as_str(self) -> &'static str {
        match self {
            Resume::Job => "job",
            Resume::Download => "download",
            Resume::Delivery => "delivery",
        }
    }
}

/// A label value written with the escapes the text formats require
/// (backslash, quote, line feed): prometheus-client writes label values as
/// they are (prometheus/client_rust#151), and a child's device id is the
/// operator's text.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Escaped(pub String);

impl EncodeLabelValue for Escaped {
    fn encode(&self, out: &mut LabelValueEncoder<'_>) -> std::fmt::Result {
        for c in self.0.chars() {
            match c {
                '\\' => out.write_str("\\\\")?,
                '"' => out.write_str("\\\"")?,
                '\n' => out.write_str("\\n")?,
                c => out.write_char(c)?,
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct PhaseLabels {
    phase: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ChildLabels {
    child: Escaped,
}

impl ChildLabels {
    fn of(child: &str) -> Self {
        ChildLabels {
            child: Escaped(child.to_owned()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct CompletedLabels {
    outcome: &'static str,
    result_code: String,
}

impl CompletedLabels {
    fn of(result_code: ResultCode) -> Self {
        CompletedLabels {
            outcome: if result_code.is_success() {
                "succeeded"
            } else {
                "failed"
            },
            result_code: result_code.to_string(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct WaitLabels {
    reason: &'static str,
}

/// Why a running job waits instead of working (issue 15): the
/// `otabridge_jobs_waiting` gauge's `reason` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Waiting {
    /// Delivered, waiting for its activation window.
    Window,
    /// Held by the failure policy until its task is released.
    Held,
    /// Paused by an operator.
    Paused,
}

impl Waiting {
    const ALL: [Waiting; 3] = [Waiting::Window, Waiting::Held, Waiting::Paused];

    fn as_str(self) -> &'static str {
        match self {
            Waiting::Window => "window",
            Waiting::Held => "held",
            Waiting::Paused => "paused",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ResumeLabels {
    what: &'static str,
}

#[derive(Debug)]
struct Running {
    phase: &'static str,
    since: Instant,
}

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

#[derive(Debug)]
struct Inner {
    /// Jobs running in this process, by journal id: their phase and since
    /// when, for the duration histogram.
    running: Mutex<HashMap<i64, Running>>,
    jobs: Family<PhaseLabels, Gauge>,
    completed: Family<CompletedLabels, Counter>,
    /// The device ids that have series in the per-child families below
    /// (`delivered`, `job_retries`), which `prometheus-client` cannot list:
    /// what [`Metrics::follow_children`] looks through. Not a list of
    /// children (`child::Roster` is): a label index. Held while those
    /// families are written, so a series and its entry come and go together.
    child_series: Mutex<HashSet<String>>,
    delivered: Family<ChildLabels, Counter>,
    job_retries: Family<ChildLabels, Counter>,
    resumes: Family<ResumeLabels, Counter>,
    durations: Family<PhaseLabels, Histogram, fn() -> Histogram>,
    downloaded: Counter,
    /// Running jobs that wait, by journal id: why.
    waiting_jobs: Mutex<HashMap<i64, Waiting>>,
    waiting: Family<WaitLabels, Gauge>,
    held: Counter,
}

impl Default for Inner {
    fn default() -> Self {
        Inner {
            running: Mutex::default(),
            jobs: Family::default(),
            completed: Family::default(),
            child_series: Mutex::default(),
            delivered: Family::default(),
            job_retries: Family::default(),
            resumes: Family::default(),
            durations: Family::new_with_constructor(duration_histogram),
            downloaded: Counter::default(),
            waiting_jobs: Mutex::default(),
            waiting: Family::default(),
            held: Counter::default(),
        }
    }
}

/// The counters the engine and the package store update. Cheap to clone;
/// every clone is the same set.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    inner: Arc<Inner>,
}

impl Metrics {
    /// A fresh set, all zero.
    pub fn new() -> Self {
        Self::default()
    }

    fn running(&self) -> std::sync::MutexGuard<'_, HashMap<i64, Running>> {
        self.inner.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Declares the series a scrape shows before anything happened, as
    /// zeros: jobs and durations per running phase, counts per child, the
    /// success count and every resume kind. Dashboards and alerts then need
    /// no special case for a freshly started gateway.
    pub fn declare(&self, phases: &[&'static str], children: &[&str]) {
        // get_or_create makes the series; the guard it returns is dropped
        // at once.
        let i = &self.inner;
        for &phase in phases {
            drop(i.jobs.get_or_create(&PhaseLabels { phase }));
            drop(i.durations.get_or_create(&PhaseLabels { phase }));
        }
        self.follow_children(children);
        drop(
            i.completed
                .get_or_create(&CompletedLabels::of(ResultCode::SUCCESS)),
        );
        for r in Resume::ALL {
            drop(i.resumes.get_or_create(&ResumeLabels { what: r.as_str() }));
        }
        for w in Waiting::ALL {
            drop(i.waiting.get_or_create(&WaitLabels { reason: w.as_str() }));
        }
    }

    /// Makes the per-child series (delivered bytes, job retries) those of
    /// `children`, the device ids of the children driven now: a child new
    /// to the list gets its series at zero, one that left (an onboarded
    /// LwM2M client deleted on the platform) loses them. The exporter calls
    /// it before each scrape; a running job of a child that left may write
    /// its series again, and the next call removes it again.
    pub fn follow_children(&self, children: &[&str]) {
        let i = &self.inner;
        let mut have = self.child_series();
        have.retain(|id| {
            let keep = children.contains(&id.as_str());
            if !keep {
                let labels = ChildLabels::of(id);
                i.delivered.remove(&labels);
                i.job_retries.remove(&labels);
            }
            keep
        });
        for &child in children {
            if have.insert(child.to_owned()) {
                drop(i.delivered.get_or_create(&ChildLabels::of(child)));
                drop(i.job_retries.get_or_create(&ChildLabels::of(child)));
            }
        }
    }

    fn child_series(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.inner
            .child_series
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Adds every counter to `registry` under its exposition name.
    pub fn register(&self, registry: &mut Registry) {
        let i = &self.inner;
        registry.register(
            "otabridge_download_bytes",
            "Package bytes received from package servers.",
            i.downloaded.clone(),
        );
        registry.register(
            "otabridge_jobs",
            "Upgrade jobs running in this process, by phase.",
            i.jobs.clone(),
        );
        registry.register(
            "otabridge_jobs_completed",
            "Upgrade jobs ended since start, by outcome and IoTDA result code.",
            i.completed.clone(),
        );
        registry.register(
            "otabridge_delivered_bytes",
            "Image bytes each child acknowledged (bytes sent again after a restart from 0 count again).",
            i.delivered.clone(),
        );
        registry.register(
            "otabridge_job_retries",
            "Failed attempts of a job phase that were retried after a backoff, by child.",
            i.job_retries.clone(),
        );
        registry.register(
            "otabridge_resumes",
            "Work continued instead of restarted: jobs after a restart, downloads with Range, deliveries from a non-zero offset.",
            i.resumes.clone(),
        );
        registry.register(
            "otabridge_jobs_waiting",
            "Upgrade jobs running in this process that wait: for their activation window, held by the failure policy, paused by an operator.",
            i.waiting.clone(),
        );
        registry.register(
            "otabridge_children_held",
            "Children held by the failure policy (halt_failures) since start.",
            i.held.clone(),
        );
        registry.register(
            "otabridge_phase_duration_seconds",
            "Time jobs spent in each phase (measured in this process).",
            i.durations.clone(),
        );
    }

    /// Job `job` is now in `phase`; the time it spent in its previous phase
    /// goes into the duration histogram. A terminal phase is recorded by
    /// [`Metrics::job_finished`].
    pub fn job_phase(&self, job: i64, phase: impl Into<JobPhase>) {
        let phase = phase.into();
        if !phase.running {
            return;
        }
        let mut running = self.running();
        let now = Instant::now();
        match running.get_mut(&job) {
            Some(r) if r.phase == phase.label => {}
            Some(r) => {
                self.left(r, now);
                *r = Running {
                    phase: phase.label,
                    since: now,
                };
                self.entered(phase.label);
            }
            None => {
                running.insert(
                    job,
                    Running {
                        phase: phase.label,
                        since: now,
                    },
                );
                self.entered(phase.label);
            }
        }
    }

    fn entered(&self, phase: &'static str) {
        self.inner.jobs.get_or_create(&PhaseLabels { phase }).inc();
    }

    /// A running job leaves its phase `r` at `now`.
    fn left(&self, r: &Running, now: Instant) {
        let labels = PhaseLabels { phase: r.phase };
        self.inner.jobs.get_or_create(&labels).dec();
        let secs = (now - r.since).as_secs_f64();
        self.inner.durations.get_or_create(&labels).observe(secs);
    }

    /// Job `job` ended with `result_code`.
    pub fn job_finished(&self, job: i64, result_code: ResultCode) {
        self.job_waiting(job, None);
        let now = Instant::now();
        if let Some(r) = self.running().remove(&job) {
            self.left(&r, now);
        }
        let labels = CompletedLabels::of(result_code);
        self.inner.completed.get_or_create(&labels).inc();
    }

    /// Job `job` stopped without ending (the daemon is stopping; it resumes
    /// from the journal on the next start).
    pub fn job_stopped(&self, job: i64) {
        self.job_waiting(job, None);
        if let Some(r) = self.running().remove(&job) {
            let labels = PhaseLabels { phase: r.phase };
            self.inner.jobs.get_or_create(&labels).dec();
        }
    }

    /// Job `job` waits for `why`, or no longer waits (`None`).
    pub fn job_waiting(&self, job: i64, why: Option<Waiting>) {
        let mut w = self
            .inner
            .waiting_jobs
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let before = match why {
            Some(why) => w.insert(job, why),
            None => w.remove(&job),
        };
        if before == why {
            return;
        }
        if let Some(b) = before {
            let labels = WaitLabels { reason: b.as_str() };
            self.inner.waiting.get_or_create(&labels).dec();
        }
        if let Some(n) = why {
            let labels = WaitLabels { reason: n.as_str() };
            self.inner.waiting.get_or_create(&labels).inc();
        }
    }

    /// The failure policy held a child's job.
    pub fn child_held(&self) {
        self.inner.held.inc();
    }

    /// Child `child` acknowledged `bytes` more bytes.
    pub fn delivered(&self, child: &str, bytes: u64) {
        if bytes > 0 {
            let mut have = self.child_series();
            if !have.contains(child) {
                have.insert(child.to_owned());
            }
            let labels = ChildLabels::of(child);
            self.inner.delivered.get_or_create(&labels).inc_by(bytes);
        }
    }

    /// A job of `child` failed an attempt and will try again.
    pub fn job_retry(&self, child: &str) {
        let mut have = self.child_series();
        if !have.contains(child) {
            have.insert(child.to_owned());
        }
        self.inner
            .job_retries
            .get_or_create(&ChildLabels::of(child))
            .inc();
    }

    /// Job attempts of `child` tried again so far.
    pub fn job_retries(&self, child: &str) -> u64 {
        let labels = ChildLabels::of(child);
        self.inner.job_retries.get(&labels).map_or(0, |c| c.get())
    }

    /// Something resumed instead of starting over.
    pub fn resumed(&self, what: Resume) {
        let labels = ResumeLabels {
            what: what.as_str(),
        };
        self.inner.resumes.get_or_create(&labels).inc();
    }

    /// `bytes` more package bytes arrived from the package server.
    pub fn downloaded(&self, bytes: u64) {
        self.inner.downloaded.inc_by(bytes);
    }

    /// Bytes downloaded so far.
    pub fn downloaded_total(&self) -> u64 {
        self.inner.downloaded.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn phase(label: &'static str) -> JobPhase {
        JobPhase {
            label,
            running: true,
        }
    }

    fn text(m: &Metrics) -> String {
        let mut r = Registry::default();
        m.register(&mut r);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &r).unwrap();
        out
    }

    #[tokio::test(start_paused = true)]
    async fn phases_are_timed_and_jobs_counted() {
        let m = Metrics::new();
        m.declare(&["queued", "downloading", "delivering"], &["a\"b\\c\nd"]);
        m.job_phase(1, phase("queued"));
        tokio::time::advance(Duration::from_secs(2)).await;
        m.job_phase(1, phase("downloading"));
        m.job_phase(1, phase("downloading"));
        tokio::time::advance(Duration::from_secs(20)).await;
        m.job_phase(1, phase("delivering"));
        m.job_phase(2, phase("delivering"));
        tokio::time::advance(Duration::from_secs(100)).await;
        m.job_finished(1, ResultCode::SUCCESS);
        m.job_finished(2, ResultCode::CHECK_FAIL);
        let failed = JobPhase {
            label: "failed",
            running: false,
        };
        m.job_phase(3, failed);
        let t = text(&m);
        for line in [
            "otabridge_jobs{phase=\"delivering\"} 0",
            "otabridge_jobs{phase=\"queued\"} 0",
            "otabridge_jobs_completed_total{outcome=\"succeeded\",result_code=\"0\"} 1",
            "otabridge_jobs_completed_total{outcome=\"failed\",result_code=\"7\"} 1",
            "otabridge_phase_duration_seconds_sum{phase=\"queued\"} 2.0",
            "otabridge_phase_duration_seconds_count{phase=\"queued\"} 1",
            // 2 s: not within 1 s, within 5 s.
            "otabridge_phase_duration_seconds_bucket{le=\"1.0\",phase=\"queued\"} 0",
            "otabridge_phase_duration_seconds_bucket{le=\"5.0\",phase=\"queued\"} 1",
            "otabridge_phase_duration_seconds_sum{phase=\"downloading\"} 20.0",
            "otabridge_phase_duration_seconds_sum{phase=\"delivering\"} 200.0",
            // 100 s is over the 60 s bucket.
            "otabridge_phase_duration_seconds_bucket{le=\"60.0\",phase=\"delivering\"} 0",
            "otabridge_phase_duration_seconds_bucket{le=\"300.0\",phase=\"delivering\"} 2",
            "otabridge_resumes_total{what=\"download\"} 0",
            // Label values are escaped.
            "otabridge_delivered_bytes_total{child=\"a\\\"b\\\\c\\nd\"} 0",
        ] {
            assert!(t.lines().any(|l| l == line), "{line} missing from\n{t}");
        }
        assert!(!t.contains("phase=\"failed\""), "{t}");
    }

    #[test]
    fn per_child_series_follow_the_children() {
        let m = Metrics::new();
        m.declare(&[], &["a", "b"]);
        m.delivered("b", 10);
        m.job_retry("b");
        let t = text(&m);
        assert!(
            t.contains("otabridge_delivered_bytes_total{child=\"a\"} 0"),
            "{t}"
        );
        assert!(
            t.contains("otabridge_job_retries_total{child=\"b\"} 1"),
            "{t}"
        );
        // "c" onboarded, "b" deleted.
        m.follow_children(&["a", "c"]);
        let t = text(&m);
        assert!(
            t.contains("otabridge_delivered_bytes_total{child=\"c\"} 0"),
            "{t}"
        );
        assert!(
            t.contains("otabridge_job_retries_total{child=\"c\"} 0"),
            "{t}"
        );
        assert!(!t.contains("child=\"b\""), "{t}");
        assert_eq!(m.job_retries("b"), 0);
        // A job of "b" still running writes again: gone at the next call.
        m.delivered("b", 5);
        assert!(text(&m).contains("otabridge_delivered_bytes_total{child=\"b\"} 5"));
        m.follow_children(&["a", "c"]);
        let t = text(&m);
        assert!(!t.contains("child=\"b\""), "{t}");
        assert!(
            t.contains("otabridge_delivered_bytes_total{child=\"a\"} 0"),
            "{t}"
        );
    }

    #[test]
    fn waiting_jobs_are_counted_by_reason_and_holds_add_up() {
        let m = Metrics::new();
        m.declare(&[], &[]);
        let line = |t: &str, reason: &str, n: u32| {
            let l = format!("otabridge_jobs_waiting{{reason=\"{reason}\"}} {n}");
            assert!(t.lines().any(|x| x == l), "{l} missing from\n{t}");
        };
        let t = text(&m);
        for r in ["window", "held", "paused"] {
            line(&t, r, 0);
        }
        assert!(
            t.lines().any(|l| l == "otabridge_children_held_total 0"),
            "{t}"
        );
        m.job_waiting(1, Some(Waiting::Window));
        m.job_waiting(1, Some(Waiting::Window));
        m.job_waiting(2, Some(Waiting::Held));
        m.child_held();
        m.job_waiting(3, Some(Waiting::Held));
        m.child_held();
        let t = text(&m);
        line(&t, "window", 1);
        line(&t, "held", 2);
        // Released, paused, ended, stopped.
        m.job_waiting(2, None);
        m.job_waiting(3, Some(Waiting::Paused));
        m.job_finished(1, ResultCode::SUCCESS);
        let t = text(&m);
        line(&t, "window", 0);
        line(&t, "held", 0);
        line(&t, "paused", 1);
        assert!(
            t.lines().any(|l| l == "otabridge_children_held_total 2"),
            "{t}"
        );
        m.job_stopped(3);
        line(&text(&m), "paused", 0);
    }
}
