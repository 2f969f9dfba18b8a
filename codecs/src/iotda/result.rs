//! `upgrade_progress_report` result codes and failure descriptions.
//!
//! Codes: [DOC:iot_06_v5_3031], identical in the Java, Python, C# and Go SDKs
//! (docs/protocols/iotda.md §4.6). The [C] SDK rejects any other value. Descriptions: the
//! platform's own failure-cause wording (docs/protocols/iotda.md §9), so that an operator
//! sees on the console the cause IoTDA documents.

use std::fmt;

/// An `upgrade_progress_report` `result_code` the platform documents: 0 to 10
/// or 255 (docs/protocols/iotda.md §4.6). No other value can be built, so a
/// report never carries a code the platform (or the C SDK,
/// `iota_payload.c:416`) would reject.
///
/// Serialised as the plain integer (`"result_code":10`); deserialising any
/// other integer fails. [`fmt::Display`] writes the number too, so log lines
/// keep `code=10`; [`ResultCode::description`] gives the words.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(into = "u8", try_from = "u8")]
pub struct ResultCode(u8);

impl ResultCode {
    /// 0: success.
    pub const SUCCESS: ResultCode = ResultCode(0);
    /// 1: device in use (another task is in progress).
    pub const BUSY: ResultCode = ResultCode(1);
    /// 2: poor signal.
    pub const SIGNAL_BAD: ResultCode = ResultCode(2);
    /// 3: already the latest version.
    pub const NO_NEED: ResultCode = ResultCode(3);
    /// 4: low battery.
    pub const LOW_POWER: ResultCode = ResultCode(4);
    /// 5: insufficient storage space.
    pub const LOW_SPACE: ResultCode = ResultCode(5);
    /// 6: download timeout.
    pub const DOWNLOAD_TIMEOUT: ResultCode = ResultCode(6);
    /// 7: package verification failure.
    pub const CHECK_FAIL: ResultCode = ResultCode(7);
    /// 8: unsupported package type.
    pub const UNKNOWN_TYPE: ResultCode = ResultCode(8);
    /// 9: insufficient memory.
    pub const LOW_MEMORY: ResultCode = ResultCode(9);
    /// 10: package installation failure.
    pub const INSTALL_FAIL: ResultCode = ResultCode(10);
    /// 255: internal exception.
    pub const INNER_ERROR: ResultCode = ResultCode(255);

    /// The code for `code` when the platform documents it (0–10 or 255),
    /// else `None`.
    pub const fn new(code: u8) -> Option<ResultCode> {
        if code <= 10 || code == 255 {
            Some(ResultCode(code))
        } else {
            None
        }
    }

    /// The number sent as `result_code`.
    pub const fn get(self) -> u8 {
        self.0
    }

    /// Whether this is [`ResultCode::SUCCESS`].
    pub const fn is_success(self) -> bool {
        self.0 == 0
    }

    /// The failure description an operator sees for this code: the
    /// platform's own wording from docs/protocols/iotda.md §9 where it has
    /// one (the `DESC_*` constants), else the meaning from the §4.6 table.
    pub const fn description(self) -> &'static str {
        match self {
            ResultCode::SUCCESS => "upgrade success",
            ResultCode::BUSY => "device in use",
            ResultCode::SIGNAL_BAD => "poor signal",
            ResultCode::NO_NEED => "already the latest version",
            ResultCode::LOW_POWER => "low battery",
            ResultCode::LOW_SPACE => DESC_NO_STORAGE,
            ResultCode::DOWNLOAD_TIMEOUT => DESC_CONNECTION_LOST,
            ResultCode::CHECK_FAIL => DESC_INTEGRITY,
            ResultCode::UNKNOWN_TYPE => DESC_UNSUPPORTED_TYPE,
            ResultCode::LOW_MEMORY => DESC_NO_MEMORY,
            ResultCode::INSTALL_FAIL => DESC_UPDATE_FAILED,
            _ => "internal exception",
        }
    }
}

impl fmt::Display for ResultCode {
    /// The number, as it goes on the wire.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl From<ResultCode> for u8 {
    fn from(code: ResultCode) -> u8 {
        code.0
    }
}

impl From<ResultCode> for i64 {
    fn from(code: ResultCode) -> i64 {
        i64::from(code.0)
    }
}

/// An integer that is not a documented result code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{0} is not an IoTDA result code (0 to 10 or 255)")]
pub struct UndocumentedCode(pub i64);

impl TryFrom<u8> for ResultCode {
    type Error = UndocumentedCode;

    fn try_from(code: u8) -> Result<Self, Self::Error> {
        ResultCode::new(code).ok_or(UndocumentedCode(code.into()))
    }
}

impl TryFrom<i64> for ResultCode {
    type Error = UndocumentedCode;

    fn try_from(code: i64) -> Result<Self, Self::Error> {
        u8::try_from(code)
            .ok()
            .and_then(ResultCode::new)
            .ok_or(UndocumentedCode(code))
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_documented_codes_exist() {
        for n in 0..=u8::MAX {
            let documented = n <= 10 || n == 255;
            assert_eq!(ResultCode::new(n).is_some(), documented, "{n}");
            if let Some(c) = ResultCode::new(n) {
                assert_eq!(c.get(), n);
                assert_eq!(c.to_string(), n.to_string());
            }
        }
        assert_eq!(ResultCode::try_from(256i64), Err(UndocumentedCode(256)));
        assert_eq!(ResultCode::try_from(-1i64), Err(UndocumentedCode(-1)));
        assert_eq!(ResultCode::try_from(255i64), Ok(ResultCode::INNER_ERROR));
        assert_eq!(
            ResultCode::try_from(11u8).unwrap_err().to_string(),
            "11 is not an IoTDA result code (0 to 10 or 255)"
        );
    }

    #[test]
    fn constants_carry_the_documented_numbers() {
        let all = [
            (ResultCode::SUCCESS, 0),
            (ResultCode::BUSY, 1),
            (ResultCode::SIGNAL_BAD, 2),
            (ResultCode::NO_NEED, 3),
            (ResultCode::LOW_POWER, 4),
            (ResultCode::LOW_SPACE, 5),
            (ResultCode::DOWNLOAD_TIMEOUT, 6),
            (ResultCode::CHECK_FAIL, 7),
            (ResultCode::UNKNOWN_TYPE, 8),
            (ResultCode::LOW_MEMORY, 9),
            (ResultCode::INSTALL_FAIL, 10),
            (ResultCode::INNER_ERROR, 255),
        ];
        for (code, n) in all {
            assert_eq!(code.get(), n);
        }
        assert!(ResultCode::SUCCESS.is_success() && !ResultCode::BUSY.is_success());
    }

    #[test]
    fn descriptions_use_the_platform_wording() {
        assert_eq!(ResultCode::CHECK_FAIL.description(), DESC_INTEGRITY);
        assert_eq!(ResultCode::LOW_SPACE.description(), DESC_NO_STORAGE);
        assert_eq!(ResultCode::INSTALL_FAIL.description(), DESC_UPDATE_FAILED);
        assert_eq!(
            ResultCode::NO_NEED.description(),
            "already the latest version"
        );
        assert_eq!(ResultCode::INNER_ERROR.description(), "internal exception");
    }

    #[test]
    fn serde_is_the_plain_integer() {
        assert_eq!(
            serde_json::to_string(&ResultCode::INSTALL_FAIL).unwrap(),
            "10"
        );
        assert_eq!(
            serde_json::from_str::<ResultCode>("255").unwrap(),
            ResultCode::INNER_ERROR
        );
        assert!(serde_json::from_str::<ResultCode>("11").is_err());
        assert!(serde_json::from_str::<ResultCode>("256").is_err());
    }
}
