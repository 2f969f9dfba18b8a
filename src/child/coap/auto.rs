//! `delivery = "auto"` (issue 13 item 6): the child's Firmware Update
//! object says how it takes a package (OMA 5.xml, docs/protocols/children.md §3):
//! - `/5/0/9` Delivery Method: 0 pull only, 1 push only, 2 both;
//! - `/5/0/8` Firmware Update Protocol Support (multiple): 0 CoAP, 1 CoAPS,
//!   2 HTTP, 3 HTTPS, 4 CoAP over TCP, 5 CoAP over TLS. The gateway serves
//!   `coap://` only, so pull needs 0 listed (5.xml: "the server must not
//!   write a URI with an unsupported scheme").
//!
//! | /5/0/9 | /5/0/8 lists 0 | chosen |
//! |---|---|---|
//! | 0 pull only | yes or unreadable | pull |
//! | 0 pull only | no | pull (the only way it takes a package; its `/5/0/5` will say 9 if it cannot) |
//! | 1 push only | any | push |
//! | 2 both | yes or unreadable | pull (preferred: resumable, docs/coap.md) |
//! | 2 both | no | push |
//! | unreadable | yes or unreadable | pull (the default of static children) |
//! | unreadable | no | push |

use otabridge_codecs::coap::{content_format, msg, read_request, Code};
use otabridge_codecs::lwm2m::{self, DeliveryMethod, Path};
use tracing::{debug, info};

use super::CoapChild;
use crate::config::Delivery;

/// The decision of the table above.
pub(crate) fn decide(method: Option<DeliveryMethod>, coap_listed: Option<bool>) -> Delivery {
    match (method, coap_listed) {
        (Some(DeliveryMethod::Push), _) => Delivery::Push,
        (Some(DeliveryMethod::Pull), _) => Delivery::Pull,
        (_, Some(false)) => Delivery::Push,
        _ => Delivery::Pull,
    }
}

impl CoapChild {
    /// One read of `path`, its Content answer's payload and format, or
    /// `None` (not exposed, no answer).
    async fn read_raw(
        &self,
        path: Path,
        multiple: bool,
    ) -> Option<(Option<lwm2m::ContentFormat>, Vec<u8>)> {
        let resp = self
            .request(read_request(path, Some(self.accept(multiple))))
            .await
            .map_err(|e| debug!(child = %self.device_id, %path, "delivery method read: {e}"))
            .ok()?;
        if msg::code(&resp) != Code::CONTENT {
            debug!(child = %self.device_id, %path, code = %msg::code(&resp), "delivery method read: not exposed");
            return None;
        }
        Some((content_format(&resp), resp.payload))
    }

    /// Pull or push for this delivery: the configured one, or for
    /// `auto` what the child's /5/0/9 and /5/0/8 say (module doc).
    pub(super) async fn choose_delivery(&self) -> Delivery {
        if self.delivery != Delivery::Auto {
            return self.delivery;
        }
        let method = match self.read_raw(Path::DELIVERY_METHOD, false).await {
            Some((f, p)) => DeliveryMethod::read(f, &p)
                .map_err(|e| debug!(child = %self.device_id, "/5/0/9: {e}"))
                .ok(),
            None => None,
        };
        let protocols = match self.read_raw(Path::PROTOCOL_SUPPORT, true).await {
            Some((f, p)) => lwm2m::read_integers(f, Path::PROTOCOL_SUPPORT, &p)
                .map_err(|e| debug!(child = %self.device_id, "/5/0/8: {e}"))
                .ok(),
            None => None,
        };
        let coap_listed = protocols.as_ref().map(|p| p.contains(&0));
        let chosen = decide(method, coap_listed);
        info!(child = %self.device_id, ?method, ?protocols, ?chosen, "delivery = auto: chosen from /5/0/9 and /5/0/8");
        chosen
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_of_the_module_doc() {
        use DeliveryMethod as M;
        assert_eq!(decide(Some(M::Pull), Some(true)), Delivery::Pull);
        assert_eq!(decide(Some(M::Pull), Some(false)), Delivery::Pull);
        assert_eq!(decide(Some(M::Push), Some(true)), Delivery::Push);
        assert_eq!(decide(Some(M::Both), Some(true)), Delivery::Pull);
        assert_eq!(decide(Some(M::Both), None), Delivery::Pull);
        assert_eq!(decide(Some(M::Both), Some(false)), Delivery::Push);
        assert_eq!(decide(None, None), Delivery::Pull);
        assert_eq!(decide(None, Some(false)), Delivery::Push);
    }
}
