//! Why a package could not be obtained. The OTA engine turns it into the
//! IoTDA result code and description it reports for every child that needed
//! it (`ota::verdict`, the one place codes are chosen).

use otabridge_codecs::download::PlanError;

/// A download (or a wait on one) that failed for good. Transient failures
/// (a dropped connection, a stalled body, a 5xx) are retried inside the
/// downloader and only surface as [`DownloadError::Timeout`] once the
/// deadline has passed.
///
/// Cloneable, because every job waiting on the same package gets the same
/// error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DownloadError {
    /// The URL cannot be used: not `https://` (or `http://` without
    /// `download.allow_http`), malformed, or the server says it does not exist.
    #[error("invalid package URL: {0}")]
    InvalidUrl(String),
    /// `sign` is not 64 hex characters.
    #[error("invalid sign (expected 64 hex characters of SHA-256): {0:?}")]
    InvalidSign(String),
    /// `file_size` is above `download.max_package_bytes`.
    #[error("package of {size} bytes is above download.max_package_bytes = {max}")]
    TooLargeForConfig {
        /// The announced size.
        size: u64,
        /// The configured limit.
        max: u64,
    },
    /// Not enough free disk space for the rest of the package plus a margin.
    #[error(
        "package needs {needed} more bytes but the disk has {available} free (margin {margin})"
    )]
    NoSpace {
        /// Bytes still to download.
        needed: u64,
        /// Free bytes for unprivileged users on the package store's disk.
        available: u64,
        /// Bytes kept free beyond the package.
        margin: u64,
    },
    /// The server sent more bytes than `file_size`, or declared a length that
    /// disagrees with it.
    #[error("server's length disagrees with file_size {expected}: {detail}")]
    LengthMismatch {
        /// The announced `file_size`.
        expected: u64,
        /// What the server said or did.
        detail: String,
    },
    /// The whole file arrived but its SHA-256 is not `sign`. The file is deleted.
    #[error("SHA-256 of the downloaded package is {actual}, the event's sign is {expected}")]
    Integrity {
        /// The event's sign (lower case).
        expected: String,
        /// What the file hashes to.
        actual: String,
    },
    /// The server refused the token (401/403) several times in a row: it has
    /// expired or was revoked; only a new upgrade event brings a new one.
    #[error("the server refused the download token with HTTP {status} {attempts} times")]
    TokenRejected {
        /// The last status (401 or 403).
        status: u16,
        /// Consecutive refusals.
        attempts: u32,
    },
    /// The server answered with an error status that retrying will not fix.
    #[error("the server answered HTTP {status}")]
    HttpStatus {
        /// The status code.
        status: u16,
    },
    /// A redirect the downloader will not follow: too many hops, no
    /// `Location`, or a target that is not an acceptable package URL (an
    /// `http://` target without `download.allow_http`).
    #[error("redirect refused: {0}")]
    Redirect(String),
    /// The deadline (24 h after the event, or the token's expiry) passed while
    /// the download kept failing; the last failure is kept.
    #[error("download deadline passed after {attempts} attempts; last failure: {last}")]
    Timeout {
        /// Attempts made.
        attempts: u32,
        /// The last transient failure.
        last: String,
    },
    /// The server's certificate failed verification (unknown CA, expired,
    /// or a name mismatch while `download.verify_hostname` is on). Retrying
    /// does not change a certificate, so this fails at once.
    #[error("server certificate refused: {0}")]
    Certificate(String),
    /// The TLS configuration (`download.ca_file`) cannot be used.
    #[error("TLS configuration: {0}")]
    Tls(String),
    /// The package store's disk filled up while the package or its
    /// journal row was being written (ENOSPC, EDQUOT, SQLITE_FULL): the
    /// `.part` file keeps what is durable, and a new upgrade event resumes
    /// once space is back.
    #[error("the gateway's disk is full: {0}")]
    DiskFull(String),
    /// The package store's disk or journal failed.
    #[error("package store: {0}")]
    Store(String),
    /// No job needs the package any more: it was released while downloading.
    #[error("the download was cancelled: no job needs the package any more")]
    Cancelled,
}

impl From<PlanError> for DownloadError {
    fn from(e: PlanError) -> DownloadError {
        match e {
            PlanError::LengthMismatch { expected, detail } => {
                DownloadError::LengthMismatch { expected, detail }
            }
            PlanError::TooLarge { size, max } => DownloadError::TooLargeForConfig { size, max },
            PlanError::HttpStatus { status } => DownloadError::HttpStatus { status },
            PlanError::Redirect(why) => DownloadError::Redirect(why),
            PlanError::TokenRejected { status, attempts } => {
                DownloadError::TokenRejected { status, attempts }
            }
        }
    }
}
