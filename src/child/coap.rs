//! LwM2M children over CoAP/UDP: [`CoapChild`] implements [`Child`] by
//! running the codecs' [`UpdateProcedure`] on a shared [`CoapNetwork`]:
//! the procedure's actions (a request, a Block1 push, a cancel) go to the
//! network task's peer engine, its outcomes come back (the driver loop of
//! `otabridge_codecs::coap`'s module doc, split over two tasks).
//!
//! # How the Child operations map onto LwM2M (docs/protocols/children.md §3)
//! - `read_version`: `GET /3/0/3`.
//! - `deliver`: the procedure reads /3/0/3, then pull (`PUT /5/0/1` with
//!   `coap://<gateway>/fw/<sha256>`; the child fetches from our Block2
//!   server; progress counts the bytes it fetched) or push (Block1
//!   `PUT /5/0/0`, resuming at `resume_from` after reading /5/0/3 to see
//!   whether the child already holds the whole image; progress counts
//!   acknowledged bytes), then waits for State 2 (Downloaded): it observes
//!   /5/0/3 and /5/0/5 (RFC 7641; `coap.observe`) and moves on their
//!   notifications, reading /5/0/3 again every `coap.observe_check_secs`
//!   in case they stop, or polls them when the child refuses Observe. It
//!   stops there (the observations are cancelled) and keeps the procedure
//!   for `activate`. A delivery the journal says had begun (`resume_from >
//!   0`, or `activate` after a restart) reads /5/0/3 first: State 2 skips
//!   to Execute, and a pulling child in State 1 goes on fetching from its
//!   own offset (the Package URI is not written again, which would restart
//!   its fetch).
//! - `activate`: continues the same procedure: `POST /5/0/2` (Execute),
//!   then reads /3/0/3 across the reboot until it shows the target version;
//!   /5/0/5 failures become a [`ChildError`] refused with the cause the
//!   result names (`ota` turns it into IoTDA's code).
//!
//! A transient failure inside the procedure (lost child, integrity error)
//! is retried once by the procedure itself after an empty `/5/0/1` reset
//! (5.xml), so a failure reported here has already been retried.
//!
//! # Children that register (issue 13)
//! A child configured with `endpoint` is an LwM2M client that registers
//! with the gateway: every request goes to the address it last registered
//! or updated from (resolved by the network when the request leaves), so a
//! NAT rebinding or a new DHCP address mid-upgrade only moves the next
//! request. A queue-mode client's requests wait for its next Register or
//! Update; a version read while it sleeps is answered with the version it
//! last reported (journaled), and says so in the log. Its presence
//! ([`Child::presence`]) follows the registration.
//!
//! # Delivery chosen by the child (issue 13 item 6)
//! `delivery = "auto"` (the default for children that register) reads
//! `/5/0/9` Delivery Method and `/5/0/8` Protocol Support in each
//! delivery, after the version: pull when the child pulls and lists CoAP,
//! push when it only takes pushes or lists no CoAP, pull when it says
//! nothing (`auto.rs`). Both are optional resources, so an unanswered
//! read costs `CoapNetwork::optional_read_wait` (21 s), not 93 s.
//!
//! # Layout
//! - [`network`]: the socket, the peer-engine task, the Block2 server, the
//!   LwM2M registry on `/rd`.
//! - [`registrations`]: registrations in the journal.
//! - [`seam`]: a seeded lossy link at the socket seam, for tests and benches.

mod auto;
pub mod network;
pub mod preflight;
pub mod registrations;
pub mod seam;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use otabridge_codecs::coap::{
    content_format, msg, read_request, Action, Code, Delivery as EngineDelivery, Outcome, Packet,
    PushEvent, PushFailure, ServedBlock, UpdateConfig, UpdateEvent, UpdateFailure, UpdateProcedure,
};
use otabridge_codecs::lwm2m::{self, ContentFormat, Path, UpdateResult};
use otabridge_codecs::time::Instant as EngineInstant;
use otabridge_codecs::version::Policy;
use tracing::{debug, info, warn};

pub use network::{
    BindError, CoapNetwork, FileImage, NetworkOptions, NetworkStats, Observation, PushDone,
    PushHandle, PushJobError, PushUpdate, PushWatch, RegistrationInfo, RegistryStats, RequestError,
};

use super::{
    sleep_until_opt, BoxFuture, Cause, Child, ChildError, ErrorKind, Package, Progress, Step,
};
use crate::config::{CoapAddress, Delivery};

/// Timing and retry settings of one child's update.
#[derive(Debug, Clone)]
pub struct ChildOptions {
    /// Pause between two reads of a polled resource (/5/0/3, /3/0/3).
    pub poll_interval: Duration,
    /// Longest time from starting a delivery to State 2.
    pub download_timeout: Duration,
    /// Longest time from Execute to reading the target version.
    pub update_timeout: Duration,
    /// Deliveries tried in all by the procedure (2: one retry after a reset).
    pub max_attempts: u32,
    /// First Block1 size exponent for push (6: 1024 bytes); the child may
    /// ask for smaller blocks.
    pub push_szx: u8,
    /// Observe /5/0/3 and /5/0/5 while waiting for State 2 (`coap.observe`).
    pub observe: bool,
    /// While observed, /5/0/3 is still read this often
    /// (`coap.observe_check_secs`).
    pub observe_check: Duration,
}

impl ChildOptions {
    /// The daemon's settings: the defaults, with `[coap]`'s Observe keys.
    pub fn from_config(c: &crate::config::CoapConfig) -> Self {
        ChildOptions {
            observe: c.observe,
            observe_check: Duration::from_secs(c.observe_check_secs),
            ..ChildOptions::default()
        }
    }
}

impl Default for ChildOptions {
    fn default() -> Self {
        let d = UpdateConfig::new(
            "",
            1,
            EngineDelivery::Push {
                szx: 6,
                resume_offset: 0,
            },
        );
        ChildOptions {
            poll_interval: d.poll_interval,
            download_timeout: d.download_timeout,
            update_timeout: d.update_timeout,
            max_attempts: d.max_attempts,
            push_szx: 6,
            observe: d.observe,
            observe_check: d.observe_check,
        }
    }
}

/// What `deliver` leaves for `activate`.
#[derive(Debug)]
struct Pending {
    sha256: String,
    /// The procedure paused at State 2 and the delivery it used, or
    /// `None` when the child already ran the target version and nothing
    /// was delivered.
    procedure: Option<(UpdateProcedure, Delivery)>,
}

/// An LwM2M child reached over the shared [`CoapNetwork`].
#[derive(Debug)]
pub struct CoapChild {
    device_id: String,
    address: CoapAddress,
    delivery: Delivery,
    net: CoapNetwork,
    options: ChildOptions,
    version_policy: Policy,
    /// What [`Child::ready`] reads ([`preflight`], docs/images.md).
    preflight: preflight::Preflight,
    /// The configured Accept of reads, if any ([`CoapChild::with_accept`]).
    accept: Option<ContentFormat>,
    pending: Mutex<Option<Pending>>,
    /// The push running to this child, for [`CoapChild::push_acked`].
    push: Mutex<Option<network::PushWatch>>,
    /// Retransmissions to this child's address, counted by the network,
    /// and the count when this driver was created.
    retries: Arc<AtomicU64>,
    retries_base: u64,
}

/// How a run of the procedure stopped.
enum Stop {
    Downloaded,
    Finished(Outcome),
}

impl CoapChild {
    /// A child at `address` (a fixed `SocketAddr`, or a
    /// [`CoapAddress::Endpoint`] that registers) on `net`.
    pub fn new(
        device_id: &str,
        address: impl Into<CoapAddress>,
        delivery: Delivery,
        net: CoapNetwork,
        options: ChildOptions,
    ) -> Self {
        let address = address.into();
        // Retransmissions are counted per address; a registering child's
        // address moves, so its count is not kept (left for later).
        let retries = match &address {
            CoapAddress::Static(a) => net.retry_counter(*a),
            CoapAddress::Endpoint(_) => Arc::new(AtomicU64::new(0)),
        };
        CoapChild {
            device_id: device_id.to_owned(),
            address,
            delivery,
            options,
            version_policy: Policy::default(),
            preflight: preflight::Preflight::default(),
            accept: None,
            pending: Mutex::new(None),
            push: Mutex::new(None),
            retries_base: retries.load(Ordering::Relaxed),
            retries,
            net,
        }
    }

    /// Compares versions by `policy` (the child's `version_match`; the
    /// default is [`Policy::Normalised`]).
    pub fn with_version_policy(mut self, policy: Policy) -> Self {
        self.version_policy = policy;
        self
    }

    /// Asks for `format` in every read (the child's `accept` key) instead
    /// of the format chosen from its registration.
    pub fn with_accept(mut self, format: Option<ContentFormat>) -> Self {
        self.accept = format;
        self
    }

    /// Checks `p` before each delivery ([`Child::ready`]).
    pub fn with_preflight(mut self, p: preflight::Preflight) -> Self {
        self.preflight = p;
        self
    }

    /// The child's CoAP address now: the fixed one, or where it last
    /// registered from (`None` while not registered).
    pub fn address(&self) -> Option<SocketAddr> {
        self.net.resolve(&self.address)
    }

    /// The address now, or a link-gone error naming the endpoint.
    fn current(&self, step: Step) -> Result<SocketAddr, ChildError> {
        self.address().ok_or_else(|| {
            ChildError::link_gone(step, format!("{} is not registered", self.address))
        })
    }

    /// Bytes the running push has had acknowledged and when the last block
    /// was (engine time, [`CoapNetwork::now`]), updated for every block
    /// without waking anyone: the liveness of a push. `None` when no push
    /// runs.
    pub fn push_acked(&self) -> Option<(u32, Option<EngineInstant>)> {
        let p = self.push.lock().unwrap_or_else(|e| e.into_inner());
        p.as_ref().map(|w| w.acked())
    }

    /// [`Child::acked_at`]: the push's "bytes acknowledged at t" in tokio
    /// time (the network calls `progress` only about 64 times per image).
    fn push_liveness(&self) -> Option<(u64, tokio::time::Instant)> {
        let (acked, at) = self.push_acked()?;
        Some((u64::from(acked), self.net.at(at?)))
    }

    /// The Accept of a read (`multiple`: of a multiple-instance resource),
    /// from the formats a registered client announced (`ct`) and its
    /// LwM2M version ([`ContentFormat::accept`]); text/plain for a child
    /// at a fixed address. The configured `accept` wins for single values.
    fn accept(&self, multiple: bool) -> ContentFormat {
        if let Some(f) = self.accept.filter(|_| !multiple) {
            return f;
        }
        let reg = match &self.address {
            CoapAddress::Endpoint(ep) => self.net.registration(ep),
            CoapAddress::Static(_) => None,
        };
        match reg {
            Some(r) => {
                let v = r.reg.version;
                let late = (v.major, v.minor) >= (1, 2);
                ContentFormat::accept(&r.reg.objects.content_formats, late, multiple)
            }
            None => ContentFormat::accept(&[], false, multiple),
        }
    }

    /// One request to the child; the network's peer engine keeps NSTART 1
    /// (RFC 7252 §4.7) with whatever else runs to it, a push included.
    async fn request(&self, packet: Packet) -> Result<Packet, RequestError> {
        self.net.request_to(&self.address, packet).await
    }

    fn take_pending(&self, sha256: &str) -> Option<Option<(UpdateProcedure, Delivery)>> {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        match p.take() {
            Some(x) if x.sha256.eq_ignore_ascii_case(sha256) => Some(x.procedure),
            _ => None,
        }
    }

    /// The procedure for `package` by `delivery` (pull, push, or auto:
    /// the procedure reads /5/0/9 and /5/0/8, `auto.rs`); `resumed` when the job's journal
    /// says a delivery of it to this child began before (the procedure
    /// then reads /5/0/3 before it sends anything: issue 17).
    fn new_procedure(
        &self,
        package: &Package,
        resume_from: u64,
        delivery: Delivery,
        resumed: bool,
    ) -> Result<UpdateProcedure, ChildError> {
        let step = Step::Deliver {
            offset: resume_from,
        };
        let total_len = u32::try_from(package.size).map_err(|_| {
            ChildError::refused(
                Cause::NoStorage,
                step,
                format!("{} bytes: LwM2M /5/0/0 carries at most 4 GiB", package.size),
            )
        })?;
        let uri = |child: &Self| {
            let to = child.current(step)?;
            let gw = child.net.gateway_for(to).map_err(|e| {
                ChildError::io(step, format!("no local address towards {to}")).with_source(e)
            })?;
            Ok::<_, ChildError>(lwm2m::package_uri(&gw.to_string(), &package.sha256))
        };
        let szx = self.options.push_szx;
        let resume_offset = u32::try_from(resume_from.min(package.size)).unwrap_or(0);
        let delivery = match delivery {
            Delivery::Pull => EngineDelivery::Pull { uri: uri(self)? },
            Delivery::Auto => EngineDelivery::Auto {
                uri: uri(self)?,
                szx,
                resume_offset,
            },
            Delivery::Push => EngineDelivery::Push { szx, resume_offset },
        };
        let cfg = UpdateConfig {
            poll_interval: self.options.poll_interval,
            download_timeout: self.options.download_timeout,
            update_timeout: self.options.update_timeout,
            max_attempts: self.options.max_attempts,
            version_policy: self.version_policy,
            accept: Some(self.accept(false)),
            resumed,
            observe: self.options.observe,
            observe_check: self.options.observe_check,
            optional_read_timeout: self.net.optional_read_wait(),
            protocol_support_accept: self.protocol_support_accept(),
            ..UpdateConfig::new(package.version.clone(), total_len, delivery)
        };
        UpdateProcedure::new(cfg)
            .map_err(|e| ChildError::io(step, "update settings").with_source(e))
    }

    /// Runs `procedure` until State 2 (`until_downloaded`) or its end,
    /// serving the package meanwhile for pull: the procedure's driver loop
    /// (its actions to the network's peer engine, the outcomes back).
    async fn drive(
        &self,
        procedure: &mut UpdateProcedure,
        package: &Package,
        until_downloaded: bool,
        progress: Progress<'_>,
        delivery: Delivery,
    ) -> Result<Stop, ChildError> {
        // The step a failure of the network itself belongs to.
        let step = if until_downloaded {
            Step::Deliver {
                offset: procedure.progress().0.into(),
            }
        } else {
            Step::Activate
        };
        // Pull: the child fetches from our Block2 server while we poll.
        let (_serving, mut watch) = match delivery {
            Delivery::Pull | Delivery::Auto => {
                let g = self
                    .net
                    .serve_package(&package.sha256, &package.path)
                    .map_err(|e| {
                        ChildError::io(step, package.path.display().to_string()).with_source(e)
                    })?;
                let to = self.current(step)?;
                (Some(g), Some(self.net.watch_served(to, &package.sha256)))
            }
            Delivery::Push => (None, None),
        };
        let mut in_flight = InFlight::Idle;
        // Observations the child accepted; dropped (cancelled) on return.
        let mut observing: Vec<(Path, network::Observation)> = Vec::new();
        loop {
            if let Some(stop) = self.drain_events(procedure, until_downloaded, progress) {
                return Ok(stop);
            }
            while let Some(action) = procedure.poll_action(self.net.now()) {
                if matches!(action, Action::StopObserving) {
                    observing.clear();
                    continue;
                }
                in_flight = self.start(action, package, step)?;
            }
            let deadline = procedure.poll_timeout().map(|t| self.net.at(t));
            if matches!(in_flight, InFlight::Idle) && deadline.is_none() && observing.is_empty() {
                if let Some(stop) = self.drain_events(procedure, until_downloaded, progress) {
                    return Ok(stop);
                }
                // A procedure with nothing in flight, no timer and no event
                // cannot move again.
                return Err(ChildError::io(step, "update procedure stalled"));
            }
            tokio::select! {
                done = in_flight.next() => {
                    let now = self.net.now();
                    match done {
                        Done::Response(r) => {
                            in_flight = InFlight::Idle;
                            match r {
                                Ok(resp) => procedure.handle_response(&resp, now),
                                Err(RequestError::Transport(t)) => procedure.handle_failure(t, now),
                                Err(e @ (RequestError::Encode(_) | RequestError::Closed)) => {
                                    return Err(ChildError::io(step, "request").with_source(e))
                                }
                                Err(e @ (RequestError::NotRegistered(_) | RequestError::QueueFull(_))) => {
                                    return Err(ChildError::link_gone(step, "request").with_source(e))
                                }
                            }
                        }
                        Done::Push(PushNews::Progress(acked, at)) => procedure.handle_push_event(
                            &PushEvent::Progress { acked, total: procedure.progress().1, at: at.unwrap_or(now) },
                            now,
                        ),
                        Done::Push(PushNews::Done(d)) => {
                            in_flight = InFlight::Idle;
                            self.set_push(None);
                            self.push_ended(procedure, d, now)?;
                        }
                        Done::Push(PushNews::Closed) => return Err(closed(procedure)),
                        Done::Observed(path, r) => {
                            in_flight = InFlight::Idle;
                            match r {
                                Ok((resp, obs)) => {
                                    if let Some(o) = obs {
                                        observing.push((path, o));
                                    }
                                    procedure.handle_response(&resp, now);
                                }
                                Err(RequestError::Transport(t)) => procedure.handle_failure(t, now),
                                Err(e @ (RequestError::Encode(_) | RequestError::Closed)) => {
                                    return Err(ChildError::io(step, "request").with_source(e))
                                }
                                Err(e @ (RequestError::NotRegistered(_) | RequestError::QueueFull(_))) => {
                                    return Err(ChildError::link_gone(step, "request").with_source(e))
                                }
                            }
                        }
                    }
                }
                (i, n) = next_notification(&mut observing) => match n {
                    Some(n) => {
                        let path = observing[i].0;
                        procedure.handle_notification(path, &n, self.net.now());
                    }
                    // Ended by the child (the procedure saw the last one).
                    None => {
                        observing.remove(i);
                    }
                },
                b = next_served(&mut watch) => procedure.handle_served(&b, self.net.now()),
                _ = sleep_until_opt(deadline) => procedure.handle_timeout(self.net.now()),
            }
        }
    }

    /// Passes the procedure's events on; `Some` when the run stops here.
    fn drain_events(
        &self,
        procedure: &mut UpdateProcedure,
        until_downloaded: bool,
        progress: Progress<'_>,
    ) -> Option<Stop> {
        while let Some(ev) = procedure.poll_event() {
            match ev {
                UpdateEvent::Progress { delivered, .. } => progress(u64::from(delivered)),
                UpdateEvent::Phase(p) => {
                    debug!(child = %self.device_id, phase = ?p, "update phase");
                    if until_downloaded && p == otabridge_codecs::coap::update::Phase::Downloaded {
                        return Some(Stop::Downloaded);
                    }
                }
                UpdateEvent::CurrentVersion(v) => {
                    debug!(child = %self.device_id, version = %v, "version before update")
                }
                UpdateEvent::Retrying { attempt, cause } => {
                    warn!(child = %self.device_id, attempt, "{cause}; resetting /5/0/1 and retrying")
                }
                UpdateEvent::Observe {
                    path,
                    accepted: true,
                } => {
                    info!(child = %self.device_id, %path, "observing (RFC 7641)")
                }
                UpdateEvent::Observe {
                    path,
                    accepted: false,
                } => info!(
                    child = %self.device_id, %path,
                    "the child refused Observe; polling every {} s",
                    self.options.poll_interval.as_secs()
                ),
                UpdateEvent::ObservationEnded(path) => info!(
                    child = %self.device_id, %path,
                    "the child ended the observation; polling every {} s",
                    self.options.poll_interval.as_secs()
                ),
                UpdateEvent::OptionalUnanswered { path, waited } => warn!(
                    child = %self.device_id, %path,
                    "delivery = auto: the read of {path} went unanswered in {} s \
                     (an optional resource: not the whole exchange); going on without it",
                    waited.as_secs()
                ),
                UpdateEvent::DeliveryChosen(c) => self.log_choice(&c),
                UpdateEvent::Finished(o) => return Some(Stop::Finished(o)),
            }
        }
        None
    }

    /// Carries out one action of the procedure; what it started replaces
    /// what was in flight (a cancel drops it, which cancels it in the
    /// network task).
    fn start<'a>(
        &'a self,
        action: Action,
        package: &Package,
        step: Step,
    ) -> Result<InFlight<'a>, ChildError> {
        Ok(match action {
            Action::Request(p) => InFlight::Request(Box::pin(self.request(p))),
            Action::Observe { path, request } => {
                InFlight::Observe(path, Box::pin(self.net.observe_to(&self.address, request)))
            }
            Action::Push(cfg) => {
                let image = std::fs::File::open(&package.path)
                    .map(FileImage)
                    .map_err(|e| {
                        ChildError::io(step, package.path.display().to_string()).with_source(e)
                    })?;
                let to = self.current(step)?;
                let handle = self
                    .net
                    .start_push(to, cfg, image)
                    .map_err(|_| ChildError::io(step, "the CoAP network is shut down"))?;
                self.set_push(Some(handle.watch()));
                InFlight::Push(handle)
            }
            Action::Cancel => {
                self.set_push(None);
                InFlight::Idle
            }
            // Handled by the caller, which owns the observations.
            Action::StopObserving => InFlight::Idle,
        })
    }

    fn set_push(&self, w: Option<network::PushWatch>) {
        *self.push.lock().unwrap_or_else(|e| e.into_inner()) = w;
    }

    /// A push ended: its events (the end last) go to the procedure.
    fn push_ended(
        &self,
        procedure: &mut UpdateProcedure,
        d: PushDone,
        now: EngineInstant,
    ) -> Result<(), ChildError> {
        if let Err(e @ PushJobError::Refused(_)) = d.result {
            let at = Step::Deliver {
                offset: d.acked.into(),
            };
            return Err(ChildError::io(at, "push refused").with_source(e));
        }
        let total = procedure.progress().1;
        let at = now;
        procedure.handle_push_event(
            &PushEvent::Progress {
                acked: d.acked,
                total,
                at,
            },
            now,
        );
        for ev in &d.events {
            procedure.handle_push_event(ev, now);
        }
        Ok(())
    }
}

/// The network task ended under a running procedure.
fn closed(procedure: &UpdateProcedure) -> ChildError {
    let at = Step::Deliver {
        offset: procedure.progress().0.into(),
    };
    ChildError::io(at, "the CoAP network is shut down")
}

/// What a child's driver waits for.
enum InFlight<'a> {
    Idle,
    Request(BoxFuture<'a, Result<Packet, RequestError>>),
    Observe(Path, BoxFuture<'a, ObserveAnswer>),
    Push(PushHandle),
}

/// The answer to an Observe registration, and the observation if accepted.
type ObserveAnswer = Result<(Packet, Option<network::Observation>), RequestError>;

/// What came back to the driver.
enum Done {
    Response(Result<Packet, RequestError>),
    Observed(Path, ObserveAnswer),
    Push(PushNews),
}

impl InFlight<'_> {
    /// The outcome of what is in flight; pends forever when idle.
    async fn next(&mut self) -> Done {
        match self {
            InFlight::Idle => std::future::pending().await,
            InFlight::Request(f) => Done::Response(f.await),
            InFlight::Observe(path, f) => Done::Observed(*path, f.await),
            InFlight::Push(h) => Done::Push(match h.next().await {
                network::PushUpdate::Progress(acked) => PushNews::Progress(acked, h.acked().1),
                network::PushUpdate::Done(d) => PushNews::Done(d),
                network::PushUpdate::Closed => PushNews::Closed,
            }),
        }
    }
}

/// [`network::PushUpdate`] with the time of the last acknowledgement.
enum PushNews {
    Progress(u32, Option<EngineInstant>),
    Done(PushDone),
    Closed,
}

/// The next notification of any observation, with its index in `obs`
/// (`None`: that observation ended); pends forever when there is none.
async fn next_notification(obs: &mut [(Path, network::Observation)]) -> (usize, Option<Packet>) {
    std::future::poll_fn(|cx| {
        for (i, (_, o)) in obs.iter_mut().enumerate() {
            if let std::task::Poll::Ready(n) = o.poll_next(cx) {
                return std::task::Poll::Ready((i, n));
            }
        }
        std::task::Poll::Pending
    })
    .await
}

async fn next_served(w: &mut Option<network::ServedWatch>) -> ServedBlock {
    match w {
        Some(w) => w.next().await,
        None => std::future::pending().await,
    }
}

/// What a /5/0/5 Update Result means (OMA-TS-LightweightM2M 5.xml; the
/// causes are the ones docs/protocols/iotda.md §9 names).
pub fn result_cause(r: UpdateResult) -> Cause {
    match r {
        UpdateResult::NotEnoughStorage => Cause::NoStorage,
        UpdateResult::OutOfMemory => Cause::NoMemory,
        UpdateResult::ConnectionLost => Cause::ConnectionLost,
        UpdateResult::IntegrityFailure => Cause::Integrity,
        UpdateResult::UnsupportedPackage => Cause::UnsupportedPackage,
        UpdateResult::InvalidUri => Cause::InvalidUri,
        UpdateResult::UpdateFailed => Cause::InstallFailed,
        UpdateResult::Deferred => Cause::Deferred,
        UpdateResult::Initial
        | UpdateResult::Success
        | UpdateResult::UnsupportedProtocol
        | UpdateResult::Cancelled => Cause::Unclassified,
    }
}

/// The [`ChildError`] of a failed update in `step` (the version read back
/// after Execute is [`Step::Verify`]): silence is unreachable, an
/// unreadable value garbled, and what the child said a refusal with its
/// cause.
pub fn failure_to_error(f: &UpdateFailure, step: Step) -> ChildError {
    let kind = match f {
        UpdateFailure::Unreachable(_)
        | UpdateFailure::Push(
            PushFailure::Unreachable | PushFailure::NoResponse | PushFailure::Reset,
        ) => ErrorKind::Unreachable,
        UpdateFailure::BadValue { .. } | UpdateFailure::Push(PushFailure::Protocol(_)) => {
            ErrorKind::Garbled
        }
        UpdateFailure::Child(r) => ErrorKind::Refused(result_cause(*r)),
        UpdateFailure::Push(PushFailure::TooLarge { .. }) => ErrorKind::Refused(Cause::NoStorage),
        // The child never reached State 2: the transfer broke off.
        UpdateFailure::DownloadTimeout => ErrorKind::Refused(Cause::ConnectionLost),
        UpdateFailure::UpdateTimeout | UpdateFailure::WrongVersion(_) => {
            ErrorKind::Refused(Cause::InstallFailed)
        }
        UpdateFailure::Rejected { .. } | UpdateFailure::Push(_) => {
            ErrorKind::Refused(Cause::Unclassified)
        }
    };
    let step = match f {
        UpdateFailure::UpdateTimeout | UpdateFailure::WrongVersion(_) => Step::Verify,
        _ => step,
    };
    let e = ChildError::new(kind, step, f.to_string());
    match f {
        UpdateFailure::Child(r) => {
            e.with_said(format!("/5/0/5 = {}", *r as u8), Some(format!("{r:?}")))
        }
        UpdateFailure::Rejected { path, code } => e.with_said(format!("{path} {code}"), None),
        UpdateFailure::WrongVersion(v) => e.with_said(format!("/3/0/3 = {v}"), None),
        UpdateFailure::Push(PushFailure::TooLarge { max }) => e.with_said(
            "4.13 Request Entity Too Large",
            max.map(|m| format!("Size1 {m}")),
        ),
        _ => e,
    }
}

impl CoapChild {
    /// For a queue-mode client that sleeps now: the version it last
    /// reported, instead of a request that would wait for it to wake.
    fn sleeping_version(&self) -> Option<String> {
        let CoapAddress::Endpoint(ep) = &self.address else {
            return None;
        };
        let r = self.net.registration(ep)?;
        if r.listening(self.net.now()) {
            return None;
        }
        let v = r.firmware?;
        info!(child = %self.device_id, endpoint = %ep, version = %v,
              "queue-mode client asleep: answering with the version it last reported");
        Some(v)
    }
}

impl Child for CoapChild {
    fn presence(&self) -> Option<tokio::sync::watch::Receiver<bool>> {
        match &self.address {
            CoapAddress::Endpoint(ep) => Some(self.net.presence(ep)),
            CoapAddress::Static(_) => None,
        }
    }

    fn asleep(&self) -> Option<(String, BoxFuture<'_, ()>)> {
        let CoapAddress::Endpoint(ep) = &self.address else {
            return None;
        };
        let r = self.net.registration(ep)?;
        if r.listening(self.net.now()) {
            return None;
        }
        let why = format!(
            "waiting for the child to wake: endpoint '{ep}' sleeps (LwM2M queue mode) until its next Register or Update"
        );
        Some((why, Box::pin(self.net.until_awake(ep))))
    }

    fn version_policy(&self) -> Policy {
        self.version_policy
    }

    fn device_id(&self) -> &str {
        &self.device_id
    }

    fn transport(&self) -> &'static str {
        "coap"
    }

    fn acked_at(&self) -> Option<(u64, tokio::time::Instant)> {
        self.push_liveness()
    }

    fn chunk_retries(&self) -> u64 {
        // Retransmissions of CON requests (RFC 7252 §4.2), blocks and
        // reads alike, since this driver was created.
        self.retries.load(Ordering::Relaxed) - self.retries_base
    }

    fn read_version(&self) -> BoxFuture<'_, Result<String, ChildError>> {
        Box::pin(async move {
            let step = Step::ReadVersion;
            if let Some(v) = self.sleeping_version() {
                return Ok(v);
            }
            let req = read_request(Path::FIRMWARE_VERSION, Some(self.accept(false)));
            let resp = self.request(req).await.map_err(|e| {
                let at = format!("{} at {}", self.device_id, self.address);
                match e {
                    RequestError::Transport(_) | RequestError::QueueFull(_) => {
                        ChildError::unreachable(step, at)
                    }
                    RequestError::NotRegistered(_) => ChildError::link_gone(step, at),
                    RequestError::Closed | RequestError::Encode(_) => ChildError::io(step, at),
                }
                .with_source(e)
            })?;
            let code = msg::code(&resp);
            if code != Code::CONTENT {
                return Err(ChildError::garbled(step, "/3/0/3 read refused")
                    .with_said(format!("/3/0/3 {code}"), None));
            }
            let v =
                lwm2m::read_string(content_format(&resp), Path::FIRMWARE_VERSION, &resp.payload)
                    .map_err(|e| ChildError::garbled(step, "/3/0/3").with_source(e))?;
            if let CoapAddress::Endpoint(ep) = &self.address {
                self.net.report_firmware(ep, &v);
            }
            Ok(v)
        })
    }

    fn ready<'a>(
        &'a self,
        package: &'a Package,
        resume_from: u64,
    ) -> BoxFuture<'a, Result<(), ChildError>> {
        Box::pin(self.preflight(package, resume_from))
    }

    fn deliver<'a>(
        &'a self,
        package: &'a Package,
        resume_from: u64,
        progress: Progress<'a>,
    ) -> BoxFuture<'a, Result<(), ChildError>> {
        Box::pin(async move {
            let _slot = self.net.transfer_permit().await;
            let delivery = self.delivery;
            // A journaled offset: the gateway restarted during the delivery.
            let resumed = resume_from > 0;
            let mut procedure = self.new_procedure(package, resume_from, delivery, resumed)?;
            info!(child = %self.device_id, ?delivery, size = package.size, resume_from, "delivering");
            match self
                .drive(&mut procedure, package, true, progress, delivery)
                .await?
            {
                Stop::Downloaded => {
                    *self.pending.lock().unwrap_or_else(|e| e.into_inner()) = Some(Pending {
                        sha256: package.sha256.clone(),
                        procedure: Some((procedure, delivery)),
                    });
                    Ok(())
                }
                Stop::Finished(Outcome::AlreadyCurrent) => {
                    *self.pending.lock().unwrap_or_else(|e| e.into_inner()) = Some(Pending {
                        sha256: package.sha256.clone(),
                        procedure: None,
                    });
                    Ok(())
                }
                Stop::Finished(Outcome::Updated) => Ok(()),
                Stop::Finished(Outcome::Failed(f)) => Err(failure_to_error(
                    &f,
                    Step::Deliver {
                        offset: procedure.progress().0.into(),
                    },
                )),
            }
        })
    }

    fn activate<'a>(&'a self, package: &'a Package) -> BoxFuture<'a, Result<(), ChildError>> {
        Box::pin(self.activate_until(package, None))
    }

    fn activate_by<'a>(
        &'a self,
        package: &'a Package,
        deadline: tokio::time::Instant,
    ) -> BoxFuture<'a, Result<(), ChildError>> {
        Box::pin(self.activate_until(package, Some(deadline)))
    }
}

impl CoapChild {
    /// Execute and the wait for the new version; with a `deadline` (the
    /// job's activation deadline) the procedure ends by it, in place of
    /// its own `update_timeout` (one timer, issue 12).
    async fn activate_until(
        &self,
        package: &Package,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<(), ChildError> {
        let ((mut procedure, delivery), _slot) = match self.take_pending(&package.sha256) {
            Some(Some(p)) => (p, None),
            // `deliver` found the target running already.
            Some(None) => return Ok(()),
            None => {
                // Nothing delivered in this run (the gateway restarted
                // after delivery): run the whole procedure; it finishes
                // at once if the child already runs the target.
                let permit = self.net.transfer_permit();
                let slot = match deadline {
                    Some(d) => tokio::time::timeout_at(d, permit).await.map_err(|_| {
                        ChildError::unreachable(
                            Step::Activate,
                            "no CoAP transfer slot before the activation deadline",
                        )
                    })?,
                    None => permit.await,
                };
                let delivery = self.delivery;
                // The journal says the delivery ended: a child in State 2
                // is executed, not sent the package again.
                (
                    (self.new_procedure(package, 0, delivery, true)?, delivery),
                    Some(slot),
                )
            }
        };
        if let Some(d) = deadline {
            procedure.set_deadline(self.net.engine_instant(d));
        }
        match self
            .drive(&mut procedure, package, false, &|_| {}, delivery)
            .await?
        {
            Stop::Finished(Outcome::Updated | Outcome::AlreadyCurrent) => {
                info!(child = %self.device_id, version = %package.version, "child runs the new version");
                Ok(())
            }
            // The job's deadline passed: the job's timeout, as the job
            // classifies its own (the child did not come back in time).
            Stop::Finished(Outcome::Failed(
                UpdateFailure::UpdateTimeout | UpdateFailure::DownloadTimeout,
            )) if deadline.is_some_and(|d| crate::clock::now() >= d) => {
                Err(ChildError::unreachable(
                    Step::Activate,
                    format!(
                        "version {} not seen by the activation deadline",
                        package.version
                    ),
                ))
            }
            Stop::Finished(Outcome::Failed(f)) => Err(failure_to_error(&f, Step::Activate)),
            Stop::Downloaded => Err(ChildError::io(
                Step::Activate,
                "procedure stopped at State 2 during the activation",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_classified_by_what_the_child_said() {
        let step = Step::Deliver { offset: 10 };
        let e = failure_to_error(&UpdateFailure::Child(UpdateResult::IntegrityFailure), step);
        assert_eq!(e.cause(), Some(Cause::Integrity), "{e}");
        assert_eq!(e.said().unwrap().code, "/5/0/5 = 5");
        let e = failure_to_error(&UpdateFailure::Child(UpdateResult::NotEnoughStorage), step);
        assert_eq!(e.cause(), Some(Cause::NoStorage), "{e}");
        let e = failure_to_error(
            &UpdateFailure::Push(PushFailure::TooLarge { max: Some(10) }),
            step,
        );
        assert_eq!(e.cause(), Some(Cause::NoStorage), "{e}");
        let e = failure_to_error(&UpdateFailure::Unreachable(Path::STATE), step);
        assert_eq!(e.kind(), ErrorKind::Unreachable);
        let e = failure_to_error(&UpdateFailure::Push(PushFailure::Unreachable), step);
        assert_eq!(e.kind(), ErrorKind::Unreachable);
        let e = failure_to_error(&UpdateFailure::WrongVersion("1.0".into()), Step::Activate);
        assert_eq!(
            (e.step(), e.cause()),
            (Step::Verify, Some(Cause::InstallFailed))
        );
    }
}
