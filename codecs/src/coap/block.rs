//! The Block1/Block2 option value on `u32`, and CoAP's minimal-length uint.
//!
//! RFC 7959 §2.2: the value is `NUM << 4 | M << 3 | SZX`, carried as a uint of
//! 0 to 3 bytes, so NUM has 4, 12 or 20 bits (at most 2^20 - 1 = 1 048 575).
//! The block size is `2^(SZX + 4)`; SZX 7 is reserved (RFC 7959 §2.2, used
//! only by BERT over reliable transports, RFC 8323 §6).
//!
//! coap-lite's `BlockValue` keeps the value in a `u16` and silently wraps past
//! NUM 4095 (docs/protocols/children.md §6.1), which is why this codec exists.

/// The largest block number a 3-byte option can carry (RFC 7959 §2.2).
pub const MAX_NUM: u32 = (1 << 20) - 1;

/// The largest usable SZX: 1024-byte blocks (RFC 7959 §2.2; 7 is reserved).
pub const MAX_SZX: u8 = 6;

/// A Block1 or Block2 option value that is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlockError {
    /// The option value is longer than 3 bytes (RFC 7959 §2.2: "0 to 3 bytes").
    #[error("block option is {0} bytes long, at most 3 are allowed")]
    TooLong(usize),
    /// SZX 7 is reserved and must be answered with 4.00 (RFC 7959 §2.2).
    #[error("block option uses the reserved SZX 7")]
    ReservedSzx,
    /// A block number that needs more than 20 bits (RFC 7959 §2.2).
    #[error("block number {0} exceeds {MAX_NUM}")]
    NumTooLarge(u32),
}

/// A decoded Block1 or Block2 option (RFC 7959 §2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BlockOpt {
    /// Block number: the block's byte offset divided by its size.
    pub num: u32,
    /// The M (more) bit: more blocks follow (descriptive use) or the server
    /// is still collecting (control use in Block1 responses).
    pub more: bool,
    /// Size exponent: the block size is `2^(szx + 4)` bytes, 0..=6.
    pub szx: u8,
}

impl BlockOpt {
    /// A block option, checked against the limits of RFC 7959 §2.2.
    pub fn new(num: u32, more: bool, szx: u8) -> Result<Self, BlockError> {
        if szx > MAX_SZX {
            return Err(BlockError::ReservedSzx);
        }
        if num > MAX_NUM {
            return Err(BlockError::NumTooLarge(num));
        }
        Ok(BlockOpt { num, more, szx })
    }

    /// The block size in bytes, `2^(szx + 4)` (RFC 7959 §2.2).
    pub fn size(self) -> u32 {
        szx_to_size(self.szx)
    }

    /// The byte offset of this block, `num * size` (RFC 7959 §2.2).
    pub fn offset(self) -> u64 {
        u64::from(self.num) * u64::from(self.size())
    }

    /// The option value as a minimal-length uint of 0 to 3 bytes
    /// (RFC 7959 §2.2, RFC 7252 §3.2).
    pub fn encode(self) -> Vec<u8> {
        let value = self.num << 4 | u32::from(self.more) << 3 | u32::from(self.szx);
        encode_uint(value)
    }

    /// Decodes an option value of 0 to 3 bytes (RFC 7959 §2.2).
    pub fn decode(bytes: &[u8]) -> Result<Self, BlockError> {
        if bytes.len() > 3 {
            return Err(BlockError::TooLong(bytes.len()));
        }
        let value = bytes.iter().fold(0u32, |acc, &b| acc << 8 | u32::from(b));
        let szx = (value & 0x7) as u8;
        if szx == 7 {
            return Err(BlockError::ReservedSzx);
        }
        Ok(BlockOpt {
            num: value >> 4,
            more: value & 0x8 != 0,
            szx,
        })
    }
}

/// The block size for `szx`: `2^(szx + 4)` bytes (RFC 7959 §2.2).
///
/// Callers pass 0..=6; larger values are clamped to 6.
pub fn szx_to_size(szx: u8) -> u32 {
    1 << (u32::from(szx.min(MAX_SZX)) + 4)
}

/// The largest SZX whose block size is at most `size` bytes, `None` below 16.
pub fn size_to_szx(size: u32) -> Option<u8> {
    (0..=MAX_SZX).rev().find(|&szx| szx_to_size(szx) <= size)
}

/// A uint option value in its minimal length: no leading zero bytes, and
/// zero as the empty string (RFC 7252 §3.2).
pub fn encode_uint(value: u32) -> Vec<u8> {
    let bytes = value.to_be_bytes();
    let skip = bytes.iter().take_while(|&&b| b == 0).count();
    bytes[skip..].to_vec()
}

/// A uint option value of 0 to 4 bytes; `None` when longer (RFC 7252 §3.2).
///
/// Leading zero bytes are accepted: RFC 7252 §3.2 says a sender SHOULD use
/// the shortest form, and a recipient "MUST be prepared to process" longer
/// ones.
pub fn decode_uint(bytes: &[u8]) -> Option<u32> {
    if bytes.len() > 4 {
        return None;
    }
    Some(bytes.iter().fold(0u32, |acc, &b| acc << 8 | u32::from(b)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rfc_examples() {
        // docs/protocols/children.md §2.1: NUM=3, M=1, SZX=2 is 0x3A; NUM=5000, M=1, SZX=4
        // is 01 38 8c (verified with Python).
        assert_eq!(BlockOpt::new(3, true, 2).unwrap().encode(), vec![0x3a]);
        assert_eq!(
            BlockOpt::new(5000, true, 4).unwrap().encode(),
            vec![0x01, 0x38, 0x8c]
        );
        assert_eq!(
            BlockOpt::decode(&[0x01, 0x38, 0x8c]).unwrap(),
            BlockOpt {
                num: 5000,
                more: true,
                szx: 4
            }
        );
    }

    #[test]
    fn lengths_are_minimal() {
        assert_eq!(
            BlockOpt::new(0, false, 0).unwrap().encode(),
            Vec::<u8>::new()
        );
        assert_eq!(BlockOpt::new(15, true, 6).unwrap().encode(), vec![0xfe]);
        assert_eq!(
            BlockOpt::new(16, false, 0).unwrap().encode(),
            vec![0x01, 0x00]
        );
        assert_eq!(
            BlockOpt::new(4095, true, 0).unwrap().encode(),
            vec![0xff, 0xf8]
        );
        // Block 4096 is where coap-lite's u16 wraps to NUM 0 (docs/protocols/children.md §6.1).
        assert_eq!(
            BlockOpt::new(4096, true, 0).unwrap().encode(),
            vec![0x01, 0x00, 0x08]
        );
        assert_eq!(
            BlockOpt::new(MAX_NUM, false, 6).unwrap().encode(),
            vec![0xff, 0xff, 0xf6]
        );
        assert_eq!(
            BlockOpt::decode(&[]).unwrap(),
            BlockOpt {
                num: 0,
                more: false,
                szx: 0
            }
        );
    }

    #[test]
    fn rejects_what_rfc_7959_forbids() {
        assert_eq!(BlockOpt::decode(&[0x0f]), Err(BlockError::ReservedSzx));
        assert_eq!(
            BlockOpt::decode(&[0, 0, 0, 0x08]),
            Err(BlockError::TooLong(4))
        );
        assert_eq!(BlockOpt::new(0, false, 7), Err(BlockError::ReservedSzx));
        assert_eq!(
            BlockOpt::new(MAX_NUM + 1, false, 0),
            Err(BlockError::NumTooLarge(MAX_NUM + 1))
        );
    }

    #[test]
    fn sizes_and_offsets() {
        assert_eq!(szx_to_size(0), 16);
        assert_eq!(szx_to_size(6), 1024);
        assert_eq!(size_to_szx(1024), Some(6));
        assert_eq!(size_to_szx(1000), Some(5));
        assert_eq!(size_to_szx(15), None);
        assert_eq!(
            BlockOpt::new(MAX_NUM, false, 6).unwrap().offset(),
            1_073_740_800
        );
    }

    #[test]
    fn uints() {
        assert_eq!(encode_uint(0), Vec::<u8>::new());
        assert_eq!(encode_uint(5000), vec![0x13, 0x88]);
        assert_eq!(encode_uint(u32::MAX), vec![0xff; 4]);
        assert_eq!(decode_uint(&[0, 0x13, 0x88]), Some(5000));
        assert_eq!(decode_uint(&[1, 2, 3, 4, 5]), None);
    }

    proptest! {
        #[test]
        fn round_trip(num in 0..=MAX_NUM, more: bool, szx in 0u8..=6) {
            let b = BlockOpt::new(num, more, szx).unwrap();
            let bytes = b.encode();
            prop_assert!(bytes.len() <= 3);
            prop_assert!(bytes.first() != Some(&0));
            prop_assert_eq!(BlockOpt::decode(&bytes).unwrap(), b);
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..6)) {
            if let Ok(b) = BlockOpt::decode(&bytes) {
                prop_assert!(b.num <= MAX_NUM && b.szx <= MAX_SZX);
            }
        }

        #[test]
        fn uint_round_trip(v: u32) {
            prop_assert_eq!(decode_uint(&encode_uint(v)), Some(v));
        }
    }
}
