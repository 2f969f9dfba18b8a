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
}

/// A child's latest upgrade job.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct JobStatus {
    /// Journal id.
    pub id: i64,
    /// Target version.
    pub target: String,
    /// queued, downloading, delivering, activating, verifying, confirming,
    /// succeeded, failed.
    pub phase: String,
    /// What operators and policies made of it (issue 15): `running`,
    /// `paused`, `held`, `cancelling`, or once ended `succeeded`,
    /// `failed`, `cancelled`.
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
    /// failure that ended the job, or the one it is retrying after.
    pub cause: Option<FailureCause>,
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
            })
            .collect());
    }
    let mut j = Journal::open_read_only(&cfg.state.dir)?;
    let rows = j.children()?;
    let mut out = Vec::with_capacity(cfg.children.len());
    for c in &cfg.children {
        let row = rows.iter().find(|r| r.device_id == c.device_id);
        let job = jobs_db::latest(&mut j, &c.device_id, Limits::default(), &|_| {
            c.version_match
        })?;
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
            description: r.machine.result.map(|(_, d)| d),
            cause: r.machine.cause,
        });
        out.push(ChildStatus {
            device_id: c.device_id.clone(),
            transport: transport_name(&c.transport).to_owned(),
            version: row.and_then(|r| r.version.clone()),
            online: row.is_some_and(|r| r.online),
            last_seen_unix: row.and_then(|r| r.last_seen_unix),
            last_error: row.and_then(|r| r.last_error.clone()),
            job,
        });
    }
    Ok(out)
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
                    "paused" | "held" | "cancelling" | "cancelled" => {
                        format!("{} ({}) -> {}", j.phase, j.state, j.target)
                    }
                    _ => format!("{} -> {}", j.phase, j.target),
                },
                format!("{}/{}", j.offset, j.size),
                j.retries.to_string(),
                match (&j.result_code, &j.description, &j.cause) {
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
    Ok(())
}
