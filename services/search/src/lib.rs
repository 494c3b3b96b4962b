//! The search service: full-text search over the products with relevance
//! ranking, typo tolerance, highlights, facets with counts and
//! autocomplete (issue: the rest of the seeds' shop, item 3).
//!
//! **A read model.** The index is fed by events only ([`events`]): the
//! catalog's product events, inventory's availability and the reviews'
//! ratings. It calls no service, so a search never waits on the catalog,
//! and every replica reads one shared index.
//!
//! **Postgres rather than tantivy.** Full-text search with `tsvector`
//! (stemming, weighted ranking with `ts_rank_cd`, highlights with
//! `ts_headline`) plus `pg_trgm` for typos ([`store`]). tantivy would rank
//! better (BM25) and scale further, but its index lives in one process: each
//! replica would need its own copy fed by its own consumer group, and a
//! restart would rebuild it from the topics. A table in the service's own
//! database is updated in the transaction that records each event as
//! processed (an event is applied exactly once), is shared by every replica,
//! and at the shop's scale (10,000 products) answers in milliseconds (the
//! figure is printed by `tests/latency.rs`).
//!
//! [`serve`] hands the lifecycle to the platform's [`ServiceRuntime`].

pub mod config;
pub mod domain;
pub mod events;
pub mod grpc;
pub mod store;

use commerce_platform::runtime::{RuntimeError, ServiceRuntime};
use commerce_proto::search::v1::search_service_server::SearchServiceServer;
use commerce_topology::Service;
use tokio_util::sync::CancellationToken;

pub use commerce_platform::error_chain;
pub use config::Config;

/// The service's own migrations (`migrations/`).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!();

/// Everything that can fail in the search service, named after the action.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A step of the service's lifecycle (database, Kafka, servers) failed.
    #[error(transparent)]
    Run(#[from] RuntimeError),
    #[error("{field}: {problem}")]
    InvalidRequest { field: &'static str, problem: &'static str },
    #[error("cannot search")]
    Read(#[source] sqlx::Error),
    #[error("cannot update the index")]
    Write(#[source] sqlx::Error),
}

impl Error {
    /// Whether trying again later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Read(_) | Error::Write(_))
    }
}

/// Runs the search service until `shutdown` is cancelled.
pub async fn serve(config: Config, shutdown: CancellationToken) -> Result<(), Error> {
    ServiceRuntime::new(Service::Search, &config.common)
        .serve(shutdown, |wiring| async move {
            let pool = wiring.connect_database(&config.database, &MIGRATOR).await?;
            // No outbox relay: it publishes nothing. The producer is the
            // consumer's way to its dead-letter topic.
            let producer = wiring.start_producer(&config.kafka)?;
            wiring.start_consumer(
                Service::Search,
                &config.kafka,
                pool.clone(),
                producer,
                events::IndexEventHandler,
            )?;
            Ok(wiring.grpc_server().add_service(SearchServiceServer::new(grpc::SearchGrpc::new(pool))))
        })
        .await
}
