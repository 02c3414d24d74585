//! Delays between connection attempts: doubling, capped, with jitter.

use std::time::Duration;

use rand::Rng;

/// Exponential backoff from `min` doubling to `max`. Each delay is drawn
/// between half and all of the current step, so that agents that lost the
/// scheduler together do not all come back at the same instant.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    min: Duration,
    max: Duration,
    step: Duration,
}

impl Backoff {
    pub(crate) fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            min,
            max,
            step: min,
        }
    }

    /// The longest delay this backoff gives.
    pub(crate) fn max(&self) -> Duration {
        self.max
    }

    /// The delay before the next attempt; the step doubles for the one after.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let step = self.step;
        self.step = step.checked_mul(2).unwrap_or(self.max).min(self.max);
        step.mul_f64(rand::thread_rng().gen_range(0.5..=1.0))
    }

    /// Back to the shortest delay, after a connection that worked.
    pub(crate) fn reset(&mut self) {
        self.step = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_to_the_cap_with_jitter_and_resets() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let steps_ms = [100, 200, 400, 800, 1600, 3200, 5000, 5000];
        for step in steps_ms {
            let delay = backoff.next_delay();
            let step = Duration::from_millis(step);
            assert!(delay >= step / 2 && delay <= step, "{delay:?} vs {step:?}");
        }
        backoff.reset();
        assert!(backoff.next_delay() <= Duration::from_millis(100));
        assert_eq!(backoff.max(), Duration::from_secs(5));
    }
}
