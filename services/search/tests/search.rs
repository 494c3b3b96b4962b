//! The search index against a real Postgres (with pg_trgm): typo-tolerant
//! ranking with highlights, facets that count under every filter but their
//! own, autocomplete, and an index that ignores late and repeated events.

mod support;

use chrono::{Duration, Utc};
use commerce_proto::search::v1 as pb;
use commerce_proto::search::v1::search_service_server::SearchService;
use commerce_search::grpc::SearchGrpc;
use commerce_search::store::{self, CatalogFields};
use support::TestDatabase;
use tonic::{Code, Request};
use uuid::Uuid;

async fn index() -> anyhow::Result<(TestDatabase, SearchGrpc)> {
    let database = TestDatabase::create("search", &commerce_search::MIGRATOR).await?;
    let grpc = SearchGrpc::new(database.pool.clone());
    Ok((database, grpc))
}

fn product(name: &str, description: &str, category: Uuid, price: i64) -> CatalogFields {
    CatalogFields {
        product_id: Uuid::now_v7(),
        sku: format!("SKU-{}", name.len()),
        name: name.to_owned(),
        description: description.to_owned(),
        category_id: Some(category),
        price_units: price,
        currency: "EUR".to_owned(),
        active: true,
        changed_at: Utc::now(),
    }
}

async fn search(grpc: &SearchGrpc, request: pb::SearchRequest) -> anyhow::Result<pb::SearchResponse> {
    Ok(grpc.search(Request::new(request)).await?.into_inner())
}

fn query(text: &str) -> pb::SearchRequest {
    pb::SearchRequest { query: text.to_owned(), ..Default::default() }
}

fn names(response: &pb::SearchResponse) -> Vec<&str> {
    response.hits.iter().map(|hit| hit.name.as_str()).collect()
}

#[tokio::test]
async fn a_misspelt_query_finds_the_products_ranked_and_highlighted() -> anyhow::Result<()> {
    let (database, grpc) = index().await?;
    let kitchen = Uuid::now_v7();
    let mut conn = database.pool.acquire().await?;
    for fields in [
        product("Stainless kettle", "Boils a litre of water in two minutes", kitchen, 3500),
        product("Copper teapot", "Pairs well with any kettle", kitchen, 2900),
        product("Brass lamp", "Warm light for reading", Uuid::now_v7(), 4000),
    ] {
        assert!(store::apply_catalog(&mut conn, &fields).await?);
    }
    drop(conn);

    let found = search(&grpc, query("ketle")).await?;
    assert_eq!(found.corrected_query, "kettle");
    // A name match outranks a description match.
    assert_eq!(names(&found), ["Stainless kettle", "Copper teapot"]);
    assert_eq!(found.total_size, 2);
    assert_eq!(found.hits[0].name_highlight, "Stainless <mark>kettle</mark>");
    assert!(found.hits[0].score > found.hits[1].score, "{:?}", found.hits);
    assert!(found.hits[1].description_highlight.contains("<mark>kettle</mark>"), "{:?}", found.hits[1]);

    // Stemming: "boiling" finds "Boils"; an exact query is not "corrected".
    let boiling = search(&grpc, query("boiling water")).await?;
    assert_eq!(names(&boiling), ["Stainless kettle"]);
    assert!(boiling.hits[0].description_highlight.contains("<mark>Boils</mark>"), "{:?}", boiling.hits[0]);
    assert_eq!(boiling.corrected_query, "boiling water");

    // Query syntax is just text (every word is required); stop words alone
    // list everything.
    assert_eq!(names(&search(&grpc, query("kettle & !(teapot) | :*")).await?), ["Copper teapot"]);
    assert_eq!(search(&grpc, query("the")).await?.total_size, 3);
    let nothing = search(&grpc, query("zzzzqqq")).await?;
    assert_eq!((nothing.total_size, nothing.hits.len()), (0, 0));
    database.drop_database().await
}

#[tokio::test]
async fn facets_count_the_matches_under_every_filter_but_their_own() -> anyhow::Result<()> {
    let (database, grpc) = index().await?;
    let (kitchen, garden) = (Uuid::now_v7(), Uuid::now_v7());
    let mut conn = database.pool.acquire().await?;
    let cheap = product("Enamel mug", "A mug", kitchen, 900);
    let mid = product("Stoneware mug", "A heavy mug", kitchen, 3000);
    let dear = product("Garden mug", "A mug for the garden", garden, 12_000);
    for fields in [&cheap, &mid, &dear] {
        store::apply_catalog(&mut conn, fields).await?;
    }
    store::apply_available(&mut conn, cheap.product_id, 5).await?;
    store::apply_available(&mut conn, mid.product_id, 2).await?;
    // Ratings: cheap 4.5 (2 reviews), mid 2.0.
    store::apply_rating(&mut conn, cheap.product_id, 2, 9, 2).await?;
    store::apply_rating(&mut conn, mid.product_id, 1, 2, 1).await?;
    drop(conn);

    let counts = |list: &[pb::FacetCount]| -> Vec<(String, i64)> {
        list.iter().map(|count| (count.value.clone(), count.count)).collect()
    };
    let all = search(&grpc, query("mug")).await?;
    let facets = all.facets.clone().expect("facets");
    assert_eq!(counts(&facets.categories), [(kitchen.to_string(), 2), (garden.to_string(), 1)]);
    assert_eq!(
        counts(&facets.price_bands),
        [("0-1000".to_owned(), 1), ("2500-5000".to_owned(), 1), ("10000+".to_owned(), 1)]
    );
    assert_eq!(
        counts(&facets.ratings),
        [("1".to_owned(), 2), ("2".to_owned(), 2), ("3".to_owned(), 1), ("4".to_owned(), 1)]
    );
    assert_eq!(counts(&facets.in_stock), [("false".to_owned(), 1), ("true".to_owned(), 2)]);

    // In stock only: two hits; the stock facet still shows both sides, the
    // others count only what is in stock.
    let in_stock = search(&grpc, pb::SearchRequest { in_stock_only: true, ..query("mug") }).await?;
    assert_eq!(in_stock.total_size, 2);
    let facets = in_stock.facets.expect("facets");
    assert_eq!(counts(&facets.in_stock), [("false".to_owned(), 1), ("true".to_owned(), 2)]);
    assert_eq!(counts(&facets.categories), [(kitchen.to_string(), 2)]);

    // Every filter at once, and a page beyond the last still counts.
    let narrow = pb::SearchRequest {
        category_id: kitchen.to_string(),
        min_price: 500,
        max_price: 5_000,
        min_rating: 4,
        in_stock_only: true,
        ..query("mug")
    };
    assert_eq!(names(&search(&grpc, narrow.clone()).await?), ["Enamel mug"]);
    let beyond = search(&grpc, pb::SearchRequest { page_token: "40".to_owned(), ..narrow }).await?;
    assert_eq!((beyond.hits.len(), beyond.total_size), (0, 1));

    // Without a query: everything, by name, paged.
    let first = search(&grpc, pb::SearchRequest { page_size: 2, ..query("") }).await?;
    assert_eq!(names(&first), ["Enamel mug", "Garden mug"]);
    let second =
        search(&grpc, pb::SearchRequest { page_size: 2, page_token: first.next_page_token, ..query("") })
            .await?;
    assert_eq!((names(&second), second.next_page_token.as_str()), (vec!["Stoneware mug"], ""));

    for (bad, field) in [
        (pb::SearchRequest { category_id: "kitchen".to_owned(), ..query("mug") }, "category_id"),
        (pb::SearchRequest { min_rating: 5, ..query("mug") }, "min_rating"),
        (pb::SearchRequest { page_token: "x".to_owned(), ..query("mug") }, "page_token"),
        (query(&"mug ".repeat(60)), "query"),
    ] {
        let refused = grpc.search(Request::new(bad)).await.expect_err("refused");
        assert_eq!(refused.code(), Code::InvalidArgument);
        assert!(refused.message().starts_with(field), "{field}: {}", refused.message());
    }
    database.drop_database().await
}

#[tokio::test]
async fn the_index_ignores_late_events_and_keeps_deleted_products_out() -> anyhow::Result<()> {
    let (database, grpc) = index().await?;
    let mut conn = database.pool.acquire().await?;
    let mut kettle = product("Travel kettle", "Folds flat", Uuid::now_v7(), 2500);
    // Availability and rating may arrive before the product itself.
    store::apply_available(&mut conn, kettle.product_id, 3).await?;
    store::apply_rating(&mut conn, kettle.product_id, 1, 4, 1).await?;
    assert_eq!(search(&grpc, query("kettle")).await?.total_size, 0, "not listed before the catalog's event");
    store::apply_catalog(&mut conn, &kettle).await?;
    let found = search(&grpc, query("kettle")).await?;
    assert_eq!((found.hits[0].in_stock, found.hits[0].review_count), (true, 1));

    // A late event (older than the applied one) changes nothing; nor does an
    // older rating version.
    let renamed = CatalogFields {
        name: "Folding kettle".to_owned(),
        changed_at: kettle.changed_at + Duration::seconds(5),
        ..kettle.clone()
    };
    assert!(store::apply_catalog(&mut conn, &renamed).await?);
    kettle.name = "Stale kettle".to_owned();
    assert!(!store::apply_catalog(&mut conn, &kettle).await?);
    store::apply_rating(&mut conn, kettle.product_id, 9, 9, 1).await?;
    let found = search(&grpc, query("kettle")).await?;
    assert_eq!((names(&found), found.hits[0].review_count), (vec!["Folding kettle"], 1));

    // Deleted: gone, and an older event does not bring it back.
    store::apply_deleted(&mut conn, kettle.product_id, renamed.changed_at + Duration::seconds(1)).await?;
    assert!(!store::apply_catalog(&mut conn, &renamed).await?);
    assert_eq!(search(&grpc, query("kettle")).await?.total_size, 0);
    drop(conn);
    database.drop_database().await
}

#[tokio::test]
async fn suggestions_complete_the_last_word_and_escape_the_names() -> anyhow::Result<()> {
    let (database, grpc) = index().await?;
    let mut conn = database.pool.acquire().await?;
    let category = Uuid::now_v7();
    for fields in [
        product("Stainless kettle", "", category, 3500),
        product("Kettlebell 12 kg", "", category, 4500),
        product("<b>Bold</b> kettle & cup", "", category, 1500),
        product("Copper teapot", "", category, 2900),
    ] {
        store::apply_catalog(&mut conn, &fields).await?;
    }
    drop(conn);
    let suggest = |prefix: &str| {
        let grpc = grpc.clone();
        let request = pb::SuggestRequest { prefix: prefix.to_owned(), limit: 0 };
        async move { grpc.suggest(Request::new(request)).await.map(|answer| answer.into_inner().suggestions) }
    };
    let mut kett: Vec<String> = suggest("kett").await?.into_iter().map(|s| s.name).collect();
    kett.sort();
    assert_eq!(kett, ["<b>Bold</b> kettle & cup", "Kettlebell 12 kg", "Stainless kettle"]);
    // Earlier words are complete (and corrected); the last is a prefix.
    let two = suggest("stainles ke").await?;
    assert_eq!(
        two.iter().map(|s| s.highlight.as_str()).collect::<Vec<_>>(),
        ["<mark>Stainless</mark> <mark>kettle</mark>"]
    );
    let bold = suggest("bold").await?;
    assert_eq!(
        bold[0].highlight, "&lt;b&gt;<mark>Bold</mark>&lt;/b&gt; kettle &amp; cup",
        "HTML in names is escaped"
    );
    assert!(suggest("!!!").await?.is_empty());
    let refused = grpc
        .suggest(Request::new(pb::SuggestRequest { prefix: "kettle".to_owned(), limit: 21 }))
        .await
        .expect_err("too many");
    assert_eq!(refused.code(), Code::InvalidArgument);
    database.drop_database().await
}
