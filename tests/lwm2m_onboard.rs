//! Onboarding (issue 13 item 3) end to end through the real `otabridge
//! run`, the in-process broker and the simulated platform (which answers
//! `add_sub_device_request` as IoTDA would), with registering simulated
//! LwM2M clients over UDP:
//! - an unknown endpoint is added as a sub-device, reported ONLINE,
//!   upgraded, remembered across a gateway restart, and removed by
//!   `delete_sub_device_notify`, the metrics endpoint's per-child families
//!   following it (present once adopted, after the restart, gone once
//!   deleted);
//! - one the platform refuses stays refused (4.03) with a log line;
//! - without `[lwm2m]`, an unknown endpoint gets 4.03 and a log line.
//!
//! Bounded waits only.

mod run_support;

use std::time::{Duration, Instant};

use otabridge::sim::coap_child::CoapChildSim;
use otabridge::sim::platform::AddAnswers;
use otabridge::sim::testbed::Testbed;
use otabridge_codecs::coap::Code;
use otabridge_codecs::iotda::event::{
    DeviceInfo, ProgressReport, Status, SubDeviceNotify, VersionQuery,
};
use otabridge_codecs::iotda::Event;
use run_support::{free_udp_port, registering, upgrade_to};

const PRODUCT: &str = "prod42";
const NEW_EP: &str = "urn:dev:new-1";
const BAD_EP: &str = "urn:dev:bad-1";

#[derive(Debug, Default)]
struct Seen {
    /// (event_id, node ids, product ids) of each add_sub_device_request.
    adds: Vec<(Option<String>, Vec<String>, Vec<String>)>,
    statuses: Vec<(String, Status)>,
    progress: Vec<(String, ProgressReport)>,
    versions: Vec<(String, String)>,
}

fn collect(tb: &mut Testbed, seen: &mut Seen) {
    while let Some(r) = tb.platform.try_recv() {
        for inc in r.events.unwrap_or_default() {
            let who = inc.object_device_id.clone().unwrap_or_default();
            match inc.event {
                Event::AddSubDeviceRequest(a) => seen.adds.push((
                    inc.event_id.clone(),
                    a.devices.iter().map(|d| d.node_id.clone()).collect(),
                    a.devices.iter().map(|d| d.product_id.clone()).collect(),
                )),
                Event::UpdateStatus(u) => seen.statuses.extend(
                    u.device_statuses
                        .into_iter()
                        .map(|d| (d.device_id, d.status)),
                ),
                Event::ProgressReport(p) => seen.progress.push((who, p)),
                Event::VersionReport(v) => {
                    seen.versions.push((who, v.fw_version.unwrap_or_default()))
                }
                _ => {}
            }
        }
    }
}

/// Waits (bounded) until `done` holds; the assertion shows the log.
async fn wait(tb: &mut Testbed, seen: &mut Seen, log: &str, done: impl Fn(&Seen) -> bool) {
    run_support::wait_for(tb, seen, log, collect, done).await
}

async fn until(log: &str, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(60);
    while !f() && Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(f(), "{}", std::fs::read_to_string(log).unwrap_or_default());
}

fn online(s: &Seen, id: &str) -> bool {
    s.statuses
        .iter()
        .rfind(|(d, _)| d == id)
        .is_some_and(|(_, st)| *st == Status::Online)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_endpoint_is_onboarded_upgraded_remembered_and_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut tb = Testbed::new(d).await.unwrap();
    tb.platform.answer_add_sub_devices(AddAnswers {
        refuse: vec![BAD_EP.into()],
    });
    let (server, pkg_ca) = run_support::package_server(d).await;
    let pkg = run_support::generated(&server, 30_000, 3);
    let port = free_udp_port();
    let mport = free_tcp_port();
    let extra = format!(
        "[download]\nca_file = {:?}\n\n[coap]\nlisten = \"127.0.0.1:{port}\"\n\n\
         [metrics]\nlisten = \"127.0.0.1:{mport}\"\n\n\
         [ota]\nretry_min_ms = 200\nretry_max_ms = 1000\n\n\
         [lwm2m]\nonboard_product_id = \"{PRODUCT}\"\n",
        pkg_ca.display().to_string(),
    );
    let (daemon, log) = run_support::run(&tb, d, &extra).await;
    let id = format!("{PRODUCT}_{NEW_EP}");
    let mut seen = Seen::default();
    // No child yet: no per-child series.
    let text = scrape(mport);
    assert_eq!(per_child(&text, &id), PerChild::default(), "{text}");
    assert_eq!(sample(&text, COAP_CHILDREN), None, "{text}");

    // 1. An unknown endpoint registers: added, adopted, ONLINE.
    let sim = CoapChildSim::start(registering(port, NEW_EP))
        .await
        .unwrap();
    wait(&mut tb, &mut seen, &log, |s| online(s, &id)).await;
    let (event_id, nodes, products) = &seen.adds[0];
    assert!(event_id.is_some(), "{seen:?}");
    assert_eq!(nodes, &[NEW_EP.to_string()]);
    assert_eq!(products, &[PRODUCT.to_string()]);
    assert_eq!(sim.last_registry_code(), Some(Code::CREATED));
    // Adopted: its series are there, at zero.
    let text = scrape(mport);
    let fresh = |p: PerChild| {
        // CoAP retransmissions (chunk retries) may happen on a loaded box.
        p.delivered == Some(0.0) && p.job_retries == Some(0.0) && p.chunk_retries.is_some()
    };
    assert!(fresh(per_child(&text, &id)), "{text}");
    assert_eq!(sample(&text, COAP_CHILDREN), Some(1.0), "{text}");

    // 2. One the platform refuses: its registration ends, and it gets
    //    4.03 from then on.
    let bad = CoapChildSim::start(registering(port, BAD_EP))
        .await
        .unwrap();
    wait(&mut tb, &mut seen, &log, |s| {
        s.adds
            .iter()
            .any(|(_, n, _)| n.contains(&BAD_EP.to_string()))
    })
    .await;
    until(&log, || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("the platform refused to add the LwM2M endpoint as a sub-device")
    })
    .await;
    bad.update(); // 4.04 (gone), then its Register: 4.03
    until(&log, || bad.last_registry_code() == Some(Code(0x83))).await;

    // 3. The onboarded child is upgraded like a configured one.
    let ev = upgrade_to(&server, &pkg, "onboard-task");
    tb.send(Some(&id), &ev).await.unwrap();
    wait(&mut tb, &mut seen, &log, |s| {
        s.progress.iter().any(|(w, p)| *w == id && p.is_terminal())
    })
    .await;
    let (_, last) = seen
        .progress
        .iter()
        .rfind(|(w, p)| *w == id && p.is_terminal())
        .unwrap();
    assert_eq!(
        (last.result_code.get(), last.version.as_str()),
        (0, "2.0.0"),
        "{last:?}"
    );
    assert_eq!(sim.version(), "2.0.0");
    // The image's bytes are counted under its id.
    let text = scrape(mport);
    assert_eq!(per_child(&text, &id).delivered, Some(30_000.0), "{text}");
    // `otabridge status` lists it with its registration.
    let me = run_support::status_of(d, &id);
    assert_eq!(me["registration"]["endpoint"], NEW_EP, "{me}");
    assert_eq!(me["transport"], "coap", "{me}");

    // 4. A restarted gateway remembers it: no new request, and it answers
    //    a version_query for it.
    drop(daemon);
    let connects = tb.edge.connects();
    let (daemon, log) = run_support::run(&tb, d, &extra).await;
    let end = Instant::now() + Duration::from_secs(60);
    while tb.edge.connects() == connects && Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let adds = seen.adds.len();
    // The edge counts the connection before the gateway has subscribed: an
    // event sent in between is lost, so the query is sent again until it
    // is answered (bounded; a repeated version_query is harmless).
    let answered = |s: &Seen| s.versions.iter().any(|(w, v)| *w == id && v == "2.0.0");
    let end = Instant::now() + Duration::from_secs(60);
    while !answered(&seen) && Instant::now() < end {
        tb.send(Some(&id), &Event::VersionQuery(VersionQuery::default()))
            .await
            .unwrap();
        let next = Instant::now() + Duration::from_secs(2);
        while !answered(&seen) && Instant::now() < next {
            tokio::time::sleep(Duration::from_millis(100)).await;
            collect(&mut tb, &mut seen);
        }
    }
    wait(&mut tb, &mut seen, &log, answered).await;
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        text.contains("onboarded LwM2M endpoint from an earlier run"),
        "{text}"
    );
    sim.update();
    assert_eq!(seen.adds.len(), adds, "{seen:#?}");
    // The restarted exporter has it too (built from the journal).
    let text = scrape(mport);
    assert!(fresh(per_child(&text, &id)), "{text}");
    assert_eq!(sample(&text, COAP_CHILDREN), Some(1.0), "{text}");

    // 5. Deleted on the platform: no longer a child, its registration
    //    ended, refused from then on.
    let del = Event::DeleteSubDeviceNotify(SubDeviceNotify {
        devices: vec![DeviceInfo {
            device_id: Some(id.clone()),
            node_id: Some(NEW_EP.into()),
            ..DeviceInfo::default()
        }],
        version: 2,
    });
    tb.send(None, &del).await.unwrap();
    until(&log, || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("sub-device deleted on the platform")
    })
    .await;
    sim.update();
    until(&log, || sim.last_registry_code() == Some(Code(0x83))).await;
    // Its series are gone from the next scrape.
    let text = scrape(mport);
    assert_eq!(per_child(&text, &id), PerChild::default(), "{text}");
    assert!(!text.contains(&id), "{text}");
    assert_eq!(sample(&text, COAP_CHILDREN), None, "{text}");
    drop(daemon);
}

const COAP_CHILDREN: &str = "otabridge_children{transport=\"coap\"}";

/// One child's series in the metrics endpoint's per-child families.
#[derive(Debug, Default, PartialEq)]
struct PerChild {
    delivered: Option<f64>,
    job_retries: Option<f64>,
    chunk_retries: Option<f64>,
}

fn per_child(text: &str, id: &str) -> PerChild {
    PerChild {
        delivered: sample(
            text,
            &format!("otabridge_delivered_bytes_total{{child=\"{id}\"}}"),
        ),
        job_retries: sample(
            text,
            &format!("otabridge_job_retries_total{{child=\"{id}\"}}"),
        ),
        chunk_retries: sample(
            text,
            &format!("otabridge_chunk_retries_total{{child=\"{id}\",transport=\"coap\"}}"),
        ),
    }
}

fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The metrics endpoint's text (`GET /metrics`).
fn scrape(port: u16) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// The value of one sample line (`name{labels} value`) of a scrape.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_onboarding_an_unknown_endpoint_gets_4_03_and_a_log_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut tb = Testbed::new(d).await.unwrap();
    let port = free_udp_port();
    let mport = free_tcp_port();
    let extra = format!(
        "[coap]\nlisten = \"127.0.0.1:{port}\"\n\n[metrics]\nlisten = \"127.0.0.1:{mport}\"\n\n\
         [[child]]\ndevice_id = \"p_known\"\ntransport = \"coap\"\nendpoint = \"urn:dev:known\"\n"
    );
    let (_daemon, log) = run_support::run(&tb, d, &extra).await;
    let sim = CoapChildSim::start(registering(port, "urn:dev:stranger"))
        .await
        .unwrap();
    until(&log, || sim.last_registry_code() == Some(Code(0x83))).await;
    assert_eq!(sim.location(), None);
    until(&log, || {
        std::fs::read_to_string(&log).unwrap_or_default().contains(
            "LwM2M registry request refused: endpoint 'urn:dev:stranger' is not configured",
        )
    })
    .await;
    // Nothing was asked of the platform.
    let mut seen = Seen::default();
    tokio::time::sleep(Duration::from_millis(300)).await;
    collect(&mut tb, &mut seen);
    assert!(seen.adds.is_empty(), "{seen:#?}");

    // The registry in the metrics: the known endpoint in queue mode
    // registers, the stranger was refused.
    let before = scrape(mport);
    assert_eq!(
        sample(
            &before,
            "otabridge_lwm2m_registrations{binding=\"U\",queue=\"true\"}"
        ),
        Some(0.0),
        "{before}"
    );
    let mut opts = registering(port, "urn:dev:known");
    opts.register.as_mut().unwrap().queue = true;
    let known = CoapChildSim::start(opts).await.unwrap();
    until(&log, || known.last_registry_code() == Some(Code::CREATED)).await;
    let text = scrape(mport);
    let get = |s: &str| sample(&text, s);
    assert_eq!(
        get("otabridge_lwm2m_registrations{binding=\"U\",queue=\"true\"}"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        get("otabridge_lwm2m_registrations{binding=\"U\",queue=\"false\"}"),
        Some(0.0),
        "{text}"
    );
    assert!(
        get("otabridge_lwm2m_registry_events_total{event=\"register\"}") >= Some(1.0),
        "{text}"
    );
    assert!(
        get("otabridge_lwm2m_registry_events_total{event=\"refuse\"}") >= Some(1.0),
        "{text}"
    );
    assert_eq!(
        get("otabridge_lwm2m_registry_events_total{event=\"expire\"}"),
        Some(0.0),
        "{text}"
    );
}
