//! `delivery = "auto"` against a child that never answers the optional
//! reads (issue 13 item 6): `CoapChild` on a real `CoapNetwork` (UDP on
//! 127.0.0.1) against the simulated LwM2M child with a "silent on /5/0/9"
//! fault, under paused tokio time with RFC 7252's timers. Each read of an
//! optional resource waits 21 s (the exchange with MAX_RETRANSMIT 2), not
//! the whole exchange (93 s); then the upgrade goes on by pull, and the log
//! says the read went unanswered. The elapsed time asserted is the paused
//! clock's (deterministic), not the machine's.

mod log_support;
mod lwm2m_support;

use std::time::Duration;

use log_support::Logs;
use lwm2m_support::package;
use otabridge::child::coap::{ChildOptions, CoapChild, CoapNetwork, NetworkOptions};
use otabridge::child::Child;
use otabridge::config::Delivery;
use otabridge::sim::coap_child::{CoapChildSim, SimOptions};
use otabridge_codecs::lwm2m::DeliveryMethod;

/// Upgrades a child that ignores every request for `silent` with
/// `delivery = auto`; gives the paused clock's time of the delivery, the
/// simulator, and the log.
async fn upgrade_ignoring(
    silent: &[&str],
    method: DeliveryMethod,
) -> (Duration, CoapChildSim, String) {
    let (logs, _guard) = Logs::capture();
    let dir = tempfile::tempdir().unwrap();
    let pkg = package(dir.path(), 4 * 1024, 31);
    let mut opts = SimOptions::new("1.0", "2.0");
    opts.seed = 7;
    opts.delivery_method = method;
    opts.faults.silent_on = silent.iter().map(|s| s.to_string()).collect();
    let sim = CoapChildSim::start(opts).await.unwrap();
    // RFC 7252's timers (ACK_TIMEOUT 2 s, MAX_RETRANSMIT 4): an exchange
    // gives up after 93 s, an optional read after 21 s.
    let net = CoapNetwork::bind(NetworkOptions::new("127.0.0.1:0".parse().unwrap(), 8)).unwrap();
    assert_eq!(net.optional_read_wait(), Duration::from_secs(21));
    let child = CoapChild::new(
        "auto",
        sim.addr(),
        Delivery::Auto,
        net,
        ChildOptions {
            poll_interval: Duration::from_secs(1),
            ..ChildOptions::default()
        },
    );
    let start = tokio::time::Instant::now();
    let progress = |_: u64| {};
    tokio::time::timeout(Duration::from_secs(600), child.deliver(&pkg, 0, &progress))
        .await
        .expect("bounded")
        .unwrap();
    let took = start.elapsed();
    tokio::time::timeout(Duration::from_secs(600), child.activate(&pkg))
        .await
        .expect("bounded")
        .unwrap();
    assert_eq!(sim.version(), "2.0");
    (took, sim, logs.text())
}

#[tokio::test(start_paused = true)]
async fn an_unanswered_5_0_9_costs_21_s_then_pull() {
    let (took, sim, log) = upgrade_ignoring(&["5/0/9"], DeliveryMethod::Both).await;
    // Silent on /5/0/9: the read was sent, retransmitted, never answered.
    assert_eq!(sim.stats().ignored, 1, "{:?}", sim.stats());
    assert!(
        log.lines()
            .any(|l| l.contains("the read of /5/0/9 went unanswered in 21 s")),
        "{log}"
    );
    // /5/0/8 answered (CoAP listed): pull.
    assert!(
        log.lines().any(|l| l.contains("delivery = auto: chosen")
            && l.contains("chosen=Pull")
            && l.contains("method=no answer")
            && l.contains("protocols=[0]")),
        "{log}"
    );
    // Bounded by the optional read (21 s) plus the pull, not by the
    // exchange's 93 s (paused clock).
    assert!(took >= Duration::from_secs(21), "{took:?}");
    assert!(took < Duration::from_secs(60), "{took:?}\n{log}");
}

#[tokio::test(start_paused = true)]
async fn a_child_silent_on_both_optional_reads_is_pulled_after_42_s() {
    let (took, sim, log) = upgrade_ignoring(&["5/0/9", "5/0/8"], DeliveryMethod::Both).await;
    assert_eq!(sim.stats().ignored, 2, "{:?}", sim.stats());
    for path in ["/5/0/9", "/5/0/8"] {
        let line = format!("the read of {path} went unanswered in 21 s");
        assert!(log.contains(&line), "{log}");
    }
    assert!(
        log.contains("neither /5/0/9 nor /5/0/8 readable") && log.contains("chosen=Pull"),
        "{log}"
    );
    assert!(took >= Duration::from_secs(42), "{took:?}");
    assert!(took < Duration::from_secs(93), "{took:?}\n{log}");
}

/// A mandatory read keeps the whole exchange: a child silent on /3/0/3
/// fails the delivery as unreachable only when the exchange gives up
/// (ACK_TIMEOUT × 31 × a factor in [1, 1.5]: 62 to 93 s), not at 21 s.
#[tokio::test(start_paused = true)]
async fn a_silent_mandatory_read_still_waits_the_whole_exchange() {
    let dir = tempfile::tempdir().unwrap();
    let pkg = package(dir.path(), 1024, 31);
    let mut opts = SimOptions::new("1.0", "2.0");
    opts.faults.silent_on = vec!["3/0/3".into()];
    let sim = CoapChildSim::start(opts).await.unwrap();
    let net = CoapNetwork::bind(NetworkOptions::new("127.0.0.1:0".parse().unwrap(), 9)).unwrap();
    let child = CoapChild::new(
        "auto",
        sim.addr(),
        Delivery::Auto,
        net,
        ChildOptions::default(),
    );
    let start = tokio::time::Instant::now();
    let progress = |_: u64| {};
    let r = tokio::time::timeout(Duration::from_secs(600), child.deliver(&pkg, 0, &progress))
        .await
        .expect("bounded");
    assert!(r.is_err(), "{r:?}");
    assert!(
        start.elapsed() >= Duration::from_secs(62),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(sim.stats().ignored, 1, "{:?}", sim.stats());
}
