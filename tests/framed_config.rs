//! Framed profiles from the configuration and the command line: a user
//! profile file selected by `protocol = "framed:<name>"` drives a real
//! delivery on a pty; broken profiles and unknown names stop the config
//! load (and `otabridge sim framed-child`) with the key, the file and the
//! line.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;

use otabridge::child::{self, Child, Package};
use otabridge::config::{Config, SerialProtocol, Transport};
use otabridge::sim::framed_child::{load_profile, FramedChildOptions, FramedChildSim};
use sha2::{Digest, Sha256};

/// The integrator's own profile kept beside its fixture transcript: CRC-8,
/// 32-byte chunks, no offset query.
fn user_profile_text() -> String {
    let root = &manifest_dir();
    std::fs::read_to_string(root.join("fixtures/framed/profiles/tiny-crc8.toml")).unwrap()
}

fn config_text(profiles_dir: &Path, port: &Path, protocol: &str) -> String {
    format!(
        r#"
[platform]
url = "mqtt://127.0.0.1:1883"
device_id = "gw-product_gw01"
secret = "s"

[state]
dir = "/tmp/otabridge-unused"

[profiles]
dir = "{}"

[[child]]
device_id = "prod_sim"
transport = "sim"
version = "1.0"

[[child]]
device_id = "prod_tiny"
transport = "serial"
port = "{}"
baud = 19200
protocol = "{protocol}"
"#,
        profiles_dir.display(),
        port.display()
    )
}

#[tokio::test]
async fn a_user_profile_from_the_config_delivers_on_a_pty() {
    let dir = tempfile::tempdir().unwrap();
    let profiles = dir.path().join("profiles");
    std::fs::create_dir(&profiles).unwrap();
    // Its begin also carries the target version: the simulated child
    // learns the version it will run from the session (a real one reads it
    // from the image).
    let text = user_profile_text()
        .replace("name = \"tiny-crc8\"", "name = \"th40\"")
        .replace(
            "{ name = \"crc32\", type = \"u32le\" },",
            "{ name = \"crc32\", type = \"u32le\" },\n  { name = \"version\", type = \"bytes\", prefix = \"u8\" },",
        );
    let file = profiles.join("th40.toml");
    std::fs::write(&file, text).unwrap();

    // The simulator plays the same file, as an integrator would with
    // `otabridge sim framed-child --profile profiles/tiny-crc8.toml`.
    let p = load_profile(file.to_str().unwrap()).unwrap();
    let mut o = FramedChildOptions::new(Arc::clone(&p), "0.9");
    o.faults = "drop=0.03,noise=0.1".parse().unwrap();
    let sim = FramedChildSim::spawn(o).unwrap();

    let cfg_path = dir.path().join("otabridge.toml");
    std::fs::write(&cfg_path, config_text(&profiles, sim.path(), "framed:th40")).unwrap();
    let cfg = Config::load(&cfg_path).unwrap();
    let Transport::Serial {
        protocol: SerialProtocol::Framed(f),
        ..
    } = &cfg.children[1].transport
    else {
        panic!("not framed: {:?}", cfg.children[1]);
    };
    assert_eq!(f.file.as_deref(), Some(file.as_path()));
    assert_eq!(*f.profile, *p);

    let c = child::from_config(&cfg.children[1], &mut child::Networks::new(&cfg.coap)).unwrap();
    assert_eq!(c.transport(), "serial");
    assert_eq!(c.read_version().await.unwrap(), "0.9");
    let img: Vec<u8> = (0..3_000u32).map(|i| (i * 7 + 3) as u8).collect();
    let pkg_path = dir.path().join("fw");
    std::fs::write(&pkg_path, &img).unwrap();
    let pkg = Package {
        path: pkg_path,
        size: img.len() as u64,
        sha256: hex::encode(Sha256::digest(&img)),
        version: "1.0".into(),
    };
    c.deliver(&pkg, 0, &|_| {}).await.unwrap();
    c.activate(&pkg).await.unwrap();
    assert_eq!(c.read_version().await.unwrap(), "1.0");
    assert_eq!(
        sim.inspect(|s| s.device().installed().map(<[u8]>::to_vec)),
        Some(img)
    );
}

#[test]
fn config_load_names_the_key_the_profile_file_and_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let cfg_path = dir.path().join("otabridge.toml");
    let load = |protocol: &str| {
        std::fs::write(
            &cfg_path,
            config_text(dir.path(), Path::new("/dev/ttyUSB0"), protocol),
        )
        .unwrap();
        Config::load(&cfg_path).unwrap_err().to_string()
    };
    let prefix = format!("config {}: child[1].protocol: ", cfg_path.display());

    // A mistake in the user's file: its path and line.
    let text = user_profile_text().replace("\"u16le\"", "\"u24le\"");
    let line = text.lines().position(|l| l.contains("u24le")).unwrap() + 1;
    let file = dir.path().join("tiny-crc8.toml");
    std::fs::write(&file, &text).unwrap();
    let e = load("framed:tiny-crc8");
    assert!(
        e.starts_with(&format!(
            "{prefix}invalid profile {}:{line}: ",
            file.display()
        )),
        "{e}"
    );
    assert!(e.contains("u24le"), "{e}");

    // A name nothing has.
    let e = load("framed:th40");
    assert!(e.starts_with(&format!("{prefix}no profile 'th40'")), "{e}");
    assert!(e.contains("has no th40.toml"), "{e}");
}

/// `otabridge sim framed-child`: a bad profile is a usage error naming the
/// file and line; a good one prints a pty path that a driver can open.
#[tokio::test]
async fn the_simulator_command_checks_its_profile_and_prints_its_pty() {
    let exe = env!("CARGO_BIN_EXE_otabridge");
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        user_profile_text().replace("max_chunk = 32", "max_chunk = 0"),
    )
    .unwrap();
    let out = Command::new(exe)
        .args(["sim", "framed-child", "--profile"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    let line = user_profile_text()
        .lines()
        .position(|l| l.contains("max_chunk"))
        .unwrap()
        + 1;
    assert!(
        err.contains(&format!("{}:{line}: ", bad.display())),
        "{err}"
    );
    let out = Command::new(exe)
        .args([
            "sim",
            "framed-child",
            "--profile",
            "acme-rs485",
            "--faults",
            "drop=2",
        ])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let mut sim = Command::new(exe)
        .args([
            "sim",
            "framed-child",
            "--profile",
            "nordlys-uart",
            "--version",
            "4.2",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(sim.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let path = first.trim().to_owned();
    let c = otabridge::child::framed::FramedChild::new(
        "bench",
        Path::new(&path),
        115_200,
        otabridge::config::Framing::EIGHT_N_ONE,
        load_profile("nordlys-uart").unwrap(),
    );
    let version = c.read_version().await;
    sim.kill().unwrap();
    sim.wait().unwrap();
    assert_eq!(version.unwrap(), "4.2", "{path}");
}

/// The package directory, read when the test runs: cargo sets it for every
/// test process. The compile-time value can name another checkout when a
/// build cache is shared between clones (CI), so it is only the fallback.
fn manifest_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}
