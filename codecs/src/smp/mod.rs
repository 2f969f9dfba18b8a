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
//! - [`health`]: the health-gated confirm's probe and revert (issue 15).
//! - [`read`]: the one-request read engine the two reads below share.
//! - [`state`]: one image state read (the running version).
//! - [`slot_info`]: the slot sizes, for the pre-flight size check.
//! - [`result`]: SMP and engine errors mapped to IoTDA result codes.
//! - [`sim`]: a device-side SMP engine with Zephyr's rules, for simulators.
//!
//! # Driving an engine over a serial port
//! The engines ([`upload::Upload`], [`activate::Activate`],
//! [`state::StateRead`], [`slot_info::SlotInfoRead`]) implement [`crate::engine::Engine`] with whole SMP
//! messages as input and output. Wrapped in a [`serial::Console`], which
//! frames their messages into lines and decodes lines back, they run in
//! the same driver loop as any other engine on a serial line (the call
//! order is in [`crate::engine`]).

mod cbor;
mod exchange;

pub mod activate;
pub mod header;
pub mod health;
pub mod message;
pub mod read;
pub mod result;
pub mod serial;
pub mod sim;
pub mod slot_info;
pub mod state;
pub mod upload;

pub use cbor::BodyError;

pub use header::{Header, HeaderError, Op, SmpVersion, HEADER_LEN};
pub use message::SmpErr;
