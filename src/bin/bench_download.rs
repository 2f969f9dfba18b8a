//! Package download benchmark (not a test: it prints figures for
//! `BENCHMARKS.md`, "Package download").
//!
//! ```text
//! cargo build --release --bins
//! target/release/bench_download [--throughput-mib 256] [--rss-mib 64,1024] [--runs 3]
//! ```
//!
//! - Throughput: the simulated HTTPS package server (in this process, on
//!   loopback) serves a package; `otabridge download` (the real binary, a
//!   child process) and `curl` fetch it alternately, `--runs` times each. The
//!   wall time of each whole command is measured; the best run of each is
//!   compared.
//! - Peak RSS: `otabridge download` of each `--rss-mib` size, measured as the
//!   child's `ru_maxrss` (getrusage of children, read in a wrapper process
//!   of this binary so that no other child counts).

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use otabridge::sim::package_server::{Access, PackageServer, Served, Source};

const MIB: u64 = 1024 * 1024;

#[derive(Debug, Clone)]
struct Setup {
    dir: PathBuf,
    cfg: PathBuf,
    ca: PathBuf,
    otabridge: PathBuf,
    token: String,
}

fn otabridge_cmd(s: &Setup, p: &Served) -> Command {
    let mut c = Command::new(&s.otabridge);
    c.arg("download")
        .arg("--config")
        .arg(&s.cfg)
        .arg(&p.url)
        .args([
            "--token",
            &s.token,
            "--sha256",
            &p.sha256,
            "--size",
            &p.size.to_string(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    c
}

fn curl_cmd(s: &Setup, p: &Served, out: &Path) -> Command {
    let mut c = Command::new("curl");
    c.args([
        "--silent",
        "--show-error",
        "--fail",
        "--http1.1",
        "--cacert",
    ])
    .arg(&s.ca)
    .args(["-H", &format!("Authorization: Bearer {}", s.token), "-o"])
    .arg(out)
    .arg(&p.url)
    .stdout(Stdio::null());
    c
}

fn timed(mut c: Command) -> Result<Duration> {
    let t = Instant::now();
    let st = c.status().with_context(|| format!("running {c:?}"))?;
    let d = t.elapsed();
    if !st.success() {
        bail!("{c:?} failed: {st}");
    }
    Ok(d)
}

/// Runs a command as this process's only child and prints its peak RSS (KiB).
fn measure_child(args: &[String]) -> ExitCode {
    let Some((prog, rest)) = args.split_first() else {
        return ExitCode::from(2);
    };
    let st = match Command::new(prog).args(rest).stdout(Stdio::null()).status() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{prog}: {e}");
            return ExitCode::from(1);
        }
    };
    let usage = match nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN) {
        Ok(u) => u,
        Err(e) => {
            eprintln!("getrusage: {e}");
            return ExitCode::from(1);
        }
    };
    println!("{}", usage.max_rss());
    if st.success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn peak_rss_kib(s: &Setup, p: &Served) -> Result<u64> {
    let inner = otabridge_cmd(s, p);
    let me = std::env::current_exe()?;
    let mut c = Command::new(me);
    c.arg("--measure-child")
        .arg(inner.get_program())
        .args(inner.get_args());
    let out = c.output()?;
    if !out.status.success() {
        bail!(
            "measured download failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().parse()?)
}

fn mibps(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / MIB as f64 / d.as_secs_f64()
}

async fn bench(throughput_mib: u64, rss_mib: Vec<u64>, runs: usize) -> Result<()> {
    let exe = std::env::current_exe()?;
    let otabridge = exe.with_file_name("otabridge");
    if !otabridge.exists() {
        bail!(
            "{} not found: build with `cargo build --release --bins`",
            otabridge.display()
        );
    }
    let dir = std::env::temp_dir().join(format!("otabridge-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let server = PackageServer::start(&["127.0.0.1"]).await?;
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, server.ca_pem())?;
    let cfg = dir.join("otabridge.toml");
    std::fs::write(
        &cfg,
        format!(
            "[platform]\nurl = \"mqtts://127.0.0.1\"\ndevice_id = \"bench_gw\"\nsecret = \"x\"\n\
             [state]\ndir = \"{}\"\n[download]\nca_file = \"{}\"\nmax_package_bytes = {}\n",
            dir.join("state").display(),
            ca.display(),
            4096 * MIB
        ),
    )?;
    let token = server.issue_token(Duration::from_secs(24 * 3600));
    let s = Setup {
        dir,
        cfg,
        ca,
        otabridge,
        token,
    };

    println!(
        "otabridge {} — package download benchmark",
        env!("CARGO_PKG_VERSION")
    );
    println!(
        "host: {} CPUs; server: otabridge::sim::package_server (HTTPS, rustls+ring) on loopback",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    // `add` reads the package once to hash it; nothing is downloading yet.
    let p = server.add(
        "throughput",
        Source::Generated {
            len: throughput_mib * MIB,
            seed: 1,
        },
        Access::Bearer,
    )?;
    let curl_out = s.dir.join("curl.out");
    let (mut ob, mut cu) = (Vec::new(), Vec::new());
    for i in 0..runs {
        // Alternate who goes first, so neither always gets a warm cache.
        let order: [bool; 2] = if i % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        for ours in order {
            let c = if ours {
                otabridge_cmd(&s, &p)
            } else {
                curl_cmd(&s, &p, &curl_out)
            };
            let d = tokio::task::spawn_blocking(move || timed(c)).await??;
            let _ = std::fs::remove_file(&curl_out);
            println!(
                "  run {}: {:9} {:7.1} MiB/s ({:.2} s)",
                i + 1,
                if ours { "otabridge" } else { "curl" },
                mibps(p.size, d),
                d.as_secs_f64()
            );
            if ours {
                ob.push(d)
            } else {
                cu.push(d)
            }
        }
    }
    let best = |v: &[Duration]| *v.iter().min().expect("runs >= 1");
    let (o, c) = (mibps(p.size, best(&ob)), mibps(p.size, best(&cu)));
    println!("throughput, {throughput_mib} MiB, best of {runs}:");
    println!("  otabridge download: {o:.1} MiB/s");
    println!("  curl:               {c:.1} MiB/s");
    println!("  ratio otabridge/curl: {:.2}", o / c);

    println!("peak RSS of `otabridge download` (ru_maxrss):");
    for mib in rss_mib {
        let src = Source::Generated {
            len: mib * MIB,
            seed: mib,
        };
        let pkg = server.add(&format!("rss{mib}"), src, Access::Bearer)?;
        let kib = tokio::task::spawn_blocking({
            let s2 = s.clone();
            move || peak_rss_kib(&s2, &pkg)
        })
        .await??;
        println!("  {mib:5} MiB package: {:.1} MiB", kib as f64 / 1024.0);
    }
    let _ = std::fs::remove_dir_all(&s.dir);
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--measure-child") {
        return measure_child(&args[1..]);
    }
    let mut throughput_mib = 256;
    let mut rss_mib = vec![64, 1024];
    let mut runs = 3;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let v = it.next();
        let parsed = match (a.as_str(), v) {
            ("--throughput-mib", Some(v)) => v.parse().map(|n| throughput_mib = n).is_ok(),
            ("--runs", Some(v)) => v.parse().map(|n| runs = n).is_ok() && runs > 0,
            ("--rss-mib", Some(v)) => v
                .split(',')
                .map(str::parse)
                .collect::<Result<Vec<u64>, _>>()
                .map(|v| rss_mib = v)
                .is_ok(),
            _ => false,
        };
        if !parsed {
            eprintln!("usage: bench_download [--throughput-mib N] [--rss-mib A,B] [--runs N]");
            return ExitCode::from(2);
        }
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(bench(throughput_mib, rss_mib, runs)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench_download: {e:#}");
            ExitCode::from(1)
        }
    }
}
