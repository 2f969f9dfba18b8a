//! Serial noise at the seam between the driver and the child's pty (issue
//! 17 item 4): bit errors, lost and doubled lines, console text between
//! frames, on an SMP and a framed-profile child, and the image still
//! arrives byte for byte. The noise (`sim::serial_noise`) knows no
//! protocol; the engines' CRCs, retries and the device's `off` do the rest.
//! Ptys run in real time; every wait is bounded by the driver's timeouts
//! and no assertion is about time (the cost is printed by
//! `cargo run --release --bin bench_serial -- --noise`).

mod serial_support;

use std::sync::Arc;
use std::time::Duration;

use otabridge::child::framed::FramedChild;
use otabridge::child::serial::SerialChild;
use otabridge::child::Child;
use otabridge::config::{Framing, SerialOptions};
use otabridge::sim::framed_child::{FramedChildOptions, FramedChildSim};
use otabridge::sim::serial_noise::{NoiseSpec, NoisyLine};
use otabridge_codecs::framed::profile::builtin;
use otabridge_codecs::rng::Rng;
use serial_support::{image, options, package, sim};

/// Driver options for a noisy line: short timeouts (a lost frame costs
/// one), many retries (at 1e-3 most long frames are damaged).
fn noisy_options(buf_size: Option<usize>) -> SerialOptions {
    SerialOptions {
        timeout: Duration::from_millis(400),
        first_timeout: Duration::from_secs(3),
        retries: 60,
        buf_size,
        ..options()
    }
}

/// Every kind of damage the spec asks for happened: bit errors in each
/// direction that carried enough bits to expect five of them (a direction
/// that carried 1 000 bytes at 1e-4 expects less than one), lines lost and
/// doubled, console text from the child.
fn assert_every_fault(line: &NoisyLine, spec: &NoiseSpec) {
    let s = line.stats();
    let (down, up) = (s.to_child, s.to_driver);
    if spec.ber > 0.0 {
        assert!(down.flipped_bits + up.flipped_bits > 0, "{s:?}");
        for d in [down, up] {
            if d.bytes as f64 * 8.0 * spec.ber >= 5.0 {
                assert!(d.flipped_bits > 0, "{s:?}");
            }
        }
    }
    if spec.drop > 0.0 {
        assert!(down.dropped + up.dropped > 0, "{s:?}");
    }
    if spec.dup > 0.0 {
        assert!(down.duplicated + up.duplicated > 0, "{s:?}");
    }
    if spec.console > 0.0 {
        assert!(up.console_lines > 0, "{s:?}");
    }
}

#[tokio::test]
async fn smp_through_bit_errors_lost_and_doubled_lines_and_console_text() {
    let dir = tempfile::tempdir().unwrap();
    let dev = sim("", 5);
    let spec: NoiseSpec = "ber=1e-4,drop=0.02,dup=0.02,console=0.1".parse().unwrap();
    let line = NoisyLine::spawn(dev.path(), spec, 5).unwrap();
    let c = SerialChild::new("node", line.path(), 115_200, noisy_options(None));
    let img = image("2.0.0", 32 * 1024, 5);
    let pkg = package(dir.path(), "fw", &img, "2.0.0");
    c.deliver(&pkg, 0, &|_| {}).await.unwrap();
    assert!(dev.flash() == img, "the slot holds the image byte for byte");
    c.activate(&pkg).await.unwrap();
    assert_eq!(c.read_version().await.unwrap(), "2.0.0");
    assert!(c.chunk_retries() > 0);
    assert_every_fault(&line, &spec);
}

#[tokio::test]
async fn smp_upload_at_a_bit_error_rate_of_one_in_a_thousand() {
    // At 1e-3 a 128-byte packet (about 1 450 bits on the wire) arrives
    // intact one time in four: small buffers, many retries.
    let dir = tempfile::tempdir().unwrap();
    let dev = sim("", 6);
    let spec: NoiseSpec = "ber=1e-3".parse().unwrap();
    let line = NoisyLine::spawn(dev.path(), spec, 6).unwrap();
    let c = SerialChild::new("node", line.path(), 115_200, noisy_options(Some(128)));
    let img = image("2.0.0", 1024, 6);
    let pkg = package(dir.path(), "fw", &img, "2.0.0");
    c.deliver(&pkg, 0, &|_| {}).await.unwrap();
    assert!(dev.flash() == img, "the slot holds the image byte for byte");
    assert_every_fault(&line, &spec);
}

#[tokio::test]
async fn framed_through_bit_errors_lost_and_doubled_lines_and_console_text() {
    let dir = tempfile::tempdir().unwrap();
    let p = Arc::new(builtin("acme-rs485").unwrap().unwrap());
    let dev = FramedChildSim::spawn(FramedChildOptions::new(Arc::clone(&p), "1.0.0")).unwrap();
    let spec: NoiseSpec = "ber=1e-4,drop=0.02,dup=0.02,console=0.1".parse().unwrap();
    let line = NoisyLine::spawn(dev.path(), spec, 7).unwrap();
    let c = FramedChild::new("node", line.path(), 115_200, Framing::EIGHT_N_ONE, p);
    let mut img = vec![0u8; 16 * 1024];
    Rng::new(7).fill(&mut img);
    let pkg = package(dir.path(), "fw", &img, "2.0.0");
    c.deliver(&pkg, 0, &|_| {}).await.unwrap();
    let got = dev.inspect(|s| s.device().received().map(<[u8]>::to_vec));
    assert!(got.as_deref() == Some(&img[..]), "byte for byte");
    c.activate(&pkg).await.unwrap();
    assert_eq!(c.read_version().await.unwrap(), "2.0.0");
    dev.inspect(|s| assert_eq!(s.device().installed(), Some(&img[..])));
    assert_every_fault(&line, &spec);
}
