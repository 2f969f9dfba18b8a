//! Interop with the Python `smp` package (4.2.0): Python decodes frames
//! otabridge wrote, and otabridge decodes frames Python wrote.
//!
//! Without the package the test prints "skipped: python smp package not
//! installed" and passes, unless `OTABRIDGE_REQUIRE_INTEROP=1`, which
//! turns the absence into a failure. `OTABRIDGE_PYTHON` names another
//! interpreter than `python3`.

use otabridge_codecs::smp::header::{build_message, command, group, split_message, Op, SmpVersion};
use otabridge_codecs::smp::message::{self, Params, UploadResponse};
use otabridge_codecs::smp::serial::{self, DecodeEvent, Decoder};
use otabridge_codecs::smp::sim::{mcuboot_header, ImageVersion};
use otabridge_codecs::smp::upload::{Upload, UploadConfig};
use otabridge_codecs::smp::SmpErr;
use otabridge_codecs::time::Instant;
use serde_json::{json, Value};
use std::io::Write;
use std::process::{Command, Stdio};

fn python() -> String {
    std::env::var("OTABRIDGE_PYTHON").unwrap_or_else(|_| "python3".into())
}

fn python_has_smp() -> bool {
    Command::new(python())
        .args(["-c", "import smp, cbor2"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    otabridge_codecs::hex::parse(s).unwrap()
}

/// The first two upload messages the engine writes for a 300-byte image.
fn upload_messages() -> (Vec<u8>, Vec<u8>, Vec<u8>, [u8; 32]) {
    let v = ImageVersion {
        major: 1,
        minor: 2,
        revision: 3,
        build: 4,
    };
    let mut img = mcuboot_header(v, 268).to_vec();
    img.extend((32..300).map(|i| (i % 256) as u8));
    let sha = [0x5a; 32];
    let cfg = UploadConfig {
        read_params: false,
        default_buf_size: 128,
        first_seq: 40,
        ..UploadConfig::default()
    };
    let mut up = Upload::new(cfg, 300, sha, Instant::ZERO);
    let mut msgs = Vec::new();
    for _ in 0..2 {
        let r = up.poll_read().unwrap();
        let s = r.offset as usize;
        up.handle_data(r.offset, &img[s..s + r.len], Instant::ZERO)
            .unwrap();
        let msg = up.poll_transmit().unwrap();
        let (h, body) = split_message(&msg).unwrap();
        let off = message::decode_upload_request(body).unwrap().off.unwrap();
        let next = off + message::decode_upload_request(body).unwrap().data.len() as u64;
        let rsp = build_message(
            Op::WriteRsp,
            h.version,
            h.group,
            h.seq,
            h.id,
            &message::encode_upload_response(UploadResponse {
                off: next,
                matched: None,
            }),
        );
        up.handle_message(&rsp, Instant::ZERO);
        msgs.push(msg);
    }
    (msgs[0].clone(), msgs[1].clone(), img, sha)
}

fn decode_one(wire: &[u8]) -> Vec<u8> {
    let events = Decoder::default().decode_all(wire);
    match events.as_slice() {
        [DecodeEvent::Message(m)] => m.clone(),
        other => panic!("decoding smp's frame gave {other:?}"),
    }
}

#[test]
fn python_smp_reads_our_frames_and_we_read_its_frames() {
    if !python_has_smp() {
        if std::env::var("OTABRIDGE_REQUIRE_INTEROP").as_deref() == Ok("1") {
            panic!("OTABRIDGE_REQUIRE_INTEROP=1 but the python smp package is not installed");
        }
        println!("skipped: python smp package not installed");
        return;
    }
    let (first, next, img, sha) = upload_messages();
    let v2 = SmpVersion::V2;
    let long_echo = "y".repeat(300);
    let frames = [
        (
            "echo",
            build_message(
                Op::Write,
                v2,
                group::OS,
                3,
                command::OS_ECHO,
                &message::echo_request("hello"),
            ),
        ),
        (
            "echo_long",
            build_message(
                Op::Write,
                v2,
                group::OS,
                4,
                command::OS_ECHO,
                &message::echo_request(&long_echo),
            ),
        ),
        ("upload_first", first),
        ("upload_next", next),
        (
            "state_read",
            build_message(
                Op::Read,
                v2,
                group::IMAGE,
                5,
                command::IMAGE_STATE,
                &message::empty_body(),
            ),
        ),
        (
            "state_test",
            build_message(
                Op::Write,
                v2,
                group::IMAGE,
                6,
                command::IMAGE_STATE,
                &message::state_write_request(Some(&[0xab; 32]), false),
            ),
        ),
        (
            "reset",
            build_message(
                Op::Write,
                v2,
                group::OS,
                7,
                command::OS_RESET,
                &message::reset_request(false),
            ),
        ),
        (
            "params",
            build_message(
                Op::Read,
                v2,
                group::OS,
                8,
                command::OS_PARAMS,
                &message::empty_body(),
            ),
        ),
    ];
    let input = json!({
        "frames": frames.iter().map(|(n, m)| (n.to_string(), json!(hex(&serial::encode(m, serial::MAX_LINE))))).collect::<serde_json::Map<_, _>>()
    });
    let script = manifest_dir().join("tests/python/smp_interop.py");
    let mut child = Command::new(python())
        .arg(&script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let d = &v["decoded"];

    // Python read our frames.
    assert_eq!(d["echo"]["d"], "hello");
    assert_eq!(
        d["echo"]["header"],
        json!({"op": 2, "version": 1, "group": 0, "seq": 3, "id": 0})
    );
    assert_eq!(d["echo_long"]["d"], long_echo.as_str());
    let f = &d["upload_first"];
    assert_eq!(f["off"], 0);
    assert_eq!(f["len"], 300);
    assert_eq!(f["image"], 0);
    assert_eq!(f["sha"], hex(&sha));
    let first_len = f["data"].as_str().unwrap().len() / 2;
    assert_eq!(f["data"], hex(&img[..first_len]));
    assert_eq!(f["reencoded_equal"], true);
    assert_eq!(f["header"]["seq"], 40);
    let n = &d["upload_next"];
    assert_eq!(n["off"], first_len);
    assert_eq!(n["len"], Value::Null);
    assert_eq!(n["sha"], Value::Null);
    let next_len = n["data"].as_str().unwrap().len() / 2;
    assert_eq!(n["data"], hex(&img[first_len..first_len + next_len]));
    assert_eq!(n["reencoded_equal"], true);
    assert_eq!(n["header"]["seq"], 41);
    assert_eq!(d["state_test"]["hash"], hex(&[0xab; 32]));
    assert_eq!(d["state_test"]["confirm"], false);
    assert_eq!(d["state_read"]["header"]["op"], 0);
    assert_eq!(
        d["reset"]["header"],
        json!({"op": 2, "version": 1, "group": 0, "seq": 7, "id": 5})
    );
    assert_eq!(d["params"]["header"]["id"], 6);

    // We read Python's frames.
    let e = &v["encoded"];
    let msg = |name: &str| decode_one(&unhex(e[name].as_str().unwrap()));
    let body = |name: &str| {
        let m = msg(name);
        let (_, b) = split_message(&m).unwrap();
        b.to_vec()
    };
    let (h, _) = split_message(&msg("params")).unwrap();
    assert_eq!(
        (h.op, h.version, h.group, h.seq, h.id),
        (Op::ReadRsp, SmpVersion::V2, 0, 7, 6)
    );
    assert_eq!(
        message::params_response(&body("params")),
        Ok(Ok(Params {
            buf_size: 512,
            buf_count: 4
        }))
    );
    assert_eq!(
        message::upload_response(&body("upload_off")),
        Ok(Ok(UploadResponse {
            off: 1234,
            matched: None
        }))
    );
    assert_eq!(
        message::upload_response(&body("upload_match")),
        Ok(Ok(UploadResponse {
            off: 70000,
            matched: Some(true)
        }))
    );
    let list = message::state_response(&body("state")).unwrap().unwrap();
    assert_eq!(list.len(), 2);
    assert!(list[0].active && list[0].confirmed && !list[0].pending);
    assert_eq!(list[0].hash, (0..32).collect::<Vec<u8>>());
    assert_eq!(
        (list[1].slot, list[1].version.as_str(), list[1].pending),
        (1, "1.2.3.4", true)
    );
    assert!(otabridge_codecs::version::Policy::default().same("V1.2.3+4", &list[1].version));
    assert_eq!(
        message::echo_response(&body("echo")),
        Ok(Ok("x".repeat(200)))
    );
    assert_eq!(
        message::upload_response(&body("err_v2")),
        Ok(Err(SmpErr::Group { group: 1, rc: 9 }))
    );
    let (h, _) = split_message(&msg("err_v1")).unwrap();
    assert_eq!(h.version, SmpVersion::V1);
    assert_eq!(
        message::upload_response(&body("err_v1")),
        Ok(Err(SmpErr::Legacy { rc: 8 }))
    );
}

/// The package directory, read when the test runs: cargo sets it for every
/// test process. The compile-time value can name another checkout when a
/// build cache is shared between clones (CI), so it is only the fallback.
fn manifest_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}
