//! `otabridge demo`: the gateway against a simulated IoTDA, all in-process.
//!
//! It starts rumqttd, the simulated device access point (TLS with a fresh CA,
//! IoTDA credential checks), the platform's application side, and a gateway
//! with simulated children; then the platform asks every child for its
//! version, as IoTDA does before an upgrade, and the demo prints what each
//! child reported through the gateway.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use otabridge_codecs::iotda::event::VersionQuery;
use otabridge_codecs::iotda::Event;

use super::broker::LocalBroker;
use super::platform::{DeviceAuth, Edge, SimPlatform, TestPki};
use crate::child::memory::MemoryChild;
use crate::child::Child;
use crate::config::Config;

/// Demo settings.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Simulated children behind the gateway.
    pub children: usize,
    /// Seed for everything random in the scenario.
    pub seed: u64,
    /// Where the demo keeps its state; a fresh temporary directory if unset.
    pub state_dir: Option<PathBuf>,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            children: 4,
            seed: 1,
            state_dir: None,
        }
    }
}

/// What one child reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DemoRow {
    /// The child.
    pub device_id: String,
    /// Its transport.
    pub transport: String,
    /// The version it reported, if it did.
    pub version: Option<String>,
}

const GATEWAY_ID: &str = "demo-product_gw01";
const SECRET: &str = "demo-secret";

/// Runs the demo; returns one row per child. Errors are setup failures.
pub async fn run(opts: DemoOptions) -> anyhow::Result<Vec<DemoRow>> {
    let started = Instant::now();
    let tmp;
    let dir = match &opts.state_dir {
        Some(d) => d.clone(),
        None => {
            tmp = TempDir::new()?;
            tmp.0.clone()
        }
    };
    println!(
        "otabridge demo: gateway {GATEWAY_ID}, {} simulated children",
        opts.children
    );

    let broker = LocalBroker::start()?;
    let pki = TestPki::new(&["localhost", "127.0.0.1"])?;
    let edge = Edge::start(broker, Some(pki.server.clone())).await?;
    edge.register(GATEWAY_ID, DeviceAuth::Secret(SECRET.into()));
    let mut platform = SimPlatform::connect(broker).await?;
    println!(
        "  platform: MQTTS on {} (rumqttd behind a simulated IoTDA edge)",
        edge.addr()
    );

    let ca = dir.join("demo-ca.pem");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(&ca, &pki.ca_pem)?;
    let state = dir.join("state");
    let text = format!(
        "[platform]\nurl = \"mqtts://localhost:{}\"\ndevice_id = \"{GATEWAY_ID}\"\nsecret = \"{SECRET}\"\nca_file = {:?}\n\n[state]\ndir = {:?}\n",
        edge.addr().port(),
        ca.display().to_string(),
        state.display().to_string(),
    );
    let cfg = Config::parse(&text, &dir.join("demo.toml"))?;

    let children: Vec<Arc<dyn Child>> = (0..opts.children)
        .map(|i| {
            let version = format!("1.{}.{}", opts.seed % 10, i);
            Arc::new(MemoryChild::new(
                &format!("demo-product_node{:02}", i + 1),
                &version,
            )) as Arc<dyn Child>
        })
        .collect();
    let ids: Vec<String> = children.iter().map(|c| c.device_id().to_owned()).collect();
    let transports: BTreeMap<String, String> = children
        .iter()
        .map(|c| (c.device_id().to_owned(), c.transport().to_owned()))
        .collect();

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let gw = tokio::spawn(crate::daemon::run_with(
        cfg,
        children,
        async move {
            let _ = stop_rx.await;
        },
        None,
    ));

    // The gateway announces its children when it connects.
    let mut online = 0;
    while online < opts.children {
        let Some(r) = platform.recv(Duration::from_secs(20)).await else {
            anyhow::bail!("the gateway did not announce its children within 20 s");
        };
        for inc in r.events.unwrap_or_default() {
            if let Event::UpdateStatus(s) = inc.event {
                online += s.device_statuses.len();
            }
        }
    }
    println!("  gateway connected and announced {online} children");

    for id in &ids {
        platform
            .send(
                GATEWAY_ID,
                Some(id),
                &Event::VersionQuery(VersionQuery::default()),
            )
            .await?;
    }
    let mut versions: BTreeMap<String, String> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while versions.len() < ids.len() && Instant::now() < deadline {
        let Some(r) = platform.recv(Duration::from_secs(1)).await else {
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
    let _ = stop_tx.send(());
    gw.await??;

    let rows: Vec<DemoRow> = ids
        .iter()
        .map(|id| DemoRow {
            device_id: id.clone(),
            transport: transports[id].clone(),
            version: versions.get(id).cloned(),
        })
        .collect();
    println!();
    println!("{:<26} {:<9} {:<10}", "child", "transport", "version");
    for r in &rows {
        println!(
            "{:<26} {:<9} {:<10}",
            r.device_id,
            r.transport,
            r.version.as_deref().unwrap_or("(no report)")
        );
    }
    println!(
        "\n{} of {} children reported in {:.1} s",
        versions.len(),
        rows.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(rows)
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
