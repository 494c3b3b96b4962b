//! The real [`ExternalState`]: topics through the platform's topic admin
//! (`commerce_platform::events`), one client per distinct bootstrap-servers
//! value while reconciles use it ([`AdminCache`]), databases and roles
//! through sqlx as the server's admin; and the periodic check that notices
//! a topic deleted out of band ([`TopicWatch`]).
//!
//! Every Kafka error names the bootstrap servers it tried (`kafka
//! 127.0.0.1:1: ...`), so that a status message says which address refused.
//!
//! Every call reads before it writes: a topic that matches, a role and a
//! database that exist, a password already set by this process are left
//! alone, so a reconcile with nothing to do changes nothing. Role passwords
//! cannot be read back, so the process remembers (by hash) which it has set;
//! after a restart it sets each once more.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use commerce_api::crd::stack::TopicStatus;
use commerce_kafka_access::{AccessError, AclBinding, KafkaAccess, ScramMechanism};
use commerce_platform::events::{DesiredTopic, TopicAdmin};
use futures::future::BoxFuture;
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::types::RDKafkaErrorCode;
use sha2::{Digest, Sha256};
use sqlx::postgres::{PgConnectOptions, PgConnection, PgSslMode};
use sqlx::{Connection, Row};
use tracing::{debug, info};

use super::admin_cache::AdminCache;
use super::plan;
use super::topic_watch::TopicWatch;
use super::{DatabasePlan, ExternalState, KafkaCluster, KafkaUserPlan, PostgresServer, TopicPlan};
use crate::Error;

/// How long connecting to Postgres may take: a reconcile must not hang on a
/// server that does not answer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a topic deletion may take.
const DELETE_TIMEOUT: Duration = Duration::from_secs(30);
/// PBKDF2 iterations of the stack users' SCRAM credentials: above Kafka's
/// minimum (4096), as its documentation advises, below its maximum (16384).
const SCRAM_ITERATIONS: i32 = 8192;

/// Topics and databases of real servers.
#[derive(Debug, Default)]
pub struct ClusterExternalState {
    /// `(server, role, sha256(password))` this process has set.
    passwords_set: Mutex<HashSet<(String, String, [u8; 32])>>,
    /// Topic admin clients by bootstrap servers, shared by every reconcile.
    topic_admins: AdminCache<TopicAdmin>,
    /// Clients for Kafka users and ACLs, kept like the topic admins.
    kafka_access: AdminCache<KafkaAccess>,
    /// The topics reconciles ensured, for the periodic check.
    topic_watch: TopicWatch,
}

impl ClusterExternalState {
    /// The topic admin client for `kafka`, created on first use.
    fn topic_admin(&self, kafka: &KafkaCluster) -> Result<TopicAdmin, Error> {
        self.topic_admins.get_or_create(&kafka.key(), |_| TopicAdmin::new(&kafka.client_config())).map_err(
            |source| Error::EnsureTopics { brokers: kafka.brokers.clone(), source: Box::new(source) },
        )
    }

    /// The users-and-ACLs client for `kafka`, created on first use.
    fn kafka_access(&self, kafka: &KafkaCluster) -> Result<KafkaAccess, AccessError> {
        self.kafka_access.get_or_create(&kafka.key(), |_| KafkaAccess::new(&kafka.client_config()))
    }

    /// Starts the periodic topic check ([`super::topic_watch`]): every
    /// `interval`, evicts idle admin clients, then asks each bootstrap value
    /// that reconciles ensured topics on for those topics (one small
    /// metadata request per topic, with the cached client, which the check
    /// does not keep alive) and yields an item when a topic is missing or has fewer
    /// partitions than ensured. Feed the stream to the controller's
    /// `reconcile_all_on`: the reconciles recreate what is missing. The
    /// task ends when the stream is dropped or this state is.
    pub fn check_topics_every(
        self: &Arc<Self>,
        interval: Duration,
    ) -> impl futures::Stream<Item = ()> + Send + 'static {
        let (drift, woken) = tokio::sync::mpsc::channel::<()>(1);
        let state = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticks.tick().await;
            loop {
                ticks.tick().await;
                let Some(state) = state.upgrade() else { return };
                let mut evicted = state.topic_admins.evict_idle();
                evicted.extend(state.kafka_access.evict_idle());
                if !evicted.is_empty() {
                    info!(brokers = ?evicted, "evicted Kafka admin clients no reconcile used for a while");
                }
                if state.drifted_topics().await && drift.send(()).await.is_err() {
                    return;
                }
            }
        });
        futures::stream::unfold(woken, |mut woken| async move { woken.recv().await.map(|()| ((), woken)) })
    }

    /// One round of the topic check: whether some topic drifted.
    async fn drifted_topics(&self) -> bool {
        let mut any = false;
        for (brokers, names) in self.topic_watch.to_check(Instant::now()) {
            // No client: none was used (or it was evicted); the next
            // reconcile on these brokers creates one and ensures the topics.
            let Some(admin) = self.topic_admins.peek(&brokers) else { continue };
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            match admin.partition_counts(&names).await {
                Ok(actual) => {
                    let drifted = self.topic_watch.drifted(&brokers, &actual);
                    if !drifted.is_empty() {
                        info!(kafka = %brokers, topics = ?drifted, "topics deleted or shrunk out of band");
                        any = true;
                    }
                }
                // A reconcile reports an unreachable broker; the check does
                // not repeat it every interval.
                Err(error) => debug!(kafka = %brokers, %error, "topic check failed"),
            }
        }
        any
    }

    /// How many topic admin clients the process holds (one per distinct
    /// bootstrap-servers value reconciled so far).
    pub fn topic_admin_clients(&self) -> usize {
        self.topic_admins.len()
    }

    fn password_known(&self, key: &(String, String, [u8; 32])) -> bool {
        self.passwords_set.lock().unwrap_or_else(|p| p.into_inner()).contains(key)
    }

    fn remember_password(&self, key: (String, String, [u8; 32])) {
        self.passwords_set.lock().unwrap_or_else(|p| p.into_inner()).insert(key);
    }
}

async fn connect(server: &PostgresServer) -> Result<PgConnection, Error> {
    let ssl_mode: PgSslMode = server.ssl_mode.parse().unwrap_or(PgSslMode::Prefer);
    let mut options = PgConnectOptions::new()
        .host(&server.host)
        .port(server.port)
        .username(&server.user)
        .password(&server.password)
        .database(&server.database)
        .ssl_mode(ssl_mode);
    if let Some(pem) = &server.ca_pem {
        options = options.ssl_root_cert_from_pem(pem.as_bytes().to_vec());
    }
    let target = format!("{}:{}", server.host, server.port);
    match tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect_with(&options)).await {
        Ok(Ok(connection)) => Ok(connection),
        Ok(Err(source)) => Err(Error::ConnectPostgres { server: target, source }),
        Err(_) => Err(Error::ConnectPostgres { server: target, source: sqlx::Error::PoolTimedOut }),
    }
}

/// Runs a statement built by the server's own `format()`, which quotes
/// identifiers (`%I`) and literals (`%L`): no name or password is ever
/// spliced into SQL by hand.
fn execute_formatted<'a>(
    connection: &'a mut PgConnection,
    template: &'static str,
    args: Vec<String>,
    database: &'a str,
) -> BoxFuture<'a, Result<(), Error>> {
    // Boxed with explicit lifetimes: sqlx's executor bounds are
    // higher-ranked, which an async fn inside `async_trait` cannot prove Send.
    Box::pin(async move {
        let placeholders: Vec<String> = (1..=args.len()).map(|i| format!("${i}::text")).collect();
        let select = format!("SELECT format('{template}', {})", placeholders.join(", "));
        let mut query = sqlx::query(&select);
        for arg in args {
            query = query.bind(arg);
        }
        let fail = |source| Error::ManageDatabase { database: database.to_owned(), source };
        let statement: String =
            query.fetch_one(&mut *connection).await.map_err(fail)?.try_get(0).map_err(fail)?;
        sqlx::Executor::execute(&mut *connection, statement.as_str()).await.map_err(fail)?;
        Ok(())
    })
}

/// A row when PUBLIC holds any privilege on the database `$1` (a NULL ACL
/// stands for the defaults, which grant PUBLIC CONNECT and TEMPORARY).
const PUBLIC_MAY_CONNECT: &str = "SELECT 1 FROM pg_database d, \
     aclexplode(coalesce(d.datacl, acldefault('d', d.datdba))) AS acl \
     WHERE d.datname = $1 AND acl.grantee = 0 LIMIT 1";

fn exists<'a>(
    connection: &'a mut PgConnection,
    sql: &'static str,
    name: &'a str,
) -> BoxFuture<'a, Result<bool, Error>> {
    Box::pin(async move {
        sqlx::query(sql)
            .bind(name.to_owned())
            .fetch_optional(&mut *connection)
            .await
            .map(|row| row.is_some())
            .map_err(|source| Error::ManageDatabase { database: name.to_owned(), source })
    })
}

#[async_trait]
impl ExternalState for ClusterExternalState {
    async fn ensure_topics(
        &self,
        kafka: &KafkaCluster,
        topics: &[TopicPlan],
    ) -> Result<Vec<TopicStatus>, Error> {
        let desired: Vec<DesiredTopic> = topics
            .iter()
            .map(|t| DesiredTopic {
                name: t.name.clone(),
                partitions: t.partitions,
                retention_ms: t.retention_ms,
            })
            .collect();
        let reports = self.topic_admin(kafka)?.ensure(desired).await.map_err(|source| {
            Error::EnsureTopics { brokers: kafka.brokers.clone(), source: Box::new(source) }
        })?;
        let topics: Vec<TopicStatus> =
            reports.into_iter().map(|r| TopicStatus { name: r.name, partitions: r.partitions }).collect();
        self.topic_watch.ensured(&kafka.key(), &topics, Instant::now());
        Ok(topics)
    }

    async fn ensure_databases(
        &self,
        server: &PostgresServer,
        databases: &[DatabasePlan],
    ) -> Result<(), Error> {
        let mut connection = connect(server).await?;
        let server_key = format!("{}:{}", server.host, server.port);
        for database in databases {
            let name = database.name.as_str();
            let password_key =
                (server_key.clone(), name.to_owned(), Sha256::digest(&database.password).into());
            if !exists(&mut connection, "SELECT 1 FROM pg_roles WHERE rolname = $1", name).await? {
                execute_formatted(
                    &mut connection,
                    "CREATE ROLE %I LOGIN PASSWORD %L",
                    vec![name.to_owned(), database.password.clone()],
                    name,
                )
                .await?;
                self.remember_password(password_key);
            } else if !self.password_known(&password_key) {
                execute_formatted(
                    &mut connection,
                    "ALTER ROLE %I WITH LOGIN PASSWORD %L",
                    vec![name.to_owned(), database.password.clone()],
                    name,
                )
                .await?;
                self.remember_password(password_key);
            }
            if !exists(&mut connection, "SELECT 1 FROM pg_database WHERE datname = $1", name).await? {
                // CREATE DATABASE ... OWNER needs the admin to be a member
                // of the owner role, unless it is a superuser.
                let member = "SELECT 1 WHERE pg_has_role(current_user, $1, 'MEMBER')";
                if !exists(&mut connection, member, name).await? {
                    execute_formatted(
                        &mut connection,
                        "GRANT %I TO CURRENT_USER",
                        vec![name.to_owned()],
                        name,
                    )
                    .await?;
                }
                execute_formatted(
                    &mut connection,
                    "CREATE DATABASE %I OWNER %I",
                    vec![name.to_owned(), name.to_owned()],
                    name,
                )
                .await?;
            }
            // A new database lets PUBLIC (every role on the server, so every
            // other stack's and service's) connect and create temporary
            // tables. Only the owner may: also mended on databases made
            // before this rule, or where someone granted it back.
            if exists(&mut connection, PUBLIC_MAY_CONNECT, name).await? {
                execute_formatted(
                    &mut connection,
                    "REVOKE ALL ON DATABASE %I FROM PUBLIC",
                    vec![name.to_owned()],
                    name,
                )
                .await?;
            }
        }
        let _ = connection.close().await;
        Ok(())
    }

    async fn drop_databases(&self, server: &PostgresServer, databases: &[String]) -> Result<(), Error> {
        let mut connection = connect(server).await?;
        // One database that cannot be dropped (a role still owning objects
        // elsewhere) does not keep the others: each is tried.
        let mut first_failure = None;
        for name in databases {
            // FORCE ends the sessions of pods that are still shutting down.
            let dropped = match execute_formatted(
                &mut connection,
                "DROP DATABASE IF EXISTS %I WITH (FORCE)",
                vec![name.clone()],
                name,
            )
            .await
            {
                Ok(()) => {
                    execute_formatted(&mut connection, "DROP ROLE IF EXISTS %I", vec![name.clone()], name)
                        .await
                }
                Err(error) => Err(error),
            };
            if let Err(error) = dropped {
                first_failure.get_or_insert(error);
            }
        }
        let _ = connection.close().await;
        first_failure.map_or(Ok(()), Err)
    }

    async fn delete_topics(&self, kafka: &KafkaCluster, topics: &[TopicPlan]) -> Result<(), Error> {
        // A client of its own, dropped at the end: this runs once per deleted
        // stack (deletionPolicy: Delete), not per reconcile, and the cached
        // TopicAdmin does not expose its client for deletions.
        let failed = |source| Error::DeleteTopics { brokers: kafka.brokers.clone(), source };
        let names: Vec<&str> = topics.iter().map(|t| t.name.as_str()).collect();
        // Before they go: the topic check must not take them for drift.
        self.topic_watch.forget(&kafka.key(), &names);
        let admin: AdminClient<DefaultClientContext> = kafka.client_config().create().map_err(failed)?;
        let options = AdminOptions::new().operation_timeout(Some(DELETE_TIMEOUT));
        let results = admin.delete_topics(&names, &options).await.map_err(failed)?;
        for result in results {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::UnknownTopicOrPartition)) => {}
                Err((_, code)) => {
                    return Err(failed(rdkafka::error::KafkaError::AdminOp(code)));
                }
            }
        }
        Ok(())
    }

    async fn ensure_kafka_user(&self, kafka: &KafkaCluster, user: &KafkaUserPlan) -> Result<(), Error> {
        let failed = |source| Error::EnsureKafkaUser {
            brokers: kafka.brokers.clone(),
            user: user.user.clone(),
            source: Box::new(source),
        };
        let access = self.kafka_access(kafka).map_err(failed)?;
        // Credentials cannot be read back: set once per process, as role
        // passwords are (the mechanism is part of what was set).
        let mut secret = Sha256::new();
        secret.update(format!("{:?}", user.mechanism));
        secret.update([0]);
        secret.update(&user.password);
        let password_key = (format!("kafka {}", kafka.key()), user.user.clone(), secret.finalize().into());
        if !self.password_known(&password_key) {
            access
                .upsert_scram_credential(&user.user, user.mechanism, &user.password, SCRAM_ITERATIONS)
                .await
                .map_err(failed)?;
            info!(kafka = %kafka.brokers, user = %user.user, "set the Kafka user's SCRAM credential");
            self.remember_password(password_key);
        }
        let present: HashSet<AclBinding> =
            access.acls_of(&user.principal()).await.map_err(failed)?.into_iter().collect();
        let missing: Vec<AclBinding> =
            user.acls.iter().filter(|acl| !present.contains(acl)).cloned().collect();
        if !missing.is_empty() {
            access.create_acls(&missing).await.map_err(failed)?;
            info!(kafka = %kafka.brokers, user = %user.user, created = missing.len(), "created the Kafka user's ACLs");
        }
        Ok(())
    }

    async fn delete_kafka_user(&self, kafka: &KafkaCluster, user: &str) -> Result<(), Error> {
        let failed = |source| Error::DeleteKafkaUser {
            brokers: kafka.brokers.clone(),
            user: user.to_owned(),
            source: Box::new(source),
        };
        let access = self.kafka_access(kafka).map_err(failed)?;
        // ACLs first: a credential without ACLs can do nothing, ACLs
        // without a credential would wait for whoever makes the user next.
        access.delete_acls_of(&plan::principal(user)).await.map_err(failed)?;
        // Both mechanisms: the stack may have switched between them.
        for mechanism in [ScramMechanism::Sha512, ScramMechanism::Sha256] {
            access.delete_scram_credential(user, mechanism).await.map_err(failed)?;
        }
        self.passwords_set.lock().unwrap_or_else(|p| p.into_inner()).retain(|(_, name, _)| name != user);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Creating a librdkafka client connects in the background only, so no
    /// broker is needed to see that reconciles share one.
    #[test]
    fn reconciles_against_the_same_brokers_share_one_topic_admin_client() {
        let state = ClusterExternalState::default();
        for _ in 0..3 {
            state.topic_admin(&KafkaCluster::plaintext("127.0.0.1:1")).unwrap();
        }
        assert_eq!(state.topic_admin_clients(), 1);
        state.topic_admin(&KafkaCluster::plaintext("127.0.0.1:2")).unwrap();
        assert_eq!(state.topic_admin_clients(), 2);
        // Same brokers, other credentials: a client of its own.
        let scram = |password: &str| KafkaCluster {
            brokers: "127.0.0.1:1".into(),
            settings: vec![
                ("security.protocol".into(), "sasl_plaintext".into()),
                ("sasl.mechanism".into(), "SCRAM-SHA-512".into()),
                ("sasl.username".into(), "shop".into()),
                ("sasl.password".into(), password.into()),
            ],
        };
        state.topic_admin(&scram("one")).unwrap();
        state.topic_admin(&scram("two")).unwrap();
        state.topic_admin(&scram("two")).unwrap();
        assert_eq!(state.topic_admin_clients(), 4);
        assert!(!scram("two").key().contains("two") && !format!("{:?}", scram("two")).contains("two"));
    }

    /// Nothing listens on port 1 of loopback: librdkafka's connection is
    /// refused, and the status message must say which address refused.
    #[tokio::test]
    async fn a_kafka_error_names_the_bootstrap_servers_it_tried() {
        let state = ClusterExternalState::default();
        let topics = [TopicPlan { name: "shop.shop.orders".into(), partitions: 1, retention_ms: 3_600_000 }];
        let error = state.ensure_topics(&KafkaCluster::plaintext("127.0.0.1:1"), &topics).await.unwrap_err();
        let message = crate::reconcile::error_chain(&error);
        assert!(message.starts_with("ensuring the topics on kafka 127.0.0.1:1: "), "{message}");
        // A deletion waits for librdkafka's request timeout (a minute)
        // before it fails; its message is built the same way.
        let error = Error::DeleteTopics {
            brokers: "127.0.0.1:1".into(),
            source: rdkafka::error::KafkaError::AdminOp(RDKafkaErrorCode::BrokerTransportFailure),
        };
        let message = crate::reconcile::error_chain(&error);
        assert!(message.starts_with("deleting the topics on kafka 127.0.0.1:1: "), "{message}");
    }
}
