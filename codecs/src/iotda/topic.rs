//! Device-side system topics (docs/protocols/iotda.md §2; [DOC:iot_06_v5_3004]).
//!
//! `{device_id}` in a topic is always the id that owns the MQTT connection:
//! for a gateway, the gateway's id, even when the payload is about a child
//! ([DOC:iot_06_v5_3006]).

/// `$oc/devices/{id}/sys/events/up`: every device-to-platform event.
pub fn events_up(device_id: &str) -> String {
    format!("$oc/devices/{device_id}/sys/events/up")
}

/// `$oc/devices/{id}/sys/events/down`: every platform-to-device event.
pub fn events_down(device_id: &str) -> String {
    format!("$oc/devices/{device_id}/sys/events/down")
}

/// `$oc/devices/{id}/sys/commands/response/request_id={request_id}`.
pub fn command_response(device_id: &str, request_id: &str) -> String {
    format!("$oc/devices/{device_id}/sys/commands/response/request_id={request_id}")
}

/// The topics a gateway subscribes to (docs/protocols/iotda.md §8). The platform subscribes
/// devices to system topics by itself; subscribing explicitly is harmless
/// and makes a plain broker (tests, the demo) behave like the platform.
pub fn subscriptions(device_id: &str) -> Vec<String> {
    [
        "sys/events/down",
        "sys/commands/#",
        "sys/properties/set/#",
        "sys/properties/get/#",
        "sys/messages/down",
        "sys/shadow/get/response/#",
    ]
    .iter()
    .map(|t| format!("$oc/devices/{device_id}/{t}"))
    .collect()
}

/// What a downstream topic is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Downstream {
    /// `sys/events/down`.
    Events,
    /// `sys/commands/request_id={request_id}`.
    Command {
        /// The opaque id to echo in the response topic.
        request_id: String,
    },
    /// `sys/properties/set/request_id=...`.
    PropertiesSet {
        /// The opaque id to echo in the response topic.
        request_id: String,
    },
    /// `sys/properties/get/request_id=...`.
    PropertiesGet {
        /// The opaque id to echo in the response topic.
        request_id: String,
    },
    /// `sys/messages/down`.
    Message,
    /// Any other topic under this device.
    Other(String),
}

/// A topic that is not for this device.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("topic '{topic}' is not under $oc/devices/{device_id}/")]
pub struct ForeignTopic {
    /// The topic received.
    pub topic: String,
    /// The device this session is.
    pub device_id: String,
}

/// Classifies a topic received by device `device_id`. The request id is the
/// text after `request_id=` ([JAVA] `IotUtil.getRequestId`).
pub fn classify(device_id: &str, topic: &str) -> Result<Downstream, ForeignTopic> {
    let prefix = format!("$oc/devices/{device_id}/");
    let rest = topic.strip_prefix(&prefix).ok_or_else(|| ForeignTopic {
        topic: topic.to_owned(),
        device_id: device_id.to_owned(),
    })?;
    let request_id = |p: &str| rest.strip_prefix(p).map(str::to_owned);
    Ok(match rest {
        "sys/events/down" => Downstream::Events,
        "sys/messages/down" => Downstream::Message,
        _ => {
            if let Some(id) = request_id("sys/commands/request_id=") {
                Downstream::Command { request_id: id }
            } else if let Some(id) = request_id("sys/properties/set/request_id=") {
                Downstream::PropertiesSet { request_id: id }
            } else if let Some(id) = request_id("sys/properties/get/request_id=") {
                Downstream::PropertiesGet { request_id: id }
            } else {
                Downstream::Other(rest.to_owned())
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_and_classification() {
        assert_eq!(events_up("gw"), "$oc/devices/gw/sys/events/up");
        assert_eq!(
            classify("gw", "$oc/devices/gw/sys/events/down"),
            Ok(Downstream::Events)
        );
        assert_eq!(
            classify("gw", "$oc/devices/gw/sys/commands/request_id=abc123"),
            Ok(Downstream::Command {
                request_id: "abc123".into()
            })
        );
        assert!(classify("gw", "$oc/devices/other/sys/events/down").is_err());
        assert_eq!(subscriptions("gw").len(), 6);
        assert!(subscriptions("gw")
            .iter()
            .all(|t| t.starts_with("$oc/devices/gw/sys/")));
    }
}
