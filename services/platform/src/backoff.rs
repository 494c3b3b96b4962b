//! The one retry backoff of the workspace: capped exponential steps, and
//! jitter so that replicas that failed together do not retry together.
//!
//! - [`step`]: the capped exponential delay before retry number `attempt`,
//!   without jitter (for delays that are stored or asserted exactly);
//! - [`equal_jitter`]: half the step plus a random part of the other half:
//!   spread out, yet never sooner than half the step, which keeps a
//!   struggling dependency from being hammered;
//! - [`full_jitter`]: uniform in `[0, step]`, for retries of one call whose
//!   total time is bounded by a deadline;
//! - [`Backoff`]: a loop's failures counted, with equal jitter.

use std::time::Duration;

use rand::Rng as _;

/// The capped exponential step before retry number `attempt` (0-based):
/// `min(cap, base * 2^attempt)`.
pub fn step(base: Duration, cap: Duration, attempt: u32) -> Duration {
    // 2^16 x any sane base is past any sane cap; stop doubling there.
    base.saturating_mul(1u32 << attempt.min(16)).min(cap)
}

/// Half of `step` plus a random part of the other half.
pub fn equal_jitter(step: Duration) -> Duration {
    let half = step / 2;
    half + rand::rng().random_range(Duration::ZERO..=half)
}

/// Uniform in `[0, step]`.
pub fn full_jitter(step: Duration) -> Duration {
    rand::rng().random_range(Duration::ZERO..=step)
}

/// Capped exponential backoff with equal jitter, for a loop that retries
/// until it succeeds (database connects, the event relay and consumer, the
/// gateway's key refresh).
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempts: u32,
}

impl Backoff {
    pub const fn new(base: Duration, cap: Duration) -> Self {
        Self { base, cap, attempts: 0 }
    }

    /// The delay before the next retry; grows on every call.
    pub fn next_delay(&mut self) -> Duration {
        let delay = equal_jitter(step(self.base, self.cap, self.attempts));
        self.attempts = self.attempts.saturating_add(1);
        delay
    }

    /// Failures so far.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// Starts over after a success.
    pub fn reset(&mut self) {
        self.attempts = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_capped_and_keeps_half_of_each_step() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let steps = [100, 200, 400, 800, 1000, 1000, 1000];
        for step in steps {
            let delay = backoff.next_delay();
            let step = Duration::from_millis(step);
            assert!(delay >= step / 2 && delay <= step, "{delay:?} outside [{:?}, {step:?}]", step / 2);
        }
        assert_eq!(backoff.attempts(), 7);
        backoff.reset();
        assert!(backoff.next_delay() <= Duration::from_millis(100));
    }

    #[test]
    fn steps_double_up_to_the_cap_and_full_jitter_stays_under_them() {
        let (base, cap) = (Duration::from_secs(5), Duration::from_secs(300));
        let steps: Vec<u64> = (0..9).map(|attempt| step(base, cap, attempt).as_secs()).collect();
        assert_eq!(steps, [5, 10, 20, 40, 80, 160, 300, 300, 300]);
        assert_eq!(step(base, cap, u32::MAX), cap, "no overflow");
        for attempt in 0..20 {
            assert!(full_jitter(step(base, cap, attempt)) <= step(base, cap, attempt));
        }
    }
}
