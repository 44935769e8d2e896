//! The receive loop: while the agent is not draining, receive as many messages as
//! there are free slots, but only while a job could start (Docker answers, the disk
//! has room), and give each message a task of its own ([`Agent::deliver`]). When
//! the drain begins, the loop hands its tasks to [`Agent::drain`].

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::agent::Agent;
use crate::agent::drain::{InFlight, reap};
use crate::agent::slots::{Slot, Slots};
use crate::aws::sqs::{Received, SqsError};
use crate::backoff::Backoff;
use crate::config::RebalancePolicy;
use crate::host::stop::{Preemption, Stop, StopReason};
use crate::host::systemd;

/// The longest pause of the loop's backoffs.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// After sending back a job that would not fit before the rebalance horizon:
/// the next receive might bring it straight back here.
const DECLINE_PAUSE: Duration = Duration::from_secs(5);

/// Whether the host can take a job now.
enum Gate {
    Open,
    /// Not now: wait this long, then ask again.
    Closed(Duration),
}

/// The loop's memory between rounds.
struct Pacing {
    docker: Backoff,
    queue: Backoff,
    disk: Backoff,
    disk_check_failed: bool,
    idle_since: Instant,
}

impl Pacing {
    fn new() -> Self {
        let backoff = || Backoff::new(Duration::from_secs(1), MAX_BACKOFF);
        Pacing {
            docker: backoff(),
            queue: backoff(),
            disk: backoff(),
            disk_check_failed: false,
            idle_since: Instant::now(),
        }
    }
}

impl Agent {
    /// The receive loop, then the drain, with the disk watchdog beside them.
    pub(super) async fn serve(self: &Arc<Self>, stop: &Stop) {
        let done = CancellationToken::new();
        let serving = async {
            tokio::select! {
                () = self.receive_then_drain(stop) => {}
                never = self.watch_disk() => match never {},
            }
            done.cancel();
        };
        let protecting = async {
            if let Some(protection) = &self.protection {
                crate::agent::protection::keep(protection, self.watched.count(), done.clone())
                    .await;
            }
        };
        tokio::join!(serving, protecting);
    }

    async fn receive_then_drain(self: &Arc<Self>, stop: &Stop) {
        // What the drain tells running jobs; it, not the first signal, stops them,
        // so jobs get `drain.stop_timeout_secs` to finish.
        let preemption = Preemption::new();
        // Every task, from receipt to the message's fate: what the drain waits for.
        let mut jobs: JoinSet<()> = JoinSet::new();
        // A slot is a container, so a slot frees when its container is gone, while
        // the result is still being recorded: the next job's receive, claim and
        // start overlap the last one's uploads instead of queueing behind them.
        let slots = Slots::new(self.config.agent.slots);
        let mut pacing = Pacing::new();
        let mut in_flight = None;
        while !stop.is_draining() {
            while let Some(done) = jobs.try_join_next() {
                reap(done);
                pacing.idle_since = Instant::now();
            }
            if slots.available() == 0 {
                if !wait_for_slot(&mut jobs, &slots, &mut pacing, stop).await {
                    break;
                }
                continue;
            }
            if self.idle_too_long(&jobs, &pacing, stop) || past_horizon(stop) {
                break;
            }
            if let Gate::Closed(delay) = self.gate(&mut pacing).await {
                tokio::select! {
                    _ = tokio::time::sleep(delay) => continue,
                    _ = stop.draining().cancelled() => break,
                }
            }
            // At most 10: one receive brings no more.
            let free: Vec<Slot> = std::iter::from_fn(|| slots.try_take()).take(10).collect();
            let mut receive: InFlight<'_> = Box::pin(self.queue.receive(
                free.len(),
                self.config.queue.wait,
                self.config.queue.visibility_timeout,
            ));
            let received = tokio::select! {
                received = &mut receive => received,
                // Not dropped: SQS may already have handed this long poll a
                // message, which would stay hidden for the visibility timeout.
                // The drain finishes it and hands back what it brings.
                () = draining_or_horizon(stop) => {
                    past_horizon(stop);
                    in_flight = Some(receive);
                    break;
                }
            };
            let messages = match self.received(received, &mut pacing) {
                Ok(messages) => messages,
                Err(error) => {
                    let delay = pacing.queue.next_delay();
                    tracing::warn!(%error, retry_in_ms = delay.as_millis() as u64, "Could not receive; backing off.");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => continue,
                        _ = stop.draining().cancelled() => break,
                    }
                }
            };
            if !messages.is_empty() {
                pacing.idle_since = Instant::now();
            }
            let declined = self
                .dispatch(messages, free, &mut jobs, &preemption, stop)
                .await;
            if declined {
                // Other hosts get a moment at what this one left.
                tokio::select! {
                    _ = tokio::time::sleep(DECLINE_PAUSE) => {}
                    _ = stop.draining().cancelled() => break,
                }
            }
        }
        self.drain(jobs, &preemption, stop, in_flight).await;
    }

    /// Gives each message a slot and a task, but under a rebalance horizon sends
    /// back those that would not end before it. True when it sent one back.
    async fn dispatch(
        self: &Arc<Self>,
        messages: Vec<Received>,
        mut free: Vec<Slot>,
        jobs: &mut JoinSet<()>,
        preemption: &Preemption,
        stop: &Stop,
    ) -> bool {
        let mut declined = false;
        for message in messages {
            let slot = free.pop().expect("SQS returns at most as many as asked");
            if let Some(horizon) = stop.horizon()
                && !self.fits(&message, horizon)
            {
                self.decline(message).await;
                declined = true;
                continue;
            }
            self.spawn_delivery(jobs, message, slot, preemption);
        }
        declined
    }

    /// Begins the idle drain when no job has run for `agent.idle_shutdown_secs`.
    fn idle_too_long(&self, jobs: &JoinSet<()>, pacing: &Pacing, stop: &Stop) -> bool {
        let Some(limit) = self.config.agent.idle_shutdown else {
            return false;
        };
        if !jobs.is_empty() || pacing.idle_since.elapsed() < limit {
            return false;
        }
        stop.begin(StopReason::Idle {
            after_secs: limit.as_secs(),
        });
        true
    }

    /// Receives only while a job could start, so the agent never holds a message it
    /// cannot run: Docker must answer (then what earlier cleanups left is swept)
    /// and the disk must have room.
    async fn gate(&self, pacing: &mut Pacing) -> Gate {
        if let Err(error) = self.docker.ping().await {
            self.healthy.set_docker(false);
            let delay = pacing.docker.next_delay();
            tracing::warn!(%error, retry_in_ms = delay.as_millis() as u64, "Docker is unreachable; not receiving.");
            systemd::status("Docker unreachable; not receiving");
            return Gate::Closed(delay);
        }
        self.healthy.set_docker(true);
        if pacing.docker.reset() {
            tracing::info!("Docker is back; receiving again.");
            systemd::status("serving the queue");
        }
        self.sweeper.sweep_leftovers().await;
        let Some(disk) = &self.disk else {
            return Gate::Open;
        };
        match disk.ensure_room().await {
            Ok(room) => {
                pacing.disk_check_failed = false;
                self.metrics.disk(&room);
                if let Some(low) = room.low {
                    let delay = pacing.disk.next_delay();
                    tracing::warn!(path = %low.path.display(), free_mb = low.free_mb, min_free_mb = low.min_free_mb, retry_in_ms = delay.as_millis() as u64, "Disk space is low; not receiving.");
                    systemd::status("disk space low; not receiving");
                    return Gate::Closed(delay);
                }
                if let Some(low) = disk.inodes_low() {
                    let delay = pacing.disk.next_delay();
                    tracing::warn!(path = %low.path.display(), free_inodes = low.free, inodes = low.total, retry_in_ms = delay.as_millis() as u64, "Free inodes are low; not receiving.");
                    systemd::status("inodes low; not receiving");
                    return Gate::Closed(delay);
                }
                if pacing.disk.reset() {
                    tracing::info!(
                        free_mb = room.free_mb,
                        "Disk space is back; receiving again."
                    );
                    systemd::status("serving the queue");
                }
            }
            // Not a reason to stop: the check itself is what failed.
            Err(error) if !pacing.disk_check_failed => {
                pacing.disk_check_failed = true;
                tracing::warn!(%error, "Cannot check the free disk space; receiving anyway.");
            }
            Err(_) => {}
        }
        Gate::Open
    }

    /// Counts a receive and notes whether the queue answered.
    fn received(
        &self,
        received: Result<Vec<Received>, SqsError>,
        pacing: &mut Pacing,
    ) -> Result<Vec<Received>, SqsError> {
        match &received {
            Ok(messages) => {
                self.metrics.received(messages.len());
                self.healthy.set_queue(true);
                if pacing.queue.reset() {
                    tracing::info!("The queue answers again.");
                }
            }
            Err(_) => {
                self.metrics.receive_failed();
                self.healthy.set_queue(false);
            }
        }
        received
    }

    /// One message's task, in the span that names it.
    fn spawn_delivery(
        self: &Arc<Self>,
        jobs: &mut JoinSet<()>,
        message: Received,
        slot: Slot,
        preemption: &Preemption,
    ) {
        let span = tracing::info_span!(
            "job",
            job_id = tracing::field::Empty,
            sqs_message_id = %message.message_id,
            attempt = message.receive_count,
        );
        if let Some(sent) = message.sent_at_ms {
            let waited_ms = chrono::Utc::now().timestamp_millis() - sent;
            self.metrics
                .queue_waited(Duration::from_millis(waited_ms.max(0) as u64));
        }
        let agent = Arc::clone(self);
        let preemption = preemption.clone();
        jobs.spawn(async move { agent.deliver(message, slot, &preemption).await }.instrument(span));
    }
}

/// Begins the drain once the rebalance horizon has passed (`admit-if-fits`):
/// from then on no job fits. True when it has.
fn past_horizon(stop: &Stop) -> bool {
    let Some(horizon) = stop.horizon() else {
        return false;
    };
    if Instant::now() < horizon {
        return false;
    }
    stop.begin(StopReason::Rebalance {
        policy: RebalancePolicy::AdmitIfFits,
    });
    true
}

/// Resolves when the drain begins or the rebalance horizon (as it stood when
/// called) passes.
async fn draining_or_horizon(stop: &Stop) {
    let horizon = async {
        match stop.horizon() {
            Some(at) => tokio::time::sleep_until(at).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        () = stop.draining().cancelled() => {}
        () = horizon => {}
    }
}

/// With every slot taken: waits until a job's task ends or its container is gone
/// (its task still recording). False when the drain began instead.
async fn wait_for_slot(
    jobs: &mut JoinSet<()>,
    slots: &Slots,
    pacing: &mut Pacing,
    stop: &Stop,
) -> bool {
    tokio::select! {
        Some(done) = jobs.join_next() => {
            reap(done);
            pacing.idle_since = Instant::now();
        }
        () = slots.freed() => {}
        _ = stop.draining().cancelled() => return false,
    }
    true
}
