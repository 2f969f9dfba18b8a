//! Simulators for tests, the demo and integrators' bench setups. Each speaks
//! the real wire protocol over real sockets.
//!
//! - [`broker`]: rumqttd in-process on a free port.
//! - [`coap_child`]: an LwM2M child over CoAP/UDP with socket-seam faults.
//! - [`platform`]: IoTDA's device access point (credentials, TLS, `$oc`
//!   topics, connection cuts) and its application side (events, reports).
//! - [`package_server`]: IoTDA's HTTPS package download (tokens, Range, faults).
//! - [`demo`]: `otabridge demo`, the whole story on an embedded default.
//! - [`testbed`]: broker, edge, platform and a gateway in one call.
//! - [`smp_child`]: an MCUmgr/SMP device on a pty, with faults at the seam.
//! - [`framed_child`]: a device speaking any framed profile on a pty, with faults.
//! - [`serial_noise`]: a noisy line (bit errors, lost and doubled lines,
//!   console text) between a serial driver and a child's pty.

pub mod broker;
pub mod coap_child;
pub mod demo;
pub mod framed_child;
pub mod iotda;
pub mod package_server;
pub mod platform;
pub mod serial_noise;
pub mod smp_child;
pub mod testbed;
