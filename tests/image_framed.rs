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
