//! The OpenAPI document is the truth: schemathesis (PyPI, installed by
//! `e2e/scripts/schemathesis.sh` into a cached virtualenv) reads the
//! gateway's `/api/openapi.json`, generates requests from it (examples,
//! boundary coverage, random fuzzing and stateful sequences that follow
//! the ids one answer gives to the next request) and runs every check it
//! has against each answer: no 5xx, every status, header, content type and
//! body as documented, schema-valid requests accepted, invalid ones
//! refused, authentication enforced, deleted resources gone. It runs once
//! as a customer and once as the bootstrap admin, against a shop of its own.
//!
//! `e2e/schemathesis.toml` holds the two settings a schema cannot carry
//! (which refusals a valid request may still get, and that page tokens are
//! not forged); everything else the fuzzer knows comes from the document.
//!
//! The seed is fixed so that CI runs are reproducible; set
//! `COMMERCE_SCHEMATHESIS_SEED` to explore others.

mod support;

use std::path::Path;
use std::process::Command;

use support::api::Api;
use support::shop::{Shop, ShopOptions};

/// Test cases per operation and phase.
const MAX_EXAMPLES: &str = "25";
const DEFAULT_SEED: &str = "20261204";

#[tokio::test]
async fn schemathesis_finds_no_failure_as_a_customer_or_as_an_admin() {
    let executable = std::env::var("COMMERCE_SCHEMATHESIS").expect("source e2e/infra.env");
    assert!(
        Path::new(&executable).is_file(),
        "{executable} is missing: run `bash e2e/scripts/schemathesis.sh install` (make test does)"
    );
    // Thousands of requests from one address: the built-in per-IP limits
    // would answer most of them 429, which schemathesis accepts but which
    // would test nothing.
    let limits = [
        ("COMMERCE_RATELIMIT_DEFAULT_PER_MINUTE", "1000000"),
        ("COMMERCE_RATELIMIT_DEFAULT_BURST", "100000"),
        ("COMMERCE_RATELIMIT_AUTH_PER_MINUTE", "1000000"),
        ("COMMERCE_RATELIMIT_AUTH_BURST", "100000"),
    ];
    let options = ShopOptions {
        env: limits.iter().map(|(name, value)| ((*name).to_owned(), (*value).to_owned())).collect(),
    };
    let shop = Shop::start(options).await.expect("the shop starts");
    let api = Api::new(&shop);
    let customer = api.register_customer("fuzzed").await.expect("a customer registers");
    let admin = api.admin().await.expect("the bootstrap admin logs in");
    // Something for the stateful phase and the listings to find.
    let category = api.create_category(&admin, "Fuzzed").await.expect("category");
    api.create_product(&admin, &category, "Fuzzed lamp", 2500, 50).await.expect("product");

    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("schemathesis.toml");
    let seed = std::env::var("COMMERCE_SCHEMATHESIS_SEED").unwrap_or_else(|_| DEFAULT_SEED.to_owned());
    let document = format!("{}/api/openapi.json", shop.gateway_url);
    // schemathesis keeps a cache in its working directory: not in the clone.
    let scratch = std::env::temp_dir().join("commerce-e2e").join("schemathesis");
    std::fs::create_dir_all(&scratch).expect("a scratch directory");
    let mut failed = Vec::new();
    for (who, token) in [("customer", customer.access_token.clone()), ("admin", admin.access_token.clone())] {
        let mut command = Command::new(&executable);
        command
            .current_dir(&scratch)
            .arg("--config-file")
            .arg(&config)
            .args(["--no-color", "run", &document])
            .args(["--checks", "all", "--phases", "examples,coverage,fuzzing,stateful"])
            .args(["--max-examples", MAX_EXAMPLES, "--seed", &seed])
            // One worker: hypothesis's source inspection is not thread-safe
            // (two workers crashed it with an AST recursion error).
            .args(["--workers", "1"])
            // The live order streams stay open while the order lives, and
            // schemathesis reads every answer to its end; tests/shop.rs
            // drives them instead.
            .args([
                "--exclude-operation-id",
                "get_orders_live",
                "--exclude-operation-id",
                "get_orders_id_events",
            ])
            .args(["--header", &format!("Authorization: Bearer {token}")]);
        let output = tokio::task::spawn_blocking(move || command.output())
            .await
            .expect("the runner thread")
            .expect("schemathesis runs");
        let stdout = String::from_utf8_lossy(&output.stdout);
        // The warnings (what the run could not reach) and the summary.
        let tail = stdout.find(" WARNINGS ").or_else(|| stdout.find("SUMMARY"));
        let summary = tail.map_or(stdout.as_ref(), |at| &stdout[at..]);
        eprintln!("schemathesis as {who} (seed {seed}), exit {:?}:\n{summary}", output.status.code());
        if !output.status.success() {
            failed.push(format!(
                "as {who}: exit {:?}\n{stdout}\n{}",
                output.status.code(),
                String::from_utf8_lossy(&output.stderr)
            ));
        }
    }
    shop.stop().expect("the shop stops");
    assert!(failed.is_empty(), "schemathesis found failures:\n{}", failed.join("\n\n"));
}
