//! The Prometheus endpoint (`[metrics] listen`), scraped over real TCP while
//! a batch runs: one child held in the middle of its delivery, one offline
//! child that retries and fails. The exposition is checked line by line
//! (and by the Python `prometheus_client` parser when it is installed).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use otabridge::child::memory::MemoryChild;
use otabridge::child::Child;
use otabridge::sim::package_server::{Access, PackageServer, Source};
use otabridge::sim::testbed::Testbed;
use otabridge_codecs::iotda::event::ProgressReport;
use otabridge_codecs::iotda::{Event, UpgradeKind};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SIZE: u64 = 256 * 1024;
const HOLD: u64 = 96 * 1024;

/// Sends `request` raw and returns the whole response.
async fn http(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("the endpoint closes the connection")
        .unwrap();
    String::from_utf8(out).unwrap()
}

/// One scrape: the body, after checking the head.
async fn scrape(addr: SocketAddr) -> String {
    let resp = http(addr, b"GET /metrics HTTP/1.1\r\nHost: gw\r\n\r\n").await;
    let (head, body) = resp.split_once("\r\n\r\n").expect("a head and a body");
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/openmetrics-text; version=1.0.0"),
        "{head}"
    );
    assert!(
        head.to_ascii_lowercase()
            .contains(&format!("content-length: {}", body.len())),
        "{head}"
    );
    body.to_owned()
}

/// Parses the text format strictly: every sample belongs to a family
/// declared by `# TYPE` before it, names and labels are well formed, values
/// are numbers, no series appears twice. Returns `series -> value`, the
/// series written as `name{labels}` exactly as exposed.
fn parse(text: &str) -> BTreeMap<String, f64> {
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut out = BTreeMap::new();
    // OpenMetrics: the exposition ends with `# EOF`, and only there.
    let text = text
        .strip_suffix("# EOF\n")
        .unwrap_or_else(|| panic!("no # EOF at the end: {text}"));
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
            assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
            assert!(
                types.insert(name.into(), kind.into()).is_none(),
                "family declared twice: {line}"
            );
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        assert!(
            !line.is_empty() && !line.starts_with('#'),
            "stray line {line:?}"
        );
        let (series, value) = line.rsplit_once(' ').expect("series value");
        let name = series.split('{').next().unwrap();
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad name in {line}"
        );
        // OpenMetrics names a family without the suffixes of its samples.
        let family = [
            ("_bucket", "histogram"),
            ("_sum", "histogram"),
            ("_count", "histogram"),
            ("_total", "counter"),
        ]
        .iter()
        .find_map(|(s, kind)| {
            name.strip_suffix(s)
                .filter(|f| types.get(*f).map(String::as_str) == Some(*kind))
        })
        .unwrap_or(name);
        let kind = types
            .get(family)
            .unwrap_or_else(|| panic!("no TYPE before {line}"));
        if kind == "counter" {
            assert!(name.ends_with("_total"), "counter without _total: {line}");
        }
        if let Some(labels) = series.strip_prefix(name) {
            if !labels.is_empty() {
                let inner = labels
                    .strip_prefix('{')
                    .and_then(|l| l.strip_suffix('}'))
                    .unwrap_or_else(|| panic!("bad labels in {line}"));
                for pair in inner.split("\",") {
                    let (k, v) = pair.split_once("=\"").expect("label=\"value\"");
                    assert!(k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
                    assert!(!v.trim_end_matches('"').contains('"'), "{line}");
                }
            }
        }
        let v: f64 = if value == "+Inf" {
            f64::INFINITY
        } else {
            value
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {line}"))
        };
        assert!(
            out.insert(series.to_owned(), v).is_none(),
            "series twice: {line}"
        );
    }
    out
}

fn get(m: &BTreeMap<String, f64>, series: &str) -> f64 {
    *m.get(series)
        .unwrap_or_else(|| panic!("{series} missing from {m:#?}"))
}

/// Scrapes until `ready` holds (at most 600 tries, 50 ms apart).
async fn scrape_until(
    addr: SocketAddr,
    what: &str,
    ready: impl Fn(&BTreeMap<String, f64>) -> bool,
) -> (String, BTreeMap<String, f64>) {
    for _ in 0..600 {
        let text = scrape(addr).await;
        let m = parse(&text);
        if ready(&m) {
            return (text, m);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("metrics never showed {what}");
}

/// Checks the exposition with the reference parser, when it is installed.
fn python_parses(text: &str) {
    let script = "import sys\nfrom prometheus_client.openmetrics.parser import text_string_to_metric_families as p\n\
                  fams = list(p(sys.stdin.read()))\nprint(len(fams), sum(len(f.samples) for f in fams))\n";
    let child = std::process::Command::new("python3")
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let out = child.and_then(|mut c| {
        use std::io::Write;
        c.stdin.take().unwrap().write_all(text.as_bytes())?;
        c.wait_with_output()
    });
    let required = std::env::var_os("OTABRIDGE_REQUIRE_INTEROP").is_some();
    match out {
        Ok(o) if o.status.success() => {
            let printed = String::from_utf8_lossy(&o.stdout);
            let families: usize = printed.split_whitespace().next().unwrap().parse().unwrap();
            assert_eq!(families, text.matches("# TYPE ").count(), "{printed}");
        }
        Ok(o) if String::from_utf8_lossy(&o.stderr).contains("No module named") && !required => {
            eprintln!("skipped: python prometheus_client is not installed (pip install prometheus-client)");
        }
        Ok(o) => panic!(
            "prometheus_client rejected the exposition: {}",
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) if !required => eprintln!("skipped: python3 not available: {e}"),
        Err(e) => panic!("python3: {e}"),
    }
}

#[tokio::test]
async fn the_endpoint_is_scraped_during_a_transfer() {
    let dir = tempfile::tempdir().unwrap();
    let mut tb = Testbed::new(dir.path()).await.unwrap();
    let server = PackageServer::start(&["127.0.0.1", "localhost"])
        .await
        .unwrap();
    let ca = dir.path().join("pkg-ca.pem");
    std::fs::write(&ca, server.ca_pem()).unwrap();
    let cfg = tb
        .config(&format!(
            "[download]\nca_file = {:?}\n\n[ota]\nmax_retries = 2\nretry_min_ms = 20\n\
             retry_max_ms = 100\nversion_read_timeout_secs = 1\n\n[metrics]\nlisten = \"127.0.0.1:0\"\n",
            ca.display().to_string()
        ))
        .unwrap();
    let held = Arc::new(MemoryChild::new("held", "1.0.0"));
    held.hold_at(HOLD);
    let gone = Arc::new(MemoryChild::new("gone", "1.0.0"));
    gone.set_online(false);
    let handles = tb
        .start_gateway_with(
            cfg,
            vec![
                held.clone() as Arc<dyn Child>,
                gone.clone() as Arc<dyn Child>,
            ],
        )
        .await
        .unwrap();
    let addr = handles.metrics_addr.expect("metrics.listen is set");

    // Before anything happens: every family is there, at zero.
    let m = parse(&scrape(addr).await);
    assert_eq!(get(&m, "otabridge_download_bytes_total"), 0.0);
    assert_eq!(get(&m, "otabridge_jobs{phase=\"delivering\"}"), 0.0);
    assert_eq!(get(&m, "otabridge_children{transport=\"sim\"}"), 2.0);
    tb.wait_connected(Duration::from_secs(20)).await.unwrap();
    let m = parse(&scrape(addr).await);
    assert_eq!(get(&m, "otabridge_mqtt_connected"), 1.0);

    let served = server
        .add(
            "fw",
            Source::Generated { len: SIZE, seed: 3 },
            Access::Bearer,
        )
        .unwrap();
    let up = served.upgrade(
        "2.0.0",
        server.issue_token(Duration::from_secs(3600)),
        "task-m",
    );
    let ev = Event::Upgrade {
        kind: UpgradeKind::Firmware,
        v2: false,
        upgrade: up,
    };
    tb.send(Some("held"), &ev).await.unwrap();
    tb.send(Some("gone"), &ev).await.unwrap();

    // In the middle of the transfer: the held child has acknowledged exactly
    // HOLD bytes and is delivering; the package is downloaded; the offline
    // child retried and failed.
    let (text, m) = scrape_until(addr, "a held delivery and a failed job", |m| {
        m.get("otabridge_delivered_bytes_total{child=\"held\"}") == Some(&(HOLD as f64))
            && m.keys()
                .any(|k| k.starts_with("otabridge_jobs_completed_total{outcome=\"failed\""))
    })
    .await;
    python_parses(&text);
    assert_eq!(get(&m, "otabridge_jobs{phase=\"delivering\"}"), 1.0);
    assert_eq!(get(&m, "otabridge_jobs{phase=\"activating\"}"), 0.0);
    assert_eq!(get(&m, "otabridge_download_bytes_total"), SIZE as f64);
    assert_eq!(
        get(&m, "otabridge_delivered_bytes_total{child=\"gone\"}"),
        0.0
    );
    // max_retries = 2: two retries, then the failure.
    assert_eq!(get(&m, "otabridge_job_retries_total{child=\"gone\"}"), 2.0);
    assert_eq!(get(&m, "otabridge_job_retries_total{child=\"held\"}"), 0.0);
    assert_eq!(
        get(
            &m,
            "otabridge_jobs_completed_total{outcome=\"succeeded\",result_code=\"0\"}"
        ),
        0.0
    );
    assert_eq!(get(&m, "otabridge_resumes_total{what=\"download\"}"), 0.0);
    assert_eq!(
        get(
            &m,
            "otabridge_chunk_retries_total{child=\"held\",transport=\"sim\"}"
        ),
        0.0
    );
    // The held child's queued and downloading phases are over and timed.
    assert_eq!(
        get(
            &m,
            "otabridge_phase_duration_seconds_count{phase=\"downloading\"}"
        ),
        1.0
    );
    assert_eq!(
        get(
            &m,
            "otabridge_phase_duration_seconds_bucket{le=\"+Inf\",phase=\"downloading\"}"
        ),
        1.0
    );
    assert_eq!(
        get(
            &m,
            "otabridge_phase_duration_seconds_count{phase=\"delivering\"}"
        ),
        0.0
    );

    // Let it finish; the counters add up.
    held.release();
    let mut reports: Vec<ProgressReport> = Vec::new();
    while !reports
        .iter()
        .any(|r| r.result_code.is_success() && r.progress == Some(100))
    {
        let r = tb
            .platform
            .recv(Duration::from_secs(30))
            .await
            .expect("reports stopped");
        for inc in r.events.unwrap_or_default() {
            if let (Some("held"), Event::ProgressReport(p)) =
                (inc.object_device_id.as_deref(), inc.event)
            {
                reports.push(p);
            }
        }
    }
    // The job is counted as completed after its last report is queued
    // (the engine releases the package in between): wait for that too.
    let (text, m) = scrape_until(addr, "the finished batch", |m| {
        m.get("otabridge_outbox_reports") == Some(&0.0)
            && m.get("otabridge_jobs{phase=\"verifying\"}") == Some(&0.0)
            && m.get("otabridge_jobs_completed_total{outcome=\"succeeded\",result_code=\"0\"}")
                == Some(&1.0)
    })
    .await;
    python_parses(&text);
    assert_eq!(
        get(
            &m,
            "otabridge_jobs_completed_total{outcome=\"succeeded\",result_code=\"0\"}"
        ),
        1.0
    );
    let failed: f64 = m
        .iter()
        .filter(|(k, _)| k.starts_with("otabridge_jobs_completed_total{outcome=\"failed\""))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(failed, 1.0);
    assert_eq!(
        get(&m, "otabridge_delivered_bytes_total{child=\"held\"}"),
        SIZE as f64
    );
    assert_eq!(get(&m, "otabridge_download_bytes_total"), SIZE as f64);
    for phase in [
        "queued",
        "downloading",
        "delivering",
        "activating",
        "verifying",
    ] {
        assert_eq!(
            get(&m, &format!("otabridge_jobs{{phase=\"{phase}\"}}")),
            0.0
        );
    }
    assert_eq!(
        get(
            &m,
            "otabridge_phase_duration_seconds_count{phase=\"delivering\"}"
        ),
        1.0
    );
    assert_eq!(held.version(), "2.0.0");
    tb.stop_gateway().await.unwrap();
}

#[tokio::test]
async fn the_endpoint_answers_bad_requests_with_errors() {
    let dir = tempfile::tempdir().unwrap();
    let mut tb = Testbed::new(dir.path()).await.unwrap();
    let cfg = tb.config("[metrics]\nlisten = \"127.0.0.1:0\"\n").unwrap();
    let handles = tb.start_gateway_with(cfg, vec![]).await.unwrap();
    let addr = handles.metrics_addr.unwrap();

    let r = http(addr, b"GET /nope HTTP/1.1\r\n\r\n").await;
    assert!(r.starts_with("HTTP/1.1 404 "), "{r}");
    let r = http(addr, b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n").await;
    assert!(r.starts_with("HTTP/1.1 405 "), "{r}");
    assert!(
        r.to_ascii_lowercase().contains("allow: get, head\r\n"),
        "{r}"
    );
    let r = http(addr, b"\x16\x03\x01 not http at all\r\n\r\n").await;
    assert!(r.starts_with("HTTP/1.1 400 "), "{r}");
    let long = format!("GET /metrics HTTP/1.1\r\nX: {}\r\n", "a".repeat(9000));
    let r = http(addr, long.as_bytes()).await;
    assert!(
        r.starts_with("HTTP/1.1 431 "),
        "an endless head (hyper answers 431): {r}"
    );
    // HEAD: the head of a scrape, no body.
    let r = http(addr, b"HEAD /metrics HTTP/1.0\r\n\r\n").await;
    let (head, body) = r.split_once("\r\n\r\n").unwrap();
    // hyper answers an HTTP/1.0 request in HTTP/1.0.
    assert!(
        head.starts_with("HTTP/1.0 200 OK") || head.starts_with("HTTP/1.1 200 OK"),
        "{head}"
    );
    assert!(body.is_empty());
    // A client that connects and says nothing does not stop others.
    let _silent = tokio::net::TcpStream::connect(addr).await.unwrap();
    let m = parse(&scrape(addr).await);
    assert_eq!(get(&m, "otabridge_outbox_reports"), 0.0);
    tb.stop_gateway().await.unwrap();
}

#[tokio::test]
async fn a_taken_port_is_a_clear_start_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut tb = Testbed::new(dir.path()).await.unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let cfg = tb
        .config(&format!("[metrics]\nlisten = \"{addr}\"\n"))
        .unwrap();
    let err = tb.start_gateway_with(cfg, vec![]).await.unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains(&format!("metrics.listen {addr}: cannot listen")),
        "{msg}"
    );
}
