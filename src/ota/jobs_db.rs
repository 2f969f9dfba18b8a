//! The `jobs` table: one row per child upgrade (journal migration 3).

use otabridge_codecs::iotda::{ResultCode, Upgrade, UpgradeKind};
use otabridge_codecs::version::Policy;
use rusqlite::{params, OptionalExtension};

use super::job::{Limits, Machine, Phase};
use crate::journal::{Journal, JournalError};

/// A job as stored.
#[derive(Debug, Clone)]
pub struct JobRow {
    /// Row id.
    pub id: i64,
    /// The child.
    pub device_id: String,
    /// Firmware or software.
    pub kind: UpgradeKind,
    /// `_v2` event (pre-signed URL, no token).
    pub v2: bool,
    /// The event's paras.
    pub upgrade: Upgrade,
    /// When the event arrived (Unix seconds).
    pub received_unix: i64,
    /// When the job must have ended (Unix seconds).
    pub deadline_unix: i64,
    /// The state machine.
    pub machine: Machine,
    /// Activation commands sent so far.
    pub activations: u32,
}

/// Inserts a new queued job; returns its id.
pub fn insert(
    j: &mut Journal,
    device_id: &str,
    kind: UpgradeKind,
    v2: bool,
    upgrade: &Upgrade,
    received_unix: i64,
    deadline_unix: i64,
) -> Result<i64, JournalError> {
    let event = serde_json::to_string(upgrade).expect("upgrade paras serialise");
    let r = j.connection().execute(
        "INSERT INTO jobs (device_id, kind, v2, event, received_unix, deadline_unix, target, sign,
                           size, phase, updated_unix)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, 'queued', ?5)",
        params![
            device_id,
            kind.name(),
            v2,
            event,
            received_unix,
            deadline_unix,
            upgrade.version,
            upgrade.sign,
            upgrade.file_size as i64
        ],
    );
    match r {
        Ok(_) => Ok(j.connection().last_insert_rowid()),
        Err(e) => Err(j.err(e)),
    }
}

/// Writes the machine's state (and the activation count).
pub fn save(
    j: &mut Journal,
    id: i64,
    m: &Machine,
    activations: u32,
    now: i64,
) -> Result<(), JournalError> {
    let (code, desc) = match &m.result {
        Some((c, d)) => (Some(c.get()), Some(d.clone())),
        None => (None, None),
    };
    let cause = m
        .cause
        .as_ref()
        .map(|c| serde_json::to_string(c).expect("a cause serialises"));
    let r = j.connection().execute(
        "UPDATE jobs SET phase = ?2, acked_offset = ?3, retries = ?4, current_version = ?5,
             result_code = ?6, description = ?7, last_report_pct = ?8, last_report_unix = ?9,
             activations = ?10, updated_unix = ?11, cause = ?12
         WHERE id = ?1",
        params![
            id,
            m.phase.as_str(),
            m.offset as i64,
            m.retries,
            m.current_version,
            code,
            desc,
            m.last_report.map(|(p, _)| p),
            m.last_report.map(|(_, t)| t),
            activations,
            now,
            cause
        ],
    );
    r.map(|_| ()).map_err(|e| j.err(e))
}

/// The version policy of a child, by device id (the journal does not keep
/// it: the configuration decides).
pub type PolicyOf<'a> = &'a dyn Fn(&str) -> Policy;

fn row_to_job(
    r: &rusqlite::Row<'_>,
    limits: Limits,
    policy: PolicyOf<'_>,
) -> rusqlite::Result<JobRow> {
    let device_id: String = r.get("device_id")?;
    let event: String = r.get("event")?;
    let upgrade: Upgrade = serde_json::from_str(&event).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
    })?;
    let phase: String = r.get("phase")?;
    let mut m = Machine::new(
        &r.get::<_, String>("target")?,
        r.get::<_, i64>("size")? as u64,
        policy(&device_id),
        limits,
    );
    m.phase = Phase::parse(&phase).unwrap_or(Phase::Failed);
    m.offset = r.get::<_, i64>("acked_offset")? as u64;
    m.retries = r.get("retries")?;
    m.current_version = r.get("current_version")?;
    let code: Option<i64> = r.get("result_code")?;
    let desc: Option<String> = r.get("description")?;
    // A code the platform does not document cannot have been written; read
    // one as 255 rather than lose the row.
    m.result = code.map(|c| {
        let c = ResultCode::try_from(c).unwrap_or(ResultCode::INNER_ERROR);
        (c, desc.unwrap_or_default())
    });
    // A cause this version cannot read is dropped, not the job.
    let cause: Option<String> = r.get("cause")?;
    m.cause = cause.and_then(|c| serde_json::from_str(&c).ok());
    let pct: Option<u8> = r.get("last_report_pct")?;
    let at: Option<i64> = r.get("last_report_unix")?;
    m.last_report = pct.zip(at);
    m.last_checkpoint = r.get("updated_unix")?;
    Ok(JobRow {
        id: r.get("id")?,
        device_id,
        kind: UpgradeKind::from_name(&r.get::<_, String>("kind")?).unwrap_or(UpgradeKind::Firmware),
        v2: r.get("v2")?,
        upgrade,
        received_unix: r.get("received_unix")?,
        deadline_unix: r.get("deadline_unix")?,
        machine: m,
        activations: r.get("activations")?,
    })
}

/// The jobs `sql` selects (`SELECT * FROM jobs …` with `args`), in its order.
fn jobs_where(
    j: &mut Journal,
    sql: &str,
    args: impl rusqlite::Params,
    limits: Limits,
    policy: PolicyOf<'_>,
) -> Result<Vec<JobRow>, JournalError> {
    let conn = j.connection();
    let read = || -> rusqlite::Result<Vec<JobRow>> {
        let mut st = conn.prepare(sql)?;
        let rows = st.query_map(args, |r| row_to_job(r, limits, policy))?;
        rows.collect()
    };
    let r = read();
    r.map_err(|e| j.err(e))
}

/// The one job `sql` selects (`SELECT * FROM jobs …` with `args`), if any.
fn job_where(
    j: &mut Journal,
    sql: &str,
    args: impl rusqlite::Params,
    limits: Limits,
    policy: PolicyOf<'_>,
) -> Result<Option<JobRow>, JournalError> {
    let r = j
        .connection()
        .query_row(sql, args, |r| row_to_job(r, limits, policy))
        .optional();
    r.map_err(|e| j.err(e))
}

/// Jobs not yet succeeded or failed, oldest first.
pub fn active(
    j: &mut Journal,
    limits: Limits,
    policy: PolicyOf<'_>,
) -> Result<Vec<JobRow>, JournalError> {
    let sql = "SELECT * FROM jobs WHERE phase NOT IN ('succeeded', 'failed') ORDER BY id";
    jobs_where(j, sql, [], limits, policy)
}

/// The latest job of a child, if any.
pub fn latest(
    j: &mut Journal,
    device_id: &str,
    limits: Limits,
    policy: PolicyOf<'_>,
) -> Result<Option<JobRow>, JournalError> {
    let sql = "SELECT * FROM jobs WHERE device_id = ?1 ORDER BY id DESC LIMIT 1";
    job_where(j, sql, [device_id], limits, policy)
}

/// One job by its id, if the journal has it (the control API, issue 15).
pub fn by_id(
    j: &mut Journal,
    id: i64,
    limits: Limits,
    policy: PolicyOf<'_>,
) -> Result<Option<JobRow>, JournalError> {
    job_where(j, "SELECT * FROM jobs WHERE id = ?1", [id], limits, policy)
}

/// The jobs an operator looks at (the control API's list): every job not
/// yet ended, and the latest job of every child, oldest first.
pub fn current(
    j: &mut Journal,
    limits: Limits,
    policy: PolicyOf<'_>,
) -> Result<Vec<JobRow>, JournalError> {
    let sql = "SELECT * FROM jobs WHERE phase NOT IN ('succeeded', 'failed')
                 OR id IN (SELECT MAX(id) FROM jobs GROUP BY device_id)
             ORDER BY id";
    jobs_where(j, sql, [], limits, policy)
}
