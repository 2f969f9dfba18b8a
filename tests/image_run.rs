//! The image check end to end through the real `otabridge run`: an SMP
//! child (simulated on a pty) with `[image] keys`, and a LwM2M child
//! (simulated over CoAP) whose config asks for the MCUboot check. An image
//! signed with another key is rejected with result 7 before a byte reaches
//! either child; the vendor's image then upgrades both.

mod image_support;
mod run_support;

use std::time::{Duration, Instant};

use image_support::{app, imgtool_available, keygen, sign};
use otabridge::sim::coap_child::{CoapChildSim, SimOptions};
use otabridge::sim::package_server::{Access, PackageServer, Source};
use otabridge::sim::smp_child::{parse_version, SmpChild, SmpChildOptions};
use otabridge::sim::testbed::Testbed;
use otabridge_codecs::iotda::Event;
use run_support::{collect, Daemon, Reports};

/// Waits (bounded) until each of `ids` has `n` terminal reports.
async fn terminal(tb: &mut Testbed, reports: &mut Reports, ids: &[&str], n: usize, log: &str) {
    let done = |r: &Reports| {
        ids.iter().all(|id| {
            r.get(*id)
                .is_some_and(|v| v.iter().filter(|p| p.is_terminal()).count() >= n)
        })
    };
    let collect = |tb: &mut Testbed, r: &mut Reports| {
        collect(tb, r);
    };
    run_support::wait_for(tb, reports, log, collect, done).await
}

fn upgrade(server: &PackageServer, url: &str, size: u64, sha: &str) -> Event {
    upgrade_within(server, url, size, sha, 86_400)
}

/// An upgrade event whose deadline is `expires` seconds away.
fn upgrade_within(server: &PackageServer, url: &str, size: u64, sha: &str, expires: u64) -> Event {
    run_support::upgrade_event(server, (url, size, sha), "image-task", 2, expires)
}

/// Starts `otabridge run` on the testbed with `extra` config; returns the
/// daemon and its log file once it is connected and subscribed.
async fn start(tb: &Testbed, d: &std::path::Path, extra: &str) -> (Daemon, String) {
    let (daemon, log) = run_support::run(tb, d, extra).await;
    // Let the gateway subscribe before the first event.
    tokio::time::sleep(Duration::from_millis(300)).await;
    (daemon, log)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_image_reaches_no_child_and_the_vendors_upgrades_both() {
    if !imgtool_available("a_foreign_image_reaches_no_child_and_the_vendors_upgrades_both") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut tb = Testbed::new(d).await.unwrap();
    let (server, pkg_ca) = run_support::package_server(d).await;

    let input = app(d, "app", 24_000, 3);
    let (vendor, vendor_pub) = keygen(d, "vendor", "ecdsa-p256");
    let (intruder, _) = keygen(d, "intruder", "ed25519");
    let good = sign(d, "good", &input, Some(&vendor), "2.0.0", &[]);
    let bad = sign(d, "bad", &input, Some(&intruder), "2.0.0", &[]);
    let good = server
        .add("good", Source::File(good), Access::Bearer)
        .unwrap();
    let bad = server
        .add("bad", Source::File(bad), Access::Bearer)
        .unwrap();

    let mut o = SmpChildOptions::default();
    o.device.running = parse_version("1.0.0").unwrap();
    let smp = SmpChild::spawn(o).unwrap();
    let coap = CoapChildSim::start(SimOptions::new("1.0.0", "2.0.0"))
        .await
        .unwrap();
    let extra = format!(
        "[download]\nca_file = {:?}\n\n[coap]\nlisten = \"127.0.0.1:0\"\n\n\
         [ota]\nretry_min_ms = 200\nretry_max_ms = 1000\n\n[image]\nkeys = [{:?}]\n\n\
         [[child]]\ndevice_id = \"p_smp\"\ntransport = \"serial\"\nport = {:?}\n\
         reboot_wait_ms = 300\n\n\
         [[child]]\ndevice_id = \"p_lwm2m\"\ntransport = \"coap\"\naddress = \"{}\"\n\
         image = {{ check = \"mcuboot\" }}\n",
        pkg_ca.display().to_string(),
        vendor_pub.display().to_string(),
        smp.path().display().to_string(),
        coap.addr(),
    );
    let (_daemon, log) = start(&tb, d, &extra).await;

    let ids = ["p_smp", "p_lwm2m"];
    let mut reports = Reports::new();
    for id in ids {
        let ev = upgrade(&server, &bad.url, bad.size, &bad.sha256);
        tb.send(Some(id), &ev).await.unwrap();
    }
    terminal(&mut tb, &mut reports, &ids, 1, &log).await;
    for id in ids {
        let last = reports[id].last().unwrap();
        let desc = last.description.clone().unwrap_or_default();
        assert_eq!(last.result_code.get(), 7, "{id}: {desc}");
        assert!(
            desc.contains("key hash") && desc.contains("not configured"),
            "{id}: {desc}"
        );
    }
    assert_eq!(
        smp.stats().first_chunks,
        0,
        "no upload reached the SMP child"
    );
    assert!(smp.flash().iter().all(|b| *b == 0xff) || smp.flash().is_empty());
    let st = coap.stats();
    assert_eq!(
        (st.blocks, st.starts),
        (0, 0),
        "no block reached the LwM2M child"
    );

    for id in ids {
        let ev = upgrade(&server, &good.url, good.size, &good.sha256);
        tb.send(Some(id), &ev).await.unwrap();
    }
    terminal(&mut tb, &mut reports, &ids, 2, &log).await;
    for id in ids {
        let last = reports[id].last().unwrap();
        assert_eq!(
            (last.result_code.get(), last.version.as_str()),
            (0, "2.0.0"),
            "{id}: {last:?}"
        );
    }
    assert_eq!(smp.running().0, "2.0.0");
    assert_eq!(coap.version(), "2.0.0");
}

/// The pre-flight end to end (docs/images.md): the SMP child's slot info
/// says the image does not fit (5, no chunk sent); the LwM2M child's
/// battery is below its minimum, so it is asked again until the event's
/// deadline and reported with 4 (no block sent). Then, with an image that
/// fits, the SMP child is upgraded, and the LwM2M child once its battery
/// charges while its job waits. Both children have keys configured.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_that_cannot_take_the_image_now_gets_none_of_it() {
    if !imgtool_available("a_child_that_cannot_take_the_image_now_gets_none_of_it") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut tb = Testbed::new(d).await.unwrap();
    let (server, pkg_ca) = run_support::package_server(d).await;

    let (vendor, vendor_pub) = keygen(d, "vendor", "ed25519");
    let big = sign(
        d,
        "big",
        &app(d, "big", 24_000, 4),
        Some(&vendor),
        "2.0.0",
        &[],
    );
    let small = sign(
        d,
        "small",
        &app(d, "small", 6_000, 5),
        Some(&vendor),
        "2.0.0",
        &[],
    );
    let big = server
        .add("big", Source::File(big), Access::Bearer)
        .unwrap();
    let small = server
        .add("small", Source::File(small), Access::Bearer)
        .unwrap();

    let mut o = SmpChildOptions::default();
    o.device.running = parse_version("1.0.0").unwrap();
    o.device.slot_info = true;
    o.device.slot_size = 16 * 1024;
    let smp = SmpChild::spawn(o).unwrap();
    let coap = CoapChildSim::start(SimOptions::new("1.0.0", "2.0.0"))
        .await
        .unwrap();
    coap.set_reading("/3/0/9", Some(10));
    let extra = format!(
        "[download]\nca_file = {:?}\n\n[coap]\nlisten = \"127.0.0.1:0\"\n\n\
         [ota]\nretry_min_ms = 200\nretry_max_ms = 1000\n\n\
         [[child]]\ndevice_id = \"p_smp\"\ntransport = \"serial\"\nport = {:?}\n\
         reboot_wait_ms = 300\nimage = {{ keys = [{:?}] }}\n\n\
         [[child]]\ndevice_id = \"p_lwm2m\"\ntransport = \"coap\"\naddress = \"{}\"\n\
         image = {{ check = \"mcuboot\", keys = [{:?}], min_battery = 20 }}\n",
        pkg_ca.display().to_string(),
        smp.path().display().to_string(),
        vendor_pub.display().to_string(),
        coap.addr(),
        vendor_pub.display().to_string(),
    );
    let (_daemon, log) = start(&tb, d, &extra).await;

    // The deadline 130 s after the event leaves 10 s once the gateway
    // keeps its 120 s for the terminal report.
    let ids = ["p_smp", "p_lwm2m"];
    let mut reports = Reports::new();
    for id in ids {
        let ev = upgrade_within(&server, &big.url, big.size, &big.sha256, 130);
        tb.send(Some(id), &ev).await.unwrap();
    }
    terminal(&mut tb, &mut reports, &ids, 1, &log).await;
    let last = |r: &Reports, id: &str| r[id].last().unwrap().clone();
    let smp_report = last(&reports, "p_smp");
    assert_eq!(smp_report.result_code.get(), 5, "{smp_report:?}");
    assert_eq!(
        smp.stats().first_chunks,
        0,
        "no chunk reached the SMP child"
    );
    let lw = last(&reports, "p_lwm2m");
    let desc = lw.description.clone().unwrap_or_default();
    assert_eq!(lw.result_code.get(), 4, "{desc}");
    assert!(
        desc.contains("10 % (/3/0/9), the minimum is 20 %"),
        "{desc}"
    );
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.matches("not ready, asking again").count() >= 2,
        "the gated child was asked again until the deadline:\n{text}"
    );
    assert!(text.contains("slot holds 16384 (slot info)"), "{text}");
    let st = coap.stats();
    assert_eq!(
        (st.blocks, st.starts),
        (0, 0),
        "no block reached the LwM2M child"
    );

    // An image that fits, and a battery that charges while the job waits:
    // both upgrade.
    let asked = |log: &str| {
        std::fs::read_to_string(log)
            .unwrap_or_default()
            .matches("not ready, asking again")
            .count()
    };
    let before = asked(&log);
    for id in ids {
        let ev = upgrade(&server, &small.url, small.size, &small.sha256);
        tb.send(Some(id), &ev).await.unwrap();
    }
    let until = Instant::now() + Duration::from_secs(60);
    while asked(&log) <= before && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(asked(&log) > before, "the second job waits for the battery");
    // `otabridge status` says why it waits (journaled before the log line).
    let lw_job = |d: &std::path::Path| run_support::status_of(d, "p_lwm2m")["job"].clone();
    let job = lw_job(d);
    let waiting = job["waiting"].as_str().unwrap_or_default();
    assert!(
        waiting.contains("10 % (/3/0/9), the minimum is 20 %")
            && waiting.contains("until the deadline, then result 4"),
        "{job}"
    );
    assert_eq!(job["cause"]["kind"], "waiting", "{job}");
    let text = run_support::status_text(d);
    assert!(text.contains("waiting: low battery"), "{text}");
    coap.set_reading("/3/0/9", Some(80));
    terminal(&mut tb, &mut reports, &ids, 2, &log).await;
    let job = lw_job(d);
    assert!(job["waiting"].is_null(), "{job}");
    assert_eq!(job["phase"], "succeeded", "{job}");
    for id in ids {
        let r = last(&reports, id);
        assert_eq!(
            (r.result_code.get(), r.version.as_str()),
            (0, "2.0.0"),
            "{id}: {r:?}"
        );
    }
    assert_eq!(smp.running().0, "2.0.0");
    assert_eq!(coap.version(), "2.0.0");
}
