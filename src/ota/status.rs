//! `otabridge status`: each configured child as the journal knows it. Opens
//! the journal read-only, so it works while the daemon runs (SQLite WAL).

use serde::Serialize;

use super::control::{JobView, Requests};
use super::job::Limits;
use super::jobs_db;
use super::verdict::FailureCause;
use crate::config::{Config, Transport};
use crate::journal::{Journal, JournalError};

/// One child's line.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ChildStatus {
    /// IoTDA device id.
    pub device_id: String,
    /// coap, serial or sim.
    pub transport: String,
    /// Last version read.
    pub version: Option<String>,
    /// Last health check passed.
    pub online: bool,
    /// Unix time it last answered.
    pub last_seen_unix: Option<i64>,
    /// Last error, if it did not answer.
    pub last_error: Option<String>,
    /// The latest upgrade job, if any.
    pub job: Option<JobStatus>,
    /// A registering LwM2M child's registration (`endpoint` children, as
    /// journaled: `None` while it has none).
    pub registration: Option<RegistrationStatus>,
}

/// What `status` shows of an LwM2M registration (issue 13 item 8).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct RegistrationStatus {
    /// The Endpoint Client Name.
    pub endpoint: String,
    /// Where it last registered or updated from.
    pub address: String,
    /// Its binding (`U`, `UQ`...), and whether it is in queue mode.
    pub binding: String,
    /// Queue mode.
    pub queue: bool,
    /// LwM2M version.
    pub lwm2m: String,
    /// Its lifetime `lt`, seconds.
    pub lifetime_s: u64,
    /// Unix time of its last Register or Update ("last seen").
    pub renewed_unix: i64,
    /// Seconds of lifetime left at the time of the status (0: expired, the
    /// gateway drops it at its next start or expiry check).
    pub lifetime_left_s: u64,
}

/// A child's latest upgrade job.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct JobStatus {
    /// Journal id.
    pub id: i64,
    /// Target version.
    pub target: String,
    /// queued, downloading, delivering, activating, verifying, probing,
    /// reverting, confirming, succeeded, failed.
    pub phase: String,
    /// What operators and policies made of it (issue 15): `running`,
    /// `waiting_window`, `paused`, `held`, `cancelling`, or once ended
    /// `succeeded`, `failed`, `cancelled`.
    pub state: String,
    /// Why the failure policy holds it.
    pub held: Option<String>,
    /// Bytes the child acknowledged (last checkpoint).
    pub offset: u64,
    /// Package size.
    pub size: u64,
    /// Transient failures in the current phase.
    pub retries: u32,
    /// Result code once finished.
    pub result_code: Option<u8>,
    /// Result description once finished.
    pub description: Option<String>,
    /// Where the last failure happened and what the device said: the
    /// failure that ended the job, the one it is retrying after, or (kind
    /// `waiting`) the pre-flight refusal it waits on.
    pub cause: Option<FailureCause>,
    /// Why a job gated by the child's pre-flight waits (low battery, poor
    /// signal, too little free memory): it asks again until the event's
    /// deadline. `None` when it does not wait.
    pub waiting: Option<String>,
}

fn transport_name(t: &Transport) -> &'static str {
    match t {
        Transport::Coap { .. } => "coap",
        Transport::Serial { .. } => "serial",
        #[cfg(feature = "sim")]
        Transport::Simulated { .. } => "sim",
    }
}

/// The state of every configured child (configuration order).
pub fn collect(cfg: &Config) -> Result<Vec<ChildStatus>, JournalError> {
    if !cfg.state.dir.join(crate::journal::FILE_NAME).exists() {
        return Ok(cfg
            .children
            .iter()
            .map(|c| ChildStatus {
                device_id: c.device_id.clone(),
                transport: transport_name(&c.transport).to_owned(),
                version: None,
                online: false,
                last_seen_unix: None,
                last_error: None,
                job: None,
                registration: None,
            })
            .collect());
    }
    let mut j = Journal::open_read_only(&cfg.state.dir)?;
    let rows = j.children()?;
    let regs = crate::child::coap::registrations::list(&mut j)?;
    let now = crate::clock::now_unix();
    let listed = listed(cfg, &mut j);
    let mut out = Vec::with_capacity(listed.len());
    for c in &listed {
        let row = rows.iter().find(|r| r.device_id == c.device_id);
        let job = jobs_db::latest(&mut j, &c.device_id, Limits::default(), &|_| c.policy)?;
        // A journal a newer daemon has not migrated yet has no requests.
        let req = match &job {
            Some(r) => Requests::load(&mut j, r.id)
                .map(|(q, _)| q)
                .unwrap_or_default(),
            None => Requests::default(),
        };
        let job = job.map(|r| JobStatus {
            id: r.id,
            target: r.upgrade.version.clone(),
            phase: r.machine.phase.as_str().to_owned(),
            state: JobView::new(&r, &req, None).state,
            held: req.held.clone(),
            offset: r.machine.offset,
            size: r.machine.size,
            retries: r.machine.retries,
            result_code: r.machine.result.as_ref().map(|(c, _)| c.get()),
            waiting: r
                .machine
                .cause
                .as_ref()
                .filter(|c| c.is_waiting() && r.machine.result.is_none())
                .map(|c| c.detail.clone()),
            description: r.machine.result.map(|(_, d)| d),
            cause: r.machine.cause,
        });
        out.push(ChildStatus {
            device_id: c.device_id.clone(),
            transport: c.transport.to_owned(),
            version: row.and_then(|r| r.version.clone()),
            online: row.is_some_and(|r| r.online),
            last_seen_unix: row.and_then(|r| r.last_seen_unix),
            last_error: row.and_then(|r| r.last_error.clone()),
            job,
            registration: c
                .endpoint
                .as_deref()
                .and_then(|ep| registration(ep, &regs, now)),
        });
    }
    Ok(out)
}

/// The children `status` lists: the configured ones, then those
/// onboarded (issue 13 item 3; a journal from before migration 8 has none).
fn listed(cfg: &Config, j: &mut Journal) -> Vec<Listed> {
    let mut listed: Vec<Listed> = cfg
        .children
        .iter()
        .map(|c| Listed {
            device_id: c.device_id.clone(),
            transport: transport_name(&c.transport),
            policy: c.version_match,
            endpoint: match &c.transport {
                Transport::Coap {
                    address: crate::config::CoapAddress::Endpoint(ep),
                    ..
                } => Some(ep.clone()),
                _ => None,
            },
        })
        .collect();
    let onboarded = crate::child::coap::registrations::onboarded(j).unwrap_or_default();
    for o in onboarded {
        if !listed.iter().any(|l| l.device_id == o.device_id) {
            listed.push(Listed {
                device_id: o.device_id,
                transport: "coap",
                policy: cfg.ota.version_match,
                endpoint: Some(o.endpoint),
            });
        }
    }
    listed
}

/// A child `status` lists: configured, or onboarded.
struct Listed {
    device_id: String,
    transport: &'static str,
    policy: otabridge_codecs::version::Policy,
    /// Its LwM2M endpoint, when it registers.
    endpoint: Option<String>,
}

/// The journaled registration of endpoint `ep`.
fn registration(
    ep: &str,
    regs: &[crate::child::coap::registrations::Row],
    now_unix: i64,
) -> Option<RegistrationStatus> {
    let row = regs.iter().find(|r| r.reg.endpoint == ep)?;
    let lt = row.reg.lifetime.as_secs();
    let age = u64::try_from(now_unix.saturating_sub(row.renewed_unix)).unwrap_or(0);
    Some(RegistrationStatus {
        endpoint: ep.to_owned(),
        address: row.reg.peer.to_string(),
        binding: row.reg.binding.clone(),
        queue: row.reg.queue,
        lwm2m: format!("{}.{}", row.reg.version.major, row.reg.version.minor),
        lifetime_s: lt,
        renewed_unix: row.renewed_unix,
        lifetime_left_s: lt.saturating_sub(age),
    })
}

/// Prints the status table (or JSON) to stdout.
pub fn print(cfg: &Config, json: bool) -> Result<(), JournalError> {
    let all = collect(cfg)?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&all).expect("status serialises")
        );
        return Ok(());
    }
    println!(
        "{:<28} {:<9} {:<12} {:<6} {:<24} {:>21} {:>7}  last result",
        "child", "transport", "version", "online", "job", "offset/size", "retries"
    );
    for s in &all {
        let (phase, progress, retries, mut last) = match &s.job {
            Some(j) => (
                match j.state.as_str() {
                    "paused" | "held" | "cancelling" | "cancelled" | "waiting_window" => {
                        format!("{} ({}) -> {}", j.phase, j.state, j.target)
                    }
                    _ => format!("{} -> {}", j.phase, j.target),
                },
                format!("{}/{}", j.offset, j.size),
                j.retries.to_string(),
                match (&j.result_code, &j.description, &j.cause) {
                    (None, _, Some(_)) if j.waiting.is_some() => {
                        let w = j.waiting.as_deref().unwrap_or_default();
                        // "waiting for the child to wake: ..." says it already.
                        if w.starts_with("waiting") {
                            w.to_owned()
                        } else {
                            format!("waiting: {w}")
                        }
                    }
                    (Some(c), Some(d), Some(cause)) => format!("{c} {d} ({cause})"),
                    (Some(c), Some(d), None) => format!("{c} {d}"),
                    (None, _, _) if j.held.is_some() => {
                        format!("held: {}", j.held.as_deref().unwrap_or_default())
                    }
                    (None, _, Some(cause)) => format!("retrying after: {cause}"),
                    _ => String::new(),
                },
            ),
            None => ("-".into(), "-".into(), "-".into(), String::new()),
        };
        if last.is_empty() {
            last = s.last_error.clone().unwrap_or_default();
        }
        println!(
            "{:<28} {:<9} {:<12} {:<6} {:<24} {:>21} {:>7}  {}",
            s.device_id,
            s.transport,
            s.version.as_deref().unwrap_or("-"),
            if s.online { "yes" } else { "no" },
            phase,
            progress,
            retries,
            last
        );
    }
    let regs: Vec<_> = all
        .iter()
        .filter_map(|s| s.registration.as_ref().map(|r| (&s.device_id, r)))
        .collect();
    if !regs.is_empty() {
        println!();
        println!(
            "{:<28} {:<28} {:<22} {:<8} {:>9} {:>10}  last seen (unix)",
            "registered child", "endpoint", "address", "binding", "lifetime", "left"
        );
        for (id, r) in regs {
            println!(
                "{:<28} {:<28} {:<22} {:<8} {:>8}s {:>9}s  {}",
                id,
                r.endpoint,
                r.address,
                r.binding,
                r.lifetime_s,
                r.lifetime_left_s,
                r.renewed_unix
            );
        }
    }
    Ok(())
}
