//! Image check benchmark (not a test: it prints figures for
//! `BENCHMARKS.md`, "Image check").
//!
//! ```text
//! cargo build --release --bin bench_image
//! target/release/bench_image [--mib 1,16] [--runs 5]
//! ```
//!
//! For each key type imgtool signs (ecdsa-p256, ed25519, rsa-2048, rsa-3072),
//! MCUboot's `imgtool` (a third-party peer, `pip install imgtool`) makes a
//! key and signs an image of each size. Then, per image, the best of
//! `--runs` of:
//! - otabridge's check (`image::examine`: the streamed hash and the
//!   signature against the public key), in this process;
//! - `sha256sum` of the same file (coreutils), the floor any hash-bound
//!   check sits on;
//! - `imgtool verify` of the same file (Python, cryptography/OpenSSL), once
//!   per image (its interpreter start is part of what a user waits for).
//!
//! Memory: the peak RSS of this process (VmHWM) before and after checking
//! the largest image shows that the image is not held in memory.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use otabridge::image::{examine, keys, SigCheck};

const MIB: usize = 1024 * 1024;
const KEY_TYPES: [&str; 4] = ["ecdsa-p256", "ed25519", "rsa-2048", "rsa-3072"];

fn run(cmd: &mut Command) -> Result<()> {
    let out = cmd.output().with_context(|| format!("{cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

fn best<F: FnMut() -> Result<()>>(runs: usize, mut f: F) -> Result<Duration> {
    let mut best = Duration::MAX;
    for _ in 0..runs.max(1) {
        let t = Instant::now();
        f()?;
        best = best.min(t.elapsed());
    }
    Ok(best)
}

/// Peak resident set of this process in KiB (Linux `VmHWM`).
fn vm_hwm_kib() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn image(dir: &Path, key: &Path, mib: usize) -> Result<PathBuf> {
    let app = dir.join(format!("app-{mib}.bin"));
    if !app.exists() {
        // Written in pieces, so that the image is never in this process's
        // memory (the peak RSS figure depends on it).
        use std::io::Write as _;
        let mut f = std::io::BufWriter::new(std::fs::File::create(&app)?);
        let mut piece = vec![0u8; 64 * 1024];
        for n in 0..mib * 16 {
            for (i, b) in piece.iter_mut().enumerate() {
                *b = (i * 7 + n * 13 + (i >> 9)) as u8;
            }
            f.write_all(&piece)?;
        }
        f.flush()?;
    }
    let stem = key.file_stem().and_then(|s| s.to_str()).unwrap_or("key");
    let out = dir.join(format!("{stem}-{mib}.bin"));
    let slot = format!("{:#x}", mib * MIB + MIB);
    run(Command::new("imgtool")
        .args(["sign", "-H", "0x200", "--pad-header", "-S"])
        .arg(&slot)
        .args(["-v", "1.0.0", "-k"])
        .arg(key)
        .arg(&app)
        .arg(&out)
        .stdout(Stdio::null()))?;
    Ok(out)
}

fn args() -> Result<(Vec<usize>, usize)> {
    let mut sizes = vec![1, 16];
    let mut runs = 5;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let v = it.next().context("a value after each option")?;
        match a.as_str() {
            "--mib" => sizes = v.split(',').map(str::parse).collect::<Result<_, _>>()?,
            "--runs" => runs = v.parse()?,
            other => bail!("unknown option {other}"),
        }
    }
    Ok((sizes, runs))
}

fn bench() -> Result<()> {
    let (sizes, runs) = args()?;
    run(Command::new("imgtool").arg("version").stdout(Stdio::null()))
        .context("imgtool is needed: pip install imgtool")?;
    let dir = std::env::temp_dir().join(format!("bench_image-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let result = measure(&dir, &sizes, runs);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn measure(d: &Path, sizes: &[usize], runs: usize) -> Result<()> {
    println!("| key | image | otabridge check | per MiB | sha256sum | ratio to sha256sum | imgtool verify |");
    println!("|---|---|---|---|---|---|---|");
    let before = vm_hwm_kib();
    let largest = sizes.iter().copied().max().unwrap_or(1);
    for kt in KEY_TYPES {
        let private = d.join(format!("{kt}.pem"));
        let public = d.join(format!("{kt}.pub.pem"));
        run(Command::new("imgtool")
            .args(["keygen", "-t", kt, "-k"])
            .arg(&private))?;
        run(Command::new("imgtool")
            .args(["getpub", "-e", "pem", "-k"])
            .arg(&private)
            .arg("-o")
            .arg(&public))?;
        let key = Arc::new(keys::load(&public)?);
        for &mib in sizes {
            let img = image(d, &private, mib)?;
            let ours = best(runs, || {
                let ex = examine(&img, std::slice::from_ref(&key))?;
                match ex.signature {
                    SigCheck::Verified { .. } => Ok(()),
                    other => bail!("{kt} {mib} MiB: {other:?}"),
                }
            })?;
            let sha = best(runs, || {
                run(Command::new("sha256sum").arg(&img).stdout(Stdio::null()))
            })?;
            let imgtool = best(1, || {
                run(Command::new("imgtool")
                    .args(["verify", "-k"])
                    .arg(&private)
                    .arg(&img)
                    .stdout(Stdio::null()))
            })?;
            let ms = |t: Duration| t.as_secs_f64() * 1000.0;
            println!(
                "| {kt} | {mib} MiB | {:.1} ms | {:.2} ms/MiB | {:.1} ms | {:.2} | {:.0} ms |",
                ms(ours),
                ms(ours) / mib as f64,
                ms(sha),
                ours.as_secs_f64() / sha.as_secs_f64(),
                ms(imgtool),
            );
        }
    }
    if let (Some(b), Some(a)) = (before, vm_hwm_kib()) {
        println!(
            "\npeak RSS (VmHWM) {b} KiB before the checks, {a} KiB after (largest image {largest} MiB = {} KiB)",
            largest * 1024
        );
    }
    Ok(())
}

fn main() -> ExitCode {
    match bench() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench_image: {e:#}");
            ExitCode::FAILURE
        }
    }
}
