//! The CoAP peer engine: one endpoint's message layer plus the scheduling
//! of everything the gateway sends to each peer, sans-IO.
//!
//! [`Peers`] wraps the [`Exchanges`] of one UDP socket and owns, per peer:
//! - NSTART = 1 (RFC 7252 §4.7): at most one of our requests in flight to a
//!   peer; others wait in that peer's queue, in order;
//! - the Block1 push to that peer, if one runs ([`Peers::start_push`]): the
//!   engine sends its blocks itself, the next one from inside the
//!   `handle_datagram` call that brought the previous block's answer, so a
//!   lock-step push costs one pass through the driver per block;
//! - requests held behind a block in flight: a request for a peer with a
//!   push running goes out alone between two blocks, and the push resumes
//!   after its answer (a status read during a long transfer neither waits
//!   for the whole image nor breaks NSTART).
//!
//! Requests from peers (the server role: Block2 GETs of a package, LwM2M
//! Register/Update/De-register) come out as [`PeerEvent::Request`] and are
//! answered with [`Peers::respond`].
//!
//! Observations (RFC 7641, [`super::observe`]): a request whose answer
//! carries the Observe option (a GET with `Observe: 0` the peer accepted)
//! stays alive after its [`PeerEvent::Response`]: the peer's notifications
//! come out as [`PeerEvent::Notification`] with the request's [`OpId`]
//! until [`Peers::cancel`] of that op (the next notification then gets
//! RST, RFC 7641 §3.6) or a notification that ends it (not 2.xx, or
//! without Observe). Notifications take no NSTART turn: they are
//! responses, not requests of ours.
//!
//! Per peer,
//! the per-peer state is where a registration's address, binding and
//! queue-mode window will live, so that requests to a sleeping client wait
//! in the same queue.
//!
//! # Call order
//! A driver owns one socket and one `Peers` and loops:
//! 1. inputs: [`Peers::request`], [`Peers::start_push`], [`Peers::cancel`]
//!    and [`Peers::respond`] for what its users want; [`Peers::handle_datagram`]
//!    for every datagram read; [`Peers::handle_timeout`] once the instant
//!    of [`Peers::poll_timeout`] has passed. Every input takes `now`.
//! 2. outputs, after any input: drain [`Peers::poll_event`] to the users
//!    (responses, push progress and ends, peers' requests), then
//!    [`Peers::poll_transmit`] into the socket, then re-arm the timer with
//!    [`Peers::poll_timeout`].
//!
//! Events come before transmissions only so that a driver answering a
//! peer's request in step 2 sends the answer in the same pass; the engine
//! itself does not care.
//!
//! Who does what (docs/design.md, the `Child` trait's table): this engine
//! retransmits (RFC 7252 §4.2, inside [`Exchanges`]) and restarts a push
//! from block 0 when the child lost it (4.08, RFC 7959 §2.9.2); it never
//! repeats a whole delivery and keeps no deadline of its own beyond the
//! message layer's.

use std::collections::{HashMap, VecDeque};
use std::fmt::Debug;
use std::hash::Hash;

use coap_lite::Packet;

use super::exchange::{
    ConfigError, ExchangeConfig, ExchangeEvent, Exchanges, HandleError, IncomingRequest,
    RequestError, RequestId, RespondError, Transmit,
};
use super::msg::{self, Code};
use super::observe;
use super::push::{
    Block1Push, PushConfig, PushConfigError, PushEvent, PushFailure, TransportFailure,
};
use super::source::ReadAt;
use crate::time::Instant;

/// Identifies a request or a push given to [`Peers`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OpId(pub u64);

/// What the peer engine reports.
#[derive(Debug, Clone, PartialEq)]
pub enum PeerEvent<P> {
    /// The response to request `op`.
    Response {
        /// The request.
        op: OpId,
        /// The peer.
        peer: P,
        /// The response, piggybacked or separate (RFC 7252 §5.2).
        response: Packet,
    },
    /// Request `op` got no response (no ACK, no separate response, RST).
    Failed {
        /// The request.
        op: OpId,
        /// The peer.
        peer: P,
        /// How the exchange ended.
        why: TransportFailure,
    },
    /// Request `op`, held until the peer was free, could not be sent
    /// (it was checked when queued, so only a bug gets here).
    Refused {
        /// The request.
        op: OpId,
        /// The peer.
        peer: P,
        /// Why the message layer refused it.
        error: RequestError,
    },
    /// Something happened to push `op`. Every acknowledged block gives a
    /// [`PushEvent::Progress`] with its time ("bytes acknowledged at t");
    /// the push's last event is [`PushEvent::Done`] or [`PushEvent::Failed`].
    Push {
        /// The push.
        op: OpId,
        /// The peer.
        peer: P,
        /// What happened.
        event: PushEvent,
    },
    /// A new request from a peer, to be answered with [`Peers::respond`].
    Request(IncomingRequest<P>),
    /// A notification of the observation request `op` registered (see the
    /// module doc). Not ordered: the user applies RFC 7641 §3.4
    /// ([`super::Freshness`]).
    Notification {
        /// The request that registered the observation.
        op: OpId,
        /// The peer.
        peer: P,
        /// The notification.
        response: Packet,
    },
}

/// Why [`Peers::start_push`] refused a push.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StartPushError {
    /// The push settings cannot work.
    #[error(transparent)]
    Config(#[from] PushConfigError),
    /// A push to this peer is already running (one body at a time per
    /// resource and peer; RFC 9175's Request-Tag would allow more, no
    /// LwM2M child needs it).
    #[error("a push to this peer is already running")]
    Busy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sent {
    /// A request of `op`.
    Request(OpId),
    /// A block of the peer's push.
    Block,
}

#[derive(Debug)]
struct Push<R> {
    op: OpId,
    engine: Block1Push,
    image: R,
}

#[derive(Debug)]
struct Peer<R> {
    /// Our request in flight to this peer (NSTART 1) and what it is for.
    in_flight: Option<(RequestId, Sent)>,
    /// Requests waiting for the peer, oldest first.
    held: VecDeque<(OpId, Packet)>,
    push: Option<Push<R>>,
}

impl<R> Peer<R> {
    fn idle(&self) -> bool {
        self.in_flight.is_none() && self.held.is_empty() && self.push.is_none()
    }
}

/// The peer engine of one CoAP endpoint (see the module doc for the call
/// order). `P` is the peer address (`SocketAddr` in the daemon), `R` reads
/// pushed images by offset (a file in the daemon, a byte vector in tests).
#[derive(Debug)]
pub struct Peers<P, R> {
    ex: Exchanges<P>,
    peers: HashMap<P, Peer<R>>,
    /// Exchange ids of our requests in flight, to their peer.
    exchanges: HashMap<RequestId, P>,
    /// Established observations: the exchange id that registered each, to
    /// its op.
    observing: HashMap<RequestId, OpId>,
    next_op: u64,
    events: VecDeque<PeerEvent<P>>,
}

impl<P: Clone + Eq + Hash + Debug, R: ReadAt> Peers<P, R> {
    /// An engine with nothing in flight.
    pub fn new(config: ExchangeConfig) -> Result<Self, ConfigError> {
        Ok(Peers {
            ex: Exchanges::new(config)?,
            peers: HashMap::new(),
            exchanges: HashMap::new(),
            observing: HashMap::new(),
            next_op: 0,
            events: VecDeque::new(),
        })
    }

    /// Sends `packet` to `peer` as a confirmable request once the peer has
    /// nothing else of ours in flight (NSTART 1); its outcome is a
    /// [`PeerEvent::Response`], [`PeerEvent::Failed`] or (for a held
    /// request that became unsendable) [`PeerEvent::Refused`].
    pub fn request(&mut self, peer: P, packet: Packet, now: Instant) -> Result<OpId, RequestError> {
        let c = msg::code(&packet);
        if !c.is_request() {
            return Err(RequestError::NotARequest(c));
        }
        let op = self.alloc_op();
        let slot = self.slot(&peer);
        if slot.in_flight.is_none() && slot.held.is_empty() {
            let id = self.ex.start_request(peer.clone(), packet, now)?;
            self.sent(peer, id, Sent::Request(op));
        } else {
            // Checked now, so the caller hears of an unsendable request at
            // once rather than after the peer's queue has drained.
            msg::encode(&packet, self.ex.max_message_size())?;
            self.slot(&peer).held.push_back((op, packet));
        }
        Ok(op)
    }

    /// Starts a Block1 push of `image` to `peer` (see [`Block1Push`]); its
    /// blocks go out whenever the peer has nothing else of ours in flight.
    pub fn start_push(
        &mut self,
        peer: P,
        cfg: PushConfig,
        image: R,
        now: Instant,
    ) -> Result<OpId, StartPushError> {
        if self.peers.get(&peer).is_some_and(|p| p.push.is_some()) {
            return Err(StartPushError::Busy);
        }
        let engine = Block1Push::new(cfg)?;
        let op = self.alloc_op();
        self.slot(&peer).push = Some(Push { op, engine, image });
        self.advance(&peer, now);
        Ok(op)
    }

    /// Forgets request or push `op`: no more (re)transmissions for it and
    /// no more events. The peer's next request or block goes out.
    pub fn cancel(&mut self, op: OpId, now: Instant) {
        // An observation: forget its token (RFC 7641 §3.6, reactive).
        let ex = &mut self.ex;
        self.observing.retain(|id, o| {
            if *o == op {
                ex.forget_token(*id);
            }
            *o != op
        });
        let Some(peer) = self.peer_of(op) else {
            return;
        };
        let Some(slot) = self.peers.get_mut(&peer) else {
            return;
        };
        slot.held.retain(|(o, _)| *o != op);
        let is_push = slot.push.as_ref().is_some_and(|p| p.op == op);
        if is_push {
            slot.push = None;
        }
        let stop = match slot.in_flight {
            Some((id, Sent::Request(o))) if o == op => Some(id),
            Some((id, Sent::Block)) if is_push => Some(id),
            _ => None,
        };
        if let Some(id) = stop {
            slot.in_flight = None;
            self.ex.cancel(id);
            self.exchanges.remove(&id);
        }
        self.advance(&peer, now);
    }

    /// Answers a peer's request (RFC 7252 §5.2.1: piggybacked for a CON).
    pub fn respond(
        &mut self,
        request: &IncomingRequest<P>,
        response: Packet,
        now: Instant,
    ) -> Result<(), RespondError> {
        self.ex.respond(request, response, now)
    }

    /// Takes one datagram from `peer`. An answer to a push block is handled
    /// at once, and the push's next block is among the transmissions this
    /// call leaves.
    pub fn handle_datagram(
        &mut self,
        peer: P,
        bytes: &[u8],
        now: Instant,
    ) -> Result<(), HandleError> {
        let r = self.ex.handle_datagram(peer, bytes, now);
        self.on_exchange_events(now);
        r
    }

    /// Retransmits, gives up and times out what is due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.ex.handle_timeout(now);
        self.on_exchange_events(now);
    }

    /// The next datagram to send.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Transmit<P>> {
        self.ex.poll_transmit()
    }

    /// The next event.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<PeerEvent<P>> {
        self.events.pop_front()
    }

    /// When [`Peers::handle_timeout`] is next due; `None` when nothing waits.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.ex.poll_timeout()
    }

    /// Bytes push `op` has had acknowledged and when the last block was
    /// (`None`: no such push running).
    pub fn push_acked(&self, op: OpId) -> Option<(u32, Option<Instant>)> {
        self.peers.values().find_map(|p| {
            p.push
                .as_ref()
                .filter(|x| x.op == op)
                .map(|x| (x.engine.acked(), x.engine.last_ack()))
        })
    }

    /// Our requests in flight, over all peers (at most one per peer).
    pub fn in_flight(&self) -> usize {
        self.exchanges.len()
    }

    /// Observations established and not cancelled, over all peers.
    pub fn observations(&self) -> usize {
        self.observing.len()
    }

    fn alloc_op(&mut self) -> OpId {
        self.next_op += 1;
        OpId(self.next_op)
    }

    /// Peer `from` is now at `to` (an LwM2M client re-registered or
    /// updated from a new address, issue 13): its request or block in
    /// flight goes to `to` at once (same op, new message id and token),
    /// its held requests and its push follow. When `to` already has work of
    /// its own, `from`'s in-flight request fails as [`TransportFailure::GaveUp`]
    /// (its owner retries) and its held requests queue behind `to`'s.
    pub fn move_peer(&mut self, from: &P, to: P, now: Instant) {
        if *from == to {
            return;
        }
        self.ex.peer_moved(from, to.clone());
        let Some(mut moving) = self.peers.remove(from) else {
            return;
        };
        if let Some((id, _)) = moving.in_flight {
            self.exchanges.remove(&id);
            if self.ex.redirect(id, to.clone(), now) {
                self.exchanges.insert(id, to.clone());
            } else {
                moving.in_flight = None;
            }
        }
        match self.peers.remove(&to) {
            None => {
                self.peers.insert(to.clone(), moving);
            }
            Some(mut there) => {
                if let Some((id, what)) = moving.in_flight.take() {
                    self.ex.cancel(id);
                    self.exchanges.remove(&id);
                    match what {
                        Sent::Request(op) => self.events.push_back(PeerEvent::Failed {
                            op,
                            peer: to.clone(),
                            why: TransportFailure::GaveUp,
                        }),
                        Sent::Block => {
                            if let Some(p) = moving.push.as_mut() {
                                p.engine.abort(PushFailure::Protocol(
                                    "the peer moved to an address in use".into(),
                                ));
                            }
                        }
                    }
                }
                there.held.extend(moving.held);
                if there.push.is_none() {
                    there.push = moving.push;
                } else if let Some(mut p) = moving.push {
                    p.engine.abort(PushFailure::Protocol(
                        "the peer moved to an address with a push of its own".into(),
                    ));
                    drain_push(&to, &mut p, &mut self.events);
                }
                self.peers.insert(to.clone(), there);
            }
        }
        self.advance(&to, now);
    }

    fn slot(&mut self, peer: &P) -> &mut Peer<R> {
        self.peers.entry(peer.clone()).or_insert_with(|| Peer {
            in_flight: None,
            held: VecDeque::new(),
            push: None,
        })
    }

    fn peer_of(&self, op: OpId) -> Option<P> {
        self.peers.iter().find_map(|(addr, p)| {
            let mine = p.held.iter().any(|(o, _)| *o == op)
                || p.push.as_ref().is_some_and(|x| x.op == op)
                || p.in_flight.is_some_and(|(_, s)| s == Sent::Request(op));
            mine.then(|| addr.clone())
        })
    }

    fn sent(&mut self, peer: P, id: RequestId, what: Sent) {
        self.slot(&peer).in_flight = Some((id, what));
        self.exchanges.insert(id, peer);
    }

    /// Feeds the message layer's events to their owners. A block's answer
    /// leads to the next block (or a held request) in this same call.
    fn on_exchange_events(&mut self, now: Instant) {
        while let Some(ev) = self.ex.poll_event() {
            let (id, outcome) = match ev {
                ExchangeEvent::Request(r) => {
                    self.events.push_back(PeerEvent::Request(r));
                    continue;
                }
                ExchangeEvent::Response { id, response, .. } => (id, Ok(response)),
                ExchangeEvent::GaveUp { id, .. } => (id, Err(TransportFailure::GaveUp)),
                ExchangeEvent::TimedOut { id, .. } => (id, Err(TransportFailure::TimedOut)),
                ExchangeEvent::Reset { id, .. } => (id, Err(TransportFailure::Reset)),
                ExchangeEvent::Notification { id, peer, response } => {
                    let Some(&op) = self.observing.get(&id) else {
                        continue;
                    };
                    if observe::ends_observation(&response) {
                        self.observing.remove(&id);
                        self.ex.forget_token(id);
                    }
                    self.events
                        .push_back(PeerEvent::Notification { op, peer, response });
                    continue;
                }
            };
            let Some(peer) = self.exchanges.remove(&id) else {
                continue; // cancelled meanwhile
            };
            let Some(slot) = self.peers.get_mut(&peer) else {
                continue;
            };
            match slot.in_flight.take() {
                Some((i, Sent::Block)) if i == id => {
                    if let Some(push) = slot.push.as_mut() {
                        match &outcome {
                            Ok(resp) => push.engine.handle_response(resp, now),
                            Err(why) => push.engine.handle_failure(*why, now),
                        }
                    }
                }
                Some((i, Sent::Request(op))) if i == id => {
                    // RFC 7641 §3.1: the peer registered an observation.
                    if let Ok(resp) = &outcome {
                        if observe::accepted(resp)
                            && self
                                .ex
                                .keep_token(peer.clone(), resp.get_token().to_vec(), id)
                        {
                            self.observing.insert(id, op);
                        }
                    }
                    self.events.push_back(match outcome {
                        Ok(response) => PeerEvent::Response {
                            op,
                            peer: peer.clone(),
                            response,
                        },
                        Err(why) => PeerEvent::Failed {
                            op,
                            peer: peer.clone(),
                            why,
                        },
                    });
                }
                other => {
                    // Not what the peer waits for (cannot happen: ids are
                    // registered with their peer); keep the peer's state.
                    slot.in_flight = other;
                    continue;
                }
            }
            self.advance(&peer, now);
        }
    }

    /// The peer's next transmission when nothing is in flight to it: a held
    /// request first (it waited behind a block), else the push's next
    /// block; a finished push is reported and dropped.
    fn advance(&mut self, peer: &P, now: Instant) {
        loop {
            let Some(slot) = self.peers.get_mut(peer) else {
                return;
            };
            if let Some(push) = slot.push.as_mut() {
                drain_push(peer, push, &mut self.events);
                if push.engine.is_finished() {
                    slot.push = None;
                }
            }
            if slot.in_flight.is_some() {
                return;
            }
            if let Some((op, packet)) = slot.held.pop_front() {
                match self.ex.start_request(peer.clone(), packet, now) {
                    Ok(id) => {
                        self.sent(peer.clone(), id, Sent::Request(op));
                        return;
                    }
                    Err(error) => {
                        self.events.push_back(PeerEvent::Refused {
                            op,
                            peer: peer.clone(),
                            error,
                        });
                        continue;
                    }
                }
            }
            let Some(push) = slot.push.as_mut() else {
                if slot.idle() {
                    self.peers.remove(peer);
                }
                return;
            };
            let block = match push.engine.poll_request(&mut push.image) {
                Ok(Some(req)) => self.ex.start_request(peer.clone(), req, now),
                Ok(None) => {
                    // Finished inside poll_request (block number past
                    // 2^20) or nothing to send: report on the next turn.
                    if push.engine.is_finished() {
                        continue;
                    }
                    push.engine
                        .abort(PushFailure::Protocol("push engine stalled".into()));
                    continue;
                }
                Err(e) => {
                    push.engine.abort(PushFailure::Read(e));
                    continue;
                }
            };
            match block {
                Ok(id) => {
                    self.sent(peer.clone(), id, Sent::Block);
                    return;
                }
                Err(e) => {
                    push.engine.abort(PushFailure::Protocol(format!(
                        "block refused by the message layer: {e}"
                    )));
                    continue;
                }
            }
        }
    }
}

fn drain_push<P: Clone, R>(peer: &P, push: &mut Push<R>, events: &mut VecDeque<PeerEvent<P>>) {
    while let Some(event) = push.engine.poll_event() {
        events.push_back(PeerEvent::Push {
            op: push.op,
            peer: peer.clone(),
            event,
        });
    }
}

/// The final response code of a push from its last event, `None` while it
/// runs: `Ok(code)` for [`PushEvent::Done`], `Err` for [`PushEvent::Failed`].
pub fn push_end(event: &PushEvent) -> Option<Result<Code, PushFailure>> {
    match event {
        PushEvent::Done(c) => Some(Ok(*c)),
        PushEvent::Failed(f) => Some(Err(f.clone())),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coap::block::BlockOpt;
    use crate::coap::MessageType;
    use crate::hex;

    const CHILD: u8 = 1;
    const OTHER: u8 = 2;

    fn engine() -> Peers<u8, Vec<u8>> {
        Peers::new(ExchangeConfig {
            seed: 1,
            first_message_id: Some(0x100),
            first_token: Some(1),
            token_len: 1,
            ..ExchangeConfig::default()
        })
        .unwrap()
    }

    fn at(ms: u64) -> Instant {
        Instant::from_millis(ms)
    }

    fn sent(p: &mut Peers<u8, Vec<u8>>) -> Vec<(u8, Packet)> {
        std::iter::from_fn(|| p.poll_transmit())
            .map(|t| (t.peer, msg::decode(&t.bytes).unwrap()))
            .collect()
    }

    fn events(p: &mut Peers<u8, Vec<u8>>) -> Vec<PeerEvent<u8>> {
        std::iter::from_fn(|| p.poll_event()).collect()
    }

    /// The piggybacked answer to `req` with `code` (and its Block1 echoed).
    fn ack(req: &Packet, code: Code) -> Vec<u8> {
        let mut r = msg::response(code);
        r.header.set_type(MessageType::Acknowledgement);
        r.header.message_id = req.header.message_id;
        r.set_token(req.get_token().to_vec());
        if let Ok(Some(b)) = msg::block1(req) {
            msg::set_block1(&mut r, b);
        }
        msg::encode(&r, 1500).unwrap()
    }

    fn push_cfg(total: u32) -> PushConfig {
        PushConfig {
            szx: 0,
            ..PushConfig::lwm2m_package(total)
        }
    }

    fn block_num(p: &Packet) -> Option<u32> {
        msg::block1(p).unwrap().map(|b: BlockOpt| b.num)
    }

    /// A notification of the observation with `token`: `con` or NON, its
    /// own message id `mid`, sequence `seq`, payload `payload`.
    fn notify(token: &[u8], con: bool, mid: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
        let mut n = observe::notification(seq, payload);
        n.header.set_type(if con {
            MessageType::Confirmable
        } else {
            MessageType::NonConfirmable
        });
        n.header.message_id = mid;
        n.set_token(token.to_vec());
        msg::encode(&n, 1500).unwrap()
    }

    #[test]
    fn an_accepted_observation_notifies_until_cancelled() {
        let mut p = engine();
        let get = observe::register(msg::request(Code::GET, &["5", "0", "3"]));
        let op = p.request(CHILD, get, at(0)).unwrap();
        let (_, req) = sent(&mut p).remove(0);
        let mut answer = observe::notification(7, b"1");
        answer.header.set_type(MessageType::Acknowledgement);
        answer.header.message_id = req.header.message_id;
        answer.set_token(req.get_token().to_vec());
        p.handle_datagram(CHILD, &msg::encode(&answer, 1500).unwrap(), at(5))
            .unwrap();
        assert!(matches!(&events(&mut p)[..], [PeerEvent::Response { op: o, .. }] if *o == op));
        assert_eq!(p.observations(), 1);
        assert_eq!(p.in_flight(), 0, "NSTART is free again");
        // A request to the same child goes out at once, beside the observation.
        p.request(CHILD, msg::request(Code::GET, &["3", "0", "3"]), at(6))
            .unwrap();
        let (_, other) = sent(&mut p).remove(0);
        assert_ne!(other.get_token(), req.get_token());
        // A CON notification: ACKed, handed up with the observation's op.
        p.handle_datagram(
            CHILD,
            &notify(req.get_token(), true, 0x900, 8, b"2"),
            at(10),
        )
        .unwrap();
        let acks = sent(&mut p);
        assert_eq!(acks.len(), 1);
        assert_eq!(msg::mtype(&acks[0].1), MessageType::Acknowledgement);
        let evs = events(&mut p);
        assert!(
            matches!(&evs[..], [PeerEvent::Notification { op: o, response, .. }] if *o == op && response.payload == b"2")
        );
        // Cancelled: the next notification gets RST and no event.
        p.cancel(op, at(20));
        assert_eq!(p.observations(), 0);
        p.handle_datagram(
            CHILD,
            &notify(req.get_token(), false, 0x901, 9, b"2"),
            at(30),
        )
        .unwrap();
        let rst = sent(&mut p);
        assert_eq!(msg::mtype(&rst[0].1), MessageType::Reset);
        assert!(events(&mut p).is_empty());
    }

    #[test]
    fn an_answer_without_observe_registers_nothing_and_an_error_ends_one() {
        let mut p = engine();
        let get = observe::register(msg::request(Code::GET, &["5", "0", "5"]));
        p.request(CHILD, get.clone(), at(0)).unwrap();
        let (_, req) = sent(&mut p).remove(0);
        p.handle_datagram(CHILD, &ack(&req, Code::CONTENT), at(5))
            .unwrap();
        assert_eq!(events(&mut p).len(), 1);
        assert_eq!(p.observations(), 0, "refused: the user polls");
        // Accepted, then a 4.04 notification ends it (RFC 7641 §3.2).
        let op = p.request(CHILD, get, at(10)).unwrap();
        let (_, req) = sent(&mut p).remove(0);
        let mut answer = observe::notification(1, b"0");
        answer.header.set_type(MessageType::Acknowledgement);
        answer.header.message_id = req.header.message_id;
        answer.set_token(req.get_token().to_vec());
        p.handle_datagram(CHILD, &msg::encode(&answer, 1500).unwrap(), at(15))
            .unwrap();
        let _ = events(&mut p);
        assert_eq!(p.observations(), 1);
        let mut gone = msg::response(Code::NOT_FOUND);
        gone.header.set_type(MessageType::NonConfirmable);
        gone.header.message_id = 0x77;
        gone.set_token(req.get_token().to_vec());
        p.handle_datagram(CHILD, &msg::encode(&gone, 1500).unwrap(), at(20))
            .unwrap();
        assert!(matches!(&events(&mut p)[..], [PeerEvent::Notification { op: o, .. }] if *o == op));
        assert_eq!(p.observations(), 0);
    }

    #[test]
    fn a_peer_that_moves_takes_its_request_in_flight_and_its_queue_along() {
        let mut p = engine();
        let a = p
            .request(CHILD, msg::request(Code::GET, &["a"]), at(0))
            .unwrap();
        let b = p
            .request(CHILD, msg::request(Code::GET, &["b"]), at(0))
            .unwrap();
        let old = sent(&mut p);
        assert_eq!(old.len(), 1);
        // The client now sends from 9 (NAT rebinding): "a" goes there at once,
        // with the next message id of the sequence the device knows.
        p.move_peer(&CHILD, 9, at(10));
        let out = sent(&mut p);
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!(out[0].0, 9);
        assert_eq!(
            out[0].1.header.message_id,
            old[0].1.header.message_id.wrapping_add(1)
        );
        assert_eq!(msg::uri_path(&out[0].1).unwrap(), ["a"]);
        // A late answer from the old address matches nothing.
        let _ = p.handle_datagram(CHILD, &ack(&old[0].1, Code::CONTENT), at(11));
        assert!(events(&mut p).is_empty());
        p.handle_datagram(9, &ack(&out[0].1, Code::CONTENT), at(12))
            .unwrap();
        assert!(
            matches!(&events(&mut p)[..], [PeerEvent::Response { op, peer: 9, .. }] if *op == a)
        );
        let out = sent(&mut p);
        assert_eq!(
            (out[0].0, msg::uri_path(&out[0].1).unwrap()),
            (9, vec!["b".to_string()])
        );
        p.handle_datagram(9, &ack(&out[0].1, Code::CONTENT), at(13))
            .unwrap();
        assert!(matches!(&events(&mut p)[..], [PeerEvent::Response { op, .. }] if *op == b));
        // Nothing is retransmitted to the old address.
        p.handle_timeout(at(60_000));
        assert!(sent(&mut p).is_empty());
        assert!(p.peers.is_empty());
    }

    #[test]
    fn one_request_per_peer_the_rest_wait_in_order() {
        let mut p = engine();
        let a = p
            .request(CHILD, msg::request(Code::GET, &["a"]), at(0))
            .unwrap();
        let b = p
            .request(CHILD, msg::request(Code::GET, &["b"]), at(0))
            .unwrap();
        let c = p
            .request(OTHER, msg::request(Code::GET, &["c"]), at(0))
            .unwrap();
        let out = sent(&mut p);
        assert_eq!(out.len(), 2, "one per peer: {out:?}");
        assert_eq!(p.in_flight(), 2);
        let (_, ra) = &out[0];
        p.handle_datagram(CHILD, &ack(ra, Code::CONTENT), at(5))
            .unwrap();
        let ev = events(&mut p);
        assert!(matches!(&ev[..], [PeerEvent::Response { op, .. }] if *op == a));
        let out = sent(&mut p);
        assert_eq!(
            msg::uri_path(&out[0].1).unwrap(),
            ["b"],
            "b went out after a"
        );
        p.cancel(b, at(6));
        p.cancel(c, at(6));
        assert_eq!(p.in_flight(), 0);
        assert_eq!(p.poll_timeout(), None);
        assert!(p.peers.is_empty(), "idle peers are forgotten");
    }

    #[test]
    fn push_sends_the_next_block_from_the_answer_and_lets_a_read_in_between() {
        let mut p = engine();
        let img: Vec<u8> = (0..40).collect();
        let op = p.start_push(CHILD, push_cfg(40), img, at(0)).unwrap();
        let out = sent(&mut p);
        assert_eq!(block_num(&out[0].1), Some(0));
        // A read queued while block 0 is in flight waits for it.
        let read = p
            .request(CHILD, msg::request(Code::GET, &["5", "0", "3"]), at(1))
            .unwrap();
        assert!(sent(&mut p).is_empty(), "NSTART 1: held");
        p.handle_datagram(CHILD, &ack(&out[0].1, Code::CONTINUE), at(2))
            .unwrap();
        let ev = events(&mut p);
        assert_eq!(
            ev,
            vec![PeerEvent::Push {
                op,
                peer: CHILD,
                event: PushEvent::Progress {
                    acked: 16,
                    total: 40,
                    at: at(2)
                }
            }]
        );
        assert_eq!(p.push_acked(op), Some((16, Some(at(2)))));
        let out = sent(&mut p);
        assert_eq!(out.len(), 1);
        assert_eq!(msg::code(&out[0].1), Code::GET, "the held read, alone");
        p.handle_datagram(CHILD, &ack(&out[0].1, Code::CONTENT), at(3))
            .unwrap();
        assert!(matches!(&events(&mut p)[..], [PeerEvent::Response { op: o, .. }] if *o == read));
        // Block 1 follows in the same call as the read's answer.
        let out = sent(&mut p);
        assert_eq!(block_num(&out[0].1), Some(1));
        p.handle_datagram(CHILD, &ack(&out[0].1, Code::CONTINUE), at(4))
            .unwrap();
        let out = sent(&mut p);
        assert_eq!(block_num(&out[0].1), Some(2), "next block, same call");
        p.handle_datagram(CHILD, &ack(&out[0].1, Code::CHANGED), at(5))
            .unwrap();
        let ends: Vec<_> = events(&mut p)
            .into_iter()
            .filter_map(|e| match e {
                PeerEvent::Push { event, .. } => push_end(&event),
                _ => None,
            })
            .collect();
        assert_eq!(ends, vec![Ok(Code::CHANGED)]);
        assert_eq!(p.push_acked(op), None, "finished pushes are dropped");
        assert!(sent(&mut p).is_empty());
        assert_eq!(p.poll_timeout(), None);
    }

    #[test]
    fn a_second_push_to_a_peer_is_refused_and_cancel_stops_the_first() {
        let mut p = engine();
        let op = p
            .start_push(CHILD, push_cfg(40), vec![0; 40], at(0))
            .unwrap();
        assert_eq!(
            p.start_push(CHILD, push_cfg(40), vec![0; 40], at(0)),
            Err(StartPushError::Busy)
        );
        assert_eq!(sent(&mut p).len(), 1);
        p.cancel(op, at(1));
        assert_eq!(p.poll_timeout(), None, "no retransmission left");
        p.handle_timeout(at(100_000));
        assert!(sent(&mut p).is_empty());
        assert!(events(&mut p).is_empty());
        // A push to a silent peer ends as unreachable after RFC 7252's
        // retransmissions.
        p.start_push(OTHER, push_cfg(40), vec![0; 40], at(0))
            .unwrap();
        let mut now = 0;
        while let Some(t) = p.poll_timeout() {
            now = t.as_millis();
            p.handle_timeout(t);
            assert!(now < 200_000);
        }
        let ev = events(&mut p);
        assert!(
            matches!(
                &ev[..],
                [PeerEvent::Push {
                    event: PushEvent::Failed(PushFailure::Unreachable),
                    ..
                }]
            ),
            "{ev:?} at {now}"
        );
        assert_eq!(
            sent(&mut p).len(),
            5,
            "first transmission and 4 retransmissions"
        );
    }

    #[test]
    fn an_unreadable_image_ends_the_push_and_frees_the_peer() {
        let mut p = engine();
        // The image is shorter than announced: block 2 cannot be read.
        p.start_push(CHILD, push_cfg(40), vec![0; 20], at(0))
            .unwrap();
        let out = sent(&mut p);
        p.handle_datagram(CHILD, &ack(&out[0].1, Code::CONTINUE), at(1))
            .unwrap();
        let ev = events(&mut p);
        assert!(
            matches!(
                ev.last(),
                Some(PeerEvent::Push {
                    event: PushEvent::Failed(PushFailure::Read(_)),
                    ..
                })
            ),
            "{ev:?}"
        );
        assert!(sent(&mut p).is_empty());
        p.request(CHILD, msg::request(Code::GET, &["x"]), at(2))
            .unwrap();
        assert_eq!(sent(&mut p).len(), 1, "the peer is free again");
    }

    #[test]
    fn peers_requests_come_out_and_are_answered() {
        let mut p = engine();
        let get = hex::parse("44 01 12 34 01 02 03 04 b2 66 77").unwrap();
        p.handle_datagram(CHILD, &get, at(0)).unwrap();
        let Some(PeerEvent::Request(req)) = p.poll_event() else {
            panic!("no request")
        };
        p.respond(&req, msg::response(Code::NOT_FOUND), at(0))
            .unwrap();
        assert_eq!(sent(&mut p).len(), 1);
        assert_eq!(
            p.request(CHILD, msg::response(Code::CONTENT), at(0)),
            Err(RequestError::NotARequest(Code::CONTENT))
        );
    }
}
