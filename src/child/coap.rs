//! LwM2M children over CoAP/UDP: [`CoapChild`] implements [`Child`] by
//! running the codecs' [`UpdateProcedure`] on a shared [`CoapNetwork`].
//!
//! # How the Child operations map onto LwM2M (docs/protocols/children.md §3)
//! - `read_version`: `GET /3/0/3`.
//! - `deliver`: the procedure reads /3/0/3, then pull (`PUT /5/0/1` with
//!   `coap://<gateway>/fw/<sha256>`; the child fetches from our Block2
//!   server; progress counts the bytes it fetched) or push (Block1
//!   `PUT /5/0/0`, resuming at `resume_from`, progress counts acknowledged
//!   bytes), then polls /5/0/3 until State 2 (Downloaded). It stops there
//!   and keeps the procedure for `activate`.
//! - `activate`: continues the same procedure: `POST /5/0/2` (Execute),
//!   then reads /3/0/3 across the reboot until it shows the target version;
//!   /5/0/5 failures become [`ChildError::Rejected`] with IoTDA's code.
//!
//! A transient failure inside the procedure (lost child, integrity error)
//! is retried once by the procedure itself after an empty `/5/0/1` reset
//! (5.xml), so a failure reported here has already been retried.
//!
//! # Layout
//! - [`network`]: the socket, the message-layer task, the Block2 server.

pub mod network;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use otabridge_codecs::coap::{
    msg, Code, Delivery as EngineDelivery, Outcome, Packet, PushFailure, UpdateConfig, UpdateEvent,
    UpdateFailure, UpdateProcedure,
};
use otabridge_codecs::lwm2m::{self, Path};
use tracing::{debug, info, warn};

pub use network::{
    BindError, CoapNetwork, FileImage, NetworkOptions, PushDone, PushHandle, PushJobError,
    PushUpdate, RequestError,
};

use super::{BoxFuture, Child, ChildError, Package, Progress};
use crate::config::Delivery;

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
        }
    }
}

/// What `deliver` leaves for `activate`.
#[derive(Debug)]
struct Pending {
    sha256: String,
    /// The procedure paused at State 2, or `None` when the child already
    /// ran the target version and nothing was delivered.
    procedure: Option<UpdateProcedure>,
}

/// An LwM2M child reached over the shared [`CoapNetwork`].
#[derive(Debug)]
pub struct CoapChild {
    device_id: String,
    address: SocketAddr,
    delivery: Delivery,
    net: CoapNetwork,
    options: ChildOptions,
    /// NSTART = 1 (RFC 7252 §4.7): one request in flight to this child, even
    /// when a health check runs during a delivery. A push runs in the
    /// network task, which holds such requests behind its block in flight.
    exchange: tokio::sync::Mutex<()>,
    pending: Mutex<Option<Pending>>,
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
    /// A child at `address` on `net`.
    pub fn new(
        device_id: &str,
        address: SocketAddr,
        delivery: Delivery,
        net: CoapNetwork,
        options: ChildOptions,
    ) -> Self {
        let retries = net.retry_counter(address);
        CoapChild {
            device_id: device_id.to_owned(),
            address,
            delivery,
            options,
            exchange: tokio::sync::Mutex::new(()),
            pending: Mutex::new(None),
            retries_base: retries.load(Ordering::Relaxed),
            retries,
            net,
        }
    }

    /// The child's CoAP endpoint.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    async fn request(&self, packet: Packet) -> Result<Packet, RequestError> {
        let _one = self.exchange.lock().await;
        self.net.request(self.address, packet).await
    }

    fn take_pending(&self, sha256: &str) -> Option<Option<UpdateProcedure>> {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        match p.take() {
            Some(x) if x.sha256.eq_ignore_ascii_case(sha256) => Some(x.procedure),
            _ => None,
        }
    }

    fn new_procedure(
        &self,
        package: &Package,
        resume_from: u64,
    ) -> Result<UpdateProcedure, ChildError> {
        let total_len = u32::try_from(package.size).map_err(|_| {
            let (result_code, description) = PushFailure::TooLarge { max: None }.to_iotda();
            ChildError::Rejected {
                result_code,
                description: description.into(),
            }
        })?;
        let delivery = match self.delivery {
            Delivery::Pull => {
                let gw = self.net.gateway_for(self.address).map_err(|e| {
                    ChildError::Io(format!("no local address towards {}: {e}", self.address))
                })?;
                EngineDelivery::Pull {
                    uri: lwm2m::package_uri(&gw.to_string(), &package.sha256),
                }
            }
            Delivery::Push => EngineDelivery::Push {
                szx: self.options.push_szx,
                resume_offset: u32::try_from(resume_from.min(package.size)).unwrap_or(0),
            },
        };
        let cfg = UpdateConfig {
            poll_interval: self.options.poll_interval,
            download_timeout: self.options.download_timeout,
            update_timeout: self.options.update_timeout,
            max_attempts: self.options.max_attempts,
            ..UpdateConfig::new(package.version.clone(), total_len, delivery)
        };
        UpdateProcedure::new(cfg).map_err(|e| ChildError::Io(format!("update settings: {e}")))
    }

    /// Runs `procedure` until State 2 (`until_downloaded`) or its end,
    /// serving the package meanwhile for pull.
    async fn drive(
        &self,
        procedure: &mut UpdateProcedure,
        package: &Package,
        until_downloaded: bool,
        progress: Progress<'_>,
    ) -> Result<Stop, ChildError> {
        // Pull: the child fetches from our Block2 server while we poll.
        let (_serving, mut watch) = match self.delivery {
            Delivery::Pull => {
                let g = self
                    .net
                    .serve_package(&package.sha256, &package.path)
                    .map_err(|e| ChildError::Io(format!("{}: {e}", package.path.display())))?;
                (
                    Some(g),
                    Some(self.net.watch_served(self.address, &package.sha256)),
                )
            }
            Delivery::Push => (None, None),
        };
        // The procedure reads the image only for a push it runs itself;
        // here every push is taken (`take_push`) and run by the network
        // task, which opens the file. A read of this empty image would be a
        // bug and fails as one.
        let no_image: &mut [u8] = &mut [];
        loop {
            while let Some(ev) = procedure.poll_event() {
                match ev {
                    UpdateEvent::Progress { delivered, .. } => progress(u64::from(delivered)),
                    UpdateEvent::Phase(p) => {
                        debug!(child = %self.device_id, phase = ?p, "update phase");
                        if until_downloaded
                            && p == otabridge_codecs::coap::update::Phase::Downloaded
                        {
                            return Ok(Stop::Downloaded);
                        }
                    }
                    UpdateEvent::CurrentVersion(v) => {
                        debug!(child = %self.device_id, version = %v, "version before update")
                    }
                    UpdateEvent::Retrying { attempt, cause } => {
                        warn!(child = %self.device_id, attempt, "{cause}; resetting /5/0/1 and retrying")
                    }
                    UpdateEvent::Finished(o) => return Ok(Stop::Finished(o)),
                }
            }
            // Push: the network task runs the Block1 transfer itself (see
            // `network`'s module doc); the deadline still applies here.
            if let Some(push) = procedure.take_push(self.net.now()) {
                self.run_push(procedure, push, package, progress).await?;
                continue;
            }
            let req = procedure
                .poll_request(self.net.now(), no_image)
                .map_err(|e| ChildError::Io(e.to_string()))?;
            if let Some(req) = req {
                let fut = self.request(req);
                tokio::pin!(fut);
                let result = loop {
                    tokio::select! {
                        r = &mut fut => break r,
                        b = next_served(&mut watch) => procedure.note_served(&b),
                    }
                };
                let now = self.net.now();
                match result {
                    Ok(resp) => procedure.handle_response(&resp, now),
                    Err(RequestError::Transport(t)) => procedure.handle_failure(t, now),
                    Err(e @ RequestError::Encode(_)) => {
                        return Err(ChildError::Protocol(e.to_string()))
                    }
                    Err(RequestError::Closed) => {
                        return Err(ChildError::Io("the CoAP network is shut down".into()))
                    }
                }
                continue;
            }
            let Some(t) = procedure.poll_timeout() else {
                // Finished events were handled above; a procedure with no
                // request, no timer and no event cannot move again.
                return Err(ChildError::Protocol("update procedure stalled".into()));
            };
            tokio::select! {
                _ = tokio::time::sleep_until(self.net.at(t)) => procedure.handle_timeout(self.net.now()),
                b = next_served(&mut watch) => procedure.note_served(&b),
            }
        }
    }
}

impl CoapChild {
    /// Runs a push taken from `procedure` in the network task until it
    /// ends or the procedure's deadline passes, then hands it back.
    async fn run_push(
        &self,
        procedure: &mut UpdateProcedure,
        push: Box<otabridge_codecs::coap::Block1Push>,
        package: &Package,
        progress: Progress<'_>,
    ) -> Result<(), ChildError> {
        let image = std::fs::File::open(&package.path)
            .map(FileImage)
            .map_err(|e| ChildError::Io(format!("{}: {e}", package.path.display())))?;
        let closed = || ChildError::Io("the CoAP network is shut down".into());
        let mut handle = self
            .net
            .start_push(self.address, push, image)
            .map_err(|_| closed())?;
        let deadline = procedure.poll_timeout().map(|t| self.net.at(t));
        let done = loop {
            tokio::select! {
                u = handle.next() => match u {
                    PushUpdate::Progress(acked) => {
                        procedure.note_push_progress(acked);
                        report_progress(procedure, progress);
                    }
                    PushUpdate::Done(d) => break d,
                    PushUpdate::Closed => return Err(closed()),
                },
                _ = super::sleep_until_opt(deadline) => {
                    // Dropping the handle abandons the push; the procedure
                    // records the download timeout.
                    procedure.handle_timeout(self.net.now());
                    return Ok(());
                }
            }
        };
        match done.error {
            None => {}
            Some(PushJobError::Read(e)) => return Err(ChildError::Io(e.to_string())),
            Some(e) => return Err(ChildError::Protocol(e.to_string())),
        }
        procedure.note_push_progress(done.push.acked());
        report_progress(procedure, progress);
        procedure.return_push(done.push, done.events, self.net.now());
        Ok(())
    }
}

/// Passes the progress events `note_push_progress` queued to the caller
/// (the only events it queues).
fn report_progress(procedure: &mut UpdateProcedure, progress: Progress<'_>) {
    while let Some(ev) = procedure.poll_event() {
        if let UpdateEvent::Progress { delivered, .. } = ev {
            progress(u64::from(delivered));
        }
    }
}

async fn next_served(w: &mut Option<network::ServedWatch>) -> otabridge_codecs::coap::ServedBlock {
    match w {
        Some(w) => w.next().await,
        None => std::future::pending().await,
    }
}

/// The [`ChildError`] of a failed update: the child's and the protocol's
/// verdicts carry IoTDA's code (docs/protocols/iotda.md §9), silence stays transient.
pub fn failure_to_error(f: &UpdateFailure) -> ChildError {
    match f {
        UpdateFailure::Unreachable(_)
        | UpdateFailure::Push(
            PushFailure::Unreachable | PushFailure::NoResponse | PushFailure::Reset,
        ) => ChildError::Unreachable(f.to_string()),
        UpdateFailure::BadValue { .. } | UpdateFailure::Push(PushFailure::Protocol(_)) => {
            ChildError::Protocol(f.to_string())
        }
        _ => {
            let (result_code, description) = f.to_iotda();
            ChildError::Rejected {
                result_code,
                description: format!("{description} ({f})"),
            }
        }
    }
}

impl Child for CoapChild {
    fn device_id(&self) -> &str {
        &self.device_id
    }

    fn transport(&self) -> &'static str {
        "coap"
    }

    fn chunk_retries(&self) -> u64 {
        // Retransmissions of CON requests (RFC 7252 §4.2), blocks and
        // reads alike, since this driver was created.
        self.retries.load(Ordering::Relaxed) - self.retries_base
    }

    fn read_version(&self) -> BoxFuture<'_, Result<String, ChildError>> {
        Box::pin(async move {
            let req = msg::request(Code::GET, &Path::FIRMWARE_VERSION.segments());
            let resp = self.request(req).await.map_err(|e| match e {
                RequestError::Transport(_) | RequestError::Closed => {
                    ChildError::Unreachable(format!("{} at {}: {e}", self.device_id, self.address))
                }
                RequestError::Encode(m) => ChildError::Protocol(m),
            })?;
            let code = msg::code(&resp);
            if code != Code::CONTENT {
                return Err(ChildError::Protocol(format!("/3/0/3 answered {code}")));
            }
            lwm2m::parse_text(&resp.payload)
                .map(|v| v.trim().to_string())
                .map_err(|e| ChildError::Protocol(format!("/3/0/3: {e}")))
        })
    }

    fn deliver<'a>(
        &'a self,
        package: &'a Package,
        resume_from: u64,
        progress: Progress<'a>,
    ) -> BoxFuture<'a, Result<(), ChildError>> {
        Box::pin(async move {
            let _slot = self.net.transfer_permit().await;
            let mut procedure = self.new_procedure(package, resume_from)?;
            info!(child = %self.device_id, delivery = ?self.delivery, size = package.size, resume_from, "delivering");
            match self.drive(&mut procedure, package, true, progress).await? {
                Stop::Downloaded => {
                    *self.pending.lock().unwrap_or_else(|e| e.into_inner()) = Some(Pending {
                        sha256: package.sha256.clone(),
                        procedure: Some(procedure),
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
                Stop::Finished(Outcome::Failed(f)) => Err(failure_to_error(&f)),
            }
        })
    }

    fn activate<'a>(&'a self, package: &'a Package) -> BoxFuture<'a, Result<(), ChildError>> {
        Box::pin(async move {
            let (mut procedure, _slot) = match self.take_pending(&package.sha256) {
                Some(Some(p)) => (p, None),
                // `deliver` found the target running already.
                Some(None) => return Ok(()),
                None => {
                    // Nothing delivered in this run (the gateway restarted
                    // after delivery): run the whole procedure; it finishes
                    // at once if the child already runs the target.
                    let slot = self.net.transfer_permit().await;
                    (self.new_procedure(package, 0)?, Some(slot))
                }
            };
            match self.drive(&mut procedure, package, false, &|_| {}).await? {
                Stop::Finished(Outcome::Updated | Outcome::AlreadyCurrent) => {
                    info!(child = %self.device_id, version = %package.version, "child runs the new version");
                    Ok(())
                }
                Stop::Finished(Outcome::Failed(f)) => Err(failure_to_error(&f)),
                Stop::Downloaded => Err(ChildError::Protocol("procedure stopped early".into())),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use otabridge_codecs::lwm2m::UpdateResult;

    #[test]
    fn failures_map_to_iotda_codes_or_stay_transient() {
        let e = failure_to_error(&UpdateFailure::Child(UpdateResult::IntegrityFailure));
        assert!(
            matches!(
                e,
                ChildError::Rejected {
                    result_code: otabridge_codecs::iotda::ResultCode::CHECK_FAIL,
                    ..
                }
            ),
            "{e}"
        );
        let e = failure_to_error(&UpdateFailure::Child(UpdateResult::NotEnoughStorage));
        assert!(
            matches!(
                e,
                ChildError::Rejected {
                    result_code: otabridge_codecs::iotda::ResultCode::LOW_SPACE,
                    ..
                }
            ),
            "{e}"
        );
        let e = failure_to_error(&UpdateFailure::Push(PushFailure::TooLarge {
            max: Some(10),
        }));
        assert!(
            matches!(
                e,
                ChildError::Rejected {
                    result_code: otabridge_codecs::iotda::ResultCode::LOW_SPACE,
                    ..
                }
            ),
            "{e}"
        );
        assert!(failure_to_error(&UpdateFailure::Unreachable(Path::STATE)).is_transient());
        assert!(failure_to_error(&UpdateFailure::Push(PushFailure::Unreachable)).is_transient());
    }
}
