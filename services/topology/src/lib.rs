//! The service catalog: the one place that says which services exist, which
//! ports they listen on, which stores they need, which Kafka topics they
//! produce and consume, and which peers they call over gRPC.
//!
//! The operator derives Deployments, NetworkPolicies, topics and databases
//! from it; the services derive their listeners, producers and consumer
//! subscriptions from it. Topic names are written nowhere else, so the two
//! sides cannot drift apart.

use std::fmt;

/// Port every service's gRPC server listens on inside a cluster. The standard
/// gRPC port, so that `grpcurl inventory:50051` works without a lookup.
pub const CLUSTER_GRPC_PORT: u16 = 50051;
/// Port of every service's admin server (`/metrics`, `/healthz`, `/readyz`)
/// inside a cluster; Prometheus' conventional scrape port range.
pub const CLUSTER_ADMIN_PORT: u16 = 9090;
/// Port the gateway serves REST on inside a cluster (the Ingress backend).
pub const CLUSTER_HTTP_PORT: u16 = 8080;

/// First local gRPC port. On one machine every service needs its own port;
/// each takes `LOCAL_GRPC_BASE + index`, in catalog order.
///
/// Not 50051 as in a cluster: that lies in Linux's ephemeral range
/// (32768-60999), where outgoing connections take their local ports, and a
/// connection the shop itself had just opened to Postgres (in TIME-WAIT)
/// kept `make up` from binding 50054 twice in a row. Every local port stays
/// below that range, and the gRPC, admin and HTTP ports differ in their last
/// two digits, so two shops shifted by multiples of 100 (as the tests start
/// them) never want the same port.
pub const LOCAL_GRPC_BASE: u16 = 9151;
/// First local admin port, `LOCAL_ADMIN_BASE + index` per service.
pub const LOCAL_ADMIN_BASE: u16 = 9101;
/// The gateway's local REST port.
pub const LOCAL_HTTP_PORT: u16 = 8080;

/// A service of the shop. The order of [`Service::ALL`] is part of the
/// contract: it assigns local ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Service {
    Auth,
    Catalog,
    Inventory,
    Cart,
    Order,
    Payment,
    Notification,
    Shipping,
    Gateway,
    /// Appended after the gateway so that no earlier service's local ports
    /// move.
    Audit,
    /// Appended after the gateway, for the same reason.
    Profile,
    /// Appended after the gateway, for the same reason.
    Reviews,
    /// Appended after the gateway, for the same reason.
    Search,
    /// Appended after the gateway, for the same reason.
    Recommendation,
    /// Appended last, for the same reason.
    Analytics,
}

/// A Kafka topic carrying one aggregate's domain events, keyed by the
/// aggregate's id so that one entity's events stay in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Topic {
    Orders,
    Inventory,
    Payments,
    Shipments,
    Users,
    Catalog,
    Reviews,
    Carts,
}

/// How a topic is laid out on the brokers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopicSpec {
    /// Full topic name, versioned so that an incompatible payload change is a
    /// new topic rather than a surprise for old consumers.
    pub name: &'static str,
    /// Default partition count: the ceiling on parallel consumers per group.
    pub partitions: i32,
    /// How long events are kept, in milliseconds.
    pub retention_ms: i64,
}

/// Ports a service listens on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ports {
    /// gRPC (health, reflection and the service's API); `None` for the
    /// gateway, which speaks REST only.
    pub grpc: Option<u16>,
    /// REST/JSON (the gateway only).
    pub http: Option<u16>,
    /// Admin server: `/metrics`, `/healthz`, `/readyz`.
    pub admin: u16,
}

/// Everything the platform needs to know about one service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServiceSpec {
    pub service: Service,
    /// One line for humans: logs, `--help`, generated object annotations.
    pub summary: &'static str,
    /// Whether the service owns a Postgres database.
    pub database: bool,
    /// Whether the service needs Redis (carts, cache, rate-limit counters).
    pub redis: bool,
    /// Topics the service publishes to (through its outbox; the cart,
    /// which has no database, publishes directly and at best once).
    pub produces: &'static [Topic],
    /// Topics the service consumes, in its own consumer group.
    pub consumes: &'static [Topic],
    /// Peers the service calls over gRPC: the only east-west flows a
    /// NetworkPolicy allows.
    pub calls: &'static [Service],
}

impl ServiceSpec {
    /// Whether the service talks to Kafka (produces or consumes a topic).
    pub const fn uses_kafka(&self) -> bool {
        !self.produces.is_empty() || !self.consumes.is_empty()
    }
}

/// Dead-letter topics keep failed events for two weeks: long enough for a
/// team to notice, fix and replay them after a holiday.
pub const DEAD_LETTER_RETENTION_MS: i64 = 14 * 24 * 60 * 60 * 1000;
/// Domain topics keep a week, enough to rebuild a consumer from scratch.
const DOMAIN_RETENTION_MS: i64 = 7 * 24 * 60 * 60 * 1000;
/// Dead letters are rare and read by people; one partition keeps them in order.
pub const DEAD_LETTER_PARTITIONS: i32 = 1;

const SERVICES: [ServiceSpec; 15] = [
    ServiceSpec {
        service: Service::Auth,
        summary: "users, credentials, roles, refresh tokens and signing keys",
        database: true,
        redis: false,
        produces: &[Topic::Users],
        consumes: &[],
        calls: &[],
    },
    ServiceSpec {
        service: Service::Catalog,
        summary: "products, categories and prices, cached in Redis",
        database: true,
        redis: true,
        produces: &[Topic::Catalog],
        // Reviews: each product's average rating and review count.
        consumes: &[Topic::Reviews],
        calls: &[],
    },
    ServiceSpec {
        service: Service::Inventory,
        summary: "stock per product and reservations with expiry",
        database: true,
        redis: false,
        produces: &[Topic::Inventory],
        // Orders: reserve on placement, commit on confirmation, release on
        // failure or cancellation. Catalog: a new product gets a stock row.
        consumes: &[Topic::Orders, Topic::Catalog],
        calls: &[],
    },
    ServiceSpec {
        service: Service::Cart,
        summary: "per-user carts in Redis with a 24 h expiry; checkout",
        database: false,
        redis: true,
        // Carts: what went into a cart, for the analytics funnel.
        produces: &[Topic::Carts],
        consumes: &[],
        calls: &[Service::Catalog, Service::Inventory, Service::Order],
    },
    ServiceSpec {
        service: Service::Order,
        summary: "orders, order lines and the saga's state",
        database: true,
        redis: false,
        produces: &[Topic::Orders],
        // Users: an erased user's orders keep their amounts and lose the
        // address.
        consumes: &[Topic::Inventory, Topic::Payments, Topic::Shipments, Topic::Users],
        calls: &[Service::Catalog],
    },
    ServiceSpec {
        service: Service::Payment,
        summary: "payments and refunds through a pluggable provider",
        database: true,
        redis: false,
        produces: &[Topic::Payments],
        // Inventory: charge once stock is held. Orders: refund on cancellation.
        consumes: &[Topic::Inventory, Topic::Orders],
        calls: &[],
    },
    ServiceSpec {
        service: Service::Notification,
        summary: "one notification per user-visible step of an order, in the inbox and by email",
        database: true,
        redis: false,
        produces: &[],
        // Users: the welcome, and where each user's email goes; an erasure
        // deletes what the service keeps about the user.
        consumes: &[Topic::Users, Topic::Orders, Topic::Payments, Topic::Shipments],
        calls: &[],
    },
    ServiceSpec {
        service: Service::Shipping,
        summary: "shipments and their tracking events",
        database: true,
        redis: false,
        produces: &[Topic::Shipments],
        // Users: an erased user's shipments lose the address.
        consumes: &[Topic::Orders, Topic::Users],
        calls: &[],
    },
    ServiceSpec {
        service: Service::Gateway,
        summary: "REST/JSON edge: JWT, role checks, rate limits",
        database: false,
        redis: true,
        produces: &[],
        consumes: &[],
        calls: &[
            Service::Auth,
            Service::Catalog,
            Service::Inventory,
            Service::Cart,
            Service::Order,
            Service::Payment,
            Service::Notification,
            Service::Shipping,
            Service::Audit,
            Service::Profile,
            Service::Reviews,
            Service::Search,
            Service::Recommendation,
            Service::Analytics,
        ],
    },
    ServiceSpec {
        service: Service::Audit,
        summary: "the tamper-evident, append-only record of every domain event",
        database: true,
        redis: false,
        produces: &[],
        // Every domain topic: the trail records each event once.
        consumes: &[
            Topic::Orders,
            Topic::Inventory,
            Topic::Payments,
            Topic::Shipments,
            Topic::Users,
            Topic::Catalog,
            Topic::Reviews,
        ],
        calls: &[],
    },
    ServiceSpec {
        service: Service::Profile,
        summary: "users' profiles and address books, with the default address checkout uses",
        database: true,
        redis: false,
        produces: &[],
        // Users: a registration creates the profile; an erasure deletes it.
        consumes: &[Topic::Users],
        calls: &[],
    },
    ServiceSpec {
        service: Service::Reviews,
        summary: "product reviews by verified buyers, helpful votes and the moderation queue",
        database: true,
        redis: false,
        produces: &[Topic::Reviews],
        // Orders: who bought what, and when it was delivered (only a
        // delivered order line entitles its buyer to review the product).
        // Users: an erased user's reviews stay, anonymised.
        consumes: &[Topic::Orders, Topic::Users],
        calls: &[],
    },
    ServiceSpec {
        service: Service::Search,
        summary: "full-text product search with typo tolerance, highlights, facets and suggestions",
        database: true,
        redis: false,
        produces: &[],
        // A read model: products from the catalog, availability from
        // inventory, ratings from reviews.
        consumes: &[Topic::Catalog, Topic::Inventory, Topic::Reviews],
        calls: &[],
    },
    ServiceSpec {
        service: Service::Recommendation,
        summary: "also bought, popular in a category and recently viewed products",
        database: true,
        redis: false,
        produces: &[],
        // Orders: who bought what together. Catalog: names, categories,
        // prices and whether a product is still for sale. Users: an erased
        // user's views and purchases go.
        consumes: &[Topic::Orders, Topic::Catalog, Topic::Users],
        calls: &[],
    },
    ServiceSpec {
        service: Service::Analytics,
        summary: "sales, revenue, the order funnel and the admin dashboard, built from events",
        database: true,
        redis: false,
        produces: &[],
        // Orders: sales and the funnel. Payments: refunds. Shipments: when
        // an order left. Catalog: product names and categories. Carts: the
        // funnel's first step.
        consumes: &[Topic::Orders, Topic::Payments, Topic::Shipments, Topic::Catalog, Topic::Carts],
        calls: &[],
    },
];

impl Service {
    /// Every service, in catalog order.
    pub const ALL: [Service; 15] = [
        Service::Auth,
        Service::Catalog,
        Service::Inventory,
        Service::Cart,
        Service::Order,
        Service::Payment,
        Service::Notification,
        Service::Shipping,
        Service::Gateway,
        Service::Audit,
        Service::Profile,
        Service::Reviews,
        Service::Search,
        Service::Recommendation,
        Service::Analytics,
    ];

    /// The service's name: DNS label, database suffix, CLI argument.
    pub const fn name(self) -> &'static str {
        match self {
            Service::Auth => "auth",
            Service::Catalog => "catalog",
            Service::Inventory => "inventory",
            Service::Cart => "cart",
            Service::Order => "order",
            Service::Payment => "payment",
            Service::Notification => "notification",
            Service::Shipping => "shipping",
            Service::Gateway => "gateway",
            Service::Audit => "audit",
            Service::Profile => "profile",
            Service::Reviews => "reviews",
            Service::Search => "search",
            Service::Recommendation => "recommendation",
            Service::Analytics => "analytics",
        }
    }

    /// Looks a service up by its [`name`](Self::name).
    pub fn from_name(name: &str) -> Option<Service> {
        Service::ALL.into_iter().find(|s| s.name() == name)
    }

    /// The names of all services, for error messages and schema enums.
    pub fn names() -> impl Iterator<Item = &'static str> {
        Service::ALL.into_iter().map(Service::name)
    }

    /// This service's entry in the catalog.
    pub fn spec(self) -> &'static ServiceSpec {
        &SERVICES[self.index()]
    }

    fn index(self) -> usize {
        self as usize
    }

    /// Ports on one machine, where every service shares 127.0.0.1.
    pub fn local_ports(self) -> Ports {
        let offset = u16::try_from(self.index()).expect("the catalog has fewer than 65536 services");
        let is_gateway = self == Service::Gateway;
        Ports {
            grpc: (!is_gateway).then_some(LOCAL_GRPC_BASE + offset),
            http: is_gateway.then_some(LOCAL_HTTP_PORT),
            admin: LOCAL_ADMIN_BASE + offset,
        }
    }

    /// Kafka consumer group of this service. One group per service: each
    /// service sees every event once, whatever its replica count.
    pub fn consumer_group(self) -> String {
        format!("commerce-{}", self.name())
    }

    /// The dead-letter topic of this service's consumer group: events that
    /// still fail after bounded retries are parked here with their error.
    pub fn dead_letter_topic(self) -> String {
        format!("commerce.dlq.{}.v1", self.name())
    }

    /// CloudEvents `ce_source` of events this service publishes.
    pub fn event_source(self) -> String {
        format!("/commerce/{}", self.name())
    }

    /// Services that call this one over gRPC: the allowed ingress flows.
    pub fn callers(self) -> impl Iterator<Item = Service> {
        Service::ALL.into_iter().filter(move |s| s.spec().calls.contains(&self))
    }
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Service {
    type Err = UnknownService;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Service::from_name(s).ok_or_else(|| UnknownService(s.to_owned()))
    }
}

/// A name that is not in the catalog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownService(pub String);

impl fmt::Display for UnknownService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let known: Vec<&str> = Service::names().collect();
        write!(f, "unknown service {:?}; known services: {}", self.0, known.join(", "))
    }
}

impl std::error::Error for UnknownService {}

impl Topic {
    /// Every domain topic.
    pub const ALL: [Topic; 8] = [
        Topic::Orders,
        Topic::Inventory,
        Topic::Payments,
        Topic::Shipments,
        Topic::Users,
        Topic::Catalog,
        Topic::Reviews,
        Topic::Carts,
    ];

    /// Layout of the topic.
    pub const fn spec(self) -> TopicSpec {
        // Orders, inventory and payments carry the saga and take the most
        // load: six partitions let up to six replicas of a consumer share it.
        let (name, partitions) = match self {
            Topic::Orders => ("commerce.orders.v1", 6),
            Topic::Inventory => ("commerce.inventory.v1", 6),
            Topic::Payments => ("commerce.payments.v1", 6),
            Topic::Shipments => ("commerce.shipments.v1", 3),
            Topic::Users => ("commerce.users.v1", 3),
            Topic::Catalog => ("commerce.catalog.v1", 3),
            Topic::Reviews => ("commerce.reviews.v1", 3),
            Topic::Carts => ("commerce.carts.v1", 3),
        };
        TopicSpec { name, partitions, retention_ms: DOMAIN_RETENTION_MS }
    }

    /// The topic's full name.
    pub const fn name(self) -> &'static str {
        self.spec().name
    }

    /// The one service that owns the aggregate and publishes this topic.
    pub fn producer(self) -> Service {
        Service::ALL
            .into_iter()
            .find(|s| s.spec().produces.contains(&self))
            .expect("every topic has a producer (checked by the catalog's tests)")
    }

    /// Services whose consumer groups read this topic.
    pub fn consumers(self) -> impl Iterator<Item = Service> {
        Service::ALL.into_iter().filter(move |s| s.spec().consumes.contains(&self))
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Every topic the stack needs: the domain topics and one dead-letter topic
/// per consuming service. The operator creates exactly these.
pub fn all_topics() -> Vec<TopicSpec> {
    let mut topics: Vec<TopicSpec> = Topic::ALL.iter().map(|t| t.spec()).collect();
    for service in Service::ALL {
        if !service.spec().consumes.is_empty() {
            topics.push(TopicSpec {
                name: dead_letter_name(service),
                partitions: DEAD_LETTER_PARTITIONS,
                retention_ms: DEAD_LETTER_RETENTION_MS,
            });
        }
    }
    topics
}

/// Static dead-letter topic names, so that [`TopicSpec`] can keep `&'static str`.
fn dead_letter_name(service: Service) -> &'static str {
    match service {
        Service::Auth => "commerce.dlq.auth.v1",
        Service::Catalog => "commerce.dlq.catalog.v1",
        Service::Inventory => "commerce.dlq.inventory.v1",
        Service::Cart => "commerce.dlq.cart.v1",
        Service::Order => "commerce.dlq.order.v1",
        Service::Payment => "commerce.dlq.payment.v1",
        Service::Notification => "commerce.dlq.notification.v1",
        Service::Shipping => "commerce.dlq.shipping.v1",
        Service::Gateway => "commerce.dlq.gateway.v1",
        Service::Audit => "commerce.dlq.audit.v1",
        Service::Profile => "commerce.dlq.profile.v1",
        Service::Reviews => "commerce.dlq.reviews.v1",
        Service::Search => "commerce.dlq.search.v1",
        Service::Recommendation => "commerce.dlq.recommendation.v1",
        Service::Analytics => "commerce.dlq.analytics.v1",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn catalog_order_matches_the_service_enum() {
        for (index, service) in Service::ALL.into_iter().enumerate() {
            assert_eq!(SERVICES[index].service, service, "SERVICES[{index}] is out of order");
        }
    }

    #[test]
    fn every_topic_has_exactly_one_producer() {
        for topic in Topic::ALL {
            let producers: Vec<Service> =
                Service::ALL.into_iter().filter(|s| s.spec().produces.contains(&topic)).collect();
            assert_eq!(producers.len(), 1, "{topic} has producers {producers:?}");
        }
    }

    #[test]
    fn no_service_consumes_its_own_topic() {
        for service in Service::ALL {
            for topic in service.spec().consumes {
                assert_ne!(topic.producer(), service, "{service} consumes its own {topic}");
            }
        }
    }

    #[test]
    fn no_service_calls_itself_or_the_gateway() {
        for service in Service::ALL {
            let calls = service.spec().calls;
            assert!(!calls.contains(&service), "{service} calls itself");
            assert!(!calls.contains(&Service::Gateway), "{service} calls the gateway");
        }
    }

    #[test]
    fn local_ports_are_unique_below_the_ephemeral_range_and_apart_modulo_100() {
        let mut seen = HashSet::new();
        let mut last_two_digits = HashSet::new();
        for service in Service::ALL {
            let ports = service.local_ports();
            for port in [ports.grpc, ports.http, Some(ports.admin)].into_iter().flatten() {
                assert!(seen.insert(port), "local port {port} is used twice ({service})");
                assert!(port < 32768, "local port {port} of {service} is in the ephemeral range");
                assert!(
                    last_two_digits.insert(port % 100),
                    "local port {port} of {service} aliases another modulo 100"
                );
            }
        }
    }

    #[test]
    fn names_round_trip_and_unknown_names_list_the_known_ones() {
        for service in Service::ALL {
            assert_eq!(service.name().parse::<Service>(), Ok(service));
        }
        let error = "basket".parse::<Service>().unwrap_err().to_string();
        assert!(error.contains("basket") && error.contains("inventory"), "{error}");
    }

    #[test]
    fn topic_names_are_unique_and_dead_letters_exist_only_for_consumers() {
        let topics = all_topics();
        let names: HashSet<&str> = topics.iter().map(|t| t.name).collect();
        assert_eq!(names.len(), topics.len(), "duplicate topic names");
        for service in Service::ALL {
            let has_dlq = names.contains(service.dead_letter_topic().as_str());
            assert_eq!(has_dlq, !service.spec().consumes.is_empty(), "{service}");
        }
    }

    #[test]
    fn serde_uses_the_catalog_names() {
        let json = serde_json::to_string(&Service::Notification).unwrap();
        assert_eq!(json, "\"notification\"");
    }
}
