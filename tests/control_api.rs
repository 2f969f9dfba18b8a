//! The local control API (issue 15 item 4) over its real Unix socket: a
//! gateway in this process with the simulated IoTDA, the HTTPS package
//! server and in-process children that hold a transfer where the test
//! wants it. Pause keeps the offset and resume continues from it; cancel
//! ends a job with one terminal report and no activation; retry starts a
//! failed job again; bad requests get a 4xx that says why and change
//! nothing; `curl --unix-socket` works.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::{Method, StatusCode};
use otabridge::child::memory::MemoryChild;
use otabridge::child::Child;
use otabridge::control::client;
use otabridge::sim::package_server::{Access, Faults, PackageServer, Source};
use otabridge::sim::testbed::Testbed;
use otabridge_codecs::iotda::event::ProgressReport;
use otabridge_codecs::iotda::{Event, Upgrade, UpgradeKind};
use serde_json::Value;

const SIZE: u64 = 256 * 1024;

struct Bench {
    tb: Testbed,
    server: PackageServer,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

async fn bench(children: Vec<Arc<dyn Child>>) -> Bench {
    let dir = tempfile::tempdir().unwrap();
    let mut tb = Testbed::new(dir.path()).await.unwrap();
    let server = PackageServer::start(&["127.0.0.1", "localhost"])
        .await
        .unwrap();
    let ca = dir.path().join("pkg-ca.pem");
    std::fs::write(&ca, server.ca_pem()).unwrap();
    let cfg = tb
        .config(&format!(
            "[download]\nca_file = {:?}\nmax_package_bytes = 1048576\n\n[ota]\nmax_retries = 1\n\
             retry_min_ms = 20\nretry_max_ms = 100\nversion_read_timeout_secs = 5\n",
            ca.display().to_string()
        ))
        .unwrap();
    let h = tb.start_gateway_with(cfg, children).await.unwrap();
    tb.wait_connected(Duration::from_secs(20)).await.unwrap();
    let socket = h
        .control_socket
        .clone()
        .expect("the control API is on by default");
    assert_eq!(socket, tb.state_dir.join("control.sock"));
    Bench {
        tb,
        server,
        socket,
        _dir: dir,
    }
}

fn upgrade(server: &PackageServer, id: &str, seed: u64) -> Upgrade {
    let served = server
        .add(id, Source::Generated { len: SIZE, seed }, Access::Bearer)
        .unwrap();
    served.upgrade(
        "2.0.0",
        server.issue_token(Duration::from_secs(3600)),
        "task-ops",
    )
}

fn firmware(up: &Upgrade) -> Event {
    Event::Upgrade {
        kind: UpgradeKind::Firmware,
        v2: false,
        upgrade: up.clone(),
    }
}

async fn ask(socket: &Path, method: Method, path: &str) -> (StatusCode, Value) {
    client::request(socket, method, path).await.unwrap()
}

/// Asks `GET path` until `done` holds for the answer (bounded: 30 s).
async fn until(socket: &Path, path: &str, done: impl Fn(&Value) -> bool) -> Value {
    for _ in 0..600 {
        let (s, v) = ask(socket, Method::GET, path).await;
        if s.is_success() && done(&v) {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "{path} never got there: {:?}",
        ask(socket, Method::GET, path).await
    );
}

/// Progress reports per child, collected until `quiet` passes without one.
async fn reports(tb: &mut Testbed, quiet: Duration) -> BTreeMap<String, Vec<ProgressReport>> {
    let mut by_child: BTreeMap<String, Vec<ProgressReport>> = BTreeMap::new();
    for r in tb.drain(quiet).await {
        for inc in r.events.unwrap_or_default() {
            if let (Some(id), Event::ProgressReport(p)) = (inc.object_device_id, inc.event) {
                by_child.entry(id).or_default().push(p);
            }
        }
    }
    by_child
}

/// Waits for a terminal report of `id` (bounded); all reports of `id`.
async fn until_terminal(tb: &mut Testbed, id: &str) -> Vec<ProgressReport> {
    let mut seen = Vec::new();
    while !seen
        .last()
        .is_some_and(|r: &ProgressReport| r.is_terminal())
    {
        let Some(r) = tb.platform.recv(Duration::from_secs(30)).await else {
            panic!("no terminal report for {id}: {seen:#?}");
        };
        for inc in r.events.unwrap_or_default() {
            if let (Some(c), Event::ProgressReport(p)) = (inc.object_device_id, inc.event) {
                if c == id {
                    seen.push(p);
                }
            }
        }
    }
    seen
}

#[tokio::test]
async fn pause_keeps_the_offset_and_resume_continues_from_it() {
    let child = Arc::new(MemoryChild::new("p_pause", "1.0.0"));
    child.hold_at(128 * 1024);
    let mut b = bench(vec![child.clone() as Arc<dyn Child>]).await;
    b.tb.send(Some("p_pause"), &firmware(&upgrade(&b.server, "fw-p", 1)))
        .await
        .unwrap();
    // The child holds the transfer at 128 KiB: the job checkpointed it.
    let v = until(&b.socket, "/children/p_pause", |v| {
        v["offset"] == 128 * 1024
    })
    .await;
    let id = v["id"].as_i64().unwrap();
    assert_eq!(
        (v["phase"].as_str(), v["state"].as_str()),
        (Some("delivering"), Some("running"))
    );

    let (s, v) = ask(&b.socket, Method::POST, &format!("/jobs/{id}/pause")).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        (v["state"].as_str(), v["offset"].as_u64()),
        (Some("paused"), Some(128 * 1024))
    );
    // The child would go on now; the paused job does not ask it to.
    child.release();
    let (s, v) = ask(&b.socket, Method::POST, &format!("/jobs/{id}/pause")).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("already paused"),
        "{v}"
    );
    let v = until(&b.socket, &format!("/jobs/{id}"), |v| {
        v["state"] == "paused"
    })
    .await;
    assert_eq!(v["phase"], "delivering");

    let (s, v) = ask(&b.socket, Method::POST, "/children/p_pause/resume").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let seen = until_terminal(&mut b.tb, "p_pause").await;
    let last = seen.last().unwrap();
    assert_eq!((last.result_code.get(), last.progress), (0, Some(100)));
    assert_eq!(seen.iter().filter(|r| r.is_terminal()).count(), 1);
    // The second delivery started where the first was paused.
    assert_eq!(child.delivery_starts(), vec![0, 128 * 1024]);
    assert_eq!(child.activations(), 1);
    let v = until(&b.socket, &format!("/jobs/{id}"), |v| {
        v["state"] == "succeeded"
    })
    .await;
    assert_eq!(v["progress"], 100);
    b.tb.stop_gateway().await.unwrap();
}

#[tokio::test]
async fn cancel_ends_the_job_once_without_activating() {
    let child = Arc::new(MemoryChild::new("p_cancel", "1.0.0"));
    child.hold_at(64 * 1024);
    let mut b = bench(vec![child.clone() as Arc<dyn Child>]).await;
    b.tb.send(Some("p_cancel"), &firmware(&upgrade(&b.server, "fw-c", 2)))
        .await
        .unwrap();
    let v = until(&b.socket, "/children/p_cancel", |v| {
        v["offset"] == 64 * 1024
    })
    .await;
    let id = v["id"].as_i64().unwrap();
    let (s, v) = ask(&b.socket, Method::POST, &format!("/jobs/{id}/cancel")).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let seen = until_terminal(&mut b.tb, "p_cancel").await;
    let last = seen.last().unwrap();
    assert_eq!(last.result_code.get(), 255);
    assert_eq!(last.version, "1.0.0");
    assert!(
        last.description
            .as_deref()
            .unwrap()
            .contains("cancelled by the gateway's operator"),
        "{last:?}"
    );
    child.release();
    // Nothing more comes for it: exactly one terminal report.
    let more = reports(&mut b.tb, Duration::from_millis(500)).await;
    assert!(
        more.get("p_cancel").is_none_or(|v| v.is_empty()),
        "{more:#?}"
    );
    assert_eq!(
        (child.activations(), child.version().as_str()),
        (0, "1.0.0")
    );
    let v = until(&b.socket, &format!("/jobs/{id}"), |v| {
        v["state"] == "cancelled"
    })
    .await;
    assert_eq!(v["result_code"], 255);
    // An ended job cannot be cancelled, paused or resumed again.
    for action in ["cancel", "pause", "resume"] {
        let (s, e) = ask(&b.socket, Method::POST, &format!("/jobs/{id}/{action}")).await;
        assert_eq!(s, StatusCode::CONFLICT, "{action}: {e}");
        assert!(
            e["error"].as_str().unwrap().contains("already failed"),
            "{e}"
        );
    }
    b.tb.stop_gateway().await.unwrap();
}

#[tokio::test]
async fn a_failed_job_is_retried_and_bad_requests_change_nothing() {
    let child = Arc::new(MemoryChild::new("p_retry", "1.0.0"));
    let mut b = bench(vec![child.clone() as Arc<dyn Child>]).await;
    // A damaged download: result 7.
    b.server.set_faults(Faults {
        corrupt_at: Some(1000),
        ..Faults::default()
    });
    b.tb.send(Some("p_retry"), &firmware(&upgrade(&b.server, "fw-r", 3)))
        .await
        .unwrap();
    let seen = until_terminal(&mut b.tb, "p_retry").await;
    assert_eq!(seen.last().unwrap().result_code.get(), 7);
    let (_, failed) = ask(&b.socket, Method::GET, "/children/p_retry").await;
    let id = failed["id"].as_i64().unwrap();
    assert_eq!(failed["state"], "failed");

    // Bad requests: the status says what, the error says why.
    let job = format!("/jobs/{id}");
    let cases: Vec<(Method, String, StatusCode, &str)> = vec![
        (
            Method::GET,
            "/jobs/999".into(),
            StatusCode::NOT_FOUND,
            "no job 999",
        ),
        (
            Method::POST,
            "/jobs/999/cancel".into(),
            StatusCode::NOT_FOUND,
            "no job 999",
        ),
        (
            Method::GET,
            "/children/nobody".into(),
            StatusCode::NOT_FOUND,
            "no child nobody",
        ),
        (
            Method::POST,
            "/children/nobody/pause".into(),
            StatusCode::NOT_FOUND,
            "no child nobody",
        ),
        (
            Method::POST,
            "/jobs/x1/cancel".into(),
            StatusCode::BAD_REQUEST,
            "not a job id",
        ),
        (
            Method::POST,
            format!("{job}/reboot"),
            StatusCode::NOT_FOUND,
            "no action 'reboot'",
        ),
        (
            Method::GET,
            format!("{job}/cancel"),
            StatusCode::METHOD_NOT_ALLOWED,
            "use POST",
        ),
        (
            Method::DELETE,
            job.clone(),
            StatusCode::METHOD_NOT_ALLOWED,
            "use GET",
        ),
        (
            Method::GET,
            "/tasks".into(),
            StatusCode::NOT_FOUND,
            "no such resource",
        ),
        (
            Method::POST,
            format!("{job}/pause"),
            StatusCode::CONFLICT,
            "already failed",
        ),
        (
            Method::POST,
            format!("{job}/resume"),
            StatusCode::CONFLICT,
            "already failed",
        ),
    ];
    for (method, path, status, why) in cases {
        let (s, v) = ask(&b.socket, method.clone(), &path).await;
        assert_eq!(s, status, "{method} {path}: {v}");
        assert!(
            v["error"].as_str().unwrap().contains(why),
            "{method} {path}: {v}"
        );
    }
    let (_, after) = ask(&b.socket, Method::GET, &job).await;
    assert_eq!(after, failed, "refused requests changed nothing");

    // The package server is well again: the retry is a new job that succeeds.
    b.server.set_faults(Faults::default());
    let (s, v) = ask(&b.socket, Method::POST, &format!("{job}/retry")).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let new = v["id"].as_i64().unwrap();
    assert_eq!((v["retry_of"].as_i64(), new > id), (Some(id), true));
    let seen = until_terminal(&mut b.tb, "p_retry").await;
    let last = seen.last().unwrap();
    assert_eq!((last.result_code.get(), last.progress), (0, Some(100)));
    assert_eq!(seen.iter().filter(|r| r.is_terminal()).count(), 1);
    assert_eq!(child.version(), "2.0.0");
    // The old job has a newer one now; a succeeded job is no retry.
    let (s, v) = ask(&b.socket, Method::POST, &format!("{job}/retry")).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert!(v["error"].as_str().unwrap().contains("newer job"), "{v}");
    let (s, v) = ask(&b.socket, Method::POST, &format!("/jobs/{new}/retry")).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    let (_, list) = ask(&b.socket, Method::GET, "/jobs").await;
    let ids: Vec<i64> = list["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, vec![new], "the latest job of each child: {list}");
    b.tb.stop_gateway().await.unwrap();
    assert!(!b.socket.exists(), "a clean stop removes the socket");
}

/// `curl --unix-socket` talks to it as well (when curl is installed).
#[tokio::test]
async fn curl_works_on_the_socket() {
    if std::process::Command::new("curl")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("no curl on this machine; skipped");
        return;
    }
    let child = Arc::new(MemoryChild::new("p_curl", "1.0.0"));
    child.hold_at(64 * 1024);
    let mut b = bench(vec![child.clone() as Arc<dyn Child>]).await;
    b.tb.send(Some("p_curl"), &firmware(&upgrade(&b.server, "fw-curl", 4)))
        .await
        .unwrap();
    until(&b.socket, "/children/p_curl", |v| v["offset"] == 64 * 1024).await;
    let curl = |args: &[&str]| {
        let socket = b.socket.clone();
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        async move {
            tokio::task::spawn_blocking(move || {
                let out = std::process::Command::new("curl")
                    .args(["-sS", "--unix-socket"])
                    .arg(&socket)
                    .args(["-w", "\n%{http_code}"])
                    .args(&args)
                    .output()
                    .unwrap();
                assert!(
                    out.status.success(),
                    "{}",
                    String::from_utf8_lossy(&out.stderr)
                );
                let text = String::from_utf8(out.stdout).unwrap();
                let (body, code) = text.rsplit_once('\n').unwrap();
                (
                    code.to_owned(),
                    serde_json::from_str::<Value>(body).unwrap(),
                )
            })
            .await
            .unwrap()
        }
    };
    let (code, v) = curl(&["http://localhost/jobs"]).await;
    assert_eq!(code, "200");
    assert_eq!(v["jobs"][0]["device_id"], "p_curl");
    let (code, v) = curl(&["-X", "POST", "http://localhost/children/p_curl/pause"]).await;
    assert_eq!(
        (code.as_str(), v["state"].as_str()),
        ("200", Some("paused")),
        "{v}"
    );
    let (code, v) = curl(&["-X", "POST", "http://localhost/children/p_curl/retry"]).await;
    assert_eq!(code, "409", "{v}");
    let (code, _) = curl(&["-X", "POST", "http://localhost/children/p_curl/cancel"]).await;
    assert_eq!(code, "200");
    child.release();
    let seen = until_terminal(&mut b.tb, "p_curl").await;
    assert_eq!(seen.last().unwrap().result_code.get(), 255);
    b.tb.stop_gateway().await.unwrap();
}
