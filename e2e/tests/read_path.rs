//! Benchmark, not a test: the gateway's read path (issue 8). wrk drives
//! `GET /api/products/{id}` with a customer's bearer token and
//! `GET /api/products?page_size=20` through the gateway of a release
//! `commerce serve all`, and a bare axum hello world
//! (`src/bin/bench_hello_world.rs`) in the same run, on the same machine,
//! with the same wrk settings. Each shop figure is printed as a ratio to the
//! hello world's, since absolute requests per second on a shared 2-core
//! machine say more about the machine than about the gateway. wrk, the shop
//! (with Postgres, Redis and Kafka) and the hello world share the cores:
//! that is how the ratio is defined.
//!
//! It asserts only that every shop request was answered with a 2xx (a run
//! with errors is not a figure); the ratios are printed beside their
//! targets, not asserted, because they vary with the machine's load. The
//! shop's log (an access-log line per request, about a gigabyte) is removed
//! after a run without errors.
//!
//! ```sh
//! source e2e/infra.env
//! export CARGO_TARGET_DIR=$HOME/.cache/commerce-stack/target
//! cargo build --release --locked -p commerce
//! cargo build --release --locked -p commerce-e2e --bin bench-hello-world
//! COMMERCE_BIN=$CARGO_TARGET_DIR/release/commerce \
//!   cargo test --locked -p commerce-e2e --test read_path -- --ignored --nocapture
//! ```
//!
//! Each endpoint is measured twice in the same shop: first with the rate
//! limits raised (every request still spends a token of the shared counter
//! in Redis, as in production, mostly from tokens the gateway leased in
//! advance, but none is refused), then with them switched off through the
//! admin API (the `default-ip` rule stored as disabled), which is the
//! configuration the targets of issue 8 are met in and tells the limiter's
//! share. Both are printed, each saying which it is.
//!
//! `COMMERCE_WRK` is the wrk to run (default `wrk` on the `PATH`; Debian's
//! package `wrk`); `COMMERCE_HELLO_BIN` the hello world (default
//! `$CARGO_TARGET_DIR/release/bench-hello-world`).

mod support;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail};
use reqwest::{Method, StatusCode};
use serde_json::json;
use support::api::{Api, string};
use support::bench::Target;
use support::jaeger::Jaeger;
use support::shop::{Shop, ShopOptions};

/// wrk's settings for every measured run: the issue's figures are for 32
/// connections over 2 threads.
const CONNECTIONS: u32 = 32;
const THREADS: u32 = 2;
/// A run before each measurement, so that connections, caches and the CPU
/// frequency have settled; its figures are thrown away.
const WARM_UP: Duration = Duration::from_secs(3);
const MEASURE_FOR: Duration = Duration::from_secs(10);
/// Targets of issue 8, as ratios to the hello world.
const TARGET_PRODUCT_BY_ID: f64 = 0.30;
const TARGET_PRODUCT_LIST: f64 = 0.20;
/// The `default-ip` rule (600 a minute per client IP in a local shop) would
/// refuse nearly all of wrk's requests, which come from one address. For
/// the first measurement it is raised, so that every request still passes
/// the limiter's check as it would in production: one request per
/// microsecond sustained (the finest the GCRA interval goes), a burst of a
/// second's worth. For the second it is switched off.
const RATE_LIMIT_PER_MINUTE: &str = "100000000";
const RATE_LIMIT_BURST: &str = "1000000";

/// What one wrk run reported.
#[derive(Debug, Clone, PartialEq)]
struct WrkReport {
    requests: u64,
    requests_per_second: f64,
    /// Responses that were not 2xx or 3xx (wrk's own count).
    non_success: u64,
    /// Connect, read, write errors and timeouts.
    socket_errors: u64,
}

impl WrkReport {
    /// Reads wrk's text report.
    fn parse(output: &str) -> anyhow::Result<Self> {
        let mut report = Self { requests: 0, requests_per_second: 0.0, non_success: 0, socket_errors: 0 };
        let mut saw_rate = false;
        for line in output.lines().map(str::trim) {
            if let Some(rate) = line.strip_prefix("Requests/sec:") {
                report.requests_per_second = rate.trim().parse().context("Requests/sec")?;
                saw_rate = true;
            } else if let Some(count) = line.strip_prefix("Non-2xx or 3xx responses:") {
                report.non_success = count.trim().parse().context("Non-2xx or 3xx responses")?;
            } else if let Some(errors) = line.strip_prefix("Socket errors:") {
                // "connect 0, read 0, write 0, timeout 0"
                for part in errors.split(',') {
                    let count = part.split_whitespace().nth(1).context("a socket error count")?;
                    report.socket_errors += count.parse::<u64>().context("a socket error count")?;
                }
            } else if line.contains(" requests in ") {
                let count = line.split_whitespace().next().context("the request count")?;
                report.requests = count.parse().context("the request count")?;
            }
        }
        if !saw_rate {
            bail!("wrk printed no Requests/sec:\n{output}");
        }
        Ok(report)
    }

    fn errors(&self) -> u64 {
        self.non_success + self.socket_errors
    }
}

/// The wrk binary.
fn wrk_path() -> String {
    std::env::var("COMMERCE_WRK").unwrap_or_else(|_| "wrk".to_owned())
}

/// Runs wrk against `url` for `duration` with `headers` on every request.
async fn wrk(url: &str, headers: &[String], duration: Duration) -> anyhow::Result<WrkReport> {
    let mut command = tokio::process::Command::new(wrk_path());
    command
        .arg(format!("-t{THREADS}"))
        .arg(format!("-c{CONNECTIONS}"))
        .arg(format!("-d{}s", duration.as_secs()))
        .kill_on_drop(true);
    for header in headers {
        command.arg("-H").arg(header);
    }
    command.arg(url);
    let output = command
        .output()
        .await
        .with_context(|| format!("cannot run {} (install it: apt-get install wrk)", wrk_path()))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!("wrk failed with {}: {stdout}{}", output.status, String::from_utf8_lossy(&output.stderr));
    }
    WrkReport::parse(&stdout)
}

/// Longest wait for a quiet machine before a measurement.
const QUIET_WAIT: Duration = Duration::from_secs(60);

/// Waits for a quiet machine ([`support::bench::wait_until_quiet`]), warms
/// `url` up, then measures it.
async fn measure(url: &str, headers: &[String]) -> anyhow::Result<WrkReport> {
    let busy = support::bench::wait_until_quiet(QUIET_WAIT).await?;
    if busy >= 0.15 {
        println!(
            "FIGURE note: the CPUs were still {:.0}% busy after {QUIET_WAIT:?}; measuring {url} anyway",
            busy * 100.0
        );
    }
    wrk(url, headers, WARM_UP).await?;
    wrk(url, headers, MEASURE_FOR).await
}

/// The hello world, stopped (by its own handle) when dropped.
struct HelloWorld {
    child: Child,
    url: String,
}

impl HelloWorld {
    fn start() -> anyhow::Result<Self> {
        let binary = hello_world_path()?;
        let mut child = Command::new(&binary)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        let stdout = child.stdout.take().context("the hello world has no stdout")?;
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line)?;
        let mut hello = Self { child, url: String::new() };
        // "listening on 127.0.0.1:40123 (release)"
        let rest = line.trim().strip_prefix("listening on ").context("no address from the hello world")?;
        let (addr, profile) = rest.split_once(' ').context("no build profile from the hello world")?;
        if profile != "(release)" {
            bail!("{} is a {profile} build; the yardstick must be a release build", binary.display());
        }
        hello.url = format!("http://{addr}/");
        Ok(hello)
    }
}

impl Drop for HelloWorld {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `$COMMERCE_HELLO_BIN`, else the release build in the target directory.
fn hello_world_path() -> anyhow::Result<PathBuf> {
    if let Some(binary) = std::env::var_os("COMMERCE_HELLO_BIN") {
        return Ok(PathBuf::from(binary));
    }
    let target = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(std::env::var_os("HOME").context("neither CARGO_TARGET_DIR nor HOME is set")?)
            .join(".cache/commerce-stack/target"),
    };
    let binary = target.join("release/bench-hello-world");
    if !binary.is_file() {
        bail!(
            "{} does not exist: build it with `cargo build --release -p commerce-e2e --bin bench-hello-world`",
            binary.display()
        );
    }
    Ok(binary)
}

/// Reports one shop endpoint's ratio to the hello world (a `FIGURE` line
/// with the rates, the rate-limit setting and wrk's error counts, and the
/// `BENCH` line `make bench` collects); a run with errors is not a figure
/// (the test fails after printing).
fn figure(id: &str, endpoint: &str, limits: &str, hello: &WrkReport, report: &WrkReport, target: f64) {
    let ratio = report.requests_per_second / hello.requests_per_second;
    support::bench::report(
        id,
        ratio,
        Target::AtLeast(target),
        &format!(
            "hello world {:.0} req/s; {endpoint} {:.0} req/s; {limits}; {} requests, {} non-2xx/3xx, {} socket errors",
            hello.requests_per_second,
            report.requests_per_second,
            report.requests,
            report.non_success,
            report.socket_errors
        ),
    );
}

/// Both endpoints measured with the shop's rate limits as they are now.
struct Measured {
    by_id: WrkReport,
    list: WrkReport,
}

async fn measure_both(
    gateway: &str,
    by_id_path: &str,
    list_path: &str,
    bearer: &str,
) -> anyhow::Result<Measured> {
    let by_id = measure(&format!("{gateway}{by_id_path}"), &[bearer.to_owned()]).await?;
    let list = measure(&format!("{gateway}{list_path}"), &[]).await?;
    Ok(Measured { by_id, list })
}

#[tokio::test]
#[ignore = "benchmark: prints figures; run with --ignored --nocapture"]
async fn product_reads_through_the_gateway_as_a_ratio_of_a_bare_axum_hello_world() -> anyhow::Result<()> {
    let shop = Shop::start(ShopOptions {
        env: vec![
            ("COMMERCE_RATELIMIT_DEFAULT_PER_MINUTE".to_owned(), RATE_LIMIT_PER_MINUTE.to_owned()),
            ("COMMERCE_RATELIMIT_DEFAULT_BURST".to_owned(), RATE_LIMIT_BURST.to_owned()),
            // Twenty demo products, as in `commerce local up`: with the
            // product made here the listed page is a full one of twenty.
            ("COMMERCE_SEED_DEMO_CATALOG".to_owned(), "true".to_owned()),
        ],
    })
    .await?;
    let api = Api::new(&shop);
    let admin = api.admin().await?;
    let category = api.create_category(&admin, "Read path").await?;
    let product = api.create_product(&admin, &category, "Read-path widget", 1999, 0).await?;
    let customer = api.register_customer("reader").await?;
    // Both endpoints answer before anything is measured (a 4xx here would
    // make every measured request an error).
    let by_id_path = format!("/api/products/{product}");
    let read = api.get(&by_id_path, Some(&customer.access_token)).await?.expect(StatusCode::OK)?;
    anyhow::ensure!(string(&read, "id")? == product, "GET {by_id_path} answered {read}");
    let list_path = "/api/products?page_size=20";
    let page = api.get(list_path, None).await?.expect(StatusCode::OK)?;
    let listed = page["products"].as_array().map_or(0, Vec::len);
    anyhow::ensure!(listed == 20, "GET {list_path} listed {listed} products, not a full page: {page}");

    let hello = HelloWorld::start()?;
    let hello_report = measure(&hello.url, &[]).await?;
    drop(hello);
    let bearer = format!("Authorization: Bearer {}", customer.access_token);
    let gateway = shop.gateway_url.as_str();
    let limited = measure_both(gateway, &by_id_path, list_path, &bearer).await?;

    // The built-in rule switched off for every gateway sharing this Redis
    // prefix (one here); a rule stored in Redis wins over the default.
    let disabled = json!({
        "match": {"path": "/api/**"}, "key": "ip",
        "rate": 1, "period": "1m", "burst": 1, "disabled": true,
    });
    api.call(Method::PUT, "/api/admin/ratelimits/default-ip", Some(&admin.access_token), Some(&disabled))
        .await?
        .expect(StatusCode::OK)?;
    let probe = api.http.get(format!("{gateway}{list_path}")).send().await?;
    anyhow::ensure!(!probe.headers().contains_key("ratelimit-policy"), "default-ip still applies");
    let unlimited = measure_both(gateway, &by_id_path, list_path, &bearer).await?;

    println!(
        "FIGURE read path: wrk {THREADS} threads, {CONNECTIONS} connections, {} s after {} s of warm-up; \
         shop {}; the list has {listed} products",
        MEASURE_FOR.as_secs(),
        WARM_UP.as_secs(),
        support::shop::binary_path()?.display(),
    );
    let raised = format!(
        "rate limits raised (default-ip {RATE_LIMIT_PER_MINUTE}/min, burst {RATE_LIMIT_BURST}): \
         every request spends a token of the shared counter in Redis, mostly leased ahead"
    );
    let off = "rate limits off (default-ip disabled)".to_owned();
    for (suffix, limits, measured) in [("_limits_on", &raised, &limited), ("", &off, &unlimited)] {
        let (by_id, list) = (&measured.by_id, &measured.list);
        let endpoint = "GET /api/products/{id} (bearer)";
        let id = format!("product_by_id_vs_hello_world{suffix}");
        figure(&id, endpoint, limits, &hello_report, by_id, TARGET_PRODUCT_BY_ID);
        let endpoint = "GET /api/products?page_size=20";
        let id = format!("product_list_vs_hello_world{suffix}");
        figure(&id, endpoint, limits, &hello_report, list, TARGET_PRODUCT_LIST);
    }
    shop.stop()?;
    for (limits, measured) in [(&raised, &limited), (&off, &unlimited)] {
        anyhow::ensure!(
            measured.by_id.errors() == 0 && measured.list.errors() == 0,
            "the run with {limits} is not a figure: by id {:?}, list {:?} (see {})",
            measured.by_id,
            measured.list,
            shop.log_path.display()
        );
        anyhow::ensure!(measured.by_id.requests > 0 && measured.list.requests > 0, "wrk sent nothing");
    }
    // A good run's log is a gigabyte of access-log lines: kept only when it
    // explains a failure.
    let _ = std::fs::remove_file(&shop.log_path);
    Ok(())
}

/// What the tracing overhead may cost the gateway's reads: traced
/// throughput at least this share of the untraced (our own bar; the issue
/// asks for the figure).
const TARGET_TRACED_SHARE: f64 = 0.90;

/// The by-id and list reads of a fresh shop started with `env` (rate limits
/// off), measured after the same set-up as the ratio benchmark above.
async fn reads_of_a_shop(env: Vec<(String, String)>) -> anyhow::Result<(Measured, PathBuf)> {
    let mut env = env;
    env.push(("COMMERCE_RATELIMIT_DEFAULT_PER_MINUTE".to_owned(), "0".to_owned()));
    env.push(("COMMERCE_SEED_DEMO_CATALOG".to_owned(), "true".to_owned()));
    let shop = Shop::start(ShopOptions { env }).await?;
    let api = Api::new(&shop);
    let admin = api.admin().await?;
    let category = api.create_category(&admin, "Traced reads").await?;
    let product = api.create_product(&admin, &category, "Traced widget", 1999, 0).await?;
    let customer = api.register_customer("traced-reader").await?;
    let by_id_path = format!("/api/products/{product}");
    api.get(&by_id_path, Some(&customer.access_token)).await?.expect(StatusCode::OK)?;
    let list_path = "/api/products?page_size=20";
    api.get(list_path, None).await?.expect(StatusCode::OK)?;
    let bearer = format!("Authorization: Bearer {}", customer.access_token);
    let measured = measure_both(&shop.gateway_url, &by_id_path, list_path, &bearer).await?;
    shop.stop()?;
    anyhow::ensure!(
        measured.by_id.errors() == 0 && measured.list.errors() == 0,
        "not a figure: by id {:?}, list {:?} (see {})",
        measured.by_id,
        measured.list,
        shop.log_path.display()
    );
    Ok((measured, shop.log_path.clone()))
}

/// Benchmark: the cost of tracing on the gateway's reads. The same reads
/// through two release shops, one after the other in one run: one with
/// tracing off (no OTLP endpoint: spans are still made, their ids travel
/// and are logged, nothing is exported), one exporting every span over
/// OTLP/gRPC to a Jaeger on this machine (which takes its share of the two
/// cores, as a collector on the node would). Printed as traced ÷ untraced.
#[tokio::test]
#[ignore = "benchmark: prints figures; run with --ignored --nocapture"]
async fn tracing_overhead_on_gateway_reads_is_printed() -> anyhow::Result<()> {
    let jaeger = Jaeger::start()?;
    let http = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(10)).build()?;
    jaeger.wait_ready(&http).await?;
    let (off, off_log) = reads_of_a_shop(Vec::new()).await?;
    let export = vec![("OTEL_EXPORTER_OTLP_ENDPOINT".to_owned(), jaeger.otlp.clone())];
    let (on, on_log) = reads_of_a_shop(export).await?;
    // The traced reads reached Jaeger (the gateway's spans are there).
    let services: serde_json::Value =
        http.get(format!("{}/api/services", jaeger.query)).send().await?.json().await?;
    anyhow::ensure!(
        services["data"].as_array().is_some_and(|names| names.iter().any(|name| name == "commerce")),
        "no span of the traced shop reached Jaeger: {services}"
    );
    for (id, endpoint, off, on) in [
        ("traced_vs_untraced_product_by_id", "GET /api/products/{id} (bearer)", &off.by_id, &on.by_id),
        ("traced_vs_untraced_product_list", "GET /api/products?page_size=20", &off.list, &on.list),
    ] {
        support::bench::report(
            id,
            on.requests_per_second / off.requests_per_second,
            Target::AtLeast(TARGET_TRACED_SHARE),
            &format!(
                "{endpoint}: traced (OTLP to a local Jaeger) {:.0} req/s, untraced {:.0} req/s; rate limits off; \
                 wrk {THREADS} threads, {CONNECTIONS} connections, {} s",
                on.requests_per_second,
                off.requests_per_second,
                MEASURE_FOR.as_secs()
            ),
        );
    }
    let _ = std::fs::remove_file(off_log);
    let _ = std::fs::remove_file(on_log);
    Ok(())
}

#[test]
fn a_wrk_report_with_errors_is_read_into_counts() -> anyhow::Result<()> {
    let output = "Running 10s test @ http://127.0.0.1:8080/
  2 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   211.36us  101.20us   6.21ms   89.66%
    Req/Sec    74.51k     4.12k   83.10k    71.00%
  1482954 requests in 10.00s, 183.84MB read
  Socket errors: connect 0, read 2, write 0, timeout 3
  Non-2xx or 3xx responses: 7
Requests/sec: 148290.64
Transfer/sec:     18.38MB
";
    let report = WrkReport::parse(output)?;
    assert_eq!(
        report,
        WrkReport { requests: 1_482_954, requests_per_second: 148_290.64, non_success: 7, socket_errors: 5 }
    );
    assert_eq!(report.errors(), 12);
    assert!(WrkReport::parse("wrk: connection refused").is_err(), "a report without a rate is refused");
    Ok(())
}
