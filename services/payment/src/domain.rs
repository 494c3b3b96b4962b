//! Payment rules, free of I/O: when a payment may be charged, what a provider
//! answer or a dead order does to it, how refunds are bounded, and the retry
//! schedule while the provider is away.

use std::fmt;
use std::time::Duration;

/// Where a payment is in its life; mirrors `commerce.payment.v1.PaymentStatus`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PaymentStatus {
    /// Not charged yet: waiting for the intent and the stock, or for the
    /// provider to answer.
    Pending,
    /// The money was taken.
    Captured,
    /// The provider refused the payment method. Terminal.
    Declined,
    /// Every captured unit was given back. Terminal.
    Refunded,
    /// Some of the captured amount was given back.
    PartiallyRefunded,
    /// The charge could not be made. Terminal.
    Failed,
    /// The order died before the charge; never charged. Terminal.
    Cancelled,
}

impl PaymentStatus {
    pub const ALL: [PaymentStatus; 7] = [
        Self::Pending,
        Self::Captured,
        Self::Declined,
        Self::Refunded,
        Self::PartiallyRefunded,
        Self::Failed,
        Self::Cancelled,
    ];

    /// The name stored in the database.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "PENDING",
            Self::Captured => "CAPTURED",
            Self::Declined => "DECLINED",
            Self::Refunded => "REFUNDED",
            Self::PartiallyRefunded => "PARTIALLY_REFUNDED",
            Self::Failed => "FAILED",
            Self::Cancelled => "CANCELLED",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|status| status.as_str() == name)
    }

    /// Money was taken and not all of it given back.
    pub const fn holds_money(self) -> bool {
        matches!(self, Self::Captured | Self::PartiallyRefunded)
    }
}

impl fmt::Display for PaymentStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the saga knows about a payment: the charge happens only when the
/// order's intent (OrderPlaced) and its stock (StockReserved) are both in,
/// whichever came first.
pub const fn ready_to_charge(status: PaymentStatus, intent_received: bool, stock_reserved: bool) -> bool {
    matches!(status, PaymentStatus::Pending) && intent_received && stock_reserved
}

/// What a dead order (failed, rejected or cancelled) does to its payment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadOrderAction {
    /// Not charged yet: never charge it.
    Cancel,
    /// Money was taken: give the rest back.
    Refund,
    /// Nothing was taken or everything was already returned.
    Nothing,
}

pub const fn on_order_dead(status: PaymentStatus) -> DeadOrderAction {
    match status {
        PaymentStatus::Pending => DeadOrderAction::Cancel,
        PaymentStatus::Captured | PaymentStatus::PartiallyRefunded => DeadOrderAction::Refund,
        PaymentStatus::Declined
        | PaymentStatus::Refunded
        | PaymentStatus::Failed
        | PaymentStatus::Cancelled => DeadOrderAction::Nothing,
    }
}

/// Why a refund is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RefundRefused {
    #[error("payment in status {status} holds no money to refund")]
    NotCaptured { status: PaymentStatus },
    #[error("refund amount must be positive, got {requested}")]
    NotPositive { requested: i64 },
    #[error("refund of {requested} exceeds the {remaining} left to refund")]
    ExceedsRemaining { requested: i64, remaining: i64 },
}

/// The amount a refund gives back: `requested`, or everything left when
/// `None`. `committed` counts refunds made or in progress.
pub fn refund_amount(
    status: PaymentStatus,
    captured: i64,
    committed: i64,
    requested: Option<i64>,
) -> Result<i64, RefundRefused> {
    if !status.holds_money() {
        return Err(RefundRefused::NotCaptured { status });
    }
    let remaining = captured.saturating_sub(committed);
    let amount = requested.unwrap_or(remaining);
    if amount <= 0 {
        return Err(RefundRefused::NotPositive { requested: amount });
    }
    if amount > remaining {
        return Err(RefundRefused::ExceedsRemaining { requested: amount, remaining });
    }
    Ok(amount)
}

/// The status once `refunded_total` of `captured` has been given back.
pub const fn status_after_refund(captured: i64, refunded_total: i64) -> PaymentStatus {
    if refunded_total >= captured { PaymentStatus::Refunded } else { PaymentStatus::PartiallyRefunded }
}

/// Delay before charge attempt number `attempts + 1` after `attempts`
/// failures for lack of a provider: exponential from `base`, capped, so
/// orders wait calmly for a provider that is down for minutes and complete
/// soon after it returns.
pub fn retry_delay(attempts: u32, base: Duration, cap: Duration) -> Duration {
    commerce_platform::backoff::step(base, cap, attempts)
}

/// The provider's answer to a charge.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ChargeOutcome {
    /// Money taken; `reference` is the provider's id of the charge.
    Captured { reference: String },
    /// The payment method was refused; retrying will not help.
    Declined { reason: String },
}

/// What voiding a charge key found.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum VoidOutcome {
    /// No money had been taken under the key; none will be.
    NothingCharged,
    /// A capture had been made under the key and was reversed in full;
    /// `reference` is the provider's id of the reversal.
    Reversed { reference: String },
}

impl VoidOutcome {
    /// Stored in `payments.void_outcome` and used as a metric label.
    pub fn as_str(&self) -> &'static str {
        match self {
            VoidOutcome::NothingCharged => "nothing_charged",
            VoidOutcome::Reversed { .. } => "reversed",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_pending_payment_with_intent_and_stock_is_charged() {
        assert!(ready_to_charge(PaymentStatus::Pending, true, true));
        assert!(!ready_to_charge(PaymentStatus::Pending, true, false), "stock not held yet");
        assert!(!ready_to_charge(PaymentStatus::Pending, false, true), "amount not known yet");
        for status in PaymentStatus::ALL.into_iter().filter(|status| *status != PaymentStatus::Pending) {
            assert!(!ready_to_charge(status, true, true), "{status} must never be charged");
        }
    }

    #[test]
    fn a_dead_order_cancels_pending_and_refunds_captured_payments() {
        assert_eq!(on_order_dead(PaymentStatus::Pending), DeadOrderAction::Cancel);
        assert_eq!(on_order_dead(PaymentStatus::Captured), DeadOrderAction::Refund);
        assert_eq!(on_order_dead(PaymentStatus::PartiallyRefunded), DeadOrderAction::Refund);
        for status in [
            PaymentStatus::Declined,
            PaymentStatus::Refunded,
            PaymentStatus::Failed,
            PaymentStatus::Cancelled,
        ] {
            assert_eq!(on_order_dead(status), DeadOrderAction::Nothing);
        }
    }

    #[test]
    fn refunds_are_bounded_by_what_is_left() {
        assert_eq!(refund_amount(PaymentStatus::Captured, 1000, 0, None), Ok(1000));
        assert_eq!(refund_amount(PaymentStatus::PartiallyRefunded, 1000, 400, None), Ok(600));
        assert_eq!(refund_amount(PaymentStatus::Captured, 1000, 0, Some(250)), Ok(250));
        assert_eq!(
            refund_amount(PaymentStatus::Captured, 1000, 900, Some(200)),
            Err(RefundRefused::ExceedsRemaining { requested: 200, remaining: 100 })
        );
        assert_eq!(
            refund_amount(PaymentStatus::Captured, 1000, 0, Some(0)),
            Err(RefundRefused::NotPositive { requested: 0 })
        );
        assert_eq!(
            refund_amount(PaymentStatus::Refunded, 1000, 1000, None),
            Err(RefundRefused::NotCaptured { status: PaymentStatus::Refunded })
        );
        assert_eq!(
            refund_amount(PaymentStatus::Pending, 1000, 0, None),
            Err(RefundRefused::NotCaptured { status: PaymentStatus::Pending })
        );
    }

    #[test]
    fn the_status_after_a_refund_says_whether_all_came_back() {
        assert_eq!(status_after_refund(1000, 1000), PaymentStatus::Refunded);
        assert_eq!(status_after_refund(1000, 999), PaymentStatus::PartiallyRefunded);
    }

    #[test]
    fn retry_delays_grow_and_are_capped() {
        let base = Duration::from_millis(100);
        let cap = Duration::from_secs(5);
        assert_eq!(retry_delay(0, base, cap), Duration::from_millis(100));
        assert_eq!(retry_delay(3, base, cap), Duration::from_millis(800));
        assert_eq!(retry_delay(40, base, cap), cap);
    }

    #[test]
    fn statuses_round_trip_through_their_stored_names() {
        for status in PaymentStatus::ALL {
            assert_eq!(PaymentStatus::parse(status.as_str()), Some(status));
        }
    }
}
