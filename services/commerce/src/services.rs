//! The service crates built into this binary, behind one enum: their clap
//! `Config`s as `commerce serve <service>` subcommands, a `Config` for
//! in-process use synthesized from the local wiring, and `serve`.
//!
//! Nothing here knows a service's internals: each crate is used only through
//! its `Config` (clap `Args`) and `serve(config, shutdown)`. In-process
//! configs are parsed by clap from a synthesized argument vector using the
//! platform's flag names, so they get exactly the defaults and validation a
//! pod gets. Every address and URL is passed explicitly, because explicit
//! arguments override `COMMERCE_*` variables: one `COMMERCE_DATABASE_URL` in
//! the environment would otherwise point every service of the process at the
//! same database.

use anyhow::Context as _;
use clap::{Args, FromArgMatches};
use commerce_topology::Service;
use tokio_util::sync::CancellationToken;

use crate::infra::LocalWiring;

/// Declares, once, the services this binary can run: the `serve`
/// subcommands, the in-process configs and the dispatch to each crate.
macro_rules! services {
    ($($feature:literal => $variant:ident($krate:ident)),* $(,)?) => {
        /// `commerce serve <service>`: one service in this process, configured
        /// by its own flags and `COMMERCE_*` variables (what a pod runs).
        #[derive(Debug, clap::Subcommand)]
        pub enum Single {
            $(
                #[cfg(feature = $feature)]
                #[command(name = $feature)]
                $variant($krate::Config),
            )*
        }

        /// A service's configuration, ready to serve.
        #[derive(Debug)]
        pub enum ServiceConfig {
            $(
                #[cfg(feature = $feature)]
                $variant($krate::Config),
            )*
        }

        impl From<Single> for ServiceConfig {
            fn from(single: Single) -> Self {
                match single {
                    $(
                        #[cfg(feature = $feature)]
                        Single::$variant(config) => ServiceConfig::$variant(config),
                    )*
                }
            }
        }

        /// Services whose crates are built into this binary, in catalog order.
        // One `push` per feature-gated crate; `vec![]` cannot hold `#[cfg]`.
        #[allow(clippy::vec_init_then_push)]
        pub fn built_in() -> Vec<Service> {
            let mut services = Vec::new();
            $(
                #[cfg(feature = $feature)]
                services.push(Service::$variant);
            )*
            services
        }

        impl ServiceConfig {
            /// The catalog service this configures.
            pub fn service(&self) -> Service {
                match self {
                    $(
                        #[cfg(feature = $feature)]
                        ServiceConfig::$variant(_) => Service::$variant,
                    )*
                }
            }

            /// A configuration of `service` for the local process: `wiring`'s
            /// addresses for every flag the service's `Config` has, then
            /// `extra` flags (settings from a stack file).
            pub fn local(service: Service, wiring: &LocalWiring, extra: &[String]) -> anyhow::Result<Self> {
                match service {
                    $(
                        #[cfg(feature = $feature)]
                        Service::$variant => parse_local::<$krate::Config>(service, wiring, extra).map(ServiceConfig::$variant),
                    )*
                    #[allow(unreachable_patterns)]
                    other => anyhow::bail!(
                        "service {other} is not built into this binary (built in: {})",
                        names(&built_in())
                    ),
                }
            }

            /// Runs the service until `shutdown` is cancelled.
            pub async fn serve(self, shutdown: CancellationToken) -> anyhow::Result<()> {
                let service = self.service();
                match self {
                    $(
                        #[cfg(feature = $feature)]
                        ServiceConfig::$variant(config) => $krate::serve(config, shutdown).await.map_err(anyhow::Error::from),
                    )*
                }
                .with_context(|| format!("service {service} failed"))
            }
        }
    };
}

services! {
    "auth" => Auth(commerce_auth),
    "catalog" => Catalog(commerce_catalog),
    "inventory" => Inventory(commerce_inventory),
    "cart" => Cart(commerce_cart),
    "order" => Order(commerce_order),
    "payment" => Payment(commerce_payment),
    "notification" => Notification(commerce_notification),
    "shipping" => Shipping(commerce_shipping),
    "gateway" => Gateway(commerce_gateway),
    "audit" => Audit(commerce_audit),
    "profile" => Profile(commerce_profile),
    "reviews" => Reviews(commerce_reviews),
    "search" => Search(commerce_search),
    "recommendation" => Recommendation(commerce_recommendation),
    "analytics" => Analytics(commerce_analytics),
}

/// `a, b, c` for messages.
pub fn names(services: &[Service]) -> String {
    services.iter().map(|service| service.name()).collect::<Vec<_>>().join(", ")
}

/// Parses `C` from the synthesized local arguments of `service`.
fn parse_local<C: Args + FromArgMatches>(
    service: Service,
    wiring: &LocalWiring,
    extra: &[String],
) -> anyhow::Result<C> {
    let command = C::augment_args(clap::Command::new(service.name()).no_binary_name(true));
    let mut args = local_args(service, &command, wiring);
    args.extend(extra.iter().cloned());
    let matches = command
        .try_get_matches_from(&args)
        .with_context(|| format!("cannot configure {service} for this machine from {:?}", redacted(&args)))?;
    C::from_arg_matches(&matches).with_context(|| format!("cannot configure {service} for this machine"))
}

/// `args` with the passwords in URLs hidden, for messages.
fn redacted(args: &[String]) -> Vec<String> {
    args.iter()
        .map(|arg| match arg.split_once('=') {
            Some((flag @ ("--database-url" | "--redis-url"), url)) => {
                format!("{flag}={}", commerce_platform::url::redact(url))
            }
            _ => arg.clone(),
        })
        .collect()
}

/// The wiring flags of `service`, limited to those its `command` accepts
/// (a service without Redis has no `--redis-url`).
fn local_args(service: Service, command: &clap::Command, wiring: &LocalWiring) -> Vec<String> {
    let has = |long: &str| command.get_arguments().any(|arg| arg.get_long() == Some(long));
    let ports = wiring.ports(service);
    let loopback = |port: u16| format!("127.0.0.1:{port}");
    let mut args = Vec::new();
    let mut push = |flag: &str, value: String| {
        if has(flag) {
            args.push(format!("--{flag}={value}"));
        }
    };
    push("log-format", crate::infra::log_format_name(&wiring.log));
    push("log-filter", wiring.log.filter.clone());
    push("admin-addr", loopback(ports.admin));
    if let Some(grpc) = ports.grpc {
        push("grpc-addr", loopback(grpc));
    }
    if let Some(http) = ports.http {
        push("http-addr", loopback(http));
    }
    push("database-url", wiring.database_url(service));
    push("kafka-brokers", wiring.kafka_brokers.clone());
    push("kafka-name-prefix", wiring.kafka_name_prefix.clone());
    push("redis-url", wiring.redis_url.clone());
    if has("peer") {
        for peer in Service::ALL {
            if let Some(grpc) = wiring.ports(peer).grpc {
                args.push(format!("--peer={}=http://127.0.0.1:{grpc}", peer.name()));
            }
        }
    }
    args
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_built_in_service_gets_a_local_config_on_its_local_ports() {
        let wiring = LocalWiring::for_tests();
        for service in built_in() {
            let config = ServiceConfig::local(service, &wiring, &[]).expect("local config parses");
            assert_eq!(config.service(), service);
            let debug = format!("{config:?}");
            let admin = format!("127.0.0.1:{}", service.local_ports().admin);
            assert!(debug.contains(&admin), "{service} is not on its admin port {admin}: {debug}");
        }
    }

    #[test]
    fn messages_never_show_a_password() {
        let args = [
            "--database-url=postgres://u:secret@h/db".to_owned(),
            "--redis-url=redis://:secret@h:1".to_owned(),
        ];
        let shown = format!("{:?}", redacted(&args));
        assert!(!shown.contains("secret"), "{shown}");
    }

    #[test]
    fn local_arguments_name_each_services_own_database_and_every_peer() {
        let wiring = LocalWiring::for_tests();
        let command = clap::Command::new("x")
            .no_binary_name(true)
            .arg(clap::Arg::new("database-url").long("database-url"))
            .arg(clap::Arg::new("peer").long("peer").action(clap::ArgAction::Append));
        let args = local_args(Service::Order, &command, &wiring);
        assert!(
            args.contains(&"--database-url=postgres://postgres:pw@127.0.0.1:55432/commerce_order".to_owned()),
            "{args:?}"
        );
        assert!(args.contains(&"--peer=catalog=http://127.0.0.1:9152".to_owned()), "{args:?}");
        assert!(!args.iter().any(|arg| arg.starts_with("--redis-url")), "order has no Redis flag: {args:?}");
        assert!(!args.iter().any(|arg| arg.contains("gateway=")), "the gateway has no gRPC port: {args:?}");
    }
}
