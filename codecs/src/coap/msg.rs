//! The CoAP message layer on top of `coap_lite::Packet`: strict decoding,
//! response codes, and typed access to the options the block layer uses.
//!
//! coap-lite parses and emits the bytes (RFC 7252 §3). This module adds the
//! checks coap-lite leaves out (version, empty-message shape, payload marker
//! with no payload) and reads Block1/Block2 with the crate's own `u32` codec
//! ([`super::block`]) instead of coap-lite's `BlockValue`.

use std::fmt;

use coap_lite::{CoapOption, MessageClass, MessageType, Packet};

use super::block::{decode_uint, encode_uint, BlockError, BlockOpt};

/// The largest datagram the engines emit by default: coap-lite's own cap
/// (`Packet::MAX_SIZE`, 1280 bytes, the IPv6 minimum MTU, RFC 7252 §4.6).
pub const DEFAULT_MAX_MESSAGE: usize = 1280;

/// Option number of Request-Tag (RFC 9175 §3.2); coap-lite has no name for it.
pub const REQUEST_TAG: u16 = 292;

/// Content-Format `application/octet-stream` (RFC 7252 §12.3).
pub const OCTET_STREAM: u32 = 42;

/// Content-Format `text/plain; charset=utf-8` (RFC 7252 §12.3).
pub const TEXT_PLAIN: u32 = 0;

/// A CoAP code `c.dd` as its byte: 3 bits class, 5 bits detail (RFC 7252 §3).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Code(pub u8);

impl Code {
    /// 0.00, the code of an empty message (RFC 7252 §4.1).
    pub const EMPTY: Code = Code(0x00);
    /// 0.01 GET (RFC 7252 §5.8.1).
    pub const GET: Code = Code(0x01);
    /// 0.02 POST (RFC 7252 §5.8.2); LwM2M uses it for Execute.
    pub const POST: Code = Code(0x02);
    /// 0.03 PUT (RFC 7252 §5.8.3).
    pub const PUT: Code = Code(0x03);
    /// 2.01 Created (RFC 7252 §5.9.1.1).
    pub const CREATED: Code = Code(0x41);
    /// 2.04 Changed (RFC 7252 §5.9.1.4).
    pub const CHANGED: Code = Code(0x44);
    /// 2.05 Content (RFC 7252 §5.9.1.5).
    pub const CONTENT: Code = Code(0x45);
    /// 2.31 Continue (RFC 7959 §2.9.1).
    pub const CONTINUE: Code = Code(0x5f);
    /// 4.00 Bad Request (RFC 7252 §5.9.2.1).
    pub const BAD_REQUEST: Code = Code(0x80);
    /// 4.02 Bad Option (RFC 7252 §5.9.2.3).
    pub const BAD_OPTION: Code = Code(0x82);
    /// 4.04 Not Found (RFC 7252 §5.9.2.5).
    pub const NOT_FOUND: Code = Code(0x84);
    /// 4.05 Method Not Allowed (RFC 7252 §5.9.2.6).
    pub const METHOD_NOT_ALLOWED: Code = Code(0x85);
    /// 4.06 Not Acceptable (RFC 7252 §5.9.2.7).
    pub const NOT_ACCEPTABLE: Code = Code(0x86);
    /// 4.08 Request Entity Incomplete (RFC 7959 §2.9.2).
    pub const REQUEST_ENTITY_INCOMPLETE: Code = Code(0x88);
    /// 4.13 Request Entity Too Large (RFC 7252 §5.9.2.9, RFC 7959 §2.9.3).
    pub const REQUEST_ENTITY_TOO_LARGE: Code = Code(0x8d);
    /// 5.00 Internal Server Error (RFC 7252 §5.9.3.1).
    pub const INTERNAL_SERVER_ERROR: Code = Code(0xa0);

    /// The class digit `c` of `c.dd`.
    pub fn class(self) -> u8 {
        self.0 >> 5
    }

    /// The detail `dd` of `c.dd`.
    pub fn detail(self) -> u8 {
        self.0 & 0x1f
    }

    /// A request method: class 0 and not 0.00 (RFC 7252 §12.1).
    pub fn is_request(self) -> bool {
        self.class() == 0 && self.0 != 0
    }

    /// A response: class 2, 4 or 5 (RFC 7252 §12.1).
    pub fn is_response(self) -> bool {
        matches!(self.class(), 2 | 4 | 5)
    }

    /// A success response, class 2 (RFC 7252 §5.9.1).
    pub fn is_success(self) -> bool {
        self.class() == 2
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:02}", self.class(), self.detail())
    }
}

impl fmt::Debug for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Code({self})")
    }
}

/// The code of `packet`.
pub fn code(packet: &Packet) -> Code {
    Code(u8::from(packet.header.code))
}

/// Sets the code of `packet`.
pub fn set_code(packet: &mut Packet, code: Code) {
    packet.header.code = MessageClass::from(code.0);
}

/// A datagram that is not a well-formed CoAP message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// coap-lite could not parse it (short header, bad TKL, bad option).
    #[error("malformed CoAP message: {0}")]
    Malformed(String),
    /// Version other than 1 (RFC 7252 §3: "unknown version numbers MUST be
    /// silently ignored").
    #[error("CoAP version {0}, only version 1 exists")]
    Version(u8),
    /// An empty message (0.00) with a token, options or payload (RFC 7252
    /// §4.1: a message format error).
    #[error("empty message with bytes after the header")]
    EmptyNotEmpty,
    /// A payload marker with no payload after it (RFC 7252 §3: "MUST be
    /// processed as a message format error").
    #[error("payload marker without payload")]
    MarkerWithoutPayload,
    /// Code class 1, 6 or 7, reserved (RFC 7252 §12.1).
    #[error("reserved code class {0}")]
    ReservedClass(u8),
}

/// Decodes a datagram into a packet, with the checks of RFC 7252 §3 and §4.1
/// that coap-lite leaves out.
pub fn decode(bytes: &[u8]) -> Result<Packet, DecodeError> {
    let packet = Packet::from_bytes(bytes).map_err(|e| DecodeError::Malformed(e.to_string()))?;
    let version = packet.header.get_version();
    if version != 1 {
        return Err(DecodeError::Version(version));
    }
    let c = code(&packet);
    if c == Code::EMPTY && bytes.len() != 4 {
        return Err(DecodeError::EmptyNotEmpty);
    }
    if matches!(c.class(), 1 | 6 | 7) {
        return Err(DecodeError::ReservedClass(c.class()));
    }
    // Option encodings are canonical (RFC 7252 §3.1), so a valid message
    // re-encodes to its own length; a shorter result means coap-lite dropped
    // a dangling payload marker.
    let again = packet
        .to_bytes_unlimited()
        .map_err(|e| DecodeError::Malformed(e.to_string()))?;
    if again.len() != bytes.len() {
        return Err(DecodeError::MarkerWithoutPayload);
    }
    Ok(packet)
}

/// A packet that cannot be put on the wire.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// The encoded message would exceed the configured datagram size.
    #[error("message of more than {0} bytes")]
    TooBig(usize),
}

/// Encodes `packet`, refusing messages longer than `limit` bytes.
pub fn encode(packet: &Packet, limit: usize) -> Result<Vec<u8>, EncodeError> {
    packet
        .to_bytes_with_limit(limit)
        .map_err(|_| EncodeError::TooBig(limit))
}

/// The message type (RFC 7252 §3: CON, NON, ACK, RST).
pub fn mtype(packet: &Packet) -> MessageType {
    packet.header.get_type()
}

/// An option the block layer reads that is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OptionError {
    /// A non-repeatable option appears twice (RFC 7252 §5.4.5).
    #[error("option {0} repeated")]
    Repeated(u16),
    /// A uint option longer than its format allows (RFC 7252 §5.4.3).
    #[error("option {0} has a value of {1} bytes")]
    BadLength(u16, usize),
    /// A Block1/Block2 value that is not valid (RFC 7959 §2.2).
    #[error("option {number}: {source}")]
    Block {
        /// 23 (Block2) or 27 (Block1).
        number: u16,
        /// Why the value is invalid.
        source: BlockError,
    },
}

fn single(packet: &Packet, opt: CoapOption) -> Result<Option<&Vec<u8>>, OptionError> {
    match packet.get_option(opt) {
        None => Ok(None),
        Some(list) if list.len() > 1 => Err(OptionError::Repeated(opt.into())),
        Some(list) => Ok(list.front()),
    }
}

fn block(packet: &Packet, opt: CoapOption) -> Result<Option<BlockOpt>, OptionError> {
    let number: u16 = opt.into();
    single(packet, opt)?
        .map(|v| BlockOpt::decode(v).map_err(|source| OptionError::Block { number, source }))
        .transpose()
}

/// A uint option of at most 4 bytes, `None` when absent (RFC 7252 §3.2).
pub fn uint(packet: &Packet, opt: CoapOption) -> Result<Option<u32>, OptionError> {
    match single(packet, opt)? {
        None => Ok(None),
        Some(v) => decode_uint(v)
            .map(Some)
            .ok_or(OptionError::BadLength(opt.into(), v.len())),
    }
}

/// The Block1 option (number 27, RFC 7959 §2.1).
pub fn block1(packet: &Packet) -> Result<Option<BlockOpt>, OptionError> {
    block(packet, CoapOption::Block1)
}

/// The Block2 option (number 23, RFC 7959 §2.1).
pub fn block2(packet: &Packet) -> Result<Option<BlockOpt>, OptionError> {
    block(packet, CoapOption::Block2)
}

/// The Size1 option (number 60, RFC 7959 §4).
pub fn size1(packet: &Packet) -> Result<Option<u32>, OptionError> {
    uint(packet, CoapOption::Size1)
}

/// The Size2 option (number 28, RFC 7959 §4).
pub fn size2(packet: &Packet) -> Result<Option<u32>, OptionError> {
    uint(packet, CoapOption::Size2)
}

/// Replaces option `opt` by the minimal-length uint `value` (RFC 7252 §3.2).
pub fn set_uint(packet: &mut Packet, opt: CoapOption, value: u32) {
    packet.clear_option(opt);
    packet.add_option(opt, encode_uint(value));
}

/// Replaces the Block1 option by `b`, encoded with the `u32` codec.
pub fn set_block1(packet: &mut Packet, b: BlockOpt) {
    packet.clear_option(CoapOption::Block1);
    packet.add_option(CoapOption::Block1, b.encode());
}

/// Replaces the Block2 option by `b`, encoded with the `u32` codec.
pub fn set_block2(packet: &mut Packet, b: BlockOpt) {
    packet.clear_option(CoapOption::Block2);
    packet.add_option(CoapOption::Block2, b.encode());
}

/// Replaces the Uri-Path options by `segments`, one option each (RFC 7252
/// §6.4 step 8).
pub fn set_uri_path<S: AsRef<str>>(packet: &mut Packet, segments: &[S]) {
    packet.clear_option(CoapOption::UriPath);
    for s in segments {
        packet.add_option(CoapOption::UriPath, s.as_ref().as_bytes().to_vec());
    }
}

/// The Uri-Path segments; `None` if one is not UTF-8 (RFC 7252 §5.10.1 says
/// they are strings).
pub fn uri_path(packet: &Packet) -> Option<Vec<String>> {
    let Some(list) = packet.get_option(CoapOption::UriPath) else {
        return Some(Vec::new());
    };
    list.iter()
        .map(|v| String::from_utf8(v.clone()).ok())
        .collect()
}

/// A request of method `method` to `path`, without type, MID or token: the
/// exchange engine fills those in.
pub fn request<S: AsRef<str>>(method: Code, path: &[S]) -> Packet {
    let mut p = Packet::new();
    set_code(&mut p, method);
    set_uri_path(&mut p, path);
    p
}

/// A response with `code` and nothing else, for the exchange engine to
/// complete (type, message id, token) in [`super::Exchanges::respond`].
pub fn response(code: Code) -> Packet {
    let mut p = Packet::new();
    set_code(&mut p, code);
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hex;
    use proptest::prelude::*;

    #[test]
    fn golden_vector_continue_with_block1() {
        // docs/protocols/children.md §2.5: CON 2.31, MID 0x1234, token 01020304, Block1 3/M/64.
        let mut p = Packet::new();
        p.header.set_type(MessageType::Confirmable);
        p.header.message_id = 0x1234;
        set_code(&mut p, Code::CONTINUE);
        p.set_token(vec![1, 2, 3, 4]);
        set_block1(&mut p, BlockOpt::new(3, true, 2).unwrap());
        let bytes = encode(&p, DEFAULT_MAX_MESSAGE).unwrap();
        assert_eq!(
            bytes,
            hex::parse("44 5f 12 34 01 02 03 04 d1 0e 3a").unwrap()
        );
        let back = decode(&bytes).unwrap();
        assert_eq!(code(&back), Code::CONTINUE);
        assert_eq!(
            block1(&back).unwrap(),
            Some(BlockOpt {
                num: 3,
                more: true,
                szx: 2
            })
        );
    }

    #[test]
    fn three_byte_block_survives_the_packet_layer() {
        let mut p = request(Code::PUT, &["5", "0", "0"]);
        set_block1(&mut p, BlockOpt::new(5000, true, 4).unwrap());
        set_uint(&mut p, CoapOption::Size1, 1_300_000);
        let back = decode(&encode(&p, DEFAULT_MAX_MESSAGE).unwrap()).unwrap();
        assert_eq!(
            block1(&back).unwrap(),
            Some(BlockOpt {
                num: 5000,
                more: true,
                szx: 4
            })
        );
        assert_eq!(size1(&back).unwrap(), Some(1_300_000));
        assert_eq!(uri_path(&back).unwrap(), vec!["5", "0", "0"]);
    }

    #[test]
    fn strict_checks() {
        assert!(matches!(
            decode(&[0x40, 0x01]),
            Err(DecodeError::Malformed(_))
        ));
        assert_eq!(decode(&[0x80, 0x01, 0, 1]), Err(DecodeError::Version(2)));
        assert_eq!(
            decode(&[0x41, 0x00, 0, 1, 9]),
            Err(DecodeError::EmptyNotEmpty)
        );
        assert_eq!(
            decode(&[0x40, 0x45, 0, 1, 0xff]),
            Err(DecodeError::MarkerWithoutPayload)
        );
        assert_eq!(
            decode(&[0x40, 0x20, 0, 1]),
            Err(DecodeError::ReservedClass(1))
        );
        assert!(matches!(
            decode(&[0x49, 0x01, 0, 1]),
            Err(DecodeError::Malformed(_))
        ));
        assert!(decode(&[0x70, 0x00, 0, 1]).is_ok(), "an empty RST is valid");
    }

    #[test]
    fn option_errors() {
        let mut p = request(Code::GET, &["fw"]);
        p.add_option(CoapOption::Block2, vec![0x0f]);
        assert!(matches!(
            block2(&p),
            Err(OptionError::Block {
                number: 23,
                source: BlockError::ReservedSzx
            })
        ));
        p.add_option(CoapOption::Block2, vec![0x02]);
        assert_eq!(block2(&p), Err(OptionError::Repeated(23)));
        p.add_option(CoapOption::Size2, vec![1, 2, 3, 4, 5]);
        assert_eq!(size2(&p), Err(OptionError::BadLength(28, 5)));
    }

    #[test]
    fn bare_response() {
        let p = response(Code::NOT_FOUND);
        assert_eq!(code(&p), Code::NOT_FOUND);
        assert!(p.payload.is_empty() && p.options().next().is_none());
    }

    #[test]
    fn codes() {
        assert_eq!(Code::CONTINUE.to_string(), "2.31");
        assert_eq!(Code::REQUEST_ENTITY_TOO_LARGE.to_string(), "4.13");
        assert!(Code::PUT.is_request() && !Code::EMPTY.is_request());
        assert!(Code::CHANGED.is_success() && Code::NOT_FOUND.is_response());
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Ok(p) = decode(&bytes) {
                let _ = block1(&p);
                let _ = block2(&p);
                let _ = size1(&p);
                let _ = uri_path(&p);
            }
        }
    }
}
