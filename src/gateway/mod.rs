//! The gateway's own upgrade: `firmware_upgrade` / `software_upgrade` (v1
//! and v2) for the gateway's own device id, handed to the installer the box
//! already uses (docs/protocols/iotda.md §4.1–4.6; docs/operations.md, "The
//! gateway's own upgrade").
//!
//! The flow is the seed's, with the box in the child's place:
//! 1. the running version is read (`[gateway.*]`'s version source); a box
//!    already at the target succeeds at once;
//! 2. the package comes through the same journaled, resumable, verified
//!    download into the package store as a child's;
//! 3. unless `install_while_children_busy`, the install waits until no
//!    child job runs (the download does not wait);
//! 4. the installer runs; its progress is parsed from its output
//!    ([`installer`]) and reported;
//! 5. the new version is made to run: the box reboots (`after = "reboot"`),
//!    otabridge restarts itself (`"restart"`), or nothing (`"none"`);
//! 6. success is reported only once the version read back equals the
//!    target: after the reboot, the restarted daemon finds the journaled job
//!    and reads the version; a box that came back on its old version rolled
//!    back, and that is a failure (result 10), never a success.
//!
//! One gateway job runs at a time; a different event meanwhile is answered
//! with result 1 ("Task Conflict"), a repeated one (same version and sign)
//! is ignored. Every step that a reboot or a power loss may cut is journaled
//! first (`gateway_jobs`, [`db`]); the deadline (24 h after the event, or the
//! token's expiry) is the journaled one, so it holds across reboots. Child
//! jobs interrupted by the reboot resume afterwards like after a power loss
//! (`ota::engine`).
//!
//! Who does what: the installer installs and verifies its own format
//! (signatures, compatibility); this module verifies the download's SHA-256
//! (the package store), times the installer out, classifies its failure
//! from what it printed ([`installer`]) and maps every failure to a result
//! code here and nowhere else.

pub mod db;
pub mod installer;
pub mod job;
pub mod proc;
pub mod version;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use otabridge_codecs::iotda::event::{ProgressReport, VersionReport};
use otabridge_codecs::iotda::{result, Event, ResultCode, Upgrade, UpgradeKind};
use otabridge_codecs::version::Policy;
use tracing::{info, warn};

use self::db::Row;
use self::job::{Check, Failure, Phase, Resume, Throttle};
use crate::child::Package;
use crate::clock::now_unix;
use crate::config::{After, GatewayConfig, InstallConfig};
use crate::journal::{Journal, SharedJournal};
use crate::package::{DownloadState, PackageRequest, PackageStore};
use crate::platform::Platform;

/// Time kept before the deadline to publish the terminal report.
const DEADLINE_MARGIN: Duration = Duration::from_secs(120);
/// The shortest installer run started before the deadline.
const MIN_INSTALL_TIME: Duration = Duration::from_secs(60);
/// How often the install checks whether child jobs still run.
const CHILD_POLL: Duration = Duration::from_secs(2);
/// Attempts to read the version back (the installer's service may still be
/// starting after a reboot), 1 s apart, doubling.
const VERIFY_ATTEMPTS: u32 = 5;
/// The reboot command's own time limit.
const REBOOT_COMMAND_LIMIT: Duration = Duration::from_secs(60);

/// What the daemon lends the gateway's upgrade.
#[derive(Clone)]
pub struct Hooks {
    /// Child upgrade jobs running now.
    pub child_jobs: Arc<dyn Fn() -> usize + Send + Sync>,
    /// Stops the daemon so that it starts again on its (new) binary.
    pub restart: Arc<dyn Fn() + Send + Sync>,
}

impl std::fmt::Debug for Hooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hooks").finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct Inner {
    cfg: GatewayConfig,
    /// `[platform] fw_version`: the firmware version when no
    /// `[gateway.firmware]` says how to read it.
    fw_version: Option<String>,
    platform: Platform,
    /// Its own handle on the journal (the `gateway_jobs` table).
    journal: SharedJournal,
    store: PackageStore,
    mode: Policy,
    hooks: Hooks,
    /// The job running in this process.
    running: Mutex<Option<i64>>,
    /// Its task, so that a stop ends it (it resumes from the journal).
    tasks: Mutex<Vec<tokio::task::AbortHandle>>,
    /// Events are taken one at a time (each reads a version first).
    accepting: tokio::sync::Mutex<()>,
}

/// The gateway's own upgrade. Cheap to clone.
#[derive(Debug, Clone)]
pub struct SelfUpgrade {
    inner: Arc<Inner>,
}

fn unix_to_system(t: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(t.max(0) as u64)
}

/// The boot id (`None` when the file cannot be read).
fn boot_id(file: &Path) -> Option<String> {
    std::fs::read_to_string(file)
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

/// Where a job goes next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Download,
    Wait,
    Install,
    Reboot,
    Restart,
    Verify(Check),
}

impl SelfUpgrade {
    /// The gateway's own upgrade as `cfg` says, reporting through
    /// `platform`, persisting in `journal`, fetching through `store`,
    /// comparing versions under `mode`.
    pub fn new(
        cfg: GatewayConfig,
        fw_version: Option<String>,
        platform: Platform,
        journal: SharedJournal,
        store: PackageStore,
        mode: Policy,
        hooks: Hooks,
    ) -> Self {
        SelfUpgrade {
            inner: Arc::new(Inner {
                cfg,
                fw_version,
                platform,
                journal,
                store,
                mode,
                hooks,
                running: Mutex::default(),
                tasks: Mutex::default(),
                accepting: tokio::sync::Mutex::new(()),
            }),
        }
    }

    fn install_cfg(&self, kind: UpgradeKind) -> Option<&InstallConfig> {
        match kind {
            UpgradeKind::Firmware => self.inner.cfg.firmware.as_ref(),
            UpgradeKind::Software => self.inner.cfg.software.as_ref(),
        }
    }

    async fn report(&self, r: ProgressReport) {
        if let Err(e) = self
            .inner
            .platform
            .report(None, &Event::ProgressReport(r))
            .await
        {
            warn!("cannot queue the gateway's upgrade_progress_report: {e}");
        }
    }

    /// The running version of `kind`: read as configured; without a
    /// `[gateway.*]` table, `[platform] fw_version` and otabridge's own
    /// version.
    async fn running_version(&self, kind: UpgradeKind) -> Result<String, version::VersionError> {
        match (self.install_cfg(kind), kind) {
            (Some(c), _) => version::read(c, self.inner.cfg.version_timeout).await,
            (None, UpgradeKind::Firmware) => self.inner.fw_version.clone().ok_or_else(|| {
                version::VersionError::Missing("no firmware version configured".into())
            }),
            (None, UpgradeKind::Software) => Ok(env!("CARGO_PKG_VERSION").to_owned()),
        }
    }

    /// Answers `version_query` for the gateway itself (in the background:
    /// reading a version may run a command).
    pub fn report_versions(&self) {
        let me = self.clone();
        tokio::spawn(async move {
            let fw = me.running_version(UpgradeKind::Firmware).await;
            let sw = me.running_version(UpgradeKind::Software).await;
            for (kind, r) in [(UpgradeKind::Firmware, &fw), (UpgradeKind::Software, &sw)] {
                if let (Err(e), Some(_)) = (r, me.install_cfg(kind)) {
                    warn!("cannot read the gateway's {} version: {e}", kind.name());
                }
            }
            let ev = Event::VersionReport(VersionReport {
                sw_version: sw.ok(),
                fw_version: fw.ok(),
            });
            if let Err(e) = me.inner.platform.report(None, &ev).await {
                warn!("cannot queue version_report: {e}");
            }
        });
    }

    /// Answers an upgrade event for the gateway itself that cannot be used
    /// (src/ota `Gateway::unusable`) with a failure report carrying `code`,
    /// `description` and the running version of `kind`. No job is created.
    /// In the background: reading the version may run a command.
    pub fn refuse(&self, kind: UpgradeKind, code: ResultCode, description: String) {
        let me = self.clone();
        tokio::spawn(async move {
            let version = me.running_version(kind).await.unwrap_or_default();
            me.report(ProgressReport {
                result_code: code,
                progress: None,
                version,
                description: Some(description),
            })
            .await;
        });
    }

    /// Takes an upgrade event for the gateway itself.
    pub fn submit(&self, kind: UpgradeKind, v2: bool, upgrade: Upgrade) {
        let me = self.clone();
        let task = tokio::spawn(async move { me.accept(kind, v2, upgrade).await });
        self.track(task.abort_handle());
    }

    fn track(&self, task: tokio::task::AbortHandle) {
        let mut tasks = self.inner.tasks.lock().unwrap_or_else(|p| p.into_inner());
        tasks.retain(|t| !t.is_finished());
        tasks.push(task);
    }

    /// Refuses an upgrade of a kind no `[gateway.*]` table installs.
    async fn refuse_unconfigured(&self, kind: UpgradeKind, up: &Upgrade) {
        let name = kind.name();
        warn!(target_version = %up.version, "{name} upgrade of the gateway itself refused: no [gateway.{name}] installer");
        let running = self.running_version(kind).await.unwrap_or_default();
        self.report(ProgressReport {
            result_code: ResultCode::UNKNOWN_TYPE,
            progress: None,
            version: running,
            description: Some(format!(
                "{}: this gateway has no installer for its own {name} \
                 ([gateway.{name}] is not in otabridge's configuration)",
                result::DESC_UNSUPPORTED_TYPE
            )),
        })
        .await;
    }

    /// Whether a job is already active: a repeat of its event is ignored,
    /// another event is answered with "Task Conflict". `true` when the
    /// event is dealt with.
    async fn busy(&self, kind: UpgradeKind, up: &Upgrade) -> bool {
        let active = self.inner.journal.run(db::active).await;
        let a = match active {
            Err(e) => {
                warn!("journal: {e}");
                return true;
            }
            Ok(None) => return false,
            Ok(Some(a)) => a,
        };
        let same_sign = match (&a.upgrade.sign, &up.sign) {
            (Some(x), Some(y)) => x.eq_ignore_ascii_case(y),
            (None, None) => a.upgrade.url == up.url,
            _ => false,
        };
        if a.kind == kind && a.upgrade.version == up.version && same_sign {
            info!(
                job = a.id,
                "repeated upgrade event for the gateway's running job; ignored"
            );
            return true;
        }
        warn!(
            job = a.id,
            "gateway upgrade to {} refused: an upgrade to {} is in progress",
            up.version,
            a.upgrade.version
        );
        let running = self.running_version(kind).await.unwrap_or_default();
        self.report(ProgressReport {
            result_code: ResultCode::BUSY,
            progress: None,
            version: running,
            description: Some(format!(
                "{}: a {} upgrade of the gateway to {} is in progress",
                result::DESC_TASK_CONFLICT,
                a.kind.name(),
                a.upgrade.version
            )),
        })
        .await;
        true
    }

    async fn accept(&self, kind: UpgradeKind, v2: bool, up: Upgrade) {
        let _one = self.inner.accepting.lock().await;
        let received = now_unix();
        let Some(cfg) = self.install_cfg(kind).cloned() else {
            self.refuse_unconfigured(kind, &up).await;
            return;
        };
        if self.busy(kind, &up).await {
            return;
        }
        // The running version, to tell a rollback from a wrong package; a
        // box whose version cannot be read yet (a factory image RAUC did
        // not install) is still upgraded.
        let from = match version::read(&cfg, self.inner.cfg.version_timeout).await {
            Ok(v) => Some(v),
            Err(e) => {
                warn!(
                    "cannot read the gateway's {} version before the upgrade: {e}",
                    kind.name()
                );
                None
            }
        };
        if from
            .as_deref()
            .is_some_and(|v| self.inner.mode.same(&up.version, v))
        {
            info!(target_version = %up.version, "the gateway already runs the target version");
            self.report(ProgressReport {
                result_code: ResultCode::SUCCESS,
                progress: Some(100),
                version: up.version.clone(),
                description: Some("already at the target version".into()),
            })
            .await;
            return;
        }
        let deadline = PackageRequest::from_upgrade(&up, v2, unix_to_system(received))
            .deadline
            .duration_since(UNIX_EPOCH)
            .map_or(received, |d| d.as_secs() as i64);
        let id = {
            let (up, from) = (up.clone(), from.clone());
            let insert = move |j: &mut Journal| {
                db::insert(j, kind, v2, &up, from.as_deref(), received, deadline)
            };
            self.inner.journal.run(insert).await
        };
        let id = match id {
            Ok(id) => id,
            Err(e) => {
                warn!("journal: {e}");
                return;
            }
        };
        info!(job = id, kind = kind.name(), installer = cfg.installer.name(), target_version = %up.version, "gateway upgrade accepted");
        let row = Row {
            id,
            kind,
            v2,
            upgrade: up,
            received_unix: received,
            deadline_unix: deadline,
            from_version: from,
            phase: Phase::Downloading,
            boot_id: None,
            reboots: 0,
            last_pct: None,
            result: None,
        };
        self.spawn(row, Action::Download);
    }

    /// Continues the job the journal holds as active (after a restart or a
    /// reboot). Call after the child jobs resumed.
    pub async fn resume(&self) {
        let row = self.inner.journal.run(db::active).await;
        let row = match row {
            Ok(Some(r)) => r,
            Ok(None) => return,
            Err(e) => {
                warn!("cannot read the gateway's jobs from the journal: {e}");
                return;
            }
        };
        let now_boot = boot_id(&self.inner.cfg.boot_id_file);
        let rebooted = match (&row.boot_id, &now_boot) {
            (Some(then), Some(now)) => Some(then != now),
            _ => None,
        };
        let decision = job::resume(
            row.phase,
            rebooted,
            row.reboots,
            now_unix(),
            row.deadline_unix,
        );
        info!(
            job = row.id,
            phase = row.phase.as_str(),
            ?rebooted,
            ?decision,
            "resuming the gateway's upgrade from the journal"
        );
        let action = match decision {
            Resume::Download => Action::Download,
            Resume::Wait => Action::Wait,
            Resume::Verify(c) => Action::Verify(c),
            Resume::RebootAgain => Action::Reboot,
            Resume::Fail(f) => {
                let me = self.clone();
                let mut row = row;
                tokio::spawn(async move {
                    let current = row.from_version.clone();
                    me.finish(&mut row, Err(f), current).await;
                });
                return;
            }
        };
        self.spawn(row, action);
    }

    fn spawn(&self, row: Row, action: Action) {
        {
            let mut running = self.inner.running.lock().unwrap_or_else(|p| p.into_inner());
            if *running == Some(row.id) {
                return;
            }
            *running = Some(row.id);
        }
        let me = self.clone();
        let task = tokio::spawn(async move {
            let id = row.id;
            me.run(row, action).await;
            let mut running = me.inner.running.lock().unwrap_or_else(|p| p.into_inner());
            if *running == Some(id) {
                *running = None;
            }
        });
        self.track(task.abort_handle());
    }

    /// Stops the job where it is, as a power cut would: it resumes from the
    /// journal on the next start.
    pub fn shutdown(&self) {
        let tasks =
            std::mem::take(&mut *self.inner.tasks.lock().unwrap_or_else(|p| p.into_inner()));
        for t in tasks {
            t.abort();
        }
        *self.inner.running.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    async fn persist(&self, row: &Row) {
        let (r, now) = (row.clone(), now_unix());
        if let Err(e) = self.inner.journal.run(move |j| db::save(j, &r, now)).await {
            warn!(job = row.id, "journal: {e}");
        }
    }

    /// Reports `pct` when the throttle lets it through.
    async fn progress(&self, row: &mut Row, throttle: &mut Throttle, pct: u8, version: &str) {
        if throttle.take(pct) {
            row.last_pct = Some(pct);
            self.report(ProgressReport {
                result_code: ResultCode::SUCCESS,
                progress: Some(pct),
                version: version.to_owned(),
                description: None,
            })
            .await;
        }
    }

    /// Ends the job: journal, report, release the package.
    async fn finish(
        &self,
        row: &mut Row,
        outcome: Result<String, Failure>,
        current: Option<String>,
    ) {
        let report = match outcome {
            Ok(running) => {
                info!(job = row.id, "gateway upgrade succeeded: running {running}");
                row.phase = Phase::Succeeded;
                row.result = Some((ResultCode::SUCCESS, format!("running {running}")));
                ProgressReport {
                    result_code: ResultCode::SUCCESS,
                    progress: Some(100),
                    // The platform's own string when the policy says equal.
                    version: row.upgrade.version.clone(),
                    description: Some(format!("upgrade success: running {running}")),
                }
            }
            Err((code, description)) => {
                warn!(job = row.id, %code, "gateway upgrade failed: {description}");
                row.phase = Phase::Failed;
                row.result = Some((code, description.clone()));
                ProgressReport {
                    result_code: code,
                    progress: None,
                    version: current
                        .or_else(|| row.from_version.clone())
                        .unwrap_or_default(),
                    description: Some(description),
                }
            }
        };
        self.persist(row).await;
        self.report(report).await;
        let req = self.request(row);
        if let Ok(key) = req.key() {
            self.inner.store.release(&job_key(row.id), &key).await;
        }
    }

    fn request(&self, row: &Row) -> PackageRequest {
        let mut req =
            PackageRequest::from_upgrade(&row.upgrade, row.v2, unix_to_system(row.received_unix));
        req.deadline = unix_to_system(row.deadline_unix);
        req
    }

    fn until_deadline(&self, row: &Row) -> Duration {
        Duration::from_secs((row.deadline_unix - now_unix()).max(0) as u64)
            .saturating_sub(DEADLINE_MARGIN)
    }

    async fn run(&self, mut row: Row, mut action: Action) {
        let Some(cfg) = self.install_cfg(row.kind).cloned() else {
            let name = row.kind.name();
            let f = (
                ResultCode::INNER_ERROR,
                format!("[gateway.{name}] is no longer in otabridge's configuration"),
            );
            let current = row.from_version.clone();
            self.finish(&mut row, Err(f), current).await;
            return;
        };
        let mut throttle = Throttle::after(row.last_pct);
        let mut package: Option<Package> = None;
        let shown = row.from_version.clone().unwrap_or_default();
        let outcome = loop {
            let step = match action {
                Action::Download => self.download(&mut row, &mut throttle, &shown).await,
                Action::Wait => self.wait_for_children(&mut row, &mut package).await,
                Action::Install => {
                    self.install(&mut row, &cfg, &mut throttle, &shown, &mut package)
                        .await
                }
                Action::Reboot => self.reboot(&mut row, &mut throttle, &shown).await,
                Action::Restart => {
                    row.phase = Phase::Restarting;
                    self.progress(&mut row, &mut throttle, job::REBOOT_PCT, &shown)
                        .await;
                    self.persist(&row).await;
                    info!(
                        job = row.id,
                        "restarting otabridge to run the installed version"
                    );
                    (self.inner.hooks.restart)();
                    // The daemon stops this task while it stops.
                    tokio::time::sleep(self.inner.cfg.reboot_timeout).await;
                    Err((
                        (
                            ResultCode::INSTALL_FAIL,
                            format!(
                                "{}: otabridge did not restart within {} s",
                                result::DESC_UPDATE_FAILED,
                                self.inner.cfg.reboot_timeout.as_secs()
                            ),
                        ),
                        None,
                    ))
                }
                Action::Verify(check) => break self.verify(&row, &cfg, check).await,
            };
            match step {
                Ok(next) => action = next,
                Err((f, current)) => break (Err(f), current),
            }
        };
        let (result, current) = outcome;
        self.finish(&mut row, result, current).await;
    }

    async fn fetch(&self, row: &Row) -> Result<Package, Failure> {
        let wait = self
            .inner
            .store
            .acquire(&job_key(row.id), &self.request(row))
            .await;
        wait.ready().await.map_err(|e| download_failure(&e))
    }

    async fn download(
        &self,
        row: &mut Row,
        throttle: &mut Throttle,
        shown: &str,
    ) -> Result<Action, (Failure, Option<String>)> {
        self.progress(row, throttle, 0, shown).await;
        let wait = self
            .inner
            .store
            .acquire(&job_key(row.id), &self.request(row))
            .await;
        let mut rx = wait.progress();
        let ready = wait.ready();
        tokio::pin!(ready);
        let size = row.upgrade.file_size;
        let r = loop {
            tokio::select! {
                r = &mut ready => break r,
                changed = rx.changed() => {
                    if changed.is_err() {
                        break ready.await;
                    }
                    let state = rx.borrow_and_update().clone();
                    if let DownloadState::Downloading { received, .. } = state {
                        self.progress(row, throttle, job::download_pct(received, size), shown).await;
                    }
                }
            }
        };
        match r {
            Ok(_) => {
                row.phase = Phase::Waiting;
                self.progress(row, throttle, job::DOWNLOADED_PCT, shown)
                    .await;
                self.persist(row).await;
                Ok(Action::Wait)
            }
            Err(e) => Err((download_failure(&e), None)),
        }
    }

    async fn wait_for_children(
        &self,
        row: &mut Row,
        package: &mut Option<Package>,
    ) -> Result<Action, (Failure, Option<String>)> {
        *package = Some(self.fetch(row).await.map_err(|f| (f, None))?);
        if !self.inner.cfg.install_while_children_busy {
            let deadline = tokio::time::Instant::now() + self.until_deadline(row);
            let mut told = false;
            loop {
                let busy = (self.inner.hooks.child_jobs)();
                if busy == 0 {
                    break;
                }
                if !told {
                    info!(
                        job = row.id,
                        child_jobs = busy,
                        "the gateway's install waits until no child upgrade runs"
                    );
                    told = true;
                }
                if tokio::time::Instant::now() >= deadline {
                    return Err((job::busy_past_deadline(), None));
                }
                tokio::time::sleep(CHILD_POLL).await;
            }
        }
        row.phase = Phase::Installing;
        self.persist(row).await;
        Ok(Action::Install)
    }

    async fn install(
        &self,
        row: &mut Row,
        cfg: &InstallConfig,
        throttle: &mut Throttle,
        shown: &str,
        package: &mut Option<Package>,
    ) -> Result<Action, (Failure, Option<String>)> {
        let pkg = match package.take() {
            Some(p) => p,
            None => self.fetch(row).await.map_err(|f| (f, None))?,
        };
        // The installer may not outlive the deadline: the platform must
        // have the terminal report before it.
        let left = self.until_deadline(row);
        if left < MIN_INSTALL_TIME {
            return Err((
                (
                    ResultCode::INSTALL_FAIL,
                    format!(
                        "{}: the deadline is too close to start the installer ({} s left)",
                        result::DESC_UPDATE_FAILED,
                        left.as_secs()
                    ),
                ),
                None,
            ));
        }
        let limit = self.inner.cfg.install_timeout.min(left);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<u8>();
        let run = installer::install(cfg, &pkg.path, limit, move |p| {
            let _ = tx.send(p);
        });
        tokio::pin!(run);
        let r = loop {
            tokio::select! {
                r = &mut run => break r,
                Some(p) = rx.recv() => self.progress(row, throttle, job::install_pct(p), shown).await,
            }
        };
        while let Ok(p) = rx.try_recv() {
            self.progress(row, throttle, job::install_pct(p), shown)
                .await;
        }
        match r {
            Ok(()) => {
                self.progress(row, throttle, job::INSTALLED_PCT, shown)
                    .await;
                Ok(match cfg.after {
                    After::Reboot => Action::Reboot,
                    After::Restart => Action::Restart,
                    After::None => Action::Verify(Check::AfterInstall),
                })
            }
            Err(e) => Err(((e.result_code(), e.description()), None)),
        }
    }

    async fn reboot(
        &self,
        row: &mut Row,
        throttle: &mut Throttle,
        shown: &str,
    ) -> Result<Action, (Failure, Option<String>)> {
        let now_boot = boot_id(&self.inner.cfg.boot_id_file);
        if row.boot_id.is_some() && row.boot_id == now_boot {
            row.reboots += 1;
        } else {
            row.reboots = 1;
        }
        row.boot_id = now_boot;
        row.phase = Phase::Rebooting;
        self.progress(row, throttle, job::REBOOT_PCT, shown).await;
        // Journaled before the command: the next start reads the version.
        self.persist(row).await;
        let argv = &self.inner.cfg.reboot_command;
        info!(job = row.id, command = ?argv, "rebooting the gateway to run the installed firmware");
        let failed = |why: String| {
            Err((
                (
                    ResultCode::INSTALL_FAIL,
                    format!("{}: {why}", result::DESC_UPDATE_FAILED),
                ),
                None,
            ))
        };
        match proc::run_output(argv, REBOOT_COMMAND_LIMIT).await {
            Ok(o) if o.status.success() => {}
            Ok(o) => {
                let tail = o.stderr_tail.join(" | ");
                return failed(format!(
                    "the reboot command {} exited with {}{}",
                    argv[0],
                    proc::describe_status(o.status),
                    if tail.is_empty() {
                        String::new()
                    } else {
                        format!(": {tail}")
                    }
                ));
            }
            Err(e) => return failed(format!("the reboot command failed: {e}")),
        }
        // The box stops the daemon (and this task) while it goes down.
        tokio::time::sleep(self.inner.cfg.reboot_timeout).await;
        failed(format!(
            "the gateway did not reboot within {} s of the reboot command",
            self.inner.cfg.reboot_timeout.as_secs()
        ))
    }

    /// Reads the version back and decides; returns the outcome and the
    /// version the box runs (for the report).
    async fn verify(
        &self,
        row: &Row,
        cfg: &InstallConfig,
        check: Check,
    ) -> (Result<String, Failure>, Option<String>) {
        let mut wait = Duration::from_secs(1);
        let mut last_err = None;
        for attempt in 1..=VERIFY_ATTEMPTS {
            match version::read(cfg, self.inner.cfg.version_timeout).await {
                Ok(v) => {
                    let r = job::verdict(
                        check,
                        &v,
                        &row.upgrade.version,
                        row.from_version.as_deref(),
                        self.inner.mode,
                    );
                    if let Err(f) = r {
                        return (Err(f), Some(v));
                    }
                    if let Some(commit) = &cfg.commit {
                        if let Err(f) = commit_update(commit, self.inner.cfg.version_timeout).await
                        {
                            return (Err(f), Some(v));
                        }
                    }
                    return (Ok(v), None);
                }
                Err(e) => {
                    warn!(
                        job = row.id,
                        attempt, "cannot read the gateway's version back: {e}"
                    );
                    last_err = Some(e);
                }
            }
            if attempt < VERIFY_ATTEMPTS {
                tokio::time::sleep(wait).await;
                wait *= 2;
            }
        }
        let e = last_err.map(|e| e.to_string()).unwrap_or_default();
        (
            Err((
                ResultCode::INSTALL_FAIL,
                format!(
                    "{}: the version could not be read back: {e}",
                    result::DESC_UPDATE_FAILED
                ),
            )),
            None,
        )
    }
}

/// Runs the preset's commit (`mender commit`) once the version was read back.
async fn commit_update(argv: &[String], limit: Duration) -> Result<(), Failure> {
    let failed = |why: String| {
        (
            ResultCode::INSTALL_FAIL,
            format!("{}: {why}", result::DESC_UPDATE_FAILED),
        )
    };
    match proc::run_output(argv, limit).await {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(failed(format!(
            "the new version runs but {} exited with {}: {}",
            argv.join(" "),
            proc::describe_status(o.status),
            o.stderr_tail.join(" | ")
        ))),
        Err(e) => Err(failed(format!(
            "the new version runs but committing it failed: {e}"
        ))),
    }
}

/// The package store's claim name for gateway job `id`.
fn job_key(id: i64) -> String {
    format!("gateway-job-{id}")
}

/// A failed download as the code and description of the report: the same
/// mapping as a child's job ([`crate::ota::verdict`]).
fn download_failure(e: &crate::package::DownloadError) -> Failure {
    let v = crate::ota::verdict::verdict(crate::ota::verdict::Failure::Download(e));
    (v.code, v.description)
}
