//! Activation windows (issue 15 item 1) under paused tokio time: the
//! engine with a real journal, package store and HTTPS package server, and
//! in-process children; wall-clock time follows tokio's clock
//! (`clock::Source::Tokio`), and the zone is a TZif file written here with
//! the offset that puts local time at 06:00 when the test starts.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use otabridge::child::memory::MemoryChild;
use otabridge::child::{Buses, Child};
use otabridge::clock;
use otabridge::config::{DownloadConfig, OtaConfig, Window, Zone};
use otabridge::journal::{Journal, SharedJournal};
use otabridge::metrics::Metrics;
use otabridge::ota::control::{Action, JobRef, JobView};
use otabridge::ota::engine::Engine;
use otabridge::ota::window::Schedule;
use otabridge::package::{DownloadOptions, PackageStore};
use otabridge::platform::Platform;
use otabridge::sim::package_server::{Access, PackageServer, Source};
use otabridge_codecs::iotda::{Upgrade, UpgradeKind};

const H: i64 = 3600;

/// A TZif (RFC 8536, version 1) file for a zone `offset` seconds east of
/// UTC, without changes.
fn tzif(path: &Path, offset: i32) {
    let mut b = b"TZif\0".to_vec();
    b.extend([0u8; 15]);
    for n in [0u32, 0, 0, 0, 1, 4] {
        b.extend(n.to_be_bytes());
    }
    b.extend(offset.to_be_bytes());
    b.extend([0, 0]);
    b.extend(b"TST\0");
    std::fs::write(path, b).unwrap();
}

struct Bench {
    engine: Engine,
    metrics: Metrics,
    server: PackageServer,
    children: HashMap<String, Arc<MemoryChild>>,
    /// Unix time at local 06:00 on the first day.
    t0: i64,
    dir: tempfile::TempDir,
}

/// An engine whose children may be activated 22:00-05:00 local time.
async fn bench(ids: &[&str]) -> Bench {
    clock::install(clock::Source::Tokio);
    let dir = tempfile::tempdir().unwrap();
    let t0 = clock::now_unix();
    // The offset that makes local time 06:00:00 now.
    let mut offset = (6 * H - t0.rem_euclid(24 * H)).rem_euclid(24 * H);
    if offset > 12 * H {
        offset -= 24 * H;
    }
    let zone_file = dir.path().join("zone");
    tzif(&zone_file, offset as i32);
    let zone = Zone::load(zone_file.to_str().unwrap()).unwrap();
    let window = Window::parse("22:00-05:00").unwrap().unwrap();

    let server = PackageServer::start(&["127.0.0.1"]).await.unwrap();
    let ca = dir.path().join("pkg-ca.pem");
    std::fs::write(&ca, server.ca_pem()).unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    let journal = SharedJournal::open(&state).unwrap();
    let platform = Platform::new("gw", journal.clone());
    let store = PackageStore::with_options(
        &state.join("packages"),
        journal.clone(),
        &DownloadConfig {
            ca_file: Some(ca),
            ..DownloadConfig::default()
        },
        DownloadOptions::default(),
    )
    .await
    .unwrap();
    let kids: HashMap<String, Arc<MemoryChild>> = ids
        .iter()
        .map(|id| (id.to_string(), Arc::new(MemoryChild::new(id, "1.0.0"))))
        .collect();
    let all: Vec<Arc<dyn Child>> = kids.values().map(|c| c.clone() as Arc<dyn Child>).collect();
    let metrics = Metrics::new();
    metrics.declare(&[], &[]);
    let engine = Engine::new(
        platform,
        journal,
        store,
        &all,
        Buses::new(&all),
        &OtaConfig::default(),
        metrics.clone(),
    );
    let schedule = Schedule { window, zone };
    engine.set_activation_windows(
        ids.iter()
            .map(|id| (id.to_string(), schedule.clone()))
            .collect(),
    );
    Bench {
        engine,
        metrics,
        server,
        children: kids,
        t0,
        dir,
    }
}

impl Bench {
    fn upgrade(&self, id: &str, expires: u64) -> Upgrade {
        let served = self
            .server
            .add(
                id,
                Source::Generated {
                    len: 16 * 1024,
                    seed: 3,
                },
                Access::Bearer,
            )
            .unwrap();
        Upgrade {
            expires: Some(expires),
            ..served.upgrade(
                "2.0.0",
                self.server.issue_token(Duration::from_secs(3600)),
                "task-w",
            )
        }
    }

    async fn submit(&self, id: &str, expires: u64) {
        let up = self.upgrade(id, expires);
        self.engine
            .submit(id, UpgradeKind::Firmware, false, up)
            .await;
    }

    async fn view(&self, id: &str) -> JobView {
        self.engine.job(&JobRef::Child(id.into())).await.unwrap()
    }

    /// Waits (bounded: 2000 steps of 100 ms of paused time) until child
    /// `id`'s job is in `state`.
    async fn until(&self, id: &str, state: &str) -> JobView {
        for _ in 0..2000 {
            if let Ok(v) = self.engine.job(&JobRef::Child(id.into())).await {
                if v.state == state {
                    return v;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("{id}: not {state}: {:?}", self.view(id).await);
    }

    /// Sleeps (paused time) until Unix time `t`.
    async fn sleep_until(&self, t: i64) {
        let now = clock::now_unix();
        assert!(t >= now, "{t} is past ({now})");
        tokio::time::sleep(Duration::from_secs((t - now) as u64)).await;
    }

    /// The `otabridge_jobs_waiting` gauge for `reason`.
    fn waiting(&self, reason: &str) -> i64 {
        let mut r = prometheus_client::registry::Registry::default();
        self.metrics.register(&mut r);
        let mut t = String::new();
        prometheus_client::encoding::text::encode(&mut t, &r).unwrap();
        let prefix = format!("otabridge_jobs_waiting{{reason=\"{reason}\"}} ");
        t.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("{prefix} missing from\n{t}"))
            .parse()
            .unwrap()
    }

    fn activations(&self, id: &str) -> u32 {
        self.children[id].activations()
    }

    /// The reports queued for the platform (the outbox, not sent: no
    /// MQTT session here), as text.
    fn reports(&self) -> Vec<String> {
        let j = Journal::open_read_only(&self.dir.path().join("state")).unwrap();
        j.outbox_after(0, 10_000)
            .unwrap()
            .into_iter()
            .map(|e| String::from_utf8(e.payload).unwrap())
            .collect()
    }
}

#[tokio::test(start_paused = true)]
async fn activations_wait_for_the_window_across_midnight_and_a_late_window_fails_before_the_deadline(
) {
    let b = bench(&["p_night", "p_late", "p_after_midnight"]).await;
    let t0 = b.t0;

    // Delivered at 06:00, it waits for 22:00 without activating.
    b.submit("p_night", 86_400).await;
    let v = b.until("p_night", "waiting_window").await;
    assert_eq!(v.phase, "activating", "{v:?}");
    let waiting = v.waiting.clone().unwrap();
    assert!(
        waiting.starts_with("for the activation window 22:00-05:00 (")
            && waiting.contains(" 22:00 "),
        "{waiting}"
    );
    assert_eq!(b.children["p_night"].delivery_starts(), vec![0]);
    assert_eq!(b.activations("p_night"), 0);
    assert_eq!(b.waiting("window"), 1);
    assert!(
        b.reports()
            .iter()
            .any(|r| r.contains("\"p_night\"") && r.contains("waiting for the activation window")),
        "{:?}",
        b.reports()
    );

    // Its deadline (10 h: `expires`) comes before 22:00: it fails at once,
    // delivered and not activated, long before the deadline.
    b.submit("p_late", 10 * 3600).await;
    let v = b.until("p_late", "failed").await;
    assert_eq!(v.result_code, Some(10), "{v:?}");
    let d = v.description.clone().unwrap();
    assert!(
        d.starts_with("Firmware update failed: not activated: the activation window 22:00-05:00")
            && d.contains("too late for the deadline")
            && d.contains("the child keeps running 1.0.0"),
        "{d}"
    );
    assert!(clock::now_unix() < t0 + 60, "reported at once");
    assert!(
        (t0 + 10 * H..t0 + 10 * H + 60).contains(&v.deadline_unix),
        "{v:?}"
    );
    assert_eq!(b.children["p_late"].delivery_starts(), vec![0]);
    assert_eq!(b.activations("p_late"), 0);

    // One minute before the window: still waiting.
    b.sleep_until(t0 + 16 * H - 60).await;
    assert_eq!(b.view("p_night").await.state, "waiting_window");
    assert_eq!(b.activations("p_night"), 0);
    // At 22:00 it activates and succeeds, inside the window.
    let v = b.until("p_night", "succeeded").await;
    assert_eq!(b.activations("p_night"), 1);
    let done = clock::now_unix();
    assert!(
        (t0 + 16 * H..t0 + 16 * H + 60).contains(&done),
        "{done} {t0}"
    );
    assert_eq!(v.waiting, None);
    assert_eq!(b.waiting("window"), 0);

    // At 00:30 the next day the window is open (it crosses midnight): an
    // event then activates at once.
    b.sleep_until(t0 + 18 * H + 30 * 60).await;
    b.submit("p_after_midnight", 86_400).await;
    b.until("p_after_midnight", "succeeded").await;
    assert_eq!(b.activations("p_after_midnight"), 1);
    assert!(clock::now_unix() < t0 + 18 * H + 31 * 60);
    assert!(!b
        .reports()
        .iter()
        .any(|r| r.contains("\"p_after_midnight\"") && r.contains("waiting")));
}

#[tokio::test(start_paused = true)]
async fn a_job_waiting_for_its_window_can_be_paused_resumed_and_cancelled() {
    let b = bench(&["p_wait"]).await;
    b.submit("p_wait", 86_400).await;
    b.until("p_wait", "waiting_window").await;

    let v = b
        .engine
        .control(&JobRef::Child("p_wait".into()), Action::Pause)
        .await
        .unwrap();
    assert_eq!(v.state, "paused", "{v:?}");
    assert_eq!((b.waiting("paused"), b.waiting("window")), (1, 0));
    let v = b
        .engine
        .control(&JobRef::Child("p_wait".into()), Action::Resume)
        .await
        .unwrap();
    assert_ne!(v.state, "paused", "{v:?}");
    b.until("p_wait", "waiting_window").await;
    assert_eq!((b.waiting("paused"), b.waiting("window")), (0, 1));

    // Nothing was activated: the cancel is allowed, and ends the job with
    // one report; the child keeps its version.
    let v = b
        .engine
        .control(&JobRef::Child("p_wait".into()), Action::Cancel)
        .await
        .unwrap();
    assert!(
        matches!(v.state.as_str(), "cancelling" | "cancelled"),
        "{v:?}"
    );
    let v = b.until("p_wait", "cancelled").await;
    assert_eq!(v.result_code, Some(255), "{v:?}");
    assert_eq!(b.waiting("window"), 0);
    // Past the window's opening, still nothing activated.
    b.sleep_until(b.t0 + 17 * H).await;
    assert_eq!(b.activations("p_wait"), 0);
    assert_eq!(b.children["p_wait"].version(), "1.0.0");
    let terminal = b
        .reports()
        .iter()
        .filter(|r| {
            r.contains("\"p_wait\"") && r.contains(
                "cancelled by the gateway's operator while waiting for the activation window; the \
                 child keeps the version it ran",
            )
        })
        .count();
    assert_eq!(terminal, 1, "{:?}", b.reports());
}
