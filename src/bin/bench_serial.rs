//! Serial (SMP) benchmarks for BENCHMARKS.md:
//!
//! (a) wire efficiency: image bytes / bytes the gateway wrote on the line,
//!     for device buffers of 384, 512 and 2048 bytes, against two bounds:
//!     - "flat": base64 (3 bytes in 4 characters) and line framing alone
//!       (127-byte lines: 2 marker bytes, 124 characters, newline), 93/127;
//!       no SMP client reaches it, since every packet also carries an
//!       envelope;
//!     - "best at this buf_size": image bytes / the fewest bytes any SMP
//!       serial client can write to deliver this image to a device with
//!       this buffer: every packet is at most buf_size (message at most
//!       buf_size - 4) and carries the mandatory envelope (length field,
//!       CRC, 8-byte header, the CBOR map `{off, data}` with minimal-width
//!       integers, and `len` in the off-0 chunk, which also holds at least
//!       32 bytes), in base64 lines of 127 bytes; the chunk boundaries are
//!       chosen optimally (dynamic programming over every offset);
//! (b) 256 KiB to a simulated child paced at 115200 baud 8N1 (11520 B/s
//!     each way): the time against the line-rate lower bound, the bytes
//!     the gateway wrote divided by 11520 B/s, lock-step (window 1) and
//!     with the default window, in one run;
//! (c) with `--noise` (only): the cost of a noisy line (`sim::serial_noise`
//!     between the driver and the child's pty: bit errors at 1e-5, 1e-4 and
//!     1e-3, lost and doubled lines, console text) to an SMP and a
//!     framed-profile child, unpaced: bytes written and time against a clean
//!     line in the same run, every image checked byte for byte.
//!
//! `cargo run --release --bin bench_serial [-- --quick | --noise]`
//! (`--quick` skips (b); `--noise` runs (c) alone).

use std::time::{Duration, Instant};

use anyhow::Context;
use otabridge::child::framed::FramedChild;
use otabridge::child::serial::{DeliveryReport, SerialChild};
use otabridge::child::{Child, Package};
use otabridge::config::{Framing, SerialOptions, DEFAULT_WINDOW};
use otabridge::sim::framed_child::{FramedChildOptions, FramedChildSim};
use otabridge::sim::serial_noise::{LineStats, NoiseSpec, NoisyLine};
use otabridge::sim::smp_child::{mcuboot_image, Faults, SmpChild, SmpChildOptions};
use otabridge_codecs::smp::serial::{wire_len, MAX_LINE, PACKET_OVERHEAD};
use otabridge_codecs::smp::sim::{ImageVersion, SimConfig};
use otabridge_codecs::smp::HEADER_LEN;
use sha2::{Digest, Sha256};

const IMAGE: usize = 256 * 1024;
const BUF_SIZES: [u64; 3] = [384, 512, 2048];
const BAUD: u32 = 115_200;

/// The base64 and line-framing bound: 93 image bytes per 127-byte line.
fn flat_bound() -> f64 {
    let chars = ((MAX_LINE - 3) / 4) * 4;
    (chars / 4 * 3) as f64 / MAX_LINE as f64
}

/// CBOR head length of an unsigned integer (RFC 8949 §3).
fn uint_len(v: u64) -> usize {
    match v {
        0..=23 => 1,
        24..=0xff => 2,
        0x100..=0xffff => 3,
        0x1_0000..=0xffff_ffff => 5,
        _ => 9,
    }
}

/// The fewest bytes a client can write to deliver `len` image bytes to a
/// device with `buf_size`: `best[o]` is the cheapest way to send bytes
/// `o..len`, each chunk a packet of at most `buf_size` bytes carrying the
/// mandatory envelope (see the module doc).
fn fewest_bytes(len: usize, buf_size: usize) -> u64 {
    let max_msg = buf_size - PACKET_OVERHEAD;
    let wire: Vec<u64> = (0..=max_msg)
        .map(|m| wire_len(m, MAX_LINE) as u64)
        .collect();
    let mut best = vec![u64::MAX; len + 1];
    best[len] = 0;
    for o in (0..len).rev() {
        // Header, map head, "off" and its value, "data" key; at off 0 also
        // "len" and its value.
        let mut base = HEADER_LEN + 1 + 4 + uint_len(o as u64) + 5;
        if o == 0 {
            base += 4 + uint_len(len as u64);
        }
        let min_d = if o == 0 { 32.min(len) } else { 1 };
        for d in min_d..=len - o {
            let msg = base + uint_len(d as u64) + d;
            if msg > max_msg {
                break;
            }
            let c = wire[msg].saturating_add(best[o + d]);
            if c < best[o] {
                best[o] = c;
            }
        }
    }
    best[0]
}

async fn run(
    dir: &std::path::Path,
    buf_size: u64,
    pace: Option<u32>,
    window: usize,
) -> anyhow::Result<(DeliveryReport, Duration, u64)> {
    let faults = Faults {
        pace_baud: pace,
        ..Faults::default()
    };
    let sim = SmpChild::spawn(SmpChildOptions {
        device: SimConfig {
            buf_size,
            ..SmpChildOptions::default().device
        },
        faults,
        seed: 1,
    })?;
    let v = ImageVersion {
        major: 2,
        minor: 0,
        revision: 0,
        build: 0,
    };
    let img = mcuboot_image(v, IMAGE, buf_size);
    let path = dir.join(format!("fw-{buf_size}"));
    std::fs::write(&path, &img)?;
    let pkg = Package {
        path,
        size: img.len() as u64,
        sha256: hex::encode(Sha256::digest(&img)),
        version: "2.0.0".into(),
    };
    let options = SerialOptions {
        window,
        ..SerialOptions::default()
    };
    let child = SerialChild::new("bench", sim.path(), BAUD, options);
    let t = Instant::now();
    let report = child
        .deliver_with_report(&pkg, 0, &|_| {})
        .await
        .context("delivery")?;
    let took = t.elapsed();
    anyhow::ensure!(sim.flash() == img, "the device does not hold the image");
    Ok((report, took, sim.stats().tx_bytes))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    let noise = std::env::args().any(|a| a == "--noise");
    // Packages live in a scratch directory removed at the end.
    let dir = std::env::temp_dir().join(format!("otabridge-bench-serial-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let r = if noise {
        noise_benches(&dir).await
    } else {
        benches(&dir, quick).await
    };
    let _ = std::fs::remove_dir_all(&dir);
    r
}

async fn benches(dir: &std::path::Path, quick: bool) -> anyhow::Result<()> {
    let flat = flat_bound();
    println!(
        "# Serial (SMP): {IMAGE} B image, lines of {MAX_LINE} B, default window {DEFAULT_WINDOW}"
    );
    println!();
    println!("## (a) wire efficiency (unpaced pty, default window)");
    println!(
        "| buf_size | image B | written B | efficiency | flat bound (base64+lines) | ratio \
         | best at this buf_size: fewest B | bound | ratio |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for b in BUF_SIZES {
        let (r, _, _) = run(dir, b, None, DEFAULT_WINDOW).await?;
        anyhow::ensure!(r.buf_size as u64 == b, "chunks sized for {}", r.buf_size);
        let eff = IMAGE as f64 / r.line.written as f64;
        let fewest = fewest_bytes(IMAGE, r.buf_size);
        let here = IMAGE as f64 / fewest as f64;
        println!(
            "| {b} | {IMAGE} | {} | {eff:.4} | {flat:.4} | {:.3} | {fewest} | {here:.4} | {:.4} |",
            r.line.written,
            eff / flat,
            eff / here
        );
    }
    if quick {
        return Ok(());
    }
    let rate = f64::from(BAUD) / 10.0;
    println!();
    println!("## (b) paced at {BAUD} baud 8N1 ({rate} B/s each way)");
    println!(
        "| buf_size | window | written B | answers B | time s | bound: written / rate s | ratio \
         | resent | fell back at |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for b in BUF_SIZES {
        for window in [1, DEFAULT_WINDOW] {
            let (r, took, answers) = run(dir, b, Some(BAUD), window).await?;
            let bound = r.line.written as f64 / rate;
            let t = took.as_secs_f64();
            let fell = r
                .fallback_at
                .map_or_else(|| "-".to_owned(), |o| o.to_string());
            println!(
                "| {b} | {window} | {} | {answers} | {t:.2} | {bound:.2} | {:.3} | {} | {fell} |",
                r.line.written,
                t / bound,
                r.line.resent
            );
        }
    }
    Ok(())
}

/// The image of the noise runs: big enough for every kind of damage to
/// happen many times, small enough for 1e-3 to finish in minutes.
const NOISY_IMAGE: usize = 16 * 1024;

/// The lines of (c): a clean one, bit errors alone, and everything at once.
const NOISE: [&str; 5] = [
    "",
    "ber=1e-5",
    "ber=1e-4",
    "ber=1e-3",
    "ber=1e-4,drop=0.01,dup=0.01,console=0.05",
];

/// One delivery through a noisy line: bytes the driver wrote, requests
/// sent again, time, what the noise did; an error when the delivery failed
/// or the child does not hold the image byte for byte.
struct Noisy {
    written: u64,
    resent: u64,
    took: Duration,
    line: LineStats,
}

async fn smp_noisy(dir: &std::path::Path, spec: NoiseSpec, buf_size: u64) -> anyhow::Result<Noisy> {
    let sim = SmpChild::spawn(SmpChildOptions::default())?;
    let line = NoisyLine::spawn(sim.path(), spec, 11)?;
    let v = ImageVersion {
        major: 2,
        minor: 0,
        revision: 0,
        build: 0,
    };
    let img = mcuboot_image(v, NOISY_IMAGE, 11);
    let pkg = package(dir, &format!("noisy-smp-{buf_size}"), &img)?;
    // A lost frame costs a timeout: short ones (an unpaced pty answers in
    // milliseconds), and retries enough for 1e-3.
    let options = SerialOptions {
        timeout: Duration::from_millis(150),
        first_timeout: Duration::from_secs(2),
        retries: 60,
        buf_size: Some(buf_size as usize),
        ..SerialOptions::default()
    };
    let child = SerialChild::new("bench", line.path(), BAUD, options);
    let t = Instant::now();
    let report = child.deliver_with_report(&pkg, 0, &|_| {}).await?;
    let took = t.elapsed();
    anyhow::ensure!(sim.flash() == img, "the device does not hold the image");
    Ok(Noisy {
        written: report.line.written,
        resent: report.line.resent,
        took,
        line: line.stats(),
    })
}

/// `retries`: every command's `retries` in the profile set to this, as an
/// integrator would for a line this bad (the built-in has 2 to 5).
async fn framed_noisy(
    dir: &std::path::Path,
    spec: NoiseSpec,
    retries: Option<u32>,
) -> anyhow::Result<Noisy> {
    use otabridge_codecs::framed::profile::{builtin_text, Profile};
    let mut text = builtin_text("acme-rs485").context("acme-rs485")?.to_owned();
    if let Some(n) = retries {
        text = text
            .lines()
            .map(|l| match l.trim_start().starts_with("retries = ") {
                true => format!("retries = {n}"),
                false => l.to_owned(),
            })
            .collect::<Vec<_>>()
            .join("\n");
    }
    let p = std::sync::Arc::new(Profile::parse(&text, "acme-rs485")?);
    let sim = FramedChildSim::spawn(FramedChildOptions::new(p.clone(), "1.0.0"))?;
    let line = NoisyLine::spawn(sim.path(), spec, 12)?;
    let mut img = vec![0u8; NOISY_IMAGE];
    otabridge_codecs::rng::Rng::new(12).fill(&mut img);
    let pkg = package(dir, "noisy-framed", &img)?;
    let child = FramedChild::new("bench", line.path(), BAUD, Framing::EIGHT_N_ONE, p);
    let t = Instant::now();
    child.deliver(&pkg, 0, &|_| {}).await?;
    let took = t.elapsed();
    let got = sim.inspect(|s| s.device().received().map(<[u8]>::to_vec));
    anyhow::ensure!(
        got.as_deref() == Some(&img[..]),
        "the child does not hold the image"
    );
    Ok(Noisy {
        // The framed driver keeps no line count: the bytes the noise took in.
        written: line.stats().to_child.bytes,
        resent: child.chunk_retries(),
        took,
        line: line.stats(),
    })
}

fn package(dir: &std::path::Path, name: &str, img: &[u8]) -> anyhow::Result<Package> {
    let path = dir.join(name);
    std::fs::write(&path, img)?;
    Ok(Package {
        path,
        size: img.len() as u64,
        sha256: hex::encode(Sha256::digest(img)),
        version: "2.0.0".into(),
    })
}

async fn noise_benches(dir: &std::path::Path) -> anyhow::Result<()> {
    println!(
        "# Serial noise: {NOISY_IMAGE} B image, unpaced pty, noisy line between driver and child"
    );
    println!();
    println!(
        "| child | noise | result | written B | vs clean | resent | time s | vs clean \
         | bits flipped | lines lost | lines doubled | console lines |"
    );
    println!("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    // (name, SMP buffer size, framed retries): the SMP rows are SMP.
    let children: [(&str, Option<u64>, Option<u32>); 4] = [
        ("smp buf 384", Some(384), None),
        ("smp buf 128", Some(128), None),
        ("framed acme-rs485", None, None),
        ("framed acme-rs485 retries 30", None, Some(30)),
    ];
    for (name, buf, retries) in children {
        let mut clean: Option<(u64, f64)> = None;
        for text in NOISE {
            let spec: NoiseSpec = text.parse()?;
            let r = match buf {
                Some(b) => smp_noisy(dir, spec, b).await,
                None => framed_noisy(dir, spec, retries).await,
            };
            let noise = if text.is_empty() { "clean" } else { text };
            match r {
                Ok(n) => {
                    let t = n.took.as_secs_f64();
                    let (w0, t0) = *clean.get_or_insert((n.written, t));
                    let (d, u) = (n.line.to_child, n.line.to_driver);
                    println!(
                        "| {name} | {noise} | ok, byte-exact | {} | {:.3} | {} | {t:.2} | {:.2} \
                         | {} | {} | {} | {} |",
                        n.written,
                        n.written as f64 / w0 as f64,
                        n.resent,
                        t / t0,
                        d.flipped_bits + u.flipped_bits,
                        d.dropped + u.dropped,
                        d.duplicated + u.duplicated,
                        u.console_lines
                    );
                }
                Err(e) => println!("| {name} | {noise} | failed: {e:#} | | | | | | | | | |"),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bound on small cases worked by hand: 100 bytes at buf_size 384
    /// fit one packet: header 8 + map 1 + "len" 4 + 100 (2) + "off" 4 + 0
    /// (1) + "data" 5 + head 2 + 100 = 127-byte message, 131-byte packet,
    /// 176 base64 characters in 2 lines (124 + 52), 182 bytes.
    #[test]
    fn fewest_bytes_by_hand() {
        assert_eq!(fewest_bytes(100, 384), 182);
        assert_eq!(wire_len(127, MAX_LINE), 182);
        // Never more than the engine's own choice, never below the flat bound.
        let f = fewest_bytes(20_000, 384);
        assert!((20_000.0 / f as f64) < flat_bound());
    }
}
