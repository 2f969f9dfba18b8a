//! Windowed pipelining in the upload engine against the simulated Zephyr
//! device behind a paced serial line with a few receive buffers, in
//! simulated time: every line crosses the wire at the line rate, the device
//! reads lines through [`RxBuffers`] and is busy for a while with each
//! request, and seeded faults drop answers or whole requests.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use otabridge_codecs::rng::Rng;
use otabridge_codecs::smp::serial::{self, DecodeEvent, Decoder};
use otabridge_codecs::smp::sim::{mcuboot_header, ImageVersion, RxBuffers, SimConfig, SimDevice};
use otabridge_codecs::smp::upload::{Upload, UploadConfig, UploadError, UploadEvent};
use otabridge_codecs::time::Instant;
use sha2::{Digest, Sha256};
use std::time::Duration;

const STEP_BUDGET: usize = 200_000;

fn image(len: usize, seed: u64) -> Vec<u8> {
    let v = ImageVersion {
        major: 2,
        minor: 0,
        revision: 0,
        build: 0,
    };
    let mut img = mcuboot_header(v, (len - 32) as u32).to_vec();
    let mut body = vec![0; len - 32];
    Rng::new(seed).fill(&mut body);
    img.extend(body);
    img
}

/// The line and the device.
#[derive(Clone)]
struct Setup {
    /// Line rate, bytes per second each way (115200 baud 8N1: 11520).
    rate: u64,
    /// Receive line buffers (Zephyr's default 2).
    rx_bufs: usize,
    /// Time the device spends on each request before answering.
    work: Duration,
    /// Probability that an answer is lost.
    drop_answer: f64,
    /// Probability that a request is lost (all its lines).
    drop_request: f64,
    seed: u64,
    /// Power-cycle the device when the gateway has sent this many requests.
    power_cycle_after: Option<usize>,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            rate: 11_520,
            rx_bufs: 2,
            work: Duration::from_millis(5),
            drop_answer: 0.0,
            drop_request: 0.0,
            seed: 1,
            power_cycle_after: None,
        }
    }
}

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Arrival {
    /// A line at the device.
    Line(Vec<u8>),
    /// An answer at the gateway (unframed).
    Answer(Vec<u8>),
}

struct Outcome {
    events: Vec<UploadEvent>,
    end: Instant,
    /// Gateway bytes on the line.
    written: u64,
    requests: usize,
    overruns: u64,
    retries: u64,
    max_window: usize,
}

/// The time `n` bytes take at `rate` B/s, in milliseconds (rounded up).
fn line_time(n: usize, rate: u64) -> u64 {
    (n as u64 * 1000).div_ceil(rate)
}

/// The same in microseconds.
fn line_us(n: usize, rate: u64) -> u64 {
    (n as u64 * 1_000_000).div_ceil(rate)
}

/// Runs `up` until it finishes; the device is `dev`.
fn run(up: &mut Upload, dev: &mut SimDevice, img: &[u8], s: &Setup, start: Instant) -> Outcome {
    let mut rng = Rng::new(s.seed);
    let mut rx = RxBuffers::new(s.rx_bufs);
    let mut decoder = Decoder::default();
    let mut gw_decoder = Decoder::default();
    // (time, order) → arrival; order keeps equal times first-in first-out.
    let mut queue: BinaryHeap<Reverse<(Instant, u64, Arrival)>> = BinaryHeap::new();
    let mut order = 0u64;
    // When each direction of the line is free, in microseconds (lines take
    // fractions of a millisecond more than a whole number).
    let us = |t: Instant| t.as_millis() * 1000;
    let to_ms = |t_us: u64| Instant::from_millis(t_us.div_ceil(1000));
    let (mut up_free, mut down_free) = (us(start), us(start));
    let mut now = start;
    let mut out = Outcome {
        events: vec![],
        end: start,
        written: 0,
        requests: 0,
        overruns: 0,
        retries: 0,
        max_window: 1,
    };
    for _ in 0..STEP_BUDGET {
        // The gateway: read, send, report.
        while let Some(r) = up.poll_read() {
            let a = r.offset as usize;
            up.handle_data(r.offset, &img[a..a + r.len], now).unwrap();
        }
        while let Some(msg) = up.poll_transmit() {
            out.requests += 1;
            let wire = serial::encode(&msg, serial::MAX_LINE);
            out.written += wire.len() as u64;
            let lost = rng.next_f64() < s.drop_request;
            for line in wire.split_inclusive(|&b| b == b'\n') {
                up_free = up_free.max(us(now)) + line_us(line.len(), s.rate);
                if !lost {
                    order += 1;
                    queue.push(Reverse((
                        to_ms(up_free),
                        order,
                        Arrival::Line(line.to_vec()),
                    )));
                }
            }
            if s.power_cycle_after == Some(out.requests) {
                dev.power_cycle(now);
            }
        }
        out.max_window = out.max_window.max(up.window());
        while let Some(ev) = up.poll_event() {
            out.events.push(ev);
        }
        if up.is_finished() {
            out.end = now;
            out.overruns = rx.overruns();
            out.retries = up.retries();
            return out;
        }
        // The next thing to happen.
        let next = [
            queue.peek().map(|Reverse((t, _, _))| *t),
            up.poll_timeout(),
            rx.poll_timeout(),
            dev.poll_timeout(),
        ]
        .into_iter()
        .flatten()
        .min()
        .expect("something is always pending");
        now = now.max(next);
        dev.handle_timeout(now);
        let mut device_reads = |rx: &mut RxBuffers, t: Instant, queue: &mut BinaryHeap<_>| {
            while let Some((at, line)) = rx.next_line(t) {
                let mut rest = &line[..];
                while !rest.is_empty() {
                    let used = decoder.handle_bytes(rest);
                    rest = &rest[used..];
                    let Some(DecodeEvent::Message(msg)) = decoder.poll_event() else {
                        continue;
                    };
                    dev.handle_message(&msg, at);
                    let done = at + s.work;
                    rx.busy(done);
                    while let Some(ans) = dev.poll_transmit() {
                        let wire = serial::encode(&ans, serial::MAX_LINE);
                        down_free = down_free.max(us(done)) + line_us(wire.len(), s.rate);
                        if rng.next_f64() >= s.drop_answer {
                            order += 1;
                            queue.push(Reverse((to_ms(down_free), order, Arrival::Answer(wire))));
                        }
                    }
                }
            }
        };
        device_reads(&mut rx, now, &mut queue);
        while queue.peek().is_some_and(|Reverse((t, _, _))| *t <= now) {
            let Reverse((t, _, a)) = queue.pop().expect("peeked");
            match a {
                Arrival::Line(line) => {
                    device_reads(&mut rx, t, &mut queue);
                    rx.arrive(t, line);
                    device_reads(&mut rx, t, &mut queue);
                }
                Arrival::Answer(wire) => {
                    for ev in gw_decoder.decode_all(&wire) {
                        if let DecodeEvent::Message(m) = ev {
                            up.handle_message(&m, now);
                        }
                    }
                }
            }
        }
        up.handle_timeout(now);
    }
    panic!("no verdict within {STEP_BUDGET} steps: {:?}", out.events);
}

fn upload(img: &[u8], window: usize, setup: &Setup) -> (Outcome, SimDevice) {
    upload_to(img, window, setup, SimConfig::default())
}

fn upload_to(img: &[u8], window: usize, setup: &Setup, device: SimConfig) -> (Outcome, SimDevice) {
    let mut dev = SimDevice::new(device);
    let cfg = UploadConfig {
        window,
        timeout: Duration::from_millis(500),
        ..UploadConfig::default()
    };
    let sha: [u8; 32] = Sha256::digest(img).into();
    let mut up = Upload::new(cfg, img.len() as u64, sha, Instant::ZERO);
    let out = run(&mut up, &mut dev, img, setup, Instant::ZERO);
    (out, dev)
}

fn done(out: &Outcome) -> bool {
    matches!(
        out.events.last(),
        Some(UploadEvent::Done {
            matched: Some(true)
        })
    )
}

fn fallbacks(out: &Outcome) -> usize {
    out.events
        .iter()
        .filter(|e| matches!(e, UploadEvent::WindowFallback { .. }))
        .count()
}

/// A device that keeps up with the line (two buffers, 5 ms per request):
/// window 2 keeps the line busy, nothing is lost, and the transfer ends
/// near the written-bytes bound; lock-step pays a round trip per chunk.
#[test]
fn window_two_fills_the_line_and_loses_nothing() {
    let img = image(40_000, 1);
    let setup = Setup::default();
    let (w1, _) = upload(&img, 1, &setup);
    let (w2, _) = upload(&img, 2, &setup);
    assert!(done(&w1) && done(&w2));
    assert_eq!((w2.overruns, w2.retries, fallbacks(&w2)), (0, 0, 0));
    assert_eq!(w2.max_window, 2);
    assert_eq!(w1.written, w2.written, "the same chunks either way");
    let bound = line_time(w2.written as usize, setup.rate);
    let t2 = w2.end.as_millis();
    let t1 = w1.end.as_millis();
    assert!(t2 < t1, "pipelined {t2} ms, lock-step {t1} ms");
    // Pipelined: the bound plus the first round trip and the last answer.
    assert!(t2 * 100 <= bound * 102, "{t2} ms against {bound} ms");
}

/// One receive buffer and a slow device: the second request of the
/// window loses lines, its answer never comes, the next answer names the
/// device's `off`, and the engine rewinds to it and goes on one at a time.
#[test]
fn one_buffer_forces_the_fallback_to_one_request() {
    let img = image(20_000, 2);
    let setup = Setup {
        rx_bufs: 1,
        work: Duration::from_millis(30),
        ..Setup::default()
    };
    let (out, _) = upload(&img, 4, &setup);
    assert!(done(&out), "{:?}", out.events);
    assert!(out.overruns > 0);
    assert_eq!(fallbacks(&out), 1, "{:?}", out.events);
    assert!(out.retries > 0);
    let acked: Vec<u64> = out
        .events
        .iter()
        .filter_map(|e| match e {
            UploadEvent::Progress { acked, .. } => Some(*acked),
            _ => None,
        })
        .collect();
    assert!(acked.windows(2).all(|w| w[0] < w[1]), "{acked:?}");
}

/// Seeded loss of answers and requests, many seeds, windows 1 to 5,
/// 1 to 3 receive buffers, devices from fast to slower than the line:
/// every upload ends with the device holding the image (`match`), and the
/// retry counter moves when something was lost.
#[test]
fn seeded_loss_with_a_window_always_completes() {
    let img = image(12_000, 3);
    for seed in 0..60u64 {
        let setup = Setup {
            drop_answer: 0.05,
            drop_request: 0.05,
            rx_bufs: 1 + (seed % 3) as usize,
            work: Duration::from_millis(seed % 4 * 10),
            seed,
            ..Setup::default()
        };
        let (out, dev) = upload(&img, 1 + (seed % 5) as usize, &setup);
        assert!(done(&out), "seed {seed}: {:?}", out.events.last());
        assert_eq!(dev.running_version(), "1.0.0");
        let lost = out.events.iter().any(|e| {
            matches!(
                e,
                UploadEvent::WindowFallback { .. } | UploadEvent::Restarted
            )
        });
        if lost {
            assert!(out.retries > 0, "seed {seed}");
        }
    }
}

/// A window of 3 against a device power-cycled mid-transfer: the answers
/// name `off: 0`, the engine sends the off-0 fields again and finishes.
#[test]
fn power_cycle_with_a_window_restarts_from_zero() {
    let img = image(15_000, 4);
    let setup = Setup {
        power_cycle_after: Some(12),
        ..Setup::default()
    };
    let (out, _) = upload(&img, 3, &setup);
    assert!(done(&out), "{:?}", out.events);
    assert!(out.events.contains(&UploadEvent::Restarted));
    assert!(out.retries > 0);
}

/// A device that goes silent with several requests on the line: the engine
/// falls back to one, resends the oldest unchanged, and fails after its
/// retries instead of waiting forever.
#[test]
fn silence_with_a_window_times_out_after_the_retries() {
    let img = image(8_000, 5);
    let mut dev = SimDevice::new(SimConfig::default());
    let cfg = UploadConfig {
        window: 3,
        timeout: Duration::from_millis(200),
        retries: 2,
        ..UploadConfig::default()
    };
    let sha: [u8; 32] = Sha256::digest(&img).into();
    let mut up = Upload::new(cfg, img.len() as u64, sha, Instant::ZERO);
    // Params and the off-0 chunk get through; then the device goes silent.
    let setup = Setup::default();
    let first = run_until(&mut up, &mut dev, &img, 2);
    let out = run(
        &mut up,
        &mut dev,
        &img,
        &Setup {
            drop_answer: 1.0,
            ..setup
        },
        first.end,
    );
    assert!(
        matches!(
            out.events.last(),
            Some(UploadEvent::Failed(UploadError::Timeout {
                attempts: 3,
                ..
            }))
        ),
        "{:?}",
        out.events
    );
}

/// [`run`] for the first `requests` requests and their answers.
fn run_until(up: &mut Upload, dev: &mut SimDevice, img: &[u8], requests: usize) -> Outcome {
    // Simple lock-step exchange: each request straight to the device.
    let mut now = Instant::ZERO;
    let mut n = 0;
    let mut out = Outcome {
        events: vec![],
        end: now,
        written: 0,
        requests: 0,
        overruns: 0,
        retries: 0,
        max_window: 1,
    };
    while n < requests {
        while let Some(r) = up.poll_read() {
            let a = r.offset as usize;
            up.handle_data(r.offset, &img[a..a + r.len], now).unwrap();
        }
        let msg = up.poll_transmit().expect("a request");
        n += 1;
        dev.handle_message(&msg, now);
        now = now + Duration::from_millis(10);
        while let Some(a) = dev.poll_transmit() {
            up.handle_message(&a, now);
        }
        while let Some(ev) = up.poll_event() {
            out.events.push(ev);
        }
    }
    out.end = now;
    out
}

/// Line-filling chunk sizes never exceed the device's buffer (the
/// simulated device drops longer messages unanswered, which would stall the
/// upload) and never cost more bytes on the wire than filling the buffer.
#[test]
fn line_filling_chunks_fit_every_buffer_size() {
    let img = image(9_000, 6);
    for buf_size in [128u64, 200, 256, 384, 500, 512, 777, 1024, 2048, 4096] {
        let device = SimConfig {
            buf_size,
            ..SimConfig::default()
        };
        let (filled, _) = upload_to(&img, 2, &Setup::default(), device.clone());
        assert!(done(&filled), "{buf_size}: {:?}", filled.events.last());
        assert_eq!((filled.overruns, filled.retries), (0, 0), "{buf_size}");
        // The same upload filling every message to buf_size - 4.
        let mut dev = SimDevice::new(device);
        let cfg = UploadConfig {
            fill_lines: false,
            window: 2,
            ..UploadConfig::default()
        };
        let sha: [u8; 32] = Sha256::digest(&img).into();
        let mut up = Upload::new(cfg, img.len() as u64, sha, Instant::ZERO);
        let full = run(&mut up, &mut dev, &img, &Setup::default(), Instant::ZERO);
        assert!(done(&full), "{buf_size}");
        assert!(
            filled.written <= full.written,
            "{buf_size}: {} > {}",
            filled.written,
            full.written
        );
    }
}

/// A device whose `off` never advances past 100, with a window of 4: each
/// non-advancing answer is a rewind and counts toward the retries; the
/// upload fails as stalled after `retries` of them, it does not loop.
#[test]
fn an_off_that_never_advances_fails_as_stalled() {
    use otabridge_codecs::smp::header::{build_message, split_message, Op};
    use otabridge_codecs::smp::message::{encode_upload_response, UploadResponse};
    let img = image(6_000, 7);
    let cfg = UploadConfig {
        window: 4,
        read_params: false,
        retries: 3,
        ..UploadConfig::default()
    };
    let sha: [u8; 32] = Sha256::digest(&img).into();
    let mut up = Upload::new(cfg, img.len() as u64, sha, Instant::ZERO);
    let mut events = vec![];
    for _ in 0..100 {
        while let Some(r) = up.poll_read() {
            let a = r.offset as usize;
            up.handle_data(r.offset, &img[a..a + r.len], Instant::ZERO)
                .unwrap();
        }
        let sent: Vec<Vec<u8>> = std::iter::from_fn(|| up.poll_transmit()).collect();
        for req in sent {
            let (h, _) = split_message(&req).unwrap();
            let body = encode_upload_response(UploadResponse {
                off: 100,
                matched: None,
            });
            let rsp = build_message(Op::WriteRsp, h.version, h.group, h.seq, h.id, &body);
            up.handle_message(&rsp, Instant::ZERO);
        }
        events.extend(std::iter::from_fn(|| up.poll_event()));
        if up.is_finished() {
            break;
        }
    }
    assert!(
        matches!(
            events.last(),
            Some(UploadEvent::Failed(UploadError::Stalled { off: 100 }))
        ),
        "{events:?}"
    );
    // The bytes at 100 went out in the first chunk, then in the chunk at
    // 100 once per answer until the fourth non-advancing one: 4 resends.
    assert_eq!(up.retries(), 4);
}
