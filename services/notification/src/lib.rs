//! The notification service (under construction).
