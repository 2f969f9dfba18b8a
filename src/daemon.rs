//! `otabridge run`: the gateway daemon, wired from a configuration.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::child::coap::registrations::{self, Onboarded};
use crate::child::{self, Child};
use crate::config::Config;
use crate::exporter::{self, Exporter};
use crate::gateway::{Hooks, SelfUpgrade};
use crate::journal::{JournalError, SharedJournal};
use crate::metrics::Metrics;
use crate::ota::engine::Engine;
use crate::ota::onboard::{Onboarding, Setup};
use crate::ota::Gateway;
use crate::package::{PackageStore, StoreError};
use crate::platform::{Platform, Session};
use crate::tls::TlsError;

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The journal could not be opened.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// The platform's TLS material is unusable.
    #[error("platform TLS: {0}")]
    Tls(#[from] TlsError),
    /// The package store could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A configured child cannot be driven: the shared CoAP endpoint
    /// (`coap.listen`) cannot be opened.
    #[error(transparent)]
    Child(#[from] child::BuildError),
    /// The metrics endpoint (`metrics.listen`) could not be opened.
    #[error(transparent)]
    Metrics(#[from] crate::exporter::ListenError),
    /// A configured image key (`image.keys`, `child[i].image.keys`) is unusable.
    #[error(transparent)]
    ImageKey(#[from] crate::image::GateError),
    /// The control API's socket (`control.socket`) could not be opened.
    #[error(transparent)]
    Control(#[from] crate::control::ListenError),
}

/// How a daemon run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// Its shutdown completed (a signal, or the caller's future).
    Shutdown,
    /// It stopped to start again: otabridge's own package was installed
    /// (`[gateway.software] after = "restart"`). `otabridge run` executes
    /// the installed binary in place; the job reports from there.
    Restart,
}

/// A running gateway's parts, for tests and the demo.
#[derive(Debug, Clone)]
pub struct Handles {
    /// The platform handle (outbox, link state).
    pub platform: Platform,
    /// The counters behind the metrics endpoint.
    pub metrics: Metrics,
    /// Where the metrics endpoint listens, when `metrics.listen` is set.
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// The control API's socket, unless `control.enabled = false`.
    pub control_socket: Option<std::path::PathBuf>,
    /// The upgrade engine (the control API's requests, for tests).
    pub engine: Engine,
}

/// Builds the children from the configuration; CoAP children share one
/// network (socket and Block2 server on `coap.listen`), opened only when a
/// CoAP child is configured.
pub fn children(cfg: &Config) -> Result<Vec<Arc<dyn Child>>, child::BuildError> {
    let mut nets = child::Networks::with_state_dir(&cfg.coap, &cfg.state.dir);
    cfg.children
        .iter()
        .map(|c| child::from_config(c, &mut nets))
        .collect()
}

/// What LwM2M onboarding needs at start: the CoAP network (opened for it
/// when no configured child did), and the clients onboarded in earlier
/// runs.
struct Lwm2m {
    net: child::coap::CoapNetwork,
    child_options: child::coap::ChildOptions,
    adopted: Vec<Onboarded>,
}

/// [`children`], and the onboarding's part when `[lwm2m]
/// onboard_product_id` is set or earlier runs onboarded clients.
/// What the daemon drives, built from the configuration.
struct Built {
    children: Vec<Arc<dyn Child>>,
    /// The CoAP network, when a child or onboarding opened it (metrics).
    coap: Option<child::coap::CoapNetwork>,
    /// The onboarding's part, when it is on or adopted clients exist.
    lwm2m: Option<Lwm2m>,
}

fn build(cfg: &Config) -> Result<Built, StartError> {
    let mut nets = child::Networks::with_state_dir(&cfg.coap, &cfg.state.dir);
    let kids: Vec<Arc<dyn Child>> = cfg
        .children
        .iter()
        .map(|c| child::from_config(c, &mut nets))
        .collect::<Result<_, _>>()?;
    let rows = {
        let mut j = crate::journal::Journal::open(&cfg.state.dir)?;
        registrations::onboarded(&mut j)?
    };
    if cfg.lwm2m.onboard_product_id.is_none() && rows.is_empty() {
        return Ok(Built {
            children: kids,
            coap: nets.opened_coap(),
            lwm2m: None,
        });
    }
    let endpoints: Vec<String> = cfg
        .children
        .iter()
        .filter_map(|c| match &c.transport {
            crate::config::Transport::Coap {
                address: crate::config::CoapAddress::Endpoint(e),
                ..
            } => Some(e.clone()),
            _ => None,
        })
        .collect();
    let adopted = crate::ota::onboard::journaled(rows, &kids, &endpoints);
    let net = nets.coap().map_err(child::BuildError::from)?;
    let child_options = nets.coap_child_options();
    Ok(Built {
        children: kids,
        coap: Some(net.clone()),
        lwm2m: Some(Lwm2m {
            net,
            child_options,
            adopted,
        }),
    })
}

/// The daemon's parts, wired from the configuration, not running yet.
struct Parts {
    journal: SharedJournal,
    platform: Platform,
    session: Session,
    inbound: mpsc::Receiver<crate::platform::Inbound>,
    metrics: Metrics,
    listener: Option<tokio::net::TcpListener>,
    engine: Engine,
    own: SelfUpgrade,
    gateway: Gateway,
    /// Notified when the gateway's own upgrade asks for a restart.
    restart: Arc<tokio::sync::Notify>,
    /// The control API's socket, unless `control.enabled = false`.
    control: Option<tokio::net::UnixListener>,
}

/// Opens the journal, the package store and the metrics socket, and wires
/// the platform link, the upgrade engines and the dispatcher to them (each
/// with its own journal handle). Nothing runs yet.
async fn wire(cfg: &Config, children: &[Arc<dyn Child>]) -> Result<Parts, StartError> {
    let gate = crate::image::Gate::from_config(cfg)?;
    let journal = SharedJournal::open(&cfg.state.dir)?;
    let platform = Platform::new(&cfg.platform.device_id, journal.clone());
    let pending = platform.outbox_len().await?;
    if pending > 0 {
        info!(
            pending,
            "reports from an earlier run are still queued; they will be sent first"
        );
    }
    let (tx, inbound) = mpsc::channel(256);
    let seed = std::process::id() as u64 ^ crate::clock::now_unix() as u64;
    let session = Session::new(cfg.platform.clone(), platform.clone(), tx, seed)?;
    let metrics = Metrics::new();
    let listener = match cfg.metrics.listen {
        Some(addr) => Some(exporter::bind(addr).await?),
        None => None,
    };
    let store = PackageStore::with_options(
        &cfg.state.dir.join(crate::package::DIR_NAME),
        journal.clone(),
        &cfg.download,
        crate::package::DownloadOptions {
            metrics: metrics.clone(),
            ..Default::default()
        },
    )
    .await?;
    // One queue per shared bus, for the jobs and the gateway's reads alike.
    let buses = child::Buses::new(children);
    let engine = Engine::new(
        platform.clone(),
        journal.clone(),
        store.clone(),
        children,
        buses.clone(),
        &cfg.ota,
        metrics.clone(),
    );
    engine.set_image_gate(gate);
    engine.set_activation_windows(activation_windows(cfg, children));
    let control = match cfg.control.enabled {
        true => Some(crate::control::bind(cfg)?),
        false => None,
    };
    let restart = Arc::new(tokio::sync::Notify::new());
    let hooks = hooks(&engine, &restart);
    let own = SelfUpgrade::new(
        cfg.gateway.clone(),
        cfg.platform.fw_version.clone(),
        platform.clone(),
        journal.clone(),
        store,
        cfg.ota.version_match,
        hooks,
    );
    let gateway = Gateway::new(
        platform.clone(),
        journal.clone(),
        children.to_vec(),
        buses,
        own.clone(),
    )
    .with_engine(engine.clone());
    Ok(Parts {
        journal,
        platform,
        session,
        inbound,
        metrics,
        listener,
        engine,
        own,
        gateway,
        restart,
        control,
    })
}

/// Each child's activation window (issue 15 item 1): its `[[child]]`'s,
/// else `[ota] activation_window` (children a test or the demo gives
/// that are not configured take the latter).
fn activation_windows(
    cfg: &Config,
    children: &[Arc<dyn Child>],
) -> std::collections::HashMap<String, crate::ota::window::Schedule> {
    children
        .iter()
        .filter_map(|c| {
            let id = c.device_id();
            let w = cfg
                .children
                .iter()
                .find(|cc| cc.device_id == id)
                .map_or(cfg.ota.activation_window, |cc| cc.activation_window)?;
            let s = crate::ota::window::Schedule {
                window: w,
                zone: cfg.ota.zone.clone(),
            };
            Some((id.to_owned(), s))
        })
        .collect()
}

/// What the gateway's own upgrade asks of the rest of the daemon: how
/// many child jobs run, and a restart.
fn hooks(engine: &Engine, restart: &Arc<tokio::sync::Notify>) -> Hooks {
    let (engine, restart) = (engine.clone(), restart.clone());
    Hooks {
        child_jobs: Arc::new(move || engine.active_jobs()),
        restart: Arc::new(move || restart.notify_one()),
    }
}

/// Runs the gateway until `shutdown` completes or the gateway's own upgrade
/// asks for a restart, with `children` (built from the configuration, or
/// given by a test or the demo).
pub async fn run_with(
    cfg: Config,
    children: Vec<Arc<dyn Child>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    started: Option<tokio::sync::oneshot::Sender<Handles>>,
) -> Result<Stopped, StartError> {
    run_inner(
        cfg,
        Built {
            children,
            coap: None,
            lwm2m: None,
        },
        shutdown,
        started,
    )
    .await
}

/// [`run_with`], with LwM2M onboarding and registration metrics when
/// `built` has them.
async fn run_inner(
    cfg: Config,
    built: Built,
    shutdown: impl Future<Output = ()> + Send + 'static,
    started: Option<tokio::sync::oneshot::Sender<Handles>>,
) -> Result<Stopped, StartError> {
    let Built {
        children,
        coap,
        lwm2m,
    } = built;
    let mut p = wire(&cfg, &children).await?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let onboarding = lwm2m.map(|l| {
        let o = Onboarding::new(
            p.platform.clone(),
            p.journal.clone(),
            l.net.clone(),
            p.engine.roster(),
            Setup {
                product_id: cfg.lwm2m.onboard_product_id.clone(),
                child_options: l.child_options,
                policy: cfg.ota.version_match,
            },
            stop_rx.clone(),
        );
        // Before the jobs resume: a job of an onboarded child finds it.
        let adopted: Vec<_> = l
            .adopted
            .iter()
            .map(|row| {
                let c = o.child(row);
                p.engine.roster().add(c.clone());
                l.net.allow_endpoint(&row.endpoint);
                info!(endpoint = %row.endpoint, device_id = %row.device_id, "onboarded LwM2M endpoint from an earlier run");
                c
            })
            .collect();
        (o, adopted)
    });
    if let Some((o, _)) = &onboarding {
        p.gateway = p.gateway.with_onboarding(o.clone());
    }
    let metrics_addr = p.listener.as_ref().and_then(|l| l.local_addr().ok());
    if let Some(l) = p.listener {
        let exporter = Exporter::with_coap(
            p.metrics.clone(),
            p.platform.clone(),
            p.engine.roster(),
            coap,
        );
        tokio::spawn(exporter::serve(l, exporter, stop_rx.clone()));
    }
    let control_socket = p.control.as_ref().map(|_| cfg.control_socket());
    let control = p.control.map(|l| {
        tokio::spawn(crate::control::serve(
            l,
            cfg.control_socket(),
            p.engine.clone(),
            stop_rx.clone(),
        ))
    });
    if let Some(s) = started {
        let _ = s.send(Handles {
            platform: p.platform.clone(),
            metrics: p.metrics,
            metrics_addr,
            control_socket,
            engine: p.engine.clone(),
        });
    }
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let gw = tokio::spawn(p.gateway.run(p.inbound, stopped(stop_rx.clone())));
    for c in &children {
        if let Some(presence) = c.presence() {
            let stop = stopped(stop_rx.clone());
            let (pl, j) = (p.platform.clone(), p.journal.clone());
            tokio::spawn(crate::ota::onboard::report_presence(
                pl,
                j,
                c.clone(),
                presence,
                stop,
            ));
        }
    }
    if let Some((o, adopted)) = onboarding {
        for c in adopted {
            o.follow(c);
        }
        tokio::spawn(o.run(stopped(stop_rx.clone())));
    }
    p.engine.resume().await;
    p.own.resume().await;
    let sess = tokio::spawn(p.session.run(stopped(stop_rx)));
    let how = tokio::select! {
        _ = shutdown => Stopped::Shutdown,
        _ = p.restart.notified() => Stopped::Restart,
    };
    info!(?how, "stopping");
    let _ = stop_tx.send(true);
    p.engine.shutdown();
    p.own.shutdown();
    if let Err(e) = sess.await {
        warn!("session task: {e}");
    }
    if let Err(e) = gw.await {
        warn!("gateway task: {e}");
    }
    // The socket is gone before a next run on the same state directory.
    if let Some(c) = control {
        if let Err(e) = c.await {
            warn!("control task: {e}");
        }
    }
    Ok(how)
}

/// Runs the gateway described by `cfg` until SIGINT or SIGTERM, or until
/// its own upgrade asks for a restart.
pub async fn run(cfg: Config) -> Result<Stopped, StartError> {
    let built = build(&cfg)?;
    info!(
        device_id = %cfg.platform.device_id, children = built.children.len(),
        config = %cfg.file.display(), "otabridge starting"
    );
    run_inner(cfg, built, shutdown_signal(), None).await
}

/// Completes on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        let term_fut = async {
            match term.as_mut() {
                Some(t) => {
                    t.recv().await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term_fut => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
