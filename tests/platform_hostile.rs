//! Hostile platform input against the real daemon over rumqttd in process
//! (issue 17, item 7 and defect 2): a corpus of bad events, attributable
//! and not, of every kind (types, sizes, encodings, deep nesting,
//! duplicated keys, huge numbers). The gateway stays connected, answers
//! every upgrade it can attribute with a failure report naming the fault
//! (docs/protocols/iotda.md §9), answers a `version_query` whose paras are
//! unusable as a plain one, and logs the rest with its topic.

use std::sync::Arc;
use std::time::Duration;

use otabridge::child::memory::MemoryChild;
use otabridge::child::Child;
use otabridge::sim::testbed::{Testbed, GATEWAY_ID};
use otabridge_codecs::iotda::event::{ProgressReport, VersionQuery};
use otabridge_codecs::iotda::{Event, ResultCode};

mod log_support;
use log_support::Logs;

const T: Duration = Duration::from_secs(20);

const CHILD: &str = "h_node1";
const DOWN: &str = "sys/events/down";

fn envelope(object: Option<&str>, event_type: &str, paras: &str) -> String {
    let obj = object.map_or(String::new(), |o| format!(r#""object_device_id":"{o}","#));
    format!(
        r#"{{{obj}"services":[{{"service_id":"$ota","event_type":"{event_type}","event_time":"20251212T121212Z","paras":{paras}}}]}}"#
    )
}

/// Attributable: each must get a failure report for `CHILD` whose
/// description is exactly the second string.
fn attributable() -> Vec<(String, String)> {
    let up = |et: &str, paras: &str| envelope(Some(CHILD), et, paras);
    let big_version = "9".repeat(300);
    vec![
        // Defect 2 as reported: no url.
        (
            up("firmware_upgrade", r#"{"version":"2.0","file_size":10,"file_name":"f.bin","sign":"00"}"#),
            "Invalid URI: `url` is missing".into(),
        ),
        (
            up("software_upgrade_v2", r#"{"version":"2.0","url":["https://x"],"file_size":10}"#),
            "Invalid URI: `url` is a list, expected a string".into(),
        ),
        (
            up("firmware_upgrade_v2", r#"{"version":"2.0","url":"","file_size":10}"#),
            "Invalid URI: `url` is empty".into(),
        ),
        // Types.
        (
            up("firmware_upgrade", r#"{"version":{"major":2},"url":"https://x/p","file_size":10}"#),
            "Unusable upgrade event: `version` is an object, expected a string".into(),
        ),
        (
            up("software_upgrade", r#"{"version":"2.0","url":"https://x/p","file_size":"10"}"#),
            "Unusable upgrade event: `file_size` is a string, expected an unsigned 64-bit integer".into(),
        ),
        (
            up("firmware_upgrade", r#""version 2.0""#),
            "Unusable upgrade event: `paras` is a string, expected an object".into(),
        ),
        (
            up("firmware_upgrade", r#"{"version":"2.0","url":"https://x/p","file_size":10,"expires":true}"#),
            "Unusable upgrade event: `expires` is a boolean, expected an unsigned 64-bit integer".into(),
        ),
        // Sizes and encodings.
        (
            up("firmware_upgrade", &format!(r#"{{"version":"{big_version}","url":"https://x/p","file_size":10}}"#)),
            "Unusable upgrade event: `version` is 300 bytes long, more than 256".into(),
        ),
        (
            up("firmware_upgrade", r#"{"version":"2.0\r\nINJECTED","url":"https://x/p","file_size":10}"#),
            "Unusable upgrade event: `version` holds control characters".into(),
        ),
        (
            up("firmware_upgrade", r#"{"version":"\ud800","url":"https://x/p","file_size":10}"#),
            "Unusable upgrade event: unexpected end of hex escape".into(),
        ),
        (
            up("firmware_upgrade", r#"{"version":"   ","url":"https://x/p","file_size":10}"#),
            "Unusable upgrade event: `version` is empty".into(),
        ),
        // Huge numbers.
        (
            up("firmware_upgrade", r#"{"version":"2.0","url":"https://x/p","file_size":1e400}"#),
            // serde_json reads 1e400 as an error at the number: the whole
            // paras text is unusable, and the report says where.
            "Unusable upgrade event: number out of range".into(),
        ),
        (
            up("firmware_upgrade", r#"{"version":"2.0","url":"https://x/p","file_size":123456789012345678901234567890}"#),
            "Unusable upgrade event: `file_size` is a number that is not a whole number below 2^64, expected an unsigned 64-bit integer".into(),
        ),
        (
            up("firmware_upgrade", r#"{"version":"2.0","url":"https://x/p","file_size":10,"sub_device_count":-3}"#),
            "Unusable upgrade event: `sub_device_count` is a negative integer, expected an unsigned 32-bit integer".into(),
        ),
        // Duplicated keys: ambiguous, so neither value is taken.
        (
            up("firmware_upgrade", r#"{"version":"2.0","url":"https://x/p","url":"https://evil/p","file_size":10}"#),
            "Unusable upgrade event: duplicate field `url`".into(),
        ),
        // Deep nesting inside an informational field, within serde_json's
        // limit: the event is read, the field type is wrong.
        (
            up("firmware_upgrade", &format!(r#"{{"version":"2.0","url":"https://x/p","file_size":10,"custom_info":{}1{}}}"#, "[".repeat(100), "]".repeat(100))),
            "Unusable upgrade event: `custom_info` is a list, expected a string".into(),
        ),
    ]
}

/// Unattributable: each must be logged with the topic and this text.
fn unattributable() -> Vec<(Vec<u8>, &'static str)> {
    let deep = format!(
        r#"{{"object_device_id":"{CHILD}","services":[{}{}]}}"#,
        "[".repeat(5000),
        "]".repeat(5000)
    );
    vec![
        (b"{not json".to_vec(), "malformed event envelope"),
        (vec![0xff, 0xfe, b'{', b'}'], "malformed event envelope"),
        (
            br#"{"object_device_id":"h_node1\ud800","services":[{"service_id":"$ota","event_type":"firmware_upgrade","paras":{}}]}"#.to_vec(),
            "malformed event envelope",
        ),
        (deep.into_bytes(), "recursion limit exceeded"),
        (
            br#"{"object_device_id":42,"services":[{"service_id":"$ota","event_type":"firmware_upgrade","paras":{}}]}"#.to_vec(),
            "malformed event envelope",
        ),
        (
            br#"{"object_device_id":"h_node1","object_device_id":"h_node2","services":[{"service_id":"$ota","event_type":"firmware_upgrade","paras":{}}]}"#.to_vec(),
            "duplicate field `object_device_id`",
        ),
        (
            br#"{"object_device_id":"h_node1","services":[]}"#.to_vec(),
            "empty services list",
        ),
        // Names no upgrade: the service's type is not a string.
        (
            br#"{"object_device_id":"h_node1","services":[{"service_id":"$ota","event_type":["firmware_upgrade"],"paras":{}}]}"#.to_vec(),
            "event_type is a list",
        ),
        // An unknown child: attributable to no configured device.
        (
            envelope(Some("ghost"), "firmware_upgrade", r#"{"version":"2"}"#).into_bytes(),
            "dropped unusable event $ota firmware_upgrade",
        ),
        // Not an upgrade: nothing to answer.
        (
            br#"{"object_device_id":"h_node1","services":[{"service_id":"$sub_device_manager","event_type":"add_sub_device_notify","paras":{"devices":7}}]}"#.to_vec(),
            "dropped unusable event $sub_device_manager add_sub_device_notify",
        ),
    ]
}

fn failure_for(
    r: &otabridge::sim::platform::Received,
    who: Option<&str>,
) -> Option<ProgressReport> {
    r.events.as_ref()?.iter().find_map(|i| match &i.event {
        Event::ProgressReport(p) if i.object_device_id.as_deref() == who => Some(p.clone()),
        _ => None,
    })
}

#[tokio::test]
async fn hostile_events_are_answered_when_attributable_and_logged_otherwise() {
    let (logs, _guard) = Logs::capture();
    let dir = tempfile::tempdir().unwrap();
    let mut tb = Testbed::new(dir.path()).await.unwrap();
    let kids: Vec<Arc<dyn Child>> = vec![
        Arc::new(MemoryChild::new(CHILD, "1.0")),
        Arc::new(MemoryChild::new("h_node2", "1.0")),
    ];
    tb.start_gateway(kids).await.unwrap();
    // The connect-time announcement also records the version the failure
    // reports carry.
    tb.wait_for(T, |r| {
        r.events
            .as_ref()?
            .iter()
            .any(|i| matches!(i.event, Event::UpdateStatus(_)))
            .then_some(())
    })
    .await
    .expect("no status announcement");
    let topic = format!("$oc/devices/{GATEWAY_ID}/{DOWN}");

    for (payload, want) in attributable() {
        tb.platform
            .send_raw(GATEWAY_ID, DOWN, payload.clone())
            .await
            .unwrap();
        let got = tb
            .wait_for(T, |r| failure_for(r, Some(CHILD)))
            .await
            .unwrap_or_else(|| panic!("no failure report for {payload}\n{}", logs.text()));
        assert_eq!(got.result_code, ResultCode::INNER_ERROR, "{payload}");
        assert_eq!(got.version, "1.0", "{payload}");
        assert_eq!(got.progress, None, "{payload}");
        let desc = got.description.unwrap_or_default();
        assert!(
            desc.starts_with(&want),
            "{payload}\nwant {want}\ngot  {desc}"
        );
        assert!(
            logs.wait_for_line(&[&topic, CHILD, "answered with a failure report", &want])
                .await,
            "{}",
            logs.text()
        );
    }

    // The gateway's own upgrade, unusable: reported for the gateway, with
    // the version it runs.
    tb.platform
        .send_raw(
            GATEWAY_ID,
            DOWN,
            envelope(
                None,
                "software_upgrade",
                r#"{"url":"https://x/p","file_size":1}"#,
            ),
        )
        .await
        .unwrap();
    let own = tb
        .wait_for(T, |r| failure_for(r, None))
        .await
        .expect("no failure report for the gateway");
    assert_eq!(own.result_code, ResultCode::INNER_ERROR);
    assert_eq!(own.version, env!("CARGO_PKG_VERSION"));
    assert_eq!(
        own.description.as_deref(),
        Some("Unusable upgrade event: `version` is missing")
    );

    for (payload, want) in unattributable() {
        tb.platform
            .send_raw(GATEWAY_ID, DOWN, payload.clone())
            .await
            .unwrap();
        assert!(
            logs.wait_for_line(&[&topic, want]).await,
            "{want}: not logged with the topic\n{}",
            logs.text()
        );
    }

    // A version_query whose (informational) paras are unusable is answered.
    tb.platform
        .send_raw(
            GATEWAY_ID,
            DOWN,
            envelope(
                Some(CHILD),
                "version_query",
                r#"{"task_id":{"x":1},"sub_device_count":"many"}"#,
            ),
        )
        .await
        .unwrap();
    tb.wait_for(T, |r| {
        r.events.as_ref()?.iter().find_map(|i| match &i.event {
            Event::VersionReport(v) if i.object_device_id.as_deref() == Some(CHILD) => {
                v.fw_version.clone()
            }
            _ => None,
        })
    })
    .await
    .expect("the version_query with bad paras was not answered");

    // Nothing else was answered: no report for an unattributable event, no
    // job started by any of them.
    tb.send(
        Some("h_node2"),
        &Event::VersionQuery(VersionQuery::default()),
    )
    .await
    .unwrap();
    let rest = tb.drain(Duration::from_millis(1500)).await;
    for r in &rest {
        assert!(
            failure_for(r, Some(CHILD)).is_none() && failure_for(r, Some("h_node2")).is_none(),
            "unexpected report: {}",
            String::from_utf8_lossy(&r.payload)
        );
    }
    assert!(
        rest.iter()
            .any(|r| r.events.as_ref().is_some_and(|e| e.iter().any(|i| i
                .object_device_id
                .as_deref()
                == Some("h_node2")
                && matches!(i.event, Event::VersionReport(_))))),
        "the session stopped answering"
    );
    assert!(
        !logs.text().contains("upgrade job accepted"),
        "{}",
        logs.text()
    );
    assert_eq!(
        tb.edge.connects(),
        1,
        "the gateway reconnected: {}",
        logs.text()
    );
    tb.stop_gateway().await.unwrap();
}
