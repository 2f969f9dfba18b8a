//! An in-process MQTT broker (rumqttd) for tests, the demo and bench setups.
//!
//! rumqttd's `Broker::start()` blocks its thread forever, has no shutdown and
//! cannot report its port (rumqtt's own notes): so we pick a free port, start
//! it on a named thread, and wait until it accepts connections.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings};

/// The broker's largest accepted payload: above IoTDA's 1 MB, so that tests
/// can send oversized events to the gateway.
const MAX_PAYLOAD: usize = 4 * 1024 * 1024;

/// A running broker; it lives until the process ends.
#[derive(Debug, Clone, Copy)]
pub struct LocalBroker {
    /// Where it listens (127.0.0.1, plain MQTT 3.1.1).
    pub addr: SocketAddr,
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl LocalBroker {
    /// Starts a broker on a free loopback port and waits until it listens.
    pub fn start() -> std::io::Result<LocalBroker> {
        let port = free_port()?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let server = ServerSettings {
            name: "v4".into(),
            listen: addr,
            tls: None,
            next_connection_delay_ms: 1,
            connections: ConnectionSettings {
                connection_timeout_ms: 60_000,
                max_payload_size: MAX_PAYLOAD,
                max_inflight_count: 200,
                auth: None,
                external_auth: None,
                dynamic_filters: true,
            },
        };
        let config = Config {
            id: 0,
            router: RouterConfig {
                max_connections: 10_010,
                max_outgoing_packet_count: 1000,
                max_segment_size: 16 * 1024 * 1024,
                max_segment_count: 10,
                ..Default::default()
            },
            v4: Some(HashMap::from([("v4".to_owned(), server)])),
            ..Default::default()
        };
        std::thread::Builder::new()
            .name("rumqttd".into())
            .spawn(move || {
                let mut broker = Broker::new(config);
                if let Err(e) = broker.start() {
                    tracing::error!("in-process broker stopped: {e}");
                }
            })?;
        for _ in 0..500 {
            if std::net::TcpStream::connect(addr).is_ok() {
                return Ok(LocalBroker { addr });
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Err(std::io::Error::other(format!(
            "in-process broker did not listen on {addr}"
        )))
    }
}
