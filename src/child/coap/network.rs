//! The CoAP network: one UDP socket for every CoAP child and for the Block2
//! package server, driven by one task that owns the codecs' [`Peers`] (the
//! peer engine: message layer, NSTART per peer, held requests, pushes).
//!
//! Why one socket: children answer requests from the address they were sent
//! from, and a pull child fetches its package from the address written into
//! /5/0/1, so the gateway has one CoAP endpoint (`coap.listen`) and
//! demultiplexes by peer address (the exchange engine matches responses by
//! token and peer, RFC 7252 §5.3.2). Why one task: the message layer
//! (message ids, retransmission, deduplication) and the per-peer scheduling
//! are one state machine per endpoint; children talk to it through a
//! channel and wait on a oneshot.
//!
//! The task is a thin driver of the codecs' peer engine (the loop of
//! `otabridge_codecs::coap`'s module doc): it moves datagrams between the
//! socket and [`Peers`], arms one timer from [`Peers::poll_timeout`], hands
//! commands from children to the engine and the engine's events back to
//! them, and answers Block2 GETs from the package files. It decides
//! nothing about the protocol: NSTART, which request goes next, when a
//! push's next block goes, retransmission are the engine's. Nothing in it
//! grows with a package's size: blocks are read from files by offset
//! (`pread`).
//!
//! Why Block1 pushes run inside the task ([`CoapNetwork::start_push`]): a
//! push is lock-step (one block in flight), so its speed is the time from
//! one block's response to the next block's request. Through a channel and
//! a oneshot that time was two task wake-ups, often on other threads: on the
//! 2-core build host about 25 µs of a 35 µs block (measured with timestamps
//! around `recv_from` and `send_to`), which made a 4 MiB push 1.4-3 times
//! slower than coap-client's single loop. In the engine, the datagram that
//! answers a block leads to the next block inside the same
//! [`Peers::handle_datagram`] call, so it leaves in the same loop
//! iteration; the caller hears only coarse progress (`PROGRESS_STEPS`) and
//! the end, while "bytes acknowledged at t" is updated for every block
//! ([`PushHandle::acked`]) without waking anyone.
//!
//! # Registrations (issue 13, docs/coap.md)
//! The same socket is the LwM2M server children register with: requests
//! under `/rd` go to the codecs' [`Registry`] (Register, Update,
//! De-register, expiry). A child configured with `endpoint` is reached at
//! the address it last registered or updated from ([`CoapNetwork::request_to`]
//! resolves it at send time, in the task); a queue-mode client's requests
//! wait in the registry until it next wakes. Registrations are journaled
//! ([`super::registrations`]) and restored at [`CoapNetwork::bind`];
//! presence changes go out through [`CoapNetwork::presence`].
//!
//! # Observations (RFC 7641, issue 13)
//! [`CoapNetwork::observe_to`] sends a GET with `Observe: 0`; when the
//! child's answer carries the Observe option the caller gets an
//! [`Observation`] besides the answer, and the peer engine's
//! notifications for it go to that handle (at most `NOTIFY_QUEUE`
//! waiting; more are dropped, the newest state comes with the next one
//! or the caller's safety read). Dropping the handle cancels the
//! observation in the engine: the child's next notification gets RST
//! (RFC 7641 §3.6).

use std::collections::HashMap;
use std::fs::File;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use otabridge_codecs::coap::update::optional_read_wait;
use otabridge_codecs::coap::{
    msg, observe, serve_block2, Block1Push, Code, ExchangeConfig, OpId, PackageInfo, PackageStore,
    Packet, PeerEvent, Peers, PushConfig, PushEvent, PushFailure, ReadAt, ReadError, ServeConfig,
    ServedBlock, StartPushError, TransportFailure,
};
use otabridge_codecs::lwm2m::registry::{
    self, Registration, Registry, RegistryConfig, RegistryEvent, Route,
};
use otabridge_codecs::time::Instant as EngineInstant;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot, watch, Notify, OwnedSemaphorePermit, Semaphore};
use tracing::{debug, info, warn};

use super::registrations::{self, Row, Writer};
use super::seam::{Dir, LinkFaults, Seam};
use crate::config::{CoapAddress, CoapConfig};

/// The largest datagram read from the socket: a 1024-byte block plus
/// header and options fits in 1152 (RFC 7252 §4.6); bigger ones are cut
/// and then fail to decode, which is the right answer for them.
const MAX_DATAGRAM: usize = 1500;

/// Receive buffer asked for the shared socket. With many children at once
/// (one response in flight each) the default 208 KiB overflows and the
/// kernel drops datagrams, each costing a 2-3 s retransmission timeout;
/// the kernel caps the request at `net.core.rmem_max`.
const RECV_BUFFER: usize = 4 * 1024 * 1024;

/// Pending served-block notices per pull watcher; more are dropped, which
/// only makes progress coarser (the next block carries a larger offset).
const WATCH_QUEUE: usize = 64;

/// A running push wakes its caller with progress about this many times per
/// image (at most once per block, and at its end): progress is for resume
/// journals and status, and a wake-up per block costs CPU the transfer
/// needs (a 4 MiB push: 64 wake-ups instead of 4096). A resume re-sends at
/// most 1/64 of the image. Liveness does not depend on it: every block's
/// acknowledgement is readable at once through [`PushHandle::acked`].
const PROGRESS_STEPS: u32 = 64;

/// Notifications waiting per [`Observation`]; more are dropped.
const NOTIFY_QUEUE: usize = 16;

/// How the network behaves; [`NetworkOptions::from_config`] gives the
/// daemon's values, tests shorten the timers.
#[derive(Debug, Clone)]
pub struct NetworkOptions {
    /// The local endpoint (`coap.listen`); port 0 picks a free port.
    pub listen: SocketAddr,
    /// Address written into /5/0/1 (`coap.advertise`); `None`: the local
    /// address the child is reached from, with our port.
    pub advertise: Option<SocketAddr>,
    /// Transfers running at once on this network (`coap.max_concurrent_transfers`).
    pub max_concurrent_transfers: usize,
    /// The message layer's timers, retransmission and seed (RFC 7252 §4.8
    /// defaults).
    pub exchange: ExchangeConfig,
    /// The largest Block2 size served, as SZX 0..=6.
    pub max_block_szx: u8,
    /// A lossy link at the socket seam (tests and benches; never from the
    /// config): see [`super::seam`].
    pub faults: Option<LinkFaults>,
    /// The LwM2M registry's limits and timers (`coap.queue_window_secs`).
    pub registry: RegistryConfig,
    /// Where registrations are journaled (`state.dir`); `None`: not kept
    /// across restarts.
    pub state_dir: Option<PathBuf>,
}

impl NetworkOptions {
    /// The options of `[coap]`, RFC 7252 timing, a seed from the clock so
    /// that two gateways do not start with the same message ids.
    pub fn from_config(c: &CoapConfig) -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
            ^ u64::from(std::process::id());
        let mut o = NetworkOptions {
            advertise: c.advertise,
            max_concurrent_transfers: c.max_concurrent_transfers,
            ..Self::new(c.listen, seed)
        };
        o.registry.queue_window = Duration::from_secs(c.queue_window_secs);
        o
    }

    /// Options for a network on `listen` with RFC 7252 timing and `seed`.
    pub fn new(listen: SocketAddr, seed: u64) -> Self {
        NetworkOptions {
            listen,
            advertise: None,
            max_concurrent_transfers: 8,
            exchange: ExchangeConfig {
                seed,
                ..ExchangeConfig::default()
            },
            max_block_szx: 6,
            faults: None,
            registry: RegistryConfig {
                seed: seed.rotate_left(17),
                ..RegistryConfig::default()
            },
            state_dir: None,
        }
    }
}

/// Why the network could not start.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// The socket could not be bound (address in use, no permission).
    #[error("coap.listen {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The exchange settings are unusable.
    #[error("coap exchange settings: {0}")]
    Exchange(String),
    /// `max_concurrent_transfers` is zero.
    #[error("coap.max_concurrent_transfers must be at least 1")]
    NoTransfers,
    /// The journal of registrations could not be opened.
    #[error("registrations journal: {0}")]
    Journal(#[from] crate::journal::JournalError),
    /// The journal writer thread could not start.
    #[error("registrations journal writer: {0}")]
    Thread(std::io::Error),
}

/// Why one request got no response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// The message layer gave up: no ACK, no separate response, or RST.
    #[error("no response ({0:?})")]
    Transport(TransportFailure),
    /// The request could not be encoded (too large for a datagram).
    #[error("request refused by the message layer: {0}")]
    Encode(String),
    /// The network task has stopped.
    #[error("the CoAP network is shut down")]
    Closed,
    /// The LwM2M endpoint is not registered (never since we know it, or
    /// de-registered, or its lifetime ran out).
    #[error("endpoint '{0}' is not registered")]
    NotRegistered(String),
    /// The queue-mode endpoint sleeps and has as many requests waiting as
    /// the registry holds.
    #[error("endpoint '{0}' sleeps (queue mode) with too many requests waiting")]
    QueueFull(String),
}

/// Why [`CoapNetwork::push_file`] failed.
#[derive(Debug, thiserror::Error)]
pub enum PushFileError {
    /// The file could not be opened or is too large for Block1 (4 GiB).
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: String,
        /// Why.
        message: String,
    },
    /// The push configuration is unusable.
    #[error("push settings: {0}")]
    Config(String),
    /// Reading a block failed.
    #[error(transparent)]
    Read(#[from] ReadError),
    /// The peer refused or the transfer failed (RFC 7959 terms).
    #[error("push failed: {0}")]
    Failed(PushFailure),
    /// The network stopped.
    #[error("the CoAP network is shut down")]
    Closed,
}

type Reply = oneshot::Sender<Result<Packet, RequestError>>;

/// What children ask of the network task. Every request and push carries a
/// ticket from the caller, so that dropping the caller's future or handle
/// cancels it in the engine at once (`Cmd::Cancel`).
enum Cmd {
    Request {
        ticket: u64,
        to: CoapAddress,
        packet: Packet,
        reply: Reply,
        /// Where notifications go if the request registers an observation.
        notify: Option<mpsc::Sender<Packet>>,
    },
    /// Accept Registers from this endpoint name.
    Allow(String),
    /// Refuse this endpoint name from now on and end its registration.
    Deny(String),
    /// Let unknown endpoints register and name them here (onboarding).
    Onboard(mpsc::UnboundedSender<String>),
    /// A version the child reported, to journal with its registration.
    Firmware(String, String),
    Push {
        ticket: u64,
        peer: SocketAddr,
        cfg: PushConfig,
        image: FileImage,
        progress: Arc<PushProgress>,
        done: oneshot::Sender<PushDone>,
    },
    Cancel(u64),
}

/// Why a push run by the network task did not end with a final response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PushJobError {
    /// The transfer failed (RFC 7959 terms, or no answer).
    #[error(transparent)]
    Failed(PushFailure),
    /// The peer engine refused to start it (another push to the same peer
    /// runs, or the settings cannot work).
    #[error(transparent)]
    Refused(StartPushError),
}

/// A push the network task ran, at its end.
#[derive(Debug)]
pub struct PushDone {
    /// Bytes the child acknowledged.
    pub acked: u32,
    /// The final response code (2.04, 2.01), or why there is none.
    pub result: Result<Code, PushJobError>,
    /// The engine's events other than progress, in order (block size
    /// changes, restarts, the end).
    pub events: Vec<PushEvent>,
}

/// No acknowledgement yet, in [`PushProgress::acked_at`].
const NEVER: u64 = u64::MAX;

/// The latest acknowledged offset of a running push, when it was
/// acknowledged (engine milliseconds, updated for every block), and the
/// coarse wake-up.
#[derive(Debug)]
struct PushProgress {
    acked: AtomicU32,
    acked_at: AtomicU64,
    notify: Notify,
}

/// What [`PushHandle::next`] reports.
#[derive(Debug)]
pub enum PushUpdate {
    /// Bytes acknowledged so far (coarse: see `PROGRESS_STEPS`).
    Progress(u32),
    /// The push ended.
    Done(PushDone),
    /// The network task stopped.
    Closed,
}

/// A push running in the network task ([`CoapNetwork::start_push`]);
/// dropping it cancels the push (its block in flight is forgotten).
#[derive(Debug)]
pub struct PushHandle {
    progress: Arc<PushProgress>,
    done: oneshot::Receiver<PushDone>,
    _cancel: CancelOnDrop,
}

impl PushHandle {
    /// The next progress report or the end. Cancel-safe.
    pub async fn next(&mut self) -> PushUpdate {
        tokio::select! {
            biased;
            r = &mut self.done => match r {
                Ok(d) => PushUpdate::Done(d),
                Err(_) => PushUpdate::Closed,
            },
            _ = self.progress.notify.notified() => {
                PushUpdate::Progress(self.progress.acked.load(Ordering::Relaxed))
            }
        }
    }

    /// Bytes the child has acknowledged and when the last block was
    /// acknowledged (engine time, [`CoapNetwork::now`]; `None` before the
    /// first): the liveness of the transfer, updated for every block.
    pub fn acked(&self) -> (u32, Option<EngineInstant>) {
        self.progress.acked()
    }

    /// A reader of [`PushHandle::acked`] that others can keep (a status
    /// display, a watchdog) while the handle drives the push.
    pub fn watch(&self) -> PushWatch {
        PushWatch(self.progress.clone())
    }
}

/// Reads "bytes acknowledged at t" of a push ([`PushHandle::watch`]).
#[derive(Debug, Clone)]
pub struct PushWatch(Arc<PushProgress>);

impl PushWatch {
    /// As [`PushHandle::acked`].
    pub fn acked(&self) -> (u32, Option<EngineInstant>) {
        self.0.acked()
    }
}

impl PushProgress {
    fn acked(&self) -> (u32, Option<EngineInstant>) {
        let at = self.acked_at.load(Ordering::Relaxed);
        (
            self.acked.load(Ordering::Relaxed),
            (at != NEVER).then(|| EngineInstant::from_millis(at)),
        )
    }
}

/// Sends `Cmd::Cancel(ticket)` when dropped before [`CancelOnDrop::disarm`].
#[derive(Debug)]
struct CancelOnDrop {
    cmds: mpsc::UnboundedSender<Cmd>,
    ticket: u64,
    armed: bool,
}

impl CancelOnDrop {
    fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if self.armed {
            let _ = self.cmds.send(Cmd::Cancel(self.ticket));
        }
    }
}

/// An observation the child accepted ([`CoapNetwork::observe_to`]):
/// its notifications, in arrival order (RFC 7641 §3.4 ordering is the
/// caller's, [`otabridge_codecs::coap::Freshness`]). Dropping it cancels
/// the observation (the next notification gets RST, RFC 7641 §3.6).
#[derive(Debug)]
pub struct Observation {
    notifications: mpsc::Receiver<Packet>,
    _cancel: CancelOnDrop,
}

impl Observation {
    /// The next notification; `None` once the observation ended (the
    /// child ended it, or the network shut down).
    pub async fn next(&mut self) -> Option<Packet> {
        self.notifications.recv().await
    }

    /// [`Observation::next`] for a hand-written poll loop.
    pub fn poll_next(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Packet>> {
        self.notifications.poll_recv(cx)
    }
}

/// A package being served, opened once; blocks are read by offset.
#[derive(Debug)]
struct Served {
    file: Arc<File>,
    info: PackageInfo,
    refs: usize,
}

#[derive(Debug)]
struct Watcher {
    peer: SocketAddr,
    name: String,
    tx: mpsc::Sender<ServedBlock>,
}

/// What the network knows of one registered LwM2M client, for drivers,
/// `status` and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistrationInfo {
    /// The registration (address, lifetime, binding, objects...).
    pub reg: Registration<SocketAddr>,
    /// When it expires (engine time, [`CoapNetwork::now`]).
    pub expires: EngineInstant,
    /// When it last registered or updated (engine time).
    pub renewed: EngineInstant,
    /// Queue mode: listening until then; `None` when not known (restored).
    pub awake_until: Option<EngineInstant>,
    /// The firmware version it last reported (journaled).
    pub firmware: Option<String>,
}

impl RegistrationInfo {
    /// Whether requests reach it at `now` (always, unless in queue mode).
    pub fn listening(&self, now: EngineInstant) -> bool {
        !self.reg.queue || self.awake_until.is_some_and(|t| now < t)
    }
}

#[derive(Debug, Default)]
struct Shared {
    /// Registered LwM2M clients by endpoint name.
    registrations: HashMap<String, RegistrationInfo>,
    /// Presence of endpoints someone watches ([`CoapNetwork::presence`]).
    presence: HashMap<String, watch::Sender<bool>>,
    packages: HashMap<String, Served>,
    watchers: HashMap<u64, Watcher>,
    next_watch: u64,
    /// Retransmissions sent per peer (RFC 7252 §4.2), for `chunk_retries`.
    retries: HashMap<SocketAddr, Arc<AtomicU64>>,
    /// Woken whenever a registered client may have woken (a Register, an
    /// Update, any datagram from a queue-mode client):
    /// [`CoapNetwork::until_awake`].
    woke: Arc<Notify>,
}

/// What the network put on the wire (before the seam's faults, if any).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetworkStats {
    /// Datagrams sent: requests, blocks, answers, retransmissions.
    pub datagrams: u64,
    /// Their bytes (CoAP messages, without UDP/IP headers).
    pub bytes: u64,
    /// Retransmissions among them (RFC 7252 §4.2).
    pub retransmissions: u64,
}

/// What the LwM2M registry did since the network started (the metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RegistryStats {
    /// Registers accepted.
    pub registers: u64,
    /// Updates accepted.
    pub updates: u64,
    /// De-registers (and registrations ended by the gateway: a refused
    /// onboarding, a deleted sub-device).
    pub deregisters: u64,
    /// Registrations that expired.
    pub expiries: u64,
    /// Registry requests refused (4.xx, 5.03).
    pub refused: u64,
}

#[derive(Debug, Default)]
struct Counters {
    datagrams: AtomicU64,
    bytes: AtomicU64,
    retransmissions: AtomicU64,
    registers: AtomicU64,
    updates: AtomicU64,
    deregisters: AtomicU64,
    expiries: AtomicU64,
    refused: AtomicU64,
}

#[derive(Debug)]
struct Inner {
    cmds: mpsc::UnboundedSender<Cmd>,
    next_ticket: AtomicU64,
    counters: Arc<Counters>,
    local: SocketAddr,
    advertise: Option<SocketAddr>,
    transfers: Arc<Semaphore>,
    shared: Arc<Mutex<Shared>>,
    origin: tokio::time::Instant,
    /// How long a read of an optional resource waits (from the exchange's
    /// timers: `update::optional_read_wait`).
    optional_read_wait: Duration,
}

/// A handle on the CoAP network; clones share the socket and the task. The
/// task stops when the last handle is dropped.
#[derive(Debug, Clone)]
pub struct CoapNetwork {
    inner: Arc<Inner>,
}

fn lock(m: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl CoapNetwork {
    /// Binds the socket and starts the network task (needs a tokio runtime).
    pub fn bind(options: NetworkOptions) -> Result<Self, BindError> {
        if options.max_concurrent_transfers == 0 {
            return Err(BindError::NoTransfers);
        }
        let peers =
            Peers::new(options.exchange.clone()).map_err(|e| BindError::Exchange(e.to_string()))?;
        let bind_err = |source| BindError::Bind {
            addr: options.listen,
            source,
        };
        // Bound without tokio so that `from_config` (synchronous) can build it.
        let s = socket2::Socket::new(
            socket2::Domain::for_address(options.listen),
            socket2::Type::DGRAM,
            Some(socket2::Protocol::UDP),
        )
        .map_err(bind_err)?;
        if let Err(e) = s.set_recv_buffer_size(RECV_BUFFER) {
            debug!("coap socket: receive buffer stays at the default: {e}");
        }
        s.bind(&options.listen.into()).map_err(bind_err)?;
        s.set_nonblocking(true).map_err(bind_err)?;
        let std_socket: std::net::UdpSocket = s.into();
        let socket = UdpSocket::from_std(std_socket).map_err(bind_err)?;
        let local = socket.local_addr().map_err(bind_err)?;
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Mutex::new(Shared::default()));
        let origin = tokio::time::Instant::now();
        let serve = ServeConfig {
            max_szx: options.max_block_szx,
            ..ServeConfig::default()
        };
        let counters = Arc::new(Counters::default());
        let seam = options.faults.clone().map(Seam::new);
        let mut registry = Registry::new(options.registry.clone());
        // Only configured endpoints register (Cmd::Allow adds them).
        registry.allow_only(std::iter::empty());
        let journal = match &options.state_dir {
            Some(dir) => {
                let (mut j, rows) = registrations::open(dir)?;
                restore(&mut registry, &mut lock(&shared), rows, &mut j);
                Some(registrations::spawn(j).map_err(BindError::Thread)?)
            }
            None => None,
        };
        let task = Task {
            registry,
            held: HashMap::new(),
            journal,
            peers,
            waiting: HashMap::new(),
            observers: HashMap::new(),
            jobs: HashMap::new(),
            tickets: HashMap::new(),
            shared: shared.clone(),
            serve,
            origin,
            counters: counters.clone(),
            strangers: None,
        };
        tokio::spawn(run(socket, task, rx, seam));
        Ok(CoapNetwork {
            inner: Arc::new(Inner {
                cmds: tx,
                next_ticket: AtomicU64::new(0),
                counters,
                local,
                advertise: options.advertise,
                transfers: Arc::new(Semaphore::new(options.max_concurrent_transfers)),
                shared,
                origin,
                optional_read_wait: optional_read_wait(&options.exchange),
            }),
        })
    }

    /// How long a read of an optional resource (`/5/0/9`, `/5/0/8`) waits
    /// for its answer: the exchange with MAX_RETRANSMIT 2 instead of its
    /// own, 21 s with RFC 7252's timers
    /// ([`otabridge_codecs::coap::update::optional_read_wait`]).
    pub fn optional_read_wait(&self) -> Duration {
        self.inner.optional_read_wait
    }

    /// The bound local address.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local
    }

    /// What the network sent so far.
    pub fn stats(&self) -> NetworkStats {
        let c = &self.inner.counters;
        NetworkStats {
            datagrams: c.datagrams.load(Ordering::Relaxed),
            bytes: c.bytes.load(Ordering::Relaxed),
            retransmissions: c.retransmissions.load(Ordering::Relaxed),
        }
    }

    /// The registry's counts since the network started.
    pub fn registry_stats(&self) -> RegistryStats {
        let c = &self.inner.counters;
        RegistryStats {
            registers: c.registers.load(Ordering::Relaxed),
            updates: c.updates.load(Ordering::Relaxed),
            deregisters: c.deregisters.load(Ordering::Relaxed),
            expiries: c.expiries.load(Ordering::Relaxed),
            refused: c.refused.load(Ordering::Relaxed),
        }
    }

    /// The engine clock's `now`.
    pub fn now(&self) -> EngineInstant {
        engine_now(self.inner.origin)
    }

    /// The tokio instant of an engine instant.
    pub fn at(&self, t: EngineInstant) -> tokio::time::Instant {
        self.inner.origin + Duration::from_millis(t.as_millis())
    }

    /// The engine instant of a tokio instant (the network's start when
    /// `t` is earlier).
    pub fn engine_instant(&self, t: tokio::time::Instant) -> EngineInstant {
        EngineInstant::from_millis(t.saturating_duration_since(self.inner.origin).as_millis() as u64)
    }

    /// Waits for a transfer slot (`coap.max_concurrent_transfers`).
    pub async fn transfer_permit(&self) -> OwnedSemaphorePermit {
        // The semaphore is never closed, so acquiring cannot fail.
        self.inner
            .transfers
            .clone()
            .acquire_owned()
            .await
            .expect("the transfer semaphore is never closed")
    }

    /// The `host:port` a child at `child` should fetch packages from:
    /// `coap.advertise`, else the local address the kernel routes to the
    /// child from (found by connecting a throwaway UDP socket), with our port.
    pub fn gateway_for(&self, child: SocketAddr) -> std::io::Result<SocketAddr> {
        if let Some(a) = self.inner.advertise {
            return Ok(a);
        }
        let ip = self.inner.local.ip();
        if !ip.is_unspecified() {
            return Ok(self.inner.local);
        }
        let any: SocketAddr = match child.ip() {
            IpAddr::V4(_) => ([0, 0, 0, 0], 0).into(),
            IpAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let probe = std::net::UdpSocket::bind(any)?;
        probe.connect(child)?;
        Ok(SocketAddr::new(
            probe.local_addr()?.ip(),
            self.inner.local.port(),
        ))
    }

    /// Sends `packet` to `peer` as a confirmable request and waits for the
    /// response (retransmitting per RFC 7252 §4.2 meanwhile). It goes out
    /// when the peer has nothing else of ours in flight (NSTART 1), between
    /// two blocks of a push to it. Dropping the future cancels the request.
    pub async fn request(&self, peer: SocketAddr, packet: Packet) -> Result<Packet, RequestError> {
        self.request_to(&CoapAddress::Static(peer), packet).await
    }

    /// [`CoapNetwork::request`] to a fixed address or to a registered
    /// endpoint: the address it last registered or updated from, resolved
    /// when the request goes out. A queue-mode endpoint that sleeps gets
    /// it when it next registers or updates (the future waits until then).
    pub async fn request_to(
        &self,
        to: &CoapAddress,
        packet: Packet,
    ) -> Result<Packet, RequestError> {
        let (reply, rx) = oneshot::channel();
        let ticket = self.ticket();
        self.inner
            .cmds
            .send(Cmd::Request {
                ticket,
                to: to.clone(),
                packet,
                reply,
                notify: None,
            })
            .map_err(|_| RequestError::Closed)?;
        let mut guard = self.cancel_on_drop(ticket);
        let r = rx.await.map_err(|_| RequestError::Closed);
        guard.disarm();
        r?
    }

    /// [`CoapNetwork::request_to`] of a GET with `Observe: 0` (RFC 7641
    /// §3.1): the answer, and an [`Observation`] when the child registered
    /// the observation (its answer carries Observe). Without one (the
    /// child answered without the option, or with an error) the caller
    /// polls.
    pub async fn observe_to(
        &self,
        to: &CoapAddress,
        packet: Packet,
    ) -> Result<(Packet, Option<Observation>), RequestError> {
        let (reply, rx) = oneshot::channel();
        let (tx, notifications) = mpsc::channel(NOTIFY_QUEUE);
        let ticket = self.ticket();
        self.inner
            .cmds
            .send(Cmd::Request {
                ticket,
                to: to.clone(),
                packet: observe::register(packet),
                reply,
                notify: Some(tx),
            })
            .map_err(|_| RequestError::Closed)?;
        // Armed until the observation ends: dropping it cancels.
        let guard = self.cancel_on_drop(ticket);
        let answer = rx.await.map_err(|_| RequestError::Closed)??;
        let observation = observe::accepted(&answer).then_some(Observation {
            notifications,
            _cancel: guard,
        });
        Ok((answer, observation))
    }

    /// Runs a Block1 push of `image` to `peer` in the network task: the
    /// peer engine sends each block from the answer to the previous one,
    /// without waking the caller (see the module doc). Other requests to
    /// `peer` go out between two blocks (NSTART 1).
    pub fn start_push(
        &self,
        peer: SocketAddr,
        cfg: PushConfig,
        image: FileImage,
    ) -> Result<PushHandle, RequestError> {
        let progress = Arc::new(PushProgress {
            acked: AtomicU32::new(cfg.resume_offset),
            acked_at: AtomicU64::new(NEVER),
            notify: Notify::new(),
        });
        let (done, rx) = oneshot::channel();
        let ticket = self.ticket();
        self.inner
            .cmds
            .send(Cmd::Push {
                ticket,
                peer,
                cfg,
                image,
                progress: progress.clone(),
                done,
            })
            .map_err(|_| RequestError::Closed)?;
        Ok(PushHandle {
            progress,
            done: rx,
            _cancel: self.cancel_on_drop(ticket),
        })
    }

    /// Accepts Registers from `endpoint` (a configured child); other
    /// endpoints get 4.03 and a log line.
    pub fn allow_endpoint(&self, endpoint: &str) {
        let _ = self.inner.cmds.send(Cmd::Allow(endpoint.to_owned()));
    }

    /// Refuses `endpoint` from now on (4.03) and ends its registration,
    /// if any (onboarding refused, sub-device deleted on the platform).
    pub fn deny_endpoint(&self, endpoint: &str) {
        let _ = self.inner.cmds.send(Cmd::Deny(endpoint.to_owned()));
    }

    /// Onboarding (issue 13 item 3): endpoints no child names register all
    /// the same, and each Register or Update of one sends its name here
    /// (including those restored from the journal, at once) until it is
    /// allowed ([`CoapNetwork::allow_endpoint`]) or denied
    /// ([`CoapNetwork::deny_endpoint`]).
    pub fn onboard(&self) -> mpsc::UnboundedReceiver<String> {
        let (tx, rx) = mpsc::unbounded_channel();
        let _ = self.inner.cmds.send(Cmd::Onboard(tx));
        rx
    }

    /// What the network knows of `endpoint`'s registration.
    pub fn registration(&self, endpoint: &str) -> Option<RegistrationInfo> {
        lock(&self.inner.shared)
            .registrations
            .get(endpoint)
            .cloned()
    }

    /// Every registration, by endpoint name.
    pub fn registrations(&self) -> Vec<RegistrationInfo> {
        let s = lock(&self.inner.shared);
        let mut v: Vec<_> = s.registrations.values().cloned().collect();
        v.sort_by(|a, b| a.reg.endpoint.cmp(&b.reg.endpoint));
        v
    }

    /// The current address of a fixed or registered child.
    pub fn resolve(&self, to: &CoapAddress) -> Option<SocketAddr> {
        match to {
            CoapAddress::Static(a) => Some(*a),
            CoapAddress::Endpoint(e) => self.registration(e).map(|r| r.reg.peer),
        }
    }

    /// Whether `endpoint` is registered, as a watch that changes with its
    /// registration (Register/Update: `true`; De-register, expiry: `false`).
    pub fn presence(&self, endpoint: &str) -> watch::Receiver<bool> {
        let mut s = lock(&self.inner.shared);
        let registered = s.registrations.contains_key(endpoint);
        s.presence
            .entry(endpoint.to_owned())
            .or_insert_with(|| watch::channel(registered).0)
            .subscribe()
    }

    /// Returns once `endpoint` listens (not a queue-mode client, or one
    /// awake: it registered, updated or sent something within
    /// `coap.queue_window_secs`), or is not registered at all (a request
    /// then fails as "not registered"). Cancel-safe: drop it to stop
    /// waiting.
    pub async fn until_awake(&self, endpoint: &str) {
        let woke = lock(&self.inner.shared).woke.clone();
        loop {
            let notified = woke.notified();
            tokio::pin!(notified);
            // Registered before the check, so a wake-up between the check
            // and the wait is not missed.
            notified.as_mut().enable();
            match self.registration(endpoint) {
                Some(r) if !r.listening(self.now()) => {}
                _ => return,
            }
            notified.await;
        }
    }

    /// Remembers (and journals) the firmware version `endpoint` reported,
    /// for a `version_query` while it sleeps.
    pub fn report_firmware(&self, endpoint: &str, version: &str) {
        if let Some(r) = lock(&self.inner.shared).registrations.get_mut(endpoint) {
            if r.firmware.as_deref() == Some(version) {
                return;
            }
            r.firmware = Some(version.to_owned());
        }
        let _ = self
            .inner
            .cmds
            .send(Cmd::Firmware(endpoint.to_owned(), version.to_owned()));
    }

    fn ticket(&self) -> u64 {
        self.inner.next_ticket.fetch_add(1, Ordering::Relaxed)
    }

    fn cancel_on_drop(&self, ticket: u64) -> CancelOnDrop {
        CancelOnDrop {
            cmds: self.inner.cmds.clone(),
            ticket,
            armed: true,
        }
    }

    /// Retransmissions sent to `peer` so far (RFC 7252 §4.2), counted from
    /// the first call for this peer; shared by every caller.
    pub fn retry_counter(&self, peer: SocketAddr) -> Arc<AtomicU64> {
        lock(&self.inner.shared)
            .retries
            .entry(peer)
            .or_default()
            .clone()
    }

    /// Serves `path` as `/fw/<sha256>` until the guard is dropped. The file
    /// is opened now (the store may delete it later; the open file stays).
    pub fn serve_package(&self, sha256_hex: &str, path: &Path) -> std::io::Result<PackageGuard> {
        let sha = parse_sha(sha256_hex).ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "sha256 is not 64 hex digits",
            )
        })?;
        let name = sha256_hex.to_ascii_lowercase();
        let mut s = lock(&self.inner.shared);
        if let Some(p) = s.packages.get_mut(&name) {
            p.refs += 1;
        } else {
            let file = File::open(path)?;
            let len = u32::try_from(file.metadata()?.len()).map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::InvalidInput, "package above 4 GiB")
            })?;
            s.packages.insert(
                name.clone(),
                Served {
                    file: Arc::new(file),
                    info: PackageInfo { len, sha256: sha },
                    refs: 1,
                },
            );
        }
        Ok(PackageGuard {
            shared: self.inner.shared.clone(),
            name,
        })
    }

    /// Reports every block of package `sha256_hex` served to `peer` (or,
    /// when the child fetches from another port, to its IP address) until
    /// the returned watch is dropped.
    pub fn watch_served(&self, peer: SocketAddr, sha256_hex: &str) -> ServedWatch {
        let (tx, rx) = mpsc::channel(WATCH_QUEUE);
        let mut s = lock(&self.inner.shared);
        let id = s.next_watch;
        s.next_watch += 1;
        s.watchers.insert(
            id,
            Watcher {
                peer,
                name: sha256_hex.to_ascii_lowercase(),
                tx,
            },
        );
        ServedWatch {
            shared: self.inner.shared.clone(),
            id,
            rx,
        }
    }

    /// Pushes a file to `peer`'s resource `path` with Block1 (RFC 7959
    /// §2.3), one block in flight, starting at `resume_offset` (4.08 falls
    /// back to 0), run by the network task ([`CoapNetwork::start_push`]).
    /// `progress` gets the bytes acknowledged, about 64 times per image and
    /// once at the end. Returns the final response code. Used for plain CoAP
    /// servers (interop tests, benches); LwM2M children go through
    /// [`super::CoapChild`].
    pub async fn push_file(
        &self,
        peer: SocketAddr,
        path: &[&str],
        file: &Path,
        szx: u8,
        resume_offset: u32,
        progress: &(dyn Fn(u32) + Send + Sync),
    ) -> Result<Code, PushFileError> {
        let ferr = |message: String| PushFileError::File {
            path: file.display().to_string(),
            message,
        };
        let f = File::open(file).map_err(|e| ferr(e.to_string()))?;
        let len = f.metadata().map_err(|e| ferr(e.to_string()))?.len();
        let total_len = u32::try_from(len).map_err(|_| ferr("larger than 4 GiB".into()))?;
        let cfg = PushConfig {
            path: path.iter().map(|s| s.to_string()).collect(),
            total_len,
            szx,
            content_format: Some(msg::OCTET_STREAM),
            request_tag: None,
            resume_offset,
            max_restarts: 3,
        };
        // Checked here so that a bad setting is a config error, not a
        // refusal from the task.
        Block1Push::new(cfg.clone()).map_err(|e| PushFileError::Config(e.to_string()))?;
        let mut handle = self
            .start_push(peer, cfg, FileImage(f))
            .map_err(|_| PushFileError::Closed)?;
        let done = loop {
            match handle.next().await {
                PushUpdate::Progress(acked) => progress(acked),
                PushUpdate::Done(d) => break d,
                PushUpdate::Closed => return Err(PushFileError::Closed),
            }
        };
        progress(done.acked);
        for ev in &done.events {
            match ev {
                PushEvent::BlockSize { szx } => {
                    debug!(%peer, szx, "peer prefers smaller blocks")
                }
                PushEvent::Restarted { reason, szx } => {
                    debug!(%peer, ?reason, szx, "push restarts at block 0")
                }
                _ => {}
            }
        }
        match done.result {
            Ok(code) => Ok(code),
            Err(PushJobError::Failed(PushFailure::Read(e))) => Err(PushFileError::Read(e)),
            Err(PushJobError::Failed(f)) => Err(PushFileError::Failed(f)),
            Err(PushJobError::Refused(e)) => Err(PushFileError::Config(e.to_string())),
        }
    }
}

/// Keeps a package served; dropping it stops serving once no transfer needs it.
#[derive(Debug)]
pub struct PackageGuard {
    shared: Arc<Mutex<Shared>>,
    name: String,
}

impl Drop for PackageGuard {
    fn drop(&mut self) {
        let mut s = lock(&self.shared);
        if let Some(p) = s.packages.get_mut(&self.name) {
            p.refs -= 1;
            if p.refs == 0 {
                s.packages.remove(&self.name);
            }
        }
    }
}

/// Served-block notices for one pull transfer (see [`CoapNetwork::watch_served`]).
#[derive(Debug)]
pub struct ServedWatch {
    shared: Arc<Mutex<Shared>>,
    id: u64,
    rx: mpsc::Receiver<ServedBlock>,
}

impl ServedWatch {
    /// The next block served; pends forever once the network stopped.
    pub async fn next(&mut self) -> ServedBlock {
        match self.rx.recv().await {
            Some(b) => b,
            None => std::future::pending().await,
        }
    }
}

impl Drop for ServedWatch {
    fn drop(&mut self) {
        lock(&self.shared).watchers.remove(&self.id);
    }
}

/// An image file read by offset with `pread`: constant memory, no seek
/// state shared between readers.
#[derive(Debug)]
pub struct FileImage(pub File);

impl ReadAt for FileImage {
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), ReadError> {
        self.0.read_exact_at(buf, offset).map_err(|e| ReadError {
            offset,
            len: buf.len(),
            reason: e.to_string(),
        })
    }
}

fn parse_sha(hex_str: &str) -> Option<[u8; 32]> {
    let v = hex::decode(hex_str).ok()?;
    v.try_into().ok()
}

fn engine_now(origin: tokio::time::Instant) -> EngineInstant {
    EngineInstant::from_millis(origin.elapsed().as_millis() as u64)
}

/// The package store the Block2 server reads: the registered packages.
struct Store<'a>(&'a Shared);

impl PackageStore for Store<'_> {
    fn lookup(&mut self, name: &str) -> Option<PackageInfo> {
        self.0.packages.get(name).map(|p| p.info)
    }
    fn read_at(&mut self, name: &str, offset: u64, buf: &mut [u8]) -> Result<(), ReadError> {
        let len = buf.len();
        let fail = |reason: String| ReadError {
            offset,
            len,
            reason,
        };
        let p = self
            .0
            .packages
            .get(name)
            .ok_or_else(|| fail("not served".into()))?;
        p.file
            .read_exact_at(buf, offset)
            .map_err(|e| fail(e.to_string()))
    }
}

/// A push the task drives (see [`CoapNetwork::start_push`]).
struct Job {
    ticket: u64,
    progress: Arc<PushProgress>,
    done: oneshot::Sender<PushDone>,
    /// Events other than progress, handed over at the end.
    events: Vec<PushEvent>,
    /// The offset last reported to the caller.
    reported: u32,
}

/// A request held by the registry for a sleeping queue-mode client.
#[derive(Debug)]
struct Held {
    ticket: u64,
    packet: Packet,
    reply: Reply,
    notify: Option<mpsc::Sender<Packet>>,
}

/// The network task's state besides the socket.
struct Task {
    /// The LwM2M server role: registrations, queue-mode holding.
    registry: Registry<SocketAddr, Held>,
    /// Tickets of held requests, to their endpoint (for cancelling).
    held: HashMap<u64, String>,
    journal: Option<Writer>,
    peers: Peers<SocketAddr, FileImage>,
    /// Callers waiting for the response to a request.
    waiting: HashMap<OpId, (u64, Reply)>,
    /// Observations (requests with `Observe: 0`): where their
    /// notifications go, and the caller's ticket.
    observers: HashMap<OpId, (u64, mpsc::Sender<Packet>)>,
    jobs: HashMap<OpId, Job>,
    /// Callers' tickets of requests and pushes in the engine.
    tickets: HashMap<u64, OpId>,
    shared: Arc<Mutex<Shared>>,
    serve: ServeConfig,
    origin: tokio::time::Instant,
    counters: Arc<Counters>,
    /// Onboarding: where unknown endpoints that register are named.
    strangers: Option<mpsc::UnboundedSender<String>>,
}

/// The network task (see the module doc).
// Long on purpose: the network task's one select loop: socket, commands, timers.
async fn run(
    socket: UdpSocket,
    mut t: Task,
    mut cmds: mpsc::UnboundedReceiver<Cmd>,
    mut seam: Option<Seam>,
) {
    let origin = t.origin;
    let mut buf = vec![0u8; MAX_DATAGRAM];
    // One timer, moved only when a timeout comes due earlier than it is
    // set: a push starts an exchange per block, each due later than the
    // one before, and re-registering the timer for each costs more than
    // one early wake-up (handle_timeout then finds nothing due).
    let sleep = tokio::time::sleep_until(origin);
    tokio::pin!(sleep);
    let mut armed: Option<tokio::time::Instant> = None;
    loop {
        let seam_due = seam.as_ref().and_then(Seam::next_due);
        let due = [t.peers.poll_timeout(), t.registry.poll_timeout(), seam_due]
            .into_iter()
            .flatten()
            .min()
            .map(|d| origin + Duration::from_millis(d.as_millis()));
        if let Some(d) = due {
            if armed.is_none_or(|a| d < a) {
                sleep.as_mut().reset(d);
                armed = Some(d);
            }
        }
        // Biased: a command that came with a datagram is taken first, so a
        // request queued behind a push block keeps its turn (and tests are
        // deterministic). Callers wait for their answers, so commands
        // cannot starve the socket.
        tokio::select! {
            biased;
            cmd = cmds.recv() => match cmd {
                // Every handle is gone: nobody can wait for anything.
                None => break,
                Some(cmd) => t.command(cmd),
            },
            r = socket.recv_from(&mut buf) => match r {
                Ok((n, peer)) => {
                    let now = engine_now(origin);
                    match seam.as_mut() {
                        None => t.datagram(peer, &buf[..n], now),
                        Some(s) => s.pass(Dir::In, peer, buf[..n].to_vec(), now),
                    }
                }
                // Linux reports an ICMP error of an earlier send here; the
                // exchange's retransmission timer handles the silence.
                Err(e) => debug!("coap socket: {e}"),
            },
            _ = &mut sleep, if armed.is_some() => {
                armed = None;
                let now = engine_now(origin);
                t.peers.handle_timeout(now);
                t.registry.handle_timeout(now);
            }
        }
        loop {
            let now = engine_now(origin);
            if let Some(s) = seam.as_mut() {
                while let Some((dir, peer, bytes)) = s.due(now) {
                    match dir {
                        Dir::In => t.datagram(peer, &bytes, now),
                        Dir::Out => send(&socket, peer, &bytes).await,
                    }
                }
            }
            t.handle_events();
            while let Some(tx) = t.peers.poll_transmit() {
                t.count(&tx.peer, tx.bytes.len(), tx.retransmission);
                match seam.as_mut() {
                    None => send(&socket, tx.peer, &tx.bytes).await,
                    Some(s) => s.pass(Dir::Out, tx.peer, tx.bytes, now),
                }
            }
            // Datagrams the seam passes without delay go in this same turn.
            if seam
                .as_ref()
                .is_none_or(|s| s.next_due().is_none_or(|d| d > now))
            {
                break;
            }
        }
    }
}

/// One datagram to the socket; a send error is a lost datagram, which
/// retransmission covers.
async fn send(socket: &UdpSocket, peer: SocketAddr, bytes: &[u8]) {
    if let Err(e) = socket.send_to(bytes, peer).await {
        debug!(%peer, "send: {e}");
    }
}

impl Task {
    fn now(&self) -> EngineInstant {
        engine_now(self.origin)
    }

    fn datagram(&mut self, peer: SocketAddr, bytes: &[u8], now: EngineInstant) {
        // A queue-mode client that sends anything listens a while longer.
        if let Some((endpoint, until)) = self.registry.seen(&peer, now) {
            let mut s = lock(&self.shared);
            if let Some(r) = s.registrations.get_mut(endpoint) {
                let was = r.awake_until;
                r.awake_until = Some(until);
                if was.is_none_or(|w| w <= now) {
                    s.woke.notify_waiters();
                }
            }
        }
        if let Err(e) = self.peers.handle_datagram(peer, bytes, now) {
            debug!(%peer, "undecodable datagram: {e}");
        }
    }

    /// Counts a datagram about to be sent (`chunk_retries` per peer for
    /// retransmissions, the network's totals).
    fn count(&self, peer: &SocketAddr, len: usize, retransmission: bool) {
        let c = &self.counters;
        c.datagrams.fetch_add(1, Ordering::Relaxed);
        c.bytes.fetch_add(len as u64, Ordering::Relaxed);
        if retransmission {
            c.retransmissions.fetch_add(1, Ordering::Relaxed);
            if let Some(r) = lock(&self.shared).retries.get(peer) {
                r.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// A child's command, handed to the peer engine.
    // Long on purpose: one arm per command kind, so the network task's inputs read in one place.
    fn command(&mut self, cmd: Cmd) {
        let now = self.now();
        match cmd {
            Cmd::Request {
                ticket,
                to,
                packet,
                reply,
                notify,
            } => {
                let peer = match to {
                    CoapAddress::Static(peer) => peer,
                    CoapAddress::Endpoint(ep) => {
                        let held = Held {
                            ticket,
                            packet,
                            reply,
                            notify,
                        };
                        match self.registry.route(&ep, held, now) {
                            Route::Send { peer, item } => {
                                return self.send_request(peer, item, now);
                            }
                            Route::Held => {
                                debug!(endpoint = %ep, "request held until the client wakes");
                                self.held.insert(ticket, ep);
                            }
                            Route::NotRegistered(h) => {
                                let _ = h.reply.send(Err(RequestError::NotRegistered(ep)));
                            }
                            Route::Full(h) => {
                                let _ = h.reply.send(Err(RequestError::QueueFull(ep)));
                            }
                        }
                        return;
                    }
                };
                let item = Held {
                    ticket,
                    packet,
                    reply,
                    notify,
                };
                self.send_request(peer, item, now);
            }
            Cmd::Allow(ep) => self.registry.allow(ep),
            Cmd::Deny(ep) => self.registry.deny(&ep),
            Cmd::Onboard(tx) => {
                self.registry.admit_unknown(true);
                // Those restored from the journal that no child names yet.
                for r in self.registry.registrations() {
                    if !self.registry.is_allowed(&r.endpoint) {
                        let _ = tx.send(r.endpoint.clone());
                    }
                }
                self.strangers = Some(tx);
            }
            Cmd::Firmware(ep, v) => {
                if let Some(j) = &self.journal {
                    j.firmware(&ep, &v);
                }
            }
            Cmd::Push {
                ticket,
                peer,
                cfg,
                image,
                progress,
                done,
            } => match self.peers.start_push(peer, cfg, image, now) {
                Ok(op) => {
                    let reported = progress.acked.load(Ordering::Relaxed);
                    self.tickets.insert(ticket, op);
                    let job = Job {
                        ticket,
                        progress,
                        done,
                        events: Vec::new(),
                        reported,
                    };
                    self.jobs.insert(op, job);
                }
                Err(e) => {
                    let _ = done.send(PushDone {
                        acked: progress.acked.load(Ordering::Relaxed),
                        result: Err(PushJobError::Refused(e)),
                        events: Vec::new(),
                    });
                }
            },
            Cmd::Cancel(ticket) => {
                if let Some(ep) = self.held.remove(&ticket) {
                    self.registry.unhold(&ep, |h| h.ticket != ticket);
                }
                if let Some(op) = self.tickets.remove(&ticket) {
                    self.waiting.remove(&op);
                    self.jobs.remove(&op);
                    self.observers.remove(&op);
                    self.peers.cancel(op, now);
                }
            }
        }
    }

    /// A request to the peer engine; its answer goes to `h.reply`.
    fn send_request(&mut self, peer: SocketAddr, h: Held, now: EngineInstant) {
        match self.peers.request(peer, h.packet, now) {
            Ok(op) => {
                self.waiting.insert(op, (h.ticket, h.reply));
                self.tickets.insert(h.ticket, op);
                if let Some(tx) = h.notify {
                    self.observers.insert(op, (h.ticket, tx));
                }
            }
            Err(e) => {
                let _ = h.reply.send(Err(RequestError::Encode(e.to_string())));
            }
        }
    }

    /// The engines' events: the peer engine's to the children waiting for
    /// them, the registry's to the shared view, the journal and the held
    /// requests (which give the peer engine more to do).
    fn handle_events(&mut self) {
        loop {
            self.peer_events();
            let mut any = false;
            while let Some(ev) = self.registry.poll_event() {
                any = true;
                self.registry_event(ev);
            }
            if !any {
                return;
            }
        }
    }

    fn peer_events(&mut self) {
        while let Some(ev) = self.peers.poll_event() {
            let (op, answer) = match ev {
                PeerEvent::Request(req) => {
                    self.serve(req);
                    continue;
                }
                PeerEvent::Push { op, event, .. } => {
                    self.push_event(op, event);
                    continue;
                }
                PeerEvent::Notification { op, response, .. } => {
                    self.notification(op, response);
                    continue;
                }
                PeerEvent::Response { op, response, .. } => {
                    // RFC 7641 §3.1: an answer with Observe registered the
                    // observation; its caller's ticket stays for the cancel.
                    if let Some((ticket, _)) = self.observers.get(&op) {
                        if observe::accepted(&response) {
                            let ticket = *ticket;
                            if let Some((_, reply)) = self.waiting.remove(&op) {
                                let _ = reply.send(Ok(response));
                            }
                            self.tickets.insert(ticket, op);
                            continue;
                        }
                        self.observers.remove(&op);
                    }
                    (op, Ok(response))
                }
                PeerEvent::Failed { op, why, .. } => (op, Err(RequestError::Transport(why))),
                PeerEvent::Refused { op, error, .. } => {
                    (op, Err(RequestError::Encode(error.to_string())))
                }
            };
            self.observers.remove(&op);
            if let Some((ticket, reply)) = self.waiting.remove(&op) {
                self.tickets.remove(&ticket);
                let _ = reply.send(answer);
            }
        }
    }

    /// A notification of observation `op`, to its caller; one that ends
    /// the observation (RFC 7641 §3.2) is the last.
    fn notification(&mut self, op: OpId, response: Packet) {
        let ends = observe::ends_observation(&response);
        if let Some((ticket, tx)) = self.observers.get(&op) {
            if tx.try_send(response).is_err() {
                debug!(?op, "notification dropped: its observer is behind or gone");
            }
            if ends {
                self.tickets.remove(ticket);
                self.observers.remove(&op);
            }
        }
    }

    /// Progress of a push: "acknowledged at t" for every block, a wake-up
    /// of the caller about `PROGRESS_STEPS` times per image, the end.
    fn push_event(&mut self, op: OpId, event: PushEvent) {
        let Some(job) = self.jobs.get_mut(&op) else {
            return;
        };
        let result = match event {
            PushEvent::Progress { acked, total, at } => {
                job.progress.acked.store(acked, Ordering::Relaxed);
                job.progress
                    .acked_at
                    .store(at.as_millis(), Ordering::Relaxed);
                let step = (total / PROGRESS_STEPS).max(1);
                if acked < job.reported || acked - job.reported >= step {
                    job.reported = acked;
                    job.progress.notify.notify_one();
                }
                return;
            }
            PushEvent::Done(code) => Ok(code),
            PushEvent::Failed(ref f) => Err(PushJobError::Failed(f.clone())),
            e @ (PushEvent::BlockSize { .. } | PushEvent::Restarted { .. }) => {
                job.events.push(e);
                return;
            }
        };
        let Some(mut job) = self.jobs.remove(&op) else {
            return;
        };
        self.tickets.remove(&job.ticket);
        job.events.push(event);
        let _ = job.done.send(PushDone {
            acked: job.progress.acked.load(Ordering::Relaxed),
            result,
            events: job.events,
        });
    }

    /// One registry event: logs, the shared view, presence, the journal,
    /// and the requests a woken client was waiting for.
    fn registry_event(&mut self, ev: RegistryEvent<SocketAddr, Held>) {
        let now = self.now();
        let c = &self.counters;
        let counter = match &ev {
            RegistryEvent::Registered { .. } => Some(&c.registers),
            RegistryEvent::Updated { .. } => Some(&c.updates),
            RegistryEvent::Deregistered { .. } => Some(&c.deregisters),
            RegistryEvent::Expired { .. } => Some(&c.expiries),
            RegistryEvent::Refused { .. } => Some(&c.refused),
            RegistryEvent::Wake { .. } => None,
        };
        if let Some(n) = counter {
            n.fetch_add(1, Ordering::Relaxed);
        }
        if let (
            RegistryEvent::Registered { reg, .. } | RegistryEvent::Updated { reg, .. },
            Some(tx),
        ) = (&ev, &self.strangers)
        {
            if !self.registry.is_allowed(&reg.endpoint) {
                let _ = tx.send(reg.endpoint.clone());
            }
        }
        match ev {
            RegistryEvent::Registered { reg, replaced } => {
                if let Some(old) = replaced {
                    self.peers.move_peer(&old, reg.peer, now);
                }
                info!(endpoint = %reg.endpoint, address = %reg.peer, lifetime_s = reg.lifetime.as_secs(),
                      binding = %reg.binding, lwm2m = %reg.version, queue = reg.queue,
                      replaced = ?replaced, location = %format!("rd/{}", reg.id), "LwM2M client registered");
                self.renewed(reg, now, true);
            }
            RegistryEvent::Updated { reg, moved_from } => {
                match moved_from {
                    Some(old) => {
                        info!(endpoint = %reg.endpoint, from = %old, to = %reg.peer,
                              "LwM2M client updated from a new address; requests go there");
                        self.peers.move_peer(&old, reg.peer, now);
                    }
                    None => debug!(endpoint = %reg.endpoint, "LwM2M registration updated"),
                }
                self.renewed(reg, now, false);
            }
            RegistryEvent::Deregistered { reg, dropped } => {
                info!(endpoint = %reg.endpoint, "LwM2M client de-registered");
                self.gone(&reg, dropped);
            }
            RegistryEvent::Expired { reg, dropped } => {
                warn!(endpoint = %reg.endpoint, lifetime_s = reg.lifetime.as_secs(),
                      "LwM2M registration expired: no Update within its lifetime");
                self.gone(&reg, dropped);
            }
            RegistryEvent::Wake {
                endpoint,
                peer,
                items,
                ..
            } => {
                debug!(%endpoint, %peer, held = items.len(), "queue-mode client awake; sending what waited");
                for h in items {
                    self.held.remove(&h.ticket);
                    self.send_request(peer, h, now);
                }
            }
            RegistryEvent::Refused {
                peer,
                endpoint,
                error,
            } => {
                warn!(%peer, endpoint = endpoint.as_deref().unwrap_or("-"), code = %error.code(),
                      "LwM2M registry request refused: {error}");
            }
        }
    }

    /// A Register or Update: the shared view, presence and the journal.
    fn renewed(&mut self, reg: Registration<SocketAddr>, now: EngineInstant, fresh: bool) {
        let ep = reg.endpoint.clone();
        let expires = now + self.registry.expires_in(&ep, now).unwrap_or_default();
        let window = self.registry.config().queue_window;
        let firmware = {
            let mut s = lock(&self.shared);
            // A Register follows a reboot: the version may have changed.
            let firmware = if fresh {
                None
            } else {
                s.registrations.get(&ep).and_then(|r| r.firmware.clone())
            };
            s.registrations.insert(
                ep.clone(),
                RegistrationInfo {
                    awake_until: reg.queue.then_some(now + window),
                    reg: reg.clone(),
                    expires,
                    renewed: now,
                    firmware: firmware.clone(),
                },
            );
            if let Some(p) = s.presence.get(&ep) {
                p.send_if_modified(|v| !std::mem::replace(v, true));
            }
            s.woke.notify_waiters();
            firmware
        };
        if let Some(j) = &self.journal {
            j.upsert(Row {
                reg,
                renewed_unix: crate::clock::now_unix(),
                firmware,
            });
        }
    }

    /// A registration ended: requests held for it fail.
    fn gone(&mut self, reg: &Registration<SocketAddr>, dropped: Vec<Held>) {
        {
            let mut s = lock(&self.shared);
            s.registrations.remove(&reg.endpoint);
            if let Some(p) = s.presence.get(&reg.endpoint) {
                p.send_if_modified(|v| std::mem::replace(v, false));
            }
        }
        if let Some(j) = &self.journal {
            j.delete(&reg.endpoint);
        }
        for h in dropped {
            self.held.remove(&h.ticket);
            let _ = h
                .reply
                .send(Err(RequestError::NotRegistered(reg.endpoint.clone())));
        }
    }

    /// Answers a request from a peer: the LwM2M registry under `/rd`,
    /// Block2 blocks of served packages otherwise.
    fn serve(&mut self, req: otabridge_codecs::coap::IncomingRequest<SocketAddr>) {
        if registry::is_registry_request(&req.packet) {
            let now = self.now();
            let response = self.registry.handle_request(req.peer, &req.packet, now);
            if let Err(e) = self.peers.respond(&req, response, now) {
                warn!(peer = %req.peer, "cannot answer: {e}");
            }
            return;
        }
        let response = {
            let s = lock(&self.shared);
            let reply = serve_block2(&self.serve, &req.packet, &mut Store(&s));
            match reply.served {
                Some(b) => notify(&s, req.peer, b),
                None => {
                    debug!(peer = %req.peer, code = %msg::code(&reply.response), "request not served")
                }
            }
            reply.response
        };
        if let Err(e) = self.peers.respond(&req, response, self.now()) {
            warn!(peer = %req.peer, "cannot answer: {e}");
        }
    }
}

/// Puts journaled registrations back into `registry` at bind (engine time
/// zero); those whose lifetime ran out while the gateway was down are
/// deleted.
fn restore(
    registry: &mut Registry<SocketAddr, Held>,
    shared: &mut Shared,
    rows: Vec<Row>,
    journal: &mut crate::journal::Journal,
) {
    let now_unix = crate::clock::now_unix();
    let grace = registry.config().grace;
    for row in rows {
        let ep = row.reg.endpoint.clone();
        let end = row.renewed_unix
            + i64::try_from((row.reg.lifetime + grace).as_secs()).unwrap_or(i64::MAX / 2);
        let left = end - now_unix;
        let restored = if left <= 0 {
            info!(endpoint = %ep, "LwM2M registration expired while the gateway was down");
            Err(None)
        } else {
            let remaining = Duration::from_secs(left as u64);
            registry
                .restore(row.reg, remaining, EngineInstant::ZERO)
                .map(|()| remaining)
                .map_err(Some)
        };
        match restored {
            Ok(remaining) => {
                let reg = registry.get(&ep).cloned().expect("just restored");
                info!(endpoint = %ep, address = %reg.peer, left_s = remaining.as_secs(), "LwM2M registration restored from the journal");
                shared.registrations.insert(
                    ep,
                    RegistrationInfo {
                        reg,
                        expires: EngineInstant::ZERO + remaining,
                        renewed: EngineInstant::ZERO,
                        awake_until: None,
                        firmware: row.firmware,
                    },
                );
            }
            Err(why) => {
                if let Some(e) = why {
                    warn!(endpoint = %ep, "journaled registration not restored: {e}");
                }
                if let Err(e) = registrations::delete(journal, &ep) {
                    warn!("journal: {e}");
                }
            }
        }
    }
}

/// Tells the watcher of this transfer: the exact peer first; otherwise the
/// only watcher of this package on the peer's IP (a child may fetch from a
/// client port other than its LwM2M port).
fn notify(s: &Shared, peer: SocketAddr, b: ServedBlock) {
    let exact = s
        .watchers
        .values()
        .find(|w| w.peer == peer && w.name == b.name);
    let target = exact.or_else(|| {
        let mut same_ip = s
            .watchers
            .values()
            .filter(|w| w.peer.ip() == peer.ip() && w.name == b.name);
        match (same_ip.next(), same_ip.next()) {
            (Some(w), None) => Some(w),
            _ => None,
        }
    });
    if let Some(w) = target {
        let _ = w.tx.try_send(b);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha_must_be_64_hex_digits() {
        assert!(parse_sha(&"ab".repeat(32)).is_some());
        assert!(parse_sha("ab").is_none());
        assert!(parse_sha(&"zz".repeat(32)).is_none());
    }

    #[tokio::test]
    async fn unknown_packages_get_4_04_and_served_ones_blocks() {
        let net =
            CoapNetwork::bind(NetworkOptions::new("127.0.0.1:0".parse().unwrap(), 1)).unwrap();
        let client =
            CoapNetwork::bind(NetworkOptions::new("127.0.0.1:0".parse().unwrap(), 2)).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..3000u32).map(|i| (i * 7) as u8).collect();
        let file = dir.path().join("pkg");
        std::fs::write(&file, &data).unwrap();
        let sha = "11".repeat(32);
        let get = |num: u32| {
            let mut p = msg::request(Code::GET, &["fw", sha.as_str()]);
            msg::set_block2(
                &mut p,
                otabridge_codecs::coap::BlockOpt {
                    num,
                    more: false,
                    szx: 6,
                },
            );
            p
        };
        let r = client.request(net.local_addr(), get(0)).await.unwrap();
        assert_eq!(msg::code(&r), Code::NOT_FOUND);
        let guard = net.serve_package(&sha, &file).unwrap();
        let mut watch = net.watch_served(client.local_addr(), &sha);
        let r = client.request(net.local_addr(), get(2)).await.unwrap();
        assert_eq!(msg::code(&r), Code::CONTENT);
        assert_eq!(r.payload, data[2048..]);
        let b = watch.next().await;
        assert_eq!((b.offset, b.len, b.last), (2048, 952, true));
        drop(guard);
        let r = client.request(net.local_addr(), get(0)).await.unwrap();
        assert_eq!(msg::code(&r), Code::NOT_FOUND, "no longer served");
    }

    /// A fake Block1 server on a plain socket: the next datagram, decoded.
    async fn next_request(s: &UdpSocket) -> (Packet, SocketAddr) {
        let mut buf = [0u8; MAX_DATAGRAM];
        let (n, from) = s.recv_from(&mut buf).await.unwrap();
        (msg::decode(&buf[..n]).unwrap(), from)
    }

    async fn answer(s: &UdpSocket, to: SocketAddr, req: &Packet, code: Code) {
        let mut p = msg::response(code);
        p.header
            .set_type(otabridge_codecs::coap::MessageType::Acknowledgement);
        p.header.message_id = req.header.message_id;
        p.set_token(req.get_token().to_vec());
        if let Ok(Some(b)) = msg::block1(req) {
            msg::set_block1(&mut p, b);
        }
        s.send_to(&msg::encode(&p, 1500).unwrap(), to)
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn a_request_during_a_push_waits_for_the_block_in_flight() {
        let net =
            CoapNetwork::bind(NetworkOptions::new("127.0.0.1:0".parse().unwrap(), 4)).unwrap();
        let server = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let peer = server.local_addr().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("img");
        std::fs::write(&file, vec![7u8; 3 * 64]).unwrap();
        let push = PushConfig {
            path: vec!["up".into()],
            total_len: 3 * 64,
            szx: 2,
            content_format: None,
            request_tag: None,
            resume_offset: 0,
            max_restarts: 0,
        };
        let image = FileImage(File::open(&file).unwrap());
        let mut handle = net.start_push(peer, push, image).unwrap();
        assert_eq!(handle.acked(), (0, None));
        let (b0, gw) = next_request(&server).await;
        assert_eq!(msg::block1(&b0).unwrap().map(|b| b.num), Some(0));
        // A read for the same peer while block 0 is in flight: held.
        let get = tokio::spawn({
            let net = net.clone();
            async move { net.request(peer, msg::request(Code::GET, &["v"])).await }
        });
        // Let it reach the network task before block 0's answer does.
        for _ in 0..4 {
            tokio::task::yield_now().await;
        }
        answer(&server, gw, &b0, Code::CONTINUE).await;
        // NSTART 1: the held read goes out alone, before block 1.
        let (r, _) = next_request(&server).await;
        assert_eq!(msg::code(&r), Code::GET, "the read, not block 1");
        answer(&server, gw, &r, Code::CONTENT).await;
        assert_eq!(msg::code(&get.await.unwrap().unwrap()), Code::CONTENT);
        for num in 1..3u32 {
            let (b, _) = next_request(&server).await;
            assert_eq!(msg::block1(&b).unwrap().map(|b| b.num), Some(num));
            let code = if num == 2 {
                Code::CHANGED
            } else {
                Code::CONTINUE
            };
            answer(&server, gw, &b, code).await;
        }
        let done = loop {
            match handle.next().await {
                PushUpdate::Progress(_) => {}
                PushUpdate::Done(d) => break d,
                PushUpdate::Closed => panic!("network closed"),
            }
        };
        assert_eq!(done.result, Ok(Code::CHANGED));
        assert_eq!(done.acked, 3 * 64);
        assert_eq!(done.events.last(), Some(&PushEvent::Done(Code::CHANGED)));
        let (acked, at) = handle.acked();
        assert_eq!(acked, 3 * 64);
        assert!(at.is_some_and(|t| t <= net.now()), "acknowledged at {at:?}");
    }

    #[tokio::test]
    async fn silent_peer_is_a_transport_failure() {
        let mut o = NetworkOptions::new("127.0.0.1:0".parse().unwrap(), 3);
        o.exchange.ack_timeout = Duration::from_millis(10);
        o.exchange.max_retransmit = 1;
        let net = CoapNetwork::bind(o).unwrap();
        // A bound socket that never answers.
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let r = net
            .request(
                silent.local_addr().unwrap(),
                msg::request(Code::GET, &["3", "0", "3"]),
            )
            .await;
        assert_eq!(r, Err(RequestError::Transport(TransportFailure::GaveUp)));
    }
}
