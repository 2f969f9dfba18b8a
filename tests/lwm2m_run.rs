//! A LwM2M child that registers, end to end through the real
//! `otabridge run`: the simulated child (registering mode) registers with
//! the gateway's `coap.listen`, the gateway reports it ONLINE, upgrades it
//! by pull from an IoTDA upgrade event, and reports it OFFLINE when it
//! de-registers. Bounded waits only.

mod run_support;

use std::time::{Duration, Instant};

use otabridge::sim::coap_child::{CoapChildSim, Registering, SimOptions};
use otabridge::sim::package_server::{Access, PackageServer, Source};
use otabridge::sim::testbed::Testbed;
use otabridge_codecs::iotda::event::{ProgressReport, Status};
use otabridge_codecs::iotda::{Event, Upgrade, UpgradeKind};

#[derive(Debug, Default)]
struct Seen {
    progress: Vec<ProgressReport>,
    statuses: Vec<Status>,
}

fn collect(tb: &mut Testbed, id: &str, seen: &mut Seen) {
    while let Some(r) = tb.platform.try_recv() {
        for inc in r.events.unwrap_or_default() {
            match inc.event {
                Event::ProgressReport(p) if inc.object_device_id.as_deref() == Some(id) => {
                    seen.progress.push(p)
                }
                Event::UpdateStatus(u) => seen.statuses.extend(
                    u.device_statuses
                        .into_iter()
                        .filter(|d| d.device_id == id)
                        .map(|d| d.status),
                ),
                _ => {}
            }
        }
    }
}

/// Waits (bounded) until `done` holds for what the platform received.
async fn wait(tb: &mut Testbed, seen: &mut Seen, log: &str, done: impl Fn(&Seen) -> bool) {
    let until = Instant::now() + Duration::from_secs(120);
    while !done(seen) && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(100)).await;
        collect(tb, "p_reg", seen);
    }
    assert!(
        done(seen),
        "{seen:#?}\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

/// A UDP port free right now on 127.0.0.1 (the client must know the
/// server's port before the gateway prints it).
fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registering_child_is_announced_upgraded_and_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut tb = Testbed::new(d).await.unwrap();
    let server = PackageServer::start(&["127.0.0.1"]).await.unwrap();
    let pkg_ca = d.join("pkg-ca.pem");
    std::fs::write(&pkg_ca, server.ca_pem()).unwrap();
    let pkg = server
        .add(
            "fw",
            Source::Generated {
                len: 40_000,
                seed: 9,
            },
            Access::Bearer,
        )
        .unwrap();
    let port = free_udp_port();
    let extra = format!(
        "[download]\nca_file = {:?}\n\n[coap]\nlisten = \"127.0.0.1:{port}\"\n\n\
         [ota]\nretry_min_ms = 200\nretry_max_ms = 1000\n\n\
         [[child]]\ndevice_id = \"p_reg\"\ntransport = \"coap\"\nendpoint = \"urn:dev:reg-1\"\n",
        pkg_ca.display().to_string(),
    );
    let (_daemon, log) = run_support::run(&tb, d, &extra).await;
    let mut seen = Seen::default();
    // Before it registers, the connect-time check finds it OFFLINE.
    wait(&mut tb, &mut seen, &log, |s| {
        s.statuses.contains(&Status::Offline)
    })
    .await;
    let mut opts = SimOptions::new("1.0.0", "2.0.0");
    opts.reboot_time = Duration::from_millis(200);
    opts.register = Some(Registering::new(
        format!("127.0.0.1:{port}").parse().unwrap(),
        "urn:dev:reg-1",
    ));
    let sim = CoapChildSim::start(opts).await.unwrap();
    wait(&mut tb, &mut seen, &log, |s| {
        s.statuses.last() == Some(&Status::Online)
    })
    .await;

    let ev = Event::Upgrade {
        kind: UpgradeKind::Firmware,
        v2: false,
        upgrade: Upgrade {
            version: "2.0.0".into(),
            url: pkg.url.clone(),
            file_size: pkg.size,
            file_name: "fw.bin".into(),
            access_token: Some(server.issue_token(Duration::from_secs(3600))),
            expires: Some(86_400),
            sign: Some(pkg.sha256.clone()),
            custom_info: None,
            task_id: Some("reg-task".into()),
            sub_device_count: Some(1),
            task_ext_info: None,
        },
    };
    tb.send(Some("p_reg"), &ev).await.unwrap();
    wait(&mut tb, &mut seen, &log, |s| {
        s.progress.iter().any(|p| p.is_terminal())
    })
    .await;
    let last = seen.progress.iter().rfind(|p| p.is_terminal()).unwrap();
    assert_eq!(
        (last.result_code.get(), last.version.as_str()),
        (0, "2.0.0"),
        "{last:?}"
    );
    assert_eq!(sim.version(), "2.0.0");
    assert_eq!(
        sim.last_image_sha256().as_deref(),
        Some(pkg.sha256.as_str())
    );
    // It registered again after the update's reboot.
    assert!(sim.stats().registrations >= 2, "{:?}", sim.stats());
    // `otabridge status` shows the registration (issue 13 item 8).
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_otabridge"))
        .args(["status", "--json", "--config"])
        .arg(d.join("gw.toml"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let all: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let reg = &all[0]["registration"];
    assert_eq!(reg["endpoint"], "urn:dev:reg-1", "{all}");
    assert_eq!(reg["address"], sim.addr().to_string(), "{all}");
    assert_eq!(reg["binding"], "U", "{all}");
    let (lt, left) = (
        reg["lifetime_s"].as_u64().unwrap(),
        reg["lifetime_left_s"].as_u64().unwrap(),
    );
    assert!(left > 0 && left <= lt, "{all}");

    sim.deregister();
    let n = seen.statuses.len();
    wait(&mut tb, &mut seen, &log, |s| {
        s.statuses.len() > n && s.statuses.last() == Some(&Status::Offline)
    })
    .await;
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(text.contains("LwM2M client registered"), "{text}");
    assert!(text.contains("LwM2M client de-registered"), "{text}");
    // No `delivery` key: a registering child's delivery is `auto`; the sim
    // takes both, so pull was chosen.
    assert!(
        text.contains("delivery = auto: chosen from /5/0/9 and /5/0/8"),
        "{text}"
    );
    assert!(text.contains("chosen=Pull"), "{text}");
}
