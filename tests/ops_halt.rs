//! Halt on failures (issue 15 item 3): a task whose image every child
//! refuses reaches at most `halt_failures` children; the rest are held,
//! reported upstream with the reason, shown as held by the control API,
//! still held after a restart, and go on when the task is released.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http::{Method, StatusCode};
use otabridge::child::memory::MemoryChild;
use otabridge::child::Child;
use otabridge::control::client;
use otabridge::sim::package_server::{Access, PackageServer, Source};
use otabridge::sim::testbed::Testbed;
use otabridge_codecs::iotda::event::ProgressReport;
use otabridge_codecs::iotda::{Event, ResultCode, UpgradeKind};
use serde_json::Value;

const CHILDREN: usize = 6;

async fn ask(socket: &Path, method: Method, path: &str) -> (StatusCode, Value) {
    client::request(socket, method, path).await.unwrap()
}

/// Reports per child until `done` holds for them (bounded: 30 s of quiet).
async fn reports_until(
    tb: &mut Testbed,
    by_child: &mut BTreeMap<String, Vec<ProgressReport>>,
    done: impl Fn(&BTreeMap<String, Vec<ProgressReport>>) -> bool,
) {
    while !done(by_child) {
        let Some(r) = tb.platform.recv(Duration::from_secs(30)).await else {
            panic!("reports stopped; so far: {by_child:#?}");
        };
        for inc in r.events.unwrap_or_default() {
            if let (Some(id), Event::ProgressReport(p)) = (inc.object_device_id, inc.event) {
                by_child.entry(id).or_default().push(p);
            }
        }
    }
}

/// Waits (bounded: 10 s) until every report the gateway queued was
/// acknowledged by the broker and left its outbox. A report the platform
/// received is not yet acknowledged in the gateway's journal: stopped
/// before that, the gateway rightly sends it again after its restart
/// (QoS 1, at least once), and the platform sees it twice.
async fn outbox_drained(tb: &Testbed) {
    for _ in 0..500 {
        let left = otabridge::journal::Journal::open_read_only(&tb.state_dir)
            .and_then(|j| j.outbox_len())
            .unwrap();
        if left == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the outbox did not drain within 10 s");
}

fn terminal(v: &[ProgressReport]) -> usize {
    v.iter().filter(|r| r.is_terminal()).count()
}

fn held(v: &[ProgressReport]) -> bool {
    v.iter().any(|r| {
        r.description
            .as_deref()
            .is_some_and(|d| d.starts_with("held: "))
    })
}

#[tokio::test]
async fn a_bad_image_reaches_at_most_k_children_and_the_rest_wait_for_release() {
    let dir = tempfile::tempdir().unwrap();
    let mut tb = Testbed::new(dir.path()).await.unwrap();
    let server = PackageServer::start(&["127.0.0.1"]).await.unwrap();
    let ca = dir.path().join("pkg-ca.pem");
    std::fs::write(&ca, server.ca_pem()).unwrap();
    let cfg = tb
        .config(&format!(
            "[download]\nca_file = {:?}\n\n[ota]\nhalt_failures = 2\nhalt_first = 4\n",
            ca.display().to_string()
        ))
        .unwrap();
    let kids: Vec<Arc<MemoryChild>> = (0..CHILDREN)
        .map(|i| {
            let c = Arc::new(MemoryChild::new(&format!("p_bad{i}"), "1.0.0"));
            c.reject_activation(ResultCode::INSTALL_FAIL, "the image does not boot");
            c
        })
        .collect();
    let all: Vec<Arc<dyn Child>> = kids.iter().map(|c| c.clone() as Arc<dyn Child>).collect();
    let h = tb
        .start_gateway_with(cfg.clone(), all.clone())
        .await
        .unwrap();
    tb.wait_connected(Duration::from_secs(20)).await.unwrap();
    let socket = h.control_socket.unwrap();

    let served = server
        .add(
            "bad",
            Source::Generated {
                len: 32 * 1024,
                seed: 5,
            },
            Access::Bearer,
        )
        .unwrap();
    let up = served.upgrade(
        "2.0.0",
        server.issue_token(Duration::from_secs(3600)),
        "task-bad",
    );
    for c in &kids {
        let ev = Event::Upgrade {
            kind: UpgradeKind::Firmware,
            v2: false,
            upgrade: up.clone(),
        };
        tb.send(Some(c.device_id()), &ev).await.unwrap();
    }
    // Two fail, the four others are held.
    let mut by_child = BTreeMap::new();
    reports_until(&mut tb, &mut by_child, |m| {
        m.values().filter(|v| terminal(v) >= 1).count() == 2
            && m.values().filter(|v| held(v)).count() == CHILDREN - 2
    })
    .await;
    let reached = kids
        .iter()
        .filter(|c| !c.delivery_starts().is_empty())
        .count();
    assert_eq!(reached, 2, "the bad image reached two children only");
    let mut held_ids = Vec::new();
    for c in &kids {
        let v = &by_child[c.device_id()];
        if terminal(v) > 0 {
            assert_eq!(terminal(v), 1, "{}: {v:#?}", c.device_id());
            assert_eq!(v.last().unwrap().result_code.get(), 10);
            continue;
        }
        assert!(
            c.delivery_starts().is_empty(),
            "{}: not started",
            c.device_id()
        );
        let why = v
            .iter()
            .filter_map(|r| r.description.clone())
            .find(|d| d.starts_with("held: "))
            .unwrap();
        assert!(
            why.starts_with(
                "held: 2 of the first 2 children of task task-bad that ended failed with \
                 result 10"
            ),
            "{why}"
        );
        assert!(why.contains("otabridge jobs release task-bad"), "{why}");
        held_ids.push(c.device_id().to_owned());
    }
    let (_, list) = ask(&socket, Method::GET, "/jobs").await;
    let states: Vec<&str> = list["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["state"].as_str().unwrap())
        .collect();
    assert_eq!(states.iter().filter(|s| **s == "held").count(), 4, "{list}");
    assert_eq!(
        states.iter().filter(|s| **s == "failed").count(),
        2,
        "{list}"
    );

    // Held across a restart (stopped once every report was acknowledged).
    outbox_drained(&tb).await;
    tb.stop_gateway().await.unwrap();
    let h = tb.start_gateway_with(cfg, all).await.unwrap();
    tb.wait_connected(Duration::from_secs(20)).await.unwrap();
    let socket = h.control_socket.unwrap();
    for id in &held_ids {
        let (_, v) = ask(&socket, Method::GET, &format!("/children/{id}")).await;
        assert_eq!(v["state"], "held", "{v}");
        assert!(v["held"].as_str().unwrap().contains("task task-bad"), "{v}");
    }
    // Resume is not release; unknown tasks are unknown.
    let (s, v) = ask(
        &socket,
        Method::POST,
        &format!("/children/{}/resume", held_ids[0]),
    )
    .await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert!(
        v["error"].as_str().unwrap().contains("release its task"),
        "{v}"
    );
    let (s, _) = ask(&socket, Method::POST, "/tasks/nope/release").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = ask(&socket, Method::GET, "/tasks/task-bad/release").await;
    assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED);

    // Released: they go on (and fail the same way: the operator's call).
    let (s, v) = ask(&socket, Method::POST, "/tasks/task-bad/release").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["jobs"].as_array().unwrap().len(), 4, "{v}");
    reports_until(&mut tb, &mut by_child, |m| {
        m.values().filter(|v| terminal(v) >= 1).count() == CHILDREN
    })
    .await;
    for c in &kids {
        let v = &by_child[c.device_id()];
        assert_eq!(terminal(v), 1, "{}: {v:#?}", c.device_id());
        assert_eq!(v.last().unwrap().result_code.get(), 10);
        assert_eq!(c.delivery_starts(), vec![0], "{}", c.device_id());
    }
    let (s, v) = ask(&socket, Method::POST, "/tasks/task-bad/release").await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert!(
        v["error"].as_str().unwrap().contains("released before"),
        "{v}"
    );
    tb.stop_gateway().await.unwrap();
}
