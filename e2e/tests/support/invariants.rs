//! The shop's invariants (ARCHITECTURE section 4), checked with SQL on the
//! services' own databases, never from logs or the API's say-so. This is
//! the one place they are written; every end-to-end test checks them here.
//!
//! [`assert_invariants`] is what every test of a shared shop calls at its
//! end:
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
//! - every order is settled ([`SETTLED`]): terminal, or CONFIRMED/SHIPPED
//!   awaiting delivery (never still PENDING/RESERVED);
//! - no order has two payments (of any status), two captured payments or
//!   two completed refunds;
//! - every confirmed (or shipped, delivered) order has exactly one payment,
//!   CAPTURED for the order's total, and a COMMITTED stock reservation;
//! - every failed, rejected or cancelled order holds no money and no stock:
//!   a payment that was captured is REFUNDED whole by exactly one completed
//!   refund (and the order says `refunded`), no payment is still chargeable
//!   or waiting for its void to be confirmed, a reservation is RELEASED;
//! - every outbox row of every service is published;
//! - with the mock provider's journal ([`Databases::with_mock_ledger`]), the
//!   provider's side of the money: per order at most one capture, a
//!   confirmed order's capture kept whole, a dead order's money all given
//!   back (voided or refunded), never more refunded than captured.
//!
//! [`check_expected`] is what a fault test (tests/chaos.rs,
//! tests/chaos_scale.rs) calls on its private shop after crashes and
//! outages, with what it placed and stocked ([`Expect`]). It waits for each
//! expected order to be stored and settled, then for the whole shop to be
//! quiet, and checks all of the above and more:
//! - each expected order is stored;
//! - nothing is in flight anywhere in the shop: no HELD reservation, no
//!   payment due for its charge, no PENDING refund, no unpublished outbox
//!   row (every row, not only those present when the check began);
//! - each expected product has a stock row, and available + reserved + sold
//!   = the units the test gave it (which the stock adjustments' sum cannot
//!   see when a restock was applied twice), with nothing reserved.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use anyhow::Context as _;
use commerce_topology::Service;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::{Connection as _, PgConnection, Row as _};

use super::wait_for;

/// How long the saga may take to settle the orders present when the check
/// starts (refunds and releases are asynchronous; a payment provider that
/// was down retries with backoff up to 10 s).
pub const SETTLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Order statuses the saga is done with: the final ones, and CONFIRMED and
/// SHIPPED (stable until a courier moves the shipment).
pub const SETTLED: [&str; 6] = ["CONFIRMED", "SHIPPED", "DELIVERED", "FAILED", "REJECTED", "CANCELLED"];
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

    /// The same databases, without the mock provider's journal: for a shop
    /// whose payments go to another provider (whose money the test checks).
    pub fn without_mock_ledger(mut self) -> Self {
        self.mock_ledger = None;
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

/// What a fault test knows its private shop must hold, beyond what the
/// databases say of themselves (see [`check_expected`]).
#[derive(Debug, Clone, Default)]
pub struct Expect {
    /// Every order the test placed: the ids the gateway answered.
    pub orders: Vec<String>,
    /// Product id -> the units the test gave it.
    pub initial_stock: HashMap<String, i64>,
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
    check(databases, None, timeout).await
}

/// A whole private shop that must hold `expect`: waits (up to `timeout`)
/// until each expected order is stored and settled, then (up to `timeout`
/// again) until nothing is in flight and every invariant holds; `Err` lists
/// every violation still found at the end.
pub async fn check_expected(databases: &Databases, expect: &Expect, timeout: Duration) -> anyhow::Result<()> {
    check(databases, Some(expect), timeout).await
}

async fn check(databases: &Databases, expect: Option<&Expect>, timeout: Duration) -> anyhow::Result<()> {
    let _turn = CHECKS.acquire().await?;
    let pools = Pools::connect(databases).await?;
    let checked = settle(&pools, expect, timeout).await;
    for (_, pool) in &pools.outboxes {
        pool.close().await;
    }
    checked
}

async fn settle(pools: &Pools, expect: Option<&Expect>, timeout: Duration) -> anyhow::Result<()> {
    let scope = match expect {
        None => Scope::present(pools).await?,
        Some(expect) => {
            // The orders first: until each has settled, everything else is
            // still moving.
            wait_for("every expected order to settle", timeout, || async {
                none_of(pools.unsettled(expect).await?)
            })
            .await?;
            Scope::whole_shop(expect)?
        }
    };
    wait_for("the saga to settle", timeout, || async { none_of(pools.violations(&scope).await?) }).await?;
    Ok(())
}

/// Order id -> status, for those of `ids` the order service stores.
pub async fn order_statuses(order_db: &PgPool, ids: &[String]) -> anyhow::Result<HashMap<String, String>> {
    let rows = sqlx::query("SELECT id::text AS id, status FROM orders WHERE id::text = ANY($1)")
        .bind(ids)
        .fetch_all(order_db)
        .await
        .context("cannot read the orders")?;
    Ok(rows.iter().map(|row| (row.get("id"), row.get("status"))).collect())
}

/// A look of [`wait_for`] that is done when it found no violation, and
/// otherwise names each.
fn none_of(violations: Vec<String>) -> anyhow::Result<Option<()>> {
    if violations.is_empty() {
        return Ok(Some(()));
    }
    anyhow::bail!("{} violation(s):\n  {}", violations.len(), violations.join("\n  "))
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

/// What a check covers.
struct Scope<'a> {
    /// The orders checked.
    order_ids: Vec<uuid::Uuid>,
    /// Per service, the last outbox position that must be published;
    /// `None`: every row, however late it was written.
    outbox_positions: Option<HashMap<Service, i64>>,
    /// A whole private shop's expected orders and stock.
    expect: Option<&'a Expect>,
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

    async fn violations(&self, scope: &Scope<'_>) -> anyhow::Result<Vec<String>> {
        // What is in flight first: once nothing is, what follows reads a
        // shop at rest.
        let mut violations = match scope.expect {
            Some(_) => self.in_flight_violations().await?,
            None => Vec::new(),
        };
        violations.extend(self.stock_violations(scope.expect).await?);
        violations.extend(self.order_violations(scope).await?);
        violations.extend(self.outbox_violations(scope.outbox_positions.as_ref()).await?);
        Ok(violations)
    }

    /// The expected orders that are not stored or not settled yet; while
    /// there are any, also what each outbox has not sent (where the saga
    /// hangs).
    async fn unsettled(&self, expect: &Expect) -> anyhow::Result<Vec<String>> {
        let statuses = order_statuses(&self.order, &expect.orders).await?;
        let mut violations: Vec<String> = expect
            .orders
            .iter()
            .filter_map(|id| match statuses.get(id) {
                None => Some(format!("order {id} is not stored")),
                Some(status) if !SETTLED.contains(&status.as_str()) => {
                    Some(format!("order {id} is still {status}"))
                }
                Some(_) => None,
            })
            .collect();
        if !violations.is_empty() {
            violations.extend(self.outbox_violations(None).await?);
        }
        Ok(violations)
    }

    /// Work in flight anywhere in the shop: a HELD reservation, a payment
    /// due for its charge, a PENDING refund.
    async fn in_flight_violations(&self) -> anyhow::Result<Vec<String>> {
        let held: i64 = sqlx::query_scalar("SELECT count(*) FROM reservations WHERE status = 'HELD'")
            .fetch_one(&self.inventory)
            .await
            .context("cannot read the reservations")?;
        let (due, refunds): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM payments WHERE status = 'PENDING' AND intent_received AND stock_reserved), \
                    (SELECT count(*) FROM refunds WHERE status = 'PENDING')",
        )
        .fetch_one(&self.payment)
        .await
        .context("cannot read the payments")?;
        let mut violations = Vec::new();
        if held > 0 {
            violations.push(format!("inventory: {held} reservation(s) still HELD"));
        }
        if due > 0 {
            violations.push(format!("payment: {due} payment(s) due for their charge"));
        }
        if refunds > 0 {
            violations.push(format!("payment: {refunds} refund(s) still PENDING"));
        }
        Ok(violations)
    }

    /// Per product: initial = available + reserved + sold, and reserved is
    /// what the HELD reservations hold. One statement, so one snapshot.
    /// With `expect`, each expected product also has a stock row holding
    /// exactly the units it was given, none of them reserved.
    async fn stock_violations(&self, expect: Option<&Expect>) -> anyhow::Result<Vec<String>> {
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
        let mut stocked = Vec::new();
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
            if let Some(given) = expect.and_then(|expect| expect.initial_stock.get(&product)) {
                if available + reserved + sold != *given {
                    violations.push(format!(
                        "product {product}: {available} available + {reserved} reserved + {sold} sold != the {given} units it was given"
                    ));
                }
                if reserved != 0 {
                    violations.push(format!("product {product}: {reserved} still reserved"));
                }
                stocked.push(product);
            }
        }
        for product in expect.iter().flat_map(|expect| expect.initial_stock.keys()) {
            if !stocked.contains(product) {
                violations.push(format!("product {product}: no stock row"));
            }
        }
        Ok(violations)
    }

    async fn order_violations(&self, scope: &Scope<'_>) -> anyhow::Result<Vec<String>> {
        let orders: Vec<OrderRow> =
            sqlx::query("SELECT id, status, refunded, total_units FROM orders WHERE id = ANY($1)")
                .bind(&scope.order_ids)
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
        if let Some(expect) = scope.expect
            && orders.len() != expect.orders.len()
        {
            violations.push(format!("{} of {} orders stored", orders.len(), expect.orders.len()));
        }
        for order in &orders {
            let id = order.id.to_string();
            let payments = payments.get(&id).map(Vec::as_slice).unwrap_or_default();
            let reservations = reservations.get(&id).map(Vec::as_slice).unwrap_or_default();
            if payments.len() > 1 {
                violations.push(format!("order {id}: {} payments {payments:?}", payments.len()));
            }
            let captured = payments.iter().filter(|(status, ..)| status == "CAPTURED").count();
            if captured > 1 {
                violations.push(format!("order {id}: {captured} captured payments"));
            }
            let refunds: i64 = payments.iter().map(|(.., refunds)| refunds).sum();
            if refunds > 1 {
                violations.push(format!("order {id}: {refunds} completed refunds"));
            }
            match order.status.as_str() {
                "CONFIRMED" | "SHIPPED" | "DELIVERED" => {
                    if payments.len() != 1 || captured != 1 {
                        violations.push(format!(
                            "order {id} is {}: expected one CAPTURED payment, found {payments:?}",
                            order.status
                        ));
                    }
                    if payments.iter().any(|(_, amount, ..)| *amount != order.total_units) {
                        violations.push(format!(
                            "order {id} is {} (total {}): its payment is for another amount {payments:?}",
                            order.status, order.total_units
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
                            if *refunds != 1 || refunded != amount {
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

    /// Unpublished outbox rows of every service, up to `positions` (every
    /// row when `None`).
    async fn outbox_violations(
        &self,
        positions: Option<&HashMap<Service, i64>>,
    ) -> anyhow::Result<Vec<String>> {
        let mut violations = Vec::new();
        for (service, pool) in &self.outboxes {
            let last = positions.map_or(i64::MAX, |positions| positions.get(service).copied().unwrap_or(0));
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

impl<'a> Scope<'a> {
    /// The orders and outbox rows present now (in a shared shop, other
    /// tests' later ones are theirs to check).
    async fn present(pools: &Pools) -> anyhow::Result<Self> {
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
        Ok(Self { order_ids, outbox_positions: Some(outbox_positions), expect: None })
    }

    /// A whole private shop: the expected orders, every outbox row.
    fn whole_shop(expect: &'a Expect) -> anyhow::Result<Self> {
        let order_ids = expect
            .orders
            .iter()
            .map(|id| id.parse().with_context(|| format!("order id {id:?} is not a UUID")))
            .collect::<anyhow::Result<_>>()?;
        Ok(Self { order_ids, outbox_positions: None, expect: Some(expect) })
    }
}
