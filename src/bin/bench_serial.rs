//! Serial (SMP) benchmarks for BENCHMARKS.md:
//!
//! (a) wire efficiency: image bytes / bytes the gateway wrote on the line,
//!     for device buffers of 384, 512 and 2048 bytes, against the best any
//!     SMP serial client can do, set by base64 (3 bytes in 4 characters)
//!     and line framing (127-byte lines: 2 marker bytes, 124 characters,
//!     newline), i.e. 93/127;
//! (b) 256 KiB to a simulated child paced at 115200 baud 8N1 (11520 B/s
//!     each way): the time against the line-rate lower bound, the bytes
//!     the gateway wrote divided by 11520 B/s (and, since SMP waits for
//!     each answer, the bytes both ways divided by 11520 B/s).
//!
//! `cargo run --release --bin bench_serial [-- --quick]` (`--quick` skips (b)).

use std::time::{Duration, Instant};

use anyhow::Context;
use otabridge::child::serial::{DeliveryReport, SerialChild};
use otabridge::child::Package;
use otabridge::config::SerialOptions;
use otabridge::sim::smp_child::{mcuboot_image, Faults, SmpChild, SmpChildOptions};
use otabridge_codecs::smp::message::UploadRequest;
use otabridge_codecs::smp::serial::{MAX_LINE, PACKET_OVERHEAD};
use otabridge_codecs::smp::sim::{ImageVersion, SimConfig};
use otabridge_codecs::smp::HEADER_LEN;
use sha2::{Digest, Sha256};

const IMAGE: usize = 256 * 1024;
const BUF_SIZES: [u64; 3] = [384, 512, 2048];
const BAUD: u32 = 115_200;

/// The base64 and line-framing bound: 93 image bytes per 127-byte line.
fn best_possible() -> f64 {
    let chars = ((MAX_LINE - 3) / 4) * 4;
    (chars / 4 * 3) as f64 / MAX_LINE as f64
}

/// Bytes on the wire for a packet of `p` bytes (length, message, CRC).
fn wire_len(p: usize) -> usize {
    let chars = p.div_ceil(3) * 4;
    let per_line = ((MAX_LINE - 3) / 4) * 4;
    chars + chars.div_ceil(per_line) * 3
}

/// The best a client can do with a device buffer of `buf_size`: besides
/// base64 and lines, every packet carries the length field, CRC, the SMP
/// header and the smallest upload body `{off, data}`; the packet size is
/// chosen to waste the least of its last line.
fn best_for(buf_size: usize) -> f64 {
    let data = vec![0u8; buf_size];
    (16..=buf_size)
        .filter_map(|p| {
            let fits = |d: usize| {
                let body = UploadRequest {
                    image: None,
                    len: None,
                    off: 1000,
                    sha: None,
                    data: &data[..d],
                    upgrade: None,
                };
                body.encoded_len() + HEADER_LEN + PACKET_OVERHEAD <= p
            };
            let d = (0..p).rev().find(|&d| fits(d))?;
            Some(d as f64 / wire_len(p) as f64)
        })
        .fold(0.0, f64::max)
}

async fn run(
    dir: &std::path::Path,
    buf_size: u64,
    pace: Option<u32>,
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
    let child = SerialChild::new("bench", sim.path(), BAUD, SerialOptions::default());
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
    // Packages live in a scratch directory removed at the end.
    let dir = std::env::temp_dir().join(format!("otabridge-bench-serial-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let r = benches(&dir, quick).await;
    let _ = std::fs::remove_dir_all(&dir);
    r
}

async fn benches(dir: &std::path::Path, quick: bool) -> anyhow::Result<()> {
    let best = best_possible();
    println!("# Serial (SMP): {IMAGE} B image, lines of {MAX_LINE} B");
    println!();
    println!("## (a) wire efficiency (unpaced pty)");
    println!(
        "| buf_size | image B | written B | efficiency | best possible (base64+lines) | ratio \
         | best at this buf_size | ratio |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    for b in BUF_SIZES {
        let (r, _, _) = run(dir, b, None).await?;
        anyhow::ensure!(r.buf_size as u64 == b, "chunks sized for {}", r.buf_size);
        let eff = IMAGE as f64 / r.line.written as f64;
        let here = best_for(r.buf_size);
        println!(
            "| {b} | {IMAGE} | {} | {eff:.4} | {best:.4} | {:.3} | {here:.4} | {:.3} |",
            r.line.written,
            eff / best,
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
        "| buf_size | written B | answers B | time s | bound: written s | ratio \
         | bound: written + answers s | ratio |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    for b in BUF_SIZES {
        let (r, took, answers) = run(dir, b, Some(BAUD)).await?;
        // SMP is lock-step (one request in flight): the answers cannot
        // overlap the requests, so the second bound is what any such
        // client can reach; the first is the line's raw rate.
        let bound = r.line.written as f64 / rate;
        let lockstep = (r.line.written + answers) as f64 / rate;
        let t = took.as_secs_f64();
        println!(
            "| {b} | {} | {answers} | {t:.2} | {bound:.2} | {:.3} | {lockstep:.2} | {:.3} |",
            r.line.written,
            t / bound,
            t / lockstep
        );
    }
    Ok(())
}
