//! The link to IoTDA: one MQTT session as the gateway device, and the durable
//! outbox every upstream report goes through.
//!
//! - [`Platform`] is the handle the rest of the daemon uses: `report()` writes
//!   an event to the journal's outbox and wakes the session. It never blocks
//!   on the network and never loses a report to a disconnect or a crash.
//! - [`Session`] owns the connection: connect (TLS, credentials), subscribe,
//!   publish the outbox in order at QoS 1, delete each row when its PUBACK
//!   arrives, hand inbound publishes to the daemon, and reconnect with backoff.
//!
//! Each connection gets a fresh rumqttc `EventLoop` with a clean session, so
//! no state leaks between connections: after a reconnect or a restart the
//! outbox is simply sent again from its oldest row (at-least-once, as QoS 1).

mod session;

pub use session::{Inbound, Session};

use std::sync::Arc;

use otabridge_codecs::iotda::{event, topic, Event, EventTime};
use tokio::sync::{watch, Notify};

use crate::clock::now_unix;
use crate::journal::{JournalError, SharedJournal};

/// Whether the session is connected, as the daemon and `status` see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    /// Not connected (starting, backing off, or refused).
    Down,
    /// CONNACK received.
    Up,
}

#[derive(Debug)]
struct Inner {
    device_id: String,
    journal: SharedJournal,
    wake: Notify,
    link: watch::Sender<LinkState>,
}

/// The daemon's handle on the platform link. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Platform {
    inner: Arc<Inner>,
}

impl Platform {
    /// A handle for gateway `device_id`, queueing into `journal`.
    pub fn new(device_id: &str, journal: SharedJournal) -> Self {
        Platform {
            inner: Arc::new(Inner {
                device_id: device_id.to_owned(),
                journal,
                wake: Notify::new(),
                link: watch::Sender::new(LinkState::Down),
            }),
        }
    }

    /// The gateway's device id.
    pub fn gateway_id(&self) -> &str {
        &self.inner.device_id
    }

    /// Queues an event for the platform: durable when this returns (the
    /// outbox row is committed, off the async workers).
    /// `object_device_id` is the child's id, or `None` for the gateway itself.
    pub async fn report(
        &self,
        object_device_id: Option<&str>,
        ev: &Event,
    ) -> Result<(), JournalError> {
        let r = self.prepare(object_device_id, ev);
        self.inner.journal.run(move |j| r.push(j)).await?;
        self.queued();
        Ok(())
    }

    /// A report for [`Prepared::push`] inside another journal operation, so
    /// that it is queued in the same transaction as the state it reports
    /// (a job's end and its report: a kill between two operations lost the
    /// report, issue 17 item 1). Call [`Platform::queued`] once it commits.
    pub fn prepare(&self, object_device_id: Option<&str>, ev: &Event) -> Prepared {
        let now = now_unix();
        Prepared {
            topic: topic::events_up(&self.inner.device_id),
            payload: event::encode(object_device_id, ev, EventTime::from_unix(now), None),
            now,
        }
    }

    /// Wakes the session after [`Prepared::push`] committed.
    pub fn queued(&self) {
        self.inner.wake.notify_one();
    }

    /// Reports queued and not yet acknowledged by the broker.
    pub async fn outbox_len(&self) -> Result<u64, JournalError> {
        self.inner.journal.run(|j| j.outbox_len()).await
    }

    /// The outbox's journal, for the session.
    fn journal(&self) -> &SharedJournal {
        &self.inner.journal
    }

    /// Follows the link state.
    pub fn link_state(&self) -> watch::Receiver<LinkState> {
        self.inner.link.subscribe()
    }

    fn set_link(&self, s: LinkState) {
        self.inner.link.send_replace(s);
    }

    async fn woken(&self) {
        self.inner.wake.notified().await
    }
}

/// A report encoded for the outbox ([`Platform::prepare`]).
#[derive(Debug, Clone)]
pub struct Prepared {
    topic: String,
    payload: Vec<u8>,
    now: i64,
}

impl Prepared {
    /// Writes the report to the outbox of `j`: durable once the journal
    /// operation (and the transaction it is in, if any) commits.
    pub fn push(&self, j: &mut crate::journal::Journal) -> Result<(), JournalError> {
        j.outbox_push(&self.topic, &self.payload, self.now)
            .map(drop)
    }
}
