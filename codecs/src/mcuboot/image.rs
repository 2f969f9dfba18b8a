//! The TLV areas after the body, a checked view over a whole image, the
//! parsed form, and what the TLVs say.

use super::digest::{self, HashKind};
use super::header::{Header, ImageVersion, HEADER_SIZE};
use super::tlv::{self, kind, Tlv, TlvArea, INFO_MAGIC, PROT_INFO_MAGIC};
use super::ParseError;

/// The protected and unprotected TLV areas that follow the body
/// (`bootutil_tlv_iter_begin`: the protected area, when the header gives it
/// a size, must be exactly that size; the unprotected area follows).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trailer<'a> {
    /// The protected area, when `ih_protect_tlv_size` is not 0.
    pub protected: Option<TlvArea<'a>>,
    /// The unprotected area.
    pub unprotected: TlvArea<'a>,
}

impl<'a> Trailer<'a> {
    /// Checks the areas at the start of `tail`, the bytes from the end of
    /// the body on (see [`Header::trailer_window`]). Bytes after the
    /// unprotected area (a padded image's slot trailer) are allowed.
    pub fn parse(header: &Header, tail: &'a [u8]) -> Result<Self, ParseError> {
        let at = header.body_end();
        let (protected, rest) = if header.protect_tlv_size == 0 {
            (None, tail)
        } else {
            let (p, rest) = TlvArea::parse(tail, PROT_INFO_MAGIC, at)?;
            if p.len() != usize::from(header.protect_tlv_size) {
                return Err(ParseError::ProtectedMismatch {
                    header: header.protect_tlv_size,
                    area: u16::try_from(p.len()).unwrap_or(u16::MAX),
                });
            }
            (Some(p), rest)
        };
        let (unprotected, _) = TlvArea::parse(rest, INFO_MAGIC, header.signed_end())?;
        Ok(Trailer {
            protected,
            unprotected,
        })
    }

    /// Both areas' size.
    pub fn len(&self) -> usize {
        self.protected.map_or(0, |p| p.len()) + self.unprotected.len()
    }

    /// Never empty: the unprotected info is always there.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Every entry, protected first, with whether it is protected.
    pub fn entries(&self) -> impl Iterator<Item = (bool, Tlv<'a>)> + '_ {
        let p = self
            .protected
            .iter()
            .flat_map(|a| a.iter().map(|t| (true, t)));
        p.chain(self.unprotected.iter().map(|t| (false, t)))
    }

    /// What the entries say.
    pub fn facts(&self) -> Facts<'a> {
        let mut f = Facts::default();
        for (protected, t) in self.entries() {
            f.note(protected, t);
        }
        f
    }
}

/// A signature TLV's algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SigKind {
    /// `IMAGE_TLV_RSA2048_PSS`.
    Rsa2048Pss,
    /// `IMAGE_TLV_RSA3072_PSS`.
    Rsa3072Pss,
    /// `IMAGE_TLV_ECDSA_SIG` (P-256 with a SHA-256 image hash, P-384 with SHA-384).
    Ecdsa,
    /// `IMAGE_TLV_ED25519`.
    Ed25519,
    /// `IMAGE_TLV_ECDSA224`, which MCUboot no longer verifies.
    Ecdsa224,
}

impl SigKind {
    /// The kind a TLV type names, if it is a signature TLV.
    pub fn from_tlv(t: u16) -> Option<SigKind> {
        Some(match t {
            kind::RSA2048_PSS => SigKind::Rsa2048Pss,
            kind::RSA3072_PSS => SigKind::Rsa3072Pss,
            kind::ECDSA_SIG => SigKind::Ecdsa,
            kind::ED25519 => SigKind::Ed25519,
            kind::ECDSA224 => SigKind::Ecdsa224,
            _ => return None,
        })
    }

    /// A name for reports.
    pub fn name(self) -> &'static str {
        match self {
            SigKind::Rsa2048Pss => "RSA-2048 PSS",
            SigKind::Rsa3072Pss => "RSA-3072 PSS",
            SigKind::Ecdsa => "ECDSA",
            SigKind::Ed25519 => "Ed25519",
            SigKind::Ecdsa224 => "ECDSA-224",
        }
    }
}

/// What an image's TLVs say, borrowed from them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facts<'a> {
    /// The first hash TLV: its kind and value.
    pub hash: Option<(HashKind, &'a [u8])>,
    /// `IMAGE_TLV_KEYHASH`.
    pub key_hash: Option<&'a [u8]>,
    /// `IMAGE_TLV_PUBKEY`.
    pub public_key: Option<&'a [u8]>,
    /// Signature TLVs in order (MCUboot tries each against its key).
    pub signatures: Vec<(SigKind, &'a [u8])>,
    /// `IMAGE_TLV_SIG_PURE`: the signature covers the image, not its hash.
    pub pure: bool,
    /// The first `IMAGE_TLV_ENC_*` type: the image key's wrapping.
    pub encryption: Option<u16>,
    /// `IMAGE_TLV_SEC_CNT`, when 4 bytes long.
    pub security_counter: Option<u32>,
    /// `IMAGE_TLV_DEPENDENCY` entries.
    pub dependencies: usize,
    /// Entries found in the unprotected area that MCUboot's TLV allow list
    /// (`MCUBOOT_USE_TLV_ALLOW_LIST`) accepts only protected.
    pub unprotected_not_allowed: Vec<u16>,
}

/// `allowed_unprot_tlvs` in `image_validate.c`.
fn allowed_unprotected(t: u16) -> bool {
    matches!(
        t,
        kind::KEYHASH
            | kind::PUBKEY
            | kind::SHA256
            | kind::SHA384
            | kind::SHA512
            | kind::RSA2048_PSS
            | kind::ECDSA224
            | kind::ECDSA_SIG
            | kind::RSA3072_PSS
            | kind::ED25519
            | kind::SIG_PURE
            | kind::ENC_RSA2048
            | kind::ENC_KW
            | kind::ENC_EC256
            | kind::ENC_X25519
            | kind::ENC_X25519_SHA512
    )
}

impl<'a> Facts<'a> {
    fn note(&mut self, protected: bool, t: Tlv<'a>) {
        if !protected && !allowed_unprotected(t.kind) {
            self.unprotected_not_allowed.push(t.kind);
        }
        if let Some(h) = HashKind::from_tlv(t.kind) {
            self.hash.get_or_insert((h, t.value));
        } else if let Some(s) = SigKind::from_tlv(t.kind) {
            self.signatures.push((s, t.value));
        } else {
            match t.kind {
                kind::KEYHASH => {
                    self.key_hash.get_or_insert(t.value);
                }
                kind::PUBKEY => {
                    self.public_key.get_or_insert(t.value);
                }
                kind::SIG_PURE => self.pure = true,
                kind::ENC_RSA2048
                | kind::ENC_KW
                | kind::ENC_EC256
                | kind::ENC_X25519
                | kind::ENC_X25519_SHA512 => {
                    self.encryption.get_or_insert(t.kind);
                }
                kind::SEC_CNT => {
                    if let Ok(b) = <[u8; 4]>::try_from(t.value) {
                        self.security_counter = Some(u32::from_le_bytes(b));
                    }
                }
                kind::DEPENDENCY => self.dependencies += 1,
                _ => {}
            }
        }
    }
}

/// A checked view over a whole image in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageView<'a> {
    bytes: &'a [u8],
    header: Header,
    trailer: Trailer<'a>,
}

impl<'a> ImageView<'a> {
    /// Checks `bytes` as an image: header, body within the bytes, both TLV
    /// areas well formed.
    pub fn new(bytes: &'a [u8]) -> Result<Self, ParseError> {
        let header = Header::parse(bytes)?;
        let (start, len) = header.trailer_window(bytes.len() as u64)?;
        // `start` is at most bytes.len() (checked by trailer_window).
        let from = usize::try_from(start).unwrap_or(bytes.len());
        let tail = bytes.get(from..).unwrap_or_default();
        let tail = tail.get(..len).unwrap_or(tail);
        let trailer = Trailer::parse(&header, tail)?;
        Ok(ImageView {
            bytes,
            header,
            trailer,
        })
    }

    /// The header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The TLV areas.
    pub fn trailer(&self) -> &Trailer<'a> {
        &self.trailer
    }

    /// The body (`img_size` bytes after `hdr_size`).
    pub fn body(&self) -> &'a [u8] {
        self.bytes
            .get(usize::from(self.header.hdr_size)..self.body_end())
            .unwrap_or_default()
    }

    fn body_end(&self) -> usize {
        // Checked against the input length in `new`.
        usize::try_from(self.header.body_end()).unwrap_or(self.bytes.len())
    }

    /// What the hash and the signature cover: header, body, protected TLVs.
    pub fn signed(&self) -> &'a [u8] {
        let end = self.body_end() + self.header.protect_tlv_size as usize;
        self.bytes.get(..end).unwrap_or_default()
    }

    /// The image up to the end of the unprotected area.
    pub fn image_len(&self) -> usize {
        self.body_end() + self.trailer.len()
    }

    /// Bytes after the unprotected area (padding, a slot trailer).
    pub fn trailing(&self) -> &'a [u8] {
        self.bytes.get(self.image_len()..).unwrap_or_default()
    }

    /// The owned, parsed form.
    pub fn to_image(&self) -> Image {
        let owned = |a: &TlvArea<'_>| a.iter().map(|t| (t.kind, t.value.to_vec())).collect();
        Image {
            header: self.header,
            protected: self
                .trailer
                .protected
                .as_ref()
                .map(owned)
                .unwrap_or_default(),
            unprotected: owned(&self.trailer.unprotected),
            body_len: self.header.img_size,
            trailing: self.trailing().len() as u64,
        }
    }
}

/// The parsed form of an image's metadata: header and TLVs, owned (the
/// body stays where it is). Every vector here was copied from checked
/// input, so its size is bounded by the input's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// The header.
    pub header: Header,
    /// Protected entries: type and value.
    pub protected: Vec<(u16, Vec<u8>)>,
    /// Unprotected entries: type and value.
    pub unprotected: Vec<(u16, Vec<u8>)>,
    /// `img_size`.
    pub body_len: u32,
    /// Bytes after the unprotected area.
    pub trailing: u64,
}

impl Image {
    /// Parses a whole image in memory.
    pub fn parse(bytes: &[u8]) -> Result<Image, ParseError> {
        Ok(ImageView::new(bytes)?.to_image())
    }
}

/// Builds an image the way imgtool lays one out, without a signature:
/// header, `body`, the `protected` entries (when any), then an unprotected
/// area with the `hash` TLV over everything before it followed by
/// `unprotected`. For tests and simulators.
pub fn assemble(
    version: ImageVersion,
    flags: u32,
    hdr_size: u16,
    body: &[u8],
    protected: &[(u16, &[u8])],
    hash: HashKind,
    unprotected: &[(u16, &[u8])],
) -> Vec<u8> {
    let hdr_size = hdr_size.max(HEADER_SIZE as u16);
    let prot = if protected.is_empty() {
        Vec::new()
    } else {
        tlv::encode_area(PROT_INFO_MAGIC, protected)
    };
    let header = Header {
        load_addr: 0,
        hdr_size,
        protect_tlv_size: u16::try_from(prot.len()).expect("a protected area fits 64 KiB"),
        img_size: u32::try_from(body.len()).expect("a body fits 4 GiB"),
        flags,
        version,
    };
    let mut out = Vec::with_capacity(usize::from(hdr_size) + body.len() + prot.len() + 256);
    out.extend_from_slice(&header.encode());
    out.resize(usize::from(hdr_size), 0);
    out.extend_from_slice(body);
    out.extend_from_slice(&prot);
    let d = digest::digest(hash, &out);
    let tlv_kind = match hash {
        HashKind::Sha256 => kind::SHA256,
        HashKind::Sha384 => kind::SHA384,
        HashKind::Sha512 => kind::SHA512,
    };
    let mut entries: Vec<(u16, &[u8])> = vec![(tlv_kind, &d)];
    entries.extend_from_slice(unprotected);
    out.extend_from_slice(&tlv::encode_area(INFO_MAGIC, &entries));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v() -> ImageVersion {
        ImageVersion {
            major: 2,
            minor: 0,
            revision: 0,
            build: 0,
        }
    }

    #[test]
    fn an_assembled_image_parses_and_its_hash_matches() {
        let body = vec![0xa5; 1000];
        let img = assemble(
            v(),
            0,
            0x200,
            &body,
            &[(kind::SEC_CNT, &[5, 0, 0, 0])],
            HashKind::Sha256,
            &[(kind::KEYHASH, &[1; 32])],
        );
        let view = ImageView::new(&img).unwrap();
        assert_eq!(view.body(), &body[..]);
        assert_eq!(view.header().version.to_string(), "2.0.0");
        let f = view.trailer().facts();
        let (k, h) = f.hash.unwrap();
        assert_eq!(k, HashKind::Sha256);
        assert_eq!(h, digest::digest(k, view.signed()));
        assert_eq!(f.key_hash, Some(&[1u8; 32][..]));
        assert_eq!(f.security_counter, Some(5));
        assert!(f.unprotected_not_allowed.is_empty());
        assert_eq!(view.image_len(), img.len());
        let parsed = Image::parse(&img).unwrap();
        assert_eq!(parsed.protected, vec![(kind::SEC_CNT, vec![5, 0, 0, 0])]);
        assert_eq!(parsed.unprotected.len(), 2);
        // Padding after the image is allowed and counted.
        let mut padded = img.clone();
        padded.extend_from_slice(&[0xff; 100]);
        assert_eq!(ImageView::new(&padded).unwrap().trailing().len(), 100);
    }

    #[test]
    fn structural_faults_name_the_part() {
        let img = assemble(
            v(),
            0,
            32,
            &[1; 64],
            &[(0x00a0, b"x")],
            HashKind::Sha256,
            &[],
        );
        // Truncated inside the body.
        assert!(matches!(
            ImageView::new(&img[..50]),
            Err(ParseError::Truncated {
                what: "image body",
                ..
            })
        ));
        // Truncated inside the unprotected area.
        assert!(matches!(
            ImageView::new(&img[..img.len() - 1]),
            Err(ParseError::Truncated {
                what: "TLV area",
                ..
            })
        ));
        // Header's protected size disagrees with the area's total.
        let mut lie = img.clone();
        lie[10] += 1;
        assert!(ImageView::new(&lie).is_err());
        // The body length lies so the areas are read from the wrong place.
        let mut body = img.clone();
        body[12] -= 1;
        assert!(matches!(
            ImageView::new(&body),
            Err(ParseError::TlvMagic { .. })
        ));
    }
}
