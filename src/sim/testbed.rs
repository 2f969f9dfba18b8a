//! A whole bench in one call: broker, simulated IoTDA edge (TLS), the
//! platform's application side, and a gateway with the given children,
//! connected over real sockets. Integration tests, the fixture runner and the
//! demo build on it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use otabridge_codecs::iotda::Event;
use serde_json::Value;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::broker::LocalBroker;
use super::platform::{DeviceAuth, Edge, Received, SimPlatform, TestPki};
use crate::child::Child;
use crate::config::Config;
use crate::daemon::{Handles, StartError, Stopped};

/// The gateway id every testbed uses.
pub const GATEWAY_ID: &str = "gw-product_gw01";
/// Its secret.
pub const SECRET: &str = "testbed-secret";

/// A running bench. Dropping it stops nothing in the broker (rumqttd cannot
/// stop); call [`Testbed::stop_gateway`] to stop the gateway cleanly.
#[derive(Debug)]
pub struct Testbed {
    /// The broker.
    pub broker: LocalBroker,
    /// The device access point (cut connections, count refusals).
    pub edge: Edge,
    /// The platform's application side.
    pub platform: SimPlatform,
    /// The CA that signed the edge's certificate (PEM file).
    pub ca_file: PathBuf,
    /// The state directory of the gateway.
    pub state_dir: PathBuf,
    gateway: Option<RunningGateway>,
}

#[derive(Debug)]
struct RunningGateway {
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<Stopped, StartError>>,
    handles: Handles,
}

/// The configuration text a testbed gateway runs with; `extra` is appended.
pub fn config_text(port: u16, ca_file: &Path, state_dir: &Path, extra: &str) -> String {
    format!(
        "[platform]\nurl = \"mqtts://localhost:{port}\"\ndevice_id = \"{GATEWAY_ID}\"\n\
         secret = \"{SECRET}\"\nca_file = {:?}\n\n[state]\ndir = {:?}\n{extra}",
        ca_file.display().to_string(),
        state_dir.display().to_string(),
    )
}

impl Testbed {
    /// Starts broker, edge (TLS) and platform; the gateway's state lives in
    /// `work_dir`. No gateway runs yet: see [`Testbed::start_gateway`].
    pub async fn new(work_dir: &Path) -> anyhow::Result<Testbed> {
        let broker = LocalBroker::start()?;
        let pki = TestPki::new(&["localhost", "127.0.0.1"])?;
        let edge = Edge::start(broker, Some(pki.server.clone())).await?;
        edge.register(GATEWAY_ID, DeviceAuth::Secret(SECRET.into()));
        let platform = SimPlatform::connect(broker).await?;
        std::fs::create_dir_all(work_dir)?;
        let ca_file = work_dir.join("ca.pem");
        std::fs::write(&ca_file, &pki.ca_pem)?;
        Ok(Testbed {
            broker,
            edge,
            platform,
            ca_file,
            state_dir: work_dir.join("state"),
            gateway: None,
        })
    }

    /// The configuration a gateway of this bench uses.
    pub fn config(&self, extra: &str) -> anyhow::Result<Config> {
        let text = config_text(
            self.edge.addr().port(),
            &self.ca_file,
            &self.state_dir,
            extra,
        );
        Ok(Config::parse(&text, Path::new("testbed.toml"))?)
    }

    /// Starts a gateway with `cfg` and `children`; returns its handles.
    pub async fn start_gateway_with(
        &mut self,
        cfg: Config,
        children: Vec<Arc<dyn Child>>,
    ) -> anyhow::Result<Handles> {
        anyhow::ensure!(self.gateway.is_none(), "a gateway is already running");
        let (stop, stop_rx) = oneshot::channel::<()>();
        let (started_tx, started_rx) = oneshot::channel();
        let task = tokio::spawn(crate::daemon::run_with(
            cfg,
            children,
            async move {
                let _ = stop_rx.await;
            },
            Some(started_tx),
        ));
        let handles = match started_rx.await {
            Ok(h) => h,
            Err(_) => {
                task.await??;
                anyhow::bail!("the gateway stopped before it started");
            }
        };
        self.gateway = Some(RunningGateway {
            stop,
            task,
            handles: handles.clone(),
        });
        Ok(handles)
    }

    /// Starts a gateway on this bench's default configuration.
    pub async fn start_gateway(
        &mut self,
        children: Vec<Arc<dyn Child>>,
    ) -> anyhow::Result<Handles> {
        let cfg = self.config("")?;
        self.start_gateway_with(cfg, children).await
    }

    /// Stops the gateway and waits for it.
    pub async fn stop_gateway(&mut self) -> anyhow::Result<()> {
        if let Some(g) = self.gateway.take() {
            let _ = g.stop.send(());
            g.task.await??;
        }
        Ok(())
    }

    /// Waits until the running gateway is connected and subscribed.
    pub async fn wait_connected(&self, within: Duration) -> anyhow::Result<()> {
        let h = self
            .handles()
            .ok_or_else(|| anyhow::anyhow!("no gateway running"))?;
        let mut rx = h.platform.link_state();
        let up = tokio::time::timeout(
            within,
            rx.wait_for(|s| *s == crate::platform::LinkState::Up),
        )
        .await;
        anyhow::ensure!(
            matches!(up, Ok(Ok(_))),
            "the gateway did not connect within {within:?}"
        );
        Ok(())
    }

    /// The running gateway's handles.
    pub fn handles(&self) -> Option<&Handles> {
        self.gateway.as_ref().map(|g| &g.handles)
    }

    /// Sends an event to the gateway about `object_device_id`.
    pub async fn send(&self, object_device_id: Option<&str>, ev: &Event) -> anyhow::Result<()> {
        Ok(self.platform.send(GATEWAY_ID, object_device_id, ev).await?)
    }

    /// Waits up to `within` for a report for which `pick` returns `Some`,
    /// skipping others; returns what `pick` returned.
    pub async fn wait_for<T>(
        &mut self,
        within: Duration,
        mut pick: impl FnMut(&Received) -> Option<T>,
    ) -> Option<T> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let r = self.platform.recv(left).await?;
            if let Some(t) = pick(&r) {
                return Some(t);
            }
        }
    }

    /// Reports received within `within` after the last one (quiet period).
    pub async fn drain(&mut self, quiet: Duration) -> Vec<Received> {
        let mut out = Vec::new();
        while let Some(r) = self.platform.recv(quiet).await {
            out.push(r);
        }
        out
    }
}

/// A report's JSON with every `event_time` checked for IoTDA's format and
/// replaced by `"*"`, so that tests compare the rest exactly.
pub fn normalise(payload: &[u8]) -> anyhow::Result<Value> {
    let mut v: Value = serde_json::from_slice(payload)?;
    if let Some(services) = v.get_mut("services").and_then(Value::as_array_mut) {
        for s in services {
            if let Some(t) = s.get_mut("event_time") {
                let text = t.as_str().unwrap_or_default();
                otabridge_codecs::iotda::EventTime::parse(text)?;
                *t = Value::String("*".into());
            }
        }
    }
    Ok(v)
}
