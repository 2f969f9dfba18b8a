//! CoAP for delivering firmware to child devices: the block option codec,
//! the message layer, Block1 push and Block2 serving.
//!
//! Everything is sans-IO. A driver owns one UDP socket and one
//! [`Exchanges`] (the message layer: message ids, tokens, retransmission,
//! deduplication, RFC 7252 §4). Above it sit two block-wise engines
//! (RFC 7959):
//! - [`Block1Push`]: the gateway PUTs an image to a child, one block in
//!   flight, reading the bytes by offset so memory stays constant;
//! - [`serve_block2`]: the gateway answers a child's Block2 GETs of a
//!   package, statelessly, for pull delivery.
//!
//! [`UpdateProcedure`] drives one LwM2M child through a whole update
//! (version check, pull or push, Execute, version read-back) on the same
//! [`Exchanges`].
//!
//! # A driver loop, in short
//! ```text
//! socket datagram  -> exchanges.handle_datagram(peer, bytes, now)
//! timer expired    -> exchanges.handle_timeout(now); procedure.handle_timeout(now)
//! procedure.poll_request(now, image) -> exchanges.start_request(child, req, now) = id
//! exchanges.poll_event():
//!   Response{id}          -> procedure.handle_response(&resp, now)
//!   GaveUp/TimedOut/Reset -> procedure.handle_failure(why, now)
//!   Request(req) for /fw  -> reply = serve_block2(..); exchanges.respond(&req, reply.response, now);
//!                            procedure.note_served(&reply.served)
//! exchanges.poll_transmit() -> socket;  procedure.poll_event() -> journal, reports
//! sleep until min(exchanges.poll_timeout(), procedure.poll_timeout())
//! ```
//! `codecs/tests/fixtures_coap.rs` is such a driver, over recorded bytes.
//!
//! # Layout
//! - [`block`]: Block1/Block2 option values on `u32` and the uint codec.
//! - [`msg`]: strict decoding over `coap_lite::Packet`, codes, option access.
//! - [`exchange`]: the confirmable-exchange engine.
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
pub use push::{Block1Push, PushConfig, PushEvent, PushFailure, TransportFailure};
pub use serve::{serve_block2, Block2Reply, PackageInfo, PackageStore, ServeConfig, ServedBlock};
pub use source::{ReadAt, ReadError};
pub use update::{Delivery, Outcome, UpdateConfig, UpdateEvent, UpdateFailure, UpdateProcedure};
