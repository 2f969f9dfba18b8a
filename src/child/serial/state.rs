//! Image state read (group 1, id 0, OP read) as an [`Engine`], so the
//! version read runs through the same driver loop as upload and activation.
//! Source: zephyr `smp_groups/smp_group_1.rst` ("State of image").

use std::collections::VecDeque;
use std::time::Duration;

use otabridge_codecs::smp::header::{build_message, command, group, split_message, Op};
use otabridge_codecs::smp::message::{self, ImageSlot, SmpErr};
use otabridge_codecs::smp::{BodyError, Engine, SmpVersion};
use otabridge_codecs::time::Instant;

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

/// One image state read with retries of the identical request (same
/// sequence number, so a late answer to the first attempt counts).
#[derive(Debug)]
pub struct StateRead {
    msg: Vec<u8>,
    seq: u8,
    timeout: Duration,
    attempts: u32,
    max_attempts: u32,
    deadline: Option<Instant>,
    transmit: bool,
    events: VecDeque<StateReadEvent>,
}

impl StateRead {
    /// Queues the read.
    pub fn new(seq: u8, timeout: Duration, retries: u32, now: Instant) -> StateRead {
        let body = message::empty_body();
        let msg = build_message(
            Op::Read,
            SmpVersion::V2,
            group::IMAGE,
            seq,
            command::IMAGE_STATE,
            &body,
        );
        StateRead {
            msg,
            seq,
            timeout,
            attempts: 1,
            max_attempts: retries.saturating_add(1),
            deadline: Some(now + timeout),
            transmit: true,
            events: VecDeque::new(),
        }
    }

    fn finish(&mut self, ev: StateReadEvent) {
        self.deadline = None;
        self.transmit = false;
        self.events.push_back(ev);
    }
}

impl Engine for StateRead {
    type Event = StateReadEvent;

    fn retries(&self) -> u64 {
        u64::from(self.attempts.saturating_sub(1))
    }

    fn handle_message(&mut self, msg: &[u8], _now: Instant) {
        if self.deadline.is_none() {
            return;
        }
        let Ok((h, body)) = split_message(msg) else {
            return;
        };
        if h.op != Op::ReadRsp
            || h.group != group::IMAGE
            || h.id != command::IMAGE_STATE
            || h.seq != self.seq
        {
            return;
        }
        let ev = match message::state_response(body) {
            Ok(Ok(list)) => StateReadEvent::Images(list),
            Ok(Err(e)) => StateReadEvent::Failed(StateReadError::Device(e)),
            Err(e) => StateReadEvent::Failed(StateReadError::Malformed(e)),
        };
        self.finish(ev);
    }

    fn handle_timeout(&mut self, now: Instant) {
        let Some(d) = self.deadline else { return };
        if now < d {
            return;
        }
        if self.attempts >= self.max_attempts {
            let attempts = self.attempts;
            return self.finish(StateReadEvent::Failed(StateReadError::Timeout { attempts }));
        }
        self.attempts += 1;
        self.deadline = Some(now + self.timeout);
        self.transmit = true;
    }

    fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        std::mem::take(&mut self.transmit).then(|| self.msg.clone())
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.deadline
    }

    fn poll_event(&mut self) -> Option<StateReadEvent> {
        self.events.pop_front()
    }

    fn is_finished(&self) -> bool {
        self.deadline.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use otabridge_codecs::smp::sim::{SimConfig, SimDevice};

    #[test]
    fn reads_the_list_and_retries_then_gives_up() {
        let t0 = Instant::ZERO;
        let mut r = StateRead::new(7, Duration::from_secs(1), 1, t0);
        let first = r.poll_transmit().expect("request");
        assert!(r.poll_transmit().is_none());
        // Lost: the timeout resends the identical message.
        r.handle_timeout(Instant::from_millis(999));
        assert!(r.poll_transmit().is_none());
        r.handle_timeout(Instant::from_millis(1000));
        assert_eq!(r.poll_transmit().as_ref(), Some(&first));
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
            Some(StateReadEvent::Images(list)) => assert_eq!(list[0].version, "1.0.0"),
            e => panic!("{e:?}"),
        }
        assert!(r.is_finished());

        let mut r = StateRead::new(0, Duration::from_secs(1), 1, t0);
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
}
