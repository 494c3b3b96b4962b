//! Readiness: named dependency checks that `/readyz` reports.
//!
//! A service is ready when everything it needs for its *own* work is
//! reachable (its database, its broker), never because a peer answers. Each
//! component (database pool, producer, consumer) registers a check and flips
//! it as its connection comes and goes; the admin server renders the set.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

/// Shared set of readiness checks. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Readiness {
    checks: Arc<RwLock<BTreeMap<String, CheckState>>>,
}

/// The last known state of one dependency.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckState {
    Ready,
    /// Not ready, with the reason a person reading `/readyz` needs.
    NotReady(String),
}

/// A handle to one named check, held by the component that owns it.
#[derive(Debug, Clone)]
pub struct Check {
    name: String,
    readiness: Readiness,
}

impl Readiness {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a dependency, not ready until told otherwise.
    pub fn register(&self, name: impl Into<String>) -> Check {
        let name = name.into();
        self.write().insert(name.clone(), CheckState::NotReady("starting".to_owned()));
        Check { name, readiness: self.clone() }
    }

    /// True when every registered check is ready (and at least one exists, so
    /// that a service that registered nothing yet is not mistaken for ready).
    pub fn is_ready(&self) -> bool {
        let checks = self.read();
        !checks.is_empty() && checks.values().all(|state| *state == CheckState::Ready)
    }

    /// A snapshot of every check, in name order.
    pub fn snapshot(&self) -> Vec<(String, CheckState)> {
        self.read().iter().map(|(name, state)| (name.clone(), state.clone())).collect()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, CheckState>> {
        // A panic while holding the lock leaves plain data behind; keep serving.
        self.checks.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, CheckState>> {
        self.checks.write().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Check {
    pub fn set_ready(&self) {
        self.set(CheckState::Ready);
    }

    pub fn set_not_ready(&self, reason: impl Into<String>) {
        self.set(CheckState::NotReady(reason.into()));
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    fn set(&self, state: CheckState) {
        let mut checks = self.readiness.write();
        if checks.get(&self.name) != Some(&state) {
            match &state {
                CheckState::Ready => tracing::info!(check = %self.name, "dependency ready"),
                CheckState::NotReady(reason) => {
                    tracing::warn!(check = %self.name, %reason, "dependency not ready")
                }
            }
        }
        checks.insert(self.name.clone(), state);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_when_every_check_is_ready() {
        let readiness = Readiness::new();
        assert!(!readiness.is_ready(), "no checks registered must not count as ready");
        let db = readiness.register("database");
        let kafka = readiness.register("kafka");
        assert!(!readiness.is_ready());
        db.set_ready();
        assert!(!readiness.is_ready());
        kafka.set_ready();
        assert!(readiness.is_ready());
        db.set_not_ready("connection refused");
        assert!(!readiness.is_ready());
        assert_eq!(
            readiness.snapshot()[0],
            ("database".to_owned(), CheckState::NotReady("connection refused".to_owned()))
        );
    }
}
