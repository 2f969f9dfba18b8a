//! One queue per shared medium ([`Child::bus`]): a serial port, an RS-485
//! bus. Every caller that talks to a child on a bus goes through it: the
//! upgrade jobs (one turn per read, delivery, activation, confirm), the
//! reconnect announcement, `version_query`. Turns are first come, first
//! served (tokio's semaphore is fair), and a caller starts its own
//! timeouts only once [`Buses::turn`] returned: a child queued behind a
//! sibling's long transfer neither times out nor is announced OFFLINE for
//! the wait.
//!
//! The queue also says who holds a bus and for what ([`Buses::holder`]):
//! a child whose own operation holds its bus is answering that operation,
//! which is better evidence that it is reachable than a read could give.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::info;

use super::Child;

/// What a turn is for, in logs and for [`Buses::holder`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// A job's version read (before an upgrade, or the verification).
    ReadVersion,
    /// A job's delivery.
    Deliver,
    /// A job's activation (with its read first).
    Activate,
    /// A job's confirm.
    Confirm,
    /// A job's health probe before its confirm (issue 15 item 2).
    Probe,
    /// A job's revert after a failed health check.
    Revert,
    /// A job's pre-flight check ([`Child::ready`]).
    Preflight,
    /// The health check of the reconnect announcement.
    Announce,
    /// A `version_query` from the platform.
    VersionQuery,
}

impl Purpose {
    /// Its name in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Purpose::ReadVersion => "read version",
            Purpose::Deliver => "deliver",
            Purpose::Activate => "activate",
            Purpose::Confirm => "confirm",
            Purpose::Probe => "health probe",
            Purpose::Revert => "revert",
            Purpose::Preflight => "pre-flight",
            Purpose::Announce => "health check",
            Purpose::VersionQuery => "version query",
        }
    }

    /// Whether it is a step of an upgrade job (the child answers it, or
    /// the job's own watchdog fails it).
    pub fn is_job(self) -> bool {
        matches!(
            self,
            Purpose::ReadVersion
                | Purpose::Deliver
                | Purpose::Activate
                | Purpose::Confirm
                | Purpose::Preflight
        )
    }
}

/// Who holds a bus now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// The child the operation talks to.
    pub device_id: String,
    /// What for.
    pub purpose: Purpose,
}

#[derive(Debug)]
struct Bus {
    name: String,
    turn: Arc<Semaphore>,
    holder: Mutex<Option<Holder>>,
}

/// The queues of every shared bus, built once from the configured
/// children (a child has one bus for life). Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Buses {
    /// Each child on a shared bus, and its bus.
    by_child: Arc<HashMap<String, Arc<Bus>>>,
}

/// The use of a bus, until dropped.
#[derive(Debug)]
pub struct Turn {
    bus: Arc<Bus>,
    _permit: OwnedSemaphorePermit,
}

impl Drop for Turn {
    fn drop(&mut self) {
        *self.bus.holder.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

impl Buses {
    /// The queues for `children`: one per distinct [`Child::bus`].
    pub fn new(children: &[Arc<dyn Child>]) -> Buses {
        let mut buses: HashMap<String, Arc<Bus>> = HashMap::new();
        let by_child = children
            .iter()
            .filter_map(|c| {
                let name = c.bus()?;
                let bus = buses
                    .entry(name.clone())
                    .or_insert_with(|| {
                        Arc::new(Bus {
                            name,
                            turn: Arc::new(Semaphore::new(1)),
                            holder: Mutex::new(None),
                        })
                    })
                    .clone();
                Some((c.device_id().to_owned(), bus))
            })
            .collect();
        Buses {
            by_child: Arc::new(by_child),
        }
    }

    /// Waits for `child`'s bus and holds it until the [`Turn`] is dropped;
    /// `None` at once for a child that shares no bus (or that these queues
    /// were not built with). Start timeouts after this returns.
    pub async fn turn(&self, child: &dyn Child, purpose: Purpose) -> Option<Turn> {
        let bus = self.by_child.get(child.device_id())?.clone();
        let permit = match bus.turn.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                let holder = bus.holder.lock().unwrap_or_else(|p| p.into_inner()).clone();
                info!(
                    child = child.device_id(),
                    bus = %bus.name,
                    purpose = purpose.as_str(),
                    holder = ?holder,
                    "waiting for the bus"
                );
                bus.turn
                    .clone()
                    .acquire_owned()
                    .await
                    .expect("bus semaphores are never closed")
            }
        };
        *bus.holder.lock().unwrap_or_else(|p| p.into_inner()) = Some(Holder {
            device_id: child.device_id().to_owned(),
            purpose,
        });
        Some(Turn {
            bus,
            _permit: permit,
        })
    }

    /// Takes `child`'s bus if it is free now: `Ok(None)` for a child that
    /// shares no bus, `Err` with the holder when another operation has it.
    pub fn try_turn(&self, child: &dyn Child, purpose: Purpose) -> Result<Option<Turn>, Holder> {
        let Some(bus) = self.by_child.get(child.device_id()) else {
            return Ok(None);
        };
        let mut holder = bus.holder.lock().unwrap_or_else(|p| p.into_inner());
        match bus.turn.clone().try_acquire_owned() {
            Ok(permit) => {
                *holder = Some(Holder {
                    device_id: child.device_id().to_owned(),
                    purpose,
                });
                Ok(Some(Turn {
                    bus: bus.clone(),
                    _permit: permit,
                }))
            }
            // Queued waiters hold no turn yet: the holder is set by
            // whoever has the permit (a moment after it got it, at worst).
            Err(_) => Err(holder.clone().unwrap_or(Holder {
                device_id: String::new(),
                purpose,
            })),
        }
    }

    /// Who holds `child`'s bus now, if it shares one and someone does.
    pub fn holder(&self, child: &dyn Child) -> Option<Holder> {
        let bus = self.by_child.get(child.device_id())?;
        let h = bus.holder.lock().unwrap_or_else(|p| p.into_inner());
        h.clone()
    }

    /// The name of `child`'s bus, if it shares one.
    pub fn bus_of(&self, child: &dyn Child) -> Option<&str> {
        self.by_child
            .get(child.device_id())
            .map(|b| b.name.as_str())
    }
}

#[cfg(all(test, feature = "sim"))]
mod tests {
    use super::*;
    use crate::child::memory::MemoryChild;
    use std::time::Duration;

    #[derive(Debug)]
    struct OnBus(MemoryChild, &'static str);

    impl Child for OnBus {
        fn device_id(&self) -> &str {
            self.0.device_id()
        }
        fn transport(&self) -> &'static str {
            "sim"
        }
        fn version_policy(&self) -> otabridge_codecs::version::Policy {
            self.0.version_policy()
        }
        fn read_version(
            &self,
        ) -> super::super::BoxFuture<'_, Result<String, super::super::ChildError>> {
            self.0.read_version()
        }
        fn deliver<'a>(
            &'a self,
            p: &'a super::super::Package,
            from: u64,
            progress: super::super::Progress<'a>,
        ) -> super::super::BoxFuture<'a, Result<(), super::super::ChildError>> {
            self.0.deliver(p, from, progress)
        }
        fn activate<'a>(
            &'a self,
            p: &'a super::super::Package,
        ) -> super::super::BoxFuture<'a, Result<(), super::super::ChildError>> {
            self.0.activate(p)
        }
        fn bus(&self) -> Option<String> {
            (!self.1.is_empty()).then(|| self.1.to_owned())
        }
    }

    /// Turns are FIFO per bus, record their holder, and leave other buses
    /// and bus-less children alone.
    #[tokio::test(start_paused = true)]
    async fn turns_are_fifo_per_bus_and_name_their_holder() {
        let kids: Vec<Arc<dyn Child>> = vec![
            Arc::new(OnBus(MemoryChild::new("a", "1"), "bus-1")),
            Arc::new(OnBus(MemoryChild::new("b", "1"), "bus-1")),
            Arc::new(OnBus(MemoryChild::new("c", "1"), "bus-2")),
            Arc::new(OnBus(MemoryChild::new("d", "1"), "")),
        ];
        let buses = Buses::new(&kids);
        let (a, b, c, d) = (&*kids[0], &*kids[1], &*kids[2], &*kids[3]);
        assert_eq!(buses.bus_of(a), Some("bus-1"));
        assert!(buses.turn(d, Purpose::Announce).await.is_none());
        let held = buses.turn(a, Purpose::Deliver).await.unwrap();
        assert_eq!(
            buses.holder(b),
            Some(Holder {
                device_id: "a".into(),
                purpose: Purpose::Deliver
            })
        );
        // Another bus is free.
        drop(buses.turn(c, Purpose::Announce).await.unwrap());
        // b queues first, then a again: b goes first.
        let order = Arc::new(Mutex::new(Vec::new()));
        let waiter = |who: &'static str, child: Arc<dyn Child>| {
            let (buses, order) = (buses.clone(), order.clone());
            tokio::spawn(async move {
                let _t = buses.turn(&*child, Purpose::VersionQuery).await;
                order.lock().unwrap().push(who);
                tokio::time::sleep(Duration::from_secs(1)).await;
            })
        };
        let wb = waiter("b", kids[1].clone());
        tokio::time::sleep(Duration::from_millis(10)).await;
        let wa = waiter("a", kids[0].clone());
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(order.lock().unwrap().is_empty(), "the bus is held");
        drop(held);
        wb.await.unwrap();
        wa.await.unwrap();
        assert_eq!(*order.lock().unwrap(), ["b", "a"]);
        assert_eq!(buses.holder(a), None);
    }
}
