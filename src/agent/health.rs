//! How the agent is: whether Docker and the queue answer, which systemd's watchdog
//! and the metrics' probes read.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::config::Config;
use crate::host::stop::Stop;
use crate::host::systemd;

/// Whether Docker and the queue answered at their last use. Starts healthy: the
/// agent is only running once bootstrap reached both.
#[derive(Clone)]
pub struct Health(Arc<[AtomicBool; 2]>);

impl Default for Health {
    fn default() -> Self {
        Health(Arc::new([AtomicBool::new(true), AtomicBool::new(true)]))
    }
}

impl Health {
    pub fn set_docker(&self, ok: bool) {
        self.0[0].store(ok, Ordering::Relaxed);
    }

    pub fn set_queue(&self, ok: bool) {
        self.0[1].store(ok, Ordering::Relaxed);
    }

    pub fn docker_up(&self) -> bool {
        self.0[0].load(Ordering::Relaxed)
    }

    pub fn queue_up(&self) -> bool {
        self.0[1].load(Ordering::Relaxed)
    }

    pub fn is_healthy(&self) -> bool {
        self.docker_up() && self.queue_up()
    }

    /// Pets systemd's watchdog every `period` while healthy, so a wedged agent is
    /// restarted. Its own loop, not the receive loop's: a host whose slots are all
    /// busy for hours is healthy too.
    pub async fn pet_while_healthy(&self, period: Duration) -> Infallible {
        loop {
            if self.is_healthy() {
                systemd::watchdog();
            }
            tokio::time::sleep(period).await;
        }
    }
}

/// What `/metrics` and the probes read at scrape time.
pub fn metrics_state(
    config: &Config,
    healthy: &Health,
    stop: &Stop,
) -> Arc<dyn Fn() -> crate::agent::metrics::State + Send + Sync> {
    let (healthy, stop, slots) = (healthy.clone(), stop.clone(), config.agent.slots);
    Arc::new(move || crate::agent::metrics::State {
        slots,
        docker_up: healthy.docker_up(),
        queue_up: healthy.queue_up(),
        draining: stop.is_draining(),
    })
}
