//! The search latency at 10,000 products, printed, not asserted: `cargo
//! test --release -p commerce-search --test latency -- --ignored --nocapture`.
//!
//! Builds an index of 10,000 products (names and descriptions from word
//! lists, so words repeat as in a real catalog; availability and ratings
//! spread), then times each kind of request through the gRPC handler on one
//! connection pool: a common word, a rare word, a misspelt word, two words,
//! filters without a query, and autocomplete. Each runs 60 times after 5
//! warm-ups; the figures are min / median / p95 / max in milliseconds.

mod support;

use std::time::{Duration, Instant};

use chrono::Utc;
use commerce_proto::search::v1 as pb;
use commerce_proto::search::v1::search_service_server::SearchService;
use commerce_search::grpc::SearchGrpc;
use commerce_search::store::{self, CatalogFields};
use support::TestDatabase;
use tonic::Request;
use uuid::Uuid;

const PRODUCTS: usize = 10_000;
const RUNS: usize = 60;

const ADJECTIVES: [&str; 16] = [
    "brass",
    "copper",
    "linen",
    "walnut",
    "oak",
    "ceramic",
    "glass",
    "steel",
    "woollen",
    "leather",
    "bamboo",
    "marble",
    "cotton",
    "enamel",
    "stoneware",
    "silver",
];
const NOUNS: [&str; 25] = [
    "lamp", "kettle", "teapot", "mug", "chair", "table", "shelf", "blanket", "cushion", "vase", "bowl",
    "plate", "clock", "mirror", "basket", "candle", "rug", "stool", "desk", "bench", "jug", "tray", "frame",
    "box", "hook",
];
const WORDS: [&str; 24] = [
    "handmade",
    "durable",
    "classic",
    "modern",
    "warm",
    "light",
    "heavy",
    "small",
    "large",
    "kitchen",
    "garden",
    "living",
    "room",
    "office",
    "gift",
    "sustainable",
    "polished",
    "matte",
    "vintage",
    "compact",
    "everyday",
    "family",
    "travel",
    "outdoor",
];

fn pick<'a>(list: &[&'a str], seed: usize) -> &'a str {
    list[seed % list.len()]
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: prints the search latency at 10,000 products"]
async fn search_latency_at_ten_thousand_products_is_printed() -> anyhow::Result<()> {
    let database = TestDatabase::create_with_pool_size("search", &commerce_search::MIGRATOR, 4).await?;
    let categories: Vec<Uuid> = (0..12).map(|_| Uuid::now_v7()).collect();
    let started = Instant::now();
    let mut tx = database.pool.begin().await?;
    for index in 0..PRODUCTS {
        let seed = index.wrapping_mul(2_654_435_761);
        let name = format!(
            "{} {} {} {index}",
            pick(&ADJECTIVES, seed),
            pick(&WORDS, seed / 7),
            pick(&NOUNS, seed / 131)
        );
        let description = (0..12).map(|k| pick(&WORDS, seed / (k + 3))).collect::<Vec<_>>().join(" ");
        let fields = CatalogFields {
            product_id: Uuid::now_v7(),
            sku: format!("SKU-{index:05}"),
            name,
            description: format!("A {description} piece for the {}", pick(&NOUNS, seed / 17)),
            category_id: Some(categories[index % categories.len()]),
            price_units: i64::try_from(500 + seed % 15_000).unwrap_or(500),
            currency: "EUR".to_owned(),
            active: true,
            changed_at: Utc::now(),
        };
        store::apply_catalog(&mut tx, &fields).await?;
        store::apply_available(&mut tx, fields.product_id, i64::try_from(seed % 4).unwrap_or(0)).await?;
        let reviews = i64::try_from(seed % 6).unwrap_or(0);
        store::apply_rating(&mut tx, fields.product_id, reviews, reviews * 3 + reviews.min(2), 1).await?;
    }
    tx.commit().await?;
    sqlx::query("ANALYZE").execute(&database.pool).await?;
    println!("FIGURE\tsearch index of {PRODUCTS} products built in {:.1} s", started.elapsed().as_secs_f64());

    let grpc = SearchGrpc::new(database.pool.clone());
    let searches: [(&str, pb::SearchRequest); 5] = [
        ("common word (\"lamp\")", pb::SearchRequest { query: "lamp".into(), ..Default::default() }),
        (
            "two words (\"walnut desk\")",
            pb::SearchRequest { query: "walnut desk".into(), ..Default::default() },
        ),
        ("misspelt (\"kettel\")", pb::SearchRequest { query: "kettel".into(), ..Default::default() }),
        ("rare word (\"4242\")", pb::SearchRequest { query: "4242".into(), ..Default::default() }),
        (
            "filters only (category, price, 3+ stars, in stock)",
            pb::SearchRequest {
                category_id: categories[3].to_string(),
                min_price: 1_000,
                max_price: 8_000,
                min_rating: 3,
                in_stock_only: true,
                ..Default::default()
            },
        ),
    ];
    for (name, request) in searches {
        let mut times = Vec::with_capacity(RUNS);
        let mut total = 0;
        for run in 0..RUNS + 5 {
            let began = Instant::now();
            let response = grpc.search(Request::new(request.clone())).await?.into_inner();
            if run >= 5 {
                times.push(began.elapsed());
            }
            total = response.total_size;
        }
        report(&format!("search {name}, {total} matches"), &mut times);
    }
    let mut times = Vec::with_capacity(RUNS);
    for run in 0..RUNS + 5 {
        let began = Instant::now();
        grpc.suggest(Request::new(pb::SuggestRequest { prefix: "brass ke".into(), limit: 8 })).await?;
        if run >= 5 {
            times.push(began.elapsed());
        }
    }
    report("suggest (\"brass ke\")", &mut times);
    database.drop_database().await
}

fn report(what: &str, times: &mut [Duration]) {
    times.sort();
    let at = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
    println!(
        "FIGURE\t{what}: min {:.1} / median {:.1} / p95 {:.1} / max {:.1} ms",
        millis(times[0]),
        millis(at(0.5)),
        millis(at(0.95)),
        millis(times[times.len() - 1])
    );
}
