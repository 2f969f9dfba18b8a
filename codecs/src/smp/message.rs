//! CBOR bodies of the SMP commands otabridge uses, and SMP errors.
//!
//! Sources: zephyr `doc/services/device_mgmt/smp_groups/smp_group_0.rst`
//! (echo, reset, MCUmgr params), `smp_group_1.rst` (image state, upload),
//! `smp_protocol.rst` ("Minimal response", v1 `rc` and v2 `err`).
//! Request maps are written with keys in length-first order (RFC 8949
//! §4.2.3), the order Python smp 4.2.0 writes, so the bytes compare equal.

use super::cbor::{self, BodyError, Enc};
use ciborium::Value;

/// An error a device answered with (smp_protocol.rst, "Minimal response").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SmpErr {
    /// SMP v1 / SMP-level `{"rc": int}` with a non-zero value (`MGMT_ERR_*`).
    Legacy {
        /// The `rc` value.
        rc: i64,
    },
    /// SMP v2 group error `{"err": {"group": u, "rc": u}}`.
    Group {
        /// The group that failed.
        group: u16,
        /// The group's own error code (for group 1: `IMG_MGMT_ERR_*`).
        rc: i64,
    },
}

/// Names of `MGMT_ERR_*` (zephyr `mgmt_defines.h` `mcumgr_err_t`, smp `error.py`).
pub fn legacy_name(rc: i64) -> &'static str {
    match rc {
        0 => "EOK",
        1 => "EUNKNOWN",
        2 => "ENOMEM",
        3 => "EINVAL",
        4 => "ETIMEOUT",
        5 => "ENOENT",
        6 => "EBADSTATE",
        7 => "EMSGSIZE",
        8 => "ENOTSUP",
        9 => "ECORRUPT",
        10 => "EBUSY",
        11 => "EACCESSDENIED",
        12 => "UNSUPPORTED_TOO_OLD",
        13 => "UNSUPPORTED_TOO_NEW",
        _ => "unknown",
    }
}

/// Names of `IMG_MGMT_ERR_*` (zephyr `img_mgmt.h` `img_mgmt_err_code_t`,
/// smp `image_management.IMG_MGMT_ERR`).
pub fn image_err_name(rc: i64) -> &'static str {
    const NAMES: [&str; 34] = [
        "OK",
        "UNKNOWN",
        "FLASH_CONFIG_QUERY_FAIL",
        "NO_IMAGE",
        "NO_TLVS",
        "INVALID_TLV",
        "TLV_MULTIPLE_HASHES_FOUND",
        "TLV_INVALID_SIZE",
        "HASH_NOT_FOUND",
        "NO_FREE_SLOT",
        "FLASH_OPEN_FAILED",
        "FLASH_READ_FAILED",
        "FLASH_WRITE_FAILED",
        "FLASH_ERASE_FAILED",
        "INVALID_SLOT",
        "NO_FREE_MEMORY",
        "FLASH_CONTEXT_ALREADY_SET",
        "FLASH_CONTEXT_NOT_SET",
        "FLASH_AREA_DEVICE_NULL",
        "INVALID_PAGE_OFFSET",
        "INVALID_OFFSET",
        "INVALID_LENGTH",
        "INVALID_IMAGE_HEADER",
        "INVALID_IMAGE_HEADER_MAGIC",
        "INVALID_HASH",
        "INVALID_FLASH_ADDRESS",
        "VERSION_GET_FAILED",
        "CURRENT_VERSION_IS_NEWER",
        "IMAGE_ALREADY_PENDING",
        "INVALID_IMAGE_VECTOR_TABLE",
        "INVALID_IMAGE_TOO_LARGE",
        "INVALID_IMAGE_DATA_OVERRUN",
        "IMAGE_CONFIRMATION_DENIED",
        "IMAGE_SETTING_TEST_TO_ACTIVE_DENIED",
    ];
    usize::try_from(rc)
        .ok()
        .and_then(|i| NAMES.get(i))
        .copied()
        .unwrap_or("unknown")
}

impl std::fmt::Display for SmpErr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            SmpErr::Legacy { rc } => write!(f, "SMP rc {rc} ({})", legacy_name(rc)),
            SmpErr::Group { group: 1, rc } => {
                write!(f, "SMP image group rc {rc} ({})", image_err_name(rc))
            }
            SmpErr::Group { group, rc } => write!(f, "SMP group {group} rc {rc}"),
        }
    }
}

/// Image group error codes this crate acts on (zephyr `img_mgmt.h`).
pub mod img_err {
    /// No free slot to place the image.
    pub const NO_FREE_SLOT: i64 = 9;
    /// Flash area write failed.
    pub const FLASH_WRITE_FAILED: i64 = 12;
    /// Flash area erase failed.
    pub const FLASH_ERASE_FAILED: i64 = 13;
    /// Request has a missing or wrong offset.
    pub const INVALID_OFFSET: i64 = 20;
    /// `len` missing on the first chunk.
    pub const INVALID_LENGTH: i64 = 21;
    /// First chunk shorter than an MCUboot header.
    pub const INVALID_IMAGE_HEADER: i64 = 22;
    /// First chunk does not start with the MCUboot magic.
    pub const INVALID_IMAGE_HEADER_MAGIC: i64 = 23;
    /// `sha` longer than 32 bytes.
    pub const INVALID_HASH: i64 = 24;
    /// `len` larger than the slot.
    pub const INVALID_IMAGE_TOO_LARGE: i64 = 30;
    /// `off + len(data)` beyond `len`.
    pub const INVALID_IMAGE_DATA_OVERRUN: i64 = 31;
}

/// SMP-level (`MGMT_ERR_*`) codes this crate acts on (zephyr `mgmt_defines.h`).
pub mod mgmt_err {
    /// Unknown error.
    pub const EUNKNOWN: i64 = 1;
    /// Out of memory.
    pub const ENOMEM: i64 = 2;
    /// Invalid argument.
    pub const EINVAL: i64 = 3;
    /// Bad state.
    pub const EBADSTATE: i64 = 6;
    /// Command not supported.
    pub const ENOTSUP: i64 = 8;
    /// Busy.
    pub const EBUSY: i64 = 10;
}

/// The error a response body carries, if any. `{"rc": 0}` is success
/// (older servers and `CONFIG_MCUMGR_SMP_LEGACY_RC_BEHAVIOUR` send it);
/// an `err` map with `rc` 0 is success too.
pub fn status(map: &[(Value, Value)]) -> Result<Option<SmpErr>, BodyError> {
    if let Some(err) = cbor::get(map, "err") {
        let Value::Map(inner) = err else {
            return Err(BodyError::BadField("err"));
        };
        let group = cbor::get(inner, "group").ok_or(BodyError::Missing("err.group"))?;
        let group = u16::try_from(cbor::as_u64(group, "err.group")?)
            .map_err(|_| BodyError::BadField("err.group"))?;
        let rc = cbor::as_i64(
            cbor::get(inner, "rc").ok_or(BodyError::Missing("err.rc"))?,
            "err.rc",
        )?;
        if rc != 0 {
            return Ok(Some(SmpErr::Group { group, rc }));
        }
    }
    if let Some(rc) = cbor::get(map, "rc") {
        let rc = cbor::as_i64(rc, "rc")?;
        if rc != 0 {
            return Ok(Some(SmpErr::Legacy { rc }));
        }
    }
    Ok(None)
}

/// A decoded response body: either the device's error or the fields.
pub type Reply<T> = Result<Result<T, SmpErr>, BodyError>;

fn reply<T>(body: &[u8], f: impl FnOnce(&[(Value, Value)]) -> Result<T, BodyError>) -> Reply<T> {
    let map = cbor::decode_map(body)?;
    if let Some(e) = status(&map)? {
        return Ok(Err(e));
    }
    f(&map).map(Ok)
}

/// `{}`: the body of params read, image state read and reset.
pub fn empty_body() -> Vec<u8> {
    vec![0xa0]
}

/// Echo request `{"d": text}` (smp_group_0.rst, "Echo command").
pub fn echo_request(d: &str) -> Vec<u8> {
    let mut e = Enc::default();
    e.map(1);
    e.text("d");
    e.text(d);
    e.buf
}

/// Echo response `{"r": text}`.
pub fn echo_response(body: &[u8]) -> Reply<String> {
    reply(body, |m| {
        Ok(cbor::opt_text(m, "r")?
            .ok_or(BodyError::Missing("r"))?
            .to_owned())
    })
}

/// Decodes an echo request (device side): the `d` text.
pub fn decode_echo(body: &[u8]) -> Result<String, BodyError> {
    let m = cbor::decode_map(body)?;
    Ok(cbor::opt_text(&m, "d")?
        .ok_or(BodyError::Missing("d"))?
        .to_owned())
}

/// Encodes an echo response `{"r": text}` (device side).
pub fn echo_response_body(r: &str) -> Vec<u8> {
    let mut e = Enc::default();
    e.map(1);
    e.text("r");
    e.text(r);
    e.buf
}

/// MCUmgr parameters (smp_group_0.rst, "MCUmgr Parameters"): `buf_size`
/// is `CONFIG_MCUMGR_TRANSPORT_NETBUF_SIZE`, covering header and CBOR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Params {
    /// Size of one receive buffer.
    pub buf_size: u64,
    /// Number of receive buffers.
    pub buf_count: u64,
}

/// Decodes a params response.
pub fn params_response(body: &[u8]) -> Reply<Params> {
    reply(body, |m| {
        Ok(Params {
            buf_size: cbor::opt_u64(m, "buf_size")?.ok_or(BodyError::Missing("buf_size"))?,
            buf_count: cbor::opt_u64(m, "buf_count")?.unwrap_or(0),
        })
    })
}

/// Encodes a params response (device side).
pub fn encode_params(p: Params) -> Vec<u8> {
    let mut e = Enc::default();
    e.map(2);
    e.text("buf_size");
    e.uint(p.buf_size);
    e.text("buf_count");
    e.uint(p.buf_count);
    e.buf
}

/// Reset request body (smp_group_0.rst, "System reset"): `{}`, or
/// `{"force": 1}` to override an application's veto (newer Zephyr).
pub fn reset_request(force: bool) -> Vec<u8> {
    if !force {
        return empty_body();
    }
    let mut e = Enc::default();
    e.map(1);
    e.text("force");
    e.uint(1);
    e.buf
}

/// The error in a reset answer, if any (the body is otherwise empty).
pub fn reset_response(body: &[u8]) -> Result<Option<SmpErr>, BodyError> {
    status(&cbor::decode_map(body)?)
}

/// An image upload request (smp_group_1.rst, "Image upload request").
/// `image`, `len`, `sha` and `upgrade` belong to the chunk at `off` 0 only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UploadRequest<'a> {
    /// Image number; absent means 0.
    pub image: Option<u32>,
    /// Total image size; required at `off` 0.
    pub len: Option<u64>,
    /// Offset of `data` in the image.
    pub off: u64,
    /// SHA-256 of the whole upload file: session identity for resume.
    pub sha: Option<&'a [u8]>,
    /// The chunk.
    pub data: &'a [u8],
    /// Reject unless newer than the running version.
    pub upgrade: Option<bool>,
}

impl UploadRequest<'_> {
    /// Encoded size of everything but the `data` value (key included).
    pub(crate) fn fixed_len(&self) -> usize {
        let n = self.entries();
        let mut total = cbor::head_len(n as u64) + cbor::text_len("off") + cbor::head_len(self.off);
        total += cbor::text_len("data");
        if let Some(len) = self.len {
            total += cbor::text_len("len") + cbor::head_len(len);
        }
        if let Some(sha) = self.sha {
            total += cbor::text_len("sha") + cbor::bytes_len(sha.len());
        }
        if let Some(image) = self.image {
            total += cbor::text_len("image") + cbor::head_len(u64::from(image));
        }
        if self.upgrade.is_some() {
            total += cbor::text_len("upgrade") + 1;
        }
        total
    }

    fn entries(&self) -> usize {
        2 + usize::from(self.len.is_some())
            + usize::from(self.sha.is_some())
            + usize::from(self.image.is_some())
            + usize::from(self.upgrade.is_some())
    }

    /// Exact encoded size of the body.
    pub fn encoded_len(&self) -> usize {
        self.fixed_len() + cbor::bytes_len(self.data.len())
    }

    /// The CBOR body, keys in length-first order: len, off, sha, data, image, upgrade.
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Enc::with_capacity(self.encoded_len());
        e.map(self.entries());
        if let Some(len) = self.len {
            e.text("len");
            e.uint(len);
        }
        e.text("off");
        e.uint(self.off);
        if let Some(sha) = self.sha {
            e.text("sha");
            e.bytes(sha);
        }
        e.text("data");
        e.bytes(self.data);
        if let Some(image) = self.image {
            e.text("image");
            e.uint(u64::from(image));
        }
        if let Some(up) = self.upgrade {
            e.text("upgrade");
            e.bool(up);
        }
        e.buf
    }
}

/// The largest `data` length whose body fits `max_body` bytes, given the
/// other fields of `req` (its `data` is ignored); `None` if not even an
/// empty chunk fits.
pub(crate) fn max_data_len(req: &UploadRequest<'_>, max_body: usize) -> Option<usize> {
    let avail = max_body.checked_sub(req.fixed_len())?;
    // The data head grows with the data; try each head size and keep the
    // largest length whose own head is no longer than assumed.
    [1usize, 2, 3, 5]
        .iter()
        .filter_map(|&h| avail.checked_sub(h))
        .filter(|&d| cbor::head_len(d as u64) <= avail - d)
        .max()
}

/// An upload request as a device decodes it (fields owned).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UploadRequestOwned {
    /// `image`, if present.
    pub image: Option<u64>,
    /// `len`, if present.
    pub len: Option<u64>,
    /// `off`, if present (Zephyr answers INVALID_OFFSET when absent).
    pub off: Option<u64>,
    /// `sha`, if present.
    pub sha: Option<Vec<u8>>,
    /// `data`, empty if absent.
    pub data: Vec<u8>,
    /// `upgrade`, if present.
    pub upgrade: Option<bool>,
}

/// Decodes an upload request (device side).
pub fn decode_upload_request(body: &[u8]) -> Result<UploadRequestOwned, BodyError> {
    let m = cbor::decode_map(body)?;
    Ok(UploadRequestOwned {
        image: cbor::opt_u64(&m, "image")?,
        len: cbor::opt_u64(&m, "len")?,
        off: cbor::opt_u64(&m, "off")?,
        sha: cbor::opt_bytes(&m, "sha")?.map(<[u8]>::to_vec),
        data: cbor::opt_bytes(&m, "data")?
            .map(<[u8]>::to_vec)
            .unwrap_or_default(),
        upgrade: cbor::opt_bool(&m, "upgrade")?,
    })
}

/// An upload response (smp_group_1.rst, "Image upload response").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UploadResponse {
    /// The next offset the device expects.
    pub off: u64,
    /// Final response only, with `CONFIG_IMG_ENABLE_IMAGE_CHECK`: whether
    /// the written image's SHA-256 equals `sha`.
    pub matched: Option<bool>,
}

/// Decodes an upload response; `off` is required on success.
pub fn upload_response(body: &[u8]) -> Reply<UploadResponse> {
    reply(body, |m| {
        Ok(UploadResponse {
            off: cbor::opt_u64(m, "off")?.ok_or(BodyError::Missing("off"))?,
            matched: cbor::opt_bool(m, "match")?,
        })
    })
}

/// Encodes an upload response (device side).
pub fn encode_upload_response(r: UploadResponse) -> Vec<u8> {
    let mut e = Enc::default();
    e.map(1 + usize::from(r.matched.is_some()));
    e.text("off");
    e.uint(r.off);
    if let Some(m) = r.matched {
        e.text("match");
        e.bool(m);
    }
    e.buf
}

/// Image state write (smp_group_1.rst, "Set state of image request"):
/// `confirm: false` marks the image with `hash` for a test boot,
/// `confirm: true` makes it permanent (no hash: the running image).
pub fn state_write_request(hash: Option<&[u8]>, confirm: bool) -> Vec<u8> {
    let mut e = Enc::default();
    e.map(1 + usize::from(hash.is_some()));
    if let Some(h) = hash {
        e.text("hash");
        e.bytes(h);
    }
    e.text("confirm");
    e.bool(confirm);
    e.buf
}

/// A state write as the device decodes it: `(hash, confirm)`.
pub fn decode_state_write(body: &[u8]) -> Result<(Option<Vec<u8>>, bool), BodyError> {
    let m = cbor::decode_map(body)?;
    Ok((
        cbor::opt_bytes(&m, "hash")?.map(<[u8]>::to_vec),
        cbor::opt_bool(&m, "confirm")?.unwrap_or(false),
    ))
}

/// One entry of an image state response (smp_group_1.rst, "Get state of
/// image response"). `hash` is the MCUboot `IMAGE_TLV_SHA256`, not the
/// SHA-256 of the upload file.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ImageSlot {
    /// Image number (absent means 0).
    pub image: u64,
    /// Slot within the image: 0 primary, 1 secondary.
    pub slot: u64,
    /// Version string, `major.minor.revision[.build]`.
    pub version: String,
    /// MCUboot image hash.
    pub hash: Vec<u8>,
    /// Bootable flag.
    pub bootable: bool,
    /// Will be swapped in on the next boot.
    pub pending: bool,
    /// Confirmed: will not be reverted.
    pub confirmed: bool,
    /// Currently running.
    pub active: bool,
    /// Pending and permanent.
    pub permanent: bool,
}

/// Decodes an image state response (read or write).
pub fn state_response(body: &[u8]) -> Reply<Vec<ImageSlot>> {
    images_reply(body, |e| {
        Ok(ImageSlot {
            image: cbor::opt_u64(e, "image")?.unwrap_or(0),
            slot: cbor::opt_u64(e, "slot")?.ok_or(BodyError::Missing("slot"))?,
            version: cbor::opt_text(e, "version")?.unwrap_or("").to_owned(),
            hash: cbor::opt_bytes(e, "hash")?
                .map(<[u8]>::to_vec)
                .unwrap_or_default(),
            bootable: cbor::opt_bool(e, "bootable")?.unwrap_or(false),
            pending: cbor::opt_bool(e, "pending")?.unwrap_or(false),
            confirmed: cbor::opt_bool(e, "confirmed")?.unwrap_or(false),
            active: cbor::opt_bool(e, "active")?.unwrap_or(false),
            permanent: cbor::opt_bool(e, "permanent")?.unwrap_or(false),
        })
    })
}

/// Decodes an answer `{images: [map, ...]}` (state read, slot info), each
/// map by `item`; a device error comes back as such.
fn images_reply<T>(
    body: &[u8],
    item: impl Fn(&[(Value, Value)]) -> Result<T, BodyError>,
) -> Reply<Vec<T>> {
    reply(body, |m| {
        let Some(Value::Array(items)) = cbor::get(m, "images") else {
            return Err(BodyError::Missing("images"));
        };
        items
            .iter()
            .map(|entry| match entry {
                Value::Map(e) => item(e),
                _ => Err(BodyError::BadField("images")),
            })
            .collect()
    })
}

/// Encodes an image state response (device side); false flags are omitted,
/// as Zephyr's `img_mgmt_state_read` does.
pub fn encode_state_response(images: &[ImageSlot]) -> Vec<u8> {
    let mut e = Enc::default();
    e.map(1);
    e.text("images");
    e.array(images.len());
    for s in images {
        let flags = [
            ("bootable", s.bootable),
            ("pending", s.pending),
            ("confirmed", s.confirmed),
            ("active", s.active),
            ("permanent", s.permanent),
        ];
        e.map(4 + flags.iter().filter(|f| f.1).count());
        e.text("image");
        e.uint(s.image);
        e.text("slot");
        e.uint(s.slot);
        e.text("version");
        e.text(&s.version);
        e.text("hash");
        e.bytes(&s.hash);
        for (k, v) in flags {
            if v {
                e.text(k);
                e.bool(true);
            }
        }
    }
    e.buf
}

/// One image of a slot info answer (smp_group_1.rst, "Slot info": group 1,
/// command 6, `{"images":[{"image","slots":[{"slot","size","upload_image_id"?}],
/// "max_image_size"?}]}`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SlotInfo {
    /// Image number.
    pub image: u64,
    /// `(slot, size in bytes, upload_image_id)` of each slot.
    pub slots: Vec<(u64, u64, Option<u64>)>,
    /// `max_image_size`, when the device says it.
    pub max_image_size: Option<u64>,
}

impl SlotInfo {
    /// The most bytes an upload to this image may carry: `max_image_size`
    /// ("the maximum size of an application that can be uploaded to that
    /// image number"), else the size of slot 1, the secondary slot an
    /// upload without an image number goes to (smp_group_1.rst: `slot` is
    /// 0 or 1 within the image), else of the only slot. `upload_image_id`
    /// (present on every slot with `CONFIG_MCUMGR_GRP_IMG_DIRECT_UPLOAD`)
    /// names the image number a direct upload would use; the gateway's
    /// upload does not use it, so it does not choose the slot.
    pub fn upload_limit(&self) -> Option<u64> {
        self.max_image_size
            .or_else(|| self.slots.iter().find(|s| s.0 == 1).map(|s| s.1))
            .or(match self.slots.as_slice() {
                [only] => Some(only.1),
                _ => None,
            })
    }
}

/// Decodes a slot info answer.
pub fn slot_info_response(body: &[u8]) -> Reply<Vec<SlotInfo>> {
    images_reply(body, |e| {
        let slots = match cbor::get(e, "slots") {
            Some(Value::Array(slots)) => slots
                .iter()
                .map(|s| {
                    let Value::Map(s) = s else {
                        return Err(BodyError::BadField("slots"));
                    };
                    Ok((
                        cbor::opt_u64(s, "slot")?.ok_or(BodyError::Missing("slot"))?,
                        cbor::opt_u64(s, "size")?.ok_or(BodyError::Missing("size"))?,
                        cbor::opt_u64(s, "upload_image_id")?,
                    ))
                })
                .collect::<Result<_, _>>()?,
            _ => return Err(BodyError::Missing("slots")),
        };
        Ok(SlotInfo {
            image: cbor::opt_u64(e, "image")?.unwrap_or(0),
            slots,
            max_image_size: cbor::opt_u64(e, "max_image_size")?,
        })
    })
}

/// Encodes a slot info answer (device side).
pub fn encode_slot_info(images: &[SlotInfo]) -> Vec<u8> {
    let mut e = Enc::default();
    e.map(1);
    e.text("images");
    e.array(images.len());
    for i in images {
        e.map(2 + usize::from(i.max_image_size.is_some()));
        e.text("image");
        e.uint(i.image);
        e.text("slots");
        e.array(i.slots.len());
        for (slot, size, upload) in &i.slots {
            e.map(2 + usize::from(upload.is_some()));
            e.text("slot");
            e.uint(*slot);
            e.text("size");
            e.uint(*size);
            if let Some(u) = upload {
                e.text("upload_image_id");
                e.uint(*u);
            }
        }
        if let Some(m) = i.max_image_size {
            e.text("max_image_size");
            e.uint(m);
        }
    }
    e.buf
}

/// An error body: `{"rc": rc}` for v1, `{"err": {"group", "rc"}}` for v2.
pub fn encode_error(err: SmpErr) -> Vec<u8> {
    let mut e = Enc::default();
    match err {
        SmpErr::Legacy { rc } => {
            e.map(1);
            e.text("rc");
            e.int(rc);
        }
        SmpErr::Group { group, rc } => {
            e.map(1);
            e.text("err");
            e.map(2);
            e.text("group");
            e.uint(u64::from(group));
            e.text("rc");
            e.int(rc);
        }
    }
    e.buf
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hex::parse;

    #[test]
    fn upload_bodies_equal_python_smp() {
        // Bytes written by smp 4.2.0 ImageUploadWriteRequest (header stripped).
        let sha = [1u8; 32];
        let first = UploadRequest {
            image: Some(0),
            len: Some(10),
            off: 0,
            sha: Some(&sha),
            data: b"ab",
            upgrade: Some(false),
        };
        let want = parse(
            "a6 636c656e 0a 636f6666 00 63736861 5820 0101010101010101010101010101010101010101010101010101010101010101
             6464617461 42 6162 65696d616765 00 67757067726164 65 f4",
        )
        .unwrap();
        assert_eq!(first.encode(), want);
        assert_eq!(first.encoded_len(), want.len());
        let next = UploadRequest {
            image: None,
            len: None,
            off: 2,
            sha: None,
            data: b"ab",
            upgrade: None,
        };
        assert_eq!(
            next.encode(),
            parse("a2 636f6666 02 6464617461 42 6162").unwrap()
        );
    }

    #[test]
    fn max_data_len_is_exact() {
        let sha = [9u8; 32];
        for off in [0u64, 23, 24, 300, 70_000, 5_000_000_000] {
            for max_body in 20..700 {
                let mut req = UploadRequest {
                    image: Some(0),
                    len: Some(1 << 20),
                    off,
                    sha: Some(&sha),
                    data: &[],
                    upgrade: None,
                };
                let Some(d) = max_data_len(&req, max_body) else {
                    assert!(req.fixed_len() + 1 > max_body);
                    continue;
                };
                let data = vec![0u8; d + 1];
                req.data = &data[..d];
                assert!(req.encode().len() <= max_body);
                req.data = &data[..d + 1];
                assert!(
                    req.encode().len() > max_body,
                    "off {off} max {max_body} d {d}"
                );
            }
        }
    }

    #[test]
    fn errors_v1_and_v2() {
        let v2 = encode_error(SmpErr::Group { group: 1, rc: 9 });
        assert_eq!(
            upload_response(&v2),
            Ok(Err(SmpErr::Group { group: 1, rc: 9 }))
        );
        let v1 = encode_error(SmpErr::Legacy { rc: 8 });
        assert_eq!(params_response(&v1), Ok(Err(SmpErr::Legacy { rc: 8 })));
        // rc 0 is success (legacy rc behaviour).
        let ok = parse("a2 62 7263 00 63 6f6666 18 2a").unwrap();
        assert_eq!(
            upload_response(&ok),
            Ok(Ok(UploadResponse {
                off: 42,
                matched: None
            }))
        );
        assert_eq!(upload_response(&[0xa0]), Err(BodyError::Missing("off")));
        assert_eq!(
            SmpErr::Group { group: 1, rc: 23 }.to_string(),
            "SMP image group rc 23 (INVALID_IMAGE_HEADER_MAGIC)"
        );
        assert_eq!(SmpErr::Legacy { rc: 8 }.to_string(), "SMP rc 8 (ENOTSUP)");
    }

    #[test]
    fn state_round_trip() {
        let images = vec![
            ImageSlot {
                slot: 0,
                version: "1.0.0".into(),
                hash: vec![1; 32],
                bootable: true,
                confirmed: true,
                active: true,
                ..ImageSlot::default()
            },
            ImageSlot {
                slot: 1,
                version: "1.1.0".into(),
                hash: vec![2; 32],
                pending: true,
                ..ImageSlot::default()
            },
        ];
        assert_eq!(
            state_response(&encode_state_response(&images)),
            Ok(Ok(images))
        );
        let w = state_write_request(Some(&[3; 32]), false);
        assert_eq!(decode_state_write(&w), Ok((Some(vec![3; 32]), false)));
        assert_eq!(
            decode_state_write(&state_write_request(None, true)),
            Ok((None, true))
        );
    }

    #[test]
    fn echo_and_params() {
        assert_eq!(
            echo_request("hello"),
            parse("a1 61 64 65 68656c6c6f").unwrap()
        );
        let p = Params {
            buf_size: 384,
            buf_count: 4,
        };
        assert_eq!(params_response(&encode_params(p)), Ok(Ok(p)));
        assert_eq!(reset_request(false), [0xa0]);
        assert_eq!(
            echo_response(&parse("a1 61 72 62 6869").unwrap()),
            Ok(Ok("hi".into()))
        );
    }
}
