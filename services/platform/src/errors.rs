//! How an error is written down: with its causes, for logs and statuses.
//! A leaf module, so that every part of the platform (and every service)
//! can use it without importing the runtime.

/// An error with its causes, `: `-separated, for logs and gRPC statuses
/// (`Display` of an error shows only its own level).
pub fn error_chain(error: &dyn std::error::Error) -> String {
    error_chain_with(error, |_| None)
}

/// [`error_chain`], where `last` may end the chain at a cause with its own
/// text (the operator ends it at an apiserver refusal, whose own text
/// repeats the message and the whole Status).
pub fn error_chain_with(
    error: &dyn std::error::Error,
    last: impl Fn(&(dyn std::error::Error + 'static)) -> Option<String>,
) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        if let Some(end) = last(cause) {
            text.push_str(&end);
            break;
        }
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
