//! A queue-mode LwM2M child (issue 13 item 4) through the real
//! `otabridge run`: a job for it while it sleeps waits in a visible phase,
//! "waiting for the child to wake" (`otabridge status` text and `--json`),
//! and goes on when it next updates; a `version_query` while it sleeps is
//! answered with the version it last reported, and the log says so; the
//! delivery's wait for State 2 is observed (RFC 7641). Bounded waits only.

mod run_support;

use std::time::{Duration, Instant};

use otabridge::sim::coap_child::{CoapChildSim, Registering, SimOptions};
use otabridge::sim::package_server::{PackageServer, Served};
use otabridge::sim::testbed::Testbed;
use otabridge_codecs::iotda::event::{Status, VersionQuery};
use otabridge_codecs::iotda::Event;
use run_support::{free_udp_port, registering, upgrade_event, upgrade_to, Seen};

const ID: &str = "p_sleepy";

/// Waits (bounded) until `done` holds for what the platform received.
async fn wait(tb: &mut Testbed, seen: &mut Seen, log: &str, done: impl Fn(&Seen) -> bool) {
    run_support::wait_child(tb, ID, seen, log, done).await
}

/// `otabridge status` on the test's config: (text, JSON).
fn status(dir: &std::path::Path) -> (String, serde_json::Value) {
    (run_support::status_text(dir), run_support::status_json(dir))
}

/// A testbed in `d`, a package of `len` bytes on a package server, a
/// gateway whose `[coap]` listens on a free port with `queue_window_secs`
/// and has the queue-mode child `ID` registering as `endpoint`, and a
/// simulated client for it that listens `awake` after each Register or
/// Update, ONLINE: the testbed, the server, the package, the daemon, its
/// log and the client.
async fn sleepy(
    d: &std::path::Path,
    len: u64,
    window: u64,
    endpoint: &str,
    awake: Duration,
) -> (
    Testbed,
    PackageServer,
    Served,
    run_support::Daemon,
    String,
    CoapChildSim,
    Seen,
) {
    let mut tb = Testbed::new(d).await.unwrap();
    let (server, pkg_ca) = run_support::package_server(d).await;
    let pkg = run_support::generated(&server, len, 3);
    let port = free_udp_port();
    let extra = format!(
        "[download]\nca_file = {:?}\n\n[coap]\nlisten = \"127.0.0.1:{port}\"\n\
         queue_window_secs = {window}\n\n\
         [ota]\nretry_min_ms = 200\nretry_max_ms = 1000\n\n\
         [[child]]\ndevice_id = \"{ID}\"\ntransport = \"coap\"\nendpoint = \"{endpoint}\"\n",
        pkg_ca.display().to_string(),
    );
    let (daemon, log) = run_support::run(&tb, d, &extra).await;
    let mut seen = Seen::default();
    let mut opts = registering(port, endpoint);
    if let Some(reg) = opts.register.as_mut() {
        reg.queue = true;
        reg.awake = awake;
    }
    let sim = CoapChildSim::start(opts).await.unwrap();
    wait(&mut tb, &mut seen, &log, |s| {
        s.statuses.last() == Some(&Status::Online)
    })
    .await;
    (tb, server, pkg, daemon, log, sim, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_for_a_sleeping_child_waits_visibly_until_it_wakes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (mut tb, server, pkg, _daemon, log, sim, mut seen) =
        sleepy(d, 30_000, 5, "urn:dev:sleepy", Duration::from_secs(5)).await;
    // Awake (it just registered, and listens 5 s): a version query reads
    // it, and the gateway remembers what it said.
    tb.send(Some(ID), &Event::VersionQuery(VersionQuery::default()))
        .await
        .unwrap();
    wait(&mut tb, &mut seen, &log, |s| !s.versions.is_empty()).await;
    assert_eq!(sim.stats().slept_through, 0, "read while awake");
    // Asleep: both sides' 5 s windows run out (nothing is sent meanwhile).
    // Not a timing assertion: if either side were still awake, the steps
    // below would still pass, only without showing the sleeping paths,
    // which the log assertions then catch.
    tokio::time::sleep(Duration::from_millis(6000)).await;

    // A version query while it sleeps: answered from what it reported.
    let before = seen.versions.len();
    tb.send(Some(ID), &Event::VersionQuery(VersionQuery::default()))
        .await
        .unwrap();
    wait(&mut tb, &mut seen, &log, |s| s.versions.len() > before).await;
    assert_eq!(seen.versions.last().map(String::as_str), Some("1.0.0"));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("queue-mode client asleep: answering with the version it last reported"),
        "{text}"
    );

    // The job waits for it to wake, visibly.
    let ev = upgrade_to(&server, &pkg, "sleepy-task");
    tb.send(Some(ID), &ev).await.unwrap();
    let until = Instant::now() + Duration::from_secs(60);
    let (text, json) = loop {
        let (text, json) = status(d);
        if text.contains("waiting for the child to wake") || Instant::now() > until {
            break (text, json);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        text.contains("waiting for the child to wake"),
        "{text}\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let job = &json[0]["job"];
    assert!(
        job["waiting"]
            .as_str()
            .is_some_and(|w| w.starts_with("waiting for the child to wake")),
        "{json}"
    );
    assert_eq!(job["cause"]["kind"], "waiting", "{json}");
    assert_eq!(job["cause"]["step"], "wake", "{json}");
    assert!(job["result_code"].is_null(), "{json}");

    // It wakes (an Update): the job goes on and ends well.
    sim.update();
    let last = run_support::terminal_of(&mut tb, ID, &mut seen, &log).await;
    assert_eq!(
        (last.result_code.get(), last.version.as_str()),
        (0, "2.0.0"),
        "{last:?}\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert_eq!(sim.version(), "2.0.0");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("the child woke"), "{text}");
    // Its wait for State 2 was observed, not polled.
    assert!(text.contains("observing (RFC 7641)"), "{text}");
    let (text, _) = status(d);
    assert!(!text.contains("waiting for the child to wake"), "{text}");
}

/// The driver's side of the wait, under paused time: a queue-mode client
/// listens for the default 93 s after it registered; after that it sleeps
/// (`Child::asleep` says why), time alone does not wake it, and its next
/// Update does.
#[tokio::test(start_paused = true)]
async fn asleep_after_the_93_s_window_until_the_next_update() {
    use otabridge::child::coap::{ChildOptions, CoapChild, CoapNetwork, NetworkOptions};
    use otabridge::child::Child;
    use otabridge::config::{CoapAddress, Delivery};
    let net = CoapNetwork::bind(NetworkOptions::new("127.0.0.1:0".parse().unwrap(), 31)).unwrap();
    let child = CoapChild::new(
        "p_sleepy",
        CoapAddress::Endpoint("urn:dev:nap".into()),
        Delivery::Pull,
        net.clone(),
        ChildOptions::default(),
    );
    net.allow_endpoint("urn:dev:nap");
    let mut opts = SimOptions::new("1.0", "2.0");
    let mut reg = Registering::new(net.local_addr(), "urn:dev:nap");
    reg.queue = true;
    reg.awake = Duration::from_secs(93);
    opts.register = Some(reg);
    let sim = CoapChildSim::start(opts).await.unwrap();
    let mut presence = child.presence().unwrap();
    tokio::time::timeout(Duration::from_secs(60), presence.wait_for(|p| *p))
        .await
        .unwrap()
        .unwrap();
    assert!(child.asleep().is_none(), "listening right after Register");
    tokio::time::sleep(Duration::from_secs(90)).await;
    assert!(child.asleep().is_none(), "still within the 93 s window");
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (why, wake) = child.asleep().expect("asleep after 93 s");
    assert!(
        why.starts_with("waiting for the child to wake: endpoint 'urn:dev:nap'"),
        "{why}"
    );
    tokio::pin!(wake);
    // Time alone does not wake it (well within its 300 s lifetime).
    assert!(tokio::time::timeout(Duration::from_secs(100), &mut wake)
        .await
        .is_err());
    sim.update();
    tokio::time::timeout(Duration::from_secs(60), wake)
        .await
        .expect("woken by its Update");
    assert!(child.asleep().is_none(), "awake after its Update");
}

/// The job's deadline keeps running while it waits for a sleeping child:
/// one that never wakes gets the deadline's result (6, nothing delivered),
/// not a job stuck in its wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_that_never_wakes_fails_at_the_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (mut tb, server, pkg, _daemon, log, sim, mut seen) =
        sleepy(d, 10_000, 1, "urn:dev:never", Duration::from_secs(1)).await;
    tokio::time::sleep(Duration::from_millis(2000)).await;
    // expires 125 s: the job must end 5 s after the event (the engine
    // keeps 120 s for the terminal report).
    let ev = upgrade_event(
        &server,
        (&pkg.url, pkg.size, &pkg.sha256),
        "never-task",
        1,
        125,
    );
    tb.send(Some(ID), &ev).await.unwrap();
    let last = run_support::terminal_of(&mut tb, ID, &mut seen, &log).await;
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(last.result_code.get(), 6, "{last:?}\n{text}");
    assert!(
        last.description
            .as_deref()
            .unwrap_or_default()
            .contains("Deadline passed"),
        "{last:?}"
    );
    assert!(text.contains("waiting for the child to wake"), "{text}");
    assert_eq!(sim.stats().starts, 0, "nothing was delivered");
}
