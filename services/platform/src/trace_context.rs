//! W3C Trace Context (`traceparent`) carried across gRPC calls and Kafka
//! events, so that one checkout can be followed through every service's logs
//! by its trace id, even across the asynchronous hops of the saga.
//!
//! The format is `00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`
//! (<https://www.w3.org/TR/trace-context/>).

use std::fmt;

use rand::Rng;

/// Header name in gRPC metadata and Kafka record headers.
pub const TRACEPARENT: &str = "traceparent";

tokio::task_local! {
    /// The trace of the request or event the current task is working for.
    static CURRENT: TraceContext;
}

/// Runs `future` as part of `context`'s trace: gRPC clients and the outbox
/// called inside it send `context.child()` onwards.
pub async fn scope<F: std::future::Future>(context: TraceContext, future: F) -> F::Output {
    CURRENT.scope(context, future).await
}

/// The trace the current task works for, if it runs inside [`scope`].
pub fn current() -> Option<TraceContext> {
    CURRENT.try_with(|context| *context).ok()
}

/// The context to propagate from here: a child of the current trace, or a
/// new root when the work did not start from a traced request.
pub fn outgoing() -> TraceContext {
    current().map_or_else(TraceContext::new_root, |context| context.child())
}

/// One hop of a distributed trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceContext {
    pub trace_id: [u8; 16],
    /// Id of the span that sent this context (the caller's span).
    pub span_id: [u8; 8],
    pub sampled: bool,
}

impl TraceContext {
    /// Starts a new trace (for a request that arrived without one).
    pub fn new_root() -> Self {
        let mut rng = rand::rng();
        let mut trace_id = [0u8; 16];
        let mut span_id = [0u8; 8];
        // All-zero ids are invalid by the spec; the odds are nil but the
        // loop makes the guarantee explicit.
        while trace_id == [0; 16] {
            rng.fill(&mut trace_id);
        }
        while span_id == [0; 8] {
            rng.fill(&mut span_id);
        }
        Self { trace_id, span_id, sampled: true }
    }

    /// The context to send onwards: same trace, a new span id.
    pub fn child(&self) -> Self {
        let mut span_id = [0u8; 8];
        let mut rng = rand::rng();
        while span_id == [0; 8] {
            rng.fill(&mut span_id);
        }
        Self { trace_id: self.trace_id, span_id, sampled: self.sampled }
    }

    /// Parses a `traceparent` header; `None` for anything malformed, which
    /// callers answer by starting a new root rather than failing the request.
    pub fn parse(header: &str) -> Option<Self> {
        let mut parts = header.trim().split('-');
        let version = parts.next()?;
        let trace = parts.next()?;
        let span = parts.next()?;
        let flags = parts.next()?;
        // Version 00 has exactly four fields; later versions may append more.
        if version.len() != 2 || version == "ff" || (version == "00" && parts.next().is_some()) {
            return None;
        }
        let trace_id: [u8; 16] = decode_hex(trace)?;
        let span_id: [u8; 8] = decode_hex(span)?;
        let [flags]: [u8; 1] = decode_hex(flags)?;
        if trace_id == [0; 16] || span_id == [0; 8] {
            return None;
        }
        Some(Self { trace_id, span_id, sampled: flags & 1 == 1 })
    }

    /// The trace id as 32 lowercase hex digits, as logged.
    pub fn trace_id_hex(&self) -> String {
        hex::encode(self.trace_id)
    }

    /// The span id as 16 lowercase hex digits, as logged.
    pub fn span_id_hex(&self) -> String {
        hex::encode(self.span_id)
    }

    /// The span of work that `received` (the caller's context, if any came)
    /// starts here: a child of the caller's span, or a new root. Returns it
    /// with the caller's span id, its parent.
    pub fn serving(received: Option<Self>) -> (Self, Option<[u8; 8]>) {
        match received {
            Some(caller) => (caller.child(), Some(caller.span_id)),
            None => (Self::new_root(), None),
        }
    }
}

impl fmt::Display for TraceContext {
    /// Formats as a `traceparent` header value.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "00-{}-{}-{:02x}",
            hex::encode(self.trace_id),
            hex::encode(self.span_id),
            u8::from(self.sampled)
        )
    }
}

fn decode_hex<const N: usize>(text: &str) -> Option<[u8; N]> {
    if text.len() != N * 2 || !text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return None;
    }
    let mut out = [0u8; N];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[i * 2..i * 2 + 2], 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_valid_header_round_trips() {
        let header = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let context = TraceContext::parse(header).expect("valid header");
        assert!(context.sampled);
        assert_eq!(context.to_string(), header);
        assert_eq!(context.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
    }

    #[test]
    fn malformed_headers_are_rejected() {
        for header in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-xyz-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceContext::parse(header), None, "{header:?} should be rejected");
        }
    }

    #[tokio::test]
    async fn outgoing_context_continues_the_scoped_trace() {
        assert_eq!(current(), None);
        let root = TraceContext::new_root();
        let sent = scope(root, async { outgoing() }).await;
        assert_eq!(sent.trace_id, root.trace_id);
        assert_ne!(sent.span_id, root.span_id);
    }

    #[test]
    fn a_child_keeps_the_trace_and_changes_the_span() {
        let root = TraceContext::new_root();
        let child = root.child();
        assert_eq!(child.trace_id, root.trace_id);
        assert_ne!(child.span_id, root.span_id);
        assert_eq!(TraceContext::parse(&child.to_string()), Some(child));
    }
}
