//! The closing lines of a run, printed under goose's own tables: how many
//! requests were sent and how many failed, and which kinds of request the
//! failures were, so a run with errors never ends on a line that looks
//! clean.

use std::collections::BTreeMap;
use std::fmt;

use goose::metrics::GooseMetrics;

/// Requests of one kind (or of the whole run) and how many of them failed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub requests: usize,
    pub failures: usize,
}

/// What a finished run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// The gateway the load went to.
    pub host: String,
    /// Seconds the metrics cover.
    pub seconds: usize,
    /// Per kind of request, as goose names them (`GET /api/products/{id}`).
    pub requests: BTreeMap<String, Counts>,
    /// Transactions that returned an error (a failed request in them, or a
    /// buyer step that could not go on).
    pub failed_transactions: usize,
}

impl Summary {
    /// The summary of `metrics`, a run against `host`.
    pub fn new(host: &str, metrics: &GooseMetrics) -> Self {
        let requests = metrics
            .requests
            .iter()
            .map(|(kind, aggregate)| {
                let counts = Counts {
                    requests: aggregate.success_count + aggregate.fail_count,
                    failures: aggregate.fail_count,
                };
                (kind.clone(), counts)
            })
            .collect();
        let failed_transactions =
            metrics.transactions.iter().flatten().map(|transaction| transaction.fail_count).sum();
        Self { host: host.to_owned(), seconds: metrics.duration, requests, failed_transactions }
    }

    /// All requests of the run.
    pub fn total(&self) -> Counts {
        self.requests.values().fold(Counts::default(), |total, counts| Counts {
            requests: total.requests + counts.requests,
            failures: total.failures + counts.failures,
        })
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let total = self.total();
        write!(
            f,
            "Load on {} for {} s: {} requests of {} kinds, {} failed",
            self.host,
            self.seconds,
            total.requests,
            self.requests.len(),
            total.failures
        )?;
        if total.failures == 0 {
            return writeln!(f, ".");
        }
        // Rounded up to a hundredth of a percent, so that one failure in
        // a million requests never reads as 0.00%.
        let share = (total.failures * 10_000).div_ceil(total.requests.max(1));
        writeln!(f, " ({}.{:02}%):", share / 100, share % 100)?;
        for (kind, counts) in self.requests.iter().filter(|(_, counts)| counts.failures > 0) {
            writeln!(f, "  {kind}: {} of {} failed", counts.failures, counts.requests)?;
        }
        writeln!(
            f,
            "{} transactions failed; goose's errors table above and the report say why.",
            self.failed_transactions
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(requests: &[(&str, usize, usize)], failed_transactions: usize) -> Summary {
        Summary {
            host: "http://127.0.0.1:8080".to_owned(),
            seconds: 60,
            requests: requests
                .iter()
                .map(|(kind, requests, failures)| {
                    ((*kind).to_owned(), Counts { requests: *requests, failures: *failures })
                })
                .collect(),
            failed_transactions,
        }
    }

    #[test]
    fn a_clean_run_says_nothing_failed() {
        let text = summary(&[("GET /api/products", 90, 0), ("GET /api/cart", 10, 0)], 0).to_string();
        assert_eq!(text, "Load on http://127.0.0.1:8080 for 60 s: 100 requests of 2 kinds, 0 failed.\n");
    }

    #[test]
    fn failures_are_counted_and_named_by_kind() {
        let text = summary(
            &[
                ("GET /api/products", 9_000, 0),
                ("POST /api/cart/checkout", 1_000, 7),
                ("GET /api/orders/{id}", 0, 0),
            ],
            7,
        )
        .to_string();
        assert_eq!(
            text,
            "Load on http://127.0.0.1:8080 for 60 s: 10000 requests of 3 kinds, 7 failed (0.07%):\n\
             \x20 POST /api/cart/checkout: 7 of 1000 failed\n\
             7 transactions failed; goose's errors table above and the report say why.\n"
        );
    }

    #[test]
    fn a_rare_failure_never_reads_as_zero_percent() {
        let text = summary(&[("GET /api/products", 1_000_000, 1)], 1).to_string();
        assert!(text.contains("1 failed (0.01%)"), "{text}");
    }
}
