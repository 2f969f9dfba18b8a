//! CoAP for delivering firmware to child devices: the block option codec,
//! the message layer, Block1 push and Block2 serving.
//!
//! Everything is sans-IO. A driver owns one UDP socket and one [`Peers`]:
//! the peer engine, which wraps the message layer ([`Exchanges`]: message
//! ids, tokens, retransmission, deduplication, RFC 7252 §4) and schedules
//! what goes to each peer: NSTART 1, requests held behind a block in
//! flight, and the Block1 pushes themselves. The block-wise engines
//! (RFC 7959):
//! - [`Block1Push`]: the gateway PUTs an image to a child, one block in
//!   flight, reading the bytes by offset so memory stays constant; run by
//!   [`Peers::start_push`];
//! - [`serve_block2`]: the gateway answers a child's Block2 GETs of a
//!   package, statelessly, for pull delivery.
//!
//! [`UpdateProcedure`] drives one LwM2M child through a whole update
//! (version check, pull or push, Execute, version read-back) as a user of
//! the same [`Peers`].
//!
//! # A driver loop, in short
//! ```text
//! socket datagram  -> peers.handle_datagram(peer, bytes, now)
//! timer expired    -> peers.handle_timeout(now); procedure.handle_timeout(now)
//! procedure.poll_action(now):
//!   Request(req) -> peers.request(child, req, now) = op
//!   Push(cfg)    -> peers.start_push(child, cfg, image, now) = op
//!   Cancel       -> peers.cancel(op, now)
//! peers.poll_event():
//!   Response{op}          -> procedure.handle_response(&resp, now)
//!   Failed{op}            -> procedure.handle_failure(why, now)
//!   Push{op, event}       -> procedure.handle_push_event(&event, now)
//!   Request(req) for /fw  -> reply = serve_block2(..); peers.respond(&req, reply.response, now);
//!                            procedure.handle_served(&reply.served, now)
//! peers.poll_transmit() -> socket;  procedure.poll_event() -> journal, reports
//! sleep until min(peers.poll_timeout(), procedure.poll_timeout())
//! ```
//! `codecs/tests/fixture/coap.rs` is such a driver, over recorded bytes;
//! `src/child/coap/network.rs` is the daemon's, with the procedure in the
//! child's task and the peer engine in the network task.
//!
//! # Layout
//! - [`block`]: Block1/Block2 option values on `u32` and the uint codec.
//! - [`msg`]: strict decoding over `coap_lite::Packet`, codes, option access.
//! - [`exchange`]: the confirmable-exchange engine.
//! - [`peer`]: the peer engine (NSTART, held requests, pushes) on top.
//! - [`observe`]: Observe (RFC 7641): registering, notification order.
//! - [`push`]: the Block1 push engine.
//! - [`serve`]: the Block2 server.
//! - [`source`]: reading an image by offset ([`ReadAt`]).
//! - [`update`]: the LwM2M firmware-update procedure for one child.
//!
//! coap-lite is used for the packet layer only: its `BlockValue` wraps
//! silently past block 4095 (docs/protocols/children.md §6.1), so Block options are put in
//! and read back as raw option bytes through [`block::BlockOpt`].

pub mod block;
pub mod exchange;
pub mod msg;
pub mod observe;
pub mod peer;
pub mod push;
pub mod serve;
pub mod source;
pub mod update;

pub use block::{BlockError, BlockOpt};
pub use coap_lite::{CoapOption, MessageType, Packet};
pub use exchange::{
    ExchangeConfig, ExchangeEvent, Exchanges, IncomingRequest, RequestId, Transmit,
};
pub use msg::Code;
pub use observe::Freshness;
pub use peer::{OpId, PeerEvent, Peers, StartPushError};
pub use push::{Block1Push, PushConfig, PushEvent, PushFailure, TransportFailure};
pub use serve::{serve_block2, Block2Reply, PackageInfo, PackageStore, ServeConfig, ServedBlock};
pub use source::{ReadAt, ReadError};
pub use update::{
    content_format, read_request, Action, Delivery, Outcome, UpdateConfig, UpdateEvent,
    UpdateFailure, UpdateProcedure,
};
