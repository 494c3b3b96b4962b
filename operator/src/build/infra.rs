//! Infrastructure: the StatefulSets the operator runs when the stack asks
//! for managed infrastructure, and each service's database Secret (where
//! the services find the servers is [`super::endpoints`]).
//!
//! Managed infrastructure is one pod each, with a PersistentVolumeClaim:
//! enough for development and small shops. Production clusters name
//! external servers.

use std::collections::BTreeMap;

use commerce_api::crd::stack::{DeletionPolicy, ManagedInfra};
use commerce_topology::Service;
use k8s_openapi::api::apps::v1::{
    StatefulSet, StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetSpec,
};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EnvVar, ExecAction, PersistentVolumeClaim, PersistentVolumeClaimSpec,
    PodSecurityContext, PodSpec, PodTemplateSpec, Probe, ResourceRequirements, Secret,
    Service as KubeService, ServicePort, ServiceSpec, TCPSocketAction, VolumeMount,
    VolumeResourceRequirements,
};
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use sha2::{Digest, Sha256};

use super::config::secret_env;
use super::names::{self, Component};
use super::secrets::{self, SecretValues};
use super::workload::{container_security_context, pod_security_context, tmp_volume};
use crate::Error;
use crate::validate::{Infra, ValidStack};

/// Image of the managed Kafka (KRaft, no ZooKeeper).
pub const KAFKA_IMAGE: &str = "apache/kafka:4.1.1";
/// Image of the managed Postgres.
pub const POSTGRES_IMAGE: &str = "postgres:17.6";
/// Image of the managed Redis.
pub const REDIS_IMAGE: &str = "redis:8.2.2";
/// Kafka's KRaft controller port (inside the pod only).
pub const KAFKA_CONTROLLER_PORT: i32 = 9093;

use super::endpoints::{Endpoints, KAFKA_PORT, POSTGRES_PORT, REDIS_PORT};

/// The database Secret of every enabled service that owns a database: the
/// credentials the operator creates the role with, and the URL the service
/// connects with.
pub fn database_secrets(
    stack: &ValidStack<'_>,
    endpoints: &Endpoints,
    values: &SecretValues,
) -> Result<Vec<Secret>, Error> {
    let mut out = Vec::new();
    for (service, _) in &stack.services {
        if !service.spec().database {
            continue;
        }
        let name = names::database_secret_name(stack, *service);
        let password = values.get(&name, secrets::PASSWORD_KEY)?;
        let identifier = names::ExternalNames::of(stack).database(*service);
        let pg = &endpoints.postgres;
        let mut url = format!(
            "postgres://{identifier}:{password}@{}:{}/{identifier}?sslmode={}",
            pg.host,
            pg.port,
            pg.ssl_mode.as_str()
        );
        if pg.ca.is_some() {
            // The bundle as the pods mount it (build::workload).
            url.push_str(&format!(
                "&sslrootcert={}/{}",
                super::config::POSTGRES_CA_MOUNT,
                super::config::CA_FILE
            ));
        }
        let data = BTreeMap::from([
            (secrets::USERNAME_KEY.to_owned(), identifier.clone()),
            (secrets::PASSWORD_KEY.to_owned(), password),
            (secrets::DATABASE_KEY.to_owned(), identifier),
            ("host".to_owned(), pg.host.clone()),
            ("port".to_owned(), pg.port.to_string()),
            (secrets::URL_KEY.to_owned(), url),
        ]);
        out.push(secrets::secret(stack, name, Component::Service(*service), data));
    }
    Ok(out)
}

/// Objects of the managed infrastructure: a headless Service, a StatefulSet
/// and a NetworkPolicy for each managed piece.
#[derive(Debug, Clone)]
pub struct ManagedObjects {
    /// Headless Services (the StatefulSets' governing Services).
    pub services: Vec<KubeService>,
    /// The servers.
    pub stateful_sets: Vec<StatefulSet>,
    /// Who may connect to them.
    pub network_policies: Vec<NetworkPolicy>,
}

/// Everything the operator runs for the stack's managed infrastructure.
pub fn managed(stack: &ValidStack<'_>) -> ManagedObjects {
    let mut out =
        ManagedObjects { services: Vec::new(), stateful_sets: Vec::new(), network_policies: Vec::new() };
    if let Infra::Managed(settings) = stack.kafka {
        push_managed(&mut out, stack, Component::Kafka, KAFKA_PORT, kafka(stack, settings), |s| {
            s.uses_kafka()
        });
    }
    if let Infra::Managed(settings) = stack.postgres {
        push_managed(&mut out, stack, Component::Postgres, POSTGRES_PORT, postgres(stack, settings), |s| {
            s.database
        });
    }
    if let Infra::Managed(settings) = stack.redis {
        push_managed(&mut out, stack, Component::Redis, REDIS_PORT, redis(stack, settings), |s| s.redis);
    }
    out
}

fn push_managed(
    out: &mut ManagedObjects,
    stack: &ValidStack<'_>,
    component: Component,
    port: i32,
    stateful_set: StatefulSet,
    uses: impl Fn(&commerce_topology::ServiceSpec) -> bool,
) {
    let name = names::component_name(stack, component);
    out.services.push(KubeService {
        metadata: metadata(stack, component, name.clone()),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            selector: Some(names::selector_labels(stack, component)),
            ports: Some(vec![ServicePort {
                name: Some(component.name().into()),
                port,
                target_port: Some(IntOrString::String(component.name().into())),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..KubeService::default()
    });
    out.stateful_sets.push(stateful_set);
    // The services that use it, and the operator (topics, databases).
    let mut from: Vec<NetworkPolicyPeer> = Service::ALL
        .into_iter()
        .filter(|s| uses(s.spec()))
        .map(|s| NetworkPolicyPeer {
            pod_selector: Some(LabelSelector {
                match_labels: Some(names::selector_labels(stack, Component::Service(s))),
                ..LabelSelector::default()
            }),
            ..NetworkPolicyPeer::default()
        })
        .collect();
    from.push(operator_peer());
    out.network_policies.push(NetworkPolicy {
        metadata: metadata(stack, component, name),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(names::selector_labels(stack, component)),
                ..LabelSelector::default()
            }),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(vec![NetworkPolicyIngressRule {
                from: Some(from),
                ports: Some(vec![NetworkPolicyPort {
                    port: Some(IntOrString::Int(port)),
                    protocol: Some("TCP".into()),
                    ..NetworkPolicyPort::default()
                }]),
            }]),
            ..NetworkPolicySpec::default()
        }),
    });
}

/// The operator's pods, in whatever namespace the chart installed them.
pub fn operator_peer() -> NetworkPolicyPeer {
    NetworkPolicyPeer {
        namespace_selector: Some(LabelSelector::default()),
        pod_selector: Some(LabelSelector {
            match_labels: Some(BTreeMap::from([(
                names::NAME_LABEL.to_owned(),
                names::OPERATOR_APP_NAME.to_owned(),
            )])),
            ..LabelSelector::default()
        }),
        ..NetworkPolicyPeer::default()
    }
}

fn metadata(stack: &ValidStack<'_>, component: Component, name: String) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: Some(stack.namespace.to_owned()),
        labels: Some(names::labels(stack, component)),
        ..ObjectMeta::default()
    }
}

/// Everything a managed server's StatefulSet varies in.
struct Server {
    component: Component,
    image: String,
    port: i32,
    /// The user the image runs as (its files belong to it).
    uid: i64,
    env: Vec<EnvVar>,
    args: Option<Vec<String>>,
    data_path: &'static str,
    /// Extra writable directories on emptyDirs (the root fs is read-only).
    scratch: Vec<(&'static str, &'static str)>,
    read_only_root: bool,
    readiness: Probe,
    resources: ResourceRequirements,
}

fn stateful_set(stack: &ValidStack<'_>, settings: &ManagedInfra, server: Server) -> StatefulSet {
    let name = names::component_name(stack, server.component);
    let mut security = container_security_context();
    security.read_only_root_filesystem = Some(server.read_only_root);
    security.run_as_user = Some(server.uid);
    security.run_as_group = Some(server.uid);
    let mut mounts = vec![VolumeMount {
        name: "data".into(),
        mount_path: server.data_path.into(),
        ..VolumeMount::default()
    }];
    let mut volumes = vec![tmp_volume()];
    mounts.push(VolumeMount { name: "tmp".into(), mount_path: "/tmp".into(), ..VolumeMount::default() });
    for (volume, path) in &server.scratch {
        volumes.push(k8s_openapi::api::core::v1::Volume {
            name: (*volume).into(),
            empty_dir: Some(Default::default()),
            ..Default::default()
        });
        mounts.push(VolumeMount {
            name: (*volume).into(),
            mount_path: (*path).into(),
            ..VolumeMount::default()
        });
    }
    let mut pod_security = pod_security_context();
    pod_security.run_as_user = Some(server.uid);
    pod_security.run_as_group = Some(server.uid);
    pod_security.fs_group = Some(server.uid);
    let labels = names::labels(stack, server.component);
    StatefulSet {
        metadata: metadata(stack, server.component, name.clone()),
        spec: Some(StatefulSetSpec {
            replicas: Some(1),
            service_name: Some(name),
            selector: LabelSelector {
                match_labels: Some(names::selector_labels(stack, server.component)),
                ..LabelSelector::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta { labels: Some(labels.clone()), ..ObjectMeta::default() }),
                spec: Some(PodSpec {
                    automount_service_account_token: Some(false),
                    enable_service_links: Some(false),
                    security_context: Some(PodSecurityContext { ..pod_security }),
                    containers: vec![Container {
                        name: server.component.name().into(),
                        image: Some(settings.image.clone().unwrap_or(server.image)),
                        args: server.args,
                        env: Some(server.env),
                        ports: Some(vec![ContainerPort {
                            name: Some(server.component.name().into()),
                            container_port: server.port,
                            protocol: Some("TCP".into()),
                            ..ContainerPort::default()
                        }]),
                        readiness_probe: Some(server.readiness),
                        resources: Some(settings.resources.clone().unwrap_or(server.resources)),
                        security_context: Some(security),
                        volume_mounts: Some(mounts),
                        ..Container::default()
                    }],
                    volumes: Some(volumes),
                    ..PodSpec::default()
                }),
            },
            volume_claim_templates: Some(vec![PersistentVolumeClaim {
                metadata: ObjectMeta {
                    name: Some("data".into()),
                    labels: Some(labels),
                    ..ObjectMeta::default()
                },
                spec: Some(PersistentVolumeClaimSpec {
                    access_modes: Some(vec!["ReadWriteOnce".into()]),
                    storage_class_name: settings.storage.storage_class_name.clone(),
                    resources: Some(VolumeResourceRequirements {
                        requests: Some(BTreeMap::from([(
                            "storage".to_owned(),
                            settings.storage.size.clone(),
                        )])),
                        ..VolumeResourceRequirements::default()
                    }),
                    ..PersistentVolumeClaimSpec::default()
                }),
                ..PersistentVolumeClaim::default()
            }]),
            // Claims outlive the StatefulSet unless the stack's data goes
            // with it (deletionPolicy: Delete).
            persistent_volume_claim_retention_policy: Some(StatefulSetPersistentVolumeClaimRetentionPolicy {
                when_deleted: Some(match stack.stack.spec.deletion_policy {
                    DeletionPolicy::Delete => "Delete".into(),
                    DeletionPolicy::Retain => "Retain".into(),
                }),
                when_scaled: Some("Retain".into()),
            }),
            ..StatefulSetSpec::default()
        }),
        ..StatefulSet::default()
    }
}

fn resources(cpu: &str, memory: &str) -> ResourceRequirements {
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_owned(), Quantity(cpu.into())),
            ("memory".to_owned(), Quantity(memory.into())),
        ])),
        limits: Some(BTreeMap::from([("memory".to_owned(), Quantity(memory.into()))])),
        ..ResourceRequirements::default()
    }
}

fn env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar { name: name.into(), value: Some(value.into()), ..EnvVar::default() }
}

fn tcp_probe(port: &str) -> Probe {
    Probe {
        tcp_socket: Some(TCPSocketAction {
            port: IntOrString::String(port.into()),
            ..TCPSocketAction::default()
        }),
        period_seconds: Some(10),
        ..Probe::default()
    }
}

/// KRaft's cluster id: 16 bytes as base64url without padding. Derived from
/// the stack's namespace and name, so that it is stable across builds.
fn kafka_cluster_id(stack: &ValidStack<'_>) -> String {
    use base64::Engine as _;
    let digest = Sha256::digest(format!("{}/{}", stack.namespace, stack.name));
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&digest[..16])
}

fn kafka(stack: &ValidStack<'_>, settings: &ManagedInfra) -> StatefulSet {
    let name = names::component_name(stack, Component::Kafka);
    let advertised = format!("{name}-0.{}:{KAFKA_PORT}", names::service_host(stack, &name));
    let server = Server {
        component: Component::Kafka,
        image: KAFKA_IMAGE.into(),
        port: KAFKA_PORT,
        // `appuser` of the apache/kafka image.
        uid: 1000,
        env: vec![
            env("CLUSTER_ID", kafka_cluster_id(stack)),
            env("KAFKA_NODE_ID", "1"),
            env("KAFKA_PROCESS_ROLES", "broker,controller"),
            env(
                "KAFKA_LISTENERS",
                format!("PLAINTEXT://:{KAFKA_PORT},CONTROLLER://:{KAFKA_CONTROLLER_PORT}"),
            ),
            env("KAFKA_ADVERTISED_LISTENERS", format!("PLAINTEXT://{advertised}")),
            env("KAFKA_LISTENER_SECURITY_PROTOCOL_MAP", "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT"),
            env("KAFKA_CONTROLLER_LISTENER_NAMES", "CONTROLLER"),
            env("KAFKA_CONTROLLER_QUORUM_VOTERS", format!("1@localhost:{KAFKA_CONTROLLER_PORT}")),
            env("KAFKA_INTER_BROKER_LISTENER_NAME", "PLAINTEXT"),
            env("KAFKA_LOG_DIRS", "/var/lib/kafka/data/logs"),
            // One broker: internal topics cannot have more replicas.
            env("KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR", "1"),
            env("KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR", "1"),
            env("KAFKA_TRANSACTION_STATE_LOG_MIN_ISR", "1"),
            // The operator creates topics with the brokers' default factor.
            env("KAFKA_DEFAULT_REPLICATION_FACTOR", "1"),
            // Topics come from the catalog, through the operator, only.
            env("KAFKA_AUTO_CREATE_TOPICS_ENABLE", "false"),
            env("KAFKA_HEAP_OPTS", "-Xms512m -Xmx512m"),
        ],
        args: None,
        data_path: "/var/lib/kafka/data",
        scratch: Vec::new(),
        // The image's start script writes server.properties under
        // /opt/kafka/config, so its root file system stays writable.
        read_only_root: false,
        readiness: tcp_probe("kafka"),
        resources: resources("250m", "1Gi"),
    };
    stateful_set(stack, settings, server)
}

fn postgres(stack: &ValidStack<'_>, settings: &ManagedInfra) -> StatefulSet {
    let admin = secrets::postgres_admin_secret_name(stack);
    let server = Server {
        component: Component::Postgres,
        image: POSTGRES_IMAGE.into(),
        port: POSTGRES_PORT,
        // `postgres` of the official image.
        uid: 999,
        env: vec![
            env("POSTGRES_USER", secrets::POSTGRES_ADMIN_USER),
            secret_env("POSTGRES_PASSWORD", &admin, secrets::PASSWORD_KEY),
            // A subdirectory: the volume's root holds lost+found.
            env("PGDATA", "/var/lib/postgresql/data/pgdata"),
        ],
        args: None,
        data_path: "/var/lib/postgresql/data",
        scratch: vec![("run", "/var/run/postgresql")],
        read_only_root: true,
        readiness: Probe {
            exec: Some(ExecAction {
                command: Some(vec!["pg_isready".into(), "-U".into(), secrets::POSTGRES_ADMIN_USER.into()]),
            }),
            period_seconds: Some(10),
            ..Probe::default()
        },
        resources: resources("100m", "512Mi"),
    };
    stateful_set(stack, settings, server)
}

fn redis(stack: &ValidStack<'_>, settings: &ManagedInfra) -> StatefulSet {
    let name = names::component_name(stack, Component::Redis);
    let server = Server {
        component: Component::Redis,
        image: REDIS_IMAGE.into(),
        port: REDIS_PORT,
        // `redis` of the official image.
        uid: 999,
        env: vec![secret_env("REDIS_PASSWORD", &name, secrets::PASSWORD_KEY)],
        args: Some(vec![
            "--appendonly".into(),
            "yes".into(),
            "--dir".into(),
            "/data".into(),
            "--requirepass".into(),
            "$(REDIS_PASSWORD)".into(),
        ]),
        data_path: "/data",
        scratch: Vec::new(),
        read_only_root: true,
        readiness: tcp_probe("redis"),
        resources: resources("50m", "256Mi"),
    };
    stateful_set(stack, settings, server)
}
