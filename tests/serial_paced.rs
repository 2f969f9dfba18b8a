//! The line paced to 115200 baud 8N1 (11520 B/s each way), with faults.
//! The small case runs by default; the 256 KiB one is `#[ignore]`d (about
//! two minutes): `cargo test --test serial_paced -- --ignored`.

mod serial_support;

use otabridge::child::Child;
use serial_support::{child, image, package, sim};

async fn paced(len: usize, faults: &str, seed: u64) {
    let dir = tempfile::tempdir().unwrap();
    let sim = sim(faults, seed);
    let img = image("2.0.0", len, seed);
    let pkg = package(dir.path(), "fw", &img, "2.0.0");
    let c = child("node", &sim);
    c.deliver(&pkg, 0, &|_| {}).await.unwrap();
    assert_eq!(sim.flash(), img);
    c.activate(&pkg).await.unwrap();
    assert_eq!(c.read_version().await.unwrap(), "2.0.0");
}

#[tokio::test]
async fn paced_line_with_faults() {
    paced(
        8_000,
        "pace=115200,drop=0.05,crc=0.05,noise=0.2,erase-ms=300",
        3,
    )
    .await;
}

#[tokio::test]
#[ignore = "256 KiB at 11520 B/s with faults takes about two minutes"]
async fn paced_256_kib_with_every_fault() {
    paced(
        256 * 1024 - 1024,
        "pace=115200,drop=0.02,crc=0.02,noise=0.1,erase-ms=1500,reboot-at=100000",
        5,
    )
    .await;
}
