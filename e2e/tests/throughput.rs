//! Benchmark, not a test: a closed loop of checkouts through the gateway,
//! printing orders per second and the RSS of `commerce serve all` idle and
//! under that load. Figures on a noisy 2-core machine vary from run to run,
//! so it asserts only that the orders it placed were confirmed and that the
//! invariants hold; it is `#[ignore]`d and run explicitly:
//!
//! ```sh
//! source e2e/infra.env
//! cargo test -p commerce-e2e --test throughput -- --ignored --nocapture
//! ```
//!
//! `COMMERCE_BIN` points them at another `commerce` binary (a release
//! build: the figures of issue 8 are a release build's).

mod support;

use std::time::{Duration, Instant};

use anyhow::Context as _;
use support::api::{Api, Session};
use support::bench::{Target, report};
use support::invariants::{Databases, assert_invariants};
use support::shop::{Shop, ShopOptions};

/// Concurrent customers, each placing an order and waiting for it to be
/// confirmed before placing the next (a closed loop), unless
/// `COMMERCE_BENCH_CUSTOMERS` says otherwise.
const CUSTOMERS: usize = 8;
/// pgbench's connections when it measures the Postgres commit ceiling.
const PGBENCH_CLIENTS: usize = 8;
/// How long pgbench runs.
const PGBENCH_SECONDS: u32 = 10;
/// How long the loop runs after warm-up.
const MEASURE_FOR: Duration = Duration::from_secs(30);
/// How long the closed loop runs before it is measured ([`warm_up`]).
const WARM_UP_FOR: Duration = Duration::from_secs(15);
/// The pause between the warm-up and the measurement.
const SETTLE_AFTER_WARM_UP: Duration = Duration::from_secs(3);
const CARD_OK: &str = "tok_visa";

/// Resident set size of `pid` in KiB, from /proc.
fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|line| line.starts_with("VmRSS:"))
        .ok_or_else(|| anyhow::anyhow!("no VmRSS for pid {pid}"))?;
    Ok(line.split_whitespace().nth(1).unwrap_or("0").parse()?)
}

/// A count from the environment variable `name`, or `default`.
fn env_count(name: &str, default: usize) -> anyhow::Result<usize> {
    match std::env::var(name) {
        Ok(count) => count.parse().with_context(|| format!("{name}={count} is not a count")),
        Err(_) => Ok(default),
    }
}

/// Commits in the shop's databases so far (every transaction, reads
/// included), from Postgres' statistics.
async fn commits(databases: &Databases) -> anyhow::Result<i64> {
    let pool = sqlx::PgPool::connect(&databases.admin_url).await?;
    let commits = sqlx::query_scalar(
        "SELECT coalesce(sum(xact_commit), 0)::bigint FROM pg_stat_database WHERE starts_with(datname, $1)",
    )
    .bind(&databases.prefix)
    .fetch_one(&pool)
    .await?;
    pool.close().await;
    Ok(commits)
}

/// Commits per second of pgbench inserting one row per transaction from
/// [`PGBENCH_CLIENTS`] connections into the same Postgres: the ceiling the
/// shop's commits are compared with. Uses a database of its own, dropped
/// afterwards.
async fn pgbench_single_insert_commits_per_second(admin_url: &str) -> anyhow::Result<f64> {
    const DATABASE: &str = "commerce_bench_pgbench";
    let admin = sqlx::PgPool::connect(admin_url).await?;
    sqlx::query(&format!("DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")).execute(&admin).await?;
    sqlx::query(&format!("CREATE DATABASE {DATABASE}")).execute(&admin).await?;
    let (server, _) = admin_url.rsplit_once('/').context("the admin URL names a database")?;
    let url = format!("{server}/{DATABASE}");
    let bench = sqlx::PgPool::connect(&url).await?;
    sqlx::query(
        "CREATE TABLE inserts (id bigserial PRIMARY KEY, created_at timestamptz NOT NULL DEFAULT now())",
    )
    .execute(&bench)
    .await?;
    bench.close().await;
    let script = std::env::temp_dir().join(format!("commerce-pgbench-{}.sql", std::process::id()));
    std::fs::write(&script, "INSERT INTO inserts DEFAULT VALUES;\n")?;
    let output = tokio::process::Command::new("pgbench")
        .args(["--no-vacuum", "--client", &PGBENCH_CLIENTS.to_string(), "--jobs", "2"])
        .args(["--time", &PGBENCH_SECONDS.to_string(), "--file"])
        .arg(&script)
        .arg(&url)
        .output()
        .await
        .context("cannot run pgbench (Debian package postgresql-client)")?;
    let _ = std::fs::remove_file(&script);
    sqlx::query(&format!("DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")).execute(&admin).await?;
    admin.close().await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    anyhow::ensure!(
        output.status.success(),
        "pgbench failed: {}{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
        .lines()
        .find_map(|line| line.strip_prefix("tps = "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|tps| tps.parse().ok())
        .with_context(|| format!("no tps in pgbench's output: {stdout}"))
}

async fn customer_loop(api: &Api, customer: &Session, product: &str, until: Instant) -> anyhow::Result<u64> {
    let mut confirmed = 0;
    while Instant::now() < until {
        let id = api.order(customer, &[(product, 1)], CARD_OK).await?;
        api.wait_order(customer, &id, "confirmed").await?;
        confirmed += 1;
    }
    Ok(confirmed)
}

/// A product with 10,000 in stock and `count` registered customers named
/// `<prefix><n>`.
async fn product_and_customers(
    api: &Api,
    prefix: &str,
    count: usize,
) -> anyhow::Result<(String, Vec<Session>)> {
    let admin = api.admin().await?;
    let category = api.create_category(&admin, "Bench").await?;
    let product = api.create_product(&admin, &category, "Bench widget", 1000, 10_000).await?;
    let mut customers = Vec::with_capacity(count);
    for index in 0..count {
        customers.push(api.register_customer(&format!("{prefix}{index}")).await?);
    }
    Ok((product, customers))
}

/// The closed loop for [`WARM_UP_FOR`], then `VACUUM (ANALYZE)` in every database
/// of the shop, so that what is measured is a shop in its steady state:
/// connections, caches and consumer groups exist, the tables hold some
/// history, and Postgres plans with statistics that describe them.
///
/// Without it the measured window ran on plans made for tables of a few
/// rows: autovacuum analyzed them early in the run (their first 50 changes),
/// a prepared statement's cached generic plan then scanned the whole table
/// instead of its primary key (41 blocks per `SELECT ... FROM orders WHERE
/// id = $1` and 211 per outbox `UPDATE ... WHERE id = ANY($1)` in
/// pg_stat_statements, against 3 with an index scan), and the next analyze
/// came after the window (autovacuum wakes once a minute).
async fn warm_up(
    api: &Api,
    databases: &Databases,
    customers: &[Session],
    product: &str,
) -> anyhow::Result<u64> {
    let until = Instant::now() + WARM_UP_FOR;
    let loops = customers.iter().map(|customer| customer_loop(api, customer, product, until));
    let orders = futures::future::try_join_all(loops).await?.iter().sum();
    let admin = sqlx::PgPool::connect(&databases.admin_url).await?;
    let names: Vec<String> =
        sqlx::query_scalar("SELECT datname FROM pg_database WHERE starts_with(datname, $1) ORDER BY datname")
            .bind(&databases.prefix)
            .fetch_all(&admin)
            .await?;
    admin.close().await;
    let options: sqlx::postgres::PgConnectOptions = databases.admin_url.parse()?;
    for name in names {
        let mut connection = sqlx::ConnectOptions::connect(&options.clone().database(&name)).await?;
        // VACUUM too: autovacuum would otherwise clear the warm-up's dead
        // rows during the measured window.
        sqlx::query("VACUUM (ANALYZE)")
            .execute(&mut connection)
            .await
            .with_context(|| format!("VACUUM (ANALYZE) in {name}"))?;
        sqlx::Connection::close(connection).await?;
    }
    // The consumers that trail the saga (notifications, analytics, search)
    // finish the warm-up's events.
    tokio::time::sleep(SETTLE_AFTER_WARM_UP).await;
    Ok(orders)
}

#[tokio::test]
#[ignore = "benchmark: prints figures; run with --ignored --nocapture"]
async fn closed_loop_checkouts_per_second_and_memory_of_serve_all() -> anyhow::Result<()> {
    let customers = env_count("COMMERCE_BENCH_CUSTOMERS", CUSTOMERS)?;
    let shop = Shop::start(ShopOptions::default()).await?;
    let api = Api::new(&shop);
    let (product, customers) = product_and_customers(&api, "bench", customers).await?;
    // Idle: everything started, nothing in flight.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle_rss = rss_kib(shop.pid)?;

    let warm_up_orders = warm_up(&api, &shop.databases, &customers, &product).await?;
    println!("FIGURE warm-up: {warm_up_orders} orders confirmed in {WARM_UP_FOR:?}, then VACUUM (ANALYZE)");
    // Statistics reach pg_stat_database within a second of a commit.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let commits_before = commits(&shop.databases).await?;

    let started = Instant::now();
    let until = started + MEASURE_FOR;
    let loops = customers.iter().map(|customer| customer_loop(&api, customer, &product, until));
    let sampler = async {
        let mut peak = 0;
        while Instant::now() < until {
            peak = peak.max(rss_kib(shop.pid).unwrap_or(0));
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        peak
    };
    let (results, peak_rss) = tokio::join!(futures::future::join_all(loops), sampler);
    let elapsed = started.elapsed().as_secs_f64();
    let confirmed: u64 = results.into_iter().collect::<anyhow::Result<Vec<_>>>()?.iter().sum();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let commits_per_order =
        (commits(&shop.databases).await? - commits_before) as f64 / confirmed.max(1) as f64;
    let orders_per_second = confirmed as f64 / elapsed;
    // The shop is idle now: pgbench has the machine to itself.
    let pgbench = pgbench_single_insert_commits_per_second(&shop.databases.admin_url).await?;

    println!("FIGURE shop cold start: {:.1} s", shop.cold_start.as_secs_f64());
    println!(
        "FIGURE closed loop: {} customers, {confirmed} orders confirmed in {elapsed:.1} s = {orders_per_second:.1} orders/s",
        customers.len()
    );
    println!(
        "FIGURE commerce serve all RSS: idle {:.0} MiB, peak under load {:.0} MiB",
        idle_rss as f64 / 1024.0,
        peak_rss as f64 / 1024.0
    );
    report(
        "orders_per_second_vs_postgres",
        orders_per_second / (pgbench / commits_per_order),
        Target::AtLeast(0.50),
        &format!(
            "{orders_per_second:.1} confirmed orders/s ({} customers in a closed loop) / \
             (pgbench {pgbench:.0} single-INSERT commits/s / {commits_per_order:.1} Postgres commits per order)",
            customers.len()
        ),
    );
    println!("BENCH_ORDERS_PER_SECOND\t{orders_per_second}");
    assert!(confirmed > 0, "no order was confirmed in {MEASURE_FOR:?}");
    assert_invariants(&shop.databases).await;
    shop.stop()?;
    Ok(())
}

/// Registrations in [`the_shop_rss_after_many_registrations_is_printed`],
/// unless `COMMERCE_BENCH_REGISTRATIONS` says otherwise.
const REGISTRATIONS: usize = 1000;

/// Each registration hashes a password with argon2id, which works through
/// 9 MiB (19 MiB before); the process must not keep those work areas (it
/// once held 1.4 GiB after 100 registrations).
#[tokio::test]
#[ignore = "benchmark: prints figures; run with --ignored --nocapture"]
async fn the_shop_rss_after_many_registrations_is_printed() -> anyhow::Result<()> {
    let registrations = match std::env::var("COMMERCE_BENCH_REGISTRATIONS") {
        Ok(count) => count.parse()?,
        Err(_) => REGISTRATIONS,
    };
    let shop = Shop::start(ShopOptions::default()).await?;
    let api = Api::new(&shop);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle_rss = rss_kib(shop.pid)?;
    let started = Instant::now();
    let mut peak = idle_rss;
    // Four at a time, as a burst of sign-ups would arrive; the client
    // itself lets two password calls through at once.
    for batch in (0..registrations).collect::<Vec<_>>().chunks(4) {
        let names: Vec<String> = batch.iter().map(|index| format!("rss{index}")).collect();
        let sessions = names.iter().map(|name| api.register_customer(name));
        for session in futures::future::join_all(sessions).await {
            session?;
        }
        peak = peak.max(rss_kib(shop.pid)?);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let after = rss_kib(shop.pid)?;
    println!(
        "FIGURE commerce serve all RSS: idle {:.1} MiB; after {registrations} registrations {:.1} MiB \
         (peak sampled {:.1} MiB); {:.1} registrations/s",
        idle_rss as f64 / 1024.0,
        after as f64 / 1024.0,
        peak as f64 / 1024.0,
        registrations as f64 / elapsed
    );
    // Unused hashing memory is freed 30 s after its last use (checked
    // every 7.5 s): what the shop holds once the burst is over.
    tokio::time::sleep(Duration::from_secs(40)).await;
    let settled = rss_kib(shop.pid)?;
    report(
        "rss_after_registrations_mib",
        after as f64 / 1024.0,
        Target::AtMost(96.0),
        &format!("RSS of `commerce serve all` after {registrations} registrations (argon2id each)"),
    );
    report(
        "idle_rss_mib",
        settled as f64 / 1024.0,
        Target::AtMost(64.0),
        &format!(
            "RSS of `commerce serve all` idle: 40 s after its last request, {registrations} users signed up \
             ({:.1} MiB 2 s after start)",
            idle_rss as f64 / 1024.0
        ),
    );
    shop.stop()?;
    Ok(())
}

/// Orders per second in [`saga_latency_from_order_created_to_order_confirmed_is_printed`],
/// unless `COMMERCE_BENCH_ORDER_RATE` says otherwise: about half of what
/// the closed loop above sustains here.
const ORDER_RATE: u32 = 20;
/// How long orders arrive at that rate.
const ARRIVALS_FOR: Duration = Duration::from_secs(30);

/// The saga's latency as the order service sees it: from the order's
/// creation to the commit of its `OrderConfirmed` (both timestamps taken
/// by Postgres in the order database: `orders.created_at` and the outbox
/// row's `created_at`), with orders arriving at a steady rate (an open
/// loop, so a slow saga does not slow the arrivals down).
#[tokio::test]
#[ignore = "benchmark: prints figures; run with --ignored --nocapture"]
async fn saga_latency_from_order_created_to_order_confirmed_is_printed() -> anyhow::Result<()> {
    let rate = match std::env::var("COMMERCE_BENCH_ORDER_RATE") {
        Ok(rate) => rate.parse()?,
        Err(_) => ORDER_RATE,
    };
    anyhow::ensure!(rate > 0, "COMMERCE_BENCH_ORDER_RATE must be at least 1");
    let shop = Shop::start(ShopOptions::default()).await?;
    let api = Api::new(&shop);
    let (product, customers) = product_and_customers(&api, "latency", CUSTOMERS).await?;
    let warm_up_orders = warm_up(&api, &shop.databases, &customers, &product).await?;
    println!("FIGURE warm-up: {warm_up_orders} orders confirmed in {WARM_UP_FOR:?}, then VACUUM (ANALYZE)");

    let mut ticks = tokio::time::interval(Duration::from_secs(1) / rate);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let until = Instant::now() + ARRIVALS_FOR;
    let mut placing = Vec::new();
    let mut index = 0;
    while Instant::now() < until {
        ticks.tick().await;
        let customer = customers[index % customers.len()].clone();
        let (api, product) = (api.clone(), product.clone());
        placing.push(tokio::spawn(async move { api.order(&customer, &[(&product, 1)], CARD_OK).await }));
        index += 1;
    }
    let mut placed = Vec::with_capacity(placing.len());
    for order in placing {
        placed.push(order.await??);
    }
    let pool = shop.databases.pool(commerce_topology::Service::Order).await?;
    let deadline = Instant::now() + Duration::from_secs(120);
    let latencies_ms: Vec<f64> = loop {
        let rows: Vec<(f64,)> = sqlx::query_as(
            "SELECT EXTRACT(EPOCH FROM (ob.created_at - o.created_at))::float8 * 1000 \
             FROM orders o JOIN commerce_platform.outbox ob \
               ON ob.key = o.id::text AND ob.event_type = 'commerce.events.v1.OrderConfirmed' \
             WHERE o.id::text = ANY($1)",
        )
        .bind(&placed)
        .fetch_all(&pool)
        .await?;
        if rows.len() >= placed.len() || Instant::now() > deadline {
            break rows.into_iter().map(|(ms,)| ms).collect();
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    anyhow::ensure!(
        latencies_ms.len() == placed.len(),
        "{} of {} orders placed at {rate}/s were confirmed within 2 minutes",
        latencies_ms.len(),
        placed.len()
    );
    let mut sorted = latencies_ms;
    sorted.sort_by(f64::total_cmp);
    let percentile = |p: f64| sorted[((sorted.len() - 1) as f64 * p).round() as usize];
    println!(
        "FIGURE saga latency, order created -> OrderConfirmed, {} orders at {rate}/s: \
         p50 {:.0} ms, p90 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        sorted.len(),
        percentile(0.50),
        percentile(0.90),
        percentile(0.99),
        percentile(1.0)
    );
    report(
        "saga_p99_ms",
        percentile(0.99),
        Target::AtMost(50.0),
        &format!(
            "saga latency p99, order created -> OrderConfirmed, {} orders arriving at {rate}/s (p50 {:.0} ms)",
            sorted.len(),
            percentile(0.50)
        ),
    );
    assert_invariants(&shop.databases).await;
    shop.stop()?;
    Ok(())
}
