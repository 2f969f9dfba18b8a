//! Replays `fixtures/smp/*.toml` (format: `fixtures/smp/README.md`): serial
//! framing vectors and upload / activation transcripts, one case per file.

use otabridge_codecs::hex;
use otabridge_codecs::smp::activate::{Activate, ActivateConfig, ActivateEvent};
use otabridge_codecs::smp::result;
use otabridge_codecs::smp::serial::{self, DecodeEvent, Decoder};
use otabridge_codecs::smp::sim::{mcuboot_header, ImageVersion};
use otabridge_codecs::smp::state::{StateRead, StateReadConfig, StateReadError, StateReadEvent};
use otabridge_codecs::smp::upload::{Upload, UploadConfig, UploadError, UploadEvent};
use otabridge_codecs::smp::{SmpErr, SmpVersion};
use otabridge_codecs::time::Instant;
use otabridge_codecs::version;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::VecDeque;
use std::path::Path;
use std::time::Duration;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// Most timeouts fired while catching up to one step's `at_ms`.
const FIRE_BUDGET: usize = 1000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Fixture {
    kind: String,
    origin: String,
    see: String,
    message: Option<String>,
    line_len: Option<usize>,
    wire: Option<String>,
    wire_text: Option<String>,
    line_lengths: Option<Vec<usize>>,
    max_packet: Option<usize>,
    image: Option<ImageSpec>,
    sha: Option<String>,
    activate: Option<ActivateSpec>,
    config: Option<toml::Table>,
    result_code: Option<u8>,
    expect: Option<Vec<String>>,
    #[serde(default)]
    step: Vec<Step>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ImageSpec {
    version: String,
    len: usize,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ActivateSpec {
    target: String,
    expected_hash: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Expect {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Step {
    at_ms: Option<u64>,
    out: Option<String>,
    #[serde(rename = "in")]
    input: Option<String>,
    expect: Option<Expect>,
    fault: Option<String>,
}

fn fixture(path: &Path, contents: String) -> Result<()> {
    let f: Fixture = toml::from_str(&contents)?;
    if f.origin.trim().is_empty() || f.see.trim().is_empty() {
        return Err("every fixture names its origin and see".into());
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    match f.kind.as_str() {
        "frame" => frame(&f),
        "decode" => decode(&f),
        "upload" | "activate" | "state" => {
            transcript(&f).map_err(|e| format!("{name}: {e}").into())
        }
        other => Err(format!("unknown kind {other:?}").into()),
    }
}

fn wire_of(f: &Fixture) -> Result<Option<Vec<u8>>> {
    match (&f.wire, &f.wire_text) {
        (Some(h), None) => Ok(Some(hex::parse(h)?)),
        (None, Some(t)) => Ok(Some(t.as_bytes().to_vec())),
        (None, None) => Ok(None),
        _ => Err("give wire or wire_text, not both".into()),
    }
}

fn mismatch(what: &str, want: &[u8], got: &[u8]) -> Box<dyn std::error::Error> {
    let at = want
        .iter()
        .zip(got)
        .position(|(a, b)| a != b)
        .unwrap_or(want.len().min(got.len()));
    format!(
        "{what} differs at byte {at}\n want ({} bytes): {}\n  got ({} bytes): {}",
        want.len(),
        hex::spaced(want),
        got.len(),
        hex::spaced(got)
    )
    .into()
}

/// `kind = "frame"`: a message encodes to the wire bytes, and decodes back.
fn frame(f: &Fixture) -> Result<()> {
    let msg = hex::parse(f.message.as_deref().ok_or("frame needs message")?)?;
    let wire = serial::encode(&msg, f.line_len.unwrap_or(serial::MAX_LINE));
    if let Some(want) = wire_of(f)? {
        if want != wire {
            return Err(mismatch("wire", &want, &wire));
        }
    }
    if let Some(lens) = &f.line_lengths {
        let got: Vec<usize> = wire
            .split_inclusive(|&b| b == b'\n')
            .map(<[u8]>::len)
            .collect();
        if *lens != got {
            return Err(format!("line lengths {got:?}, want {lens:?}").into());
        }
    }
    let events = Decoder::default().decode_all(&wire);
    if events != [DecodeEvent::Message(msg)] {
        return Err(format!("decoding the wire gave {events:?}").into());
    }
    Ok(())
}

fn decode_name(e: &DecodeEvent) -> String {
    match e {
        DecodeEvent::Message(m) => format!("message {}", hex::spaced(m)),
        DecodeEvent::BadCrc { .. } => "bad_crc".into(),
        DecodeEvent::BadLength(n) => format!("bad_length {n}"),
        DecodeEvent::Overrun => "overrun".into(),
        DecodeEvent::BadBase64 => "bad_base64".into(),
        DecodeEvent::Restarted => "restarted".into(),
    }
}

/// `kind = "decode"`: wire bytes give these events, whole, byte by byte
/// and in 7-byte reads.
fn decode(f: &Fixture) -> Result<()> {
    let wire = wire_of(f)?.ok_or("decode needs wire or wire_text")?;
    let want = f.expect.clone().ok_or("decode needs expect")?;
    let max = f.max_packet.unwrap_or(Decoder::DEFAULT_MAX_PACKET);
    for read in [wire.len().max(1), 1, 7] {
        let mut d = Decoder::new(max);
        let mut got = Vec::new();
        for chunk in wire.chunks(read) {
            got.extend(d.decode_all(chunk).iter().map(decode_name));
        }
        if got != want {
            return Err(format!("reads of {read}: events {got:#?}\nwant {want:#?}").into());
        }
    }
    Ok(())
}

fn ms(v: &toml::Value, key: &str) -> Result<Duration> {
    Ok(Duration::from_millis(int(v, key)?))
}

fn int(v: &toml::Value, key: &str) -> Result<u64> {
    v.as_integer()
        .and_then(|i| u64::try_from(i).ok())
        .ok_or_else(|| format!("config.{key}: expected a non-negative integer").into())
}

fn boolean(v: &toml::Value, key: &str) -> Result<bool> {
    v.as_bool()
        .ok_or_else(|| format!("config.{key}: expected a boolean").into())
}

fn smp_version(v: &toml::Value, key: &str) -> Result<SmpVersion> {
    match v.as_str() {
        Some("v1") => Ok(SmpVersion::V1),
        Some("v2") => Ok(SmpVersion::V2),
        _ => Err(format!("config.{key}: \"v1\" or \"v2\"").into()),
    }
}

fn upload_config(t: Option<&toml::Table>) -> Result<UploadConfig> {
    // The transcripts were encoded by Python smp, which fills every chunk
    // to buf_size - 4; `fill_lines = true` gives the engine's own sizing.
    let mut c = UploadConfig {
        fill_lines: false,
        ..UploadConfig::default()
    };
    for (k, v) in t.into_iter().flatten() {
        match k.as_str() {
            "version" => c.version = smp_version(v, k)?,
            "image" => c.image = Some(u32::try_from(int(v, k)?)?),
            "upgrade" => c.upgrade = Some(boolean(v, k)?),
            "read_params" => c.read_params = boolean(v, k)?,
            "default_buf_size" => c.default_buf_size = usize::try_from(int(v, k)?)?,
            "params_timeout_ms" => c.params_timeout = ms(v, k)?,
            "first_timeout_ms" => c.first_timeout = ms(v, k)?,
            "timeout_ms" => c.timeout = ms(v, k)?,
            "retries" => c.retries = u32::try_from(int(v, k)?)?,
            "max_restarts" => c.max_restarts = u32::try_from(int(v, k)?)?,
            "first_seq" => c.first_seq = u8::try_from(int(v, k)?)?,
            "window" => c.window = usize::try_from(int(v, k)?)?,
            "fill_lines" => c.fill_lines = boolean(v, k)?,
            other => return Err(format!("unknown upload config key {other:?}").into()),
        }
    }
    Ok(c)
}

fn activate_config(t: Option<&toml::Table>) -> Result<ActivateConfig> {
    let mut c = ActivateConfig::default();
    for (k, v) in t.into_iter().flatten() {
        match k.as_str() {
            "version" => c.version = smp_version(v, k)?,
            "image" => c.image = int(v, k)?,
            "timeout_ms" => c.timeout = ms(v, k)?,
            "retries" => c.retries = u32::try_from(int(v, k)?)?,
            "reboot_wait_ms" => c.reboot_wait = ms(v, k)?,
            "reboot_timeout_ms" => c.reboot_timeout = ms(v, k)?,
            "reboot_retries" => c.reboot_retries = u32::try_from(int(v, k)?)?,
            "confirm" => c.confirm = boolean(v, k)?,
            "first_seq" => c.first_seq = u8::try_from(int(v, k)?)?,
            "mode" => {
                c.version_policy = v
                    .as_str()
                    .and_then(version::Policy::parse)
                    .ok_or("config.mode: \"exact\" or \"normalised\"")?
            }
            other => return Err(format!("unknown activate config key {other:?}").into()),
        }
    }
    Ok(c)
}

fn state_config(t: Option<&toml::Table>) -> Result<StateReadConfig> {
    let mut c = StateReadConfig::default();
    for (k, v) in t.into_iter().flatten() {
        match k.as_str() {
            "version" => c.version = smp_version(v, k)?,
            "timeout_ms" => c.timeout = ms(v, k)?,
            "retries" => c.retries = u32::try_from(int(v, k)?)?,
            "first_seq" => c.first_seq = u8::try_from(int(v, k)?)?,
            other => return Err(format!("unknown state config key {other:?}").into()),
        }
    }
    Ok(c)
}

/// The fixture image: an MCUboot header, then byte i = (i * 7) % 251.
fn build_image(spec: &ImageSpec) -> Result<Vec<u8>> {
    let mut n = spec.version.split('.').map(str::parse::<u32>);
    let mut next = || n.next().transpose().map(|v| v.unwrap_or(0));
    let v = ImageVersion {
        major: u8::try_from(next()?)?,
        minor: u8::try_from(next()?)?,
        revision: u16::try_from(next()?)?,
        build: next()?,
    };
    if spec.len < 32 {
        return Err("image.len must be at least 32".into());
    }
    let mut img = mcuboot_header(v, u32::try_from(spec.len - 32)?).to_vec();
    img.extend((32..spec.len).map(|i| (i * 7 % 251) as u8));
    Ok(img)
}

fn upload_name(e: &UploadEvent) -> String {
    match e {
        UploadEvent::BufSize {
            buf_size,
            from_device,
        } => {
            format!(
                "buf_size {buf_size} {}",
                if *from_device { "device" } else { "default" }
            )
        }
        UploadEvent::Resumed { off } => format!("resumed {off}"),
        UploadEvent::Restarted => "restarted".into(),
        UploadEvent::WindowFallback { off } => format!("window fallback {off}"),
        UploadEvent::Progress { acked, len } => format!("progress {acked}/{len}"),
        UploadEvent::Done { matched: None } => "done".into(),
        UploadEvent::Done { matched: Some(m) } => format!("done match={m}"),
        UploadEvent::Failed(UploadError::Device(SmpErr::Group { group, rc })) => {
            format!("failed device group={group} rc={rc}")
        }
        UploadEvent::Failed(UploadError::Device(SmpErr::Legacy { rc })) => {
            format!("failed device rc={rc}")
        }
        UploadEvent::Failed(UploadError::Timeout { off, attempts }) => {
            format!("failed timeout off={off} attempts={attempts}")
        }
        UploadEvent::Failed(UploadError::Stalled { off }) => format!("failed stalled off={off}"),
        UploadEvent::Failed(UploadError::Mismatch) => "failed mismatch".into(),
        UploadEvent::Failed(e) => format!("failed {e}"),
    }
}

fn activate_name(e: &ActivateEvent) -> String {
    match e {
        ActivateEvent::Candidate { slot, version } => {
            format!("candidate slot={slot} version={version}")
        }
        ActivateEvent::AlreadyActive { version } => format!("already_active {version}"),
        ActivateEvent::Tested => "tested".into(),
        ActivateEvent::ResetSent { acknowledged: true } => "reset acked".into(),
        ActivateEvent::ResetSent {
            acknowledged: false,
        } => "reset unacked".into(),
        ActivateEvent::Rebooted { version } => format!("rebooted {version}"),
        ActivateEvent::Done { version } => format!("done {version}"),
        ActivateEvent::Failed(e) => format!("failed {e}"),
    }
}

fn state_name(e: &StateReadEvent) -> String {
    match e {
        StateReadEvent::Images(list) => {
            let slots: Vec<String> = list
                .iter()
                .map(|s| {
                    let flag = |on: bool, name: &str| {
                        if on {
                            format!(" {name}")
                        } else {
                            String::new()
                        }
                    };
                    format!(
                        "{}/{} {}{}{}{}",
                        s.image,
                        s.slot,
                        s.version,
                        flag(s.active, "active"),
                        flag(s.confirmed, "confirmed"),
                        flag(s.pending, "pending")
                    )
                })
                .collect();
            format!("images {}", slots.join(", "))
        }
        StateReadEvent::Failed(StateReadError::Timeout { attempts }) => {
            format!("failed timeout attempts={attempts}")
        }
        StateReadEvent::Failed(StateReadError::Device(SmpErr::Legacy { rc })) => {
            format!("failed device rc={rc}")
        }
        StateReadEvent::Failed(StateReadError::Device(SmpErr::Group { group, rc })) => {
            format!("failed device group={group} rc={rc}")
        }
        StateReadEvent::Failed(e) => format!("failed {e}"),
    }
}

// One engine per fixture run: the size difference does not matter.
#[allow(clippy::large_enum_variant)]
enum Engine {
    Upload(Upload, Vec<u8>),
    Activate(Activate),
    State(StateRead),
}

/// Output the engine produced and the test has not matched yet.
#[derive(Default)]
struct Pending {
    out: VecDeque<Vec<u8>>,
    events: VecDeque<String>,
    /// IoTDA result of the failure, if the engine failed.
    failure: Option<result::IotdaResult>,
}

impl Engine {
    fn pump(&mut self, now: Instant, p: &mut Pending) {
        match self {
            Engine::Upload(u, img) => {
                while let Some(r) = u.poll_read() {
                    let start = r.offset as usize;
                    u.handle_data(r.offset, &img[start..start + r.len], now)
                        .unwrap();
                }
                p.out.extend(std::iter::from_fn(|| u.poll_transmit()));
                while let Some(e) = u.poll_event() {
                    if let UploadEvent::Failed(err) = &e {
                        p.failure = Some(result::for_upload(err));
                    }
                    p.events.push_back(upload_name(&e));
                }
            }
            Engine::Activate(a) => {
                p.out.extend(std::iter::from_fn(|| a.poll_transmit()));
                while let Some(e) = a.poll_event() {
                    if let ActivateEvent::Failed(err) = &e {
                        p.failure = Some(result::for_activate(err));
                    }
                    p.events.push_back(activate_name(&e));
                }
            }
            Engine::State(r) => {
                p.out.extend(std::iter::from_fn(|| r.poll_transmit()));
                while let Some(e) = r.poll_event() {
                    if let StateReadEvent::Failed(StateReadError::Device(err)) = &e {
                        p.failure = Some(result::for_smp(err));
                    }
                    p.events.push_back(state_name(&e));
                }
            }
        }
    }

    fn timeout(&self) -> Option<Instant> {
        match self {
            Engine::Upload(u, _) => u.poll_timeout(),
            Engine::Activate(a) => a.poll_timeout(),
            Engine::State(r) => r.poll_timeout(),
        }
    }

    fn fire(&mut self, at: Instant) {
        match self {
            Engine::Upload(u, _) => u.handle_timeout(at),
            Engine::Activate(a) => a.handle_timeout(at),
            Engine::State(r) => r.handle_timeout(at),
        }
    }

    fn message(&mut self, msg: &[u8], now: Instant) {
        match self {
            Engine::Upload(u, _) => u.handle_message(msg, now),
            Engine::Activate(a) => a.handle_message(msg, now),
            Engine::State(r) => r.handle_message(msg, now),
        }
    }
}

fn transcript(f: &Fixture) -> Result<()> {
    let mut now = Instant::ZERO;
    let mut engine = if f.kind == "upload" {
        let img = build_image(f.image.as_ref().ok_or("upload needs [image]")?)?;
        let sha: [u8; 32] = match &f.sha {
            Some(h) => hex::parse(h)?
                .try_into()
                .map_err(|_| "sha must be 32 bytes")?,
            None => Sha256::digest(&img).into(),
        };
        let up = Upload::new(
            upload_config(f.config.as_ref())?,
            img.len() as u64,
            sha,
            now,
        );
        Engine::Upload(up, img)
    } else if f.kind == "state" {
        Engine::State(StateRead::new(state_config(f.config.as_ref())?, now))
    } else {
        let spec = f.activate.as_ref().ok_or("activate needs [activate]")?;
        let hash = spec.expected_hash.as_deref().map(hex::parse).transpose()?;
        Engine::Activate(Activate::new(
            activate_config(f.config.as_ref())?,
            &spec.target,
            hash,
            now,
        ))
    };
    let mut p = Pending::default();
    let mut link = Decoder::default();
    for (i, step) in f.step.iter().enumerate() {
        let at = |e: Box<dyn std::error::Error>| format!("step {}: {e}", i + 1);
        if let Some(t) = step.at_ms {
            let t = Instant::from_millis(t);
            if t < now {
                return Err(at("at_ms goes back in time".into()).into());
            }
            for _ in 0..FIRE_BUDGET {
                match engine.timeout() {
                    Some(d) if d <= t => {
                        engine.fire(d);
                        engine.pump(d, &mut p);
                    }
                    _ => break,
                }
            }
            now = t;
        }
        engine.pump(now, &mut p);
        if let Some(out) = &step.out {
            let want = hex::parse(out)?;
            let got = p.out.pop_front().ok_or_else(|| {
                at(format!("engine wrote nothing, want {}", hex::spaced(&want)).into())
            })?;
            if got != want {
                return Err(at(mismatch("out", &want, &got)).into());
            }
        }
        if let Some(input) = &step.input {
            let msg = hex::parse(input)?;
            let mut wire = serial::encode(&msg, serial::MAX_LINE);
            let mut times = 1;
            match step.fault.as_deref() {
                None | Some("drop") => {}
                Some("corrupt") => {
                    // One base64 character of the header changed: still base64, bad CRC.
                    let i = 14;
                    wire[i] = if wire[i] == b'A' { b'B' } else { b'A' };
                }
                Some("duplicate") => times = 2,
                Some(other) => return Err(at(format!("unknown fault {other:?}").into()).into()),
            }
            let drop = step.fault.as_deref() == Some("drop");
            for _ in 0..times {
                if drop {
                    break;
                }
                for ev in link.decode_all(&wire) {
                    match ev {
                        DecodeEvent::Message(m) => engine.message(&m, now),
                        other => p.events.push_back(format!("frame {}", decode_name(&other))),
                    }
                }
            }
            engine.pump(now, &mut p);
        }
        let expects = match &step.expect {
            None => vec![],
            Some(Expect::One(s)) => vec![s.clone()],
            Some(Expect::Many(v)) => v.clone(),
        };
        for want in expects {
            match p.events.pop_front() {
                Some(got) if got == want => {}
                Some(got) => return Err(at(format!("event {got:?}, want {want:?}").into()).into()),
                None => return Err(at(format!("no event, want {want:?}").into()).into()),
            }
        }
    }
    if !p.out.is_empty() {
        let left: Vec<String> = p.out.iter().map(|m| hex::spaced(m)).collect();
        return Err(format!("unexpected output after the last step: {left:#?}").into());
    }
    if !p.events.is_empty() {
        return Err(format!("unexpected events after the last step: {:?}", p.events).into());
    }
    match (f.result_code, p.failure) {
        (Some(want), Some(got)) if want == got.code.get() => Ok(()),
        (Some(want), got) => Err(format!("result_code {got:?}, want {want}").into()),
        (None, None) => Ok(()),
        (None, Some(got)) => {
            Err(format!("failed with {got:?} but the fixture gives no result_code").into())
        }
    }
}

datatest_stable::harness! {
    { test = fixture, root = "../fixtures/smp", pattern = r"\.toml$" },
}
