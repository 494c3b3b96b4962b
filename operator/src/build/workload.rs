//! What one enabled service becomes: ServiceAccount, ConfigMap, headless and
//! ClusterIP Services, Deployment, HorizontalPodAutoscaler (with
//! autoscaling), PodDisruptionBudget and a NetworkPolicy that admits only the
//! callers the catalog names.

use std::collections::BTreeMap;

use commerce_api::crd::stack::ScrapeMode;
use commerce_api::crd::stack::ServiceSettings;
use commerce_topology::{CLUSTER_ADMIN_PORT, CLUSTER_GRPC_PORT, CLUSTER_HTTP_PORT, Service};
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment};
use k8s_openapi::api::autoscaling::v2::{
    CrossVersionObjectReference, HPAScalingRules, HorizontalPodAutoscaler, HorizontalPodAutoscalerBehavior,
    HorizontalPodAutoscalerSpec, MetricSpec, MetricTarget, ResourceMetricSource,
};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapEnvSource, ConfigMapVolumeSource, Container, ContainerPort,
    EmptyDirVolumeSource, EnvFromSource, GRPCAction, HTTPGetAction, KeyToPath, Lifecycle, LifecycleHandler,
    LocalObjectReference, PodSecurityContext, PodSpec, PodTemplateSpec, Probe, ResourceRequirements,
    SeccompProfile, SecretVolumeSource, SecurityContext, Service as KubeService, ServiceAccount, ServicePort,
    ServiceSpec, SleepAction, Volume, VolumeMount,
};
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::config::{self, ServiceConfig};
use super::monitoring;
use super::names::{self, Component};
use crate::validate::{Infra, ValidStack};

/// The uid and gid of distroless' `nonroot` user, which the `commerce`
/// image runs as.
pub const NONROOT_UID: i64 = 65532;

/// Every object of one service, in apply order.
#[derive(Debug, Clone)]
pub struct ServiceObjects {
    /// Identity of the pods (no API token is mounted: services never call
    /// the Kubernetes API).
    pub service_account: ServiceAccount,
    /// The service's `COMMERCE_*` variables.
    pub config_map: ConfigMap,
    /// ClusterIP Service: the Ingress backend, `kubectl port-forward`.
    pub cluster_ip: KubeService,
    /// Headless Service: peers resolve every ready pod and balance over them.
    pub headless: KubeService,
    /// Who may connect.
    pub network_policy: NetworkPolicy,
    /// The pods.
    pub deployment: Deployment,
    /// With autoscaling only.
    pub autoscaler: Option<HorizontalPodAutoscaler>,
    /// Keeps all but one pod up during node drains.
    pub disruption_budget: PodDisruptionBudget,
}

/// The objects of one enabled service.
pub fn service_objects(
    stack: &ValidStack<'_>,
    service: Service,
    settings: &ServiceSettings,
    config: &ServiceConfig,
    scrape: ScrapeMode,
) -> ServiceObjects {
    let component = Component::Service(service);
    let name = names::component_name(stack, component);
    let meta = |name: String| ObjectMeta {
        name: Some(name),
        namespace: Some(stack.namespace.to_owned()),
        labels: Some(names::labels(stack, component)),
        ..ObjectMeta::default()
    };
    let selector = names::selector_labels(stack, component);

    let service_account = ServiceAccount {
        metadata: meta(name.clone()),
        automount_service_account_token: Some(false),
        ..ServiceAccount::default()
    };
    let config_map = ConfigMap {
        metadata: meta(name.clone()),
        data: Some(config.config_map.clone()),
        ..ConfigMap::default()
    };
    let ports = service_ports(service);
    let cluster_ip = KubeService {
        metadata: meta(name.clone()),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(selector.clone()),
            ports: Some(ports.clone()),
            ..ServiceSpec::default()
        }),
        ..KubeService::default()
    };
    let headless = KubeService {
        metadata: meta(names::headless_name(stack, service)),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            selector: Some(selector.clone()),
            ports: Some(ports),
            ..ServiceSpec::default()
        }),
        ..KubeService::default()
    };
    let network_policy =
        NetworkPolicy { metadata: meta(name.clone()), spec: Some(network_policy_spec(stack, service)) };
    let deployment = Deployment {
        metadata: meta(name.clone()),
        spec: Some(DeploymentSpec {
            // With autoscaling the HPA owns the count: leaving the field out
            // of the applied configuration keeps the operator from resetting it.
            replicas: if settings.autoscaling.is_some() {
                None
            } else {
                Some(settings.replicas.unwrap_or(1))
            },
            revision_history_limit: Some(5),
            selector: LabelSelector { match_labels: Some(selector.clone()), ..LabelSelector::default() },
            // A new pod is Ready before an old one stops: capacity never
            // drops during a rollout, even at one replica.
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_surge: Some(IntOrString::Int(1)),
                    max_unavailable: Some(IntOrString::Int(0)),
                }),
            }),
            template: pod_template(stack, service, settings, config, scrape),
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    };
    let autoscaler = settings.autoscaling.map(|autoscaling| HorizontalPodAutoscaler {
        metadata: meta(name.clone()),
        spec: HorizontalPodAutoscalerSpec {
            scale_target_ref: CrossVersionObjectReference {
                api_version: Some("apps/v1".into()),
                kind: "Deployment".into(),
                name: name.clone(),
            },
            min_replicas: Some(autoscaling.min_replicas),
            max_replicas: autoscaling.max_replicas,
            metrics: Some(vec![MetricSpec {
                type_: "Resource".into(),
                resource: Some(ResourceMetricSource {
                    name: "cpu".into(),
                    target: MetricTarget {
                        type_: "Utilization".into(),
                        average_utilization: Some(autoscaling.target_cpu_utilization_percentage),
                        ..MetricTarget::default()
                    },
                }),
                ..MetricSpec::default()
            }]),
            behavior: autoscaling.scale_down_stabilization_seconds.map(|seconds| {
                HorizontalPodAutoscalerBehavior {
                    scale_down: Some(HPAScalingRules {
                        stabilization_window_seconds: Some(seconds),
                        ..HPAScalingRules::default()
                    }),
                    scale_up: None,
                }
            }),
        },
        ..HorizontalPodAutoscaler::default()
    });
    let disruption_budget = PodDisruptionBudget {
        metadata: meta(name),
        spec: Some(PodDisruptionBudgetSpec {
            // One at a time, whatever the count: a single-replica service
            // can still be drained, a large one keeps most of its pods.
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector { match_labels: Some(selector), ..LabelSelector::default() }),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    };
    ServiceObjects {
        service_account,
        config_map,
        cluster_ip,
        headless,
        network_policy,
        deployment,
        autoscaler,
        disruption_budget,
    }
}

/// The ports a service's Services expose.
fn service_ports(service: Service) -> Vec<ServicePort> {
    let mut ports = Vec::new();
    if service == Service::Gateway {
        ports.push(ServicePort {
            name: Some("http".into()),
            port: i32::from(CLUSTER_HTTP_PORT),
            target_port: Some(IntOrString::String("http".into())),
            protocol: Some("TCP".into()),
            ..ServicePort::default()
        });
    } else {
        ports.push(ServicePort {
            name: Some("grpc".into()),
            port: i32::from(CLUSTER_GRPC_PORT),
            target_port: Some(IntOrString::String("grpc".into())),
            protocol: Some("TCP".into()),
            // Cleartext HTTP/2: what an Ingress or mesh needs to proxy gRPC.
            app_protocol: Some("kubernetes.io/h2c".into()),
            ..ServicePort::default()
        });
    }
    ports.push(ServicePort {
        name: Some("admin".into()),
        port: i32::from(CLUSTER_ADMIN_PORT),
        target_port: Some(IntOrString::String("admin".into())),
        protocol: Some("TCP".into()),
        ..ServicePort::default()
    });
    ports
}

/// Ingress only: the catalog's callers on the gRPC port, anyone on the admin
/// port (Prometheus) and, for the gateway, anyone on its REST port (the
/// Ingress controller). Egress stays open: external brokers and databases
/// have addresses a policy cannot know.
fn network_policy_spec(stack: &ValidStack<'_>, service: Service) -> NetworkPolicySpec {
    let port = |number: u16| NetworkPolicyPort {
        port: Some(IntOrString::Int(i32::from(number))),
        protocol: Some("TCP".into()),
        ..NetworkPolicyPort::default()
    };
    let mut rules = Vec::new();
    if service == Service::Gateway {
        rules.push(NetworkPolicyIngressRule { from: None, ports: Some(vec![port(CLUSTER_HTTP_PORT)]) });
    } else {
        let callers: Vec<NetworkPolicyPeer> = service
            .callers()
            .map(|caller| NetworkPolicyPeer {
                pod_selector: Some(LabelSelector {
                    match_labels: Some(names::selector_labels(stack, Component::Service(caller))),
                    ..LabelSelector::default()
                }),
                ..NetworkPolicyPeer::default()
            })
            .collect();
        if !callers.is_empty() {
            rules.push(NetworkPolicyIngressRule {
                from: Some(callers),
                ports: Some(vec![port(CLUSTER_GRPC_PORT)]),
            });
        }
    }
    rules.push(NetworkPolicyIngressRule { from: None, ports: Some(vec![port(CLUSTER_ADMIN_PORT)]) });
    NetworkPolicySpec {
        pod_selector: Some(LabelSelector {
            match_labels: Some(names::selector_labels(stack, Component::Service(service))),
            ..LabelSelector::default()
        }),
        policy_types: Some(vec!["Ingress".into()]),
        ingress: Some(rules),
        ..NetworkPolicySpec::default()
    }
}

/// Default container resources: small, with a memory limit so that a leak
/// ends in a restart rather than a starved node; no CPU limit, which would
/// only throttle.
fn default_resources() -> ResourceRequirements {
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_owned(), Quantity("50m".into())),
            ("memory".to_owned(), Quantity("64Mi".into())),
        ])),
        limits: Some(BTreeMap::from([("memory".to_owned(), Quantity("256Mi".into()))])),
        ..ResourceRequirements::default()
    }
}

/// The pod-level security context every workload shares.
pub fn pod_security_context() -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(NONROOT_UID),
        run_as_group: Some(NONROOT_UID),
        fs_group: Some(NONROOT_UID),
        seccomp_profile: Some(SeccompProfile { type_: "RuntimeDefault".into(), ..SeccompProfile::default() }),
        ..PodSecurityContext::default()
    }
}

/// The container-level security context: nothing to escalate to, nothing
/// to write but mounted volumes.
pub fn container_security_context() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        capabilities: Some(Capabilities { drop: Some(vec!["ALL".into()]), ..Capabilities::default() }),
        ..SecurityContext::default()
    }
}

/// A small writable `/tmp` for a read-only root file system.
pub fn tmp_volume() -> Volume {
    Volume {
        name: "tmp".into(),
        empty_dir: Some(EmptyDirVolumeSource {
            size_limit: Some(Quantity("64Mi".into())),
            ..Default::default()
        }),
        ..Volume::default()
    }
}

fn pod_template(
    stack: &ValidStack<'_>,
    service: Service,
    settings: &ServiceSettings,
    config: &ServiceConfig,
    scrape: ScrapeMode,
) -> PodTemplateSpec {
    let spec = &stack.stack.spec;
    let component = Component::Service(service);
    let name = names::component_name(stack, component);
    let mut volumes = vec![tmp_volume()];
    let mut mounts =
        vec![VolumeMount { name: "tmp".into(), mount_path: "/tmp".into(), ..VolumeMount::default() }];
    if service == Service::Gateway {
        volumes.push(Volume {
            name: "rate-limits".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: super::gateway::rate_limits_config_map_name(stack),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        });
        mounts.push(VolumeMount {
            name: "rate-limits".into(),
            mount_path: config::RATE_LIMITS_MOUNT.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        });
    }
    if service == Service::Auth {
        volumes.push(Volume {
            name: "signing-key".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(super::secrets::signing_key_secret_name(stack)),
                // Readable by the pod's group (fsGroup) only.
                default_mode: Some(0o440),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        });
        mounts.push(VolumeMount {
            name: "signing-key".into(),
            mount_path: config::SIGNING_KEY_MOUNT.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        });
    }
    let uses_kafka = service.spec().uses_kafka();
    let kafka_ca = match stack.kafka {
        Infra::External(external) => external.tls.as_ref().and_then(|tls| tls.ca_secret.as_ref()),
        Infra::Managed(_) => None,
    };
    let postgres_ca = match stack.postgres {
        Infra::External(external) => external.ca_secret.as_ref(),
        Infra::Managed(_) => None,
    };
    let cas = [
        (uses_kafka, kafka_ca, "kafka-ca", config::KAFKA_CA_MOUNT),
        (service.spec().database, postgres_ca, "postgres-ca", config::POSTGRES_CA_MOUNT),
    ];
    for (used, ca, volume, mount) in cas {
        let (true, Some(ca)) = (used, ca) else { continue };
        volumes.push(Volume {
            name: volume.into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(ca.name.clone()),
                items: Some(vec![KeyToPath {
                    key: ca.key.clone(),
                    path: config::CA_FILE.into(),
                    ..KeyToPath::default()
                }]),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        });
        mounts.push(VolumeMount {
            name: volume.into(),
            mount_path: mount.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        });
    }
    if service == Service::Payment
        && let Some(secret) = &spec.payment.credentials_secret
    {
        volumes.push(Volume {
            name: "payment-credentials".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret.clone()),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        });
        mounts.push(VolumeMount {
            name: "payment-credentials".into(),
            mount_path: config::PAYMENT_CREDENTIALS_MOUNT.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        });
    }

    let (ports, readiness) = if service == Service::Gateway {
        (
            vec![container_port("http", CLUSTER_HTTP_PORT)],
            Probe {
                http_get: Some(HTTPGetAction {
                    path: Some("/readyz".into()),
                    port: IntOrString::String("admin".into()),
                    ..HTTPGetAction::default()
                }),
                period_seconds: Some(5),
                ..Probe::default()
            },
        )
    } else {
        (
            vec![container_port("grpc", CLUSTER_GRPC_PORT)],
            // Native gRPC probe: the standard health service says SERVING
            // once the service can do its own work.
            Probe {
                grpc: Some(GRPCAction { port: i32::from(CLUSTER_GRPC_PORT), service: None }),
                period_seconds: Some(5),
                ..Probe::default()
            },
        )
    };
    let mut ports = ports;
    ports.push(container_port("admin", CLUSTER_ADMIN_PORT));
    // Liveness asks only whether the process answers: a missing database
    // or broker shows in readiness and must not restart the pod.
    let liveness = Probe {
        http_get: Some(HTTPGetAction {
            path: Some("/healthz".into()),
            port: IntOrString::String("admin".into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(10),
        failure_threshold: Some(3),
        ..Probe::default()
    };

    let labels = names::labels(stack, component);
    let mut annotations = BTreeMap::from([(names::CONFIG_HASH_ANNOTATION.to_owned(), config.hash.clone())]);
    if scrape == ScrapeMode::Annotations {
        annotations.extend(monitoring::scrape_annotations());
    }
    PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(labels),
            annotations: Some(annotations),
            ..ObjectMeta::default()
        }),
        spec: Some(PodSpec {
            service_account_name: Some(name.clone()),
            automount_service_account_token: Some(false),
            enable_service_links: Some(false),
            security_context: Some(pod_security_context()),
            image_pull_secrets: (!spec.image.pull_secrets.is_empty()).then(|| {
                spec.image.pull_secrets.iter().map(|s| LocalObjectReference { name: s.clone() }).collect()
            }),
            termination_grace_period_seconds: Some(30),
            containers: vec![Container {
                name: service.name().into(),
                image: Some(format!("{}:{}", spec.image.repository, spec.version)),
                image_pull_policy: spec.image.pull_policy.map(|p| p.as_str().to_owned()),
                args: Some(vec!["serve".into(), service.name().into()]),
                env_from: Some(vec![EnvFromSource {
                    config_map_ref: Some(ConfigMapEnvSource { name, optional: None }),
                    ..EnvFromSource::default()
                }]),
                env: (!config.env.is_empty()).then(|| config.env.clone()),
                ports: Some(ports),
                readiness_probe: Some(readiness),
                liveness_probe: Some(liveness),
                lifecycle: Some(Lifecycle {
                    pre_stop: Some(LifecycleHandler {
                        sleep: Some(SleepAction { seconds: DRAIN_DELAY_SECONDS }),
                        ..LifecycleHandler::default()
                    }),
                    ..Lifecycle::default()
                }),
                resources: Some(settings.resources.clone().unwrap_or_else(default_resources)),
                security_context: Some(container_security_context()),
                volume_mounts: Some(mounts),
                ..Container::default()
            }],
            volumes: Some(volumes),
            ..PodSpec::default()
        }),
    }
}

/// How long a stopping pod keeps serving before it gets SIGTERM. Its
/// endpoint is withdrawn the moment it starts terminating, but the Ingress
/// controller, kube-proxy and above all the gRPC callers (which re-resolve
/// the headless Service every 5 s, against DNS answers cached for 5 s) learn
/// of it later; until they do, they still send it requests, which it must
/// answer. The kubelet's own sleep action: the image has no shell.
pub const DRAIN_DELAY_SECONDS: i64 = 10;

fn container_port(name: &str, port: u16) -> ContainerPort {
    ContainerPort {
        name: Some(name.into()),
        container_port: i32::from(port),
        protocol: Some("TCP".into()),
        ..ContainerPort::default()
    }
}
