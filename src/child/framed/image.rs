//! The package's digests as the framed engine needs them, computed piece by
//! piece (never the whole file in memory). The chunks themselves are read
//! through the serial link's [`crate::child::link::image::ImageFile`].

use std::path::PathBuf;

use otabridge_codecs::framed::{ImageDigest, ImageInfo};
use tokio::io::AsyncReadExt;

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
