//! The LwM2M registration storm (issue 13; figures in BENCHMARKS.md,
//! "LwM2M registration storm"): N endpoints (default 5,000) register with
//! the real daemon, each sends one Update, then P of them (default 1,000)
//! pull a 256 KiB image at once.
//!
//! Starts the simulated IoTDA in this process (the in-process broker behind
//! the TLS edge) and the HTTPS package server, writes a configuration with
//! N `[[child]]` entries with `endpoint = "bench-ep-<i>"` and runs
//! `otabridge run` on it as a child process.
//!
//! The storm: over real UDP from `--sockets` client sockets (endpoint `i`
//! from socket `i % sockets`), it sends crafted CON
//! `POST /rd?ep=&lt=&lwm2m=1.1&b=U` with the link format
//! `</1/0>,</3/0>,</5/0>`, at most `--window` unanswered per socket
//! (RFC 7252 timing: a request unanswered for 2 s is sent again, 4 times
//! at most), then one `POST /rd/<id>` per endpoint, and prints:
//! - registrations/s and updates/s (first request sent to last answer);
//! - how many were answered 2.01 / 2.04 (none may be lost), and the time
//!   from the last answer until every registration is in the journal
//!   (`coap_registrations`) with its Update (the Updates start in a later
//!   wall-clock second, so `renewed_unix` tells them apart).
//!
//! The pull: endpoints `0..P` are then LwM2M clients that can be upgraded
//! (`otabridge::sim::coap_child`, registering mode, one UDP socket each, in
//! a second process of this binary so that its CPU is counted apart):
//! each registers again from its own socket (a client that rebooted; the
//! registration moves to the new address), the simulated platform sends
//! one `firmware_upgrade` event per child (one task), and the daemon runs
//! its jobs as for any registering child: one shared HTTPS download,
//! `delivery = auto` read from `/5/0/9`, the Package URI written to
//! `/5/0/1`, `/5/0/3` observed, Block2 GETs from each client, Execute,
//! the new version read after the client's reboot and re-registration.
//! Each client accepts only the image whose SHA-256 it was given (any
//! other whole image is its integrity failure, result 5), so "upgraded"
//! means byte-exact. It prints the wall time until every client runs the
//! new version, the daemon's CPU seconds per MiB delivered, the clients'
//! CPU, the daemon's peak RSS (VmHWM, and the largest VmRSS sampled
//! every 50 ms during the pull) and when the platform had every success
//! report (the upstream rate cap, 50 messages/s, paces those).
//!
//! `cargo build --release --bin otabridge --bin bench_registrations &&
//!  target/release/bench_registrations` (the daemon is looked up next to
//! this binary unless `--otabridge` names it).

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use clap::{Parser, Subcommand};
use otabridge::sim::coap_child::{CoapChildSim, Registering, SimOptions};
use otabridge::sim::package_server::{Access, PackageServer, Served, Source};
use otabridge::sim::platform::Received;
use otabridge::sim::testbed::{config_text, Testbed};
use otabridge_codecs::coap::{msg, CoapOption, Code, MessageType, Packet};
use otabridge_codecs::iotda::{Event, UpgradeKind};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::UdpSocket;

#[derive(Debug, Parser)]
#[command(
    name = "bench_registrations",
    about = "LwM2M registration storm against otabridge run"
)]
struct Cli {
    /// Endpoints that register.
    #[arg(long, default_value_t = 5000)]
    endpoints: usize,
    /// Client UDP sockets (each its own source port).
    #[arg(long, default_value_t = 100)]
    sockets: usize,
    /// Unanswered requests per socket at most.
    #[arg(long, default_value_t = 8)]
    window: usize,
    /// The registrations' lifetime (`lt`), seconds.
    #[arg(long, default_value_t = 3600)]
    lifetime: u32,
    /// The daemon's binary (default: `otabridge` next to this one).
    #[arg(long)]
    otabridge: Option<PathBuf>,
    /// Endpoints (the first ones) that pull an image after the storm, all
    /// at once; 0: the storm only.
    #[arg(long, default_value_t = 1000)]
    pullers: usize,
    /// The image's size in bytes.
    #[arg(long, default_value_t = 256 * 1024)]
    image: u64,
    #[command(subcommand)]
    sims: Option<Sub>,
}

#[derive(Debug, Subcommand)]
enum Sub {
    /// The pulling clients, in their own process (started by the bench):
    /// prints `READY <registered>`, then `DONE <upgraded> <sha-ok>
    /// <blocks> <cpu-s>` once every client runs the new version or stdin
    /// closes.
    #[command(hide = true)]
    Sims {
        /// The gateway's `coap.listen`.
        #[arg(long)]
        server: SocketAddr,
        /// Clients: endpoints `bench-ep-0` .. `bench-ep-<count - 1>`.
        #[arg(long)]
        count: usize,
        /// The only image they accept (lower-case hex SHA-256).
        #[arg(long)]
        sha256: String,
        /// Their registrations' lifetime, seconds.
        #[arg(long)]
        lifetime: u32,
    },
}

/// A scratch directory removed when dropped (tempfile is a dev-dependency).
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Result<Self> {
        let p = std::env::temp_dir().join(format!("otabridge-bench-reg-{}", std::process::id()));
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

/// Kills the daemon however the run ends.
struct Daemon(std::process::Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `VmRSS` and `VmHWM` in KiB, and CPU seconds, of a process.
fn proc_mem(pid: u32) -> Result<(u64, u64, f64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command's closing parenthesis; utime, stime are
    // the 12th and 13th of them (proc(5): fields 14 and 15).
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    Ok((kib("VmRSS:"), kib("VmHWM:"), ticks / 100.0))
}

/// One request of the storm: what to send and what it is for.
struct Pending {
    endpoint: usize,
    bytes: Vec<u8>,
    sent: Instant,
    tries: u32,
}

/// What one socket's share of a phase gave: per endpoint, the response's
/// code and its Location-Path id (Register), or nothing if lost.
type Answers = Vec<(usize, Option<(Code, Option<String>)>)>;

/// Sends `requests` (endpoint, packet) from `socket` to `server`, at most
/// `window` unanswered, retransmitting as RFC 7252 §4.2 (2 s, 4 times,
/// doubling), and returns every endpoint's answer.
async fn exchange(
    socket: Arc<UdpSocket>,
    server: SocketAddr,
    requests: Vec<(usize, Packet)>,
    window: usize,
    first_mid: u16,
) -> Result<Answers> {
    let mut queue: VecDeque<(usize, Packet)> = requests.into();
    let mut pending: HashMap<u16, Pending> = HashMap::new();
    let mut out = Vec::new();
    let mut mid = first_mid;
    let mut buf = vec![0u8; 2048];
    while !queue.is_empty() || !pending.is_empty() {
        while pending.len() < window {
            let Some((endpoint, mut p)) = queue.pop_front() else {
                break;
            };
            mid = mid.wrapping_add(1);
            p.header.message_id = mid;
            p.header.set_type(MessageType::Confirmable);
            p.set_token(mid.to_be_bytes().to_vec());
            let bytes = msg::encode(&p, 1152).context("encode")?;
            socket.send_to(&bytes, server).await?;
            pending.insert(
                mid,
                Pending {
                    endpoint,
                    bytes,
                    sent: Instant::now(),
                    tries: 0,
                },
            );
        }
        let next = pending
            .values()
            .map(|p| p.sent + Duration::from_secs(2 << p.tries))
            .min()
            .unwrap_or_else(Instant::now);
        let wait = next.saturating_duration_since(Instant::now());
        match tokio::time::timeout(wait, socket.recv_from(&mut buf)).await {
            Ok(r) => {
                let (n, _) = r?;
                let Ok(resp) = msg::decode(&buf[..n]) else {
                    continue;
                };
                if let Some(p) = pending.remove(&resp.header.message_id) {
                    let loc = resp
                        .get_option(CoapOption::LocationPath)
                        .and_then(|l| l.iter().nth(1).cloned())
                        .and_then(|v| String::from_utf8(v).ok());
                    out.push((p.endpoint, Some((msg::code(&resp), loc))));
                }
            }
            Err(_) => {
                let now = Instant::now();
                let due: Vec<u16> = pending
                    .iter()
                    .filter(|(_, p)| now >= p.sent + Duration::from_secs(2 << p.tries))
                    .map(|(m, _)| *m)
                    .collect();
                for m in due {
                    let p = pending.get_mut(&m).expect("listed");
                    if p.tries >= 4 {
                        let p = pending.remove(&m).expect("listed");
                        out.push((p.endpoint, None));
                        continue;
                    }
                    p.tries += 1;
                    socket.send_to(&p.bytes, server).await?;
                }
            }
        }
    }
    Ok(out)
}

/// Runs one phase over every socket at once; returns the answers by
/// endpoint and the wall time. Each socket's message ids start at
/// `first_mid`: the phases of one socket must not reuse ids within
/// EXCHANGE_LIFETIME, or the server's deduplication (RFC 7252 §4.5)
/// answers the second phase's requests with the first phase's cached
/// responses.
async fn phase(
    sockets: &[Arc<UdpSocket>],
    server: SocketAddr,
    window: usize,
    make: impl Fn(usize) -> Option<Packet>,
    endpoints: usize,
    first_mid: u16,
) -> Result<(Vec<Option<(Code, Option<String>)>>, Duration)> {
    let mut per: Vec<Vec<(usize, Packet)>> = vec![Vec::new(); sockets.len()];
    for i in 0..endpoints {
        if let Some(p) = make(i) {
            per[i % sockets.len()].push((i, p));
        }
    }
    let t0 = Instant::now();
    let tasks: Vec<_> = per
        .into_iter()
        .zip(sockets)
        .enumerate()
        .map(|(k, (reqs, s))| {
            let mid = first_mid.wrapping_add((k as u16) << 8);
            tokio::spawn(exchange(s.clone(), server, reqs, window, mid))
        })
        .collect();
    let mut answers = vec![None; endpoints];
    for t in tasks {
        for (i, a) in t.await?? {
            answers[i] = a;
        }
    }
    Ok((answers, t0.elapsed()))
}

fn register(i: usize, lifetime: u32) -> Packet {
    let mut p = msg::request(Code::POST, &["rd"]);
    for q in [
        format!("ep=bench-ep-{i}"),
        format!("lt={lifetime}"),
        "lwm2m=1.1".into(),
        "b=U".into(),
    ] {
        p.add_option(CoapOption::UriQuery, q.into_bytes());
    }
    msg::set_uint(&mut p, CoapOption::ContentFormat, 40);
    p.payload = b"</1/0>,</3/0>,</5/0>".to_vec();
    p
}

fn journal_bytes(state: &Path) -> u64 {
    ["journal.sqlite", "journal.sqlite-wal", "journal.sqlite-shm"]
        .iter()
        .filter_map(|f| std::fs::metadata(state.join(f)).ok())
        .map(|m| m.len())
        .sum()
}

/// Rows in `coap_registrations` renewed at `since_unix` or later.
fn journaled(state: &Path, since_unix: i64) -> Result<i64> {
    let c = rusqlite::Connection::open_with_flags(
        state.join("journal.sqlite"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )?;
    Ok(c.query_row(
        "SELECT COUNT(*) FROM coap_registrations WHERE renewed_unix >= ?1",
        [since_unix],
        |r| r.get(0),
    )?)
}

fn daemon_binary(cli: &Cli) -> Result<PathBuf> {
    if let Some(p) = &cli.otabridge {
        return Ok(p.clone());
    }
    let me = std::env::current_exe()?;
    let p = me.with_file_name("otabridge");
    if !p.exists() {
        bail!(
            "no otabridge next to {}: build it, or pass --otabridge",
            me.display()
        );
    }
    Ok(p)
}

fn count(a: &[Option<(Code, Option<String>)>], code: Code) -> usize {
    a.iter()
        .filter(|x| x.as_ref().is_some_and(|(c, _)| *c == code))
        .count()
}

/// The daemon's configuration: the storm's children, and the limits that
/// let the pullers run at once (jobs, CoAP transfers, no halt-on-failures
/// ramp).
fn config(cli: &Cli, tb: &Testbed, port: u16, pkg_ca: &Path) -> String {
    let p = cli.pullers.max(1);
    let mut extra = format!(
        "[download]\nca_file = {:?}\n\n[coap]\nlisten = \"127.0.0.1:{port}\"\n\
         max_concurrent_transfers = {p}\n\n[ota]\nmax_concurrent_jobs = {p}\nhalt_failures = 0\n\n\
         [control]\nenabled = false\n",
        pkg_ca.display().to_string()
    );
    for i in 0..cli.endpoints {
        extra.push_str(&format!(
            "\n[[child]]\ndevice_id = \"bench_{i}\"\ntransport = \"coap\"\nendpoint = \"bench-ep-{i}\"\n"
        ));
    }
    config_text(tb.edge.addr().port(), &tb.ca_file, &tb.state_dir, &extra)
}

/// Registers every endpoint, updates each once, waits for the journal;
/// prints the storm's figures. Fails if one is lost.
async fn storm(cli: &Cli, tb: &Testbed, pid: u32, port: u16) -> Result<()> {
    let n = cli.endpoints;
    let (rss0, _, cpu0) = proc_mem(pid)?;
    let server: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut sockets = Vec::new();
    for _ in 0..cli.sockets {
        sockets.push(Arc::new(UdpSocket::bind("127.0.0.1:0").await?));
    }
    let lt = cli.lifetime;
    let (regs, t_reg) = phase(
        &sockets,
        server,
        cli.window,
        |i| Some(register(i, lt)),
        n,
        0,
    )
    .await?;
    let created = count(&regs, Code::CREATED);
    let locs: Vec<Option<String>> = regs
        .iter()
        .map(|a| a.as_ref().and_then(|(_, l)| l.clone()))
        .collect();
    let update = |i: usize| {
        locs[i]
            .as_ref()
            .map(|l| msg::request(Code::POST, &["rd", l.as_str()]))
    };
    // The Updates start in a later wall-clock second than every Register,
    // so a row renewed by its Update is told apart by `renewed_unix`.
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?;
    tokio::time::sleep(Duration::from_nanos(
        1_000_000_000 - u64::from(since.subsec_nanos()),
    ))
    .await;
    let update_unix = since.as_secs() as i64 + 1;
    let (ups, t_up) = phase(&sockets, server, cli.window, update, n, 0x8000).await?;
    let changed = count(&ups, Code::CHANGED);
    let t0 = Instant::now();
    let mut in_journal = 0;
    while t0.elapsed() < Duration::from_secs(120) {
        in_journal = journaled(&tb.state_dir, update_unix).unwrap_or(0);
        if in_journal as usize >= changed {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let t_journal = t0.elapsed();
    let (rss, hwm, cpu) = proc_mem(pid)?;
    let rate = |k: usize, t: Duration| k as f64 / t.as_secs_f64();
    println!(
        "endpoints               {n} from {} sockets, window {}",
        cli.sockets, cli.window
    );
    println!(
        "registers               {created}/{n} answered 2.01 in {:.2} s: {:.0} registrations/s",
        t_reg.as_secs_f64(),
        rate(created, t_reg)
    );
    println!(
        "updates                 {changed}/{created} answered 2.04 in {:.2} s: {:.0} updates/s",
        t_up.as_secs_f64(),
        rate(changed, t_up)
    );
    println!(
        "journaled               {in_journal} rows with their Update, {:.2} s after the last update was answered",
        t_journal.as_secs_f64()
    );
    println!(
        "gateway RSS             {:.1} MiB before, {:.1} MiB after the storm, peak (VmHWM) {:.1} MiB",
        kib_mib(rss0),
        kib_mib(rss),
        kib_mib(hwm)
    );
    println!("gateway CPU             {:.2} s for the storm", cpu - cpu0);
    println!(
        "journal on disk         {:.2} MiB (with WAL)",
        journal_bytes(&tb.state_dir) as f64 / 1048576.0
    );
    if created < n || changed < created || (in_journal as usize) < changed {
        bail!("registrations lost: {created} created, {changed} updated, {in_journal} journaled of {n}");
    }
    Ok(())
}

fn kib_mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    if let Some(Sub::Sims {
        server,
        count,
        sha256,
        lifetime,
    }) = &cli.sims
    {
        return sims(*server, *count, sha256, *lifetime).await;
    }
    ensure!(
        cli.pullers <= cli.endpoints,
        "--pullers exceeds --endpoints"
    );
    let bin = daemon_binary(&cli)?;
    let dir = Scratch::new()?;
    let mut tb = Testbed::new(dir.path()).await?;
    let pkgs = PackageServer::start(&["127.0.0.1"]).await?;
    let pkg_ca = dir.path().join("pkg-ca.pem");
    std::fs::write(&pkg_ca, pkgs.ca_pem())?;
    let source = Source::Generated {
        len: cli.image,
        seed: 13,
    };
    let served = pkgs.add("fw", source, Access::Bearer)?;
    let port = std::net::UdpSocket::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let config_file = dir.path().join("gw.toml");
    std::fs::write(&config_file, config(&cli, &tb, port, &pkg_ca))?;
    let log = std::fs::File::create(dir.path().join("gw.log"))?;
    let d = Daemon(
        Command::new(&bin)
            .args(["run", "--config"])
            .arg(&config_file)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?,
    );
    let pid = d.0.id();
    let until = Instant::now() + Duration::from_secs(120);
    while tb.edge.connects() == 0 && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if tb.edge.connects() == 0 {
        bail!(
            "the daemon did not connect: {}",
            std::fs::read_to_string(dir.path().join("gw.log")).unwrap_or_default()
        );
    }
    // Let the connect-time announcement of N children settle.
    tokio::time::sleep(Duration::from_secs(3)).await;
    storm(&cli, &tb, pid, port).await?;
    if cli.pullers > 0 {
        let r = pull(&cli, &mut tb, &pkgs, &served, pid, port).await;
        if r.is_err() {
            let log = std::fs::read_to_string(dir.path().join("gw.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            eprintln!(
                "daemon log (last lines, newest first):\n{}",
                tail.join("\n")
            );
        }
        r?;
    }
    drop(d);
    Ok(())
}

/// Terminal progress reports the platform received, by child.
#[derive(Debug, Default)]
struct Reports {
    ok: HashSet<String>,
    failed: HashMap<String, String>,
}

impl Reports {
    fn collect(&mut self, tb: &mut Testbed) {
        while let Some(r) = tb.platform.try_recv() {
            self.add(r);
        }
    }

    fn add(&mut self, r: Received) {
        for inc in r.events.unwrap_or_default() {
            let (Event::ProgressReport(p), Some(id)) = (inc.event, inc.object_device_id) else {
                continue;
            };
            if p.result_code.is_success() && p.progress == Some(100) {
                self.ok.insert(id);
            } else if p.is_terminal() {
                let why = format!(
                    "{} {}",
                    p.result_code.get(),
                    p.description.unwrap_or_default()
                );
                self.failed.insert(id, why);
            }
        }
    }

    fn ended(&self) -> usize {
        self.ok.len() + self.failed.len()
    }
}

/// Samples a process's VmRSS every 50 ms until dropped; keeps the largest.
struct RssSampler {
    peak_kib: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl RssSampler {
    fn start(pid: u32) -> Self {
        let peak_kib = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s) = (peak_kib.clone(), stop.clone());
        tokio::spawn(async move {
            while !s.load(Ordering::Relaxed) {
                if let Ok((rss, _, _)) = proc_mem(pid) {
                    p.fetch_max(rss, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        RssSampler { peak_kib, stop }
    }

    fn peak_kib(&self) -> u64 {
        self.peak_kib.load(Ordering::Relaxed)
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The pull: starts the clients' process, waits until they registered,
/// sends one upgrade event per client, waits until every client runs the
/// new version (byte-exact image) and the platform has every terminal
/// report; prints the figures. Fails if one client was not upgraded.
// Over 80 lines: one sequence of waits and measurements, read top down.
async fn pull(
    cli: &Cli,
    tb: &mut Testbed,
    pkgs: &PackageServer,
    served: &Served,
    pid: u32,
    port: u16,
) -> Result<()> {
    let p = cli.pullers;
    let mut sims = tokio::process::Command::new(std::env::current_exe()?)
        .arg("sims")
        .args(["--server", &format!("127.0.0.1:{port}")])
        .args(["--count", &p.to_string(), "--sha256", &served.sha256])
        .args(["--lifetime", &cli.lifetime.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut stdin = sims.stdin.take();
    let mut lines = BufReader::new(sims.stdout.take().context("sims stdout")?).lines();
    let ready = tokio::time::timeout(Duration::from_secs(300), lines.next_line())
        .await
        .context("the clients did not register within 300 s")??
        .unwrap_or_default();
    let registered: usize = ready
        .strip_prefix("READY ")
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("clients: {ready:?}"))?;
    ensure!(
        registered == p,
        "only {registered} of {p} clients registered"
    );
    let (_, _, cpu0) = proc_mem(pid)?;
    let sampler = RssSampler::start(pid);
    let token = pkgs.issue_token(Duration::from_secs(3600));
    let upgrade = served.upgrade("2.0.0", token, "bench-pull");
    let t0 = Instant::now();
    for i in 0..p {
        let ev = Event::Upgrade {
            kind: UpgradeKind::Firmware,
            v2: false,
            upgrade: upgrade.clone(),
        };
        tb.send(Some(&format!("bench_{i}")), &ev).await?;
    }
    let t_sent = t0.elapsed();
    let mut reports = Reports::default();
    let limit = Duration::from_secs(900);
    let mut times = String::new();
    let done = loop {
        tokio::select! {
            l = lines.next_line() => match l?.unwrap_or_default() {
                l if l.starts_with("TIMES ") => times = l,
                l => break l,
            },
            _ = tokio::time::sleep(Duration::from_millis(100)) => {
                reports.collect(tb);
                // Every job ended (some failed) or too long: the clients
                // stop waiting and say what they hold.
                if reports.ended() >= p || t0.elapsed() > limit {
                    stdin.take();
                }
            }
        }
    };
    let t_clients = t0.elapsed();
    let (_, _, cpu1) = proc_mem(pid)?;
    let f: Vec<f64> = done
        .strip_prefix("DONE ")
        .with_context(|| format!("clients: {done:?}"))?
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    ensure!(f.len() == 4, "clients: {done:?}");
    let (upgraded, sha_ok, blocks, sims_cpu) = (f[0] as usize, f[1] as usize, f[2], f[3]);
    while reports.ended() < p && t0.elapsed() < t_clients + Duration::from_secs(600) {
        if let Some(r) = tb.platform.recv(Duration::from_millis(200)).await {
            reports.add(r);
        }
    }
    let t_reports = t0.elapsed();
    let (rss, hwm, cpu2) = proc_mem(pid)?;
    let peak_sampled = sampler.peak_kib();
    drop(sampler);
    drop(stdin);
    let _ = sims.wait().await;
    let mib = (p as u64 * cli.image) as f64 / 1048576.0;
    let gw_cpu = cpu1 - cpu0;
    println!(
        "pull                    {p} clients x {} B = {mib:.1} MiB; {upgraded} run the new version, \
         {sha_ok} hold the image byte-exact (SHA-256), {blocks:.0} Block2 blocks received",
        cli.image
    );
    println!(
        "pull wall               {:.2} s from the first event ({:.2} s to send {p} events) \
         until every client ran the new version",
        t_clients.as_secs_f64(),
        t_sent.as_secs_f64()
    );
    let t: Vec<&str> = times.split_whitespace().skip(1).collect();
    if t.len() == 6 {
        println!(
            "pull timeline           first block at {} / {} / {} s (first / median / last client), \
             new version at {} / {} / {} s",
            t[0], t[1], t[2], t[3], t[4], t[5]
        );
    }
    println!(
        "pull gateway CPU        {gw_cpu:.2} s = {:.4} CPU-s per MiB delivered \
         ({:.2} s more until the last report)",
        gw_cpu / mib,
        cpu2 - cpu1
    );
    println!(
        "pull clients CPU        {sims_cpu:.2} s = {:.4} CPU-s per MiB (the {p} clients' process)",
        sims_cpu / mib
    );
    println!(
        "pull gateway RSS        peak sampled {:.1} MiB, {:.1} MiB after, peak (VmHWM) {:.1} MiB",
        kib_mib(peak_sampled),
        kib_mib(rss),
        kib_mib(hwm)
    );
    println!(
        "pull reports            {} success, {} failed, {:.2} s after the first event",
        reports.ok.len(),
        reports.failed.len(),
        t_reports.as_secs_f64()
    );
    if let Some((id, why)) = reports.failed.iter().next() {
        println!("first failure           {id}: {why}");
    }
    if upgraded < p || sha_ok < p || reports.ok.len() < p {
        bail!(
            "pull: {upgraded} upgraded, {sha_ok} byte-exact, {} reported success of {p}",
            reports.ok.len()
        );
    }
    Ok(())
}

/// The clients' process: `count` registering simulated LwM2M clients.
async fn sims(server: SocketAddr, count: usize, sha256: &str, lifetime: u32) -> Result<()> {
    let mut all = Vec::with_capacity(count);
    for i in 0..count {
        let mut o = SimOptions::new("1.0.0", "2.0.0");
        // Only this image gives State 2: anything else is result 5.
        o.any_image_version = None;
        o.images.insert(sha256.to_owned(), "2.0.0".into());
        o.seed = i as u64 + 1;
        o.reboot_time = Duration::from_millis(200);
        let mut r = Registering::new(server, &format!("bench-ep-{i}"));
        r.lifetime_s = lifetime;
        o.register = Some(r);
        all.push(CoapChildSim::start(o).await?);
    }
    let until = Instant::now() + Duration::from_secs(240);
    let registered = loop {
        let n = all
            .iter()
            .filter(|s| s.last_registry_code() == Some(Code::CREATED))
            .count();
        if n == count || Instant::now() > until {
            break n;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    println!("READY {registered}");
    let (_, _, cpu0) = proc_mem(std::process::id())?;
    let closed = Arc::new(AtomicBool::new(false));
    let c = closed.clone();
    std::thread::spawn(move || {
        let mut sink = String::new();
        while std::io::stdin()
            .read_line(&mut sink)
            .map(|n| n > 0)
            .unwrap_or(false)
        {}
        c.store(true, Ordering::Relaxed);
    });
    let upgraded = |all: &[CoapChildSim]| all.iter().filter(|s| s.version() == "2.0.0").count();
    // When each client got its first block and ran the new version,
    // seconds after READY (sampled every 20 ms).
    let t0 = Instant::now();
    let mut first_block = vec![None; count];
    let mut new_version = vec![None; count];
    while upgraded(&all) < count && !closed.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let t = t0.elapsed().as_secs_f64();
        for (i, s) in all.iter().enumerate() {
            if first_block[i].is_none() && s.stats().blocks > 0 {
                first_block[i] = Some(t);
            }
            if new_version[i].is_none() && s.version() == "2.0.0" {
                new_version[i] = Some(t);
            }
        }
    }
    let spread = |v: &[Option<f64>]| {
        let mut v: Vec<f64> = v.iter().flatten().copied().collect();
        v.sort_by(f64::total_cmp);
        let at = |q: f64| {
            v.get(((v.len() as f64 - 1.0) * q) as usize)
                .copied()
                .unwrap_or(-1.0)
        };
        format!("{:.2} {:.2} {:.2}", at(0.0), at(0.5), at(1.0))
    };
    println!("TIMES {} {}", spread(&first_block), spread(&new_version));
    let (_, _, cpu1) = proc_mem(std::process::id())?;
    let sha_ok = all
        .iter()
        .filter(|s| s.last_image_sha256().as_deref() == Some(sha256))
        .count();
    let blocks: u64 = all.iter().map(|s| s.stats().blocks).sum();
    println!(
        "DONE {} {sha_ok} {blocks} {:.2}",
        upgraded(&all),
        cpu1 - cpu0
    );
    // Stay until the bench closes stdin: the gateway still reads the new
    // version after each client's reboot.
    while !closed.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}
