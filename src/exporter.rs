//! The metrics exporter (`[metrics] listen`, off by default): the counters
//! of [`crate::metrics`] with what is read at scrape time (build, MQTT link
//! state, outbox depth, children by transport, the drivers' retry
//! counters), encoded by `prometheus-client` as OpenMetrics text and served
//! over HTTP/1.1 by hyper.
//!
//! This is a high layer (docs/design.md, "Layout"): it reads `ota`'s phases,
//! the platform and the children, which the counters must not know. The
//! children are the daemon's one list of them, the [`Roster`] the engine
//! and the onboarding share, read at each scrape: an LwM2M client onboarded
//! while the daemon runs appears in the per-child families at the next
//! scrape, one deleted on the platform leaves them. The
//! endpoint answers `GET`/`HEAD /metrics` and `/`; it has no authentication,
//! so bind it to loopback or a management network.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::child::coap::{CoapNetwork, RegistryStats};
use crate::child::{Child, Roster};
use crate::metrics::{Escaped, JobPhase, Metrics};
use crate::ota::job::Phase;
use crate::platform::{LinkState, Platform};

/// The phases a running job can be in, in pipeline order.
const ACTIVE_PHASES: [Phase; 8] = [
    Phase::Queued,
    Phase::Downloading,
    Phase::Delivering,
    Phase::Activating,
    Phase::Verifying,
    Phase::Probing,
    Phase::Reverting,
    Phase::Confirming,
];

/// The media type of the exposition (OpenMetrics 1.0 text, which
/// Prometheus negotiates; prometheus-client writes nothing else).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Everything one scrape reads: the counters, the platform link and
/// outbox, and the children's drivers.
#[derive(Debug, Clone)]
pub struct Exporter {
    registry: Arc<Registry>,
    platform: Option<Platform>,
    outbox: Arc<AtomicI64>,
    /// The counters, whose per-child series follow `roster`.
    metrics: Metrics,
    /// The children driven now (shared with the engine and onboarding).
    roster: Roster,
}

/// The values read at scrape time.
#[derive(Debug)]
struct Live {
    platform: Platform,
    /// The children driven now, read at each scrape.
    roster: Roster,
    /// The CoAP network: its LwM2M registrations and registry counters.
    coap: Option<CoapNetwork>,
    /// The outbox depth, read from the journal (off the async workers)
    /// just before the scrape encodes; negative when it could not be read.
    outbox: Arc<AtomicI64>,
}

impl Exporter {
    /// An exporter over `metrics`, `platform` and the children of `roster`
    /// (as they are at each scrape); every series a dashboard expects is
    /// present from the first scrape, as zero.
    pub fn new(metrics: Metrics, platform: Platform, roster: Roster) -> Self {
        Self::with_coap(metrics, platform, roster, None)
    }

    /// [`Exporter::new`], with the LwM2M registrations of `coap` (the
    /// daemon's CoAP network, when it has one).
    pub fn with_coap(
        metrics: Metrics,
        platform: Platform,
        roster: Roster,
        coap: Option<CoapNetwork>,
    ) -> Self {
        let phases = ACTIVE_PHASES.map(Phase::as_str);
        let children = roster.all();
        let ids: Vec<&str> = children.iter().map(|c| c.device_id()).collect();
        metrics.declare(&phases, &ids);
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        let outbox = Arc::new(AtomicI64::new(-1));
        registry.register_collector(Box::new(Live {
            platform: platform.clone(),
            roster: roster.clone(),
            coap,
            outbox: outbox.clone(),
        }));
        Exporter {
            registry: Arc::new(registry),
            platform: Some(platform),
            outbox,
            metrics,
            roster,
        }
    }

    /// The exposition text of one scrape.
    pub async fn render(&self) -> String {
        if let Some(p) = &self.platform {
            let n = match p.outbox_len().await {
                Ok(n) => i64::try_from(n).unwrap_or(i64::MAX),
                Err(err) => {
                    warn!("metrics: cannot read the outbox depth: {err}");
                    -1
                }
            };
            self.outbox.store(n, Ordering::Relaxed);
        }
        // The counters' per-child series follow the children driven now.
        let children = self.roster.all();
        let ids: Vec<&str> = children.iter().map(|c| c.device_id()).collect();
        self.metrics.follow_children(&ids);
        let mut out = String::with_capacity(4096);
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// One gauge without labels.
fn gauge(e: &mut DescriptorEncoder<'_>, name: &str, help: &str, v: i64) -> std::fmt::Result {
    let family = e.encode_descriptor(name, help, None, MetricType::Gauge)?;
    ConstGauge::new(v).encode(family)
}

/// One gauge family with one series per label set.
fn gauges(
    e: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    series: impl IntoIterator<Item = (Vec<(&'static str, Escaped)>, i64)>,
) -> std::fmt::Result {
    let mut family = e.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, v) in series {
        ConstGauge::new(v).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

fn label(v: &str) -> Escaped {
    Escaped(v.to_owned())
}

impl Collector for Live {
    fn encode(&self, mut e: DescriptorEncoder<'_>) -> std::fmt::Result {
        gauges(
            &mut e,
            "otabridge_build_info",
            "Always 1; the version label names the running build.",
            [(vec![("version", label(env!("CARGO_PKG_VERSION")))], 1)],
        )?;
        let up = *self.platform.link_state().borrow() == LinkState::Up;
        gauge(
            &mut e,
            "otabridge_mqtt_connected",
            "1 while the MQTT session to the platform is up (SUBACK received), else 0.",
            i64::from(up),
        )?;
        // A journal that cannot be read leaves the series out of this
        // scrape rather than failing it.
        let n = self.outbox.load(Ordering::Relaxed);
        if n >= 0 {
            gauge(
                &mut e,
                "otabridge_outbox_reports",
                "Reports queued in the durable outbox, not yet acknowledged by the platform.",
                n,
            )?;
        }
        let children: Vec<Arc<dyn Child>> = self.roster.all();
        let mut by_transport = std::collections::BTreeMap::<&str, i64>::new();
        for c in &children {
            *by_transport.entry(c.transport()).or_default() += 1;
        }
        gauges(
            &mut e,
            "otabridge_children",
            "Children driven now (configured, and LwM2M clients onboarded), by transport.",
            by_transport
                .into_iter()
                .map(|(t, n)| (vec![("transport", label(t))], n)),
        )?;
        let mut family = e.encode_descriptor(
            "otabridge_chunk_retries",
            "Requests a child driver sent again (no answer in time, or a retryable error).",
            None,
            MetricType::Counter,
        )?;
        for c in &children {
            let labels = [
                ("child", label(c.device_id())),
                ("transport", label(c.transport())),
            ];
            ConstCounter::new(c.chunk_retries()).encode(family.encode_family(&labels)?)?;
        }
        self.registrations(&mut e)
    }
}

impl Live {
    /// The LwM2M registry's families (docs/operations.md "Metrics"):
    /// registrations now by binding and queue mode, and what the registry
    /// did since start. Present, at zero, without a CoAP network.
    fn registrations(&self, e: &mut DescriptorEncoder<'_>) -> std::fmt::Result {
        let mut by = std::collections::BTreeMap::<(String, bool), i64>::new();
        // Every dashboard finds the plain and the queue-mode UDP series.
        by.insert(("U".into(), false), 0);
        by.insert(("U".into(), true), 0);
        let stats = match &self.coap {
            Some(net) => {
                for r in net.registrations() {
                    let b: String = r.reg.binding.chars().filter(|c| *c != 'Q').collect();
                    *by.entry((b, r.reg.queue)).or_default() += 1;
                }
                net.registry_stats()
            }
            None => RegistryStats::default(),
        };
        gauges(
            e,
            "otabridge_lwm2m_registrations",
            "LwM2M clients registered with the gateway now, by binding and queue mode.",
            by.into_iter().map(|((b, q), n)| {
                (
                    vec![
                        ("binding", label(&b)),
                        ("queue", label(if q { "true" } else { "false" })),
                    ],
                    n,
                )
            }),
        )?;
        let mut family = e.encode_descriptor(
            "otabridge_lwm2m_registry_events",
            "LwM2M registry operations since start: register, update, deregister, expire, refuse (a 4.xx/5.03 answer).",
            None,
            MetricType::Counter,
        )?;
        for (event, n) in [
            ("register", stats.registers),
            ("update", stats.updates),
            ("deregister", stats.deregisters),
            ("expire", stats.expiries),
            ("refuse", stats.refused),
        ] {
            ConstCounter::new(n).encode(family.encode_family(&[("event", label(event))])?)?;
        }
        Ok(())
    }
}

/// The phase of a job, as the counters see it (the arrow points from
/// here to `metrics`, not back).
impl From<Phase> for JobPhase {
    fn from(p: Phase) -> JobPhase {
        JobPhase {
            label: p.as_str(),
            running: !p.is_terminal(),
        }
    }
}

/// Why the endpoint could not start.
#[derive(Debug, thiserror::Error)]
#[error("metrics.listen {addr}: cannot listen: {source}")]
pub struct ListenError {
    /// The configured address.
    pub addr: SocketAddr,
    /// What the OS said.
    #[source]
    pub source: std::io::Error,
}

/// Binds the endpoint's socket.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, ListenError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ListenError { addr, source })
}

/// Serves scrapes on `listener` until `stop` turns true (the loop and its
/// limits: [`crate::http`]).
pub async fn serve(listener: TcpListener, exporter: Exporter, stop: watch::Receiver<bool>) {
    if let Ok(a) = listener.local_addr() {
        info!("metrics on http://{a}/metrics");
    }
    let answer = move |req: Request<hyper::body::Incoming>| {
        let exporter = exporter.clone();
        async move { answer(&exporter, &req).await }
    };
    crate::http::serve("metrics", listener, answer, stop).await;
}

/// The answer to one request (hyper leaves out the body of a `HEAD`
/// answer and answers a malformed head 400 itself).
async fn answer<B>(exporter: &Exporter, req: &Request<B>) -> Response<Full<Bytes>> {
    let text = |status: StatusCode, body: &'static str| {
        let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
        *r.status_mut() = status;
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        r
    };
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n");
        r.headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    match req.uri().path() {
        "/metrics" => {
            let mut r = Response::new(Full::new(Bytes::from(exporter.render().await)));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static(CONTENT_TYPE),
            );
            r
        }
        "/" => text(StatusCode::OK, "otabridge: metrics at /metrics\n"),
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: metrics are at /metrics\n",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ask(method: Method, path: &str) -> Response<Full<Bytes>> {
        let exporter = Exporter {
            registry: Arc::new(Registry::default()),
            platform: None,
            outbox: Arc::new(AtomicI64::new(-1)),
            metrics: Metrics::default(),
            roster: Roster::default(),
        };
        let req = Request::builder()
            .method(method)
            .uri(path)
            .body(())
            .unwrap();
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(answer(&exporter, &req))
    }

    #[test]
    fn routes_requests() {
        let r = ask(Method::GET, "/metrics?x=1");
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()[header::CONTENT_TYPE], CONTENT_TYPE);
        assert_eq!(ask(Method::HEAD, "/metrics").status(), StatusCode::OK);
        assert_eq!(ask(Method::GET, "/").status(), StatusCode::OK);
        assert_eq!(ask(Method::GET, "/x").status(), StatusCode::NOT_FOUND);
        let r = ask(Method::POST, "/metrics");
        assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(r.headers()[header::ALLOW], "GET, HEAD");
    }
}
