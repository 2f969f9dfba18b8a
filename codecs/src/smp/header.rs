//! The 8-byte SMP header.
//!
//! Source: zephyr `doc/services/device_mgmt/smp_protocol.rst` ("SMP
//! message"), `subsys/mgmt/mcumgr/transport/include/mgmt/mcumgr/transport/smp_internal.h`
//! (`struct smp_hdr`): all multi-byte fields are big-endian on the wire.
//!
//! ```text
//! byte 0: Res(3) | Ver(2) | OP(3)    byte 1: Flags
//! bytes 2-3: Data Length (CBOR body, u16 BE)    bytes 4-5: Group ID (u16 BE)
//! byte 6: Sequence Num    byte 7: Command ID
//! ```

/// Length of the SMP header in bytes (zephyr `mgmt_defines.h` `MGMT_HDR_SIZE`).
pub const HEADER_LEN: usize = 8;

/// Management group ids (zephyr `mgmt_defines.h` `mcumgr_group_t`, smp `header.GroupId`).
pub mod group {
    /// OS management: echo, reset, MCUmgr params.
    pub const OS: u16 = 0;
    /// Image management: state, upload, erase.
    pub const IMAGE: u16 = 1;
}

/// Command ids within their group (zephyr `os_mgmt.h`, `img_mgmt.h`;
/// `smp_groups/smp_group_0.rst`, `smp_group_1.rst`).
pub mod command {
    /// OS group: echo `{"d":str}` → `{"r":str}`.
    pub const OS_ECHO: u8 = 0;
    /// OS group: task statistics.
    pub const OS_TASKSTAT: u8 = 2;
    /// OS group: system reset; the device answers before it resets.
    pub const OS_RESET: u8 = 5;
    /// OS group: MCUmgr parameters `{"buf_size","buf_count"}`.
    pub const OS_PARAMS: u8 = 6;
    /// Image group: image state read (list) and write (test / confirm).
    pub const IMAGE_STATE: u8 = 0;
    /// Image group: image upload.
    pub const IMAGE_UPLOAD: u8 = 1;
    /// Image group: erase a slot.
    pub const IMAGE_ERASE: u8 = 5;
    /// Image group: slot info (each slot's size, `max_image_size`).
    pub const IMAGE_SLOT_INFO: u8 = 6;
}

/// The OP field (smp_protocol.rst, "Operation"): a response uses the
/// request's OP plus one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// 0: read request.
    Read,
    /// 1: read response.
    ReadRsp,
    /// 2: write request.
    Write,
    /// 3: write response.
    WriteRsp,
}

impl Op {
    /// The 3-bit wire value.
    pub const fn bits(self) -> u8 {
        match self {
            Op::Read => 0,
            Op::ReadRsp => 1,
            Op::Write => 2,
            Op::WriteRsp => 3,
        }
    }

    /// The OP a peer answers this request OP with; `None` for responses.
    pub const fn response(self) -> Option<Op> {
        match self {
            Op::Read => Some(Op::ReadRsp),
            Op::Write => Some(Op::WriteRsp),
            _ => None,
        }
    }

    fn from_bits(bits: u8) -> Option<Op> {
        match bits {
            0 => Some(Op::Read),
            1 => Some(Op::ReadRsp),
            2 => Some(Op::Write),
            3 => Some(Op::WriteRsp),
            _ => None,
        }
    }
}

/// The Ver field (smp_protocol.rst, "Version"): how errors are reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum SmpVersion {
    /// 0b00: SMP v1, errors as `{"rc": int}` only.
    V1,
    /// 0b01: SMP v2, group errors as `{"err": {"group": u, "rc": u}}`
    /// (clients must still accept `rc`). smp and smpclient send v2.
    #[default]
    V2,
}

impl SmpVersion {
    /// The 2-bit wire value.
    pub const fn bits(self) -> u8 {
        match self {
            SmpVersion::V1 => 0,
            SmpVersion::V2 => 1,
        }
    }
}

/// A header that cannot be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// Fewer than 8 bytes.
    #[error("SMP header needs 8 bytes, got {0}")]
    Short(usize),
    /// OP bits 4 to 7 are not defined by smp_protocol.rst.
    #[error("unknown SMP op {0}")]
    UnknownOp(u8),
    /// Version bits 2 and 3 are not defined by smp_protocol.rst.
    #[error("unknown SMP version {0}")]
    UnknownVersion(u8),
    /// The Data Length field does not equal the bytes that follow the header.
    #[error("SMP header says {header} body bytes, message has {actual}")]
    LengthMismatch {
        /// Data Length from the header.
        header: u16,
        /// Body bytes present.
        actual: usize,
    },
}

/// A parsed SMP header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Header {
    /// Operation.
    pub op: Op,
    /// Protocol version.
    pub version: SmpVersion,
    /// Flags (0 in every known implementation).
    pub flags: u8,
    /// Length of the CBOR body that follows.
    pub len: u16,
    /// Management group.
    pub group: u16,
    /// Sequence number, echoed by responses.
    pub seq: u8,
    /// Command id within the group.
    pub id: u8,
}

impl Header {
    /// Parses the first 8 bytes of `bytes`.
    pub fn parse(bytes: &[u8]) -> Result<Header, HeaderError> {
        let b: &[u8; HEADER_LEN] = bytes
            .get(..HEADER_LEN)
            .and_then(|s| s.try_into().ok())
            .ok_or(HeaderError::Short(bytes.len()))?;
        let op = Op::from_bits(b[0] & 0x07).ok_or(HeaderError::UnknownOp(b[0] & 0x07))?;
        let version = match (b[0] >> 3) & 0x03 {
            0 => SmpVersion::V1,
            1 => SmpVersion::V2,
            v => return Err(HeaderError::UnknownVersion(v)),
        };
        Ok(Header {
            op,
            version,
            flags: b[1],
            len: u16::from_be_bytes([b[2], b[3]]),
            group: u16::from_be_bytes([b[4], b[5]]),
            seq: b[6],
            id: b[7],
        })
    }

    /// The 8 wire bytes.
    pub fn emit(&self) -> [u8; HEADER_LEN] {
        let len = self.len.to_be_bytes();
        let group = self.group.to_be_bytes();
        [
            (self.version.bits() << 3) | self.op.bits(),
            self.flags,
            len[0],
            len[1],
            group[0],
            group[1],
            self.seq,
            self.id,
        ]
    }
}

/// Splits a whole SMP message into its header and CBOR body, checking that
/// the header's Data Length covers exactly the rest.
pub fn split_message(msg: &[u8]) -> Result<(Header, &[u8]), HeaderError> {
    let header = Header::parse(msg)?;
    let body = &msg[HEADER_LEN..];
    if usize::from(header.len) != body.len() {
        return Err(HeaderError::LengthMismatch {
            header: header.len,
            actual: body.len(),
        });
    }
    Ok((header, body))
}

/// Builds a whole SMP message: header (with Data Length set) and body.
///
/// # Panics
/// Never for bodies up to 65535 bytes; longer bodies are truncated in the
/// length field, so callers size bodies first (every encoder here does).
pub fn build_message(
    op: Op,
    version: SmpVersion,
    group: u16,
    seq: u8,
    id: u8,
    body: &[u8],
) -> Vec<u8> {
    let len = u16::try_from(body.len()).unwrap_or(u16::MAX);
    let header = Header {
        op,
        version,
        flags: 0,
        len,
        group,
        seq,
        id,
    };
    let mut msg = Vec::with_capacity(HEADER_LEN + body.len());
    msg.extend_from_slice(&header.emit());
    msg.extend_from_slice(body);
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn golden_echo_header() {
        // docs/protocols/children.md §4.4, echo {"d":"hello"}, v2, seq 0 (smp 4.2.0).
        let msg = crate::hex::parse("0a 00 00 09 00 00 00 00 a1 61 64 65 68 65 6c 6c 6f").unwrap();
        let (h, body) = split_message(&msg).unwrap();
        assert_eq!(h.op, Op::Write);
        assert_eq!(h.version, SmpVersion::V2);
        assert_eq!((h.len, h.group, h.seq, h.id), (9, 0, 0, 0));
        assert_eq!(body.len(), 9);
        assert_eq!(build_message(Op::Write, SmpVersion::V2, 0, 0, 0, body), msg);
    }

    #[test]
    fn rejects_bad_headers() {
        assert_eq!(Header::parse(&[0; 7]), Err(HeaderError::Short(7)));
        assert_eq!(
            Header::parse(&[0x04, 0, 0, 0, 0, 0, 0, 0]),
            Err(HeaderError::UnknownOp(4))
        );
        assert_eq!(
            Header::parse(&[0x10, 0, 0, 0, 0, 0, 0, 0]),
            Err(HeaderError::UnknownVersion(2))
        );
        assert_eq!(
            split_message(&[0x01, 0, 0, 2, 0, 0, 0, 0, 0xa0]),
            Err(HeaderError::LengthMismatch {
                header: 2,
                actual: 1
            })
        );
    }

    #[test]
    fn round_trips_every_field() {
        let h = Header {
            op: Op::ReadRsp,
            version: SmpVersion::V1,
            flags: 0x5a,
            len: 0x1234,
            group: 0xabcd,
            seq: 0xfe,
            id: 0x07,
        };
        assert_eq!(Header::parse(&h.emit()), Ok(h));
        assert_eq!(h.emit(), [0x01, 0x5a, 0x12, 0x34, 0xab, 0xcd, 0xfe, 0x07]);
    }
}
