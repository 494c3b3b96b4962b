//! `commerce load` against a real shop: one `commerce` binary serves the
//! shop (`commerce serve all` on the loopback infrastructure,
//! [`support::shop`]) and the same binary puts load on it, as a developer
//! runs it; then its HTML report, goose's JSON report of the same run and
//! the closing summary are read, and the saga's invariants are checked.
//!
//! The run whose reports must name every kind of request is bounded by
//! iterations, not by time: a few users doing six iterations each take
//! seconds, and each buyer has then certainly gone through whole iterations
//! (orders confirmed, some cancelled), where a timed run on a busy machine
//! could end before its first order is confirmed. A second, timed run (as
//! the README's) checks that the sign-ups made while users start stay in
//! the report, and a run whose orders are declined checks that failures are
//! counted and named. The tests share one shop. Needs `source
//! e2e/infra.env` and `cargo build -p commerce`.

mod support;

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;
use support::api::Api;
use support::invariants::assert_invariants;
use support::shop::{self, Shop};

/// Every kind of request a run of the two scenarios makes, as goose names
/// them. `POST /api/auth/refresh` is not among them: buyers refresh their
/// token two thirds into its life (10 of the local 15 minutes).
const REQUEST_KINDS: &[&str] = &[
    "POST /api/auth/register",
    "POST /api/auth/login",
    "GET /api/products",
    "GET /api/products?page_token={token}",
    "GET /api/products?q={term}",
    "GET /api/products/{id}",
    "GET /api/categories",
    "POST /api/cart/items",
    "PATCH /api/cart/items/{product_id}",
    "GET /api/cart",
    "POST /api/cart/checkout",
    "GET /api/orders/{id}",
    "POST /api/orders/{id}/cancel",
    "GET /api/orders",
];
/// Users of the iteration-bound run: at the scenarios' 3:1 weights, 6
/// visitors and 2 buyers.
const USERS: &str = "8";
/// Iterations of each user: each buyer places 6 orders, of which it cancels
/// the 1st and the 6th (`--cancel-every 5`).
const ITERATIONS: &str = "6";
/// Products in the catalog: more than a browsing page (5), so that visitors
/// turn pages.
const PRODUCTS: usize = 8;
/// Bound on a whole load run (each takes seconds): a hung run fails the
/// test instead of hanging it.
const RUN_TIMEOUT: Duration = Duration::from_secs(300);

#[tokio::test]
async fn a_load_run_reports_every_kind_of_request_and_no_failure() -> anyhow::Result<()> {
    let shop = shop_with_products().await?;
    let run = load(shop, &["--users", USERS, "--increase-rate", USERS, "--iterations", ITERATIONS]).await?;

    // The closing summary counts every request and says none failed.
    assert!(run.summary.ends_with(" 0 failed."), "summary: {:?}\n{}", run.summary, run.stdout);
    assert!(run.summary.contains(&format!("of {} kinds", REQUEST_KINDS.len())), "summary: {}", run.summary);

    // Goose's JSON report of the run: every kind was requested, none failed.
    for kind in REQUEST_KINDS {
        let (requests, failures) =
            run.counts(kind).unwrap_or_else(|| panic!("{kind} is not in the report: {:#}", run.report));
        assert!(requests > 0, "no {kind} request: {:#}", run.report);
        assert_eq!(failures, 0, "{kind} failed {failures} times; errors: {:#}", run.report["errors"]);
    }
    assert_eq!(run.kinds(), REQUEST_KINDS.len(), "unexpected kinds of request: {:#}", run.report);
    assert!(run.report["errors"].is_null(), "errors: {:#}", run.report["errors"]);

    // The HTML report names every kind, has the percentiles and the graphs
    // over time, and no errors table.
    let page = std::fs::read_to_string(&run.html)?;
    for kind in REQUEST_KINDS {
        let (method, name) = kind.split_once(' ').unwrap_or_default();
        assert!(
            names_request(&page, method, name),
            "{kind} is not in the HTML report {}",
            run.html.display()
        );
    }
    for part in [
        "<h2>Response Time Metrics</h2>",
        "95%ile (ms)",
        "id=\"graph-rps\"",
        "id=\"graph-avg-response-time\"",
        "id=\"graph-active-users\"",
    ] {
        assert!(page.contains(part), "no {part} in the HTML report {}", run.html.display());
    }
    assert!(!page.contains("<h2>Errors</h2>"), "the HTML report {} lists errors", run.html.display());
    assert!(
        !page.contains("<script src="),
        "the HTML report {} loads a script from elsewhere; its graphs would be blank offline",
        run.html.display()
    );
    assert!(page.contains("echarts.init"), "the HTML report {} draws no graph", run.html.display());

    // What the run left behind is consistent: cancelled orders refunded,
    // stock balanced, every order terminal.
    assert_invariants(&shop.databases).await;
    Ok(())
}

/// A run bounded by time, as the README runs it: the buyers' sign-ups
/// happen while users start, and the report keeps them (goose alone would
/// reset its metrics once all users run, dropping them and any error then).
#[tokio::test]
async fn a_timed_run_keeps_the_sign_ups_of_its_ramp_up_in_the_report() -> anyhow::Result<()> {
    let shop = shop_with_products().await?;
    let run = load(shop, &["--users", "4", "--increase-rate", "1", "--run-time", "5s"]).await?;
    assert!(run.summary.ends_with(" 0 failed."), "summary: {:?}\n{}", run.summary, run.stdout);
    for kind in ["POST /api/auth/register", "POST /api/auth/login"] {
        let (requests, failures) =
            run.counts(kind).unwrap_or_else(|| panic!("{kind} is not in the report: {:#}", run.report));
        assert!(requests > 0 && failures == 0, "{kind}: {requests} requests, {failures} failed");
    }
    assert_invariants(&shop.databases).await;
    Ok(())
}

/// Orders paid with a card the mock provider declines end `failed`: each
/// is a failed `GET /api/orders/{id}` in goose's metrics, named with its
/// reason in the errors of both reports and counted by kind in the summary,
/// while the run itself completes.
#[tokio::test]
async fn orders_that_end_unconfirmed_are_counted_as_failures_in_the_summary_and_the_reports()
-> anyhow::Result<()> {
    let shop = shop_with_products().await?;
    // One buyer among the four users, two orders.
    let run = load(
        shop,
        &["--users", "4", "--increase-rate", "4", "--iterations", "2", "--card-token", "tok_decline"],
    )
    .await?;
    let (requests, failures) = run.counts("GET /api/orders/{id}").unwrap_or_default();
    assert_eq!(failures, 2, "{requests} GET /api/orders/{{id}}, {failures} failed: {:#}", run.report);
    assert_eq!(run.counts("POST /api/cart/checkout"), Some((2, 0)), "{:#}", run.report);
    assert!(run.summary.contains(", 2 failed ("), "summary: {}", run.summary);
    let kind_line = format!("  GET /api/orders/{{id}}: 2 of {requests} failed");
    assert!(run.stdout.lines().any(|line| line == kind_line), "no {kind_line:?} in:\n{}", run.stdout);

    let reason = "the order ended failed, not confirmed";
    let errors = run.report["errors"].to_string();
    assert!(errors.contains(reason), "the JSON report's errors do not say {reason:?}: {errors}");
    let page = std::fs::read_to_string(&run.html)?;
    assert!(
        page.contains("<h2>Errors</h2>") && page.contains(reason),
        "{} has no error {reason:?}",
        run.html.display()
    );
    assert_invariants(&shop.databases).await;
    Ok(())
}

/// The shop shared by this file's tests, with [`PRODUCTS`] more products
/// in stock for the calling test (so the catalog is never empty, and spans
/// pages, when its load starts).
async fn shop_with_products() -> anyhow::Result<&'static Shop> {
    let shop = shop::shared();
    let api = Api::new(shop);
    let admin = api.admin().await?;
    let category = api.create_category(&admin, "Load lamps").await?;
    for n in 0..PRODUCTS {
        // Plenty of stock: no order may be rejected for want of it.
        api.create_product(&admin, &category, &format!("Reading lamp {n}"), 2_500, 10_000).await?;
    }
    Ok(shop)
}

/// A finished `commerce load` run.
struct Run {
    stdout: String,
    /// The closing summary line.
    summary: String,
    /// Goose's JSON report.
    report: Value,
    /// The HTML report.
    html: PathBuf,
}

impl Run {
    /// `(requests, failures)` of a kind of request in the JSON report.
    fn counts(&self, kind: &str) -> Option<(u64, u64)> {
        self.rows()
            .iter()
            .find(|row| format!("{} {}", text(&row["method"]), text(&row["name"])) == kind)
            .map(|row| (number(&row["number_of_requests"]), number(&row["number_of_failures"])))
    }

    /// Kinds of request in the JSON report.
    fn kinds(&self) -> usize {
        self.rows().iter().filter(|row| text(&row["name"]) != "Aggregated").count()
    }

    fn rows(&self) -> &[Value] {
        self.report["raw_request_metrics"].as_array().map(Vec::as_slice).unwrap_or_default()
    }
}

/// Runs `commerce load` on `shop` with `args`, an HTML and a JSON report,
/// and checks that it succeeds and closes with a summary of this shop. Its
/// output and reports stay in a folder of their own, named after the shop.
async fn load(shop: &Shop, args: &[&str]) -> anyhow::Result<Run> {
    let run = uuid::Uuid::new_v4().simple().to_string();
    let dir = std::env::temp_dir().join("commerce-e2e").join(format!("load-{}-{}", shop.run_id, &run[..8]));
    std::fs::create_dir_all(&dir)?;
    let html = dir.join("report.html");
    let json = dir.join("report.json");
    let mut command = tokio::process::Command::new(shop::binary_path()?);
    command
        .args(["load", "--host", &shop.gateway_url])
        .args(args)
        .arg("--report-file")
        .arg(&html)
        .arg("--report-file")
        .arg(&json)
        .kill_on_drop(true);
    let output = tokio::time::timeout(RUN_TIMEOUT, command.output())
        .await
        .map_err(|_| anyhow::anyhow!("commerce load did not finish within {RUN_TIMEOUT:?}"))??;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    std::fs::write(dir.join("output.log"), format!("{stdout}\n--- stderr ---\n{stderr}"))?;
    anyhow::ensure!(
        output.status.success(),
        "commerce load exited with {}:\n{stdout}\n{stderr}",
        output.status
    );
    let summary = stdout.lines().find(|line| line.starts_with("Load on ")).unwrap_or_default().to_owned();
    anyhow::ensure!(
        summary.starts_with(&format!("Load on {} for ", shop.gateway_url)),
        "no summary of a load on {} in:\n{stdout}",
        shop.gateway_url
    );
    let report = serde_json::from_str(&std::fs::read_to_string(&json)?)?;
    Ok(Run { stdout, summary, report, html })
}

/// A JSON string, or "" for anything else.
fn text(value: &Value) -> &str {
    value.as_str().unwrap_or_default()
}

/// A JSON count, or 0 for anything else.
fn number(value: &Value) -> u64 {
    value.as_u64().unwrap_or_default()
}

/// Whether the HTML report has a table row starting with the cells
/// `method` and `name` (goose puts each cell on a line of its own).
fn names_request(page: &str, method: &str, name: &str) -> bool {
    let method_cell = format!("<td>{method}</td>");
    let name_cell = format!("<td>{name}</td>");
    page.match_indices(&method_cell)
        .any(|(at, _)| page[at + method_cell.len()..].trim_start().starts_with(&name_cell))
}
