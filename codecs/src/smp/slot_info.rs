//! The slot info read (group 1, command 6, OP read): each image slot's size,
//! so an image that does not fit is refused before a byte is sent (issue 14
//! pre-flight; result 5).
//!
//! Sources: zephyr `smp_groups/smp_group_1.rst` ("Slot info"; the request
//! is an empty map; `CONFIG_MCUMGR_GRP_IMG_SLOT_INFO`); a device without it
//! answers ENOTSUP, and the caller falls back to a configured slot size.
//!
//! The engine is the one-request [`super::read::Read`] (retransmission,
//! call order) with the slot info command.

use super::header::command;
use super::message::{self, SlotInfo, SmpErr};
use super::read::{Command, Read, ReadError, ReadEvent};
use super::BodyError;

pub use super::read::ReadConfig as SlotInfoConfig;

/// The slot info command (group 1, id 6).
#[derive(Debug)]
pub struct SlotInfoCommand;

impl Command for SlotInfoCommand {
    type Answer = Vec<SlotInfo>;
    const ID: u8 = command::IMAGE_SLOT_INFO;
    const NAME: &'static str = "slot info";
    fn decode(body: &[u8]) -> Result<Result<Vec<SlotInfo>, SmpErr>, BodyError> {
        message::slot_info_response(body)
    }
}

/// One slot info read; see [`super::read`] for the call order.
pub type SlotInfoRead = Read<SlotInfoCommand>;
/// What the slot info read reports: each image's slots, or why it failed.
pub type SlotInfoEvent = ReadEvent<Vec<SlotInfo>>;
/// Why a slot info read failed (ENOTSUP: not compiled in).
pub type SlotInfoError = ReadError;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smp::sim::{SimConfig, SimDevice};
    use crate::time::Instant;
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
        let SlotInfoEvent::Answer(list) = run(&mut dev) else {
            panic!("slots expected");
        };
        assert_eq!(list[0].upload_limit(), Some(100_000));
        // A device that limits the application below its slot says so.
        let mut limited = SimDevice::new(SimConfig {
            slot_info: true,
            slot_size: 100_000,
            max_image_size: Some(90_000),
            ..SimConfig::default()
        });
        let SlotInfoEvent::Answer(list) = run(&mut limited) else {
            panic!("slots expected");
        };
        assert_eq!(list[0].max_image_size, Some(90_000));
        assert_eq!(list[0].upload_limit(), Some(90_000));
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
