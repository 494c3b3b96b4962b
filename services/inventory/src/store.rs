//! Postgres access of the inventory: stock rows, reservations and their
//! lines, rejections, the admin audit trail.
//!
//! Every operation that changes state takes the caller's transaction
//! (`&mut PgConnection`) and writes its event to the outbox in it, so that
//! the gRPC handlers and the saga consumer share one path per operation and
//! an event is published exactly when its change commits. Queries are
//! checked at run time (`sqlx::query_as`): there is no database at build
//! time.
//!
//! Concurrency: stock rows are locked `FOR UPDATE` in product-id order (the
//! order [`domain::normalize_lines`] sorts lines in), so concurrent
//! reservations queue on the rows they share instead of deadlocking, and
//! each sees the counters its predecessor left. Reserving for one order is
//! serialised by a transaction-scoped advisory lock on the order id, so two
//! concurrent attempts for the same order make one reservation.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use commerce_platform::events::outbox;
use sqlx::PgConnection;
use sqlx::postgres::PgPool;
use sqlx::types::Json;
use uuid::Uuid;

use crate::Error;
use crate::domain::{
    self, Decision, Line, Movement, ReleaseReason, ReservationStatus, RestockKind, RuleError, Shortfall,
    StockLevel,
};
use crate::published;

pub use crate::domain::{Reservation, ReserveOutcome};

/// First key of the advisory locks taken per order id (ASCII "invr"); the
/// second is the order id's hash. Per database, so it only has to differ
/// from the platform's keys, which are single 64-bit keys.
const RESERVE_LOCK_NAMESPACE: i32 = 0x696e_7672;

/// A product's counters as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StockRow {
    pub product_id: String,
    pub level: StockLevel,
    pub updated_at: DateTime<Utc>,
}

/// A request to reserve stock for one order.
#[derive(Debug, Clone)]
pub struct ReserveRequest {
    pub order_id: String,
    /// Raw lines; normalized (validated, merged, sorted) here.
    pub lines: Vec<Line>,
    pub ttl: std::time::Duration,
}

/// Identifies a reservation: by its id (the RPCs) or by its order (the saga:
/// one reservation per order).
#[derive(Debug, Clone, Copy)]
pub enum ReservationKey<'a> {
    Id(Uuid),
    Order(&'a str),
}

/// A move of a reservation towards a terminal state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// Order confirmed: held -> sold.
    Commit,
    /// Held -> available, for the reason given.
    Release(ReleaseReason),
    /// Order cancelled: held -> available, or sold -> available.
    Cancel,
}

/// What a transition did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransitionOutcome {
    /// The reservation moved (and its event was enqueued).
    Applied(Reservation),
    /// It was already there; nothing changed.
    AlreadyDone(Reservation),
}

impl TransitionOutcome {
    /// The reservation as it is now, whatever the outcome.
    pub fn reservation(&self) -> &Reservation {
        match self {
            Self::Applied(reservation) | Self::AlreadyDone(reservation) => reservation,
        }
    }
}

/// Shortfall as stored in `reservation_rejections.shortfalls`.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct StoredShortfall {
    product_id: String,
    requested: u32,
    available: i64,
    unknown: bool,
}

type StockTuple = (String, i64, i64, i64, DateTime<Utc>);

fn stock_row((product_id, available, reserved, sold, updated_at): StockTuple) -> StockRow {
    StockRow { product_id, level: StockLevel { available, reserved, sold }, updated_at }
}

/// One product's counters; `None` if it was never stocked.
pub async fn get_stock(pool: &PgPool, product_id: &str) -> Result<Option<StockRow>, Error> {
    let row: Option<StockTuple> = sqlx::query_as(
        "SELECT product_id, available, reserved, sold, updated_at FROM stock WHERE product_id = $1",
    )
    .bind(product_id)
    .fetch_optional(pool)
    .await
    .map_err(Error::ReadStock)?;
    Ok(row.map(stock_row))
}

/// The products with at most `max_available` units available, the fewest
/// first, at most `limit`.
pub async fn low_stock(pool: &PgPool, max_available: i64, limit: i64) -> Result<Vec<StockRow>, Error> {
    let rows: Vec<StockTuple> = sqlx::query_as(
        "SELECT product_id, available, reserved, sold, updated_at FROM stock \
         WHERE available <= $1 ORDER BY available, product_id LIMIT $2",
    )
    .bind(max_available)
    .bind(limit)
    .fetch_all(pool)
    .await
    .map_err(Error::ReadStock)?;
    Ok(rows.into_iter().map(stock_row).collect())
}

/// The counters of `product_ids` that have a stock row, without locking.
pub async fn stock_levels(
    pool: &PgPool,
    product_ids: &[String],
) -> Result<BTreeMap<String, StockLevel>, Error> {
    let rows: Vec<StockTuple> = sqlx::query_as(
        "SELECT product_id, available, reserved, sold, updated_at FROM stock WHERE product_id = ANY($1)",
    )
    .bind(product_ids)
    .fetch_all(pool)
    .await
    .map_err(Error::ReadStock)?;
    Ok(rows.into_iter().map(stock_row).map(|row| (row.product_id, row.level)).collect())
}

/// Locks the stock rows of `product_ids` (sorted) in product-id order and
/// returns their counters.
async fn lock_stock(
    conn: &mut PgConnection,
    product_ids: &[String],
) -> Result<BTreeMap<String, StockLevel>, Error> {
    // LockRows runs above the Sort, so rows are locked in ORDER BY order.
    let rows: Vec<StockTuple> = sqlx::query_as(
        "SELECT product_id, available, reserved, sold, updated_at FROM stock \
         WHERE product_id = ANY($1) ORDER BY product_id FOR UPDATE",
    )
    .bind(product_ids)
    .fetch_all(&mut *conn)
    .await
    .map_err(Error::LockStock)?;
    Ok(rows.into_iter().map(stock_row).map(|row| (row.product_id, row.level)).collect())
}

/// Writes new counters for locked rows.
async fn write_stock(conn: &mut PgConnection, levels: &[(String, StockLevel)]) -> Result<(), Error> {
    let ids: Vec<&str> = levels.iter().map(|(id, _)| id.as_str()).collect();
    let available: Vec<i64> = levels.iter().map(|(_, level)| level.available).collect();
    let reserved: Vec<i64> = levels.iter().map(|(_, level)| level.reserved).collect();
    let sold: Vec<i64> = levels.iter().map(|(_, level)| level.sold).collect();
    sqlx::query(
        "UPDATE stock SET available = n.available, reserved = n.reserved, sold = n.sold, updated_at = now() \
         FROM UNNEST($1::text[], $2::bigint[], $3::bigint[], $4::bigint[]) AS n(product_id, available, reserved, sold) \
         WHERE stock.product_id = n.product_id",
    )
    .bind(&ids)
    .bind(&available)
    .bind(&reserved)
    .bind(&sold)
    .execute(&mut *conn)
    .await
    .map_err(Error::UpdateStock)?;
    Ok(())
}

/// Enqueues `StockAvailabilityChanged` for the products a reservation
/// change took out of stock or brought back: rare (a product crosses zero),
/// so the saga's hot path pays one comparison per line.
async fn enqueue_availability_changes(
    conn: &mut PgConnection,
    before: &BTreeMap<String, StockLevel>,
    after: &[(String, StockLevel)],
) -> Result<(), Error> {
    for event in published::availability_changes(before, after, Utc::now()) {
        outbox::enqueue(conn, &event).await.map_err(|e| Error::EnqueueEvent(Box::new(e)))?;
    }
    Ok(())
}

/// Reserves every line of an order or none, idempotently per order id; see
/// [`ReserveOutcome`]. Used by the Reserve RPC and the OrderPlaced consumer.
pub async fn reserve(conn: &mut PgConnection, request: ReserveRequest) -> Result<ReserveOutcome, Error> {
    if request.order_id.trim().is_empty() {
        return Err(Error::Validate(RuleError::EmptyOrderId));
    }
    let lines = domain::normalize_lines(request.lines).map_err(Error::Validate)?;

    sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext($2))")
        .bind(RESERVE_LOCK_NAMESPACE)
        .bind(&request.order_id)
        .execute(&mut *conn)
        .await
        .map_err(Error::LockOrder)?;
    if let Some(existing) = find_reservation(conn, ReservationKey::Order(&request.order_id), false).await? {
        return Ok(ReserveOutcome::AlreadyReserved(existing));
    }
    let rejected: Option<(Json<Vec<StoredShortfall>>,)> =
        sqlx::query_as("SELECT shortfalls FROM reservation_rejections WHERE order_id = $1")
            .bind(&request.order_id)
            .fetch_optional(&mut *conn)
            .await
            .map_err(Error::ReadReservation)?;
    if let Some((Json(stored),)) = rejected {
        let shortfalls = stored
            .into_iter()
            .map(|s| Shortfall {
                product_id: s.product_id,
                requested: s.requested,
                available: s.available,
                unknown_product: s.unknown,
            })
            .collect();
        return Ok(ReserveOutcome::AlreadyRejected(shortfalls));
    }

    let product_ids: Vec<String> = lines.iter().map(|line| line.product_id.clone()).collect();
    let stock = lock_stock(conn, &product_ids).await?;
    match domain::plan_reservation(&lines, &stock) {
        Err(shortfalls) => {
            let stored: Vec<StoredShortfall> = shortfalls
                .iter()
                .map(|s| StoredShortfall {
                    product_id: s.product_id.clone(),
                    requested: s.requested,
                    available: s.available,
                    unknown: s.unknown_product,
                })
                .collect();
            sqlx::query("INSERT INTO reservation_rejections (order_id, shortfalls) VALUES ($1, $2)")
                .bind(&request.order_id)
                .bind(Json(&stored))
                .execute(&mut *conn)
                .await
                .map_err(Error::WriteReservation)?;
            outbox::enqueue(
                conn,
                &published::stock_reservation_failed(&request.order_id, &shortfalls, Utc::now()),
            )
            .await
            .map_err(|e| Error::EnqueueEvent(Box::new(e)))?;
            tracing::info!(order_id = %request.order_id, short_lines = shortfalls.len(), "reservation refused");
            Ok(ReserveOutcome::Rejected(shortfalls))
        }
        Ok(planned) => {
            write_stock(conn, &planned).await?;
            enqueue_availability_changes(conn, &stock, &planned).await?;
            let ttl = chrono::Duration::from_std(request.ttl).unwrap_or(chrono::Duration::MAX);
            let (id, expires_at, created_at): (Uuid, DateTime<Utc>, DateTime<Utc>) = sqlx::query_as(
                "INSERT INTO reservations (id, order_id, status, expires_at) VALUES ($1, $2, 'HELD', now() + $3) \
                 RETURNING id, expires_at, created_at",
            )
            .bind(Uuid::now_v7())
            .bind(&request.order_id)
            .bind(ttl)
            .fetch_one(&mut *conn)
            .await
            .map_err(Error::WriteReservation)?;
            let quantities: Vec<i64> = lines.iter().map(|line| i64::from(line.quantity)).collect();
            sqlx::query(
                "INSERT INTO reservation_lines (reservation_id, product_id, quantity) \
                 SELECT $1, * FROM UNNEST($2::text[], $3::bigint[])",
            )
            .bind(id)
            .bind(&product_ids)
            .bind(&quantities)
            .execute(&mut *conn)
            .await
            .map_err(Error::WriteReservation)?;
            let reservation = Reservation {
                id,
                order_id: request.order_id,
                status: ReservationStatus::Held,
                release_reason: None,
                was_committed: false,
                lines,
                expires_at,
                created_at,
            };
            outbox::enqueue(conn, &published::stock_reserved(&reservation, created_at))
                .await
                .map_err(|e| Error::EnqueueEvent(Box::new(e)))?;
            tracing::info!(order_id = %reservation.order_id, reservation_id = %id, "stock reserved");
            Ok(ReserveOutcome::Reserved(reservation))
        }
    }
}

/// A reservation with its lines; locked `FOR UPDATE` when `lock`.
pub async fn find_reservation(
    conn: &mut PgConnection,
    key: ReservationKey<'_>,
    lock: bool,
) -> Result<Option<Reservation>, Error> {
    type Row = (Uuid, String, String, Option<String>, bool, DateTime<Utc>, DateTime<Utc>);
    let columns = "SELECT id, order_id, status, release_reason, was_committed, expires_at, created_at FROM reservations";
    let suffix = if lock { " FOR UPDATE" } else { "" };
    let row: Option<Row> = match key {
        ReservationKey::Id(id) => {
            sqlx::query_as(&format!("{columns} WHERE id = $1{suffix}"))
                .bind(id)
                .fetch_optional(&mut *conn)
                .await
        }
        ReservationKey::Order(order_id) => {
            sqlx::query_as(&format!("{columns} WHERE order_id = $1{suffix}"))
                .bind(order_id)
                .fetch_optional(&mut *conn)
                .await
        }
    }
    .map_err(Error::ReadReservation)?;
    let Some((id, order_id, status, release_reason, was_committed, expires_at, created_at)) = row else {
        return Ok(None);
    };
    let lines: Vec<(String, i64)> = sqlx::query_as(
        "SELECT product_id, quantity FROM reservation_lines WHERE reservation_id = $1 ORDER BY product_id",
    )
    .bind(id)
    .fetch_all(&mut *conn)
    .await
    .map_err(Error::ReadReservation)?;
    let status =
        ReservationStatus::parse(&status).ok_or_else(|| Error::CorruptRow { what: "reservation status" })?;
    let release_reason = release_reason
        .map(|reason| ReleaseReason::parse(&reason).ok_or(Error::CorruptRow { what: "release reason" }))
        .transpose()?;
    let lines = lines
        .into_iter()
        .map(|(product_id, quantity)| {
            u32::try_from(quantity)
                .map(|quantity| Line { product_id, quantity })
                .map_err(|_| Error::CorruptRow { what: "reservation line quantity" })
        })
        .collect::<Result<_, _>>()?;
    Ok(Some(Reservation {
        id,
        order_id,
        status,
        release_reason,
        was_committed,
        lines,
        expires_at,
        created_at,
    }))
}

/// Moves a reservation as `transition` says, idempotently on its status.
/// `None` when there is no such reservation; [`Error::ReservationState`]
/// when the move contradicts its status (commit after release, release
/// after commit).
pub async fn transition(
    conn: &mut PgConnection,
    key: ReservationKey<'_>,
    transition: Transition,
) -> Result<Option<TransitionOutcome>, Error> {
    let Some(mut reservation) = find_reservation(conn, key, true).await? else {
        return Ok(None);
    };
    let decision = match transition {
        Transition::Commit => domain::decide_commit(reservation.status),
        Transition::Release(_) => domain::decide_release(reservation.status),
        Transition::Cancel => domain::decide_cancel(reservation.status),
    };
    let movement = match decision {
        Decision::AlreadyDone => return Ok(Some(TransitionOutcome::AlreadyDone(reservation))),
        Decision::Refuse { status } => {
            return Err(Error::ReservationState { reservation_id: reservation.id, status, transition });
        }
        Decision::Apply(movement) => movement,
    };

    let product_ids: Vec<String> = reservation.lines.iter().map(|line| line.product_id.clone()).collect();
    let stock = lock_stock(conn, &product_ids).await?;
    let mut levels = Vec::with_capacity(reservation.lines.len());
    for line in &reservation.lines {
        let level = stock.get(&line.product_id).copied().unwrap_or_default();
        levels.push((
            line.product_id.clone(),
            level.apply(&line.product_id, movement, line.quantity).map_err(Error::Validate)?,
        ));
    }
    write_stock(conn, &levels).await?;
    enqueue_availability_changes(conn, &stock, &levels).await?;

    let (status, reason, was_committed) = match (movement, transition) {
        (Movement::Commit, _) => (ReservationStatus::Committed, None, false),
        (Movement::ReturnSold, _) => (ReservationStatus::Released, Some(ReleaseReason::Cancelled), true),
        (_, Transition::Release(reason)) => (ReservationStatus::Released, Some(reason), false),
        _ => (ReservationStatus::Released, Some(ReleaseReason::Cancelled), false),
    };
    sqlx::query(
        "UPDATE reservations SET status = $2, release_reason = $3, was_committed = $4, updated_at = now() \
         WHERE id = $1",
    )
    .bind(reservation.id)
    .bind(status.as_str())
    .bind(reason.map(ReleaseReason::as_str))
    .bind(was_committed)
    .execute(&mut *conn)
    .await
    .map_err(Error::WriteReservation)?;
    reservation.status = status;
    reservation.release_reason = reason;
    reservation.was_committed = was_committed;

    let now = Utc::now();
    let enqueued = match status {
        ReservationStatus::Committed => {
            outbox::enqueue(conn, &published::stock_committed(&reservation, now)).await
        }
        _ => outbox::enqueue(conn, &published::stock_released(&reservation, now)).await,
    };
    enqueued.map_err(|e| Error::EnqueueEvent(Box::new(e)))?;
    tracing::info!(
        order_id = %reservation.order_id,
        reservation_id = %reservation.id,
        status = %status,
        was_committed,
        "reservation moved"
    );
    Ok(Some(TransitionOutcome::Applied(reservation)))
}

/// Creates a product's stock row with zero units if it has none (a product
/// the catalog just created). Idempotent.
pub async fn ensure_product(conn: &mut PgConnection, product_id: &str) -> Result<bool, Error> {
    if product_id.trim().is_empty() {
        return Err(Error::Validate(RuleError::EmptyProductId));
    }
    let inserted =
        sqlx::query("INSERT INTO stock (product_id) VALUES ($1) ON CONFLICT (product_id) DO NOTHING")
            .bind(product_id)
            .execute(&mut *conn)
            .await
            .map_err(Error::UpdateStock)?
            .rows_affected();
    Ok(inserted > 0)
}

/// An admin change of a product's available stock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Adjustment {
    /// Units received.
    Restock(u32),
    /// The level after a stock count.
    Set(i64),
}

/// Applies an admin adjustment (creating the stock row if needed), records
/// it in the audit trail and enqueues StockRestocked.
pub async fn adjust_stock(
    conn: &mut PgConnection,
    product_id: &str,
    adjustment: Adjustment,
    note: &str,
) -> Result<StockRow, Error> {
    ensure_product(conn, product_id).await?;
    let stock = lock_stock(conn, &[product_id.to_owned()]).await?;
    let before = stock.get(product_id).copied().unwrap_or_default();
    let (after, kind) = match adjustment {
        Adjustment::Restock(0) => {
            return Err(Error::Validate(RuleError::Quantity {
                product_id: product_id.to_owned(),
                quantity: 0,
            }));
        }
        Adjustment::Restock(quantity) => (before.restock(product_id, quantity), RestockKind::Restock),
        Adjustment::Set(available) => (before.set_available(available), RestockKind::Set),
    };
    let after = after.map_err(Error::Validate)?;
    write_stock(conn, &[(product_id.to_owned(), after)]).await?;
    let delta = after.available - before.available;
    sqlx::query(
        "INSERT INTO stock_adjustments (product_id, kind, quantity_delta, available_after, note) \
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(product_id)
    .bind(kind.as_str())
    .bind(delta)
    .bind(after.available)
    .bind(note)
    .execute(&mut *conn)
    .await
    .map_err(Error::UpdateStock)?;
    let now = Utc::now();
    outbox::enqueue(conn, &published::stock_restocked(product_id, kind, delta, after.available, note, now))
        .await
        .map_err(|e| Error::EnqueueEvent(Box::new(e)))?;
    tracing::info!(product_id, kind = kind.as_str(), delta, available = after.available, "stock adjusted");
    Ok(StockRow { product_id: product_id.to_owned(), level: after, updated_at: now })
}
