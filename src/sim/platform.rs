//! A simulated IoTDA platform: an MQTT front door in front of rumqttd, and the
//! platform's application side that sends events and reads reports.
//!
//! ```text
//!  gateway ──MQTT(S)──► Edge ──MQTT──► rumqttd ◄──MQTT── SimPlatform (app side)
//! ```
//!
//! The [`Edge`] plays IoTDA's device access point:
//! - it terminates TLS (a generated CA and server certificate) when asked;
//! - it checks CONNECT like IoTDA does: client id
//!   `{device_id}_0_{0|1}_{yyyyMMddHH}`, username = device id, password =
//!   HMAC-SHA256(key = timestamp, message = secret), or a verified client
//!   certificate with no password; a refusal is CONNACK 4;
//! - it carries `$oc/...` topics: rumqttd refuses filters that start with `$`
//!   and never matches such topics, so the edge renames `$oc/` to `oc/` on the
//!   way in and back on the way out, packet by packet;
//! - it cuts every live connection on demand ([`Edge::cut`]) and can refuse
//!   new ones for a while, to test reconnects and the outbox.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use otabridge_codecs::iotda::{self, event, Event, EventTime, Incoming};
use rumqttc::{AsyncClient, ConnAck, ConnectReturnCode, MqttOptions, Packet, QoS};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::broker::LocalBroker;
use crate::clock::now_unix;

const MAX_PACKET: usize = 8 * 1024 * 1024;

/// Topics as the broker holds them.
const BROKER_PREFIX: &str = "oc/";
/// Topics as IoTDA names them.
const IOTDA_PREFIX: &str = "$oc/";

fn to_broker(t: &str) -> String {
    match t.strip_prefix(IOTDA_PREFIX) {
        Some(rest) => format!("{BROKER_PREFIX}{rest}"),
        None => t.to_owned(),
    }
}

fn to_iotda(t: &str) -> String {
    match t.strip_prefix(BROKER_PREFIX) {
        Some(rest) => format!("{IOTDA_PREFIX}{rest}"),
        None => t.to_owned(),
    }
}

/// A registered device's credentials.
#[derive(Debug, Clone)]
pub enum DeviceAuth {
    /// Secret authentication.
    Secret(String),
    /// X.509: the TLS layer verified the client certificate; no password.
    Certificate,
}

#[derive(Debug, Default)]
struct EdgeState {
    devices: HashMap<String, DeviceAuth>,
    live: Vec<JoinHandle<()>>,
    injectors: Vec<mpsc::UnboundedSender<Packet>>,
    refuse_until: Option<tokio::time::Instant>,
    connects: u32,
    refused: u32,
    /// PUBACKs to gateways wait this long on the way down.
    puback_delay: Option<Duration>,
}

/// The device access point. See the module documentation.
#[derive(Debug, Clone)]
pub struct Edge {
    addr: SocketAddr,
    state: Arc<Mutex<EdgeState>>,
}

/// Reads one MQTT packet, or `None` at a clean end of stream.
async fn read_packet<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut BytesMut,
) -> std::io::Result<Option<Packet>> {
    loop {
        match Packet::read(buf, MAX_PACKET) {
            Ok(p) => return Ok(Some(p)),
            Err(rumqttc::Error::InsufficientBytes(_)) => {}
            Err(e) => return Err(std::io::Error::other(format!("MQTT: {e:?}"))),
        }
        if r.read_buf(buf).await? == 0 {
            return Ok(None);
        }
    }
}

async fn write_packet<W: AsyncWrite + Unpin>(w: &mut W, p: &Packet) -> std::io::Result<()> {
    let mut out = BytesMut::new();
    p.write(&mut out, MAX_PACKET)
        .map_err(|e| std::io::Error::other(format!("MQTT: {e:?}")))?;
    w.write_all(&out).await
}

/// Checks CONNECT as IoTDA does (docs/protocols/iotda.md §1.1–1.2).
fn check_connect(
    devices: &HashMap<String, DeviceAuth>,
    c: &rumqttc::Connect,
) -> Result<(), String> {
    let login = c.login.as_ref().ok_or("no username")?;
    let auth = devices.get(&login.username).ok_or("unknown device")?;
    let rest = c
        .client_id
        .strip_prefix(&format!("{}_0_", login.username))
        .ok_or("client id does not start with {device_id}_0_")?;
    let (sig, ts) = rest.split_once('_').ok_or("client id has no timestamp")?;
    if ts.len() != 10 || !ts.bytes().all(|b| b.is_ascii_digit()) {
        return Err("client id timestamp is not yyyyMMddHH".into());
    }
    match sig {
        "0" => {}
        "1" => {
            let now = EventTime::from_unix(now_unix());
            let hour_before = EventTime::from_unix(now_unix() - 3600);
            if ts != now.client_id_timestamp() && ts != hour_before.client_id_timestamp() {
                return Err("timestamp does not match platform time".into());
            }
        }
        _ => return Err("signature type is not 0 or 1".into()),
    }
    match auth {
        DeviceAuth::Secret(secret) => {
            if login.password != iotda::credentials::password(ts, secret) {
                return Err("wrong password".into());
            }
        }
        DeviceAuth::Certificate => {
            if !login.password.is_empty() {
                return Err("certificate devices send no password".into());
            }
        }
    }
    Ok(())
}

impl Edge {
    /// Starts an edge on a free loopback port in front of `broker`. With
    /// `tls`, connections are TLS with that server configuration.
    pub async fn start(
        broker: LocalBroker,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> std::io::Result<Edge> {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), broker, tls).await
    }

    /// As [`Edge::start`], listening on `addr`.
    pub async fn start_on(
        addr: SocketAddr,
        broker: LocalBroker,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> std::io::Result<Edge> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let edge = Edge {
            addr,
            state: Arc::default(),
        };
        let me = edge.clone();
        let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
        tokio::spawn(async move {
            loop {
                let Ok((sock, peer)) = listener.accept().await else {
                    continue;
                };
                let me2 = me.clone();
                let acceptor = acceptor.clone();
                let task = tokio::spawn(async move {
                    let r = match acceptor {
                        Some(a) => match a.accept(sock).await {
                            Ok(s) => me2.serve(s, broker.addr).await,
                            Err(e) => Err(e),
                        },
                        None => me2.serve(sock, broker.addr).await,
                    };
                    if let Err(e) = r {
                        debug!(%peer, "edge connection ended: {e}");
                    }
                });
                let mut st = me.state.lock().unwrap();
                st.live.retain(|h| !h.is_finished());
                st.live.push(task);
            }
        });
        Ok(edge)
    }

    /// Where gateways connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Registers a device and how it authenticates.
    pub fn register(&self, device_id: &str, auth: DeviceAuth) {
        self.state
            .lock()
            .unwrap()
            .devices
            .insert(device_id.to_owned(), auth);
    }

    /// Drops every live connection at once, as a broken uplink would.
    pub fn cut(&self) {
        let mut st = self.state.lock().unwrap();
        for h in st.live.drain(..) {
            h.abort();
        }
    }

    /// Publishes `payload` on `topic` (QoS 0) straight down every live
    /// gateway connection, bypassing the broker: for payloads a broker would
    /// refuse or split, such as oversized events.
    pub fn inject(&self, topic: &str, payload: impl Into<Bytes>) {
        let payload = payload.into();
        let mut st = self.state.lock().unwrap();
        st.injectors.retain(|tx| {
            let p = rumqttc::Publish::from_bytes(topic, QoS::AtMostOnce, payload.clone());
            tx.send(Packet::Publish(p)).is_ok()
        });
    }

    /// Closes new connections without an answer for `d`.
    pub fn refuse_for(&self, d: Duration) {
        self.state.lock().unwrap().refuse_until = Some(tokio::time::Instant::now() + d);
    }

    /// Holds every PUBACK the broker sends to a gateway for `d` (and
    /// what follows it on that connection), as a slow uplink would;
    /// `None` ends the delay for later PUBACKs.
    pub fn delay_pubacks(&self, d: Option<Duration>) {
        self.state.lock().unwrap().puback_delay = d;
    }

    /// Successful CONNECTs so far.
    pub fn connects(&self) -> u32 {
        self.state.lock().unwrap().connects
    }

    /// CONNECTs refused for bad credentials so far.
    pub fn refused(&self) -> u32 {
        self.state.lock().unwrap().refused
    }

    async fn serve<S>(&self, client: S, broker: SocketAddr) -> std::io::Result<()>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        if let Some(until) = self.state.lock().unwrap().refuse_until {
            if tokio::time::Instant::now() < until {
                return Ok(());
            }
        }
        let (mut cr, mut cw) = tokio::io::split(client);
        let mut cbuf = BytesMut::new();
        let Some(first) = read_packet(&mut cr, &mut cbuf).await? else {
            return Ok(());
        };
        let Packet::Connect(connect) = &first else {
            return Err(std::io::Error::other("first packet is not CONNECT"));
        };
        let verdict = check_connect(&self.state.lock().unwrap().devices, connect);
        if let Err(why) = verdict {
            warn!(client_id = %connect.client_id, "edge refuses CONNECT: {why}");
            self.state.lock().unwrap().refused += 1;
            let ack = ConnAck::new(ConnectReturnCode::BadUserNamePassword, false);
            write_packet(&mut cw, &Packet::ConnAck(ack)).await?;
            cw.shutdown().await?;
            return Ok(());
        }
        self.state.lock().unwrap().connects += 1;
        let upstream = TcpStream::connect(broker).await?;
        upstream.set_nodelay(true)?;
        let (mut br, mut bw) = upstream.into_split();
        write_packet(&mut bw, &first).await?;
        let (inject_tx, mut inject_rx) = mpsc::unbounded_channel();
        self.state.lock().unwrap().injectors.push(inject_tx);
        let up = async move {
            loop {
                let Some(mut p) = read_packet(&mut cr, &mut cbuf).await? else {
                    break;
                };
                match &mut p {
                    Packet::Publish(pb) => pb.topic = to_broker(&pb.topic),
                    Packet::Subscribe(s) => {
                        for f in &mut s.filters {
                            f.path = to_broker(&f.path);
                        }
                    }
                    Packet::Unsubscribe(u) => {
                        for t in &mut u.topics {
                            *t = to_broker(t);
                        }
                    }
                    _ => {}
                }
                write_packet(&mut bw, &p).await?;
            }
            Ok::<_, std::io::Error>(())
        };
        let down = async move {
            let mut bbuf = BytesMut::new();
            loop {
                let p = tokio::select! {
                    p = read_packet(&mut br, &mut bbuf) => match p? {
                        Some(mut p) => {
                            if let Packet::Publish(pb) = &mut p {
                                pb.topic = to_iotda(&pb.topic);
                            }
                            p
                        }
                        None => break,
                    },
                    Some(p) = inject_rx.recv() => p,
                };
                if matches!(p, Packet::PubAck(_)) {
                    let delay = self.state.lock().unwrap().puback_delay;
                    if let Some(d) = delay {
                        tokio::time::sleep(d).await;
                    }
                }
                write_packet(&mut cw, &p).await?;
            }
            Ok::<_, std::io::Error>(())
        };
        tokio::select! {
            r = up => r,
            r = down => r,
        }
    }
}

/// A report the platform received.
#[derive(Debug, Clone)]
pub struct Received {
    /// The topic as the gateway published it (`$oc/devices/{gw}/sys/events/up`).
    pub topic: String,
    /// The raw payload.
    pub payload: Bytes,
    /// The parsed events, when the payload is a valid envelope.
    pub events: Option<Vec<Incoming>>,
}

/// How the simulated platform answers `add_sub_device_request`
/// ([`SimPlatform::answer_add_sub_devices`]).
#[derive(Debug, Clone, Default)]
pub struct AddAnswers {
    /// Node ids it refuses (`failed_devices`, error code `IOTDA.000001`);
    /// it adds every other one as `{product_id}_{node_id}`.
    pub refuse: Vec<String>,
}

/// The `add_sub_device_response` IoTDA would send for `req` (docs/protocols/iotda.md
/// §5.5), as `answers` says.
pub fn add_response(
    req: &event::AddSubDeviceRequest,
    gateway_id: &str,
    answers: &AddAnswers,
) -> event::SubDeviceResponse {
    let mut r = event::SubDeviceResponse::default();
    for d in &req.devices {
        if answers.refuse.contains(&d.node_id) {
            r.failed_devices.push(event::FailedDevice {
                device_id: None,
                node_id: Some(d.node_id.clone()),
                error_code: "IOTDA.000001".into(),
                error_msg: "refused by the simulated platform".into(),
            });
        } else {
            let id = d
                .device_id
                .clone()
                .unwrap_or_else(|| format!("{}_{}", d.product_id, d.node_id));
            r.successful_devices.push(serde_json::json!({
                "parent_device_id": gateway_id,
                "node_id": d.node_id,
                "device_id": id,
                "name": d.name.clone().unwrap_or_default(),
                "product_id": d.product_id,
                "status": "OFFLINE",
            }));
        }
    }
    r
}

/// The platform's application side: sends events to gateways, reads reports.
#[derive(Debug)]
pub struct SimPlatform {
    client: AsyncClient,
    rx: mpsc::UnboundedReceiver<Received>,
    /// Answers to `add_sub_device_request`, when set.
    add: Arc<Mutex<Option<AddAnswers>>>,
}

impl SimPlatform {
    /// Connects to `broker` and listens to every device's upstream topics.
    pub async fn connect(broker: LocalBroker) -> std::io::Result<SimPlatform> {
        let id = format!("sim-platform-{}", std::process::id());
        let mut o = MqttOptions::new(id, broker.addr.ip().to_string(), broker.addr.port());
        o.set_max_packet_size(MAX_PACKET, MAX_PACKET);
        o.set_keep_alive(Duration::from_secs(30));
        let (client, mut el) = AsyncClient::new(o, 256);
        let (tx, rx) = mpsc::unbounded_channel();
        let (ready_tx, mut ready_rx) = mpsc::channel(1);
        let add: Arc<Mutex<Option<AddAnswers>>> = Arc::default();
        let (answers, answerer) = (add.clone(), client.clone());
        tokio::spawn(async move {
            loop {
                match el.poll().await {
                    Ok(rumqttc::Event::Incoming(Packet::SubAck(_))) => {
                        let _ = ready_tx.try_send(());
                    }
                    Ok(rumqttc::Event::Incoming(Packet::Publish(p))) => {
                        let events = event::parse(&p.payload).ok();
                        let policy = answers.lock().ok().and_then(|a| a.clone());
                        if let (Some(a), Some(evs)) = (policy, &events) {
                            answer_adds(&answerer, &to_iotda(&p.topic), evs, &a);
                        }
                        let r = Received {
                            topic: to_iotda(&p.topic),
                            payload: p.payload,
                            events,
                        };
                        if tx.send(r).is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        debug!("sim platform connection: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        });
        // Everything devices send upstream (docs/protocols/iotda.md §2), not the platform's
        // own downstream publishes.
        let ups = [
            "oc/devices/+/sys/events/up",
            "oc/devices/+/sys/messages/up",
            "oc/devices/+/sys/properties/report",
            "oc/devices/+/sys/gateway/sub_devices/properties/report",
            "oc/devices/+/sys/commands/response/#",
            "oc/devices/+/sys/properties/set/response/#",
            "oc/devices/+/sys/properties/get/response/#",
        ];
        client
            .subscribe_many(
                ups.iter()
                    .map(|t| rumqttc::SubscribeFilter::new(t.to_string(), QoS::AtLeastOnce)),
            )
            .await
            .map_err(std::io::Error::other)?;
        tokio::time::timeout(Duration::from_secs(10), ready_rx.recv())
            .await
            .map_err(|_| std::io::Error::other("sim platform: no SUBACK from the broker"))?;
        info!("simulated platform listening");
        Ok(SimPlatform { client, rx, add })
    }

    /// From now on, answers every `add_sub_device_request` as IoTDA would
    /// (with the request's `event_id`), adding or refusing as `answers`
    /// says; the request is still received ([`SimPlatform::recv`]).
    pub fn answer_add_sub_devices(&self, answers: AddAnswers) {
        if let Ok(mut a) = self.add.lock() {
            *a = Some(answers);
        }
    }

    /// Sends `ev` with an `event_id` (a response to a gateway's request).
    pub async fn send_with_id(
        &self,
        gateway_id: &str,
        ev: &Event,
        event_id: &str,
    ) -> std::io::Result<()> {
        let payload = event::encode(None, ev, EventTime::from_unix(now_unix()), Some(event_id));
        self.send_raw(gateway_id, "sys/events/down", payload).await
    }

    /// Sends `ev` to gateway `gateway_id` about `object_device_id`.
    pub async fn send(
        &self,
        gateway_id: &str,
        object_device_id: Option<&str>,
        ev: &Event,
    ) -> std::io::Result<()> {
        let payload = event::encode(object_device_id, ev, EventTime::from_unix(now_unix()), None);
        self.send_raw(gateway_id, "sys/events/down", payload).await
    }

    /// Publishes any payload on `$oc/devices/{gateway_id}/{suffix}`.
    pub async fn send_raw(
        &self,
        gateway_id: &str,
        suffix: &str,
        payload: impl Into<Vec<u8>>,
    ) -> std::io::Result<()> {
        let topic = format!("{BROKER_PREFIX}devices/{gateway_id}/{suffix}");
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .map_err(std::io::Error::other)
    }

    /// A report already received, without waiting.
    pub fn try_recv(&mut self) -> Option<Received> {
        self.rx.try_recv().ok()
    }

    /// The next report from any gateway, waiting at most `within`.
    pub async fn recv(&mut self, within: Duration) -> Option<Received> {
        tokio::time::timeout(within, self.rx.recv())
            .await
            .ok()
            .flatten()
    }
}

/// Publishes an `add_sub_device_response` for each `add_sub_device_request`
/// among `events`, received on `topic` (`$oc/devices/{gw}/sys/events/up`).
/// Runs inside the event loop's task: `try_publish`, never waiting.
fn answer_adds(client: &AsyncClient, topic: &str, events: &[Incoming], a: &AddAnswers) {
    let Some(gw) = topic.split('/').nth(2) else {
        return;
    };
    for inc in events {
        let Event::AddSubDeviceRequest(req) = &inc.event else {
            continue;
        };
        let ev = Event::AddSubDeviceResponse(add_response(req, gw, a));
        let payload = event::encode(
            None,
            &ev,
            EventTime::from_unix(now_unix()),
            inc.event_id.as_deref(),
        );
        let t = format!("{BROKER_PREFIX}devices/{gw}/sys/events/down");
        if let Err(e) = client.try_publish(t, QoS::AtLeastOnce, false, payload) {
            warn!("sim platform: cannot answer add_sub_device_request: {e}");
        }
    }
}

/// A test CA, and a server certificate it signed.
#[derive(Debug)]
pub struct TestPki {
    /// The CA certificate, PEM.
    pub ca_pem: String,
    /// The server's certificate chain and key, as rustls wants them.
    pub server: Arc<rustls::ServerConfig>,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl TestPki {
    /// A fresh CA and a server certificate for `names` (DNS names or IPs).
    pub fn new(names: &[&str]) -> Result<TestPki, PkiError> {
        Self::with_client_roots(names, false)
    }

    /// As [`TestPki::new`]; with `require_client_cert`, the server demands a
    /// client certificate signed by the same CA.
    pub fn with_client_roots(
        names: &[&str],
        require_client_cert: bool,
    ) -> Result<TestPki, PkiError> {
        let ca_key = rcgen::KeyPair::generate()?;
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "otabridge test CA");
        let ca = ca_params.self_signed(&ca_key)?;
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let srv_key = rcgen::KeyPair::generate()?;
        let srv_params =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())?;
        let srv = srv_params.signed_by(&srv_key, &issuer)?;
        let chain = vec![srv.der().clone()];
        let key = rustls_pki_types::PrivateKeyDer::Pkcs8(srv_key.serialize_der().into());
        let builder = rustls::ServerConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()?;
        let builder = if require_client_cert {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(ca.der().clone())?;
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                crate::tls::provider(),
            )
            .build()
            .map_err(|e| PkiError::Tls(rustls::Error::General(e.to_string())))?;
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let server = builder.with_single_cert(chain, key)?;
        Ok(TestPki {
            ca_pem: ca.pem(),
            server: Arc::new(server),
            issuer,
        })
    }

    /// A client certificate and key (PEM) signed by this CA.
    pub fn client_cert(&self, cn: &str) -> Result<(String, String), rcgen::Error> {
        let key = rcgen::KeyPair::generate()?;
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

/// A test PKI that could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// Certificate generation failed.
    #[error("certificate generation: {0}")]
    Rcgen(#[from] rcgen::Error),
    /// rustls refused the generated material.
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
}
