//! The 32-byte MCUboot image header and its version field.
//!
//! Layout (all little-endian; mcu-tools/mcuboot
//! `boot/bootutil/include/bootutil/image.h`, `struct image_header`):
//!
//! ```text
//! 0  ih_magic            u32  0x96f3b83d
//! 4  ih_load_addr        u32
//! 8  ih_hdr_size         u16  header size; the body starts here (>= 32)
//! 10 ih_protect_tlv_size u16  size of the protected TLV area, info included
//! 12 ih_img_size         u32  body size, header excluded
//! 16 ih_flags            u32  IMAGE_F_*
//! 20 ih_ver              u8 major, u8 minor, u16 revision, u32 build_num
//! 28 _pad1               u32
//! ```

use std::fmt;

use nom::number::complete::{le_u16, le_u32, u8 as byte};
use nom::sequence::tuple;
use nom::IResult;

use super::ParseError;

/// `IMAGE_MAGIC`.
pub const IMAGE_MAGIC: u32 = 0x96f3_b83d;
/// `IMAGE_MAGIC_V1`: the pre-1.0 header, which MCUboot no longer boots.
pub const IMAGE_MAGIC_V1: u32 = 0x96f3_b83c;
/// `IMAGE_HEADER_SIZE`.
pub const HEADER_SIZE: usize = 32;

/// `IMAGE_F_*` header flags (image.h).
pub mod flags {
    /// Position-independent code; not supported by MCUboot.
    pub const PIC: u32 = 0x0000_0001;
    /// Body encrypted with AES-128 (`IMAGE_F_ENCRYPTED_AES128`).
    pub const ENCRYPTED_AES128: u32 = 0x0000_0004;
    /// Body encrypted with AES-256 (`IMAGE_F_ENCRYPTED_AES256`).
    pub const ENCRYPTED_AES256: u32 = 0x0000_0008;
    /// Split image application (`IMAGE_F_NON_BOOTABLE`).
    pub const NON_BOOTABLE: u32 = 0x0000_0010;
    /// Loaded into RAM by the bootloader (`IMAGE_F_RAM_LOAD`).
    pub const RAM_LOAD: u32 = 0x0000_0020;
    /// Runs from a fixed ROM address (`IMAGE_F_ROM_FIXED`).
    pub const ROM_FIXED: u32 = 0x0000_0100;
    /// LZMA1-compressed body.
    pub const COMPRESSED_LZMA1: u32 = 0x0000_0200;
    /// LZMA2-compressed body.
    pub const COMPRESSED_LZMA2: u32 = 0x0000_0400;
    /// ARM Thumb filter applied before compression.
    pub const COMPRESSED_ARM_THUMB_FLT: u32 = 0x0000_0800;
    /// Either encryption flag (`ENCRYPTIONFLAGS`).
    pub const ENCRYPTED: u32 = ENCRYPTED_AES128 | ENCRYPTED_AES256;
    /// Any compression flag (`COMPRESSIONFLAGS`).
    pub const COMPRESSED: u32 = COMPRESSED_LZMA1 | COMPRESSED_LZMA2 | COMPRESSED_ARM_THUMB_FLT;

    /// Names of the set flags, for `otabridge image inspect`.
    pub fn names(f: u32) -> Vec<&'static str> {
        [
            (PIC, "PIC"),
            (ENCRYPTED_AES128, "ENCRYPTED_AES128"),
            (ENCRYPTED_AES256, "ENCRYPTED_AES256"),
            (NON_BOOTABLE, "NON_BOOTABLE"),
            (RAM_LOAD, "RAM_LOAD"),
            (ROM_FIXED, "ROM_FIXED"),
            (COMPRESSED_LZMA1, "COMPRESSED_LZMA1"),
            (COMPRESSED_LZMA2, "COMPRESSED_LZMA2"),
            (COMPRESSED_ARM_THUMB_FLT, "COMPRESSED_ARM_THUMB_FLT"),
        ]
        .into_iter()
        .filter(|(bit, _)| f & bit != 0)
        .map(|(_, n)| n)
        .collect()
    }
}

/// `struct image_version`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ImageVersion {
    /// `iv_major`.
    pub major: u8,
    /// `iv_minor`.
    pub minor: u8,
    /// `iv_revision`.
    pub revision: u16,
    /// `iv_build_num`.
    pub build: u32,
}

impl fmt::Display for ImageVersion {
    /// `major.minor.revision`, with `.build` when the build number is not
    /// zero: the string an SMP device reports for the image (zephyr
    /// `img_mgmt_ver_str`), so that it compares with what the child says.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.revision)?;
        if self.build != 0 {
            write!(f, ".{}", self.build)?;
        }
        Ok(())
    }
}

/// A header whose magic and sizes were checked (not yet against a file).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// `ih_load_addr`.
    pub load_addr: u32,
    /// `ih_hdr_size`: where the body starts.
    pub hdr_size: u16,
    /// `ih_protect_tlv_size`: 0, or the protected TLV area's size with its
    /// 4-byte info.
    pub protect_tlv_size: u16,
    /// `ih_img_size`: the body's size.
    pub img_size: u32,
    /// `ih_flags` ([`flags`]).
    pub flags: u32,
    /// `ih_ver`.
    pub version: ImageVersion,
}

impl Header {
    /// Parses and checks the first 32 bytes of `bytes`.
    pub fn parse(bytes: &[u8]) -> Result<Header, ParseError> {
        type Fields = (u32, u32, u16, u16, u32, u32, u8, u8, u16, u32, u32);
        fn fields(i: &[u8]) -> IResult<&[u8], Fields> {
            tuple((
                le_u32, le_u32, le_u16, le_u16, le_u32, le_u32, byte, byte, le_u16, le_u32, le_u32,
            ))(i)
        }
        let Ok((_, f)) = fields(bytes) else {
            return Err(ParseError::Truncated {
                what: "image header",
                need: HEADER_SIZE as u64,
                have: bytes.len() as u64,
            });
        };
        let (
            magic,
            load_addr,
            hdr_size,
            protect_tlv_size,
            img_size,
            flags,
            major,
            minor,
            rev,
            build,
            _pad,
        ) = f;
        match magic {
            IMAGE_MAGIC => {}
            IMAGE_MAGIC_V1 => return Err(ParseError::OldMagic),
            other => return Err(ParseError::Magic(other)),
        }
        if usize::from(hdr_size) < HEADER_SIZE {
            return Err(ParseError::HeaderSize(hdr_size));
        }
        if protect_tlv_size != 0 && usize::from(protect_tlv_size) < super::tlv::INFO_SIZE {
            return Err(ParseError::ProtectedSize(protect_tlv_size));
        }
        Ok(Header {
            load_addr,
            hdr_size,
            protect_tlv_size,
            img_size,
            flags,
            version: ImageVersion {
                major,
                minor,
                revision: rev,
                build,
            },
        })
    }

    /// Where the protected TLV area (or, without one, the unprotected area)
    /// starts: the end of the body.
    pub fn body_end(&self) -> u64 {
        u64::from(self.hdr_size) + u64::from(self.img_size)
    }

    /// Where the unprotected TLV area starts; also the end of what the image
    /// hash and the signature cover (header, body, protected TLVs).
    pub fn signed_end(&self) -> u64 {
        self.body_end() + u64::from(self.protect_tlv_size)
    }

    /// Which bytes after the body hold the TLV areas of an image file of
    /// `file_len` bytes: `(offset, length)` to read and hand to
    /// [`super::Trailer::parse`]. The length is capped at the protected area
    /// plus the largest unprotected area (64 KiB), so a lying header never
    /// makes a reader allocate more than that.
    pub fn trailer_window(&self, file_len: u64) -> Result<(u64, usize), ParseError> {
        let start = self.body_end();
        if start > file_len {
            return Err(ParseError::Truncated {
                what: "image body",
                need: start,
                have: file_len,
            });
        }
        let max = usize::from(self.protect_tlv_size) + usize::from(u16::MAX);
        let len = usize::try_from(file_len - start).map_or(max, |n| n.min(max));
        Ok((start, len))
    }

    /// Whether an encryption flag is set.
    pub fn is_encrypted(&self) -> bool {
        self.flags & flags::ENCRYPTED != 0
    }

    /// Encodes the header (simulators, tests).
    pub fn encode(&self) -> [u8; HEADER_SIZE] {
        let mut b = [0u8; HEADER_SIZE];
        b[0..4].copy_from_slice(&IMAGE_MAGIC.to_le_bytes());
        b[4..8].copy_from_slice(&self.load_addr.to_le_bytes());
        b[8..10].copy_from_slice(&self.hdr_size.to_le_bytes());
        b[10..12].copy_from_slice(&self.protect_tlv_size.to_le_bytes());
        b[12..16].copy_from_slice(&self.img_size.to_le_bytes());
        b[16..20].copy_from_slice(&self.flags.to_le_bytes());
        b[20] = self.version.major;
        b[21] = self.version.minor;
        b[22..24].copy_from_slice(&self.version.revision.to_le_bytes());
        b[24..28].copy_from_slice(&self.version.build.to_le_bytes());
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h() -> Header {
        Header {
            load_addr: 0,
            hdr_size: 0x200,
            protect_tlv_size: 0,
            img_size: 1000,
            flags: 0,
            version: ImageVersion {
                major: 1,
                minor: 2,
                revision: 3,
                build: 4,
            },
        }
    }

    #[test]
    fn round_trips_and_checks() {
        let b = h().encode();
        assert_eq!(Header::parse(&b).unwrap(), h());
        assert_eq!(h().version.to_string(), "1.2.3.4");
        let v0 = ImageVersion {
            build: 0,
            ..h().version
        };
        assert_eq!(v0.to_string(), "1.2.3");
        assert!(matches!(
            Header::parse(&b[..31]),
            Err(ParseError::Truncated {
                need: 32,
                have: 31,
                ..
            })
        ));
        let mut bad = b;
        bad[0] ^= 1;
        assert_eq!(Header::parse(&bad), Err(ParseError::OldMagic));
        bad[3] = 0;
        assert_eq!(Header::parse(&bad), Err(ParseError::Magic(0x00f3_b83c)));
        let mut small = b;
        small[8..10].copy_from_slice(&31u16.to_le_bytes());
        assert_eq!(Header::parse(&small), Err(ParseError::HeaderSize(31)));
        let mut prot = b;
        prot[10..12].copy_from_slice(&3u16.to_le_bytes());
        assert_eq!(Header::parse(&prot), Err(ParseError::ProtectedSize(3)));
    }

    #[test]
    fn flag_names() {
        assert_eq!(
            flags::names(flags::ENCRYPTED_AES128 | flags::RAM_LOAD),
            ["ENCRYPTED_AES128", "RAM_LOAD"]
        );
    }
}
