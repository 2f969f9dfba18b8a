//! `upgrade_progress_report` result codes and failure descriptions.
//!
//! Codes: [DOC:iot_06_v5_3031], identical in the Java, Python, C# and Go SDKs
//! (docs/protocols/iotda.md §4.6). The [C] SDK rejects any other value. Descriptions: the
//! platform's own failure-cause wording (docs/protocols/iotda.md §9), so that an operator
//! sees on the console the cause IoTDA documents.

/// 0: success.
pub const SUCCESS: u16 = 0;
/// 1: device in use (another task is in progress).
pub const BUSY: u16 = 1;
/// 2: poor signal.
pub const SIGNAL_BAD: u16 = 2;
/// 3: already the latest version.
pub const NO_NEED: u16 = 3;
/// 4: low battery.
pub const LOW_POWER: u16 = 4;
/// 5: insufficient storage space.
pub const LOW_SPACE: u16 = 5;
/// 6: download timeout.
pub const DOWNLOAD_TIMEOUT: u16 = 6;
/// 7: package verification failure.
pub const CHECK_FAIL: u16 = 7;
/// 8: unsupported package type.
pub const UNKNOWN_TYPE: u16 = 8;
/// 9: insufficient memory.
pub const LOW_MEMORY: u16 = 9;
/// 10: package installation failure.
pub const INSTALL_FAIL: u16 = 10;
/// 255: internal exception.
pub const INNER_ERROR: u16 = 255;

/// Whether `code` is one the platform documents (0–10 or 255).
pub fn is_valid(code: u16) -> bool {
    code <= 10 || code == 255
}

/// "Task Conflict": another task is in progress (§9, platform side).
pub const DESC_TASK_CONFLICT: &str = "Task Conflict";
/// LwM2M result 2 (§9).
pub const DESC_NO_STORAGE: &str = "Not enough storage for the new firmware package";
/// LwM2M result 3 (§9).
pub const DESC_NO_MEMORY: &str = "Out of memory during downloading process";
/// LwM2M result 4 (§9).
pub const DESC_CONNECTION_LOST: &str = "Connection lost during downloading process";
/// LwM2M result 5 (§9).
pub const DESC_INTEGRITY: &str = "Integrity check failure for new downloaded package";
/// LwM2M result 6 (§9).
pub const DESC_UNSUPPORTED_TYPE: &str = "Unsupported package type";
/// LwM2M result 7 (§9).
pub const DESC_INVALID_URI: &str = "Invalid URI";
/// LwM2M result 8 (§9).
pub const DESC_UPDATE_FAILED: &str = "Firmware update failed";
