//! Frames and payloads of a profile's protocol.
//!
//! A frame is `sync | header parts in profile order | payload | crc`
//! (`codecs/profiles/README.md`, "Frames"). [`encode`] builds one;
//! [`Decoder`] takes bytes as they arrive from the line, finds frames,
//! checks their length and CRC and resynchronises on the next sync word after
//! garbage or a bad frame. [`encode_payload`] and [`decode_payload`] turn a
//! message's fields into bytes and back.

use super::profile::{BytesLen, Field, FieldName, FieldType, Framing, Part, MAX_VERSION_LEN};

/// One frame: command, optional sequence byte and payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The command byte.
    pub command: u8,
    /// The sequence byte, if the profile has one.
    pub seq: Option<u8>,
    /// The payload.
    pub payload: Vec<u8>,
}

/// A frame that cannot be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// The payload is larger than the length field can announce.
    #[error("payload of {len} bytes does not fit the length field (at most {max})")]
    PayloadTooLarge {
        /// Payload size.
        len: usize,
        /// Largest payload the length field announces.
        max: u64,
    },
    /// A field's value is missing.
    #[error("no value for field `{0}`")]
    MissingValue(String),
    /// A value does not fit its field.
    #[error("value {value} does not fit field `{field}`")]
    ValueTooLarge {
        /// The field.
        field: String,
        /// The value.
        value: u64,
    },
}

/// Builds the frame for `command`, `seq` and `payload` into `out`.
pub fn encode(
    framing: &Framing,
    command: u8,
    seq: Option<u8>,
    payload: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), EncodeError> {
    let announced = payload.len() as u64 + u64::from(framing.length_adds);
    if announced > u64::from(framing.length.max()) {
        return Err(EncodeError::PayloadTooLarge {
            len: payload.len(),
            max: u64::from(framing.length.max()).saturating_sub(framing.length_adds.into()),
        });
    }
    let start = out.len();
    out.extend_from_slice(&framing.sync);
    for part in &framing.header {
        match part {
            Part::Command => out.push(command),
            Part::Seq => out.push(seq.unwrap_or(0)),
            Part::Length => framing.length.write(announced as u32, out),
            _ => {}
        }
    }
    out.extend_from_slice(payload);
    if let Some(crc) = &framing.crc {
        let range = framing.crc_range(payload.len());
        let frame = &out[start..];
        let value = crc.algorithm.checksum(&frame[range]);
        crc.wire_type().write(value, out);
    }
    Ok(())
}

/// Bytes the decoder set aside instead of a frame. Not fatal: decoding
/// continues with the next sync word.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Bytes before a sync word (line noise, a partial frame).
    #[error("{0} bytes of garbage before a sync word")]
    Garbage(usize),
    /// A length field announcing less than its other covered parts or more
    /// than the profile's largest payload.
    #[error("length field {0} is impossible for this profile")]
    BadLength(u32),
    /// A frame whose CRC does not match its bytes.
    #[error("CRC mismatch: frame says 0x{received:x}, bytes give 0x{computed:x}")]
    BadCrc {
        /// The CRC on the wire.
        received: u32,
        /// The CRC of the covered bytes.
        computed: u32,
    },
}

/// A streaming frame decoder with bounded memory.
///
/// Call order: [`push`](Self::push) bytes, then [`next`](Self::next) until it
/// returns `None`, then push more. `push` takes only what fits its buffer
/// (one maximum frame plus a read's worth); it returns how many bytes it took.
#[derive(Debug, Clone)]
pub struct Decoder {
    framing: Framing,
    buf: Vec<u8>,
    cap: usize,
}

impl Decoder {
    /// Bytes a single push adds at most beyond one maximum frame.
    pub const READ_SIZE: usize = 512;

    /// A decoder for `framing`.
    pub fn new(framing: &Framing) -> Self {
        let cap = framing.max_frame_len() + Self::READ_SIZE;
        Decoder {
            framing: framing.clone(),
            buf: Vec::with_capacity(cap),
            cap,
        }
    }

    /// Takes as many of `bytes` as fit; returns how many it took.
    pub fn push(&mut self, bytes: &[u8]) -> usize {
        let n = bytes.len().min(self.cap - self.buf.len());
        self.buf.extend_from_slice(&bytes[..n]);
        n
    }

    /// Bytes held but not yet decoded.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Forgets everything held (after a reboot of the peer, say).
    pub fn clear(&mut self) {
        self.buf.clear();
    }

    /// Gives up on a frame that started but never completed: noise that
    /// looked like a sync word and a length can announce more bytes than
    /// will ever come, hiding real frames behind it. Called when a reply
    /// timed out; the search resumes one byte further on.
    pub fn skip_stalled(&mut self) {
        if !self.buf.is_empty() && self.buf.starts_with(&self.framing.sync) {
            self.buf.drain(..1);
        }
    }

    /// The next frame, or what was discarded instead; `None` when more bytes
    /// are needed.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Option<Result<Frame, DecodeError>> {
        let f = &self.framing;
        let sync = &f.sync;
        // Find the sync word.
        match find(&self.buf, sync) {
            Some(0) => {}
            Some(i) => {
                self.buf.drain(..i);
                return Some(Err(DecodeError::Garbage(i)));
            }
            None => {
                // Keep the longest tail that could start a sync word.
                let keep = (1..sync.len())
                    .rev()
                    .find(|&k| k <= self.buf.len() && self.buf.ends_with(&sync[..k]))
                    .unwrap_or(0);
                let drop = self.buf.len() - keep;
                if drop == 0 {
                    return None;
                }
                self.buf.drain(..drop);
                return Some(Err(DecodeError::Garbage(drop)));
            }
        }
        let head = sync.len() + f.header_len();
        if self.buf.len() < head {
            return None;
        }
        let len_range = f.part_range(Part::Length, 0);
        let announced = f.length.read(&self.buf[len_range]);
        let payload_len = match announced.checked_sub(f.length_adds) {
            Some(p) if p as usize <= f.max_payload => p as usize,
            _ => {
                // Not a frame after all: look for the next sync word.
                self.buf.drain(..1);
                return Some(Err(DecodeError::BadLength(announced)));
            }
        };
        let total = f.frame_len(payload_len);
        if self.buf.len() < total {
            return None;
        }
        if let Some(crc) = &f.crc {
            let computed = crc.algorithm.checksum(&self.buf[f.crc_range(payload_len)]);
            let received = crc
                .wire_type()
                .read(&self.buf[f.part_range(Part::Crc, payload_len)]);
            if computed != received {
                self.buf.drain(..1);
                return Some(Err(DecodeError::BadCrc { received, computed }));
            }
        }
        let command = self.buf[f.part_range(Part::Command, 0).start];
        let seq = f
            .has_seq()
            .then(|| self.buf[f.part_range(Part::Seq, 0).start]);
        let payload = self.buf[f.part_range(Part::Payload, payload_len)].to_vec();
        self.buf.drain(..total);
        Some(Ok(Frame {
            command,
            seq,
            payload,
        }))
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The values of a message's fields, by meaning. Absent fields are `None`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Values {
    /// Reply status.
    pub status: Option<u32>,
    /// Version string (trailing NULs and spaces trimmed on receipt).
    pub version: Option<String>,
    /// Image size.
    pub size: Option<u32>,
    /// Image CRC-32.
    pub crc32: Option<u32>,
    /// Image SHA-256.
    pub sha256: Option<[u8; 32]>,
    /// Offset.
    pub offset: Option<u32>,
    /// Chunk data.
    pub data: Option<Vec<u8>>,
    /// Chunk size.
    pub chunk_size: Option<u32>,
}

/// A payload that does not match its message's fields.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    /// The payload ends inside a field.
    #[error("payload ends inside field `{0}`")]
    Truncated(String),
    /// Bytes after the last field.
    #[error("{0} bytes after the last field")]
    Trailing(usize),
    /// A const field with other bytes.
    #[error("const field `{0}` does not match")]
    ConstMismatch(String),
    /// A version longer than the format allows.
    #[error("version of {0} bytes is too long")]
    VersionTooLong(usize),
}

/// Appends the payload for `fields` with `values` to `out`.
pub fn encode_payload(
    fields: &[Field],
    values: &Values,
    out: &mut Vec<u8>,
) -> Result<(), EncodeError> {
    for f in fields {
        let missing = || EncodeError::MissingValue(f.label.clone());
        match &f.ty {
            FieldType::Const(v) => out.extend_from_slice(v),
            FieldType::Uint(t) => {
                let v = match f.name {
                    FieldName::Status => values.status,
                    FieldName::Size => values.size,
                    FieldName::Crc32 => values.crc32,
                    FieldName::Offset => values.offset,
                    FieldName::ChunkSize => values.chunk_size,
                    _ => Some(0),
                }
                .ok_or_else(missing)?;
                if v > t.max() {
                    return Err(EncodeError::ValueTooLarge {
                        field: f.label.clone(),
                        value: v.into(),
                    });
                }
                t.write(v, out);
            }
            FieldType::Bytes(len) => {
                let bytes: &[u8] = match f.name {
                    FieldName::Version => values.version.as_deref().ok_or_else(missing)?.as_bytes(),
                    FieldName::Data => values.data.as_deref().ok_or_else(missing)?,
                    FieldName::Sha256 => values.sha256.as_ref().ok_or_else(missing)?,
                    _ => &[],
                };
                let too_large = || EncodeError::ValueTooLarge {
                    field: f.label.clone(),
                    value: bytes.len() as u64,
                };
                match len {
                    BytesLen::Prefix(t) => {
                        if bytes.len() > t.max() as usize {
                            return Err(too_large());
                        }
                        t.write(bytes.len() as u32, out);
                        out.extend_from_slice(bytes);
                    }
                    BytesLen::Fixed(n) => {
                        if bytes.len() > *n {
                            return Err(too_large());
                        }
                        out.extend_from_slice(bytes);
                        out.resize(out.len() + (n - bytes.len()), 0);
                    }
                    BytesLen::Rest => out.extend_from_slice(bytes),
                }
            }
        }
    }
    Ok(())
}

/// Reads `payload` as `fields`.
pub fn decode_payload(fields: &[Field], payload: &[u8]) -> Result<Values, PayloadError> {
    let mut v = Values::default();
    let mut rest = payload;
    for f in fields {
        let truncated = || PayloadError::Truncated(f.label.clone());
        let take = |rest: &mut &[u8], n: usize| -> Result<Vec<u8>, PayloadError> {
            if rest.len() < n {
                return Err(truncated());
            }
            let (a, b) = rest.split_at(n);
            *rest = b;
            Ok(a.to_vec())
        };
        match &f.ty {
            FieldType::Const(c) => {
                if take(&mut rest, c.len())? != *c {
                    return Err(PayloadError::ConstMismatch(f.label.clone()));
                }
            }
            FieldType::Uint(t) => {
                let x = t.read(&take(&mut rest, t.size())?);
                match f.name {
                    FieldName::Status => v.status = Some(x),
                    FieldName::Size => v.size = Some(x),
                    FieldName::Crc32 => v.crc32 = Some(x),
                    FieldName::Offset => v.offset = Some(x),
                    FieldName::ChunkSize => v.chunk_size = Some(x),
                    _ => {}
                }
            }
            FieldType::Bytes(len) => {
                let n = match len {
                    BytesLen::Prefix(t) => t.read(&take(&mut rest, t.size())?) as usize,
                    BytesLen::Fixed(n) => *n,
                    BytesLen::Rest => rest.len(),
                };
                let bytes = take(&mut rest, n)?;
                match f.name {
                    FieldName::Version => {
                        let end = bytes
                            .iter()
                            .rposition(|&b| b != 0 && b != b' ')
                            .map_or(0, |i| i + 1);
                        if end > MAX_VERSION_LEN {
                            return Err(PayloadError::VersionTooLong(end));
                        }
                        v.version = Some(String::from_utf8_lossy(&bytes[..end]).into_owned());
                    }
                    FieldName::Data => v.data = Some(bytes),
                    FieldName::Sha256 => {
                        let mut a = [0u8; 32];
                        if bytes.len() == 32 {
                            a.copy_from_slice(&bytes);
                        }
                        v.sha256 = Some(a);
                    }
                    _ => {}
                }
            }
        }
    }
    if !rest.is_empty() {
        return Err(PayloadError::Trailing(rest.len()));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::framed::profile::{builtin, CrcAlgorithm, MessageKind};

    fn profiles() -> Vec<crate::framed::Profile> {
        ["acme-rs485", "nordlys-uart"]
            .iter()
            .map(|n| builtin(n).unwrap().unwrap())
            .collect()
    }

    #[test]
    fn crc_catalogue_check_values() {
        // The reveng catalogue's check value: the CRC of "123456789".
        let check = [
            (CrcAlgorithm::Crc8, 0xF4),
            (CrcAlgorithm::Crc16Modbus, 0x4B37),
            (CrcAlgorithm::Crc16CcittFalse, 0x29B1),
            (CrcAlgorithm::Crc16Xmodem, 0x31C3),
            (CrcAlgorithm::Crc32, 0xCBF4_3926),
        ];
        for (alg, value) in check {
            assert_eq!(alg.checksum(b"123456789"), value, "{alg:?}");
        }
    }

    #[test]
    fn round_trip_through_garbage_and_split_reads() {
        for p in profiles() {
            let f = &p.framing;
            let mut wire = vec![0x00, 0xff, f.sync[0], 0x13];
            let frames: Vec<Frame> = (0..4u8)
                .map(|i| Frame {
                    command: 0x10 + i,
                    seq: f.has_seq().then_some(i),
                    payload: (0..i * 7).collect(),
                })
                .collect();
            for fr in &frames {
                encode(f, fr.command, fr.seq, &fr.payload, &mut wire).unwrap();
                wire.extend_from_slice(&f.sync[..1]); // a stray sync byte
            }
            let mut dec = Decoder::new(f);
            let mut got = Vec::new();
            for piece in wire.chunks(3) {
                assert_eq!(dec.push(piece), piece.len());
                while let Some(r) = dec.next() {
                    if let Ok(fr) = r {
                        got.push(fr);
                    }
                }
            }
            assert_eq!(got, frames, "{}", p.name);
        }
    }

    #[test]
    fn corrupted_frame_is_skipped_and_the_next_one_found() {
        for p in profiles() {
            let f = &p.framing;
            let mut wire = Vec::new();
            encode(f, 0x01, f.has_seq().then_some(9), b"hello", &mut wire).unwrap();
            let n = wire.len();
            wire[n - 2] ^= 0x40; // inside the payload or CRC
            encode(f, 0x02, f.has_seq().then_some(10), b"world", &mut wire).unwrap();
            let mut dec = Decoder::new(f);
            dec.push(&wire);
            let mut frames = Vec::new();
            let mut crc_errors = 0;
            while let Some(r) = dec.next() {
                match r {
                    Ok(fr) => frames.push(fr),
                    Err(DecodeError::BadCrc { .. }) => crc_errors += 1,
                    Err(_) => {}
                }
            }
            assert_eq!(crc_errors, 1, "{}", p.name);
            assert_eq!(frames.len(), 1);
            assert_eq!(frames[0].payload, b"world");
        }
    }

    #[test]
    fn payload_round_trip_for_every_message() {
        for p in profiles() {
            for kind in MessageKind::ALL {
                let Some(m) = p.message(kind) else { continue };
                let values = Values {
                    status: Some(0),
                    version: Some("1.2.3".into()),
                    size: Some(1000),
                    crc32: Some(0xDEAD_BEEF),
                    sha256: Some([7; 32]),
                    offset: Some(512),
                    data: Some(vec![1, 2, 3]),
                    chunk_size: Some(p.max_chunk as u32),
                };
                let mut dirs = vec![&m.request];
                if let Some(r) = &m.reply {
                    dirs.push(&r.fields);
                }
                for fields in dirs {
                    let mut out = Vec::new();
                    encode_payload(fields, &values, &mut out).unwrap();
                    let back = decode_payload(fields, &out).unwrap();
                    for f in fields {
                        match f.name {
                            FieldName::Version => assert_eq!(back.version, values.version),
                            FieldName::Data => assert_eq!(back.data, values.data),
                            FieldName::Offset => assert_eq!(back.offset, values.offset),
                            FieldName::Sha256 => assert_eq!(back.sha256, values.sha256),
                            _ => {}
                        }
                    }
                    if !out.is_empty() {
                        let short = &out[..out.len() - 1];
                        assert!(decode_payload(fields, short).is_err(), "{kind} truncated");
                    }
                }
            }
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config {
            rng_seed: proptest::test_runner::RngSeed::Fixed(0x00f2_a3ed_c0de),
            failure_persistence: None,
            ..proptest::test_runner::Config::default()
        })]

        #[test]
        fn decoder_never_panics_and_stays_bounded(
            bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..4096),
            split in 1usize..700,
        ) {
            for p in profiles() {
                let mut dec = Decoder::new(&p.framing);
                let mut rest: &[u8] = &bytes;
                while !rest.is_empty() {
                    let take = split.min(rest.len());
                    let n = dec.push(&rest[..take]);
                    rest = &rest[n..];
                    while let Some(r) = dec.next() {
                        if let Ok(fr) = r {
                            proptest::prop_assert!(fr.payload.len() <= p.framing.max_payload);
                        }
                    }
                    proptest::prop_assert!(dec.buffered() <= p.framing.max_frame_len() + Decoder::READ_SIZE);
                }
            }
        }
    }
}
