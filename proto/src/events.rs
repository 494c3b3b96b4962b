//! Kafka event payloads (`commerce.events.v1`) and what the publisher needs to
//! know about each: its CloudEvents type and the key that picks its partition.
//!
//! Every top-level message of `commerce.events.v1` is an event and implements
//! [`EventPayload`]; the crate's tests check that against the descriptor set,
//! so a new event cannot be published without a type and a key.

use commerce_topology::Topic;
use prost_types::Timestamp;

/// Generated from proto package `commerce.events.v1`. Clippy is silenced in
/// generated code only, as for the service packages.
#[allow(clippy::all)]
pub mod v1 {
    tonic::include_proto!("commerce.events.v1");
}

/// A message that is published as a domain event.
///
/// The platform's publisher sends the encoded message as a CloudEvent in
/// binary mode with `ce_type = TYPE`, uses [`key`](Self::key) as the Kafka
/// record key, and takes `ce_time` from [`occurred_at`](Self::occurred_at).
pub trait EventPayload: prost::Message + Default {
    /// The CloudEvents `ce_type`: the message's full proto name, for example
    /// `commerce.events.v1.OrderPlaced`. Consumers dispatch on it.
    const TYPE: &'static str;

    /// The catalog topic the event is published on: the topic of the
    /// aggregate whose proto file declares it (`events/v1/orders.proto` ->
    /// `commerce.orders.v1`). The publisher takes the topic from here, so an
    /// event cannot be sent to the wrong topic.
    const TOPIC: Topic;

    /// Proto name of the field holding the aggregate id the event is keyed
    /// by, for example `order_id`.
    const KEY_FIELD: &'static str;

    /// The aggregate id the event is keyed by, so one aggregate's events land
    /// on one partition and stay in order.
    fn key(&self) -> String;

    /// When the event happened, if the producer set it (it always should).
    fn occurred_at(&self) -> Option<&Timestamp>;
}

/// Implements [`EventPayload`] for each event and lists them in [`EVENT_TYPES`].
/// `TYPE` is built from the Rust type name, which prost keeps equal to the
/// proto message name; the tests check every one against the descriptor set.
macro_rules! event_payloads {
    ($($topic:ident: [$($event:ident => $key:ident),+ $(,)?]),+ $(,)?) => {
        $($(
            impl EventPayload for v1::$event {
                const TYPE: &'static str = concat!("commerce.events.v1.", stringify!($event));
                const TOPIC: Topic = Topic::$topic;
                const KEY_FIELD: &'static str = stringify!($key);

                fn key(&self) -> String {
                    self.$key.clone()
                }

                fn occurred_at(&self) -> Option<&Timestamp> {
                    self.occurred_at.as_ref()
                }
            }
        )+)+

        /// `TYPE` of every event message, for consumers that route by
        /// `ce_type` and for tests that check nothing was left out.
        pub const EVENT_TYPES: &[&str] = &[$($(<v1::$event as EventPayload>::TYPE),+),+];

        /// `(TYPE, KEY_FIELD)` of every event, for telemetry that names the
        /// order an event is about.
        pub const EVENT_KEY_FIELDS: &[(&str, &str)] =
            &[$($((<v1::$event as EventPayload>::TYPE, <v1::$event as EventPayload>::KEY_FIELD)),+),+];

        /// `(TYPE, TOPIC)` of every event, for routing and for the check that
        /// each event's topic is the one its proto file names.
        pub const EVENT_TOPICS: &[(&str, Topic)] =
            &[$($((<v1::$event as EventPayload>::TYPE, <v1::$event as EventPayload>::TOPIC)),+),+];
    };
}

event_payloads! {
    // Keyed by order.
    Orders: [
        OrderPlaced => order_id,
        OrderConfirmed => order_id,
        OrderRejected => order_id,
        OrderFailed => order_id,
        OrderCancelled => order_id,
        OrderDelivered => order_id,
    ],
    // Reservations keyed by order, stock by product.
    Inventory: [
        StockReserved => order_id,
        StockReservationFailed => order_id,
        StockCommitted => order_id,
        StockReleased => order_id,
        StockRestocked => product_id,
        StockAvailabilityChanged => product_id,
    ],
    // Keyed by order (one payment per order).
    Payments: [
        PaymentCaptured => order_id,
        PaymentFailed => order_id,
        PaymentRefunded => order_id,
    ],
    // Keyed by shipment.
    Shipments: [
        ShipmentCreated => shipment_id,
        ShipmentStatusChanged => shipment_id,
        ShipmentDelivered => shipment_id,
        ShipmentHalted => shipment_id,
    ],
    // Keyed by user.
    Users: [UserRegistered => user_id, UserRoleChanged => user_id, UserErased => user_id],
    // Keyed by user: one cart per user.
    Carts: [CartItemAdded => user_id],
    // Keyed by product.
    Catalog: [
        ProductCreated => product_id,
        ProductUpdated => product_id,
        ProductDeleted => product_id,
        PriceChanged => product_id,
    ],
    // Keyed by product, so that each product's rating changes stay in order.
    Reviews: [
        ReviewCreated => product_id,
        ReviewUpdated => product_id,
        ReviewFlagged => product_id,
        ReviewModerated => product_id,
    ],
}
