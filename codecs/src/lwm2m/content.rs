//! LwM2M content formats for reads (OMA TS Core 1.1 §7.3 "Data Formats",
//! OMA TS Core 1.2 §7.4.6 for LwM2M CBOR): what a child may answer a read
//! of one resource (or one multiple-instance resource) with, decoded into
//! [`Item`]s, and the Accept option the gateway asks with
//! ([`ContentFormat::accept`]).
//!
//! | Content-Format | number | decoded by |
//! |---|---|---|
//! | text/plain | 0 (1541 before registration) | the text, typed by the resource |
//! | application/octet-stream | 42 (1544) | the bytes (opaque and string resources) |
//! | LwM2M TLV | 11542 (1542) | [`decode`], nom, §7.4.3 |
//! | SenML JSON | 110 | RFC 8428 §4-5, serde_json |
//! | SenML CBOR | 112 | RFC 8428 §6, ciborium |
//! | LwM2M CBOR | 11544 | OMA TS Core 1.2 §7.4.6, ciborium |
//!
//! A TLV or plain-text value carries no type: it is read as the type of
//! the resource ([`Item::integer`], [`Item::string`]); SenML and CBOR values
//! are typed and checked against it. The encoders ([`encode`]) write the
//! same formats, for the simulated child and the fixtures.
//!
//! Sizes: a CoAP read answer is at most one datagram (1280 bytes here), and
//! nothing is allocated beyond the payload's own size; nesting is bounded
//! by the path depth (4).

use std::fmt;

use ciborium::Value as Cbor;
use nom::bytes::complete::take;
use nom::number::complete::{be_u16, be_u24, be_u8};
use nom::IResult;

use super::Path;

/// A CoAP Content-Format number (RFC 7252 §12.3), with the ones LwM2M uses
/// named.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ContentFormat(pub u16);

impl ContentFormat {
    /// text/plain; charset=utf-8 (RFC 7252 §12.3).
    pub const TEXT_PLAIN: ContentFormat = ContentFormat(0);
    /// application/link-format (RFC 6690).
    pub const LINK_FORMAT: ContentFormat = ContentFormat(40);
    /// application/octet-stream: LwM2M Opaque (TS Core 1.1 §7.3.2).
    pub const OPAQUE: ContentFormat = ContentFormat(42);
    /// application/senml+json (RFC 8428 §12.3).
    pub const SENML_JSON: ContentFormat = ContentFormat(110);
    /// application/senml+cbor (RFC 8428 §12.3).
    pub const SENML_CBOR: ContentFormat = ContentFormat(112);
    /// application/vnd.oma.lwm2m+tlv (TS Core 1.1 §7.4.3).
    pub const TLV: ContentFormat = ContentFormat(11542);
    /// application/vnd.oma.lwm2m+json, the 1.0 JSON (not decoded here).
    pub const LWM2M_JSON: ContentFormat = ContentFormat(11543);
    /// application/vnd.oma.lwm2m+cbor (TS Core 1.2 §7.4.6).
    pub const LWM2M_CBOR: ContentFormat = ContentFormat(11544);

    /// Names for configuration and logs, with their numbers.
    pub const NAMES: [(&'static str, ContentFormat); 6] = [
        ("text", ContentFormat::TEXT_PLAIN),
        ("opaque", ContentFormat::OPAQUE),
        ("tlv", ContentFormat::TLV),
        ("senml-json", ContentFormat::SENML_JSON),
        ("senml-cbor", ContentFormat::SENML_CBOR),
        ("lwm2m-cbor", ContentFormat::LWM2M_CBOR),
    ];

    /// The format a configuration name stands for.
    pub fn from_name(name: &str) -> Option<ContentFormat> {
        Self::NAMES
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, f)| *f)
    }

    /// Numbers some LwM2M 1.0 clients (early Leshan, Wakaama) still send,
    /// from before IANA registered the OMA formats (1541 text, 1542 TLV,
    /// 1544 opaque; Wakaama `core/internals.h` LWM2M_CONTENT_*_OLD), mapped
    /// onto the registered ones.
    pub fn canonical(self) -> ContentFormat {
        match self.0 {
            1541 => ContentFormat::TEXT_PLAIN,
            1542 => ContentFormat::TLV,
            1544 => ContentFormat::OPAQUE,
            _ => self,
        }
    }

    /// Whether [`decode`] reads this format.
    pub fn is_decoded(self) -> bool {
        matches!(
            self.canonical(),
            ContentFormat::TEXT_PLAIN
                | ContentFormat::OPAQUE
                | ContentFormat::TLV
                | ContentFormat::SENML_JSON
                | ContentFormat::SENML_CBOR
                | ContentFormat::LWM2M_CBOR
        )
    }

    /// The Accept option for a read, from what the client announced at
    /// registration (`ct` on its root link, TS Core 1.1 §6.2.1.1) and its
    /// LwM2M version:
    /// - one value (`multiple = false`): text/plain, which LwM2M 1.0 and
    ///   1.1 clients support for single resources (TS Core 1.1 §7.3.1);
    ///   a 1.2 client that lists formats without text/plain gets the
    ///   first of them we decode;
    /// - a multiple-instance resource (`/5/0/8`): the first of SenML CBOR,
    ///   SenML JSON, LwM2M CBOR, TLV it lists, else TLV (mandatory in 1.0,
    ///   TS Core 1.0 §6.4).
    pub fn accept(ct: &[u16], minor_1_2_or_later: bool, multiple: bool) -> ContentFormat {
        let listed = |f: ContentFormat| ct.iter().any(|c| ContentFormat(*c).canonical() == f);
        if !multiple {
            if !minor_1_2_or_later || ct.is_empty() || listed(ContentFormat::TEXT_PLAIN) {
                return ContentFormat::TEXT_PLAIN;
            }
            return ct
                .iter()
                .map(|c| ContentFormat(*c).canonical())
                .find(|f| f.is_decoded())
                .unwrap_or(ContentFormat::TEXT_PLAIN);
        }
        [
            ContentFormat::SENML_CBOR,
            ContentFormat::SENML_JSON,
            ContentFormat::LWM2M_CBOR,
            ContentFormat::TLV,
        ]
        .into_iter()
        .find(|f| listed(*f))
        .unwrap_or(ContentFormat::TLV)
    }
}

impl fmt::Display for ContentFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match Self::NAMES.iter().find(|(_, c)| *c == self.canonical()) {
            Some((n, _)) => write!(f, "{n} ({})", self.0),
            None => write!(f, "content format {}", self.0),
        }
    }
}

/// A typed value (SenML, CBOR) or the bytes of an untyped one (plain
/// text, TLV, opaque), which the resource's type interprets.
#[derive(Debug, Clone, PartialEq)]
pub enum Raw {
    /// Plain text (TS Core 1.1 §7.3.1).
    Text(String),
    /// A TLV value's bytes (TS Core 1.1 §7.4.3, Table 7.4.3-2).
    Tlv(Vec<u8>),
    /// Opaque bytes (TS Core 1.1 §7.3.2).
    Opaque(Vec<u8>),
    /// A typed value from SenML or LwM2M CBOR.
    Value(Value),
}

/// A typed value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// Integer.
    Integer(i64),
    /// Unsigned integer above `i64::MAX`.
    Unsigned(u64),
    /// Float.
    Float(f64),
    /// Boolean.
    Boolean(bool),
    /// String.
    String(String),
    /// Opaque.
    Opaque(Vec<u8>),
    /// Object link `object:instance`.
    ObjLnk(u16, u16),
}

/// A resource (instance) path with its optional resource instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ItemPath {
    /// `/o/i/r`.
    pub resource: Path,
    /// The resource instance of a multiple-instance resource.
    pub instance: Option<u16>,
}

impl fmt::Display for ItemPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.resource)?;
        if let Some(i) = self.instance {
            write!(f, "/{i}")?;
        }
        Ok(())
    }
}

/// One value of a read answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    /// Whose value.
    pub path: ItemPath,
    /// The value.
    pub raw: Raw,
}

/// Why a read answer cannot be understood (one error per decode).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContentError {
    /// A Content-Format this gateway does not decode.
    #[error("{0} is not a format the gateway reads")]
    Unsupported(ContentFormat),
    /// Not UTF-8 where text is required.
    #[error("value is not UTF-8")]
    NotUtf8,
    /// Malformed TLV at this byte offset.
    #[error("bad TLV at byte {offset}: {what}")]
    Tlv {
        /// Byte offset in the payload.
        offset: usize,
        /// What is wrong.
        what: &'static str,
    },
    /// Malformed SenML JSON.
    #[error("bad SenML JSON: {0}")]
    Json(String),
    /// Malformed CBOR (SenML CBOR or LwM2M CBOR).
    #[error("bad CBOR: {0}")]
    Cbor(String),
    /// A SenML name or CBOR key path that is not an LwM2M path.
    #[error("'{0}' is not an LwM2M resource path")]
    Name(String),
    /// The answer has no value for the resource read.
    #[error("no value for {0} in the answer")]
    Missing(Path),
    /// More values than a single resource holds.
    #[error("{1} values for the single resource {0}")]
    Several(Path, usize),
    /// A value of another type than the resource's.
    #[error("{path}: {found} where {want} was expected")]
    Type {
        /// Which value.
        path: ItemPath,
        /// The resource's type.
        want: &'static str,
        /// What the answer held.
        found: &'static str,
    },
    /// A TLV integer of a length other than 1, 2, 4 or 8 (§7.4.3).
    #[error("{0}: TLV integer of {1} bytes")]
    IntegerLength(ItemPath, usize),
    /// Plain text that is not a decimal integer (§7.3.1).
    #[error("{0}: '{1}' is not an integer")]
    NotInteger(ItemPath, String),
    /// A value a value cannot be written in this format (encoders).
    #[error("{0} cannot carry this value")]
    Unencodable(ContentFormat),
}

/// Decodes a read answer of `format` to `read` (the path asked for, which
/// names the values of formats that do not: plain text, opaque, and TLV
/// entries below it).
pub fn decode(
    format: ContentFormat,
    read: Path,
    payload: &[u8],
) -> Result<Vec<Item>, ContentError> {
    let at = ItemPath {
        resource: read,
        instance: None,
    };
    match format.canonical() {
        ContentFormat::TEXT_PLAIN => {
            let s = std::str::from_utf8(payload).map_err(|_| ContentError::NotUtf8)?;
            Ok(vec![Item {
                path: at,
                raw: Raw::Text(s.to_owned()),
            }])
        }
        ContentFormat::OPAQUE => Ok(vec![Item {
            path: at,
            raw: Raw::Opaque(payload.to_vec()),
        }]),
        ContentFormat::TLV => tlv::decode(read, payload),
        ContentFormat::SENML_JSON => senml::decode_json(payload),
        ContentFormat::SENML_CBOR => senml::decode_cbor(payload),
        ContentFormat::LWM2M_CBOR => lwcbor::decode(payload),
        other => Err(ContentError::Unsupported(other)),
    }
}

/// The one value of single resource `path` in a decoded answer.
pub fn single(items: &[Item], path: Path) -> Result<&Item, ContentError> {
    let mut mine = items
        .iter()
        .filter(|i| i.path.resource == path && i.path.instance.is_none());
    match (mine.next(), mine.count()) {
        (Some(i), 0) => Ok(i),
        (None, _) => Err(ContentError::Missing(path)),
        (Some(_), n) => Err(ContentError::Several(path, n + 1)),
    }
}

impl Item {
    /// The value as an LwM2M Integer (TS Core 1.1 Appendix C).
    pub fn integer(&self) -> Result<i64, ContentError> {
        let wrong = |found| ContentError::Type {
            path: self.path,
            want: "an integer",
            found,
        };
        match &self.raw {
            Raw::Text(t) => t
                .trim()
                .parse::<i64>()
                .map_err(|_| ContentError::NotInteger(self.path, t.trim().to_owned())),
            // §7.4.3: integers are 1, 2, 4 or 8 bytes, two's complement,
            // network byte order.
            Raw::Tlv(b) => match b.len() {
                1 => Ok(i64::from(b[0] as i8)),
                2 => Ok(i64::from(i16::from_be_bytes([b[0], b[1]]))),
                4 => Ok(i64::from(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))),
                8 => Ok(i64::from_be_bytes(b[..8].try_into().unwrap_or([0; 8]))),
                n => Err(ContentError::IntegerLength(self.path, n)),
            },
            Raw::Opaque(_) => Err(wrong("opaque bytes")),
            Raw::Value(v) => match v {
                Value::Integer(i) => Ok(*i),
                // A float with no fraction is an integer to SenML JSON
                // writers that only know doubles (RFC 8428 §4.5.4).
                Value::Float(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => Ok(*f as i64),
                Value::Unsigned(_) => Err(wrong("an integer beyond 64 bits")),
                other => Err(wrong(other.kind())),
            },
        }
    }

    /// The value as an LwM2M String (UTF-8).
    pub fn string(&self) -> Result<String, ContentError> {
        match &self.raw {
            Raw::Text(t) => Ok(t.clone()),
            Raw::Tlv(b) | Raw::Opaque(b) => std::str::from_utf8(b)
                .map(str::to_owned)
                .map_err(|_| ContentError::NotUtf8),
            Raw::Value(Value::String(s)) => Ok(s.clone()),
            Raw::Value(other) => Err(ContentError::Type {
                path: self.path,
                want: "a string",
                found: other.kind(),
            }),
        }
    }
}

impl Value {
    fn kind(&self) -> &'static str {
        match self {
            Value::Integer(_) | Value::Unsigned(_) => "an integer",
            Value::Float(_) => "a float",
            Value::Boolean(_) => "a boolean",
            Value::String(_) => "a string",
            Value::Opaque(_) => "opaque bytes",
            Value::ObjLnk(..) => "an object link",
        }
    }
}

/// `/o/i/r[/ri]` from a SenML name or CBOR key path.
fn item_path(parts: &[u16], name: impl FnOnce() -> String) -> Result<ItemPath, ContentError> {
    match parts {
        [o, i, r] | [o, i, r, _] => Ok(ItemPath {
            resource: Path {
                object: *o,
                instance: *i,
                resource: *r,
            },
            instance: parts.get(3).copied(),
        }),
        _ => Err(ContentError::Name(name())),
    }
}

/// LwM2M TLV (TS Core 1.1 §7.4.3).
mod tlv {
    use super::*;

    /// Identifier types, bits 7-6 of the type byte (Table 7.4.3-1).
    const OBJECT_INSTANCE: u8 = 0;
    const RESOURCE_INSTANCE: u8 = 1;
    const MULTIPLE_RESOURCE: u8 = 2;
    const RESOURCE: u8 = 3;

    struct Entry<'a> {
        kind: u8,
        id: u16,
        value: &'a [u8],
    }

    /// One TLV: type byte, 8/16-bit identifier, 0-3 length bytes (or the
    /// length in bits 2-0), value.
    fn entry(i: &[u8]) -> IResult<&[u8], Entry<'_>> {
        let (i, t) = be_u8(i)?;
        let (i, id) = if t & 0x20 != 0 {
            be_u16(i)?
        } else {
            let (i, b) = be_u8(i)?;
            (i, u16::from(b))
        };
        let (i, len) = match (t >> 3) & 0x03 {
            0 => (i, u32::from(t & 0x07)),
            1 => be_u8(i).map(|(i, l)| (i, u32::from(l)))?,
            2 => be_u16(i).map(|(i, l)| (i, u32::from(l)))?,
            _ => be_u24(i)?,
        };
        let (i, value) = take(len as usize)(i)?;
        Ok((
            i,
            Entry {
                kind: t >> 6,
                id,
                value,
            },
        ))
    }

    /// All entries of `bytes` (which starts at `base` in the payload).
    fn entries(bytes: &[u8], base: usize) -> Result<Vec<(usize, Entry<'_>)>, ContentError> {
        let mut out = Vec::new();
        let mut rest = bytes;
        while !rest.is_empty() {
            let at = base + bytes.len() - rest.len();
            let (r, e) = entry(rest).map_err(|_| ContentError::Tlv {
                offset: at,
                what: "truncated entry",
            })?;
            out.push((at, e));
            rest = r;
        }
        Ok(out)
    }

    fn value(path: ItemPath, e: &Entry<'_>) -> Item {
        Item {
            path,
            raw: Raw::Tlv(e.value.to_vec()),
        }
    }

    /// The resources (with values or multiple) inside instance `inst`.
    fn resources(
        read: Path,
        inst: u16,
        list: Vec<(usize, Entry<'_>)>,
        payload: &[u8],
        out: &mut Vec<Item>,
    ) -> Result<(), ContentError> {
        for (at, e) in list {
            let resource = Path {
                object: read.object,
                instance: inst,
                resource: e.id,
            };
            match e.kind {
                RESOURCE => out.push(value(
                    ItemPath {
                        resource,
                        instance: None,
                    },
                    &e,
                )),
                MULTIPLE_RESOURCE => instances(resource, at, &e, payload, out)?,
                _ => {
                    return Err(ContentError::Tlv {
                        offset: at,
                        what: "not a resource inside an object instance",
                    })
                }
            }
        }
        Ok(())
    }

    /// The resource instances inside multiple resource `e`.
    fn instances(
        resource: Path,
        at: usize,
        e: &Entry<'_>,
        payload: &[u8],
        out: &mut Vec<Item>,
    ) -> Result<(), ContentError> {
        let start = value_start(payload, at, e.value.len()).unwrap_or(at);
        for (at, ri) in entries(e.value, start)? {
            if ri.kind != RESOURCE_INSTANCE {
                return Err(ContentError::Tlv {
                    offset: at,
                    what: "not a resource instance inside a multiple resource",
                });
            }
            out.push(value(
                ItemPath {
                    resource,
                    instance: Some(ri.id),
                },
                &ri,
            ));
        }
        Ok(())
    }

    /// Where the value of the entry at `at` starts (for error offsets).
    fn value_start(payload: &[u8], at: usize, len: usize) -> Option<usize> {
        let t = *payload.get(at)?;
        let id = if t & 0x20 != 0 { 2 } else { 1 };
        let l = match (t >> 3) & 3 {
            0 => 0,
            n => usize::from(n),
        };
        let s = at + 1 + id + l;
        (s + len <= payload.len()).then_some(s)
    }

    /// A TLV answer to a read of `read`: resources alone, or inside their
    /// object instance, and multiple resources with their instances.
    pub(super) fn decode(read: Path, payload: &[u8]) -> Result<Vec<Item>, ContentError> {
        let mut out = Vec::new();
        for (at, e) in entries(payload, 0)? {
            match e.kind {
                OBJECT_INSTANCE => {
                    let start = value_start(payload, at, e.value.len()).unwrap_or(at);
                    let inner = entries(e.value, start)?;
                    resources(read, e.id, inner, payload, &mut out)?;
                }
                // A read of one resource instance: /o/i/r/ri.
                RESOURCE_INSTANCE => out.push(value(
                    ItemPath {
                        resource: read,
                        instance: Some(e.id),
                    },
                    &e,
                )),
                _ => resources(read, read.instance, vec![(at, e)], payload, &mut out)?,
            }
        }
        Ok(out)
    }

    /// One TLV entry's bytes.
    pub(super) fn encode_entry(kind: u8, id: u16, value: &[u8], out: &mut Vec<u8>) {
        let mut t = kind << 6;
        if id > 0xff {
            t |= 0x20;
        }
        let len = value.len();
        let len_bytes: &[u8] = &(len as u32).to_be_bytes();
        let len_field: &[u8] = if len < 8 {
            t |= len as u8;
            &[]
        } else if len <= 0xff {
            t |= 1 << 3;
            &len_bytes[3..]
        } else if len <= 0xffff {
            t |= 2 << 3;
            &len_bytes[2..]
        } else {
            t |= 3 << 3;
            &len_bytes[1..]
        };
        out.push(t);
        if id > 0xff {
            out.extend_from_slice(&id.to_be_bytes());
        } else {
            out.push(id as u8);
        }
        out.extend_from_slice(len_field);
        out.extend_from_slice(value);
    }

    pub(super) const KIND_RESOURCE: u8 = RESOURCE;
    pub(super) const KIND_MULTIPLE: u8 = MULTIPLE_RESOURCE;
    pub(super) const KIND_INSTANCE: u8 = RESOURCE_INSTANCE;
}

/// SenML JSON and SenML CBOR (RFC 8428), as LwM2M 1.1 uses them (TS Core
/// 1.1 §7.4.4, §7.4.5): names are `bn` + `n`, full LwM2M paths.
mod senml {
    use super::*;
    use serde_json::Value as Json;

    /// SenML CBOR labels (RFC 8428 §6, Table 6).
    const BN: i128 = -2;
    const N: i128 = 0;
    const V: i128 = 2;
    const VS: i128 = 3;
    const VB: i128 = 4;
    const VD: i128 = 8;

    fn parse_name(name: &str) -> Result<ItemPath, ContentError> {
        let bad = || ContentError::Name(name.to_owned());
        let parts: Vec<u16> = name
            .strip_prefix('/')
            .ok_or_else(bad)?
            .split('/')
            .map(|p| p.parse::<u16>().map_err(|_| bad()))
            .collect::<Result<_, _>>()?;
        item_path(&parts, || name.to_owned())
    }

    /// `vlo` is `"object:instance"` (TS Core 1.1 §7.4.4).
    fn objlnk(s: &str) -> Option<Value> {
        let (o, i) = s.split_once(':')?;
        Some(Value::ObjLnk(o.parse().ok()?, i.parse().ok()?))
    }

    pub(super) fn decode_json(payload: &[u8]) -> Result<Vec<Item>, ContentError> {
        let jerr = |e: &str| ContentError::Json(e.to_owned());
        let doc: Json = serde_json::from_slice(payload).map_err(|e| jerr(&e.to_string()))?;
        let records = doc
            .as_array()
            .ok_or_else(|| jerr("not an array of records"))?;
        let mut bn = String::new();
        let mut out = Vec::with_capacity(records.len());
        for r in records {
            let r = r
                .as_object()
                .ok_or_else(|| jerr("a record is not an object"))?;
            if let Some(b) = r.get("bn") {
                bn = b
                    .as_str()
                    .ok_or_else(|| jerr("bn is not a string"))?
                    .to_owned();
            }
            let n = match r.get("n") {
                Some(n) => n.as_str().ok_or_else(|| jerr("n is not a string"))?,
                None => "",
            };
            let path = parse_name(&format!("{bn}{n}"))?;
            let value = if let Some(v) = r.get("v") {
                let num = v.as_number().ok_or_else(|| jerr("v is not a number"))?;
                match (num.as_i64(), num.as_u64(), num.as_f64()) {
                    (Some(i), _, _) => Value::Integer(i),
                    (None, Some(u), _) => Value::Unsigned(u),
                    (_, _, Some(f)) => Value::Float(f),
                    _ => return Err(jerr("v is not a usable number")),
                }
            } else if let Some(v) = r.get("vs") {
                Value::String(
                    v.as_str()
                        .ok_or_else(|| jerr("vs is not a string"))?
                        .to_owned(),
                )
            } else if let Some(v) = r.get("vb") {
                Value::Boolean(v.as_bool().ok_or_else(|| jerr("vb is not a boolean"))?)
            } else if let Some(v) = r.get("vd") {
                let s = v.as_str().ok_or_else(|| jerr("vd is not a string"))?;
                // RFC 8428 §5: base64url, padding optional.
                use base64::Engine;
                let b = base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(s.trim_end_matches('='))
                    .map_err(|_| jerr("vd is not base64url"))?;
                Value::Opaque(b)
            } else if let Some(v) = r.get("vlo") {
                v.as_str()
                    .and_then(objlnk)
                    .ok_or_else(|| jerr("vlo is not 'object:instance'"))?
            } else {
                return Err(jerr("a record without a value"));
            };
            out.push(Item {
                path,
                raw: Raw::Value(value),
            });
        }
        Ok(out)
    }

    fn label(k: &Cbor) -> Option<Result<i128, &str>> {
        match k {
            Cbor::Integer(i) => Some(Ok(i128::from(*i))),
            Cbor::Text(t) => Some(Err(t.as_str())),
            _ => None,
        }
    }

    pub(super) fn decode_cbor(payload: &[u8]) -> Result<Vec<Item>, ContentError> {
        let cerr = |e: &str| ContentError::Cbor(e.to_owned());
        let doc = cbor_value(payload)?;
        let Cbor::Array(records) = doc else {
            return Err(cerr("not an array of records"));
        };
        let mut bn = String::new();
        let mut out = Vec::with_capacity(records.len());
        for r in records {
            let Cbor::Map(fields) = r else {
                return Err(cerr("a record is not a map"));
            };
            let mut n = String::new();
            let mut value = None;
            for (k, v) in fields {
                let v = match (
                    label(&k).ok_or_else(|| cerr("a label is not an integer"))?,
                    v,
                ) {
                    (Ok(BN), Cbor::Text(t)) => {
                        bn = t;
                        continue;
                    }
                    (Ok(N), Cbor::Text(t)) => {
                        n = t;
                        continue;
                    }
                    (Ok(V), v) => number(v).ok_or_else(|| cerr("v is not a number"))?,
                    (Ok(VS), Cbor::Text(t)) => Value::String(t),
                    (Ok(VB), Cbor::Bool(b)) => Value::Boolean(b),
                    (Ok(VD), Cbor::Bytes(b)) => Value::Opaque(b),
                    (Err("vlo"), Cbor::Text(t)) => {
                        objlnk(&t).ok_or_else(|| cerr("vlo is not 'object:instance'"))?
                    }
                    (Ok(BN | N | VS | VB | VD), _) | (Err("vlo"), _) => {
                        return Err(cerr("a field of the wrong type"))
                    }
                    // Other labels (times, units, sums) do not name or
                    // carry the value.
                    _ => continue,
                };
                value = Some(v);
            }
            let value = value.ok_or_else(|| cerr("a record without a value"))?;
            out.push(Item {
                path: parse_name(&format!("{bn}{n}"))?,
                raw: Raw::Value(value),
            });
        }
        Ok(out)
    }

    pub(super) fn number(v: Cbor) -> Option<Value> {
        match v {
            Cbor::Integer(i) => {
                let i = i128::from(i);
                Some(match i64::try_from(i) {
                    Ok(i) => Value::Integer(i),
                    Err(_) => Value::Unsigned(u64::try_from(i).ok()?),
                })
            }
            Cbor::Float(f) => Some(Value::Float(f)),
            _ => None,
        }
    }

    pub(super) fn encode_json(items: &[(ItemPath, Value)]) -> Vec<u8> {
        let records: Vec<Json> = items
            .iter()
            .map(|(p, v)| {
                let mut m = serde_json::Map::new();
                m.insert("n".into(), Json::String(p.to_string()));
                let (k, j) = match v {
                    Value::Integer(i) => ("v", Json::from(*i)),
                    Value::Unsigned(u) => ("v", Json::from(*u)),
                    Value::Float(f) => ("v", Json::from(*f)),
                    Value::Boolean(b) => ("vb", Json::Bool(*b)),
                    Value::String(s) => ("vs", Json::String(s.clone())),
                    Value::Opaque(b) => {
                        use base64::Engine;
                        let s = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
                        ("vd", Json::String(s))
                    }
                    Value::ObjLnk(o, i) => ("vlo", Json::String(format!("{o}:{i}"))),
                };
                m.insert(k.into(), j);
                Json::Object(m)
            })
            .collect();
        serde_json::to_vec(&records).unwrap_or_default()
    }

    pub(super) fn encode_cbor(items: &[(ItemPath, Value)]) -> Vec<u8> {
        let records = items
            .iter()
            .map(|(p, v)| {
                let (k, c) = match v {
                    Value::Integer(i) => (Cbor::from(V as i64), Cbor::from(*i)),
                    Value::Unsigned(u) => (Cbor::from(V as i64), Cbor::from(*u)),
                    Value::Float(f) => (Cbor::from(V as i64), Cbor::Float(*f)),
                    Value::Boolean(b) => (Cbor::from(VB as i64), Cbor::Bool(*b)),
                    Value::String(s) => (Cbor::from(VS as i64), Cbor::Text(s.clone())),
                    Value::Opaque(b) => (Cbor::from(VD as i64), Cbor::Bytes(b.clone())),
                    Value::ObjLnk(o, i) => {
                        (Cbor::Text("vlo".into()), Cbor::Text(format!("{o}:{i}")))
                    }
                };
                Cbor::Map(vec![
                    (Cbor::from(N as i64), Cbor::Text(p.to_string())),
                    (k, c),
                ])
            })
            .collect();
        cbor_bytes(&Cbor::Array(records))
    }
}

fn cbor_value(payload: &[u8]) -> Result<Cbor, ContentError> {
    let mut rest = payload;
    let v: Cbor =
        ciborium::de::from_reader(&mut rest).map_err(|e| ContentError::Cbor(e.to_string()))?;
    if !rest.is_empty() {
        return Err(ContentError::Cbor(format!(
            "{} bytes after the value",
            rest.len()
        )));
    }
    Ok(v)
}

fn cbor_bytes(v: &Cbor) -> Vec<u8> {
    let mut out = Vec::new();
    // Writing to a Vec cannot fail.
    let _ = ciborium::ser::into_writer(v, &mut out);
    out
}

/// LwM2M CBOR (TS Core 1.2 §7.4.6): nested maps keyed by path components;
/// a key is one component (an unsigned integer) or several (an array of
/// them), and a value is a map one level deeper or the resource's value.
mod lwcbor {
    use super::*;

    fn key(k: &Cbor, into: &mut Vec<u16>) -> Result<(), ContentError> {
        let one = |v: &Cbor| match v {
            Cbor::Integer(i) => u16::try_from(i128::from(*i)).ok(),
            _ => None,
        };
        let bad = || ContentError::Cbor("a key that is not a path component".into());
        match k {
            Cbor::Array(parts) => {
                for p in parts {
                    into.push(one(p).ok_or_else(bad)?);
                }
            }
            k => into.push(one(k).ok_or_else(bad)?),
        }
        if into.len() > 4 {
            return Err(ContentError::Cbor(
                "a path deeper than a resource instance".into(),
            ));
        }
        Ok(())
    }

    fn walk(prefix: &[u16], v: Cbor, out: &mut Vec<Item>) -> Result<(), ContentError> {
        let name = |p: &[u16]| p.iter().map(|c| format!("/{c}")).collect::<String>();
        let value = match v {
            Cbor::Map(entries) => {
                for (k, v) in entries {
                    let mut p = prefix.to_vec();
                    key(&k, &mut p)?;
                    walk(&p, v, out)?;
                }
                return Ok(());
            }
            Cbor::Text(t) => Value::String(t),
            Cbor::Bool(b) => Value::Boolean(b),
            Cbor::Bytes(b) => Value::Opaque(b),
            // Time values are tag 1 around an integer (§7.4.6).
            Cbor::Tag(_, inner) => senml::number(*inner)
                .ok_or_else(|| ContentError::Cbor("a tag around a non-number".into()))?,
            v => senml::number(v).ok_or_else(|| ContentError::Cbor("an unusable value".into()))?,
        };
        out.push(Item {
            path: item_path(prefix, || name(prefix))?,
            raw: Raw::Value(value),
        });
        Ok(())
    }

    pub(super) fn decode(payload: &[u8]) -> Result<Vec<Item>, ContentError> {
        let doc = cbor_value(payload)?;
        if !matches!(doc, Cbor::Map(_)) {
            return Err(ContentError::Cbor("not a map".into()));
        }
        let mut out = Vec::new();
        walk(&[], doc, &mut out)?;
        Ok(out)
    }

    pub(super) fn encode(items: &[(ItemPath, Value)]) -> Vec<u8> {
        // One entry per value with its whole path as an array key: the
        // shortest form the format allows for a few values.
        let entries = items
            .iter()
            .map(|(p, v)| {
                let r = p.resource;
                let mut k = vec![
                    Cbor::from(r.object),
                    Cbor::from(r.instance),
                    Cbor::from(r.resource),
                ];
                if let Some(i) = p.instance {
                    k.push(Cbor::from(i));
                }
                let c = match v {
                    Value::Integer(i) => Cbor::from(*i),
                    Value::Unsigned(u) => Cbor::from(*u),
                    Value::Float(f) => Cbor::Float(*f),
                    Value::Boolean(b) => Cbor::Bool(*b),
                    Value::String(s) => Cbor::Text(s.clone()),
                    Value::Opaque(b) => Cbor::Bytes(b.clone()),
                    Value::ObjLnk(o, i) => Cbor::Text(format!("{o}:{i}")),
                };
                (Cbor::Array(k), c)
            })
            .collect();
        cbor_bytes(&Cbor::Map(entries))
    }
}

/// Encodes the values of a read answer in `format`: what a child sends
/// (the simulated child, fixtures). Plain text and opaque carry exactly one
/// value; TLV writes single resources as resources and instances inside a
/// multiple resource.
pub fn encode(format: ContentFormat, items: &[(ItemPath, Value)]) -> Result<Vec<u8>, ContentError> {
    let one = || match items {
        [(_, v)] => Ok(v),
        _ => Err(ContentError::Unencodable(format)),
    };
    match format.canonical() {
        ContentFormat::TEXT_PLAIN => Ok(match one()? {
            Value::Integer(i) => i.to_string().into_bytes(),
            Value::Unsigned(u) => u.to_string().into_bytes(),
            Value::Float(f) => f.to_string().into_bytes(),
            Value::Boolean(b) => {
                if *b {
                    b"1".to_vec()
                } else {
                    b"0".to_vec()
                }
            }
            Value::String(s) => s.clone().into_bytes(),
            Value::ObjLnk(o, i) => format!("{o}:{i}").into_bytes(),
            Value::Opaque(_) => return Err(ContentError::Unencodable(format)),
        }),
        ContentFormat::OPAQUE => match one()? {
            Value::Opaque(b) => Ok(b.clone()),
            Value::String(s) => Ok(s.clone().into_bytes()),
            _ => Err(ContentError::Unencodable(format)),
        },
        ContentFormat::TLV => Ok(encode_tlv(items)),
        ContentFormat::SENML_JSON => Ok(senml::encode_json(items)),
        ContentFormat::SENML_CBOR => Ok(senml::encode_cbor(items)),
        ContentFormat::LWM2M_CBOR => Ok(lwcbor::encode(items)),
        other => Err(ContentError::Unsupported(other)),
    }
}

fn tlv_value(v: &Value) -> Vec<u8> {
    match v {
        // §7.4.3: the shortest of 1, 2, 4, 8 bytes.
        Value::Integer(i) => {
            let i = *i;
            if let Ok(b) = i8::try_from(i) {
                b.to_be_bytes().to_vec()
            } else if let Ok(b) = i16::try_from(i) {
                b.to_be_bytes().to_vec()
            } else if let Ok(b) = i32::try_from(i) {
                b.to_be_bytes().to_vec()
            } else {
                i.to_be_bytes().to_vec()
            }
        }
        Value::Unsigned(u) => u.to_be_bytes().to_vec(),
        Value::Float(f) => f.to_be_bytes().to_vec(),
        Value::Boolean(b) => vec![u8::from(*b)],
        Value::String(s) => s.as_bytes().to_vec(),
        Value::Opaque(b) => b.clone(),
        Value::ObjLnk(o, i) => [o.to_be_bytes(), i.to_be_bytes()].concat(),
    }
}

fn encode_tlv(items: &[(ItemPath, Value)]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < items.len() {
        let (p, v) = &items[i];
        match p.instance {
            None => tlv::encode_entry(
                tlv::KIND_RESOURCE,
                p.resource.resource,
                &tlv_value(v),
                &mut out,
            ),
            Some(_) => {
                // The run of instances of this resource, in one multiple resource.
                let mut inner = Vec::new();
                while let Some((q, w)) = items.get(i).filter(|(q, _)| q.resource == p.resource) {
                    tlv::encode_entry(
                        tlv::KIND_INSTANCE,
                        q.instance.unwrap_or(0),
                        &tlv_value(w),
                        &mut inner,
                    );
                    i += 1;
                }
                tlv::encode_entry(tlv::KIND_MULTIPLE, p.resource.resource, &inner, &mut out);
                continue;
            }
        }
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hex;
    use proptest::prelude::*;

    fn res(p: Path) -> ItemPath {
        ItemPath {
            resource: p,
            instance: None,
        }
    }

    fn read_int(f: ContentFormat, p: Path, bytes: &[u8]) -> Result<i64, ContentError> {
        single(&decode(f, p, bytes)?, p)?.integer()
    }

    fn read_str(f: ContentFormat, p: Path, bytes: &[u8]) -> Result<String, ContentError> {
        single(&decode(f, p, bytes)?, p)?.string()
    }

    #[test]
    fn tlv_examples_of_the_spec() {
        // TS Core 1.1 §7.4.3.2 example: a single resource /3/0/0 "Open
        // Mobile Alliance" is `C8 00 14 4F 70 65 6E ...` (8-bit length).
        let p = Path {
            object: 3,
            instance: 0,
            resource: 0,
        };
        let mut b = hex::parse("c8 00 14").unwrap();
        b.extend_from_slice(b"Open Mobile Alliance");
        assert_eq!(
            read_str(ContentFormat::TLV, p, &b).unwrap(),
            "Open Mobile Alliance"
        );
        // /5/0/3 = 2, one byte: `C1 03 02`.
        assert_eq!(
            read_int(ContentFormat::TLV, Path::STATE, &[0xc1, 0x03, 0x02]).unwrap(),
            2
        );
        // The same inside its object instance: `08 00 03 C1 03 02`.
        let wrapped = hex::parse("08 00 03 c1 03 02").unwrap();
        assert_eq!(
            read_int(ContentFormat::TLV, Path::STATE, &wrapped).unwrap(),
            2
        );
        // 16-bit identifier and 16-bit length, 2-byte integer -300.
        let b = hex::parse("f0 00 05 00 02 fe d4").unwrap();
        let p = Path {
            object: 3,
            instance: 0,
            resource: 5,
        };
        assert_eq!(read_int(ContentFormat::TLV, p, &b).unwrap(), -300);
        // /5/0/8 multiple: instances 0 = 0 (CoAP) and 1 = 1 (CoAPS), §7.4.3.2's shape
        // `86 08 41 00 00 41 01 01`.
        let b = hex::parse("86 08 41 00 00 41 01 01").unwrap();
        let items = decode(ContentFormat::TLV, Path::PROTOCOL_SUPPORT, &b).unwrap();
        let v: Vec<_> = items
            .iter()
            .map(|i| (i.path.instance, i.integer().unwrap()))
            .collect();
        assert_eq!(v, [(Some(0), 0), (Some(1), 1)]);
    }

    #[test]
    fn bad_tlv_is_an_error_with_its_offset() {
        assert_eq!(
            decode(ContentFormat::TLV, Path::STATE, &[0xc1, 0x03]),
            Err(ContentError::Tlv {
                offset: 0,
                what: "truncated entry"
            })
        );
        // A 24-bit length that lies.
        assert!(decode(
            ContentFormat::TLV,
            Path::STATE,
            &[0xd8, 0x03, 0xff, 0xff, 0xff, 1]
        )
        .is_err());
        // A resource instance inside an object instance.
        assert!(matches!(
            decode(
                ContentFormat::TLV,
                Path::STATE,
                &hex::parse("08 00 03 41 03 02").unwrap()
            ),
            Err(ContentError::Tlv { offset: 3, .. })
        ));
        // A 3-byte integer.
        assert_eq!(
            read_int(ContentFormat::TLV, Path::STATE, &[0xc3, 0x03, 0, 0, 2]),
            Err(ContentError::IntegerLength(res(Path::STATE), 3))
        );
    }

    #[test]
    fn senml_json_and_cbor() {
        let j = br#"[{"bn":"/5/0/","n":"3","v":2}]"#;
        assert_eq!(
            read_int(ContentFormat::SENML_JSON, Path::STATE, j).unwrap(),
            2
        );
        let j = br#"[{"n":"/3/0/3","vs":"1.0.2"}]"#;
        assert_eq!(
            read_str(ContentFormat::SENML_JSON, Path::FIRMWARE_VERSION, j).unwrap(),
            "1.0.2"
        );
        // RFC 8428 §6: [{-2: "/5/0/", 0: "3", 2: 2}]
        let c = hex::parse("81 a3 21 65 2f 35 2f 30 2f 00 61 33 02 02").unwrap();
        assert_eq!(
            read_int(ContentFormat::SENML_CBOR, Path::STATE, &c).unwrap(),
            2
        );
        // Type mismatch: a string where an integer is read.
        let j = br#"[{"n":"/5/0/3","vs":"2"}]"#;
        assert!(matches!(
            read_int(ContentFormat::SENML_JSON, Path::STATE, j),
            Err(ContentError::Type { .. })
        ));
        // A value for another resource only.
        let j = br#"[{"n":"/5/0/5","v":0}]"#;
        assert_eq!(
            read_int(ContentFormat::SENML_JSON, Path::STATE, j),
            Err(ContentError::Missing(Path::STATE))
        );
        assert!(matches!(
            decode(ContentFormat::SENML_JSON, Path::STATE, b"{}"),
            Err(ContentError::Json(_))
        ));
        assert!(matches!(
            decode(
                ContentFormat::SENML_JSON,
                Path::STATE,
                br#"[{"n":"5/0/3","v":1}]"#
            ),
            Err(ContentError::Name(_))
        ));
        assert!(matches!(
            decode(ContentFormat::SENML_CBOR, Path::STATE, &[0x81]),
            Err(ContentError::Cbor(_))
        ));
    }

    #[test]
    fn lwm2m_cbor_nested_and_array_keys() {
        // {5: {0: {3: 2}}}
        let c = hex::parse("a1 05 a1 00 a1 03 02").unwrap();
        assert_eq!(
            read_int(ContentFormat::LWM2M_CBOR, Path::STATE, &c).unwrap(),
            2
        );
        // {[3, 0, 3]: "2.0"}
        let c = hex::parse("a1 83 03 00 03 63 32 2e 30").unwrap();
        assert_eq!(
            read_str(ContentFormat::LWM2M_CBOR, Path::FIRMWARE_VERSION, &c).unwrap(),
            "2.0"
        );
        // Too deep.
        let c = hex::parse("a1 85 01 01 01 01 01 00").unwrap();
        assert!(matches!(
            decode(ContentFormat::LWM2M_CBOR, Path::STATE, &c),
            Err(ContentError::Cbor(_))
        ));
        // Not a map.
        assert!(decode(ContentFormat::LWM2M_CBOR, Path::STATE, &[0x02]).is_err());
    }

    #[test]
    fn text_opaque_and_unknown() {
        assert_eq!(
            read_int(ContentFormat::TEXT_PLAIN, Path::STATE, b" 2\n").unwrap(),
            2
        );
        assert_eq!(read_int(ContentFormat(1541), Path::STATE, b"3").unwrap(), 3);
        assert_eq!(
            read_str(ContentFormat::OPAQUE, Path::FIRMWARE_VERSION, b"v2").unwrap(),
            "v2"
        );
        assert!(matches!(
            read_int(ContentFormat::OPAQUE, Path::STATE, b"\x02"),
            Err(ContentError::Type { .. })
        ));
        assert_eq!(
            decode(ContentFormat::LWM2M_JSON, Path::STATE, b"{}"),
            Err(ContentError::Unsupported(ContentFormat::LWM2M_JSON))
        );
        assert_eq!(
            read_str(ContentFormat::TEXT_PLAIN, Path::STATE, &[0xff]),
            Err(ContentError::NotUtf8)
        );
    }

    #[test]
    fn accept_follows_the_registration() {
        use ContentFormat as F;
        assert_eq!(F::accept(&[], false, false), F::TEXT_PLAIN);
        assert_eq!(F::accept(&[112], false, false), F::TEXT_PLAIN);
        assert_eq!(F::accept(&[112, 11544], true, false), F::SENML_CBOR);
        assert_eq!(F::accept(&[0, 112], true, false), F::TEXT_PLAIN);
        assert_eq!(F::accept(&[], false, true), F::TLV);
        assert_eq!(F::accept(&[11543, 110], false, true), F::SENML_JSON);
        assert_eq!(F::from_name("senml-cbor"), Some(F::SENML_CBOR));
        assert_eq!(F::SENML_CBOR.to_string(), "senml-cbor (112)");
    }

    fn value() -> impl Strategy<Value = Value> {
        prop_oneof![
            any::<i64>().prop_map(Value::Integer),
            "[ -~]{0,20}".prop_map(Value::String),
        ]
    }

    proptest! {
        #[test]
        fn every_format_round_trips_a_single_resource(v in value(), f in 0usize..6) {
            let format = ContentFormat::NAMES[f].1;
            let p = Path::FIRMWARE_VERSION;
            let Ok(bytes) = encode(format, &[(res(p), v.clone())]) else {
                // Opaque carries no integers.
                prop_assert!(format == ContentFormat::OPAQUE);
                return Ok(());
            };
            let items = decode(format, p, &bytes).unwrap();
            let item = single(&items, p).unwrap();
            match v {
                Value::Integer(i) => prop_assert_eq!(item.integer().unwrap(), i),
                Value::String(s) => prop_assert_eq!(item.string().unwrap(), s),
                _ => unreachable!(),
            }
        }

        #[test]
        fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64), f in 0usize..6) {
            let _ = decode(ContentFormat::NAMES[f].1, Path::STATE, &bytes);
        }
    }
}
