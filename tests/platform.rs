//! The gateway as an IoTDA device, over real sockets and real TLS: an
//! in-process rumqttd behind the simulated IoTDA edge, and a real SQLite
//! journal. Each test runs on a current-thread runtime, so the log capture
//! (a thread-local subscriber) sees every line the gateway writes.

use std::sync::Arc;
use std::time::Duration;

use otabridge::child::memory::MemoryChild;
use otabridge::child::Child;
use otabridge::journal::Journal;
use otabridge::sim::platform::DeviceAuth;
use otabridge::sim::testbed::{normalise, Testbed, GATEWAY_ID};
use otabridge_codecs::iotda::event::{ProgressReport, Status, VersionQuery};
use otabridge_codecs::iotda::Event;
use serde_json::json;

mod log_support;
use log_support::Logs;

const T: Duration = Duration::from_secs(20);

fn kids(specs: &[(&str, &str)]) -> (Vec<Arc<MemoryChild>>, Vec<Arc<dyn Child>>) {
    let concrete: Vec<Arc<MemoryChild>> = specs
        .iter()
        .map(|(id, v)| Arc::new(MemoryChild::new(id, v)))
        .collect();
    let dynamic = concrete
        .iter()
        .map(|c| c.clone() as Arc<dyn Child>)
        .collect();
    (concrete, dynamic)
}

/// Waits for the connect-time status report and returns its statuses.
async fn connect_statuses(tb: &mut Testbed) -> Vec<(String, Status)> {
    tb.wait_for(T, |r| {
        r.events.as_ref()?.iter().find_map(|i| match &i.event {
            Event::UpdateStatus(s) => Some(
                s.device_statuses
                    .iter()
                    .map(|d| (d.device_id.clone(), d.status))
                    .collect(),
            ),
            _ => None,
        })
    })
    .await
    .expect("no sub_device_update_status after connect")
}

async fn version_report_json(tb: &mut Testbed, child: &str) -> serde_json::Value {
    let child = child.to_owned();
    tb.wait_for(T, |r| {
        let evs = r.events.as_ref()?;
        let is = evs.iter().any(|i| {
            i.object_device_id.as_deref() == Some(&child)
                && matches!(i.event, Event::VersionReport(_))
        });
        is.then(|| {
            assert_eq!(r.topic, format!("$oc/devices/{GATEWAY_ID}/sys/events/up"));
            normalise(&r.payload).unwrap()
        })
    })
    .await
    .unwrap_or_else(|| panic!("no version_report for {child}"))
}

#[tokio::test]
async fn statuses_on_connect_and_exact_version_reports() {
    let dir = tempfile::tempdir().unwrap();
    let mut tb = Testbed::new(dir.path()).await.unwrap();
    let (concrete, children) = kids(&[("p_node1", "1.0.3"), ("p_node2", "V2.1")]);
    concrete[1].set_online(false);
    tb.start_gateway(children).await.unwrap();
    let statuses = connect_statuses(&mut tb).await;
    assert_eq!(
        statuses,
        vec![
            ("p_node1".into(), Status::Online),
            ("p_node2".into(), Status::Offline)
        ]
    );

    tb.send(
        Some("p_node1"),
        &Event::VersionQuery(VersionQuery::default()),
    )
    .await
    .unwrap();
    assert_eq!(
        version_report_json(&mut tb, "p_node1").await,
        json!({"object_device_id":"p_node1","services":[{"service_id":"$ota",
            "event_type":"version_report","event_time":"*",
            "paras":{"sw_version":"1.0.3","fw_version":"1.0.3"}}]})
    );

    // The gateway itself: no object_device_id, otabridge's own version.
    tb.send(None, &Event::VersionQuery(VersionQuery::default()))
        .await
        .unwrap();
    let own = tb
        .wait_for(T, |r| {
            let v = normalise(&r.payload).ok()?;
            (v["services"][0]["event_type"] == "version_report"
                && v.get("object_device_id").is_none())
            .then_some(v)
        })
        .await
        .expect("no version_report for the gateway");
    assert_eq!(
        own["services"][0]["paras"]["sw_version"],
        env!("CARGO_PKG_VERSION")
    );

    // The journal recorded what the health checks saw.
    let rows = Journal::open_read_only(&tb.state_dir)
        .unwrap()
        .children()
        .unwrap();
    assert_eq!(rows.len(), 2);
    assert!(rows[0].online && !rows[1].online);
    tb.stop_gateway().await.unwrap();
}

#[tokio::test]
async fn an_offline_child_that_comes_back_is_answered_within_the_window() {
    let dir = tempfile::tempdir().unwrap();
    let mut tb = Testbed::new(dir.path()).await.unwrap();
    let (concrete, children) = kids(&[("p_late", "3.0")]);
    concrete[0].set_online(false);
    tb.start_gateway(children).await.unwrap();
    connect_statuses(&mut tb).await;
    tb.send(
        Some("p_late"),
        &Event::VersionQuery(VersionQuery::default()),
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    concrete[0].set_online(true);
    let v = version_report_json(&mut tb, "p_late").await;
    assert_eq!(v["services"][0]["paras"]["fw_version"], "3.0");
    tb.stop_gateway().await.unwrap();
}

#[tokio::test]
async fn bad_input_is_logged_specifically_and_the_session_goes_on() {
    let (logs, _guard) = Logs::capture();
    let dir = tempfile::tempdir().unwrap();
    let mut tb = Testbed::new(dir.path()).await.unwrap();
    let (_c, children) = kids(&[("p_node1", "1.0")]);
    tb.start_gateway(children).await.unwrap();
    connect_statuses(&mut tb).await;

    let down = "sys/events/down";
    tb.platform
        .send_raw(GATEWAY_ID, down, "{not json")
        .await
        .unwrap();
    assert!(
        logs.wait_for("dropped malformed event: malformed event envelope")
            .await,
        "{}",
        logs.text()
    );
    tb.platform
        .send_raw(
            GATEWAY_ID,
            down,
            r#"{"object_device_id":"p_node1","services":[{"service_id":"$ota","event_type":"firmware_upgrade","paras":{"version":"2","url":"u","file_size":"big","file_name":"f"}}]}"#,
        )
        .await
        .unwrap();
    // Attributable (a configured child, an upgrade): answered with a
    // failure report naming the field (tests/platform_hostile.rs has more).
    assert!(
        logs.wait_for("`file_size` is a string, expected an unsigned 64-bit integer")
            .await,
        "{}",
        logs.text()
    );
    tb.send(Some("ghost"), &Event::VersionQuery(VersionQuery::default()))
        .await
        .unwrap();
    assert!(
        logs.wait_for("child=\"ghost\"").await && logs.wait_for("unknown child").await,
        "{}",
        logs.text()
    );
    // rumqttd does not pass a publish this large on to its subscribers, so
    // the edge puts it on the gateway's connection itself.
    tb.edge.inject(
        &format!("$oc/devices/{GATEWAY_ID}/{down}"),
        vec![b'{'; 1024 * 1024 + 1],
    );
    assert!(
        logs.wait_for("payload larger than IoTDA's 1 MB publish limit")
            .await,
        "{}",
        logs.text()
    );
    tb.platform
        .send_raw(
            GATEWAY_ID,
            down,
            r#"{"services":[{"service_id":"$time_sync","event_type":"time_sync_response","paras":{}}]}"#,
        )
        .await
        .unwrap();
    assert!(
        logs.wait_for("event $time_sync time_sync_response is not handled")
            .await,
        "{}",
        logs.text()
    );

    // The session went on: same connection, and a query still gets answered.
    tb.send(
        Some("p_node1"),
        &Event::VersionQuery(VersionQuery::default()),
    )
    .await
    .unwrap();
    version_report_json(&mut tb, "p_node1").await;
    assert_eq!(
        tb.edge.connects(),
        1,
        "the gateway reconnected: {}",
        logs.text()
    );
    tb.stop_gateway().await.unwrap();
}

fn progress(i: u8) -> Event {
    Event::ProgressReport(ProgressReport {
        result_code: otabridge_codecs::iotda::ResultCode::SUCCESS,
        progress: Some(i),
        version: "1.0".into(),
        description: Some(format!("report {i}")),
    })
}

fn progress_of(r: &otabridge::sim::platform::Received) -> Option<u8> {
    r.events.as_ref()?.iter().find_map(|i| match &i.event {
        Event::ProgressReport(p) => p.progress,
        _ => None,
    })
}

#[tokio::test]
async fn reports_made_during_cuts_arrive_after_reconnect_in_order() {
    let (logs, _guard) = Logs::capture();
    let dir = tempfile::tempdir().unwrap();
    let mut tb = Testbed::new(dir.path()).await.unwrap();
    let (_c, children) = kids(&[("p_node1", "1.0")]);
    let h = tb.start_gateway(children).await.unwrap();
    connect_statuses(&mut tb).await;

    for i in 0..60u8 {
        h.platform
            .report(Some("p_node1"), &progress(i))
            .await
            .unwrap();
        if i % 20 == 10 {
            // Cut mid-burst, refuse the first retry, and wait until the
            // gateway is back before the next round.
            let before = tb.edge.connects();
            tb.edge.cut();
            tb.edge.refuse_for(Duration::from_millis(300));
            for _ in 0..400 {
                if tb.edge.connects() > before {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut seen: Vec<u8> = Vec::new();
    while seen.iter().collect::<std::collections::BTreeSet<_>>().len() < 60 {
        let Some(r) = tb.platform.recv(Duration::from_secs(30)).await else {
            panic!("reports lost; got {seen:?}\n{}", logs.text());
        };
        if let Some(p) = progress_of(&r) {
            seen.push(p);
        }
    }
    // At least once, and in order: a report is only ever repeated as part of
    // resending the outbox from its oldest row, so the first time each one
    // arrives follows the order they were made in.
    let mut firsts = Vec::new();
    for p in &seen {
        if !firsts.contains(p) {
            firsts.push(*p);
        }
    }
    assert_eq!(firsts, (0..60).collect::<Vec<_>>());
    assert!(
        tb.edge.connects() >= 4,
        "expected reconnects: {}",
        tb.edge.connects()
    );
    assert!(
        logs.text().contains("platform connection lost"),
        "{}",
        logs.text()
    );
    // Every PUBACK deleted its row.
    let h2 = h.platform.clone();
    for _ in 0..200 {
        if h2.outbox_len().await.unwrap() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(h2.outbox_len().await.unwrap(), 0);
    tb.stop_gateway().await.unwrap();
}

#[tokio::test]
async fn reports_left_in_the_outbox_are_sent_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut tb = Testbed::new(dir.path()).await.unwrap();
    // First run: the platform is unreachable (nothing listens on the port).
    let dead_port = otabridge::sim::broker::free_port().unwrap();
    let text = otabridge::sim::testbed::config_text(dead_port, &tb.ca_file, &tb.state_dir, "");
    let cfg = otabridge::config::Config::parse(&text, std::path::Path::new("t.toml")).unwrap();
    let (_c, children) = kids(&[("p_node1", "1.0")]);
    let h = tb.start_gateway_with(cfg, children.clone()).await.unwrap();
    for i in 0..5u8 {
        h.platform
            .report(Some("p_node1"), &progress(i))
            .await
            .unwrap();
    }
    tb.stop_gateway().await.unwrap();
    assert_eq!(
        Journal::open(&tb.state_dir).unwrap().outbox_len().unwrap(),
        5
    );

    // Second run, same state directory, reachable platform.
    tb.start_gateway(children).await.unwrap();
    assert_eq!(progress_reports(&mut tb, 5).await, [0, 1, 2, 3, 4]);
    tb.stop_gateway().await.unwrap();
}

/// Waits for `n` progress reports at the simulated platform (at most `T`
/// for each); their values.
async fn progress_reports(tb: &mut Testbed, n: usize) -> Vec<u8> {
    let mut got = Vec::new();
    while got.len() < n {
        let r = tb.platform.recv(T).await.expect("a report did not arrive");
        if let Some(p) = progress_of(&r) {
            got.push(p);
        }
    }
    got
}

#[tokio::test]
async fn a_clean_stop_waits_for_the_acks_of_what_it_published() {
    let dir = tempfile::tempdir().unwrap();
    let mut tb = Testbed::new(dir.path()).await.unwrap();
    let (_c, children) = kids(&[("p_node1", "1.0")]);
    let h = tb.start_gateway(children).await.unwrap();
    connect_statuses(&mut tb).await;
    // A slow uplink: each PUBACK comes 100 ms late, one after the other.
    tb.edge.delay_pubacks(Some(Duration::from_millis(100)));
    for i in 0..5u8 {
        h.platform
            .report(Some("p_node1"), &progress(i))
            .await
            .unwrap();
    }
    // All five published (the platform has them); stop before their
    // PUBACKs are back: the stop waits for them and deletes the rows.
    assert_eq!(progress_reports(&mut tb, 5).await, [0, 1, 2, 3, 4]);
    tb.stop_gateway().await.unwrap();
    assert_eq!(
        Journal::open(&tb.state_dir).unwrap().outbox_len().unwrap(),
        0,
        "acknowledged reports left in the outbox (sent again at the next start)"
    );
}

#[tokio::test]
async fn a_stop_without_acks_keeps_the_reports_for_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut tb = Testbed::new(dir.path()).await.unwrap();
    let (_c, children) = kids(&[("p_node1", "1.0")]);
    let h = tb.start_gateway(children.clone()).await.unwrap();
    connect_statuses(&mut tb).await;
    // PUBACKs that never come in time: the stop gives up after its drain
    // and the reports stay queued.
    tb.edge.delay_pubacks(Some(Duration::from_secs(3600)));
    for i in 0..3u8 {
        h.platform
            .report(Some("p_node1"), &progress(i))
            .await
            .unwrap();
    }
    assert_eq!(progress_reports(&mut tb, 3).await, [0, 1, 2]);
    tokio::time::timeout(Duration::from_secs(60), tb.stop_gateway())
        .await
        .expect("the stop waits for acknowledgements a bounded time")
        .unwrap();
    assert_eq!(
        Journal::open(&tb.state_dir).unwrap().outbox_len().unwrap(),
        3
    );
    // At least once: the next start sends them again, and this time the
    // platform acknowledges them.
    tb.edge.delay_pubacks(None);
    tb.edge.cut();
    tb.start_gateway(children).await.unwrap();
    assert_eq!(progress_reports(&mut tb, 3).await, [0, 1, 2]);
    let mut left = u64::MAX;
    for _ in 0..200 {
        left = tb.handles().unwrap().platform.outbox_len().await.unwrap();
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(left, 0);
    tb.stop_gateway().await.unwrap();
}

#[tokio::test]
async fn refused_credentials_are_logged_and_not_hammered() {
    let (logs, _guard) = Logs::capture();
    let dir = tempfile::tempdir().unwrap();
    let mut tb = Testbed::new(dir.path()).await.unwrap();
    tb.edge
        .register(GATEWAY_ID, DeviceAuth::Secret("another-secret".into()));
    let (_c, children) = kids(&[("p_node1", "1.0")]);
    tb.start_gateway(children).await.unwrap();
    assert!(
        logs.wait_for("platform refused the connection (BadUserNamePassword)")
            .await,
        "{}",
        logs.text()
    );
    assert!(logs
        .text()
        .contains("check platform.device_id and the secret"));
    // The next try waits at the slowest interval (15 to 30 s), not 1 s.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(tb.edge.refused(), 1);
    assert_eq!(tb.edge.connects(), 0);
    tb.stop_gateway().await.unwrap();
}

#[tokio::test]
async fn status_reports_are_batched_by_100() {
    let dir = tempfile::tempdir().unwrap();
    let mut tb = Testbed::new(dir.path()).await.unwrap();
    let specs: Vec<(String, String)> = (0..150)
        .map(|i| (format!("p_n{i:03}"), "1.0".to_owned()))
        .collect();
    let refs: Vec<(&str, &str)> = specs
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    let (_c, children) = kids(&refs);
    tb.start_gateway(children).await.unwrap();
    let first = connect_statuses(&mut tb).await;
    let second = connect_statuses(&mut tb).await;
    assert_eq!((first.len(), second.len()), (100, 50));
    assert_eq!(first[0].0, "p_n000");
    assert_eq!(second[49].0, "p_n149");
    tb.stop_gateway().await.unwrap();
}

/// Issue 12, defect 2: a failed job says where it failed and what the device
/// said, in the job-ended log line and in `otabridge status` (text and
/// JSON), not only the platform's description ("Firmware update failed").
/// An LwM2M child over CoAP reports /5/0/5 = 5 (integrity failure) after
/// the push.
#[tokio::test]
async fn a_failed_job_shows_its_step_and_what_the_device_said() {
    use otabridge::child::coap::{ChildOptions, CoapChild, CoapNetwork, NetworkOptions};
    use otabridge::sim::coap_child::{CoapChildSim, SimOptions};
    use otabridge::sim::package_server::{Access, PackageServer, Source};
    use otabridge_codecs::iotda::UpgradeKind;
    use otabridge_codecs::lwm2m::UpdateResult;

    let (logs, _guard) = Logs::capture();
    let dir = tempfile::tempdir().unwrap();
    let mut tb = Testbed::new(dir.path()).await.unwrap();
    let server = PackageServer::start(&["127.0.0.1", "localhost"])
        .await
        .unwrap();
    let ca = dir.path().join("pkg-ca.pem");
    std::fs::write(&ca, server.ca_pem()).unwrap();
    let extra = format!(
        "[download]\nca_file = {:?}\n\n[ota]\nretry_min_ms = 20\nretry_max_ms = 100\n",
        ca.display().to_string()
    );
    let cfg = tb.config(&extra).unwrap();
    let sim = CoapChildSim::start(SimOptions::new("1.0.0", "2.0.0"))
        .await
        .unwrap();
    sim.set_download_failure(Some(UpdateResult::IntegrityFailure));
    let net = CoapNetwork::bind(NetworkOptions::new("127.0.0.1:0".parse().unwrap(), 12)).unwrap();
    let child = CoapChild::new(
        "p_lwm2m",
        sim.addr(),
        otabridge::config::Delivery::Push,
        net,
        ChildOptions::default(),
    );
    tb.start_gateway_with(cfg, vec![Arc::new(child) as Arc<dyn Child>])
        .await
        .unwrap();
    connect_statuses(&mut tb).await;
    let served = server
        .add(
            "fw-bad",
            Source::Generated {
                len: 8 * 1024,
                seed: 12,
            },
            Access::Bearer,
        )
        .unwrap();
    let upgrade = served.upgrade(
        "2.0.0",
        server.issue_token(Duration::from_secs(3600)),
        "task-12",
    );
    let ev = Event::Upgrade {
        kind: UpgradeKind::Firmware,
        v2: false,
        upgrade,
    };
    tb.send(Some("p_lwm2m"), &ev).await.unwrap();
    let last = tb
        .wait_for(T, |r| {
            r.events.as_ref()?.iter().find_map(|i| match &i.event {
                Event::ProgressReport(p) if p.is_terminal() => Some(p.clone()),
                _ => None,
            })
        })
        .await
        .expect("no terminal report");
    assert_eq!(last.result_code.to_string(), "7", "{last:?}");
    assert!(logs.wait_for("job ended").await, "{}", logs.text());
    tb.stop_gateway().await.unwrap();

    // The log line: the step and the child's own words.
    let text = logs.text();
    let line = text.lines().find(|l| l.contains("job ended")).unwrap();
    assert!(line.contains("cause: deliver at offset"), "{line}");
    assert!(line.contains("device said /5/0/5 = 5"), "{line}");

    // `otabridge status`, JSON and text, from the journal.
    let file = dir.path().join("status.toml");
    let child_cfg =
        "[[child]]\ndevice_id = \"p_lwm2m\"\ntransport = \"coap\"\naddress = \"127.0.0.1:5683\"\n";
    std::fs::write(
        &file,
        otabridge::sim::testbed::config_text(1, &ca, &tb.state_dir, child_cfg),
    )
    .unwrap();
    let status = |json: bool| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_otabridge"));
        cmd.arg("status");
        if json {
            cmd.arg("--json");
        }
        let out = cmd.arg("--config").arg(&file).output().unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let v: serde_json::Value = serde_json::from_str(&status(true)).unwrap();
    let job = &v[0]["job"];
    assert_eq!(job["result_code"], 7, "{v:#}");
    assert_eq!(job["cause"]["step"], "deliver", "{v:#}");
    assert!(
        job["cause"]["device_said"]
            .as_str()
            .is_some_and(|s| s.starts_with("/5/0/5 = 5")),
        "{v:#}"
    );
    assert!(
        job["cause"]["kind"]
            .as_str()
            .is_some_and(|s| s.contains("integrity")),
        "{v:#}"
    );
    let text = status(false);
    assert!(text.contains("device said /5/0/5 = 5"), "{text}");
}
