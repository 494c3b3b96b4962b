//! What the fault tests (tests/chaos.rs, tests/chaos_scale.rs) add to the
//! shared support: a shop split into processes of the `commerce` binary
//! ([`Shop`]), so that a test can kill, restart or double one part of it,
//! and the drivers of the saga under faults (customers, waves of orders,
//! what is in flight at a moment, settling and cancelling).
//!
//! Isolation: each shop has its own run id ([`new_run_id`]) naming its
//! databases (`chaos_<run>_<service>`), topic and consumer-group prefix
//! (`chaos-<run>.`) and Redis prefix (`chaos.<run>`), and a private port
//! offset; the shared Postgres, Kafka and Redis are used but never
//! disturbed. Every process is a [`Proc`], a child of the test stopped by
//! its PID.
//!
//! The invariants are the general ones (`super::invariants`), checked on the
//! whole private shop with what the test placed and stocked
//! ([`Shop::check_invariants`]).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use commerce_topology::{LOCAL_HTTP_PORT, Service};
use reqwest::{Method, StatusCode};
use serde_json::json;
use sqlx::postgres::{PgPool, PgPoolOptions};

use super::api::{Api, Client};
use super::invariants::{Databases, Expect, SETTLED, check_expected, order_statuses};
use super::procs::{Proc, STATE_DIR};
use super::shop::{
    ADMIN_EMAIL, ADMIN_PASSWORD, binary_path, drop_topics_matching, infra_var, new_run_id, ports_free,
};
use super::wait_for;

/// How long the saga may take to settle after the last fault.
pub const SETTLE: Duration = Duration::from_secs(180);

/// Serialises the tests of a fault-test binary: each runs a whole shop, and
/// two at once on two cores would turn timing margins into flakes.
pub static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Port offsets start here: gRPC ports land on 62051 and above, beyond the
/// kernel's ephemeral range (32768-60999), so a restarted service can bind
/// its port again even while other tests open many outgoing connections;
/// admin ports on 21101+, the gateway on 20080+.
const PORT_OFFSET_BASE: u16 = 12000;
/// Next port-offset slot, so that consecutive shops never reuse ports that a
/// stopping process may still hold.
static NEXT_SLOT: AtomicU16 = AtomicU16::new(0);

/// One shop: a port offset, database/topic/Redis prefixes, and the processes
/// serving it.
pub struct Shop {
    pub run: String,
    pub offset: u16,
    pub postgres_admin_url: String,
    pub kafka_brokers: String,
    pub redis_url: String,
    pub procs: Vec<Proc>,
    pub http: reqwest::Client,
    pools: HashMap<Service, PgPool>,
}

impl Shop {
    /// A shop on a free port offset whose services use `kafka_brokers` and
    /// `postgres_admin_url` (the shared Redis always).
    pub fn new(kafka_brokers: String, postgres_admin_url: String) -> Result<Self> {
        std::fs::create_dir_all(PathBuf::from(STATE_DIR).join("ledgers"))?;
        let offset = (0..40)
            .map(|_| PORT_OFFSET_BASE + 20 * (NEXT_SLOT.fetch_add(1, Ordering::Relaxed) % 40))
            .find(|offset| ports_free(*offset))
            .context("no free port offset for a private shop")?;
        Ok(Self {
            run: new_run_id(),
            offset,
            postgres_admin_url,
            kafka_brokers,
            redis_url: infra_var("COMMERCE_REDIS_URL")?,
            procs: Vec::new(),
            http: reqwest::Client::builder().timeout(Duration::from_secs(15)).no_proxy().build()?,
            pools: HashMap::new(),
        })
    }

    pub fn database_prefix(&self) -> String {
        format!("chaos_{}_", self.run)
    }

    /// Prefix of the shop's topics and consumer groups.
    pub fn kafka_prefix(&self) -> String {
        format!("chaos-{}.", self.run)
    }

    pub fn redis_prefix(&self) -> String {
        format!("chaos.{}", self.run)
    }

    /// The shop's databases, and the mock provider's journal, for the
    /// invariants.
    pub fn databases(&self) -> Databases {
        Databases::new(&self.postgres_admin_url, &self.database_prefix()).with_mock_ledger(self.ledger_path())
    }

    pub fn grpc_port(&self, service: Service) -> u16 {
        let port = service.local_ports().grpc.unwrap_or_else(|| panic!("{service} serves no gRPC"));
        port + self.offset
    }

    pub fn admin_url(&self, service: Service) -> String {
        format!("http://127.0.0.1:{}", service.local_ports().admin + self.offset)
    }

    pub fn gateway_url(&self) -> String {
        format!("http://127.0.0.1:{}", LOCAL_HTTP_PORT + self.offset)
    }

    /// A client of the shop's gateway.
    pub fn api(&self) -> Api {
        Api { base: self.gateway_url(), http: self.http.clone(), shop: self.run.clone() }
    }

    fn log_path(&self, name: &str) -> PathBuf {
        PathBuf::from(STATE_DIR).join("logs").join(format!("{}-{name}.log", self.run))
    }

    /// The mock payment provider's journal (`--mock-ledger-file`): what
    /// money it took, voided and refunded, kept across the payment
    /// process's crashes and read by [`Shop::check_invariants`].
    pub fn ledger_path(&self) -> PathBuf {
        PathBuf::from(STATE_DIR).join("ledgers").join(format!("{}.jsonl", self.run))
    }

    /// The environment every process of this shop gets.
    fn base_env(&self) -> Vec<(String, String)> {
        vec![
            ("COMMERCE_MOCK_LEDGER_FILE".into(), self.ledger_path().display().to_string()),
            ("COMMERCE_BOOTSTRAP_ADMIN_EMAIL".into(), ADMIN_EMAIL.into()),
            ("COMMERCE_BOOTSTRAP_ADMIN_PASSWORD".into(), ADMIN_PASSWORD.into()),
            ("COMMERCE_REDIS_KEY_PREFIX".into(), self.redis_prefix()),
            // The saga tests place orders fast from one IP.
            ("COMMERCE_RATELIMIT_DEFAULT_PER_MINUTE".into(), "0".into()),
            ("COMMERCE_RATELIMIT_AUTH_PER_MINUTE".into(), "0".into()),
        ]
    }

    /// `commerce serve all --services=<services>` on this shop's wiring, as
    /// process `name`; `env` overrides the base environment. Returns its index.
    pub fn serve(&mut self, name: &str, services: &[Service], env: &[(&str, &str)]) -> Result<usize> {
        let services: Vec<&str> = services.iter().map(|service| service.name()).collect();
        let args = vec![
            "serve".to_owned(),
            "all".to_owned(),
            format!("--services={}", services.join(",")),
            format!("--postgres-admin-url={}", self.postgres_admin_url),
            format!("--kafka-brokers={}", self.kafka_brokers),
            format!("--redis-url={}", self.redis_url),
            format!("--kafka-name-prefix={}", self.kafka_prefix()),
            format!("--database-prefix={}", self.database_prefix()),
            format!("--port-offset={}", self.offset),
            "--log-format=json".to_owned(),
        ];
        self.spawn(name, args, env)
    }

    /// A process of `commerce <args>` with this shop's environment.
    pub fn spawn(&mut self, name: &str, args: Vec<String>, env: &[(&str, &str)]) -> Result<usize> {
        let mut envs = self.base_env();
        for (key, value) in env {
            envs.retain(|(k, _)| k != key);
            envs.push(((*key).to_owned(), (*value).to_owned()));
        }
        let proc = Proc::spawn(name, &binary_path()?, args, envs, self.log_path(name))?;
        self.procs.push(proc);
        Ok(self.procs.len() - 1)
    }

    /// The ends of every process log, for failure messages.
    pub fn logs(&self, lines: usize) -> String {
        self.procs.iter().map(|proc| proc.log_tail(lines)).collect::<Vec<_>>().join("\n")
    }

    /// GET `url`: status and body, or the connection error as text.
    pub async fn get(&self, url: &str) -> std::result::Result<(StatusCode, String), String> {
        match self.http.get(url).timeout(Duration::from_secs(3)).send().await {
            Ok(response) => {
                let status = response.status();
                Ok((status, response.text().await.unwrap_or_default()))
            }
            Err(error) => Err(error.to_string()),
        }
    }

    /// Waits until `/readyz` of every one of `services` answers 200.
    pub async fn wait_ready(&mut self, services: &[Service], timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        for service in services {
            let url = format!("{}/readyz", self.admin_url(*service));
            loop {
                let last = self.get(&url).await;
                if matches!(last, Ok((StatusCode::OK, _))) {
                    break;
                }
                if Instant::now() > deadline {
                    bail!("{service} not ready within {timeout:?}: {last:?}\n{}", self.logs(15));
                }
                if let Some(proc) = self.procs.iter_mut().find_map(|proc| proc.exited().then_some(proc)) {
                    bail!("{} exited while waiting for {service}:\n{}", proc.name, proc.log_tail(15));
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        Ok(())
    }

    /// A pool on `service`'s database, kept for the shop's life.
    pub async fn db(&mut self, service: Service) -> Result<PgPool> {
        if let Some(pool) = self.pools.get(&service) {
            return Ok(pool.clone());
        }
        let pool = PgPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(Duration::from_secs(10))
            .connect(&self.databases().url(service))
            .await
            .with_context(|| format!("cannot connect to {service}'s database"))?;
        self.pools.insert(service, pool.clone());
        Ok(pool)
    }

    /// Waits until the whole shop is quiet and holds `expect` (see
    /// [`check_expected`]), each wait bounded by [`SETTLE`]; the error lists
    /// every violation, then the end of each process's log.
    pub async fn check_invariants(&self, expect: &Expect) -> Result<()> {
        check_expected(&self.databases(), expect, SETTLE).await.with_context(|| {
            format!("the shop's invariants do not hold; the end of each process's log:\n{}", self.logs(20))
        })
    }

    /// Stops every process gracefully and drops the shop's databases and
    /// topics.
    pub async fn teardown(mut self) {
        for proc in self.procs.iter_mut().rev() {
            proc.stop(Duration::from_secs(20));
        }
        let prefix = self.kafka_prefix();
        if let Err(error) =
            drop_topics_matching(&self.kafka_brokers, |topic| topic.starts_with(&prefix)).await
        {
            eprintln!("cannot delete this shop's topics: {error:#}");
        }
        for (_, pool) in self.pools.drain() {
            pool.close().await;
        }
        if let Ok(admin) = PgPoolOptions::new().max_connections(1).connect(&self.postgres_admin_url).await {
            let databases = self.databases();
            for service in Service::ALL.into_iter().filter(|service| service.spec().database) {
                let name = databases.name(service);
                let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                    .execute(&admin)
                    .await;
            }
            admin.close().await;
        }
        let _ = std::fs::remove_file(self.ledger_path());
    }
}

/// The email of customer `i` of the shop of run `run`.
pub fn customer_email(run: &str, i: usize) -> String {
    format!("customer{i}-{run}@example.test")
}

/// The password of every customer of [`customers`].
pub const CUSTOMER_PASSWORD: &str = "correct-horse-battery";

/// `count` freshly registered customers of `shop`.
pub async fn customers(shop: &Shop, count: usize) -> Result<Vec<Client>> {
    let api = shop.api();
    let mut clients = Vec::new();
    for i in 0..count {
        clients.push(Client::session(&api, &customer_email(&shop.run, i), CUSTOMER_PASSWORD, true).await?);
    }
    Ok(clients)
}

/// The shop's bootstrap admin, logged in.
pub async fn admin(shop: &Shop) -> Result<Client> {
    Client::session(&shop.api(), ADMIN_EMAIL, ADMIN_PASSWORD, false).await
}

/// Creates a category and one product per entry of `stock`, restocked to
/// that many units; returns the product ids in order.
pub async fn seed_products(admin: &Client, run: &str, stock: &[i64]) -> Result<Vec<String>> {
    let t = Duration::from_secs(30);
    let category = json!({ "name": "Chaos", "slug": format!("chaos-{run}") });
    let category = admin.retrying(Method::POST, "/api/admin/categories", Some(&category), None, t).await?;
    let category = category.body["id"].as_str().context("category id")?.to_owned();
    let mut ids = Vec::new();
    for (i, units) in stock.iter().enumerate() {
        let product = json!({
            "sku": format!("CHAOS-{run}-{i}"), "name": format!("Chaos item {i}"),
            "category_id": category, "price": { "currency": "EUR", "amount_minor": 1000 + 250 * i as i64 },
        });
        let product = admin.retrying(Method::POST, "/api/admin/products", Some(&product), None, t).await?;
        let id = product.body["id"].as_str().context("product id")?.to_owned();
        let restock = json!({ "quantity": units });
        let path = format!("/api/admin/inventory/{id}/restock");
        admin.retrying(Method::POST, &path, Some(&restock), None, t).await?;
        ids.push(id);
    }
    Ok(ids)
}

/// Places orders number `seed..seed + count` concurrently (order n by
/// customer n % customers; see [`place_order_number`]).
pub async fn place_orders(
    customers: &[Client],
    products: &[String],
    count: usize,
    seed: usize,
) -> Result<Vec<String>> {
    let mut handles = Vec::new();
    for n in seed..seed + count {
        let client = customers[n % customers.len()].clone();
        let products = products.to_vec();
        handles.push(tokio::spawn(async move { place_order_number(&client, &products, n).await }));
    }
    let mut ids = Vec::new();
    for handle in handles {
        ids.push(handle.await??);
    }
    Ok(ids)
}

/// [`place_orders`] in a task of its own.
pub fn spawn_wave(
    buyers: &[Client],
    products: &[String],
    count: usize,
    seed: usize,
) -> tokio::task::JoinHandle<Result<Vec<String>>> {
    let (buyers, products) = (buyers.to_vec(), products.to_vec());
    tokio::spawn(async move { place_orders(&buyers, &products, count, seed).await })
}

/// Places order number `n` for `client`: one or two lines over `products`
/// (chosen by `n`), every 7th paid with the mock's declined token, so some
/// orders fail and release their stock. Returns its id.
pub async fn place_order_number(client: &Client, products: &[String], n: usize) -> Result<String> {
    let first = &products[n % products.len()];
    let second = &products[(n + 1) % products.len()];
    let token = if n % 7 == 3 { "tok_decline" } else { "tok_visa" };
    let lines: Vec<(&str, i64)> =
        if n.is_multiple_of(3) { vec![(first, 1), (second, 2)] } else { vec![(first, 1 + (n % 2) as i64)] };
    client.place_order(&lines, token).await
}

/// Waits for the saga to settle and checks the invariants; then cancels a
/// few confirmed orders and checks again (refunds, restock). Returns how
/// long the first settling took from `started`, and the orders by status.
pub async fn settle_and_cancel(
    shop: &mut Shop,
    buyers: &[Client],
    expect: &Expect,
    started: Instant,
) -> Result<Settled> {
    let ids = &expect.orders;
    shop.check_invariants(expect).await?;
    let settled = started.elapsed();
    let order_db = shop.db(Service::Order).await?;
    let statuses = order_statuses(&order_db, ids).await?;
    // Order n was placed by customer n % buyers (ids are in placing order).
    let confirmed: Vec<(usize, &String)> =
        ids.iter().enumerate().filter(|(_, id)| statuses[*id] == "CONFIRMED").take(3).collect();
    ensure!(!confirmed.is_empty(), "no order was confirmed: {statuses:?}");
    for (n, id) in &confirmed {
        let reason = json!({ "reason": "chaos" });
        let path = format!("/api/orders/{id}/cancel");
        buyers[n % buyers.len()]
            .retrying(Method::POST, &path, Some(&reason), None, Duration::from_secs(30))
            .await?;
    }
    // Compensations are asynchronous: wait until each cancelled order shows
    // its refund and inventory has taken its committed stock back.
    let cancelled: Vec<String> = confirmed.iter().map(|(_, id)| (*id).clone()).collect();
    let inventory_db = shop.db(Service::Inventory).await?;
    wait_for("cancelled orders refunded and restocked", SETTLE, || async {
        let refunded: i64 =
            sqlx::query_scalar("SELECT count(*) FROM orders WHERE id::text = ANY($1) AND refunded")
                .bind(&cancelled)
                .fetch_one(&order_db)
                .await?;
        let restocked: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM reservations WHERE order_id = ANY($1) AND status = 'RELEASED'",
        )
        .bind(&cancelled)
        .fetch_one(&inventory_db)
        .await?;
        Ok((refunded == cancelled.len() as i64 && restocked == cancelled.len() as i64).then_some(()))
    })
    .await
    .with_context(|| shop.logs(20))?;
    shop.check_invariants(expect).await.context("after the cancellations")?;
    let statuses = order_statuses(&order_db, ids).await?;
    let mut by_status: BTreeMap<String, usize> = BTreeMap::new();
    for status in statuses.values() {
        *by_status.entry(status.clone()).or_default() += 1;
    }
    eprintln!("{} orders settled {settled:?} after the clock started: {by_status:?}", ids.len());
    ensure!(by_status.get("CANCELLED").copied().unwrap_or(0) >= confirmed.len(), "{by_status:?}");
    Ok(Settled { after: settled, by_status, cancelled_after_payment: cancelled.len() })
}

/// What [`settle_and_cancel`] saw.
#[derive(Debug)]
pub struct Settled {
    /// From the caller's start instant to every invariant holding.
    pub after: Duration,
    /// The orders by status at the end.
    pub by_status: BTreeMap<String, usize>,
    /// Confirmed orders cancelled afterwards (each refunded and restocked).
    pub cancelled_after_payment: usize,
}

/// What the saga had in flight at a moment.
#[derive(Debug, Clone, Copy)]
pub struct InFlight {
    /// Orders accepted and not yet settled (the saga is working on them).
    pub open_orders: i64,
    /// Payments due for their charge (intent and stock both recorded).
    pub payments_due: i64,
}

/// Reads what is in flight now, from the order and payment databases.
pub async fn in_flight(order_db: &PgPool, payment_db: &PgPool) -> Result<InFlight> {
    let open_orders = sqlx::query_scalar("SELECT count(*) FROM orders WHERE NOT (status = ANY($1))")
        .bind(SETTLED.map(str::to_owned).to_vec())
        .fetch_one(order_db)
        .await?;
    let payments_due = sqlx::query_scalar(
        "SELECT count(*) FROM payments WHERE status = 'PENDING' AND intent_received AND stock_reserved",
    )
    .fetch_one(payment_db)
    .await?;
    Ok(InFlight { open_orders, payments_due })
}

/// Waits (up to 20 s, polling every 20 ms) until `hit` says a kill now
/// would hit work in flight, and returns what was; fails naming `what` if
/// that never happens, so a fault test's kill that hits nothing cannot pass.
pub async fn wait_in_flight(
    what: &str,
    order_db: &PgPool,
    payment_db: &PgPool,
    mut hit: impl FnMut(&InFlight) -> bool,
) -> Result<InFlight> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let seen = in_flight(order_db, payment_db).await?;
        if hit(&seen) {
            return Ok(seen);
        }
        if Instant::now() > deadline {
            bail!("{what}: nothing in flight within 20 s ({seen:?})");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
