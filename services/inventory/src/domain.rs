//! The inventory's rules, free of I/O: stock arithmetic that never goes
//! negative, all-or-nothing reservation planning, and which transition a
//! reservation may take from which status. The store applies these decisions
//! inside its transactions; the unit tests below pin them down.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};
use uuid::Uuid;

/// Most units one line may ask for: far above any real order, far below
/// where `i64` arithmetic on the counters could overflow.
pub const MAX_LINE_QUANTITY: u32 = 1_000_000;
/// Most lines one reservation may hold: bounds the rows one transaction
/// locks.
pub const MAX_LINES: usize = 500;

/// A rule was broken; the caller sent something that can never succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    #[error("product_id must not be empty")]
    EmptyProductId,
    #[error("order_id must not be empty")]
    EmptyOrderId,
    #[error("a reservation needs at least one line")]
    NoLines,
    #[error("too many lines: {count} (at most {MAX_LINES})")]
    TooManyLines { count: usize },
    #[error("quantity of product {product_id} must be between 1 and {MAX_LINE_QUANTITY}, got {quantity}")]
    Quantity { product_id: String, quantity: u32 },
    #[error("available stock must not be negative, got {0}")]
    NegativeStock(i64),
    #[error("stock counter of product {product_id} would leave its range ({what})")]
    Counter { product_id: String, what: &'static str },
}

/// A quantity of one product.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub product_id: String,
    pub quantity: u32,
}

impl Line {
    /// A line of `quantity` units of `product_id` (validated by [`normalize_lines`]).
    pub fn new(product_id: impl Into<String>, quantity: u32) -> Self {
        Self { product_id: product_id.into(), quantity }
    }
}

/// Validates lines and merges repeated products (summing their quantities),
/// sorted by product id: the order in which the store locks stock rows, so
/// that two reservations never wait on each other's rows (no deadlock).
pub fn normalize_lines(lines: impl IntoIterator<Item = Line>) -> Result<Vec<Line>, RuleError> {
    let mut merged: BTreeMap<String, u32> = BTreeMap::new();
    for line in lines {
        if line.product_id.trim().is_empty() {
            return Err(RuleError::EmptyProductId);
        }
        if line.quantity == 0 || line.quantity > MAX_LINE_QUANTITY {
            return Err(RuleError::Quantity { product_id: line.product_id, quantity: line.quantity });
        }
        let total = merged.entry(line.product_id.clone()).or_insert(0);
        *total = total.saturating_add(line.quantity);
        if *total > MAX_LINE_QUANTITY {
            return Err(RuleError::Quantity { product_id: line.product_id, quantity: *total });
        }
    }
    if merged.is_empty() {
        return Err(RuleError::NoLines);
    }
    if merged.len() > MAX_LINES {
        return Err(RuleError::TooManyLines { count: merged.len() });
    }
    Ok(merged.into_iter().map(|(product_id, quantity)| Line { product_id, quantity }).collect())
}

/// The counters of one product. `available + reserved + sold` changes only
/// through admin restocks and stock counts; every saga transition moves
/// units between the three.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StockLevel {
    pub available: i64,
    pub reserved: i64,
    pub sold: i64,
}

/// Which counters a transition moves units between.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Movement {
    /// available -> reserved (a reservation is made).
    Reserve,
    /// reserved -> sold (the order was confirmed).
    Commit,
    /// reserved -> available (the reservation was released).
    Release,
    /// sold -> available (a confirmed order was cancelled).
    ReturnSold,
}

impl Movement {
    fn describe(self) -> &'static str {
        match self {
            Self::Reserve => "reserve: available -> reserved",
            Self::Commit => "commit: reserved -> sold",
            Self::Release => "release: reserved -> available",
            Self::ReturnSold => "return: sold -> available",
        }
    }
}

impl StockLevel {
    /// Units the product has in total: what was received.
    pub fn total(&self) -> i64 {
        self.available + self.reserved + self.sold
    }

    /// Moves `quantity` units as `movement` says; refuses (rather than going
    /// negative) when the source counter holds fewer units.
    pub fn apply(self, product_id: &str, movement: Movement, quantity: u32) -> Result<Self, RuleError> {
        let quantity = i64::from(quantity);
        let (from, to) = match movement {
            Movement::Reserve => (self.available, self.reserved),
            Movement::Commit => (self.reserved, self.sold),
            Movement::Release => (self.reserved, self.available),
            Movement::ReturnSold => (self.sold, self.available),
        };
        let counter = || RuleError::Counter { product_id: product_id.to_owned(), what: movement.describe() };
        let from = from.checked_sub(quantity).filter(|left| *left >= 0).ok_or_else(counter)?;
        let to = to.checked_add(quantity).ok_or_else(counter)?;
        Ok(match movement {
            Movement::Reserve => Self { available: from, reserved: to, ..self },
            Movement::Commit => Self { reserved: from, sold: to, ..self },
            Movement::Release => Self { reserved: from, available: to, ..self },
            Movement::ReturnSold => Self { sold: from, available: to, ..self },
        })
    }

    /// Adds received units to available.
    pub fn restock(self, product_id: &str, quantity: u32) -> Result<Self, RuleError> {
        let available = self.available.checked_add(i64::from(quantity)).ok_or_else(|| {
            RuleError::Counter { product_id: product_id.to_owned(), what: "restock: available overflows" }
        })?;
        Ok(Self { available, ..self })
    }

    /// Sets available outright after a stock count; reserved and sold stay.
    pub fn set_available(self, available: i64) -> Result<Self, RuleError> {
        if available < 0 {
            return Err(RuleError::NegativeStock(available));
        }
        Ok(Self { available, ..self })
    }
}

/// One line a reservation could not serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shortfall {
    pub product_id: String,
    pub requested: u32,
    pub available: i64,
    /// The product has no stock row at all (never stocked, unknown to
    /// inventory), as opposed to too few units.
    pub unknown_product: bool,
}

/// Plans an all-or-nothing reservation of `lines` (normalized) against the
/// current `stock` of their products (locked by the caller; absent = never
/// stocked). Returns every product's new level, or every short line and
/// nothing else.
pub fn plan_reservation(
    lines: &[Line],
    stock: &BTreeMap<String, StockLevel>,
) -> Result<Vec<(String, StockLevel)>, Vec<Shortfall>> {
    let mut planned = Vec::with_capacity(lines.len());
    let mut shortfalls = Vec::new();
    for line in lines {
        match stock.get(&line.product_id) {
            None => shortfalls.push(Shortfall {
                product_id: line.product_id.clone(),
                requested: line.quantity,
                available: 0,
                unknown_product: true,
            }),
            Some(level) => match level.apply(&line.product_id, Movement::Reserve, line.quantity) {
                Ok(next) => planned.push((line.product_id.clone(), next)),
                Err(_) => shortfalls.push(Shortfall {
                    product_id: line.product_id.clone(),
                    requested: line.quantity,
                    available: level.available,
                    unknown_product: false,
                }),
            },
        }
    }
    if shortfalls.is_empty() { Ok(planned) } else { Err(shortfalls) }
}

/// Whether a line is covered by what is available now (no hold).
pub fn is_available(requested: u32, available: i64) -> bool {
    available >= i64::from(requested)
}

/// Where a reservation is in its life (`reservations.status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReservationStatus {
    Held,
    Committed,
    Released,
}

impl ReservationStatus {
    /// Text of `reservations.status`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Held => "HELD",
            Self::Committed => "COMMITTED",
            Self::Released => "RELEASED",
        }
    }

    /// The value for a column text; `None` for text this version does not know.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "HELD" => Some(Self::Held),
            "COMMITTED" => Some(Self::Committed),
            "RELEASED" => Some(Self::Released),
            _ => None,
        }
    }
}

impl fmt::Display for ReservationStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a held reservation went back to available.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReleaseReason {
    Expired,
    PaymentFailed,
    Cancelled,
}

impl ReleaseReason {
    /// Text of `reservations.release_reason`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Expired => "EXPIRED",
            Self::PaymentFailed => "PAYMENT_FAILED",
            Self::Cancelled => "CANCELLED",
        }
    }

    /// The value for a column text; `None` for text this version does not know.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "EXPIRED" => Some(Self::Expired),
            "PAYMENT_FAILED" => Some(Self::PaymentFailed),
            "CANCELLED" => Some(Self::Cancelled),
            _ => None,
        }
    }
}

/// What a request to move a reservation leads to, given its status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Apply the transition (and publish its event).
    Apply(Movement),
    /// Already in the target state: succeed without changing anything, so
    /// that a redelivered event or retried call is harmless.
    AlreadyDone,
    /// The transition contradicts the reservation's state.
    Refuse { status: ReservationStatus },
}

/// Commit (order confirmed): only a HELD reservation becomes COMMITTED. A
/// held reservation past its expiry is still committed: the order service
/// alone decides expiry (it fails the order, and inventory releases on
/// OrderFailed), so confirmation and expiry never race here.
pub fn decide_commit(status: ReservationStatus) -> Decision {
    match status {
        ReservationStatus::Held => Decision::Apply(Movement::Commit),
        ReservationStatus::Committed => Decision::AlreadyDone,
        ReservationStatus::Released => Decision::Refuse { status },
    }
}

/// Release (payment failed, expired, or an explicit release): a COMMITTED
/// reservation is refused, its stock is sold.
pub fn decide_release(status: ReservationStatus) -> Decision {
    match status {
        ReservationStatus::Held => Decision::Apply(Movement::Release),
        ReservationStatus::Released => Decision::AlreadyDone,
        ReservationStatus::Committed => Decision::Refuse { status },
    }
}

/// Order cancelled: whatever the reservation holds goes back to available,
/// held stock by release and sold stock by return.
pub fn decide_cancel(status: ReservationStatus) -> Decision {
    match status {
        ReservationStatus::Held => Decision::Apply(Movement::Release),
        ReservationStatus::Committed => Decision::Apply(Movement::ReturnSold),
        ReservationStatus::Released => Decision::AlreadyDone,
    }
}

/// How long a new reservation holds its stock: the requested TTL if any
/// (a zero TTL counts as unset), capped at `max`; `default` otherwise.
pub fn reservation_ttl(requested: Option<Duration>, default: Duration, max: Duration) -> Duration {
    match requested {
        Some(ttl) if !ttl.is_zero() => ttl.min(max),
        _ => default.min(max),
    }
}

/// A reservation with its lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    pub id: Uuid,
    pub order_id: String,
    pub status: ReservationStatus,
    pub release_reason: Option<ReleaseReason>,
    /// Its stock had been sold and was returned after a cancellation.
    pub was_committed: bool,
    /// Sorted by product id.
    pub lines: Vec<Line>,
    pub expires_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
}

/// The answer to a reserve attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReserveOutcome {
    /// Every line is now held (StockReserved was enqueued).
    Reserved(Reservation),
    /// The order already had a reservation; nothing changed.
    AlreadyReserved(Reservation),
    /// Nothing was held (StockReservationFailed was enqueued).
    Rejected(Vec<Shortfall>),
    /// The order was rejected before; nothing changed, same answer.
    AlreadyRejected(Vec<Shortfall>),
}

/// How an admin changed a product's stock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestockKind {
    Restock,
    Set,
}

impl RestockKind {
    /// Text of `stock_adjustments.kind`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Restock => "RESTOCK",
            Self::Set => "SET",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn level(available: i64, reserved: i64, sold: i64) -> StockLevel {
        StockLevel { available, reserved, sold }
    }

    #[test]
    fn lines_are_merged_sorted_and_validated() {
        let lines =
            normalize_lines([Line::new("b", 2), Line::new("a", 1), Line::new("b", 3)]).expect("valid");
        assert_eq!(lines, vec![Line::new("a", 1), Line::new("b", 5)]);
        assert_eq!(normalize_lines([]), Err(RuleError::NoLines));
        assert_eq!(normalize_lines([Line::new(" ", 1)]), Err(RuleError::EmptyProductId));
        assert!(matches!(normalize_lines([Line::new("a", 0)]), Err(RuleError::Quantity { .. })));
        assert!(matches!(
            normalize_lines([Line::new("a", MAX_LINE_QUANTITY), Line::new("a", 1)]),
            Err(RuleError::Quantity { .. })
        ));
        let many: Vec<Line> = (0..=MAX_LINES).map(|i| Line::new(format!("p{i}"), 1)).collect();
        assert!(matches!(normalize_lines(many), Err(RuleError::TooManyLines { .. })));
    }

    #[test]
    fn every_movement_keeps_the_total_and_never_goes_negative() {
        let start = level(10, 0, 0);
        let reserved = start.apply("p", Movement::Reserve, 4).expect("reserve");
        assert_eq!(reserved, level(6, 4, 0));
        let committed = reserved.apply("p", Movement::Commit, 3).expect("commit");
        assert_eq!(committed, level(6, 1, 3));
        let released = committed.apply("p", Movement::Release, 1).expect("release");
        assert_eq!(released, level(7, 0, 3));
        let returned = released.apply("p", Movement::ReturnSold, 3).expect("return");
        assert_eq!(returned, level(10, 0, 0));
        for state in [reserved, committed, released, returned] {
            assert_eq!(state.total(), start.total());
        }
        assert!(level(1, 0, 0).apply("p", Movement::Reserve, 2).is_err());
        assert!(level(5, 0, 0).apply("p", Movement::Commit, 1).is_err());
        assert!(level(5, 0, 0).apply("p", Movement::Release, 1).is_err());
        assert!(level(5, 0, 0).apply("p", Movement::ReturnSold, 1).is_err());
        assert!(level(i64::MAX, 1, 0).apply("p", Movement::Release, 1).is_err(), "overflow is refused");
    }

    #[test]
    fn restock_adds_and_set_replaces_only_available() {
        assert_eq!(level(1, 2, 3).restock("p", 5).expect("restock"), level(6, 2, 3));
        assert_eq!(level(1, 2, 3).set_available(0).expect("set"), level(0, 2, 3));
        assert_eq!(level(1, 2, 3).set_available(-1), Err(RuleError::NegativeStock(-1)));
        assert!(level(i64::MAX, 0, 0).restock("p", 1).is_err());
    }

    #[test]
    fn a_reservation_is_planned_for_every_line_or_for_none() {
        let stock = BTreeMap::from([("a".to_owned(), level(5, 0, 0)), ("b".to_owned(), level(1, 0, 0))]);
        let plan = plan_reservation(&[Line::new("a", 5), Line::new("b", 1)], &stock).expect("fits");
        assert_eq!(plan, vec![("a".to_owned(), level(0, 5, 0)), ("b".to_owned(), level(0, 1, 0))]);

        let shortfalls = plan_reservation(&[Line::new("a", 2), Line::new("b", 2), Line::new("c", 1)], &stock)
            .expect_err("short");
        assert_eq!(
            shortfalls,
            vec![
                Shortfall { product_id: "b".to_owned(), requested: 2, available: 1, unknown_product: false },
                Shortfall { product_id: "c".to_owned(), requested: 1, available: 0, unknown_product: true },
            ],
            "only the short lines are reported, the fitting one is not"
        );
    }

    #[test]
    fn transitions_are_idempotent_on_the_reservation_status() {
        use ReservationStatus::*;
        assert_eq!(decide_commit(Held), Decision::Apply(Movement::Commit));
        assert_eq!(decide_commit(Committed), Decision::AlreadyDone);
        assert_eq!(decide_commit(Released), Decision::Refuse { status: Released });
        assert_eq!(decide_release(Held), Decision::Apply(Movement::Release));
        assert_eq!(decide_release(Released), Decision::AlreadyDone);
        assert_eq!(decide_release(Committed), Decision::Refuse { status: Committed });
        assert_eq!(decide_cancel(Held), Decision::Apply(Movement::Release));
        assert_eq!(decide_cancel(Committed), Decision::Apply(Movement::ReturnSold));
        assert_eq!(decide_cancel(Released), Decision::AlreadyDone);
    }

    #[test]
    fn statuses_and_reasons_round_trip_through_their_column_text() {
        for status in [ReservationStatus::Held, ReservationStatus::Committed, ReservationStatus::Released] {
            assert_eq!(ReservationStatus::parse(status.as_str()), Some(status));
        }
        for reason in [ReleaseReason::Expired, ReleaseReason::PaymentFailed, ReleaseReason::Cancelled] {
            assert_eq!(ReleaseReason::parse(reason.as_str()), Some(reason));
        }
        assert_eq!(ReservationStatus::parse("held"), None);
    }

    #[test]
    fn the_ttl_defaults_and_is_capped() {
        let default = Duration::from_secs(900);
        let max = Duration::from_secs(3600);
        assert_eq!(reservation_ttl(None, default, max), default);
        assert_eq!(reservation_ttl(Some(Duration::ZERO), default, max), default);
        assert_eq!(reservation_ttl(Some(Duration::from_secs(60)), default, max), Duration::from_secs(60));
        assert_eq!(reservation_ttl(Some(Duration::from_secs(7200)), default, max), max);
    }

    #[test]
    fn availability_compares_requested_with_available() {
        assert!(is_available(3, 3));
        assert!(!is_available(4, 3));
        assert!(!is_available(1, 0));
    }
}
