//! The agent's job slots (`agent.slots`): a slot is one job's container, taken
//! before its message is received and given back when the container is gone. Each
//! has a number, 0 to slots − 1, so the live metrics of running jobs carry a
//! bounded label instead of a job id.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

#[derive(Clone)]
pub(crate) struct Slots {
    permits: Arc<Semaphore>,
    /// The numbers not taken; a slot returns its own when dropped.
    free: Arc<Mutex<BTreeSet<usize>>>,
}

/// A taken slot, until dropped.
pub(crate) struct Slot {
    pub number: usize,
    free: Arc<Mutex<BTreeSet<usize>>>,
    // Dropped after the number is back (fields drop in order), so a waiter woken
    // by the permit finds a number free.
    _permit: OwnedSemaphorePermit,
}

impl Slots {
    pub fn new(count: usize) -> Self {
        Slots {
            permits: Arc::new(Semaphore::new(count)),
            free: Arc::new(Mutex::new((0..count).collect())),
        }
    }

    pub fn available(&self) -> usize {
        self.permits.available_permits()
    }

    /// A free slot, the lowest number first; `None` when all are taken.
    pub fn try_take(&self) -> Option<Slot> {
        let permit = Arc::clone(&self.permits).try_acquire_owned().ok()?;
        let number = self
            .free
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop_first()
            .expect("a permit means a number is free");
        Some(Slot {
            number,
            free: Arc::clone(&self.free),
            _permit: permit,
        })
    }

    /// Completes once a slot is free (without taking it).
    pub async fn freed(&self) {
        if let Ok(permit) = Arc::clone(&self.permits).acquire_owned().await {
            drop(permit);
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.free
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(self.number);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn numbers_are_unique_while_taken_and_come_back() {
        let slots = Slots::new(3);
        let a = slots.try_take().unwrap();
        let b = slots.try_take().unwrap();
        let c = slots.try_take().unwrap();
        assert_eq!((a.number, b.number, c.number), (0, 1, 2));
        assert!(slots.try_take().is_none());
        drop(b);
        slots.freed().await;
        assert_eq!(slots.try_take().unwrap().number, 1);
    }
}
