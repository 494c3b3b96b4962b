//! The local infrastructure a one-process shop runs on (Postgres, Kafka,
//! Redis from `e2e/infra.env`), how each service is wired to it on this
//! machine ([`LocalWiring`]), and the idempotent preparation the operator
//! does in a cluster: one database per service, the catalog's topics.

use std::fmt;
use std::time::Duration;

use anyhow::Context as _;
use clap::ValueEnum as _;
use commerce_platform::events::{KafkaArgs, ensure_topics};
use commerce_platform::telemetry::LogArgs;
use commerce_topology::{self as catalog, Ports, Service};
use sqlx::Connection as _;
use sqlx::postgres::PgConnection;

/// SQLSTATEs that mean another process created the database first:
/// `duplicate_database`, or `unique_violation` on `pg_database` when both
/// creations ran at the same moment.
const CREATED_CONCURRENTLY: [&str; 2] = ["42P04", "23505"];
/// How long preparing the infrastructure may wait for Postgres or Kafka to
/// answer: they are local, so a minute means they are not running.
const PREPARE_TIMEOUT: Duration = Duration::from_secs(60);
/// Passes over the topics before giving up; see [`LocalWiring::ensure_topics`].
const TOPIC_ATTEMPTS: u32 = 3;
/// Pause before the second pass (doubled before the third): long enough for
/// the other process's creations to show in the brokers' metadata.
const TOPIC_RETRY_DELAY: Duration = Duration::from_millis(500);

/// Where the local infrastructure is. Defaults are those of `e2e/infra.env`,
/// except the Postgres admin URL: it carries a password, so it comes from the
/// environment (`source e2e/infra.env`) or the flag.
#[derive(Clone, clap::Args)]
#[command(next_help_heading = "Local infrastructure")]
pub struct InfraArgs {
    /// Postgres URL of a role that may create databases; each service gets
    /// the database `<database-prefix><service>` on the same server.
    #[arg(long = "postgres-admin-url", env = "COMMERCE_POSTGRES_ADMIN_URL", hide_env_values = true)]
    pub postgres_admin_url: String,
    /// Kafka bootstrap brokers.
    #[arg(long = "kafka-brokers", env = "COMMERCE_KAFKA_BROKERS", default_value = "127.0.0.1:59092")]
    pub kafka_brokers: String,
    /// Redis URL (carts, the catalog cache, the gateway's rate limits).
    #[arg(
        long = "redis-url",
        env = "COMMERCE_REDIS_URL",
        default_value = "redis://127.0.0.1:56379",
        hide_env_values = true
    )]
    pub redis_url: String,
    /// Prefix of every topic and consumer group, so that a second local shop
    /// (a test) can share the brokers without seeing the first one's events.
    #[arg(long = "kafka-name-prefix", env = "COMMERCE_KAFKA_NAME_PREFIX", default_value = "")]
    pub kafka_name_prefix: String,
    /// Prefix of every service's database name.
    #[arg(long = "database-prefix", env = "COMMERCE_DATABASE_PREFIX", default_value = "commerce_")]
    pub database_prefix: String,
    /// Added to every local port (gRPC, admin, HTTP) of the catalog, so that
    /// a second shop can run beside the first one.
    #[arg(long = "port-offset", env = "COMMERCE_PORT_OFFSET", default_value_t = 0)]
    pub port_offset: u16,
}

/// The URLs' passwords are secrets: never in `Debug` output.
impl fmt::Debug for InfraArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InfraArgs")
            .field("postgres_admin_url", &commerce_platform::url::redact(&self.postgres_admin_url))
            .field("kafka_brokers", &self.kafka_brokers)
            .field("redis_url", &commerce_platform::url::redact(&self.redis_url))
            .field("kafka_name_prefix", &self.kafka_name_prefix)
            .field("database_prefix", &self.database_prefix)
            .field("port_offset", &self.port_offset)
            .finish()
    }
}

/// How the services of one process are wired to each other and to the
/// infrastructure: everything [`crate::services`] puts into their flags.
#[derive(Clone)]
pub struct LocalWiring {
    pub log: LogArgs,
    pub postgres_admin_url: url::Url,
    pub kafka_brokers: String,
    pub kafka_name_prefix: String,
    pub redis_url: String,
    pub database_prefix: String,
    pub port_offset: u16,
}

/// The URLs' passwords are secrets: never in `Debug` output.
impl fmt::Debug for LocalWiring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalWiring")
            .field("log", &self.log)
            .field("postgres_admin_url", &commerce_platform::url::redact(self.postgres_admin_url.as_str()))
            .field("kafka_brokers", &self.kafka_brokers)
            .field("kafka_name_prefix", &self.kafka_name_prefix)
            .field("redis_url", &commerce_platform::url::redact(&self.redis_url))
            .field("database_prefix", &self.database_prefix)
            .field("port_offset", &self.port_offset)
            .finish()
    }
}

impl LocalWiring {
    /// The wiring for `infra`, with logging as the process logs.
    pub fn new(infra: &InfraArgs, log: &LogArgs) -> anyhow::Result<Self> {
        let postgres_admin_url = url::Url::parse(&infra.postgres_admin_url).with_context(|| {
            format!(
                "--postgres-admin-url {} is not a URL",
                commerce_platform::url::redact(&infra.postgres_admin_url)
            )
        })?;
        anyhow::ensure!(
            matches!(postgres_admin_url.scheme(), "postgres" | "postgresql"),
            "--postgres-admin-url must be a postgres:// URL"
        );
        Ok(Self {
            log: log.clone(),
            postgres_admin_url,
            kafka_brokers: infra.kafka_brokers.clone(),
            kafka_name_prefix: infra.kafka_name_prefix.clone(),
            redis_url: infra.redis_url.clone(),
            database_prefix: infra.database_prefix.clone(),
            port_offset: infra.port_offset,
        })
    }

    /// The ports `service` listens on in this process.
    pub fn ports(&self, service: Service) -> Ports {
        let shift = |port: u16| port.saturating_add(self.port_offset);
        let ports = service.local_ports();
        Ports { grpc: ports.grpc.map(shift), http: ports.http.map(shift), admin: shift(ports.admin) }
    }

    /// The name of `service`'s database.
    pub fn database_name(&self, service: Service) -> String {
        format!("{}{}", self.database_prefix, service.name())
    }

    /// The admin URL pointed at `service`'s own database.
    pub fn database_url(&self, service: Service) -> String {
        let mut url = self.postgres_admin_url.clone();
        url.set_path(&format!("/{}", self.database_name(service)));
        url.to_string()
    }

    /// The gateway's base URL.
    pub fn gateway_url(&self) -> String {
        let port = self.ports(Service::Gateway).http.unwrap_or(catalog::LOCAL_HTTP_PORT);
        format!("http://127.0.0.1:{port}")
    }

    /// Creates the database of every service in `services` that has one and
    /// lacks it. Idempotent, and safe against a concurrent creator.
    pub async fn ensure_databases(&self, services: &[Service]) -> anyhow::Result<()> {
        let redacted = commerce_platform::url::redact(self.postgres_admin_url.as_str());
        let mut admin =
            tokio::time::timeout(PREPARE_TIMEOUT, PgConnection::connect(self.postgres_admin_url.as_str()))
                .await
                .map_err(|_| {
                    anyhow::anyhow!("Postgres at {redacted} did not answer within {PREPARE_TIMEOUT:?}")
                })?
                .with_context(|| {
                    format!("cannot connect to Postgres at {redacted} (is it running? `make infra`)")
                })?;
        for service in services.iter().filter(|service| service.spec().database) {
            let name = self.database_name(*service);
            let exists: bool =
                sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
                    .bind(&name)
                    .fetch_one(&mut admin)
                    .await
                    .with_context(|| format!("cannot look up database {name}"))?;
            if exists {
                continue;
            }
            // Identifiers cannot be bound; the name is quoted with any quote
            // doubled, as Postgres' quote_ident does.
            let create = format!("CREATE DATABASE \"{}\"", name.replace('"', "\"\""));
            match sqlx::query(&create).execute(&mut admin).await {
                Ok(_) => tracing::info!(database = %name, "database created"),
                Err(sqlx::Error::Database(error))
                    if error.code().is_some_and(|code| CREATED_CONCURRENTLY.contains(&code.as_ref())) => {}
                Err(error) => return Err(error).with_context(|| format!("cannot create database {name}")),
            }
        }
        admin.close().await.ok();
        Ok(())
    }

    /// Creates or updates every topic of the catalog (domain topics and
    /// dead-letter topics), under the configured name prefix.
    ///
    /// Retried a few times: when two processes (two `serve all`, or a test
    /// beside `make up`) prepare the same brokers at once, one of them can
    /// fail on a topic the other created meanwhile; the next pass reads the
    /// current state and finds it as desired.
    pub async fn ensure_topics(&self) -> anyhow::Result<()> {
        let kafka =
            KafkaArgs { name_prefix: self.kafka_name_prefix.clone(), ..KafkaArgs::new(&self.kafka_brokers) };
        let names = kafka.names();
        let desired: Vec<_> = catalog::all_topics().iter().map(|spec| names.desired(spec)).collect();
        let mut attempt = 1;
        let reports = loop {
            let result =
                tokio::time::timeout(PREPARE_TIMEOUT, ensure_topics(&self.kafka_brokers, desired.clone()))
                    .await
                    .map_err(|_| {
                        anyhow::anyhow!(
                            "Kafka at {} did not answer within {PREPARE_TIMEOUT:?}",
                            self.kafka_brokers
                        )
                    })
                    .and_then(|result| {
                        result.with_context(|| {
                            format!(
                                "cannot create the topics on Kafka at {} (is it running? `make infra`)",
                                self.kafka_brokers
                            )
                        })
                    });
            match result {
                Ok(reports) => break reports,
                Err(error) if attempt < TOPIC_ATTEMPTS => {
                    tracing::warn!(
                        attempt,
                        error = format!("{error:#}"),
                        "preparing topics failed; trying again"
                    );
                    tokio::time::sleep(TOPIC_RETRY_DELAY * attempt).await;
                    attempt += 1;
                }
                Err(error) => {
                    return Err(error.context(format!(
                        "cannot prepare the topics in {TOPIC_ATTEMPTS} attempts; is Kafka running? (`make infra`)"
                    )));
                }
            }
        };
        let created = reports.iter().filter(|report| report.was_created()).count();
        tracing::info!(topics = reports.len(), created, "topics ready");
        Ok(())
    }

    #[cfg(test)]
    pub fn for_tests() -> Self {
        Self {
            log: LogArgs::default(),
            postgres_admin_url: url::Url::parse("postgres://postgres:pw@127.0.0.1:55432/postgres")
                .expect("url"),
            kafka_brokers: "127.0.0.1:59092".to_owned(),
            kafka_name_prefix: String::new(),
            redis_url: "redis://127.0.0.1:56379".to_owned(),
            database_prefix: "commerce_".to_owned(),
            port_offset: 0,
        }
    }
}

/// `--log-format`'s value for `log`.
pub fn log_format_name(log: &LogArgs) -> String {
    log.format
        .to_possible_value()
        .map(|value| value.get_name().to_owned())
        .unwrap_or_else(|| "json".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_service_gets_its_own_database_on_the_admin_server() {
        let wiring = LocalWiring::for_tests();
        assert_eq!(
            wiring.database_url(Service::Payment),
            "postgres://postgres:pw@127.0.0.1:55432/commerce_payment"
        );
    }

    #[test]
    fn debug_output_hides_the_admin_password() {
        let shown = format!("{:?}", LocalWiring::for_tests());
        assert!(!shown.contains(":pw@"), "{shown}");
    }

    #[test]
    fn a_port_offset_moves_every_port() {
        let wiring = LocalWiring { port_offset: 1000, ..LocalWiring::for_tests() };
        let gateway = wiring.ports(Service::Gateway);
        assert_eq!((gateway.http, gateway.admin, gateway.grpc), (Some(9080), 10109, None));
        assert_eq!(wiring.ports(Service::Auth).grpc, Some(10151));
        assert_eq!(wiring.gateway_url(), "http://127.0.0.1:9080");
    }
}
