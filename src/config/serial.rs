//! A serial child's line and SMP settings: the validated values and their
//! defaults (docs/serial.md lists the keys).

use std::time::Duration;

/// Parity bit of a serial line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parity {
    /// No parity bit (`N`).
    None,
    /// Even parity (`E`).
    Even,
    /// Odd parity (`O`).
    Odd,
}

/// Character framing of a serial line, written `8N1` in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Framing {
    /// Data bits, 5 to 8.
    pub data_bits: u8,
    /// Parity.
    pub parity: Parity,
    /// Stop bits, 1 or 2.
    pub stop_bits: u8,
}

impl Framing {
    /// 8 data bits, no parity, 1 stop bit: what Zephyr's console UART uses.
    pub const EIGHT_N_ONE: Framing = Framing {
        data_bits: 8,
        parity: Parity::None,
        stop_bits: 1,
    };

    /// Parses `8N1`, `7E1`, `8O2`, ...
    pub fn parse(s: &str) -> Option<Framing> {
        let b = s.as_bytes();
        if b.len() != 3 {
            return None;
        }
        let data_bits = match b[0] {
            d @ b'5'..=b'8' => d - b'0',
            _ => return None,
        };
        let parity = match b[1].to_ascii_uppercase() {
            b'N' => Parity::None,
            b'E' => Parity::Even,
            b'O' => Parity::Odd,
            _ => return None,
        };
        let stop_bits = match b[2] {
            s @ (b'1' | b'2') => s - b'0',
            _ => return None,
        };
        Some(Framing {
            data_bits,
            parity,
            stop_bits,
        })
    }

    /// Bits on the wire per character: start bit, data, parity, stop.
    pub fn bits_per_char(&self) -> u32 {
        1 + u32::from(self.data_bits)
            + u32::from(self.parity != Parity::None)
            + u32::from(self.stop_bits)
    }
}

/// Serial line and SMP settings of one child; [`Default`] gives the values
/// documented per field (docs/serial.md lists the keys).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SerialOptions {
    /// `framing`: character framing (default 8N1).
    pub framing: Framing,
    /// `buf_size`: the device's SMP buffer; when set, MCUmgr params is not
    /// asked (for devices built without it). Default: ask the device.
    pub buf_size: Option<usize>,
    /// `timeout_ms`: wait for an answer (default 2500).
    pub timeout: Duration,
    /// `first_timeout_ms`: wait for the answer to the first chunk, which
    /// may erase the slot (default 40000).
    pub first_timeout: Duration,
    /// `retries`: extra attempts per request (default 4).
    pub retries: u32,
    /// `window`: most upload requests on the line at once (default
    /// [`DEFAULT_WINDOW`]; 1 is lock-step). The upload starts with one,
    /// grows by one per in-order answer, and falls back to one for the rest
    /// of the upload after any loss (docs/serial.md, "Pipelining").
    pub window: usize,
    /// `reboot_wait_ms`: silence after the reset before asking (default 5000).
    pub reboot_wait: Duration,
    /// `reopen_timeout_ms`: how long a port that went away (a USB-CDC
    /// device re-enumerating while its child reboots) is waited for before
    /// the operation fails (default 60000; every serial child).
    pub reopen_timeout: Duration,
    /// `reboot_timeout_ms`: how long to keep asking after the reset for the
    /// device to come back (default 60000).
    pub reboot_timeout: Duration,
    /// The health-gated confirm (SMP children; `health_*` keys, else
    /// `[ota]`'s): `None` confirms at once.
    pub health: Option<Box<super::health::HealthCheck>>,
}

impl Default for SerialOptions {
    fn default() -> Self {
        SerialOptions {
            framing: Framing::EIGHT_N_ONE,
            buf_size: None,
            timeout: Duration::from_millis(2500),
            first_timeout: Duration::from_secs(40),
            retries: 4,
            window: DEFAULT_WINDOW,
            reboot_wait: Duration::from_secs(5),
            reboot_timeout: Duration::from_secs(60),
            reopen_timeout: DEFAULT_REOPEN_TIMEOUT,
            health: None,
        }
    }
}

/// Default `reopen_timeout_ms`: 60 s, as long as the default
/// `reboot_timeout_ms` (an MCUboot swap plus a USB re-enumeration).
pub const DEFAULT_REOPEN_TIMEOUT: Duration = Duration::from_secs(60);
/// Largest `reopen_timeout_ms` accepted: an hour, as every other wait.
pub const MAX_REOPEN_TIMEOUT_MS: u64 = 3_600_000;

/// Default `window`: two requests on the line. Zephyr's UART transport has
/// two receive line buffers by default (`CONFIG_UART_MCUMGR_RX_BUF_COUNT`)
/// and answers each request before reading the next, so a second request
/// waits in them while the first is written to flash; two is also enough to
/// keep a 115200-baud line busy (the next request is already on the wire
/// when an answer comes). Devices that cannot keep up (MCUboot's serial
/// recovery, slow flash) lose a request once; the upload then goes on one
/// request at a time.
pub const DEFAULT_WINDOW: usize = 2;
/// Largest `window` accepted (Go newtmgr's default `-w` is 5).
pub const MAX_WINDOW: u32 = 8;

/// Smallest `buf_size` accepted: the first chunk (about 90 bytes of header
/// and CBOR) must still carry the 32-byte MCUboot header.
pub const MIN_BUF_SIZE: u32 = 128;
/// Largest `buf_size` accepted: the upload engine's `max_buf_size`.
pub const MAX_BUF_SIZE: u32 = 4096;
