//! What went into a cart, published for the analytics funnel's first step
//! (`CartItemAdded` on the Carts topic).
//!
//! A cart lives in Redis and the service has no database, so there is no
//! outbox: the event is queued on the producer after the change is stored,
//! and a failure is logged, never the caller's problem. While the brokers
//! are away an event may be lost (the funnel then undercounts carts), never
//! invented; the cart itself, the customer's concern, works as before. The
//! producer has no readiness check, so Kafka down does not take carts down.

use chrono::Utc;
use commerce_platform::events::EventProducer;
use commerce_platform::events::cloudevents::CloudEventAttributes;
use commerce_proto::events::v1::CartItemAdded;
use commerce_proto::time::timestamp;

/// Publishes the cart's events; cheap to clone.
#[derive(Debug, Clone)]
pub struct CartEvents {
    producer: EventProducer,
}

impl CartEvents {
    pub fn new(producer: EventProducer) -> Self {
        Self { producer }
    }

    /// Queues `CartItemAdded`; its acknowledgement is awaited in the
    /// background.
    pub fn item_added(&self, user_id: &str, product_id: &str, quantity: u32) {
        let event = CartItemAdded {
            user_id: user_id.to_owned(),
            product_id: product_id.to_owned(),
            quantity,
            occurred_at: Some(timestamp(Utc::now())),
        };
        match self.producer.queue_event(&event, &CloudEventAttributes::for_event(&event)) {
            Ok(pending) => {
                tokio::spawn(async move {
                    if let Err(error) = pending.acknowledged().await {
                        tracing::warn!(error = %commerce_platform::error_chain(&error), "a cart event was not published");
                    }
                });
            }
            Err(error) => {
                tracing::warn!(error = %commerce_platform::error_chain(&error), "a cart event was not queued");
            }
        }
    }
}
