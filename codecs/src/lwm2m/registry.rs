//! The LwM2M Registration interface, server side (OMA TS Core 1.1 §6.2,
//! §5.3 for 1.0 clients), sans-IO: the gateway as the LwM2M server its
//! children register with.
//!
//! | Operation | Request | Answer |
//! |---|---|---|
//! | Register | `POST /rd?ep=&lt=&lwm2m=&b=&sms=&Q` + link format | `2.01 Created`, `Location-Path: rd/<id>` |
//! | Update | `POST /rd/<id>?lt=&b=&sms=&Q` (+ links, optional) | `2.04 Changed` |
//! | De-register | `DELETE /rd/<id>` | `2.02 Deleted` |
//!
//! - An Update's source address replaces the registered one, so a child
//!   rebound by NAT or readdressed by DHCP stays reachable; so does a new
//!   Register of a known endpoint (it replaces the old registration, whose
//!   location then answers 4.04).
//! - A registration expires `lifetime + grace` after its last Register or
//!   Update ([`Registry::poll_timeout`], [`Registry::handle_timeout`]).
//! - Queue mode (LwM2M 1.0 binding `UQ`, 1.1 parameter `Q`): the client
//!   listens only for [`RegistryConfig::queue_window`] after it last sent
//!   something ([`Registry::seen`]). Requests for a sleeping client are
//!   held here ([`Registry::route`], at most [`RegistryConfig::max_held`]
//!   per client) and released with [`RegistryEvent::Wake`] when it next
//!   registers or updates.
//! - Bad input gets a 4.xx with a diagnostic payload (RFC 7252 §5.5.2) and
//!   changes nothing: [`RegisterError`] says which code and why.
//! - Memory is bounded: [`RegistryConfig::max_registrations`],
//!   [`RegistryConfig::max_payload`], [`super::link::MAX_LINKS`],
//!   [`RegistryConfig::max_held`].
//!
//! # Call order
//! A driver owning the socket (and the message layer, which deduplicates
//! retransmitted requests before they get here):
//! 1. for every request whose path starts with `rd`
//!    ([`is_registry_request`]): [`Registry::handle_request`] gives the
//!    response to send;
//! 2. for every datagram from a peer: [`Registry::seen`] (keeps a queue-mode
//!    client's window open while it talks);
//! 3. for a request to an endpoint: [`Registry::route`] says where it goes
//!    now, or holds it;
//! 4. when [`Registry::poll_timeout`] has passed: [`Registry::handle_timeout`];
//! 5. after any of these: drain [`Registry::poll_event`] (to journals,
//!    status, and [`RegistryEvent::Wake`]'s held requests to the wire).
//!
//! A restarted gateway gives back what it journaled with
//! [`Registry::restore`] before taking requests.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::fmt;
use std::hash::Hash;
use std::time::Duration;

use coap_lite::{CoapOption, Packet};

use super::link::{self, LinkError, ObjectLinks};
use crate::coap::msg::{self, Code};
use crate::rng::Rng;
use crate::time::Instant;

/// Content-Format `application/link-format` (RFC 6690 §7.2).
pub const LINK_FORMAT: u32 = 40;

/// 2.02 Deleted.
pub const DELETED: Code = Code(0x42);
/// 4.03 Forbidden.
pub const FORBIDDEN: Code = Code(0x83);
/// 4.12 Precondition Failed (OMA TS Core 1.1 §6.2.1: unsupported version).
pub const PRECONDITION_FAILED: Code = Code(0x8c);
/// 4.15 Unsupported Content-Format.
pub const UNSUPPORTED_CONTENT_FORMAT: Code = Code(0x8f);
/// 5.03 Service Unavailable.
pub const SERVICE_UNAVAILABLE: Code = Code(0xa3);

/// The longest endpoint name accepted (bytes).
pub const MAX_ENDPOINT: usize = 128;

/// Registry limits and timers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryConfig {
    /// Lifetime of a Register without `lt` (OMA TS Core: 86400 s).
    pub default_lifetime: Duration,
    /// Extra time after the lifetime before a registration expires, for a
    /// client's Update that is late by a retransmission or two.
    pub grace: Duration,
    /// How long a queue-mode client listens after it last sent something
    /// (OMA TS Core 1.1 §6.5: CoAP MAX_TRANSMIT_WAIT, 93 s).
    pub queue_window: Duration,
    /// Registrations at once; a Register of a new endpoint beyond it gets
    /// 5.03.
    pub max_registrations: usize,
    /// The largest Register/Update payload (bytes); more gets 4.13.
    pub max_payload: usize,
    /// Requests held per sleeping queue-mode client.
    pub max_held: usize,
    /// Seeds the registration ids.
    pub seed: u64,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            default_lifetime: Duration::from_secs(86_400),
            grace: Duration::from_secs(15),
            queue_window: Duration::from_secs(93),
            max_registrations: 10_000,
            max_payload: 1024,
            max_held: 16,
            seed: 0,
        }
    }
}

/// An LwM2M enabler version (`lwm2m=1.1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version {
    /// Major.
    pub major: u8,
    /// Minor.
    pub minor: u8,
}

impl Version {
    /// 1.0, the version of a client that sends no `lwm2m`.
    pub const V1_0: Version = Version { major: 1, minor: 0 };
    /// 1.1.
    pub const V1_1: Version = Version { major: 1, minor: 1 };

    /// Parses `1.1`; `None` when it is not `<digits>.<digits>`.
    pub fn parse(s: &str) -> Option<Version> {
        let (a, b) = s.split_once('.')?;
        let num = |x: &str| {
            (!x.is_empty() && x.len() <= 3 && x.bytes().all(|c| c.is_ascii_digit()))
                .then(|| x.parse::<u8>().ok())
                .flatten()
        };
        Some(Version {
            major: num(a)?,
            minor: num(b)?,
        })
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// One client's registration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration<P> {
    /// The location id: the client updates `rd/<id>`.
    pub id: String,
    /// The Endpoint Client Name (`ep`).
    pub endpoint: String,
    /// Where the client last sent from: requests go there.
    pub peer: P,
    /// `lt`.
    pub lifetime: Duration,
    /// `lwm2m`.
    pub version: Version,
    /// `b`, as sent (1.0: `U`, `UQ`, ...; 1.1: `U`, ...).
    pub binding: String,
    /// Queue mode: `Q` in a 1.0 binding or the 1.1 `Q` parameter.
    pub queue: bool,
    /// `sms`, the client's MSISDN, if it sent one (stored, not used).
    pub sms: Option<String>,
    /// The objects it announced.
    pub objects: ObjectLinks,
    /// Its last link payload, as sent (validated), for journals.
    pub links: String,
}

/// Why a registry request was refused; [`RegisterError::code`] is the
/// CoAP answer, the message its diagnostic payload.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegisterError {
    /// Register without `ep`.
    #[error("Register without ep (the Endpoint Client Name)")]
    MissingEndpoint,
    /// An `ep` that is empty, too long or has control characters.
    #[error("ep '{0}' is not a usable endpoint name (1..{MAX_ENDPOINT} printable bytes)")]
    BadEndpoint(String),
    /// `lt` is not a positive number of seconds.
    #[error("lt '{0}' is not a lifetime in seconds (1..4294967295)")]
    BadLifetime(String),
    /// `lwm2m` is not `<major>.<minor>`.
    #[error("lwm2m '{0}' is not a version like 1.1")]
    BadVersion(String),
    /// A well-formed `lwm2m` this server does not speak.
    #[error("lwm2m {0} is not supported (1.0, 1.1 and 1.2 are)")]
    UnsupportedVersion(Version),
    /// `b` names no UDP binding.
    #[error("binding '{0}' is not usable: otabridge reaches LwM2M clients over UDP (U)")]
    BadBinding(String),
    /// A parameter given twice, or one not allowed in this operation.
    #[error("parameter '{0}' {1}")]
    BadParameter(String, &'static str),
    /// A Uri-Query that is not UTF-8.
    #[error("a Uri-Query option is not UTF-8")]
    QueryNotUtf8,
    /// The link payload.
    #[error("{0}")]
    Links(#[from] LinkError),
    /// Register without object links.
    #[error("Register without object links")]
    NoObjects,
    /// A payload over the limit, or block-wise (not reassembled here).
    #[error(
        "payload of {len} bytes over the limit of {max} (block-wise registration is not supported)"
    )]
    TooLarge {
        /// Its size (or the Block1/Size1 announced size).
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A Content-Format other than link format.
    #[error("Content-Format {0} is not application/link-format (40)")]
    ContentFormat(u32),
    /// An endpoint the gateway does not serve.
    #[error("endpoint '{0}' is not configured on this gateway")]
    UnknownEndpoint(String),
    /// The registry is full.
    #[error("{0} registrations already: no room for another endpoint")]
    Full(usize),
    /// Update or De-register of a location that does not exist (never did,
    /// expired, de-registered, or replaced by a new Register).
    #[error("no registration at rd/{0}")]
    NotFound(String),
    /// A path under `rd` that is no registration resource.
    #[error("no such registry resource '{0}'")]
    BadPath(String),
    /// A method the resource does not take.
    #[error("{0} is not allowed on {1}")]
    Method(Code, String),
}

impl RegisterError {
    /// The CoAP response code for this refusal.
    pub fn code(&self) -> Code {
        use RegisterError::*;
        match self {
            UnsupportedVersion(_) => PRECONDITION_FAILED,
            TooLarge { .. } => Code::REQUEST_ENTITY_TOO_LARGE,
            ContentFormat(_) => UNSUPPORTED_CONTENT_FORMAT,
            UnknownEndpoint(_) => FORBIDDEN,
            Full(_) => SERVICE_UNAVAILABLE,
            NotFound(_) | BadPath(_) => Code::NOT_FOUND,
            Method(..) => Code::METHOD_NOT_ALLOWED,
            _ => Code::BAD_REQUEST,
        }
    }
}

/// Why [`Registry::restore`] did not take a journaled registration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RestoreError {
    /// Its links no longer parse.
    #[error("journaled links of '{0}': {1}")]
    Links(String, LinkError),
    /// Another registration has this endpoint or id.
    #[error("'{0}' is registered already")]
    Duplicate(String),
    /// The registry is full.
    #[error("registry full")]
    Full,
}

/// What the registry reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistryEvent<P, T> {
    /// A Register was accepted. `replaced`: the address of the endpoint's
    /// previous registration, which this one replaces.
    Registered {
        /// The registration.
        reg: Registration<P>,
        /// The previous registration's address, if there was one.
        replaced: Option<P>,
    },
    /// An Update was accepted; `moved_from`: the old address when the
    /// client now sends from another one.
    Updated {
        /// The registration after the update.
        reg: Registration<P>,
        /// The address it had before, if it changed.
        moved_from: Option<P>,
    },
    /// A De-register; `dropped`: requests that were held for it.
    Deregistered {
        /// The registration that ended.
        reg: Registration<P>,
        /// Held requests that will not be sent.
        dropped: Vec<T>,
    },
    /// No Update within lifetime + grace; `dropped` as above.
    Expired {
        /// The registration that ended.
        reg: Registration<P>,
        /// Held requests that will not be sent.
        dropped: Vec<T>,
    },
    /// A queue-mode client is awake: its held requests go to `peer` now.
    Wake {
        /// The endpoint.
        endpoint: String,
        /// Where it listens.
        peer: P,
        /// Until when (a request sent later may not be heard).
        until: Instant,
        /// The held requests, oldest first.
        items: Vec<T>,
    },
    /// A request was refused (the response carries the same reason).
    Refused {
        /// Who sent it.
        peer: P,
        /// The endpoint it named, if any.
        endpoint: Option<String>,
        /// Why.
        error: RegisterError,
    },
}

/// Where [`Registry::route`] sends a request for an endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route<P, T> {
    /// Send it to `peer` now.
    Send {
        /// The client's address.
        peer: P,
        /// The request, given back.
        item: T,
    },
    /// Held until the queue-mode client wakes ([`RegistryEvent::Wake`]).
    Held,
    /// The endpoint is not registered (never, or expired, de-registered).
    NotRegistered(T),
    /// The endpoint sleeps and already has `max_held` requests waiting.
    Full(T),
}

#[derive(Debug)]
struct Entry<P, T> {
    reg: Registration<P>,
    expires: Instant,
    /// Queue mode: listening until then (`None`: not since our restart).
    awake_until: Option<Instant>,
    held: VecDeque<T>,
}

/// The registrations of one LwM2M server endpoint (see the module doc).
/// `P` is the peer address, `T` a request held for a sleeping client.
#[derive(Debug)]
pub struct Registry<P, T> {
    cfg: RegistryConfig,
    entries: HashMap<String, Entry<P, T>>,
    /// Endpoint name to registration id.
    by_endpoint: HashMap<String, String>,
    /// Address to registration id (the latest registration from there).
    by_peer: HashMap<P, String>,
    expiries: BTreeSet<(Instant, String)>,
    allowed: Option<HashSet<String>>,
    /// Endpoints outside `allowed` register all the same (onboarding:
    /// the gateway asks the platform about them, issue 13 item 3).
    admit_unknown: bool,
    /// Endpoints refused whatever `allowed` says ([`Registry::deny`]).
    denied: HashSet<String>,
    rng: Rng,
    events: VecDeque<RegistryEvent<P, T>>,
}

/// Whether `packet` is for the registry: its first Uri-Path segment is `rd`.
pub fn is_registry_request(packet: &Packet) -> bool {
    packet
        .get_option(CoapOption::UriPath)
        .and_then(|l| l.front())
        .is_some_and(|s| s.as_slice() == b"rd")
}

/// The Uri-Query parameters of a registry request.
#[derive(Debug, Default)]
struct Query {
    ep: Option<String>,
    lt: Option<String>,
    lwm2m: Option<String>,
    b: Option<String>,
    sms: Option<String>,
    q: bool,
}

fn query(packet: &Packet) -> Result<Query, RegisterError> {
    let mut q = Query::default();
    let Some(opts) = packet.get_option(CoapOption::UriQuery) else {
        return Ok(q);
    };
    for raw in opts {
        let s = std::str::from_utf8(raw).map_err(|_| RegisterError::QueryNotUtf8)?;
        let (name, value) = match s.split_once('=') {
            Some((n, v)) => (n, Some(v.to_owned())),
            None => (s, None),
        };
        let dup = || RegisterError::BadParameter(name.to_owned(), "is given twice");
        let slot = match name {
            "ep" => &mut q.ep,
            "lt" => &mut q.lt,
            "lwm2m" => &mut q.lwm2m,
            "b" => &mut q.b,
            "sms" => &mut q.sms,
            "Q" => {
                if q.q {
                    return Err(dup());
                }
                q.q = true;
                continue;
            }
            // Parameters of later versions (1.2: apn, im, ct, ...) are
            // not needed to reach the client; they are ignored.
            _ => continue,
        };
        if slot.is_some() {
            return Err(dup());
        }
        *slot = Some(value.unwrap_or_default());
    }
    Ok(q)
}

fn lifetime(lt: &str) -> Result<Duration, RegisterError> {
    match lt.parse::<u32>() {
        Ok(n) if n > 0 && lt.bytes().all(|b| b.is_ascii_digit()) => {
            Ok(Duration::from_secs(n.into()))
        }
        _ => Err(RegisterError::BadLifetime(lt.to_owned())),
    }
}

/// `(binding, queue)` from `b`: it must offer UDP; `Q` in it is 1.0's
/// queue mode (OMA TS Core 1.0 §5.3.1.1: U, UQ, S, SQ, US, UQS).
fn binding(b: &str) -> Result<(String, bool), RegisterError> {
    let ok = !b.is_empty()
        && b.len() <= 8
        && b.bytes().all(|c| b"UQSTN".contains(&c))
        && b.contains('U');
    if !ok {
        return Err(RegisterError::BadBinding(b.to_owned()));
    }
    Ok((b.to_owned(), b.contains('Q')))
}

fn endpoint(ep: &str) -> Result<String, RegisterError> {
    if ep.is_empty() || ep.len() > MAX_ENDPOINT || ep.chars().any(char::is_control) {
        return Err(RegisterError::BadEndpoint(ep.escape_debug().to_string()));
    }
    Ok(ep.to_owned())
}

/// The payload's object links, checked against the limits.
fn payload_links(
    packet: &Packet,
    max: usize,
) -> Result<Option<(ObjectLinks, String)>, RegisterError> {
    if let Ok(Some(cf)) = msg::uint(packet, CoapOption::ContentFormat) {
        if cf != LINK_FORMAT {
            return Err(RegisterError::ContentFormat(cf));
        }
    }
    if let Ok(Some(b)) = msg::block1(packet) {
        let len = msg::size1(packet)
            .ok()
            .flatten()
            .map_or((b.num as usize + 1) * b.size() as usize, |s| s as usize);
        return Err(RegisterError::TooLarge { len, max });
    }
    let p = &packet.payload;
    if p.len() > max {
        return Err(RegisterError::TooLarge { len: p.len(), max });
    }
    if p.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let objects = link::parse_objects(p)?;
    // parse_objects checked it is UTF-8.
    Ok(Some((objects, String::from_utf8_lossy(p).into_owned())))
}

fn respond(code: Code) -> Packet {
    msg::response(code)
}

fn refusal(e: &RegisterError) -> Packet {
    let mut p = msg::response(e.code());
    // RFC 7252 §5.5.2: a diagnostic payload, UTF-8, no Content-Format.
    p.payload = e.to_string().into_bytes();
    p
}

impl<P: Clone + Eq + Hash + fmt::Debug, T> Registry<P, T> {
    /// An empty registry accepting any endpoint (see [`Registry::allow_only`]).
    pub fn new(cfg: RegistryConfig) -> Self {
        let rng = Rng::new(cfg.seed);
        Registry {
            cfg,
            entries: HashMap::new(),
            by_endpoint: HashMap::new(),
            by_peer: HashMap::new(),
            expiries: BTreeSet::new(),
            allowed: None,
            admit_unknown: false,
            denied: HashSet::new(),
            rng,
            events: VecDeque::new(),
        }
    }

    /// Accepts Registers only from these endpoint names; others get 4.03
    /// ([`RegisterError::UnknownEndpoint`]).
    pub fn allow_only<I: IntoIterator<Item = String>>(&mut self, endpoints: I) {
        self.allowed = Some(endpoints.into_iter().collect());
    }

    /// Accepts Registers from `endpoint` too (when [`Registry::allow_only`]
    /// restricts them), also after a [`Registry::deny`].
    pub fn allow(&mut self, endpoint: String) {
        self.denied.remove(&endpoint);
        if let Some(a) = &mut self.allowed {
            a.insert(endpoint);
        }
    }

    /// With `yes`, endpoints that [`Registry::allow_only`] leaves out
    /// register all the same (the caller tells them apart with
    /// [`Registry::is_allowed`] and decides later: [`Registry::allow`] or
    /// [`Registry::deny`]); denied endpoints stay refused.
    pub fn admit_unknown(&mut self, yes: bool) {
        self.admit_unknown = yes;
    }

    /// Whether `endpoint` is one [`Registry::allow_only`] names (or any
    /// endpoint, without it), and not denied.
    pub fn is_allowed(&self, endpoint: &str) -> bool {
        !self.denied.contains(endpoint)
            && self.allowed.as_ref().is_none_or(|a| a.contains(endpoint))
    }

    /// Refuses `endpoint` from now on (4.03, as an unknown endpoint) and
    /// ends its registration, if it has one, as a De-register would
    /// ([`RegistryEvent::Deregistered`]): its next Update gets 4.04 and
    /// its next Register 4.03. At most `max_registrations` endpoints are
    /// remembered as denied; beyond that one is refused only while
    /// [`Registry::allow_only`] leaves it out (the memory stays bounded).
    pub fn deny(&mut self, endpoint: &str) {
        if let Some(a) = &mut self.allowed {
            a.remove(endpoint);
        }
        if self.denied.len() < self.cfg.max_registrations {
            self.denied.insert(endpoint.to_owned());
        }
        if let Some(e) = self
            .by_endpoint
            .get(endpoint)
            .cloned()
            .and_then(|id| self.remove(&id))
        {
            self.events.push_back(RegistryEvent::Deregistered {
                reg: e.reg,
                dropped: e.held.into(),
            });
        }
    }

    /// The settings.
    pub fn config(&self) -> &RegistryConfig {
        &self.cfg
    }

    /// Answers a registry request from `peer` (Register, Update,
    /// De-register); the events it caused are in [`Registry::poll_event`].
    pub fn handle_request(&mut self, peer: P, request: &Packet, now: Instant) -> Packet {
        self.seen(&peer, now);
        let path: Vec<String> = request
            .get_option(CoapOption::UriPath)
            .map(|l| {
                l.iter()
                    .map(|s| String::from_utf8_lossy(s).into_owned())
                    .collect()
            })
            .unwrap_or_default();
        let method = msg::code(request);
        let r = match (path.as_slice(), method) {
            ([rd], Code::POST) if rd == "rd" => self.register(&peer, request, now),
            ([rd, id], Code::POST) if rd == "rd" => self.update(&peer, id, request, now),
            ([rd, id], Code(0x04)) if rd == "rd" => self.deregister(id),
            ([rd] | [rd, _], m) if rd == "rd" => {
                Err((None, RegisterError::Method(m, path.join("/"))))
            }
            _ => Err((None, RegisterError::BadPath(path.join("/")))),
        };
        match r {
            Ok(p) => p,
            Err((endpoint, error)) => {
                let p = refusal(&error);
                self.events.push_back(RegistryEvent::Refused {
                    peer,
                    endpoint,
                    error,
                });
                p
            }
        }
    }

    fn register(
        &mut self,
        peer: &P,
        request: &Packet,
        now: Instant,
    ) -> Result<Packet, (Option<String>, RegisterError)> {
        let q = query(request).map_err(|e| (None, e))?;
        let ep = endpoint(
            q.ep.as_deref()
                .ok_or((None, RegisterError::MissingEndpoint))?,
        )
        .map_err(|e| (None, e))?;
        let named = |e| (Some(ep.clone()), e);
        let reg = self
            .new_registration(peer, &ep, &q, request)
            .map_err(named)?;
        let known = self.allowed.as_ref().is_none_or(|a| a.contains(&ep));
        if self.denied.contains(&ep) || !(known || self.admit_unknown) {
            return Err(named(RegisterError::UnknownEndpoint(ep.clone())));
        }
        let old = self.by_endpoint.get(&ep).cloned();
        if old.is_none() && self.entries.len() >= self.cfg.max_registrations {
            return Err(named(RegisterError::Full(self.cfg.max_registrations)));
        }
        let (replaced, held) = match old.and_then(|id| self.remove(&id)) {
            Some(e) => (Some(e.reg.peer), e.held),
            None => (None, VecDeque::new()),
        };
        let id = reg.id.clone();
        let mut response = respond(Code::CREATED);
        response.add_option(CoapOption::LocationPath, b"rd".to_vec());
        response.add_option(CoapOption::LocationPath, id.as_bytes().to_vec());
        self.insert(reg.clone(), now, held);
        self.events
            .push_back(RegistryEvent::Registered { reg, replaced });
        self.wake(&id, now);
        Ok(response)
    }

    /// A registration from a Register's parameters and payload, checked.
    fn new_registration(
        &mut self,
        peer: &P,
        ep: &str,
        q: &Query,
        request: &Packet,
    ) -> Result<Registration<P>, RegisterError> {
        let lifetime = match &q.lt {
            Some(lt) => lifetime(lt)?,
            None => self.cfg.default_lifetime,
        };
        let version = match &q.lwm2m {
            None => Version::V1_0,
            Some(v) => Version::parse(v).ok_or_else(|| RegisterError::BadVersion(v.clone()))?,
        };
        if version.major != 1 || version.minor > 2 {
            return Err(RegisterError::UnsupportedVersion(version));
        }
        let (binding, queue_b) = binding(q.b.as_deref().unwrap_or("U"))?;
        let (objects, links) =
            payload_links(request, self.cfg.max_payload)?.ok_or(RegisterError::NoObjects)?;
        Ok(Registration {
            id: self.fresh_id(),
            endpoint: ep.to_owned(),
            peer: peer.clone(),
            lifetime,
            version,
            binding,
            queue: queue_b || q.q,
            sms: q.sms.clone(),
            objects,
            links,
        })
    }

    /// A location id no registration has: 8 hex digits from the seeded
    /// generator, so that a stale id a client kept across our restart is
    /// unlikely to name another client's registration.
    fn fresh_id(&mut self) -> String {
        loop {
            let id = format!("{:08x}", self.rng.next_u32());
            if !self.entries.contains_key(&id) {
                return id;
            }
        }
    }

    fn update(
        &mut self,
        peer: &P,
        id: &str,
        request: &Packet,
        now: Instant,
    ) -> Result<Packet, (Option<String>, RegisterError)> {
        let Some(e) = self.entries.get(id) else {
            return Err((None, RegisterError::NotFound(id.to_owned())));
        };
        let named = |err| (Some(e.reg.endpoint.clone()), err);
        let q = query(request).map_err(named)?;
        // Not Update parameters (OMA TS Core 1.1 §6.2.2), but clients such
        // as lwm2m-node-lib repeat them: the same values are ignored, other
        // ones refused.
        let cannot = |p: &str| {
            named(RegisterError::BadParameter(
                p.into(),
                "cannot change in an Update",
            ))
        };
        if q.ep.as_ref().is_some_and(|ep| *ep != e.reg.endpoint) {
            return Err(cannot("ep"));
        }
        if q.lwm2m
            .as_ref()
            .is_some_and(|v| Version::parse(v) != Some(e.reg.version))
        {
            return Err(cannot("lwm2m"));
        }
        let lt = q.lt.as_deref().map(lifetime).transpose().map_err(named)?;
        let b = q.b.as_deref().map(binding).transpose().map_err(named)?;
        let links = payload_links(request, self.cfg.max_payload).map_err(named)?;
        // Checked: nothing below fails.
        let mut e = self.remove_expiry(id).expect("entry exists");
        let moved_from = (e.reg.peer != *peer).then(|| e.reg.peer.clone());
        if let Some(old) = &moved_from {
            if self.by_peer.get(old).is_some_and(|i| i == id) {
                self.by_peer.remove(old);
            }
            e.reg.peer = peer.clone();
        }
        if let Some(lt) = lt {
            e.reg.lifetime = lt;
        }
        if let Some((binding, queue)) = b {
            e.reg.binding = binding;
            e.reg.queue = queue || q.q;
        } else if q.q {
            e.reg.queue = true;
        }
        if let Some((objects, text)) = links {
            e.reg.objects = objects;
            e.reg.links = text;
        }
        let reg = e.reg.clone();
        let held = std::mem::take(&mut e.held);
        self.insert(reg.clone(), now, held);
        self.events
            .push_back(RegistryEvent::Updated { reg, moved_from });
        self.wake(id, now);
        Ok(respond(Code::CHANGED))
    }

    fn deregister(&mut self, id: &str) -> Result<Packet, (Option<String>, RegisterError)> {
        let e = self
            .remove(id)
            .ok_or_else(|| (None, RegisterError::NotFound(id.to_owned())))?;
        self.events.push_back(RegistryEvent::Deregistered {
            reg: e.reg,
            dropped: e.held.into(),
        });
        Ok(respond(DELETED))
    }

    /// Files `reg`, expiring `lifetime + grace` after `now`.
    fn insert(&mut self, reg: Registration<P>, now: Instant, held: VecDeque<T>) {
        let expires = now + reg.lifetime + self.cfg.grace;
        let awake_until = reg.queue.then_some(now + self.cfg.queue_window);
        self.insert_until(reg, expires, awake_until, held);
    }

    fn insert_until(
        &mut self,
        reg: Registration<P>,
        expires: Instant,
        awake_until: Option<Instant>,
        held: VecDeque<T>,
    ) {
        let id = reg.id.clone();
        self.expiries.insert((expires, id.clone()));
        self.by_endpoint.insert(reg.endpoint.clone(), id.clone());
        self.by_peer.insert(reg.peer.clone(), id.clone());
        self.entries.insert(
            id,
            Entry {
                reg,
                expires,
                awake_until,
                held,
            },
        );
    }

    /// Takes an entry out of the expiry index only (it is re-inserted).
    fn remove_expiry(&mut self, id: &str) -> Option<Entry<P, T>> {
        let e = self.entries.remove(id)?;
        self.expiries.remove(&(e.expires, id.to_owned()));
        Some(e)
    }

    /// Takes an entry out of every index.
    fn remove(&mut self, id: &str) -> Option<Entry<P, T>> {
        let e = self.remove_expiry(id)?;
        if self
            .by_endpoint
            .get(&e.reg.endpoint)
            .is_some_and(|i| i == id)
        {
            self.by_endpoint.remove(&e.reg.endpoint);
        }
        if self.by_peer.get(&e.reg.peer).is_some_and(|i| i == id) {
            self.by_peer.remove(&e.reg.peer);
        }
        Some(e)
    }

    /// Releases what was held for registration `id`, now that it listens.
    fn wake(&mut self, id: &str, _now: Instant) {
        let Some(e) = self.entries.get_mut(id) else {
            return;
        };
        let Some(until) = e.awake_until else {
            return;
        };
        if e.held.is_empty() {
            return;
        }
        self.events.push_back(RegistryEvent::Wake {
            endpoint: e.reg.endpoint.clone(),
            peer: e.reg.peer.clone(),
            until,
            items: e.held.drain(..).collect(),
        });
    }

    /// Something came from `peer`: a queue-mode client registered from
    /// there listens for another [`RegistryConfig::queue_window`]. Returns
    /// its endpoint and the new end of its window, if it is one.
    pub fn seen(&mut self, peer: &P, now: Instant) -> Option<(&str, Instant)> {
        let window = self.cfg.queue_window;
        let e = self
            .by_peer
            .get(peer)
            .and_then(|id| self.entries.get_mut(id))?;
        if !e.reg.queue {
            return None;
        }
        let until = now + window;
        e.awake_until = Some(until);
        Some((e.reg.endpoint.as_str(), until))
    }

    /// Where a request for `endpoint` goes at `now`: to its address, held
    /// until it wakes (queue mode), or nowhere.
    pub fn route(&mut self, endpoint: &str, item: T, now: Instant) -> Route<P, T> {
        let Some(e) = self
            .by_endpoint
            .get(endpoint)
            .and_then(|id| self.entries.get_mut(id))
        else {
            return Route::NotRegistered(item);
        };
        let listening = !e.reg.queue || e.awake_until.is_some_and(|t| now < t);
        if listening {
            return Route::Send {
                peer: e.reg.peer.clone(),
                item,
            };
        }
        if e.held.len() >= self.cfg.max_held {
            return Route::Full(item);
        }
        e.held.push_back(item);
        Route::Held
    }

    /// Gives back held requests of `endpoint` that `keep` rejects (a
    /// caller gave up on them); returns them.
    pub fn unhold(&mut self, endpoint: &str, mut keep: impl FnMut(&T) -> bool) -> Vec<T> {
        let Some(e) = self
            .by_endpoint
            .get(endpoint)
            .and_then(|id| self.entries.get_mut(id))
        else {
            return Vec::new();
        };
        let mut gone = Vec::new();
        let mut kept = VecDeque::new();
        for t in e.held.drain(..) {
            if keep(&t) {
                kept.push_back(t);
            } else {
                gone.push(t);
            }
        }
        e.held = kept;
        gone
    }

    /// Expires what is due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some((t, id)) = self.expiries.first().cloned() {
            if t > now {
                break;
            }
            if let Some(e) = self.remove(&id) {
                self.events.push_back(RegistryEvent::Expired {
                    reg: e.reg,
                    dropped: e.held.into(),
                });
            }
        }
    }

    /// When the next registration expires.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.expiries.first().map(|(t, _)| *t)
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<RegistryEvent<P, T>> {
        self.events.pop_front()
    }

    /// The registration of `endpoint`.
    pub fn get(&self, endpoint: &str) -> Option<&Registration<P>> {
        self.by_endpoint
            .get(endpoint)
            .and_then(|id| self.entries.get(id))
            .map(|e| &e.reg)
    }

    /// Time left before `endpoint`'s registration expires (grace included).
    pub fn expires_in(&self, endpoint: &str, now: Instant) -> Option<Duration> {
        let e = self.entries.get(self.by_endpoint.get(endpoint)?)?;
        Some(e.expires.saturating_duration_since(now))
    }

    /// Whether `endpoint` is registered and listening at `now`.
    pub fn listening(&self, endpoint: &str, now: Instant) -> bool {
        self.by_endpoint
            .get(endpoint)
            .and_then(|id| self.entries.get(id))
            .is_some_and(|e| !e.reg.queue || e.awake_until.is_some_and(|t| now < t))
    }

    /// Every registration.
    pub fn registrations(&self) -> impl Iterator<Item = &Registration<P>> {
        self.entries.values().map(|e| &e.reg)
    }

    /// Registrations at once.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Puts back a journaled registration with `remaining` time before it
    /// expires (from the journal's wall-clock times). A queue-mode client
    /// counts as asleep until it next talks. `reg.objects` is re-read
    /// from `reg.links`.
    pub fn restore(
        &mut self,
        mut reg: Registration<P>,
        remaining: Duration,
        now: Instant,
    ) -> Result<(), RestoreError> {
        if self.entries.contains_key(&reg.id) || self.by_endpoint.contains_key(&reg.endpoint) {
            return Err(RestoreError::Duplicate(reg.endpoint));
        }
        if self.entries.len() >= self.cfg.max_registrations {
            return Err(RestoreError::Full);
        }
        reg.objects = link::parse_objects(reg.links.as_bytes())
            .map_err(|e| RestoreError::Links(reg.endpoint.clone(), e))?;
        self.insert_until(reg, now + remaining, None, VecDeque::new());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use coap_lite::MessageType;

    type Reg = Registry<u16, &'static str>;

    fn t(s: u64) -> Instant {
        Instant::from_millis(s * 1000)
    }

    fn req(method: Code, path: &[&str], query: &[&str], payload: &str) -> Packet {
        let mut p = msg::request(method, path);
        p.header.set_type(MessageType::Confirmable);
        for q in query {
            p.add_option(CoapOption::UriQuery, q.as_bytes().to_vec());
        }
        if !payload.is_empty() {
            msg::set_uint(&mut p, CoapOption::ContentFormat, LINK_FORMAT);
        }
        p.payload = payload.as_bytes().to_vec();
        p
    }

    fn register(r: &mut Reg, peer: u16, query: &[&str], now: Instant) -> Packet {
        r.handle_request(
            peer,
            &req(Code::POST, &["rd"], query, "</1/0>,</3/0>,</5/0>"),
            now,
        )
    }

    fn location(p: &Packet) -> Vec<String> {
        p.get_option(CoapOption::LocationPath)
            .map(|l| {
                l.iter()
                    .map(|s| String::from_utf8(s.clone()).unwrap())
                    .collect()
            })
            .unwrap_or_default()
    }

    fn events(r: &mut Reg) -> Vec<RegistryEvent<u16, &'static str>> {
        std::iter::from_fn(|| r.poll_event()).collect()
    }

    #[test]
    fn register_update_deregister_lwm2m_1_1() {
        let mut r = Reg::new(RegistryConfig::default());
        let resp = register(
            &mut r,
            7,
            &["ep=node01", "lt=300", "lwm2m=1.1", "b=U"],
            t(0),
        );
        assert_eq!(msg::code(&resp), Code::CREATED);
        let loc = location(&resp);
        assert_eq!(loc[0], "rd");
        assert_eq!(loc.len(), 2);
        let reg = r.get("node01").unwrap().clone();
        assert_eq!(
            (reg.peer, reg.lifetime, reg.version, reg.queue),
            (7, Duration::from_secs(300), Version::V1_1, false)
        );
        assert!(reg.objects.has(5, 0));
        assert_eq!(reg.links, "</1/0>,</3/0>,</5/0>");
        assert_eq!(
            events(&mut r),
            vec![RegistryEvent::Registered {
                reg: reg.clone(),
                replaced: None
            }]
        );
        assert_eq!(r.poll_timeout(), Some(t(315)));
        // Update without parameters, from a new port: the address moves.
        let resp = r.handle_request(9, &req(Code::POST, &["rd", &loc[1]], &[], ""), t(200));
        assert_eq!(msg::code(&resp), Code::CHANGED);
        assert_eq!(r.get("node01").unwrap().peer, 9);
        assert_eq!(r.poll_timeout(), Some(t(515)));
        match &events(&mut r)[..] {
            [RegistryEvent::Updated {
                reg,
                moved_from: Some(7),
            }] => assert_eq!(reg.peer, 9),
            e => panic!("{e:?}"),
        }
        assert_eq!(
            r.route("node01", "read", t(201)),
            Route::Send {
                peer: 9,
                item: "read"
            }
        );
        // Update with parameters and new links.
        let resp = r.handle_request(
            9,
            &req(
                Code::POST,
                &["rd", &loc[1]],
                &["lt=60", "lwm2m=1.1", "ep=node01", "b=U"],
                "</3/0>",
            ),
            t(210),
        );
        assert_eq!(msg::code(&resp), Code::CHANGED);
        let reg = r.get("node01").unwrap();
        assert_eq!(reg.lifetime, Duration::from_secs(60));
        assert!(!reg.objects.has(5, 0));
        events(&mut r);
        let resp = r.handle_request(9, &req(Code(0x04), &["rd", &loc[1]], &[], ""), t(220));
        assert_eq!(msg::code(&resp), DELETED);
        assert!(matches!(
            &events(&mut r)[..],
            [RegistryEvent::Deregistered { .. }]
        ));
        assert!(r.is_empty());
        assert_eq!(r.poll_timeout(), None);
        // The location is gone.
        let resp = r.handle_request(9, &req(Code::POST, &["rd", &loc[1]], &[], ""), t(230));
        assert_eq!(msg::code(&resp), Code::NOT_FOUND);
        assert_eq!(
            r.route("node01", "read", t(231)),
            Route::NotRegistered("read")
        );
    }

    #[test]
    fn lwm2m_1_0_defaults_and_reregistration_replaces() {
        let mut r = Reg::new(RegistryConfig::default());
        let a = location(&register(&mut r, 1, &["ep=n"], t(0)));
        let reg = r.get("n").unwrap();
        assert_eq!(
            (reg.version, reg.binding.as_str(), reg.lifetime),
            (Version::V1_0, "U", Duration::from_secs(86_400))
        );
        events(&mut r);
        let b = location(&register(&mut r, 2, &["ep=n", "lt=60"], t(5)));
        assert_ne!(a, b);
        assert_eq!(r.len(), 1);
        match &events(&mut r)[..] {
            [RegistryEvent::Registered {
                reg,
                replaced: Some(1),
            }] => assert_eq!(reg.peer, 2),
            e => panic!("{e:?}"),
        }
        // The old location answers 4.04 and changes nothing.
        let resp = r.handle_request(1, &req(Code::POST, &["rd", &a[1]], &[], ""), t(6));
        assert_eq!(msg::code(&resp), Code::NOT_FOUND);
        assert_eq!(r.get("n").unwrap().peer, 2);
        assert_eq!(r.poll_timeout(), Some(t(80)));
    }

    #[test]
    fn bad_requests_get_specific_errors_and_store_nothing() {
        let cases: &[(&[&str], &str, RegisterError)] = &[
            (&["lt=60"], "</1/0>", RegisterError::MissingEndpoint),
            (
                &["ep="],
                "</1/0>",
                RegisterError::BadEndpoint(String::new()),
            ),
            (
                &["ep=a", "lt=0"],
                "</1/0>",
                RegisterError::BadLifetime("0".into()),
            ),
            (
                &["ep=a", "lt=-5"],
                "</1/0>",
                RegisterError::BadLifetime("-5".into()),
            ),
            (
                &["ep=a", "lt=99999999999"],
                "</1/0>",
                RegisterError::BadLifetime("99999999999".into()),
            ),
            (
                &["ep=a", "lwm2m=one"],
                "</1/0>",
                RegisterError::BadVersion("one".into()),
            ),
            (
                &["ep=a", "lwm2m=2.0"],
                "</1/0>",
                RegisterError::UnsupportedVersion(Version { major: 2, minor: 0 }),
            ),
            (
                &["ep=a", "b=S"],
                "</1/0>",
                RegisterError::BadBinding("S".into()),
            ),
            (
                &["ep=a", "b=X"],
                "</1/0>",
                RegisterError::BadBinding("X".into()),
            ),
            (
                &["ep=a", "ep=b"],
                "</1/0>",
                RegisterError::BadParameter("ep".into(), "is given twice"),
            ),
            (&["ep=a"], "", RegisterError::NoObjects),
            (
                &["ep=a"],
                "</1/0",
                RegisterError::Links(LinkError::Syntax {
                    offset: 0,
                    expected: "'<' URI '>'",
                }),
            ),
            (
                &["ep=a"],
                "</x>",
                RegisterError::Links(LinkError::NotAnObject("/x".into())),
            ),
        ];
        for (query, payload, want) in cases {
            let mut r = Reg::new(RegistryConfig::default());
            let resp = r.handle_request(1, &req(Code::POST, &["rd"], query, payload), t(0));
            assert_eq!(msg::code(&resp), want.code(), "{query:?}");
            assert_eq!(String::from_utf8(resp.payload).unwrap(), want.to_string());
            assert!(r.is_empty());
            match &events(&mut r)[..] {
                [RegistryEvent::Refused { peer: 1, error, .. }] => assert_eq!(error, want),
                e => panic!("{e:?}"),
            }
        }
        let mut r = Reg::new(RegistryConfig {
            max_payload: 16,
            ..RegistryConfig::default()
        });
        let big = "</1/0>,</3/0>,</5/0>";
        let resp = r.handle_request(1, &req(Code::POST, &["rd"], &["ep=a"], big), t(0));
        assert_eq!(msg::code(&resp), Code::REQUEST_ENTITY_TOO_LARGE);
        let mut p = req(Code::POST, &["rd"], &["ep=a"], "</1/0>");
        msg::set_uint(&mut p, CoapOption::ContentFormat, 0);
        assert_eq!(
            msg::code(&r.handle_request(1, &p, t(0))),
            UNSUPPORTED_CONTENT_FORMAT
        );
        assert_eq!(
            msg::code(&r.handle_request(1, &req(Code::GET, &["rd"], &[], ""), t(0))),
            Code::METHOD_NOT_ALLOWED
        );
        assert_eq!(
            msg::code(&r.handle_request(1, &req(Code::POST, &["rd", "a", "b"], &[], ""), t(0))),
            Code::NOT_FOUND
        );
        assert!(r.is_empty());
    }

    #[test]
    fn a_bad_update_changes_nothing() {
        let mut r = Reg::new(RegistryConfig::default());
        let loc = location(&register(&mut r, 1, &["ep=n", "lt=60"], t(0)));
        let before = r.get("n").unwrap().clone();
        for (q, payload, code) in [
            (&["lt=x"][..], "", Code::BAD_REQUEST),
            (&["ep=other"][..], "", Code::BAD_REQUEST),
            (&["lwm2m=1.1"][..], "", Code::BAD_REQUEST),
            (&["b=S"][..], "", Code::BAD_REQUEST),
            (&[][..], "</nope>", Code::BAD_REQUEST),
        ] {
            let resp = r.handle_request(2, &req(Code::POST, &["rd", &loc[1]], q, payload), t(10));
            assert_eq!(msg::code(&resp), code, "{q:?}");
        }
        assert_eq!(r.get("n").unwrap(), &before);
        assert_eq!(r.poll_timeout(), Some(t(75)));
    }

    #[test]
    fn unknown_endpoints_are_forbidden_and_the_registry_is_bounded() {
        let mut r = Reg::new(RegistryConfig {
            max_registrations: 2,
            ..RegistryConfig::default()
        });
        r.allow_only(["a".to_string(), "b".to_string(), "c".to_string()]);
        let resp = register(&mut r, 1, &["ep=stranger"], t(0));
        assert_eq!(msg::code(&resp), FORBIDDEN);
        assert_eq!(
            String::from_utf8(resp.payload).unwrap(),
            "endpoint 'stranger' is not configured on this gateway"
        );
        assert_eq!(
            msg::code(&register(&mut r, 1, &["ep=a"], t(0))),
            Code::CREATED
        );
        assert_eq!(
            msg::code(&register(&mut r, 2, &["ep=b"], t(0))),
            Code::CREATED
        );
        assert_eq!(
            msg::code(&register(&mut r, 3, &["ep=c"], t(0))),
            SERVICE_UNAVAILABLE
        );
        // A known endpoint may register again when full.
        assert_eq!(
            msg::code(&register(&mut r, 4, &["ep=b"], t(1))),
            Code::CREATED
        );
        assert_eq!(r.len(), 2);
    }

    #[test]
    fn onboarding_admits_unknown_endpoints_until_denied() {
        let mut r = Reg::new(RegistryConfig::default());
        r.allow_only(["a".to_string()]);
        r.admit_unknown(true);
        let loc = location(&register(&mut r, 1, &["ep=new"], t(0)));
        assert_eq!(loc.len(), 2, "2.01 with a location");
        assert!(!r.is_allowed("new") && r.is_allowed("a"));
        assert!(matches!(
            &events(&mut r)[..],
            [RegistryEvent::Registered { .. }]
        ));
        // Refused by the platform: the registration ends, as a De-register.
        r.deny("new");
        assert!(
            matches!(&events(&mut r)[..], [RegistryEvent::Deregistered { reg, .. }] if reg.endpoint == "new")
        );
        assert!(r.get("new").is_none());
        let up = r.handle_request(1, &req(Code::POST, &["rd", &loc[1]], &[], ""), t(1));
        assert_eq!(msg::code(&up), Code::NOT_FOUND);
        assert_eq!(
            msg::code(&register(&mut r, 1, &["ep=new"], t(2))),
            FORBIDDEN
        );
        // A configured endpoint that is denied (deleted) is refused too,
        // and allowed again by `allow`.
        r.deny("a");
        assert_eq!(msg::code(&register(&mut r, 2, &["ep=a"], t(3))), FORBIDDEN);
        r.allow("a".into());
        assert!(r.is_allowed("a"));
        assert_eq!(
            msg::code(&register(&mut r, 2, &["ep=a"], t(4))),
            Code::CREATED
        );
        // Without admit_unknown, an unknown endpoint is refused as before.
        r.admit_unknown(false);
        assert_eq!(
            msg::code(&register(&mut r, 3, &["ep=other"], t(5))),
            FORBIDDEN
        );
    }

    #[test]
    fn lifetime_expiry() {
        let mut r = Reg::new(RegistryConfig {
            grace: Duration::from_secs(5),
            ..RegistryConfig::default()
        });
        let loc = location(&register(&mut r, 1, &["ep=n", "lt=30"], t(0)));
        events(&mut r);
        r.handle_timeout(t(34));
        assert!(events(&mut r).is_empty());
        r.handle_request(1, &req(Code::POST, &["rd", &loc[1]], &[], ""), t(20));
        events(&mut r);
        r.handle_timeout(t(54));
        assert!(events(&mut r).is_empty());
        r.handle_timeout(t(55));
        assert!(
            matches!(&events(&mut r)[..], [RegistryEvent::Expired { reg, .. }] if reg.endpoint == "n")
        );
        assert!(r.is_empty());
        let resp = r.handle_request(1, &req(Code::POST, &["rd", &loc[1]], &[], ""), t(56));
        assert_eq!(msg::code(&resp), Code::NOT_FOUND);
    }

    #[test]
    fn queue_mode_holds_requests_until_the_client_wakes() {
        let cfg = RegistryConfig {
            queue_window: Duration::from_secs(10),
            max_held: 2,
            ..RegistryConfig::default()
        };
        for (query, lwm2m) in [
            (&["ep=q", "b=UQ"][..], "1.0"),
            (&["ep=q", "lwm2m=1.1", "Q"][..], "1.1"),
        ] {
            let mut r = Reg::new(cfg.clone());
            let loc = location(&register(&mut r, 1, query, t(0)));
            assert!(r.get("q").unwrap().queue, "{lwm2m}");
            events(&mut r);
            assert_eq!(r.route("q", "a", t(5)), Route::Send { peer: 1, item: "a" });
            // Its response keeps it awake.
            assert_eq!(r.seen(&1, t(8)), Some(("q", t(18))));
            assert_eq!(r.seen(&5, t(8)), None);
            assert_eq!(r.route("q", "b", t(17)), Route::Send { peer: 1, item: "b" });
            assert!(!r.listening("q", t(18)));
            assert_eq!(r.route("q", "c", t(18)), Route::Held);
            assert_eq!(r.route("q", "d", t(19)), Route::Held);
            assert_eq!(r.route("q", "e", t(19)), Route::Full("e"));
            // Update from a new address: the held requests go there.
            r.handle_request(2, &req(Code::POST, &["rd", &loc[1]], &[], ""), t(100));
            match &events(&mut r)[..] {
                [RegistryEvent::Updated { .. }, RegistryEvent::Wake {
                    endpoint,
                    peer: 2,
                    until,
                    items,
                }] => {
                    assert_eq!(endpoint, "q");
                    assert_eq!(*until, t(110));
                    assert_eq!(items, &vec!["c", "d"]);
                }
                e => panic!("{e:?}"),
            }
            assert_eq!(
                r.route("q", "f", t(101)),
                Route::Send { peer: 2, item: "f" }
            );
        }
    }

    #[test]
    fn held_requests_are_dropped_with_the_registration() {
        let cfg = RegistryConfig {
            queue_window: Duration::from_secs(1),
            ..RegistryConfig::default()
        };
        let mut r = Reg::new(cfg);
        register(&mut r, 1, &["ep=q", "b=UQ", "lt=10"], t(0));
        events(&mut r);
        assert_eq!(r.route("q", "a", t(2)), Route::Held);
        assert_eq!(r.route("q", "b", t(2)), Route::Held);
        assert_eq!(r.unhold("q", |x| *x != "a"), vec!["a"]);
        r.handle_timeout(t(100));
        match &events(&mut r)[..] {
            [RegistryEvent::Expired { dropped, .. }] => assert_eq!(dropped, &vec!["b"]),
            e => panic!("{e:?}"),
        }
    }

    #[test]
    fn restore_puts_journaled_registrations_back() {
        let mut r = Reg::new(RegistryConfig::default());
        let loc = location(&register(&mut r, 1, &["ep=n", "lt=100", "b=UQ"], t(0)));
        let reg = r.get("n").unwrap().clone();
        let mut again = Reg::new(RegistryConfig {
            seed: 1,
            ..RegistryConfig::default()
        });
        again
            .restore(reg.clone(), Duration::from_secs(40), t(0))
            .unwrap();
        assert_eq!(
            again.restore(reg.clone(), Duration::from_secs(40), t(0)),
            Err(RestoreError::Duplicate("n".into()))
        );
        assert_eq!(again.get("n"), Some(&reg));
        assert_eq!(again.poll_timeout(), Some(t(40)));
        // Asleep until it talks.
        assert_eq!(again.route("n", "x", t(1)), Route::Held);
        let resp = again.handle_request(3, &req(Code::POST, &["rd", &loc[1]], &[], ""), t(2));
        assert_eq!(msg::code(&resp), Code::CHANGED);
        assert!(events(&mut again)
            .iter()
            .any(|e| matches!(e, RegistryEvent::Wake { peer: 3, .. })));
        let mut bad = reg;
        bad.links = "<".into();
        bad.endpoint = "m".into();
        bad.id = "other".into();
        assert!(matches!(
            again.restore(bad, Duration::from_secs(1), t(0)),
            Err(RestoreError::Links(..))
        ));
    }

    #[test]
    fn arbitrary_requests_never_panic_and_stay_bounded() {
        use proptest::prelude::*;
        let mut runner = proptest::test_runner::TestRunner::new_with_rng(
            ProptestConfig {
                cases: 256,
                ..ProptestConfig::default()
            },
            proptest::test_runner::TestRng::from_seed(
                proptest::test_runner::RngAlgorithm::ChaCha,
                &[7; 32],
            ),
        );
        let query = proptest::collection::vec("(ep|lt|lwm2m|b|Q|sms|x)(=[a-z0-9.]{0,4})?", 0..5);
        let path = proptest::collection::vec("rd|[a-f0-9]{1,8}", 0..3);
        let payload = "[<>/0-9,;a-z=\"]{0,40}";
        let method = 0u8..6;
        runner
            .run(
                &proptest::collection::vec((method, path, query, payload), 1..20),
                |reqs| {
                    let mut r = Reg::new(RegistryConfig {
                        max_registrations: 3,
                        ..RegistryConfig::default()
                    });
                    for (n, (m, path, query, payload)) in reqs.into_iter().enumerate() {
                        let path: Vec<&str> = path.iter().map(String::as_str).collect();
                        let query: Vec<&str> = query.iter().map(String::as_str).collect();
                        let resp = r.handle_request(
                            n as u16 % 4,
                            &req(Code(m), &path, &query, &payload),
                            t(n as u64),
                        );
                        prop_assert!(msg::code(&resp).is_response());
                        prop_assert!(r.len() <= 3);
                        r.handle_timeout(t(n as u64));
                        while r.poll_event().is_some() {}
                    }
                    Ok(())
                },
            )
            .unwrap();
    }
}
