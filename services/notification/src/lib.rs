//! The notification service: one inbox entry per user-visible saga step,
//! built from order, payment and shipment events (ARCHITECTURE section 4,
//! saga step 8).
//!
//! [`serve`] hands the lifecycle to the platform's [`ServiceRuntime`] and
//! wires the service's parts: database, consumer with its dead-letter topic
//! (no outbox relay: it publishes nothing), the mailer when the email
//! channel is on ([`mailer`]) and the gRPC server; all stop on `shutdown`.

pub mod config;
pub mod domain;
pub mod email;
pub mod events;
pub mod grpc;
pub mod mailer;
pub mod store;

use commerce_platform::runtime::{RuntimeError, ServiceRuntime};
use commerce_proto::notification::v1::notification_service_server::NotificationServiceServer;
use commerce_topology::Service;
use tokio_util::sync::CancellationToken;

pub use commerce_platform::error_chain;
pub use config::Config;

/// The service's own migrations (`migrations/`).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!();

/// Everything that can fail in the notification service, named after the action.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A step of the service's lifecycle (database, Kafka, servers) failed.
    #[error(transparent)]
    Run(#[from] RuntimeError),
    #[error("{field}: {problem}")]
    InvalidRequest { field: &'static str, problem: &'static str },
    #[error("cannot read notifications")]
    LoadNotifications(#[source] sqlx::Error),
    #[error("cannot store notifications")]
    StoreNotification(#[source] sqlx::Error),
    #[error("the email channel is misconfigured: {0}")]
    ConfigureEmail(String),
}

/// Runs the notification service until `shutdown` is cancelled.
pub async fn serve(config: Config, shutdown: CancellationToken) -> Result<(), Error> {
    let smtp = mailer::SmtpSettings::from_args(&config.email)?;
    ServiceRuntime::new(Service::Notification, &config.common)
        .serve(shutdown, |wiring| async move {
            let pool = wiring.connect_database(&config.database, &MIGRATOR).await?;
            // No outbox relay: it publishes nothing. The producer is the
            // way of the consumer and the mailer to the dead-letter topic.
            let producer = wiring.start_producer(&config.kafka)?;
            if let Some(smtp) = smtp {
                let mailer = mailer::Mailer::new(
                    pool.clone(),
                    smtp,
                    producer.clone(),
                    producer.names().dead_letter_topic(Service::Notification),
                    mailer::MailerMetrics::register(wiring.metrics()),
                );
                wiring.spawn_task("mailer", mailer.run(wiring.stop_token()));
            }
            wiring.start_consumer(
                Service::Notification,
                &config.kafka,
                pool.clone(),
                producer,
                events::NotificationEventHandler::new(config.email.enabled()),
            )?;
            Ok(wiring
                .grpc_server()
                .add_service(NotificationServiceServer::new(grpc::NotificationGrpc::new(pool))))
        })
        .await
}
