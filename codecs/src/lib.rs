//! otabridge's wire formats and protocol engines.
//!
//! Everything here is pure: bytes and time go in, bytes, timeouts and events
//! come out. There is no runtime, socket, file or clock dependency in this
//! crate's `Cargo.toml`, and `clippy.toml` forbids reading the clock or
//! sleeping. Engines follow the sans-IO shape of `quinn-proto`: `handle_*`
//! methods take input and `now`, `poll_*` methods give output, and each
//! engine documents the order a driver calls them in.
//!
//! # Layout
//! - [`time`]: the crate's own instant type, so tests construct any moment.
//! - [`rng`]: a small seeded generator for message ids, tokens and jitter.
//! - [`hex`]: hex with `#` comments, the byte notation of fixture files.
//! - [`engine`]: the trait the serial-delivered engines share, and the
//!   image-read requests of every engine that sends an image.
//! - [`iotda`]: IoTDA topics, event envelope, `$ota` and
//!   `$sub_device_manager` payloads, MQTT credentials.
//! - [`coap`]: Block1/Block2 option codec, confirmable exchanges, Block1
//!   push, Block2 serving.
//! - [`lwm2m`]: the Firmware Update object /5 and the Device object /3.
//! - [`smp`]: MCUmgr SMP header, CBOR bodies, serial framing, image upload.
//! - [`framed`]: manufacturers' own serial protocols described by a profile.
//! - [`mcuboot`]: MCUboot image header and TLV areas, the image hash.
//! - [`download`]: the decisions of a resumable HTTP package download
//!   (Range/If-Range, status classification, checkpoints).
//! - [`version`]: firmware version normalisation and comparison.
#![forbid(unsafe_code)]

pub mod coap;
pub mod download;
pub mod engine;
pub mod framed;
pub mod hex;
pub mod iotda;
pub mod lwm2m;
pub mod mcuboot;
pub mod rng;
pub mod smp;
pub mod time;
pub mod version;
