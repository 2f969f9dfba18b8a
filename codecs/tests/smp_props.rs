//! Property tests: framing round trips under any line length and read
//! chunking, the decoder survives any bytes, the upload engine survives
//! any answers and fits any buffer size.

use otabridge_codecs::smp::header::{build_message, split_message, Op, SmpVersion};
use otabridge_codecs::smp::serial::{self, DecodeEvent, Decoder};
use otabridge_codecs::smp::sim::{mcuboot_header, ImageVersion, SimConfig, SimDevice};
use otabridge_codecs::smp::upload::{Upload, UploadConfig, UploadEvent};
use otabridge_codecs::time::Instant;
use proptest::prelude::*;
use proptest::test_runner::RngSeed;
use sha2::{Digest, Sha256};

/// Splits `bytes` at the given cut points (taken modulo its length).
fn chunks(bytes: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
    points.push(0);
    points.push(bytes.len());
    points.sort_unstable();
    points
        .windows(2)
        .map(|w| bytes[w[0]..w[1]].to_vec())
        .collect()
}

/// Bytes biased towards the ones the decoder's state machine reacts to.
fn wire_byte() -> impl Strategy<Value = u8> {
    prop_oneof![
        4 => any::<u8>(),
        1 => Just(0x06),
        1 => Just(0x09),
        1 => Just(0x04),
        1 => Just(0x14),
        1 => Just(b'\n'),
        1 => Just(b'='),
        4 => prop::sample::select(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".to_vec()),
    ]
}

proptest! {
    // A fixed seed: the same cases every run.
    #![proptest_config(ProptestConfig {
        cases: 256,
        rng_seed: RngSeed::Fixed(0x0741_b41d),
        ..ProptestConfig::default()
    })]

    #[test]
    fn any_message_round_trips_any_line_length_and_chunking(
        msg in prop::collection::vec(any::<u8>(), 8..700),
        line_len in 7usize..300,
        cuts in prop::collection::vec(any::<usize>(), 0..20),
        noise in "[ -~]{0,40}",
    ) {
        let wire = serial::encode(&msg, line_len);
        for line in wire.split_inclusive(|&b| b == b'\n') {
            prop_assert!(line.len() <= line_len.max(7));
            prop_assert_eq!((line.len() - 3) % 4, 0);
        }
        // Console text before the frame, which ends in a newline.
        let mut stream = noise.into_bytes();
        stream.push(b'\n');
        stream.extend_from_slice(&wire);
        let mut d = Decoder::new(1024);
        let mut events = Vec::new();
        for c in chunks(&stream, &cuts) {
            events.extend(d.decode_all(&c));
        }
        prop_assert_eq!(events, vec![DecodeEvent::Message(msg)]);
        prop_assert!(!d.is_pending());
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_a_frame_after_them_decodes(
        garbage in prop::collection::vec(wire_byte(), 0..2000),
        cuts in prop::collection::vec(any::<usize>(), 0..10),
        seq in any::<u8>(),
    ) {
        let mut d = Decoder::new(256);
        for c in chunks(&garbage, &cuts) {
            for e in d.decode_all(&c) {
                if let DecodeEvent::Message(m) = e {
                    prop_assert!(m.len() <= 254);
                }
            }
        }
        // Resynchronise: a newline, then a real frame.
        let msg = build_message(Op::Write, SmpVersion::V2, 0, seq, 0, &[0xa1, 0x61, 0x64, 0x61, 0x78]);
        let mut tail = vec![b'\n'];
        tail.extend(serial::encode(&msg, serial::MAX_LINE));
        let events = d.decode_all(&tail);
        prop_assert_eq!(events.last(), Some(&DecodeEvent::Message(msg)));
    }

    #[test]
    fn upload_survives_any_answers(
        answers in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 1..30),
        offs in prop::collection::vec(0u64..2000, 1..30),
    ) {
        let mut up = Upload::new(UploadConfig::default(), 1000, [7; 32], Instant::ZERO);
        let mut now = Instant::ZERO;
        let mut finished = false;
        for (i, body) in answers.iter().enumerate() {
            while let Some(r) = up.poll_read() {
                prop_assert!(r.offset + r.len as u64 <= 1000);
                up.handle_data(r.offset, &vec![0; r.len], now).unwrap();
            }
            let Some(req) = up.poll_transmit() else {
                now = up.poll_timeout().unwrap_or(now);
                up.handle_timeout(now);
                continue;
            };
            let (h, _) = split_message(&req).unwrap();
            // Either garbage, or a well-formed answer with a random off.
            let answer = if i % 2 == 0 {
                body.clone()
            } else {
                let off = offs[i % offs.len()];
                let mut b = vec![0xa1, 0x63, b'o', b'f', b'f', 0x19];
                b.extend_from_slice(&(off as u16).to_be_bytes());
                b
            };
            let rsp = build_message(h.op.response().unwrap(), h.version, h.group, h.seq, h.id, &answer);
            up.handle_message(&rsp, now);
            while let Some(e) = up.poll_event() {
                if matches!(e, UploadEvent::Done { .. } | UploadEvent::Failed(_)) {
                    finished = true;
                }
            }
            if finished {
                prop_assert!(up.is_finished());
                prop_assert!(up.poll_timeout().is_none());
                break;
            }
        }
    }

    #[test]
    fn upload_fits_any_buffer_and_finishes_byte_exact(
        buf_size in 128u64..2100,
        len in 32usize..6000,
        version in (any::<u8>(), any::<u8>(), any::<u16>(), any::<u32>()),
    ) {
        let v = ImageVersion { major: version.0, minor: version.1, revision: version.2, build: version.3 };
        let mut img = mcuboot_header(v, (len - 32) as u32).to_vec();
        img.extend((32..len).map(|i| (i * 13 % 256) as u8));
        let sha: [u8; 32] = Sha256::digest(&img).into();
        let mut dev = SimDevice::new(SimConfig { buf_size, ..SimConfig::default() });
        let mut up = Upload::new(UploadConfig::default(), len as u64, sha, Instant::ZERO);
        let now = Instant::ZERO;
        let mut done = None;
        for _ in 0..10_000 {
            while let Some(r) = up.poll_read() {
                let s = r.offset as usize;
                up.handle_data(r.offset, &img[s..s + r.len], now).unwrap();
            }
            let Some(req) = up.poll_transmit() else { break };
            prop_assert!(req.len() as u64 <= buf_size - 4);
            dev.handle_message(&req, now);
            let rsp = dev.poll_transmit().expect("the simulated device answers every fitting request");
            up.handle_message(&rsp, now);
            while let Some(e) = up.poll_event() {
                if let UploadEvent::Done { matched } = e {
                    done = Some(matched);
                } else if let UploadEvent::Failed(e) = e {
                    prop_assert!(false, "upload failed: {e}");
                }
            }
        }
        prop_assert_eq!(done, Some(Some(true)));
    }
}
