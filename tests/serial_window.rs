//! Windowed uploads on ptys: the serial child's `window` against simulated
//! devices with Zephyr's two receive line buffers, with one buffer and a
//! slow flash (the window must fall back), and with every fault; and the
//! `chunk_retries` metric. Ptys run in real time; no assertion is timed.

mod serial_support;

use std::time::Duration;

use otabridge::child::serial::SerialChild;
use otabridge::child::Child;
use otabridge::config::SerialOptions;
use otabridge::sim::smp_child::SmpChild;
use serial_support::{image, options, package, sim};

fn windowed(sim: &SmpChild, window: usize, timeout_ms: u64) -> SerialChild {
    let o = SerialOptions {
        window,
        timeout: Duration::from_millis(timeout_ms),
        ..options()
    };
    SerialChild::new("node", sim.path(), 115_200, o)
}

/// A clean line, window 2 against Zephyr's two buffers: nothing is lost,
/// nothing falls back, nothing is sent twice, the image arrives intact.
#[tokio::test]
async fn clean_line_window_two_sends_nothing_twice() {
    let dir = tempfile::tempdir().unwrap();
    let sim = sim("", 1);
    let img = image("2.0.0", 30_000, 1);
    let pkg = package(dir.path(), "fw", &img, "2.0.0");
    let c = windowed(&sim, 2, 1000);
    let report = c.deliver_with_report(&pkg, 0, &|_| {}).await.unwrap();
    assert_eq!(sim.flash(), img);
    assert_eq!(report.fallback_at, None);
    assert_eq!(report.line.resent, 0);
    assert_eq!(c.chunk_retries(), 0);
    assert_eq!(sim.stats().rx_overruns, 0);
    c.activate(&pkg).await.unwrap();
    assert_eq!(c.read_version().await.unwrap(), "2.0.0");
    assert_eq!(c.chunk_retries(), 0, "activation and reads on a clean line");
}

/// One receive buffer and 80 ms of flash work per request on a line paced
/// to 1 Mbaud: the second request of the window arrives while the device
/// is busy with the first, loses lines, and gets no answer; the next
/// answer names the device's `off`, and the upload goes on one request at
/// a time. (The pacing makes the line, not the scheduler, decide when the
/// second request arrives: it is on the wire right behind the first.)
#[tokio::test]
async fn one_receive_buffer_forces_the_fallback() {
    let dir = tempfile::tempdir().unwrap();
    let sim = sim("pace=1000000,rx-bufs=1,work-ms=80", 2);
    let img = image("2.0.0", 8_000, 2);
    let pkg = package(dir.path(), "fw", &img, "2.0.0");
    let c = windowed(&sim, 4, 1000);
    let report = c.deliver_with_report(&pkg, 0, &|_| {}).await.unwrap();
    assert_eq!(sim.flash(), img, "byte for byte");
    assert!(sim.stats().rx_overruns > 0, "{:?}", sim.stats());
    assert!(report.fallback_at.is_some(), "{report:?}");
    assert!(c.chunk_retries() > 0);
    assert_eq!(c.chunk_retries(), report.line.resent);
}

/// Window 2 with dropped answers, damaged CRCs, console noise, an erase
/// delay and a power cycle mid-transfer: the image still arrives byte for
/// byte and activates; the lost answers show in `chunk_retries`.
#[tokio::test]
async fn window_two_through_every_fault() {
    let dir = tempfile::tempdir().unwrap();
    let sim = sim(
        "drop=0.06,crc=0.06,noise=0.2,erase-ms=300,reboot-at=9000,boot-ms=200",
        5,
    );
    let img = image("2.1.0", 20_000, 5);
    let pkg = package(dir.path(), "fw", &img, "2.1.0");
    let c = windowed(&sim, 2, 500);
    let report = c.deliver_with_report(&pkg, 0, &|_| {}).await.unwrap();
    assert_eq!(sim.flash(), img);
    let s = sim.stats();
    assert!(
        s.dropped > 0 && s.corrupted > 0 && s.power_cycles == 1,
        "{s:?}"
    );
    assert!(report.restarts >= 1, "{report:?}");
    assert!(c.chunk_retries() > 0);
    c.activate(&pkg).await.unwrap();
    assert_eq!(c.read_version().await.unwrap(), "2.1.0");
}

/// The metric under the dropped-answer fault alone, lock-step and
/// windowed: it grows with the lost answers and only grows.
#[tokio::test]
async fn chunk_retries_grow_with_dropped_answers() {
    for window in [1, 2] {
        let dir = tempfile::tempdir().unwrap();
        let sim = sim("drop=0.1", 9);
        let img = image("2.0.0", 12_000, 9);
        let pkg = package(dir.path(), "fw", &img, "2.0.0");
        let c = windowed(&sim, window, 400);
        c.deliver(&pkg, 0, &|_| {}).await.unwrap();
        let after_first = c.chunk_retries();
        assert!(sim.stats().dropped > 0);
        assert!(after_first > 0, "window {window}");
        assert_eq!(sim.flash(), img);
        // The same image again: the device holds it; the count never drops.
        let again = c.deliver_with_report(&pkg, 0, &|_| {}).await.unwrap();
        assert!(c.chunk_retries() >= after_first);
        // ... and grows by exactly what this delivery sent again.
        assert_eq!(c.chunk_retries(), after_first + again.line.resent);
    }
}

/// A gateway restart mid-transfer with a window: the new driver's off-0
/// chunk resumes the device's session.
#[tokio::test]
async fn resume_after_restart_with_a_window() {
    let dir = tempfile::tempdir().unwrap();
    let sim = sim("pace=200000", 3);
    let img = image("2.0.0", 40_000, 3);
    let pkg = package(dir.path(), "fw", &img, "2.0.0");
    let first = windowed(&sim, 2, 1000);
    // Cut the first transfer off once some of it went through.
    let cut = tokio::time::timeout(Duration::from_millis(800), first.deliver(&pkg, 0, &|_| {}));
    assert!(cut.await.is_err(), "the first transfer was cut off");
    drop(first);
    let second = windowed(&sim, 2, 1000);
    let report = second.deliver_with_report(&pkg, 0, &|_| {}).await.unwrap();
    assert!(report.resumed_at.is_some_and(|off| off > 0), "{report:?}");
    assert_eq!(sim.flash(), img);
    assert_eq!(sim.stats().sessions, 1);
}
