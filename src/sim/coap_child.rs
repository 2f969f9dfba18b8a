//! A simulated LwM2M child on its own UDP socket: /3/0/3 and the Firmware
//! Update object /5 (OMA 5.xml, docs/protocols/children.md §3), push and pull, with fault
//! injection at the socket seam.
//!
//! - Push: Block1 `PUT /5/0/0` is reassembled in order (RFC 7959 §2.3) with
//!   a configurable preferred block size (answered in the 2.31's Block1); a
//!   block past what it holds gets 4.08 (§2.9.2), an image above
//!   `max_image` 4.13 with Size1 (§2.9.3).
//! - Pull: a `PUT /5/0/1` URI starts Block2 GETs to it (Size2: 0 on the
//!   first, as Zephyr's pull context does, docs/protocols/children.md §2.3), checking the
//!   ETag stays the same.
//! - The image is hashed as it arrives, never stored, so 500 simulated
//!   children fit in a few MiB. A whole image whose SHA-256 maps to a
//!   version (or any image, with `any_image_version`) gives State 2;
//!   otherwise result 5 (integrity failure).
//! - Execute `/5/0/2` in State 2 answers 2.04, then the device "reboots"
//!   (silent for `reboot_time`, message-layer memory lost) into the new
//!   version with result 1, or keeps its version and reports the result set
//!   with [`CoapChildSim::set_update_failure`].
//!
//! - Registering mode ([`SimOptions::register`], issue 13): the child is
//!   an LwM2M client of a server (the gateway): it registers at start and
//!   after every reboot (`POST /rd?ep=..&lt=..&lwm2m=..&b=..`, links
//!   `</1/0>,</3/0>,</5/0>`), sends Updates when told (or every half
//!   lifetime), can move to a new source port ([`CoapChildSim::rebind`],
//!   a NAT rebinding) and de-register. In queue mode it hears requests
//!   only for `awake` after it last sent something.
//!
//! - Observe (RFC 7641 server side, [`SimOptions::observe`]): a GET of
//!   `/5/0/3` or `/5/0/5` with `Observe: 0` registers its token (at most
//!   [`MAX_OBSERVERS`]); every change of State or Update Result is
//!   notified (CON or NON, sequence numbers counting up, in the format the
//!   registration's Accept chose). A RST to a notification or a GET with
//!   `Observe: 1` ends the observation; a reboot forgets them all. CON
//!   notifications are sent once (not retransmitted, unlike RFC 7641
//!   §4.5): a lost one is what the gateway's safety read is for.
//!   [`ObserveMode::Refuse`] answers such GETs without the option, as a
//!   client without Observe does (RFC 7641 §3.1), to test the fallback.
//!
//! Faults sit between the device and its socket (smoltcp's seam): loss,
//! duplication, reordering (an extra random delay lets later datagrams
//! overtake) and delay apply to both directions; a reboot after N blocks
//! loses the transfer in progress. All randomness comes from `seed`.

use std::collections::{HashMap, HashSet};
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use otabridge_codecs::coap::{
    block::szx_to_size, msg, BlockOpt, CoapOption, Code, ExchangeConfig, ExchangeEvent, Exchanges,
    IncomingRequest, Packet, RequestId,
};
use otabridge_codecs::lwm2m::content::{self, ItemPath, Value};
use otabridge_codecs::lwm2m::{ContentFormat, DeliveryMethod, Path, State, UpdateResult};
use otabridge_codecs::rng::Rng;

use crate::child::coap::seam::{Dir, LinkFaults, Seam};
use otabridge_codecs::time::Instant;
use sha2::{Digest, Sha256};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};

/// How a registering simulated child talks to its LwM2M server.
#[derive(Debug, Clone)]
pub struct Registering {
    /// The server (the gateway's `coap.listen`).
    pub server: SocketAddr,
    /// Its Endpoint Client Name (`ep`).
    pub endpoint: String,
    /// `lt`, seconds.
    pub lifetime_s: u32,
    /// `lwm2m`: "1.0" (queue mode as `b=UQ`) or "1.1" (`Q`).
    pub lwm2m: String,
    /// Queue mode.
    pub queue: bool,
    /// Queue mode: how long it listens after it last sent something.
    pub awake: Duration,
    /// Sends an Update every half lifetime by itself (tests drive Updates
    /// with [`CoapChildSim::update`] instead).
    pub auto_update: bool,
}

impl Registering {
    /// A 1.1 client `endpoint` of `server`, lifetime 300 s, not queued,
    /// Updates only when told.
    pub fn new(server: SocketAddr, endpoint: &str) -> Self {
        Registering {
            server,
            endpoint: endpoint.into(),
            lifetime_s: 300,
            lwm2m: "1.1".into(),
            queue: false,
            awake: Duration::from_secs(10),
            auto_update: false,
        }
    }
}

/// How the simulated child takes Observe registrations (RFC 7641).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ObserveMode {
    /// Accept them; notifications are confirmable (the default).
    #[default]
    Con,
    /// Accept them; notifications are non-confirmable.
    Non,
    /// Answer without the Observe option: not observable.
    Refuse,
    /// Accept them and never notify, as a child that lost its
    /// observation list right after registering it.
    Silent,
}

/// Observations a simulated child keeps; further registrations are
/// answered without Observe (RFC 7641 §4.1 allows refusing).
pub const MAX_OBSERVERS: usize = 8;

/// Faults injected at the socket seam (both directions).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Faults {
    /// Datagrams dropped, in percent.
    pub loss_pct: f64,
    /// Datagrams sent twice, in percent.
    pub duplicate_pct: f64,
    /// Datagrams held back by a random extra delay (so that later ones
    /// overtake them), in percent.
    pub reorder_pct: f64,
    /// Delay added to every datagram.
    pub delay: Duration,
    /// Reboot once after this many image blocks were received (push or
    /// pull), losing the transfer in progress.
    pub reboot_after_blocks: Option<u32>,
    /// Every answer to a write of a Package URI (`PUT /5/0/1`, not the
    /// empty reset) is lost on the way out, retransmitted replays
    /// included: the child takes the URI and starts fetching, the gateway
    /// never hears that it did (issue 17, defect 3).
    pub lose_uri_answers: bool,
    /// Every answer to the Block1 block that completes an image is lost on
    /// the way out: the child holds the whole image (State 2), the gateway
    /// never hears it (a gateway stopped during the last block; issue 17,
    /// defect 4).
    pub lose_final_block_answers: bool,
    /// Requests for these paths (`"5/0/9"`) get no answer at all, their
    /// retransmissions neither: a client that drops what it cannot parse
    /// (node-coap), or a buggy one.
    pub silent_on: Vec<String>,
}

/// How the simulated child behaves.
#[derive(Debug, Clone)]
pub struct SimOptions {
    /// Where to listen; port 0 picks a free port.
    pub listen: SocketAddr,
    /// The running firmware version (/3/0/3).
    pub version: String,
    /// SHA-256 (hex) of each image the child accepts, and the version it
    /// carries.
    pub images: HashMap<String, String>,
    /// The version any other whole image carries; `None`: other images fail
    /// the integrity check (result 5).
    pub any_image_version: Option<String>,
    /// Preferred block size exponent: pushed blocks larger than this are
    /// answered with this size (RFC 7959 §2.3); pulls ask for it.
    pub preferred_szx: u8,
    /// Largest image accepted (4.13 with Size1 above it).
    pub max_image: u32,
    /// How long a reboot keeps the child silent.
    pub reboot_time: Duration,
    /// Socket-seam faults.
    pub faults: Faults,
    /// Seed of every random choice (faults, message ids, tokens, jitter).
    pub seed: u64,
    /// The child's message layer for its own pull requests (timers).
    pub exchange: ExchangeConfig,
    /// Registers with an LwM2M server (`None`: waits to be polled).
    pub register: Option<Registering>,
    /// The content formats it writes its reads in (OMA TS Core 1.1 §7.3):
    /// a read whose Accept names one of them is answered in it, one with
    /// an Accept it lacks gets 4.06 Not Acceptable (RFC 7252 §5.10.4), one
    /// without Accept the first that can carry the value (a
    /// multiple-instance resource skips text/plain). Default: text/plain first, then every
    /// other format `lwm2m::content` writes.
    pub formats: Vec<ContentFormat>,
    /// `/5/0/9` (5.xml): pull only refuses a push (`PUT /5/0/0` gets
    /// 4.05), push only a Package URI (a non-empty `PUT /5/0/1` gets 4.05);
    /// default both.
    pub delivery_method: DeliveryMethod,
    /// Observe on `/5/0/3` and `/5/0/5`.
    pub observe: ObserveMode,
}

impl SimOptions {
    /// A child on 127.0.0.1 running `version`, accepting any image as
    /// `next_version`, 1024-byte blocks, no faults.
    pub fn new(version: &str, next_version: &str) -> Self {
        SimOptions {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            version: version.into(),
            images: HashMap::new(),
            any_image_version: Some(next_version.into()),
            preferred_szx: 6,
            max_image: 64 * 1024 * 1024,
            reboot_time: Duration::from_millis(200),
            faults: Faults::default(),
            seed: 1,
            exchange: ExchangeConfig::default(),
            register: None,
            formats: ContentFormat::NAMES.iter().map(|(_, f)| *f).collect(),
            delivery_method: DeliveryMethod::Both,
            observe: ObserveMode::Con,
        }
    }
}

/// Counters for tests and the bench.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Image blocks taken (push) or fetched (pull), duplicates excluded.
    pub blocks: u64,
    /// Transfers started from byte 0 (a push's block 0, a pull's URI).
    pub starts: u32,
    /// Block1 requests refused with 4.08.
    pub incomplete: u32,
    /// Reboots (updates and faults).
    pub reboots: u32,
    /// Datagrams the seam dropped.
    pub dropped: u64,
    /// Datagrams the seam duplicated.
    pub duplicated: u64,
    /// Whole images received.
    pub images: u32,
    /// Registers answered 2.01.
    pub registrations: u32,
    /// Updates answered 2.04.
    pub updates: u32,
    /// Requests not heard because the child slept (queue mode).
    pub slept_through: u32,
    /// GETs of /5/0/3 answered, Observe registrations included.
    pub state_reads: u32,
    /// Observe registrations accepted.
    pub observations: u32,
    /// Notifications sent.
    pub notifications: u64,
    /// Observations the gateway ended (RST to a notification, or a GET
    /// with `Observe: 1`).
    pub observe_cancelled: u32,
    /// Requests left unanswered ([`Faults::silent_on`]), retransmissions
    /// not counted.
    pub ignored: u32,
}

/// Why the simulator could not start.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// The socket could not be bound.
    #[error("coap child sim: bind {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The exchange settings are invalid.
    #[error("coap child sim: {0}")]
    Config(String),
}

#[derive(Debug)]
struct Pull {
    server: SocketAddr,
    path: Vec<String>,
    szx: u8,
    etag: Option<Vec<u8>>,
    request: Option<RequestId>,
}

#[derive(Debug)]
struct Transfer {
    hasher: Sha256,
    received: u64,
}

/// The device behind the seam.
#[derive(Debug)]
struct Device {
    opts: SimOptions,
    version: String,
    state: State,
    result: UpdateResult,
    ex: Exchanges<SocketAddr>,
    transfer: Option<Transfer>,
    pull: Option<Pull>,
    /// The whole image: its SHA-256 and the version it carries.
    staged: Option<(String, Option<String>)>,
    last_image: Option<String>,
    /// Until when the device is rebooting (deaf and mute), and what it
    /// comes back as.
    rebooting: Option<(Instant, Reboot)>,
    download_failure: Option<UpdateResult>,
    update_failure: Option<UpdateResult>,
    stats: SimStats,
    /// The lossy link between the device and its socket (the gateway's
    /// own seam, [`crate::child::coap::seam`]).
    seam: Seam,
    exchange_seed: u64,
    /// (peer, message id) of requests whose answers the seam loses
    /// (`Faults::lose_uri_answers`, `Faults::lose_final_block_answers`).
    muted: HashSet<(SocketAddr, u16)>,
    /// Device readings other than the firmware's (`/3/0/9` battery,
    /// `/3/0/10` memory free, `/4/0/2` signal): path → plain-text value,
    /// 4.04 when absent ([`CoapChildSim::set_reading`]).
    readings: HashMap<String, String>,
    /// Its socket's address (it moves with [`CoapChildSim::rebind`]).
    addr: SocketAddr,
    reg: RegState,
    /// Observations of /5/0/3 and /5/0/5 (RFC 7641).
    observers: Vec<Observer>,
}

/// One observation the child serves.
#[derive(Debug)]
struct Observer {
    peer: SocketAddr,
    token: Vec<u8>,
    /// "5/0/3" or "5/0/5".
    path: &'static str,
    format: ContentFormat,
    /// The last sequence number sent (RFC 7641 §4.4).
    seq: u32,
    /// The value last sent.
    value: i64,
    /// Message ids of the notifications sent, to match a RST.
    sent: Vec<u16>,
}

/// A registering child's side of the Registration interface.
#[derive(Debug, Default)]
struct RegState {
    /// `rd/<id>` from the 2.01.
    location: Option<String>,
    /// The registry request in flight.
    request: Option<(RequestId, RegOp)>,
    /// When to send the next Register or Update by itself.
    next: Option<(Instant, RegOp)>,
    /// Queue mode: listening until then.
    awake_until: Instant,
    /// The code of the last registry answer.
    last_code: Option<Code>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RegOp {
    Register,
    Update,
    Deregister,
}

/// What the test side asks of a running child.
#[derive(Debug)]
enum SimCmd {
    Reg(RegOp),
    Rebind(oneshot::Sender<std::io::Result<SocketAddr>>),
}

#[derive(Debug, Clone)]
enum Reboot {
    /// A fault: the transfer is lost; `result` is what /5/0/5 says after.
    Crash { result: UpdateResult },
    /// An update: run `version` or fail with `failure`.
    Update {
        version: Option<String>,
        failure: Option<UpdateResult>,
    },
}

fn lock(m: &Mutex<Device>) -> MutexGuard<'_, Device> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A running simulated child; dropping it stops the child.
#[derive(Debug)]
pub struct CoapChildSim {
    device: Arc<Mutex<Device>>,
    cmds: mpsc::UnboundedSender<SimCmd>,
    stop: Option<oneshot::Sender<()>>,
}

impl CoapChildSim {
    /// Binds the socket and starts the child (needs a tokio runtime).
    pub async fn start(opts: SimOptions) -> Result<Self, SimError> {
        let bind_err = |source| SimError::Bind {
            addr: opts.listen,
            source,
        };
        let socket = UdpSocket::bind(opts.listen).await.map_err(bind_err)?;
        let addr = socket.local_addr().map_err(bind_err)?;
        let mut rng = Rng::new(opts.seed);
        let exchange_seed = rng.next_u64();
        let ex = Exchanges::new(ExchangeConfig {
            seed: exchange_seed,
            ..opts.exchange.clone()
        })
        .map_err(|e| SimError::Config(e.to_string()))?;
        let reg = RegState {
            next: opts
                .register
                .as_ref()
                .map(|_| (Instant::ZERO, RegOp::Register)),
            ..RegState::default()
        };
        let device = Arc::new(Mutex::new(Device {
            addr,
            reg,
            version: opts.version.clone(),
            state: State::Idle,
            result: UpdateResult::Initial,
            ex,
            transfer: None,
            pull: None,
            staged: None,
            last_image: None,
            rebooting: None,
            download_failure: None,
            update_failure: None,
            stats: SimStats::default(),
            seam: Seam::new(LinkFaults {
                loss_pct: opts.faults.loss_pct,
                duplicate_pct: opts.faults.duplicate_pct,
                reorder_pct: opts.faults.reorder_pct,
                delay: opts.faults.delay,
                seed: rng.next_u64(),
            }),
            exchange_seed,
            muted: HashSet::new(),
            readings: HashMap::new(),
            observers: Vec::new(),
            opts,
        }));
        let (stop, stopped) = oneshot::channel();
        let (cmds, cmd_rx) = mpsc::unbounded_channel();
        tokio::spawn(run(socket, device.clone(), stopped, cmd_rx));
        Ok(CoapChildSim {
            device,
            cmds,
            stop: Some(stop),
        })
    }

    /// The child's CoAP endpoint (it moves with [`CoapChildSim::rebind`]).
    pub fn addr(&self) -> SocketAddr {
        lock(&self.device).addr
    }

    /// Registering mode: sends an Update now (a Register if it has no
    /// registration).
    pub fn update(&self) {
        let _ = self.cmds.send(SimCmd::Reg(RegOp::Update));
    }

    /// Registering mode: sends a Register now.
    pub fn register(&self) {
        let _ = self.cmds.send(SimCmd::Reg(RegOp::Register));
    }

    /// Registering mode: sends a De-register now.
    pub fn deregister(&self) {
        let _ = self.cmds.send(SimCmd::Reg(RegOp::Deregister));
    }

    /// Moves to a new UDP source port on the same IP (a NAT rebinding),
    /// then sends an Update from there; returns the new address.
    pub async fn rebind(&self) -> std::io::Result<SocketAddr> {
        let (tx, rx) = oneshot::channel();
        let closed = || std::io::Error::other("the simulated child stopped");
        self.cmds.send(SimCmd::Rebind(tx)).map_err(|_| closed())?;
        rx.await.map_err(|_| closed())?
    }

    /// Registering mode: its location id (`rd/<id>`), once registered.
    pub fn location(&self) -> Option<String> {
        lock(&self.device).reg.location.clone()
    }

    /// Registering mode: the code of the server's last registry answer.
    pub fn last_registry_code(&self) -> Option<Code> {
        lock(&self.device).reg.last_code
    }

    /// The running version.
    pub fn version(&self) -> String {
        lock(&self.device).version.clone()
    }

    /// SHA-256 (hex) of the last whole image received.
    pub fn last_image_sha256(&self) -> Option<String> {
        lock(&self.device).last_image.clone()
    }

    /// Counters so far.
    pub fn stats(&self) -> SimStats {
        let d = lock(&self.device);
        let seam = d.seam.stats();
        SimStats {
            dropped: d.stats.dropped + seam.dropped,
            duplicated: seam.duplicated,
            ..d.stats.clone()
        }
    }

    /// From now on a whole image reports `result` in /5/0/5 instead of
    /// State 2 (`None`: back to normal).
    pub fn set_download_failure(&self, result: Option<UpdateResult>) {
        lock(&self.device).download_failure = result;
    }

    /// From now on Execute reboots into the old version and reports
    /// `result` (`None`: back to normal).
    pub fn set_update_failure(&self, result: Option<UpdateResult>) {
        lock(&self.device).update_failure = result;
    }

    /// Sets (or, with `None`, removes) a reading the child answers GETs of
    /// `path` (`"/3/0/9"`) with, as plain text: the pre-flight's battery,
    /// memory free and signal (docs/images.md).
    pub fn set_reading(&self, path: &str, value: Option<i64>) {
        let key = path.trim_start_matches('/').to_owned();
        let mut d = lock(&self.device);
        match value {
            Some(v) => d.readings.insert(key, v.to_string()),
            None => d.readings.remove(&key),
        };
    }

    /// Observations it serves now.
    pub fn observers(&self) -> usize {
        lock(&self.device).observers.len()
    }

    /// Makes a whole image with this SHA-256 carry `version`.
    pub fn add_image(&self, sha256_hex: &str, version: &str) {
        lock(&self.device)
            .opts
            .images
            .insert(sha256_hex.to_ascii_lowercase(), version.into());
    }
}

impl Drop for CoapChildSim {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

async fn run(
    mut socket: UdpSocket,
    device: Arc<Mutex<Device>>,
    mut stopped: oneshot::Receiver<()>,
    mut cmds: mpsc::UnboundedReceiver<SimCmd>,
) {
    let origin = tokio::time::Instant::now();
    let now = || Instant::from_millis(origin.elapsed().as_millis() as u64);
    let mut buf = vec![0u8; 2048];
    loop {
        let wake = lock(&device).next_wake();
        let wake = wake.map(|t| origin + Duration::from_millis(t.as_millis()));
        tokio::select! {
            _ = &mut stopped => return,
            Some(cmd) = cmds.recv() => match cmd {
                SimCmd::Reg(op) => lock(&device).reg_send(op, now()),
                SimCmd::Rebind(done) => {
                    let ip = lock(&device).addr.ip();
                    match UdpSocket::bind(SocketAddr::new(ip, 0)).await.and_then(|s| {
                        let a = s.local_addr()?;
                        Ok((s, a))
                    }) {
                        Ok((s, a)) => {
                            socket = s;
                            let mut d = lock(&device);
                            d.addr = a;
                            d.reg_send(RegOp::Update, now());
                            let _ = done.send(Ok(a));
                        }
                        Err(e) => {
                            let _ = done.send(Err(e));
                        }
                    }
                }
            },
            r = socket.recv_from(&mut buf) => {
                if let Ok((n, peer)) = r {
                    lock(&device).seam.pass(Dir::In, peer, buf[..n].to_vec(), now());
                }
            }
            _ = crate::child::sleep_until_opt(wake) => {}
        }
        let out = lock(&device).step(now());
        for (peer, bytes) in out {
            // A failed send is one more lost datagram.
            let _ = socket.send_to(&bytes, peer).await;
        }
    }
}

impl Device {
    fn next_wake(&self) -> Option<Instant> {
        [
            self.seam.next_due(),
            self.ex.poll_timeout(),
            self.rebooting.as_ref().map(|r| r.0),
            self.reg
                .next
                .filter(|_| self.rebooting.is_none())
                .map(|n| n.0),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Everything due at `now`; returns the datagrams to put on the wire.
    fn step(&mut self, now: Instant) -> Vec<(SocketAddr, Vec<u8>)> {
        let mut wire = Vec::new();
        if self.rebooting.as_ref().is_some_and(|r| now >= r.0) {
            let (_, how) = self.rebooting.take().expect("checked");
            self.boot(how, now);
        }
        if self.rebooting.is_none() {
            if let Some((t, op)) = self.reg.next {
                if t <= now {
                    self.reg.next = None;
                    self.reg_send(op, now);
                }
            }
        }
        while let Some((dir, peer, bytes)) = self.seam.due(now) {
            match dir {
                Dir::Out => wire.push((peer, bytes)),
                // A rebooting device hears nothing.
                Dir::In if self.rebooting.is_some() => {}
                // Queue mode: asleep, it hears no requests (RFC 7252 §3:
                // code class 0, not empty); answers to its own still come.
                Dir::In if self.asleep(now) && bytes.len() > 1 && (1..32).contains(&bytes[1]) => {
                    self.stats.slept_through += 1;
                }
                // A RST to a notification ends its observation (RFC 7641 §3.6).
                Dir::In if self.observation_reset(peer, &bytes) => {}
                Dir::In => {
                    let _ = self.ex.handle_datagram(peer, &bytes, now);
                }
            }
        }
        if self.rebooting.is_none() {
            self.ex.handle_timeout(now);
        }
        while let Some(ev) = self.ex.poll_event() {
            if self.rebooting.is_some() {
                break;
            }
            self.on_event(ev, now);
        }
        if self.rebooting.is_none() {
            self.notify(now);
        }
        while let Some(t) = self.ex.poll_transmit() {
            self.sent(now);
            if self.is_muted(&t.peer, &t.bytes) {
                self.stats.dropped += 1;
                continue;
            }
            self.seam.pass(Dir::Out, t.peer, t.bytes, now);
        }
        // Zero-delay datagrams go out in this same step.
        while let Some(d) = self.seam.due_going(Dir::Out, now) {
            wire.push(d);
        }
        wire
    }

    /// An ACK (RFC 7252 §3: type 2) to a request whose answers are lost.
    fn is_muted(&self, peer: &SocketAddr, bytes: &[u8]) -> bool {
        bytes.len() >= 4
            && (bytes[0] >> 4) & 3 == 2
            && self
                .muted
                .contains(&(*peer, u16::from_be_bytes([bytes[2], bytes[3]])))
    }

    fn mute(&mut self, req: &IncomingRequest<SocketAddr>) {
        self.muted.insert((req.peer, req.packet.header.message_id));
    }

    /// Queue mode: not listening at `now`.
    fn asleep(&self, now: Instant) -> bool {
        self.opts.register.as_ref().is_some_and(|r| r.queue) && now >= self.reg.awake_until
    }

    /// It sent something: a queue-mode child listens for a while.
    fn sent(&mut self, now: Instant) {
        if let Some(r) = &self.opts.register {
            self.reg.awake_until = self.reg.awake_until.max(now + r.awake);
        }
    }

    /// Sends a Register, Update or De-register to its server (an Update
    /// or De-register without a registration becomes a Register).
    fn reg_send(&mut self, op: RegOp, now: Instant) {
        let Some(r) = self.opts.register.clone() else {
            return;
        };
        if let Some((id, _)) = self.reg.request.take() {
            self.ex.cancel(id);
        }
        let (op, mut p) = match (op, self.reg.location.clone()) {
            (RegOp::Update, Some(loc)) => (op, msg::request(Code::POST, &["rd", loc.as_str()])),
            (RegOp::Deregister, Some(loc)) => (op, msg::request(Code(0x04), &["rd", loc.as_str()])),
            _ => {
                let mut p = msg::request(Code::POST, &["rd"]);
                let b = if r.queue && r.lwm2m == "1.0" {
                    "UQ"
                } else {
                    "U"
                };
                for q in [
                    format!("ep={}", r.endpoint),
                    format!("lt={}", r.lifetime_s),
                    format!("lwm2m={}", r.lwm2m),
                    format!("b={b}"),
                ] {
                    p.add_option(CoapOption::UriQuery, q.into_bytes());
                }
                if r.queue && r.lwm2m != "1.0" {
                    p.add_option(CoapOption::UriQuery, b"Q".to_vec());
                }
                msg::set_uint(&mut p, CoapOption::ContentFormat, 40);
                p.payload = b"</1/0>,</3/0>,</5/0>".to_vec();
                (RegOp::Register, p)
            }
        };
        p.header
            .set_type(otabridge_codecs::coap::MessageType::Confirmable);
        if let Ok(id) = self.ex.start_request(r.server, p, now) {
            self.reg.request = Some((id, op));
        }
    }

    /// The server's answer to a registry request.
    fn on_reg_response(&mut self, op: RegOp, resp: &Packet, now: Instant) {
        let code = msg::code(resp);
        self.reg.last_code = Some(code);
        let Some(r) = self.opts.register.clone() else {
            return;
        };
        let half = Duration::from_secs(u64::from(r.lifetime_s / 2).max(1));
        match (op, code) {
            (RegOp::Register, Code::CREATED) => {
                self.reg.location = resp
                    .get_option(CoapOption::LocationPath)
                    .and_then(|l| l.iter().nth(1).cloned())
                    .and_then(|v| String::from_utf8(v).ok());
                self.stats.registrations += 1;
            }
            (RegOp::Update, Code::CHANGED) => self.stats.updates += 1,
            // The server forgot us: register again (OMA TS Core §6.2.2).
            (RegOp::Update, Code::NOT_FOUND) => {
                self.reg.location = None;
                self.reg.next = Some((now, RegOp::Register));
                return;
            }
            (RegOp::Deregister, _) => {
                self.reg.location = None;
                return;
            }
            _ => return,
        }
        if r.auto_update {
            self.reg.next = Some((now + half, RegOp::Update));
        }
    }

    fn on_event(&mut self, ev: ExchangeEvent<SocketAddr>, now: Instant) {
        match ev {
            ExchangeEvent::Request(req) => self.on_request(req, now),
            ExchangeEvent::Response { id, response, .. }
                if self.reg.request.is_some_and(|(r, _)| r == id) =>
            {
                let (_, op) = self.reg.request.take().expect("checked");
                self.on_reg_response(op, &response, now);
            }
            ExchangeEvent::Response { id, response, .. } => {
                self.on_pull_response(id, response, now)
            }
            ExchangeEvent::GaveUp { id, .. }
            | ExchangeEvent::TimedOut { id, .. }
            | ExchangeEvent::Reset { id, .. }
                if self.reg.request.is_some_and(|(r, _)| r == id) =>
            {
                // The server did not answer: try again in a while.
                let (_, op) = self.reg.request.take().expect("checked");
                self.reg.next = Some((now + Duration::from_secs(2), op));
            }
            ExchangeEvent::GaveUp { id, .. }
            | ExchangeEvent::TimedOut { id, .. }
            | ExchangeEvent::Reset { id, .. } => {
                if self.pull.as_ref().is_some_and(|p| p.request == Some(id)) {
                    // 5.xml result 4: connection lost during download.
                    self.abort_download(UpdateResult::ConnectionLost);
                }
            }
            // The child observes nothing itself.
            ExchangeEvent::Notification { .. } => {}
        }
    }

    /// `bytes` is a RST (RFC 7252 §3: type 3, code 0) to a notification
    /// it sent `peer`: that observation ends.
    fn observation_reset(&mut self, peer: SocketAddr, bytes: &[u8]) -> bool {
        if bytes.len() < 4 || bytes[0] >> 4 & 3 != 3 || bytes[1] != 0 {
            return false;
        }
        let mid = u16::from_be_bytes([bytes[2], bytes[3]]);
        let before = self.observers.len();
        self.observers
            .retain(|o| !(o.peer == peer && o.sent.contains(&mid)));
        let ended = before - self.observers.len();
        self.stats.observe_cancelled += ended as u32;
        ended > 0
    }

    /// The value of an observable resource now.
    fn observed_value(&self, path: &str) -> i64 {
        if path == "5/0/3" {
            self.state as i64
        } else {
            self.result as i64
        }
    }

    /// Notifies every observer whose resource changed (RFC 7641 §4.2).
    fn notify(&mut self, now: Instant) {
        if self.opts.observe == ObserveMode::Silent {
            return;
        }
        let con = self.opts.observe != ObserveMode::Non;
        for i in 0..self.observers.len() {
            let value = self.observed_value(self.observers[i].path);
            let o = &mut self.observers[i];
            if o.value == value {
                continue;
            }
            o.value = value;
            o.seq = (o.seq + 1) & 0x00ff_ffff;
            let Ok(path) = Path::parse(o.path) else {
                continue;
            };
            let item = ItemPath {
                resource: path,
                instance: None,
            };
            let Ok(body) = content::encode(o.format, &[(item, Value::Integer(value))]) else {
                continue;
            };
            let mut p = otabridge_codecs::coap::observe::notification(o.seq, &body);
            msg::set_uint(&mut p, CoapOption::ContentFormat, u32::from(o.format.0));
            p.header.set_type(if con {
                otabridge_codecs::coap::MessageType::Confirmable
            } else {
                otabridge_codecs::coap::MessageType::NonConfirmable
            });
            let (peer, token) = (o.peer, o.token.clone());
            p.set_token(token);
            let mid = self.ex.next_message_id(&peer);
            p.header.message_id = mid;
            let o = &mut self.observers[i];
            o.sent.push(mid);
            if o.sent.len() > 16 {
                o.sent.remove(0);
            }
            if let Ok(bytes) = msg::encode(&p, msg::DEFAULT_MAX_MESSAGE) {
                self.stats.notifications += 1;
                self.sent(now);
                self.seam.pass(Dir::Out, peer, bytes, now);
            }
        }
    }

    /// A GET of an observable resource: registers or deregisters an
    /// observation as its Observe option asks (RFC 7641 §3.1, §3.6) and
    /// answers with the value, with the Observe option when registered.
    fn observable_read(
        &mut self,
        req: &IncomingRequest<SocketAddr>,
        path: &'static str,
        now: Instant,
    ) {
        let value = self.observed_value(path);
        let observe = msg::uint(&req.packet, CoapOption::Observe).ok().flatten();
        let (peer, token) = (req.peer, req.packet.get_token().to_vec());
        if observe.is_some() {
            // A new registration with the same token replaces the old
            // one (RFC 7641 §4.1); a deregistration removes it.
            let before = self.observers.len();
            self.observers
                .retain(|o| !(o.peer == peer && o.token == token));
            if observe == Some(otabridge_codecs::coap::observe::DEREGISTER) {
                self.stats.observe_cancelled += (before - self.observers.len()) as u32;
            }
        }
        let register = observe == Some(otabridge_codecs::coap::observe::REGISTER)
            && self.opts.observe != ObserveMode::Refuse
            && self.observers.len() < MAX_OBSERVERS;
        let packet = match self.read_packet(req, path, vec![(None, Value::Integer(value))]) {
            Ok(p) => p,
            Err(code) => return self.reply(req, code, b"", now),
        };
        let mut packet = packet;
        if register {
            let format = msg::uint(&packet, CoapOption::ContentFormat)
                .ok()
                .flatten()
                .map_or(ContentFormat::TEXT_PLAIN, |f| ContentFormat(f as u16));
            self.observers.push(Observer {
                peer,
                token,
                path,
                format,
                seq: 0,
                value,
                sent: Vec::new(),
            });
            self.stats.observations += 1;
            msg::set_uint(&mut packet, CoapOption::Observe, 0);
        }
        let _ = self.ex.respond(req, packet, now);
    }

    fn reply(
        &mut self,
        req: &IncomingRequest<SocketAddr>,
        code: Code,
        payload: &[u8],
        now: Instant,
    ) {
        let mut p = msg::response(code);
        p.payload = payload.to_vec();
        let _ = self.ex.respond(req, p, now);
    }

    /// Answers a read of `path` with `values`, in the format its Accept
    /// asks for ([`SimOptions::formats`]).
    fn read_reply(
        &mut self,
        req: &IncomingRequest<SocketAddr>,
        path: &str,
        values: Vec<(Option<u16>, Value)>,
        now: Instant,
    ) {
        match self.read_packet(req, path, values) {
            Ok(p) => {
                let _ = self.ex.respond(req, p, now);
            }
            Err(code) => self.reply(req, code, b"", now),
        }
    }

    /// The answer to a read of `path` (see [`Device::read_reply`]), or the
    /// error code to answer with.
    fn read_packet(
        &self,
        req: &IncomingRequest<SocketAddr>,
        path: &str,
        values: Vec<(Option<u16>, Value)>,
    ) -> Result<Packet, Code> {
        let Ok(path) = Path::parse(path) else {
            return Err(Code::NOT_FOUND);
        };
        let accept = msg::uint(&req.packet, CoapOption::Accept)
            .ok()
            .flatten()
            .map(|a| ContentFormat(u16::try_from(a).unwrap_or(u16::MAX)));
        let items: Vec<_> = values
            .into_iter()
            .map(|(instance, v)| {
                (
                    ItemPath {
                        resource: path,
                        instance,
                    },
                    v,
                )
            })
            .collect();
        // Without Accept the client's preferred format that can carry the
        // value (text/plain cannot carry a multiple-instance resource:
        // OMA TS Core 1.1 §7.4.1).
        let encoded = match accept {
            Some(a) if self.opts.formats.contains(&a) => {
                content::encode(a, &items).ok().map(|b| (a, b))
            }
            Some(_) => None,
            None if self.opts.formats.is_empty() => {
                content::encode(ContentFormat::TEXT_PLAIN, &items)
                    .ok()
                    .map(|b| (ContentFormat::TEXT_PLAIN, b))
            }
            None => self
                .opts
                .formats
                .iter()
                .find_map(|f| content::encode(*f, &items).ok().map(|b| (*f, b))),
        };
        match encoded {
            Some((format, bytes)) => {
                let mut p = msg::response(Code::CONTENT);
                msg::set_uint(&mut p, CoapOption::ContentFormat, u32::from(format.0));
                p.payload = bytes;
                Ok(p)
            }
            None => Err(Code::NOT_ACCEPTABLE),
        }
    }

    fn on_request(&mut self, req: IncomingRequest<SocketAddr>, now: Instant) {
        let path = msg::uri_path(&req.packet).unwrap_or_default();
        let path: Vec<&str> = path.iter().map(String::as_str).collect();
        let method = msg::code(&req.packet);
        if self.opts.faults.silent_on.contains(&path.join("/")) {
            self.stats.ignored += 1;
            return;
        }
        let int = |v: i64| vec![(None, Value::Integer(v))];
        match (method, path.as_slice()) {
            (Code::GET, ["3", "0", "3"]) => {
                let v = vec![(None, Value::String(self.version.clone()))];
                self.read_reply(&req, "3/0/3", v, now)
            }
            (Code::GET, ["5", "0", "3"]) => {
                self.stats.state_reads += 1;
                self.observable_read(&req, "5/0/3", now)
            }
            (Code::GET, ["5", "0", "5"]) => self.observable_read(&req, "5/0/5", now),
            // 5.xml /5/0/9 as configured; CoAP only (/5/0/8 one instance, 0).
            (Code::GET, ["5", "0", "9"]) => {
                let v = int(self.opts.delivery_method as i64);
                self.read_reply(&req, "5/0/9", v, now)
            }
            (Code::GET, ["5", "0", "8"]) => {
                let v = vec![(Some(0), Value::Integer(0))];
                self.read_reply(&req, "5/0/8", v, now)
            }
            (Code::GET, [o @ ("3" | "4"), i, r])
                if self.readings.contains_key(&format!("{o}/{i}/{r}")) =>
            {
                let key = format!("{o}/{i}/{r}");
                let v = self.readings[&key].clone();
                let v = match v.parse::<i64>() {
                    Ok(i) => Value::Integer(i),
                    Err(_) => Value::String(v),
                };
                self.read_reply(&req, &key, vec![(None, v)], now)
            }
            (Code::PUT, ["5", "0", "1"]) => {
                let uri = String::from_utf8_lossy(&req.packet.payload)
                    .trim()
                    .to_string();
                if !uri.is_empty() && self.opts.delivery_method == DeliveryMethod::Push {
                    return self.reply(&req, Code::METHOD_NOT_ALLOWED, b"", now);
                }
                if self.opts.faults.lose_uri_answers && !uri.is_empty() {
                    self.mute(&req);
                }
                self.reply(&req, Code::CHANGED, b"", now);
                self.write_uri(&uri, now);
            }
            (Code::PUT, ["5", "0", "0"]) if self.opts.delivery_method == DeliveryMethod::Pull => {
                self.reply(&req, Code::METHOD_NOT_ALLOWED, b"", now)
            }
            (Code::PUT, ["5", "0", "0"]) => self.on_block1(req, now),
            (Code::POST, ["5", "0", "2"]) => {
                if self.state != State::Downloaded {
                    // 5.xml: Update is executable only in State 2.
                    return self.reply(&req, Code::METHOD_NOT_ALLOWED, b"", now);
                }
                self.reply(&req, Code::CHANGED, b"", now);
                self.state = State::Updating;
                let version = self.staged.take().and_then(|s| s.1);
                let how = Reboot::Update {
                    version,
                    failure: self.update_failure,
                };
                // The 2.04 leaves in this step; the reboot starts after it.
                self.start_reboot(now + Duration::from_millis(1), how);
            }
            (_, ["3", "0", "3"] | ["5", "0", _]) => {
                self.reply(&req, Code::METHOD_NOT_ALLOWED, b"", now)
            }
            _ => self.reply(&req, Code::NOT_FOUND, b"", now),
        }
    }

    /// 5.xml: an empty URI resets to Idle; a URI starts the download.
    fn write_uri(&mut self, uri: &str, now: Instant) {
        self.pull = None;
        self.transfer = None;
        self.staged = None;
        self.state = State::Idle;
        self.result = UpdateResult::Initial;
        if uri.is_empty() {
            return;
        }
        let Some(rest) = uri.strip_prefix("coap://") else {
            self.result = UpdateResult::UnsupportedProtocol;
            return;
        };
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let server = authority
            .to_socket_addrs()
            .ok()
            .and_then(|mut a| a.next())
            .or_else(|| format!("{authority}:5683").parse().ok());
        let Some(server) = server else {
            self.result = UpdateResult::InvalidUri;
            return;
        };
        self.state = State::Downloading;
        self.stats.starts += 1;
        self.transfer = Some(Transfer {
            hasher: Sha256::new(),
            received: 0,
        });
        self.pull = Some(Pull {
            server,
            path: path
                .split('/')
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect(),
            szx: self.opts.preferred_szx,
            etag: None,
            request: None,
        });
        self.next_pull(now);
    }

    fn next_pull(&mut self, now: Instant) {
        let received = self.transfer.as_ref().map_or(0, |t| t.received);
        let Some(p) = &mut self.pull else { return };
        let size = u64::from(szx_to_size(p.szx));
        let mut req = msg::request(Code::GET, &p.path);
        let num = (received / size) as u32;
        if let Ok(b) = BlockOpt::new(num, false, p.szx) {
            msg::set_block2(&mut req, b);
        }
        if received == 0 {
            // RFC 7959 §4: Size2: 0 asks for the total size (Zephyr does).
            msg::set_uint(&mut req, CoapOption::Size2, 0);
        }
        match self.ex.start_request(p.server, req, now) {
            Ok(id) => p.request = Some(id),
            Err(_) => self.abort_download(UpdateResult::InvalidUri),
        }
    }

    fn on_pull_response(&mut self, id: RequestId, resp: Packet, now: Instant) {
        if self.pull.as_ref().is_none_or(|p| p.request != Some(id)) {
            return;
        }
        let code = msg::code(&resp);
        if code != Code::CONTENT {
            let r = if code == Code::NOT_FOUND {
                UpdateResult::InvalidUri
            } else {
                UpdateResult::ConnectionLost
            };
            return self.abort_download(r);
        }
        let etag = resp
            .get_option(CoapOption::ETag)
            .and_then(|v| v.front().cloned());
        let block = msg::block2(&resp).ok().flatten();
        let p = self.pull.as_mut().expect("checked");
        let t = self.transfer.get_or_insert_with(|| Transfer {
            hasher: Sha256::new(),
            received: 0,
        });
        if p.etag.is_some() && p.etag != etag {
            // RFC 7959 §2.4: another representation; start again.
            p.etag = None;
            *t = Transfer {
                hasher: Sha256::new(),
                received: 0,
            };
            return self.next_pull(now);
        }
        p.etag = etag;
        let (offset, more) = match block {
            Some(b) => {
                p.szx = p.szx.min(b.szx);
                (b.offset(), b.more)
            }
            None => (0, false),
        };
        if offset != t.received {
            // Not the block asked for (a stale duplicate): ask again.
            return self.next_pull(now);
        }
        t.hasher.update(&resp.payload);
        t.received += resp.payload.len() as u64;
        self.stats.blocks += 1;
        if self.crash_due(now, UpdateResult::ConnectionLost) {
            return;
        }
        if more {
            self.next_pull(now);
        } else {
            self.pull = None;
            self.image_complete();
        }
    }

    // Long on purpose: the simulated child's Block1 server, every RFC 7959 §2.3 case in order.
    fn on_block1(&mut self, req: IncomingRequest<SocketAddr>, now: Instant) {
        let b1 = msg::block1(&req.packet).ok().flatten();
        let size1 = msg::size1(&req.packet).ok().flatten();
        if let Some(s) = size1 {
            if s > self.opts.max_image {
                // RFC 7959 §2.9.3: 4.13 with Size1 = what we accept.
                let mut p = msg::response(Code::REQUEST_ENTITY_TOO_LARGE);
                msg::set_uint(&mut p, CoapOption::Size1, self.opts.max_image);
                let _ = self.ex.respond(&req, p, now);
                return;
            }
        }
        let payload = req.packet.payload.clone();
        let Some(b) = b1 else {
            // 5.xml: writing NULL ('\0') resets; otherwise a one-datagram image.
            if payload == [0] {
                self.write_uri("", now);
                return self.reply(&req, Code::CHANGED, b"", now);
            }
            self.transfer = Some(Transfer {
                hasher: Sha256::new(),
                received: 0,
            });
            self.stats.starts += 1;
            self.accept(&payload, 0);
            self.reply(&req, Code::CHANGED, b"", now);
            return self.image_complete();
        };
        let offset = b.offset();
        if offset == 0 {
            self.pull = None;
            self.staged = None;
            self.state = State::Downloading;
            self.result = UpdateResult::Initial;
            self.transfer = Some(Transfer {
                hasher: Sha256::new(),
                received: 0,
            });
            self.stats.starts += 1;
        }
        let held = self.transfer.as_ref().map(|t| t.received);
        match held {
            Some(h) if offset <= h => {}
            _ => {
                // RFC 7959 §2.9.2: earlier blocks missing.
                self.stats.incomplete += 1;
                return self.reply(&req, Code::REQUEST_ENTITY_INCOMPLETE, b"", now);
            }
        }
        if self.accept(&payload, offset) {
            self.stats.blocks += 1;
            if self.crash_due(now, UpdateResult::Initial) {
                // Crashed before answering: the gateway hears nothing.
                return;
            }
        }
        let szx = b.szx.min(self.opts.preferred_szx);
        if b.more {
            let mut p = msg::response(Code::CONTINUE);
            msg::set_block1(
                &mut p,
                BlockOpt {
                    num: b.num,
                    more: true,
                    szx,
                },
            );
            let _ = self.ex.respond(&req, p, now);
        } else {
            let mut p = msg::response(Code::CHANGED);
            msg::set_block1(
                &mut p,
                BlockOpt {
                    num: b.num,
                    more: false,
                    szx,
                },
            );
            if self.opts.faults.lose_final_block_answers {
                self.mute(&req);
            }
            let _ = self.ex.respond(&req, p, now);
            if self.state == State::Downloading {
                self.image_complete();
            }
        }
    }

    /// Takes the part of `payload` (at `offset`) not yet held; true when it
    /// added bytes.
    fn accept(&mut self, payload: &[u8], offset: u64) -> bool {
        let Some(t) = &mut self.transfer else {
            return false;
        };
        let skip = (t.received - offset) as usize;
        if skip >= payload.len() {
            return false;
        }
        t.hasher.update(&payload[skip..]);
        t.received += (payload.len() - skip) as u64;
        true
    }

    fn image_complete(&mut self) {
        let Some(t) = self.transfer.take() else {
            return;
        };
        let sha = hex::encode(t.hasher.finalize());
        self.stats.images += 1;
        self.last_image = Some(sha.clone());
        let version = self
            .opts
            .images
            .get(&sha)
            .cloned()
            .or_else(|| self.opts.any_image_version.clone());
        if let Some(r) = self.download_failure {
            return self.abort_download(r);
        }
        if version.is_none() {
            return self.abort_download(UpdateResult::IntegrityFailure);
        }
        self.state = State::Downloaded;
        self.staged = Some((sha, version));
    }

    fn abort_download(&mut self, result: UpdateResult) {
        self.pull = None;
        self.transfer = None;
        self.staged = None;
        self.state = State::Idle;
        self.result = result;
    }

    /// The reboot fault, once, after the configured number of blocks.
    fn crash_due(&mut self, now: Instant, result: UpdateResult) -> bool {
        match self.opts.faults.reboot_after_blocks {
            Some(n) if self.stats.blocks >= u64::from(n) => {
                self.opts.faults.reboot_after_blocks = None;
                self.start_reboot(now, Reboot::Crash { result });
                true
            }
            _ => false,
        }
    }

    fn start_reboot(&mut self, at: Instant, how: Reboot) {
        self.stats.reboots += 1;
        self.rebooting = Some((at + self.opts.reboot_time, how));
    }

    /// Comes back from a reboot: RAM (transfers, message-layer memory) is
    /// gone; version and result are what flash says.
    fn boot(&mut self, how: Reboot, now: Instant) {
        self.pull = None;
        self.transfer = None;
        self.muted.clear();
        // RAM: observations are forgotten (the gateway's RSTs and safety
        // reads cope).
        self.observers.clear();
        // An LwM2M client registers after every boot (its RAM forgot the
        // registration).
        if self.opts.register.is_some() {
            self.reg.location = None;
            self.reg.request = None;
            self.reg.next = Some((now, RegOp::Register));
        }
        self.exchange_seed = self.exchange_seed.wrapping_add(1);
        if let Ok(ex) = Exchanges::new(ExchangeConfig {
            seed: self.exchange_seed,
            ..self.opts.exchange.clone()
        }) {
            self.ex = ex;
        }
        self.state = State::Idle;
        match how {
            Reboot::Crash { result } => {
                self.staged = None;
                self.result = result;
            }
            Reboot::Update { version, failure } => match (failure, version) {
                (Some(r), _) => self.result = r,
                (None, Some(v)) => {
                    self.version = v;
                    self.result = UpdateResult::Success;
                }
                (None, None) => self.result = UpdateResult::UpdateFailed,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn answers_version_and_state() {
        let sim = CoapChildSim::start(SimOptions::new("1.0", "2.0"))
            .await
            .unwrap();
        let net = crate::child::coap::CoapNetwork::bind(crate::child::coap::NetworkOptions::new(
            "127.0.0.1:0".parse().unwrap(),
            5,
        ))
        .unwrap();
        let r = net
            .request(sim.addr(), msg::request(Code::GET, &["3", "0", "3"]))
            .await
            .unwrap();
        assert_eq!(r.payload, b"1.0");
        let r = net
            .request(sim.addr(), msg::request(Code::GET, &["5", "0", "3"]))
            .await
            .unwrap();
        assert_eq!(r.payload, b"0");
        let r = net
            .request(sim.addr(), msg::request(Code::POST, &["5", "0", "2"]))
            .await
            .unwrap();
        assert_eq!(
            msg::code(&r),
            Code::METHOD_NOT_ALLOWED,
            "Update outside State 2"
        );
        let r = net
            .request(sim.addr(), msg::request(Code::GET, &["9", "0", "0"]))
            .await
            .unwrap();
        assert_eq!(msg::code(&r), Code::NOT_FOUND);
    }
}
