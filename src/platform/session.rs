//! The MQTT session loop: connect, subscribe, drain the outbox, reconnect.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use otabridge_codecs::iotda::{topic, Credentials, EventTime, SignatureType};
use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, EventLoop, MqttOptions, Outgoing,
    Packet, QoS, TlsConfiguration, Transport,
};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use super::{LinkState, Platform};
use crate::clock::now_unix;
use crate::config::{Auth, PlatformConfig};
use crate::journal::{OutboxEntry, SharedJournal};
use crate::retry::{Backoff, RetryPolicy};
use crate::tls::{self, TlsError};

/// Reports handed to rumqttc and not yet acknowledged, at most.
const WINDOW: usize = 32;
/// The largest inbound publish accepted on the wire. IoTDA caps payloads at
/// 1 MB (docs/protocols/iotda.md §1.3); anything larger is refused by rumqttc, and payloads
/// between the platform limit and this one reach the daemon to be logged.
const MAX_INBOUND_PACKET: usize = 2 * 1024 * 1024;
/// How often reports held in memory and acknowledged rows that could not be
/// deleted are tried again while the journal's disk is full.
const JOURNAL_FULL_RETRY: Duration = Duration::from_secs(1);
/// How long a clean stop waits for the PUBACKs of reports already
/// published, so that the next start does not send them again. Reports
/// not yet published stay in the outbox untouched.
const SHUTDOWN_DRAIN: Duration = Duration::from_secs(2);

/// What the session hands to the daemon.
#[derive(Debug, Clone)]
pub enum Inbound {
    /// A CONNACK arrived: the daemon announces its children's states.
    Connected,
    /// A publish on one of the gateway's topics.
    Message {
        /// Its topic.
        topic: String,
        /// Its payload.
        payload: Bytes,
    },
}

/// Why one connection ended.
#[derive(Debug)]
enum Ended {
    /// The shutdown future completed.
    Shutdown,
    /// The broker refused the credentials.
    Refused(ConnectReturnCode),
    /// Any other failure: network, TLS, protocol.
    Failed(String),
}

/// Owns the connection to the platform. Run it with [`Session::run`].
#[derive(Debug)]
pub struct Session {
    cfg: PlatformConfig,
    platform: Platform,
    inbound: mpsc::Sender<Inbound>,
    backoff: Backoff,
    tls: Option<Arc<rustls::ClientConfig>>,
}

/// A token bucket: `rate` messages per second, bursts of at most `rate`.
#[derive(Debug)]
struct Bucket {
    rate: f64,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn new(rate: u32) -> Self {
        Bucket {
            rate: f64::from(rate),
            tokens: f64::from(rate),
            at: Instant::now(),
        }
    }

    fn refill(&mut self) {
        let now = Instant::now();
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + dt * self.rate).min(self.rate);
        self.at = now;
    }

    fn try_take(&mut self) -> bool {
        self.refill();
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    fn next_token_at(&self) -> Instant {
        let missing = (1.0 - self.tokens).max(0.0);
        self.at + Duration::from_secs_f64(missing / self.rate)
    }
}

impl Session {
    /// A session for `cfg`, reporting through `platform`, handing inbound
    /// publishes to `inbound`. TLS material is loaded here, so a bad
    /// `ca_file` or key fails at start-up, not at the first connect.
    pub fn new(
        cfg: PlatformConfig,
        platform: Platform,
        inbound: mpsc::Sender<Inbound>,
        seed: u64,
    ) -> Result<Self, TlsError> {
        let tls = if cfg.tls {
            let roots = tls::roots(cfg.ca_file.as_deref())?;
            let client_auth = match &cfg.auth {
                Auth::Certificate {
                    cert_file,
                    key_file,
                } => Some((tls::load_certs(cert_file)?, tls::load_key(key_file)?)),
                Auth::Secret(_) => None,
            };
            Some(Arc::new(tls::client_config(roots, client_auth)?))
        } else {
            None
        };
        Ok(Session {
            cfg,
            platform,
            inbound,
            backoff: RetryPolicy::until_deadline(Duration::from_secs(1), Duration::from_secs(30))
                .seeded(seed)
                .backoff(),
            tls,
        })
    }

    fn options(&self) -> MqttOptions {
        let sig = if self.cfg.verify_timestamp {
            SignatureType::TimestampCheck
        } else {
            SignatureType::NoTimestampCheck
        };
        let now = EventTime::from_unix(now_unix());
        let creds = match &self.cfg.auth {
            Auth::Secret(s) => Credentials::with_secret(&self.cfg.device_id, s.expose(), sig, now),
            Auth::Certificate { .. } => {
                Credentials::with_certificate(&self.cfg.device_id, sig, now)
            }
        };
        let mut o = MqttOptions::new(creds.client_id.clone(), &self.cfg.host, self.cfg.port);
        o.set_keep_alive(Duration::from_secs(self.cfg.keepalive_secs));
        o.set_clean_session(true);
        o.set_max_packet_size(MAX_INBOUND_PACKET, 1024 * 1024 + 4096);
        o.set_inflight(WINDOW as u16);
        match creds.password {
            Some(p) => o.set_credentials(creds.username, p),
            // X.509: username only, as the SDKs do (docs/protocols/iotda.md §1.2).
            None => o.set_credentials(creds.username, ""),
        };
        if let Some(tls) = &self.tls {
            o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
                tls.clone(),
            )));
        }
        o
    }

    /// Runs until `shutdown` completes: connects, serves, and reconnects with
    /// exponential backoff and jitter (1 s to 30 s); refused credentials are
    /// retried at the slowest interval.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            let ended = self.connection(&mut shutdown).await;
            self.platform.set_link(LinkState::Down);
            let delay = match ended {
                Ended::Shutdown => return,
                Ended::Refused(code) => {
                    error!(
                        device_id = %self.cfg.device_id,
                        "platform refused the connection ({code:?}): check platform.device_id and \
                         the secret or certificate; retrying at the slowest interval"
                    );
                    self.backoff.slowest()
                }
                Ended::Failed(why) => {
                    let d = self.backoff.next_delay();
                    warn!(
                        "platform connection lost: {why}; reconnecting in {:.1} s",
                        d.as_secs_f64()
                    );
                    d
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = &mut shutdown => return,
            }
        }
    }

    async fn connection(&mut self, shutdown: &mut (impl Future<Output = ()> + Unpin)) -> Ended {
        let opts = self.options();
        let client_id = opts.client_id();
        let (client, mut eventloop) = AsyncClient::new(opts, 64);
        // Wait for the CONNACK before anything else.
        let connack = tokio::select! {
            r = eventloop.poll() => r,
            _ = &mut *shutdown => return Ended::Shutdown,
        };
        match connack {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {}
            Ok(other) => return Ended::Failed(format!("expected CONNACK, got {other:?}")),
            Err(ConnectionError::ConnectionRefused(code)) => return Ended::Refused(code),
            Err(e) => return Ended::Failed(e.to_string()),
        }
        info!(
            host = %self.cfg.host, port = self.cfg.port, %client_id,
            "connected to the platform"
        );
        self.backoff.reset();
        // One SUBSCRIBE for every topic; the link counts as up when its
        // SUBACK arrives, so that nothing sent to us after that is lost.
        let filters = topic::subscriptions(&self.cfg.device_id)
            .into_iter()
            .map(|t| rumqttc::SubscribeFilter::new(t, QoS::AtLeastOnce));
        if let Err(e) = client.try_subscribe_many(filters) {
            return Ended::Failed(format!("subscribe: {e}"));
        }
        if self.inbound.send(Inbound::Connected).await.is_err() {
            return Ended::Shutdown;
        }
        let ended = self.serve(&client, &mut eventloop, shutdown).await;
        if matches!(ended, Ended::Shutdown) {
            // Say goodbye so the broker does not wait for the keepalive.
            let _ = client.try_disconnect();
            let _ = tokio::time::timeout(Duration::from_millis(500), eventloop.poll()).await;
        }
        ended
    }

    /// The connected phase: publish the outbox, route acks and publishes.
    async fn serve(
        &mut self,
        client: &AsyncClient,
        eventloop: &mut EventLoop,
        shutdown: &mut (impl Future<Output = ()> + Unpin),
    ) -> Ended {
        let mut outbox = Outbox::new(self.platform.journal().clone());
        let mut bucket = Bucket::new(self.cfg.max_messages_per_sec);
        loop {
            // While the journal's disk is full, reports wait in memory and
            // acknowledged rows stay in the outbox: both are tried again
            // every second (issue 17 item 6).
            let rate_wait = match outbox.fill(client, &mut bucket).await {
                Ok(w) => w,
                Err(ended) => return ended,
            };
            let full = self.platform.held() > 0 || !outbox.undeleted.is_empty();
            let retry_full = async {
                if !full {
                    std::future::pending::<()>().await;
                }
                tokio::time::sleep(JOURNAL_FULL_RETRY).await;
            };
            let rate_sleep = async {
                match rate_wait {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                ev = eventloop.poll() => match ev {
                    Ok(Event::Outgoing(Outgoing::Publish(pkid))) => outbox.published(pkid),
                    Ok(Event::Incoming(Packet::PubAck(ack))) => {
                        if let Err(ended) = outbox.acked(ack.pkid).await {
                            return ended;
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let msg = Inbound::Message { topic: p.topic.clone(), payload: p.payload };
                        if self.inbound.send(msg).await.is_err() {
                            return Ended::Shutdown;
                        }
                    }
                    Ok(Event::Incoming(Packet::SubAck(ack))) => {
                        self.platform.set_link(LinkState::Up);
                        for rc in &ack.return_codes {
                            if matches!(rc, rumqttc::SubscribeReasonCode::Failure) {
                                warn!("the platform refused a subscription (pkid {})", ack.pkid);
                            }
                        }
                    }
                    Ok(_) => {}
                    Err(ConnectionError::ConnectionRefused(code)) => return Ended::Refused(code),
                    Err(e) => return Ended::Failed(e.to_string()),
                },
                // New reports: read the outbox again.
                _ = self.platform.woken() => outbox.drained = false,
                _ = rate_sleep => {}
                _ = retry_full => {
                    self.platform.flush_held().await;
                    outbox.drained = false;
                    if let Err(ended) = outbox.delete_acked().await {
                        return ended;
                    }
                }
                _ = &mut *shutdown => return drain(eventloop, &mut outbox).await,
            }
        }
    }
}

/// A clean stop: waits (at most [`SHUTDOWN_DRAIN`]) for the PUBACKs of
/// what this connection published, deleting their rows, and publishes
/// nothing new. Rows still unacknowledged then are sent again at the next
/// start (at least once, as after a power cut). Inbound publishes that
/// arrive meanwhile are not handed on: the dispatcher is stopping.
async fn drain(eventloop: &mut EventLoop, outbox: &mut Outbox) -> Ended {
    let until = tokio::time::Instant::now() + SHUTDOWN_DRAIN;
    while !(outbox.awaiting_pkid.is_empty() && outbox.inflight.is_empty()) {
        match tokio::time::timeout_at(until, eventloop.poll()).await {
            Ok(Ok(Event::Outgoing(Outgoing::Publish(pkid)))) => outbox.published(pkid),
            Ok(Ok(Event::Incoming(Packet::PubAck(ack)))) => {
                if outbox.acked(ack.pkid).await.is_err() {
                    break;
                }
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                info!("stopping: the connection ended while waiting for acknowledgements: {e}");
                break;
            }
            Err(_) => {
                info!(
                    unacknowledged = outbox.awaiting_pkid.len() + outbox.inflight.len(),
                    "stopping: reports not acknowledged within {} s are sent again at the next start",
                    SHUTDOWN_DRAIN.as_secs()
                );
                break;
            }
        }
    }
    Ended::Shutdown
}

/// The outbox as one connection publishes it: rows read from the journal,
/// handed to rumqttc in id order, deleted when their PUBACK arrives.
struct Outbox {
    journal: SharedJournal,
    /// Rows read but not yet handed to rumqttc.
    queued: VecDeque<OutboxEntry>,
    /// The highest outbox id read in this connection.
    read_up_to: i64,
    /// Ids handed to rumqttc, waiting for their packet id, in order:
    /// rumqttc emits `Outgoing::Publish(pkid)` in the order it was given
    /// the publishes, and only this task publishes.
    awaiting_pkid: VecDeque<i64>,
    /// Published and not acknowledged yet, by packet id.
    inflight: HashMap<u16, i64>,
    /// The last read found no more rows.
    drained: bool,
    /// Acknowledged rows the journal could not delete (its disk was full),
    /// oldest first: deleted later ([`Outbox::delete_acked`]); they are not
    /// read again in this connection.
    undeleted: Vec<i64>,
    /// The full disk that kept rows in the outbox was logged.
    undeleted_warned: bool,
}

impl Outbox {
    fn new(journal: SharedJournal) -> Self {
        Outbox {
            journal,
            queued: VecDeque::new(),
            read_up_to: 0,
            awaiting_pkid: VecDeque::new(),
            inflight: HashMap::new(),
            drained: false,
            undeleted: Vec::new(),
            undeleted_warned: false,
        }
    }

    /// Hands as many reports to rumqttc as the window and the rate allow;
    /// when the rate stopped it, when the next token comes.
    async fn fill(
        &mut self,
        client: &AsyncClient,
        bucket: &mut Bucket,
    ) -> Result<Option<Instant>, Ended> {
        while self.awaiting_pkid.len() + self.inflight.len() < WINDOW {
            if self.queued.is_empty() && !self.drained {
                let after = self.read_up_to;
                let rows = self
                    .journal
                    .run(move |j| j.outbox_after(after, WINDOW))
                    .await
                    .map_err(|e| Ended::Failed(format!("reading the outbox: {e}")))?;
                self.drained = rows.len() < WINDOW;
                if let Some(last) = rows.last() {
                    self.read_up_to = last.id;
                }
                self.queued.extend(rows);
            }
            let Some(next) = self.queued.front() else {
                break;
            };
            if !bucket.try_take() {
                return Ok(Some(bucket.next_token_at()));
            }
            let (topic, payload) = (next.topic.clone(), next.payload.clone());
            match client.try_publish(topic, QoS::AtLeastOnce, false, payload) {
                Ok(()) => {
                    self.awaiting_pkid.push_back(next.id);
                    self.queued.pop_front();
                }
                // The request channel is full: wait for the event loop.
                Err(_) => break,
            }
        }
        Ok(None)
    }

    /// rumqttc sent the next publish with packet id `pkid`.
    fn published(&mut self, pkid: u16) {
        if let Some(id) = self.awaiting_pkid.pop_front() {
            self.inflight.insert(pkid, id);
        }
    }

    /// The broker acknowledged `pkid`: its row leaves the outbox.
    async fn acked(&mut self, pkid: u16) -> Result<(), Ended> {
        if let Some(id) = self.inflight.remove(&pkid) {
            self.undeleted.push(id);
            debug!(id, "report acknowledged");
        }
        self.delete_acked().await
    }

    /// Deletes the acknowledged rows. A full disk keeps them for later (a
    /// restart before then sends them again: at least once, as QoS 1);
    /// any other journal failure ends the connection.
    async fn delete_acked(&mut self) -> Result<(), Ended> {
        if self.undeleted.is_empty() {
            return Ok(());
        }
        let ids = std::mem::take(&mut self.undeleted);
        let (r, left) = self
            .journal
            .run(move |j| {
                for (n, id) in ids.iter().enumerate() {
                    if let Err(e) = j.outbox_delete(*id) {
                        return (Err(e), ids[n..].to_vec());
                    }
                }
                (Ok(()), Vec::new())
            })
            .await;
        match r {
            Ok(()) => {
                self.undeleted_warned = false;
                Ok(())
            }
            Err(e) if e.is_disk_full() => {
                if !self.undeleted_warned {
                    self.undeleted_warned = true;
                    warn!(
                        "acknowledged reports stay in the outbox until the journal has room: {e}"
                    );
                }
                self.undeleted = left;
                Ok(())
            }
            Err(e) => Err(Ended::Failed(format!("updating the outbox: {e}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn bucket_paces_to_the_rate() {
        let mut b = Bucket::new(50);
        let mut sent = 0;
        let start = Instant::now();
        while sent < 150 {
            if b.try_take() {
                sent += 1;
            } else {
                tokio::time::sleep_until(b.next_token_at()).await;
            }
        }
        // 50 at once, then 100 more at 50/s: two seconds of paced sending.
        let took = Instant::now() - start;
        assert!(
            took >= Duration::from_millis(1990) && took <= Duration::from_millis(2100),
            "{took:?}"
        );
    }
}
