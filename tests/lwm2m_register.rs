//! LwM2M children that register with the gateway (issue 13), over real UDP
//! on 127.0.0.1: the simulated child in registering mode against a real
//! `CoapNetwork` (its `/rd` registry) and `CoapChild` configured by
//! endpoint name. Registration and presence, NAT rebinding in the middle of
//! a pull upgrade, queue mode, lifetime expiry, a restart with journaled
//! registrations (a real SQLite file), refusals. Every wait is bounded;
//! nothing asserts on time.

mod lwm2m_support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use lwm2m_support::{bounded, package, until};
use otabridge::child::coap::{ChildOptions, CoapChild, CoapNetwork, NetworkOptions};
use otabridge::child::{Child, ErrorKind, Package};
use otabridge::config::{CoapAddress, Delivery};
use otabridge::sim::coap_child::{CoapChildSim, Registering, SimOptions};
use otabridge_codecs::coap::{Code, ExchangeConfig};

fn exchange(seed: u64) -> ExchangeConfig {
    ExchangeConfig {
        ack_timeout: Duration::from_millis(50),
        max_retransmit: 4,
        seed,
        ..ExchangeConfig::default()
    }
}

fn options(seed: u64, state: Option<&std::path::Path>) -> NetworkOptions {
    let mut o = NetworkOptions::new("127.0.0.1:0".parse().unwrap(), seed);
    o.exchange = exchange(seed);
    o.registry.grace = Duration::ZERO;
    o.registry.queue_window = Duration::from_millis(300);
    o.state_dir = state.map(|p| p.to_owned());
    o
}

fn child_options() -> ChildOptions {
    ChildOptions {
        poll_interval: Duration::from_millis(20),
        download_timeout: Duration::from_secs(30),
        update_timeout: Duration::from_secs(20),
        max_attempts: 2,
        push_szx: 6,
        ..ChildOptions::default()
    }
}

fn child(net: &CoapNetwork, endpoint: &str, delivery: Delivery) -> CoapChild {
    net.allow_endpoint(endpoint);
    CoapChild::new(
        "dev_1",
        CoapAddress::Endpoint(endpoint.into()),
        delivery,
        net.clone(),
        child_options(),
    )
}

fn sim_options(server: std::net::SocketAddr, endpoint: &str, seed: u64) -> SimOptions {
    SimOptions {
        exchange: exchange(seed ^ 0x55),
        reboot_time: Duration::from_millis(100),
        seed,
        register: Some(Registering::new(server, endpoint)),
        ..SimOptions::new("1.0", "2.0")
    }
}

#[tokio::test]
async fn a_registered_child_is_reached_where_it_registered_from() {
    let net = CoapNetwork::bind(options(1, None)).unwrap();
    let c = child(&net, "node01", Delivery::Pull);
    let mut presence = c.presence().expect("a registering child has presence");
    assert!(!*presence.borrow());
    // Not registered yet: a read fails at once as a link that is gone.
    let e = c.read_version().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::LinkGone, "{e}");
    let sim = CoapChildSim::start(sim_options(net.local_addr(), "node01", 2))
        .await
        .unwrap();
    bounded(presence.wait_for(|p| *p)).await.unwrap();
    let r = net.registration("node01").unwrap();
    assert_eq!(r.reg.peer, sim.addr());
    assert_eq!(r.reg.lifetime, Duration::from_secs(300));
    assert!(r.reg.objects.has(5, 0));
    assert_eq!(c.address(), Some(sim.addr()));
    assert_eq!(c.read_version().await.unwrap(), "1.0");
    // NAT rebinding: the Update from a new port moves the address.
    let old = sim.addr();
    let new = bounded(sim.rebind()).await.unwrap();
    assert_ne!(old, new);
    until(|| c.address() == Some(new)).await;
    assert_eq!(c.read_version().await.unwrap(), "1.0");
    assert_eq!(sim.stats().updates, 1);
    // De-register: offline, and requests fail again.
    sim.deregister();
    bounded(presence.wait_for(|p| !*p)).await.unwrap();
    assert!(net.registration("node01").is_none());
    let e = c.read_version().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::LinkGone, "{e}");
}

#[tokio::test]
async fn unknown_endpoints_get_4_03_and_stay_unregistered() {
    let net = CoapNetwork::bind(options(3, None)).unwrap();
    let _c = child(&net, "node01", Delivery::Pull);
    let sim = CoapChildSim::start(sim_options(net.local_addr(), "stranger", 4))
        .await
        .unwrap();
    until(|| sim.last_registry_code().is_some()).await;
    assert_eq!(sim.last_registry_code(), Some(Code(0x83)));
    assert!(net.registrations().is_empty());
    assert_eq!(sim.location(), None);
}

#[tokio::test]
async fn nat_rebinding_in_the_middle_of_a_pull_upgrade() {
    let dir = tempfile::tempdir().unwrap();
    let net = CoapNetwork::bind(options(5, None)).unwrap();
    let c = Arc::new(child(&net, "node02", Delivery::Pull));
    let mut opts = sim_options(net.local_addr(), "node02", 6);
    opts.preferred_szx = 2; // 64-byte blocks: a long transfer
    let sim = CoapChildSim::start(opts).await.unwrap();
    let mut presence = c.presence().unwrap();
    bounded(presence.wait_for(|p| *p)).await.unwrap();
    let pkg = package(dir.path(), 48 * 1024, 37);
    let seen = Arc::new(AtomicU64::new(0));
    let upgrade = {
        let (c, pkg, seen) = (c.clone(), pkg.clone(), seen.clone());
        tokio::spawn(async move {
            let progress = move |n: u64| {
                seen.fetch_max(n, Ordering::SeqCst);
            };
            c.deliver(&pkg, 0, &progress).await?;
            c.activate(&pkg).await
        })
    };
    // Mid-transfer, the child moves to another port and says so.
    until(|| sim.stats().blocks >= 100).await;
    let new = bounded(sim.rebind()).await.unwrap();
    bounded(upgrade).await.unwrap().unwrap();
    assert_eq!(sim.version(), "2.0");
    assert_eq!(
        sim.last_image_sha256().as_deref(),
        Some(pkg.sha256.as_str())
    );
    assert_eq!(sim.stats().starts, 1, "the pull was not restarted");
    // After the upgrade's reboot it registered again, from its new port.
    // (Its Register's 2.01 may still be on its way when the version read
    // after the reboot is answered.)
    until(|| sim.stats().registrations >= 2).await;
    assert_eq!(c.address(), Some(new));
    assert_eq!(c.read_version().await.unwrap(), "2.0");
}

#[tokio::test]
async fn queue_mode_requests_wait_for_the_client_to_wake() {
    let net = CoapNetwork::bind(options(7, None)).unwrap();
    let c = Arc::new(child(&net, "sleepy", Delivery::Push));
    let mut opts = sim_options(net.local_addr(), "sleepy", 8);
    let reg = opts.register.as_mut().unwrap();
    reg.queue = true;
    reg.lwm2m = "1.0".into();
    reg.awake = Duration::from_millis(300);
    let sim = CoapChildSim::start(opts).await.unwrap();
    let mut presence = c.presence().unwrap();
    bounded(presence.wait_for(|p| *p)).await.unwrap();
    assert!(net.registration("sleepy").unwrap().reg.queue);
    // Awake right after registering: read, which caches the version.
    assert_eq!(c.read_version().await.unwrap(), "1.0");
    // Asleep: a version read is answered from the cache, nothing is sent.
    until(|| !net.registration("sleepy").unwrap().listening(net.now())).await;
    let before = net.stats().datagrams;
    assert_eq!(c.read_version().await.unwrap(), "1.0");
    assert_eq!(net.stats().datagrams, before);
    // Any other request waits for the next Update, then goes out.
    let state = {
        let c = c.clone();
        tokio::spawn(async move {
            let p = Package {
                path: "/nonexistent".into(),
                size: 1,
                sha256: "00".repeat(32),
                version: "1.0".into(),
            };
            // Already at 1.0: the procedure reads /3/0/3 and stops.
            c.deliver(&p, 0, &|_| {}).await
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!state.is_finished(), "held while the client sleeps");
    assert_eq!(sim.stats().slept_through, 0, "nothing was sent to it");
    sim.update();
    bounded(state).await.unwrap().unwrap();
    assert_eq!(sim.stats().slept_through, 0);
}

#[tokio::test]
async fn an_expired_registration_goes_offline() {
    let net = CoapNetwork::bind(options(9, None)).unwrap();
    let c = child(&net, "brief", Delivery::Pull);
    let mut opts = sim_options(net.local_addr(), "brief", 10);
    opts.register.as_mut().unwrap().lifetime_s = 1;
    let _sim = CoapChildSim::start(opts).await.unwrap();
    let mut presence = c.presence().unwrap();
    bounded(presence.wait_for(|p| *p)).await.unwrap();
    // No Update within 1 s (and no grace here): expired.
    bounded(presence.wait_for(|p| !*p)).await.unwrap();
    assert!(net.registration("brief").is_none());
    assert_eq!(
        c.read_version().await.unwrap_err().kind(),
        ErrorKind::LinkGone
    );
}

#[tokio::test]
async fn a_restarted_gateway_remembers_who_registered() {
    let state = tempfile::tempdir().unwrap();
    let sim;
    {
        let net = CoapNetwork::bind(options(11, Some(state.path()))).unwrap();
        let c = child(&net, "node03", Delivery::Pull);
        sim = CoapChildSim::start(sim_options(net.local_addr(), "node03", 12))
            .await
            .unwrap();
        bounded(c.presence().unwrap().wait_for(|p| *p))
            .await
            .unwrap();
        assert_eq!(c.read_version().await.unwrap(), "1.0");
        // The journal writer runs behind the network task: wait for the row.
        until(|| {
            otabridge::child::coap::registrations::open(state.path())
                .map(|(_, rows)| rows.iter().any(|r| r.firmware.is_some()))
                .unwrap_or(false)
        })
        .await;
    }
    // A new network on the same state: the registration is back, requests
    // reach the child at once, without it registering again.
    let net = CoapNetwork::bind(options(13, Some(state.path()))).unwrap();
    let c = child(&net, "node03", Delivery::Pull);
    let r = net.registration("node03").expect("restored");
    assert_eq!(r.reg.peer, sim.addr());
    assert_eq!(r.firmware.as_deref(), Some("1.0"));
    assert!(*c.presence().unwrap().borrow());
    assert_eq!(c.read_version().await.unwrap(), "1.0");
    assert_eq!(sim.stats().registrations, 1);
    drop((c, net));
    // A registration whose lifetime ran out while the gateway was down is
    // dropped at start.
    let mut j = otabridge::journal::Journal::open(state.path()).unwrap();
    j.connection()
        .execute(
            "UPDATE coap_registrations SET renewed_unix = renewed_unix - 301",
            [],
        )
        .unwrap();
    drop(j);
    let net = CoapNetwork::bind(options(14, Some(state.path()))).unwrap();
    assert!(net.registration("node03").is_none());
    assert!(otabridge::child::coap::registrations::open(state.path())
        .unwrap()
        .1
        .is_empty());
}
