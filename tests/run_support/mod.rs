//! The real `otabridge run` as a child process against a [`Testbed`]'s
//! simulated IoTDA, for end-to-end tests of the shipped binary: starting
//! it, asking `otabridge jobs` and `otabridge status`, sending upgrade
//! events, and collecting the reports it made.
#![allow(dead_code)] // each test file uses the parts it needs

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child as Proc, Command, Stdio};
use std::time::{Duration, Instant};

use otabridge::sim::coap_child::{Registering, SimOptions};
use otabridge::sim::package_server::{Access, PackageServer, Served, Source};
use otabridge::sim::testbed::{config_text, Testbed};
use otabridge_codecs::iotda::event::{ProgressReport, Status};
use otabridge_codecs::iotda::{Event, Upgrade, UpgradeKind};
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

/// `otabridge status [--json] --config DIR/gw.toml`'s standard output
/// (the assertion shows the run when it fails).
fn status_out(dir: &Path, json: bool) -> Vec<u8> {
    let mut c = Command::new(env!("CARGO_BIN_EXE_otabridge"));
    c.args(["status", "--config"]).arg(dir.join("gw.toml"));
    if json {
        c.arg("--json");
    }
    let out = c.output().unwrap();
    assert!(out.status.success(), "{out:?}");
    out.stdout
}

/// `otabridge status` on the config [`run`] wrote in `dir`: its text.
pub(crate) fn status_text(dir: &Path) -> String {
    String::from_utf8_lossy(&status_out(dir, false)).into_owned()
}

/// `otabridge status --json` on the config [`run`] wrote in `dir`.
pub(crate) fn status_json(dir: &Path) -> Value {
    serde_json::from_slice(&status_out(dir, true)).unwrap()
}

/// The entry of child `id` in `otabridge status --json` (the assertion
/// shows them all when it is missing).
pub(crate) fn status_of(dir: &Path, id: &str) -> Value {
    let all = status_json(dir);
    all.as_array()
        .and_then(|a| a.iter().find(|c| c["device_id"] == id))
        .cloned()
        .unwrap_or_else(|| panic!("no {id} in {all}"))
}

/// A UDP port free right now on 127.0.0.1 (a registering client must know
/// the gateway's `coap.listen` port before the gateway prints it).
pub(crate) fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An HTTPS package server for 127.0.0.1, its CA written to
/// `dir/pkg-ca.pem` (for `[download] ca_file`).
pub(crate) async fn package_server(dir: &Path) -> (PackageServer, PathBuf) {
    let server = PackageServer::start(&["127.0.0.1"]).await.unwrap();
    let ca = dir.join("pkg-ca.pem");
    std::fs::write(&ca, server.ca_pem()).unwrap();
    (server, ca)
}

/// A signed MCUboot image of version 2.0.0 (`len` bytes, `seed`), written
/// to `dir/fw.bin` and served as package `fw` behind a bearer token.
pub(crate) fn mcuboot_package(
    server: &PackageServer,
    dir: &Path,
    len: usize,
    seed: u64,
) -> (Vec<u8>, Served) {
    use otabridge::sim::smp_child::{mcuboot_image, parse_version};
    let image = mcuboot_image(parse_version("2.0.0").unwrap(), len, seed);
    let file = dir.join("fw.bin");
    std::fs::write(&file, &image).unwrap();
    let served = server
        .add("fw", Source::File(file), Access::Bearer)
        .unwrap();
    (image, served)
}

/// A generated package `fw` of `len` bytes (`seed`) behind a bearer token.
pub(crate) fn generated(server: &PackageServer, len: u64, seed: u64) -> Served {
    server
        .add("fw", Source::Generated { len, seed }, Access::Bearer)
        .unwrap()
}

/// An IoTDA firmware upgrade event to 2.0.0 for the package at `url`
/// (`size` bytes, SHA-256 `sha`), with a fresh token of `server`, task
/// `task` for `sub_devices` children, and a deadline `expires` seconds away.
pub(crate) fn upgrade_event(
    server: &PackageServer,
    (url, size, sha): (&str, u64, &str),
    task: &str,
    sub_devices: u32,
    expires: u64,
) -> Event {
    Event::Upgrade {
        kind: UpgradeKind::Firmware,
        v2: false,
        upgrade: Upgrade {
            version: "2.0.0".into(),
            url: url.to_owned(),
            file_size: size,
            file_name: "fw.bin".into(),
            access_token: Some(server.issue_token(Duration::from_secs(3600))),
            expires: Some(expires),
            sign: Some(sha.to_owned()),
            custom_info: None,
            task_id: Some(task.into()),
            sub_device_count: Some(sub_devices),
            task_ext_info: None,
        },
    }
}

/// [`upgrade_event`] for a package of [`generated`], one child, a day.
pub(crate) fn upgrade_to(server: &PackageServer, pkg: &Served, task: &str) -> Event {
    upgrade_event(server, (&pkg.url, pkg.size, &pkg.sha256), task, 1, 86_400)
}

/// Moves what the platform received into `seen` with `collect` every
/// 100 ms until `done` holds (bounded: 120 s; the assertion shows `seen`
/// and the log).
pub(crate) async fn wait_for<S: std::fmt::Debug>(
    tb: &mut Testbed,
    seen: &mut S,
    log: &str,
    collect: impl Fn(&mut Testbed, &mut S),
    done: impl Fn(&S) -> bool,
) {
    let until = Instant::now() + Duration::from_secs(120);
    while !done(seen) && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(100)).await;
        collect(tb, seen);
    }
    assert!(done(seen), "{seen:#?}\n{}", log_text(Path::new(log)));
}

/// A simulated LwM2M child running 1.0.0 (any image makes it 2.0.0, a
/// reboot takes 200 ms) that registers as `endpoint` with the gateway on
/// 127.0.0.1:`port`.
pub(crate) fn registering(port: u16, endpoint: &str) -> SimOptions {
    let mut opts = SimOptions::new("1.0.0", "2.0.0");
    opts.reboot_time = Duration::from_millis(200);
    opts.register = Some(Registering::new(
        format!("127.0.0.1:{port}").parse().unwrap(),
        endpoint,
    ));
    opts
}

/// What the platform heard about one child.
#[derive(Debug, Default)]
pub(crate) struct Seen {
    /// Its progress reports.
    pub(crate) progress: Vec<ProgressReport>,
    /// Its ONLINE/OFFLINE statuses.
    pub(crate) statuses: Vec<Status>,
    /// The versions it was reported with.
    pub(crate) versions: Vec<String>,
}

impl Seen {
    /// Its last terminal report, if any.
    pub(crate) fn terminal(&self) -> Option<&ProgressReport> {
        self.progress.iter().rfind(|p| p.is_terminal())
    }
}

/// Moves what the platform received about child `id` into `seen`.
pub(crate) fn collect_child(tb: &mut Testbed, id: &str, seen: &mut Seen) {
    while let Some(r) = tb.platform.try_recv() {
        for inc in r.events.unwrap_or_default() {
            let mine = inc.object_device_id.as_deref() == Some(id);
            match inc.event {
                Event::ProgressReport(p) if mine => seen.progress.push(p),
                Event::VersionReport(v) if mine => seen.versions.extend(v.fw_version),
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

/// [`wait_for`] with [`collect_child`] for child `id`.
pub(crate) async fn wait_child(
    tb: &mut Testbed,
    id: &str,
    seen: &mut Seen,
    log: &str,
    done: impl Fn(&Seen) -> bool,
) {
    wait_for(tb, seen, log, |tb, s| collect_child(tb, id, s), done).await
}

/// Waits (bounded) for child `id`'s terminal report and gives it.
pub(crate) async fn terminal_of(
    tb: &mut Testbed,
    id: &str,
    seen: &mut Seen,
    log: &str,
) -> ProgressReport {
    wait_child(tb, id, seen, log, |s| s.terminal().is_some()).await;
    seen.terminal().cloned().expect("waited for it")
}
