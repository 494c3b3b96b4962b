//! The shop end to end: the `commerce` binary (`commerce serve all`) on the
//! loopback infrastructure, driven only over REST through the gateway, as a
//! customer, the bootstrap admin and the bootstrap courier would; outcomes
//! checked through the API and, for what the API does not show (stock,
//! payments, refunds, outboxes), with SQL on the services' own databases.
//!
//! Needs `source e2e/infra.env` (Postgres, Kafka and Redis up: `make infra`)
//! and a built binary (`cargo build -p commerce`). One shop is started for
//! the whole file ([`support::shop::shared`]); each test makes its own
//! users and products, so the tests run in parallel and reruns never see
//! each other. The reservation-expiry test starts a second shop of its own
//! with a 3 s reservation TTL: a TTL that short in the shared shop would
//! fail healthy orders of the other tests whenever the machine is slow.

mod support;

use std::collections::BTreeMap;
use std::time::Instant;

use commerce_topology::Service;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use support::api::{Api, ORDER_TIMEOUT, Session, string};
use support::invariants::assert_invariants;
use support::live::{LiveSocket, SecondGateway, SseStream};
use support::shop::{self, Shop, ShopOptions};
use support::{stock, tokens, wait_for};

/// Card tokens of the mock payment provider (services/payment/src/provider.rs).
const CARD_OK: &str = "tok_visa";
const CARD_DECLINED: &str = "tok_decline";
const CARD_UNAVAILABLE: &str = "tok_unavailable";
/// The mock captures a charge on this card but loses every answer.
const CARD_LOST_ANSWER: &str = "tok_lost_answer";

/// The shared shop, its API, and a logged-in admin.
async fn setup() -> (&'static Shop, Api, Session) {
    let shop = shop::shared();
    let api = Api::new(shop);
    let admin = api.admin().await.expect("the bootstrap admin logs in");
    (shop, api, admin)
}

/// Kinds of the customer's notifications.
async fn notification_kinds(api: &Api, customer: &Session) -> anyhow::Result<Vec<String>> {
    let page = api
        .get("/api/notifications?page_size=100", Some(&customer.access_token))
        .await?
        .expect(StatusCode::OK)?;
    Ok(page["notifications"]
        .as_array()
        .map(|list| list.iter().filter_map(|n| n["kind"].as_str().map(str::to_owned)).collect())
        .unwrap_or_default())
}

/// Waits until the customer has a notification of each of `kinds`.
async fn wait_notifications(api: &Api, customer: &Session, kinds: &[&str]) -> Vec<String> {
    let (have, _) = wait_for(&format!("notifications {kinds:?}"), ORDER_TIMEOUT, || async {
        let have = notification_kinds(api, customer).await?;
        Ok(kinds.iter().all(|kind| have.iter().any(|k| k == kind)).then_some(have))
    })
    .await
    .expect("notifications arrive");
    have
}

/// Waits until the product's `(available, reserved, sold)` is `expected`.
async fn wait_stock(shop: &Shop, product: &str, expected: (i64, i64, i64)) {
    let deadline = Instant::now() + ORDER_TIMEOUT;
    loop {
        let level = stock(&shop.databases, product).await.expect("reads the stock");
        if level == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "stock of {product} is (available, reserved, sold) = {level:?}, not {expected:?}, after {:?}",
            ORDER_TIMEOUT
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// The shipment of an order as its owner tracks it.
async fn shipment_of(api: &Api, customer: &Session, order_id: &str) -> Value {
    let (shipment, _) = wait_for("the shipment", ORDER_TIMEOUT, || async {
        let answer =
            api.get(&format!("/api/shipments?order_id={order_id}"), Some(&customer.access_token)).await?;
        Ok((answer.status == StatusCode::OK).then(|| answer.body["shipments"][0].clone()))
    })
    .await
    .expect("a shipment exists");
    shipment
}

/// The bootstrap courier takes the order's shipment through every step to
/// delivered; its id.
async fn deliver(api: &Api, customer: &Session, order_id: &str) -> String {
    let shipment = shipment_of(api, customer, order_id).await;
    let shipment_id = string(&shipment, "id").expect("shipment id");
    let courier = api.courier().await.expect("the bootstrap courier logs in");
    for status in ["assigned", "picked_up", "in_transit", "delivered"] {
        api.post(
            &format!("/api/shipments/{shipment_id}/status"),
            Some(&courier.access_token),
            &json!({"status": status}),
        )
        .await
        .expect("moves")
        .expect(StatusCode::OK)
        .unwrap_or_else(|error| panic!("moving the shipment to {status}: {error}"));
    }
    shipment_id
}

/// Product names of one page of a catalog query.
fn names(page: &Value) -> Vec<String> {
    page["products"]
        .as_array()
        .map(|list| list.iter().filter_map(|p| p["name"].as_str().map(str::to_owned)).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn a_customer_registers_browses_buys_and_the_courier_delivers() {
    let started = Instant::now();
    let (shop, api, admin) = setup().await;
    eprintln!("shop cold start: {:.1} s ({})", shop.cold_start.as_secs_f64(), shop.gateway_url);

    // The admin stocks three lamps in one category and a shade in another;
    // a word unique to this run finds exactly them.
    let word = format!("zq{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
    let lamps = api.create_category(&admin, "Lamps").await.expect("category");
    let shades = api.create_category(&admin, "Shades").await.expect("category");
    let mut products = BTreeMap::new();
    for (name, category, price) in [
        (format!("Amber lamp {word}"), &lamps, 2500),
        (format!("Brass lamp {word}"), &lamps, 4000),
        (format!("Cobalt lamp {word}"), &lamps, 9900),
        (format!("Linen shade {word}"), &shades, 1500),
    ] {
        let id = api.create_product(&admin, category, &name, price, 10).await.expect("product");
        products.insert(name, id);
    }

    // Register, then log in with the password.
    let registered = api.register_customer("buyer").await.expect("registers");
    let customer = api.login(&registered.email, "correct horse battery").await.expect("logs in");
    assert_eq!(customer.user_id, registered.user_id);

    // Search with pagination: 4 matches, 3 pages of at most 2... in name order.
    let first = api
        .get(&format!("/api/products?q={word}&page_size=3"), None)
        .await
        .expect("lists")
        .expect(StatusCode::OK)
        .expect("200");
    assert_eq!(first["total_size"], json!(4), "{first}");
    assert_eq!(names(&first).len(), 3, "{first}");
    let token = string(&first, "next_page_token").expect("token");
    assert!(!token.is_empty(), "a second page is announced: {first}");
    let second = api
        .get(&format!("/api/products?q={word}&page_size=3&page_token={token}"), None)
        .await
        .expect("lists")
        .expect(StatusCode::OK)
        .expect("200");
    assert_eq!(names(&second).len(), 1, "{second}");
    assert_eq!(second["next_page_token"], json!(""), "the last page: {second}");
    let mut all = names(&first);
    all.extend(names(&second));
    all.sort();
    assert_eq!(all, products.keys().cloned().collect::<Vec<_>>(), "every match exactly once");

    // Filters: by category, by price range.
    let in_shades = api
        .get(&format!("/api/products?q={word}&category={shades}"), None)
        .await
        .expect("lists")
        .expect(StatusCode::OK)
        .expect("200");
    assert_eq!(names(&in_shades), [format!("Linen shade {word}")], "{in_shades}");
    let mid_priced = api
        .get(&format!("/api/products?q={word}&min_price=2000&max_price=5000&currency=EUR"), None)
        .await
        .expect("lists")
        .expect(StatusCode::OK)
        .expect("200");
    let mut mid = names(&mid_priced);
    mid.sort();
    assert_eq!(mid, [format!("Amber lamp {word}"), format!("Brass lamp {word}")], "{mid_priced}");

    // Into the cart: two brass lamps and a shade.
    let brass = products[&format!("Brass lamp {word}")].clone();
    let shade = products[&format!("Linen shade {word}")].clone();
    let product = api
        .get(&format!("/api/products/{brass}"), None)
        .await
        .expect("reads")
        .expect(StatusCode::OK)
        .expect("200");
    assert_eq!(product["price"], json!({"currency": "EUR", "amount_minor": 4000}));
    for (id, quantity) in [(&brass, 2), (&shade, 1)] {
        api.post(
            "/api/cart/items",
            Some(&customer.access_token),
            &json!({"product_id": id, "quantity": quantity}),
        )
        .await
        .expect("adds")
        .expect(StatusCode::OK)
        .expect("200");
    }
    let cart = api
        .get("/api/cart", Some(&customer.access_token))
        .await
        .expect("cart")
        .expect(StatusCode::OK)
        .expect("200");
    assert_eq!(cart["items"].as_array().map(Vec::len), Some(2), "{cart}");
    assert_eq!(cart["subtotal"], json!({"currency": "EUR", "amount_minor": 9500}), "{cart}");

    // Check out: the order is priced by the services and confirmed.
    let checkout = api
        .http
        .post(format!("{}/api/cart/checkout", api.base))
        .bearer_auth(&customer.access_token)
        .header("Idempotency-Key", uuid::Uuid::new_v4().to_string())
        .json(&json!({"shipping_address": support::api::address(), "payment_method_token": CARD_OK}));
    let order = api.send(checkout).await.expect("checks out").expect(StatusCode::CREATED).expect("201");
    let order_id = string(&order, "id").expect("order id");
    assert_eq!(order["total"], json!({"currency": "EUR", "amount_minor": 9500}), "{order}");
    let confirmed = api.wait_order(&customer, &order_id, "confirmed").await.expect("confirmed");
    assert!(!confirmed["payment_id"].as_str().unwrap_or_default().is_empty(), "{confirmed}");
    assert!(!confirmed["reservation_id"].as_str().unwrap_or_default().is_empty(), "{confirmed}");

    // Stock committed, a shipment, the notifications.
    wait_stock(shop, &brass, (8, 0, 2)).await;
    wait_stock(shop, &shade, (9, 0, 1)).await;
    let shipment = shipment_of(&api, &customer, &order_id).await;
    let shipment_id = string(&shipment, "id").expect("shipment id");
    assert_eq!(shipment["order_id"], json!(order_id));
    wait_notifications(&api, &customer, &["order_placed", "order_confirmed", "shipment_created"]).await;

    // The courier takes the parcel and delivers it.
    let courier = api.courier().await.expect("the bootstrap courier logs in");
    for status in ["assigned", "picked_up", "in_transit", "delivered"] {
        let moved = api
            .post(
                &format!("/api/shipments/{shipment_id}/status"),
                Some(&courier.access_token),
                &json!({"status": status, "location": "Berlin"}),
            )
            .await
            .expect("moves")
            .expect(StatusCode::OK)
            .unwrap_or_else(|error| panic!("moving the shipment to {status}: {error}"));
        assert_eq!(moved["status"], json!(status));
    }
    api.wait_order(&customer, &order_id, "delivered").await.expect("delivered");
    wait_notifications(&api, &customer, &["order_delivered"]).await;
    // Stored once per event: no two notifications from one source event.
    let notifications = shop.databases.pool(Service::Notification).await.expect("notification db");
    let (stored, sources): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(DISTINCT source_event_id) FROM notifications WHERE user_id = $1 AND order_id = $2",
    )
    .bind(&customer.user_id)
    .bind(&order_id)
    .fetch_one(&notifications)
    .await
    .expect("reads the notifications");
    assert!(stored >= 4 && stored == sources, "{stored} notifications from {sources} events");
    let tracked = shipment_of(&api, &customer, &order_id).await;
    assert_eq!(tracked["status"], json!("delivered"), "{tracked}");

    assert_invariants(&shop.databases).await;
    eprintln!("happy path took {:.1} s", started.elapsed().as_secs_f64());
}

/// (version, status) of a live event's data.
fn change(data: &Value) -> (u64, String) {
    (data["version"].as_u64().unwrap_or(0), data["status"].as_str().unwrap_or_default().to_owned())
}

#[tokio::test]
async fn status_changes_reach_sse_and_websocket_clients_of_another_gateway_live_and_resume_after_the_last_seen()
 {
    let (shop, api, admin) = setup().await;
    let second = SecondGateway::start(shop).await.expect("a second gateway starts");
    let category = api.create_category(&admin, "Lanterns").await.expect("category");
    let lantern = api.create_product(&admin, &category, "Storm lantern", 3500, 5).await.expect("product");
    let customer = api.register_customer("watcher").await.expect("registers");
    let token = customer.access_token.clone();

    // The socket on the second gateway is open before the order exists.
    let mut socket = LiveSocket::connect(&second.url, &token).await.expect("the socket opens");
    // The order is placed through the first gateway.
    let order_id = api.order(&customer, &[(&lantern, 1)], CARD_OK).await.expect("placed");
    let events_url = format!("{}/api/orders/{order_id}/events", second.url);
    let mut stream = SseStream::open(&api.http, &events_url, &token, None)
        .await
        .expect("answers")
        .expect("200 text/event-stream");

    // The whole history so far, then live: pending first, versions without
    // gaps, up to confirmed (reserved may come before it, or not, as the
    // saga's two replies race).
    let mut seen = Vec::new();
    while seen.last().is_none_or(|(_, status): &(u64, String)| status != "confirmed") {
        let event = stream.next().await.expect("an event").expect("the stream stays open");
        assert_eq!(event.event.as_deref(), Some("status"), "{event:?}");
        assert_eq!(event.data["order_id"], json!(order_id), "{event:?}");
        let (version, status) = change(&event.data);
        assert_eq!(event.id, Some(version.to_string()), "the id is the version: {event:?}");
        seen.push((version, status));
    }
    assert_eq!(seen[0], (1, "pending".to_owned()), "{seen:?}");
    assert!(seen.iter().enumerate().all(|(at, (version, _))| *version == at as u64 + 1), "{seen:?}");
    let confirmed_version = seen.last().map(|(version, _)| *version).unwrap_or_default();

    // The courier picks the parcel up, through the first gateway: the order
    // ships, and the second gateway's stream says so.
    let shipment_id = string(&shipment_of(&api, &customer, &order_id).await, "id").expect("shipment id");
    let courier = api.courier().await.expect("the bootstrap courier logs in");
    let move_to = |status: &'static str| {
        let (api, courier, shipment_id) = (&api, &courier, &shipment_id);
        async move {
            api.post(
                &format!("/api/shipments/{shipment_id}/status"),
                Some(&courier.access_token),
                &json!({"status": status, "location": "Lisbon"}),
            )
            .await
            .expect("moves")
            .expect(StatusCode::OK)
            .unwrap_or_else(|error| panic!("moving the shipment to {status}: {error}"));
        }
    };
    move_to("assigned").await;
    move_to("picked_up").await;
    let moved = Instant::now();
    let shipped = stream.next().await.expect("an event").expect("the stream stays open");
    eprintln!("picked up -> `shipped` on the second gateway's stream: {:?}", moved.elapsed());
    assert_eq!(change(&shipped.data), (confirmed_version + 1, "shipped".to_owned()), "{shipped:?}");
    drop(stream);

    // The socket saw the same order go the same way.
    let mut on_socket = Vec::new();
    while on_socket.last().is_none_or(|(_, status): &(u64, String)| status != "shipped") {
        let message = socket.next().await.expect("a message").expect("the socket stays open");
        assert_eq!(message["order_id"], json!(order_id), "only the caller's orders: {message}");
        on_socket.push(change(&message));
    }
    let mut expected = seen.clone();
    expected.push((confirmed_version + 1, "shipped".to_owned()));
    assert_eq!(on_socket, expected, "the socket and the stream agree");
    socket.close().await;

    // Reconnecting after the confirmation replays the shipment, then the
    // delivery comes live and the stream ends: delivered is terminal.
    let mut resumed = SseStream::open(&api.http, &events_url, &token, Some(confirmed_version))
        .await
        .expect("answers")
        .expect("200 text/event-stream");
    let replayed = resumed.next().await.expect("an event").expect("replayed");
    assert_eq!(change(&replayed.data), (confirmed_version + 1, "shipped".to_owned()));
    move_to("in_transit").await;
    move_to("delivered").await;
    let delivered = resumed.next().await.expect("an event").expect("delivered");
    assert_eq!(change(&delivered.data), (confirmed_version + 2, "delivered".to_owned()));
    assert_eq!(resumed.next().await.expect("the end"), None, "the stream ends after a terminal status");

    // Nobody else's order, no malformed resume point, no plain GET as a socket.
    let stranger = api.register_customer("stranger").await.expect("registers");
    for (token, last, expected) in [
        (&stranger.access_token, None, StatusCode::NOT_FOUND),
        (&customer.access_token, Some("seven"), StatusCode::BAD_REQUEST),
    ] {
        let mut request = api.http.get(&events_url).bearer_auth(token);
        if let Some(last) = last {
            request = request.header("last-event-id", last);
        }
        let answer = api.send(request).await.expect("answers");
        assert_eq!(answer.status, expected, "{:?}", answer.body);
        answer.assert_problem("live events");
    }
    let plain = api.send(api.http.get(format!("{}/api/orders/live", second.url)).bearer_auth(&token));
    let plain = plain.await.expect("answers");
    assert!(plain.status.is_client_error(), "{}: {:?}", plain.status, plain.body);
    plain.assert_problem("a socket without an upgrade");
    drop(second);
}

#[tokio::test]
async fn a_shop_with_email_on_welcomes_a_new_customer_and_mails_each_step_of_their_order() {
    let smtp =
        commerce_testkit::smtp::SmtpServer::start(support::procs::free_port()).expect("aiosmtpd starts");
    let options = ShopOptions {
        env: vec![
            ("COMMERCE_EMAIL_SMTP_URL".to_owned(), smtp.url()),
            ("COMMERCE_EMAIL_FROM".to_owned(), "Shop <shop@example.test>".to_owned()),
        ],
    };
    let shop = Shop::start(options).await.expect("the shop starts");
    let api = Api::new(&shop);
    let admin = api.admin().await.expect("the bootstrap admin logs in");
    let category = api.create_category(&admin, "Kettles").await.expect("category");
    let kettle = api.create_product(&admin, &category, "Copper kettle", 4200, 3).await.expect("product");
    let customer = api.register_customer("mailed").await.expect("registers");
    let order_id = api.order(&customer, &[(&kettle, 1)], CARD_OK).await.expect("placed");
    api.wait_order(&customer, &order_id, "confirmed").await.expect("confirmed");

    let to = format!("To: {}", customer.email);
    let subjects = ["Welcome to the shop", "We received your order", "Your order is confirmed"];
    let (mine, _) = wait_for("the customer's emails", ORDER_TIMEOUT, || async {
        let mine: Vec<String> = smtp.messages()?.into_iter().filter(|m| m.contains(&to)).collect();
        let arrived = subjects.iter().all(|s| mine.iter().any(|m| m.contains(&format!("Subject: {s}"))));
        Ok(arrived.then_some(mine))
    })
    .await
    .expect("the emails arrive");
    let confirmation =
        mine.iter().find(|m| m.contains("Subject: Your order is confirmed")).expect("confirmation");
    assert!(confirmation.contains("From: Shop <shop@example.test>"), "{confirmation}");
    assert!(confirmation.contains(&format!("Order: {order_id}")), "{confirmation}");
    assert!(confirmation.contains("42.00 EUR"), "{confirmation}");
    shop.stop().expect("the shop stops");
}

/// The profile service through the gateway: the profile made from the
/// registration, its edits and refusals, the address book's default, and
/// an order without an address shipping to it.
#[tokio::test]
async fn a_customer_keeps_a_profile_and_an_address_book_and_an_order_without_an_address_ships_to_the_default()
{
    let (_shop, api, admin) = setup().await;
    let category = api.create_category(&admin, "Profiles").await.expect("category");
    let product = api.create_product(&admin, &category, "Doormat", 900, 5).await.expect("product");
    let customer = api.register_customer("homebody").await.expect("registers");
    let token = Some(customer.access_token.as_str());

    // Made from the registration's event, asynchronously.
    let (profile, _) = wait_for("the profile from the registration", ORDER_TIMEOUT, || async {
        let profile = api.get("/api/users/me", token).await?.expect(StatusCode::OK)?;
        Ok((profile["display_name"] == json!("homebody")).then_some(profile))
    })
    .await
    .expect("the profile exists");
    assert_eq!(profile["updated_at"], Value::Null, "never written by the user");

    let edit = json!({"display_name": "Home Body", "phone": "+4930123456",
                      "preferences": {"currency": "EUR", "marketing_consent": true}});
    let saved = api.call(Method::PUT, "/api/users/me", token, Some(&edit)).await.expect("answers");
    let saved = saved.expect(StatusCode::OK).expect("200");
    assert_eq!(
        (saved["display_name"].clone(), saved["preferences"]["currency"].clone()),
        (json!("Home Body"), json!("EUR"))
    );
    let bad = json!({"display_name": "Home Body", "phone": "030 123"});
    let refused = api.call(Method::PUT, "/api/users/me", token, Some(&bad)).await.expect("answers");
    assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{}", refused.body);
    refused.assert_problem("a phone number that is not E.164");
    assert!(refused.body.to_string().contains("phone"), "{}", refused.body);

    // No address given and none in the book: refused, naming the way out.
    let no_address =
        json!({"lines": [{"product_id": product, "quantity": 1}], "payment_method_token": CARD_OK});
    let request = api
        .request(Method::POST, "/api/orders", token, Some(&no_address))
        .header("Idempotency-Key", uuid::Uuid::new_v4().to_string());
    let refused = api.send(request).await.expect("answers");
    assert_eq!(refused.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", refused.body);
    refused.assert_problem("an order without any address");

    let add = |line1: &str, make_default: bool| {
        let mut address = support::api::address();
        address["line1"] = json!(line1);
        json!({"label": line1, "address": address, "make_default": make_default})
    };
    let home = api.post("/api/users/me/addresses", token, &add("1 Home St", false)).await.expect("answers");
    let home = home.expect(StatusCode::CREATED).expect("201");
    assert_eq!(home["is_default"], json!(true), "the first address is the default");
    let cabin = api.post("/api/users/me/addresses", token, &add("3 Cabin Way", true)).await.expect("answers");
    let cabin = cabin.expect(StatusCode::CREATED).expect("201");
    let book = api
        .get("/api/users/me/addresses", token)
        .await
        .expect("answers")
        .expect(StatusCode::OK)
        .expect("200");
    let lines: Vec<(Value, Value)> = book["addresses"]
        .as_array()
        .expect("addresses")
        .iter()
        .map(|a| (a["address"]["line1"].clone(), a["is_default"].clone()))
        .collect();
    assert_eq!(lines, [(json!("3 Cabin Way"), json!(true)), (json!("1 Home St"), json!(false))]);

    // Another customer reaches none of it.
    let stranger = api.register_customer("stranger").await.expect("registers");
    let home_id = string(&home, "id").expect("id");
    let stolen = api
        .call(
            Method::DELETE,
            &format!("/api/users/me/addresses/{home_id}"),
            Some(&stranger.access_token),
            None,
        )
        .await
        .expect("answers");
    assert_eq!(stolen.status, StatusCode::NOT_FOUND, "{}", stolen.body);

    // An order without an address ships to the default.
    let request = api
        .request(Method::POST, "/api/orders", token, Some(&no_address))
        .header("Idempotency-Key", uuid::Uuid::new_v4().to_string());
    let order = api.send(request).await.expect("answers").expect(StatusCode::CREATED).expect("201");
    assert_eq!(order["shipping_address"]["line1"], json!("3 Cabin Way"), "{order}");
    assert_eq!(order["shipping_address"], cabin["address"]);
    let deleted = api
        .call(
            Method::DELETE,
            &format!("/api/users/me/addresses/{}", string(&cabin, "id").expect("id")),
            token,
            None,
        )
        .await
        .expect("answers");
    assert_eq!(deleted.status, StatusCode::NO_CONTENT, "{}", deleted.body);
    let book = api
        .get("/api/users/me/addresses", token)
        .await
        .expect("answers")
        .expect(StatusCode::OK)
        .expect("200");
    assert_eq!(book["addresses"][0]["is_default"], json!(true), "the default passed on: {book}");

    // The export holds all of it, and nothing of the stranger's.
    let export =
        api.get("/api/users/me/export", token).await.expect("answers").expect(StatusCode::OK).expect("200");
    assert_eq!(export["user_id"], json!(customer.user_id), "{export}");
    assert_eq!(export["profile"]["display_name"], json!("Home Body"));
    assert_eq!(export["addresses"].as_array().map(Vec::len), Some(1), "{export}");
    let exported: Vec<&Value> =
        export["orders"].as_array().expect("orders").iter().map(|o| &o["id"]).collect();
    assert_eq!(exported, [&order["id"]], "{export}");
    assert_eq!(export["truncated"], json!(false));
    let theirs = api
        .get("/api/users/me/export", Some(&stranger.access_token))
        .await
        .expect("answers")
        .expect(StatusCode::OK)
        .expect("200");
    assert_eq!(
        (theirs["orders"].as_array().map(Vec::len), theirs["addresses"].as_array().map(Vec::len)),
        (Some(0), Some(0))
    );
}

/// A shop whose payment service charges through the Stripe adapter, on a
/// ledger that passes each call through stripe-mock: the saga keeps its
/// invariants with it as with the mock, and Stripe's webhooks reach the
/// payment service through the gateway, signature checked.
#[tokio::test]
async fn a_shop_paying_through_stripe_confirms_fails_and_refunds_with_the_money_where_it_belongs() {
    use commerce_payment::stripe::webhook;
    use commerce_testkit::stripe_ledger::{DECLINED_PAYMENT_METHOD, StripeLedger};

    let stripe_mock = commerce_testkit::stripe_mock::StripeMock::start().expect("stripe-mock starts");
    let (ledger, ledger_url) = StripeLedger::start(stripe_mock.url()).await.expect("the ledger starts");
    let keys = tempfile_dir("stripe-keys");
    let webhook_secret = "whsec_e2e";
    std::fs::write(keys.join("secretKey"), "sk_test_e2e").expect("key written");
    std::fs::write(keys.join("webhookSecret"), webhook_secret).expect("secret written");
    let env = |name: &str, value: String| (name.to_owned(), value);
    let options = ShopOptions {
        env: vec![
            env("COMMERCE_PAYMENT_PROVIDER", "stripe".to_owned()),
            env("COMMERCE_STRIPE_API_BASE", ledger_url),
            env("COMMERCE_STRIPE_SECRET_KEY_FILE", keys.join("secretKey").display().to_string()),
            env("COMMERCE_STRIPE_WEBHOOK_SECRET_FILE", keys.join("webhookSecret").display().to_string()),
        ],
    };
    let shop = Shop::start(options).await.expect("the Stripe shop starts");
    let api = Api::new(&shop);
    let admin = api.admin().await.expect("admin");
    let category = api.create_category(&admin, "Paid by card").await.expect("category");
    let product = api.create_product(&admin, &category, "Espresso cup", 1500, 10).await.expect("product");
    let customer = api.register_customer("stripe").await.expect("registers");

    let paid = api.order(&customer, &[(&product, 2)], "pm_card_visa").await.expect("placed");
    let declined = api.order(&customer, &[(&product, 3)], DECLINED_PAYMENT_METHOD).await.expect("placed");
    let regretted = api.order(&customer, &[(&product, 1)], "pm_card_visa").await.expect("placed");
    api.wait_order(&customer, &paid, "confirmed").await.expect("confirmed");
    let failed = api.wait_order(&customer, &declined, "failed").await.expect("failed");
    assert!(failed["failure_reason"].as_str().unwrap_or_default().contains("declined"), "{failed}");
    api.wait_order(&customer, &regretted, "confirmed").await.expect("confirmed");
    api.cancel_order(&customer, &regretted, "no").await.expect("cancelled");
    wait_for("the refund at Stripe", ORDER_TIMEOUT, || async {
        Ok((ledger.money_held_for(&regretted) == 0).then_some(()))
    })
    .await
    .expect("refunded");
    assert_eq!(ledger.money_held_for(&paid), 3000, "the confirmed order's money, once");
    assert_eq!(ledger.money_held_for(&declined), 0);
    wait_stock(&shop, &product, (8, 0, 2)).await;
    let payment = shop.databases.pool(Service::Payment).await.expect("payment db");
    let (provider, reference): (String, String) =
        sqlx::query_as("SELECT provider, provider_reference FROM payments WHERE order_id = $1")
            .bind(&paid)
            .fetch_one(&payment)
            .await
            .expect("a payment row");
    assert_eq!(provider, "stripe");
    assert!(reference.starts_with("pi_"), "{reference}");
    // The services' side; the provider's side is the ledger's, just checked.
    assert_invariants(&shop.databases.clone().without_mock_ledger()).await;

    // Stripe's webhooks, through the gateway.
    let event = json!({
        "id": "evt_e2e", "object": "event", "type": "payment_intent.succeeded",
        "data": {"object": {"id": reference, "object": "payment_intent", "metadata": {"order_id": paid}}}
    })
    .to_string();
    let deliver = |signature: String| {
        api.http
            .post(format!("{}/api/payments/webhooks/stripe", shop.gateway_url))
            .header("content-type", "application/json")
            .header("stripe-signature", signature)
            .body(event.clone())
    };
    let now =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("after 1970").as_secs();
    let now = i64::try_from(now).expect("fits");
    let receipt =
        api.send(deliver(webhook::sign(event.as_bytes(), webhook_secret, now))).await.expect("answers");
    assert_eq!(receipt.status, StatusCode::OK, "{}", receipt.body);
    assert_eq!(receipt.body["event_id"], json!("evt_e2e"));
    assert_eq!(receipt.body["payment_due"], json!(false), "nothing was waiting for it");
    let forged =
        api.send(deliver(webhook::sign(event.as_bytes(), "whsec_forged", now))).await.expect("answers");
    assert_eq!(forged.status, StatusCode::UNAUTHORIZED, "{}", forged.body);
    forged.assert_problem("a forged webhook");
    shop.stop().expect("the shop stops");
    let _ = std::fs::remove_dir_all(&keys);
}

/// A fresh scratch directory.
fn tempfile_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("commerce-e2e-{name}-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// The product's `rating` once it reads `expected`.
async fn wait_rating(api: &Api, product: &str, expected: Value) -> std::time::Duration {
    let (_, took) = wait_for("the product's rating", ORDER_TIMEOUT, || async {
        let product = api.get(&format!("/api/products/{product}"), None).await?.expect(StatusCode::OK)?;
        Ok((product["rating"] == expected).then_some(()))
    })
    .await
    .unwrap_or_else(|error| panic!("{error}"));
    took
}

#[tokio::test]
async fn a_buyer_reviews_a_delivered_product_the_rating_shows_on_it_and_moderation_removes_abuse() {
    let (shop, api, admin) = setup().await;
    let category = api.create_category(&admin, "Reviewed").await.expect("category");
    // A word of this run only, and a misspelling of it.
    let word = format!("quietude{}", &uuid::Uuid::new_v4().simple().to_string()[..6]);
    let typo = word.replacen("quietude", "quietdue", 1);
    let product =
        api.create_product(&admin, &category, &format!("Kettle {word}"), 3500, 5).await.expect("product");
    let buyer = api.register_customer("reviewer").await.expect("registers");
    let stranger = api.register_customer("stranger").await.expect("registers");
    let review_path = format!("/api/products/{product}/reviews");
    let review = json!({"rating": 4, "title": "Boils fast", "body": "Quiet, too."});

    let order_id = api.order(&buyer, &[(&product, 1)], CARD_OK).await.expect("accepted");
    api.wait_order(&buyer, &order_id, "confirmed").await.expect("confirmed");
    // Bought but not delivered: no review yet.
    let early = api.post(&review_path, Some(&buyer.access_token), &review).await.expect("answers");
    early.assert_problem("a review before delivery");
    assert_eq!(early.status, StatusCode::FORBIDDEN, "{}", early.body);

    deliver(&api, &buyer, &order_id).await;
    api.wait_order(&buyer, &order_id, "delivered").await.expect("delivered");

    // The delivery reaches the reviews service through the Orders topic.
    let (written, _) = wait_for("the review to be accepted", ORDER_TIMEOUT, || async {
        let answer = api.post(&review_path, Some(&buyer.access_token), &review).await?;
        Ok((answer.status == StatusCode::CREATED).then_some(answer.body))
    })
    .await
    .expect("a delivered buyer reviews");
    let review_id = string(&written, "id").expect("review id");
    assert_eq!((written["rating"].clone(), written["verified_purchase"].clone()), (json!(4), json!(true)));
    assert!(written.get("user_id").is_none(), "shoppers do not see who wrote it: {written}");
    let took = wait_rating(&api, &product, json!({"review_count": 1, "average": 4.0})).await;
    eprintln!("the review reached the product in {:.2} s", took.as_secs_f64());

    // Search finds it despite the typo, with its rating, and counts it in
    // its category, its price band, 4 stars and in stock.
    let (found, took) =
        wait_for("the product in the search index with its rating", ORDER_TIMEOUT, || async {
            let found =
                api.get(&format!("/api/search?q={typo}&min_rating=4"), None).await?.expect(StatusCode::OK)?;
            Ok((found["total_size"] == json!(1)).then_some(found))
        })
        .await
        .expect("search finds the reviewed product");
    eprintln!("the review reached the search index in {:.2} s", took.as_secs_f64());
    assert_eq!(found["corrected_query"], json!(word), "{found}");
    let hit = &found["hits"][0];
    assert_eq!(hit["product_id"], json!(product), "{found}");
    assert_eq!(hit["name_highlight"], json!(format!("Kettle <mark>{word}</mark>")), "{found}");
    assert_eq!(
        (hit["in_stock"].clone(), hit["rating"].clone()),
        (json!(true), json!({"review_count": 1, "average": 4.0}))
    );
    let facets = &found["facets"];
    assert_eq!(facets["categories"], json!([{"value": category, "count": 1}]), "{found}");
    assert_eq!(facets["price_bands"], json!([{"value": "2500-5000", "count": 1}]), "{found}");
    assert_eq!(facets["ratings"][3], json!({"value": "4", "count": 1}), "{found}");
    assert_eq!(facets["in_stock"], json!([{"value": "true", "count": 1}]), "{found}");
    let suggested = api
        .get(&format!("/api/search/suggest?q=kettle%20{}", &word[..10]), None)
        .await
        .expect("suggests")
        .expect(StatusCode::OK)
        .expect("200");
    assert_eq!(suggested["suggestions"][0]["product_id"], json!(product), "{suggested}");

    let export = api
        .get("/api/users/me/export", Some(&buyer.access_token))
        .await
        .expect("exports")
        .expect(StatusCode::OK)
        .expect("200");
    assert_eq!(export["reviews"][0]["id"], json!(review_id), "the export has the review: {export}");
    let twice = api.post(&review_path, Some(&buyer.access_token), &review).await.expect("answers");
    assert_eq!(twice.status, StatusCode::CONFLICT, "{}", twice.body);
    assert!(twice.body["detail"].as_str().unwrap_or_default().contains(&review_id), "{}", twice.body);
    let refused = api.post(&review_path, Some(&stranger.access_token), &review).await.expect("answers");
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "no purchase, no review: {}", refused.body);

    // The author edits the stars; the product follows.
    let edited = api
        .call(
            Method::PATCH,
            &format!("/api/reviews/{review_id}"),
            Some(&buyer.access_token),
            Some(&json!({"rating": 2})),
        )
        .await
        .expect("answers")
        .expect(StatusCode::OK)
        .expect("200");
    assert_eq!((edited["rating"].clone(), edited["title"].clone()), (json!(2), json!("Boils fast")));
    wait_rating(&api, &product, json!({"review_count": 1, "average": 2.0})).await;

    // Another shopper finds it helpful, then reports it.
    let helpful = format!("/api/reviews/{review_id}/helpful");
    for _ in 0..2 {
        let voted = api.post(&helpful, Some(&stranger.access_token), &json!({})).await.expect("votes");
        assert_eq!(
            voted.expect(StatusCode::OK).expect("200")["helpful_count"],
            json!(1),
            "one vote per user"
        );
    }
    let reported = api
        .post(
            &format!("/api/reviews/{review_id}/reports"),
            Some(&stranger.access_token),
            &json!({"reason": "abusive"}),
        )
        .await
        .expect("reports")
        .expect(StatusCode::OK)
        .expect("200");
    assert_eq!(reported["status"], json!("flagged"));
    let list = api.get(&format!("{review_path}?sort=most_helpful&rating=2"), None).await.expect("lists");
    let list = list.expect(StatusCode::OK).expect("200");
    assert_eq!(list["reviews"][0]["id"], json!(review_id), "a flagged review stays visible: {list}");
    assert_eq!(list["summary"]["count_by_stars"], json!([0, 1, 0, 0, 0]), "{list}");

    // The admin's queue holds it; removing it takes it out of the rating.
    let customer_queue =
        api.get("/api/admin/reviews/queue", Some(&buyer.access_token)).await.expect("answers");
    assert_eq!(customer_queue.status, StatusCode::FORBIDDEN);
    let queue = api
        .get("/api/admin/reviews/queue?page_size=100", Some(&admin.access_token))
        .await
        .expect("lists")
        .expect(StatusCode::OK)
        .expect("200");
    let entry = queue["entries"]
        .as_array()
        .and_then(|entries| entries.iter().find(|entry| entry["review"]["id"] == json!(review_id)))
        .unwrap_or_else(|| panic!("the reported review is queued: {queue}"));
    assert_eq!(entry["author_id"], json!(buyer.user_id));
    assert_eq!(entry["reports"][0]["reason"], json!("abusive"));
    let removed = api
        .post(
            &format!("/api/admin/reviews/{review_id}/moderation"),
            Some(&admin.access_token),
            &json!({"decision": "remove", "note": "insults"}),
        )
        .await
        .expect("moderates")
        .expect(StatusCode::OK)
        .expect("200");
    assert_eq!(removed["status"], json!("removed"));
    wait_rating(&api, &product, json!({"review_count": 0, "average": null})).await;
    let list = api.get(&review_path, None).await.expect("lists").expect(StatusCode::OK).expect("200");
    assert_eq!(list["reviews"], json!([]), "{list}");
    let late_edit = api
        .call(
            Method::PATCH,
            &format!("/api/reviews/{review_id}"),
            Some(&buyer.access_token),
            Some(&json!({"rating": 5})),
        )
        .await
        .expect("answers");
    assert_eq!(late_edit.status, StatusCode::CONFLICT, "{}", late_edit.body);

    // The trail has every review event, the moderator named as the actor.
    let audit = shop.databases.pool(Service::Audit).await.expect("the audit database");
    let expected = ["ReviewCreated", "ReviewUpdated", "ReviewFlagged", "ReviewModerated"]
        .map(|name| format!("commerce.events.v1.{name}"));
    let (trail, _) = wait_for("the review events in the audit trail", ORDER_TIMEOUT, || async {
        let trail: Vec<(String, String)> = sqlx::query_as(
            "SELECT event_type, actor_id FROM audit_entries \
             WHERE subject = $1 AND event_type LIKE 'commerce.events.v1.Review%' ORDER BY sequence",
        )
        .bind(&product)
        .fetch_all(&audit)
        .await?;
        Ok((trail.len() == expected.len()).then_some(trail))
    })
    .await
    .expect("the trail records the reviews");
    assert_eq!(trail.iter().map(|(kind, _)| kind.clone()).collect::<Vec<_>>(), expected);
    assert_eq!(trail[3].1, admin.user_id, "{trail:?}");
    assert_invariants(&shop.databases).await;
}

#[tokio::test]
async fn another_buyers_purchase_shows_in_also_bought_and_a_viewer_gets_it_recommended() {
    let (_shop, api, admin) = setup().await;
    let category = api.create_category(&admin, "Recommended").await.expect("category");
    let kettle = api.create_product(&admin, &category, "Kettle", 3000, 10).await.expect("product");
    let teapot = api.create_product(&admin, &category, "Teapot", 2000, 10).await.expect("product");
    let new_one = api.create_product(&admin, &category, "New cup", 900, 10).await.expect("product");
    let first = api.register_customer("first-buyer").await.expect("registers");
    let second = api.register_customer("second-buyer").await.expect("registers");

    // The first buyer takes a kettle and a teapot together.
    let order = api.order(&first, &[(&kettle, 1), (&teapot, 1)], CARD_OK).await.expect("accepted");
    api.wait_order(&first, &order, "confirmed").await.expect("confirmed");
    let (also, took) = wait_for("the teapot among the kettle's also-bought", ORDER_TIMEOUT, || async {
        let found = api
            .get(&format!("/api/products/{kettle}/recommendations"), None)
            .await?
            .expect(StatusCode::OK)?;
        Ok((found["also_bought"][0]["product_id"] == json!(teapot)).then_some(found))
    })
    .await
    .expect("also bought");
    eprintln!("the confirmed order reached the recommendations in {:.2} s", took.as_secs_f64());
    assert_eq!(also["also_bought"][0]["buyers"], json!(1), "{also}");
    // Nobody bought the new cup: its category's best sellers stand in.
    let fallback = api
        .get(&format!("/api/products/{new_one}/recommendations"), None)
        .await
        .expect("answers")
        .expect(StatusCode::OK)
        .expect("200");
    assert_eq!(fallback["also_bought"], json!([]), "{fallback}");
    let popular: Vec<&str> = fallback["popular_in_category"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert_eq!(popular, ["Kettle", "Teapot"], "{fallback}");

    // The second buyer views the kettle signed in, then buys one: the teapot
    // is recommended to them, the kettle is not (they have it).
    api.get(&format!("/api/products/{kettle}"), Some(&second.access_token))
        .await
        .expect("reads")
        .expect(StatusCode::OK)
        .expect("200");
    let (viewed, _) = wait_for("the kettle in the second buyer's recently viewed", ORDER_TIMEOUT, || async {
        let mine =
            api.get("/api/recommendations/me", Some(&second.access_token)).await?.expect(StatusCode::OK)?;
        Ok((mine["recently_viewed"][0]["product_id"] == json!(kettle)).then_some(mine))
    })
    .await
    .expect("recently viewed");
    assert!(viewed["recently_viewed"][0]["viewed_at"].is_string(), "{viewed}");
    let export = api
        .get("/api/users/me/export", Some(&second.access_token))
        .await
        .expect("exports")
        .expect(StatusCode::OK)
        .expect("200");
    assert_eq!(export["viewed_products"][0]["product_id"], json!(kettle), "{export}");
    let order = api.order(&second, &[(&kettle, 1)], CARD_OK).await.expect("accepted");
    api.wait_order(&second, &order, "confirmed").await.expect("confirmed");
    let (mine, _) = wait_for("the teapot recommended, not the kettle", ORDER_TIMEOUT, || async {
        let mine =
            api.get("/api/recommendations/me", Some(&second.access_token)).await?.expect(StatusCode::OK)?;
        let ids: Vec<Value> =
            mine["recommended"].as_array().into_iter().flatten().map(|p| p["product_id"].clone()).collect();
        Ok((ids.first() == Some(&json!(teapot)) && !ids.contains(&json!(kettle))).then_some(mine))
    })
    .await
    .expect("recommended");
    assert_eq!(mine["recommended"][0]["buyers"], json!(1), "{mine}");
    let anonymous = api.get("/api/recommendations/me", None).await.expect("answers");
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn an_order_beyond_the_stock_is_rejected_and_leaves_the_stock_unchanged() {
    let (shop, api, admin) = setup().await;
    let category = api.create_category(&admin, "Scarce").await.expect("category");
    let product = api.create_product(&admin, &category, "Last kettle", 3000, 1).await.expect("product");
    let customer = api.register_customer("greedy").await.expect("registers");

    let order_id = api.order(&customer, &[(&product, 2)], CARD_OK).await.expect("accepted for processing");
    api.wait_order(&customer, &order_id, "rejected").await.expect("rejected");

    wait_stock(shop, &product, (1, 0, 0)).await;
    wait_notifications(&api, &customer, &["order_rejected"]).await;
    assert_invariants(&shop.databases).await;
}

#[tokio::test]
async fn a_declined_payment_fails_the_order_and_releases_its_stock() {
    let (shop, api, admin) = setup().await;
    let category = api.create_category(&admin, "Declined").await.expect("category");
    let product = api.create_product(&admin, &category, "Teapot", 1800, 5).await.expect("product");
    let customer = api.register_customer("declined").await.expect("registers");

    let order_id = api.order(&customer, &[(&product, 3)], CARD_DECLINED).await.expect("accepted");
    let failed = api.wait_order(&customer, &order_id, "failed").await.expect("failed");
    assert!(!failed["failure_reason"].as_str().unwrap_or_default().is_empty(), "{failed}");

    wait_stock(shop, &product, (5, 0, 0)).await;
    let payment = shop.databases.pool(Service::Payment).await.expect("payment db");
    let status: String = sqlx::query_scalar("SELECT status FROM payments WHERE order_id = $1")
        .bind(&order_id)
        .fetch_one(&payment)
        .await
        .expect("a payment row");
    assert_eq!(status, "DECLINED");
    wait_notifications(&api, &customer, &["order_failed"]).await;
    assert_invariants(&shop.databases).await;
}

#[tokio::test]
async fn an_unpaid_order_fails_when_its_reservation_expires_and_the_stock_returns() {
    // A shop of its own whose reservations last 3 s; the provider is never
    // available for this card, so only the expiry can end the order.
    let shop =
        Shop::start(ShopOptions::short_reservations("3s", "250ms")).await.expect("the short-TTL shop starts");
    eprintln!("short-TTL shop cold start: {:.1} s", shop.cold_start.as_secs_f64());
    let api = Api::new(&shop);
    let admin = api.admin().await.expect("admin");
    let category = api.create_category(&admin, "Expiring").await.expect("category");
    let product = api.create_product(&admin, &category, "Hourglass", 1200, 4).await.expect("product");
    let customer = api.register_customer("slowpay").await.expect("registers");

    let order_id = api.order(&customer, &[(&product, 3)], CARD_UNAVAILABLE).await.expect("accepted");
    // For this card the mock takes the money but every answer is lost: the
    // order expires too, and the capture nobody saw must be reversed.
    let lost_order_id = api.order(&customer, &[(&product, 1)], CARD_LOST_ANSWER).await.expect("accepted");
    let failed = api.wait_order(&customer, &order_id, "failed").await.expect("failed on expiry");
    assert!(
        failed["failure_reason"].as_str().unwrap_or_default().to_ascii_uppercase().contains("EXPIRED"),
        "the reason names the expiry: {failed}"
    );
    wait_stock(&shop, &product, (4, 0, 0)).await;

    let inventory = shop.databases.pool(Service::Inventory).await.expect("inventory db");
    let (status, reason): (String, Option<String>) =
        sqlx::query_as("SELECT status, release_reason FROM reservations WHERE order_id = $1")
            .bind(&order_id)
            .fetch_one(&inventory)
            .await
            .expect("the reservation");
    assert_eq!((status.as_str(), reason.as_deref()), ("RELEASED", Some("EXPIRED")));
    // The payment is never charged once the order failed.
    let payment = shop.databases.pool(Service::Payment).await.expect("payment db");
    let (status, _) = wait_for("the payment to be cancelled", ORDER_TIMEOUT, || async {
        let status: String = sqlx::query_scalar("SELECT status FROM payments WHERE order_id = $1")
            .bind(&order_id)
            .fetch_one(&payment)
            .await?;
        Ok((status != "PENDING").then_some(status))
    })
    .await
    .expect("the payment leaves PENDING");
    assert_eq!(status, "CANCELLED");

    api.wait_order(&customer, &lost_order_id, "failed").await.expect("the lost-answer order fails on expiry");
    let ((status, void_outcome), _) =
        wait_for("the lost-answer payment to be voided", ORDER_TIMEOUT, || async {
            let row: (String, String, bool) =
                sqlx::query_as("SELECT status, void_outcome, void_pending FROM payments WHERE order_id = $1")
                    .bind(&lost_order_id)
                    .fetch_one(&payment)
                    .await?;
            Ok((row.0 != "PENDING" && !row.2).then_some((row.0, row.1)))
        })
        .await
        .expect("the payment is cancelled and voided");
    assert_eq!(
        (status.as_str(), void_outcome.as_str()),
        ("CANCELLED", "reversed"),
        "the provider's unseen capture is reversed"
    );

    assert_invariants(&shop.databases).await;
    shop.stop().expect("the short-TTL shop stops");
}

#[tokio::test]
async fn cancelling_a_paid_order_refunds_it_restores_the_stock_and_halts_the_shipment() {
    let (shop, api, admin) = setup().await;
    let category = api.create_category(&admin, "Regrets").await.expect("category");
    let product = api.create_product(&admin, &category, "Rocking chair", 15000, 3).await.expect("product");
    let customer = api.register_customer("regretful").await.expect("registers");

    let order_id = api.order(&customer, &[(&product, 2)], CARD_OK).await.expect("accepted");
    api.wait_order(&customer, &order_id, "confirmed").await.expect("confirmed");
    wait_stock(shop, &product, (1, 0, 2)).await;
    shipment_of(&api, &customer, &order_id).await;

    let cancelled = api.cancel_order(&customer, &order_id, "changed my mind").await.expect("cancelled");
    assert_eq!(cancelled["status"], json!("cancelled"), "{cancelled}");

    // Compensations: refund, restock, halt.
    wait_stock(shop, &product, (3, 0, 0)).await;
    let payment = shop.databases.pool(Service::Payment).await.expect("payment db");
    wait_for("the refund", ORDER_TIMEOUT, || async {
        let row: (String, i64, i64, i64) = sqlx::query_as(
            "SELECT p.status, p.amount_units, p.refunded_units, \
                    (SELECT count(*) FROM refunds r WHERE r.payment_id = p.id AND r.status = 'COMPLETED') \
             FROM payments p WHERE p.order_id = $1",
        )
        .bind(&order_id)
        .fetch_one(&payment)
        .await?;
        Ok((row.0 == "REFUNDED").then_some(row))
    })
    .await
    .map(|((_, amount, refunded, refunds), _)| {
        assert_eq!((amount, refunded, refunds), (30000, 30000, 1), "the whole amount, once");
    })
    .expect("refunded");
    let order_db = shop.databases.pool(Service::Order).await.expect("order db");
    wait_for("the order to show the refund", ORDER_TIMEOUT, || async {
        let refunded: bool = sqlx::query_scalar("SELECT refunded FROM orders WHERE id = $1::uuid")
            .bind(&order_id)
            .fetch_one(&order_db)
            .await?;
        Ok(refunded.then_some(()))
    })
    .await
    .expect("the order says refunded");
    let (halted, _) = wait_for("the shipment to halt", ORDER_TIMEOUT, || async {
        let shipment = shipment_of(&api, &customer, &order_id).await;
        Ok((shipment["status"] == json!("halted")).then_some(shipment))
    })
    .await
    .expect("halted");
    assert_eq!(halted["status"], json!("halted"));
    api.wait_order(&customer, &order_id, "cancelled").await.expect("stays cancelled");
    wait_notifications(&api, &customer, &["order_cancelled", "payment_refunded"]).await;
    assert_invariants(&shop.databases).await;
}

#[tokio::test]
async fn the_same_idempotency_key_twice_places_one_order() {
    let (shop, api, admin) = setup().await;
    let category = api.create_category(&admin, "Twice").await.expect("category");
    let product = api.create_product(&admin, &category, "Echo speaker", 5000, 10).await.expect("product");
    let customer = api.register_customer("double-clicker").await.expect("registers");
    let key = uuid::Uuid::new_v4().to_string();

    let first = api.place_order(&customer, &key, &[(&product, 1)], CARD_OK).await.expect("first");
    let first = first.expect(StatusCode::CREATED).expect("201");
    let second = api.place_order(&customer, &key, &[(&product, 1)], CARD_OK).await.expect("second");
    assert!(
        second.status.is_success(),
        "a repeat is answered like the first: {} {}",
        second.status,
        second.body
    );
    assert_eq!(second.body["id"], first["id"], "the same order");
    // The same key with other lines is a conflict, not a second order.
    let different = api.place_order(&customer, &key, &[(&product, 2)], CARD_OK).await.expect("third");
    different.assert_problem("the same key with other lines");

    let order_id = string(&first, "id").expect("id");
    api.wait_order(&customer, &order_id, "confirmed").await.expect("confirmed");
    let orders = api
        .get("/api/orders", Some(&customer.access_token))
        .await
        .expect("lists")
        .expect(StatusCode::OK)
        .expect("200");
    assert_eq!(orders["orders"].as_array().map(Vec::len), Some(1), "{orders}");
    wait_stock(shop, &product, (9, 0, 1)).await;
    let order_db = shop.databases.pool(Service::Order).await.expect("order db");
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM orders WHERE user_id = $1")
        .bind(&customer.user_id)
        .fetch_one(&order_db)
        .await
        .expect("counts");
    assert_eq!(count, 1);
    assert_invariants(&shop.databases).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_buyers_of_the_last_ten_units_get_ten_confirmations_and_forty_rejections() {
    const BUYERS: usize = 50;
    const UNITS: i64 = 10;
    let (shop, api, admin) = setup().await;
    let category = api.create_category(&admin, "Rush").await.expect("category");
    let product =
        api.create_product(&admin, &category, "Limited sneaker", 20000, UNITS).await.expect("product");

    // Accounts first (password hashing is slow by design), then the rush.
    let mut buyers = Vec::new();
    for chunk in (0..BUYERS).collect::<Vec<_>>().chunks(10) {
        let registered = futures::future::join_all(chunk.iter().map(|i| {
            let api = api.clone();
            async move { api.register_customer(&format!("rush{i}")).await }
        }))
        .await;
        buyers.extend(registered.into_iter().map(|buyer| buyer.expect("registers")));
    }
    let placed = futures::future::join_all(buyers.iter().map(|buyer| {
        let api = api.clone();
        let product = product.clone();
        async move { api.order(buyer, &[(&product, 1)], CARD_OK).await }
    }))
    .await;
    let order_ids: Vec<String> = placed.into_iter().map(|id| id.expect("every order is accepted")).collect();

    let mut outcomes = BTreeMap::new();
    for (buyer, id) in buyers.iter().zip(&order_ids) {
        let order = api
            .wait_order_until(buyer, id, "a settled order", |order| {
                !["pending", "reserved"].contains(&order["status"].as_str().unwrap_or_default())
            })
            .await
            .expect("settles");
        *outcomes.entry(order["status"].as_str().unwrap_or_default().to_owned()).or_insert(0) += 1;
    }
    assert_eq!(
        outcomes,
        BTreeMap::from([("confirmed".to_owned(), 10), ("rejected".to_owned(), 40)]),
        "exactly the stock is sold"
    );
    wait_stock(shop, &product, (0, 0, UNITS)).await;
    assert_invariants(&shop.databases).await;
}

#[tokio::test]
async fn missing_expired_tampered_and_wrong_algorithm_tokens_are_refused_with_401() {
    let (shop, api, _admin) = setup().await;
    let customer = api.register_customer("token-tester").await.expect("registers");
    // The genuine token works.
    api.get("/api/orders", Some(&customer.access_token))
        .await
        .expect("lists")
        .expect(StatusCode::OK)
        .expect("200");

    let expired =
        tokens::expired_token(&shop.databases, &customer.user_id, &customer.email).await.expect("forges");
    let cases = [
        ("no token", None),
        ("an expired token", Some(expired)),
        ("a tampered token", Some(tokens::tampered_token(&customer.access_token).expect("tampers"))),
        ("alg none", Some(tokens::wrong_algorithm_token(&customer.access_token, "none").expect("forges"))),
        ("alg HS256", Some(tokens::wrong_algorithm_token(&customer.access_token, "HS256").expect("forges"))),
        ("garbage", Some("not-a-jwt".to_owned())),
    ];
    for (what, token) in cases {
        for path in ["/api/orders", "/api/cart", "/api/admin/orders"] {
            let answer = api.get(path, token.as_deref()).await.expect("answers");
            assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{what} on {path}: {}", answer.body);
            answer.assert_problem(what);
        }
    }
    assert_invariants(&shop.databases).await;
}

#[tokio::test]
async fn a_customer_on_an_admin_route_is_forbidden() {
    let (shop, api, _admin) = setup().await;
    let customer = api.register_customer("curious").await.expect("registers");
    let token = Some(customer.access_token.as_str());
    let body = json!({"name": "Mine", "slug": format!("mine-{}", uuid::Uuid::new_v4().simple())});
    for answer in [
        api.get("/api/admin/orders", token).await.expect("answers"),
        api.post("/api/admin/categories", token, &body).await.expect("answers"),
        api.post(
            &format!("/api/admin/inventory/{}/restock", uuid::Uuid::new_v4()),
            token,
            &json!({"quantity": 5}),
        )
        .await
        .expect("answers"),
    ] {
        assert_eq!(answer.status, StatusCode::FORBIDDEN, "{}", answer.body);
        answer.assert_problem("a customer on an admin route");
    }
    assert_invariants(&shop.databases).await;
}

#[tokio::test]
async fn an_admin_finds_users_and_gives_one_a_role_that_reaches_their_next_sign_in_and_the_audit_trail() {
    let (shop, api, admin) = setup().await;
    let admin_token = Some(admin.access_token.as_str());
    // A tag in both names, so that only this test's users match the search.
    let tag = format!("roles{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let older = api.register_customer(&format!("{tag}-older")).await.expect("registers");
    let newer = api.register_customer(&format!("{tag}-newer")).await.expect("registers");

    let found = api
        .get(&format!("/api/admin/users?q={}&page_size=1", tag.to_uppercase()), admin_token)
        .await
        .expect("answers")
        .expect(StatusCode::OK)
        .expect("lists");
    assert_eq!(found["total_size"], json!(2), "{found}");
    assert_eq!(found["users"][0]["id"], json!(newer.user_id), "newest first: {found}");
    assert_eq!(found["users"][0]["roles"], json!(["customer"]));
    assert_eq!(found["users"][0]["active"], json!(true));
    let token = found["next_page_token"].as_str().expect("a next page");
    let rest = api
        .get(&format!("/api/admin/users?q={tag}&page_size=1&page_token={token}"), admin_token)
        .await
        .expect("answers")
        .expect(StatusCode::OK)
        .expect("lists");
    assert_eq!(rest["users"][0]["id"], json!(older.user_id), "{rest}");
    assert_eq!(rest["next_page_token"], json!(""));

    // A customer may neither list users nor act as a courier.
    let customer_token = Some(older.access_token.as_str());
    let listed = api.get("/api/admin/users", customer_token).await.expect("answers");
    assert_eq!(listed.status, StatusCode::FORBIDDEN, "{}", listed.body);
    let courier_move = json!({"status": "assigned"});
    let unknown_shipment = format!("/api/shipments/{}/status", uuid::Uuid::new_v4());
    let moved = api.post(&unknown_shipment, customer_token, &courier_move).await.expect("answers");
    assert_eq!(moved.status, StatusCode::FORBIDDEN, "{}", moved.body);

    let path = format!("/api/admin/users/{}/role", older.user_id);
    let changed = api
        .call(Method::PUT, &path, admin_token, Some(&json!({"role": "courier"})))
        .await
        .expect("answers")
        .expect(StatusCode::OK)
        .expect("changes the role");
    assert_eq!(changed["roles"], json!(["courier"]), "{changed}");
    let couriers = api
        .get(&format!("/api/admin/users?q={tag}&role=courier"), admin_token)
        .await
        .expect("answers")
        .expect(StatusCode::OK)
        .expect("lists");
    assert_eq!(couriers["total_size"], json!(1), "{couriers}");
    // The next sign-in's token carries the role: the courier route now
    // looks for the shipment instead of refusing the caller.
    let courier = api.login(&older.email, "correct horse battery").await.expect("signs in");
    let moved =
        api.post(&unknown_shipment, Some(&courier.access_token), &courier_move).await.expect("answers");
    assert_eq!(moved.status, StatusCode::NOT_FOUND, "{}", moved.body);

    for (path, body, status) in [
        (path.as_str(), json!({"role": "owner"}), StatusCode::BAD_REQUEST),
        (path.as_str(), json!({"role": "admin", "extra": 1}), StatusCode::BAD_REQUEST),
        (
            &format!("/api/admin/users/{}/role", uuid::Uuid::new_v4()),
            json!({"role": "admin"}),
            StatusCode::NOT_FOUND,
        ),
    ] {
        let answer = api.call(Method::PUT, path, admin_token, Some(&body)).await.expect("answers");
        assert_eq!(answer.status, status, "{body}: {}", answer.body);
        answer.assert_problem("a refused role change");
    }
    let long =
        api.get(&format!("/api/admin/users?q={}", "x".repeat(101)), admin_token).await.expect("answers");
    assert_eq!(long.status, StatusCode::BAD_REQUEST, "{}", long.body);
    long.assert_problem("a search text over 100 characters");

    // The role change is in the audit trail with the administrator who made it.
    let trail =
        format!("/api/admin/audit?event_type=commerce.events.v1.UserRoleChanged&subject={}", older.user_id);
    let (entries, _) = wait_for("the role change in the audit trail", ORDER_TIMEOUT, || async {
        let page = api.get(&trail, admin_token).await?.expect(StatusCode::OK)?;
        Ok(page["entries"].as_array().filter(|entries| !entries.is_empty()).cloned())
    })
    .await
    .expect("the audit trail records the role change");
    assert_eq!(entries.len(), 1, "{entries:?}");
    let entry = &entries[0];
    assert_eq!(entry["actor_id"], json!(admin.user_id), "{entry}");
    assert_eq!(entry["source"], json!("/commerce/auth"), "{entry}");
    assert_eq!(entry["payload"]["role"], json!("USER_ROLE_COURIER"), "{entry}");
    assert_eq!(entry["payload"]["previous_role"], json!("USER_ROLE_CUSTOMER"), "{entry}");
    let by_admin = api
        .get(&format!("/api/admin/audit?actor_id={}&page_size=500", admin.user_id), admin_token)
        .await
        .expect("answers")
        .expect(StatusCode::OK)
        .expect("lists");
    assert!(
        by_admin["entries"]
            .as_array()
            .is_some_and(|all| all.iter().any(|e| e["sequence"] == entry["sequence"])),
        "{by_admin}"
    );
    // So is the administrator's request that made it: who, what, from which request.
    let actions = api
        .get(
            &format!(
                "/api/admin/audit?event_type=commerce.audit.v1.AdminAction&subject={path}&page_size=500"
            ),
            admin_token,
        )
        .await
        .expect("answers")
        .expect(StatusCode::OK)
        .expect("lists");
    let action = actions["entries"]
        .as_array()
        .and_then(|all| all.iter().find(|e| e["payload"]["status"] == json!(200)))
        .unwrap_or_else(|| panic!("the role change request is recorded: {actions}"));
    assert_eq!(action["actor_id"], json!(admin.user_id), "{action}");
    assert_eq!(action["source"], json!("/commerce/gateway"), "{action}");
    assert_eq!(action["payload"]["method"], json!("PUT"), "{action}");
    assert_eq!(action["payload"]["route"], json!("/api/admin/users/{id}/role"), "{action}");
    assert!(action["payload"]["request_id"].as_str().is_some_and(|id| !id.is_empty()), "{action}");
    let refused = actions["entries"].as_array().map_or(0, |all| all.len());
    assert_eq!(refused, 1, "refused changes (4xx) are not admin actions: {actions}");
    let listed = api.get("/api/admin/audit", customer_token).await.expect("answers");
    assert_eq!(listed.status, StatusCode::FORBIDDEN, "{}", listed.body);
    let bad_since = api.get("/api/admin/audit?since=yesterday", admin_token).await.expect("answers");
    assert_eq!(bad_since.status, StatusCode::BAD_REQUEST, "{}", bad_since.body);
    bad_since.assert_problem("a since that is no date-time");

    // The chain verifies; a row changed behind the service's back is the
    // first broken link; put back, the chain verifies again.
    let verify = || async {
        api.get("/api/admin/audit/verify", admin_token)
            .await
            .expect("answers")
            .expect(StatusCode::OK)
            .expect("checks")
    };
    let intact = verify().await;
    assert_eq!(intact["intact"], json!(true), "{intact}");
    assert!(intact["entries_checked"].as_i64().is_some_and(|n| n >= 1), "{intact}");
    let sequence = entry["sequence"].as_i64().expect("a sequence");
    let audit_db = shop.databases.pool(Service::Audit).await.expect("the audit database");
    let tamper = |actor: &str| {
        let (pool, actor) = (audit_db.clone(), actor.to_owned());
        async move {
            let mut tx = pool.begin().await.expect("a transaction");
            sqlx::query("ALTER TABLE audit_entries DISABLE TRIGGER audit_entries_append_only")
                .execute(&mut *tx)
                .await
                .expect("the guard is lifted (as a superuser could)");
            sqlx::query("UPDATE audit_entries SET actor_id = $1 WHERE sequence = $2")
                .bind(actor)
                .bind(sequence)
                .execute(&mut *tx)
                .await
                .expect("the row changes");
            sqlx::query("ALTER TABLE audit_entries ENABLE TRIGGER audit_entries_append_only")
                .execute(&mut *tx)
                .await
                .expect("the guard is back");
            tx.commit().await.expect("commits");
        }
    };
    tamper("someone-else").await;
    let broken = verify().await;
    assert_eq!(broken["intact"], json!(false), "{broken}");
    assert_eq!(broken["first_broken_sequence"], json!(sequence), "{broken}");
    tamper(&admin.user_id).await;
    let restored = verify().await;
    assert_eq!(restored["intact"], json!(true), "{restored}");
    audit_db.close().await;
    assert_invariants(&shop.databases).await;
}

#[tokio::test]
async fn malformed_negative_unknown_and_oversized_requests_get_problem_json_4xx_never_5xx() {
    let (shop, api, admin) = setup().await;
    let category = api.create_category(&admin, "Edge").await.expect("category");
    let product = api.create_product(&admin, &category, "Edge case", 100, 5).await.expect("product");
    let customer = api.register_customer("fuzzer").await.expect("registers");
    let token = customer.access_token.as_str();
    let unpooled = reqwest::Client::builder().pool_max_idle_per_host(0).no_proxy().build().expect("client");
    let order = |lines: Value| json!({"lines": lines, "shipping_address": support::api::address(), "payment_method_token": CARD_OK});
    let post_order = |body: reqwest::Body| {
        api.http
            .post(format!("{}/api/orders", api.base))
            .bearer_auth(token)
            .header("Idempotency-Key", uuid::Uuid::new_v4().to_string())
            .header("content-type", "application/json")
            .body(body)
    };

    let mut answers =
        vec![
        ("malformed JSON", api.send(post_order("{\"lines\": [".into())).await.expect("answers")),
        ("not an object", api.send(post_order("[1, 2]".into())).await.expect("answers")),
        (
            "a negative quantity",
            api.send(post_order(order(json!([{"product_id": product, "quantity": -3}])).to_string().into()))
                .await
                .expect("answers"),
        ),
        (
            "a zero quantity",
            api.send(post_order(order(json!([{"product_id": product, "quantity": 0}])).to_string().into()))
                .await
                .expect("answers"),
        ),
        (
            "an unknown product",
            api.send(post_order(
                order(json!([{"product_id": uuid::Uuid::new_v4(), "quantity": 1}])).to_string().into(),
            ))
            .await
            .expect("answers"),
        ),
        (
            "a product id that is no UUID",
            api.send(post_order(order(json!([{"product_id": "lamp", "quantity": 1}])).to_string().into()))
                .await
                .expect("answers"),
        ),
        ("no lines", api.send(post_order(order(json!([])).to_string().into())).await.expect("answers")),
        (
            "an oversized body",
            // On a connection of its own: the gateway drains the body,
            // answers 413 with `Connection: close` and closes the connection,
            // which a pooled client must not reuse.
            api.send(
                unpooled
                    .post(format!("{}/api/orders", api.base))
                    .bearer_auth(token)
                    .header("Idempotency-Key", uuid::Uuid::new_v4().to_string())
                    .header("content-type", "application/json")
                    .body(
                        order(json!([{"product_id": product, "quantity": 1, "padding": "x".repeat(2 << 20)}]))
                            .to_string(),
                    ),
            )
            .await
            .expect("answers"),
        ),
        (
            "a negative cart quantity",
            api.call(
                Method::POST,
                "/api/cart/items",
                Some(token),
                Some(&json!({"product_id": product, "quantity": -1})),
            )
            .await
            .expect("answers"),
        ),
        (
            "an unknown product in the cart",
            api.call(
                Method::POST,
                "/api/cart/items",
                Some(token),
                Some(&json!({"product_id": uuid::Uuid::new_v4(), "quantity": 1})),
            )
            .await
            .expect("answers"),
        ),
        (
            "an unknown order",
            api.get(&format!("/api/orders/{}", uuid::Uuid::new_v4()), Some(token)).await.expect("answers"),
        ),
        (
            "an unknown product page",
            api.get(&format!("/api/products/{}", uuid::Uuid::new_v4()), None).await.expect("answers"),
        ),
        ("a page size of 0", api.get("/api/products?page_size=0", None).await.expect("answers")),
        (
            "an order without Idempotency-Key",
            api.post("/api/orders", Some(token), &order(json!([{"product_id": product, "quantity": 1}])))
                .await
                .expect("answers"),
        ),
    ];
    answers.push((
        "a wrong content type",
        api.send(
            api.http
                .post(format!("{}/api/cart/items", api.base))
                .bearer_auth(token)
                .header("content-type", "text/plain")
                .body(json!({"product_id": product, "quantity": 1}).to_string()),
        )
        .await
        .expect("answers"),
    ));
    for (what, answer) in &answers {
        answer.assert_problem(what);
    }
    let status = |what: &str| answers.iter().find(|(name, _)| *name == what).map(|(_, answer)| answer.status);
    assert_eq!(status("an oversized body"), Some(StatusCode::PAYLOAD_TOO_LARGE));
    assert_eq!(status("malformed JSON"), Some(StatusCode::BAD_REQUEST));
    assert_eq!(status("a negative quantity"), Some(StatusCode::BAD_REQUEST));
    assert_eq!(status("an unknown order"), Some(StatusCode::NOT_FOUND));

    // Nothing of it touched the stock.
    wait_stock(shop, &product, (5, 0, 0)).await;
    assert_invariants(&shop.databases).await;
}

/// The secrets a run handled, each at least this long: shorter pieces could
/// occur in a log line by chance.
const SHORTEST_SECRET: usize = 8;

#[tokio::test]
async fn no_password_token_or_key_of_a_whole_run_reaches_the_logs() {
    // A shop of its own, stopped before its log is read: every line of the
    // run is flushed and nothing of other tests' runs is in it.
    let shop = Shop::start(ShopOptions::default()).await.expect("the shop starts");
    let api = Api::new(&shop);
    let mut secrets: Vec<(String, String)> = vec![
        ("the admin's password".into(), shop::ADMIN_PASSWORD.into()),
        ("the courier's password".into(), shop::COURIER_PASSWORD.into()),
    ];
    let admin_url = std::env::var("COMMERCE_POSTGRES_ADMIN_URL").expect("source e2e/infra.env");
    let user_info =
        admin_url.split_once("://").and_then(|(_, rest)| rest.rsplit_once('@')).map(|(info, _)| info);
    if let Some((_, password)) = user_info.and_then(|info| info.split_once(':')) {
        secrets.push(("the Postgres password".into(), password.to_owned()));
    }

    // Sign-up, a wrong password, sign-in, refresh, reuse of the old refresh
    // token, sign-out.
    let email = format!("secretive-{}@e2e.commerce.test", uuid::Uuid::new_v4().simple());
    let password = format!("pw-{}", uuid::Uuid::new_v4().simple());
    let wrong = format!("wrong-{}", uuid::Uuid::new_v4().simple());
    secrets.push(("the customer's password".into(), password.clone()));
    secrets.push(("a mistyped password".into(), wrong.clone()));
    let registered = api
        .post("/api/auth/register", None, &json!({"email": email, "password": password, "display_name": "S"}))
        .await
        .expect("registers")
        .expect(StatusCode::CREATED)
        .expect("201");
    let refused = api
        .post("/api/auth/login", None, &json!({"email": email, "password": wrong}))
        .await
        .expect("answers");
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED, "{}", refused.body);
    let login = api
        .post("/api/auth/login", None, &json!({"email": email, "password": password}))
        .await
        .expect("logs in")
        .expect(StatusCode::OK)
        .expect("200");
    let refresh = string(&login["tokens"], "refresh_token").expect("refresh token");
    let renewed = api
        .post("/api/auth/refresh", None, &json!({"refresh_token": refresh}))
        .await
        .expect("refreshes")
        .expect(StatusCode::OK)
        .expect("200");
    let reused =
        api.post("/api/auth/refresh", None, &json!({"refresh_token": refresh})).await.expect("answers");
    assert!(reused.status.is_client_error(), "a spent refresh token was accepted: {}", reused.body);
    // Register and login answer a session (`tokens` inside); refresh
    // answers the token pair itself.
    for (what, pair) in
        [("registration", &registered["tokens"]), ("login", &login["tokens"]), ("refresh", &renewed)]
    {
        for kind in ["access_token", "refresh_token"] {
            secrets.push((format!("the {what}'s {kind}"), string(pair, kind).expect("token")));
        }
    }
    let customer = Session {
        user_id: string(&login["user"], "id").expect("user id"),
        email: email.clone(),
        access_token: string(&renewed, "access_token").expect("access token"),
    };

    // A purchase through the saga, with the admin's session.
    let admin = api.admin().await.expect("admin");
    secrets.push(("the admin's access token".into(), admin.access_token.clone()));
    let category = api.create_category(&admin, "Secrets").await.expect("category");
    let product = api.create_product(&admin, &category, "Safe", 5000, 3).await.expect("product");
    let order_id = api.order(&customer, &[(&product, 1)], CARD_OK).await.expect("accepted");
    api.wait_order(&customer, &order_id, "confirmed").await.expect("confirmed");
    let logout = api
        .post(
            "/api/auth/logout",
            Some(&customer.access_token),
            &json!({"refresh_token": string(&renewed, "refresh_token").expect("token")}),
        )
        .await
        .expect("logs out");
    assert!(logout.status.is_success(), "{} {}", logout.status, logout.body);

    // The auth service's signing keys: the PEM body lines are the secret.
    let auth = shop.databases.pool(Service::Auth).await.expect("auth db");
    let pems: Vec<String> =
        sqlx::query_scalar("SELECT private_key_pem FROM signing_keys").fetch_all(&auth).await.expect("keys");
    assert!(!pems.is_empty(), "the auth service holds no signing key");
    for (index, pem) in pems.iter().enumerate() {
        for line in pem.lines().filter(|line| !line.starts_with("-----")) {
            secrets.push((format!("signing key {index}"), line.to_owned()));
        }
    }
    drop(auth);
    shop.stop().expect("the shop stops");

    let log = std::fs::read_to_string(&shop.log_path).expect("the shop's log");
    // The log did record this run: the check below could see a leak.
    assert!(log.contains(&customer.user_id), "the log never names the customer");
    assert!(log.contains(&order_id), "the log never names the order");
    let lines = log.lines().count();
    let mut leaks = Vec::new();
    for (what, secret) in &secrets {
        assert!(secret.len() >= SHORTEST_SECRET, "{what} is too short to look for");
        // A JWT is also looked for by its signature alone.
        let mut needles = vec![secret.as_str()];
        if let Some(signature) = secret.rsplit('.').next().filter(|part| part.len() >= 40 && *part != secret)
        {
            needles.push(signature);
        }
        for needle in needles {
            if let Some(line) = log.lines().find(|line| line.contains(needle)) {
                leaks.push(format!("{what} in: {line}"));
            }
        }
    }
    assert!(leaks.is_empty(), "secrets in the log:\n{}", leaks.join("\n"));
    eprintln!("{} secrets looked for in {lines} log lines: none found", secrets.len());
}

#[tokio::test]
async fn guessing_one_accounts_password_pauses_that_account_only() {
    let (_, api, _) = setup().await;
    let victim = api.register_customer("victim").await.expect("registers");
    let bystander = api.register_customer("bystander").await.expect("registers");
    for attempt in 1..=5 {
        let refused = api
            .post(
                "/api/auth/login",
                None,
                &json!({"email": victim.email, "password": format!("guess {attempt}")}),
            )
            .await
            .expect("answers");
        assert_eq!(refused.status, StatusCode::UNAUTHORIZED, "attempt {attempt}: {}", refused.body);
    }
    // Now even the right password waits, told how long; more attempts (which
    // auth answers without a password check) do not cut anybody else off.
    for _ in 0..8 {
        let request = api
            .http
            .post(format!("{}/api/auth/login", api.base))
            .json(&json!({"email": victim.email, "password": "correct horse battery"}));
        let response = request.send().await.expect("answers");
        let retry_after: u64 = response
            .headers()
            .get("retry-after")
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.parse().ok())
            .expect("a Retry-After in seconds");
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert!((1..=30).contains(&retry_after), "Retry-After {retry_after}");
        let content_type =
            response.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
        assert!(content_type.starts_with("application/problem+json"), "{content_type}");
    }
    api.login(&bystander.email, "correct horse battery").await.expect("another account signs in as usual");
}

#[tokio::test]
async fn another_customers_order_shipment_and_notifications_stay_out_of_reach() {
    // OWASP API1 (object-level authorisation): knowing an id is not enough.
    let (_, api, admin) = setup().await;
    let category = api.create_category(&admin, "Private").await.expect("category");
    let product = api.create_product(&admin, &category, "Diary", 1900, 5).await.expect("product");
    let owner = api.register_customer("owner").await.expect("registers");
    let snoop = api.register_customer("snoop").await.expect("registers");
    let order_id = api.order(&owner, &[(&product, 1)], CARD_OK).await.expect("accepted");
    api.wait_order(&owner, &order_id, "confirmed").await.expect("confirmed");
    let shipment = shipment_of(&api, &owner, &order_id).await;
    let shipment_id = string(&shipment, "id").expect("shipment id");
    let token = Some(snoop.access_token.as_str());

    for (what, answer) in [
        ("read the order", api.get(&format!("/api/orders/{order_id}"), token).await.expect("answers")),
        (
            "cancel the order",
            api.post(&format!("/api/orders/{order_id}/cancel"), token, &json!({})).await.expect("answers"),
        ),
        (
            "read the shipment",
            api.get(&format!("/api/shipments/{shipment_id}"), token).await.expect("answers"),
        ),
    ] {
        // 404, not 403: the answer does not even confirm the id exists.
        assert_eq!(answer.status, StatusCode::NOT_FOUND, "{what}: {} {}", answer.status, answer.body);
        answer.assert_problem(what);
    }
    let by_order = api.get(&format!("/api/shipments?order_id={order_id}"), token).await.expect("answers");
    assert!(
        by_order.status == StatusCode::NOT_FOUND
            || by_order.body["shipments"].as_array().is_some_and(Vec::is_empty),
        "the snoop found the owner's shipment by order id: {} {}",
        by_order.status,
        by_order.body
    );
    let orders = api.get("/api/orders", token).await.expect("lists").expect(StatusCode::OK).expect("200");
    assert!(!orders.to_string().contains(&order_id), "the snoop lists the owner's order: {orders}");
    let notifications =
        api.get("/api/notifications", token).await.expect("lists").expect(StatusCode::OK).expect("200");
    assert!(
        !notifications.to_string().contains(&order_id),
        "the snoop reads the owner's mail: {notifications}"
    );
    // The refused cancel changed nothing.
    let still = api.get_order(&owner, &order_id).await.expect("the owner reads it");
    assert_eq!(still["status"], json!("confirmed"), "{still}");
}

#[tokio::test]
async fn fields_a_customer_may_not_set_and_unbounded_pages_are_refused() {
    // OWASP API3 (mass assignment) and API4 (unrestricted consumption).
    let (_, api, _) = setup().await;
    let email = format!("climber-{}@e2e.commerce.test", uuid::Uuid::new_v4().simple());
    let register =
        json!({"email": email, "password": "correct horse battery", "display_name": "C", "role": "admin"});
    let answer = api.post("/api/auth/register", None, &register).await.expect("answers");
    assert_eq!(
        answer.status,
        StatusCode::BAD_REQUEST,
        "a role in the sign-up was not refused: {}",
        answer.body
    );
    answer.assert_problem("a sign-up that names its role");
    assert!(answer.body.to_string().contains("role"), "the refusal names the field: {}", answer.body);

    let customer = api.register_customer("modest").await.expect("registers");
    let token = Some(customer.access_token.as_str());
    let order = json!({
        "lines": [{"product_id": uuid::Uuid::new_v4(), "quantity": 1}],
        "shipping_address": support::api::address(),
        "payment_method_token": CARD_OK,
        "status": "confirmed",
        "total": {"currency": "EUR", "amount_minor": 1},
    });
    let request = api
        .http
        .post(format!("{}/api/orders", api.base))
        .bearer_auth(&customer.access_token)
        .header("Idempotency-Key", uuid::Uuid::new_v4().to_string())
        .json(&order);
    let answer = api.send(request).await.expect("answers");
    assert_eq!(
        answer.status,
        StatusCode::BAD_REQUEST,
        "an order with its own status and total: {}",
        answer.body
    );
    answer.assert_problem("an order that sets its own status and total");

    for path in
        ["/api/products?page_size=1000000", "/api/orders?page_size=101", "/api/notifications?page_size=5000"]
    {
        let answer = api.get(path, token).await.expect("answers");
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{path}: {} {}", answer.status, answer.body);
        answer.assert_problem(path);
    }
}

#[tokio::test]
async fn a_replayed_refresh_token_revokes_every_token_of_its_sign_in() {
    // OWASP API2 (broken authentication): a stolen refresh token used after
    // its owner (or the other way round) ends the whole session family.
    let (_, api, _) = setup().await;
    let customer = api.register_customer("replayed").await.expect("registers");
    let login = api
        .post("/api/auth/login", None, &json!({"email": customer.email, "password": "correct horse battery"}))
        .await
        .expect("logs in")
        .expect(StatusCode::OK)
        .expect("200");
    let first = string(&login["tokens"], "refresh_token").expect("refresh token");
    let rotated = api
        .post("/api/auth/refresh", None, &json!({"refresh_token": first}))
        .await
        .expect("refreshes")
        .expect(StatusCode::OK)
        .expect("200");
    let second = string(&rotated, "refresh_token").expect("refresh token");
    let replay =
        api.post("/api/auth/refresh", None, &json!({"refresh_token": first})).await.expect("answers");
    assert_eq!(replay.status, StatusCode::UNAUTHORIZED, "{}", replay.body);
    replay.assert_problem("a replayed refresh token");
    let after =
        api.post("/api/auth/refresh", None, &json!({"refresh_token": second})).await.expect("answers");
    assert_eq!(
        after.status,
        StatusCode::UNAUTHORIZED,
        "the family's newest token still works: {}",
        after.body
    );
}

/// Whether the stored address (a protobuf `Address`) still holds `text`.
async fn address_holds(
    shop: &Shop,
    service: Service,
    sql: &str,
    id: &str,
    text: &str,
) -> anyhow::Result<bool> {
    let pool = shop.databases.pool(service).await?;
    let holds: bool = sqlx::query_scalar(sql).bind(id).bind(text.as_bytes()).fetch_one(&pool).await?;
    pool.close().await;
    Ok(holds)
}

/// How many rows of `table` in `service`'s database belong to `user_id`.
async fn rows_of(shop: &Shop, service: Service, table: &str, user_id: &str) -> anyhow::Result<i64> {
    let pool = shop.databases.pool(service).await?;
    let count: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {table} WHERE user_id = $1"))
        .bind(user_id)
        .fetch_one(&pool)
        .await?;
    pool.close().await;
    Ok(count)
}

#[tokio::test]
async fn an_erased_customer_is_gone_from_every_service_and_their_orders_keep_only_what_the_books_need() {
    let (shop, api, admin) = setup().await;
    let category = api.create_category(&admin, "Erasure").await.expect("category");
    let product = api.create_product(&admin, &category, "Shredder", 4200, 5).await.expect("product");
    let customer = api.register_customer("leaving").await.expect("registers");
    let token = Some(customer.access_token.as_str());
    let user = customer.user_id.as_str();
    let mut address = support::api::address();
    address["line1"] = json!("9 Forgotten Lane");
    api.post(
        "/api/users/me/addresses",
        token,
        &json!({"label": "home", "address": address, "make_default": true}),
    )
    .await
    .expect("answers")
    .expect(StatusCode::CREATED)
    .expect("201");
    api.get(&format!("/api/products/{product}"), token)
        .await
        .expect("answers")
        .expect(StatusCode::OK)
        .expect("200");

    // No address given: the order ships to the book's default.
    let request = api
        .request(
            Method::POST,
            "/api/orders",
            token,
            Some(
                &json!({"lines": [{"product_id": product, "quantity": 1}], "payment_method_token": CARD_OK}),
            ),
        )
        .header("Idempotency-Key", uuid::Uuid::new_v4().to_string());
    let order = api.send(request).await.expect("answers").expect(StatusCode::CREATED).expect("201");
    let order_id = string(&order, "id").expect("order id");
    api.wait_order(&customer, &order_id, "confirmed").await.expect("confirmed");
    let erase = |password: &str| {
        let body = json!({"password": password});
        let api = &api;
        async move { api.post("/api/users/me/erasure", token, &body).await.expect("answers") }
    };
    let early = erase("correct horse battery").await;
    early.assert_problem("an erasure with an order on its way");
    assert_eq!(early.status, StatusCode::CONFLICT, "{}", early.body);
    assert!(early.body["detail"].as_str().unwrap_or_default().contains(&order_id), "{}", early.body);

    let shipment_id = deliver(&api, &customer, &order_id).await;
    api.wait_order(&customer, &order_id, "delivered").await.expect("delivered");
    let review_path = format!("/api/products/{product}/reviews");
    let (review, _) = wait_for("the review to be accepted", ORDER_TIMEOUT, || async {
        let answer = api.post(&review_path, token, &json!({"rating": 5, "title": "Thorough"})).await?;
        Ok((answer.status == StatusCode::CREATED).then_some(answer.body))
    })
    .await
    .expect("a delivered buyer reviews");
    let review_id = string(&review, "id").expect("review id");
    let (views, _) = wait_for("the view and the notifications to be kept", ORDER_TIMEOUT, || async {
        let views = rows_of(shop, Service::Recommendation, "views", user).await?;
        let notifications = rows_of(shop, Service::Notification, "notifications", user).await?;
        Ok((views == 1 && notifications > 0).then_some(views))
    })
    .await
    .expect("the services keep the customer's data");
    assert_eq!(views, 1);

    let wrong = erase("not my password").await;
    wrong.assert_problem("an erasure with a wrong password");
    assert_eq!(wrong.status, StatusCode::FORBIDDEN, "{}", wrong.body);
    let erased = erase("correct horse battery").await;
    assert_eq!(erased.status, StatusCode::NO_CONTENT, "{}", erased.body);
    let login = api
        .post("/api/auth/login", None, &json!({"email": customer.email, "password": "correct horse battery"}))
        .await
        .expect("answers");
    assert_eq!(login.status, StatusCode::UNAUTHORIZED, "the account is gone: {}", login.body);

    let order_sql = "SELECT position($2 in shipping_address) > 0 FROM orders WHERE id = $1::uuid";
    let shipment_sql = "SELECT position($2 in address) > 0 FROM shipments WHERE id = $1::uuid";
    let (_, took) = wait_for("every service to erase the customer", ORDER_TIMEOUT, || async {
        let kept = [
            rows_of(shop, Service::Profile, "profiles", user).await?,
            rows_of(shop, Service::Profile, "addresses", user).await?,
            rows_of(shop, Service::Notification, "notifications", user).await?,
            rows_of(shop, Service::Notification, "recipients", user).await?,
            rows_of(shop, Service::Recommendation, "views", user).await?,
            rows_of(shop, Service::Recommendation, "purchases", user).await?,
            rows_of(shop, Service::Reviews, "reviews", user).await?,
            rows_of(shop, Service::Reviews, "purchases", user).await?,
            i64::from(address_holds(shop, Service::Order, order_sql, &order_id, "Forgotten Lane").await?),
            i64::from(
                address_holds(shop, Service::Shipping, shipment_sql, &shipment_id, "Forgotten Lane").await?,
            ),
            i64::from(address_holds(shop, Service::Order, order_sql, &order_id, "Ada Lovelace").await?),
        ];
        Ok(kept.iter().all(|rows| *rows == 0).then_some(()))
    })
    .await
    .expect("nothing personal is left");
    eprintln!("the erasure reached every service in {:.2} s", took.as_secs_f64());

    // What the books need stays: the order, its amount and country; the
    // review, without its author.
    assert!(
        address_holds(shop, Service::Order, order_sql, &order_id, "DE").await.expect("reads"),
        "the country stays"
    );
    let pool = shop.databases.pool(Service::Order).await.expect("order database");
    let (owner, total): (String, i64) =
        sqlx::query_as("SELECT user_id, total_units FROM orders WHERE id = $1::uuid")
            .bind(&order_id)
            .fetch_one(&pool)
            .await
            .expect("the order stays");
    pool.close().await;
    assert_eq!((owner.as_str(), total), (user, 4200), "the order keeps its amount");
    let reviews = api.get(&review_path, None).await.expect("answers").expect(StatusCode::OK).expect("200");
    assert_eq!(reviews["reviews"][0]["id"], json!(review_id), "the review stays: {reviews}");
    assert_eq!(reviews["summary"]["review_count"], json!(1), "and counts: {reviews}");
}

#[tokio::test]
async fn the_admin_dashboard_counts_todays_order_and_the_sales_report_exports_it_as_csv() {
    let (_shop, api, admin) = setup().await;
    let token = Some(admin.access_token.as_str());
    let category = api.create_category(&admin, "Analytics").await.expect("category");
    let name = format!("Abacus, {}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let product = api.create_product(&admin, &category, &name, 1234, 4).await.expect("product");
    let buyer = api.register_customer("counted").await.expect("registers");
    api.post("/api/cart/items", Some(&buyer.access_token), &json!({"product_id": product, "quantity": 1}))
        .await
        .expect("answers")
        .expect(StatusCode::OK)
        .expect("200");
    let order_id = api.order(&buyer, &[(&product, 3)], CARD_OK).await.expect("accepted");
    api.wait_order(&buyer, &order_id, "confirmed").await.expect("confirmed");

    let (sales, took) = wait_for("the order in the sales by product", ORDER_TIMEOUT, || async {
        let report =
            api.get("/api/admin/analytics/sales?group_by=product", token).await?.expect(StatusCode::OK)?;
        Ok(report["rows"]
            .as_array()
            .and_then(|rows| rows.iter().find(|row| row["key"] == json!(product)).cloned()))
    })
    .await
    .expect("the analytics count the order");
    eprintln!("the order reached the analytics in {:.2} s", took.as_secs_f64());
    assert_eq!(
        (
            sales["label"].clone(),
            sales["orders"].clone(),
            sales["units"].clone(),
            sales["revenue_minor"].clone()
        ),
        (json!(name), json!(1), json!(3), json!(3 * 1234)),
        "{sales}"
    );
    let by_category = api
        .get("/api/admin/analytics/sales?group_by=category", token)
        .await
        .expect("answers")
        .expect(StatusCode::OK)
        .expect("200");
    let row =
        by_category["rows"].as_array().and_then(|rows| rows.iter().find(|row| row["key"] == json!(category)));
    assert_eq!(row.map(|row| row["revenue_minor"].clone()), Some(json!(3 * 1234)), "{by_category}");

    let dashboard =
        api.get("/api/admin/dashboard", token).await.expect("answers").expect(StatusCode::OK).expect("200");
    assert!(dashboard["orders_today"].as_i64().unwrap_or_default() >= 1, "{dashboard}");
    assert!(
        dashboard["revenue_today"].as_array().is_some_and(|amounts| amounts.iter().any(
            |money| money["currency"] == json!("EUR") && money["amount_minor"].as_i64() >= Some(3 * 1234)
        )),
        "{dashboard}"
    );
    assert_eq!(dashboard["dead_letters_complete"], json!(true), "{dashboard}");
    assert!(
        dashboard["dead_letters"]
            .as_array()
            .is_some_and(|topics| topics.iter().any(|dead| dead["service"] == json!("analytics"))),
        "{dashboard}"
    );
    let low = dashboard["low_stock"].as_array().expect("a low-stock list");
    assert!(
        low.iter().all(|item| item["available"].as_i64() <= Some(5) && item["name"] != json!("")),
        "{dashboard}"
    );
    let (funnel, _) = wait_for("the cart in the funnel", ORDER_TIMEOUT, || async {
        let funnel = api.get("/api/admin/analytics/funnel", token).await?.expect(StatusCode::OK)?;
        Ok((funnel["carts"].as_i64() >= Some(1)).then_some(funnel))
    })
    .await
    .expect("the cart's event reaches the analytics");
    assert!(funnel["placed"].as_i64() >= Some(1) && funnel["confirmed"].as_i64() >= Some(1), "{funnel}");

    let csv = api
        .request(Method::GET, "/api/admin/analytics/sales.csv?group_by=product", token, None)
        .send()
        .await
        .expect("answers");
    assert_eq!(csv.status(), StatusCode::OK);
    assert!(csv.headers()["content-type"].to_str().unwrap_or_default().starts_with("text/csv"));
    let text = csv.text().await.expect("a body");
    assert!(text.starts_with("key,label,currency,orders,units,revenue_minor,refunded_minor\r\n"), "{text}");
    let expected = format!("{product},\"{name}\",EUR,1,3,{},0\r\n", 3 * 1234);
    assert!(text.contains(&expected), "the product's line, its name quoted for its comma:\n{text}");

    let customer_sees = api.get("/api/admin/dashboard", Some(&buyer.access_token)).await.expect("answers");
    assert_eq!(customer_sees.status, StatusCode::FORBIDDEN, "{}", customer_sees.body);
}
