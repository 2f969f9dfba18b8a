//! A profile's image check (`[image_check]`, codecs/profiles/README.md):
//! what a vendor's image must look like before the gateway sends a byte of
//! it, declared in the profile instead of written in Rust (issue 14):
//!
//! ```toml
//! [image_check]
//! magic = { offset = 0, bytes = "41 43 4D 45" }
//! version = { offset = 4, parts = ["u8", "u8", "u16le"] }   # or text = 16
//! crc = { algorithm = "crc32", from = 0, to = -4, at = -4, endian = "little" }
//! ```
//!
//! Offsets below zero count from the end of the file (`-4`: the last four
//! bytes); `to` is exclusive. Every key is optional, but the table needs at
//! least one of the three.
//!
//! [`ImageChecker`] takes the file in order, in pieces of any size, and
//! keeps only the few bytes the fields need and the running CRC: the image
//! is never held whole. Call order: [`ImageChecker::new`] with the file's
//! size, [`ImageChecker::feed`] with every byte once, in order, then
//! [`ImageChecker::finish`] with the event's target version.

use std::ops::Range;

use serde::Deserialize;
use toml::Spanned;

use super::{CrcAlgorithm, Cx, ProfileErrorKind, Res, UintType};
use crate::iotda::ResultCode;
use crate::version::Policy;

/// Bytes that must open (or sit at `offset` in) every image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Magic {
    /// Where; below zero, from the end.
    pub offset: i64,
    /// What.
    pub bytes: Vec<u8>,
}

/// How the version field is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VersionFormat {
    /// Integers joined with dots: `["u8", "u8", "u16le"]` reads `1.2.3`.
    Parts(Vec<UintType>),
    /// Text of this many bytes, NUL or space padded.
    Text(usize),
}

impl VersionFormat {
    fn len(&self) -> usize {
        match self {
            VersionFormat::Parts(p) => p.iter().map(|t| t.size()).sum(),
            VersionFormat::Text(n) => *n,
        }
    }
}

/// Where the image says its version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionField {
    /// Where; below zero, from the end.
    pub offset: i64,
    /// How.
    pub format: VersionFormat,
}

/// A CRC over a range of the image, compared with the one stored in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrcCheck {
    /// The algorithm (the profile's CRC names).
    pub algorithm: CrcAlgorithm,
    /// First byte covered; below zero, from the end.
    pub from: i64,
    /// One past the last byte covered; zero or below, from the end (`0`:
    /// the end of the file).
    pub to: i64,
    /// Where the stored CRC is; below zero, from the end.
    pub at: i64,
    /// Stored most significant byte first.
    pub big_endian: bool,
}

/// A profile's `[image_check]`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ImageCheck {
    /// Magic bytes.
    pub magic: Option<Magic>,
    /// The version field, compared with the event's target.
    pub version: Option<VersionField>,
    /// The CRC over a range.
    pub crc: Option<CrcCheck>,
}

/// Why an image fails its profile's check; [`ImageCheckError::code`] is
/// its IoTDA result.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageCheckError {
    /// The file is too short to hold a declared field.
    #[error("size: the image is {size} bytes, too short for its {field} at bytes {start}..{end}")]
    TooShort {
        /// `magic`, `version`, `crc` or `crc range`.
        field: &'static str,
        /// The field's first byte (resolved).
        start: i128,
        /// One past its last byte.
        end: i128,
        /// The file's size.
        size: u64,
    },
    /// The magic bytes differ.
    #[error("magic: expected {expected} at byte {offset}, found {found}")]
    Magic {
        /// Where (resolved).
        offset: u64,
        /// Hex.
        expected: String,
        /// Hex.
        found: String,
    },
    /// The version field is another version than the event's.
    #[error("version: the image says {found}, the upgrade is for {target}")]
    Version {
        /// What the image says.
        found: String,
        /// The event's version.
        target: String,
    },
    /// The stored CRC is not the CRC of the range.
    #[error("crc: the {algorithm} over bytes {from}..{to} is {computed:#x}, the image stores {stored:#x}")]
    Crc {
        /// The algorithm's profile name.
        algorithm: &'static str,
        /// Range start (resolved).
        from: u64,
        /// Range end.
        to: u64,
        /// What the bytes give.
        computed: u32,
        /// What the image says.
        stored: u32,
    },
    /// Fewer or more bytes were fed than the size given to `new`.
    #[error("size: read {fed} bytes of a {size}-byte image")]
    Fed {
        /// Bytes fed.
        fed: u64,
        /// The size given.
        size: u64,
    },
}

impl ImageCheckError {
    /// The IoTDA result: an image that is not of this kind (no magic, too
    /// short for its own layout) is a package the child cannot take (8);
    /// a wrong version or CRC is an integrity failure (7), as the MCUboot
    /// gate reports them.
    pub fn code(&self) -> ResultCode {
        match self {
            ImageCheckError::TooShort { .. } | ImageCheckError::Magic { .. } => {
                ResultCode::UNKNOWN_TYPE
            }
            ImageCheckError::Version { .. }
            | ImageCheckError::Crc { .. }
            | ImageCheckError::Fed { .. } => ResultCode::CHECK_FAIL,
        }
    }

    /// The check's name; the message starts with it (`size`, `magic`,
    /// `version`, `crc`).
    pub fn check(&self) -> &'static str {
        match self {
            ImageCheckError::TooShort { .. } | ImageCheckError::Fed { .. } => "size",
            ImageCheckError::Magic { .. } => "magic",
            ImageCheckError::Version { .. } => "version",
            ImageCheckError::Crc { .. } => "crc",
        }
    }
}

/// `offset` (below zero: from the end) in a file of `size` bytes.
fn resolve(offset: i64, size: u64) -> i128 {
    if offset < 0 {
        i128::from(size) + i128::from(offset)
    } else {
        i128::from(offset)
    }
}

/// `[start, start + len)` within a file of `size` bytes, or why not.
fn field(
    field: &'static str,
    offset: i64,
    len: usize,
    size: u64,
) -> Result<Range<u64>, ImageCheckError> {
    let start = resolve(offset, size);
    let end = start + len as i128;
    if start < 0 || end > i128::from(size) {
        return Err(ImageCheckError::TooShort {
            field,
            start,
            end,
            size,
        });
    }
    Ok(start as u64..end as u64)
}

/// A running CRC of any of the profile's widths.
enum Running {
    U8(crc::Digest<'static, u8>),
    U16(crc::Digest<'static, u16>),
    U32(crc::Digest<'static, u32>),
}

impl Running {
    fn new(a: CrcAlgorithm) -> Running {
        match a {
            CrcAlgorithm::Crc8 => Running::U8(super::CRC8.digest()),
            CrcAlgorithm::Crc16Modbus => Running::U16(super::CRC16_MODBUS.digest()),
            CrcAlgorithm::Crc16CcittFalse => Running::U16(super::CRC16_CCITT_FALSE.digest()),
            CrcAlgorithm::Crc16Xmodem => Running::U16(super::CRC16_XMODEM.digest()),
            CrcAlgorithm::Crc32 => Running::U32(super::CRC32.digest()),
        }
    }

    fn update(&mut self, b: &[u8]) {
        match self {
            Running::U8(d) => d.update(b),
            Running::U16(d) => d.update(b),
            Running::U32(d) => d.update(b),
        }
    }

    fn finalize(self) -> u32 {
        match self {
            Running::U8(d) => d.finalize().into(),
            Running::U16(d) => d.finalize().into(),
            Running::U32(d) => d.finalize(),
        }
    }
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Running")
    }
}

/// One field being collected from the stream.
#[derive(Debug)]
struct Collect {
    range: Range<u64>,
    bytes: Vec<u8>,
}

impl Collect {
    fn new(range: Range<u64>) -> Collect {
        let len = (range.end - range.start) as usize;
        Collect {
            range,
            bytes: Vec::with_capacity(len),
        }
    }

    fn take(&mut self, at: u64, data: &[u8]) {
        if let Some(r) = overlap(&self.range, at, data.len()) {
            self.bytes.extend_from_slice(&data[r]);
        }
    }
}

/// The part of `data` (which starts at `at`) inside `range`, as indices.
fn overlap(range: &Range<u64>, at: u64, len: usize) -> Option<Range<usize>> {
    let end = at + len as u64;
    let s = range.start.max(at);
    let e = range.end.min(end);
    (s < e).then(|| (s - at) as usize..(e - at) as usize)
}

/// One image going through a profile's check; see the module doc.
#[derive(Debug)]
pub struct ImageChecker<'a> {
    check: &'a ImageCheck,
    size: u64,
    fed: u64,
    magic: Option<Collect>,
    version: Option<Collect>,
    stored: Option<Collect>,
    crc_range: Range<u64>,
    running: Option<Running>,
}

impl<'a> ImageChecker<'a> {
    /// A check of a `size`-byte image; fails at once when the image cannot
    /// hold a declared field.
    pub fn new(check: &'a ImageCheck, size: u64) -> Result<Self, ImageCheckError> {
        let magic = match &check.magic {
            Some(m) => Some(Collect::new(field("magic", m.offset, m.bytes.len(), size)?)),
            None => None,
        };
        let version = match &check.version {
            Some(v) => Some(Collect::new(field(
                "version",
                v.offset,
                v.format.len(),
                size,
            )?)),
            None => None,
        };
        let (stored, crc_range, running) = match &check.crc {
            Some(c) => {
                let stored = field("crc", c.at, c.algorithm.size(), size)?;
                let from = resolve(c.from, size);
                let to = if c.to <= 0 {
                    i128::from(size) + i128::from(c.to)
                } else {
                    i128::from(c.to)
                };
                if from < 0 || to > i128::from(size) || from > to {
                    return Err(ImageCheckError::TooShort {
                        field: "crc range",
                        start: from,
                        end: to,
                        size,
                    });
                }
                (
                    Some(Collect::new(stored)),
                    from as u64..to as u64,
                    Some(Running::new(c.algorithm)),
                )
            }
            None => (None, 0..0, None),
        };
        Ok(ImageChecker {
            check,
            size,
            fed: 0,
            magic,
            version,
            stored,
            crc_range,
            running,
        })
    }

    /// The next bytes of the image, in order.
    pub fn feed(&mut self, data: &[u8]) {
        let at = self.fed;
        for c in [&mut self.magic, &mut self.version, &mut self.stored]
            .into_iter()
            .flatten()
        {
            c.take(at, data);
        }
        if let (Some(r), Some(run)) = (overlap(&self.crc_range, at, data.len()), &mut self.running)
        {
            run.update(&data[r]);
        }
        self.fed = at.saturating_add(data.len() as u64);
    }

    /// The verdict once every byte was fed: the version the image says, if
    /// the profile declares where, or the first check that failed (magic,
    /// then CRC, then version).
    pub fn finish(self, target: &str, policy: Policy) -> Result<Option<String>, ImageCheckError> {
        let found = self.finish_unchecked()?;
        match found {
            Some(found) if !policy.same(target, &found) => Err(ImageCheckError::Version {
                found,
                target: target.to_owned(),
            }),
            found => Ok(found),
        }
    }

    /// As [`finish`](Self::finish) without an upgrade to compare with: the
    /// magic and the CRC are checked, the version is only read (`otabridge
    /// image inspect` without `--target`).
    pub fn finish_unchecked(self) -> Result<Option<String>, ImageCheckError> {
        if self.fed != self.size {
            return Err(ImageCheckError::Fed {
                fed: self.fed,
                size: self.size,
            });
        }
        if let (Some(m), Some(c)) = (&self.check.magic, &self.magic) {
            if m.bytes != c.bytes {
                return Err(ImageCheckError::Magic {
                    offset: c.range.start,
                    expected: crate::hex::spaced(&m.bytes),
                    found: crate::hex::spaced(&c.bytes),
                });
            }
        }
        if let (Some(spec), Some(c), Some(run)) = (&self.check.crc, &self.stored, self.running) {
            let stored = read_uint(&c.bytes, spec.big_endian);
            let computed = run.finalize();
            if stored != computed {
                return Err(ImageCheckError::Crc {
                    algorithm: spec.algorithm.name(),
                    from: self.crc_range.start,
                    to: self.crc_range.end,
                    computed,
                    stored,
                });
            }
        }
        let (Some(spec), Some(c)) = (&self.check.version, &self.version) else {
            return Ok(None);
        };
        let found = match &spec.format {
            VersionFormat::Parts(parts) => {
                let mut at = 0;
                let mut out = Vec::with_capacity(parts.len());
                for t in parts {
                    let n = t.size();
                    out.push(t.read(&c.bytes[at..at + n]).to_string());
                    at += n;
                }
                out.join(".")
            }
            VersionFormat::Text(_) => String::from_utf8_lossy(&c.bytes)
                .trim_end_matches(['\0', ' '])
                .to_owned(),
        };
        Ok(Some(found))
    }
}

/// `bytes` (1, 2 or 4 of them) as an unsigned integer.
fn read_uint(bytes: &[u8], big_endian: bool) -> u32 {
    let fold = |acc: u32, b: &u8| (acc << 8) | u32::from(*b);
    if big_endian {
        bytes.iter().fold(0, fold)
    } else {
        bytes.iter().rev().fold(0, fold)
    }
}

// ---------------------------------------------------------------------------
// The TOML shape and its validation.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawImageCheck {
    magic: Option<Spanned<RawMagic>>,
    version: Option<Spanned<RawVersion>>,
    crc: Option<Spanned<RawCrcCheck>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMagic {
    #[serde(default)]
    offset: i64,
    bytes: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVersion {
    #[serde(default)]
    offset: i64,
    parts: Option<Spanned<Vec<Spanned<String>>>>,
    text: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCrcCheck {
    algorithm: Spanned<String>,
    #[serde(default)]
    from: i64,
    #[serde(default)]
    to: i64,
    at: i64,
    endian: Option<Spanned<String>>,
}

/// Validates `[image_check]`.
// Long on purpose: `[image_check]`'s keys are validated in one pass, in the order docs/framed.md lists them, each error naming its key.
pub(super) fn parse(cx: &Cx<'_>, raw: &Spanned<RawImageCheck>) -> Res<ImageCheck> {
    let bad = |span: &Range<usize>, what: &str| {
        cx.err(span, ProfileErrorKind::ImageCheck(what.to_owned()))
    };
    let r = raw.get_ref();
    let magic = match &r.magic {
        None => None,
        Some(m) => {
            let bytes = cx.hex("image_check.magic.bytes", &m.get_ref().bytes)?;
            if bytes.is_empty() || bytes.len() > 64 {
                return Err(bad(&m.span(), "`magic.bytes` must be 1 to 64 bytes"));
            }
            Some(Magic {
                offset: m.get_ref().offset,
                bytes,
            })
        }
    };
    let version = match &r.version {
        None => None,
        Some(v) => {
            let format = match (&v.get_ref().parts, &v.get_ref().text) {
                (Some(parts), None) => {
                    let list = parts
                        .get_ref()
                        .iter()
                        .map(|p| cx.uint_type("image_check.version.parts", p))
                        .collect::<Res<Vec<_>>>()?;
                    if list.is_empty() || list.len() > 4 {
                        return Err(bad(
                            &parts.span(),
                            "`version.parts` must list 1 to 4 integer types",
                        ));
                    }
                    VersionFormat::Parts(list)
                }
                (None, Some(n)) => {
                    VersionFormat::Text(cx.range("image_check.version.text", n, 1, 64)? as usize)
                }
                _ => {
                    return Err(bad(
                        &v.span(),
                        "`version` needs exactly one of `parts` (integers) and `text` (a length)",
                    ))
                }
            };
            Some(VersionField {
                offset: v.get_ref().offset,
                format,
            })
        }
    };
    let crc = match &r.crc {
        None => None,
        Some(c) => {
            let rc = c.get_ref();
            let algorithm = CrcAlgorithm::from_name(rc.algorithm.get_ref()).ok_or_else(|| {
                cx.err(
                    &rc.algorithm.span(),
                    ProfileErrorKind::UnknownCrc(rc.algorithm.get_ref().clone()),
                )
            })?;
            let big_endian = match rc.endian.as_ref().map(|e| (e.get_ref().as_str(), e.span())) {
                None if algorithm.size() == 1 => false,
                None => {
                    return Err(cx.err(
                        &c.span(),
                        ProfileErrorKind::CrcEndianMissing(algorithm.size()),
                    ))
                }
                Some(("little", _)) => false,
                Some(("big", _)) => true,
                Some((x, span)) => {
                    return Err(cx.err(&span, ProfileErrorKind::UnknownEndian(x.to_owned())))
                }
            };
            Some(CrcCheck {
                algorithm,
                from: rc.from,
                to: rc.to,
                at: rc.at,
                big_endian,
            })
        }
    };
    if magic.is_none() && version.is_none() && crc.is_none() {
        return Err(bad(
            &raw.span(),
            "`[image_check]` needs at least one of `magic`, `version` and `crc`",
        ));
    }
    Ok(ImageCheck {
        magic,
        version,
        crc,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(version: [u8; 4], body: &[u8]) -> Vec<u8> {
        let mut v = b"ACME".to_vec();
        v.extend_from_slice(&version);
        v.extend_from_slice(body);
        let crc = CrcAlgorithm::Crc32.checksum(&v);
        v.extend_from_slice(&crc.to_le_bytes());
        v
    }

    fn check() -> ImageCheck {
        ImageCheck {
            magic: Some(Magic {
                offset: 0,
                bytes: b"ACME".to_vec(),
            }),
            version: Some(VersionField {
                offset: 4,
                format: VersionFormat::Parts(vec![UintType::U8, UintType::U8, UintType::U16Le]),
            }),
            crc: Some(CrcCheck {
                algorithm: CrcAlgorithm::Crc32,
                from: 0,
                to: -4,
                at: -4,
                big_endian: false,
            }),
        }
    }

    fn run(
        c: &ImageCheck,
        img: &[u8],
        piece: usize,
        target: &str,
    ) -> Result<Option<String>, ImageCheckError> {
        let mut k = ImageChecker::new(c, img.len() as u64)?;
        for p in img.chunks(piece.max(1)) {
            k.feed(p);
        }
        k.finish(target, Policy::default())
    }

    #[test]
    fn a_good_image_passes_in_pieces_of_any_size() {
        let img = image([1, 2, 3, 0], &[7u8; 1000]);
        let c = check();
        for piece in [1, 3, 4, 5, 64, 2000] {
            assert_eq!(
                run(&c, &img, piece, "1.2.3").unwrap().as_deref(),
                Some("1.2.3")
            );
        }
    }

    #[test]
    fn each_failure_has_its_code() {
        let c = check();
        let img = image([1, 2, 3, 0], &[7u8; 100]);
        let e = run(&c, &img, 10, "1.2.4").unwrap_err();
        assert_eq!((e.code(), e.check()), (ResultCode::CHECK_FAIL, "version"));
        let mut flipped = img.clone();
        flipped[50] ^= 1;
        let e = run(&c, &flipped, 10, "1.2.3").unwrap_err();
        assert_eq!(
            (e.code(), e.check()),
            (ResultCode::CHECK_FAIL, "crc"),
            "{e}"
        );
        let mut other = img.clone();
        other[0] = b'X';
        let e = run(&c, &other, 10, "1.2.3").unwrap_err();
        assert_eq!(e.code(), ResultCode::UNKNOWN_TYPE);
        assert!(e.to_string().contains("expected 41 43 4d 45"), "{e}");
        let e = run(&c, &img[..6], 10, "1.2.3").unwrap_err();
        assert!(
            matches!(
                e,
                ImageCheckError::TooShort {
                    field: "version",
                    ..
                }
            ),
            "{e}"
        );
        assert_eq!(e.code(), ResultCode::UNKNOWN_TYPE);
        // A version as text, padded.
        let t = ImageCheck {
            version: Some(VersionField {
                offset: -8,
                format: VersionFormat::Text(8),
            }),
            ..ImageCheck::default()
        };
        let mut img = vec![0u8; 20];
        img.extend_from_slice(b"v2.0\0\0\0\0");
        assert_eq!(run(&t, &img, 7, "2.0").unwrap().as_deref(), Some("v2.0"));
        // Fed short.
        let mut k = ImageChecker::new(&t, 30).unwrap();
        k.feed(&img);
        assert!(matches!(
            k.finish("2.0", Policy::default()),
            Err(ImageCheckError::Fed { .. })
        ));
    }

    #[test]
    fn without_a_target_the_version_is_read_and_the_rest_checked() {
        let c = check();
        let img = image([1, 2, 3, 0], &[7u8; 100]);
        let mut k = ImageChecker::new(&c, img.len() as u64).unwrap();
        k.feed(&img);
        assert_eq!(k.finish_unchecked().unwrap().as_deref(), Some("1.2.3"));
        let mut flipped = img.clone();
        flipped[50] ^= 1;
        let mut k = ImageChecker::new(&c, img.len() as u64).unwrap();
        k.feed(&flipped);
        assert_eq!(k.finish_unchecked().unwrap_err().check(), "crc");
    }

    fn with_check(
        section: &str,
    ) -> Result<crate::framed::profile::Profile, crate::framed::profile::ProfileError> {
        let text = format!(
            "{}\n[image_check]\n{section}\n",
            crate::framed::profile::builtin_text("acme-rs485").unwrap()
        );
        crate::framed::profile::Profile::parse(&text, "acme.toml")
    }

    #[test]
    fn the_profile_declares_it_and_mistakes_name_the_line() {
        let p = with_check(
            "magic = { bytes = \"41 43 4D 45\" }\n\
             version = { offset = 4, parts = [\"u8\", \"u8\", \"u16le\"] }\n\
             crc = { algorithm = \"crc32\", to = -4, at = -4, endian = \"little\" }",
        )
        .unwrap();
        assert_eq!(p.image_check, Some(check()));
        assert_eq!(
            crate::framed::profile::builtin("acme-rs485")
                .unwrap()
                .unwrap()
                .image_check,
            None
        );
        let lines = crate::framed::profile::builtin_text("acme-rs485")
            .unwrap()
            .lines()
            .count();
        for (section, want) in [
            ("magic = { bytes = \"\" }", "1 to 64 bytes"),
            ("version = { parts = [\"u8\"], text = 8 }", "exactly one of"),
            ("version = { parts = [\"u24\"] }", "unknown integer type"),
            ("version = { text = 0 }", "out of range"),
            ("crc = { algorithm = \"crc32\", at = -4 }", "endian"),
            ("crc = { algorithm = \"md5\", at = -4 }", "md5"),
            ("magik = { bytes = \"00\" }", "unknown field"),
            ("", "at least one of"),
        ] {
            let e = with_check(section).unwrap_err();
            assert!(e.to_string().contains(want), "{section}: {e}");
            assert!(e.line > lines, "{section}: {e} names the section's line");
        }
    }

    mod props {
        use super::*;
        use proptest::prelude::*;
        use proptest::test_runner::RngSeed;

        fn uint() -> impl Strategy<Value = UintType> {
            prop_oneof![
                Just(UintType::U8),
                Just(UintType::U16Le),
                Just(UintType::U16Be),
                Just(UintType::U32Le),
                Just(UintType::U32Be),
            ]
        }

        fn algorithm() -> impl Strategy<Value = CrcAlgorithm> {
            prop_oneof![
                Just(CrcAlgorithm::Crc8),
                Just(CrcAlgorithm::Crc16Modbus),
                Just(CrcAlgorithm::Crc16CcittFalse),
                Just(CrcAlgorithm::Crc16Xmodem),
                Just(CrcAlgorithm::Crc32),
            ]
        }

        /// A check and an image made to pass it: magic first, then the
        /// version parts, a body, the CRC over everything before it last.
        fn good() -> impl Strategy<Value = (ImageCheck, Vec<u8>, String)> {
            (
                prop::collection::vec(any::<u8>(), 1..8),
                prop::collection::vec((uint(), any::<u32>()), 1..4),
                prop::collection::vec(any::<u8>(), 0..3000),
                algorithm(),
                any::<bool>(),
            )
                .prop_map(|(magic, parts, body, algorithm, big_endian)| {
                    let mut img = magic.clone();
                    let mut words = Vec::new();
                    for (t, v) in &parts {
                        let v = v & t.max();
                        t.write(v, &mut img);
                        words.push(v.to_string());
                    }
                    img.extend_from_slice(&body);
                    let crc = algorithm.checksum(&img);
                    let n = algorithm.size();
                    let bytes = if big_endian {
                        crc.to_be_bytes()[4 - n..].to_vec()
                    } else {
                        crc.to_le_bytes()[..n].to_vec()
                    };
                    img.extend_from_slice(&bytes);
                    let check = ImageCheck {
                        magic: Some(Magic {
                            offset: 0,
                            bytes: magic.clone(),
                        }),
                        version: Some(VersionField {
                            offset: magic.len() as i64,
                            format: VersionFormat::Parts(parts.iter().map(|p| p.0).collect()),
                        }),
                        crc: Some(CrcCheck {
                            algorithm,
                            from: 0,
                            to: -(n as i64),
                            at: -(n as i64),
                            big_endian,
                        }),
                    };
                    (check, img, words.join("."))
                })
        }

        proptest! {
            #![proptest_config(ProptestConfig {
                cases: 256,
                rng_seed: RngSeed::Fixed(0x696d_6763),
                ..ProptestConfig::default()
            })]

            #[test]
            fn a_made_image_always_passes_in_any_pieces(
                (check, img, version) in good(),
                piece in 1usize..700,
            ) {
                let found = run(&check, &img, piece, &version);
                prop_assert_eq!(found, Ok(Some(version)));
            }

            #[test]
            fn any_offsets_and_bytes_never_panic(
                magic_at in -40i64..40,
                version_at in -40i64..40,
                text in 1usize..20,
                (from, to, at) in (-40i64..40, -40i64..40, -40i64..40),
                algorithm in algorithm(),
                img in prop::collection::vec(any::<u8>(), 0..80),
                piece in 1usize..90,
            ) {
                let check = ImageCheck {
                    magic: Some(Magic { offset: magic_at, bytes: vec![0x55; 3] }),
                    version: Some(VersionField { offset: version_at, format: VersionFormat::Text(text) }),
                    crc: Some(CrcCheck { algorithm, from, to, at, big_endian: true }),
                };
                let r = run(&check, &img, piece, "1.0");
                if let Err(e) = r {
                    prop_assert!(!e.to_string().is_empty());
                }
            }
        }
    }
}
