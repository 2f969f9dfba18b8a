//! The slot info read (group 1, command 6, OP read): each image slot's size,
//! so an image that does not fit is refused before a byte is sent (issue 14
//! pre-flight; result 5).
//!
//! Sources: zephyr `smp_groups/smp_group_1.rst` ("Slot info"; the request
//! is an empty map; `CONFIG_MCUMGR_GRP_IMG_SLOT_INFO`); a device without it
//! answers ENOTSUP, and the caller falls back to a configured slot size.
//!
//! Same exchange and call order as [`super::state::StateRead`]:
//! [`SlotInfoRead::new`] queues the request; loop on `poll_transmit`,
//! `poll_event`, `handle_message` / `handle_timeout` at `poll_timeout`, until
//! [`SlotInfoEvent::Slots`] or [`SlotInfoEvent::Failed`].

use super::exchange::{Exchange, Timeout};
use super::header::{command, group, Op};
use super::message::{self, SlotInfo, SmpErr};
pub use super::state::StateReadConfig as SlotInfoConfig;
use super::BodyError;
use crate::engine::Engine;
use crate::time::Instant;
use std::collections::VecDeque;

/// Why a slot info read failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SlotInfoError {
    /// No answer after every attempt.
    #[error("no answer to the slot info read after {attempts} attempts")]
    Timeout {
        /// Attempts made.
        attempts: u32,
    },
    /// The device answered with an error (ENOTSUP: not compiled in).
    #[error("device error: {0}")]
    Device(SmpErr),
    /// The answer does not decode.
    #[error("malformed slot info answer: {0}")]
    Malformed(BodyError),
}

/// What the slot info read reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotInfoEvent {
    /// Each image's slots.
    Slots(Vec<SlotInfo>),
    /// The read failed.
    Failed(SlotInfoError),
}

/// One slot info read; see the module doc for the call order.
#[derive(Debug)]
pub struct SlotInfoRead {
    exchange: Exchange,
    finished: bool,
    events: VecDeque<SlotInfoEvent>,
}

impl SlotInfoRead {
    /// Queues the read, sent at `now`.
    pub fn new(config: SlotInfoConfig, now: Instant) -> SlotInfoRead {
        let mut exchange = Exchange::new(config.version, config.first_seq);
        exchange.request(
            Op::Read,
            group::IMAGE,
            command::IMAGE_SLOT_INFO,
            &message::empty_body(),
            config.timeout,
            config.retries,
            now,
        );
        SlotInfoRead {
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
        let ev = match message::slot_info_response(body) {
            Ok(Ok(list)) => SlotInfoEvent::Slots(list),
            Ok(Err(e)) => SlotInfoEvent::Failed(SlotInfoError::Device(e)),
            Err(e) => SlotInfoEvent::Failed(SlotInfoError::Malformed(e)),
        };
        self.finish(ev);
    }

    /// Call when `now` reaches [`SlotInfoRead::poll_timeout`]; earlier does
    /// nothing.
    pub fn handle_timeout(&mut self, now: Instant) {
        if let Timeout::Exhausted { attempts } = self.exchange.handle_timeout(now) {
            self.finish(SlotInfoEvent::Failed(SlotInfoError::Timeout { attempts }));
        }
    }

    /// The next message to write to the device.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.exchange.poll_transmit()
    }

    /// When to call [`SlotInfoRead::handle_timeout`].
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.exchange.poll_timeout()
    }

    /// The next event.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<SlotInfoEvent> {
        self.events.pop_front()
    }

    fn finish(&mut self, ev: SlotInfoEvent) {
        self.exchange.cancel();
        self.finished = true;
        self.events.push_back(ev);
    }
}

impl Engine for SlotInfoRead {
    type Event = SlotInfoEvent;

    fn handle_input(&mut self, msg: &[u8], now: Instant) {
        self.handle_message(msg, now);
    }

    fn handle_timeout(&mut self, now: Instant) {
        SlotInfoRead::handle_timeout(self, now);
    }

    fn poll_event(&mut self) -> Option<SlotInfoEvent> {
        SlotInfoRead::poll_event(self)
    }

    fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        SlotInfoRead::poll_transmit(self)
    }

    fn poll_timeout(&self) -> Option<Instant> {
        SlotInfoRead::poll_timeout(self)
    }

    fn is_finished(&self) -> bool {
        SlotInfoRead::is_finished(self)
    }

    fn retries(&self) -> u64 {
        SlotInfoRead::retries(self)
    }

    fn next_seq(&self) -> Option<u8> {
        Some(self.exchange.next_seq())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smp::sim::{SimConfig, SimDevice};
    use std::time::Duration;

    fn run(dev: &mut SimDevice) -> SlotInfoEvent {
        let t0 = Instant::ZERO;
        let config = SlotInfoConfig {
            timeout: Duration::from_secs(1),
            ..SlotInfoConfig::default()
        };
        let mut r = SlotInfoRead::new(config, t0);
        let req = r.poll_transmit().expect("request");
        dev.handle_message(&req, t0);
        while let Some(answer) = dev.poll_transmit() {
            r.handle_message(&answer, t0);
        }
        assert!(r.is_finished());
        r.poll_event().expect("an event")
    }

    #[test]
    fn reads_the_slot_sizes_or_the_devices_enotsup() {
        let mut dev = SimDevice::new(SimConfig {
            slot_info: true,
            slot_size: 100_000,
            ..SimConfig::default()
        });
        let SlotInfoEvent::Slots(list) = run(&mut dev) else {
            panic!("slots expected");
        };
        assert_eq!(list[0].upload_limit(), Some(100_000));
        let mut old = SimDevice::new(SimConfig::default());
        assert!(matches!(
            run(&mut old),
            SlotInfoEvent::Failed(SlotInfoError::Device(_))
        ));
    }

    #[test]
    fn the_upload_limit_prefers_max_image_size_then_the_secondary_slot() {
        let enc = message::encode_slot_info(&[SlotInfo {
            image: 0,
            slots: vec![(0, 10, Some(1)), (1, 20, Some(2))],
            max_image_size: Some(15),
        }]);
        let list = message::slot_info_response(&enc).unwrap().unwrap();
        assert_eq!(list[0].upload_limit(), Some(15));
        // Direct-upload ids on every slot do not move the upload off slot 1.
        let direct = SlotInfo {
            max_image_size: None,
            ..list[0].clone()
        };
        assert_eq!(direct.upload_limit(), Some(20));
        let single = SlotInfo {
            slots: vec![(0, 30, None)],
            ..SlotInfo::default()
        };
        assert_eq!(single.upload_limit(), Some(30));
        assert_eq!(SlotInfo::default().upload_limit(), None);
        assert!(message::slot_info_response(&[0xa0]).is_err());
    }
}
