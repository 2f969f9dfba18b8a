//! The framed serial driver end to end on ptys, through the `Child` trait,
//! for both built-in profiles: byte-exact delivery through faults, resume
//! from the child's offset after a gateway restart, result codes for every
//! failure status, silence. Ptys run in real time: every wait is bounded by
//! the profiles' own timeouts and no assertion is about time.

mod serial_support;

use std::path::Path;
use std::sync::Arc;

use otabridge::child::framed::FramedChild;
use otabridge::child::{Child, ChildError, ErrorKind, Package};
use otabridge::config::Framing;
use otabridge::ota::verdict::{verdict, Failure};
use otabridge::sim::framed_child::{Faults, FramedChildOptions, FramedChildSim};
use otabridge_codecs::framed::profile::{builtin, StatusAction};
use otabridge_codecs::framed::sim::Injection;
use otabridge_codecs::framed::{MessageKind, Profile};
use otabridge_codecs::iotda::ResultCode;
use otabridge_codecs::rng::Rng;
use serial_support::Seen;

const PROFILES: [&str; 2] = ["acme-rs485", "nordlys-uart"];

fn profile(name: &str) -> Arc<Profile> {
    Arc::new(builtin(name).unwrap().unwrap())
}

fn image(len: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; len];
    Rng::new(seed).fill(&mut v);
    v
}

fn package(dir: &Path, bytes: &[u8], version: &str) -> Package {
    serial_support::package(dir, &format!("fw-{version}"), bytes, version)
}

fn sim(p: &Arc<Profile>, faults: &str, seed: u64) -> FramedChildSim {
    let mut o = FramedChildOptions::new(Arc::clone(p), "1.0.0");
    o.faults = faults.parse::<Faults>().unwrap();
    o.seed = seed;
    FramedChildSim::spawn(o).unwrap()
}

fn driver(id: &str, sim: &FramedChildSim, p: &Arc<Profile>) -> FramedChild {
    FramedChild::new(id, sim.path(), 115_200, Framing::EIGHT_N_ONE, Arc::clone(p))
}

/// Drops, bad CRCs and noise both ways, and a reboot mid-transfer: the
/// image still arrives byte for byte, activation is confirmed by the
/// version read back, and each fault demonstrably happened. Sizes and rates
/// give each profile a few hundred writes (each fault is all but certain to
/// happen) while every lost frame costs a reply timeout.
async fn deliver_and_activate_through_faults(name: &str, size: usize, faults: &str, seed: u64) {
    let dir = tempfile::tempdir().unwrap();
    let p = profile(name);
    let img = image(size, 10 + seed);
    let pkg = package(dir.path(), &img, "2.0.0");
    let sim = sim(&p, &format!("{faults},boot-ms=150"), seed);
    let c = driver("node", &sim, &p);
    assert_eq!(c.read_version().await.unwrap(), "1.0.0", "{name}");
    let seen = Seen::default();
    c.deliver(&pkg, 0, &|n| seen.push(n)).await.unwrap();
    let got = sim.inspect(|s| s.device().received().map(<[u8]>::to_vec));
    assert_eq!(got.as_deref(), Some(&img[..]), "{name}: byte for byte");
    let p_seen = seen.all();
    assert_eq!(p_seen.last(), Some(&(size as u64)), "{name}");
    assert!(
        p_seen.windows(2).all(|w| w[0] <= w[1]),
        "{name}: {p_seen:?}"
    );
    // Not activated yet: deliver stops before `activate`.
    assert_eq!(
        sim.inspect(|s| s.device().requests(MessageKind::Activate)),
        0
    );
    assert_eq!(sim.inspect(|s| s.device().version().to_owned()), "1.0.0");

    c.activate(&pkg).await.unwrap();
    assert_eq!(c.read_version().await.unwrap(), "2.0.0", "{name}");
    // Lost and damaged frames were sent again, and the metric saw it.
    assert!(c.chunk_retries() > 0, "{name}");
    sim.inspect(|s| {
        let d = s.device();
        assert_eq!(d.installed(), Some(&img[..]), "{name}");
        assert!(
            d.reboots() >= 2,
            "{name}: the mid-transfer one and activation"
        );
        let (to, from) = s.link_stats();
        assert!(to.dropped + from.dropped > 0, "{name}: {to:?} {from:?}");
        assert!(to.corrupted + from.corrupted > 0, "{name}: {to:?} {from:?}");
        assert!(to.noisy + from.noisy > 0, "{name}: {to:?} {from:?}");
    });
}

#[tokio::test]
async fn acme_delivers_and_activates_through_faults() {
    // 125 chunks of 128 bytes.
    let faults = "drop=0.04,crc=0.04,noise=0.2,reboot-at=8000";
    deliver_and_activate_through_faults("acme-rs485", 16_000, faults, 3).await;
}

#[tokio::test]
async fn nordlys_delivers_and_activates_through_faults() {
    // 40 chunks of 1 KiB.
    let faults = "drop=0.06,crc=0.06,noise=0.2,reboot-at=20000";
    deliver_and_activate_through_faults("nordlys-uart", 40_000, faults, 4).await;
}

/// On a clean line nothing is sent twice: the retry metric stays at 0.
#[tokio::test]
async fn a_clean_line_has_no_retries() {
    for name in PROFILES {
        let dir = tempfile::tempdir().unwrap();
        let p = profile(name);
        let img = image(6_000, 40);
        let pkg = package(dir.path(), &img, "2.0.0");
        let sim = sim(&p, "", 7);
        let c = driver("node", &sim, &p);
        c.deliver(&pkg, 0, &|_| {}).await.unwrap();
        assert_eq!(c.chunk_retries(), 0, "{name}");
    }
}

/// A gateway killed mid-transfer: a new driver (a new process's) continues
/// at the offset the child kept, not at 0.
#[tokio::test]
async fn a_new_driver_resumes_at_the_childs_offset() {
    for (i, name) in PROFILES.into_iter().enumerate() {
        let dir = tempfile::tempdir().unwrap();
        let p = profile(name);
        let img = image(24_000, 20 + i as u64);
        let pkg = package(dir.path(), &img, "2.0.0");
        let sim = sim(&p, "drop=0.02,noise=0.05", 5 + i as u64);

        let first = driver("node", &sim, &p);
        let (tx, mut rx) = tokio::sync::watch::channel(0u64);
        let cb = move |n: u64| {
            let _ = tx.send(n);
        };
        tokio::select! {
            r = first.deliver(&pkg, 0, &cb) => panic!("{name}: finished before the cut: {r:?}"),
            _ = rx.wait_for(|&n| n >= 12_000) => {}
        }
        // The gateway dies: its future, its driver and its port go.
        drop(first);
        let held = sim.inspect(|s| s.device().received().map_or(0, <[u8]>::len));
        let before = sim.inspect(|s| s.device().chunk_offsets().len());
        assert!(held >= 12_000, "{name}: the child kept {held}");

        let second = driver("node", &sim, &p);
        let seen = Seen::default();
        second
            .deliver(&pkg, held as u64, &|n| seen.push(n))
            .await
            .unwrap();
        let first_seen = seen.all()[0];
        assert!(
            first_seen >= held as u64,
            "{name}: resumed at {first_seen}, the child held {held}"
        );
        let max_chunk = p.max_chunk;
        sim.inspect(|s| {
            let d = s.device();
            let after = &d.chunk_offsets()[before..];
            assert!(
                after.iter().all(|&o| o as usize + max_chunk >= held),
                "{name}: chunks after the restart start at the child's offset {held}: {:?}",
                &after[..after.len().min(8)]
            );
            assert!(after.len() < (img.len() - held) / max_chunk + 20, "{name}");
            assert_eq!(d.received(), Some(&img[..]), "{name}");
        });
        second.activate(&pkg).await.unwrap();
        assert_eq!(
            sim.inspect(|s| s.device().installed().map(<[u8]>::to_vec)),
            Some(img)
        );
    }
}

/// What the gateway reports for a refusal the profile declares `code` for
/// (no retry, the code, the profile's words for the status).
fn expected(p: &Profile, status: u32, code: ResultCode) -> (bool, ResultCode, String) {
    let description = p
        .status(status)
        .and_then(|s| s.description.clone())
        .unwrap_or_else(|| code.description().to_owned());
    (false, code, description)
}

/// What the gateway does about `e` (its one mapping, `ota::verdict`).
fn report(e: &ChildError) -> (bool, ResultCode, String) {
    let v = verdict(Failure::Child(e));
    (v.retry, v.code, v.description)
}

/// A child answering each `fail` status of the profile gives that status's
/// IoTDA code and description; busy past the retries gives the retry
/// status's code; a status the profile does not list gives 255.
#[tokio::test]
async fn every_failure_status_gives_its_iotda_code() {
    for name in PROFILES {
        let dir = tempfile::tempdir().unwrap();
        let p = profile(name);
        let pkg = package(dir.path(), &image(5_000, 1), "2.0.0");
        let fails: Vec<(u32, ResultCode)> = p
            .statuses
            .iter()
            .filter_map(|s| match s.action {
                StatusAction::Fail { result_code } => Some((s.value, result_code)),
                _ => None,
            })
            .collect();
        assert!(fails.len() >= 5, "{name}");
        let (busy, busy_code) = p
            .statuses
            .iter()
            .find_map(|s| match s.action {
                StatusAction::Retry { result_code } => Some((s.value, result_code)),
                _ => None,
            })
            .unwrap();
        let unlisted = 0x7F;
        assert!(p.status(unlisted).is_none());
        let begin_retries = p.message(MessageKind::Begin).unwrap().retries;

        // Begin number n answers the n-th planned status; the busy one is
        // answered to every attempt of one delivery.
        let mut o = FramedChildOptions::new(Arc::clone(&p), "1.0.0");
        let mut nth = 0;
        let mut plan = |status: u32, o: &mut FramedChildOptions| {
            nth += 1;
            o.device.inject.push(Injection {
                kind: MessageKind::Begin,
                nth,
                status,
            });
        };
        for &(status, _) in &fails {
            plan(status, &mut o);
        }
        for _ in 0..=begin_retries {
            plan(busy, &mut o);
        }
        plan(unlisted, &mut o);
        let sim = FramedChildSim::spawn(o).unwrap();
        let c = driver("node", &sim, &p);

        for &(status, code) in &fails {
            let e = c.deliver(&pkg, 0, &|_| {}).await.unwrap_err();
            assert_eq!(
                report(&e),
                expected(&p, status, code),
                "{name}: status {status:#x}: {e}"
            );
        }
        let e = c.deliver(&pkg, 0, &|_| {}).await.unwrap_err();
        assert_eq!(
            report(&e),
            expected(&p, busy, busy_code),
            "{name}: busy: {e}"
        );
        let e = c.deliver(&pkg, 0, &|_| {}).await.unwrap_err();
        assert_eq!(
            report(&e),
            (
                false,
                ResultCode::INNER_ERROR,
                ResultCode::INNER_ERROR.description().to_owned()
            ),
            "{name}: unlisted status: {e}"
        );
        // The plan is used up: the next delivery goes through.
        c.deliver(&pkg, 0, &|_| {}).await.unwrap();
        assert!(sim.inspect(|s| s.device().requests(MessageKind::Chunk)) > 0);
    }
}

/// The child's own refusals: an image larger than its slot (5), and an
/// install that boots the old image again (10, known only from the version
/// read back).
#[tokio::test]
async fn refusals_from_the_child_itself() {
    let dir = tempfile::tempdir().unwrap();
    let p = profile("acme-rs485");
    let pkg = package(dir.path(), &image(3_000, 2), "2.0.0");
    let mut o = FramedChildOptions::new(Arc::clone(&p), "1.0.0");
    o.device.capacity = 2_000;
    let sim = FramedChildSim::spawn(o).unwrap();
    let e = driver("small", &sim, &p)
        .deliver(&pkg, 0, &|_| {})
        .await
        .unwrap_err();
    assert_eq!(report(&e), expected(&p, 0x10, ResultCode::LOW_SPACE), "{e}");
    drop(sim);

    let mut o = FramedChildOptions::new(Arc::clone(&p), "1.0.0");
    o.device.install_fails = true;
    let sim = FramedChildSim::spawn(o).unwrap();
    let c = driver("broken", &sim, &p);
    c.deliver(&pkg, 0, &|_| {}).await.unwrap();
    let e = c.activate(&pkg).await.unwrap_err();
    assert_eq!(
        report(&e),
        (
            false,
            ResultCode::INSTALL_FAIL,
            ResultCode::INSTALL_FAIL.description().to_owned()
        ),
        "{e}"
    );
    assert_eq!(c.read_version().await.unwrap(), "1.0.0");
}

/// Nobody answers on the line: unreachable (a retry may work), not a
/// verdict on the package.
#[tokio::test]
async fn silence_is_unreachable() {
    let dir = tempfile::tempdir().unwrap();
    let (_master, slave) = tokio_serial::SerialStream::pair().unwrap();
    let path = tokio_serial::SerialPort::name(&slave).unwrap();
    for name in PROFILES {
        let p = profile(name);
        let c = FramedChild::new("mute", Path::new(&path), 9600, Framing::EIGHT_N_ONE, p);
        let e = c.read_version().await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unreachable, "{name}: {e}");
        let pkg = package(dir.path(), &image(1_000, 3), "2.0.0");
        let e = c.deliver(&pkg, 0, &|_| {}).await.unwrap_err();
        assert!(report(&e).0, "{name}: {e}");
    }
}

/// A line paced to 115200 baud and a child that erases for 400 ms on
/// `begin`: the transfer takes at least the wire time (a lower bound, which
/// load cannot break) and arrives intact.
#[tokio::test]
async fn a_paced_line_and_a_slow_erase() {
    let dir = tempfile::tempdir().unwrap();
    let p = profile("nordlys-uart");
    let img = image(12_000, 30);
    let pkg = package(dir.path(), &img, "2.0.0");
    let sim = sim(&p, "pace=115200,erase-ms=400", 6);
    let c = driver("node", &sim, &p);
    let started = std::time::Instant::now();
    c.deliver(&pkg, 0, &|_| {}).await.unwrap();
    let took = started.elapsed();
    // 12 000 image bytes at 11 520 bytes/s, plus the erase.
    assert!(took.as_millis() >= 1_040 + 400, "{took:?}");
    assert_eq!(
        sim.inspect(|s| s.device().received().map(<[u8]>::to_vec)),
        Some(img)
    );
}

/// A child whose update session lives in RAM loses it in the reboot: the
/// driver begins again and sends from 0, and the image still arrives whole.
#[tokio::test]
async fn a_child_that_loses_its_session_gets_the_image_from_zero() {
    let dir = tempfile::tempdir().unwrap();
    let p = profile("nordlys-uart");
    let img = image(10_000, 31);
    let pkg = package(dir.path(), &img, "2.0.0");
    let mut o = FramedChildOptions::new(Arc::clone(&p), "1.0.0");
    o.faults = "reboot-at=5000,boot-ms=100".parse().unwrap();
    o.device.persist_session = false;
    let sim = FramedChildSim::spawn(o).unwrap();
    let c = driver("node", &sim, &p);
    c.deliver(&pkg, 0, &|_| {}).await.unwrap();
    sim.inspect(|s| {
        let d = s.device();
        assert_eq!(d.received(), Some(&img[..]));
        assert_eq!(d.reboots(), 1);
        let zeros = d.chunk_offsets().iter().filter(|&&o| o == 0).count();
        assert!(zeros >= 2, "sent from 0 twice: {:?}", d.chunk_offsets());
        assert!(d.requests(MessageKind::Begin) >= 2);
    });
}
