//! Which events become notifications, and what they say. Pure: a decoded
//! event in, a [`Draft`] (or nothing) out. One user-visible step, one
//! notification; steps the customer does not see (a payment captured, a
//! courier assigned, stock moved) produce none.

use commerce_proto::events::v1 as ev;
use commerce_proto::notification::v1::NotificationKind;

/// A notification to store, before it has an id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Draft {
    pub user_id: String,
    pub kind: NotificationKind,
    pub title: String,
    pub body: String,
    /// The order concerned; empty for none.
    pub order_id: String,
}

fn draft(user_id: &str, kind: NotificationKind, title: &str, body: String, order_id: &str) -> Option<Draft> {
    if user_id.is_empty() {
        return None;
    }
    Some(Draft {
        user_id: user_id.to_owned(),
        kind,
        title: title.to_owned(),
        body,
        order_id: order_id.to_owned(),
    })
}

fn amount(money: Option<&commerce_proto::common::v1::Money>) -> String {
    match money {
        Some(money) => {
            let sign = if money.units < 0 { "-" } else { "" };
            let units = money.units.unsigned_abs();
            format!("{sign}{}.{:02} {}", units / 100, units % 100, money.currency_code)
        }
        None => "the amount".to_owned(),
    }
}

pub fn welcome(e: &ev::UserRegistered) -> Option<Draft> {
    let body = "Your account is ready: browse the catalog, and follow every order here.".to_owned();
    draft(&e.user_id, NotificationKind::Welcome, "Welcome", body, "")
}

pub fn order_placed(e: &ev::OrderPlaced) -> Option<Draft> {
    let body = format!("We received your order {} of {}.", e.order_id, amount(e.total.as_ref()));
    draft(&e.user_id, NotificationKind::OrderPlaced, "Order received", body, &e.order_id)
}

pub fn order_confirmed(e: &ev::OrderConfirmed) -> Option<Draft> {
    let body = format!("Your order {} is paid ({}) and confirmed.", e.order_id, amount(e.total.as_ref()));
    draft(&e.user_id, NotificationKind::OrderConfirmed, "Order confirmed", body, &e.order_id)
}

pub fn order_rejected(e: &ev::OrderRejected) -> Option<Draft> {
    let body = format!("Your order {} could not be accepted: {}. Nothing was charged.", e.order_id, e.reason);
    draft(&e.user_id, NotificationKind::OrderRejected, "Order not accepted", body, &e.order_id)
}

pub fn order_failed(e: &ev::OrderFailed) -> Option<Draft> {
    let why = match e.reason() {
        ev::order_failed::Reason::PaymentDeclined => "the payment was declined",
        ev::order_failed::Reason::PaymentUnavailable => "the payment could not be made",
        ev::order_failed::Reason::ReservationExpired => "the payment did not arrive in time",
        ev::order_failed::Reason::Unspecified => "of a problem",
    };
    let body = format!("Your order {} failed because {why}.", e.order_id);
    draft(&e.user_id, NotificationKind::OrderFailed, "Order failed", body, &e.order_id)
}

pub fn order_cancelled(e: &ev::OrderCancelled) -> Option<Draft> {
    let refund = if e.was_paid { " Your payment will be refunded." } else { "" };
    let body = format!("Your order {} was cancelled.{refund}", e.order_id);
    draft(&e.user_id, NotificationKind::OrderCancelled, "Order cancelled", body, &e.order_id)
}

pub fn payment_refunded(e: &ev::PaymentRefunded) -> Option<Draft> {
    let body = format!("{} was refunded for order {}.", amount(e.amount.as_ref()), e.order_id);
    draft(&e.user_id, NotificationKind::PaymentRefunded, "Refund issued", body, &e.order_id)
}

pub fn shipment_created(e: &ev::ShipmentCreated) -> Option<Draft> {
    let body = format!("Your order {} will ship; tracking number {}.", e.order_id, e.tracking_number);
    draft(&e.user_id, NotificationKind::ShipmentCreated, "Shipment created", body, &e.order_id)
}

pub fn shipment_status_changed(e: &ev::ShipmentStatusChanged) -> Option<Draft> {
    match e.status() {
        ev::ShipmentStatus::PickedUp => {
            let body = format!("A courier picked up your order {}.", e.order_id);
            draft(&e.user_id, NotificationKind::OrderShipped, "Order shipped", body, &e.order_id)
        }
        ev::ShipmentStatus::InTransit => {
            let body = format!("Your order {} is on its way.", e.order_id);
            draft(&e.user_id, NotificationKind::ShipmentInTransit, "On its way", body, &e.order_id)
        }
        // Assignment is internal; terminal moves have events of their own.
        _ => None,
    }
}

pub fn shipment_delivered(e: &ev::ShipmentDelivered) -> Option<Draft> {
    let body = format!("Your order {} was delivered.", e.order_id);
    draft(&e.user_id, NotificationKind::OrderDelivered, "Delivered", body, &e.order_id)
}

pub fn shipment_halted(e: &ev::ShipmentHalted) -> Option<Draft> {
    let body = format!("The shipment of your order {} was stopped: {}.", e.order_id, e.reason);
    draft(&e.user_id, NotificationKind::ShipmentHalted, "Shipment stopped", body, &e.order_id)
}

#[cfg(test)]
mod tests {
    use commerce_proto::common::v1::Money;

    use super::*;

    #[test]
    fn a_placed_order_tells_the_user_the_exact_amount() {
        let event = ev::OrderPlaced {
            order_id: "o1".to_owned(),
            user_id: "u1".to_owned(),
            total: Some(Money { currency_code: "EUR".to_owned(), units: 1999 }),
            ..Default::default()
        };
        let draft = order_placed(&event).expect("a notification");
        assert_eq!(draft.kind, NotificationKind::OrderPlaced);
        assert_eq!(draft.user_id, "u1");
        assert!(draft.body.contains("19.99 EUR"), "{}", draft.body);
    }

    #[test]
    fn only_pickup_and_transit_moves_notify() {
        let mut event = ev::ShipmentStatusChanged {
            order_id: "o".to_owned(),
            user_id: "u".to_owned(),
            ..Default::default()
        };
        event.set_status(ev::ShipmentStatus::Assigned);
        assert_eq!(shipment_status_changed(&event), None);
        event.set_status(ev::ShipmentStatus::PickedUp);
        assert_eq!(shipment_status_changed(&event).map(|d| d.kind), Some(NotificationKind::OrderShipped));
        event.set_status(ev::ShipmentStatus::InTransit);
        assert_eq!(
            shipment_status_changed(&event).map(|d| d.kind),
            Some(NotificationKind::ShipmentInTransit)
        );
    }

    #[test]
    fn events_without_a_user_notify_nobody() {
        assert_eq!(order_confirmed(&ev::OrderConfirmed::default()), None);
    }

    #[test]
    fn a_cancelled_paid_order_mentions_the_refund() {
        let event = ev::OrderCancelled {
            order_id: "o".to_owned(),
            user_id: "u".to_owned(),
            was_paid: true,
            ..Default::default()
        };
        assert!(order_cancelled(&event).expect("draft").body.contains("refunded"));
    }
}
