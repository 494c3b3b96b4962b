//! The JSON shapes of the REST API and their conversions to and from the
//! gRPC messages.
//!
//! Conventions (also stated in the OpenAPI document):
//! - field names are `snake_case`, as in the protos;
//! - money is `{"currency": "EUR", "amount_minor": 1999}`: an ISO 4217 code
//!   and an integer count of the currency's minor units (19.99 EUR), never a
//!   float, so no client can round a price differently;
//! - ids are UUID strings; timestamps RFC 3339 strings in UTC;
//! - enums are lower-case strings (`"pending"`, `"in_transit"`);
//! - request bodies reject unknown fields, so a misspelt optional field is an
//!   error instead of being silently ignored;
//! - every rule a request must meet is a `#[schemars(...)]` attribute here:
//!   the OpenAPI document shows it and the extractors enforce it from the
//!   same derived schema (see [`crate::contract`]).

use commerce_proto::{
    audit, auth, cart, catalog, common, inventory, notification, order, recommendation, reviews, search,
    shipping,
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::contract::{
    COUNTRY, CURRENCY, CURRENCY_OR_EMPTY, EMAIL, NO_NUL, NON_BLANK, PHONE_OR_EMPTY, SKU, SLUG,
};

/// `impl From<$from> for $to` field by field, for the conversions between
/// the protos and the JSON shapes, which differ in types but not in names: a
/// bare `name` moves the field as it is, `name: f` converts it with `f`, and
/// `; name = value` sets a field the source has no counterpart for.
/// `both A, B` writes both directions of a one-to-one shape.
macro_rules! from_fields {
    (both $a:ty, $b:ty { $($field:ident),* $(,)? }) => {
        from_fields!($a => $b { $($field),* });
        from_fields!($b => $a { $($field),* });
    };
    ($from:ty => $to:ty { $($field:ident $(: $convert:expr)?),* $(,)? } $(; $($extra:ident = $value:expr),* $(,)?)?) => {
        impl From<$from> for $to {
            fn from(from: $from) -> Self {
                Self {
                    $($field: from_fields!(@field from.$field $(, $convert)?),)*
                    $($($extra: $value,)*)?
                }
            }
        }
    };
    (@field $value:expr) => { $value };
    (@field $value:expr, $convert:expr) => { ($convert)($value) };
}

/// `impl From<$from> for $to` for a JSON enum and its proto enum, whose
/// variants have the same names (the proto's `UNSPECIFIED` has no JSON form).
macro_rules! same_variants {
    ($from:ident => $to:ty { $($variant:ident),* $(,)? }) => {
        impl From<$from> for $to {
            fn from(value: $from) -> Self {
                match value {
                    $($from::$variant => Self::$variant,)*
                }
            }
        }
    };
}

/// Most units of one product in one line or cart operation: far above any
/// real basket, low enough that a typo (an extra zero or three) is caught.
pub const MAX_QUANTITY: i64 = 10_000;
/// Most lines in one order.
pub const MAX_ORDER_LINES: usize = 500;
/// Largest page a client may ask for; the services cap at the same value.
pub const MAX_PAGE_SIZE: i32 = 100;
/// Longest free-text field of an address, a note or a token.
pub const MAX_TEXT: u32 = 200;

// ---------------------------------------------------------------- shared

/// An amount of money in integer minor units.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Money {
    /// ISO 4217 alphabetic code, upper case ("EUR").
    #[schemars(pattern(CURRENCY))]
    pub currency: String,
    /// The amount in the currency's minor units (1999 EUR is 19.99 EUR).
    #[schemars(range(min = 0, max = i64::MAX))]
    pub amount_minor: i64,
}

impl From<Money> for common::v1::Money {
    fn from(money: Money) -> Self {
        Self { currency_code: money.currency, units: money.amount_minor }
    }
}

impl From<common::v1::Money> for Money {
    fn from(money: common::v1::Money) -> Self {
        Self { currency: money.currency_code, amount_minor: money.units }
    }
}

/// The JSON shape of an optional message (unset stays `null`).
fn optional<P, J: From<P>>(value: Option<P>) -> Option<J> {
    value.map(J::from)
}

/// The JSON shapes of repeated messages, in order.
fn each<P, J: From<P>>(values: Vec<P>) -> Vec<J> {
    values.into_iter().map(J::from).collect()
}

/// A postal address.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Address {
    #[schemars(pattern(NON_BLANK), length(max = MAX_TEXT))]
    pub recipient_name: String,
    #[schemars(pattern(NON_BLANK), length(max = MAX_TEXT))]
    pub line1: String,
    #[serde(default)]
    #[schemars(length(max = MAX_TEXT))]
    pub line2: String,
    #[schemars(pattern(NON_BLANK), length(max = MAX_TEXT))]
    pub city: String,
    #[serde(default)]
    #[schemars(length(max = MAX_TEXT))]
    pub region: String,
    #[schemars(pattern(NON_BLANK), length(max = 20))]
    pub postal_code: String,
    /// ISO 3166-1 alpha-2, upper case ("DE").
    #[schemars(pattern(COUNTRY))]
    pub country_code: String,
    /// E.164 phone number the courier may call ("+4930123456"); optional.
    #[serde(default)]
    #[schemars(pattern(PHONE_OR_EMPTY))]
    pub phone: String,
}

from_fields!(both Address, common::v1::Address {
    recipient_name, line1, line2, city, region, postal_code, country_code, phone,
});

/// RFC 3339 text of a protobuf timestamp; `None` when unset.
pub fn timestamp(value: Option<prost_types::Timestamp>) -> Option<String> {
    commerce_proto::time::from_timestamp(&value?)
        .map(|time| time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
}

/// Lower-case name of a proto enum value without its type prefix
/// (`ORDER_STATUS_IN_TRANSIT` -> `in_transit`).
fn enum_name(full: &str, prefix: &str) -> String {
    full.strip_prefix(prefix).unwrap_or(full).to_ascii_lowercase()
}

/// [`enum_name`] of a proto enum field's number; a number this build does
/// not know reads as the enum's first value, `UNSPECIFIED`.
fn enum_label<E: TryFrom<i32> + Default>(value: i32, name: fn(&E) -> &'static str, prefix: &str) -> String {
    enum_name(name(&E::try_from(value).unwrap_or_default()), prefix)
}

/// A quantity within [`MAX_QUANTITY`], for the proto's `uint32`.
pub fn quantity_u32(quantity: i64) -> u32 {
    u32::try_from(quantity.clamp(0, MAX_QUANTITY)).unwrap_or(0)
}

/// An id query parameter given empty (`?order_id=`) reads as not given, as
/// in most web APIs. Clients that fill a parameter from an earlier answer
/// (`"order_id": ""` of a welcome notification) send exactly that; JSON
/// Schema's `format: uuid` is an annotation to them, so refusing it would
/// refuse what the document lets them send.
fn empty_id_as_none<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<Uuid>, D::Error> {
    match Option::<String>::deserialize(deserializer)? {
        None => Ok(None),
        Some(text) if text.is_empty() => Ok(None),
        Some(text) => Uuid::parse_str(&text).map(Some).map_err(serde::de::Error::custom),
    }
}

/// Pagination of list queries.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PageQuery {
    /// 1 to 100; the service's default (20) when absent.
    #[schemars(range(min = 1, max = MAX_PAGE_SIZE))]
    pub page_size: Option<i32>,
    /// `next_page_token` of the previous page.
    #[schemars(length(max = 1024))]
    pub page_token: Option<String>,
}

// ---------------------------------------------------------------- auth

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    #[schemars(pattern(EMAIL), length(max = 254))]
    pub email: String,
    /// 8 to 128 characters, not only white space.
    #[schemars(pattern(NON_BLANK), length(min = 8, max = 128))]
    pub password: String,
    /// Shown to the customer; the email's local part when empty.
    #[serde(default)]
    #[schemars(length(max = 100))]
    pub display_name: String,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    #[schemars(pattern(EMAIL), length(max = 254))]
    pub email: String,
    #[schemars(pattern(NON_BLANK), length(max = 128))]
    pub password: String,
}

/// Body of `POST /api/users/me/erasure`: the caller's password, which
/// confirms that the account's owner asks.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ErasureRequest {
    #[schemars(pattern(NON_BLANK), length(max = 128))]
    pub password: String,
}

/// Body of refresh and logout.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RefreshTokenRequest {
    #[schemars(pattern(NON_BLANK), length(max = 1024))]
    pub refresh_token: String,
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct User {
    pub id: String,
    pub email: String,
    pub display_name: String,
    /// `customer`, `admin`, `courier`.
    pub roles: Vec<String>,
    pub created_at: Option<String>,
}

/// The names of the known roles among `roles` (unknown numbers and
/// `UNSPECIFIED` are left out).
fn role_names(roles: Vec<i32>) -> Vec<String> {
    roles
        .into_iter()
        .filter_map(|role| auth::v1::Role::try_from(role).ok())
        .filter(|role| *role != auth::v1::Role::Unspecified)
        .map(|role| enum_name(role.as_str_name(), "ROLE_"))
        .collect()
}

from_fields!(auth::v1::User => User {
    id, email, display_name, roles: role_names, created_at: timestamp,
});

/// A role, as administrators give it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum UserRole {
    Customer,
    Admin,
    Courier,
}

same_variants!(UserRole => auth::v1::Role { Customer, Admin, Courier });

/// A user as administrators see them.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct AdminUser {
    pub id: String,
    pub email: String,
    pub display_name: String,
    /// `customer`, `admin`, `courier`.
    pub roles: Vec<String>,
    /// Whether the user may sign in.
    pub active: bool,
    pub created_at: Option<String>,
}

from_fields!(auth::v1::User => AdminUser {
    id, email, display_name, roles: role_names, active, created_at: timestamp,
});

/// Filters of `GET /api/admin/users`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AdminUserQuery {
    /// Text to find within email or display name, in any case.
    #[schemars(pattern(NO_NUL), length(max = 100))]
    pub q: Option<String>,
    /// Only users with this role.
    pub role: Option<UserRole>,
    #[schemars(range(min = 1, max = MAX_PAGE_SIZE))]
    pub page_size: Option<i32>,
    #[schemars(length(max = 1024))]
    pub page_token: Option<String>,
}

/// One page of users, newest first.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct UserPage {
    pub users: Vec<AdminUser>,
    /// Pass as `page_token` for the next page; empty on the last page.
    pub next_page_token: String,
    /// Users matching the filters, over every page.
    pub total_size: i64,
}

/// Body of `PUT /api/admin/users/{id}/role`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SetUserRoleRequest {
    pub role: UserRole,
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct TokenPair {
    pub access_token: String,
    pub access_token_expires_at: Option<String>,
    pub refresh_token: String,
    pub refresh_token_expires_at: Option<String>,
    /// Always `Bearer`.
    pub token_type: String,
}

/// The token type, `Bearer` when auth left it empty.
fn bearer_unless_named(token_type: String) -> String {
    if token_type.is_empty() { "Bearer".to_owned() } else { token_type }
}

from_fields!(auth::v1::TokenPair => TokenPair {
    access_token,
    access_token_expires_at: timestamp,
    refresh_token,
    refresh_token_expires_at: timestamp,
    token_type: bearer_unless_named,
});

/// Answer of register and login.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct SessionResponse {
    pub user: Option<User>,
    pub tokens: Option<TokenPair>,
}

// ---------------------------------------------------------------- catalog

#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct Product {
    pub id: String,
    pub sku: String,
    pub name: String,
    pub description: String,
    pub category_id: String,
    pub price: Option<Money>,
    pub active: bool,
    pub created_at: Option<String>,
    pub updated_at: Option<String>,
    /// The product's rating over its visible reviews.
    pub rating: ProductRating,
}

/// A product's rating, kept by the catalog from the reviews service's
/// events (a new review shows here within seconds).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, JsonSchema)]
pub struct ProductRating {
    /// Number of visible reviews.
    pub review_count: i64,
    /// Average stars (1 to 5), rounded to two decimals; null without reviews.
    pub average: Option<f64>,
}

impl ProductRating {
    pub fn new(review_count: i64, stars_total: i64) -> Self {
        // Counts and totals stay far below 2^52: exact as floats.
        #[allow(clippy::cast_precision_loss)]
        let average =
            (review_count > 0).then(|| (stars_total as f64 / review_count as f64 * 100.0).round() / 100.0);
        Self { review_count, average }
    }
}

impl From<catalog::v1::Product> for Product {
    fn from(product: catalog::v1::Product) -> Self {
        Self {
            rating: ProductRating::new(product.review_count, product.stars_total),
            id: product.id,
            sku: product.sku,
            name: product.name,
            description: product.description,
            category_id: product.category_id,
            price: product.price.map(Into::into),
            active: product.active,
            created_at: timestamp(product.created_at),
            updated_at: timestamp(product.updated_at),
        }
    }
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct ProductPage {
    pub products: Vec<Product>,
    /// Empty on the last page.
    pub next_page_token: String,
    pub total_size: i64,
}

/// Filters of `GET /api/products`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProductQuery {
    #[schemars(range(min = 1, max = MAX_PAGE_SIZE))]
    pub page_size: Option<i32>,
    #[schemars(length(max = 1024))]
    pub page_token: Option<String>,
    /// Category id.
    #[serde(default, deserialize_with = "empty_id_as_none")]
    pub category: Option<Uuid>,
    /// Words the name or description must contain.
    #[schemars(length(max = 200))]
    pub q: Option<String>,
    /// Lowest price, in minor units (of `currency` when given). Above
    /// `max_price` matches nothing.
    #[schemars(range(min = 0, max = i64::MAX))]
    pub min_price: Option<i64>,
    /// Highest price, in minor units (of `currency` when given).
    #[schemars(range(min = 0, max = i64::MAX))]
    pub max_price: Option<i64>,
    /// Only products priced in this currency. Without it, `min_price` and
    /// `max_price` compare the amount of each product in its own currency.
    #[schemars(pattern(CURRENCY))]
    pub currency: Option<String>,
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct Category {
    pub id: String,
    pub name: String,
    pub slug: String,
    /// Empty for a top-level category.
    pub parent_id: String,
    pub created_at: Option<String>,
}

from_fields!(catalog::v1::Category => Category { id, name, slug, parent_id, created_at: timestamp });

#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct CategoryList {
    pub categories: Vec<Category>,
}

/// Body of `POST /api/admin/products`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateProductRequest {
    /// Letters, digits, `.`, `_` and `-`.
    #[schemars(pattern(SKU), length(max = 64))]
    pub sku: String,
    #[schemars(pattern(NON_BLANK), length(max = 200))]
    pub name: String,
    #[serde(default)]
    #[schemars(length(max = 10_000))]
    pub description: String,
    pub category_id: Uuid,
    pub price: Money,
    /// Buyable right away; default true.
    #[serde(default = "default_true")]
    pub active: bool,
}

fn default_true() -> bool {
    true
}

/// Body of `PATCH /api/admin/products/{id}`: the fields present change
/// (at least one; `null` is not a value of any of them).
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(extend("minProperties" = 1))]
pub struct UpdateProductRequest {
    #[serde(default)]
    #[schemars(with = "String", pattern(SKU), length(max = 64))]
    pub sku: Option<String>,
    #[serde(default)]
    #[schemars(with = "String", pattern(NON_BLANK), length(max = 200))]
    pub name: Option<String>,
    #[serde(default)]
    #[schemars(with = "String", length(max = 10_000))]
    pub description: Option<String>,
    #[serde(default)]
    #[schemars(with = "Uuid")]
    pub category_id: Option<Uuid>,
    #[serde(default)]
    #[schemars(with = "Money")]
    pub price: Option<Money>,
    #[serde(default)]
    #[schemars(with = "bool")]
    pub active: Option<bool>,
}

impl UpdateProductRequest {
    /// The product carrying the new values, and the mask naming them.
    pub fn into_proto(self, id: Uuid) -> catalog::v1::UpdateProductRequest {
        let mut paths = Vec::new();
        let mut product = catalog::v1::Product { id: id.to_string(), ..Default::default() };
        if let Some(sku) = self.sku {
            paths.push("sku".to_owned());
            product.sku = sku;
        }
        if let Some(name) = self.name {
            paths.push("name".to_owned());
            product.name = name;
        }
        if let Some(description) = self.description {
            paths.push("description".to_owned());
            product.description = description;
        }
        if let Some(category_id) = self.category_id {
            paths.push("category_id".to_owned());
            product.category_id = category_id.to_string();
        }
        if let Some(price) = self.price {
            paths.push("price".to_owned());
            product.price = Some(price.into());
        }
        if let Some(active) = self.active {
            paths.push("active".to_owned());
            product.active = active;
        }
        catalog::v1::UpdateProductRequest {
            product: Some(product),
            update_mask: Some(prost_types::FieldMask { paths }),
        }
    }
}

/// Body of `POST /api/admin/categories`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateCategoryRequest {
    #[schemars(pattern(NON_BLANK), length(max = 200))]
    pub name: String,
    /// Lower-case letters, digits and dashes; unique.
    #[schemars(pattern(SLUG), length(max = 64))]
    pub slug: String,
    pub parent_id: Option<Uuid>,
}

// ---------------------------------------------------------------- inventory

/// Body of `POST /api/admin/inventory/{product_id}/restock`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RestockRequest {
    /// Units received; positive.
    #[schemars(range(min = 1, max = MAX_QUANTITY))]
    pub quantity: i64,
    #[serde(default)]
    #[schemars(length(max = MAX_TEXT))]
    pub note: String,
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct StockLevel {
    pub product_id: String,
    pub available: i64,
    pub reserved: i64,
    pub sold: i64,
    pub updated_at: Option<String>,
}

from_fields!(inventory::v1::StockLevel => StockLevel {
    product_id, available, reserved, sold, updated_at: timestamp,
});

// ---------------------------------------------------------------- cart

/// Body of `POST /api/cart/items`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AddItemRequest {
    pub product_id: Uuid,
    /// Units to add; positive.
    #[schemars(range(min = 1, max = MAX_QUANTITY))]
    pub quantity: i64,
}

/// Body of `PATCH /api/cart/items/{product_id}`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateItemRequest {
    /// The line's new quantity; positive (remove a line with DELETE).
    #[schemars(range(min = 1, max = MAX_QUANTITY))]
    pub quantity: i64,
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct CartItem {
    pub product_id: String,
    pub quantity: u32,
    pub name: String,
    pub unit_price: Option<Money>,
    pub line_total: Option<Money>,
    pub in_stock: bool,
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct Cart {
    pub items: Vec<CartItem>,
    pub subtotal: Option<Money>,
    pub updated_at: Option<String>,
    pub expires_at: Option<String>,
}

from_fields!(cart::v1::CartItem => CartItem {
    product_id, quantity, name, unit_price: optional, line_total: optional, in_stock,
});

from_fields!(cart::v1::Cart => Cart {
    items: each, subtotal: optional, updated_at: timestamp, expires_at: timestamp,
});

/// Body of `POST /api/cart/checkout`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckoutRequest {
    /// Where to ship; the default address of the caller's address book when
    /// left out (422 if the book has none).
    #[serde(default)]
    pub shipping_address: Option<Address>,
    /// Opaque token from the payment provider's client SDK.
    #[schemars(pattern(NON_BLANK), length(max = MAX_TEXT))]
    pub payment_method_token: String,
}

// ---------------------------------------------------------------- orders

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OrderLineRequest {
    pub product_id: Uuid,
    /// Units; positive.
    #[schemars(range(min = 1, max = MAX_QUANTITY))]
    pub quantity: i64,
}

/// Body of `POST /api/orders`. No prices: the order service prices lines
/// from the catalog.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PlaceOrderRequest {
    #[schemars(length(min = 1, max = MAX_ORDER_LINES))]
    pub lines: Vec<OrderLineRequest>,
    /// Where to ship; the default address of the caller's address book when
    /// left out (422 if the book has none).
    #[serde(default)]
    pub shipping_address: Option<Address>,
    #[schemars(pattern(NON_BLANK), length(max = MAX_TEXT))]
    pub payment_method_token: String,
}

/// Optional body of `POST /api/orders/{id}/cancel`.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CancelOrderRequest {
    #[serde(default)]
    #[schemars(length(max = MAX_TEXT))]
    pub reason: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatus {
    Pending,
    Reserved,
    Confirmed,
    Rejected,
    Failed,
    Cancelled,
    Shipped,
    Delivered,
}

same_variants!(OrderStatus => order::v1::OrderStatus {
    Pending, Reserved, Confirmed, Rejected, Failed, Cancelled, Shipped, Delivered,
});

/// Filters of `GET /api/orders`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OrderQuery {
    #[schemars(range(min = 1, max = MAX_PAGE_SIZE))]
    pub page_size: Option<i32>,
    #[schemars(length(max = 1024))]
    pub page_token: Option<String>,
    pub status: Option<OrderStatus>,
}

/// Filters of `GET /api/admin/orders`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AdminOrderQuery {
    #[schemars(range(min = 1, max = MAX_PAGE_SIZE))]
    pub page_size: Option<i32>,
    #[schemars(length(max = 1024))]
    pub page_token: Option<String>,
    pub status: Option<OrderStatus>,
    /// Only this user's orders.
    #[serde(default, deserialize_with = "empty_id_as_none")]
    pub user_id: Option<Uuid>,
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct OrderLine {
    pub product_id: String,
    pub sku: String,
    pub name: String,
    pub quantity: u32,
    pub unit_price: Option<Money>,
    pub line_total: Option<Money>,
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct Order {
    pub id: String,
    pub user_id: String,
    /// `pending`, `reserved`, `confirmed`, `rejected`, `failed`,
    /// `cancelled`, `shipped`, `delivered`.
    pub status: String,
    pub lines: Vec<OrderLine>,
    pub total: Option<Money>,
    pub shipping_address: Option<Address>,
    pub failure_reason: String,
    pub reservation_id: String,
    pub payment_id: String,
    pub shipment_id: String,
    pub idempotency_key: String,
    /// True once a cancelled or failed order's captured payment was refunded.
    pub refunded: bool,
    pub created_at: Option<String>,
    pub updated_at: Option<String>,
}

/// One status an order entered: the data of an SSE `status` event (whose
/// `id` is the version) and a WebSocket text message.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct OrderStatusEvent {
    pub order_id: String,
    /// 1 for the placement, then one more per change, without gaps: resume
    /// after the last one seen with `Last-Event-ID`.
    pub version: u64,
    /// `pending`, `reserved`, `confirmed`, `rejected`, `failed`,
    /// `cancelled`, `shipped`, `delivered`.
    pub status: String,
    /// Why the order was rejected, failed or cancelled; empty otherwise.
    pub failure_reason: String,
    pub changed_at: Option<String>,
}

from_fields!(order::v1::OrderStatusChange => OrderStatusEvent {
    order_id, version, status: order_status_name, failure_reason, changed_at: timestamp,
});

fn order_status_name(value: i32) -> String {
    enum_label(value, order::v1::OrderStatus::as_str_name, "ORDER_STATUS_")
}

from_fields!(order::v1::OrderLine => OrderLine {
    product_id, sku, name, quantity, unit_price: optional, line_total: optional,
});

from_fields!(order::v1::Order => Order {
    id, user_id, status: order_status_name, lines: each, total: optional, shipping_address: optional,
    failure_reason, reservation_id, payment_id, shipment_id, idempotency_key, refunded,
    created_at: timestamp, updated_at: timestamp,
});

#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct OrderPage {
    pub orders: Vec<Order>,
    pub next_page_token: String,
    pub total_size: i64,
}

// ---------------------------------------------------------------- shipping

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ShipmentStatus {
    Pending,
    Assigned,
    PickedUp,
    InTransit,
    Delivered,
    Halted,
}

same_variants!(ShipmentStatus => shipping::v1::ShipmentStatus {
    Pending, Assigned, PickedUp, InTransit, Delivered, Halted,
});

/// Filters of `GET /api/shipments`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ShipmentQuery {
    /// The order whose shipment to track (customers must give it).
    #[serde(default, deserialize_with = "empty_id_as_none")]
    pub order_id: Option<Uuid>,
    pub status: Option<ShipmentStatus>,
    #[schemars(range(min = 1, max = MAX_PAGE_SIZE))]
    pub page_size: Option<i32>,
    #[schemars(length(max = 1024))]
    pub page_token: Option<String>,
}

/// A status a courier may move a shipment to (never back to `pending`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ShipmentMove {
    Assigned,
    PickedUp,
    InTransit,
    Delivered,
    Halted,
}

same_variants!(ShipmentMove => shipping::v1::ShipmentStatus {
    Assigned, PickedUp, InTransit, Delivered, Halted,
});

/// Body of `POST /api/shipments/{id}/status`. Whether the shipment may
/// move to `status` now is the shipping service's answer (409 if not).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(extend(
    "if" = {"properties": {"status": {"const": "halted"}}, "required": ["status"]},
    "then" = {"required": ["note"]}
))]
pub struct ShipmentStatusRequest {
    pub status: ShipmentMove,
    /// What happened; required (not blank) for `halted`.
    #[serde(default)]
    #[schemars(pattern(NON_BLANK), length(max = MAX_TEXT))]
    pub note: String,
    #[serde(default)]
    #[schemars(length(max = MAX_TEXT))]
    pub location: String,
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct TrackingEvent {
    pub status: String,
    pub description: String,
    pub location: String,
    pub actor_id: String,
    pub occurred_at: Option<String>,
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct Shipment {
    pub id: String,
    pub order_id: String,
    pub user_id: String,
    pub courier_id: String,
    /// `pending`, `assigned`, `picked_up`, `in_transit`, `delivered`, `halted`.
    pub status: String,
    pub address: Option<Address>,
    pub tracking_number: String,
    pub halt_reason: String,
    pub created_at: Option<String>,
    pub updated_at: Option<String>,
    pub delivered_at: Option<String>,
    /// Tracking history, oldest first (only when tracked by order).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<TrackingEvent>,
}

fn shipment_status_name(value: i32) -> String {
    enum_label(value, shipping::v1::ShipmentStatus::as_str_name, "SHIPMENT_STATUS_")
}

// The tracking history is read with a second call, by the route that shows it.
from_fields!(shipping::v1::Shipment => Shipment {
    id, order_id, user_id, courier_id, status: shipment_status_name, address: optional, tracking_number,
    halt_reason, created_at: timestamp, updated_at: timestamp, delivered_at: timestamp,
}; events = Vec::new());

from_fields!(shipping::v1::TrackingEvent => TrackingEvent {
    status: shipment_status_name, description, location, actor_id, occurred_at: timestamp,
});

#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct ShipmentPage {
    pub shipments: Vec<Shipment>,
    pub next_page_token: String,
    pub total_size: i64,
}

// ---------------------------------------------------------------- notifications

/// Filters of `GET /api/notifications`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NotificationQuery {
    #[schemars(range(min = 1, max = MAX_PAGE_SIZE))]
    pub page_size: Option<i32>,
    #[schemars(length(max = 1024))]
    pub page_token: Option<String>,
    #[serde(default)]
    pub unread_only: bool,
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct Notification {
    pub id: String,
    /// `order_confirmed`, `order_shipped`, ...
    pub kind: String,
    pub title: String,
    pub body: String,
    pub order_id: String,
    pub created_at: Option<String>,
    pub read: bool,
    pub read_at: Option<String>,
}

fn notification_kind_name(value: i32) -> String {
    enum_label(value, notification::v1::NotificationKind::as_str_name, "NOTIFICATION_KIND_")
}

from_fields!(notification::v1::Notification => Notification {
    id, kind: notification_kind_name, title, body, order_id, created_at: timestamp, read, read_at: timestamp,
});

#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct NotificationPage {
    pub notifications: Vec<Notification>,
    pub next_page_token: String,
    pub unread_count: i64,
}

// ------------------------------------------------------------------ audit

/// Most audit entries in one page.
pub const MAX_AUDIT_PAGE_SIZE: i32 = 500;

/// Filters of `GET /api/admin/audit`; they combine with AND.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// Only events of this type, for example `commerce.events.v1.UserRoleChanged`.
    #[schemars(pattern(NO_NUL), length(max = 200))]
    pub event_type: Option<String>,
    /// Only events whose actor is this user id.
    #[schemars(pattern(NO_NUL), length(max = 200))]
    pub actor_id: Option<String>,
    /// Only events about this aggregate (an order id, a user id...).
    #[schemars(pattern(NO_NUL), length(max = 200))]
    pub subject: Option<String>,
    /// Only events that happened at or after this instant (RFC 3339).
    #[schemars(extend("format" = "date-time"))]
    pub since: Option<String>,
    /// Only events that happened before this instant (RFC 3339).
    #[schemars(extend("format" = "date-time"))]
    pub until: Option<String>,
    #[schemars(range(min = 1, max = MAX_AUDIT_PAGE_SIZE))]
    pub page_size: Option<i32>,
    #[schemars(length(max = 1024))]
    pub page_token: Option<String>,
}

/// One recorded event of the audit trail.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct AuditEntry {
    /// Position in the chain, from 1, without gaps.
    pub sequence: i64,
    pub event_id: String,
    pub event_type: String,
    /// The service that published the event.
    pub source: String,
    /// The aggregate the event is about.
    pub subject: String,
    /// Who acted, when the event names someone; empty for the shop's own steps.
    pub actor_id: String,
    /// The trace of the request that caused the event (32 hex digits); empty without one.
    pub trace_id: String,
    /// When it happened, to the microsecond (as hashed).
    pub occurred_at: Option<String>,
    /// When the audit service recorded it, to the microsecond (as hashed).
    pub recorded_at: Option<String>,
    /// The event's payload in the protobuf JSON mapping.
    pub payload: serde_json::Value,
    /// SHA-256 of the previous entry (hex).
    pub previous_hash: String,
    /// SHA-256 over `previous_hash` and this entry's fields (hex).
    pub hash: String,
}

fn micros_timestamp(value: Option<prost_types::Timestamp>) -> Option<String> {
    commerce_proto::time::from_timestamp(&value?)
        .map(|time| time.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
}

impl From<audit::v1::AuditEntry> for AuditEntry {
    fn from(entry: audit::v1::AuditEntry) -> Self {
        let payload = serde_json::from_str(&entry.payload_json)
            .unwrap_or(serde_json::Value::String(entry.payload_json));
        Self {
            sequence: entry.sequence,
            event_id: entry.event_id,
            event_type: entry.event_type,
            source: entry.source,
            subject: entry.subject,
            actor_id: entry.actor_id,
            trace_id: entry.trace_id,
            occurred_at: micros_timestamp(entry.occurred_at),
            recorded_at: micros_timestamp(entry.recorded_at),
            payload,
            previous_hash: entry.previous_hash,
            hash: entry.hash,
        }
    }
}

/// One page of the audit trail, newest first.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct AuditPage {
    pub entries: Vec<AuditEntry>,
    /// Pass as `page_token` for the next page; empty on the last page.
    pub next_page_token: String,
}

/// A Stripe event as Stripe delivers it to a webhook endpoint; only its
/// signature, id, type and object are read, the rest is passed on as is.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct StripeEvent {
    /// `evt_...`
    pub id: String,
    /// Always `event`.
    pub object: String,
    /// `payment_intent.succeeded`, `charge.refunded`, ...
    #[serde(rename = "type")]
    pub kind: String,
    /// `{"object": {...}}`: the object the event is about.
    pub data: serde_json::Map<String, serde_json::Value>,
}

// ---------------------------------------------------------------- profiles

/// The caller's preferences.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Preferences {
    /// ISO 4217 code of the currency to show prices in ("EUR"); empty for
    /// the shop's.
    #[serde(default)]
    #[schemars(pattern(CURRENCY_OR_EMPTY))]
    pub currency: String,
    /// Whether the caller agreed to marketing messages.
    #[serde(default)]
    pub marketing_consent: bool,
}

/// The caller's profile.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct Profile {
    pub user_id: String,
    /// Empty until set (registration sets it).
    pub display_name: String,
    /// E.164, or empty.
    pub phone: String,
    pub preferences: Preferences,
    /// Last change by the user; absent before the first.
    pub updated_at: Option<String>,
}

impl From<commerce_proto::profile::v1::Profile> for Profile {
    fn from(profile: commerce_proto::profile::v1::Profile) -> Self {
        let preferences = profile.preferences.unwrap_or_default();
        Self {
            user_id: profile.user_id,
            display_name: profile.display_name,
            phone: profile.phone,
            preferences: Preferences {
                currency: preferences.currency,
                marketing_consent: preferences.marketing_consent,
            },
            updated_at: timestamp(profile.updated_at),
        }
    }
}

/// Body of `PUT /api/users/me`: the whole editable profile.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateProfileRequest {
    #[schemars(pattern(NON_BLANK), length(max = 100))]
    pub display_name: String,
    /// E.164 ("+4930123456"), or empty.
    #[serde(default)]
    #[schemars(pattern(PHONE_OR_EMPTY))]
    pub phone: String,
    #[serde(default)]
    pub preferences: Preferences,
}

/// An address of the caller's book.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct SavedAddress {
    pub id: String,
    /// The caller's name for it ("Home"); may be empty.
    pub label: String,
    pub address: Address,
    /// Whether orders without an address ship here.
    pub is_default: bool,
    pub created_at: Option<String>,
    pub updated_at: Option<String>,
}

impl From<commerce_proto::profile::v1::SavedAddress> for SavedAddress {
    fn from(saved: commerce_proto::profile::v1::SavedAddress) -> Self {
        Self {
            id: saved.id,
            label: saved.label,
            address: saved.address.map(Address::from).unwrap_or_default(),
            is_default: saved.is_default,
            created_at: timestamp(saved.created_at),
            updated_at: timestamp(saved.updated_at),
        }
    }
}

/// The caller's address book, the default first.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct AddressBook {
    pub addresses: Vec<SavedAddress>,
}

/// Body of `POST /api/users/me/addresses`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NewAddressRequest {
    #[serde(default)]
    #[schemars(pattern(NO_NUL), length(max = MAX_TEXT))]
    pub label: String,
    pub address: Address,
    /// Make it the default (the first address is the default anyway).
    #[serde(default)]
    pub make_default: bool,
}

/// Body of `PATCH /api/users/me/addresses/{id}`: what is given changes.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AddressPatch {
    #[serde(default)]
    #[schemars(pattern(NO_NUL), length(max = MAX_TEXT))]
    pub label: Option<String>,
    #[serde(default)]
    pub address: Option<Address>,
    /// True makes it the default; false changes nothing.
    #[serde(default)]
    pub make_default: bool,
}

/// Everything the shop keeps about the caller (`GET /api/users/me/export`).
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct DataExport {
    /// When the export was assembled (RFC 3339).
    pub exported_at: String,
    pub user_id: String,
    /// The caller's roles.
    pub roles: Vec<String>,
    pub profile: Profile,
    pub addresses: Vec<SavedAddress>,
    /// Every order, newest first.
    pub orders: Vec<Order>,
    /// Every shipment of the caller's orders.
    pub shipments: Vec<Shipment>,
    /// Every notification, newest first.
    pub notifications: Vec<Notification>,
    /// Every review the caller wrote, removed ones included, newest first.
    pub reviews: Vec<Review>,
    /// The products the caller viewed while signed in (the latest 50 kept),
    /// the latest first.
    pub viewed_products: Vec<ViewedProduct>,
    /// True when a kind of record had more than 100,000 entries and the
    /// export stopped there.
    pub truncated: bool,
}

/// A product the caller viewed.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct ViewedProduct {
    pub product_id: String,
    pub viewed_at: Option<String>,
}

from_fields!(recommendation::v1::View => ViewedProduct { product_id, viewed_at: timestamp });

/// What the payment service made of a payment provider's webhook delivery.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct WebhookReceipt {
    /// The provider's event id (`evt_...`).
    pub event_id: String,
    /// The provider's event type (`payment_intent.succeeded`, ...).
    pub event_type: String,
    /// Whether a payment was waiting for this event and is looked at again now.
    pub payment_due: bool,
}

/// What a check of the whole audit chain found.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct AuditVerification {
    /// Whether every retained entry matches its hash and links to the one before it.
    pub intact: bool,
    /// Entries checked (up to the first broken one).
    pub entries_checked: i64,
    /// The first entry that does not match; absent when intact.
    pub first_broken_sequence: Option<i64>,
    /// What is wrong with it; absent when intact.
    pub problem: Option<String>,
    /// The newest entry: keep its sequence and hash outside the shop to notice
    /// entries removed from the end later.
    pub head_sequence: i64,
    pub head_hash: String,
    /// The oldest entry retention keeps.
    pub retained_from_sequence: i64,
}

impl From<audit::v1::VerifyChainResponse> for AuditVerification {
    fn from(response: audit::v1::VerifyChainResponse) -> Self {
        Self {
            intact: response.intact,
            entries_checked: response.entries_checked,
            first_broken_sequence: (!response.intact).then_some(response.first_broken_sequence),
            problem: (!response.intact).then_some(response.problem),
            head_sequence: response.head_sequence,
            head_hash: response.head_hash,
            retained_from_sequence: response.retained_from_sequence,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn money_round_trips_in_minor_units() {
        let money: Money = serde_json::from_str(r#"{"currency":"EUR","amount_minor":1999}"#).expect("money");
        let proto = common::v1::Money::from(money.clone());
        assert_eq!(proto.units, 1999);
        assert_eq!(Money::from(proto), money);
    }

    #[test]
    fn enum_names_lose_their_prefix() {
        assert_eq!(enum_name("SHIPMENT_STATUS_IN_TRANSIT", "SHIPMENT_STATUS_"), "in_transit");
    }

    fn at(seconds: i64, nanos: i32) -> Option<prost_types::Timestamp> {
        Some(prost_types::Timestamp { seconds, nanos })
    }

    fn eur(units: i64) -> Option<common::v1::Money> {
        Some(common::v1::Money { currency_code: "EUR".into(), units })
    }

    fn address() -> common::v1::Address {
        common::v1::Address {
            recipient_name: "Ada".into(),
            line1: "Main St 1".into(),
            line2: "Floor 2".into(),
            city: "Berlin".into(),
            region: "BE".into(),
            postal_code: "10115".into(),
            country_code: "DE".into(),
            phone: "+4930123".into(),
        }
    }

    fn json<T: Serialize>(value: T) -> String {
        serde_json::to_string(&value).expect("serializes")
    }

    /// Every proto -> JSON conversion, with every field set, against the
    /// exact bytes clients get: a refactoring of the conversions must not
    /// change a name, an order, a format or a default.
    #[test]
    fn proto_messages_convert_to_exactly_the_documented_json() {
        let cases = [
            json(User::from(auth::v1::User {
                id: "u1".into(),
                email: "ada@example.com".into(),
                display_name: "Ada".into(),
                roles: vec![auth::v1::Role::Customer as i32, 0, auth::v1::Role::Admin as i32, 99],
                created_at: at(1_700_000_000, 123_456_789),
                active: true,
            })),
            json(TokenPair::from(auth::v1::TokenPair {
                access_token: "at".into(),
                access_token_expires_at: at(1_700_000_900, 0),
                refresh_token: "rt".into(),
                refresh_token_expires_at: None,
                token_type: String::new(),
            })),
            json(TokenPair::from(auth::v1::TokenPair { token_type: "DPoP".into(), ..Default::default() })),
            json(Product::from(catalog::v1::Product {
                id: "p1".into(),
                sku: "MUG-1".into(),
                name: "Mug".into(),
                description: "A mug".into(),
                category_id: "c1".into(),
                price: eur(1299),
                active: true,
                created_at: at(1_700_000_000, 0),
                updated_at: at(1_700_000_001, 5_000_000),
                review_count: 3,
                stars_total: 14,
            })),
            json(Category::from(catalog::v1::Category {
                id: "c1".into(),
                name: "Mugs".into(),
                slug: "mugs".into(),
                parent_id: "c0".into(),
                created_at: at(1_700_000_000, 0),
            })),
            json(StockLevel::from(inventory::v1::StockLevel {
                product_id: "p1".into(),
                available: 7,
                reserved: 2,
                sold: 40,
                updated_at: at(1_700_000_000, 0),
            })),
            json(Cart::from(cart::v1::Cart {
                user_id: "u1".into(),
                items: vec![cart::v1::CartItem {
                    product_id: "p1".into(),
                    quantity: 2,
                    name: "Mug".into(),
                    unit_price: eur(1299),
                    line_total: eur(2598),
                    in_stock: true,
                }],
                subtotal: eur(2598),
                updated_at: at(1_700_000_000, 0),
                expires_at: None,
            })),
            json(Order::from(order::v1::Order {
                id: "o1".into(),
                user_id: "u1".into(),
                status: order::v1::OrderStatus::Confirmed as i32,
                lines: vec![order::v1::OrderLine {
                    product_id: "p1".into(),
                    sku: "MUG-1".into(),
                    name: "Mug".into(),
                    quantity: 2,
                    unit_price: eur(1299),
                    line_total: eur(2598),
                }],
                total: eur(2598),
                shipping_address: Some(address()),
                failure_reason: String::new(),
                reservation_id: "r1".into(),
                payment_id: "pay1".into(),
                shipment_id: "s1".into(),
                idempotency_key: "k".into(),
                created_at: at(1_700_000_000, 0),
                updated_at: at(1_700_000_002, 0),
                refunded: false,
            })),
            json(Order::from(order::v1::Order { status: 42, ..Default::default() })),
            json(Shipment::from(shipping::v1::Shipment {
                id: "s1".into(),
                order_id: "o1".into(),
                user_id: "u1".into(),
                courier_id: "c9".into(),
                status: shipping::v1::ShipmentStatus::InTransit as i32,
                address: Some(address()),
                tracking_number: "TRK1".into(),
                halt_reason: String::new(),
                created_at: at(1_700_000_000, 0),
                updated_at: at(1_700_000_003, 0),
                delivered_at: None,
            })),
            json(TrackingEvent::from(shipping::v1::TrackingEvent {
                status: shipping::v1::ShipmentStatus::PickedUp as i32,
                description: "picked up".into(),
                location: "depot".into(),
                actor_id: "c9".into(),
                occurred_at: at(1_700_000_004, 0),
            })),
            json(Notification::from(notification::v1::Notification {
                id: "n1".into(),
                user_id: "u1".into(),
                kind: notification::v1::NotificationKind::OrderShipped as i32,
                title: "Shipped".into(),
                body: "Your order is on its way".into(),
                order_id: "o1".into(),
                created_at: at(1_700_000_000, 0),
                read: true,
                read_at: at(1_700_000_005, 0),
                ..Default::default()
            })),
            json(Address::from(address())),
            json(common::v1::Address::from(Address::from(address())) == address()),
            json(QueuedReview::from(reviews::v1::QueuedReview {
                review: Some(reviews::v1::Review {
                    id: "r1".into(),
                    product_id: "p1".into(),
                    user_id: "u1".into(),
                    rating: 2,
                    title: "Chipped".into(),
                    body: "Arrived chipped".into(),
                    status: reviews::v1::ReviewStatus::Flagged as i32,
                    helpful_count: 4,
                    report_count: 1,
                    created_at: at(1_700_000_000, 0),
                    updated_at: at(1_700_000_006, 0),
                }),
                reports: vec![reviews::v1::Report {
                    user_id: "u2".into(),
                    reason: "spam".into(),
                    created_at: at(1_700_000_007, 0),
                }],
            })),
            json(ReviewSummary::from(reviews::v1::RatingSummary {
                review_count: 0,
                stars_total: 0,
                count_by_stars: vec![0; 5],
            })),
        ];
        let expected = [
            r#"{"id":"u1","email":"ada@example.com","display_name":"Ada","roles":["customer","admin"],"created_at":"2023-11-14T22:13:20.123Z"}"#,
            r#"{"access_token":"at","access_token_expires_at":"2023-11-14T22:28:20.000Z","refresh_token":"rt","refresh_token_expires_at":null,"token_type":"Bearer"}"#,
            r#"{"access_token":"","access_token_expires_at":null,"refresh_token":"","refresh_token_expires_at":null,"token_type":"DPoP"}"#,
            r#"{"id":"p1","sku":"MUG-1","name":"Mug","description":"A mug","category_id":"c1","price":{"currency":"EUR","amount_minor":1299},"active":true,"created_at":"2023-11-14T22:13:20.000Z","updated_at":"2023-11-14T22:13:21.005Z","rating":{"review_count":3,"average":4.67}}"#,
            r#"{"id":"c1","name":"Mugs","slug":"mugs","parent_id":"c0","created_at":"2023-11-14T22:13:20.000Z"}"#,
            r#"{"product_id":"p1","available":7,"reserved":2,"sold":40,"updated_at":"2023-11-14T22:13:20.000Z"}"#,
            r#"{"items":[{"product_id":"p1","quantity":2,"name":"Mug","unit_price":{"currency":"EUR","amount_minor":1299},"line_total":{"currency":"EUR","amount_minor":2598},"in_stock":true}],"subtotal":{"currency":"EUR","amount_minor":2598},"updated_at":"2023-11-14T22:13:20.000Z","expires_at":null}"#,
            r#"{"id":"o1","user_id":"u1","status":"confirmed","lines":[{"product_id":"p1","sku":"MUG-1","name":"Mug","quantity":2,"unit_price":{"currency":"EUR","amount_minor":1299},"line_total":{"currency":"EUR","amount_minor":2598}}],"total":{"currency":"EUR","amount_minor":2598},"shipping_address":{"recipient_name":"Ada","line1":"Main St 1","line2":"Floor 2","city":"Berlin","region":"BE","postal_code":"10115","country_code":"DE","phone":"+4930123"},"failure_reason":"","reservation_id":"r1","payment_id":"pay1","shipment_id":"s1","idempotency_key":"k","refunded":false,"created_at":"2023-11-14T22:13:20.000Z","updated_at":"2023-11-14T22:13:22.000Z"}"#,
            r#"{"id":"","user_id":"","status":"unspecified","lines":[],"total":null,"shipping_address":null,"failure_reason":"","reservation_id":"","payment_id":"","shipment_id":"","idempotency_key":"","refunded":false,"created_at":null,"updated_at":null}"#,
            r#"{"id":"s1","order_id":"o1","user_id":"u1","courier_id":"c9","status":"in_transit","address":{"recipient_name":"Ada","line1":"Main St 1","line2":"Floor 2","city":"Berlin","region":"BE","postal_code":"10115","country_code":"DE","phone":"+4930123"},"tracking_number":"TRK1","halt_reason":"","created_at":"2023-11-14T22:13:20.000Z","updated_at":"2023-11-14T22:13:23.000Z","delivered_at":null}"#,
            r#"{"status":"picked_up","description":"picked up","location":"depot","actor_id":"c9","occurred_at":"2023-11-14T22:13:24.000Z"}"#,
            r#"{"id":"n1","kind":"order_shipped","title":"Shipped","body":"Your order is on its way","order_id":"o1","created_at":"2023-11-14T22:13:20.000Z","read":true,"read_at":"2023-11-14T22:13:25.000Z"}"#,
            r#"{"recipient_name":"Ada","line1":"Main St 1","line2":"Floor 2","city":"Berlin","region":"BE","postal_code":"10115","country_code":"DE","phone":"+4930123"}"#,
            r#"true"#,
            r#"{"review":{"id":"r1","product_id":"p1","rating":2,"title":"Chipped","body":"Arrived chipped","status":"flagged","verified_purchase":true,"helpful_count":4,"created_at":"2023-11-14T22:13:20.000Z","updated_at":"2023-11-14T22:13:26.000Z"},"author_id":"u1","reports":[{"reporter_id":"u2","reason":"spam","created_at":"2023-11-14T22:13:27.000Z"}]}"#,
            r#"{"review_count":0,"average":null,"count_by_stars":[0,0,0,0,0]}"#,
        ];
        assert_eq!(cases.len(), expected.len());
        for (index, (case, expected)) in cases.iter().zip(expected).enumerate() {
            assert_eq!(case, expected, "case {index}");
        }
    }
}

// ---------------------------------------------------------------- reviews

/// One review, as shoppers see it (without its author's id).
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct Review {
    pub id: String,
    pub product_id: String,
    /// Stars, 1 to 5.
    pub rating: i32,
    pub title: String,
    pub body: String,
    /// `published`, `flagged` (reported, waiting for moderation; still
    /// shown) or `removed`.
    pub status: String,
    /// Every review is by a buyer whose order of the product was delivered.
    pub verified_purchase: bool,
    pub helpful_count: i64,
    pub created_at: Option<String>,
    pub updated_at: Option<String>,
}

fn review_status_name(value: i32) -> String {
    enum_label(value, reviews::v1::ReviewStatus::as_str_name, "REVIEW_STATUS_")
}

from_fields!(reviews::v1::Review => Review {
    id, product_id, rating, title, body, status: review_status_name, helpful_count,
    created_at: timestamp, updated_at: timestamp,
}; verified_purchase = true);

/// A product's rating over every visible review.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct ReviewSummary {
    pub review_count: i64,
    /// Average stars, rounded to two decimals; null without reviews.
    pub average: Option<f64>,
    /// Reviews per star count: `[one star, two, three, four, five]`.
    pub count_by_stars: Vec<i64>,
}

impl From<reviews::v1::RatingSummary> for ReviewSummary {
    fn from(summary: reviews::v1::RatingSummary) -> Self {
        let rating = ProductRating::new(summary.review_count, summary.stars_total);
        Self {
            review_count: rating.review_count,
            average: rating.average,
            count_by_stars: summary.count_by_stars,
        }
    }
}

/// One page of a product's reviews, with the product's rating summary.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct ReviewPage {
    pub reviews: Vec<Review>,
    /// Pass as `page_token` for the next page; empty on the last page.
    pub next_page_token: String,
    pub summary: ReviewSummary,
}

/// How a product's reviews are ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReviewSort {
    /// The newest first (the default).
    Newest,
    Oldest,
    /// The most stars first.
    HighestRating,
    /// The fewest stars first.
    LowestRating,
    /// The most helpful votes first.
    MostHelpful,
}

same_variants!(ReviewSort => reviews::v1::ReviewSort { Newest, Oldest, HighestRating, LowestRating, MostHelpful });

/// Filters of `GET /api/products/{id}/reviews`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReviewQuery {
    /// Only reviews with this many stars.
    #[schemars(range(min = 1, max = 5))]
    pub rating: Option<i32>,
    pub sort: Option<ReviewSort>,
    #[schemars(range(min = 1, max = MAX_PAGE_SIZE))]
    pub page_size: Option<i32>,
    #[schemars(length(max = 1024))]
    pub page_token: Option<String>,
}

/// Body of `POST /api/products/{id}/reviews`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NewReviewRequest {
    /// Stars, 1 to 5.
    #[schemars(range(min = 1, max = 5))]
    pub rating: i32,
    #[serde(default)]
    #[schemars(pattern(NO_NUL), length(max = 120))]
    pub title: String,
    #[serde(default)]
    #[schemars(pattern(NO_NUL), length(max = 5000))]
    pub body: String,
}

/// Body of `PATCH /api/reviews/{id}`: what is given changes; an empty
/// `title` or `body` empties it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReviewPatch {
    #[schemars(range(min = 1, max = 5))]
    pub rating: Option<i32>,
    #[schemars(pattern(NO_NUL), length(max = 120))]
    pub title: Option<String>,
    #[schemars(pattern(NO_NUL), length(max = 5000))]
    pub body: Option<String>,
}

/// Body of `POST /api/reviews/{id}/reports`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReportReviewRequest {
    /// Why the review is abusive.
    #[schemars(pattern(NON_BLANK), length(min = 1, max = 500))]
    pub reason: String,
}

/// One user's report of a review.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct ReviewReport {
    pub reporter_id: String,
    pub reason: String,
    pub created_at: Option<String>,
}

/// A reported review with its author and open reports.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct QueuedReview {
    pub review: Review,
    pub author_id: String,
    /// Reports since it was last moderated, the oldest first.
    pub reports: Vec<ReviewReport>,
}

/// One page of the moderation queue, the longest waiting first.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct ModerationQueue {
    pub entries: Vec<QueuedReview>,
    /// Pass as `page_token` for the next page; empty on the last page.
    pub next_page_token: String,
}

impl From<reviews::v1::QueuedReview> for QueuedReview {
    fn from(entry: reviews::v1::QueuedReview) -> Self {
        let review = entry.review.unwrap_or_default();
        Self {
            author_id: review.user_id.clone(),
            review: Review::from(review),
            reports: entry
                .reports
                .into_iter()
                .map(|report| ReviewReport {
                    reporter_id: report.user_id,
                    reason: report.reason,
                    created_at: timestamp(report.created_at),
                })
                .collect(),
        }
    }
}

/// What an admin decides about a review.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ModerationDecision {
    /// Keep it; its reports are settled.
    Keep,
    /// Remove it: hidden, and out of the product's rating.
    Remove,
}

/// Body of `POST /api/admin/reviews/{id}/moderation`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ModerationRequest {
    pub decision: ModerationDecision,
    /// Why, for the record.
    #[serde(default)]
    #[schemars(pattern(NO_NUL), length(max = 500))]
    pub note: String,
}

// ---------------------------------------------------------------- search

/// Query of `GET /api/search`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SearchQuery {
    /// Words to find in names, SKUs and descriptions; a misspelt word is
    /// replaced by the closest indexed word. Without it, every product that
    /// passes the filters, by name.
    #[schemars(length(max = 200))]
    pub q: Option<String>,
    /// Category id.
    #[serde(default, deserialize_with = "empty_id_as_none")]
    pub category: Option<Uuid>,
    /// Lowest price, in minor units.
    #[schemars(range(min = 0, max = i64::MAX))]
    pub min_price: Option<i64>,
    /// Highest price, in minor units.
    #[schemars(range(min = 1, max = i64::MAX))]
    pub max_price: Option<i64>,
    /// Only products rated at least this many stars on average.
    #[schemars(range(min = 1, max = 4))]
    pub min_rating: Option<i32>,
    /// Only products with units available.
    pub in_stock: Option<bool>,
    #[schemars(range(min = 1, max = MAX_PAGE_SIZE))]
    pub page_size: Option<i32>,
    #[schemars(length(max = 1024))]
    pub page_token: Option<String>,
}

/// One product found.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct SearchHit {
    pub product_id: String,
    pub sku: String,
    pub name: String,
    pub category_id: String,
    pub price: Option<Money>,
    pub in_stock: bool,
    pub rating: ProductRating,
    /// The name, HTML-escaped, with `<mark>` around the matched words.
    pub name_highlight: String,
    /// Up to two fragments of the description, HTML-escaped, with `<mark>`
    /// around the matched words; empty when the description has none.
    pub description_highlight: String,
    /// Relevance, higher is better; 0 without a query.
    pub score: f64,
}

impl From<search::v1::SearchHit> for SearchHit {
    fn from(hit: search::v1::SearchHit) -> Self {
        Self {
            rating: ProductRating::new(hit.review_count, hit.stars_total),
            product_id: hit.product_id,
            sku: hit.sku,
            name: hit.name,
            category_id: hit.category_id,
            price: hit.price.map(Into::into),
            in_stock: hit.in_stock,
            name_highlight: hit.name_highlight,
            description_highlight: hit.description_highlight,
            score: hit.score,
        }
    }
}

/// How many matches have one value of a facet.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct FacetCount {
    pub value: String,
    pub count: i64,
}

from_fields!(search::v1::FacetCount => FacetCount { value, count });

/// The facets of the matches; each counts under every filter but its own.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct SearchFacets {
    /// Matches per category id, the most first.
    pub categories: Vec<FacetCount>,
    /// Matches per price band in minor units: `0-1000`, `1000-2500`,
    /// `2500-5000`, `5000-10000` (upper bound excluded) and `10000+`.
    pub price_bands: Vec<FacetCount>,
    /// Matches rated at least `1`, `2`, `3` and `4` stars on average.
    pub ratings: Vec<FacetCount>,
    /// Matches in stock (`true`) and not (`false`).
    pub in_stock: Vec<FacetCount>,
}

fn facet_counts(counts: Vec<search::v1::FacetCount>) -> Vec<FacetCount> {
    counts.into_iter().map(FacetCount::from).collect()
}

from_fields!(search::v1::Facets => SearchFacets {
    categories: facet_counts, price_bands: facet_counts, ratings: facet_counts, in_stock: facet_counts,
});

/// One page of search results, with the facets of every match.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct SearchResults {
    pub hits: Vec<SearchHit>,
    /// Matches under every filter, over all pages.
    pub total_size: i64,
    /// Pass as `page_token` for the next page; empty on the last page.
    pub next_page_token: String,
    /// The query as searched, misspelt words replaced.
    pub corrected_query: String,
    pub facets: SearchFacets,
}

impl From<search::v1::SearchResponse> for SearchResults {
    fn from(response: search::v1::SearchResponse) -> Self {
        Self {
            hits: response.hits.into_iter().map(SearchHit::from).collect(),
            total_size: response.total_size,
            next_page_token: response.next_page_token,
            corrected_query: response.corrected_query,
            facets: response.facets.unwrap_or_default().into(),
        }
    }
}

/// Query of `GET /api/search/suggest`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SuggestQuery {
    /// What the shopper typed so far; the last word may be incomplete.
    #[schemars(length(min = 1, max = 100))]
    pub q: String,
    #[schemars(range(min = 1, max = 20))]
    pub limit: Option<i32>,
}

/// One completion.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct Suggestion {
    pub product_id: String,
    pub name: String,
    /// The name, HTML-escaped, with `<mark>` around the typed words.
    pub highlight: String,
}

from_fields!(search::v1::Suggestion => Suggestion { product_id, name, highlight });

/// Completions, the best first.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct Suggestions {
    pub suggestions: Vec<Suggestion>,
}

// ---------------------------------------------------------------- recommendations

/// A recommended product.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct RecommendedProduct {
    pub product_id: String,
    pub name: String,
    pub category_id: String,
    pub price: Option<Money>,
    /// Customers who bought it: together with the product in question for
    /// `also_bought`, at all otherwise.
    pub buyers: i64,
    /// When the caller last viewed it (`recently_viewed` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub viewed_at: Option<String>,
}

from_fields!(recommendation::v1::Recommendation => RecommendedProduct {
    product_id, name, category_id, price: optional, buyers, viewed_at: timestamp,
});

fn recommended(list: Vec<recommendation::v1::Recommendation>) -> Vec<RecommendedProduct> {
    list.into_iter().map(RecommendedProduct::from).collect()
}

/// Query of the recommendation routes.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RecommendationQuery {
    /// Most products per list; 6 when absent.
    #[schemars(range(min = 1, max = 20))]
    pub limit: Option<i32>,
}

/// What to show beside a product.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct ProductRecommendations {
    /// Customers who bought this also bought these, the most shared buyers
    /// first.
    pub also_bought: Vec<RecommendedProduct>,
    /// The best sellers of its category (not in `also_bought`): the
    /// fallback for a product nobody bought yet.
    pub popular_in_category: Vec<RecommendedProduct>,
}

from_fields!(recommendation::v1::ProductRecommendationsResponse => ProductRecommendations {
    also_bought: recommended, popular_in_category: recommended,
});

/// What to show the caller.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct UserRecommendations {
    /// Products the caller viewed while signed in, the latest first.
    pub recently_viewed: Vec<RecommendedProduct>,
    /// Products bought by the buyers of what the caller bought and viewed,
    /// then the shop's best sellers; never one the caller bought.
    pub recommended: Vec<RecommendedProduct>,
}

from_fields!(recommendation::v1::UserRecommendationsResponse => UserRecommendations {
    recently_viewed: recommended, recommended: recommended,
});

/// How `GET /api/admin/analytics/sales` groups the confirmed orders.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SalesGrouping {
    /// By the UTC day of the confirmation (the default).
    #[default]
    Day,
    Product,
    Category,
}

/// The period of an analytics report: whole UTC days, both included.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AnalyticsQuery {
    /// First day (YYYY-MM-DD); 29 days before `to` when absent.
    #[schemars(extend("format" = "date"))]
    pub from: Option<String>,
    /// Last day (YYYY-MM-DD), included; today (UTC) when absent.
    #[schemars(extend("format" = "date"))]
    pub to: Option<String>,
    /// Grouping of the sales report; ignored by the funnel.
    pub group_by: Option<SalesGrouping>,
}

/// One group of the sales report.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct SalesRow {
    /// The day (YYYY-MM-DD), product id or category id (empty: products
    /// without a category).
    pub key: String,
    /// The product's name by product; the key otherwise.
    pub label: String,
    pub currency: String,
    /// Confirmed orders.
    pub orders: i64,
    /// Units sold.
    pub units: i64,
    /// Revenue in minor units: order totals by day, line totals by product
    /// or category.
    pub revenue_minor: i64,
    /// Refunded in minor units (by day only).
    pub refunded_minor: i64,
}

/// Confirmed orders of a period, grouped.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct SalesReport {
    /// First day of the period.
    pub from: String,
    /// Last day of the period, included.
    pub to: String,
    pub group_by: SalesGrouping,
    pub rows: Vec<SalesRow>,
}

/// What became of the orders placed in a period.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct Funnel {
    pub from: String,
    pub to: String,
    /// Users who put something in a cart (the first step; from the cart's
    /// events, which may miss some while Kafka is away).
    pub carts: i64,
    /// Orders placed (checkouts).
    pub placed: i64,
    /// Of those, confirmed (stock held and paid).
    pub confirmed: i64,
    /// Of those, delivered.
    pub delivered: i64,
    /// Of those, rejected for lack of stock.
    pub rejected: i64,
    /// Of those, failed (payment or reservation expiry).
    pub failed: i64,
    /// Of those, cancelled.
    pub cancelled: i64,
    /// Of those, refunded in part or in full.
    pub refunded: i64,
    /// Cancelled per confirmed order, 0 to 1.
    pub cancellation_rate: f64,
    /// Refunded per confirmed order, 0 to 1.
    pub refund_rate: f64,
}

/// A product running out.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct LowStock {
    pub product_id: String,
    pub name: String,
    pub available: i64,
    pub reserved: i64,
}

/// An order in one status for longer than expected.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct StuckOrder {
    pub order_id: String,
    /// placed (waiting for stock and payment), confirmed (waiting for the
    /// courier) or shipped (on its way).
    pub status: String,
    /// Since when (RFC 3339).
    pub since: String,
    /// How long an order is expected to stay in that status.
    pub expected_within_seconds: i64,
}

/// The events one service's consumer parked on its dead-letter topic.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct DeadLetterCount {
    pub service: String,
    pub topic: String,
    /// Records on the topic, within its retention (14 days).
    pub count: i64,
}

/// The admin dashboard.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct Dashboard {
    /// Start of the current UTC day (RFC 3339).
    pub day_start: String,
    /// Orders placed since `day_start`.
    pub orders_today: i64,
    /// Revenue of the orders confirmed since `day_start`, per currency.
    pub revenue_today: Vec<Money>,
    /// Products with 5 units or fewer available, the fewest first (at most 20).
    pub low_stock: Vec<LowStock>,
    /// Orders stuck in a status, the longest stuck first (at most 50).
    pub stuck_orders: Vec<StuckOrder>,
    /// Dead letters per consuming service.
    pub dead_letters: Vec<DeadLetterCount>,
    /// False when a broker did not answer for some dead-letter topic.
    pub dead_letters_complete: bool,
}
