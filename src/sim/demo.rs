//! `otabridge demo`: a batch upgrade against a simulated IoTDA, all
//! in-process and over real sockets.
//!
//! It starts rumqttd behind the simulated IoTDA access point (TLS with a
//! fresh CA, IoTDA credential checks), the platform's application side, the
//! HTTPS package server, and a gateway with simulated children. The platform
//! then does what IoTDA does for a batch task: it queries every child's
//! version, sends one `firmware_upgrade` per child (same task, same
//! package), and follows the progress reports until each child has a
//! terminal one. The demo shows live progress (a bar per child redrawn in
//! place on a terminal, one line per report when the output is piped) and
//! a final table, and succeeds when every child ended as the scenario
//! expects.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use otabridge_codecs::iotda::event::{ProgressReport, VersionQuery};
use otabridge_codecs::iotda::{Event, ResultCode, Upgrade, UpgradeKind};

use super::package_server::{Access, PackageServer, Served, Source};
use super::testbed::{Testbed, GATEWAY_ID};
use crate::child::memory::MemoryChild;
use crate::child::Child;

/// Demo settings.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Simulated in-process children behind the gateway.
    pub children: usize,
    /// Simulated MCUmgr/SMP children, each on its own pty.
    pub smp_children: usize,
    /// Simulated LwM2M children over CoAP/UDP, alternately pull and push.
    pub coap_children: usize,
    /// Firmware image size in bytes.
    pub image_size: u64,
    /// Seed for the image content and everything random.
    pub seed: u64,
    /// Give one child a package whose sign does not match (expect result 7).
    pub bad_sign: bool,
    /// Keep one child offline (expect result 6 after the retries).
    pub offline: bool,
    /// Lossy links, in percent (0..=30): CoAP datagrams lost in both
    /// directions, SMP answers dropped. The drivers' retransmissions carry
    /// the transfers through; the table counts them.
    pub loss_pct: f64,
    /// Every CoAP and SMP child reboots once in the middle of its transfer
    /// (the CoAP children lose the transfer; the SMP children keep what
    /// they wrote, as MCUboot's slot does).
    pub reboots: bool,
    /// Where the demo keeps its state; a fresh temporary directory if unset.
    pub state_dir: Option<PathBuf>,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            children: 4,
            smp_children: 2,
            coap_children: 2,
            image_size: 256 * 1024,
            seed: 1,
            bad_sign: true,
            offline: false,
            loss_pct: 0.0,
            reboots: false,
            state_dir: None,
        }
    }
}

/// How one child ended.
#[derive(Debug, Clone, PartialEq)]
pub struct DemoRow {
    /// The child.
    pub device_id: String,
    /// Its transport.
    pub transport: String,
    /// Version before.
    pub from: String,
    /// Version reported in the terminal report.
    pub to: String,
    /// Result code of the terminal report (`None`: none arrived).
    pub result_code: Option<ResultCode>,
    /// The result the scenario expects.
    pub expected: ResultCode,
    /// Its description.
    pub description: String,
    /// Seconds from the upgrade event to the terminal report.
    pub seconds: f64,
    /// Bytes of the package.
    pub bytes: u64,
    /// Retries: requests the driver sent again plus failed job attempts
    /// tried again.
    pub retries: u64,
}

impl DemoRow {
    /// Ended as the scenario expects.
    pub fn as_expected(&self) -> bool {
        self.result_code == Some(self.expected)
    }
}

const TARGET: &str = "2.0.0";

/// CoAP ACK_TIMEOUT of a lossy demo (loopback round trips are microseconds).
const LOSSY_ACK_TIMEOUT: Duration = Duration::from_millis(100);

struct Planned {
    id: String,
    child: Arc<dyn Child>,
    from: String,
    expected: ResultCode,
    bad_sign: bool,
    /// Which package: the plain image or the MCUboot one.
    mcuboot: bool,
}

impl Planned {
    /// A child expected to succeed.
    fn new(id: String, child: Arc<dyn Child>, from: String, mcuboot: bool) -> Self {
        Planned {
            id,
            child,
            from,
            expected: ResultCode::SUCCESS,
            bad_sign: false,
            mcuboot,
        }
    }
}

/// The children with the simulators behind them (kept alive until the
/// gateway stopped).
#[derive(Default)]
struct Cast {
    plan: Vec<Planned>,
    coap_sims: Vec<super::coap_child::CoapChildSim>,
    smp_sims: Vec<super::smp_child::SmpChild>,
    /// The gateway's CoAP endpoint (also the LwM2M server), for the
    /// registrations in the summary.
    coap_net: Option<crate::child::coap::CoapNetwork>,
}

/// The packages of the task on the package server.
struct Packages {
    plain: Served,
    tampered: Served,
    mcuboot: Served,
}

/// Runs the demo; returns one row per child. Errors are setup failures.
pub async fn run(opts: DemoOptions) -> anyhow::Result<Vec<DemoRow>> {
    anyhow::ensure!(
        (0.0..=30.0).contains(&opts.loss_pct),
        "--loss must be between 0 and 30 percent, not {}",
        opts.loss_pct
    );
    let started = Instant::now();
    let tmp;
    let dir = match &opts.state_dir {
        Some(d) => d.clone(),
        None => {
            tmp = TempDir::new()?;
            tmp.0.clone()
        }
    };
    let mut tb = Testbed::new(&dir).await?;
    let server = PackageServer::start(&["127.0.0.1", "localhost"]).await?;
    let pkg_ca = dir.join("package-ca.pem");
    std::fs::write(&pkg_ca, server.ca_pem())?;
    println!(
        "otabridge demo: gateway {GATEWAY_ID}; IoTDA simulated on mqtts://{} (rumqttd behind a TLS edge); packages on https://{}",
        tb.edge.addr(),
        server.addr()
    );
    let mut cast = Cast::default();
    memory_children(&opts, &mut cast);
    coap_children(&opts, &mut cast).await?;
    smp_children(&opts, &mut cast)?;
    let cfg = tb.config(&format!(
        "[download]\nca_file = {:?}\n[ota]\nmax_retries = 2\nretry_min_ms = 200\nretry_max_ms = 1000\nversion_read_timeout_secs = 2\n",
        pkg_ca.display().to_string()
    ))?;
    let children: Vec<Arc<dyn Child>> = cast.plan.iter().map(|p| p.child.clone()).collect();
    let handles = tb.start_gateway_with(cfg, children).await?;
    tb.wait_connected(Duration::from_secs(20)).await?;
    println!("gateway connected; {} children announced", cast.plan.len());

    let versions = query_versions(&mut tb, &cast.plan).await?;
    let packages = publish(&server, &opts, &dir)?;
    let sent_at = send_task(&mut tb, &server, &packages, &cast.plan).await?;
    let last = follow_reports(&mut tb, &cast.plan).await;
    if let Some(net) = &cast.coap_net {
        print_registrations(net);
    }
    tb.stop_gateway().await?;
    let Cast {
        plan,
        coap_sims,
        smp_sims,
        ..
    } = cast;
    drop(smp_sims);
    drop(coap_sims);

    let retries = |p: &Planned| p.child.chunk_retries() + handles.metrics.job_retries(&p.id);
    let rows: Vec<DemoRow> = plan
        .iter()
        .map(|p| row(p, &last, &versions, &sent_at, &packages, retries(p)))
        .collect();
    let downloads = server
        .requests()
        .iter()
        .filter(|q| q.package == "fw-2.0.0")
        .count();
    print_table(&rows);
    let ok = rows.iter().filter(|r| r.as_expected()).count();
    println!(
        "\n{ok} of {} children ended as expected; the package server answered {downloads} download request(s); {:.1} s in all",
        rows.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(rows)
}

/// How child `p` ended, from its last report.
fn row(
    p: &Planned,
    last: &BTreeMap<String, (ProgressReport, Instant)>,
    versions: &BTreeMap<String, String>,
    sent_at: &BTreeMap<String, Instant>,
    packages: &Packages,
    retries: u64,
) -> DemoRow {
    let (rep, at) = match last.get(&p.id) {
        Some((r, t)) if r.is_terminal() => (Some(r.clone()), *t),
        _ => (None, Instant::now()),
    };
    DemoRow {
        device_id: p.id.clone(),
        transport: p.child.transport().to_owned(),
        from: versions
            .get(&p.id)
            .cloned()
            .unwrap_or_else(|| p.from.clone()),
        to: rep.as_ref().map(|r| r.version.clone()).unwrap_or_default(),
        result_code: rep.as_ref().map(|r| r.result_code),
        expected: p.expected,
        description: rep
            .and_then(|r| r.description)
            .unwrap_or_else(|| "(no report)".into()),
        seconds: at.saturating_duration_since(sent_at[&p.id]).as_secs_f64(),
        bytes: if p.mcuboot {
            packages.mcuboot.size
        } else {
            packages.plain.size
        },
        retries,
    }
}

/// In-process children; one gets a package that fails its sign check, one
/// may stay offline.
fn memory_children(opts: &DemoOptions, cast: &mut Cast) {
    for i in 0..opts.children.max(1) {
        let id = format!("demo-product_node{:02}", i + 1);
        let from = format!("1.{}.{}", opts.seed % 10, i);
        let child = Arc::new(MemoryChild::new(&id, &from));
        child.set_chunk_delay(Duration::from_millis(2));
        let mut p = Planned::new(id, child.clone(), from, false);
        if opts.bad_sign && i == 1 {
            p.bad_sign = true;
            p.expected = ResultCode::CHECK_FAIL;
        }
        if opts.offline && i == 2 {
            child.set_online(false);
            p.expected = ResultCode::DOWNLOAD_TIMEOUT;
        }
        cast.plan.push(p);
    }
}

/// CoAP children: LwM2M devices on their own UDP sockets, all reached
/// through one gateway endpoint (which is also the Block2 package server
/// the pull children fetch from).
async fn coap_children(opts: &DemoOptions, cast: &mut Cast) -> anyhow::Result<()> {
    if opts.coap_children == 0 {
        return Ok(());
    }
    let lossy = opts.loss_pct > 0.0;
    let mut net_opts = crate::child::coap::NetworkOptions::new(
        std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        opts.seed,
    );
    // The registering child listens this long after it sent something.
    net_opts.registry.queue_window = REG_AWAKE;
    if lossy {
        // Loopback answers in microseconds: RFC 7252's 2 s ACK_TIMEOUT
        // would make a lossy demo crawl.
        net_opts.exchange.ack_timeout = LOSSY_ACK_TIMEOUT;
    }
    let net = crate::child::coap::CoapNetwork::bind(net_opts)?;
    for i in 0..opts.coap_children {
        let pull = i % 2 == 0;
        let id = format!(
            "demo-product_lwm2m{:02}{}",
            i + 1,
            if pull { "pull" } else { "push" }
        );
        let from = "1.0.0".to_owned();
        let mut sim_opts = super::coap_child::SimOptions::new(&from, TARGET);
        sim_opts.seed = opts.seed + 100 + i as u64;
        sim_opts.faults.loss_pct = opts.loss_pct;
        if lossy {
            sim_opts.exchange.ack_timeout = LOSSY_ACK_TIMEOUT;
        }
        if opts.reboots {
            // Halfway through the image's 1024-byte blocks.
            let blocks = opts.image_size.div_ceil(1024);
            sim_opts.faults.reboot_after_blocks = Some((blocks / 2).max(1) as u32);
        }
        let sim = super::coap_child::CoapChildSim::start(sim_opts).await?;
        let delivery = if pull {
            crate::config::Delivery::Pull
        } else {
            crate::config::Delivery::Push
        };
        let child = Arc::new(crate::child::coap::CoapChild::new(
            &id,
            sim.addr(),
            delivery,
            net.clone(),
            crate::child::coap::ChildOptions {
                // The simulated children answer at once; a real network
                // keeps the 5 s default.
                poll_interval: Duration::from_millis(250),
                ..crate::child::coap::ChildOptions::default()
            },
        ));
        cast.coap_sims.push(sim);
        cast.plan.push(Planned::new(id, child, from, false));
    }
    registering_child(opts, cast, &net).await?;
    cast.coap_net = Some(net);
    Ok(())
}

/// How long the demo's registering child listens after it sent something
/// (its queue-mode window; the gateway's `coap.queue_window_secs`).
const REG_AWAKE: Duration = Duration::from_secs(5);

/// A stock LwM2M client's way in: it registers with the gateway (queue
/// mode, `b=UQ`, LwM2M 1.0) instead of being polled at a fixed address,
/// sleeps between its Updates, and is upgraded with `delivery = "auto"`
/// (docs/coap.md "Children that register").
async fn registering_child(
    opts: &DemoOptions,
    cast: &mut Cast,
    net: &crate::child::coap::CoapNetwork,
) -> anyhow::Result<()> {
    let id = "demo-product_lwm2m-reg".to_owned();
    let endpoint = "urn:dev:demo-queue-1";
    let from = "1.0.0".to_owned();
    let mut sim_opts = super::coap_child::SimOptions::new(&from, TARGET);
    sim_opts.seed = opts.seed + 99;
    sim_opts.faults.loss_pct = opts.loss_pct;
    if opts.loss_pct > 0.0 {
        sim_opts.exchange.ack_timeout = LOSSY_ACK_TIMEOUT;
    }
    let mut reg = super::coap_child::Registering::new(net.local_addr(), endpoint);
    reg.lwm2m = "1.0".into();
    reg.queue = true;
    reg.awake = REG_AWAKE;
    // An Update every 5 s: the longest a request waits for it to wake.
    reg.lifetime_s = 10;
    sim_opts.register = Some(reg);
    net.allow_endpoint(endpoint);
    let sim = super::coap_child::CoapChildSim::start(sim_opts).await?;
    let child = Arc::new(crate::child::coap::CoapChild::new(
        &id,
        crate::config::CoapAddress::Endpoint(endpoint.to_owned()),
        crate::config::Delivery::Auto,
        net.clone(),
        crate::child::coap::ChildOptions {
            poll_interval: Duration::from_millis(250),
            ..crate::child::coap::ChildOptions::default()
        },
    ));
    cast.coap_sims.push(sim);
    cast.plan.push(Planned::new(id, child, from, false));
    Ok(())
}

/// The LwM2M registrations the gateway holds, and what its registry did.
fn print_registrations(net: &crate::child::coap::CoapNetwork) {
    let regs = net.registrations();
    let s = net.registry_stats();
    println!(
        "
LwM2M registrations: {} now; {} register(s), {} update(s), {} de-register(s), {} expired, {} refused",
        regs.len(),
        s.registers,
        s.updates,
        s.deregisters,
        s.expiries,
        s.refused
    );
    let now = net.now();
    for r in regs {
        let left = r.expires.saturating_duration_since(now);
        println!(
            "  {:<24} {:<21} b={:<3} lwm2m={} lifetime {}s, expires in {}s{}",
            r.reg.endpoint,
            r.reg.peer,
            r.reg.binding,
            r.reg.version,
            r.reg.lifetime.as_secs(),
            left.as_secs(),
            if r.reg.queue { ", queue mode" } else { "" }
        );
    }
}

/// SMP children run MCUboot: their package is a signed-format image whose
/// header carries the version, on its own pty each.
fn smp_children(opts: &DemoOptions, cast: &mut Cast) -> anyhow::Result<()> {
    for i in 0..opts.smp_children {
        let id = format!("demo-product_mcu{:02}", i + 1);
        let from = "1.0.0".to_owned();
        let mut sim_opts = super::smp_child::SmpChildOptions::default();
        sim_opts.device.running = super::smp_child::parse_version(&from).expect("a valid version");
        sim_opts.seed = opts.seed + i as u64;
        sim_opts.faults.drop = opts.loss_pct / 100.0;
        if opts.reboots {
            sim_opts.faults.reboot_at = Some(opts.image_size / 2);
        }
        let sim = super::smp_child::SmpChild::spawn(sim_opts)?;
        let mut serial = crate::config::SerialOptions::default();
        if opts.loss_pct > 0.0 || opts.reboots {
            // The simulator answers at once; a real line needs the defaults.
            serial.timeout = Duration::from_millis(250);
            serial.first_timeout = Duration::from_secs(2);
        }
        let child = Arc::new(crate::child::serial::SerialChild::new(
            &id,
            sim.path(),
            115_200,
            serial,
        ));
        cast.smp_sims.push(sim);
        cast.plan.push(Planned::new(id, child, from, true));
    }
    Ok(())
}

/// 1. Version query, as IoTDA does before a task: the version each online
///    child reports.
async fn query_versions(
    tb: &mut Testbed,
    plan: &[Planned],
) -> anyhow::Result<BTreeMap<String, String>> {
    for p in plan {
        tb.send(Some(&p.id), &Event::VersionQuery(VersionQuery::default()))
            .await?;
    }
    let mut versions: BTreeMap<String, String> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    let online = plan
        .iter()
        .filter(|p| p.expected != ResultCode::DOWNLOAD_TIMEOUT)
        .count();
    while versions.len() < online && Instant::now() < deadline {
        let Some(r) = tb.platform.recv(Duration::from_millis(500)).await else {
            continue;
        };
        for inc in r.events.unwrap_or_default() {
            if let (Some(id), Event::VersionReport(v)) = (inc.object_device_id, inc.event) {
                let v = v.fw_version.or(v.sw_version).unwrap_or_default();
                println!("  version_report  {id:<24} {v}");
                versions.insert(id, v);
            }
        }
    }
    Ok(versions)
}

/// 2. The task's packages: the image, a tampered copy (its sha256 is the
///    bad sign) and the MCUboot image for the SMP children.
fn publish(
    server: &PackageServer,
    opts: &DemoOptions,
    dir: &std::path::Path,
) -> anyhow::Result<Packages> {
    let generated = |seed| Source::Generated {
        len: opts.image_size,
        seed,
    };
    let plain = server.add("fw-2.0.0", generated(opts.seed), Access::Bearer)?;
    let tampered = server.add(
        "fw-2.0.0-tampered",
        generated(opts.seed + 1),
        Access::Bearer,
    )?;
    let image = super::smp_child::mcuboot_image(
        super::smp_child::parse_version(TARGET).expect("a valid version"),
        opts.image_size as usize,
        opts.seed,
    );
    let mcuboot_file = dir.join("fw-2.0.0-mcuboot.bin");
    std::fs::write(&mcuboot_file, &image)?;
    let mcuboot = server.add(
        "fw-2.0.0-mcuboot",
        Source::File(mcuboot_file),
        Access::Bearer,
    )?;
    println!(
        "task demo-task-1: firmware {TARGET}: {} bytes, sha256 {}... (MCUboot image for SMP children: sha256 {}...)",
        plain.size,
        &plain.sha256[..16],
        &mcuboot.sha256[..16]
    );
    Ok(Packages {
        plain,
        tampered,
        mcuboot,
    })
}

/// 3. One batch task, the same package for every child; returns when each
///    child's event was sent.
async fn send_task(
    tb: &mut Testbed,
    server: &PackageServer,
    packages: &Packages,
    plan: &[Planned],
) -> anyhow::Result<BTreeMap<String, Instant>> {
    let mut sent_at = BTreeMap::new();
    for p in plan {
        let pkg = if p.mcuboot {
            &packages.mcuboot
        } else {
            &packages.plain
        };
        let token = server.issue_token(Duration::from_secs(3600));
        let mut up = Upgrade {
            sub_device_count: Some(plan.len() as u32),
            ..pkg.upgrade(TARGET, token, "demo-task-1")
        };
        if p.bad_sign {
            // The platform's sign is another package's: the bytes will not
            // match it.
            up.sign = Some(packages.tampered.sha256.clone());
        }
        let ev = Event::Upgrade {
            kind: UpgradeKind::Firmware,
            v2: false,
            upgrade: up,
        };
        tb.send(Some(&p.id), &ev).await?;
        sent_at.insert(p.id.clone(), Instant::now());
    }
    Ok(sent_at)
}

/// 4. Follows the reports until every child has a terminal one (or two
///    minutes passed); returns each child's last report and when it came.
async fn follow_reports(
    tb: &mut Testbed,
    plan: &[Planned],
) -> BTreeMap<String, (ProgressReport, Instant)> {
    let mut live = Live::new(plan.iter().map(|p| p.id.as_str()));
    let mut last: BTreeMap<String, (ProgressReport, Instant)> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    let all_ended = |last: &BTreeMap<String, (ProgressReport, Instant)>| {
        plan.iter()
            .all(|p| last.get(&p.id).is_some_and(|(r, _)| r.is_terminal()))
    };
    while Instant::now() < deadline && !all_ended(&last) {
        let Some(r) = tb.platform.recv(Duration::from_millis(500)).await else {
            continue;
        };
        for inc in r.events.unwrap_or_default() {
            if let (Some(id), Event::ProgressReport(rep)) = (inc.object_device_id, inc.event) {
                live.report(&id, &rep);
                last.insert(id, (rep, Instant::now()));
            }
        }
    }
    live.finish();
    last
}

/// The live progress: on a terminal, one bar per child redrawn in place
/// (indicatif); otherwise (a pipe, a file, a test) one plain line per
/// report, so a log keeps every step.
struct Live {
    bars: Option<(MultiProgress, BTreeMap<String, ProgressBar>)>,
}

impl Live {
    fn new<'a>(ids: impl Iterator<Item = &'a str>) -> Live {
        if !std::io::stdout().is_terminal() {
            return Live { bars: None };
        }
        let all = MultiProgress::with_draw_target(ProgressDrawTarget::stdout());
        let style = ProgressStyle::with_template("  {prefix:<24} [{bar:20}] {pos:>3}%  {msg}")
            .expect("a valid template")
            .progress_chars("#>.");
        let bars = ids
            .map(|id| {
                let bar = all.add(ProgressBar::new(100));
                bar.set_style(style.clone());
                bar.set_prefix(id.to_owned());
                (id.to_owned(), bar)
            })
            .collect();
        Live {
            bars: Some((all, bars)),
        }
    }

    fn report(&mut self, id: &str, rep: &ProgressReport) {
        let p = rep.progress.unwrap_or(0).min(100);
        let description = rep.description.clone().unwrap_or_default();
        let status = if rep.result_code.is_success() {
            description
        } else {
            format!("result {} {description}", rep.result_code)
        };
        match self.bars.as_ref().and_then(|(_, bars)| bars.get(id)) {
            Some(bar) => {
                bar.set_position(u64::from(p));
                bar.set_message(status);
                if rep.is_terminal() {
                    bar.finish();
                }
            }
            None => println!("  {id:<24} [{}] {p:>3}%  {status}", plain_bar(p)),
        }
    }

    /// Leaves the bars on screen as they ended.
    fn finish(self) {
        if let Some((_, bars)) = self.bars {
            for bar in bars.values().filter(|b| !b.is_finished()) {
                bar.abandon();
            }
        }
    }
}

/// The bar of a plain progress line.
fn plain_bar(p: u8) -> String {
    let full = usize::from(p.min(100)) / 5;
    format!("{}{}", "#".repeat(full), ".".repeat(20 - full))
}

fn print_table(rows: &[DemoRow]) {
    println!();
    println!(
        "{:<24} {:<9} {:<18} {:>6} {:>8} {:>9} {:>7}  description",
        "child", "transport", "from -> to", "result", "time", "bytes", "retries"
    );
    for r in rows {
        let to = if r.to.is_empty() { "?" } else { &r.to };
        println!(
            "{:<24} {:<9} {:<18} {:>6} {:>7.1}s {:>9} {:>7}  {}{}",
            r.device_id,
            r.transport,
            format!("{} -> {to}", r.from),
            r.result_code.map_or("-".into(), |c| c.to_string()),
            r.seconds,
            r.bytes,
            r.retries,
            r.description,
            if r.as_expected() {
                ""
            } else {
                "   << NOT AS EXPECTED"
            }
        );
    }
}

/// A temporary directory removed on drop (the demo's default state).
#[derive(Debug)]
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> std::io::Result<TempDir> {
        let base = std::env::temp_dir();
        for n in 0..1000u32 {
            let p = base.join(format!("otabridge-demo-{}-{n}", std::process::id()));
            match std::fs::create_dir(&p) {
                Ok(()) => return Ok(TempDir(p)),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
        Err(std::io::Error::other("no free temporary directory name"))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
