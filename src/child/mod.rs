//! Children: the devices behind the gateway, one driver per transport.
//!
//! The OTA engine sees every child through the [`Child`] trait: read its
//! version, check it is there, deliver a package from a resume offset with
//! progress, activate the new image, and read the version back. Drivers:
//! - [`memory`]: an in-process simulated child (`transport = "sim"`), for
//!   bench tests of the platform link and the engine without hardware.
//! - [`serial`]: MCUmgr/SMP children on a serial port (`protocol = "smp"`).
//! - [`framed`]: children speaking a manufacturer's protocol described by a
//!   profile, on a serial port (`protocol = "framed:<profile>"`).
//!
//! CoAP (LwM2M) and serial (SMP, framed profiles) drivers implement the same
//! trait on top of the `otabridge-codecs` engines.

pub mod framed;
pub mod memory;
pub mod serial;

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use crate::config::{ChildConfig, SerialProtocol, Transport};

/// A boxed future, so that `dyn Child` works across transports.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why a child operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChildError {
    /// The child did not answer in time; trying again later may work.
    #[error("child did not answer: {0}")]
    Unreachable(String),
    /// The child answered with something this driver cannot read.
    #[error("child answered garbage: {0}")]
    Protocol(String),
    /// The child refused or failed the operation for a reason that maps to an
    /// IoTDA result code (iotda.md §9); retrying will not help.
    #[error("{description} (result code {result_code})")]
    Rejected {
        /// IoTDA `result_code`.
        result_code: u16,
        /// The failure description the platform shows.
        description: String,
    },
    /// A local I/O failure (reading the package, opening the port).
    #[error("local I/O: {0}")]
    Io(String),
}

impl ChildError {
    /// Whether a retry (after a backoff) may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, ChildError::Unreachable(_) | ChildError::Protocol(_))
    }
}

/// A verified package, ready to deliver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Package {
    /// The verified file (`packages/<sha256>`).
    pub path: PathBuf,
    /// Its size in bytes.
    pub size: u64,
    /// Its SHA-256, lower-case hex.
    pub sha256: String,
    /// The version it carries (the upgrade's target version).
    pub version: String,
}

/// Called with the number of bytes the child has acknowledged so far.
pub type Progress<'a> = &'a (dyn Fn(u64) + Send + Sync);

/// What the OTA engine needs from any child.
pub trait Child: Send + Sync + std::fmt::Debug {
    /// Its IoTDA device id.
    fn device_id(&self) -> &str;

    /// `coap`, `serial` or `sim`, for logs and `otabridge status`.
    fn transport(&self) -> &'static str;

    /// Reads the running firmware version from the child.
    fn read_version(&self) -> BoxFuture<'_, Result<String, ChildError>>;

    /// Checks the child answers at all (ONLINE/OFFLINE upstream).
    fn health_check(&self) -> BoxFuture<'_, Result<(), ChildError>> {
        Box::pin(async move { self.read_version().await.map(|_| ()) })
    }

    /// Delivers `package`, starting at byte `resume_from` when the transport
    /// can resume (the driver may learn a different offset from the child and
    /// use that). Returns when the child holds the whole image.
    fn deliver<'a>(
        &'a self,
        package: &'a Package,
        resume_from: u64,
        progress: Progress<'a>,
    ) -> BoxFuture<'a, Result<(), ChildError>>;

    /// Makes the delivered image the running one (reboots the child).
    fn activate<'a>(&'a self, package: &'a Package) -> BoxFuture<'a, Result<(), ChildError>>;
}

/// A child that cannot be driven by this build.
#[derive(Debug, thiserror::Error)]
#[error("child {device_id}: transport {transport} is not available yet")]
pub struct Unsupported {
    /// The child.
    pub device_id: String,
    /// Its transport.
    pub transport: &'static str,
}

/// Builds the driver for one configured child.
pub fn from_config(c: &ChildConfig) -> Result<Arc<dyn Child>, Unsupported> {
    match &c.transport {
        Transport::Simulated { version, online } => {
            let child = memory::MemoryChild::new(&c.device_id, version);
            child.set_online(*online);
            Ok(Arc::new(child))
        }
        Transport::Coap { .. } => Err(Unsupported {
            device_id: c.device_id.clone(),
            transport: "coap",
        }),
        Transport::Serial {
            port,
            baud,
            protocol: SerialProtocol::Smp,
            options,
        } => Ok(Arc::new(serial::SerialChild::new(
            &c.device_id,
            port,
            *baud,
            options.clone(),
        ))),
        Transport::Serial {
            port,
            baud,
            protocol: SerialProtocol::Framed(p),
            options,
        } => Ok(Arc::new(framed::FramedChild::new(
            &c.device_id,
            port,
            *baud,
            options.framing,
            Arc::clone(&p.profile),
        ))),
    }
}
