//! External state: what a stack needs outside Kubernetes, the Kafka topics
//! of the catalog (and, with `serviceUser: PerStack`, the stack's own Kafka
//! user and its ACLs) and a database with a login role per service.
//!
//! [`plan`] says what should exist (pure, from the stack); an
//! [`ExternalState`] makes it so. The reconciler runs this step after apply
//! and prune, so that a broker or database that is down never holds back a
//! Deployment rollout; its failure shows in the status and is retried with
//! backoff. The trait is the seam the reconciler tests fake.

pub mod admin_cache;
pub mod cluster;
pub mod plan;
pub mod topic_watch;

use async_trait::async_trait;
use commerce_api::crd::stack::TopicStatus;

use crate::Error;
pub use plan::{DatabasePlan, KafkaCluster, KafkaUserPlan, PostgresServer, TopicPlan};

/// Brings topics and databases to what a plan says.
#[async_trait]
pub trait ExternalState: Send + Sync {
    /// Creates missing topics, adds partitions, sets retention; never
    /// shrinks. Returns every topic with its partition count.
    async fn ensure_topics(
        &self,
        kafka: &KafkaCluster,
        topics: &[TopicPlan],
    ) -> Result<Vec<TopicStatus>, Error>;

    /// Creates each missing login role and database (owned by the role)
    /// and sets the role's password to the one in its Secret.
    async fn ensure_databases(
        &self,
        server: &PostgresServer,
        databases: &[DatabasePlan],
    ) -> Result<(), Error>;

    /// Drops the databases and the login roles of these names
    /// (`deletionPolicy: Delete`); one that does not exist is no error.
    /// Every name is tried; the first failure is returned after the rest.
    async fn drop_databases(&self, server: &PostgresServer, databases: &[String]) -> Result<(), Error>;

    /// Deletes the topics (`deletionPolicy: Delete`); one that does not
    /// exist is no error.
    async fn delete_topics(&self, kafka: &KafkaCluster, topics: &[TopicPlan]) -> Result<(), Error>;

    /// Sets the user's SCRAM credential to its password (creating the
    /// user) and creates the ACLs it lacks; ACLs it has beyond the plan are
    /// left alone.
    async fn ensure_kafka_user(&self, kafka: &KafkaCluster, user: &KafkaUserPlan) -> Result<(), Error>;

    /// Deletes every ACL of the user and its SCRAM credentials
    /// (`deletionPolicy: Delete`); a user that does not exist is no error.
    async fn delete_kafka_user(&self, kafka: &KafkaCluster, user: &str) -> Result<(), Error>;
}
