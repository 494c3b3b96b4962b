//! The cart's rules, free of I/O: quantity limits, how a stored line is
//! encoded, and how a cart is priced from catalog products and inventory
//! availability. Prices shown in a cart are informational: checkout sends
//! product ids and quantities only, and the order service prices again.

use std::collections::HashMap;

/// A rule was broken by the request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    #[error("user_id must not be empty")]
    EmptyUserId,
    #[error("product_id must not be empty")]
    EmptyProductId,
    #[error("idempotency_key must not be empty")]
    EmptyIdempotencyKey,
    #[error("quantity must be positive")]
    ZeroQuantity,
    #[error("quantity of product {product_id} would be {quantity}; at most {max} per line")]
    LineQuantity { product_id: String, quantity: u64, max: u32 },
    #[error("a cart holds at most {max} different products")]
    TooManyLines { max: usize },
}

/// Limits of a cart, from the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most units of one product in a cart.
    pub max_line_quantity: u32,
    /// Most different products in a cart.
    pub max_lines: usize,
}

/// Refuses a blank user id: every cart belongs to someone.
pub fn require_user(user_id: &str) -> Result<(), RuleError> {
    if user_id.trim().is_empty() { Err(RuleError::EmptyUserId) } else { Ok(()) }
}

/// Refuses a blank product id.
pub fn require_product(product_id: &str) -> Result<(), RuleError> {
    if product_id.trim().is_empty() { Err(RuleError::EmptyProductId) } else { Ok(()) }
}

/// The quantity a line has after adding `added` units to `current`.
pub fn added_quantity(product_id: &str, current: u32, added: u32, limits: Limits) -> Result<u32, RuleError> {
    if added == 0 {
        return Err(RuleError::ZeroQuantity);
    }
    let total = u64::from(current) + u64::from(added);
    if total > u64::from(limits.max_line_quantity) {
        return Err(RuleError::LineQuantity {
            product_id: product_id.to_owned(),
            quantity: total,
            max: limits.max_line_quantity,
        });
    }
    Ok(u32::try_from(total).unwrap_or(u32::MAX))
}

/// Checks a quantity set outright (zero removes the line).
pub fn set_quantity(product_id: &str, quantity: u32, limits: Limits) -> Result<u32, RuleError> {
    if quantity > limits.max_line_quantity {
        return Err(RuleError::LineQuantity {
            product_id: product_id.to_owned(),
            quantity: u64::from(quantity),
            max: limits.max_line_quantity,
        });
    }
    Ok(quantity)
}

/// Whether `available` units cover `requested`.
pub fn is_enough(requested: u32, available: i64) -> bool {
    available >= i64::from(requested)
}

/// One stored line: a product, its quantity and when it was first added
/// (which orders the lines as the customer added them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CartLine {
    pub product_id: String,
    pub quantity: u32,
    /// Milliseconds since the epoch when the line was first added.
    pub added_at_ms: i64,
}

/// Encodes a line's value in the cart hash: `quantity:added_at_ms`. Plain
/// text, so that the atomic Lua scripts can read and rewrite it.
pub fn encode_line_value(quantity: u32, added_at_ms: i64) -> String {
    format!("{quantity}:{added_at_ms}")
}

/// Decodes a value written by [`encode_line_value`]; `None` if malformed.
pub fn decode_line_value(product_id: &str, value: &str) -> Option<CartLine> {
    let (quantity, added) = value.split_once(':')?;
    Some(CartLine {
        product_id: product_id.to_owned(),
        quantity: quantity.parse().ok()?,
        added_at_ms: added.parse().ok()?,
    })
}

/// Sorts lines as first added (product id breaks ties).
pub fn sort_lines(lines: &mut [CartLine]) {
    lines.sort_by(|a, b| a.added_at_ms.cmp(&b.added_at_ms).then_with(|| a.product_id.cmp(&b.product_id)));
}

/// An amount in minor units of one currency.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Money {
    pub currency_code: String,
    pub units: i64,
}

/// What the cart needs to know of a catalog product.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProductInfo {
    pub name: String,
    pub price: Money,
    pub active: bool,
}

/// A line with its current price and availability.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PricedLine {
    pub product_id: String,
    pub quantity: u32,
    /// Empty when the catalog no longer knows the product.
    pub name: String,
    /// `None` when the catalog no longer knows the product.
    pub unit_price: Option<Money>,
    pub line_total: Option<Money>,
    /// The product exists, is active, and inventory has the quantity.
    pub in_stock: bool,
}

/// A priced cart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PricedCart {
    pub lines: Vec<PricedLine>,
    /// Sum of the line totals of the lines that can be ordered (known,
    /// active products) in the cart's currency; `None` when there is none.
    pub subtotal: Option<Money>,
}

/// Prices `lines` at current catalog prices (`products`, by id; absent =
/// deleted) and flags what cannot be bought now (`available`: units
/// inventory has, by product id; absent = none). The cart's currency is the
/// first orderable line's; lines in another currency are flagged and left
/// out of the subtotal (a shop sells in one currency; this only guards
/// against a catalog misconfiguration).
pub fn price_cart(
    lines: &[CartLine],
    products: &HashMap<String, ProductInfo>,
    available: &HashMap<String, i64>,
) -> PricedCart {
    let mut priced = Vec::with_capacity(lines.len());
    let mut subtotal: Option<Money> = None;
    for line in lines {
        let product = products.get(&line.product_id);
        let line_total = product.and_then(|product| {
            product
                .price
                .units
                .checked_mul(i64::from(line.quantity))
                .map(|units| Money { currency_code: product.price.currency_code.clone(), units })
        });
        let orderable = product.is_some_and(|product| product.active);
        let mut in_stock = orderable
            && available.get(&line.product_id).is_some_and(|units| *units >= i64::from(line.quantity));
        if orderable && let Some(total) = &line_total {
            match &mut subtotal {
                None => subtotal = Some(total.clone()),
                Some(sum) if sum.currency_code == total.currency_code => {
                    sum.units = sum.units.saturating_add(total.units);
                }
                Some(_) => in_stock = false,
            }
        }
        priced.push(PricedLine {
            product_id: line.product_id.clone(),
            quantity: line.quantity,
            name: product.map(|product| product.name.clone()).unwrap_or_default(),
            unit_price: product.map(|product| product.price.clone()),
            line_total,
            in_stock,
        });
    }
    PricedCart { lines: priced, subtotal }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits { max_line_quantity: 99, max_lines: 100 };

    fn eur(units: i64) -> Money {
        Money { currency_code: "EUR".to_owned(), units }
    }

    fn line(product_id: &str, quantity: u32, added_at_ms: i64) -> CartLine {
        CartLine { product_id: product_id.to_owned(), quantity, added_at_ms }
    }

    #[test]
    fn adding_merges_with_the_line_and_respects_the_line_maximum() {
        assert_eq!(added_quantity("p", 0, 3, LIMITS), Ok(3));
        assert_eq!(added_quantity("p", 3, 96, LIMITS), Ok(99));
        assert!(matches!(
            added_quantity("p", 3, 97, LIMITS),
            Err(RuleError::LineQuantity { quantity: 100, .. })
        ));
        assert!(matches!(added_quantity("p", 0, u32::MAX, LIMITS), Err(RuleError::LineQuantity { .. })));
        assert_eq!(added_quantity("p", 1, 0, LIMITS), Err(RuleError::ZeroQuantity));
        assert_eq!(set_quantity("p", 0, LIMITS), Ok(0));
        assert!(set_quantity("p", 100, LIMITS).is_err());
    }

    #[test]
    fn ids_must_not_be_blank() {
        assert_eq!(require_user(" "), Err(RuleError::EmptyUserId));
        assert_eq!(require_product(""), Err(RuleError::EmptyProductId));
        assert!(require_user("u").is_ok() && require_product("p").is_ok());
    }

    #[test]
    fn stored_line_values_round_trip_and_malformed_ones_are_rejected() {
        let value = encode_line_value(7, 1_700_000_000_123);
        assert_eq!(decode_line_value("p", &value), Some(line("p", 7, 1_700_000_000_123)));
        assert_eq!(decode_line_value("p", "7"), None);
        assert_eq!(decode_line_value("p", "x:1"), None);
    }

    #[test]
    fn lines_keep_the_order_they_were_added_in() {
        let mut lines = vec![line("b", 1, 20), line("c", 1, 10), line("a", 1, 20)];
        sort_lines(&mut lines);
        let order: Vec<&str> = lines.iter().map(|l| l.product_id.as_str()).collect();
        assert_eq!(order, ["c", "a", "b"]);
    }

    #[test]
    fn a_cart_is_priced_at_current_prices_and_unbuyable_lines_are_flagged() {
        let products = HashMap::from([
            ("a".to_owned(), ProductInfo { name: "Apple".to_owned(), price: eur(150), active: true }),
            ("b".to_owned(), ProductInfo { name: "Bread".to_owned(), price: eur(300), active: true }),
            ("c".to_owned(), ProductInfo { name: "Cider".to_owned(), price: eur(500), active: false }),
        ]);
        let available = HashMap::from([("a".to_owned(), 10), ("b".to_owned(), 1), ("c".to_owned(), 10)]);
        let cart = price_cart(
            &[line("a", 2, 1), line("b", 2, 2), line("c", 1, 3), line("gone", 1, 4)],
            &products,
            &available,
        );
        let flags: Vec<(&str, bool)> =
            cart.lines.iter().map(|l| (l.product_id.as_str(), l.in_stock)).collect();
        assert_eq!(flags, [("a", true), ("b", false), ("c", false), ("gone", false)]);
        assert_eq!(cart.lines[0].line_total, Some(eur(300)));
        assert_eq!(cart.lines[0].name, "Apple");
        assert_eq!(cart.lines[3].unit_price, None, "a deleted product has no price");
        // a (300) + b (600, short of stock but still orderable); c is
        // inactive and the deleted product has no price.
        assert_eq!(cart.subtotal, Some(eur(900)));
    }

    #[test]
    fn an_empty_cart_has_no_subtotal_and_a_foreign_currency_line_is_flagged() {
        assert_eq!(price_cart(&[], &HashMap::new(), &HashMap::new()).subtotal, None);
        let products = HashMap::from([
            ("a".to_owned(), ProductInfo { name: "A".to_owned(), price: eur(100), active: true }),
            (
                "u".to_owned(),
                ProductInfo {
                    name: "U".to_owned(),
                    price: Money { currency_code: "USD".to_owned(), units: 100 },
                    active: true,
                },
            ),
        ]);
        let available = HashMap::from([("a".to_owned(), 5), ("u".to_owned(), 5)]);
        let cart = price_cart(&[line("a", 1, 1), line("u", 1, 2)], &products, &available);
        assert_eq!(cart.subtotal, Some(eur(100)));
        assert!(!cart.lines[1].in_stock);
    }
}
