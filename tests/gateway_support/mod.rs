//! Shared by the gateway's own upgrade tests: the simulated IoTDA (testbed),
//! the package server, a simulated box (boot id, reboot request, version
//! files) and, for the real installers, `otabridge run` as a process.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use otabridge::sim::package_server::{Access, PackageServer, Source};
use otabridge::sim::testbed::{config_text, Testbed};
use otabridge_codecs::iotda::event::{ProgressReport, VersionQuery, VersionReport};
use otabridge_codecs::iotda::{Event, Upgrade, UpgradeKind};

/// Whether a missing third-party tool fails the test (`.ci/run` sets it).
pub(crate) fn interop_required() -> bool {
    std::env::var("OTABRIDGE_REQUIRE_INTEROP").as_deref() == Ok("1")
}

/// `Some(missing tools)` when one of `tools` is not on `PATH`, or when the
/// test needs root and does not have it. Prints the skip, or panics under
/// `OTABRIDGE_REQUIRE_INTEROP=1`.
pub(crate) fn skip_unless(test: &str, tools: &[&str], needs_root: bool) -> bool {
    let mut missing: Vec<String> = tools
        .iter()
        .filter(|t| which(t).is_none())
        .map(|t| (*t).to_owned())
        .collect();
    if needs_root && !is_root() {
        missing.push("root".into());
    }
    if missing.is_empty() {
        return false;
    }
    let msg = format!("{test}: skipped, needs {}", missing.join(", "));
    if interop_required() {
        panic!("{msg} (OTABRIDGE_REQUIRE_INTEROP=1)");
    }
    eprintln!("{msg}");
    true
}

/// Whether this process runs as root (`/proc/self` belongs to its uid).
pub(crate) fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// The program's path on `PATH`.
pub(crate) fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(program))
            .find(|p| p.is_file())
    })
}

/// Runs a helper command to the end; panics with its output when it fails.
pub(crate) fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: cannot run: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A simulated box: the files a real one has in `/proc` and `/etc`, and a
/// reboot command that only records that it was asked.
#[derive(Debug)]
pub(crate) struct SimBox {
    /// Where everything lives.
    pub(crate) dir: PathBuf,
    /// `[gateway] boot_id_file`.
    pub(crate) boot_id: PathBuf,
    /// Touched by the reboot command.
    pub(crate) reboot_requested: PathBuf,
    boots: u32,
}

impl SimBox {
    /// A box in `dir`, booted once.
    pub(crate) fn new(dir: &Path) -> SimBox {
        std::fs::create_dir_all(dir).unwrap();
        let b = SimBox {
            dir: dir.to_owned(),
            boot_id: dir.join("boot_id"),
            reboot_requested: dir.join("reboot-requested"),
            boots: 1,
        };
        std::fs::write(&b.boot_id, "boot-1\n").unwrap();
        b
    }

    /// The `[gateway]` keys of this box (reboot and boot id).
    pub(crate) fn gateway_keys(&self) -> String {
        format!(
            "reboot_command = [\"/bin/sh\", \"-c\", \"touch '{}'\"]\nboot_id_file = {:?}\n",
            self.reboot_requested.display(),
            self.boot_id.display().to_string()
        )
    }

    /// Whether the reboot command ran (and forgets it).
    pub(crate) fn take_reboot_request(&self) -> bool {
        std::fs::remove_file(&self.reboot_requested).is_ok()
    }

    /// Waits (bounded, polling) until the reboot command ran.
    pub(crate) async fn wait_reboot_request(&self, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        while !self.take_reboot_request() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the gateway never asked for a reboot within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A new boot: a new boot id (done while otabridge is stopped).
    pub(crate) fn boot(&mut self) {
        self.boots += 1;
        std::fs::write(&self.boot_id, format!("boot-{}\n", self.boots)).unwrap();
    }
}

/// The simulated platform and package server.
pub(crate) struct Platform {
    /// The testbed (broker, edge, application side).
    pub(crate) tb: Testbed,
    /// The HTTPS package server.
    pub(crate) server: PackageServer,
    /// Its CA, for `[download] ca_file`.
    pub(crate) package_ca: PathBuf,
    packages: u32,
}

impl Platform {
    /// Starts the platform; the gateway's state goes under `dir`.
    pub(crate) async fn start(dir: &Path) -> Platform {
        let tb = Testbed::new(dir).await.unwrap();
        let server = PackageServer::start(&["127.0.0.1", "localhost"])
            .await
            .unwrap();
        let package_ca = dir.join("package-ca.pem");
        std::fs::write(&package_ca, server.ca_pem()).unwrap();
        Platform {
            tb,
            server,
            package_ca,
            packages: 0,
        }
    }

    /// The configuration text of a gateway on this platform, `extra` added.
    pub(crate) fn config_text(&self, extra: &str) -> String {
        config_text(
            self.tb.edge.addr().port(),
            &self.tb.ca_file,
            &self.tb.state_dir,
            &format!(
                "[download]\nca_file = {:?}\n\n{extra}",
                self.package_ca.display().to_string()
            ),
        )
    }

    /// Serves `file` and returns the paras of an upgrade event for it.
    pub(crate) fn serve(&mut self, file: &Path, version: &str) -> Upgrade {
        self.packages += 1;
        let served = self
            .server
            .add(
                &format!("gw-pkg-{}", self.packages),
                Source::File(file.to_owned()),
                Access::Bearer,
            )
            .unwrap();
        served.upgrade(
            version,
            self.server.issue_token(Duration::from_secs(86_400)),
            "gw-task",
        )
    }

    /// `file` behind a pre-signed URL (a `_v2` event's package: no token).
    pub(crate) fn serve_presigned(&mut self, file: &Path, version: &str) -> Upgrade {
        self.packages += 1;
        let served = self
            .server
            .add(
                &format!("gw-pkg-{}", self.packages),
                Source::File(file.to_owned()),
                Access::Open,
            )
            .unwrap();
        Upgrade {
            access_token: None,
            ..served.upgrade(version, String::new(), "gw-task")
        }
    }

    /// Sends an upgrade of the gateway itself.
    pub(crate) async fn upgrade_gateway(&self, kind: UpgradeKind, up: &Upgrade) {
        self.send_gateway_upgrade(kind, false, up).await
    }

    /// Sends a `firmware_upgrade_v2` / `software_upgrade_v2` of the gateway.
    pub(crate) async fn upgrade_gateway_v2(&self, kind: UpgradeKind, up: &Upgrade) {
        self.send_gateway_upgrade(kind, true, up).await
    }

    async fn send_gateway_upgrade(&self, kind: UpgradeKind, v2: bool, up: &Upgrade) {
        let ev = Event::Upgrade {
            kind,
            v2,
            upgrade: up.clone(),
        };
        self.tb
            .send(Some(otabridge::sim::testbed::GATEWAY_ID), &ev)
            .await
            .unwrap();
    }

    /// Queries the gateway's versions until it answers (it is connected
    /// and subscribed then): bounded by `within`.
    pub(crate) async fn gateway_versions(&mut self, within: Duration) -> VersionReport {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the gateway did not answer a version_query within {within:?}"
            );
            self.tb
                .send(None, &Event::VersionQuery(VersionQuery::default()))
                .await
                .unwrap();
            let got = self
                .tb
                .wait_for(Duration::from_secs(3), |r| {
                    r.events.iter().flatten().find_map(|inc| match &inc.event {
                        Event::VersionReport(v) if is_gateway(inc.object_device_id.as_deref()) => {
                            Some(v.clone())
                        }
                        _ => None,
                    })
                })
                .await;
            if let Some(v) = got {
                return v;
            }
        }
    }

    /// The gateway's own progress reports until a terminal one (bounded).
    pub(crate) async fn gateway_reports(&mut self, within: Duration) -> Vec<ProgressReport> {
        let mut out: Vec<ProgressReport> = Vec::new();
        let deadline = tokio::time::Instant::now() + within;
        while !out.last().is_some_and(ProgressReport::is_terminal) {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let Some(r) = self.tb.platform.recv(left).await else {
                panic!("no terminal report from the gateway within {within:?}; so far {out:#?}");
            };
            for inc in r.events.into_iter().flatten() {
                if let (true, Event::ProgressReport(p)) =
                    (is_gateway(inc.object_device_id.as_deref()), inc.event)
                {
                    out.push(p);
                }
            }
        }
        out
    }

    /// The gateway's reports until one with `progress` at least `pct`.
    pub(crate) async fn gateway_reports_until(
        &mut self,
        pct: u8,
        within: Duration,
    ) -> Vec<ProgressReport> {
        let mut out: Vec<ProgressReport> = Vec::new();
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(last) = out.last() {
                assert!(
                    !last.is_terminal() || last.progress >= Some(pct),
                    "{out:#?}"
                );
                if last.progress.is_some_and(|p| p >= pct) {
                    return out;
                }
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let Some(r) = self.tb.platform.recv(left).await else {
                panic!("no report of {pct}% from the gateway within {within:?}; so far {out:#?}");
            };
            for inc in r.events.into_iter().flatten() {
                if let (true, Event::ProgressReport(p)) =
                    (is_gateway(inc.object_device_id.as_deref()), inc.event)
                {
                    out.push(p);
                }
            }
        }
    }
}

/// Whether a report is about the gateway itself.
pub(crate) fn is_gateway(object_device_id: Option<&str>) -> bool {
    object_device_id.is_none_or(|id| id == otabridge::sim::testbed::GATEWAY_ID)
}

/// `v` without reports equal to an earlier one: the outbox delivers at
/// least once, so reports published just before the daemon stopped come
/// again after it starts (their PUBACK was not seen).
pub(crate) fn distinct(v: &[ProgressReport]) -> Vec<ProgressReport> {
    let mut out: Vec<ProgressReport> = Vec::new();
    for r in v {
        if !out.contains(r) {
            out.push(r.clone());
        }
    }
    out
}

/// (result code, progress) of each report; progress 255 when absent.
pub(crate) fn seq(v: &[ProgressReport]) -> Vec<(u8, u8)> {
    v.iter()
        .map(|r| (r.result_code.get(), r.progress.unwrap_or(255)))
        .collect()
}

/// Asserts the reports are an honest run: result 0 and progress never
/// going backwards until the last.
pub(crate) fn assert_monotonic(v: &[ProgressReport]) {
    let mut last = 0u8;
    for r in &v[..v.len().saturating_sub(1)] {
        assert!(r.result_code.is_success(), "{v:#?}");
        let p = r.progress.expect("intermediate reports carry progress");
        assert!(p >= last, "progress went backwards: {v:#?}");
        last = p;
    }
}

/// `otabridge run` as a process, its log in a file.
pub(crate) struct Daemon {
    child: Child,
    /// Its standard error.
    pub(crate) log: PathBuf,
}

impl Daemon {
    /// Starts `otabridge run --config cfg` with `env` added.
    pub(crate) fn start(cfg: &Path, log: &Path, env: &[(&str, &str)]) -> Daemon {
        let err = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_otabridge"));
        cmd.args(["run", "--config"])
            .arg(cfg)
            .env("RUST_LOG", "info,otabridge::gateway=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err);
        for (k, v) in env {
            cmd.env(k, v);
        }
        Daemon {
            child: cmd.spawn().unwrap(),
            log: log.to_owned(),
        }
    }

    /// Its pid (the same after it restarts itself in place).
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops it with SIGTERM, as a reboot does, and waits (bounded).
    pub(crate) async fn stop(mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        for _ in 0..600 {
            if self.child.try_wait().unwrap().is_some() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = self.child.kill();
        panic!(
            "otabridge did not stop within 30 s of SIGTERM; log: {}",
            self.log_text()
        );
    }

    /// The log so far.
    pub(crate) fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
