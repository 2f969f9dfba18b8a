//! The SMP serial driver end to end on ptys, through the `Child` trait:
//! clean and faulty lines, rejected images, activation and version read-back.

mod serial_support;

use std::time::Duration;

use otabridge::child::{Child, ChildError, ErrorKind};
use otabridge::ota::verdict::{verdict, Failure};
use otabridge::sim::smp_child::{SmpChild, SmpChildOptions};
use otabridge_codecs::smp::sim::{SimConfig, SimEvent};
use serial_support::{child, image, options, package, sim, Seen};

#[tokio::test]
async fn clean_line_delivers_activates_and_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    let sim = sim("", 1);
    let img = image("2.0.0", 20_000, 1);
    let pkg = package(dir.path(), "fw", &img, "2.0.0");
    let c = child("node", &sim);
    assert_eq!(c.read_version().await.unwrap(), "1.0.0");
    let seen = Seen::default();
    let report = c
        .deliver_with_report(&pkg, 0, &|n| seen.push(n))
        .await
        .unwrap();
    assert_eq!(sim.flash(), img, "the device holds the image byte for byte");
    let p = seen.all();
    assert!(
        p.windows(2).all(|w| w[0] < w[1]),
        "progress only grows: {p:?}"
    );
    assert_eq!(p.last(), Some(&20_000));
    assert_eq!(report.buf_size, 384, "from MCUmgr params");
    assert_eq!(report.resumed_at, None);
    assert_eq!(sim.stats().sessions, 1);
    c.activate(&pkg).await.unwrap();
    assert_eq!(c.read_version().await.unwrap(), "2.0.0");
    assert_eq!(
        sim.running(),
        ("2.0.0".to_owned(), false),
        "the activation tests the image; the job's confirm step makes it permanent"
    );
    // Activating again (a gateway that restarted after the reset) finds the
    // target running, and succeeds without another reset.
    c.activate(&pkg).await.unwrap();
    c.confirm("2.0.0").await.unwrap();
    assert_eq!(sim.running(), ("2.0.0".to_owned(), true), "confirmed");
    // The confirm is idempotent.
    c.confirm("2.0.0").await.unwrap();
    let resets = sim
        .events()
        .iter()
        .filter(|e| matches!(e, SimEvent::Resetting))
        .count();
    assert_eq!(resets, 1);
}

/// Every fault but the reboot at once, with a fixed seed: the image still
/// arrives byte for byte, and each fault demonstrably happened.
#[tokio::test]
async fn dropped_answers_bad_crcs_and_console_noise() {
    let dir = tempfile::tempdir().unwrap();
    let sim = sim("drop=0.08,crc=0.08,noise=0.3", 7);
    let img = image("2.1.0", 16_000, 2);
    let pkg = package(dir.path(), "fw", &img, "2.1.0");
    // Each lost answer costs one timeout: half a second keeps the test short
    // and is still far beyond a pty round trip on a loaded machine.
    let mut o = options();
    o.timeout = Duration::from_millis(500);
    let c = otabridge::child::serial::SerialChild::new("node", sim.path(), 115_200, o);
    let report = c.deliver_with_report(&pkg, 0, &|_| {}).await.unwrap();
    assert_eq!(sim.flash(), img);
    let s = sim.stats();
    assert!(
        s.dropped > 0 && s.corrupted > 0 && s.noise_lines > 0,
        "{s:?}"
    );
    // Every damaged answer the driver read was dropped (an answer to a
    // spurious resend may arrive after the transfer ended and go unread).
    let bad = report.line.bad_packets;
    assert!(bad >= 1 && bad <= s.corrupted, "{bad} of {}", s.corrupted);
    // Retries of a chunk the device already wrote are resynced, not rewritten.
    assert_eq!(s.sessions, 1, "{s:?}");
    c.activate(&pkg).await.unwrap();
    assert_eq!(c.read_version().await.unwrap(), "2.1.0");
}

/// The erase on the first chunk outlasts the ordinary timeout: the driver
/// waits with the first-chunk timeout instead of resending.
#[tokio::test]
async fn erase_delay_on_the_first_chunk() {
    let dir = tempfile::tempdir().unwrap();
    let sim = sim("erase-ms=2500", 1);
    let img = image("2.0.0", 6_000, 3);
    let pkg = package(dir.path(), "fw", &img, "2.0.0");
    child("node", &sim).deliver(&pkg, 0, &|_| {}).await.unwrap();
    let s = sim.stats();
    assert_eq!((s.erase_delays, s.first_chunks), (1, 1), "{s:?}");
    assert_eq!(sim.flash(), img);
}

/// Power lost mid-transfer: the device forgets the session, answers `off: 0`
/// after booting, and the driver sends the image again from the start.
#[tokio::test]
async fn reboot_mid_transfer_restarts_the_session() {
    let dir = tempfile::tempdir().unwrap();
    let sim = sim("reboot-at=8000,boot-ms=300", 1);
    let img = image("2.0.0", 20_000, 4);
    let pkg = package(dir.path(), "fw", &img, "2.0.0");
    let report = child("node", &sim)
        .deliver_with_report(&pkg, 0, &|_| {})
        .await
        .unwrap();
    let s = sim.stats();
    assert_eq!((s.power_cycles, s.sessions), (1, 2), "{s:?}");
    assert_eq!(report.restarts, 1);
    assert_eq!(sim.flash(), img);
}

#[tokio::test]
async fn rejected_images_report_their_iotda_code() {
    let dir = tempfile::tempdir().unwrap();
    // Not an MCUboot image: INVALID_IMAGE_HEADER_MAGIC → 8.
    let sim = sim("", 1);
    let junk = vec![0x5a; 4_000];
    let pkg = package(dir.path(), "junk", &junk, "2.0.0");
    let e = child("node", &sim)
        .deliver(&pkg, 0, &|_| {})
        .await
        .unwrap_err();
    assert_eq!(
        report(&e),
        (
            false,
            8,
            otabridge_codecs::iotda::result::DESC_UNSUPPORTED_TYPE.into()
        ),
        "{e}"
    );
    // Larger than the slot: INVALID_IMAGE_TOO_LARGE → 5.
    let small = SmpChild::spawn(SmpChildOptions {
        device: SimConfig {
            slot_size: 16 * 1024,
            ..SmpChildOptions::default().device
        },
        ..SmpChildOptions::default()
    })
    .unwrap();
    let big = package(dir.path(), "big", &image("2.0.0", 20_000, 5), "2.0.0");
    let e = child("node", &small)
        .deliver(&big, 0, &|_| {})
        .await
        .unwrap_err();
    assert_eq!(
        report(&e),
        (
            false,
            5,
            otabridge_codecs::iotda::result::DESC_NO_STORAGE.into()
        ),
        "{e}"
    );
}

/// The image's header says 2.0.0 but the platform's target is 3.0.0: the
/// activation refuses it before any reset (installation failure, 10).
#[tokio::test]
async fn activation_checks_the_version() {
    let dir = tempfile::tempdir().unwrap();
    let sim = sim("", 1);
    let img = image("2.0.0", 5_000, 6);
    let c = child("node", &sim);
    let wrong = package(dir.path(), "fw", &img, "3.0.0");
    c.deliver(&wrong, 0, &|_| {}).await.unwrap();
    let e = c.activate(&wrong).await.unwrap_err();
    assert!(matches!(report(&e), (false, 10, _)), "{e}");
    assert_eq!(c.read_version().await.unwrap(), "1.0.0");
    // The same bytes announced as "V2.0": normalised comparison accepts it.
    let right = package(dir.path(), "fw", &img, "V2.0");
    c.activate(&right).await.unwrap();
    assert_eq!(c.read_version().await.unwrap(), "2.0.0");
}

#[tokio::test]
async fn a_silent_device_is_unreachable() {
    let sim = sim("drop=1", 1);
    let mut o = options();
    o.timeout = Duration::from_millis(200);
    o.retries = 1;
    let c = otabridge::child::serial::SerialChild::new("node", sim.path(), 115_200, o.clone());
    let e = c.read_version().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unreachable, "{e}");
    assert!(sim.stats().dropped >= 2);
    // A delivery to it: params unanswered (fallback to 384), then the first
    // chunk unanswered: silence, not a verdict on the image.
    o.first_timeout = Duration::from_millis(300);
    // A port of its own: the first driver's goes first (it holds the flock).
    drop(c);
    let c = otabridge::child::serial::SerialChild::new("node2", sim.path(), 115_200, o);
    let dir = tempfile::tempdir().unwrap();
    let pkg = package(dir.path(), "fw", &image("2.0.0", 2_000, 9), "2.0.0");
    let e = c.deliver(&pkg, 0, &|_| {}).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unreachable, "{e}");
    assert!(e.to_string().contains("off 0"), "{e}");
}

/// What the gateway reports for `e` (its one mapping, `ota::verdict`):
/// whether it retries, the result code and the description.
fn report(e: &ChildError) -> (bool, u8, String) {
    let v = verdict(Failure::Child(e));
    (v.retry, v.code.get(), v.description)
}
