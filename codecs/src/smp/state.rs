//! The image state read (group 1, id 0, OP read) as an engine, so a
//! version read runs through the same driver loop as upload and activation.
//!
//! Sources: zephyr `smp_groups/smp_group_1.rst` ("State of image": the
//! request body is an empty map, the answer lists `images`);
//! docs/protocols/children.md §4.3.
//!
//! The request goes through [`super::exchange::Exchange`]: a lost request or
//! answer is resent identically, with the same sequence number, so a late
//! answer to the first attempt counts (as mcumgr-toolkit does,
//! `src/connection.rs`); an answer with another sequence number is not
//! ours and is ignored.
//!
//! # Call order
//! Like [`super::upload::Upload`]: [`StateRead::new`] queues the request;
//! then loop on [`StateRead::poll_transmit`], [`StateRead::poll_event`],
//! [`StateRead::handle_message`] / [`StateRead::handle_timeout`] at
//! [`StateRead::poll_timeout`], until [`StateReadEvent::Images`] or
//! [`StateReadEvent::Failed`].

use super::exchange::{Exchange, Timeout};
use super::header::{command, group, Op, SmpVersion};
use super::message::{self, ImageSlot, SmpErr};
use super::BodyError;
use crate::engine::Engine;
use crate::time::Instant;
use std::collections::VecDeque;
use std::time::Duration;

/// State read settings; [`Default`] gives the values documented per field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateReadConfig {
    /// Header version (v2).
    pub version: SmpVersion,
    /// Wait per attempt: 2.5 s, smpclient's `timeout_s`.
    pub timeout: Duration,
    /// Extra attempts after a timeout: 4.
    pub retries: u32,
    /// Sequence number of the request.
    pub first_seq: u8,
}

impl Default for StateReadConfig {
    fn default() -> Self {
        StateReadConfig {
            version: SmpVersion::V2,
            timeout: Duration::from_millis(2500),
            retries: 4,
            first_seq: 0,
        }
    }
}

/// Why a state read failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateReadError {
    /// No answer after every attempt.
    #[error("no answer to the image state read after {attempts} attempts")]
    Timeout {
        /// Attempts made.
        attempts: u32,
    },
    /// The device answered with an error.
    #[error("device error: {0}")]
    Device(SmpErr),
    /// The answer does not decode.
    #[error("malformed image state answer: {0}")]
    Malformed(BodyError),
}

/// What the state read reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateReadEvent {
    /// The image list.
    Images(Vec<ImageSlot>),
    /// The read failed.
    Failed(StateReadError),
}

/// The version of image `image`'s active slot in a state list, if one is
/// active (`active` in the answer, smp_group_1.rst).
pub fn active_version(list: &[ImageSlot], image: u64) -> Option<&str> {
    list.iter()
        .find(|s| s.image == image && s.active)
        .map(|s| s.version.as_str())
}

/// One image state read; see the module doc for the call order.
#[derive(Debug)]
pub struct StateRead {
    exchange: Exchange,
    finished: bool,
    events: VecDeque<StateReadEvent>,
}

impl StateRead {
    /// Queues the read, sent at `now`.
    pub fn new(config: StateReadConfig, now: Instant) -> StateRead {
        let mut exchange = Exchange::new(config.version, config.first_seq);
        exchange.request(
            Op::Read,
            group::IMAGE,
            command::IMAGE_STATE,
            &message::empty_body(),
            config.timeout,
            config.retries,
            now,
        );
        StateRead {
            exchange,
            finished: false,
            events: VecDeque::new(),
        }
    }

    /// Whether the read ended (answered or failed).
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// Requests sent again after a timeout so far.
    pub fn retries(&self) -> u64 {
        self.exchange.retransmits()
    }

    /// A message from the device; anything but the answer to the request
    /// (another command, another sequence number, a second answer) is
    /// ignored.
    pub fn handle_message(&mut self, msg: &[u8], _now: Instant) {
        let Some(body) = self.exchange.handle_message(msg) else {
            return;
        };
        let ev = match message::state_response(body) {
            Ok(Ok(list)) => StateReadEvent::Images(list),
            Ok(Err(e)) => StateReadEvent::Failed(StateReadError::Device(e)),
            Err(e) => StateReadEvent::Failed(StateReadError::Malformed(e)),
        };
        self.finish(ev);
    }

    /// Call when `now` reaches [`StateRead::poll_timeout`]; earlier does
    /// nothing.
    pub fn handle_timeout(&mut self, now: Instant) {
        if let Timeout::Exhausted { attempts } = self.exchange.handle_timeout(now) {
            self.finish(StateReadEvent::Failed(StateReadError::Timeout { attempts }));
        }
    }

    /// The next message to write to the device.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.exchange.poll_transmit()
    }

    /// When to call [`StateRead::handle_timeout`].
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.exchange.poll_timeout()
    }

    /// The next event.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<StateReadEvent> {
        self.events.pop_front()
    }

    fn finish(&mut self, ev: StateReadEvent) {
        self.exchange.cancel();
        self.finished = true;
        self.events.push_back(ev);
    }
}

impl Engine for StateRead {
    type Event = StateReadEvent;

    fn handle_input(&mut self, msg: &[u8], now: Instant) {
        self.handle_message(msg, now);
    }

    fn handle_timeout(&mut self, now: Instant) {
        StateRead::handle_timeout(self, now);
    }

    fn poll_event(&mut self) -> Option<StateReadEvent> {
        StateRead::poll_event(self)
    }

    fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        StateRead::poll_transmit(self)
    }

    fn poll_timeout(&self) -> Option<Instant> {
        StateRead::poll_timeout(self)
    }

    fn is_finished(&self) -> bool {
        StateRead::is_finished(self)
    }

    fn retries(&self) -> u64 {
        StateRead::retries(self)
    }

    fn next_seq(&self) -> Option<u8> {
        Some(self.exchange.next_seq())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smp::sim::{SimConfig, SimDevice};

    fn config(first_seq: u8, retries: u32) -> StateReadConfig {
        StateReadConfig {
            timeout: Duration::from_secs(1),
            retries,
            first_seq,
            ..StateReadConfig::default()
        }
    }

    #[test]
    fn reads_the_list_and_retries_then_gives_up() {
        let t0 = Instant::ZERO;
        let mut r = StateRead::new(config(7, 1), t0);
        let first = r.poll_transmit().expect("request");
        assert!(r.poll_transmit().is_none());
        // Lost: the timeout resends the identical message.
        r.handle_timeout(Instant::from_millis(999));
        assert!(r.poll_transmit().is_none());
        r.handle_timeout(Instant::from_millis(1000));
        assert_eq!(r.poll_transmit().as_ref(), Some(&first));
        assert_eq!(r.retries(), 1);
        let mut dev = SimDevice::new(SimConfig::default());
        dev.handle_message(&first, t0);
        let answer = dev.poll_transmit().unwrap();
        // An answer with another sequence number is not ours.
        let mut other = answer.clone();
        other[6] = 8;
        r.handle_message(&other, t0);
        assert!(r.poll_event().is_none());
        r.handle_message(&answer, t0);
        match r.poll_event() {
            Some(StateReadEvent::Images(list)) => {
                assert_eq!(list[0].version, "1.0.0");
                assert_eq!(active_version(&list, 0), Some("1.0.0"));
                assert_eq!(active_version(&list, 1), None);
            }
            e => panic!("{e:?}"),
        }
        assert!(r.is_finished());
        assert_eq!(r.poll_timeout(), None);
        assert_eq!(Engine::next_seq(&r), Some(8));
        // A second copy of the answer changes nothing.
        r.handle_message(&answer, t0);
        assert!(r.poll_event().is_none());

        let mut r = StateRead::new(config(0, 1), t0);
        r.handle_timeout(Instant::from_millis(1000));
        r.handle_timeout(Instant::from_millis(2000));
        assert_eq!(
            r.poll_event(),
            Some(StateReadEvent::Failed(StateReadError::Timeout {
                attempts: 2
            }))
        );
        assert!(r.is_finished());
    }

    #[test]
    fn device_errors_and_garbage_are_failures() {
        use crate::smp::header::build_message;
        let t0 = Instant::ZERO;
        // {"rc": 8} (ENOTSUP), then a body without "images".
        for (body, want) in [
            (
                vec![0xa1, 0x62, b'r', b'c', 0x08],
                StateReadError::Device(SmpErr::Legacy { rc: 8 }),
            ),
            (
                vec![0xa0],
                StateReadError::Malformed(BodyError::Missing("images")),
            ),
        ] {
            let mut r = StateRead::new(config(3, 0), t0);
            let _ = r.poll_transmit();
            let msg = build_message(
                Op::ReadRsp,
                SmpVersion::V2,
                group::IMAGE,
                3,
                command::IMAGE_STATE,
                &body,
            );
            r.handle_message(&msg, t0);
            assert_eq!(r.poll_event(), Some(StateReadEvent::Failed(want)));
            assert!(r.is_finished());
        }
    }
}
