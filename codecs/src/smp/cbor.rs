//! The CBOR subset SMP bodies use: a tiny exact encoder and a decoder over
//! `ciborium::Value`.
//!
//! Requests are encoded by hand rather than through serde so that the
//! upload engine can compute a chunk's encoded size exactly (docs/protocols/children.md
//! §4.5: the whole message must be at most `buf_size - 4`). Integers and
//! lengths use the shortest head (RFC 8949 §3, "preferred serialization"),
//! as ciborium, zcbor and Python cbor2 do.

use ciborium::Value;

/// Bytes taken by a CBOR head carrying argument `v` (RFC 8949 §3).
pub(crate) const fn head_len(v: u64) -> usize {
    if v < 24 {
        1
    } else if v <= 0xff {
        2
    } else if v <= 0xffff {
        3
    } else if v <= 0xffff_ffff {
        5
    } else {
        9
    }
}

/// Encoded size of a text string.
pub(crate) const fn text_len(s: &str) -> usize {
    head_len(s.len() as u64) + s.len()
}

/// Encoded size of a byte string of `n` bytes.
pub(crate) const fn bytes_len(n: usize) -> usize {
    head_len(n as u64) + n
}

/// Appends CBOR items to a buffer.
#[derive(Debug, Default)]
pub(crate) struct Enc {
    pub(crate) buf: Vec<u8>,
}

impl Enc {
    pub(crate) fn with_capacity(n: usize) -> Self {
        Enc {
            buf: Vec::with_capacity(n),
        }
    }

    fn head(&mut self, major: u8, v: u64) {
        let m = major << 5;
        if v < 24 {
            self.buf.push(m | v as u8);
        } else if v <= 0xff {
            self.buf.extend_from_slice(&[m | 24, v as u8]);
        } else if v <= 0xffff {
            self.buf.push(m | 25);
            self.buf.extend_from_slice(&(v as u16).to_be_bytes());
        } else if v <= 0xffff_ffff {
            self.buf.push(m | 26);
            self.buf.extend_from_slice(&(v as u32).to_be_bytes());
        } else {
            self.buf.push(m | 27);
            self.buf.extend_from_slice(&v.to_be_bytes());
        }
    }

    pub(crate) fn map(&mut self, entries: usize) {
        self.head(5, entries as u64);
    }

    pub(crate) fn array(&mut self, items: usize) {
        self.head(4, items as u64);
    }

    pub(crate) fn uint(&mut self, v: u64) {
        self.head(0, v);
    }

    pub(crate) fn int(&mut self, v: i64) {
        if v >= 0 {
            self.head(0, v as u64);
        } else {
            self.head(1, (-1 - v) as u64);
        }
    }

    pub(crate) fn text(&mut self, s: &str) {
        self.head(3, s.len() as u64);
        self.buf.extend_from_slice(s.as_bytes());
    }

    pub(crate) fn bytes(&mut self, b: &[u8]) {
        self.head(2, b.len() as u64);
        self.buf.extend_from_slice(b);
    }

    pub(crate) fn bool(&mut self, b: bool) {
        self.buf.push(if b { 0xf5 } else { 0xf4 });
    }
}

/// A CBOR body that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    /// The bytes are not one well-formed CBOR item.
    #[error("CBOR body does not decode: {0}")]
    Cbor(String),
    /// The body is CBOR but not a map (smp_protocol.rst: every body is a map).
    #[error("CBOR body is not a map")]
    NotAMap,
    /// A field has the wrong CBOR type or range.
    #[error("field {0:?} has the wrong type")]
    BadField(&'static str),
    /// A required field is absent.
    #[error("field {0:?} is missing")]
    Missing(&'static str),
}

/// Decodes a body into its top-level map entries.
pub(crate) fn decode_map(body: &[u8]) -> Result<Vec<(Value, Value)>, BodyError> {
    let value: Value =
        ciborium::de::from_reader(body).map_err(|e| BodyError::Cbor(e.to_string()))?;
    match value {
        Value::Map(m) => Ok(m),
        _ => Err(BodyError::NotAMap),
    }
}

/// The value under text key `key`.
pub(crate) fn get<'a>(map: &'a [(Value, Value)], key: &str) -> Option<&'a Value> {
    map.iter()
        .find(|(k, _)| k.as_text() == Some(key))
        .map(|(_, v)| v)
}

pub(crate) fn as_u64(v: &Value, name: &'static str) -> Result<u64, BodyError> {
    v.as_integer()
        .and_then(|i| u64::try_from(i).ok())
        .ok_or(BodyError::BadField(name))
}

pub(crate) fn as_i64(v: &Value, name: &'static str) -> Result<i64, BodyError> {
    v.as_integer()
        .and_then(|i| i64::try_from(i).ok())
        .ok_or(BodyError::BadField(name))
}

pub(crate) fn as_bool(v: &Value, name: &'static str) -> Result<bool, BodyError> {
    v.as_bool().ok_or(BodyError::BadField(name))
}

pub(crate) fn opt_u64(
    map: &[(Value, Value)],
    name: &'static str,
) -> Result<Option<u64>, BodyError> {
    get(map, name).map(|v| as_u64(v, name)).transpose()
}

pub(crate) fn opt_bool(
    map: &[(Value, Value)],
    name: &'static str,
) -> Result<Option<bool>, BodyError> {
    get(map, name).map(|v| as_bool(v, name)).transpose()
}

pub(crate) fn opt_bytes<'a>(
    map: &'a [(Value, Value)],
    name: &'static str,
) -> Result<Option<&'a [u8]>, BodyError> {
    get(map, name)
        .map(|v| {
            v.as_bytes()
                .map(Vec::as_slice)
                .ok_or(BodyError::BadField(name))
        })
        .transpose()
}

pub(crate) fn opt_text<'a>(
    map: &'a [(Value, Value)],
    name: &'static str,
) -> Result<Option<&'a str>, BodyError> {
    get(map, name)
        .map(|v| v.as_text().ok_or(BodyError::BadField(name)))
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_match_ciborium() {
        for v in [
            0u64,
            23,
            24,
            255,
            256,
            65535,
            65536,
            0xffff_ffff,
            0x1_0000_0000,
        ] {
            let mut e = Enc::default();
            e.uint(v);
            let mut c = Vec::new();
            ciborium::ser::into_writer(&Value::Integer(v.into()), &mut c).unwrap();
            assert_eq!(e.buf, c, "uint {v}");
            assert_eq!(e.buf.len(), head_len(v));
        }
        for n in [0usize, 23, 24, 255, 256, 300] {
            let data = vec![7u8; n];
            let mut e = Enc::default();
            e.bytes(&data);
            assert_eq!(e.buf.len(), bytes_len(n));
            let mut c = Vec::new();
            ciborium::ser::into_writer(&Value::Bytes(data), &mut c).unwrap();
            assert_eq!(e.buf, c);
        }
        let mut e = Enc::default();
        e.int(-9);
        e.bool(true);
        e.text("off");
        assert_eq!(e.buf, [0x28, 0xf5, 0x63, b'o', b'f', b'f']);
        assert_eq!(text_len("off"), 4);
    }

    #[test]
    fn decode_rejects_non_maps_and_garbage() {
        assert_eq!(decode_map(&[0x01]), Err(BodyError::NotAMap));
        assert!(matches!(decode_map(&[0xa1]), Err(BodyError::Cbor(_))));
        let m = decode_map(&[0xa1, 0x63, b'o', b'f', b'f', 0x18, 0x2a]).unwrap();
        assert_eq!(opt_u64(&m, "off"), Ok(Some(42)));
        assert_eq!(opt_bool(&m, "off"), Err(BodyError::BadField("off")));
        assert_eq!(opt_u64(&m, "len"), Ok(None));
    }
}
