//! Observing resources (RFC 7641), the client side, sans-IO: the request
//! that registers an observation, reading the Observe option of a
//! notification, and the freshness rule that orders notifications.
//!
//! Who does what:
//! - [`super::Exchanges`] keeps the token of an established observation
//!   ([`super::Exchanges::keep_token`]): a notification (a CON or NON
//!   response with that token, RFC 7641 §3.2) is ACKed when confirmable
//!   and comes out as [`super::ExchangeEvent::Notification`]; once the
//!   token is forgotten, the next notification is rejected with RST, which
//!   ends the observation at the server (RFC 7641 §3.6, reactive
//!   cancellation).
//! - [`super::Peers`] keeps the token when the answer to a GET carries the
//!   Observe option (the server accepted, RFC 7641 §3.1) and hands
//!   notifications to the owner of the request as
//!   [`super::PeerEvent::Notification`]; cancelling the request forgets
//!   the token.
//! - The user (the LwM2M procedure, [`super::UpdateProcedure`]) orders
//!   notifications with [`Freshness`] and falls back to polling when the
//!   server answers without the Observe option (RFC 7641 §3.1: it did not
//!   register the observation).

use std::time::Duration;

use coap_lite::{CoapOption, Packet};

use super::msg::{self, Code};
use crate::time::Instant;

/// The Observe value of a GET that registers an observation (RFC 7641 §2).
pub const REGISTER: u32 = 0;
/// The Observe value of a GET that deregisters one (RFC 7641 §2).
pub const DEREGISTER: u32 = 1;

/// RFC 7641 §3.4: a notification arriving more than 128 s after the
/// freshest one is newer whatever its sequence number says.
pub const FRESHNESS_WINDOW: Duration = Duration::from_secs(128);

/// Sequence numbers are 24 bits (RFC 7641 §2, §4.4).
const SEQ_HALF: u32 = 1 << 23;

/// `request` with `Observe: 0`: a GET that also asks to observe
/// (RFC 7641 §3.1).
pub fn register(mut request: Packet) -> Packet {
    msg::set_uint(&mut request, CoapOption::Observe, REGISTER);
    request
}

/// The Observe option of `response`: `Some(sequence)` when it is there
/// (the server registered the observation, or this is a notification),
/// `None` when absent or not a uint of at most 3 bytes (RFC 7641 §2).
pub fn sequence(response: &Packet) -> Option<u32> {
    match msg::uint(response, CoapOption::Observe) {
        Ok(Some(v)) if v < (1 << 24) => Some(v),
        _ => None,
    }
}

/// Whether the answer to an observing GET established the observation:
/// a success code with the Observe option (RFC 7641 §3.1; an error
/// response or one without the option means "not observed").
pub fn accepted(response: &Packet) -> bool {
    msg::code(response).is_success() && sequence(response).is_some()
}

/// The freshest notification of one observation so far, to tell a newer
/// notification from one reordered in the network (RFC 7641 §3.4).
///
/// Call [`Freshness::check`] with every answer and notification of the
/// observation, in the order they arrived; it says whether to use it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Freshness {
    last: Option<(u32, Instant)>,
}

impl Freshness {
    /// No notification seen yet.
    pub fn new() -> Self {
        Freshness::default()
    }

    /// Whether a notification with sequence `seq` arriving at `now` is
    /// newer than every one before (and then remembers it). RFC 7641
    /// §3.4: V2 is newer than V1 when `V1 < V2 and V2 - V1 < 2^23`, or
    /// `V1 > V2 and V1 - V2 > 2^23`, or it came more than 128 s after V1.
    /// A response without the option (`None`: the observation ended, a
    /// final answer) is always taken.
    pub fn check(&mut self, seq: Option<u32>, now: Instant) -> bool {
        let Some(v2) = seq else {
            return true;
        };
        let newer = match self.last {
            None => true,
            Some((v1, t1)) => {
                (v1 < v2 && v2 - v1 < SEQ_HALF)
                    || (v1 > v2 && v1 - v2 > SEQ_HALF)
                    || now > t1 + FRESHNESS_WINDOW
            }
        };
        if newer {
            self.last = Some((v2, now));
        }
        newer
    }
}

/// Whether `notification` ends its observation: a response that is not
/// 2.xx (RFC 7641 §3.2: "a notification with a response code other than
/// 2.xx ... the observation is removed") or that lacks the Observe option.
pub fn ends_observation(notification: &Packet) -> bool {
    !msg::code(notification).is_success() || sequence(notification).is_none()
}

/// A success code (2.05 Content) with sequence number `seq`: the shape of a
/// notification, for simulators and tests.
pub fn notification(seq: u32, payload: &[u8]) -> Packet {
    let mut p = msg::response(Code::CONTENT);
    msg::set_uint(&mut p, CoapOption::Observe, seq & 0x00ff_ffff);
    p.payload = payload.to_vec();
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: u64) -> Instant {
        Instant::from_millis(s * 1000)
    }

    #[test]
    fn newer_by_sequence_within_half_the_space() {
        let mut f = Freshness::new();
        assert!(f.check(Some(5), at(0)));
        assert!(f.check(Some(6), at(1)));
        assert!(!f.check(Some(6), at(2)), "a duplicate is not newer");
        assert!(!f.check(Some(4), at(3)), "reordered: older");
        assert!(
            f.check(Some(6 + SEQ_HALF - 1), at(4)),
            "just under 2^23 ahead"
        );
    }

    #[test]
    fn wraparound_counts_as_newer() {
        let mut f = Freshness::new();
        assert!(f.check(Some(0xff_fffe), at(0)));
        assert!(f.check(Some(1), at(1)), "V1 > V2 by more than 2^23");
        assert!(!f.check(Some(0xff_ffff), at(2)), "from before the wrap");
    }

    #[test]
    fn after_128_seconds_anything_is_newer() {
        let mut f = Freshness::new();
        assert!(f.check(Some(100), at(0)));
        assert!(!f.check(Some(50), at(128)), "exactly 128 s is not more");
        assert!(
            f.check(Some(50), at(129)),
            "a server that restarted its count"
        );
        assert!(!f.check(Some(49), at(130)));
    }

    #[test]
    fn answers_without_the_option_are_taken() {
        let mut f = Freshness::new();
        assert!(f.check(Some(9), at(0)));
        assert!(f.check(None, at(1)));
        assert!(!f.check(Some(8), at(2)), "the freshest is still 9");
    }

    #[test]
    fn accepted_needs_success_and_the_option() {
        let n = notification(3, b"2");
        assert!(accepted(&n));
        assert_eq!(sequence(&n), Some(3));
        assert!(!ends_observation(&n));
        let plain = msg::response(Code::CONTENT);
        assert!(!accepted(&plain), "answered without Observe: refused");
        assert!(ends_observation(&plain));
        let mut err = msg::response(Code::NOT_FOUND);
        msg::set_uint(&mut err, CoapOption::Observe, 4);
        assert!(!accepted(&err));
        assert!(ends_observation(&err));
        // A 4-byte Observe value is not a sequence number.
        let mut big = msg::response(Code::CONTENT);
        msg::set_uint(&mut big, CoapOption::Observe, 1 << 24);
        assert_eq!(sequence(&big), None);
    }

    #[test]
    fn register_sets_observe_zero() {
        let p = register(msg::request(Code::GET, &["5", "0", "3"]));
        assert_eq!(msg::uint(&p, CoapOption::Observe), Ok(Some(0)));
    }
}
