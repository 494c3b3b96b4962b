//! Traces end to end: every service of a shop runs as a process of its own
//! (as in a cluster, each its own `service.name`), exporting spans over
//! OTLP/gRPC to a real Jaeger v2 on loopback (built from its Go module by
//! `e2e/scripts/jaeger.sh`). One checkout, sent with a `traceparent` and a
//! `tracestate` of the test's own, must come back from Jaeger's query API as
//! one trace: spans of the gateway, order, inventory, payment and shipping,
//! each with its parent in the trace, the consumers' spans children of the
//! relay's publications (the link through Kafka), and the order id on the
//! spans that handle it; the gateway's and the order service's latency
//! histograms carry the trace id as exemplar. The test prints the trace's
//! span tree.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};
use commerce_topology::Service;
use reqwest::Method;
use serde_json::Value;

use support::fault::{self, Shop};
use support::jaeger::Jaeger;
use support::shop::infra_var;

/// How long the shop's processes may take to be ready.
const READY: Duration = Duration::from_secs(180);

/// One span as Jaeger's query API gives it.
#[derive(Debug, Clone)]
struct Span {
    id: String,
    parent: Option<String>,
    service: String,
    operation: String,
    tags: BTreeMap<String, Value>,
    start: u64,
}

/// The spans of trace `trace_id` in `answer` (`GET /api/traces/<id>`).
fn spans(answer: &Value) -> Result<Vec<Span>> {
    let trace = &answer["data"][0];
    let processes = &trace["processes"];
    let spans = trace["spans"].as_array().context("a trace with spans")?;
    spans
        .iter()
        .map(|span| {
            let process = span["processID"].as_str().context("processID")?;
            Ok(Span {
                id: span["spanID"].as_str().context("spanID")?.to_owned(),
                parent: span["references"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|reference| reference["refType"] == "CHILD_OF")
                    .and_then(|reference| reference["spanID"].as_str())
                    .map(str::to_owned),
                service: processes[process]["serviceName"].as_str().context("serviceName")?.to_owned(),
                operation: span["operationName"].as_str().context("operationName")?.to_owned(),
                tags: span["tags"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|tag| Some((tag["key"].as_str()?.to_owned(), tag["value"].clone())))
                    .collect(),
                start: span["startTime"].as_u64().unwrap_or_default(),
            })
        })
        .collect()
}

/// The span tree under the spans whose parent is `parent`, one line per
/// span (service: operation), children indented, each level by start time.
fn tree(spans: &[Span], parent: Option<&str>, depth: usize, out: &mut String) {
    let mut children: Vec<&Span> = spans.iter().filter(|span| span.parent.as_deref() == parent).collect();
    children.sort_by_key(|span| span.start);
    for span in children {
        out.push_str(&format!("{}{}: {}\n", "  ".repeat(depth), span.service, span.operation));
        tree(spans, Some(&span.id), depth + 1, out);
    }
}

#[tokio::test]
async fn one_checkout_is_one_trace_across_the_services_linked_through_kafka() -> Result<()> {
    let jaeger = Jaeger::start()?;
    let http = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(10)).build()?;
    jaeger.wait_ready(&http).await?;

    // Every service a process of its own, exporting to Jaeger.
    let mut shop =
        Shop::new(infra_var("COMMERCE_KAFKA_BROKERS")?, infra_var("COMMERCE_POSTGRES_ADMIN_URL")?)?;
    let export = [("OTEL_EXPORTER_OTLP_ENDPOINT", jaeger.otlp.as_str()), ("OTEL_BSP_SCHEDULE_DELAY", "200")];
    for service in Service::ALL {
        shop.serve(service.name(), &[service], &export)?;
    }
    let result = checkout_trace(&mut shop, &jaeger, &http).await;
    shop.teardown().await;
    result
}

async fn checkout_trace(shop: &mut Shop, jaeger: &Jaeger, http: &reqwest::Client) -> Result<()> {
    shop.wait_ready(&Service::ALL, READY).await?;
    let admin = fault::admin(shop).await?;
    let products = fault::seed_products(&admin, &shop.run, &[5]).await?;
    let buyer = fault::customers(shop, 1).await?.remove(0);

    // The checkout, in a trace of the test's own.
    let trace_id = uuid::Uuid::new_v4().simple().to_string();
    let caller_span = &uuid::Uuid::new_v4().simple().to_string()[..16];
    let body = support::api::order_body(&[(products[0].as_str(), 1)], "tok_visa");
    let request = buyer
        .api
        .request(Method::POST, "/api/orders", Some(&buyer.token), Some(&body))
        .header("Idempotency-Key", uuid::Uuid::new_v4().to_string())
        .header("traceparent", format!("00-{trace_id}-{caller_span}-01"))
        .header("tracestate", "commerce-e2e=checkout");
    let placed = buyer.api.send(request).await?.expect(reqwest::StatusCode::CREATED)?;
    let order_id = placed["id"].as_str().context("order id")?.to_owned();
    support::wait_for("the order to be confirmed", Duration::from_secs(90), || async {
        let order = buyer.call(Method::GET, &format!("/api/orders/{order_id}"), None).await?;
        let status = order.body["status"].as_str().unwrap_or_default().to_owned();
        if ["rejected", "failed", "cancelled"].contains(&status.as_str()) {
            bail!("the order ended {status}: {}", order.body);
        }
        Ok((status == "confirmed" || status == "shipped" || status == "delivered").then_some(()))
    })
    .await?;

    // Jaeger has the trace once shipping consumed the confirmation.
    let wanted: BTreeSet<&str> = ["gateway", "order", "inventory", "payment", "shipping"].into();
    let spans = support::wait_for("the checkout's trace in Jaeger", Duration::from_secs(60), || async {
        let answer = http.get(format!("{}/api/traces/{trace_id}", jaeger.query)).send().await?;
        if !answer.status().is_success() {
            return Ok(None);
        }
        let spans = spans(&answer.json().await?)?;
        let services: BTreeSet<&str> = spans.iter().map(|span| span.service.as_str()).collect();
        // Spans arrive as each ends and each process exports: wait for the
        // whole tree, every parent in it.
        let ids: BTreeSet<&str> = spans.iter().map(|span| span.id.as_str()).collect();
        let whole = spans.iter().all(|span| {
            span.parent.as_deref().is_some_and(|parent| parent == caller_span || ids.contains(parent))
        });
        let shipped = spans.iter().any(|span| {
            span.service == "shipping" && span.tags.get("span.kind").is_some_and(|kind| kind == "consumer")
        });
        Ok((wanted.is_subset(&services) && shipped && whole).then_some(spans))
    })
    .await;
    let spans = match spans {
        Ok((spans, _)) => spans,
        Err(error) => {
            // What Jaeger has of the trace, to see where it broke.
            let answer: Value =
                http.get(format!("{}/api/traces/{trace_id}", jaeger.query)).send().await?.json().await?;
            let found = self::spans(&answer).unwrap_or_default();
            let mut printed = String::new();
            tree(&found, Some(caller_span), 0, &mut printed);
            let orphans: Vec<String> = found
                .iter()
                .filter(|span| !found.iter().any(|other| Some(&other.id) == span.parent.as_ref()))
                .map(|span| format!("{}: {} (parent {:?})", span.service, span.operation, span.parent))
                .collect();
            let services: Value =
                http.get(format!("{}/api/services", jaeger.query)).send().await?.json().await?;
            return Err(error.context(format!(
                "the trace so far:\n{printed}\nspans without a parent in it: {orphans:?}\nservices in Jaeger: {}",
                services["data"]
            )));
        }
    };

    let mut printed = String::new();
    tree(&spans, Some(caller_span), 0, &mut printed);
    println!("FIGURE the checkout's trace {trace_id} ({} spans):\n{printed}", spans.len());

    // One tree: the gateway's span is the child of the test's, every other
    // span has its parent in the trace.
    let ids: BTreeSet<&str> = spans.iter().map(|span| span.id.as_str()).collect();
    let roots: Vec<&Span> = spans.iter().filter(|span| span.parent.as_deref() == Some(caller_span)).collect();
    ensure!(
        roots.len() == 1 && roots[0].service == "gateway" && roots[0].operation == "POST /api/orders",
        "the trace starts at the gateway's POST /api/orders under the caller's span: {roots:?}"
    );
    for span in &spans {
        if span.parent.as_deref() != Some(caller_span) {
            let parent = span.parent.as_deref().with_context(|| format!("{span:?} has no parent"))?;
            ensure!(
                ids.contains(parent),
                "the parent of {} ({}) is not in the trace",
                span.operation,
                span.service
            );
        }
    }
    // Through Kafka: each consumer's span is the child of a relay's
    // publication, itself under the span that wrote the event.
    let by_id: BTreeMap<&str, &Span> = spans.iter().map(|span| (span.id.as_str(), span)).collect();
    let consumed: Vec<&Span> = spans.iter().filter(|span| span.operation.starts_with("consume ")).collect();
    ensure!(consumed.len() >= 4, "the saga's events were consumed in the trace: {consumed:?}");
    for span in &consumed {
        let parent =
            span.parent.as_deref().and_then(|id| by_id.get(id)).context("a consumer without parent")?;
        ensure!(
            parent.operation.starts_with("publish ")
                && parent.tags.get("span.kind").is_some_and(|kind| kind == "producer"),
            "{} ({}) is not the child of a publication but of {}",
            span.operation,
            span.service,
            parent.operation
        );
    }
    // The order id names the spans that handle the order.
    let with_order: BTreeSet<&str> = spans
        .iter()
        .filter(|span| span.tags.get("order_id").is_some_and(|id| id == order_id.as_str()))
        .map(|span| span.service.as_str())
        .collect();
    ensure!(
        ["order", "inventory", "payment", "shipping"].iter().all(|service| with_order.contains(service)),
        "spans with order_id {order_id} only in {with_order:?}"
    );
    // The latency metrics carry the trace as exemplar: the gateway's for
    // the placement's route and the order service's for PlaceOrder (one
    // request each in this shop, so the exemplar is the checkout's).
    for (service, metric, labels) in [
        (
            Service::Gateway,
            "commerce_gateway_http_request_duration_seconds_bucket{",
            r#"route="/api/orders"}"#,
        ),
        (
            Service::Order,
            "commerce_grpc_server_handling_seconds_bucket{",
            r#"grpc_service="commerce.order.v1.OrderService",grpc_method="PlaceOrder"}"#,
        ),
    ] {
        let metrics = http.get(format!("{}/metrics", shop.admin_url(service))).send().await?.text().await?;
        let exemplar = format!(r#"# {{trace_id="{trace_id}"}}"#);
        let buckets: Vec<&str> =
            metrics.lines().filter(|line| line.starts_with(metric) && line.contains(labels)).collect();
        ensure!(
            buckets.iter().any(|line| line.contains(&exemplar)),
            "no bucket of {metric}...{labels} carries the exemplar {exemplar}: {buckets:?}"
        );
    }
    // The database transactions are spans too.
    ensure!(
        spans.iter().any(|span| span.operation == "place order" && span.service == "order"),
        "no transaction span of the placement"
    );
    // The gateway's catalog version check (ten a second all along) is not
    // exported, by the gateway nor by the catalog; the requests' spans are.
    let poll = "commerce.catalog.v1.CatalogService/GetCatalogVersion";
    for service in ["gateway", "catalog"] {
        let answer: Value = http
            .get(format!("{}/api/services/{service}/operations", jaeger.query))
            .send()
            .await?
            .json()
            .await?;
        let operations: Vec<&str> =
            answer["data"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
        // The seeding and the checkout's spans are there.
        ensure!(!operations.is_empty(), "{service} exported no span: {answer}");
        ensure!(!operations.contains(&poll), "{service} exported the catalog version poll: {operations:?}");
    }
    Ok(())
}
