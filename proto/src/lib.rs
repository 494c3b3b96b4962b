//! The contracts of commerce-stack: every gRPC service and every Kafka event
//! payload, generated from `proto/commerce/**/*.proto`.
//!
//! The `.proto` files are the source of truth; this crate only compiles them
//! (with protox, no system `protoc`) so that services, the gateway and tests
//! share one set of types. Modules mirror proto packages:
//! `commerce.order.v1` is [`order::v1`], `commerce.events.v1` is
//! [`events::v1`]. Each service package holds its messages plus, for example,
//! `order::v1::order_service_server` (the `OrderService` trait a service
//! implements and the tonic server wrapping it) and
//! `order::v1::order_service_client` (the tonic client).
//!
//! [`FILE_DESCRIPTOR_SET`] feeds tonic-reflection, and [`events::EventPayload`]
//! gives the publisher each event's CloudEvents type and partition key.

pub mod events;
pub mod privacy;
pub mod time;

/// Generates a module for one proto package. Clippy is silenced inside the
/// generated code only: its shape is prost's and tonic's, and its doc comments
/// are the proto comments, so a lint there could only be fixed upstream or by
/// bending proto comments to Rust doc rules (clean today; this is insurance).
macro_rules! proto_package {
    ($(#[$meta:meta])* $name:ident, $package:literal) => {
        $(#[$meta])*
        pub mod $name {
            #[doc = concat!("Generated from proto package `", $package, "`.")]
            #[allow(clippy::all)]
            pub mod v1 {
                tonic::include_proto!($package);
            }
        }
    };
}

proto_package!(
    /// Types shared by several packages: money and postal addresses.
    common,
    "commerce.common.v1"
);
proto_package!(
    /// Users, tokens, roles and the keys that sign access tokens.
    auth,
    "commerce.auth.v1"
);
proto_package!(
    /// Products, categories and prices.
    catalog,
    "commerce.catalog.v1"
);
proto_package!(
    /// Stock levels and reservations.
    inventory,
    "commerce.inventory.v1"
);
proto_package!(
    /// Carts and checkout.
    cart,
    "commerce.cart.v1"
);
proto_package!(
    /// Orders and their lifecycle.
    order,
    "commerce.order.v1"
);
proto_package!(
    /// Charges and refunds.
    payment,
    "commerce.payment.v1"
);
proto_package!(
    /// Users' notifications.
    notification,
    "commerce.notification.v1"
);
proto_package!(
    /// Shipments and tracking.
    shipping,
    "commerce.shipping.v1"
);
proto_package!(
    /// The tamper-evident audit trail of domain events.
    audit,
    "commerce.audit.v1"
);
proto_package!(
    /// Users' profiles and address books.
    profile,
    "commerce.profile.v1"
);
proto_package!(
    /// Product reviews, helpful votes and moderation.
    reviews,
    "commerce.reviews.v1"
);
proto_package!(
    /// Full-text product search and suggestions.
    search,
    "commerce.search.v1"
);
proto_package!(
    /// Also bought, popular in a category, recently viewed.
    recommendation,
    "commerce.recommendation.v1"
);
proto_package!(
    /// Sales, the order funnel and the admin dashboard's figures.
    analytics,
    "commerce.analytics.v1"
);

/// Every proto file of this crate, and the well-known types they import, as an
/// encoded `google.protobuf.FileDescriptorSet` with source comments.
///
/// Register it with tonic-reflection
/// (`Builder::configure().register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)`)
/// so that grpcurl and similar tools can describe every service.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/commerce_descriptor_set.bin"));
