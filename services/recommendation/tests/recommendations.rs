//! The recommendations against a real Postgres: "also bought" counts
//! customers, not orders; "popular in this category" covers a product
//! nobody bought; views make "recently viewed"; a user's list never offers
//! what they bought; unlisted products are never shown.

mod support;

use chrono::{Duration, Utc};
use commerce_proto::recommendation::v1 as pb;
use commerce_proto::recommendation::v1::recommendation_service_server::RecommendationService;
use commerce_recommendation::grpc::RecommendationGrpc;
use commerce_recommendation::store::{self, Product};
use support::TestDatabase;
use tonic::{Code, Request};
use uuid::Uuid;

struct Shop {
    database: TestDatabase,
    grpc: RecommendationGrpc,
    category: Uuid,
}

impl Shop {
    async fn new() -> anyhow::Result<Self> {
        let database = TestDatabase::create("recommendation", &commerce_recommendation::MIGRATOR).await?;
        let grpc = RecommendationGrpc::new(database.pool.clone());
        Ok(Self { database, grpc, category: Uuid::now_v7() })
    }

    async fn product(&self, name: &str) -> anyhow::Result<Uuid> {
        let id = Uuid::now_v7();
        let mut conn = self.database.pool.acquire().await?;
        let product = Product {
            product_id: id,
            name: name.to_owned(),
            category_id: Some(self.category),
            price_units: 1000,
            currency: "EUR".to_owned(),
            active: true,
            changed_at: Utc::now(),
        };
        store::apply_product(&mut conn, &product).await?;
        Ok(id)
    }

    /// `user` orders `products` and the order is confirmed.
    async fn buys(&self, order: &str, user: &str, products: &[Uuid]) -> anyhow::Result<Vec<Uuid>> {
        let mut conn = self.database.pool.acquire().await?;
        store::record_placed(&mut conn, order, user, products).await?;
        Ok(store::record_confirmed(&mut conn, order, Utc::now()).await?)
    }

    async fn for_product(&self, product: Uuid) -> anyhow::Result<pb::ProductRecommendationsResponse> {
        let request = pb::ProductRecommendationsRequest { product_id: product.to_string(), limit: 0 };
        Ok(self.grpc.product_recommendations(Request::new(request)).await?.into_inner())
    }

    /// Records `views` of (user, product, seconds ago; `None`: unset) in one call.
    async fn views(&self, views: &[(&str, Uuid, Option<i64>)]) -> Result<(), tonic::Status> {
        let views = views
            .iter()
            .map(|(user, product, ago)| pb::ProductView {
                user_id: (*user).to_owned(),
                product_id: product.to_string(),
                viewed_at: ago
                    .map(|ago| commerce_proto::time::timestamp(Utc::now() - Duration::seconds(ago))),
            })
            .collect();
        self.grpc.record_views(Request::new(pb::RecordViewsRequest { views })).await.map(drop)
    }

    async fn for_user(&self, user: &str) -> anyhow::Result<pb::UserRecommendationsResponse> {
        let request = pb::UserRecommendationsRequest { user_id: user.to_owned(), limit: 0 };
        Ok(self.grpc.user_recommendations(Request::new(request)).await?.into_inner())
    }
}

fn listed(list: &[pb::Recommendation]) -> Vec<(String, i64)> {
    list.iter().map(|product| (product.name.clone(), product.buyers)).collect()
}

#[tokio::test]
async fn also_bought_counts_customers_once_and_a_new_product_falls_back_to_its_category() -> anyhow::Result<()>
{
    let shop = Shop::new().await?;
    let kettle = shop.product("Kettle").await?;
    let teapot = shop.product("Teapot").await?;
    let mugs = shop.product("Mugs").await?;
    let brand_new = shop.product("Brand new").await?;

    shop.buys("o1", "ada", &[kettle, teapot]).await?;
    shop.buys("o2", "bob", &[kettle]).await?;
    // Bob's later order pairs the teapot and the mugs with his kettle.
    assert_eq!(
        shop.buys("o3", "bob", &[kettle, teapot, mugs]).await?.len(),
        2,
        "the kettle is not new to bob"
    );
    // Ada buys the same again: no customer is counted twice.
    assert!(shop.buys("o4", "ada", &[kettle, teapot]).await?.is_empty());
    // A redelivered confirmation, and an order cancelled before it, count nothing.
    let mut conn = shop.database.pool.acquire().await?;
    assert!(store::record_confirmed(&mut conn, "o3", Utc::now()).await?.is_empty());
    store::record_placed(&mut conn, "o5", "cy", &[kettle, mugs]).await?;
    store::forget_placed(&mut conn, "o5").await?;
    assert!(store::record_confirmed(&mut conn, "o5", Utc::now()).await?.is_empty());
    drop(conn);

    let kettle_page = shop.for_product(kettle).await?;
    assert_eq!(listed(&kettle_page.also_bought), [("Teapot".to_owned(), 2), ("Mugs".to_owned(), 1)]);
    assert_eq!(listed(&kettle_page.popular_in_category), [("Brand new".to_owned(), 0)]);
    let mugs_page = shop.for_product(mugs).await?;
    assert_eq!(listed(&mugs_page.also_bought), [("Kettle".to_owned(), 1), ("Teapot".to_owned(), 1)]);

    // Nobody bought the new product: its category's best sellers stand in.
    let new_page = shop.for_product(brand_new).await?;
    assert!(new_page.also_bought.is_empty());
    assert_eq!(
        listed(&new_page.popular_in_category),
        [("Kettle".to_owned(), 2), ("Teapot".to_owned(), 2), ("Mugs".to_owned(), 1)]
    );

    // Unlisted products disappear; a late catalog event does not relist them.
    let mut conn = shop.database.pool.acquire().await?;
    let deleted_at = Utc::now();
    store::apply_deleted(&mut conn, teapot, deleted_at).await?;
    let stale = Product {
        product_id: teapot,
        name: "Teapot".to_owned(),
        category_id: Some(shop.category),
        price_units: 1000,
        currency: "EUR".to_owned(),
        active: true,
        changed_at: deleted_at - Duration::seconds(1),
    };
    store::apply_product(&mut conn, &stale).await?;
    drop(conn);
    assert_eq!(listed(&shop.for_product(kettle).await?.also_bought), [("Mugs".to_owned(), 1)]);

    let refused = shop
        .grpc
        .product_recommendations(Request::new(pb::ProductRecommendationsRequest {
            product_id: "kettle".to_owned(),
            limit: 0,
        }))
        .await
        .expect_err("not a UUID");
    assert_eq!(refused.code(), Code::InvalidArgument);
    shop.database.drop_database().await
}

#[tokio::test]
async fn a_user_sees_what_they_viewed_and_products_for_them_but_never_what_they_bought() -> anyhow::Result<()>
{
    let shop = Shop::new().await?;
    let kettle = shop.product("Kettle").await?;
    let teapot = shop.product("Teapot").await?;
    let mugs = shop.product("Mugs").await?;
    let lamp = shop.product("Lamp").await?;
    shop.buys("o1", "ada", &[kettle, teapot]).await?;
    shop.buys("o2", "bob", &[kettle, mugs]).await?;
    shop.buys("o3", "cy", &[lamp]).await?;
    shop.buys("o4", "dee", &[lamp]).await?;

    // A new user: no views, the shop's best sellers.
    let new = shop.for_user("eve").await?;
    assert!(new.recently_viewed.is_empty());
    assert_eq!(listed(&new.recommended)[0], ("Kettle".to_owned(), 2));

    // Eve views the teapot, then the lamp: the latest first; then what the
    // teapot's buyers bought comes before the best sellers.
    for product in [teapot, lamp, teapot] {
        shop.views(&[("eve", product, None)]).await?;
    }
    let eve = shop.for_user("eve").await?;
    assert_eq!(eve.recently_viewed.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), ["Teapot", "Lamp"]);
    assert!(eve.recently_viewed[0].viewed_at.is_some());
    let views =
        shop.grpc.list_views(Request::new(pb::ListViewsRequest { user_id: "eve".to_owned() })).await?;
    let viewed: Vec<String> = views.into_inner().views.into_iter().map(|view| view.product_id).collect();
    assert_eq!(viewed, [teapot.to_string(), lamp.to_string()]);
    let names: Vec<&str> = eve.recommended.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names[0], "Kettle", "bought with the teapot she viewed: {names:?}");

    // Ada bought the kettle and the teapot: offered the mugs (bought with
    // the kettle), never what she has.
    let ada = shop.for_user("ada").await?;
    let names: Vec<&str> = ada.recommended.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names[0], "Mugs", "{names:?}");
    assert!(!names.contains(&"Kettle") && !names.contains(&"Teapot"), "{names:?}");

    // Only the latest 50 views are kept.
    for _ in 0..55 {
        let product = shop.product("Browsed").await?;
        shop.views(&[("eve", product, None)]).await?;
    }
    let kept: i64 = sqlx::query_scalar("SELECT count(*) FROM views WHERE user_id = 'eve'")
        .fetch_one(&shop.database.pool)
        .await?;
    assert_eq!(kept, commerce_recommendation::VIEWS_KEPT);
    shop.database.drop_database().await
}

/// The gateway sends views in batches: a pair may repeat within one (the
/// latest counts), a batch that arrives late does not move a later view
/// back, a batch of many views keeps each user's latest 50, and a bad view
/// refuses the batch, naming what is wrong.
#[tokio::test]
async fn views_come_in_batches_and_the_latest_of_each_pair_counts() -> anyhow::Result<()> {
    let shop = Shop::new().await?;
    let kettle = shop.product("Kettle").await?;
    let lamp = shop.product("Lamp").await?;
    let viewed = |user: &'static str| {
        let shop = &shop;
        async move {
            let mine = shop.for_user(user).await?;
            Ok::<_, anyhow::Error>(mine.recently_viewed.into_iter().map(|p| p.name).collect::<Vec<_>>())
        }
    };
    shop.views(&[
        ("fay", kettle, Some(30)),
        ("fay", lamp, Some(20)),
        ("fay", kettle, Some(10)),
        ("gus", lamp, None),
    ])
    .await?;
    assert_eq!(viewed("fay").await?, ["Kettle", "Lamp"]);
    assert_eq!(viewed("gus").await?, ["Lamp"]);
    // A late batch: the lamp was viewed before the kettle's last view.
    shop.views(&[("fay", lamp, Some(15))]).await?;
    assert_eq!(viewed("fay").await?, ["Kettle", "Lamp"], "a late view does not overtake a later one");

    // 60 products for one user in one batch: the latest 50 stay.
    let mut many = Vec::new();
    for place in 0..60 {
        many.push(("hal", shop.product("Browsed").await?, Some(1_000 - place)));
    }
    shop.views(&many).await?;
    let kept: Vec<Uuid> =
        sqlx::query_scalar("SELECT product_id FROM views WHERE user_id = 'hal' ORDER BY viewed_at")
            .fetch_all(&shop.database.pool)
            .await?;
    let latest: Vec<Uuid> = many[10..].iter().map(|(_, product, _)| *product).collect();
    assert_eq!(kept, latest);

    for (bad, field) in [
        (vec![("", kettle, None)], "user_id"),
        (vec![("fay", lamp, None); commerce_recommendation::MAX_VIEWS_PER_CALL + 1], "views"),
    ] {
        let refused = shop.views(&bad).await.expect_err("refused");
        assert_eq!(refused.code(), Code::InvalidArgument);
        assert!(refused.message().contains(field), "{refused:?}");
    }
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM views").fetch_one(&shop.database.pool).await?;
    assert_eq!(count, 2 + 1 + 50, "a refused batch records nothing");
    shop.database.drop_database().await
}

/// A gateway replica sends the views it collected about once a second, so
/// views can arrive after their user was erased: they are dropped, never
/// stored again, and an erasure that is being committed holds a batch back
/// until it can see it. The erased ids are kept a day.
#[tokio::test]
async fn views_arriving_after_their_user_is_erased_are_dropped() -> anyhow::Result<()> {
    let shop = Shop::new().await?;
    let kettle = shop.product("Kettle").await?;
    let lamp = shop.product("Lamp").await?;
    let pool = shop.database.pool.clone();
    let views_of = |user: &'static str| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM views WHERE user_id = $1")
                .bind(user)
                .fetch_one(&pool)
                .await
        }
    };
    let erase = |user: &'static str| {
        let pool = pool.clone();
        async move {
            let mut tx = pool.begin().await?;
            store::erase_user(&mut tx, user).await?;
            tx.commit().await
        }
    };

    shop.views(&[("ivy", kettle, None)]).await?;
    erase("ivy").await?;
    assert_eq!(views_of("ivy").await?, 0);
    // A late batch holding ivy's views and someone else's: only the other's stay.
    shop.views(&[("ivy", lamp, None), ("jo", lamp, None), ("ivy", kettle, None)]).await?;
    assert_eq!((views_of("ivy").await?, views_of("jo").await?), (0, 1));
    assert!(shop.for_user("ivy").await?.recently_viewed.is_empty());

    // An erasure in progress: a batch for that user waits for its commit,
    // then is dropped.
    let mut erasing = pool.begin().await?;
    store::erase_user(&mut erasing, "kim").await?;
    let batch = tokio::spawn({
        let pool = pool.clone();
        async move {
            let views = [store::View { user_id: "kim", product_id: kettle, viewed_at: Utc::now() }];
            store::record_views(&pool, &views).await
        }
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(!batch.is_finished(), "a batch waits for the erasure being committed");
    erasing.commit().await?;
    batch.await??;
    assert_eq!(views_of("kim").await?, 0, "the batch saw the erasure");

    // Erased ids are kept a day: an erasure clears the older ones.
    sqlx::query("UPDATE erased_users SET erased_at = now() - interval '25 hours' WHERE user_id = 'ivy'")
        .execute(&pool)
        .await?;
    erase("lou").await?;
    let erased: Vec<String> =
        sqlx::query_scalar("SELECT user_id FROM erased_users ORDER BY user_id").fetch_all(&pool).await?;
    assert_eq!(erased, ["kim", "lou"]);
    shop.database.drop_database().await
}
