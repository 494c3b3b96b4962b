//! The catalog's rules, without I/O: what a valid product and category
//! are, how an update mask applies, page sizes, the opaque page token, and
//! how a text query becomes search patterns.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Page size when the request gives none.
pub const DEFAULT_PAGE_SIZE: i64 = 20;
/// Largest page served: bounds the response size and the query's cost.
pub const MAX_PAGE_SIZE: i64 = 100;
/// Most ids one BatchGetProducts may ask for (the proto's contract).
pub const MAX_BATCH_IDS: usize = 1000;
/// Longest SKU: article codes are short; a bound keeps indexes small.
pub const MAX_SKU_CHARS: usize = 64;
/// Longest product or category name.
pub const MAX_NAME_CHARS: usize = 200;
/// Longest description (plain text or Markdown).
pub const MAX_DESCRIPTION_CHARS: usize = 10_000;
/// Longest text query; anything longer is not a search a person typed.
pub const MAX_QUERY_CHARS: usize = 200;

/// Input that breaks a rule; the message is for the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidInput(pub String);

fn invalid(message: impl Into<String>) -> InvalidInput {
    InvalidInput(message.into())
}

/// An amount in integer minor units of a currency.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Money {
    pub currency: String,
    pub units: i64,
}

/// The writable fields of a product.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProductDraft {
    pub sku: String,
    pub name: String,
    pub description: String,
    pub category_id: Uuid,
    pub price: Money,
    pub active: bool,
}

/// Checks a currency code: three upper-case ASCII letters (ISO 4217 shape).
pub fn check_currency(code: &str) -> Result<(), InvalidInput> {
    if code.len() == 3 && code.bytes().all(|byte| byte.is_ascii_uppercase()) {
        Ok(())
    } else {
        Err(invalid(format!("currency code {code:?} must be three upper-case letters, for example \"EUR\"")))
    }
}

/// Trims text fields and checks every rule of a product.
pub fn validate_product(mut draft: ProductDraft) -> Result<ProductDraft, InvalidInput> {
    draft.sku = draft.sku.trim().to_owned();
    draft.name = draft.name.trim().to_owned();
    draft.description = draft.description.trim().to_owned();
    if draft.sku.is_empty() {
        return Err(invalid("sku must not be empty"));
    }
    if draft.sku.chars().count() > MAX_SKU_CHARS {
        return Err(invalid(format!("sku must be at most {MAX_SKU_CHARS} characters")));
    }
    if !draft.sku.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')) {
        return Err(invalid(format!(
            "sku {:?} may only contain letters, digits, '-', '_' and '.'",
            draft.sku
        )));
    }
    if draft.name.is_empty() {
        return Err(invalid("name must not be empty"));
    }
    if draft.name.chars().count() > MAX_NAME_CHARS {
        return Err(invalid(format!("name must be at most {MAX_NAME_CHARS} characters")));
    }
    if draft.description.chars().count() > MAX_DESCRIPTION_CHARS {
        return Err(invalid(format!("description must be at most {MAX_DESCRIPTION_CHARS} characters")));
    }
    if draft.category_id.is_nil() {
        return Err(invalid("category_id is required"));
    }
    if draft.price.units < 0 {
        return Err(invalid(format!("price must not be negative (got {} minor units)", draft.price.units)));
    }
    check_currency(&draft.price.currency)?;
    Ok(draft)
}

/// A category's name and slug, checked: the slug is lower-case letters,
/// digits and single dashes (`kitchen-knives`), because it appears in URLs.
pub fn validate_category(name: &str, slug: &str) -> Result<(String, String), InvalidInput> {
    let name = name.trim();
    let slug = slug.trim();
    if name.is_empty() {
        return Err(invalid("category name must not be empty"));
    }
    if name.chars().count() > MAX_NAME_CHARS {
        return Err(invalid(format!("category name must be at most {MAX_NAME_CHARS} characters")));
    }
    let slug_ok = !slug.is_empty()
        && slug.len() <= MAX_SKU_CHARS
        && slug.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !slug.starts_with('-')
        && !slug.ends_with('-')
        && !slug.contains("--");
    if !slug_ok {
        return Err(invalid(format!(
            "slug {slug:?} must be lower-case letters, digits and single dashes, for example \"kitchen-knives\""
        )));
    }
    Ok((name.to_owned(), slug.to_owned()))
}

/// A product field an update may change, by its proto name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Sku,
    Name,
    Description,
    CategoryId,
    Price,
    Active,
}

impl Field {
    pub const ALL: [Field; 6] =
        [Field::Sku, Field::Name, Field::Description, Field::CategoryId, Field::Price, Field::Active];

    /// The proto field name.
    pub const fn name(self) -> &'static str {
        match self {
            Field::Sku => "sku",
            Field::Name => "name",
            Field::Description => "description",
            Field::CategoryId => "category_id",
            Field::Price => "price",
            Field::Active => "active",
        }
    }
}

/// The fields an update mask names; an empty mask means every field.
pub fn parse_update_mask(paths: &[String]) -> Result<Vec<Field>, InvalidInput> {
    if paths.is_empty() {
        return Ok(Field::ALL.to_vec());
    }
    let mut fields = Vec::new();
    for path in paths {
        let field = Field::ALL.into_iter().find(|field| field.name() == path).ok_or_else(|| {
            invalid(format!(
                "update_mask names {path:?}; updatable fields are sku, name, description, category_id, price, active"
            ))
        })?;
        if !fields.contains(&field) {
            fields.push(field);
        }
    }
    Ok(fields)
}

/// Applies the masked fields of `patch` to `current`: the product after the
/// update (validated) and the fields whose value really changed.
pub fn apply_update(
    current: &ProductDraft,
    patch: &ProductDraft,
    fields: &[Field],
) -> Result<(ProductDraft, Vec<Field>), InvalidInput> {
    let mut next = current.clone();
    for field in fields {
        match field {
            Field::Sku => next.sku.clone_from(&patch.sku),
            Field::Name => next.name.clone_from(&patch.name),
            Field::Description => next.description.clone_from(&patch.description),
            Field::CategoryId => next.category_id = patch.category_id,
            Field::Price => next.price = patch.price.clone(),
            Field::Active => next.active = patch.active,
        }
    }
    let next = validate_product(next)?;
    let changed = Field::ALL
        .into_iter()
        .filter(|field| match field {
            Field::Sku => next.sku != current.sku,
            Field::Name => next.name != current.name,
            Field::Description => next.description != current.description,
            Field::CategoryId => next.category_id != current.category_id,
            Field::Price => next.price != current.price,
            Field::Active => next.active != current.active,
        })
        .collect();
    Ok((next, changed))
}

/// The page size to serve: the default for 0, capped at the maximum.
pub fn page_size(requested: i32) -> Result<i64, InvalidInput> {
    match requested {
        ..0 => Err(invalid(format!("page_size must not be negative (got {requested})"))),
        0 => Ok(DEFAULT_PAGE_SIZE),
        n => Ok(i64::from(n).min(MAX_PAGE_SIZE)),
    }
}

/// The filters of a product listing, normalized.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ListFilter {
    pub category_id: Option<Uuid>,
    /// Lower-cased words; every one must occur in the name or description.
    pub words: Vec<String>,
    pub min_price: Option<Money>,
    pub max_price: Option<Money>,
    pub include_inactive: bool,
}

impl ListFilter {
    /// Builds and checks the filter: the price bounds share one currency
    /// (an empty code: the amount in each product's own currency). A minimum
    /// above the maximum is a range that matches nothing, not an error.
    pub fn new(
        category_id: Option<Uuid>,
        query: &str,
        min_price: Option<Money>,
        max_price: Option<Money>,
        include_inactive: bool,
    ) -> Result<Self, InvalidInput> {
        if query.chars().count() > MAX_QUERY_CHARS {
            return Err(invalid(format!("query must be at most {MAX_QUERY_CHARS} characters")));
        }
        for bound in [&min_price, &max_price].into_iter().flatten() {
            if !bound.currency.is_empty() {
                check_currency(&bound.currency)?;
            }
            if bound.units < 0 {
                return Err(invalid("price bounds must not be negative"));
            }
        }
        if let (Some(min), Some(max)) = (&min_price, &max_price)
            && min.currency != max.currency
        {
            return Err(invalid("min_price and max_price must be in the same currency"));
        }
        let words = query.split_whitespace().map(str::to_lowercase).collect();
        Ok(Self { category_id, words, min_price, max_price, include_inactive })
    }

    /// `ILIKE` patterns for the words, with `%`, `_` and `\` escaped so
    /// that they match literally.
    pub fn like_patterns(&self) -> Vec<String> {
        self.words
            .iter()
            .map(|word| {
                let escaped = word.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_");
                format!("%{escaped}%")
            })
            .collect()
    }

    /// The currency the price bounds are in, if they name one.
    pub fn price_currency(&self) -> Option<&str> {
        self.min_price
            .as_ref()
            .or(self.max_price.as_ref())
            .map(|money| money.currency.as_str())
            .filter(|currency| !currency.is_empty())
    }

    /// A short, stable fingerprint of the filter, carried in page tokens so
    /// that a token is not reused with other filters.
    pub fn fingerprint(&self) -> String {
        // FNV-1a over the canonical JSON: stable across processes and
        // releases (unlike `DefaultHasher`), and collisions only matter
        // for a caller that forges tokens against itself.
        let json = serde_json::to_vec(self).unwrap_or_default();
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in json {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        format!("{hash:016x}")
    }
}

/// Where the next page starts: after the product with this (name, id),
/// the listing's sort key. A keyset cursor, so a page costs the same deep in
/// the listing as at its start and inserts do not shift pages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    #[serde(rename = "n")]
    pub name: String,
    #[serde(rename = "i")]
    pub id: Uuid,
    /// Fingerprint of the filters the listing was started with.
    #[serde(rename = "f")]
    pub filter: String,
}

impl Cursor {
    /// The opaque token: base64url JSON. Not secret, not signed: a forged
    /// token only skips within results the caller may see anyway.
    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(self).unwrap_or_default())
    }

    /// Decodes a token and checks it belongs to `filter`.
    pub fn decode(token: &str, filter: &ListFilter) -> Result<Self, InvalidInput> {
        let bad = || invalid("page_token is not a token returned by ListProducts");
        let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| bad())?;
        let cursor: Cursor = serde_json::from_slice(&bytes).map_err(|_| bad())?;
        if cursor.filter != filter.fingerprint() {
            return Err(invalid(
                "page_token was issued for different filters; keep the filters of the first page",
            ));
        }
        Ok(cursor)
    }
}

/// A product as stored (a row of `products`; the store reads it, events
/// and gRPC answers are made from it).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ProductRow {
    pub id: Uuid,
    pub sku: String,
    pub name: String,
    pub description: String,
    pub category_id: Uuid,
    pub price_units: i64,
    pub currency: String,
    pub active: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Visible reviews, from the reviews service's events.
    pub review_count: i64,
    /// Sum of their stars.
    pub stars_total: i64,
}

impl ProductRow {
    /// The writable fields, for updates.
    pub fn draft(&self) -> ProductDraft {
        ProductDraft {
            sku: self.sku.clone(),
            name: self.name.clone(),
            description: self.description.clone(),
            category_id: self.category_id,
            price: self.price(),
            active: self.active,
        }
    }

    pub fn price(&self) -> Money {
        Money { currency: self.currency.clone(), units: self.price_units }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn draft() -> ProductDraft {
        ProductDraft {
            sku: " KB-001 ".to_owned(),
            name: " Mechanical keyboard ".to_owned(),
            description: "Tactile switches".to_owned(),
            category_id: Uuid::from_u128(1),
            price: Money { currency: "EUR".to_owned(), units: 8999 },
            active: true,
        }
    }

    #[test]
    fn a_valid_product_is_trimmed() {
        let product = validate_product(draft()).expect("valid");
        assert_eq!(product.sku, "KB-001");
        assert_eq!(product.name, "Mechanical keyboard");
    }

    #[test]
    fn empty_names_negative_prices_bad_currencies_and_skus_are_rejected_with_messages() {
        type Breaker = fn(&mut ProductDraft);
        let cases: [(Breaker, &str); 6] = [
            (|d| d.name = "  ".to_owned(), "name must not be empty"),
            (|d| d.sku = String::new(), "sku must not be empty"),
            (|d| d.sku = "KB 001".to_owned(), "may only contain"),
            (|d| d.price.units = -1, "price must not be negative"),
            (|d| d.price.currency = "eur".to_owned(), "currency code"),
            (|d| d.category_id = Uuid::nil(), "category_id is required"),
        ];
        for (break_it, message) in cases {
            let mut product = draft();
            break_it(&mut product);
            let error = validate_product(product).expect_err(message);
            assert!(error.0.contains(message), "{error} should contain {message}");
        }
        let mut free = draft();
        free.price.units = 0;
        assert!(validate_product(free).is_ok(), "a free product is allowed");
    }

    #[test]
    fn category_slugs_must_be_url_safe() {
        assert_eq!(
            validate_category(" Knives ", "kitchen-knives"),
            Ok(("Knives".to_owned(), "kitchen-knives".to_owned()))
        );
        for slug in ["", "Kitchen", "a b", "-a", "a-", "a--b", "ä"] {
            assert!(validate_category("x", slug).is_err(), "{slug:?}");
        }
        assert!(validate_category(" ", "ok").is_err());
    }

    #[test]
    fn an_empty_mask_means_every_field_and_unknown_fields_are_rejected() {
        assert_eq!(parse_update_mask(&[]), Ok(Field::ALL.to_vec()));
        assert_eq!(parse_update_mask(&["price".to_owned(), "price".to_owned()]), Ok(vec![Field::Price]));
        let error = parse_update_mask(&["id".to_owned()]).expect_err("id is not updatable");
        assert!(error.0.contains("\"id\""), "{error}");
    }

    #[test]
    fn an_update_changes_only_masked_fields_and_reports_real_changes() {
        let current = validate_product(draft()).expect("valid");
        let mut patch = current.clone();
        patch.name = "Other".to_owned();
        patch.price.units = 7999;
        let (next, changed) = apply_update(&current, &patch, &[Field::Price]).expect("valid");
        assert_eq!(next.name, current.name, "name was not in the mask");
        assert_eq!(next.price.units, 7999);
        assert_eq!(changed, vec![Field::Price]);
        let (_, unchanged) = apply_update(&current, &current, &Field::ALL).expect("valid");
        assert!(unchanged.is_empty());
        patch.price.units = -5;
        assert!(apply_update(&current, &patch, &[Field::Price]).is_err());
    }

    #[test]
    fn page_sizes_default_to_twenty_and_cap_at_one_hundred() {
        assert_eq!(page_size(0), Ok(20));
        assert_eq!(page_size(7), Ok(7));
        assert_eq!(page_size(1000), Ok(100));
        assert!(page_size(-1).is_err());
    }

    #[test]
    fn search_words_become_escaped_case_insensitive_patterns() {
        let filter = ListFilter::new(None, "  Mech 100%_  ", None, None, false).expect("valid");
        assert_eq!(filter.words, vec!["mech", "100%_"]);
        assert_eq!(filter.like_patterns(), vec!["%mech%", "%100\\%\\_%"]);
    }

    #[test]
    fn price_bounds_must_agree_and_may_leave_the_currency_open() {
        let eur = |units| Some(Money { currency: "EUR".to_owned(), units });
        let usd = Some(Money { currency: "USD".to_owned(), units: 10 });
        assert!(ListFilter::new(None, "", eur(1), usd, false).is_err());
        let filter = ListFilter::new(None, "", eur(1), None, false).expect("valid");
        assert_eq!(filter.price_currency(), Some("EUR"));
        // An empty range is valid and matches nothing (the query says so).
        assert!(ListFilter::new(None, "", eur(100), eur(50), false).is_ok());
        let any = |units| Some(Money { currency: String::new(), units });
        let filter = ListFilter::new(None, "", any(1), any(9), false).expect("valid");
        assert_eq!(filter.price_currency(), None);
        assert!(ListFilter::new(None, "", any(1), eur(9), false).is_err());
    }

    #[test]
    fn page_tokens_round_trip_and_refuse_other_filters() {
        let filter = ListFilter::new(None, "desk", None, None, false).expect("valid");
        let cursor =
            Cursor { name: "Desk lamp".to_owned(), id: Uuid::from_u128(5), filter: filter.fingerprint() };
        assert_eq!(Cursor::decode(&cursor.encode(), &filter), Ok(cursor.clone()));
        let other = ListFilter::new(None, "chair", None, None, false).expect("valid");
        assert!(Cursor::decode(&cursor.encode(), &other).is_err());
        assert!(Cursor::decode("garbage!", &filter).is_err());
    }
}
