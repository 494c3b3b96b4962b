//! The id of the request the current task serves: set by
//! [`middleware::observe`](crate::middleware::observe), cited by problem
//! responses as their `instance`. A leaf, so that the problem type needs
//! nothing of the middleware.

tokio::task_local! {
    /// The id of the request the current task serves.
    pub static REQUEST_ID: String;
}

/// The current request's id, if inside [`middleware::observe`](crate::middleware::observe).
pub fn current_request_id() -> Option<String> {
    REQUEST_ID.try_with(Clone::clone).ok()
}
