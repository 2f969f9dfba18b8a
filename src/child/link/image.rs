//! The package file as the serial engines read it: the ranges an engine asks
//! for ([`otabridge_codecs::engine::ReadRequest`]), served from a bounded
//! window of the file.

use std::io::SeekFrom;
use std::path::{Path, PathBuf};

use otabridge_codecs::engine::ReadRequest;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

/// Reading the package failed.
#[derive(Debug, thiserror::Error)]
#[error("reading {path}: {source}")]
pub struct ImageError {
    /// The package file.
    pub path: PathBuf,
    /// Why (a file shorter than asked for is `UnexpectedEof`).
    #[source]
    pub source: std::io::Error,
}

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
    /// Where the file's cursor is (`u64::MAX` when unknown).
    pos: u64,
}

impl ImageFile {
    /// Opens the package.
    pub async fn open(path: &Path) -> Result<ImageFile, ImageError> {
        let file = tokio::fs::File::open(path)
            .await
            .map_err(|source| ImageError {
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

    /// The `req.len` bytes at `req.offset` (engines never ask past the
    /// image's length; a shorter file is an error).
    pub async fn read(&mut self, req: ReadRequest) -> Result<&[u8], ImageError> {
        let end = req.offset + req.len as u64;
        let held = self.start + self.window.len() as u64;
        if req.offset < self.start || end > held {
            self.fill(req).await?;
        }
        let from = usize::try_from(req.offset - self.start).unwrap_or(usize::MAX);
        Ok(&self.window[from..from + req.len])
    }

    /// Reads the window that starts at `req.offset`.
    async fn fill(&mut self, req: ReadRequest) -> Result<(), ImageError> {
        let path = &self.path;
        let err = |source| ImageError {
            path: path.clone(),
            source,
        };
        // An empty window until this read succeeds: nothing stale is served.
        self.window.clear();
        self.start = req.offset;
        if self.pos != req.offset {
            self.pos = u64::MAX;
            self.file
                .seek(SeekFrom::Start(req.offset))
                .await
                .map_err(err)?;
        }
        let mut buf = std::mem::take(&mut self.window);
        buf.resize(WINDOW.max(req.len), 0);
        let mut filled = 0;
        while filled < buf.len() {
            let n = match self.file.read(&mut buf[filled..]).await {
                Ok(n) => n,
                Err(e) => {
                    self.pos = u64::MAX;
                    return Err(err(e));
                }
            };
            if n == 0 {
                break;
            }
            filled += n;
        }
        buf.truncate(filled);
        self.pos = req.offset + filled as u64;
        if filled < req.len {
            return Err(err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!(
                    "{} bytes at {} asked for; the file ends first",
                    req.len, req.offset
                ),
            )));
        }
        self.window = buf;
        Ok(())
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
        assert_eq!(e.source.kind(), std::io::ErrorKind::UnexpectedEof, "{e}");
        // A failed read leaves nothing stale behind: the next one is right.
        let got = f
            .read(ReadRequest {
                offset: 199_000,
                len: 1000,
            })
            .await
            .unwrap();
        assert_eq!(got, &data[199_000..]);
    }
}
