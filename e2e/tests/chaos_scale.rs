//! Fault tests at scale and in time (ARCHITECTURE sections 4 and 8): a
//! thousand orders through the gateway while every part of the shop is
//! killed in turn; every service's clock twenty minutes off the database's;
//! a broker of a two-node Kafka cluster killed, so that its partitions
//! change leader.
//! Outcomes are checked against the saga's invariants in SQL and the mock
//! provider's journal (`support::invariants::check_expected`, through
//! `support::fault::Shop::check_invariants`).
//!
//! Isolation as in tests/chaos.rs: each test runs its own shop as child
//! processes; a test that kills, skews or doubles Kafka or Postgres runs
//! its own (`kafka.sh` on other ports and state dirs; initdb in a temp dir).
//!
//! Needs `source e2e/infra.env`, `bash e2e/scripts/infra.sh up`, `bash
//! e2e/scripts/faketime.sh install` and `cargo build -p commerce`.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};
use commerce_topology::Service;
use reqwest::Method;
use sqlx::PgPool;
use support::api::Client;
use support::fault::{
    CUSTOMER_PASSWORD, InFlight, SERIAL, Shop, admin, customer_email, customers, place_order_number,
    place_orders, seed_products, settle_and_cancel, spawn_wave, wait_in_flight,
};
use support::invariants::{Expect, order_statuses};
use support::procs::{PrivateKafka, PrivatePostgres, repo_root};
use support::shop::infra_var;
use support::wait_for;

/// How long a freshly started (or restarted) part may take to be ready.
const READY: Duration = Duration::from_secs(120);
/// Private broker ports of the scale run (tests/chaos.rs uses 61192-61194).
const KAFKA_PORTS: (u16, u16) = (61196, 61197);
/// Orders of the scale run.
const ORDERS: usize = 1_000;
/// Clients placing them at once (each places its next order when the last
/// one was accepted).
const CLIENTS: usize = 12;

/// A part of the shop the scale run kills.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Part {
    Order,
    Payment,
    Inventory,
    Gateway,
    Kafka,
    Postgres,
}

/// The kills, in order; one after each eighth of the orders (see [`due`]).
const FAULTS: [Part; 6] =
    [Part::Order, Part::Payment, Part::Inventory, Part::Gateway, Part::Kafka, Part::Postgres];

/// Waits until the kill of `part` would hit work in flight: open orders
/// for every part, payments due for payment, placement requests on their
/// way for the gateway (see [`wait_in_flight`]).
async fn wait_for_work_in_flight(
    part: Part,
    order_db: &PgPool,
    payment_db: &PgPool,
    requests: &AtomicUsize,
) -> Result<(InFlight, usize)> {
    let what = format!("killing {part:?}");
    let mut sending = 0;
    let seen = wait_in_flight(&what, order_db, payment_db, |seen| {
        sending = requests.load(Ordering::SeqCst);
        seen.open_orders > 0
            && match part {
                Part::Payment => seen.payments_due > 0,
                Part::Gateway => sending > 0,
                _ => true,
            }
    })
    .await?;
    Ok((seen, sending))
}

/// How far past a kill's due count the clients may place orders before
/// that kill has been done. Without this bound the clients could place
/// every order while a restarted part comes back, and the kills after it
/// would find nothing in flight; with it, each kill still meets requests
/// on their way (the clients are not yet held at the gate).
const AHEAD: usize = ORDERS / 16;

/// The order number the clients may not reach before the kill `k` is done
/// (the last kill releases all).
fn gate(k: usize) -> usize {
    if k < FAULTS.len() { due(k) + AHEAD } else { ORDERS }
}

/// The orders placed before the kill `k` (one kill after each eighth).
fn due(k: usize) -> usize {
    (k + 1) * ORDERS / 8
}

/// Places orders `0..ORDERS` from `CLIENTS` clients, none numbered at or
/// past `gate` until the gate moves on; counts accepted orders in `placed`
/// and requests on their way in `requests`. Returns the ids in order
/// number order.
async fn place_all(
    buyers: Vec<Client>,
    products: Vec<String>,
    placed: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
    gate: Arc<AtomicUsize>,
) -> Result<Vec<String>> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let (buyers, products, next) = (buyers.clone(), products.clone(), next.clone());
        let (placed, requests, gate) = (placed.clone(), requests.clone(), gate.clone());
        clients.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let n = next.fetch_add(1, Ordering::SeqCst);
                if n >= ORDERS {
                    return Ok::<_, anyhow::Error>(mine);
                }
                while n >= gate.load(Ordering::SeqCst) {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                requests.fetch_add(1, Ordering::SeqCst);
                let id = place_order_number(&buyers[n % buyers.len()], &products, n).await;
                requests.fetch_sub(1, Ordering::SeqCst);
                mine.push((n, id.with_context(|| format!("order number {n}"))?));
                placed.fetch_add(1, Ordering::SeqCst);
            }
        }));
    }
    let mut all = Vec::new();
    for client in clients {
        all.extend(client.await??);
    }
    all.sort();
    Ok(all.into_iter().map(|(_, id)| id).collect())
}

#[tokio::test]
async fn a_thousand_orders_settle_consistently_while_each_part_of_the_shop_is_killed_in_turn() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let kafka = PrivateKafka::new(KAFKA_PORTS.0, KAFKA_PORTS.1);
    kafka.up()?;
    let postgres = PrivatePostgres::init()?;
    postgres.start()?;
    let mut shop = Shop::new(kafka.brokers(), postgres.admin_url())?;
    let result = async {
        // One process per killed service; the rest share one.
        let rest = [
            Service::Auth,
            Service::Catalog,
            Service::Cart,
            Service::Notification,
            Service::Shipping,
            Service::Audit,
            Service::Profile,
            Service::Reviews,
            Service::Search,
            Service::Recommendation,
            Service::Analytics,
        ];
        shop.serve("rest", &rest, &[])?;
        shop.wait_ready(&rest, READY).await?;
        let mut procs = HashMap::new();
        for (part, service) in
            [(Part::Inventory, Service::Inventory), (Part::Order, Service::Order), (Part::Payment, Service::Payment)]
        {
            procs.insert(part, (shop.serve(service.name(), &[service], &[])?, service));
            shop.wait_ready(&[service], READY).await?;
        }
        procs.insert(Part::Gateway, (shop.serve("gateway", &[Service::Gateway], &[])?, Service::Gateway));
        shop.wait_ready(&[Service::Gateway], READY).await?;

        let admin = admin(&shop).await?;
        // Plenty of four products, and a scarce fifth: some orders are
        // rejected for want of stock.
        let stock = [700, 700, 700, 700, 30];
        let products = seed_products(&admin, &shop.run, &stock).await?;
        let initial: HashMap<String, i64> = products.iter().cloned().zip(stock).collect();
        let buyers = customers(&shop, 6).await?;
        let order_db = shop.db(Service::Order).await?;
        let payment_db = shop.db(Service::Payment).await?;

        let placed = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let gate_at = Arc::new(AtomicUsize::new(gate(0)));
        let started = Instant::now();
        let placing = tokio::spawn(place_all(
            buyers.clone(),
            products.clone(),
            placed.clone(),
            requests.clone(),
            gate_at.clone(),
        ));
        let mut kills = Vec::new();
        for (k, part) in FAULTS.into_iter().enumerate() {
            let due = due(k);
            wait_for(&format!("{due} orders placed before killing {part:?}"), Duration::from_secs(300), || {
                let placed = placed.load(Ordering::SeqCst);
                async move { Ok((placed >= due).then_some(())) }
            })
            .await?;
            let (seen, sending) = wait_for_work_in_flight(part, &order_db, &payment_db, &requests).await?;
            let placed_before = placed.load(Ordering::SeqCst);
            let down = Instant::now();
            match part {
                Part::Kafka => {
                    kafka.kill()?;
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    kafka.up()?;
                }
                Part::Postgres => {
                    postgres.crash()?;
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    postgres.start()?;
                }
                _ => {
                    let (index, service) = procs[&part];
                    shop.procs[index].kill();
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    shop.procs[index].restart()?;
                    shop.wait_ready(&[service], READY).await?;
                }
            }
            eprintln!(
                "killed {part:?} ({}) after {placed_before} orders, with {} open orders, {} payments due and {} \
                 placements in flight; back after {:.1?}",
                if part == Part::Postgres { "crashed: pg_ctl stop -m immediate" } else { "SIGKILL" },
                seen.open_orders,
                seen.payments_due,
                sending,
                down.elapsed()
            );
            kills.push((part, seen));
            gate_at.store(gate(k + 1), Ordering::SeqCst);
        }
        let last_fault = Instant::now();
        let ids = placing.await??;
        ensure!(ids.len() == ORDERS, "{} of {ORDERS} orders placed", ids.len());
        let placed_after = started.elapsed();
        let expect = Expect { orders: ids, initial_stock: initial };
        let settled = settle_and_cancel(&mut shop, &buyers, &expect, last_fault).await?;
        let ids = &expect.orders;
        let ledger = commerce_payment::journal::read(&shop.ledger_path())?;
        let money = commerce_payment::journal::money_by_charge_key(&ledger);
        let captures: u32 = money.values().map(|key| key.captures).sum();
        let double: usize = money.values().filter(|key| key.captures > 1).count();
        eprintln!(
            "FIGURE chaos at scale: {} orders placed in {placed_after:.1?} through {} kills ({}); settled \
             {:.1?} after the last kill; by status {:?}; {} confirmed orders cancelled afterwards, each \
             refunded and restocked; provider: {captures} captures, {double} keys captured twice; lost \
             orders 0, stock exact, every outbox row published",
            ids.len(),
            kills.len(),
            kills.iter().map(|(part, _)| format!("{part:?}")).collect::<Vec<_>>().join(", "),
            settled.after,
            settled.by_status,
            settled.cancelled_after_payment,
        );
        ensure!(double == 0, "{double} charge keys captured twice");
        let statuses = order_statuses(&order_db, ids).await?;
        ensure!(statuses.len() == ORDERS, "{} of {ORDERS} orders stored", statuses.len());
        Ok(())
    }
    .await;
    shop.teardown().await;
    drop(postgres);
    drop(kafka);
    result
}

/// The preload library that runs a process's clock apart.
fn faketime_library() -> Result<String> {
    let output = std::process::Command::new("bash")
        .arg(repo_root().join("e2e/scripts/faketime.sh"))
        .arg("path")
        .output()
        .context("cannot run e2e/scripts/faketime.sh")?;
    ensure!(
        output.status.success(),
        "libfaketime is missing (run `bash e2e/scripts/faketime.sh install`): {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8(output.stdout)?.trim().to_owned())
}

/// The `iat` and `exp` claims of a JWT (no verification: the gateway does
/// that).
fn issued_and_expiry(token: &str) -> Result<(i64, i64)> {
    use base64::Engine as _;
    let payload = token.split('.').nth(1).context("not a JWT")?;
    let claims: serde_json::Value =
        serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload)?)?;
    Ok((claims["iat"].as_i64().context("no iat")?, claims["exp"].as_i64().context("no exp")?))
}

/// This machine's clock, in Unix seconds.
fn unix_now() -> i64 {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    i64::try_from(since.as_secs()).unwrap_or(i64::MAX)
}

/// The status of order `id`.
async fn status_of(order_db: &PgPool, id: &str) -> Result<String> {
    let statuses = order_statuses(order_db, &[id.to_owned()]).await?;
    statuses.get(id).cloned().with_context(|| format!("order {id} is not stored"))
}

/// The database's clock runs this far behind every service's: more than an
/// access token's life (15 min), so a token judged by a service's own clock
/// would be expired when issued.
const SKEW: &str = "-20m";
const SKEW_SECONDS: i64 = -1200;
/// A reservation's life in the skew test; far shorter than the skew.
const TTL_SECONDS: u64 = 30;

#[tokio::test]
async fn with_every_service_clock_twenty_minutes_off_the_databases_tokens_expiry_and_retries_stay_correct()
-> Result<()> {
    let _serial = SERIAL.lock().await;
    let library = faketime_library()?;
    let postgres = PrivatePostgres::init()?.with_clock_offset(&library, SKEW);
    postgres.start()?;
    let mut shop = Shop::new(infra_var("COMMERCE_KAFKA_BROKERS")?, postgres.admin_url())?;
    let ttl = format!("{TTL_SECONDS}s");
    let env = [
        ("COMMERCE_INVENTORY_RESERVATION_TTL", ttl.as_str()),
        ("COMMERCE_ORDER_RESERVATION_SWEEP_INTERVAL", "1s"),
    ];
    let result = async {
        shop.serve("shop", &Service::ALL, &env)?;
        shop.wait_ready(&Service::ALL, READY).await?;
        // The skew is real: the database's clock is twenty minutes behind.
        let order_db = shop.db(Service::Order).await?;
        let database_now: f64 = sqlx::query_scalar("SELECT extract(epoch FROM now())::float8")
            .fetch_one(&order_db)
            .await?;
        let skew = database_now as i64 - unix_now();
        ensure!((skew - SKEW_SECONDS).abs() < 60, "the database's clock is {skew} s off, not {SKEW_SECONDS}");

        // Tokens: stamped by the database's clock, so expired by every
        // service's own; the gateway judges them by the clock auth states
        // and accepts them, and refresh works.
        let admin = admin(&shop).await?;
        let products = seed_products(&admin, &shop.run, &[50, 50]).await?;
        let buyers = customers(&shop, 2).await?;
        let (issued, expiry) = issued_and_expiry(&buyers[0].token)?;
        ensure!(expiry - issued == 900, "an access token lives {} s, not 900", expiry - issued);
        ensure!(
            expiry < unix_now(),
            "the token is not stamped by the database's clock (it is not yet expired by this machine's)"
        );
        let orders = buyers[0].call(Method::GET, "/api/orders", None).await?;
        ensure!(orders.status.is_success(), "the gateway refused a fresh token: {} {}", orders.status, orders.body);
        let login = serde_json::json!({ "email": customer_email(&shop.run, 0), "password": CUSTOMER_PASSWORD });
        let pair = buyers[0].retrying(Method::POST, "/api/auth/login", Some(&login), None, READY).await?;
        let refresh = pair.body["tokens"]["refresh_token"].as_str().context("no refresh token")?.to_owned();
        let refresh = serde_json::json!({ "refresh_token": refresh });
        let refreshed = buyers[0].call(Method::POST, "/api/auth/refresh", Some(&refresh)).await?;
        ensure!(refreshed.status.is_success(), "refresh refused: {} {}", refreshed.status, refreshed.body);

        // Reservation expiry: with the provider away, an order holds its
        // stock for the reservation's life, no less (an order service
        // judging the expiry by its own clock would fail it at once) and
        // not much more.
        let payment_admin = shop.admin_url(Service::Payment);
        let switched = shop.http.post(format!("{payment_admin}/mock-provider/unavailable")).send().await?;
        ensure!(switched.status().is_success(), "switching the provider off: {}", switched.status());
        let placed_at = Instant::now();
        let lapsing = buyers[0].place_order(&[(&products[0], 1)], "tok_visa").await?;
        tokio::time::sleep(Duration::from_secs(TTL_SECONDS / 2)).await;
        let status = status_of(&order_db, &lapsing).await?;
        ensure!(
            matches!(status.as_str(), "PENDING" | "RESERVED"),
            "after {:?} of a {TTL_SECONDS} s reservation the order is {status}",
            placed_at.elapsed(),
        );
        wait_for("the unpaid order fails when its reservation lapses", Duration::from_secs(TTL_SECONDS + 20), || {
            let (order_db, lapsing) = (order_db.clone(), lapsing.clone());
            async move { Ok((status_of(&order_db, &lapsing).await? == "FAILED").then_some(())) }
        })
        .await?;
        let lapsed_after = placed_at.elapsed();
        ensure!(
            lapsed_after >= Duration::from_secs(TTL_SECONDS - 1),
            "the order failed after {lapsed_after:?}, before its {TTL_SECONDS} s reservation lapsed"
        );

        // Retries: a charge deferred while the provider is away is retried
        // within the retry cap (10 s) once it is back (a payment service
        // scheduling by its own clock would retry twenty minutes late).
        let deferred = buyers[1].place_order(&[(&products[1], 1)], "tok_visa").await?;
        let payment_db = shop.db(Service::Payment).await?;
        wait_for("the charge is attempted and deferred", Duration::from_secs(20), || {
            let (payment_db, deferred) = (payment_db.clone(), deferred.clone());
            async move {
                let attempts: Option<i32> = sqlx::query_scalar("SELECT attempts FROM payments WHERE order_id = $1")
                    .bind(&deferred)
                    .fetch_optional(&payment_db)
                    .await?;
                Ok(attempts.is_some_and(|attempts| attempts > 0).then_some(()))
            }
        })
        .await?;
        let switched = shop.http.post(format!("{payment_admin}/mock-provider/available")).send().await?;
        ensure!(switched.status().is_success(), "switching the provider on: {}", switched.status());
        let (_, confirmed_after) = wait_for("the deferred order is confirmed", Duration::from_secs(20), || {
            let (order_db, deferred) = (order_db.clone(), deferred.clone());
            async move { Ok((status_of(&order_db, &deferred).await? == "CONFIRMED").then_some(())) }
        })
        .await?;

        let mut ids = vec![lapsing.clone(), deferred.clone()];
        for n in 0..6 {
            ids.push(place_order_number(&buyers[n % 2], &products, n).await?);
        }
        let initial: HashMap<String, i64> = products.iter().cloned().zip([50, 50]).collect();
        let count = ids.len();
        shop.check_invariants(&Expect { orders: ids, initial_stock: initial }).await?;
        eprintln!(
            "FIGURE clock skew: every service's clock {} s ahead of the database's; access tokens accepted and \
             refreshed; an unpaid {TTL_SECONDS} s reservation lapsed after {lapsed_after:.1?}; a deferred charge \
             confirmed {confirmed_after:.1?} after the provider returned; {count} orders settled",
            -skew,
        );
        Ok(())
    }
    .await;
    shop.teardown().await;
    drop(postgres);
    result
}

/// Ports of the two-node cluster: node 1's broker and controller (its
/// listener for pods takes 61200), node 2's broker and its listener for pods.
const PAIR_PORTS: [u16; 4] = [61198, 61199, 61201, 61202];

/// The leader's node id per partition of every topic whose name starts with
/// `prefix`, as the cluster reached at `brokers` tells it (-1: none now).
async fn partition_leaders(brokers: &str, prefix: &str) -> Result<BTreeMap<(String, i32), i32>> {
    use rdkafka::consumer::{BaseConsumer, Consumer as _};
    let (brokers, prefix) = (brokers.to_owned(), prefix.to_owned());
    tokio::task::spawn_blocking(move || {
        let client: BaseConsumer =
            rdkafka::ClientConfig::new().set("bootstrap.servers", &brokers).create()?;
        let metadata = client.fetch_metadata(None, Duration::from_secs(10))?;
        let mut leaders = BTreeMap::new();
        for topic in metadata.topics().iter().filter(|topic| topic.name().starts_with(&prefix)) {
            for partition in topic.partitions() {
                leaders.insert((topic.name().to_owned(), partition.id()), partition.leader());
            }
        }
        Ok(leaders)
    })
    .await?
}

#[tokio::test]
async fn when_a_broker_dies_its_partitions_change_leader_and_every_order_still_settles() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let (first, second) = PrivateKafka::cluster_of_two(PAIR_PORTS)?;
    let brokers = format!("{},{}", first.brokers(), second.brokers());
    let mut shop = Shop::new(brokers, infra_var("COMMERCE_POSTGRES_ADMIN_URL")?)?;
    let result = async {
        shop.serve("shop", &Service::ALL, &[])?;
        shop.wait_ready(&Service::ALL, READY).await?;
        let admin = admin(&shop).await?;
        let stock = [60, 60, 8];
        let products = seed_products(&admin, &shop.run, &stock).await?;
        let initial: HashMap<String, i64> = products.iter().cloned().zip(stock).collect();
        let buyers = customers(&shop, 3).await?;
        let order_db = shop.db(Service::Order).await?;
        let payment_db = shop.db(Service::Payment).await?;

        // Every topic of the shop has a replica on each broker; broker 2
        // leads some of their partitions.
        let prefix = shop.kafka_prefix();
        let leaders = partition_leaders(&first.brokers(), &prefix).await?;
        let led_by_second: Vec<(String, i32)> = leaders
            .iter()
            .filter(|(_, leader)| **leader == 2)
            .map(|(partition, _)| partition.clone())
            .collect();
        ensure!(!led_by_second.is_empty(), "broker 2 leads none of the shop's partitions: {leaders:?}");

        // Broker 2 dies (SIGKILL) with orders in flight; the controller
        // moves its partitions' leadership to broker 1.
        let wave1 = spawn_wave(&buyers, &products, 12, 0);
        let seen =
            wait_in_flight("killing broker 2", &order_db, &payment_db, |seen| seen.open_orders > 0).await?;
        second.kill()?;
        let killed = Instant::now();
        let (_, moved) =
            wait_for("broker 2's partitions led by broker 1", Duration::from_secs(90), || async {
                let now = partition_leaders(&first.brokers(), &prefix).await?;
                Ok(led_by_second.iter().all(|partition| now.get(partition) == Some(&1)).then_some(()))
            })
            .await?;
        eprintln!(
            "killed broker 2 with {seen:?}; leadership of {} of the shop's {} partitions moved to broker 1 \
             after {moved:.1?}",
            led_by_second.len(),
            leaders.len()
        );
        // Orders keep coming while broker 2 is away, and after it is back.
        let mut ids = wave1.await??;
        ids.extend(place_orders(&buyers, &products, 12, 12).await?);
        second.up()?;
        ids.extend(place_orders(&buyers, &products, 8, 24).await?);
        let count = ids.len();
        let expect = Expect { orders: ids, initial_stock: initial };
        let settled = settle_and_cancel(&mut shop, &buyers, &expect, killed).await?;
        eprintln!(
            "FIGURE partition leadership: {} partitions changed leader {moved:.1?} after broker 2's kill; {} \
             orders settled {:.1?} after it: {:?}",
            led_by_second.len(),
            count,
            settled.after,
            settled.by_status
        );
        Ok(())
    }
    .await;
    shop.teardown().await;
    drop(second);
    drop(first);
    result
}
