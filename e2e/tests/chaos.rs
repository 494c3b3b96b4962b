//! Fault tests of the whole shop (ARCHITECTURE sections 4, 5 and 8): crashed
//! service processes, a restarted broker, an unavailable payment provider,
//! rate limits shared by gateway replicas, and services started before their
//! infrastructure exists. Orders are driven over REST through the gateway;
//! the outcome is checked against the saga invariants in SQL.
//!
//! Isolation: each test runs its own shop (`support::fault::Shop`: the
//! `commerce` binary as child processes on a private port offset, databases
//! `chaos_<run>_<service>`, topic prefix `chaos-<run>.`, Redis prefix
//! `chaos.<run>`), checked by the general invariants (`support::invariants`)
//! against what the test placed and stocked. The shared
//! Postgres and Redis are used, never restarted; a test that restarts Kafka
//! starts its own broker through `e2e/scripts/kafka.sh` on other ports and
//! state dir, and stops it the same way.
//!
//! Needs `source e2e/infra.env`, `bash e2e/scripts/infra.sh up` and `cargo
//! build -p commerce`.

mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};
use commerce_topology::{Service, Topic};
use reqwest::Method;
use support::fault::{
    SERIAL, SETTLE, Shop, admin, customers, place_orders, seed_products, settle_and_cancel, spawn_wave,
    wait_in_flight,
};
use support::invariants::{Expect, order_statuses};
use support::procs::{PrivateKafka, PrivatePostgres, free_port};
use support::shop::infra_var;
use support::wait_for;

/// Services of the "rest of the shop" process, beside order and payment.
const OTHERS: [Service; 13] = [
    Service::Auth,
    Service::Catalog,
    Service::Inventory,
    Service::Cart,
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
/// Broker and controller ports of the private Kafka: above the kernel's
/// ephemeral range (32768-60999), so that no outgoing connection of another
/// test can hold them when the broker binds them again after a restart.
const KAFKA_PORTS: (u16, u16) = (61192, 61193);
/// How long a freshly started shop may take to be ready.
const READY: Duration = Duration::from_secs(120);

/// A shop whose order and payment services run in processes of their own.
async fn start_split_shop(kafka: String) -> Result<(Shop, usize, usize)> {
    let mut shop = Shop::new(kafka, infra_var("COMMERCE_POSTGRES_ADMIN_URL")?)?;
    // One process after the other: concurrent `serve all` processes race in
    // creating topics (see the report: ensure_topics fails with
    // InvalidPartitions for a topic another process created meanwhile).
    shop.serve("rest", &OTHERS, &[])?;
    shop.wait_ready(&OTHERS, READY).await?;
    let order = shop.serve("order", &[Service::Order], &[])?;
    shop.wait_ready(&[Service::Order], READY).await?;
    let payment = shop.serve("payment", &[Service::Payment], &[])?;
    shop.wait_ready(&[Service::Payment], READY).await?;
    Ok((shop, order, payment))
}

#[tokio::test]
async fn orders_settle_consistently_when_order_and_payment_processes_are_killed_mid_saga() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let (mut shop, order, payment) = start_split_shop(infra_var("COMMERCE_KAFKA_BROKERS")?).await?;
    let result = async {
        let admin = admin(&shop).await?;
        // The third product is scarce, so some orders are rejected.
        let stock = [40, 40, 6];
        let products = seed_products(&admin, &shop.run, &stock).await?;
        let initial: HashMap<String, i64> = products.iter().cloned().zip(stock).collect();
        let buyers = customers(&shop, 3).await?;
        let started = Instant::now();

        // Wave 1, and order and payment die (SIGKILL) with it in flight.
        let order_db = shop.db(Service::Order).await?;
        let payment_db = shop.db(Service::Payment).await?;
        let wave1 = spawn_wave(&buyers, &products, 10, 0);
        let seen =
            wait_in_flight("killing order and payment", &order_db, &payment_db, |seen| seen.open_orders > 0)
                .await?;
        shop.procs[order].kill();
        shop.procs[payment].kill();
        eprintln!("killed order and payment with {seen:?}");
        // Wave 2 is placed while order is down: the gateway answers 5xx and
        // the client retries with the same Idempotency-Key until it is back.
        let wave2 = spawn_wave(&buyers, &products, 8, 10);
        shop.procs[order].restart()?;
        shop.procs[payment].restart()?;
        let mut ids = wave1.await??;
        ids.extend(wave2.await??);
        // Wave 3, and payment dies again with charges due.
        let wave3 = spawn_wave(&buyers, &products, 8, 18);
        let seen =
            wait_in_flight("killing payment", &order_db, &payment_db, |seen| seen.payments_due > 0).await?;
        shop.procs[payment].kill();
        eprintln!("killed payment with {seen:?}");
        shop.procs[payment].restart()?;
        ids.extend(wave3.await??);
        let expect = Expect { orders: ids, initial_stock: initial };
        settle_and_cancel(&mut shop, &buyers, &expect, started).await.map(drop)
    }
    .await;
    shop.teardown().await;
    result
}

#[tokio::test]
async fn orders_settle_consistently_when_kafka_restarts_mid_saga() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let kafka = PrivateKafka::new(KAFKA_PORTS.0, KAFKA_PORTS.1);
    kafka.up()?;
    let (mut shop, _, payment) = start_split_shop(kafka.brokers()).await?;
    let result = async {
        let admin = admin(&shop).await?;
        let stock = [40, 40, 6];
        let products = seed_products(&admin, &shop.run, &stock).await?;
        let initial: HashMap<String, i64> = products.iter().cloned().zip(stock).collect();
        let buyers = customers(&shop, 3).await?;
        let started = Instant::now();
        // The broker goes away with wave 1 in flight; wave 2 is stored with
        // its events in the outbox, published once Kafka is back. Payment
        // also crashes while the broker is away.
        let order_db = shop.db(Service::Order).await?;
        let payment_db = shop.db(Service::Payment).await?;
        let wave1 = spawn_wave(&buyers, &products, 8, 0);
        let seen =
            wait_in_flight("stopping Kafka", &order_db, &payment_db, |seen| seen.open_orders > 0).await?;
        kafka.down()?;
        eprintln!("stopped Kafka with {seen:?}");
        let mut ids = wave1.await??;
        ids.extend(place_orders(&buyers, &products, 8, 8).await?);
        shop.procs[payment].kill();
        shop.procs[payment].restart()?;
        kafka.up()?;
        ids.extend(place_orders(&buyers, &products, 6, 16).await?);
        let expect = Expect { orders: ids, initial_stock: initial };
        settle_and_cancel(&mut shop, &buyers, &expect, started).await.map(drop)
    }
    .await;
    shop.teardown().await;
    drop(kafka);
    result
}

/// The value of the metric `name` (without labels) in Prometheus text.
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find(|line| line.split_whitespace().next() == Some(name))
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|value| value.parse().ok())
}

#[tokio::test]
async fn orders_wait_while_the_payment_provider_is_down_and_complete_once_charged_when_it_returns()
-> Result<()> {
    let _serial = SERIAL.lock().await;
    let mut shop =
        Shop::new(infra_var("COMMERCE_KAFKA_BROKERS")?, infra_var("COMMERCE_POSTGRES_ADMIN_URL")?)?;
    shop.serve("shop", &Service::ALL, &[])?;
    let result = async {
        shop.wait_ready(&Service::ALL, READY).await?;
        let payment_admin = shop.admin_url(Service::Payment);
        let admin = admin(&shop).await?;
        let products = seed_products(&admin, &shop.run, &[50, 50]).await?;
        let buyers = customers(&shop, 2).await?;

        let switched = shop.http.post(format!("{payment_admin}/mock-provider/unavailable")).send().await?;
        ensure!(switched.status().is_success(), "switching the provider off: {}", switched.status());
        let count = 6;
        let mut ids = Vec::new();
        for n in 0..count {
            ids.push(buyers[n % 2].place_order(&[(&products[n % 2], 1)], "tok_visa").await?);
        }
        let (_, opened) = wait_for("the provider circuit opens", Duration::from_secs(60), || async {
            let (_, text) = shop.get(&format!("{payment_admin}/metrics")).await.map_err(anyhow::Error::msg)?;
            Ok((metric(&text, "commerce_payment_provider_circuit_open") == Some(1.0)).then_some(()))
        })
        .await?;
        // While it is open, every order waits for its payment: none failed.
        let order_db = shop.db(Service::Order).await?;
        let payment_db = shop.db(Service::Payment).await?;
        wait_for("every charge attempted and deferred", Duration::from_secs(60), || async {
            let deferred: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM payments WHERE order_id = ANY($1) AND status = 'PENDING' AND attempts > 0",
            )
            .bind(&ids)
            .fetch_one(&payment_db)
            .await?;
            Ok((deferred == count as i64).then_some(()))
        })
        .await?;
        let waiting = order_statuses(&order_db, &ids).await?;
        ensure!(
            waiting.values().all(|status| status == "PENDING" || status == "RESERVED"),
            "orders did not wait for the provider: {waiting:?}"
        );
        let (_, state) = shop.get(&format!("{payment_admin}/mock-provider")).await.map_err(anyhow::Error::msg)?;
        let state: serde_json::Value = serde_json::from_str(&state)?;
        ensure!(state["charges_taken"] == 0, "money taken while unavailable: {state}");

        let switched = shop.http.post(format!("{payment_admin}/mock-provider/available")).send().await?;
        ensure!(switched.status().is_success(), "switching the provider on: {}", switched.status());
        let returned = Instant::now();
        let (_, settled) = wait_for("every order confirmed", SETTLE, || async {
            let statuses = order_statuses(&order_db, &ids).await?;
            Ok((statuses.len() == count && statuses.values().all(|status| status == "CONFIRMED")).then_some(()))
        })
        .await
        .with_context(|| shop.logs(20))?;
        wait_for("the provider circuit closes", Duration::from_secs(60), || async {
            let (_, text) = shop.get(&format!("{payment_admin}/metrics")).await.map_err(anyhow::Error::msg)?;
            Ok((metric(&text, "commerce_payment_provider_circuit_open") == Some(0.0)).then_some(()))
        })
        .await?;
        let (_, state) = shop.get(&format!("{payment_admin}/mock-provider")).await.map_err(anyhow::Error::msg)?;
        let state: serde_json::Value = serde_json::from_str(&state)?;
        ensure!(state["charges_taken"] == count as u64, "charges != orders: {state}");
        let captured: i64 =
            sqlx::query_scalar("SELECT count(*) FROM payments WHERE order_id = ANY($1) AND status = 'CAPTURED'")
                .bind(&ids)
                .fetch_one(&payment_db)
                .await?;
        ensure!(captured == count as i64, "{captured} captured payments for {count} orders");
        let initial: HashMap<String, i64> = products.iter().cloned().zip([50, 50]).collect();
        shop.check_invariants(&Expect { orders: ids, initial_stock: initial }).await?;
        eprintln!(
            "circuit opened after {opened:?}; {count} orders confirmed {settled:?} after the provider returned \
             ({:?} in all); provider state {state}",
            returned.elapsed()
        );
        Ok(())
    }
    .await;
    shop.teardown().await;
    result
}

/// GET `path` on `gateway` `count` times; the replies' statuses and headers.
async fn burst(http: &reqwest::Client, gateway: &str, count: usize) -> Result<Vec<reqwest::Response>> {
    let mut replies = Vec::new();
    for _ in 0..count {
        replies.push(http.get(format!("{gateway}/api/products")).send().await?);
    }
    Ok(replies)
}

#[tokio::test]
async fn a_burst_beyond_a_rule_is_refused_with_429_and_two_gateways_share_one_limit() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let mut shop =
        Shop::new(infra_var("COMMERCE_KAFKA_BROKERS")?, infra_var("COMMERCE_POSTGRES_ADMIN_URL")?)?;
    // Rule default-ip: 1 per minute (so nothing refills during the test on
    // a slow machine), burst 10, for every /api/ request.
    let limits = [("COMMERCE_RATELIMIT_DEFAULT_PER_MINUTE", "1"), ("COMMERCE_RATELIMIT_DEFAULT_BURST", "10")];
    // One after the other: concurrent `serve all` processes race in creating topics.
    shop.serve("backend", &[Service::Auth, Service::Catalog], &[])?;
    shop.wait_ready(&[Service::Auth, Service::Catalog], READY).await?;
    shop.serve("gateway-a", &[Service::Gateway], &limits)?;
    let second_http = free_port();
    let second_admin = free_port();
    let mut args = vec![
        "serve".to_owned(),
        "gateway".to_owned(),
        format!("--http-addr=127.0.0.1:{second_http}"),
        format!("--admin-addr=127.0.0.1:{second_admin}"),
        format!("--redis-url={}", shop.redis_url),
        "--log-format=json".to_owned(),
    ];
    for service in Service::ALL.into_iter().filter(|service| service.local_ports().grpc.is_some()) {
        args.push(format!("--peer={service}=http://127.0.0.1:{}", shop.grpc_port(service)));
    }
    shop.spawn("gateway-b", args, &limits)?;
    let result = async {
        shop.wait_ready(&[Service::Gateway], READY).await?;
        let gateway_b = format!("http://127.0.0.1:{second_http}");
        wait_for("the second gateway is ready", READY, || async {
            Ok(matches!(
                shop.get(&format!("http://127.0.0.1:{second_admin}/readyz")).await,
                Ok((reqwest::StatusCode::OK, _))
            )
            .then_some(()))
        })
        .await
        .with_context(|| shop.logs(20))?;

        let first = burst(&shop.http, &shop.gateway_url(), 8).await?;
        let second = burst(&shop.http, &gateway_b, 8).await?;
        let admitted =
            |replies: &[reqwest::Response]| replies.iter().filter(|r| r.status().is_success()).count();
        let refused = |replies: &[reqwest::Response]| {
            replies.iter().filter(|r| r.status() == reqwest::StatusCode::TOO_MANY_REQUESTS).count()
        };
        let (a, b) = (admitted(&first), admitted(&second));
        eprintln!("gateway A admitted {a}/8, gateway B admitted {b}/8 (burst 10, 1/min, shared)");
        ensure!(a == 8, "gateway A should admit its 8 requests within the burst of 10: {a}");
        // One shared bucket: B gets what A left (2, plus at most one refill
        // should a minute pass), not a fresh burst of its own.
        ensure!(b <= 3 && refused(&second) == 8 - b, "gateway B admitted {b}: limits are not shared");
        let limited = second
            .iter()
            .find(|r| r.status() == reqwest::StatusCode::TOO_MANY_REQUESTS)
            .context("no 429 from gateway B")?;
        let retry_after: u64 = limited
            .headers()
            .get("retry-after")
            .context("429 without Retry-After")?
            .to_str()?
            .parse()
            .context("Retry-After is not a number of seconds")?;
        ensure!(retry_after >= 1, "Retry-After {retry_after}");
        let ratelimit = limited.headers().get("ratelimit").context("429 without RateLimit")?.to_str()?;
        ensure!(ratelimit.contains("r=0"), "RateLimit should show nothing remaining: {ratelimit}");
        ensure!(limited.headers().contains_key("ratelimit-policy"), "429 without RateLimit-Policy");
        // And gateway A is refused as well now: the bucket is empty for both.
        let again = burst(&shop.http, &shop.gateway_url(), 2).await?;
        ensure!(refused(&again) >= 1, "gateway A admitted again after B emptied the shared bucket");
        Ok(())
    }
    .await;
    shop.teardown().await;
    result
}

/// Creates what the operator creates in a cluster: every catalog topic and
/// dead-letter topic under `prefix` (3 partitions, one replica).
async fn create_topics(brokers: &str, prefix: &str) -> Result<()> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> =
        rdkafka::ClientConfig::new().set("bootstrap.servers", brokers).create()?;
    let mut names: Vec<String> = Topic::ALL.iter().map(|topic| format!("{prefix}{topic}")).collect();
    names.extend(Service::ALL.iter().map(|service| format!("{prefix}{}", service.dead_letter_topic())));
    let topics: Vec<NewTopic> =
        names.iter().map(|name| NewTopic::new(name, 3, TopicReplication::Fixed(1))).collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    for result in admin.create_topics(&topics, &options).await? {
        match result {
            Ok(_) | Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => anyhow::bail!("cannot create topic {topic}: {code}"),
        }
    }
    Ok(())
}

#[tokio::test]
async fn every_service_started_before_postgres_and_kafka_exist_becomes_ready_when_they_appear() -> Result<()>
{
    let _serial = SERIAL.lock().await;
    let postgres = PrivatePostgres::init()?;
    let kafka = PrivateKafka::new(KAFKA_PORTS.0 + 100, KAFKA_PORTS.1 + 100);
    kafka.down()?;
    let mut shop = Shop::new(kafka.brokers(), postgres.admin_url())?;
    let prefix = shop.kafka_prefix();
    let peers = Service::ALL
        .into_iter()
        .filter(|service| service.local_ports().grpc.is_some())
        .map(|service| format!("{service}=http://127.0.0.1:{}", shop.grpc_port(service)))
        .collect::<Vec<_>>()
        .join(",");
    let databases = shop.databases();
    // Each service alone, as in a pod: configured by COMMERCE_* variables
    // (a flag a service lacks would be an error; a variable is ignored).
    for service in Service::ALL {
        let database = databases.url(service);
        let admin_addr = shop.admin_url(service).trim_start_matches("http://").to_owned();
        let http_addr = shop.gateway_url().trim_start_matches("http://").to_owned();
        let brokers = kafka.brokers();
        let redis_url = shop.redis_url.clone();
        let mut env = vec![
            ("COMMERCE_DATABASE_URL", database.as_str()),
            ("COMMERCE_KAFKA_BROKERS", &brokers),
            ("COMMERCE_KAFKA_NAME_PREFIX", &prefix),
            ("COMMERCE_REDIS_URL", &redis_url),
            ("COMMERCE_ADMIN_ADDR", &admin_addr),
            ("COMMERCE_HTTP_ADDR", &http_addr),
            ("COMMERCE_PEERS", &peers),
        ];
        // The gateway serves no gRPC.
        let grpc_addr = service.local_ports().grpc.map(|_| format!("127.0.0.1:{}", shop.grpc_port(service)));
        if let Some(grpc_addr) = &grpc_addr {
            env.push(("COMMERCE_GRPC_ADDR", grpc_addr));
        }
        shop.spawn(service.name(), vec!["serve".to_owned(), service.name().to_owned()], &env)?;
    }
    let result = async {
        // Everything with a database waits for it: up, answering, not ready.
        let mut before = Vec::new();
        for service in Service::ALL {
            let url = format!("{}/readyz", shop.admin_url(service));
            let deadline = Instant::now() + READY;
            let last = loop {
                let last = shop.get(&url).await;
                if last.is_ok() || Instant::now() > deadline {
                    break last;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            };
            ensure!(last.is_ok(), "{service} never answered /readyz: {last:?}\n{}", shop.logs(20));
            let status = last.as_ref().map(|(status, _)| *status).unwrap_or_default();
            before.push((service, status));
            if service.spec().database {
                ensure!(
                    status == reqwest::StatusCode::SERVICE_UNAVAILABLE,
                    "{service} is {status} without its database: {last:?}"
                );
            }
        }
        eprintln!("before Postgres and Kafka: {before:?}");

        // The infrastructure appears, then what the operator would create.
        let appeared = Instant::now();
        postgres.start()?;
        let server =
            sqlx::postgres::PgPoolOptions::new().max_connections(1).connect(&postgres.admin_url()).await?;
        for service in Service::ALL.into_iter().filter(|service| service.spec().database) {
            sqlx::query(&format!("CREATE DATABASE \"{}\"", databases.name(service))).execute(&server).await?;
        }
        server.close().await;
        kafka.up()?;
        create_topics(&kafka.brokers(), &prefix).await?;
        shop.wait_ready(&Service::ALL, READY).await?;
        eprintln!(
            "every service ready {:?} after Postgres started (Kafka started and topics created in between)",
            appeared.elapsed()
        );

        // Ready means working: one order through the whole saga.
        let admin = admin(&shop).await?;
        // The gateway reports ready before it holds auth's signing keys (it
        // started long before auth could serve them) and refreshes them on an
        // unknown key id at most every --jwt-key-refresh-min-interval (10 s):
        // until then a valid token gets 401. See the report.
        let (_, accepted) =
            wait_for("the gateway accepts a fresh token", Duration::from_secs(30), || async {
                Ok(admin
                    .call(Method::GET, "/api/admin/orders", None)
                    .await?
                    .status
                    .is_success()
                    .then_some(()))
            })
            .await?;
        eprintln!("the gateway accepted auth's tokens {accepted:?} after it reported ready");
        let products = seed_products(&admin, &shop.run, &[5]).await?;
        let buyer = customers(&shop, 1).await?.remove(0);
        let id = buyer.place_order(&[(&products[0], 2)], "tok_visa").await?;
        let order_db = shop.db(Service::Order).await?;
        wait_for("the order is confirmed", SETTLE, || async {
            let statuses = order_statuses(&order_db, std::slice::from_ref(&id)).await?;
            Ok((statuses.get(&id).map(String::as_str) == Some("CONFIRMED")).then_some(()))
        })
        .await
        .with_context(|| shop.logs(20))?;
        Ok(())
    }
    .await;
    for proc in shop.procs.iter_mut().rev() {
        proc.stop(Duration::from_secs(20));
    }
    drop(shop);
    drop(kafka);
    drop(postgres);
    result
}
