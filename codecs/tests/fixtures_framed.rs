//! Replays the framed engine transcripts in `fixtures/framed/`, one test per
//! file (format: `fixtures/framed/README.md`). The engine gets exactly the
//! bytes and times the file gives; what it writes must match byte for byte,
//! and every event must be expected in order.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::Arc;

use otabridge_codecs::framed::engine::{Engine, Event, ImageInfo, Upgrade};
use otabridge_codecs::framed::profile::{self, Profile};
use otabridge_codecs::hex;
use otabridge_codecs::time::Instant;
use serde::Deserialize;

type Error = Box<dyn std::error::Error>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Fixture {
    origin: String,
    see: String,
    /// A built-in profile's name, or a `.toml` path relative to the fixture.
    profile: String,
    seed: u64,
    #[serde(default)]
    skip_if_current: bool,
    image: ImageSpec,
    step: Vec<Step>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ImageSpec {
    /// Image of this many bytes, byte i being i mod 251.
    size: Option<usize>,
    /// Or the image itself.
    hex: Option<String>,
    version: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Step {
    at_ms: Option<u64>,
    #[serde(rename = "in")]
    input: Option<String>,
    out: Option<String>,
    expect: Option<String>,
    fault: Option<String>,
}

/// Most steps a fixture may have, and most timeouts one `at_ms` may fire.
const STEP_BUDGET: usize = 1000;
const TIMEOUT_BUDGET: usize = 100;

struct Run {
    engine: Engine,
    image: Vec<u8>,
    events: VecDeque<Event>,
    now: Instant,
}

impl Run {
    /// Everything the engine writes now, serving its data requests.
    fn output(&mut self) -> Result<Vec<u8>, Error> {
        let mut out = Vec::new();
        for _ in 0..STEP_BUDGET {
            if let Some(r) = self.engine.poll_read() {
                let end = r.offset as usize + r.len;
                let bytes = self
                    .image
                    .get(r.offset as usize..end)
                    .ok_or("data request beyond the image")?
                    .to_vec();
                self.engine.handle_data(r.offset, &bytes, self.now)?;
            }
            match self.engine.poll_transmit() {
                Some(b) => out.extend_from_slice(&b),
                None if self.engine.poll_read().is_none() => return Ok(out),
                None => {}
            }
        }
        Err("the engine keeps writing: step budget exhausted".into())
    }

    fn collect_events(&mut self) {
        while let Some(e) = self.engine.poll_event() {
            self.events.push_back(e);
        }
    }

    /// Nothing may be left over before time passes or bytes arrive.
    fn nothing_pending(&mut self, what: &str) -> Result<(), Error> {
        let out = self.output()?;
        if !out.is_empty() {
            return Err(format!("unexpected output {what}: {}", hex::spaced(&out)).into());
        }
        self.collect_events();
        if let Some(e) = self.events.front() {
            return Err(format!("unexpected event {what}: \"{e}\"").into());
        }
        Ok(())
    }
}

fn replay(path: &Path, text: String) -> datatest_stable::Result<()> {
    let fx: Fixture = toml::from_str(&text)?;
    if fx.origin.trim().is_empty() || fx.see.trim().is_empty() {
        return Err("a fixture must say where its bytes came from (`origin`, `see`)".into());
    }
    if fx.step.len() > STEP_BUDGET {
        return Err("too many steps".into());
    }
    let profile: Profile = if fx.profile.ends_with(".toml") {
        let file = path.parent().unwrap_or(Path::new(".")).join(&fx.profile);
        let text = std::fs::read_to_string(&file)?;
        Profile::parse(&text, &file.display().to_string())?
    } else {
        profile::builtin(&fx.profile)
            .ok_or_else(|| format!("no built-in profile {}", fx.profile))??
    };
    let image = match (&fx.image.size, &fx.image.hex) {
        (Some(n), None) => (0..*n).map(|i| (i % 251) as u8).collect(),
        (None, Some(h)) => hex::parse(h)?,
        _ => return Err("[image] needs exactly one of `size` and `hex`".into()),
    };
    let upgrade = Upgrade {
        image: ImageInfo::of(&image, &fx.image.version),
        skip_if_current: fx.skip_if_current,
        version_policy: Default::default(),
        seed: fx.seed,
    };
    let mut run = Run {
        engine: Engine::new(Arc::new(profile), upgrade, Instant::ZERO)?,
        image,
        events: VecDeque::new(),
        now: Instant::ZERO,
    };

    for (i, step) in fx.step.iter().enumerate() {
        let n = i + 1;
        let at = |e: Error| -> Box<dyn std::error::Error> {
            format!("{}: step {n}: {e}", path.display()).into()
        };
        if let Some(f) = &step.fault {
            let ok = match f.as_str() {
                "drop" => step.out.is_some(),
                "corrupt" | "noise" | "duplicate" => step.input.is_some(),
                _ => false,
            };
            if !ok {
                return Err(at(format!(
                    "fault {f:?}: drop goes with `out`; corrupt, noise, duplicate with `in`"
                )
                .into()));
            }
        }
        if let Some(ms) = step.at_ms {
            let t = Instant::from_millis(ms);
            if t < run.now {
                return Err(at("at_ms goes back in time".into()));
            }
            if t > run.now {
                run.nothing_pending("before time passes").map_err(at)?;
            }
            run.now = t;
            for _ in 0..TIMEOUT_BUDGET {
                match run.engine.poll_timeout() {
                    Some(d) if d <= run.now => run.engine.handle_timeout(run.now),
                    _ => break,
                }
            }
        }
        if let Some(h) = &step.input {
            // What the engine wrote so far must have been expected.
            let out = run.output().map_err(at)?;
            if !out.is_empty() {
                return Err(at(
                    format!("unexpected output: {}", hex::spaced(&out)).into()
                ));
            }
            let bytes = hex::parse(h).map_err(|e| at(e.into()))?;
            let before = run.engine.stats();
            run.engine.handle_input(&bytes, run.now);
            let after = run.engine.stats();
            let seen = match step.fault.as_deref() {
                Some("corrupt") => after.crc_errors > before.crc_errors,
                Some("noise") => after.garbage_bytes > before.garbage_bytes,
                Some("duplicate") => after.unexpected_frames > before.unexpected_frames,
                _ => true,
            };
            if !seen {
                return Err(at(format!(
                    "the engine did not notice the {:?} fault",
                    step.fault.as_deref().unwrap_or_default()
                )
                .into()));
            }
        }
        if let Some(h) = &step.out {
            let want = hex::parse(h).map_err(|e| at(e.into()))?;
            let got = run.output().map_err(at)?;
            if got != want {
                let first = got.iter().zip(&want).take_while(|(a, b)| a == b).count();
                return Err(at(format!(
                    "output differs at byte {first}\n  want: {}\n   got: {}",
                    hex::spaced(&want),
                    hex::spaced(&got)
                )
                .into()));
            }
        }
        if let Some(want) = &step.expect {
            run.collect_events();
            match run.events.pop_front() {
                Some(e) if e.to_string() == *want => {}
                Some(e) => return Err(at(format!("expected \"{want}\", got \"{e}\"").into())),
                None => return Err(at(format!("expected \"{want}\", got no event").into())),
            }
        }
    }
    let end = |e: Error| -> Box<dyn std::error::Error> {
        format!("{}: after the last step: {e}", path.display()).into()
    };
    run.nothing_pending("after the last step").map_err(end)?;
    if !run.engine.is_finished() {
        return Err(end("the engine has not finished".into()));
    }
    Ok(())
}

datatest_stable::harness! {
    { test = replay, root = "../fixtures/framed", pattern = r"^[^/]+\.toml$" },
}
