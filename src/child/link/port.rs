//! One open serial port per device path, shared by every child on it.
//!
//! Two children on one RS-485 bus must never interleave their requests: the
//! devices decode whatever passes on the wire, and SMP has no addressing.
//! So all drivers of one path share a [`SharedPort`] whose async mutex is
//! held for a whole operation (a transfer, an activation, a version read).
//! The registry holds weak references: when the last driver of a path is
//! dropped (a gateway restart in tests), the port closes and the next
//! driver opens it afresh.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_serial::{SerialPort, SerialPortBuilderExt, SerialStream};

use crate::config::{Framing, Parity};

/// Line settings of a port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LineSettings {
    /// Bits per second.
    pub baud: u32,
    /// Character framing.
    pub framing: Framing,
}

/// Why the port could not be used.
#[derive(Debug, thiserror::Error)]
pub enum PortError {
    /// Opening (or configuring) the device node failed.
    #[error("cannot open {path}: {source}")]
    Open {
        /// The device node.
        path: PathBuf,
        /// Why.
        #[source]
        source: tokio_serial::Error,
    },
    /// Reading or writing failed; the port is closed and reopened next time.
    #[error("{path}: {source}")]
    Io {
        /// The device node.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The other end hung up (end of file).
    #[error("{path}: the line closed")]
    Closed {
        /// The device node.
        path: PathBuf,
    },
}

/// A port shared by the children on one device path.
#[derive(Debug)]
pub struct SharedPort {
    path: PathBuf,
    /// The resolved device node: one key for all names of one device.
    key: PathBuf,
    line: LineSettings,
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
}

impl PortError {
    /// As the `Child` trait's error for child `device_id`: a line that
    /// closed mid-operation is like silence (a retry may work), anything
    /// else is a local I/O failure.
    pub fn into_child_error(self, device_id: &str) -> crate::child::ChildError {
        use crate::child::ChildError;
        match self {
            PortError::Closed { .. } => ChildError::Unreachable(format!("{device_id}: {self}")),
            PortError::Open { .. } | PortError::Io { .. } => ChildError::Io(self.to_string()),
        }
    }
}

fn registry() -> &'static Mutex<HashMap<PathBuf, Weak<SharedPort>>> {
    static REGISTRY: OnceLock<Mutex<HashMap<PathBuf, Weak<SharedPort>>>> = OnceLock::new();
    REGISTRY.get_or_init(Default::default)
}

impl SharedPort {
    /// The port for `path`: the one other drivers already share, or a new
    /// one. The first driver's line settings win (the configuration checks
    /// children on one port agree).
    pub fn get(path: &Path, line: LineSettings) -> Arc<SharedPort> {
        // One device may have several names (`/dev/ttyUSB0` and its
        // `/dev/serial/by-id/...` link): key by the resolved node, so both
        // names share one lock instead of the second failing on the flock.
        let key = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
        let mut map = registry().lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, w| w.strong_count() > 0);
        if let Some(p) = map.get(&key).and_then(Weak::upgrade) {
            if p.line != line {
                tracing::warn!(
                    port = %path.display(),
                    "children on one port with different line settings; using {:?}",
                    p.line
                );
            }
            return p;
        }
        let p = Arc::new(SharedPort {
            path: path.to_owned(),
            key: key.clone(),
            line,
            state: tokio::sync::Mutex::new(PortState::default()),
        });
        map.insert(key, Arc::downgrade(&p));
        p
    }

    /// The bus this port is, for the OTA engine's per-bus queue
    /// ([`crate::child::Child::bus`]): the resolved device node.
    pub fn bus(&self) -> String {
        format!("serial:{}", self.key.display())
    }

    /// Waits for the line, opens it if needed and flushes stale input (an
    /// answer that arrived after the last operation gave up). The line is
    /// this caller's until the returned [`Link`] is dropped.
    pub async fn lock(&self) -> Result<Link<'_>, PortError> {
        let mut state = self.state.lock().await;
        if state.stream.is_none() {
            state.stream = Some(self.open()?);
        }
        let stream = state.stream.as_ref().expect("opened above");
        if let Err(e) = stream.clear(tokio_serial::ClearBuffer::Input) {
            tracing::debug!(port = %self.path.display(), "flushing input: {e}");
        }
        Ok(Link { port: self, state })
    }

    fn open(&self) -> Result<SerialStream, PortError> {
        let f = self.line.framing;
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
        tokio_serial::new(self.path.to_string_lossy(), self.line.baud)
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
    pub async fn write(&mut self, bytes: &[u8]) -> Result<(), PortError> {
        let r = match self.state.stream.as_mut() {
            Some(s) => s.write_all(bytes).await,
            None => {
                return Err(PortError::Closed {
                    path: self.port.path.clone(),
                })
            }
        };
        r.map_err(|e| self.broken(e))
    }

    /// Reads what the line has; cancel-safe (nothing is lost when a timer
    /// wins the `select!`).
    pub async fn read(&mut self, buf: &mut [u8]) -> Result<usize, PortError> {
        let r = match self.state.stream.as_mut() {
            Some(s) => s.read(buf).await,
            None => {
                return Err(PortError::Closed {
                    path: self.port.path.clone(),
                })
            }
        };
        match r {
            Ok(0) => {
                self.state.stream = None;
                Err(PortError::Closed {
                    path: self.port.path.clone(),
                })
            }
            Ok(n) => Ok(n),
            Err(e) => Err(self.broken(e)),
        }
    }

    /// A failed port is closed, so the next operation reopens it (a USB
    /// adapter that was unplugged and came back).
    fn broken(&mut self, source: std::io::Error) -> PortError {
        self.state.stream = None;
        PortError::Io {
            path: self.port.path.clone(),
            source,
        }
    }
}
