//! A framed profile's own image check (`[image_check]`,
//! codecs/profiles/README.md): a user profile declares magic bytes, a
//! version field and a CRC over a range; the gateway's gate, built from the
//! configuration as `otabridge run` builds it, passes the vendor's image and
//! refuses each broken one with its code before a byte is sent.

use std::path::Path;

use otabridge::config::Config;
use otabridge::image::Gate;
use otabridge_codecs::framed::profile::{builtin_text, CrcAlgorithm};

const CHECK: &str = r#"
[image_check]
magic = { offset = 0, bytes = "41 43 4D 45" }
version = { offset = 4, parts = ["u8", "u8", "u16le"] }
crc = { algorithm = "crc32", from = 0, to = -4, at = -4, endian = "little" }
"#;

fn config(dir: &Path) -> Config {
    let profiles = dir.join("profiles");
    std::fs::create_dir_all(&profiles).unwrap();
    let text = builtin_text("acme-rs485")
        .unwrap()
        .replace("name = \"acme-rs485\"", "name = \"acme-checked\"");
    assert!(text.contains("acme-checked"));
    std::fs::write(profiles.join("acme-checked.toml"), format!("{text}{CHECK}")).unwrap();
    let cfg = format!(
        r#"
[platform]
url = "mqtt://127.0.0.1:1883"
device_id = "gw-product_gw01"
secret = "s"

[state]
dir = "{state}"

[profiles]
dir = "{profiles}"

[[child]]
device_id = "checked"
transport = "serial"
port = "/dev/ttyUSB7"
protocol = "framed:acme-checked"

[[child]]
device_id = "plain"
transport = "serial"
port = "/dev/ttyUSB8"
protocol = "framed:acme-rs485"
"#,
        state = dir.join("state").display(),
        profiles = profiles.display(),
    );
    std::fs::write(dir.join("gw.toml"), &cfg).unwrap();
    Config::parse(&cfg, &dir.join("gw.toml")).unwrap()
}

/// `ACME`, version `a.b.c` (u8, u8, u16le), a body, CRC-32 (LE) of all that.
fn image(version: (u8, u8, u16), body_len: usize) -> Vec<u8> {
    let mut v = b"ACME".to_vec();
    v.extend_from_slice(&[version.0, version.1]);
    v.extend_from_slice(&version.2.to_le_bytes());
    v.extend((0..body_len).map(|i| (i * 7 % 251) as u8));
    let crc = CrcAlgorithm::Crc32.checksum(&v);
    v.extend_from_slice(&crc.to_le_bytes());
    v
}

#[test]
fn a_profile_check_passes_the_vendors_image_and_refuses_broken_ones() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let gate = Gate::from_config(&cfg).unwrap();
    assert!(gate.checks("checked"));
    assert!(
        !gate.checks("plain"),
        "a profile without [image_check] is untouched"
    );

    let good = image((2, 0, 3), 200_000);
    let write = |name: &str, bytes: &[u8]| {
        let p = dir.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    };
    gate.check("checked", &write("good.bin", &good), "2.0.3")
        .unwrap();
    // The version policy: V2.0.3 is 2.0.3 (normalised).
    gate.check("checked", &dir.path().join("good.bin"), "V2.0.3")
        .unwrap();

    let mut corpus: Vec<(&str, Vec<u8>, u8, &str)> = Vec::new();
    let mut magic = good.clone();
    magic[1] = b'B';
    corpus.push(("magic", magic, 8, "magic: expected 41 43 4d 45"));
    let mut body = good.clone();
    body[100_000] ^= 0x10;
    corpus.push(("body bit", body, 7, "crc: the crc32 over bytes 0..200008"));
    let mut stored = good.clone();
    let n = stored.len();
    stored[n - 1] ^= 0x80;
    corpus.push(("stored crc", stored, 7, "crc:"));
    corpus.push((
        "version",
        image((2, 0, 4), 100),
        7,
        "version: the image says 2.0.4",
    ));
    corpus.push((
        "truncated",
        good[..6].to_vec(),
        8,
        "size: the image is 6 bytes",
    ));
    corpus.push(("empty", Vec::new(), 8, "size: the image is 0 bytes"));
    for (name, bytes, code, words) in &corpus {
        let p = write(&format!("{}.bin", name.replace(' ', "-")), bytes);
        let r = gate.check("checked", &p, "2.0.3").unwrap_err();
        assert_eq!(r.code.get(), *code, "{name}: {}", r.description);
        assert!(
            r.description.starts_with("image check failed: ") && r.description.contains(words),
            "{name}: {}",
            r.description
        );
    }
    // The same broken bytes go to a child whose profile declares no check.
    gate.check("plain", &dir.path().join("magic.bin"), "2.0.3")
        .unwrap();
}

fn inspect(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_otabridge"))
        .args(["image", "inspect"])
        .args(args)
        .output()
        .unwrap()
}

fn json(out: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out:?}"))
}

/// `otabridge image inspect` shows a framed profile's `[image_check]`
/// result: with `--profile FILE` directly, and with `--child` for a framed
/// child of a configuration, as a job would judge the file.
#[test]
fn inspect_shows_the_profile_check_for_a_file() {
    let dir = tempfile::tempdir().unwrap();
    config(dir.path());
    let cfg = dir.path().join("gw.toml");
    let cfg = cfg.to_str().unwrap();
    let profile = dir.path().join("profiles/acme-checked.toml");
    let profile = profile.to_str().unwrap();
    let good = dir.path().join("good.bin");
    std::fs::write(&good, image((1, 2, 3), 3000)).unwrap();
    let good = good.to_str().unwrap();
    let mut bad = image((1, 2, 3), 3000);
    bad[100] ^= 0x10;
    let badp = dir.path().join("bad.bin");
    std::fs::write(&badp, bad).unwrap();
    let badp = badp.to_str().unwrap();

    // --profile, no target: the version is read, magic and CRC checked.
    let out = inspect(&[good, "--profile", profile]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("profile:     acme-checked ([image_check]: magic, crc, version)"),
        "{text}"
    );
    assert!(
        text.contains("version:     1.2.3 (not compared: no --target)"),
        "{text}"
    );
    assert!(text.contains("image check: passed"), "{text}");

    // --json, a target that differs: result 7, exit status 1.
    let out = inspect(&[good, "--profile", profile, "--target", "1.2.4", "--json"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let v = json(&out);
    assert_eq!(v["ok"], false);
    assert_eq!(v["profile"], "acme-checked");
    assert_eq!(v["rejected"]["result_code"], 7);
    assert!(
        v["rejected"]["description"]
            .as_str()
            .unwrap()
            .contains("version: the image says 1.2.3"),
        "{v}"
    );

    // A flipped body bit: the CRC fails.
    let out = inspect(&[badp, "--profile", profile, "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let v = json(&out);
    assert!(
        v["rejected"]["description"]
            .as_str()
            .unwrap()
            .contains("crc:"),
        "{v}"
    );

    // --child of a framed child, from the configuration.
    let out = inspect(&[
        good, "--config", cfg, "--child", "checked", "--target", "1.2.3", "--json",
    ]);
    assert!(out.status.success(), "{out:?}");
    let v = json(&out);
    assert_eq!(
        (v["ok"].clone(), v["version"].clone()),
        (true.into(), "1.2.3".into())
    );
    let out = inspect(&[
        badp, "--config", cfg, "--child", "checked", "--target", "1.2.3",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains("image check: REJECTED, result 7: image check failed: crc:"),
        "{out:?}"
    );

    // A child with no check, a profile without one, a target alone: usage errors.
    let out = inspect(&[
        good, "--config", cfg, "--child", "plain", "--target", "1.2.3",
    ]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let out = inspect(&[good, "--profile", "acme-rs485"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("declares no [image_check]"));
    let out = inspect(&[good, "--target", "1.2.3"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}
