//! The profile service: each user's profile (display name, phone,
//! preferences) and address book, with the default address that checkout
//! uses when an order names none (issue: the rest of the seeds' shop, item
//! 1). It consumes the Users topic (a registration creates the profile) and
//! publishes nothing yet.
//!
//! [`serve`] hands the lifecycle to the platform's [`ServiceRuntime`].

pub mod config;
pub mod domain;
pub mod events;
pub mod grpc;
pub mod store;

use commerce_platform::runtime::{RuntimeError, ServiceRuntime};
use commerce_proto::profile::v1::profile_service_server::ProfileServiceServer;
use commerce_topology::Service;
use tokio_util::sync::CancellationToken;

pub use commerce_platform::error_chain;
pub use config::Config;

/// The service's own migrations (`migrations/`).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!();

/// Everything that can fail in the profile service, named after the action.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A step of the service's lifecycle (database, Kafka, servers) failed.
    #[error(transparent)]
    Run(#[from] RuntimeError),
    #[error("{field}: {problem}")]
    InvalidRequest { field: &'static str, problem: &'static str },
    #[error("no such address in the user's address book")]
    AddressNotFound,
    #[error("the user's address book is empty: no default address")]
    NoDefaultAddress,
    #[error("the address book is full ({} addresses); delete one first", domain::MAX_ADDRESSES)]
    BookFull,
    #[error("cannot read profiles")]
    Read(#[source] sqlx::Error),
    #[error("cannot write the profile")]
    Write(#[source] sqlx::Error),
}

impl Error {
    /// Whether trying again later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Read(_) | Error::Write(_))
    }
}

/// Runs the profile service until `shutdown` is cancelled.
pub async fn serve(config: Config, shutdown: CancellationToken) -> Result<(), Error> {
    ServiceRuntime::new(Service::Profile, &config.common)
        .serve(shutdown, |wiring| async move {
            let pool = wiring.connect_database(&config.database, &MIGRATOR).await?;
            // No outbox relay: it publishes nothing. The producer is the
            // consumer's way to its dead-letter topic.
            let producer = wiring.start_producer(&config.kafka)?;
            wiring.start_consumer(
                Service::Profile,
                &config.kafka,
                pool.clone(),
                producer,
                events::ProfileEventHandler,
            )?;
            Ok(wiring.grpc_server().add_service(ProfileServiceServer::new(grpc::ProfileGrpc::new(pool))))
        })
        .await
}
