//! The email templates: one per step the customer is told about, plus the
//! welcome. Pure: a notification draft and its recipient in, a subject and a
//! plain-text body out. Plain text on purpose: every client shows it, no
//! remote content is loaded, and nothing in it can be mistaken for markup.

use commerce_proto::notification::v1::NotificationKind;

use crate::domain::Draft;

/// Who an email goes to.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Recipient {
    pub user_id: String,
    pub email: String,
    pub display_name: String,
}

/// A rendered email, before it is queued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// The template's name (`welcome`, `order_confirmed`, ...).
    pub template: &'static str,
    pub subject: String,
    pub body: String,
}

/// The template of each kind: its name, the subject, and the line before the
/// notification's own text.
fn template(kind: NotificationKind) -> (&'static str, &'static str, &'static str) {
    match kind {
        NotificationKind::Welcome => ("welcome", "Welcome to the shop", "your account is ready."),
        NotificationKind::OrderPlaced => {
            ("order_placed", "We received your order", "thank you for your order.")
        }
        NotificationKind::OrderConfirmed => {
            ("order_confirmed", "Your order is confirmed", "good news: your order is confirmed.")
        }
        NotificationKind::OrderRejected => (
            "order_rejected",
            "We could not accept your order",
            "we are sorry: we could not accept your order.",
        ),
        NotificationKind::OrderFailed => {
            ("order_failed", "Your order failed", "we are sorry: your order failed.")
        }
        NotificationKind::OrderCancelled => {
            ("order_cancelled", "Your order is cancelled", "your order is cancelled, as asked.")
        }
        NotificationKind::PaymentRefunded => {
            ("payment_refunded", "Your refund is on its way", "we refunded you.")
        }
        NotificationKind::ShipmentCreated => {
            ("shipment_created", "Your order will ship soon", "your parcel is being prepared.")
        }
        NotificationKind::OrderShipped => {
            ("order_shipped", "Your order has shipped", "your parcel is with the courier.")
        }
        NotificationKind::ShipmentInTransit => {
            ("shipment_in_transit", "Your order is on its way", "your parcel is on its way.")
        }
        NotificationKind::OrderDelivered => {
            ("order_delivered", "Your order was delivered", "your parcel arrived.")
        }
        NotificationKind::ShipmentHalted => {
            ("shipment_halted", "Your shipment was stopped", "we stopped the shipment of your order.")
        }
        NotificationKind::Unspecified => ("notice", "News about your account", "we have news for you."),
    }
}

/// The email telling `recipient` what `draft` says.
pub fn render(draft: &Draft, recipient: &Recipient) -> Rendered {
    let (name, subject, opening) = template(draft.kind);
    let greeting = match recipient.display_name.trim() {
        "" => "Hello".to_owned(),
        name => format!("Hello {name}"),
    };
    let order =
        if draft.order_id.is_empty() { String::new() } else { format!("\nOrder: {}\n", draft.order_id) };
    let body = format!(
        "{greeting},\n\n{opening}\n\n{}\n{order}\n-- \ncommerce-stack\nYou receive this email because you have an account at the shop.\n",
        draft.body
    );
    Rendered { template: name, subject: subject.to_owned(), body }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recipient(name: &str) -> Recipient {
        Recipient {
            user_id: "u1".to_owned(),
            email: "ada@example.com".to_owned(),
            display_name: name.to_owned(),
        }
    }

    fn draft(kind: NotificationKind, order_id: &str) -> Draft {
        Draft {
            user_id: "u1".to_owned(),
            kind,
            title: "t".to_owned(),
            body: "Your order o-1 is paid (25.00 EUR) and confirmed.".to_owned(),
            order_id: order_id.to_owned(),
        }
    }

    #[test]
    fn an_order_email_greets_by_name_and_carries_the_notification_and_the_order() {
        let email = render(&draft(NotificationKind::OrderConfirmed, "o-1"), &recipient("Ada"));
        assert_eq!(email.template, "order_confirmed");
        assert_eq!(email.subject, "Your order is confirmed");
        assert!(email.body.starts_with("Hello Ada,\n\ngood news"), "{}", email.body);
        assert!(email.body.contains("paid (25.00 EUR) and confirmed"), "{}", email.body);
        assert!(email.body.contains("\nOrder: o-1\n"), "{}", email.body);
    }

    #[test]
    fn every_kind_has_a_template_of_its_own_and_a_nameless_user_is_still_greeted() {
        let kinds = [
            NotificationKind::Welcome,
            NotificationKind::OrderPlaced,
            NotificationKind::OrderConfirmed,
            NotificationKind::OrderRejected,
            NotificationKind::OrderFailed,
            NotificationKind::OrderCancelled,
            NotificationKind::PaymentRefunded,
            NotificationKind::ShipmentCreated,
            NotificationKind::OrderShipped,
            NotificationKind::ShipmentInTransit,
            NotificationKind::OrderDelivered,
            NotificationKind::ShipmentHalted,
        ];
        let mut names: Vec<&str> = kinds.iter().map(|kind| template(*kind).0).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), kinds.len(), "one template per kind");
        let welcome = render(&draft(NotificationKind::Welcome, ""), &recipient(" "));
        assert!(welcome.body.starts_with("Hello,\n"), "{}", welcome.body);
        assert!(!welcome.body.contains("Order:"), "{}", welcome.body);
    }
}
