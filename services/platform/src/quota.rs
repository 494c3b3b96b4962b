//! A refusal because one subject (an account, a customer) spent its quota,
//! as opposed to a peer that is overloaded.
//!
//! Both are `RESOURCE_EXHAUSTED` in gRPC. The resilient channel counts an
//! overloaded peer towards its circuit breaker, so a per-subject refusal
//! must be told apart, or anyone could open the breaker for everybody by
//! spending one account's quota (guessing its password, say). It carries
//! the standard `google.rpc.QuotaFailure` detail naming the subject, and a
//! `google.rpc.RetryInfo` saying when to try again, which the gateway turns
//! into `Retry-After`.

use std::time::Duration;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// `RESOURCE_EXHAUSTED` for `subject` (e.g. `account:<id>`), with the
/// client-facing `message` and when to retry.
pub fn exceeded(
    message: impl Into<String>,
    subject: &str,
    description: &str,
    retry_after: Duration,
) -> Status {
    let mut details = ErrorDetails::with_retry_info(Some(retry_after));
    details.add_quota_failure_violation(subject, description);
    Status::with_error_details(Code::ResourceExhausted, message, details)
}

/// Whether `status` is a per-subject quota refusal made by [`exceeded`]
/// (an answer of a healthy peer), not an overloaded peer.
pub fn is_subject_quota(status: &Status) -> bool {
    status.code() == Code::ResourceExhausted && status.get_details_quota_failure().is_some()
}

/// When the peer said to retry, if it did.
pub fn retry_after(status: &Status) -> Option<Duration> {
    status.get_details_retry_info().and_then(|info| info.retry_delay)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_subject_quota_survives_the_trip_through_headers_and_says_when_to_retry() {
        let status = exceeded("too many", "account:42", "failed sign-ins", Duration::from_secs(30));
        // What a client sees: the status as gRPC puts it in the headers.
        let mut headers = http::HeaderMap::new();
        status.add_header(&mut headers).expect("encodes");
        let seen = Status::from_header_map(&headers).expect("a status");
        assert!(is_subject_quota(&seen));
        assert_eq!(seen.message(), "too many");
        assert_eq!(retry_after(&seen), Some(Duration::from_secs(30)));

        let overloaded = Status::resource_exhausted("the peer is overloaded");
        assert!(!is_subject_quota(&overloaded));
        assert_eq!(retry_after(&overloaded), None);
    }
}
