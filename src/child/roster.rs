//! The children the daemon drives, shared by the upgrade engine and the
//! dispatcher: the configured ones from the start, and LwM2M clients
//! onboarded while it runs (issue 13 item 3) added and removed on the way.
//! Cheap to clone; clones share one list.

use std::collections::HashMap;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use super::Child;

#[derive(Debug, Default)]
struct Inner {
    by_id: HashMap<String, Arc<dyn Child>>,
    /// Configuration order, then the order they were added in.
    order: Vec<String>,
}

/// The children by device id, in a stable order (see the module doc).
#[derive(Debug, Clone, Default)]
pub struct Roster {
    inner: Arc<RwLock<Inner>>,
}

impl Roster {
    /// A roster of `children`, in their order.
    pub fn new(children: &[Arc<dyn Child>]) -> Self {
        let r = Roster::default();
        for c in children {
            r.add(c.clone());
        }
        r
    }

    fn read(&self) -> RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|p| p.into_inner())
    }

    /// The child with this device id.
    pub fn get(&self, device_id: &str) -> Option<Arc<dyn Child>> {
        self.read().by_id.get(device_id).cloned()
    }

    /// Whether a child has this device id.
    pub fn contains(&self, device_id: &str) -> bool {
        self.read().by_id.contains_key(device_id)
    }

    /// Every child, in order.
    pub fn all(&self) -> Vec<Arc<dyn Child>> {
        let r = self.read();
        r.order
            .iter()
            .filter_map(|id| r.by_id.get(id).cloned())
            .collect()
    }

    /// How many children there are.
    pub fn len(&self) -> usize {
        self.read().by_id.len()
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds `child`; `false` (and nothing changes) when its device id is
    /// taken.
    pub fn add(&self, child: Arc<dyn Child>) -> bool {
        let mut w = self.write();
        let id = child.device_id().to_owned();
        if w.by_id.contains_key(&id) {
            return false;
        }
        w.order.push(id.clone());
        w.by_id.insert(id, child);
        true
    }

    /// Removes the child with this device id, returning it.
    pub fn remove(&self, device_id: &str) -> Option<Arc<dyn Child>> {
        let mut w = self.write();
        let c = w.by_id.remove(device_id)?;
        w.order.retain(|id| id != device_id);
        Some(c)
    }
}

#[cfg(all(test, feature = "sim"))]
mod tests {
    use super::*;
    use crate::child::memory::MemoryChild;

    #[test]
    fn added_and_removed_in_order() {
        let a: Arc<dyn Child> = Arc::new(MemoryChild::new("a", "1"));
        let b: Arc<dyn Child> = Arc::new(MemoryChild::new("b", "1"));
        let r = Roster::new(std::slice::from_ref(&a));
        let shared = r.clone();
        assert!(shared.add(b.clone()));
        assert!(!r.add(Arc::new(MemoryChild::new("b", "2"))));
        let ids = |r: &Roster| {
            r.all()
                .iter()
                .map(|c| c.device_id().to_owned())
                .collect::<Vec<_>>()
        };
        assert_eq!(ids(&r), ["a", "b"]);
        assert!(r.remove("a").is_some());
        assert!(r.remove("a").is_none());
        assert_eq!(ids(&shared), ["b"]);
        assert!(shared.contains("b") && !shared.contains("a"));
    }
}
