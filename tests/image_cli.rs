//! `otabridge image inspect`: what the gateway sees in an image, as text and
//! JSON, with the exit status saying whether every check passed.

mod image_support;

use std::path::Path;
use std::process::{Command, Output};

use image_support::{app, imgtool_available, keygen, sign};
use otabridge::sim::smp_child::{mcuboot_image, parse_version};

fn inspect(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_otabridge"))
        .args(["image", "inspect"])
        .args(args)
        .output()
        .unwrap()
}

fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn config(dir: &Path, keys: &[&Path]) -> std::path::PathBuf {
    let keys: Vec<String> = keys
        .iter()
        .map(|k| format!("{:?}", k.display().to_string()))
        .collect();
    let text = format!(
        "[platform]\nurl = \"mqtts://localhost:8883\"\ndevice_id = \"gw\"\nsecret = \"s\"\n\n\
         [state]\ndir = {:?}\n\n[image]\nkeys = [{}]\n\n\
         [[child]]\ndevice_id = \"node\"\ntransport = \"serial\"\nport = \"/dev/null\"\n\
         image = {{ slot_size = 100000 }}\n",
        dir.join("state").display().to_string(),
        keys.join(", ")
    );
    let p = dir.join("gw.toml");
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn an_unsigned_image_shows_its_version_and_hash() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("fw.bin");
    std::fs::write(
        &img,
        mcuboot_image(parse_version("3.1.4").unwrap(), 5000, 1),
    )
    .unwrap();
    let img = img.to_str().unwrap();
    let out = inspect(&[img]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("version:     3.1.4"), "{text}");
    assert!(text.contains("SHA-256 matches"), "{text}");
    assert!(text.contains("not checked: no key configured"), "{text}");
    let v = json(&inspect(&[img, "--json"]));
    assert_eq!(v["version"], "3.1.4");
    assert_eq!(v["file_size"], 5000);
    assert_eq!(v["hash_ok"], true);
    assert_eq!(v["tlvs"][0]["name"], "SHA256");
    // Not an image: exit 1, the reason and the code the job would report.
    let raw = dir.path().join("raw.bin");
    std::fs::write(&raw, [0u8; 64]).unwrap();
    let out = inspect(&[raw.to_str().unwrap(), "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let v = json(&out);
    assert_eq!(v["result_code"], 8, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("not an MCUboot image"),
        "{v}"
    );
}

#[test]
fn a_signed_image_is_checked_against_the_configured_keys() {
    if !imgtool_available("a_signed_image_is_checked_against_the_configured_keys") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let input = app(d, "app", 30_000, 9);
    let (key, public) = keygen(d, "vendor", "ed25519");
    let (other, other_pub) = keygen(d, "other", "rsa-2048");
    let img = sign(d, "fw", &input, Some(&key), "2.0.0", &[]);
    let img = img.to_str().unwrap();
    let cfg = config(d, &[&public]);
    let cfg = cfg.to_str().unwrap();

    let out = inspect(&[img, "--config", cfg, "--json"]);
    assert!(out.status.success(), "{out:?}");
    let v = json(&out);
    assert_eq!(v["version"], "2.0.0");
    assert_eq!(v["header_size"], 0x200);
    assert_eq!(v["body_size"], 30_000);
    assert_eq!(v["security_counter"], 5);
    assert_eq!(v["signature"]["result"], "verified", "{v}");
    assert_eq!(v["signature"]["algorithm"], "Ed25519");
    assert_eq!(v["key_hash"].as_str().unwrap().len(), 64);

    // As a job for the child: right target passes, another is rejected.
    let out = inspect(&[img, "--config", cfg, "--child", "node", "--target", "2.0.0"]);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("verdict:     ok"));
    let out = inspect(&[
        img, "--config", cfg, "--child", "node", "--target", "2.1.0", "--json",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let v = json(&out);
    assert_eq!(v["verdict"]["result_code"], 7, "{v}");
    assert!(v["verdict"]["description"]
        .as_str()
        .unwrap()
        .contains("version"));

    // Signed by a key the configuration does not hold.
    let foreign = sign(d, "foreign", &input, Some(&other), "2.0.0", &[]);
    let out = inspect(&[foreign.to_str().unwrap(), "--config", cfg]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("FAILED: signed with a key that is not configured"),
        "{text}"
    );
    // With that key configured too, it verifies.
    let both = config(d, &[&public, &other_pub]);
    let out = inspect(&[
        foreign.to_str().unwrap(),
        "--config",
        both.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}
