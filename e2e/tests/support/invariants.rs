//! The shop's invariants (ARCHITECTURE section 4), checked with SQL on the
//! services' own databases, never from logs or the API's say-so.
//!
//! [`assert_invariants`] is what every test calls at its end, and what fault
//! tests (tests/chaos.rs) call after a crash or an outage:
//!
//! ```ignore
//! let shop = support::shop::shared();
//! // ... drive the shop ...
//! support::invariants::assert_invariants(&shop.databases).await;
//! ```
//!
//! It checks, waiting (bounded by [`SETTLE_TIMEOUT`]) for the saga to
//! settle, only the orders and outbox rows that exist when it is called, so
//! tests running at the same time in the same shop do not disturb it:
//! - per product: initial stock (the sum of its stock adjustments) =
//!   available + reserved + sold, and reserved = the units of its HELD
//!   reservations;
//! - every order is settled: terminal, or CONFIRMED/SHIPPED awaiting
//!   delivery (never still PENDING/RESERVED);
//! - no order has two captured payments;
//! - every confirmed (or shipped, delivered) order has exactly one payment,
//!   CAPTURED, and a COMMITTED stock reservation;
//! - every failed, rejected or cancelled order holds no money and no stock:
//!   a payment that was captured is REFUNDED with a completed refund (and
//!   the order says `refunded`), no payment is still chargeable or waiting
//!   for its void to be confirmed, a reservation is RELEASED;
//! - every outbox row of every service is published;
//! - with the mock provider's journal ([`Databases::with_mock_ledger`]), the
//!   provider's side of the money: per order at most one capture, a
//!   confirmed order's capture kept whole, a dead order's money all given
//!   back (voided or refunded), never more refunded than captured.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use commerce_topology::Service;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::{Connection as _, PgConnection, Row as _};

/// How long the saga may take to settle the orders present when the check
/// starts (refunds and releases are asynchronous; a payment provider that
/// was down retries with backoff up to 10 s).
pub const SETTLE_TIMEOUT: Duration = Duration::from_secs(60);
/// One check at a time per test process: a check holds a connection to
/// each of the shop's seven databases, and Postgres' 100 connections are
/// shared with the shops (and other test runs) on the machine.
static CHECKS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(1);

/// Where a shop's databases are: one per service, `<prefix><service>` on
/// the server of the admin URL, or the names the operator gave a stack's.
#[derive(Debug, Clone)]
pub struct Databases {
    /// Postgres URL of a role that may read every database (and create and
    /// drop them).
    pub admin_url: String,
    /// Prefix of every database name (`e2e_<run>_`).
    pub prefix: String,
    /// Database names that do not follow `<prefix><service>`: those of a
    /// stack run by the operator (tests/cluster.rs).
    named: BTreeMap<Service, String>,
    /// The mock payment provider's journal (`--mock-ledger-file`), when the
    /// shop writes one.
    mock_ledger: Option<std::path::PathBuf>,
}

impl Databases {
    pub fn new(admin_url: &str, prefix: &str) -> Self {
        Self {
            admin_url: admin_url.to_owned(),
            prefix: prefix.to_owned(),
            named: BTreeMap::new(),
            mock_ledger: None,
        }
    }

    /// Also check the money against the mock provider's journal at `path`.
    pub fn with_mock_ledger(mut self, path: std::path::PathBuf) -> Self {
        self.mock_ledger = Some(path);
        self
    }

    /// The mock provider's journal, if the shop writes one.
    pub fn mock_ledger(&self) -> Option<&std::path::Path> {
        self.mock_ledger.as_deref()
    }

    /// The databases of `services`, named by `name` (the operator's naming).
    pub fn named(admin_url: &str, services: &[Service], name: impl Fn(Service) -> String) -> Self {
        let named = services.iter().map(|service| (*service, name(*service))).collect();
        Self { admin_url: admin_url.to_owned(), prefix: String::new(), named, mock_ledger: None }
    }

    /// The name of `service`'s database.
    pub fn name(&self, service: Service) -> String {
        self.named.get(&service).cloned().unwrap_or_else(|| format!("{}{}", self.prefix, service.name()))
    }

    /// The URL of `service`'s database.
    pub fn url(&self, service: Service) -> String {
        let (base, query) = match self.admin_url.split_once('?') {
            Some((base, query)) => (base, format!("?{query}")),
            None => (self.admin_url.as_str(), String::new()),
        };
        let server = base.rsplit_once('/').map_or(base, |(server, _)| server);
        format!("{server}/{}{query}", self.name(service))
    }

    /// A one-connection pool on `service`'s database (Postgres' connections
    /// are shared by everything on the machine: keep them few).
    pub async fn pool(&self, service: Service) -> anyhow::Result<PgPool> {
        PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(10))
            .connect(&self.url(service))
            .await
            .with_context(|| format!("cannot connect to the {service} database {}", self.name(service)))
    }

    /// Fails with a clear message when Postgres is not there.
    pub async fn check_reachable(&self) -> anyhow::Result<()> {
        let connect = PgConnection::connect(&self.admin_url);
        let connection = tokio::time::timeout(Duration::from_secs(15), connect)
            .await
            .map_err(|_| anyhow::anyhow!("Postgres did not answer within 15 s; start it with `make infra`"))?
            .context(
                "cannot connect to Postgres (COMMERCE_POSTGRES_ADMIN_URL); start it with `make infra`",
            )?;
        connection.close().await.ok();
        Ok(())
    }

    /// Names of the databases of shops under test (`e2e_...`).
    pub async fn e2e_database_names(&self) -> anyhow::Result<Vec<String>> {
        let mut admin = PgConnection::connect(&self.admin_url).await?;
        let names = sqlx::query_scalar("SELECT datname FROM pg_database WHERE datname LIKE 'e2e\\_%'")
            .fetch_all(&mut admin)
            .await?;
        admin.close().await.ok();
        Ok(names)
    }

    /// Drops every database whose name satisfies `matches` and nobody is
    /// connected to.
    pub async fn drop_matching(&self, matches: impl Fn(&str) -> bool) -> anyhow::Result<()> {
        let mut admin = PgConnection::connect(&self.admin_url).await?;
        let names: Vec<String> = sqlx::query_scalar(
            "SELECT datname FROM pg_database d WHERE datname LIKE 'e2e\\_%' \
             AND NOT EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.datname = d.datname)",
        )
        .fetch_all(&mut admin)
        .await?;
        for name in names.iter().filter(|name| matches(name)) {
            let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS \"{}\"", name.replace('"', "\"\"")))
                .execute(&mut admin)
                .await;
        }
        admin.close().await.ok();
        Ok(())
    }
}

/// Checks every invariant of the module documentation and panics naming
/// each violation if they do not all hold within [`SETTLE_TIMEOUT`].
pub async fn assert_invariants(databases: &Databases) {
    if let Err(error) = check_invariants(databases, SETTLE_TIMEOUT).await {
        panic!("shop invariants violated: {error:#}");
    }
}

/// The orders and outbox rows present now, then polls until the
/// invariants hold for them; `Err` lists what still failed at `timeout`.
pub async fn check_invariants(databases: &Databases, timeout: Duration) -> anyhow::Result<()> {
    let _turn = CHECKS.acquire().await?;
    let pools = Pools::connect(databases).await?;
    let checked = settle(&pools, timeout).await;
    for (_, pool) in &pools.outboxes {
        pool.close().await;
    }
    checked
}

async fn settle(pools: &Pools, timeout: Duration) -> anyhow::Result<()> {
    let snapshot = Snapshot::take(pools).await?;
    let deadline = Instant::now() + timeout;
    loop {
        let violations = pools.violations(&snapshot).await?;
        if violations.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            anyhow::bail!(
                "{} violation(s) after waiting {timeout:?} for the saga to settle:\n  {}",
                violations.len(),
                violations.join("\n  ")
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// One pool per database the checks read.
struct Pools {
    order: PgPool,
    inventory: PgPool,
    payment: PgPool,
    /// Every service with a database, for the outbox check.
    outboxes: Vec<(Service, PgPool)>,
    /// The mock provider's journal, if any.
    mock_ledger: Option<std::path::PathBuf>,
}

/// What existed when the check began.
struct Snapshot {
    order_ids: Vec<uuid::Uuid>,
    /// The last outbox position per service.
    outbox_positions: HashMap<Service, i64>,
}

/// An order's state as the order service stores it.
struct OrderRow {
    id: uuid::Uuid,
    status: String,
    refunded: bool,
    total_units: i64,
}

impl Pools {
    async fn connect(databases: &Databases) -> anyhow::Result<Self> {
        let mut outboxes = Vec::new();
        for service in Service::ALL.into_iter().filter(|service| service.spec().database) {
            outboxes.push((service, databases.pool(service).await?));
        }
        let find = |wanted: Service| {
            outboxes
                .iter()
                .find(|(service, _)| *service == wanted)
                .map(|(_, pool)| pool.clone())
                .with_context(|| format!("{wanted} has no database"))
        };
        Ok(Self {
            order: find(Service::Order)?,
            inventory: find(Service::Inventory)?,
            payment: find(Service::Payment)?,
            outboxes,
            mock_ledger: databases.mock_ledger.clone(),
        })
    }

    async fn violations(&self, snapshot: &Snapshot) -> anyhow::Result<Vec<String>> {
        let mut violations = self.stock_violations().await?;
        violations.extend(self.order_violations(snapshot).await?);
        violations.extend(self.outbox_violations(snapshot).await?);
        Ok(violations)
    }

    /// Per product: initial = available + reserved + sold, and reserved is
    /// what the HELD reservations hold. One statement, so one snapshot.
    async fn stock_violations(&self) -> anyhow::Result<Vec<String>> {
        let rows = sqlx::query(
            "SELECT s.product_id, s.available, s.reserved, s.sold, \
                    COALESCE((SELECT sum(a.quantity_delta) FROM stock_adjustments a WHERE a.product_id = s.product_id), 0)::bigint AS initial, \
                    COALESCE((SELECT sum(l.quantity) FROM reservation_lines l JOIN reservations r ON r.id = l.reservation_id \
                              WHERE l.product_id = s.product_id AND r.status = 'HELD'), 0)::bigint AS held \
             FROM stock s",
        )
        .fetch_all(&self.inventory)
        .await
        .context("cannot read the stock")?;
        let mut violations = Vec::new();
        for row in rows {
            let product: String = row.get("product_id");
            let (available, reserved, sold): (i64, i64, i64) =
                (row.get("available"), row.get("reserved"), row.get("sold"));
            let (initial, held): (i64, i64) = (row.get("initial"), row.get("held"));
            if available + reserved + sold != initial {
                violations.push(format!(
                    "product {product}: initial stock {initial} != available {available} + reserved {reserved} + sold {sold}"
                ));
            }
            if reserved != held {
                violations.push(format!(
                    "product {product}: reserved {reserved} but HELD reservations hold {held}"
                ));
            }
        }
        Ok(violations)
    }

    async fn order_violations(&self, snapshot: &Snapshot) -> anyhow::Result<Vec<String>> {
        let orders: Vec<OrderRow> =
            sqlx::query("SELECT id, status, refunded, total_units FROM orders WHERE id = ANY($1)")
                .bind(&snapshot.order_ids)
                .fetch_all(&self.order)
                .await
                .context("cannot read the orders")?
                .into_iter()
                .map(|row| OrderRow {
                    id: row.get("id"),
                    status: row.get("status"),
                    refunded: row.get("refunded"),
                    total_units: row.get("total_units"),
                })
                .collect();
        let ids: Vec<String> = orders.iter().map(|order| order.id.to_string()).collect();
        // order id -> [(payment status, amount, refunded units, completed refunds)]
        let mut payments: HashMap<String, Vec<(String, i64, i64, i64)>> = HashMap::new();
        for row in sqlx::query(
            "SELECT p.order_id, p.status, p.amount_units, p.refunded_units, \
                    (SELECT count(*) FROM refunds r WHERE r.payment_id = p.id AND r.status = 'COMPLETED') AS refunds \
             FROM payments p WHERE p.order_id = ANY($1)",
        )
        .bind(&ids)
        .fetch_all(&self.payment)
        .await
        .context("cannot read the payments")?
        {
            payments.entry(row.get("order_id")).or_default().push((
                row.get("status"),
                row.get("amount_units"),
                row.get("refunded_units"),
                row.get("refunds"),
            ));
        }
        // order id -> (payment status, still chargeable, void not confirmed)
        let mut open_payments: HashMap<String, (String, bool, bool)> = HashMap::new();
        for row in sqlx::query(
            "SELECT order_id, status, (status = 'PENDING' AND intent_received AND stock_reserved) AS chargeable, \
                    void_pending FROM payments WHERE order_id = ANY($1)",
        )
        .bind(&ids)
        .fetch_all(&self.payment)
        .await
        .context("cannot read the payments' charge and void state")?
        {
            open_payments
                .insert(row.get("order_id"), (row.get("status"), row.get("chargeable"), row.get("void_pending")));
        }
        let mut reservations: HashMap<String, Vec<String>> = HashMap::new();
        for row in sqlx::query("SELECT order_id, status FROM reservations WHERE order_id = ANY($1)")
            .bind(&ids)
            .fetch_all(&self.inventory)
            .await
            .context("cannot read the reservations")?
        {
            reservations.entry(row.get("order_id")).or_default().push(row.get("status"));
        }

        let mut violations = Vec::new();
        for order in &orders {
            let id = order.id.to_string();
            let payments = payments.get(&id).map(Vec::as_slice).unwrap_or_default();
            let reservations = reservations.get(&id).map(Vec::as_slice).unwrap_or_default();
            let captured = payments.iter().filter(|(status, ..)| status == "CAPTURED").count();
            if captured > 1 {
                violations.push(format!("order {id}: {captured} captured payments"));
            }
            match order.status.as_str() {
                "CONFIRMED" | "SHIPPED" | "DELIVERED" => {
                    if payments.len() != 1 || captured != 1 {
                        violations.push(format!(
                            "order {id} is {}: expected one CAPTURED payment, found {payments:?}",
                            order.status
                        ));
                    }
                    if reservations != ["COMMITTED"] {
                        violations.push(format!(
                            "order {id} is {}: expected a COMMITTED reservation, found {reservations:?}",
                            order.status
                        ));
                    }
                }
                "FAILED" | "REJECTED" | "CANCELLED" => {
                    // A dead order's payment must not be chargeable any more
                    // (the worker would take money for it), and a void of an
                    // unknown charge must be confirmed by the provider.
                    if let Some((status, chargeable, void_pending)) = open_payments.get(&id) {
                        if *chargeable {
                            violations.push(format!(
                                "order {id} is {} but its payment is {status} and still chargeable",
                                order.status
                            ));
                        }
                        if *void_pending {
                            violations.push(format!(
                                "order {id} is {}: the void of its payment ({status}) is still pending",
                                order.status
                            ));
                        }
                    }
                    for (status, amount, refunded, refunds) in payments {
                        if status == "CAPTURED" || status == "PARTIALLY_REFUNDED" {
                            violations.push(format!(
                                "order {id} is {} but its payment is {status} (money kept)",
                                order.status
                            ));
                        }
                        if status == "REFUNDED" {
                            if *refunds < 1 || refunded != amount {
                                violations.push(format!(
                                    "order {id}: payment REFUNDED but {refunded} of {amount} refunded in {refunds} completed refund(s)"
                                ));
                            }
                            if !order.refunded {
                                violations.push(format!(
                                    "order {id}: refunded payment, but the order does not say refunded"
                                ));
                            }
                        }
                    }
                    if reservations.iter().any(|status| status != "RELEASED") {
                        violations.push(format!(
                            "order {id} is {}: its reservation is {reservations:?}, not RELEASED",
                            order.status
                        ));
                    }
                }
                other => violations.push(format!("order {id} is still {other}")),
            }
        }
        violations.extend(self.money_violations(&orders)?);
        Ok(violations)
    }

    /// The provider's side of each order's money, from the mock's journal
    /// (which outlives the payment process).
    fn money_violations(&self, orders: &[OrderRow]) -> anyhow::Result<Vec<String>> {
        use commerce_payment::journal;
        let Some(path) = &self.mock_ledger else { return Ok(Vec::new()) };
        let entries =
            journal::read(path).with_context(|| format!("cannot read the mock ledger {}", path.display()))?;
        let money = journal::money_by_charge_key(&entries);
        let mut violations = Vec::new();
        for order in orders {
            let id = order.id.to_string();
            let kept = money.get(&id).cloned().unwrap_or_default();
            if kept.captures > 1 {
                violations.push(format!("order {id}: the provider captured {} times", kept.captures));
            }
            if kept.refunded > kept.captured {
                violations
                    .push(format!("order {id}: {} refunded of {} captured", kept.refunded, kept.captured));
            }
            let live = matches!(order.status.as_str(), "CONFIRMED" | "SHIPPED" | "DELIVERED");
            let expected = if live { order.total_units } else { 0 };
            if kept.net() != expected {
                violations.push(format!(
                    "{} order {id} (total {}): the provider holds {} ({kept:?})",
                    order.status,
                    order.total_units,
                    kept.net()
                ));
            }
        }
        Ok(violations)
    }

    async fn outbox_violations(&self, snapshot: &Snapshot) -> anyhow::Result<Vec<String>> {
        let mut violations = Vec::new();
        for (service, pool) in &self.outboxes {
            let last = snapshot.outbox_positions.get(service).copied().unwrap_or(0);
            let unpublished: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM commerce_platform.outbox WHERE published_at IS NULL AND position <= $1",
            )
            .bind(last)
            .fetch_one(pool)
            .await
            .with_context(|| format!("cannot read the {service} outbox"))?;
            if unpublished > 0 {
                violations.push(format!("{service}: {unpublished} outbox row(s) not published"));
            }
        }
        Ok(violations)
    }
}

impl Snapshot {
    async fn take(pools: &Pools) -> anyhow::Result<Self> {
        let order_ids = sqlx::query_scalar("SELECT id FROM orders")
            .fetch_all(&pools.order)
            .await
            .context("cannot list the orders")?;
        let mut outbox_positions = HashMap::new();
        for (service, pool) in &pools.outboxes {
            let last: Option<i64> = sqlx::query_scalar("SELECT max(position) FROM commerce_platform.outbox")
                .fetch_one(pool)
                .await
                .with_context(|| format!("cannot read the {service} outbox"))?;
            outbox_positions.insert(*service, last.unwrap_or(0));
        }
        Ok(Self { order_ids, outbox_positions })
    }
}
