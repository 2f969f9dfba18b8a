//! The real `otabridge run` as a child process against a [`Testbed`]'s
//! simulated IoTDA, for end-to-end tests of the shipped binary: starting
//! it, asking `otabridge jobs`, and collecting the reports it made.
#![allow(dead_code)] // each test file uses the parts it needs

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child as Proc, Command, Stdio};
use std::time::{Duration, Instant};

use otabridge::sim::testbed::{config_text, Testbed};
use otabridge_codecs::iotda::event::ProgressReport;
use otabridge_codecs::iotda::Event;
use serde_json::Value;

/// Starts `otabridge run --config CONFIG`, its log appended to `log` (a
/// restarted daemon goes on writing the same file).
pub(crate) fn spawn(config: &Path, log: &Path) -> Proc {
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

/// A log file's text, empty if it cannot be read.
pub(crate) fn log_text(log: &Path) -> String {
    std::fs::read_to_string(log).unwrap_or_default()
}

/// `otabridge jobs ARGS --json --config CONFIG`: exit status and answer
/// (`Null` when it printed no JSON).
pub(crate) fn jobs(config: &Path, args: &[&str]) -> (i32, Value) {
    let out = Command::new(env!("CARGO_BIN_EXE_otabridge"))
        .arg("jobs")
        .args(args)
        .args(["--json", "--config"])
        .arg(config)
        .output()
        .unwrap();
    let v = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out.status.code().unwrap_or(-1), v)
}

/// Asks `otabridge jobs show CHILD` until `done` holds for its answer
/// (bounded by `limit`; the assertion shows the answer and the log).
pub(crate) async fn until_job(
    config: &Path,
    child: &str,
    log: &Path,
    limit: Duration,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let until = Instant::now() + limit;
    loop {
        let (code, v) = jobs(config, &["show", child]);
        if code == 0 && done(&v) {
            return v;
        }
        assert!(Instant::now() < until, "{child}: {v}\n{}", log_text(log));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Progress reports by child id, in the order they arrived.
pub(crate) type Reports = BTreeMap<String, Vec<ProgressReport>>;

/// Moves every report the simulated platform has received into `reports`;
/// returns how many.
pub(crate) fn collect(tb: &mut Testbed, reports: &mut Reports) -> usize {
    let mut n = 0;
    while let Some(r) = tb.platform.try_recv() {
        for inc in r.events.unwrap_or_default() {
            if let (Some(id), Event::ProgressReport(p)) = (inc.object_device_id, inc.event) {
                reports.entry(id).or_default().push(p);
                n += 1;
            }
        }
    }
    n
}

/// `id`'s terminal reports (success or a failure), in order.
pub(crate) fn terminals(reports: &Reports, id: &str) -> Vec<ProgressReport> {
    reports
        .get(id)
        .into_iter()
        .flatten()
        .filter(|r| r.is_terminal())
        .cloned()
        .collect()
}

/// Stops the daemon however the test ends.
pub(crate) struct Daemon(Proc);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Writes `dir/gw.toml` (the testbed's platform plus `extra`), starts
/// `otabridge run` on it with its log in `dir/gw.log`, and returns the
/// daemon and the log's path once it has connected (within 60 s; the
/// assertion shows the log otherwise).
pub(crate) async fn run(tb: &Testbed, dir: &Path, extra: &str) -> (Daemon, String) {
    let config = dir.join("gw.toml");
    std::fs::write(
        &config,
        config_text(tb.edge.addr().port(), &tb.ca_file, &tb.state_dir, extra),
    )
    .unwrap();
    let log = dir.join("gw.log");
    std::fs::File::create(&log).unwrap();
    let daemon = Daemon(spawn(&config, &log));
    let log = log.display().to_string();
    let until = Instant::now() + Duration::from_secs(60);
    while tb.edge.connects() == 0 && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        tb.edge.connects() > 0,
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    (daemon, log)
}
