//! The one conversion between chrono's `DateTime<Utc>` and protobuf's
//! `google.protobuf.Timestamp`, for every service's messages and events.

use chrono::{DateTime, Utc};
use prost_types::Timestamp;

/// `at` as a protobuf timestamp (whole seconds and nanoseconds).
pub fn timestamp(at: DateTime<Utc>) -> Timestamp {
    Timestamp { seconds: at.timestamp(), nanos: i32::try_from(at.timestamp_subsec_nanos()).unwrap_or(0) }
}

/// A protobuf timestamp as a `DateTime`; `None` for one out of chrono's
/// range or with negative nanoseconds (not a valid Timestamp).
pub fn from_timestamp(at: &Timestamp) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(at.seconds, u32::try_from(at.nanos).ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_time_round_trips_with_its_seconds_and_nanoseconds() {
        let at = DateTime::from_timestamp(1_800_000_000, 123_456_789).expect("in range");
        let proto = timestamp(at);
        assert_eq!((proto.seconds, proto.nanos), (1_800_000_000, 123_456_789));
        assert_eq!(from_timestamp(&proto), Some(at));
    }

    #[test]
    fn an_invalid_timestamp_is_none() {
        assert_eq!(from_timestamp(&Timestamp { seconds: 0, nanos: -1 }), None);
        assert_eq!(from_timestamp(&Timestamp { seconds: i64::MAX, nanos: 0 }), None);
    }
}
