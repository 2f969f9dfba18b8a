//! The gateway's own upgrade end to end with a command installer (a shell
//! script standing in for a box vendor's): the simulated IoTDA, the HTTPS
//! package server, the real journal and package store, the daemon in
//! process; the box's reboot is simulated by stopping the daemon, making the
//! installed version the running one (or not: a rollback), changing the
//! boot id and starting the daemon again.

mod gateway_support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use gateway_support::{assert_monotonic, distinct, seq, Platform, SimBox};
use otabridge::child::memory::MemoryChild;
use otabridge::child::Child;
use otabridge::sim::package_server::{Access, Source};
use otabridge_codecs::iotda::event::ProgressReport;
use otabridge_codecs::iotda::{Event, ResultCode, UpgradeKind};

const STEP: Duration = Duration::from_secs(60);

/// The box: a running version file, an inactive slot the installer writes,
/// and the installer script.
struct Firmware {
    sim: SimBox,
    running: PathBuf,
    slot: PathBuf,
    installer: PathBuf,
}

impl Firmware {
    fn new(dir: &Path) -> Firmware {
        let sim = SimBox::new(dir);
        let running = dir.join("running-version");
        let slot = dir.join("slot-b");
        std::fs::write(&running, "1.0.0\n").unwrap();
        let installer = dir.join("install-firmware");
        // A vendor's installer: checks, "flashes" the inactive slot with the
        // version line the package carries, prints its progress.
        std::fs::write(
            &installer,
            format!(
                "#!/bin/sh\nset -e\necho \"checking $1\"\necho 'progress: 30'\n\
                 if [ -e '{fail}' ]; then echo 'flash write error at block 7' >&2; exit 3; fi\n\
                 head -n 1 \"$1\" > '{slot}'\necho 'progress: 100'\n",
                fail = dir.join("fail").display(),
                slot = slot.display()
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&installer, std::fs::Permissions::from_mode(0o755)).unwrap();
        Firmware {
            sim,
            running,
            slot,
            installer,
        }
    }

    fn config(&self, extra: &str) -> String {
        format!(
            "[gateway]\n{}{extra}\n[gateway.firmware]\ninstaller = \"command\"\n\
             command = [{:?}, \"{{file}}\"]\nversion_file = {:?}\n",
            self.sim.gateway_keys(),
            self.installer.display().to_string(),
            self.running.display().to_string()
        )
    }

    /// A package whose first line is its version.
    fn package(&self, version: &str) -> PathBuf {
        let f = self.sim.dir.join(format!("fw-{version}.bin"));
        let mut data = format!("{version}\n").into_bytes();
        data.extend((0..200_000u32).map(|i| (i * 31 + i / 7) as u8));
        std::fs::write(&f, data).unwrap();
        f
    }

    /// The reboot: the installed slot becomes the running one, unless the
    /// bootloader rolls back.
    fn reboot(&mut self, rollback: bool) {
        if !rollback {
            std::fs::copy(&self.slot, &self.running).unwrap();
        }
        self.sim.boot();
    }
}

async fn gateway(p: &mut Platform, text: &str, children: Vec<Arc<dyn Child>>) {
    let cfg = otabridge::config::Config::parse(text, Path::new("gateway.toml")).unwrap();
    p.tb.start_gateway_with(cfg, children).await.unwrap();
    p.tb.wait_connected(Duration::from_secs(20)).await.unwrap();
}

/// The reports without the download's intermediate steps (their number
/// depends on how the bytes arrive).
fn steps(v: &[ProgressReport]) -> Vec<(u8, u8)> {
    seq(v)
        .into_iter()
        .filter(|(c, p)| *c != 0 || !(1..40).contains(p))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_firmware_upgrade_reboots_and_succeeds_on_the_version_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = Platform::start(dir.path()).await;
    let mut fw = Firmware::new(&dir.path().join("box"));
    let text = p.config_text(&fw.config(""));
    gateway(&mut p, &text, vec![]).await;
    let v = p.gateway_versions(STEP).await;
    assert_eq!(v.fw_version.as_deref(), Some("1.0.0"));
    assert_eq!(v.sw_version.as_deref(), Some(env!("CARGO_PKG_VERSION")));

    let up = p.serve(&fw.package("2.0.0"), "2.0.0");
    p.upgrade_gateway(UpgradeKind::Firmware, &up).await;
    let mut reports = p.gateway_reports_until(95, STEP).await;
    fw.sim.wait_reboot_request(STEP).await;
    assert_eq!(std::fs::read_to_string(&fw.slot).unwrap(), "2.0.0\n");

    // Only the daemon restarts (same boot id): it asks for the reboot again.
    p.tb.stop_gateway().await.unwrap();
    gateway(&mut p, &text, vec![]).await;
    fw.sim.wait_reboot_request(STEP).await;

    // The reboot.
    p.tb.stop_gateway().await.unwrap();
    fw.reboot(false);
    gateway(&mut p, &text, vec![]).await;
    reports.extend(p.gateway_reports(STEP).await);
    let reports = distinct(&reports);
    assert_monotonic(&reports);
    assert_eq!(
        steps(&reports),
        [(0, 0), (0, 40), (0, 55), (0, 90), (0, 95), (0, 100)],
        "{reports:#?}"
    );
    let last = reports.last().unwrap();
    assert_eq!(last.version, "2.0.0");
    assert_eq!(
        last.description.as_deref(),
        Some("upgrade success: running 2.0.0")
    );
    // Until then every report carried the version the box ran.
    assert!(reports[..reports.len() - 1]
        .iter()
        .all(|r| r.version == "1.0.0"));
    assert_eq!(
        p.gateway_versions(STEP).await.fw_version.as_deref(),
        Some("2.0.0")
    );
    p.tb.stop_gateway().await.unwrap();
}

/// A `firmware_upgrade_v2` (pre-signed URL, no token): the same flow, the
/// package fetched without an Authorization header.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_v2_event_with_a_presigned_url_upgrades_the_gateway() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = Platform::start(dir.path()).await;
    let mut fw = Firmware::new(&dir.path().join("box"));
    let text = p.config_text(&fw.config(""));
    gateway(&mut p, &text, vec![]).await;
    p.gateway_versions(STEP).await;

    let up = p.serve_presigned(&fw.package("2.0.0"), "2.0.0");
    p.upgrade_gateway_v2(UpgradeKind::Firmware, &up).await;
    let mut reports = p.gateway_reports_until(95, STEP).await;
    fw.sim.wait_reboot_request(STEP).await;
    assert_eq!(std::fs::read_to_string(&fw.slot).unwrap(), "2.0.0\n");
    p.tb.stop_gateway().await.unwrap();
    fw.reboot(false);
    gateway(&mut p, &text, vec![]).await;
    reports.extend(p.gateway_reports(STEP).await);
    let reports = distinct(&reports);
    assert_monotonic(&reports);
    let last = reports.last().unwrap();
    assert_eq!(
        (last.result_code, last.progress, last.version.as_str()),
        (ResultCode::SUCCESS, Some(100), "2.0.0"),
        "{reports:#?}"
    );
    // The package server saw the download, with no Authorization header
    // (pre-signed URL).
    let requests = p.server.requests();
    assert!(!requests.is_empty(), "the package was never fetched");
    assert!(
        requests
            .iter()
            .all(|r| !r.authorized && (r.status == 200 || r.status == 206)),
        "{requests:?}"
    );
    p.tb.stop_gateway().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_and_a_failing_installer_are_failures_with_their_cause() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = Platform::start(dir.path()).await;
    let mut fw = Firmware::new(&dir.path().join("box"));
    let text = p.config_text(&fw.config(""));
    gateway(&mut p, &text, vec![]).await;

    // The box comes back on its old version: a rollback, never a success.
    let up = p.serve(&fw.package("2.0.0"), "2.0.0");
    p.upgrade_gateway(UpgradeKind::Firmware, &up).await;
    p.gateway_reports_until(95, STEP).await;
    fw.sim.wait_reboot_request(STEP).await;
    p.tb.stop_gateway().await.unwrap();
    fw.reboot(true);
    gateway(&mut p, &text, vec![]).await;
    let reports = p.gateway_reports(STEP).await;
    let last = reports.last().unwrap();
    assert_eq!(last.result_code, ResultCode::INSTALL_FAIL, "{reports:#?}");
    assert_eq!(last.version, "1.0.0");
    let d = last.description.as_deref().unwrap();
    assert!(
        d.starts_with("Firmware update failed: version 1.0.0 unchanged after the reboot"),
        "{d}"
    );

    // The installer fails: its exit status and last lines, no reboot.
    std::fs::write(fw.sim.dir.join("fail"), b"").unwrap();
    let up = p.serve(&fw.package("2.0.1"), "2.0.1");
    p.upgrade_gateway(UpgradeKind::Firmware, &up).await;
    let reports = p.gateway_reports(STEP).await;
    let last = reports.last().unwrap();
    assert_eq!(last.result_code, ResultCode::INSTALL_FAIL, "{reports:#?}");
    let d = last.description.as_deref().unwrap();
    let head = format!(
        "Firmware update failed: {} exited with status 3: ",
        fw.installer.display()
    );
    assert!(
        d.strip_prefix(&head) == Some("flash write error at block 7"),
        "{d}"
    );
    assert!(
        !fw.sim.take_reboot_request(),
        "a failed install must not reboot"
    );

    // A software upgrade has no installer here: refused, saying why.
    p.upgrade_gateway(UpgradeKind::Software, &up).await;
    let reports = p.gateway_reports(STEP).await;
    assert_eq!(seq(&reports), [(ResultCode::UNKNOWN_TYPE.get(), 255)]);
    assert_eq!(reports[0].version, env!("CARGO_PKG_VERSION"));
    assert!(
        reports[0]
            .description
            .as_deref()
            .unwrap()
            .contains("[gateway.software]"),
        "{reports:#?}"
    );

    // Already at the target: success without a download.
    let requests = p.server.requests().len();
    let up = p.serve(&fw.package("1.0.0"), "V1.0");
    p.upgrade_gateway(UpgradeKind::Firmware, &up).await;
    let reports = p.gateway_reports(STEP).await;
    assert_eq!(seq(&reports), [(0, 100)]);
    assert_eq!(reports[0].version, "V1.0");
    assert_eq!(p.server.requests().len(), requests);
    p.tb.stop_gateway().await.unwrap();
}

/// Every report, gateway and children, in the order they arrived.
async fn all_reports_until(
    p: &mut Platform,
    mut done: impl FnMut(&[(Option<String>, ProgressReport)]) -> bool,
) -> Vec<(Option<String>, ProgressReport)> {
    let mut out = Vec::new();
    while !done(&out) {
        let Some(r) = p.tb.platform.recv(STEP).await else {
            panic!("reports stopped; so far {out:#?}");
        };
        for inc in r.events.into_iter().flatten() {
            if let Event::ProgressReport(rep) = inc.event {
                let who = inc
                    .object_device_id
                    .filter(|id| id != otabridge::sim::testbed::GATEWAY_ID);
                out.push((who, rep));
            }
        }
    }
    out
}

/// Sends node-1 an upgrade to `version` and waits until its job reported
/// progress (the transfer runs; `MemoryChild::hold_at` keeps it there).
async fn start_child_job(p: &mut Platform, version: &str) {
    p.tb.send(Some("node-1"), &child_upgrade(p, version))
        .await
        .unwrap();
    all_reports_until(p, |r| {
        r.iter()
            .any(|(who, rep)| who.is_some() && rep.progress.is_some_and(|x| x > 0))
    })
    .await;
}

fn child_upgrade(p: &Platform, version: &str) -> Event {
    let served = p
        .server
        .add(
            &format!("child-{version}"),
            Source::Generated {
                len: 256 * 1024,
                seed: 5,
            },
            Access::Bearer,
        )
        .unwrap();
    Event::Upgrade {
        kind: UpgradeKind::Firmware,
        v2: false,
        upgrade: served.upgrade(
            version,
            p.server.issue_token(Duration::from_secs(3600)),
            "t",
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_install_waits_for_child_jobs_and_the_deadline_holds_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = Platform::start(dir.path()).await;
    let fw = Firmware::new(&dir.path().join("box"));
    let text = p.config_text(&fw.config(""));
    let node = Arc::new(MemoryChild::new("node-1", "1.0.0"));
    node.hold_at(64 * 1024);
    let kids = || vec![node.clone() as Arc<dyn Child>];
    gateway(&mut p, &text, kids()).await;
    start_child_job(&mut p, "2.0.0").await;

    let up = p.serve(&fw.package("2.0.0"), "2.0.0");
    p.upgrade_gateway(UpgradeKind::Firmware, &up).await;
    p.gateway_reports_until(40, STEP).await;
    // A different upgrade meanwhile is a conflict.
    let other = p.serve(&fw.package("3.0.0"), "3.0.0");
    p.upgrade_gateway(UpgradeKind::Firmware, &other).await;
    let conflict = p.gateway_reports(STEP).await;
    assert_eq!(seq(&conflict), [(ResultCode::BUSY.get(), 255)]);
    assert_eq!(
        conflict[0].description.as_deref(),
        Some("Task Conflict: a firmware upgrade of the gateway to 2.0.0 is in progress")
    );

    // The daemon stops while the install waits, and comes back after the
    // job's deadline: the journaled deadline still holds.
    p.tb.stop_gateway().await.unwrap();
    {
        let mut j = otabridge::journal::Journal::open(&p.tb.state_dir).unwrap();
        j.connection()
            .execute("UPDATE gateway_jobs SET deadline_unix = 1", [])
            .unwrap();
    }
    node.release();
    gateway(&mut p, &text, kids()).await;
    // (Reports published just before the stop may come again: the outbox
    // delivers at least once.)
    let past_deadline = |rep: &ProgressReport| {
        rep.description
            .as_deref()
            .is_some_and(|d| d.contains("deadline passed"))
    };
    let reports = all_reports_until(&mut p, |r| {
        r.iter().any(|(w, rep)| w.is_none() && past_deadline(rep))
            && r.iter().any(|(w, rep)| w.is_some() && rep.is_terminal())
    })
    .await;
    let gw: Vec<_> = reports
        .iter()
        .filter(|(w, rep)| {
            w.is_none()
                && rep.is_terminal()
                && !rep
                    .description
                    .as_deref()
                    .unwrap_or("")
                    .starts_with("Task Conflict")
        })
        .collect();
    assert_eq!(gw.len(), 1, "{reports:#?}");
    assert_eq!(gw[0].1.result_code, ResultCode::BUSY);
    assert!(past_deadline(&gw[0].1), "{gw:#?}");
    // The child's job resumed after the restart and finished.
    let child_end = reports.iter().rev().find(|(w, _)| w.is_some()).unwrap();
    assert_eq!(
        (child_end.1.result_code, child_end.1.progress),
        (ResultCode::SUCCESS, Some(100))
    );

    // Now with the child busy again: the install starts only after the
    // child's job ended.
    node.hold_at(64 * 1024);
    start_child_job(&mut p, "3.0.0").await;
    let up = p.serve(&fw.package("2.0.0"), "2.0.0");
    p.upgrade_gateway(UpgradeKind::Firmware, &up).await;
    p.gateway_reports_until(40, STEP).await;
    // Longer than the install's poll of the child jobs (2 s): an install
    // that did not wait would report its progress meanwhile.
    tokio::time::sleep(Duration::from_secs(3)).await;
    node.release();
    let reports = all_reports_until(&mut p, |r| {
        r.iter()
            .any(|(w, rep)| w.is_none() && rep.progress >= Some(95))
            && r.iter().any(|(w, rep)| w.is_some() && rep.is_terminal())
    })
    .await;
    let child_done = reports
        .iter()
        .position(|(w, rep)| w.is_some() && rep.is_terminal())
        .unwrap();
    let installing = reports
        .iter()
        .position(|(w, rep)| w.is_none() && rep.progress > Some(40))
        .unwrap();
    assert!(child_done < installing, "{reports:#?}");
    p.tb.stop_gateway().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_jobs_resume_after_the_gateways_reboot() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = Platform::start(dir.path()).await;
    let mut fw = Firmware::new(&dir.path().join("box"));
    let text = p.config_text(&fw.config("install_while_children_busy = true\n"));
    let node = Arc::new(MemoryChild::new("node-1", "1.0.0"));
    node.hold_at(64 * 1024);
    let kids = || vec![node.clone() as Arc<dyn Child>];
    gateway(&mut p, &text, kids()).await;
    start_child_job(&mut p, "2.0.0").await;
    let up = p.serve(&fw.package("2.0.0"), "2.0.0");
    p.upgrade_gateway(UpgradeKind::Firmware, &up).await;
    // Configured not to wait: installed and rebooting while the child's
    // transfer is held in the middle.
    p.gateway_reports_until(95, STEP).await;
    fw.sim.wait_reboot_request(STEP).await;
    p.tb.stop_gateway().await.unwrap();
    fw.reboot(false);
    node.release();
    gateway(&mut p, &text, kids()).await;
    let reports = all_reports_until(&mut p, |r| {
        r.iter().any(|(w, rep)| w.is_none() && rep.is_terminal())
            && r.iter().any(|(w, rep)| w.is_some() && rep.is_terminal())
    })
    .await;
    let end = |gw: bool| {
        reports
            .iter()
            .rev()
            .find(|(w, _)| w.is_none() == gw)
            .map(|(_, r)| (r.result_code.get(), r.progress, r.version.clone()))
            .unwrap()
    };
    assert_eq!(end(true), (0, Some(100), "2.0.0".into()), "{reports:#?}");
    assert_eq!(end(false), (0, Some(100), "2.0.0".into()), "{reports:#?}");
    // The child's delivery resumed where it was, not from 0.
    let starts = node.delivery_starts();
    assert!(
        starts.len() >= 2 && *starts.last().unwrap() > 0,
        "{starts:?}"
    );
    assert_eq!(node.version(), "2.0.0");
    p.tb.stop_gateway().await.unwrap();
}
