//! The reconcile's reads, all made before anything is built or written
//! ([`observe`]): the namespace's RateLimitPolicies, the stack's own
//! objects, whether the cluster serves PodMonitors, the Secrets the stack names for logging in to its external
//! infrastructure ([`LoginSecrets`]), and the StorageClasses that managed
//! components wait for. From here to the apply the pipeline is pure; the
//! external step holds the Secrets it logs in with and turns them into
//! credentials ([`LoginSecrets::kafka`], [`LoginSecrets::postgres`])
//! without reading anything again.

use std::collections::BTreeMap;

use commerce_api::RateLimitPolicy;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ListParams};
use kube::core::error_boundary::DeserializeGuard;
use kube::{Client, ResourceExt};

use super::{admin_secret, apply, storage_class};
use crate::Error;
use crate::build::config;
use crate::build::endpoints::{self, Endpoints};
use crate::build::monitoring::{MONITORING_GROUP_VERSION, PodMonitorApi};
use crate::build::secrets::{self, SecretValues};
use crate::external::{KafkaCluster, PostgresServer, plan};
use crate::validate::ValidStack;

/// What one reconcile of a valid stack reads from the cluster.
#[derive(Debug)]
pub struct Observed {
    /// The RateLimitPolicies of the stack's namespace (those that do not
    /// deserialize are left out; the policy controller reports them).
    pub policies: Vec<RateLimitPolicy>,
    /// Whether the cluster serves PodMonitors.
    pub pod_monitors: PodMonitorApi,
    /// The stack's own objects, as listed.
    pub current: apply::Current,
    /// The Secrets the stack names for logging in to its external
    /// Postgres and Kafka.
    pub secrets: LoginSecrets,
    /// One line per StorageClass that a managed component which is not
    /// ready names and the cluster lacks ([`storage_class::missing`]).
    pub missing_storage_classes: Vec<String>,
}

/// Reads everything the reconcile of `valid` needs; an apiserver that does
/// not answer a list or a read fails the reconcile before it writes.
pub async fn observe(client: &Client, valid: &ValidStack<'_>) -> Result<Observed, Error> {
    let policies = list_policies(client, valid.namespace).await?;
    let pod_monitors = pod_monitor_api(client).await?;
    let current = apply::list_owned(client, valid.namespace, valid.name, pod_monitors).await?;
    let endpoints = endpoints::endpoints(valid);
    let secrets = LoginSecrets::read(client, valid.namespace, &login_secrets(valid, &endpoints)).await?;
    let stateful_sets: Vec<StatefulSet> = current.typed("StatefulSet");
    let missing_storage_classes = storage_class::missing(client, valid, &stateful_sets).await;
    Ok(Observed { policies, pod_monitors, current, secrets, missing_storage_classes })
}

/// Whether the cluster serves the prometheus-operator's PodMonitor kind
/// (asked each reconcile: installing or removing the CRDs needs no restart
/// of the operator).
pub async fn pod_monitor_api(client: &Client) -> Result<PodMonitorApi, Error> {
    match client.list_api_group_resources(MONITORING_GROUP_VERSION).await {
        Ok(list) if list.resources.iter().any(|resource| resource.name == "podmonitors") => {
            Ok(PodMonitorApi::Served)
        }
        Ok(_) => Ok(PodMonitorApi::Missing),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(PodMonitorApi::Missing),
        Err(source) => Err(Error::ListObjects {
            kind: format!("the API resources of {MONITORING_GROUP_VERSION}"),
            namespace: String::new(),
            source,
        }),
    }
}

/// The RateLimitPolicies of `namespace`.
pub async fn list_policies(client: &Client, namespace: &str) -> Result<Vec<RateLimitPolicy>, Error> {
    let api: Api<DeserializeGuard<RateLimitPolicy>> = Api::namespaced(client.clone(), namespace);
    let list = api.list(&ListParams::default()).await.map_err(|source| Error::ListObjects {
        kind: "RateLimitPolicy".into(),
        namespace: namespace.into(),
        source,
    })?;
    Ok(list.items.into_iter().filter_map(|guard| guard.0.ok()).collect())
}

/// Which external infrastructure a Secret logs in to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Infra {
    /// The external Kafka (CA bundle, SASL credentials).
    Kafka,
    /// The external Postgres (admin credentials, CA bundle).
    Postgres,
}

/// A Secret the stack names for logging in to its infrastructure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginSecret {
    /// The Secret's name.
    pub name: String,
    /// Where the spec names it (for errors that say what to change).
    pub field: &'static str,
    /// What it logs in to.
    pub infra: Infra,
}

/// The Secrets the stack's operator logs in with, and so the ones its
/// cleanup needs and a stack under `Delete` holds: the external Postgres'
/// admin Secret and CA, the external Kafka's CA and SASL Secrets.
pub fn login_secrets(valid: &ValidStack<'_>, endpoints: &Endpoints) -> Vec<LoginSecret> {
    let mut secrets = Vec::new();
    let mut add = |name: &str, field, infra| {
        secrets.push(LoginSecret { name: name.to_owned(), field, infra });
    };
    if !valid.postgres.is_managed() {
        add(&endpoints.postgres.admin_password.name, "spec.postgres.external.adminSecret", Infra::Postgres);
        if let Some(ca) = &endpoints.postgres.ca {
            add(&ca.name, "spec.postgres.external.caSecret", Infra::Postgres);
        }
    }
    if !valid.kafka.is_managed() {
        if let Some(ca) = endpoints.kafka_tls.as_ref().and_then(|tls| tls.ca_secret.as_ref()) {
            add(&ca.name, "spec.kafka.external.tls.caSecret", Infra::Kafka);
        }
        if let Some(sasl) = &endpoints.kafka_sasl {
            add(&sasl.secret_name, "spec.kafka.external.sasl.secretName", Infra::Kafka);
        }
    }
    secrets
}

/// The login Secrets as read: each one named, and the ones that exist.
#[derive(Debug, Default)]
pub struct LoginSecrets {
    named: Vec<LoginSecret>,
    found: BTreeMap<String, Secret>,
}

impl LoginSecrets {
    /// Reads the Secrets `named` from `namespace`; one that does not exist
    /// is not an error here (its user reports it when it needs it).
    pub async fn read(client: &Client, namespace: &str, named: &[LoginSecret]) -> Result<Self, Error> {
        let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
        let mut found = BTreeMap::new();
        for secret in named {
            if found.contains_key(&secret.name) {
                continue;
            }
            let read = api
                .get_opt(&secret.name)
                .await
                .map_err(|source| Error::GetSecret { name: secret.name.clone(), source })?;
            if let Some(read) = read {
                found.insert(secret.name.clone(), read);
            }
        }
        Ok(Self { named: named.to_vec(), found })
    }

    /// The names of every Secret named (whether it exists or not).
    pub fn names(&self) -> Vec<&str> {
        self.named.iter().map(|secret| secret.name.as_str()).collect()
    }

    /// Holds, for `stack`, each existing Secret that logs in to `infra`
    /// ([`admin_secret::hold`]): the cleanup will log in with it too, so
    /// it must outlive the stack. A Secret being deleted is an error.
    pub async fn hold(
        &self,
        client: &Client,
        namespace: &str,
        stack: &str,
        infra: Infra,
    ) -> Result<(), Error> {
        for secret in self.named.iter().filter(|secret| secret.infra == infra) {
            if let Some(found) = self.found.get(&secret.name) {
                admin_secret::hold(client, namespace, found.clone(), stack, secret.field).await?;
            }
        }
        Ok(())
    }

    /// How the operator reaches the stack's Kafka: the services' TLS and
    /// SASL settings ([`config::kafka_settings`]), with the CA bundle and
    /// the SASL credentials taken from the stack's Secrets instead of the
    /// pods' files and variables. Without a CA of its own, TLS trusts the
    /// system's CAs.
    pub fn kafka(&self, endpoints: &Endpoints) -> Result<KafkaCluster, Error> {
        let mut kafka = KafkaCluster::plaintext(endpoints.kafka_brokers.clone());
        for (key, value) in config::kafka_settings(endpoints) {
            // A path in the pods' file system; the operator has the Secret.
            if key != "ssl.ca.location" {
                kafka.settings.push((key.to_owned(), value));
            }
        }
        let wrong = |source| Error::ReadKafkaSecret { source };
        if let Some(tls) = &endpoints.kafka_tls {
            match &tls.ca_secret {
                Some(ca) => kafka.settings.push(("ssl.ca.pem".into(), self.value(&ca.name, &ca.key, wrong)?)),
                None => kafka.settings.push(("ssl.ca.location".into(), "probe".into())),
            }
        }
        if let Some(sasl) = &endpoints.kafka_sasl {
            let username = self.value(&sasl.secret_name, &sasl.username_key, wrong)?;
            let password = self.value(&sasl.secret_name, &sasl.password_key, wrong)?;
            kafka.settings.push(("sasl.username".into(), username));
            kafka.settings.push(("sasl.password".into(), password));
        }
        Ok(kafka)
    }

    /// How the operator logs in to the stack's Postgres as its admin: the
    /// generated Secret's password for managed Postgres, the named
    /// Secrets' keys (admin, CA) for an external server.
    pub fn postgres(
        &self,
        valid: &ValidStack<'_>,
        values: &SecretValues,
        endpoints: &Endpoints,
    ) -> Result<PostgresServer, Error> {
        let admin = &endpoints.postgres;
        if valid.postgres.is_managed() {
            let password = values.get(&admin.admin_password.name, &admin.admin_password.key)?;
            return Ok(plan::postgres_server(endpoints, secrets::POSTGRES_ADMIN_USER.into(), password));
        }
        let wrong = |source| Error::ReadAdminSecret { source };
        let user = self.value(&admin.admin_password.name, &admin.admin_username.key, wrong)?;
        let password = self.value(&admin.admin_password.name, &admin.admin_password.key, wrong)?;
        let mut server = plan::postgres_server(endpoints, user, password);
        if let Some(ca) = &admin.ca {
            server.ca_pem = Some(self.value(&ca.name, &ca.key, wrong)?);
        }
        Ok(server)
    }

    /// The value under `key` of the Secret `name`, as UTF-8; `wrong` makes
    /// the error when the Secret or the key is not there.
    fn value(&self, name: &str, key: &str, wrong: impl Fn(SecretProblem) -> Error) -> Result<String, Error> {
        let secret =
            self.found.get(name).ok_or_else(|| wrong(SecretProblem::Missing { name: name.to_owned() }))?;
        secret
            .data
            .as_ref()
            .and_then(|data| data.get(key))
            .and_then(|value| String::from_utf8(value.0.clone()).ok())
            .ok_or_else(|| wrong(SecretProblem::NoKey { name: secret.name_any(), key: key.to_owned() }))
    }
}

/// What is wrong with a Secret that a stack names for logging in to its
/// infrastructure.
#[derive(Debug, thiserror::Error)]
pub enum SecretProblem {
    /// The Secret does not exist.
    #[error("Secret {name} does not exist")]
    Missing {
        /// The Secret.
        name: String,
    },
    /// The Secret has no such key, or its value is not UTF-8.
    #[error("Secret {name} has no UTF-8 key {key:?}")]
    NoKey {
        /// The Secret.
        name: String,
        /// The key.
        key: String,
    },
}
