//! The health-gated confirm's keys (issue 15 item 2; docs/config.md,
//! docs/operations.md "Health-gated confirm"): `[ota]` holds the defaults,
//! an SMP `[[child]]` may override each; other children have none.

use std::time::Duration;

use otabridge_codecs::smp::header::Op;
use otabridge_codecs::smp::health::{encode_body, BodyValue, HealthCommand};

/// A child's health check, resolved: on when `period` is not zero.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    /// `health_check_secs`: how long the child must pass its probes after
    /// the test boot before it is confirmed.
    pub period: Duration,
    /// `health_probe_interval_secs`: time between two probes (at most
    /// `period`).
    pub interval: Duration,
    /// `health_probe_timeout_secs`: a probe without every answer by then
    /// fails.
    pub probe_timeout: Duration,
    /// `health_command`: the SMP command each probe sends after its image
    /// state read, if any.
    pub command: Option<HealthCommand>,
}

/// Default `health_probe_interval_secs`.
pub const DEFAULT_INTERVAL_SECS: u64 = 10;
/// Default `health_probe_timeout_secs`.
pub const DEFAULT_PROBE_TIMEOUT_SECS: u64 = 10;
/// Longest `health_check_secs` accepted: a day, the event's own deadline.
pub const MAX_CHECK_SECS: u64 = 86_400;
/// The text an `"echo"` health command sends.
pub const ECHO_TEXT: &str = "otabridge health";

/// The four keys as written, in `[ota]` or a `[[child]]`.
#[derive(Debug, Clone, Default)]
pub struct HealthKeys {
    /// `health_check_secs`.
    pub check_secs: Option<u64>,
    /// `health_probe_interval_secs`.
    pub interval_secs: Option<u64>,
    /// `health_probe_timeout_secs`.
    pub probe_timeout_secs: Option<u64>,
    /// `health_command`.
    pub command: Option<toml::Value>,
}

/// A key that is not acceptable: the key without its section, and why.
pub type BadHealthKey = (&'static str, String);

/// `[ota]`'s health keys, checked: the defaults of every SMP child.
#[derive(Debug, Clone, Default)]
pub struct HealthDefaults {
    keys: HealthKeys,
    command: Option<HealthCommand>,
}

impl HealthDefaults {
    /// Checks `[ota]`'s keys.
    pub fn from_ota(keys: HealthKeys) -> Result<HealthDefaults, BadHealthKey> {
        let command = keys.command.as_ref().map(parse_command).transpose()?;
        // Checked as a child's would be, so that the message is the key's.
        resolve_with(&keys, command.clone())?;
        Ok(HealthDefaults { keys, command })
    }

    /// A child's check: its own keys over these defaults; `None` when off.
    pub fn for_child(&self, child: &HealthKeys) -> Result<Option<HealthCheck>, BadHealthKey> {
        let command = match &child.command {
            Some(v) => Some(parse_command(v)?),
            None => self.command.clone(),
        };
        let keys = HealthKeys {
            check_secs: child.check_secs.or(self.keys.check_secs),
            interval_secs: child.interval_secs.or(self.keys.interval_secs),
            probe_timeout_secs: child.probe_timeout_secs.or(self.keys.probe_timeout_secs),
            command: None,
        };
        resolve_with(&keys, command)
    }
}

fn resolve_with(
    k: &HealthKeys,
    command: Option<HealthCommand>,
) -> Result<Option<HealthCheck>, BadHealthKey> {
    let period = k.check_secs.unwrap_or(0);
    let interval = k.interval_secs.unwrap_or(DEFAULT_INTERVAL_SECS);
    let timeout = k.probe_timeout_secs.unwrap_or(DEFAULT_PROBE_TIMEOUT_SECS);
    if period > MAX_CHECK_SECS {
        return Err((
            "health_check_secs",
            format!("{period} is more than a day ({MAX_CHECK_SECS})"),
        ));
    }
    if interval == 0 {
        return Err(("health_probe_interval_secs", "must be at least 1".into()));
    }
    if timeout == 0 {
        return Err(("health_probe_timeout_secs", "must be at least 1".into()));
    }
    if period == 0 {
        return Ok(None);
    }
    // A probe at least at the start and the end of the period.
    Ok(Some(HealthCheck {
        period: Duration::from_secs(period),
        interval: Duration::from_secs(interval.min(period)),
        probe_timeout: Duration::from_secs(timeout),
        command,
    }))
}

/// `health_command = "echo"`, or `{ group = G, command = C, op = "read" |
/// "write", body = { ... } }` (docs/config.md).
fn parse_command(v: &toml::Value) -> Result<HealthCommand, BadHealthKey> {
    const KEY: &str = "health_command";
    let t = match v {
        toml::Value::String(s) if s == "echo" => return Ok(HealthCommand::echo(ECHO_TEXT)),
        toml::Value::String(s) => {
            return Err((
                KEY,
                format!("'{s}' is not \"echo\" or a table {{ group, command, op, body }}"),
            ))
        }
        toml::Value::Table(t) => t,
        other => {
            return Err((
                KEY,
                format!(
                    "expected \"echo\" or a table {{ group, command, op, body }}, found {}",
                    other.type_str()
                ),
            ))
        }
    };
    if let Some(k) = t
        .keys()
        .find(|k| !["group", "command", "op", "body"].contains(&k.as_str()))
    {
        return Err((
            KEY,
            format!("'{k}' is not a key of it (group, command, op, body)"),
        ));
    }
    let int = |name: &str, max: i64| -> Result<i64, BadHealthKey> {
        match t.get(name) {
            Some(toml::Value::Integer(i)) if (0..=max).contains(i) => Ok(*i),
            Some(toml::Value::Integer(i)) => Err((KEY, format!("{name}: {i} is not in 0..={max}"))),
            Some(v) => Err((
                KEY,
                format!("{name}: a {} is not a number in 0..={max}", v.type_str()),
            )),
            None => Err((KEY, format!("{name} is required"))),
        }
    };
    let group = int("group", i64::from(u16::MAX))?;
    let id = int("command", i64::from(u8::MAX))?;
    let op = match t.get("op").map(|v| v.as_str()) {
        None | Some(Some("read")) => Op::Read,
        Some(Some("write")) => Op::Write,
        Some(_) => return Err((KEY, "op: expected \"read\" or \"write\"".into())),
    };
    let body = match t.get("body") {
        None => Vec::new(),
        Some(toml::Value::Table(b)) => map(b)?,
        Some(v) => {
            return Err((
                KEY,
                format!("body: expected a table, found {}", v.type_str()),
            ))
        }
    };
    // An echo written out in full is checked as the shorthand is.
    let echo = match (group, id, op, body.as_slice()) {
        (0, 0, Op::Write, [(k, BodyValue::Text(d))]) if k == "d" => Some(d.clone()),
        _ => None,
    };
    Ok(HealthCommand {
        op,
        group: group as u16,
        id: id as u8,
        body: encode_body(&body),
        echo,
    })
}

fn map(t: &toml::Table) -> Result<Vec<(String, BodyValue)>, BadHealthKey> {
    t.iter().map(|(k, v)| Ok((k.clone(), value(v)?))).collect()
}

fn value(v: &toml::Value) -> Result<BodyValue, BadHealthKey> {
    Ok(match v {
        toml::Value::Integer(i) => BodyValue::Int(*i),
        toml::Value::String(s) => BodyValue::Text(s.clone()),
        toml::Value::Boolean(b) => BodyValue::Bool(*b),
        toml::Value::Array(a) => BodyValue::Array(a.iter().map(value).collect::<Result<_, _>>()?),
        toml::Value::Table(t) => BodyValue::Map(map(t)?),
        other => {
            return Err((
                "health_command",
                format!(
                    "body: a {} cannot be sent (integers, strings, booleans, arrays, tables)",
                    other.type_str()
                ),
            ))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(check: u64, interval: Option<u64>, command: Option<&str>) -> HealthKeys {
        HealthKeys {
            check_secs: Some(check),
            interval_secs: interval,
            probe_timeout_secs: None,
            command: command.map(|c| toml::from_str::<toml::Table>(c).unwrap()["c"].clone()),
        }
    }

    #[test]
    fn children_override_the_defaults_and_zero_is_off() {
        let d = HealthDefaults::from_ota(keys(60, None, Some("c = \"echo\""))).unwrap();
        let c = d.for_child(&HealthKeys::default()).unwrap().unwrap();
        assert_eq!(c.period, Duration::from_secs(60));
        assert_eq!(c.interval, Duration::from_secs(DEFAULT_INTERVAL_SECS));
        assert_eq!(c.command, Some(HealthCommand::echo(ECHO_TEXT)));
        assert_eq!(d.for_child(&keys(0, None, None)).unwrap(), None);
        let own = d
            .for_child(&keys(
                5,
                Some(1),
                Some("c = { group = 64, command = 2, op = \"write\", body = { n = 1 } }"),
            ))
            .unwrap()
            .unwrap();
        let cmd = own.command.unwrap();
        assert_eq!((cmd.group, cmd.id, cmd.op), (64, 2, Op::Write));
        assert_eq!(cmd.body, [0xa1, 0x61, b'n', 0x01]);
        assert_eq!(cmd.echo, None);
        // Off by default.
        let off = HealthDefaults::from_ota(HealthKeys::default()).unwrap();
        assert_eq!(off.for_child(&HealthKeys::default()).unwrap(), None);
        // Echo in full is an echo.
        let full = d
            .for_child(&keys(
                5,
                None,
                Some("c = { group = 0, command = 0, op = \"write\", body = { d = \"hi\" } }"),
            ))
            .unwrap()
            .unwrap();
        assert_eq!(full.command.unwrap().echo.as_deref(), Some("hi"));
    }

    #[test]
    fn bad_keys_are_named() {
        let bad = |k: HealthKeys| HealthDefaults::from_ota(k).unwrap_err().0;
        assert_eq!(bad(keys(10, Some(0), None)), "health_probe_interval_secs");
        assert_eq!(bad(keys(100_000, None, None)), "health_check_secs");
        for c in [
            "c = \"ping\"",
            "c = 3",
            "c = { group = 64 }",
            "c = { group = 70000, command = 1 }",
            "c = { group = 1, command = 1, op = \"erase\" }",
            "c = { group = 1, command = 1, body = 3 }",
            "c = { group = 1, command = 1, body = { t = 1979-05-27 } }",
            "c = { group = 1, command = 1, extra = 1 }",
        ] {
            let e = HealthDefaults::from_ota(keys(10, None, Some(c))).unwrap_err();
            assert_eq!(e.0, "health_command", "{c}: {e:?}");
        }
        let mut k = keys(10, None, None);
        k.probe_timeout_secs = Some(0);
        assert_eq!(bad(k), "health_probe_timeout_secs");
    }
}
