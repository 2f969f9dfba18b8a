//! The daemon's footprint on the box (not a test: it prints figures for
//! `BENCHMARKS.md`, "Footprint"; issue 18).
//!
//! ```text
//! cargo build --release --bins
//! target/release/bench_footprint [--runs 5] [--idle-s 10] [--otabridge PATH]
//! ```
//!
//! Starts the simulated IoTDA of `otabridge sim iotda` in this process (the
//! in-process rumqttd broker behind the TLS edge that checks IoTDA's
//! credentials, `otabridge::sim::testbed`), then, `--runs` times, the real
//! `otabridge run` (the binary next to this one, or `--otabridge PATH`: the
//! Debian package's build without the simulators) with a configuration that
//! names no child, as a child process, and prints:
//!
//! - the start-up time to "connected": from the spawn to the daemon's log
//!   line `connected to the platform` (TLS handshake and CONNACK included);
//! - after `--idle-s` seconds idle: VmRSS (with RssAnon, RssFile), VmHWM
//!   and the thread count from `/proc/PID/status`, and the proportional set
//!   size (Pss, `/proc/PID/smaps_rollup`: shared pages such as libc's count
//!   divided by the number of processes mapping them);
//! - for the last run, where the resident pages are: Rss and Pss per mapped
//!   file and segment (`/proc/PID/smaps`), and the daemon's anonymous memory;
//! - the size of the binary.
//!
//! The daemon's environment is this process's: run it as
//! `MALLOC_ARENA_MAX=2 bench_footprint` to see what the systemd unit's
//! setting does (packaging/otabridge.service).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use otabridge::sim::testbed::{config_text, Testbed};

#[derive(Debug)]
struct Opts {
    runs: usize,
    idle: Duration,
    otabridge: Option<PathBuf>,
}

fn parse(args: &[String]) -> Option<Opts> {
    let mut o = Opts {
        runs: 5,
        idle: Duration::from_secs(10),
        otabridge: None,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let v = it.next()?;
        match a.as_str() {
            "--runs" => o.runs = v.parse().ok().filter(|n| *n > 0)?,
            "--idle-s" => o.idle = Duration::from_secs(v.parse().ok()?),
            "--otabridge" => o.otabridge = Some(PathBuf::from(v)),
            _ => return None,
        }
    }
    Some(o)
}

/// One `/proc/PID/status` reading, in KiB (threads as a count).
#[derive(Debug, Default, Clone, Copy)]
struct Mem {
    rss: u64,
    anon: u64,
    file: u64,
    hwm: u64,
    threads: u64,
    pss: u64,
}

fn proc_status(pid: u32) -> Result<Mem> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let mut m = Mem::default();
    for line in text.lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let n = || {
            v.split_whitespace()
                .next()
                .and_then(|x| x.parse().ok())
                .unwrap_or(0)
        };
        match k {
            "VmRSS" => m.rss = n(),
            "RssAnon" => m.anon = n(),
            "RssFile" => m.file = n(),
            "VmHWM" => m.hwm = n(),
            "Threads" => m.threads = n(),
            _ => {}
        }
    }
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))?;
    m.pss = field_kib(&rollup, "Pss").unwrap_or(0);
    Ok(m)
}

/// The first `NAME:  N kB` line's N.
fn field_kib(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k == name).then(|| v.split_whitespace().next()?.parse().ok())?
    })
}

/// Rss and Pss (KiB) per mapping of `/proc/PID/smaps`, grouped by file
/// name and permissions ("[anon]" for the heap, stacks and anonymous
/// mappings together), largest first.
fn smaps(pid: u32) -> Result<Map> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps"))?;
    let mut groups: Vec<(String, u64, u64)> = Vec::new();
    let mut current: Option<usize> = None;
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let first = words.next().unwrap_or("");
        // A mapping's header: `start-end perms offset dev inode [path]`.
        if first.contains('-') && !first.ends_with(':') {
            let perms = words.next().unwrap_or("");
            let path = words.nth(3).unwrap_or("");
            let name = match path {
                "" | "[heap]" | "[stack]" => "[anon]".to_string(),
                p if p.starts_with('[') => p.to_string(),
                p => format!(
                    "{} {perms}",
                    Path::new(p)
                        .file_name()
                        .map_or(p.into(), |f| f.to_string_lossy())
                ),
            };
            let i = match groups.iter().position(|g| g.0 == name) {
                Some(i) => i,
                None => {
                    groups.push((name, 0, 0));
                    groups.len() - 1
                }
            };
            current = Some(i);
            continue;
        }
        let (Some(i), Some(v)) = (current, words.next().and_then(|v| v.parse::<u64>().ok())) else {
            continue;
        };
        match first {
            "Rss:" => groups[i].1 += v,
            "Pss:" => groups[i].2 += v,
            _ => {}
        }
    }
    groups.retain(|g| g.1 > 0);
    groups.sort_by_key(|g| std::cmp::Reverse(g.1));
    Ok(groups)
}

/// Kills the daemon however the run ends.
struct Daemon(std::process::Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Resident KiB per mapping: (file and permissions, Rss, Pss).
type Map = Vec<(String, u64, u64)>;

/// One start: the time to "connected", the memory after the idle wait and
/// (with `map`) where it is.
fn one(bin: &Path, config: &Path, idle: Duration, map: bool) -> Result<(Duration, Mem, Map)> {
    let t0 = Instant::now();
    let mut d = Daemon(
        Command::new(bin)
            .args(["run", "--config"])
            .arg(config)
            .env("RUST_LOG", "info,rumqttc=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?,
    );
    let stderr = d.0.stderr.take().context("stderr")?;
    let (tx, rx) = mpsc::channel();
    // Reads the log to its end (so the daemon never blocks on a full pipe).
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if !sent && line.contains("connected to the platform") {
                let _ = tx.send(t0.elapsed());
                sent = true;
            }
        }
    });
    let connected = rx
        .recv_timeout(Duration::from_secs(60))
        .context("no `connected to the platform` within 60 s")?;
    std::thread::sleep(idle);
    let m = proc_status(d.0.id())?;
    let groups = if map { smaps(d.0.id())? } else { Vec::new() };
    Ok((connected, m, groups))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

async fn bench(o: Opts) -> Result<()> {
    let bin = match o.otabridge {
        Some(p) => p,
        None => std::env::current_exe()?.with_file_name("otabridge"),
    };
    if !bin.exists() {
        bail!(
            "{} not found: `cargo build --release --bins`",
            bin.display()
        );
    }
    let dir = std::env::temp_dir().join(format!("otabridge-footprint-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let tb = Testbed::new(&dir).await?;
    let config = dir.join("gw.toml");
    std::fs::write(
        &config,
        config_text(tb.edge.addr().port(), &tb.ca_file, &tb.state_dir, ""),
    )?;
    let size = std::fs::metadata(&bin)?.len();
    println!(
        "otabridge {} footprint: {} ({size} bytes as built), no children, idle {} s, \
         MALLOC_ARENA_MAX={}",
        env!("CARGO_PKG_VERSION"),
        bin.display(),
        o.idle.as_secs(),
        std::env::var("MALLOC_ARENA_MAX").unwrap_or_else(|_| "unset".into())
    );
    let mut starts = Vec::new();
    let mut rss = Vec::new();
    let mut pss = Vec::new();
    let mut last = Vec::new();
    for run in 1..=o.runs {
        let (bin, config, idle) = (bin.clone(), config.clone(), o.idle);
        let map = run == o.runs;
        let (t, m, groups) =
            tokio::task::spawn_blocking(move || one(&bin, &config, idle, map)).await??;
        println!(
            "  run {run}: connected after {:6.1} ms; idle VmRSS {:5.1} MiB = {} KiB (anon {:4.1}, file {:4.1}), \
             Pss {:5.1} MiB, VmHWM {:5.1} MiB, {} threads",
            t.as_secs_f64() * 1e3,
            mib(m.rss),
            m.rss,
            mib(m.anon),
            mib(m.file),
            mib(m.pss),
            mib(m.hwm),
            m.threads
        );
        starts.push(t.as_secs_f64() * 1e3);
        rss.push(mib(m.rss));
        pss.push(mib(m.pss));
        last = groups;
    }
    println!("  run {}: resident KiB per mapping (Rss, Pss):", o.runs);
    for (name, r, p) in &last {
        println!("    {r:6} {p:6}  {name}");
    }
    let lo = |v: &[f64]| v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = |v: &[f64]| v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let kib = |v: &[f64]| (median(v.to_vec()) * 1024.0).round();
    println!(
        "  idle VmRSS median {} KiB (goal 8 MiB = 8192 KiB), Pss median {} KiB",
        kib(&rss),
        kib(&pss)
    );
    println!(
        "  median (min-max): connected after {:.1} ms ({:.1}-{:.1}); idle VmRSS {:.1} MiB ({:.1}-{:.1}); \
         Pss {:.1} MiB ({:.1}-{:.1})",
        median(starts.clone()),
        lo(&starts),
        hi(&starts),
        median(rss.clone()),
        lo(&rss),
        hi(&rss),
        median(pss.clone()),
        lo(&pss),
        hi(&pss)
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(o) = parse(&args) else {
        eprintln!("usage: bench_footprint [--runs N] [--idle-s S] [--otabridge PATH]");
        return ExitCode::from(2);
    };
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
    match rt.block_on(bench(o)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench_footprint: {e:#}");
            ExitCode::from(1)
        }
    }
}
