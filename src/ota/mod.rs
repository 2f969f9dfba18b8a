//! The gateway's brain: it takes what the platform sends, finds which device
//! it is for, and answers through the children.
//!
//! - [`Gateway`] dispatches inbound events: by `object_device_id` (absent or
//!   the gateway's own id: the gateway; otherwise the configured child), then
//!   by service and event type (docs/protocols/iotda.md §3, §8). An unknown child or a
//!   malformed payload is logged with its topic and dropped; nothing else
//!   stops.
//! - On every connect it announces each child ONLINE or OFFLINE from a health
//!   check, in batches of at most 100 (docs/protocols/iotda.md §5.4). A
//!   child on a shared bus takes its turn ([`crate::child::bus`]) and its
//!   check's timeout starts then; a child whose own upgrade step holds its
//!   bus is ONLINE without a read (it is answering that step). Children
//!   checked at once are announced together; those queued behind another
//!   child's operation follow when their turn came.
//! - `version_query` is answered with `version_report`, read through the child,
//!   within the platform's 3-minute window (docs/protocols/iotda.md §4.2–4.3),
//!   written as the latest task's target when the child's version policy
//!   says that is what it runs.
//! - Events for the gateway itself (its version, its own upgrade) go to
//!   [`crate::gateway::SelfUpgrade`].

pub mod control;
pub mod engine;
pub mod halt;
pub mod job;
pub mod jobs_db;
pub mod onboard;
pub mod status;
pub mod verdict;
pub mod window;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use otabridge_codecs::iotda::event::{
    DeviceStatus, Status, UpdateStatus, VersionReport, MAX_STATUSES_PER_EVENT,
};
use otabridge_codecs::iotda::{event, topic, Event, Incoming};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::child::bus::{Buses, Purpose, Turn};
use crate::child::{Child, Roster};
use crate::clock::{self, now_unix};
use crate::gateway::SelfUpgrade;
use crate::journal::SharedJournal;
use crate::platform::{Inbound, Platform};

/// The largest event payload IoTDA sends (docs/protocols/iotda.md §1.3: 1 MB per publish).
pub const MAX_EVENT_PAYLOAD: usize = 1024 * 1024;

/// How long a health check may take before the child counts as OFFLINE.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the gateway keeps trying to read a child's version for a
/// `version_query`: the platform waits 3 minutes (docs/protocols/iotda.md §4.1), so stop
/// well before that.
const VERSION_QUERY_BUDGET: Duration = Duration::from_secs(150);

/// Dispatches platform events to the gateway itself and to its children.
#[derive(Debug, Clone)]
pub struct Gateway {
    platform: Platform,
    /// Ota's own handle on the journal (children, meta, jobs).
    journal: SharedJournal,
    /// The children in configuration order (stable status batches),
    /// shared with the engine ([`Gateway::with_engine`]).
    children: Roster,
    /// The bus queues the upgrade jobs take turns from.
    buses: Buses,
    own: SelfUpgrade,
    engine: Option<engine::Engine>,
    /// LwM2M onboarding: add/delete sub-device events go there.
    onboarding: Option<onboard::Onboarding>,
}

impl Gateway {
    /// A gateway reporting through `platform`, recording into `journal`,
    /// driving `children` (taking turns on shared buses from `buses`, built
    /// from the same children), upgrading itself through `own`.
    pub fn new(
        platform: Platform,
        journal: SharedJournal,
        children: Vec<Arc<dyn Child>>,
        buses: Buses,
        own: SelfUpgrade,
    ) -> Self {
        Gateway {
            platform,
            journal,
            children: Roster::new(&children),
            buses,
            own,
            engine: None,
            onboarding: None,
        }
    }

    /// Hands upgrade events to `engine`, and shares its children (built
    /// from the same list): a child onboarded later is in both.
    pub fn with_engine(mut self, engine: engine::Engine) -> Self {
        self.children = engine.roster();
        self.engine = Some(engine);
        self
    }

    /// Hands `add_sub_device_response` and `delete_sub_device_notify` to
    /// `onboarding`.
    pub fn with_onboarding(mut self, onboarding: onboard::Onboarding) -> Self {
        self.onboarding = Some(onboarding);
        self
    }

    /// Handles inbound traffic until the session closes the channel or
    /// `shutdown` completes.
    pub async fn run(
        self,
        mut inbound: mpsc::Receiver<Inbound>,
        shutdown: impl Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        loop {
            let msg = tokio::select! {
                m = inbound.recv() => match m { Some(m) => m, None => return },
                _ = &mut shutdown => return,
            };
            match msg {
                Inbound::Connected => {
                    let me = self.clone();
                    tokio::spawn(async move { me.announce_children().await });
                }
                Inbound::Message { topic, payload } => self.on_message(&topic, payload).await,
            }
        }
    }

    /// Health-checks every child and reports ONLINE/OFFLINE upstream: the
    /// children checked at once in one announcement (batches of 100), then
    /// each child that had to wait for its bus when its check is done.
    pub async fn announce_children(&self) {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let all = self.children.all();
        let count = all.len();
        for child in all {
            let buses = self.buses.clone();
            let tx = tx.clone();
            tokio::spawn(async move { health_check(&buses, child, &tx).await });
        }
        drop(tx);
        // Checks that did not queue for a bus and have not answered yet.
        let mut prompt = count;
        let mut ready = Vec::new();
        while let Some(msg) = rx.recv().await {
            match msg {
                Check::Queued => prompt -= 1,
                Check::Done {
                    child,
                    health,
                    queued,
                } => {
                    if !queued {
                        prompt -= 1;
                    }
                    self.record_health(child.as_ref(), &health).await;
                    ready.push(DeviceStatus {
                        device_id: child.device_id().to_owned(),
                        status: if health.is_ok() {
                            Status::Online
                        } else {
                            Status::Offline
                        },
                    });
                }
            }
            if prompt == 0 && !ready.is_empty() && rx.is_empty() {
                self.announce(std::mem::take(&mut ready)).await;
            }
        }
        self.announce(ready).await;
    }

    /// Journals a health check's outcome for `child`.
    async fn record_health(&self, child: &dyn Child, health: &Result<Health, String>) {
        let (online, version, error) = match health {
            Ok(Health::Read(v)) => (true, Some(v.clone()), None),
            Ok(Health::Busy) => (true, None, None),
            Err(e) => (false, None, Some(e.clone())),
        };
        if let Some(e) = &error {
            warn!(child = child.device_id(), "health check failed: {e}");
        }
        let (id, transport, now) = (child.device_id().to_owned(), child.transport(), now_unix());
        let r = self
            .journal
            .run(move |j| {
                j.child_seen(
                    &id,
                    transport,
                    version.as_deref(),
                    online,
                    error.as_deref(),
                    now,
                )
            })
            .await;
        if let Err(e) = r {
            warn!("journal: {e}");
        }
    }

    /// Queues `sub_device_update_status` for `statuses`, 100 per event.
    async fn announce(&self, statuses: Vec<DeviceStatus>) {
        for batch in statuses.chunks(MAX_STATUSES_PER_EVENT) {
            let ev = Event::UpdateStatus(UpdateStatus {
                device_statuses: batch.to_vec(),
            });
            if let Err(e) = self.platform.report(None, &ev).await {
                warn!("cannot queue sub_device_update_status: {e}");
            }
        }
    }

    async fn on_message(&self, topic_name: &str, payload: Bytes) {
        let kind = match topic::classify(self.platform.gateway_id(), topic_name) {
            Ok(k) => k,
            Err(e) => {
                warn!(topic = topic_name, "dropped: {e}");
                return;
            }
        };
        if payload.len() > MAX_EVENT_PAYLOAD {
            warn!(
                topic = topic_name,
                bytes = payload.len(),
                "dropped: payload larger than IoTDA's 1 MB publish limit"
            );
            return;
        }
        match kind {
            topic::Downstream::Events => match event::read(&payload) {
                Ok(events) => {
                    for r in events {
                        match r {
                            Ok(inc) => self.dispatch(topic_name, inc).await,
                            Err(u) => self.unusable(topic_name, u).await,
                        }
                    }
                }
                Err(e) => warn!(topic = topic_name, "dropped malformed event: {e}"),
            },
            other => debug!(
                topic = topic_name,
                ?other,
                "not handled by otabridge; ignored"
            ),
        }
    }

    /// Answers what can be attributed of an unusable service event (issue
    /// 17, defect 2): an upgrade for a configured child or for the gateway
    /// gets a failure report with the fault, so that the platform does not
    /// wait 24 h for a result; a `version_query` (whose paras are all
    /// informational) is answered as if it had none. Everything else is
    /// logged with its topic and dropped.
    async fn unusable(&self, topic_name: &str, u: event::Unusable) {
        let gw = self.platform.gateway_id();
        let (s, t) = (
            u.service_id.as_deref().unwrap_or("?"),
            u.event_type.as_deref().unwrap_or("?"),
        );
        let for_gateway = u.object_device_id.as_deref().is_none_or(|id| id == gw);
        let child = u
            .object_device_id
            .as_deref()
            .and_then(|id| self.children.get(id));
        let known = for_gateway || child.is_some();
        let who = u.object_device_id.as_deref().unwrap_or(gw);
        if known && s == event::SERVICE_OTA && t == "version_query" {
            warn!(
                topic = topic_name,
                child = who,
                "version_query with unusable paras answered as a plain one: {}",
                u.error
            );
            let inc = Incoming {
                object_device_id: u.object_device_id.clone(),
                event_time: None,
                event_id: u.event_id.clone(),
                event: Event::VersionQuery(Default::default()),
            };
            return self.dispatch(topic_name, inc).await;
        }
        let (Some((kind, _)), true) = (u.upgrade(), known) else {
            warn!(
                topic = topic_name,
                child = who,
                "dropped unusable event {s} {t}: {}",
                u.error
            );
            return;
        };
        let (code, description) = u.failure();
        warn!(
            topic = topic_name, child = who, code = %code,
            "unusable {t} answered with a failure report: {description}"
        );
        match (child, &self.engine) {
            (Some(c), Some(engine)) => engine.refuse(c.device_id(), code, description).await,
            (Some(c), None) => warn!(
                child = c.device_id(),
                "no upgrade engine to report the failure"
            ),
            (None, _) => self.own.refuse(kind, code, description),
        }
    }

    /// The child an event is for: `Ok(None)` for the gateway itself,
    /// `Err(())` (logged) for a child otabridge does not drive.
    fn target(&self, topic_name: &str, inc: &Incoming) -> Result<Option<Arc<dyn Child>>, ()> {
        match inc.object_device_id.as_deref() {
            None => Ok(None),
            Some(id) if id == self.platform.gateway_id() => Ok(None),
            Some(id) => match self.children.get(id) {
                Some(c) => Ok(Some(c)),
                None => {
                    let (s, t) = inc.event.kind();
                    warn!(
                        topic = topic_name,
                        child = id,
                        "dropped {s} {t}: unknown child"
                    );
                    Err(())
                }
            },
        }
    }

    /// Journals the platform's child-list version after an add or delete
    /// notification.
    async fn child_list_changed(&self, n: &event::SubDeviceNotify) {
        let version = n.version.to_string();
        let r = self
            .journal
            .run(move |j| j.meta_set("sub_device_version", &version))
            .await;
        if let Err(e) = r {
            warn!("journal: {e}");
        }
        info!(
            devices = n.devices.len(),
            "child list changed on the platform; otabridge drives the children in its config"
        );
    }

    async fn dispatch(&self, topic_name: &str, inc: Incoming) {
        let Ok(target) = self.target(topic_name, &inc) else {
            return;
        };
        match inc.event {
            Event::VersionQuery(_) => match target {
                Some(child) => {
                    let platform = self.platform.clone();
                    let journal = self.journal.clone();
                    let buses = self.buses.clone();
                    tokio::spawn(answer_version_query(platform, journal, buses, child));
                }
                None => self.own.report_versions(),
            },
            Event::Upgrade { kind, v2, upgrade } => match (target, &self.engine) {
                (Some(child), Some(engine)) => {
                    engine.submit(child.device_id(), kind, v2, upgrade).await
                }
                (Some(child), None) => {
                    warn!(
                        child = child.device_id(),
                        "upgrade event dropped: no upgrade engine"
                    );
                }
                (None, _) => self.own.submit(kind, v2, upgrade),
            },
            Event::UpdateStatusResponse(r) => {
                for f in &r.failed_devices {
                    warn!(
                        child = f.device_id.as_deref().unwrap_or("?"),
                        "platform refused a child status: {} {}", f.error_code, f.error_msg
                    );
                }
            }
            Event::AddSubDeviceNotify(n) => self.child_list_changed(&n).await,
            Event::DeleteSubDeviceNotify(n) => {
                if let Some(o) = &self.onboarding {
                    o.on_deleted(&n).await;
                }
                self.child_list_changed(&n).await
            }
            Event::AddSubDeviceResponse(r) => match &self.onboarding {
                Some(o) => o.on_add_response(inc.event_id.as_deref(), &r).await,
                None => info!(
                    topic = topic_name,
                    "add_sub_device_response while LwM2M onboarding is off; ignored"
                ),
            },
            Event::Unknown {
                service_id,
                event_type,
                ..
            } => {
                info!(
                    topic = topic_name,
                    "event {service_id} {event_type} is not handled; ignored"
                );
            }
            other => {
                let (s, t) = other.kind();
                info!(
                    topic = topic_name,
                    "event {s} {t} is not handled by this build; ignored"
                );
            }
        }
    }
}

/// Reads the child's version, retrying within the platform's window, and
/// reports it. A child that never answers gets no report: the platform then
/// shows "Waiting for report device firmware version timeout", which is true.
async fn answer_version_query(
    platform: Platform,
    journal: SharedJournal,
    buses: Buses,
    child: Arc<dyn Child>,
) {
    let id = child.device_id().to_owned();
    let deadline = clock::now() + VERSION_QUERY_BUDGET;
    let mut backoff =
        crate::retry::RetryPolicy::until_deadline(Duration::from_secs(1), Duration::from_secs(20))
            .seeded(now_unix() as u64)
            .backoff();
    loop {
        let left = deadline.saturating_duration_since(clock::now());
        // The read's own timeout starts once the bus is ours.
        let Ok(turn) =
            tokio::time::timeout(left, buses.turn(child.as_ref(), Purpose::VersionQuery)).await
        else {
            warn!(child = %id, "the child's bus stayed busy for {VERSION_QUERY_BUDGET:?}; version not reported");
            return;
        };
        let r = tokio::time::timeout(HEALTH_TIMEOUT, child.read_version()).await;
        drop(turn);
        match r {
            Ok(Ok(v)) => {
                let (jid, transport, read, now) =
                    (id.clone(), child.transport(), v.clone(), now_unix());
                let _ = journal
                    .run(move |j| j.child_seen(&jid, transport, Some(&read), true, None, now))
                    .await;
                // The SDKs put the same value in both fields ([JAVA]
                // OTAService.reportVersion); the platform compares the one that
                // matches the task (firmware or software).
                let v = as_reported(&journal, child.as_ref(), v).await;
                let ev = Event::VersionReport(VersionReport {
                    sw_version: Some(v.clone()),
                    fw_version: Some(v),
                });
                if let Err(e) = platform.report(Some(&id), &ev).await {
                    warn!(child = %id, "cannot queue version_report: {e}");
                }
                return;
            }
            Ok(Err(e)) => debug!(child = %id, "version read failed: {e}"),
            Err(_) => debug!(child = %id, "version read timed out"),
        }
        let wait = backoff.next_delay();
        if clock::now() + wait >= deadline {
            warn!(child = %id, "no version for version_query within {VERSION_QUERY_BUDGET:?}; not reported");
            return;
        }
        tokio::time::sleep(wait).await;
    }
}

/// The version to report for `child`, which reads `v`: its latest job's
/// target string when the child's version policy says that is the version
/// it runs (a child reading `v2.0.0` after an upgrade to `2.0.0` reports
/// `2.0.0`, as the upgrade's own report did), else `v`.
async fn as_reported(journal: &SharedJournal, child: &dyn Child, v: String) -> String {
    let policy = child.version_policy();
    let id = child.device_id().to_owned();
    let latest = journal
        .run(move |j| jobs_db::latest(j, &id, job::Limits::default(), &|_| policy))
        .await;
    match latest {
        Ok(Some(row)) => policy.as_reported(&row.upgrade.version, &v),
        Ok(None) => v,
        Err(e) => {
            warn!(child = child.device_id(), "journal: {e}");
            v
        }
    }
}

/// What a health check found.
#[derive(Debug)]
enum Health {
    /// The child answered with its version.
    Read(String),
    /// The child's own upgrade step holds its bus: it is answering that.
    Busy,
}

/// A health check's messages to the announcement.
#[derive(Debug)]
enum Check {
    /// The check waits for its bus (another child's operation holds it).
    Queued,
    /// The check is done; `queued` when it sent [`Check::Queued`] first.
    Done {
        child: Arc<dyn Child>,
        health: Result<Health, String>,
        queued: bool,
    },
}

/// Checks `child` for the announcement: at once when its bus is free (or
/// it has none), without a read when its own upgrade step holds the bus,
/// else after its turn (saying [`Check::Queued`] first). The read's
/// timeout starts once the bus is the check's.
async fn health_check(buses: &Buses, child: Arc<dyn Child>, tx: &mpsc::UnboundedSender<Check>) {
    let (turn, queued): (Option<Turn>, bool) =
        match buses.try_turn(child.as_ref(), Purpose::Announce) {
            Ok(turn) => (turn, false),
            Err(h) if h.device_id == child.device_id() && h.purpose.is_job() => {
                debug!(
                    child = child.device_id(),
                    step = h.purpose.as_str(),
                    "online: busy with its upgrade"
                );
                let _ = tx.send(Check::Done {
                    child,
                    health: Ok(Health::Busy),
                    queued: false,
                });
                return;
            }
            Err(_) => {
                let _ = tx.send(Check::Queued);
                (buses.turn(child.as_ref(), Purpose::Announce).await, true)
            }
        };
    let health = match tokio::time::timeout(HEALTH_TIMEOUT, child.read_version()).await {
        Ok(r) => r.map(Health::Read).map_err(|e| e.to_string()),
        Err(_) => Err(format!("no answer within {HEALTH_TIMEOUT:?}")),
    };
    drop(turn);
    let _ = tx.send(Check::Done {
        child,
        health,
        queued,
    });
}
