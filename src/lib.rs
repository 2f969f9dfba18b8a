//! otabridge: upgrades the firmware of non-MQTT child devices behind a
//! Huawei Cloud IoTDA gateway.
//!
//! # Layout
//! A module uses the ones above it in this list, never the ones below
//! (`docs/design.md`, "Layout"):
//! - `otabridge_codecs` (the `codecs/` crate): pure wire formats and engines.
//! - [`clock`]: the one clock (tokio's, with wall time from an injected
//!   source), so paused time drives the whole orchestration.
//! - [`config`]: the TOML configuration, validated with errors naming the key.
//! - [`journal`]: the SQLite journal (outbox, children, jobs, packages).
//! - [`metrics`]: the counters the engine and the package store update (a
//!   leaf: phases and transports are plain labels).
//! - [`tls`], [`backoff`]: TLS material and retry pacing, shared by drivers.
//! - [`platform`]: the MQTT session to IoTDA and the durable outbox.
//! - [`package`]: resumable HTTPS downloads into the verified package store.
//! - [`image`]: MCUboot image checks before delivery (hash, signature, version).
//! - [`child`]: the `Child` trait and one driver per transport.
//! - [`gateway`]: the gateway's own upgrade through the box's installer.
//! - [`ota`]: event dispatch and the per-child upgrade jobs.
//! - [`exporter`]: the Prometheus endpoint over the [`metrics`] counters.
//! - [`control`]: the local control API (pause, resume, cancel, retry jobs)
//!   on a Unix socket, and its client for `otabridge jobs`.
//! - [`daemon`]: wires the above together for `otabridge run`.
//! - `sim`: simulators (broker, platform, children) for tests and the demo;
//!   only with the `sim` cargo feature (on by default, off in the Debian
//!   package), like `rumqttd`, `rcgen` and `indicatif`, which only they use.
#![forbid(unsafe_code)]

pub mod child;
pub mod clock;
pub mod config;
pub mod control;
pub mod daemon;
pub mod exporter;
pub mod gateway;
pub mod http;
pub mod image;
pub mod journal;
pub mod metrics;
pub mod ota;
pub mod package;
pub mod platform;
pub mod retry;
#[cfg(feature = "sim")]
pub mod sim;
pub mod tls;
