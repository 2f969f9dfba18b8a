//! Profile validation: every kind of mistake gets its own error, naming the
//! file and the line. Each case edits the valid `acme-rs485` profile in one
//! place.

use otabridge_codecs::framed::profile::{self, Profile, ProfileErrorKind as K};

const FILE: &str = "profiles/acme-test.toml";

struct Case {
    /// What the mistake is.
    what: &'static str,
    /// Texts of the valid profile to replace (each must occur exactly
    /// once) and their replacements.
    edits: &'static [(&'static str, &'static str)],
    /// The error must be this kind.
    kind: fn(&K) -> bool,
    /// The error's line is the line where this text starts in the edited
    /// profile; `None`: where the first replacement starts.
    at: Option<&'static str>,
}

fn base() -> &'static str {
    profile::builtin_text("acme-rs485").unwrap()
}

const VERIFY_BLOCK: &str = "[messages.verify]
command = 0x13
request = [{ name = \"crc32\", type = \"u32le\" }]
reply_command = 0x93
reply = [{ name = \"status\", type = \"u8\" }]
timeout_ms = 1500
retries = 2
";

fn cases() -> Vec<Case> {
    vec![
        Case {
            what: "unterminated string",
            edits: &[("sync = \"A5 5A\"", "sync = \"A5 5A")],
            kind: |k| matches!(k, K::Syntax(_)),
            at: None,
        },
        Case {
            what: "unknown key",
            edits: &[("sync = \"A5 5A\"", "sync = \"A5 5A\"\nbaud = 9600")],
            kind: |k| matches!(k, K::UnknownKey(m) if m.contains("baud")),
            at: Some("baud = 9600"),
        },
        Case {
            what: "unknown key in a field",
            edits: &[("  { name = \"size\", type = \"u32le\" },", "  { name = \"size\", type = \"u32le\", endian = \"big\" },")],
            kind: |k| matches!(k, K::UnknownKey(m) if m.contains("endian")),
            at: None,
        },
        Case {
            what: "missing required key",
            edits: &[("sync = \"A5 5A\"\n", "")],
            kind: |k| matches!(k, K::MissingKey(m) if m.contains("sync")),
            at: Some("[framing]"),
        },
        Case {
            what: "string where a number belongs",
            edits: &[("command = 0x01", "command = \"0x01\"")],
            kind: |k| matches!(k, K::WrongType(_)),
            at: None,
        },
        Case {
            what: "command byte out of range",
            edits: &[("command = 0x01", "command = 0x101")],
            kind: |k| matches!(k, K::OutOfRange { key, value: 257, .. } if key == "messages.version_query.command"),
            at: None,
        },
        Case {
            what: "retries out of range",
            edits: &[("retries = 5", "retries = 500")],
            kind: |k| matches!(k, K::OutOfRange { key, .. } if key == "messages.chunk.retries"),
            at: None,
        },
        Case {
            what: "zero timeout",
            edits: &[("timeout_ms = 500\nretries = 5", "timeout_ms = 0\nretries = 5")],
            kind: |k| matches!(k, K::OutOfRange { key, value: 0, .. } if key == "messages.chunk.timeout_ms"),
            at: None,
        },
        Case {
            what: "bad protocol name",
            edits: &[("name = \"acme-rs485\"", "name = \"ACME RS485\"")],
            kind: |k| matches!(k, K::BadName(_)),
            at: None,
        },
        Case {
            what: "sync is not hex",
            edits: &[("sync = \"A5 5A\"", "sync = \"A5 5G\"")],
            kind: |k| matches!(k, K::BadHex { key, .. } if key == "framing.sync"),
            at: None,
        },
        Case {
            what: "empty sync",
            edits: &[("sync = \"A5 5A\"", "sync = \"\"")],
            kind: |k| matches!(k, K::SyncLength(0)),
            at: None,
        },
        Case {
            what: "unknown length type",
            edits: &[("length = { type = \"u16le\"", "length = { type = \"u24le\"")],
            kind: |k| matches!(k, K::UnknownUintType { name, .. } if name == "u24le"),
            at: None,
        },
        Case {
            what: "unknown frame part",
            edits: &[("covers = [\"payload\"] }", "covers = [\"payload\", \"checksum\"] }")],
            kind: |k| matches!(k, K::UnknownPart { name, .. } if name == "checksum"),
            at: None,
        },
        Case {
            what: "header without length",
            edits: &[("header = [\"command\", \"length\"]", "header = [\"command\"]")],
            kind: |k| matches!(k, K::HeaderMissing("length")),
            at: None,
        },
        Case {
            what: "payload in the header",
            edits: &[("header = [\"command\", \"length\"]", "header = [\"command\", \"length\", \"payload\"]")],
            kind: |k| matches!(k, K::HeaderPart(p) if p == "payload"),
            at: None,
        },
        Case {
            what: "part listed twice",
            edits: &[("header = [\"command\", \"length\"]", "header = [\"command\", \"length\", \"command\"]")],
            kind: |k| matches!(k, K::Repeated { item, .. } if item == "command"),
            at: None,
        },
        Case {
            what: "length covers a part the frame lacks",
            edits: &[("covers = [\"payload\"] }", "covers = [\"seq\", \"payload\"] }")],
            kind: |k| matches!(k, K::NotInFrame { part, .. } if part == "seq"),
            at: None,
        },
        Case {
            what: "length does not cover the payload",
            edits: &[("covers = [\"payload\"] }", "covers = [\"command\"] }")],
            kind: |k| matches!(k, K::LengthWithoutPayload),
            at: None,
        },
        Case {
            what: "CRC coverage with a gap",
            edits: &[("covers = [\"command\", \"length\", \"payload\"]", "covers = [\"command\", \"payload\"]")],
            kind: |k| matches!(k, K::CrcCoverage(m) if m.contains("contiguous")),
            at: None,
        },
        Case {
            what: "CRC covering itself",
            edits: &[("covers = [\"command\", \"length\", \"payload\"]", "covers = [\"command\", \"length\", \"payload\", \"crc\"]")],
            kind: |k| matches!(k, K::CrcCoverage(m) if m.contains("itself")),
            at: None,
        },
        Case {
            what: "unknown CRC algorithm",
            edits: &[("algorithm = \"crc16-modbus\"", "algorithm = \"crc16-kermit\"")],
            kind: |k| matches!(k, K::UnknownCrc(a) if a == "crc16-kermit"),
            at: None,
        },
        Case {
            what: "two-byte CRC without endianness",
            edits: &[(", endian = \"little\" }", " }")],
            kind: |k| matches!(k, K::CrcEndianMissing(2)),
            at: Some("crc = {"),
        },
        Case {
            what: "unknown endianness",
            edits: &[("endian = \"little\"", "endian = \"middle\"")],
            kind: |k| matches!(k, K::UnknownEndian(e) if e == "middle"),
            at: None,
        },
        Case {
            what: "coverage without a CRC",
            edits: &[("algorithm = \"crc16-modbus\", covers = [\"command\", \"length\", \"payload\"], endian = \"little\"", "algorithm = \"none\", covers = [\"command\", \"length\", \"payload\"]")],
            kind: |k| matches!(k, K::CrcKeyWithoutCrc("covers")),
            at: None,
        },
        Case {
            what: "missing message",
            edits: &[(VERIFY_BLOCK, "")],
            kind: |k| matches!(k, K::MissingMessage("verify")),
            at: Some("[messages."),
        },
        Case {
            what: "message without a reply",
            edits: &[("reply_command = 0x93\nreply = [{ name = \"status\", type = \"u8\" }]\n", "")],
            kind: |k| matches!(k, K::MissingReply("verify")),
            at: Some("[messages.verify]"),
        },
        Case {
            what: "reply fields without a reply command",
            edits: &[("reply_command = 0x93\n", "")],
            kind: |k| matches!(k, K::ReplyWithoutCommand("verify")),
            at: Some("reply = [{ name = \"status\", type = \"u8\" }]\ntimeout_ms = 1500"),
        },
        Case {
            what: "two requests with one command byte",
            edits: &[("command = 0x13", "command = 0x12")],
            kind: |k| matches!(k, K::DuplicateCommand { command: 0x12, first, second } if first == "chunk" && second == "verify"),
            at: Some("command = 0x12\nrequest = [{"),
        },
        Case {
            what: "key of another message",
            edits: &[("timeout_ms = 2000", "timeout_ms = 2000\nmax_chunk = 64")],
            kind: |k| matches!(k, K::KeyNotAllowed { key: "max_chunk", allowed_in: "chunk" }),
            at: Some("max_chunk = 64"),
        },
        Case {
            what: "unknown field type",
            edits: &[("  { name = \"size\", type = \"u32le\" },", "  { name = \"size\", type = \"u24le\" },")],
            kind: |k| matches!(k, K::UnknownFieldType(t) if t == "u24le"),
            at: None,
        },
        Case {
            what: "misspelt field name",
            edits: &[("  { name = \"size\", type = \"u32le\" },", "  { name = \"sise\", type = \"u32le\" },")],
            kind: |k| matches!(k, K::UnknownFieldName { message: "begin", direction: "request", name, .. } if name == "sise"),
            at: None,
        },
        Case {
            what: "required field missing",
            edits: &[("  { name = \"data\", type = \"bytes\", prefix = \"u8\" },\n", "")],
            kind: |k| matches!(k, K::MissingField { message: "chunk", direction: "request", name: "data" }),
            at: Some("request = [\n  { name = \"offset\""),
        },
        Case {
            what: "field without a name",
            edits: &[("  { name = \"status\", type = \"u8\" },\n  { name = \"offset\"", "  { type = \"u8\" },\n  { name = \"offset\"")],
            kind: |k| matches!(k, K::FieldWithoutName(t) if t == "u8"),
            at: None,
        },
        Case {
            what: "field type that does not fit its meaning",
            edits: &[("  { name = \"offset\", type = \"u32le\" },\n  { name = \"data\"", "  { name = \"offset\", type = \"bytes\", prefix = \"u8\" },\n  { name = \"data\"")],
            kind: |k| matches!(k, K::FieldTypeMismatch { name, .. } if name == "offset"),
            at: None,
        },
        Case {
            what: "a CRC-32 in 16 bits",
            edits: &[(
                "  { name = \"crc32\", type = \"u32le\" },",
                "  { name = \"crc32\", type = \"u16le\" },",
            )],
            kind: |k| matches!(k, K::FieldTypeMismatch { name, .. } if name == "crc32"),
            at: None,
        },
        Case {
            what: "prefix on an integer",
            edits: &[("  { name = \"size\", type = \"u32le\" },", "  { name = \"size\", type = \"u32le\", prefix = \"u8\" },")],
            kind: |k| matches!(k, K::FieldKeyNotAllowed { key: "prefix", applies_to: "bytes" }),
            at: None,
        },
        Case {
            what: "bytes with prefix and len",
            edits: &[("  { name = \"version\", type = \"bytes\", prefix = \"u8\" },\n]\nreply_command = 0x90", "  { name = \"version\", type = \"bytes\", prefix = \"u8\", len = 8 },\n]\nreply_command = 0x90")],
            kind: |k| matches!(k, K::PrefixAndLen(n) if n == "version"),
            at: None,
        },
        Case {
            what: "rest-of-payload bytes before another field",
            edits: &[("  { name = \"offset\", type = \"u32le\" },\n  { name = \"data\", type = \"bytes\", prefix = \"u8\" },", "  { name = \"data\", type = \"bytes\" },\n  { name = \"offset\", type = \"u32le\" },")],
            kind: |k| matches!(k, K::RestNotLast(n) if n == "data"),
            at: None,
        },
        Case {
            what: "const without a value",
            edits: &[("command = 0x11\n", "command = 0x11\nrequest = [{ type = \"const\" }]\n")],
            kind: |k| matches!(k, K::ConstValue),
            at: Some("request = [{ type = \"const\" }]"),
        },
        Case {
            what: "message too large for the length field",
            edits: &[
                ("length = { type = \"u16le\"", "length = { type = \"u8\""),
                ("max_chunk = 128", "max_chunk = 255"),
            ],
            kind: |k| matches!(k, K::PayloadTooLarge { message: "chunk", direction: "request", size: 260, limit: 255 }),
            at: Some("[messages.chunk]"),
        },
        Case {
            what: "chunk larger than its length prefix",
            edits: &[("max_chunk = 128", "max_chunk = 256")],
            kind: |k| matches!(k, K::ChunkTooLargeForPrefix { max_chunk: 256, limit: 255 }),
            at: Some("  { name = \"data\""),
        },
        Case {
            what: "chunk_size field narrower than max_chunk",
            edits: &[
                (
                    "  { name = \"version\", type = \"bytes\", prefix = \"u8\" },\n]\nreply_command = 0x90",
                    "  { name = \"version\", type = \"bytes\", prefix = \"u8\" },\n  { name = \"chunk_size\", type = \"u8\" },\n]\nreply_command = 0x90",
                ),
                ("max_chunk = 128", "max_chunk = 300"),
                ("prefix = \"u8\" },\n]\nreply_command = 0x92", "prefix = \"u16le\" },\n]\nreply_command = 0x92"),
            ],
            kind: |k| matches!(k, K::ChunkSizeFieldTooNarrow { max_chunk: 300, limit: 255 }),
            at: Some("  { name = \"chunk_size\""),
        },
        Case {
            what: "no image digest anywhere",
            edits: &[
                ("  { name = \"crc32\", type = \"u32le\" },\n  { name = \"version\"", "  { name = \"_crc\", type = \"u32le\" },\n  { name = \"version\""),
                ("request = [{ name = \"crc32\"", "request = [{ name = \"_crc\""),
            ],
            kind: |k| matches!(k, K::NoIntegrity),
            at: Some("[messages.begin]"),
        },
        Case {
            what: "status listed twice",
            edits: &[("value = 0x02", "value = 0x01")],
            kind: |k| matches!(k, K::DuplicateStatus(1)),
            at: Some("value = 0x01\nmeans = \"restart\""),
        },
        Case {
            what: "unknown status meaning",
            edits: &[("means = \"restart\"", "means = \"reboot\"")],
            kind: |k| matches!(k, K::UnknownMeaning(m) if m == "reboot"),
            at: None,
        },
        Case {
            what: "result code IoTDA does not have",
            edits: &[("result_code = 5", "result_code = 11")],
            kind: |k| matches!(k, K::BadResultCode(11)),
            at: None,
        },
        Case {
            what: "result code on an ok status",
            edits: &[("value = 0x00\nmeans = \"ok\"", "value = 0x00\nmeans = \"ok\"\nresult_code = 0")],
            kind: |k| matches!(k, K::ResultCodeNotAllowed(m) if m == "ok"),
            at: Some("result_code = 0"),
        },
        Case {
            what: "failure without a result code",
            edits: &[("means = \"fail\"\nresult_code = 5\n", "means = \"fail\"\n")],
            kind: |k| matches!(k, K::MissingResultCode),
            at: Some("[[status]]\nvalue = 0x10"),
        },
        Case {
            what: "no ok status",
            edits: &[("value = 0x00\nmeans = \"ok\"", "value = 0x00\nmeans = \"resync\"")],
            kind: |k| matches!(k, K::NoOkStatus),
            at: Some("[[status]]"),
        },
        Case {
            what: "status wider than the status field",
            edits: &[("value = 0x15", "value = 0x115")],
            kind: |k| matches!(k, K::StatusTooWide { value: 0x115, ty: "u8", .. }),
            at: None,
        },
    ]
}

fn line_of(text: &str, needle: &str) -> usize {
    let at = text
        .find(needle)
        .unwrap_or_else(|| panic!("{needle:?} not in the edited profile"));
    text[..at].matches('\n').count() + 1
}

#[test]
fn the_builtin_profiles_are_valid() {
    for (name, text) in profile::BUILTIN {
        let p = Profile::parse(text, name).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(p.name, *name);
    }
    assert!(profile::builtin("no-such-profile").is_none());
}

#[test]
fn each_mistake_has_its_own_error_with_file_and_line() {
    let mut kinds = Vec::new();
    let mut failures = Vec::new();
    for case in cases() {
        let mut text = base().to_string();
        for (from, to) in case.edits {
            assert_eq!(
                text.matches(from).count(),
                1,
                "{}: {from:?} must occur once",
                case.what
            );
            text = text.replacen(from, to, 1);
        }
        let err = match Profile::parse(&text, FILE) {
            Ok(_) => {
                failures.push(format!("{}: accepted", case.what));
                continue;
            }
            Err(e) => e,
        };
        let line = line_of(&text, case.at.unwrap_or(case.edits[0].1));
        if !(case.kind)(&err.kind) || err.line != line || err.file != FILE {
            failures.push(format!("{}: want line {line}, got {err}", case.what));
        }
        let shown = err.to_string();
        assert!(
            shown.starts_with(&format!("{FILE}:{}: ", err.line)),
            "{shown}"
        );
        kinds.push(std::mem::discriminant(&err.kind));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // Distinct kinds, so that each message is specific.
    let unique: std::collections::HashSet<_> = kinds.iter().collect();
    assert!(unique.len() >= 40, "{} distinct kinds", unique.len());
}

#[test]
fn messages_say_what_is_wrong() {
    let text = base().replacen("algorithm = \"crc16-modbus\"", "algorithm = \"crc-16\"", 1);
    let err = Profile::parse(&text, "my.toml").unwrap_err();
    assert_eq!(
        err.to_string(),
        "my.toml:17: unknown CRC algorithm `crc-16` (expected none, crc8, crc16-modbus, \
         crc16-ccitt-false, crc16-xmodem or crc32)"
    );
    let text = base().replacen("{ name = \"size\"", "{ name = \"length\"", 1);
    let err = Profile::parse(&text, "my.toml").unwrap_err();
    assert_eq!(
        err.to_string(),
        "my.toml:32: `begin.request` cannot carry a field named `length` (allowed: size, \
         crc32, sha256, version, chunk_size; prefix other fields with `_`)"
    );
}

#[test]
fn optional_parts_have_defaults() {
    // No offset query, no recovery table, no timeouts: still valid.
    let text = base();
    let start = text.find("[messages.offset_query]").unwrap();
    let end = text.find("[messages.chunk]").unwrap();
    let mut t = format!("{}{}", &text[..start], &text[end..]);
    let rec = t.find("[recovery]").unwrap();
    t.truncate(rec);
    let t = t.replace("timeout_ms = 500\nretries = 5\n", "");
    let p = Profile::parse(&t, FILE).unwrap();
    assert!(p.message(profile::MessageKind::OffsetQuery).is_none());
    let chunk = p.message(profile::MessageKind::Chunk).unwrap();
    assert_eq!((chunk.timeout.as_millis(), chunk.retries), (1000, 3));
    assert_eq!(p.recovery.max_recoveries, 5);
}

#[test]
fn mangled_profiles_never_panic_and_errors_point_inside_the_file() {
    use otabridge_codecs::rng::Rng;
    const ALPHABET: &[u8] = b" \n=[]{}\",.#-_0123456789abcdefxz";
    for (name, base) in profile::BUILTIN {
        let mut rng = Rng::new(0x00f2_a3ed);
        for _ in 0..1500 {
            let mut text = base.as_bytes().to_vec();
            for _ in 0..rng.range_inclusive(1, 4) {
                let at = rng.range_inclusive(0, text.len() as u64 - 1) as usize;
                let len = rng.range_inclusive(0, 6) as usize;
                let end = (at + len).min(text.len());
                let with: Vec<u8> = (0..rng.range_inclusive(0, 6))
                    .map(|_| ALPHABET[rng.range_inclusive(0, ALPHABET.len() as u64 - 1) as usize])
                    .collect();
                text.splice(at..end, with);
            }
            let text = String::from_utf8_lossy(&text).into_owned();
            if let Err(e) = Profile::parse(&text, name) {
                let lines = text.lines().count().max(1);
                assert!(e.line >= 1 && e.line <= lines + 1, "{e} (of {lines} lines)");
            }
        }
    }
}
