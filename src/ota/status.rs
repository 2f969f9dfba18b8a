//! `otabridge status`: each configured child as the journal knows it. Opens
//! the journal read-only, so it works while the daemon runs (SQLite WAL).

use serde::Serialize;

use crate::config::{Config, Transport};
use crate::journal::{Journal, JournalError};

/// One child's line.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ChildStatus {
    /// IoTDA device id.
    pub device_id: String,
    /// coap, serial or sim.
    pub transport: String,
    /// Last version read.
    pub version: Option<String>,
    /// Last health check passed.
    pub online: bool,
    /// Unix time it last answered.
    pub last_seen_unix: Option<i64>,
    /// Last error, if it did not answer.
    pub last_error: Option<String>,
}

/// The state of every configured child (configuration order).
pub fn collect(cfg: &Config) -> Result<Vec<ChildStatus>, JournalError> {
    let rows = if cfg.state.dir.join(crate::journal::FILE_NAME).exists() {
        Journal::open_read_only(&cfg.state.dir)?.children()?
    } else {
        Vec::new()
    };
    Ok(cfg
        .children
        .iter()
        .map(|c| {
            let transport = match c.transport {
                Transport::Coap { .. } => "coap",
                Transport::Serial { .. } => "serial",
                Transport::Simulated { .. } => "sim",
            };
            let row = rows.iter().find(|r| r.device_id == c.device_id);
            ChildStatus {
                device_id: c.device_id.clone(),
                transport: transport.to_owned(),
                version: row.and_then(|r| r.version.clone()),
                online: row.is_some_and(|r| r.online),
                last_seen_unix: row.and_then(|r| r.last_seen_unix),
                last_error: row.and_then(|r| r.last_error.clone()),
            }
        })
        .collect())
}

/// Prints the status table (or JSON) to stdout.
pub fn print(cfg: &Config, json: bool) -> Result<(), JournalError> {
    let all = collect(cfg)?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&all).expect("status serialises")
        );
        return Ok(());
    }
    println!(
        "{:<28} {:<9} {:<12} {:<8} last error",
        "child", "transport", "version", "online"
    );
    for s in &all {
        println!(
            "{:<28} {:<9} {:<12} {:<8} {}",
            s.device_id,
            s.transport,
            s.version.as_deref().unwrap_or("-"),
            if s.online { "yes" } else { "no" },
            s.last_error.as_deref().unwrap_or("")
        );
    }
    Ok(())
}
