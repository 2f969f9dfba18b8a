//! Replays `fixtures/iotda/*.toml`: each file lists children, events the
//! platform sends and the exact publishes the gateway must make, over the
//! full stack (rumqttd, the simulated IoTDA edge with TLS, a real journal).
//! The format is documented in `fixtures/README.md`.

use std::sync::Arc;
use std::time::Duration;

use otabridge::child::memory::MemoryChild;
use otabridge::child::Child;
use otabridge::sim::testbed::{normalise, Testbed, GATEWAY_ID};
use serde::Deserialize;
use serde_json::Value;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Fixture {
    #[allow(dead_code)]
    origin: String,
    #[allow(dead_code)]
    see: String,
    #[serde(default)]
    child: Vec<ChildSpec>,
    step: Vec<Step>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ChildSpec {
    device_id: String,
    version: String,
    #[serde(default = "yes")]
    online: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Step {
    /// Payload the platform publishes (text, usually JSON).
    send: Option<String>,
    /// Topic suffix for `send` (default `sys/events/down`).
    send_topic: Option<String>,
    /// JSON the gateway must publish next; `"*"` matches any string.
    expect: Option<String>,
    /// Topic of the expected publish (default the gateway's `sys/events/up`).
    expect_topic: Option<String>,
    /// Nothing may be published for this long.
    quiet_ms: Option<u64>,
}

/// `expected` matches `actual`, where an expected `"*"` matches any string.
fn matches(expected: &Value, actual: &Value) -> bool {
    match (expected, actual) {
        (Value::String(e), Value::String(_)) if e == "*" => true,
        (Value::Object(e), Value::Object(a)) => {
            e.len() == a.len()
                && e.iter()
                    .all(|(k, v)| a.get(k).is_some_and(|av| matches(v, av)))
        }
        (Value::Array(e), Value::Array(a)) => {
            e.len() == a.len() && e.iter().zip(a).all(|(x, y)| matches(x, y))
        }
        _ => expected == actual,
    }
}

fn run(path: &std::path::Path, text: String) -> datatest_stable::Result<()> {
    let fx: Fixture = toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let dir = tempfile::tempdir()?;
        let mut tb = Testbed::new(dir.path()).await?;
        let children: Vec<Arc<dyn Child>> = fx
            .child
            .iter()
            .map(|c| {
                let m = MemoryChild::new(&c.device_id, &c.version);
                m.set_online(c.online);
                Arc::new(m) as Arc<dyn Child>
            })
            .collect();
        tb.start_gateway(children).await?;
        tb.wait_connected(Duration::from_secs(20)).await?;
        for (n, step) in fx.step.iter().enumerate() {
            let at = format!("{} step {}", path.display(), n + 1);
            if let Some(payload) = &step.send {
                let suffix = step.send_topic.as_deref().unwrap_or("sys/events/down");
                tb.platform.send_raw(GATEWAY_ID, suffix, payload.as_bytes()).await?;
            }
            if let Some(exp) = &step.expect {
                let want: Value =
                    serde_json::from_str(exp).map_err(|e| format!("{at}: expect is not JSON: {e}"))?;
                let topic = step
                    .expect_topic
                    .clone()
                    .unwrap_or_else(|| format!("$oc/devices/{GATEWAY_ID}/sys/events/up"));
                let got = tb
                    .platform
                    .recv(Duration::from_secs(20))
                    .await
                    .ok_or_else(|| format!("{at}: nothing published; expected {want}"))?;
                let got_json = normalise(&got.payload).map_err(|e| {
                    format!("{at}: published payload is not a valid report: {e}")
                })?;
                if got.topic != topic || !matches(&want, &got_json) {
                    return Err(format!(
                        "{at}: unexpected publish\n  topic:    {}\n  expected: {topic}\n  got:      {got_json}\n  expected: {want}",
                        got.topic
                    )
                    .into());
                }
            }
            if let Some(ms) = step.quiet_ms {
                if let Some(r) = tb.platform.recv(Duration::from_millis(ms)).await {
                    return Err(format!(
                        "{at}: expected no publish for {ms} ms, got {} {}",
                        r.topic,
                        String::from_utf8_lossy(&r.payload)
                    )
                    .into());
                }
            }
        }
        tb.stop_gateway().await?;
        Ok(())
    })
}

datatest_stable::harness! {
    { test = run, root = "fixtures/iotda", pattern = r"\.toml$" },
}
