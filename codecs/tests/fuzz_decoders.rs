//! Seeded mutation fuzzing of every decoder in `codecs` (docs/fuzzing.md),
//! with the fixtures (`fixtures/**/*.toml`, docs/fixtures.md) as the corpus:
//! IoTDA events, CoAP messages and options (and the peer engine that takes
//! them), SMP serial frames, SMP messages and CBOR bodies (and the engines
//! that take them), framed frames for every built-in profile, MCUboot
//! images, framed TOML profiles. No input may panic or make a decoder hold
//! more than `fuzz::alloc_bound` bytes.
//!
//! - `cargo test -p otabridge-codecs --test fuzz_decoders`: 2 000 inputs per
//!   decoder (seconds).
//! - `cargo test --release -p otabridge-codecs --test fuzz_decoders -- --ignored --nocapture`:
//!   `OTABRIDGE_FUZZ_INPUTS` (default 10^6) per decoder, seed
//!   `OTABRIDGE_FUZZ_SEED`, prints inputs accepted and peak memory per decoder.

#[allow(dead_code)] // the fuzzer uses the runner's subjects, not its checks
mod fixture;
mod fuzz;

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use fixture::schema::Case;
use otabridge_codecs::coap::{
    block::{decode_uint, BlockOpt},
    msg,
    push::PushConfig,
    serve_block2, ExchangeConfig, PackageInfo, PackageStore, PeerEvent, Peers, ReadAt, ReadError,
    ServeConfig,
};
use otabridge_codecs::framed::engine::{Engine as FramedEngine, ImageInfo, Upgrade};
use otabridge_codecs::framed::profile::{self, Profile};
use otabridge_codecs::iotda::{event, time::EventTime, topic};
use otabridge_codecs::lwm2m;
use otabridge_codecs::mcuboot::image::assemble;
use otabridge_codecs::mcuboot::{kind, HashKind, Header, Image, ImageVersion, ImageView};
use otabridge_codecs::smp::activate::{Activate, ActivateConfig};
use otabridge_codecs::smp::header::split_message;
use otabridge_codecs::smp::message as body;
use otabridge_codecs::smp::serial::{self, Decoder};
use otabridge_codecs::smp::state::{StateRead, StateReadConfig};
use otabridge_codecs::smp::upload::{Upload, UploadConfig};
use otabridge_codecs::time::Instant;

#[global_allocator]
static ALLOC: fuzz::Alloc = &stats_alloc::INSTRUMENTED_SYSTEM;

/// Inputs and outputs of every fixture, by the decoder they feed.
#[derive(Default)]
struct Corpus {
    transcripts: Vec<Vec<u8>>,
    iotda: Vec<Vec<u8>>,
    coap: Vec<Vec<u8>>,
    smp_wire: Vec<Vec<u8>>,
    smp_messages: Vec<Vec<u8>>,
    framed: Vec<Vec<u8>>,
    profiles: Vec<Vec<u8>>,
    images: Vec<Vec<u8>>,
    links: Vec<Vec<u8>>,
}

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures")
}

fn toml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            toml_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "toml") {
            out.push(p);
        }
    }
}

fn corpus() -> &'static Corpus {
    static CORPUS: OnceLock<Corpus> = OnceLock::new();
    CORPUS.get_or_init(|| {
        let mut c = Corpus::default();
        let mut files = Vec::new();
        toml_files(&fixtures_dir(), &mut files);
        for path in files {
            let text = std::fs::read_to_string(&path).unwrap();
            if path.components().any(|p| p.as_os_str() == "profiles") {
                c.profiles.push(text.into_bytes());
                continue;
            }
            let Ok(case) = Case::parse(&text) else {
                continue; // credentials.toml: not a transcript
            };
            for step in &case.step {
                let io = [step.input_bytes().unwrap(), step.output_bytes().unwrap()];
                for bytes in io.into_iter().flatten() {
                    match case.engine.as_str() {
                        "iotda" => c.iotda.push(bytes),
                        e if e.starts_with("coap.") => c.coap.push(bytes),
                        "smp.decode" | "smp.encode" if step.in_text.is_some() || step.out_text.is_some() => {
                            c.smp_wire.push(bytes)
                        }
                        e if e.starts_with("smp.") => {
                            c.smp_wire.push(serial::encode(&bytes, serial::MAX_LINE));
                            c.smp_messages.push(bytes);
                        }
                        "framed" => c.framed.push(bytes),
                        _ => {}
                    }
                }
            }
        }
        for (_, text) in profile::BUILTIN {
            c.profiles.push(text.as_bytes().to_vec());
        }
        // A valid upgrade event besides the fixtures' (docs/protocols/iotda.md §4.4).
        c.iotda.push(
            br#"{"object_device_id":"prod_node01","services":[{"service_id":"$ota","event_type":"firmware_upgrade","event_time":"20151212T121212Z","paras":{"version":"2.0","url":"https://x/y","file_size":100,"access_token":"t","expires":86400,"sign":"aa","file_name":"f.bin","task_id":"1","sub_device_count":1,"task_ext_info":{"a":1}}}]}"#.to_vec(),
        );
        c.images = images();
        c.transcripts = transcript_seeds();
        // Link format: the CoAP payloads that are (Register, Update,
        // Discover from the fixtures), and the shapes clients send
        // (codecs/src/lwm2m/link.rs, OMA TS Core 1.1 §6.2.1.1, RFC 6690 §5).
        c.links = c
            .coap
            .iter()
            .filter_map(|d| msg::decode(d).ok())
            .map(|p| p.payload)
            .filter(|p| p.first() == Some(&b'<'))
            .collect();
        for seed in [
            "</1/0>,</3/0>,</5/0>",
            "</>;rt=\"oma.lwm2m\";ct=11543,</1/0>,</3/0>,</5>;ver=1.0,</5/0>",
            "</lwm2m>;rt=\"oma.lwm2m\", </lwm2m/1/101>, </lwm2m/3/0>;ver=\"1.1\"",
            " </3/0> ;\n obs , </5/0>;title=\"a \\\"q\\\" b\";ct=\"0 11542\"",
            "</sensors/temp>;rt=\"temperature-c\";if=\"sensor\",</sensors/light>;anchor=\"/x\";rel=\"describedby\"",
        ] {
            c.links.push(seed.as_bytes().to_vec());
        }
        c
    })
}

/// The codecs cases (coap/, smp/, framed/, not broken/), for the
/// transcript target.
fn cases() -> &'static [(Case, PathBuf)] {
    static CASES: OnceLock<Vec<(Case, PathBuf)>> = OnceLock::new();
    CASES.get_or_init(|| {
        let mut files = Vec::new();
        toml_files(&fixtures_dir(), &mut files);
        files
            .into_iter()
            .filter(|p| {
                !p.components()
                    .any(|c| c.as_os_str() == "broken" || c.as_os_str() == "profiles")
            })
            .filter_map(|p| {
                let case = Case::parse(&std::fs::read_to_string(&p).ok()?).ok()?;
                let dir = p.parent()?.to_path_buf();
                (case.engine != "iotda").then_some((case, dir))
            })
            .collect()
    })
}

/// Seeds of the transcript target: case number, step number, then the
/// input that step feeds.
fn transcript_seeds() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for (i, (case, _)) in cases().iter().enumerate() {
        for (k, step) in case.step.iter().enumerate() {
            if let Ok(Some(bytes)) = step.input_bytes() {
                let mut seed = vec![i as u8, k as u8];
                seed.extend(bytes);
                out.push(seed);
            }
        }
    }
    out
}

/// An engine in the middle of a recorded transcript gets the mutated
/// input instead of the step's: the first two bytes choose the case and
/// the step, the rest is the input. Reaches the states a fresh decoder
/// never sees (a push at block 40, an upload at its last chunk, an
/// activation waiting for the reboot).
fn transcript(b: &[u8]) -> bool {
    let [c, k, input @ ..] = b else {
        return false;
    };
    let all = cases();
    let (case, dir) = &all[*c as usize % all.len()];
    let Ok(mut subject) = fixture::subject(case, dir) else {
        return false;
    };
    let k = *k as usize % (case.step.len() + 1);
    let Ok(now) = fixture::replay_prefix(case, subject.as_mut(), k) else {
        return false;
    };
    let _ = subject.input(input, None, now);
    let _ = fixture::settle(case, subject.as_mut(), now);
    true
}

/// MCUboot images as imgtool lays them out: bodies of several sizes, with
/// and without protected TLVs, each hash kind, trailing erased flash.
fn images() -> Vec<Vec<u8>> {
    let v = ImageVersion {
        major: 1,
        minor: 2,
        revision: 3,
        build: 4,
    };
    let mut out = Vec::new();
    for (i, hash) in [HashKind::Sha256, HashKind::Sha384, HashKind::Sha512]
        .into_iter()
        .enumerate()
    {
        for body_len in [0usize, 7, 300] {
            let body: Vec<u8> = (0..body_len).map(|b| (b * 7 % 251) as u8).collect();
            let sec = [0u8; 4];
            let prot: Vec<(u16, &[u8])> = if i == 1 {
                vec![(0x50, &sec[..])]
            } else {
                vec![]
            };
            let key = [0x11u8; 32];
            let unprot: Vec<(u16, &[u8])> = if i == 2 {
                vec![(kind::KEYHASH, &key[..])]
            } else {
                vec![]
            };
            let mut img = assemble(v, 0, 32, &body, &prot, hash, &unprot);
            if body_len == 7 {
                img.resize(img.len() + 16, 0xff);
            }
            out.push(img);
        }
    }
    out
}

/// The package a CoAP child pulls: 300 bytes.
struct Store;

const PACKAGE: [u8; 300] = {
    let mut p = [0u8; 300];
    let mut i = 0;
    while i < 300 {
        p[i] = i as u8;
        i += 1;
    }
    p
};

impl PackageStore for Store {
    fn lookup(&mut self, name: &str) -> Option<PackageInfo> {
        (name.len() == 64).then_some(PackageInfo {
            len: PACKAGE.len() as u32,
            sha256: [7; 32],
        })
    }
    fn read_at(&mut self, _: &str, offset: u64, buf: &mut [u8]) -> Result<(), ReadError> {
        let mut p = PACKAGE;
        p.as_mut_slice().read_at(offset, buf)
    }
}

/// Each decoder returns whether the input got past its first parse (the
/// share of inputs accepted is printed: mutations that all die at the first
/// byte would test nothing).
/// The envelope reader as the gateway uses it (`event::read`, service by
/// service) and as the simulators do (`event::parse`): they agree, every
/// unusable service gives a failure description, and every event read
/// encodes and reads back as itself.
fn iotda(b: &[u8]) -> bool {
    let text = String::from_utf8_lossy(b);
    let _ = EventTime::parse(&text);
    let _ = topic::classify("gw-product_gw01", &text);
    let Ok(services) = event::read(b) else {
        assert!(event::parse(b).is_err());
        return false;
    };
    let all_ok = services.iter().all(Result::is_ok);
    assert_eq!(event::parse(b).is_ok(), all_ok);
    for s in &services {
        match s {
            Ok(inc) => {
                let t = EventTime::parse("20151212T121212Z").unwrap();
                let bytes = event::encode(
                    inc.object_device_id.as_deref(),
                    &inc.event,
                    t,
                    inc.event_id.as_deref(),
                );
                let back = event::parse(&bytes).expect("an encoded event reads back");
                assert_eq!(back.len(), 1);
                assert_eq!(back[0].event, inc.event);
                assert_eq!(back[0].object_device_id, inc.object_device_id);
                assert_eq!(back[0].event_id, inc.event_id);
            }
            Err(u) => {
                if u.upgrade().is_some() {
                    assert!(!u.failure().1.is_empty());
                }
            }
        }
    }
    all_ok
}

/// Link format (RFC 6690), as LwM2M Register and Update payloads carry it:
/// the generic syntax, then LwM2M's meaning. What parses must write back
/// and parse to the same links (`link::format`'s contract, for targets
/// without `>`).
fn link_format(b: &[u8]) -> bool {
    let Ok(links) = lwm2m::link::parse(b) else {
        return false;
    };
    let _ = lwm2m::link::objects(&links);
    let _ = lwm2m::link::parse_objects(b);
    if links.iter().all(|l| !l.target.contains('>')) {
        let text = lwm2m::link::format(&links);
        let again = lwm2m::link::parse(text.as_bytes());
        assert_eq!(again.as_ref().ok(), Some(&links), "format gave {text:?}");
    }
    true
}

fn coap_message(b: &[u8]) -> bool {
    let Ok(p) = msg::decode(b) else {
        return false;
    };
    for (_, values) in p.options() {
        for v in values {
            let _ = BlockOpt::decode(v);
            let _ = decode_uint(v);
        }
    }
    let _ = lwm2m::parse_text(&p.payload);
    let _ = lwm2m::parse_integer(&p.payload);
    let _ = lwm2m::State::from_plain_text(&p.payload);
    let _ = lwm2m::UpdateResult::from_plain_text(&p.payload);
    let _ = lwm2m::DeliveryMethod::from_plain_text(&p.payload);
    true
}

/// Drains a peer engine, serving Block2 requests as the gateway does.
fn drain(peers: &mut Peers<u8, Vec<u8>>, now: Instant) -> usize {
    let config = ServeConfig {
        prefix: "fw".into(),
        max_szx: 6,
    };
    let mut events = 0;
    for _ in 0..64 {
        let mut moved = false;
        while let Some(ev) = peers.poll_event() {
            moved = true;
            events += 1;
            if let PeerEvent::Request(req) = ev {
                let reply = serve_block2(&config, &req.packet, &mut Store);
                let _ = peers.respond(&req, reply.response, now);
            }
        }
        while peers.poll_transmit().is_some() {
            moved = true;
        }
        if !moved {
            return events;
        }
    }
    panic!("the peer engine keeps producing");
}

fn coap_engine(b: &[u8]) -> bool {
    let config = ExchangeConfig {
        first_message_id: Some(0x0100),
        first_token: Some(1),
        token_len: 1,
        ..ExchangeConfig::default()
    };
    // A push in flight (its answers), and the Block2 server (requests).
    let mut peers = Peers::new(config).unwrap();
    let push = PushConfig {
        path: vec!["5".into(), "0".into(), "0".into()],
        total_len: 100,
        szx: 2,
        content_format: Some(42),
        request_tag: None,
        resume_offset: 0,
        max_restarts: 3,
    };
    let now = Instant::ZERO;
    peers.start_push(1, push, vec![0x5a; 100], now).unwrap();
    drain(&mut peers, now);
    let accepted = peers.handle_datagram(1, b, now).is_ok();
    let events = drain(&mut peers, now);
    let _ = peers.handle_datagram(2, b, now);
    drain(&mut peers, now);
    for _ in 0..3 {
        match peers.poll_timeout() {
            Some(t) => {
                peers.handle_timeout(t);
                drain(&mut peers, t);
            }
            None => break,
        }
    }
    accepted && events > 0
}

fn smp_serial(b: &[u8]) -> bool {
    let _ = Decoder::new(64).decode_all(b);
    Decoder::default()
        .decode_all(b)
        .iter()
        .any(|e| matches!(e, serial::DecodeEvent::Message(_)))
}

fn smp_message(b: &[u8]) -> bool {
    let split = split_message(b);
    if let Ok((_, body_bytes)) = split {
        let _ = body::params_response(body_bytes);
        let _ = body::upload_response(body_bytes);
        let _ = body::state_response(body_bytes);
        let _ = body::reset_response(body_bytes);
        let _ = body::echo_response(body_bytes);
        let _ = body::decode_echo(body_bytes);
        let _ = body::decode_upload_request(body_bytes);
        let _ = body::decode_state_write(body_bytes);
    }
    // The engines take the message as an answer to what they asked.
    let now = Instant::ZERO;
    let mut up = Upload::new(UploadConfig::default(), 300, [1; 32], now);
    while up.poll_transmit().is_some() {}
    up.handle_message(b, now);
    while up.poll_event().is_some() || up.poll_transmit().is_some() {}
    let mut act = Activate::new(ActivateConfig::default(), "1.2.3", None, now);
    while act.poll_transmit().is_some() {}
    act.handle_message(b, now);
    while act.poll_event().is_some() || act.poll_transmit().is_some() {}
    let mut st = StateRead::new(StateReadConfig::default(), now);
    while st.poll_transmit().is_some() {}
    st.handle_message(b, now);
    while st.poll_event().is_some() || st.poll_transmit().is_some() {}
    split.is_ok()
}

fn builtin_profiles() -> &'static [Arc<Profile>] {
    static P: OnceLock<Vec<Arc<Profile>>> = OnceLock::new();
    P.get_or_init(|| {
        let mut v: Vec<Arc<Profile>> = profile::BUILTIN
            .iter()
            .map(|(n, _)| Arc::new(profile::builtin(n).unwrap().unwrap()))
            .collect();
        let own = fixtures_dir().join("framed/profiles/tiny-crc8.toml");
        let text = std::fs::read_to_string(&own).unwrap();
        v.push(Arc::new(Profile::parse(&text, "tiny-crc8.toml").unwrap()));
        v
    })
}

fn framed(b: &[u8]) -> bool {
    let image: Vec<u8> = (0..300).map(|i| (i % 251) as u8).collect();
    let mut answered = false;
    for p in builtin_profiles() {
        let upgrade = Upgrade {
            image: ImageInfo::of(&image, "1.1.0"),
            skip_if_current: false,
            version_policy: Default::default(),
            seed: 1,
        };
        let mut e = FramedEngine::new(Arc::clone(p), upgrade, Instant::ZERO).unwrap();
        let now = Instant::from_millis(10);
        while e.poll_transmit().is_some() {}
        e.handle_input(b, now);
        // Serve what it reads, take what it writes, fire one timeout.
        for _ in 0..16 {
            if let Some(r) = e.poll_read() {
                let end = (r.offset as usize + r.len).min(image.len());
                let start = (r.offset as usize).min(end);
                let _ = e.handle_data(r.offset, &image[start..end], now);
            }
            while e.poll_transmit().is_some() {}
            while e.poll_event().is_some() {
                answered = true;
            }
            if e.poll_read().is_none() {
                break;
            }
        }
        if let Some(t) = e.poll_timeout() {
            e.handle_timeout(t);
        }
        e.handle_input(b, now);
        while e.poll_transmit().is_some() || e.poll_event().is_some() {}
    }
    answered
}

fn mcuboot(b: &[u8]) -> bool {
    let _ = Header::parse(b);
    let _ = Image::parse(b);
    let Ok(v) = ImageView::new(b) else {
        return false;
    };
    let f = v.trailer().facts();
    let _ = (v.body().len(), v.signed().len(), v.trailing().len());
    let _ = (f.hash.is_some(), v.trailer().entries().count());
    let _ = v.to_image();
    true
}

fn profile_toml(b: &[u8]) -> bool {
    Profile::parse(&String::from_utf8_lossy(b), "fuzz.toml").is_ok()
}

type Target = (&'static str, fn(&Corpus) -> &[Vec<u8>], fn(&[u8]) -> bool);

/// Every decoder with its corpus.
const TARGETS: &[Target] = &[
    ("iotda_events", |c| &c.iotda, iotda),
    ("coap_messages", |c| &c.coap, coap_message),
    ("coap_peer_engine", |c| &c.coap, coap_engine),
    ("smp_serial", |c| &c.smp_wire, smp_serial),
    ("smp_messages", |c| &c.smp_messages, smp_message),
    ("framed_frames", |c| &c.framed, framed),
    ("mcuboot_images", |c| &c.images, mcuboot),
    ("framed_profiles", |c| &c.profiles, profile_toml),
    ("link_format", |c| &c.links, link_format),
    ("engines_mid_transcript", |c| &c.transcripts, transcript),
];

/// Builds what the decoders share before any is measured.
fn warm_up() {
    let _ = (corpus(), builtin_profiles(), cases());
}

fn short(name: &str) {
    warm_up();
    let (_, corpus_of, decode) = TARGETS.iter().find(|t| t.0 == name).unwrap();
    let r = fuzz::fuzz(
        name,
        corpus_of(corpus()),
        fuzz::SHORT_INPUTS,
        fuzz::seed(),
        decode,
    );
    eprintln!("{name}: {r}");
}

#[test]
fn iotda_events() {
    short("iotda_events");
}

#[test]
fn coap_messages() {
    short("coap_messages");
}

#[test]
fn coap_peer_engine() {
    short("coap_peer_engine");
}

#[test]
fn smp_serial_frames() {
    short("smp_serial");
}

#[test]
fn smp_messages_and_cbor_bodies() {
    short("smp_messages");
}

#[test]
fn framed_frames() {
    short("framed_frames");
}

#[test]
fn mcuboot_images() {
    short("mcuboot_images");
}

#[test]
fn framed_profiles() {
    short("framed_profiles");
}

#[test]
fn link_format_payloads() {
    short("link_format");
}

#[test]
fn engines_mid_transcript() {
    short("engines_mid_transcript");
}

/// The corpus is what the fixtures hold: a decoder without seeds would
/// fuzz nothing of interest.
#[test]
fn every_decoder_has_a_corpus() {
    warm_up();
    for (name, corpus_of, _) in TARGETS {
        assert!(
            corpus_of(corpus()).len() >= 3,
            "{name}: {} seeds",
            corpus_of(corpus()).len()
        );
    }
}

/// The long run: `OTABRIDGE_FUZZ_INPUTS` (default 10^6) inputs per decoder.
#[test]
#[ignore = "long: run with --ignored (docs/fuzzing.md)"]
fn long() {
    warm_up();
    let n = fuzz::long_inputs();
    let seed = fuzz::seed();
    for (name, corpus_of, decode) in TARGETS {
        let r = fuzz::fuzz(name, corpus_of(corpus()), n, seed, decode);
        println!("{name}: {r}");
    }
}
