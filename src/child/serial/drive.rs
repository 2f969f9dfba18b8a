//! The thin loop that runs a codecs SMP engine on a serial line: write what
//! the engine transmits (framed), feed it the image bytes it asks for, hand
//! its events out, then wait for the line or the engine's timer
//! (`codecs/src/smp/mod.rs`, "Driving an engine over a serial port").

use std::io::SeekFrom;
use std::path::{Path, PathBuf};

use otabridge_codecs::smp::serial::{self, DecodeEvent, Decoder};
use otabridge_codecs::smp::slot_info::SlotInfoRead;
use otabridge_codecs::smp::state::StateRead;
use otabridge_codecs::smp::upload::{ReadRequest, Upload};
use otabridge_codecs::smp::{activate::Activate, Engine, Header};
use otabridge_codecs::time::Instant;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::port::{Link, PortError};

/// Why the loop stopped before the engine finished.
#[derive(Debug, thiserror::Error)]
pub enum DriveError {
    /// The line failed.
    #[error(transparent)]
    Port(#[from] PortError),
    /// The image file could not be read.
    #[error("reading {path}: {source}")]
    Image {
        /// The package file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The engine neither finished nor armed a timer: it would wait forever.
    #[error("engine idle without a timer")]
    Idle,
}

/// An engine the loop can run; only the upload asks for image bytes.
pub trait Driven: Engine {
    /// The image bytes the engine needs next.
    fn poll_read(&mut self) -> Option<ReadRequest> {
        None
    }
    /// The bytes asked for.
    fn handle_data(&mut self, _offset: u64, _data: &[u8], _now: Instant) {}
}

impl Driven for Upload {
    fn poll_read(&mut self) -> Option<ReadRequest> {
        Upload::poll_read(self)
    }
    fn handle_data(&mut self, offset: u64, data: &[u8], now: Instant) {
        Upload::handle_data(self, offset, data, now)
    }
}
impl Driven for Activate {}
impl Driven for StateRead {}
impl Driven for SlotInfoRead {}

/// Bytes read from the package at a time: chunks are served from this
/// window, so a file read (a trip through tokio's blocking pool) happens
/// once per window, not once per chunk; memory stays bounded per child.
const WINDOW: usize = 64 * 1024;

/// The package file, read a bounded window at a time.
#[derive(Debug)]
pub struct ImageFile {
    path: PathBuf,
    file: tokio::fs::File,
    /// File offset of `window[0]`.
    start: u64,
    window: Vec<u8>,
    /// Where the file's cursor is.
    pos: u64,
}

impl ImageFile {
    /// Opens the package.
    pub async fn open(path: &Path) -> Result<ImageFile, DriveError> {
        let file = tokio::fs::File::open(path)
            .await
            .map_err(|source| DriveError::Image {
                path: path.to_owned(),
                source,
            })?;
        Ok(ImageFile {
            path: path.to_owned(),
            file,
            start: 0,
            window: Vec::new(),
            pos: 0,
        })
    }

    /// The `req.len` bytes at `req.offset` (the engine never asks past the
    /// image's length; a shorter file is an error).
    async fn read(&mut self, req: ReadRequest) -> Result<&[u8], DriveError> {
        let end = req.offset + req.len as u64;
        let held = self.start + self.window.len() as u64;
        if req.offset < self.start || end > held {
            let err = |source| DriveError::Image {
                path: self.path.clone(),
                source,
            };
            if self.pos != req.offset {
                self.file
                    .seek(SeekFrom::Start(req.offset))
                    .await
                    .map_err(err)?;
            }
            self.window.resize(WINDOW.max(req.len), 0);
            let mut filled = 0;
            while filled < self.window.len() {
                let n = self
                    .file
                    .read(&mut self.window[filled..])
                    .await
                    .map_err(err)?;
                if n == 0 {
                    break;
                }
                filled += n;
            }
            self.window.truncate(filled);
            self.start = req.offset;
            self.pos = req.offset + filled as u64;
            if filled < req.len {
                let source = std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!(
                        "{} bytes at {} asked for; the file ends first",
                        req.len, req.offset
                    ),
                );
                return Err(DriveError::Image {
                    path: self.path.clone(),
                    source,
                });
            }
        }
        let from = usize::try_from(req.offset - self.start).unwrap_or(usize::MAX);
        Ok(&self.window[from..from + req.len])
    }
}

/// The engines' clock: milliseconds since the loop's origin on tokio's
/// clock (so tests may pause it).
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    origin: tokio::time::Instant,
}

impl Clock {
    /// A clock starting now.
    pub fn start() -> Clock {
        Clock {
            origin: tokio::time::Instant::now(),
        }
    }

    /// Now, for the engine.
    pub fn now(&self) -> Instant {
        let ms = self.origin.elapsed().as_millis();
        Instant::from_millis(u64::try_from(ms).unwrap_or(u64::MAX))
    }

    /// The runtime instant of engine time `t`.
    pub fn at(&self, t: Instant) -> tokio::time::Instant {
        self.origin + std::time::Duration::from_millis(t.as_millis())
    }
}

/// Line bytes and packets seen by one run, for logs and benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LineStats {
    /// Bytes written to the line.
    pub written: u64,
    /// Bytes read from the line.
    pub read: u64,
    /// Packets dropped by the decoder (bad CRC, base64, length).
    pub bad_packets: u64,
    /// Requests the engine sent again (timeouts, rewinds, restarts).
    pub resent: u64,
}

/// Runs `engine` until it finishes; `on_event` sees every event in order.
pub async fn drive<E: Driven>(
    link: &mut Link<'_>,
    clock: Clock,
    engine: &mut E,
    mut image: Option<&mut ImageFile>,
    stats: &mut LineStats,
    mut on_event: impl FnMut(E::Event),
) -> Result<(), DriveError> {
    let mut decoder = Decoder::default();
    let mut buf = vec![0u8; 4096];
    loop {
        // The upload asks for a chunk before it can send it.
        while let Some(req) = engine.poll_read() {
            match image.as_deref_mut() {
                Some(img) => {
                    let data = img.read(req).await?;
                    engine.handle_data(req.offset, data, clock.now());
                }
                None => return Err(DriveError::Idle),
            }
        }
        while let Some(msg) = engine.poll_transmit() {
            let seq = Header::parse(&msg)
                .map(|h| h.seq)
                .unwrap_or(link.next_seq());
            let framed = serial::encode(&msg, serial::MAX_LINE);
            link.send(seq, &framed).await?;
            stats.written += framed.len() as u64;
        }
        stats.resent = engine.retries();
        while let Some(ev) = engine.poll_event() {
            on_event(ev);
        }
        if engine.is_finished() {
            return Ok(());
        }
        // Between transmits the engine always waits for something with a
        // deadline; without one nothing would ever wake it.
        let Some(deadline) = engine.poll_timeout() else {
            return Err(DriveError::Idle);
        };
        tokio::select! {
            r = link.read(&mut buf) => {
                let n = r?;
                stats.read += n as u64;
                let mut rest = &buf[..n];
                while !rest.is_empty() {
                    let used = decoder.handle_bytes(rest);
                    rest = &rest[used..];
                    match decoder.poll_event() {
                        Some(DecodeEvent::Message(msg)) => engine.handle_message(&msg, clock.now()),
                        // A damaged packet is dropped; the engine's timer
                        // resends the request.
                        Some(other) => {
                            stats.bad_packets += 1;
                            tracing::debug!("serial: dropped a packet: {other:?}");
                        }
                        None => {}
                    }
                }
            }
            _ = tokio::time::sleep_until(clock.at(deadline)) => {
                engine.handle_timeout(clock.now());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn image_reads_across_windows_and_backwards() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("img");
        let data: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let mut f = ImageFile::open(&path).await.unwrap();
        for (offset, len) in [
            (0, 300),
            (65_400, 500),
            (131_000, 2048),
            (100, 50),
            (199_990, 10),
        ] {
            let got = f.read(ReadRequest { offset, len }).await.unwrap().to_vec();
            assert_eq!(
                got,
                &data[offset as usize..offset as usize + len],
                "{offset}"
            );
        }
        let e = f
            .read(ReadRequest {
                offset: 199_995,
                len: 10,
            })
            .await
            .unwrap_err();
        assert!(matches!(e, DriveError::Image { .. }), "{e}");
    }
}
