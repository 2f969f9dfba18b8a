//! The package file as the framed engine needs it: its digests (computed
//! piece by piece, never the whole file in memory) and positional reads of
//! one chunk at a time.

use std::io::SeekFrom;
use std::path::{Path, PathBuf};

use otabridge_codecs::framed::{ImageDigest, ImageInfo};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use crate::child::Package;

/// Why the package could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// Reading the file failed.
    #[error("reading {path}: {source}")]
    Read {
        /// The package file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not what the package says (changed on disk after the
    /// store verified it).
    #[error("{path}: {what}")]
    Mismatch {
        /// The package file.
        path: PathBuf,
        /// What differs.
        what: String,
    },
    /// The framed protocols carry sizes in at most 32 bits.
    #[error("{path}: {size} bytes is more than a framed protocol can carry (4 GiB)")]
    TooLarge {
        /// The package file.
        path: PathBuf,
        /// Its size.
        size: u64,
    },
}

/// Bytes hashed per read while digesting.
const PIECE: usize = 64 * 1024;

/// Size, CRC-32 and SHA-256 of `package`'s file, checked against the size
/// and SHA-256 the package store recorded.
pub async fn digest(package: &Package) -> Result<ImageInfo, ImageError> {
    let path = &package.path;
    let read_err = |source| ImageError::Read {
        path: path.clone(),
        source,
    };
    let mut file = tokio::fs::File::open(path).await.map_err(read_err)?;
    let mut d = ImageDigest::new();
    let mut buf = vec![0u8; PIECE];
    loop {
        let n = file.read(&mut buf).await.map_err(read_err)?;
        if n == 0 {
            break;
        }
        d.update(&buf[..n]);
    }
    let (size, crc32, sha256) = d.finish();
    if size != package.size || !hex::encode(sha256).eq_ignore_ascii_case(&package.sha256) {
        return Err(ImageError::Mismatch {
            path: path.clone(),
            what: format!(
                "{size} bytes with SHA-256 {}, the package says {} bytes with {}",
                hex::encode(sha256),
                package.size,
                package.sha256
            ),
        });
    }
    let size = u32::try_from(size).map_err(|_| ImageError::TooLarge {
        path: path.clone(),
        size,
    })?;
    Ok(ImageInfo {
        size,
        crc32,
        sha256,
        version: package.version.clone(),
    })
}

/// The package file, read at the offsets the engine asks for; memory stays
/// at one chunk whatever the image size.
#[derive(Debug)]
pub struct ImageReader {
    path: PathBuf,
    file: tokio::fs::File,
    /// Where the file's cursor is, to skip the seek for consecutive chunks.
    pos: u64,
    buf: Vec<u8>,
}

impl ImageReader {
    /// Opens the package file.
    pub async fn open(path: &Path) -> Result<ImageReader, ImageError> {
        let file = tokio::fs::File::open(path)
            .await
            .map_err(|source| ImageError::Read {
                path: path.to_owned(),
                source,
            })?;
        Ok(ImageReader {
            path: path.to_owned(),
            file,
            pos: 0,
            buf: Vec::new(),
        })
    }

    /// The `len` bytes at `offset`.
    pub async fn read(&mut self, offset: u32, len: usize) -> Result<&[u8], ImageError> {
        let err = |source| ImageError::Read {
            path: self.path.clone(),
            source,
        };
        let offset = u64::from(offset);
        if self.pos != offset {
            self.file.seek(SeekFrom::Start(offset)).await.map_err(err)?;
        }
        self.buf.resize(len, 0);
        if let Err(e) = self.file.read_exact(&mut self.buf).await {
            // The cursor is unknown after a failed read.
            self.pos = u64::MAX;
            return Err(err(e));
        }
        self.pos = offset + len as u64;
        Ok(&self.buf)
    }
}
