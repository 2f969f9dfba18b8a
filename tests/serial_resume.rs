//! A gateway restart mid-transfer: the driver is dropped while it sends,
//! a new driver opens the port afresh and delivers with `resume_from`. The
//! device kept its session, so the transfer continues where the device is,
//! never from 0.

mod serial_support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use otabridge::child::Child;
use otabridge::sim::smp_child::{SmpChild, SmpChildOptions};
use serial_support::{child, image, package, Seen};

#[tokio::test]
async fn resume_after_a_gateway_restart_continues_at_the_device_offset() {
    let dir = tempfile::tempdir().unwrap();
    let sim = SmpChild::spawn(SmpChildOptions::default()).unwrap();
    let img = image("2.0.0", 30_000, 11);
    let pkg = package(dir.path(), "fw", &img, "2.0.0");

    // First run: stop ("kill the gateway") once 12 000 bytes are acknowledged.
    let acked = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(tokio::sync::Notify::new());
    {
        let first = child("node", &sim);
        let (a, s) = (acked.clone(), stop.clone());
        let progress = move |n: u64| {
            a.store(n, Ordering::SeqCst);
            if n >= 12_000 {
                s.notify_one();
            }
        };
        tokio::select! {
            r = first.deliver(&pkg, 0, &progress) => panic!("finished before the restart: {r:?}"),
            _ = stop.notified() => {}
        }
        // `first` (and with it the port) is dropped here.
    }
    let journaled = acked.load(Ordering::SeqCst);
    assert!((12_000..30_000).contains(&journaled), "{journaled}");

    // Second run: a new driver, resuming from the journaled offset.
    let second = child("node", &sim);
    let seen = Seen::default();
    let report = second
        .deliver_with_report(&pkg, journaled, &|n| seen.push(n))
        .await
        .unwrap();
    let resumed = report.resumed_at.expect("the device continued its session");
    // The device may hold one chunk more than the journal (the answer to
    // the chunk in flight was lost with the first driver), never less.
    assert!(
        resumed >= journaled,
        "resumed at {resumed}, journaled {journaled}"
    );
    let s = sim.stats();
    assert_eq!(s.sessions, 1, "no new session was started: {s:?}");
    assert_eq!(s.resumed_at, vec![resumed]);
    let p = seen.all();
    assert!(
        p.iter().all(|&n| n >= resumed),
        "progress never went back: {p:?}"
    );
    assert_eq!(p.last(), Some(&30_000));
    assert_eq!(sim.flash(), img);
    second.activate(&pkg).await.unwrap();
    assert_eq!(second.read_version().await.unwrap(), "2.0.0");
}

/// A restart after the device lost power too: the device kept nothing, so
/// the driver starts from 0 even though the journal says otherwise.
#[tokio::test]
async fn resume_from_a_device_that_lost_its_session_starts_over() {
    let dir = tempfile::tempdir().unwrap();
    let sim = SmpChild::spawn(SmpChildOptions::default()).unwrap();
    let img = image("2.0.0", 8_000, 12);
    let pkg = package(dir.path(), "fw", &img, "2.0.0");
    let c = child("node", &sim);
    let report = c.deliver_with_report(&pkg, 5_000, &|_| {}).await.unwrap();
    assert_eq!(report.resumed_at, None);
    assert_eq!(sim.stats().sessions, 1);
    assert_eq!(sim.flash(), img);
}
