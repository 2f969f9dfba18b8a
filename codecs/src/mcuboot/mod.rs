//! MCUboot images: the header, the protected and unprotected TLV areas, and
//! the pure parts of checking an image before it travels to a child.
//!
//! Sources: mcu-tools/mcuboot `docs/design.md` ("Image Format") and
//! `boot/bootutil/include/bootutil/image.h`; what MCUboot itself checks is
//! `boot/bootutil/src/image_validate.c` (`bootutil_img_validate`).
//!
//! ```text
//! 0              hdr_size              body_end               signed_end           tlv_end
//! | header (32+) | body (img_size)     | protected TLVs       | unprotected TLVs     | trailing
//! |<------------- hashed and signed -------------------------->|
//! ```
//!
//! # Layout
//! - [`header`]: the 32-byte header, flags, version.
//! - [`tlv`]: a TLV area as a checked view, its entry types.
//! - [`image`]: the two areas after the body ([`Trailer`]), a checked view
//!   over a whole image in memory ([`ImageView`]), the parsed form
//!   ([`Image`]) and what the TLVs say ([`Facts`]).
//! - [`digest`]: the image hash computed in pieces ([`ImageDigest`]), so a
//!   file is hashed as it is read, never held whole.
//!
//! # Reading a file without holding it
//! 1. Read [`HEADER_SIZE`] bytes, [`Header::parse`].
//! 2. [`Header::trailer_window`] with the file's length says which bytes
//!    after the body to read (at most the protected area plus 64 KiB);
//!    [`Trailer::parse`] them.
//! 3. Feed bytes `0..header.signed_end()` to an [`ImageDigest`] of the
//!    trailer's hash kind and compare with [`Facts::hash`].
//!
//! Nothing here panics on any input, and nothing allocates by a length
//! field that was not first checked against the bytes at hand.

pub mod digest;
pub mod header;
pub mod image;
pub mod tlv;

pub use digest::{HashKind, ImageDigest};
pub use header::{flags, Header, ImageVersion, HEADER_SIZE};
pub use image::{Facts, Image, ImageView, SigKind, Trailer};
pub use tlv::{kind, Tlv, TlvArea};

/// Why bytes are not a well-formed MCUboot image.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The input ends before a part that must be there.
    #[error("truncated: the {what} needs {need} bytes, the image has {have}")]
    Truncated {
        /// The part.
        what: &'static str,
        /// Offset its end needs.
        need: u64,
        /// Bytes there are.
        have: u64,
    },
    /// Not `IMAGE_MAGIC`.
    #[error("not an MCUboot image: magic {0:#010x}, expected 0x96f3b83d")]
    Magic(u32),
    /// `IMAGE_MAGIC_V1`.
    #[error("an MCUboot v1 image header (magic 0x96f3b83c), which MCUboot no longer boots")]
    OldMagic,
    /// `ih_hdr_size` below the header's own size.
    #[error("header size {0} is below 32")]
    HeaderSize(u16),
    /// `ih_protect_tlv_size` not 0 and too small for the info.
    #[error("protected TLV size {0} is below the 4-byte TLV info")]
    ProtectedSize(u16),
    /// A TLV area with the wrong magic where one must start.
    #[error("{area} TLV area at offset {at}: magic {found:#06x}, expected {expected:#06x}")]
    TlvMagic {
        /// `protected` or `unprotected`.
        area: &'static str,
        /// Offset in the image.
        at: u64,
        /// What is there.
        found: u16,
        /// What must be.
        expected: u16,
    },
    /// `it_tlv_tot` below 4.
    #[error("{area} TLV area at offset {at}: total {tot} is below the 4-byte info")]
    TlvTotal {
        /// `protected` or `unprotected`.
        area: &'static str,
        /// Offset in the image.
        at: u64,
        /// `it_tlv_tot`.
        tot: usize,
    },
    /// An entry whose header or length does not fit its area.
    #[error("{area} TLV area: the entry at offset {at} runs past the area's end")]
    TlvOverrun {
        /// `protected` or `unprotected`.
        area: &'static str,
        /// Offset of the entry in the image.
        at: u64,
    },
    /// The protected area's total disagrees with the header.
    #[error("protected TLV area is {area} bytes, the header says {header}")]
    ProtectedMismatch {
        /// `ih_protect_tlv_size`.
        header: u16,
        /// `it_tlv_tot`.
        area: u16,
    },
}
