//! The `gateway_jobs` table: the gateway's own upgrades (journal migration 4).

use otabridge_codecs::iotda::{ResultCode, Upgrade, UpgradeKind};
use rusqlite::{params, OptionalExtension, Row as SqlRow};

use super::job::Phase;
use crate::journal::{Journal, JournalError};

/// A gateway job as stored.
#[derive(Debug, Clone)]
pub struct Row {
    /// Row id.
    pub id: i64,
    /// Firmware or software.
    pub kind: UpgradeKind,
    /// `_v2` event (pre-signed URL, no token).
    pub v2: bool,
    /// The event's paras (with the token: the state directory is private).
    pub upgrade: Upgrade,
    /// When the event arrived (Unix seconds).
    pub received_unix: i64,
    /// When the job must have ended (Unix seconds).
    pub deadline_unix: i64,
    /// The version running when the event arrived, when it could be read.
    pub from_version: Option<String>,
    /// Where the job is.
    pub phase: Phase,
    /// The boot id when the reboot was asked for.
    pub boot_id: Option<String>,
    /// Reboot commands sent in the boot of `boot_id`.
    pub reboots: u32,
    /// The last progress reported.
    pub last_pct: Option<u8>,
    /// Result code and description once terminal.
    pub result: Option<(ResultCode, String)>,
}

const COLUMNS: &str = "id, kind, v2, event, received_unix, deadline_unix, from_version, phase, \
                       boot_id, reboots, last_pct, result_code, description";

fn from_sql(r: &SqlRow<'_>) -> rusqlite::Result<Row> {
    let kind: String = r.get(1)?;
    let event: String = r.get(3)?;
    let phase: String = r.get(7)?;
    let bad = |i: usize, what: String| {
        rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, what.into())
    };
    let code: Option<i64> = r.get(11)?;
    let description: Option<String> = r.get(12)?;
    Ok(Row {
        id: r.get(0)?,
        kind: UpgradeKind::from_name(&kind)
            .ok_or_else(|| bad(1, format!("unknown kind {kind:?}")))?,
        v2: r.get(2)?,
        upgrade: serde_json::from_str(&event).map_err(|e| bad(3, e.to_string()))?,
        received_unix: r.get(4)?,
        deadline_unix: r.get(5)?,
        from_version: r.get(6)?,
        phase: Phase::parse(&phase).ok_or_else(|| bad(7, format!("unknown phase {phase:?}")))?,
        boot_id: r.get(8)?,
        reboots: r.get(9)?,
        last_pct: r.get::<_, Option<i64>>(10)?.map(|p| p.clamp(0, 100) as u8),
        result: code.map(|c| {
            let code = u8::try_from(c)
                .ok()
                .and_then(ResultCode::new)
                .unwrap_or(ResultCode::INNER_ERROR);
            (code, description.unwrap_or_default())
        }),
    })
}

/// Inserts a new job in `downloading`; returns its id.
#[allow(clippy::too_many_arguments)] // one column each
pub fn insert(
    j: &mut Journal,
    kind: UpgradeKind,
    v2: bool,
    upgrade: &Upgrade,
    from_version: Option<&str>,
    received_unix: i64,
    deadline_unix: i64,
) -> Result<i64, JournalError> {
    let event = serde_json::to_string(upgrade).expect("upgrade paras serialise");
    let r = j.connection().execute(
        "INSERT INTO gateway_jobs (kind, v2, event, received_unix, deadline_unix, target, sign,
                                   from_version, phase, updated_unix)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 'downloading', ?4)",
        params![
            kind.name(),
            v2,
            event,
            received_unix,
            deadline_unix,
            upgrade.version,
            upgrade.sign,
            from_version
        ],
    );
    match r {
        Ok(_) => Ok(j.connection().last_insert_rowid()),
        Err(e) => Err(j.err(e)),
    }
}

/// Writes the row's mutable state.
pub fn save(j: &mut Journal, row: &Row, now: i64) -> Result<(), JournalError> {
    let r = j.connection().execute(
        "UPDATE gateway_jobs SET phase = ?2, boot_id = ?3, reboots = ?4, last_pct = ?5,
                result_code = ?6, description = ?7, updated_unix = ?8 WHERE id = ?1",
        params![
            row.id,
            row.phase.as_str(),
            row.boot_id,
            row.reboots,
            row.last_pct,
            row.result.as_ref().map(|r| i64::from(r.0)),
            row.result.as_ref().map(|r| r.1.as_str()),
            now
        ],
    );
    r.map(|_| ()).map_err(|e| j.err(e))
}

/// The job not yet reported as ended, if any (at most one runs).
pub fn active(j: &mut Journal) -> Result<Option<Row>, JournalError> {
    let r = j
        .connection()
        .query_row(
            &format!(
                "SELECT {COLUMNS} FROM gateway_jobs
                 WHERE phase NOT IN ('succeeded', 'failed') ORDER BY id DESC LIMIT 1"
            ),
            [],
            from_sql,
        )
        .optional();
    r.map_err(|e| j.err(e))
}

/// The newest job, ended or not (for `otabridge status`).
pub fn latest(j: &mut Journal) -> Result<Option<Row>, JournalError> {
    let r = j
        .connection()
        .query_row(
            &format!("SELECT {COLUMNS} FROM gateway_jobs ORDER BY id DESC LIMIT 1"),
            [],
            from_sql,
        )
        .optional();
    r.map_err(|e| j.err(e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upgrade() -> Upgrade {
        serde_json::from_str(
            r#"{"version":"2.0","url":"https://x/p","file_size":10,"file_name":"p","sign":"ab","access_token":"t"}"#,
        )
        .unwrap()
    }

    #[test]
    fn rows_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let id = {
            let mut j = Journal::open(dir.path()).unwrap();
            assert!(active(&mut j).unwrap().is_none());
            let id = insert(
                &mut j,
                UpgradeKind::Firmware,
                true,
                &upgrade(),
                Some("1.0"),
                100,
                200,
            )
            .unwrap();
            let mut row = active(&mut j).unwrap().unwrap();
            row.phase = Phase::Rebooting;
            row.boot_id = Some("b1".into());
            row.reboots = 1;
            row.last_pct = Some(95);
            save(&mut j, &row, 150).unwrap();
            id
        };
        let mut j = Journal::open(dir.path()).unwrap();
        let row = active(&mut j).unwrap().unwrap();
        assert_eq!(row.id, id);
        assert_eq!(row.kind, UpgradeKind::Firmware);
        assert!(row.v2);
        assert_eq!(row.upgrade.access_token.as_deref(), Some("t"));
        assert_eq!((row.received_unix, row.deadline_unix), (100, 200));
        assert_eq!(row.from_version.as_deref(), Some("1.0"));
        assert_eq!(row.phase, Phase::Rebooting);
        assert_eq!(row.boot_id.as_deref(), Some("b1"));
        assert_eq!((row.reboots, row.last_pct), (1, Some(95)));
        let mut done = row.clone();
        done.phase = Phase::Failed;
        done.result = Some((ResultCode::INSTALL_FAIL, "rolled back".into()));
        save(&mut j, &done, 160).unwrap();
        assert!(active(&mut j).unwrap().is_none());
        assert_eq!(
            latest(&mut j).unwrap().unwrap().result,
            Some((ResultCode::INSTALL_FAIL, "rolled back".into()))
        );
    }
}
