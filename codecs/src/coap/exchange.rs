//! The confirmable-exchange engine: CoAP's message layer, sans-IO.
//!
//! One [`Exchanges`] serves one UDP socket: it is the client for requests the
//! gateway sends (to many peers) and the server's message layer for requests
//! peers send to it. It owns message ids, tokens, retransmission and
//! deduplication, nothing above that (block-wise transfers live in
//! [`super::push`] and [`super::serve`]).
//!
//! # Call order
//! A driver loops:
//! 1. [`Exchanges::start_request`] / [`Exchanges::respond`] for what the
//!    upper layers want to send;
//! 2. [`Exchanges::handle_datagram`] for every datagram read from the socket,
//!    [`Exchanges::handle_timeout`] when the instant from
//!    [`Exchanges::poll_timeout`] has passed;
//! 3. drains [`Exchanges::poll_transmit`] into the socket and
//!    [`Exchanges::poll_event`] into the upper layers, then re-arms its timer
//!    with [`Exchanges::poll_timeout`].
//!
//! Time only enters through the `now` arguments, randomness through the
//! seed in [`ExchangeConfig`].
//!
//! NSTART (RFC 7252 §4.7, default 1: one outstanding interaction per peer)
//! is kept by the layer above, [`super::Peers`], which drivers use instead
//! of this engine directly.

use std::collections::{HashMap, VecDeque};
use std::fmt::Debug;
use std::hash::Hash;
use std::time::Duration;

use coap_lite::{MessageType, Packet};

use super::msg::{self, Code, DecodeError, EncodeError};
use crate::rng::Rng;
use crate::time::Instant;

/// Message-layer parameters. Defaults are RFC 7252 §4.8's.
#[derive(Debug, Clone)]
pub struct ExchangeConfig {
    /// ACK_TIMEOUT: the base of the first retransmission timeout (RFC 7252
    /// §4.8, default 2 s).
    pub ack_timeout: Duration,
    /// ACK_RANDOM_FACTOR: the first timeout is uniform in
    /// `[ack_timeout, ack_timeout * factor]` (RFC 7252 §4.2, default 1.5).
    pub ack_random_factor: f64,
    /// MAX_RETRANSMIT: retransmissions before giving up (RFC 7252 §4.8,
    /// default 4, so 5 transmissions in all).
    pub max_retransmit: u32,
    /// EXCHANGE_LIFETIME: how long a CON's message id is remembered for
    /// deduplication (RFC 7252 §4.8.2, default 247 s).
    pub exchange_lifetime: Duration,
    /// NON_LIFETIME: the same for NON messages (RFC 7252 §4.8.2, 145 s).
    pub non_lifetime: Duration,
    /// How long to wait for a separate response after its empty ACK. RFC
    /// 7252 §5.2.2 sets no bound; the default is EXCHANGE_LIFETIME so the
    /// wait is bounded like everything else.
    pub response_timeout: Duration,
    /// Token length in bytes, 0..=8 (RFC 7252 §3). Default 4.
    pub token_len: u8,
    /// The most (peer, message id) pairs remembered; the oldest is forgotten
    /// first. Bounds memory whatever the peers send.
    pub max_dedup_entries: usize,
    /// The largest datagram emitted (default 1280, RFC 7252 §4.6).
    pub max_message_size: usize,
    /// Seed of the generator for message ids, tokens and jitter.
    pub seed: u64,
    /// First message id; `None` draws it from the seed (RFC 7252 §4.4
    /// recommends a randomized start).
    pub first_message_id: Option<u16>,
    /// Sequential tokens from this value (big-endian, `token_len` bytes)
    /// instead of random ones. For fixtures: RFC 7252 §5.3.1 recommends
    /// random tokens on exposed networks.
    pub first_token: Option<u64>,
}

impl Default for ExchangeConfig {
    fn default() -> Self {
        ExchangeConfig {
            ack_timeout: Duration::from_secs(2),
            ack_random_factor: 1.5,
            max_retransmit: 4,
            exchange_lifetime: Duration::from_secs(247),
            non_lifetime: Duration::from_secs(145),
            response_timeout: Duration::from_secs(247),
            token_len: 4,
            max_dedup_entries: 1024,
            max_message_size: msg::DEFAULT_MAX_MESSAGE,
            seed: 0,
            first_message_id: None,
            first_token: None,
        }
    }
}

/// An [`ExchangeConfig`] that cannot work.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    /// Tokens are 0 to 8 bytes (RFC 7252 §3).
    #[error("token_len {0} is more than 8")]
    TokenLen(u8),
    /// ACK_RANDOM_FACTOR must be at least 1 (RFC 7252 §4.8).
    #[error("ack_random_factor {0} is below 1")]
    RandomFactor(f64),
    /// A zero ACK_TIMEOUT would retransmit in a busy loop.
    #[error("ack_timeout is zero")]
    ZeroAckTimeout,
    /// Deduplication needs room for at least one entry.
    #[error("max_dedup_entries is zero")]
    ZeroDedup,
}

/// Peers whose message id sequence is remembered (see `alloc_mid`).
const MAX_MID_PEERS: usize = 65_536;

/// Observation tokens kept at once ([`Exchanges::keep_token`]): bounds
/// memory whatever the peers and users do.
pub const MAX_OBSERVATIONS: usize = 4096;

/// Identifies a request started with [`Exchanges::start_request`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(pub u64);

/// A datagram for the driver to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit<P> {
    /// Where to send it.
    pub peer: P,
    /// The datagram.
    pub bytes: Vec<u8>,
    /// A retransmission of a CON request of ours after its timeout
    /// (RFC 7252 §4.2), not a first transmission or an answer: drivers
    /// count these per peer (the `chunk_retries` metric).
    pub retransmission: bool,
}

/// A request a peer sent us, to be answered with [`Exchanges::respond`].
#[derive(Debug, Clone, PartialEq)]
pub struct IncomingRequest<P> {
    /// Who sent it.
    pub peer: P,
    /// The request as received (type, message id and token included).
    pub packet: Packet,
}

/// What the exchange engine reports to the layer above.
#[derive(Debug, Clone, PartialEq)]
pub enum ExchangeEvent<P> {
    /// The response to one of our requests, piggybacked or separate
    /// (RFC 7252 §5.2).
    Response {
        /// The request it answers.
        id: RequestId,
        /// The peer that answered.
        peer: P,
        /// The response.
        response: Packet,
    },
    /// A new (not duplicate) request from a peer.
    Request(IncomingRequest<P>),
    /// No ACK after MAX_RETRANSMIT retransmissions (RFC 7252 §4.2).
    GaveUp {
        /// The request abandoned.
        id: RequestId,
        /// The silent peer.
        peer: P,
    },
    /// ACKed empty, but the separate response never came.
    TimedOut {
        /// The request abandoned.
        id: RequestId,
        /// The peer.
        peer: P,
    },
    /// The peer answered our CON with RST (RFC 7252 §4.2).
    Reset {
        /// The request rejected.
        id: RequestId,
        /// The peer.
        peer: P,
    },
    /// A notification of an observation whose token request `id` left
    /// behind ([`Exchanges::keep_token`]; RFC 7641 §3.2): already ACKed
    /// when confirmable, reported once however often it is retransmitted.
    Notification {
        /// The request that registered the observation.
        id: RequestId,
        /// The peer.
        peer: P,
        /// The notification.
        response: Packet,
    },
}

/// Why [`Exchanges::start_request`] refused a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// The packet's code is not a method (RFC 7252 §12.1.1).
    #[error("code {0} is not a request method")]
    NotARequest(Code),
    /// The request does not fit in a datagram.
    #[error(transparent)]
    Encode(#[from] EncodeError),
}

/// Why [`Exchanges::respond`] refused a response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RespondError {
    /// The packet's code is not a response code (RFC 7252 §12.1.2).
    #[error("code {0} is not a response code")]
    NotAResponse(Code),
    /// The response does not fit in a datagram.
    #[error(transparent)]
    Encode(#[from] EncodeError),
}

/// A datagram [`Exchanges::handle_datagram`] could not use. Nothing is lost:
/// the engine answered a rejectable CON with RST already.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandleError {
    /// Not a well-formed CoAP message.
    #[error(transparent)]
    Decode(#[from] DecodeError),
}

#[derive(Debug)]
struct Outstanding<P> {
    id: RequestId,
    peer: P,
    mid: u16,
    token: Vec<u8>,
    bytes: Vec<u8>,
    /// An empty ACK came: wait for the separate response, no retransmission.
    acked: bool,
    transmissions: u32,
    timeout: Duration,
    deadline: Instant,
}

/// Which lifetime a remembered message id has: EXCHANGE_LIFETIME for a CON,
/// NON_LIFETIME for a NON (RFC 7252 §4.8.2). Each has its own queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lifetime {
    Con = 0,
    Non = 1,
}

#[derive(Debug)]
struct Seen {
    inserted: Instant,
    lifetime: Lifetime,
    /// What we answered, sent again for every duplicate (RFC 7252 §4.5).
    reply: Option<Vec<u8>>,
}

/// The message layer of one CoAP endpoint (see the module doc for the call
/// order). `P` is the peer address type, `SocketAddr` in the daemon.
#[derive(Debug)]
pub struct Exchanges<P> {
    config: ExchangeConfig,
    rng: Rng,
    /// Where every peer's message id sequence starts.
    next_mid: u16,
    /// The next message id per peer: RFC 7252 §4.4 forbids reusing an id
    /// with the same endpoint within EXCHANGE_LIFETIME, and one counter
    /// shared by hundreds of children wraps within that time.
    mids: HashMap<P, u16>,
    next_token: Option<u64>,
    next_id: u64,
    outstanding: Vec<Outstanding<P>>,
    seen: HashMap<(P, u16), Seen>,
    /// The keys of `seen` in arrival order, one queue per [`Lifetime`]. One
    /// lifetime per queue makes each queue's expiry times non-decreasing, so
    /// expiring pops fronts instead of scanning the whole table on every
    /// datagram (that scan was a third of a 100-child pull fan-out's
    /// instructions).
    seen_order: [VecDeque<(Instant, (P, u16))>; 2],
    /// Tokens of established observations (RFC 7641 §3.2), to the request
    /// that registered them.
    observed: HashMap<(P, Vec<u8>), RequestId>,
    transmits: VecDeque<Transmit<P>>,
    events: VecDeque<ExchangeEvent<P>>,
}

impl<P: Clone + Eq + Hash + Debug> Exchanges<P> {
    /// An engine with no exchange in progress.
    pub fn new(config: ExchangeConfig) -> Result<Self, ConfigError> {
        if config.token_len > 8 {
            return Err(ConfigError::TokenLen(config.token_len));
        }
        if config.ack_random_factor.is_nan() || config.ack_random_factor < 1.0 {
            return Err(ConfigError::RandomFactor(config.ack_random_factor));
        }
        if config.ack_timeout.is_zero() {
            return Err(ConfigError::ZeroAckTimeout);
        }
        if config.max_dedup_entries == 0 {
            return Err(ConfigError::ZeroDedup);
        }
        let mut rng = Rng::new(config.seed);
        let next_mid = match config.first_message_id {
            Some(m) => m,
            None => rng.next_u32() as u16,
        };
        Ok(Exchanges {
            next_token: config.first_token,
            config,
            rng,
            next_mid,
            mids: HashMap::new(),
            next_id: 0,
            outstanding: Vec::new(),
            seen: HashMap::new(),
            seen_order: [VecDeque::new(), VecDeque::new()],
            observed: HashMap::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
        })
    }

    /// Sends `request` as a CON with a fresh message id and token, and keeps
    /// retransmitting it until it is answered (RFC 7252 §4.2).
    pub fn start_request(
        &mut self,
        peer: P,
        mut request: Packet,
        now: Instant,
    ) -> Result<RequestId, RequestError> {
        let c = msg::code(&request);
        if !c.is_request() {
            return Err(RequestError::NotARequest(c));
        }
        let mid = self.alloc_mid(&peer);
        let token = self.alloc_token(&peer);
        request.header.set_type(MessageType::Confirmable);
        request.header.message_id = mid;
        request.set_token(token.clone());
        let bytes = msg::encode(&request, self.config.max_message_size)?;
        let id = RequestId(self.next_id);
        self.next_id += 1;
        let timeout = self.initial_timeout();
        self.transmits.push_back(Transmit {
            peer: peer.clone(),
            bytes: bytes.clone(),
            retransmission: false,
        });
        self.outstanding.push(Outstanding {
            id,
            peer,
            mid,
            token,
            bytes,
            acked: false,
            transmissions: 1,
            timeout,
            deadline: now + timeout,
        });
        Ok(id)
    }

    /// Peer `from` is now reached at `to` (the same device at a new
    /// address: an LwM2M client's Update after a NAT rebinding). Message
    /// ids to `to` continue `from`'s sequence: the device deduplicates by
    /// our address and the message id (RFC 7252 §4.5), so starting `to`
    /// afresh would repeat ids it has just seen from us, and it would
    /// answer a new request with the reply to an old one.
    pub fn peer_moved(&mut self, from: &P, to: P) {
        if let Some(m) = self.mids.get(from).copied() {
            self.mids.insert(to.clone(), m);
        }
        // Its observations notify from the new address (the server's
        // endpoint moved, the observation did not: RFC 7641 §3.2 matches
        // by token and endpoint).
        let moved: Vec<_> = self
            .observed
            .keys()
            .filter(|(p, _)| p == from)
            .cloned()
            .collect();
        for key in moved {
            if let Some(id) = self.observed.remove(&key) {
                self.observed.insert((to.clone(), key.1), id);
            }
        }
    }

    /// Keeps `token` of request `id` (answered by `peer`) after its
    /// response: the peer accepted an observation (RFC 7641 §3.1), and its
    /// notifications come out as [`ExchangeEvent::Notification`] until
    /// [`Exchanges::forget_token`]. `false` when [`MAX_OBSERVATIONS`] are
    /// kept already (the caller polls instead).
    pub fn keep_token(&mut self, peer: P, token: Vec<u8>, id: RequestId) -> bool {
        let key = (peer, token);
        if self.observed.len() >= MAX_OBSERVATIONS && !self.observed.contains_key(&key) {
            return false;
        }
        self.observed.insert(key, id);
        true
    }

    /// Forgets the observation request `id` registered: its next
    /// notification is rejected with RST, which cancels it at the server
    /// (RFC 7641 §3.6).
    pub fn forget_token(&mut self, id: RequestId) {
        self.observed.retain(|_, v| *v != id);
    }

    /// Observations kept ([`Exchanges::keep_token`]).
    pub fn observations(&self) -> usize {
        self.observed.len()
    }

    /// A fresh message id for `peer`, from the same per-peer sequence as
    /// requests (RFC 7252 §4.4): for a message the caller builds itself,
    /// such as a server's notification (RFC 7641 §4.2; the simulators).
    pub fn next_message_id(&mut self, peer: &P) -> u16 {
        self.alloc_mid(peer)
    }

    /// Sends request `id` to `to` instead of its peer (the peer moved: an
    /// LwM2M client's Update from a new address, issue 13). It keeps its
    /// id, gets a message id and token of the new peer, goes out at once
    /// and retransmits from a fresh count. `false`: no such request.
    pub fn redirect(&mut self, id: RequestId, to: P, now: Instant) -> bool {
        let Some(i) = self.outstanding.iter().position(|o| o.id == id) else {
            return false;
        };
        let Ok(mut packet) = msg::decode(&self.outstanding[i].bytes) else {
            return false;
        };
        let mid = self.alloc_mid(&to);
        let token = self.alloc_token(&to);
        packet.header.message_id = mid;
        packet.set_token(token.clone());
        let Ok(bytes) = msg::encode(&packet, self.config.max_message_size) else {
            return false;
        };
        let timeout = self.initial_timeout();
        let o = &mut self.outstanding[i];
        o.peer = to.clone();
        o.mid = mid;
        o.token = token;
        o.bytes = bytes.clone();
        o.acked = false;
        o.transmissions = 1;
        o.timeout = timeout;
        o.deadline = now + timeout;
        self.transmits.push_back(Transmit {
            peer: to,
            bytes,
            retransmission: false,
        });
        true
    }

    /// Forgets a request: no more retransmissions, no event for it.
    pub fn cancel(&mut self, id: RequestId) {
        self.outstanding.retain(|o| o.id != id);
    }

    /// The largest datagram this engine emits.
    pub fn max_message_size(&self) -> usize {
        self.config.max_message_size
    }

    /// Requests still waiting for their response.
    pub fn in_flight(&self) -> usize {
        self.outstanding.len()
    }

    /// Answers `request`: piggybacked in the ACK for a CON, as a NON for a
    /// NON (RFC 7252 §5.2.1, §5.2.3). The answer is remembered so that a
    /// duplicate of the request gets the same bytes (RFC 7252 §4.5).
    pub fn respond(
        &mut self,
        request: &IncomingRequest<P>,
        mut response: Packet,
        now: Instant,
    ) -> Result<(), RespondError> {
        let c = msg::code(&response);
        if !c.is_response() {
            return Err(RespondError::NotAResponse(c));
        }
        let confirmable = msg::mtype(&request.packet) == MessageType::Confirmable;
        if confirmable {
            response.header.set_type(MessageType::Acknowledgement);
            response.header.message_id = request.packet.header.message_id;
        } else {
            response.header.set_type(MessageType::NonConfirmable);
            response.header.message_id = self.alloc_mid(&request.peer);
        }
        response.set_token(request.packet.get_token().to_vec());
        let bytes = msg::encode(&response, self.config.max_message_size)?;
        if confirmable {
            let key = (request.peer.clone(), request.packet.header.message_id);
            self.remember(key, now, Lifetime::Con, Some(bytes.clone()));
        }
        self.transmits.push_back(Transmit {
            peer: request.peer.clone(),
            bytes,
            retransmission: false,
        });
        Ok(())
    }

    /// Takes one datagram from `peer`.
    pub fn handle_datagram(
        &mut self,
        peer: P,
        bytes: &[u8],
        now: Instant,
    ) -> Result<(), HandleError> {
        self.expire(now);
        let packet = match msg::decode(bytes) {
            Ok(p) => p,
            Err(e) => {
                // RFC 7252 §4.2: a CON that cannot be processed is rejected
                // with a RST carrying its message id; others are ignored.
                if bytes.len() >= 4 && bytes[0] >> 6 == 1 && (bytes[0] >> 4) & 3 == 0 {
                    let mid = u16::from_be_bytes([bytes[2], bytes[3]]);
                    self.transmits.push_back(Transmit {
                        peer,
                        bytes: empty(MessageType::Reset, mid),
                        retransmission: false,
                    });
                }
                return Err(e.into());
            }
        };
        let mid = packet.header.message_id;
        let c = msg::code(&packet);
        match msg::mtype(&packet) {
            MessageType::Acknowledgement => self.on_ack(peer, packet, now),
            MessageType::Reset => {
                // RFC 7252 §4.2: a RST matches the CON with its message id.
                if let Some(i) = self.find_mid(&peer, mid) {
                    let o = self.outstanding.remove(i);
                    self.events.push_back(ExchangeEvent::Reset {
                        id: o.id,
                        peer: o.peer,
                    });
                }
            }
            t @ (MessageType::Confirmable | MessageType::NonConfirmable) => {
                let con = t == MessageType::Confirmable;
                if c == Code::EMPTY {
                    // RFC 7252 §4.3: an empty CON is a ping, answered by RST.
                    if con {
                        self.transmits.push_back(Transmit {
                            peer,
                            bytes: empty(MessageType::Reset, mid),
                            retransmission: false,
                        });
                    }
                    return Ok(());
                }
                let key = (peer.clone(), mid);
                if let Some(seen) = self.seen.get(&key) {
                    // A duplicate (RFC 7252 §4.5): answer as before, never
                    // hand it up twice.
                    if let Some(reply) = seen.reply.clone() {
                        self.transmits.push_back(Transmit {
                            peer,
                            bytes: reply,
                            retransmission: false,
                        });
                    }
                    return Ok(());
                }
                let lifetime = if con { Lifetime::Con } else { Lifetime::Non };
                if c.is_request() {
                    self.remember(key, now, lifetime, None);
                    self.events
                        .push_back(ExchangeEvent::Request(IncomingRequest { peer, packet }));
                } else {
                    self.on_separate_response(peer, packet, con, now, lifetime);
                }
            }
        }
        Ok(())
    }

    fn on_ack(&mut self, peer: P, packet: Packet, now: Instant) {
        let Some(i) = self.find_mid(&peer, packet.header.message_id) else {
            return; // a late or duplicate ACK: nothing waits for it
        };
        let token_matches = self.outstanding[i].token == packet.get_token();
        if msg::code(&packet) == Code::EMPTY || !token_matches {
            // RFC 7252 §5.2.2: an empty ACK announces a separate response.
            // A piggybacked response with another token still acknowledges
            // the message (matched by message id, §4.2) but is not ours.
            let o = &mut self.outstanding[i];
            if !o.acked {
                // A duplicate empty ACK must not extend the wait.
                o.acked = true;
                o.deadline = now + self.config.response_timeout;
            }
            return;
        }
        let o = self.outstanding.remove(i);
        self.events.push_back(ExchangeEvent::Response {
            id: o.id,
            peer: o.peer,
            response: packet,
        });
    }

    fn on_separate_response(
        &mut self,
        peer: P,
        packet: Packet,
        con: bool,
        now: Instant,
        lifetime: Lifetime,
    ) {
        let mid = packet.header.message_id;
        // RFC 7252 §5.3.2: responses match requests by token and endpoint.
        let found = self
            .outstanding
            .iter()
            .position(|o| o.peer == peer && o.token == packet.get_token());
        // RFC 7641 §3.2: a notification matches an observation by token
        // and endpoint.
        let observation = match found {
            Some(_) => None,
            None => self
                .observed
                .get(&(peer.clone(), packet.get_token().to_vec()))
                .copied(),
        };
        let known = found.is_some() || observation.is_some();
        let reply = match (known, con) {
            // RFC 7252 §5.2.2: the client ACKs a CON separate response; if it
            // comes before the empty ACK, it acknowledges the request too.
            // RFC 7641 §4.5: a CON notification is ACKed like one.
            (true, true) => Some(empty(MessageType::Acknowledgement, mid)),
            // RFC 7252 §4.2 and §5.3.2: a CON we cannot match is rejected.
            (false, true) => Some(empty(MessageType::Reset, mid)),
            // RFC 7641 §3.6: a NON notification nobody observes any more is
            // rejected too, so that the server stops sending them.
            (false, false) if super::observe::sequence(&packet).is_some() => {
                Some(empty(MessageType::Reset, mid))
            }
            (_, false) => None,
        };
        self.remember((peer.clone(), mid), now, lifetime, reply.clone());
        if let Some(bytes) = reply {
            self.transmits.push_back(Transmit {
                peer: peer.clone(),
                bytes,
                retransmission: false,
            });
        }
        if let Some(i) = found {
            let o = self.outstanding.remove(i);
            self.events.push_back(ExchangeEvent::Response {
                id: o.id,
                peer: o.peer,
                response: packet,
            });
        } else if let Some(id) = observation {
            self.events.push_back(ExchangeEvent::Notification {
                id,
                peer,
                response: packet,
            });
        }
    }

    /// Retransmits, gives up and times out what is due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.expire(now);
        let mut i = 0;
        while i < self.outstanding.len() {
            let o = &mut self.outstanding[i];
            if o.deadline > now {
                i += 1;
                continue;
            }
            if o.acked {
                let o = self.outstanding.remove(i);
                self.events.push_back(ExchangeEvent::TimedOut {
                    id: o.id,
                    peer: o.peer,
                });
            } else if o.transmissions > self.config.max_retransmit {
                // RFC 7252 §4.2: after MAX_RETRANSMIT retransmissions and one
                // more timeout, the attempt is cancelled.
                let o = self.outstanding.remove(i);
                self.events.push_back(ExchangeEvent::GaveUp {
                    id: o.id,
                    peer: o.peer,
                });
            } else {
                // RFC 7252 §4.2: same message (id and token), doubled timeout.
                o.transmissions += 1;
                o.timeout *= 2;
                o.deadline = now + o.timeout;
                self.transmits.push_back(Transmit {
                    peer: o.peer.clone(),
                    bytes: o.bytes.clone(),
                    retransmission: true,
                });
                i += 1;
            }
        }
    }

    /// The next datagram to send.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Transmit<P>> {
        self.transmits.pop_front()
    }

    /// The next event for the layer above.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<ExchangeEvent<P>> {
        self.events.pop_front()
    }

    /// When [`Exchanges::handle_timeout`] must next be called, `None` when
    /// nothing waits.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.outstanding.iter().map(|o| o.deadline).min()
    }

    fn find_mid(&self, peer: &P, mid: u16) -> Option<usize> {
        self.outstanding
            .iter()
            .position(|o| &o.peer == peer && o.mid == mid)
    }

    fn initial_timeout(&mut self) -> Duration {
        // RFC 7252 §4.2: uniform in [ACK_TIMEOUT, ACK_TIMEOUT * ACK_RANDOM_FACTOR].
        let base = u64::try_from(self.config.ack_timeout.as_millis()).unwrap_or(u64::MAX);
        let spread = (base as f64 * (self.config.ack_random_factor - 1.0)) as u64;
        Duration::from_millis(base.saturating_add(self.rng.range_inclusive(0, spread)))
    }

    fn alloc_mid(&mut self, peer: &P) -> u16 {
        // RFC 7252 §4.4: sequential ids from a random start, per peer.
        if self.mids.len() >= MAX_MID_PEERS && !self.mids.contains_key(peer) {
            // Bounded memory against spoofed sources (NON requests): the
            // sequences restart, still from the random start.
            self.mids.clear();
        }
        let next = self.mids.entry(peer.clone()).or_insert(self.next_mid);
        let mid = *next;
        *next = next.wrapping_add(1);
        mid
    }

    fn alloc_token(&mut self, peer: &P) -> Vec<u8> {
        let len = usize::from(self.config.token_len);
        for _ in 0..64 {
            let token = match self.next_token.as_mut() {
                Some(next) => {
                    let t = next.to_be_bytes()[8 - len..].to_vec();
                    *next = next.wrapping_add(1);
                    t
                }
                None => {
                    let mut t = vec![0; len];
                    self.rng.fill(&mut t);
                    t
                }
            };
            // Nor an observation's token: its notifications would answer
            // the new request (RFC 7641 §3.2).
            let observing = !self.observed.is_empty()
                && self.observed.contains_key(&(peer.clone(), token.clone()));
            if !observing
                && !self
                    .outstanding
                    .iter()
                    .any(|o| &o.peer == peer && o.token == token)
            {
                return token;
            }
        }
        // Only reachable with tokens too short for the requests in flight
        // (token_len 0 and several requests to one peer); matching then
        // falls back to the oldest request, as RFC 7252 §5.3.1 allows for
        // an endpoint that uses one token.
        vec![0; len]
    }

    fn remember(
        &mut self,
        key: (P, u16),
        now: Instant,
        lifetime: Lifetime,
        reply: Option<Vec<u8>>,
    ) {
        if let Some(s) = self.seen.get_mut(&key) {
            s.reply = reply;
            return;
        }
        while self.seen.len() >= self.config.max_dedup_entries {
            // Bounded memory: forget the entry that would expire first.
            let Some(class) = self.first_to_expire() else {
                break;
            };
            if let Some((at, old)) = self.seen_order[class as usize].pop_front() {
                self.forget(&old, at, class);
            }
        }
        self.seen_order[lifetime as usize].push_back((now, key.clone()));
        self.seen.insert(
            key,
            Seen {
                inserted: now,
                lifetime,
                reply,
            },
        );
    }

    fn lifetime(&self, class: Lifetime) -> Duration {
        match class {
            Lifetime::Con => self.config.exchange_lifetime,
            Lifetime::Non => self.config.non_lifetime,
        }
    }

    /// The queue whose front expires first, `None` when both are empty.
    fn first_to_expire(&self) -> Option<Lifetime> {
        [Lifetime::Con, Lifetime::Non]
            .into_iter()
            .filter_map(|c| {
                let (at, _) = self.seen_order[c as usize].front()?;
                Some((*at + self.lifetime(c), c))
            })
            .min_by_key(|(expires, _)| *expires)
            .map(|(_, c)| c)
    }

    /// Removes `key` from `seen` if the queue entry `(at, class)` is the one
    /// that inserted it.
    fn forget(&mut self, key: &(P, u16), at: Instant, class: Lifetime) {
        if self
            .seen
            .get(key)
            .is_some_and(|s| s.inserted == at && s.lifetime == class)
        {
            self.seen.remove(key);
        }
    }

    /// Forgets the message ids whose lifetime ended by `now`: amortised
    /// O(1) per remembered id (each is popped once).
    fn expire(&mut self, now: Instant) {
        for class in [Lifetime::Con, Lifetime::Non] {
            let lifetime = self.lifetime(class);
            while let Some((at, _)) = self.seen_order[class as usize].front() {
                if *at + lifetime > now {
                    break;
                }
                if let Some((at, key)) = self.seen_order[class as usize].pop_front() {
                    self.forget(&key, at, class);
                }
            }
        }
    }
}

/// An empty message (code 0.00, no token) of type `t` (RFC 7252 §4.1).
fn empty(t: MessageType, mid: u16) -> Vec<u8> {
    let ty = match t {
        MessageType::Confirmable => 0,
        MessageType::NonConfirmable => 1,
        MessageType::Acknowledgement => 2,
        MessageType::Reset => 3,
    };
    let [hi, lo] = mid.to_be_bytes();
    vec![0x40 | ty << 4, 0x00, hi, lo]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coap::msg::request;
    use crate::hex;
    use proptest::prelude::*;

    const PEER: u8 = 7;

    fn engine() -> Exchanges<u8> {
        Exchanges::new(ExchangeConfig {
            seed: 1,
            first_message_id: Some(0x1000),
            first_token: Some(0xa0),
            token_len: 1,
            ..ExchangeConfig::default()
        })
        .unwrap()
    }

    fn at(ms: u64) -> Instant {
        Instant::from_millis(ms)
    }

    fn drain(e: &mut Exchanges<u8>) -> Vec<Vec<u8>> {
        std::iter::from_fn(|| e.poll_transmit())
            .map(|t| t.bytes)
            .collect()
    }

    fn h(s: &str) -> Vec<u8> {
        hex::parse(s).unwrap()
    }

    #[test]
    fn get_goes_out_as_con_with_fresh_mid_and_token() {
        let mut e = engine();
        e.start_request(PEER, request(Code::GET, &["3", "0", "3"]), at(0))
            .unwrap();
        // CON GET, MID 0x1000, token a0, Uri-Path 3/0/3.
        assert_eq!(drain(&mut e), vec![h("41 01 10 00 a0 b1 33 01 30 01 33")]);
        e.start_request(PEER, request(Code::GET, &["5"]), at(0))
            .unwrap();
        assert_eq!(drain(&mut e), vec![h("41 01 10 01 a1 b1 35")]);
    }

    #[test]
    fn retransmits_same_bytes_with_doubling_timeout_then_gives_up() {
        let mut e = engine();
        let id = e
            .start_request(PEER, request(Code::GET, &["x"]), at(0))
            .unwrap();
        let t = e.poll_transmit().unwrap();
        assert!(!t.retransmission, "the first transmission is no retry");
        let first = t.bytes;
        let t0 = e.poll_timeout().unwrap().as_millis();
        assert!(
            (2000..=3000).contains(&t0),
            "first timeout {t0} outside [2 s, 3 s]"
        );
        // Just before the deadline nothing happens.
        e.handle_timeout(at(t0 - 1));
        assert!(drain(&mut e).is_empty());
        let mut deadline = t0;
        for n in 1..=4u64 {
            e.handle_timeout(at(deadline));
            let t = e.poll_transmit().unwrap();
            assert!(t.retransmission, "flagged for the chunk_retries metric");
            assert_eq!(t.bytes, first, "retransmission #{n}");
            assert!(drain(&mut e).is_empty());
            let next = e.poll_timeout().unwrap().as_millis();
            assert_eq!(next - deadline, t0 << n, "timeout doubles");
            deadline = next;
        }
        // 31 * T0 after the first transmission: MAX_TRANSMIT_WAIT at T0 = 3 s.
        assert_eq!(deadline, 31 * t0);
        e.handle_timeout(at(deadline));
        assert!(drain(&mut e).is_empty());
        assert_eq!(
            e.poll_event(),
            Some(ExchangeEvent::GaveUp { id, peer: PEER })
        );
        assert_eq!(e.poll_timeout(), None);
    }

    #[test]
    fn message_ids_are_sequential_per_peer() {
        // 500 children and 256 blocks each wrap one shared 16-bit counter
        // well within EXCHANGE_LIFETIME; a child would then take a new
        // request for a duplicate (RFC 7252 §4.4, §4.5).
        let mut e = engine();
        let mid = |e: &mut Exchanges<u8>, peer: u8| {
            let id = e
                .start_request(peer, request(Code::GET, &["x"]), at(0))
                .unwrap();
            let bytes = e.poll_transmit().unwrap().bytes;
            e.cancel(id);
            u16::from_be_bytes([bytes[2], bytes[3]])
        };
        assert_eq!(mid(&mut e, 1), 0x1000);
        for _ in 0..70_000 {
            let _ = mid(&mut e, 2);
        }
        assert_eq!(mid(&mut e, 1), 0x1001, "peer 1's sequence is its own");
        assert_eq!(mid(&mut e, 3), 0x1000);
    }

    #[test]
    fn jitter_comes_from_the_seed() {
        let mut a = engine();
        let mut b = engine();
        let mut c = Exchanges::<u8>::new(ExchangeConfig {
            seed: 2,
            ..ExchangeConfig::default()
        })
        .unwrap();
        let mut seen = Vec::new();
        for e in [&mut a, &mut b, &mut c] {
            e.start_request(PEER, request(Code::GET, &["x"]), at(0))
                .unwrap();
            seen.push(e.poll_timeout().unwrap());
        }
        assert_eq!(seen[0], seen[1]);
        assert_ne!(seen[0], seen[2]);
    }

    #[test]
    fn piggybacked_response_ends_the_exchange() {
        let mut e = engine();
        let id = e
            .start_request(PEER, request(Code::GET, &["x"]), at(0))
            .unwrap();
        let _ = drain(&mut e);
        // ACK 2.05, MID 0x1000, token a0, payload "1".
        e.handle_datagram(PEER, &h("61 45 10 00 a0 ff 31"), at(10))
            .unwrap();
        let Some(ExchangeEvent::Response {
            id: got, response, ..
        }) = e.poll_event()
        else {
            panic!("no response")
        };
        assert_eq!(got, id);
        assert_eq!(response.payload, b"1");
        assert_eq!(e.poll_timeout(), None);
        // A duplicate of the ACK is ignored.
        e.handle_datagram(PEER, &h("61 45 10 00 a0 ff 31"), at(20))
            .unwrap();
        assert_eq!(e.poll_event(), None);
        assert!(drain(&mut e).is_empty());
    }

    #[test]
    fn separate_response_is_acked_once_and_reported_once() {
        let mut e = engine();
        let id = e
            .start_request(PEER, request(Code::POST, &["5", "0", "2"]), at(0))
            .unwrap();
        let _ = drain(&mut e);
        e.handle_datagram(PEER, &h("60 00 10 00"), at(100)).unwrap();
        assert_eq!(e.poll_event(), None);
        // No retransmission after the empty ACK; the wait is response_timeout.
        assert_eq!(e.poll_timeout(), Some(at(100 + 247_000)));
        // CON 2.04 from the peer, its own MID 0x7777, our token a0.
        e.handle_datagram(PEER, &h("41 44 77 77 a0"), at(5000))
            .unwrap();
        assert_eq!(
            drain(&mut e),
            vec![h("60 00 77 77")],
            "we ACK the CON response"
        );
        assert!(
            matches!(e.poll_event(), Some(ExchangeEvent::Response { id: got, .. }) if got == id)
        );
        // Its retransmission is ACKed again but not reported again.
        e.handle_datagram(PEER, &h("41 44 77 77 a0"), at(7000))
            .unwrap();
        assert_eq!(drain(&mut e), vec![h("60 00 77 77")]);
        assert_eq!(e.poll_event(), None);
    }

    #[test]
    fn separate_response_before_the_empty_ack_counts() {
        let mut e = engine();
        e.start_request(PEER, request(Code::GET, &["x"]), at(0))
            .unwrap();
        let _ = drain(&mut e);
        e.handle_datagram(PEER, &h("41 45 22 22 a0"), at(50))
            .unwrap();
        assert_eq!(drain(&mut e), vec![h("60 00 22 22")]);
        assert!(matches!(
            e.poll_event(),
            Some(ExchangeEvent::Response { .. })
        ));
        assert_eq!(e.poll_timeout(), None, "no retransmission left");
    }

    #[test]
    fn duplicate_empty_ack_does_not_extend_the_wait() {
        let mut e = engine();
        e.start_request(PEER, request(Code::GET, &["x"]), at(0))
            .unwrap();
        e.handle_datagram(PEER, &h("60 00 10 00"), at(100)).unwrap();
        e.handle_datagram(PEER, &h("60 00 10 00"), at(9000))
            .unwrap();
        assert_eq!(e.poll_timeout(), Some(at(100 + 247_000)));
    }

    #[test]
    fn missing_separate_response_times_out() {
        let mut e = engine();
        let id = e
            .start_request(PEER, request(Code::GET, &["x"]), at(0))
            .unwrap();
        e.handle_datagram(PEER, &h("60 00 10 00"), at(100)).unwrap();
        e.handle_timeout(at(100 + 246_999));
        assert_eq!(e.poll_event(), None);
        e.handle_timeout(at(100 + 247_000));
        assert_eq!(
            e.poll_event(),
            Some(ExchangeEvent::TimedOut { id, peer: PEER })
        );
    }

    #[test]
    fn rst_rejects_the_request() {
        let mut e = engine();
        let id = e
            .start_request(PEER, request(Code::GET, &["x"]), at(0))
            .unwrap();
        e.handle_datagram(PEER, &h("70 00 10 00"), at(10)).unwrap();
        assert_eq!(
            e.poll_event(),
            Some(ExchangeEvent::Reset { id, peer: PEER })
        );
        // A RST from another peer with the same MID would not have matched.
        let id2 = e
            .start_request(PEER, request(Code::GET, &["x"]), at(0))
            .unwrap();
        e.handle_datagram(8, &h("70 00 10 01"), at(10)).unwrap();
        assert_eq!(e.poll_event(), None);
        e.cancel(id2);
        assert_eq!(e.poll_timeout(), None);
    }

    #[test]
    fn ack_with_foreign_token_is_only_an_ack() {
        let mut e = engine();
        e.start_request(PEER, request(Code::GET, &["x"]), at(0))
            .unwrap();
        e.handle_datagram(PEER, &h("61 45 10 00 ee"), at(10))
            .unwrap();
        assert_eq!(e.poll_event(), None);
        assert_eq!(e.poll_timeout(), Some(at(10 + 247_000)));
    }

    #[test]
    fn unknown_con_response_and_ping_get_rst() {
        let mut e = engine();
        e.handle_datagram(PEER, &h("41 45 33 33 99"), at(0))
            .unwrap();
        e.handle_datagram(PEER, &h("40 00 44 44"), at(0)).unwrap();
        assert_eq!(drain(&mut e), vec![h("70 00 33 33"), h("70 00 44 44")]);
        // A malformed CON (TKL 9) is rejected too, a malformed NON ignored.
        assert!(e.handle_datagram(PEER, &h("49 01 55 55"), at(0)).is_err());
        assert!(e.handle_datagram(PEER, &h("59 01 55 56"), at(0)).is_err());
        assert_eq!(drain(&mut e), vec![h("70 00 55 55")]);
    }

    #[test]
    fn server_side_dedup_replays_the_cached_response() {
        let mut e = engine();
        let get = h("44 01 12 34 01 02 03 04 b2 66 77"); // CON GET /fw token 01020304
        e.handle_datagram(PEER, &get, at(0)).unwrap();
        let Some(ExchangeEvent::Request(req)) = e.poll_event() else {
            panic!("no request")
        };
        let mut resp = Packet::new();
        msg::set_code(&mut resp, Code::CONTENT);
        resp.payload = b"hi".to_vec();
        e.respond(&req, resp, at(0)).unwrap();
        let answer = h("64 45 12 34 01 02 03 04 ff 68 69");
        assert_eq!(drain(&mut e), vec![answer.clone()]);
        // The retransmitted request gets the identical answer, no new event.
        e.handle_datagram(PEER, &get, at(2500)).unwrap();
        assert_eq!(drain(&mut e), vec![answer]);
        assert_eq!(e.poll_event(), None);
        // Another peer with the same MID is a different exchange.
        e.handle_datagram(8, &get, at(2500)).unwrap();
        assert!(matches!(e.poll_event(), Some(ExchangeEvent::Request(r)) if r.peer == 8));
        // After EXCHANGE_LIFETIME the MID is new again.
        e.handle_datagram(PEER, &get, at(247_000)).unwrap();
        assert!(matches!(e.poll_event(), Some(ExchangeEvent::Request(_))));
    }

    #[test]
    fn notifications_of_a_kept_token_are_acked_and_reported_once() {
        let mut e = engine();
        let id = e
            .start_request(PEER, request(Code::GET, &["5", "0", "3"]), at(0))
            .unwrap();
        let _ = drain(&mut e);
        // ACK 2.05 Observe 1, payload "1": the observation is accepted.
        e.handle_datagram(PEER, &h("61 45 10 00 a0 61 01 ff 31"), at(10))
            .unwrap();
        assert!(matches!(
            e.poll_event(),
            Some(ExchangeEvent::Response { .. })
        ));
        assert!(e.keep_token(PEER, vec![0xa0], id));
        // CON notification, its own MID 0x5000, Observe 2, payload "2".
        let n = h("41 45 50 00 a0 61 02 ff 32");
        e.handle_datagram(PEER, &n, at(1000)).unwrap();
        assert_eq!(drain(&mut e), vec![h("60 00 50 00")], "ACKed");
        let Some(ExchangeEvent::Notification {
            id: got, response, ..
        }) = e.poll_event()
        else {
            panic!("no notification")
        };
        assert_eq!(got, id);
        assert_eq!(response.payload, b"2");
        // Its retransmission is ACKed again, not reported again.
        e.handle_datagram(PEER, &n, at(3000)).unwrap();
        assert_eq!(drain(&mut e), vec![h("60 00 50 00")]);
        assert_eq!(e.poll_event(), None);
        // A NON notification: no ACK, reported.
        e.handle_datagram(PEER, &h("51 45 50 01 a0 61 03 ff 33"), at(4000))
            .unwrap();
        assert!(drain(&mut e).is_empty());
        assert!(matches!(
            e.poll_event(),
            Some(ExchangeEvent::Notification { .. })
        ));
        // The same token from another peer is not this observation.
        e.handle_datagram(8, &h("41 45 50 02 a0 61 04 ff 34"), at(5000))
            .unwrap();
        assert_eq!(drain(&mut e), vec![h("70 00 50 02")]);
        assert_eq!(e.poll_event(), None);
        // A new request never reuses the observation's token.
        e.start_request(PEER, request(Code::GET, &["x"]), at(5000))
            .unwrap();
        let sent = drain(&mut e);
        assert_ne!(sent[0][4], 0xa0);
    }

    #[test]
    fn a_forgotten_token_gets_rst_con_and_non() {
        let mut e = engine();
        let id = e
            .start_request(PEER, request(Code::GET, &["5", "0", "5"]), at(0))
            .unwrap();
        let _ = drain(&mut e);
        e.handle_datagram(PEER, &h("61 45 10 00 a0 61 01 ff 30"), at(10))
            .unwrap();
        let _ = e.poll_event();
        assert!(e.keep_token(PEER, vec![0xa0], id));
        assert_eq!(e.observations(), 1);
        e.forget_token(id);
        assert_eq!(e.observations(), 0);
        // RFC 7641 §3.6: the next notification is rejected, CON or NON.
        e.handle_datagram(PEER, &h("41 45 60 00 a0 61 02 ff 31"), at(20))
            .unwrap();
        e.handle_datagram(PEER, &h("51 45 60 01 a0 61 03 ff 31"), at(30))
            .unwrap();
        assert_eq!(drain(&mut e), vec![h("70 00 60 00"), h("70 00 60 01")]);
        assert_eq!(e.poll_event(), None);
        // A late NON response without Observe is still only ignored.
        e.handle_datagram(PEER, &h("51 45 60 02 a0 ff 31"), at(40))
            .unwrap();
        assert!(drain(&mut e).is_empty());
    }

    #[test]
    fn observations_follow_a_moved_peer_and_are_bounded() {
        let mut e = engine();
        let id = RequestId(99);
        assert!(e.keep_token(PEER, vec![0xee], id));
        e.peer_moved(&PEER, 9);
        e.handle_datagram(9, &h("51 45 70 00 ee 61 05"), at(0))
            .unwrap();
        assert!(matches!(
            e.poll_event(),
            Some(ExchangeEvent::Notification { id: got, peer: 9, .. }) if got == id
        ));
        for i in 0..MAX_OBSERVATIONS as u64 {
            let _ = e.keep_token(10, i.to_be_bytes().to_vec(), RequestId(i));
        }
        assert_eq!(e.observations(), MAX_OBSERVATIONS);
        assert!(!e.keep_token(11, vec![1], RequestId(1)));
    }

    #[test]
    fn dedup_memory_is_bounded() {
        let mut e = Exchanges::<u8>::new(ExchangeConfig {
            max_dedup_entries: 2,
            ..ExchangeConfig::default()
        })
        .unwrap();
        for mid in 0..5u8 {
            e.handle_datagram(PEER, &[0x40, 0x01, 0, mid], at(0))
                .unwrap();
        }
        assert_eq!(e.seen.len(), 2);
        assert!(e.seen_order.iter().map(VecDeque::len).sum::<usize>() <= 2);
        // MID 0 was forgotten, so it counts as new.
        let _ = std::iter::from_fn(|| e.poll_event()).count();
        e.handle_datagram(PEER, &[0x40, 0x01, 0, 0], at(1)).unwrap();
        assert!(e.poll_event().is_some());
    }

    #[test]
    fn con_and_non_ids_expire_on_their_own_lifetimes() {
        let mut e = engine();
        let con = [0x40, 0x01, 0, 1]; // CON GET, MID 1
        let non = [0x50, 0x01, 0, 2]; // NON GET, MID 2, arrives later
        e.handle_datagram(PEER, &con, at(0)).unwrap();
        e.handle_datagram(PEER, &non, at(10_000)).unwrap();
        assert_eq!(std::iter::from_fn(|| e.poll_event()).count(), 2);
        // 155 s: the NON's 145 s are over, the CON's 247 s are not, although
        // the CON came first.
        e.handle_datagram(PEER, &non, at(155_000)).unwrap();
        e.handle_datagram(PEER, &con, at(155_000)).unwrap();
        assert_eq!(std::iter::from_fn(|| e.poll_event()).count(), 1);
        // 247 s: the CON's id is new again.
        e.handle_datagram(PEER, &con, at(247_000)).unwrap();
        assert_eq!(std::iter::from_fn(|| e.poll_event()).count(), 1);
    }

    #[test]
    fn non_request_gets_non_response() {
        let mut e = engine();
        e.handle_datagram(PEER, &h("51 01 00 09 cc b2 66 77"), at(0))
            .unwrap();
        let Some(ExchangeEvent::Request(req)) = e.poll_event() else {
            panic!()
        };
        let mut resp = Packet::new();
        msg::set_code(&mut resp, Code::NOT_FOUND);
        e.respond(&req, resp, at(0)).unwrap();
        assert_eq!(drain(&mut e), vec![h("51 84 10 00 cc")]);
    }

    #[test]
    fn config_and_api_misuse_are_errors() {
        let bad = |c: ExchangeConfig| Exchanges::<u8>::new(c).unwrap_err();
        assert_eq!(
            bad(ExchangeConfig {
                token_len: 9,
                ..Default::default()
            }),
            ConfigError::TokenLen(9)
        );
        assert_eq!(
            bad(ExchangeConfig {
                ack_random_factor: 0.5,
                ..Default::default()
            }),
            ConfigError::RandomFactor(0.5)
        );
        let mut e = engine();
        let mut p = Packet::new();
        msg::set_code(&mut p, Code::CONTENT);
        assert_eq!(
            e.start_request(PEER, p, at(0)),
            Err(RequestError::NotARequest(Code::CONTENT))
        );
        let mut big = request(Code::PUT, &["x"]);
        big.payload = vec![0; 2000];
        assert!(matches!(
            e.start_request(PEER, big, at(0)),
            Err(RequestError::Encode(_))
        ));
    }

    /// Datagrams that mostly look like CoAP: version 1, a real type and
    /// code, a message id and token near the ones in flight, random rest.
    fn coapish() -> impl Strategy<Value = Vec<u8>> {
        (
            0u8..4,
            prop_oneof![
                Just(0x00u8),
                Just(0x01),
                Just(0x45),
                Just(0x5f),
                Just(0x84),
                any::<u8>()
            ],
            0x0ffeu16..0x1004,
            prop_oneof![
                Just(vec![0xa0u8]),
                Just(vec![0xa1]),
                proptest::collection::vec(any::<u8>(), 0..9)
            ],
            proptest::collection::vec(any::<u8>(), 0..24),
        )
            .prop_map(|(t, code, mid, token, rest)| {
                let mut d = vec![0x40 | t << 4 | token.len() as u8, code];
                d.extend_from_slice(&mid.to_be_bytes());
                d.extend_from_slice(&token);
                d.extend_from_slice(&rest);
                d
            })
    }

    proptest! {
        #[test]
        fn arbitrary_datagrams_never_panic(
            dgrams in proptest::collection::vec(
                prop_oneof![proptest::collection::vec(any::<u8>(), 0..40), coapish()],
                1..12,
            )
        ) {
            let mut e = engine();
            e.start_request(PEER, request(Code::GET, &["x"]), at(0)).unwrap();
            e.start_request(PEER, request(Code::PUT, &["y"]), at(0)).unwrap();
            for (i, d) in dgrams.iter().enumerate() {
                let now = at(i as u64 * 1000);
                let _ = e.handle_datagram(PEER, d, now);
                while let Some(ev) = e.poll_event() {
                    if let ExchangeEvent::Request(r) = ev {
                        let mut resp = Packet::new();
                        msg::set_code(&mut resp, Code::CONTENT);
                        prop_assert!(e.respond(&r, resp, now).is_ok());
                    }
                }
                e.handle_timeout(now);
                for t in std::iter::from_fn(|| e.poll_transmit()) {
                    // Everything the engine sends is itself valid CoAP.
                    prop_assert!(msg::decode(&t.bytes).is_ok(), "sent {:02x?}", t.bytes);
                }
                prop_assert!(e.in_flight() <= 2);
            }
        }
    }
}
