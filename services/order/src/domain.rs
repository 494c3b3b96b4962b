//! The order's rules, free of I/O: validating and pricing a placement, and the
//! saga's state machine that decides what every incoming fact does to an
//! order and which event (if any) it publishes.
//!
//! The state machine is a pure function of (current saga state, input): the
//! store loads the row under a lock, calls [`apply`] or [`cancel`], and writes
//! the new state and the effect's event in one transaction. Every input is
//! idempotent (a duplicate changes nothing) and the machine tolerates the
//! arrival orders Kafka allows across topics: a payment may be captured before
//! the order has heard of its reservation, a shipment may be delivered before
//! the order has seen it picked up.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Utc};

/// Where an order is in its life; mirrors `commerce.order.v1.OrderStatus`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OrderStatus {
    /// Stored and priced; no reservation known yet.
    Pending,
    /// Stock is held; waiting for the payment.
    Reserved,
    /// Paid and stock held: the happy path's stable state.
    Confirmed,
    /// Refused for lack of stock. Terminal.
    Rejected,
    /// Payment failed or the reservation expired. Terminal.
    Failed,
    /// Cancelled by the customer or an admin. Terminal.
    Cancelled,
    /// A courier has the parcel.
    Shipped,
    /// The parcel reached the customer. Terminal.
    Delivered,
}

impl OrderStatus {
    /// Every status, for tests and exhaustive checks.
    pub const ALL: [OrderStatus; 8] = [
        Self::Pending,
        Self::Reserved,
        Self::Confirmed,
        Self::Rejected,
        Self::Failed,
        Self::Cancelled,
        Self::Shipped,
        Self::Delivered,
    ];

    /// The name stored in the database.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "PENDING",
            Self::Reserved => "RESERVED",
            Self::Confirmed => "CONFIRMED",
            Self::Rejected => "REJECTED",
            Self::Failed => "FAILED",
            Self::Cancelled => "CANCELLED",
            Self::Shipped => "SHIPPED",
            Self::Delivered => "DELIVERED",
        }
    }

    /// Parses a stored name.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|status| status.as_str() == name)
    }

    /// Terminal states never change status again.
    pub const fn is_terminal(self) -> bool {
        matches!(self, Self::Rejected | Self::Failed | Self::Cancelled | Self::Delivered)
    }

    /// Still waiting for reservation and/or payment.
    const fn is_open(self) -> bool {
        matches!(self, Self::Pending | Self::Reserved)
    }
}

impl fmt::Display for OrderStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why an order failed; mirrors `OrderFailed.Reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The provider refused the payment method.
    PaymentDeclined,
    /// The provider could not be reached.
    PaymentUnavailable,
    /// The reservation expired before the payment was captured.
    ReservationExpired,
}

/// The part of an order the saga changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SagaState {
    pub status: OrderStatus,
    /// The reservation inventory made, once known.
    pub reservation_id: Option<String>,
    /// When that reservation lapses unless the order is confirmed.
    pub reservation_expires_at: Option<DateTime<Utc>>,
    /// The captured payment, once known (recorded even on a dead order, so
    /// the customer sees the refund's subject).
    pub payment_id: Option<String>,
    /// The shipment, once shipping created it.
    pub shipment_id: Option<String>,
    /// Whether a refund of the payment was seen.
    pub refunded: bool,
    /// Why the order was rejected, failed or cancelled; empty otherwise.
    pub failure_reason: String,
}

impl SagaState {
    /// A freshly placed order.
    pub fn placed() -> Self {
        Self {
            status: OrderStatus::Pending,
            reservation_id: None,
            reservation_expires_at: None,
            payment_id: None,
            shipment_id: None,
            refunded: false,
            failure_reason: String::new(),
        }
    }
}

/// A fact the order learns from another service (or from its own sweeper).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SagaInput {
    /// Inventory holds every line until `expires_at`.
    StockReserved { reservation_id: String, expires_at: DateTime<Utc> },
    /// Inventory could not serve some lines.
    StockReservationFailed { unavailable_product_ids: Vec<String> },
    /// Payment took the money.
    PaymentCaptured { payment_id: String },
    /// Payment could not take the money.
    PaymentFailed { declined: bool, detail: String },
    /// Money was given back.
    PaymentRefunded,
    /// The sweeper's clock reading: fails the order if its reservation lapsed.
    ReservationClock { now: DateTime<Utc> },
    /// Shipping created the shipment.
    ShipmentCreated { shipment_id: String },
    /// A courier picked the parcel up or it is in transit.
    ShipmentMoving { shipment_id: String },
    /// The parcel was delivered.
    ShipmentDelivered { shipment_id: String },
}

/// The event a step publishes, to be built from the order row by the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// `OrderConfirmed`.
    Confirmed,
    /// `OrderRejected`.
    Rejected { unavailable_product_ids: Vec<String> },
    /// `OrderFailed`.
    Failed { kind: FailureKind, detail: String },
    /// `OrderCancelled`.
    Cancelled { reason: String },
    /// `OrderDelivered`.
    Delivered,
}

/// The outcome of one input: the state to store and the event to publish.
/// `state` equal to the input state means "nothing to write".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub state: SagaState,
    pub effect: Option<Effect>,
}

/// Applies `input` to `state`. Never fails: an input that does not fit the
/// current state (a duplicate, a late fact about a dead order) changes at
/// most a recorded reference and publishes nothing.
pub fn apply(state: &SagaState, input: SagaInput) -> Step {
    let mut next = state.clone();
    let mut effect = None;
    match input {
        SagaInput::StockReserved { reservation_id, expires_at } => {
            if next.reservation_id.is_none() {
                next.reservation_id = Some(reservation_id);
                next.reservation_expires_at = Some(expires_at);
            }
            if next.status == OrderStatus::Pending {
                next.status = OrderStatus::Reserved;
                effect = confirm_if_complete(&mut next);
            }
        }
        SagaInput::StockReservationFailed { unavailable_product_ids } => {
            // Only an order without a reservation can be refused stock; a
            // contradicting event about a reserved order is ignored.
            if next.status == OrderStatus::Pending {
                next.status = OrderStatus::Rejected;
                next.failure_reason = if unavailable_product_ids.is_empty() {
                    "out of stock".to_owned()
                } else {
                    format!("out of stock: {}", unavailable_product_ids.join(", "))
                };
                effect = Some(Effect::Rejected { unavailable_product_ids });
            }
        }
        SagaInput::PaymentCaptured { payment_id } => {
            if next.payment_id.is_none() {
                next.payment_id = Some(payment_id);
            }
            if next.status == OrderStatus::Reserved {
                effect = confirm_if_complete(&mut next);
            }
        }
        SagaInput::PaymentFailed { declined, detail } => {
            if next.status.is_open() {
                let kind =
                    if declined { FailureKind::PaymentDeclined } else { FailureKind::PaymentUnavailable };
                next.status = OrderStatus::Failed;
                next.failure_reason = if detail.is_empty() {
                    "payment failed".to_owned()
                } else {
                    format!("payment failed: {detail}")
                };
                effect = Some(Effect::Failed { kind, detail });
            }
        }
        SagaInput::PaymentRefunded => next.refunded = true,
        SagaInput::ReservationClock { now } => {
            if next.status.is_open() && next.reservation_expires_at.is_some_and(|expires| expires <= now) {
                next.status = OrderStatus::Failed;
                next.failure_reason = "the stock reservation expired before payment".to_owned();
                effect = Some(Effect::Failed {
                    kind: FailureKind::ReservationExpired,
                    detail: "reservation expired".to_owned(),
                });
            }
        }
        SagaInput::ShipmentCreated { shipment_id } => {
            if next.shipment_id.is_none() {
                next.shipment_id = Some(shipment_id);
            }
        }
        SagaInput::ShipmentMoving { shipment_id } => {
            if next.shipment_id.is_none() {
                next.shipment_id = Some(shipment_id);
            }
            if next.status == OrderStatus::Confirmed {
                next.status = OrderStatus::Shipped;
            }
        }
        SagaInput::ShipmentDelivered { shipment_id } => {
            if next.shipment_id.is_none() {
                next.shipment_id = Some(shipment_id);
            }
            if matches!(next.status, OrderStatus::Confirmed | OrderStatus::Shipped) {
                next.status = OrderStatus::Delivered;
                effect = Some(Effect::Delivered);
            }
        }
    }
    Step { state: next, effect }
}

/// Confirms a reserved order once its payment is recorded.
fn confirm_if_complete(state: &mut SagaState) -> Option<Effect> {
    if state.status == OrderStatus::Reserved && state.payment_id.is_some() && state.reservation_id.is_some() {
        state.status = OrderStatus::Confirmed;
        Some(Effect::Confirmed)
    } else {
        None
    }
}

/// Why an order cannot be cancelled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("an order in status {status} cannot be cancelled")]
pub struct CancelRefused {
    pub status: OrderStatus,
}

/// Cancels an order that has not shipped. Cancelling a cancelled order is a
/// no-op (idempotent); shipped, delivered, rejected or failed orders refuse.
pub fn cancel(state: &SagaState, reason: &str) -> Result<Step, CancelRefused> {
    match state.status {
        OrderStatus::Cancelled => Ok(Step { state: state.clone(), effect: None }),
        OrderStatus::Pending | OrderStatus::Reserved | OrderStatus::Confirmed => {
            let mut next = state.clone();
            next.status = OrderStatus::Cancelled;
            next.failure_reason = if reason.is_empty() { "cancelled".to_owned() } else { reason.to_owned() };
            Ok(Step { state: next, effect: Some(Effect::Cancelled { reason: reason.to_owned() }) })
        }
        status @ (OrderStatus::Rejected
        | OrderStatus::Failed
        | OrderStatus::Shipped
        | OrderStatus::Delivered) => Err(CancelRefused { status }),
    }
}

/// One requested line, as the client sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestedLine {
    pub product_id: String,
    pub quantity: u32,
}

/// The catalog's view of a product, as far as pricing needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogProduct {
    pub id: String,
    pub sku: String,
    pub name: String,
    pub currency: String,
    pub unit_price: i64,
    pub active: bool,
}

/// A line priced from the catalog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PricedLine {
    pub product_id: String,
    pub sku: String,
    pub name: String,
    pub quantity: u32,
    pub unit_price: i64,
    pub line_total: i64,
}

/// A placement priced from the catalog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PricedOrder {
    pub currency: String,
    pub lines: Vec<PricedLine>,
    pub total: i64,
}

/// Why a placement is invalid; each names the offending field or product.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    #[error("{field}: {problem}")]
    Field { field: String, problem: &'static str },
    #[error("product {product_id} does not exist")]
    UnknownProduct { product_id: String },
    #[error("product {product_id} is not for sale")]
    InactiveProduct { product_id: String },
    #[error("product {product_id} is priced in {found}, other lines in {expected}")]
    MixedCurrencies { product_id: String, expected: String, found: String },
    #[error("the total of the order overflows")]
    TotalOverflow,
}

/// Checks the request's lines and merges repeated products, keeping the
/// first appearance's position. Quantities must be positive.
pub fn normalize_lines(lines: &[RequestedLine]) -> Result<Vec<RequestedLine>, PlacementError> {
    if lines.is_empty() {
        return Err(PlacementError::Field {
            field: "lines".to_owned(),
            problem: "an order needs at least one line",
        });
    }
    let mut merged: Vec<RequestedLine> = Vec::new();
    for (index, line) in lines.iter().enumerate() {
        if line.product_id.trim().is_empty() {
            return Err(PlacementError::Field {
                field: format!("lines[{index}].product_id"),
                problem: "is empty",
            });
        }
        if line.quantity == 0 {
            return Err(PlacementError::Field {
                field: format!("lines[{index}].quantity"),
                problem: "must be positive",
            });
        }
        match merged.iter_mut().find(|existing| existing.product_id == line.product_id) {
            Some(existing) => {
                existing.quantity =
                    existing.quantity.checked_add(line.quantity).ok_or_else(|| PlacementError::Field {
                        field: format!("lines[{index}].quantity"),
                        problem: "is too large",
                    })?
            }
            None => merged.push(line.clone()),
        }
    }
    Ok(merged)
}

/// Prices normalized lines with the catalog's products. Client prices do not
/// exist in the request: every amount comes from here.
pub fn price(lines: &[RequestedLine], products: &[CatalogProduct]) -> Result<PricedOrder, PlacementError> {
    let by_id: BTreeMap<&str, &CatalogProduct> =
        products.iter().map(|product| (product.id.as_str(), product)).collect();
    let mut currency: Option<&str> = None;
    let mut priced = Vec::with_capacity(lines.len());
    let mut total: i64 = 0;
    for line in lines {
        let product = by_id
            .get(line.product_id.as_str())
            .ok_or_else(|| PlacementError::UnknownProduct { product_id: line.product_id.clone() })?;
        if !product.active {
            return Err(PlacementError::InactiveProduct { product_id: line.product_id.clone() });
        }
        match currency {
            None => currency = Some(&product.currency),
            Some(expected) if expected != product.currency => {
                return Err(PlacementError::MixedCurrencies {
                    product_id: line.product_id.clone(),
                    expected: expected.to_owned(),
                    found: product.currency.clone(),
                });
            }
            Some(_) => {}
        }
        let line_total =
            product.unit_price.checked_mul(i64::from(line.quantity)).ok_or(PlacementError::TotalOverflow)?;
        total = total.checked_add(line_total).ok_or(PlacementError::TotalOverflow)?;
        priced.push(PricedLine {
            product_id: line.product_id.clone(),
            sku: product.sku.clone(),
            name: product.name.clone(),
            quantity: line.quantity,
            unit_price: product.unit_price,
            line_total,
        });
    }
    Ok(PricedOrder { currency: currency.unwrap_or_default().to_owned(), lines: priced, total })
}

/// A stable fingerprint of a placement's normalized lines, stored with the
/// order so that a repeated idempotency key with different lines is told
/// apart from a genuine retry.
pub fn fingerprint(lines: &[RequestedLine]) -> String {
    let mut sorted: Vec<(&str, u32)> =
        lines.iter().map(|line| (line.product_id.as_str(), line.quantity)).collect();
    sorted.sort_unstable();
    sorted.iter().map(|(id, quantity)| format!("{id}x{quantity}")).collect::<Vec<_>>().join(";")
}

#[cfg(test)]
mod tests {
    use chrono::Duration;

    use super::*;

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + seconds, 0).expect("valid time")
    }

    fn reserved(id: &str) -> SagaInput {
        SagaInput::StockReserved { reservation_id: id.to_owned(), expires_at: at(900) }
    }

    fn captured(id: &str) -> SagaInput {
        SagaInput::PaymentCaptured { payment_id: id.to_owned() }
    }

    /// Applies inputs in order, collecting effects.
    fn run(inputs: impl IntoIterator<Item = SagaInput>) -> (SagaState, Vec<Effect>) {
        let mut state = SagaState::placed();
        let mut effects = Vec::new();
        for input in inputs {
            let step = apply(&state, input);
            state = step.state;
            effects.extend(step.effect);
        }
        (state, effects)
    }

    fn in_status(status: OrderStatus) -> SagaState {
        SagaState { status, ..SagaState::placed() }
    }

    #[test]
    fn reservation_then_payment_confirms_once() {
        let (state, effects) = run([reserved("r1"), captured("p1")]);
        assert_eq!(state.status, OrderStatus::Confirmed);
        assert_eq!(state.reservation_id.as_deref(), Some("r1"));
        assert_eq!(state.payment_id.as_deref(), Some("p1"));
        assert_eq!(effects, [Effect::Confirmed]);
    }

    #[test]
    fn payment_before_reservation_confirms_when_the_reservation_arrives() {
        let (state, effects) = run([captured("p1")]);
        assert_eq!(state.status, OrderStatus::Pending, "a payment alone does not confirm");
        assert!(effects.is_empty());
        let (state, effects) = run([captured("p1"), reserved("r1")]);
        assert_eq!(state.status, OrderStatus::Confirmed);
        assert_eq!(effects, [Effect::Confirmed]);
    }

    #[test]
    fn duplicate_events_change_nothing_and_publish_nothing_twice() {
        let (state, effects) =
            run([reserved("r1"), reserved("r1"), captured("p1"), captured("p1"), reserved("r1")]);
        assert_eq!(state.status, OrderStatus::Confirmed);
        assert_eq!(effects, [Effect::Confirmed]);
        let again = apply(&state, captured("p1"));
        assert_eq!(again.state, state);
        assert_eq!(again.effect, None);
    }

    #[test]
    fn a_second_reservation_id_does_not_replace_the_first() {
        let (state, _) = run([reserved("r1"), reserved("r2")]);
        assert_eq!(state.reservation_id.as_deref(), Some("r1"));
    }

    #[test]
    fn out_of_stock_rejects_a_pending_order_only() {
        let failed = SagaInput::StockReservationFailed { unavailable_product_ids: vec!["sku-1".to_owned()] };
        let (state, effects) = run([failed.clone()]);
        assert_eq!(state.status, OrderStatus::Rejected);
        assert!(state.failure_reason.contains("sku-1"));
        assert_eq!(effects, [Effect::Rejected { unavailable_product_ids: vec!["sku-1".to_owned()] }]);

        let (state, effects) = run([reserved("r1"), failed]);
        assert_eq!(state.status, OrderStatus::Reserved, "a contradicting refusal is ignored");
        assert!(effects.is_empty());
    }

    #[test]
    fn a_declined_payment_fails_the_order_in_either_open_state() {
        for prefix in [vec![], vec![reserved("r1")]] {
            let mut inputs = prefix;
            inputs.push(SagaInput::PaymentFailed { declined: true, detail: "card declined".to_owned() });
            let (state, effects) = run(inputs);
            assert_eq!(state.status, OrderStatus::Failed);
            assert_eq!(
                effects,
                [Effect::Failed { kind: FailureKind::PaymentDeclined, detail: "card declined".to_owned() }]
            );
        }
    }

    #[test]
    fn an_unavailable_provider_failure_is_told_apart_from_a_decline() {
        let (_, effects) = run([SagaInput::PaymentFailed { declined: false, detail: String::new() }]);
        assert!(matches!(effects[..], [Effect::Failed { kind: FailureKind::PaymentUnavailable, .. }]));
    }

    #[test]
    fn a_payment_captured_after_failure_is_recorded_but_changes_nothing_else() {
        let (state, effects) = run([
            reserved("r1"),
            SagaInput::ReservationClock { now: at(901) },
            captured("p-late"),
            reserved("r1"),
        ]);
        assert_eq!(state.status, OrderStatus::Failed);
        assert_eq!(state.payment_id.as_deref(), Some("p-late"), "kept so the refund can be shown");
        assert_eq!(
            effects,
            [Effect::Failed {
                kind: FailureKind::ReservationExpired,
                detail: "reservation expired".to_owned()
            }]
        );
    }

    #[test]
    fn the_reservation_clock_fails_only_lapsed_unconfirmed_orders() {
        let (state, effects) = run([reserved("r1"), SagaInput::ReservationClock { now: at(899) }]);
        assert_eq!(state.status, OrderStatus::Reserved, "not yet expired");
        assert!(effects.is_empty());

        let (state, effects) = run([SagaInput::ReservationClock { now: at(10_000) }]);
        assert_eq!(state.status, OrderStatus::Pending, "no reservation, nothing to expire");
        assert!(effects.is_empty());

        let (state, effects) = run([
            reserved("r1"),
            captured("p1"),
            SagaInput::ReservationClock { now: at(901) + Duration::hours(1) },
        ]);
        assert_eq!(state.status, OrderStatus::Confirmed, "confirmation commits the stock");
        assert_eq!(effects, [Effect::Confirmed]);
    }

    #[test]
    fn terminal_orders_ignore_every_saga_input() {
        let inputs = [
            reserved("r9"),
            SagaInput::StockReservationFailed { unavailable_product_ids: vec![] },
            captured("p9"),
            SagaInput::PaymentFailed { declined: true, detail: String::new() },
            SagaInput::ReservationClock { now: at(1_000_000) },
            SagaInput::ShipmentMoving { shipment_id: "s9".to_owned() },
            SagaInput::ShipmentDelivered { shipment_id: "s9".to_owned() },
        ];
        for status in OrderStatus::ALL.into_iter().filter(|status| status.is_terminal()) {
            for input in inputs.clone() {
                let step = apply(&in_status(status), input.clone());
                assert_eq!(step.state.status, status, "{status} changed on {input:?}");
                assert_eq!(step.effect, None, "{status} published on {input:?}");
            }
        }
    }

    #[test]
    fn shipment_events_move_a_confirmed_order_to_shipped_and_delivered() {
        let (state, effects) = run([
            reserved("r1"),
            captured("p1"),
            SagaInput::ShipmentCreated { shipment_id: "s1".to_owned() },
            SagaInput::ShipmentMoving { shipment_id: "s1".to_owned() },
            SagaInput::ShipmentMoving { shipment_id: "s1".to_owned() },
            SagaInput::ShipmentDelivered { shipment_id: "s1".to_owned() },
            SagaInput::ShipmentDelivered { shipment_id: "s1".to_owned() },
        ]);
        assert_eq!(state.status, OrderStatus::Delivered);
        assert_eq!(state.shipment_id.as_deref(), Some("s1"));
        assert_eq!(effects, [Effect::Confirmed, Effect::Delivered]);
    }

    #[test]
    fn delivery_seen_before_pickup_still_delivers() {
        let (state, effects) = run([
            reserved("r1"),
            captured("p1"),
            SagaInput::ShipmentDelivered { shipment_id: "s1".to_owned() },
        ]);
        assert_eq!(state.status, OrderStatus::Delivered);
        assert_eq!(effects, [Effect::Confirmed, Effect::Delivered]);
        let late_pickup = apply(&state, SagaInput::ShipmentMoving { shipment_id: "s1".to_owned() });
        assert_eq!(late_pickup.state.status, OrderStatus::Delivered);
    }

    #[test]
    fn shipment_events_do_not_move_unconfirmed_orders() {
        for status in [OrderStatus::Pending, OrderStatus::Reserved] {
            let step =
                apply(&in_status(status), SagaInput::ShipmentDelivered { shipment_id: "s1".to_owned() });
            assert_eq!(step.state.status, status);
            assert_eq!(step.effect, None);
        }
    }

    #[test]
    fn a_refund_is_recorded_in_any_state() {
        for status in OrderStatus::ALL {
            let step = apply(&in_status(status), SagaInput::PaymentRefunded);
            assert!(step.state.refunded);
            assert_eq!(step.state.status, status);
            assert_eq!(step.effect, None);
        }
    }

    #[test]
    fn cancel_is_allowed_until_shipping_and_is_idempotent() {
        for status in OrderStatus::ALL {
            let outcome = cancel(&in_status(status), "changed my mind");
            match status {
                OrderStatus::Pending | OrderStatus::Reserved | OrderStatus::Confirmed => {
                    let step = outcome.expect("cancellable");
                    assert_eq!(step.state.status, OrderStatus::Cancelled);
                    assert_eq!(step.effect, Some(Effect::Cancelled { reason: "changed my mind".to_owned() }));
                }
                OrderStatus::Cancelled => {
                    let step = outcome.expect("idempotent");
                    assert_eq!(step.state, in_status(OrderStatus::Cancelled));
                    assert_eq!(step.effect, None);
                }
                OrderStatus::Rejected
                | OrderStatus::Failed
                | OrderStatus::Shipped
                | OrderStatus::Delivered => {
                    assert_eq!(outcome, Err(CancelRefused { status }));
                }
            }
        }
    }

    #[test]
    fn a_payment_after_cancellation_does_not_resurrect_the_order() {
        let cancelled = cancel(&apply(&SagaState::placed(), reserved("r1")).state, "").expect("cancel").state;
        let step = apply(&cancelled, captured("p1"));
        assert_eq!(step.state.status, OrderStatus::Cancelled);
        assert_eq!(step.effect, None);
    }

    #[test]
    fn statuses_round_trip_through_their_stored_names() {
        for status in OrderStatus::ALL {
            assert_eq!(OrderStatus::parse(status.as_str()), Some(status));
        }
        assert_eq!(OrderStatus::parse("PAID"), None);
    }

    fn product(id: &str, currency: &str, price: i64, active: bool) -> CatalogProduct {
        CatalogProduct {
            id: id.to_owned(),
            sku: format!("SKU-{id}"),
            name: format!("Product {id}"),
            currency: currency.to_owned(),
            unit_price: price,
            active,
        }
    }

    fn line(id: &str, quantity: u32) -> RequestedLine {
        RequestedLine { product_id: id.to_owned(), quantity }
    }

    #[test]
    fn lines_are_merged_and_bad_lines_name_their_field() {
        let merged = normalize_lines(&[line("a", 1), line("b", 2), line("a", 3)]).expect("valid");
        assert_eq!(merged, [line("a", 4), line("b", 2)]);
        let error = normalize_lines(&[line("a", 1), line("b", 0)]).expect_err("zero quantity");
        assert_eq!(error.to_string(), "lines[1].quantity: must be positive");
        let error = normalize_lines(&[line(" ", 1)]).expect_err("empty id");
        assert_eq!(error.to_string(), "lines[0].product_id: is empty");
        assert!(normalize_lines(&[]).expect_err("empty").to_string().starts_with("lines:"));
    }

    #[test]
    fn prices_come_from_the_catalog_and_sum_exactly() {
        let priced = price(
            &[line("a", 3), line("b", 1)],
            &[product("a", "EUR", 1999, true), product("b", "EUR", 1, true)],
        )
        .expect("priced");
        assert_eq!(priced.currency, "EUR");
        assert_eq!(priced.total, 3 * 1999 + 1);
        assert_eq!(priced.lines[0].line_total, 5997);
        assert_eq!(priced.lines[0].sku, "SKU-a");
    }

    #[test]
    fn unknown_inactive_and_mixed_currency_products_are_named() {
        let catalog =
            [product("a", "EUR", 100, true), product("b", "USD", 100, true), product("c", "EUR", 1, false)];
        assert_eq!(
            price(&[line("zz", 1)], &catalog),
            Err(PlacementError::UnknownProduct { product_id: "zz".to_owned() })
        );
        assert_eq!(
            price(&[line("c", 1)], &catalog),
            Err(PlacementError::InactiveProduct { product_id: "c".to_owned() })
        );
        let mixed = price(&[line("a", 1), line("b", 1)], &catalog).expect_err("mixed");
        assert!(mixed.to_string().contains("product b is priced in USD"), "{mixed}");
        assert_eq!(
            price(&[line("a", u32::MAX)], &[product("a", "EUR", i64::MAX / 2, true)]),
            Err(PlacementError::TotalOverflow)
        );
    }

    #[test]
    fn fingerprints_ignore_line_order_but_not_quantities() {
        assert_eq!(fingerprint(&[line("a", 1), line("b", 2)]), fingerprint(&[line("b", 2), line("a", 1)]));
        assert_ne!(fingerprint(&[line("a", 1)]), fingerprint(&[line("a", 2)]));
    }
}
