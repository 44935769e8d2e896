//! Exponential backoff with jitter, for the agent's own retry loops around outages
//! that outlast the SDK's retries (Docker restarting, the queue unreachable).

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    current: Duration,
    seed: u64,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x9e37_79b9_7f4a_7c15)
            | 1;
        Backoff {
            min,
            max,
            current: min,
            seed,
        }
    }

    /// The next pause: the current step with up to 25% jitter either way, so agents
    /// that lost the same dependency do not come back in lockstep. Doubles the step.
    pub fn next_delay(&mut self) -> Duration {
        // xorshift64: jitter needs spread, not cryptographic randomness.
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        let unit = (self.seed % 1000) as f64 / 1000.0; // 0.0..1.0
        let delay = self.current.mul_f64(0.75 + unit * 0.5);
        self.current = (self.current * 2).min(self.max);
        delay
    }

    /// Whether the last call succeeded after failures (so recovery is logged once).
    pub fn reset(&mut self) -> bool {
        let was_failing = self.current != self.min;
        self.current = self.min;
        was_failing
    }
}

/// How long [`retry`] keeps trying.
#[derive(Debug, Clone, Copy)]
pub enum Budget {
    /// At most this many calls.
    Attempts(u32),
    /// Until the next pause would end past this.
    Until(tokio::time::Instant),
}

/// Calls `call` until it succeeds, `worth_retry` calls an error final, or the
/// budget is spent, pausing with `backoff` in between. `worth_retry` also sees
/// the coming pause, to say why it waits.
pub async fn retry<T, E, F, Fut>(
    mut backoff: Backoff,
    budget: Budget,
    mut call: F,
    mut worth_retry: impl FnMut(&E, Duration) -> bool,
) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let mut calls = 0;
    loop {
        calls += 1;
        let error = match call().await {
            Ok(value) => return Ok(value),
            Err(error) => error,
        };
        let delay = backoff.next_delay();
        let spent = match budget {
            Budget::Attempts(attempts) => calls >= attempts,
            Budget::Until(deadline) => tokio::time::Instant::now() + delay > deadline,
        };
        if spent || !worth_retry(&error, delay) {
            return Err(error);
        }
        tokio::time::sleep(delay).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_to_the_cap_with_bounded_jitter() {
        let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(8));
        let expected_steps = [1.0, 2.0, 4.0, 8.0, 8.0];
        for step in expected_steps {
            let d = backoff.next_delay().as_secs_f64();
            assert!(d >= step * 0.75 && d <= step * 1.25, "{d} for step {step}");
        }
        assert!(backoff.reset());
        assert!(!backoff.reset());
        let d = backoff.next_delay().as_secs_f64();
        assert!((0.75..=1.25).contains(&d));
    }

    #[tokio::test(start_paused = true)]
    async fn retry_stops_at_the_budget_or_a_final_error() {
        let pace = || Backoff::new(Duration::from_millis(500), Duration::from_secs(10));
        let mut calls = 0;
        let failed: Result<(), u32> = retry(
            pace(),
            Budget::Attempts(3),
            || {
                calls += 1;
                std::future::ready(Err(calls))
            },
            |_, _| true,
        )
        .await;
        assert_eq!(failed, Err(3));

        let mut calls = 0;
        let final_error: Result<(), &str> = retry(
            pace(),
            Budget::Attempts(10),
            || {
                calls += 1;
                std::future::ready(Err(if calls == 2 { "final" } else { "again" }))
            },
            |e, _| *e == "again",
        )
        .await;
        assert_eq!((final_error, calls), (Err("final"), 2));

        let started = tokio::time::Instant::now();
        let deadline = started + Duration::from_secs(5);
        let mut calls = 0;
        let _: Result<(), ()> = retry(
            pace(),
            Budget::Until(deadline),
            || {
                calls += 1;
                std::future::ready(Err(()))
            },
            |_, _| true,
        )
        .await;
        assert!(
            tokio::time::Instant::now() <= deadline,
            "never sleeps past the deadline"
        );
        assert!(calls >= 3, "{calls} calls in 5 s from 500 ms steps");
    }
}
