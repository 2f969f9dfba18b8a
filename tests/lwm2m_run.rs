//! A LwM2M child that registers, end to end through the real
//! `otabridge run`: the simulated child (registering mode) registers with
//! the gateway's `coap.listen`, the gateway reports it ONLINE, upgrades it
//! by pull from an IoTDA upgrade event, and reports it OFFLINE when it
//! de-registers. Bounded waits only.

mod run_support;

use otabridge::sim::coap_child::CoapChildSim;
use otabridge::sim::testbed::Testbed;
use otabridge_codecs::iotda::event::Status;
use run_support::{free_udp_port, registering, upgrade_to, Seen};

/// Waits (bounded) until `done` holds for what the platform received.
async fn wait(tb: &mut Testbed, seen: &mut Seen, log: &str, done: impl Fn(&Seen) -> bool) {
    run_support::wait_child(tb, "p_reg", seen, log, done).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registering_child_is_announced_upgraded_and_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut tb = Testbed::new(d).await.unwrap();
    let (server, pkg_ca) = run_support::package_server(d).await;
    let pkg = run_support::generated(&server, 40_000, 9);
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
    let sim = CoapChildSim::start(registering(port, "urn:dev:reg-1"))
        .await
        .unwrap();
    wait(&mut tb, &mut seen, &log, |s| {
        s.statuses.last() == Some(&Status::Online)
    })
    .await;

    let ev = upgrade_to(&server, &pkg, "reg-task");
    tb.send(Some("p_reg"), &ev).await.unwrap();
    let last = run_support::terminal_of(&mut tb, "p_reg", &mut seen, &log).await;
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
    let all = run_support::status_json(d);
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
    let text = run_support::log_text(log.as_ref());
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
