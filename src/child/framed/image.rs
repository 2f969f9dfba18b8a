//! The package's digests as the framed engine needs them, computed piece by
//! piece (never the whole file in memory). The chunks themselves are read
//! through the serial link's [`crate::child::link::image::ImageFile`].

use std::path::PathBuf;

use std::io::Read;

use otabridge_codecs::framed::{ImageDigest, ImageInfo};

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
/// and SHA-256 the package store recorded. The file is read and hashed on
/// tokio's blocking pool: the daemon's tasks share one async thread
/// (docs/design.md, "Which thread runs what?"), which hashing megabytes
/// would hold.
pub async fn digest(package: &Package) -> Result<ImageInfo, ImageError> {
    let path = package.path.clone();
    let read_err = |source| ImageError::Read {
        path: package.path.clone(),
        source,
    };
    let (size, crc32, sha256) = tokio::task::spawn_blocking(move || hash_file(&path))
        .await
        .map_err(|e| read_err(std::io::Error::other(e)))?
        .map_err(read_err)?;
    let path = &package.path;
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

/// Size, CRC-32 and SHA-256 of the file at `path`, read `PIECE` bytes at a
/// time. Blocks: call it off the async thread.
fn hash_file(path: &std::path::Path) -> std::io::Result<(u64, u32, [u8; 32])> {
    let mut file = std::fs::File::open(path)?;
    let mut d = ImageDigest::new();
    let mut buf = vec![0u8; PIECE];
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        d.update(&buf[..n]);
    }
    Ok(d.finish())
}
