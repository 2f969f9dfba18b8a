//! Operators' requests survive a power loss (issue 15 item 4): the real
//! `otabridge run` binary upgrades three MCUmgr/SMP children (simulated on
//! ptys in this process, paced like a slow UART); `otabridge jobs` pauses
//! one, cancels one and retries the third after its download failed; the
//! daemon is killed with SIGKILL right after and started again. The paused
//! job stays paused at its offset and resumes from it, the cancelled one
//! ends with exactly one report and no activation (the child keeps its
//! confirmed image), the retried one succeeds; every job sends exactly one
//! terminal report.

mod run_support;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use otabridge::sim::package_server::{Access, Faults, PackageServer, Source};
use otabridge::sim::smp_child::{mcuboot_image, parse_version, SmpChild, SmpChildOptions};
use otabridge::sim::testbed::{config_text, Testbed};
use otabridge_codecs::iotda::{Event, Upgrade, UpgradeKind};
use otabridge_codecs::smp::sim::SimEvent;
use run_support::{collect, jobs, spawn, terminals, until_job, Reports};
use serde_json::Value;

const IMAGE: usize = 64 * 1024;

/// The codes of `id`'s terminal reports, in order.
fn codes(reports: &Reports, id: &str) -> Vec<u8> {
    terminals(reports, id)
        .iter()
        .map(|r| r.result_code.get())
        .collect()
}

/// `otabridge jobs show CHILD` until `done` holds (bounded: 60 s).
async fn until(config: &Path, child: &str, log: &Path, done: impl Fn(&Value) -> bool) -> Value {
    until_job(config, child, log, Duration::from_secs(60), done).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_cancel_and_retry_survive_sigkill_with_one_terminal_report_each() {
    let dir = tempfile::tempdir().unwrap();
    let mut tb = Testbed::new(dir.path()).await.unwrap();
    // Two package servers: the second damages what it sends until told not to.
    let good = PackageServer::start(&["127.0.0.1"]).await.unwrap();
    let bad = PackageServer::start(&["127.0.0.1"]).await.unwrap();
    let pkg_ca = dir.path().join("pkg-ca.pem");
    std::fs::write(&pkg_ca, format!("{}{}", good.ca_pem(), bad.ca_pem())).unwrap();
    bad.set_faults(Faults {
        corrupt_at: Some(100),
        ..Faults::default()
    });
    let image = mcuboot_image(parse_version("2.0.0").unwrap(), IMAGE, 9);
    let file = dir.path().join("fw.bin");
    std::fs::write(&file, &image).unwrap();
    let served_good = good.add("fw", Source::File(file), Access::Bearer).unwrap();
    // Another image (the package store shares one download per SHA-256).
    let image_b = mcuboot_image(parse_version("2.0.0").unwrap(), IMAGE, 10);
    let file_b = dir.path().join("fw-b.bin");
    std::fs::write(&file_b, &image_b).unwrap();
    let served_bad = bad.add("fw", Source::File(file_b), Access::Bearer).unwrap();

    let mut sims = BTreeMap::new();
    let mut children_toml = String::new();
    for (i, id) in ["p_pause", "p_cancel", "p_retry"].into_iter().enumerate() {
        let mut o = SmpChildOptions::default();
        o.device.running = parse_version("1.0.0").unwrap();
        // Slow enough that the requests land mid-transfer (about 20 s
        // per image), however loaded the machine.
        o.faults.pace_baud = Some(38_400);
        o.seed = i as u64 + 1;
        let sim = SmpChild::spawn(o).unwrap();
        children_toml.push_str(&format!(
            "[[child]]\ndevice_id = \"{id}\"\ntransport = \"serial\"\nport = {:?}\nbaud = 38400\n\
             reboot_wait_ms = 300\n\n",
            sim.path().display().to_string()
        ));
        sims.insert(id, sim);
    }
    let extra = format!(
        "[download]\nca_file = {:?}\n\n[ota]\nretry_min_ms = 200\nretry_max_ms = 1000\n\
         max_retries = 3\n\n{children_toml}",
        pkg_ca.display().to_string()
    );
    let config = dir.path().join("gw.toml");
    std::fs::write(
        &config,
        config_text(tb.edge.addr().port(), &tb.ca_file, &tb.state_dir, &extra),
    )
    .unwrap();
    let log = dir.path().join("gw.log");

    let mut proc = spawn(&config, &log);
    let until_connected = Instant::now() + Duration::from_secs(60);
    while tb.edge.connects() == 0 && Instant::now() < until_connected {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        tb.edge.connects() > 0,
        "{}",
        std::fs::read_to_string(&log).unwrap()
    );
    // Subscribed: the first job list answers.
    assert_eq!(jobs(&config, &["list"]).0, 0);
    let event = |server: &PackageServer, served: &otabridge::sim::package_server::Served| {
        let up: Upgrade = served.upgrade(
            "2.0.0",
            server.issue_token(Duration::from_secs(3600)),
            "task-restart",
        );
        Event::Upgrade {
            kind: UpgradeKind::Firmware,
            v2: false,
            upgrade: up,
        }
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    for id in ["p_pause", "p_cancel"] {
        tb.send(Some(id), &event(&good, &served_good))
            .await
            .unwrap();
    }
    tb.send(Some("p_retry"), &event(&bad, &served_bad))
        .await
        .unwrap();

    let mut reports = BTreeMap::new();
    // p_retry's download fails its check: 7.
    let failed = until(&config, "p_retry", &log, |v| v["state"] == "failed").await;
    assert_eq!(failed["result_code"], 7, "{failed}");
    // The two others are delivering.
    let paused_at = until(&config, "p_pause", &log, |v| {
        v["phase"] == "delivering" && v["offset"].as_u64() > Some(0)
    })
    .await;
    until(&config, "p_cancel", &log, |v| v["phase"] == "delivering").await;

    let (code, v) = jobs(&config, &["pause", "p_pause"]);
    assert_eq!((code, v["state"].as_str()), (0, Some("paused")), "{v}");
    let offset = v["offset"].as_u64().unwrap();
    assert!(offset >= paused_at["offset"].as_u64().unwrap());
    let (code, v) = jobs(&config, &["cancel", "p_cancel"]);
    assert_eq!(code, 0, "{v}");
    assert!(
        matches!(v["state"].as_str(), Some("cancelling" | "cancelled")),
        "{v}"
    );
    bad.set_faults(Faults::default());
    let (code, v) = jobs(&config, &["retry", &failed["id"].to_string()]);
    assert_eq!(
        (code, v["retry_of"].clone()),
        (0, failed["id"].clone()),
        "{v}"
    );

    // Power loss right after the requests, and a new start.
    proc.kill().unwrap();
    proc.wait().unwrap();
    collect(&mut tb, &mut reports);
    let mut proc = spawn(&config, &log);

    // Paused it stays, at the offset it had.
    let v = until(&config, "p_pause", &log, |v| v["state"] == "paused").await;
    assert_eq!(
        (v["phase"].as_str(), v["offset"].as_u64()),
        (Some("delivering"), Some(offset))
    );
    let v = until(&config, "p_cancel", &log, |v| v["state"] == "cancelled").await;
    assert_eq!(v["result_code"], 255, "{v}");
    // A refused request changes nothing, after the restart too.
    let (code, _) = jobs(&config, &["resume", "p_cancel"]);
    assert_eq!(code, 1);
    let (code, v) = jobs(&config, &["resume", "p_pause"]);
    assert_eq!((code, v["state"].as_str()), (0, Some("running")), "{v}");

    for id in ["p_pause", "p_retry"] {
        until(&config, id, &log, |v| v["state"] == "succeeded").await;
    }
    // Let the last reports reach the platform, then stop cleanly.
    let quiet = Instant::now() + Duration::from_secs(30);
    loop {
        collect(&mut tb, &mut reports);
        let outbox = otabridge::journal::Journal::open_read_only(&tb.state_dir)
            .and_then(|j| j.outbox_len())
            .unwrap_or(1);
        if outbox == 0 && codes(&reports, "p_pause").len() == 1 || Instant::now() > quiet {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = Command::new("kill")
        .args(["-TERM", &proc.id().to_string()])
        .status();
    assert!(proc.wait().unwrap().success());
    collect(&mut tb, &mut reports);
    let logs = std::fs::read_to_string(&log).unwrap();

    assert_eq!(codes(&reports, "p_pause"), vec![0], "{reports:#?}\n{logs}");
    assert_eq!(
        codes(&reports, "p_cancel"),
        vec![255],
        "{reports:#?}\n{logs}"
    );
    assert_eq!(
        codes(&reports, "p_retry"),
        vec![7, 0],
        "{reports:#?}\n{logs}"
    );
    let cancelled = reports["p_cancel"].last().unwrap();
    assert!(
        cancelled
            .description
            .as_deref()
            .unwrap()
            .contains("cancelled"),
        "{cancelled:?}"
    );
    // The cancelled child was never activated: it runs its confirmed image.
    let sim = &sims["p_cancel"];
    assert_eq!(sim.running(), ("1.0.0".to_owned(), true));
    assert!(!sim
        .events()
        .iter()
        .any(|e| matches!(e, SimEvent::Resetting)));
    for (id, image) in [("p_pause", &image), ("p_retry", &image_b)] {
        assert_eq!(sims[id].running(), ("2.0.0".to_owned(), true), "{id}");
        assert_eq!(&sims[id].flash(), image, "{id}");
    }
    // The paused transfer went on from where it stopped, not from 0.
    assert!(
        sims["p_pause"]
            .events()
            .iter()
            .any(|e| matches!(e, SimEvent::UploadResumed { off } if *off > 0)),
        "{:?}",
        sims["p_pause"].events()
    );
}
