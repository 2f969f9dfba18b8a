//! Power loss at any instant: the real `otabridge run` binary is killed with
//! SIGKILL at seeded random moments during a batch upgrade of SMP children
//! (simulated on ptys in this process) and started again each time. Every
//! child must end with the right result, no child may be reset into a new
//! image twice, and every report must reach the platform.
//!
//! Heavier than the default suite: `cargo test --test crash_loop -- --ignored`
//! (run by `.ci/run`).

use std::collections::BTreeMap;
use std::process::{Child as Proc, Command, Stdio};
use std::time::{Duration, Instant};

use otabridge::sim::package_server::{Access, PackageServer, Source};
use otabridge::sim::smp_child::{mcuboot_image, parse_version, Faults, SmpChild, SmpChildOptions};
use otabridge::sim::testbed::{config_text, Testbed};
use otabridge_codecs::iotda::event::ProgressReport;
use otabridge_codecs::iotda::{Event, Upgrade, UpgradeKind};
use otabridge_codecs::rng::Rng;
use otabridge_codecs::smp::sim::SimEvent;

const CHILDREN: usize = 3;
const KILLS: usize = 10;
const IMAGE: usize = 96 * 1024;

fn spawn(config: &std::path::Path, log: &std::path::Path) -> Proc {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    Command::new(env!("CARGO_BIN_EXE_otabridge"))
        .args(["run", "--config"])
        .arg(config)
        .env("RUST_LOG", "info,rumqttc=warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "about a minute: run with --ignored (.ci/run does)"]
async fn sigkill_at_random_moments_never_strands_or_double_activates_a_child() {
    let dir = tempfile::tempdir().unwrap();
    let mut tb = Testbed::new(dir.path()).await.unwrap();
    let server = PackageServer::start(&["127.0.0.1"]).await.unwrap();
    let pkg_ca = dir.path().join("pkg-ca.pem");
    std::fs::write(&pkg_ca, server.ca_pem()).unwrap();

    let image = mcuboot_image(parse_version("2.0.0").unwrap(), IMAGE, 5);
    let file = dir.path().join("fw.bin");
    std::fs::write(&file, &image).unwrap();
    let served = server
        .add("fw", Source::File(file), Access::Bearer)
        .unwrap();

    let mut sims = Vec::new();
    let mut children_toml = String::new();
    for i in 0..CHILDREN {
        let mut o = SmpChildOptions::default();
        o.device.running = parse_version("1.0.0").unwrap();
        // Paced like a fast UART, so that kills land mid-transfer.
        o.faults = Faults {
            pace_baud: Some(230_400),
            ..Faults::default()
        };
        o.seed = i as u64 + 1;
        let sim = SmpChild::spawn(o).unwrap();
        children_toml.push_str(&format!(
            "[[child]]\ndevice_id = \"p_mcu{i}\"\ntransport = \"serial\"\nport = {:?}\nbaud = 230400\n\
             reboot_wait_ms = 300\n\n",
            sim.path().display().to_string()
        ));
        sims.push(sim);
    }
    let extra = format!(
        "[download]\nca_file = {:?}\n\n[ota]\nretry_min_ms = 200\nretry_max_ms = 1000\n\
         max_retries = 20\nfirst_chunk_timeout_secs = 20\n\n{children_toml}",
        pkg_ca.display().to_string()
    );
    let text = config_text(tb.edge.addr().port(), &tb.ca_file, &tb.state_dir, &extra);
    let config = dir.path().join("gw.toml");
    std::fs::write(&config, text).unwrap();
    let log = dir.path().join("gw.log");

    let mut reports: BTreeMap<String, Vec<ProgressReport>> = BTreeMap::new();
    let collect = |tb: &mut Testbed, reports: &mut BTreeMap<String, Vec<ProgressReport>>| {
        while let Some(r) = tb.platform.try_recv() {
            for inc in r.events.unwrap_or_default() {
                if let (Some(id), Event::ProgressReport(p)) = (inc.object_device_id, inc.event) {
                    reports.entry(id).or_default().push(p);
                }
            }
        }
    };

    // First run: wait for the connection, send the batch.
    let mut proc = spawn(&config, &log);
    let until = Instant::now() + Duration::from_secs(30);
    while tb.edge.connects() == 0 && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        tb.edge.connects() > 0,
        "{}",
        std::fs::read_to_string(&log).unwrap()
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    for i in 0..CHILDREN {
        let up = Upgrade {
            version: "2.0.0".into(),
            url: served.url.clone(),
            file_size: served.size,
            file_name: "fw.bin".into(),
            access_token: Some(server.issue_token(Duration::from_secs(3600))),
            expires: Some(86_400),
            sign: Some(served.sha256.clone()),
            custom_info: None,
            task_id: Some("crash-task".into()),
            sub_device_count: Some(CHILDREN as u32),
            task_ext_info: None,
        };
        let ev = Event::Upgrade {
            kind: UpgradeKind::Firmware,
            v2: false,
            upgrade: up,
        };
        tb.send(Some(&format!("p_mcu{i}")), &ev).await.unwrap();
    }

    // Kill and restart at seeded random moments.
    let mut rng = Rng::new(0x5eed);
    for k in 0..KILLS {
        let wait = Duration::from_millis(rng.range_inclusive(400, 2500));
        tokio::time::sleep(wait).await;
        collect(&mut tb, &mut reports);
        proc.kill().unwrap(); // SIGKILL
        proc.wait().unwrap();
        eprintln!("kill {k} after {wait:?}");
        proc = spawn(&config, &log);
    }

    // `otabridge status` reads the journal while the daemon writes it (WAL).
    let out = Command::new(env!("CARGO_BIN_EXE_otabridge"))
        .args(["status", "--json", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for i in 0..CHILDREN {
        assert_eq!(status[i]["device_id"], format!("p_mcu{i}"));
        assert_eq!(status[i]["job"]["target"], "2.0.0", "{status}");
    }

    // The last run finishes the batch.
    let done = |reports: &BTreeMap<String, Vec<ProgressReport>>| {
        (0..CHILDREN).all(|i| {
            reports
                .get(&format!("p_mcu{i}"))
                .is_some_and(|v| v.last().is_some_and(|r| r.is_terminal()))
        })
    };
    let until = Instant::now() + Duration::from_secs(120);
    while !done(&reports) && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(200)).await;
        collect(&mut tb, &mut reports);
    }
    // Let the last reports' PUBACKs land, then stop cleanly.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _ = Command::new("kill")
        .args(["-TERM", &proc.id().to_string()])
        .status();
    let status = proc.wait().unwrap();
    collect(&mut tb, &mut reports);
    let logs = std::fs::read_to_string(&log).unwrap();
    assert!(
        done(&reports),
        "not every child finished: {reports:#?}\n{logs}"
    );
    assert!(status.success(), "clean stop: {status:?}");

    for (i, sim) in sims.iter().enumerate() {
        let id = format!("p_mcu{i}");
        let last = reports[&id].last().unwrap();
        assert_eq!(
            (last.result_code.get(), last.progress, last.version.as_str()),
            (0, Some(100), "2.0.0"),
            "{id}"
        );
        assert!(
            reports[&id].iter().all(|r| r.result_code.is_success()),
            "{id}: {:?}",
            reports[&id]
        );
        assert_eq!(sim.running(), ("2.0.0".to_owned(), true), "{id}");
        let resets = sim
            .events()
            .iter()
            .filter(|e| matches!(e, SimEvent::Resetting))
            .count();
        assert_eq!(resets, 1, "{id} was reset {resets} times");
        assert_eq!(
            sim.flash(),
            image,
            "{id}: the slot holds the package byte for byte"
        );
    }
    // The kills did land mid-transfer: some upload was resumed, not restarted.
    let resumed: usize = sims.iter().map(|s| s.stats().resumed_at.len()).sum();
    assert!(resumed > 0, "no kill landed mid-transfer");
    // Every report was acknowledged by the broker: nothing is left queued.
    let j = otabridge::journal::Journal::open(&tb.state_dir).unwrap();
    assert_eq!(j.outbox_len().unwrap(), 0);
}
