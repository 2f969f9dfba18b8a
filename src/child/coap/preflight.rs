//! The LwM2M pre-flight (issue 14, docs/images.md "Pre-flight from the
//! child"): before a delivery, the readings a child exposes about itself,
//! each against its configured minimum:
//! - `/3/0/9` Battery Level (integer, percent; OMA 3.xml) below
//!   `image.min_battery` → [`Cause::LowBattery`] (result 4);
//! - `/3/0/10` Memory Free (integer, KiB; 3.xml: "available amount of
//!   storage space which can store data and software") smaller than what
//!   is left to send (a resumed push needs only the rest: the part the
//!   child holds may already be counted as used), with
//!   `image.check_memory_free` → [`Cause::NoStorage`] (5);
//! - `/4/0/2` Radio Signal Strength (integer, dBm; OMA 4.xml, Connectivity
//!   Monitoring) below `image.min_signal_dbm` → [`Cause::PoorSignal`] (2).
//!
//! Each is one GET through the child's ordinary request path, with the
//! child's Accept (issue 14; `ContentFormat::accept`), its answer read in
//! whatever content format it comes in (`lwm2m::content`). A reading the
//! child does not give (an error code, no answer, a value that is not an
//! integer) is no refusal: the check is "where the child exposes it", and
//! the delivery finds out about a child that is gone.

use otabridge_codecs::coap::{content_format, msg, read_request, Code};
use otabridge_codecs::lwm2m::{self, Path};
use tracing::debug;

use super::CoapChild;
use crate::child::{Cause, ChildError, Package, Step};

/// `/3/0/9` Battery Level.
const BATTERY: Path = Path {
    object: 3,
    instance: 0,
    resource: 9,
};
/// `/3/0/10` Memory Free.
const MEMORY_FREE: Path = Path {
    object: 3,
    instance: 0,
    resource: 10,
};
/// `/4/0/2` Radio Signal Strength.
const SIGNAL: Path = Path {
    object: 4,
    instance: 0,
    resource: 2,
};

/// The pre-flight a LwM2M child gets (its `image` table's keys).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Preflight {
    /// Least battery level, percent.
    pub min_battery: Option<u8>,
    /// Weakest radio signal, dBm.
    pub min_signal_dbm: Option<i32>,
    /// Whether free memory must hold the image.
    pub check_memory_free: bool,
}

impl Preflight {
    /// From a child's `image` table.
    pub fn from_config(c: &crate::config::ChildImage) -> Self {
        Preflight {
            min_battery: c.min_battery,
            min_signal_dbm: c.min_signal_dbm,
            check_memory_free: c.check_memory_free,
        }
    }
}

impl CoapChild {
    /// One integer reading, or `None` when the child does not give it.
    async fn reading(&self, path: Path) -> Option<i64> {
        let resp = match self
            .request(read_request(path, Some(self.accept(false))))
            .await
        {
            Ok(r) => r,
            Err(e) => {
                debug!(child = %self.device_id, %path, "pre-flight read: {e}");
                return None;
            }
        };
        let code = msg::code(&resp);
        if code != Code::CONTENT {
            debug!(child = %self.device_id, %path, %code, "pre-flight read: not exposed");
            return None;
        }
        lwm2m::read_integer(content_format(&resp), path, &resp.payload)
            .map_err(|e| debug!(child = %self.device_id, %path, "pre-flight read: {e}"))
            .ok()
    }

    /// The pre-flight; see the module documentation.
    pub(super) async fn preflight(
        &self,
        package: &Package,
        resume_from: u64,
    ) -> Result<(), ChildError> {
        let p = self.preflight;
        let step = Step::Deliver {
            offset: resume_from,
        };
        if let Some(min) = p.min_battery {
            if let Some(level) = self.reading(BATTERY).await {
                if level < i64::from(min) {
                    return Err(ChildError::refused(
                        Cause::LowBattery,
                        step,
                        format!("low battery: the child reports {level} % ({BATTERY}), the minimum is {min} %"),
                    )
                    .with_said(format!("{BATTERY} = {level}"), None));
                }
            }
        }
        if let Some(min) = p.min_signal_dbm {
            if let Some(dbm) = self.reading(SIGNAL).await {
                if dbm < i64::from(min) {
                    return Err(ChildError::refused(
                        Cause::PoorSignal,
                        step,
                        format!("poor signal: the child reports {dbm} dBm ({SIGNAL}), the minimum is {min} dBm"),
                    )
                    .with_said(format!("{SIGNAL} = {dbm}"), None));
                }
            }
        }
        if p.check_memory_free {
            if let Some(kib) = self.reading(MEMORY_FREE).await {
                let need = package.size.saturating_sub(resume_from).div_ceil(1024);
                if kib < 0 || (kib as u64) < need {
                    return Err(ChildError::refused(
                        Cause::NoStorage,
                        step,
                        format!(
                            "not enough memory: the child reports {kib} KiB free ({MEMORY_FREE}), the image needs {need} KiB more"
                        ),
                    )
                    .with_said(format!("{MEMORY_FREE} = {kib}"), None));
                }
            }
        }
        Ok(())
    }
}
