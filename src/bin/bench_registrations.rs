//! The LwM2M registration storm (issue 13; figures in BENCHMARKS.md,
//! "LwM2M registrations"): N endpoints (default 5,000) register with the
//! real daemon, then each sends one Update.
//!
//! Starts the simulated IoTDA in this process (the in-process broker behind
//! the TLS edge), writes a configuration with N `[[child]]` entries with
//! `endpoint = "bench-ep-<i>"` and runs `otabridge run` on it as a child
//! process. Then, over real UDP from `--sockets` client sockets (endpoint
//! `i` from socket `i % sockets`), it sends crafted CON
//! `POST /rd?ep=&lt=&lwm2m=1.1&b=U` with the link format
//! `</1/0>,</3/0>,</5/0>`, at most `--window` unanswered per socket
//! (RFC 7252 timing: a request unanswered for 2 s is sent again, 4 times
//! at most), then one `POST /rd/<id>` per endpoint, and prints:
//! - registrations/s and updates/s (first request sent to last answer);
//! - how many were answered 2.01 / 2.04 (none may be lost), and the time
//!   until every registration is in the journal (`coap_registrations`);
//! - the daemon's VmRSS and VmHWM (peak) after the storm, its RSS before,
//!   its CPU seconds, and the journal's size on disk (with its WAL).
//!
//! `cargo build --release --bin otabridge --bin bench_registrations &&
//!  target/release/bench_registrations` (the daemon is looked up next to
//! this binary unless `--otabridge` names it).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use otabridge::sim::testbed::{config_text, Testbed};
use otabridge_codecs::coap::{msg, CoapOption, Code, MessageType, Packet};
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
/// endpoint and the wall time.
async fn phase(
    sockets: &[Arc<UdpSocket>],
    server: SocketAddr,
    window: usize,
    make: impl Fn(usize) -> Option<Packet>,
    endpoints: usize,
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
            tokio::spawn(exchange(s.clone(), server, reqs, window, (k as u16) << 8))
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

fn journaled(state: &Path) -> Result<i64> {
    let c = rusqlite::Connection::open_with_flags(
        state.join("journal.sqlite"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )?;
    Ok(c.query_row("SELECT COUNT(*) FROM coap_registrations", [], |r| r.get(0))?)
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

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    let n = cli.endpoints;
    let bin = daemon_binary(&cli)?;
    let dir = Scratch::new()?;
    let tb = Testbed::new(dir.path()).await?;
    let port = std::net::UdpSocket::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut extra =
        format!("[coap]\nlisten = \"127.0.0.1:{port}\"\n\n[control]\nenabled = false\n");
    for i in 0..n {
        extra.push_str(&format!(
            "\n[[child]]\ndevice_id = \"bench_{i}\"\ntransport = \"coap\"\nendpoint = \"bench-ep-{i}\"\n"
        ));
    }
    let config = dir.path().join("gw.toml");
    std::fs::write(
        &config,
        config_text(tb.edge.addr().port(), &tb.ca_file, &tb.state_dir, &extra),
    )?;
    let log = std::fs::File::create(dir.path().join("gw.log"))?;
    let d = Daemon(
        Command::new(&bin)
            .args(["run", "--config"])
            .arg(&config)
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
    let (rss0, _, cpu0) = proc_mem(pid)?;
    let server: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut sockets = Vec::new();
    for _ in 0..cli.sockets {
        sockets.push(Arc::new(UdpSocket::bind("127.0.0.1:0").await?));
    }
    let lt = cli.lifetime;
    let (regs, t_reg) = phase(&sockets, server, cli.window, |i| Some(register(i, lt)), n).await?;
    let created = count(&regs, Code::CREATED);
    let locs: Vec<Option<String>> = regs
        .iter()
        .map(|a| a.as_ref().and_then(|(_, l)| l.clone()))
        .collect();
    let (ups, t_up) = phase(
        &sockets,
        server,
        cli.window,
        |i| {
            locs[i]
                .as_ref()
                .map(|l| msg::request(Code::POST, &["rd", l.as_str()]))
        },
        n,
    )
    .await?;
    let changed = count(&ups, Code::CHANGED);
    let t0 = Instant::now();
    let mut in_journal = 0;
    while t0.elapsed() < Duration::from_secs(120) {
        in_journal = journaled(&tb.state_dir).unwrap_or(0);
        if in_journal as usize >= created {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let t_journal = t0.elapsed();
    let (rss, hwm, cpu) = proc_mem(pid)?;
    let jbytes = journal_bytes(&tb.state_dir);
    drop(d);
    let mib = |kib: u64| kib as f64 / 1024.0;
    println!(
        "endpoints               {n} from {} sockets, window {}",
        cli.sockets, cli.window
    );
    println!(
        "registers               {created}/{n} answered 2.01 in {:.2} s: {:.0} registrations/s",
        t_reg.as_secs_f64(),
        created as f64 / t_reg.as_secs_f64()
    );
    println!(
        "updates                 {changed}/{created} answered 2.04 in {:.2} s: {:.0} updates/s",
        t_up.as_secs_f64(),
        changed as f64 / t_up.as_secs_f64()
    );
    println!(
        "journaled               {in_journal} rows ({:.2} s after the last update)",
        t_journal.as_secs_f64()
    );
    println!(
        "gateway RSS             {:.1} MiB before, {:.1} MiB after, peak (VmHWM) {:.1} MiB",
        mib(rss0),
        mib(rss),
        mib(hwm)
    );
    println!("gateway CPU             {:.2} s for the storm", cpu - cpu0);
    println!(
        "journal on disk         {:.2} MiB (with WAL)",
        jbytes as f64 / 1048576.0
    );
    if created < n || changed < created || (in_journal as usize) < created {
        bail!("registrations lost: {created} created, {changed} updated, {in_journal} journaled of {n}");
    }
    Ok(())
}
