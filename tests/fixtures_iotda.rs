//! Replays `fixtures/iotda/*.toml` (engine = "iotda") over the full stack:
//! rumqttd, the simulated IoTDA edge with TLS, a gateway with a real
//! journal and its simulated children. The schema is the one of every
//! fixture (`codecs/tests/fixture/schema.rs`, included below; format in
//! docs/fixtures.md): `in_text` is what the platform publishes, `out_text`
//! the JSON the gateway must publish next, `at_ms` time passing with
//! nothing published.
//!
//! The broker and TLS run on real sockets, so this runner cannot pause
//! time: it carries out `at_ms` by waiting for the difference to the
//! previous `at_ms` (time passes only there; `in` and `out` steps take no
//! case time), and a publish meanwhile fails the case.

// The IoTDA runner uses only part of the schema (no events, no faults).
#[allow(dead_code)]
#[path = "../codecs/tests/fixture/schema.rs"]
mod schema;

use std::sync::Arc;
use std::time::Duration;

use otabridge::child::memory::MemoryChild;
use otabridge::child::Child;
use otabridge::sim::testbed::{normalise, Testbed, GATEWAY_ID};
use schema::Case;
use serde::Deserialize;
use serde_json::Value;

/// `[setup]` of `iotda`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Setup {
    /// The gateway's simulated children.
    #[serde(default)]
    child: Vec<ChildSpec>,
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

/// How long an `out` step waits for the gateway's publish.
const OUT_WITHIN: Duration = Duration::from_secs(20);

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

/// What the engine-independent part of the schema allows here.
fn check_case(case: &Case) -> Result<(), String> {
    if case.engine != "iotda" {
        return Err(format!(
            "engine = \"{}\": this runner runs \"iotda\"",
            case.engine
        ));
    }
    if case.must_fail.is_some() || case.result_code.is_some() || !case.ignore_events.is_empty() {
        return Err("iotda cases take no must_fail, result_code or ignore_events".into());
    }
    if case.step.len() > case.max_steps {
        return Err(format!("more than max_steps = {} steps", case.max_steps));
    }
    for (n, step) in case.step.iter().enumerate() {
        if step.input.is_some()
            || step.out.is_some()
            || step.expect.is_some()
            || step.fault.is_some()
        {
            return Err(format!(
                "step {}: iotda steps take at_ms, in_text, in_topic, out_text, out_topic",
                n + 1
            ));
        }
    }
    Ok(())
}

fn run(path: &std::path::Path, text: String) -> datatest_stable::Result<()> {
    let case = Case::parse(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    check_case(&case).map_err(|e| format!("{}: {e}", path.display()))?;
    let setup: Setup = case
        .setup()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let dir = tempfile::tempdir()?;
        let mut tb = Testbed::new(dir.path()).await?;
        let children: Vec<Arc<dyn Child>> = setup
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
        let mut now_ms = 0u64;
        for (n, step) in case.step.iter().enumerate() {
            let at = format!("{} step {}", path.display(), n + 1);
            if let Some(ms) = step.at_ms {
                if ms < now_ms {
                    return Err(format!("{at}: at_ms = {ms} goes back in time").into());
                }
                let quiet = Duration::from_millis(ms - now_ms);
                if let Some(r) = tb.platform.recv(quiet).await {
                    return Err(format!(
                        "{at}: unexpected output before at_ms = {ms}: {} {}",
                        r.topic,
                        String::from_utf8_lossy(&r.payload)
                    )
                    .into());
                }
                now_ms = ms;
            }
            if let Some(payload) = &step.in_text {
                if let Some(r) = tb.platform.try_recv() {
                    return Err(format!(
                        "{at}: unexpected output before this `in`: {} {}",
                        r.topic,
                        String::from_utf8_lossy(&r.payload)
                    )
                    .into());
                }
                let suffix = step.in_topic.as_deref().unwrap_or("sys/events/down");
                tb.platform.send_raw(GATEWAY_ID, suffix, payload.as_bytes()).await?;
            }
            if let Some(exp) = &step.out_text {
                let want: Value = serde_json::from_str(exp)
                    .map_err(|e| format!("{at}: out_text is not JSON: {e}"))?;
                let topic = step
                    .out_topic
                    .clone()
                    .unwrap_or_else(|| format!("$oc/devices/{GATEWAY_ID}/sys/events/up"));
                let got = tb
                    .platform
                    .recv(OUT_WITHIN)
                    .await
                    .ok_or_else(|| format!("{at}: expected output but nothing was published; expected {want}"))?;
                let got_json = normalise(&got.payload).map_err(|e| {
                    format!("{at}: published payload is not a valid report: {e}")
                })?;
                if got.topic != topic || !matches(&want, &got_json) {
                    return Err(format!(
                        "{at}: output differs\n  topic:    {}\n  expected: {topic}\n  got:      {got_json}\n  expected: {want}",
                        got.topic
                    )
                    .into());
                }
            }
        }
        if let Some(r) = tb.platform.try_recv() {
            return Err(format!(
                "{}: unexpected output before the end of the file: {} {}",
                path.display(),
                r.topic,
                String::from_utf8_lossy(&r.payload)
            )
            .into());
        }
        tb.stop_gateway().await?;
        Ok(())
    })
}

datatest_stable::harness! {
    { test = run, root = "fixtures/iotda", pattern = r"\.toml$" },
}
