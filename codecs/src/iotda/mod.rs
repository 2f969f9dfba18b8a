//! Huawei Cloud IoTDA, device side: what a gateway sends and receives.
//!
//! Source for every fact here: `docs/protocols/iotda.md`, which cites the
//! IoTDA API pages (`iot_06_v5_*`) and the five official device SDKs.
//!
//! - [`topic`]: the `$oc/devices/{id}/sys/...` topics and what a topic means.
//! - [`time`]: `event_time` (`yyyyMMdd'T'HHmmss'Z'`) and the `yyyyMMddHH`
//!   timestamp of the client id, from Unix seconds.
//! - [`event`]: the event envelope and every `$ota` / `$sub_device_manager`
//!   event type as a typed payload.
//! - [`credentials`]: MQTT client id, username and HMAC password.
//! - [`result`]: `upgrade_progress_report` result codes and the failure
//!   descriptions the platform documents.

pub mod credentials;
pub mod event;
pub mod result;
pub mod time;
pub mod topic;

pub use credentials::{Credentials, SignatureType};
pub use event::{Event, EventError, Incoming, Upgrade, UpgradeKind};
pub use result::ResultCode;
pub use time::EventTime;
