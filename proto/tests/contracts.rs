//! Checks the contracts as other crates rely on them: every service and event
//! is in the descriptor set under its package, every element is documented,
//! event types and keys cannot drift from the proto names, and the generated
//! code works end to end over gRPC.

use std::collections::BTreeSet;
use std::time::Duration;

use commerce_proto::FILE_DESCRIPTOR_SET;
use commerce_proto::common::v1::{Address, Money};
use commerce_proto::events::{EVENT_TOPICS, EVENT_TYPES, EventPayload, v1 as events};
use commerce_proto::notification::v1::notification_service_client::NotificationServiceClient;
use commerce_proto::notification::v1::notification_service_server::{
    NotificationService, NotificationServiceServer,
};
use commerce_proto::notification::v1::{
    ListNotificationsRequest, ListNotificationsResponse, MarkReadRequest, MarkReadResponse, Notification,
};
use commerce_topology::Topic;
use prost::Message;
use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{DescriptorProto, FileDescriptorProto, FileDescriptorSet, Timestamp};

const EVENTS_PACKAGE: &str = "commerce.events.v1";

fn descriptor_set() -> FileDescriptorSet {
    FileDescriptorSet::decode(FILE_DESCRIPTOR_SET).expect("FILE_DESCRIPTOR_SET decodes")
}

/// Top-level messages of the events package: by the package's convention,
/// exactly the events.
fn event_messages(set: &FileDescriptorSet) -> Vec<(String, &DescriptorProto)> {
    set.file
        .iter()
        .filter(|file| file.package() == EVENTS_PACKAGE)
        .flat_map(|file| file.message_type.iter())
        .map(|message| (format!("{EVENTS_PACKAGE}.{}", message.name()), message))
        .collect()
}

#[test]
fn every_service_is_described_under_its_own_package_with_the_agreed_methods() {
    let expected: &[(&str, &str, &[&str])] = &[
        (
            "commerce.auth.v1",
            "AuthService",
            &[
                "Register",
                "Login",
                "Refresh",
                "Logout",
                "ValidateToken",
                "GetPublicKeys",
                "ListUsers",
                "SetUserRole",
                "EraseUser",
            ],
        ),
        (
            "commerce.catalog.v1",
            "CatalogService",
            &[
                "CreateProduct",
                "GetProduct",
                "UpdateProduct",
                "DeleteProduct",
                "ListProducts",
                "BatchGetProducts",
                "CreateCategory",
                "ListCategories",
                "GetCatalogVersion",
            ],
        ),
        (
            "commerce.inventory.v1",
            "InventoryService",
            &[
                "GetStock",
                "CheckAvailability",
                "Reserve",
                "CommitReservation",
                "ReleaseReservation",
                "Restock",
                "SetStock",
                "ListLowStock",
            ],
        ),
        (
            "commerce.cart.v1",
            "CartService",
            &["GetCart", "AddItem", "UpdateItem", "RemoveItem", "ClearCart", "Checkout"],
        ),
        (
            "commerce.order.v1",
            "OrderService",
            &["PlaceOrder", "GetOrder", "ListOrders", "CancelOrder", "WatchOrders"],
        ),
        (
            "commerce.payment.v1",
            "PaymentService",
            &["Charge", "GetPayment", "Refund", "ReceiveProviderWebhook"],
        ),
        ("commerce.notification.v1", "NotificationService", &["ListNotifications", "MarkRead"]),
        (
            "commerce.shipping.v1",
            "ShippingService",
            &["CreateShipment", "GetShipment", "TrackShipment", "UpdateShipmentStatus", "ListShipments"],
        ),
        ("commerce.audit.v1", "AuditService", &["RecordAdminAction", "ListEntries", "VerifyChain"]),
        (
            "commerce.profile.v1",
            "ProfileService",
            &[
                "GetProfile",
                "UpdateProfile",
                "ListAddresses",
                "AddAddress",
                "UpdateAddress",
                "DeleteAddress",
                "GetDefaultAddress",
            ],
        ),
        (
            "commerce.reviews.v1",
            "ReviewService",
            &[
                "CreateReview",
                "UpdateReview",
                "GetReview",
                "ListProductReviews",
                "VoteHelpful",
                "ReportReview",
                "ListModerationQueue",
                "ModerateReview",
                "ListUserReviews",
            ],
        ),
        ("commerce.search.v1", "SearchService", &["Search", "Suggest"]),
        (
            "commerce.recommendation.v1",
            "RecommendationService",
            &["RecordViews", "ProductRecommendations", "UserRecommendations", "ListViews"],
        ),
        ("commerce.analytics.v1", "AnalyticsService", &["GetSales", "GetFunnel", "GetDashboard"]),
    ];
    let set = descriptor_set();

    for (package, service_name, methods) in expected {
        let services: Vec<_> = set
            .file
            .iter()
            .filter(|file| file.package() == *package)
            .flat_map(|file| file.service.iter())
            .collect();
        let service = services
            .iter()
            .find(|service| service.name() == *service_name)
            .unwrap_or_else(|| panic!("{package}.{service_name} is missing from FILE_DESCRIPTOR_SET"));
        assert_eq!(services.len(), 1, "{package} should define exactly one service");
        let found: BTreeSet<&str> = service.method.iter().map(|method| method.name()).collect();
        let wanted: BTreeSet<&str> = methods.iter().copied().collect();
        assert_eq!(found, wanted, "methods of {package}.{service_name}");
    }

    let packages_with_services: BTreeSet<&str> =
        set.file.iter().filter(|file| !file.service.is_empty()).map(|file| file.package()).collect();
    assert_eq!(
        packages_with_services.len(),
        expected.len(),
        "unexpected services: {packages_with_services:?}"
    );
}

#[test]
fn every_file_message_field_enum_service_and_method_is_commented() {
    let set = descriptor_set();
    let mut undocumented = Vec::new();
    let commerce_files = set.file.iter().filter(|file| file.name().starts_with("commerce/"));
    for file in commerce_files {
        undocumented.extend(undocumented_elements(file));
    }
    assert!(undocumented.is_empty(), "elements without a leading comment:\n{}", undocumented.join("\n"));
}

/// Names of the elements of `file` that have no leading comment. Paths follow
/// `google.protobuf.SourceCodeInfo.Location.path`: field numbers of the
/// descriptor messages, then indexes.
fn undocumented_elements(file: &FileDescriptorProto) -> Vec<String> {
    let commented: BTreeSet<Vec<i32>> = file
        .source_code_info
        .as_ref()
        .expect("the descriptor set keeps source info")
        .location
        .iter()
        .filter(|location| !location.leading_comments().trim().is_empty())
        .map(|location| location.path.clone())
        .collect();
    let mut missing = Vec::new();
    let mut require = |path: Vec<i32>, name: String| {
        if !commented.contains(&path) {
            missing.push(format!("{}: {name}", file.name()));
        }
    };

    // FileDescriptorProto: package = 2, message_type = 4, enum_type = 5, service = 6.
    require(vec![2], format!("package {}", file.package()));
    for (index, message) in file.message_type.iter().enumerate() {
        require_message(&mut require, vec![4, index as i32], message, message.name().to_owned());
    }
    for (index, enumeration) in file.enum_type.iter().enumerate() {
        require_enum(&mut require, vec![5, index as i32], enumeration, enumeration.name().to_owned());
    }
    for (index, service) in file.service.iter().enumerate() {
        let path = vec![6, index as i32];
        require(path.clone(), service.name().to_owned());
        // ServiceDescriptorProto: method = 2.
        for (method_index, method) in service.method.iter().enumerate() {
            require(child(&path, 2, method_index), format!("{}.{}", service.name(), method.name()));
        }
    }
    missing
}

fn child(path: &[i32], field: i32, index: usize) -> Vec<i32> {
    let mut path = path.to_vec();
    path.extend([field, index as i32]);
    path
}

fn require_message(
    require: &mut impl FnMut(Vec<i32>, String),
    path: Vec<i32>,
    message: &DescriptorProto,
    name: String,
) {
    require(path.clone(), name.clone());
    // DescriptorProto: field = 2, nested_type = 3, enum_type = 4, oneof_decl = 8.
    for (index, field) in message.field.iter().enumerate() {
        require(child(&path, 2, index), format!("{name}.{}", field.name()));
    }
    for (index, nested) in message.nested_type.iter().enumerate() {
        require_message(require, child(&path, 3, index), nested, format!("{name}.{}", nested.name()));
    }
    for (index, enumeration) in message.enum_type.iter().enumerate() {
        require_enum(require, child(&path, 4, index), enumeration, format!("{name}.{}", enumeration.name()));
    }
    for (index, oneof) in message.oneof_decl.iter().enumerate() {
        require(child(&path, 8, index), format!("{name}.{}", oneof.name()));
    }
}

fn require_enum(
    require: &mut impl FnMut(Vec<i32>, String),
    path: Vec<i32>,
    enumeration: &prost_types::EnumDescriptorProto,
    name: String,
) {
    require(path.clone(), name.clone());
    // EnumDescriptorProto: value = 2.
    for (index, value) in enumeration.value.iter().enumerate() {
        require(child(&path, 2, index), format!("{name}.{}", value.name()));
    }
}

#[test]
fn an_order_placed_event_survives_an_encode_decode_round_trip() {
    let euros = |units| Some(Money { currency_code: "EUR".into(), units });
    let event = events::OrderPlaced {
        order_id: "0190a5d4-order".into(),
        user_id: "0190a5d4-user".into(),
        lines: vec![events::order_placed::Line {
            product_id: "0190a5d4-product".into(),
            sku: "KNIFE-21".into(),
            name: "Chef's knife".into(),
            quantity: 2,
            unit_price: euros(4_999),
            line_total: euros(9_998),
        }],
        total: euros(9_998),
        shipping_address: Some(Address {
            recipient_name: "Ada Lovelace".into(),
            line1: "12 St James's Square".into(),
            city: "London".into(),
            postal_code: "SW1Y 4JH".into(),
            country_code: "GB".into(),
            ..Address::default()
        }),
        payment_method_token: "tok_mock_visa".into(),
        occurred_at: Some(Timestamp { seconds: 1_700_000_000, nanos: 123_000_000 }),
    };

    let bytes = event.encode_to_vec();
    let decoded = events::OrderPlaced::decode(bytes.as_slice()).expect("decodes");

    assert_eq!(decoded, event);
    assert_eq!(decoded.key(), "0190a5d4-order");
    assert_eq!(<events::OrderPlaced as EventPayload>::TYPE, "commerce.events.v1.OrderPlaced");
}

/// Calls `$check::<Event>()` for every event type. A type left out here is
/// caught by the set comparison in the test that uses it.
macro_rules! for_each_event {
    ($check:ident) => {
        [
            $check::<events::OrderPlaced>(),
            $check::<events::OrderConfirmed>(),
            $check::<events::OrderRejected>(),
            $check::<events::OrderFailed>(),
            $check::<events::OrderCancelled>(),
            $check::<events::OrderDelivered>(),
            $check::<events::StockReserved>(),
            $check::<events::StockReservationFailed>(),
            $check::<events::StockCommitted>(),
            $check::<events::StockReleased>(),
            $check::<events::StockRestocked>(),
            $check::<events::StockAvailabilityChanged>(),
            $check::<events::PaymentCaptured>(),
            $check::<events::PaymentFailed>(),
            $check::<events::PaymentRefunded>(),
            $check::<events::ShipmentCreated>(),
            $check::<events::ShipmentStatusChanged>(),
            $check::<events::ShipmentDelivered>(),
            $check::<events::ShipmentHalted>(),
            $check::<events::UserRegistered>(),
            $check::<events::UserRoleChanged>(),
            $check::<events::UserErased>(),
            $check::<events::CartItemAdded>(),
            $check::<events::ProductCreated>(),
            $check::<events::ProductUpdated>(),
            $check::<events::ProductDeleted>(),
            $check::<events::PriceChanged>(),
            $check::<events::ReviewCreated>(),
            $check::<events::ReviewUpdated>(),
            $check::<events::ReviewFlagged>(),
            $check::<events::ReviewModerated>(),
        ]
    };
}

/// Checks one event type against the message its `TYPE` names and returns
/// that `TYPE`.
///
/// The Rust type is tied to the descriptor through the wire: bytes are built
/// from the descriptor's field numbers for `KEY_FIELD` and `occurred_at`, and
/// decoding them as `E` must yield that key and timestamp. A `TYPE` naming
/// another message, or a `key()` reading another field, fails here.
fn check_event_against_descriptor<E: EventPayload>() -> &'static str {
    let set = descriptor_set();
    let messages = event_messages(&set);
    let (_, message) = messages
        .iter()
        .find(|(full_name, _)| full_name == E::TYPE)
        .unwrap_or_else(|| panic!("{} names no top-level message of {EVENTS_PACKAGE}", E::TYPE));
    let field = |name: &str| {
        message
            .field
            .iter()
            .find(|field| field.name() == name)
            .unwrap_or_else(|| panic!("{} has no field {name}", E::TYPE))
    };

    let key_field = field(E::KEY_FIELD);
    assert_eq!(key_field.r#type(), Type::String, "{}.{} must be a string", E::TYPE, E::KEY_FIELD);
    assert_ne!(key_field.label(), Label::Repeated, "{}.{} must be singular", E::TYPE, E::KEY_FIELD);
    let occurred_at = field("occurred_at");
    assert_eq!(occurred_at.type_name(), ".google.protobuf.Timestamp", "{}.occurred_at", E::TYPE);

    let key = format!("key-of-{}", E::TYPE);
    let timestamp = Timestamp { seconds: 1_700_000_000, nanos: 42 };
    let mut bytes = Vec::new();
    put_length_delimited(&mut bytes, key_field.number(), key.as_bytes());
    put_length_delimited(&mut bytes, occurred_at.number(), &timestamp.encode_to_vec());

    let event = E::decode(bytes.as_slice()).unwrap_or_else(|error| panic!("{}: {error}", E::TYPE));
    assert_eq!(event.key(), key, "{}::key() reads {}", E::TYPE, E::KEY_FIELD);
    assert_eq!(event.occurred_at(), Some(&timestamp), "{}::occurred_at()", E::TYPE);
    E::TYPE
}

/// Appends a length-delimited field (wire type 2) to `buffer`.
fn put_length_delimited(buffer: &mut Vec<u8>, field_number: i32, payload: &[u8]) {
    let tag = (u64::try_from(field_number).expect("field numbers are positive") << 3) | 2;
    put_varint(buffer, tag);
    put_varint(buffer, payload.len() as u64);
    buffer.extend_from_slice(payload);
}

fn put_varint(buffer: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        buffer.push((value as u8) | 0x80);
        value >>= 7;
    }
    buffer.push(value as u8);
}

#[test]
fn every_event_type_is_the_full_proto_name_of_its_message() {
    let checked: BTreeSet<&str> = for_each_event!(check_event_against_descriptor).into_iter().collect();
    let published: BTreeSet<&str> = EVENT_TYPES.iter().copied().collect();
    assert_eq!(checked, published, "for_each_event! and EVENT_TYPES list different events");
}

#[test]
fn every_event_message_in_the_descriptor_set_has_an_event_payload_impl() {
    let set = descriptor_set();
    let in_descriptor: BTreeSet<String> = event_messages(&set).into_iter().map(|(name, _)| name).collect();
    let implemented: BTreeSet<String> = EVENT_TYPES.iter().map(|name| (*name).to_owned()).collect();

    assert_eq!(EVENT_TYPES.len(), implemented.len(), "EVENT_TYPES has duplicates");
    let without_impl: Vec<_> = in_descriptor.difference(&implemented).collect();
    let without_message: Vec<_> = implemented.difference(&in_descriptor).collect();
    assert!(without_impl.is_empty(), "event messages without an EventPayload impl: {without_impl:?}");
    assert!(without_message.is_empty(), "EventPayload impls naming no event message: {without_message:?}");
}

#[test]
fn the_descriptor_set_registers_with_grpc_reflection() {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .build_v1()
        .expect("reflection accepts FILE_DESCRIPTOR_SET");
}

/// A notification service that answers from the request alone.
#[derive(Debug)]
struct EchoNotifications;

#[tonic::async_trait]
impl NotificationService for EchoNotifications {
    async fn list_notifications(
        &self,
        request: tonic::Request<ListNotificationsRequest>,
    ) -> Result<tonic::Response<ListNotificationsResponse>, tonic::Status> {
        let user_id = request.into_inner().user_id;
        Ok(tonic::Response::new(ListNotificationsResponse {
            notifications: vec![Notification { id: "n-1".into(), user_id, ..Notification::default() }],
            next_page_token: String::new(),
            unread_count: 1,
        }))
    }

    async fn mark_read(
        &self,
        request: tonic::Request<MarkReadRequest>,
    ) -> Result<tonic::Response<MarkReadResponse>, tonic::Status> {
        let marked_count = request.into_inner().notification_ids.len() as i64;
        Ok(tonic::Response::new(MarkReadResponse { marked_count }))
    }
}

#[tokio::test]
async fn generated_client_and_server_talk_grpc_over_loopback() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("binds loopback");
    let address = listener.local_addr().expect("has an address");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(NotificationServiceServer::new(EchoNotifications))
            .serve_with_incoming_shutdown(tokio_stream::wrappers::TcpListenerStream::new(listener), async {
                stopped.await.ok();
            }),
    );

    let calls = async {
        let mut client =
            NotificationServiceClient::connect(format!("http://{address}")).await.expect("connects");
        let listed = client
            .list_notifications(ListNotificationsRequest { user_id: "u-7".into(), ..Default::default() })
            .await
            .expect("lists")
            .into_inner();
        let marked = client
            .mark_read(MarkReadRequest {
                user_id: "u-7".into(),
                notification_ids: vec!["n-1".into(), "n-2".into()],
                all: false,
            })
            .await
            .expect("marks")
            .into_inner();
        (listed, marked)
    };
    let (listed, marked) =
        tokio::time::timeout(Duration::from_secs(10), calls).await.expect("answers in time");

    assert_eq!(listed.notifications.len(), 1);
    assert_eq!(listed.notifications[0].user_id, "u-7");
    assert_eq!(marked.marked_count, 2);

    stop.send(()).expect("server is running");
    server.await.expect("server task joins").expect("server shuts down cleanly");
}

/// The catalog topic named after an events file: `commerce/events/v1/orders.proto`
/// declares the events of topic `commerce.orders.v1`.
fn topic_named_by_file(file: &FileDescriptorProto) -> String {
    let stem = file
        .name()
        .rsplit('/')
        .next()
        .and_then(|name| name.strip_suffix(".proto"))
        .expect("events files are named <aggregate>.proto");
    format!("commerce.{stem}.v1")
}

#[test]
fn every_event_is_published_on_the_catalog_topic_its_proto_file_names() {
    let set = descriptor_set();
    let mut checked = 0;
    for file in set.file.iter().filter(|file| file.package() == EVENTS_PACKAGE) {
        let expected_topic = topic_named_by_file(file);
        assert!(
            Topic::ALL.iter().any(|topic| topic.name() == expected_topic),
            "{} declares events for {expected_topic}, which the service catalog does not know",
            file.name()
        );
        for message in &file.message_type {
            let event_type = format!("{EVENTS_PACKAGE}.{}", message.name());
            let (_, topic) = EVENT_TOPICS
                .iter()
                .find(|(name, _)| *name == event_type)
                .unwrap_or_else(|| panic!("{event_type} has no EventPayload impl"));
            assert_eq!(topic.name(), expected_topic, "{event_type} is published on the wrong topic");
            checked += 1;
        }
    }
    assert_eq!(checked, EVENT_TOPICS.len(), "every event was checked against its file");
}

#[test]
fn every_catalog_topic_carries_at_least_one_event_type() {
    for topic in Topic::ALL {
        assert!(
            EVENT_TOPICS.iter().any(|(_, carried)| *carried == topic),
            "catalog topic {topic} has no event type in proto/commerce/events/v1"
        );
    }
}
