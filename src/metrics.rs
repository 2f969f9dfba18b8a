//! Prometheus metrics: what the engine and the package store count, what is
//! read at scrape time (link state, outbox depth, the drivers' retry
//! counters), and the small HTTP/1.1 endpoint that serves them
//! (`[metrics] listen`, off by default).
//!
//! The exposition is Prometheus text format 0.0.4. Every family is always
//! present (zero when nothing happened yet), so dashboards and alerts do not
//! have to special-case a freshly started gateway. The endpoint answers
//! `GET`/`HEAD /metrics` and `/`; it has no authentication, so bind it to
//! loopback or a management network.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use otabridge_codecs::iotda::ResultCode;

use crate::child::Child;
use crate::journal;
use crate::ota::job::Phase;
use crate::platform::{LinkState, Platform};

/// Upper bounds of the phase duration histogram, in seconds: a phase takes
/// from under a second (an in-memory child) to hours (a large image over a
/// slow serial line).
pub const DURATION_BUCKETS: [f64; 10] = [
    0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 14400.0, 86400.0,
];

/// The phases a running job can be in, in pipeline order.
const ACTIVE_PHASES: [Phase; 5] = [
    Phase::Queued,
    Phase::Downloading,
    Phase::Delivering,
    Phase::Activating,
    Phase::Verifying,
];

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

#[derive(Debug, Default, Clone)]
struct Histogram {
    /// Cumulative counts per bucket of [`DURATION_BUCKETS`].
    buckets: [u64; DURATION_BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, secs: f64) {
        for (b, le) in self.buckets.iter_mut().zip(DURATION_BUCKETS) {
            if secs <= le {
                *b += 1;
            }
        }
        self.count += 1;
        self.sum += secs;
    }
}

#[derive(Debug)]
struct Running {
    phase: Phase,
    since: Instant,
}

#[derive(Debug, Default)]
struct State {
    /// Jobs running in this process, by journal id.
    running: HashMap<i64, Running>,
    /// Finished jobs by result code (0: succeeded).
    completed: BTreeMap<ResultCode, u64>,
    /// Bytes the children acknowledged, by child.
    delivered: BTreeMap<String, u64>,
    /// Job-level retries (a failed attempt followed by a backoff), by child.
    job_retries: BTreeMap<String, u64>,
    resumes: BTreeMap<Resume, u64>,
    durations: BTreeMap<&'static str, Histogram>,
}

#[derive(Debug, Default)]
struct Inner {
    downloaded: AtomicU64,
    state: Mutex<State>,
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

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Job `job` is now in `phase`; the time it spent in its previous phase
    /// goes into the duration histogram. Terminal phases are recorded by
    /// [`Metrics::job_finished`].
    pub fn job_phase(&self, job: i64, phase: Phase) {
        if phase.is_terminal() {
            return;
        }
        let mut s = self.state();
        if s.running.get(&job).is_some_and(|r| r.phase == phase) {
            return;
        }
        let now = Instant::now();
        let left = match s.running.get_mut(&job) {
            Some(r) => {
                let left = (r.phase, now - r.since);
                *r = Running { phase, since: now };
                Some(left)
            }
            None => {
                s.running.insert(job, Running { phase, since: now });
                None
            }
        };
        if let Some((p, d)) = left {
            s.durations
                .entry(p.as_str())
                .or_default()
                .observe(d.as_secs_f64());
        }
    }

    /// Job `job` ended with `result_code` (0 is success).
    pub fn job_finished(&self, job: i64, result_code: ResultCode) {
        let now = Instant::now();
        let mut s = self.state();
        if let Some(r) = s.running.remove(&job) {
            let d = now - r.since;
            s.durations
                .entry(r.phase.as_str())
                .or_default()
                .observe(d.as_secs_f64());
        }
        *s.completed.entry(result_code).or_default() += 1;
    }

    /// Job `job` stopped without ending (the daemon is stopping; it resumes
    /// from the journal on the next start).
    pub fn job_stopped(&self, job: i64) {
        self.state().running.remove(&job);
    }

    /// Child `child` acknowledged `bytes` more bytes.
    pub fn delivered(&self, child: &str, bytes: u64) {
        if bytes > 0 {
            bump(&mut self.state().delivered, child, bytes);
        }
    }

    /// A job of `child` failed an attempt and will try again.
    pub fn job_retry(&self, child: &str) {
        bump(&mut self.state().job_retries, child, 1);
    }

    /// Job attempts of `child` tried again so far.
    pub fn job_retries(&self, child: &str) -> u64 {
        self.state().job_retries.get(child).copied().unwrap_or(0)
    }

    /// Something resumed instead of starting over.
    pub fn resumed(&self, what: Resume) {
        *self.state().resumes.entry(what).or_default() += 1;
    }

    /// `bytes` more package bytes arrived from the package server.
    pub fn downloaded(&self, bytes: u64) {
        self.inner.downloaded.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Bytes downloaded so far.
    pub fn downloaded_total(&self) -> u64 {
        self.inner.downloaded.load(Ordering::Relaxed)
    }
}

/// Adds `n` to `child`'s counter, allocating its name only the first time.
fn bump(map: &mut BTreeMap<String, u64>, child: &str, n: u64) {
    match map.get_mut(child) {
        Some(v) => *v += n,
        None => {
            map.insert(child.to_owned(), n);
        }
    }
}

/// Everything one scrape reads: the counters, the platform link and outbox,
/// and the children's drivers.
#[derive(Debug, Clone)]
pub struct Exporter {
    metrics: Metrics,
    platform: Platform,
    children: Vec<Arc<dyn Child>>,
}

/// Escapes a label value (text format 0.0.4: backslash, quote, newline).
fn label(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

impl Exporter {
    /// An exporter over `metrics`, `platform` and `children`.
    pub fn new(metrics: Metrics, platform: Platform, children: Vec<Arc<dyn Child>>) -> Self {
        Exporter {
            metrics,
            platform,
            children,
        }
    }

    /// A counter family with one series per configured child (0 for a
    /// child `counts` has not seen).
    fn per_child(&self, o: &mut String, name: &str, help: &str, counts: &BTreeMap<String, u64>) {
        family(o, name, "counter", help);
        for c in &self.children {
            let id = c.device_id();
            let n = counts.get(id).copied().unwrap_or(0);
            let _ = writeln!(o, "{name}{{child=\"{}\"}} {n}", label(id));
        }
    }

    /// The exposition text of one scrape.
    pub fn render(&self) -> String {
        let mut o = String::with_capacity(4096);
        family(
            &mut o,
            "otabridge_build_info",
            "gauge",
            "Always 1; the version label names the running build.",
        );
        let _ = writeln!(
            o,
            "otabridge_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );

        family(
            &mut o,
            "otabridge_mqtt_connected",
            "gauge",
            "1 while the MQTT session to the platform is up (SUBACK received), else 0.",
        );
        let up = *self.platform.link_state().borrow() == LinkState::Up;
        let _ = writeln!(o, "otabridge_mqtt_connected {}", u8::from(up));

        family(
            &mut o,
            "otabridge_outbox_reports",
            "gauge",
            "Reports queued in the durable outbox, not yet acknowledged by the platform.",
        );
        match journal::lock(self.platform.journal()).outbox_len() {
            Ok(n) => {
                let _ = writeln!(o, "otabridge_outbox_reports {n}");
            }
            Err(e) => warn!("metrics: cannot read the outbox depth: {e}"),
        }

        family(
            &mut o,
            "otabridge_children",
            "gauge",
            "Configured children by transport.",
        );
        let mut by_transport: BTreeMap<&str, u64> = BTreeMap::new();
        for c in &self.children {
            *by_transport.entry(c.transport()).or_default() += 1;
        }
        for (t, n) in &by_transport {
            let _ = writeln!(o, "otabridge_children{{transport=\"{t}\"}} {n}");
        }

        family(
            &mut o,
            "otabridge_download_bytes_total",
            "counter",
            "Package bytes received from package servers.",
        );
        let _ = writeln!(
            o,
            "otabridge_download_bytes_total {}",
            self.metrics.downloaded_total()
        );

        family(
            &mut o,
            "otabridge_chunk_retries_total",
            "counter",
            "Requests a child driver sent again (no answer in time, or a retryable error).",
        );
        for c in &self.children {
            let _ = writeln!(
                o,
                "otabridge_chunk_retries_total{{child=\"{}\",transport=\"{}\"}} {}",
                label(c.device_id()),
                c.transport(),
                c.chunk_retries()
            );
        }

        let s = self.metrics.state();
        family(
            &mut o,
            "otabridge_jobs",
            "gauge",
            "Upgrade jobs running in this process, by phase.",
        );
        for p in ACTIVE_PHASES {
            let n = s.running.values().filter(|r| r.phase == p).count();
            let _ = writeln!(o, "otabridge_jobs{{phase=\"{}\"}} {n}", p.as_str());
        }

        family(
            &mut o,
            "otabridge_jobs_completed_total",
            "counter",
            "Upgrade jobs ended since start, by outcome and IoTDA result code.",
        );
        if !s.completed.contains_key(&ResultCode::SUCCESS) {
            let _ = writeln!(
                o,
                "otabridge_jobs_completed_total{{outcome=\"succeeded\",result_code=\"0\"}} 0"
            );
        }
        for (code, n) in &s.completed {
            let outcome = if code.is_success() {
                "succeeded"
            } else {
                "failed"
            };
            let _ = writeln!(
                o,
                "otabridge_jobs_completed_total{{outcome=\"{outcome}\",result_code=\"{code}\"}} {n}"
            );
        }

        self.per_child(
            &mut o,
            "otabridge_delivered_bytes_total",
            "Image bytes each child acknowledged (bytes sent again after a restart from 0 count again).",
            &s.delivered,
        );
        self.per_child(
            &mut o,
            "otabridge_job_retries_total",
            "Failed attempts of a job phase that were retried after a backoff, by child.",
            &s.job_retries,
        );

        family(
            &mut o,
            "otabridge_resumes_total",
            "counter",
            "Work continued instead of restarted: jobs after a restart, downloads with Range, deliveries from a non-zero offset.",
        );
        for r in Resume::ALL {
            let n = s.resumes.get(&r).copied().unwrap_or(0);
            let _ = writeln!(o, "otabridge_resumes_total{{what=\"{}\"}} {n}", r.as_str());
        }

        family(
            &mut o,
            "otabridge_phase_duration_seconds",
            "histogram",
            "Time jobs spent in each phase (measured in this process).",
        );
        let empty = Histogram::default();
        for p in ACTIVE_PHASES {
            let name = p.as_str();
            let h = s.durations.get(name).unwrap_or(&empty);
            for (le, n) in DURATION_BUCKETS.iter().zip(h.buckets) {
                let _ = writeln!(
                    o,
                    "otabridge_phase_duration_seconds_bucket{{phase=\"{name}\",le=\"{le}\"}} {n}"
                );
            }
            let _ = writeln!(
                o,
                "otabridge_phase_duration_seconds_bucket{{phase=\"{name}\",le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(
                o,
                "otabridge_phase_duration_seconds_sum{{phase=\"{name}\"}} {}",
                h.sum
            );
            let _ = writeln!(
                o,
                "otabridge_phase_duration_seconds_count{{phase=\"{name}\"}} {}",
                h.count
            );
        }
        o
    }
}

/// Largest request head the endpoint reads.
const MAX_HEAD: usize = 8192;
/// Time a client gets to send its request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once; more wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 8;

/// Why the endpoint could not start.
#[derive(Debug, thiserror::Error)]
#[error("metrics.listen {addr}: cannot listen: {source}")]
pub struct ListenError {
    /// The configured address.
    pub addr: SocketAddr,
    /// What the OS said.
    #[source]
    pub source: std::io::Error,
}

/// Binds the endpoint's socket.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, ListenError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ListenError { addr, source })
}

/// Serves scrapes on `listener` until `stop` turns true.
pub async fn serve(listener: TcpListener, exporter: Exporter, stop: watch::Receiver<bool>) {
    if let Ok(a) = listener.local_addr() {
        info!("metrics on http://{a}/metrics");
    }
    let exporter = Arc::new(exporter);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut stop = stop;
    let stopped = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    tokio::pin!(stopped);
    loop {
        tokio::select! {
            _ = &mut stopped => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let Ok(permit) = slots.clone().acquire_owned().await else { return };
                    let exporter = exporter.clone();
                    tokio::spawn(async move {
                        if let Err(e) = answer(stream, &exporter).await {
                            debug!(%peer, "metrics request: {e}");
                        }
                        drop(permit);
                    });
                }
                Err(e) => {
                    // Out of file descriptors and the like: wait, then go on.
                    warn!("metrics: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }
}

/// What a request head asks for.
#[derive(Debug, PartialEq, Eq)]
enum Ask {
    Metrics { head_only: bool },
    Index { head_only: bool },
    NotFound,
    BadMethod,
    Malformed,
}

fn route(head: &[u8]) -> Option<Ask> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(head) {
        Ok(httparse::Status::Partial) => None,
        Err(_) => Some(Ask::Malformed),
        Ok(httparse::Status::Complete(_)) => {
            let head_only = match req.method {
                Some("GET") => false,
                Some("HEAD") => true,
                _ => return Some(Ask::BadMethod),
            };
            let path = req.path.unwrap_or("/");
            let path = path.split_once('?').map_or(path, |(p, _)| p);
            Some(match path {
                "/metrics" => Ask::Metrics { head_only },
                "/" => Ask::Index { head_only },
                _ => Ask::NotFound,
            })
        }
    }
}

async fn answer(mut stream: TcpStream, exporter: &Exporter) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(512);
    let ask = tokio::time::timeout(HEAD_TIMEOUT, async {
        let mut chunk = [0u8; 1024];
        loop {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Ok::<_, std::io::Error>(None);
            }
            buf.extend_from_slice(&chunk[..n]);
            if let Some(a) = route(&buf) {
                return Ok(Some(a));
            }
            if buf.len() > MAX_HEAD {
                return Ok(Some(Ask::Malformed));
            }
        }
    })
    .await;
    let ask = match ask {
        Ok(Ok(Some(a))) => a,
        Ok(Ok(None)) => return Ok(()),
        Ok(Err(e)) => return Err(e),
        Err(_) => Ask::Malformed,
    };
    let (status, ctype, body, head_only, extra) = match ask {
        Ask::Metrics { head_only } => (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            exporter.render(),
            head_only,
            "",
        ),
        Ask::Index { head_only } => (
            "200 OK",
            "text/plain; charset=utf-8",
            "otabridge: metrics at /metrics\n".to_owned(),
            head_only,
            "",
        ),
        Ask::NotFound => (
            "404 Not Found",
            "text/plain; charset=utf-8",
            "not found: metrics are at /metrics\n".to_owned(),
            false,
            "",
        ),
        Ask::BadMethod => (
            "405 Method Not Allowed",
            "text/plain; charset=utf-8",
            "only GET and HEAD\n".to_owned(),
            false,
            "Allow: GET, HEAD\r\n",
        ),
        Ask::Malformed => (
            "400 Bad Request",
            "text/plain; charset=utf-8",
            "malformed request\n".to_owned(),
            false,
            "",
        ),
    };
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(body.as_bytes());
    }
    stream.write_all(&out).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_requests() {
        assert_eq!(route(b"GET /metrics HTTP/1.1\r\nHost: x\r\n"), None);
        assert_eq!(
            route(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Some(Ask::Metrics { head_only: false })
        );
        assert_eq!(
            route(b"HEAD /metrics?x=1 HTTP/1.0\r\n\r\n"),
            Some(Ask::Metrics { head_only: true })
        );
        assert_eq!(
            route(b"GET / HTTP/1.1\r\n\r\n"),
            Some(Ask::Index { head_only: false })
        );
        assert_eq!(route(b"GET /x HTTP/1.1\r\n\r\n"), Some(Ask::NotFound));
        assert_eq!(
            route(b"POST /metrics HTTP/1.1\r\n\r\n"),
            Some(Ask::BadMethod)
        );
        assert_eq!(route(b"\x00\x01garbage\r\n\r\n"), Some(Ask::Malformed));
    }

    #[test]
    fn labels_are_escaped() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[tokio::test(start_paused = true)]
    async fn phases_are_timed_and_jobs_counted() {
        let m = Metrics::new();
        m.job_phase(1, Phase::Queued);
        tokio::time::advance(Duration::from_secs(2)).await;
        m.job_phase(1, Phase::Downloading);
        m.job_phase(1, Phase::Downloading);
        tokio::time::advance(Duration::from_secs(20)).await;
        m.job_phase(1, Phase::Delivering);
        m.job_phase(2, Phase::Delivering);
        tokio::time::advance(Duration::from_secs(100)).await;
        m.job_finished(1, ResultCode::SUCCESS);
        m.job_finished(2, ResultCode::CHECK_FAIL);
        m.job_phase(3, Phase::Failed);
        let s = m.state();
        assert!(s.running.is_empty());
        assert_eq!(s.completed.get(&ResultCode::SUCCESS), Some(&1));
        assert_eq!(s.completed.get(&ResultCode::CHECK_FAIL), Some(&1));
        let q = &s.durations["queued"];
        assert_eq!((q.count, q.sum), (1, 2.0));
        // 2 s: not within 1 s, within 5 s.
        assert_eq!(&q.buckets[..3], &[0, 0, 1]);
        let d = &s.durations["downloading"];
        assert_eq!((d.count, d.sum), (1, 20.0));
        let v = &s.durations["delivering"];
        assert_eq!((v.count, v.sum), (2, 200.0));
        assert_eq!(v.buckets[4], 0, "100 s is over the 60 s bucket");
        assert_eq!(v.buckets[5], 2);
    }
}
