//! SMP over a serial console: length, CRC, base64 lines.
//!
//! Sources: zephyr `doc/services/device_mgmt/smp_transport.rst` ("UART/serial
//! and console"), `subsys/mgmt/mcumgr/transport/src/serial_util.c`,
//! `include/zephyr/mgmt/mcumgr/transport/serial.h`; mynewt-mcumgr
//! `transport/smp-console.md`; docs/protocols/children.md §4.4.
//!
//! A packet is `u16 BE total_len | SMP message | u16 BE CRC-16/XMODEM`, where
//! `total_len` = message + 2 (it counts the CRC, not itself) and the CRC
//! covers the message only. The packet is standard base64 (padded) and cut
//! into lines: the first starts `06 09`, continuations start `04 14`, every
//! line ends `0a`. Zephyr decodes each line on its own, so each line carries
//! a multiple of 4 base64 characters, and a line is at most
//! [`MAX_LINE`] bytes including the two marker bytes and the newline.

use base64::Engine as _;

use crate::engine::{DataError, Engine, ReadRequest};
use crate::time::Instant;

/// `MCUMGR_SERIAL_MAX_FRAME` in current Zephyr (`serial.h`): the longest line,
/// markers and newline included. Older trees used 128.
pub const MAX_LINE: usize = 127;

/// First-line marker (`MCUMGR_SERIAL_HDR_PKT`, `06 09`).
pub const START: [u8; 2] = [0x06, 0x09];
/// Continuation-line marker (`MCUMGR_SERIAL_HDR_FRAG`, `04 14`).
pub const CONTINUE: [u8; 2] = [0x04, 0x14];

/// Bytes of framing around each SMP message: the length field and the CRC.
/// Zephyr's receive netbuf holds them too, so the largest message is
/// `buf_size - 4` (docs/protocols/children.md §4.4, verified by smpclient `encoded.py`).
pub const PACKET_OVERHEAD: usize = 4;

/// The longest SMP message a packet carries: `total_len` (u16) counts the
/// message and the 2-byte CRC.
pub const MAX_MESSAGE: usize = u16::MAX as usize - 2;

const CRC: crc::Crc<u16> = crc::Crc::<u16>::new(&crc::CRC_16_XMODEM);

/// CRC-16/XMODEM (poly 0x1021, init 0, no reflection): Zephyr's
/// `crc16_itu_t(0x0000, …)`.
pub fn crc16(data: &[u8]) -> u16 {
    CRC.checksum(data)
}

/// Encodes one SMP message as serial lines of at most `line_len` bytes
/// (use [`MAX_LINE`]). Lines shorter than 7 bytes cannot carry a 4-character
/// base64 group, so `line_len` is raised to 7.
///
/// Messages longer than [`MAX_MESSAGE`] do not fit the length field; their
/// length saturates and a peer drops the packet. The engines never build
/// such messages (they size every message by `buf_size`).
pub fn encode(msg: &[u8], line_len: usize) -> Vec<u8> {
    let total_len = u16::try_from(msg.len() + 2).unwrap_or(u16::MAX);
    let mut packet = Vec::with_capacity(msg.len() + 4);
    packet.extend_from_slice(&total_len.to_be_bytes());
    packet.extend_from_slice(msg);
    packet.extend_from_slice(&crc16(msg).to_be_bytes());
    let b64 = base64::engine::general_purpose::STANDARD.encode(&packet);
    let per_line = ((line_len.max(7) - 3) / 4) * 4;
    let mut out = Vec::with_capacity(b64.len() + (b64.len() / per_line + 1) * 3);
    for (i, chunk) in b64.as_bytes().chunks(per_line).enumerate() {
        out.extend_from_slice(if i == 0 { &START } else { &CONTINUE });
        out.extend_from_slice(chunk);
        out.push(b'\n');
    }
    out
}

/// Bytes [`encode`] writes for a message of `msg_len` bytes in lines of at
/// most `line_len` bytes: the packet (`msg_len + 4`) in base64, plus two
/// marker bytes and a newline per line. Engines size chunks with it.
pub fn wire_len(msg_len: usize, line_len: usize) -> usize {
    let chars = (msg_len + PACKET_OVERHEAD).div_ceil(3) * 4;
    let per_line = ((line_len.max(7) - 3) / 4) * 4;
    chars + chars.div_ceil(per_line) * 3
}

/// What the decoder found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeEvent {
    /// A complete SMP message (header and CBOR) whose CRC checked.
    Message(Vec<u8>),
    /// A complete packet whose CRC did not check; it is dropped.
    BadCrc {
        /// CRC carried by the packet.
        received: u16,
        /// CRC computed over the message.
        computed: u16,
    },
    /// The length field is below the minimum (an 8-byte header plus CRC) or
    /// above the decoder's limit; the packet is dropped.
    BadLength(u16),
    /// A line ended with more decoded bytes than the length field announced.
    Overrun,
    /// A line of the packet held a character that is not base64, or a
    /// base64 group cut by the end of the line; the packet is dropped.
    BadBase64,
    /// A new `06 09` arrived before the previous packet was complete; the
    /// incomplete one is dropped.
    Restarted,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Outside SMP lines: console text, looking for a marker.
    Text,
    /// Saw `06` or `04`; the next byte decides. `in_line` when the byte
    /// came inside an SMP line (only `06 09` counts there: a restart).
    Marker { first: u8, in_line: bool },
    /// Inside an SMP line that belongs to the packet being assembled.
    Line,
    /// Inside an SMP line that is being ignored (after an error, or a
    /// continuation with no packet pending).
    SkipLine,
}

/// Streaming decoder for SMP serial lines. Memory is bounded by
/// `max_packet`: bytes beyond it are never stored.
///
/// Call order: [`Decoder::handle_bytes`] with whatever the port returned,
/// then [`Decoder::poll_event`] until `None`, and again `handle_bytes` with
/// the unconsumed rest (`handle_bytes` stops after each event so that at
/// most one event is ever queued).
///
/// Text between packets is skipped: a marker pair may start anywhere, as
/// long as it is not inside an SMP line. A `04 14` line with no packet
/// pending is dropped (Zephyr `mcumgr_serial_process_frag`).
#[derive(Debug)]
pub struct Decoder {
    state: State,
    max_packet: usize,
    /// Decoded packet bytes: length field, message, CRC.
    packet: Vec<u8>,
    /// Whether a packet is being assembled.
    pending: bool,
    quad: [u8; 4],
    quad_len: usize,
    /// A padded group ended the line's data: only the newline may follow.
    padded: bool,
    event: Option<DecodeEvent>,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder::new(Decoder::DEFAULT_MAX_PACKET)
    }
}

impl Decoder {
    /// Default limit on a decoded packet: 8 KiB, well above Zephyr's
    /// largest default netbuf (2048 with UDP) and the gateway's needs.
    pub const DEFAULT_MAX_PACKET: usize = 8192;

    /// A decoder that drops packets whose length field exceeds `max_packet - 2`.
    pub fn new(max_packet: usize) -> Self {
        Decoder {
            state: State::Text,
            max_packet: max_packet.clamp(12, 65537),
            packet: Vec::new(),
            pending: false,
            quad: [0; 4],
            quad_len: 0,
            padded: false,
            event: None,
        }
    }

    /// Takes bytes from the port. Returns how many were consumed: all of
    /// them, or fewer when an event is ready (poll it, then call again
    /// with the rest).
    pub fn handle_bytes(&mut self, bytes: &[u8]) -> usize {
        for (i, &b) in bytes.iter().enumerate() {
            self.byte(b);
            if self.event.is_some() {
                return i + 1;
            }
        }
        bytes.len()
    }

    /// Feeds all of `bytes` and collects every event (for tests and simple drivers).
    pub fn decode_all(&mut self, mut bytes: &[u8]) -> Vec<DecodeEvent> {
        let mut out = Vec::new();
        while !bytes.is_empty() {
            let n = self.handle_bytes(bytes);
            bytes = &bytes[n..];
            out.extend(self.poll_event());
        }
        out
    }

    /// The next event, if one is ready.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<DecodeEvent> {
        self.event.take()
    }

    /// Whether a packet is partly received.
    pub fn is_pending(&self) -> bool {
        self.pending
    }

    fn fail(&mut self, ev: DecodeEvent) {
        self.pending = false;
        self.packet.clear();
        self.state = State::SkipLine;
        self.event = Some(ev);
    }

    fn byte(&mut self, b: u8) {
        match self.state {
            State::Text => {
                if b == START[0] || b == CONTINUE[0] {
                    self.state = State::Marker {
                        first: b,
                        in_line: false,
                    };
                }
            }
            State::Marker { first, in_line } => {
                if first == START[0] && b == START[1] {
                    self.begin_line(true);
                } else if !in_line && first == CONTINUE[0] && b == CONTINUE[1] {
                    self.begin_line(false);
                } else if in_line {
                    // A stray 06 inside an SMP line is not base64.
                    if self.pending {
                        self.fail(DecodeEvent::BadBase64);
                    }
                    self.state = if b == b'\n' {
                        State::Text
                    } else {
                        State::SkipLine
                    };
                } else if b == START[0] || b == CONTINUE[0] {
                    self.state = State::Marker {
                        first: b,
                        in_line: false,
                    };
                } else {
                    self.state = State::Text;
                }
            }
            State::Line if b == START[0] => {
                self.state = State::Marker {
                    first: b,
                    in_line: true,
                };
            }
            State::Line => self.line_byte(b),
            // A new packet start inside an ignored line restarts reassembly.
            State::SkipLine if b == START[0] => {
                self.state = State::Marker {
                    first: b,
                    in_line: true,
                };
            }
            State::SkipLine => {
                if b == b'\n' {
                    self.state = State::Text;
                }
            }
        }
    }

    fn begin_line(&mut self, start: bool) {
        self.quad_len = 0;
        self.padded = false;
        if start {
            if self.pending {
                self.event = Some(DecodeEvent::Restarted);
            }
            self.pending = true;
            self.packet.clear();
            self.state = State::Line;
        } else if self.pending {
            self.state = State::Line;
        } else {
            self.state = State::SkipLine;
        }
    }

    fn line_byte(&mut self, b: u8) {
        match b {
            b'\n' => {
                self.state = State::Text;
                if self.quad_len != 0 {
                    self.fail(DecodeEvent::BadBase64);
                    self.state = State::Text;
                }
            }
            // Tolerate CR before LF from consoles that translate newlines.
            b'\r' => {}
            _ => {
                if self.padded {
                    self.fail(DecodeEvent::BadBase64);
                    return;
                }
                self.quad[self.quad_len] = b;
                self.quad_len += 1;
                if self.quad_len == 4 {
                    self.quad_len = 0;
                    match decode_quad(self.quad) {
                        Some((bytes, n)) => {
                            self.padded = n < 3;
                            for &x in &bytes[..n] {
                                if !self.push(x) {
                                    return;
                                }
                            }
                        }
                        None => self.fail(DecodeEvent::BadBase64),
                    }
                }
            }
        }
    }

    /// Appends one decoded byte; false when the packet ended in error.
    fn push(&mut self, x: u8) -> bool {
        if !self.pending {
            // The packet completed earlier on this line: extra bytes.
            self.fail(DecodeEvent::Overrun);
            return false;
        }
        self.packet.push(x);
        if self.packet.len() == 2 {
            let total = u16::from_be_bytes([self.packet[0], self.packet[1]]);
            let t = usize::from(total);
            if t < super::header::HEADER_LEN + 2 || t + 2 > self.max_packet {
                self.fail(DecodeEvent::BadLength(total));
                return false;
            }
        }
        if self.packet.len() >= 2 {
            let total = usize::from(u16::from_be_bytes([self.packet[0], self.packet[1]]));
            if self.packet.len() == total + 2 {
                let body = &self.packet[2..];
                let residue = crc16(body);
                let (msg, crc) = body.split_at(body.len() - 2);
                self.event = Some(if residue == 0 {
                    DecodeEvent::Message(msg.to_vec())
                } else {
                    DecodeEvent::BadCrc {
                        received: u16::from_be_bytes([crc[0], crc[1]]),
                        computed: crc16(msg),
                    }
                });
                self.pending = false;
                self.packet.clear();
                // Stay in Line: the rest of the line must be empty (or Overrun).
            }
        }
        true
    }
}

fn b64_value(c: u8) -> Option<u8> {
    match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    }
}

/// Decodes one 4-character group (RFC 4648 §4): up to 3 bytes and their count.
fn decode_quad(q: [u8; 4]) -> Option<([u8; 3], usize)> {
    let a = b64_value(q[0])?;
    let b = b64_value(q[1])?;
    let (c, d, n) = match (q[2], q[3]) {
        (b'=', b'=') => (0, 0, 1),
        (c, b'=') => (b64_value(c)?, 0, 2),
        (c, d) => (b64_value(c)?, b64_value(d)?, 3),
    };
    let v = u32::from(a) << 18 | u32::from(b) << 12 | u32::from(c) << 6 | u32::from(d);
    Some(([(v >> 16) as u8, (v >> 8) as u8, v as u8], n))
}

/// An SMP engine on the serial console transport: the engine's messages go
/// out framed as base64 lines ([`encode`]), bytes from the port are decoded
/// back into messages ([`Decoder`]) before the engine sees them. Console
/// text between packets is skipped; a damaged packet is dropped (counted in
/// [`Console::bad_packets`]) and the engine's timer resends its request.
///
/// It is itself an [`Engine`] whose input and output are line bytes, so a
/// serial driver runs SMP and framed-profile engines with one loop.
#[derive(Debug)]
pub struct Console<E> {
    engine: E,
    decoder: Decoder,
    line_len: usize,
    bad_packets: u64,
}

impl<E> Console<E> {
    /// `engine` in lines of [`MAX_LINE`] bytes.
    pub fn new(engine: E) -> Self {
        Console {
            engine,
            decoder: Decoder::default(),
            line_len: MAX_LINE,
            bad_packets: 0,
        }
    }

    /// The engine inside.
    pub fn engine(&self) -> &E {
        &self.engine
    }

    /// Packets dropped so far (bad CRC, base64 or length, cut short).
    pub fn bad_packets(&self) -> u64 {
        self.bad_packets
    }
}

impl<E: Engine> Engine for Console<E> {
    type Event = E::Event;

    fn handle_input(&mut self, mut bytes: &[u8], now: Instant) {
        while !bytes.is_empty() {
            let used = self.decoder.handle_bytes(bytes);
            bytes = &bytes[used..];
            while let Some(ev) = self.decoder.poll_event() {
                match ev {
                    DecodeEvent::Message(msg) => self.engine.handle_input(&msg, now),
                    _ => self.bad_packets += 1,
                }
            }
        }
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.engine.handle_timeout(now);
    }

    fn handle_data(&mut self, offset: u64, data: &[u8], now: Instant) -> Result<(), DataError> {
        self.engine.handle_data(offset, data, now)
    }

    fn poll_read(&self) -> Option<ReadRequest> {
        self.engine.poll_read()
    }

    fn poll_event(&mut self) -> Option<E::Event> {
        self.engine.poll_event()
    }

    fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.engine
            .poll_transmit()
            .map(|msg| encode(&msg, self.line_len))
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.engine.poll_timeout()
    }

    fn is_finished(&self) -> bool {
        self.engine.is_finished()
    }

    fn retries(&self) -> u64 {
        self.engine.retries()
    }

    fn next_seq(&self) -> Option<u8> {
        self.engine.next_seq()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hex::parse;

    #[test]
    fn crc_check_value() {
        assert_eq!(crc16(b"123456789"), 0x31C3);
    }

    #[test]
    fn golden_echo_frame() {
        let msg = parse("0a 00 00 09 00 00 00 00 a1 61 64 65 68 65 6c 6c 6f").unwrap();
        let mut want = vec![6, 9];
        want.extend_from_slice(b"ABMKAAAJAAAAAKFhZGVoZWxsb6J/\n");
        assert_eq!(encode(&msg, MAX_LINE), want);
        let mut d = Decoder::default();
        assert_eq!(d.decode_all(&want), vec![DecodeEvent::Message(msg)]);
    }

    #[test]
    fn taskstat_line_from_mcumgr_protocol_md() {
        let mut line = vec![6, 9];
        line.extend_from_slice(b"AAoAAAAAAAAAAiBC\n");
        let mut d = Decoder::default();
        assert_eq!(
            d.decode_all(&line),
            vec![DecodeEvent::Message(
                parse("00 00 00 00 00 00 00 02").unwrap()
            )]
        );
    }

    #[test]
    fn three_hundred_bytes_split_127_127_127_39() {
        let msg: Vec<u8> = (0..300u32).map(|i| i as u8).collect();
        let wire = encode(&msg, MAX_LINE);
        let lens: Vec<usize> = wire
            .split_inclusive(|&b| b == b'\n')
            .map(<[u8]>::len)
            .collect();
        assert_eq!(lens, [127, 127, 127, 39]);
    }

    #[test]
    fn skips_text_and_reports_errors() {
        let msg = parse("0a 00 00 09 00 00 00 00 a1 61 64 65 68 65 6c 6c 6f").unwrap();
        let frame = encode(&msg, MAX_LINE);
        let mut wire = b"boot: hello\r\n[00:00:01] <inf> x\x04".to_vec();
        wire.extend_from_slice(&frame);
        let mut bad = frame.clone();
        bad[10] = b'B'; // one base64 char changed: still base64, bad CRC
        wire.extend_from_slice(&bad);
        wire.extend_from_slice(b"\x04\x14AAAA\n"); // orphan continuation: dropped
        let mut d = Decoder::default();
        let evs = d.decode_all(&wire);
        assert_eq!(evs.len(), 2, "{evs:?}");
        assert_eq!(evs[0], DecodeEvent::Message(msg));
        assert!(matches!(evs[1], DecodeEvent::BadCrc { .. }));
    }

    #[test]
    fn restart_and_bad_length() {
        let mut d = Decoder::new(64);
        // Length 0x1000 exceeds the limit.
        let mut wire = vec![6, 9];
        wire.extend_from_slice(b"EAAA\n");
        assert_eq!(d.decode_all(&wire), vec![DecodeEvent::BadLength(0x1000)]);
        let msg = parse("0a 00 00 09 00 00 00 00 a1 61 64 65 68 65 6c 6c 6f").unwrap();
        let frame = encode(&msg, 11);
        let first_line_end = frame.iter().position(|&b| b == b'\n').unwrap() + 1;
        let mut wire = frame[..first_line_end].to_vec();
        wire.extend_from_slice(&frame);
        assert_eq!(
            d.decode_all(&wire),
            vec![DecodeEvent::Restarted, DecodeEvent::Message(msg)]
        );
        let mut wire = vec![6, 9];
        wire.extend_from_slice(b"AA*A\n");
        assert_eq!(d.decode_all(&wire), vec![DecodeEvent::BadBase64]);
        let mut wire = vec![6, 9];
        wire.extend_from_slice(b"AAoAAA\n");
        assert_eq!(d.decode_all(&wire), vec![DecodeEvent::BadBase64]);
    }

    #[test]
    fn wire_len_counts_what_encode_writes() {
        for n in 8..1200 {
            let msg = vec![0x5a; n];
            for line in [7, 64, 127, 128] {
                assert_eq!(wire_len(n, line), encode(&msg, line).len(), "{n} {line}");
            }
        }
    }
}
