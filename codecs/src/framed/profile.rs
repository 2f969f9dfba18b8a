//! The profile format: a TOML description of a manufacturer's serial
//! protocol, parsed and validated into a [`Profile`].
//!
//! The format reference, with every key, is `codecs/profiles/README.md`.
//! [`Profile::parse`] takes the text and its file name (reading the file is
//! the caller's business) and answers with a [`ProfileError`] that names the
//! file, the line and exactly what is wrong.

use std::collections::HashMap;
use std::ops::Range;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::iotda::ResultCode;

// `[image_check]`: a vendor image's declared check (issue 14).
#[path = "profile_image.rs"]
pub mod image_check;

/// The profiles shipped in `codecs/profiles/`, by name.
pub const BUILTIN: &[(&str, &str)] = &[
    ("acme-rs485", include_str!("../../profiles/acme-rs485.toml")),
    (
        "nordlys-uart",
        include_str!("../../profiles/nordlys-uart.toml"),
    ),
];

/// The text of the built-in profile `name`, if there is one.
pub fn builtin_text(name: &str) -> Option<&'static str> {
    BUILTIN.iter().find(|(n, _)| *n == name).map(|(_, t)| *t)
}

/// The built-in profile `name`, parsed; `None` if there is no such profile.
pub fn builtin(name: &str) -> Option<Result<Profile, ProfileError>> {
    builtin_text(name).map(|text| Profile::parse(text, &format!("codecs/profiles/{name}.toml")))
}

/// An unsigned integer on the wire: its width and byte order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UintType {
    /// One byte.
    U8,
    /// Two bytes, least significant first.
    U16Le,
    /// Two bytes, most significant first.
    U16Be,
    /// Four bytes, least significant first.
    U32Le,
    /// Four bytes, most significant first.
    U32Be,
}

impl UintType {
    /// The profile spelling of each type.
    pub const NAMES: &'static [&'static str] = &["u8", "u16le", "u16be", "u32le", "u32be"];

    /// The type spelled `name` in a profile.
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "u8" => UintType::U8,
            "u16le" => UintType::U16Le,
            "u16be" => UintType::U16Be,
            "u32le" => UintType::U32Le,
            "u32be" => UintType::U32Be,
            _ => return None,
        })
    }

    /// Bytes on the wire.
    pub fn size(self) -> usize {
        match self {
            UintType::U8 => 1,
            UintType::U16Le | UintType::U16Be => 2,
            UintType::U32Le | UintType::U32Be => 4,
        }
    }

    /// The largest value it carries.
    pub fn max(self) -> u32 {
        match self.size() {
            1 => u8::MAX.into(),
            2 => u16::MAX.into(),
            _ => u32::MAX,
        }
    }

    /// Reads the value from the first [`size`](Self::size) bytes of `b`
    /// (the caller checked the length).
    pub fn read(self, b: &[u8]) -> u32 {
        match self {
            UintType::U8 => b[0].into(),
            UintType::U16Le => u16::from_le_bytes([b[0], b[1]]).into(),
            UintType::U16Be => u16::from_be_bytes([b[0], b[1]]).into(),
            UintType::U32Le => u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            UintType::U32Be => u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
        }
    }

    /// Appends `v` (the caller checked `v <= max()`; higher bits are cut).
    pub fn write(self, v: u32, out: &mut Vec<u8>) {
        match self {
            UintType::U8 => out.push(v as u8),
            UintType::U16Le => out.extend_from_slice(&(v as u16).to_le_bytes()),
            UintType::U16Be => out.extend_from_slice(&(v as u16).to_be_bytes()),
            UintType::U32Le => out.extend_from_slice(&v.to_le_bytes()),
            UintType::U32Be => out.extend_from_slice(&v.to_be_bytes()),
        }
    }
}

/// A part of a frame, in the order the profile's `header` puts them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Part {
    /// The sync bytes that open every frame.
    Sync,
    /// The command byte.
    Command,
    /// The optional sequence byte.
    Seq,
    /// The length field.
    Length,
    /// The payload (the message's fields).
    Payload,
    /// The CRC, last in the frame.
    Crc,
}

impl Part {
    fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "sync" => Part::Sync,
            "command" => Part::Command,
            "seq" => Part::Seq,
            "length" => Part::Length,
            "payload" => Part::Payload,
            "crc" => Part::Crc,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Part::Sync => "sync",
            Part::Command => "command",
            Part::Seq => "seq",
            Part::Length => "length",
            Part::Payload => "payload",
            Part::Crc => "crc",
        }
    }
}

/// A CRC algorithm from the reveng CRC catalogue, as the `crc` crate names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CrcAlgorithm {
    /// CRC-8/SMBUS: poly 0x07, init 0, check 0xF4.
    Crc8,
    /// CRC-16/MODBUS: poly 0x8005 reflected, init 0xFFFF, check 0x4B37.
    Crc16Modbus,
    /// CRC-16/CCITT-FALSE (catalogue name CRC-16/IBM-3740): poly 0x1021,
    /// init 0xFFFF, check 0x29B1.
    Crc16CcittFalse,
    /// CRC-16/XMODEM: poly 0x1021, init 0, check 0x31C3.
    Crc16Xmodem,
    /// CRC-32/ISO-HDLC (zlib, PNG): check 0xCBF43926.
    Crc32,
}

static CRC8: crc::Crc<u8> = crc::Crc::<u8>::new(&crc::CRC_8_SMBUS);
static CRC16_MODBUS: crc::Crc<u16> = crc::Crc::<u16>::new(&crc::CRC_16_MODBUS);
static CRC16_CCITT_FALSE: crc::Crc<u16> = crc::Crc::<u16>::new(&crc::CRC_16_IBM_3740);
static CRC16_XMODEM: crc::Crc<u16> = crc::Crc::<u16>::new(&crc::CRC_16_XMODEM);
static CRC32: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);

impl CrcAlgorithm {
    /// The profile spelling of each algorithm (besides `none`).
    pub const NAMES: &'static [&'static str] = &[
        "crc8",
        "crc16-modbus",
        "crc16-ccitt-false",
        "crc16-xmodem",
        "crc32",
    ];

    /// The profile spelling of this algorithm.
    pub fn name(self) -> &'static str {
        match self {
            CrcAlgorithm::Crc8 => "crc8",
            CrcAlgorithm::Crc16Modbus => "crc16-modbus",
            CrcAlgorithm::Crc16CcittFalse => "crc16-ccitt-false",
            CrcAlgorithm::Crc16Xmodem => "crc16-xmodem",
            CrcAlgorithm::Crc32 => "crc32",
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "crc8" => CrcAlgorithm::Crc8,
            "crc16-modbus" => CrcAlgorithm::Crc16Modbus,
            "crc16-ccitt-false" => CrcAlgorithm::Crc16CcittFalse,
            "crc16-xmodem" => CrcAlgorithm::Crc16Xmodem,
            "crc32" => CrcAlgorithm::Crc32,
            _ => return None,
        })
    }

    /// Bytes on the wire.
    pub fn size(self) -> usize {
        match self {
            CrcAlgorithm::Crc8 => 1,
            CrcAlgorithm::Crc32 => 4,
            _ => 2,
        }
    }

    /// The checksum of `bytes`.
    pub fn checksum(self, bytes: &[u8]) -> u32 {
        match self {
            CrcAlgorithm::Crc8 => CRC8.checksum(bytes).into(),
            CrcAlgorithm::Crc16Modbus => CRC16_MODBUS.checksum(bytes).into(),
            CrcAlgorithm::Crc16CcittFalse => CRC16_CCITT_FALSE.checksum(bytes).into(),
            CrcAlgorithm::Crc16Xmodem => CRC16_XMODEM.checksum(bytes).into(),
            CrcAlgorithm::Crc32 => CRC32.checksum(bytes),
        }
    }
}

/// The frame check: which algorithm, over which parts, in which byte order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrcSpec {
    /// The algorithm.
    pub algorithm: CrcAlgorithm,
    /// Most significant byte first on the wire.
    pub big_endian: bool,
    /// The first part the CRC covers.
    pub first: Part,
    /// The last part the CRC covers (inclusive; never [`Part::Crc`]).
    pub last: Part,
}

impl CrcSpec {
    /// The CRC as a wire integer type.
    pub fn wire_type(&self) -> UintType {
        match (self.algorithm.size(), self.big_endian) {
            (1, _) => UintType::U8,
            (2, false) => UintType::U16Le,
            (2, true) => UintType::U16Be,
            (_, false) => UintType::U32Le,
            (_, true) => UintType::U32Be,
        }
    }
}

/// How frames look on the wire: `sync`, the header parts in profile order,
/// the payload, then the CRC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Framing {
    /// The bytes that open every frame.
    pub sync: Vec<u8>,
    /// The header parts between sync and payload, in wire order: always
    /// [`Part::Command`] and [`Part::Length`], maybe [`Part::Seq`].
    pub header: Vec<Part>,
    /// The length field's type.
    pub length: UintType,
    /// The length field carries the payload size plus this many bytes (the
    /// other parts its `covers` lists).
    pub length_adds: u32,
    /// The frame check, `None` for a protocol without one.
    pub crc: Option<CrcSpec>,
    /// The largest payload any message of the profile can have; the decoder
    /// discards frames announcing more.
    pub max_payload: usize,
}

impl Framing {
    /// Bytes of the header parts together.
    pub fn header_len(&self) -> usize {
        self.header.iter().map(|p| self.part_len(*p, 0)).sum()
    }

    /// Bytes of the CRC (0 without one).
    pub fn crc_len(&self) -> usize {
        self.crc.as_ref().map_or(0, |c| c.algorithm.size())
    }

    /// Whether frames carry a sequence byte.
    pub fn has_seq(&self) -> bool {
        self.header.contains(&Part::Seq)
    }

    /// Bytes of a frame with a `payload_len`-byte payload.
    pub fn frame_len(&self, payload_len: usize) -> usize {
        self.sync.len() + self.header_len() + payload_len + self.crc_len()
    }

    /// The largest frame the profile allows.
    pub fn max_frame_len(&self) -> usize {
        self.frame_len(self.max_payload)
    }

    fn part_len(&self, part: Part, payload_len: usize) -> usize {
        match part {
            Part::Sync => self.sync.len(),
            Part::Command | Part::Seq => 1,
            Part::Length => self.length.size(),
            Part::Payload => payload_len,
            Part::Crc => self.crc_len(),
        }
    }

    /// Where `part` sits in a frame with a `payload_len`-byte payload.
    pub fn part_range(&self, part: Part, payload_len: usize) -> Range<usize> {
        let mut at = 0;
        let order = std::iter::once(Part::Sync)
            .chain(self.header.iter().copied())
            .chain([Part::Payload, Part::Crc]);
        for p in order {
            let len = self.part_len(p, payload_len);
            if p == part {
                return at..at + len;
            }
            at += len;
        }
        at..at
    }

    /// The bytes the CRC covers, in a frame with a `payload_len`-byte payload.
    pub fn crc_range(&self, payload_len: usize) -> Range<usize> {
        match &self.crc {
            None => 0..0,
            Some(c) => {
                self.part_range(c.first, payload_len).start
                    ..self.part_range(c.last, payload_len).end
            }
        }
    }
}

/// The six messages of an upgrade.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MessageKind {
    /// "Which version do you run?"
    VersionQuery,
    /// Begin an update: size, digest, target version.
    Begin,
    /// "Where are you?": the offset to resume from.
    OffsetQuery,
    /// Write a chunk at an offset.
    Chunk,
    /// Finish and verify the received image.
    Verify,
    /// Activate (install and reboot into) the new image.
    Activate,
}

impl MessageKind {
    /// All kinds, in upgrade order.
    pub const ALL: [MessageKind; 6] = [
        MessageKind::VersionQuery,
        MessageKind::Begin,
        MessageKind::OffsetQuery,
        MessageKind::Chunk,
        MessageKind::Verify,
        MessageKind::Activate,
    ];

    /// The profile's table name, `messages.<name>`.
    pub fn name(self) -> &'static str {
        match self {
            MessageKind::VersionQuery => "version_query",
            MessageKind::Begin => "begin",
            MessageKind::OffsetQuery => "offset_query",
            MessageKind::Chunk => "chunk",
            MessageKind::Verify => "verify",
            MessageKind::Activate => "activate",
        }
    }

    fn index(self) -> usize {
        self as usize
    }

    /// Field names a message may carry: (request allowed, request required,
    /// reply allowed, reply required).
    fn vocabulary(self) -> [&'static [FieldName]; 4] {
        use FieldName as F;
        match self {
            MessageKind::VersionQuery => [&[], &[], &[F::Status, F::Version], &[F::Version]],
            MessageKind::Begin => [
                &[F::Size, F::Crc32, F::Sha256, F::Version, F::ChunkSize],
                &[F::Size],
                &[F::Status],
                &[F::Status],
            ],
            MessageKind::OffsetQuery => [
                &[F::Size, F::Crc32, F::Sha256, F::Version],
                &[],
                &[F::Status, F::Offset],
                &[F::Offset],
            ],
            MessageKind::Chunk => [
                &[F::Offset, F::Data],
                &[F::Offset, F::Data],
                &[F::Status, F::Offset],
                &[F::Status],
            ],
            MessageKind::Verify => [
                &[F::Size, F::Crc32, F::Sha256],
                &[],
                &[F::Status],
                &[F::Status],
            ],
            MessageKind::Activate => [&[F::Version], &[], &[F::Status], &[F::Status]],
        }
    }
}

impl std::fmt::Display for MessageKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What a payload field means to the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FieldName {
    /// The reply's status value, looked up in the profile's `[[status]]`.
    Status,
    /// A firmware version string.
    Version,
    /// The image size in bytes.
    Size,
    /// The image's CRC-32/ISO-HDLC.
    Crc32,
    /// The image's SHA-256 (32 bytes).
    Sha256,
    /// A byte offset into the image.
    Offset,
    /// Chunk data.
    Data,
    /// The chunk size the gateway uses (the profile's `max_chunk`).
    ChunkSize,
    /// A fixed value (`type = "const"`), checked on replies.
    Const,
    /// A field whose name starts with `_`: zero on requests, skipped on
    /// replies.
    Ignored,
}

impl FieldName {
    fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "status" => FieldName::Status,
            "version" => FieldName::Version,
            "size" => FieldName::Size,
            "crc32" => FieldName::Crc32,
            "sha256" => FieldName::Sha256,
            "offset" => FieldName::Offset,
            "data" => FieldName::Data,
            "chunk_size" => FieldName::ChunkSize,
            _ if name.starts_with('_') => FieldName::Ignored,
            _ => return None,
        })
    }

    /// The profile spelling.
    pub fn name(self) -> &'static str {
        match self {
            FieldName::Status => "status",
            FieldName::Version => "version",
            FieldName::Size => "size",
            FieldName::Crc32 => "crc32",
            FieldName::Sha256 => "sha256",
            FieldName::Offset => "offset",
            FieldName::Data => "data",
            FieldName::ChunkSize => "chunk_size",
            FieldName::Const => "const",
            FieldName::Ignored => "_",
        }
    }
}

/// How a byte-string field knows its length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BytesLen {
    /// A length prefix of this type precedes the bytes.
    Prefix(UintType),
    /// Exactly this many bytes; shorter values are padded with zeros and
    /// trailing zeros are trimmed from versions on receipt.
    Fixed(usize),
    /// The rest of the payload (only as the last field).
    Rest,
}

/// A field's wire type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldType {
    /// An unsigned integer.
    Uint(UintType),
    /// A byte string.
    Bytes(BytesLen),
    /// Fixed bytes, sent as given and checked on receipt.
    Const(Vec<u8>),
}

/// One payload field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    /// What it means.
    pub name: FieldName,
    /// Its name in the profile (for messages).
    pub label: String,
    /// Its wire type.
    pub ty: FieldType,
}

/// Longest version string a `version` field carries.
pub const MAX_VERSION_LEN: usize = 64;
/// Longest byte string of an ignored (`_`) field.
const MAX_OTHER_BYTES: usize = 255;

impl Field {
    /// The most bytes this field can take on the wire, given the chunk size.
    fn max_size(&self, max_chunk: usize) -> usize {
        match &self.ty {
            FieldType::Uint(t) => t.size(),
            FieldType::Const(v) => v.len(),
            FieldType::Bytes(BytesLen::Fixed(n)) => *n,
            FieldType::Bytes(len) => {
                let cap = match self.name {
                    FieldName::Data => max_chunk,
                    FieldName::Version => MAX_VERSION_LEN,
                    _ => MAX_OTHER_BYTES,
                };
                match len {
                    BytesLen::Prefix(t) => t.size() + cap.min(t.max() as usize),
                    _ => cap,
                }
            }
        }
    }
}

/// The reply a message expects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The reply's command byte.
    pub command: u8,
    /// Its payload fields.
    pub fields: Vec<Field>,
}

/// One message of the profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Which step of the upgrade it is.
    pub kind: MessageKind,
    /// The request's command byte.
    pub command: u8,
    /// The request's payload fields.
    pub request: Vec<Field>,
    /// The reply, `None` for an activate the child answers by rebooting.
    pub reply: Option<Reply>,
    /// How long to wait for the reply before sending again.
    pub timeout: Duration,
    /// How many times to send again after the first attempt.
    pub retries: u32,
}

impl Message {
    /// Whether the request carries a field meaning `name`.
    pub fn request_has(&self, name: FieldName) -> bool {
        self.request.iter().any(|f| f.name == name)
    }
}

/// What a reply's status value tells the gateway to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusAction {
    /// The request succeeded.
    Ok,
    /// The child is busy: send the same request again after a backoff; when
    /// the retries run out, fail with this IoTDA result code.
    Retry {
        /// IoTDA result code if the child stays busy.
        result_code: ResultCode,
    },
    /// The child's offset differs from ours: ask for its offset and go on
    /// from there.
    Resync,
    /// The child lost the update session: begin again, then resume from the
    /// offset it reports.
    Restart,
    /// The upgrade failed with this IoTDA result code.
    Fail {
        /// IoTDA result code.
        result_code: ResultCode,
    },
}

/// One `[[status]]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusRule {
    /// The status value on the wire.
    pub value: u32,
    /// What it means.
    pub action: StatusAction,
    /// The failure description reported to IoTDA, if the profile gives one.
    pub description: Option<String>,
}

/// Caps and backoff for recovering from busy replies, resyncs and restarts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// First wait after a "retry" status; doubles on each further one.
    pub busy_backoff: Duration,
    /// The wait never exceeds this.
    pub max_backoff: Duration,
    /// Resyncs and restarts allowed without progress in between.
    pub max_recoveries: u32,
}

/// What happens around activation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Activation {
    /// Wait after activate (its reply, or its sending if it has none)
    /// before asking the child its version.
    pub settle: Duration,
    /// Keep asking for the version until this long after activation.
    pub reboot_timeout: Duration,
}

/// A validated profile: everything the engine and the simulator need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    /// The protocol's name (`[protocol] name`).
    pub name: String,
    /// Free text.
    pub description: String,
    /// Frame layout.
    pub framing: Framing,
    messages: Vec<Option<Message>>,
    /// The chunk data size the gateway sends (at most; the last is shorter).
    pub max_chunk: usize,
    /// Status values and their meaning.
    pub statuses: Vec<StatusRule>,
    /// Recovery caps.
    pub recovery: Recovery,
    /// Activation timing.
    pub activation: Activation,
    /// What a package must look like before a byte of it is sent
    /// (`[image_check]`), when the profile declares it.
    pub image_check: Option<image_check::ImageCheck>,
}

/// Whether `name` can name a profile: 1 to 64 of `a-z`, `0-9` and `-`
/// (it becomes a file name and the `framed:<name>` protocol).
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

impl Profile {
    /// The message for `kind`; `None` only for an absent `offset_query`.
    pub fn message(&self, kind: MessageKind) -> Option<&Message> {
        self.messages.get(kind.index()).and_then(Option::as_ref)
    }

    /// The message whose request command is `command`.
    pub fn message_by_request(&self, command: u8) -> Option<&Message> {
        self.messages
            .iter()
            .flatten()
            .find(|m| m.command == command)
    }

    /// The rule for a status value, if the profile lists it.
    pub fn status(&self, value: u32) -> Option<&StatusRule> {
        self.statuses.iter().find(|s| s.value == value)
    }

    /// The first status value with this action (the simulator uses it to
    /// answer; `Fail`/`Retry` compare result codes too).
    pub fn status_for(&self, action: StatusAction) -> Option<u32> {
        self.statuses
            .iter()
            .find(|s| s.action == action)
            .map(|s| s.value)
    }

    /// The first status value that fails with `code`.
    pub fn status_failing_with(&self, code: ResultCode) -> Option<u32> {
        self.status_for(StatusAction::Fail { result_code: code })
    }

    /// The first status value meaning "retry" (busy).
    pub fn status_busy(&self) -> Option<u32> {
        self.statuses
            .iter()
            .find(|s| matches!(s.action, StatusAction::Retry { .. }))
            .map(|s| s.value)
    }

    /// The built-in profile `name` (see [`BUILTIN`]).
    pub fn builtin(name: &str) -> Option<Result<Profile, ProfileError>> {
        builtin(name)
    }
}

/// A profile that is not valid: the file, the line and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}: {kind}")]
pub struct ProfileError {
    /// The file name given to [`Profile::parse`].
    pub file: String,
    /// 1-based line of the mistake.
    pub line: usize,
    /// What is wrong.
    pub kind: ProfileErrorKind,
}

/// What is wrong with a profile.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProfileErrorKind {
    /// The text is not well-formed TOML.
    #[error("TOML syntax: {0}")]
    Syntax(String),
    /// A key the format does not have (often a typo).
    #[error("unknown key: {0}")]
    UnknownKey(String),
    /// A required key is missing.
    #[error("missing key: {0}")]
    MissingKey(String),
    /// A key has a value of the wrong TOML type.
    #[error("wrong type: {0}")]
    WrongType(String),
    /// `[image_check]` is not well-formed.
    #[error("image_check: {0}")]
    ImageCheck(String),
    /// A number outside its allowed range.
    #[error("`{key}` = {value} is out of range {min}..={max}")]
    OutOfRange {
        /// The key.
        key: String,
        /// The value given.
        value: i64,
        /// Smallest allowed.
        min: i64,
        /// Largest allowed.
        max: i64,
    },
    /// The protocol name is not lower-case letters, digits and dashes.
    #[error("protocol name `{0}` must be 1 to 64 of a-z, 0-9 and '-'")]
    BadName(String),
    /// A hex string that does not parse.
    #[error("`{key}` is not hex: {reason}")]
    BadHex {
        /// The key.
        key: String,
        /// Why.
        reason: String,
    },
    /// `sync` is empty or longer than 8 bytes.
    #[error("`framing.sync` must be 1 to 8 bytes, got {0}")]
    SyncLength(usize),
    /// An integer type name that is not one of u8, u16le, u16be, u32le, u32be.
    #[error(
        "`{key}`: unknown integer type `{name}` (expected one of u8, u16le, u16be, u32le, u32be)"
    )]
    UnknownUintType {
        /// The key.
        key: String,
        /// The name given.
        name: String,
    },
    /// A frame part name that is not sync, command, seq, length, payload, crc.
    #[error("`{key}`: unknown frame part `{name}` (expected sync, command, seq, length, payload or crc)")]
    UnknownPart {
        /// The key.
        key: String,
        /// The name given.
        name: String,
    },
    /// `framing.header` lacks `command` or `length`.
    #[error("`framing.header` must contain `{0}`")]
    HeaderMissing(&'static str),
    /// `framing.header` lists a part that cannot be in the header.
    #[error("`framing.header` may list only command, seq and length, not `{0}`")]
    HeaderPart(String),
    /// An item listed twice.
    #[error("`{key}` lists `{item}` twice")]
    Repeated {
        /// The key.
        key: String,
        /// The repeated item.
        item: String,
    },
    /// A coverage list names a part the frame does not have.
    #[error("`{key}` covers `{part}`, which this frame does not have")]
    NotInFrame {
        /// The key.
        key: String,
        /// The part.
        part: String,
    },
    /// `framing.length.covers` does not include the payload.
    #[error("`framing.length.covers` must include `payload`")]
    LengthWithoutPayload,
    /// The CRC coverage is not one contiguous run of parts before the CRC.
    #[error("`framing.crc.covers` {0}")]
    CrcCoverage(&'static str),
    /// An algorithm name that is not in the supported catalogue.
    #[error("unknown CRC algorithm `{0}` (expected none, crc8, crc16-modbus, crc16-ccitt-false, crc16-xmodem or crc32)")]
    UnknownCrc(String),
    /// A CRC wider than one byte without `endian`.
    #[error("`framing.crc.endian` is required for a {0}-byte CRC")]
    CrcEndianMissing(usize),
    /// An endianness that is not `little` or `big`.
    #[error("unknown endian `{0}` (expected little or big)")]
    UnknownEndian(String),
    /// `covers` or `endian` given with `algorithm = "none"`.
    #[error("`framing.crc.{0}` makes no sense with algorithm = \"none\"")]
    CrcKeyWithoutCrc(&'static str),
    /// A required message table is missing.
    #[error("missing message `[messages.{0}]`")]
    MissingMessage(&'static str),
    /// A message other than activate without a reply.
    #[error("`messages.{0}` needs `reply_command` (only activate may go unanswered)")]
    MissingReply(&'static str),
    /// Reply fields without a reply command.
    #[error("`messages.{0}.reply` is given but `reply_command` is not")]
    ReplyWithoutCommand(&'static str),
    /// Two requests (or two replies) share a command byte.
    #[error("command 0x{command:02x} of `{second}` is already used by `{first}`")]
    DuplicateCommand {
        /// The byte.
        command: u8,
        /// The message that has it first.
        first: String,
        /// The message that repeats it.
        second: String,
    },
    /// A key that belongs to another message kind.
    #[error("`{key}` is only allowed in `[messages.{allowed_in}]`")]
    KeyNotAllowed {
        /// The key.
        key: &'static str,
        /// The message it belongs to.
        allowed_in: &'static str,
    },
    /// A field type that is not a known one.
    #[error("unknown field type `{0}` (expected u8, u16le, u16be, u32le, u32be, bytes or const)")]
    UnknownFieldType(String),
    /// A field name the message does not know.
    #[error("`{message}.{direction}` cannot carry a field named `{name}` (allowed: {allowed}; prefix other fields with `_`)")]
    UnknownFieldName {
        /// The message.
        message: &'static str,
        /// `request` or `reply`.
        direction: &'static str,
        /// The name given.
        name: String,
        /// The names it may carry.
        allowed: String,
    },
    /// A field the message must carry is missing.
    #[error("`{message}.{direction}` must have a field named `{name}`")]
    MissingField {
        /// The message.
        message: &'static str,
        /// `request` or `reply`.
        direction: &'static str,
        /// The missing name.
        name: &'static str,
    },
    /// A field without a name that is not a const.
    #[error("field of type `{0}` needs a `name`")]
    FieldWithoutName(String),
    /// A field whose type does not fit its meaning.
    #[error("field `{name}` must be {expected}")]
    FieldTypeMismatch {
        /// The field.
        name: String,
        /// What it must be.
        expected: &'static str,
    },
    /// A key that only applies to another field type.
    #[error("`{key}` applies only to fields of type `{applies_to}`")]
    FieldKeyNotAllowed {
        /// The key.
        key: &'static str,
        /// The type it applies to.
        applies_to: &'static str,
    },
    /// A bytes field with both `prefix` and `len`.
    #[error("bytes field `{0}` has both `prefix` and `len`; give one (or neither for the rest of the payload)")]
    PrefixAndLen(String),
    /// A rest-of-payload bytes field that is not last.
    #[error("bytes field `{0}` has neither `prefix` nor `len`, so it takes the rest of the payload and must be the last field")]
    RestNotLast(String),
    /// A const field without exactly one of `hex` and `text`.
    #[error("const field needs exactly one of `hex` and `text`")]
    ConstValue,
    /// A message's largest payload does not fit the length field.
    #[error("`messages.{message}.{direction}` can take {size} bytes but the length field carries at most {limit}")]
    PayloadTooLarge {
        /// The message.
        message: &'static str,
        /// `request` or `reply`.
        direction: &'static str,
        /// Its largest payload (with the other covered parts).
        size: u64,
        /// What the length field carries.
        limit: u32,
    },
    /// `data` has a length prefix too narrow for `max_chunk`.
    #[error("`max_chunk` = {max_chunk} does not fit the `data` length prefix (at most {limit})")]
    ChunkTooLargeForPrefix {
        /// The chunk size.
        max_chunk: usize,
        /// The prefix's maximum.
        limit: u32,
    },
    /// A `chunk_size` field too narrow for `max_chunk`.
    #[error("`max_chunk` = {max_chunk} does not fit the `chunk_size` field (at most {limit})")]
    ChunkSizeFieldTooNarrow {
        /// The chunk size.
        max_chunk: usize,
        /// The field's maximum.
        limit: u32,
    },
    /// Neither begin nor verify carries crc32 or sha256.
    #[error("neither `begin.request` nor `verify.request` carries `crc32` or `sha256`: the image could not be verified")]
    NoIntegrity,
    /// Two status entries with the same value.
    #[error("status value {0} is listed twice")]
    DuplicateStatus(u32),
    /// A status `means` that is not ok, retry, resync, restart or fail.
    #[error("unknown status meaning `{0}` (expected ok, retry, resync, restart or fail)")]
    UnknownMeaning(String),
    /// A result code IoTDA does not accept.
    #[error("result_code {0} is not an IoTDA result code (1 to 10 or 255)")]
    BadResultCode(i64),
    /// `result_code` on a status that cannot carry one.
    #[error("`result_code` is only allowed with means = \"fail\" or \"retry\", not \"{0}\"")]
    ResultCodeNotAllowed(String),
    /// A failing status without a result code.
    #[error("a status with means = \"fail\" needs `result_code`")]
    MissingResultCode,
    /// No status means "ok".
    #[error("no `[[status]]` has means = \"ok\"")]
    NoOkStatus,
    /// A status value wider than a reply's status field.
    #[error("status value {value} does not fit the `{message}` reply's status field ({ty})")]
    StatusTooWide {
        /// The value.
        value: u32,
        /// The message whose reply field is narrower.
        message: &'static str,
        /// That field's type.
        ty: &'static str,
    },
}

// ---------------------------------------------------------------------------
// Raw TOML shapes. Every value keeps its span so errors can name the line.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProfile {
    protocol: Spanned<RawProtocol>,
    framing: Spanned<RawFraming>,
    messages: RawMessages,
    #[serde(default)]
    status: Vec<Spanned<RawStatus>>,
    recovery: Option<RawRecovery>,
    image_check: Option<Spanned<image_check::RawImageCheck>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProtocol {
    name: Spanned<String>,
    #[serde(default)]
    description: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFraming {
    sync: Spanned<String>,
    header: Spanned<Vec<Spanned<String>>>,
    length: Spanned<RawLength>,
    crc: Spanned<RawCrc>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLength {
    #[serde(rename = "type")]
    ty: Spanned<String>,
    covers: Spanned<Vec<Spanned<String>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCrc {
    algorithm: Spanned<String>,
    covers: Option<Spanned<Vec<Spanned<String>>>>,
    endian: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMessages {
    version_query: Option<Spanned<RawMessage>>,
    begin: Option<Spanned<RawMessage>>,
    offset_query: Option<Spanned<RawMessage>>,
    chunk: Option<Spanned<RawMessage>>,
    verify: Option<Spanned<RawMessage>>,
    activate: Option<Spanned<RawMessage>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMessage {
    command: Spanned<i64>,
    request: Option<Spanned<Vec<Spanned<RawField>>>>,
    reply_command: Option<Spanned<i64>>,
    reply: Option<Spanned<Vec<Spanned<RawField>>>>,
    timeout_ms: Option<Spanned<i64>>,
    retries: Option<Spanned<i64>>,
    max_chunk: Option<Spanned<i64>>,
    settle_ms: Option<Spanned<i64>>,
    reboot_timeout_ms: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawField {
    name: Option<Spanned<String>>,
    #[serde(rename = "type")]
    ty: Spanned<String>,
    prefix: Option<Spanned<String>>,
    len: Option<Spanned<i64>>,
    hex: Option<Spanned<String>>,
    text: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStatus {
    value: Spanned<i64>,
    means: Spanned<String>,
    result_code: Option<Spanned<i64>>,
    description: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRecovery {
    busy_backoff_ms: Option<Spanned<i64>>,
    max_backoff_ms: Option<Spanned<i64>>,
    max_recoveries: Option<Spanned<i64>>,
}

/// Default per-message reply timeout.
const DEFAULT_TIMEOUT_MS: i64 = 1000;
/// Default retries per message.
const DEFAULT_RETRIES: i64 = 3;
/// Longest allowed timeout or wait: one hour.
const MAX_WAIT_MS: i64 = 3_600_000;

/// The validation context: the text (for line numbers) and the file name.
struct Cx<'a> {
    text: &'a str,
    file: &'a str,
}

type Res<T> = Result<T, ProfileError>;

impl Cx<'_> {
    fn line(&self, span: &Range<usize>) -> usize {
        let end = span.start.min(self.text.len());
        self.text.as_bytes()[..end]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1
    }

    /// Where `needle` first occurs (the start of the text if nowhere), for
    /// errors about something missing from a table.
    fn find(&self, needle: &str) -> Range<usize> {
        let at = self.text.find(needle).unwrap_or(0);
        at..at
    }

    fn err(&self, span: &Range<usize>, kind: ProfileErrorKind) -> ProfileError {
        ProfileError {
            file: self.file.to_string(),
            line: self.line(span),
            kind,
        }
    }

    fn toml(&self, e: toml::de::Error) -> ProfileError {
        let span = e.span().unwrap_or(0..0);
        // serde's standard messages: `unknown field`, `missing field`,
        // `invalid type` (serde::de::Error's provided constructors).
        let msg = e.message().trim().to_string();
        let kind = if msg.starts_with("unknown field") {
            ProfileErrorKind::UnknownKey(msg)
        } else if msg.starts_with("missing field") {
            ProfileErrorKind::MissingKey(msg)
        } else if msg.starts_with("invalid type") {
            ProfileErrorKind::WrongType(msg)
        } else {
            ProfileErrorKind::Syntax(msg)
        };
        self.err(&span, kind)
    }

    fn range(&self, key: &str, v: &Spanned<i64>, min: i64, max: i64) -> Res<i64> {
        let value = *v.get_ref();
        if value < min || value > max {
            return Err(self.err(
                &v.span(),
                ProfileErrorKind::OutOfRange {
                    key: key.to_string(),
                    value,
                    min,
                    max,
                },
            ));
        }
        Ok(value)
    }

    fn uint_type(&self, key: &str, v: &Spanned<String>) -> Res<UintType> {
        UintType::from_name(v.get_ref()).ok_or_else(|| {
            self.err(
                &v.span(),
                ProfileErrorKind::UnknownUintType {
                    key: key.to_string(),
                    name: v.get_ref().clone(),
                },
            )
        })
    }

    fn hex(&self, key: &str, v: &Spanned<String>) -> Res<Vec<u8>> {
        crate::hex::parse(v.get_ref()).map_err(|e| {
            self.err(
                &v.span(),
                ProfileErrorKind::BadHex {
                    key: key.to_string(),
                    reason: e.to_string(),
                },
            )
        })
    }

    /// Parts named in a list, each once.
    fn parts(&self, key: &str, list: &[Spanned<String>]) -> Res<Vec<(Part, Range<usize>)>> {
        let mut out: Vec<(Part, Range<usize>)> = Vec::new();
        for item in list {
            let part = Part::from_name(item.get_ref()).ok_or_else(|| {
                self.err(
                    &item.span(),
                    ProfileErrorKind::UnknownPart {
                        key: key.to_string(),
                        name: item.get_ref().clone(),
                    },
                )
            })?;
            if out.iter().any(|(p, _)| *p == part) {
                return Err(self.err(
                    &item.span(),
                    ProfileErrorKind::Repeated {
                        key: key.to_string(),
                        item: item.get_ref().clone(),
                    },
                ));
            }
            out.push((part, item.span()));
        }
        Ok(out)
    }
}

impl Profile {
    /// Parses and validates a profile. `file` names it in errors.
    // Long on purpose: the sections of a profile in file order, each handed to its own parser; the cross-section checks read best next to them.
    pub fn parse(text: &str, file: &str) -> Result<Profile, ProfileError> {
        let cx = Cx { text, file };
        let raw: RawProfile = toml::from_str(text).map_err(|e| cx.toml(e))?;

        let name = raw.protocol.get_ref().name.get_ref().clone();
        if !is_valid_name(&name) {
            return Err(cx.err(
                &raw.protocol.get_ref().name.span(),
                ProfileErrorKind::BadName(name),
            ));
        }
        let description = raw.protocol.get_ref().description.clone();

        let mut framing = parse_framing(&cx, raw.framing.get_ref())?;
        let (messages, max_chunk, activation) = parse_messages(&cx, &raw.messages)?;
        let statuses = parse_statuses(&cx, &raw.status, &cx.find("[messages"), &messages)?;
        let recovery = parse_recovery(&cx, raw.recovery.as_ref())?;
        let image_check = raw
            .image_check
            .as_ref()
            .map(|r| image_check::parse(&cx, r))
            .transpose()?;

        // The largest payload of any message, and whether the length field
        // can announce it.
        let mut max_payload = 0usize;
        for (m, raw_m) in messages.iter().flatten().zip(raw_messages(&raw.messages)) {
            let mut dirs = vec![("request", &m.request)];
            if let Some(r) = &m.reply {
                dirs.push(("reply", &r.fields));
            }
            for (direction, fields) in dirs {
                let size: usize = fields.iter().map(|f| f.max_size(max_chunk)).sum();
                let announced = size as u64 + u64::from(framing.length_adds);
                let limit = framing.length.max();
                if announced > u64::from(limit) {
                    return Err(cx.err(
                        &raw_m.span(),
                        ProfileErrorKind::PayloadTooLarge {
                            message: m.kind.name(),
                            direction,
                            size: announced,
                            limit,
                        },
                    ));
                }
                max_payload = max_payload.max(size);
            }
        }
        framing.max_payload = max_payload;

        // A `chunk_size` field must carry `max_chunk`.
        let begin = messages[MessageKind::Begin.index()].as_ref();
        let raw_begin = raw
            .messages
            .begin
            .as_ref()
            .and_then(|b| b.get_ref().request.as_ref());
        if let (Some(m), Some(rb)) = (begin, raw_begin) {
            for (f, rf) in m.request.iter().zip(rb.get_ref()) {
                if let (FieldName::ChunkSize, FieldType::Uint(t)) = (f.name, &f.ty) {
                    if max_chunk > t.max() as usize {
                        return Err(cx.err(
                            &rf.span(),
                            ProfileErrorKind::ChunkSizeFieldTooNarrow {
                                max_chunk,
                                limit: t.max(),
                            },
                        ));
                    }
                }
            }
        }

        Ok(Profile {
            name,
            description,
            framing,
            messages,
            max_chunk,
            statuses,
            recovery,
            activation,
            image_check,
        })
    }
}

fn raw_messages(raw: &RawMessages) -> impl Iterator<Item = &Spanned<RawMessage>> {
    let r = raw;
    [
        &r.version_query,
        &r.begin,
        &r.offset_query,
        &r.chunk,
        &r.verify,
        &r.activate,
    ]
    .into_iter()
    .flatten()
}

// Long on purpose: one framing key after another, each with its own error.
fn parse_framing(cx: &Cx<'_>, raw: &RawFraming) -> Res<Framing> {
    let sync = cx.hex("framing.sync", &raw.sync)?;
    if sync.is_empty() || sync.len() > 8 {
        return Err(cx.err(&raw.sync.span(), ProfileErrorKind::SyncLength(sync.len())));
    }

    let header_parts = cx.parts("framing.header", raw.header.get_ref())?;
    for (p, span) in &header_parts {
        if !matches!(p, Part::Command | Part::Seq | Part::Length) {
            return Err(cx.err(span, ProfileErrorKind::HeaderPart(p.name().to_string())));
        }
    }
    let header: Vec<Part> = header_parts.iter().map(|(p, _)| *p).collect();
    for needed in [Part::Command, Part::Length] {
        if !header.contains(&needed) {
            return Err(cx.err(
                &raw.header.span(),
                ProfileErrorKind::HeaderMissing(needed.name()),
            ));
        }
    }

    // The CRC first: the length may cover it.
    let rc = raw.crc.get_ref();
    let crc = match rc.algorithm.get_ref().as_str() {
        "none" => {
            if let Some(c) = &rc.covers {
                return Err(cx.err(&c.span(), ProfileErrorKind::CrcKeyWithoutCrc("covers")));
            }
            if let Some(e) = &rc.endian {
                return Err(cx.err(&e.span(), ProfileErrorKind::CrcKeyWithoutCrc("endian")));
            }
            None
        }
        other => {
            let algorithm = CrcAlgorithm::from_name(other).ok_or_else(|| {
                cx.err(
                    &rc.algorithm.span(),
                    ProfileErrorKind::UnknownCrc(other.to_string()),
                )
            })?;
            let big_endian = match &rc.endian {
                None if algorithm.size() == 1 => false,
                None => {
                    return Err(cx.err(
                        &raw.crc.span(),
                        ProfileErrorKind::CrcEndianMissing(algorithm.size()),
                    ))
                }
                Some(e) => match e.get_ref().as_str() {
                    "little" => false,
                    "big" => true,
                    x => {
                        return Err(
                            cx.err(&e.span(), ProfileErrorKind::UnknownEndian(x.to_string()))
                        )
                    }
                },
            };
            let (first, last) = match &rc.covers {
                // Default: everything after the sync bytes.
                None => (header[0], Part::Payload),
                Some(c) => crc_coverage(cx, c, &header)?,
            };
            Some(CrcSpec {
                algorithm,
                big_endian,
                first,
                last,
            })
        }
    };

    let rl = raw.length.get_ref();
    let length = cx.uint_type("framing.length.type", &rl.ty)?;
    let covers = cx.parts("framing.length.covers", rl.covers.get_ref())?;
    let mut framing = Framing {
        sync,
        header,
        length,
        length_adds: 0,
        crc,
        max_payload: 0,
    };
    if !covers.iter().any(|(p, _)| *p == Part::Payload) {
        return Err(cx.err(&rl.covers.span(), ProfileErrorKind::LengthWithoutPayload));
    }
    let mut adds = 0usize;
    for (p, span) in &covers {
        check_in_frame(cx, "framing.length.covers", *p, span, &framing)?;
        if *p != Part::Payload {
            adds += framing.part_len(*p, 0);
        }
    }
    framing.length_adds = adds as u32;
    Ok(framing)
}

fn check_in_frame(
    cx: &Cx<'_>,
    key: &str,
    p: Part,
    span: &Range<usize>,
    framing: &Framing,
) -> Res<()> {
    let present = match p {
        Part::Seq => framing.has_seq(),
        Part::Crc => framing.crc.is_some(),
        _ => true,
    };
    if present {
        Ok(())
    } else {
        Err(cx.err(
            span,
            ProfileErrorKind::NotInFrame {
                key: key.to_string(),
                part: p.name().to_string(),
            },
        ))
    }
}

fn crc_coverage(
    cx: &Cx<'_>,
    covers: &Spanned<Vec<Spanned<String>>>,
    header: &[Part],
) -> Res<(Part, Part)> {
    let key = "framing.crc.covers";
    let parts = cx.parts(key, covers.get_ref())?;
    let order: Vec<Part> = std::iter::once(Part::Sync)
        .chain(header.iter().copied())
        .chain([Part::Payload])
        .collect();
    let mut positions = Vec::new();
    for (p, span) in &parts {
        if *p == Part::Crc {
            return Err(cx.err(
                span,
                ProfileErrorKind::CrcCoverage("cannot include the CRC itself"),
            ));
        }
        match order.iter().position(|o| o == p) {
            Some(i) => positions.push(i),
            None => {
                return Err(cx.err(
                    span,
                    ProfileErrorKind::NotInFrame {
                        key: key.to_string(),
                        part: p.name().to_string(),
                    },
                ))
            }
        }
    }
    positions.sort_unstable();
    let (Some(&lo), Some(&hi)) = (positions.first(), positions.last()) else {
        return Err(cx.err(&covers.span(), ProfileErrorKind::CrcCoverage("is empty")));
    };
    if hi - lo + 1 != positions.len() {
        return Err(cx.err(
            &covers.span(),
            ProfileErrorKind::CrcCoverage("must be a contiguous run of frame parts"),
        ));
    }
    Ok((order[lo], order[hi]))
}

type Messages = (Vec<Option<Message>>, usize, Activation);

// Long on purpose: every message kind is validated by one loop body, key by key in the order docs/framed.md lists them, so each error names its key where the reader expects it.
fn parse_messages(cx: &Cx<'_>, raw: &RawMessages) -> Res<Messages> {
    let r = raw;
    let table = [
        (MessageKind::VersionQuery, &r.version_query),
        (MessageKind::Begin, &r.begin),
        (MessageKind::OffsetQuery, &r.offset_query),
        (MessageKind::Chunk, &r.chunk),
        (MessageKind::Verify, &r.verify),
        (MessageKind::Activate, &r.activate),
    ];
    let mut messages: Vec<Option<Message>> = Vec::new();
    let mut max_chunk = 0usize;
    let mut activation = Activation {
        settle: Duration::ZERO,
        reboot_timeout: Duration::from_secs(30),
    };
    let mut requests: HashMap<u8, &'static str> = HashMap::new();
    let mut replies: HashMap<u8, &'static str> = HashMap::new();

    for (kind, slot) in table {
        let Some(rm) = slot else {
            if kind == MessageKind::OffsetQuery {
                messages.push(None);
                continue;
            }
            return Err(cx.err(
                &cx.find("[messages"),
                ProfileErrorKind::MissingMessage(kind.name()),
            ));
        };
        let m = rm.get_ref();
        let key = |k: &str| format!("messages.{}.{k}", kind.name());

        let command = cx.range(&key("command"), &m.command, 0, 255)? as u8;
        if let Some(first) = requests.insert(command, kind.name()) {
            return Err(cx.err(
                &m.command.span(),
                ProfileErrorKind::DuplicateCommand {
                    command,
                    first: first.to_string(),
                    second: kind.name().to_string(),
                },
            ));
        }

        check_kind_keys(cx, kind, m)?;
        if kind == MessageKind::Chunk {
            let Some(mc) = &m.max_chunk else {
                return Err(cx.err(
                    &rm.span(),
                    ProfileErrorKind::MissingKey("messages.chunk.max_chunk".into()),
                ));
            };
            max_chunk = cx.range("messages.chunk.max_chunk", mc, 1, 65_536)? as usize;
        }
        if kind == MessageKind::Activate {
            activation = parse_activation(cx, m, activation)?;
        }

        let timeout = match &m.timeout_ms {
            Some(v) => cx.range(&key("timeout_ms"), v, 1, MAX_WAIT_MS)?,
            None => DEFAULT_TIMEOUT_MS,
        };
        let retries = match &m.retries {
            Some(v) => cx.range(&key("retries"), v, 0, 100)?,
            None => DEFAULT_RETRIES,
        };

        let [req_allowed, req_required, rep_allowed, rep_required] = kind.vocabulary();
        let no_fields = Vec::new();
        let (raw_request, request_span) = match &m.request {
            Some(r) => (r.get_ref(), r.span()),
            None => (&no_fields, rm.span()),
        };
        let request = parse_fields(
            cx,
            kind,
            "request",
            raw_request,
            &request_span,
            req_allowed,
            req_required,
        )?;

        let reply = parse_reply(cx, kind, rm, &mut replies, rep_allowed, rep_required)?;

        let message = Message {
            kind,
            command,
            request,
            reply,
            timeout: Duration::from_millis(timeout as u64),
            retries: retries as u32,
        };

        if kind == MessageKind::Chunk {
            check_prefix_fits(cx, &message, raw_request, max_chunk)?;
        }
        messages.push(Some(message));
    }

    // Something must let the child check the image.
    let carries_digest = [MessageKind::Begin, MessageKind::Verify].iter().any(|k| {
        messages[k.index()]
            .as_ref()
            .is_some_and(|m| m.request_has(FieldName::Crc32) || m.request_has(FieldName::Sha256))
    });
    if !carries_digest {
        let span = r.begin.as_ref().map_or(cx.find("[messages"), |b| b.span());
        return Err(cx.err(&span, ProfileErrorKind::NoIntegrity));
    }
    Ok((messages, max_chunk, activation))
}

/// Keys that belong to one message kind only (`max_chunk` to chunk,
/// `settle_ms` and `reboot_timeout_ms` to activate).
fn check_kind_keys(cx: &Cx<'_>, kind: MessageKind, m: &RawMessage) -> Res<()> {
    let only = [
        ("max_chunk", &m.max_chunk, MessageKind::Chunk),
        ("settle_ms", &m.settle_ms, MessageKind::Activate),
        (
            "reboot_timeout_ms",
            &m.reboot_timeout_ms,
            MessageKind::Activate,
        ),
    ];
    for (k, v, owner) in only {
        if let (Some(v), true) = (v, owner != kind) {
            return Err(cx.err(
                &v.span(),
                ProfileErrorKind::KeyNotAllowed {
                    key: k,
                    allowed_in: owner.name(),
                },
            ));
        }
    }
    Ok(())
}

/// The activate message's waits, over the defaults in `activation`.
fn parse_activation(cx: &Cx<'_>, m: &RawMessage, mut activation: Activation) -> Res<Activation> {
    if let Some(v) = &m.settle_ms {
        activation.settle =
            Duration::from_millis(
                cx.range("messages.activate.settle_ms", v, 0, MAX_WAIT_MS)? as u64
            );
    }
    if let Some(v) = &m.reboot_timeout_ms {
        activation.reboot_timeout = Duration::from_millis(cx.range(
            "messages.activate.reboot_timeout_ms",
            v,
            1,
            MAX_WAIT_MS,
        )? as u64);
    }
    Ok(activation)
}

/// A message's reply: its command (unique among replies, recorded in
/// `replies`) and fields. Only activate may go without one.
fn parse_reply(
    cx: &Cx<'_>,
    kind: MessageKind,
    rm: &Spanned<RawMessage>,
    replies: &mut HashMap<u8, &'static str>,
    allowed: &[FieldName],
    required: &[FieldName],
) -> Res<Option<Reply>> {
    let m = rm.get_ref();
    match (&m.reply_command, &m.reply) {
        (None, Some(f)) => Err(cx.err(
            &f.span(),
            ProfileErrorKind::ReplyWithoutCommand(kind.name()),
        )),
        (None, None) if kind == MessageKind::Activate => Ok(None),
        (None, None) => Err(cx.err(&rm.span(), ProfileErrorKind::MissingReply(kind.name()))),
        (Some(rc), f) => {
            let key = format!("messages.{}.reply_command", kind.name());
            let command = cx.range(&key, rc, 0, 255)? as u8;
            if let Some(first) = replies.insert(command, kind.name()) {
                return Err(cx.err(
                    &rc.span(),
                    ProfileErrorKind::DuplicateCommand {
                        command,
                        first: first.to_string(),
                        second: kind.name().to_string(),
                    },
                ));
            }
            let empty = Vec::new();
            let (list, span) = match f {
                Some(f) => (f.get_ref(), f.span()),
                None => (&empty, rc.span()),
            };
            let fields = parse_fields(cx, kind, "reply", list, &span, allowed, required)?;
            Ok(Some(Reply { command, fields }))
        }
    }
}

/// The chunk's data length prefix must carry a whole chunk.
fn check_prefix_fits(
    cx: &Cx<'_>,
    message: &Message,
    raw_request: &[Spanned<RawField>],
    max_chunk: usize,
) -> Res<()> {
    for (f, rf) in message.request.iter().zip(raw_request) {
        if let (FieldName::Data, FieldType::Bytes(BytesLen::Prefix(t))) = (f.name, &f.ty) {
            if max_chunk > t.max() as usize {
                return Err(cx.err(
                    &rf.span(),
                    ProfileErrorKind::ChunkTooLargeForPrefix {
                        max_chunk,
                        limit: t.max(),
                    },
                ));
            }
        }
    }
    Ok(())
}

fn parse_fields(
    cx: &Cx<'_>,
    kind: MessageKind,
    direction: &'static str,
    raw: &[Spanned<RawField>],
    list_span: &Range<usize>,
    allowed: &[FieldName],
    required: &[FieldName],
) -> Res<Vec<Field>> {
    let mut fields: Vec<Field> = Vec::new();
    for (i, rf) in raw.iter().enumerate() {
        let (f, span) = (rf.get_ref(), rf.span());
        let ty = field_type(cx, f, &span)?;
        let (name, label) = field_name(cx, kind, direction, f, &span, allowed)?;
        if fields
            .iter()
            .any(|x| x.name == name && name != FieldName::Const && name != FieldName::Ignored)
        {
            return Err(cx.err(
                &span,
                ProfileErrorKind::Repeated {
                    key: format!("messages.{}.{direction}", kind.name()),
                    item: label,
                },
            ));
        }
        if let Some(expected) = type_expected(name, &ty) {
            return Err(cx.err(
                &span,
                ProfileErrorKind::FieldTypeMismatch {
                    name: label,
                    expected,
                },
            ));
        }
        if ty == FieldType::Bytes(BytesLen::Rest) && i + 1 != raw.len() {
            return Err(cx.err(&span, ProfileErrorKind::RestNotLast(label)));
        }
        fields.push(Field { name, label, ty });
    }
    for need in required {
        if !fields.iter().any(|f| f.name == *need) {
            return Err(cx.err(
                list_span,
                ProfileErrorKind::MissingField {
                    message: kind.name(),
                    direction,
                    name: need.name(),
                },
            ));
        }
    }
    Ok(fields)
}

/// A field's type from its `type` and the keys that belong to one type
/// only (`prefix`/`len` for bytes, `hex`/`text` for const).
fn field_type(cx: &Cx<'_>, f: &RawField, span: &Range<usize>) -> Res<FieldType> {
    let ty_name = f.ty.get_ref().as_str();
    let is_const = ty_name == "const";
    let is_bytes = ty_name == "bytes";
    if !is_bytes {
        if let Some(p) = &f.prefix {
            return Err(cx.err(&p.span(), field_key_not_allowed("prefix", "bytes")));
        }
        if let Some(l) = &f.len {
            return Err(cx.err(&l.span(), field_key_not_allowed("len", "bytes")));
        }
    }
    if !is_const {
        if let Some(h) = &f.hex {
            return Err(cx.err(&h.span(), field_key_not_allowed("hex", "const")));
        }
        if let Some(t) = &f.text {
            return Err(cx.err(&t.span(), field_key_not_allowed("text", "const")));
        }
    }
    if is_const {
        return match (&f.hex, &f.text) {
            (Some(h), None) => {
                let v = cx.hex("hex", h)?;
                if v.is_empty() {
                    return Err(cx.err(&h.span(), ProfileErrorKind::ConstValue));
                }
                Ok(FieldType::Const(v))
            }
            (None, Some(t)) if !t.get_ref().is_empty() => {
                Ok(FieldType::Const(t.get_ref().as_bytes().to_vec()))
            }
            _ => Err(cx.err(span, ProfileErrorKind::ConstValue)),
        };
    }
    if is_bytes {
        return Ok(match (&f.prefix, &f.len) {
            (Some(_), Some(_)) => {
                let label = f
                    .name
                    .as_ref()
                    .map_or(String::new(), |n| n.get_ref().clone());
                return Err(cx.err(span, ProfileErrorKind::PrefixAndLen(label)));
            }
            (Some(p), None) => FieldType::Bytes(BytesLen::Prefix(cx.uint_type("prefix", p)?)),
            (None, Some(l)) => {
                FieldType::Bytes(BytesLen::Fixed(cx.range("len", l, 1, 1024)? as usize))
            }
            (None, None) => FieldType::Bytes(BytesLen::Rest),
        });
    }
    UintType::from_name(ty_name)
        .map(FieldType::Uint)
        .ok_or_else(|| {
            cx.err(
                &f.ty.span(),
                ProfileErrorKind::UnknownFieldType(ty_name.to_string()),
            )
        })
}

/// A field's meaning and its label: a const's name is documentation, any
/// other name must be one `kind` allows in `direction`.
fn field_name(
    cx: &Cx<'_>,
    kind: MessageKind,
    direction: &'static str,
    f: &RawField,
    span: &Range<usize>,
    allowed: &[FieldName],
) -> Res<(FieldName, String)> {
    let ty_name = f.ty.get_ref().as_str();
    let is_const = ty_name == "const";
    let Some(n) = &f.name else {
        if is_const {
            return Ok((FieldName::Const, "const".to_string()));
        }
        return Err(cx.err(span, ProfileErrorKind::FieldWithoutName(ty_name.into())));
    };
    let label = n.get_ref().clone();
    let name = FieldName::from_name(&label)
        .filter(|name| *name == FieldName::Ignored || allowed.contains(name));
    match (name, is_const) {
        (_, true) => Ok((FieldName::Const, label)),
        (Some(name), false) => Ok((name, label)),
        (None, false) => {
            let allowed = allowed
                .iter()
                .map(|a| a.name())
                .collect::<Vec<_>>()
                .join(", ");
            Err(cx.err(
                &n.span(),
                ProfileErrorKind::UnknownFieldName {
                    message: kind.name(),
                    direction,
                    name: label,
                    allowed: if allowed.is_empty() {
                        "none".into()
                    } else {
                        allowed
                    },
                },
            ))
        }
    }
}

/// What type a field with meaning `name` must have, when `ty` is not it.
fn type_expected(name: FieldName, ty: &FieldType) -> Option<&'static str> {
    match (name, ty) {
        (FieldName::Crc32, FieldType::Uint(UintType::U32Le | UintType::U32Be)) => None,
        (FieldName::Crc32, _) => Some("u32le or u32be (a CRC-32 has 32 bits)"),
        (
            FieldName::Status | FieldName::Size | FieldName::Offset | FieldName::ChunkSize,
            FieldType::Uint(_),
        ) => None,
        (FieldName::Status | FieldName::Size | FieldName::Offset | FieldName::ChunkSize, _) => {
            Some("an unsigned integer type (u8, u16le, u16be, u32le, u32be)")
        }
        (FieldName::Version | FieldName::Data, FieldType::Bytes(_)) => None,
        (FieldName::Version | FieldName::Data, _) => Some("of type `bytes`"),
        (FieldName::Sha256, FieldType::Bytes(BytesLen::Fixed(32))) => None,
        (FieldName::Sha256, _) => Some("of type `bytes` with len = 32"),
        _ => None,
    }
}

fn field_key_not_allowed(key: &'static str, applies_to: &'static str) -> ProfileErrorKind {
    ProfileErrorKind::FieldKeyNotAllowed { key, applies_to }
}

// Long on purpose: one status-table key after another, each with its own error.
fn parse_statuses(
    cx: &Cx<'_>,
    raw: &[Spanned<RawStatus>],
    messages_span: &Range<usize>,
    messages: &[Option<Message>],
) -> Res<Vec<StatusRule>> {
    let mut out: Vec<StatusRule> = Vec::new();
    for rs in raw {
        let s = rs.get_ref();
        let value = cx.range("status.value", &s.value, 0, i64::from(u32::MAX))? as u32;
        if out.iter().any(|o| o.value == value) {
            return Err(cx.err(&s.value.span(), ProfileErrorKind::DuplicateStatus(value)));
        }
        // The value must fit every reply's status field.
        for m in messages.iter().flatten() {
            let Some(reply) = &m.reply else { continue };
            for f in &reply.fields {
                if let (FieldName::Status, FieldType::Uint(t)) = (f.name, &f.ty) {
                    if value > t.max() {
                        return Err(cx.err(
                            &s.value.span(),
                            ProfileErrorKind::StatusTooWide {
                                value,
                                message: m.kind.name(),
                                ty: UintType::NAMES[*t as usize],
                            },
                        ));
                    }
                }
            }
        }
        let means = s.means.get_ref().as_str();
        let code = match &s.result_code {
            None => None,
            Some(rc) => {
                let v = *rc.get_ref();
                if matches!(means, "ok" | "resync" | "restart") {
                    return Err(cx.err(
                        &rc.span(),
                        ProfileErrorKind::ResultCodeNotAllowed(means.to_string()),
                    ));
                }
                // A failure code: documented and not 0 (an unknown `means`
                // is reported below whatever its code).
                let code = ResultCode::try_from(v).ok().filter(|c| !c.is_success());
                if code.is_none() && matches!(means, "fail" | "retry") {
                    return Err(cx.err(&rc.span(), ProfileErrorKind::BadResultCode(v)));
                }
                code
            }
        };
        let action = match means {
            "ok" => StatusAction::Ok,
            "resync" => StatusAction::Resync,
            "restart" => StatusAction::Restart,
            "retry" => StatusAction::Retry {
                result_code: code.unwrap_or(ResultCode::BUSY),
            },
            "fail" => match code {
                Some(result_code) => StatusAction::Fail { result_code },
                None => return Err(cx.err(&rs.span(), ProfileErrorKind::MissingResultCode)),
            },
            other => {
                return Err(cx.err(
                    &s.means.span(),
                    ProfileErrorKind::UnknownMeaning(other.to_string()),
                ))
            }
        };
        out.push(StatusRule {
            value,
            action,
            description: s.description.clone(),
        });
    }
    if !out.iter().any(|s| s.action == StatusAction::Ok) {
        let span = raw.first().map_or(messages_span.clone(), |s| s.span());
        return Err(cx.err(&span, ProfileErrorKind::NoOkStatus));
    }
    Ok(out)
}

fn parse_recovery(cx: &Cx<'_>, raw: Option<&RawRecovery>) -> Res<Recovery> {
    let mut r = Recovery {
        busy_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_millis(5000),
        max_recoveries: 5,
    };
    let Some(raw) = raw else { return Ok(r) };
    if let Some(v) = &raw.busy_backoff_ms {
        r.busy_backoff =
            Duration::from_millis(cx.range("recovery.busy_backoff_ms", v, 1, MAX_WAIT_MS)? as u64);
    }
    if let Some(v) = &raw.max_backoff_ms {
        r.max_backoff =
            Duration::from_millis(cx.range("recovery.max_backoff_ms", v, 1, MAX_WAIT_MS)? as u64);
    }
    if let Some(v) = &raw.max_recoveries {
        r.max_recoveries = cx.range("recovery.max_recoveries", v, 0, 100)? as u32;
    }
    Ok(r)
}
