//! The LwM2M firmware-update procedure for one child, sans-IO: read the
//! version, deliver the package (pull through /5/0/1 or push through
//! /5/0/0), execute /5/0/2, and confirm the new version across the reboot.
//!
//! The procedure is the gateway's half of docs/protocols/children.md §3 "How a gateway
//! drives a CoAP child", built on the Firmware Update object (OMA 5.xml,
//! [`crate::lwm2m`]):
//! 1. `GET /3/0/3`: already at the target version ([`UpdateConfig::version_policy`])
//!    → finished, nothing sent.
//! 2. Pull: `PUT /5/0/1` the Package URI (text/plain), then poll `/5/0/3`
//!    until State 2 (Downloaded), reading `/5/0/5` whenever it is not 2 to
//!    catch a failed download. The child fetches the package with Block2
//!    from the gateway's server ([`super::serve_block2`]); the driver
//!    reports served blocks with [`UpdateProcedure::handle_served`] for
//!    progress. A served block while the URI write still waits for its
//!    answer is proof the write took effect (the child can only have the
//!    URI from it): the write is abandoned as done, so a lost ACK on a lossy
//!    link does not restart a download that is under way.
//!    Push: Block1 `PUT /5/0/0`, Content-Format 42, run by the driver's
//!    [`super::Peers`] ([`Action::Push`]), then the same poll of `/5/0/3`
//!    until State 2. A push that resumes a journaled offset reads `/5/0/3`
//!    first: a child already in State 2 got the whole image before the
//!    gateway stopped, and is not sent it again. So does any delivery the
//!    caller says was begun before ([`UpdateConfig::resumed`]): a pulling
//!    child still in State 1 goes on from its own offset (the URI is not
//!    written again), and one in State 2 is executed.
//! 3. `POST /5/0/2` (Execute). A child may reboot before it answers, so a
//!    lost answer is not a failure.
//! 4. Poll `/3/0/3` through the reboot until it equals the target version;
//!    each time it does not, `/5/0/5` tells whether the update failed.
//!    Success is reported only after the version was read back (docs/design.md).
//! 5. A failure the child reports and that may not repeat (/5/0/5 says out
//!    of memory, connection lost or integrity failure; the download timed
//!    out; the push restarted too often) is retried after resetting the
//!    child with an empty `/5/0/1` (5.xml: "Writing an empty string to the
//!    Package URI resets the state machine"), up to `max_attempts`
//!    deliveries. Silence (a request or push that got no answer) ends the
//!    procedure: the caller owns that retry (in otabridge the OTA job,
//!    `[ota] max_retries`, which resumes the push where it stopped), so
//!    the two never nest.
//! 6. A caller with a deadline of its own (the job's activation timeout)
//!    hands it over with [`UpdateProcedure::set_deadline`]: the phase
//!    timers end by it, so one timer decides, not the first of two.
//! 7. Observe (RFC 7641, [`super::observe`]; `UpdateConfig::observe`):
//!    instead of polling /5/0/3 until State 2, the procedure observes
//!    /5/0/3 and then /5/0/5 (a GET with `Observe: 0` each, which is also
//!    the first read) and moves on their notifications: State 2 ends the
//!    delivery, a failure in /5/0/5 (or State 0 followed by a read of it)
//!    fails it. Notifications older than the freshest one are dropped
//!    (RFC 7641 §3.4, [`super::Freshness`]). A child that answers without
//!    the Observe option or with an error is polled as before; while
//!    observed, /5/0/3 is still read every `observe_check` in case
//!    notifications stop (a lost NON, a child that forgot the
//!    observation). Observations end when the delivery does
//!    ([`Action::StopObserving`]: the driver forgets their tokens and the
//!    next notification gets RST, RFC 7641 §3.6). After Execute the child
//!    reboots and forgets its observations, so the version is polled.
//! 8. [`Delivery::Auto`] (docs/coap.md "delivery auto"): after /3/0/3,
//!    `GET /5/0/9` Delivery Method and, when that leaves the choice open
//!    (both, or unreadable), `GET /5/0/8` Protocol Support decide pull or
//!    push ([`choose`], [`UpdateEvent::DeliveryChosen`]). Both resources
//!    are optional in 5.xml, so each read waits at most
//!    [`UpdateConfig::optional_read_timeout`] (21 s by default,
//!    [`optional_read_wait`]) instead of the whole exchange (93 s): one
//!    that goes unanswered is cancelled ([`Action::Cancel`],
//!    [`UpdateEvent::OptionalUnanswered`]) and counts as unreadable. Reads
//!    of mandatory resources (/3/0/3, /5/0/3, /5/0/5) wait for the
//!    exchange as before. The choice holds for the retries of the
//!    procedure.
//!
//! # Call order
//! The procedure is a user of the driver's [`super::Peers`] (one path, the
//! same in the daemon and in `codecs/tests/fixture/coap.rs`):
//! 1. [`UpdateProcedure::poll_action`] at `now` gives what to do next:
//!    [`Action::Request`] (start it with [`super::Peers::request`]),
//!    [`Action::Push`] (start it with [`super::Peers::start_push`]) or
//!    [`Action::Cancel`] (cancel the request or push in flight: its outcome
//!    no longer matters). At most one request or push is in flight.
//!    [`Action::Observe`] is a request too (its answer comes back like
//!    any other), whose notifications the driver passes on with
//!    [`UpdateProcedure::handle_notification`] until
//!    [`Action::StopObserving`].
//! 2. Outcomes go back in: [`UpdateProcedure::handle_response`] /
//!    [`UpdateProcedure::handle_failure`] for a request,
//!    [`UpdateProcedure::handle_push_event`] for the push's events (the
//!    driver may skip intermediate progress, never the end);
//!    [`UpdateProcedure::handle_served`] for every Block2 block served to
//!    this child. Each takes `now`.
//! 3. [`UpdateProcedure::poll_event`] is drained (phases, progress, the
//!    end), and the driver sleeps until [`UpdateProcedure::poll_timeout`]
//!    (which also runs while a push is in flight: the download deadline),
//!    then calls [`UpdateProcedure::handle_timeout`] and goes back to 1.

use std::collections::VecDeque;
use std::time::Duration;

use coap_lite::{CoapOption, Packet};

use super::msg::{self, Code};
use super::observe::{self, Freshness};
use super::push::{
    Block1Push, PushConfig, PushConfigError, PushEvent, PushFailure, TransportFailure,
};
use super::serve::ServedBlock;
use crate::iotda::ResultCode;
use crate::lwm2m::{self, Path, State, UpdateResult, ValueError};
use crate::time::Instant;
use crate::version::Policy;

/// How the package reaches the child (/5/0/9, docs/protocols/children.md §3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// The child downloads from this Package URI (`coap://<gw>/fw/<sha256>`,
    /// see [`lwm2m::package_uri`]).
    Pull {
        /// The URI written to /5/0/1.
        uri: String,
    },
    /// The gateway writes /5/0/0 with Block1.
    Push {
        /// First block size exponent, 0..=6.
        szx: u8,
        /// Bytes the child acknowledged before a gateway restart.
        resume_offset: u32,
    },
    /// Pull or push, as the child's `/5/0/9` Delivery Method and `/5/0/8`
    /// Protocol Support say ([`choose`]; module doc, 8.): the settings of
    /// both, one of which is used.
    Auto {
        /// The Package URI, if pull is chosen.
        uri: String,
        /// First block size exponent, if push is chosen.
        szx: u8,
        /// Bytes acknowledged before a gateway restart, if push is chosen.
        resume_offset: u32,
    },
}

/// What `delivery = auto` chose ([`choose`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chosen {
    /// The child fetches the package from the Package URI.
    Pull,
    /// The gateway writes it to /5/0/0.
    Push,
}

/// What a read of an optional resource (`/5/0/9`, `/5/0/8`: 5.xml marks
/// both optional) gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OptionalRead<T> {
    /// A 2.05 with a value.
    Value(T),
    /// Another code than 2.05 (4.04: the child does not expose it).
    Refused(Code),
    /// No answer within [`UpdateConfig::optional_read_timeout`] (or the
    /// exchange failed before: RST, retransmissions exhausted).
    Unanswered,
    /// The payload was not a value of the resource.
    Unusable(ValueError),
}

impl<T: std::fmt::Debug> std::fmt::Display for OptionalRead<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OptionalRead::Value(v) => write!(f, "{v:?}"),
            OptionalRead::Refused(c) => write!(f, "answered {c}"),
            OptionalRead::Unanswered => write!(f, "no answer"),
            OptionalRead::Unusable(e) => write!(f, "unusable value: {e}"),
        }
    }
}

impl<T> OptionalRead<T> {
    fn value(&self) -> Option<&T> {
        match self {
            OptionalRead::Value(v) => Some(v),
            _ => None,
        }
    }
}

/// The choice of `delivery = auto`, with what each read gave (for the log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AutoChoice {
    /// Pull or push.
    pub chosen: Chosen,
    /// Why, in words.
    pub why: &'static str,
    /// The read of `/5/0/9`.
    pub method: OptionalRead<lwm2m::DeliveryMethod>,
    /// The read of `/5/0/8`; `None`: not read (`/5/0/9` decided).
    pub protocols: Option<OptionalRead<Vec<i64>>>,
}

/// The decision of `delivery = auto` (docs/coap.md "delivery auto"):
/// `method` is `/5/0/9` (0 pull only, 1 push only, 2 both), `coap_listed`
/// whether `/5/0/8` lists 0 (CoAP); `None`: unreadable. The gateway serves
/// `coap://` only, so pull needs CoAP listed (5.xml: "the server must not
/// write a URI with an unsupported scheme"); pull is preferred when both
/// work (resumable from any block).
///
/// | /5/0/9 | /5/0/8 lists 0 | chosen |
/// |---|---|---|
/// | 0 pull only | any (not read) | pull |
/// | 1 push only | any (not read) | push |
/// | 2 both, or unreadable | yes, or unreadable | pull |
/// | 2 both, or unreadable | no | push |
pub fn choose(
    method: Option<lwm2m::DeliveryMethod>,
    coap_listed: Option<bool>,
) -> (Chosen, &'static str) {
    use lwm2m::DeliveryMethod as M;
    match (method, coap_listed) {
        (Some(M::Push), _) => (Chosen::Push, "/5/0/9 says push only"),
        (Some(M::Pull), _) => (Chosen::Pull, "/5/0/9 says pull only"),
        (Some(M::Both), Some(false)) => (
            Chosen::Push,
            "/5/0/9 says both, /5/0/8 does not list CoAP (0): the gateway serves coap:// only",
        ),
        (Some(M::Both), Some(true)) => (
            Chosen::Pull,
            "/5/0/9 says both, /5/0/8 lists CoAP (0): pull preferred (resumable)",
        ),
        (Some(M::Both), None) => (
            Chosen::Pull,
            "/5/0/9 says both, /5/0/8 unreadable: pull preferred (resumable)",
        ),
        (None, Some(false)) => (
            Chosen::Push,
            "/5/0/9 unreadable, /5/0/8 does not list CoAP (0): the gateway serves coap:// only",
        ),
        (None, Some(true)) => (
            Chosen::Pull,
            "/5/0/9 unreadable, /5/0/8 lists CoAP (0): pull",
        ),
        (None, None) => (
            Chosen::Pull,
            "neither /5/0/9 nor /5/0/8 readable (both optional in 5.xml): pull, the default",
        ),
    }
}

/// How long a read of an optional resource waits for its answer by
/// default: the time a CoAP exchange with `exchange`'s ACK_TIMEOUT and
/// ACK_RANDOM_FACTOR would wait with MAX_RETRANSMIT = 2 instead of its own
/// (RFC 7252 §4.8.2: MAX_TRANSMIT_WAIT = ACK_TIMEOUT × (2^(MAX_RETRANSMIT+1)
/// − 1) × ACK_RANDOM_FACTOR): 2 s × 7 × 1.5 = 21 s with RFC 7252's
/// defaults, against 93 s for a whole exchange. Every transmission a
/// 3-transmission exchange makes has gone out and had its time to be
/// answered (the retransmissions are due at most 3, 9 and 21 s after the
/// first), so a child that merely lost a datagram still answers; a child
/// that never answers (it drops what it cannot parse, it sleeps, it is
/// buggy) costs 21 s, not 93.
pub fn optional_read_wait(exchange: &super::ExchangeConfig) -> Duration {
    exchange
        .ack_timeout
        .saturating_mul((1 << (OPTIONAL_RETRANSMITS + 1)) - 1)
        .mul_f64(exchange.ack_random_factor.max(1.0))
}

/// The retransmissions an optional read waits for ([`optional_read_wait`]).
pub const OPTIONAL_RETRANSMITS: u32 = 2;

/// One child's update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpdateConfig {
    /// The version the child must report in /3/0/3 afterwards.
    pub target_version: String,
    /// How /3/0/3 is compared with `target_version` (normalised: `v2.0.0`
    /// is `2.0.0`).
    pub version_policy: Policy,
    /// Package length in bytes.
    pub total_len: u32,
    /// Pull or push.
    pub delivery: Delivery,
    /// A delivery of this package to this child began before (the
    /// caller's journal says so: a gateway restarted during it or after
    /// it). The first attempt reads `/5/0/3` before it sends anything: a
    /// child in State 2 holds the image already (Execute next); a pulling
    /// child in State 1 goes on fetching from its own offset, so the
    /// Package URI is not written again (that would restart its fetch from
    /// byte 0). A push with `resume_offset > 0` reads it in any case.
    pub resumed: bool,
    /// Pause between two reads of a polled resource.
    pub poll_interval: Duration,
    /// Longest time from starting the delivery to State 2.
    pub download_timeout: Duration,
    /// Longest time from Execute to reading the target version, unless
    /// the caller set a deadline ([`UpdateProcedure::set_deadline`]).
    pub update_timeout: Duration,
    /// Deliveries tried in all (1: no retry) after a failure the child
    /// reported (see the module doc, 5.); silence is never retried here.
    pub max_attempts: u32,
    /// The Accept option of every read (RFC 7252 §5.10.4): the format the
    /// child is asked to answer in; `None` sends none. Whatever format the
    /// answer comes in (its Content-Format) is decoded
    /// ([`crate::lwm2m::content`]).
    pub accept: Option<lwm2m::ContentFormat>,
    /// Observe /5/0/3 and /5/0/5 while waiting for State 2 instead of
    /// polling them (module doc, 7.); a child that refuses is polled.
    pub observe: bool,
    /// While observed, /5/0/3 is still read this long after the last
    /// read or notification, in case notifications stopped.
    pub observe_check: Duration,
    /// [`Delivery::Auto`]: how long a read of the optional `/5/0/9` and
    /// `/5/0/8` waits for an answer before the choice goes on without it
    /// (default [`optional_read_wait`] of RFC 7252's parameters, 21 s).
    /// Reads of mandatory resources wait for the whole exchange.
    pub optional_read_timeout: Duration,
    /// [`Delivery::Auto`]: the Accept of the `/5/0/8` read (a
    /// multiple-instance resource). `None` (the default) sends none: the
    /// client answers in the format it prefers, which is decoded. Set it
    /// only to a format the client declared (`ct` in its registration):
    /// some stacks drop a request whose Accept they cannot parse.
    pub protocol_support_accept: Option<lwm2m::ContentFormat>,
}

impl UpdateConfig {
    /// Defaults for a child on a local network: poll every 5 s, 30 min to
    /// download, 10 min to install and reboot, 2 attempts.
    pub fn new(target_version: impl Into<String>, total_len: u32, delivery: Delivery) -> Self {
        UpdateConfig {
            target_version: target_version.into(),
            version_policy: Policy::default(),
            total_len,
            delivery,
            resumed: false,
            poll_interval: Duration::from_secs(5),
            download_timeout: Duration::from_secs(30 * 60),
            update_timeout: Duration::from_secs(10 * 60),
            max_attempts: 2,
            accept: Some(lwm2m::ContentFormat::TEXT_PLAIN),
            observe: true,
            observe_check: Duration::from_secs(60),
            optional_read_timeout: optional_read_wait(&super::ExchangeConfig::default()),
            protocol_support_accept: None,
        }
    }
}

/// An [`UpdateConfig`] that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpdateConfigError {
    /// The push settings are invalid.
    #[error(transparent)]
    Push(#[from] PushConfigError),
    /// /5/0/1 holds at most 255 bytes (5.xml: String 0..255).
    #[error("package URI of {0} bytes, at most 255")]
    UriTooLong(usize),
    /// Zero attempts would never deliver anything.
    #[error("max_attempts is zero")]
    NoAttempts,
    /// A zero poll interval would poll in a busy loop.
    #[error("poll_interval is zero")]
    ZeroPollInterval,
}

/// Why an update failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpdateFailure {
    /// The child reported a failure in /5/0/5.
    #[error("child reports update result {0:?}")]
    Child(UpdateResult),
    /// The Block1 push failed.
    #[error("push failed: {0}")]
    Push(PushFailure),
    /// The child answered a request with an error code.
    #[error("{path} answered {code}")]
    Rejected {
        /// The resource.
        path: Path,
        /// The response code.
        code: Code,
    },
    /// The child did not answer (no ACK, no response, or RST).
    #[error("child unreachable during {0}")]
    Unreachable(Path),
    /// A resource value that does not parse.
    #[error("{path}: {error}")]
    BadValue {
        /// The resource.
        path: Path,
        /// Why.
        error: ValueError,
    },
    /// State 2 was not reached within `download_timeout`.
    #[error("download not finished in time")]
    DownloadTimeout,
    /// The target version was not read back within `update_timeout`.
    #[error("new version not seen in time")]
    UpdateTimeout,
    /// The child says it updated, but reports another version.
    #[error("child updated but reports version {0:?}")]
    WrongVersion(String),
}

impl UpdateFailure {
    /// The IoTDA `result_code` and `description` (docs/protocols/iotda.md §4.6, §9).
    /// Child results use [`UpdateResult::to_iotda`]; a push failure uses
    /// [`PushFailure::to_iotda`]; a download timeout is 6; an install that
    /// never shows the new version is 10 "Firmware update failed"
    /// (inferred); an unreachable child is 6 while delivering
    /// (inferred: the closest code), and anything else 255.
    pub fn to_iotda(&self) -> (ResultCode, &'static str) {
        match self {
            UpdateFailure::Child(r) => r.to_iotda(),
            UpdateFailure::Push(p) => p.to_iotda(),
            UpdateFailure::DownloadTimeout => UpdateResult::ConnectionLost.to_iotda(),
            UpdateFailure::UpdateTimeout | UpdateFailure::WrongVersion(_) => {
                UpdateResult::UpdateFailed.to_iotda()
            }
            UpdateFailure::Unreachable(p) if *p != Path::FIRMWARE_VERSION => {
                UpdateResult::ConnectionLost.to_iotda()
            }
            _ => (ResultCode::INNER_ERROR, "internal exception"),
        }
    }

    /// Worth another attempt after a reset: the child reported a failure
    /// that may not repeat (lost connection, corrupted transfer, out of
    /// memory), the download timed out, or the push restarted too often.
    /// Silence is not: the caller retries that (module doc, 5.).
    fn transient(&self) -> bool {
        match self {
            UpdateFailure::Child(r) => matches!(
                r,
                UpdateResult::OutOfMemory
                    | UpdateResult::ConnectionLost
                    | UpdateResult::IntegrityFailure
            ),
            UpdateFailure::Push(p) => matches!(p, PushFailure::TooManyRestarts(_)),
            UpdateFailure::DownloadTimeout => true,
            _ => false,
        }
    }
}

/// How the procedure ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The child already ran the target version; nothing was delivered.
    AlreadyCurrent,
    /// The child reports the target version after the update.
    Updated,
    /// The update failed for good.
    Failed(UpdateFailure),
}

/// Where the procedure is, for status displays and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Reading /3/0/3 before anything else.
    Checking,
    /// Resetting /5/0/1 before a retry.
    Resetting,
    /// The package is on its way.
    Delivering,
    /// State 2: the child holds the whole package.
    Downloaded,
    /// Execute sent; waiting for the new version.
    Updating,
}

/// What the procedure reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpdateEvent {
    /// The version read from /3/0/3 before the update.
    CurrentVersion(String),
    /// A new phase began.
    Phase(Phase),
    /// Bytes delivered so far (push: acknowledged; pull: served).
    Progress {
        /// Bytes delivered.
        delivered: u32,
        /// Package length.
        total: u32,
    },
    /// The answer to an Observe registration of `path`: `accepted` (the
    /// child notifies) or not (it is polled).
    Observe {
        /// /5/0/3 or /5/0/5.
        path: Path,
        /// Whether the child registered the observation.
        accepted: bool,
    },
    /// An observation of `path` ended from the child's side (an error
    /// notification, or one without Observe): it is polled from now on.
    ObservationEnded(Path),
    /// A read of the optional `path` (`/5/0/9`, `/5/0/8`) got no answer
    /// in `waited`; the choice goes on without it.
    OptionalUnanswered {
        /// The resource.
        path: Path,
        /// How long the read waited.
        waited: Duration,
    },
    /// [`Delivery::Auto`] chose pull or push.
    DeliveryChosen(AutoChoice),
    /// A transient failure; the procedure resets the child and tries again.
    Retrying {
        /// The attempt about to start (2 for the first retry).
        attempt: u32,
        /// What failed.
        cause: UpdateFailure,
    },
    /// The end.
    Finished(Outcome),
}

/// What the driver does next for the procedure
/// ([`UpdateProcedure::poll_action`]).
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Send this request to the child ([`super::Peers::request`]).
    Request(Packet),
    /// Push the package to the child with Block1
    /// ([`super::Peers::start_push`]).
    Push(PushConfig),
    /// Cancel the request or push in flight; nothing of it is fed back.
    Cancel,
    /// Send this GET (it carries `Observe: 0`) like [`Action::Request`],
    /// and pass the notifications it brings to
    /// [`UpdateProcedure::handle_notification`] with `path`.
    Observe {
        /// The resource observed.
        path: Path,
        /// The request.
        request: Packet,
    },
    /// End every observation (cancel their requests: their next
    /// notification gets RST, RFC 7641 §3.6).
    StopObserving,
}

#[derive(Debug)]
enum Step {
    ReadVersion,
    /// [`Delivery::Auto`]: read the optional /5/0/9 (bounded wait).
    ReadDeliveryMethod,
    /// [`Delivery::Auto`]: read the optional /5/0/8 (bounded wait).
    ReadProtocolSupport,
    Reset,
    WriteUri,
    /// A resumed delivery: is the child in State 2 already (or, pulling,
    /// still in State 1)?
    CheckDownloaded,
    /// The Block1 push runs in the driver's [`super::Peers`].
    Pushing,
    PollState,
    PollResult,
    /// Observe /5/0/3 (its answer is also a read of it).
    ObserveState,
    /// Observe /5/0/5 (its answer is also a read of it).
    ObserveResult,
    Execute,
    /// Execute got an error response: read /3/0/3 once before believing it,
    /// since a retransmitted Execute may have reached the child after it
    /// rebooted into the target (its deduplication memory gone, State 0).
    ConfirmRefusal(Code),
    VerifyVersion,
    VerifyResult,
    Finished,
}

/// The update procedure of one child (see the module doc).
#[derive(Debug)]
pub struct UpdateProcedure {
    cfg: UpdateConfig,
    step: Step,
    in_flight: bool,
    wait_until: Option<Instant>,
    /// When the next read of /5/0/3 is due at the latest (`idle`); a pull
    /// whose blocks stop brings it forward (`handle_served`).
    safety_at: Option<Instant>,
    deadline: Option<Instant>,
    /// The caller's deadline ([`UpdateProcedure::set_deadline`]).
    bound: Option<Instant>,
    attempt: u32,
    delivered: u32,
    /// The version last read while verifying, and how often /5/0/5 said
    /// "success" next to a version other than the target.
    last_version: String,
    success_mismatches: u32,
    /// The driver must cancel what is in flight before anything else.
    cancel: bool,
    /// Observations of /5/0/3 and /5/0/5 in this delivery.
    state_obs: Observed,
    result_obs: Observed,
    /// Observe was asked for in this delivery attempt.
    observe_tried: bool,
    /// The driver must end the observations ([`Action::StopObserving`]).
    stop_observing: bool,
    /// An optional read in flight: when it was sent and when it is given up.
    optional: Option<(Instant, Instant)>,
    /// [`Delivery::Auto`]: what /5/0/9 gave.
    auto_method: Option<OptionalRead<lwm2m::DeliveryMethod>>,
    events: VecDeque<UpdateEvent>,
}

/// One observation of the procedure.
#[derive(Debug, Default)]
struct Observed {
    /// The child notifies (it answered the registration with Observe).
    active: bool,
    /// The freshest notification (RFC 7641 §3.4).
    fresh: Freshness,
}

impl UpdateProcedure {
    /// A procedure that starts by reading /3/0/3.
    pub fn new(cfg: UpdateConfig) -> Result<Self, UpdateConfigError> {
        if cfg.max_attempts == 0 {
            return Err(UpdateConfigError::NoAttempts);
        }
        if cfg.poll_interval.is_zero() {
            return Err(UpdateConfigError::ZeroPollInterval);
        }
        match &cfg.delivery {
            Delivery::Pull { uri } if uri.len() > 255 => {
                return Err(UpdateConfigError::UriTooLong(uri.len()))
            }
            Delivery::Pull { .. } => {}
            Delivery::Push { szx, resume_offset } => {
                // Validate now rather than when the push starts.
                Block1Push::new(push_config(&cfg, *szx, *resume_offset))?;
            }
            Delivery::Auto {
                uri,
                szx,
                resume_offset,
            } => {
                if uri.len() > 255 {
                    return Err(UpdateConfigError::UriTooLong(uri.len()));
                }
                Block1Push::new(push_config(&cfg, *szx, *resume_offset))?;
            }
        }
        let mut events = VecDeque::new();
        events.push_back(UpdateEvent::Phase(Phase::Checking));
        Ok(UpdateProcedure {
            cfg,
            step: Step::ReadVersion,
            in_flight: false,
            wait_until: None,
            safety_at: None,
            deadline: None,
            bound: None,
            attempt: 1,
            delivered: 0,
            last_version: String::new(),
            success_mismatches: 0,
            cancel: false,
            state_obs: Observed::default(),
            result_obs: Observed::default(),
            observe_tried: false,
            stop_observing: false,
            optional: None,
            auto_method: None,
            events,
        })
    }

    /// The current phase, for status displays (`otabridge status`).
    pub fn phase(&self) -> Phase {
        match self.step {
            Step::ReadVersion => Phase::Checking,
            Step::Reset => Phase::Resetting,
            Step::ReadDeliveryMethod
            | Step::ReadProtocolSupport
            | Step::WriteUri
            | Step::CheckDownloaded
            | Step::Pushing
            | Step::PollState
            | Step::PollResult
            | Step::ObserveState
            | Step::ObserveResult => Phase::Delivering,
            Step::Execute | Step::ConfirmRefusal(_) => Phase::Downloaded,
            Step::VerifyVersion | Step::VerifyResult | Step::Finished => Phase::Updating,
        }
    }

    /// The caller's deadline for the rest of the procedure (otabridge: the
    /// job's activation deadline, `[ota] activation_timeout_secs`): the
    /// wait for the new version ends at `at` instead of `update_timeout`
    /// after Execute, and a delivery still to run or running ends by `at`
    /// too (whichever of its own timeout and `at` comes first). The
    /// procedure fails there with the failure of the phase it is in
    /// ([`UpdateFailure::UpdateTimeout`] while verifying). Call between two
    /// [`UpdateProcedure::poll_action`]s; a later call replaces it.
    pub fn set_deadline(&mut self, at: Instant) {
        self.bound = Some(at);
        if let Some(d) = self.deadline {
            self.deadline = Some(d.min(at));
        }
    }

    /// Bytes delivered so far and the package length.
    pub fn progress(&self) -> (u32, u32) {
        (self.delivered, self.cfg.total_len)
    }

    /// Finished: nothing more will be sent.
    pub fn is_finished(&self) -> bool {
        matches!(self.step, Step::Finished)
    }

    /// Bytes the push has acknowledged, to journal for a resume; `None` when
    /// not pushing.
    pub fn push_acked(&self) -> Option<u32> {
        matches!(self.step, Step::Pushing).then_some(self.delivered)
    }

    /// What the driver must do next at `now`, when anything (see the module
    /// doc): `None` while a request or push is in flight or a pause runs.
    #[must_use = "the action must be carried out"]
    pub fn poll_action(&mut self, now: Instant) -> Option<Action> {
        if std::mem::take(&mut self.cancel) {
            return Some(Action::Cancel);
        }
        if std::mem::take(&mut self.stop_observing) {
            return Some(Action::StopObserving);
        }
        if self.in_flight || self.wait_until.is_some_and(|w| now < w) {
            return None;
        }
        self.wait_until = None;
        if self.check_deadline(now) {
            return None;
        }
        let req = match &self.step {
            Step::Finished => return None,
            Step::Pushing => {
                let Delivery::Push { szx, resume_offset } = self.cfg.delivery else {
                    return None; // only push deliveries get here
                };
                // Only the first attempt resumes; a retry follows a reset.
                let resume = if self.attempt == 1 { resume_offset } else { 0 };
                self.in_flight = true;
                return Some(Action::Push(push_config(&self.cfg, szx, resume)));
            }
            Step::ReadVersion | Step::VerifyVersion | Step::ConfirmRefusal(_) => {
                read_request(Path::FIRMWARE_VERSION, self.cfg.accept)
            }
            // The optional reads: bounded by `optional_read_timeout`.
            Step::ReadDeliveryMethod => {
                self.optional = Some((now, now + self.cfg.optional_read_timeout));
                read_request(Path::DELIVERY_METHOD, self.cfg.accept)
            }
            Step::ReadProtocolSupport => {
                self.optional = Some((now, now + self.cfg.optional_read_timeout));
                read_request(Path::PROTOCOL_SUPPORT, self.cfg.protocol_support_accept)
            }
            Step::PollState | Step::CheckDownloaded => read_request(Path::STATE, self.cfg.accept),
            Step::PollResult | Step::VerifyResult => {
                read_request(Path::UPDATE_RESULT, self.cfg.accept)
            }
            Step::ObserveState | Step::ObserveResult => {
                let path = self.current_path();
                self.in_flight = true;
                let request = observe::register(read_request(path, self.cfg.accept));
                return Some(Action::Observe { path, request });
            }
            Step::Reset => write_uri(""),
            Step::WriteUri => match &self.cfg.delivery {
                Delivery::Pull { uri } => write_uri(uri),
                Delivery::Push { .. } | Delivery::Auto { .. } => return None,
            },
            // LwM2M Execute is a CoAP POST (OMA TS Transport §8.4.2.4).
            Step::Execute => msg::request(Code::POST, &Path::UPDATE.segments()),
        };
        self.in_flight = true;
        Some(Action::Request(req))
    }

    /// The response to the request in flight.
    // Long on purpose: one arm per (phase, resource) of the LwM2M procedure: the state table in one place.
    pub fn handle_response(&mut self, response: &Packet, now: Instant) {
        if !std::mem::take(&mut self.in_flight) {
            return;
        }
        let code = msg::code(response);
        let path = self.current_path();
        if matches!(
            self.step,
            Step::ReadDeliveryMethod | Step::ReadProtocolSupport
        ) {
            let read = if code == Code::CONTENT {
                Ok((content_format(response), response.payload.as_slice()))
            } else {
                Err(code)
            };
            self.optional_read(read);
            return;
        }
        if !code.is_success() {
            match self.step {
                // No readable state: deliver as planned (a push resume falls
                // back to block 0 if the child forgot the transfer).
                Step::CheckDownloaded => self.step = self.first_delivery_step(),
                // Booting children may answer 5.03 or 4.04 for a while.
                Step::VerifyVersion | Step::VerifyResult => self.wait(now, Step::VerifyVersion),
                Step::Execute => self.step = Step::ConfirmRefusal(code),
                Step::ConfirmRefusal(refused) => self.refused(refused, now),
                // An Observe it will not do (4.02, 4.05...): poll instead;
                // a resource it lacks fails there.
                Step::ObserveState | Step::ObserveResult => {
                    self.observe_answered(path, false);
                    if matches!(self.step, Step::ObserveState) {
                        self.wait(now, Step::PollState);
                    } else {
                        self.idle(now);
                    }
                }
                _ => self.fail(UpdateFailure::Rejected { path, code }, now),
            }
            return;
        }
        let payload = &response.payload;
        let format = content_format(response);
        let text = |p: Path| lwm2m::read_string(format, p, payload);
        match self.step {
            Step::ReadVersion => match text(Path::FIRMWARE_VERSION) {
                Ok(v) => {
                    self.events
                        .push_back(UpdateEvent::CurrentVersion(v.clone()));
                    if self.is_target(&v) {
                        self.finish(Outcome::AlreadyCurrent);
                    } else {
                        self.start_delivery(now);
                    }
                }
                Err(error) => self.fail(UpdateFailure::BadValue { path, error }, now),
            },
            Step::Reset => self.start_delivery(now),
            Step::WriteUri => self.await_state(now),
            Step::ObserveState => {
                let accepted = observe::accepted(response);
                if accepted {
                    self.state_obs.fresh.check(observe::sequence(response), now);
                }
                self.observe_answered(path, accepted);
                match State::read(format, payload) {
                    Ok(State::Downloaded) => self.downloaded(),
                    Ok(_) if accepted => self.step = Step::ObserveResult,
                    Ok(_) => self.step = Step::PollResult,
                    Err(error) => self.fail(UpdateFailure::BadValue { path, error }, now),
                }
            }
            Step::ObserveResult => {
                let accepted = observe::accepted(response);
                if accepted {
                    self.result_obs
                        .fresh
                        .check(observe::sequence(response), now);
                }
                self.observe_answered(path, accepted);
                match UpdateResult::read(format, payload) {
                    Ok(r) if r.is_failure() => self.fail(UpdateFailure::Child(r), now),
                    Ok(_) => self.idle(now),
                    Err(error) => self.fail(UpdateFailure::BadValue { path, error }, now),
                }
            }
            Step::PollState => match State::read(format, payload) {
                Ok(State::Downloaded) => self.downloaded(),
                Ok(_) => self.step = Step::PollResult,
                Err(error) => self.fail(UpdateFailure::BadValue { path, error }, now),
            },
            // 5.xml: State 2 means the child holds a whole package; the
            // journal says it was ours (a push to it had begun), and the
            // version read after Execute confirms it.
            Step::CheckDownloaded => match State::read(format, payload) {
                Ok(State::Downloaded) => self.downloaded(),
                // 5.xml: State 1, the child is fetching the URI the journal
                // says we wrote; it owns the offset, and served blocks are
                // the progress. Writing the URI again would restart it.
                Ok(State::Downloading) if matches!(self.cfg.delivery, Delivery::Pull { .. }) => {
                    self.await_state(now)
                }
                _ => self.step = self.first_delivery_step(),
            },
            Step::PollResult => match UpdateResult::read(format, payload) {
                Ok(r) if r.is_failure() => self.fail(UpdateFailure::Child(r), now),
                Ok(_) => self.idle(now),
                Err(error) => self.fail(UpdateFailure::BadValue { path, error }, now),
            },
            Step::Execute => self.start_verify(now),
            Step::ConfirmRefusal(refused) => match text(Path::FIRMWARE_VERSION) {
                Ok(v) if self.is_target(&v) => self.finish(Outcome::Updated),
                _ => self.refused(refused, now),
            },
            Step::VerifyVersion => match text(Path::FIRMWARE_VERSION) {
                Ok(v) if self.is_target(&v) => self.finish(Outcome::Updated),
                Ok(v) => {
                    self.last_version = v;
                    self.step = Step::VerifyResult;
                }
                Err(error) => self.fail(UpdateFailure::BadValue { path, error }, now),
            },
            Step::VerifyResult => match UpdateResult::read(format, payload) {
                Ok(r) if r.is_failure() => self.fail(UpdateFailure::Child(r), now),
                // 5.xml: result 1 is "updated successfully", yet the
                // version differs. Read once more after a pause in case
                // /3/0/3 lags; twice means another image was installed.
                Ok(UpdateResult::Success) => {
                    self.success_mismatches += 1;
                    if self.success_mismatches >= 2 {
                        let v = std::mem::take(&mut self.last_version);
                        self.fail(UpdateFailure::WrongVersion(v), now);
                    } else {
                        self.wait(now, Step::VerifyVersion);
                    }
                }
                Ok(_) => self.wait(now, Step::VerifyVersion),
                Err(error) => self.fail(UpdateFailure::BadValue { path, error }, now),
            },
            Step::ReadDeliveryMethod | Step::ReadProtocolSupport => {} // above
            Step::Pushing | Step::Finished => {}
        }
    }

    /// The request in flight got no response (how does not matter: every
    /// kind of silence is handled alike).
    pub fn handle_failure(&mut self, _why: TransportFailure, now: Instant) {
        if !std::mem::take(&mut self.in_flight) {
            return;
        }
        match self.step {
            Step::ReadDeliveryMethod | Step::ReadProtocolSupport => self.optional_unanswered(now),
            Step::CheckDownloaded => self.step = self.first_delivery_step(),
            // A child may reboot before answering Execute (docs/protocols/children.md §3
            // step 6 polls "across the reboot"), and is silent while it
            // reboots.
            Step::Execute => self.start_verify(now),
            Step::VerifyVersion | Step::VerifyResult => self.wait(now, Step::VerifyVersion),
            Step::ConfirmRefusal(refused) => self.refused(refused, now),
            _ => {
                let path = self.current_path();
                self.fail(UpdateFailure::Unreachable(path), now)
            }
        }
    }

    /// A block of the package went to this child at `now` (pull delivery
    /// progress, from [`super::serve_block2`]'s reply). While the Package
    /// URI write waits for its answer this is the answer: the child can only
    /// fetch the package because the write reached it (a lost ACK under
    /// loss), so the write is cancelled ([`Action::Cancel`]) and polling
    /// starts.
    pub fn handle_served(&mut self, block: &ServedBlock, now: Instant) {
        if !matches!(
            self.step,
            Step::PollState
                | Step::PollResult
                | Step::WriteUri
                | Step::CheckDownloaded
                | Step::ObserveState
                | Step::ObserveResult
        ) {
            return;
        }
        if matches!(self.step, Step::WriteUri) && self.in_flight {
            self.in_flight = false;
            self.cancel = true;
            self.await_state(now);
        }
        if self.state_obs.active && matches!(self.step, Step::PollState) && !self.in_flight {
            // Observed, a pull under way: a child that reboots mid-fetch
            // forgets its observations and stops fetching, and nothing
            // would tell us before the safety read. So the read comes two
            // poll intervals after the last block served, whichever is
            // first; every block served moves it on.
            let stalled = now + self.cfg.poll_interval.saturating_mul(2);
            self.wait_until = Some(self.safety_at.map_or(stalled, |s| s.min(stalled)));
        }
        let end = block
            .offset
            .saturating_add(block.len)
            .min(self.cfg.total_len);
        if end > self.delivered {
            self.delivered = end;
            self.events.push_back(UpdateEvent::Progress {
                delivered: end,
                total: self.cfg.total_len,
            });
        }
    }

    /// An event of the push started by [`Action::Push`], at `now`. Progress
    /// events may be left out; the push's end ([`PushEvent::Done`],
    /// [`PushEvent::Failed`]) may not.
    pub fn handle_push_event(&mut self, event: &PushEvent, now: Instant) {
        if !(self.in_flight && matches!(self.step, Step::Pushing)) {
            return; // the procedure moved on (deadline) and cancelled it
        }
        match event {
            PushEvent::Progress { acked, total, .. } => {
                if *acked != self.delivered {
                    self.delivered = *acked;
                    self.events.push_back(UpdateEvent::Progress {
                        delivered: *acked,
                        total: *total,
                    });
                }
            }
            // 5.xml: a complete Package write gives State 2; poll to see
            // it, since some children verify the image first.
            PushEvent::Done(_) => {
                self.in_flight = false;
                self.step = Step::PollState;
                self.await_state(now);
                self.wait_until = None;
            }
            PushEvent::Failed(f) => {
                self.in_flight = false;
                self.fail(UpdateFailure::Push(f.clone()), now);
            }
            PushEvent::BlockSize { .. } | PushEvent::Restarted { .. } => {}
        }
    }

    /// A notification of the observation of `path` started by
    /// [`Action::Observe`], at `now` (module doc, 7.). Stale ones (RFC 7641
    /// §3.4) and those for a delivery that moved on are dropped.
    pub fn handle_notification(&mut self, path: Path, notification: &Packet, now: Instant) {
        let obs = match path {
            Path::STATE => &mut self.state_obs,
            Path::UPDATE_RESULT => &mut self.result_obs,
            _ => return,
        };
        if !obs.active || !obs.fresh.check(observe::sequence(notification), now) {
            return;
        }
        if observe::ends_observation(notification) {
            obs.active = false;
            self.events.push_back(UpdateEvent::ObservationEnded(path));
            // Polled from now on: the next read comes at the poll interval.
            let next = now + self.cfg.poll_interval;
            if path == Path::STATE && self.wait_until.is_some_and(|w| w > next) {
                self.wait_until = Some(next);
            }
            if !msg::code(notification).is_success() {
                return;
            }
        }
        if !matches!(
            self.step,
            Step::PollState | Step::PollResult | Step::ObserveResult
        ) {
            return;
        }
        let format = content_format(notification);
        let payload = &notification.payload;
        if path == Path::STATE {
            match State::read(format, payload) {
                Ok(State::Downloaded) => {
                    self.drop_in_flight();
                    self.downloaded();
                }
                // 5.xml: a failed download goes back to Idle; /5/0/5 says why.
                Ok(State::Idle) if !self.in_flight => {
                    self.step = Step::PollResult;
                    self.wait_until = None;
                }
                Ok(_) => {}
                Err(error) => {
                    self.drop_in_flight();
                    self.fail(UpdateFailure::BadValue { path, error }, now);
                }
            }
        } else {
            match UpdateResult::read(format, payload) {
                Ok(r) if r.is_failure() => {
                    self.drop_in_flight();
                    self.fail(UpdateFailure::Child(r), now);
                }
                Ok(_) => {}
                Err(error) => {
                    self.drop_in_flight();
                    self.fail(UpdateFailure::BadValue { path, error }, now);
                }
            }
        }
    }

    /// Ends a pause or a phase whose time has come. A push past the
    /// download deadline is abandoned ([`Action::Cancel`]).
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.wait_until.is_some_and(|w| now >= w) {
            self.wait_until = None;
        }
        if self.pushing() && self.deadline.is_some_and(|d| now >= d) {
            self.in_flight = false;
            self.cancel = true;
        }
        // An optional read does not wait for the whole exchange.
        if self.optional_until().is_some_and(|until| now >= until) {
            self.in_flight = false;
            self.cancel = true;
            self.optional_unanswered(now);
        }
        // The caller's deadline does not wait for a request in flight.
        if self.in_flight && self.bound.is_some_and(|b| now >= b) {
            self.in_flight = false;
            self.cancel = true;
        }
        if !self.in_flight {
            self.check_deadline(now);
        }
    }

    /// When [`UpdateProcedure::handle_timeout`] is next due.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.pushing() {
            return self.deadline;
        }
        if self.is_finished() {
            return None;
        }
        if self.in_flight {
            return match (self.bound, self.optional_until()) {
                (Some(b), Some(o)) => Some(b.min(o)),
                (b, o) => b.or(o),
            };
        }
        match (self.wait_until, self.deadline.or(self.bound)) {
            (Some(w), Some(d)) => Some(w.min(d)),
            (w, d) => w.or(d),
        }
    }

    /// The next event.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<UpdateEvent> {
        self.events.pop_front()
    }

    /// When the optional read in flight is given up, if one is.
    fn optional_until(&self) -> Option<Instant> {
        let reading = self.in_flight
            && matches!(
                self.step,
                Step::ReadDeliveryMethod | Step::ReadProtocolSupport
            );
        self.optional.filter(|_| reading).map(|(_, until)| until)
    }

    fn pushing(&self) -> bool {
        self.in_flight && matches!(self.step, Step::Pushing)
    }

    /// A request in flight whose outcome no longer matters: the driver
    /// cancels it.
    fn drop_in_flight(&mut self) {
        if std::mem::take(&mut self.in_flight) {
            self.cancel = true;
        }
    }

    /// The delivery waits for State 2: observe it (once per delivery, if
    /// configured), else poll after the poll interval.
    fn await_state(&mut self, now: Instant) {
        if self.cfg.observe && !self.observe_tried {
            self.observe_tried = true;
            self.step = Step::ObserveState;
            self.wait_until = None;
        } else {
            self.wait(now, Step::PollState);
        }
    }

    /// The answer to an Observe registration of `path` came.
    fn observe_answered(&mut self, path: Path, accepted: bool) {
        if path == Path::STATE {
            self.state_obs.active = accepted;
        } else {
            self.result_obs.active = accepted;
        }
        self.events
            .push_back(UpdateEvent::Observe { path, accepted });
    }

    /// Nothing to do until the next read of /5/0/3: the poll interval, or
    /// `observe_check` while /5/0/3 is observed.
    fn idle(&mut self, now: Instant) {
        let pause = if self.state_obs.active {
            self.cfg.observe_check.max(self.cfg.poll_interval)
        } else {
            self.cfg.poll_interval
        };
        self.step = Step::PollState;
        self.wait_until = Some(now + pause);
        self.safety_at = self.wait_until;
    }

    /// The delivery is over (done, failed, retried): its observations end.
    fn end_observations(&mut self) {
        if self.state_obs.active || self.result_obs.active || self.observe_tried {
            self.stop_observing = true;
        }
        self.state_obs = Observed::default();
        self.result_obs = Observed::default();
        self.observe_tried = false;
    }

    /// State 2 read: the delivery is complete. The child holds the whole
    /// image, which is what its progress says from now on: a pull's last
    /// blocks may be served after the State 2 that ends the wait (or not
    /// be seen at all: a child that had the image), and a watcher of
    /// [`UpdateEvent::Progress`] (the job, the delivered-bytes counter)
    /// would stop short of the size.
    fn downloaded(&mut self) {
        self.end_observations();
        self.wait_until = None;
        if self.delivered < self.cfg.total_len {
            self.delivered = self.cfg.total_len;
            self.events.push_back(UpdateEvent::Progress {
                delivered: self.delivered,
                total: self.cfg.total_len,
            });
        }
        self.events.push_back(UpdateEvent::Phase(Phase::Downloaded));
        self.deadline = None;
        self.step = Step::Execute;
    }

    fn current_path(&self) -> Path {
        match self.step {
            Step::ReadVersion | Step::VerifyVersion | Step::ConfirmRefusal(_) => {
                Path::FIRMWARE_VERSION
            }
            Step::ReadDeliveryMethod => Path::DELIVERY_METHOD,
            Step::ReadProtocolSupport => Path::PROTOCOL_SUPPORT,
            Step::Reset | Step::WriteUri => Path::PACKAGE_URI,
            Step::Pushing => Path::PACKAGE,
            Step::PollState | Step::CheckDownloaded | Step::ObserveState => Path::STATE,
            Step::PollResult | Step::VerifyResult | Step::ObserveResult => Path::UPDATE_RESULT,
            Step::Execute => Path::UPDATE,
            Step::Finished => Path::STATE,
        }
    }

    fn start_delivery(&mut self, now: Instant) {
        self.events.push_back(UpdateEvent::Phase(Phase::Delivering));
        let own = now + self.cfg.download_timeout;
        self.deadline = Some(self.bound.map_or(own, |b| b.min(own)));
        self.delivered = 0;
        if matches!(self.cfg.delivery, Delivery::Auto { .. }) {
            self.step = Step::ReadDeliveryMethod;
            return;
        }
        self.begin_delivery();
    }

    /// The delivery's first step once pull or push is known.
    fn begin_delivery(&mut self) {
        // A first attempt that resumes an earlier delivery asks the child
        // first: it may hold the whole image already (a gateway stopped
        // during the last block, before its answer was journaled), or be
        // fetching it still.
        let resumed = match &self.cfg.delivery {
            Delivery::Push { resume_offset, .. } => *resume_offset > 0 || self.cfg.resumed,
            Delivery::Pull { .. } | Delivery::Auto { .. } => self.cfg.resumed,
        };
        self.step = if resumed && self.attempt == 1 {
            Step::CheckDownloaded
        } else {
            self.first_delivery_step()
        };
    }

    /// The step that starts sending the package.
    fn first_delivery_step(&self) -> Step {
        match &self.cfg.delivery {
            Delivery::Pull { .. } | Delivery::Auto { .. } => Step::WriteUri,
            Delivery::Push { .. } => Step::Pushing,
        }
    }

    /// The answer to an optional read (module doc, 8.): the payload and
    /// its format, or the code of another answer than 2.05.
    fn optional_read(&mut self, read: Result<(Option<lwm2m::ContentFormat>, &[u8]), Code>) {
        self.optional = None;
        match self.step {
            Step::ReadDeliveryMethod => {
                let got = match read {
                    Ok((f, p)) => match lwm2m::DeliveryMethod::read(f, p) {
                        Ok(m) => OptionalRead::Value(m),
                        Err(e) => OptionalRead::Unusable(e),
                    },
                    Err(code) => OptionalRead::Refused(code),
                };
                self.method_read(got);
            }
            Step::ReadProtocolSupport => {
                let got = match read {
                    Ok((f, p)) => match lwm2m::read_integers(f, Path::PROTOCOL_SUPPORT, p) {
                        Ok(v) => OptionalRead::Value(v),
                        Err(e) => OptionalRead::Unusable(e),
                    },
                    Err(code) => OptionalRead::Refused(code),
                };
                self.auto_decided(Some(got));
            }
            _ => {}
        }
    }

    /// The optional read in flight got no answer (silence, or its bound
    /// passed): the choice goes on without it.
    fn optional_unanswered(&mut self, now: Instant) {
        let sent = self.optional.take().map_or(now, |(sent, _)| sent);
        let path = self.current_path();
        self.events.push_back(UpdateEvent::OptionalUnanswered {
            path,
            waited: now.saturating_duration_since(sent),
        });
        match self.step {
            Step::ReadDeliveryMethod => self.method_read(OptionalRead::Unanswered),
            Step::ReadProtocolSupport => self.auto_decided(Some(OptionalRead::Unanswered)),
            _ => {}
        }
    }

    /// /5/0/9 gave `got`: decided, or /5/0/8 next.
    fn method_read(&mut self, got: OptionalRead<lwm2m::DeliveryMethod>) {
        let open = matches!(got, OptionalRead::Value(lwm2m::DeliveryMethod::Both))
            || got.value().is_none();
        self.auto_method = Some(got);
        if open {
            self.step = Step::ReadProtocolSupport;
        } else {
            self.auto_decided(None);
        }
    }

    /// Both reads done: pull or push, then the delivery.
    fn auto_decided(&mut self, protocols: Option<OptionalRead<Vec<i64>>>) {
        let method = self.auto_method.take().unwrap_or(OptionalRead::Unanswered);
        let coap_listed = protocols
            .as_ref()
            .and_then(|p| p.value())
            .map(|p| p.contains(&0));
        let (chosen, why) = choose(method.value().copied(), coap_listed);
        if let Delivery::Auto {
            uri,
            szx,
            resume_offset,
        } = &self.cfg.delivery
        {
            self.cfg.delivery = match chosen {
                Chosen::Pull => Delivery::Pull { uri: uri.clone() },
                Chosen::Push => Delivery::Push {
                    szx: *szx,
                    resume_offset: *resume_offset,
                },
            };
        }
        self.events
            .push_back(UpdateEvent::DeliveryChosen(AutoChoice {
                chosen,
                why,
                method,
                protocols,
            }));
        self.begin_delivery();
    }

    /// Execute was refused with `code` and the version is not the target.
    fn refused(&mut self, code: Code, now: Instant) {
        let failure = UpdateFailure::Rejected {
            path: Path::UPDATE,
            code,
        };
        self.fail(failure, now);
    }

    fn start_verify(&mut self, now: Instant) {
        self.events.push_back(UpdateEvent::Phase(Phase::Updating));
        self.deadline = Some(self.bound.unwrap_or(now + self.cfg.update_timeout));
        self.wait(now, Step::VerifyVersion);
    }

    fn wait(&mut self, now: Instant, next: Step) {
        self.step = next;
        self.wait_until = Some(now + self.cfg.poll_interval);
    }

    fn check_deadline(&mut self, now: Instant) -> bool {
        // Between phases (no phase timer) the caller's deadline still holds.
        let due = self.deadline.or(self.bound);
        if due.is_none_or(|d| now < d) || self.is_finished() {
            return false;
        }
        let failure = match self.step {
            Step::Execute | Step::ConfirmRefusal(_) | Step::VerifyVersion | Step::VerifyResult => {
                UpdateFailure::UpdateTimeout
            }
            _ => UpdateFailure::DownloadTimeout,
        };
        self.fail(failure, now);
        true
    }

    fn fail(&mut self, failure: UpdateFailure, now: Instant) {
        self.end_observations();
        self.in_flight = false;
        self.wait_until = None;
        if failure.transient() && self.attempt < self.cfg.max_attempts {
            self.attempt += 1;
            self.events.push_back(UpdateEvent::Retrying {
                attempt: self.attempt,
                cause: failure,
            });
            self.events.push_back(UpdateEvent::Phase(Phase::Resetting));
            self.deadline = None;
            // Reset after a pause, so a child that just failed settles.
            self.wait(now, Step::Reset);
            return;
        }
        self.finish(Outcome::Failed(failure));
    }

    /// Whether /3/0/3 (trimmed) shows the target, by the configured policy.
    fn is_target(&self, reported: &str) -> bool {
        self.cfg
            .version_policy
            .same(&self.cfg.target_version, reported)
    }

    fn finish(&mut self, outcome: Outcome) {
        self.end_observations();
        self.step = Step::Finished;
        self.in_flight = false;
        self.wait_until = None;
        self.deadline = None;
        self.events.push_back(UpdateEvent::Finished(outcome));
    }
}

fn push_config(cfg: &UpdateConfig, szx: u8, resume_offset: u32) -> PushConfig {
    PushConfig {
        szx,
        resume_offset,
        ..PushConfig::lwm2m_package(cfg.total_len)
    }
}

/// The Content-Format of an answer (`None` when it has none); an option
/// that is not a 16-bit uint (RFC 7252 §5.10.3) becomes format 65535,
/// which no decoder reads, so the value is reported as undecodable.
pub fn content_format(response: &Packet) -> Option<lwm2m::ContentFormat> {
    match msg::uint(response, CoapOption::ContentFormat) {
        Ok(f) => f.map(|f| lwm2m::ContentFormat(u16::try_from(f).unwrap_or(u16::MAX))),
        Err(_) => Some(lwm2m::ContentFormat(u16::MAX)),
    }
}

/// A read of `path`, asking for `accept` (RFC 7252 §5.10.4).
pub fn read_request(path: Path, accept: Option<lwm2m::ContentFormat>) -> Packet {
    let mut p = msg::request(Code::GET, &path.segments());
    if let Some(f) = accept {
        msg::set_uint(&mut p, CoapOption::Accept, u32::from(f.0));
    }
    p
}

/// `PUT /5/0/1` with a text/plain URI (docs/protocols/children.md §3 step 2; Content-Format
/// 0 works for a single-resource write in LwM2M 1.0/1.1).
fn write_uri(uri: &str) -> Packet {
    let mut p = msg::request(Code::PUT, &Path::PACKAGE_URI.segments());
    msg::set_uint(&mut p, CoapOption::ContentFormat, msg::TEXT_PLAIN);
    p.payload = uri.as_bytes().to_vec();
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coap::msg::uri_path;

    fn at(ms: u64) -> Instant {
        Instant::from_millis(ms)
    }

    fn answer(code: Code, payload: &str) -> Packet {
        let mut p = Packet::new();
        msg::set_code(&mut p, code);
        p.payload = payload.as_bytes().to_vec();
        p
    }

    fn content(payload: &str) -> Packet {
        answer(Code::CONTENT, payload)
    }

    fn pull_cfg() -> UpdateConfig {
        let uri = lwm2m::package_uri("10.0.0.1:5683", "ab");
        UpdateConfig {
            poll_interval: Duration::from_secs(1),
            observe: false,
            ..UpdateConfig::new("2.0", 100, Delivery::Pull { uri })
        }
    }

    /// (method, path, payload) of the next request at `now`.
    fn next(u: &mut UpdateProcedure, now: u64) -> (Code, String, Vec<u8>) {
        let Some(Action::Request(r)) = u.poll_action(at(now)) else {
            panic!("no request")
        };
        assert_eq!(u.poll_action(at(now)), None, "one at a time");
        (msg::code(&r), uri_path(&r).unwrap().join("/"), r.payload)
    }

    fn none(u: &mut UpdateProcedure, now: u64) {
        assert_eq!(u.poll_action(at(now)), None);
    }

    fn served(offset: u32, len: u32) -> ServedBlock {
        ServedBlock {
            name: "ab".into(),
            num: offset / 64,
            szx: 2,
            offset,
            len,
            last: offset + len == 100,
            total: 100,
        }
    }

    fn push_cfg(resume_offset: u32) -> UpdateConfig {
        UpdateConfig {
            poll_interval: Duration::from_secs(1),
            download_timeout: Duration::from_secs(60),
            observe: false,
            ..UpdateConfig::new(
                "2.0",
                100,
                Delivery::Push {
                    szx: 2,
                    resume_offset,
                },
            )
        }
    }

    fn progress(acked: u32, ms: u64) -> PushEvent {
        PushEvent::Progress {
            acked,
            total: 100,
            at: at(ms),
        }
    }

    fn finished(u: &mut UpdateProcedure) -> Option<Outcome> {
        std::iter::from_fn(|| u.poll_event()).find_map(|e| match e {
            UpdateEvent::Finished(o) => Some(o),
            _ => None,
        })
    }

    #[test]
    fn pull_update_end_to_end() {
        let mut u = UpdateProcedure::new(pull_cfg()).unwrap();
        assert_eq!(u.phase(), Phase::Checking);
        assert_eq!(next(&mut u, 0).1, "3/0/3");
        u.handle_response(&content("1.0"), at(10));
        assert_eq!(u.phase(), Phase::Delivering);
        let (code, path, body) = next(&mut u, 10);
        assert_eq!((code, path.as_str()), (Code::PUT, "5/0/1"));
        assert_eq!(body, b"coap://10.0.0.1:5683/fw/ab");
        u.handle_response(&answer(Code::CHANGED, ""), at(20));
        // Polling waits one interval.
        none(&mut u, 500);
        assert_eq!(u.poll_timeout(), Some(at(1020)));
        u.handle_timeout(at(1020));
        assert_eq!(next(&mut u, 1020).1, "5/0/3");
        u.handle_response(&content("1"), at(1030));
        u.handle_served(&served(0, 64), at(1030));
        assert_eq!(next(&mut u, 1030).1, "5/0/5");
        u.handle_response(&content("0"), at(1040));
        assert_eq!(next(&mut u, 2040).1, "5/0/3");
        u.handle_response(&content("2"), at(2050));
        let (code, path, _) = next(&mut u, 2050);
        assert_eq!((code, path.as_str()), (Code::POST, "5/0/2"));
        // The child reboots before answering Execute: not a failure.
        u.handle_failure(TransportFailure::GaveUp, at(95_000));
        assert_eq!(next(&mut u, 96_000).1, "3/0/3");
        u.handle_failure(TransportFailure::GaveUp, at(190_000));
        assert_eq!(next(&mut u, 191_000).1, "3/0/3");
        u.handle_response(&content("1.0"), at(191_010));
        assert_eq!(next(&mut u, 191_010).1, "5/0/5");
        u.handle_response(&content("0"), at(191_020));
        assert_eq!(next(&mut u, 192_020).1, "3/0/3");
        u.handle_response(&content("2.0"), at(192_030));
        let events: Vec<_> = std::iter::from_fn(|| u.poll_event()).collect();
        assert_eq!(
            events,
            vec![
                UpdateEvent::Phase(Phase::Checking),
                UpdateEvent::CurrentVersion("1.0".into()),
                UpdateEvent::Phase(Phase::Delivering),
                UpdateEvent::Progress {
                    delivered: 64,
                    total: 100
                },
                // State 2: the child has it all, its last block served or
                // not (yet).
                UpdateEvent::Progress {
                    delivered: 100,
                    total: 100
                },
                UpdateEvent::Phase(Phase::Downloaded),
                UpdateEvent::Phase(Phase::Updating),
                UpdateEvent::Finished(Outcome::Updated),
            ]
        );
        assert!(u.is_finished());
        assert_eq!(u.progress(), (100, 100));
        none(&mut u, 999_999);
    }

    fn observe_cfg() -> UpdateConfig {
        UpdateConfig {
            observe: true,
            observe_check: Duration::from_secs(60),
            ..pull_cfg()
        }
    }

    /// The path of the next action, an Observe registration.
    fn next_observe(u: &mut UpdateProcedure, now: u64) -> Path {
        let Some(Action::Observe { path, request }) = u.poll_action(at(now)) else {
            panic!("no observe")
        };
        assert_eq!(msg::code(&request), Code::GET);
        assert_eq!(observe::sequence(&request), Some(observe::REGISTER));
        assert_eq!(
            uri_path(&request).unwrap().join("/"),
            path.to_string().trim_start_matches('/')
        );
        path
    }

    fn notified(seq: u32, payload: &str) -> Packet {
        observe::notification(seq, payload.as_bytes())
    }

    /// A pull procedure that wrote its URI at 20 ms and observes both
    /// resources from 40 ms (State 1, Result 0).
    fn observing() -> UpdateProcedure {
        let mut u = UpdateProcedure::new(observe_cfg()).unwrap();
        assert_eq!(next(&mut u, 0).1, "3/0/3");
        u.handle_response(&content("1.0"), at(10));
        assert_eq!(next(&mut u, 10).1, "5/0/1");
        u.handle_response(&answer(Code::CHANGED, ""), at(20));
        // No poll interval: the registration is the first read.
        assert_eq!(next_observe(&mut u, 20), Path::STATE);
        u.handle_response(&notified(10, "1"), at(30));
        assert_eq!(next_observe(&mut u, 30), Path::UPDATE_RESULT);
        u.handle_response(&notified(3, "0"), at(40));
        u
    }

    #[test]
    fn observed_state_2_ends_the_delivery_without_polling() {
        let mut u = observing();
        // Nothing to do until the safety read, observe_check later.
        none(&mut u, 59_000);
        assert_eq!(u.poll_timeout(), Some(at(60_040)));
        u.handle_served(&served(0, 64), at(1000));
        u.handle_notification(Path::STATE, &notified(11, "1"), at(1000));
        none(&mut u, 1000);
        // A reordered State 2 from before (seq 9 < 11) is not news.
        u.handle_notification(Path::STATE, &notified(9, "2"), at(1500));
        none(&mut u, 1500);
        assert_eq!(u.phase(), Phase::Delivering);
        u.handle_notification(Path::STATE, &notified(12, "2"), at(2000));
        assert_eq!(u.phase(), Phase::Downloaded);
        assert_eq!(u.poll_action(at(2000)), Some(Action::StopObserving));
        assert_eq!(next(&mut u, 2000).1, "5/0/2");
        // Late notifications change nothing any more.
        u.handle_notification(Path::UPDATE_RESULT, &notified(4, "5"), at(2100));
        let events: Vec<_> = std::iter::from_fn(|| u.poll_event()).collect();
        assert!(events.contains(&UpdateEvent::Observe {
            path: Path::STATE,
            accepted: true
        }));
        assert!(events.contains(&UpdateEvent::Observe {
            path: Path::UPDATE_RESULT,
            accepted: true
        }));
        assert_eq!(events.last(), Some(&UpdateEvent::Phase(Phase::Downloaded)));
    }

    #[test]
    fn a_pull_whose_blocks_stop_is_read_before_the_safety_read() {
        let mut u = observing();
        assert_eq!(u.poll_timeout(), Some(at(60_040)));
        // Blocks flowing push the read on: two poll intervals after the last.
        u.handle_served(&served(0, 32), at(1_000));
        assert_eq!(u.poll_timeout(), Some(at(3_000)));
        u.handle_served(&served(32, 32), at(2_500));
        assert_eq!(u.poll_timeout(), Some(at(4_500)));
        none(&mut u, 4_000);
        // They stop (the child rebooted): /5/0/3 is read then, not at 60 s.
        u.handle_timeout(at(4_500));
        assert_eq!(next(&mut u, 4_500).1, "5/0/3");
        u.handle_response(&content("1"), at(4_510));
        assert_eq!(next(&mut u, 4_510).1, "5/0/5");
        u.handle_response(&content("0"), at(4_520));
        // Still downloading and no block since: back to the safety read.
        assert_eq!(u.poll_timeout(), Some(at(64_520)));
    }

    #[test]
    fn silence_while_observed_falls_back_to_a_bounded_poll() {
        let mut u = observing();
        u.handle_timeout(at(60_040));
        assert_eq!(next(&mut u, 60_040).1, "5/0/3");
        u.handle_response(&content("1"), at(60_050));
        assert_eq!(next(&mut u, 60_050).1, "5/0/5");
        u.handle_response(&content("0"), at(60_060));
        // Still observed: the next safety read is observe_check away.
        assert_eq!(u.poll_timeout(), Some(at(120_060)));
        // The observation ends (4.04 notification): polled from now on.
        let mut gone = msg::response(Code::NOT_FOUND);
        msg::set_uint(&mut gone, CoapOption::Observe, 13);
        u.handle_notification(Path::STATE, &gone, at(61_000));
        assert_eq!(u.poll_timeout(), Some(at(62_000)));
        u.handle_timeout(at(62_000));
        assert_eq!(next(&mut u, 62_000).1, "5/0/3");
        u.handle_response(&content("2"), at(62_010));
        assert_eq!(u.poll_action(at(62_010)), Some(Action::StopObserving));
        assert!(std::iter::from_fn(|| u.poll_event())
            .any(|e| e == UpdateEvent::ObservationEnded(Path::STATE)));
    }

    #[test]
    fn a_failure_notified_during_a_read_cancels_it() {
        let mut u = observing();
        u.handle_timeout(at(60_040));
        assert_eq!(next(&mut u, 60_040).1, "5/0/3");
        // /5/0/5 = 5 (integrity) arrives while the safety read is out.
        u.handle_notification(Path::UPDATE_RESULT, &notified(4, "5"), at(60_045));
        assert_eq!(u.poll_action(at(60_045)), Some(Action::Cancel));
        assert_eq!(u.poll_action(at(60_045)), Some(Action::StopObserving));
        // Transient: a reset and a new delivery, observed again.
        let events: Vec<_> = std::iter::from_fn(|| u.poll_event()).collect();
        assert!(events
            .iter()
            .any(|e| matches!(e, UpdateEvent::Retrying { attempt: 2, .. })));
        assert_eq!(next(&mut u, 61_045).1, "5/0/1");
        u.handle_response(&answer(Code::CHANGED, ""), at(61_050));
        assert_eq!(next(&mut u, 61_050).1, "5/0/1");
        u.handle_response(&answer(Code::CHANGED, ""), at(61_060));
        assert_eq!(next_observe(&mut u, 61_060), Path::STATE);
    }

    #[test]
    fn state_0_notified_reads_the_result_at_once() {
        let mut u = observing();
        u.handle_notification(Path::STATE, &notified(11, "0"), at(5000));
        assert_eq!(next(&mut u, 5000).1, "5/0/5");
        u.handle_response(&content("4"), at(5010));
        assert!(std::iter::from_fn(|| u.poll_event()).any(|e| matches!(
            e,
            UpdateEvent::Retrying {
                cause: UpdateFailure::Child(UpdateResult::ConnectionLost),
                ..
            }
        )));
    }

    #[test]
    fn a_child_that_refuses_observe_is_polled() {
        let mut u = UpdateProcedure::new(observe_cfg()).unwrap();
        assert_eq!(next(&mut u, 0).1, "3/0/3");
        u.handle_response(&content("1.0"), at(10));
        assert_eq!(next(&mut u, 10).1, "5/0/1");
        u.handle_response(&answer(Code::CHANGED, ""), at(20));
        assert_eq!(next_observe(&mut u, 20), Path::STATE);
        // Answered without Observe (RFC 7641 §3.1: not registered).
        u.handle_response(&content("1"), at(30));
        assert_eq!(next(&mut u, 30).1, "5/0/5");
        u.handle_response(&content("0"), at(40));
        assert_eq!(u.poll_timeout(), Some(at(1040)), "the poll interval");
        assert_eq!(next(&mut u, 1040).1, "5/0/3");
        // An error answer is a refusal too, not a failure.
        let mut v = UpdateProcedure::new(observe_cfg()).unwrap();
        let _ = next(&mut v, 0);
        v.handle_response(&content("1.0"), at(10));
        let _ = next(&mut v, 10);
        v.handle_response(&answer(Code::CHANGED, ""), at(20));
        assert_eq!(next_observe(&mut v, 20), Path::STATE);
        v.handle_response(&answer(Code::METHOD_NOT_ALLOWED, ""), at(30));
        assert_eq!(next(&mut v, 1030).1, "5/0/3");
        let refused = UpdateEvent::Observe {
            path: Path::STATE,
            accepted: false,
        };
        assert!(std::iter::from_fn(|| u.poll_event()).any(|e| e == refused));
        assert!(std::iter::from_fn(|| v.poll_event()).any(|e| e == refused));
    }

    #[test]
    fn already_current_sends_nothing_more() {
        let mut u = UpdateProcedure::new(pull_cfg()).unwrap();
        let _ = next(&mut u, 0);
        u.handle_response(&content("2.0\n"), at(1));
        assert_eq!(finished(&mut u), Some(Outcome::AlreadyCurrent));
        none(&mut u, 10);
    }

    #[test]
    fn download_failure_result_is_mapped_and_permanent_ones_not_retried() {
        let mut u = UpdateProcedure::new(pull_cfg()).unwrap();
        let _ = next(&mut u, 0);
        u.handle_response(&content("1.0"), at(0));
        let _ = next(&mut u, 0);
        u.handle_response(&answer(Code::CHANGED, ""), at(0));
        let _ = next(&mut u, 1000);
        u.handle_response(&content("0"), at(1000));
        let _ = next(&mut u, 1000);
        u.handle_response(&content("2"), at(1000)); // not enough storage
        let out = finished(&mut u).unwrap();
        assert_eq!(
            out,
            Outcome::Failed(UpdateFailure::Child(UpdateResult::NotEnoughStorage))
        );
        let Outcome::Failed(f) = out else {
            unreachable!()
        };
        assert_eq!(
            f.to_iotda(),
            (
                ResultCode::LOW_SPACE,
                "Not enough storage for the new firmware package"
            )
        );
    }

    #[test]
    fn transient_failure_resets_uri_then_retries() {
        let mut u = UpdateProcedure::new(pull_cfg()).unwrap();
        let _ = next(&mut u, 0);
        u.handle_response(&content("1.0"), at(0));
        let _ = next(&mut u, 0);
        u.handle_response(&answer(Code::CHANGED, ""), at(0));
        let _ = next(&mut u, 1000);
        u.handle_response(&content("0"), at(1000));
        let _ = next(&mut u, 1000);
        u.handle_response(&content("4"), at(1000)); // connection lost
        let (code, path, body) = next(&mut u, 2000);
        assert_eq!(
            (code, path.as_str(), body.as_slice()),
            (Code::PUT, "5/0/1", &b""[..])
        );
        u.handle_response(&answer(Code::CHANGED, ""), at(2000));
        let (_, path, body) = next(&mut u, 2000);
        assert_eq!(
            (path.as_str(), body.as_slice()),
            ("5/0/1", &b"coap://10.0.0.1:5683/fw/ab"[..])
        );
        let events: Vec<_> = std::iter::from_fn(|| u.poll_event()).collect();
        assert!(events.contains(&UpdateEvent::Retrying {
            attempt: 2,
            cause: UpdateFailure::Child(UpdateResult::ConnectionLost)
        }));
        // Silence is final at once: the caller retries that.
        u.handle_failure(TransportFailure::GaveUp, at(3000));
        assert_eq!(
            finished(&mut u),
            Some(Outcome::Failed(UpdateFailure::Unreachable(
                Path::PACKAGE_URI
            )))
        );
    }

    /// A pull procedure paused at State 2 (Execute next) at 1 s, as a
    /// driver holds it between delivery and activation.
    fn downloaded_at_1s() -> UpdateProcedure {
        let mut u = UpdateProcedure::new(pull_cfg()).unwrap();
        let _ = next(&mut u, 0);
        u.handle_response(&content("1.0"), at(0));
        let _ = next(&mut u, 0);
        u.handle_response(&answer(Code::CHANGED, ""), at(0));
        let _ = next(&mut u, 1000);
        u.handle_response(&content("2"), at(1000));
        assert_eq!(u.phase(), Phase::Downloaded);
        u
    }

    /// Polls through a reboot that never shows the target from `from` ms
    /// on, until the procedure ends; returns when, and how.
    fn verify_until_end(u: &mut UpdateProcedure, from: u64) -> (u64, Outcome) {
        let mut now = from;
        loop {
            u.handle_timeout(at(now));
            if let Some(Action::Request(r)) = u.poll_action(at(now)) {
                let path = uri_path(&r).unwrap().join("/");
                let answer = match path.as_str() {
                    "5/0/2" => answer(Code::CHANGED, ""),
                    "3/0/3" => content("1.0"),
                    _ => content("0"),
                };
                u.handle_response(&answer, at(now));
            }
            if let Some(o) = finished(u) {
                return (now, o);
            }
            assert!(now < 4_000_000, "the procedure must end");
            now = u
                .poll_timeout()
                .map_or(now + 1000, |t| t.as_millis().max(now));
        }
    }

    /// Issue 12: the caller's deadline decides when the wait for the new
    /// version ends, both ways: past `update_timeout` (600 s) when the
    /// caller allows longer, before it when the caller allows less. The
    /// two timers no longer race.
    #[test]
    fn the_callers_deadline_replaces_update_timeout() {
        assert_eq!(pull_cfg().update_timeout, Duration::from_secs(600));
        for bound in [1_201_000, 31_000] {
            let mut u = downloaded_at_1s();
            u.set_deadline(at(bound));
            let (when, out) = verify_until_end(&mut u, 1000);
            assert_eq!(out, Outcome::Failed(UpdateFailure::UpdateTimeout));
            assert_eq!(when, bound, "ends at the caller's deadline");
        }
        // Without one, `update_timeout` after Execute, as before.
        let mut u = downloaded_at_1s();
        let (when, _) = verify_until_end(&mut u, 1000);
        assert_eq!(when, 601_000);
    }

    /// The caller's deadline also ends a delivery that runs past it.
    #[test]
    fn the_callers_deadline_bounds_a_delivery() {
        let mut u = UpdateProcedure::new(UpdateConfig {
            max_attempts: 1,
            ..pull_cfg()
        })
        .unwrap();
        u.set_deadline(at(10_000));
        let _ = next(&mut u, 0);
        u.handle_response(&content("1.0"), at(0));
        let _ = next(&mut u, 0);
        u.handle_response(&answer(Code::CHANGED, ""), at(0));
        assert_eq!(u.poll_timeout(), Some(at(1000)));
        let mut now = 1000;
        while !u.is_finished() {
            u.handle_timeout(at(now));
            if let Some(Action::Request(_)) = u.poll_action(at(now)) {
                u.handle_response(&content("1"), at(now));
            }
            now += 1000;
        }
        assert_eq!(
            finished(&mut u),
            Some(Outcome::Failed(UpdateFailure::DownloadTimeout))
        );
        assert_eq!(
            now, 11_000,
            "ended at the 10 s deadline, not download_timeout's 30 min"
        );
    }

    /// Silence is the caller's to retry: the procedure ends on it at once,
    /// while a failure the child reported is retried after a reset.
    #[test]
    fn silence_is_not_retried_here() {
        let mut u = UpdateProcedure::new(pull_cfg()).unwrap();
        assert_eq!(u.cfg.max_attempts, 2);
        let _ = next(&mut u, 0);
        u.handle_response(&content("1.0"), at(0));
        let _ = next(&mut u, 0);
        u.handle_failure(TransportFailure::GaveUp, at(100));
        assert_eq!(
            finished(&mut u),
            Some(Outcome::Failed(UpdateFailure::Unreachable(
                Path::PACKAGE_URI
            )))
        );
    }

    #[test]
    fn download_timeout() {
        let cfg = UpdateConfig {
            download_timeout: Duration::from_secs(5),
            ..pull_cfg()
        };
        let mut u = UpdateProcedure::new(UpdateConfig {
            max_attempts: 1,
            ..cfg
        })
        .unwrap();
        let _ = next(&mut u, 0);
        u.handle_response(&content("1.0"), at(0));
        let _ = next(&mut u, 0);
        u.handle_response(&answer(Code::CHANGED, ""), at(0));
        let mut now = 1000;
        while !u.is_finished() {
            assert!(now < 20_000, "the deadline must end the polling");
            u.handle_timeout(at(now));
            if let Some(Action::Request(r)) = u.poll_action(at(now)) {
                let is_state = uri_path(&r).unwrap() == ["5", "0", "3"];
                u.handle_response(&content(if is_state { "1" } else { "0" }), at(now));
            }
            now += 500;
        }
        let out = finished(&mut u).unwrap();
        assert_eq!(out, Outcome::Failed(UpdateFailure::DownloadTimeout));
        assert!(now <= 6500);
    }

    #[test]
    fn update_failure_after_execute_and_wrong_version() {
        let run = |result: &str| {
            let mut u = UpdateProcedure::new(pull_cfg()).unwrap();
            let _ = next(&mut u, 0);
            u.handle_response(&content("1.0"), at(0));
            let _ = next(&mut u, 0);
            u.handle_response(&answer(Code::CHANGED, ""), at(0));
            let _ = next(&mut u, 1000);
            u.handle_response(&content("2"), at(1000));
            let _ = next(&mut u, 1000);
            u.handle_response(&answer(Code::CHANGED, ""), at(1000));
            let _ = next(&mut u, 2000);
            u.handle_response(&content("1.0"), at(2000));
            let _ = next(&mut u, 2000);
            u.handle_response(&content(result), at(2000));
            u
        };
        let mut u = run("8");
        assert_eq!(
            finished(&mut u),
            Some(Outcome::Failed(UpdateFailure::Child(
                UpdateResult::UpdateFailed
            )))
        );
        // Result 1 next to the old version, twice: another image runs.
        let mut u = run("1");
        assert_eq!(next(&mut u, 3000).1, "3/0/3");
        u.handle_response(&content("1.0"), at(3000));
        assert_eq!(next(&mut u, 3000).1, "5/0/5");
        u.handle_response(&content("1"), at(3000));
        let out = Some(Outcome::Failed(UpdateFailure::WrongVersion("1.0".into())));
        assert_eq!(finished(&mut u), out);
        // Result 0 (still installing) keeps reading until the deadline.
        let mut u = run("0");
        assert_eq!(next(&mut u, 3000).1, "3/0/3");
        u.handle_failure(TransportFailure::GaveUp, at(3000));
        u.handle_timeout(at(2000 + 600_000));
        assert_eq!(
            finished(&mut u),
            Some(Outcome::Failed(UpdateFailure::UpdateTimeout))
        );
        assert_eq!(UpdateFailure::UpdateTimeout.to_iotda().0.get(), 10);
    }

    /// Reaches Execute with a pull, then reads back `after` from /3/0/3.
    fn verify_reads(cfg: UpdateConfig, before: &str, after: &str) -> UpdateProcedure {
        let mut u = UpdateProcedure::new(cfg).unwrap();
        assert_eq!(next(&mut u, 0).1, "3/0/3");
        u.handle_response(&content(before), at(0));
        let _ = next(&mut u, 0);
        u.handle_response(&answer(Code::CHANGED, ""), at(0));
        let _ = next(&mut u, 1000);
        u.handle_response(&content("2"), at(1000));
        let _ = next(&mut u, 1000);
        u.handle_response(&answer(Code::CHANGED, ""), at(1000));
        assert_eq!(next(&mut u, 2000).1, "3/0/3");
        u.handle_response(&content(after), at(2000));
        u
    }

    /// The version policy decides what "the target" is, before and after
    /// the update: a child writing `v2.0` runs target `2.0` when normalised
    /// (the default), and does not under the exact policy.
    #[test]
    fn version_reads_follow_the_policy() {
        let exact = || UpdateConfig {
            version_policy: Policy::Exact,
            ..pull_cfg()
        };
        assert_eq!(pull_cfg().version_policy, Policy::Normalised);
        // Already there.
        let mut u = UpdateProcedure::new(pull_cfg()).unwrap();
        let _ = next(&mut u, 0);
        u.handle_response(&content("v2.0.0"), at(0));
        assert_eq!(finished(&mut u), Some(Outcome::AlreadyCurrent));
        let mut u = UpdateProcedure::new(exact()).unwrap();
        let _ = next(&mut u, 0);
        u.handle_response(&content("v2.0.0"), at(0));
        assert_eq!(next(&mut u, 0).1, "5/0/1", "exact: v2.0.0 is not 2.0");
        // Updated, read back with a prefix.
        let mut u = verify_reads(pull_cfg(), "v1.0", "v2.0");
        assert_eq!(finished(&mut u), Some(Outcome::Updated));
        let mut u = verify_reads(exact(), "v1.0", "v2.0");
        assert_eq!(next(&mut u, 2000).1, "5/0/5", "exact: not the target yet");
        let mut u = verify_reads(exact(), "v1.0", "2.0");
        assert_eq!(finished(&mut u), Some(Outcome::Updated));
    }

    #[test]
    fn execute_rejected_is_a_failure() {
        let mut u = UpdateProcedure::new(pull_cfg()).unwrap();
        let _ = next(&mut u, 0);
        u.handle_response(&content("1.0"), at(0));
        let _ = next(&mut u, 0);
        u.handle_response(&answer(Code::CHANGED, ""), at(0));
        let _ = next(&mut u, 1000);
        u.handle_response(&content("2"), at(1000));
        let _ = next(&mut u, 1000);
        u.handle_response(&answer(Code::METHOD_NOT_ALLOWED, ""), at(1000));
        // One read of the version before believing the refusal.
        assert_eq!(next(&mut u, 1000).1, "3/0/3");
        u.handle_response(&content("1.0"), at(1010));
        assert_eq!(
            finished(&mut u),
            Some(Outcome::Failed(UpdateFailure::Rejected {
                path: Path::UPDATE,
                code: Code::METHOD_NOT_ALLOWED
            }))
        );
    }

    #[test]
    fn execute_refused_after_the_reboot_is_a_success_if_the_target_runs() {
        // The ACK of Execute was lost, the child rebooted into the target
        // and forgot the exchange; our retransmission finds it in State 0
        // and gets 4.05. The version read decides.
        let mut u = UpdateProcedure::new(pull_cfg()).unwrap();
        let _ = next(&mut u, 0);
        u.handle_response(&content("1.0"), at(0));
        let _ = next(&mut u, 0);
        u.handle_response(&answer(Code::CHANGED, ""), at(0));
        let _ = next(&mut u, 1000);
        u.handle_response(&content("2"), at(1000));
        assert_eq!(next(&mut u, 1000).1, "5/0/2");
        u.handle_response(&answer(Code::METHOD_NOT_ALLOWED, ""), at(9000));
        assert_eq!(next(&mut u, 9000).1, "3/0/3");
        u.handle_response(&content("2.0"), at(9010));
        assert_eq!(finished(&mut u), Some(Outcome::Updated));
    }

    #[test]
    fn push_delivery_is_an_action_for_the_peer_engine() {
        let mut u = UpdateProcedure::new(push_cfg(0)).unwrap();
        let _ = next(&mut u, 0);
        u.handle_response(&content("1.0"), at(0));
        let Some(Action::Push(p)) = u.poll_action(at(0)) else {
            panic!("no push")
        };
        assert_eq!(
            (p.path.join("/"), p.total_len, p.szx),
            ("5/0/0".into(), 100, 2)
        );
        assert_eq!(p.content_format, Some(msg::OCTET_STREAM));
        none(&mut u, 1);
        assert_eq!(u.poll_timeout(), Some(at(60_000)), "the deadline holds");
        u.handle_push_event(&progress(64, 10), at(10));
        assert_eq!(u.push_acked(), Some(64));
        u.handle_push_event(&progress(100, 20), at(20));
        u.handle_push_event(&PushEvent::Done(Code::CHANGED), at(20));
        assert_eq!(next(&mut u, 20).1, "5/0/3", "downloaded: poll State");
        u.handle_response(&content("2"), at(30));
        assert_eq!(next(&mut u, 30).1, "5/0/2");
        let got: Vec<_> = std::iter::from_fn(|| u.poll_event())
            .filter_map(|e| match e {
                UpdateEvent::Progress { delivered, .. } => Some(delivered),
                _ => None,
            })
            .collect();
        assert_eq!(got, [64, 100]);
    }

    #[test]
    fn a_push_past_the_deadline_is_cancelled_and_its_end_ignored() {
        let mut u = UpdateProcedure::new(UpdateConfig {
            max_attempts: 1,
            ..push_cfg(0)
        })
        .unwrap();
        let _ = next(&mut u, 0);
        u.handle_response(&content("1.0"), at(0));
        assert!(matches!(u.poll_action(at(0)), Some(Action::Push(_))));
        u.handle_timeout(at(60_000));
        assert_eq!(u.poll_action(at(60_000)), Some(Action::Cancel));
        assert_eq!(
            finished(&mut u),
            Some(Outcome::Failed(UpdateFailure::DownloadTimeout))
        );
        u.handle_push_event(&PushEvent::Done(Code::CHANGED), at(60_001));
        assert!(u.is_finished());
        none(&mut u, 60_001);
    }

    #[test]
    fn a_served_block_answers_a_uri_write_whose_ack_was_lost() {
        // issue 17, defect 3: the child fetches blocks, so the write of
        // /5/0/1 reached it; its ACK was lost. Waiting for the message
        // layer to give up would fail the delivery and restart the pull.
        let mut u = UpdateProcedure::new(pull_cfg()).unwrap();
        let _ = next(&mut u, 0);
        u.handle_response(&content("1.0"), at(0));
        assert_eq!(next(&mut u, 0).1, "5/0/1");
        u.handle_served(&served(0, 64), at(2500));
        assert_eq!(u.poll_action(at(2500)), Some(Action::Cancel));
        none(&mut u, 2600);
        assert_eq!(next(&mut u, 3500).1, "5/0/3", "polling, no reset");
        // (A late answer to the cancelled write never reaches the
        // procedure: the driver cancelled it in the peer engine.)
        u.handle_response(&content("2"), at(3600));
        assert_eq!(u.phase(), Phase::Downloaded);
        assert!(!std::iter::from_fn(|| u.poll_event())
            .any(|e| matches!(e, UpdateEvent::Retrying { .. })));
    }

    #[test]
    fn a_resumed_push_reads_the_state_first_and_skips_a_downloaded_image() {
        // issue 17, defect 4: the gateway stopped during the last block;
        // the child holds the whole image (State 2).
        let mut u = UpdateProcedure::new(push_cfg(96)).unwrap();
        let _ = next(&mut u, 0);
        u.handle_response(&content("1.0"), at(0));
        assert_eq!(next(&mut u, 0).1, "5/0/3");
        u.handle_response(&content("2"), at(10));
        assert_eq!(next(&mut u, 10).1, "5/0/2", "Execute, nothing re-sent");
        // In any other state the push resumes where the journal says.
        let mut u = UpdateProcedure::new(push_cfg(96)).unwrap();
        let _ = next(&mut u, 0);
        u.handle_response(&content("1.0"), at(0));
        assert_eq!(next(&mut u, 0).1, "5/0/3");
        u.handle_response(&content("1"), at(10));
        let Some(Action::Push(p)) = u.poll_action(at(10)) else {
            panic!("no push")
        };
        assert_eq!(p.resume_offset, 96);
        // A fresh push (nothing journaled) does not ask.
        let mut u = UpdateProcedure::new(push_cfg(0)).unwrap();
        let _ = next(&mut u, 0);
        u.handle_response(&content("1.0"), at(0));
        assert!(matches!(u.poll_action(at(0)), Some(Action::Push(_))));
    }

    #[test]
    fn a_resumed_pull_reads_the_state_and_does_not_restart_the_childs_fetch() {
        // issue 17: a gateway restarted during a pull wrote the Package URI
        // again, and the child started its fetch over (4x the image under
        // kills). State 1: the child goes on; it is polled, not rewritten.
        let resumed = || UpdateConfig {
            resumed: true,
            ..pull_cfg()
        };
        let mut u = UpdateProcedure::new(resumed()).unwrap();
        let _ = next(&mut u, 0);
        u.handle_response(&content("1.0"), at(0));
        assert_eq!(next(&mut u, 0).1, "5/0/3");
        u.handle_served(&served(40, 20), at(5));
        u.handle_response(&content("1"), at(10));
        none(&mut u, 10);
        let (code, path, _) = next(&mut u, 1010);
        assert_eq!(
            (code, path.as_str()),
            (Code::GET, "5/0/3"),
            "polled after the poll interval, no URI write"
        );
        assert_eq!(u.progress().0, 60, "blocks served while checking count");
        u.handle_response(&content("2"), at(1020));
        assert_eq!(next(&mut u, 1020).1, "5/0/2", "Execute");
        // State 2 at once: Execute, nothing fetched again.
        let mut u = UpdateProcedure::new(resumed()).unwrap();
        let _ = next(&mut u, 0);
        u.handle_response(&content("1.0"), at(0));
        assert_eq!(next(&mut u, 0).1, "5/0/3");
        u.handle_response(&content("2"), at(10));
        assert_eq!(next(&mut u, 10).1, "5/0/2");
        // Idle (the child lost the transfer) or no answer: the URI again.
        for answer in [Some("0"), None] {
            let mut u = UpdateProcedure::new(resumed()).unwrap();
            let _ = next(&mut u, 0);
            u.handle_response(&content("1.0"), at(0));
            assert_eq!(next(&mut u, 0).1, "5/0/3");
            match answer {
                Some(a) => u.handle_response(&content(a), at(10)),
                None => u.handle_failure(TransportFailure::GaveUp, at(10)),
            }
            let (code, path, body) = next(&mut u, 10);
            assert_eq!((code, path.as_str()), (Code::PUT, "5/0/1"), "{answer:?}");
            assert_eq!(body, lwm2m::package_uri("10.0.0.1:5683", "ab").as_bytes());
        }
        // A fresh pull (nothing journaled) writes the URI at once.
        let mut u = UpdateProcedure::new(pull_cfg()).unwrap();
        let _ = next(&mut u, 0);
        u.handle_response(&content("1.0"), at(0));
        assert_eq!(next(&mut u, 0).1, "5/0/1");
    }

    #[test]
    fn push_too_large_is_iotda_5() {
        let cfg = UpdateConfig::new(
            "2.0",
            100,
            Delivery::Push {
                szx: 2,
                resume_offset: 0,
            },
        );
        let mut u = UpdateProcedure::new(cfg).unwrap();
        let _ = next(&mut u, 0);
        u.handle_response(&content("1.0"), at(0));
        assert!(matches!(u.poll_action(at(0)), Some(Action::Push(_))));
        let failure = PushFailure::TooLarge { max: Some(50) };
        u.handle_push_event(&PushEvent::Failed(failure), at(0));
        let Some(Outcome::Failed(f)) = finished(&mut u) else {
            panic!("no failure")
        };
        assert_eq!(f.to_iotda().0.get(), 5);
    }

    #[test]
    fn config_errors() {
        let long = "x".repeat(256);
        assert_eq!(
            UpdateProcedure::new(UpdateConfig::new("2", 1, Delivery::Pull { uri: long }))
                .unwrap_err(),
            UpdateConfigError::UriTooLong(256)
        );
        assert!(matches!(
            UpdateProcedure::new(UpdateConfig::new(
                "2",
                0,
                Delivery::Push {
                    szx: 2,
                    resume_offset: 0
                }
            )),
            Err(UpdateConfigError::Push(_))
        ));
        let cfg = UpdateConfig {
            max_attempts: 0,
            ..pull_cfg()
        };
        assert_eq!(
            UpdateProcedure::new(cfg).unwrap_err(),
            UpdateConfigError::NoAttempts
        );
    }

    proptest::proptest! {
        /// Whatever the child answers, and whether it answers at all, the
        /// procedure never panics and ends within its deadlines.
        #[test]
        fn any_child_behaviour_terminates(
            answers in proptest::collection::vec((0usize..12, 0usize..9), 1..200),
            push in proptest::bool::ANY,
        ) {
            const CODES: [Code; 12] = [
                Code::CONTENT, Code::CONTENT, Code::CONTENT, Code::CHANGED, Code::CONTINUE,
                Code::CREATED, Code::NOT_FOUND, Code::BAD_REQUEST, Code::METHOD_NOT_ALLOWED,
                Code::REQUEST_ENTITY_INCOMPLETE, Code::REQUEST_ENTITY_TOO_LARGE, Code(0xa3),
            ];
            const BODIES: [&str; 9] = ["0", "1", "2", "3", "5", "8", "1.0", "2.0", "x"];
            let delivery = if push {
                Delivery::Push { szx: 0, resume_offset: 0 }
            } else {
                Delivery::Pull { uri: "coap://gw/fw/x".into() }
            };
            let cfg = UpdateConfig {
                poll_interval: Duration::from_secs(5),
                download_timeout: Duration::from_secs(60),
                update_timeout: Duration::from_secs(60),
                ..UpdateConfig::new("2.0", 40, delivery)
            };
            let mut u = UpdateProcedure::new(cfg).unwrap();
            let mut now = 0u64;
            for i in 0..2_000usize {
                if u.is_finished() {
                    break;
                }
                u.handle_timeout(at(now));
                let (c, b) = answers[i % answers.len()];
                match u.poll_action(at(now)) {
                    Some(Action::Request(_)) if c == 11 && b == 8 => {
                        u.handle_failure(TransportFailure::GaveUp, at(now))
                    }
                    Some(Action::Request(_)) => {
                        u.handle_response(&answer(CODES[c], BODIES[b]), at(now))
                    }
                    // A push ends well, badly, or not at all (the deadline).
                    Some(Action::Push(_)) => match c % 3 {
                        0 => u.handle_push_event(&PushEvent::Done(Code::CHANGED), at(now)),
                        1 => u.handle_push_event(
                            &PushEvent::Failed(PushFailure::Unreachable),
                            at(now),
                        ),
                        _ => {}
                    },
                    // Observed or not, and a notification now and then.
                    Some(Action::Observe { path, .. }) => {
                        if c % 2 == 0 {
                            let mut n = observe::notification(i as u32, BODIES[b].as_bytes());
                            msg::set_code(&mut n, CODES[c]);
                            u.handle_response(&n, at(now));
                        } else {
                            u.handle_response(&answer(CODES[c], BODIES[b]), at(now));
                        }
                        let seq = (i as u32).wrapping_mul(7919) % 1000;
                        u.handle_notification(path, &observe::notification(seq, BODIES[b].as_bytes()), at(now));
                    }
                    Some(Action::Cancel | Action::StopObserving) | None => {}
                }
                now += 2_500;
            }
            proptest::prop_assert!(u.is_finished(), "still running at {} ms", now);
            proptest::prop_assert!(finished(&mut u).is_some());
        }
    }

    fn auto_cfg() -> UpdateConfig {
        let uri = lwm2m::package_uri("10.0.0.1:5683", "ab");
        UpdateConfig {
            poll_interval: Duration::from_secs(1),
            observe: false,
            ..UpdateConfig::new(
                "2.0",
                100,
                Delivery::Auto {
                    uri,
                    szx: 6,
                    resume_offset: 0,
                },
            )
        }
    }

    fn chosen(u: &mut UpdateProcedure) -> AutoChoice {
        std::iter::from_fn(|| u.poll_event())
            .find_map(|e| match e {
                UpdateEvent::DeliveryChosen(c) => Some(c),
                _ => None,
            })
            .expect("a choice")
    }

    #[test]
    fn the_choice_table() {
        use lwm2m::DeliveryMethod as M;
        let d = |m, l| choose(m, l).0;
        assert_eq!(d(Some(M::Pull), Some(true)), Chosen::Pull);
        assert_eq!(d(Some(M::Pull), Some(false)), Chosen::Pull);
        assert_eq!(d(Some(M::Push), Some(true)), Chosen::Push);
        assert_eq!(d(Some(M::Both), Some(true)), Chosen::Pull);
        assert_eq!(d(Some(M::Both), None), Chosen::Pull);
        assert_eq!(d(Some(M::Both), Some(false)), Chosen::Push);
        assert_eq!(d(None, None), Chosen::Pull);
        assert_eq!(d(None, Some(true)), Chosen::Pull);
        assert_eq!(d(None, Some(false)), Chosen::Push);
    }

    #[test]
    fn the_optional_read_wait_is_the_exchange_with_two_retransmissions() {
        let d = crate::coap::ExchangeConfig::default();
        assert_eq!(optional_read_wait(&d), Duration::from_secs(21));
        let short = crate::coap::ExchangeConfig {
            ack_timeout: Duration::from_millis(100),
            ..d
        };
        assert_eq!(optional_read_wait(&short), Duration::from_millis(1050));
        assert_eq!(auto_cfg().optional_read_timeout, Duration::from_secs(21));
    }

    #[test]
    fn auto_push_only_is_pushed_without_reading_5_0_8() {
        let mut u = UpdateProcedure::new(auto_cfg()).unwrap();
        assert_eq!(next(&mut u, 0).1, "3/0/3");
        u.handle_response(&content("1.0"), at(0));
        assert_eq!(next(&mut u, 0).1, "5/0/9");
        u.handle_response(&content("1"), at(10));
        let c = chosen(&mut u);
        assert_eq!((c.chosen, c.protocols), (Chosen::Push, None));
        assert!(matches!(u.poll_action(at(10)), Some(Action::Push(_))));
    }

    #[test]
    fn auto_4_04_on_5_0_9_reads_5_0_8_at_once() {
        let mut u = UpdateProcedure::new(auto_cfg()).unwrap();
        next(&mut u, 0);
        u.handle_response(&content("1.0"), at(0));
        assert_eq!(next(&mut u, 0).1, "5/0/9");
        u.handle_response(&answer(Code::NOT_FOUND, ""), at(5));
        let Some(Action::Request(r)) = u.poll_action(at(5)) else {
            panic!("no request")
        };
        assert_eq!(uri_path(&r).unwrap().join("/"), "5/0/8");
        assert_eq!(
            msg::uint(&r, CoapOption::Accept),
            Ok(None),
            "no guessed Accept"
        );
        let mut only_coaps = answer(Code::CONTENT, "1");
        msg::set_uint(&mut only_coaps, CoapOption::ContentFormat, 0);
        u.handle_response(&only_coaps, at(6));
        let c = chosen(&mut u);
        assert_eq!(c.chosen, Chosen::Push, "{c:?}");
        assert_eq!(c.method, OptionalRead::Refused(Code::NOT_FOUND));
    }

    #[test]
    fn an_unanswered_optional_read_is_cancelled_at_its_bound() {
        let mut u = UpdateProcedure::new(auto_cfg()).unwrap();
        next(&mut u, 0);
        u.handle_response(&content("1.0"), at(0));
        assert_eq!(next(&mut u, 1000).1, "5/0/9");
        assert_eq!(u.poll_timeout(), Some(at(22_000)));
        u.handle_timeout(at(21_999));
        none(&mut u, 21_999);
        u.handle_timeout(at(22_000));
        assert_eq!(u.poll_action(at(22_000)), Some(Action::Cancel));
        let events: Vec<_> = std::iter::from_fn(|| u.poll_event()).collect();
        assert!(
            events.contains(&UpdateEvent::OptionalUnanswered {
                path: Path::DELIVERY_METHOD,
                waited: Duration::from_secs(21),
            }),
            "{events:?}"
        );
        assert_eq!(next(&mut u, 22_000).1, "5/0/8");
        // A late answer to the cancelled read changes nothing; the failure
        // of /5/0/8's exchange (RST) counts as unanswered too.
        u.handle_failure(TransportFailure::Reset, at(23_000));
        let c = chosen(&mut u);
        assert_eq!(c.chosen, Chosen::Pull);
        assert_eq!(c.protocols, Some(OptionalRead::Unanswered));
        assert_eq!(next(&mut u, 23_000).1, "5/0/1");
        // The mandatory reads that follow wait for their exchange.
        u.handle_response(&answer(Code::CHANGED, ""), at(23_000));
        assert_eq!(next(&mut u, 24_000).1, "5/0/3");
        assert_eq!(u.poll_timeout(), None, "no bound on a mandatory read");
    }
}
