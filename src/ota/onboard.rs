//! Onboarding (issue 13 item 3, docs/coap.md "Onboarding"): with `[lwm2m]
//! onboard_product_id`, an LwM2M client that registers under an endpoint
//! name no `[[child]]` has is added to IoTDA as a sub-device, and driven
//! like a configured `endpoint` child once the platform says yes.
//!
//! 1. The CoAP network lets the unknown endpoint register (`2.01`) and
//!    names it here ([`CoapNetwork::onboard`]); it is not a child yet.
//! 2. [`Onboarding`] sends `add_sub_device_request` (docs/protocols/iotda.md
//!    §5.5: `node_id` = the endpoint name, `product_id`, `parent_device_id`
//!    = the gateway), up to 50 endpoints per request, with an `event_id`.
//! 3. `add_sub_device_response` with that `event_id`: each endpoint in
//!    `successful_devices` is adopted under the `device_id` the platform
//!    gave it: journaled (`coap_onboarded`), added to the children the
//!    engine and the dispatcher share ([`Roster`]), reported ONLINE, its
//!    presence followed from then on. Each endpoint in `failed_devices`
//!    (or left out of the answer) is refused: its registration ends and
//!    it gets `4.03` from then on, with a log line naming the platform's
//!    error.
//! 4. `delete_sub_device_notify` naming an adopted child's device id
//!    removes it: the child, its journal rows, its registration; the
//!    endpoint is refused from then on.
//!
//! A request the platform does not answer within [`ANSWER_WITHIN`] is
//! forgotten; the endpoint's next Register or Update asks again.
//! At most [`MAX_PENDING`] endpoints wait for an answer at once; others
//! wait for their next Update. A restarted gateway builds its onboarded
//! children from the journal ([`crate::child::coap::registrations::onboarded`]).

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use otabridge_codecs::iotda::event::{
    AddSubDeviceRequest, DeviceStatus, NewSubDevice, Status, SubDeviceNotify, SubDeviceResponse,
    UpdateStatus, MAX_ADD_PER_REQUEST,
};
use otabridge_codecs::iotda::Event;
use otabridge_codecs::version::Policy;
use tokio::sync::{oneshot, watch};
use tracing::{debug, info, warn};

use crate::child::coap::registrations::{self, Onboarded};
use crate::child::coap::{ChildOptions, CoapChild, CoapNetwork};
use crate::child::{Child, Roster};
use crate::clock;
use crate::config::{CoapAddress, Delivery};
use crate::journal::SharedJournal;
use crate::platform::Platform;

/// How long an `add_sub_device_request` waits for its response (the
/// platform answers within 30 s, docs/protocols/iotda.md §5.5).
pub const ANSWER_WITHIN: Duration = Duration::from_secs(60);

/// Endpoints waiting for the platform's answer at once.
pub const MAX_PENDING: usize = 1000;

#[derive(Debug)]
struct Request {
    endpoints: Vec<String>,
    sent: tokio::time::Instant,
}

#[derive(Debug, Default)]
struct State {
    /// Requests sent, by event id.
    requests: HashMap<String, Request>,
    /// Adopted children's presence tasks, to stop when one is deleted.
    presence: HashMap<String, oneshot::Sender<()>>,
    next_id: u64,
}

impl State {
    fn pending(&self, endpoint: &str) -> bool {
        self.requests
            .values()
            .any(|r| r.endpoints.iter().any(|e| e == endpoint))
    }

    fn pending_count(&self) -> usize {
        self.requests.values().map(|r| r.endpoints.len()).sum()
    }

    fn expire(&mut self, now: tokio::time::Instant) {
        self.requests.retain(|id, r| {
            let keep = now.duration_since(r.sent) < ANSWER_WITHIN;
            if !keep {
                warn!(event_id = %id, endpoints = ?r.endpoints,
                      "no add_sub_device_response within {}s; asking again at their next Update", ANSWER_WITHIN.as_secs());
            }
            keep
        });
    }
}

#[derive(Debug)]
struct Inner {
    platform: Platform,
    journal: SharedJournal,
    net: CoapNetwork,
    product_id: Option<String>,
    roster: Roster,
    child_options: ChildOptions,
    policy: Policy,
    state: Mutex<State>,
    /// The daemon's stop, for the presence tasks of adopted children.
    stop: watch::Receiver<bool>,
    /// A prefix of event ids that differs between runs.
    run_tag: String,
}

/// What onboarded children are made with.
#[derive(Debug, Clone)]
pub struct Setup {
    /// `lwm2m.onboard_product_id`; `None`: only the children adopted in
    /// earlier runs are followed (and may be deleted).
    pub product_id: Option<String>,
    /// The CoAP children's timing.
    pub child_options: ChildOptions,
    /// `ota.version_match`.
    pub policy: Policy,
}

/// The onboarding of unknown LwM2M endpoints (see the module doc).
/// Cheap to clone.
#[derive(Debug, Clone)]
pub struct Onboarding {
    inner: Arc<Inner>,
}

impl Onboarding {
    /// Onboarding on `net` as `setup` says, adding children to `roster`,
    /// reporting through `platform`, journaling into `journal`; presence
    /// tasks end when `stop` turns true.
    pub fn new(
        platform: Platform,
        journal: SharedJournal,
        net: CoapNetwork,
        roster: Roster,
        setup: Setup,
        stop: watch::Receiver<bool>,
    ) -> Self {
        let Setup {
            product_id,
            child_options,
            policy,
        } = setup;
        let run_tag = format!("{:x}{:x}", clock::now_unix(), std::process::id() & 0xffff);
        Onboarding {
            inner: Arc::new(Inner {
                platform,
                journal,
                net,
                product_id,
                roster,
                child_options,
                policy,
                state: Mutex::default(),
                stop,
                run_tag,
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Follows the presence of a child adopted in an earlier run (its
    /// driver built from the journal at start).
    pub fn follow(&self, child: Arc<dyn Child>) {
        self.spawn_presence(child);
    }

    /// Asks the platform about every unknown endpoint the network names,
    /// until `shutdown`. Without a product id it returns at once.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let Some(product) = self.inner.product_id.clone() else {
            return;
        };
        let mut strangers = self.inner.net.onboard();
        info!(product_id = %product, "LwM2M onboarding on: unknown endpoints that register are added as sub-devices");
        tokio::pin!(shutdown);
        loop {
            let first = tokio::select! {
                s = strangers.recv() => match s { Some(s) => s, None => return },
                _ = &mut shutdown => return,
            };
            let mut batch = vec![first];
            while batch.len() < MAX_ADD_PER_REQUEST {
                match strangers.try_recv() {
                    Ok(s) => batch.push(s),
                    Err(_) => break,
                }
            }
            self.ask(&product, batch).await;
        }
    }

    /// Sends one `add_sub_device_request` for the endpoints of `batch`
    /// that are not adopted, not asked about already, and fit.
    async fn ask(&self, product: &str, mut batch: Vec<String>) {
        let (event_id, endpoints) = {
            let mut st = self.state();
            st.expire(tokio::time::Instant::now());
            batch.sort();
            batch.dedup();
            let room = MAX_PENDING.saturating_sub(st.pending_count());
            let endpoints: Vec<String> = batch
                .into_iter()
                .filter(|e| !st.pending(e))
                .take(room)
                .collect();
            if endpoints.is_empty() {
                return;
            }
            st.next_id += 1;
            let id = format!("otabridge-onboard-{}-{}", self.inner.run_tag, st.next_id);
            st.requests.insert(
                id.clone(),
                Request {
                    endpoints: endpoints.clone(),
                    sent: tokio::time::Instant::now(),
                },
            );
            (id, endpoints)
        };
        let gw = self.inner.platform.gateway_id().to_owned();
        let ev = Event::AddSubDeviceRequest(AddSubDeviceRequest {
            devices: endpoints
                .iter()
                .map(|e| NewSubDevice {
                    node_id: e.clone(),
                    product_id: product.to_owned(),
                    parent_device_id: Some(gw.clone()),
                    name: Some(e.clone()),
                    ..NewSubDevice::default()
                })
                .collect(),
        });
        info!(event_id = %event_id, endpoints = ?endpoints, product_id = %product,
              "unknown LwM2M endpoints registered; asking the platform to add them as sub-devices");
        if let Err(e) = self
            .inner
            .platform
            .report_with_id(None, &ev, &event_id)
            .await
        {
            warn!("cannot queue add_sub_device_request: {e}");
            self.state().requests.remove(&event_id);
        }
    }

    /// The platform's `add_sub_device_response` (`event_id` from its
    /// envelope): adopts, or refuses, each endpoint of the request.
    pub async fn on_add_response(&self, event_id: Option<&str>, r: &SubDeviceResponse) {
        let req = event_id.and_then(|id| self.state().requests.remove(id));
        let Some(req) = req else {
            info!(
                event_id = event_id.unwrap_or("-"),
                "add_sub_device_response for no request of ours; ignored"
            );
            return;
        };
        let mut answered = Vec::new();
        for d in &r.successful_devices {
            let field = |k: &str| d.get(k).and_then(|v| v.as_str()).map(str::to_owned);
            let (Some(node), Some(device_id)) = (field("node_id"), field("device_id")) else {
                warn!(device = %d, "add_sub_device_response: a successful device without node_id or device_id; ignored");
                continue;
            };
            if !req.endpoints.contains(&node) {
                warn!(node_id = %node, "add_sub_device_response: a device we did not ask for; ignored");
                continue;
            }
            answered.push(node.clone());
            self.adopt(&node, &device_id, field("product_id")).await;
        }
        for f in &r.failed_devices {
            let Some(node) = f
                .node_id
                .as_deref()
                .filter(|n| req.endpoints.iter().any(|e| e == n))
            else {
                continue;
            };
            answered.push(node.to_owned());
            warn!(endpoint = node, error_code = %f.error_code, error_msg = %f.error_msg,
                  "the platform refused to add the LwM2M endpoint as a sub-device; it stays refused (4.03)");
            self.inner.net.deny_endpoint(node);
        }
        for e in req.endpoints.iter().filter(|e| !answered.contains(e)) {
            warn!(endpoint = %e, "add_sub_device_response does not name the LwM2M endpoint; it stays refused (4.03)");
            self.inner.net.deny_endpoint(e);
        }
    }

    /// Makes `endpoint` the child `device_id`: journal, roster, network,
    /// presence; refused instead when the device id is taken.
    async fn adopt(&self, endpoint: &str, device_id: &str, product: Option<String>) {
        if self.inner.roster.contains(device_id) || device_id == self.inner.platform.gateway_id() {
            warn!(endpoint, device_id, "the platform's device id for the LwM2M endpoint is another child's; it stays refused (4.03)");
            self.inner.net.deny_endpoint(endpoint);
            return;
        }
        let row = Onboarded {
            endpoint: endpoint.to_owned(),
            device_id: device_id.to_owned(),
            product_id: product
                .or_else(|| self.inner.product_id.clone())
                .unwrap_or_default(),
            adopted_unix: clock::now_unix(),
        };
        let r = row.clone();
        if let Err(e) = self
            .inner
            .journal
            .run(move |j| registrations::adopt(j, &r))
            .await
        {
            warn!(endpoint, "journal: cannot keep the onboarded endpoint ({e}); not adopted, asking again at its next Update");
            return;
        }
        let child = self.child(&row);
        self.inner.roster.add(child.clone());
        self.inner.net.allow_endpoint(endpoint);
        info!(
            endpoint,
            device_id,
            "LwM2M endpoint onboarded: added to the platform as a sub-device, driven as a child"
        );
        self.spawn_presence(child);
    }

    /// The driver of an onboarded client: a CoAP child with `endpoint`
    /// and `delivery = "auto"`, like a configured one.
    pub fn child(&self, o: &Onboarded) -> Arc<dyn Child> {
        Arc::new(
            CoapChild::new(
                &o.device_id,
                CoapAddress::Endpoint(o.endpoint.clone()),
                Delivery::Auto,
                self.inner.net.clone(),
                self.inner.child_options.clone(),
            )
            .with_version_policy(self.inner.policy),
        )
    }

    /// Reports the child's presence now and whenever it changes, until
    /// the daemon stops or the child is deleted.
    fn spawn_presence(&self, child: Arc<dyn Child>) {
        let Some(presence) = child.presence() else {
            return;
        };
        let (tx, rx) = oneshot::channel();
        self.state()
            .presence
            .insert(child.device_id().to_owned(), tx);
        let mut stop = self.inner.stop.clone();
        let (pl, j) = (self.inner.platform.clone(), self.inner.journal.clone());
        let online = *presence.borrow();
        tokio::spawn(async move {
            report_status(&pl, &j, child.as_ref(), online).await;
            let until = async move {
                tokio::select! {
                    _ = stop.wait_for(|s| *s) => {}
                    _ = rx => {}
                }
            };
            report_presence(pl, j, child, presence, until).await;
        });
    }

    /// The platform's `delete_sub_device_notify`: removes each adopted
    /// child it names (by device id).
    pub async fn on_deleted(&self, n: &SubDeviceNotify) {
        for d in &n.devices {
            let Some(id) = d.device_id.clone() else {
                continue;
            };
            let forgot = {
                let id = id.clone();
                self.inner
                    .journal
                    .run(move |j| registrations::forget(j, &id))
                    .await
            };
            let endpoint = match forgot {
                Ok(Some(ep)) => ep,
                Ok(None) => {
                    debug!(device_id = %id, "deleted sub-device is not an onboarded LwM2M endpoint");
                    continue;
                }
                Err(e) => {
                    warn!(device_id = %id, "journal: {e}");
                    continue;
                }
            };
            if let Some(stop) = self.state().presence.remove(&id) {
                let _ = stop.send(());
            }
            self.inner.roster.remove(&id);
            self.inner.net.deny_endpoint(&endpoint);
            info!(device_id = %id, %endpoint,
                  "sub-device deleted on the platform: the onboarded LwM2M endpoint is no longer a child and is refused (4.03)");
        }
    }
}

/// Reports `child` ONLINE or OFFLINE upstream, and in the journal for
/// `otabridge status`.
pub async fn report_status(
    platform: &Platform,
    journal: &SharedJournal,
    child: &dyn Child,
    online: bool,
) {
    let id = child.device_id();
    let why = (!online).then_some("not registered");
    let (jid, transport, now) = (id.to_owned(), child.transport(), clock::now_unix());
    let seen = move |j: &mut crate::journal::Journal| {
        j.child_seen(&jid, transport, None, online, why, now)
    };
    if let Err(e) = journal.run(seen).await {
        warn!("journal: {e}");
    }
    let ev = Event::UpdateStatus(UpdateStatus {
        device_statuses: vec![DeviceStatus {
            device_id: id.to_owned(),
            status: if online {
                Status::Online
            } else {
                Status::Offline
            },
        }],
    });
    if let Err(e) = platform.report(None, &ev).await {
        warn!("cannot queue sub_device_update_status: {e}");
    }
}

/// Reports a child ONLINE or OFFLINE upstream (and in the journal)
/// whenever its transport's presence changes: an LwM2M client that
/// registers, updates, de-registers or expires (issue 13, docs/coap.md).
/// The connect-time announcement covers the rest.
pub async fn report_presence(
    platform: Platform,
    journal: SharedJournal,
    child: Arc<dyn Child>,
    mut presence: watch::Receiver<bool>,
    stop: impl Future<Output = ()>,
) {
    tokio::pin!(stop);
    loop {
        tokio::select! {
            r = presence.changed() => if r.is_err() { return },
            _ = &mut stop => return,
        }
        let online = *presence.borrow_and_update();
        info!(
            child = child.device_id(),
            online, "registration changed; reporting the child's status"
        );
        report_status(&platform, &journal, child.as_ref(), online).await;
    }
}

/// Builds the drivers of the clients onboarded in earlier runs (the
/// journal's `coap_onboarded`) whose device id and endpoint no configured
/// child has; those that clash are logged and left out.
pub fn journaled(
    rows: Vec<Onboarded>,
    configured: &[Arc<dyn Child>],
    configured_endpoints: &[String],
) -> Vec<Onboarded> {
    rows.into_iter()
        .filter(|o| {
            let clash = configured.iter().any(|c| c.device_id() == o.device_id)
                || configured_endpoints.contains(&o.endpoint);
            if clash {
                warn!(endpoint = %o.endpoint, device_id = %o.device_id,
                      "onboarded LwM2M endpoint is now a configured child; the configuration wins");
            }
            !clash
        })
        .collect()
}
