//! The event envelope and the typed `$ota` / `$sub_device_manager` events
//! (docs/protocols/iotda.md §3–5).
//!
//! One envelope carries a list of service events on `sys/events/up` and
//! `sys/events/down`:
//! `{"object_device_id"?, "services":[{"service_id","event_type","event_time"?,"event_id"?,"paras"}]}`.
//! Unknown fields are ignored everywhere; an event type this module does not
//! know is returned as [`Event::Unknown`], not as an error, so that new
//! platform features never break a running gateway.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;

use super::result::ResultCode;
use super::EventTime;

/// `$ota`.
pub const SERVICE_OTA: &str = "$ota";
/// `$sub_device_manager`.
pub const SERVICE_SUB_DEVICE_MANAGER: &str = "$sub_device_manager";

/// `version_query` paras (down, [DOC:iot_06_v5_3028]); all optional.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct VersionQuery {
    /// Batch task id in gateway mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_id: Option<String>,
    /// Number of children of this gateway in the batch task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub_device_count: Option<u32>,
    /// Extra information given when the task was created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_ext_info: Option<Value>,
}

/// `version_report` paras (up, [DOC:iot_06_v5_3029]).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct VersionReport {
    /// Software version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sw_version: Option<String>,
    /// Firmware version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fw_version: Option<String>,
}

/// Firmware or software: which version field the task is about
/// ([DOC:bestpractice-iothub/iot_bp_0039]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UpgradeKind {
    /// `firmware_upgrade[_v2]`: `fw_version` matters.
    Firmware,
    /// `software_upgrade[_v2]`: `sw_version` matters.
    Software,
}

impl UpgradeKind {
    /// `"firmware"` or `"software"` (logs, the journal's `kind` column).
    pub fn name(self) -> &'static str {
        match self {
            UpgradeKind::Firmware => "firmware",
            UpgradeKind::Software => "software",
        }
    }

    /// The kind [`UpgradeKind::name`] gives `name`.
    pub fn from_name(name: &str) -> Option<UpgradeKind> {
        match name {
            "firmware" => Some(UpgradeKind::Firmware),
            "software" => Some(UpgradeKind::Software),
            _ => None,
        }
    }
}

/// `firmware_upgrade` / `software_upgrade` (v1, package in IoTDA, fetched
/// with `Authorization: Bearer <access_token>`) and the `_v2` variants
/// (pre-signed OBS URL, no header) [DOC:iot_06_v5_3030]; docs/protocols/iotda.md §4.4–4.5.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Upgrade {
    /// Target version.
    pub version: String,
    /// Download URL.
    pub url: String,
    /// Package size in bytes; 64-bit (the C SDK's 32-bit parse is a bug).
    pub file_size: u64,
    /// Package file name (informational only: never used as a path).
    #[serde(default)]
    pub file_name: String,
    /// Bearer token (v1 only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_token: Option<String>,
    /// Validity of the token in seconds from the event (86400 in the doc).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<u64>,
    /// SHA-256 of the package, 64 hex characters (any case).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sign: Option<String>,
    /// Free text pushed to the device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_info: Option<String>,
    /// Batch task id in gateway mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_id: Option<String>,
    /// Number of children of this gateway in the batch task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub_device_count: Option<u32>,
    /// Extra information given when the task was created (an object).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_ext_info: Option<Value>,
}

/// `upgrade_progress_report` paras (up, [DOC:iot_06_v5_3031]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProgressReport {
    /// See [`super::result`].
    pub result_code: ResultCode,
    /// 0–100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<u8>,
    /// The device's **current** version.
    pub version: String,
    /// Status text, for example the failure cause.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

impl ProgressReport {
    /// Whether this report ends the upgrade: a failure, or success at 100 %.
    pub fn is_terminal(&self) -> bool {
        !self.result_code.is_success() || self.progress == Some(100)
    }
}

/// ONLINE or OFFLINE.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Status {
    /// The child answers.
    Online,
    /// The child does not answer.
    Offline,
}

/// One entry of `device_statuses`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceStatus {
    /// The child's device id.
    pub device_id: String,
    /// Its state.
    pub status: Status,
}

/// `sub_device_update_status` paras (up, 1–100 entries, [DOC:iot_06_v5_3022]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateStatus {
    /// The children's states.
    pub device_statuses: Vec<DeviceStatus>,
}

/// The most entries one `sub_device_update_status` may carry.
pub const MAX_STATUSES_PER_EVENT: usize = 100;

/// A child the platform could not process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailedDevice {
    /// The child's device id (absent for add failures, which name node_id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    /// Node id (add failures).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,
    /// Platform error code.
    #[serde(default)]
    pub error_code: String,
    /// Platform error text.
    #[serde(default)]
    pub error_msg: String,
}

/// `sub_device_update_status` response paras (down, [DOC:iot_06_v5_30233]).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct UpdateStatusResponse {
    /// Children whose state was recorded.
    #[serde(default)]
    pub successful_devices: Vec<DeviceStatus>,
    /// Children whose state was refused.
    #[serde(default)]
    pub failed_devices: Vec<FailedDevice>,
}

/// A child as the platform describes it ([DOC:iot_06_v5_3019]).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct DeviceInfo {
    /// Gateway id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_device_id: Option<String>,
    /// Node id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,
    /// Device id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    /// Display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Product id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub product_id: Option<String>,
    /// Firmware version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fw_version: Option<String>,
    /// Software version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sw_version: Option<String>,
    /// ONLINE / OFFLINE as text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
}

/// `add_sub_device_notify` / `delete_sub_device_notify` paras (down).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubDeviceNotify {
    /// The children added or deleted.
    pub devices: Vec<DeviceInfo>,
    /// Child-list version, to send back in `sub_device_sync_request`.
    #[serde(default)]
    pub version: i64,
}

/// `sub_device_sync_request` paras (up, [DOC:iot_06_v5_3021]).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SyncRequest {
    /// The last child-list version received; absent for a full sync.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<i64>,
}

/// `add_sub_device_response` / `delete_sub_device_response` paras (down).
/// Their lists differ in shape (objects or strings), so they stay JSON.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct SubDeviceResponse {
    /// Children processed.
    #[serde(default)]
    pub successful_devices: Vec<Value>,
    /// Children refused.
    #[serde(default)]
    pub failed_devices: Vec<FailedDevice>,
}

/// One service event, typed.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// `$ota` `version_query` (down).
    VersionQuery(VersionQuery),
    /// `$ota` `version_report` (up).
    VersionReport(VersionReport),
    /// `$ota` `{firmware,software}_upgrade[_v2]` (down).
    Upgrade {
        /// Firmware or software.
        kind: UpgradeKind,
        /// `_v2`: pre-signed URL, no bearer token.
        v2: bool,
        /// The paras.
        upgrade: Upgrade,
    },
    /// `$ota` `upgrade_progress_report` (up).
    ProgressReport(ProgressReport),
    /// `$sub_device_manager` `sub_device_update_status` (up).
    UpdateStatus(UpdateStatus),
    /// The platform's answer to `sub_device_update_status` (down). The doc
    /// table says the event type is `sub_device_update_status`, its example
    /// and the C and Go SDKs say `sub_device_update_status_response`; both
    /// are accepted (docs/protocols/iotda.md §5.4, §7.2).
    UpdateStatusResponse(UpdateStatusResponse),
    /// `$sub_device_manager` `add_sub_device_notify` (down).
    AddSubDeviceNotify(SubDeviceNotify),
    /// `$sub_device_manager` `delete_sub_device_notify` (down).
    DeleteSubDeviceNotify(SubDeviceNotify),
    /// `$sub_device_manager` `sub_device_sync_request` (up).
    SyncRequest(SyncRequest),
    /// `$sub_device_manager` `add_sub_device_response` (down).
    AddSubDeviceResponse(SubDeviceResponse),
    /// `$sub_device_manager` `delete_sub_device_response` (down).
    DeleteSubDeviceResponse(SubDeviceResponse),
    /// A service or event type this module does not know; kept whole.
    Unknown {
        /// Its service id.
        service_id: String,
        /// Its event type.
        event_type: String,
        /// Its paras.
        paras: Value,
    },
}

/// One received service event with its envelope fields.
#[derive(Debug, Clone, PartialEq)]
pub struct Incoming {
    /// Absent or the gateway's id: the event is for the gateway itself.
    pub object_device_id: Option<String>,
    /// The platform's `event_time`, when present and well-formed.
    pub event_time: Option<EventTime>,
    /// The event id, for request/response correlation.
    pub event_id: Option<String>,
    /// The event.
    pub event: Event,
}

/// A payload on `sys/events/*` that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    /// Not JSON, or not the envelope's shape.
    #[error("malformed event envelope: {0}")]
    Envelope(#[source] serde_json::Error),
    /// The envelope has no service events.
    #[error("event envelope has an empty services list")]
    NoServices,
    /// A service event that is not an object with string `service_id` and
    /// `event_type`.
    #[error("service event {index}: {why}")]
    Service {
        /// Its place in `services`, from 0.
        index: usize,
        /// What is wrong with it.
        why: String,
    },
    /// A known event type whose paras field is missing, of the wrong type,
    /// or holds a value otabridge cannot use.
    #[error("{service_id} {event_type}: bad paras: `{field}` {why}")]
    Field {
        /// Its service id.
        service_id: String,
        /// Its event type.
        event_type: String,
        /// The paras field.
        field: &'static str,
        /// What is wrong with it.
        why: String,
    },
    /// A known event type whose paras are missing a field or have a wrong type.
    #[error("{service_id} {event_type}: bad paras: {source}")]
    Paras {
        /// Its service id.
        service_id: String,
        /// Its event type.
        event_type: String,
        /// What serde found wrong, naming the field.
        #[source]
        source: serde_json::Error,
    },
}

#[derive(Serialize, Deserialize)]
struct RawEnvelope {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    object_device_id: Option<String>,
    services: Vec<RawService>,
}

#[derive(Serialize, Deserialize)]
struct RawService {
    service_id: String,
    event_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    event_time: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    event_id: Option<Value>,
    #[serde(default)]
    paras: Value,
}

/// The envelope as read: each service stays raw text, so that one bad
/// service does not hide the others, and a service's paras are read from
/// their own text (a duplicated field is then an error, not "the last one
/// wins", as it is in a [`Value`]).
#[derive(Deserialize)]
struct ReadEnvelope<'a> {
    #[serde(default)]
    object_device_id: Option<String>,
    #[serde(borrow)]
    services: Vec<&'a RawValue>,
}

/// One service as read: every field loose, so that what is known of an
/// unusable service (its type) can still be told.
#[derive(Deserialize)]
struct ReadService<'a> {
    service_id: Value,
    event_type: Value,
    #[serde(default)]
    event_time: Option<Value>,
    #[serde(default)]
    event_id: Option<Value>,
    #[serde(default, borrow)]
    paras: Option<&'a RawValue>,
}

/// A service's identity and paras, its names checked.
struct Service<'a> {
    service_id: String,
    event_type: String,
    /// The paras' JSON text; `{}` when absent or null.
    paras: &'a str,
}

fn paras<T: for<'de> Deserialize<'de>>(raw: &Service<'_>) -> Result<T, EventError> {
    serde_json::from_str(raw.paras).map_err(|source| EventError::Paras {
        service_id: raw.service_id.clone(),
        event_type: raw.event_type.clone(),
        source,
    })
}

fn paras_value(raw: &Service<'_>) -> Result<Value, EventError> {
    paras(raw)
}

/// What an upgrade's paras field must hold (docs/protocols/iotda.md §4.4).
#[derive(Clone, Copy)]
enum Want {
    Text,
    U64,
    U32,
    Any,
}

/// Whether an upgrade paras field must be there.
#[derive(Clone, Copy, PartialEq)]
enum Need {
    /// Present and not null.
    Required,
    /// May be absent, not null.
    Default,
    /// May be absent or null.
    Optional,
}

/// The upgrade paras fields: name, whether otabridge needs it, JSON type
/// ([`Upgrade`]'s fields). `file_name` and `sign` are mandatory in the
/// doc's table but otabridge does without them (the name is informational,
/// a missing sign skips the hash check), as it always has.
const UPGRADE_FIELDS: &[(&str, Need, Want)] = &[
    ("version", Need::Required, Want::Text),
    ("url", Need::Required, Want::Text),
    ("file_size", Need::Required, Want::U64),
    ("file_name", Need::Default, Want::Text),
    ("access_token", Need::Optional, Want::Text),
    ("expires", Need::Optional, Want::U64),
    ("sign", Need::Optional, Want::Text),
    ("custom_info", Need::Optional, Want::Text),
    ("task_id", Need::Optional, Want::Text),
    ("sub_device_count", Need::Optional, Want::U32),
    ("task_ext_info", Need::Optional, Want::Any),
];

/// The longest `version` otabridge takes: the platform's own limit is not
/// documented; a version is an operator's short label ("V2.0"), and this
/// bound keeps a hostile one out of the journal and the reports.
pub const MAX_VERSION_LEN: usize = 256;

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_u64() => "an unsigned integer",
        Value::Number(n) if n.is_i64() => "a negative integer",
        Value::Number(_) => "a number that is not a whole number below 2^64",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// Checks upgrade paras field by field, naming the first field that is
/// missing, of the wrong type or out of range, then reads them (which
/// catches a duplicated field), then checks the version's text.
fn upgrade_paras(raw: &Service<'_>) -> Result<Upgrade, EventError> {
    let bad = |field: &'static str, why: String| EventError::Field {
        service_id: raw.service_id.clone(),
        event_type: raw.event_type.clone(),
        field,
        why,
    };
    let v = paras_value(raw)?;
    let Some(obj) = v.as_object() else {
        return Err(bad(
            "paras",
            format!("is {}, expected an object", json_kind(&v)),
        ));
    };
    for &(name, need, want) in UPGRADE_FIELDS {
        let Some(f) = obj.get(name) else {
            if need == Need::Required {
                return Err(bad(name, "is missing".into()));
            }
            continue;
        };
        let ok = (f.is_null() && need == Need::Optional)
            || match want {
                Want::Text => f.is_string(),
                Want::U64 => f.is_u64(),
                Want::U32 => f.as_u64().is_some_and(|n| u32::try_from(n).is_ok()),
                Want::Any => true,
            };
        if !ok {
            let expected = match want {
                Want::Text => "a string",
                Want::U64 => "an unsigned 64-bit integer",
                Want::U32 => "an unsigned 32-bit integer",
                Want::Any => "any value",
            };
            let is = match f {
                Value::Number(n) if n.is_u64() && matches!(want, Want::U32) => {
                    format!("{n}, out of range")
                }
                _ => json_kind(f).to_owned(),
            };
            return Err(bad(name, format!("is {is}, expected {expected}")));
        }
    }
    let up: Upgrade = paras(raw)?;
    if up.version.trim().is_empty() {
        return Err(bad("version", "is empty".into()));
    }
    if up.version.len() > MAX_VERSION_LEN {
        return Err(bad(
            "version",
            format!(
                "is {} bytes long, more than {MAX_VERSION_LEN}",
                up.version.len()
            ),
        ));
    }
    if up.version.chars().any(char::is_control) {
        return Err(bad("version", "holds control characters".into()));
    }
    if up.url.trim().is_empty() {
        return Err(bad("url", "is empty".into()));
    }
    Ok(up)
}

impl Event {
    fn from_raw(raw: &Service<'_>) -> Result<Event, EventError> {
        let upgrade = |kind, v2| -> Result<Event, EventError> {
            Ok(Event::Upgrade {
                kind,
                v2,
                upgrade: upgrade_paras(raw)?,
            })
        };
        Ok(match (raw.service_id.as_str(), raw.event_type.as_str()) {
            (SERVICE_OTA, "version_query") => Event::VersionQuery(paras(raw)?),
            (SERVICE_OTA, "version_report") => Event::VersionReport(paras(raw)?),
            (SERVICE_OTA, "firmware_upgrade") => upgrade(UpgradeKind::Firmware, false)?,
            (SERVICE_OTA, "software_upgrade") => upgrade(UpgradeKind::Software, false)?,
            (SERVICE_OTA, "firmware_upgrade_v2") => upgrade(UpgradeKind::Firmware, true)?,
            (SERVICE_OTA, "software_upgrade_v2") => upgrade(UpgradeKind::Software, true)?,
            (SERVICE_OTA, "upgrade_progress_report") => Event::ProgressReport(paras(raw)?),
            (SERVICE_SUB_DEVICE_MANAGER, "sub_device_update_status") => {
                // The same event type names the request (up, `device_statuses`)
                // and, per the doc table, the response (down, successful/failed).
                if paras_value(raw)?.get("device_statuses").is_some() {
                    Event::UpdateStatus(paras(raw)?)
                } else {
                    Event::UpdateStatusResponse(paras(raw)?)
                }
            }
            (SERVICE_SUB_DEVICE_MANAGER, "sub_device_update_status_response") => {
                Event::UpdateStatusResponse(paras(raw)?)
            }
            (SERVICE_SUB_DEVICE_MANAGER, "add_sub_device_notify") => {
                Event::AddSubDeviceNotify(paras(raw)?)
            }
            (SERVICE_SUB_DEVICE_MANAGER, "delete_sub_device_notify") => {
                Event::DeleteSubDeviceNotify(paras(raw)?)
            }
            (SERVICE_SUB_DEVICE_MANAGER, "sub_device_sync_request") => {
                Event::SyncRequest(paras(raw)?)
            }
            (SERVICE_SUB_DEVICE_MANAGER, "add_sub_device_response") => {
                Event::AddSubDeviceResponse(paras(raw)?)
            }
            (SERVICE_SUB_DEVICE_MANAGER, "delete_sub_device_response") => {
                Event::DeleteSubDeviceResponse(paras(raw)?)
            }
            _ => Event::Unknown {
                service_id: raw.service_id.clone(),
                event_type: raw.event_type.clone(),
                paras: paras_value(raw)?,
            },
        })
    }

    /// The service id and event type this event is sent with.
    pub fn kind(&self) -> (&str, &str) {
        match self {
            Event::VersionQuery(_) => (SERVICE_OTA, "version_query"),
            Event::VersionReport(_) => (SERVICE_OTA, "version_report"),
            Event::Upgrade { kind, v2, .. } => (
                SERVICE_OTA,
                match (kind, v2) {
                    (UpgradeKind::Firmware, false) => "firmware_upgrade",
                    (UpgradeKind::Software, false) => "software_upgrade",
                    (UpgradeKind::Firmware, true) => "firmware_upgrade_v2",
                    (UpgradeKind::Software, true) => "software_upgrade_v2",
                },
            ),
            Event::ProgressReport(_) => (SERVICE_OTA, "upgrade_progress_report"),
            Event::UpdateStatus(_) => (SERVICE_SUB_DEVICE_MANAGER, "sub_device_update_status"),
            Event::UpdateStatusResponse(_) => (
                SERVICE_SUB_DEVICE_MANAGER,
                "sub_device_update_status_response",
            ),
            Event::AddSubDeviceNotify(_) => (SERVICE_SUB_DEVICE_MANAGER, "add_sub_device_notify"),
            Event::DeleteSubDeviceNotify(_) => {
                (SERVICE_SUB_DEVICE_MANAGER, "delete_sub_device_notify")
            }
            Event::SyncRequest(_) => (SERVICE_SUB_DEVICE_MANAGER, "sub_device_sync_request"),
            Event::AddSubDeviceResponse(_) => {
                (SERVICE_SUB_DEVICE_MANAGER, "add_sub_device_response")
            }
            Event::DeleteSubDeviceResponse(_) => {
                (SERVICE_SUB_DEVICE_MANAGER, "delete_sub_device_response")
            }
            Event::Unknown {
                service_id,
                event_type,
                ..
            } => (service_id, event_type),
        }
    }

    fn paras_value(&self) -> Value {
        let v = match self {
            Event::VersionQuery(p) => serde_json::to_value(p),
            Event::VersionReport(p) => serde_json::to_value(p),
            Event::Upgrade { upgrade, .. } => serde_json::to_value(upgrade),
            Event::ProgressReport(p) => serde_json::to_value(p),
            Event::UpdateStatus(p) => serde_json::to_value(p),
            Event::UpdateStatusResponse(p) => serde_json::to_value(p),
            Event::AddSubDeviceNotify(p) | Event::DeleteSubDeviceNotify(p) => {
                serde_json::to_value(p)
            }
            Event::SyncRequest(p) => serde_json::to_value(p),
            Event::AddSubDeviceResponse(p) | Event::DeleteSubDeviceResponse(p) => {
                serde_json::to_value(p)
            }
            Event::Unknown { paras, .. } => Ok(paras.clone()),
        };
        // These types hold only strings, numbers, lists and JSON values:
        // serialising them cannot fail.
        v.expect("event paras serialise to JSON")
    }
}

/// A service event that names its type but cannot be used: what is known of
/// it, so that the gateway can answer the device it is for (an upgrade gets
/// a failure report, not silence: issue 17, defect 2).
#[derive(Debug)]
pub struct Unusable {
    /// The envelope's `object_device_id`.
    pub object_device_id: Option<String>,
    /// Its service id, when it is a string.
    pub service_id: Option<String>,
    /// Its event type, when it is a string.
    pub event_type: Option<String>,
    /// Its event id, when it is a string.
    pub event_id: Option<String>,
    /// What is wrong with it.
    pub error: Box<EventError>,
}

impl Unusable {
    /// Firmware or software and `_v2`, when this is an upgrade event.
    pub fn upgrade(&self) -> Option<(UpgradeKind, bool)> {
        if self.service_id.as_deref() != Some(SERVICE_OTA) {
            return None;
        }
        match self.event_type.as_deref()? {
            "firmware_upgrade" => Some((UpgradeKind::Firmware, false)),
            "software_upgrade" => Some((UpgradeKind::Software, false)),
            "firmware_upgrade_v2" => Some((UpgradeKind::Firmware, true)),
            "software_upgrade_v2" => Some((UpgradeKind::Software, true)),
            _ => None,
        }
    }

    /// The failure to report for an unusable upgrade event: an unusable
    /// `url` is "Invalid URI" (the LwM2M wording, docs/protocols/iotda.md
    /// §9, as for a URL the download cannot use), anything else an
    /// internal exception; the description names the field and the fault.
    pub fn failure(&self) -> (ResultCode, String) {
        let desc = match &*self.error {
            EventError::Field { field: "url", .. } => super::result::DESC_INVALID_URI,
            _ => "Unusable upgrade event",
        };
        let why = match &*self.error {
            EventError::Field { field, why, .. } => format!("`{field}` {why}"),
            EventError::Paras { source, .. } => source.to_string(),
            other => other.to_string(),
        };
        (ResultCode::INNER_ERROR, format!("{desc}: {why}"))
    }
}

fn text(v: &Option<Value>) -> Option<String> {
    v.as_ref().and_then(Value::as_str).map(str::to_owned)
}

/// Reads one service of an envelope.
fn read_service(
    object_device_id: &Option<String>,
    index: usize,
    raw: &RawValue,
) -> Result<Incoming, Unusable> {
    let unusable = |service_id, event_type, event_id, error| Unusable {
        object_device_id: object_device_id.clone(),
        service_id,
        event_type,
        event_id,
        error: Box::new(error),
    };
    let svc: ReadService<'_> = match serde_json::from_str(raw.get()) {
        Ok(s) => s,
        Err(e) => {
            // A duplicated or missing field: say what is known of the service
            // (a duplicated name reads as its last value here).
            let v: Value = serde_json::from_str(raw.get()).unwrap_or(Value::Null);
            let name = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
            let why = EventError::Service {
                index,
                why: e.to_string(),
            };
            return Err(unusable(
                name("service_id"),
                name("event_type"),
                name("event_id"),
                why,
            ));
        }
    };
    let event_id = text(&svc.event_id);
    let (Value::String(service_id), Value::String(event_type)) = (&svc.service_id, &svc.event_type)
    else {
        let why = EventError::Service {
            index,
            why: format!(
                "service_id is {} and event_type is {}; both must be strings",
                json_kind(&svc.service_id),
                json_kind(&svc.event_type)
            ),
        };
        let s = svc.service_id.as_str().map(str::to_owned);
        let t = svc.event_type.as_str().map(str::to_owned);
        return Err(unusable(s, t, event_id, why));
    };
    let service = Service {
        service_id: service_id.clone(),
        event_type: event_type.clone(),
        paras: match svc.paras.map(RawValue::get) {
            None | Some("null") => "{}",
            Some(p) => p,
        },
    };
    match Event::from_raw(&service) {
        Ok(event) => Ok(Incoming {
            object_device_id: object_device_id.clone(),
            event_time: text(&svc.event_time).and_then(|t| EventTime::parse(&t).ok()),
            event_id,
            event,
        }),
        Err(error) => Err(unusable(
            Some(service.service_id),
            Some(service.event_type),
            event_id,
            error,
        )),
    }
}

/// Reads a payload of `sys/events/down` (or `up`) service by service: the
/// envelope's own faults (not JSON, nested deeper than serde_json's limit
/// of 128, `object_device_id` not a string, a duplicated envelope field, no
/// `services` list) are an [`EventError`], since nothing in it can be
/// trusted to name a device; a service that cannot be used is an
/// [`Unusable`] with what is known of it, and does not hide the others.
pub fn read(payload: &[u8]) -> Result<Vec<Result<Incoming, Unusable>>, EventError> {
    let env: ReadEnvelope<'_> = serde_json::from_slice(payload).map_err(EventError::Envelope)?;
    if env.services.is_empty() {
        return Err(EventError::NoServices);
    }
    Ok(env
        .services
        .iter()
        .enumerate()
        .map(|(i, raw)| read_service(&env.object_device_id, i, raw))
        .collect())
}

/// Parses a payload of `sys/events/up` or `sys/events/down`: [`read`], with
/// the first unusable service as the error.
///
/// A malformed `event_time` is dropped (the platform itself then uses its
/// receive time, [DOC:iot_06_v5_3029]); a non-string `event_id` is dropped.
pub fn parse(payload: &[u8]) -> Result<Vec<Incoming>, EventError> {
    read(payload)?
        .into_iter()
        .map(|r| r.map_err(|u| *u.error))
        .collect()
}

/// Encodes one event in an envelope. `object_device_id` is the child's id
/// for a child's event, `None` for the gateway's own (docs/protocols/iotda.md §3).
pub fn encode(
    object_device_id: Option<&str>,
    event: &Event,
    event_time: EventTime,
    event_id: Option<&str>,
) -> Vec<u8> {
    let (service_id, event_type) = event.kind();
    let env = RawEnvelope {
        object_device_id: object_device_id.map(str::to_owned),
        services: vec![RawService {
            service_id: service_id.to_owned(),
            event_type: event_type.to_owned(),
            event_time: Some(Value::String(event_time.to_string())),
            event_id: event_id.map(|s| Value::String(s.to_owned())),
            paras: event.paras_value(),
        }],
    };
    serde_json::to_vec(&env).expect("an envelope of JSON values serialises")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(payload: &str) -> Incoming {
        let mut v = parse(payload.as_bytes()).unwrap();
        assert_eq!(v.len(), 1);
        v.remove(0)
    }

    #[test]
    fn firmware_upgrade_from_the_doc_example() {
        // docs/protocols/iotda.md §4.4, quoted from [DOC:iot_06_v5_3030].
        let msg = r#"{"object_device_id":"child1","services":[{"service_id":"$ota","event_type":"firmware_upgrade","event_time":"20151212T121212Z",
 "paras":{"version":"v1.2",
  "url":"https://100.93.28.202:8943/iodm/dev/v2.0/upgradefile/applications/x/devices/y/packages/z",
  "file_size":81362928,"file_name":"upgrade.bin","access_token":"595124473f866b033dfa1f","expires":86400,
  "sign":"595124473f866b033dfa1f7e831c8c99a12f6143f392dfa996a819010842c99d",
  "custom_info":"This upgrade package adds some new features.",
  "task_id":"65d31bf2581ed33a42a58d76","sub_device_count":2,"task_ext_info":{"device_type":"DDC"},"future_field":[1]}}]}"#;
        let inc = one(msg);
        assert_eq!(inc.object_device_id.as_deref(), Some("child1"));
        assert_eq!(
            inc.event_time,
            Some(EventTime::parse("20151212T121212Z").unwrap())
        );
        let Event::Upgrade { kind, v2, upgrade } = inc.event else {
            panic!("not an upgrade")
        };
        assert_eq!((kind, v2), (UpgradeKind::Firmware, false));
        assert_eq!(upgrade.file_size, 81_362_928);
        assert_eq!(
            upgrade.access_token.as_deref(),
            Some("595124473f866b033dfa1f")
        );
        assert_eq!(upgrade.sub_device_count, Some(2));
        assert!(upgrade.task_ext_info.unwrap().is_object());
    }

    #[test]
    fn file_size_above_4_gib_is_kept() {
        let msg = r#"{"services":[{"service_id":"$ota","event_type":"software_upgrade_v2",
            "paras":{"version":"2","url":"https://obs/x?sig=1","file_size":5000000000,"file_name":"a"}}]}"#;
        let Event::Upgrade { upgrade, kind, v2 } = one(msg).event else {
            panic!()
        };
        assert_eq!((kind, v2), (UpgradeKind::Software, true));
        assert_eq!(upgrade.file_size, 5_000_000_000);
        assert_eq!(upgrade.sign, None);
    }

    #[test]
    fn both_status_response_names_are_accepted() {
        for et in [
            "sub_device_update_status",
            "sub_device_update_status_response",
        ] {
            let msg = format!(
                r#"{{"object_device_id":"gw","services":[{{"service_id":"$sub_device_manager","event_type":"{et}",
                "event_id":"40cc","paras":{{"successful_devices":[{{"device_id":"c1","status":"ONLINE"}}],
                "failed_devices":[{{"device_id":"c2","error_code":"XXX","error_msg":"no"}}]}}}}]}}"#
            );
            let inc = one(&msg);
            let Event::UpdateStatusResponse(r) = inc.event else {
                panic!("{et}")
            };
            assert_eq!(r.successful_devices[0].status, Status::Online);
            assert_eq!(r.failed_devices[0].device_id.as_deref(), Some("c2"));
        }
    }

    #[test]
    fn unknown_event_types_are_reported_not_errors() {
        let inc = one(
            r#"{"services":[{"service_id":"$time_sync","event_type":"time_sync_response","paras":{"a":1}}]}"#,
        );
        assert!(
            matches!(inc.event, Event::Unknown { ref event_type, .. } if event_type == "time_sync_response")
        );
    }

    #[test]
    fn specific_errors() {
        assert!(matches!(parse(b"{not json"), Err(EventError::Envelope(_))));
        assert!(matches!(
            parse(br#"{"services":[]}"#),
            Err(EventError::NoServices)
        ));
        let err = parse(
            br#"{"services":[{"service_id":"$ota","event_type":"firmware_upgrade","paras":{"version":"1","url":"u","file_size":"big"}}]}"#,
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "$ota firmware_upgrade: bad paras: `file_size` is a string, expected an unsigned 64-bit integer"
        );
        let err = parse(
            br#"{"services":[{"service_id":"$ota","event_type":"firmware_upgrade","paras":{"url":"u","file_size":1}}]}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("`version` is missing"), "{err}");
    }

    #[test]
    fn version_query_without_paras_and_bad_time() {
        let inc = one(
            r#"{"services":[{"service_id":"$ota","event_type":"version_query","event_time":"yesterday"}]}"#,
        );
        assert_eq!(inc.event, Event::VersionQuery(VersionQuery::default()));
        assert_eq!(inc.event_time, None);
    }

    #[test]
    fn encode_round_trips() {
        let ev = Event::ProgressReport(ProgressReport {
            result_code: ResultCode::SUCCESS,
            progress: Some(100),
            version: "V2.0".into(),
            description: Some("upgrade success".into()),
        });
        let t = EventTime::parse("20151212T121212Z").unwrap();
        let bytes = encode(Some("child"), &ev, t, None);
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"object_device_id":"child","services":[{"service_id":"$ota",
              "event_type":"upgrade_progress_report","event_time":"20151212T121212Z",
              "paras":{"result_code":0,"progress":100,"version":"V2.0","description":"upgrade success"}}]})
        );
        assert_eq!(one(std::str::from_utf8(&bytes).unwrap()).event, ev);
        let status = Event::UpdateStatus(UpdateStatus {
            device_statuses: vec![DeviceStatus {
                device_id: "c".into(),
                status: Status::Offline,
            }],
        });
        let round = parse(&encode(None, &status, t, Some("e1")))
            .unwrap()
            .remove(0);
        assert_eq!(round.event, status);
        assert_eq!(round.event_id.as_deref(), Some("e1"));
    }

    fn unusable(payload: &str) -> Unusable {
        let mut v = read(payload.as_bytes()).unwrap();
        assert_eq!(v.len(), 1);
        v.remove(0).unwrap_err()
    }

    fn upgrade_with(paras: &str) -> String {
        format!(
            r#"{{"object_device_id":"c1","services":[{{"service_id":"$ota","event_type":"firmware_upgrade","event_id":"e9","paras":{paras}}}]}}"#
        )
    }

    #[test]
    fn unusable_upgrades_are_attributed_with_a_specific_failure() {
        let cases: &[(&str, &str)] = &[
            (
                r#"{"version":"2","file_size":1}"#,
                "Invalid URI: `url` is missing",
            ),
            (
                r#"{"version":"2","url":7,"file_size":1}"#,
                "Invalid URI: `url` is an unsigned integer, expected a string",
            ),
            (
                r#"{"version":"2","url":"  ","file_size":1}"#,
                "Invalid URI: `url` is empty",
            ),
            (
                r#"{"version":2.0,"url":"u","file_size":1}"#,
                "Unusable upgrade event: `version` is a number that is not a whole number below 2^64, expected a string",
            ),
            (
                r#"{"version":"","url":"u","file_size":1}"#,
                "Unusable upgrade event: `version` is empty",
            ),
            (
                r#"{"version":"1\u0000","url":"u","file_size":1}"#,
                "Unusable upgrade event: `version` holds control characters",
            ),
            (
                r#"{"version":"2","url":"u","file_size":-1}"#,
                "Unusable upgrade event: `file_size` is a negative integer, expected an unsigned 64-bit integer",
            ),
            (
                r#"{"version":"2","url":"u","file_size":18446744073709551616}"#,
                "Unusable upgrade event: `file_size` is a number that is not a whole number below 2^64, expected an unsigned 64-bit integer",
            ),
            (
                r#"{"version":"2","url":"u","file_size":1,"sub_device_count":4294967296}"#,
                "Unusable upgrade event: `sub_device_count` is 4294967296, out of range, expected an unsigned 32-bit integer",
            ),
            (
                r#"{"version":"2","url":"u","file_size":1,"file_name":null}"#,
                "Unusable upgrade event: `file_name` is null, expected a string",
            ),
            (
                r#"[1,2]"#,
                "Unusable upgrade event: `paras` is a list, expected an object",
            ),
        ];
        for (paras, want) in cases {
            let u = unusable(&upgrade_with(paras));
            assert_eq!(u.object_device_id.as_deref(), Some("c1"));
            assert_eq!(u.event_id.as_deref(), Some("e9"));
            assert_eq!(u.upgrade(), Some((UpgradeKind::Firmware, false)), "{paras}");
            let (code, desc) = u.failure();
            assert_eq!(code, ResultCode::INNER_ERROR);
            assert_eq!(desc, *want, "{paras}");
        }
        let long = format!(
            r#"{{"version":"{}","url":"u","file_size":1}}"#,
            "v".repeat(257)
        );
        assert!(unusable(&upgrade_with(&long))
            .failure()
            .1
            .contains("257 bytes long"));
        // A duplicated field is ambiguous: neither value is taken.
        let dup = unusable(&upgrade_with(
            r#"{"version":"2","url":"https://a/x","url":"https://b/x","file_size":1}"#,
        ));
        assert!(
            dup.failure().1.contains("duplicate field `url`"),
            "{:?}",
            dup.failure()
        );
    }

    #[test]
    fn a_bad_service_does_not_hide_the_others() {
        let v = read(
            br#"{"object_device_id":"c1","services":[
                {"service_id":"$ota","event_type":"software_upgrade_v2","paras":{"url":"u"}},
                7,
                {"service_id":"$ota","event_type":5},
                {"service_id":"$ota","service_id":"$ota","event_type":"version_query"},
                {"service_id":"$ota","event_type":"version_query","event_time":12,"event_id":{"a":1}}]}"#,
        )
        .unwrap();
        assert_eq!(v.len(), 5);
        let u = v[0].as_ref().unwrap_err();
        assert_eq!(u.upgrade(), Some((UpgradeKind::Software, true)));
        let u = v[1].as_ref().unwrap_err();
        assert!(u.service_id.is_none() && u.upgrade().is_none());
        assert!(
            u.error
                .to_string()
                .starts_with("service event 1: invalid type"),
            "{}",
            u.error
        );
        let u = v[2].as_ref().unwrap_err();
        assert_eq!(
            u.error.to_string(),
            "service event 2: service_id is a string and event_type is an unsigned integer; both must be strings"
        );
        let u = v[3].as_ref().unwrap_err();
        assert!(
            u.error.to_string().contains("duplicate field `service_id`"),
            "{}",
            u.error
        );
        assert_eq!(u.event_type.as_deref(), Some("version_query"));
        let ok = v[4].as_ref().unwrap();
        assert_eq!(ok.event, Event::VersionQuery(VersionQuery::default()));
        assert_eq!((ok.event_time, ok.event_id.as_deref()), (None, None));
    }

    #[test]
    fn envelope_faults_name_no_device() {
        for bad in [
            r#"{"object_device_id":5,"services":[]}"#,
            r#"{"object_device_id":"a","object_device_id":"b","services":[{"service_id":"$ota","event_type":"version_query"}]}"#,
            r#"{"object_device_id":"c1","services":{"service_id":"$ota"}}"#,
            "[]",
            "\"\\ud800\"",
        ] {
            assert!(
                matches!(read(bad.as_bytes()), Err(EventError::Envelope(_))),
                "{bad}"
            );
        }
        assert!(matches!(read(b"\xff\xfe{}"), Err(EventError::Envelope(_))));
        // A lone surrogate inside a service is that service's fault.
        let u = unusable(&upgrade_with(
            r#"{"version":"\ud800","url":"u","file_size":1}"#,
        ));
        assert!(u.failure().1.contains("hex escape"), "{:?}", u.failure());
        // Nested deeper than serde_json's limit (128): a service that is
        // not one, or paras that cannot be read; neither overflows a stack.
        let deep = |inner: &str| {
            let v = read(inner.as_bytes()).unwrap();
            assert_eq!(v.len(), 1);
            v.into_iter().next().unwrap().unwrap_err()
        };
        let nest = |n| format!("{}{}", "[".repeat(n), "]".repeat(n));
        let u = deep(&format!(
            r#"{{"object_device_id":"c1","services":[{}]}}"#,
            nest(100_000)
        ));
        assert!(u.service_id.is_none() && u.upgrade().is_none(), "{u:?}");
        let u = deep(&upgrade_with(&format!(
            r#"{{"version":"2","url":"u","file_size":1,"task_ext_info":{}}}"#,
            nest(100_000)
        )));
        assert_eq!(u.upgrade(), Some((UpgradeKind::Firmware, false)));
        assert!(
            u.failure().1.contains("recursion limit exceeded"),
            "{:?}",
            u.failure()
        );
    }
}
