//! Real TLS to the platform: the chain is verified against the configured
//! CA, and X.509 client authentication works (docs/protocols/iotda.md §1.2–1.3).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use otabridge::child::memory::MemoryChild;
use otabridge::child::Child;
use otabridge::config::Config;
use otabridge::platform::LinkState;
use otabridge::sim::broker::LocalBroker;
use otabridge::sim::platform::{DeviceAuth, Edge, SimPlatform, TestPki};
use otabridge::sim::testbed::{Testbed, GATEWAY_ID};

async fn wait_link(h: &otabridge::daemon::Handles, want: LinkState, within: Duration) -> bool {
    let mut rx = h.platform.link_state();
    let reached = tokio::time::timeout(within, rx.wait_for(|s| *s == want)).await;
    matches!(reached, Ok(Ok(_)))
}

fn child() -> Vec<Arc<dyn Child>> {
    vec![Arc::new(MemoryChild::new("p_a", "1.0")) as Arc<dyn Child>]
}

#[tokio::test]
async fn a_server_signed_by_another_ca_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut tb = Testbed::new(dir.path()).await.unwrap();
    // Trust a different CA than the one that signed the edge.
    let other = TestPki::new(&["localhost"]).unwrap();
    let other_ca = dir.path().join("other-ca.pem");
    std::fs::write(&other_ca, &other.ca_pem).unwrap();
    let text =
        otabridge::sim::testbed::config_text(tb.edge.addr().port(), &other_ca, &tb.state_dir, "");
    let cfg = Config::parse(&text, Path::new("t.toml")).unwrap();
    let h = tb.start_gateway_with(cfg, child()).await.unwrap();
    assert!(!wait_link(&h, LinkState::Up, Duration::from_secs(3)).await);
    assert_eq!(tb.edge.connects(), 0);
    tb.stop_gateway().await.unwrap();
}

#[tokio::test]
async fn x509_client_authentication() {
    let dir = tempfile::tempdir().unwrap();
    let broker = LocalBroker::start().unwrap();
    let pki = TestPki::with_client_roots(&["localhost"], true).unwrap();
    let edge = Edge::start(broker, Some(pki.server.clone())).await.unwrap();
    edge.register(GATEWAY_ID, DeviceAuth::Certificate);
    let mut platform = SimPlatform::connect(broker).await.unwrap();
    let (cert, key) = pki.client_cert(GATEWAY_ID).unwrap();
    let (ca, cert_file, key_file) = (
        dir.path().join("ca.pem"),
        dir.path().join("gw.pem"),
        dir.path().join("gw.key"),
    );
    std::fs::write(&ca, &pki.ca_pem).unwrap();
    std::fs::write(&cert_file, cert).unwrap();
    std::fs::write(&key_file, key).unwrap();
    let text = format!(
        "[platform]\nurl = \"mqtts://localhost:{}\"\ndevice_id = \"{GATEWAY_ID}\"\ncert_file = {:?}\nkey_file = {:?}\nca_file = {:?}\n[state]\ndir = {:?}\n",
        edge.addr().port(),
        cert_file.display().to_string(),
        key_file.display().to_string(),
        ca.display().to_string(),
        dir.path().join("state").display().to_string()
    );
    let cfg = Config::parse(&text, Path::new("t.toml")).unwrap();
    let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(otabridge::daemon::run_with(
        cfg,
        child(),
        async move {
            let _ = stop_rx.await;
        },
        None,
    ));
    // The connect-time status report arrives: TLS with client auth worked.
    let r = platform
        .recv(Duration::from_secs(20))
        .await
        .expect("no report over mutual TLS");
    assert!(r.topic.ends_with("/sys/events/up"));
    assert_eq!(edge.connects(), 1);
    let _ = stop.send(());
    task.await.unwrap().unwrap();
}
