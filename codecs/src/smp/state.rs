//! The image state read (group 1, id 0, OP read) as an engine, so a
//! version read runs through the same driver loop as upload and activation.
//!
//! Sources: zephyr `smp_groups/smp_group_1.rst` ("State of image": the
//! request body is an empty map, the answer lists `images`);
//! docs/protocols/children.md §4.3.
//!
//! The engine is the one-request [`super::read::Read`] (retransmission,
//! call order) with the image state command.

use super::header::command;
use super::message::{self, ImageSlot, SmpErr};
use super::read::{Command, Read, ReadError, ReadEvent};
use super::BodyError;

pub use super::read::ReadConfig as StateReadConfig;

/// The image state command (group 1, id 0).
#[derive(Debug)]
pub struct ImageState;

impl Command for ImageState {
    type Answer = Vec<ImageSlot>;
    const ID: u8 = command::IMAGE_STATE;
    const NAME: &'static str = "image state";
    fn decode(body: &[u8]) -> Result<Result<Vec<ImageSlot>, SmpErr>, BodyError> {
        message::state_response(body)
    }
}

/// One image state read; see [`super::read`] for the call order.
pub type StateRead = Read<ImageState>;
/// What the state read reports: the image list, or why it failed.
pub type StateReadEvent = ReadEvent<Vec<ImageSlot>>;
/// Why a state read failed.
pub type StateReadError = ReadError;

/// The version of image `image`'s active slot in a state list, if one is
/// active (`active` in the answer, smp_group_1.rst).
pub fn active_version(list: &[ImageSlot], image: u64) -> Option<&str> {
    list.iter()
        .find(|s| s.image == image && s.active)
        .map(|s| s.version.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Engine;
    use crate::smp::header::{group, Op, SmpVersion};
    use crate::smp::sim::{SimConfig, SimDevice};
    use crate::time::Instant;
    use std::time::Duration;

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
            Some(StateReadEvent::Answer(list)) => {
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
                read: "image state",
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
                StateReadError::Malformed {
                    read: "image state",
                    error: BodyError::Missing("images"),
                },
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
