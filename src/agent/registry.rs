//! The one registry of the jobs running on this agent, from their pull to their
//! container's end: by id and attempt, with how to stop each. The disk watchdog
//! picks the job to stop from it; scale-in protection follows its count.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::watch;

use crate::job::cancel::Cancel;

/// The jobs running now, by id and attempt, and how to stop each.
pub(crate) struct Watched {
    jobs: Mutex<HashMap<(String, u32), Cancel>>,
    /// How many: what `autoscaling.protect_busy` follows.
    count: watch::Sender<usize>,
}

impl Default for Watched {
    fn default() -> Self {
        Watched {
            jobs: Mutex::default(),
            count: watch::channel(0).0,
        }
    }
}

/// A running job under watch, until dropped.
pub(crate) struct Held<'a> {
    watched: &'a Watched,
    key: (String, u32),
}

impl Watched {
    /// Watches the job's attempt until the returned value is dropped.
    pub fn hold(&self, job_id: &str, attempt: u32, cancel: &Cancel) -> Held<'_> {
        let key = (job_id.to_owned(), attempt);
        let mut jobs = self.lock();
        jobs.insert(key.clone(), cancel.clone());
        self.count.send_replace(jobs.len());
        Held { watched: self, key }
    }

    /// Watches how many jobs run.
    pub fn count(&self) -> watch::Receiver<usize> {
        self.count.subscribe()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, u32), Cancel>> {
        self.jobs.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn cancel_of(&self, key: &(String, u32)) -> Option<Cancel> {
        self.lock().get(key).cloned()
    }

    pub(super) fn holds(&self, key: &(String, u32)) -> bool {
        self.lock().contains_key(key)
    }

    pub(super) fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        let mut jobs = self.watched.lock();
        jobs.remove(&self.key);
        self.watched.count.send_replace(jobs.len());
    }
}
