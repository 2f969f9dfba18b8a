//! The log capture the platform tests share: a thread-local tracing
//! subscriber writing into a buffer. Each test runs on a current-thread
//! runtime, so the capture sees every line the gateway writes.

#![allow(dead_code)] // each test file uses the waits it needs

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Clone, Default)]
pub(crate) struct Logs(Arc<Mutex<Vec<u8>>>);

impl Logs {
    /// Captures this thread's log lines until the guard is dropped;
    /// `TEST_LOG` overrides the filter.
    pub(crate) fn capture() -> (Logs, tracing::subscriber::DefaultGuard) {
        let logs = Logs::default();
        let w = logs.clone();
        let sub = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_env_filter(
                std::env::var("TEST_LOG").unwrap_or("info,rumqttd=off,rumqttc=off".into()),
            )
            .with_writer(move || w.clone())
            .finish();
        (logs.clone(), tracing::subscriber::set_default(sub))
    }

    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }

    /// Waits (bounded: 10 s) until the log holds `needle`.
    pub(crate) async fn wait_for(&self, needle: &str) -> bool {
        self.wait_for_line(&[needle]).await
    }

    /// Waits (bounded: 10 s) until a log line holds every one of `needles`.
    pub(crate) async fn wait_for_line(&self, needles: &[&str]) -> bool {
        for _ in 0..400 {
            if self
                .text()
                .lines()
                .any(|l| needles.iter().all(|n| l.contains(n)))
            {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        false
    }
}

impl Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
