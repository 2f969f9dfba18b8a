//! Children: the devices behind the gateway, one driver per transport.
//!
//! The OTA engine sees every child through the [`Child`] trait: read its
//! version, deliver a package from a resume offset with progress, activate
//! the new image, and read the version back. A failure is a [`ChildError`]:
//! its kind, the step, what the device said, and the underlying error.
//! Drivers:
//! - [`memory`]: an in-process simulated child (`transport = "sim"`), for
//!   bench tests of the platform link and the engine without hardware.
//! - [`serial`]: MCUmgr/SMP children on a serial port (`protocol = "smp"`).
//! - [`framed`]: children speaking a manufacturer's protocol described by a
//!   profile, on a serial port (`protocol = "framed:<profile>"`).
//! - [`coap`]: LwM2M children over CoAP/UDP, all on one shared
//!   [`coap::CoapNetwork`] (socket, message layer, Block2 package server).
//!
//! Serial (SMP, framed profiles) drivers implement the same trait on top of
//! the `otabridge-codecs` engines, all run on the shared serial link
//! ([`link`]: port, package reads, one driver loop).

pub mod bus;
pub mod coap;
mod error;
pub mod framed;
pub mod link;
#[cfg(feature = "sim")]
pub mod memory;
pub mod roster;
pub mod serial;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::config::{ChildConfig, CoapConfig, SerialProtocol, Transport};
use otabridge_codecs::version::Policy;

pub use bus::{Buses, Purpose};
pub use error::{Cause, ChildError, ErrorKind, Said, Step};
pub use roster::Roster;

/// A boxed future, so that `dyn Child` works across transports.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The verified package a child is given; it lives in [`crate::package`]
/// (the layer below `child`) and is re-exported here for the drivers.
pub use crate::package::Package;

/// Called with the number of bytes the child has acknowledged so far.
pub type Progress<'a> = &'a (dyn Fn(u64) + Send + Sync);

/// What the OTA engine needs from any child.
///
/// # Who retransmits, retries, times out, verifies and maps codes
///
/// One owner per concern and layer; a layer does not redo what the layer
/// below owns (issue 12). Time is tokio's (`crate::clock`), so paused time
/// drives all of it.
///
/// | Concern | Engine in `codecs` (per request) | Driver (per operation) | `ota` job (per step) |
/// |---|---|---|---|
/// | Retransmits a lost request or answer | CoAP: the confirmable exchange (RFC 7252 §4.2, `[coap]` timers); SMP: `timeout_ms` × `retries` per request; framed: the profile's `timeout_ms`/`retries` | nothing | nothing |
/// | Retries an operation that failed | LwM2M: the update procedure resets /5/0/1 and delivers again (`max_attempts`), only after a failure the device reported (/5/0/5 = 2, 4 or 5, the push restarted too often, its `download_timeout`); never silence | nothing else: an error ends the operation | a failed step after a backoff (`[ota] max_retries`, `retry_min_ms`, `retry_max_ms`), only when `ota::verdict` says retrying may help (silence, garbled, link gone; never a device's refusal). No failure is retried by both columns |
/// | Times out | each request (above); LwM2M: `download_timeout` (the delivery to State 2); SMP: the reboot (`reboot_wait_ms`, `reboot_timeout_ms`). LwM2M's wait for the new version ends at the job's activation deadline ([`Child::activate_by`]); its `update_timeout` applies only to a caller without one | the serial port's reopen (`reopen_timeout_ms`) | the delivery's no-progress watchdog fed by [`Child::acked_at`] and `progress` (`first_chunk_timeout_secs`, `chunk_timeout_secs`); a version read (`version_read_timeout_secs`); the activation's deadline (`activation_timeout_secs`), handed to the driver ([`Child::activate_by`]) instead of a timer of its own around it; the job's deadline. Every step's timeout starts once its bus turn came ([`Buses`]) |
/// | Verifies | the version after the reboot (SMP state read; LwM2M /3/0/3) under the child's [`Policy`] | passes the engine's verdict on | reads the version back (`verifying`) and confirms ([`Child::confirm`], `confirming`) before success |
/// | Maps to an IoTDA code | nothing | classifies what the device said into a [`Cause`] | `ota::verdict`, the only place: code, description, retry, cause |
pub trait Child: Send + Sync + std::fmt::Debug {
    /// Its IoTDA device id.
    fn device_id(&self) -> &str;

    /// `coap`, `serial` or `sim`, for logs and `otabridge status`.
    fn transport(&self) -> &'static str;

    /// How this child's versions are compared with a target: the policy its
    /// engine verifies with, and the one the OTA job decides and reports by
    /// (the child's `version_match`, docs/config.md).
    fn version_policy(&self) -> Policy;

    /// Reads the running firmware version from the child.
    fn read_version(&self) -> BoxFuture<'_, Result<String, ChildError>>;

    /// Delivers `package`, starting at byte `resume_from` when the transport
    /// can resume (the driver may learn a different offset from the child and
    /// use that). Returns when the child holds the whole image.
    fn deliver<'a>(
        &'a self,
        package: &'a Package,
        resume_from: u64,
        progress: Progress<'a>,
    ) -> BoxFuture<'a, Result<(), ChildError>>;

    /// Pre-flight before a delivery (issue 14, docs/images.md): whether the
    /// child can take `package` from byte `resume_from` now, from what it
    /// reports about itself (battery, radio signal, free memory). A refusal
    /// describes a state that may pass (a battery charges, a signal comes
    /// back): `ota` asks again, backing off, until the event's deadline and
    /// reports the last refusal if it never passes. A reading the child does
    /// not expose is no refusal. The default: ready.
    fn ready<'a>(
        &'a self,
        package: &'a Package,
        resume_from: u64,
    ) -> BoxFuture<'a, Result<(), ChildError>> {
        let _ = (package, resume_from);
        Box::pin(async { Ok(()) })
    }

    /// Makes the delivered image the running one (reboots the child). It
    /// does not make it permanent: that is [`Child::confirm`], a step of
    /// the job's own.
    fn activate<'a>(&'a self, package: &'a Package) -> BoxFuture<'a, Result<(), ChildError>>;

    /// [`Child::activate`], finishing by `deadline`: the job's activation
    /// deadline (`[ota] activation_timeout_secs` from the activation's
    /// start), the one timer of the activation. A driver whose engine
    /// times the activation itself (LwM2M: the wait for the new version)
    /// hands `deadline` to it, so that the engine ends there with what it
    /// saw instead of racing a timer of the job's. The default runs
    /// [`Child::activate`] until `deadline` and is then
    /// [`ErrorKind::Unreachable`] in [`Step::Activate`].
    fn activate_by<'a>(
        &'a self,
        package: &'a Package,
        deadline: tokio::time::Instant,
    ) -> BoxFuture<'a, Result<(), ChildError>> {
        Box::pin(async move {
            let within = deadline.saturating_duration_since(crate::clock::now());
            match tokio::time::timeout_at(deadline, self.activate(package)).await {
                Ok(r) => r,
                Err(_) => Err(ChildError::unreachable(
                    Step::Activate,
                    format!("activation did not finish within {} s", within.as_secs()),
                )),
            }
        })
    }

    /// Makes the running image permanent when it is `target`, for
    /// transports whose bootloader reverts an image that was not confirmed
    /// (MCUboot's test boot over SMP: docs/protocols/children.md §4.3).
    /// The job calls it after the version read back matched the target,
    /// and again after a restart: it must be idempotent (a confirmed image
    /// is success at once) and must not confirm another version (a
    /// [`Step::Confirm`] refusal instead). The default, for transports
    /// without a confirm, does nothing.
    fn confirm<'a>(&'a self, target: &'a str) -> BoxFuture<'a, Result<(), ChildError>> {
        let _ = target;
        Box::pin(async { Ok(()) })
    }

    /// The health-gated confirm's settings (issue 15 item 2; the child's
    /// `health_*` keys), when its confirm waits for health probes: the job
    /// then runs [`Child::probe`] every `interval` for `period` after the
    /// verification and confirms only if every probe passed, else it runs
    /// [`Child::revert`]. The default: none (confirm at once).
    fn health(&self) -> Option<&crate::config::health::HealthCheck> {
        None
    }

    /// One health probe of the running `target` image before its confirm:
    /// it must still run, unconfirmed (the old image again means the child
    /// rebooted by itself and the bootloader reverted it: a crash loop),
    /// and the configured health command must succeed. Any failure is a
    /// failed health check ([`Step::Probe`]); the job does not retry it.
    /// The default passes.
    fn probe<'a>(&'a self, target: &'a str) -> BoxFuture<'a, Result<(), ChildError>> {
        let _ = target;
        Box::pin(async { Ok(()) })
    }

    /// After a failed health check: has the bootloader revert the
    /// unconfirmed `target` image (SMP: a reset; nothing when the child
    /// already runs another image) and reads back what runs then. Returns
    /// that version and whether it is no longer the target; never
    /// confirms. Retried by the job like any step ([`Step::Revert`]). The
    /// default reads the version.
    fn revert<'a>(&'a self, target: &'a str) -> BoxFuture<'a, Result<(String, bool), ChildError>> {
        Box::pin(async move {
            let v = self.read_version().await?;
            let reverted = !self.version_policy().same(target, &v);
            Ok((v, reverted))
        })
    }

    /// The medium this child shares with others when only one of them can
    /// use it at a time (a serial port, an RS-485 bus), or `None`. Every
    /// caller takes a turn on it from [`Buses`] (jobs, the reconnect
    /// announcement, `version_query`) and starts its timeouts only once
    /// the bus is its own, so a child queued behind a long transfer on its
    /// bus neither times out nor is announced OFFLINE for the wait.
    fn bus(&self) -> Option<String> {
        None
    }

    /// The liveness of the running delivery: the bytes the child has
    /// acknowledged so far and when the last acknowledgement came (tokio
    /// time), updated for every acknowledged block or chunk however seldom
    /// the driver calls `progress`. The OTA engine's no-progress watchdog
    /// is fed by it. `None` (the default) when no delivery runs or when the
    /// driver calls `progress` for every acknowledgement anyway (the engine
    /// then takes the time of each call).
    fn acked_at(&self) -> Option<(u64, tokio::time::Instant)> {
        None
    }

    /// Requests this driver has sent again since it was created because the
    /// child did not answer in time or answered with an error it could
    /// retry (chunk retransmissions, repeated reads). Read by the metrics
    /// endpoint; a counter, so it only grows.
    fn chunk_retries(&self) -> u64 {
        0
    }

    /// The child's presence as its transport learns it without asking: an
    /// LwM2M client's registration (`true` after Register and Update,
    /// `false` after De-register and lifetime expiry; docs/coap.md). The
    /// daemon reports ONLINE/OFFLINE upstream when it changes. `None`
    /// (the default): the transport only knows by asking, at connect.
    /// (Added by issue 13, helper lwm2m.)
    fn presence(&self) -> Option<tokio::sync::watch::Receiver<bool>> {
        None
    }

    /// A child that cannot be reached now and comes back by itself: an
    /// LwM2M client in queue mode, asleep between its Updates
    /// (docs/coap.md). Gives what it waits for, in words for
    /// `otabridge status` and the log, and a future that resolves once the
    /// child is reachable; the OTA engine waits on it, visibly, before a
    /// step that must reach the child, with the job's deadline running.
    /// `None` (the default): reachable now, as far as the driver knows.
    /// (Added by issue 13, helper lwm2m2.)
    fn asleep(&self) -> Option<(String, BoxFuture<'_, ()>)> {
        None
    }
}

/// Sleeps until `t`, or forever without one: the timer arm of a `select!`
/// over an engine's optional next timeout.
pub(crate) async fn sleep_until_opt(t: Option<tokio::time::Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// Why [`from_config`] could not build a child's driver.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The shared CoAP endpoint (`coap.listen`) could not be opened.
    #[error(transparent)]
    Coap(#[from] coap::BindError),
}

/// What drivers share across children: the CoAP network is created on the
/// first CoAP child and reused by every other one (one socket, one message
/// layer, one Block2 server); serial children on one device share its port
/// ([`link::port::Ports`]), so children on an RS-485 bus take turns.
#[derive(Debug)]
pub struct Networks {
    coap_options: coap::NetworkOptions,
    coap_child: coap::ChildOptions,
    coap: Option<coap::CoapNetwork>,
    serial: link::port::Ports,
}

impl Networks {
    /// Networks opened on demand from `[coap]`.
    pub fn new(c: &CoapConfig) -> Self {
        Networks {
            coap_options: coap::NetworkOptions::from_config(c),
            coap_child: coap::ChildOptions::from_config(c),
            coap: None,
            serial: link::port::Ports::default(),
        }
    }

    /// [`Networks::new`] keeping LwM2M registrations in the journal of
    /// `state_dir` (the daemon: a restart does not forget who registered).
    pub fn with_state_dir(c: &CoapConfig, state_dir: &std::path::Path) -> Self {
        let mut o = coap::NetworkOptions::from_config(c);
        o.state_dir = Some(state_dir.to_owned());
        Networks {
            coap_options: o,
            coap_child: coap::ChildOptions::from_config(c),
            coap: None,
            serial: link::port::Ports::default(),
        }
    }

    /// Networks that use an already open CoAP network and these child
    /// settings (tests, the demo).
    pub fn with_coap(net: coap::CoapNetwork, child: coap::ChildOptions) -> Self {
        Networks {
            coap_options: coap::NetworkOptions::new(net.local_addr(), 0),
            coap_child: child,
            coap: Some(net),
            serial: link::port::Ports::default(),
        }
    }

    /// The CoAP network, if a child opened it.
    pub fn opened_coap(&self) -> Option<coap::CoapNetwork> {
        self.coap.clone()
    }

    /// The timing of the CoAP children built here.
    pub fn coap_child_options(&self) -> coap::ChildOptions {
        self.coap_child.clone()
    }

    /// The CoAP network, bound on first use (needs a tokio runtime).
    pub fn coap(&mut self) -> Result<coap::CoapNetwork, coap::BindError> {
        if let Some(n) = &self.coap {
            return Ok(n.clone());
        }
        let n = coap::CoapNetwork::bind(self.coap_options.clone())?;
        self.coap = Some(n.clone());
        Ok(n)
    }
}

/// Builds the driver for one configured child; CoAP children share the
/// network in `nets`.
pub fn from_config(c: &ChildConfig, nets: &mut Networks) -> Result<Arc<dyn Child>, BuildError> {
    let policy = c.version_match;
    match &c.transport {
        #[cfg(feature = "sim")]
        Transport::Simulated { version, online } => {
            let child = memory::MemoryChild::new(&c.device_id, version).with_version_policy(policy);
            child.set_online(*online);
            Ok(Arc::new(child))
        }
        Transport::Coap {
            address,
            delivery,
            accept,
        } => {
            let net = nets.coap()?;
            if let crate::config::CoapAddress::Endpoint(e) = address {
                net.allow_endpoint(e);
            }
            Ok(Arc::new(
                coap::CoapChild::new(
                    &c.device_id,
                    address.clone(),
                    *delivery,
                    net,
                    nets.coap_child.clone(),
                )
                .with_version_policy(policy)
                .with_accept(*accept)
                .with_preflight(coap::preflight::Preflight::from_config(&c.image)),
            ))
        }
        Transport::Serial {
            port,
            baud,
            protocol: SerialProtocol::Smp,
            options,
        } => {
            let port = nets
                .serial
                .get(port, link::port::PortSettings::for_child(*baud, options));
            Ok(Arc::new(
                serial::SerialChild::on_port(&c.device_id, port, options.clone())
                    .with_version_policy(policy),
            ))
        }
        Transport::Serial {
            port,
            baud,
            protocol: SerialProtocol::Framed(p),
            options,
        } => {
            let port = nets
                .serial
                .get(port, link::port::PortSettings::for_child(*baud, options));
            Ok(Arc::new(
                framed::FramedChild::on_port(&c.device_id, port, Arc::clone(&p.profile))
                    .with_version_policy(policy),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Delivery;

    #[tokio::test]
    async fn coap_children_share_one_network_opened_on_demand() {
        let coap = CoapConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            ..CoapConfig::default()
        };
        let mut nets = Networks::new(&coap);
        #[cfg(feature = "sim")]
        {
            let sim = ChildConfig {
                device_id: "s".into(),
                version_match: Policy::Exact,
                activation_window: None,
                transport: Transport::Simulated {
                    version: "1".into(),
                    online: true,
                },
                image: crate::config::ChildImage::default_for(false),
            };
            let s = from_config(&sim, &mut nets).unwrap();
            assert_eq!(
                s.version_policy(),
                Policy::Exact,
                "the child's version_match"
            );
        }
        assert!(nets.coap.is_none(), "no CoAP child, no socket");
        let coap_child = |id: &str, port: u16| ChildConfig {
            device_id: id.into(),
            version_match: Policy::default(),
            activation_window: None,
            transport: Transport::Coap {
                address: crate::config::CoapAddress::Static(([127, 0, 0, 1], port).into()),
                delivery: Delivery::Pull,
                accept: None,
            },
            image: crate::config::ChildImage::default_for(false),
        };
        let a = from_config(&coap_child("a", 5701), &mut nets).unwrap();
        let first = nets.coap().unwrap().local_addr();
        let b = from_config(&coap_child("b", 5702), &mut nets).unwrap();
        assert_eq!(nets.coap().unwrap().local_addr(), first);
        assert_eq!((a.transport(), b.transport()), ("coap", "coap"));
        assert_eq!(a.version_policy(), Policy::Normalised);
        // A second network on the same address cannot bind: the error names
        // the key.
        let mut clash = Networks::new(&CoapConfig {
            listen: first,
            ..CoapConfig::default()
        });
        let e = from_config(&coap_child("c", 5703), &mut clash).unwrap_err();
        assert!(e.to_string().starts_with("coap.listen"), "{e}");
    }
}
