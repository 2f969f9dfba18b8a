//! MCUboot TLV areas: the protected one (covered by the image hash) and the
//! unprotected one after it.
//!
//! ```text
//! struct image_tlv_info { u16 it_magic; u16 it_tlv_tot; }  // tot includes these 4 bytes
//! struct image_tlv      { u16 it_type;  u16 it_len; }      // then it_len bytes of value
//! ```
//! (mcu-tools/mcuboot `boot/bootutil/include/bootutil/image.h`; the walk is
//! `bootutil_tlv_iter_begin` / `_next` in `boot/bootutil/src/tlv.c`.)
//!
//! A [`TlvArea`] is checked once when it is made: its total fits the bytes
//! given, and every entry's length fits the area, so walking it afterwards
//! cannot fail, cannot read outside it, and ends after at most `tot / 4`
//! entries whatever the lengths say.

use nom::bytes::complete::take;
use nom::number::complete::le_u16;
use nom::sequence::tuple;
use nom::IResult;

use super::ParseError;

/// `IMAGE_TLV_INFO_MAGIC`: the unprotected area.
pub const INFO_MAGIC: u16 = 0x6907;
/// `IMAGE_TLV_PROT_INFO_MAGIC`: the protected area.
pub const PROT_INFO_MAGIC: u16 = 0x6908;
/// Size of `struct image_tlv_info` and of `struct image_tlv`.
pub const INFO_SIZE: usize = 4;

/// TLV types (`IMAGE_TLV_*` in image.h).
pub mod kind {
    /// Hash of the signing public key.
    pub const KEYHASH: u16 = 0x01;
    /// The signing public key itself.
    pub const PUBKEY: u16 = 0x02;
    /// SHA-256 of header, body and protected TLVs.
    pub const SHA256: u16 = 0x10;
    /// SHA-384 of the same.
    pub const SHA384: u16 = 0x11;
    /// SHA-512 of the same.
    pub const SHA512: u16 = 0x12;
    /// RSA-2048 PSS signature of the hash.
    pub const RSA2048_PSS: u16 = 0x20;
    /// ECDSA-224; MCUboot no longer supports it.
    pub const ECDSA224: u16 = 0x21;
    /// ECDSA signature (DER) of the hash.
    pub const ECDSA_SIG: u16 = 0x22;
    /// RSA-3072 PSS signature of the hash.
    pub const RSA3072_PSS: u16 = 0x23;
    /// Ed25519 signature of the hash.
    pub const ED25519: u16 = 0x24;
    /// The signature covers the image itself, not its hash.
    pub const SIG_PURE: u16 = 0x25;
    /// Image key encrypted with RSA-OAEP-2048.
    pub const ENC_RSA2048: u16 = 0x30;
    /// Image key wrapped with AES-KW.
    pub const ENC_KW: u16 = 0x31;
    /// Image key for ECIES-P256.
    pub const ENC_EC256: u16 = 0x32;
    /// Image key for ECIES-X25519.
    pub const ENC_X25519: u16 = 0x33;
    /// Image key for ECIES-X25519 with SHA-512.
    pub const ENC_X25519_SHA512: u16 = 0x34;
    /// Dependency on another image.
    pub const DEPENDENCY: u16 = 0x40;
    /// Security counter.
    pub const SEC_CNT: u16 = 0x50;
    /// Measured boot record.
    pub const BOOT_RECORD: u16 = 0x60;
    /// Decompressed size.
    pub const DECOMP_SIZE: u16 = 0x70;
    /// Hash of the decompressed image.
    pub const DECOMP_SHA: u16 = 0x71;
    /// Signature of the decompressed image.
    pub const DECOMP_SIGNATURE: u16 = 0x72;
    /// Compressed, decrypted size.
    pub const COMP_DEC_SIZE: u16 = 0x73;
    /// Vendor UUID.
    pub const UUID_VID: u16 = 0x74;
    /// Device class UUID.
    pub const UUID_CID: u16 = 0x75;

    /// The image.h name of a type, or `None` for vendor and unknown types.
    pub fn name(t: u16) -> Option<&'static str> {
        Some(match t {
            KEYHASH => "KEYHASH",
            PUBKEY => "PUBKEY",
            SHA256 => "SHA256",
            SHA384 => "SHA384",
            SHA512 => "SHA512",
            RSA2048_PSS => "RSA2048_PSS",
            ECDSA224 => "ECDSA224",
            ECDSA_SIG => "ECDSA_SIG",
            RSA3072_PSS => "RSA3072_PSS",
            ED25519 => "ED25519",
            SIG_PURE => "SIG_PURE",
            ENC_RSA2048 => "ENC_RSA2048",
            ENC_KW => "ENC_KW",
            ENC_EC256 => "ENC_EC256",
            ENC_X25519 => "ENC_X25519",
            ENC_X25519_SHA512 => "ENC_X25519_SHA512",
            DEPENDENCY => "DEPENDENCY",
            SEC_CNT => "SEC_CNT",
            BOOT_RECORD => "BOOT_RECORD",
            DECOMP_SIZE => "DECOMP_SIZE",
            DECOMP_SHA => "DECOMP_SHA",
            DECOMP_SIGNATURE => "DECOMP_SIGNATURE",
            COMP_DEC_SIZE => "COMP_DEC_SIZE",
            UUID_VID => "UUID_VID",
            UUID_CID => "UUID_CID",
            _ => return None,
        })
    }
}

/// One TLV entry, borrowed from its area.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tlv<'a> {
    /// `it_type`.
    pub kind: u16,
    /// Offset of the value from the start of the area.
    pub offset: usize,
    /// The value (`it_len` bytes).
    pub value: &'a [u8],
}

/// A checked TLV area: info header plus entries that exactly fill `it_tlv_tot`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TlvArea<'a> {
    magic: u16,
    /// The whole area, info included (`it_tlv_tot` bytes).
    bytes: &'a [u8],
}

fn info(i: &[u8]) -> IResult<&[u8], (u16, u16)> {
    tuple((le_u16, le_u16))(i)
}

fn entry(i: &[u8]) -> IResult<&[u8], (u16, &[u8])> {
    let (i, (kind, len)) = tuple((le_u16, le_u16))(i)?;
    let (i, value) = take(len)(i)?;
    Ok((i, (kind, value)))
}

impl<'a> TlvArea<'a> {
    /// Checks the area at the start of `bytes` with the info magic `magic`;
    /// returns it and the bytes after it. `at` is the area's offset in the
    /// image, for errors.
    pub fn parse(bytes: &'a [u8], magic: u16, at: u64) -> Result<(Self, &'a [u8]), ParseError> {
        let area = if magic == PROT_INFO_MAGIC {
            "protected"
        } else {
            "unprotected"
        };
        let Ok((_, (found, tot))) = info(bytes) else {
            return Err(ParseError::Truncated {
                what: "TLV info",
                need: at + INFO_SIZE as u64,
                have: at + bytes.len() as u64,
            });
        };
        if found != magic {
            return Err(ParseError::TlvMagic {
                area,
                at,
                found,
                expected: magic,
            });
        }
        let tot = usize::from(tot);
        if tot < INFO_SIZE {
            return Err(ParseError::TlvTotal { area, at, tot });
        }
        if tot > bytes.len() {
            return Err(ParseError::Truncated {
                what: "TLV area",
                need: at + tot as u64,
                have: at + bytes.len() as u64,
            });
        }
        let (this, rest) = bytes.split_at(tot);
        // Every entry must fit the area; each step consumes at least 4
        // bytes, so this loop runs at most tot / 4 times.
        let mut i = &this[INFO_SIZE..];
        while !i.is_empty() {
            let off = tot - i.len();
            match entry(i) {
                Ok((next, _)) => i = next,
                Err(_) => {
                    return Err(ParseError::TlvOverrun {
                        area,
                        at: at + off as u64,
                    })
                }
            }
        }
        Ok((TlvArea { magic, bytes: this }, rest))
    }

    /// Whether this is the protected area.
    pub fn is_protected(&self) -> bool {
        self.magic == PROT_INFO_MAGIC
    }

    /// The area's bytes, info included.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// `it_tlv_tot`.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Whether the area holds no entry.
    pub fn is_empty(&self) -> bool {
        self.bytes.len() == INFO_SIZE
    }

    /// The entries, in order.
    pub fn iter(&self) -> Iter<'a> {
        Iter {
            area: self.bytes,
            pos: INFO_SIZE,
        }
    }
}

impl<'a> IntoIterator for &TlvArea<'a> {
    type Item = Tlv<'a>;
    type IntoIter = Iter<'a>;
    fn into_iter(self) -> Iter<'a> {
        self.iter()
    }
}

/// Iterator over a checked area's entries.
#[derive(Debug, Clone)]
pub struct Iter<'a> {
    area: &'a [u8],
    pos: usize,
}

impl<'a> Iterator for Iter<'a> {
    type Item = Tlv<'a>;
    fn next(&mut self) -> Option<Tlv<'a>> {
        let rest = self.area.get(self.pos..)?;
        // The area was checked, so this cannot fail; should it, the walk ends.
        let (next, (kind, value)) = entry(rest).ok()?;
        let offset = self.pos + INFO_SIZE;
        self.pos = self.area.len() - next.len();
        Some(Tlv {
            kind,
            offset,
            value,
        })
    }
}

/// Encodes an area (tests, simulators).
pub fn encode_area(magic: u16, entries: &[(u16, &[u8])]) -> Vec<u8> {
    let body: usize = entries.iter().map(|(_, v)| INFO_SIZE + v.len()).sum();
    let tot = u16::try_from(INFO_SIZE + body).expect("a TLV area holds at most 64 KiB");
    let mut out = Vec::with_capacity(usize::from(tot));
    out.extend_from_slice(&magic.to_le_bytes());
    out.extend_from_slice(&tot.to_le_bytes());
    for (kind, value) in entries {
        out.extend_from_slice(&kind.to_le_bytes());
        let len = u16::try_from(value.len()).expect("a TLV value holds at most 64 KiB");
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(value);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walks_a_well_formed_area() {
        let a = encode_area(
            INFO_MAGIC,
            &[(kind::SHA256, &[7; 32]), (kind::KEYHASH, &[])],
        );
        let mut with_tail = a.clone();
        with_tail.extend_from_slice(b"tail");
        let (area, rest) = TlvArea::parse(&with_tail, INFO_MAGIC, 100).unwrap();
        assert_eq!(rest, b"tail");
        let e: Vec<_> = area.iter().collect();
        assert_eq!(e.len(), 2);
        assert_eq!(
            (e[0].kind, e[0].offset, e[0].value),
            (kind::SHA256, 8, &[7u8; 32][..])
        );
        assert_eq!((e[1].kind, e[1].value.len()), (kind::KEYHASH, 0));
        assert!(!area.is_protected());
    }

    #[test]
    fn lying_lengths_and_totals_are_rejected() {
        let a = encode_area(PROT_INFO_MAGIC, &[(kind::SEC_CNT, &[1, 0, 0, 0])]);
        // Wrong magic for the area asked for.
        assert!(matches!(
            TlvArea::parse(&a, INFO_MAGIC, 0),
            Err(ParseError::TlvMagic { found: 0x6908, .. })
        ));
        // An entry length one past the area.
        let mut long = a.clone();
        long[6] = 5;
        assert_eq!(
            TlvArea::parse(&long, PROT_INFO_MAGIC, 40),
            Err(ParseError::TlvOverrun {
                area: "protected",
                at: 44
            })
        );
        // A total beyond the bytes.
        let mut big = a.clone();
        big[2] = 200;
        assert!(matches!(
            TlvArea::parse(&big, PROT_INFO_MAGIC, 0),
            Err(ParseError::Truncated { need: 200, .. })
        ));
        // A total below the info size.
        let mut tiny = a.clone();
        tiny[2] = 3;
        tiny[3] = 0;
        assert!(matches!(
            TlvArea::parse(&tiny, PROT_INFO_MAGIC, 0),
            Err(ParseError::TlvTotal { tot: 3, .. })
        ));
        // A total that leaves a partial entry header.
        let mut partial = a.clone();
        partial[2] = 10;
        partial.truncate(10);
        assert!(matches!(
            TlvArea::parse(&partial, PROT_INFO_MAGIC, 0),
            Err(ParseError::TlvOverrun { .. })
        ));
    }

    #[test]
    fn the_largest_area_walks_in_bounded_steps() {
        // 16382 empty entries: the most a u16 total can hold (4 + 4 * 16382 = 65532).
        let entries: Vec<(u16, &[u8])> = (0..16382).map(|_| (0xffa0u16, &[][..])).collect();
        let a = encode_area(INFO_MAGIC, &entries);
        let (area, _) = TlvArea::parse(&a, INFO_MAGIC, 0).unwrap();
        assert_eq!(area.iter().count(), 16382);
    }
}
