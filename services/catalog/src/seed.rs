//! The demo catalog for local and demo stacks (`commerce local up`, or
//! `--seed-demo-catalog`): four categories and twenty products with fixed
//! ids, so that other services' seeds (inventory stock) and scripts can name
//! them. Idempotent: rows that exist are left alone, and `ProductCreated`
//! is published only for products this run inserted.

use sqlx::PgPool;
use uuid::Uuid;

use crate::Error;
use crate::domain::ProductRow;
use crate::events;

/// Currency of every demo price.
pub const DEMO_CURRENCY: &str = "EUR";

/// A demo category.
#[derive(Debug, Clone, Copy)]
pub struct DemoCategory {
    pub id: Uuid,
    pub slug: &'static str,
    pub name: &'static str,
}

/// A demo product; `price_cents` in [`DEMO_CURRENCY`].
#[derive(Debug, Clone, Copy)]
pub struct DemoProduct {
    pub id: Uuid,
    pub sku: &'static str,
    pub name: &'static str,
    pub description: &'static str,
    pub category: Uuid,
    pub price_cents: i64,
}

const fn id(n: u128) -> Uuid {
    // Recognisable fixed ids: 00000000-0000-4000-8000-0000000000NN style
    // (version 4 and variant bits set, so they parse as ordinary UUIDs).
    Uuid::from_u128(0x0000_0000_0000_4000_8000_0000_0000_0000 | n)
}

const ELECTRONICS: Uuid = id(0x1001);
const KITCHEN: Uuid = id(0x1002);
const OUTDOOR: Uuid = id(0x1003);
const BOOKS: Uuid = id(0x1004);

/// The demo categories.
pub const DEMO_CATEGORIES: &[DemoCategory] = &[
    DemoCategory { id: ELECTRONICS, slug: "electronics", name: "Electronics" },
    DemoCategory { id: KITCHEN, slug: "kitchen", name: "Kitchen" },
    DemoCategory { id: OUTDOOR, slug: "outdoor", name: "Outdoor" },
    DemoCategory { id: BOOKS, slug: "books", name: "Books" },
];

macro_rules! demo {
    ($n:expr, $sku:expr, $name:expr, $description:expr, $category:expr, $cents:expr) => {
        DemoProduct {
            id: id($n),
            sku: $sku,
            name: $name,
            description: $description,
            category: $category,
            price_cents: $cents,
        }
    };
}

/// The demo products.
pub const DEMO_PRODUCTS: &[DemoProduct] = &[
    demo!(
        0x2001,
        "EL-KB-001",
        "Mechanical Keyboard",
        "Tenkeyless keyboard with tactile brown switches.",
        ELECTRONICS,
        8999
    ),
    demo!(
        0x2002,
        "EL-MS-002",
        "Wireless Mouse",
        "Ergonomic mouse, 2.4 GHz and Bluetooth, 70-day battery.",
        ELECTRONICS,
        3499
    ),
    demo!(
        0x2003,
        "EL-HP-003",
        "Noise-Cancelling Headphones",
        "Over-ear, 30 hours of playback, USB-C charging.",
        ELECTRONICS,
        19900
    ),
    demo!(
        0x2004,
        "EL-MN-004",
        "27-inch 4K Monitor",
        "IPS panel, 60 Hz, USB-C with 65 W power delivery.",
        ELECTRONICS,
        32900
    ),
    demo!(0x2005, "EL-CB-005", "USB-C Cable 2 m", "Braided cable, 100 W, USB 3.2 Gen 2.", ELECTRONICS, 1299),
    demo!(
        0x2006,
        "EL-SP-006",
        "Portable Speaker",
        "Waterproof Bluetooth speaker with 12-hour battery.",
        ELECTRONICS,
        5999
    ),
    demo!(0x2007, "KI-CH-007", "Chef's Knife 20 cm", "Forged stainless steel, full tang.", KITCHEN, 7450),
    demo!(0x2008, "KI-CB-008", "Oak Cutting Board", "End-grain oak board, 40 x 30 cm.", KITCHEN, 4900),
    demo!(
        0x2009,
        "KI-FP-009",
        "Cast Iron Skillet 28 cm",
        "Pre-seasoned, oven safe, induction ready.",
        KITCHEN,
        3995
    ),
    demo!(
        0x200a,
        "KI-KT-010",
        "Electric Kettle",
        "1.7 l, temperature control, keep-warm function.",
        KITCHEN,
        5490
    ),
    demo!(0x200b, "KI-CG-011", "Burr Coffee Grinder", "Conical burrs, 40 grind settings.", KITCHEN, 12900),
    demo!(
        0x200c,
        "OU-TN-012",
        "Two-Person Tent",
        "Freestanding tent, 2.1 kg, 3000 mm waterproofing.",
        OUTDOOR,
        18900
    ),
    demo!(0x200d, "OU-SB-013", "Down Sleeping Bag", "Comfort temperature -2 C, 900 g.", OUTDOOR, 24900),
    demo!(
        0x200e,
        "OU-HL-014",
        "Rechargeable Headlamp",
        "400 lumen headlamp with red light mode.",
        OUTDOOR,
        3990
    ),
    demo!(
        0x200f,
        "OU-WB-015",
        "Insulated Water Bottle 750 ml",
        "Keeps drinks cold for 24 hours.",
        OUTDOOR,
        2490
    ),
    demo!(
        0x2010,
        "OU-BP-016",
        "Hiking Backpack 40 l",
        "Ventilated back panel, rain cover included.",
        OUTDOOR,
        11900
    ),
    demo!(
        0x2011,
        "BK-RS-017",
        "The Rust Programming Language",
        "The official book on Rust, second edition.",
        BOOKS,
        3995
    ),
    demo!(
        0x2012,
        "BK-DD-018",
        "Designing Data-Intensive Applications",
        "Reliable, scalable and maintainable systems.",
        BOOKS,
        4499
    ),
    demo!(
        0x2013,
        "BK-SR-019",
        "Site Reliability Engineering",
        "How Google runs production systems.",
        BOOKS,
        3850
    ),
    demo!(0x2014, "BK-CC-020", "The Pragmatic Programmer", "20th anniversary edition.", BOOKS, 3699),
];

/// What a seed run did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SeedReport {
    pub categories_inserted: u64,
    pub products_inserted: u64,
}

/// Inserts the demo catalog (idempotent), with `ProductCreated` for every
/// product inserted, in one transaction. Callers with a running cache
/// should invalidate it afterwards (`serve` does).
pub async fn seed(pool: &PgPool) -> Result<SeedReport, Error> {
    let database = |action| move |source| Error::Database { action, source };
    let mut tx = pool.begin().await.map_err(database("begin the demo seed"))?;
    let mut report = SeedReport::default();
    for category in DEMO_CATEGORIES {
        let done =
            sqlx::query("INSERT INTO categories (id, name, slug) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING")
                .bind(category.id)
                .bind(category.name)
                .bind(category.slug)
                .execute(&mut *tx)
                .await
                .map_err(database("seed a category"))?;
        report.categories_inserted += done.rows_affected();
    }
    for product in DEMO_PRODUCTS {
        let inserted = sqlx::query_as::<_, ProductRow>(&format!(
            "INSERT INTO products (id, sku, name, description, category_id, price_units, currency, active) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, true) ON CONFLICT DO NOTHING \
             RETURNING {}",
            crate::store::PRODUCT_COLUMNS
        ))
        .bind(product.id)
        .bind(product.sku)
        .bind(product.name)
        .bind(product.description)
        .bind(product.category)
        .bind(product.price_cents)
        .bind(DEMO_CURRENCY)
        .fetch_optional(&mut *tx)
        .await
        .map_err(database("seed a product"))?;
        if let Some(row) = inserted {
            events::enqueue_created(&mut tx, &row).await?;
            report.products_inserted += 1;
        }
    }
    tx.commit().await.map_err(database("commit the demo seed"))?;
    tracing::info!(?report, "demo catalog seeded");
    Ok(report)
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::domain::{self, Money, ProductDraft};

    #[test]
    fn every_demo_product_is_valid_unique_and_in_a_demo_category() {
        let categories: HashSet<Uuid> = DEMO_CATEGORIES.iter().map(|category| category.id).collect();
        let mut ids = HashSet::new();
        let mut skus = HashSet::new();
        for product in DEMO_PRODUCTS {
            assert!(ids.insert(product.id), "{} repeats an id", product.sku);
            assert!(skus.insert(product.sku), "{} repeats", product.sku);
            assert!(categories.contains(&product.category), "{}", product.sku);
            let draft = ProductDraft {
                sku: product.sku.to_owned(),
                name: product.name.to_owned(),
                description: product.description.to_owned(),
                category_id: product.category,
                price: Money { currency: DEMO_CURRENCY.to_owned(), units: product.price_cents },
                active: true,
            };
            assert!(domain::validate_product(draft).is_ok(), "{}", product.sku);
        }
        assert_eq!(DEMO_PRODUCTS.len(), 20);
        for category in DEMO_CATEGORIES {
            assert!(domain::validate_category(category.name, category.slug).is_ok());
        }
    }
}
