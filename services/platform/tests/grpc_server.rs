//! The gRPC server builder over real loopback connections: health follows
//! readiness, reflection lists the services, shutdown drains, trace context
//! crosses the wire, and requests are counted.

mod common;

use std::time::Duration;

use commerce_platform::admin::Metrics;
use commerce_platform::grpc::GrpcServerError;
use commerce_platform::readiness::Readiness;
use commerce_platform::telemetry::ClientTraceLayer;
use commerce_platform::trace_context::{self, TRACEPARENT};
use common::{Probe, call, start_server, wait_for};
use tokio::sync::{Notify, oneshot};
use tonic::Request;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tracing::Instrument as _;

/// Generous bound for conditions that hold within milliseconds on a quiet
/// machine; only reached when something is broken.
const PATIENCE: Duration = Duration::from_secs(10);
/// Grace period for tests that do not exercise it.
const LONG_GRACE: Duration = Duration::from_secs(30);

async fn connect(uri: String) -> Channel {
    Endpoint::from_shared(uri).expect("valid uri").connect().await.expect("connect to the test server")
}

async fn health(channel: Channel, service: &str) -> ServingStatus {
    let response = HealthClient::new(channel)
        .check(HealthCheckRequest { service: service.to_owned() })
        .await
        .expect("health check answers");
    response.into_inner().status()
}

#[tokio::test]
async fn health_is_not_serving_until_readiness_is_ready_and_follows_it_back() {
    let readiness = Readiness::new();
    let database = readiness.register("database");
    let server = start_server(Probe::replying("pong"), readiness, &Metrics::new("test"), LONG_GRACE).await;
    let channel = connect(server.uri()).await;

    assert_eq!(health(channel.clone(), "").await, ServingStatus::NotServing);
    assert_eq!(health(channel.clone(), "test.Probe").await, ServingStatus::NotServing);

    database.set_ready();
    wait_for("health to report SERVING", PATIENCE, || async {
        health(channel.clone(), "").await == ServingStatus::Serving
    })
    .await;
    assert_eq!(health(channel.clone(), "test.Probe").await, ServingStatus::Serving);

    database.set_not_ready("connection refused");
    wait_for("health to report NOT_SERVING again", PATIENCE, || async {
        health(channel.clone(), "").await == ServingStatus::NotServing
    })
    .await;

    server.shutdown.cancel();
    server.task.await.expect("server task").expect("clean shutdown");
}

#[tokio::test]
async fn reflection_lists_the_registered_services() {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let server =
        start_server(Probe::replying("pong"), Readiness::new(), &Metrics::new("test"), LONG_GRACE).await;
    let mut client = ServerReflectionClient::new(connect(server.uri()).await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = client
        .server_reflection_info(tokio_stream::once(request))
        .await
        .expect("reflection answers")
        .into_inner();
    let response = responses.message().await.expect("a response").expect("not the end of the stream");
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("expected a service list, got {:?}", response.message_response);
    };
    let names: Vec<String> = list.service.into_iter().map(|service| service.name).collect();
    for expected in ["test.Probe", "grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection"] {
        assert!(names.iter().any(|name| name == expected), "{expected} missing from {names:?}");
    }

    server.shutdown.cancel();
    server.task.await.expect("server task").expect("clean shutdown");
}

#[tokio::test]
async fn an_in_flight_request_completes_during_shutdown_and_new_connections_are_refused() {
    let entered = std::sync::Arc::new(Notify::new());
    let (release, released) = oneshot::channel::<()>();
    let released = std::sync::Arc::new(tokio::sync::Mutex::new(Some(released)));
    let probe = {
        let entered = entered.clone();
        Probe::new(move |_| {
            let entered = entered.clone();
            let released = released.clone();
            async move {
                entered.notify_one();
                if let Some(released) = released.lock().await.take() {
                    let _ = released.await;
                }
                Ok(tonic::Response::new("finished".to_owned()))
            }
        })
    };
    let server = start_server(probe, Readiness::new(), &Metrics::new("test"), LONG_GRACE).await;
    let channel = connect(server.uri()).await;

    let in_flight = tokio::spawn(call(channel, Request::new("slow".to_owned())));
    entered.notified().await;
    server.shutdown.cancel();

    wait_for("the listener to close", PATIENCE, || async {
        tokio::net::TcpStream::connect(server.addr).await.is_err()
    })
    .await;
    assert!(!server.task.is_finished(), "the server must wait for the request in flight");

    release.send(()).expect("the handler is waiting");
    let answer = in_flight.await.expect("call task");
    assert_eq!(answer.expect("the in-flight call succeeds"), "finished");
    tokio::time::timeout(PATIENCE, server.task)
        .await
        .expect("the server stops once drained")
        .expect("server task")
        .expect("clean shutdown");
    let refused = tokio::net::TcpStream::connect(server.addr).await;
    assert!(refused.is_err(), "a connection after shutdown must be refused");
}

#[tokio::test]
async fn shutdown_abandons_requests_that_outlast_the_grace_period() {
    let entered = std::sync::Arc::new(Notify::new());
    let probe = {
        let entered = entered.clone();
        Probe::new(move |_| {
            let entered = entered.clone();
            async move {
                entered.notify_one();
                std::future::pending::<()>().await;
                Ok(tonic::Response::new(String::new()))
            }
        })
    };
    let grace = Duration::from_millis(200);
    let server = start_server(probe, Readiness::new(), &Metrics::new("test"), grace).await;
    let channel = connect(server.uri()).await;
    let _stuck = tokio::spawn(call(channel, Request::new("forever".to_owned())));
    entered.notified().await;

    server.shutdown.cancel();
    let result =
        tokio::time::timeout(PATIENCE, server.task).await.expect("the server gives up").expect("task");
    assert!(matches!(result, Err(GrpcServerError::Drain { grace: g }) if g == grace), "{result:?}");
}

/// The process's telemetry, as a service installs it (without an export),
/// logging nothing: spans are OpenTelemetry spans only through its layer,
/// and they carry the trace whatever the log filter says.
fn telemetry() {
    let quiet = commerce_platform::telemetry::LogArgs { filter: "off".to_owned(), ..Default::default() };
    commerce_platform::telemetry::init(&quiet, "test").expect("telemetry");
}

/// A probe that answers with the `traceparent` of the span its handler
/// runs in.
fn trace_echo() -> Probe {
    Probe::new(|_| async {
        let context = trace_context::current()
            .and_then(|span| trace_context::headers(&span).into_iter().next())
            .map(|(_, traceparent)| traceparent)
            .unwrap_or_default();
        Ok(tonic::Response::new(context))
    })
}

/// The span of a remote caller.
fn remote_caller() -> opentelemetry::trace::SpanContext {
    trace_context::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", None).expect("valid")
}

#[tokio::test]
async fn a_traceparent_sent_to_the_server_is_the_parent_of_the_handlers_span() {
    telemetry();
    let server = start_server(trace_echo(), Readiness::new(), &Metrics::new("test"), LONG_GRACE).await;
    let channel = connect(server.uri()).await;

    let sent = remote_caller();
    let mut request = Request::new(String::new());
    let (_, traceparent) = trace_context::headers(&sent).remove(0);
    request.metadata_mut().insert(TRACEPARENT, traceparent.parse().expect("ascii"));
    let seen = call(channel.clone(), request).await.expect("call succeeds");
    let seen = trace_context::parse(&seen, None).expect("the handler ran inside a span");
    assert_eq!(seen.trace_id(), sent.trace_id());
    assert_ne!(seen.span_id(), sent.span_id(), "the handler's span is its own");

    // Without a header the server starts a trace of its own.
    let seen = call(channel, Request::new(String::new())).await.expect("call succeeds");
    let seen = trace_context::parse(&seen, None).expect("the handler ran inside a span");
    assert_ne!(seen.trace_id(), sent.trace_id());

    server.shutdown.cancel();
    server.task.await.expect("server task").expect("clean shutdown");
}

#[tokio::test]
async fn a_client_call_inside_a_span_continues_its_trace() {
    telemetry();
    let server = start_server(trace_echo(), Readiness::new(), &Metrics::new("test"), LONG_GRACE).await;
    let channel = tower::ServiceBuilder::new().layer(ClientTraceLayer).service(connect(server.uri()).await);

    let caller = tracing::info_span!("caller");
    let root = trace_context::start(&caller, Some(&remote_caller())).expect("an OpenTelemetry span");
    let seen = call(channel, Request::new(String::new())).instrument(caller).await.expect("call succeeds");
    let seen = trace_context::parse(&seen, None).expect("the handler ran inside a span");
    assert_eq!(seen.trace_id(), root.trace_id(), "same trace");
    assert_ne!(seen.span_id(), root.span_id(), "a span of its own, not the caller's");

    server.shutdown.cancel();
    server.task.await.expect("server task").expect("clean shutdown");
}

#[tokio::test]
async fn handled_requests_are_counted_by_method_and_code() {
    let probe = Probe::new(|request: Request<String>| async move {
        if request.get_ref() == "fail" {
            Err(tonic::Status::not_found("no such thing"))
        } else {
            Ok(tonic::Response::new("ok".to_owned()))
        }
    });
    let metrics = Metrics::new("test");
    let server = start_server(probe, Readiness::new(), &metrics, LONG_GRACE).await;
    let channel = connect(server.uri()).await;

    call(channel.clone(), Request::new("hello".to_owned())).await.expect("succeeds");
    call(channel.clone(), Request::new("hello".to_owned())).await.expect("succeeds");
    let failed = call(channel, Request::new("fail".to_owned())).await.expect_err("fails");
    assert_eq!(failed.code(), tonic::Code::NotFound);

    // The counter is written when the response body ends, which can be just
    // after the client has read it.
    let ok = r#"commerce_grpc_server_handled_total{grpc_service="test.Probe",grpc_method="Call",grpc_code="Ok"} 2"#;
    let not_found = r#"commerce_grpc_server_handled_total{grpc_service="test.Probe",grpc_method="Call",grpc_code="NotFound"} 1"#;
    wait_for("both outcomes to be counted", PATIENCE, || {
        let text = metrics.encode().expect("encodes");
        async move { text.contains(ok) && text.contains(not_found) }
    })
    .await;
    let text = metrics.encode().expect("encodes");
    assert!(
        text.contains(
            r#"commerce_grpc_server_handling_seconds_count{grpc_service="test.Probe",grpc_method="Call"} 3"#
        ),
        "{text}"
    );

    server.shutdown.cancel();
    server.task.await.expect("server task").expect("clean shutdown");
}

#[tokio::test]
async fn a_health_watch_sees_not_serving_and_ends_so_shutdown_does_not_wait_for_it() {
    let readiness = Readiness::new();
    readiness.register("database").set_ready();
    let server = start_server(Probe::replying("pong"), readiness, &Metrics::new("test"), LONG_GRACE).await;
    let mut watch = HealthClient::new(connect(server.uri()).await)
        .watch(HealthCheckRequest { service: String::new() })
        .await
        .expect("watch starts")
        .into_inner();
    let first = watch.message().await.expect("a status").expect("not the end");
    assert_eq!(first.status(), ServingStatus::Serving);

    server.shutdown.cancel();
    let last = watch.message().await.expect("a status").expect("not the end yet");
    assert_eq!(last.status(), ServingStatus::NotServing);
    assert!(watch.message().await.expect("a clean end").is_none(), "the watch ends at shutdown");
    tokio::time::timeout(PATIENCE, server.task)
        .await
        .expect("the open watch does not hold up the drain")
        .expect("server task")
        .expect("clean shutdown");
}
