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
}
