//! The package store's rows in the journal (`packages`, `package_claims`,
//! migration 2 in [`crate::journal`]). Each function is one statement or
//! transaction on the journal; callers run it off the async workers
//! ([`crate::journal::SharedJournal::run`], or `blocking` on a thread of
//! their own).

use rusqlite::{params, OptionalExtension};

use super::DownloadError;
use crate::journal::Journal;

/// What the journal knows of one package.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Row {
    /// Announced (or learnt) size.
    pub(crate) size: Option<u64>,
    /// Bytes of `<key>.part` known to be on disk (fsynced before recorded).
    pub(crate) durable_len: u64,
    /// The ETag or Last-Modified of the partial content, for `If-Range`.
    pub(crate) validator: Option<String>,
    /// `<key>` is complete and verified.
    pub(crate) verified: bool,
    /// The SHA-256 of the verified file.
    pub(crate) sha256: Option<String>,
}

use crate::clock::now_unix;

fn store_err(e: rusqlite::Error) -> DownloadError {
    if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull) {
        return DownloadError::DiskFull(format!("journal: {e}"));
    }
    DownloadError::Store(format!("journal: {e}"))
}

pub(crate) fn get(j: &mut Journal, key: &str) -> Result<Option<Row>, DownloadError> {
    j.connection()
        .query_row(
            "SELECT size, durable_len, validator, verified, sha256 FROM packages WHERE key = ?1",
            [key],
            |r| {
                Ok(Row {
                    size: r.get::<_, Option<i64>>(0)?.map(|v| v as u64),
                    durable_len: r.get::<_, i64>(1)? as u64,
                    validator: r.get(2)?,
                    verified: r.get(3)?,
                    sha256: r.get(4)?,
                })
            },
        )
        .optional()
        .map_err(store_err)
}

/// Writes the row for a package being downloaded.
pub(crate) fn put_progress(
    j: &mut Journal,
    key: &str,
    size: Option<u64>,
    durable_len: u64,
    validator: Option<&str>,
) -> Result<(), DownloadError> {
    j.connection()
        .execute(
            "INSERT INTO packages (key, size, durable_len, validator, verified, updated_unix)
             VALUES (?1, ?2, ?3, ?4, 0, ?5)
             ON CONFLICT(key) DO UPDATE SET size = excluded.size,
               durable_len = excluded.durable_len, validator = excluded.validator,
               verified = 0, updated_unix = excluded.updated_unix",
            params![
                key,
                size.map(|s| s as i64),
                durable_len as i64,
                validator,
                now_unix()
            ],
        )
        .map_err(store_err)?;
    Ok(())
}

/// Records a checkpoint. Only updates: a package released (and its row
/// deleted) while a checkpoint was in flight stays forgotten.
pub(crate) fn update_progress(
    j: &mut Journal,
    key: &str,
    size: Option<u64>,
    durable_len: u64,
    validator: Option<&str>,
) -> Result<(), DownloadError> {
    j.connection()
        .execute(
            "UPDATE packages SET size = ?2, durable_len = ?3, validator = ?4, updated_unix = ?5
             WHERE key = ?1 AND verified = 0",
            params![
                key,
                size.map(|s| s as i64),
                durable_len as i64,
                validator,
                now_unix()
            ],
        )
        .map_err(store_err)?;
    Ok(())
}

/// Marks a package complete and verified.
pub(crate) fn put_verified(
    j: &mut Journal,
    key: &str,
    size: u64,
    sha256: &str,
) -> Result<(), DownloadError> {
    j.connection()
        .execute(
            "INSERT INTO packages (key, size, durable_len, verified, sha256, updated_unix)
             VALUES (?1, ?2, ?2, 1, ?3, ?4)
             ON CONFLICT(key) DO UPDATE SET size = excluded.size,
               durable_len = excluded.durable_len, verified = 1, sha256 = excluded.sha256,
               updated_unix = excluded.updated_unix",
            params![key, size as i64, sha256, now_unix()],
        )
        .map_err(store_err)?;
    Ok(())
}

pub(crate) fn delete(j: &mut Journal, key: &str) -> Result<(), DownloadError> {
    j.connection()
        .execute("DELETE FROM packages WHERE key = ?1", [key])
        .map_err(store_err)?;
    Ok(())
}

pub(crate) fn claim(j: &mut Journal, key: &str, job: &str) -> Result<(), DownloadError> {
    j.connection()
        .execute(
            "INSERT OR IGNORE INTO package_claims (key, job) VALUES (?1, ?2)",
            params![key, job],
        )
        .map_err(store_err)?;
    Ok(())
}

/// Drops a claim; returns how many claims on `key` remain.
pub(crate) fn unclaim(j: &mut Journal, key: &str, job: &str) -> Result<u64, DownloadError> {
    let c = j.connection();
    c.execute(
        "DELETE FROM package_claims WHERE key = ?1 AND job = ?2",
        params![key, job],
    )
    .map_err(store_err)?;
    c.query_row(
        "SELECT COUNT(*) FROM package_claims WHERE key = ?1",
        [key],
        |r| r.get::<_, i64>(0),
    )
    .map(|n| n as u64)
    .map_err(store_err)
}

/// Every claim, as (key, job).
pub(crate) fn claims(j: &mut Journal) -> Result<Vec<(String, String)>, DownloadError> {
    let c = j.connection();
    let mut st = c
        .prepare("SELECT key, job FROM package_claims ORDER BY key, job")
        .map_err(store_err)?;
    let rows = st
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .map_err(store_err)?;
    rows.collect::<Result<Vec<_>, _>>().map_err(store_err)
}

/// Deletes the rows of packages no job claims; returns their keys.
pub(crate) fn delete_unclaimed(j: &mut Journal) -> Result<Vec<String>, DownloadError> {
    let tx = j.connection().transaction().map_err(store_err)?;
    let keys = {
        let mut st = tx
            .prepare("SELECT key FROM packages WHERE key NOT IN (SELECT key FROM package_claims)")
            .map_err(store_err)?;
        let rows = st
            .query_map([], |r| r.get::<_, String>(0))
            .map_err(store_err)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(store_err)?
    };
    tx.execute(
        "DELETE FROM packages WHERE key NOT IN (SELECT key FROM package_claims)",
        [],
    )
    .map_err(store_err)?;
    tx.commit().map_err(store_err)?;
    Ok(keys)
}
