//! MCUmgr SMP (Simple Management Protocol): the header, CBOR bodies, serial
//! framing, and the engines that upload and activate an image on a child.
//!
//! Sources: zephyr `doc/services/device_mgmt/smp_protocol.rst`,
//! `smp_groups/smp_group_0.rst`, `smp_groups/smp_group_1.rst`,
//! `smp_transport.rst`; the Zephyr server in
//! `subsys/mgmt/mcumgr/grp/img_mgmt/src/`; docs/protocols/children.md §4 summarises them.
//!
//! # Layout
//! - [`header`]: the 8-byte header, groups, command ids.
//! - [`message`]: CBOR request and response bodies, v1 `rc` / v2 `err` errors.
//! - [`serial`]: `len | message | CRC` in base64 lines, streaming decoder.
//! - [`upload`]: the image upload engine, driven by the device's `off`.
//! - [`activate`]: test, reset, read back the version, confirm.
//! - [`slot_info`]: the slot sizes, for the pre-flight size check.
//! - [`state`]: one image state read (the running version).
//! - [`result`]: SMP and engine errors mapped to IoTDA result codes.
//! - [`sim`]: a device-side SMP engine with Zephyr's rules, for simulators.
//!
//! # Driving an engine over a serial port
//! Engines speak whole SMP messages; the driver frames them:
//! ```text
//! loop {
//!     while let Some(msg) = engine.poll_transmit() { port.write_all(&serial::encode(&msg, serial::MAX_LINE)) }
//!     while let Some(req) = upload.poll_read() { upload.handle_data(req.offset, &file[req], now) }
//!     while let Some(ev) = engine.poll_event() { report(ev) }
//!     wait for port bytes or engine.poll_timeout():
//!       bytes   → decoder.handle_bytes / poll_event → engine.handle_message(&msg, now)
//!       timeout → engine.handle_timeout(now)
//! }
//! ```

mod cbor;
mod exchange;

pub mod activate;
pub mod header;
pub mod message;
pub mod result;
pub mod serial;
pub mod sim;
pub mod slot_info;
pub mod state;
pub mod upload;

pub use cbor::BodyError;

use crate::time::Instant;

/// What the upload and activation engines have in common, so one serial
/// driver loop runs either (the call order is on each engine's type).
pub trait Engine {
    /// The engine's event type.
    type Event;
    /// A message from the device (header + CBOR, unframed).
    fn handle_message(&mut self, msg: &[u8], now: Instant);
    /// Call when `now` reaches [`Engine::poll_timeout`].
    fn handle_timeout(&mut self, now: Instant);
    /// The next message to write.
    #[must_use]
    fn poll_transmit(&mut self) -> Option<Vec<u8>>;
    /// When to call [`Engine::handle_timeout`].
    #[must_use]
    fn poll_timeout(&self) -> Option<Instant>;
    /// The next event.
    #[must_use]
    fn poll_event(&mut self) -> Option<Self::Event>;
    /// Whether the engine ended (done or failed).
    fn is_finished(&self) -> bool;
    /// Requests sent again so far (after timeouts, rewinds, restarts); a
    /// counter for metrics.
    fn retries(&self) -> u64 {
        0
    }
}

macro_rules! impl_engine {
    ($t:ty, $ev:ty) => {
        impl Engine for $t {
            type Event = $ev;
            fn handle_message(&mut self, msg: &[u8], now: Instant) {
                <$t>::handle_message(self, msg, now)
            }
            fn handle_timeout(&mut self, now: Instant) {
                <$t>::handle_timeout(self, now)
            }
            fn poll_transmit(&mut self) -> Option<Vec<u8>> {
                <$t>::poll_transmit(self)
            }
            fn poll_timeout(&self) -> Option<Instant> {
                <$t>::poll_timeout(self)
            }
            fn poll_event(&mut self) -> Option<$ev> {
                <$t>::poll_event(self)
            }
            fn is_finished(&self) -> bool {
                <$t>::is_finished(self)
            }
            fn retries(&self) -> u64 {
                <$t>::retries(self)
            }
        }
    };
}

impl_engine!(upload::Upload, upload::UploadEvent);
impl_engine!(activate::Activate, activate::ActivateEvent);
impl_engine!(state::StateRead, state::StateReadEvent);
impl_engine!(slot_info::SlotInfoRead, slot_info::SlotInfoEvent);
pub use header::{Header, HeaderError, Op, SmpVersion, HEADER_LEN};
pub use message::SmpErr;
