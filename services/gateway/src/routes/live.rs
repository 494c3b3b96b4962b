//! Live order updates: `GET /api/orders/{id}/events` (Server-Sent Events)
//! and `GET /api/orders/live` (a WebSocket of every order of the caller).
//!
//! Both relay the order service's `WatchOrders` stream. The order service
//! hears every committed change through its database, whichever replica or
//! event made it, so a client sees the same changes whatever gateway replica
//! it is connected to. Ownership is checked by the order service from the
//! verified token's subject: another user's order is a 404, and the socket
//! only ever carries the caller's own orders.
//!
//! A stream ends when the token it was opened with expires (the client comes
//! back with a fresh one and, for SSE, `Last-Event-ID`), when the gateway
//! stops, and for SSE after the order's terminal status.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code};
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use commerce_proto::order::v1 as pb;
use futures::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;

use super::grpc;
use crate::auth::Caller;
use crate::dto::OrderStatusEvent;
use crate::extract::path_uuid;
use crate::problem::Problem;
use crate::state::AppState;

/// A comment line this often keeps idle connections (and the proxies on
/// their way) from timing out.
const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// How long an SSE client waits before reconnecting after the stream ends
/// (sent as the first event's `retry`).
const RECONNECT_AFTER: Duration = Duration::from_secs(2);
/// The WebSocket close code for "the token expired": a private-use code
/// (4000-4999, RFC 6455 section 7.4.2), so a client knows to sign in again.
const CLOSE_TOKEN_EXPIRED: u16 = 4001;

/// `GET /api/orders/{id}/events`: the order's status changes as Server-Sent
/// Events: every change after `Last-Event-ID` (the whole history without
/// it), then each change as it is committed.
pub async fn order_events(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, Problem> {
    let id = path_uuid("id", &id)?;
    let after_version = last_event_id(&headers)?;
    let request = pb::WatchOrdersRequest {
        // The order service checks ownership against it; admins see any order.
        user_id: if caller.is_admin() { String::new() } else { caller.user_id.clone() },
        order_id: id.to_string(),
        after_version,
    };
    let changes = state.order()?.watch_orders(request).await.map_err(grpc("order"))?.into_inner();
    let mut first = true;
    let events = changes
        .take_while(|item| {
            // The order service ends a stream with a status when it stops;
            // the client reconnects with Last-Event-ID.
            if let Err(status) = item {
                tracing::debug!(%status, "order watch ended");
            }
            std::future::ready(item.is_ok())
        })
        .filter_map(move |item| {
            let event = item.ok().and_then(|change| {
                let version = change.version;
                let event = Event::default()
                    .event("status")
                    .id(version.to_string())
                    .json_data(OrderStatusEvent::from(change))
                    .inspect_err(|error| tracing::error!(%error, "cannot encode an order status event"))
                    .ok()?;
                Some(if std::mem::take(&mut first) { event.retry(RECONNECT_AFTER) } else { event })
            });
            std::future::ready(event.map(Ok))
        });
    let until = until_expiry_or_shutdown(caller.expires_at, state.shutdown.clone());
    Ok(Sse::new(events.take_until(until)).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)))
}

/// `GET /api/orders/live`: a WebSocket that sends, as JSON text messages,
/// the latest status of each of the caller's orders changed within the last
/// day, then every status change of the caller's orders. Messages from the
/// client are ignored (pings are answered).
pub async fn order_socket(
    State(state): State<AppState>,
    caller: Caller,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Result<Response, Problem> {
    let upgrade = upgrade.map_err(|rejection| {
        Problem::new(
            rejection.status(),
            "websocket-required",
            format!("this endpoint only speaks WebSocket: {}", rejection.body_text()),
        )
    })?;
    let request =
        pb::WatchOrdersRequest { user_id: caller.user_id.clone(), order_id: String::new(), after_version: 0 };
    let changes = state.order()?.watch_orders(request).await.map_err(grpc("order"))?.into_inner();
    let until = until_expiry_or_shutdown(caller.expires_at, state.shutdown.clone());
    Ok(upgrade.on_upgrade(move |socket| relay_to_socket(socket, changes, until)).into_response())
}

/// Why a live stream ends before its source does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cutoff {
    TokenExpired,
    ShuttingDown,
}

/// Resolves when the caller's token expires or the gateway stops.
async fn until_expiry_or_shutdown(expires_at: i64, shutdown: CancellationToken) -> Cutoff {
    let now = chrono::Utc::now().timestamp();
    let left = Duration::from_secs(u64::try_from(expires_at.saturating_sub(now)).unwrap_or(0));
    tokio::select! {
        () = tokio::time::sleep(left) => Cutoff::TokenExpired,
        () = shutdown.cancelled() => Cutoff::ShuttingDown,
    }
}

async fn relay_to_socket(
    mut socket: WebSocket,
    mut changes: tonic::Streaming<pb::OrderStatusChange>,
    until: impl Future<Output = Cutoff>,
) {
    tokio::pin!(until);
    let close = loop {
        tokio::select! {
            cutoff = &mut until => break match cutoff {
                Cutoff::TokenExpired => (CLOSE_TOKEN_EXPIRED, "the access token expired"),
                Cutoff::ShuttingDown => (close_code::AWAY, "the gateway is stopping"),
            },
            change = changes.message() => match change {
                Ok(Some(change)) => {
                    let text = match serde_json::to_string(&OrderStatusEvent::from(change)) {
                        Ok(text) => text,
                        Err(error) => {
                            tracing::error!(%error, "cannot encode an order status event");
                            continue;
                        }
                    };
                    if socket.send(Message::Text(text.into())).await.is_err() {
                        return;
                    }
                }
                Ok(None) => break (close_code::AWAY, "the order stream ended"),
                Err(status) => {
                    tracing::debug!(%status, "order watch ended");
                    break (close_code::AGAIN, "the order service is unavailable; reconnect");
                }
            },
            incoming = socket.recv() => match incoming {
                // Pings are answered by the socket itself; text is ignored.
                Some(Ok(Message::Close(_)) | Err(_)) | None => return,
                Some(Ok(_)) => {}
            },
        }
    };
    let (code, reason) = close;
    let _ = socket.send(Message::Close(Some(CloseFrame { code, reason: reason.into() }))).await;
}

/// The `Last-Event-ID` header: the last version the client saw (0 without).
fn last_event_id(headers: &HeaderMap) -> Result<u64, Problem> {
    let Some(value) = headers.get("last-event-id") else {
        return Ok(0);
    };
    value.to_str().ok().and_then(|text| text.trim().parse::<u64>().ok()).ok_or_else(|| {
        Problem::invalid_field(
            "header:Last-Event-ID",
            "must be the id of an event this stream sent (a non-negative integer)",
        )
    })
}
