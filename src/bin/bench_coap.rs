//! CoAP benchmarks (figures in BENCHMARKS.md, section "CoAP").
//!
//! - `bench_coap push-vs-libcoap`: one 4 MiB image in 1024-byte blocks
//!   over loopback to one `coap-server-notls`; otabridge's Block1 push
//!   against `coap-client-notls -m put -b 1024 -f FILE`, alternating, in
//!   the same run; prints the median of each and the ratio.
//! - `bench_coap fanout`: N simulated LwM2M children (default 500) in a
//!   separate process, each upgraded with a 256 KiB image at once through
//!   the `Child` trait; prints wall time, the gateway process's CPU seconds
//!   per delivered MiB and its peak RSS (VmHWM).
//! - `bench_coap lossy`: one simulated child upgraded by push and by pull
//!   through the gateway's lossy seam (`child::coap::seam`, loss in both
//!   directions at 0 %, 5 % and 20 % by default, seeded); prints the bytes
//!   the gateway sent per image byte, its retransmissions and the wall time.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand, ValueEnum};
use otabridge::child::coap::seam::LinkFaults;
use otabridge::child::coap::{ChildOptions, CoapChild, CoapNetwork, NetworkOptions};
use otabridge::child::{Child, Package};
use otabridge::config::Delivery;
use otabridge::sim::coap_child::{CoapChildSim, SimOptions};
use otabridge_codecs::coap::{msg, Code};
use sha2::{Digest, Sha256};

#[derive(Debug, Parser)]
#[command(name = "bench_coap", about = "otabridge CoAP benchmarks")]
struct Cli {
    #[command(subcommand)]
    which: Which,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Mode {
    Push,
    Pull,
}

#[derive(Debug, Subcommand)]
enum Which {
    /// otabridge's Block1 push vs coap-client's, to one coap-server.
    PushVsLibcoap {
        /// Image size in bytes.
        #[arg(long, default_value_t = 4 * 1024 * 1024)]
        size: usize,
        /// Runs of each (alternating); the median is reported.
        #[arg(long, default_value_t = 3)]
        runs: usize,
    },
    /// Many simulated children upgraded at once.
    Fanout {
        /// Simulated children.
        #[arg(long, default_value_t = 500)]
        children: usize,
        /// Image size in bytes.
        #[arg(long, default_value_t = 256 * 1024)]
        size: usize,
        /// Pull (children fetch Block2) or push (Block1).
        #[arg(long, value_enum, default_value_t = Mode::Push)]
        delivery: Mode,
        /// Pause between polls of /5/0/3 and /3/0/3, in milliseconds.
        #[arg(long, default_value_t = 200)]
        poll_ms: u64,
    },
    /// Push and pull through a lossy link: bytes sent per image byte.
    Lossy {
        /// Image size in bytes.
        #[arg(long, default_value_t = 256 * 1024)]
        size: usize,
        /// Loss rates in percent (each way).
        #[arg(long, value_delimiter = ',', default_values_t = [0.0, 5.0, 20.0])]
        loss: Vec<f64>,
        /// Seeds per rate and delivery (the figures are their mean).
        #[arg(long, default_value_t = 3)]
        seeds: u64,
    },
    /// (internal) hosts the simulated children for `fanout`.
    Sims {
        #[arg(long)]
        children: usize,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.which {
        Which::PushVsLibcoap { size, runs } => rt.block_on(push_vs_libcoap(size, runs)),
        Which::Fanout {
            children,
            size,
            delivery,
            poll_ms,
        } => rt.block_on(fanout(children, size, delivery, poll_ms)),
        Which::Sims { children } => rt.block_on(sims(children)),
        Which::Lossy { size, loss, seeds } => rt.block_on(lossy(size, &loss, seeds)),
    }
}

fn image(dir: &Path, size: usize) -> anyhow::Result<(PathBuf, String)> {
    let data: Vec<u8> = (0..size).map(|i| (i * 131 + i / 4093) as u8).collect();
    let sha = hex::encode(Sha256::digest(&data));
    let path = dir.join(&sha);
    std::fs::write(&path, &data)?;
    Ok((path, sha))
}

/// A scratch directory removed when dropped (tempfile is a dev-dependency).
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> anyhow::Result<Self> {
        let p = std::env::temp_dir().join(format!("otabridge-bench-{}", std::process::id()));
        std::fs::create_dir_all(&p)?;
        Ok(Scratch(p))
    }
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

async fn push_vs_libcoap(size: usize, runs: usize) -> anyhow::Result<()> {
    let dir = Scratch::new()?;
    let (file, _) = image(dir.path(), size)?;
    let port = std::net::UdpSocket::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let _server = Killed(
        Command::new("coap-server-notls")
            .args(["-A", "127.0.0.1", "-p", &port.to_string(), "-d", "20"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("coap-server-notls (apt-get install libcoap3-bin)")?,
    );
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let net = CoapNetwork::bind(NetworkOptions::new("127.0.0.1:0".parse()?, 7))?;
    let mut up = false;
    for _ in 0..50 {
        if net
            .request(addr, msg::request(Code::GET, &[".well-known", "core"]))
            .await
            .is_ok()
        {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if !up {
        bail!("coap-server-notls did not answer on {addr}");
    }
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for run in 0..runs {
        let t = Instant::now();
        let code = net
            .push_file(addr, &[&format!("ota{run}")], &file, 6, 0, &|_| {})
            .await?;
        ours.push(t.elapsed());
        if !code.is_success() {
            bail!("otabridge push ended with {code}");
        }
        let t = Instant::now();
        let st = Command::new("coap-client-notls")
            .args(["-m", "put", "-b", "1024", "-f"])
            .arg(&file)
            .arg(format!("coap://{addr}/lib{run}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()?;
        theirs.push(t.elapsed());
        if !st.success() {
            bail!("coap-client-notls put: {st}");
        }
        println!(
            "run {run}: otabridge {:?}, coap-client {:?}",
            ours[run], theirs[run]
        );
    }
    let (o, c) = (median(ours), median(theirs));
    println!(
        "push {size} bytes, 1024-byte blocks, loopback, median of {runs}: otabridge {:.3} s, \
         coap-client {:.3} s, ratio otabridge/coap-client {:.2}",
        o.as_secs_f64(),
        c.as_secs_f64(),
        o.as_secs_f64() / c.as_secs_f64()
    );
    Ok(())
}

/// The simulated children, in their own process so that the gateway's CPU
/// and RSS are measured alone. Prints "READY port port ...", then runs
/// until stdin closes.
async fn sims(n: usize) -> anyhow::Result<()> {
    let mut all = Vec::with_capacity(n);
    for i in 0..n {
        let mut o = SimOptions::new("1.0", "2.0");
        o.seed = i as u64 + 1;
        o.reboot_time = Duration::from_millis(200);
        all.push(CoapChildSim::start(o).await?);
    }
    let ports: Vec<String> = all.iter().map(|s| s.addr().port().to_string()).collect();
    println!("READY {}", ports.join(" "));
    std::io::stdout().flush()?;
    tokio::task::spawn_blocking(|| {
        let mut sink = String::new();
        while std::io::stdin()
            .read_line(&mut sink)
            .map(|n| n > 0)
            .unwrap_or(false)
        {}
    })
    .await?;
    let upgraded = all.iter().filter(|s| s.version() == "2.0").count();
    eprintln!("sims: {upgraded}/{n} upgraded");
    Ok(())
}

/// utime + stime of this process, in seconds (/proc/self/stat fields 14
/// and 15, in clock ticks of 1/100 s on Linux).
fn cpu_seconds() -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    let rest = stat.rsplit_once(')').context("stat")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>()? + f[12].parse::<u64>()?;
    Ok(ticks as f64 / 100.0)
}

fn peak_rss_kib() -> anyhow::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .context("VmHWM")?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .context("VmHWM value")?
        .parse()?)
}

async fn fanout(n: usize, size: usize, mode: Mode, poll_ms: u64) -> anyhow::Result<()> {
    let dir = Scratch::new()?;
    let (path, sha256) = image(dir.path(), size)?;
    let pkg = Arc::new(Package {
        path,
        size: size as u64,
        sha256,
        version: "2.0".into(),
    });
    let mut host = Command::new(std::env::current_exe()?)
        .args(["sims", "--children", &n.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    BufReader::new(host.stdout.take().context("stdout")?).read_line(&mut line)?;
    let ports: Vec<u16> = line
        .strip_prefix("READY ")
        .context("sims did not start")?
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let mut o = NetworkOptions::new("127.0.0.1:0".parse()?, 9);
    o.max_concurrent_transfers = n;
    let net = CoapNetwork::bind(o)?;
    let opts = ChildOptions {
        poll_interval: Duration::from_millis(poll_ms),
        ..ChildOptions::default()
    };
    let delivery = match mode {
        Mode::Push => Delivery::Push,
        Mode::Pull => Delivery::Pull,
    };
    let cpu0 = cpu_seconds()?;
    let t = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for (i, port) in ports.iter().enumerate() {
        let child = CoapChild::new(
            &format!("node{i}"),
            std::net::SocketAddr::from(([127, 0, 0, 1], *port)),
            delivery,
            net.clone(),
            opts.clone(),
        );
        let pkg = pkg.clone();
        tasks.push(tokio::spawn(async move {
            child.deliver(&pkg, 0, &|_| {}).await?;
            child.activate(&pkg).await
        }));
    }
    let mut failed = 0;
    for t in tasks {
        if !matches!(t.await, Ok(Ok(()))) {
            failed += 1;
        }
    }
    let wall = t.elapsed();
    let cpu = cpu_seconds()? - cpu0;
    let mib = (n * size) as f64 / (1024.0 * 1024.0);
    drop(host.stdin.take());
    let _ = host.wait();
    println!(
        "fanout {mode:?}: {n} children x {size} bytes ({mib:.1} MiB): {} upgraded, {failed} failed; \
         wall {:.2} s; gateway CPU {cpu:.2} s = {:.4} CPU s/MiB; gateway peak RSS {:.1} MiB",
        n - failed,
        wall.as_secs_f64(),
        cpu / mib,
        peak_rss_kib()? as f64 / 1024.0
    );
    if failed > 0 {
        bail!("{failed} children failed");
    }
    Ok(())
}

/// One upgrade of one simulated child through a gateway whose socket seam
/// loses `loss` percent each way; returns (bytes the gateway sent,
/// retransmissions, wall time).
async fn lossy_run(
    pkg: &Package,
    mode: Mode,
    loss: f64,
    seed: u64,
) -> anyhow::Result<(u64, u64, Duration)> {
    // Short RFC 7252 timers so that a lossy run takes seconds, and more
    // retransmissions than the default 4 on both ends, as a lossy link
    // deserves (at 20 % each way, 5 tries of a block fail together about
    // once in 160 blocks). The ratio of bytes does not depend on the timers.
    let exchange = |seed: u64| otabridge_codecs::coap::ExchangeConfig {
        ack_timeout: Duration::from_millis(30),
        max_retransmit: 8,
        seed,
        ..Default::default()
    };
    let mut sim = SimOptions::new("1.0", "2.0");
    sim.seed = seed;
    sim.exchange = exchange(seed ^ 0x5eed);
    sim.reboot_time = Duration::from_millis(50);
    let sim = CoapChildSim::start(sim).await?;
    let mut o = NetworkOptions::new("127.0.0.1:0".parse()?, seed);
    o.exchange = exchange(seed);
    o.faults = Some(LinkFaults::loss(loss, seed.wrapping_mul(31)));
    let net = CoapNetwork::bind(o)?;
    let opts = ChildOptions {
        poll_interval: Duration::from_millis(20),
        ..ChildOptions::default()
    };
    let delivery = match mode {
        Mode::Push => Delivery::Push,
        Mode::Pull => Delivery::Pull,
    };
    let child = CoapChild::new("lossy", sim.addr(), delivery, net.clone(), opts);
    let t = Instant::now();
    child.deliver(pkg, 0, &|_| {}).await?;
    child.activate(pkg).await?;
    let wall = t.elapsed();
    if sim.last_image_sha256().as_deref() != Some(pkg.sha256.as_str()) {
        bail!("the child holds another image");
    }
    let st = net.stats();
    Ok((st.bytes, st.retransmissions, wall))
}

async fn lossy(size: usize, rates: &[f64], seeds: u64) -> anyhow::Result<()> {
    let dir = Scratch::new()?;
    let (path, sha256) = image(dir.path(), size)?;
    let pkg = Package {
        path,
        size: size as u64,
        sha256,
        version: "2.0".into(),
    };
    println!(
        "| delivery | loss each way | gateway bytes sent / image bytes | retransmissions | wall |"
    );
    println!("|---|---|---|---|---|");
    for mode in [Mode::Push, Mode::Pull] {
        for &loss in rates {
            let (mut bytes, mut retx, mut wall) = (0u64, 0u64, Duration::ZERO);
            for seed in 1..=seeds {
                let (b, r, w) = lossy_run(&pkg, mode, loss, seed).await?;
                bytes += b;
                retx += r;
                wall += w;
            }
            let n = seeds as f64;
            println!(
                "| {mode:?} | {loss} % | {:.3} | {:.1} | {:.2} s |",
                bytes as f64 / n / size as f64,
                retx as f64 / n,
                wall.as_secs_f64() / n
            );
        }
    }
    Ok(())
}
