//! What the in-process CoAP/LwM2M tests share (`CoapChild` on a real
//! `CoapNetwork` against the simulated child): bounded waits and a package
//! on disk.
#![allow(dead_code)] // each test file uses the parts it needs

use std::path::Path;
use std::time::Duration;

use otabridge::child::Package;
use sha2::{Digest, Sha256};

/// Every wait of these tests ends within this bound or fails.
pub(crate) const BOUND: Duration = Duration::from_secs(60);

/// `f`, or a failure once [`BOUND`] passed.
pub(crate) async fn bounded<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(BOUND, f)
        .await
        .expect("test did not finish within its bound")
}

/// Waits until `f` holds, checking every 10 ms (bounded by [`BOUND`]).
pub(crate) async fn until(mut f: impl FnMut() -> bool) {
    bounded(async {
        while !f() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
}

/// A package of version 2.0 in `dir`, as the package store keeps it
/// (named by its SHA-256): `len` bytes, byte `i` is `31 i + seed` (mod 256).
pub(crate) fn package(dir: &Path, len: usize, seed: u8) -> Package {
    let data: Vec<u8> = (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect();
    let sha256 = hex::encode(Sha256::digest(&data));
    let path = dir.join(&sha256);
    std::fs::write(&path, &data).unwrap();
    Package {
        path,
        size: len as u64,
        sha256,
        version: "2.0".into(),
    }
}
