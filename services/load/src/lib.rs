//! The shop's load generator, `commerce load`: users that browse, search,
//! fill carts, check out, follow and cancel orders through the gateway's
//! REST API, the way the shop's clients do, against the local shop (`make
//! up`) or a cluster's Ingress.
//!
//! It is built on [goose](https://book.goose.rs), a maintained load-testing
//! library: goose runs the weighted scenarios ([`scenarios`]), starts users
//! at a given rate, prints running metrics while the run goes, and writes
//! the reports (`--report-file run.html`: per-request counts, failures,
//! response-time percentiles and graphs over time, made self-contained by
//! [`report`]; `.json` and `.md` too).
//! Every goose option passes through ([`options`]); this crate adds the
//! shop's scenarios, a few shop flags and defaults, a read of the catalog
//! before the run ([`catalog`]), and the closing summary ([`summary`]).
//!
//! Against the local shop, mind its rate limits: the gateway of `make up`
//! allows each client address 600 requests a minute to `/api/` and 20 to
//! `/api/auth/`, and this machine is one client, so a heavier run meets 429
//! answers, counted as failures like any other. Orders use up the demo stock
//! (`commerce local up --demo-stock`); an order rejected for want of stock is
//! a failure too.

pub mod catalog;
pub mod options;
pub mod report;
pub mod scenarios;
pub mod summary;

use std::sync::Arc;

use goose::GooseAttack;
use goose::prelude::GooseError;
use url::Url;

pub use crate::options::{LoadArgs, describe_defaults, local_gateway};
pub use crate::summary::{Counts, Summary};

use crate::catalog::Catalog;
use crate::scenarios::Plan;

/// What can stop a load run before or while it runs.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{host} is not the base URL of a gateway (such as http://127.0.0.1:8080)")]
    ParseHost {
        host: String,
        #[source]
        source: url::ParseError,
    },
    #[error("cannot build an HTTP client")]
    BuildClient(#[source] reqwest::Error),
    #[error("cannot read the catalog at {url} (is the shop running there, and is --host its gateway?)")]
    ReadCatalog {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error(
        "the shop at {host} has no active products to view or buy: `commerce local up` seeds demo products, \
         or create some through /api/admin/products"
    )]
    FindProducts { host: String },
    #[error("cannot set up the load test")]
    Prepare(#[source] GooseError),
    #[error("the load test failed")]
    Run(#[source] GooseError),
    #[error("cannot make the HTML report self-contained")]
    InlineCharts(#[source] std::io::Error),
}

/// Runs the load `args` describe and returns its summary, or `None` when
/// the flags asked goose for something other than a run (its version, its
/// scenario list, a report rendered from an earlier run). Goose prints its
/// own progress and final tables and writes the reports; the caller prints
/// the summary.
pub async fn run(args: LoadArgs) -> Result<Option<Summary>, Error> {
    let config = options::with_shop_defaults(args.goose);
    let host = config.host.clone().unwrap_or_else(local_gateway);
    let base = Url::parse(&host).map_err(|source| Error::ParseHost { host: host.clone(), source })?;
    let runs = options::runs_load(&config);
    let report_files = config.report_file.clone();
    let catalog =
        if runs { Catalog::read(&base, config.accept_invalid_certs).await? } else { Catalog::default() };
    let plan = Arc::new(Plan {
        catalog,
        card_token: args.card_token,
        cancel_every: args.cancel_every,
        order_timeout: args.order_timeout,
        think_time: args.think_time,
    });
    let metrics = GooseAttack::initialize_with_config(config)
        .map_err(Error::Prepare)?
        .register_scenario(scenarios::visitor(&plan).map_err(Error::Prepare)?)
        .register_scenario(scenarios::buyer(&plan).map_err(Error::Prepare)?)
        .execute()
        .await
        .map_err(Error::Run)?;
    report::inline_charts_in_files(&report_files).map_err(Error::InlineCharts)?;
    Ok(runs.then(|| Summary::new(&host, &metrics)))
}
