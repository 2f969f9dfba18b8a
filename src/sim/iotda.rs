//! `otabridge sim iotda`: a stand-in for Huawei Cloud IoTDA that a gateway
//! build under test connects to, on the gateway itself.
//!
//! It runs the MQTT broker behind the simulated device access point (TLS
//! with a fresh CA, IoTDA's credential check), the platform's application
//! side and the HTTPS package server, all on loopback. It writes the CA
//! files and a `[platform]` + `[download]` configuration fragment for the
//! gateway, then, for each `--upgrade CHILD=FILE@VERSION`, does what an IoTDA
//! upgrade task does: a version query until the child answers (which also
//! proves the gateway is subscribed), one `firmware_upgrade` event with a
//! token-protected package URL, and the progress reports followed until a
//! terminal one. `CHILD` may be the gateway's own device id: its own upgrade
//! (`--software-upgrade` sends `software_upgrade` instead), followed across
//! its reboot or restart. It ends with a table and exit status 0 when every child
//! reported success on the target version. Without `--upgrade` it prints
//! whatever the gateway reports until Ctrl-C.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use otabridge_codecs::iotda::event::{ProgressReport, VersionQuery};
use otabridge_codecs::iotda::{Event, ResultCode, Upgrade, UpgradeKind};

use super::broker::LocalBroker;
use super::package_server::{Access, PackageServer, Source};
use super::platform::{DeviceAuth, Edge, Received, SimPlatform, TestPki};

/// One upgrade to run: `CHILD=FILE@VERSION`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedUpgrade {
    /// The child's device id, or the gateway's own.
    pub child: String,
    /// `firmware_upgrade` (the default) or `software_upgrade`.
    pub kind: UpgradeKind,
    /// The package file.
    pub file: PathBuf,
    /// The version the package carries.
    pub version: String,
}

impl std::str::FromStr for PlannedUpgrade {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("'{s}' is not CHILD=FILE@VERSION");
        let (child, rest) = s.split_once('=').ok_or_else(bad)?;
        let (file, version) = rest.rsplit_once('@').ok_or_else(bad)?;
        if child.is_empty() || file.is_empty() || version.is_empty() {
            return Err(bad());
        }
        Ok(PlannedUpgrade {
            child: child.to_owned(),
            kind: UpgradeKind::Firmware,
            file: PathBuf::from(file),
            version: version.to_owned(),
        })
    }
}

/// Settings of the simulated platform.
#[derive(Debug, Clone)]
pub struct IotdaOptions {
    /// The gateway's device id.
    pub device_id: String,
    /// Its secret.
    pub secret: String,
    /// Where the MQTT (TLS) access point listens.
    pub listen: SocketAddr,
    /// Where the CA files and the configuration fragment go.
    pub out_dir: PathBuf,
    /// The upgrades to run, in order of sending.
    pub upgrades: Vec<PlannedUpgrade>,
    /// Longest wait for all of them.
    pub timeout: Duration,
}

/// How one planned upgrade ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The child.
    pub child: String,
    /// The version it reported before.
    pub from: Option<String>,
    /// The version in its terminal report.
    pub to: Option<String>,
    /// The result code of the terminal report (`None`: no terminal report).
    pub result_code: Option<ResultCode>,
    /// Its description.
    pub description: String,
}

impl Outcome {
    fn succeeded(&self, target: &str) -> bool {
        self.result_code == Some(ResultCode::SUCCESS) && self.to.as_deref() == Some(target)
    }
}

fn describe(r: &Received) -> Vec<String> {
    match &r.events {
        None => vec![format!(
            "{}: not an IoTDA envelope: {}",
            r.topic,
            String::from_utf8_lossy(&r.payload)
        )],
        Some(events) => events
            .iter()
            .map(|inc| {
                let who = inc.object_device_id.as_deref().unwrap_or("(gateway)");
                match &inc.event {
                    Event::ProgressReport(p) => format!(
                        "{who:<24} upgrade_progress_report result {} progress {} version {} {}",
                        p.result_code,
                        p.progress.map_or("-".into(), |p| format!("{p}%")),
                        p.version,
                        p.description.as_deref().unwrap_or("")
                    ),
                    Event::VersionReport(v) => format!(
                        "{who:<24} version_report fw {} sw {}",
                        v.fw_version.as_deref().unwrap_or("-"),
                        v.sw_version.as_deref().unwrap_or("-")
                    ),
                    other => format!("{who:<24} {other:?}"),
                }
            })
            .collect(),
    }
}

/// Runs the simulated platform until the upgrades end (or, without any,
/// until `shutdown`). Returns one outcome per planned upgrade.
pub async fn run(
    opts: IotdaOptions,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<Vec<Outcome>> {
    std::fs::create_dir_all(&opts.out_dir)?;
    let broker = LocalBroker::start()?;
    let pki = TestPki::new(&["localhost", "127.0.0.1"])?;
    let edge = Edge::start_on(opts.listen, broker, Some(pki.server.clone())).await?;
    edge.register(&opts.device_id, DeviceAuth::Secret(opts.secret.clone()));
    let mut platform = SimPlatform::connect(broker).await?;
    let server = PackageServer::start(&["127.0.0.1", "localhost"]).await?;
    let fragment_file = write_fragment(&opts, edge.addr().port(), &pki.ca_pem, &server)?;
    println!(
        "simulated IoTDA on mqtts://localhost:{} for gateway {}",
        edge.addr().port(),
        opts.device_id
    );
    println!("gateway configuration: {}", fragment_file.display());
    println!("packages on https://{}", server.addr());

    if opts.upgrades.is_empty() {
        println!("no --upgrade given: printing what gateways report until Ctrl-C");
        print_until(&mut platform, shutdown).await;
        return Ok(Vec::new());
    }
    let deadline = Instant::now() + opts.timeout;
    let mut seen = Seen {
        gateway: opts.device_id.clone(),
        software: opts
            .upgrades
            .iter()
            .filter(|u| u.kind == UpgradeKind::Software)
            .map(|u| u.child.clone())
            .collect(),
        ..Seen::default()
    };
    await_versions(&opts, &mut platform, &mut seen, deadline, &fragment_file).await?;
    send_upgrades(&opts, &mut platform, &server).await?;
    // 3. Reports until every child has a terminal one.
    while Instant::now() < deadline
        && !opts.upgrades.iter().all(|u| {
            seen.last
                .get(&u.child)
                .is_some_and(ProgressReport::is_terminal)
        })
    {
        if let Some(r) = platform.recv(Duration::from_millis(500)).await {
            seen.absorb(&r);
        }
    }
    let outcomes = seen.outcomes(&opts);
    print_table(&outcomes, &opts.upgrades);
    let ok = outcomes
        .iter()
        .zip(&opts.upgrades)
        .filter(|(o, u)| o.succeeded(&u.version))
        .count();
    println!(
        "\n{ok} of {} upgrade(s) succeeded; the package server answered {} request(s)",
        outcomes.len(),
        server.requests().len()
    );
    Ok(outcomes)
}

/// Writes the CA files and `platform.toml`, the gateway's `[platform]` and
/// `[download]` sections; returns the fragment's path.
fn write_fragment(
    opts: &IotdaOptions,
    port: u16,
    iotda_ca_pem: &str,
    server: &PackageServer,
) -> anyhow::Result<PathBuf> {
    let iotda_ca = opts.out_dir.join("iotda-ca.pem");
    let package_ca = opts.out_dir.join("package-ca.pem");
    std::fs::write(&iotda_ca, iotda_ca_pem)?;
    std::fs::write(&package_ca, server.ca_pem())?;
    let fragment = format!(
        "# Written by `otabridge sim iotda`: the simulated platform on this machine.\n\
         # Add [state] and your [[child]] entries, then: otabridge run --config <file>\n\
         [platform]\nurl = \"mqtts://localhost:{port}\"\ndevice_id = {:?}\nsecret = {:?}\nca_file = {:?}\n\n\
         [download]\nca_file = {:?}\n",
        opts.device_id,
        opts.secret,
        iotda_ca.display().to_string(),
        package_ca.display().to_string(),
    );
    let fragment_file = opts.out_dir.join("platform.toml");
    std::fs::write(&fragment_file, &fragment)?;
    Ok(fragment_file)
}

/// Prints what gateways report until `shutdown`.
async fn print_until(platform: &mut SimPlatform, shutdown: impl std::future::Future<Output = ()>) {
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            r = platform.recv(Duration::from_secs(3600)) => {
                for line in r.iter().flat_map(describe) {
                    println!("  {line}");
                }
            }
        }
    }
}

/// What the platform heard: each child's reported version and its last
/// progress report.
#[derive(Debug, Default)]
struct Seen {
    /// The gateway's device id: reports without `object_device_id` (or
    /// with its own) are about the gateway itself.
    gateway: String,
    /// Devices whose planned upgrade is a `software_upgrade`: their
    /// `sw_version` is the version kept.
    software: Vec<String>,
    from: BTreeMap<String, String>,
    last: BTreeMap<String, ProgressReport>,
}

impl Seen {
    /// Prints a report and keeps what it says about versions and progress.
    fn absorb(&mut self, r: &Received) {
        for line in describe(r) {
            println!("  {line}");
        }
        for inc in r.events.iter().flatten() {
            let id = inc
                .object_device_id
                .clone()
                .unwrap_or_else(|| self.gateway.clone());
            match &inc.event {
                Event::VersionReport(v) => {
                    let (fw, sw) = (v.fw_version.clone(), v.sw_version.clone());
                    let v = if self.software.contains(&id) {
                        sw.or(fw)
                    } else {
                        fw.or(sw)
                    };
                    if let Some(v) = v {
                        self.from.insert(id, v);
                    }
                }
                Event::ProgressReport(p) => {
                    self.last.insert(id, p.clone());
                }
                _ => {}
            }
        }
    }

    fn outcomes(&self, opts: &IotdaOptions) -> Vec<Outcome> {
        opts.upgrades
            .iter()
            .map(|u| {
                let end = self.last.get(&u.child).filter(|l| l.is_terminal());
                Outcome {
                    child: u.child.clone(),
                    from: self.from.get(&u.child).cloned(),
                    to: end.map(|e| e.version.clone()),
                    result_code: end.map(|e| e.result_code),
                    description: end.map_or_else(
                        || format!("no terminal report within {} s", opts.timeout.as_secs()),
                        |e| e.description.clone().unwrap_or_default(),
                    ),
                }
            })
            .collect()
    }
}

/// 1. Version queries (every 3 s) until every child answered: the gateway
///    is connected and subscribed, and the children are reachable.
async fn await_versions(
    opts: &IotdaOptions,
    platform: &mut SimPlatform,
    seen: &mut Seen,
    deadline: Instant,
    fragment_file: &std::path::Path,
) -> anyhow::Result<()> {
    println!(
        "waiting for the gateway to connect and answer version queries for {} child(ren)",
        opts.upgrades.len()
    );
    let mut next_query = Instant::now();
    loop {
        let silent: Vec<&str> = opts
            .upgrades
            .iter()
            .filter(|u| !seen.from.contains_key(&u.child))
            .map(|u| u.child.as_str())
            .collect();
        if silent.is_empty() {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "no version report from {} within {} s (is the gateway running with {} and are the children configured?)",
            silent.join(", "),
            opts.timeout.as_secs(),
            fragment_file.display()
        );
        if Instant::now() >= next_query {
            for child in silent {
                let query = Event::VersionQuery(VersionQuery::default());
                platform.send(&opts.device_id, Some(child), &query).await?;
            }
            next_query = Instant::now() + Duration::from_secs(3);
        }
        if let Some(r) = platform.recv(Duration::from_millis(500)).await {
            seen.absorb(&r);
        }
    }
}

/// 2. One firmware_upgrade per child, its file served with a Bearer token.
async fn send_upgrades(
    opts: &IotdaOptions,
    platform: &mut SimPlatform,
    server: &PackageServer,
) -> anyhow::Result<()> {
    for (i, u) in opts.upgrades.iter().enumerate() {
        let served = server.add(
            &format!("pkg{}", i + 1),
            Source::File(u.file.clone()),
            Access::Bearer,
        )?;
        let token = server.issue_token(Duration::from_secs(86_400));
        let mut up = Upgrade {
            sub_device_count: Some(opts.upgrades.len() as u32),
            ..served.upgrade(&u.version, token, "sim-task-1")
        };
        if let Some(name) = u.file.file_name() {
            up.file_name = name.to_string_lossy().into_owned();
        }
        println!(
            "{} -> {}: {} ({} bytes, sha256 {}...) to {}",
            match u.kind {
                UpgradeKind::Firmware => "firmware_upgrade",
                UpgradeKind::Software => "software_upgrade",
            },
            u.child,
            u.file.display(),
            served.size,
            &served.sha256[..16],
            u.version
        );
        let ev = Event::Upgrade {
            kind: u.kind,
            v2: false,
            upgrade: up,
        };
        platform.send(&opts.device_id, Some(&u.child), &ev).await?;
    }
    Ok(())
}

fn print_table(outcomes: &[Outcome], upgrades: &[PlannedUpgrade]) {
    println!();
    println!(
        "{:<24} {:<20} {:>6}  description",
        "child", "from -> to", "result"
    );
    for (o, u) in outcomes.iter().zip(upgrades) {
        let from = o.from.as_deref().unwrap_or("?");
        let to = o.to.as_deref().unwrap_or("?");
        println!(
            "{:<24} {:<20} {:>6}  {}{}",
            o.child,
            format!("{from} -> {to}"),
            o.result_code.map_or("-".into(), |c| c.to_string()),
            o.description,
            if o.succeeded(&u.version) {
                ""
            } else {
                "   << FAILED"
            }
        );
    }
}

/// Whether every outcome is a success on its planned version.
pub fn all_succeeded(outcomes: &[Outcome], upgrades: &[PlannedUpgrade]) -> bool {
    outcomes.len() == upgrades.len()
        && outcomes
            .iter()
            .zip(upgrades)
            .all(|(o, u)| o.succeeded(&u.version))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn planned_upgrades_parse() {
        let u: PlannedUpgrade = "node-1=/tmp/fw@v2.0.0.bin@V2.0".parse().unwrap();
        assert_eq!(u.child, "node-1");
        assert_eq!(u.file, PathBuf::from("/tmp/fw@v2.0.0.bin"));
        assert_eq!(u.version, "V2.0");
        assert_eq!(u.kind, UpgradeKind::Firmware);
        for bad in ["node", "node=file", "=f@1", "n=@1", "n=f@"] {
            assert!(bad.parse::<PlannedUpgrade>().is_err(), "{bad}");
        }
    }
}
