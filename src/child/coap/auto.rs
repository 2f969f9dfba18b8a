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
//! The reads and the choice are the procedure's
//! (`otabridge_codecs::coap::update`, `Delivery::Auto`, `choose`); this
//! module gives it the `/5/0/8` Accept and logs what it chose and why.
//! Both resources are optional, so each read waits at most
//! `CoapNetwork::optional_read_wait` (21 s with RFC 7252's timers), not the
//! whole exchange (93 s): a child that never answers one costs 21 s, and
//! the log says the read went unanswered.
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

use otabridge_codecs::coap::update::{AutoChoice, Chosen};
use otabridge_codecs::lwm2m::ContentFormat;
use tracing::info;

use super::CoapChild;

impl CoapChild {
    /// The Accept of the `/5/0/8` read: the multiple-value format the
    /// client announced, or none (module doc).
    pub(super) fn protocol_support_accept(&self) -> Option<ContentFormat> {
        let declared = match &self.address {
            crate::config::CoapAddress::Endpoint(ep) => self
                .net
                .registration(ep)
                .is_some_and(|r| !r.reg.objects.content_formats.is_empty()),
            crate::config::CoapAddress::Static(_) => false,
        };
        declared.then(|| self.accept(true))
    }

    /// The info line of the choice, with why and what each read gave.
    pub(super) fn log_choice(&self, c: &AutoChoice) {
        let chosen = match c.chosen {
            Chosen::Pull => crate::config::Delivery::Pull,
            Chosen::Push => crate::config::Delivery::Push,
        };
        let protocols = c
            .protocols
            .as_ref()
            .map_or_else(|| "not read (not needed)".to_string(), |p| p.to_string());
        info!(child = %self.device_id, ?chosen, why = c.why, method = %c.method, %protocols,
              "delivery = auto: chosen from /5/0/9 and /5/0/8");
    }
}
