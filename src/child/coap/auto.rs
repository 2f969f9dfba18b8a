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
//!
//! `/5/0/8` is read only when `/5/0/9` leaves the choice open (both, or
//! unreadable). It is multiple-instance, so its read carries an Accept
//! only when the client announced its formats (`ct` in its registration,
//! LwM2M 1.1+): an Accept for a format the client never declared is a
//! guess, and a client whose CoAP stack cannot parse it may drop the
//! request without an answer (lwm2m-node-lib 1.4 on node-coap 0.22 drops
//! any request whose Accept is not one of seven formats, TLV included),
//! which costs the whole exchange (MAX_TRANSMIT_WAIT, 93 s by default)
//! before the job can go on. Without Accept the client answers in its
//! preferred format (OMA TS Core 1.1 §5.1.2 / 1.0 §6.4), and every format
//! it may choose is decoded (docs/coap.md "Content formats").

use otabridge_codecs::coap::{content_format, msg, read_request, Code};
use otabridge_codecs::lwm2m::{self, ContentFormat, DeliveryMethod, Path};
use tracing::info;

use super::CoapChild;
use crate::config::Delivery;

/// The decision of the table above, and why (for the log line).
pub(crate) fn decide(
    method: Option<DeliveryMethod>,
    coap_listed: Option<bool>,
) -> (Delivery, &'static str) {
    use DeliveryMethod as M;
    match (method, coap_listed) {
        (Some(M::Push), _) => (Delivery::Push, "/5/0/9 says push only"),
        (Some(M::Pull), _) => (Delivery::Pull, "/5/0/9 says pull only"),
        (Some(M::Both), Some(false)) => (
            Delivery::Push,
            "/5/0/9 says both, /5/0/8 does not list CoAP (0): the gateway serves coap:// only",
        ),
        (Some(M::Both), Some(true)) => (
            Delivery::Pull,
            "/5/0/9 says both, /5/0/8 lists CoAP (0): pull preferred (resumable)",
        ),
        (Some(M::Both), None) => (
            Delivery::Pull,
            "/5/0/9 says both, /5/0/8 unreadable: pull preferred (resumable)",
        ),
        (None, Some(false)) => (
            Delivery::Push,
            "/5/0/9 unreadable, /5/0/8 does not list CoAP (0): the gateway serves coap:// only",
        ),
        (None, Some(true)) => (
            Delivery::Pull,
            "/5/0/9 unreadable, /5/0/8 lists CoAP (0): pull",
        ),
        (None, None) => (
            Delivery::Pull,
            "neither /5/0/9 nor /5/0/8 readable (both optional in 5.xml): pull, the default",
        ),
    }
}

/// Why a read of an optional resource gave nothing.
#[derive(Debug)]
enum Unread {
    /// The child answered with another code than 2.05 (4.04: not exposed).
    Code(Code),
    /// No answer (or no usable one) from the network.
    Request(String),
    /// The payload was not a value of the resource.
    Value(String),
}

impl std::fmt::Display for Unread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unread::Code(c) => write!(f, "answered {c}"),
            Unread::Request(e) => write!(f, "no answer: {e}"),
            Unread::Value(e) => write!(f, "unusable value: {e}"),
        }
    }
}

impl CoapChild {
    /// One read of `path` with `accept`, its Content answer's payload and
    /// format.
    async fn read_raw(
        &self,
        path: Path,
        accept: Option<ContentFormat>,
    ) -> Result<(Option<ContentFormat>, Vec<u8>), Unread> {
        let resp = self
            .request(read_request(path, accept))
            .await
            .map_err(|e| Unread::Request(e.to_string()))?;
        match msg::code(&resp) {
            Code::CONTENT => Ok((content_format(&resp), resp.payload)),
            c => Err(Unread::Code(c)),
        }
    }

    /// The Accept of the `/5/0/8` read: the multiple-value format the
    /// client announced, or none (module doc).
    fn protocol_support_accept(&self) -> Option<ContentFormat> {
        let declared = match &self.address {
            crate::config::CoapAddress::Endpoint(ep) => self
                .net
                .registration(ep)
                .is_some_and(|r| !r.reg.objects.content_formats.is_empty()),
            crate::config::CoapAddress::Static(_) => false,
        };
        declared.then(|| self.accept(true))
    }

    /// Pull or push for this delivery: the configured one, or for
    /// `auto` what the child's /5/0/9 and /5/0/8 say (module doc).
    pub(super) async fn choose_delivery(&self) -> Delivery {
        if self.delivery != Delivery::Auto {
            return self.delivery;
        }
        let method = self
            .read_raw(Path::DELIVERY_METHOD, Some(self.accept(false)))
            .await
            .and_then(|(f, p)| {
                DeliveryMethod::read(f, &p).map_err(|e| Unread::Value(e.to_string()))
            });
        let protocols = match &method {
            Ok(DeliveryMethod::Push | DeliveryMethod::Pull) => None,
            Ok(DeliveryMethod::Both) | Err(_) => Some(
                self.read_raw(Path::PROTOCOL_SUPPORT, self.protocol_support_accept())
                    .await
                    .and_then(|(f, p)| {
                        lwm2m::read_integers(f, Path::PROTOCOL_SUPPORT, &p)
                            .map_err(|e| Unread::Value(e.to_string()))
                    }),
            ),
        };
        let coap_listed = match &protocols {
            Some(Ok(p)) => Some(p.contains(&0)),
            _ => None,
        };
        let (chosen, why) = decide(method.as_ref().ok().copied(), coap_listed);
        let show = |r: Option<String>| r.unwrap_or_else(|| "not read (not needed)".into());
        let m = match &method {
            Ok(m) => format!("{m:?}"),
            Err(e) => e.to_string(),
        };
        let p = protocols.map(|r| match r {
            Ok(p) => format!("{p:?}"),
            Err(e) => e.to_string(),
        });
        info!(child = %self.device_id, ?chosen, why, method = %m, protocols = %show(p),
              "delivery = auto: chosen from /5/0/9 and /5/0/8");
        chosen
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_of_the_module_doc() {
        use DeliveryMethod as M;
        let d = |m, l| decide(m, l).0;
        assert_eq!(d(Some(M::Pull), Some(true)), Delivery::Pull);
        assert_eq!(d(Some(M::Pull), Some(false)), Delivery::Pull);
        assert_eq!(d(Some(M::Push), Some(true)), Delivery::Push);
        assert_eq!(d(Some(M::Both), Some(true)), Delivery::Pull);
        assert_eq!(d(Some(M::Both), None), Delivery::Pull);
        assert_eq!(d(Some(M::Both), Some(false)), Delivery::Push);
        assert_eq!(d(None, None), Delivery::Pull);
        assert_eq!(d(None, Some(true)), Delivery::Pull);
        assert_eq!(d(None, Some(false)), Delivery::Push);
    }
}
