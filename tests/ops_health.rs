//! The health-gated confirm (issue 15 item 2) through the real
//! `otabridge run` binary and MCUmgr/SMP children simulated on ptys in
//! this process: after the test boot the gateway probes each child for
//! `health_check_secs` before it confirms. A healthy child is confirmed; a
//! child whose new image hangs, crashes (reboots by itself: MCUboot
//! reverts) or fails its health command is reverted and reported with 10
//! and "reverted: health check failed", with the old version read back; a
//! SIGKILL of the gateway while it probes is followed by the probes'
//! resumption and exactly one terminal report per child.

mod run_support;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child as Proc, Command};
use std::time::{Duration, Instant};

use otabridge::sim::package_server::{PackageServer, Served};
use otabridge::sim::smp_child::{parse_version, SmpChild, SmpChildOptions};
use otabridge::sim::testbed::{config_text, Testbed};
use otabridge_codecs::iotda::event::ProgressReport;
use otabridge_codecs::iotda::{Event, Upgrade, UpgradeKind};
use otabridge_codecs::smp::sim::SimEvent;
use run_support::{
    collect, log_text as logs, mcuboot_package, package_server, spawn, terminals, until_job,
    Reports,
};
use serde_json::Value;

const IMAGE: usize = 16 * 1024;

/// `otabridge jobs show CHILD` until `done` holds (bounded: 90 s).
async fn until(config: &Path, child: &str, log: &Path, done: impl Fn(&Value) -> bool) -> Value {
    until_job(config, child, log, Duration::from_secs(90), done).await
}

/// A gateway with these SMP children (`(id, sim faults, child keys)`), a
/// package of version 2.0.0 served for all, and the reports collected.
/// Halt on failures is off: several children of the one task fail here
/// on purpose.
struct Bench {
    tb: Testbed,
    server: PackageServer,
    served: Served,
    image: Vec<u8>,
    sims: BTreeMap<&'static str, SmpChild>,
    config: std::path::PathBuf,
    log: std::path::PathBuf,
    reports: Reports,
    _dir: tempfile::TempDir,
}

impl Bench {
    async fn new(children: &[(&'static str, &str, &str)]) -> Bench {
        let dir = tempfile::tempdir().unwrap();
        let tb = Testbed::new(dir.path()).await.unwrap();
        let (server, pkg_ca) = package_server(dir.path()).await;
        let (image, served) = mcuboot_package(&server, dir.path(), IMAGE, 9);
        let mut sims = BTreeMap::new();
        let mut children_toml = String::new();
        for (i, (id, faults, keys)) in children.iter().enumerate() {
            let mut o = SmpChildOptions::default();
            o.device.running = parse_version("1.0.0").unwrap();
            o.faults = faults.parse().unwrap();
            o.seed = i as u64 + 1;
            let sim = SmpChild::spawn(o).unwrap();
            children_toml.push_str(&format!(
                "[[child]]\ndevice_id = \"{id}\"\ntransport = \"serial\"\nport = {:?}\n\
                 reboot_wait_ms = 300\ntimeout_ms = 1000\nretries = 1\n{keys}\n\n",
                sim.path().display().to_string()
            ));
            sims.insert(*id, sim);
        }
        let extra = format!(
            "[download]\nca_file = {:?}\n\n[ota]\nretry_min_ms = 200\nretry_max_ms = 1000\n\
             max_retries = 3\nhealth_check_secs = 3\nhealth_probe_interval_secs = 1\n\
             health_probe_timeout_secs = 5\nhalt_failures = 0\n\n{children_toml}",
            pkg_ca.display().to_string()
        );
        let config = dir.path().join("gw.toml");
        std::fs::write(
            &config,
            config_text(tb.edge.addr().port(), &tb.ca_file, &tb.state_dir, &extra),
        )
        .unwrap();
        let log = dir.path().join("gw.log");
        Bench {
            tb,
            server,
            served,
            image,
            sims,
            config,
            log,
            reports: BTreeMap::new(),
            _dir: dir,
        }
    }

    /// Starts the daemon and waits until it is connected and answers.
    async fn start(&self) -> Proc {
        let connects = self.tb.edge.connects();
        let proc = spawn(&self.config, &self.log);
        let until = Instant::now() + Duration::from_secs(60);
        while self.tb.edge.connects() == connects && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(self.tb.edge.connects() > connects, "{}", logs(&self.log));
        tokio::time::sleep(Duration::from_millis(300)).await;
        proc
    }

    async fn upgrade(&mut self, ids: &[&str]) {
        let up: Upgrade = self.served.upgrade(
            "2.0.0",
            self.server.issue_token(Duration::from_secs(3600)),
            "task-health",
        );
        for id in ids {
            let e = Event::Upgrade {
                kind: UpgradeKind::Firmware,
                v2: false,
                upgrade: up.clone(),
            };
            self.tb.send(Some(id), &e).await.unwrap();
        }
    }

    /// Waits until every child in `ids` ended, lets the reports reach the
    /// platform, and stops the daemon with SIGTERM.
    async fn finish(&mut self, mut proc: Proc, ids: &[&str]) {
        for id in ids {
            until(&self.config, id, &self.log, |v| {
                matches!(v["state"].as_str(), Some("succeeded" | "failed"))
            })
            .await;
        }
        let quiet = Instant::now() + Duration::from_secs(30);
        loop {
            collect(&mut self.tb, &mut self.reports);
            let outbox = otabridge::journal::Journal::open_read_only(&self.tb.state_dir)
                .and_then(|j| j.outbox_len())
                .unwrap_or(1);
            let all = ids
                .iter()
                .all(|id| !terminals(&self.reports, id).is_empty());
            if outbox == 0 && all || Instant::now() > quiet {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &proc.id().to_string()])
            .status();
        assert!(proc.wait().unwrap().success());
        collect(&mut self.tb, &mut self.reports);
    }

    /// The one terminal report of `id`.
    fn terminal(&self, id: &str) -> ProgressReport {
        let t = terminals(&self.reports, id);
        assert_eq!(
            t.len(),
            1,
            "{id}: {:#?}\n{}",
            self.reports.get(id),
            logs(&self.log)
        );
        t[0].clone()
    }

    /// `id` was reverted: one report, 10, the old version read back, the
    /// child on its confirmed old image.
    fn assert_reverted(&self, id: &str, what: &str) {
        let r = self.terminal(id);
        let d = r.description.clone().unwrap_or_default();
        assert_eq!(
            (r.result_code.get(), r.version.as_str()),
            (10, "1.0.0"),
            "{id}: {r:?}\n{}",
            logs(&self.log)
        );
        assert!(
            d.contains("reverted: health check failed") && d.contains(what),
            "{id}: {d}"
        );
        assert_eq!(self.sims[id].running(), ("1.0.0".to_owned(), true), "{id}");
    }

    fn resets(&self, id: &str) -> usize {
        self.sims[id]
            .events()
            .iter()
            .filter(|e| matches!(e, SimEvent::Resetting))
            .count()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthy_children_are_confirmed_and_sick_ones_reverted() {
    let mut b = Bench::new(&[
        ("h_ok", "", "health_command = \"echo\""),
        (
            "h_hang",
            "health=hang,sick-after-ms=1000,watchdog-ms=3000",
            "",
        ),
        // It crashes well inside its longer probe period: a crash before
        // the gateway has read the new version after the test boot would
        // be an update that never ran (reported as such), not this case.
        (
            "h_crash",
            "health=crash,sick-after-ms=3000",
            "health_check_secs = 8",
        ),
        (
            "h_fail",
            "health=fail,sick-after-ms=1000",
            "health_command = { group = 0, command = 0, op = \"write\", body = { d = \"ping\" } }",
        ),
        (
            "h_off",
            "health=crash,sick-after-ms=15000",
            "health_check_secs = 0",
        ),
    ])
    .await;
    let proc = b.start().await;
    let ids = ["h_ok", "h_hang", "h_crash", "h_fail", "h_off"];
    b.upgrade(&ids).await;
    // The probes are visible as a phase of their own.
    until(&b.config, "h_ok", &b.log, |v| v["phase"] == "probing").await;
    // Past the activation: a cancel is refused, the health check decides.
    let out = Command::new(env!("CARGO_BIN_EXE_otabridge"))
        .args(["jobs", "cancel", "h_ok", "--config"])
        .arg(&b.config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    b.finish(proc, &ids).await;

    // (a) healthy: confirmed after the probe period, success.
    let ok = b.terminal("h_ok");
    assert_eq!(
        (ok.result_code.get(), ok.version.as_str()),
        (0, "2.0.0"),
        "{ok:?}"
    );
    assert_eq!(b.sims["h_ok"].running(), ("2.0.0".to_owned(), true));
    assert_eq!(&b.sims["h_ok"].flash(), &b.image);
    // Without a health check the confirm comes at once, before the image
    // falls sick: it stays (the key turns it off per child).
    assert_eq!(b.terminal("h_off").result_code.get(), 0);
    assert_eq!(b.sims["h_off"].running(), ("2.0.0".to_owned(), true));

    // (b) boots, then stops answering: probe timeout, reset, the watchdog
    // or the reset reverts, the old version is read back.
    b.assert_reverted("h_hang", "no answer");
    // (b) its health command fails: reverted by a reset.
    b.assert_reverted("h_fail", "health command answered");
    assert_eq!(
        b.resets("h_fail"),
        2,
        "the test boot's reset and the revert's"
    );
    // (c) reboots by itself during the probes (a crash loop): MCUboot
    // already reverted, so no second reset.
    b.assert_reverted("h_crash", "rebooted by itself");
    assert_eq!(b.resets("h_crash"), 1, "already reverted: no reset");
    let log = logs(&b.log);
    assert!(log.contains("health check passed"), "{log}");
}

/// (d) A SIGKILL while the gateway probes: the restarted gateway resumes
/// the probes; the healthy child is confirmed, the one that crashed while
/// the gateway was down is caught by its first probe and reverted; each
/// child gets exactly one terminal report.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkill_while_probing_resumes_the_probes_with_one_report_each() {
    let mut b = Bench::new(&[
        ("k_ok", "", "health_check_secs = 12"),
        (
            "k_crash",
            "health=crash,sick-after-ms=6000",
            "health_check_secs = 12",
        ),
    ])
    .await;
    let mut proc = b.start().await;
    let ids = ["k_ok", "k_crash"];
    b.upgrade(&ids).await;
    for id in ids {
        until(&b.config, id, &b.log, |v| v["phase"] == "probing").await;
    }
    proc.kill().unwrap();
    proc.wait().unwrap();
    collect(&mut b.tb, &mut b.reports);
    // The crash comes while no gateway watches.
    let until_crash = Instant::now() + Duration::from_secs(30);
    while !b.sims["k_crash"]
        .events()
        .iter()
        .any(|e| matches!(e, SimEvent::Booted { reverted: true, .. }))
    {
        assert!(
            Instant::now() < until_crash,
            "{:?}",
            b.sims["k_crash"].events()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let proc = b.start().await;
    b.finish(proc, &ids).await;

    let ok = b.terminal("k_ok");
    assert_eq!(
        (ok.result_code.get(), ok.version.as_str()),
        (0, "2.0.0"),
        "{ok:?}"
    );
    assert_eq!(b.sims["k_ok"].running(), ("2.0.0".to_owned(), true));
    assert_eq!(b.resets("k_ok"), 1, "activated once");
    b.assert_reverted("k_crash", "rebooted by itself");
    let log = logs(&b.log);
    assert!(log.contains("resuming job from the journal"), "{log}");
}

/// A SIGKILL while the gateway reverts a hung child (its watchdog reboots
/// it later): the restarted gateway reverts again and reads the old
/// version back; one terminal report.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkill_while_reverting_reverts_after_the_restart() {
    let mut b = Bench::new(&[(
        "r_hang",
        "health=hang,sick-after-ms=1000,watchdog-ms=12000",
        "health_check_secs = 30",
    )])
    .await;
    let mut proc = b.start().await;
    b.upgrade(&["r_hang"]).await;
    until(&b.config, "r_hang", &b.log, |v| v["phase"] == "reverting").await;
    proc.kill().unwrap();
    proc.wait().unwrap();
    collect(&mut b.tb, &mut b.reports);
    assert!(terminals(&b.reports, "r_hang").is_empty());
    let proc = b.start().await;
    b.finish(proc, &["r_hang"]).await;
    b.assert_reverted("r_hang", "no answer");
    // The hung image never read the resets; its watchdog reverted it.
    assert_eq!(b.resets("r_hang"), 1, "the test boot's reset only");
    let log = logs(&b.log);
    assert!(
        log.lines()
            .any(|l| l.contains("resuming job from the journal") && l.contains("reverting")),
        "{log}"
    );
}
