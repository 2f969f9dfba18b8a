//! Replays the CoAP transcripts in `fixtures/coap/*.toml` against the
//! sans-IO engines, one test per file (format: `fixtures/coap/README.md`).
//!
//! The harness is a driver of the daemon's kind (`src/child/coap/network.rs`
//! and `src/child/coap.rs` call the same engine methods in the same order):
//! one `Peers` (the peer engine: message layer, NSTART, held requests,
//! Block1 pushes) with a push started on it (engine = "push"), with
//! `serve_block2` answering the child's requests (engine = "serve"), or
//! with an `UpdateProcedure` whose actions go to it plus `serve_block2`
//! (engine = "update"). It feeds the file's `in` datagrams and time, and
//! checks every datagram the engines emit against the file's `out` steps
//! and every event against its `expect` steps. Nothing may be emitted that
//! the file does not list, and a step budget turns a looping engine into a
//! failure.

use std::collections::VecDeque;
use std::path::Path;
use std::time::Duration;

use otabridge_codecs::coap::{
    push::{PushConfig, RestartReason},
    serve_block2,
    update::Phase,
    Action, Delivery, ExchangeConfig, OpId, Outcome, PackageInfo, PackageStore, PeerEvent, Peers,
    PushEvent, PushFailure, ReadAt, ReadError, ServeConfig, UpdateConfig, UpdateEvent,
    UpdateProcedure,
};
use otabridge_codecs::hex;
use otabridge_codecs::lwm2m;
use otabridge_codecs::time::Instant;
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// The peer every datagram comes from and goes to.
const CHILD: u8 = 1;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    origin: String,
    see: String,
    engine: String,
    #[serde(default = "default_budget")]
    max_steps: usize,
    #[serde(default)]
    ignore_events: Vec<String>,
    #[serde(default)]
    exchange: ExchangeToml,
    push: Option<PushToml>,
    serve: Option<ServeToml>,
    update: Option<UpdateToml>,
    step: Vec<Step>,
    /// Only in `broken/`: the error the harness must report.
    must_fail: Option<String>,
}

fn default_budget() -> usize {
    1000
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExchangeToml {
    seed: Option<u64>,
    first_message_id: Option<u16>,
    first_token: Option<u64>,
    token_len: Option<u8>,
    ack_timeout_ms: Option<u64>,
    ack_random_factor: Option<f64>,
    max_retransmit: Option<u32>,
    response_timeout_ms: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PushToml {
    path: String,
    image_len: u32,
    szx: u8,
    content_format: Option<u32>,
    request_tag: Option<String>,
    #[serde(default)]
    resume_offset: u32,
    #[serde(default = "default_restarts")]
    max_restarts: u32,
}

fn default_restarts() -> u32 {
    3
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServeToml {
    #[serde(default = "default_prefix")]
    prefix: String,
    max_szx: u8,
    package_len: u32,
}

fn default_prefix() -> String {
    "fw".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateToml {
    target_version: String,
    /// "pull" or "push".
    delivery: String,
    package_len: u32,
    /// Pull: the gateway's `host:port` in the Package URI.
    #[serde(default = "default_gateway")]
    gateway: String,
    /// Pull: largest block the gateway serves.
    #[serde(default = "default_max_szx")]
    max_szx: u8,
    /// Push: first block size.
    #[serde(default = "default_max_szx")]
    szx: u8,
    #[serde(default)]
    resume_offset: u32,
    poll_interval_ms: Option<u64>,
    download_timeout_ms: Option<u64>,
    update_timeout_ms: Option<u64>,
    max_attempts: Option<u32>,
}

fn default_gateway() -> String {
    "192.168.10.1:5683".into()
}

fn default_max_szx() -> u8 {
    6
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Step {
    at_ms: Option<u64>,
    #[serde(rename = "in")]
    input: Option<String>,
    out: Option<String>,
    expect: Option<String>,
    fault: Option<String>,
    #[allow(dead_code)] // documentation for the reader of the file
    note: Option<String>,
}

/// Image and package bytes: byte `i` is `i mod 256`, so any offset can be
/// checked by eye in a hex dump.
fn pattern(len: u32) -> Vec<u8> {
    (0..len).map(|i| i as u8).collect()
}

struct Store {
    name: String,
    data: Vec<u8>,
    sha256: [u8; 32],
}

impl PackageStore for Store {
    fn lookup(&mut self, name: &str) -> Option<PackageInfo> {
        (name == self.name).then_some(PackageInfo {
            len: self.data.len() as u32,
            sha256: self.sha256,
        })
    }
    fn read_at(&mut self, _: &str, offset: u64, buf: &mut [u8]) -> Result<(), ReadError> {
        self.data.read_at(offset, buf)
    }
}

/// The gateway's client side: what sends requests to the child.
enum Client {
    Nothing,
    /// A push started on the peer engine (`Peers::start_push`).
    Push,
    Update(Box<UpdateProcedure>),
}

struct Run {
    now: Instant,
    peers: Peers<u8, Vec<u8>>,
    client: Client,
    /// The request or push of `client` in flight on `peers`.
    in_flight: Option<OpId>,
    /// The image pushed (read by offset).
    image: Vec<u8>,
    /// The gateway's Block2 server, when the child pulls.
    server: Option<(ServeConfig, Store)>,
    out: VecDeque<Vec<u8>>,
    events: VecDeque<String>,
    ignore: Vec<String>,
    steps: usize,
    budget: usize,
}

fn push_event(e: PushEvent) -> String {
    match e {
        PushEvent::Progress { acked, total, .. } => format!("progress {acked}/{total}"),
        PushEvent::BlockSize { szx } => format!("block_size szx={szx}"),
        PushEvent::Restarted { reason, szx } => {
            let r = match reason {
                RestartReason::Incomplete => "incomplete",
                RestartReason::SmallerBlocks => "smaller_blocks",
            };
            format!("restarted {r} szx={szx}")
        }
        PushEvent::Done(code) => format!("done {code}"),
        PushEvent::Failed(f) => format!(
            "failed {}",
            match f {
                PushFailure::TooLarge { max: Some(m) } => format!("too_large max={m}"),
                PushFailure::TooLarge { max: None } => "too_large".into(),
                PushFailure::Rejected(c) => format!("rejected {c}"),
                PushFailure::TooManyRestarts(n) => format!("too_many_restarts {n}"),
                PushFailure::TooManyBlocks => "too_many_blocks".into(),
                PushFailure::Protocol(_) => "protocol".into(),
                PushFailure::Unreachable => "unreachable".into(),
                PushFailure::NoResponse => "no_response".into(),
                PushFailure::Reset => "reset".into(),
                PushFailure::Read(_) => "read".into(),
            }
        ),
    }
}

fn update_event(e: UpdateEvent) -> String {
    match e {
        UpdateEvent::CurrentVersion(v) => format!("version {v}"),
        UpdateEvent::Phase(p) => format!(
            "phase {}",
            match p {
                Phase::Checking => "checking",
                Phase::Resetting => "resetting",
                Phase::Delivering => "delivering",
                Phase::Downloaded => "downloaded",
                Phase::Updating => "updating",
            }
        ),
        UpdateEvent::Progress { delivered, total } => format!("progress {delivered}/{total}"),
        UpdateEvent::Retrying { attempt, cause } => {
            format!("retrying attempt={attempt} iotda={}", cause.to_iotda().0)
        }
        UpdateEvent::Finished(Outcome::Updated) => "finished updated".into(),
        UpdateEvent::Finished(Outcome::AlreadyCurrent) => "finished already_current".into(),
        UpdateEvent::Finished(Outcome::Failed(f)) => {
            let (code, text) = f.to_iotda();
            format!("finished failed iotda={code} {text}")
        }
    }
}

impl Run {
    fn tick(&mut self) -> Result<(), String> {
        self.steps += 1;
        if self.steps > self.budget {
            return Err(format!(
                "step budget of {} exhausted: the engines loop",
                self.budget
            ));
        }
        Ok(())
    }

    fn record(&mut self, event: String) {
        let kind = event.split(' ').next().unwrap_or("");
        if !self.ignore.iter().any(|k| k == kind) {
            self.events.push_back(event);
        }
    }

    /// Moves everything the engines have to say into `out` and `events`,
    /// the way the daemon's driver loop does.
    fn pump(&mut self) -> Result<(), String> {
        loop {
            self.tick()?;
            let mut progressed = false;
            if let Client::Update(u) = &mut self.client {
                match u.poll_action(self.now) {
                    None => {}
                    Some(Action::Request(req)) => {
                        let op = self
                            .peers
                            .request(CHILD, req, self.now)
                            .map_err(|e| format!("request: {e}"))?;
                        self.in_flight = Some(op);
                        progressed = true;
                    }
                    Some(Action::Push(cfg)) => {
                        let op = self
                            .peers
                            .start_push(CHILD, cfg, self.image.clone(), self.now)
                            .map_err(|e| format!("start_push: {e}"))?;
                        self.in_flight = Some(op);
                        progressed = true;
                    }
                    Some(Action::Cancel) => {
                        if let Some(op) = self.in_flight.take() {
                            self.peers.cancel(op, self.now);
                        }
                        progressed = true;
                    }
                }
            }
            while let Some(ev) = self.peers.poll_event() {
                progressed = true;
                self.on_peer_event(ev)?;
            }
            while let Some(t) = self.peers.poll_transmit() {
                assert_eq!(t.peer, CHILD);
                self.out.push_back(t.bytes);
                progressed = true;
            }
            if let Client::Update(u) = &mut self.client {
                let events: Vec<String> = std::iter::from_fn(|| u.poll_event())
                    .map(update_event)
                    .collect();
                for e in events {
                    progressed = true;
                    self.record(e);
                }
            }
            if !progressed {
                return Ok(());
            }
        }
    }

    fn on_peer_event(&mut self, ev: PeerEvent<u8>) -> Result<(), String> {
        let now = self.now;
        let mine = |op: OpId, in_flight: Option<OpId>| Some(op) == in_flight;
        match ev {
            PeerEvent::Request(req) => {
                let Some((config, store)) = &mut self.server else {
                    return Err(format!(
                        "the child sent a request and nothing serves: {req:?}"
                    ));
                };
                let reply = serve_block2(config, &req.packet, store);
                self.peers
                    .respond(&req, reply.response, now)
                    .map_err(|e| format!("respond: {e}"))?;
                if let Some(b) = &reply.served {
                    let last = if b.last { " last" } else { "" };
                    self.record(format!(
                        "served num={} szx={} offset={} len={}{last}",
                        b.num, b.szx, b.offset, b.len
                    ));
                    if let Client::Update(u) = &mut self.client {
                        u.handle_served(b, now);
                    }
                }
            }
            PeerEvent::Response { op, response, .. } if mine(op, self.in_flight) => {
                self.in_flight = None;
                if let Client::Update(u) = &mut self.client {
                    u.handle_response(&response, now);
                }
            }
            PeerEvent::Failed { op, why, .. } if mine(op, self.in_flight) => {
                self.in_flight = None;
                if let Client::Update(u) = &mut self.client {
                    u.handle_failure(why, now);
                }
            }
            PeerEvent::Push { op, event, .. } if mine(op, self.in_flight) => {
                if matches!(event, PushEvent::Done(_) | PushEvent::Failed(_)) {
                    self.in_flight = None;
                }
                match &mut self.client {
                    Client::Update(u) => u.handle_push_event(&event, now),
                    _ => self.record(push_event(event)),
                }
            }
            other => return Err(format!("unexpected peer engine event {other:?}")),
        }
        Ok(())
    }

    fn no_pending_output(&self, before: &str) -> Result<(), String> {
        match self.out.front() {
            None => Ok(()),
            Some(bytes) => Err(format!(
                "unexpected output before {before}: the engine sent\n  {}\n(add an `out` step for it)",
                hex::spaced(bytes)
            )),
        }
    }
}

fn hex_diff(expected: &[u8], actual: &[u8]) -> String {
    let at = expected
        .iter()
        .zip(actual)
        .position(|(a, b)| a != b)
        .unwrap_or(expected.len().min(actual.len()));
    format!(
        "output differs at byte {at}\n  expected: {}\n  actual:   {}",
        hex::spaced(expected),
        hex::spaced(actual)
    )
}

fn build(case: &Case) -> Result<Run, String> {
    let x = &case.exchange;
    let d = ExchangeConfig::default();
    let config = ExchangeConfig {
        seed: x.seed.unwrap_or(d.seed),
        first_message_id: x.first_message_id,
        first_token: x.first_token,
        token_len: x.token_len.unwrap_or(d.token_len),
        ack_timeout: x
            .ack_timeout_ms
            .map(Duration::from_millis)
            .unwrap_or(d.ack_timeout),
        ack_random_factor: x.ack_random_factor.unwrap_or(d.ack_random_factor),
        max_retransmit: x.max_retransmit.unwrap_or(d.max_retransmit),
        response_timeout: x
            .response_timeout_ms
            .map(Duration::from_millis)
            .unwrap_or(d.response_timeout),
        ..d
    };
    let mut peers = Peers::new(config).map_err(|e| format!("[exchange]: {e}"))?;
    let package = |len: u32| {
        let data = pattern(len);
        let sha256: [u8; 32] = Sha256::digest(&data).into();
        let name: String = sha256.iter().map(|b| format!("{b:02x}")).collect();
        Store { name, data, sha256 }
    };
    let tables = (&case.push, &case.serve, &case.update);
    let (client, image, server, in_flight) = match (case.engine.as_str(), tables) {
        ("push", (Some(p), None, None)) => {
            let request_tag = p.request_tag.as_deref().map(hex::parse).transpose();
            let cfg = PushConfig {
                path: p
                    .path
                    .split('/')
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect(),
                total_len: p.image_len,
                szx: p.szx,
                content_format: p.content_format,
                request_tag: request_tag.map_err(|e| format!("[push] request_tag: {e}"))?,
                resume_offset: p.resume_offset,
                max_restarts: p.max_restarts,
            };
            let image = pattern(p.image_len);
            let op = peers
                .start_push(CHILD, cfg, image.clone(), Instant::ZERO)
                .map_err(|e| format!("[push]: {e}"))?;
            (Client::Push, image, None, Some(op))
        }
        ("serve", (None, Some(s), None)) => {
            let config = ServeConfig {
                prefix: s.prefix.clone(),
                max_szx: s.max_szx,
            };
            (
                Client::Nothing,
                Vec::new(),
                Some((config, package(s.package_len))),
                None,
            )
        }
        ("update", (None, None, Some(u))) => {
            let store = package(u.package_len);
            let (delivery, server) = match u.delivery.as_str() {
                "pull" => {
                    let uri = lwm2m::package_uri(&u.gateway, &store.name);
                    let config = ServeConfig {
                        prefix: "fw".into(),
                        max_szx: u.max_szx,
                    };
                    (Delivery::Pull { uri }, Some((config, store)))
                }
                "push" => (
                    Delivery::Push {
                        szx: u.szx,
                        resume_offset: u.resume_offset,
                    },
                    None,
                ),
                other => return Err(format!("[update] delivery = \"{other}\": pull or push")),
            };
            let d = UpdateConfig::new(u.target_version.clone(), u.package_len, delivery);
            let ms = |v: Option<u64>, dflt: Duration| v.map(Duration::from_millis).unwrap_or(dflt);
            let cfg = UpdateConfig {
                poll_interval: ms(u.poll_interval_ms, d.poll_interval),
                download_timeout: ms(u.download_timeout_ms, d.download_timeout),
                update_timeout: ms(u.update_timeout_ms, d.update_timeout),
                max_attempts: u.max_attempts.unwrap_or(d.max_attempts),
                ..d
            };
            let procedure = UpdateProcedure::new(cfg).map_err(|e| format!("[update]: {e}"))?;
            (
                Client::Update(Box::new(procedure)),
                pattern(u.package_len),
                server,
                None,
            )
        }
        (e, _) => {
            return Err(format!(
                "engine = \"{e}\" needs exactly its own table: [push], [serve] or [update]"
            ))
        }
    };
    Ok(Run {
        now: Instant::ZERO,
        peers,
        client,
        in_flight,
        image,
        server,
        out: VecDeque::new(),
        events: VecDeque::new(),
        ignore: case.ignore_events.clone(),
        steps: 0,
        budget: case.max_steps,
    })
}

fn replay(case: &Case) -> Result<(), String> {
    if case.origin.trim().is_empty() || case.see.trim().is_empty() {
        return Err("`origin` and `see` must say where the bytes come from".into());
    }
    let mut run = build(case)?;
    run.pump()?;
    for (i, step) in case.step.iter().enumerate() {
        let n = i + 1;
        let ctx = |e: String| format!("step {n}: {e}");
        run.tick().map_err(ctx)?;
        let fault = step.fault.as_deref();
        if let Some(ms) = step.at_ms {
            let t = Instant::from_millis(ms);
            if t < run.now {
                return Err(ctx(format!("at_ms = {ms} goes back in time")));
            }
            if t > run.now {
                // Every datagram must be accounted for before time passes.
                run.no_pending_output(&format!("at_ms = {ms}"))
                    .map_err(ctx)?;
            }
            run.now = t;
            if run.peers.poll_timeout().is_some_and(|d| d <= t) {
                run.peers.handle_timeout(t);
            }
            if let Client::Update(u) = &mut run.client {
                if u.poll_timeout().is_some_and(|d| d <= t) {
                    u.handle_timeout(t);
                }
            }
            run.pump().map_err(ctx)?;
        }
        if let Some(text) = &step.input {
            run.no_pending_output("this `in`").map_err(ctx)?;
            let bytes = hex::parse(text).map_err(|e| ctx(format!("`in` hex: {e}")))?;
            let copies = match fault {
                None => 1,
                Some("drop") => 0,
                Some("duplicate") => 2,
                Some(f) => return Err(ctx(format!("unknown fault \"{f}\" (drop, duplicate)"))),
            };
            for _ in 0..copies {
                // Errors are the engine's business: it answers or ignores.
                let _ = run.peers.handle_datagram(CHILD, &bytes, run.now);
                run.pump().map_err(ctx)?;
            }
        }
        if let Some(text) = &step.out {
            if !matches!(fault, None | Some("drop")) || (step.input.is_some() && fault.is_some()) {
                return Err(ctx(
                    "an `out` step takes only fault = \"drop\", alone".into()
                ));
            }
            let expected = hex::parse(text).map_err(|e| ctx(format!("`out` hex: {e}")))?;
            let Some(actual) = run.out.pop_front() else {
                return Err(ctx(format!(
                    "expected output but the engine sent nothing\n  expected: {}",
                    hex::spaced(&expected)
                )));
            };
            if actual != expected {
                return Err(ctx(hex_diff(&expected, &actual)));
            }
        }
        if let Some(want) = &step.expect {
            match run.events.pop_front() {
                Some(got) if got == *want => {}
                Some(got) => return Err(ctx(format!("expected event \"{want}\", got \"{got}\""))),
                None => return Err(ctx(format!("expected event \"{want}\", got none"))),
            }
        }
    }
    run.no_pending_output("the end of the file")?;
    if let Some(e) = run.events.front() {
        return Err(format!(
            "unexpected event at the end: \"{e}\" (add an `expect` step)"
        ));
    }
    Ok(())
}

fn fixture(path: &Path, text: String) -> datatest_stable::Result<()> {
    let case: Case = toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    replay(&case).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(())
}

/// A case in `fixtures/coap/broken/`: the harness itself must reject it,
/// with an error containing its `must_fail` text. These keep the harness
/// honest: a replay that cannot fail proves nothing.
fn broken_fixture(path: &Path, text: String) -> datatest_stable::Result<()> {
    let case: Case = toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let Some(want) = case.must_fail.clone() else {
        return Err(format!("{}: a broken/ case needs `must_fail`", path.display()).into());
    };
    match replay(&case) {
        Ok(()) => Err(format!(
            "{}: replayed cleanly, expected failure \"{want}\"",
            path.display()
        )
        .into()),
        Err(e) if e.contains(&want) => Ok(()),
        Err(e) => Err(format!("{}: failed with\n{e}\nnot with \"{want}\"", path.display()).into()),
    }
}

fn good_fixture(path: &Path, text: String) -> datatest_stable::Result<()> {
    if text
        .lines()
        .any(|l| l.trim_start().starts_with("must_fail"))
    {
        return Err(format!(
            "{}: `must_fail` cases belong in fixtures/coap/broken/",
            path.display()
        )
        .into());
    }
    fixture(path, text)
}

datatest_stable::harness! {
    { test = good_fixture, root = "../fixtures/coap", pattern = r"^[^/]+\.toml$" },
    { test = broken_fixture, root = "../fixtures/coap/broken", pattern = r"^[^/]+\.toml$" },
}
