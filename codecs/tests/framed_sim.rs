//! The framed engine against the profile simulator, in simulated time, for
//! both built-in profiles: clean runs, lossy links, reboots mid-transfer,
//! resume from the child's offset, and the IoTDA result code of every mapped
//! status.

use std::sync::Arc;
use std::time::Duration;

use otabridge_codecs::framed::engine::{Engine, Event, ImageInfo, Outcome, Stats, Upgrade};
use otabridge_codecs::framed::profile::{self, MessageKind, Profile, StatusAction};
use otabridge_codecs::framed::sim::{Device, DeviceConfig, Injection, Link, LinkFaults};
use otabridge_codecs::iotda::ResultCode;
use otabridge_codecs::rng::Rng;
use otabridge_codecs::time::Instant;

const PROFILES: [&str; 2] = ["acme-rs485", "nordlys-uart"];
const OLD: &str = "1.0.0";
const NEW: &str = "1.1.0";

fn profile(name: &str) -> Arc<Profile> {
    Arc::new(profile::builtin(name).expect("built in").expect("valid"))
}

fn image(len: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; len];
    Rng::new(seed).fill(&mut v);
    v
}

/// An engine, a device and the two directions of the line between them.
struct Pair {
    engine: Engine,
    device: Device,
    image: Vec<u8>,
    to_device: Link,
    to_gateway: Link,
    now: Instant,
    events: Vec<Event>,
    max_chunk: usize,
}

impl Pair {
    fn new(p: &Arc<Profile>, device: DeviceConfig, image: Vec<u8>, seed: u64) -> Self {
        let device = Device::new(Arc::clone(p), device);
        Self::with_device(p, device, image, seed, Instant::ZERO)
    }

    fn with_device(
        p: &Arc<Profile>,
        device: Device,
        image: Vec<u8>,
        seed: u64,
        now: Instant,
    ) -> Self {
        let upgrade = Upgrade {
            image: ImageInfo::of(&image, NEW),
            skip_if_current: false,
            version_policy: Default::default(),
            seed,
        };
        Pair {
            engine: Engine::new(Arc::clone(p), upgrade, now).expect("fits"),
            device,
            image,
            to_device: Link::perfect(),
            to_gateway: Link::perfect(),
            now,
            events: Vec::new(),
            max_chunk: p.max_chunk,
        }
    }

    fn lossy(mut self, faults: LinkFaults, seed: u64) -> Self {
        self.to_device = Link::new(faults, seed);
        self.to_gateway = Link::new(faults, seed ^ 0x5555);
        self
    }

    /// Runs until the engine finishes or `until` returns true on an event;
    /// a step budget turns a loop into a failure.
    fn drive_until(&mut self, mut until: impl FnMut(&Event) -> bool) -> Option<Outcome> {
        for _ in 0..100_000 {
            if let Some(r) = self.engine.poll_read() {
                assert!(r.len <= self.max_chunk, "asks for one chunk at most");
                let end = r.offset as usize + r.len;
                let bytes = self.image[r.offset as usize..end].to_vec();
                self.engine.handle_data(r.offset, &bytes, self.now).unwrap();
            }
            let mut moved = false;
            while let Some(b) = self.engine.poll_transmit() {
                let b = self.to_device.carry(&b);
                self.device.handle_input(&b, self.now);
                moved = true;
            }
            while let Some(b) = self.device.poll_transmit() {
                let b = self.to_gateway.carry(&b);
                self.engine.handle_input(&b, self.now);
                moved = true;
            }
            while let Some(e) = self.engine.poll_event() {
                let stop = until(&e);
                self.events.push(e.clone());
                if let Event::Finished(o) = e {
                    assert!(self.engine.poll_timeout().is_none());
                    return Some(o);
                }
                if stop {
                    return None;
                }
            }
            if moved || self.engine.poll_read().is_some() {
                continue;
            }
            let next = [self.engine.poll_timeout(), self.device.poll_timeout()]
                .into_iter()
                .flatten()
                .min()
                .expect("an unfinished engine always waits for something");
            self.now = self.now.max(next);
            self.engine.handle_timeout(self.now);
            self.device.handle_timeout(self.now);
        }
        panic!("step budget exhausted; events: {:?}", self.events);
    }

    fn drive(&mut self) -> Outcome {
        self.drive_until(|_| false).expect("finished")
    }

    fn stats(&self) -> Stats {
        self.engine.stats()
    }
}

fn assert_upgraded(pair: &Pair, outcome: &Outcome, what: &str) {
    assert_eq!(
        *outcome,
        Outcome::Upgraded {
            version: NEW.into()
        },
        "{what}: events {:?}",
        pair.events
    );
    assert_eq!(pair.device.version(), NEW, "{what}");
    assert!(
        pair.device.installed() == Some(&pair.image[..]),
        "{what}: the installed image differs from the package"
    );
}

#[test]
fn clean_upgrade_reports_each_step() {
    for name in PROFILES {
        let p = profile(name);
        // Not a multiple of either chunk size: the last chunk is short.
        let img = image(3 * p.max_chunk + 77, 1);
        let mut pair = Pair::new(&p, DeviceConfig::new(OLD), img.clone(), 7);
        let outcome = pair.drive();
        assert_upgraded(&pair, &outcome, name);
        let names: Vec<String> = pair.events.iter().map(|e| e.to_string()).collect();
        let size = img.len();
        let c = p.max_chunk;
        let expected = vec![
            format!("version {OLD}"),
            "begun".into(),
            "resumed 0".into(),
            format!("progress {c}/{size}"),
            format!("progress {}/{size}", 2 * c),
            format!("progress {}/{size}", 3 * c),
            format!("progress {size}/{size}"),
            "verified".into(),
            "activated".into(),
            format!("upgraded {NEW}"),
        ];
        assert_eq!(names, expected, "{name}");
        let s = pair.stats();
        assert_eq!(s.retransmissions, 0, "{name}");
        assert_eq!(
            s.crc_errors + s.garbage_bytes + s.unexpected_frames,
            0,
            "{name}"
        );
        assert_eq!(pair.device.requests(MessageKind::Chunk), 4, "{name}");
        // Success only after the version was read back after activation.
        assert_eq!(pair.device.requests(MessageKind::VersionQuery), 2, "{name}");
    }
}

#[test]
fn lossy_links_still_deliver_byte_exact() {
    for name in PROFILES {
        let p = profile(name);
        let mut totals = [0u64; 4];
        for seed in 0..12u64 {
            let img = image(6 * p.max_chunk + 5 + seed as usize, seed);
            let faults = LinkFaults {
                drop: 0.05,
                corrupt: 0.05,
                noise: 0.2,
                max_noise: 24,
            };
            let mut pair = Pair::new(&p, DeviceConfig::new(OLD), img, seed).lossy(faults, seed);
            let outcome = pair.drive();
            assert_upgraded(&pair, &outcome, &format!("{name} seed {seed}"));
            for l in [pair.to_device.stats(), pair.to_gateway.stats()] {
                totals[0] += l.dropped;
                totals[1] += l.corrupted;
                totals[2] += l.noisy;
            }
            totals[3] += pair.stats().retransmissions;
        }
        // The faults really happened, and the engine really recovered.
        assert!(totals.iter().all(|&t| t > 0), "{name}: {totals:?}");
    }
}

#[test]
fn reboot_mid_transfer_keeping_the_offset_resumes() {
    for name in PROFILES {
        let p = profile(name);
        let img = image(8 * p.max_chunk, 3);
        let at = (4 * p.max_chunk) as u32;
        let mut cfg = DeviceConfig::new(OLD);
        cfg.reboot_at_offset = Some(at);
        cfg.persist_session = true;
        let mut pair = Pair::new(&p, cfg, img, 3);
        let outcome = pair.drive();
        assert_upgraded(&pair, &outcome, name);
        assert_eq!(
            pair.device.reboots(),
            2,
            "{name}: the fault and the activation"
        );
        // Only the chunk the child rebooted on was sent twice.
        let offsets = pair.device.chunk_offsets();
        assert_eq!(offsets.len(), 9, "{name}: {offsets:?}");
        assert!(
            offsets.windows(2).all(|w| w[0] <= w[1]),
            "{name}: {offsets:?}"
        );
        assert_eq!(pair.device.requests(MessageKind::Begin), 1, "{name}");
        assert!(pair.stats().retransmissions >= 1, "{name}");
    }
}

#[test]
fn reboot_mid_transfer_losing_the_offset_begins_again() {
    for name in PROFILES {
        let p = profile(name);
        let img = image(8 * p.max_chunk, 4);
        let at = (4 * p.max_chunk) as u32;
        let mut cfg = DeviceConfig::new(OLD);
        cfg.reboot_at_offset = Some(at);
        cfg.persist_session = false;
        let mut pair = Pair::new(&p, cfg, img, 4);
        let outcome = pair.drive();
        assert_upgraded(&pair, &outcome, name);
        // The child said "no session", the engine began again at offset 0.
        assert_eq!(pair.device.requests(MessageKind::Begin), 2, "{name}");
        assert_eq!(pair.stats().recoveries, 1, "{name}");
        let offsets = pair.device.chunk_offsets();
        let restarts = offsets.iter().filter(|&&o| o == 0).count();
        assert_eq!(restarts, 2, "{name}: {offsets:?}");
        assert!(
            pair.events
                .iter()
                .filter(|e| **e == Event::Resumed { offset: 0 })
                .count()
                == 2
        );
    }
}

#[test]
fn a_new_engine_resumes_from_the_childs_offset() {
    for name in PROFILES {
        let p = profile(name);
        let img = image(10 * p.max_chunk + 3, 5);
        let half = (5 * p.max_chunk) as u32;
        let mut first = Pair::new(&p, DeviceConfig::new(OLD), img.clone(), 5);
        let stopped =
            first.drive_until(|e| matches!(e, Event::Progress { offset, .. } if *offset >= half));
        assert!(stopped.is_none(), "{name}: stopped mid-transfer");
        // The gateway dies here; a new engine (new seed) meets the same child.
        let device = first.device;
        let sent_before = device.chunk_offsets().len();
        let mut second = Pair::with_device(&p, device, img, 99, first.now + Duration::from_secs(5));
        let outcome = second.drive();
        assert_upgraded(&second, &outcome, name);
        assert!(
            second.events.contains(&Event::Resumed { offset: half }),
            "{name}: {:?}",
            second.events
        );
        let later = &second.device.chunk_offsets()[sent_before..];
        assert_eq!(later.first(), Some(&half), "{name}");
        assert_eq!(later.len(), 6, "{name}: only the missing chunks were sent");
    }
}

#[test]
fn every_failing_status_maps_to_its_result_code() {
    for name in PROFILES {
        let p = profile(name);
        let mut checked = 0;
        for rule in &p.statuses {
            let StatusAction::Fail { result_code } = rule.action else {
                continue;
            };
            for kind in [MessageKind::Begin, MessageKind::Chunk, MessageKind::Verify] {
                let mut cfg = DeviceConfig::new(OLD);
                cfg.inject.push(Injection {
                    kind,
                    nth: 1,
                    status: rule.value,
                });
                let mut pair = Pair::new(&p, cfg, image(2 * p.max_chunk, 6), 6);
                let Outcome::Failed(f) = pair.drive() else {
                    panic!("{name}: status {} on {kind} did not fail", rule.value);
                };
                assert_eq!(f.result_code, result_code, "{name} status {}", rule.value);
                assert_eq!(f.step, kind);
                let expected = rule
                    .description
                    .clone()
                    .unwrap_or_else(|| result_code.description().to_string());
                assert_eq!(f.description, expected);
                assert_eq!(pair.device.version(), OLD, "nothing was activated");
                checked += 1;
            }
        }
        assert!(checked >= 18, "{name}: {checked}");
    }
}

#[test]
fn busy_status_is_retried_with_backoff_then_fails_with_its_code() {
    for name in PROFILES {
        let p = profile(name);
        let busy = p.status_busy().expect("both profiles have a busy status");
        let Some(StatusAction::Retry { result_code }) = p.status(busy).map(|r| r.action) else {
            panic!()
        };
        let begin_retries = p.message(MessageKind::Begin).unwrap().retries;

        // Busy twice on the second chunk: delivered anyway, after backoff.
        let mut cfg = DeviceConfig::new(OLD);
        for nth in [2, 3] {
            cfg.inject.push(Injection {
                kind: MessageKind::Chunk,
                nth,
                status: busy,
            });
        }
        let mut pair = Pair::new(&p, cfg, image(4 * p.max_chunk, 8), 8);
        let t0 = pair.now;
        let outcome = pair.drive();
        assert_upgraded(&pair, &outcome, name);
        assert_eq!(pair.stats().retransmissions, 2, "{name}");
        let backoff = p.recovery.busy_backoff * 3; // 1x then 2x, before jitter
        assert!(pair.now.saturating_duration_since(t0) >= backoff, "{name}");

        // Busy on every attempt of begin: fails with the status's code.
        let mut cfg = DeviceConfig::new(OLD);
        for nth in 1..=begin_retries + 1 {
            cfg.inject.push(Injection {
                kind: MessageKind::Begin,
                nth,
                status: busy,
            });
        }
        let mut pair = Pair::new(&p, cfg, image(100, 9), 9);
        let Outcome::Failed(f) = pair.drive() else {
            panic!("{name}")
        };
        assert_eq!(f.result_code, result_code, "{name}");
        assert_eq!(pair.device.requests(MessageKind::Begin), begin_retries + 1);
    }
}

#[test]
fn resync_and_restart_statuses_recover() {
    for name in PROFILES {
        let p = profile(name);
        for (action, begins) in [(StatusAction::Resync, 1), (StatusAction::Restart, 2)] {
            let status = p.status_for(action).unwrap();
            let mut cfg = DeviceConfig::new(OLD);
            cfg.inject.push(Injection {
                kind: MessageKind::Chunk,
                nth: 3,
                status,
            });
            let mut pair = Pair::new(&p, cfg, image(5 * p.max_chunk, 10), 10);
            let outcome = pair.drive();
            assert_upgraded(&pair, &outcome, &format!("{name} {action:?}"));
            assert_eq!(pair.stats().recoveries, 1);
            assert_eq!(pair.device.requests(MessageKind::Begin), begins);
            assert_eq!(pair.device.requests(MessageKind::OffsetQuery), 2);
        }

        // A child that keeps losing its session: bounded, then result 6.
        let restart = p.status_for(StatusAction::Restart).unwrap();
        let mut cfg = DeviceConfig::new(OLD);
        for nth in 1..=50 {
            cfg.inject.push(Injection {
                kind: MessageKind::Chunk,
                nth,
                status: restart,
            });
        }
        let mut pair = Pair::new(&p, cfg, image(5 * p.max_chunk, 10), 10);
        let Outcome::Failed(f) = pair.drive() else {
            panic!("{name}")
        };
        assert_eq!(f.result_code, ResultCode::DOWNLOAD_TIMEOUT, "{name}");
        assert_eq!(
            pair.device.requests(MessageKind::Begin),
            p.recovery.max_recoveries + 1
        );
    }
}

#[test]
fn unknown_status_is_an_internal_exception() {
    for name in PROFILES {
        let p = profile(name);
        let value = (0..=255u32).find(|v| p.status(*v).is_none()).unwrap();
        let mut cfg = DeviceConfig::new(OLD);
        cfg.inject.push(Injection {
            kind: MessageKind::Verify,
            nth: 1,
            status: value,
        });
        let mut pair = Pair::new(&p, cfg, image(300, 11), 11);
        let Outcome::Failed(f) = pair.drive() else {
            panic!("{name}")
        };
        assert_eq!(f.result_code, ResultCode::INNER_ERROR);
        assert_eq!(f.step, MessageKind::Verify);
        assert!(f.detail.contains(&value.to_string()), "{}", f.detail);
    }
}

#[test]
fn child_failures_from_its_own_logic() {
    for name in PROFILES {
        let p = profile(name);

        // Too large for the child's slot: insufficient storage.
        let mut cfg = DeviceConfig::new(OLD);
        cfg.capacity = 1000;
        let mut pair = Pair::new(&p, cfg, image(1001, 12), 12);
        let Outcome::Failed(f) = pair.drive() else {
            panic!("{name}")
        };
        assert_eq!(
            (f.result_code, f.step),
            (ResultCode::LOW_SPACE, MessageKind::Begin)
        );

        // The child boots the old image again: installation failure, with the
        // version it runs, and only after the reboot timeout.
        let mut cfg = DeviceConfig::new(OLD);
        cfg.install_fails = true;
        let mut pair = Pair::new(&p, cfg, image(700, 13), 13);
        let Outcome::Failed(f) = pair.drive() else {
            panic!("{name}")
        };
        assert_eq!(f.result_code, ResultCode::INSTALL_FAIL, "{name}");
        assert_eq!(f.version.as_deref(), Some(OLD));
        assert!(pair.now.saturating_duration_since(Instant::ZERO) >= p.activation.reboot_timeout);
    }
}

#[test]
fn silent_children_fail_in_bounded_time() {
    for name in PROFILES {
        let p = profile(name);
        // Nobody there at all.
        let mut pair = Pair::new(&p, DeviceConfig::new(OLD), image(500, 14), 14).lossy(
            LinkFaults {
                drop: 1.0,
                ..LinkFaults::default()
            },
            14,
        );
        let Outcome::Failed(f) = pair.drive() else {
            panic!("{name}")
        };
        assert_eq!(
            (f.result_code, f.step),
            (ResultCode::INNER_ERROR, MessageKind::VersionQuery)
        );
        let vq = p.message(MessageKind::VersionQuery).unwrap();
        assert_eq!(pair.stats().frames_sent, u64::from(vq.retries) + 1);
        assert_eq!(
            pair.now.as_millis(),
            vq.timeout.as_millis() as u64 * (u64::from(vq.retries) + 1)
        );

        // The child goes away mid-transfer (a reboot that never ends).
        let mut cfg = DeviceConfig::new(OLD);
        cfg.reboot_at_offset = Some(p.max_chunk as u32);
        cfg.reboot_time = Duration::from_secs(3600);
        let mut pair = Pair::new(&p, cfg, image(3 * p.max_chunk, 15), 15);
        let Outcome::Failed(f) = pair.drive() else {
            panic!("{name}")
        };
        assert_eq!(
            (f.result_code, f.step),
            (ResultCode::DOWNLOAD_TIMEOUT, MessageKind::Chunk)
        );
        assert_eq!(f.description, "Connection lost during downloading process");
    }
}

#[test]
fn skip_if_current_and_version_reads() {
    for name in PROFILES {
        let p = profile(name);
        let mut device = Device::new(Arc::clone(&p), DeviceConfig::new(NEW));
        let upgrade = Upgrade {
            image: ImageInfo::of(&image(10, 1), NEW),
            skip_if_current: true,
            version_policy: Default::default(),
            seed: 1,
        };
        let mut e = Engine::new(Arc::clone(&p), upgrade, Instant::ZERO).unwrap();
        let out = exchange(&mut e, &mut device);
        assert_eq!(
            out,
            Outcome::AlreadyCurrent {
                version: NEW.into()
            }
        );
        assert_eq!(out.result_code(), Some(ResultCode::NO_NEED));
        assert_eq!(device.requests(MessageKind::Begin), 0);

        let mut e = Engine::read_version(Arc::clone(&p), 2, Instant::ZERO);
        assert_eq!(
            exchange(&mut e, &mut device),
            Outcome::Version {
                version: NEW.into()
            }
        );
    }
}

/// The version policy decides whether a child writing `v1.1.0` already
/// runs target `1.1.0`: yes when normalised (the default), no under the
/// exact policy, which upgrades it.
#[test]
fn the_version_policy_decides_what_is_current() {
    use otabridge_codecs::version::Policy;
    for name in PROFILES {
        let p = profile(name);
        let upgrade = |version_policy| Upgrade {
            image: ImageInfo::of(&image(10, 1), NEW),
            skip_if_current: true,
            version_policy,
            seed: 1,
        };
        let prefixed = format!("v{NEW}");
        let mut device = Device::new(Arc::clone(&p), DeviceConfig::new(&prefixed));
        let mut e = Engine::new(Arc::clone(&p), upgrade(Policy::default()), Instant::ZERO).unwrap();
        assert_eq!(
            exchange(&mut e, &mut device),
            Outcome::AlreadyCurrent {
                version: prefixed.clone()
            },
            "{name}"
        );
        let mut e = Engine::new(Arc::clone(&p), upgrade(Policy::Exact), Instant::ZERO).unwrap();
        let mut events = Vec::new();
        for _ in 0..10 {
            while let Some(b) = e.poll_transmit() {
                device.handle_input(&b, Instant::ZERO);
            }
            while let Some(b) = device.poll_transmit() {
                e.handle_input(&b, Instant::ZERO);
            }
            events.extend(std::iter::from_fn(|| e.poll_event()));
        }
        assert!(events.contains(&Event::Begun), "{name}: {events:?}");
        assert_eq!(device.requests(MessageKind::Begin), 1, "{name}");
    }
}

/// Runs an engine that needs no data and no time against a device.
fn exchange(e: &mut Engine, d: &mut Device) -> Outcome {
    for _ in 0..10 {
        while let Some(b) = e.poll_transmit() {
            d.handle_input(&b, Instant::ZERO);
        }
        while let Some(b) = d.poll_transmit() {
            e.handle_input(&b, Instant::ZERO);
        }
        while let Some(ev) = e.poll_event() {
            if let Event::Finished(o) = ev {
                return o;
            }
        }
    }
    panic!("no outcome");
}

#[test]
fn images_that_do_not_fit_the_profile_are_refused_at_start() {
    let p = profile("nordlys-uart");
    let upgrade = Upgrade {
        image: ImageInfo::of(&[1, 2, 3], "a-version-longer-than-16"),
        skip_if_current: false,
        version_policy: Default::default(),
        seed: 0,
    };
    let err = Engine::new(Arc::clone(&p), upgrade, Instant::ZERO).unwrap_err();
    assert!(
        err.to_string().contains("does not fit field `version`"),
        "{err}"
    );
    let upgrade = Upgrade {
        image: ImageInfo::of(&[], "1"),
        skip_if_current: false,
        version_policy: Default::default(),
        seed: 0,
    };
    assert!(Engine::new(p, upgrade, Instant::ZERO).is_err());
}

#[test]
fn runs_are_deterministic() {
    for name in PROFILES {
        let p = profile(name);
        let run = || {
            let faults = LinkFaults {
                drop: 0.1,
                corrupt: 0.1,
                noise: 0.3,
                max_noise: 16,
            };
            let mut pair =
                Pair::new(&p, DeviceConfig::new(OLD), image(2000, 21), 21).lossy(faults, 21);
            let o = pair.drive();
            (o, pair.now, pair.stats(), pair.events)
        };
        assert_eq!(run(), run(), "{name}");
    }
}

mod fuzz {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: 64,
            rng_seed: proptest::test_runner::RngSeed::Fixed(0x00f2_a3ed_f022),
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        /// Arbitrary bytes, timeouts and valid-looking replies into the
        /// engine never panic, and it is never left idle: until it finishes
        /// it always has a deadline or a data request.
        #[test]
        fn engine_survives_arbitrary_input(
            which in 0usize..2,
            steps in proptest::collection::vec(
                (proptest::collection::vec(any::<u8>(), 0..300), 0u64..3000, any::<bool>()),
                1..60,
            ),
        ) {
            let p = profile(PROFILES[which]);
            let img = image(3 * p.max_chunk + 1, 1);
            let upgrade = Upgrade { image: ImageInfo::of(&img, NEW), skip_if_current: false, version_policy: Default::default(), seed: 3 };
            let mut e = Engine::new(Arc::clone(&p), upgrade, Instant::ZERO).unwrap();
            // A real child too, so the engine gets deep into the transfer.
            let mut d = Device::new(Arc::clone(&p), DeviceConfig::new(OLD));
            let mut now = Instant::ZERO;
            for (bytes, advance, honest) in steps {
                if let Some(r) = e.poll_read() {
                    prop_assert!(r.len <= p.max_chunk);
                    let end = r.offset as usize + r.len;
                    e.handle_data(r.offset, &img[r.offset as usize..end], now).unwrap();
                }
                while let Some(b) = e.poll_transmit() {
                    if honest { d.handle_input(&b, now); }
                }
                while let Some(b) = d.poll_transmit() {
                    e.handle_input(&b, now);
                }
                e.handle_input(&bytes, now);
                while e.poll_event().is_some() {}
                now = now + Duration::from_millis(advance);
                e.handle_timeout(now);
                d.handle_timeout(now);
                prop_assert!(e.is_finished() || e.poll_timeout().is_some() || e.poll_read().is_some());
            }
        }
    }
}
