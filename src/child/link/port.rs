//! One open serial port per device, shared by every child on it.
//!
//! Two children on one RS-485 bus must never interleave their requests: the
//! devices decode whatever passes on the wire, and SMP has no addressing.
//! So all drivers of one device share a [`SharedPort`] whose async mutex is
//! held for a whole operation (a transfer, an activation, a version read).
//! [`Ports`] hands out one `SharedPort` per device; it is made with the
//! children (`child::Networks`, as the CoAP network is), not a global, and
//! holds weak references: when the last child of a port is dropped, the
//! port closes.
//!
//! A port that goes away is waited for. A child behind USB-CDC (its own USB
//! serial function) takes its port with it while it reboots: the device
//! node vanishes, reads end or fail, and it comes back a second or more
//! later, perhaps under a new node behind the same `/dev/serial/by-id`
//! link. So a read or write that fails (or reads the end of the line)
//! closes the port and tries to open the configured path again every
//! [`REOPEN_POLL`] until it opens, for at most
//! [`PortSettings::reopen_timeout`] since it went away; then the operation
//! continues where it was (the engine's own timers resend whatever was
//! lost). Only a port that stays away longer is an error
//! ([`PortError::Gone`]). A port that never opened is an error at once
//! ([`PortError::Open`]: a wrong path, nothing plugged in).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;
use tokio_serial::{SerialPort, SerialPortBuilderExt, SerialStream};

use crate::config::{Framing, Parity};

pub use crate::config::DEFAULT_REOPEN_TIMEOUT;

/// How often a port that went away is tried again.
pub const REOPEN_POLL: Duration = Duration::from_millis(100);

/// How a port is opened and kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortSettings {
    /// Bits per second.
    pub baud: u32,
    /// Character framing.
    pub framing: Framing,
    /// How long a port that went away is waited for (config
    /// `reopen_timeout_ms`).
    pub reopen_timeout: Duration,
}

impl PortSettings {
    /// `baud` and `framing`, waiting [`DEFAULT_REOPEN_TIMEOUT`] for a port
    /// that goes away.
    pub fn new(baud: u32, framing: Framing) -> PortSettings {
        PortSettings {
            baud,
            framing,
            reopen_timeout: DEFAULT_REOPEN_TIMEOUT,
        }
    }

    /// The settings a configured serial child asks for: `baud`, its
    /// `framing` and `reopen_timeout_ms`.
    pub fn for_child(baud: u32, options: &crate::config::SerialOptions) -> PortSettings {
        PortSettings {
            baud,
            framing: options.framing,
            reopen_timeout: options.reopen_timeout,
        }
    }
}

/// Why the port could not be used.
#[derive(Debug, thiserror::Error)]
pub enum PortError {
    /// Opening (or configuring) the device node failed, and it was never
    /// open before: a wrong path, nothing plugged in.
    #[error("cannot open {path}: {source}")]
    Open {
        /// The device node.
        path: PathBuf,
        /// Why.
        #[source]
        source: tokio_serial::Error,
    },
    /// The port went away (a read or write failed, or the other end hung
    /// up) and did not come back within the reopen timeout.
    #[error("{path} went away ({cause}) and did not come back within {}s", waited.as_secs_f32())]
    Gone {
        /// The device node.
        path: PathBuf,
        /// How long it was waited for.
        waited: Duration,
        /// Why it went away, or why it would not reopen.
        cause: String,
    },
}

/// A port shared by the children on one device path.
#[derive(Debug)]
pub struct SharedPort {
    path: PathBuf,
    /// The resolved device node: one key for all names of one device.
    key: PathBuf,
    settings: PortSettings,
    state: tokio::sync::Mutex<PortState>,
}

#[derive(Debug, Default)]
struct PortState {
    stream: Option<SerialStream>,
    /// The sequence number for the next request on this line, for
    /// protocols that number requests per line (SMP). Kept per port, not
    /// per operation, so a late answer to an abandoned operation (a
    /// cancelled transfer) never matches the next one's requests.
    next_seq: u8,
    /// The port was open once: if it goes away, it is waited for.
    seen: bool,
    /// Since when the port has been away; cleared by the next read or
    /// write that works.
    away_since: Option<Instant>,
    /// Why it went away (or why it last failed to reopen).
    away_cause: String,
    /// The last attempt to reopen it, to pace the attempts.
    last_open: Option<Instant>,
}

impl PortError {
    /// As the `Child` trait's error in `step`: a port that went away and
    /// stayed away is a link gone for now (a retry may work), one that never
    /// opened is a local I/O failure.
    pub fn into_child_error(self, step: crate::child::Step) -> crate::child::ChildError {
        use crate::child::ChildError;
        match self {
            PortError::Gone { .. } => ChildError::link_gone(step, "serial port").with_source(self),
            PortError::Open { .. } => ChildError::io(step, "serial port").with_source(self),
        }
    }
}

/// The ports children use, one [`SharedPort`] per device: children given
/// the same device (by any of its names) share it and take turns.
#[derive(Debug, Default)]
pub struct Ports {
    /// By resolved device node; weak, so a port closes with its last child.
    by_node: HashMap<PathBuf, Weak<SharedPort>>,
}

impl Ports {
    /// The port for `path`: the one other children already share, or a new
    /// one. The first child's line settings win (the configuration checks
    /// children on one port agree).
    pub fn get(&mut self, path: &Path, settings: PortSettings) -> Arc<SharedPort> {
        // One device may have several names (`/dev/ttyUSB0` and its
        // `/dev/serial/by-id/...` link): key by the resolved node, so both
        // names share one lock instead of the second failing on the flock.
        let key = node(path);
        self.by_node.retain(|_, w| w.strong_count() > 0);
        if let Some(p) = self.by_node.get(&key).and_then(Weak::upgrade) {
            if p.settings != settings {
                tracing::warn!(
                    port = %path.display(),
                    "children on one port with different port settings; using {:?}",
                    p.settings
                );
            }
            return p;
        }
        let p = SharedPort::new(path, settings);
        self.by_node.insert(key, Arc::downgrade(&p));
        p
    }
}

/// The device node `path` resolves to (itself when it does not resolve).
fn node(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned())
}

impl SharedPort {
    /// A port of its own for `path` (not shared with any other child; use
    /// [`Ports::get`] for children on one bus).
    pub fn new(path: &Path, settings: PortSettings) -> Arc<SharedPort> {
        Arc::new(SharedPort {
            path: path.to_owned(),
            key: node(path),
            settings,
            state: tokio::sync::Mutex::new(PortState::default()),
        })
    }

    /// The bus this port is, for the OTA engine's per-bus queue
    /// ([`crate::child::Child::bus`]): the resolved device node.
    pub fn bus(&self) -> String {
        format!("serial:{}", self.key.display())
    }

    /// Waits for the line, opens it if needed (waiting for a port that
    /// went away, see the module doc) and flushes stale input (an answer
    /// that arrived after the last operation gave up). The line is this
    /// caller's until the returned [`Link`] is dropped.
    pub async fn lock(&self) -> Result<Link<'_>, PortError> {
        let state = self.state.lock().await;
        let mut link = Link { port: self, state };
        if link.state.stream.is_none() {
            if link.state.seen {
                link.reopen().await?;
            } else {
                link.state.stream = Some(self.open()?);
                link.state.seen = true;
            }
        }
        if let Some(stream) = &link.state.stream {
            if let Err(e) = stream.clear(tokio_serial::ClearBuffer::Input) {
                tracing::debug!(port = %self.path.display(), "flushing input: {e}");
            }
        }
        Ok(link)
    }

    fn open(&self) -> Result<SerialStream, PortError> {
        let f = self.settings.framing;
        let data_bits = match f.data_bits {
            5 => tokio_serial::DataBits::Five,
            6 => tokio_serial::DataBits::Six,
            7 => tokio_serial::DataBits::Seven,
            _ => tokio_serial::DataBits::Eight,
        };
        let parity = match f.parity {
            Parity::None => tokio_serial::Parity::None,
            Parity::Even => tokio_serial::Parity::Even,
            Parity::Odd => tokio_serial::Parity::Odd,
        };
        let stop_bits = if f.stop_bits == 2 {
            tokio_serial::StopBits::Two
        } else {
            tokio_serial::StopBits::One
        };
        // Exclusive (serialport's default: TIOCEXCL and flock), so another
        // program (a stray minicom) cannot steal answers mid-transfer.
        tokio_serial::new(self.path.to_string_lossy(), self.settings.baud)
            .data_bits(data_bits)
            .parity(parity)
            .stop_bits(stop_bits)
            .flow_control(tokio_serial::FlowControl::None)
            .open_native_async()
            .map_err(|source| PortError::Open {
                path: self.path.clone(),
                source,
            })
    }
}

/// The line, held for one operation.
#[derive(Debug)]
pub struct Link<'a> {
    port: &'a SharedPort,
    state: tokio::sync::MutexGuard<'a, PortState>,
}

impl Link<'_> {
    /// The sequence number the next engine starts at.
    pub fn next_seq(&self) -> u8 {
        self.state.next_seq
    }

    /// The sequence number the next engine continues from (an engine's
    /// `next_seq`, [`otabridge_codecs::engine::Engine::next_seq`]).
    pub fn set_next_seq(&mut self, seq: u8) {
        self.state.next_seq = seq;
    }

    /// Writes bytes whole. `write_all`, never `write`: a UART driver takes
    /// what fits in its buffer and returns a short count. No `flush`:
    /// tokio-serial 5.5's `poll_flush` calls `tcdrain`, which blocks the
    /// runtime thread until the UART has sent everything (mio-serial
    /// `impl Write for SerialStream`); the kernel sends the bytes anyway.
    /// A port that went away is waited for, then the bytes are written
    /// whole to the port that came back (the device drops a frame cut
    /// short).
    pub async fn write(&mut self, bytes: &[u8]) -> Result<(), PortError> {
        loop {
            let r = match self.state.stream.as_mut() {
                Some(s) => s.write_all(bytes).await,
                None => {
                    self.reopen().await?;
                    continue;
                }
            };
            match r {
                Ok(()) => {
                    self.state.away_since = None;
                    return Ok(());
                }
                Err(e) => self.lost(e.to_string()),
            }
        }
    }

    /// Reads what the line has; cancel-safe (nothing is lost when a timer
    /// wins the `select!`, and a wait for a port that went away goes on
    /// from where it was at the next call).
    pub async fn read(&mut self, buf: &mut [u8]) -> Result<usize, PortError> {
        loop {
            let r = match self.state.stream.as_mut() {
                Some(s) => s.read(buf).await,
                None => {
                    self.reopen().await?;
                    continue;
                }
            };
            match r {
                Ok(0) => self.lost("the other end hung up".into()),
                Ok(n) => {
                    self.state.away_since = None;
                    return Ok(n);
                }
                Err(e) => self.lost(e.to_string()),
            }
        }
    }

    /// The port failed: close it (a USB device that vanished, a line that
    /// hung up) and note since when it is away.
    fn lost(&mut self, cause: String) {
        self.state.stream = None;
        if self.state.away_since.is_none() {
            tracing::warn!(
                port = %self.port.path.display(),
                %cause,
                "serial port went away; waiting up to {:?} for it to come back",
                self.port.settings.reopen_timeout
            );
            self.state.away_since = Some(Instant::now());
        }
        self.state.away_cause = cause;
    }

    /// Opens the port again, trying every [`REOPEN_POLL`] until
    /// [`PortSettings::reopen_timeout`] after it went away.
    async fn reopen(&mut self) -> Result<(), PortError> {
        let since = *self.state.away_since.get_or_insert_with(Instant::now);
        let deadline = since + self.port.settings.reopen_timeout;
        loop {
            if let Some(last) = self.state.last_open {
                // Paced even when the port opens at once and fails again.
                tokio::time::sleep_until((last + REOPEN_POLL).min(deadline.max(last))).await;
            }
            self.state.last_open = Some(Instant::now());
            match self.port.open() {
                Ok(stream) => {
                    tracing::info!(
                        port = %self.port.path.display(),
                        "serial port back after {:?}",
                        since.elapsed()
                    );
                    self.state.stream = Some(stream);
                    return Ok(());
                }
                Err(e) => self.state.away_cause = e.to_string(),
            }
            if Instant::now() >= deadline {
                return Err(PortError::Gone {
                    path: self.port.path.clone(),
                    waited: self.port.settings.reopen_timeout,
                    cause: self.state.away_cause.clone(),
                });
            }
        }
    }
}
