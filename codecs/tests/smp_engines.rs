//! The upload and activation engines against the simulated Zephyr device,
//! every message going through the serial framing, in simulated time.

use otabridge_codecs::engine::Engine;
use otabridge_codecs::smp::activate::{Activate, ActivateConfig, ActivateError, ActivateEvent};
use otabridge_codecs::smp::header::{split_message, SmpVersion};
use otabridge_codecs::smp::result;
use otabridge_codecs::smp::serial::{self, DecodeEvent, Decoder};
use otabridge_codecs::smp::sim::{mcuboot_header, ImageVersion, SimConfig, SimDevice, SimEvent};
use otabridge_codecs::smp::upload::{Upload, UploadConfig, UploadError, UploadEvent};
use otabridge_codecs::smp::SmpErr;
use otabridge_codecs::time::Instant;
use sha2::{Digest, Sha256};
use std::time::Duration;

const STEP_BUDGET: usize = 100_000;

fn image(version: ImageVersion, len: usize) -> Vec<u8> {
    let mut img = mcuboot_header(version, (len - 32) as u32).to_vec();
    img.extend((32..len).map(|i| (i * 7 % 251) as u8));
    img
}

fn sha(img: &[u8]) -> [u8; 32] {
    Sha256::digest(img).into()
}

/// What crosses the simulated wire, and faults to apply.
#[derive(Default)]
struct Link {
    to_dev: Decoder,
    to_gw: Decoder,
    /// Sizes of gateway → device messages, in order.
    sent: Vec<Vec<u8>>,
    /// Device → gateway message numbers (0-based) to drop.
    drop_answers: Vec<usize>,
    answers: usize,
    /// Device → gateway message numbers to corrupt on the wire (one byte).
    corrupt_answers: Vec<usize>,
    bad_crc: usize,
}

impl Link {
    fn gw_to_dev(&mut self, msg: Vec<u8>) -> Vec<Vec<u8>> {
        let wire = serial::encode(&msg, serial::MAX_LINE);
        assert!(wire
            .split_inclusive(|&b| b == b'\n')
            .all(|l| l.len() <= serial::MAX_LINE));
        self.sent.push(msg);
        messages(self.to_dev.decode_all(&wire), &mut self.bad_crc)
    }

    fn dev_to_gw(&mut self, msg: Vec<u8>) -> Vec<Vec<u8>> {
        let n = self.answers;
        self.answers += 1;
        if self.drop_answers.contains(&n) {
            return vec![];
        }
        let mut wire = b"[00:00:01.000,000] <inf> app: console text\r\n".to_vec();
        wire.extend(serial::encode(&msg, serial::MAX_LINE));
        if self.corrupt_answers.contains(&n) {
            let i = wire.len() - 6;
            wire[i] = if wire[i] == b'A' { b'B' } else { b'A' };
        }
        messages(self.to_gw.decode_all(&wire), &mut self.bad_crc)
    }
}

fn messages(events: Vec<DecodeEvent>, bad_crc: &mut usize) -> Vec<Vec<u8>> {
    events
        .into_iter()
        .filter_map(|e| match e {
            DecodeEvent::Message(m) => Some(m),
            DecodeEvent::BadCrc { .. } => {
                *bad_crc += 1;
                None
            }
            other => panic!("unexpected decoder event {other:?}"),
        })
        .collect()
}

/// Serves the engine's image reads (the upload asks; activation never does).
fn feed<E: Engine>(engine: &mut E, img: &[u8], now: Instant) {
    while let Some(r) = engine.poll_read() {
        let start = r.offset as usize;
        engine
            .handle_data(r.offset, &img[start..start + r.len], now)
            .unwrap();
    }
}

/// Runs `engine` against `dev` until it finishes, or until `stop_after`
/// gateway messages were sent. Returns its events and the end time.
fn drive<E: Engine<Event: std::fmt::Debug + Clone>>(
    engine: &mut E,
    dev: &mut SimDevice,
    link: &mut Link,
    img: &[u8],
    mut now: Instant,
    stop_after: Option<usize>,
) -> (Vec<E::Event>, Vec<SimEvent>, Instant) {
    let mut events = Vec::new();
    let mut sim_events = Vec::new();
    for _ in 0..STEP_BUDGET {
        let mut busy = false;
        feed(engine, img, now);
        while let Some(msg) = engine.poll_transmit() {
            busy = true;
            for m in link.gw_to_dev(msg) {
                dev.handle_message(&m, now);
            }
            if stop_after.is_some_and(|n| link.sent.len() >= n) {
                return (events, sim_events, now);
            }
        }
        while let Some(msg) = dev.poll_transmit() {
            busy = true;
            for m in link.dev_to_gw(msg) {
                engine.handle_input(&m, now);
            }
        }
        while let Some(e) = dev.poll_event() {
            sim_events.push(e);
        }
        while let Some(e) = engine.poll_event() {
            busy = true;
            events.push(e);
        }
        if engine.is_finished() {
            return (events, sim_events, now);
        }
        if !busy {
            let next = [engine.poll_timeout(), dev.poll_timeout()]
                .into_iter()
                .flatten()
                .min();
            now = next.expect("engine waits for nothing");
            dev.handle_timeout(now);
            engine.handle_timeout(now);
        }
    }
    panic!("step budget exhausted");
}

fn progress_only(events: &[UploadEvent]) -> Vec<u64> {
    events
        .iter()
        .filter_map(|e| match e {
            UploadEvent::Progress { acked, .. } => Some(*acked),
            _ => None,
        })
        .collect()
}

const V123: ImageVersion = ImageVersion {
    major: 1,
    minor: 2,
    revision: 3,
    build: 0,
};

/// With `fill_lines` off every message is filled to buf_size - 4 (380);
/// with it on (the default) the engine picks 368-byte messages: their
/// 372-byte packets are exactly 4 full lines (93 bytes each), where a
/// 384-byte packet pays a fifth line for 12 bytes.
#[test]
fn clean_upload_sizes_messages_within_buf_size_minus_4() {
    for (fill_lines, size) in [(false, 380), (true, 368)] {
        clean_upload(fill_lines, size);
    }
}

fn clean_upload(fill_lines: bool, size: usize) {
    let img = image(V123, 20_000);
    let mut dev = SimDevice::new(SimConfig::default());
    let mut link = Link::default();
    let mut up = Upload::new(
        UploadConfig {
            fill_lines,
            ..UploadConfig::default()
        },
        img.len() as u64,
        sha(&img),
        Instant::ZERO,
    );
    let (events, sim_events, _) = drive(&mut up, &mut dev, &mut link, &img, Instant::ZERO, None);
    assert_eq!(
        events[0],
        UploadEvent::BufSize {
            buf_size: 384,
            from_device: true
        }
    );
    assert_eq!(
        events.last(),
        Some(&UploadEvent::Done {
            matched: Some(true)
        })
    );
    let acked = progress_only(&events);
    assert!(acked.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(acked.last(), Some(&20_000));
    // Params, then upload messages: all but the first (which carries the
    // off-0 fields) and the last have the same size.
    let uploads = &link.sent[1..];
    assert_eq!(uploads.len(), acked.len());
    assert!(uploads[0].len() <= 380);
    for m in &uploads[1..uploads.len() - 1] {
        assert_eq!(m.len(), size);
    }
    assert!(uploads.last().unwrap().len() <= 380);
    assert!(sim_events.contains(&SimEvent::UploadComplete {
        version: "1.2.3".into()
    }));
    assert!(!sim_events
        .iter()
        .any(|e| matches!(e, SimEvent::Dropped { .. })));
}

#[test]
fn params_unsupported_falls_back_to_384_and_large_buffers_are_used() {
    let img = image(V123, 3000);
    let mut dev = SimDevice::new(SimConfig {
        params: false,
        ..SimConfig::default()
    });
    let mut up = Upload::new(UploadConfig::default(), 3000, sha(&img), Instant::ZERO);
    let (events, _, _) = drive(
        &mut up,
        &mut dev,
        &mut Link::default(),
        &img,
        Instant::ZERO,
        None,
    );
    assert_eq!(
        events[0],
        UploadEvent::BufSize {
            buf_size: 384,
            from_device: false
        }
    );
    assert_eq!(
        events.last(),
        Some(&UploadEvent::Done {
            matched: Some(true)
        })
    );

    let mut dev = SimDevice::new(SimConfig {
        buf_size: 2048,
        ..SimConfig::default()
    });
    let mut link = Link::default();
    let mut up = Upload::new(UploadConfig::default(), 3000, sha(&img), Instant::ZERO);
    let (events, _, _) = drive(&mut up, &mut dev, &mut link, &img, Instant::ZERO, None);
    assert_eq!(
        events.last(),
        Some(&UploadEvent::Done {
            matched: Some(true)
        })
    );
    // At most buf_size - 4, at most one line's worth (93 bytes) less.
    assert!((2044 - 93..=2044).contains(&link.sent[1].len()));
}

#[test]
fn lost_and_corrupted_answers_are_retried_at_the_same_off_and_seq() {
    let img = image(V123, 5000);
    let mut dev = SimDevice::new(SimConfig::default());
    let mut link = Link {
        drop_answers: vec![3],
        corrupt_answers: vec![6],
        ..Link::default()
    };
    let mut up = Upload::new(UploadConfig::default(), 5000, sha(&img), Instant::ZERO);
    let (events, _, end) = drive(&mut up, &mut dev, &mut link, &img, Instant::ZERO, None);
    assert_eq!(
        events.last(),
        Some(&UploadEvent::Done {
            matched: Some(true)
        })
    );
    assert_eq!(link.bad_crc, 1);
    // Two retransmissions, each identical to the message before it.
    let repeats = link.sent.windows(2).filter(|w| w[0] == w[1]).count();
    assert_eq!(repeats, 2);
    // Two timeouts of 2.5 s each, nothing else waited.
    assert_eq!(end, Instant::from_millis(5000));
}

#[test]
fn resume_after_gateway_restart_continues_from_the_device_off() {
    let img = image(V123, 10_000);
    let mut dev = SimDevice::new(SimConfig::default());
    let mut link = Link::default();
    let mut up = Upload::new(UploadConfig::default(), 10_000, sha(&img), Instant::ZERO);
    // Gateway dies after the params request and 10 chunks went out.
    let (_, _, now) = drive(&mut up, &mut dev, &mut link, &img, Instant::ZERO, Some(11));
    drop(up);
    let mut link = Link::default();
    let mut up = Upload::new(UploadConfig::default(), 10_000, sha(&img), now);
    let (events, sim_events, _) = drive(&mut up, &mut dev, &mut link, &img, now, None);
    // The device had taken chunks 0..=9 (the 10th answer was never read).
    let resumed_at = events.iter().find_map(|e| match e {
        UploadEvent::Resumed { off } => Some(*off),
        _ => None,
    });
    assert!(resumed_at.is_some_and(|off| off > 3000), "{events:?}");
    assert!(sim_events
        .iter()
        .any(|e| matches!(e, SimEvent::UploadResumed { .. })));
    assert_eq!(
        events.last(),
        Some(&UploadEvent::Done {
            matched: Some(true)
        })
    );
    assert!(link.sent.len() < 25, "resume re-sent the whole image");
}

#[test]
fn device_reboot_mid_upload_restarts_with_the_off_0_fields() {
    let img = image(V123, 6000);
    let mut dev = SimDevice::new(SimConfig::default());
    let mut link = Link::default();
    let mut up = Upload::new(UploadConfig::default(), 6000, sha(&img), Instant::ZERO);
    let (_, _, now) = drive(&mut up, &mut dev, &mut link, &img, Instant::ZERO, Some(6));
    dev.power_cycle(now);
    let (events, _, _) = drive(&mut up, &mut dev, &mut link, &img, now, None);
    assert!(events.contains(&UploadEvent::Restarted), "{events:?}");
    assert_eq!(
        events.last(),
        Some(&UploadEvent::Done {
            matched: Some(true)
        })
    );
}

fn upload_failure(img: &[u8], sha: [u8; 32], sim: SimConfig, cfg: UploadConfig) -> UploadError {
    let mut dev = SimDevice::new(sim);
    let mut up = Upload::new(cfg, img.len() as u64, sha, Instant::ZERO);
    let (events, _, _) = drive(
        &mut up,
        &mut dev,
        &mut Link::default(),
        img,
        Instant::ZERO,
        None,
    );
    match events.last() {
        Some(UploadEvent::Failed(e)) => e.clone(),
        other => panic!("expected a failure, got {other:?}"),
    }
}

#[test]
fn device_errors_map_to_iotda_codes() {
    let mut bad_magic = image(V123, 1000);
    bad_magic[0] = 0;
    let e = upload_failure(
        &bad_magic,
        sha(&bad_magic),
        SimConfig::default(),
        UploadConfig::default(),
    );
    assert_eq!(e, UploadError::Device(SmpErr::Group { group: 1, rc: 23 }));
    assert_eq!(result::for_upload(&e).code.get(), 8);
    assert_eq!(
        result::for_upload(&e).description,
        Some(otabridge_codecs::iotda::result::DESC_UNSUPPORTED_TYPE)
    );

    let img = image(V123, 1000);
    let small = SimConfig {
        slot_size: 999,
        ..SimConfig::default()
    };
    let e = upload_failure(&img, sha(&img), small, UploadConfig::default());
    assert_eq!(result::for_upload(&e).code.get(), 5);

    let e = upload_failure(&img, [0; 32], SimConfig::default(), UploadConfig::default());
    assert_eq!(e, UploadError::Mismatch);
    assert_eq!(result::for_upload(&e).code.get(), 7);

    // SMP v1: Zephyr folds the magic error into EUNKNOWN; 255.
    let v1 = UploadConfig {
        version: SmpVersion::V1,
        ..UploadConfig::default()
    };
    let e = upload_failure(&bad_magic, sha(&bad_magic), SimConfig::default(), v1);
    assert_eq!(e, UploadError::Device(SmpErr::Legacy { rc: 1 }));
    assert_eq!(result::for_upload(&e).code.get(), 255);
}

#[test]
fn silent_device_times_out_after_the_retries() {
    let img = image(V123, 1000);
    let mut dev = SimDevice::new(SimConfig::default());
    let mut link = Link {
        drop_answers: (1..100).collect(),
        ..Link::default()
    };
    let mut up = Upload::new(UploadConfig::default(), 1000, sha(&img), Instant::ZERO);
    let (events, _, end) = drive(&mut up, &mut dev, &mut link, &img, Instant::ZERO, None);
    assert_eq!(
        events.last(),
        Some(&UploadEvent::Failed(UploadError::Timeout {
            off: 0,
            attempts: 5
        }))
    );
    // Five attempts of the first chunk, each with the 40 s first timeout.
    assert_eq!(end, Instant::from_millis(200_000));
    assert_eq!(link.sent.len(), 6);
}

#[test]
fn buffer_too_small_for_a_first_chunk_is_an_error() {
    let img = image(V123, 1000);
    let sim = SimConfig {
        buf_size: 100,
        ..SimConfig::default()
    };
    let e = upload_failure(&img, sha(&img), sim, UploadConfig::default());
    assert!(
        matches!(
            e,
            UploadError::BufferTooSmall {
                buf_size: 100,
                room: 23
            }
        ),
        "{e:?}"
    );
}

fn uploaded_device(img: &[u8], sim: SimConfig) -> (SimDevice, Instant) {
    let mut dev = SimDevice::new(sim);
    let mut up = Upload::new(
        UploadConfig::default(),
        img.len() as u64,
        sha(img),
        Instant::ZERO,
    );
    let (events, _, now) = drive(
        &mut up,
        &mut dev,
        &mut Link::default(),
        img,
        Instant::ZERO,
        None,
    );
    assert_eq!(
        events.last(),
        Some(&UploadEvent::Done {
            matched: Some(true)
        })
    );
    (dev, now)
}

#[test]
fn activation_tests_resets_reads_back_and_confirms() {
    let img = image(V123, 4000);
    let (mut dev, now) = uploaded_device(&img, SimConfig::default());
    let mut act = Activate::new(ActivateConfig::default(), "V1.2.3", None, now);
    let (events, sim_events, end) = drive(&mut act, &mut dev, &mut Link::default(), &[], now, None);
    assert_eq!(
        events,
        vec![
            ActivateEvent::Candidate {
                slot: 1,
                version: "1.2.3".into()
            },
            ActivateEvent::Tested,
            ActivateEvent::ResetSent { acknowledged: true },
            ActivateEvent::Rebooted {
                version: "1.2.3".into()
            },
            ActivateEvent::Done {
                version: "1.2.3".into()
            },
        ]
    );
    assert!(sim_events.contains(&SimEvent::Booted {
        version: "1.2.3".into(),
        reverted: false
    }));
    assert!(dev.running_confirmed());
    // Reboot wait 5 s: the device (3 s reboot) answers the first read.
    assert_eq!(end, now + Duration::from_secs(5));
    // Confirmed: another reboot keeps the new version.
    dev.power_cycle(end);
    assert_eq!(dev.running_version(), "1.2.3");
}

#[test]
fn slow_reboot_and_lost_reset_answer_are_waited_out() {
    let img = image(V123, 2000);
    let sim = SimConfig {
        reboot_time: Duration::from_secs(20),
        ..SimConfig::default()
    };
    let (mut dev, now) = uploaded_device(&img, sim);
    // Answers: 0 state read, 1 test, 2 reset (dropped), 3.. after the reboot.
    let mut link = Link {
        drop_answers: vec![2],
        ..Link::default()
    };
    let mut act = Activate::new(ActivateConfig::default(), "1.2.3", None, now);
    let (events, _, _) = drive(&mut act, &mut dev, &mut link, &[], now, None);
    assert!(
        events.contains(&ActivateEvent::ResetSent {
            acknowledged: false
        }),
        "{events:?}"
    );
    assert_eq!(
        events.last(),
        Some(&ActivateEvent::Done {
            version: "1.2.3".into()
        })
    );
    // Exactly one reset went out.
    let resets = link.sent.iter().filter(|m| {
        let (h, _) = split_message(m).unwrap();
        h.group == 0 && h.id == 5
    });
    assert_eq!(resets.count(), 1);
}

#[test]
fn wrong_version_is_refused_before_the_reset() {
    let img = image(V123, 2000);
    let (mut dev, now) = uploaded_device(&img, SimConfig::default());
    let mut act = Activate::new(ActivateConfig::default(), "V2.0.0", None, now);
    let (events, _, _) = drive(&mut act, &mut dev, &mut Link::default(), &[], now, None);
    let Some(ActivateEvent::Failed(e)) = events.last() else {
        panic!("{events:?}")
    };
    assert_eq!(
        *e,
        ActivateError::CandidateVersion {
            target: "V2.0.0".into(),
            found: "1.2.3".into()
        }
    );
    assert_eq!(result::for_activate(e).code.get(), 10);
    assert_eq!(dev.running_version(), "1.0.0");
}

/// The version policy decides: "V1.2.3" is the header's 1.2.3 when
/// normalised (the default, above), not under the exact policy, which
/// refuses the candidate before any reset.
#[test]
fn the_exact_policy_refuses_a_differently_written_version() {
    let img = image(V123, 2000);
    let (mut dev, now) = uploaded_device(&img, SimConfig::default());
    let cfg = ActivateConfig {
        version_policy: otabridge_codecs::version::Policy::Exact,
        ..ActivateConfig::default()
    };
    let mut act = Activate::new(cfg.clone(), "V1.2.3", None, now);
    let (events, _, end) = drive(&mut act, &mut dev, &mut Link::default(), &[], now, None);
    assert_eq!(
        events.last(),
        Some(&ActivateEvent::Failed(ActivateError::CandidateVersion {
            target: "V1.2.3".into(),
            found: "1.2.3".into()
        }))
    );
    assert_eq!(dev.running_version(), "1.0.0");
    // Written as the device writes it, the exact policy accepts it.
    let mut act = Activate::new(cfg, "1.2.3", None, end);
    let (events, _, _) = drive(&mut act, &mut dev, &mut Link::default(), &[], end, None);
    assert_eq!(
        events.last(),
        Some(&ActivateEvent::Done {
            version: "1.2.3".into()
        })
    );
}

#[test]
fn unconfirmed_test_image_reverts_and_a_restarted_gateway_confirms() {
    let img = image(V123, 2000);
    let (mut dev, now) = uploaded_device(&img, SimConfig::default());
    let no_confirm = ActivateConfig {
        confirm: false,
        ..ActivateConfig::default()
    };
    let mut act = Activate::new(no_confirm, "1.2.3", None, now);
    let (events, _, now) = drive(&mut act, &mut dev, &mut Link::default(), &[], now, None);
    assert_eq!(
        events.last(),
        Some(&ActivateEvent::Done {
            version: "1.2.3".into()
        })
    );
    assert!(!dev.running_confirmed());

    // A gateway that restarts here finds the target running and confirms.
    let mut act = Activate::new(ActivateConfig::default(), "1.2.3", None, now);
    let (events, _, _) = drive(&mut act, &mut dev, &mut Link::default(), &[], now, None);
    assert_eq!(
        events,
        vec![
            ActivateEvent::AlreadyActive {
                version: "1.2.3".into()
            },
            ActivateEvent::Done {
                version: "1.2.3".into()
            },
        ]
    );
    assert!(dev.running_confirmed());

    // Without that confirm MCUboot would have reverted: show it on a fresh device.
    let (mut dev, now) = uploaded_device(&img, SimConfig::default());
    let no_confirm = ActivateConfig {
        confirm: false,
        ..ActivateConfig::default()
    };
    let mut act = Activate::new(no_confirm, "1.2.3", None, now);
    let (_, _, now) = drive(&mut act, &mut dev, &mut Link::default(), &[], now, None);
    dev.power_cycle(now);
    assert_eq!(dev.running_version(), "1.0.0");
    let mut act = Activate::new(ActivateConfig::default(), "1.2.3", None, now);
    let (events, _, _) = drive(&mut act, &mut dev, &mut Link::default(), &[], now, None);
    // The reverted image sits in slot 1 again; it is tested once more.
    assert_eq!(
        events.last(),
        Some(&ActivateEvent::Done {
            version: "1.2.3".into()
        })
    );
}

#[test]
fn silent_device_after_reset_fails_with_10() {
    let img = image(V123, 2000);
    let sim = SimConfig {
        reboot_time: Duration::from_secs(3600),
        ..SimConfig::default()
    };
    let (mut dev, now) = uploaded_device(&img, sim);
    let cfg = ActivateConfig {
        reboot_retries: 3,
        ..ActivateConfig::default()
    };
    let mut act = Activate::new(cfg, "1.2.3", None, now);
    let (events, _, end) = drive(&mut act, &mut dev, &mut Link::default(), &[], now, None);
    let Some(ActivateEvent::Failed(e)) = events.last() else {
        panic!("{events:?}")
    };
    assert_eq!(*e, ActivateError::NoAnswerAfterReset { attempts: 4 });
    assert_eq!(
        result::for_activate(e),
        result::IotdaResult {
            code: otabridge_codecs::iotda::ResultCode::INSTALL_FAIL,
            description: Some(otabridge_codecs::iotda::result::DESC_UPDATE_FAILED)
        }
    );
    // 5 s wait + 4 reads of 2 s.
    assert_eq!(end, now + Duration::from_secs(13));
}

/// The confirm as a step of its own (`Activate::confirm_running`): it
/// confirms a running unconfirmed target, does nothing more to a confirmed
/// one, and refuses (writing nothing) when the target does not run.
#[test]
fn confirm_running_is_idempotent_and_never_confirms_another_version() {
    let img = image(V123, 2000);
    let (mut dev, now) = uploaded_device(&img, SimConfig::default());
    // Not the target yet: refused, nothing written.
    let mut c = Activate::confirm_running(ActivateConfig::default(), "1.2.3", now);
    let mut link = Link::default();
    let (events, _, now) = drive(&mut c, &mut dev, &mut link, &[], now, None);
    assert_eq!(
        events.last(),
        Some(&ActivateEvent::Failed(ActivateError::VersionMismatch {
            target: "1.2.3".into(),
            reported: "1.0.0".into()
        }))
    );
    assert_eq!(link.sent.len(), 1, "one state read, no write");
    // Test and reset without the confirm: the target runs unconfirmed.
    let no_confirm = ActivateConfig {
        confirm: false,
        ..ActivateConfig::default()
    };
    let mut act = Activate::new(no_confirm.clone(), "1.2.3", None, now);
    let (_, _, now) = drive(&mut act, &mut dev, &mut Link::default(), &[], now, None);
    assert_eq!(
        (dev.running_version(), dev.running_confirmed()),
        ("1.2.3".into(), false)
    );
    // The confirm step confirms it (even when the config says not to).
    let mut c = Activate::confirm_running(no_confirm, "V1.2.3", now);
    let (events, _, now) = drive(&mut c, &mut dev, &mut Link::default(), &[], now, None);
    assert_eq!(
        events,
        vec![
            ActivateEvent::AlreadyActive {
                version: "1.2.3".into()
            },
            ActivateEvent::Done {
                version: "1.2.3".into()
            },
        ]
    );
    assert!(dev.running_confirmed());
    // Again: a state read and nothing else.
    let mut c = Activate::confirm_running(ActivateConfig::default(), "1.2.3", now);
    let mut link = Link::default();
    let (events, _, now) = drive(&mut c, &mut dev, &mut link, &[], now, None);
    assert_eq!(
        events.last(),
        Some(&ActivateEvent::Done {
            version: "1.2.3".into()
        })
    );
    assert_eq!(link.sent.len(), 1);
    dev.power_cycle(now);
    assert_eq!(dev.running_version(), "1.2.3", "confirmed: it stays");
}
