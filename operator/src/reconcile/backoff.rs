//! Per-object retry delays: an object whose reconcile keeps failing waits
//! longer each time (5 s, 10 s, 20 s, ... up to 5 min), while other objects
//! retry on their own schedule. A success starts the object over.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

/// First retry delay: long enough for a brief apiserver hiccup to pass.
pub const BASE_DELAY: Duration = Duration::from_secs(5);
/// Longest retry delay: a broken stack is still retried every five minutes,
/// and a fix shows up within that time even without a spec change.
pub const MAX_DELAY: Duration = Duration::from_secs(300);

/// Consecutive failures per object (`namespace/name`).
#[derive(Debug, Default)]
pub struct Backoffs {
    failures: Mutex<HashMap<String, u32>>,
}

impl Backoffs {
    /// Records a failure of `key` and returns how long to wait before the
    /// next attempt.
    pub fn failed(&self, key: &str) -> Duration {
        let mut failures = self.failures.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let count = failures.entry(key.to_owned()).or_insert(0);
        *count = count.saturating_add(1);
        commerce_platform::backoff::step(BASE_DELAY, MAX_DELAY, count.saturating_sub(1))
    }

    /// Forgets the failures of `key` after a successful reconcile.
    pub fn succeeded(&self, key: &str) {
        self.failures.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_per_failure_up_to_the_cap() {
        let backoffs = Backoffs::default();
        let delays: Vec<u64> = (0..9).map(|_| backoffs.failed("shop/a").as_secs()).collect();
        assert_eq!(delays, [5, 10, 20, 40, 80, 160, 300, 300, 300]);
    }

    #[test]
    fn each_object_backs_off_on_its_own_and_a_success_starts_over() {
        let backoffs = Backoffs::default();
        backoffs.failed("shop/a");
        backoffs.failed("shop/a");
        assert_eq!(backoffs.failed("shop/b"), BASE_DELAY);
        backoffs.succeeded("shop/a");
        assert_eq!(backoffs.failed("shop/a"), BASE_DELAY);
    }
}
