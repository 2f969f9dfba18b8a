//! The command line's contract: exit codes and messages (docs/design.md, CLI).

use std::process::Command;

fn otabridge() -> Command {
    Command::new(env!("CARGO_BIN_EXE_otabridge"))
}

#[test]
fn a_bad_config_exits_2_and_names_the_key_and_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(
        &file,
        "[platform]\nurl = \"mqtts://h\"\ndevice_id = \"gw\"\nsecret = \"s\"\nkeepalive = 3\n[state]\ndir = \"/tmp/x\"\n",
    )
    .unwrap();
    for sub in ["run", "status"] {
        let out = otabridge()
            .args([sub, "--config"])
            .arg(&file)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{sub}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(&file.display().to_string()), "{err}");
        assert!(
            err.contains("platform") && err.contains("keepalive"),
            "{err}"
        );
    }
    let out = otabridge()
        .args(["run", "--config", "/nonexistent.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read"));
}

#[test]
fn usage_errors_exit_2() {
    let out = otabridge().arg("frobnicate").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn status_reads_the_journal_without_a_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    {
        let mut j = otabridge::journal::Journal::open(&state).unwrap();
        j.child_seen("p_a", "sim", Some("1.2"), true, None, 100)
            .unwrap();
    }
    let file = dir.path().join("c.toml");
    std::fs::write(
        &file,
        format!(
            "[platform]\nurl = \"mqtt://127.0.0.1:1\"\ndevice_id = \"gw\"\nsecret = \"s\"\n[state]\ndir = {:?}\n\
             [[child]]\ndevice_id = \"p_a\"\ntransport = \"coap\"\naddress = \"127.0.0.1:5701\"\n\
             [[child]]\ndevice_id = \"p_b\"\ntransport = \"coap\"\naddress = \"127.0.0.1:5702\"\n",
            state.display().to_string()
        ),
    )
    .unwrap();
    let out = otabridge()
        .args(["status", "--json", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["device_id"], "p_a");
    assert_eq!(v[0]["version"], "1.2");
    assert_eq!(v[0]["online"], true);
    assert_eq!(v[1]["device_id"], "p_b");
    assert_eq!(v[1]["online"], false);
    let out = otabridge()
        .args(["status", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.lines().nth(1).unwrap().starts_with("p_a"), "{text}");
}

#[test]
fn the_example_configurations_are_valid() {
    let bench = otabridge::config::Config::load(std::path::Path::new("examples/bench.toml"));
    assert!(bench.is_ok(), "{:?}", bench.err());
    // The IoTDA example reads its secret from a file that exists on a real
    // gateway only; everything before that key must be valid.
    let e = otabridge::config::Config::load(std::path::Path::new("examples/iotda.toml"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("platform.secret_file: cannot read /etc/otabridge/secret"),
        "{e}"
    );
}

/// The packaged manual pages are what the packaged command line (the
/// build without simulators, whose `demo` and `sim` only say so) says
/// today: a changed option without regenerated pages fails here. Checked
/// in that build (`.ci/run` runs `cargo test --no-default-features --test
/// cli`); a build with the simulators documents more subcommands.
#[cfg(not(feature = "sim"))]
#[test]
fn the_packaged_man_pages_are_current() {
    let dir = tempfile::tempdir().unwrap();
    let out = otabridge()
        .args(["man", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let packaged = manifest_dir().join("packaging/man");
    let names = |d: &std::path::Path| {
        let mut v: Vec<String> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    let fresh = names(dir.path());
    assert!(fresh.contains(&"otabridge.1".to_owned()), "{fresh:?}");
    assert!(fresh.contains(&"otabridge-run.1".to_owned()), "{fresh:?}");
    let regenerate =
        "regenerate them: rm packaging/man/*.1; cargo run --no-default-features -- man --dir packaging/man";
    assert_eq!(names(&packaged), fresh, "{regenerate}");
    for name in &fresh {
        let want = std::fs::read_to_string(dir.path().join(name)).unwrap();
        let have = std::fs::read_to_string(packaged.join(name)).unwrap();
        assert!(have == want, "packaging/man/{name} is stale; {regenerate}");
    }
    // The operator's sections of the main page.
    let main = std::fs::read_to_string(packaged.join("otabridge.1")).unwrap();
    for section in ["FILES", "EXIT STATUS", "SIGNALS", "ENVIRONMENT"] {
        assert!(
            main.contains(&format!(".SH \"{section}\""))
                || main.contains(&format!(".SH {section}")),
            "{section}"
        );
    }
}

/// The package directory, read when the test runs: cargo sets it for every
/// test process. The compile-time value can name another checkout when a
/// build cache is shared between clones (CI), so it is only the fallback.
fn manifest_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

/// A build without the `sim` feature (the Debian package) answers the
/// simulator subcommands and `transport = "sim"` with an error that says
/// why (`cargo test --no-default-features --test cli`, run by .ci/run).
#[cfg(not(feature = "sim"))]
#[test]
fn a_build_without_simulators_says_so() {
    for args in [&["demo"][..], &["sim", "iotda"], &["sim", "coap-child"]] {
        let out = otabridge().args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("without the simulators"), "{args:?}: {err}");
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.toml");
    std::fs::write(
        &file,
        "[platform]\nurl = \"mqtt://127.0.0.1:1\"\ndevice_id = \"gw\"\nsecret = \"s\"\n[state]\ndir = \"/tmp/x\"\n\
         [[child]]\ndevice_id = \"a\"\ntransport = \"sim\"\nversion = \"1\"\n",
    )
    .unwrap();
    let out = otabridge()
        .args(["status", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(": child[0].transport: 'sim' (the in-process simulated child) needs a build with the `sim` feature"),
        "{err}"
    );
}

/// `otabridge image inspect` needs no simulator: it answers in every build,
/// the Debian package's included (.ci/run runs this file without the `sim`
/// feature). The image is laid out by the codecs' own assembler.
#[test]
fn image_inspect_works_in_every_build() {
    use otabridge_codecs::mcuboot::{image::assemble, HashKind, ImageVersion};
    let dir = tempfile::tempdir().unwrap();
    let version = ImageVersion {
        major: 2,
        minor: 7,
        revision: 1,
        build: 0,
    };
    let img = dir.path().join("fw.bin");
    std::fs::write(
        &img,
        assemble(version, 0, 32, &[0x5a; 3000], &[], HashKind::Sha256, &[]),
    )
    .unwrap();
    let out = otabridge()
        .args(["image", "inspect", "--json"])
        .arg(&img)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["version"], "2.7.1", "{v}");
    assert_eq!(v["hash_ok"], true, "{v}");
    // Not an image: exit 1 and why.
    std::fs::write(&img, [0u8; 64]).unwrap();
    let out = otabridge()
        .args(["image", "inspect"])
        .arg(&img)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not an MCUboot image"), "{err}");
}

/// The build the Debian package ships links no simulator: no MQTT broker,
/// no certificate generator; the default build does (so this test can
/// fail).
#[test]
fn the_packaged_build_links_no_simulator() {
    let tree = |args: &[&str]| {
        let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args([
                "tree",
                "-p",
                "otabridge",
                "-e",
                "normal",
                "--prefix",
                "none",
            ])
            .args(args)
            .current_dir(manifest_dir())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let has = |tree: &str, krate: &str| tree.lines().any(|l| l.starts_with(&format!("{krate} v")));
    let default = tree(&[]);
    assert!(
        has(&default, "rumqttd") && has(&default, "rcgen"),
        "{default}"
    );
    let packaged = tree(&["--no-default-features"]);
    for krate in ["rumqttd", "rcgen"] {
        assert!(
            !has(&packaged, krate),
            "{krate} in the packaged build:\n{packaged}"
        );
    }
}
