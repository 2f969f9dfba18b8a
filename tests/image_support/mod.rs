//! Images made the way vendors make them: MCUboot's own `imgtool` (from the
//! Python package registry; `.ci/run` installs it) generates keys and signs
//! images. Without it the tests that need it say so and pass, unless
//! `OTABRIDGE_REQUIRE_INTEROP=1` (CI), where its absence is a failure.

#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use otabridge::image::{keys, PublicKey};

/// Whether imgtool runs here; panics under `OTABRIDGE_REQUIRE_INTEROP=1`
/// when it does not.
pub fn imgtool_available(test: &str) -> bool {
    let ok = Command::new("imgtool")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var("OTABRIDGE_REQUIRE_INTEROP").as_deref() != Ok("1"),
            "{test}: imgtool is required (pip install imgtool)"
        );
        eprintln!("{test}: skipped: imgtool is not installed (pip install imgtool)");
    }
    ok
}

/// Runs imgtool; panics with its output when it fails.
pub fn imgtool(args: &[&str]) {
    let out = Command::new("imgtool").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "imgtool {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A key pair made by `imgtool keygen -t kind`: `(private, public)` PEM files.
pub fn keygen(dir: &Path, name: &str, kind: &str) -> (PathBuf, PathBuf) {
    let private = dir.join(format!("{name}.pem"));
    let public = dir.join(format!("{name}.pub.pem"));
    imgtool(&["keygen", "-k", s(&private), "-t", kind]);
    imgtool(&["getpub", "-k", s(&private), "-e", "pem", "-o", s(&public)]);
    (private, public)
}

/// The public key, as the gateway reads it from the configuration.
pub fn public(path: &Path) -> Arc<PublicKey> {
    Arc::new(keys::load(path).unwrap())
}

/// A deterministic application binary of `len` bytes.
pub fn app(dir: &Path, name: &str, len: usize, seed: u8) -> PathBuf {
    let p = dir.join(format!("{name}.app.bin"));
    let body: Vec<u8> = (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 8) as u8)
        .collect();
    std::fs::write(&p, body).unwrap();
    p
}

/// `imgtool sign` of `input` into `name.bin` with a 0x200 header, a 128 KiB
/// slot and security counter 5 (a protected TLV); `key` none: unsigned.
pub fn sign(
    dir: &Path,
    name: &str,
    input: &Path,
    key: Option<&Path>,
    version: &str,
    extra: &[&str],
) -> PathBuf {
    let out = dir.join(format!("{name}.bin"));
    let mut args = vec![
        "sign",
        "--header-size",
        "0x200",
        "--pad-header",
        "--slot-size",
        "0x20000",
        "--version",
        version,
        "--security-counter",
        "5",
    ];
    if let Some(k) = key {
        args.extend(["--key", s(k)]);
    }
    args.extend_from_slice(extra);
    args.extend([s(input), s(&out)]);
    imgtool(&args);
    out
}
