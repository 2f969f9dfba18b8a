//! The log capture the platform tests share: a thread-local tracing
//! subscriber writing into a buffer. Each test runs on a current-thread
//! runtime, so the capture sees every line the gateway writes.

#![allow(dead_code)] // each test file uses the waits it needs

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tracing::subscriber::NoSubscriber;
use tracing::Dispatch;

/// An idle dispatch that lives as long as the test binary. While exactly
/// one dispatch exists, tracing-core caches a callsite's interest from the
/// default of whichever thread reaches it first (tokio-rs/tracing#3611): a
/// line first written on a thread without this capture (a blocking-pool or
/// writer thread) would be dropped for good, on the test's thread too. A
/// second dispatch keeps tracing on its general path, where each event
/// asks the current thread's subscriber.
static SECOND_DISPATCH: OnceLock<Dispatch> = OnceLock::new();

#[derive(Clone, Default)]
pub(crate) struct Logs(Arc<Mutex<Vec<u8>>>);

impl Logs {
    /// Captures this thread's log lines until the guard is dropped;
    /// `TEST_LOG` overrides the filter.
    pub(crate) fn capture() -> (Logs, tracing::subscriber::DefaultGuard) {
        SECOND_DISPATCH.get_or_init(|| Dispatch::new(NoSubscriber::default()));
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
