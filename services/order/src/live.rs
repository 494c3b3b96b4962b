//! Live order status: the feed behind `OrderService.WatchOrders`.
//!
//! Every status an order enters is a row of `order_status_history`, written
//! by a trigger in the transaction that changed it and announced with
//! `NOTIFY order_status` (migration 0002). Postgres delivers a notification
//! at commit to every session that listens, so each replica of the service
//! hears every change, whichever replica or event made it. One listener per
//! process ([`StatusFeed::run`]) fans the notifications out to the process's
//! watchers over a broadcast channel.
//!
//! Notifications are a hint, the history is the truth. A watcher of one
//! order replays the history after the version it was given, then takes
//! changes from the feed while their versions follow on; whenever something
//! may have been missed (a version gap, a watcher that fell behind the
//! channel, a listener that lost its connection) it reads the history again
//! after the last version it sent. So one order's changes arrive gap-free and
//! in order, across reconnects of the client (it resumes after its last
//! version) and of the listener.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use sqlx::postgres::{PgListener, PgPool};
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;
use tonic::Status;
use uuid::Uuid;

use crate::Error;
use crate::domain::OrderStatus;

/// The channel the history trigger notifies.
const CHANNEL: &str = "order_status";
/// Notifications a slow watcher may fall behind before it reads the history.
const FEED_CAPACITY: usize = 1024;
/// Changes buffered per watcher before its stream applies backpressure.
const WATCHER_BUFFER: usize = 64;
/// How far back a watch of every order of a user starts.
const USER_WATCH_LOOKBACK: Duration = Duration::from_secs(24 * 3600);
/// At most this many orders open a watch of every order of a user.
const USER_WATCH_SNAPSHOT: i64 = 100;
/// Pause before listening again after the listener failed.
const RELISTEN_BACKOFF: Duration = Duration::from_secs(1);

/// One status an order entered, as stored in its history.
#[derive(Debug, Clone, PartialEq, Deserialize, sqlx::FromRow)]
pub struct StatusChange {
    pub order_id: Uuid,
    pub user_id: String,
    pub version: i32,
    pub status: String,
    pub failure_reason: String,
    pub changed_at: DateTime<Utc>,
}

impl StatusChange {
    /// The status entered (`None` for a name this build does not know).
    pub fn parsed_status(&self) -> Option<OrderStatus> {
        OrderStatus::parse(&self.status)
    }

    fn is_terminal(&self) -> bool {
        self.parsed_status().is_some_and(OrderStatus::is_terminal)
    }
}

/// What a watch stream carries: a change, or the status that ends it.
pub type Watched = Result<StatusChange, Status>;

/// What the listener passes on.
#[derive(Debug, Clone)]
enum FeedItem {
    /// A committed change.
    Change(Arc<StatusChange>),
    /// Notifications may have been lost (the listener reconnected): every
    /// watcher reads the history again.
    Gap,
}

/// The process's fan-out of committed status changes.
#[derive(Debug, Clone)]
pub struct StatusFeed {
    sender: broadcast::Sender<FeedItem>,
}

impl Default for StatusFeed {
    fn default() -> Self {
        Self::new()
    }
}

impl StatusFeed {
    pub fn new() -> Self {
        Self { sender: broadcast::channel(FEED_CAPACITY).0 }
    }

    /// Listens on the database until `shutdown`, passing every change on.
    pub async fn run(self, pool: PgPool, shutdown: CancellationToken) {
        while !shutdown.is_cancelled() {
            let mut listener = match PgListener::connect_with(&pool).await {
                Ok(mut listener) => match listener.listen(CHANNEL).await {
                    Ok(()) => listener,
                    Err(error) => {
                        tracing::warn!(%error, "cannot listen for order status changes; retrying");
                        pause(&shutdown).await;
                        continue;
                    }
                },
                Err(error) => {
                    tracing::warn!(%error, "cannot connect to listen for order status changes; retrying");
                    pause(&shutdown).await;
                    continue;
                }
            };
            // Whatever was committed while nobody listened is in the history.
            let _ = self.sender.send(FeedItem::Gap);
            loop {
                let received = tokio::select! {
                    () = shutdown.cancelled() => return,
                    received = listener.try_recv() => received,
                };
                match received {
                    Ok(Some(notification)) => {
                        match serde_json::from_str::<StatusChange>(notification.payload()) {
                            // No receiver is not an error: nobody watches.
                            Ok(change) => drop(self.sender.send(FeedItem::Change(Arc::new(change)))),
                            Err(error) => {
                                tracing::warn!(%error, payload = notification.payload(), "unreadable order status notification");
                            }
                        }
                    }
                    // The connection was lost; the listener has reconnected
                    // and listens again, but missed what came in between.
                    Ok(None) => drop(self.sender.send(FeedItem::Gap)),
                    Err(error) => {
                        tracing::warn!(%error, "the order status listener failed; listening again");
                        pause(&shutdown).await;
                        break;
                    }
                }
            }
        }
    }

    /// The changes of one order after `after_version`, then as they come,
    /// ending after a terminal status. `user_id`, when given, must own the
    /// order (NOT_FOUND otherwise, as for a missing order).
    pub async fn watch_order(
        &self,
        pool: PgPool,
        order_id: Uuid,
        user_id: Option<String>,
        after_version: i32,
        shutdown: CancellationToken,
    ) -> Result<mpsc::Receiver<Watched>, Error> {
        // Subscribed before the history is read: nothing committed in
        // between can be missed.
        let feed = self.sender.subscribe();
        let owner: Option<String> = sqlx::query_scalar("SELECT user_id FROM orders WHERE id = $1")
            .bind(order_id)
            .fetch_optional(&pool)
            .await
            .map_err(Error::LoadOrder)?;
        match (&owner, &user_id) {
            (None, _) => return Err(Error::OrderNotFound { id: order_id }),
            (Some(owner), Some(user)) if owner != user => return Err(Error::OrderNotFound { id: order_id }),
            _ => {}
        }
        let (sender, receiver) = mpsc::channel(WATCHER_BUFFER);
        tokio::spawn(async move {
            let watcher = OrderWatcher { pool, order_id, last: after_version, sender };
            if let Err(status) = watcher.run(feed, shutdown).await {
                tracing::debug!(%order_id, %status, "order watch ended");
            }
        });
        Ok(receiver)
    }

    /// The latest change of each of a user's orders changed within the last
    /// day, then every change of their orders as it comes.
    pub async fn watch_user(
        &self,
        pool: PgPool,
        user_id: String,
        shutdown: CancellationToken,
    ) -> Result<mpsc::Receiver<Watched>, Error> {
        let feed = self.sender.subscribe();
        let snapshot = latest_of_user(&pool, &user_id).await?;
        let (sender, receiver) = mpsc::channel(WATCHER_BUFFER);
        tokio::spawn(async move {
            let watcher = UserWatcher { pool, user_id, last: HashMap::new(), sender };
            if let Err(status) = watcher.run(snapshot, feed, shutdown).await {
                tracing::debug!(%status, "user order watch ended");
            }
        });
        Ok(receiver)
    }
}

async fn pause(shutdown: &CancellationToken) {
    tokio::select! {
        () = shutdown.cancelled() => {}
        () = tokio::time::sleep(RELISTEN_BACKOFF) => {}
    }
}

/// Why a watcher stopped sending: the client left, or the stream ended
/// with this status.
type Stop = Status;

fn client_left() -> Stop {
    Status::cancelled("the watcher's client left")
}

/// What a watcher waits for next.
enum Next {
    Feed(Result<FeedItem, broadcast::error::RecvError>),
    ClientLeft,
    ShuttingDown,
}

async fn next(
    feed: &mut broadcast::Receiver<FeedItem>,
    sender: &mpsc::Sender<Watched>,
    shutdown: &CancellationToken,
) -> Next {
    tokio::select! {
        () = shutdown.cancelled() => Next::ShuttingDown,
        () = sender.closed() => Next::ClientLeft,
        item = feed.recv() => Next::Feed(item),
    }
}

/// Ends a stream with the status of `error`.
async fn fail(sender: &mpsc::Sender<Watched>, error: Error) -> Stop {
    let status = Status::from(error);
    let _ = sender.send(Err(status.clone())).await;
    status
}

async fn shutting_down(sender: &mpsc::Sender<Watched>) -> Stop {
    let status = Status::unavailable("the order service is shutting down; watch again");
    let _ = sender.send(Err(status.clone())).await;
    status
}

struct OrderWatcher {
    pool: PgPool,
    order_id: Uuid,
    /// The last version sent.
    last: i32,
    sender: mpsc::Sender<Watched>,
}

impl OrderWatcher {
    async fn run(
        mut self,
        mut feed: broadcast::Receiver<FeedItem>,
        shutdown: CancellationToken,
    ) -> Result<(), Stop> {
        if self.catch_up().await? {
            return Ok(());
        }
        loop {
            let item = match next(&mut feed, &self.sender, &shutdown).await {
                Next::ShuttingDown => return Err(shutting_down(&self.sender).await),
                Next::ClientLeft => return Err(client_left()),
                Next::Feed(item) => item,
            };
            let done = match item {
                Ok(FeedItem::Change(change)) if change.order_id == self.order_id => {
                    if change.version == self.last + 1 {
                        self.send(&change).await?
                    } else if change.version > self.last {
                        self.catch_up().await?
                    } else {
                        false
                    }
                }
                Ok(FeedItem::Change(_)) => false,
                Ok(FeedItem::Gap) | Err(broadcast::error::RecvError::Lagged(_)) => self.catch_up().await?,
                Err(broadcast::error::RecvError::Closed) => return Err(shutting_down(&self.sender).await),
            };
            if done {
                return Ok(());
            }
        }
    }

    /// Sends the history after the last version sent; whether the order
    /// reached a terminal status.
    async fn catch_up(&mut self) -> Result<bool, Stop> {
        let changes = match history_after(&self.pool, self.order_id, self.last).await {
            Ok(changes) => changes,
            Err(error) => return Err(fail(&self.sender, error).await),
        };
        for change in &changes {
            if self.send(change).await? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Sends one change; whether it was terminal.
    async fn send(&mut self, change: &StatusChange) -> Result<bool, Stop> {
        self.sender.send(Ok(change.clone())).await.map_err(|_| client_left())?;
        self.last = change.version;
        Ok(change.is_terminal())
    }
}

struct UserWatcher {
    pool: PgPool,
    user_id: String,
    /// The last version sent per order.
    last: HashMap<Uuid, i32>,
    sender: mpsc::Sender<Watched>,
}

impl UserWatcher {
    async fn run(
        mut self,
        snapshot: Vec<StatusChange>,
        mut feed: broadcast::Receiver<FeedItem>,
        shutdown: CancellationToken,
    ) -> Result<(), Stop> {
        self.send_newer(&snapshot).await?;
        loop {
            let item = match next(&mut feed, &self.sender, &shutdown).await {
                Next::ShuttingDown => return Err(shutting_down(&self.sender).await),
                Next::ClientLeft => return Err(client_left()),
                Next::Feed(item) => item,
            };
            match item {
                Ok(FeedItem::Change(change)) if change.user_id == self.user_id => {
                    let last = self.last.get(&change.order_id).copied();
                    match last {
                        Some(last) if change.version > last + 1 => {
                            match history_after(&self.pool, change.order_id, last).await {
                                Ok(missed) => self.send_newer(&missed).await?,
                                Err(error) => return Err(fail(&self.sender, error).await),
                            }
                        }
                        _ => self.send_newer(std::slice::from_ref(&*change)).await?,
                    }
                }
                Ok(FeedItem::Change(_)) => {}
                Ok(FeedItem::Gap) | Err(broadcast::error::RecvError::Lagged(_)) => {
                    // What changed meanwhile: the latest state of each order.
                    match latest_of_user(&self.pool, &self.user_id).await {
                        Ok(latest) => self.send_newer(&latest).await?,
                        Err(error) => return Err(fail(&self.sender, error).await),
                    }
                }
                Err(broadcast::error::RecvError::Closed) => return Err(shutting_down(&self.sender).await),
            }
        }
    }

    /// Sends the changes newer than the last sent of their order.
    async fn send_newer(&mut self, changes: &[StatusChange]) -> Result<(), Stop> {
        for change in changes {
            if self.last.get(&change.order_id).is_some_and(|last| *last >= change.version) {
                continue;
            }
            self.sender.send(Ok(change.clone())).await.map_err(|_| client_left())?;
            self.last.insert(change.order_id, change.version);
        }
        Ok(())
    }
}

/// One order's history after `version`, oldest first.
pub async fn history_after(pool: &PgPool, order_id: Uuid, version: i32) -> Result<Vec<StatusChange>, Error> {
    sqlx::query_as(
        "SELECT order_id, user_id, version, status, failure_reason, changed_at FROM order_status_history \
         WHERE order_id = $1 AND version > $2 ORDER BY version",
    )
    .bind(order_id)
    .bind(version)
    .fetch_all(pool)
    .await
    .map_err(Error::LoadOrder)
}

/// The latest change of each of a user's orders changed within the lookback,
/// oldest first, at most [`USER_WATCH_SNAPSHOT`] orders (the newest).
async fn latest_of_user(pool: &PgPool, user_id: &str) -> Result<Vec<StatusChange>, Error> {
    let since = Utc::now() - chrono::Duration::from_std(USER_WATCH_LOOKBACK).unwrap_or_default();
    sqlx::query_as(
        "SELECT * FROM ( \
           SELECT h.order_id, h.user_id, h.version, h.status, h.failure_reason, h.changed_at \
           FROM orders o JOIN order_status_history h ON h.order_id = o.id AND h.version = o.status_version \
           WHERE o.user_id = $1 AND o.updated_at >= $2 ORDER BY o.updated_at DESC LIMIT $3 \
         ) latest ORDER BY changed_at, order_id",
    )
    .bind(user_id)
    .bind(since)
    .bind(USER_WATCH_SNAPSHOT)
    .fetch_all(pool)
    .await
    .map_err(Error::LoadOrder)
}
