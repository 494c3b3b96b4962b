//! Notices a topic deleted (or shrunk) out of band between two reconciles.
//!
//! A stack is reconciled on every change of itself or of what it owns, and
//! otherwise only every [`RESYNC`](crate::reconcile::RESYNC) (600 s): a topic
//! deleted with Kafka's own tools would stay missing that long, and the
//! services that produce to it would fail meanwhile. Kafka has no watch, so
//! [`TopicWatch`] remembers what reconciles ensured on each bootstrap value
//! (topic and partitions), and the periodic check
//! ([`ClusterExternalState::check_topics_every`](super::cluster::ClusterExternalState::check_topics_every))
//! compares it with the metadata of those topics (one request per topic) every
//! [`TOPIC_CHECK_INTERVAL`]. A drift wakes the controller, whose reconciles
//! recreate the topic; the check itself never writes to Kafka or to
//! Kubernetes, so a paused or deleted stack is left alone and a steady state
//! writes nothing.
//!
//! A drifted topic is reported once: again only after a reconcile ensured it
//! anew (a paused stack's missing topic does not wake the controller every
//! interval). What no reconcile ensured for [`MAX_IDLE`] is forgotten
//! (its stack is gone, paused, or uses other brokers), and so are the topics
//! of a deleted stack before its cleanup deletes them.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use commerce_api::crd::stack::TopicStatus;

use super::admin_cache::MAX_IDLE;

/// How often the topics are compared with what reconciles ensured: a topic
/// deleted out of band is back within about this long plus one reconcile,
/// well inside a minute, for one small metadata request per watched topic.
pub const TOPIC_CHECK_INTERVAL: Duration = Duration::from_secs(30);

/// A topic a reconcile ensured.
#[derive(Debug, Clone, Copy)]
struct Watched {
    /// Partitions it had then; fewer now is a drift too.
    partitions: i32,
    /// When a reconcile last ensured it.
    ensured: Instant,
    /// Whether its drift was reported since.
    reported: bool,
}

/// What reconciles ensured, by bootstrap value and topic name.
#[derive(Debug, Default)]
pub struct TopicWatch {
    expected: Mutex<HashMap<String, HashMap<String, Watched>>>,
}

impl TopicWatch {
    /// Records that a reconcile ensured `topics` on `brokers` at `now`.
    pub fn ensured(&self, brokers: &str, topics: &[TopicStatus], now: Instant) {
        let mut expected = self.lock();
        let watched = expected.entry(brokers.to_owned()).or_default();
        for topic in topics {
            watched.insert(
                topic.name.clone(),
                Watched { partitions: topic.partitions, ensured: now, reported: false },
            );
        }
    }

    /// Forgets `names` on `brokers` (they are about to be deleted on
    /// purpose).
    pub fn forget(&self, brokers: &str, names: &[&str]) {
        let mut expected = self.lock();
        if let Some(watched) = expected.get_mut(brokers) {
            for name in names {
                watched.remove(*name);
            }
            if watched.is_empty() {
                expected.remove(brokers);
            }
        }
    }

    /// The topics to check, by bootstrap value (sorted), after forgetting
    /// what no reconcile ensured for [`MAX_IDLE`] before `now`: those whose
    /// drift has not been reported yet.
    pub fn to_check(&self, now: Instant) -> Vec<(String, Vec<String>)> {
        let mut expected = self.lock();
        for watched in expected.values_mut() {
            watched.retain(|_, topic| now.saturating_duration_since(topic.ensured) <= MAX_IDLE);
        }
        expected.retain(|_, watched| !watched.is_empty());
        let mut to_check: Vec<(String, Vec<String>)> = expected
            .iter()
            .map(|(brokers, watched)| {
                let mut names: Vec<String> = watched
                    .iter()
                    .filter(|(_, topic)| !topic.reported)
                    .map(|(name, _)| name.clone())
                    .collect();
                names.sort();
                (brokers.clone(), names)
            })
            .filter(|(_, names)| !names.is_empty())
            .collect();
        to_check.sort();
        to_check
    }

    /// The topics on `brokers` that are missing from `actual` (topic ->
    /// partitions, as the metadata shows them) or have fewer partitions
    /// than ensured, and were not reported yet; marks them reported.
    pub fn drifted(&self, brokers: &str, actual: &HashMap<String, i32>) -> Vec<String> {
        let mut expected = self.lock();
        let Some(watched) = expected.get_mut(brokers) else { return Vec::new() };
        let mut drifted: Vec<String> = watched
            .iter_mut()
            .filter(|(name, topic)| {
                !topic.reported && actual.get(*name).is_none_or(|partitions| *partitions < topic.partitions)
            })
            .map(|(name, topic)| {
                topic.reported = true;
                name.clone()
            })
            .collect();
        drifted.sort();
        drifted
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, HashMap<String, Watched>>> {
        self.expected.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topics(names: &[(&str, i32)]) -> Vec<TopicStatus> {
        names
            .iter()
            .map(|(name, partitions)| TopicStatus { name: (*name).into(), partitions: *partitions })
            .collect()
    }

    fn actual(names: &[(&str, i32)]) -> HashMap<String, i32> {
        names.iter().map(|(name, partitions)| ((*name).to_owned(), *partitions)).collect()
    }

    #[test]
    fn a_deleted_or_shrunk_topic_is_reported_once_until_a_reconcile_ensures_it_again() {
        let watch = TopicWatch::default();
        let now = Instant::now();
        watch.ensured("kafka:9092", &topics(&[("a", 3), ("b", 1), ("c", 2)]), now);
        assert!(watch.drifted("kafka:9092", &actual(&[("a", 3), ("b", 1), ("c", 2)])).is_empty());
        let drift = actual(&[("a", 3), ("c", 1)]);
        assert_eq!(watch.drifted("kafka:9092", &drift), ["b", "c"]);
        assert!(watch.drifted("kafka:9092", &drift).is_empty(), "reported once");
        watch.ensured("kafka:9092", &topics(&[("b", 1)]), now);
        assert_eq!(watch.drifted("kafka:9092", &drift), ["b"], "armed again by the reconcile");
        assert!(watch.drifted("other:9092", &drift).is_empty(), "nothing ensured there");
    }

    #[test]
    fn topics_about_to_be_deleted_and_topics_no_reconcile_ensured_for_long_are_forgotten() {
        let watch = TopicWatch::default();
        let start = Instant::now();
        watch.ensured("kafka:9092", &topics(&[("a", 1), ("b", 1)]), start);
        watch.ensured("old:9092", &topics(&[("x", 1)]), start);
        watch.forget("kafka:9092", &["a"]);
        assert_eq!(watch.drifted("kafka:9092", &actual(&[])), ["b"]);
        watch.ensured("kafka:9092", &topics(&[("b", 1), ("c", 1)]), start + MAX_IDLE);
        let later = start + MAX_IDLE + Duration::from_secs(1);
        assert_eq!(watch.to_check(later), [("kafka:9092".to_owned(), vec!["b".to_owned(), "c".to_owned()])]);
        assert_eq!(watch.drifted("kafka:9092", &actual(&[("b", 1)])), ["c"]);
        assert_eq!(
            watch.to_check(later),
            [("kafka:9092".to_owned(), vec!["b".to_owned()])],
            "a reported topic is not looked up again until a reconcile ensures it"
        );
        watch.forget("kafka:9092", &["b", "c"]);
        assert!(watch.to_check(start + MAX_IDLE).is_empty());
    }
}
