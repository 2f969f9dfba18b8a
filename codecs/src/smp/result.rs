//! SMP failures mapped to IoTDA `upgrade_progress_report` result codes.
//!
//! Codes: docs/protocols/iotda.md §4.6 (IoTDA `iot_06_v5_3031`: 5 insufficient storage,
//! 6 download timeout, 7 package verification failure, 8 unsupported package
//! type, 9 insufficient memory, 10 installation failure, 255 internal
//! exception). Descriptions: docs/protocols/iotda.md §9, the platform's own wording for
//! device-reported causes, used where one fits.
//!
//! SMP v2 image-group codes are precise. SMP v1 `rc` values are lossy:
//! Zephyr's `img_mgmt_translate_error_code` (`img_mgmt.c`, with
//! `CONFIG_MCUMGR_SMP_SUPPORT_ORIGINAL_PROTOCOL`) folds NO_FREE_SLOT,
//! CURRENT_VERSION_IS_NEWER and IMAGE_ALREADY_PENDING into EBADSTATE, and
//! header, hash and offset errors into EINVAL, so those v1 codes map to 255.

use super::activate::ActivateError;
use super::message::SmpErr;
use super::upload::UploadError;
use crate::iotda::result::{
    ResultCode, DESC_CONNECTION_LOST, DESC_INTEGRITY, DESC_NO_MEMORY, DESC_NO_STORAGE,
    DESC_UNSUPPORTED_TYPE, DESC_UPDATE_FAILED,
};

/// An IoTDA result code with the platform's description when one fits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IotdaResult {
    /// `result_code` for `upgrade_progress_report`.
    pub code: ResultCode,
    /// docs/protocols/iotda.md §9 wording for `description`, when one fits.
    pub description: Option<&'static str>,
}

const fn r(code: ResultCode, description: Option<&'static str>) -> IotdaResult {
    IotdaResult { code, description }
}

/// Which error a table row is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrKey {
    /// SMP v1 / SMP-level `rc` (`MGMT_ERR_*`).
    Legacy(i64),
    /// SMP v2 image group `err.rc` (`IMG_MGMT_ERR_*`).
    Image(i64),
}

/// One mapping with its reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Row {
    /// The SMP error.
    pub key: ErrKey,
    /// The IoTDA result.
    pub result: IotdaResult,
    /// Why (source or inference).
    pub why: &'static str,
}

/// The mapping table. Errors not listed map to 255 with no description.
pub const TABLE: &[Row] = &[
    Row {
        key: ErrKey::Image(9),
        result: r(ResultCode::LOW_SPACE, Some(DESC_NO_STORAGE)),
        why: "NO_FREE_SLOT: no slot for the image",
    },
    Row {
        key: ErrKey::Image(30),
        result: r(ResultCode::LOW_SPACE, Some(DESC_NO_STORAGE)),
        why: "INVALID_IMAGE_TOO_LARGE: len exceeds the slot (img_mgmt_upload_inspect)",
    },
    Row {
        key: ErrKey::Image(15),
        result: r(ResultCode::LOW_MEMORY, Some(DESC_NO_MEMORY)),
        why: "NO_FREE_MEMORY",
    },
    Row {
        key: ErrKey::Image(24),
        result: r(ResultCode::CHECK_FAIL, Some(DESC_INTEGRITY)),
        why: "INVALID_HASH: sha rejected",
    },
    Row {
        key: ErrKey::Image(4),
        result: r(ResultCode::CHECK_FAIL, Some(DESC_INTEGRITY)),
        why: "NO_TLVS: written image lacks its TLV area [inference: corrupt package]",
    },
    Row {
        key: ErrKey::Image(5),
        result: r(ResultCode::CHECK_FAIL, Some(DESC_INTEGRITY)),
        why: "INVALID_TLV [inference: corrupt package]",
    },
    Row {
        key: ErrKey::Image(6),
        result: r(ResultCode::CHECK_FAIL, Some(DESC_INTEGRITY)),
        why: "TLV_MULTIPLE_HASHES_FOUND [inference: corrupt package]",
    },
    Row {
        key: ErrKey::Image(7),
        result: r(ResultCode::CHECK_FAIL, Some(DESC_INTEGRITY)),
        why: "TLV_INVALID_SIZE [inference: corrupt package]",
    },
    Row {
        key: ErrKey::Image(8),
        result: r(ResultCode::CHECK_FAIL, Some(DESC_INTEGRITY)),
        why: "HASH_NOT_FOUND [inference: corrupt package]",
    },
    Row {
        key: ErrKey::Image(22),
        result: r(ResultCode::UNKNOWN_TYPE, Some(DESC_UNSUPPORTED_TYPE)),
        why: "INVALID_IMAGE_HEADER: first chunk is not an MCUboot header",
    },
    Row {
        key: ErrKey::Image(23),
        result: r(ResultCode::UNKNOWN_TYPE, Some(DESC_UNSUPPORTED_TYPE)),
        why: "INVALID_IMAGE_HEADER_MAGIC: no 0x96f3b83d magic",
    },
    Row {
        key: ErrKey::Image(29),
        result: r(ResultCode::UNKNOWN_TYPE, Some(DESC_UNSUPPORTED_TYPE)),
        why: "INVALID_IMAGE_VECTOR_TABLE: not an image for this device",
    },
    Row {
        key: ErrKey::Image(12),
        result: r(ResultCode::INSTALL_FAIL, Some(DESC_UPDATE_FAILED)),
        why: "FLASH_WRITE_FAILED",
    },
    Row {
        key: ErrKey::Image(13),
        result: r(ResultCode::INSTALL_FAIL, Some(DESC_UPDATE_FAILED)),
        why: "FLASH_ERASE_FAILED",
    },
    Row {
        key: ErrKey::Image(2),
        result: r(ResultCode::INSTALL_FAIL, Some(DESC_UPDATE_FAILED)),
        why: "FLASH_CONFIG_QUERY_FAIL",
    },
    Row {
        key: ErrKey::Image(10),
        result: r(ResultCode::INSTALL_FAIL, Some(DESC_UPDATE_FAILED)),
        why: "FLASH_OPEN_FAILED",
    },
    Row {
        key: ErrKey::Image(11),
        result: r(ResultCode::INSTALL_FAIL, Some(DESC_UPDATE_FAILED)),
        why: "FLASH_READ_FAILED",
    },
    Row {
        key: ErrKey::Image(18),
        result: r(ResultCode::INSTALL_FAIL, Some(DESC_UPDATE_FAILED)),
        why: "FLASH_AREA_DEVICE_NULL",
    },
    Row {
        key: ErrKey::Legacy(2),
        result: r(ResultCode::LOW_MEMORY, Some(DESC_NO_MEMORY)),
        why: "ENOMEM: Zephyr's v1 form of NO_FREE_MEMORY",
    },
    Row {
        key: ErrKey::Legacy(9),
        result: r(ResultCode::CHECK_FAIL, Some(DESC_INTEGRITY)),
        why: "ECORRUPT",
    },
];

/// The IoTDA result for an SMP error (group errors other than the image
/// group, and codes not in [`TABLE`], give 255).
pub fn for_smp(err: &SmpErr) -> IotdaResult {
    let key = match *err {
        SmpErr::Legacy { rc } => ErrKey::Legacy(rc),
        SmpErr::Group { group: 1, rc } => ErrKey::Image(rc),
        SmpErr::Group { .. } => return r(ResultCode::INNER_ERROR, None),
    };
    TABLE
        .iter()
        .find(|row| row.key == key)
        .map_or(r(ResultCode::INNER_ERROR, None), |row| row.result)
}

/// The IoTDA result for a failed upload.
pub fn for_upload(err: &UploadError) -> IotdaResult {
    match err {
        UploadError::Device(e) => for_smp(e),
        // The delivery stopped making progress: the closest documented cause
        // is LwM2M 4 "connection lost", result 6 (docs/protocols/iotda.md §9).
        UploadError::Timeout { .. }
        | UploadError::Stalled { .. }
        | UploadError::TooManyRestarts(_) => {
            r(ResultCode::DOWNLOAD_TIMEOUT, Some(DESC_CONNECTION_LOST))
        }
        UploadError::Mismatch => r(ResultCode::CHECK_FAIL, Some(DESC_INTEGRITY)),
        UploadError::EmptyImage
        | UploadError::OffsetBeyondEnd { .. }
        | UploadError::BufferTooSmall { .. }
        | UploadError::Malformed(_) => r(ResultCode::INNER_ERROR, None),
    }
}

/// The IoTDA result for a failed activation. After the image is written,
/// a device that does not end up running the target version is an
/// installation failure (10).
pub fn for_activate(err: &ActivateError) -> IotdaResult {
    match err {
        ActivateError::Device { err, .. } => for_smp(err),
        ActivateError::Timeout { .. } | ActivateError::Malformed { .. } => {
            r(ResultCode::INNER_ERROR, None)
        }
        ActivateError::NoCandidate
        | ActivateError::CandidateVersion { .. }
        | ActivateError::NotPending
        | ActivateError::NoAnswerAfterReset { .. }
        | ActivateError::NoActiveImage
        | ActivateError::VersionMismatch { .. }
        | ActivateError::NotConfirmed => r(ResultCode::INSTALL_FAIL, Some(DESC_UPDATE_FAILED)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn brief_mapping() {
        let img = |rc| for_smp(&SmpErr::Group { group: 1, rc }).code.get();
        assert_eq!(img(9), 5);
        assert_eq!(img(30), 5);
        assert_eq!(img(24), 7);
        assert_eq!(img(22), 8);
        assert_eq!(img(23), 8);
        assert_eq!(img(12), 10);
        assert_eq!(img(13), 10);
        assert_eq!(img(28), 255);
        assert_eq!(for_smp(&SmpErr::Group { group: 0, rc: 9 }).code.get(), 255);
        assert_eq!(for_smp(&SmpErr::Legacy { rc: 6 }).code.get(), 255);
        assert_eq!(
            for_upload(&UploadError::Mismatch),
            r(ResultCode::CHECK_FAIL, Some(DESC_INTEGRITY))
        );
        assert_eq!(
            for_upload(&UploadError::Timeout {
                off: 0,
                attempts: 5
            })
            .code
            .get(),
            6
        );
        assert_eq!(
            for_activate(&ActivateError::NoAnswerAfterReset { attempts: 3 })
                .code
                .get(),
            10
        );
    }

    #[test]
    fn table_has_one_row_per_key_and_valid_codes() {
        for (i, a) in TABLE.iter().enumerate() {
            assert!([5, 6, 7, 8, 9, 10, 255].contains(&a.result.code.get()));
            assert!(
                TABLE[i + 1..].iter().all(|b| b.key != a.key),
                "{:?} twice",
                a.key
            );
        }
    }
}
